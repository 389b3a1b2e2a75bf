//! The replicated set: which files of a Puppet CA leave the active primary,
//! and under which names.
//!
//! A replicated manifest holds, and may only hold:
//!
//! - `ca` and everything below it: the CA directory (`cadir`), found with
//!   [`detect_cadir`] or given explicitly;
//! - `ssl/crl.pem` and `ssl/certs/ca.pem` from the ssl directory, with the
//!   two synthetic directory entries `ssl` and `ssl/certs` (constant
//!   metadata, so they never change the digest).
//!
//! Nothing else of the ssl directory is ever read: the host's own
//! certificate, private and public keys stay where they are.
//!
//! [`ReplicatedSet::scan`] refuses a database-backed CA (Puppet Enterprise
//! 2025 and later) and an empty or incomplete source, so that a broken
//! active primary can never wipe its replicas (the original module's
//! `rsync --delete` did).

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::CacheSave;
use crate::cancel::CancelToken;
use crate::diff::{changed_fields, Change, Changeset};
use crate::exclude::Excludes;
use crate::fsutil;
use crate::manifest_delta::merge_taking;
use crate::protocol::Kind;
use crate::snapshot::{
    canonical_digest, legacy_canonical_digest, mtime_ns, validate_relative_path, Contents, Entry,
    EntryKind, Manifest, ManifestHasher, ScanStats, Scanner,
};
use crate::{Error, ErrorKind, Result};

/// The manifest prefix of the CA directory.
pub const CA_ROOT: &str = "ca";
/// The manifest path of the CA certificate.
pub const CA_CERT: &str = "ca/ca_crt.pem";
/// The manifest path of the CA private key.
pub const CA_KEY: &str = "ca/ca_key.pem";
/// The manifest path of the CA's CRL.
pub const CA_CRL: &str = "ca/ca_crl.pem";
/// The manifest directory of signed certificates.
pub const SIGNED_DIR: &str = "ca/signed";
/// The synthetic manifest directory standing for the ssl directory.
pub const SSL_ROOT: &str = "ssl";
/// The synthetic manifest directory standing for `<ssldir>/certs`.
pub const SSL_CERTS: &str = "ssl/certs";
/// The manifest path of `<ssldir>/crl.pem`.
pub const SSL_CRL: &str = "ssl/crl.pem";
/// The manifest path of `<ssldir>/certs/ca.pem`.
pub const SSL_CA_CERT: &str = "ssl/certs/ca.pem";
/// Where Puppet 7 and later keep the CA directory.
pub const PUPPETSERVER_CADIR: &str = "/etc/puppetlabs/puppetserver/ca";
/// The file whose presence marks a database-backed CA (PE 2025 and later).
pub const PASSPHRASE_FILE: &str = ".private-key-passphrase";
/// Names starting with this are temporary files of the applier; they are
/// never replicated and never accepted in a manifest.
pub const TEMP_PREFIX: &str = ".pe_failover-tmp-";

/// Largest `crl.pem` or `certs/ca.pem` read from the ssl directory.
const SSL_FILE_LIMIT: u64 = 256 * 1024 * 1024;

/// Where the replicated paths live on one host: its CA directory and its
/// ssl directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaPaths {
    /// The CA directory (`ca/...` entries).
    pub cadir: PathBuf,
    /// The ssl directory (`ssl/crl.pem`, `ssl/certs/ca.pem`).
    pub ssldir: PathBuf,
}

impl CaPaths {
    /// The paths of the host whose ssl directory is `ssldir`, with the
    /// cadir found by [`detect_cadir`] (looking at [`PUPPETSERVER_CADIR`]).
    pub fn detect(ssldir: impl Into<PathBuf>) -> Result<CaPaths> {
        let ssldir = ssldir.into();
        let cadir = detect_cadir(&ssldir, Path::new(PUPPETSERVER_CADIR))?;
        Ok(CaPaths { cadir, ssldir })
    }

    /// The file system path of the manifest path `rel`, or `None` when `rel`
    /// is not a replicated path or is one of the synthetic `ssl` directories
    /// (which stand for directories this module never manages).
    pub fn resolve(&self, rel: &str) -> Option<PathBuf> {
        if rel == CA_ROOT {
            return Some(self.cadir.clone());
        }
        if let Some(rest) = rel.strip_prefix("ca/") {
            return Some(self.cadir.join(rest));
        }
        match rel {
            SSL_CRL => Some(self.ssldir.join("crl.pem")),
            SSL_CA_CERT => Some(self.ssldir.join("certs").join("ca.pem")),
            _ => None,
        }
    }
}

/// Whether `path` may appear in a replicated manifest.
pub fn is_allowed_path(path: &str) -> bool {
    path == CA_ROOT
        || path.starts_with("ca/")
        || matches!(path, SSL_ROOT | SSL_CERTS | SSL_CRL | SSL_CA_CERT)
}

/// The certname of a `ca/signed/<certname>.pem` path.
pub fn signed_certname(path: &str) -> Option<&str> {
    let name = path.strip_prefix("ca/signed/")?;
    if name.contains('/') {
        return None;
    }
    Some(name.strip_suffix(".pem").unwrap_or(name))
}

/// Finds the CA directory: `puppetserver_cadir` (Puppet 7 and later,
/// normally [`PUPPETSERVER_CADIR`]) or `<ssldir>/ca` (before Puppet 7).
///
/// A symbolic link from one to the other (what `puppetserver ca migrate`
/// leaves behind) is followed; the real directory is returned. A directory
/// holding `ca_crt.pem` (or a database-backed CA's passphrase file) wins
/// over an empty one; two distinct directories that both hold a CA are an
/// error, since guessing could replicate a stale CA.
pub fn detect_cadir(ssldir: &Path, puppetserver_cadir: &Path) -> Result<PathBuf> {
    let old = ssldir.join("ca");
    let mut found: Vec<PathBuf> = Vec::new();
    for candidate in [puppetserver_cadir, old.as_path()] {
        let Ok(meta) = fs::metadata(candidate) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let real = fs::canonicalize(candidate).map_err(|e| Error::io("resolve", candidate, e))?;
        if !found.contains(&real) {
            found.push(real);
        }
    }
    let holds_ca = |d: &PathBuf| {
        fs::symlink_metadata(d.join("ca_crt.pem")).is_ok()
            || fs::symlink_metadata(d.join(PASSPHRASE_FILE)).is_ok()
    };
    match found.len() {
        0 => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no Puppet CA directory at {} or {}; run this on a primary server, or pass the cadir explicitly (`puppet config print cadir --section server`)",
                puppetserver_cadir.display(),
                old.display()
            ),
        )),
        1 => Ok(found.remove(0)),
        _ => {
            let with_ca: Vec<&PathBuf> = found.iter().filter(|d| holds_ca(d)).collect();
            match with_ca.len() {
                0 => Ok(found.remove(0)),
                1 => Ok(with_ca[0].clone()),
                _ => Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "two CA directories exist, {} and {}; pass the one Puppet uses explicitly (`puppet config print cadir --section server`)",
                        found[0].display(),
                        found[1].display()
                    ),
                )),
            }
        }
    }
}

/// Refuses a database-backed CA: `.private-key-passphrase` present in the
/// cadir, or `ca_crt.pem` present without `ca_key.pem`.
pub fn check_not_database_backed(cadir: &Path) -> Result<()> {
    let exists = |name: &str| fs::symlink_metadata(cadir.join(name)).is_ok();
    let why = if exists(PASSPHRASE_FILE) {
        format!("it holds {PASSPHRASE_FILE}")
    } else if exists("ca_crt.pem") && !exists("ca_key.pem") {
        "it holds ca_crt.pem but no ca_key.pem".to_string()
    } else {
        return Ok(());
    };
    Err(database_backed(cadir, &why))
}

fn database_backed(cadir: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Refused,
        format!(
            "{} looks like a database-backed CA ({why}): Puppet Enterprise 2025 and later keep the CA in the database, and pe_failover must not replicate it; use PE's own disaster recovery for such a CA (if this is an older CA whose ca_key.pem was lost, restore it from a backup)",
            cadir.display()
        ),
    )
    .with_path(cadir)
}

/// Refuses a manifest without the CA certificate and key: an empty or
/// incomplete source must never replace a replica's CA.
pub fn check_complete(manifest: &Manifest) -> Result<()> {
    let missing: Vec<&str> = [CA_CERT, CA_KEY]
        .into_iter()
        .filter(|p| manifest.get(p).is_none_or(|e| e.kind != EntryKind::File))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Refused,
        format!(
            "the CA is empty or incomplete: {} missing; refusing to replicate it, since replacing a replica's CA with it would destroy the replica's copy",
            missing.join(" and ")
        ),
    ))
}

/// Builds a replicated manifest from untrusted entries, checking every rule
/// a receiver enforces: safe relative paths ([`validate_relative_path`]), no
/// duplicates, no entry below a symlink, only the replicated paths
/// ([`is_allowed_path`]), and [`validate_manifest`].
pub fn manifest_from_entries(entries: Vec<Entry>) -> Result<Manifest> {
    manifest_from_entries_of(Kind::Ca, entries)
}

/// [`manifest_from_entries`] with the rules of `kind`: the CA rules above,
/// or, for [`Kind::Nc`], those of [`crate::ncship::validate_nc_manifest`]
/// (only the dump file, a plain file).
pub fn manifest_from_entries_of(kind: Kind, mut entries: Vec<Entry>) -> Result<Manifest> {
    for e in &entries {
        validate_relative_path(&e.path)?;
    }
    crate::snapshot::sort_by_path_once(&mut entries)?;
    check_no_link_above(entries.iter().map(|e| e.path.as_str()), |p| {
        entries
            .binary_search_by(|x| x.path.as_str().cmp(p))
            .is_ok_and(|i| entries[i].kind == EntryKind::Symlink)
    })?;
    let manifest = Manifest::from_entries_with_valid_paths(entries)?;
    validate_manifest_of(kind, &manifest)?;
    Ok(manifest)
}

/// Refuses a path of `paths` (in path order) below a symbolic link,
/// `is_link` telling which paths are links. Siblings share one walk up
/// their parent's ancestry.
fn check_no_link_above<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    is_link: impl Fn(&str) -> bool,
) -> Result<()> {
    crate::snapshot::check_each_parent(paths, |path, _| {
        let mut rest = path;
        while let Some((dir, _)) = rest.rsplit_once('/') {
            if is_link(dir) {
                return Err(below_symlink(path, dir));
            }
            rest = dir;
        }
        Ok(())
    })
}

fn below_symlink(path: &str, link: &str) -> Error {
    Error::new(
        ErrorKind::UnsafePath,
        format!("unsafe path {path:?}: it is below the symbolic link {link:?}"),
    )
}

/// [`manifest_from_entries_of`] for `merged`: the entries of a manifest of
/// `kind` that passed those checks, with the entries `upserts` (sorted by
/// path, no path twice) put in and the paths `removed` (each one of its
/// entries, none upserted) left out, in path order. Only what the change
/// can break is checked: each upserted entry on its own, the ancestors of
/// each (no symbolic link, the parent a directory entry), no entry left
/// under a removed path or under an upserted one that is no longer a
/// directory, and the order. What a receiver checks of the manifest a
/// delta makes; the applier checks the whole manifest again.
pub(crate) fn manifest_from_merge(
    kind: Kind,
    merged: Vec<Entry>,
    upserts: &[&Entry],
    removed: &[&str],
) -> Result<Manifest> {
    // A large change (a first sync) is checked whole: one pass over the
    // entries costs less than looking up the ancestors of each.
    if (upserts.len() + removed.len()).saturating_mul(MERGE_CHECK_SHARE) > merged.len() {
        return manifest_from_entries_of(kind, merged);
    }
    check_merge(kind, merged, upserts, removed)
}

/// [`manifest_from_merge`] checks the whole manifest when the upserts and
/// removes are more than one in this many of its entries.
const MERGE_CHECK_SHARE: usize = 8;

/// [`manifest_from_merge`] by the change alone, whatever its size.
fn check_merge(
    kind: Kind,
    merged: Vec<Entry>,
    upserts: &[&Entry],
    removed: &[&str],
) -> Result<Manifest> {
    let manifest = Manifest::from_own_entries(merged)?;
    for u in upserts {
        validate_relative_path(&u.path)?;
        u.check_fields()?;
        check_entry_of(kind, u)?;
    }
    check_no_link_above(upserts.iter().map(|u| u.path.as_str()), |p| {
        manifest
            .get(p)
            .is_some_and(|e| e.kind == EntryKind::Symlink)
    })?;
    manifest.check_parent_dirs(upserts.iter().map(|u| u.path.as_str()))?;
    // Entries the merge kept below a path that is no longer a directory.
    let entries = manifest.entries();
    let gone = removed.iter().map(|p| (*p, None));
    let undone = upserts
        .iter()
        .filter(|u| u.kind != EntryKind::Dir)
        .map(|u| (u.path.as_str(), Some(u.kind)));
    let mut below = String::new();
    for (path, now) in gone.chain(undone) {
        below.clear();
        below.push_str(path);
        below.push('/');
        let first = entries.partition_point(|e| e.path < below);
        if let Some(child) = entries.get(first).filter(|e| e.path.starts_with(&below)) {
            return Err(match now {
                Some(EntryKind::Symlink) => below_symlink(&child.path, path),
                _ => crate::snapshot::no_parent_dir(&child.path, path),
            });
        }
    }
    Ok(manifest)
}

/// [`validate_manifest`] for `kind`.
pub fn validate_manifest_of(kind: Kind, manifest: &Manifest) -> Result<()> {
    manifest
        .entries()
        .iter()
        .try_for_each(|e| check_entry_of(kind, e))
}

/// The rules of [`validate_manifest_of`] for one entry.
fn check_entry_of(kind: Kind, e: &Entry) -> Result<()> {
    match kind {
        Kind::Ca => check_ca_entry(e),
        Kind::Nc => crate::ncship::check_nc_entry(e),
    }
}

/// Whether `path` may appear in a replicated manifest of `kind`.
pub fn is_allowed_path_of(kind: Kind, path: &str) -> bool {
    match kind {
        Kind::Ca => is_allowed_path(path),
        Kind::Nc => crate::ncship::is_nc_path(path),
    }
}

/// Checks the replication rules on a manifest: only replicated paths, the
/// right kinds for the fixed paths, no setuid/setgid/sticky bits on files,
/// symlink targets that stay relative (no absolute target, no `..`), and no
/// name reserved for the applier's temporary files.
pub fn validate_manifest(manifest: &Manifest) -> Result<()> {
    manifest.entries().iter().try_for_each(check_ca_entry)
}

/// The rules of [`validate_manifest`] for one entry.
fn check_ca_entry(e: &Entry) -> Result<()> {
    if !is_allowed_path(&e.path) {
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!(
                "unsafe path {:?}: only ca/..., {SSL_CRL} and {SSL_CA_CERT} are replicated",
                e.path
            ),
        ));
    }
    let name = e.path.rsplit('/').next().unwrap_or(&e.path);
    if name.starts_with(TEMP_PREFIX) {
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!(
                "unsafe path {:?}: names starting with {TEMP_PREFIX} are reserved for temporary files",
                e.path
            ),
        ));
    }
    let expected = match e.path.as_str() {
        CA_ROOT | SSL_ROOT | SSL_CERTS => Some(EntryKind::Dir),
        SSL_CRL | SSL_CA_CERT => Some(EntryKind::File),
        _ => None,
    };
    if let Some(kind) = expected {
        if e.kind != kind {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "manifest entry {:?} must be a {}, not a {}",
                    e.path,
                    kind.as_str(),
                    e.kind.as_str()
                ),
            ));
        }
    }
    if e.mode > 0o7777 || (e.kind == EntryKind::File && e.mode & 0o7000 != 0) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "manifest entry {:?} has mode {:o}; replicated files never carry setuid, setgid or sticky bits",
                e.path, e.mode
            ),
        ));
    }
    if e.kind == EntryKind::Symlink {
        let target = e.target.as_deref().unwrap_or("");
        validate_relative_path(target).map_err(|err| {
            Error::new(
                ErrorKind::UnsafePath,
                format!(
                    "unsafe symbolic link {:?} -> {target:?}: only relative targets without '..' are replicated ({})",
                    e.path,
                    err.message()
                ),
            )
        })?;
    }
    Ok(())
}

/// Format number of manifest files written by [`save_manifest`]: 3, the
/// binary form with a BLAKE3 digest (see [`save_manifest`]). Format 2 (the
/// same with a SHA-256 digest) and format 1 (JSON) are still read.
pub const MANIFEST_FILE_FORMAT: u32 = 3;

/// The first line of a manifest file of format 3.
const MANIFEST_MAGIC: &[u8] = b"pe_failover manifest file v3\n";

/// The first line of a manifest file of format 2, as written before the
/// digest became BLAKE3: the same layout, its digest a SHA-256
/// ([`legacy_canonical_digest`]). As long as [`MANIFEST_MAGIC`].
const LEGACY_MANIFEST_MAGIC: &[u8] = b"pe_failover manifest file v2\n";

/// Format number of the JSON manifest files of earlier versions.
const JSON_MANIFEST_FORMAT: u32 = 1;

/// Largest manifest file [`load_manifest`] reads.
const MANIFEST_FILE_LIMIT: u64 = 1024 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFileIn {
    format: u32,
    digest: String,
    entries: Vec<Entry>,
}

/// Writes `manifest` to `path` atomically with permission bits `mode`, in
/// format [`MANIFEST_FILE_FORMAT`]: the line `pe_failover manifest file
/// v3`, the digest (64 lowercase hex digits) and a newline, then the
/// manifest's canonical form ([`Manifest::canonical_bytes`]), the very bytes
/// the digest ([`Manifest::digest`]) is the BLAKE3 of. The file keeps whatever name the caller
/// gives it (`*.manifest.json` by convention, a name from format 1, JSON).
pub fn save_manifest(path: &Path, manifest: &Manifest, mode: u32) -> Result<()> {
    stage_manifest(path, manifest, mode, true)?.install()
}

/// [`save_manifest`] for a manifest whose digest may not be known yet,
/// without hashing it first: the canonical form is written piece by piece
/// as it is made, each piece hashed by a second thread meanwhile, and the
/// digest, then remembered by `manifest`, goes into the header before the
/// file is flushed (unless not `durable`). (At 100k certificates making,
/// writing and hashing the 15 MB take 4-9, 1-5 and about 3 ms.) A large
/// manifest goes around the page cache (see [`fsutil::UncachedWriter`]):
/// the applier writes one per snapshot and keeps it in memory.
pub(crate) fn save_manifest_hashing(
    path: &Path,
    manifest: &Manifest,
    mode: u32,
    durable: bool,
) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    if manifest.known_digest().is_some() {
        return match durable {
            true => save_manifest(path, manifest, mode),
            false => save_manifest_cache(path, manifest, mode),
        };
    }
    let mut digest = None;
    let found = &mut digest;
    let staged = std::thread::scope(|s| {
        let (pieces, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let hashing = s.spawn(move || {
            let mut hasher = ManifestHasher::new();
            for piece in received {
                hasher.update(&piece);
                fsutil::give_back(piece);
            }
            Ok(hasher.finalize().to_hex().to_string())
        });
        // (`pieces` goes with the closure: the hashing thread ends however
        // the file's creation ends.)
        crate::cache::StagedFile::write_with(path, mode, durable, move |f, tmp| {
            // The digest is not known yet: zeros stand for it.
            let head = manifest_file_head(MANIFEST_MAGIC, &"0".repeat(64));
            // (About 150 bytes an entry: only says whether it is large.)
            let mut out = fsutil::UncachedWriter::new(f, tmp, manifest.len() as u64 * 100);
            let written = write_manifest_file(
                manifest,
                &head,
                |bytes| out.write(bytes),
                |piece| {
                    let _ = pieces.send(piece);
                },
            );
            drop(pieces);
            written?;
            out.finish()?;
            let hex = crate::joined(hashing.join(), "hashing a manifest")?;
            f.write_all_at(hex.as_bytes(), MANIFEST_MAGIC.len() as u64)
                .map_err(|e| Error::io("write", tmp, e))?;
            *found = Some(hex);
            Ok(())
        })
    })?;
    staged.install()?;
    if let Some(digest) = digest {
        manifest.remember_digest(digest);
    }
    Ok(())
}

/// [`save_manifest`] without flushing to disk (as
/// [`write_cache_atomically`](crate::cache::write_cache_atomically)), for
/// a manifest kept only to save work, such as the one last shipped to a
/// replica: a lost or empty file is read as none.
pub fn save_manifest_cache(path: &Path, manifest: &Manifest, mode: u32) -> Result<()> {
    stage_manifest(path, manifest, mode, false)?.install()
}

/// The manifest file of `manifest` written beside `path` (flushed to disk
/// when `durable`), taking its place when the returned file is installed:
/// of format 3, or of format 2 when its digest is the SHA-256 read from
/// such a file (or one of format 1), so that it is read back with the same
/// digest. The canonical form goes out a piece at a time from the pool of
/// buffers ([`fsutil::buffer`]), never whole in memory: 15 MB at 100k
/// certificates, which a one-shot sync would otherwise take as new memory
/// for the manifest it ships.
pub(crate) fn stage_manifest(
    path: &Path,
    manifest: &Manifest,
    mode: u32,
    durable: bool,
) -> Result<crate::cache::StagedFile> {
    let magic = match manifest.has_legacy_digest() {
        true => LEGACY_MANIFEST_MAGIC,
        false => MANIFEST_MAGIC,
    };
    let head = manifest_file_head(magic, &manifest.digest());
    crate::cache::StagedFile::write_with(path, mode, durable, |f, tmp| {
        use std::io::Write as _;
        let write = |bytes: &[u8]| f.write_all(bytes).map_err(|e| Error::io("write", tmp, e));
        write_manifest_file(manifest, &head, write, fsutil::give_back)
    })
}

/// Writes `head`, then `manifest`'s canonical form a piece of 1 MiB at a
/// time from the pool of buffers, with `write` (until it fails), and hands
/// each piece on to `done` once written (to give back, or to hash).
fn write_manifest_file(
    manifest: &Manifest,
    head: &[u8],
    mut write: impl FnMut(&[u8]) -> Result<()>,
    mut done: impl FnMut(Vec<u8>),
) -> Result<()> {
    let mut written = write(head);
    manifest.canonical_pieces(1 << 20, |piece| {
        if written.is_ok() {
            written = write(&piece);
        }
        done(piece);
    });
    written
}

/// The header of a manifest file starting with `magic` and recording
/// `digest` (at offset `MANIFEST_MAGIC.len()`, then a newline).
fn manifest_file_head(magic: &[u8], digest: &str) -> Vec<u8> {
    let mut head = Vec::with_capacity(magic.len() + 65);
    head.extend_from_slice(magic);
    head.extend_from_slice(digest.as_bytes());
    head.push(b'\n');
    head
}

/// The digest recorded at the start of a manifest file written by
/// [`save_manifest`] (or by an earlier version, as JSON), without reading or
/// checking the entries (a cheap "is it still this one?"); `None` when the
/// file is missing or not one.
pub fn manifest_file_digest(path: &Path) -> Option<String> {
    let head = fsutil::read_head(path, 128)?;
    let head = head.as_slice();
    let binary = head
        .strip_prefix(MANIFEST_MAGIC)
        .or_else(|| head.strip_prefix(LEGACY_MANIFEST_MAGIC));
    let (rest, end) = match binary {
        Some(rest) => (rest, b'\n'),
        None => {
            let prefix = format!("{{\"format\":{JSON_MANIFEST_FORMAT},\"digest\":\"");
            (head.strip_prefix(prefix.as_bytes())?, b'"')
        }
    };
    let digest = std::str::from_utf8(rest.get(..64)?).ok()?;
    (crate::snapshot::is_sha256_hex(digest) && rest.get(64) == Some(&end))
        .then(|| digest.to_string())
}

/// Reads a manifest file written by [`save_manifest`] (not following a
/// symlink), checking it against the replication rules
/// ([`manifest_from_entries`]) and its recorded digest. `Ok(None)` when the
/// file does not exist; [`ErrorKind::Corrupt`] when it is not valid
/// (truncated, garbled, another digest than recorded, or breaking a rule).
/// Files of the formats of earlier versions (2, and 1, JSON) are read too:
/// their SHA-256 digest is checked and stays the manifest's digest.
pub fn load_manifest(path: &Path) -> Result<Option<Manifest>> {
    load_manifest_of(Kind::Ca, path)
}

/// [`load_manifest`] with the rules of `kind` (see
/// [`manifest_from_entries_of`]).
pub fn load_manifest_of(kind: Kind, path: &Path) -> Result<Option<Manifest>> {
    load_manifest_against(kind, path, None)
}

/// [`load_manifest_of`], decoding only the entries that differ from those
/// of `base` (a manifest read and checked before, such as the latest
/// snapshot's when the file is a transaction's on top of it); the rest are
/// taken from `base` and only what changed is checked again. The result is
/// the same; a file of format 1 is read whole.
pub(crate) fn load_manifest_against(
    kind: Kind,
    path: &Path,
    base: Option<&Manifest>,
) -> Result<Option<Manifest>> {
    let bytes = match fsutil::read_bounded(path, MANIFEST_FILE_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = |why: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!("manifest file {} is not valid: {why}", path.display()),
        )
        .with_path(path)
    };
    if !bytes.starts_with(MANIFEST_MAGIC) && bytes.first() == Some(&b'{') {
        return load_json_manifest(kind, &bytes).map(Some).map_err(corrupt);
    }
    let (recorded, body, legacy) = split_manifest_file(&bytes).map_err(corrupt)?;
    let (digest, parsed) = hashed_while(body, legacy, || match base {
        Some(base) => Manifest::from_canonical_against(
            body,
            (recorded.to_string(), legacy),
            base,
            |merged, upserts, removed| manifest_from_merge(kind, merged, upserts, removed),
        ),
        None => Manifest::from_canonical(body, (recorded.to_string(), legacy), |entries| {
            manifest_from_entries_of(kind, entries)
        }),
    });
    if digest != recorded {
        return Err(corrupt(format!(
            "its entries have digest {digest}, not the recorded {recorded}"
        )));
    }
    match parsed {
        Ok(Ok(manifest)) => Ok(Some(manifest)),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(why) => Err(corrupt(why)),
    }
}

/// The recorded digest and the body (the canonical form) of the bytes of a
/// manifest file in the current format or format 2, and whether it is of
/// format 2 (its digest a SHA-256), or why they are not one.
fn split_manifest_file(bytes: &[u8]) -> std::result::Result<(&str, &[u8], bool), String> {
    let (rest, legacy) = match bytes.strip_prefix(MANIFEST_MAGIC) {
        Some(rest) => (rest, false),
        None => (
            bytes
                .strip_prefix(LEGACY_MANIFEST_MAGIC)
                .ok_or("not a pe_failover manifest file")?,
            true,
        ),
    };
    let (recorded, body) =
        digest_line(rest).ok_or("its header has no valid digest (truncated?)")?;
    Ok((recorded, body, legacy))
}

/// The digest (64 lowercase hex digits) on the line that starts `rest`, and
/// what follows that line; `None` when there is no such line (a header of
/// a manifest file or a manifest delta).
pub(crate) fn digest_line(rest: &[u8]) -> Option<(&str, &[u8])> {
    let digest = rest
        .get(..65)
        .filter(|h| h[64] == b'\n')
        .and_then(|h| std::str::from_utf8(&h[..64]).ok())
        .filter(|d| crate::snapshot::is_sha256_hex(d))?;
    Some((digest, &rest[65..]))
}

/// The digest of `body`, a manifest file's canonical form (its SHA-256 when
/// `legacy`, for a file of format 2), and what `read` made of it meanwhile:
/// a large body is hashed by another thread while this one reads it. The
/// body's digest is the digest of the entries it holds, so nothing read is
/// used unless it is the one expected.
fn hashed_while<T: Send>(body: &[u8], legacy: bool, read: impl FnOnce() -> T) -> (String, T) {
    let hash = || match legacy {
        true => legacy_canonical_digest(body),
        false => canonical_digest(body),
    };
    std::thread::scope(|s| {
        let hashing = (body.len() >= PARALLEL_HASH_MIN)
            .then(|| std::thread::Builder::new().spawn_scoped(s, hash).ok())
            .flatten();
        let read = read();
        let digest = match hashing {
            Some(h) => h.join().unwrap_or_default(),
            None => hash(),
        };
        (digest, read)
    })
}

/// What changed from the manifest in the file at `path` to `current`, when
/// the file (current format) holds the manifest with digest `expected`;
/// `None` when it does not (missing, another one, damaged, or of an earlier
/// format). Only the entries that differ are decoded (see
/// [`diff_canonical`](crate::snapshot::diff_canonical)); the file is
/// otherwise only hashed. For the sender, whose last shipped manifest is
/// usually the replica's base: reading it whole was most of the work of a
/// sync that changed a few files of a large CA.
pub(crate) fn diff_from_manifest_file(
    path: &Path,
    expected: &str,
    current: &Manifest,
) -> Option<crate::diff::Changeset> {
    let bytes = fsutil::read_bounded(path, MANIFEST_FILE_LIMIT).ok()?;
    let (recorded, body, legacy) = split_manifest_file(&bytes).ok()?;
    if recorded != expected {
        return None;
    }
    let (digest, changes) = hashed_while(body, legacy, || {
        crate::snapshot::diff_canonical(body, current)
    });
    (digest == expected).then_some(changes.ok()).flatten()
}

/// The size of a manifest file body from which it is hashed in a thread of
/// its own while it is read (about 6,500 entries).
const PARALLEL_HASH_MIN: usize = 1 << 20;

/// A manifest file of format 1 (JSON, `{"format":1,"digest":...,"entries":[...]}`),
/// as earlier versions wrote it, or why it is not valid.
fn load_json_manifest(kind: Kind, bytes: &[u8]) -> std::result::Result<Manifest, String> {
    let file: ManifestFileIn = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.format != JSON_MANIFEST_FORMAT {
        return Err(format!("unknown format {}", file.format));
    }
    let manifest = manifest_from_entries_of(kind, file.entries).map_err(|e| e.to_string())?;
    let digest = legacy_canonical_digest(&manifest.canonical_bytes());
    if digest != file.digest {
        return Err(format!(
            "its entries have digest {digest}, not the recorded {}",
            file.digest
        ));
    }
    manifest.keep_legacy_digest(digest);
    Ok(manifest)
}

/// The result of scanning a replicated set.
#[derive(Debug)]
pub struct SetScan {
    /// The replicated manifest (`ca/...`, `ssl/...`).
    pub manifest: Manifest,
    /// Where the entries were read from.
    pub paths: CaPaths,
    /// Counters of the cadir scan.
    pub stats: ScanStats,
    /// Contents kept while hashing ([`ReplicatedSet::keep_contents`]).
    pub contents: Contents,
    /// The cadir's stat cache, written while the scan is shipped (see
    /// [`Scanner::save_cache_in_background`]).
    pub cache_save: CacheSave,
    /// For a scan updated from an earlier one (the active's watcher
    /// rescans only what changed), what changed since it.
    pub since: Option<Since>,
    /// The large files rescans read whole (see [`Tail`]).
    pub(crate) tails: Tails,
}

/// The large files rescans read whole, kept from one rescan to the next
/// (see [`Tail`]). Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tails(Arc<Vec<Tail>>);

impl Tails {
    /// The tail whose contents have SHA-256 `sha256` (hex).
    pub(crate) fn with_contents(&self, sha256: &str) -> Option<&Tail> {
        self.0.iter().find(|t| t.held.sha256 == sha256)
    }
}

/// A file of at least [`HELD_MIN`] bytes that a rescan read whole. When
/// the next rescan finds it grown (the CA's `inventory.txt` gains a line
/// per signing) and still starting with these bytes, only the appended
/// bytes are hashed, and a sender to a replica holding these contents sends
/// the appended bytes from memory (see [`grew_from`](Self::grew_from)).
#[derive(Clone, Debug)]
pub(crate) struct Tail {
    /// The set's path (`ca/inventory.txt`).
    pub(crate) path: String,
    /// The contents read.
    pub(crate) held: HeldBytes,
    /// The contents (SHA-256, size) of the tail this one was found to
    /// extend: its bytes start with them.
    pub(crate) grew_from: Option<(String, u64)>,
}

/// Contents held in memory with their SHA-256 and the hash state after
/// their last byte, so that contents grown from them (`inventory.txt`
/// after a signing) are hashed from there: by the active's rescans (see
/// [`Tail`]) and by the passive's applier (see `stage::Held`).
#[derive(Clone)]
pub(crate) struct HeldBytes {
    /// The SHA-256 (hex) of [`bytes`](Self::bytes).
    pub(crate) sha256: String,
    pub(crate) bytes: Arc<Vec<u8>>,
    /// The SHA-256 state after the last byte.
    state: Sha256,
}

impl HeldBytes {
    /// `bytes`, hashed whole.
    pub(crate) fn new(bytes: Vec<u8>) -> HeldBytes {
        HeldBytes::hashed(Sha256::new(), 0, bytes)
    }

    /// These contents followed by what `more` reads, `size` bytes in all
    /// as far as the caller knows: only the bytes read are hashed, and they
    /// are read into these contents' own memory when nothing else holds it
    /// (a fresh copy would cost more to fault in than to read; see
    /// [`fsutil::read_bounded_into`]).
    pub(crate) fn extended(self, mut more: impl io::Read, size: u64) -> io::Result<HeldBytes> {
        let from = self.bytes.len();
        let mut bytes = Arc::try_unwrap(self.bytes).unwrap_or_else(|shared| {
            let mut copy = Vec::with_capacity(size.max(from as u64) as usize);
            copy.extend_from_slice(&shared);
            copy
        });
        bytes.reserve((size as usize).saturating_sub(from));
        more.read_to_end(&mut bytes)?;
        Ok(HeldBytes::hashed(self.state, from, bytes))
    }

    fn hashed(mut state: Sha256, from: usize, bytes: Vec<u8>) -> HeldBytes {
        state.update(&bytes[from..]);
        HeldBytes {
            sha256: hex::encode(state.clone().finalize()),
            bytes: Arc::new(bytes),
            state,
        }
    }

    /// Their size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl std::fmt::Debug for HeldBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldBytes")
            .field("sha256", &self.sha256)
            .field("size", &self.bytes.len())
            .finish()
    }
}

/// Smallest contents held in memory as [`HeldBytes`]: below it, hashing
/// the whole file again costs less than 0.2 ms.
pub(crate) const HELD_MIN: u64 = 256 * 1024;

/// What changed between two scans of a set: a sender whose replica holds
/// the earlier one needs neither its manifest nor a diff.
#[derive(Clone, Debug)]
pub struct Since {
    /// The digest of the earlier scan's manifest.
    pub base: String,
    /// The changes from it to this scan's manifest (as [`diff`](crate::diff::diff)
    /// would find them).
    pub changes: Changeset,
}

impl SetScan {
    /// A scan of `manifest` read from `paths`, without counters, kept
    /// contents or a cache write (a rescan's).
    fn of(manifest: Manifest, paths: CaPaths) -> SetScan {
        SetScan {
            manifest,
            paths,
            stats: ScanStats::default(),
            contents: Contents::default(),
            cache_save: CacheSave::default(),
            since: None,
            tails: Tails::default(),
        }
    }

    /// This scan's manifest, paths and tails again (see [`of`](Self::of)).
    pub(crate) fn again(&self) -> SetScan {
        let mut scan = SetScan::of(self.manifest.clone(), self.paths.clone());
        scan.tails = self.tails.clone();
        scan
    }

    /// This scan's manifest and paths, as a scan that changed nothing since
    /// this one (when its digest is known).
    pub(crate) fn unchanged(self) -> SetScan {
        let base = self.manifest.known_digest().map(str::to_string);
        let mut scan = SetScan::of(self.manifest, self.paths);
        scan.tails = self.tails;
        scan.since = base.map(|base| Since {
            base,
            changes: Changeset::default(),
        });
        scan
    }
}

/// The result of [`ReplicatedSet::rescan_from`].
pub(crate) enum Rescan {
    /// The scan, brought up to date.
    Updated(SetScan),
    /// Only a full scan can tell; the earlier scan is given back, unless it
    /// was consumed when the update failed.
    Full(Option<SetScan>),
}

/// The entries a rescan found at the paths it read (`None`: gone), to be
/// merged into the scan it updates.
struct Updates {
    cadir: PathBuf,
    entries: std::collections::BTreeMap<String, Option<Entry>>,
    /// The tails of the large files read.
    tails: Vec<Tail>,
}

impl Updates {
    /// `prev` with these entries merged in, its own moved rather than
    /// copied, and [`since`](SetScan::since) the changes.
    fn apply(self, prev: SetScan) -> Result<SetScan> {
        let base = prev.manifest.known_digest().map(str::to_string);
        let paths = prev.paths;
        // The tails of the paths read are those read now (or none).
        let mut tails: Vec<Tail> = (prev.tails.0.iter())
            .filter(|t| !self.entries.contains_key(&t.path))
            .cloned()
            .collect();
        tails.extend(self.tails);
        let mut upserts: Vec<Entry> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for (path, new) in self.entries {
            match new {
                Some(new) => upserts.push(new),
                None => gone.push(path),
            }
        }
        let (entries, replaced) = {
            let ups: Vec<&Entry> = upserts.iter().collect();
            let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
            merge_taking(Vec::from(prev.manifest), &ups, &gone)
        };
        // What each updated path was (both in path order): changed, added
        // or removed.
        let mut changes = Changeset::default();
        let mut was = replaced.into_iter().peekable();
        for new in upserts {
            while let Some(e) = was.next_if(|e| e.path < new.path) {
                changes.removed.push(e);
            }
            match was.next_if(|e| e.path == new.path) {
                Some(e) => {
                    let fields = changed_fields(&e, &new);
                    if !fields.is_empty() {
                        changes.changed.push(Change {
                            old: e,
                            new,
                            fields,
                        });
                    }
                }
                None => changes.added.push(new),
            }
        }
        changes.removed.extend(was);
        // The entries kept passed every rule: only what changed is checked.
        let upserts: Vec<&Entry> = (changes.added.iter())
            .chain(changes.changed.iter().map(|c| &c.new))
            .collect();
        let removed: Vec<&str> = changes.removed_paths().collect();
        let manifest = finish_set_manifest(&self.cadir, entries, Some((&upserts, &removed)))?;
        let mut scan = SetScan::of(manifest, paths);
        scan.since = base.map(|base| Since { base, changes });
        scan.tails = Tails(Arc::new(tails));
        Ok(scan)
    }
}

/// The replicated set of the active primary: its CA directory plus the
/// CRL and CA certificate copies in its ssl directory.
///
/// ```no_run
/// use pe_failover_core::replset::ReplicatedSet;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// let scan = ReplicatedSet::new("/etc/puppetlabs/puppet/ssl")
///     .cache_file("/opt/pe_failover/state/ca.scan")
///     .scan()?;
/// println!("{} entries from {}", scan.manifest.len(), scan.paths.cadir.display());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ReplicatedSet {
    ssldir: PathBuf,
    cadir: Option<PathBuf>,
    puppetserver_cadir: PathBuf,
    excludes: Excludes,
    cache_file: Option<PathBuf>,
    cancel: CancelToken,
    threads: Option<usize>,
    racy_window: Option<Duration>,
    keep_contents: u64,
}

impl ReplicatedSet {
    /// The set of the host whose ssl directory is `ssldir`, with the cadir
    /// detected ([`detect_cadir`] with [`PUPPETSERVER_CADIR`]), no extra
    /// exclusions, no stat cache.
    pub fn new(ssldir: impl Into<PathBuf>) -> Self {
        ReplicatedSet {
            ssldir: ssldir.into(),
            cadir: None,
            puppetserver_cadir: PathBuf::from(PUPPETSERVER_CADIR),
            excludes: Excludes::default(),
            cache_file: None,
            cancel: CancelToken::new(),
            threads: None,
            racy_window: None,
            keep_contents: 0,
        }
    }

    /// Uses `cadir` instead of detecting it. A symbolic link at `cadir`
    /// itself is followed; links inside are recorded, never followed.
    pub fn cadir(mut self, cadir: impl Into<PathBuf>) -> Self {
        self.cadir = Some(cadir.into());
        self
    }

    /// Where detection looks for a Puppet 7+ cadir. Default:
    /// [`PUPPETSERVER_CADIR`].
    pub fn puppetserver_cadir(mut self, path: impl Into<PathBuf>) -> Self {
        self.puppetserver_cadir = path.into();
        self
    }

    /// Leaves out cadir entries matched by `excludes` (patterns relative to
    /// the cadir, e.g. `requests`). Default: none. The passive's applier
    /// should be given the same patterns, so it leaves those paths alone.
    pub fn excludes(mut self, excludes: Excludes) -> Self {
        self.excludes = excludes;
        self
    }

    /// Stat cache for the cadir scan (see [`Scanner::cache_file`]). Default:
    /// none.
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// Stops the scan when `token` is tripped.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Hashing threads (see [`Scanner::threads`]). Default: one per core.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// See [`Scanner::racy_window`]. Default: the scanner's.
    pub fn racy_window(mut self, window: Duration) -> Self {
        self.racy_window = Some(window);
        self
    }

    /// See [`Scanner::keep_contents`]: a [`scan`](Self::scan) keeps up to
    /// `budget` bytes of the small files of the cadir it hashes, in
    /// [`SetScan::contents`]. Default: 0 (none).
    pub fn keep_contents(mut self, budget: u64) -> Self {
        self.keep_contents = budget;
        self
    }

    /// The ssl directory.
    pub fn ssldir(&self) -> &Path {
        &self.ssldir
    }

    /// The CA directory that [`scan`](Self::scan) reads: the explicit one
    /// (a root symlink resolved) or the detected one. Refuses a cadir that
    /// contains the ssl directory, since that would ship host private keys.
    pub fn resolve_cadir(&self) -> Result<PathBuf> {
        let cadir = match &self.cadir {
            Some(c) => {
                let meta = fs::metadata(c).map_err(|e| Error::io("open CA directory", c, e))?;
                if !meta.is_dir() {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("the CA directory {} is not a directory", c.display()),
                    )
                    .with_path(c));
                }
                fs::canonicalize(c).map_err(|e| Error::io("resolve", c, e))?
            }
            None => detect_cadir(&self.ssldir, &self.puppetserver_cadir)?,
        };
        if let Ok(ssl) = fs::canonicalize(&self.ssldir) {
            if ssl.starts_with(&cadir) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the CA directory {} contains the ssl directory {}; replicating it would ship host private keys (pass the real cadir)",
                        cadir.display(),
                        ssl.display()
                    ),
                )
                .with_path(&cadir));
            }
        }
        Ok(cadir)
    }

    /// Scans the set into a replicated manifest. Fails (never returns a
    /// partial manifest) when an entry cannot be read, and refuses
    /// ([`ErrorKind::Refused`]) a database-backed or incomplete CA.
    pub fn scan(&self) -> Result<SetScan> {
        let cadir = self.resolve_cadir()?;
        check_not_database_backed(&cadir)?;
        let mut patterns = self.excludes.patterns().to_vec();
        patterns.push(temp_pattern());
        let mut scanner = Scanner::new(&cadir)
            .prefix(format!("{CA_ROOT}/"))
            .excludes(Excludes::new(&patterns)?)
            .cancel_token(self.cancel.clone());
        if let Some(c) = &self.cache_file {
            scanner = scanner.cache_file(c);
        }
        if let Some(n) = self.threads {
            scanner = scanner.threads(n);
        }
        if let Some(w) = self.racy_window {
            scanner = scanner.racy_window(w);
        }
        let mut scan = scanner
            .keep_contents(self.keep_contents)
            .save_cache_in_background(true)
            .scan()?;
        let stats = scan.stats.clone();
        let contents = std::mem::take(&mut scan.contents);
        let cache_save = std::mem::take(&mut scan.cache_save);
        let inner = scan.into_complete()?;

        let root_meta = fs::metadata(&cadir).map_err(|e| Error::io("stat", &cadir, e))?;
        // With room for the watcher's rescans to put new certificates in
        // (see `merge_taking`).
        let mut entries: Vec<Entry> =
            Vec::with_capacity(crate::snapshot::room_to_grow(inner.len() + 5));
        entries.push(entry_from_meta(CA_ROOT, &root_meta, EntryKind::Dir));
        entries.extend(Vec::from(inner));
        entries.push(Entry::synthetic_dir(SSL_ROOT));
        entries.push(Entry::synthetic_dir(SSL_CERTS));
        let paths = CaPaths {
            cadir: cadir.clone(),
            ssldir: self.ssldir.clone(),
        };
        // In path order, as the manifest keeps them.
        for rel in [SSL_CA_CERT, SSL_CRL] {
            if let Some(abs) = paths.resolve(rel) {
                if let Some(e) = file_entry(&abs, rel)? {
                    entries.push(e);
                }
            }
        }
        let manifest = finish_set_manifest(&cadir, entries, None)?;
        Ok(SetScan {
            manifest,
            paths,
            stats,
            contents,
            cache_save,
            since: None,
            tails: Tails::default(),
        })
    }

    /// `prev` (a scan of this set) brought up to date for the changed
    /// absolute paths `changed` (what a [`Watcher`](crate::watch::Watcher)
    /// batch reports), reading only those files and their parent
    /// directories, with the same checks as [`scan`](Self::scan). `None`
    /// when only a full scan can tell: the cadir moved, a directory was
    /// created, removed or replaced, a file kept changing while it was read.
    /// Paths outside the set are ignored. The stat cache is not updated (the
    /// next full scan hashes the files changed meanwhile).
    pub fn rescan_paths(
        &self,
        prev: &SetScan,
        changed: &std::collections::BTreeSet<PathBuf>,
    ) -> Result<Option<SetScan>> {
        let mut tails = prev.tails.0.to_vec();
        match self.rescan_updates(prev, &mut tails, changed)? {
            None => Ok(None),
            // (Its digest is kept: nothing to hash again.)
            Some(updates) if updates.entries.is_empty() => Ok(Some(prev.again().unchanged())),
            Some(updates) => updates.apply(prev.again()).map(Some),
        }
    }

    /// [`rescan_paths`](Self::rescan_paths) taking `prev`, whose entries are
    /// moved into the new scan rather than copied (100k entries take
    /// milliseconds to copy), whose tails are read into again (when nothing
    /// else holds them), and which records in [`since`](SetScan::since)
    /// what changed.
    pub(crate) fn rescan_from(
        &self,
        mut prev: SetScan,
        changed: &std::collections::BTreeSet<PathBuf>,
    ) -> Rescan {
        let mut tails = Arc::unwrap_or_clone(std::mem::take(&mut prev.tails).0);
        let updates = self.rescan_updates(&prev, &mut tails, changed);
        // (Less those read: their bytes went into the new tails.)
        prev.tails = Tails(Arc::new(tails));
        match updates {
            Ok(Some(updates)) if updates.entries.is_empty() => Rescan::Updated(prev.unchanged()),
            Ok(Some(updates)) => match updates.apply(prev) {
                Ok(scan) => Rescan::Updated(scan),
                Err(_) => Rescan::Full(None),
            },
            Ok(None) | Err(_) => Rescan::Full(Some(prev)),
        }
    }

    /// `scan` with a tail (see [`Tail`]) for each of its files of
    /// [`HELD_MIN`] to [`HELD_MAX`] bytes that has none, read now. A full
    /// scan takes the digests of unchanged files from the stat cache, so
    /// the first rescan after it would otherwise read and hash the grown
    /// `inventory.txt` whole, into fresh memory, while a replica waits; the
    /// watcher calls this once a round that scanned the whole CA has
    /// shipped. A file that no longer matches its entry gets none (the
    /// rescan of its change reads it).
    pub(crate) fn with_tails(&self, mut scan: SetScan) -> SetScan {
        let has_tail = |e: &Entry| {
            (scan.tails.0.iter())
                .any(|t| t.path == e.path && e.sha256.as_ref() == Some(&t.held.sha256))
        };
        let missing: Vec<&Entry> = (scan.manifest.entries().iter())
            .filter(|e| e.kind == EntryKind::File && (HELD_MIN..=HELD_MAX).contains(&e.size))
            .filter(|e| !has_tail(e))
            .collect();
        if missing.is_empty() {
            return scan;
        }
        let mut tails = scan.tails.0.to_vec();
        for e in missing {
            let Some(abs) = scan.paths.resolve(&e.path) else {
                continue;
            };
            let Ok(before) = fs::symlink_metadata(&abs) else {
                continue;
            };
            if let Ok(Some((read, Some(tail)))) = hashed_entry(&abs, &e.path, &before, None) {
                if read == *e {
                    tails.retain(|t| t.path != e.path);
                    tails.push(tail);
                }
            }
        }
        scan.tails = Tails(Arc::new(tails));
        scan
    }

    /// The entries at the paths `changed` names (see
    /// [`rescan_paths`](Self::rescan_paths)), or `None` when only a full
    /// scan can tell. `kept` holds the tails of `prev`; those of the files
    /// read are taken out of it.
    fn rescan_updates(
        &self,
        prev: &SetScan,
        kept: &mut Vec<Tail>,
        changed: &std::collections::BTreeSet<PathBuf>,
    ) -> Result<Option<Updates>> {
        let cadir = self.resolve_cadir()?;
        if cadir != prev.paths.cadir {
            return Ok(None);
        }
        let mut patterns = self.excludes.patterns().to_vec();
        patterns.push(temp_pattern());
        let excludes = Excludes::new(&patterns)?;
        let ssl_files: Vec<(PathBuf, &str)> = [SSL_CRL, SSL_CA_CERT]
            .into_iter()
            .filter_map(|rel| prev.paths.resolve(rel).map(|abs| (abs, rel)))
            .collect();
        // New entries by path (None: gone).
        let mut updates: std::collections::BTreeMap<String, Option<Entry>> = Default::default();
        let mut tails: Vec<Tail> = Vec::new();
        for abs in changed {
            self.cancel.check()?;
            if let Some((_, rel)) = ssl_files.iter().find(|(p, _)| p == abs) {
                updates.insert(rel.to_string(), file_entry(abs, rel)?);
                continue;
            }
            // Watched through a link (`<ssldir>/ca` -> the real cadir)?
            let canonical = abs
                .parent()
                .and_then(|d| fs::canonicalize(d).ok())
                .zip(abs.file_name())
                .map(|(d, name)| d.join(name));
            let inner = match (abs.strip_prefix(&cadir), &canonical) {
                (Ok(inner), _) => inner,
                (Err(_), Some(c)) if c.starts_with(&cadir) => {
                    c.strip_prefix(&cadir).unwrap_or(Path::new(""))
                }
                _ => {
                    // Other files of the ssl directory are not replicated;
                    // anything else is unexpected: scan everything.
                    let in_ssl = abs
                        .parent()
                        .is_some_and(|d| d == self.ssldir || d == self.ssldir.join("certs"));
                    if in_ssl {
                        continue;
                    }
                    return Ok(None);
                }
            };
            let Some(inner) = inner.to_str().filter(|s| !s.is_empty()) else {
                // The cadir itself, or a name that is not UTF-8.
                if inner.as_os_str().is_empty() {
                    continue;
                }
                return Ok(None);
            };
            // Below an excluded directory: the scan never enters it.
            let mut up = inner;
            let mut hidden = false;
            while let Some((parent, _)) = up.rsplit_once('/') {
                hidden |= excludes.is_excluded(parent);
                up = parent;
            }
            if hidden {
                continue;
            }
            let rel = format!("{CA_ROOT}/{inner}");
            let was_dir = prev
                .manifest
                .get(&rel)
                .is_some_and(|e| e.kind == EntryKind::Dir);
            let entry = match fs::symlink_metadata(abs) {
                Ok(meta) if meta.is_dir() => return Ok(None),
                _ if was_dir => return Ok(None),
                Ok(_) if excludes.is_excluded(inner) => None,
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = fs::read_link(abs).map_err(|e| Error::io("read link", abs, e))?;
                    let mut e = entry_from_meta(&rel, &meta, EntryKind::Symlink);
                    e.target = Some(target.to_string_lossy().into_owned());
                    Some(e)
                }
                Ok(meta) if meta.is_file() => {
                    let tail =
                        (kept.iter().position(|t| t.path == rel)).map(|i| kept.swap_remove(i));
                    match hashed_entry(abs, &rel, &meta, tail)? {
                        Some((e, tail)) => {
                            tails.retain(|t| t.path != rel);
                            tails.extend(tail);
                            Some(e)
                        }
                        None => return Ok(None),
                    }
                }
                // Sockets, fifos: the full scan reports them.
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("stat", abs, e)),
            };
            // The parents' times changed with their contents.
            let mut rest = rel.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                if !updates.contains_key(parent) {
                    let dir = match parent.strip_prefix("ca/") {
                        Some(inner) => cadir.join(inner),
                        None => cadir.clone(),
                    };
                    let meta = match fs::metadata(&dir) {
                        Ok(m) if m.is_dir() => m,
                        _ => return Ok(None),
                    };
                    updates.insert(
                        parent.to_string(),
                        Some(entry_from_meta(parent, &meta, EntryKind::Dir)),
                    );
                }
                rest = parent;
            }
            updates.insert(rel, entry);
        }
        // Names from inotify events: checked like any path from elsewhere
        // (the rest comes from the previous scan).
        for path in updates.keys() {
            validate_relative_path(path)?;
        }
        Ok(Some(Updates {
            cadir,
            entries: updates,
            tails,
        }))
    }
}

/// The checks every scan of the set ends with: the replication rules (in
/// full, or, for a rescan, `changed`: what it upserted and removed, see
/// [`manifest_from_merge`]), not database-backed, complete. The entries are
/// this host's own records (see [`Manifest::from_own_entries`]).
fn finish_set_manifest(
    cadir: &Path,
    entries: Vec<Entry>,
    changed: Option<(&[&Entry], &[&str])>,
) -> Result<Manifest> {
    let checked = match changed {
        None => Manifest::from_own_entries(entries).and_then(|m| validate_manifest(&m).map(|()| m)),
        Some((upserts, removed)) => manifest_from_merge(Kind::Ca, entries, upserts, removed),
    };
    let manifest = checked.map_err(|e| {
        let hint = "remove or exclude it on the active primary";
        Error::new(e.kind(), format!("{}: {}", cadir.display(), e.message()))
            .with_path(cadir)
            .with_hint(hint)
    })?;
    if manifest.get(&format!("ca/{PASSPHRASE_FILE}")).is_some() {
        return Err(database_backed(
            cadir,
            &format!("it holds {PASSPHRASE_FILE}"),
        ));
    }
    check_complete(&manifest).map_err(|e| {
        Error::new(e.kind(), format!("{}: {}", cadir.display(), e.message())).with_path(cadir)
    })?;
    Ok(manifest)
}

/// The glob matching the applier's temporary files anywhere in a tree.
pub(crate) fn temp_pattern() -> String {
    format!("**/{TEMP_PREFIX}*")
}

fn entry_from_meta(path: &str, meta: &Metadata, kind: EntryKind) -> Entry {
    Entry {
        path: path.to_string(),
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

/// Largest file [`ReplicatedSet::rescan_paths`] reads into memory (and may
/// keep as a [`Tail`]), and largest contents the passive's applier holds:
/// an `inventory.txt` of about 700,000 certificates. A larger changed file
/// makes the round scan the whole set, which streams it.
pub(crate) const HELD_MAX: u64 = 64 * 1024 * 1024;

/// The entry of the regular file `abs` (manifest path `rel`), hashed;
/// `None` when it changed while it was read. `tail`, the file's tail kept
/// from the last rescan, is used up: when the file starts with its bytes,
/// only the appended bytes are hashed, and when nothing else holds them the
/// file is read into their memory (see [`fsutil::read_bounded_into`]).
fn hashed_entry(
    abs: &Path,
    rel: &str,
    before: &Metadata,
    tail: Option<Tail>,
) -> Result<Option<(Entry, Option<Tail>)>> {
    // Large files are left to the scanner, which streams them.
    if before.size() > HELD_MAX {
        return Ok(None);
    }
    // Read into new memory: with room for the file to grow (untouched, it
    // costs nothing) when it is to be kept.
    let fresh = || {
        let room = match before.size() >= HELD_MIN {
            true => before.size() / 4,
            false => 0,
        };
        let mut buf = Vec::with_capacity((before.size() + room) as usize);
        fsutil::read_bounded_into(abs, HELD_MAX, &mut buf).map(|_| buf)
    };
    // The bytes read, and what they grew from (SHA-256, size, hash state).
    let read = match tail.map(|t| t.held) {
        Some(HeldBytes {
            sha256,
            bytes,
            state,
        }) => {
            let size = bytes.len();
            match Arc::try_unwrap(bytes) {
                Ok(mut buf) => fsutil::read_bounded_into(abs, HELD_MAX, &mut buf)
                    .map(|grew| (buf, grew.then_some((sha256, size, state)))),
                Err(bytes) => fresh().map(|read| {
                    let grew = read.starts_with(&bytes);
                    (read, grew.then_some((sha256, size, state)))
                }),
            }
        }
        None => fresh().map(|read| (read, None)),
    };
    let (bytes, grown) = match read {
        Ok(read) => read,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let after = match fs::symlink_metadata(abs) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat", abs, e)),
    };
    if before.ino() != after.ino()
        || mtime_ns(before) != mtime_ns(&after)
        || after.size() != bytes.len() as u64
    {
        return Ok(None);
    }
    // Grown from the tail kept: only the appended bytes are hashed.
    let (held, grew_from) = match grown {
        Some((sha256, size, state)) => (
            HeldBytes::hashed(state, size, bytes),
            Some((sha256, size as u64)),
        ),
        None => (HeldBytes::new(bytes), None),
    };
    let mut e = entry_from_meta(rel, &after, EntryKind::File);
    e.sha256 = Some(held.sha256.clone());
    let tail = (held.size() >= HELD_MIN).then(|| Tail {
        path: rel.to_string(),
        grew_from,
        held,
    });
    Ok(Some((e, tail)))
}

/// The entry of a single regular file outside the cadir, or `None` when it
/// does not exist.
fn file_entry(abs: &Path, rel: &str) -> Result<Option<Entry>> {
    let file = match fsutil::open_nofollow(abs) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::new(
                ErrorKind::UnsafePath,
                format!(
                    "{} is a symbolic link; only a regular file is replicated there (replace the link with a copy)",
                    abs.display()
                ),
            )
            .with_path(abs))
        }
        Err(e) => return Err(Error::io("read", abs, e)),
    };
    drop(file);
    // Read, then check the file did not change meanwhile.
    for _ in 0..3 {
        let before = fs::symlink_metadata(abs).map_err(|e| Error::io("stat", abs, e))?;
        let bytes = fsutil::read_bounded(abs, SSL_FILE_LIMIT)?;
        let after = fs::symlink_metadata(abs).map_err(|e| Error::io("stat", abs, e))?;
        if before.ino() == after.ino()
            && mtime_ns(&before) == mtime_ns(&after)
            && after.size() == bytes.len() as u64
        {
            let mut e = entry_from_meta(rel, &after, EntryKind::File);
            e.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
            return Ok(Some(e));
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "{} kept changing while it was read; retry when writes to it have settled",
            abs.display()
        ),
    )
    .with_path(abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    mod merge {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        const PATHS: &[&str] = &[
            "ca",
            "ca/ca_crt.pem",
            "ca/ca_key.pem",
            "ca/signed",
            "ca/signed/a.pem",
            "ca/signed/a.pem/x",
            "ca/signed/b",
            "ca/signed/b/c.pem",
            "ca/l",
            "ca/l/y.pem",
            "ca/.pe_failover-tmp-1",
            "ssl",
            "ssl/certs",
            "ssl/certs/ca.pem",
            "ssl/crl.pem",
            "etc/passwd",
            "groups.json",
        ];

        /// Any entry at one of PATHS, often one that breaks a rule.
        fn entry() -> impl Strategy<Value = Entry> {
            (
                prop::sample::select(PATHS),
                prop::sample::select(vec![EntryKind::File, EntryKind::Dir, EntryKind::Symlink]),
                prop::sample::select(vec![0o644u32, 0o755, 0o4755]),
                prop::sample::select(vec![Some("a".repeat(64)), Some("x".into()), None]),
                prop::sample::select(vec![Some("t".to_string()), Some("../t".into()), None]),
            )
                .prop_map(|(path, kind, mode, sha, target)| Entry {
                    path: path.to_string(),
                    kind,
                    mode,
                    uid: 0,
                    gid: 0,
                    size: 1,
                    mtime_ns: 0,
                    sha256: sha.filter(|_| kind == EntryKind::File),
                    target: target.filter(|_| kind == EntryKind::Symlink),
                })
        }

        /// A valid base of `kind`: some of a template's entries, each kept
        /// only with its parent directory.
        fn base(kind: Kind, keep: &[bool]) -> BTreeMap<String, Entry> {
            let link = |path: &str| Entry {
                kind: EntryKind::Symlink,
                target: Some("signed".into()),
                sha256: None,
                ..file(path)
            };
            let template = match kind {
                Kind::Nc => vec![file("groups.json")],
                Kind::Ca => vec![
                    dir("ca"),
                    file("ca/ca_crt.pem"),
                    link("ca/l"),
                    dir("ca/signed"),
                    file("ca/signed/a.pem"),
                    dir("ca/signed/b"),
                    file("ca/signed/b/c.pem"),
                    dir("ssl"),
                    dir("ssl/certs"),
                    file("ssl/certs/ca.pem"),
                    file("ssl/crl.pem"),
                ],
            };
            let mut out: BTreeMap<String, Entry> = BTreeMap::new();
            for (e, keep) in template.into_iter().zip(keep.iter().cycle()) {
                let parent_ok = e.path.rsplit_once('/').is_none_or(|(parent, _)| {
                    out.get(parent).is_some_and(|p| p.kind == EntryKind::Dir)
                });
                if *keep && parent_ok {
                    out.insert(e.path.clone(), e);
                }
            }
            out
        }

        #[test]
        fn a_directory_removed_or_replaced_under_its_entries_is_refused() {
            let base = base(Kind::Ca, &[true]);
            let without = |paths: &[&str]| -> Vec<Entry> {
                base.values()
                    .filter(|e| !paths.contains(&e.path.as_str()))
                    .cloned()
                    .collect()
            };
            let err = check_merge(Kind::Ca, without(&["ca/signed/b"]), &[], &["ca/signed/b"])
                .unwrap_err();
            assert!(err.message().contains("no parent directory entry"), "{err}");
            let mut link = base["ca/signed/b"].clone();
            link.kind = EntryKind::Symlink;
            link.target = Some("a.pem".into());
            let mut merged = without(&[]);
            merged.retain(|e| e.path != link.path);
            merged.push(link.clone());
            let err = check_merge(Kind::Ca, merged, &[&link], &[]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsafePath, "{err}");
            assert!(err.message().contains("below the symbolic link"), "{err}");
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// A valid base with any delta: the merge is accepted exactly
            /// when the whole merged manifest passes every rule.
            #[test]
            fn checking_what_a_delta_changed_is_checking_the_whole_manifest(
                keep in prop::collection::vec(any::<bool>(), 1..12),
                upserts in prop::collection::vec(entry(), 0..4),
                removes in prop::collection::vec(prop::sample::select(PATHS), 0..3),
                nc in any::<bool>(),
            ) {
                let kind = if nc { Kind::Nc } else { Kind::Ca };
                let dedup = |v: Vec<Entry>| -> BTreeMap<String, Entry> {
                    v.into_iter().map(|e| (e.path.clone(), e)).collect()
                };
                let base = base(kind, &keep);
                prop_assert!(manifest_from_entries_of(kind, base.values().cloned().collect()).is_ok());
                let upserts = dedup(upserts);
                let removed: Vec<&str> = removes
                    .into_iter()
                    .filter(|p| base.contains_key(*p) && !upserts.contains_key(*p))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut merged = base.clone();
                for p in &removed {
                    merged.remove(*p);
                }
                merged.extend(upserts.clone());
                let merged: Vec<Entry> = merged.into_values().collect();
                let ups: Vec<&Entry> = upserts.values().collect();
                let whole = manifest_from_entries_of(kind, merged.clone());
                let part = check_merge(kind, merged, &ups, &removed);
                // (With several problems, each may name another first.)
                prop_assert_eq!(
                    part.as_ref().ok(),
                    whole.as_ref().ok(),
                    "part: {:?}, whole: {:?}", part.as_ref().err(), whole.as_ref().err()
                );
            }

            /// A manifest file read against a valid base (only the records
            /// that differ from it decoded) is the file read whole: the
            /// same manifest, or refused as corrupt alike (rules broken,
            /// a byte changed anywhere).
            #[test]
            fn reading_a_file_against_a_base_is_reading_it_whole(
                keep in prop::collection::vec(any::<bool>(), 1..12),
                upserts in prop::collection::vec(entry(), 0..4),
                removes in prop::collection::vec(prop::sample::select(PATHS), 0..3),
                nc in any::<bool>(),
                garble in prop::option::of((any::<prop::sample::Index>(), 1..=255u8)),
            ) {
                let kind = if nc { Kind::Nc } else { Kind::Ca };
                let base = base(kind, &keep);
                let base_manifest =
                    manifest_from_entries_of(kind, base.values().cloned().collect()).unwrap();
                let mut merged = base.clone();
                for p in removes {
                    merged.remove(p);
                }
                merged.extend(upserts.into_iter().map(|e| (e.path.clone(), e)));
                // Written as it is, rules broken or not.
                let new = Manifest::from_own_entries(merged.into_values().collect()).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("m.manifest.json");
                save_manifest(&path, &new, 0o600).unwrap();
                if let Some((at, xor)) = garble {
                    let mut bytes = fs::read(&path).unwrap();
                    let body = MANIFEST_MAGIC.len() + 65;
                    let at = body + at.index(bytes.len() - body);
                    bytes[at] ^= xor;
                    fs::write(&path, &bytes).unwrap();
                }
                let whole = load_manifest_of(kind, &path);
                let against = load_manifest_against(kind, &path, Some(&base_manifest));
                match (&whole, &against) {
                    (Ok(w), Ok(a)) => {
                        prop_assert_eq!(w, a);
                        prop_assert_eq!(w.as_ref().map(Manifest::digest), a.as_ref().map(Manifest::digest));
                    }
                    (Err(w), Err(a)) => {
                        prop_assert_eq!(w.kind(), ErrorKind::Corrupt);
                        prop_assert_eq!(a.kind(), ErrorKind::Corrupt);
                    }
                    _ => prop_assert!(false, "whole: {:?}, against the base: {:?}", whole, against),
                }
                if garble.is_some() {
                    prop_assert!(against.is_err(), "a changed byte was not noticed");
                }
            }
        }
    }

    #[test]
    fn held_contents_are_extended_in_their_own_memory_unless_shared() {
        let sha256_hex = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
        let mut first = b"0x0001 first line\n".to_vec();
        first.reserve(64);
        let memory = first.as_ptr();
        let held = HeldBytes::new(first);
        let grown = held.extended(&b"0x0002 second\n"[..], 33).unwrap();
        assert_eq!(*grown.bytes, b"0x0001 first line\n0x0002 second\n");
        assert_eq!(grown.sha256, sha256_hex(&grown.bytes));
        assert_eq!(grown.bytes.as_ptr(), memory, "extended in new memory");
        // Shared: extended in a copy, the shared bytes left as they were.
        let shared = grown.clone();
        let again = grown.extended(&b"0x0003 third\n"[..], 46).unwrap();
        assert_ne!(again.bytes.as_ptr(), shared.bytes.as_ptr());
        assert_eq!(*shared.bytes, b"0x0001 first line\n0x0002 second\n");
        assert_eq!(
            again.sha256,
            sha256_hex(b"0x0001 first line\n0x0002 second\n0x0003 third\n")
        );
        // A read that fails is the caller's error.
        struct Broken;
        impl io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("cable cut"))
            }
        }
        let e = again.extended(Broken, 100).expect_err("an error");
        assert_eq!(e.to_string(), "cable cut");
    }

    #[test]
    fn the_watchers_rescans_read_a_growing_inventory_into_the_memory_they_hold() {
        use std::collections::BTreeSet;
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let ssl = dir.path().join("ssl");
        let cadir = ssl.join("ca");
        fs::create_dir_all(cadir.join("signed")).unwrap();
        for (name, body) in [
            ("ca_crt.pem", "crt\n"),
            ("ca_key.pem", "key\n"),
            ("serial", "0A\n"),
        ] {
            fs::write(cadir.join(name), body).unwrap();
        }
        let inventory = cadir.join("inventory.txt");
        let line =
            |i: usize| format!("{i:#06x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN=n{i}\n");
        let sha256_hex = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
        let lines: String = (0..6000).map(line).collect();
        fs::write(&inventory, &lines).unwrap();
        let append = |i: usize| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&inventory)
                .unwrap();
            f.write_all(line(i).as_bytes()).unwrap();
        };
        let set = ReplicatedSet::new(&ssl).cadir(&cadir);
        let changed: BTreeSet<PathBuf> = [inventory.clone()].into();
        let rescan = |scan: SetScan| match set.rescan_from(scan, &changed) {
            Rescan::Updated(scan) => scan,
            Rescan::Full(_) => panic!("a full scan was asked for"),
        };
        let held = |scan: &SetScan| {
            let tails = scan.tails.0.iter();
            let tail = tails
                .clone()
                .find(|t| t.path == "ca/inventory.txt")
                .expect("its tail")
                .clone();
            assert_eq!(tails.count(), 1);
            assert_eq!(*tail.held.bytes, fs::read(&inventory).unwrap());
            assert_eq!(scan.manifest, set.scan().unwrap().manifest);
            tail
        };
        let read = rescan(set.scan().unwrap());
        let first = held(&read);
        assert_eq!(first.grew_from, None);
        drop(first);
        // Grown: read into the memory of the bytes held (once grown to fit).
        append(6000);
        let grown = rescan(read);
        let tail = held(&grown);
        assert_eq!(
            tail.grew_from,
            Some((sha256_hex(lines.as_bytes()), lines.len() as u64))
        );
        let memory = tail.held.bytes.as_ptr();
        drop(tail);
        append(6001);
        let again = rescan(grown);
        let tail = held(&again);
        assert_eq!(tail.held.bytes.as_ptr(), memory, "read into new memory");
        assert!(tail.grew_from.is_some());
        // Shared (a sender still holds them): read into new memory.
        let shared = tail.clone();
        drop(tail);
        append(6002);
        let apart = rescan(again);
        let tail = held(&apart);
        assert_ne!(tail.held.bytes.as_ptr(), shared.held.bytes.as_ptr());
        assert_eq!(
            tail.grew_from,
            Some((shared.held.sha256.clone(), shared.held.size()))
        );
        drop((tail, shared));
        // Rewritten, not grown: read whole again (in the same memory), and
        // hashed whole.
        let mut rewritten = fs::read(&inventory).unwrap();
        rewritten[0] = b'#';
        rewritten.extend_from_slice(line(6003).as_bytes());
        fs::write(&inventory, &rewritten).unwrap();
        let redone = rescan(apart);
        let tail = held(&redone);
        assert_eq!(tail.grew_from, None);
        assert_eq!(tail.held.sha256, sha256_hex(&rewritten));
        // Cut short: the same.
        drop(tail);
        fs::write(&inventory, &lines[..300_000]).unwrap();
        let cut = rescan(redone);
        let tail = held(&cut);
        assert_eq!(tail.grew_from, None);
        assert_eq!(tail.held.sha256, sha256_hex(&lines.as_bytes()[..300_000]));
        drop((tail, cut));
        // A full scan keeps none (the stat cache gave the digests); the
        // watcher then reads them, so that its first rescan extends them.
        let full = set.scan().unwrap();
        assert!(full.tails.0.is_empty());
        let kept = set.with_tails(full);
        let tail = held(&kept);
        assert_eq!(tail.grew_from, None);
        let sha = tail.held.sha256.clone();
        drop(tail);
        append(6004);
        let grown = rescan(kept);
        assert_eq!(held(&grown).grew_from, Some((sha, 300_000)));
        // Changed since the scan: none either.
        let full = set.scan().unwrap();
        append(6005);
        assert!(set.with_tails(full).tails.0.is_empty());
    }

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 0,
            sha256: Some("a".repeat(64)),
            target: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry::synthetic_dir(path)
    }

    #[test]
    fn resolves_paths_and_certnames() {
        let p = CaPaths {
            cadir: "/c".into(),
            ssldir: "/s".into(),
        };
        assert_eq!(p.resolve("ca"), Some("/c".into()));
        assert_eq!(p.resolve("ca/signed/a.pem"), Some("/c/signed/a.pem".into()));
        assert_eq!(p.resolve(SSL_CRL), Some("/s/crl.pem".into()));
        assert_eq!(p.resolve(SSL_CA_CERT), Some("/s/certs/ca.pem".into()));
        assert_eq!(p.resolve(SSL_CERTS), None);
        assert_eq!(p.resolve("ssl/private_keys/x.pem"), None);
        assert_eq!(signed_certname("ca/signed/a.b.pem"), Some("a.b"));
        assert_eq!(signed_certname("ca/signed/x/y.pem"), None);
    }

    #[test]
    fn manifests_are_checked_against_the_replication_rules() {
        let ok = vec![dir("ca"), file("ca/ca_crt.pem"), dir("ssl"), file(SSL_CRL)];
        manifest_from_entries(ok.clone()).unwrap();

        let mut outside = ok.clone();
        outside.push(dir("ssl/private_keys"));
        outside.push(file("ssl/private_keys/host.pem"));
        assert_eq!(
            manifest_from_entries(outside).unwrap_err().kind(),
            ErrorKind::UnsafePath
        );

        let mut below = ok.clone();
        let mut link = file("ca/link");
        link.kind = EntryKind::Symlink;
        link.sha256 = None;
        link.target = Some("signed".into());
        below.push(link.clone());
        below.push(file("ca/link/x"));
        let err = manifest_from_entries(below).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath);
        assert!(err.to_string().contains("below the symbolic link"), "{err}");

        let mut escaping = ok.clone();
        link.target = Some("../../etc/shadow".into());
        escaping.push(link);
        assert_eq!(
            manifest_from_entries(escaping).unwrap_err().kind(),
            ErrorKind::UnsafePath
        );

        let mut dup = ok.clone();
        dup.push(file("ca/ca_crt.pem"));
        assert!(manifest_from_entries(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));

        let mut setuid = ok.clone();
        setuid[1].mode = 0o4755;
        assert_eq!(
            manifest_from_entries(setuid).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );

        let mut temp = ok;
        temp.push(file(&format!("ca/{TEMP_PREFIX}x")));
        assert_eq!(
            manifest_from_entries(temp).unwrap_err().kind(),
            ErrorKind::UnsafePath
        );
    }

    #[test]
    fn a_manifest_saved_while_hashed_is_read_back_with_its_digest_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        // 3,000 certificates: past the size written around the page cache.
        for n in [3, 3_000] {
            let mut entries = vec![
                dir_entry("ca"),
                file(CA_CERT),
                file(CA_KEY),
                dir_entry("ca/signed"),
            ];
            entries.extend((0..n).map(|i| file(&format!("ca/signed/node{i:05}.example.com.pem"))));
            let fresh = || Manifest::from_own_entries(entries.clone()).unwrap();
            let expected = fresh().digest();
            for durable in [true, false] {
                let path = dir.path().join(format!("{n}-{durable}.manifest"));
                let m = fresh();
                save_manifest_hashing(&path, &m, 0o644, durable).unwrap();
                assert_eq!(m.known_digest(), Some(expected.as_str()));
                assert_eq!(manifest_file_digest(&path), Some(expected.clone()));
                let loaded = load_manifest(&path).unwrap().unwrap();
                assert_eq!(loaded, m);
                assert_eq!(loaded.digest(), expected);
                assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
            }
        }
    }

    #[test]
    fn manifests_larger_than_a_piece_are_written_whole_durable_or_not_and_staged_until_installed() {
        let dir = tempfile::tempdir().unwrap();
        // 12,000 certificates: a canonical form of about 1.8 MB, written
        // as two pieces of the buffer pool's 1 MiB.
        let mut entries = vec![dir_entry("ca"), file(CA_CERT), file(CA_KEY)];
        entries.push(dir_entry("ca/signed"));
        entries.extend((0..12_000).map(|i| file(&format!("ca/signed/node{i:05}.example.com.pem"))));
        let m = manifest_from_entries(entries).unwrap();
        let canonical = m.canonical_bytes();
        assert!(canonical.len() > 1 << 20, "{}", canonical.len());
        let expected = [MANIFEST_MAGIC, m.digest().as_bytes(), b"\n", &canonical].concat();
        let check = |path: &Path, mode: u32| {
            assert!(
                fs::read(path).unwrap() == expected,
                "{} differs",
                path.display()
            );
            assert_eq!(load_manifest(path).unwrap().unwrap(), m);
            assert_eq!(fs::metadata(path).unwrap().mode() & 0o777, mode);
        };
        let durable = dir.path().join("durable.manifest");
        save_manifest(&durable, &m, 0o600).unwrap();
        check(&durable, 0o600);
        let cache = dir.path().join("cache.manifest");
        save_manifest_cache(&cache, &m, 0o640).unwrap();
        check(&cache, 0o640);

        // Staged: the file named keeps what it held until the install.
        let shipped = dir.path().join("shipped.manifest");
        fs::write(&shipped, b"before").unwrap();
        let staged = stage_manifest(&shipped, &m, 0o600, false).unwrap();
        assert_eq!(fs::read(&shipped).unwrap(), b"before");
        staged.install().unwrap();
        check(&shipped, 0o600);
        // Dropped uninstalled: nothing changes, no temporary file stays.
        let other = manifest_from_entries(vec![dir_entry("ca"), file(CA_CERT)]).unwrap();
        drop(stage_manifest(&shipped, &other, 0o600, false).unwrap());
        check(&shipped, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn manifests_read_from_files_have_room_for_the_next_signings() {
        let dir = tempfile::tempdir().unwrap();
        let certs = |n: usize| {
            let mut entries = vec![dir_entry("ca"), file(CA_CERT), file(CA_KEY)];
            entries.push(dir_entry("ca/signed"));
            entries.extend((0..n).map(|i| file(&format!("ca/signed/node{i:05}.example.com.pem"))));
            manifest_from_entries(entries).unwrap()
        };
        let base = certs(3_000);
        let base_file = dir.path().join("base.manifest");
        save_manifest(&base_file, &base, 0o600).unwrap();
        // One more certificate: read against the base, only it is decoded.
        let next = certs(3_001);
        let next_file = dir.path().join("next.manifest");
        save_manifest(&next_file, &next, 0o600).unwrap();
        let read = [
            (load_manifest(&base_file).unwrap().unwrap(), &base),
            (
                load_manifest_against(Kind::Ca, &next_file, Some(&base))
                    .unwrap()
                    .unwrap(),
                &next,
            ),
        ];
        for (loaded, expected) in read {
            assert_eq!(&loaded, expected);
            let entries = Vec::from(loaded);
            assert!(
                entries.capacity() >= entries.len() + entries.len() / 16,
                "{} entries, room for {}",
                entries.len(),
                entries.capacity()
            );
            // Ten signings go into the same memory (a receiver's merge of
            // the next delta into the base it read).
            let signed: Vec<Entry> = (0..10)
                .map(|i| file(&format!("ca/signed/new{i}.example.com.pem")))
                .collect();
            let ups: Vec<&Entry> = signed.iter().collect();
            let at = entries.as_ptr();
            let (merged, replaced) = crate::manifest_delta::merge_taking(entries, &ups, &[]);
            assert!(replaced.is_empty());
            assert_eq!(merged.as_ptr(), at, "the merge moved the entries");
            assert_eq!(merged.len(), expected.len() + 10);
            assert!(merged.windows(2).all(|w| w[0].path < w[1].path));
        }
    }

    #[test]
    fn manifest_files_round_trip_and_reject_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let m = manifest_from_entries(vec![dir_entry("ca"), file(CA_CERT)]).unwrap();
        assert_eq!(load_manifest(&path).unwrap(), None);
        assert_eq!(manifest_file_digest(&path), None);
        save_manifest(&path, &m, 0o600).unwrap();
        let loaded = load_manifest(&path).unwrap().unwrap();
        assert_eq!(loaded, m);
        assert_eq!(loaded.digest(), m.digest());
        assert_eq!(loaded.canonical_bytes(), m.canonical_bytes());
        assert_eq!(manifest_file_digest(&path), Some(m.digest()));
        let good = fs::read(&path).unwrap();

        // A changed field: the entries no longer have the recorded digest.
        let mut tampered = good.clone();
        let at = tampered.len() - 8 - 64;
        assert_eq!(&tampered[at..at + 64], "a".repeat(64).as_bytes());
        tampered[at] = b'b';
        fs::write(&path, &tampered).unwrap();
        let err = load_manifest(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("not the recorded"), "{err}");

        // Truncated anywhere, or garbled in the header: a clear Corrupt.
        for cut in [
            0,
            10,
            MANIFEST_MAGIC.len() + 30,
            good.len() / 2,
            good.len() - 1,
        ] {
            fs::write(&path, &good[..cut]).unwrap();
            let err = load_manifest(&path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "cut at {cut}: {err}");
        }
        let mut garbled = good.clone();
        garbled[MANIFEST_MAGIC.len() + 3] = b'x';
        fs::write(&path, &garbled).unwrap();
        assert_eq!(load_manifest(&path).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(manifest_file_digest(&path), None);

        // Well-formed and with the right digest, but breaking the rules.
        let outside = Manifest::from_entries(vec![dir_entry("etc"), file("etc/shadow")]).unwrap();
        save_manifest(&path, &outside, 0o600).unwrap();
        let err = load_manifest(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("unsafe path"), "{err}");
    }

    #[test]
    fn json_manifest_files_of_earlier_versions_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let m = manifest_from_entries(vec![dir_entry("ca"), file(CA_CERT)]).unwrap();
        // Format 1 recorded the SHA-256 of the canonical form.
        let sha = legacy_canonical_digest(&m.canonical_bytes());
        assert_ne!(sha, m.digest());
        let json = serde_json::json!({"format": 1, "digest": sha, "entries": m.entries()});
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(manifest_file_digest(&path), Some(sha.clone()));
        let loaded = load_manifest(&path).unwrap().unwrap();
        assert_eq!(loaded, m);
        // The digest the snapshots of that version are named by, which it
        // keeps when written again (in format 2).
        assert_eq!(loaded.digest(), sha);
        let again = dir.path().join("again.manifest.json");
        save_manifest(&again, &loaded, 0o600).unwrap();
        assert_eq!(load_manifest(&again).unwrap().unwrap().digest(), sha);
        // The current digest recorded in a file of format 1 is not its digest.
        let json = serde_json::json!({"format": 1, "digest": m.digest(), "entries": m.entries()});
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let err = load_manifest(&path).unwrap_err();
        assert!(err.to_string().contains("not the recorded"), "{err}");
        let json = serde_json::json!({"format": 1, "digest": sha, "entries": m.entries()});
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"mode\":420", "\"mode\":384");
        fs::write(&path, text).unwrap();
        let err = load_manifest(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("not the recorded"), "{err}");
    }

    #[test]
    fn manifest_files_of_format_2_are_read_with_their_sha256_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.manifest.json");
        let m = manifest_from_entries(vec![dir_entry("ca"), file(CA_CERT)]).unwrap();
        let body = m.canonical_bytes();
        let sha = legacy_canonical_digest(&body);
        let v2 = |digest: &str| [LEGACY_MANIFEST_MAGIC, digest.as_bytes(), b"\n", &body].concat();
        fs::write(&path, v2(&sha)).unwrap();
        assert_eq!(manifest_file_digest(&path), Some(sha.clone()));
        let loaded = load_manifest(&path).unwrap().unwrap();
        assert_eq!(loaded, m);
        assert_eq!(
            loaded.digest(),
            sha,
            "snapshots of format 2 keep their names"
        );
        // Read against a base too, and diffed by the sender.
        let base = manifest_from_entries(vec![dir_entry("ca")]).unwrap();
        let against = load_manifest_against(Kind::Ca, &path, Some(&base))
            .unwrap()
            .unwrap();
        assert_eq!((against.digest(), &against), (sha.clone(), &m));
        let changes = diff_from_manifest_file(&path, &sha, &base).unwrap();
        let removed: Vec<&str> = changes.removed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!((removed, changes.added.len()), (vec![CA_CERT], 0));
        // Written again (say as `staged.manifest.json` where no link can be
        // made), it stays of format 2 and keeps its digest.
        let again = dir.path().join("again.manifest.json");
        save_manifest(&again, &loaded, 0o600).unwrap();
        assert!(fs::read(&again).unwrap().starts_with(LEGACY_MANIFEST_MAGIC));
        assert_eq!(load_manifest(&again).unwrap().unwrap().digest(), sha);
        // Format 2 with the BLAKE3 digest, format 3 with the SHA-256: refused.
        fs::write(&path, v2(&m.digest())).unwrap();
        let err = load_manifest(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("not the recorded"), "{err}");
        assert!(diff_from_manifest_file(&path, &m.digest(), &base).is_none());
        let v3 = [MANIFEST_MAGIC, sha.as_bytes(), b"\n", &body].concat();
        fs::write(&path, v3).unwrap();
        assert_eq!(load_manifest(&path).unwrap_err().kind(), ErrorKind::Corrupt);
        // What this version writes: format 3, the BLAKE3 digest.
        save_manifest(&path, &m, 0o600).unwrap();
        assert!(fs::read(&path).unwrap().starts_with(MANIFEST_MAGIC));
        assert_eq!(manifest_file_digest(&path), Some(m.digest()));
        assert_eq!(m.digest(), blake3::hash(&body).to_hex().as_str());
    }

    fn dir_entry(path: &str) -> Entry {
        Entry::synthetic_dir(path)
    }

    #[test]
    fn completeness_needs_certificate_and_key() {
        let m = manifest_from_entries(vec![dir("ca"), file(CA_CERT)]).unwrap();
        let err = check_complete(&m).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("ca/ca_key.pem"), "{err}");
    }
}
