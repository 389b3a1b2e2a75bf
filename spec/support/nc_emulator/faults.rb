# frozen_string_literal: true

module PeFailoverSpec
  module NcEmulator
    # Test-only fault injection (not part of PE). One fault is active at a
    # time and applies to the next `count` requests to /classifier-api and
    # /status (all of them when count is nil):
    #
    #   starting  classifier answers 503; status shows classifier-service "starting"
    #   error500  classifier answers 500 application-error; status shows "error"
    #   slow      sleep `delay` seconds, then answer normally
    #   drop      close the connection without answering
    class Faults
      MODES = %w[none starting error500 slow drop].freeze
      DEFAULT_DELAY = 2.0

      # The fault applied to one request.
      Fault = Struct.new(:mode, :delay)

      def initialize
        @lock = Mutex.new
        clear
      end

      def clear
        @lock.synchronize { @mode, @count, @delay = 'none', nil, DEFAULT_DELAY }
      end

      # Sets the fault from a control document {"mode", "count"?, "delay"?}.
      # Raises ArgumentError with a readable message on bad input.
      def set(doc)
        raise ArgumentError, 'expected a JSON object like {"mode": "error500", "count": 2}' unless doc.is_a?(Hash)

        unknown = doc.keys - %w[mode count delay]
        raise ArgumentError, "unknown key(s): #{unknown.join(', ')}" if unknown.any?

        mode = doc['mode']
        raise ArgumentError, "mode must be one of #{MODES.join(', ')}; got #{mode.inspect}" unless MODES.include?(mode)

        count = check_count(doc['count'])
        delay = check_delay(doc.fetch('delay', DEFAULT_DELAY))
        @lock.synchronize { @mode, @count, @delay = mode, count, delay }
        to_h
      end

      # The fault for the current request (consuming one use), or nil.
      def take
        @lock.synchronize do
          next nil if @mode == 'none'

          fault = Fault.new(@mode, @delay)
          unless @count.nil?
            @count -= 1
            @mode = 'none' if @count <= 0
          end
          fault
        end
      end

      def to_h
        @lock.synchronize { { 'mode' => @mode, 'count' => @count, 'delay' => @delay } }
      end

      private

      def check_count(count)
        return nil if count.nil?
        raise ArgumentError, "count must be a positive integer; got #{count.inspect}" unless count.is_a?(Integer) && count.positive?

        count
      end

      def check_delay(delay)
        raise ArgumentError, "delay must be a non-negative number; got #{delay.inspect}" unless delay.is_a?(Numeric) && delay >= 0

        delay.to_f
      end
    end
  end
end
