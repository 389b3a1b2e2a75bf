# @summary One pattern of an sshd `from="..."` option.
#
# A host name, an address or an address/prefix (CIDR), optionally with the
# `*` and `?` wildcards, optionally negated with a leading `!`. Commas,
# quotes and spaces are refused: they would end the pattern list.
#
# @example
#   Array[Pe_failover::Sshsource] $allowed_sources = ['192.0.2.10', '2001:db8::/64', '*.dc1.example.com']
type Pe_failover::Sshsource = Pattern[/\A!?[A-Za-z0-9.:*?\/_-]+\z/]
