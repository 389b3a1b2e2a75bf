# frozen_string_literal: true

require 'json'

# @summary
#   Renders data as pretty-printed JSON, ending with a newline.
#
# The module writes its configuration file with this function rather than
# stdlib's: `stdlib::to_json_pretty` only exists from stdlib 9, and stdlib 9
# turns the older `to_json_pretty` into a deprecation that fails catalogs
# under Puppet 8's default `strict = error`. This one works with stdlib 8
# and 9 alike, and under Puppet Server's JRuby.
#
# Hash keys keep the order they were written in; `undef` values are written
# as `null` (leave them out of the hash to omit a key).
#
# @example The configuration file
#   file { '/opt/pe_failover/etc/config.json':
#     content => pe_failover::to_json_pretty({ 'role' => 'active', 'replicas' => [] }),
#   }
Puppet::Functions.create_function(:'pe_failover::to_json_pretty') do
  # @param data
  #   The value to render: hashes with string keys, arrays, strings,
  #   numbers, booleans and `undef`.
  # @return [String] the JSON text, two-space indented, with a final newline
  dispatch :to_json_pretty do
    param 'Data', :data
    return_type 'String'
  end

  def to_json_pretty(data)
    "#{JSON.pretty_generate(data)}\n"
  end
end
