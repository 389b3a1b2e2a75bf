# frozen_string_literal: true

require 'spec_helper'
require 'tmpdir'
require_relative '../../../support/replication_pair'

# The CA replica type with its native provider against a real sshd and the
# real forced-command receiver.
RSpec.describe Puppet::Type.type(:pe_failover_ca_replica).provider(:native) do
  before(:all) do
    @tmp = Dir.mktmpdir('ca_replica_provider')
    @pair = PeFailoverSpec::ReplicationPair.new(@tmp).start
  end

  before(:each) do
    # rspec-puppet points vardir at /dev/null; a transaction keeps state files.
    Puppet[:vardir] = File.join(@tmp, 'var')
    Puppet[:statedir] = File.join(@tmp, 'var', 'state')
    FileUtils.mkdir_p(Puppet[:statedir])
  end

  after(:all) do
    @pair&.stop
    FileUtils.rm_rf(@tmp)
  end

  def resource
    Puppet::Type.type(:pe_failover_ca_replica).new(name: '127.0.0.1', config: @pair.active_config)
  end

  it 'reports pending changes in noop, then ships them' do
    @pair.cli('apply', '--config', @pair.passive_config)
    @pair.ca.sign('pending.test')
    res = resource
    provider = res.provider
    expect(provider.state).to eq(:out_of_sync)
    expect(provider.change_summary).to include('127.0.0.1').and include('would ship')
    incoming = File.join(@tmp, 'b', 'state', 'incoming')
    expect(Dir.children(incoming).select { |c| File.directory?(File.join(incoming, c)) }).to eq([])
    provider.sync!
    expect(provider.state).to eq(:in_sync)
    _out, _err, status = @pair.cli('apply', '--config', @pair.passive_config)
    expect(status.exitstatus).to eq(0)
    expect(@pair.converged?).to be(true)
  end

  it 'syncs through a Puppet transaction and does nothing in noop mode' do
    @pair.ca.sign('txn.test')
    catalog = Puppet::Resource::Catalog.new
    catalog.add_resource(resource)
    Puppet[:noop] = true
    report = catalog.apply.report
    expect(report.resource_statuses.values.first.events.map(&:status)).to eq(['noop'])
    expect(resource.provider.state).to eq(:out_of_sync)
    Puppet[:noop] = false
    catalog = Puppet::Resource::Catalog.new
    catalog.add_resource(resource)
    report = catalog.apply.report
    expect(report.resource_statuses.values.first.events.map(&:status)).to eq(['success'])
    expect(resource.provider.state).to eq(:in_sync)
  ensure
    Puppet[:noop] = false
  end

  it 'fails the resource with the advice when the replica cannot be reached' do
    config = File.join(@tmp, 'unreachable.json')
    active = JSON.parse(File.read(@pair.active_config))
    active['replicas'][0]['port'] = PeFailoverSpec::Sshd.free_port
    active['replicas'][0]['connect_timeout'] = 2
    File.write(config, JSON.generate(active))
    res = Puppet::Type.type(:pe_failover_ca_replica).new(name: '127.0.0.1', config: config)
    expect { res.provider.state }.to raise_error(Puppet::Error, %r{127\.0\.0\.1.*(reachable|refused)}m)
  end
end
