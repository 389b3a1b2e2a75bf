# frozen_string_literal: true

# @summary
#   Returns the root digest of a Puppet ssl (or CA) directory.
#
# The digest is 64 lowercase hex digits, the BLAKE3 hash computed by the
# module's native core over every entry's path, type, permission bits,
# owner, size, mtime, SHA-256 of contents and symlink target (symlinks are
# recorded, never followed). It changes whenever anything replicated would change, so two
# runs that return the same digest saw the same tree.
#
# The function reads the local file system with native code, so it runs
# where the catalog is compiled: with `puppet apply`, or on the agent through
# `Deferred('pe_failover::ssl_digest', [$dir])`. Puppet Server (JRuby) cannot
# load the native extension and fails with a message saying so.
#
# @example Digest of the CA, ignoring pending requests
#   $digest = pe_failover::ssl_digest('/etc/puppetlabs/puppetserver/ca', ['requests'])
Puppet::Functions.create_function(:'pe_failover::ssl_digest') do
  # @param dir
  #   Absolute path of the directory to digest.
  # @param exclude
  #   Glob patterns relative to `dir` to leave out (`*` stays within one
  #   directory, `**` crosses them; a matching directory excludes its contents).
  # @return [String] 64 lowercase hex digits
  dispatch :ssl_digest do
    param 'Stdlib::Absolutepath', :dir
    optional_param 'Array[String[1]]', :exclude
    return_type 'String[64, 64]'
  end

  def ssl_digest(dir, exclude = [])
    require File.expand_path('../../../puppet_x/pe_failover/snapshot', __dir__)
    PuppetX::PeFailover::Snapshot.digest(dir, exclude: exclude)
  rescue PuppetX::PeFailover::Error => e
    raise Puppet::Error, "pe_failover::ssl_digest(#{dir}): #{e.message}"
  end
end
