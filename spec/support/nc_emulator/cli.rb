# frozen_string_literal: true

require 'json'
require 'optparse'
require_relative 'schema'
require_relative 'store'
require_relative 'auth'
require_relative 'server'

module PeFailoverSpec
  module NcEmulator
    # Command line of spec/support/nc_emulator.rb: parses the flags, builds
    # the Store (from --state, or --seed/--classes), opens the HTTPS socket
    # (after --start-delay), writes the pid and ready files, and serves until
    # SIGTERM or SIGINT.
    class CLI
      # A start-up problem reported as one line, exit status 2.
      class UsageError < StandardError; end

      REQUIRED = %i[port cert key cacert allowlist].freeze

      def initialize(argv, out: $stdout, err: $stderr)
        @argv = argv.dup
        @out = out
        @err = err
        @settings = { bind: '127.0.0.1', client_auth: 'required', start_delay: 0.0 }
        @stop = false
      end

      def run
        parse!
        open_log
        store = build_store
        write_file(@settings[:pid_file], "#{Process.pid}\n")
        trap_signals
        wait_start_delay
        return finish(0) if @stop

        serve(store)
        finish(0)
      rescue UsageError, ApiError, ArgumentError, JSON::ParserError, SystemCallError, OpenSSL::OpenSSLError => e
        @err.puts("nc_emulator: #{describe(e)}")
        cleanup
        2
      end

      private

      def describe(error)
        return "seed rejected (#{error.status} #{error.kind}): #{error.message}" if error.is_a?(ApiError)

        error.message
      end

      def parser
        OptionParser.new do |o|
          o.banner = 'Usage: nc_emulator.rb --port N --cert FILE --key FILE --cacert FILE --allowlist FILE [options]'
          o.on('--port N', Integer, 'Port to listen on (0 = pick a free one; see --ready-file)') { |v| @settings[:port] = v }
          o.on('--bind ADDR', 'Address to bind (default 127.0.0.1)') { |v| @settings[:bind] = v }
          o.on('--cert FILE', 'Server certificate (PEM)') { |v| @settings[:cert] = v }
          o.on('--key FILE', 'Server private key (PEM)') { |v| @settings[:key] = v }
          o.on('--cacert FILE', 'CA certificate that client certificates must chain to') { |v| @settings[:cacert] = v }
          o.on('--crl FILE', 'CRL checked on each handshake (re-read when it changes)') { |v| @settings[:crl] = v }
          o.on('--allowlist FILE', 'RBAC certificate allowlist, one certname a line (re-read per request)') { |v| @settings[:allowlist] = v }
          o.on('--tokens FILE', 'Valid RBAC tokens, one a line (X-Authentication or ?token=)') { |v| @settings[:tokens] = v }
          o.on('--client-auth MODE', %w[required want], 'required (default) or want (allows token-only clients)') { |v| @settings[:client_auth] = v }
          o.on('--seed FILE', 'Initial groups: a GET /v1/groups JSON array') { |v| @settings[:seed] = v }
          o.on('--classes FILE', 'Class catalog JSON {"env": {"class": {"param": default}}}') { |v| @settings[:classes] = v }
          o.on('--state FILE', 'Persist state here after each write; loaded at start if present') { |v| @settings[:state] = v }
          o.on('--pid-file FILE', 'Write the process id here') { |v| @settings[:pid_file] = v }
          o.on('--ready-file FILE', 'Write the port here once listening') { |v| @settings[:ready_file] = v }
          o.on('--log FILE', 'Request log (default stderr)') { |v| @settings[:log] = v }
          o.on('--start-delay SECS', Float, 'Open the listening socket only after SECS') { |v| @settings[:start_delay] = v }
          o.on('--pe2016', 'PE 2016 output: no serial_number/last_edited (and they are refused on writes)') { @settings[:pe2016] = true }
          o.on('--strict-import', 'import-hierarchy answers 422 missing-referents instead of adding placeholders') { @settings[:strict_import] = true }
          o.on('--import-accepts-deleted', 'import-hierarchy ignores a "deleted" key instead of refusing it') { @settings[:import_accepts_deleted] = true }
          o.on('--no-config-data', 'classifier::allow-config-data=false: config_data refused and hidden') { @settings[:no_config_data] = true }
          o.on('-h', '--help', 'Show this help') do
            @out.puts(o)
            exit 0
          end
        end
      end

      def parse!
        parser.parse!(@argv)
        raise UsageError, "unexpected argument(s): #{@argv.join(' ')}" unless @argv.empty?

        missing = REQUIRED.reject { |k| @settings.key?(k) }
        raise UsageError, "missing #{missing.map { |k| "--#{k.to_s.tr('_', '-')}" }.join(', ')}\n#{parser}" if missing.any?

        %i[cert key cacert].each { |k| readable!(@settings[k], k) }
      rescue OptionParser::ParseError => e
        raise UsageError, "#{e.message}\n#{parser}"
      end

      def readable!(path, flag)
        raise UsageError, "--#{flag} #{path}: not a readable file" unless File.file?(path) && File.readable?(path)
      end

      def open_log
        @log_io = @settings[:log] ? File.open(@settings[:log], 'a') : @err
        @log_io.sync = true
        @settings[:log_io] = @log_io
      end

      def log(line)
        @log_io.puts("#{Time.now.utc.strftime('%Y-%m-%dT%H:%M:%S.%LZ')} #{line}")
      rescue IOError
        nil
      end

      def schema_options
        Schema::Options.new(pe2016: !!@settings[:pe2016], config_data: !@settings[:no_config_data],
                            import_accepts_deleted: !!@settings[:import_accepts_deleted])
      end

      def build_store
        store = Store.build(seed: read_json(:seed), classes: read_json(:classes), options: schema_options,
                            strict_import: !!@settings[:strict_import], state_file: @settings[:state])
        if @settings[:state] && File.exist?(@settings[:state])
          store.load_state(@settings[:state])
          log("loaded state from #{@settings[:state]}")
        end
        store
      end

      def read_json(key)
        path = @settings[key]
        return nil unless path

        JSON.parse(File.read(path))
      rescue JSON::ParserError => e
        raise UsageError, "--#{key} #{path}: not valid JSON (#{e.message[0, 200]})"
      end

      def trap_signals
        %w[TERM INT].each do |signal|
          Signal.trap(signal) do
            @stop = true
            Thread.new { @server&.shutdown }
          end
        end
      end

      def wait_start_delay
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + @settings[:start_delay]
        sleep(0.05) while !@stop && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      end

      def serve(store)
        auth = Auth.new(allowlist_path: @settings[:allowlist], tokens_path: @settings[:tokens])
        @server = Server.new(@settings, store: store, auth: auth, log: method(:log))
        port = @server.listen
        write_file(@settings[:ready_file], "#{port}\n")
        log("listening on https://#{@settings[:bind]}:#{port} (pid #{Process.pid})")
        @server.run unless @stop
      end

      def finish(status)
        log('stopped')
        cleanup
        status
      end

      def cleanup
        [@settings[:ready_file], @settings[:pid_file]].compact.each { |f| File.delete(f) if File.exist?(f) }
      end

      # Atomic: readers never see a half-written pid or port.
      def write_file(path, content)
        return unless path

        tmp = "#{path}.tmp"
        File.write(tmp, content)
        File.rename(tmp, path)
      end
    end
  end
end
