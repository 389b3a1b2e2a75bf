# frozen_string_literal: true

require 'openssl'

module PeFailoverSpec
  module NcEmulator
    # RBAC authentication as pe-console-services does it for the classifier:
    # a client certificate whose certname is in the allowlist file, or an
    # RBAC token (X-Authentication header or ?token=) listed in the tokens
    # file. Both files are re-read on every request so tests can edit them.
    class Auth
      def initialize(allowlist_path:, tokens_path: nil)
        @allowlist_path = allowlist_path
        @tokens_path = tokens_path
      end

      # The certname (CN) of a certificate, or nil.
      def self.certname(cert)
        return nil unless cert

        entry = cert.subject.to_a.find { |name, _value, _type| name == 'CN' }
        entry && entry[1]
      end

      def allowed?(certname, token)
        (certname && lines(@allowlist_path).include?(certname)) ||
          (token && !token.empty? && lines(@tokens_path).include?(token)) || false
      end

      # The body PE 2016 answered for an authenticated TLS session whose
      # certificate is not allowlisted (docs/nc-api.md §1).
      def self.unauthenticated_body(request_target)
        { 'kind' => 'puppetlabs.rbac/user-unauthenticated', 'msg' => 'Route requires authentication',
          'redirect' => request_target }
      end

      private

      def lines(path)
        return [] unless path && File.exist?(path)

        File.readlines(path, chomp: true).map(&:strip).reject { |l| l.empty? || l.start_with?('#') }
      end
    end

    # Client-certificate revocation check against a CRL file, used as the TLS
    # verify callback. The file is re-read when it changes, so a test can
    # revoke a certificate while the emulator runs. A CRL that is unreadable
    # or not signed by the CA fails every handshake (fail closed).
    class CrlCheck
      def initialize(crl_path, ca_cert, logger)
        @crl_path = crl_path
        @ca_cert = ca_cert
        @logger = logger
        @lock = Mutex.new
        @stamp = nil
        @revoked = nil
      end

      # The proc OpenSSL calls for each certificate of the client's chain.
      def to_proc
        method(:verify).to_proc
      end

      def verify(preverify_ok, store_ctx)
        return preverify_ok unless preverify_ok && store_ctx.error_depth.zero?

        revoked = revoked_serials
        if revoked.nil?
          store_ctx.error = OpenSSL::X509::V_ERR_UNABLE_TO_GET_CRL
          return false
        end
        return true unless revoked.include?(store_ctx.current_cert.serial.to_i)

        store_ctx.error = OpenSSL::X509::V_ERR_CERT_REVOKED
        false
      end

      private

      def revoked_serials
        @lock.synchronize do
          stamp = File.stat(@crl_path).then { |s| [s.mtime, s.size, s.ino] }
          load_crl(stamp) unless stamp == @stamp
          @revoked
        end
      rescue SystemCallError => e
        @logger.call("CRL #{@crl_path} unreadable: #{e.message}")
        nil
      end

      def load_crl(stamp)
        crl = OpenSSL::X509::CRL.new(File.read(@crl_path))
        raise OpenSSL::X509::CRLError, 'not signed by the CA' unless crl.verify(@ca_cert.public_key)

        @revoked = crl.revoked.map { |r| r.serial.to_i }
        @stamp = stamp
      rescue OpenSSL::X509::CRLError => e
        @logger.call("CRL #{@crl_path} rejected: #{e.message}")
        @revoked = nil
        @stamp = nil
      end
    end
  end
end
