# frozen_string_literal: true

require_relative 'schema'

module PeFailoverSpec
  module NcEmulator
    # Tree walks over a set of groups held as {id => group}: ancestor chains,
    # cycles, children, subtrees, the import-hierarchy reachability check and
    # the inherited view of a group.
    module Hierarchy
      ROOT_ID = Schema::ROOT_ID

      module_function

      # [group, parent, grandparent, ..., root]; stops at the root, at a
      # missing parent or before repeating a group.
      def chain(groups, id)
        seen = {}
        result = []
        while (group = groups[id]) && !seen[id]
          seen[id] = true
          result << group
          break if id == ROOT_ID

          id = group['parent']
        end
        result
      end

      # The groups of the cycle that `id` is on, starting with `id`; nil when
      # following parents from `id` reaches the root or a missing group.
      def cycle(groups, id)
        path = []
        current = id
        loop do
          group = groups[current]
          return nil if group.nil? || (current == ROOT_ID && group['parent'] == ROOT_ID)

          path << group
          current = group['parent']
          return path if current == id
          return nil if path.size > groups.size
        end
      end

      # Direct children of `id` (the root is not its own child).
      def children(groups, id)
        groups.values.select { |g| g['parent'] == id && g['id'] != id }.sort_by { |g| g['id'] }
      end

      # `id` and every group below it, parents before children.
      def subtree_ids(groups, id)
        by_parent = groups.values.group_by { |g| g['parent'] }
        ids = [id]
        seen = { id => true }
        index = 0
        while index < ids.size
          (by_parent[ids[index]] || []).each do |g|
            next if seen[g['id']]

            seen[g['id']] = true
            ids << g['id']
          end
          index += 1
        end
        ids
      end

      # Import check (docs/nc-api.md §3.7): walk down from the root. Returns
      # [:ok, nil], [:cycle, groups] or [:unreachable, groups].
      def check_tree(groups_list)
        by_id = groups_list.to_h { |g| [g['id'], g] }
        root = by_id[ROOT_ID]
        return [:unreachable, groups_list] if root.nil?

        marked = {}
        stack = [ROOT_ID]
        by_parent = groups_list.group_by { |g| g['parent'] }
        until stack.empty?
          id = stack.pop
          return [:cycle, cycle(by_id, id) || [by_id[id]]] if marked[id]

          marked[id] = true
          (by_parent[id] || []).each { |child| stack << child['id'] unless child['id'] == ROOT_ID && id == ROOT_ID }
        end
        unreachable = groups_list.reject { |g| marked[g['id']] }
        unreachable.empty? ? [:ok, nil] : [:unreachable, unreachable]
      end

      # The group as GET ?inherited=true shows it: classes, config_data and
      # variables merged from the root down (nearer groups win), the rule
      # being the conjunction of every rule on the way.
      def inherited(groups, id)
        line = chain(groups, id).reverse
        view = Schema.deep_copy(groups[id])
        %w[classes config_data].each do |key|
          merged = merge_class_maps(line.map { |g| g[key] })
          merged.empty? && !view.key?(key) ? nil : view[key] = merged
        end
        view['variables'] = line.each_with_object({}) { |g, acc| acc.merge!(Schema.deep_copy(g['variables'] || {})) }
        rule = Rules.conjoin(line.map { |g| g['rule'] })
        rule ? view['rule'] = rule : view.delete('rule')
        Schema.reorder(view)
      end

      def merge_class_maps(maps)
        maps.compact.each_with_object({}) do |map, acc|
          map.each { |klass, params| (acc[klass] ||= {}).merge!(Schema.deep_copy(params)) }
        end
      end
    end
  end
end
