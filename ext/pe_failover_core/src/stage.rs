//! The passive primary's state directory: received transactions and the
//! snapshots built from them.
//!
//! ```text
//! <state>/
//!   incoming/                       the receiver's (transfer user), 0700
//!     <txn>.partial/                a transfer in progress, or one whose
//!                                   connection dropped (removed by the next receive)
//!     <txn>/                        a complete, verified transaction
//!       meta.json                   TxnMeta: txn, kind, sender, base, digest, counts
//!       manifest.json               the full new manifest, or
//!       manifest.delta              what it changes in its base's (a small change,
//!                                   see `manifest_delta`)
//!       objects/<sha256>            the contents the receiver lacked
//!       objects.pack                or all of them in one file, when there are
//!       objects.idx                   many, and where each one is in it (`pack`)
//!     receiver.status.json          ReceiverStatus
//!     receive.lock                  one receiver at a time
//!   snapshots/                      the applier's (root), 0700
//!     objects/<sh>/<sha256>         the content store: every file content of every
//!                                   kept snapshot, once, named by its SHA-256
//!                                   (`<sh>` = its first two hex digits), 0600
//!     objects/packs/<name>.pack     contents that arrived packed, 0600
//!     objects/packs/<name>.idx      where each is in the pack: written by the
//!                                   applier once each was checked, named last
//!     objects/gc.json               prunings since the store was last swept
//!     <digest>/
//!       meta.json                   SnapshotMeta: digest, seq, txn, created, entries, boot id
//!       manifest.json               paths, kinds, modes, owners and SHA-256s
//!       manifest.delta              the transaction's delta, when it had one, until
//!                                   the snapshot is settled (see below)
//!     <digest>.partial/             a snapshot being built
//!     latest -> <digest>            switched atomically (symlink + rename)
//!   staged.manifest.json            manifest of `latest` (a hard link to it), readable by the receiver
//!   applied.json                    the snapshot the live directories were brought to
//!   status.json                     ReplicaStatus (see the `state` module)
//!   live.scan                       stat cache of the live cadir
//!   apply.lock                      one applier at a time
//! ```
//!
//! Node Classifier dumps ([`Kind::Nc`]) are staged with the same layout
//! one level down, in `<state>/nc/` ([`StateDir::for_kind`]): their own
//! `incoming/`, `snapshots/`, `staged.manifest.json` (the NC base digest),
//! locks and `status.json` (an `NcStatus`), so the two kinds never mix.
//! `<state>/nc/outgoing/` is the active primary's outbox (see `ncship`).
//!
//! A snapshot is its manifest: the contents live once in the content store,
//! so building a snapshot costs the contents that changed plus one manifest
//! file, and removing one costs two files. Pruning sweeps the store (removes
//! contents no remaining snapshot names) every [`GC_EVERY`] removals, and at
//! every removal for the Node Classifier, whose few contents are large.
//!
//! A snapshot built from a delta gets its whole manifest written without
//! waiting for the disk (15 MB at 100,000 certificates, for a change of a
//! few entries); the delta, flushed, stays beside it until the snapshot is
//! settled (`settle_snapshot`: the manifest flushed, or after a restart
//! read back), which pruning does before it removes the snapshot the delta
//! builds on. A manifest that did not reach the disk before a crash is
//! rebuilt from the delta and that snapshot when it is next read
//! ([`open_snapshot`]).
//!
//! Transactions form a chain: each names the digest it was computed
//! against (its base), starting from the digest of `latest` (or none). The
//! applier takes them in chain order; a transaction off the chain is stale
//! and removed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::cache::write_atomically;
use crate::cancel::CancelToken;
use crate::fsutil;
use crate::manifest_delta::{delta_base, read_delta, write_delta, ManifestDelta, DELTA_FILE};
use crate::pack::{self, PackEntry, PackWriter, Packed, StorePacks, PACKS_DIR};
use crate::protocol::Kind;
use crate::replset::{
    load_manifest_against, load_manifest_of, manifest_file_digest, save_manifest,
    save_manifest_hashing, HeldBytes, HELD_MAX, HELD_MIN,
};
use crate::snapshot::{is_sha256_hex, sha256_bytes, Entry, EntryKind, Manifest};
use crate::state::Stamp;
use crate::{Error, ErrorKind, Result};

/// The subdirectory of the state directory holding the Node Classifier's
/// staging (see [`StateDir::for_kind`]).
pub const NC_SUBDIR: &str = "nc";

/// Format number of transaction and snapshot metadata files.
pub const META_FORMAT: u32 = 1;

/// A transaction's pack (see the [`pack`](crate::pack) module).
const PACK_FILE: &str = "objects.pack";

/// A transaction's pack index.
const PACK_INDEX_FILE: &str = "objects.idx";

/// Largest metadata file read from a transaction or snapshot.
const META_LIMIT: u64 = 64 * 1024;

/// Snapshot removals between two sweeps of the CA's content store.
pub const GC_EVERY: u64 = 16;

/// The paths of a passive primary's state directory (layout in the
/// [module documentation](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
    kind: Kind,
}

impl StateDir {
    /// The CA state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir {
            root: root.into(),
            kind: Kind::Ca,
        }
    }

    /// The state directory of `kind` under the state directory `root`:
    /// `root` itself for the CA, `root/nc` for Node Classifier dumps (same
    /// layout, so the two kinds' transactions, snapshots, locks and status
    /// files never mix).
    pub fn for_kind(root: impl Into<PathBuf>, kind: Kind) -> Self {
        let root = root.into();
        match kind {
            Kind::Ca => StateDir::new(root),
            Kind::Nc => StateDir {
                root: root.join(NC_SUBDIR),
                kind,
            },
        }
    }

    /// What this directory stages.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The state directory itself (`<state>/nc` for [`Kind::Nc`]).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `incoming/`.
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// `incoming/<txn>/`.
    pub fn txn_dir(&self, txn: &str) -> PathBuf {
        self.incoming().join(txn)
    }

    /// `incoming/<txn>.partial/`.
    pub fn partial_dir(&self, txn: &str) -> PathBuf {
        self.incoming().join(format!("{txn}.partial"))
    }

    /// `incoming/receiver.status.json`.
    pub fn receiver_status_file(&self) -> PathBuf {
        self.incoming().join("receiver.status.json")
    }

    /// `incoming/receive.lock`.
    pub fn receive_lock(&self) -> PathBuf {
        self.incoming().join("receive.lock")
    }

    /// `snapshots/`.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `snapshots/<digest>/`.
    pub fn snapshot_dir(&self, digest: &str) -> PathBuf {
        self.snapshots().join(digest)
    }

    /// `snapshots/objects/`: the content store.
    pub fn objects(&self) -> PathBuf {
        self.snapshots().join("objects")
    }

    /// `snapshots/objects/<first two hex digits>/<sha256>`: where the
    /// content store keeps the contents with SHA-256 `sha256`.
    pub fn object_path(&self, sha256: &str) -> PathBuf {
        self.objects()
            .join(sha256.get(..2).unwrap_or("00"))
            .join(sha256)
    }

    /// `snapshots/latest`.
    pub fn latest_link(&self) -> PathBuf {
        self.snapshots().join("latest")
    }

    /// `staged.manifest.json`.
    pub fn staged_manifest(&self) -> PathBuf {
        self.root.join("staged.manifest.json")
    }

    /// `applied.json`.
    pub fn applied_file(&self) -> PathBuf {
        self.root.join("applied.json")
    }

    /// `status.json`.
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// `live.scan`.
    pub fn live_cache(&self) -> PathBuf {
        self.root.join("live.scan")
    }

    /// `apply.lock`.
    pub fn apply_lock(&self) -> PathBuf {
        self.root.join("apply.lock")
    }
}

/// Checks a transaction id: 1 to 80 characters, ASCII letters, digits, `_`
/// and `-`, starting with a letter or digit (so it is always a safe file
/// name).
pub fn validate_txn_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 80
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid transaction id {id:?}: use 1 to 80 letters, digits, '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// A new transaction id: the UTC time and 8 random bytes
/// (`20260131T120000Z-0123456789abcdef`), so ids sort by creation time.
pub fn new_txn_id() -> String {
    let time = crate::state::rfc3339(Stamp::now().unix).replace(['-', ':'], "");
    format!("{time}-{}", fsutil::random_hex(8))
}

/// The metadata of a received transaction (`incoming/<txn>/meta.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The transaction id (also the directory name).
    pub txn: String,
    /// What is replicated (`"ca"` or `"nc"`).
    pub kind: String,
    /// The sending host, as it announced itself.
    pub sender: String,
    /// The digest the transaction was computed against (none: from nothing).
    pub base: Option<String>,
    /// The digest of the transaction's full manifest.
    pub digest: String,
    /// Entries in the manifest.
    pub entries: u64,
    /// Objects (file contents) in `objects/`.
    pub objects: u64,
    /// Bytes in `objects/`.
    pub object_bytes: u64,
    /// When the transaction was completed.
    pub received: Stamp,
    /// Objects stored as a suffix of contents the replica already holds
    /// (`objects/<sha256>.suffix`), such as a grown `inventory.txt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
}

/// An object stored as the suffix to append to contents the previous
/// snapshot holds. The receiver checked the suffix's SHA-256 and length;
/// the applier checks the SHA-256 of the whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// SHA-256 of the whole new contents.
    pub sha256: String,
    /// Size of the whole new contents.
    pub size: u64,
    /// SHA-256 of the contents it extends.
    pub base_sha256: String,
    /// Size of the contents it extends.
    pub base_size: u64,
}

/// The manifest a delta is applied to: lent, or given away so that its
/// entries move into the new manifest ([`ManifestDelta::apply_taking`]).
pub(crate) enum Given<'a> {
    Lent(&'a Manifest),
    Taken(Manifest),
}

/// A complete transaction waiting in `incoming/`.
#[derive(Clone, Debug)]
pub struct PendingTxn {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: TxnMeta,
}

impl PendingTxn {
    /// `<dir>/manifest.json`.
    pub fn manifest_file(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// `<dir>/manifest.delta`: the manifest as a delta from its base's
    /// (see [`has_delta`](Self::has_delta)).
    pub fn delta_file(&self) -> PathBuf {
        self.dir.join(DELTA_FILE)
    }

    /// Whether the receiver stored the transaction's manifest as a delta
    /// from its base's (a small change, see `manifest_delta`) rather than
    /// whole.
    pub fn has_delta(&self) -> bool {
        fs::symlink_metadata(self.manifest_file()).is_err()
            && fs::symlink_metadata(self.delta_file()).is_ok()
    }

    /// `<dir>/objects/<sha256>`.
    pub fn object_file(&self, sha256: &str) -> PathBuf {
        self.dir.join("objects").join(sha256)
    }

    /// `<dir>/objects/<sha256>.suffix`.
    pub fn suffix_file(&self, sha256: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{sha256}.suffix"))
    }

    /// `<dir>/objects.pack`: the contents, when the receiver packed them.
    pub fn pack_file(&self) -> PathBuf {
        self.dir.join(PACK_FILE)
    }

    /// `<dir>/objects.idx`: the index of [`pack_file`](Self::pack_file).
    pub fn pack_index_file(&self) -> PathBuf {
        self.dir.join(PACK_INDEX_FILE)
    }

    /// Reads and checks the transaction's manifest: the replication rules,
    /// and a digest equal to the one in its metadata.
    pub fn load_manifest(&self) -> Result<Manifest> {
        self.load_manifest_at(&self.manifest_file(), None)
    }

    /// [`load_manifest`](Self::load_manifest) from `path` (the manifest
    /// under another name), decoding only the entries that differ from
    /// `base`'s when given (see `replset::load_manifest_against`).
    fn load_manifest_at(&self, path: &Path, base: Option<&Manifest>) -> Result<Manifest> {
        let manifest =
            load_manifest_against(self.kind()?, path, base)?.ok_or_else(|| self.no_manifest())?;
        self.check_digest(&manifest.digest(), path)?;
        Ok(manifest)
    }

    /// The manifest of a transaction stored as a delta (see
    /// [`has_delta`](Self::has_delta)), made from `base`, the manifest of its
    /// base, read and checked: the rules where the delta changes `base`, and
    /// the digest in its metadata.
    fn load_delta_on(&self, base: &Manifest) -> Result<Manifest> {
        let path = self.delta_file();
        let delta = read_delta(&path).map_err(|e| self.missing_delta(e))?;
        let (manifest, _) = self.apply_delta(&delta, &path, Given::Lent(base))?;
        self.check_digest(&manifest.digest(), &path)?;
        Ok(manifest)
    }

    /// `delta` (read from `path`) applied to `base`, checked by the rules of
    /// the transaction's kind where it changes `base`; its digest is the
    /// caller's to check ([`check_digest`](Self::check_digest)). With a base
    /// given away, also the entries of it the delta replaced or removed
    /// ([`ManifestDelta::apply_taking`]); none otherwise.
    fn apply_delta(
        &self,
        delta: &ManifestDelta,
        path: &Path,
        base: Given<'_>,
    ) -> Result<(Manifest, Vec<Entry>)> {
        let in_txn = |e: Error| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "transaction {} (manifest delta {}): {}",
                    self.meta.txn,
                    path.display(),
                    e.message()
                ),
            )
            .with_path(path)
        };
        if delta.digest != self.meta.digest {
            return Err(in_txn(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "it makes the manifest with digest {}, its metadata says {}",
                    delta.digest, self.meta.digest
                ),
            )));
        }
        let kind = self.kind()?;
        match base {
            Given::Lent(base) => delta.apply(kind, base).map(|m| (m, Vec::new())),
            Given::Taken(base) => delta.apply_taking(kind, base),
        }
        .map_err(in_txn)
    }

    /// Refuses `digest`, that of the manifest read from `path`, when it is
    /// not the one in the transaction's metadata.
    fn check_digest(&self, digest: &str, path: &Path) -> Result<()> {
        if digest != self.meta.digest {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "transaction {}: its manifest has digest {digest}, its metadata says {}",
                    self.meta.txn, self.meta.digest
                ),
            )
            .with_path(path));
        }
        Ok(())
    }

    /// The transaction's kind, from its metadata.
    fn kind(&self) -> Result<Kind> {
        Kind::from_name(&self.meta.kind).ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "transaction {} is of the unknown kind {:?}",
                    self.meta.txn, self.meta.kind
                ),
            )
            .with_path(&self.dir)
        })
    }

    /// `e`, from reading the delta file, as "no manifest" when the file is
    /// missing.
    fn missing_delta(&self, e: Error) -> Error {
        match e.kind() {
            ErrorKind::NotFound => self.no_manifest(),
            _ => e,
        }
    }

    fn no_manifest(&self) -> Error {
        let path = self.manifest_file();
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "transaction {} has no manifest ({} is missing)",
                self.meta.txn,
                path.display()
            ),
        )
        .with_path(&path)
    }

    /// Gives the manifest file a second name, `dst` (in a snapshot being
    /// built), makes it root's with mode 0644 and reads it back from there,
    /// checked as by [`load_manifest`](Self::load_manifest) (only the entries
    /// that differ from `base`'s decoded, when given). The receiver already
    /// wrote it durably, so it is not written a second time.
    fn adopt_manifest(&self, dst: &Path, base: Option<&Manifest>) -> Result<Manifest> {
        self.take_over_file(&self.manifest_file(), dst, 0o644)?;
        self.load_manifest_at(dst, base)
    }

    /// Takes the transaction's delta file over into `partial` (a snapshot
    /// being built) as [`adopt_manifest`](Self::adopt_manifest) does a whole
    /// manifest, and reads it (see
    /// [`manifest_from_delta`](Self::manifest_from_delta)).
    fn adopt_delta(&self, partial: &Path) -> Result<ManifestDelta> {
        let dst = partial.join(DELTA_FILE);
        self.take_over_file(&self.delta_file(), &dst, 0o600)?;
        read_delta(&dst)
    }

    /// The manifest `delta` (taken over into `partial` by
    /// [`adopt_delta`](Self::adopt_delta)) makes from `base`, the manifest
    /// of the snapshot it builds on, checked by the rules where it changes
    /// `base`, written into `partial` as `manifest.json` (0644), hashed as it
    /// is written, and checked against the metadata. That file is not
    /// flushed: the delta, durable, stays beside it until the snapshot is
    /// settled ([`settle_snapshot`]), and rebuilds it if it did not reach
    /// the disk ([`open_snapshot`]).
    /// With `base` given away, also returns its entries the delta replaced
    /// or removed.
    fn manifest_from_delta(
        &self,
        delta: &ManifestDelta,
        partial: &Path,
        base: Given<'_>,
    ) -> Result<(Manifest, Vec<Entry>)> {
        let (manifest, replaced) = self.apply_delta(delta, &partial.join(DELTA_FILE), base)?;
        let path = partial.join("manifest.json");
        save_manifest_hashing(&path, &manifest, 0o644, false)?;
        self.check_digest(&manifest.digest(), &path)?;
        Ok((manifest, replaced))
    }

    /// Gives `src`, a file of the transaction, the second name `dst`, made
    /// root's with permission bits `mode` and flushed. The receiver wrote it
    /// durably, so it is not written a second time.
    fn take_over_file(&self, src: &Path, dst: &Path, mode: u32) -> Result<()> {
        if let Err(e) = fs::hard_link(src, dst) {
            return Err(if e.kind() == io::ErrorKind::NotFound {
                self.no_manifest()
            } else {
                Error::io("link", dst, e)
            });
        }
        // Its only other name is the transaction's: a file with more (say a
        // hard link to a system file, made by the transfer user) is not
        // taken over.
        let what = format!("transaction {} (manifest {})", self.meta.txn, src.display());
        let file = fsutil::take_over(dst, 2, mode, &what).inspect_err(|_| {
            let _ = fs::remove_file(dst);
        })?;
        file.sync_all().map_err(|e| Error::io("sync", dst, e))
    }
}

/// A transaction directory that could not be read.
#[derive(Debug)]
pub struct BrokenTxn {
    /// Its directory.
    pub dir: PathBuf,
    /// Why it could not be read.
    pub error: Error,
}

/// The transactions found in `incoming/`.
#[derive(Debug, Default)]
pub struct TxnListing {
    /// Complete transactions of the kind asked for, oldest first.
    pub complete: Vec<PendingTxn>,
    /// Transaction directories whose metadata could not be read.
    pub broken: Vec<BrokenTxn>,
}

/// The complete transactions of `kind` in `incoming/`, oldest first, and
/// the transaction directories that could not be read (with why).
/// `.partial` directories, files and symlinks are skipped.
pub fn list_txns(state: &StateDir, kind: &str) -> Result<TxnListing> {
    let incoming = state.incoming();
    let reader = match fs::read_dir(&incoming) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TxnListing::default()),
        Err(e) => return Err(Error::io("list", &incoming, e)),
    };
    let mut txns = Vec::new();
    let mut broken = Vec::new();
    for item in reader {
        let item = item.map_err(|e| Error::io("list", &incoming, e))?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir || name.ends_with(".partial") || validate_txn_id(&name).is_err() {
            continue;
        }
        let dir = item.path();
        match read_txn_meta(&dir, &name) {
            Ok(meta) if meta.kind == kind => txns.push(PendingTxn { dir, meta }),
            Ok(_) => {}
            Err(error) => broken.push(BrokenTxn { dir, error }),
        }
    }
    txns.sort_by(|a, b| {
        (a.meta.received.unix, &a.meta.txn).cmp(&(b.meta.received.unix, &b.meta.txn))
    });
    Ok(TxnListing {
        complete: txns,
        broken,
    })
}

fn read_txn_meta(dir: &Path, name: &str) -> Result<TxnMeta> {
    let path = dir.join("meta.json");
    let bytes = fsutil::read_bounded(&path, META_LIMIT)?;
    let meta: TxnMeta = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("{} is not valid: {e}", path.display()),
        )
        .with_path(&path)
    })?;
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::Corrupt,
            format!("{} is not valid: {why}", path.display()),
        )
        .with_path(&path))
    };
    if meta.format != META_FORMAT {
        return bad("unknown format");
    }
    if meta.txn != name {
        return bad("it names another transaction");
    }
    if !is_sha256_hex(&meta.digest) || meta.base.as_deref().is_some_and(|b| !is_sha256_hex(b)) {
        return bad("bad digest");
    }
    if meta.extensions.iter().any(|x| {
        !is_sha256_hex(&x.sha256) || !is_sha256_hex(&x.base_sha256) || x.base_size >= x.size
    }) {
        return bad("bad extension");
    }
    Ok(meta)
}

/// Orders transactions into the chain starting at digest `start`: the
/// indices of `txns` to apply, in order, and the indices of the others
/// (stale: computed against a state this host no longer has). When several
/// transactions share a base, the newest wins.
pub fn chain(start: Option<&str>, txns: &[PendingTxn]) -> (Vec<usize>, Vec<usize>) {
    let mut used = vec![false; txns.len()];
    let mut order = Vec::new();
    let mut current = start.map(str::to_string);
    let mut seen: Vec<String> = current.iter().cloned().collect();
    loop {
        let next = txns
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !used[*i] && t.meta.base == current && Some(&t.meta.digest) != current.as_ref()
            })
            .map(|(i, _)| i)
            .next_back();
        let Some(i) = next else { break };
        if seen.contains(&txns[i].meta.digest) {
            break;
        }
        used[i] = true;
        order.push(i);
        seen.push(txns[i].meta.digest.clone());
        current = Some(txns[i].meta.digest.clone());
    }
    let rest = (0..txns.len()).filter(|i| !used[*i]).collect();
    (order, rest)
}

/// What a receiver holds for a kind: the digest new transactions build on,
/// and where its manifest is (read only when a session needs it, see
/// [`Base::manifest`]).
#[derive(Clone, Debug)]
pub struct Base {
    /// The digest (none: nothing received yet).
    pub digest: Option<String>,
    /// Complete transactions waiting for the applier on the way to it.
    pub pending: usize,
    source: BaseSource,
}

#[derive(Clone, Debug)]
enum BaseSource {
    Nothing,
    Staged(PathBuf),
    /// The pending transactions from the staged snapshot to the base, in
    /// chain order, and `staged.manifest.json` (where the last one's
    /// manifest is once the applier has staged it).
    Txns(Vec<PendingTxn>, PathBuf),
}

impl Base {
    /// The manifest with digest [`digest`](Self::digest) (empty when none),
    /// read and checked. A pending transaction the applier staged in the
    /// meantime is read from `staged.manifest.json` instead.
    pub fn manifest(&self, kind: Kind) -> Result<Manifest> {
        match &self.source {
            BaseSource::Nothing => Ok(Manifest::default()),
            BaseSource::Staged(path) => staged_with(kind, path, self.digest.as_deref()),
            BaseSource::Txns(chain, path) => pending_manifest(kind, chain, path).or_else(|e| {
                if chain.iter().any(|t| t.dir.exists()) {
                    Err(e)
                } else {
                    staged_with(kind, path, self.digest.as_deref())
                }
            }),
        }
    }
}

/// The manifest in `staged.manifest.json` (at `path`), which must have
/// `digest` (none: the file holds no manifest yet).
fn staged_with(kind: Kind, path: &Path, digest: Option<&str>) -> Result<Manifest> {
    let manifest = load_manifest_of(kind, path)?.unwrap_or_default();
    if Some(manifest.digest().as_str()) != digest {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{} no longer holds the manifest with digest {} this session started from; sync again",
                path.display(),
                digest.unwrap_or("(none)")
            ),
        )
        .with_path(path));
    }
    Ok(manifest)
}

/// The manifest of the last of `chain`, pending transactions in chain order
/// from the staged manifest (at `staged`): read from the last one stored
/// whole, or from the staged one (which may be that of one of them by now,
/// staged by the applier meanwhile), then the deltas of those after it
/// applied in turn.
fn pending_manifest(kind: Kind, chain: &[PendingTxn], staged: &Path) -> Result<Manifest> {
    // (A transaction the applier took meanwhile has neither file.)
    let whole = chain
        .iter()
        .rposition(|t| fs::symlink_metadata(t.manifest_file()).is_ok());
    let (mut manifest, rest) = match whole {
        Some(i) => (chain[i].load_manifest()?, &chain[i + 1..]),
        None => {
            let manifest = load_manifest_of(kind, staged)?.unwrap_or_default();
            let digest = manifest.digest();
            let from = match chain.first() {
                Some(t) if t.meta.base.as_deref() == Some(digest.as_str()) => Some(0),
                _ => chain
                    .iter()
                    .position(|t| t.meta.digest == digest)
                    .map(|i| i + 1),
            };
            let Some(from) = from else {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{} holds the manifest with digest {digest}, on no way to the pending transactions; sync again",
                        staged.display()
                    ),
                )
                .with_path(staged));
            };
            (manifest, &chain[from..])
        }
    };
    for txn in rest {
        manifest = txn.load_delta_on(&manifest)?;
    }
    Ok(manifest)
}

/// The receiver's base: the end of the chain of pending transactions that
/// starts at the staged snapshot (the digest recorded in
/// `staged.manifest.json`), or the staged snapshot itself. Only digests
/// are read here; a staged manifest without a readable digest counts as
/// none, so the sender ships everything again.
pub fn receiver_base(state: &StateDir, kind: &str) -> Result<Base> {
    let staged_path = state.staged_manifest();
    let start = manifest_file_digest(&staged_path);
    let txns = list_txns(state, kind)?.complete;
    let (order, _) = chain(start.as_deref(), &txns);
    let Some(&head) = order.last() else {
        return Ok(Base {
            source: match start {
                Some(_) => BaseSource::Staged(staged_path),
                None => BaseSource::Nothing,
            },
            digest: start,
            pending: 0,
        });
    };
    let digest = Some(txns[head].meta.digest.clone());
    let pending = order.len();
    let mut txns: Vec<Option<PendingTxn>> = txns.into_iter().map(Some).collect();
    let chain = order.iter().filter_map(|&i| txns[i].take()).collect();
    Ok(Base {
        digest,
        pending,
        source: BaseSource::Txns(chain, staged_path),
    })
}

/// Writes one transaction into `incoming/<txn>.partial/` and renames it to
/// `incoming/<txn>/` once it is complete and durable. Dropped unfinished,
/// it removes the partial directory (after the manifest's writer is done).
#[derive(Debug)]
pub(crate) struct TxnWriter {
    partial: PathBuf,
    final_dir: PathBuf,
    incoming: PathBuf,
    written: Vec<PathBuf>,
    flusher: fsutil::Flusher,
    pack: Option<PackWriter>,
    manifest: Option<std::thread::JoinHandle<Result<Manifest>>>,
    /// The manifest once written (see [`written_manifest`](Self::written_manifest)).
    manifest_done: Option<Manifest>,
    done: bool,
}

impl TxnWriter {
    pub(crate) fn create(state: &StateDir, txn: &str) -> Result<TxnWriter> {
        validate_txn_id(txn)?;
        let incoming = state.incoming();
        fsutil::ensure_dir(&incoming, 0o700)?;
        let final_dir = state.txn_dir(txn);
        if fs::symlink_metadata(&final_dir).is_ok() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("transaction {txn} was already received; start a new one"),
            ));
        }
        let partial = state.partial_dir(txn);
        fsutil::remove_any(&partial)?;
        fsutil::ensure_dir(&partial.join("objects"), 0o700)?;
        fsutil::ensure_dir(&partial, 0o700)?;
        Ok(TxnWriter {
            flusher: fsutil::Flusher::new(&partial),
            partial,
            final_dir,
            incoming,
            written: Vec::new(),
            pack: None,
            manifest: None,
            manifest_done: None,
            done: false,
        })
    }

    /// Writes `manifest` into the transaction, flushed, on a thread of its
    /// own: at 100k certificates it is 15 MB, written (and hashed, when its
    /// digest is not known yet) while the contents arrive.
    /// [`written_manifest`](Self::written_manifest) waits for it.
    pub(crate) fn write_manifest(&mut self, manifest: Manifest) -> Result<()> {
        let path = self.partial.join("manifest.json");
        self.manifest_thread("write", move || {
            save_manifest_hashing(&path, &manifest, 0o600, true).map(|()| manifest)
        })
    }

    /// Stores `manifest` as its delta from the manifest with digest `base`
    /// (see [`manifest_delta`](crate::manifest_delta)): `upserts` and
    /// `removed`, recorded with `digest`, the one the sender announced. The
    /// small file is written here; the manifest's digest is computed on a
    /// thread of its own while the contents arrive.
    /// [`written_manifest`](Self::written_manifest) waits for it.
    pub(crate) fn write_delta(
        &mut self,
        manifest: Manifest,
        base: &str,
        digest: &str,
        upserts: &[&Entry],
        removed: &[&str],
    ) -> Result<()> {
        let path = self.partial.join(DELTA_FILE);
        write_delta(&path, base, digest, upserts, removed)?;
        self.written.push(path);
        self.manifest_thread("hash", move || {
            manifest.digest();
            Ok(manifest)
        })
    }

    /// Runs `work` (which does to the manifest what `doing` says) on the
    /// thread [`written_manifest`](Self::written_manifest) waits for.
    fn manifest_thread(
        &mut self,
        doing: &str,
        work: impl FnOnce() -> Result<Manifest> + Send + 'static,
    ) -> Result<()> {
        let thread = std::thread::Builder::new()
            .name("pe_failover-txn-manifest".into())
            .spawn(work)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot start a thread to {doing} the transaction's manifest: {e}"),
                )
            })?;
        self.manifest = Some(thread);
        Ok(())
    }

    /// Waits for the manifest's writer (see [`write_manifest`](Self::write_manifest))
    /// and returns the manifest written, whose digest is then known.
    pub(crate) fn written_manifest(&mut self) -> Result<&Manifest> {
        if let Some(thread) = self.manifest.take() {
            let manifest = crate::joined(thread.join(), "writing the transaction's manifest")?;
            self.manifest_done = Some(manifest);
        }
        self.manifest_done.as_ref().ok_or_else(no_manifest_written)
    }

    /// Appends the whole contents this transaction receives to one pack
    /// (`objects.pack`, indexed in `objects.idx`; see the [`pack`](crate::pack)
    /// module) instead of a file each.
    pub(crate) fn use_pack(&mut self) -> Result<()> {
        self.pack = Some(PackWriter::create(self.partial.join(PACK_FILE))?);
        Ok(())
    }

    /// Receives one content of `size` bytes through `receive`, which writes
    /// it to the file it is given and returns its SHA-256 (hex): into the
    /// pack when there is one and `packable`, else into `objects/<name>`
    /// (`<sha256>` or `<sha256>.suffix`). Writeback starts in the
    /// background once many bytes are written.
    pub(crate) fn receive_object(
        &mut self,
        name: &str,
        size: u64,
        packable: bool,
        receive: impl FnOnce(&mut dyn Write, &Path) -> Result<String>,
    ) -> Result<String> {
        self.flusher.wrote(size);
        if let (true, Some(pack)) = (packable, self.pack.as_mut()) {
            let (file, path) = pack.file();
            let got = receive(file, path)?;
            if let Some(sha) = sha256_bytes(&got) {
                pack.added(sha, size);
            }
            return Ok(got);
        }
        let path = self.partial.join("objects").join(name);
        let mut file = fsutil::create_private(&path)?;
        self.written.push(path.clone());
        receive(&mut file, &path)
    }

    /// Writes the metadata once the manifest is written (see
    /// [`write_manifest`](Self::write_manifest)), makes everything durable
    /// and renames the directory into place. Returns the directory and the
    /// manifest. `meta.digest` must be the written manifest's (see
    /// [`written_manifest`](Self::written_manifest)): the caller compares
    /// it with the one the sender announced.
    pub(crate) fn finish(mut self, meta: &TxnMeta) -> Result<(PathBuf, Manifest)> {
        if let Some(pack) = self.pack.take() {
            let idx = self.partial.join(PACK_INDEX_FILE);
            self.written.push(pack.path().to_path_buf());
            pack.finish(&idx)?;
            self.written.push(idx);
        }
        self.written_manifest()?;
        let manifest = self.manifest_done.take().ok_or_else(no_manifest_written)?;
        debug_assert_eq!(manifest.digest(), meta.digest, "checked by the caller");
        let bytes = serde_json::to_vec_pretty(meta)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode metadata: {e}")))?;
        // In the partial directory, renamed whole once everything in it is
        // durable: written in place, and synced with the rest.
        let meta_file = self.partial.join("meta.json");
        pack::write_new(&meta_file, &bytes)?;
        self.written.push(meta_file);
        if !fsutil::sync_new_files(&self.written)? {
            fsutil::fsync_dir(&self.partial.join("objects"))?;
        }
        fsutil::fsync_dir(&self.partial)?;
        fs::rename(&self.partial, &self.final_dir)
            .map_err(|e| Error::io("rename into place", &self.final_dir, e))?;
        fsutil::fsync_dir(&self.incoming)?;
        self.done = true;
        Ok((self.final_dir.clone(), manifest))
    }
}

impl Drop for TxnWriter {
    fn drop(&mut self) {
        // A manifest still being written would race the removal.
        if let Some(thread) = self.manifest.take() {
            crate::drop_in_background(thread.join());
        }
        if !self.done {
            let _ = fsutil::remove_any(&self.partial);
        }
    }
}

/// Removes every `incoming/*.partial` directory (transfers whose receiver
/// died); returns how many.
pub(crate) fn clean_partials(state: &StateDir) -> Result<u64> {
    let incoming = state.incoming();
    let reader = match fs::read_dir(&incoming) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", &incoming, e)),
    };
    let mut n = 0;
    for item in reader {
        let item = item.map_err(|e| Error::io("list", &incoming, e))?;
        if item.file_name().to_string_lossy().ends_with(".partial") {
            fsutil::remove_any(&item.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// The metadata of a snapshot (`snapshots/<digest>/meta.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The manifest digest (also the directory name).
    pub digest: String,
    /// Increases by one with every snapshot built; pruning keeps the highest.
    pub seq: u64,
    /// The transaction it was built from.
    pub txn: Option<String>,
    /// When it was built.
    pub created: Stamp,
    /// Entries in its manifest.
    #[serde(default)]
    pub entries: u64,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) while it
    /// was built. Until the snapshot is settled (see `settle_snapshot`),
    /// its manifest file may not be on disk yet: written during this boot,
    /// it is whole in the page cache; written during an earlier one, it is
    /// read back to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// A complete snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// `snapshots/<digest>/`.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The content store (`snapshots/objects/`).
    objects: PathBuf,
    /// Its packs, read when first needed.
    packs: Arc<OnceLock<StorePacks>>,
    /// Large contents of it the applier holds in memory (see [`Held`]).
    held: Held,
    /// What it changed in the snapshot it was built on, when it was built
    /// from a delta.
    changed: Option<Arc<Changed>>,
    /// Its files as the applier's deletion guard counts them, with the
    /// exclusion patterns they were counted under, once counted (see
    /// [`counted_files`](Self::counted_files)).
    counted: Arc<OnceLock<(Vec<String>, u64)>>,
}

/// The paths a snapshot built from a delta changed (upserted or removed) in
/// the one it was built on.
#[derive(Debug)]
pub(crate) struct Changed {
    /// The digest of the snapshot it was built on.
    base: String,
    /// The paths, sorted.
    paths: Vec<String>,
}

/// Large contents of a snapshot (a grown `inventory.txt`) the applier built
/// in memory from the contents they extend and a received suffix, kept with
/// the snapshot in a [`LatestCache`] so that the next extension of them is
/// hashed and written from memory instead of read from the store and
/// hashed whole again: their bytes, checked against their SHA-256 when they
/// were built, and the SHA-256 state after the last byte.
/// (Each with the path the snapshot has it at.)
#[derive(Clone, Debug, Default)]
struct Held(Arc<Vec<(String, HeldBytes)>>);

impl Held {
    /// All of them, taken out (owned when nothing else holds them).
    fn take_all(&mut self) -> Vec<(String, HeldBytes)> {
        Arc::unwrap_or_clone(std::mem::take(&mut self.0))
    }

    /// The held contents with SHA-256 `sha256`.
    fn find(&self, sha256: &str) -> Option<&HeldBytes> {
        self.0.iter().map(|(_, h)| h).find(|h| h.sha256 == sha256)
    }

    /// `built` and those of `self` that `manifest` still has at their path.
    fn carried(&self, manifest: &Manifest, built: Vec<(String, HeldBytes)>) -> Held {
        let mut all = built;
        for (path, h) in self.0.iter() {
            let same = manifest
                .get(path)
                .is_some_and(|e| e.sha256.as_deref() == Some(h.sha256.as_str()));
            if same && !all.iter().any(|(p, _)| p == path) {
                all.push((path.clone(), h.clone()));
            }
        }
        Held(Arc::new(all))
    }
}

/// Where the content store keeps some contents.
#[derive(Debug)]
pub(crate) enum Stored<'a> {
    /// In a file of their own (or nowhere: then that file is missing).
    Loose(PathBuf),
    /// In a pack.
    Packed(Packed<'a>),
    /// In memory (see [`Held`]): checked when they were built, so they
    /// need not be read from the store and hashed again.
    Held(&'a [u8]),
}

impl Snapshot {
    /// The paths this snapshot changed in the snapshot with digest `base`,
    /// sorted, when it was built on it from a delta (otherwise the caller
    /// compares the manifests).
    /// Its files as counted under the exclusion patterns `patterns` and
    /// recorded by [`record_counted_files`](Self::record_counted_files).
    pub(crate) fn counted_files(&self, patterns: &[String]) -> Option<u64> {
        self.counted
            .get()
            .filter(|(p, _)| p.as_slice() == patterns)
            .map(|(_, n)| *n)
    }

    /// Records `files`, its files counted under `patterns` (the first count
    /// recorded stays).
    pub(crate) fn record_counted_files(&self, patterns: &[String], files: u64) {
        let _ = self.counted.set((patterns.to_vec(), files));
    }

    pub(crate) fn changed_since(&self, base: &str) -> Option<&[String]> {
        self.changed
            .as_deref()
            .filter(|c| c.base == base)
            .map(|c| c.paths.as_slice())
    }

    /// Where the content store keeps the contents with SHA-256 `sha256`
    /// when they have a file of their own.
    pub(crate) fn object_path(&self, sha256: &str) -> PathBuf {
        self.objects
            .join(sha256.get(..2).unwrap_or("00"))
            .join(sha256)
    }

    /// Where the content store keeps the contents with SHA-256 `sha256`: in
    /// a pack or in a file of their own (both were checked when added).
    /// Until a content is missed loose the packs are not read, so a
    /// snapshot whose new contents are loose reads none; once they are
    /// read, they are looked in first, in memory, and a full apply does
    /// not look for 100,000 loose files that are not there.
    pub(crate) fn stored(&self, sha256: &str) -> Stored<'_> {
        if let Some(held) = self.held.find(sha256) {
            return Stored::Held(&held.bytes);
        }
        let loose = self.object_path(sha256);
        let look_in_packs = self.packs.get().is_some() || fs::symlink_metadata(&loose).is_err();
        match look_in_packs.then(|| self.packed(sha256)).flatten() {
            Some(packed) => Stored::Packed(packed),
            None => Stored::Loose(loose),
        }
    }

    /// The contents with SHA-256 `sha256`, if in a pack.
    pub(crate) fn packed(&self, sha256: &str) -> Option<Packed<'_>> {
        self.packs().find(&sha256_bytes(sha256)?)
    }

    /// Packs of the content store left out because they could not be read.
    pub(crate) fn pack_problems(&self) -> &[String] {
        self.packs().problems()
    }

    fn packs(&self) -> &StorePacks {
        self.packs
            .get_or_init(|| StorePacks::load(&self.objects.join(PACKS_DIR)))
    }
}

fn read_link_digest(state: &StateDir) -> Result<Option<String>> {
    let link = state.latest_link();
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read link", &link, e)),
    };
    let digest = target.to_string_lossy().to_string();
    if !is_sha256_hex(&digest) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{} points to {digest:?}, not a snapshot digest; remove the link and let the next sync rebuild it",
                link.display()
            ),
        )
        .with_path(&link));
    }
    Ok(Some(digest))
}

/// The snapshot `latest` points to, if any.
pub fn latest_snapshot(state: &StateDir) -> Result<Option<Snapshot>> {
    let Some(digest) = read_link_digest(state)? else {
        return Ok(None);
    };
    open_snapshot(state, &digest)?.map(Some).ok_or_else(|| {
        let link = state.latest_link();
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "{} points to the missing snapshot {digest}; remove the link and let the next sync rebuild it",
                link.display()
            ),
        )
        .with_path(&link)
    })
}

/// The metadata of the snapshot `latest` points to (without reading its
/// manifest), if any.
pub fn latest_snapshot_meta(state: &StateDir) -> Result<Option<SnapshotMeta>> {
    match read_link_digest(state)? {
        Some(digest) => snapshot_meta(state, &digest),
        None => Ok(None),
    }
}

/// The latest snapshot, kept in memory between applier runs by a
/// long-running caller (the passive primary's watcher), so that a run
/// whose transaction follows it does not read and check its manifest again
/// (at 100,000 certificates, 15 MB and about 30 ms), and decodes only the
/// entries of the transaction's manifest that differ from it. A kept snapshot is
/// used only while `snapshots/latest` still names it and its `meta.json`
/// is the one it was kept with (same digest, sequence number, transaction
/// and creation time); otherwise it is read from disk as without a cache.
/// Its manifest was checked against its digest when it was read or built.
/// Clones share the kept snapshot; [`Default`] keeps nothing yet.
#[derive(Clone, Debug, Default)]
pub struct LatestCache(Arc<Mutex<Option<Snapshot>>>);

impl LatestCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kept snapshot, taken out of the cache, if it is the one `latest`
    /// names, whose metadata is `meta` (as just read from disk; `None`:
    /// there is none); otherwise `None` (the caller reads it with
    /// [`latest_snapshot`]) and the cache is emptied.
    pub(crate) fn take(&self, meta: Option<&SnapshotMeta>) -> Option<Snapshot> {
        let kept = self.slot().take();
        match (kept, meta) {
            (Some(kept), Some(meta)) if kept.meta == *meta => Some(kept),
            (kept, _) => {
                crate::drop_in_background(kept);
                None
            }
        }
    }

    /// Keeps `snapshot` (the one `latest` names now) for the next run.
    pub(crate) fn keep(&self, snapshot: Option<Snapshot>) {
        // Pack indexes are read again when first needed: packs may come and
        // go with later snapshots.
        let fresh = snapshot.map(|s| Snapshot {
            packs: Arc::default(),
            ..s
        });
        let old = std::mem::replace(&mut *self.slot(), fresh);
        crate::drop_in_background(old);
    }

    /// Whether a snapshot is kept (for tests and the bench).
    pub fn is_kept(&self) -> bool {
        self.slot().is_some()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        // A panic while holding the lock leaves at worst a stale snapshot,
        // which `take` checks against the disk anyway.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The metadata of the snapshot with `digest` (its manifest is not read),
/// if there is a complete one.
pub fn snapshot_meta(state: &StateDir, digest: &str) -> Result<Option<SnapshotMeta>> {
    if !is_sha256_hex(digest) {
        return Ok(None);
    }
    let dir = state.snapshot_dir(digest);
    let meta_path = dir.join("meta.json");
    let bytes = match fsutil::read_bounded(&meta_path, META_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta: SnapshotMeta = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("{} is not valid: {e}", meta_path.display()),
        )
        .with_path(&meta_path)
    })?;
    if meta.digest != digest {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("snapshot {} does not match its name", dir.display()),
        )
        .with_path(&dir));
    }
    Ok(Some(meta))
}

/// The complete snapshot with `digest`, if there is one. A snapshot built
/// from a delta whose manifest file did not reach the disk before a crash
/// (see `settle_snapshot`) gets it back: the delta it keeps is applied
/// again to its base, and the manifest written and flushed. One read whole
/// during a later boot than it was built in is settled.
pub fn open_snapshot(state: &StateDir, digest: &str) -> Result<Option<Snapshot>> {
    open_snapshot_within(state, digest, RECOVER_DEPTH)
}

/// How many snapshots back [`open_snapshot`] goes to rebuild a manifest
/// from deltas (pruning keeps the base of every unsettled snapshot, so the
/// chain ends at a settled one).
const RECOVER_DEPTH: usize = 1024;

fn open_snapshot_within(state: &StateDir, digest: &str, depth: usize) -> Result<Option<Snapshot>> {
    let Some(meta) = snapshot_meta(state, digest)? else {
        return Ok(None);
    };
    let dir = state.snapshot_dir(digest);
    let delta = dir.join(DELTA_FILE);
    let has_delta = || fs::symlink_metadata(&delta).is_ok();
    let manifest = match snapshot_manifest(state, &dir, digest) {
        Ok(m) => {
            // Read whole during a later boot than it was written in, it
            // is on disk: the snapshot is settled.
            if built_in_another_boot(&meta) && has_delta() {
                fsutil::remove_any(&delta)?;
                fsutil::fsync_dir(&dir)?;
            }
            m
        }
        Err(e) if has_delta() => rebuild_manifest(state, &dir, digest, depth).map_err(|r| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{}; rebuilding it from {} failed too: {}",
                    e.message(),
                    delta.display(),
                    r.message()
                ),
            )
            .with_path(&dir)
        })?,
        Err(e) => return Err(e),
    };
    Ok(Some(Snapshot {
        meta,
        dir,
        manifest,
        objects: state.objects(),
        packs: Arc::default(),
        held: Held::default(),
        changed: None,
        counted: Arc::default(),
    }))
}

/// The manifest of the snapshot in `dir`, read and checked against its
/// name, `digest`.
fn snapshot_manifest(state: &StateDir, dir: &Path, digest: &str) -> Result<Manifest> {
    let manifest =
        load_manifest_of(state.kind(), &dir.join("manifest.json"))?.ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("snapshot {} has no manifest", dir.display()),
            )
            .with_path(dir)
        })?;
    if manifest.digest() != digest {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("snapshot {} does not match its name", dir.display()),
        )
        .with_path(dir));
    }
    Ok(manifest)
}

/// The manifest of the snapshot in `dir` (named `digest`) made again from
/// the delta it keeps and the snapshot that delta builds on (opened within
/// `depth` more steps back), written durably as its manifest file, which
/// settles the snapshot. `staged.manifest.json` follows when it was a name
/// of the file replaced.
fn rebuild_manifest(state: &StateDir, dir: &Path, digest: &str, depth: usize) -> Result<Manifest> {
    let path = dir.join(DELTA_FILE);
    let delta = read_delta(&path)?;
    if depth == 0 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("too many snapshots back to {}", delta.base),
        ));
    }
    let base = open_snapshot_within(state, &delta.base, depth - 1)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            format!("the snapshot it builds on, {}, is gone", delta.base),
        )
    })?;
    let manifest = delta.apply(state.kind(), &base.manifest)?;
    if manifest.digest() != digest || delta.digest != digest {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "the delta makes the manifest with digest {}, not {digest}",
                manifest.digest()
            ),
        ));
    }
    let file = dir.join("manifest.json");
    let staged_here = manifest_file_digest(&state.staged_manifest()).as_deref() == Some(digest);
    save_manifest(&file, &manifest, 0o644)?;
    fsutil::remove_any(&path)?;
    fsutil::fsync_dir(dir)?;
    if staged_here {
        publish_staged(state, dir, &manifest)?;
    }
    Ok(manifest)
}

/// Whether the manifest file of the snapshot with metadata `meta` is known
/// to be as written: settled (see [`settle_snapshot`]), or written during
/// this boot. After a restart an unsettled one is read (and rebuilt when it
/// did not reach the disk) before it is relied on.
pub(crate) fn manifest_on_disk(state: &StateDir, meta: &SnapshotMeta) -> bool {
    let this_boot = fsutil::boot_id().is_some() && meta.boot_id.as_deref() == fsutil::boot_id();
    this_boot || fs::symlink_metadata(state.snapshot_dir(&meta.digest).join(DELTA_FILE)).is_err()
}

/// Whether the snapshot with metadata `meta` is known to have been built
/// during an earlier boot than this one (both boot ids known, and
/// different): what is read of it now was read from the disk.
fn built_in_another_boot(meta: &SnapshotMeta) -> bool {
    fsutil::boot_id().is_some_and(|now| meta.boot_id.as_deref().is_some_and(|then| then != now))
}

/// Makes sure the manifest file of the snapshot `digest`, if it was built
/// from a delta and not settled yet, is on disk, then removes the delta:
/// flushed when it was written during this boot (the page cache holds what
/// was written), else read and checked, and rebuilt from the delta when it
/// did not reach the disk ([`open_snapshot`] does both, and settles it).
/// Pruning settles a snapshot before it removes the one the delta builds
/// on.
pub(crate) fn settle_snapshot(state: &StateDir, digest: &str) -> Result<()> {
    let dir = state.snapshot_dir(digest);
    let delta = dir.join(DELTA_FILE);
    if fs::symlink_metadata(&delta).is_err() {
        return Ok(());
    }
    let this_boot = snapshot_meta(state, digest)?.is_some_and(|m| manifest_on_disk(state, &m));
    if !this_boot {
        // Read back (and rebuilt if it must be), which settles it when it
        // was built during an earlier boot; when that is not known, what
        // was read and checked is flushed below.
        open_snapshot(state, digest)?;
        if fs::symlink_metadata(&delta).is_err() {
            return Ok(());
        }
    }
    let file = dir.join("manifest.json");
    fsutil::open_nofollow(&file)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("flush", &file, e))?;
    fsutil::remove_any(&delta)?;
    fsutil::fsync_dir(&dir)
}

/// Counters of building one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BuildStats {
    /// Files whose contents the content store already held.
    pub reused: u64,
    /// Contents added to the store (copied and verified from the
    /// transaction, or the held contents plus a received suffix).
    pub copied: u64,
    /// Bytes added to the store.
    pub bytes_copied: u64,
    /// Whether the new snapshot's manifest took the entries of the one
    /// before (see [`build_snapshot`]).
    #[serde(skip)]
    pub(crate) took: bool,
}

/// The first step of [`build_snapshot`], which needs no previous snapshot
/// (so it can run while that is read): the complete snapshot of `txn` if
/// one exists, or `<digest>.partial/` with the transaction's manifest taken
/// over and checked, or its delta taken over and read.
pub(crate) enum Prepared {
    /// The snapshot exists already.
    Exists(Snapshot),
    /// The partial directory and the manifest in it.
    New {
        /// `snapshots/<digest>.partial/`.
        partial: PathBuf,
        /// The transaction's manifest.
        manifest: Manifest,
    },
    /// The partial directory and the delta in it, which makes the
    /// transaction's manifest from the snapshot it builds on (see
    /// [`PendingTxn::manifest_from_delta`]).
    Delta {
        /// `snapshots/<digest>.partial/`.
        partial: PathBuf,
        /// The transaction's delta.
        delta: ManifestDelta,
    },
}

/// Prepares the snapshot of `txn` (see [`Prepared`]); `base`, a manifest
/// read before that the transaction's mostly repeats (the snapshot it
/// builds on), saves decoding the entries they share, and is needed for a
/// transaction stored as a delta.
pub(crate) fn prepare_snapshot(
    state: &StateDir,
    txn: &PendingTxn,
    base: Option<&Manifest>,
) -> Result<Prepared> {
    // The digest was checked to be one when the transaction was listed.
    let digest = &txn.meta.digest;
    let snapshots = state.snapshots();
    fsutil::ensure_dir(&snapshots, 0o700)?;
    if let Some(existing) = open_snapshot(state, digest)? {
        return Ok(Prepared::Exists(existing));
    }
    // The transaction's manifest becomes the snapshot's (0644:
    // `staged.manifest.json` is a hard link to it, for the receiver).
    let partial = snapshots.join(format!("{digest}.partial"));
    fsutil::remove_any(&partial)?;
    fsutil::ensure_dir(&partial, 0o700)?;
    let adopted = match (txn.has_delta(), base) {
        (false, base) => txn
            .adopt_manifest(&partial.join("manifest.json"), base)
            .map(|manifest| Prepared::New {
                partial: partial.clone(),
                manifest,
            }),
        (true, Some(_)) => txn.adopt_delta(&partial).map(|delta| Prepared::Delta {
            partial: partial.clone(),
            delta,
        }),
        (true, None) => Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "transaction {} holds its manifest as a delta from {}, but there is no snapshot to apply it to",
                txn.meta.txn,
                txn.meta.base.as_deref().unwrap_or("nothing")
            ),
        )
        .with_path(&txn.dir)),
    };
    adopted.inspect_err(|_| {
        let _ = fsutil::remove_any(&partial);
    })
}

/// Builds `snapshots/<digest>/` for `txn` on top of `prev`, from `prepared`
/// (or after preparing it, see [`prepare_snapshot`]): re-verifies the
/// transaction's manifest, adds the contents the store lacks (moved out of
/// the transaction, made root's and re-hashed; an extension is the held
/// contents plus the received suffix, re-hashed whole), then writes the
/// metadata. The new contents are durable before they get their names, and
/// the snapshot is built in `<digest>.partial/` and renamed when complete
/// and durable. An existing complete snapshot is reused. A transaction
/// stored as a delta has its manifest made, checked and written on a
/// thread of its own while the contents it upserts are added (the store
/// only gains unnamed contents if the manifest is then refused).
///
/// With `take`, such a manifest takes the entries of `prev`'s instead of
/// copying them: `prev.manifest` is then left with only its entries at the
/// paths the delta changed (upserted or removed), and
/// [`BuildStats::took`] says so; if the build fails, `prev.manifest` may be
/// left empty (read the snapshot again).
pub(crate) fn build_snapshot(
    state: &StateDir,
    mut prev: Option<&mut Snapshot>,
    take: bool,
    txn: &PendingTxn,
    prepared: Option<Result<Prepared>>,
    cancel: &CancelToken,
) -> Result<(Snapshot, BuildStats)> {
    let mut stats = BuildStats::default();
    let prepared = prepared
        .unwrap_or_else(|| prepare_snapshot(state, txn, prev.as_deref().map(|p| &p.manifest)));
    let (partial, whole, delta) = match prepared? {
        Prepared::Exists(existing) => return Ok((existing, stats)),
        Prepared::New { partial, manifest } => (partial, Some(manifest), None),
        Prepared::Delta { partial, delta } => (partial, None, Some(delta)),
    };
    // The contents to add are among the delta's upserts, or the manifest's
    // entries: those the previous snapshot lacks, found before its entries
    // may be taken.
    let candidates = match (&whole, &delta) {
        (Some(m), _) => m.entries(),
        (None, Some(d)) => d.upserts.as_slice(),
        (None, None) => &[],
    };
    let wanted = match new_contents(prev.as_deref(), txn, candidates, cancel) {
        Ok(wanted) => wanted,
        Err(e) => {
            let _ = fsutil::remove_any(&partial);
            return Err(e);
        }
    };
    let taken = match (&delta, prev.as_deref_mut()) {
        (Some(_), Some(p)) if take => Some(std::mem::take(&mut p.manifest)),
        _ => None,
    };
    let took = taken.is_some();
    // With `take`, so are the contents it held: an extension of them grows
    // in their memory (those not extended go back to it below).
    let spare = match (take, prev.as_deref_mut()) {
        (true, Some(p)) => Some(Mutex::new(p.held.take_all())),
        _ => None,
    };
    let built = std::thread::scope(|s| {
        let base = match (taken, prev.as_deref()) {
            (Some(taken), _) => Some(Given::Taken(taken)),
            (None, Some(p)) => Some(Given::Lent(&p.manifest)),
            (None, None) => None,
        };
        let making = match (&delta, base) {
            (Some(delta), Some(base)) => {
                let partial = &partial;
                Some(s.spawn(move || txn.manifest_from_delta(delta, partial, base)))
            }
            _ => None,
        };
        let before = Prev {
            snapshot: prev.as_deref(),
            spare: spare.as_ref(),
        };
        let stored = store_contents(state, before, txn, wanted, &mut stats, cancel);
        let made = making.map(|h| crate::joined(h.join(), "making a snapshot's manifest"));
        (stored, made)
    });
    if let (Some(spare), Some(p)) = (spare, prev.as_deref_mut()) {
        p.held = Held(Arc::new(
            spare.into_inner().unwrap_or_else(|e| e.into_inner()),
        ));
    }
    let built = match built {
        (Err(e), _) => Err(e),
        (Ok(built), Some(made)) => made.map(|made| (made, built)),
        (Ok(built), None) => match whole {
            Some(whole) => Ok(((whole, Vec::new()), built)),
            None => Err(Error::new(
                ErrorKind::Internal,
                "a snapshot from a delta was built without the snapshot before it",
            )),
        },
    };
    let ((manifest, replaced), built) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = fsutil::remove_any(&partial);
            return Err(e);
        }
    };
    let digest = txn.meta.digest.clone();
    let snapshots = state.snapshots();
    let result = (|| -> Result<()> {
        let meta = SnapshotMeta {
            format: META_FORMAT,
            digest: digest.clone(),
            seq: prev.as_deref().map(|p| p.meta.seq + 1).unwrap_or(1),
            txn: Some(txn.meta.txn.clone()),
            created: Stamp::now(),
            entries: manifest.len() as u64,
            boot_id: fsutil::boot_id().map(str::to_string),
        };
        let bytes = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode metadata: {e}")))?;
        // In the partial directory, renamed whole below: written in place.
        let meta_file = partial.join("meta.json");
        pack::write_new(&meta_file, &bytes)?
            .sync_all()
            .map_err(|e| Error::io("sync", &meta_file, e))?;
        fsutil::fsync_dir(&partial)
    })();
    if let Err(e) = result {
        let _ = fsutil::remove_any(&partial);
        return Err(e);
    }
    let dir = state.snapshot_dir(&digest);
    fs::rename(&partial, &dir).map_err(|e| Error::io("rename into place", &dir, e))?;
    fsutil::fsync_dir(&snapshots)?;
    let meta = snapshot_meta(state, &digest)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            format!("snapshot {} vanished after it was built", dir.display()),
        )
    })?;
    // Every file of the new manifest whose contents were not added was
    // found in the store.
    let files = manifest
        .entries()
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.sha256.is_some())
        .count() as u64;
    stats.reused = files.saturating_sub(stats.copied);
    let held = prev
        .as_deref()
        .map(|p| &p.held)
        .cloned()
        .unwrap_or_default()
        .carried(&manifest, built);
    if let (true, Some(p)) = (took, prev) {
        // What is left of the snapshot before: its entries at the paths the
        // delta changed.
        p.manifest = Manifest::from_own_entries(replaced)?;
        stats.took = true;
    }
    let changed = delta.map(|d| {
        let mut paths: Vec<String> = d.upserts.into_iter().map(|e| e.path).collect();
        paths.extend(d.removed);
        paths.sort_unstable();
        Arc::new(Changed {
            base: d.base,
            paths,
        })
    });
    Ok((
        Snapshot {
            meta,
            dir,
            manifest,
            objects: state.objects(),
            packs: Arc::default(),
            held,
            changed,
            counted: Arc::default(),
        },
        stats,
    ))
}

/// The files among `candidates` (entries sorted by path, of `txn`) that
/// `prev` does not have at the same path, with their SHA-256, each
/// content once; a digest that is not a SHA-256 is refused.
fn new_contents<'c>(
    prev: Option<&Snapshot>,
    txn: &PendingTxn,
    candidates: &'c [Entry],
    cancel: &CancelToken,
) -> Result<Vec<(&'c Entry, &'c str)>> {
    // The previous snapshot's contents are in the store: pruning never
    // sweeps what a remaining snapshot names. A file unchanged at its path
    // is found by walking both lists (sorted by path) side by side.
    let mut prev_entries = prev
        .map(|p| p.manifest.entries())
        .unwrap_or_default()
        .iter()
        .peekable();
    let mut wanted: Vec<(&Entry, &str)> = Vec::new();
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    for (i, e) in candidates.iter().enumerate() {
        if i % 256 == 0 {
            cancel.check()?;
        }
        let (EntryKind::File, Some(sha)) = (e.kind, e.sha256.as_deref()) else {
            continue;
        };
        // (A delta's upserts are checked by the rules on another thread
        // meanwhile: a digest names a file in the store, so it is checked
        // here before it is used.)
        if !is_sha256_hex(sha) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "transaction {}: {:?} has a malformed SHA-256, {sha:?}; nothing of it is applied",
                    txn.meta.txn, e.path
                ),
            )
            .with_path(&txn.dir));
        }
        while prev_entries.next_if(|p| p.path < e.path).is_some() {}
        let unchanged = prev_entries
            .peek()
            .is_some_and(|p| p.path == e.path && p.sha256.as_deref() == Some(sha));
        if unchanged || !seen.insert(sha) {
            continue;
        }
        wanted.push((e, sha));
    }
    Ok(wanted)
}

/// The snapshot a new one is built on, and the contents it held that were
/// taken out of it (see [`Held::take_all`]) for extensions of them to be
/// read into their memory; those not used go back to it.
#[derive(Clone, Copy)]
struct Prev<'a> {
    snapshot: Option<&'a Snapshot>,
    spare: Option<&'a Mutex<Vec<(String, HeldBytes)>>>,
}

/// Adds to the content store those of the contents `wanted` (entries and
/// their SHA-256, from [`new_contents`]) it lacks: moved out of the
/// transaction `txn` (its pack, or a file each), made root's and re-hashed,
/// or, for an extension, the held contents plus the received suffix. They
/// are written under temporary names (by every core), made durable, then
/// named. Counts what it adds in `stats`; returns the contents it built in
/// memory (see [`Held`]).
fn store_contents(
    state: &StateDir,
    prev: Prev<'_>,
    txn: &PendingTxn,
    wanted: Vec<(&Entry, &str)>,
    stats: &mut BuildStats,
    cancel: &CancelToken,
) -> Result<Vec<(String, HeldBytes)>> {
    let objects = state.objects();
    fsutil::ensure_dir(&objects, 0o700)?;
    let txn_objects = txn.dir.join("objects");
    let objects_ok = fs::symlink_metadata(&txn_objects).is_ok_and(|m| m.is_dir());
    let mut jobs: Vec<(&Entry, &str, PathBuf)> = Vec::new();
    let mut fanout: FxHashSet<PathBuf> = FxHashSet::default();
    // Those in the transaction's pack arrive with it, the others one by one.
    let packed = adopt_pack(state, txn, &wanted, cancel)?;
    for (e, sha) in wanted {
        if packed.contains(sha) {
            stats.copied += 1;
            stats.bytes_copied += e.size;
            continue;
        }
        let dst = state.object_path(sha);
        let dir = dst.parent().unwrap_or(&objects);
        if !fanout.contains(dir) {
            fsutil::ensure_dir(dir, 0o700)?;
            fanout.insert(dir.to_path_buf());
        }
        jobs.push((e, sha, dst));
    }
    let added: Vec<Result<Option<Added>>> = jobs
        .par_iter()
        .map(|(e, sha, dst)| {
            cancel.check()?;
            add_object(state, prev, txn, objects_ok, e, sha, dst)
        })
        .collect();
    let mut new: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut written: Vec<PathBuf> = Vec::new();
    let mut built: Vec<(String, HeldBytes)> = Vec::new();
    let mut failure = None;
    for (result, (e, _, dst)) in added.into_iter().zip(&jobs) {
        match result {
            Ok(None) => {}
            Ok(Some(Added { tmp, copied, held })) => {
                if copied {
                    written.push(tmp.clone());
                }
                built.extend(held);
                new.push((tmp, dst.clone()));
                stats.copied += 1;
                stats.bytes_copied += e.size;
            }
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
    }
    let result = (|| -> Result<()> {
        if let Some(err) = failure {
            return Err(err);
        }
        // A moved object's contents were made durable by the receiver; only
        // its owner and mode changed (a crash may undo them, which only
        // root can see in this private store). Copies are new data.
        fsutil::sync_new_files(&written)?;
        new.par_iter().try_for_each(|(tmp, dst)| {
            fs::rename(tmp, dst).map_err(|err| Error::io("rename into place", dst, err))
        })?;
        let fanout: Vec<&PathBuf> = fanout.iter().collect();
        fanout.par_iter().try_for_each(|d| fsutil::fsync_dir(d))
    })();
    if let Err(e) = result {
        for (tmp, _) in &new {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    Ok(built)
}

/// Moves the pack of `txn`, if it has one, into the content store
/// (`objects/packs/`), once each of the contents in `wanted` (an entry and
/// its SHA-256) that it holds matches: it is made root's (a pack with
/// another name is refused) before it is read, and indexed by the applier
/// (the transaction's index only says where to look). Returns the SHA-256s
/// it holds. A pack holding none of them is dropped.
fn adopt_pack<'m>(
    state: &StateDir,
    txn: &PendingTxn,
    wanted: &[(&'m Entry, &'m str)],
    cancel: &CancelToken,
) -> Result<FxHashSet<&'m str>> {
    let index = txn.pack_index_file();
    if fs::symlink_metadata(&index).is_err() {
        return Ok(FxHashSet::default());
    }
    let what = format!("transaction {}", txn.meta.txn);
    let dir = state.objects().join(PACKS_DIR);
    fsutil::ensure_dir(&dir, 0o700)?;
    let stem = format!("{}-{}", txn.meta.txn, fsutil::unique_hex());
    let tmp_pack = dir.join(format!(".tmp.{stem}.pack"));
    let tmp_index = dir.join(format!(".tmp.{stem}.idx"));
    let src = txn.pack_file();
    if let Err(e) = fs::rename(&src, &tmp_pack) {
        return Err(if e.kind() == io::ErrorKind::NotFound {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what}: it has a pack index but no pack ({})",
                    src.display()
                ),
            )
            .with_path(&src)
        } else {
            Error::io("move into the content store", &src, e)
        });
    }
    let result = (|| -> Result<FxHashSet<&'m str>> {
        let file = fsutil::take_over(&tmp_pack, 1, 0o600, &what)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &tmp_pack, e))?
            .len();
        let listed: FxHashMap<[u8; 32], PackEntry> = pack::read_index(&index, len)?
            .into_iter()
            .map(|p| (p.sha, p))
            .collect();
        let found: Vec<(&Entry, &str, PackEntry)> = wanted
            .iter()
            .filter_map(|(e, sha)| {
                let p = listed.get(&sha256_bytes(sha)?)?;
                Some((*e, *sha, *p))
            })
            .collect();
        if found.is_empty() {
            let _ = fsutil::remove_any(&tmp_pack);
            return Ok(FxHashSet::default());
        }
        found.par_iter().try_for_each(|(e, sha, p)| {
            cancel.check()?;
            let what = format!("{what}, {}", e.path);
            Packed::new(&tmp_pack, &file, *p).copy_verified(sha, e.size, &what, |_| Ok(()))
        })?;
        let index_file = pack::write_new(
            &tmp_index,
            &pack::encode_index(found.iter().map(|(_, _, p)| *p).collect()),
        )?;
        // The contents were made durable by the receiver; the owner, mode
        // and the new index are made durable here, before they are named.
        for (f, path) in [(&file, &tmp_pack), (&index_file, &tmp_index)] {
            f.sync_all().map_err(|e| Error::io("sync", path, e))?;
        }
        // The pack first: an index names a complete pack.
        for (from, to) in [(&tmp_pack, "pack"), (&tmp_index, "idx")] {
            let to = dir.join(format!("{stem}.{to}"));
            fs::rename(from, &to).map_err(|e| Error::io("rename into place", &to, e))?;
        }
        fsutil::fsync_dir(&dir)?;
        Ok(found.into_iter().map(|(_, sha, _)| sha).collect())
    })();
    if result.is_err() {
        // Whatever the transaction held under the pack's name (a directory,
        // a symlink) goes too.
        let _ = fsutil::remove_any(&tmp_pack);
        let _ = fs::remove_file(&tmp_index);
    }
    result
}

/// The error of a transaction finished without a manifest written (a bug:
/// the receiver writes it before it takes contents).
fn no_manifest_written() -> Error {
    Error::new(
        ErrorKind::Internal,
        "a transaction was finished without its manifest",
    )
}

/// Contents a snapshot adds to the store, under a temporary name.
struct Added {
    /// The temporary name, beside its place in the store.
    tmp: PathBuf,
    /// Whether it was written here (new data to sync) rather than moved.
    copied: bool,
    /// The contents (and their path), when they were built in memory to be
    /// held.
    held: Option<(String, HeldBytes)>,
}

/// Adds the contents of the file entry `e` (SHA-256 `sha`) to the store at
/// `dst`, under a temporary name beside it: moved out of `txn` (which is
/// removed once staged) and made root's before it is checked, or, for an
/// extension, the held contents plus the suffix, copied. `None` when the
/// store already holds them (kept from an older snapshot, verified when it
/// was added).
fn add_object(
    state: &StateDir,
    prev: Prev<'_>,
    txn: &PendingTxn,
    objects_ok: bool,
    e: &Entry,
    sha: &str,
    dst: &Path,
) -> Result<Option<Added>> {
    if fs::symlink_metadata(dst).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let what = format!("transaction {}, {}", txn.meta.txn, e.path);
    let object = txn.object_file(sha);
    let extension = txn.meta.extensions.iter().find(|x| x.sha256 == sha);
    // Held contents read from a pack, to put before the sources.
    let mut prefix = Vec::new();
    let sources: Vec<PathBuf> = if objects_ok && fs::symlink_metadata(&object).is_ok() {
        vec![object]
    } else if let (true, Some(x)) = (objects_ok, extension) {
        if (HELD_MIN..=HELD_MAX).contains(&e.size) {
            return extend_in_memory(state, prev, txn, (e, sha), x, &what, dst).map(Some);
        }
        // The held contents plus the suffix.
        match extension_base(state, prev.snapshot, txn, x, &what)? {
            Extended::Loose(base) => vec![base, txn.suffix_file(sha)],
            Extended::Packed(bytes) => {
                prefix = bytes;
                vec![txn.suffix_file(sha)]
            }
        }
    } else {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{what}: the contents (SHA-256 {sha}) are neither in the transaction nor in the previous snapshot"
            ),
        )
        .with_path(&txn.dir));
    };
    let dir = dst.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".tmp.{}", fsutil::unique_hex()));
    let moved = prefix.is_empty() && sources.len() == 1 && fs::rename(&sources[0], &tmp).is_ok();
    if moved {
        fsutil::adopt_verified(&tmp, 0o600, sha, e.size, &what)?;
    } else {
        let parts: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
        fsutil::concat_verified(&prefix, &parts, &tmp, 0o600, sha, e.size, &what)?;
    }
    Ok(Some(Added {
        tmp,
        copied: !moved,
        held: None,
    }))
}

/// Where the contents an extension extends are: a file of the store, or
/// read (and checked) from one of its packs.
enum Extended {
    Loose(PathBuf),
    Packed(Vec<u8>),
}

/// Where the contents the extension `x` (of `txn`, on top of `prev`)
/// extends are; [`ErrorKind::Corrupt`], naming `what`, when the store does
/// not hold them.
fn extension_base(
    state: &StateDir,
    prev: Option<&Snapshot>,
    txn: &PendingTxn,
    x: &Extension,
    what: &str,
) -> Result<Extended> {
    let base = state.object_path(&x.base_sha256);
    if fs::symlink_metadata(&base).is_ok() {
        Ok(Extended::Loose(base))
    } else if let Some(packed) = prev.and_then(|p| p.packed(&x.base_sha256)) {
        Ok(Extended::Packed(packed.read_verified(
            &x.base_sha256,
            x.base_size,
            what,
        )?))
    } else {
        Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{what}: it extends contents (SHA-256 {}) the previous snapshot does not hold",
                x.base_sha256
            ),
        )
        .with_path(&txn.dir))
    }
}

/// [`add_object`] for the extension `x` of large contents (the file entry
/// `e` with SHA-256 `sha`, at most [`HELD_MAX`] bytes): the contents it
/// extends, the bytes the previous snapshot holds (see [`Held`]) or else
/// read from the store and checked against their SHA-256, plus the
/// received suffix, hashed from the held SHA-256 state on; the result,
/// checked against `e`, is written to a temporary name beside `dst` and
/// held.
fn extend_in_memory(
    state: &StateDir,
    prev: Prev<'_>,
    txn: &PendingTxn,
    (e, sha): (&Entry, &str),
    x: &Extension,
    what: &str,
    dst: &Path,
) -> Result<Added> {
    use std::io::Read as _;
    let fits = |h: &HeldBytes| h.sha256 == x.base_sha256 && h.size() == x.base_size;
    let spared = prev.spare.and_then(|spare| {
        let mut spare = spare.lock().ok()?;
        let at = spare.iter().position(|(_, h)| fits(h))?;
        Some(spare.swap_remove(at).1)
    });
    let held = spared.or_else(|| {
        let held = prev.snapshot.and_then(|p| p.held.find(&x.base_sha256));
        held.filter(|h| fits(h)).cloned()
    });
    let base = match held {
        Some(held) => held,
        None => {
            let (bytes, shown) = match extension_base(state, prev.snapshot, txn, x, what)? {
                // (Of another size, they are refused below.)
                Extended::Loose(path) => (fsutil::read_bounded(&path, HELD_MAX)?, path),
                Extended::Packed(bytes) => (bytes, state.objects()),
            };
            let base = HeldBytes::new(bytes);
            if base.size() != x.base_size || base.sha256 != x.base_sha256 {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{what}: the contents it extends, {}, are not the {} bytes with SHA-256 {} the store should hold (found {} bytes with SHA-256 {}): the store's copy was damaged on disk",
                        shown.display(),
                        x.base_size,
                        x.base_sha256,
                        base.size(),
                        base.sha256
                    ),
                )
                .with_path(&shown));
            }
            base
        }
    };
    // The suffix is the transfer user's file; the bytes after it, if any,
    // make a size that is refused below.
    let suffix_path = txn.suffix_file(sha);
    let (input, _) = fsutil::open_untrusted(&suffix_path, what)?;
    let suffix = input.take(e.size.saturating_sub(base.size()) + 1);
    let grown =
        (base.extended(suffix, e.size)).map_err(|err| Error::io("read", &suffix_path, err))?;
    if grown.size() != e.size || grown.sha256 != sha {
        return Err(fsutil::not_as_recorded(
            what,
            &format!("the held contents plus {}", suffix_path.display()),
            (e.size, sha),
            (grown.size(), &grown.sha256),
        )
        .with_path(&suffix_path));
    }
    let dir = dst.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".tmp.{}", fsutil::unique_hex()));
    fsutil::create_filled(&tmp, 0o600, |out| {
        fsutil::write_uncached(out, &tmp, &grown.bytes)
    })?;
    Ok(Added {
        tmp,
        copied: true,
        held: Some((e.path.clone(), grown)),
    })
}

/// Points `snapshots/latest` at `digest` atomically (a new symlink renamed
/// over the old one) and publishes its manifest for the receiver.
pub(crate) fn switch_latest(state: &StateDir, snapshot: &Snapshot) -> Result<()> {
    let snapshots = state.snapshots();
    let tmp = snapshots.join(format!(".latest.{}", fsutil::random_hex(4)));
    symlink(&snapshot.meta.digest, &tmp).map_err(|e| Error::io("create symlink", &tmp, e))?;
    let link = state.latest_link();
    if let Err(e) = fs::rename(&tmp, &link) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("switch", &link, e));
    }
    fsutil::fsync_dir(&snapshots)?;
    publish_staged(state, &snapshot.dir, &snapshot.manifest)
}

/// Makes `staged.manifest.json` the manifest of `snapshot`: a hard link to
/// the snapshot's own file (root's, 0644) renamed into place, or a copy
/// where a link cannot be made.
fn publish_staged(state: &StateDir, dir: &Path, manifest: &Manifest) -> Result<()> {
    let staged = state.staged_manifest();
    let tmp = state
        .root()
        .join(format!(".staged.{}", fsutil::random_hex(4)));
    let source = dir.join("manifest.json");
    let linked = fs::metadata(&source).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o644)
        && fs::hard_link(&source, &tmp).is_ok();
    if linked {
        // Exchanged with the one it replaces rather than renamed over it:
        // the snapshot's manifest may not be written out yet (built from a
        // delta), and a rename would start writing out all of it at once
        // (see `fsutil::exchange`). Either way `tmp` then goes: the old
        // name of an earlier snapshot's manifest (a stray link if it cannot
        // go, nothing lost), or nothing left to place.
        let placed = fsutil::put_in_place(&tmp, &staged);
        if !matches!(placed, Ok(false)) {
            let _ = fs::remove_file(&tmp);
        }
        placed?;
        return fsutil::fsync_dir(state.root());
    }
    save_manifest(&staged, manifest, 0o644)
}

/// Publishes the latest snapshot's manifest as `staged.manifest.json` again
/// when the published one is missing or is another (an interrupted switch,
/// a file removed by hand). Cheap when it is right: one read of the
/// recorded digest.
pub(crate) fn republish_staged(state: &StateDir, latest: Option<&Snapshot>) -> Result<()> {
    if let Some(snap) = latest {
        if manifest_file_digest(&state.staged_manifest()).as_deref()
            != Some(snap.meta.digest.as_str())
        {
            publish_staged(state, &snap.dir, &snap.manifest)?;
        }
    }
    Ok(())
}

/// The sweep counter of the content store (`snapshots/objects/gc.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct GcRecord {
    /// Snapshots removed since the last sweep.
    removed_since: u64,
}

/// Removes snapshots beyond the newest `keep` (by sequence number), never
/// one whose digest is in `protect`, and every leftover `.partial` or
/// temporary link. Sweeps the content store when due (see the
/// [module documentation](self)). Returns the removed digests.
pub(crate) fn prune_snapshots(
    state: &StateDir,
    keep: usize,
    protect: &[&str],
) -> Result<Vec<String>> {
    let snapshots = state.snapshots();
    let reader = match fs::read_dir(&snapshots) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", &snapshots, e)),
    };
    let mut complete: Vec<(u64, String)> = Vec::new();
    for item in reader {
        let item = item.map_err(|e| Error::io("list", &snapshots, e))?;
        let name = item.file_name().to_string_lossy().to_string();
        if name.ends_with(".partial") || name.starts_with(".latest.") {
            fsutil::remove_any(&item.path())?;
            continue;
        }
        if !is_sha256_hex(&name) {
            continue;
        }
        let seq = match snapshot_meta(state, &name) {
            Ok(Some(m)) => m.seq,
            // Unreadable snapshots are the first to go.
            _ => 0,
        };
        complete.push((seq, name));
    }
    complete.sort();
    let excess = complete.len().saturating_sub(keep.max(1));
    let (old, _) = complete.split_at(excess);
    let mut going: FxHashSet<&str> = old
        .iter()
        .map(|(_, name)| name.as_str())
        .filter(|name| !protect.contains(name))
        .collect();
    settle_before_pruning(state, &complete, &mut going);
    let mut removed = Vec::new();
    for (_, name) in old {
        if going.contains(name.as_str()) {
            fsutil::remove_any(&state.snapshot_dir(name))?;
            removed.push(name.clone());
        }
    }
    if !removed.is_empty() {
        let path = state.objects().join("gc.json");
        let mut record: GcRecord = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        record.removed_since += removed.len() as u64;
        if state.kind() == Kind::Nc || record.removed_since >= GC_EVERY {
            sweep_objects(state)?;
            record.removed_since = 0;
        }
        if state.objects().is_dir() {
            let bytes = serde_json::to_vec(&record).map_err(|e| {
                Error::new(ErrorKind::Internal, format!("cannot encode gc.json: {e}"))
            })?;
            write_atomically(&path, &bytes, 0o600)?;
        }
    }
    Ok(removed)
}

/// Settles (see [`settle_snapshot`]) each snapshot of `all` that stays
/// and was built from a delta on one in `going`, so that none is left
/// whose manifest could not be rebuilt; the base of one that cannot be
/// settled (its manifest damaged beyond what its delta rebuilds) stays too,
/// and is looked at in turn.
fn settle_before_pruning(state: &StateDir, all: &[(u64, String)], going: &mut FxHashSet<&str>) {
    let mut looked: FxHashSet<&str> = FxHashSet::default();
    loop {
        let mut kept_more = false;
        for (_, name) in all {
            if going.contains(name.as_str()) || !looked.insert(name) {
                continue;
            }
            let delta = state.snapshot_dir(name).join(DELTA_FILE);
            if fs::symlink_metadata(&delta).is_err() {
                continue;
            }
            // (A delta whose header cannot be read is settled whatever its base.)
            let base = delta_base(&delta);
            if base.as_deref().is_none_or(|b| going.contains(b))
                && settle_snapshot(state, name).is_err()
            {
                if let Some(b) = base.as_deref() {
                    kept_more |= going.remove(b);
                }
            }
        }
        if !kept_more {
            return;
        }
    }
}

/// Removes from the content store every content no complete snapshot
/// names, and temporary files of interrupted builds; returns how many files
/// were removed. A snapshot whose manifest cannot be read stops the sweep
/// (nothing is removed): what it needs cannot be known.
pub(crate) fn sweep_objects(state: &StateDir) -> Result<u64> {
    let snapshots = state.snapshots();
    let mut named: FxHashSet<String> = FxHashSet::default();
    for item in fs::read_dir(&snapshots).map_err(|e| Error::io("list", &snapshots, e))? {
        let item = item.map_err(|e| Error::io("list", &snapshots, e))?;
        let name = item.file_name().to_string_lossy().to_string();
        if !is_sha256_hex(&name) {
            continue;
        }
        let Some(snap) = open_snapshot(state, &name)? else {
            continue;
        };
        named.extend(
            snap.manifest
                .entries()
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .filter_map(|e| e.sha256.clone()),
        );
    }
    let objects = state.objects();
    let reader = match fs::read_dir(&objects) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", &objects, e)),
    };
    let mut removed = sweep_packs(&objects.join(PACKS_DIR), &named)?;
    for fan in reader {
        let fan = fan.map_err(|e| Error::io("list", &objects, e))?;
        if !fan.file_type().is_ok_and(|t| t.is_dir()) || fan.file_name() == PACKS_DIR {
            continue;
        }
        let dir = fan.path();
        for item in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let item = item.map_err(|e| Error::io("list", &dir, e))?;
            let name = item.file_name().to_string_lossy().to_string();
            if !named.contains(&name) {
                fsutil::remove_any(&item.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Removes from the packs in `dir` those holding nothing in `named`, the
/// unreadable ones (nothing can be found in them), packs without an index
/// and leftovers of interrupted adoptions; returns how many files were
/// removed.
fn sweep_packs(dir: &Path, named: &FxHashSet<String>) -> Result<u64> {
    let reader = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let names: FxHashSet<String> = reader
        .map(|item| item.map(|i| i.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(|e| Error::io("list", dir, e))?;
    let mut removed = 0;
    for name in &names {
        let path = dir.join(name);
        let garbage = if name.starts_with(".tmp.") {
            true
        } else if let Some(stem) = name.strip_suffix(".idx") {
            let pack = dir.join(format!("{stem}.pack"));
            let used = pack::open_pack(&pack, &path).is_ok_and(|(_, entries)| {
                entries.iter().any(|e| named.contains(&hex::encode(e.sha)))
            });
            if !used {
                // The index first: a pack without one is garbage too.
                fsutil::remove_any(&path)?;
                fsutil::remove_any(&pack)?;
                removed += 2;
            }
            false
        } else if let Some(stem) = name.strip_suffix(".pack") {
            !names.contains(&format!("{stem}.idx"))
        } else {
            false
        };
        if garbage {
            fsutil::remove_any(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(name: &str, base: Option<&str>, digest: &str, t: i64) -> PendingTxn {
        PendingTxn {
            dir: PathBuf::from(name),
            meta: TxnMeta {
                format: META_FORMAT,
                txn: name.into(),
                kind: "ca".into(),
                sender: "a".into(),
                base: base.map(|b| b.repeat(64)),
                digest: digest.repeat(64),
                entries: 0,
                objects: 0,
                object_bytes: 0,
                received: Stamp::from_unix(t),
                extensions: Vec::new(),
            },
        }
    }

    #[test]
    fn chains_follow_bases_and_leave_stale_transactions_out() {
        let txns = vec![
            txn("t1", None, "a", 1),
            txn("t2", Some("a"), "b", 2),
            txn("t3", Some("x"), "c", 3),
            txn("t4", Some("b"), "d", 4),
        ];
        let (order, rest) = chain(None, &txns);
        assert_eq!(order, [0, 1, 3]);
        assert_eq!(rest, [2]);
        let (order, rest) = chain(Some(&"a".repeat(64)), &txns);
        assert_eq!(order, [1, 3]);
        assert_eq!(rest, [0, 2]);
        // A loop never makes the chain run forever.
        let looped = vec![txn("t1", Some("a"), "b", 1), txn("t2", Some("b"), "a", 2)];
        let (order, _) = chain(Some(&"a".repeat(64)), &looped);
        assert_eq!(order, [0]);
    }

    #[test]
    fn transaction_ids_are_safe_names() {
        validate_txn_id(&new_txn_id()).unwrap();
        for bad in ["", "../x", "a/b", ".x", "a.partial", "-x", &"a".repeat(81)] {
            assert!(validate_txn_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sweep_keeps_packs_a_snapshot_names_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path();
        let put = |stem: &str, shas: &[u8]| {
            let entries: Vec<PackEntry> = shas
                .iter()
                .enumerate()
                .map(|(i, b)| PackEntry {
                    sha: [*b; 32],
                    offset: i as u64,
                    size: 1,
                })
                .collect();
            fs::write(packs.join(format!("{stem}.pack")), vec![0u8; shas.len()]).unwrap();
            pack::write_new(
                &packs.join(format!("{stem}.idx")),
                &pack::encode_index(entries),
            )
            .unwrap();
        };
        put("used", &[1, 2]);
        put("unused", &[3]);
        put("damaged", &[1]);
        fs::write(packs.join("damaged.idx"), b"not an index").unwrap();
        fs::write(packs.join("orphan.pack"), b"x").unwrap();
        fs::write(packs.join(".tmp.abc.pack"), b"x").unwrap();
        let named: FxHashSet<String> = [hex::encode([2u8; 32])].into_iter().collect();

        let removed = sweep_packs(packs, &named).unwrap();
        let mut left: Vec<String> = fs::read_dir(packs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["used.idx", "used.pack"]);
        assert_eq!(removed, 6);
        // What is left is still found.
        let store = StorePacks::load(packs);
        assert!(store.problems().is_empty());
        assert!(store.find(&[2u8; 32]).is_some());
        assert!(store.find(&[3u8; 32]).is_none());
    }
}
