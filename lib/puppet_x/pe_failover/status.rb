# frozen_string_literal: true

require 'json'
require_relative 'errors'

module PuppetX
  module PeFailover
    # Replication health, read in plain Ruby from the configuration and the
    # status files the core writes (see ext/pe_failover_core/src/state.rs),
    # so that the fact and `puppet pe_failover status` work where the native
    # extension is not built (or cannot load, as under JRuby).
    #
    # Files read, below the configuration's `state_dir`:
    #
    # | file | written by | on |
    # |---|---|---|
    # | `replicas/<host>[_<port>]/<kind>.status.json` | sender | active |
    # | `status.json` (CA), `nc/status.json` (classifier) | appliers | passive |
    # | `incoming/receiver.status.json`, `nc/incoming/receiver.status.json` | receivers | passive |
    #
    # {Status.read} never raises for a missing or unreadable status file:
    # it reports the problem and marks the entry unhealthy. It raises
    # {InvalidInputError} only when the configuration itself cannot be read.
    module Status
      # Default configuration path written by the Puppet classes.
      DEFAULT_CONFIG = '/opt/pe_failover/etc/config.json'
      # Default state directory when the configuration names none.
      DEFAULT_STATE_DIR = '/opt/pe_failover/state'
      # Seconds between the watcher's verifications when the configuration
      # names none; an active's last successful CA sync is stale after two
      # of them plus a minute (as `pe_failover status` judges it).
      DEFAULT_VERIFY_INTERVAL = 300
      # Seconds between classifier polls when the configuration names none;
      # the classifier is stale after two polls plus a minute.
      DEFAULT_NC_INTERVAL = 60
      # Schema version of the status files this reader understands.
      FORMAT = 1

      module_function

      # The configuration path to use: `PE_FAILOVER_CONFIG` from the
      # environment, else {DEFAULT_CONFIG}.
      # @return [String]
      def default_config
        env = ENV.fetch('PE_FAILOVER_CONFIG', '')
        env.empty? ? DEFAULT_CONFIG : env
      end

      # Parses the configuration file.
      # @param path [String]
      # @return [Hash]
      # @raise [InvalidInputError] when it is missing or not a JSON object
      def load_config(path)
        config = JSON.parse(File.read(path))
        raise InvalidInputError.new("#{path}: not a JSON object", :invalid_input, path) unless config.is_a?(Hash)

        config
      rescue Errno::ENOENT
        raise InvalidInputError.new("#{path}: no such configuration file (is pe_failover::active or " \
                                    'pe_failover::passive applied on this host?)', :not_found, path)
      rescue SystemCallError, JSON::ParserError => e
        raise InvalidInputError.new("#{path}: cannot read the configuration: #{e.message}", :invalid_input, path)
      end

      # Replication health of this host.
      #
      # @param config [String] configuration file
      # @param now [Time] the time ages are measured at
      # @param max_age [Integer, nil] seconds after which an active's last
      #   successful CA sync is stale; nil: twice the watcher's verify
      #   interval plus a minute
      # @return [Hash] `'host'`, `'role'`, `'config'`, `'state_dir'`,
      #   `'healthy'`, `'replicas'` (name => kind => details), `'entries'`
      #   (one row per replica and kind, the shape `pe_failover status`
      #   prints) and `'problems'` (sentences)
      def read(config: default_config, now: Time.now, max_age: nil)
        cfg = load_config(config)
        role = cfg['role'].to_s
        state_dir = cfg['state_dir'] || DEFAULT_STATE_DIR
        status = {
          'host' => cfg['certname'],
          'role' => role,
          'config' => config,
          'state_dir' => state_dir,
          'healthy' => true,
          'replicas' => {},
          'entries' => [],
          'problems' => [],
        }
        case role
        when 'active' then read_active(status, cfg, state_dir, now.to_i, max_age)
        when 'passive' then read_passive(status, cfg, state_dir, now.to_i)
        else status['problems'] << "#{config}: role is #{role.inspect}, neither \"active\" nor \"passive\""
        end
        status['healthy'] = status['problems'].empty?
        status
      end

      # Kinds replicated under a configuration: `ca`, plus `nc` when
      # classifier replication is enabled.
      # @return [Array<String>]
      def kinds(cfg)
        nc = cfg['nc'].is_a?(Hash) ? cfg['nc'] : {}
        nc.fetch('enabled', true) ? %w[ca nc] : %w[ca]
      end

      # The active side: one sender status per replica and kind. The
      # classifier's appears once classifier shipping has written it.
      def read_active(status, cfg, state_dir, now, max_age)
        max_age ||= 2 * Integer(cfg.dig('watch', 'verify_interval') || DEFAULT_VERIFY_INTERVAL) + 60
        nc_max_age = 2 * Integer(cfg.dig('nc', 'interval') || DEFAULT_NC_INTERVAL) + 60
        replicas = Array(cfg['replicas'])
        status['problems'] << 'no replicas configured: nothing is replicated' if replicas.empty?
        replicas.each do |r|
          # As the core names them: `host`, or `host:port` (directory
          # `host_port`) when the port is not 22.
          port = (r['port'] || 22).to_i
          replica = port == 22 ? r['host'].to_s : "#{r['host']}:#{port}"
          key = port == 22 ? r['host'].to_s : "#{r['host']}_#{port}"
          status['replicas'][replica] = {}
          kinds(cfg).each do |kind|
            path = File.join(state_dir, 'replicas', key, "#{kind}.status.json")
            next if kind == 'nc' && !File.exist?(path)

            file, error = load_status(path)
            detail = sender_detail(file, now)
            problem = error || sender_problem(replica, kind, file, detail, kind == 'nc' ? nc_max_age : max_age)
            finish(status, replica, kind, detail, problem, path, component: 'sync')
          end
        end
      end

      # The passive side: the applier's status per kind and the receiver's.
      def read_passive(status, cfg, state_dir, now)
        host = cfg['certname'] || 'this host'
        status['replicas'][host] = {}
        kinds(cfg).each do |kind|
          # The CA's files sit at the top of the state directory, each
          # other kind's in its own subdirectory.
          base = kind == 'ca' ? state_dir : File.join(state_dir, kind)
          path = File.join(base, 'status.json')
          next if kind == 'nc' && !File.exist?(path) && !File.exist?(File.join(base, 'incoming'))

          file, error = load_status(path)
          receiver, receiver_error = load_status(File.join(base, 'incoming', 'receiver.status.json'))
          detail = applier_detail(file, now)
          if receiver
            detail['received'] = digest_at(receiver['last_received'])
            detail['sender'] = receiver['last_sender']
          end
          problem = error || receiver_error || applier_problem(kind, file, receiver)
          finish(status, host, kind, detail, problem, path, component: 'apply', peer: detail['sender'])
        end
      end

      # Records one replica/kind: its details, its table row (the shape of
      # the core's status entries), its problem. The row shows the last
      # error only while it is newer than the last success; the details
      # keep it for inspection.
      def finish(status, replica, kind, detail, problem, path, component:, peer: nil)
        detail['status_file'] = path
        detail['healthy'] = problem.nil?
        status['replicas'][replica][kind] = detail
        status['problems'] << problem if problem
        error = detail['last_error']
        current = error && (detail['last_success'].nil? || error['time'].to_s > detail['last_success'].to_s)
        status['entries'] << {
          'kind' => kind,
          'component' => component,
          'peer' => peer || replica,
          'healthy' => problem.nil?,
          'last_success' => detail['last_success'],
          'age_seconds' => detail['seconds_since_success'],
          'digest' => detail['applied'] || detail['shipped'],
          'last_error' => current ? error : nil,
        }
      end

      # What a sender status file says, flattened.
      def sender_detail(file, now)
        return { 'last_success' => nil, 'seconds_since_success' => nil, 'last_error' => nil } if file.nil?

        success = file['last_success']
        {
          'last_success' => stamp_time(success),
          'seconds_since_success' => age(success, now),
          'last_attempt' => stamp_time(file['last_attempt']),
          'outcome' => file['last_outcome'],
          'shipped' => digest_at(file['last_shipped']),
          'last_error' => error_record(file['last_error']),
        }
      end

      # What is wrong with the sender's record of `kind` to `replica`, if
      # anything: never synced, last sync failed, or no success within
      # `max_age` seconds.
      # @api private
      def sender_problem(replica, kind, file, detail, max_age)
        return "#{kind} to #{replica}: never synced" if file.nil? || (detail['last_success'].nil? && file['last_outcome'].nil?)

        if file['last_outcome'] == 'failed' || detail['last_success'].nil?
          msg = detail.dig('last_error', 'message') || 'failed'
          return "#{kind} to #{replica}: last sync failed: #{msg}"
        end
        seconds = detail['seconds_since_success']
        return nil if seconds.nil? || seconds <= max_age

        "#{kind} to #{replica}: last success #{seconds}s ago (#{detail['last_success']}), more than #{max_age}s"
      end

      # What an applier status file says, flattened.
      def applier_detail(file, now)
        return { 'last_success' => nil, 'seconds_since_success' => nil, 'last_error' => nil } if file.nil?

        # The classifier's status records its last success; the CA's only
        # whether its last run succeeded.
        ok = file.key?('last_success') ? file['last_success'] : (file['last_run_ok'] ? file['last_run'] : nil)
        {
          'last_success' => stamp_time(ok),
          'seconds_since_success' => age(ok, now),
          'last_run' => stamp_time(file['last_run']),
          'last_run_ok' => file['last_run_ok'] ? true : false,
          'staged' => digest_at(file['staged']),
          'applied' => digest_at(file['applied']),
          'pending_txns' => file['pending_txns'],
          'replica_only_signed' => Array(file.dig('divergence', 'replica_only_signed')),
          'missing_classes' => Array(file['missing_classes']),
          'warnings' => Array(file['warnings']),
          'last_error' => error_record(file['last_error']),
        }
      end

      # What is wrong on a passive for `kind`, if anything: the receiver's
      # last session or the applier's last run failed, or nothing was applied.
      # @api private
      def applier_problem(kind, file, receiver)
        if receiver && receiver['last_error'] && newer?(receiver['last_error']['at'], receiver['last_success'])
          return "#{kind}: the receiver's last session failed: #{receiver['last_error']['message']}"
        end
        return "#{kind}: nothing applied yet" if file.nil?
        return nil if file['last_run_ok']

        "#{kind}: last apply failed: #{file.dig('last_error', 'message') || 'no message'}"
      end

      # Reads one status file: [hash or nil, problem or nil]. A missing file
      # is no problem by itself (the caller decides), nor an empty one
      # (status files are not flushed to disk: one written just before a
      # crash can be empty); an unreadable or unknown one is.
      def load_status(path)
        text = File.read(path)
        return [nil, nil] if text.empty?

        data = JSON.parse(text)
        return [nil, "#{path}: not a status file"] unless data.is_a?(Hash)
        return [nil, "#{path}: status format #{data['format'].inspect}, expected #{FORMAT}"] unless data['format'] == FORMAT

        [data, nil]
      rescue Errno::ENOENT, Errno::ENOTDIR
        [nil, nil]
      rescue SystemCallError, JSON::ParserError => e
        [nil, "#{path}: cannot read: #{e.message.lines.first.to_s.strip} (delete it; it is rewritten on the next run)"]
      end

      # The RFC 3339 time of a status file's stamp (`nil` when absent).
      # @api private
      def stamp_time(stamp)
        stamp.is_a?(Hash) ? stamp['time'] : nil
      end

      # Seconds from `stamp` to `now` (never negative; `nil` without a stamp).
      # @api private
      def age(stamp, now)
        return nil unless stamp.is_a?(Hash) && stamp['unix'].is_a?(Integer)

        [now - stamp['unix'], 0].max
      end

      # The digest recorded in `value` (`nil` when absent).
      # @api private
      def digest_at(value)
        value.is_a?(Hash) ? value['digest'] : nil
      end

      # A status file's error as `kind`, `message` and `time` (`nil` when none).
      # @api private
      def error_record(err)
        return nil unless err.is_a?(Hash)

        { 'kind' => err['kind'], 'message' => err['message'], 'time' => stamp_time(err['at']) }
      end

      # Whether stamp `a` is later than stamp `b` (or `b` is missing).
      def newer?(a, b)
        return false unless a.is_a?(Hash)
        return true unless b.is_a?(Hash)

        a['unix'].to_i > b['unix'].to_i
      end
    end
  end
end
