# frozen_string_literal: true

require 'fileutils'
require 'json'
require 'net/http'
require 'openssl'
require 'rbconfig'
require 'socket'
require_relative 'test_ca'

module PeFailoverSpec
  # Runs spec/support/nc_emulator.rb as a child process for specs and demos:
  # writes its TLS identity (from a TestCA), allowlist, seed and catalog into
  # `dir`, picks a free port, waits for the ready file, and stops it by PID
  # (TERM, then KILL). On a failed start the error carries the process output.
  #
  #   emu = PeFailoverSpec::NcEmulatorProcess.new(dir: tmp, seed: fixture).start
  #   emu.client.get('/classifier-api/v1/groups').json
  #   emu.fault('error500', count: 1)
  #   emu.stop
  class NcEmulatorProcess
    SCRIPT = File.expand_path('nc_emulator.rb', __dir__)
    FIXTURES = File.expand_path('../fixtures/nc', __dir__)
    HOST = '127.0.0.1'

    # Raised when the emulator does not come up; the message includes its log.
    class StartError < StandardError; end

    attr_reader :dir, :ca, :port, :pid, :server_name, :ssldir, :state_path

    def self.fixture(name)
      File.join(FIXTURES, name)
    end

    # A port nobody listens on right now (the emulator binds it moments later).
    def self.free_port
      server = TCPServer.new(HOST, 0)
      server.addr[1]
    ensure
      server&.close
    end

    # dir: working directory (created). ca: a TestCA; one is created in
    # dir/ca_root when nil. allowlist: certnames allowed in. tokens: RBAC
    # tokens or nil. seed/classes: a file path or Ruby data (written as JSON).
    # state: true to persist state in dir/state.json. crl: pass the CA's CRL.
    # args: extra flags (e.g. %w[--pe2016]).
    def initialize(dir:, ca: nil, server_name: 'nc.test', allowlist: ['client.test'], tokens: nil,
                   seed: nil, classes: nil, state: false, crl: true, port: nil, args: [])
      @dir = File.expand_path(dir)
      FileUtils.mkdir_p(@dir)
      @ca = ca || TestCA.create(File.join(@dir, 'ca_root'))
      @server_name = server_name
      @ssldir = File.join(@dir, 'ssl')
      @fixed_port = port
      @state_path = state ? File.join(@dir, 'state.json') : nil
      @ca.host_files(server_name, @ssldir)
      self.allowlist = allowlist
      write_tokens(tokens)
      @seed_path = data_file('seed.json', seed)
      @classes_path = data_file('classes.json', classes)
      @use_crl = crl
      @extra_args = args
    end

    # Starts the process; with wait: true, returns once it accepts connections.
    def start(wait: true, timeout: 20)
      attempts = @fixed_port ? 1 : 3
      attempts.times do |i|
        spawn_process
        return self unless wait

        begin
          return wait_ready(timeout: timeout)
        rescue StartError => e
          raise unless i < attempts - 1 && e.message.include?('Address already in use')
        end
      end
    end

    # Waits for the ready file; raises StartError (with the log) on exit or timeout.
    def wait_ready(timeout: 20)
      deadline = monotonic + timeout
      until ready?
        raise StartError, "nc_emulator exited with status #{@exit_status.exitstatus.inspect}\n#{log_contents}" if exited?
        if monotonic > deadline
          stop
          raise StartError, "nc_emulator not ready after #{timeout}s\n#{log_contents}"
        end
        sleep 0.02
      end
      @port = Integer(File.read(ready_path).strip)
      self
    end

    def ready?
      File.exist?(ready_path) && !File.read(ready_path).strip.empty?
    end

    def running?
      !@pid.nil? && !exited?
    end

    # TERM, then KILL after `timeout` seconds. Safe to call twice.
    def stop(timeout: 5)
      return unless @pid && !exited?

      signal('TERM')
      deadline = monotonic + timeout
      sleep 0.02 until exited? || monotonic > deadline
      unless exited?
        signal('KILL')
        Process.wait(@pid)
      end
    rescue Errno::ECHILD
      nil
    ensure
      @pid = nil if @pid && exited?
    end

    def restart(**options)
      stop
      start(**options)
    end

    def log_path
      File.join(@dir, 'emulator.log')
    end

    # Request log plus anything the process printed.
    def log_contents
      [log_path, output_path].select { |f| File.exist?(f) }.map { |f| "==> #{f}\n#{File.read(f)}" }.join("\n")
    end

    def allowlist=(names)
      File.write(allowlist_path, names.map { |n| "#{n}\n" }.join)
    end

    def base_url
      "https://#{HOST}:#{@port}"
    end

    # An HTTPS client presenting `certname`'s certificate (signed on first use).
    # cert: false sends no client certificate at all.
    def client(certname = 'client.test', token: nil, cert: true, ca_file: File.join(@ssldir, 'certs', 'ca.pem'))
      return NcClient.new(host: HOST, port: @port, ca_file: ca_file, token: token) unless cert

      files = @ca.host_files(certname, File.join(@dir, 'clients', certname))
      NcClient.new(host: HOST, port: @port, ca_file: ca_file, cert: files[:cert], key: files[:key], token: token)
    end

    # ---- test-only control endpoints ------------------------------------

    def fault(mode, count: nil, delay: nil)
      doc = { 'mode' => mode }
      doc['count'] = count if count
      doc['delay'] = delay if delay
      control(:post, '/_emulator/fault', doc)
    end

    def stage_classes(catalog)
      control(:put, '/_emulator/classes', catalog)
    end

    def stats
      control(:get, '/_emulator/stats')
    end

    def reset_stats
      control(:delete, '/_emulator/stats')
    end

    def reset!
      control(:post, '/_emulator/reset')
    end

    private

    def control(method, path, body = nil)
      response = control_client.public_send(method, path, *[body].compact)
      raise "control #{method.upcase} #{path} failed: #{response.status} #{response.body}" unless response.status == 200

      response.json
    end

    def control_client
      @control_client ||= client('emulator-control.test')
      @control_client.port = @port
      @control_client
    end

    def spawn_process
      @port = @fixed_port || self.class.free_port
      FileUtils.rm_f([ready_path, pid_path])
      @exit_status = nil
      @pid = Process.spawn(RbConfig.ruby, SCRIPT, *command_args, out: [output_path, 'a'], err: %i[child out])
    end

    def command_args
      args = ['--port', @port.to_s, '--bind', HOST,
              '--cert', File.join(@ssldir, 'certs', "#{@server_name}.pem"),
              '--key', File.join(@ssldir, 'private_keys', "#{@server_name}.pem"),
              '--cacert', File.join(@ssldir, 'certs', 'ca.pem'),
              '--allowlist', allowlist_path, '--pid-file', pid_path, '--ready-file', ready_path,
              '--log', log_path]
      args += ['--crl', @ca.crl_path] if @use_crl
      args += ['--tokens', tokens_path] if File.exist?(tokens_path)
      args += ['--seed', @seed_path] if @seed_path
      args += ['--classes', @classes_path] if @classes_path
      args += ['--state', @state_path] if @state_path
      args + @extra_args
    end

    def exited?
      return true if @exit_status
      return true if @pid.nil?

      _, status = Process.waitpid2(@pid, Process::WNOHANG)
      @exit_status = status if status
      !status.nil?
    rescue Errno::ECHILD
      true
    end

    def signal(name)
      Process.kill(name, @pid)
    rescue Errno::ESRCH
      nil
    end

    def data_file(name, value)
      return nil if value.nil?
      return File.expand_path(value) if value.is_a?(String)

      path = File.join(@dir, name)
      File.write(path, JSON.generate(value))
      path
    end

    def write_tokens(tokens)
      FileUtils.rm_f(tokens_path)
      File.write(tokens_path, tokens.map { |t| "#{t}\n" }.join) if tokens
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def allowlist_path = File.join(@dir, 'rbac-certificate-allowlist')
    def tokens_path = File.join(@dir, 'tokens')
    def ready_path = File.join(@dir, 'ready')
    def pid_path = File.join(@dir, 'emulator.pid')
    def output_path = File.join(@dir, 'emulator.out')
  end

  # A small HTTPS client for specs: Net::HTTP over TLS verified against the
  # Puppet CA, presenting a client certificate; one connection per request.
  class NcClient
    # An HTTP answer; header names are lower case.
    Response = Struct.new(:status, :headers, :body) do
      def json
        JSON.parse(body)
      end

      def [](name)
        headers[name.downcase]
      end
    end

    attr_accessor :port

    def initialize(host:, port:, ca_file:, cert: nil, key: nil, token: nil, timeout: 10)
      @host = host
      @port = port
      @ca_file = ca_file
      @cert = cert && OpenSSL::X509::Certificate.new(File.read(cert))
      @key = key && OpenSSL::PKey.read(File.read(key))
      @token = token
      @timeout = timeout
    end

    def get(path, headers: {})
      request(Net::HTTP::Get, path, nil, headers)
    end

    def post(path, body = nil, headers: {})
      request(Net::HTTP::Post, path, body, headers)
    end

    def put(path, body = nil, headers: {})
      request(Net::HTTP::Put, path, body, headers)
    end

    def delete(path, headers: {})
      request(Net::HTTP::Delete, path, nil, headers)
    end

    # body: a Hash/Array (sent as JSON), a String (sent as is), an IO (streamed
    # with Transfer-Encoding: chunked, as ncio sends imports) or nil.
    def request(klass, path, body, headers = {})
      req = klass.new(path)
      req['Content-Type'] = 'application/json'
      req['X-Authentication'] = @token if @token
      headers.each { |k, v| req[k] = v }
      if body.respond_to?(:read)
        req['Transfer-Encoding'] = 'chunked'
        req.body_stream = body
      elsif klass::REQUEST_HAS_BODY || body
        req.body = encode(body)
      end
      Net::HTTP.start(@host, @port, **connection_options) do |http|
        to_response(http.request(req))
      end
    end

    private

    def encode(body)
      case body
      when nil then ''
      when String then body
      else JSON.generate(body)
      end
    end

    def connection_options
      # max_retries 0: Net::HTTP would otherwise silently resend a GET whose
      # connection dropped, hiding exactly what fault-injection specs look for.
      # A store of our own rather than `ca_file`: once Puppet is loaded (its
      # monkey patch gives every SSLContext OpenSSL's shared default store),
      # `ca_file` would add the CA to that process-wide store, and a later
      # client with another CA file would still trust it.
      store = OpenSSL::X509::Store.new
      store.add_file(@ca_file)
      options = { use_ssl: true, cert_store: store, verify_mode: OpenSSL::SSL::VERIFY_PEER,
                  open_timeout: @timeout, read_timeout: @timeout, write_timeout: @timeout, max_retries: 0 }
      options.merge!(cert: @cert, key: @key) if @cert
      options
    end

    def to_response(res)
      headers = res.each_header.to_h { |k, v| [k.downcase, v] }
      Response.new(res.code.to_i, headers, res.body.to_s)
    end
  end
end
