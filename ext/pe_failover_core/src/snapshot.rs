//! Snapshots of a directory tree: a sorted manifest of every entry with its
//! metadata and content digest, and a root digest over the whole manifest.
//!
//! A [`Scanner`] walks a tree without following symbolic links (they are
//! recorded with their target), stats entries in parallel, and hashes file
//! contents with SHA-256 in parallel. With a [stat cache](crate::snapshot::Scanner::cache_file),
//! a re-scan hashes only files whose size, mtime, ctime or inode changed, so
//! an unchanged tree costs one `lstat` per entry.
//!
//! Problems with single entries (a file that cannot be read, a name that is
//! not UTF-8, a file that changed while it was read) do not stop the scan:
//! the entry is left out of the manifest and the problem is listed in
//! [`Scan::problems`]. Use [`Scan::into_complete`] where a partial manifest
//! must never be used (replication does).

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{CacheEntry, CacheSave, CacheStatus, StatCache};
use crate::cancel::CancelToken;
use crate::exclude::Excludes;
use crate::{Error, ErrorKind, Result};

/// What an entry of a tree is. Symbolic links are recorded, never followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl EntryKind {
    /// `"file"`, `"dir"` or `"symlink"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }

    fn tag(self) -> u8 {
        match self {
            EntryKind::File => b'f',
            EntryKind::Dir => b'd',
            EntryKind::Symlink => b'l',
        }
    }
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the scanned root, `/`-separated, never empty, never
    /// starting with `/` and never containing `.` or `..` components.
    pub path: String,
    /// File, directory or symbolic link.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (files and symlinks; 0 for directories).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the contents, lowercase hex (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (symlinks only), as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// A directory entry standing for a directory outside a scanned tree
    /// (such as the ssl directory around replicated files): mode 0755, owner
    /// root, no time.
    pub fn synthetic_dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            sha256: None,
            target: None,
        }
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        out.push(self.kind.tag());
        put_bytes(out, self.path.as_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        put_bytes(out, self.sha256.as_deref().unwrap_or("").as_bytes());
        put_bytes(out, self.target.as_deref().unwrap_or("").as_bytes());
    }
}

impl Entry {
    /// Whether `bytes` are exactly this entry's record in the canonical form
    /// (what `write_canonical` writes), compared field by field without
    /// writing it.
    fn is_canonically(&self, bytes: &[u8]) -> bool {
        fn eat(rest: &mut &[u8], want: &[u8]) -> bool {
            match rest.strip_prefix(want) {
                Some(r) => {
                    *rest = r;
                    true
                }
                None => false,
            }
        }
        let path = self.path.as_bytes();
        let sha = self.sha256.as_deref().unwrap_or("").as_bytes();
        let target = self.target.as_deref().unwrap_or("").as_bytes();
        let mut rest = bytes;
        eat(&mut rest, &[self.kind.tag()])
            && eat(&mut rest, &(path.len() as u64).to_le_bytes())
            && eat(&mut rest, path)
            && eat(&mut rest, &self.mode.to_le_bytes())
            && eat(&mut rest, &self.uid.to_le_bytes())
            && eat(&mut rest, &self.gid.to_le_bytes())
            && eat(&mut rest, &self.size.to_le_bytes())
            && eat(&mut rest, &self.mtime_ns.to_le_bytes())
            && eat(&mut rest, &(sha.len() as u64).to_le_bytes())
            && eat(&mut rest, sha)
            && eat(&mut rest, &(target.len() as u64).to_le_bytes())
            && eat(&mut rest, target)
            && rest.is_empty()
    }

    /// The rules a manifest entry must keep on its own: a file has a valid
    /// SHA-256, a symbolic link a target.
    pub(crate) fn check_fields(&self) -> Result<()> {
        match self.kind {
            EntryKind::File if self.sha256.as_ref().is_none_or(|s| !is_sha256_hex(s)) => {
                Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("manifest entry {:?} has no valid SHA-256", self.path),
                ))
            }
            EntryKind::Symlink if self.target.is_none() => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("manifest symlink {:?} has no target", self.path),
            )),
            _ => Ok(()),
        }
    }
}

/// Runs `check(path, parent)` for each path of `paths` (in path order) that
/// has a parent, except the siblings of the last path that passed: paths
/// sharing a parent have what depends on it checked once.
pub(crate) fn check_each_parent<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    mut check: impl FnMut(&'a str, &'a str) -> Result<()>,
) -> Result<()> {
    let mut passed: Option<&str> = None;
    for path in paths {
        let Some((parent, _)) = path.rsplit_once('/') else {
            continue;
        };
        if passed != Some(parent) {
            check(path, parent)?;
            passed = Some(parent);
        }
    }
    Ok(())
}

/// The error for a manifest entry at `path` whose parent `parent` is not a
/// directory entry of the manifest.
pub(crate) fn no_parent_dir(path: &str, parent: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("manifest entry {path:?} has no parent directory entry {parent:?}"),
    )
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A sorted, duplicate-free list of entries with a root digest.
///
/// A manifest never changes once built, so its [digest](Self::digest) is
/// computed at most once and remembered (clones share the remembered value).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<Entry>", into = "Vec<Entry>")]
pub struct Manifest {
    entries: Vec<Entry>,
    /// The digest, once computed.
    #[serde(skip)]
    digest: OnceLock<Known>,
}

/// A manifest's digest, once known.
#[derive(Clone, Debug)]
struct Known {
    /// Lowercase hex.
    hex: String,
    /// Whether it is the [legacy digest](legacy_canonical_digest) read from
    /// a file of an earlier format (the manifest is then written in that
    /// format again, see `replset::save_manifest`).
    legacy: bool,
}

impl Known {
    fn current(hex: String) -> Known {
        Known { hex, legacy: false }
    }
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Manifest {}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("entries", &self.entries)
            .finish()
    }
}

impl TryFrom<Vec<Entry>> for Manifest {
    type Error = Error;

    fn try_from(entries: Vec<Entry>) -> Result<Self> {
        Manifest::from_entries(entries)
    }
}

impl From<Manifest> for Vec<Entry> {
    fn from(m: Manifest) -> Self {
        m.entries
    }
}

/// Checks that `path` is a safe relative path: not empty, `/`-separated,
/// no leading `/`, no empty, `.` or `..` components, no NUL.
pub fn validate_relative_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::UnsafePath,
            format!("unsafe path {path:?}: {why}"),
        ))
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    if path.contains('\0') {
        return bad("it contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("it has an empty component"),
            "." => return bad("it has a '.' component"),
            ".." => return bad("it has a '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Sorts `entries` by path (unless they already are strictly ascending, as
/// scans and manifest files give them: one pass checks that) and refuses a
/// path listed twice.
pub(crate) fn sort_by_path_once(entries: &mut [Entry]) -> Result<()> {
    if !entries.windows(2).all(|w| w[0].path < w[1].path) {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(pair) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("the manifest lists {:?} twice", pair[0].path),
            ));
        }
    }
    Ok(())
}

impl Manifest {
    /// Builds a manifest from entries in any order. Every path must be a safe
    /// relative path ([`validate_relative_path`]), appear once, and its parent
    /// directory (if any) must be an entry of kind `Dir`.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Self> {
        Manifest::build(entries, false)
    }

    /// [`from_entries`](Self::from_entries) for entries whose paths the
    /// caller has already checked with [`validate_relative_path`] (every
    /// other rule is still checked here).
    pub(crate) fn from_entries_with_valid_paths(entries: Vec<Entry>) -> Result<Self> {
        Manifest::build(entries, true)
    }

    fn build(mut entries: Vec<Entry>, paths_checked: bool) -> Result<Self> {
        sort_by_path_once(&mut entries)?;
        let manifest = Manifest::sorted(entries);
        for entry in &manifest.entries {
            if !paths_checked {
                validate_relative_path(&entry.path)?;
            }
            entry.check_fields()?;
        }
        manifest.check_parent_dirs(manifest.entries.iter().map(|e| e.path.as_str()))?;
        Ok(manifest)
    }

    /// Refuses a path of `paths` (in path order) whose parent is not a
    /// directory entry of this manifest (siblings share one lookup).
    pub(crate) fn check_parent_dirs<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        check_each_parent(paths, |path, parent| match self.get(parent) {
            Some(p) if p.kind == EntryKind::Dir => Ok(()),
            _ => Err(no_parent_dir(path, parent)),
        })
    }

    /// A manifest of entries this host recorded itself: a [`Scanner`]'s, or
    /// entries made from its own stat calls. Their paths come from directory
    /// listings (no empty, `.` or `..` component, no NUL), their digests
    /// from hashing and every parent directory was listed, so only the order
    /// is checked (one pass; sorted when needed) and no path twice, not what
    /// [`from_entries`](Self::from_entries) checks of entries from elsewhere.
    pub(crate) fn from_own_entries(mut entries: Vec<Entry>) -> Result<Self> {
        sort_by_path_once(&mut entries)?;
        Ok(Manifest::sorted(entries))
    }

    /// A manifest of `entries`, which the caller has sorted by path.
    fn sorted(entries: Vec<Entry>) -> Manifest {
        Manifest {
            entries,
            digest: OnceLock::new(),
        }
    }

    /// The entries, sorted by path (byte order), given away.
    pub(crate) fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// The entries, sorted by path (byte order).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the manifest has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The canonical byte form that [`digest`](Self::digest) hashes: a
    /// version tag, then every field of every entry in path order, each
    /// variable-length field prefixed by its length.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.entries.len() * 160);
        self.write_canonical(usize::MAX, &mut out, |_| {});
        out
    }

    /// The canonical form ([`canonical_bytes`](Self::canonical_bytes)) in
    /// pieces of about `piece` bytes, handed to `each` in order, each in a
    /// [`buffer`](crate::fsutil::buffer) (which `each` may give back).
    pub(crate) fn canonical_pieces(&self, piece: usize, mut each: impl FnMut(Vec<u8>)) {
        let empty = || {
            let mut buf = crate::fsutil::buffer();
            buf.clear();
            buf
        };
        let mut buf = empty();
        self.write_canonical(piece, &mut buf, |b| {
            each(std::mem::replace(b, empty()));
        });
        if !buf.is_empty() {
            each(buf);
        }
    }

    /// Writes the canonical form into `buf`, handing it to `flush` (which
    /// clears it) whenever it holds `every` bytes or more; the tail stays in
    /// `buf`.
    fn write_canonical(
        &self,
        every: usize,
        buf: &mut Vec<u8>,
        mut flush: impl FnMut(&mut Vec<u8>),
    ) {
        write_canonical_of(self.entries.iter(), every, buf, &mut flush);
    }

    /// The root digest: BLAKE3 (lowercase hex, 256 bits) of the canonical
    /// form. It changes if and only if some recorded field of some entry
    /// changes, or an entry is added or removed. Computed once per manifest
    /// (streamed, without building the canonical form in memory), then
    /// remembered. A manifest read from a file of an earlier format keeps
    /// the digest recorded there (a SHA-256 of the same canonical form), so
    /// the snapshots named by it stay valid.
    pub fn digest(&self) -> String {
        self.digest
            .get_or_init(|| {
                let mut hasher = ManifestHasher::new();
                let mut buf = Vec::with_capacity(80 * 1024);
                self.write_canonical(64 * 1024, &mut buf, |b| {
                    hasher.update(&b[..]);
                    b.clear();
                });
                hasher.update(&buf);
                Known::current(hasher.finalize().to_hex().to_string())
            })
            .hex
            .clone()
    }

    /// The digest, when it was computed (or remembered) already.
    pub(crate) fn known_digest(&self) -> Option<&str> {
        self.digest.get().map(|k| k.hex.as_str())
    }

    /// Whether the digest is a SHA-256 read from a file of an earlier
    /// format (see [`keep_legacy_digest`](Self::keep_legacy_digest)).
    pub(crate) fn has_legacy_digest(&self) -> bool {
        self.digest.get().is_some_and(|k| k.legacy)
    }

    /// Remembers `digest`, the digest of this manifest's canonical form as
    /// the caller computed it from [`canonical_pieces`](Self::canonical_pieces)
    /// with a [`ManifestHasher`] (a manifest file writer hashes them while it
    /// writes them).
    pub(crate) fn remember_digest(&self, digest: String) {
        debug_assert_eq!(
            digest,
            canonical_digest(&self.canonical_bytes()),
            "a remembered digest is the canonical form's"
        );
        let _ = self.digest.set(Known::current(digest));
    }

    /// Keeps `digest`, the [legacy digest](legacy_canonical_digest) of this
    /// manifest as recorded in a file of an earlier format and checked by
    /// the caller, as its digest (instead of its BLAKE3).
    pub(crate) fn keep_legacy_digest(&self, digest: String) {
        debug_assert_eq!(digest, legacy_canonical_digest(&self.canonical_bytes()));
        let _ = self.digest.set(Known {
            hex: digest,
            legacy: true,
        });
    }

    /// Builds a manifest from `canonical`, the exact bytes of
    /// [`canonical_bytes`](Self::canonical_bytes), with `digest` their
    /// digest as checked by the caller (see [`digest`](Self::digest); the
    /// legacy one when `legacy`). The entries must be strictly sorted
    /// by path; the manifest is then checked like [`from_entries`](Self::from_entries)
    /// by `build`. Returns a reason when the bytes are not a canonical form.
    ///
    /// Parsing is the exact inverse of the canonical encoding (every field
    /// is length-prefixed or fixed-size, and the bytes must be used up), so
    /// the parsed manifest has exactly `digest`, which is remembered without
    /// hashing again. An empty digest or link target is read as absent (the
    /// canonical form does not tell them apart, nor does the digest).
    pub(crate) fn from_canonical(
        canonical: &[u8],
        (digest, legacy): (String, bool),
        build: impl FnOnce(Vec<Entry>) -> Result<Manifest>,
    ) -> std::result::Result<Result<Manifest>, String> {
        let entries = parse_canonical(canonical)?;
        Ok(build(entries).inspect(|m| {
            debug_assert_eq!(m.canonical_bytes(), canonical);
            let _ = m.digest.set(Known {
                hex: digest,
                legacy,
            });
        }))
    }

    /// [`from_canonical`](Self::from_canonical) for a form that mostly
    /// repeats `base`: a record whose bytes are those of `base`'s entry at
    /// its path is that entry (cloned, not decoded), and only the other
    /// records are decoded. `build` gets the merged entries (in path order),
    /// the decoded ones and the paths of `base` the form no longer has, and
    /// checks what changed (see `replset::manifest_from_merge`: `base` passed
    /// every rule when it was read).
    pub(crate) fn from_canonical_against(
        canonical: &[u8],
        (digest, legacy): (String, bool),
        base: &Manifest,
        build: impl FnOnce(Vec<Entry>, &[&Entry], &[&str]) -> Result<Manifest>,
    ) -> std::result::Result<Result<Manifest>, String> {
        let Walked {
            merged,
            decoded,
            removed,
        } = merge_canonical(canonical, base, MERGE_PIECE)?;
        let upserts: Vec<Entry> = decoded.iter().map(|&i| merged[i].clone()).collect();
        let upserts: Vec<&Entry> = upserts.iter().collect();
        Ok(build(merged, &upserts, &removed).inspect(|m| {
            debug_assert_eq!(m.canonical_bytes(), canonical);
            let _ = m.digest.set(Known {
                hex: digest,
                legacy,
            });
        }))
    }

    /// The subset of entries not matched by `excludes`.
    pub fn without(&self, excludes: &Excludes) -> Manifest {
        Manifest::sorted(
            self.entries
                .iter()
                .filter(|e| !excludes.is_excluded(&e.path))
                .cloned()
                .collect(),
        )
    }
}

/// The hash of a manifest's digest ([`Manifest::digest`]), for callers that
/// hash its canonical form piece by piece.
pub(crate) type ManifestHasher = blake3::Hasher;

/// The digest ([`Manifest::digest`]) of `canonical`, a canonical form.
pub(crate) fn canonical_digest(canonical: &[u8]) -> String {
    blake3::hash(canonical).to_hex().to_string()
}

/// The digest earlier versions gave a manifest: SHA-256 (lowercase hex) of
/// the same canonical form. Manifest files of formats 1 and 2 record it; it
/// is checked when they are read and stays their manifest's digest.
pub(crate) fn legacy_canonical_digest(canonical: &[u8]) -> String {
    hex::encode(Sha256::digest(canonical))
}

/// How many records [`Manifest::from_canonical_against`] walks in one piece.
const MERGE_PIECE: usize = 8192;

/// The entries of `canonical`, a canonical form, taken from `base` where
/// their records are those of `base`'s entries (see
/// [`Manifest::from_canonical_against`]), with the indexes of the others
/// (decoded) and the paths of `base` the form no longer has; or why the
/// bytes are not a canonical form. The records are walked in pieces of
/// `piece`, each against the entries of `base` from its first path to the
/// next piece's, on all cores (at 100k entries the walk, mostly the copies
/// of the entries kept, took 17-30 ms on one).
fn merge_canonical<'a>(
    canonical: &[u8],
    base: &'a Manifest,
    piece: usize,
) -> std::result::Result<Walked<'a>, String> {
    let mut records = Records::new(canonical)?;
    let mut all: Vec<Record<'_>> = Vec::with_capacity(records.count() as usize);
    while let Some(record) = records.next_record()? {
        all.push(record);
    }
    let olds = &base.entries;
    let bound = |i: usize| match all.get(i) {
        _ if i == 0 => 0,
        Some(first) => olds.partition_point(|o| o.path.as_bytes() < first.path),
        None => olds.len(),
    };
    let starts: Vec<usize> = (0..all.len()).step_by(piece.max(1)).collect();
    let pieces = starts
        .par_iter()
        .map(|&from| {
            let to = (from + piece.max(1)).min(all.len());
            walk_against(&all[from..to], &olds[bound(from)..bound(to)])
        })
        .collect::<std::result::Result<Vec<Walked<'a>>, String>>()?;
    let mut merged: Vec<Entry> = Vec::with_capacity(room_to_grow(all.len()));
    let mut decoded: Vec<usize> = Vec::new();
    let mut removed: Vec<&str> = Vec::new();
    if all.is_empty() {
        removed.extend(olds.iter().map(|o| o.path.as_str()));
    }
    for piece in pieces {
        decoded.extend(piece.decoded.iter().map(|i| i + merged.len()));
        merged.extend(piece.merged);
        removed.extend(piece.removed);
    }
    Ok(Walked {
        merged,
        decoded,
        removed,
    })
}

/// What [`merge_canonical`] or [`walk_against`] made of records.
struct Walked<'a> {
    /// The entries of the records, in order.
    merged: Vec<Entry>,
    /// Indexes into `merged` of the entries decoded from their records.
    decoded: Vec<usize>,
    /// Paths of the old entries no record has.
    removed: Vec<&'a str>,
}

/// Walks `records` against `olds`, the old entries with paths from the
/// first record's up to the next piece's first: a record whose bytes are
/// those of the old entry at its path is that entry (copied), the others are
/// decoded.
fn walk_against<'a>(
    records: &[Record<'_>],
    olds: &'a [Entry],
) -> std::result::Result<Walked<'a>, String> {
    let mut out = Walked {
        merged: Vec::with_capacity(records.len()),
        decoded: Vec::new(),
        removed: Vec::new(),
    };
    let mut olds = olds.iter().peekable();
    for record in records {
        while let Some(gone) = olds.next_if(|o| o.path.as_bytes() < record.path) {
            out.removed.push(&gone.path);
        }
        let same = olds
            .next_if(|o| o.path.as_bytes() == record.path)
            .filter(|o| o.is_canonically(record.bytes));
        match same {
            Some(o) => out.merged.push(o.clone()),
            None => {
                out.decoded.push(out.merged.len());
                out.merged.push(record.entry()?);
            }
        }
    }
    out.removed.extend(olds.map(|o| o.path.as_str()));
    Ok(out)
}

/// The canonical form of `entries`, strictly sorted by path, as if they
/// were a whole manifest ([`Manifest::canonical_bytes`]) whatever rules they
/// keep: [`parse_canonical`] reads them back.
pub(crate) fn canonical_form_of(entries: &[&Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + entries.len() * 160);
    write_canonical_of(entries.iter().copied(), usize::MAX, &mut out, |_| {});
    out
}

/// Writes the canonical form of `entries` (strictly sorted by path) into
/// `buf`, handing it to `flush` (which clears it) whenever it holds `every`
/// bytes or more; the tail stays in `buf`.
fn write_canonical_of<'a>(
    entries: impl ExactSizeIterator<Item = &'a Entry>,
    every: usize,
    buf: &mut Vec<u8>,
    mut flush: impl FnMut(&mut Vec<u8>),
) {
    buf.extend_from_slice(CANONICAL_TAG);
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for entry in entries {
        entry.write_canonical(buf);
        if buf.len() >= every {
            flush(buf);
        }
    }
}

/// The version tag that starts the canonical form.
const CANONICAL_TAG: &[u8] = b"pe_failover manifest v1\n";

/// The records of a canonical form ([`Manifest::canonical_bytes`]) one by
/// one, each checked to come strictly after the one before it by path; the
/// caller decodes the fields it needs. Every field is length-prefixed or
/// fixed-size, so finding a record's end reads only its three lengths.
pub(crate) struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u64,
    last_path: Option<&'a [u8]>,
}

/// One record of a canonical form: its bytes and its path (not yet
/// checked to be UTF-8: [`entry`](Record::entry) does, and a record equal
/// to an entry's bytes is).
struct Record<'a> {
    bytes: &'a [u8],
    path: &'a [u8],
    /// Where it starts in the canonical form (for messages).
    at: usize,
}

impl<'a> Records<'a> {
    /// Checks the tag and the count of `bytes` (against the least room an
    /// entry takes) and starts before the first record.
    fn new(bytes: &'a [u8]) -> std::result::Result<Records<'a>, String> {
        let mut r = Records {
            buf: bytes,
            pos: 0,
            left: 0,
            last_path: None,
        };
        if r.take(CANONICAL_TAG.len())? != CANONICAL_TAG {
            return Err("not a canonical manifest".into());
        }
        let count = r.u64()?;
        // Every entry takes at least 1 + 8 + 4 * 3 + 8 * 2 + 8 * 2 = 53 bytes.
        if count > (bytes.len() / 53) as u64 {
            return Err(format!(
                "{count} entries cannot fit in {} bytes",
                bytes.len()
            ));
        }
        r.left = count;
        Ok(r)
    }

    /// How many records the form announces.
    fn count(&self) -> u64 {
        self.left
    }

    /// A reader of `bytes` laid out with the canonical form's encoding
    /// (little-endian `u64`s, length-prefixed fields), for the files that
    /// hold other things in it around a canonical form (manifest deltas).
    pub(crate) fn raw(bytes: &'a [u8]) -> Records<'a> {
        Records {
            buf: bytes,
            pos: 0,
            left: 0,
            last_path: None,
        }
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {}", self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u64(&mut self) -> std::result::Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn text(&mut self, what: &str) -> std::result::Result<&'a str, String> {
        let at = self.pos;
        std::str::from_utf8(self.field(what)?)
            .map_err(|_| format!("the {what} at byte {at} is not UTF-8"))
    }

    /// A length-prefixed field, unchecked.
    pub(crate) fn field(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let n = usize::try_from(self.u64()?).map_err(|_| format!("bad {what} length"))?;
        self.take(n)
    }

    /// The next record; `None` after the last one, when the bytes must be
    /// used up. Only its lengths are read, and its path compared with the
    /// one before.
    fn next_record(&mut self) -> std::result::Result<Option<Record<'a>>, String> {
        if self.left == 0 {
            if self.pos != self.buf.len() {
                return Err(format!(
                    "{} bytes of trailing data",
                    self.buf.len() - self.pos
                ));
            }
            return Ok(None);
        }
        self.left -= 1;
        let at = self.pos;
        self.take(1)?;
        let path = self.field("path")?;
        if self.last_path.is_some_and(|last| last >= path) {
            return Err(format!(
                "entry {:?} is out of order",
                String::from_utf8_lossy(path)
            ));
        }
        self.last_path = Some(path);
        self.take(4 * 3 + 8 * 2)?;
        self.field("digest")?;
        self.field("link target")?;
        Ok(Some(Record {
            bytes: &self.buf[at..self.pos],
            path,
            at,
        }))
    }
}

impl Record<'_> {
    /// The entry the record holds.
    fn entry(&self) -> std::result::Result<Entry, String> {
        let mut r = Records {
            buf: self.bytes,
            pos: 0,
            left: 0,
            last_path: None,
        };
        let kind = match r.take(1)?[0] {
            b'f' => EntryKind::File,
            b'd' => EntryKind::Dir,
            b'l' => EntryKind::Symlink,
            other => {
                return Err(format!(
                    "unknown entry kind {other:#04x} at byte {}",
                    self.at
                ))
            }
        };
        let path = r.text("path")?;
        let mut u32_field = || -> std::result::Result<u32, String> {
            let mut a = [0u8; 4];
            a.copy_from_slice(r.take(4)?);
            Ok(u32::from_le_bytes(a))
        };
        let (mode, uid, gid) = (u32_field()?, u32_field()?, u32_field()?);
        let size = r.u64()?;
        let mtime_ns = r.u64()? as i64;
        let sha256 = r.text("digest")?;
        let target = r.text("link target")?;
        Ok(Entry {
            path: path.to_string(),
            kind,
            mode,
            uid,
            gid,
            size,
            mtime_ns,
            sha256: (!sha256.is_empty()).then(|| sha256.to_string()),
            target: (!target.is_empty()).then(|| target.to_string()),
        })
    }
}

/// Room for `len` entries of a manifest that may grow, and about one in
/// sixteen more: a merge that puts new paths in (see
/// `manifest_delta::merge_taking`) then moves no entry into new memory.
/// Room never used is address space, not memory.
pub(crate) fn room_to_grow(len: usize) -> usize {
    len + len / 16
}

/// The entries of a canonical form, strictly sorted by path, or why the
/// bytes are not one; with [room to grow](room_to_grow) (a receiver or an
/// applier puts the next change into a manifest it read).
pub(crate) fn parse_canonical(bytes: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let mut records = Records::new(bytes)?;
    let mut entries: Vec<Entry> = Vec::with_capacity(room_to_grow(records.count() as usize));
    while let Some(record) = records.next_record()? {
        entries.push(record.entry()?);
    }
    Ok(entries)
}

/// What changed from the manifest whose canonical form is `old` to `new`,
/// as [`diff`](crate::diff::diff) of the two would say, without building
/// the old manifest: a record whose bytes are those `new` has at its path
/// is skipped undecoded, so only the entries that changed are read.
/// Returns why when `old` is not a canonical form. The caller checks that
/// `old` is the form it means (its digest).
pub(crate) fn diff_canonical(
    old: &[u8],
    new: &Manifest,
) -> std::result::Result<crate::diff::Changeset, String> {
    use std::cmp::Ordering as Order;
    let mut out = crate::diff::Changeset::default();
    let mut records = Records::new(old)?;
    let mut next_old = records.next_record()?;
    let mut news = new.entries().iter().peekable();
    let mut scratch = Vec::with_capacity(256);
    loop {
        let order = match (&next_old, news.peek()) {
            (None, None) => break,
            (Some(_), None) => Order::Less,
            (None, Some(_)) => Order::Greater,
            (Some(o), Some(n)) => o.path.cmp(n.path.as_bytes()),
        };
        match order {
            Order::Less => {
                let o = next_old.take().expect("compared");
                out.removed.push(o.entry()?);
                next_old = records.next_record()?;
            }
            Order::Greater => out.added.push(news.next().expect("compared").clone()),
            Order::Equal => {
                let o = next_old.take().expect("compared");
                let n = news.next().expect("compared");
                scratch.clear();
                n.write_canonical(&mut scratch);
                if scratch != o.bytes {
                    let old_entry = o.entry()?;
                    let fields = crate::diff::changed_fields(&old_entry, n);
                    if !fields.is_empty() {
                        out.changed.push(crate::diff::Change {
                            old: old_entry,
                            new: n.clone(),
                            fields,
                        });
                    }
                }
                next_old = records.next_record()?;
            }
        }
    }
    Ok(out)
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The 32 bytes of a SHA-256 written as hex.
pub(crate) fn sha256_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// Counters describing one scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    /// Entries in the manifest.
    pub entries: u64,
    /// Regular files in the manifest.
    pub files: u64,
    /// Files whose contents were read and hashed in this scan.
    pub hashed: u64,
    /// Files whose digest came from the stat cache.
    pub cached: u64,
    /// Bytes read while hashing.
    pub bytes_hashed: u64,
    /// Entries that disappeared between listing and reading (left out).
    pub vanished: u64,
    /// Entries left out because of the exclusion patterns.
    pub excluded: u64,
    /// What happened to the stat cache file.
    pub cache: CacheStatus,
    /// Wall-clock duration of the scan.
    pub elapsed: Duration,
}

/// The result of a scan: the manifest, problems with single entries, and
/// counters.
#[derive(Debug)]
pub struct Scan {
    /// Every entry that was read successfully.
    pub manifest: Manifest,
    /// Entries that could not be recorded, each with its path and cause.
    pub problems: Vec<Error>,
    /// Counters.
    pub stats: ScanStats,
    /// Contents read while hashing, when asked for
    /// ([`Scanner::keep_contents`]).
    pub contents: Contents,
    /// The stat cache still being written
    /// ([`Scanner::save_cache_in_background`]).
    pub cache_save: CacheSave,
}

/// Contents of small files, by SHA-256, kept from the reads that hashed
/// them: a sender ships them without reading the files again. Cheap to
/// clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Contents {
    map: Arc<FxHashMap<[u8; 32], Vec<u8>>>,
}

impl Contents {
    /// The contents with SHA-256 `sha256` (hex), if kept.
    pub fn get(&self, sha256: &str) -> Option<&[u8]> {
        self.map.get(&sha256_bytes(sha256)?).map(|b| &b[..])
    }

    /// How many contents are kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Largest file whose contents [`Scanner::keep_contents`] keeps.
pub const KEEP_FILE_MAX: u64 = 64 * 1024;

impl Scan {
    /// The manifest, or an error when any entry could not be recorded: the
    /// first problem, with the number of others in its message.
    pub fn into_complete(mut self) -> Result<Manifest> {
        if self.problems.is_empty() {
            return Ok(self.manifest);
        }
        let more = self.problems.len() - 1;
        let first = self.problems.swap_remove(0);
        if more == 0 {
            Err(first)
        } else {
            let kind = first.kind();
            let path = first.path().map(Path::to_path_buf);
            let mut err = Error::new(
                kind,
                format!("{first} (and {more} more unreadable entries)"),
            );
            if let Some(p) = path {
                err = err.with_path(p);
            }
            Err(err)
        }
    }
}

/// Walks a directory tree into a [`Manifest`].
///
/// ```no_run
/// use pe_failover_core::snapshot::Scanner;
/// use pe_failover_core::exclude::Excludes;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// let scan = Scanner::new("/etc/puppetlabs/puppet/ssl")
///     .excludes(Excludes::new(["private_keys", "*.tmp"])?)
///     .cache_file("/opt/pe_failover/cache/ssl.scan")
///     .scan()?;
/// println!("{} entries, digest {}", scan.stats.entries, scan.manifest.digest());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Scanner {
    root: PathBuf,
    excludes: Excludes,
    cache_file: Option<PathBuf>,
    cancel: CancelToken,
    threads: Option<usize>,
    racy_window_ns: i64,
    prefix: String,
    keep_budget: u64,
    cache_in_background: bool,
}

/// Files modified this close to the start of a scan are hashed again next
/// time rather than trusted from the cache: a write within the file system's
/// timestamp granularity could otherwise go unnoticed.
const DEFAULT_RACY_WINDOW_NS: i64 = 2_000_000_000;

/// Directory entries statted per task while a directory is being read.
const STAT_BATCH: usize = 1024;

/// A listed entry's manifest path and what `fstatat` said of it.
type Statted = (String, io::Result<Stat>);

struct Listed {
    /// The manifest path: the scanner's prefix, then the path below the root.
    rel: String,
    stat: Stat,
}

/// The fields of a `stat` a scan uses (a third of [`Metadata`]'s size:
/// listings of 100,000 entries are moved and sorted).
struct Stat {
    /// File type and permission bits (`st_mode`).
    mode: u32,
    uid: u32,
    gid: u32,
    /// Size, times, inode and device, as the stat cache compares them.
    key: CacheEntry,
}

impl Stat {
    fn of(meta: &Metadata) -> Stat {
        Stat {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            key: CacheEntry::key_of(meta),
        }
    }

    fn is(&self, format: libc::mode_t) -> bool {
        self.mode & libc::S_IFMT == format
    }
}

impl Scanner {
    /// A scanner of the tree at `root`, with no exclusions, no cache, and as
    /// many hashing threads as cores.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Scanner {
            root: root.into(),
            excludes: Excludes::default(),
            cache_file: None,
            cancel: CancelToken::new(),
            threads: None,
            racy_window_ns: DEFAULT_RACY_WINDOW_NS,
            prefix: String::new(),
            keep_budget: 0,
            cache_in_background: false,
        }
    }

    /// Records every path below the root as `prefix` followed by the path
    /// (`prefix` should end with `/`), so a caller placing the tree inside a
    /// larger manifest needs no second copy of each path. Exclusion patterns
    /// and the stat cache still see the path below the root. Default: none.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// `path` (a manifest path of this scanner) below the root.
    fn below_root<'a>(&self, path: &'a str) -> &'a str {
        &path[self.prefix.len()..]
    }

    /// Where `path` (a manifest path of this scanner) is on disk.
    fn abs_path(&self, path: &str) -> PathBuf {
        self.root.join(self.below_root(path))
    }

    /// Leaves out entries matched by `excludes` (and everything below an
    /// excluded directory). Default: none.
    pub fn excludes(mut self, excludes: Excludes) -> Self {
        self.excludes = excludes;
        self
    }

    /// Uses (and updates) a stat cache at `path`. The file is replaced
    /// atomically, so concurrent scanners never see a torn cache; a missing
    /// or corrupt cache is ignored. Default: no cache.
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// Writes the updated stat cache on a thread of its own instead of
    /// before [`scan`](Self::scan) returns (25-40 ms at 100,000 files,
    /// which the caller can spend shipping the result): [`Scan::cache_save`]
    /// waits for it and tells how it went, and [`ScanStats::cache`] only says
    /// how the cache was read. Default: off.
    pub fn save_cache_in_background(mut self, yes: bool) -> Self {
        self.cache_in_background = yes;
        self
    }

    /// Stops the scan with [`ErrorKind::Cancelled`] when `token` is tripped.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Keeps, in [`Scan::contents`], the contents of the files it hashes
    /// (those the stat cache cannot vouch for) of at most [`KEEP_FILE_MAX`]
    /// bytes, up to `budget` bytes in all. Default: 0 (none kept).
    pub fn keep_contents(mut self, budget: u64) -> Self {
        self.keep_budget = budget;
        self
    }

    /// Number of threads for statting and hashing. Default: one per core.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Files changed less than `window` before a scan started are not saved
    /// in the stat cache, so the next scan hashes them again: a write within
    /// the file system's timestamp granularity could otherwise leave size and
    /// times unchanged and go unnoticed. Default: 2 seconds. Tests that
    /// exercise the cache on freshly written files set it to zero.
    pub fn racy_window(mut self, window: Duration) -> Self {
        self.racy_window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    /// The root being scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scans the tree. Fails only when the root itself cannot be read, the
    /// scan is cancelled, or a thread pool cannot be made; problems with
    /// single entries are returned in [`Scan::problems`].
    pub fn scan(&self) -> Result<Scan> {
        match self.threads {
            Some(n) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| {
                        Error::new(ErrorKind::Internal, format!("cannot start threads: {e}"))
                    })?;
                pool.install(|| self.scan_inner())
            }
            None => self.scan_inner(),
        }
    }

    fn scan_inner(&self) -> Result<Scan> {
        let started = Instant::now();
        let start_ns = now_ns();
        let root_meta = fs::metadata(&self.root).map_err(|e| Error::io("scan", &self.root, e))?;
        if !root_meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("cannot scan {}: not a directory", self.root.display()),
            )
            .with_path(&self.root));
        }

        // Load the cache while the tree is being walked.
        let mut problems = Vec::new();
        let mut stats = ScanStats::default();
        let ((cache, cache_status), listed) = rayon::join(
            || match &self.cache_file {
                Some(path) => StatCache::load(path, &self.root),
                None => (StatCache::default(), CacheStatus::Disabled),
            },
            || self.walk(&mut problems, &mut stats),
        );
        let listed = listed?;
        stats.cache = cache_status;

        // Decide per file: digest from the cache, or hash it now. Both lists
        // are sorted by path: one merge pass finds every file's record.
        let slots = cache.slots_of(
            listed
                .iter()
                .map(|item| self.below_root(&item.rel).as_bytes()),
        );
        // A first scan (or one after a wholesale change) hashes, and may
        // keep, nearly every file.
        let _bulk = crate::bulk::BulkPhase::begin_for(slots.iter().filter(|s| s.is_none()).count());
        let hashed = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let reused = AtomicU64::new(0);
        let kept_bytes = AtomicU64::new(0);
        let results: Vec<Option<std::result::Result<Recorded, Outcome>>> = listed
            .into_par_iter()
            .zip(slots)
            .map(|(item, slot)| {
                if self.cancel.is_cancelled() {
                    return None;
                }
                let counters = Counters {
                    hashed: &hashed,
                    bytes: &bytes,
                    reused: &reused,
                    kept: &kept_bytes,
                };
                Some(self.record(item, &cache, slot, &counters))
            })
            .collect();
        self.cancel.check()?;

        let mut entries = Vec::with_capacity(results.len());
        let mut keys: Vec<(usize, CacheEntry)> = Vec::new();
        let mut contents: FxHashMap<[u8; 32], Vec<u8>> = FxHashMap::default();
        let fresh = start_ns.saturating_sub(self.racy_window_ns);
        for result in results.into_iter().flatten() {
            match result {
                Ok((entry, key, kept)) => {
                    if let Some((sha, kept)) = kept {
                        contents.insert(sha, kept);
                    }
                    // Only files old enough to trust go into the cache.
                    if let Some(key) = key {
                        if key.mtime_ns <= fresh && key.ctime_ns <= fresh {
                            keys.push((entries.len(), key));
                        }
                    }
                    entries.push(entry)
                }
                Err(Outcome::Vanished) => stats.vanished += 1,
                Err(Outcome::Problem(e)) => problems.push(e),
            }
        }
        stats.files = entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
        stats.hashed = hashed.load(Ordering::Relaxed);
        stats.bytes_hashed = bytes.load(Ordering::Relaxed);
        stats.cached = reused.load(Ordering::Relaxed);
        stats.entries = entries.len() as u64;

        // The cache is rewritten only when it would change: some trusted
        // file was hashed, or some cached file is gone.
        let reused = stats.cached as usize;
        let mut cache_save = CacheSave::default();
        if let Some(path) = &self.cache_file {
            if keys.len() != reused || cache.len() != reused {
                let mut new_cache = StatCache::with_capacity(keys.len());
                for (i, key) in keys {
                    let entry = &entries[i];
                    if let Some(sha) = &entry.sha256 {
                        new_cache.insert_parts(self.below_root(&entry.path), &key, sha);
                    }
                }
                // A cache that cannot be written only costs speed.
                let saved = if self.cache_in_background {
                    CacheSave::start(new_cache, path.clone(), self.root.clone())
                        .map(|pending| cache_save = pending)
                } else {
                    new_cache.save(path, &self.root)
                };
                if let Err(e) = saved {
                    stats.cache = CacheStatus::WriteFailed(e.to_string());
                }
            }
        }

        problems.sort_by(|a, b| a.path().cmp(&b.path()));
        let manifest = Manifest::sorted(entries);
        debug_assert!(manifest.entries.windows(2).all(|w| w[0].path < w[1].path));
        stats.elapsed = started.elapsed();
        Ok(Scan {
            manifest,
            problems,
            stats,
            contents: Contents {
                map: Arc::new(contents),
            },
            cache_save,
        })
    }

    /// Lists the tree breadth-first, statting the entries of each directory
    /// in parallel. Returns entries sorted by relative path.
    fn walk(&self, problems: &mut Vec<Error>, stats: &mut ScanStats) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = Vec::new();
        // Directories to list, as manifest paths (the root: the bare prefix).
        let mut pending: Vec<String> = vec![self.prefix.clone()];
        while let Some(dir_path) = pending.pop() {
            self.cancel.check()?;
            let rel_dir = self.below_root(&dir_path);
            let abs_dir = if rel_dir.is_empty() {
                self.root.clone()
            } else {
                self.root.join(rel_dir)
            };
            let reader = match fs::read_dir(&abs_dir) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !rel_dir.is_empty() => {
                    stats.vanished += 1;
                    continue;
                }
                Err(e) => {
                    let err = Error::io("list directory", &abs_dir, e);
                    if rel_dir.is_empty() {
                        return Err(err);
                    }
                    problems.push(err);
                    continue;
                }
            };
            // Entries are statted in batches while the directory is still
            // being read: the other threads stat what this one has listed.
            // DirEntry::metadata is fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW):
            // no path walk per entry, and it never follows a symlink.
            // Each batch's results are kept as they are and moved into `out`
            // once: one growing vector would copy a large directory's
            // entries again at every doubling, into freshly zeroed pages.
            let statted: Mutex<Vec<Vec<Statted>>> = Mutex::new(Vec::new());
            let stat_batch = |batch: Vec<(String, fs::DirEntry)>| {
                // A batch is split further among idle threads (the last
                // one, often a whole small directory, is statted after the
                // listing ends).
                let done: Vec<Statted> = batch
                    .into_par_iter()
                    .with_min_len(64)
                    .map(|(rel, item)| {
                        let stat = item.metadata().map(|m| Stat::of(&m));
                        (rel, stat)
                    })
                    .collect();
                statted
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(done);
            };
            let stat_batch = &stat_batch;
            rayon::scope(|scope| {
                let mut batch = Vec::with_capacity(STAT_BATCH);
                for item in reader {
                    let item = match item {
                        Ok(item) => item,
                        Err(e) => {
                            problems.push(Error::io("list directory", &abs_dir, e));
                            continue;
                        }
                    };
                    let name = item.file_name();
                    let Some(name) = name.to_str() else {
                        let abs = item.path();
                        problems.push(
                            Error::new(
                                ErrorKind::NonUtf8Path,
                                format!(
                                    "cannot record {}: its name is not valid UTF-8 (rename it)",
                                    abs.display()
                                ),
                            )
                            .with_path(&abs),
                        );
                        continue;
                    };
                    let mut rel = String::with_capacity(dir_path.len() + 1 + name.len());
                    rel.push_str(&dir_path);
                    if !rel_dir.is_empty() {
                        rel.push('/');
                    }
                    rel.push_str(name);
                    if self.excludes.is_excluded(self.below_root(&rel)) {
                        stats.excluded += 1;
                        continue;
                    }
                    batch.push((rel, item));
                    if batch.len() == STAT_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(STAT_BATCH));
                        scope.spawn(move |_| stat_batch(full));
                    }
                }
                stat_batch(batch);
            });
            let statted = statted
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            out.reserve(statted.iter().map(Vec::len).sum());
            for (rel, stat) in statted.into_iter().flatten() {
                match stat {
                    Ok(stat) => {
                        if stat.is(libc::S_IFDIR) {
                            pending.push(rel.clone());
                        }
                        out.push(Listed { rel, stat });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => stats.vanished += 1,
                    Err(e) => problems.push(Error::io("stat", self.abs_path(&rel), e)),
                }
            }
        }
        out.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    fn record(
        &self,
        item: Listed,
        cache: &StatCache,
        slot: Option<usize>,
        counters: &Counters<'_>,
    ) -> std::result::Result<Recorded, Outcome> {
        let Counters {
            hashed,
            bytes,
            reused,
            kept,
        } = counters;
        let Listed { rel, stat } = item;
        let mut entry = Entry {
            path: rel,
            kind: EntryKind::File,
            mode: stat.mode & 0o7777,
            uid: stat.uid,
            gid: stat.gid,
            size: 0,
            mtime_ns: stat.key.mtime_ns,
            sha256: None,
            target: None,
        };
        if stat.is(libc::S_IFDIR) {
            entry.kind = EntryKind::Dir;
            return Ok((entry, None, None));
        }
        if stat.is(libc::S_IFLNK) {
            entry.kind = EntryKind::Symlink;
            let abs = self.abs_path(&entry.path);
            let target = fs::read_link(&abs).map_err(|e| Outcome::from_io("read link", &abs, e))?;
            let target = target.into_os_string().into_string().map_err(|_| {
                Outcome::Problem(
                    Error::new(
                        ErrorKind::NonUtf8Path,
                        format!(
                            "cannot record symlink {}: its target is not valid UTF-8",
                            abs.display()
                        ),
                    )
                    .with_path(&abs),
                )
            })?;
            entry.size = target.len() as u64;
            entry.target = Some(target);
            return Ok((entry, None, None));
        }
        if !stat.is(libc::S_IFREG) {
            let abs = self.abs_path(&entry.path);
            return Err(Outcome::Problem(
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot record {}: not a regular file, directory or symlink (sockets, fifos and devices are not replicated)",
                        abs.display()
                    ),
                )
                .with_path(&abs),
            ));
        }
        entry.size = stat.key.size;
        let mut key = stat.key;
        if let Some(sha) = slot.and_then(|i| cache.lookup_slot(i, &key)) {
            entry.sha256 = Some(sha.to_string());
            reused.fetch_add(1, Ordering::Relaxed);
            return Ok((entry, Some(key), None));
        }
        // Kept contents are counted against the budget before they are read.
        let keep = self.keep_budget > 0
            && key.size <= KEEP_FILE_MAX
            && kept.fetch_add(key.size, Ordering::Relaxed) + key.size <= self.keep_budget;
        // Hash, then make sure the file did not change while it was read; if
        // it did, record it as it is now and read it again.
        let abs = self.abs_path(&entry.path);
        for _attempt in 0..3 {
            let (sha, n, after, read) = hash_file(&abs, &self.cancel, keep)?;
            hashed.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(n, Ordering::Relaxed);
            let now = CacheEntry::key_of(&after);
            entry.mode = after.mode() & 0o7777;
            entry.uid = after.uid();
            entry.gid = after.gid();
            entry.size = after.size();
            entry.mtime_ns = mtime_ns(&after);
            if now.same_file_as(&key) && n == entry.size {
                entry.sha256 = Some(sha);
                return Ok((entry, Some(now), read));
            }
            key = now;
        }
        Err(Outcome::Problem(
            Error::new(
                ErrorKind::Io,
                format!(
                    "{} kept changing while it was read; scan again when writes to it have settled",
                    abs.display()
                ),
            )
            .with_path(&abs),
        ))
    }
}

enum Outcome {
    Vanished,
    Problem(Error),
}

impl Outcome {
    fn from_io(action: &str, path: &Path, e: io::Error) -> Outcome {
        if e.kind() == io::ErrorKind::NotFound {
            Outcome::Vanished
        } else {
            Outcome::Problem(Error::io(action, path, e))
        }
    }
}

thread_local! {
    /// One read buffer per hashing thread, reused for every file.
    static HASH_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 128 * 1024].into_boxed_slice());
}

/// Reads a regular file (refusing to follow a symlink swapped in after the
/// listing) and returns its SHA-256, the bytes read and its metadata after
/// the read.
/// An entry, the stat cache record to keep for it (files only) and its
/// contents when kept.
type Recorded = (Entry, Option<CacheEntry>, Option<Kept>);

/// Contents kept from a scan: the SHA-256 and the bytes.
type Kept = ([u8; 32], Vec<u8>);

/// A file's SHA-256 (hex), the bytes read, its metadata once read and what
/// was read when kept.
type Hashed = (String, u64, Metadata, Option<Kept>);

/// Counters shared by the threads recording entries.
struct Counters<'a> {
    hashed: &'a AtomicU64,
    bytes: &'a AtomicU64,
    reused: &'a AtomicU64,
    /// Bytes reserved for kept contents.
    kept: &'a AtomicU64,
}

/// Hashes the file at `path`; returns its SHA-256 (hex), the bytes read,
/// its metadata once read and, when `keep` and it holds at most
/// [`KEEP_FILE_MAX`] bytes, what was read.
fn hash_file(
    path: &Path,
    cancel: &CancelToken,
    keep: bool,
) -> std::result::Result<Hashed, Outcome> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Outcome::Problem(
                    Error::new(
                        ErrorKind::Io,
                        format!(
                            "{} was replaced by a symlink while it was read; scan again",
                            path.display()
                        ),
                    )
                    .with_path(path),
                )
            } else {
                Outcome::from_io("read", path, e)
            }
        })?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut read: Option<Vec<u8>> = keep.then(Vec::new);
    HASH_BUFFER.with(|buf| -> std::result::Result<(), Outcome> {
        let mut buf = buf.borrow_mut();
        loop {
            if cancel.is_cancelled() {
                return Err(Outcome::Problem(Error::cancelled()));
            }
            let n = match file.read(&mut buf[..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Outcome::from_io("read", path, e)),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
            if total > KEEP_FILE_MAX {
                read = None;
            } else if let Some(read) = read.as_mut() {
                read.extend_from_slice(&buf[..n]);
            }
        }
    })?;
    let after = file
        .metadata()
        .map_err(|e| Outcome::from_io("stat", path, e))?;
    if !after.file_type().is_file() {
        return Err(Outcome::Problem(
            Error::new(
                ErrorKind::InvalidInput,
                format!("{} is no longer a regular file", path.display()),
            )
            .with_path(path),
        ));
    }
    let digest: [u8; 32] = hasher.finalize().into();
    Ok((hex::encode(digest), total, after, read.map(|r| (digest, r))))
}

/// Modification time of `meta` in nanoseconds since the Unix epoch.
pub(crate) fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (
            prop::sample::select(vec!["ca", "ca/a", "ca/b", "ca/signed/x.pem", "ca/é", "ssl"]),
            prop::sample::select(vec![EntryKind::File, EntryKind::Dir, EntryKind::Symlink]),
            prop::sample::select(vec![0o600u32, 0o644]),
            0..3u64,
            prop::option::of(prop::sample::select(vec!['a', 'b'])),
        )
            .prop_map(|(path, kind, mode, size, sha)| Entry {
                path: path.to_string(),
                kind,
                mode,
                uid: 0,
                gid: size as u32,
                size,
                mtime_ns: -(size as i64),
                sha256: sha.map(|c| c.to_string().repeat(64)),
                target: (kind == EntryKind::Symlink).then(|| "../t".to_string()),
            })
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        prop::collection::vec(entry(), 0..6).prop_map(|mut v| {
            v.sort_by(|a, b| a.path.cmp(&b.path));
            v.dedup_by(|a, b| a.path == b.path);
            // Only the encoding matters here, not the manifest rules.
            Manifest::sorted(v)
        })
    }

    proptest! {
        #[test]
        fn the_diff_from_a_canonical_form_is_the_diff_of_the_manifests(
            old in manifest(),
            new in manifest(),
        ) {
            let bytes = old.canonical_bytes();
            prop_assert_eq!(diff_canonical(&bytes, &new).unwrap(), diff(&old, &new));
            prop_assert!(diff_canonical(&bytes, &old).unwrap().is_empty());
        }

        #[test]
        fn a_form_merged_against_a_base_in_pieces_is_the_form(
            old in manifest(),
            new in manifest(),
            piece in 1..4usize,
        ) {
            let bytes = new.canonical_bytes();
            let Walked { merged, decoded, removed } = merge_canonical(&bytes, &old, piece).unwrap();
            prop_assert_eq!(&merged, &new.entries);
            // Decoded: exactly the entries `old` does not have as they are.
            let fresh: Vec<usize> = (0..new.len())
                .filter(|&i| old.get(&new.entries[i].path) != Some(&new.entries[i]))
                .collect();
            prop_assert_eq!(decoded, fresh);
            let gone: Vec<&str> = old
                .entries
                .iter()
                .map(|e| e.path.as_str())
                .filter(|p| new.get(p).is_none())
                .collect();
            prop_assert_eq!(removed, gone);
            for (e, f) in old.entries.iter().zip(&new.entries) {
                let mut own = Vec::new();
                f.write_canonical(&mut own);
                prop_assert_eq!(e.is_canonically(&own), e == f);
            }
        }

        #[test]
        fn a_damaged_canonical_form_is_refused(old in manifest(), cut in any::<prop::sample::Index>()) {
            let bytes = old.canonical_bytes();
            let cut = cut.index(bytes.len());
            prop_assert!(diff_canonical(&bytes[..cut], &old).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(diff_canonical(&longer, &old).is_err());
        }
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let m = Manifest::sorted(vec![Entry::synthetic_dir("a"), Entry::synthetic_dir("b")]);
        let bytes = m.canonical_bytes();
        let head = CANONICAL_TAG.len() + 8;
        let half = (bytes.len() - head) / 2;
        let mut swapped = bytes[..head].to_vec();
        swapped.extend_from_slice(&bytes[head + half..]);
        swapped.extend_from_slice(&bytes[head..head + half]);
        let err = diff_canonical(&swapped, &m).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        assert!(parse_canonical(&swapped)
            .unwrap_err()
            .contains("out of order"));
        assert!(merge_canonical(&swapped, &m, 1)
            .err()
            .unwrap()
            .contains("out of order"));
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_however_the_form_is_read() {
        let m = Manifest::sorted(vec![Entry::synthetic_dir("a"), Entry::synthetic_dir("b")]);
        let mut bad = m.canonical_bytes();
        // The second record's path, "b": 0xff is never UTF-8 (and sorts last).
        let at = bad.len() - 1 - 8 - 8 - 16 - 12;
        assert_eq!(bad[at], b'b');
        bad[at] = 0xff;
        let not_utf8 = |e: String| assert!(e.contains("is not UTF-8"), "{e}");
        not_utf8(parse_canonical(&bad).unwrap_err());
        not_utf8(diff_canonical(&bad, &m).unwrap_err());
        for piece in [1, 2, MERGE_PIECE] {
            not_utf8(merge_canonical(&bad, &m, piece).err().unwrap());
        }
    }
}
