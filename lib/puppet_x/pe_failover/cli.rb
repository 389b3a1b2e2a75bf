# frozen_string_literal: true

# The pe_failover command line: what the systemd unit, cron, the SSH forced
# command and administrators run. It needs Ruby and the native extension,
# not Puppet, so it starts in a fraction of a second.
#
#   ruby lib/puppet_x/pe_failover/cli.rb COMMAND --config FILE [flags]
#
# Every command is a thin layer over PuppetX::PeFailover::Replication (and
# through it the Rust core): parse flags, call, print, exit.

require 'json'
require 'optparse'
require_relative 'replication'

# Ruby code shared by this module's Puppet types, providers, functions and
# face (the Puppet convention for `lib/puppet_x`).
module PuppetX
  module PeFailover
    # Command-line entry point. {CLI.run} returns the exit status.
    class CLI
      # Default configuration path written by the Puppet classes.
      DEFAULT_CONFIG = '/opt/pe_failover/etc/config.json'

      # The commands, each with the line `--help` shows for it.
      COMMANDS = {
        'sync' => 'ship the CA (and classifier groups) to the replicas now',
        'receive' => 'receive one transaction on stdin/stdout (the SSH forced command)',
        'apply' => 'apply received transactions to the live ssl directory and classifier',
        'watch' => 'run until stopped: sync on every change (active) or apply what arrives (passive)',
        'status' => 'show replication health; exit 1 when unhealthy',
        'pin-host-key' => "record a replica's SSH host key in known_hosts (trust on first use)",
        'nc' => 'classifier groups: nc dump | nc diff | nc apply',
      }.freeze

      # @param argv [Array<String>]
      # @param out [IO] standard output
      # @param err [IO] standard error
      # @return [Integer] exit status
      def self.run(argv, out: $stdout, err: $stderr)
        new(out, err).run(argv.dup)
      end

      def initialize(out, err)
        @out = out
        @err = err
      end

      # @return [Integer] exit status
      def run(argv)
        command = argv.shift
        case command
        when nil, '-h', '--help', 'help'
          @out.puts usage
          return command.nil? ? 2 : 0
        when '--version'
          @out.puts "pe_failover #{Replication.version}"
          return 0
        end
        unless COMMANDS.key?(command)
          @err.puts "pe_failover: unknown command #{command.inspect}\n\n#{usage}"
          return 2
        end
        send("cmd_#{command.tr('-', '_')}", argv)
      rescue OptionParser::ParseError => e
        @err.puts "pe_failover #{command}: #{e.message} (see pe_failover #{command} --help)"
        2
      rescue PuppetX::PeFailover::Error => e
        @err.puts "pe_failover #{command}: #{e.message}"
        1
      rescue Interrupt
        @err.puts "pe_failover #{command}: interrupted"
        130
      end

      private

      def usage
        lines = ['usage: pe_failover COMMAND --config FILE [flags]', '', 'commands:']
        COMMANDS.each { |name, text| lines << format('  %-13s %s', name, text) }
        lines << '' << "Run 'pe_failover COMMAND --help' for its flags. Default config: #{DEFAULT_CONFIG}"
        lines.join("\n")
      end

      def parse(argv, name, extra = {})
        opts = { config: DEFAULT_CONFIG }
        parser = OptionParser.new do |o|
          o.banner = "usage: pe_failover #{name} [flags]\n\n#{COMMANDS[name.split.first]}\n\nflags:"
          o.on('--config FILE', 'configuration file (default: ' + DEFAULT_CONFIG + ')') { |v| opts[:config] = v }
          extra.each do |flag, (text, key, conv)|
            o.on(flag, text) { |v| opts[key] = conv ? conv.call(v) : v }
          end
          o.on('-h', '--help', 'show this help') do
            @out.puts o
            opts[:help] = true
          end
        end
        rest = parser.parse(argv)
        raise OptionParser::InvalidArgument, "unexpected argument #{rest.first.inspect}" unless rest.empty?

        opts
      end

      def cmd_sync(argv)
        o = parse(argv, 'sync',
                  '--replica HOST' => ['only this replica (default: all)', :replica],
                  '--noop' => ['show what would be shipped; transfer nothing', :noop, ->(_) { true }],
                  '--json' => ['print the report as JSON', :json, ->(_) { true }],
                  '--[no-]nc' => ['also ship classifier groups (default: when enabled in the config)', :nc],
                  '--[no-]watcher' => ['let a running watcher do it, without a scan of the CA (default: yes)', :watcher])
        return 0 if o[:help]

        report = Replication.sync(config: o[:config], replica: o[:replica], noop: o[:noop] || false, nc: o[:nc],
                                  watcher: o[:watcher] != false)
        print_report(report, o[:json])
        if report['via_watcher'] && !o[:json]
          @out.puts '(the CA part was run by the watcher on this host; --no-watcher scans here)'
        end
        report['ok'] ? 0 : 1
      end

      def cmd_receive(argv)
        # A sender asks for `pe_failover receive ca` (or `nc`): the kind is a
        # hint the native receiver reads from SSH_ORIGINAL_COMMAND, and is
        # allowed here too for a key without a forced command.
        argv = argv[0...-1] if %w[ca nc].include?(argv.last)
        o = parse(argv, 'receive')
        return 0 if o[:help]

        # stdin/stdout carry the protocol: nothing else may be printed there.
        report = Replication.receive(config: o[:config])
        report['ok'] ? 0 : 1
      end

      def cmd_apply(argv)
        o = parse(argv, 'apply',
                  '--force' => ['override the safety guards (mass deletion, missing CA key, a moved CA directory link)', :force, ->(_) { true }],
                  '--json' => ['print the report as JSON', :json, ->(_) { true }])
        return 0 if o[:help]

        report = Replication.apply(config: o[:config], force: o[:force] || false)
        print_report(report, o[:json])
        report['ok'] ? 0 : 1
      end

      def cmd_watch(argv)
        o = parse(argv, 'watch',
                  '--daemonize' => ['detach and run in the background', :daemonize, ->(_) { true }],
                  '--pidfile FILE' => ['write the process id here (with --daemonize)', :pidfile],
                  '--once' => ['handle what is pending, then exit (for tests)', :once, ->(_) { true }])
        return 0 if o[:help]

        daemonize(o[:pidfile]) if o[:daemonize]
        summary = begin
          Replication.watch(config: o[:config], once: o[:once] || false)
        rescue SignalException => e
          # Ctrl-C, or systemd stopping the service: a normal end.
          raise unless STOP_SIGNALS.include?(e.signo)

          nil
        end
        return 0 if summary.nil?

        Array(summary['lines']).last(5).each { |l| @err.puts l } if o[:once]
        summary['ok'] ? 0 : 1
      end

      # Signals that stop `watch` cleanly.
      STOP_SIGNALS = [Signal.list['INT'], Signal.list['TERM']].freeze

      def cmd_status(argv)
        o = parse(argv, 'status', '--json' => ['print the status as JSON', :json, ->(_) { true }])
        return 0 if o[:help]

        status = Replication.status(config: o[:config])
        if o[:json]
          @out.puts JSON.pretty_generate(status)
        else
          @out.puts StatusTable.render(status)
        end
        status['healthy'] ? 0 : 1
      end

      def cmd_pin_host_key(argv)
        o = parse(argv, 'pin-host-key',
                  '--host HOST' => ['replica host', :host],
                  '--port PORT' => ['SSH port (default 22)', :port, ->(v) { Integer(v) }],
                  '--known-hosts FILE' => ['known_hosts file to write', :known_hosts])
        return 0 if o[:help]
        raise OptionParser::MissingArgument, '--host' unless o[:host]
        raise OptionParser::MissingArgument, '--known-hosts' unless o[:known_hosts]

        key = Replication.pin_host_key(host: o[:host], port: o[:port] || 22, known_hosts: o[:known_hosts])
        @out.puts "pinned #{key['type']} host key of #{o[:host]}:#{o[:port] || 22} (#{key['fingerprint']}) in #{o[:known_hosts]}"
        0
      end

      def cmd_nc(argv)
        sub = argv.shift
        case sub
        when 'dump'
          o = parse(argv, 'nc dump', '--transformed' => ['apply the hostname rewrites', :transformed, ->(_) { true }])
          return 0 if o[:help]

          @out.puts JSON.pretty_generate(Replication.nc_dump(config: o[:config], transformed: o[:transformed] || false))
          0
        when 'diff', 'apply'
          flags = { '--json' => ['print the report as JSON', :json, ->(_) { true }] }
          if sub == 'apply'
            flags['--noop'] = ['show the plan; write nothing', :noop, ->(_) { true }]
            flags['--replace'] = ['replace the whole tree with import-hierarchy', :replace, ->(_) { true }]
            flags['--force'] = ['override the safety guards', :force, ->(_) { true }]
          end
          o = parse(argv, "nc #{sub}", flags)
          return 0 if o[:help]

          report = if sub == 'diff'
                     Replication.nc_apply(config: o[:config], noop: true, replace: false, force: false)
                   else
                     Replication.nc_apply(config: o[:config], noop: o[:noop] || false,
                                          replace: o[:replace] || false, force: o[:force] || false)
                   end
          print_report(report, o[:json])
          report['ok'] ? 0 : 1
        else
          @err.puts 'usage: pe_failover nc dump|diff|apply [--config FILE] [flags]'
          2
        end
      end

      def print_report(report, json)
        if json
          @out.puts JSON.pretty_generate(report)
        else
          Array(report['lines']).each { |l| @out.puts l }
        end
      end

      def daemonize(pidfile)
        exit!(0) if fork
        Process.setsid
        exit!(0) if fork
        Dir.chdir('/')
        $stdin.reopen(File::NULL)
        $stdout.reopen(File::NULL, 'a')
        $stderr.reopen(File::NULL, 'a')
        @out = $stdout
        @err = $stderr
        return unless pidfile

        tmp = "#{pidfile}.tmp.#{Process.pid}"
        File.write(tmp, "#{Process.pid}\n")
        File.rename(tmp, pidfile)
        at_exit { File.unlink(pidfile) if File.exist?(pidfile) && File.read(pidfile).to_i == Process.pid }
      end
    end

    # Renders {Replication.status} as a table a person reads at a glance.
    module StatusTable
      module_function

      # @param status [Hash] see {Replication.status}
      # @return [String]
      def render(status)
        head = "pe_failover on #{status['host']} (#{status['role']}): #{status['healthy'] ? 'HEALTHY' : 'UNHEALTHY'}"
        rows = [%w[KIND WHAT PEER STATE LAST\ SUCCESS AGE DIGEST LAST\ ERROR]]
        Array(status['entries']).each do |e|
          rows << [e['kind'], e['component'] || '-', e['peer'] || '-', e['healthy'] ? 'ok' : 'FAIL', e['last_success'] || 'never',
                   age(e['age_seconds']), short(e['digest']), error_text(e['last_error'])]
        end
        widths = rows.transpose.map { |col| col.map { |c| c.to_s.size }.max }
        table = rows.map { |r| r.each_with_index.map { |c, i| c.to_s.ljust(widths[i]) }.join('  ').rstrip }
        problems = Array(status['problems']).map { |p| "  - #{p}" }
        warnings = Array(status['warnings']).map { |w| "  - #{w}" }
        lines = [head, ''] + table
        lines += ['', 'problems:'] + problems unless problems.empty?
        lines += ['', 'warnings:'] + warnings unless warnings.empty?
        lines.join("\n")
      end

      # `seconds` as `45s`, `12m` or `3h` (`-` when unknown).
      # @api private
      def age(seconds)
        return '-' if seconds.nil?

        s = seconds.to_i
        return "#{s}s" if s < 120
        return "#{s / 60}m" if s < 7200

        "#{s / 3600}h"
      end

      # The first 12 hex digits of `digest` (`-` when none).
      # @api private
      def short(digest)
        digest ? digest[0, 12] : '-'
      end

      # An error's message cut to 70 characters for the table (`-` when none).
      # @api private
      def error_text(err)
        return '-' if err.nil?

        text = err.is_a?(Hash) ? err['message'].to_s : err.to_s
        text.size > 70 ? "#{text[0, 67]}..." : text
      end
    end
  end
end

exit(PuppetX::PeFailover::CLI.run(ARGV)) if $PROGRAM_NAME == __FILE__
