//! `sync`: one scan of the replicated set, shipped to each replica over SSH.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::control::Reply;
use super::{advice, replica_key, replica_label, short, Runner, RECEIVE_COMMAND};
use crate::config::ReplicaConfig;
use crate::log::Status;
use crate::protocol::{is_source_changed, Sender, SyncReport};
use crate::replset::{manifest_file_digest, save_manifest_cache, ReplicatedSet, SetScan};
use crate::snapshot::Manifest;
use crate::ssh::{Channel, Session, SshTarget};
use crate::state::{sender_status_path, ErrorRecord, Role, SenderStatus, Stamp, SyncOutcome};
use crate::{Error, ErrorKind, Result};

/// Interval of SSH keepalives during a sync.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Bytes of file contents a full scan keeps for the senders
/// ([`ReplicatedSet::keep_contents`]): all of a 100,000-certificate CA.
const KEEP_CONTENTS: u64 = 256 * 1024 * 1024;

/// How long the active watcher keeps an idle SSH session for the next round.
/// Nothing is sent on an idle session, so a longer wait risks a connection a
/// firewall dropped silently (the next round would wait out the I/O timeout
/// before connecting again); a round after a longer pause connects anew.
const SESSION_IDLE: Duration = Duration::from_secs(30);

/// Open SSH sessions by replica (its status key); shared by the clones of
/// one watcher's runner.
pub(crate) type SessionPool = Arc<Mutex<HashMap<String, Pooled>>>;

/// The manifest files the watcher's rounds left to write: by file (a
/// replica's [`Sender::shipped_manifest_path`]), the digest of the manifest
/// the replica acknowledged, which the watcher's last scan holds. Shared by
/// the clones of one watcher's runner.
pub(crate) type ShippedDue = Arc<Mutex<HashMap<PathBuf, String>>>;

/// A session the watcher keeps between rounds.
pub(crate) struct Pooled {
    session: Session,
    /// The receiver of the last round, waiting for the next session on the
    /// same channel (see `Receiver::serve`): it holds the manifest it built
    /// as its next base (used if the replica still holds it once `HELLO`
    /// comes). Closed unused, it exits without a word.
    receiver: Channel,
    /// When it was last used.
    used: Instant,
}

/// The command a receiver is started with over SSH, naming the `kind` of
/// session that follows (the forced command runs instead; the receiver
/// finds it in `SSH_ORIGINAL_COMMAND` and reads that kind's base early).
fn receive_command(kind: &str) -> String {
    format!("{RECEIVE_COMMAND} {kind}")
}

/// An SSH session and the receiver started over it.
pub(crate) type Opened = (Session, Channel);

/// How one replica's sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaOutcome {
    /// A transaction was committed on the replica.
    Committed,
    /// The replica already held the current state.
    UpToDate,
    /// Noop: the changes were computed, nothing was sent.
    Noop,
    /// The replica was promoted and refused this host.
    Fenced,
    /// The sync failed (see `error`).
    Failed,
}

/// One replica's part of a [`SyncRun`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaSync {
    /// The replica's host, as configured.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// Whether it holds (or, in noop, was compared with) the current state.
    pub ok: bool,
    /// How it ended.
    pub outcome: ReplicaOutcome,
    /// Entries added, changed or removed (to be, in noop).
    pub changes: u64,
    /// Paths added.
    pub added: Vec<String>,
    /// Paths changed.
    pub changed: Vec<String>,
    /// Paths removed.
    pub removed: Vec<String>,
    /// The digest the replica held before.
    pub base: Option<String>,
    /// The digest shipped (the active's).
    pub digest: Option<String>,
    /// File contents transferred.
    pub objects: u64,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
    /// The error, when it failed: `{kind, message}`.
    pub error: Option<ErrorRecord>,
    /// What to do about the error.
    pub advice: Option<String>,
    /// Problems that did not fail the sync.
    pub warnings: Vec<String>,
}

/// What [`Runner::sync`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRun {
    /// Whether every replica synced.
    pub ok: bool,
    /// Noop mode.
    pub noop: bool,
    /// Digest of this host's replicated set.
    pub digest: Option<String>,
    /// Entries in the replicated set.
    pub entries: u64,
    /// Summary, one line per replica, as logged.
    pub lines: Vec<String>,
    /// Per replica.
    pub replicas: Vec<ReplicaSync>,
    /// Classifier shipping (when `nc.enabled`, or asked for).
    #[serde(skip_deserializing)]
    pub nc: Option<super::NcSyncRun>,
    /// The CA part was run by the active watcher (see
    /// [`Runner::use_watcher`]), not by a scan in this process.
    #[serde(default)]
    pub via_watcher: bool,
}

/// `<state>/replicas/<replica>/fenced.json`: the replica refused this
/// host as fenced while the configuration had `config_digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FenceRecord {
    pub config_digest: String,
    pub at: Stamp,
    pub message: String,
}

impl Runner {
    pub(crate) fn fence_path(&self, r: &ReplicaConfig) -> PathBuf {
        self.config
            .state_dir
            .join("replicas")
            .join(replica_key(r))
            .join("fenced.json")
    }

    /// The fence record of `r`, if one exists (whatever configuration it
    /// was made under).
    pub(crate) fn fence_record(&self, r: &ReplicaConfig) -> Option<FenceRecord> {
        let bytes = std::fs::read(self.fence_path(r)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the watcher must leave `r` alone: it refused this host as
    /// fenced under the configuration in force now.
    pub(crate) fn is_fenced_now(&self, r: &ReplicaConfig) -> bool {
        self.fence_record(r)
            .is_some_and(|f| f.config_digest == self.config_digest)
    }

    pub(crate) fn replicated_set(&self) -> Result<ReplicatedSet> {
        let c = &self.config.ca;
        let mut set = ReplicatedSet::new(&c.ssldir)
            .excludes(self.excludes()?)
            .cache_file(self.config.state_dir.join("ca.scan"))
            .cancel_token(self.cancel.clone());
        if let Some(cadir) = &c.cadir {
            set = set.cadir(cadir);
        }
        Ok(set)
    }

    /// The replicas `only` selects: all when `None`, else the one whose
    /// host (or `host:port`) it names.
    pub(crate) fn select(&self, only: Option<&str>) -> Result<Vec<ReplicaConfig>> {
        let all = &self.config.replicas;
        match only {
            None => Ok(all.clone()),
            Some(name) => {
                let found: Vec<ReplicaConfig> = all
                    .iter()
                    .filter(|r| r.host == name || replica_label(r) == name)
                    .cloned()
                    .collect();
                if found.is_empty() {
                    let known: Vec<String> = all.iter().map(replica_label).collect();
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "{name} is not a replica in the configuration (replicas: {}); add it to `replicas` first",
                            if known.is_empty() { "none".into() } else { known.join(", ") }
                        ),
                    ));
                }
                Ok(found)
            }
        }
    }

    /// Scans the replicated set once and ships it to every replica (or the
    /// one named by `replica`). In noop mode computes and reports the
    /// changes without sending content or writing state. One replica
    /// failing does not stop the others; the run reports `ok: false`.
    pub fn sync(&self, replica: Option<&str>, noop: bool) -> Result<SyncRun> {
        self.sync_with_nc(replica, noop, None)
    }

    /// [`Runner::sync`], then the classifier groups (each replica over its
    /// own SSH session) when `nc` says so (`None`: when `nc.enabled`). A CA
    /// failure does not stop the groups, nor the reverse; when the
    /// classifier part ran, a CA that could not be read is reported in the
    /// run (`ok: false`) rather than as an error.
    pub fn sync_with_nc(
        &self,
        replica: Option<&str>,
        noop: bool,
        nc: Option<bool>,
    ) -> Result<SyncRun> {
        self.require_role(Role::Active, "sync")?;
        let replicas = self.select(replica)?;
        let ca = match self.ask_watcher(replica, noop) {
            Reply::Ran(answer) => (*answer).map(|run| SyncRun {
                via_watcher: true,
                ..run
            }),
            Reply::NoWatcher => self.sync_replicas(&replicas, noop),
            Reply::NotRun(why) => {
                let line = self.log(
                    "sync",
                    Status::Warning,
                    &format!(
                        "the watcher on this host did not run this sync ({why}); scanned here instead (check the pe_failover watch service on this host; --no-watcher does not ask it)"
                    ),
                );
                self.sync_replicas(&replicas, noop).map(|mut run| {
                    run.lines.insert(0, line);
                    run
                })
            }
        };
        if !self.nc_wanted(nc) {
            return ca;
        }
        if matches!(&ca, Err(e) if e.kind() == ErrorKind::Cancelled) {
            return ca;
        }
        let nc_run = self.sync_nc(&replicas, noop, false, &[]);
        match ca {
            Ok(mut run) => {
                run.ok &= nc_run.ok;
                run.lines.extend(nc_run.lines.iter().cloned());
                run.nc = Some(nc_run);
                Ok(run)
            }
            Err(e) => {
                let mut lines = vec![crate::log::format_line(
                    "sync",
                    Status::Failure,
                    &format!("ca not shipped: {e}; {}", advice(&e, None, &self.config)),
                )];
                lines.extend(nc_run.lines.iter().cloned());
                Ok(SyncRun {
                    ok: false,
                    noop,
                    digest: None,
                    entries: 0,
                    lines,
                    replicas: Vec::new(),
                    nc: Some(nc_run),
                    via_watcher: false,
                })
            }
        }
    }

    /// Asks the active watcher serving this configuration, when there is
    /// one (see [`Runner::use_watcher`]), to run the CA part of a sync;
    /// `NoWatcher` when it is not to be asked.
    fn ask_watcher(&self, replica: Option<&str>, noop: bool) -> Reply {
        // (A watcher's own rounds are never sent to itself.)
        if !self.use_watcher || self.sessions.is_some() {
            return Reply::NoWatcher;
        }
        let request = super::control::SyncRequest::new(&self.config_digest, replica, noop);
        super::control::ask(&self.config.state_dir, &request)
    }

    pub(crate) fn sync_replicas(&self, replicas: &[ReplicaConfig], noop: bool) -> Result<SyncRun> {
        self.sync_replicas_from(replicas, noop, None, None)
            .map(|(run, scan)| {
                crate::drop_in_background(scan);
                run
            })
    }

    /// [`sync_replicas`](Self::sync_replicas) from `scan` when given (the
    /// watcher's incremental rescan) instead of a full scan, with `shipped`
    /// the manifest some replicas may hold (the watcher's last round);
    /// returns the run and the scan shipped last.
    pub(crate) fn sync_replicas_from(
        &self,
        replicas: &[ReplicaConfig],
        noop: bool,
        scan: Option<SetScan>,
        shipped: Option<&Manifest>,
    ) -> Result<(SyncRun, SetScan)> {
        // A full scan keeps the small files it hashes (a first sync hashes
        // them all) for the senders, which then need not read them again.
        let set = self.replicated_set()?.keep_contents(KEEP_CONTENTS);
        // A full scan takes a while: the SSH sessions are opened and the
        // receivers started meanwhile (each in its own thread), so the
        // handshakes and the receivers' start-up cost no extra time. A
        // replica the watcher kept a session to needs none.
        let mut sessions: Vec<Option<thread::JoinHandle<Result<Opened>>>> = Vec::new();
        let scanned = match scan {
            Some(scan) => Ok(scan),
            None => {
                sessions = replicas
                    .iter()
                    .map(|r| {
                        if self.has_pooled_session(r) {
                            return None;
                        }
                        let target = self.target(r);
                        thread::Builder::new()
                            .name("pe_failover-connect".into())
                            .spawn(move || {
                                let session = target.connect()?;
                                let channel = session.exec(&receive_command("ca"))?;
                                Ok((session, channel))
                            })
                            .ok()
                    })
                    .collect();
                set.scan()
            }
        };
        let mut scan = match scanned {
            Ok(scan) => scan,
            Err(e) => {
                let msg = format!(
                    "cannot read this host's CA, nothing was shipped: {e}; {}",
                    advice(&e, None, &self.config)
                );
                self.log("sync", Status::Failure, &msg);
                if !noop {
                    for r in replicas {
                        self.record_failure(r, &e, "ca");
                    }
                }
                return Err(e);
            }
        };
        let mut run = SyncRun {
            ok: true,
            noop,
            digest: Some(scan.manifest.digest()),
            entries: scan.manifest.len() as u64,
            lines: Vec::new(),
            replicas: Vec::new(),
            nc: None,
            via_watcher: false,
        };
        if replicas.is_empty() {
            let line = self.log(
                "sync",
                Status::Warning,
                "no replicas are configured; add one to `replicas` in the configuration",
            );
            run.lines.push(line);
        }
        let mut sessions = sessions.into_iter();
        for r in replicas {
            if self.cancel.is_cancelled() {
                return Err(Error::cancelled());
            }
            let started = Instant::now();
            let session = sessions
                .next()
                .flatten()
                .map(|h| crate::joined(h.join(), "opening the SSH session"));
            let mut result = self.sync_one(&set, &scan, shipped, r, noop, session);
            // A busy CA: a file changed while it was sent. Scan again and
            // ship the new state (a few times at most).
            for _ in 0..3 {
                match &result {
                    Err(e) if is_source_changed(e) => {}
                    _ => break,
                }
                match set.scan() {
                    Ok(fresh) => scan = fresh,
                    // Still busy: the failure stands; the next round retries.
                    Err(_) => break,
                }
                run.digest = Some(scan.manifest.digest());
                run.entries = scan.manifest.len() as u64;
                result = self.sync_one(&set, &scan, shipped, r, noop, None);
            }
            let item = self.replica_result(r, result, noop, started.elapsed());
            run.ok &= item.ok;
            run.lines.push(self.log_replica(&item, noop));
            run.replicas.push(item);
        }
        // The caller may keep the scan (the watcher does), not the contents.
        crate::drop_in_background(std::mem::take(&mut scan.contents));
        if let Some(warning) = scan.cache_save.wait_for_warning() {
            run.lines.push(self.log("sync", Status::Warning, &warning));
        }
        Ok((run, scan))
    }

    pub(crate) fn target(&self, r: &ReplicaConfig) -> SshTarget {
        SshTarget::new(&r.host, &r.user)
            .port(r.port)
            .private_key(&r.identity_file)
            .known_hosts(&r.known_hosts)
            .connect_timeout(Duration::from_secs(r.connect_timeout))
            .io_timeout(Duration::from_secs(r.io_timeout))
            .keepalive_interval(Some(KEEPALIVE))
            .cancel_token(self.cancel.clone())
    }

    fn sync_one(
        &self,
        set: &ReplicatedSet,
        scan: &SetScan,
        shipped: Option<&Manifest>,
        r: &ReplicaConfig,
        noop: bool,
        opened: Option<Result<Opened>>,
    ) -> Result<SyncReport> {
        self.ship(r, noop, "ca", opened, |channel, label| {
            // The watcher writes the manifest file once idle (see
            // `Runner::write_shipped`), not during the round.
            let sender = Sender::new(set.clone(), replica_key(r), &self.config.state_dir)
                .sender_host(self.config.certname.clone())
                .noop(noop)
                .write_shipped(self.shipped_due.is_none())
                .cancel_token(self.cancel.clone());
            let show = self.progress && io::stderr().is_terminal();
            let report =
                sender.sync_scanned_from(scan, shipped, Progress::new(channel, label, show))?;
            let held = matches!(
                report.outcome,
                SyncOutcome::Committed | SyncOutcome::UpToDate
            );
            if let (Some(due), true) = (&self.shipped_due, held) {
                if let Ok(mut due) = due.lock() {
                    due.insert(sender.shipped_manifest_path(), report.digest.clone());
                }
            }
            Ok(report)
        })
    }

    /// Whether the watcher's rounds left manifest files to write.
    pub(crate) fn has_shipped_due(&self) -> bool {
        self.shipped_due
            .as_ref()
            .and_then(|due| due.lock().ok().map(|d| !d.is_empty()))
            .unwrap_or(false)
    }

    /// Writes the manifest files the watcher's rounds left to write (see
    /// [`ShippedDue`]) from `scan`, the last one shipped, where the replica
    /// acknowledged its manifest: the next `sync` that does not run through
    /// the watcher (or the watcher's first round after a restart) diffs
    /// against it instead of asking the replica for its manifest. A file
    /// that cannot be written is logged; only that saving is lost.
    pub(crate) fn write_shipped(&self, scan: Option<&SetScan>) {
        let Some(due) = &self.shipped_due else {
            return;
        };
        let due: Vec<(PathBuf, String)> = match due.lock() {
            Ok(mut due) => due.drain().collect(),
            Err(_) => return,
        };
        let Some(manifest) = scan.map(|s| &s.manifest) else {
            return;
        };
        let digest = manifest.digest();
        for (path, _) in due.iter().filter(|(_, d)| *d == digest) {
            if manifest_file_digest(path).as_deref() == Some(digest.as_str()) {
                continue;
            }
            if let Err(e) = save_manifest_cache(path, manifest, 0o600) {
                self.log(
                    "watch",
                    Status::Warning,
                    &format!(
                        "cannot keep the manifest last shipped in {}: {e}; the next sync that does not run through this watcher asks the replica for its manifest instead",
                        path.display()
                    ),
                );
            }
        }
    }

    /// Opens an SSH session to `r` and starts the receiver (or takes
    /// `opened`, a receiver started beforehand, or the one the watcher's
    /// last round left waiting), then runs `send` over the channel (given
    /// the replica's label): again over a new connection when a receiver
    /// left waiting turns out to be gone. A watcher keeps the session and
    /// starts the next round's CA receiver on it. The receiver's stderr
    /// explains a failure its `ERROR` frame could not (it died, or never
    /// spoke the protocol), so it is added to network and protocol errors;
    /// failures before the protocol started never reached the sender's
    /// status file and are recorded in the `kind` status here.
    pub(crate) fn ship(
        &self,
        r: &ReplicaConfig,
        noop: bool,
        kind: &str,
        opened: Option<Result<Opened>>,
        mut send: impl FnMut(&mut Channel, &str) -> Result<SyncReport>,
    ) -> Result<SyncReport> {
        let label = replica_label(r);
        let host_err = |e: Error| {
            if e.host().is_some() {
                e
            } else {
                e.with_host(label.clone())
            }
        };
        let mut sender_ran = false;
        let mut keep: Option<Opened> = None;
        let result = (|| {
            let ((mut session, mut channel), warm) =
                self.open_receiver(r, kind, opened).map_err(host_err)?;
            sender_ran = true;
            let mut result = send(&mut channel, &label);
            let gone = |e: &Error| matches!(e.kind(), ErrorKind::Network | ErrorKind::Timeout);
            if warm && result.as_ref().is_err_and(gone) {
                // The receiver started after the last round went with its
                // session (closed while idle by the server or the network):
                // the round runs again over a new connection, as it would
                // have had the session been found closed before.
                // (A connection that fails now is recorded as the round's
                // failure, below, as a first one would be.)
                drop(channel);
                sender_ran = false;
                (session, channel) = self.connect_receiver(r, kind).map_err(host_err)?;
                sender_ran = true;
                result = send(&mut channel, &label);
            }
            if self.sessions.is_some() && result.is_ok() {
                // The receiver stays, for the next round's session.
                keep = Some((session, channel));
                return result;
            }
            let finished = channel.finish();
            let stderr = channel.stderr();
            let stderr = stderr.trim();
            match result {
                Ok(mut report) => {
                    if let Ok(code) = finished {
                        if code != 0 {
                            report.warnings.push(format!(
                                "the receiver on {label} exited with status {code}: {stderr}"
                            ));
                        }
                    }
                    Ok(report)
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::Network | ErrorKind::Protocol)
                        && !stderr.is_empty()
                        && !e.message().contains(stderr) =>
                {
                    let skip = stderr.chars().count().saturating_sub(600);
                    let tail: String = stderr.chars().skip(skip).collect();
                    Err(Error::new(
                        e.kind(),
                        format!("{} (the receiver said: {tail})", e.message()),
                    )
                    .with_host(label.clone()))
                }
                Err(e) => Err(e),
            }
        })();
        if let Err(e) = &result {
            if !noop && !sender_ran {
                self.record_failure(r, e, kind);
            }
        }
        if let (Some(pool), Some((session, channel))) = (&self.sessions, keep) {
            if let Ok(mut pool) = pool.lock() {
                let used = Instant::now();
                pool.insert(
                    replica_key(r),
                    Pooled {
                        session,
                        receiver: channel,
                        used,
                    },
                );
            }
        }
        result
    }

    /// The session kept for `r` by the watcher's last round and the
    /// receiver waiting on it, unless it has been idle too long.
    fn pooled_session(&self, r: &ReplicaConfig) -> Option<Opened> {
        let pool = self.sessions.as_ref()?;
        let kept = pool.lock().ok()?.remove(&replica_key(r))?;
        (kept.used.elapsed() < SESSION_IDLE).then_some((kept.session, kept.receiver))
    }

    /// Whether [`pooled_session`](Self::pooled_session) has one for `r`.
    fn has_pooled_session(&self, r: &ReplicaConfig) -> bool {
        self.sessions
            .as_ref()
            .and_then(|pool| pool.lock().ok()?.get(&replica_key(r)).map(|kept| kept.used))
            .is_some_and(|used| used.elapsed() < SESSION_IDLE)
    }

    /// The receiver on `r`: `opened` (started during the scan) when given,
    /// else the receiver of the watcher's last round, on the session it
    /// kept (`true`: they may have gone since, closed while idle by the
    /// server or the network), else one over a new session.
    fn open_receiver(
        &self,
        r: &ReplicaConfig,
        kind: &str,
        opened: Option<Result<Opened>>,
    ) -> Result<(Opened, bool)> {
        if let Some(opened) = opened {
            return opened.map(|o| (o, false));
        }
        let Some((kept, mut channel)) = self.pooled_session(r) else {
            return self.connect_receiver(r, kind).map(|o| (o, false));
        };
        // What it said in earlier sessions is not this one's.
        channel.forget_stderr();
        Ok(((kept, channel), true))
    }

    /// A new SSH session to `r` and the `kind` receiver started over it.
    fn connect_receiver(&self, r: &ReplicaConfig, kind: &str) -> Result<Opened> {
        let session = self.target(r).connect()?;
        let channel = session.exec(&receive_command(kind))?;
        Ok((session, channel))
    }

    /// Keeps SSH sessions open between rounds from now on (the active
    /// watcher); `false` closes them and stops keeping them.
    pub(crate) fn keep_sessions(&mut self, yes: bool) {
        self.sessions = yes.then(SessionPool::default);
        self.shipped_due = yes.then(ShippedDue::default);
    }

    /// Records a failed attempt in the `kind` sender status file of `r`.
    pub(crate) fn record_failure(&self, r: &ReplicaConfig, err: &Error, kind: &str) {
        let key = replica_key(r);
        let path = sender_status_path(&self.config.state_dir, &key, kind);
        let mut status = SenderStatus::load(&path)
            .unwrap_or(None)
            .unwrap_or_else(|| SenderStatus::new(&key, kind));
        status.last_attempt = Some(Stamp::now());
        status.last_outcome = Some(SyncOutcome::Failed);
        status.last_error = Some(ErrorRecord::from_error(err));
        status.last_counts = Default::default();
        if let Some(dir) = path.parent() {
            let _ = crate::fsutil::create_dir_if_missing(dir, 0o700);
        }
        let _ = status.save(&path);
    }

    fn replica_result(
        &self,
        r: &ReplicaConfig,
        result: Result<SyncReport>,
        noop: bool,
        elapsed: Duration,
    ) -> ReplicaSync {
        let mut item = ReplicaSync {
            host: r.host.clone(),
            port: r.port,
            ok: false,
            outcome: ReplicaOutcome::Failed,
            changes: 0,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            base: None,
            digest: None,
            objects: 0,
            bytes_sent: 0,
            elapsed_ms: elapsed.as_millis() as u64,
            error: None,
            advice: None,
            warnings: Vec::new(),
        };
        match result {
            Ok(rep) => {
                item.ok = true;
                item.outcome = match rep.outcome {
                    SyncOutcome::Committed => ReplicaOutcome::Committed,
                    SyncOutcome::Noop => ReplicaOutcome::Noop,
                    _ => ReplicaOutcome::UpToDate,
                };
                item.changes = rep.changes.len() as u64;
                item.added = rep.changes.added_paths().map(String::from).collect();
                item.changed = rep.changes.changed_paths().map(String::from).collect();
                item.removed = rep.changes.removed_paths().map(String::from).collect();
                item.base = rep.base;
                item.digest = Some(rep.digest);
                item.objects = rep.stats.objects;
                item.bytes_sent = rep.stats.bytes_sent;
                item.warnings = rep.warnings;
                if !noop {
                    let _ = std::fs::remove_file(self.fence_path(r));
                }
            }
            Err(e) => {
                if e.kind() == ErrorKind::Fenced {
                    item.outcome = ReplicaOutcome::Fenced;
                    if !noop {
                        let record = FenceRecord {
                            config_digest: self.config_digest.clone(),
                            at: Stamp::now(),
                            message: e.to_string(),
                        };
                        let path = self.fence_path(r);
                        if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
                            if let Some(dir) = path.parent() {
                                let _ = crate::fsutil::create_dir_if_missing(dir, 0o700);
                            }
                            let _ = crate::cache::write_atomically(&path, &bytes, 0o644);
                        }
                    }
                }
                item.advice = Some(advice(&e, Some(r), &self.config));
                item.error = Some(ErrorRecord::from_error(&e));
            }
        }
        item
    }

    fn log_replica(&self, item: &ReplicaSync, noop: bool) -> String {
        let label = if item.port == crate::ssh::DEFAULT_PORT {
            item.host.clone()
        } else {
            format!("{}:{}", item.host, item.port)
        };
        let digest = item.digest.as_deref().map(short).unwrap_or("-");
        let counts = format!(
            "{} added, {} changed, {} removed",
            item.added.len(),
            item.changed.len(),
            item.removed.len()
        );
        match item.outcome {
            ReplicaOutcome::Committed => {
                let mut msg = format!(
                    "ca to {label}: committed {digest} ({counts}; {} files, {} bytes sent in {} ms); {label} applies it next",
                    item.objects, item.bytes_sent, item.elapsed_ms
                );
                let status = if item.warnings.is_empty() {
                    Status::Success
                } else {
                    msg.push_str("; ");
                    msg.push_str(&item.warnings.join("; "));
                    Status::Warning
                };
                self.log("sync", status, &msg)
            }
            ReplicaOutcome::UpToDate => self.log(
                "sync",
                Status::Success,
                &format!("ca to {label}: already up to date at {digest}"),
            ),
            ReplicaOutcome::Noop => {
                let what = if item.changes == 0 {
                    "nothing would change".to_string()
                } else {
                    let mut paths: Vec<String> = Vec::new();
                    paths.extend(item.added.iter().map(|p| format!("+{p}")));
                    paths.extend(item.changed.iter().map(|p| format!("~{p}")));
                    paths.extend(item.removed.iter().map(|p| format!("-{p}")));
                    let more = paths.len().saturating_sub(10);
                    paths.truncate(10);
                    let mut s = format!("would ship {counts}: {}", paths.join(" "));
                    if more > 0 {
                        s.push_str(&format!(" and {more} more"));
                    }
                    s
                };
                let _ = noop;
                // Noop leaves no trace in syslog: only the report line.
                crate::log::format_line(
                    "sync",
                    Status::Success,
                    &format!("ca to {label} (noop): {what}"),
                )
            }
            ReplicaOutcome::Fenced | ReplicaOutcome::Failed => {
                let err = item
                    .error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("failed");
                self.log(
                    "sync",
                    Status::Failure,
                    &format!(
                        "ca to {label} failed: {err}; {}",
                        item.advice.as_deref().unwrap_or("")
                    ),
                )
            }
        }
    }
}

/// The SSH channel, counting bytes and showing them on a terminal.
struct Progress<'a, S> {
    inner: S,
    label: &'a str,
    show: bool,
    sent: u64,
    last: Instant,
    shown: bool,
}

impl<'a, S> Progress<'a, S> {
    fn new(inner: S, label: &'a str, show: bool) -> Self {
        Progress {
            inner,
            label,
            show,
            sent: 0,
            last: Instant::now(),
            shown: false,
        }
    }

    fn tick(&mut self) {
        if self.show && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            self.shown = true;
            let _ = write!(
                io::stderr(),
                "\r  {}: {:.1} MiB sent ",
                self.label,
                self.sent as f64 / (1024.0 * 1024.0)
            );
        }
    }
}

impl<S> Drop for Progress<'_, S> {
    fn drop(&mut self) {
        if self.shown {
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

impl<S: Read> Read for Progress<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Write> Write for Progress<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        self.tick();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
