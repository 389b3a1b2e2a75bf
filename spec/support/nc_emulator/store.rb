# frozen_string_literal: true

require 'json'
require 'monitor'
require 'securerandom'
require 'time'
require_relative 'errors'
require_relative 'schema'
require_relative 'rules'
require_relative 'catalog'
require_relative 'hierarchy'
require_relative 'referents'

module PeFailoverSpec
  module NcEmulator
    # The node classifier's state and every operation of the groups API, with
    # the validation of docs/nc-api.md §2, §3 and §6. Plain Ruby: no HTTP.
    #
    # Groups are kept in Schema's normal form in `{id => group}`; the
    # read-only `serial_number` and `last_edited` live beside them. Every
    # public method holds one lock, so a write is all-or-nothing and readers
    # never see half of one. When a state file is given, each committed write
    # is saved to it atomically.
    class Store
      ROOT_ID = Schema::ROOT_ID
      DEFAULT_ROOT = {
        'parent' => ROOT_ID, 'environment_trumps' => false, 'name' => 'All Nodes',
        'rule' => ['and', ['~', 'name', '.*']], 'variables' => {}, 'id' => ROOT_ID,
        'environment' => 'production', 'classes' => {}
      }.freeze
      STATE_FORMAT = 1

      attr_reader :catalog, :options

      # seed: array of groups (GET /v1/groups output) or nil for a bare root.
      # classes: catalog JSON, or nil to derive one from the seed so that
      # every class and parameter the seed uses exists.
      def self.build(seed: nil, classes: nil, options: Schema::Options.default, strict_import: false,
                     state_file: nil, clock: nil)
        seed ||= [DEFAULT_ROOT]
        catalog = Catalog.new(classes || derive_catalog(seed))
        store = new(catalog: catalog, options: options, strict_import: strict_import,
                    state_file: state_file, clock: clock)
        store.seed!(seed)
        store
      end

      # A catalog holding exactly what the seed's groups use, in each group's
      # own environment (inherited classes included).
      def self.derive_catalog(seed)
        raise ArgumentError, 'the seed must be a JSON array of groups' unless seed.is_a?(Array)

        groups = seed.select { |g| g.is_a?(Hash) && g['id'] }.to_h { |g| [g['id'], g] }
        groups.each_key.with_object({}) do |id, doc|
          env = (doc[groups[id]['environment'] || 'production'] ||= {})
          Hierarchy.chain(groups, id).each do |g|
            (g['classes'] || {}).each do |klass, params|
              (env[klass] ||= {}).merge!((params || {}).transform_values { nil })
            end
          end
        end
      end

      def initialize(catalog:, options: Schema::Options.default, strict_import: false, state_file: nil, clock: nil)
        @catalog = catalog
        @options = options
        @strict_import = strict_import
        @state_file = state_file
        @clock = clock || -> { Time.now.utc }
        @groups = {}
        @meta = {}
        @lock = Monitor.new
        @referents = Referents.new(@catalog)
        @initial = nil
      end

      # Loads the start-up groups (an import that tolerates missing classes and
      # keeps serial numbers found in the seed). Remembers the result for reset!.
      def seed!(seed)
        @lock.synchronize do
          seed_options = Schema::Options.new(pe2016: false, config_data: true, import_accepts_deleted: true)
          groups = import_checked(seed, seed_options)
          @referents.add_placeholders(groups, groups.keys)
          @groups = groups
          @meta = {}
          seed.each { |raw| @meta[raw['id']] = seed_meta(raw) }
          groups.each_value { |g| @catalog.ensure_environment(g['environment']) }
          @initial = to_h
        end
      end

      # Back to the state seed! produced (groups and catalogs).
      def reset!
        @lock.synchronize do
          restore(@initial)
          save!
        end
      end

      # Loads a state file written by save! (used at start-up when it exists).
      def load_state(path)
        @lock.synchronize { restore(JSON.parse(File.read(path))) }
      end

      # ---- reads -------------------------------------------------------

      def groups(inherited: false)
        @lock.synchronize { @groups.keys.sort.map { |id| present(id, inherited) } }
      end

      def group(id, inherited: false)
        @lock.synchronize do
          raise Errors.not_found(nil) unless @groups.key?(id)

          present(id, inherited)
        end
      end

      def group?(id)
        @lock.synchronize { @groups.key?(id) }
      end

      # GET /v1/group-children/<id>: the group with its descendants nested
      # under `children`, `depth` levels deep (nil = all).
      def group_children(id, depth)
        @lock.synchronize do
          raise Errors.not_found(nil) unless @groups.key?(id)

          [nest(id, depth)]
        end
      end

      # ---- group writes ------------------------------------------------

      # POST /v1/groups: returns the new group (the caller answers 303).
      def create(body)
        @lock.synchronize do
          body = body.merge('id' => SecureRandom.uuid) if body.is_a?(Hash)
          group = Schema.group!(body, :create, @options)
          commit_group(group, nil)
          present(group['id'], false)
        end
      end

      # PUT /v1/groups/<id>: [201, group] when created or overwritten,
      # [200, group] when the stored group is already identical.
      def put(id, body)
        @lock.synchronize do
          body = body.merge('id' => id) if body.is_a?(Hash)
          group = Schema.group!(body, :create, @options)
          existing = @groups[id]
          return [200, present(id, false)] if existing == group

          check_root_rule!(id, delta_between(existing, group)) if existing
          commit_group(group, existing)
          [201, present(id, false)]
        end
      end

      # POST /v1/groups/<id>: apply a delta; returns the updated group.
      def update(id, body)
        @lock.synchronize do
          existing = @groups[id] or raise Errors.not_found(nil)
          delta = Schema.group!(body, :delta, @options)
          check_root_rule!(id, delta)
          check_serial!(id, delta)
          group = Schema.apply_delta(existing, delta.reject { |k, _| %w[id serial_number].include?(k) })
          commit_group(group, existing) unless group == existing
          present(id, false)
        end
      end

      # DELETE /v1/groups/<id>
      def delete(id)
        @lock.synchronize do
          raise Errors.not_found(nil) unless @groups.key?(id)

          children = Hierarchy.children(@groups, id)
          raise Errors.children_present(present(id, false), children.map { |c| present(c['id'], false) }) if children.any?
          raise Errors.root_delete if id == ROOT_ID

          @groups.delete(id)
          @meta.delete(id)
          save!
          nil
        end
      end

      # POST /v1/validate/group: the group as it would be stored; writes nothing.
      def validate(body)
        @lock.synchronize do
          body = { 'id' => SecureRandom.uuid }.merge(body) if body.is_a?(Hash)
          group = Schema.group!(body, :create, @options)
          existing = @groups[group['id']]
          check_root_rule!(group['id'], delta_between(existing, group)) if existing && existing != group
          check_group(staged_with(group), group, existing)
          group
        end
      end

      # POST /v1/import-hierarchy: replace every group, all or nothing.
      def import(payload)
        @lock.synchronize do
          groups = import_checked(payload, @options)
          if @strict_import
            errors = @referents.errors(groups, Hierarchy.subtree_ids(groups, ROOT_ID)).values
            raise Errors.missing_referents(errors, groups[ROOT_ID]['name']) if errors.any?
          else
            @referents.add_placeholders(groups, groups.keys)
          end
          replace_all(groups)
          nil
        end
      end

      # POST /v1/groups/<id>/pin and /unpin
      def pin(id, nodes, unpin: false)
        @lock.synchronize do
          existing = @groups[id] or raise Errors.not_found(nil)
          rule = unpin ? Rules.unpin(existing['rule'], nodes) : Rules.pin(existing['rule'], nodes)
          next nil if rule == existing['rule']

          check_root_rule!(id, { 'id' => id, 'rule' => rule })
          group = Schema.deep_copy(existing)
          rule ? group['rule'] = rule : group.delete('rule')
          commit_group(Schema.reorder(group), existing)
          nil
        end
      end

      # POST /v1/commands/unpin-from-all: {"nodes": [{"name", "groups": [...]}]}
      def unpin_from_all(nodes)
        @lock.synchronize do
          touched = Hash.new { |h, k| h[k] = [] }
          @groups.keys.sort.each do |id|
            next if id == ROOT_ID

            group = @groups[id]
            pinned = Rules.pinned_nodes(group['rule']) & nodes
            next if pinned.empty?

            pin(id, pinned, unpin: true)
            pinned.each { |n| touched[n] << group.slice('id', 'name', 'environment') }
          end
          { 'nodes' => touched.map { |name, groups| { 'name' => name, 'groups' => groups } } }
        end
      end

      # ---- classes and environments --------------------------------------

      # POST /v1/update-classes
      def update_classes(environment = nil)
        @lock.synchronize do
          @catalog.sync!(environment, @clock.call)
          save!
        end
      end

      # PUT /_emulator/classes: the catalog the next update-classes applies.
      def stage_classes(doc)
        @lock.synchronize do
          @catalog.stage(doc)
          save!
        end
      end

      # PUT /v1/environments/<name>: [201|200, environment]
      def put_environment(name)
        @lock.synchronize do
          created = @catalog.ensure_environment(name)
          save! if created
          [created ? 201 : 200, @catalog.environment(name)]
        end
      end

      def read_catalog
        @lock.synchronize { yield @catalog }
      end

      # ---- persistence ---------------------------------------------------

      def to_h
        @lock.synchronize do
          { 'format' => STATE_FORMAT,
            'groups' => @groups.keys.sort.map { |id| @groups[id].merge(@meta.fetch(id)) },
            'catalog' => @catalog.to_h }
        end
      end

      private

      def now_iso
        @clock.call.utc.strftime('%Y-%m-%dT%H:%M:%S.%LZ')
      end

      def seed_meta(raw)
        { 'last_edited' => raw['last_edited'].is_a?(String) ? raw['last_edited'] : now_iso,
          'serial_number' => raw['serial_number'].is_a?(Integer) ? raw['serial_number'] : 1 }
      end

      # Output form: normal form plus annotation and read-only keys.
      def present(id, inherited)
        group = inherited ? Hierarchy.inherited(@groups, id) : Schema.deep_copy(@groups[id])
        group.delete('config_data') unless @options.config_data
        deleted = @referents.annotation(group['environment'], group['classes'])
        group['deleted'] = deleted if deleted
        group.merge!(@meta.fetch(id)) unless @options.pe2016
        group
      end

      def nest(id, depth)
        node = present(id, false)
        kids = Hierarchy.children(@groups, id)
        node['immediate_child_count'] = kids.size
        node['children'] = depth&.zero? ? [] : kids.map { |k| nest(k['id'], depth && depth - 1) }
        node
      end

      def delta_between(old, new)
        delta = { 'id' => new['id'] }
        (old.keys | new.keys).each { |k| delta[k] = new[k] unless old[k] == new[k] }
        delta
      end

      def check_root_rule!(id, delta)
        raise Errors.root_rule_edit(delta) if id == ROOT_ID && delta.key?('rule')
      end

      def check_serial!(id, delta)
        return unless delta.key?('serial_number')
        return if delta['serial_number'] == @meta[id]['serial_number']

        raise Errors.serial_conflict(@meta[id], delta['serial_number'])
      end

      def staged_with(group)
        @groups.merge(group['id'] => group)
      end

      # Validates `group` replacing `existing` (nil for a new group) and stores it.
      def commit_group(group, existing)
        staged = staged_with(group)
        check_group(staged, group, existing)
        @groups = staged
        @catalog.ensure_environment(group['environment'])
        bump(group['id'], existing)
        save!
      end

      # Order of checks as in the classifier: parent, cycle, class references, uniqueness.
      def check_group(staged, group, existing)
        raise Errors.missing_parent(group) unless staged.key?(group['parent'])

        cycle = Hierarchy.cycle(staged, group['id'])
        raise Errors.inheritance_cycle(cycle) if cycle

        check_referents!(staged, group, existing)
        check_unique!(staged, group)
      end

      # New groups must be clean; updates may keep old dangling references but
      # must not add any, in the group or its subtree (docs/nc-api.md §3.5).
      def check_referents!(staged, group, existing)
        ids = Hierarchy.subtree_ids(staged, group['id'])
        after = @referents.errors(staged, ids)
        return if after.empty?

        before = existing ? @referents.errors(@groups, ids.select { |i| @groups.key?(i) }) : {}
        added = @referents.added(before, after)
        raise Errors.missing_referents(added, group['name']) if added.any?
      end

      def check_unique!(staged, group)
        clash = staged.each_value.find do |g|
          g['id'] != group['id'] && g['name'] == group['name'] && g['environment'] == group['environment']
        end
        raise uniqueness_error(group) if clash
      end

      def uniqueness_error(group)
        Errors.uniqueness([['name', group['name']], ['environment_name', group['environment']]],
                          'groups_name_environment_name_idx')
      end

      def bump(id, existing)
        serial = existing ? @meta[id]['serial_number'] + 1 : 1
        @meta[id] = { 'last_edited' => now_iso, 'serial_number' => serial }
      end

      # Schema, duplicate ids, tree shape and (name, environment) uniqueness
      # of an import payload. Returns {id => group} in normal form.
      def import_checked(payload, options)
        check_import_schema!(payload, options)
        list = payload.map { |g| Schema.group!(g, :import, options) }
        check_duplicate_ids!(list)
        check_import_tree!(list)
        clash = list.group_by { |g| [g['name'], g['environment']] }.find { |_, gs| gs.size > 1 }
        raise uniqueness_error(clash.last.last) if clash

        list.to_h { |g| [g['id'], g] }
      end

      def check_import_schema!(payload, options)
        unless payload.is_a?(Array)
          raise Errors.schema_violation(payload, "(not (sequential? #{Schema.pr(payload)}))",
                                        [Schema.describe(:import, options)])
        end
        bad = payload.each_with_index.filter_map do |g, i|
          problems = Schema.problems(g, :import, options)
          [i, problems] unless problems.empty?
        end
        return if bad.empty?

        raise Errors.import_schema_violation(bad.map { |i, _| payload[i] }, bad.map(&:last),
                                             Schema.describe(:import, options))
      end

      def check_duplicate_ids!(list)
        dupes = list.group_by { |g| g['id'] }.select { |_, gs| gs.size > 1 }.keys
        raise Errors.uniqueness(dupes.map { |id| ['id', id] }, 'groups_pkey') if dupes.any?
      end

      def check_import_tree!(list)
        verdict, groups = Hierarchy.check_tree(list)
        raise Errors.inheritance_cycle(groups) if verdict == :cycle
        raise Errors.unreachable_groups(groups) if verdict == :unreachable

        root = list.find { |g| g['id'] == ROOT_ID }
        raise Errors.missing_parent(root) unless root['parent'] == ROOT_ID
      end

      # Import commit: unchanged groups keep their serial number.
      def replace_all(groups)
        meta = {}
        groups.each do |id, group|
          old = @groups[id]
          meta[id] = if old == group
                       @meta[id]
                     else
                       { 'last_edited' => now_iso, 'serial_number' => old ? @meta[id]['serial_number'] + 1 : 1 }
                     end
          @catalog.ensure_environment(group['environment'])
        end
        @groups = groups
        @meta = meta
        save!
      end

      def restore(hash)
        raise ArgumentError, "unsupported state format #{hash['format'].inspect}" unless hash['format'] == STATE_FORMAT

        @catalog = Catalog.from_h(Schema.deep_copy(hash['catalog']))
        @referents = Referents.new(@catalog)
        @groups = {}
        @meta = {}
        hash['groups'].each do |g|
          @meta[g['id']] = g.slice('last_edited', 'serial_number')
          @groups[g['id']] = Schema.reorder(g.reject { |k, _| %w[last_edited serial_number].include?(k) })
        end
      end

      # Atomic save: write a temporary file beside the target, then rename.
      def save!
        return unless @state_file

        tmp = "#{@state_file}.#{Process.pid}.tmp"
        File.open(tmp, 'w') do |f|
          f.write(JSON.pretty_generate(to_h))
          f.flush
          f.fsync
        end
        File.rename(tmp, @state_file)
      end
    end
  end
end
