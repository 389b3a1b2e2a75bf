# frozen_string_literal: true

# @summary
#   Compares two Puppet ssl (or CA) directories.
#
# Reports the paths, relative to each directory, that only `to` has
# (`added`), that only `from` has (`removed`), and that both have with
# different type, permission bits, contents or symlink target (`changed`).
# Owners and modification times are not compared, since two hosts' copies of
# the same CA legitimately differ there. Each list is sorted.
#
# Runs native code on the host that evaluates it: use it with `puppet apply`
# or through `Deferred`; under Puppet Server (JRuby) it fails with a message
# saying so.
#
# @example What the replica still lacks
#   $d = pe_failover::ssl_diff('/srv/replica/ca', '/etc/puppetlabs/puppetserver/ca')
#   notice("missing on the replica: ${d['added']}")
Puppet::Functions.create_function(:'pe_failover::ssl_diff') do
  # @param from
  #   Absolute path of the directory taken as the starting point.
  # @param to
  #   Absolute path of the directory compared with it.
  # @param exclude
  #   Glob patterns relative to both directories to leave out.
  # @return [Hash] `{'added' => [...], 'changed' => [...], 'removed' => [...]}`
  dispatch :ssl_diff do
    param 'Stdlib::Absolutepath', :from
    param 'Stdlib::Absolutepath', :to
    optional_param 'Array[String[1]]', :exclude
    return_type 'Struct[{added => Array[String], changed => Array[String], removed => Array[String]}]'
  end

  def ssl_diff(from, to, exclude = [])
    require File.expand_path('../../../puppet_x/pe_failover/snapshot', __dir__)
    result = PuppetX::PeFailover::Snapshot.diff(from, to, exclude: exclude)
    {
      'added' => result['added'],
      'changed' => result['changed'].map { |c| c['path'] },
      'removed' => result['removed'],
    }
  rescue PuppetX::PeFailover::Error => e
    raise Puppet::Error, "pe_failover::ssl_diff(#{from}, #{to}): #{e.message}"
  end
end
