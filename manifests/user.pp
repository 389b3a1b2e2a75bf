# @summary The transfer user, with the login shell its role needs.
#
# Private: declared by `pe_failover::active` (a nologin shell) and
# `pe_failover::passive` (a real shell, for sshd's forced command).
#
# @api private
#
# @param shell
#   The user's login shell.
class pe_failover::user (
  Pe_failover::Path $shell,
) {
  assert_private()

  if $pe_failover::manage_user {
    user { $pe_failover::transfer_user:
      ensure     => present,
      system     => true,
      gid        => $pe_failover::transfer_group,
      home       => $pe_failover::home,
      managehome => false,
      shell      => $shell,
      comment    => 'pe_failover transfer user',
      require    => Group[$pe_failover::transfer_group],
    }
  }
}
