# frozen_string_literal: true

require 'spec_helper'
require 'json'

RSpec.describe 'pe_failover::nc_transform' do
  let(:fixtures) { File.expand_path('../fixtures/nc', __dir__) }
  let(:master1) { JSON.parse(File.read(File.join(fixtures, 'ncio-pe2016-groups-master1.min.json'))) }
  let(:ncio_master2) { JSON.parse(File.read(File.join(fixtures, 'ncio-pe2016-groups-master2-transformed.json'))) }
  let(:hostnames) { { 'master1.puppet.vm' => 'master2.puppet.vm' } }
  let(:root) do
    { 'id' => '00000000-0000-4000-8000-000000000000', 'parent' => '00000000-0000-4000-8000-000000000000',
      'name' => 'All Nodes', 'environment' => 'production', 'environment_trumps' => false,
      'rule' => ['and', ['~', 'name', '.*']], 'classes' => {}, 'variables' => {} }
  end

  def by_id(groups)
    groups.sort_by { |g| g['id'] }
  end

  it 'turns the real PE 2016 dump of master1 into what `ncio transform` made of it' do
    result = subject.execute(master1, hostnames)
    expect(result.map { |g| g['id'] }).to eq(master1.map { |g| g['id'] })
    expect(by_id(result)).to eq(by_id(ncio_master2))
    expect(JSON.generate(result)).not_to include('master1.puppet.vm')
  end

  it 'rewrites hosts in rules, parameters and variables, never longer names or group names' do
    group = root.merge('rule' => ['or', ['=', 'name', 'a.example.com'], ['=', 'name', 'xa.example.com']],
                       'classes' => { 'profile' => { 'server' => 'https://a.example.com:8140/x', 'db' => 'db-a.example.com' } },
                       'variables' => { 'servers' => ['a.example.com:8140', 'a.example.com.example'] },
                       'description' => 'a.example.com')
    expected = root.merge('rule' => ['or', ['=', 'name', 'b.example.com'], ['=', 'name', 'xa.example.com']],
                          'classes' => { 'profile' => { 'server' => 'https://b.example.com:8140/x', 'db' => 'db-a.example.com' } },
                          'variables' => { 'servers' => ['b.example.com:8140', 'a.example.com.example'] },
                          'description' => 'a.example.com')
    is_expected.to run.with_params([group], { 'a.example.com' => 'b.example.com' }).and_return([expected])
  end

  it 'returns the groups unchanged when no hostname occurs' do
    is_expected.to run.with_params([root], hostnames).and_return([root])
  end

  it 'fails naming the group and the key of a malformed group' do
    bad = root.merge('id' => 'eb87329f-4874-4852-b833-cf3fb67271c9', 'name' => 'PE Master', 'environment_trumps' => 'true')
    is_expected.to run.with_params([root, bad], hostnames)
                      .and_raise_error(Puppet::Error, %r{pe_failover::nc_transform: group #1 "PE Master".*environment_trumps.*boolean})
  end

  it 'fails on a hostname that is not one' do
    is_expected.to run.with_params([root], { 'a b' => 'c' }).and_raise_error(Puppet::Error, %r{"a b" is not a hostname})
  end

  it 'checks its argument types' do
    is_expected.to run.with_params(root, hostnames).and_raise_error(ArgumentError, %r{expects an Array value})
    is_expected.to run.with_params([root], { 'a' => 1 }).and_raise_error(ArgumentError, %r{expects a String value})
  end

  it 'says why it cannot run where the native extension is unavailable (JRuby)' do
    require File.expand_path('../../lib/puppet_x/pe_failover/classifier', __dir__)
    reason = "pe_failover native extension unavailable: running under JRuby (Puppet Server), which cannot load native " \
             "extensions; call this function on the agent instead, e.g. with Deferred('pe_failover::...', [...])"
    allow(PuppetX::PeFailover::NativeLoader).to receive(:load!)
      .and_raise(PuppetX::PeFailover::NativeUnavailableError.new(reason, :unavailable))
    is_expected.to run.with_params([root], hostnames)
                      .and_raise_error(Puppet::Error, %r{pe_failover::nc_transform: .*JRuby.*Deferred})
  end
end
