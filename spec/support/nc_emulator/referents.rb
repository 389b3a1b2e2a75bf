# frozen_string_literal: true

require_relative 'hierarchy'

module PeFailoverSpec
  module NcEmulator
    # Class and parameter reference checks (docs/nc-api.md §6 item 4) and the
    # read-only `deleted` annotation (§2.6), both against a Catalog.
    #
    # Each group is checked in its own environment against every class it or
    # an ancestor declares and every parameter it or an ancestor sets.
    # config_data is never checked.
    class Referents
      DELETED = 'puppetlabs.classifier/deleted'

      def initialize(catalog)
        @catalog = catalog
      end

      # Errors of the given groups as {key => error}; the key identifies an
      # error independently of names, so two states can be compared.
      def errors(groups, ids)
        ids.each_with_object({}) do |id, acc|
          group_errors(groups, id).each { |key, error| acc[key] = error }
        end
      end

      # Errors present in `after` but not in `before`, as a list.
      def added(before, after)
        after.reject { |key, _| before.key?(key) }.values
      end

      # Records placeholders so that every reference of the groups resolves
      # (as deleted classes/parameters). Used by import-hierarchy.
      def add_placeholders(groups, ids)
        errors(groups, ids).each_value do |error|
          if error['kind'] == 'missing-class'
            @catalog.add_placeholder(error['environment'], error['missing'])
          else
            @catalog.add_placeholder(error['environment'], *error['missing'])
          end
        end
      end

      # The `deleted` annotation for a group's classes, or nil.
      def annotation(environment, classes)
        notes = {}
        (classes || {}).each do |klass, params|
          if !@catalog.class_live?(environment, klass)
            notes[klass] = { DELETED => true }
          else
            gone = params.reject { |param, _| @catalog.param_live?(environment, klass, param) }
            next if gone.empty?

            notes[klass] = { DELETED => false }
            gone.each { |param, value| notes[klass][param] = { DELETED => true, 'value' => value } }
          end
        end
        notes.empty? ? nil : notes
      end

      private

      def group_errors(groups, id)
        group = groups[id]
        env = group['environment']
        line = Hierarchy.chain(groups, id)
        referenced_classes(line).flat_map do |klass|
          class_errors(group, env, line, klass)
        end
      end

      def referenced_classes(line)
        line.reverse.flat_map { |g| (g['classes'] || {}).keys }.uniq
      end

      def class_errors(group, env, line, klass)
        unless @catalog.class_live?(env, klass)
          definer = line.find { |g| (g['classes'] || {}).key?(klass) }
          return [error(group, env, 'missing-class', klass, definer)]
        end
        params = line.reverse.flat_map { |g| (g.dig('classes', klass) || {}).keys }.uniq
        params.reject { |p| @catalog.param_live?(env, klass, p) }.map do |param|
          definer = line.find { |g| (g.dig('classes', klass) || {}).key?(param) }
          error(group, env, 'missing-parameter', [klass, param], definer)
        end
      end

      def error(group, env, kind, missing, definer)
        key = [group['id'], kind, missing, env]
        [key, { 'kind' => kind, 'missing' => missing, 'environment' => env,
                'group' => group['name'], 'defined_by' => definer['name'] }]
      end
    end
  end
end
