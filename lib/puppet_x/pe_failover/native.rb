# frozen_string_literal: true

require_relative 'errors'

module PuppetX
  module PeFailover
    # Loads the compiled core (`pe_failover_native.so`) on demand.
    #
    # Requiring this file never raises: whether the extension loaded, and if
    # not why, is kept for {available?} and {unavailable_reason}, and
    # {load!} raises {NativeUnavailableError} with that reason when code
    # actually needs it. Puppet Server compiles catalogs under JRuby, which
    # cannot load a C extension; there we do not even try.
    module NativeLoader
      # Directory holding the compiled extension(s).
      LIB_DIR = __dir__

      # Build instructions shown when the extension is missing.
      BUILD_HINT = 'build it for this Ruby with `rake compile` in the module directory ' \
                   '(needs cargo and libclang; on a PE primary run it with ' \
                   '`/opt/puppetlabs/puppet/bin/rake compile` so it matches PE\'s Ruby)'

      class << self
        # @return [Boolean] whether the native extension is loaded (loading it
        #   on first call)
        def available?
          attempt
          @loaded
        end

        # @return [String, nil] why the extension is not available, or nil
        def unavailable_reason
          attempt
          @reason
        end

        # Loads the extension or raises {NativeUnavailableError}.
        # @return [Module] `PuppetX::PeFailover::Native`
        def load!
          raise NativeUnavailableError.new("pe_failover native extension unavailable: #{unavailable_reason}", :unavailable) unless available?

          PuppetX::PeFailover::Native
        end

        # Where the extension is looked for, most specific first: the
        # directory named after this Ruby's major.minor version, then the
        # plain one.
        # @return [Array<String>]
        def candidates
          abi = RUBY_VERSION[%r{\A\d+\.\d+}]
          [File.join(LIB_DIR, abi, 'pe_failover_native.so'), File.join(LIB_DIR, 'pe_failover_native.so')]
        end

        private

        def attempt
          return if defined?(@attempted) && @attempted

          @attempted = true
          @loaded = false
          if RUBY_ENGINE == 'jruby'
            @reason = 'running under JRuby (Puppet Server), which cannot load native extensions; ' \
                      'call this function on the agent instead, e.g. with Deferred(\'pe_failover::...\', [...])'
            return
          end
          path = candidates.find { |c| File.exist?(c) }
          unless path
            @reason = "no compiled extension for Ruby #{RUBY_VERSION} (looked for #{candidates.join(' and ')}); #{BUILD_HINT}"
            return
          end
          begin
            require path
            @loaded = true
            @reason = nil
          rescue LoadError, StandardError => e
            @reason = "#{path} did not load (#{e.class}: #{e.message.lines.first&.strip}); it was probably built for " \
                      "another Ruby than #{RbConfig.ruby} (#{RUBY_VERSION}); #{BUILD_HINT}"
          end
        end
      end
    end
  end
end
