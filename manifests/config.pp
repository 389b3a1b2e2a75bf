# @summary This host's pe_failover configuration file and role facts file.
#
# Private: declared by `pe_failover::active` and `pe_failover::passive`.
# The configuration is built here as a hash from the parameters of the class
# `pe_failover` and rendered as JSON; optional settings left undefined are
# omitted, so the command applies its documented defaults.
#
# @api private
#
# @param role
#   `active` or `passive`.
# @param replicas
#   The `replicas` entries (active role).
# @param hostnames
#   Host names rewritten in classifier groups (active name => passive name).
# @param role_facts
#   The external facts written to `<facts_dir>/pe_failover.yaml`.
class pe_failover::config (
  Enum['active', 'passive'] $role,
  Hash[String[1], String[1]] $role_facts,
  Array[Hash[String[1], Data]] $replicas = [],
  Hash[String[1], String[1]] $hostnames = {},
) {
  assert_private()

  $ssldir = $pe_failover::ssldir
  $certname = $pe_failover::certname

  $ca = {
    'ssldir'           => $ssldir,
    'cadir'            => $pe_failover::cadir,
    'exclude'          => $pe_failover::ca_exclude,
    'owner'            => $pe_failover::ca_owner,
    'group'            => $pe_failover::ca_group,
    'reload_command'   => $pe_failover::reload_command,
    'max_delete_share' => $pe_failover::ca_max_delete_share,
    'keep_snapshots'   => $pe_failover::keep_snapshots,
  }
  $nc = {
    'enabled'          => $pe_failover::nc_enabled,
    'server'           => $pe_failover::nc_server,
    'cert'             => $pe_failover::nc_cert.lest || { "${ssldir}/certs/${certname}.pem" },
    'key'              => $pe_failover::nc_key.lest || { "${ssldir}/private_keys/${certname}.pem" },
    'cacert'           => $pe_failover::nc_cacert,
    'interval'         => $pe_failover::nc_interval,
    'hostnames'        => $hostnames,
    'max_delete_share' => $pe_failover::nc_max_delete_share,
    'replace'          => $pe_failover::nc_replace,
  }
  $watch = {
    'debounce_ms'     => $pe_failover::watch_debounce_ms,
    'max_delay_ms'    => $pe_failover::watch_max_delay_ms,
    'verify_interval' => $pe_failover::watch_verify_interval,
    'retry_interval'  => $pe_failover::watch_retry_interval,
  }
  $log = {
    'syslog' => $pe_failover::log_syslog,
    'stderr' => $pe_failover::log_stderr,
  }
  $config = {
    'role'      => $role,
    'certname'  => $certname,
    'state_dir' => $pe_failover::state_path,
    'ca'        => $ca.filter |$key, $value| { $value =~ NotUndef },
    'replicas'  => $replicas,
    'nc'        => $nc.filter |$key, $value| { $value =~ NotUndef },
    'watch'     => $watch,
    'log'       => $log.filter |$key, $value| { $value =~ NotUndef },
  }

  file { $pe_failover::config_file:
    ensure  => file,
    owner   => 'root',
    group   => $pe_failover::transfer_group,
    mode    => '0640',
    content => pe_failover::to_json_pretty($config),
  }

  file { $pe_failover::facts_file:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0644',
    content => epp('pe_failover/facts.yaml.epp', { 'role_facts' => $role_facts }),
  }

  if $pe_failover::manage_service {
    File[$pe_failover::config_file] ~> Service[$pe_failover::service_name]
  }
}
