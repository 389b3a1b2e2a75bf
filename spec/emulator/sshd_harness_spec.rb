# frozen_string_literal: true

require 'tmpdir'
require_relative '../support/sshd'

# PeFailoverSpec::Sshd, checked with OpenSSH's own client: forced commands,
# from= restrictions, pinned host keys, and stopping by PID.
RSpec.describe PeFailoverSpec::Sshd do
  around do |example|
    Dir.mktmpdir('sshd-harness-spec') do |dir|
      @sshd = described_class.new(dir: dir).start
      example.run
    ensure
      @sshd&.stop
    end
  end

  let(:sshd) { @sshd }

  it 'runs the forced command, whatever the client asks for' do
    victim = File.join(sshd.dir, 'victim')
    File.write(victim, 'keep')
    key = sshd.client('sender', command: %(printf 'forced:%s' "$SSH_ORIGINAL_COMMAND"))
    out, err, status = sshd.ssh(key, "rm -f #{victim}")
    expect(status).to be_success, err
    expect(out).to eq("forced:rm -f #{victim}")
    expect(File.read(victim)).to eq('keep')
  end

  it 'gives sessions an empty home, so no start-up file of the login user runs' do
    key = sshd.client('sender', command: %(printf '%s' "$HOME"))
    out, err, status = sshd.ssh(key, 'ignored')
    expect(status).to be_success, err
    expect(out).to eq(File.join(sshd.dir, 'home'))
    expect(Dir.children(out)).to be_empty
  end

  it 'carries stdin and stdout through the forced command' do
    key = sshd.client('sender', command: 'cat')
    data = Random.new(1).bytes(256 * 1024)
    out, err, status = sshd.ssh(key, 'ignored', input: data)
    expect(status).to be_success, err
    expect(out.b).to eq(data.b)
  end

  it 'pins its host key in known_hosts and refuses clients that do not have it' do
    key = sshd.client('sender', command: 'true')
    expect(File.read(sshd.known_hosts)).to eq("[127.0.0.1]:#{sshd.port} #{sshd.host_key_line}\n")
    expect(sshd.host_key_fingerprint).to match(%r{\ASHA256:[A-Za-z0-9+/]{43}\z})

    empty = File.join(sshd.dir, 'empty_known_hosts')
    File.write(empty, '')
    _out, err, status = sshd.ssh(key, '', known_hosts: empty)
    expect(status).not_to be_success
    expect(err).to include('Host key verification failed')
  end

  it 'honours from= and refuses keys it does not know' do
    here = sshd.client('here', command: 'echo allowed', from: '127.0.0.1')
    elsewhere = sshd.client('elsewhere', command: 'echo allowed', from: '127.0.0.2')
    stranger = sshd.client_key('stranger')

    out, err, status = sshd.ssh(here)
    expect(status).to be_success, err
    expect(out).to eq("allowed\n")
    [elsewhere, stranger].each do |key|
      _out, err, status = sshd.ssh(key)
      expect(status).not_to be_success
      expect(err).to include('Permission denied')
    end
  end

  # Twice: once while the command is still being started (the racy moment),
  # once with it running.
  [false, true].each do |settled|
    it "stops the listener and its sessions by PID (command #{settled ? 'running' : 'starting'})" do
      key = sshd.client('sleeper', command: 'exec sleep 60')
      pid = sshd.pid
      client = Process.spawn(*sshd.ssh_argv(key), in: File::NULL, out: File::NULL, err: File::NULL)
      running = lambda do
        sshd.session_pids.any? { |p| File.read("/proc/#{p}/cmdline").start_with?('sleep') rescue false } # rubocop:disable Style/RescueModifier
      end
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      until settled ? running.call : sshd.session_pids.size >= 2
        raise 'the session never started' if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.005
      end
      sessions = sshd.session_pids

      sshd.stop
      Process.wait(client)
      expect(sshd.running?).to be(false)
      expect(described_class.alive?(pid)).to be(false)
      expect(sessions.select { |p| described_class.alive?(p) }).to be_empty
    end
  end
end
