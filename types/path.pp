# @summary An absolute path safe to write unquoted into a shell, systemd, cron or sshd command line.
#
# Each component may hold letters, digits and `._+@=,-`: no spaces, quotes,
# `$`, `%`, `\` or other characters that a shell, systemd or sshd would
# interpret. Every path the module writes into a command line has this type,
# so a parameter can never inject a second command.
#
# @example
#   Pe_failover::Path $base_dir = '/opt/pe_failover'
type Pe_failover::Path = Pattern[/\A(\/[A-Za-z0-9._+@=,-]+)+\/?\z/]
