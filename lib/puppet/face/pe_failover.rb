# frozen_string_literal: true

require 'puppet/face'
require_relative '../../puppet_x/pe_failover/status'
require_relative '../../puppet_x/pe_failover/role'

Puppet::Face.define(:pe_failover, '1.0.0') do
  copyright 'Puppet, Inc. and the pe_failover contributors', 2026
  license 'Apache-2.0'

  summary 'Inspect and steer pe_failover replication between two Puppet Enterprise primaries.'
  description <<-TEXT
    Every action reads the configuration written by the classes
    pe_failover::active and pe_failover::passive (default
    /opt/pe_failover/etc/config.json, or $PE_FAILOVER_CONFIG) and returns
    data: render it with --render-as json (or yaml) for scripts. The exit
    status is 1 when the result is unhealthy or failed.

    status reads the status files directly and needs no native extension;
    sync and diff run the native core, like the pe_failover command line.
  TEXT

  config_option = proc do
    option '--config_file FILE' do
      summary 'The pe_failover configuration file.'
      default_to { PuppetX::PeFailover::Status.default_config }
    end
  end

  action :status do
    summary 'Show replication health: per replica and kind, last success, age, digests, last error.'
    description <<-TEXT
      On the active primary: the last sync to each replica of the CA (and of
      the classifier groups once they are shipped); stale after --max_age
      seconds without success. On a passive primary: the digests staged and applied,
      and the last error of the receiver and the applier.
    TEXT
    returns 'A hash: host, role, healthy, replicas (name => kind => details), entries, problems.'
    instance_eval(&config_option)
    option '--max_age SECONDS' do
      summary 'Seconds after which the last successful CA sync counts as stale (default: twice the verify interval plus 60).'
    end
    examples <<-TEXT
      $ puppet pe_failover status
      $ puppet pe_failover status --render-as json | jq .replicas
    TEXT

    when_invoked do |options|
      max_age = options[:max_age].nil? ? nil : Integer(options[:max_age])
      PuppetX::PeFailover::Status.read(config: options[:config_file], max_age: max_age)
    end

    when_rendering :console do |status|
      require_relative '../../puppet_x/pe_failover/cli'
      PuppetX::PeFailover::StatusTable.render(status)
    end
  end

  action :sync do
    summary 'Ship the CA (and classifier groups) to the replicas now.'
    description <<-TEXT
      With Puppet's --noop, computes what would be shipped and transfers
      nothing (the same as the diff action).
    TEXT
    returns 'The sync report: ok, lines, and per-replica details.'
    instance_eval(&config_option)
    option '--replica HOST' do
      summary 'Only this replica (default: all).'
    end
    when_invoked do |options|
      require_relative '../../puppet_x/pe_failover/replication'
      PuppetX::PeFailover::Replication.sync(config: options[:config_file], replica: options[:replica],
                                            noop: Puppet[:noop] ? true : false)
    end

    when_rendering :console do |report|
      Array(report['lines']).join("\n")
    end
  end

  action :diff do
    summary 'Show what the next sync would ship to each replica (a noop sync).'
    returns 'The noop sync report.'
    instance_eval(&config_option)
    option '--replica HOST' do
      summary 'Only this replica (default: all).'
    end

    when_invoked do |options|
      require_relative '../../puppet_x/pe_failover/replication'
      PuppetX::PeFailover::Replication.sync(config: options[:config_file], replica: options[:replica], noop: true)
    end

    when_rendering :console do |report|
      Array(report['lines']).join("\n")
    end
  end

  role_actions = {
    promote: ['Make this passive primary active now: it refuses its old primary at once (fencing).', 'active'],
    demote: ['Make this active primary passive now: it stops shipping at once.', 'passive'],
  }
  role_actions.each do |name, (text, role)|
    action name do
      summary text
      description <<-TEXT
        Rewrites the role in the configuration and in the facts file
        (pe_failover_mode), which the receiver and applier read for fencing
        and the pe_failover classifier groups match. The printed lines say
        which Puppet run completes the change: the #{role} class must be
        declared for this host, or the next run puts the old role back.
      TEXT
      returns 'A hash: ok, host, role_before, role, changed (files), stopped_replicas, lines.'
      instance_eval(&config_option)
      option '--facts_file FILE' do
        summary 'The external facts file holding pe_failover_mode.'
        default_to { PuppetX::PeFailover::Role::DEFAULT_FACTS_FILE }
      end

      when_invoked do |options|
        PuppetX::PeFailover::Role.change(config: options[:config_file], facts_file: options[:facts_file], to: role)
      end

      when_rendering :console do |report|
        Array(report['lines']).join("\n")
      end
    end
  end
end
