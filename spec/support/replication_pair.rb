# frozen_string_literal: true

require 'fileutils'
require 'json'
require 'open3'
require 'rbconfig'
require_relative 'sshd'
require_relative 'test_ca'

module PeFailoverSpec
  # An active and a passive primary on this machine for specs: a real test
  # CA in Puppet's layout on the active, a real sshd on 127.0.0.1 whose
  # authorized_keys entry forces the real CLI's `receive` (as the module's
  # passive class installs it), and one configuration file per side.
  #
  #   pair = PeFailoverSpec::ReplicationPair.new(dir).start
  #   out, err, status = pair.cli('sync', pair.active_config)
  #   pair.converged?                    # => true once applied
  class ReplicationPair
    LIB = File.expand_path('../../lib', __dir__)
    CLI = File.join(LIB, 'puppet_x', 'pe_failover', 'cli.rb')

    attr_reader :dir, :sshd, :ca, :key, :a_ssl, :b_ssl

    def initialize(dir)
      @dir = dir
      @a_ssl = File.join(dir, 'a', 'ssl')
      @b_ssl = File.join(dir, 'b', 'ssl')
    end

    def start
      @ca = TestCA.create(@a_ssl)
      @ca.host_files('a.test', @a_ssl)
      @ca.sign('agent0.test')
      FileUtils.mkdir_p(File.join(@b_ssl, 'ca'))
      @ca.host_files('b.test', @b_ssl)
      # What only the passive holds must never be replaced.
      @b_own_key = File.read(File.join(@b_ssl, 'private_keys', 'b.test.pem'))
      @sshd = Sshd.new(dir: File.join(@dir, 'sshd')).start
      @key = @sshd.client_key('transfer')
      write_active
      write_passive('passive')
      @sshd.authorize(@key, command: "#{RbConfig.ruby} -I #{LIB} #{CLI} receive --config #{passive_config}")
      self
    end

    def stop
      @sshd&.stop
    end

    def active_config
      File.join(@dir, 'active.json')
    end

    def passive_config
      File.join(@dir, 'passive.json')
    end

    def a_cadir
      File.join(@a_ssl, 'ca')
    end

    def b_cadir
      File.join(@b_ssl, 'ca')
    end

    # Writes the active's configuration; a block may edit the Hash.
    def write_active
      config = {
        'role' => 'active', 'certname' => 'a.test', 'state_dir' => File.join(@dir, 'a', 'state'),
        'ca' => { 'ssldir' => @a_ssl, 'cadir' => a_cadir },
        'replicas' => [{ 'host' => Sshd::HOST, 'port' => @sshd.port, 'user' => @sshd.user,
                         'identity_file' => @key.private_key, 'known_hosts' => @sshd.known_hosts,
                         'connect_timeout' => 5, 'io_timeout' => 15 }],
        'nc' => { 'enabled' => false },
        'watch' => { 'debounce_ms' => 100, 'max_delay_ms' => 1000, 'verify_interval' => 300, 'retry_interval' => 1 },
        'log' => { 'syslog' => false, 'stderr' => false },
      }
      yield config if block_given?
      File.write(active_config, JSON.pretty_generate(config))
    end

    def write_passive(role)
      config = {
        'role' => role, 'certname' => 'b.test', 'state_dir' => File.join(@dir, 'b', 'state'),
        'ca' => { 'ssldir' => @b_ssl, 'cadir' => b_cadir, 'owner' => 'root', 'group' => 'root',
                  'reload_command' => ['true'] },
        'nc' => { 'enabled' => false },
        'log' => { 'syslog' => false, 'stderr' => false },
      }
      File.write(passive_config, JSON.pretty_generate(config))
    end

    # Runs the real CLI; returns [stdout, stderr, Process::Status].
    def cli(*args)
      Open3.capture3(RbConfig.ruby, CLI, *args)
    end

    # Relative path => contents of every file under a cadir.
    def self.files(root)
      Dir.glob('**/*', File::FNM_DOTMATCH, base: root).sort.each_with_object({}) do |rel, out|
        path = File.join(root, rel)
        out[rel] = File.binread(path) if File.file?(path)
      end
    end

    def converged?
      self.class.files(a_cadir) == self.class.files(b_cadir) &&
        File.read(File.join(@b_ssl, 'private_keys', 'b.test.pem')) == @b_own_key
    end
  end
end
