# frozen_string_literal: true

require 'json'
require_relative 'errors'
require_relative 'rules'

module PeFailoverSpec
  module NcEmulator
    # The closed schema of a node group (docs/nc-api.md §2.1, §2.8) for each
    # kind of write, and the normal form groups are stored in.
    #
    # Modes: :create (POST /v1/groups, PUT, validate), :delta (POST
    # /v1/groups/<id>) and :import (one element of an import-hierarchy array).
    # Problems are reported the way the classifier does: a map of key to
    # problem, where a problem is `disallowed-key`, `missing-required-key`, a
    # `(not (...))` predicate text or the malformed-rule sentence.
    module Schema
      ROOT_ID = '00000000-0000-4000-8000-000000000000'
      UUID = /\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z/.freeze
      # Output key order: the order of a real PE 2016 GET /v1/groups response,
      # then the keys that response did not have.
      KEY_ORDER = %w[parent environment_trumps name description rule variables id environment classes
                     config_data deleted last_edited serial_number].freeze
      CONTENT_KEYS = %w[parent environment_trumps name description rule variables id environment classes
                        config_data].freeze
      DEFAULTS = { 'environment' => 'production', 'environment_trumps' => false, 'variables' => {} }.freeze
      REQUIRED = {
        create: %w[name parent classes],
        delta: [],
        import: %w[id name parent environment environment_trumps classes variables]
      }.freeze

      # Switches that change what the schema accepts.
      Options = Struct.new(:pe2016, :config_data, :import_accepts_deleted, keyword_init: true) do
        def self.default
          new(pe2016: false, config_data: true, import_accepts_deleted: false)
        end
      end

      module_function

      def uuid?(value)
        value.is_a?(String) && UUID.match?(value)
      end

      # Checks `body` and returns it in normal form (defaults merged for :create).
      # Raises ApiError(schema-violation).
      def group!(body, mode, options)
        body = DEFAULTS.merge(body) if mode == :create && body.is_a?(Hash)
        problems = problems(body, mode, options)
        raise Errors.schema_violation(body, problems, describe(mode, options)) unless problems.empty?

        mode == :delta ? normalize_delta(body) : normalize(body)
      end

      # {key => problem} for one group body; empty when it conforms.
      def problems(body, mode, options)
        return { 'value' => "(not (map? #{pr(body)}))" } unless body.is_a?(Hash)

        problems = {}
        body.each do |key, value|
          problem = allowed_keys(mode, options).include?(key) ? value_problem(key, value, mode) : 'disallowed-key'
          problems[key] = problem if problem
        end
        REQUIRED.fetch(mode).each { |key| problems[key] = 'missing-required-key' unless body.key?(key) }
        problems
      end

      def allowed_keys(mode, options)
        keys = CONTENT_KEYS.dup
        keys.delete('config_data') unless options.config_data
        keys += %w[serial_number last_edited] unless options.pe2016
        keys << 'deleted' if mode == :import && options.import_accepts_deleted
        keys
      end

      def value_problem(key, value, mode)
        case key
        when 'name', 'description' then type_problem(value, String, 'java.lang.String')
        when 'environment' then environment_problem(value)
        when 'environment_trumps' then boolean_problem(value)
        when 'id', 'parent' then value.is_a?(String) && uuid?(value) ? nil : "(not (uuid? #{pr(value)}))"
        when 'rule' then (mode == :delta && value.nil?) || Rules.valid?(value) ? nil : Errors::MALFORMED_RULE
        when 'classes', 'config_data' then class_map_problem(value, mode)
        when 'variables' then value.is_a?(Hash) ? nil : "(not (map? #{pr(value)}))"
        when 'serial_number' then value.is_a?(Integer) && value >= 0 ? nil : "(not (integer? #{pr(value)}))"
        when 'last_edited' then type_problem(value, String, 'java.lang.String')
        end
      end

      def type_problem(value, klass, java_name)
        value.is_a?(klass) ? nil : "(not (instance? #{java_name} #{pr(value)}))"
      end

      def boolean_problem(value)
        [true, false].include?(value) ? nil : "(not (instance? java.lang.Boolean #{pr(value)}))"
      end

      def environment_problem(value)
        return type_problem(value, String, 'java.lang.String') unless value.is_a?(String)

        value.empty? ? "(not (non-empty? #{pr(value)}))" : nil
      end

      # {class => {param => value}}. A class may be null: in a delta that removes
      # it, elsewhere it means "no parameters" (the classifier's schema allows it).
      def class_map_problem(value, _mode)
        return "(not (map? #{pr(value)}))" unless value.is_a?(Hash)

        nested = {}
        value.each do |klass, params|
          next if params.is_a?(Hash) || params.nil?

          nested[klass] = "(not (map? #{pr(params)}))"
        end
        nested.empty? ? nil : nested
      end

      # Clojure-flavoured printing of a JSON value for problem texts.
      def pr(value)
        value.nil? ? 'nil' : JSON.generate(value)
      rescue JSON::GeneratorError
        value.inspect
      end

      # Canonical stored form of a full group: known keys in output order,
      # read-only keys dropped, empty config_data classes dropped.
      def normalize(body)
        group = {}
        KEY_ORDER.each do |key|
          next unless CONTENT_KEYS.include?(key) && body.key?(key)

          group[key] = deep_copy(body[key])
        end
        group['classes'] = group['classes'].transform_values { |params| params || {} } if group['classes']
        clean_config_data!(group)
        group
      end

      def normalize_delta(body)
        delta = {}
        body.each { |k, v| delta[k] = deep_copy(v) unless k == 'last_edited' }
        delta
      end

      # Drops config_data entries that hold nothing; drops the key when empty.
      def clean_config_data!(group)
        return group unless group.key?('config_data')

        data = group['config_data'].reject { |_k, params| params.nil? || params.empty? }
        data.empty? ? group.delete('config_data') : group['config_data'] = data
        group
      end

      # Applies a delta (docs/nc-api.md §3.5): scalars replace, classes and
      # config_data merge per class and per parameter, variables merge per key,
      # and every null removes what it names. The rule is replaced wholesale.
      def apply_delta(group, delta)
        result = deep_copy(group)
        %w[name environment description parent environment_trumps].each do |key|
          result[key] = deep_copy(delta[key]) if delta.key?(key)
        end
        if delta.key?('rule')
          delta['rule'].nil? ? result.delete('rule') : result['rule'] = deep_copy(delta['rule'])
        end
        %w[classes config_data].each { |key| merge_class_map!(result, key, delta[key]) if delta.key?(key) }
        merge_variables!(result, delta['variables']) if delta.key?('variables')
        clean_config_data!(reorder(result))
      end

      def merge_class_map!(group, key, changes)
        merged = group[key] || {}
        changes.each do |klass, params|
          if params.nil?
            merged.delete(klass)
            next
          end
          current = merged[klass] || {}
          params.each { |p, v| v.nil? ? current.delete(p) : current[p] = deep_copy(v) }
          merged[klass] = current
        end
        group[key] = merged
      end

      def merge_variables!(group, changes)
        merged = group['variables'] || {}
        changes.each { |k, v| v.nil? ? merged.delete(k) : merged[k] = deep_copy(v) }
        group['variables'] = merged
      end

      def reorder(group)
        KEY_ORDER.each_with_object({}) { |k, h| h[k] = group[k] if group.key?(k) }
      end

      # A readable description of the schema, for `details.schema`.
      def describe(mode, options)
        required = REQUIRED.fetch(mode)
        allowed_keys(mode, options).to_h do |key|
          label = required.include?(key) ? key : "(optional-key #{key})"
          [label, TYPE_NAMES.fetch(key)]
        end
      end

      TYPE_NAMES = {
        'id' => 'UUID', 'parent' => 'UUID', 'name' => 'java.lang.String',
        'description' => 'java.lang.String', 'environment' => 'non-empty java.lang.String',
        'environment_trumps' => 'java.lang.Boolean', 'rule' => 'RuleCondition',
        'classes' => '{Keyword {Keyword Any}}', 'config_data' => '{Keyword {Keyword Any}}',
        'variables' => '{Keyword Any}', 'serial_number' => 'java.lang.Integer',
        'last_edited' => 'java.lang.String', 'deleted' => 'Any'
      }.freeze

      def deep_copy(value)
        case value
        when Hash then value.to_h { |k, v| [k, deep_copy(v)] }
        when Array then value.map { |v| deep_copy(v) }
        else value
        end
      end
    end
  end
end
