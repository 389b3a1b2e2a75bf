# frozen_string_literal: true

module PeFailoverSpec
  module NcEmulator
    # The node group rule grammar (docs/nc-api.md §5) and the rule edits the
    # API performs: pinning and unpinning nodes, and the conjunction that the
    # inherited view shows.
    #
    #   condition : [bool condition+] | ["not" condition] | [operator fact-path value]
    #   fact-path : field-name | ["fact"|"trusted", field-name, (field-name|index)*]
    module Rules
      BOOLEANS = %w[and or].freeze
      OPERATORS = %w[= ~ < <= > >=].freeze
      PATH_TYPES = %w[fact trusted].freeze

      module_function

      # True when `rule` is a well-formed condition.
      def valid?(rule)
        return false unless rule.is_a?(Array) && !rule.empty?

        head = rule[0]
        if BOOLEANS.include?(head) then rule.size >= 2 && rule.drop(1).all? { |c| valid?(c) }
        elsif head == 'not' then rule.size == 2 && valid?(rule[1])
        elsif OPERATORS.include?(head) then rule.size == 3 && valid_field?(rule[1]) && rule[2].is_a?(String)
        else false
        end
      end

      def valid_field?(field)
        return !field.empty? if field.is_a?(String)
        return false unless field.is_a?(Array) && field.size >= 2
        return false unless PATH_TYPES.include?(field[0]) && field[1].is_a?(String) && !field[1].empty?

        field.drop(2).all? { |c| (c.is_a?(String) && !c.empty?) || (c.is_a?(Integer) && c >= 0) }
      end

      # A pin is ["=", "name", certname] directly under a top-level "or".
      def pin_clause(node)
        ['=', 'name', node]
      end

      def pinned_nodes(rule)
        return [] unless rule.is_a?(Array) && rule[0] == 'or'

        rule.drop(1).select { |c| pin?(c) }.map { |c| c[2] }
      end

      def pin?(clause)
        clause.is_a?(Array) && clause.size == 3 && clause[0] == '=' && clause[1] == 'name' && clause[2].is_a?(String)
      end

      # Returns the rule with every node pinned (nodes already pinned are left alone).
      def pin(rule, nodes)
        new_nodes = nodes.uniq - pinned_nodes(rule)
        return rule if new_nodes.empty?

        clauses = new_nodes.map { |n| pin_clause(n) }
        if rule.nil? then ['or', *clauses]
        elsif rule[0] == 'or' then rule + clauses
        else ['or', rule, *clauses]
        end
      end

      # Returns the rule without pins for `nodes`; nil when nothing is left.
      def unpin(rule, nodes)
        return rule unless rule.is_a?(Array) && rule[0] == 'or'

        kept = rule.drop(1).reject { |c| pin?(c) && nodes.include?(c[2]) }
        return rule if kept.size == rule.size - 1
        return nil if kept.empty?

        ['or', *kept]
      end

      # The rule a group effectively has once its ancestors' rules apply.
      def conjoin(rules)
        rules = rules.compact
        return nil if rules.empty?
        return rules.first if rules.size == 1

        ['and', *rules]
      end
    end
  end
end
