# frozen_string_literal: true

module PeFailoverSpec
  module NcEmulator
    # Request counters for tests (GET /_emulator/stats): totals by
    # "METHOD /route/pattern" and by status, plus the number of WRITE calls.
    #
    # A write is any POST, PUT or DELETE under /classifier-api except
    # POST /v1/validate/group (writes nothing) and POST /v1/update-classes
    # (a class refresh, which a replicator makes on every run). Failed writes
    # count: the figure answers "did the client try to change anything?".
    class Stats
      WRITE_METHODS = %w[POST PUT DELETE PATCH].freeze
      NOT_WRITES = %w[/classifier-api/v1/validate/group /classifier-api/v1/update-classes].freeze
      LOG_LIMIT = 1000

      def initialize
        @lock = Mutex.new
        reset!
      end

      def reset!
        @lock.synchronize do
          @total = 0
          @writes = 0
          @by_route = Hash.new(0)
          @by_status = Hash.new(0)
          @write_log = []
        end
      end

      def self.write?(method, path, pattern)
        WRITE_METHODS.include?(method) && path.start_with?('/classifier-api/') && !NOT_WRITES.include?(pattern)
      end

      # pattern: the route ("/classifier-api/v1/groups/:id") or the raw path.
      def record(method, path, pattern, status)
        @lock.synchronize do
          @total += 1
          @by_route["#{method} #{pattern}"] += 1
          @by_status[status.to_s] += 1
          next unless self.class.write?(method, path, pattern)

          @writes += 1
          @write_log << { 'method' => method, 'path' => path, 'status' => status }
          @write_log.shift if @write_log.size > LOG_LIMIT
        end
      end

      def to_h
        @lock.synchronize do
          { 'total' => @total, 'writes' => @writes, 'by_route' => @by_route.dup,
            'by_status' => @by_status.dup, 'write_log' => @write_log.dup }
        end
      end
    end
  end
end
