#!/usr/bin/env ruby
# frozen_string_literal: true

require 'etc'
require 'fileutils'
require 'open3'
require 'shellwords'
require 'socket'

module PeFailoverSpec
  # A real OpenSSH sshd on 127.0.0.1 for specs and the demo; the Ruby twin of
  # ext/pe_failover_core/tests/util/sshd.rs.
  #
  # It runs `/usr/sbin/sshd -D -e -f <dir>/sshd_config` with everything in
  # `dir`: its own ed25519 host key, its own authorized_keys, a PID file and
  # its log; nothing from /etc/ssh is read. Keys are authorized the way the
  # module writes the passive's entry: `restrict,command="<cmd>"`, optionally
  # `from="<pattern>"`. `known_hosts` pins the server's key as
  # `[127.0.0.1]:<port>`, so clients never have to trust on first use.
  #
  #   sshd = PeFailoverSpec::Sshd.new(dir: tmp).start
  #   key = sshd.client('sender', command: 'cat')   # a key whose only command is cat
  #   out, err, status = sshd.ssh(key, 'rm -rf /', input: 'hello')
  #   out                                          # => "hello" (the forced command ran)
  #   sshd.stop                                    # TERM, then KILL, by PID
  #
  # `stop` reaches every session process still under the listener. A forced
  # command that outlives its connection (`sleep 60` after the client hung up)
  # has left sshd's process tree by then: prefer commands that end at end of
  # input (`cat >/dev/null` is a silent one).
  #
  # Needs root (sshd's privilege separation, /run/sshd) and Debian's
  # openssh-server and openssh-client. A login user other than root needs a
  # shell and an unlocked account (`usermod -p '*' USER`: with UsePAM no, sshd
  # refuses accounts whose password field starts with `!`), and must be able
  # to read `dir` (it is made 0755).
  class Sshd
    SSHD = '/usr/sbin/sshd'
    SSH_KEYGEN = '/usr/bin/ssh-keygen'
    SSH = '/usr/bin/ssh'
    HOST = '127.0.0.1'

    # Raised when sshd does not come up; the message includes its log.
    class StartError < StandardError; end

    # A client key pair made by `ssh-keygen -t ed25519` (no passphrase).
    ClientKey = Struct.new(:private_key, :public_key) do
      # `ssh-ed25519 AAAA... comment`
      def public_line
        File.read(public_key).strip
      end
    end

    attr_reader :dir, :port, :pid, :user, :known_hosts, :authorized_keys, :host_key, :log_path

    # A port nobody listens on right now (sshd binds it moments later).
    def self.free_port
      server = TCPServer.new(HOST, 0)
      server.addr[1]
    ensure
      server&.close
    end

    # dir: working directory (created). user: the only user allowed in (the
    # current one by default). config: extra sshd_config lines.
    # authorized_keys: the AuthorizedKeysFile sshd reads (default
    # `dir/authorized_keys`, created empty); give another path to let sshd
    # read a file someone else writes, such as the module's.
    def initialize(dir:, user: Etc.getpwuid(Process.euid).name, config: [], authorized_keys: nil)
      [SSHD, SSH_KEYGEN].each do |tool|
        next if File.executable?(tool)

        package = tool == SSHD ? 'openssh-server' : 'openssh-client'
        raise StartError, "#{tool} is missing: install it with `apt-get install #{package}` (or `make deps`)"
      end
      @dir = File.expand_path(dir)
      FileUtils.mkdir_p(@dir)
      File.chmod(0o755, @dir)
      @user = user
      @extra_config = config
      @host_key = File.join(@dir, 'ssh_host_ed25519_key')
      @own_authorized_keys = authorized_keys.nil?
      @authorized_keys = authorized_keys ? File.expand_path(authorized_keys) : File.join(@dir, 'authorized_keys')
      @known_hosts = File.join(@dir, 'known_hosts')
      @log_path = File.join(@dir, 'sshd.log')
      # The sessions' home: empty, so no login user's start-up files run
      # (bash reads ~/.bashrc even for a forced command).
      @home = File.join(@dir, 'home')
      FileUtils.mkdir_p(@home)
      File.chmod(0o755, @home)
      keygen(@host_key, 'pe_failover test sshd') unless File.exist?(@host_key)
      return unless @own_authorized_keys

      File.write(@authorized_keys, '') unless File.exist?(@authorized_keys)
      File.chmod(0o644, @authorized_keys)
    end

    # Starts sshd and returns once it listens (a few ports are tried in case
    # another process takes the free one first).
    def start(timeout: 15)
      ensure_privsep_dir
      last = nil
      3.times do
        @port = self.class.free_port
        write_config
        spawn_sshd
        begin
          wait_listening(timeout)
          File.write(@known_hosts, "[#{HOST}]:#{@port} #{host_key_line}\n")
          return self
        rescue StartError => e
          last = e
          raise unless e.message.include?('Address already in use')
        end
      end
      raise last
    end

    def running?
      !@pid.nil? && !exited?
    end

    # TERM to the sessions and the listener, then KILL to whatever is left
    # after `timeout` seconds. (A session process caught between fork and
    # exec can swallow the TERM in sshd's handler, so survivors always get
    # KILL.) Safe to call twice.
    def stop(timeout: 3)
      return unless running?

      sessions = session_pids
      signal(sessions, 'TERM')
      listener_gone = wait_until(timeout) { exited? }
      left = wait_gone(sessions, listener_gone ? 1 : 0)
      return if listener_gone && left.empty?

      signal(left, 'KILL')
      wait_until(5) { exited? }
      wait_gone(left, 5)
    ensure
      @pid = nil if @pid && exited?
    end

    # KILL to the sessions and the listener at once, like a crash.
    def kill
      return unless running?

      sessions = session_pids
      signal(sessions, 'KILL')
      wait_until(5) { exited? }
      wait_gone(sessions, 5)
      @pid = nil
    end

    # Whether `pid` is a live process (not gone, not a zombie).
    def self.alive?(pid)
      stat = File.read("/proc/#{pid}/stat")
      !%w[Z X].include?(stat[(stat.rindex(')') + 1)..].split[0])
    rescue SystemCallError
      false
    end

    # `ssh-ed25519 AAAA...` of the host key (no comment).
    def host_key_line
      File.read("#{@host_key}.pub").split[0, 2].join(' ')
    end

    # `SHA256:...`, as `ssh-keygen -lf` prints it.
    def host_key_fingerprint
      out, status = Open3.capture2(SSH_KEYGEN, '-lf', "#{@host_key}.pub")
      raise "ssh-keygen -lf failed: #{out}" unless status.success?

      out.split[1]
    end

    # A new ed25519 key pair in `dir` (not authorized).
    def client_key(name)
      raise ArgumentError, "bad key name #{name.inspect}" unless name.match?(/\A[\w.-]+\z/)

      path = File.join(@dir, "client_#{name}")
      keygen(path, name)
      ClientKey.new(path, "#{path}.pub")
    end

    # Authorizes `key` with `restrict,command="<command>"` (and `from=`).
    def authorize(key, command:, from: nil)
      options = +%(restrict,command="#{command.gsub('"', '\"')}")
      options << %(,from="#{from}") if from
      authorize_line("#{options} #{key.public_line}")
    end

    # Appends a raw authorized_keys line.
    def authorize_line(line)
      File.open(@authorized_keys, 'a') { |f| f.puts(line) }
    end

    # A new key authorized with the forced command `command`.
    def client(name, command:, from: nil)
      key = client_key(name)
      authorize(key, command: command, from: from)
      key
    end

    # The argv of OpenSSH's client logging in with `key`: host key pinned by
    # `known_hosts` (StrictHostKeyChecking yes), no config, no agent, batch mode.
    def ssh_argv(key, remote_command = nil, known_hosts: @known_hosts)
      argv = [SSH, '-F', '/dev/null', '-p', @port.to_s, '-i', key.private_key,
              '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'IdentityAgent=none',
              '-o', 'StrictHostKeyChecking=yes', '-o', "UserKnownHostsFile=#{known_hosts}",
              '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=10',
              '-l', @user, HOST]
      argv << remote_command if remote_command
      argv
    end

    # Runs `ssh` with `key`; returns [stdout, stderr, Process::Status].
    def ssh(key, remote_command = '', input: '', known_hosts: @known_hosts)
      Open3.capture3(*ssh_argv(key, remote_command, known_hosts: known_hosts), stdin_data: input, binmode: true)
    end

    # PIDs of the session processes sshd forked (below the listener).
    def session_pids
      return [] unless @pid

      descendants(@pid)
    end

    def log_contents
      File.exist?(@log_path) ? File.read(@log_path) : ''
    end

    def config_path = File.join(@dir, 'sshd_config')

    private

    def ensure_privsep_dir
      return if File.directory?('/run/sshd')

      FileUtils.mkdir_p('/run/sshd')
      File.chmod(0o755, '/run/sshd')
    end

    def keygen(path, comment)
      out, status = Open3.capture2e(SSH_KEYGEN, '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path,
                                    stdin_data: '')
      raise "ssh-keygen failed for #{path}: #{out}" unless status.success?
    end

    def write_config
      lines = [
        '# Generated by the pe_failover test harness; nothing from /etc/ssh.',
        "Port #{@port}", "ListenAddress #{HOST}", 'AddressFamily inet',
        "HostKey #{@host_key}", "PidFile #{File.join(@dir, 'sshd.pid')}",
        "AuthorizedKeysFile #{@authorized_keys}",
        'StrictModes no', 'UsePAM no', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
        'HostbasedAuthentication no', 'PubkeyAuthentication yes', 'PermitRootLogin prohibit-password',
        "AllowUsers #{@user}", 'AllowTcpForwarding no', 'AllowAgentForwarding no', 'X11Forwarding no',
        'PermitTunnel no', 'PermitUserEnvironment no', "SetEnv HOME=#{@home}", 'UseDNS no', 'PrintMotd no',
        'LoginGraceTime 30', 'MaxStartups 100', 'LogLevel VERBOSE'
      ] + @extra_config
      File.write(config_path, lines.map { |l| "#{l}\n" }.join)
    end

    def spawn_sshd
      @exit_status = nil
      @pid = Process.spawn(SSHD, '-D', '-e', '-f', config_path,
                           in: File::NULL, out: File::NULL, err: [@log_path, 'w'])
    end

    def wait_listening(timeout)
      listening = "Server listening on #{HOST} port #{@port}"
      deadline = monotonic + timeout
      until log_contents.include?(listening)
        raise StartError, "sshd exited (#{@exit_status.inspect})\n#{log_contents}" if exited?
        if monotonic > deadline
          stop
          raise StartError, "sshd not listening after #{timeout}s\n#{log_contents}"
        end
        sleep 0.02
      end
    end

    def exited?
      return true if @exit_status || @pid.nil?

      _, status = Process.waitpid2(@pid, Process::WNOHANG)
      @exit_status = status if status
      !status.nil?
    rescue Errno::ECHILD
      true
    end

    # Sends `name` to `sessions`, then to the listener. Sessions first: once
    # the listener is gone they are reparented and could no longer be found.
    def signal(sessions, name)
      (sessions + [@pid].compact).each do |p|
        Process.kill(name, p)
      rescue Errno::ESRCH
        nil
      end
    end

    def wait_until(seconds)
      deadline = monotonic + seconds
      loop do
        return true if yield
        return false if monotonic >= deadline

        sleep 0.02
      end
    end

    # Waits up to `seconds` for `pids` to end; returns those still alive.
    def wait_gone(pids, seconds)
      wait_until(seconds) { pids.none? { |p| self.class.alive?(p) } }
      pids.select { |p| self.class.alive?(p) }
    end

    def descendants(root)
      parents = Dir.children('/proc').grep(/\A\d+\z/).filter_map do |p|
        stat = File.read("/proc/#{p}/stat")
        [Integer(p), Integer(stat[(stat.rindex(')') + 1)..].split[1])]
      rescue SystemCallError, ArgumentError
        nil
      end
      found = []
      frontier = [root]
      until frontier.empty?
        parent = frontier.pop
        parents.each do |p, pp|
          next unless pp == parent && !found.include?(p)

          found << p
          frontier << p
        end
      end
      found
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end

# `ruby spec/support/sshd.rb DIR [COMMAND]`: runs a test sshd in the
# foreground (Ctrl-C stops it) with one client key whose forced command is
# COMMAND (default `cat`), and prints how to log in.
if File.expand_path($PROGRAM_NAME) == File.expand_path(__FILE__)
  dir = ARGV[0] or abort("usage: #{$PROGRAM_NAME} DIR [FORCED_COMMAND]")
  sshd = PeFailoverSpec::Sshd.new(dir: dir).start
  key = sshd.client('demo', command: ARGV[1] || 'cat')
  puts "sshd PID #{sshd.pid} on #{PeFailoverSpec::Sshd::HOST}:#{sshd.port}"
  puts "host key #{sshd.host_key_fingerprint}, pinned in #{sshd.known_hosts}"
  puts "log in:  #{sshd.ssh_argv(key, 'anything').shelljoin}"
  begin
    sleep
  rescue Interrupt
    nil
  ensure
    sshd.stop
  end
end
