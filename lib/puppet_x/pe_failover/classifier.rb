# frozen_string_literal: true

require 'json'
require 'socket'
require_relative 'native'

module PuppetX
  module PeFailover
    # Node Classifier (NC) replication and group management, computed by the
    # native core.
    #
    # Groups are Hashes shaped like `GET /classifier-api/v1/groups` answers
    # (`'id'`, `'name'`, `'parent'`, `'environment'`, `'environment_trumps'`,
    # `'rule'`, `'classes'`, `'variables'`, ...). They are checked strictly:
    # an unknown key or a wrong type raises {InvalidInputError} naming the
    # group and the key.
    #
    # @example Rewrite a dump for the passive primary and compare it with its groups
    #   Classifier = PuppetX::PeFailover::Classifier
    #   active = Classifier::Client.for_primary(server: 'https://a.example.com:4433')
    #   dump = active.fetch_active('a.example.com' => 'b.example.com')
    #   passive = Classifier::Client.new(server: 'https://b.example.com:4433', **Classifier.default_files)
    #   passive.sync(dump['groups'], noop: true)['plan']['operations']
    module Classifier
      # The classifier's port.
      DEFAULT_PORT = 4433
      # Id of the root group ("All Nodes").
      ROOT_GROUP_ID = '00000000-0000-4000-8000-000000000000'
      # Name of the root group.
      ROOT_GROUP_NAME = 'All Nodes'

      module_function

      # Rewrites hostnames in groups wherever they are used as a host (rules,
      # class parameters, config_data, variables), never in longer names that
      # merely contain them.
      #
      # @param groups [Array<Hash>] groups as the classifier returns them
      # @param hostnames [Hash{String=>String}] old hostname => new hostname
      # @return [Hash] `'groups'` (the rewritten groups, same order),
      #   `'rewrites'` (`{'group_id','group_name','location','old','new'}`
      #   for each rewritten value), `'digest'` (canonical digest of the result)
      # @raise [InvalidInputError] for a malformed group or hostname
      def transform(groups, hostnames)
        native = NativeLoader.load!
        JSON.parse(native._nc_transform(JSON.generate(Array(groups)), hostnames.to_h.map { |k, v| [k.to_s, v.to_s] }))
      end

      # What turns the groups `from` into the groups `to`, matching groups by
      # id and ignoring read-only keys and forms the classifier stores alike
      # (a `null` parameter is an absent one).
      #
      # @param from [Array<Hash>] the groups as they are
      # @param to [Array<Hash>] the groups as they should be
      # @return [Hash] `'added'`, `'removed'` (`{'id','name'}` each),
      #   `'changed'` (`{'id','name','fields'}`), `'unchanged'` (a count),
      #   `'in_sync'`, `'from_digest'`, `'to_digest'`
      def diff(from, to)
        native = NativeLoader.load!
        JSON.parse(native._nc_diff(JSON.generate(Array(from)), JSON.generate(Array(to))))
      end

      # The canonical digest of a group set: equal for sets that differ only
      # in key order, group order or read-only keys.
      #
      # @param groups [Array<Hash>]
      # @return [String] 64 lowercase hex digits
      def digest(groups)
        NativeLoader.load!._nc_digest(JSON.generate(Array(groups)))
      end

      # The identity files of this host in its Puppet ssldir, from Puppet's
      # settings when Puppet is loaded.
      #
      # @param ssldir [String, nil] default: Puppet[:ssldir], else
      #   /etc/puppetlabs/puppet/ssl
      # @param certname [String, nil] default: Puppet[:certname]
      # @return [Hash] `:cert`, `:key`, `:cacert`, and `:crl` when the file
      #   exists
      def default_files(ssldir: nil, certname: nil)
        ssldir ||= puppet_setting(:ssldir) || '/etc/puppetlabs/puppet/ssl'
        certname ||= puppet_setting(:certname) || Socket.gethostname
        files = {
          cert: File.join(ssldir, 'certs', "#{certname}.pem"),
          key: File.join(ssldir, 'private_keys', "#{certname}.pem"),
          cacert: File.join(ssldir, 'certs', 'ca.pem'),
        }
        crl = File.join(ssldir, 'crl.pem')
        files[:crl] = crl if File.exist?(crl)
        files
      end

      # The Puppet setting `name` when running inside Puppet, else `nil`.
      # @api private
      def puppet_setting(name)
        return nil unless defined?(::Puppet) && ::Puppet.respond_to?(:[])

        ::Puppet[name]
      rescue StandardError
        nil
      end

      # A client of one classifier, authenticating with a Puppet host
      # certificate (which must be in the classifier host's
      # `/etc/puppetlabs/console-services/rbac-certificate-allowlist`) and
      # trusting only the Puppet CA.
      #
      # Every call raises a {PuppetX::PeFailover::Error} subclass that names
      # the host and what to do: {UnauthorizedError} (certname not
      # allowlisted), {VerificationError} (which certificate file is wrong),
      # {ApiError} (the classifier's kind and message, with the request),
      # {NetworkError}, {TimeoutError}, {RefusedError}/{FencedError} (sync
      # guards).
      class Client
        # @return [String] `https://<host>:<port>`
        attr_reader :server

        # A client of the classifier on this host, with this host's
        # certificate: what a PE primary uses to reach its own classifier.
        #
        # @param server [String, nil] default `https://<fqdn>:4433`
        # @param options [Hash] passed to {#initialize}
        # @return [Client]
        def self.for_primary(server: nil, **options)
          fqdn = Classifier.puppet_setting(:certname) || Socket.gethostname
          new(server: server || "https://#{fqdn}:#{DEFAULT_PORT}", **Classifier.default_files, **options)
        end

        # Reads and checks the certificate files; does not connect.
        #
        # @param server [String] `https://<host>[:port]` (port 4433 by default)
        # @param cert [String] client certificate (PEM)
        # @param key [String] its private key (PEM: PKCS#1, PKCS#8 or EC); never logged
        # @param cacert [String] the Puppet CA certificate; the only trust anchor
        # @param crl [String, nil] a CRL checked against the server's certificate
        # @param connect_timeout [Numeric] seconds to connect and handshake
        # @param timeout [Numeric] seconds one attempt of a request may take
        # @param retry_for [Numeric] seconds to keep retrying while the
        #   classifier starts (connection refused, 503); 0 disables retries
        # @raise [VerificationError, NotFoundError, PermissionError, InvalidInputError]
        def initialize(server:, cert:, key:, cacert:, crl: nil, connect_timeout: 10, timeout: 120, retry_for: 120)
          @server = server.to_s
          native = NativeLoader.load!
          @native = native::ClassifierClient._new(@server, cert.to_s, key.to_s, cacert.to_s, crl&.to_s,
                                                  Float(connect_timeout), Float(timeout), Float(retry_for))
        end

        # @return [String] the certname of the client certificate
        def certname
          @native._certname
        end

        # @return [Array<Hash>] every group
        def groups
          JSON.parse(@native._groups)
        end

        # @param id [String] a group id
        # @return [Hash, nil] the group, or nil when there is none
        def group(id)
          json = @native._group(id.to_s)
          json && JSON.parse(json)
        end

        # Asks the classifier to refresh its classes from Puppet Server.
        # @param environment [String, nil] one environment, or all
        # @return [nil]
        def update_classes(environment: nil)
          @native._update_classes(environment&.to_s)
          nil
        end

        # @param environment [String, nil] one environment, or all
        # @return [Array<Hash>] `{'name','environment','parameters'}` each
        def classes(environment: nil)
          JSON.parse(@native._classes(environment&.to_s))
        end

        # The classifier service's state (one attempt, no retry).
        # @return [Hash] `'state'` (`running`, `starting`, ...), `'version'`, `'detail'`
        def status
          JSON.parse(@native._status)
        end

        # Creates or updates the group `name`, making at most one call: only
        # the properties given are managed (nil leaves one alone).
        #
        # @param name [String]
        # @param parent [String, nil] the parent group's name (`All Nodes` on create)
        # @param environment [String, nil] (`production` on create); also picks
        #   the group when several share the name
        # @param environment_trumps [Boolean, nil]
        # @param rule [Array, nil] the rule; `[]` removes it
        # @param classes [Hash, nil] `{class => {param => value}}`, in full:
        #   classes and parameters not listed are removed
        # @param variables [Hash, nil] in full
        # @param description [String, nil] `''` removes it
        # @param noop [Boolean] only say what would be done
        # @return [Hash] `'action'` (`created`, `updated`, `unchanged`), `'id'`,
        #   `'changed'` (fields), `'operation'` (the call), `'written'`
        def upsert_group(name:, parent: nil, environment: nil, environment_trumps: nil, rule: nil,
                         classes: nil, variables: nil, description: nil, noop: false)
          spec = { 'name' => name.to_s, 'parent' => parent, 'environment' => environment,
                   'environment_trumps' => environment_trumps, 'rule' => rule, 'classes' => classes,
                   'variables' => variables, 'description' => description }.reject { |_, v| v.nil? }
          JSON.parse(@native._upsert_group(JSON.generate(spec), noop ? true : false))
        end

        # Deletes the group `name` (refused while it has children).
        #
        # @param name [String]
        # @param environment [String, nil] picks the group when several share the name
        # @param noop [Boolean] only say what would be done
        # @return [Hash] as {#upsert_group}; `'action' => 'unchanged'` when absent
        def delete_group(name, environment: nil, noop: false)
          JSON.parse(@native._delete_group(name.to_s, environment&.to_s, noop ? true : false))
        end

        # The active side: fetches every group, rewrites the hostnames.
        #
        # @param hostnames [Hash{String=>String}] active hostname => passive hostname
        # @return [Hash] `'groups'`, `'digest'` (compare with the last shipped
        #   one), `'source_digest'`, `'rewrites'`
        def fetch_active(hostnames)
          JSON.parse(@native._fetch_active(hostnames.to_h.map { |k, v| [k.to_s, v.to_s] }))
        end

        # The passive side: makes this classifier's groups equal to `groups`.
        #
        # @param groups [Array<Hash>] the active's groups, already transformed
        # @param mode [Symbol] `:update` (fewest calls) or `:replace`
        #   (one import-hierarchy)
        # @param noop [Boolean] plan and check only
        # @param force [Boolean] override the guards (not a promoted passive)
        # @param max_delete_share [Float] largest share of groups one run may delete
        # @param promoted [Boolean] this passive has been promoted: refuse
        # @return [Hash] the report: `'diff'`, `'plan'`, `'executed'`,
        #   `'counts'`, `'warnings'`, `'missing_classes'`, digests, `'in_sync'`
        # @raise [RefusedError, FencedError] when a guard refuses; any other
        #   error names the failed step and the steps already made
        def sync(groups, mode: :update, noop: false, force: false, max_delete_share: 0.1, promoted: false)
          JSON.parse(@native._sync(JSON.generate(Array(groups)), mode.to_s, noop ? true : false, force ? true : false,
                                   Float(max_delete_share), promoted ? true : false))
        end
      end
    end
  end
end
