//! The sending side, on the active primary.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::frame::{Conn, FrameType};
use super::{
    delta_objects, local_hostname, read_batches, send_batches, violation, Bye, Commit, DeltaHead,
    Hello, Kind, Limits, ManifestHead, Stats, Welcome, DATA_CHUNK, PROTOCOL_NAME, PROTOCOL_VERSION,
};
use crate::cache::CacheSave;
use crate::cancel::CancelToken;
use crate::diff::{diff, Changeset};
use crate::fsutil;
use crate::ncship::NcOutbox;
use crate::replset::{
    diff_from_manifest_file, manifest_file_digest, manifest_from_entries_of, save_manifest_cache,
    stage_manifest, ReplicatedSet, SetScan, Since, Tails,
};
use crate::snapshot::{is_sha256_hex, sha256_bytes, Contents, Entry, EntryKind, Manifest};
use crate::stage::new_txn_id;
use crate::state::{
    sender_status_path, DigestAt, ErrorRecord, SenderStatus, Stamp, SyncCounts, SyncOutcome,
};
use crate::{Error, ErrorKind, Result};

/// The words of the error a sync ends with when a source file changed
/// while it was being sent (a busy CA): a fresh scan and another sync fix it.
pub(crate) const SOURCE_CHANGED: &str = "changed while it was being sent";
/// The same, for a file that got shorter.
pub(crate) const SOURCE_SHRANK: &str = "shrank while it was being sent";

/// Whether `err` says a source file changed while it was being sent.
pub fn is_source_changed(err: &Error) -> bool {
    err.kind() == ErrorKind::Io
        && (err.message().contains(SOURCE_CHANGED) || err.message().contains(SOURCE_SHRANK))
}

/// Files at least this large that only grew are sent as `EXTEND`.
const EXTEND_MIN: u64 = 1024;

/// What one sync did.
#[derive(Clone, Debug, Serialize)]
pub struct SyncReport {
    /// The replica's name.
    pub replica: String,
    /// What was replicated.
    pub kind: Kind,
    /// Committed, up to date, or noop.
    pub outcome: SyncOutcome,
    /// The transaction id (announced in every session; committed only when
    /// `outcome` is `Committed`).
    pub txn: String,
    /// The digest the replica held before.
    pub base: Option<String>,
    /// The digest of the active primary's set.
    pub digest: String,
    /// What changed between the replica's state and the active's.
    pub changes: Changeset,
    /// Counters.
    pub stats: Stats,
    /// Problems that did not fail the sync (a status file or the stat cache
    /// that could not be written).
    pub warnings: Vec<String>,
}

/// Ships the active primary's replicated set to one replica.
///
/// ```no_run
/// use std::os::unix::net::UnixStream;
/// use pe_failover_core::protocol::Sender;
/// use pe_failover_core::replset::ReplicatedSet;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// # let stream = UnixStream::connect("/run/example.sock").unwrap();
/// let set = ReplicatedSet::new("/etc/puppetlabs/puppet/ssl")
///     .cache_file("/opt/pe_failover/state/ca.scan");
/// let report = Sender::new(set, "b.example.com", "/opt/pe_failover/state").sync(stream)?;
/// println!("{:?}: {} bytes sent", report.outcome, report.stats.bytes_sent);
/// # Ok(())
/// # }
/// ```
///
/// The same sender ships the Node Classifier dump: see [`Sender::nc`].
#[derive(Clone, Debug)]
pub struct Sender {
    source: Source,
    replica: String,
    state_dir: PathBuf,
    host: Option<String>,
    noop: bool,
    /// Whether the manifest shipped is written to
    /// [`shipped_manifest_path`](Sender::shipped_manifest_path).
    write_shipped: bool,
    cancel: CancelToken,
    limits: Limits,
}

/// What a sender ships.
#[derive(Clone, Debug)]
enum Source {
    /// The CA's replicated set.
    Ca(ReplicatedSet),
    /// The Node Classifier dump directory.
    Nc(NcOutbox),
}

impl Source {
    fn kind(&self) -> Kind {
        match self {
            Source::Ca(_) => Kind::Ca,
            Source::Nc(_) => Kind::Nc,
        }
    }
}

impl Sender {
    /// A sender of `set` to the replica named `replica` (a host name; it
    /// names the per-replica files under `state_dir`:
    /// `replicas/<replica>/ca.manifest.json`, the last manifest shipped, and
    /// `replicas/<replica>/ca.status.json`). Defaults: announces this host's
    /// name, not noop, default [`Limits`].
    pub fn new(
        set: ReplicatedSet,
        replica: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Sender::with_source(Source::Ca(set), replica.into(), state_dir.into())
    }

    /// A sender of the Node Classifier dump in `outbox` (written by
    /// [`crate::ncship::nc_prepare`]) to the replica named `replica`, with
    /// the per-replica files `replicas/<replica>/nc.manifest.json` and
    /// `replicas/<replica>/nc.status.json` under `state_dir`. The replica
    /// stages it apart from the CA. Same defaults as [`Sender::new`].
    ///
    /// ```no_run
    /// use std::os::unix::net::UnixStream;
    /// use pe_failover_core::ncship::NcOutbox;
    /// use pe_failover_core::protocol::Sender;
    ///
    /// # fn main() -> pe_failover_core::Result<()> {
    /// # let stream = UnixStream::connect("/run/example.sock").unwrap();
    /// let outbox = NcOutbox::in_state_dir("/opt/pe_failover/state");
    /// let report = Sender::nc(outbox, "b.example.com", "/opt/pe_failover/state").sync(stream)?;
    /// println!("{:?}", report.outcome);
    /// # Ok(())
    /// # }
    /// ```
    pub fn nc(outbox: NcOutbox, replica: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Sender::with_source(Source::Nc(outbox), replica.into(), state_dir.into())
    }

    fn with_source(source: Source, replica: String, state_dir: PathBuf) -> Self {
        Sender {
            source,
            replica,
            state_dir,
            host: None,
            noop: false,
            write_shipped: true,
            cancel: CancelToken::new(),
            limits: Limits::default(),
        }
    }

    /// The name announced in `HELLO`. Default: this host's name.
    pub fn sender_host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// Computes and reports the changes without sending any content or
    /// writing any state. Default: false.
    pub fn noop(mut self, yes: bool) -> Self {
        self.noop = yes;
        self
    }

    /// Whether the manifest the replica holds after a sync is written to
    /// [`shipped_manifest_path`](Self::shipped_manifest_path) (while the
    /// delta goes; it takes the old one's place on the acknowledgement),
    /// where the next sync finds what it diffs against. Default: true. A
    /// caller that keeps the manifest in memory between syncs and writes
    /// that file itself, when it has time (the active watcher, with
    /// [`save_manifest_cache`](crate::replset::save_manifest_cache)), turns
    /// it off: a sync then writes nothing of 15 MB at 100,000 certificates.
    pub fn write_shipped(mut self, yes: bool) -> Self {
        self.write_shipped = yes;
        self
    }

    /// Stops the scan or the transfer when `token` is tripped; the receiver
    /// is told and keeps nothing.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token.clone();
        if let Source::Ca(set) = self.source {
            self.source = Source::Ca(set.cancel_token(token));
        }
        self
    }

    /// What this sender ships.
    pub fn kind(&self) -> Kind {
        self.source.kind()
    }

    /// Bounds enforced on what the receiver sends. Default: [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The file holding the manifest last shipped to the replica.
    pub fn shipped_manifest_path(&self) -> PathBuf {
        self.state_dir
            .join("replicas")
            .join(&self.replica)
            .join(format!("{}.manifest.json", self.kind().as_str()))
    }

    /// The sender status file of the replica.
    pub fn status_path(&self) -> PathBuf {
        sender_status_path(&self.state_dir, &self.replica, self.kind().as_str())
    }

    /// Scans the set (or reads the NC dump) and syncs it over `stream`. A
    /// scan that fails or is refused (database-backed, empty or incomplete
    /// CA; no NC dump prepared) sends nothing but an `ERROR` frame. Records
    /// the outcome in the status file.
    pub fn sync<S: Read + Write>(&self, stream: S) -> Result<SyncReport> {
        // The CA's stat cache is written while the scan is shipped.
        let scanned = match &self.source {
            Source::Ca(set) => set.scan().map(|scan| {
                let resolver = Resolver::Ca(scan.paths, scan.contents, scan.tails);
                (scan.manifest, resolver, scan.cache_save)
            }),
            Source::Nc(outbox) => outbox.scan().map(|manifest| {
                let resolver = Resolver::Nc(outbox.dir().to_path_buf());
                (manifest, resolver, CacheSave::default())
            }),
        };
        match scanned {
            Ok((manifest, resolver, mut cache_save)) => {
                let mut result = self.sync_manifest(&manifest, None, None, &resolver, stream);
                // Waited for even when the sync failed: the cache only
                // speeds up the next scan, it never decides this one.
                if let (Some(warning), Ok(report)) =
                    (cache_save.wait_for_warning(), result.as_mut())
                {
                    report.warnings.push(warning);
                }
                result
            }
            Err(e) => {
                let mut conn = Conn::new(stream, self.limits, "the receiver");
                conn.send_error(&e);
                if !self.noop {
                    let _ = self.record(&Err(&e), None);
                }
                Err(e)
            }
        }
    }

    /// Syncs an existing CA scan over `stream` (several replicas can share
    /// one scan). Records the outcome in the status file. A sender made with
    /// [`Sender::nc`] refuses ([`ErrorKind::InvalidInput`]): use
    /// [`sync`](Self::sync).
    pub fn sync_scanned<S: Read + Write>(&self, scan: &SetScan, stream: S) -> Result<SyncReport> {
        self.sync_scanned_from(scan, None, stream)
    }

    /// [`sync_scanned`](Self::sync_scanned), given `shipped`, a manifest the
    /// replica may hold (the one a long-running caller shipped last): when
    /// the replica announces its digest, the delta is computed from it
    /// rather than from the copy on disk. A rescan's
    /// [`since`](SetScan::since) serves the same way, without either.
    pub fn sync_scanned_from<S: Read + Write>(
        &self,
        scan: &SetScan,
        shipped: Option<&Manifest>,
        stream: S,
    ) -> Result<SyncReport> {
        if self.kind() != Kind::Ca {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a CA scan was given to the Node Classifier sender; call sync() instead",
            ));
        }
        let resolver = Resolver::Ca(
            scan.paths.clone(),
            scan.contents.clone(),
            scan.tails.clone(),
        );
        let since = scan.since.as_ref();
        self.sync_manifest(&scan.manifest, shipped, since, &resolver, stream)
    }

    fn sync_manifest<S: Read + Write>(
        &self,
        manifest: &Manifest,
        shipped: Option<&Manifest>,
        since: Option<&Since>,
        resolver: &Resolver,
        stream: S,
    ) -> Result<SyncReport> {
        let started = Instant::now();
        let result = validate_replica_name(&self.replica).and_then(|()| {
            let mut conn = Conn::new(stream, self.limits, "the receiver");
            let mut stats = Stats::default();
            let result = self.converse(&mut conn, manifest, shipped, since, resolver, &mut stats);
            stats.bytes_sent = conn.sent();
            stats.bytes_received = conn.received();
            stats.elapsed = started.elapsed();
            match result {
                Ok(mut report) => {
                    report.stats = stats;
                    Ok(report)
                }
                Err(e) => {
                    let e = conn.pending_peer_error().unwrap_or(e);
                    Err(if e.path().is_none() {
                        e.with_host(&self.replica)
                    } else {
                        e
                    })
                }
            }
        });
        match result {
            Ok(mut report) => {
                if !self.noop {
                    if let Err(e) = self.record(&Ok(&report), Some(&report.stats)) {
                        report.warnings.push(e.to_string());
                    }
                }
                Ok(report)
            }
            Err(e) => {
                if !self.noop {
                    let _ = self.record(&Err(&e), None);
                }
                Err(e)
            }
        }
    }

    fn converse<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        current: &Manifest,
        shipped: Option<&Manifest>,
        since: Option<&Since>,
        resolver: &Resolver,
        stats: &mut Stats,
    ) -> Result<SyncReport> {
        let kind = self.kind();
        let digest = current.digest();
        let txn = new_txn_id();
        stats.entries = current.len() as u64;

        let hello = Hello {
            protocol: PROTOCOL_NAME.into(),
            version: PROTOCOL_VERSION,
            kind: kind.as_str().into(),
            sender: self.host.clone().unwrap_or_else(local_hostname),
            txn: txn.clone(),
        };
        conn.send_json(FrameType::Hello, &hello)?;
        let frame = conn.expect(&[FrameType::Welcome], "WELCOME")?;
        let welcome: Welcome = conn.parse(&frame)?;
        if welcome.version != PROTOCOL_VERSION {
            return Err(violation(format!(
                "the receiver answered with protocol version {}, this sender speaks {PROTOCOL_VERSION}; install the same pe_failover version on both primaries",
                welcome.version
            )));
        }
        if welcome.base.as_deref().is_some_and(|b| !is_sha256_hex(b)) {
            return Err(violation("the receiver announced a malformed base digest"));
        }

        // What changed since what the receiver holds: nothing, what a
        // rescan changed since the manifest shipped last, what differs from
        // that manifest (in memory, or the file: only the entries that
        // differ are read from it), or (first sync with a restored or
        // drifted replica) from what it sends when asked.
        let shipped_path = self.shipped_manifest_path();
        let shipped_digest = manifest_file_digest(&shipped_path);
        let unchanged = welcome.base.as_deref() == Some(digest.as_str());
        let changes = match welcome.base.as_deref() {
            // The replica holds exactly this manifest.
            _ if unchanged => Changeset::default(),
            None => diff(&Manifest::default(), current),
            Some(b) => match since.filter(|s| s.base == b) {
                Some(s) => s.changes.clone(),
                None => match shipped.filter(|m| m.digest() == b) {
                    Some(m) => diff(m, current),
                    None => match shipped_digest
                        .as_deref()
                        .filter(|&d| d == b)
                        .and_then(|_| diff_from_manifest_file(&shipped_path, b, current))
                    {
                        Some(changes) => changes,
                        None => {
                            stats.manifest_exchanged = true;
                            diff(&self.fetch_manifest(conn, b)?, current)
                        }
                    },
                },
            },
        };
        let mut report = SyncReport {
            replica: self.replica.clone(),
            kind,
            outcome: SyncOutcome::UpToDate,
            txn: txn.clone(),
            base: welcome.base.clone(),
            digest: digest.clone(),
            changes,
            stats: Stats::default(),
            warnings: Vec::new(),
        };

        if self.noop || welcome.base.as_deref() == Some(digest.as_str()) {
            conn.send_json(FrameType::Bye, &Bye::default())?;
            conn.flush()?;
            if self.noop {
                report.outcome = SyncOutcome::Noop;
            } else if self.write_shipped && shipped_digest.as_deref() != Some(digest.as_str()) {
                save_manifest_cache(&shipped_path, current, 0o600)?;
            }
            return Ok(report);
        }

        // The manifest the receiver will hold is written here while the
        // delta goes and the receiver stores it; it replaces the one last
        // shipped only once the receiver acknowledges.
        let stage = self.write_shipped && shipped_digest.as_deref() != Some(digest.as_str());
        std::thread::scope(|s| {
            let staging =
                stage.then(|| s.spawn(|| stage_manifest(&shipped_path, current, 0o600, false)));
            let commit = Commit {
                txn: txn.clone(),
                digest: digest.clone(),
            };
            let acked = self.send_delta(conn, &report.changes, &welcome, &commit, resolver, stats);
            let staged = staging
                .map(|h| crate::joined(h.join(), "writing the shipped manifest"))
                .transpose();
            acked?;
            if let Some(staged) = staged? {
                staged.install()?;
            }
            report.outcome = SyncOutcome::Committed;
            Ok(report)
        })
    }

    /// Sends the delta `changes` on top of the receiver's base (`welcome`),
    /// then the contents it wants, sends `commit` (the transaction and the
    /// digest of the manifest it builds) and checks the receiver's
    /// acknowledgement.
    fn send_delta<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        changes: &Changeset,
        welcome: &Welcome,
        commit: &Commit,
        resolver: &Resolver,
        stats: &mut Stats,
    ) -> Result<()> {
        // The delta.
        let mut upserts: Vec<&Entry> = changes
            .added
            .iter()
            .chain(changes.changed.iter().map(|c| &c.new))
            .collect();
        upserts.sort_by(|a, b| a.path.cmp(&b.path));
        let removes: Vec<&str> = changes.removed_paths().collect();
        stats.upserts = upserts.len() as u64;
        stats.removes = removes.len() as u64;
        conn.send_json(
            FrameType::DeltaHead,
            &DeltaHead {
                base: welcome.base.clone(),
                digest: commit.digest.clone(),
                upserts: stats.upserts,
                removes: stats.removes,
            },
        )?;
        send_batches(conn, FrameType::Entries, upserts.iter().copied())?;
        send_batches(conn, FrameType::Removes, removes.iter().copied())?;

        // The objects the receiver lacks. With nothing changed in place
        // (a first sync, or only additions), the upserts are the added
        // entries, already in path order: no copy needed.
        let objects = if changes.changed.is_empty() {
            delta_objects(&changes.added)
        } else {
            let owned: Vec<Entry> = upserts.iter().map(|e| (*e).clone()).collect();
            delta_objects(&owned)
        };
        // What the replica holds at a path sent again: the base's entries
        // of the changed paths (an added path has none).
        let held_before: FxHashMap<&str, &Entry> = changes
            .changed
            .iter()
            .map(|c| (c.old.path.as_str(), &c.old))
            .collect();
        let frame = conn.expect(&[FrameType::Want], "WANT")?;
        let want = &frame.payload;
        if want.len() != objects.len().div_ceil(8) {
            return Err(violation(format!(
                "the receiver's WANT bitmap has {} bytes for {} objects",
                want.len(),
                objects.len()
            )));
        }
        if objects.len() % 8 != 0 && want[want.len() - 1] >> (objects.len() % 8) != 0 {
            return Err(violation(
                "the receiver's WANT bitmap has bits set past its objects",
            ));
        }
        for (i, (sha, size, path)) in objects.iter().enumerate() {
            if want[i / 8] & (1 << (i % 8)) == 0 {
                stats.objects_reused += 1;
                continue;
            }
            self.cancel.check().inspect_err(|e| conn.send_error(e))?;
            let source = resolver.resolve(path).ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("no source file for manifest path {path}"),
                )
            })?;
            let extends = held_before
                .get(path.as_str())
                .filter(|b| b.kind == EntryKind::File && b.size >= EXTEND_MIN && b.size < *size)
                .and_then(|b| b.sha256.as_deref().map(|s| (s, b.size)));
            let kept = resolver.kept(sha, *size, extends);
            match self.send_object(conn, &source, sha, *size, extends, kept) {
                Ok((bytes, extended)) => {
                    stats.objects += 1;
                    stats.object_bytes += bytes;
                    stats.objects_extended += u64::from(extended);
                }
                Err(e) => {
                    if e.kind() != ErrorKind::Network {
                        conn.send_error(&e);
                    }
                    return Err(e);
                }
            }
        }
        conn.send_json(FrameType::Commit, commit)?;
        conn.flush()?;
        let frame = conn.expect(&[FrameType::Ack], "ACK")?;
        let ack: Commit = conn.parse(&frame)?;
        if ack.txn != commit.txn || ack.digest != commit.digest {
            return Err(violation(format!(
                "the receiver acknowledged transaction {} with digest {}, not {} with {}",
                ack.txn, ack.digest, commit.txn, commit.digest
            )));
        }
        Ok(())
    }

    /// Asks the receiver for its manifest and checks it has digest `base`.
    fn fetch_manifest<S: Read + Write>(&self, conn: &mut Conn<S>, base: &str) -> Result<Manifest> {
        conn.send(FrameType::ManifestRequest, b"")?;
        let frame = conn.expect(&[FrameType::ManifestHead], "MANIFEST_HEAD")?;
        let head: ManifestHead = conn.parse(&frame)?;
        if head.entries > self.limits.max_entries {
            return Err(violation(format!(
                "the receiver's manifest has {} entries, more than the limit of {} (max_entries)",
                head.entries, self.limits.max_entries
            )));
        }
        let mut budget = self.limits.max_manifest_bytes;
        let entries: Vec<Entry> = read_batches(
            conn,
            FrameType::Entries,
            head.entries,
            &mut budget,
            "manifest entries",
        )?;
        let manifest = manifest_from_entries_of(self.kind(), entries).map_err(|e| {
            violation(format!(
                "the receiver's manifest is not valid: {}",
                e.message()
            ))
        })?;
        let got = manifest.digest();
        if got != head.digest || got != base {
            return Err(violation(format!(
                "the receiver's manifest has digest {got}, but it announced {base}"
            )));
        }
        Ok(manifest)
    }

    /// Streams one file as `OBJECT` + `DATA` frames, or, when it still
    /// starts with the contents `extends` (digest, size) that the receiver
    /// holds, as `EXTEND` + the appended bytes. Checks on the way that the
    /// file still has the size and SHA-256 of the scan. What the scan
    /// `kept` of it is sent instead of reading the file: whole, or, when a
    /// rescan found it to extend those contents, the appended bytes.
    /// Returns the content bytes sent and whether it was an extension.
    fn send_object<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        source: &Path,
        sha: &str,
        size: u64,
        extends: Option<(&str, u64)>,
        kept: Kept<'_>,
    ) -> Result<(u64, bool)> {
        let changed = || {
            Error::new(
                ErrorKind::Io,
                format!(
                    "{} {SOURCE_CHANGED}; the transaction was abandoned, and the next sync ships the new contents",
                    source.display()
                ),
            )
            .with_path(source)
        };
        let raw_sha = |hex_digest: &str| {
            sha256_bytes(hex_digest).ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("malformed digest {hex_digest}"),
                )
            })
        };
        // OBJECT: the SHA-256 and the size (EXTEND starts the same way).
        let mut object_header = Vec::with_capacity(112);
        object_header.extend_from_slice(&raw_sha(sha)?);
        object_header.extend_from_slice(&size.to_be_bytes());
        // Read (and hashed) by the scan: the file is not read again.
        let send_kept = |conn: &mut Conn<S>, bytes: &[u8]| -> Result<()> {
            for chunk in bytes.chunks(DATA_CHUNK) {
                self.cancel.check()?;
                conn.send(FrameType::Data, chunk)?;
            }
            Ok(())
        };
        match (kept, extends) {
            (Kept::Whole(bytes), None) => {
                conn.send(FrameType::Object, &object_header)?;
                send_kept(conn, bytes)?;
                return Ok((size, false));
            }
            (Kept::Grown(bytes), Some((base_sha, base_size))) => {
                let suffix = usize::try_from(base_size)
                    .ok()
                    .and_then(|n| bytes.get(n..))
                    .ok_or_else(|| {
                        Error::new(ErrorKind::Internal, "kept contents shorter than extended")
                    })?;
                let mut header = object_header;
                header.extend_from_slice(&raw_sha(base_sha)?);
                header.extend_from_slice(&base_size.to_be_bytes());
                header.extend_from_slice(&Sha256::digest(suffix));
                conn.send(FrameType::Extend, &header)?;
                send_kept(conn, suffix)?;
                return Ok((size - base_size, true));
            }
            _ => {}
        }
        let mut file = fsutil::open_nofollow(source).map_err(|e| Error::io("read", source, e))?;
        if let Some((base_sha, base_size)) = extends {
            // First pass: does the file still start with the old contents?
            // The whole file's hash goes on from the prefix's once that is
            // complete: each byte is hashed once, the suffix's twice.
            let mut prefix = Sha256::new();
            let mut suffix = Sha256::new();
            let mut whole: Option<Sha256> = None;
            let mut offset = 0u64;
            let mut buf = vec![0u8; DATA_CHUNK];
            while offset < size {
                self.cancel.check()?;
                let want = ((size - offset) as usize).min(buf.len());
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => return Err(changed()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io("read", source, e)),
                };
                let chunk = &buf[..n];
                let split = (base_size.saturating_sub(offset) as usize).min(n);
                prefix.update(&chunk[..split]);
                offset += n as u64;
                if offset >= base_size {
                    let rest = &chunk[split..];
                    whole.get_or_insert_with(|| prefix.clone()).update(rest);
                    suffix.update(rest);
                }
            }
            // (`extends` is only given for a file larger than the held one.)
            if whole.map(|w| hex::encode(w.finalize())).as_deref() != Some(sha) {
                return Err(changed());
            }
            if hex::encode(prefix.finalize()) == base_sha {
                let suffix_sha = suffix.finalize();
                let mut header = object_header;
                header.extend_from_slice(&raw_sha(base_sha)?);
                header.extend_from_slice(&base_size.to_be_bytes());
                header.extend_from_slice(&suffix_sha);
                conn.send(FrameType::Extend, &header)?;
                file.seek(SeekFrom::Start(base_size))
                    .map_err(|e| Error::io("read", source, e))?;
                let got = self.stream_data(conn, &mut file, source, size - base_size)?;
                if got.as_slice() != suffix_sha.as_slice() {
                    return Err(changed());
                }
                return Ok((size - base_size, true));
            }
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io("read", source, e))?;
        }
        conn.send(FrameType::Object, &object_header)?;
        let got = self.stream_data(conn, &mut file, source, size)?;
        if hex::encode(got) != sha {
            return Err(changed());
        }
        Ok((size, false))
    }

    /// Sends the next `len` bytes of `file` as `DATA` frames; returns their
    /// SHA-256. A file that ends early changed since the scan.
    fn stream_data<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        file: &mut std::fs::File,
        source: &Path,
        len: u64,
    ) -> Result<Vec<u8>> {
        let mut hasher = Sha256::new();
        let mut left = len;
        let mut buf = vec![0u8; DATA_CHUNK.min(len.max(1) as usize)];
        while left > 0 {
            self.cancel.check()?;
            let want = (left as usize).min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "{} {SOURCE_SHRANK}; the transaction was abandoned, and the next sync ships the new contents",
                            source.display()
                        ),
                    )
                    .with_path(source))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", source, e)),
            };
            hasher.update(&buf[..n]);
            conn.send(FrameType::Data, &buf[..n])?;
            left -= n as u64;
        }
        Ok(hasher.finalize().to_vec())
    }

    /// Updates the status file with the outcome of one attempt.
    fn record(
        &self,
        result: &std::result::Result<&SyncReport, &Error>,
        stats: Option<&Stats>,
    ) -> Result<()> {
        if validate_replica_name(&self.replica).is_err() {
            return Ok(());
        }
        let path = self.status_path();
        let mut status = SenderStatus::load(&path)
            .unwrap_or(None)
            .unwrap_or_else(|| SenderStatus::new(&self.replica, self.kind().as_str()));
        let now = Stamp::now();
        status.last_attempt = Some(now.clone());
        match result {
            Ok(report) => {
                status.last_outcome = Some(report.outcome);
                status.last_success = Some(now.clone());
                status.last_shipped = Some(DigestAt {
                    digest: report.digest.clone(),
                    txn: (report.outcome == SyncOutcome::Committed).then(|| report.txn.clone()),
                    at: now,
                });
                if let Some(s) = stats {
                    status.last_counts = SyncCounts {
                        entries: s.entries,
                        upserts: s.upserts,
                        removes: s.removes,
                        objects: s.objects,
                        object_bytes: s.object_bytes,
                        bytes_sent: s.bytes_sent,
                        bytes_received: s.bytes_received,
                        manifest_exchanged: s.manifest_exchanged,
                        elapsed_ms: s.elapsed.as_millis() as u64,
                    };
                }
            }
            Err(e) => {
                status.last_outcome = Some(SyncOutcome::Failed);
                status.last_error = Some(ErrorRecord::from_error(e));
                status.last_counts = SyncCounts::default();
            }
        }
        status.save(&path)
    }
}

/// Where the files of a manifest are read from (and contents the scan kept).
enum Resolver {
    /// The set's paths, and the contents and tails its scan kept.
    Ca(crate::replset::CaPaths, Contents, Tails),
    Nc(PathBuf),
}

impl Resolver {
    fn resolve(&self, rel: &str) -> Option<PathBuf> {
        match self {
            Resolver::Ca(paths, ..) => paths.resolve(rel),
            Resolver::Nc(dir) => crate::ncship::is_nc_path(rel).then(|| dir.join(rel)),
        }
    }

    /// What the scan kept of the contents with SHA-256 `sha256` and `size`
    /// bytes, sent where the receiver holds `extends` (digest, size) at the
    /// same path: a rescan's tail found to extend those contents, or the
    /// contents kept whole (small files, or a tail), or nothing.
    fn kept(&self, sha256: &str, size: u64, extends: Option<(&str, u64)>) -> Kept<'_> {
        let Resolver::Ca(_, contents, tails) = self else {
            return Kept::Nothing;
        };
        let tail = tails
            .with_contents(sha256)
            .filter(|t| t.held.size() == size);
        let grown = tail.filter(|t| {
            let from = t.grew_from.as_ref().map(|(b, n)| (b.as_str(), *n));
            extends.is_some() && from == extends
        });
        if let Some(t) = grown {
            return Kept::Grown(&t.held.bytes);
        }
        let whole = contents.get(sha256).filter(|b| b.len() as u64 == size);
        match whole.or(tail.map(|t| &t.held.bytes[..])) {
            Some(bytes) => Kept::Whole(bytes),
            None => Kept::Nothing,
        }
    }
}

/// What a sender has of a content besides its file (see [`Resolver::kept`]).
enum Kept<'a> {
    /// Nothing: the file is read.
    Nothing,
    /// The whole contents, as the scan read and hashed them.
    Whole(&'a [u8]),
    /// The whole contents, whose start the rescan found to be the
    /// contents the receiver holds at the path.
    Grown(&'a [u8]),
}

/// A replica name names files: letters, digits, `.`, `_`, `-`, not starting
/// with `.`, at most 253 characters.
fn validate_replica_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid replica name {name:?}: use its host name (letters, digits, '.', '_', '-')"
            ),
        ))
    }
}
