# frozen_string_literal: true

require 'json'

module PeFailoverSpec
  module NcEmulator
    # An API failure: an HTTP status plus the classifier's JSON error body
    # `{"kind", "msg", "details"}`. Raised by the model, rendered by Api.
    class ApiError < StandardError
      attr_reader :status, :kind, :details

      # details: :omit leaves the key out (the root-rule-edit case without other edits).
      def initialize(status, kind, msg, details = nil)
        super(msg)
        @status = status
        @kind = kind
        @details = details
      end

      def body
        h = { 'kind' => @kind, 'msg' => message }
        h['details'] = @details unless @details == :omit
        h
      end
    end

    # Builders for every error kind the emulator produces. Message texts follow
    # the classifier's own wording (docs/nc-api.md §4), so clients that match on
    # them behave as they would against PE.
    module Errors
      SCHEMA_PREFIX = 'The object(s) in your submitted request did not conform to the schema. The problem is: '
      MALFORMED_RULE = 'The rule is malformed. Please consult the group documentation for details on the rule grammar.'

      module_function

      def not_found(path)
        ApiError.new(404, 'not-found', 'The resource could not be found.', path)
      end

      def malformed_request(body, error)
        ApiError.new(400, 'malformed-request', 'The body of your request is not valid JSON.',
                     { 'body' => body, 'error' => error })
      end

      def bad_query(param, value, expected)
        ApiError.new(400, 'malformed-request',
                     "The #{param} query parameter must be #{expected}; got #{value.inspect}.",
                     { 'parameter' => param, 'value' => value })
      end

      def malformed_uuid_path(value)
        ApiError.new(400, 'malformed-uuid', "The group id in the request's URI is not a valid UUID.", value)
      end

      def malformed_uuid_parent(value)
        ApiError.new(400, 'malformed-uuid', "The group's parent id is not a valid UUID.", value)
      end

      def conflicting_ids(submitted, from_url)
        ApiError.new(400, 'conflicting-ids',
                     "The group id submitted in the request body differs from the id. present in the URL's request.",
                     { 'submitted' => submitted, 'fromUrl' => from_url })
      end

      # problems: { key => problem }, a problem is a string or a nested hash.
      def schema_violation(submitted, problems, schema)
        ApiError.new(400, 'schema-violation', SCHEMA_PREFIX + render_problems(problems),
                     { 'submitted' => submitted, 'schema' => schema, 'error' => problems })
      end

      # Import: one entry per malformed group, at the same index in each array.
      def import_schema_violation(submitted, problems, schema)
        text = problems.map { |p| render_problems(p) }.join(' ')
        ApiError.new(400, 'schema-violation', SCHEMA_PREFIX + text,
                     { 'submitted' => submitted, 'schema' => schema, 'error' => problems })
      end

      # Renders like Clojure's (seq error-map): ([:key problem] [:key2 problem2])
      def render_problems(problems)
        return problems.to_s unless problems.is_a?(Hash)

        "(#{problems.map { |k, v| "[:#{k} #{render_problem(v)}]" }.join(' ')})"
      end

      def render_problem(problem)
        case problem
        when Hash then "{#{problem.map { |k, v| ":#{k} #{render_problem(v)}" }.join(', ')}}"
        when MALFORMED_RULE then JSON.generate(problem)
        else problem.to_s
        end
      end

      # pairs: [[field, value], ...] in the classifier's column names.
      def uniqueness(pairs, constraint)
        description = pairs.map { |f, v| "#{f} = #{v}" }.join(', ')
        ApiError.new(422, 'uniqueness-violation',
                     'Could not complete the request because it violates a group uniqueness constraint. ' \
                     "A group with #{description} already exists.",
                     { 'constraintName' => constraint, 'conflict' => pairs.to_h })
      end

      def missing_parent(group)
        ApiError.new(422, 'missing-parent', "The parent group #{group['parent']} does not exist.", group)
      end

      def inheritance_cycle(groups)
        names = (groups + [groups.first]).map { |g| g['name'] }.join(' -> ')
        ApiError.new(422, 'inheritance-cycle',
                     "Detected group inheritance cycle: #{names}. See the `details` key for the full groups of the cycle.",
                     groups)
      end

      def unreachable_groups(groups)
        plural = groups.size > 1
        names = to_sentence(groups.map { |g| "\"#{g['name']}\"" })
        ApiError.new(422, 'unreachable-groups',
                     "The group#{plural ? 's' : ''} named #{names} #{plural ? 'are' : 'is'} not reachable " \
                     'from the root of the hierarchy.', groups)
      end

      def children_present(group, children)
        names = children.map { |c| JSON.generate(c['name']) }.join(' ')
        ApiError.new(422, 'children-present', "The group cannot be deleted because it has children: [#{names}]",
                     { 'group' => group, 'children' => children })
      end

      def root_rule_edit(delta)
        others = delta.reject { |k, _| %w[id rule].include?(k) }
        if others.empty?
          ApiError.new(422, 'root-rule-edit', "Changing the root group's rule is not permitted.", :omit)
        else
          ApiError.new(422, 'root-rule-edit',
                       "Changing the root group's rule is not permitted. None of your other edits were applied, " \
                       'but you may retry by re-submitting your delta less the `rule` key. The received delta ' \
                       "can be found in this object's `details` key for convenience.", delta)
        end
      end

      def root_delete
        ApiError.new(500, 'application-error',
                     'The root group cannot be deleted. See `details` for the full stack trace',
                     { 'trace' => [] })
      end

      def serial_conflict(group, submitted)
        ApiError.new(409, 'conflict',
                     "The group's serial_number is #{group['serial_number']} but the request carried " \
                     "#{submitted}: the group was changed after it was read. Re-read it and retry, or leave " \
                     'serial_number out to skip the check.',
                     { 'submitted' => submitted, 'current' => group['serial_number'] })
      end

      def missing_parameters(what)
        ApiError.new(400, 'missing-parameters', "The request is missing the required parameter(s): #{what}.", nil)
      end

      def application_error(msg)
        ApiError.new(500, 'application-error', "#{msg}. See `details` for the full stack trace",
                     { 'trace' => [] })
      end

      def service_unavailable
        ApiError.new(503, 'service-unavailable',
                     'The classifier service is starting up and cannot answer requests yet.', nil)
      end

      # errors: missing-referent hashes; edited_id: id of the group being written
      # (its errors are "group" errors, the rest belong to descendants).
      def missing_referents(errors, edited_name)
        ApiError.new(422, 'missing-referents', referents_message(errors, edited_name), errors)
      end

      def referents_message(errors, edited_name)
        own = errors.select { |e| e['group'] == edited_name }
        descendants = errors - own
        "#{referents_subject(own, descendants)} reference to the following missing " \
          "#{referent_kinds(errors, plural: true)}: #{referent_list(errors)}. See the `details` key for complete " \
          "information on where each reference to a missing #{referent_kinds(errors, plural: false)} originated."
      end

      def referents_subject(own, descendants)
        erroring = descendants.map { |e| e['group'] }.uniq.size
        if own.empty? && erroring > 1 then 'Descendents of the group being edited make'
        elsif own.empty? then 'A descendent of the group being edited makes'
        elsif descendants.empty? then 'The group being edited or created makes'
        else "The group being edited and #{erroring} of its descendents make"
        end
      end

      def referent_kinds(errors, plural:)
        classes = errors.any? { |e| e['kind'] == 'missing-class' }
        params = errors.any? { |e| e['kind'] == 'missing-parameter' }
        if classes && params then plural ? 'classes and class parameters' : 'class or class parameter'
        elsif params then plural ? 'class parameters' : 'class parameter'
        else plural ? 'classes' : 'class'
        end
      end

      def referent_list(errors)
        items = errors.map { |e| [e['kind'], e['missing'], e['environment']] }.uniq.map do |kind, missing, env|
          what = kind == 'missing-parameter' ? "\"#{missing[0]}\" class's \"#{missing[1]}\" parameter" : "\"#{missing}\" class"
          "#{what} in the \"#{env}\" environment"
        end
        to_sentence(items)
      end

      # ["a"] => "a"; ["a","b"] => "a and b"; ["a","b","c"] => "a, b, and c"
      def to_sentence(items)
        case items.size
        when 0 then ''
        when 1 then items[0]
        when 2 then "#{items[0]} and #{items[1]}"
        else "#{items[0..-2].join(', ')}, and #{items[-1]}"
        end
      end
    end
  end
end
