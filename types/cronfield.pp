# @summary One time field of a crontab line (minute or hour).
#
# Digits, `*`, `/`, `,` and `-`, as in `*/15`, `7` or `0-23/2`.
#
# @example
#   Pe_failover::Cronfield $cron_minute = '*/15'
type Pe_failover::Cronfield = Pattern[/\A[0-9*\/,-]+\z/]
