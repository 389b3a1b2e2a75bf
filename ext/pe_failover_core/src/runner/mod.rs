//! The commands of `pe_failover`, driven by one [`Config`]: what the CLI,
//! the systemd unit, cron and the SSH forced command run.
//!
//! | command | host | does |
//! |---|---|---|
//! | [`Runner::sync`] | active | scans the CA once and ships it to every replica over SSH |
//! | [`Runner::receive_stdio`] | passive | protocol sessions on stdin/stdout, one after another (the forced command) |
//! | [`Runner::apply`] | passive | stages received transactions and updates the live ssl dir |
//! | [`Runner::watch`] | both | runs until cancelled: sync on every change (active), apply what arrives (passive) |
//! | [`Runner::status`] | both | aggregates the status files into one [`StatusReport`] |
//! | [`pin_host_key`] | active | records a replica's SSH host key (explicit trust on first use) |
//!
//! With `nc.enabled`, `sync` also ships the classifier groups (after the
//! CA, one SSH session per replica and kind), `apply` also brings the
//! passive's classifier to the groups received (after the CA), `watch`
//! polls the active's classifier every `nc.interval` seconds and `status`
//! reports the passive's classifier. A classifier failure never blocks the
//! CA, nor the reverse.
//!
//! Every outcome is logged as `PE_FAILOVER: <component> ---> [SUCCESS|FAILURE|WARNING] ...`
//! naming the host or file and what to do next; the lines are also kept
//! (see [`Runner::log_lines`]) and returned in the reports.
//!
//! # Fencing
//!
//! A replica that answers `fenced` (it was promoted) is recorded in
//! `<state>/replicas/<replica>/fenced.json` with the digest of the
//! configuration file in force. The watcher does not contact that replica
//! again until the configuration file changes (a demotion, or the replica
//! removed); an explicit `sync` still tries, and a success clears the record.
//!
//! ```no_run
//! use pe_failover_core::runner::Runner;
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let runner = Runner::load("/opt/pe_failover/etc/config.json")?;
//! let report = runner.sync(None, false)?;
//! for line in &report.lines {
//!     println!("{line}");
//! }
//! # Ok(())
//! # }
//! ```

mod control;
mod nc;
mod status;
mod sync;
mod watch;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use nc::{NcApplyRun, NcReplicaSync, NcSyncRun};
pub use status::{StatusEntry, StatusReport};
pub use sync::{ReplicaOutcome, ReplicaSync, SyncRun};
pub use watch::WatchSummary;

use crate::apply::{Applier, ApplyReport, Owner};
use crate::cancel::CancelToken;
use crate::config::{self, Config, ReplicaConfig};
use crate::exclude::Excludes;
use crate::log::{Logger, Status};
use crate::protocol::{ReceiveOutcome, ReceiveReport, Receiver};
use crate::replset::{detect_cadir, CaPaths, PUPPETSERVER_CADIR};
use crate::ssh::{self, HostKey};
use crate::stage::LatestCache;
use crate::state::{Role, Stamp};
use crate::{Error, ErrorKind, Result};

/// The command asked of the passive's sshd. The transfer key's forced
/// command runs the receiver whatever is asked; this only documents intent.
pub const RECEIVE_COMMAND: &str = "pe_failover receive";

/// Log lines kept in memory for reports and tests.
const KEPT_LINES: usize = 2000;

/// Runs the pe_failover commands for one configuration.
#[derive(Clone)]
pub struct Runner {
    config: Config,
    config_path: Option<PathBuf>,
    config_digest: String,
    logger: Logger,
    cancel: CancelToken,
    progress: bool,
    lines: Arc<Mutex<VecDeque<String>>>,
    /// SSH sessions kept between the active watcher's rounds (none for
    /// one-shot commands).
    sessions: Option<sync::SessionPool>,
    /// The shipped-manifest files the active watcher's rounds left to write.
    shipped_due: Option<sync::ShippedDue>,
    /// The latest CA snapshot, kept between the passive watcher's rounds
    /// (none for one-shot commands).
    latest: Option<LatestCache>,
    /// Whether `sync` asks a running active watcher to run the round.
    use_watcher: bool,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config_path", &self.config_path)
            .field("role", &self.config.role)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Reads the configuration file at `path`. Logs as the file's `log`
    /// section says.
    pub fn load(path: impl AsRef<Path>) -> Result<Runner> {
        let path = path.as_ref();
        let (config, digest) = read_config(path)?;
        let mut runner = Runner::from_config(config);
        runner.config_path = Some(path.to_path_buf());
        runner.config_digest = digest;
        Ok(runner)
    }

    /// A runner for a configuration that has no file (tests, embedding).
    /// Fencing records then key on the configuration's contents.
    pub fn from_config(config: Config) -> Runner {
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(&config).unwrap_or_default(),
        ));
        Runner {
            logger: Logger::new(config.log.syslog, config.log.stderr),
            config,
            config_path: None,
            config_digest: digest,
            cancel: CancelToken::new(),
            progress: false,
            lines: Arc::new(Mutex::new(VecDeque::new())),
            sessions: None,
            shipped_due: None,
            latest: None,
            use_watcher: true,
        }
    }

    /// Where log lines go. Default: as the configuration's `log` section says.
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = logger;
        self
    }

    /// Stops long work (a transfer, the watcher) when `token` is tripped.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Whether [`sync`](Self::sync) asks the active watcher, when one runs
    /// with this configuration file, to run the round: it knows from
    /// inotify what changed and keeps SSH sessions open, so it need not
    /// scan the whole CA (see `<state_dir>/watch.sock`). Default: true;
    /// false always scans here.
    pub fn use_watcher(mut self, yes: bool) -> Self {
        self.use_watcher = yes;
        self
    }

    /// Shows transfer progress on stderr (for a terminal). Default: false.
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration file, when loaded from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// SHA-256 of the configuration file (or of the configuration).
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// The cancel token long work checks.
    pub fn cancel_token_ref(&self) -> &CancelToken {
        &self.cancel
    }

    /// The most recent log lines this runner (and its clones) emitted,
    /// oldest first.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Logs one line and keeps it; returns it.
    pub(crate) fn log(&self, component: &str, status: Status, message: &str) -> String {
        self.logger.log(component, status, message);
        let line = crate::log::format_line(component, status, message);
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() >= KEPT_LINES {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        line
    }

    /// This host's role as the core's state module spells it.
    pub(crate) fn role(&self) -> Role {
        match self.config.role {
            config::Role::Active => Role::Active,
            config::Role::Passive => Role::Passive,
        }
    }

    /// The live CA paths of this host (configured cadir, or detected).
    pub fn ca_paths(&self) -> Result<CaPaths> {
        let ssldir = self.config.ca.ssldir.clone();
        let cadir = match &self.config.ca.cadir {
            Some(c) => c.clone(),
            None => detect_cadir(&ssldir, Path::new(PUPPETSERVER_CADIR))?,
        };
        Ok(CaPaths { cadir, ssldir })
    }

    pub(crate) fn excludes(&self) -> Result<Excludes> {
        Excludes::new(&self.config.ca.exclude)
    }

    /// Refuses commands meant for the other role.
    fn require_role(&self, want: Role, command: &str) -> Result<()> {
        if self.role() == want {
            return Ok(());
        }
        let (kind, next) = match want {
            Role::Active => (
                ErrorKind::Refused,
                "run it on the active primary (this host's configuration says role passive)",
            ),
            Role::Passive => (
                ErrorKind::Fenced,
                "this host is the active primary; it takes no replicated CA (demote it to passive first)",
            ),
        };
        Err(Error::new(
            kind,
            format!("`pe_failover {command}` refused: {next}"),
        ))
    }

    /// Receive sessions on stdin/stdout, each logged, for as long as the
    /// sender starts another ([`Receiver::serve`]): the SSH forced command of
    /// the transfer key on the passive. Refuses (`fenced`) when this host's
    /// configuration says role active. Writes only below `<state>/incoming/`.
    /// Returns the last session's result.
    pub fn receive_stdio(&self) -> Result<ReceiveReport> {
        self.receiver()
            .receive_stdio(|result| self.log_receive(result))
    }

    /// One receive session on `stream` (tests, other transports).
    pub fn receive<S: std::io::Read + std::io::Write>(&self, stream: S) -> Result<ReceiveReport> {
        let result = self.receiver().receive(stream);
        self.log_receive(&result);
        result
    }

    fn receiver(&self) -> Receiver {
        Receiver::new(&self.config.state_dir)
            .role(self.role())
            .host(self.config.certname.clone())
            .cancel_token(self.cancel.clone())
    }

    fn log_receive(&self, result: &Result<ReceiveReport>) {
        match result {
            // Started ahead of need and closed unused: nothing happened.
            Ok(r) if r.outcome == ReceiveOutcome::Unused => {}
            Ok(r) if r.outcome == ReceiveOutcome::Stored => {
                self.log(
                    "receive",
                    Status::Success,
                    &format!(
                        "ca transaction {} from {} stored ({} objects, {} bytes); the applier takes it from {}",
                        r.txn,
                        r.sender,
                        r.stats.objects,
                        r.stats.object_bytes,
                        self.config.state_dir.join("incoming").display()
                    ),
                );
            }
            Ok(r) => {
                self.log(
                    "receive",
                    Status::Success,
                    &format!("ca from {}: already up to date", r.sender),
                );
            }
            Err(e) => {
                self.log(
                    "receive",
                    Status::Failure,
                    &format!("{e}; {}", advice(e, None, &self.config)),
                );
            }
        }
    }

    /// Stages received transactions and brings the live ssl directory to
    /// the latest snapshot, with the configuration's owner, group, guards,
    /// exclusions and reload command. Refuses (`fenced`) on an active host.
    /// Compares the whole live CA with the snapshot ([`Applier::verify`]).
    pub fn apply(&self, force: bool) -> Result<ApplyRun> {
        self.apply_with(force, true)
    }

    /// [`apply`](Self::apply); with `verify` false, only the paths the new
    /// transactions change are compared (the watcher's rounds between
    /// verifications).
    pub(crate) fn apply_with(&self, force: bool, verify: bool) -> Result<ApplyRun> {
        let allowed = self.require_role(Role::Passive, "apply");
        let nc_allowed = allowed.is_ok();
        let result = allowed
            .and_then(|()| self.applier(force))
            .map(|applier| applier.verify(verify))
            .and_then(|applier| applier.run());
        // The classifier after the CA, whatever the CA's outcome (but never
        // on a host that refuses to apply).
        let nc = (nc_allowed && self.config.nc.enabled).then(|| self.apply_nc(force, false, None));
        match result {
            Ok(report) => {
                let mut lines = vec![self.log_apply(&report)];
                let mut ok = true;
                if let Some(nc) = &nc {
                    ok = nc.ok;
                    lines.extend(nc.lines.iter().cloned());
                }
                Ok(ApplyRun {
                    ok,
                    lines,
                    report,
                    nc,
                })
            }
            Err(e) => {
                self.log(
                    "apply",
                    Status::Failure,
                    &format!("{e}; {}", advice(&e, None, &self.config)),
                );
                Err(e)
            }
        }
    }

    fn applier(&self, force: bool) -> Result<Applier> {
        let c = &self.config.ca;
        let owner = Owner::Fixed {
            uid: config::lookup_uid(&c.owner)?,
            gid: config::lookup_gid(&c.group)?,
        };
        let applier = Applier::new(&self.config.state_dir, self.ca_paths()?);
        let applier = match &self.latest {
            Some(cache) => applier.latest_cache(cache.clone()),
            None => applier,
        };
        Ok(applier
            .role(self.role())
            .owner(owner)
            .keep_snapshots(c.keep_snapshots)
            .max_delete_share(c.max_delete_share)
            .reload_command(c.reload_command.iter().cloned())
            .excludes(self.excludes()?)
            .force(force)
            .cancel_token(self.cancel.clone()))
    }

    fn log_apply(&self, r: &ApplyReport) -> String {
        let digest = r.applied_digest.as_deref().map(short).unwrap_or("nothing");
        let mut msg = if r.live.written.is_empty()
            && r.live.deleted.is_empty()
            && r.live.metadata_fixed.is_empty()
            && r.staged.is_empty()
        {
            format!("ca live files already at {digest}")
        } else {
            format!(
                "ca applied {digest}: {} transactions staged, {} files written, {} deleted, {} modes/owners fixed",
                r.staged.len(),
                r.live.written.len(),
                r.live.deleted.len(),
                r.live.metadata_fixed.len()
            )
        };
        if r.live.labels_kept > 0 {
            msg.push_str(&format!(
                "; SELinux labels kept on replaced files: {}",
                r.live.labels_kept
            ));
        }
        if r.reloaded {
            msg.push_str("; puppetserver reloaded for the new CRL");
        }
        if !r.kept.is_empty() {
            msg.push_str(&format!(
                "; kept certificates only this host signed: {}",
                r.kept.join(", ")
            ));
        }
        if r.warnings.is_empty() {
            self.log("apply", Status::Success, &msg)
        } else {
            msg.push_str("; ");
            msg.push_str(&r.warnings.join("; "));
            self.log("apply", Status::Warning, &msg)
        }
    }

    /// Reloads the configuration file if it changed on disk; returns whether
    /// it did. A file that no longer parses is logged and the old
    /// configuration kept.
    pub(crate) fn reload_if_changed(&mut self) -> bool {
        let Some(path) = self.config_path.clone() else {
            return false;
        };
        let Ok(bytes) = fs::read(&path) else {
            return false;
        };
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest == self.config_digest {
            return false;
        }
        match Config::load(&path) {
            Ok(config) => {
                self.config = config;
                self.config_digest = digest;
                self.log(
                    "watch",
                    Status::Success,
                    &format!("configuration {} changed: reloaded", path.display()),
                );
                true
            }
            Err(e) => {
                // Remember the bad digest so the line is logged once.
                self.config_digest = digest;
                self.log(
                    "watch",
                    Status::Failure,
                    &format!("configuration {} changed but cannot be used, keeping the previous one: {e}", path.display()),
                );
                false
            }
        }
    }
}

/// What [`Runner::apply`] did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyRun {
    /// True unless the classifier part failed (CA failures are errors).
    pub ok: bool,
    /// Summary lines, as logged.
    pub lines: Vec<String>,
    /// The applier's report.
    pub report: ApplyReport,
    /// The classifier part (when `nc.enabled`).
    pub nc: Option<NcApplyRun>,
}

/// A host key pinned by [`pin_host_key`].
#[derive(Clone, Debug, Serialize)]
pub struct PinnedKey {
    /// Key type (`ssh-ed25519`, ...).
    #[serde(rename = "type")]
    pub key_type: String,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The known_hosts line.
    pub line: String,
    /// False when the key was already pinned.
    pub added: bool,
}

/// Fetches the SSH host key of `host:port` and pins it in `known_hosts`
/// (trust on first use, as an explicit step). Refuses when another key is
/// already pinned for that host. Compare the returned fingerprint with
/// `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the replica.
pub fn pin_host_key(
    host: &str,
    port: u16,
    known_hosts: &Path,
    timeout: Duration,
) -> Result<PinnedKey> {
    let key: HostKey = ssh::fetch_host_key(host, port, timeout)?;
    let added = ssh::pin_host_key(known_hosts, host, port, &key)?;
    Ok(PinnedKey {
        key_type: key.key_type().to_string(),
        fingerprint: key.fingerprint(),
        line: key.known_hosts_line(host, port),
        added,
    })
}

/// Reads a configuration file and its SHA-256.
fn read_config(path: &Path) -> Result<(Config, String)> {
    let config = Config::load(path)?;
    let bytes = fs::read(path).map_err(|e| Error::io("read the configuration", path, e))?;
    Ok((config, hex::encode(Sha256::digest(&bytes))))
}

/// The name a replica's state files use: its host, plus `_<port>` when the
/// port is not 22 (so two replicas on one host keep separate files).
pub fn replica_key(r: &ReplicaConfig) -> String {
    if r.port == ssh::DEFAULT_PORT {
        r.host.clone()
    } else {
        format!("{}_{}", r.host, r.port)
    }
}

/// How a replica is shown: `host`, or `host:port` when the port is not 22.
pub fn replica_label(r: &ReplicaConfig) -> String {
    if r.port == ssh::DEFAULT_PORT {
        r.host.clone()
    } else {
        format!("{}:{}", r.host, r.port)
    }
}

/// What to do next about `err`, for log lines and the status problems.
pub(crate) fn advice(err: &Error, replica: Option<&ReplicaConfig>, config: &Config) -> String {
    let host = replica
        .map(replica_label)
        .unwrap_or_else(|| "the replica".into());
    let retry = config.watch.retry_interval;
    match err.kind() {
        ErrorKind::Fenced => match replica {
            Some(_) => format!(
                "{host} was promoted and refuses this host: demote this host (role passive) or remove {host} from its replicas, then run Puppet; the watcher does not contact {host} again until the configuration file changes"
            ),
            None => "this host is active; demote it to passive before it takes transactions".into(),
        },
        ErrorKind::Verification => match replica {
            Some(r) => format!(
                "{host} offered a host key that {} does not pin; if {host} was rebuilt, verify its fingerprint and re-pin it with `pe_failover pin-host-key --host {} --port {} --known-hosts {}`",
                r.known_hosts.display(), r.host, r.port, r.known_hosts.display()
            ),
            None => "check the data's integrity; it is sent again on the next sync".into(),
        },
        ErrorKind::Unauthorized => match replica {
            Some(r) => format!(
                "authorize the public key of {} for {}@{host} (class pe_failover::passive, parameter auth_key)",
                r.identity_file.display(), r.user
            ),
            None => "check the client certificate".into(),
        },
        ErrorKind::Network | ErrorKind::Timeout => format!(
            "check that {host} is up and reachable over SSH; the watcher retries every {retry} s"
        ),
        ErrorKind::Refused => "fix the cause or pass --force after checking it is intended".into(),
        ErrorKind::Cancelled => "it was interrupted; run it again".into(),
        ErrorKind::PermissionDenied => "run it as root (or the user the module configures)".into(),
        ErrorKind::Protocol | ErrorKind::Corrupt => format!(
            "install the same pe_failover version on both primaries and check the receiver's log on {host}; the next sync starts over"
        ),
        _ => format!("see the message; the watcher retries every {retry} s"),
    }
}

/// The first 12 hex digits of a digest.
pub(crate) fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Seconds from `at` to now.
pub(crate) fn age(at: &Stamp, now: &Stamp) -> i64 {
    (now.unix - at.unix).max(0)
}
