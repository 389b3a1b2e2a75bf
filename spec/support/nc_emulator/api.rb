# frozen_string_literal: true

require 'json'
require 'uri'
require_relative 'errors'
require_relative 'schema'
require_relative 'store'
require_relative 'status'

module PeFailoverSpec
  module NcEmulator
    # Routes one HTTP request (method, raw path, query, body) to the Store or
    # the StatusService and renders the answer: status code, headers and body
    # as PE sends them (docs/nc-api.md §3, §4). No sockets here, so it can be
    # exercised directly.
    class Api
      JSON_TYPE = 'application/json'
      STATUS_JSON_TYPE = 'application/json; charset=utf-8'
      GROUP = '[^/]+'

      # query: {name => value}; fault: a Faults::Fault or nil.
      Request = Struct.new(:method, :path, :query, :body, :fault, keyword_init: true)
      Response = Struct.new(:status, :headers, :body)
      Route = Struct.new(:method, :regexp, :pattern, :handler)

      ROUTES = [
        ['GET', '/classifier-api/v1/groups', :list_groups],
        ['POST', '/classifier-api/v1/groups', :create_group],
        ['GET', '/classifier-api/v1/groups/:id', :get_group],
        ['PUT', '/classifier-api/v1/groups/:id', :put_group],
        ['POST', '/classifier-api/v1/groups/:id', :update_group],
        ['DELETE', '/classifier-api/v1/groups/:id', :delete_group],
        ['POST', '/classifier-api/v1/groups/:id/pin', :pin],
        ['POST', '/classifier-api/v1/groups/:id/unpin', :unpin],
        ['GET', '/classifier-api/v1/group-children/:id', :group_children],
        ['POST', '/classifier-api/v1/import-hierarchy', :import],
        ['POST', '/classifier-api/v1/update-classes', :update_classes],
        ['GET', '/classifier-api/v1/classes', :classes],
        ['GET', '/classifier-api/v1/environments', :environments],
        ['GET', '/classifier-api/v1/environments/:env', :environment],
        ['PUT', '/classifier-api/v1/environments/:env', :put_environment],
        ['GET', '/classifier-api/v1/environments/:env/classes', :environment_classes],
        ['GET', '/classifier-api/v1/environments/:env/classes/:class', :environment_class],
        ['GET', '/classifier-api/v1/last-class-update', :last_class_update],
        ['POST', '/classifier-api/v1/validate/group', :validate_group],
        ['POST', '/classifier-api/v1/commands/unpin-from-all', :unpin_from_all],
        ['GET', '/status/v1/services', :status_services],
        ['GET', '/status/v1/services/:service', :status_service],
        ['GET', '/status/v1/simple', :status_simple],
        ['GET', '/status/v1/simple/:service', :status_simple_service]
      ].map do |method, pattern, handler|
        Route.new(method, Regexp.new("\\A#{pattern.gsub(/:\w+/, "(#{GROUP})")}\\z"), pattern, handler)
      end.freeze

      attr_reader :store

      def initialize(store, status = StatusService.new)
        @store = store
        @status = status
      end

      # [route, captured path parameters, verdict]; verdict is :ok,
      # :not_found or :method_not_allowed (the path exists for other methods).
      def self.route(method, path)
        matches = ROUTES.select { |r| r.regexp.match?(path) }
        route = matches.find { |r| r.method == method }
        return [nil, [], matches.empty? ? :not_found : :method_not_allowed] unless route

        [route, route.regexp.match(path).captures.map { |c| URI::DEFAULT_PARSER.unescape(c) }, :ok]
      end

      # The route pattern for statistics ("/classifier-api/v1/groups/:id"), or the path.
      def self.pattern(method, path)
        route, = route(method, path)
        route ? route.pattern : path
      end

      def call(request)
        route, params, verdict = self.class.route(request.method, request.path)
        return method_not_allowed(request.path) if verdict == :method_not_allowed
        raise Errors.not_found(request.path) if verdict == :not_found

        send(route.handler, request, *params)
      rescue ApiError => e
        e = Errors.not_found(request.path) if e.kind == 'not-found' && e.details.nil?
        json(e.status, e.body)
      end

      private

      # ---- groups ------------------------------------------------------

      def list_groups(req)
        groups = @store.groups(inherited: inherited?(req))
        offset = non_negative(req, 'offset') || 0
        limit = non_negative(req, 'limit')
        groups = groups.drop(offset)
        groups = groups.take(limit) if limit
        json(200, groups)
      end

      def get_group(req, id)
        check_uuid!(id)
        json(200, @store.group(id, inherited: inherited?(req)))
      end

      def create_group(req)
        body = parse!(req)
        check_parent!(body)
        group = @store.create(body)
        Response.new(303, { 'Location' => "/classifier-api/v1/groups/#{group['id']}" }, '')
      end

      def put_group(req, id)
        check_uuid!(id)
        body = parse!(req)
        check_ids!(body, id)
        check_parent!(body)
        status, group = @store.put(id, body)
        json(status, group)
      end

      def update_group(req, id)
        check_uuid!(id)
        body = parse!(req, empty: {})
        check_ids!(body, id)
        check_parent!(body)
        json(200, @store.update(id, body))
      end

      def delete_group(_req, id)
        check_uuid!(id)
        @store.delete(id)
        empty(204)
      end

      def pin(req, id, unpin: false)
        check_uuid!(id)
        nodes = nodes!(req)
        raise Errors.not_found(nil) unless @store.group?(id)

        @store.pin(id, nodes, unpin: unpin)
        empty(204)
      end

      def unpin(req, id)
        pin(req, id, unpin: true)
      end

      def group_children(req, id)
        check_uuid!(id)
        json(200, @store.group_children(id, non_negative(req, 'depth')))
      end

      def import(req)
        @store.import(parse!(req))
        empty(204)
      end

      def validate_group(req)
        body = parse!(req)
        check_parent!(body)
        json(200, @store.validate(body))
      end

      def unpin_from_all(req)
        body = parse!(req)
        nodes = body.is_a?(Hash) ? body['nodes'] : nil
        unless body.is_a?(Hash) && body.keys == ['nodes'] && nodes.is_a?(Array) && nodes.all?(String)
          raise Errors.schema_violation(body, { 'nodes' => '(not (sequential-of-strings? ...))' },
                                        { 'nodes' => '[java.lang.String]' })
        end
        raise Errors.missing_parameters('nodes') if nodes.empty?

        json(200, @store.unpin_from_all(nodes))
      end

      # ---- classes and environments ------------------------------------

      def update_classes(req)
        @store.update_classes(req.query['environment'])
        empty(201)
      end

      def classes(_req)
        json(200, @store.read_catalog(&:all_classes))
      end

      def environments(_req)
        json(200, @store.read_catalog(&:environments))
      end

      def environment(_req, name)
        env = @store.read_catalog { |c| c.environment(name) }
        env ? json(200, env) : empty(404)
      end

      def put_environment(_req, name)
        status, env = @store.put_environment(name)
        json(status, env)
      end

      def environment_classes(_req, name)
        json(200, @store.read_catalog { |c| c.classes(name) })
      end

      def environment_class(_req, name, klass)
        found = @store.read_catalog { |c| c.class_object(name, klass) }
        found ? json(200, found) : empty(404)
      end

      def last_class_update(_req)
        json(200, { 'last_update' => @store.read_catalog(&:last_update) })
      end

      # ---- status ------------------------------------------------------

      def status_services(req, service = nil)
        reply = @status.services(req.query, service, status_overrides(req))
        Response.new(reply.status, { 'Content-Type' => STATUS_JSON_TYPE }, JSON.generate(reply.body))
      end

      def status_service(req, service)
        status_services(req, service)
      end

      def status_simple(req, service = nil)
        reply = @status.simple(service, status_overrides(req))
        Response.new(reply.status, { 'Content-Type' => 'text/plain; charset=utf-8' }, reply.body)
      end

      def status_simple_service(req, service)
        status_simple(req, service)
      end

      def status_overrides(req)
        case req.fault&.mode
        when 'starting' then { 'classifier-service' => 'starting' }
        when 'error500' then { 'classifier-service' => 'error' }
        else {}
        end
      end

      # ---- helpers -----------------------------------------------------

      # Any value but "0" and "false" turns `inherited` on (docs/nc-api.md §3.1).
      def inherited?(req)
        req.query.key?('inherited') && !%w[0 false].include?(req.query['inherited'])
      end

      def non_negative(req, name)
        value = req.query[name]
        return nil if value.nil?
        raise Errors.bad_query(name, value, 'a non-negative integer') unless value.match?(/\A\d+\z/)

        Integer(value, 10)
      end

      # The JSON body; `empty` is returned for a blank body unless it is :required.
      def parse!(req, empty: :required)
        raw = req.body.to_s.b
        return empty if raw.strip.empty? && empty != :required

        text = raw.dup.force_encoding(Encoding::UTF_8)
        raise Errors.malformed_request(text.scrub, 'the body is not valid UTF-8') unless text.valid_encoding?

        JSON.parse(text)
      rescue JSON::ParserError => e
        raise Errors.malformed_request(text, e.message)
      end

      def check_uuid!(id)
        raise Errors.malformed_uuid_path(id) unless Schema.uuid?(id)
      end

      def check_ids!(body, id)
        return unless body.is_a?(Hash) && body.key?('id') && body['id'].to_s != id

        raise Errors.conflicting_ids(body['id'], id)
      end

      def check_parent!(body)
        return unless body.is_a?(Hash) && body.key?('parent') && !Schema.uuid?(body['parent'])

        raise Errors.malformed_uuid_parent(body['parent'])
      end

      # Nodes for pin/unpin: ?nodes=a,b and/or a body {"nodes": "a" | ["a", "b"]}.
      def nodes!(req)
        nodes = req.query['nodes'].to_s.split(',').map(&:strip).reject(&:empty?)
        body = parse!(req, empty: nil)
        nodes += body_nodes(body) unless body.nil?
        raise Errors.missing_parameters('nodes') if nodes.empty?

        nodes.uniq
      end

      def body_nodes(body)
        value = body.is_a?(Hash) ? body['nodes'] : nil
        valid = body.is_a?(Hash) && (body.keys - ['nodes']).empty? &&
                (value.nil? || value.is_a?(String) || (value.is_a?(Array) && value.all?(String)))
        unless valid
          problems = body.is_a?(Hash) ? (body.keys - ['nodes']).to_h { |k| [k, 'disallowed-key'] } : {}
          problems['nodes'] = "(not (string-or-strings? #{Schema.pr(value)}))" if problems.empty?
          raise Errors.schema_violation(body, problems, { '(optional-key nodes)' => '(either String [String])' })
        end
        Array(value)
      end

      def json(status, value)
        Response.new(status, { 'Content-Type' => JSON_TYPE }, JSON.generate(value))
      end

      def empty(status)
        Response.new(status, {}, '')
      end

      def method_not_allowed(_path)
        Response.new(405, { 'Content-Type' => 'text/plain' }, 'Method not allowed.')
      end
    end
  end
end
