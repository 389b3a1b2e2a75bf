# @summary What both pe_failover roles share: directories, the `pe_failover` command, the watcher service.
#
# It also creates the transfer user's group and home (the user itself is
# declared by the role class, which decides its login shell).
#
# Declare `pe_failover::active` on the active primary or
# `pe_failover::passive` on the passive one; each includes this class. Set
# the parameters below through Hiera (`pe_failover::base_dir: ...`) or by
# declaring this class before the role class. On its own this class writes
# no configuration, so the watcher it starts has nothing to do.
#
# Layout with the defaults (`T` is the transfer group). What a role does
# not use, it removes, so a role change leaves nothing of the other role.
#
# | path | owner:group | mode | role |
# |---|---|---|---|
# | `/opt/pe_failover`, `bin/` | root:root | 0755 | both |
# | `/opt/pe_failover/bin/pe_failover` (the command) | root:root | 0755 | both |
# | `/opt/pe_failover/etc/` | root:T | 0750 | both |
# | `/opt/pe_failover/etc/config.json` | root:T | 0640 | both |
# | `/opt/pe_failover/state/` | root:T | 0750 | both |
# | `/opt/pe_failover/state/snapshots/` | root:root | 0700 | both |
# | `/opt/pe_failover/state/incoming/` | transfer user:T | 0700 | passive |
# | `/opt/pe_failover/state/nc/` (classifier groups) | root:T | 0750 | both |
# | `/opt/pe_failover/state/nc/incoming/` | transfer user:T | 0700 | passive |
# | `/opt/pe_failover/home/` (transfer user's home) | root:T | 0750 | both |
# | `/opt/pe_failover/home/.ssh/` | root:T | 0750 | passive |
# | `/opt/pe_failover/home/.ssh/authorized_keys` | root:T | 0640 | passive |
# | `/opt/pe_failover/ssh/` | root:root 0700 (active), root:T 0750 (passive) | | both |
# | `/opt/pe_failover/ssh/id_ed25519` | root:root | 0600 | active |
# | `/opt/pe_failover/ssh/id_ed25519.pub` | root:root | 0644 | active |
# | `/opt/pe_failover/ssh/known_hosts` (pinned host keys) | root:root | 0644 | active |
# | `/opt/pe_failover/ssh/known_hosts.d/<host>` (trusted on first use; directory 0700) | root:root | 0644 | active |
# | `/opt/puppetlabs/facter/facts.d/pe_failover.yaml` | root:root | 0644 | both |
# | `/etc/systemd/system/pe_failover.service` | root:root | 0644 | both |
# | `/etc/cron.d/pe_failover` | root:root | 0644 | active |
#
# The state directory is not writable by the transfer user: the receiver it
# runs (over SSH, unprivileged) writes only below `incoming/` and
# `nc/incoming/`, so it can
# never plant a link where the root applier works.
#
# @example Everything in a sandbox, without systemd
#   class { 'pe_failover':
#     base_dir         => '/tmp/sandbox/opt/pe_failover',
#     facts_dir        => '/tmp/sandbox/facts.d',
#     unit_dir         => '/tmp/sandbox/systemd',
#     cron_file        => '/tmp/sandbox/cron.d/pe_failover',
#     pidfile          => '/tmp/sandbox/run/pe_failover.pid',
#     service_provider => 'base',
#   }
#   class { 'pe_failover::passive':
#     auth_key => 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk pe_failover@a.example.com',
#   }
#
# @example Hiera: a longer CA retention and no classifier replication
#   pe_failover::keep_snapshots: 30
#   pe_failover::nc_enabled: false
#
# @param base_dir
#   Root of everything the module installs. Default (module data):
#   `/opt/pe_failover`.
# @param state_dir
#   Staging, snapshots, caches and status files. Default: `<base_dir>/state`.
# @param facts_dir
#   External facts directory that receives `pe_failover.yaml`
#   (`pe_failover_mode`, `pe_failover_passive_master`). It must exist.
#   Default (module data): `/opt/puppetlabs/facter/facts.d`.
# @param manage_user
#   Whether to create the transfer user and group. When false they must
#   exist.
# @param transfer_user
#   The unprivileged user that receives transactions over SSH on the
#   passive.
# @param transfer_group
#   The transfer user's primary group; it may read the configuration.
# @param transfer_home
#   The transfer user's home directory. Default: `<base_dir>/home`.
# @param nologin_shell
#   Login shell of the transfer user on the active, where nobody logs in as
#   it. Default (module data): `/sbin/nologin` on the Red Hat and SUSE
#   families, `/usr/sbin/nologin` elsewhere.
# @param receiver_shell
#   Login shell of the transfer user on the passive. It must be a real
#   shell: sshd runs the forced command with `<shell> -c`, which a nologin
#   shell refuses. The `restrict,command=` key options keep the key from
#   running anything else.
# @param authorized_keys_file
#   The file holding the active's key on the passive (and removed on the
#   active). Default: `<transfer_home>/.ssh/authorized_keys`, which the
#   stock sshd configuration reads. Another path needs an
#   `AuthorizedKeysFile` line for the transfer user in sshd_config (a
#   `Match User` block); that is the administrator's business.
# @param ruby
#   The Ruby that runs the command line. Default: the `pe_failover.ruby`
#   fact (the Ruby running Puppet on this host).
# @param libdir
#   The directory holding `puppet_x/pe_failover/cli.rb`. Default: the
#   `pe_failover.libdir` fact (this module's `lib`).
# @param certname
#   This host's certname; its own certificate and key are never replicated
#   nor overwritten, and it is the classifier client identity.
# @param ssldir
#   Puppet's ssl directory. Default (module data): `/etc/puppetlabs/puppet/ssl`.
# @param cadir
#   The CA directory; left out of the configuration by default, so the
#   command detects it (`/etc/puppetlabs/puppetserver/ca`, else `<ssldir>/ca`).
# @param ca_exclude
#   Extra glob patterns, relative to the CA directory, never replicated.
# @param ca_owner
#   Owner of the CA files written on the passive. Default (module data):
#   `pe-puppet`.
# @param ca_group
#   Group of the CA files written on the passive. Default (module data):
#   `pe-puppet`.
# @param reload_command
#   Command (argv) run on the passive after the CRL changed. Default (module
#   data): `['systemctl', 'reload', 'pe-puppetserver']`.
# @param ca_max_delete_share
#   Largest share of the passive's CA files one apply may delete before it
#   is refused (unless forced).
# @param keep_snapshots
#   CA snapshots kept on the passive.
# @param nc_enabled
#   Whether Node Classifier groups are replicated.
# @param nc_server
#   This host's classifier URL. Default: `https://<certname>:4433`, decided
#   by the command.
# @param nc_cert
#   Client certificate for the classifier. Default: `<ssldir>/certs/<certname>.pem`.
# @param nc_key
#   Client key for the classifier. Default: `<ssldir>/private_keys/<certname>.pem`.
# @param nc_cacert
#   CA certificate that verifies the classifier. Default: `<ssldir>/certs/ca.pem`,
#   decided by the command.
# @param nc_interval
#   Seconds between polls of the active's classifier.
# @param nc_max_delete_share
#   Largest share of the passive's groups one apply may delete before it is
#   refused (unless forced).
# @param nc_replace
#   Replace the passive's whole group tree (import-hierarchy) instead of
#   applying the smallest set of changes.
# @param watch_debounce_ms
#   Quiet time after the last change before a sync, in milliseconds.
# @param watch_max_delay_ms
#   Longest delay from a change to its sync during a burst, in milliseconds.
# @param watch_verify_interval
#   Seconds between the watcher's full verifications.
# @param watch_retry_interval
#   Seconds to wait after a failed sync before trying again.
# @param log_syslog
#   Whether the command logs to syslog (`PE_FAILOVER: ...` lines).
# @param log_stderr
#   Whether it also logs to stderr. Default: only when stderr is a terminal.
# @param manage_service
#   Whether to manage the watcher service (and its systemd unit). When
#   false, Puppet leaves both alone.
# @param service_name
#   Name of the watcher service (and of its unit file).
# @param service_provider
#   `systemd`: a unit in `unit_dir`. `base`: no unit; Puppet starts
#   `pe_failover watch --daemonize --pidfile <pidfile>` and checks and stops
#   it through the pid file (for hosts or sandboxes without systemd). With
#   `base` the unit file is removed.
# @param service_ensure
#   Whether the watcher runs.
# @param service_enable
#   Whether the watcher starts at boot (systemd only).
# @param unit_dir
#   Directory of the systemd unit file. Default (module data):
#   `/etc/systemd/system`.
# @param pidfile
#   Pid file of the watcher with the `base` provider. Default:
#   `/run/<service_name>.pid`.
# @param manage_cron
#   Whether to manage the fallback cron entry: present on the active,
#   removed on the passive. When false, Puppet leaves it alone.
# @param cron_file
#   The cron file (cron.d format) that runs `pe_failover sync`. Default
#   (module data): `/etc/cron.d/pe_failover`.
# @param cron_minute
#   Minute field of the fallback sync.
# @param cron_hour
#   Hour field of the fallback sync.
# @param exec_path
#   Search path of the commands Puppet runs (`ssh-keygen`, `systemctl`).
class pe_failover (
  Pe_failover::Path $base_dir,
  Pe_failover::Path $facts_dir,
  Pe_failover::Path $nologin_shell,
  Pe_failover::Path $ssldir,
  String[1] $ca_owner,
  String[1] $ca_group,
  Array[String[1], 1] $reload_command,
  Pe_failover::Path $unit_dir,
  Pe_failover::Path $cron_file,
  Optional[Pe_failover::Path] $state_dir = undef,
  Boolean $manage_user = true,
  Pattern[/\A[a-z_][a-z0-9_.-]*\z/] $transfer_user = 'pe-transfer',
  Pattern[/\A[a-z_][a-z0-9_.-]*\z/] $transfer_group = 'pe-transfer',
  Optional[Pe_failover::Path] $transfer_home = undef,
  Pe_failover::Path $receiver_shell = '/bin/sh',
  Optional[Pe_failover::Path] $authorized_keys_file = undef,
  Optional[Pe_failover::Path] $ruby = undef,
  Optional[Pe_failover::Path] $libdir = undef,
  Pattern[/\A[A-Za-z0-9._-]+\z/] $certname = $trusted['certname'],
  Optional[Pe_failover::Path] $cadir = undef,
  Array[String[1]] $ca_exclude = [],
  Pe_failover::Share $ca_max_delete_share = 0.1,
  Integer[1] $keep_snapshots = 10,
  Boolean $nc_enabled = true,
  Optional[Stdlib::HTTPSUrl] $nc_server = undef,
  Optional[Pe_failover::Path] $nc_cert = undef,
  Optional[Pe_failover::Path] $nc_key = undef,
  Optional[Pe_failover::Path] $nc_cacert = undef,
  Integer[1] $nc_interval = 60,
  Pe_failover::Share $nc_max_delete_share = 0.1,
  Boolean $nc_replace = false,
  Integer[0] $watch_debounce_ms = 150,
  Integer[0] $watch_max_delay_ms = 1000,
  Integer[1] $watch_verify_interval = 300,
  Integer[1] $watch_retry_interval = 5,
  Boolean $log_syslog = true,
  Optional[Boolean] $log_stderr = undef,
  Boolean $manage_service = true,
  Pattern[/\A[A-Za-z0-9_.@-]+\z/] $service_name = 'pe_failover',
  Enum['systemd', 'base'] $service_provider = 'systemd',
  Stdlib::Ensure::Service $service_ensure = 'running',
  Boolean $service_enable = true,
  Optional[Pe_failover::Path] $pidfile = undef,
  Boolean $manage_cron = true,
  Pe_failover::Cronfield $cron_minute = '*/15',
  Pe_failover::Cronfield $cron_hour = '*',
  Array[Pe_failover::Path, 1] $exec_path = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'],
) {
  # Paths every class of the module uses, derived once here.
  $bin_dir = "${base_dir}/bin"
  $etc_dir = "${base_dir}/etc"
  $ssh_dir = "${base_dir}/ssh"
  $wrapper = "${bin_dir}/pe_failover"
  $config_file = "${etc_dir}/config.json"
  $state_path = $state_dir.lest || { "${base_dir}/state" }
  $incoming_dir = "${state_path}/incoming"
  $snapshots_dir = "${state_path}/snapshots"
  $nc_dir = "${state_path}/nc"
  $nc_incoming_dir = "${nc_dir}/incoming"
  $home = $transfer_home.lest || { "${base_dir}/home" }
  $home_ssh_dir = "${home}/.ssh"
  $authorized_keys_path = $authorized_keys_file.lest || { "${home_ssh_dir}/authorized_keys" }
  $identity_file = "${ssh_dir}/id_ed25519"
  $known_hosts = "${ssh_dir}/known_hosts"
  $known_hosts_dir = "${ssh_dir}/known_hosts.d"
  $facts_file = "${facts_dir}/pe_failover.yaml"
  $unit_file = "${unit_dir}/${service_name}.service"
  $pidfile_path = $pidfile.lest || { "/run/${service_name}.pid" }

  $ruby_path = $ruby.lest || { $facts.dig('pe_failover', 'ruby') }
  $lib_path = $libdir.lest || { $facts.dig('pe_failover', 'libdir') }
  unless $ruby_path =~ Pe_failover::Path and $lib_path =~ Pe_failover::Path {
    fail(@("MSG"/L))
      pe_failover: cannot tell which Ruby and lib directory run the pe_failover command \
      (fact pe_failover: ${facts.dig('pe_failover')}). Set pe_failover::ruby and \
      pe_failover::libdir to absolute paths without spaces or quotes, or make sure \
      the module's lib/facter/pe_failover.rb fact is loaded (pluginsync).
      |-MSG
  }

  if $manage_user {
    group { $transfer_group:
      ensure => present,
      system => true,
    }
  }

  file {
    default:
      ensure => directory,
      owner  => 'root',
      group  => 'root',
      mode   => '0755',
      ;
    [$base_dir, $bin_dir]:
      ;
    [$etc_dir, $home, $state_path, $nc_dir]:
      group => $transfer_group,
      mode  => '0750',
      ;
    $snapshots_dir:
      mode => '0700',
      ;
  }

  file { $wrapper:
    ensure  => file,
    owner   => 'root',
    group   => 'root',
    mode    => '0755',
    content => epp('pe_failover/wrapper.sh.epp', {
        'ruby'   => $ruby_path,
        'libdir' => $lib_path,
    }),
  }

  if $manage_service {
    if $service_provider == 'systemd' {
      file { $unit_file:
        ensure  => file,
        owner   => 'root',
        group   => 'root',
        mode    => '0644',
        content => epp('pe_failover/pe_failover.service.epp', {
            'wrapper'     => $wrapper,
            'config_file' => $config_file,
        }),
      }
      ~> exec { "${service_name} systemctl daemon-reload":
        command     => 'systemctl daemon-reload',
        path        => $exec_path,
        refreshonly => true,
      }
      -> service { $service_name:
        ensure    => $service_ensure,
        enable    => $service_enable,
        provider  => 'systemd',
        subscribe => [File[$wrapper], File[$unit_file]],
      }
    } else {
      # The pid file names the watcher only while that process is alive and
      # is a pe_failover command (a stale file may name a reused pid).
      # Stopping waits up to 10 s for the process to exit, so a restart never
      # overlaps two watchers.
      $alive = "pid=\$(cat ${pidfile_path} 2>/dev/null) && kill -0 \"\$pid\" 2>/dev/null && grep -qa pe_failover /proc/\"\$pid\"/cmdline"
      $wait = 'i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ! kill -0 "$pid" 2>/dev/null'
      file { $unit_file:
        ensure => absent,
      }
      service { $service_name:
        ensure    => $service_ensure,
        provider  => 'base',
        start     => "${wrapper} watch --config ${config_file} --daemonize --pidfile ${pidfile_path}",
        status    => $alive,
        stop      => "if ${alive}; then kill \"\$pid\"; ${wait}; fi",
        subscribe => File[$wrapper],
      }
    }
  }
}
