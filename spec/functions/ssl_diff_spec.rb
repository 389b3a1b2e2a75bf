# frozen_string_literal: true

require 'spec_helper'
require 'fileutils'
require 'tmpdir'
require_relative '../support/test_ca'

RSpec.describe 'pe_failover::ssl_diff' do
  around(:each) do |ex|
    Dir.mktmpdir('ssl_diff') do |tmp|
      @tmp = tmp
      ex.run
    end
  end

  let(:active) do
    dir = File.join(@tmp, 'active')
    ca = PeFailoverSpec::TestCA.create(dir, key_bits: 1024)
    %w[agent1 agent2 agent3].each { |n| ca.sign("#{n}.example.com") }
    dir
  end

  let(:replica) do
    dir = File.join(@tmp, 'replica')
    FileUtils.cp_r(active, dir, preserve: true)
    Dir.glob(File.join(dir, "**", "*")).each { |f| File.utime(Time.now, Time.now + 7, f) } # new mtimes: not a change
    dir
  end

  it 'reports nothing for copies that differ only in mtimes' do
    expect(subject).to run.with_params(active, replica, ['host_keys']).and_return('added' => [], 'changed' => [], 'removed' => [])
  end

  it 'reports what was signed, revoked and cleaned since the copy' do
    replica # copy first
    ca = PeFailoverSpec::TestCA.open(active)
    ca.sign('agent4.example.com')
    ca.clean('agent2.example.com')
    File.chmod(0o600, File.join(active, 'ca', 'signed', 'agent3.example.com.pem'))
    expect(subject).to run.with_params(replica, active, ['host_keys']).and_return(
      'added' => ['ca/signed/agent4.example.com.pem'],
      'changed' => ['ca/ca_crl.pem', 'ca/inventory.txt', 'ca/serial', 'ca/signed/agent3.example.com.pem'],
      'removed' => ['ca/signed/agent2.example.com.pem'],
    )
  end

  it 'ignores excluded paths on both sides' do
    replica
    PeFailoverSpec::TestCA.open(active).sign('agent9.example.com')
    expect(subject).to run.with_params(replica, active, ['host_keys', 'ca/signed', 'ca/serial', 'ca/inventory.txt']).and_return('added' => [], 'changed' => [], 'removed' => [])
  end

  it 'fails clearly when a side is missing' do
    expect(subject).to run.with_params(active, File.join(@tmp, 'nope')).and_raise_error(Puppet::Error, %r{cannot scan .*nope})
  end
end
