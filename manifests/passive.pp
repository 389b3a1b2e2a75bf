# @summary Makes this host a passive primary: it receives the active's CA and classifier groups.
#
# What the class sets up, besides what the class `pe_failover` does:
#
# * the active's transfer key in the transfer user's authorized_keys, as
#   the single line
#   `restrict,command="<base_dir>/bin/pe_failover receive --config <config>"[,from="<sources>"] <key>`,
#   so the key can do nothing but hand transactions to the receiver;
# * the `incoming` and `nc/incoming` directories the receiver writes to
#   (transfer user, 0700);
# * the configuration (`role: passive`) and the facts file
#   (`pe_failover_mode: passive`).
#
# A host that was active is cleaned up in the same run: its transfer key,
# known_hosts files and cron entry are removed, and the classifier groups
# and per-run CA syncs are no longer declared.
#
# The default authorized_keys file, `<transfer_home>/.ssh/authorized_keys`,
# is read by the stock sshd configuration. sshd must let the transfer user
# in (check `AllowUsers`/`AllowGroups`) and run its forced command with the
# user's shell (`pe_failover::receiver_shell`, `/bin/sh`).
#
# @example
#   class { 'pe_failover::passive':
#     auth_key        => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7d0hDQ3Xt6cL0pWq8x5m0iJ9h0mS5HnOQ4F4m3K7Yz pe_failover@a.example.com',
#     allowed_sources => ['192.0.2.10'],
#   }
#
# @param auth_key
#   The active's transfer public key: the contents of
#   `<base_dir>/ssh/id_ed25519.pub` on the active,
#   `ssh-ed25519 <base64> [comment]`. Surrounding white space is ignored.
# @param allowed_sources
#   If not empty, the key is only accepted from these addresses, networks
#   or host names (sshd's `from="..."` option).
class pe_failover::passive (
  String[1] $auth_key,
  Array[Pe_failover::Sshsource] $allowed_sources = [],
) {
  if defined(Class['pe_failover::active']) {
    fail('pe_failover::passive: this host also has pe_failover::active; a host is either active or passive')
  }

  include pe_failover

  # Never echo the value: a private key pasted by mistake must not reach a
  # report or a log.
  $key = $auth_key.strip
  if $key =~ /PRIVATE KEY/ {
    fail(@("MSG"/L))
      pe_failover::passive: auth_key holds a private key. Pass the public key instead: \
      the contents of ${pe_failover::identity_file}.pub on the active primary (and treat \
      the private key as exposed).
      |-MSG
  }
  unless $key =~ /\Assh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+\/]{43}( [ -~]*)?\z/ {
    fail(@("MSG"/L))
      pe_failover::passive: auth_key is not an ed25519 public key. Expected one line \
      'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI<43 more base64 characters> [comment]': the contents \
      of ${pe_failover::identity_file}.pub on the active primary.
      |-MSG
  }

  $from = $allowed_sources.empty ? {
    true    => [],
    default => ["from=\"${allowed_sources.join(',')}\""],
  }
  $options = [
    'restrict',
    "command=\"${pe_failover::wrapper} receive --config ${pe_failover::config_file}\"",
  ] + $from

  class { 'pe_failover::user':
    shell => $pe_failover::receiver_shell,
  }

  class { 'pe_failover::config':
    role       => 'passive',
    role_facts => {
      'pe_failover_mode' => 'passive',
    },
  }

  file {
    default:
      ensure => directory,
      owner  => 'root',
      group  => $pe_failover::transfer_group,
      mode   => '0750',
      ;
    [$pe_failover::ssh_dir, $pe_failover::home_ssh_dir]:
      ;
    [$pe_failover::incoming_dir, $pe_failover::nc_incoming_dir]:
      owner => $pe_failover::transfer_user,
      mode  => '0700',
      ;
  }

  # Root-owned: the transfer user (and so the receiver) may read its key
  # but never add one.
  file { $pe_failover::authorized_keys_path:
    ensure  => file,
    owner   => 'root',
    group   => $pe_failover::transfer_group,
    mode    => '0640',
    content => "${options.join(',')} ${key}\n",
  }

  # What only an active has: gone once this host is passive.
  file { [$pe_failover::identity_file, "${pe_failover::identity_file}.pub", $pe_failover::known_hosts]:
    ensure => absent,
  }
  file { $pe_failover::known_hosts_dir:
    ensure => absent,
    force  => true,
  }
  if $pe_failover::manage_cron {
    file { $pe_failover::cron_file:
      ensure => absent,
    }
  }
}
