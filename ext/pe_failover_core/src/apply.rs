//! The applier (root, on the passive primary): stages received
//! transactions into snapshots, then brings the live CA directory and the
//! two replicated ssl files to the latest snapshot, file by file and
//! atomically.
//!
//! One [`Applier::run`]:
//!
//! 1. refuses to do anything on a promoted host (role `active`:
//!    [`ErrorKind::Fenced`]);
//! 2. takes the complete transactions in chain order (see [`crate::stage`]),
//!    re-verifies each (manifest digest, every object's size and SHA-256),
//!    builds `snapshots/<digest>/` with hard links to the previous snapshot
//!    for unchanged contents, switches `snapshots/latest`, removes the
//!    transaction, and prunes old snapshots (default: keep 10);
//! 3. compares the latest snapshot with the live files ([`plan_live`]) and
//!    refuses ([`ErrorKind::Refused`], unless forced) a snapshot without
//!    the CA certificate or key, or one that would delete more than the
//!    allowed share of the live CA files;
//! 4. writes each changed file as a temporary file in the same directory
//!    (owner, mode, modification time and, when the entry it replaces has
//!    one, that entry's SELinux label set; synced), renames it into place,
//!    then fixes modes and owners, then deletes; every live entry is
//!    reached through its directory, opened without following links, so
//!    a directory swapped for a symlink meanwhile leads nowhere (see
//!    the `beneath` module);
//! 5. reloads puppetserver when a CRL changed (a failed reload is a warning);
//! 6. records `applied.json` and `status.json`.
//!
//! Certificates under the live `ca/signed/` that the active primary never
//! sent (the passive signed them) are kept and reported as divergence.
//! The replica's own host files (`certs/<certname>.pem`, `private_keys/`,
//! `public_keys/`) are never touched: only the cadir, `<ssldir>/crl.pem`
//! and `<ssldir>/certs/ca.pem` are written.
//!
//! An apply that dies half-way leaves every file either old or new (never
//! torn) and is finished by the next run, which compares with the live
//! files again. So is one whose compare missed what it had to delete (a
//! directory moved away and back meanwhile): a snapshot is recorded as
//! applied only once every path it removed is gone.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{lchown, symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::beneath::Beneath;
use crate::cache::write_atomically;
use crate::cancel::CancelToken;
use crate::exclude::Excludes;
use crate::fsutil::{self, FileLock};
use crate::replset::{
    check_complete, signed_certname, CaPaths, CA_CRL, CA_ROOT, SSL_CERTS, SSL_CRL, SSL_ROOT,
    TEMP_PREFIX,
};
use crate::snapshot::{mtime_ns, Entry, EntryKind, Manifest, Scanner};
use crate::stage::{
    build_snapshot, chain, latest_snapshot, latest_snapshot_meta, list_txns, manifest_on_disk,
    open_snapshot, prepare_snapshot, prune_snapshots, republish_staged, switch_latest, LatestCache,
    PendingTxn, Snapshot, SnapshotMeta, StateDir, Stored,
};
use crate::state::{ApplyCounts, DigestAt, Divergence, ErrorRecord, ReplicaStatus, Role, Stamp};
use crate::{Error, ErrorKind, Result};

/// The reload command run when a CRL changed, by default.
pub const DEFAULT_RELOAD: [&str; 3] = ["systemctl", "reload", "pe-puppetserver"];

/// Largest live `crl.pem` or `certs/ca.pem` the applier reads to compare.
const LIVE_SSL_LIMIT: u64 = 256 * 1024 * 1024;

/// Who owns the files the applier writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// A replaced file keeps the owner of the file it replaces; a new one
    /// gets the owner of its directory. Owners are not corrected.
    Inherit,
    /// Every written or managed entry is owned by `uid:gid`, and entries
    /// with another owner are corrected.
    Fixed {
        /// Owner user id (e.g. `pe-puppet`'s).
        uid: u32,
        /// Owner group id.
        gid: u32,
    },
}

/// Hooks called while the applier works (no-ops by default). They may trip
/// the applier's [`CancelToken`] to stop it.
pub trait ApplyProgress: Send + Sync {
    /// A transaction was staged into a snapshot.
    fn staged(&self, _txn: &str, _digest: &str) {}
    /// A live entry (manifest path) was written, corrected or deleted.
    fn live_entry(&self, _path: &str) {}
    /// A live entry (manifest path) of another kind than the snapshot's (a
    /// symlink where a directory belongs, say) is about to be removed to
    /// make way for the snapshot's.
    fn replacing(&self, _path: &str) {}
}

struct NoProgress;

impl ApplyProgress for NoProgress {}

/// A transaction staged into a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StagedTxn {
    /// Transaction id.
    pub txn: String,
    /// Digest of the snapshot built from it.
    pub digest: String,
    /// Files whose contents the snapshot store already held.
    pub reused: u64,
    /// Files copied and verified.
    pub copied: u64,
}

/// A transaction removed without being staged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscardedTxn {
    /// Transaction id (or directory name).
    pub txn: String,
    /// Why.
    pub reason: String,
}

/// The received transactions of `kind` that extend the chain from `start`
/// (the digest of the latest snapshot), and their order. Broken
/// transactions and stale ones (computed against a digest not on the chain)
/// are removed and recorded in `discarded`.
pub(crate) fn pending_chain(
    state: &StateDir,
    kind: &str,
    start: Option<&str>,
    discarded: &mut Vec<DiscardedTxn>,
) -> Result<(Vec<PendingTxn>, Vec<usize>)> {
    let listing = list_txns(state, kind)?;
    for broken in listing.broken {
        fsutil::remove_any(&broken.dir)?;
        discarded.push(DiscardedTxn {
            txn: broken
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            reason: broken.error.to_string(),
        });
    }
    let txns = listing.complete;
    let (order, stale) = chain(start, &txns);
    for i in stale {
        fsutil::remove_any(&txns[i].dir)?;
        discarded.push(DiscardedTxn {
            txn: txns[i].meta.txn.clone(),
            reason: format!(
                "stale: computed against {}, which is not on this replica's chain",
                txns[i].meta.base.as_deref().unwrap_or("nothing")
            ),
        });
    }
    Ok((txns, order))
}

/// What one apply did to the live directories, by manifest path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveChanges {
    /// Files and symlinks written (created or replaced).
    pub written: Vec<String>,
    /// Directories created.
    pub dirs_created: Vec<String>,
    /// Entries whose mode or owner only was corrected.
    pub metadata_fixed: Vec<String>,
    /// Files and symlinks deleted.
    pub deleted: Vec<String>,
    /// Directories removed.
    pub dirs_removed: Vec<String>,
    /// Stale temporary files of an interrupted apply removed.
    pub temp_removed: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Replaced entries whose SELinux label the new ones took over (none
    /// where SELinux never ran).
    pub labels_kept: u64,
}

/// What one [`Applier::run`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    /// Transactions staged, in order.
    pub staged: Vec<StagedTxn>,
    /// Transactions removed without being staged (stale or corrupt).
    pub discarded: Vec<DiscardedTxn>,
    /// Digest of the latest snapshot after the run.
    pub staged_digest: Option<String>,
    /// Digest the live directories match after the run.
    pub applied_digest: Option<String>,
    /// Changes to the live directories.
    pub live: LiveChanges,
    /// Certnames of the replica-only certificates kept in `ca/signed/`.
    pub kept: Vec<String>,
    /// Whether the reload command ran successfully.
    pub reloaded: bool,
    /// Problems that did not fail the run.
    pub warnings: Vec<String>,
    /// Snapshots removed by pruning.
    pub pruned: Vec<String>,
    /// Whether the whole live CA was compared with the snapshot (so
    /// [`kept`](Self::kept) lists every replica-only certificate), rather
    /// than only the paths the new transactions changed.
    pub verified: bool,
    /// Wall-clock duration.
    pub elapsed: Duration,
}

/// The changes that bring the live files to a target manifest (see
/// [`plan_live`]). Paths are manifest paths (`ca/...`, `ssl/...`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LivePlan {
    /// Directories to create, parents first.
    pub create_dirs: Vec<Entry>,
    /// Live entries of another kind than the target's, removed (directories
    /// recursively, only if the compare found a directory) right before the
    /// target entry is written.
    pub replace: Vec<String>,
    /// Files and symlinks to write, in path order.
    pub write: Vec<Entry>,
    /// Entries whose mode (or owner, with [`Owner::Fixed`]) differ.
    pub fix_metadata: Vec<Entry>,
    /// Files and symlinks to delete, deepest first.
    pub delete: Vec<String>,
    /// Directories to remove, deepest first (kept if not empty).
    pub remove_dirs: Vec<String>,
    /// Replica-only certificates kept (`ca/signed/<certname>.pem`).
    pub kept: Vec<String>,
    /// Temporary files and directories of an interrupted apply (a
    /// directory is removed with all it holds).
    pub temp_files: Vec<String>,
    /// Regular files in the live CA directory (the deletion guard's base).
    pub live_files: u64,
}

impl LivePlan {
    /// Whether the live files already match.
    pub fn is_empty(&self) -> bool {
        self.create_dirs.is_empty()
            && self.replace.is_empty()
            && self.write.is_empty()
            && self.fix_metadata.is_empty()
            && self.delete.is_empty()
            && self.remove_dirs.is_empty()
            && self.temp_files.is_empty()
    }
}

/// Plans the changes that bring `live` (a manifest of the live files, in the
/// replicated namespace) to `target`.
///
/// - Paths whose cadir-relative part matches `excludes` are left alone.
/// - `ssl/...` entries are written, never deleted; the synthetic `ssl` and
///   `ssl/certs` directories are never managed.
/// - A live `ca/signed/<name>` missing from `target` is deleted only if
///   `previous` (the manifest last applied, and any apply in progress) had
///   it, i.e. the active primary removed it; otherwise the replica made it,
///   and it is kept (`kept`).
/// - Files compare by kind, contents and symlink target; equal ones by
///   mode, and by owner with [`Owner::Fixed`].
pub fn plan_live(
    target: &Manifest,
    live: &Manifest,
    previous: &[&Manifest],
    excludes: &Excludes,
    owner: Owner,
) -> Result<LivePlan> {
    let mut plan = LivePlan::default();
    let excluded = |path: &str| {
        path.strip_prefix("ca/")
            .is_some_and(|rel| excludes.is_excluded(rel))
    };
    let unmanaged = |path: &str| path == SSL_ROOT || path == SSL_CERTS;
    let meta_differs = |t: &Entry, l: &Entry| {
        let mode = t.kind != EntryKind::Symlink && t.mode != l.mode;
        let own = match owner {
            Owner::Fixed { uid, gid } => l.uid != uid || l.gid != gid,
            Owner::Inherit => false,
        };
        mode || own
    };
    let mut t_iter = target.entries().iter().peekable();
    let mut l_iter = live.entries().iter().peekable();
    loop {
        let order = match (t_iter.peek(), l_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(t), Some(l)) => t.path.cmp(&l.path),
        };
        let (t, l) = match order {
            std::cmp::Ordering::Less => (t_iter.next(), None),
            std::cmp::Ordering::Greater => (None, l_iter.next()),
            std::cmp::Ordering::Equal => (t_iter.next(), l_iter.next()),
        };
        let path = t.or(l).map(|e| e.path.as_str()).unwrap_or_default();
        // What an interrupted apply left (never in a target): a temporary
        // file, or a directory being filled, removed whole; what such a
        // directory holds is neither counted nor planned.
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        if t.is_none() && dirs.split('/').any(|n| n.starts_with(TEMP_PREFIX)) {
            continue;
        }
        if let Some(l) = l {
            if l.kind == EntryKind::File && path.starts_with("ca/") && !excluded(path) {
                plan.live_files += 1;
            }
        }
        if t.is_none() && name.starts_with(TEMP_PREFIX) {
            plan.temp_files.push(path.to_string());
            continue;
        }
        if unmanaged(path) || excluded(path) {
            continue;
        }
        match (t, l) {
            (Some(t), None) => {
                if t.kind == EntryKind::Dir {
                    plan.create_dirs.push(t.clone());
                } else {
                    plan.write.push(t.clone());
                }
            }
            (Some(t), Some(l)) => {
                if t.kind != l.kind {
                    plan.replace.push(path.to_string());
                    if t.kind == EntryKind::Dir {
                        plan.create_dirs.push(t.clone());
                    } else {
                        plan.write.push(t.clone());
                    }
                    continue;
                }
                let content_differs = match t.kind {
                    EntryKind::File => t.sha256 != l.sha256,
                    EntryKind::Symlink => t.target != l.target,
                    EntryKind::Dir => false,
                };
                if content_differs {
                    plan.write.push(t.clone());
                } else if meta_differs(t, l) {
                    plan.fix_metadata.push(t.clone());
                }
            }
            (None, Some(l)) => {
                if path.starts_with("ssl/") {
                    continue;
                }
                if l.kind == EntryKind::File
                    && signed_certname(path).is_some()
                    && !previous.iter().any(|p| p.get(path).is_some())
                {
                    plan.kept.push(path.to_string());
                } else if l.kind == EntryKind::Dir {
                    plan.remove_dirs.push(path.to_string());
                } else {
                    plan.delete.push(path.to_string());
                }
            }
            (None, None) => {}
        }
    }
    for dir in &plan.replace {
        let prefix = format!("{dir}/");
        if let Some(k) = plan.kept.iter().find(|k| k.starts_with(&prefix)) {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "the snapshot replaces the directory {dir} with a file, which would delete the replica-only certificate {k}; move it away first"
                ),
            ));
        }
    }
    plan.delete.reverse();
    plan.remove_dirs.reverse();
    Ok(plan)
}

/// Stages received transactions and applies the latest snapshot to the
/// live directories of a passive primary.
///
/// ```no_run
/// use pe_failover_core::apply::{Applier, Owner};
/// use pe_failover_core::replset::CaPaths;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// let live = CaPaths {
///     cadir: "/etc/puppetlabs/puppetserver/ca".into(),
///     ssldir: "/etc/puppetlabs/puppet/ssl".into(),
/// };
/// let report = Applier::new("/opt/pe_failover/state", live)
///     .owner(Owner::Fixed { uid: 998, gid: 998 })
///     .role_file("/opt/puppetlabs/facter/facts.d/pe_failover.yaml")
///     .run()?;
/// println!("{} written, kept {:?}", report.live.written.len(), report.kept);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Applier {
    state: StateDir,
    live: CaPaths,
    owner: Owner,
    keep: usize,
    max_delete_share: f64,
    delete_allowance: u64,
    force: bool,
    reload: Vec<String>,
    role: Option<Role>,
    role_file: Option<PathBuf>,
    excludes: Excludes,
    cancel: CancelToken,
    progress: Arc<dyn ApplyProgress>,
    lock_wait: Duration,
    racy_window: Option<Duration>,
    verify: bool,
    latest_cache: Option<LatestCache>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("state", &self.state)
            .field("live", &self.live)
            .field("owner", &self.owner)
            .field("keep", &self.keep)
            .field("max_delete_share", &self.max_delete_share)
            .field("delete_allowance", &self.delete_allowance)
            .field("force", &self.force)
            .field("reload", &self.reload)
            .field("role", &self.role)
            .field("role_file", &self.role_file)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// `applied.json`, plus the snapshot an interrupted apply was bringing the
/// live files to (its paths count as sent by the active primary).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedRecord {
    applied: Option<DigestAt>,
    in_progress: Option<String>,
    /// Where the live CA directory led when it was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cadir: Option<CadirPin>,
}

/// The configured live CA directory and the real directory it led to
/// (the same unless it is a symlink).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CadirPin {
    configured: PathBuf,
    resolved: PathBuf,
}

impl Applier {
    /// An applier for the state directory `state_dir` and the live
    /// directories `live`. Defaults: [`Owner::Inherit`], keep 10 snapshots,
    /// refuse to delete more than 10 % of the live CA files (5 files are
    /// always allowed), not forced, reload with [`DEFAULT_RELOAD`], no role
    /// file, no exclusions, waits up to 60 s for another applier, compares
    /// only what the new transactions changed (see [`verify`](Self::verify)).
    pub fn new(state_dir: impl Into<PathBuf>, live: CaPaths) -> Self {
        Applier {
            state: StateDir::new(state_dir),
            live,
            owner: Owner::Inherit,
            keep: 10,
            max_delete_share: 0.10,
            delete_allowance: 5,
            force: false,
            reload: DEFAULT_RELOAD.iter().map(|s| s.to_string()).collect(),
            role: None,
            role_file: None,
            excludes: Excludes::default(),
            cancel: CancelToken::new(),
            progress: Arc::new(NoProgress),
            lock_wait: Duration::from_secs(60),
            racy_window: None,
            verify: false,
            latest_cache: None,
        }
    }

    /// Whether to compare the whole live CA with the latest snapshot (and
    /// repair every difference, report replica-only certificates) instead
    /// of only the paths the new transactions changed. Without it, an apply
    /// with nothing new touches nothing, and one with new transactions reads
    /// only the live files they change: drift elsewhere (a file edited by
    /// hand on the replica) waits for the next verifying run (the watcher's
    /// start, its `verify_interval`, a retry, or `pe_failover apply`). An
    /// interrupted apply, a first one and a forced one always compare
    /// everything.
    pub fn verify(mut self, yes: bool) -> Self {
        self.verify = yes;
        self
    }

    /// Who owns written files. Default: [`Owner::Inherit`].
    pub fn owner(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// How many snapshots to keep (at least 1; the latest, the applied one
    /// and one being applied are always kept). Default: 10.
    pub fn keep_snapshots(mut self, n: usize) -> Self {
        self.keep = n.max(1);
        self
    }

    /// The share of live CA files an apply may delete without `force`.
    /// Default: 0.10.
    pub fn max_delete_share(mut self, share: f64) -> Self {
        self.max_delete_share = share.clamp(0.0, 1.0);
        self
    }

    /// How many deletions are always allowed, whatever the share (so that
    /// cleaning a certificate on a small CA is not refused). Default: 5.
    pub fn delete_allowance(mut self, files: u64) -> Self {
        self.delete_allowance = files;
        self
    }

    /// Overrides the guards (incomplete snapshot, too many deletions).
    /// Default: false.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }

    /// The command (argv, no shell) run when `ca/ca_crl.pem` or
    /// `ssl/crl.pem` changed; an empty list runs nothing. Default:
    /// [`DEFAULT_RELOAD`].
    pub fn reload_command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.reload = argv.into_iter().map(Into::into).collect();
        self
    }

    /// This host's role, as the configuration file says; `active` is fenced
    /// (checked before any role file). Default: none.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// The role file ([`Role::read`]); a host whose role is `active` is
    /// fenced. Default: none.
    pub fn role_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.role_file = Some(path.into());
        self
    }

    /// Live paths (relative to the cadir) the applier leaves alone; give it
    /// the patterns the active primary excludes. Default: none.
    pub fn excludes(mut self, excludes: Excludes) -> Self {
        self.excludes = excludes;
        self
    }

    /// Stops the run (between files) when `token` is tripped.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Progress hooks. Default: none.
    pub fn progress(mut self, progress: impl ApplyProgress + 'static) -> Self {
        self.progress = Arc::new(progress);
        self
    }

    /// How long to wait for another applier to finish. Default: 60 s.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// See [`Scanner::racy_window`] (for the live cadir scan). Default: the
    /// scanner's.
    pub fn racy_window(mut self, window: Duration) -> Self {
        self.racy_window = Some(window);
        self
    }

    /// Keeps the latest snapshot in `cache` for the next run that is given
    /// the same cache, and takes it from there when it is still the latest
    /// (see [`LatestCache`]): a long-running caller (the passive watcher)
    /// then reads only the new transactions' manifests. Default: none (each
    /// run reads the latest snapshot's manifest).
    pub fn latest_cache(mut self, cache: LatestCache) -> Self {
        self.latest_cache = Some(cache);
        self
    }

    /// Stages pending transactions and applies the latest snapshot. Writes
    /// `status.json` whatever happens.
    pub fn run(&self) -> Result<ApplyReport> {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        let mut latest = None;
        let result = self.run_inner(&mut report, &mut latest);
        report.elapsed = started.elapsed();
        let status = self.write_status(&report, latest, result.as_ref().err());
        match (result, status) {
            (Ok(()), Ok(())) => Ok(report),
            (Ok(()), Err(e)) => {
                report.warnings.push(e.to_string());
                Ok(report)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// The run; `latest_seen` receives the latest snapshot's metadata and
    /// entry count once known (for the status file).
    fn run_inner(
        &self,
        report: &mut ApplyReport,
        latest_seen: &mut Option<(SnapshotMeta, u64)>,
    ) -> Result<()> {
        if self.role == Some(Role::Active) {
            return Err(Error::new(
                ErrorKind::Fenced,
                format!(
                    "this host's configuration says role active, so the applier leaves its live CA alone; transactions stay in {} until it is demoted to passive",
                    self.state.incoming().display()
                ),
            ));
        }
        if let Some(path) = &self.role_file {
            if Role::read(path)? == Some(Role::Active) {
                return Err(Error::new(
                    ErrorKind::Fenced,
                    format!(
                        "this host has been promoted to active ({}), so the applier leaves its live CA alone; transactions stay in {} until it is demoted to passive",
                        path.display(),
                        self.state.incoming().display()
                    ),
                ));
            }
        }
        fsutil::create_dir_if_missing(self.state.root(), 0o755)?;
        let _lock = FileLock::acquire(&self.state.apply_lock(), self.lock_wait, "applier")?;
        let mut record = self.load_record()?;

        // 1. Stage transactions.
        let latest_meta = latest_snapshot_meta(&self.state)?;
        let start = latest_meta.as_ref().map(|m| m.digest.clone());
        let (txns, order) =
            pending_chain(&self.state, "ca", start.as_deref(), &mut report.discarded)?;
        let applied = record.applied.as_ref().map(|a| a.digest.as_str());
        if order.is_empty()
            && !self.verify
            && record.in_progress.is_none()
            && start.is_some()
            && applied == start.as_deref()
            && self.state.staged_manifest().exists()
            && latest_meta
                .as_ref()
                .is_some_and(|m| manifest_on_disk(&self.state, m))
        {
            // Nothing new, and the live files were brought to the latest
            // snapshot: nothing to read.
            for d in &report.discarded {
                report
                    .warnings
                    .push(format!("discarded transaction {}: {}", d.txn, d.reason));
            }
            report.staged_digest = start.clone();
            report.applied_digest = start;
            *latest_seen = latest_meta.map(|m| {
                let n = m.entries;
                (m, n)
            });
            return Ok(());
        }
        // A kept latest snapshot is at hand: each transaction's manifest is
        // read against the snapshot before it (in `build_snapshot`).
        // Otherwise the latest snapshot is read while the first
        // transaction's manifest is taken over (and read whole).
        let kept = self
            .latest_cache
            .as_ref()
            .and_then(|cache| cache.take(latest_meta.as_ref()));
        let first = order
            .first()
            .map(|&i| &txns[i])
            .filter(|t| kept.is_none() && !t.has_delta());
        let (latest, mut prepared) = std::thread::scope(|s| {
            let prepared = first.map(|txn| s.spawn(|| prepare_snapshot(&self.state, txn, None)));
            let latest = match kept {
                Some(kept) => Ok(Some(kept)),
                None => latest_snapshot(&self.state),
            };
            let prepared = prepared.map(|h| crate::joined(h.join(), "preparing a snapshot"));
            (latest, prepared)
        });
        let mut latest = latest?;
        republish_staged(&self.state, latest.as_ref())?;
        // The snapshot the chain started from (often the one applied).
        let mut before: Option<Earlier> = None;
        let mut failure = None;
        // A single transaction's manifest takes the entries of the latest
        // snapshot's instead of copying them: the live files then need only
        // those at the paths it changed. (After a chain, the live files are
        // compared with the snapshot the chain started from.)
        let take = order.len() == 1;
        for (n, &i) in order.iter().enumerate() {
            let txn = &txns[i];
            match build_snapshot(
                &self.state,
                latest.as_mut(),
                take,
                txn,
                prepared.take(),
                &self.cancel,
            ) {
                Ok((snap, stats)) => {
                    switch_latest(&self.state, &snap)?;
                    fsutil::remove_any(&txn.dir)?;
                    self.progress.staged(&txn.meta.txn, &snap.meta.digest);
                    report.staged.push(StagedTxn {
                        txn: txn.meta.txn.clone(),
                        digest: snap.meta.digest.clone(),
                        reused: stats.reused,
                        copied: stats.copied,
                    });
                    let old = latest.replace(snap);
                    if before.is_none() {
                        before = old.map(|old| match stats.took {
                            true => Earlier::Changed {
                                files: old.counted_files(self.excludes.patterns()),
                                meta: old.meta,
                                entries: old.manifest,
                            },
                            false => Earlier::Whole(old),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
                Err(e) => {
                    // Its entries may have gone into the refused manifest.
                    if latest
                        .as_ref()
                        .is_some_and(|l| l.manifest.len() as u64 != l.meta.entries)
                    {
                        latest = latest_snapshot(&self.state)?;
                    }
                    // This one and every later one on the chain are lost;
                    // the next sync exchanges manifests and resends.
                    for &j in &order[n..] {
                        fsutil::remove_any(&txns[j].dir)?;
                        report.discarded.push(DiscardedTxn {
                            txn: txns[j].meta.txn.clone(),
                            reason: if j == i {
                                e.to_string()
                            } else {
                                format!("follows the discarded transaction {}", txn.meta.txn)
                            },
                        });
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        report.staged_digest = latest.as_ref().map(|s| s.meta.digest.clone());
        *latest_seen = latest
            .as_ref()
            .map(|s| (s.meta.clone(), s.manifest.len() as u64));
        for d in &report.discarded {
            report
                .warnings
                .push(format!("discarded transaction {}: {}", d.txn, d.reason));
        }
        // 2. Apply the latest snapshot to the live directories.
        let applied = match &latest {
            Some(target) => self.apply_live(target, before, &mut record, report),
            None => {
                report.applied_digest = record.applied.as_ref().map(|a| a.digest.clone());
                Ok(())
            }
        };

        // 3. Old snapshots go once the live files are done (a sweep of the
        // content store can take a while).
        let protect: Vec<String> = [
            report.staged_digest.clone(),
            record.applied.as_ref().map(|a| a.digest.clone()),
            record.in_progress.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let protect_refs: Vec<&str> = protect.iter().map(String::as_str).collect();
        let pruned = prune_snapshots(&self.state, self.keep, &protect_refs);
        match &self.latest_cache {
            Some(cache) => cache.keep(latest),
            None => crate::drop_in_background(latest),
        }
        applied?;
        report.pruned = pruned?;
        failure.map_or(Ok(()), Err)
    }

    fn apply_live(
        &self,
        target: &Snapshot,
        before: Option<Earlier>,
        record: &mut AppliedRecord,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let digest = target.meta.digest.clone();
        if !self.force {
            check_complete(&target.manifest).map_err(|e| {
                Error::new(
                    ErrorKind::Refused,
                    format!(
                        "snapshot {digest} is not applied to the live CA: {}; check the active primary's CA, or apply with force if this is intended",
                        e.message()
                    ),
                )
            })?;
        }
        // What the active primary sent before: the snapshot last applied and
        // one whose apply was interrupted (the target itself when unchanged).
        let previous_digests: Vec<String> = [
            record.applied.as_ref().map(|a| a.digest.clone()),
            record.in_progress.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut before = before;
        let mut previous: Vec<Earlier> = previous_digests
            .iter()
            .filter(|d| **d != digest)
            .filter_map(|d| match before.take_if(|b| b.digest() == d) {
                Some(b) => Some(b),
                None => open_snapshot(&self.state, d)
                    .ok()
                    .flatten()
                    .map(Earlier::Whole),
            })
            .collect();
        let paths = self.resolved_live()?;
        let pin = CadirPin {
            configured: self.live.cadir.clone(),
            resolved: paths.cadir.clone(),
        };
        self.check_pin(record.cadir.as_ref(), &pin)?;
        let repin = record.cadir.as_ref() != Some(&pin);
        record.cadir = Some(pin);
        // The live files were brought to the snapshot last applied, and
        // nothing was interrupted: only the paths changed since can differ.
        let applied = record.applied.as_ref().map(|a| a.digest.as_str());
        let delta_from = previous
            .iter()
            .find(|s| Some(s.digest()) == applied)
            .filter(|_| {
                !self.verify && !self.force && record.in_progress.is_none() && paths.cadir.is_dir()
            });
        // A changed path below something that is not a real directory (a
        // kind change, or drift on this host such as a directory replaced by
        // a symlink) makes it compare everything: only a whole scan sees
        // what stands in the way, and nothing is written through a link.
        let excluded = |p: &str| {
            p.strip_prefix("ca/")
                .is_none_or(|rel| self.excludes.is_excluded(rel))
        };
        let incremental = match delta_from {
            Some(prev) => {
                // A snapshot built on `prev` from a delta says what it
                // changed; otherwise the two manifests are compared.
                let delta = target.changed_since(prev.digest());
                let changed = match (delta, prev) {
                    (Some(paths), _) => {
                        Some(with_parents(paths.iter().map(String::as_str).collect()))
                    }
                    (None, Earlier::Whole(p)) => Some(changed_paths(&p.manifest, &target.manifest)),
                    // Reduced, and not what the target was built on: only a
                    // whole compare can tell.
                    (None, Earlier::Changed { .. }) => None,
                };
                // The files the live CA had: the snapshot before's.
                let files = prev.files(target, delta, self.excludes.patterns(), &excluded);
                match (changed, files) {
                    (Some(changed), Some(files)) => {
                        // The target's entries at those paths, in path
                        // order: they come from the snapshot, checked when
                        // it was read, and every parent of a changed path
                        // is one of them.
                        let restricted = Manifest::from_own_entries(
                            changed
                                .iter()
                                .filter_map(|p| target.manifest.get(p).cloned())
                                .collect(),
                        )?;
                        self.stat_live(&paths, &changed, &restricted)?
                            .map(|live| (live, restricted, files, changed))
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let (live, restricted, live_files, changed) = match incremental {
            Some((live, restricted, files, changed)) => {
                (live, Some(restricted), Some(files), Some(changed))
            }
            None => {
                // Compared whole: the snapshots before are needed whole.
                for p in &mut previous {
                    if let Earlier::Changed { meta, .. } = p {
                        if let Ok(Some(whole)) = open_snapshot(&self.state, &meta.digest) {
                            *p = Earlier::Whole(whole);
                        }
                    }
                }
                previous.retain(|p| matches!(p, Earlier::Whole(_)));
                (self.scan_live(&paths)?, None, None, None)
            }
        };
        report.verified = restricted.is_none();
        // Compared at the changed paths only, the entries a snapshot before
        // had there are all it takes.
        let mut previous_refs: Vec<&Manifest> = previous.iter().map(Earlier::manifest).collect();
        if previous_digests.contains(&digest) {
            previous_refs.push(&target.manifest);
        }
        let mut plan = plan_live(
            restricted.as_ref().unwrap_or(&target.manifest),
            &live,
            &previous_refs,
            &self.excludes,
            self.owner,
        )?;
        if let Some(n) = live_files {
            // The deletion guard's base: the live CA's files, as applied.
            plan.live_files = n;
        }
        report.kept = plan
            .kept
            .iter()
            .filter_map(|p| signed_certname(p))
            .map(str::to_string)
            .collect();

        let deletions = plan.delete.len() as u64;
        let allowed = ((self.max_delete_share * plan.live_files as f64).floor() as u64)
            .max(self.delete_allowance);
        if deletions > allowed && !self.force {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "applying snapshot {digest} would delete {deletions} of the {} files in the live CA directory {} (at most {allowed} allowed: {:.0} % or {}), e.g. {}; nothing was changed. Check the active primary's CA; if the deletions are intended, apply with force",
                    plan.live_files,
                    paths.cadir.display(),
                    self.max_delete_share * 100.0,
                    self.delete_allowance,
                    plan.delete.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                ),
            )
            .with_path(&paths.cadir));
        }

        // The compare may have looked while a directory was away (moved by
        // another process, then back): what it did not see there was not
        // deleted. Every path the active primary removed must be gone once
        // the plan is carried out, or the snapshot stays in progress and
        // the next apply, which compares again with the snapshot before
        // it, finishes it.
        let check_removed = || -> Result<()> {
            let removed = self.removed_paths(&target.manifest, changed.as_deref(), &previous_refs);
            // (Below a link or a file, a path is not in the live CA: a
            // directory swapped for a link after the compare, or a link the
            // snapshot put in a directory's place.)
            let there = |rel: &str| {
                let parent = rel.rsplit_once('/').map_or("", |(dir, _)| dir);
                let abs = paths.resolve(rel)?;
                let in_ca = matches!(non_dir_on_the_way(&paths, parent), Ok(false));
                (in_ca && fs::symlink_metadata(&abs).is_ok()).then_some(abs)
            };
            match removed.iter().find_map(|rel| there(rel)) {
                None => Ok(()),
                Some(abs) => Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{} is still in the live CA although snapshot {digest} removed it: the live CA changed while it was compared (a directory moved away and back?); the snapshot stays in progress",
                        abs.display()
                    ),
                )
                .with_path(&abs)
                .with_hint("apply again: it compares again and finishes the snapshot")),
            }
        };
        if plan.is_empty() {
            check_removed()?;
            if repin || record.applied.as_ref().map(|a| a.digest.as_str()) != Some(digest.as_str())
            {
                self.finish_record(record, target)?;
            }
            report.applied_digest = Some(digest);
            return Ok(());
        }
        record.in_progress = Some(digest.clone());
        self.save_record(record)?;
        let crl_written = self.execute(&paths, target, &live, &plan, &mut report.live)?;
        check_removed()?;
        if crl_written && !self.reload.is_empty() {
            match run_reload(&self.reload) {
                Ok(()) => report.reloaded = true,
                Err(why) => report.warnings.push(format!(
                    "the CRL changed, but the reload command `{}` failed: {why}; puppetserver may use the old CRL until it is reloaded",
                    self.reload.join(" ")
                )),
            }
        }
        self.finish_record(record, target)?;
        report.applied_digest = Some(digest);
        crate::drop_in_background(previous);
        Ok(())
    }

    fn finish_record(&self, record: &mut AppliedRecord, target: &Snapshot) -> Result<()> {
        record.applied = Some(DigestAt {
            digest: target.meta.digest.clone(),
            txn: target.meta.txn.clone(),
            at: Stamp::now(),
        });
        record.in_progress = None;
        self.save_record(record)
    }

    fn load_record(&self) -> Result<AppliedRecord> {
        let path = self.state.applied_file();
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AppliedRecord::default()),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    fn save_record(&self, record: &AppliedRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot encode applied.json: {e}"),
            )
        })?;
        write_atomically(&self.state.applied_file(), &bytes, 0o644)
    }

    /// Refuses (unless forced) a live CA directory that now leads somewhere
    /// else than when it was last written while its configured path is
    /// the same: a symlink there (`<ssldir>/ca`, in a directory that
    /// puppetserver's user owns) was pointed elsewhere, and would be
    /// followed with root's rights.
    fn check_pin(&self, last: Option<&CadirPin>, now: &CadirPin) -> Result<()> {
        let Some(last) = last.filter(|l| l.configured == now.configured) else {
            return Ok(());
        };
        if last.resolved == now.resolved || self.force {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Refused,
            format!(
                "the live CA directory {} now leads to {}, but the last apply wrote to {}; nothing was changed",
                now.configured.display(),
                now.resolved.display(),
                last.resolved.display()
            ),
        )
        .with_path(&now.configured)
        .with_hint(
            "if the CA directory was moved on purpose, apply once with force; otherwise find \
             out who changed the link: the applier follows it as root",
        ))
    }

    /// The live paths, with a symbolic link at the cadir itself resolved
    /// (what `puppetserver ca migrate` leaves at `<ssldir>/ca`), so that
    /// modes and owners are set on the directory, not on the link.
    fn resolved_live(&self) -> Result<CaPaths> {
        let mut paths = self.live.clone();
        if fs::symlink_metadata(&paths.cadir).is_ok_and(|m| m.file_type().is_symlink()) {
            paths.cadir = fs::canonicalize(&paths.cadir)
                .map_err(|e| Error::io("resolve the CA directory link", &self.live.cadir, e))?;
        }
        Ok(paths)
    }

    /// The live files in the replicated namespace.
    fn scan_live(&self, paths: &CaPaths) -> Result<Manifest> {
        let mut entries = vec![
            Entry::synthetic_dir(SSL_ROOT),
            Entry::synthetic_dir(SSL_CERTS),
        ];
        let cadir = &paths.cadir;
        match fs::symlink_metadata(cadir) {
            Ok(meta) if meta.is_dir() => {
                let mut scanner = Scanner::new(cadir)
                    .excludes(self.excludes.clone())
                    .cache_file(self.state.live_cache())
                    .cancel_token(self.cancel.clone());
                if let Some(w) = self.racy_window {
                    scanner = scanner.racy_window(w);
                }
                let scanned = scanner.scan()?.into_complete()?;
                entries.push(entry_of(CA_ROOT, &meta, EntryKind::Dir));
                entries.extend(scanned.entries().iter().map(|e| {
                    let mut e = e.clone();
                    e.path = format!("ca/{}", e.path);
                    e
                }));
            }
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the live CA directory {} is not a directory; move it away",
                        cadir.display()
                    ),
                )
                .with_path(cadir))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", cadir, e)),
        }
        for rel in [SSL_CRL, crate::replset::SSL_CA_CERT] {
            if let Some(abs) = paths.resolve(rel) {
                if let Some(e) = live_file_entry(&abs, rel, None)? {
                    entries.push(e);
                }
            }
        }
        Manifest::from_entries(entries)
    }

    /// The live entries at the manifest paths `rels` (those that exist),
    /// files hashed: the live side of a plan restricted to them (`target`,
    /// the target's entries at those paths). A file whose size is not the
    /// one it has in `target` is not read: its
    /// contents differ, and the plan writes it whatever they are (its
    /// entry has no SHA-256). None when one of them lies below something
    /// that is not a real directory.
    fn stat_live(
        &self,
        paths: &CaPaths,
        rels: &[&str],
        target: &Manifest,
    ) -> Result<Option<Manifest>> {
        // Below a symlink or a file, a stat would go through the link into
        // whatever it points to, or fail: the caller compares everything.
        let mut blocked = false;
        crate::snapshot::check_each_parent(
            rels.iter().copied().filter(|r| r.starts_with("ca/")),
            |_, parent| {
                blocked = blocked || non_dir_on_the_way(paths, parent)?;
                Ok(())
            },
        )?;
        if blocked {
            return Ok(None);
        }
        let mut entries = Vec::new();
        for (i, rel) in rels.iter().enumerate() {
            if i % 256 == 0 {
                self.cancel.check()?;
            }
            if *rel == SSL_ROOT || *rel == SSL_CERTS {
                entries.push(Entry::synthetic_dir(rel));
                continue;
            }
            let Some(abs) = paths.resolve(rel) else {
                continue;
            };
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", &abs, e)),
            };
            if meta.is_dir() {
                entries.push(entry_of(rel, &meta, EntryKind::Dir));
            } else {
                let size = target
                    .get(rel)
                    .filter(|t| t.kind == EntryKind::File)
                    .map(|t| t.size);
                if let Some(e) = live_file_entry(&abs, rel, size)? {
                    entries.push(e);
                }
            }
        }
        // Paths of a manifest, in its order; entries made here.
        Manifest::from_own_entries(entries).map(Some)
    }

    /// The managed paths (below `ca/`, not excluded) that a snapshot in
    /// `previous` had and `target` has not, which an apply deletes: among
    /// `changed` when the compare looked only there, otherwise all.
    fn removed_paths<'a>(
        &self,
        target: &'a Manifest,
        changed: Option<&[&'a str]>,
        previous: &[&'a Manifest],
    ) -> Vec<&'a str> {
        let managed = |p: &str| {
            p.strip_prefix("ca/")
                .is_some_and(|rel| !self.excludes.is_excluded(rel))
        };
        let mut out: Vec<&str> = match changed {
            Some(changed) => changed
                .iter()
                .copied()
                .filter(|p| previous.iter().any(|m| m.get(p).is_some()))
                .collect(),
            // (The target itself, when its apply was interrupted, removed
            // nothing from itself.)
            None => previous
                .iter()
                .filter(|m| !std::ptr::eq(**m, target))
                .flat_map(|m| differing_paths(m, target))
                .collect(),
        };
        out.retain(|p| managed(p) && target.get(p).is_none());
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Carries out `plan`; returns whether a CRL was written. Every live
    /// entry is reached through its directory, opened down from the
    /// directories above the cadir and the ssldir without following links
    /// (see [`Beneath`]), so nothing is written or deleted through a link
    /// put in place of a directory after the compare.
    fn execute(
        &self,
        paths: &CaPaths,
        target: &Snapshot,
        live: &Manifest,
        plan: &LivePlan,
        out: &mut LiveChanges,
    ) -> Result<bool> {
        let anchor = |p: &Path| p.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut tree = Beneath::new([anchor(&paths.cadir), anchor(&paths.ssldir)])?;
        let result = self.execute_in(&mut tree, paths, target, live, plan, out);
        result.map_err(|e| tree.explain(e))
    }

    fn execute_in(
        &self,
        tree: &mut Beneath,
        paths: &CaPaths,
        target: &Snapshot,
        live: &Manifest,
        plan: &LivePlan,
        out: &mut LiveChanges,
    ) -> Result<bool> {
        let resolve = |rel: &str| -> Result<PathBuf> {
            paths.resolve(rel).ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("no live path for manifest path {rel}"),
                )
            })
        };
        let mut touched_dirs: Vec<PathBuf> = Vec::new();

        // Kind changes: clear the way. The new entry gets the SELinux label
        // of the one it replaces, as a file replaced by a file does.
        let mut replaced_labels: std::collections::HashMap<&str, Vec<u8>> = Default::default();
        for rel in &plan.replace {
            let path = resolve(rel)?;
            let at = tree.at(&path)?;
            if let Some(label) = fsutil::selinux_label(&at)? {
                replaced_labels.insert(rel.as_str(), label);
            }
            self.progress.replacing(rel);
            // Only a directory the compare saw is removed with what it
            // holds: one that took a link's or a file's place since is left.
            match live.get(rel).map(|l| l.kind) {
                Some(EntryKind::Dir) => fsutil::remove_any(&at)?,
                seen => match fs::remove_file(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
                        return Err(Error::new(
                            ErrorKind::UnsafePath,
                            format!(
                                "{} is a directory now, but the compare found a {} there; it was left as it is",
                                path.display(),
                                seen.map_or("missing entry", EntryKind::as_str)
                            ),
                        )
                        .with_path(&path)
                        .with_hint("apply again: it compares the whole live CA first"))
                    }
                    Err(e) => return Err(Error::io("remove", &path, e)),
                },
            }
            tree.forget(&path);
        }
        // Directories, parents first. One that does not exist yet is filled
        // under a temporary name beside it and renamed into place whole once
        // everything in it is written and synced (a first sync fills
        // `signed/` so: one rename instead of one per certificate, and
        // nothing in it is seen before all of it is there).
        let mut fresh: Vec<FreshDir> = Vec::new();
        let result = (|| -> Result<()> {
            for e in &plan.create_dirs {
                self.cancel.check()?;
                let live = resolve(&e.path)?;
                let parent = live.parent().unwrap_or(Path::new("/"));
                let path = match place(&fresh, &e.path, &live) {
                    Some(inside) => inside,
                    None => {
                        tree.make_dirs(parent)?;
                        if fs::symlink_metadata(tree.at(&live)?).is_err() {
                            let tmp = parent.join(format!("{TEMP_PREFIX}{}", fsutil::unique_hex()));
                            fs::create_dir(tree.at(&tmp)?)
                                .map_err(|err| Error::io("create directory", &tmp, err))?;
                            fresh.push(FreshDir {
                                rel: e.path.clone(),
                                tmp: tmp.clone(),
                                live: live.clone(),
                                dirs: Vec::new(),
                            });
                            tmp
                        } else {
                            live.clone()
                        }
                    }
                };
                tree.make_dirs(&path)?;
                let owner = match self.owner {
                    Owner::Fixed { uid, gid } => Some((uid, gid)),
                    Owner::Inherit => tree.owner_of(path.parent().unwrap_or(parent))?,
                };
                tree.set_dir_meta(&path, e.mode, owner)?;
                if let Some(label) = replaced_labels.get(e.path.as_str()) {
                    keep_label(&tree.at(&path)?, e, Some(label))?;
                    out.labels_kept += 1;
                }
                out.dirs_created.push(e.path.clone());
                match fresh.iter_mut().find(|f| f.holds(&e.path)) {
                    Some(f) => f.dirs.push(path),
                    None => {
                        note_parent(&mut touched_dirs, &live);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for f in &fresh {
                if let Ok(at) = tree.at(&f.tmp) {
                    let _ = fsutil::remove_any(&at);
                }
            }
            return Err(e);
        }

        // Files: temporary copies first (written by every core), synced,
        // then renamed into place; in a directory filled under a temporary
        // name, the files themselves.
        let mut temps: Vec<Temp> = Vec::new();
        let result = (|| -> Result<bool> {
            // Each temporary file's place and owner. Siblings share a parent:
            // it is checked (and its owner read) once per run of them.
            let mut owners: Vec<Option<(u32, u32)>> = Vec::with_capacity(plan.write.len());
            // The SELinux label of each file or symlink replaced, if it has
            // one: the new one gets it before it takes the old one's place.
            let mut labels: Vec<Option<Vec<u8>>> = Vec::with_capacity(plan.write.len());
            // The directory of the last file, looked up once per run of
            // siblings.
            let mut known: Option<HeldDir> = None;
            for e in plan.write.iter().filter(|e| e.kind != EntryKind::Dir) {
                let live_dest = resolve(&e.path)?;
                // In a directory filled under a temporary name: written
                // there under its own name (no rename of its own).
                let inside = place(&fresh, &e.path, &live_dest);
                let existing = live.get(&e.path).filter(|l| l.kind == e.kind);
                let dest = inside.clone().unwrap_or(live_dest);
                let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("no live directory for manifest path {}", e.path),
                    ));
                };
                let held = match known.take() {
                    Some(k) if k.path == dir => k,
                    _ => {
                        tree.make_dirs(dir)?;
                        HeldDir {
                            path: dir.to_path_buf(),
                            name: tree.held_dir(dir)?,
                            owner: tree.owner_of(dir)?,
                        }
                    }
                };
                let dest_at = held.name.join(name);
                labels.push(match (existing, &inside) {
                    (Some(_), None) => fsutil::selinux_label(&dest_at)?,
                    _ => replaced_labels.get(e.path.as_str()).cloned(),
                });
                owners.push(match self.owner {
                    Owner::Fixed { uid, gid } => Some((uid, gid)),
                    Owner::Inherit => existing.map(|l| (l.uid, l.gid)).or(held.owner),
                });
                temps.push(match inside {
                    Some(_) => Temp {
                        at: dest_at,
                        dest: None,
                        entry: e,
                    },
                    None => Temp {
                        at: held
                            .name
                            .join(format!("{TEMP_PREFIX}{}", fsutil::unique_hex())),
                        dest: Some((dest_at, dest)),
                        entry: e,
                    },
                });
                known = Some(held);
            }
            let cancel = &self.cancel;
            // The cadir itself may still be filling under a temporary name
            // beside it, on the same file system.
            let ca_fs = paths.cadir.ancestors().find(|d| d.is_dir());
            let flusher = fsutil::Flusher::new(ca_fs.unwrap_or(Path::new("/")));
            let written: Vec<Result<u64>> = temps
                .par_iter()
                .zip(owners.par_iter())
                .zip(labels.par_iter())
                .map(|((t, owner), label)| {
                    cancel.check()?;
                    let bytes = write_temp(target, &t.at, t.entry, *owner, label.as_deref())?;
                    flusher.wrote(bytes);
                    Ok(bytes)
                })
                .collect();
            drop(flusher);
            for bytes in written {
                out.bytes_written += bytes?;
            }
            out.labels_kept += labels.iter().flatten().count() as u64;
            // One sync per file system (the ssl files may live on another).
            for under_ca in [true, false] {
                let files: Vec<PathBuf> = temps
                    .iter()
                    .filter(|t| t.entry.kind == EntryKind::File)
                    .filter(|t| t.entry.path.starts_with("ca/") == under_ca)
                    .map(|t| t.at.clone())
                    .collect();
                if !files.is_empty() {
                    fsutil::sync_new_files(&files)?;
                }
            }
            let mut crl = false;
            let mut renamed = 0;
            for t in &temps {
                self.cancel.check()?;
                if let Some((dest_at, dest)) = &t.dest {
                    fs::rename(&t.at, dest_at)
                        .map_err(|err| Error::io("rename into place", dest, err))?;
                    note_parent(&mut touched_dirs, dest);
                }
                renamed += 1;
                let path = &t.entry.path;
                out.written.push(path.clone());
                crl |= path == CA_CRL || path == SSL_CRL;
                self.progress.live_entry(path);
            }
            temps.drain(..renamed);
            // The directories filled under temporary names: their entries
            // made durable, then each renamed into place whole.
            for f in &fresh {
                for d in f.dirs.iter().rev() {
                    tree.sync_dir(d)?;
                }
                fs::rename(tree.at(&f.tmp)?, tree.at(&f.live)?)
                    .map_err(|err| Error::io("rename into place", &f.live, err))?;
                tree.forget(&f.tmp);
                note_parent(&mut touched_dirs, &f.live);
            }
            fresh.clear();
            Ok(crl)
        })();
        if result.is_err() {
            for t in &temps {
                if t.dest.is_some() {
                    let _ = fs::remove_file(&t.at);
                }
            }
            for f in &fresh {
                if let Ok(at) = tree.at(&f.tmp) {
                    let _ = fsutil::remove_any(&at);
                }
            }
        }
        let crl = result?;
        for d in &touched_dirs {
            tree.sync_dir(d)?;
        }

        // Modes and owners.
        for e in &plan.fix_metadata {
            self.cancel.check()?;
            let path = resolve(&e.path)?;
            let at = tree.at(&path)?;
            if e.kind != EntryKind::Symlink {
                fsutil::chmod_nofollow(&at, e.mode)
                    .map_err(|err| Error::io("set permissions of", &path, err))?;
            }
            if let Owner::Fixed { uid, gid } = self.owner {
                lchown(&at, Some(uid), Some(gid))
                    .map_err(|err| Error::io("change owner of", &path, err))?;
            }
            out.metadata_fixed.push(e.path.clone());
            self.progress.live_entry(&e.path);
        }

        // Deletions, deepest first.
        for rel in &plan.temp_files {
            if let Some(at) = tree.at_existing(&resolve(rel)?)? {
                fsutil::remove_any(&at)?;
            }
            out.temp_removed += 1;
        }
        // Below an entry of another kind now, nothing is left to delete (it
        // went with the directory).
        let under_replaced = |rel: &str| {
            plan.replace.iter().any(|r| {
                rel.strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        for rel in &plan.delete {
            self.cancel.check()?;
            let path = resolve(rel)?;
            if !under_replaced(rel) {
                if let Some(at) = tree.at_existing(&path)? {
                    match fs::remove_file(at) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("remove", &path, e)),
                    }
                }
            }
            out.deleted.push(rel.clone());
            self.progress.live_entry(rel);
        }
        for rel in &plan.remove_dirs {
            let path = resolve(rel)?;
            if under_replaced(rel) {
                continue;
            }
            let Some(at) = tree.at_existing(&path)? else {
                continue;
            };
            match fs::remove_dir(at) {
                Ok(()) => {
                    tree.forget(&path);
                    out.dirs_removed.push(rel.clone());
                }
                // Still holds kept or excluded files.
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove directory", &path, e)),
            }
        }
        for rel in plan.delete.iter().chain(&plan.remove_dirs) {
            let path = resolve(rel)?;
            if !under_replaced(rel) && note_parent(&mut touched_dirs, &path) {
                tree.sync_dir(path.parent().unwrap_or(Path::new("/")))?;
            }
        }
        Ok(crl)
    }

    fn write_status(
        &self,
        report: &ApplyReport,
        latest: Option<(SnapshotMeta, u64)>,
        err: Option<&Error>,
    ) -> Result<()> {
        if !self.state.root().is_dir() {
            return Ok(());
        }
        let path = self.state.status_file();
        let mut status = ReplicaStatus::load(&path)
            .unwrap_or(None)
            .unwrap_or_else(|| ReplicaStatus::new("ca"));
        status.format = crate::state::STATUS_FORMAT;
        status.role = match (&self.role, &self.role_file) {
            (Some(r), _) => Some(*r),
            (None, Some(p)) => Role::read(p).ok().flatten(),
            (None, None) => None,
        };
        let latest = latest.or_else(|| {
            latest_snapshot_meta(&self.state).ok().flatten().map(|m| {
                let n = m.entries;
                (m, n)
            })
        });
        if let Some((meta, _)) = &latest {
            status.staged = Some(DigestAt {
                digest: meta.digest.clone(),
                txn: meta.txn.clone(),
                at: meta.created.clone(),
            });
        }
        if let Ok(record) = self.load_record() {
            status.applied = record.applied;
        }
        status.pending_txns = list_txns(&self.state, "ca")
            .map(|l| l.complete.len() as u64)
            .unwrap_or(0);
        status.last_run = Some(Stamp::now());
        status.last_run_ok = err.is_none();
        status.counts = ApplyCounts {
            entries: latest.as_ref().map(|(_, n)| *n).unwrap_or(0),
            txns_applied: report.staged.len() as u64,
            txns_discarded: report.discarded.len() as u64,
            written: report.live.written.len() as u64,
            metadata_fixed: report.live.metadata_fixed.len() as u64,
            deleted: report.live.deleted.len() as u64,
            dirs_removed: report.live.dirs_removed.len() as u64,
            kept: report.kept.len() as u64,
        };
        if (err.is_none() && report.verified) || !report.kept.is_empty() {
            status.divergence = Divergence {
                replica_only_signed: report.kept.clone(),
            };
        }
        status.warnings = report.warnings.clone();
        if let Some(e) = err {
            status.last_error = Some(ErrorRecord::from_error(e));
        }
        status.save(&path)
    }
}

/// A snapshot the live files were brought to before the target (the one
/// last applied, or one whose apply was interrupted): whole, or, when the
/// target was built on it from a delta and took its entries (see
/// `stage::build_snapshot`), its metadata and its entries at the paths that
/// delta changed, which is all an apply of the changed paths looks up.
enum Earlier {
    Whole(Snapshot),
    Changed {
        meta: SnapshotMeta,
        entries: Manifest,
        /// Its files, if they were counted (see [`Earlier::files`]).
        files: Option<u64>,
    },
}

impl Earlier {
    fn digest(&self) -> &str {
        match self {
            Earlier::Whole(s) => &s.meta.digest,
            Earlier::Changed { meta, .. } => &meta.digest,
        }
    }

    /// Its manifest, whole or at the changed paths only.
    fn manifest(&self) -> &Manifest {
        match self {
            Earlier::Whole(s) => &s.manifest,
            Earlier::Changed { entries, .. } => entries,
        }
    }

    /// Its files that are not `excluded` (by the exclusion `patterns`):
    /// counted whole, or, reduced, from `target`, built on it by a delta
    /// that changed the paths `delta`: the target's files, less those at
    /// those paths, plus its own there. The count of a snapshot is recorded
    /// with it, and the target's is then its count, less its own files at
    /// those paths, plus the target's: after the first, a round counts only
    /// the paths it changed (a pass over 100,000 entries took 1.5-2.5 ms).
    /// `None` for one reduced whose delta is not known.
    fn files(
        &self,
        target: &Snapshot,
        delta: Option<&[String]>,
        patterns: &[String],
        excluded: &dyn Fn(&str) -> bool,
    ) -> Option<u64> {
        let counted = |entries: &mut dyn Iterator<Item = &Entry>| {
            entries
                .filter(|e| e.kind == EntryKind::File && !excluded(&e.path))
                .count() as u64
        };
        match self {
            Earlier::Whole(s) => Some(s.counted_files(patterns).unwrap_or_else(|| {
                let n = counted(&mut s.manifest.entries().iter());
                s.record_counted_files(patterns, n);
                n
            })),
            Earlier::Changed { entries, files, .. } => {
                let delta = delta?;
                let there = counted(&mut delta.iter().filter_map(|p| target.manifest.get(p)));
                let was = counted(&mut entries.entries().iter());
                let (before, all) = match (*files, target.counted_files(patterns)) {
                    (Some(before), _) => (before, (before + there).saturating_sub(was)),
                    (None, known) => {
                        let all =
                            known.unwrap_or_else(|| counted(&mut target.manifest.entries().iter()));
                        ((all + was).saturating_sub(there), all)
                    }
                };
                target.record_counted_files(patterns, all);
                Some(before)
            }
        }
    }
}

/// The paths whose entries differ between two manifests (added, removed or
/// changed in any field), with their parent directories (so the subsets are
/// manifests too), in path order.
fn changed_paths<'a>(old: &'a Manifest, new: &'a Manifest) -> Vec<&'a str> {
    with_parents(differing_paths(old, new))
}

/// `paths` with their parent directories, sorted, each once.
fn with_parents(mut out: Vec<&str>) -> Vec<&str> {
    let mut parents: Vec<&str> = Vec::new();
    for p in &out {
        let mut rest = *p;
        while let Some((parent, _)) = rest.rsplit_once('/') {
            parents.push(parent);
            rest = parent;
        }
    }
    out.extend(parents);
    out.sort_unstable();
    out.dedup();
    out
}

fn differing_paths<'a>(old: &'a Manifest, new: &'a Manifest) -> Vec<&'a str> {
    let (mut a, mut b) = (
        old.entries().iter().peekable(),
        new.entries().iter().peekable(),
    );
    let mut out = Vec::new();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => {
                out.push(x.path.as_str());
                a.next();
            }
            (None, Some(y)) => {
                out.push(y.path.as_str());
                b.next();
            }
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => {
                    out.push(x.path.as_str());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(y.path.as_str());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if x != y {
                        out.push(x.path.as_str());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

fn entry_of(path: &str, meta: &fs::Metadata, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if kind == EntryKind::Dir {
            0
        } else {
            meta.size()
        },
        mtime_ns: mtime_ns(meta),
        sha256: None,
        target: None,
    }
}

/// Whether something other than a directory (a symlink, a file) stands at
/// the manifest directory path `dir` or above it in the live cadir. A
/// missing directory ends the walk: nothing is below it, and writing
/// creates it. Paths outside `ca/` are not checked.
fn non_dir_on_the_way(paths: &CaPaths, dir: &str) -> Result<bool> {
    let Some(below) = dir.strip_prefix("ca/") else {
        return Ok(false);
    };
    let mut abs = paths.cadir.clone();
    for part in below.split('/') {
        abs.push(part);
        match fs::symlink_metadata(&abs) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", &abs, e)),
        }
    }
    Ok(false)
}

/// The live entry at `abs` (manifest path `rel`): a file (hashed, unless
/// its size is not `compare_size`: then without SHA-256), a symlink, or
/// none.
fn live_file_entry(abs: &Path, rel: &str, compare_size: Option<u64>) -> Result<Option<Entry>> {
    let meta = match fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat", abs, e)),
    };
    if meta.file_type().is_symlink() {
        let mut e = entry_of(rel, &meta, EntryKind::Symlink);
        e.target = Some(
            fs::read_link(abs)
                .map_err(|err| Error::io("read link", abs, err))?
                .to_string_lossy()
                .into_owned(),
        );
        return Ok(Some(e));
    }
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a regular file; move it away", abs.display()),
        )
        .with_path(abs));
    }
    if compare_size.is_some_and(|size| size != meta.len()) {
        return Ok(Some(entry_of(rel, &meta, EntryKind::File)));
    }
    let bytes = fsutil::read_bounded(abs, LIVE_SSL_LIMIT)?;
    let mut e = entry_of(rel, &meta, EntryKind::File);
    e.size = bytes.len() as u64;
    e.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
    Ok(Some(e))
}

/// Adds `path`'s parent to `dirs` (the directories whose entries changed,
/// synced once each) unless it is there; returns whether it was added.
fn note_parent(dirs: &mut Vec<PathBuf>, path: &Path) -> bool {
    match path.parent() {
        Some(parent) if !dirs.iter().any(|d| d == parent) => {
            dirs.push(parent.to_path_buf());
            true
        }
        _ => false,
    }
}

/// A live directory the applier creates under a temporary name beside it
/// and fills before renaming it into place.
struct FreshDir {
    /// Its manifest path.
    rel: String,
    /// The temporary name it is filled under.
    tmp: PathBuf,
    /// Its live path.
    live: PathBuf,
    /// It and the directories created in it, parents first.
    dirs: Vec<PathBuf>,
}

impl FreshDir {
    /// Whether the manifest path `rel` is this directory or below it.
    fn holds(&self, rel: &str) -> bool {
        rel.strip_prefix(self.rel.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// A live directory files are written in: its path, its name through its
/// open descriptor ([`Beneath::held_dir`]) and its owner.
struct HeldDir {
    path: PathBuf,
    name: PathBuf,
    owner: Option<(u32, u32)>,
}

/// A file or symlink the applier writes: where (a name through its
/// directory's descriptor), and, unless it is written in a directory
/// filled under a temporary name, where it is renamed to (through its
/// directory's descriptor, and the live path).
struct Temp<'p> {
    at: PathBuf,
    dest: Option<(PathBuf, PathBuf)>,
    entry: &'p Entry,
}

/// Where the entry at manifest path `rel` (live path `live`) is written
/// when it is in one of the directories `fresh`: the same place under the
/// directory's temporary name.
fn place(fresh: &[FreshDir], rel: &str, live: &Path) -> Option<PathBuf> {
    let f = fresh.iter().find(|f| f.holds(rel))?;
    let below = live.strip_prefix(&f.live).ok()?;
    Some(if below.as_os_str().is_empty() {
        f.tmp.clone()
    } else {
        f.tmp.join(below)
    })
}

/// Writes the temporary file `tmp` for the snapshot entry `e` (a file
/// copied from `target`'s store and verified on the way, or a symlink),
/// owned by `owner` and labelled `label` (SELinux) when given; returns the
/// bytes written. Contents found damaged in the store are removed from it
/// (named by their SHA-256, they are garbage: a resent transaction stores
/// them again).
fn write_temp(
    target: &Snapshot,
    tmp: &Path,
    e: &Entry,
    owner: Option<(u32, u32)>,
    label: Option<&[u8]>,
) -> Result<u64> {
    match e.kind {
        EntryKind::File => {
            let sha = e.sha256.as_deref().unwrap_or_default();
            let what = format!("snapshot {}", target.meta.digest);
            let file = match target.stored(sha) {
                Stored::Held(bytes) if bytes.len() as u64 == e.size => {
                    fsutil::create_filled(tmp, e.mode & 0o777, |out| {
                        fsutil::write_uncached(out, tmp, bytes)
                    })?
                }
                Stored::Held(bytes) => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{what}: {} has {} bytes in the manifest, but the contents with its SHA-256 have {}",
                            e.path,
                            e.size,
                            bytes.len()
                        ),
                    ))
                }
                Stored::Loose(src) => {
                    fsutil::copy_verified(&src, tmp, e.mode & 0o777, sha, e.size, &what)
                        .inspect_err(|err| {
                            if err.kind() == ErrorKind::Corrupt {
                                let _ = fs::remove_file(&src);
                            }
                        })
                        .map_err(|err| match target.pack_problems() {
                            [] => err,
                            problems => Error::new(
                                err.kind(),
                                format!(
                                    "{err} (packs of the content store that could not be read: {})",
                                    problems.join("; ")
                                ),
                            ),
                        })?
                }
                Stored::Packed(packed) => fsutil::create_filled(tmp, e.mode & 0o777, |out| {
                    packed.copy_verified(sha, e.size, &what, |chunk| {
                        out.write_all(chunk)
                            .map_err(|err| Error::io("write", tmp, err))
                    })
                })?,
            };
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|err| Error::io("change owner of", tmp, err))?;
            }
            let _ = file.set_modified(system_time(e.mtime_ns));
            keep_label(tmp, e, label)?;
            Ok(e.size)
        }
        EntryKind::Symlink => {
            symlink(e.target.as_deref().unwrap_or_default(), tmp)
                .map_err(|err| Error::io("create symlink", tmp, err))?;
            if let Some((uid, gid)) = owner {
                lchown(tmp, Some(uid), Some(gid))
                    .map_err(|err| Error::io("change owner of", tmp, err))?;
            }
            keep_label(tmp, e, label)?;
            Ok(0)
        }
        EntryKind::Dir => Ok(0),
    }
}

/// Gives `tmp`, the new file, symlink or directory for `e`, the SELinux
/// `label` of the live entry it replaces, if any.
fn keep_label(tmp: &Path, e: &Entry, label: Option<&[u8]>) -> Result<()> {
    let Some(label) = label else {
        return Ok(());
    };
    fsutil::set_selinux_label(tmp, label).map_err(|err| {
        let shown = String::from_utf8_lossy(label.strip_suffix(b"\0").unwrap_or(label));
        Error::new(
            err.kind(),
            format!(
                "cannot give the new {} {} the SELinux label of the live entry it replaces ({shown}): {}",
                e.kind.as_str(),
                e.path,
                err.message()
            ),
        )
        .with_path(tmp)
        .with_hint(
            "the applier must be allowed to relabel files: run it as root in an unconfined \
             domain, as the module's service does; nothing was put in place without its label",
        )
    })
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Runs the reload command; the error says why it failed (exit status and
/// the end of its error output).
fn run_reload(argv: &[String]) -> std::result::Result<(), String> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!(
        "{}{}",
        output.status,
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_file_is_hashed_only_when_its_size_could_match() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("inventory.txt");
        fs::write(&path, b"0x0001 one\n").unwrap();
        let sha = hex::encode(Sha256::digest(b"0x0001 one\n"));
        let read = |size| {
            live_file_entry(&path, "ca/inventory.txt", size)
                .unwrap()
                .unwrap()
        };
        assert_eq!(read(None).sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(read(Some(11)).sha256.as_deref(), Some(sha.as_str()));
        // Another size: the contents differ, nothing is read.
        let other = read(Some(22));
        assert_eq!((other.sha256.as_deref(), other.size), (None, 11));
        // The plan writes such a file.
        let mut target = file("ca/inventory.txt", 'a', 0o644);
        target.size = 22;
        let mut live = other;
        live.mode = 0o644;
        let plan = plan_live(
            &m(vec![dir("ca"), target.clone()]),
            &Manifest::from_own_entries(vec![dir("ca"), live]).unwrap(),
            &[],
            &Excludes::default(),
            Owner::Inherit,
        )
        .unwrap();
        assert_eq!(plan.write, [target]);
    }

    fn file(path: &str, sha: char, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 0,
            sha256: Some(sha.to_string().repeat(64)),
            target: None,
        }
    }

    #[test]
    fn a_label_that_cannot_be_kept_names_the_file_the_label_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = file("ca/ca_crl.pem", 'a', 0o644);
        // No label to keep: nothing to do, even for a path that is not there.
        keep_label(&dir.path().join("gone"), &e, None).unwrap();
        // A temporary file that vanished stands in for a refused relabel.
        let err = keep_label(
            &dir.path().join("gone"),
            &e,
            Some(b"system_u:object_r:cert_t:s0\0"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("new file ca/ca_crl.pem"), "{text}");
        assert!(text.contains("(system_u:object_r:cert_t:s0)"), "{text}");
        assert!(
            text.contains("nothing was put in place without its label"),
            "{text}"
        );
        assert_eq!(err.path(), Some(dir.path().join("gone").as_path()));
    }

    fn dir(path: &str) -> Entry {
        let mut e = Entry::synthetic_dir(path);
        e.mode = 0o750;
        e
    }

    fn m(entries: Vec<Entry>) -> Manifest {
        Manifest::from_entries(entries).unwrap()
    }

    #[test]
    fn plans_writes_fixes_deletions_and_keeps_replica_only_certificates() {
        let target = m(vec![
            dir("ca"),
            file("ca/ca_crt.pem", 'a', 0o644),
            file("ca/serial", 'b', 0o644),
            dir("ca/signed"),
            file("ca/signed/new.pem", 'c', 0o644),
            Entry::synthetic_dir("ssl"),
            file("ssl/crl.pem", 'd', 0o644),
        ]);
        let live = m(vec![
            dir("ca"),
            file("ca/ca_crt.pem", 'a', 0o600),
            file("ca/serial", '9', 0o644),
            file("ca/stray", '9', 0o644),
            file(&format!("ca/{TEMP_PREFIX}1"), '9', 0o600),
            dir("ca/signed"),
            file("ca/signed/cleaned.pem", 'e', 0o644),
            file("ca/signed/mine.pem", 'f', 0o644),
            Entry::synthetic_dir("ssl"),
            dir("ssl/certs"),
            file("ssl/certs/ca.pem", '7', 0o644),
        ]);
        let previous = m(vec![
            dir("ca"),
            dir("ca/signed"),
            file("ca/signed/cleaned.pem", 'e', 0o644),
        ]);
        let plan = plan_live(
            &target,
            &live,
            &[&previous],
            &Excludes::default(),
            Owner::Inherit,
        )
        .unwrap();
        let paths = |v: &[Entry]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(
            paths(&plan.write),
            ["ca/serial", "ca/signed/new.pem", "ssl/crl.pem"]
        );
        assert_eq!(paths(&plan.fix_metadata), ["ca/ca_crt.pem"]);
        assert_eq!(plan.delete, ["ca/stray", "ca/signed/cleaned.pem"]);
        assert_eq!(plan.kept, ["ca/signed/mine.pem"]);
        assert_eq!(plan.temp_files.len(), 1);
        assert_eq!(plan.live_files, 6);
        assert!(plan.remove_dirs.is_empty());
    }

    #[test]
    fn fixed_owners_are_corrected_and_excluded_paths_left_alone() {
        let target = m(vec![dir("ca"), file("ca/a", 'a', 0o644)]);
        let live = m(vec![
            dir("ca"),
            file("ca/a", 'a', 0o644),
            dir("ca/requests"),
            file("ca/requests/x.pem", 'b', 0o644),
        ]);
        let ex = Excludes::new(["requests"]).unwrap();
        let plan = plan_live(&target, &live, &[], &ex, Owner::Fixed { uid: 7, gid: 7 }).unwrap();
        assert_eq!(plan.fix_metadata.len(), 2);
        assert!(plan.delete.is_empty() && plan.remove_dirs.is_empty());
        let plan = plan_live(&target, &live, &[], &ex, Owner::Inherit).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }
}
