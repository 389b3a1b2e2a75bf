# @summary Makes this host the active primary: it ships its CA and classifier groups to the passives.
#
# What the class sets up, besides what the class `pe_failover` does:
#
# * an ed25519 transfer key, generated once (`<base_dir>/ssh/id_ed25519`,
#   root 0600): give the public half (`id_ed25519.pub`) to
#   `pe_failover::passive` as `auth_key`;
# * each passive's SSH host key, pinned: from `passive_host_key` into
#   `<base_dir>/ssh/known_hosts`, or, only with `trust_on_first_use`,
#   recorded at the first connection into `<base_dir>/ssh/known_hosts.d/<host>`;
# * the configuration (`role: active`, one replica per passive) and the
#   facts file (`pe_failover_mode: active`,
#   `pe_failover_passive_master: <first passive>`);
# * a fallback cron entry running `pe_failover sync`;
# * with `sync_on_run`, a `pe_failover_ca_replica` resource per passive, so
#   every Puppet run also syncs the CA (and reports a failure if it fails);
# * with `manage_node_groups`, the classifier groups `pe_failover`,
#   `pe_failover-active` and `pe_failover-passive`, which classify nodes by
#   the fact `pe_failover_mode`.
#
# A host that was passive is cleaned up in the same run: its authorized
# key and `incoming` and `nc/incoming` directories are removed, so the old primary can no
# longer send it anything.
#
# To pin a passive's host key, read it on a trusted path, for example
# `ssh-keyscan -t ed25519 b.example.com`, and compare its fingerprint
# (`ssh-keygen -lf <file with the line>`) with the one the passive shows
# for itself (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`). Pass the
# key type and key (the last two fields of the scanned line).
#
# @example One passive, host key pinned
#   class { 'pe_failover::active':
#     passive_master   => 'b.example.com',
#     passive_host_key => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7d0hDQ3Xt6cL0pWq8x5m0iJ9h0mS5HnOQ4F4m3K7Yz',
#   }
#
# @example Two passives on port 2222; agents' groups use a shared DNS alt name
#   class { 'pe_failover::active':
#     passive_master   => ['b.example.com', 'c.example.com'],
#     ssh_port         => 2222,
#     passive_host_key => {
#       'b.example.com' => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7d0hDQ3Xt6cL0pWq8x5m0iJ9h0mS5HnOQ4F4m3K7Yz',
#       'c.example.com' => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH2u8bVx4QmZc1y6kTq0f9rW3sJd7LpA5eNoG2hC8XvB',
#     },
#     nc_hostnames     => {},
#   }
#
# @param passive_master
#   The passive primary, or several. Each must differ from this host's
#   certname.
# @param passive_host_key
#   The passive's SSH host key, `<type> <base64>` (for example
#   `ssh-ed25519 AAAA...`; ecdsa and rsa keys are accepted too, a trailing
#   comment is dropped). With several passives, a hash from each passive to
#   its key. A passive without a key needs `trust_on_first_use`; without
#   either the catalog fails.
# @param trust_on_first_use
#   Record the key a passive presents at the first connection
#   (`pe_failover pin-host-key`, which logs its fingerprint) when
#   `passive_host_key` does not give one. Check the fingerprint logged in
#   the Puppet run against the passive's own.
# @param ssh_port
#   The passives' SSH port. Other than 22, known_hosts entries are written
#   `[host]:port`.
# @param connect_timeout
#   Seconds to wait for a passive's TCP connection and SSH handshake.
# @param io_timeout
#   Seconds one read or write to a passive may block.
# @param nc_hostnames
#   Host names rewritten in classifier groups on their way to the passives
#   (active name => passive name). Default, with one passive:
#   `{ <certname> => <passive> }`. With several passives there is no
#   default: one map cannot rewrite this host into two names, so give one
#   explicitly (`{}` when groups refer to a name both primaries share, such
#   as a DNS alt name), or set `pe_failover::nc_enabled: false`.
# @param sync_on_run
#   Declare a `pe_failover_ca_replica` per passive, so each Puppet run syncs
#   the CA (honouring noop) besides the watcher and the cron entry.
# @param manage_node_groups
#   Manage the three pe_failover classifier groups on this host's
#   classifier (they reach the passives with the other groups). The
#   classifier and client certificate are those of the command:
#   `pe_failover::nc_server`, `nc_cert`, `nc_key`, `nc_cacert`.
# @param node_group_environment
#   Environment of the three groups.
# @param active_group_classes
#   Classes (with parameters) of the `pe_failover-active` group.
# @param passive_group_classes
#   Classes (with parameters) of the `pe_failover-passive` group.
class pe_failover::active (
  Variant[Stdlib::Host, Array[Stdlib::Host, 1]] $passive_master,
  Optional[Variant[String[1], Hash[Stdlib::Host, String[1], 1]]] $passive_host_key = undef,
  Boolean $trust_on_first_use = false,
  Integer[1, 65535] $ssh_port = 22,
  Integer[1] $connect_timeout = 10,
  Integer[1] $io_timeout = 30,
  Optional[Hash[Stdlib::Host, Stdlib::Host]] $nc_hostnames = undef,
  Boolean $sync_on_run = true,
  Boolean $manage_node_groups = true,
  String[1] $node_group_environment = 'production',
  Hash[String[1], Hash] $active_group_classes = {},
  Hash[String[1], Hash] $passive_group_classes = {},
) {
  if defined(Class['pe_failover::passive']) {
    fail('pe_failover::active: this host also has pe_failover::passive; a host is either active or passive')
  }

  include pe_failover

  $certname = $pe_failover::certname
  $passives = Array($passive_master, true)
  if $passives.unique != $passives {
    fail("pe_failover::active: passive_master lists a host twice: ${passives}")
  }
  if $certname in $passives {
    fail("pe_failover::active: passive_master must name other hosts, not this one (${certname})")
  }

  # Host keys given, by passive.
  if $passive_host_key =~ String {
    if $passives.length > 1 {
      fail(@("MSG"/L))
        pe_failover::active: passive_host_key is one key but passive_master names \
        ${passives.length} hosts; give a hash from each passive to its key
        |-MSG
    }
    $given_keys = { $passives[0] => $passive_host_key }
  } else {
    $given_keys = $passive_host_key.lest || { {} }
  }
  $given_keys.keys.each |$host| {
    unless $host in $passives {
      fail("pe_failover::active: passive_host_key has a key for ${host}, which is not in passive_master ${passives}")
    }
  }
  $host_keys = $given_keys.map |$host, $key| {
    # Type and key (its base64 starts with the encoded type name), then an
    # optional comment on the same line.
    $parts = $key.strip.match(Regexp([
          '\A(ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}',
          '|ecdsa-sha2-nistp(?:256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY',
          '|384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ|521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjE)',
          '[A-Za-z0-9+/]{100,}={0,2}',
          '|ssh-rsa AAAAB3NzaC1yc2E[A-Za-z0-9+/]{200,}={0,2})',
          '(?: [ -~]*)?\z',
    ].join('')))
    if $parts =~ Undef {
      fail(@("MSG"/L))
        pe_failover::active: the passive_host_key of ${host} is not an SSH public key; \
        expected '<type> <base64>' such as 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5...' \
        (the last two fields of `ssh-keyscan -t ed25519 ${host}`)
        |-MSG
    }
    [$host, $parts[1]]
  }.convert_to(Hash)

  $unpinned = $passives.filter |$host| { !($host in $host_keys) }
  if !$unpinned.empty and !$trust_on_first_use {
    fail(@("MSG"/L))
      pe_failover::active: no SSH host key for ${unpinned.join(', ')}. Either pin it: \
      run `ssh-keyscan -t ed25519 -p ${ssh_port} ${unpinned[0]}` over a network you trust, \
      check the fingerprint (`ssh-keygen -lf <file with that line>`) against \
      `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on ${unpinned[0]}, and pass \
      the key ('ssh-ed25519 AAAA...') as passive_host_key; or set trust_on_first_use => true \
      to record the key ${unpinned[0]} presents at the first connection (its fingerprint \
      is logged in the Puppet run; check it the same way).
      |-MSG
  }

  # known_hosts names a host on port 22 bare, on any other port `[host]:port`.
  $host_field = Hash($passives.map |$host| {
      [$host, $ssh_port ? { 22 => $host, default => "[${host}]:${ssh_port}" }]
  })

  # Each passive's known_hosts file: the shared pinned file, or its own file
  # written on first use.
  $known_hosts_of = Hash($passives.map |$host| {
      [$host, ($host in $host_keys) ? { true => $pe_failover::known_hosts, default => "${pe_failover::known_hosts_dir}/${host}" }]
  })

  $hostnames = $nc_hostnames.lest || {
    if !$pe_failover::nc_enabled {
      {}
    } elsif $passives.length == 1 {
      { $certname => $passives[0] }
    } else {
      fail(@("MSG"/L))
        pe_failover::active: with several passives (${passives.join(', ')}) give nc_hostnames \
        explicitly: one map cannot rewrite ${certname} into each passive's name. Use {} when \
        groups name a host both primaries share (a DNS alt name), or disable classifier \
        replication (pe_failover::nc_enabled: false).
        |-MSG
    }
  }
  $hostnames.each |$from, $to| {
    if $from == $to {
      fail("pe_failover::active: nc_hostnames rewrites ${from} into itself")
    }
  }

  $ssh_dir = $pe_failover::ssh_dir
  $identity_file = $pe_failover::identity_file
  $known_hosts = $pe_failover::known_hosts
  $known_hosts_dir = $pe_failover::known_hosts_dir

  class { 'pe_failover::user':
    shell => $pe_failover::nologin_shell,
  }

  $replicas = $passives.map |$host| {
    {
      'host'            => $host,
      'port'            => $ssh_port,
      'user'            => $pe_failover::transfer_user,
      'identity_file'   => $identity_file,
      'known_hosts'     => $known_hosts_of[$host],
      'connect_timeout' => $connect_timeout,
      'io_timeout'      => $io_timeout,
    }
  }

  class { 'pe_failover::config':
    role       => 'active',
    replicas   => $replicas,
    hostnames  => $hostnames,
    role_facts => {
      'pe_failover_mode'           => 'active',
      'pe_failover_passive_master' => $passives[0],
    },
  }

  # The transfer key and the passives' host keys: root only.
  file { $ssh_dir:
    ensure => directory,
    owner  => 'root',
    group  => 'root',
    mode   => '0700',
  }

  exec { 'pe_failover transfer key':
    command => "ssh-keygen -q -t ed25519 -N '' -C pe_failover@${certname} -f ${identity_file}",
    creates => $identity_file,
    path    => $pe_failover::exec_path,
    umask   => '0077',
    require => File[$ssh_dir],
  }

  file {
    default:
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      require => Exec['pe_failover transfer key'],
      ;
    $identity_file:
      mode => '0600',
      ;
    "${identity_file}.pub":
      mode => '0644',
      ;
  }

  # Pinned keys: exactly one line per passive given a key.
  if $host_keys.empty {
    file { $known_hosts:
      ensure => absent,
    }
  } else {
    file { $known_hosts:
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => $host_keys.map |$host, $key| { "${host_field[$host]} ${key}\n" }.join(''),
    }
  }

  # Keys trusted on first use: one file per passive, written once by the
  # command; files of hosts no longer listed are purged.
  if $unpinned.empty {
    file { $known_hosts_dir:
      ensure => absent,
      force  => true,
    }
  } else {
    file { $known_hosts_dir:
      ensure  => directory,
      owner   => 'root',
      group   => 'root',
      mode    => '0700',
      recurse => true,
      purge   => true,
      force   => true,
    }
    $unpinned.each |$host| {
      exec { "pe_failover pin-host-key ${host}":
        command   => "${pe_failover::wrapper} pin-host-key --host ${host} --port ${ssh_port} --known-hosts ${known_hosts_dir}/${host}",
        creates   => "${known_hosts_dir}/${host}",
        path      => $pe_failover::exec_path,
        logoutput => true,
        require   => [File[$known_hosts_dir], File[$pe_failover::wrapper]],
      }
      -> file { "${known_hosts_dir}/${host}":
        ensure => file,
        owner  => 'root',
        group  => 'root',
        mode   => '0644',
      }
    }
  }

  if $pe_failover::manage_cron {
    file { $pe_failover::cron_file:
      ensure  => file,
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
      content => epp('pe_failover/cron.epp', {
          'minute'      => $pe_failover::cron_minute,
          'hour'        => $pe_failover::cron_hour,
          'wrapper'     => $pe_failover::wrapper,
          'config_file' => $pe_failover::config_file,
      }),
      require => [File[$pe_failover::wrapper], File[$pe_failover::config_file]],
    }
  }

  if $sync_on_run {
    $passives.each |$host| {
      pe_failover_ca_replica { $host:
        config  => $pe_failover::config_file,
        require => [
          File[$pe_failover::config_file, $pe_failover::wrapper, $identity_file],
          File[$known_hosts_of[$host]],
        ],
      }
    }
  }

  if $manage_node_groups {
    # The same classifier and client identity as the command's.
    $ssldir = $pe_failover::ssldir
    $classifier = {
      'server' => $pe_failover::nc_server.lest || { "https://${certname}:4433" },
      'cert'   => $pe_failover::nc_cert.lest || { "${ssldir}/certs/${certname}.pem" },
      'key'    => $pe_failover::nc_key.lest || { "${ssldir}/private_keys/${certname}.pem" },
      'cacert' => $pe_failover::nc_cacert.lest || { "${ssldir}/certs/ca.pem" },
    }
    pe_failover_node_group { 'pe_failover':
      ensure      => present,
      *           => $classifier,
      parent      => 'All Nodes',
      environment => $node_group_environment,
      rule        => ['and', ['~', ['fact', 'pe_failover_mode'], '^(active|passive)$']],
      classes     => {},
      variables   => {},
    }
    pe_failover_node_group { 'pe_failover-active':
      ensure      => present,
      *           => $classifier,
      parent      => 'pe_failover',
      environment => $node_group_environment,
      rule        => ['and', ['=', ['fact', 'pe_failover_mode'], 'active']],
      classes     => $active_group_classes,
      variables   => {},
      require     => Pe_failover_node_group['pe_failover'],
    }
    pe_failover_node_group { 'pe_failover-passive':
      ensure      => present,
      *           => $classifier,
      parent      => 'pe_failover',
      environment => $node_group_environment,
      rule        => ['and', ['=', ['fact', 'pe_failover_mode'], 'passive']],
      classes     => $passive_group_classes,
      variables   => {},
      require     => Pe_failover_node_group['pe_failover'],
    }
  }

  # The watcher syncs as soon as it starts: its key and the pinned host
  # keys come first.
  if $pe_failover::manage_service {
    [Exec['pe_failover transfer key'], File[$identity_file, $known_hosts]] -> Service[$pe_failover::service_name]
  }

  # What only a passive has: gone once this host is active.
  file { $pe_failover::authorized_keys_path:
    ensure => absent,
  }
  file { [$pe_failover::home_ssh_dir, $pe_failover::incoming_dir, $pe_failover::nc_incoming_dir]:
    ensure => absent,
    force  => true,
  }
}
