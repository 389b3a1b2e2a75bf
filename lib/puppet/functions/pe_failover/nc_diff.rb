# frozen_string_literal: true

# @summary
#   Compares two sets of Node Classifier groups.
#
# Groups are matched by id. Reports the groups only `to` has (`added`), the
# groups only `from` has (`removed`), and the groups both have whose content
# differs (`changed`, with the differing fields: `name`, `description`,
# `environment`, `environment_trumps`, `parent`, `rule`, `classes`,
# `config_data`, `variables`). Read-only keys (`serial_number`,
# `last_edited`, `deleted`) and forms the classifier stores alike (a `null`
# parameter and an absent one) are not differences. `in_sync` is true when
# nothing differs; the digests are the canonical digests of each set.
#
# Runs native code on the host that evaluates it: use it with `puppet apply`
# or through `Deferred`; under Puppet Server (JRuby) it fails with a message
# saying so.
#
# @example Does the passive hold the active's groups?
#   $d = pe_failover::nc_diff($passive_groups, pe_failover::nc_transform($active_groups, $hostnames))
#   unless $d['in_sync'] { notice("groups to update: ${d['changed'].map |$c| { $c['name'] }}") }
Puppet::Functions.create_function(:'pe_failover::nc_diff') do
  # @param from
  #   The groups as they are (e.g. the passive primary's).
  # @param to
  #   The groups as they should be.
  # @return [Hash]
  #   `{'added' => [{'id','name'}], 'removed' => [{'id','name'}],
  #   'changed' => [{'id','name','fields'}], 'unchanged' => Integer,
  #   'in_sync' => Boolean, 'from_digest' => String, 'to_digest' => String}`
  dispatch :nc_diff do
    param 'Array[Hash]', :from
    param 'Array[Hash]', :to
    return_type 'Hash'
  end

  def nc_diff(from, to)
    require File.expand_path('../../../puppet_x/pe_failover/classifier', __dir__)
    PuppetX::PeFailover::Classifier.diff(from, to)
  rescue PuppetX::PeFailover::Error => e
    raise Puppet::Error, "pe_failover::nc_diff: #{e.message}"
  end
end
