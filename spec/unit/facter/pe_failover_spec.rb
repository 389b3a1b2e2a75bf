# frozen_string_literal: true

require 'spec_helper'
require 'facter'
require 'rbconfig'
require 'tmpdir'
require_relative '../../support/status_files'

RSpec.describe 'the pe_failover facts' do
  files = PeFailoverSpec::StatusFiles
  let(:fact_file) { File.expand_path('../../../lib/facter/pe_failover.rb', __dir__) }
  let(:dir) { Dir.mktmpdir('pe_failover-fact') }
  let(:libdir) { File.expand_path('../../../lib', __dir__) }

  around do |example|
    saved = ENV.fetch('PE_FAILOVER_CONFIG', nil)
    ENV['PE_FAILOVER_CONFIG'] = File.join(dir, 'etc', 'config.json')
    Facter.clear
    load fact_file
    example.run
  ensure
    Facter.clear
    saved.nil? ? ENV.delete('PE_FAILOVER_CONFIG') : ENV['PE_FAILOVER_CONFIG'] = saved
    FileUtils.rm_rf(dir)
  end

  def value(name)
    Facter.fact(name).value
  end

  it 'reports the Ruby running Puppet and the lib directory holding the CLI, and no role before setup' do
    expect(value(:pe_failover)).to eq('ruby' => RbConfig.ruby, 'libdir' => libdir)
    expect(File).to exist(File.join(libdir, 'puppet_x', 'pe_failover', 'native.rb'))
    expect(value(:pe_failover_mode)).to be_nil
    expect(value(:pe_failover_passive_master)).to be_nil
  end

  it 'on an active: role, replicas with per-kind last success, age, shipped digest and last error' do
    files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com'])
    now = Time.now.to_i
    files.sender(dir, 'b.example.com', 'ca', success: now - 30)
    files.sender(dir, 'b.example.com', 'nc', success: now - 90, outcome: 'failed',
                                             last_error: files.error('unauthorized', 'HTTP 401: a.example.com is not in the allowlist', now - 5))
    fact = value(:pe_failover)
    expect(fact).to include('ruby' => RbConfig.ruby, 'libdir' => libdir, 'role' => 'active', 'certname' => 'a.example.com',
                            'healthy' => false)
    ca = fact['replicas']['b.example.com']['ca']
    expect(ca).to include('last_success' => files.stamp(now - 30)['time'], 'shipped' => 'ab' * 32, 'last_error' => nil, 'healthy' => true)
    expect(ca['seconds_since_success']).to be_between(30, 40)
    expect(fact['replicas']['b.example.com']['nc']['last_error'])
      .to include('kind' => 'unauthorized', 'message' => 'HTTP 401: a.example.com is not in the allowlist')
    expect(fact['problems']).to eq(['nc to b.example.com: last sync failed: HTTP 401: a.example.com is not in the allowlist'])
    expect(value(:pe_failover_mode)).to eq('active')
    expect(value(:pe_failover_passive_master)).to eq('b.example.com')
  end

  it 'on a passive: staged and applied digests of its own replica' do
    files.config(dir, role: 'passive', certname: 'b.example.com', nc: false)
    files.applier(dir, run: Time.now.to_i, staged: '12' * 32, applied: '34' * 32)
    fact = value(:pe_failover)
    expect(fact).to include('role' => 'passive', 'healthy' => true, 'problems' => [])
    expect(fact['replicas']['b.example.com']['ca']).to include('staged' => '12' * 32, 'applied' => '34' * 32)
    expect(value(:pe_failover_mode)).to eq('passive')
    expect(value(:pe_failover_passive_master)).to be_nil
  end

  it 'never raises: a broken configuration leaves the replication keys out, a failure the whole fact' do
    FileUtils.mkdir_p(File.join(dir, 'etc'))
    File.write(File.join(dir, 'etc', 'config.json'), 'not json')
    expect(value(:pe_failover)).to eq('ruby' => RbConfig.ruby, 'libdir' => libdir)
    expect(value(:pe_failover_mode)).to be_nil
    Facter.clear
    load fact_file
    allow(RbConfig).to receive(:ruby).and_raise(RuntimeError, 'boom')
    expect(value(:pe_failover)).to be_nil
  end
end
