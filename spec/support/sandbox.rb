# frozen_string_literal: true

require 'etc'
require 'fileutils'
require 'json'
require 'open3'
require 'rbconfig'
require_relative 'test_ca'
require_relative 'sshd'
require_relative 'nc_emulator_process'

module PeFailoverSpec
  # Two Puppet Enterprise primaries on one machine, for the two-master
  # acceptance spec and `make demo`.
  #
  # "Master A" and "master B" are two roots under one directory. Each has a
  # Puppet-layout ssl directory (one real CA, made by {TestCA}, shared the
  # way a warm spare shares it), its own Puppet state (confdir, vardir...),
  # and everything the module installs (`opt/pe_failover`, `facts.d`,
  # `cron.d`, `systemd`, `run`). B has an OpenSSH sshd on 127.0.0.1 that
  # reads the authorized_keys file the module writes; each may have a
  # classifier emulator. The module comes from its tarball, installed with
  # `puppet module install` into `<root>/modules`.
  #
  #   sb = PeFailoverSpec::Sandbox.new(root: Dir.mktmpdir)
  #   sb.install_module(tarball)
  #   sb.make_ca
  #   sb.start_sshd
  #   sb.apply(sb.a, sb.active_manifest)    # => [exit code, output, seconds]
  #   sb.apply(sb.b, sb.passive_manifest)
  #   sb.cleanup                             # stops what it started, removes root
  #
  # Nothing outside `root` is written: the transfer user is root (with its
  # own sshd configuration, not the system's), services use the pid-file
  # provider, cron and unit files go to sandbox directories.
  # {Sandbox.host_state} captures what the module would touch on a real
  # host, to prove that.
  class Sandbox
    # One primary of the pair.
    Master = Struct.new(:name, :certname, :root) do
      def path(*rel) = File.join(root, *rel)
      def ssldir = path('ssl')
      def cadir = path('ssl', 'ca')
      def base_dir = path('opt', 'pe_failover')
      def config = path('opt', 'pe_failover', 'etc', 'config.json')
      def state_dir = path('opt', 'pe_failover', 'state')
      def wrapper = path('opt', 'pe_failover', 'bin', 'pe_failover')
      def facts_dir = path('facts.d')
      def facts_file = path('facts.d', 'pe_failover.yaml')
      def cron_file = path('cron.d', 'pe_failover')
      def unit_dir = path('systemd')
      def pidfile = path('run', 'pe_failover.pid')
      def public_key = path('opt', 'pe_failover', 'ssh', 'id_ed25519.pub')
      def authorized_keys = path('opt', 'pe_failover', 'home', '.ssh', 'authorized_keys')
      def puppet_dir(name) = path('puppet', name)
    end

    # What the module would create on a real host with its defaults.
    HOST_PATHS = %w[/opt/pe_failover /etc/cron.d/pe_failover /etc/systemd/system/pe_failover.service
                    /opt/puppetlabs/facter/facts.d/pe_failover.yaml /etc/facter/facts.d/pe_failover.yaml
                    /run/pe_failover.pid].freeze

    attr_reader :root, :a, :b, :modules, :ca, :classifiers

    def initialize(root:, a: 'a.example.com', b: 'b.example.com')
      @root = File.expand_path(root)
      @a = Master.new('A', a, File.join(@root, 'master-a'))
      @b = Master.new('B', b, File.join(@root, 'master-b'))
      @modules = File.join(@root, 'modules')
      @classifiers = {}
      @sshd = {}
      [@a, @b].each do |m|
        %w[facts.d cron.d run systemd opt].each { |d| FileUtils.mkdir_p(m.path(d)) }
        %w[confdir vardir codedir logdir rundir].each { |d| FileUtils.mkdir_p(m.puppet_dir(d)) }
      end
      FileUtils.mkdir_p(@modules)
    end

    # What the module would touch on this host outside any sandbox: users,
    # groups, cron and unit files, its default paths. Equal before and after
    # a run means the run stayed inside its sandbox.
    def self.host_state
      {
        'passwd' => File.read('/etc/passwd'),
        'group' => File.read('/etc/group'),
        'cron.d' => Dir.exist?('/etc/cron.d') ? Dir.children('/etc/cron.d').sort : [],
        'crontabs' => Dir.exist?('/var/spool/cron/crontabs') ? Dir.children('/var/spool/cron/crontabs').sort : [],
        'units' => Dir.exist?('/etc/systemd/system') ? Dir.children('/etc/systemd/system').sort : [],
        'paths' => HOST_PATHS.select { |p| File.exist?(p) },
      }
    end

    # Installs the module tarball into `<root>/modules`. Returns the output.
    def install_module(tarball)
      run!('puppet', 'module', 'install', '--ignore-dependencies', '--target-dir', @modules, tarball, *puppet_args(@a))
    end

    # The names of the groups on master m's classifier, as m itself sees them.
    def group_names(m)
      @classifiers.fetch(m.name).client(m.certname).get('/classifier-api/v1/groups').json.map { |g| g['name'] }.sort
    end

    # The installed module's lib directory.
    def module_lib = File.join(@modules, 'pe_failover', 'lib')

    # Makes the CA on A (with `certs` signed agents) and both primaries'
    # host identities; B's cadir starts as a copy of A's, the usual way a
    # warm spare is built.
    def make_ca(certs: 3, key_bits: 2048)
      @ca = TestCA.create(@a.ssldir, ca_name: "Puppet CA: #{@a.certname}", key_bits: key_bits)
      certs.times { |i| @ca.sign(format('agent%03d.example.com', i)) }
      @ca.host_files(@a.certname, @a.ssldir)
      @ca.host_files(@b.certname, @b.ssldir)
      FileUtils.cp_r(@a.cadir, @b.ssldir, preserve: true)
      @ca
    end

    # Starts master m's sshd (B's by default): root may log in with a key
    # listed in the authorized_keys file the module writes on m, and with
    # no other.
    def start_sshd(m = @b)
      @sshd[m.name] = Sshd.new(dir: m.path('sshd'), user: 'root', authorized_keys: m.authorized_keys).start
    end

    # Master m's sshd, once started.
    def sshd(m = @b) = @sshd.fetch(m.name)

    # ssh from master `from` to master `to` with from's transfer key and
    # pinned known_hosts (exactly what the sender uses), running `command`.
    # Returns [exit code, stdout + stderr].
    def ssh(from, to, command = '', input: '')
      known_hosts = from.path('opt', 'pe_failover', 'ssh', 'known_hosts')
      argv = ['ssh', '-F', '/dev/null', '-i', from.path('opt', 'pe_failover', 'ssh', 'id_ed25519'),
              '-o', "UserKnownHostsFile=#{known_hosts}", '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes',
              '-o', 'IdentitiesOnly=yes', '-p', sshd(to).port.to_s, "root@#{Sshd::HOST}", command]
      out, status = Open3.capture2e(*argv, stdin_data: input)
      [status.exitstatus, out]
    end

    # Starts a classifier emulator for each primary (its own certname
    # allowed in); the active then manages its pe_failover groups there.
    def start_classifiers
      [@a, @b].each do |m|
        @classifiers[m.name] = NcEmulatorProcess.new(dir: m.path('classifier'), ca: @ca, server_name: m.certname,
                                                     allowlist: [m.certname]).start
      end
    end

    # `puppet apply` of manifest on master m, with the sandbox's modulepath
    # and m's own Puppet state. Returns [exit code, output, seconds].
    def apply(m, manifest)
      start = monotonic
      out, status = Open3.capture2e(env(m), 'puppet', 'apply', *puppet_args(m), '--modulepath', modulepath,
                                    '--detailed-exitcodes', '--color=false', '-e', manifest)
      [status.exitstatus, out, monotonic - start]
    end

    # `puppet pe_failover ACTION` on master m (the installed face).
    # Returns [exit code, stdout, stderr].
    def face(m, action, *args)
      out, err, status = Open3.capture3(env(m), 'puppet', 'pe_failover', action, '--config_file', m.config,
                                        *(%w[promote demote].include?(action) ? ['--facts_file', m.facts_file] : []),
                                        *args, '--libdir', module_lib, *puppet_args(m), '--color=false')
      [status.exitstatus, out, err]
    end

    # The installed pe_failover command on master m. Returns [exit code, output].
    def command(m, *args)
      out, status = Open3.capture2e(env(m), m.wrapper, *args)
      [status.exitstatus, out]
    end

    # Whether the installed module's native runner implements replication
    # (sync/receive/apply), i.e. the `runner` branch has landed.
    def runner?
      code = 'require "puppet_x/pe_failover/native"; n = PuppetX::PeFailover::NativeLoader; ' \
             'exit(n.available? && %i[_receive _apply _watch].all? { |m| n.load!.respond_to?(m) } ? 0 : 1)'
      system(RbConfig.ruby, '-I', module_lib, '-e', code, out: File::NULL, err: File::NULL)
    end

    # Settings of the class pe_failover that keep master m in the sandbox.
    def base_manifest(m, service: 'stopped', nc: false)
      <<~PP
        class { 'pe_failover':
          base_dir         => '#{m.base_dir}',
          facts_dir        => '#{m.facts_dir}',
          unit_dir         => '#{m.unit_dir}',
          cron_file        => '#{m.cron_file}',
          pidfile          => '#{m.pidfile}',
          service_provider => 'base',
          service_ensure   => '#{service}',
          manage_user      => false,
          transfer_user    => 'root',
          transfer_group   => '#{Etc.getgrgid(0).name}',
          certname         => '#{m.certname}',
          ssldir           => '#{m.ssldir}',
          cadir            => '#{m.cadir}',
          ca_owner         => 'root',
          ca_group         => '#{Etc.getgrgid(0).name}',
          reload_command   => ['true'],
          nc_enabled       => #{nc},
          #{@classifiers[m.name] ? "nc_server        => '#{@classifiers[m.name].base_url}'," : ''}
          log_syslog       => false,
        }
      PP
    end

    # pe_failover::active on m, shipping to `to` through to's sshd.
    def active_manifest(m = @a, to = @b, sync_on_run: false, **base)
      base_manifest(m, **base) + <<~PP
        class { 'pe_failover::active':
          passive_master     => '#{Sshd::HOST}',
          passive_host_key   => '#{sshd(to).host_key_line.split[0, 2].join(' ')}',
          ssh_port           => #{sshd(to).port},
          nc_hostnames       => { '#{m.certname}' => '#{to.certname}' },
          sync_on_run        => #{sync_on_run},
          manage_node_groups => #{@classifiers.key?(m.name)},
        }
      PP
    end

    # pe_failover::passive on m, accepting the transfer key of `from`.
    def passive_manifest(m = @b, from = @a, **base)
      base_manifest(m, **base) + <<~PP
        class { 'pe_failover::passive':
          auth_key => '#{File.read(from.public_key).strip}',
        }
      PP
    end

    # Stops every process the sandbox started (by pid) and removes root.
    def cleanup
      [@a, @b].each do |m|
        pid = File.exist?(m.pidfile) ? File.read(m.pidfile).to_i : 0
        Process.kill('TERM', pid) if pid.positive?
      rescue Errno::ESRCH
        nil
      end
      @classifiers.each_value(&:stop)
      @sshd.each_value(&:stop)
      FileUtils.rm_rf(@root)
    end

    def modulepath = [@modules, '/usr/share/puppet/modules'].join(':')

    private

    def puppet_args(m)
      %w[confdir vardir codedir logdir rundir].flat_map { |d| ["--#{d}", m.puppet_dir(d)] }
    end

    # The fact and the face find m's configuration through this variable.
    def env(m)
      { 'PE_FAILOVER_CONFIG' => m.config }
    end

    def run!(*cmd)
      out, status = Open3.capture2e(*cmd)
      raise "#{cmd.join(' ')} failed:\n#{out}" unless status.success?

      out
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
