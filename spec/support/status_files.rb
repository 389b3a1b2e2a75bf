# frozen_string_literal: true

require 'fileutils'
require 'json'

module PeFailoverSpec
  # Writes configurations and status files in the shapes the Rust core
  # writes them (ext/pe_failover_core/src/state.rs), for the fact, status
  # and face specs.
  module StatusFiles
    module_function

    def stamp(unix)
      { 'time' => Time.at(unix).utc.strftime('%Y-%m-%dT%H:%M:%SZ'), 'unix' => unix }
    end

    def error(kind, message, unix)
      { 'kind' => kind, 'message' => message, 'at' => stamp(unix) }
    end

    def write_json(path, value)
      FileUtils.mkdir_p(File.dirname(path))
      File.write(path, "#{JSON.pretty_generate(value)}\n")
      path
    end

    # config.json of an active (replicas) or passive (no replicas).
    def config(dir, role:, certname:, replicas: [], nc: true)
      write_json(File.join(dir, 'etc', 'config.json'),
                 'role' => role, 'certname' => certname, 'state_dir' => File.join(dir, 'state'),
                 'replicas' => replicas.map { |h| { 'host' => h, 'port' => 22 } },
                 'nc' => { 'enabled' => nc })
    end

    # A SenderStatus on the active.
    def sender(dir, replica, kind, success: nil, outcome: 'committed', digest: 'ab' * 32, last_error: nil)
      write_json(File.join(dir, 'state', 'replicas', replica, "#{kind}.status.json"),
                 'format' => 1, 'kind' => kind, 'replica' => replica,
                 'last_success' => success && stamp(success), 'last_attempt' => success && stamp(success),
                 'last_outcome' => outcome, 'last_shipped' => digest && { 'digest' => digest, 'at' => stamp(success || 0) },
                 'last_counts' => { 'entries' => 10, 'upserts' => 1, 'removes' => 0, 'objects' => 1, 'object_bytes' => 10,
                                    'bytes_sent' => 100, 'bytes_received' => 10, 'manifest_exchanged' => false, 'elapsed_ms' => 3 },
                 'last_error' => last_error)
    end

    # A ReplicaStatus (the applier's) on the passive.
    def applier(dir, kind: 'ca', run: nil, ok: true, staged: 'cd' * 32, applied: 'cd' * 32, last_error: nil, kept: [])
      name = kind == 'ca' ? 'status.json' : File.join(kind, 'status.json')
      write_json(File.join(dir, 'state', name),
                 'format' => 1, 'role' => 'passive', 'kind' => kind,
                 'staged' => staged && { 'digest' => staged, 'txn' => 't1', 'at' => stamp(run || 0) },
                 'applied' => applied && { 'digest' => applied, 'at' => stamp(run || 0) },
                 'pending_txns' => 0, 'last_run' => run && stamp(run), 'last_run_ok' => ok,
                 'counts' => { 'entries' => 10, 'txns_applied' => 1, 'txns_discarded' => 0, 'written' => 2,
                               'metadata_fixed' => 0, 'deleted' => 0, 'dirs_removed' => 0, 'kept' => kept.size },
                 'divergence' => { 'replica_only_signed' => kept }, 'warnings' => [], 'last_error' => last_error)
    end

    # The receiver's status on the passive.
    def receiver(dir, success: nil, last_error: nil, sender: 'a.example.com')
      write_json(File.join(dir, 'state', 'incoming', 'receiver.status.json'),
                 'format' => 1, 'kind' => 'ca', 'last_received' => success && { 'digest' => 'cd' * 32, 'at' => stamp(success) },
                 'last_sender' => sender, 'last_success' => success && stamp(success), 'last_error' => last_error)
    end
  end
end
