# frozen_string_literal: true

require 'spec_helper'
require 'json'
require 'tmpdir'
require_relative '../../../../support/nc_emulator_process'

# The provider against a real emulator process over mutual TLS, driven the
# way an agent run drives it: resources in a catalog, applied by a Puppet
# transaction (prefetch, property sync, flush, noop).
RSpec.describe Puppet::Type.type(:pe_failover_node_group).provider(:classifier) do
  let(:type) { Puppet::Type.type(:pe_failover_node_group) }
  let(:mode_rule) { ['and', ['~', ['fact', 'pe_failover_mode'], '^(active|passive)$']] }
  let(:active_rule) { ['and', ['=', ['fact', 'pe_failover_mode'], 'active']] }
  let(:passive_rule) { ['and', ['=', ['fact', 'pe_failover_mode'], 'passive']] }

  # The seed's classes plus the module's own, as a code deploy would have them.
  def self.catalog(seed)
    production = {}
    seed.each do |group|
      group['classes'].each { |klass, params| (production[klass] ||= {}).merge!(params) }
    end
    production['pe_failover::active'] = { 'passive_master' => nil, 'nc_interval' => 60 }
    production['pe_failover::passive'] = { 'auth_key' => nil }
    { 'production' => production, 'agent-specified' => {} }
  end

  before(:all) do
    @tmp = Dir.mktmpdir('nc_provider')
    seed = JSON.parse(File.read(PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master1.min.json')))
    @emulator = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmp, 'emulator'), seed: seed,
                                                      classes: self.class.catalog(seed)).start
    @files = @emulator.ca.host_files('client.test', File.join(@tmp, 'client'))
    @stranger = @emulator.ca.host_files('stranger.test', File.join(@tmp, 'stranger'))
  end

  after(:all) do
    @emulator&.stop
    FileUtils.rm_rf(@tmp)
  end

  before(:each) do
    @emulator.reset!
    @saved_noop = Puppet[:noop]
    # rspec-puppet points vardir at /dev/null; a transaction keeps state files.
    Puppet[:vardir] = File.join(@tmp, 'var')
    Puppet[:statedir] = File.join(@tmp, 'var', 'state')
    FileUtils.mkdir_p(Puppet[:statedir])
  end

  after(:each) { Puppet[:noop] = @saved_noop }

  def group(name, files: @files, **properties)
    type.new(name: name, server: @emulator.base_url, cert: files[:cert], key: files[:key], cacert: files[:ca],
             crl: files[:crl], retry_for: 2, **properties)
  end

  def failover_groups(**active_properties)
    [group('pe_failover', parent: 'PE Infrastructure', rule: mode_rule, description: 'pe_failover primaries'),
     group('pe_failover-active', parent: 'pe_failover', rule: active_rule, **active_properties),
     group('pe_failover-passive', parent: 'pe_failover', rule: passive_rule)]
  end

  # Applies the resources as an agent run would; returns the report.
  def apply(*resources, noop: false)
    Puppet[:noop] = noop
    catalog = Puppet::Resource::Catalog.new
    resources.flatten.each { |r| catalog.add_resource(r) }
    catalog.apply.report
  end

  def events(report)
    report.resource_statuses.values.flat_map(&:events)
  end

  def failures(report)
    report.resource_statuses.values.select(&:failed)
  end

  def live(name)
    @emulator.client.get('/classifier-api/v1/groups').json.find { |g| g['name'] == name }
  end

  def writes
    @emulator.stats['writes']
  end

  it 'creates the three pe_failover groups, parents first' do
    report = apply(failover_groups)
    expect(failures(report)).to be_empty, report.logs.map(&:message).join("\n")
    expect(events(report).map { |e| [e.resource, e.property, e.status] }).to contain_exactly(
      ['Pe_failover_node_group[pe_failover]', 'ensure', 'success'],
      ['Pe_failover_node_group[pe_failover-active]', 'ensure', 'success'],
      ['Pe_failover_node_group[pe_failover-passive]', 'ensure', 'success'],
    )
    top = live('pe_failover')
    expect(top['parent']).to eq(live('PE Infrastructure')['id'])
    expect(top['rule']).to eq(mode_rule)
    expect(top['description']).to eq('pe_failover primaries')
    expect(live('pe_failover-active')).to include('parent' => top['id'], 'rule' => active_rule, 'environment' => 'production')
    expect(live('pe_failover-passive')).to include('parent' => top['id'], 'rule' => passive_rule)
    expect(writes).to eq(3)
  end

  it 'changes nothing and writes nothing on the second run' do
    apply(failover_groups(classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } }))
    @emulator.reset_stats
    report = apply(failover_groups(classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } }))
    expect(failures(report)).to be_empty
    expect(events(report)).to be_empty
    expect(writes).to eq(0)
    expect(@emulator.stats['by_route']).to eq('GET /classifier-api/v1/groups' => 1)
  end

  it 'updates a changed property with one call' do
    apply(failover_groups)
    @emulator.reset_stats
    report = apply(failover_groups(variables: { 'pe_failover_role' => 'active' }, description: 'the active primary'))
    expect(events(report).map { |e| [e.property, e.status] }).to contain_exactly(%w[variables success], %w[description success])
    expect(writes).to eq(1)
    expect(live('pe_failover-active')).to include('variables' => { 'pe_failover_role' => 'active' },
                                                  'description' => 'the active primary')
  end

  it 'removes a class (and a parameter) that is no longer listed' do
    apply(failover_groups(classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com', 'nc_interval' => 30 },
                                     'pe_repo' => {} }))
    expect(live('pe_failover-active')['classes'].keys).to contain_exactly('pe_failover::active', 'pe_repo')
    @emulator.reset_stats
    report = apply(failover_groups(classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } }))
    expect(events(report).map(&:property)).to eq(['classes'])
    expect(writes).to eq(1)
    expect(live('pe_failover-active')['classes']).to eq('pe_failover::active' => { 'passive_master' => 'b.example.com' })
  end

  it 'removes the rule when it is set to []' do
    apply(failover_groups)
    apply(group('pe_failover-passive', parent: 'pe_failover', rule: []))
    expect(live('pe_failover-passive')).not_to have_key('rule')
    @emulator.reset_stats
    apply(group('pe_failover-passive', parent: 'pe_failover', rule: []))
    expect(writes).to eq(0)
  end

  it 'reports changes without writing under noop' do
    apply(failover_groups)
    @emulator.reset_stats
    report = apply(failover_groups(rule: passive_rule), group('pe_failover-extra'), noop: true)
    expect(events(report).map { |e| [e.resource, e.property, e.status] }).to contain_exactly(
      ['Pe_failover_node_group[pe_failover-active]', 'rule', 'noop'],
      ['Pe_failover_node_group[pe_failover-extra]', 'ensure', 'noop'],
    )
    expect(writes).to eq(0)
    expect(live('pe_failover-active')['rule']).to eq(active_rule)
    expect(live('pe_failover-extra')).to be_nil
  end

  it 'deletes a group, children first, and then does nothing' do
    apply(failover_groups)
    absent = %w[pe_failover-active pe_failover-passive pe_failover].map { |n| group(n, ensure: :absent) }
    report = apply(absent)
    expect(failures(report)).to be_empty, report.logs.map(&:message).join("\n")
    expect(%w[pe_failover pe_failover-active pe_failover-passive].map { |n| live(n) }).to all(be_nil)
    @emulator.reset_stats
    expect(events(apply(absent))).to be_empty
    expect(writes).to eq(0)
  end

  it 'fails the resource with the classifier\'s reason, naming the allowlist when the certname is not on it' do
    report = apply(group('pe_failover', files: @stranger))
    expect(failures(report).map(&:title)).to eq(['pe_failover'])
    messages = report.logs.map(&:message).join("\n")
    expect(messages).to include('"stranger.test"')
    expect(messages).to include('/etc/puppetlabs/console-services/rbac-certificate-allowlist')
    expect(writes).to eq(0)
  end

  it 'fails the resource when a class is missing from the classifier, with its message' do
    report = apply(group('pe_failover', classes: { 'no_such::klass' => {} }))
    expect(failures(report).map(&:title)).to eq(['pe_failover'])
    expect(report.logs.map(&:message).join("\n")).to match(%r{422 missing-referents.*no_such::klass})
  end

  it 'lists every group as instances (puppet resource)' do
    settings = { server: @emulator.base_url, cert: @files[:cert], key: @files[:key], cacert: @files[:ca], crl: nil,
                 connect_timeout: 10.0, timeout: 120.0, retry_for: 2.0 }
    allow(described_class).to receive(:connection).and_return(settings)
    instances = described_class.instances
    expect(instances.map(&:name)).to include('All Nodes', 'PE Master', 'PE Infrastructure')
    master = instances.find { |i| i.name == 'PE Master' }
    expect(master.parent).to eq('PE Infrastructure')
    expect(master.rule).to eq(['or', ['=', 'name', 'master1.puppet.vm']])
    expect(instances.find { |i| i.name == 'All Nodes' }.parent).to eq('All Nodes')
  end
end
