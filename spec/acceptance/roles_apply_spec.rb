# frozen_string_literal: true

# Applies pe_failover::active, then pe_failover::passive, then
# pe_failover::active again on this machine with `puppet apply`, every path
# pointed into a temporary sandbox, and checks the result on disk after each
# run: owners and modes, the generated key, known_hosts, authorized_keys,
# cron and facts files, the watcher process (base service provider), the
# cleanup of the other role, and that a second run changes nothing.
#
# The pe_failover command line is replaced by a stand-in honouring its
# contract (`watch --daemonize --pidfile`, `pin-host-key`), so the watcher
# service and the trust-on-first-use exec run for real. Needs root (files
# are owned by root) and ssh-keygen.

require 'spec_helper'
require 'etc'
require 'fileutils'
require 'json'
require 'open3'
require 'rbconfig'
require 'tmpdir'
require_relative '../support/classes'

RSpec.describe 'the role classes applied in a sandbox', :acceptance do
  # Stand-in for lib/puppet_x/pe_failover/cli.rb.
  FAKE_CLI = <<~'RUBY'
    # frozen_string_literal: true

    cmd = ARGV.shift
    opts = {}
    until ARGV.empty?
      arg = ARGV.shift
      if arg == '--daemonize' then opts[:daemonize] = true
      else opts[arg.delete_prefix('--').tr('-', '_').to_sym] = ARGV.shift
      end
    end
    case cmd
    when 'watch'
      abort 'watch: no --config' unless opts[:config] && File.exist?(opts[:config])
      Process.daemon(true, false) if opts[:daemonize]
      File.write(opts[:pidfile], "#{Process.pid}\n") if opts[:pidfile]
      role = File.read(opts[:config])[/"role": "(\w+)"/, 1]
      File.write(File.join(File.dirname(opts[:pidfile]), "watch.#{Process.pid}.role"), role) if opts[:pidfile]
      trap('TERM') do
        File.delete(opts[:pidfile]) if opts[:pidfile] && File.read(opts[:pidfile]).to_i == Process.pid
        exit 0
      end
      sleep
    when 'pin-host-key'
      File.write(opts[:known_hosts], "[#{opts[:host]}]:#{opts[:port]} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw5\n")
      puts "pinned #{opts[:host]}:#{opts[:port]} SHA256:stand-in"
    else
      abort "stand-in CLI: unexpected command #{cmd}"
    end
  RUBY

  before(:all) do
    skip 'needs root (files are owned by root)' unless Process.uid.zero?
    skip 'needs ssh-keygen' unless system('command -v ssh-keygen >/dev/null')

    @tmp = Dir.mktmpdir('pe_failover-roles')
    @sb = File.join(@tmp, 'sb')
    @lib = File.join(@tmp, 'lib')
    FileUtils.mkdir_p([File.join(@lib, 'puppet_x', 'pe_failover'), File.join(@sb, 'opt'), File.join(@sb, 'facts.d'), File.join(@sb, 'run'),
                       File.join(@sb, 'cron.d')])
    File.write(File.join(@lib, 'puppet_x', 'pe_failover', 'cli.rb'), FAKE_CLI)
    @puppet_dirs = %w[confdir vardir codedir logdir rundir].flat_map do |d|
      FileUtils.mkdir_p(File.join(@tmp, 'puppet', d))
      ["--#{d}", File.join(@tmp, 'puppet', d)]
    end
    @group = Etc.getgrgid(Process.gid).name
  end

  after(:all) do
    if @tmp
      pid = File.read(pidfile).to_i if File.exist?(pidfile)
      Process.kill('TERM', pid) if pid&.positive?
      FileUtils.rm_rf(@tmp)
    end
  rescue Errno::ESRCH
    FileUtils.rm_rf(@tmp)
  end

  def base
    <<~PP
      class { 'pe_failover':
        base_dir         => '#{@sb}/opt/pe_failover',
        facts_dir        => '#{@sb}/facts.d',
        unit_dir         => '#{@sb}/systemd',
        cron_file        => '#{@sb}/cron.d/pe_failover',
        pidfile          => '#{@sb}/run/pe_failover.pid',
        service_provider => 'base',
        manage_user      => false,
        transfer_user    => 'root',
        transfer_group   => '#{@group}',
        ruby             => '#{RbConfig.ruby}',
        libdir           => '#{@lib}',
        certname         => 'a.example.com',
        reload_command   => ['true'],
      }
    PP
  end

  def active
    base + <<~PP
      class { 'pe_failover::active':
        passive_master     => ['b.example.com', 'c.example.com'],
        passive_host_key   => { 'c.example.com' => '#{PeFailoverSpec::Classes::HOST_KEY_C}' },
        trust_on_first_use => true,
        ssh_port           => 2222,
        nc_hostnames       => {},
        sync_on_run        => false,
        manage_node_groups => false,
      }
    PP
  end

  def passive
    base + "class { 'pe_failover::passive': auth_key => '#{PeFailoverSpec::Classes::TRANSFER_KEY}' }\n"
  end

  def apply(manifest)
    out, status = Open3.capture2e('puppet', 'apply', *@puppet_dirs, '--modulepath', MODULES, '--detailed-exitcodes',
                                  '--color=false', '-e', manifest)
    [status.exitstatus, out]
  end

  def opt(*rel)
    File.join(@sb, 'opt', 'pe_failover', *rel)
  end

  def pidfile
    File.join(@sb, 'run', 'pe_failover.pid')
  end

  def stat(path)
    st = File.stat(path)
    [Etc.getpwuid(st.uid).name, Etc.getgrgid(st.gid).name, format('%04o', st.mode & 0o7777)]
  end

  def watcher
    pid = File.read(pidfile).to_i
    Process.kill(0, pid)
    [pid, File.read(File.join(@sb, 'run', "watch.#{pid}.role"))]
  end

  def wait_for(timeout = 5)
    deadline = Time.now + timeout
    until (v = yield)
      raise 'timed out' if Time.now > deadline

      sleep 0.05
    end
    v
  end

  it 'sets up an active, demotes it to a passive and promotes it back, leaving nothing of the other role' do
    # --- active
    code, out = apply(active)
    expect(code).to eq(2), out
    expect(out).to include('pinned b.example.com:2222 SHA256:stand-in') # the fingerprint reaches the run's output

    expect(stat(opt)).to eq(['root', 'root', '0755'])
    expect(stat(opt('etc'))).to eq(['root', @group, '0750'])
    expect(stat(opt('etc', 'config.json'))).to eq(['root', @group, '0640'])
    expect(stat(opt('state'))).to eq(['root', @group, '0750'])
    expect(stat(opt('state', 'snapshots'))).to eq(['root', 'root', '0700'])
    expect(stat(opt('ssh'))).to eq(['root', 'root', '0700'])
    expect(stat(opt('ssh', 'id_ed25519'))).to eq(['root', 'root', '0600'])
    key_info, = Open3.capture2e('ssh-keygen', '-l', '-f', opt('ssh', 'id_ed25519.pub'))
    expect(key_info).to match(%r{\A256 SHA256:\S+ pe_failover@a\.example\.com \(ED25519\)$})
    first_key = File.read(opt('ssh', 'id_ed25519.pub'))

    expect(File.read(opt('ssh', 'known_hosts'))).to eq("[c.example.com]:2222 #{PeFailoverSpec::Classes::HOST_KEY_C}\n")
    expect(File.read(opt('ssh', 'known_hosts.d', 'b.example.com'))).to start_with('[b.example.com]:2222 ssh-ed25519 ')
    expect(File.read(File.join(@sb, 'cron.d', 'pe_failover')))
      .to include("*/15 * * * * root #{opt('bin', 'pe_failover')} sync --config #{opt('etc', 'config.json')}\n")
    expect(File.read(File.join(@sb, 'facts.d', 'pe_failover.yaml')))
      .to include(%(pe_failover_mode: "active"\npe_failover_passive_master: "b.example.com"\n))
    config = JSON.parse(File.read(opt('etc', 'config.json')))
    expect(config['replicas'].map { |r| r['known_hosts'] })
      .to eq([opt('ssh', 'known_hosts.d', 'b.example.com'), opt('ssh', 'known_hosts')])
    expect(File.executable?(opt('bin', 'pe_failover'))).to be(true)
    active_pid, role = wait_for { watcher rescue nil } # rubocop:disable Style/RescueModifier
    expect(role).to eq('active')

    # A second run changes nothing; a stray trusted key is purged.
    code, out = apply(active)
    expect(code).to eq(0), out
    File.write(opt('ssh', 'known_hosts.d', 'gone.example.com'), "gone.example.com ssh-ed25519 AAAA\n")
    code, out = apply(active)
    expect(code).to eq(2), out
    expect(Dir.children(opt('ssh', 'known_hosts.d'))).to eq(['b.example.com'])

    # --- demoted to passive
    code, out = apply(passive)
    expect(code).to eq(2), out
    expect(Dir.children(opt('ssh'))).to eq([])
    expect(stat(opt('ssh'))).to eq(['root', @group, '0750'])
    expect(File).not_to exist(File.join(@sb, 'cron.d', 'pe_failover'))
    expect(File.read(opt('home', '.ssh', 'authorized_keys'))).to eq(
      %(restrict,command="#{opt('bin', 'pe_failover')} receive --config #{opt('etc', 'config.json')}" #{PeFailoverSpec::Classes::TRANSFER_KEY}\n),
    )
    expect(stat(opt('home', '.ssh', 'authorized_keys'))).to eq(['root', @group, '0640'])
    expect(stat(opt('state', 'incoming'))).to eq(['root', @group, '0700'])
    expect(File.read(File.join(@sb, 'facts.d', 'pe_failover.yaml'))).to end_with(%(pe_failover_mode: "passive"\n))
    expect(JSON.parse(File.read(opt('etc', 'config.json')))).to include('role' => 'passive', 'replicas' => [])
    # The watcher was restarted with the new role; the old one is gone.
    passive_pid, role = wait_for { (w = (watcher rescue nil)) && w[0] != active_pid && w } # rubocop:disable Style/RescueModifier
    expect(role).to eq('passive')
    expect { Process.kill(0, active_pid) }.to raise_error(Errno::ESRCH)

    code, out = apply(passive)
    expect(code).to eq(0), out

    # --- promoted back to active
    File.write(opt('state', 'incoming', 'txn.partial'), 'half a transaction')
    code, out = apply(active)
    expect(code).to eq(2), out
    expect(File).not_to exist(opt('home', '.ssh'))
    expect(File).not_to exist(opt('state', 'incoming'))
    expect(File.read(opt('ssh', 'id_ed25519.pub'))).not_to eq(first_key) # a new key: the old one was removed on demotion
    _, role = wait_for { (w = (watcher rescue nil)) && w[0] != passive_pid && w } # rubocop:disable Style/RescueModifier
    expect(role).to eq('active')
    code, out = apply(active)
    expect(code).to eq(0), out

    # The unit file of the systemd provider is never left behind.
    expect(File).not_to exist(File.join(@sb, 'systemd', 'pe_failover.service'))
  end
end
