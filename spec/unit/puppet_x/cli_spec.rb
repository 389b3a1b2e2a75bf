# frozen_string_literal: true

require 'json'
require 'openssl'
require 'tmpdir'
require_relative '../../support/replication_pair'

# The real CLI, as units, cron and the SSH forced command run it, against a
# real sshd whose forced command is the CLI's own `receive`.
# The examples share one pair and build on each other's state: run them in order.
RSpec.describe 'pe_failover CLI (lib/puppet_x/pe_failover/cli.rb)', order: :defined do
  before(:all) do
    @tmp = Dir.mktmpdir('pe_failover_cli')
    @pair = PeFailoverSpec::ReplicationPair.new(@tmp).start
  end

  after(:all) do
    @pair&.stop
    FileUtils.rm_rf(@tmp)
  end

  let(:pair) { @pair }

  def run!(*args)
    out, err, status = pair.cli(*args)
    expect(status.exitstatus).to eq(0), "pe_failover #{args.join(' ')} exited #{status.exitstatus}:\n#{out}\n#{err}"
    out
  end

  def sync_and_apply
    out = run!('sync', '--config', pair.active_config)
    run!('apply', '--config', pair.passive_config)
    out
  end

  def openssl_verify(certname)
    store = OpenSSL::X509::Store.new
    store.add_file(File.join(pair.b_cadir, 'ca_crt.pem'))
    store.add_crl(OpenSSL::X509::CRL.new(File.read(File.join(pair.b_cadir, 'ca_crl.pem'))))
    store.flags = OpenSSL::X509::V_FLAG_CRL_CHECK
    store.verify(OpenSSL::X509::Certificate.new(File.read(File.join(pair.b_cadir, 'signed', "#{certname}.pem"))))
  end

  it 'replicates a first full sync, a signing, a revocation and a clean, and reports health' do
    out = sync_and_apply
    expect(out).to match(%r{\[SUCCESS\] ca to 127\.0\.0\.1:\d+: committed})
    expect(pair.converged?).to be(true)

    pair.ca.sign('agent1.test')
    noop = run!('sync', '--config', pair.active_config, '--noop')
    expect(noop).to include('would ship').and include('+ca/signed/agent1.test.pem')
    expect(pair.converged?).to be(false)
    sync_and_apply
    expect(pair.converged?).to be(true)
    expect(openssl_verify('agent1.test')).to be(true)

    pair.ca.revoke('agent1.test')
    json = JSON.parse(run!('sync', '--config', pair.active_config, '--json'))
    expect(json['ok']).to be(true)
    expect(json['replicas'].first).to include('outcome' => 'committed', 'changed' => include('ca/ca_crl.pem'))
    expect(json['nc']).to be_nil
    run!('apply', '--config', pair.passive_config)
    expect(pair.converged?).to be(true)
    expect(openssl_verify('agent1.test')).to be(false)

    pair.ca.clean('agent0.test')
    sync_and_apply
    expect(File.exist?(File.join(pair.b_cadir, 'signed', 'agent0.test.pem'))).to be(false)
    expect(pair.converged?).to be(true)

    up = JSON.parse(run!('sync', '--config', pair.active_config, '--json'))
    expect(up['replicas'].first).to include('outcome' => 'up_to_date', 'objects' => 0)

    table = run!('status', '--config', pair.active_config)
    expect(table).to include('(active): HEALTHY').and include('127.0.0.1')
    status = JSON.parse(run!('status', '--config', pair.passive_config, '--json'))
    expect(status).to include('role' => 'passive', 'healthy' => true)
    expect(status['entries'].map { |e| e['component'] }).to eq(%w[receive apply])
    expect(status['entries'].last['applied_digest']).to eq(up['digest'])
  end

  it 'watch --once syncs on the active and applies on the passive' do
    pair.ca.sign('agent2.test')
    run!('watch', '--config', pair.active_config, '--once')
    run!('watch', '--config', pair.passive_config, '--once')
    expect(pair.converged?).to be(true)
  end

  it 'watch stops cleanly on SIGTERM' do
    pid = Process.spawn(RbConfig.ruby, PeFailoverSpec::ReplicationPair::CLI, 'watch', '--config', pair.active_config,
                        out: File::NULL, err: File::NULL)
    sleep 1.5
    pair.ca.sign('agent3.test')
    deadline = Time.now + 20
    until Time.now > deadline
      run!('apply', '--config', pair.passive_config)
      break if pair.converged?

      sleep 0.3
    end
    Process.kill('TERM', pid)
    _, status = Process.wait2(pid)
    expect(status.exitstatus).to eq(0)
    expect(pair.converged?).to be(true)
  end

  it 'lets a running watcher run sync, unless told --no-watcher' do
    socket = File.join(pair.dir, 'a', 'state', 'watch.sock')
    pid = Process.spawn(RbConfig.ruby, PeFailoverSpec::ReplicationPair::CLI, 'watch', '--config', pair.active_config,
                        out: File::NULL, err: File::NULL)
    deadline = Time.now + 20
    sleep 0.1 until File.socket?(socket) || Time.now > deadline
    expect(File.socket?(socket)).to be(true)
    pair.ca.sign('agent4.test')
    out = run!('sync', '--config', pair.active_config)
    expect(out).to include('run by the watcher on this host')
    via = JSON.parse(run!('sync', '--config', pair.active_config, '--json'))
    expect(via).to include('ok' => true, 'via_watcher' => true)
    here = JSON.parse(run!('sync', '--config', pair.active_config, '--no-watcher', '--json'))
    expect(here).to include('ok' => true, 'via_watcher' => false)
    expect(here['replicas'].first).to include('outcome' => 'up_to_date')
    Process.kill('TERM', pid)
    _, status = Process.wait2(pid)
    expect(status.exitstatus).to eq(0)
    expect(File.exist?(socket)).to be(false)
    run!('apply', '--config', pair.passive_config)
    expect(pair.converged?).to be(true)
  end

  it 'pins a host key and reports its fingerprint' do
    known = File.join(@tmp, 'pinned_known_hosts')
    out = run!('pin-host-key', '--host', '127.0.0.1', '--port', pair.sshd.port.to_s, '--known-hosts', known)
    expect(out).to include(pair.sshd.host_key_fingerprint)
    expect(File.read(known)).to include(pair.sshd.host_key_line)
  end

  it 'fails with advice and an unhealthy status when the host key does not match' do
    wrong = File.join(@tmp, 'wrong_known_hosts')
    File.write(wrong, "[127.0.0.1]:#{pair.sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7oRj0AyxV7eaSxDL0d1NiEkHMOb5tIHGn5sDd1wXQb\n")
    config = File.join(@tmp, 'wrong.json')
    active = JSON.parse(File.read(pair.active_config))
    active['replicas'][0]['known_hosts'] = wrong
    active['state_dir'] = File.join(@tmp, 'wrong_state')
    File.write(config, JSON.generate(active))
    out, _err, status = pair.cli('sync', '--config', config)
    expect(status.exitstatus).to eq(1)
    expect(out).to include('[FAILURE]').and include('pin-host-key')
    out, _err, status = pair.cli('status', '--config', config)
    expect(status.exitstatus).to eq(1)
    expect(out).to include('UNHEALTHY').and include('problems:')
  end

  it 'refuses commands meant for the other role and unknown replicas' do
    _out, err, status = pair.cli('apply', '--config', pair.active_config)
    expect(status.exitstatus).to eq(1)
    expect(err).to include('active')
    _out, err, status = pair.cli('sync', '--config', pair.active_config, '--replica', 'nope.test')
    expect(status.exitstatus).to eq(1)
    expect(err).to include('nope.test is not a replica')
  end

  it 'accepts the session kind a sender names after receive, and no other argument' do
    out, _err, status = pair.cli('receive', '--help', 'ca')
    expect(status.exitstatus).to eq(0)
    expect(out).to include('usage: pe_failover receive')
    _out, err, status = pair.cli('receive', 'extra')
    expect(status.exitstatus).to eq(2)
    expect(err).to include('unexpected argument "extra"')
  end
end
