# @summary A share between 0 and 1 inclusive (0.1 is 10 %).
#
# @example
#   Pe_failover::Share $ca_max_delete_share = 0.1
type Pe_failover::Share = Variant[Integer[0, 1], Float[0.0, 1.0]]
