//! `watch`: the long-running loop of each host.
//!
//! - Active: inotify on the cadir and the two ssl files, debounced; one sync
//!   round per batch (the last scan updated for the paths the batch names,
//!   then each replica), a full round (a full scan, every replica) every
//!   `verify_interval`, failed replicas retried every `retry_interval`.
//!   The first round, at start, is a full sync: whatever changed while no
//!   watcher ran is shipped then. A batch that overflowed, a new or removed
//!   directory, or a batch no round shipped makes the next round scan
//!   everything. The watcher also serves the `sync` commands run meanwhile
//!   with its configuration file (on `<state_dir>/watch.sock`, see
//!   [`Runner::use_watcher`]): each is a round to the replicas it names,
//!   from the last scan updated for the changes seen so far.
//! - Passive: inotify on `incoming/`; an apply for every batch that brings a
//!   complete transaction (comparing only the live paths it changes), and a
//!   verifying apply (the whole live CA, which repairs drift) at start, on
//!   retries and every `verify_interval`. Transactions appear by one atomic
//!   rename and one apply takes every pending one, so the passive waits at
//!   most [`PASSIVE_DEBOUNCE`] for more events, not the active's debounce.
//! - With `nc.enabled`, the active also polls its classifier every
//!   `nc.interval` seconds and ships the groups only when they changed
//!   (and retries replicas whose last attempt failed); the passive also
//!   watches `nc/incoming/` and applies the groups after the CA.
//!
//! Both reload the configuration file when it changes (and switch loops
//! when the role changed), and stop when the cancel token is tripped.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::control::{Answer, Asked, ControlServer, SOCKET};
use super::{replica_key, replica_label, Runner, SyncRun};
use crate::config::ReplicaConfig;
use crate::log::Status;
use crate::replset::{Rescan, SetScan};
use crate::snapshot::Manifest;
use crate::stage::LatestCache;
use crate::state::Role;
use crate::watch::{Batch, Watcher};
use crate::{ErrorKind, Result};

/// The longest the passive's watcher waits for more events after one.
pub const PASSIVE_DEBOUNCE: Duration = Duration::from_millis(20);

/// Longest wait between two checks of the configuration file.
const CONFIG_CHECK: Duration = Duration::from_secs(2);

/// How long the active watcher waits without a change or a request before
/// it writes the manifest files its rounds left to write (see
/// `Runner::write_shipped`): not during a burst of signings.
const SHIPPED_IDLE: Duration = Duration::from_secs(2);

/// What [`Runner::watch`] did before it stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchSummary {
    /// False when the last round failed.
    pub ok: bool,
    /// The role the loop ran as last.
    pub role: String,
    /// Whether it stopped because it was cancelled.
    pub cancelled: bool,
    /// Sync rounds (active) or apply runs (passive).
    pub rounds: u64,
    /// Rounds caused by change batches.
    pub batch_rounds: u64,
    /// `sync` commands served (active; see [`Runner::use_watcher`]).
    pub requests: u64,
    /// Change batches seen.
    pub batches: u64,
    /// Raw change events coalesced into those batches.
    pub events: u64,
    /// Rounds or replica syncs that failed.
    pub failures: u64,
    /// The last log lines.
    pub lines: Vec<String>,
}

enum Exit {
    Done,
    RoleChanged,
}

impl Runner {
    /// Runs until the cancel token is tripped (or, with `once`, handles
    /// what is pending and returns): on the active, syncs on every change
    /// of the CA; on the passive, applies every transaction that arrives.
    /// Failures are logged and retried, never returned; errors are
    /// returned only when the loop cannot start (no inotify, no cadir).
    pub fn watch(&self, once: bool) -> Result<WatchSummary> {
        let mut me = self.clone();
        let mut summary = WatchSummary {
            ok: true,
            ..WatchSummary::default()
        };
        loop {
            summary.role = me.role().as_str().into();
            me.log(
                "watch",
                Status::Success,
                &format!(
                    "started as {} on {}{}",
                    me.role().as_str(),
                    me.config.certname,
                    if once { " (once)" } else { "" }
                ),
            );
            let exit = match me.role() {
                Role::Active => me.watch_active(once, &mut summary)?,
                Role::Passive => me.watch_passive(once, &mut summary)?,
            };
            match exit {
                Exit::RoleChanged => continue,
                Exit::Done => break,
            }
        }
        summary.cancelled = me.cancel.is_cancelled();
        let lines = me.log_lines();
        summary.lines = lines[lines.len().saturating_sub(50)..].to_vec();
        me.log(
            "watch",
            Status::Success,
            &format!(
                "stopped: {} rounds ({} for {} change batches of {} events), {} failures",
                summary.rounds,
                summary.batch_rounds,
                summary.batches,
                summary.events,
                summary.failures
            ),
        );
        Ok(summary)
    }

    fn ca_watcher(&self) -> Result<Watcher> {
        let paths = self.ca_paths()?;
        let mut w = Watcher::new()?;
        w.add_tree(&paths.cadir)?;
        w.add_dir(&paths.ssldir)?;
        let certs = paths.ssldir.join("certs");
        if certs.is_dir() {
            w.add_dir(&certs)?;
        }
        Ok(w)
    }

    /// The replicas the watcher may contact now.
    fn eligible(&self) -> Vec<ReplicaConfig> {
        self.config
            .replicas
            .iter()
            .filter(|r| !self.is_fenced_now(r))
            .cloned()
            .collect()
    }

    fn announce_fenced(&self) {
        for r in &self.config.replicas {
            if self.is_fenced_now(r) {
                let at = self.fence_record(r).map(|f| f.at.time).unwrap_or_default();
                self.log(
                    "watch",
                    Status::Warning,
                    &format!(
                        "not contacting {}: it refused this host as fenced (promoted) at {at}; it is retried once the configuration file changes",
                        replica_label(r)
                    ),
                );
            }
        }
    }

    /// One sync round to `replicas`, from `scan` when given (else a full
    /// scan), `shipped` the manifest the last round shipped; updates the
    /// retry schedule. Returns the scan shipped (none when the round failed
    /// before one was made, or had no replica).
    fn sync_round(
        &self,
        replicas: &[ReplicaConfig],
        scan: Option<SetScan>,
        shipped: Option<&Manifest>,
        retry_at: &mut HashMap<String, Instant>,
        summary: &mut WatchSummary,
    ) -> Option<SetScan> {
        if replicas.is_empty() {
            return None;
        }
        let whole = scan.is_none();
        self.run_round(replicas, false, scan, shipped, retry_at, summary)
            .ok()
            .map(|(_, scan)| self.kept_scan(scan, whole))
    }

    /// The scan a round shipped, to keep for the next: when the round
    /// scanned the whole CA (`whole`), with the large files that rescans
    /// keep read now (see `ReplicatedSet::with_tails`); a rescan's already
    /// has them.
    fn kept_scan(&self, scan: SetScan, whole: bool) -> SetScan {
        if !whole {
            return scan;
        }
        match self.replicated_set() {
            Ok(set) => set.with_tails(scan),
            Err(_) => scan,
        }
    }

    /// [`sync_round`](Self::sync_round) in `noop` mode or not, returning
    /// the run as well; a noop round is neither counted nor scheduled.
    fn run_round(
        &self,
        replicas: &[ReplicaConfig],
        noop: bool,
        scan: Option<SetScan>,
        shipped: Option<&Manifest>,
        retry_at: &mut HashMap<String, Instant>,
        summary: &mut WatchSummary,
    ) -> Result<(SyncRun, SetScan)> {
        let result = self.sync_replicas_from(replicas, noop, scan, shipped);
        if noop {
            return result;
        }
        summary.rounds += 1;
        let retry = Duration::from_secs(self.config.watch.retry_interval);
        match &result {
            Ok((run, _)) => {
                summary.ok = run.ok;
                for (r, item) in replicas.iter().zip(&run.replicas) {
                    let key = replica_key(r);
                    if item.ok || item.outcome == super::ReplicaOutcome::Fenced {
                        retry_at.remove(&key);
                    } else {
                        retry_at.insert(key, Instant::now() + retry);
                    }
                    if !item.ok {
                        summary.failures += 1;
                    }
                }
            }
            Err(e) => {
                summary.ok = false;
                if e.kind() != ErrorKind::Cancelled {
                    summary.failures += 1;
                }
                for r in replicas {
                    retry_at.insert(replica_key(r), Instant::now() + retry);
                }
            }
        }
        result
    }

    /// The scan a round ships, from `previous` (the last one), and
    /// `previous` back when the round scans everything: no scan when there
    /// is none or the round is `full`, `previous` itself when it is
    /// `current` (it holds `batch` already), else `previous` updated for the
    /// paths `batch` names (no scan when only a full scan can tell). A scan
    /// made from `previous` records what changed since it
    /// ([`SetScan::since`]), which is all a sender needs of it.
    fn scan_for_round(
        &self,
        previous: Option<SetScan>,
        batch: &Batch,
        current: bool,
        full: bool,
    ) -> (Option<SetScan>, Option<SetScan>) {
        let prev = match previous {
            Some(prev) if !full => prev,
            previous => return (None, previous),
        };
        if current {
            return (Some(prev.unchanged()), None);
        }
        let Ok(set) = self.replicated_set() else {
            return (None, Some(prev));
        };
        match set.rescan_from(prev, &batch.paths) {
            Rescan::Updated(scan) => (Some(scan), None),
            Rescan::Full(prev) => (None, prev),
        }
    }

    /// Serves the `sync` commands in `asked`, with `batch` the changes seen
    /// since the last round: each is a round to the replicas it names (all
    /// of them, fenced ones too, as a `sync` run here would), from
    /// `last_scan` updated for the batch; `last_scan` becomes the scan it
    /// shipped. Returns the replicas (keys) that got the batch's changes,
    /// and whether `last_scan` now includes them.
    fn serve_requests(
        &self,
        asked: Vec<Asked>,
        batch: &Batch,
        last_scan: &mut Option<SetScan>,
        retry_at: &mut HashMap<String, Instant>,
        summary: &mut WatchSummary,
    ) -> (Vec<String>, bool) {
        let mut served: Vec<String> = Vec::new();
        let mut rescanned = false;
        for asked in asked {
            let request = &asked.request;
            if request.config_digest != self.config_digest {
                asked.answer(Answer::Declined(
                    "the watcher runs with another configuration file".into(),
                ));
                continue;
            }
            let replicas = match self.select(request.replica.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    asked.answer(Answer::from_result(Err(e)));
                    continue;
                }
            };
            summary.requests += 1;
            let noop = request.noop;
            let previous = last_scan.take();
            // (After a first request, the batch is in the last scan already.)
            let full = (batch.overflow || batch.root_gone) && !rescanned;
            let (scan, previous) = self.scan_for_round(previous, batch, rescanned, full);
            let whole = scan.is_none();
            let shipped = previous.as_ref().map(|p| &p.manifest);
            let result = self.run_round(&replicas, noop, scan, shipped, retry_at, summary);
            if !noop {
                served.extend(replicas.iter().map(replica_key));
            }
            match result {
                Ok((run, scan)) => {
                    rescanned = true;
                    asked.answer(Answer::Run(Box::new(run)));
                    *last_scan = Some(self.kept_scan(scan, whole));
                }
                Err(e) => {
                    rescanned = false;
                    asked.answer(Answer::from_result(Err(e)));
                }
            }
        }
        (served, rescanned)
    }

    /// One classifier round: prepares the dump and ships it to `replicas`
    /// when it changed (or to every one of them with `all`, and to those
    /// whose last attempt failed). Returns the replicas to retry.
    fn nc_round(
        &self,
        replicas: &[ReplicaConfig],
        all: bool,
        retry: &[String],
        summary: &mut WatchSummary,
    ) -> Vec<String> {
        if !self.config.nc.enabled || replicas.is_empty() {
            return Vec::new();
        }
        let run = self.sync_nc(replicas, false, !all, retry);
        let mut failed: Vec<String> = Vec::new();
        if run.prepared.is_none() {
            summary.failures += 1;
            // Nothing was shipped: everyone pending stays pending.
            return retry.to_vec();
        }
        for item in &run.replicas {
            if !item.ok && item.outcome != "fenced" {
                summary.failures += 1;
                failed.push(if item.port == crate::ssh::DEFAULT_PORT {
                    item.host.clone()
                } else {
                    format!("{}_{}", item.host, item.port)
                });
            }
        }
        failed
    }

    fn watch_active(&mut self, once: bool, summary: &mut WatchSummary) -> Result<Exit> {
        if self.config.replicas.is_empty() {
            self.log(
                "watch",
                Status::Warning,
                "no replicas are configured; watching anyway (add one to `replicas`)",
            );
        }
        // Watch first, so that changes during the first round are seen.
        let mut watcher = self.ca_watcher()?;
        // One SSH session per replica serves round after round.
        self.keep_sessions(true);
        let control = if once { None } else { self.control_server() };
        let exit = self.watch_active_loop(&mut watcher, once, control.as_ref(), summary);
        drop(control);
        self.keep_sessions(false);
        exit
    }

    /// Starts serving `sync` commands on `<state_dir>/watch.sock` (none,
    /// with a warning, when that fails: they then scan for themselves).
    fn control_server(&self) -> Option<ControlServer> {
        let path = self.config.state_dir.join(SOCKET);
        let started = crate::fsutil::create_dir_if_missing(&self.config.state_dir, 0o700)
            .and_then(|()| ControlServer::start(path.clone()));
        match started {
            Ok(control) => Some(control),
            Err(e) => {
                self.log(
                    "watch",
                    Status::Warning,
                    &format!(
                        "not serving sync commands on {}: {e}; a `pe_failover sync` scans the CA itself",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// The active watcher's rounds until it stops; the manifest files its
    /// rounds left to write are written then (see `Runner::write_shipped`).
    fn watch_active_loop(
        &mut self,
        watcher: &mut Watcher,
        once: bool,
        control: Option<&ControlServer>,
        summary: &mut WatchSummary,
    ) -> Result<Exit> {
        // The last scan shipped: a batch of events updates it by reading
        // only the paths they name (see ReplicatedSet::rescan_paths).
        let mut last_scan = None;
        let exit = self.watch_active_rounds(watcher, once, control, summary, &mut last_scan);
        self.write_shipped(last_scan.as_ref());
        exit
    }

    fn watch_active_rounds(
        &mut self,
        watcher: &mut Watcher,
        once: bool,
        control: Option<&ControlServer>,
        summary: &mut WatchSummary,
        last_scan: &mut Option<SetScan>,
    ) -> Result<Exit> {
        let waker = control.map(ControlServer::waker);
        self.announce_fenced();
        let mut retry_at: HashMap<String, Instant> = HashMap::new();
        let eligible = self.eligible();
        *last_scan = self.sync_round(&eligible, None, None, &mut retry_at, summary);
        let mut nc_retry = self.nc_round(&eligible, true, &[], summary);
        if once {
            return Ok(Exit::Done);
        }
        let verify = Duration::from_secs(self.config.watch.verify_interval);
        let mut next_verify = Instant::now() + verify;
        let nc_every = |me: &Runner| Duration::from_secs(me.config.nc.interval.max(1));
        let mut next_nc = Instant::now() + nc_every(self);
        loop {
            if self.cancel.is_cancelled() {
                return Ok(Exit::Done);
            }
            if self.reload_if_changed() {
                if self.role() != Role::Active {
                    return Ok(Exit::RoleChanged);
                }
                match self.ca_watcher() {
                    Ok(w) => *watcher = w,
                    Err(e) => {
                        self.log("watch", Status::Failure, &format!("{e}"));
                    }
                }
                // Sessions opened under the old configuration are closed.
                self.write_shipped(last_scan.as_ref());
                self.keep_sessions(true);
                self.announce_fenced();
                retry_at.clear();
                let eligible = self.eligible();
                *last_scan = self.sync_round(&eligible, None, None, &mut retry_at, summary);
                nc_retry = self.nc_round(&eligible, true, &[], summary);
                next_verify = Instant::now() + verify;
                next_nc = Instant::now() + nc_every(self);
                continue;
            }
            let now = Instant::now();
            if self.config.nc.enabled && now >= next_nc {
                let eligible = self.eligible();
                nc_retry = self.nc_round(&eligible, false, &nc_retry, summary);
                next_nc = Instant::now() + nc_every(self);
            }
            let now = Instant::now();
            let nc_due = if self.config.nc.enabled {
                next_nc
            } else {
                next_verify
            };
            let due = retry_at
                .values()
                .copied()
                .chain([next_verify, nc_due])
                .min()
                .unwrap_or(next_verify);
            let mut timeout = due.saturating_duration_since(now).min(CONFIG_CHECK);
            let shipped_due = self.has_shipped_due();
            if shipped_due {
                timeout = timeout.min(SHIPPED_IDLE);
            }
            let waited =
                watcher.wait_or_woken(self.config.debounce(), Some(timeout), &self.cancel, waker);
            let batch = match waited {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Cancelled => return Ok(Exit::Done),
                Err(e) => {
                    self.log(
                        "watch",
                        Status::Failure,
                        &format!("watching the CA failed: {e}; watching again"),
                    );
                    std::thread::sleep(Duration::from_millis(500));
                    *watcher = self.ca_watcher()?;
                    Batch {
                        overflow: true,
                        ..Batch::default()
                    }
                }
            };
            if batch.root_gone {
                // The cadir was replaced (a restore, a migration): watch the
                // new one.
                *watcher = self.ca_watcher()?;
            }
            // `sync` commands first: they wait. Replicas they shipped the
            // batch to need no other round for it.
            let asked = control.map(ControlServer::pending).unwrap_or_default();
            if shipped_due && batch.is_empty() && asked.is_empty() {
                // Idle: the manifest files the last rounds left to write.
                self.write_shipped(last_scan.as_ref());
            }
            let (served, consumed) = if asked.is_empty() {
                (Vec::new(), false)
            } else {
                self.serve_requests(asked, &batch, last_scan, &mut retry_at, summary)
            };
            let now = Instant::now();
            let mut targets: Vec<ReplicaConfig> = Vec::new();
            let eligible = self.eligible();
            if !batch.is_empty() {
                summary.batches += 1;
                summary.events += batch.events;
                targets = eligible
                    .iter()
                    .filter(|r| retry_at.get(&replica_key(r)).is_none_or(|t| *t <= now))
                    .filter(|r| !served.contains(&replica_key(r)))
                    .cloned()
                    .collect();
                if !targets.is_empty() {
                    summary.batch_rounds += 1;
                }
            }
            // (A scan made for a `sync` command already holds the batch.)
            let mut full = (batch.overflow || batch.root_gone) && !consumed;
            if now >= next_verify {
                targets = eligible.clone();
                next_verify = now + verify;
                full = true;
            }
            for r in &eligible {
                let key = replica_key(r);
                if retry_at.get(&key).is_some_and(|t| *t <= now)
                    && !targets.iter().any(|t| replica_key(t) == key)
                {
                    targets.push(r.clone());
                }
            }
            // A batch no round ships leaves the last scan behind: the next
            // round scans everything.
            let previous = last_scan.take();
            if targets.is_empty() {
                *last_scan = previous.filter(|_| batch.is_empty() || consumed);
                continue;
            }
            // The replicas the last round reached hold its manifest: the
            // sender need not read it back from disk.
            let (scan, previous) = self.scan_for_round(previous, &batch, consumed, full);
            let shipped = previous.as_ref().map(|p| &p.manifest);
            *last_scan = self.sync_round(&targets, scan, shipped, &mut retry_at, summary);
        }
    }

    /// One apply; `verify` compares the whole live CA (at start, on the
    /// verification tick and on retries), otherwise only what new
    /// transactions change.
    fn apply_round(&self, summary: &mut WatchSummary, verify: bool) -> Option<Duration> {
        summary.rounds += 1;
        match self.apply_with(false, verify) {
            Ok(run) if run.ok => {
                summary.ok = true;
                None
            }
            Ok(run) => {
                // The classifier part failed (logged); the CA is applied.
                // Retry at the classifier's pace, or (refused: it needs a
                // person) at the verification interval.
                summary.ok = false;
                summary.failures += 1;
                let refused = run
                    .nc
                    .as_ref()
                    .and_then(|nc| nc.error.as_ref())
                    .is_some_and(|e| e.kind == ErrorKind::Refused.as_str());
                let secs = if refused {
                    self.config.watch.verify_interval
                } else {
                    self.config
                        .nc
                        .interval
                        .max(self.config.watch.retry_interval)
                };
                Some(Duration::from_secs(secs))
            }
            Err(e) => {
                summary.ok = false;
                if e.kind() == ErrorKind::Cancelled {
                    return None;
                }
                summary.failures += 1;
                // A refused apply needs a person: do not hammer the log.
                let secs = if e.kind() == ErrorKind::Refused {
                    self.config.watch.verify_interval
                } else {
                    self.config.watch.retry_interval
                };
                Some(Duration::from_secs(secs))
            }
        }
    }

    fn watch_passive(&mut self, once: bool, summary: &mut WatchSummary) -> Result<Exit> {
        // The latest snapshot stays in memory from round to round.
        self.latest = Some(LatestCache::new());
        let exit = self.watch_passive_loop(once, summary);
        self.latest = None;
        exit
    }

    fn watch_passive_loop(&mut self, once: bool, summary: &mut WatchSummary) -> Result<Exit> {
        let incoming = self.config.state_dir.join("incoming");
        let nc_incoming = self.config.state_dir.join("nc").join("incoming");
        let passive_watcher = |me: &Runner| -> Result<Watcher> {
            crate::fsutil::create_dir_if_missing(&incoming, 0o700)?;
            let mut watcher = Watcher::new()?;
            watcher.add_dir(&incoming)?;
            if me.config.nc.enabled {
                if let Some(nc) = nc_incoming.parent() {
                    crate::fsutil::create_dir_if_missing(nc, 0o755)?;
                }
                crate::fsutil::create_dir_if_missing(&nc_incoming, 0o700)?;
                watcher.add_dir(&nc_incoming)?;
            }
            Ok(watcher)
        };
        let mut watcher = passive_watcher(self)?;
        let mut retry_at = self.apply_round(summary, true).map(|d| Instant::now() + d);
        if once {
            return Ok(Exit::Done);
        }
        let verify = Duration::from_secs(self.config.watch.verify_interval);
        let mut next_verify = Instant::now() + verify;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(Exit::Done);
            }
            if self.reload_if_changed() {
                if self.role() != Role::Passive {
                    return Ok(Exit::RoleChanged);
                }
                watcher = passive_watcher(self)?;
                // The state directory may have moved.
                self.latest = Some(LatestCache::new());
                retry_at = Some(Instant::now());
            }
            let now = Instant::now();
            let due = retry_at.map_or(next_verify, |r| r.min(next_verify));
            let timeout = due.saturating_duration_since(now).min(CONFIG_CHECK);
            let batch = match watcher.wait(
                crate::watch::Debounce {
                    quiet: self.config.debounce().quiet.min(PASSIVE_DEBOUNCE),
                    max_delay: self.config.debounce().max_delay.min(PASSIVE_DEBOUNCE),
                },
                Some(timeout),
                &self.cancel,
            ) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Cancelled => return Ok(Exit::Done),
                Err(e) => {
                    self.log(
                        "watch",
                        Status::Failure,
                        &format!(
                            "watching {} failed: {e}; watching again",
                            incoming.display()
                        ),
                    );
                    std::thread::sleep(Duration::from_millis(500));
                    watcher = passive_watcher(self)?;
                    Batch {
                        overflow: true,
                        ..Batch::default()
                    }
                }
            };
            if batch.root_gone {
                watcher = passive_watcher(self)?;
            }
            let relevant =
                batch.overflow || batch.root_gone || batch.paths.iter().any(|p| is_transaction(p));
            if !batch.is_empty() {
                summary.batches += 1;
                summary.events += batch.events;
            }
            let now = Instant::now();
            let periodic = now >= next_verify;
            let retry = retry_at.is_some_and(|t| t <= now);
            if relevant || periodic || retry {
                if relevant {
                    summary.batch_rounds += 1;
                }
                if periodic {
                    next_verify = now + verify;
                }
                retry_at = self
                    .apply_round(summary, periodic || retry)
                    .map(|d| Instant::now() + d);
            }
        }
    }
}

/// Whether a path under `incoming/` names a complete transaction (not a
/// `.partial`, the receiver's status file, its lock or a temporary file).
fn is_transaction(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with(".partial")
        && !name.ends_with(".json")
        && !name.ends_with(".lock")
        && !name.contains(".tmp")
}
