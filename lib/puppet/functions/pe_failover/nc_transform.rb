# frozen_string_literal: true

# @summary
#   Rewrites hostnames in Node Classifier groups, for a passive primary.
#
# Every string where a mapped hostname is used as a host is rewritten: rule
# values (the pins of PE infrastructure groups), class parameters,
# `config_data` and variables, including `host:port`, URLs and hosts in
# lists. Longer names that merely contain a hostname (`db-master1...`,
# `master1....example`) are left alone, and so are ids, group names,
# descriptions and keys. Groups keep their order.
#
# Runs native code on the host that evaluates it: use it with `puppet apply`
# or through `Deferred`; under Puppet Server (JRuby) it fails with a message
# saying so.
#
# @example Groups of primary A as they must look on primary B
#   $for_b = pe_failover::nc_transform($groups_of_a, { 'a.example.com' => 'b.example.com' })
Puppet::Functions.create_function(:'pe_failover::nc_transform') do
  # @param groups
  #   Node groups as `GET /classifier-api/v1/groups` returns them. Keys are
  #   checked strictly (an unknown key or a wrong type is an error naming the
  #   group and the key).
  # @param hostnames
  #   Hostname to rewrite => its replacement; all mappings apply at once.
  # @return [Array[Hash]] The groups with every mapped host rewritten.
  dispatch :nc_transform do
    param 'Array[Hash]', :groups
    param 'Hash[String[1], String[1]]', :hostnames
    return_type 'Array[Hash]'
  end

  def nc_transform(groups, hostnames)
    require File.expand_path('../../../puppet_x/pe_failover/classifier', __dir__)
    PuppetX::PeFailover::Classifier.transform(groups, hostnames)['groups']
  rescue PuppetX::PeFailover::Error => e
    raise Puppet::Error, "pe_failover::nc_transform: #{e.message}"
  end
end
