# frozen_string_literal: true

Puppet::Type.type(:pe_failover_ca_replica).provide(:native) do
  desc 'Ships CA changes with the pe_failover native core (needs the compiled extension on this host).'

  confine feature: :pe_failover_native

  # :in_sync when the replica already has everything, else :out_of_sync.
  def state
    @plan = replication.sync(config: resource[:config], replica: resource[:name], noop: true, nc: false)
    raise Puppet::Error, failure_text(@plan) unless @plan['ok']

    pending?(@plan) ? :out_of_sync : :in_sync
  end

  def change_summary
    return 'replica is current' unless @plan

    lines = Array(@plan['lines'])
    "#{resource[:name]}: #{lines.empty? ? 'changes pending' : lines.join('; ')}"
  end

  def sync!
    report = replication.sync(config: resource[:config], replica: resource[:name], noop: false, nc: false)
    raise Puppet::Error, failure_text(report) unless report['ok']

    @plan = report
  end

  private

  def replication
    require_relative '../../../puppet_x/pe_failover/replication'
    PuppetX::PeFailover::Replication
  end

  def pending?(report)
    Array(report['replicas']).any? { |r| r['host'] == resource[:name] && r['changes'].to_i.positive? }
  end

  def failure_text(report)
    "pe_failover could not sync the CA to #{resource[:name]}: #{Array(report['lines']).join('; ')}"
  end
end
