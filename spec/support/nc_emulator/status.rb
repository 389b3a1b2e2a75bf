# frozen_string_literal: true

module PeFailoverSpec
  module NcEmulator
    # The status service of pe-console-services (docs/nc-api.md §3.13):
    # /status/v1/services[/<svc>] and /status/v1/simple[/<svc>]. The state of
    # each service is "running" unless an override says otherwise (the
    # emulator's fault injection sets classifier-service to "starting" or "error").
    class StatusService
      SERVICES = %w[activity-service classifier-service rbac-service status-service].freeze
      LEVELS = %w[critical info debug].freeze
      # Worst first: the overall state of a set of services is the worst one.
      SEVERITY = %w[error unknown starting stopping running].freeze

      Reply = Struct.new(:status, :body, :json) # body: Hash (json) or String (text)

      def initialize(version: '2021.7.0.0')
        @version = version
      end

      # GET /status/v1/services[/<service>]
      def services(query, service = nil, overrides = {})
        level = query.fetch('level', 'info')
        return Reply.new(400, invalid_level(level), true) unless LEVELS.include?(level)
        return Reply.new(400, invalid_timeout(query['timeout']), true) if bad_timeout?(query['timeout'])

        if service
          return Reply.new(404, not_found(service), true) unless SERVICES.include?(service)

          entry = entry(service, level, overrides)
          return Reply.new(entry['state'] == 'running' ? 200 : 503, entry, true)
        end
        body = SERVICES.to_h { |s| [s, entry(s, level, overrides)] }
        Reply.new(body.values.all? { |e| e['state'] == 'running' } ? 200 : 503, body, true)
      end

      # GET /status/v1/simple[/<service>]: plain text for load balancers.
      def simple(service = nil, overrides = {})
        return Reply.new(404, "not found: #{service}", false) if service && !SERVICES.include?(service)

        states = (service ? [service] : SERVICES).map { |s| state_of(s, overrides) }
        worst = states.min_by { |s| SEVERITY.index(s) || 0 }
        Reply.new(worst == 'running' ? 200 : 503, worst, false)
      end

      private

      def state_of(service, overrides)
        overrides.fetch(service, 'running')
      end

      def entry(service, level, overrides)
        state = state_of(service, overrides)
        { 'service_version' => @version, 'service_status_version' => 1, 'detail_level' => level,
          'state' => state, 'status' => level == 'critical' ? nil : detail(service, state),
          'active_alerts' => [] }
      end

      def detail(service, state)
        up = state == 'running'
        case service
        when 'classifier-service', 'activity-service'
          { 'db_up' => up, 'db_pool' => { 'state' => up ? 'ready' : 'not-ready' }, 'rbac_up' => true,
            'activity_up' => true, 'replication' => { 'mode' => 'none', 'status' => 'none' } }
        when 'rbac-service' then { 'db_up' => up, 'activity_up' => true }
        else { 'experimental' => { 'jvm-metrics' => {} } }
        end
      end

      def bad_timeout?(value)
        !value.nil? && !value.match?(/\A[1-9]\d*\z/)
      end

      def invalid_level(level)
        { 'kind' => 'invalid-level', 'msg' => "Invalid level: #{level.inspect}. Use one of: #{LEVELS.join(', ')}." }
      end

      def invalid_timeout(value)
        { 'kind' => 'invalid-timeout', 'msg' => "Invalid timeout: #{value.inspect}. Use a positive integer." }
      end

      def not_found(service)
        { 'kind' => 'service-not-found', 'msg' => "No status information found for service #{service}" }
      end
    end
  end
end
