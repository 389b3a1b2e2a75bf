# frozen_string_literal: true

require 'time'

module PeFailoverSpec
  module NcEmulator
    # The classifier's class catalog: per environment, the classes it knows,
    # each with its parameters and their defaults, plus "deleted" marks.
    #
    # Two catalogs are kept. `code` stands for what Puppet Server would report
    # from the code on disk; `synced` is what the classifier has stored. Tests
    # change `code` (PUT /_emulator/classes) and POST /v1/update-classes copies
    # it into `synced`. Classes and parameters that vanish from the code are
    # marked deleted, never removed, so groups that still use them can show the
    # `deleted` annotation (docs/nc-api.md §2.6, §3.8).
    #
    # Catalog JSON (input and `code`): {"env": {"class": {"param": default-or-null}}}.
    class Catalog
      attr_reader :last_update

      # Checks a catalog document; returns a list of problems (empty when valid).
      def self.problems(doc)
        return ['the catalog must be a JSON object of environments'] unless doc.is_a?(Hash)

        doc.flat_map do |env, classes|
          next ["environment #{env.inspect}: expected an object of classes"] unless classes.is_a?(Hash)

          classes.reject { |_name, params| params.is_a?(Hash) }
                 .map { |name, _| "class #{name.inspect} in #{env.inspect}: expected an object of parameters" }
        end
      end

      def initialize(code = {})
        @code = {}
        @envs = {}
        @last_update = nil
        load_code(code)
        @code.each_key { |env| ensure_environment(env) }
        copy_code_into_synced(nil)
      end

      # Environments in name order, as the API shows them.
      def environments
        @envs.keys.sort.map { |name| environment(name) }
      end

      def environment(name)
        return nil unless @envs.key?(name)

        { 'name' => name, 'sync_succeeded' => true }
      end

      def environment?(name)
        @envs.key?(name)
      end

      # Creates the environment if missing; true when it was created.
      def ensure_environment(name)
        return false if @envs.key?(name)

        @envs[name] = {}
        true
      end

      # Live (not deleted) class objects of one environment, sorted by name.
      def classes(env)
        (@envs[env] || {}).keys.sort.filter_map { |name| class_object(env, name) }
      end

      # Live class objects of every environment.
      def all_classes
        @envs.keys.sort.flat_map { |env| classes(env) }
      end

      # {"name","environment","parameters"} or nil when missing or deleted.
      def class_object(env, name)
        record = @envs.dig(env, name)
        return nil if record.nil? || record['deleted']

        params = record['parameters'].reject { |_p, r| r['deleted'] }.transform_values { |r| r['default'] }
        { 'name' => name, 'environment' => env, 'parameters' => params }
      end

      def class_live?(env, name)
        record = @envs.dig(env, name)
        !record.nil? && !record['deleted']
      end

      def param_live?(env, klass, param)
        record = @envs.dig(env, klass, 'parameters', param)
        class_live?(env, klass) && !record.nil? && !record['deleted']
      end

      # Records a class (and optionally a parameter) the catalog lacks, marked
      # deleted: what import-hierarchy does for references it cannot resolve.
      def add_placeholder(env, klass, param = nil)
        ensure_environment(env)
        record = (@envs[env][klass] ||= { 'deleted' => true, 'parameters' => {} })
        record['parameters'][param] ||= { 'default' => nil, 'deleted' => true } if param
      end

      # The catalog the next update-classes will apply, in catalog JSON.
      def code
        deep_copy(@code)
      end

      def stage(doc)
        load_code(doc)
      end

      # update-classes: copy the code catalog in (one environment or all).
      def sync!(only_env = nil, now = Time.now.utc)
        copy_code_into_synced(only_env)
        @last_update = now.strftime('%Y-%m-%dT%H:%M:%S.%LZ')
      end

      def to_h
        { 'code' => deep_copy(@code), 'synced' => deep_copy(@envs), 'last_update' => @last_update }
      end

      def self.from_h(hash)
        catalog = allocate
        catalog.send(:restore, hash)
        catalog
      end

      private

      def restore(hash)
        @code = hash.fetch('code')
        @envs = hash.fetch('synced')
        @last_update = hash['last_update']
      end

      def load_code(doc)
        problems = self.class.problems(doc)
        raise ArgumentError, "invalid class catalog: #{problems.join('; ')}" unless problems.empty?

        @code = deep_copy(doc)
      end

      def copy_code_into_synced(only_env)
        envs = (@code.keys | @envs.keys)
        envs = envs.select { |e| e == only_env } if only_env
        envs << only_env if only_env && envs.empty?
        envs.each { |env| sync_environment(env, @code[env] || {}) }
      end

      def sync_environment(env, code_classes)
        ensure_environment(env)
        synced = @envs[env]
        synced.each do |name, record|
          record['deleted'] = true unless code_classes.key?(name)
        end
        code_classes.each do |name, params|
          record = (synced[name] ||= { 'deleted' => false, 'parameters' => {} })
          record['deleted'] = false
          record['parameters'].each { |p, r| r['deleted'] = true unless params.key?(p) }
          params.each { |p, default| record['parameters'][p] = { 'default' => deep_copy(default), 'deleted' => false } }
        end
      end

      def deep_copy(value)
        Marshal.load(Marshal.dump(value))
      end
    end
  end
end
