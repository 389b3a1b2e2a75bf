# frozen_string_literal: true

module PuppetX
  # Namespace of the pe_failover module's shared Ruby code.
  module PeFailover
    # Base class of every error raised by pe_failover's native core.
    #
    # Each error knows its `kind` (a Symbol matching the Rust core's
    # `ErrorKind`, e.g. `:not_found`), and the `path` or `host` it concerns
    # when there is one. The message is a complete sentence naming the file or
    # host and, where possible, what to do next.
    class Error < StandardError
      # @return [Symbol, nil] the core's error kind
      attr_reader :kind
      # @return [String, nil] the file or directory concerned
      attr_reader :path
      # @return [String, nil] the host concerned
      attr_reader :host

      # @param message [String] what happened
      # @param kind [Symbol, nil] the core's error kind
      # @param path [String, nil] file or directory concerned
      # @param host [String, nil] host concerned
      def initialize(message = nil, kind = nil, path = nil, host = nil)
        super(message)
        @kind = kind
        @path = path
        @host = host
      end
    end

    # A file or directory that must exist does not.
    class NotFoundError < Error; end
    # The operating system refused access to a file or directory.
    class PermissionError < Error; end
    # A file name is not valid UTF-8.
    class InvalidPathError < Error; end
    # A path is absolute, contains `..`, or leaves the tree.
    class UnsafePathError < Error; end
    # An exclusion pattern is not a valid glob.
    class InvalidPatternError < Error; end
    # Input (a manifest, a frame, a setting) is malformed.
    class InvalidInputError < Error; end
    # Data failed an integrity check.
    class CorruptError < Error; end
    # The operation was cancelled (Ctrl-C, Thread#raise, Timeout).
    class CancelledError < Error; end
    # A safety guard refused the operation; it can be forced.
    class RefusedError < Error; end
    # The replica has been promoted and refuses its old primary.
    class FencedError < Error; end
    # A peer spoke the replication protocol wrongly.
    class ProtocolError < Error; end
    # A host could not be reached or the connection broke.
    class NetworkError < Error; end
    # A peer did not answer in time.
    class TimeoutError < Error; end
    # A host key or certificate could not be verified.
    class VerificationError < Error; end
    # The peer refused our credentials.
    class UnauthorizedError < Error; end
    # A remote API answered with an error.
    class ApiError < Error; end
    # Any other input/output failure.
    class IoError < Error; end
    # A bug in pe_failover (an internal invariant broke, or Rust panicked).
    class InternalError < Error; end
    # The native extension cannot be loaded here; the message says why and
    # how to build it.
    class NativeUnavailableError < Error; end
  end
end
