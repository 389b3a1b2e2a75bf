# frozen_string_literal: true

require_relative 'native'

module PuppetX
  module PeFailover
    # Replication commands over the native core. Each takes the path of the
    # JSON configuration (see the README's "Configuration" section) and
    # returns a Hash report: `'ok'` (Boolean), `'lines'` (human-readable
    # summary, one entry per line) and command-specific details.
    module Replication
      module_function

      # @return [String] version of the native extension
      def version
        NativeLoader.load!._version
      end

      # Ships the CA (and, when enabled, classifier groups) to the replicas.
      # @param config [String] configuration file
      # @param replica [String, nil] only this replica host
      # @param noop [Boolean] compute and report the changeset; send nothing
      # @param nc [Boolean, nil] ship classifier groups (nil: as configured)
      # @param watcher [Boolean] let the active watcher, when one runs with
      #   this configuration, run the CA part (it need not scan the CA);
      #   false always scans here. The report's 'via_watcher' says which.
      # @return [Hash]
      def sync(config:, replica: nil, noop: false, nc: nil, watcher: true)
        NativeLoader.load!._sync(config.to_s, replica&.to_s, noop ? true : false, nc, watcher ? true : false)
      end

      # Serves one incoming transaction on stdin/stdout (SSH forced command).
      # @return [Hash]
      def receive(config:)
        NativeLoader.load!._receive(config.to_s)
      end

      # Applies received transactions.
      # @param force [Boolean] override the safety guards
      # @return [Hash]
      def apply(config:, force: false)
        NativeLoader.load!._apply(config.to_s, force ? true : false)
      end

      # Runs until interrupted (or, with `once`, until pending work is done).
      # @return [Hash]
      def watch(config:, once: false)
        NativeLoader.load!._watch(config.to_s, once ? true : false)
      end

      # Replication health read from the status files.
      # @return [Hash] `'host'`, `'role'`, `'healthy'`, `'entries'`, `'problems'`
      def status(config:)
        NativeLoader.load!._status(config.to_s)
      end

      # Fetches a host's SSH key and records it in known_hosts.
      # @return [Hash] `'type'`, `'fingerprint'`, `'line'`
      def pin_host_key(host:, port:, known_hosts:)
        NativeLoader.load!._pin_host_key(host.to_s, Integer(port), known_hosts.to_s)
      end

      # This host's classifier groups, optionally with the hostname rewrites.
      # @return [Array<Hash>]
      def nc_dump(config:, transformed: false)
        JSON.parse(NativeLoader.load!._nc_dump(config.to_s, transformed ? true : false))
      end

      # Applies the last received classifier groups to this host's classifier.
      # @return [Hash]
      def nc_apply(config:, noop: false, replace: false, force: false)
        NativeLoader.load!._nc_apply(config.to_s, noop ? true : false, replace ? true : false, force ? true : false)
      end
    end
  end
end
