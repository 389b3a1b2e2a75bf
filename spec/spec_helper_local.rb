# frozen_string_literal: true

# Local additions to spec_helper.rb (required from it when present).
#
# The classes declare the types pe_failover_ca_replica and
# pe_failover_node_group. Until the real ones exist under lib/puppet/type/,
# test doubles of their interface (spec/fixtures/modules_extra/pe_failover_types)
# are linked one by one into the fixture module pe_failover_types, so the
# catalogs compile. A real type always wins: its double is not linked.
require 'fileutils'

module PeFailoverSpec
  # Links the type doubles whose real type is missing.
  module TypeDoubles
    TYPES = %w[pe_failover_ca_replica pe_failover_node_group].freeze
    ROOT = File.expand_path('..', __dir__)
    DOUBLES = File.join(__dir__, 'fixtures', 'modules_extra', 'pe_failover_types', 'lib', 'puppet', 'type')

    module_function

    # @return [Array<String>] the types that are doubled
    def link(modules_dir)
      fixture = File.join(modules_dir, 'pe_failover_types')
      FileUtils.rm_rf(fixture)
      missing = TYPES.reject { |t| File.exist?(File.join(ROOT, 'lib', 'puppet', 'type', "#{t}.rb")) }
      return missing if missing.empty?

      type_dir = File.join(fixture, 'lib', 'puppet', 'type')
      FileUtils.mkdir_p(type_dir)
      missing.each { |t| File.symlink(File.join(DOUBLES, "#{t}.rb"), File.join(type_dir, "#{t}.rb")) }
      missing
    end
  end
end

PeFailoverSpec::TypeDoubles.link(MODULES)
