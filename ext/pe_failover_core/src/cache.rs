//! The stat cache: remembers each file's SHA-256 together with the stat
//! fields that change whenever its contents can have changed (size, mtime,
//! ctime, inode, device), so a re-scan only hashes files that changed.
//!
//! The cache is an ordinary file in a small binary format closed by a SHA-256
//! of everything before it. It is replaced atomically (written to a temporary
//! file in the same directory, synced, renamed), so concurrent scanners never
//! read a torn file; a cache that is missing, for another root, truncated or
//! corrupt is ignored and rebuilt, never trusted.

use std::fs::{self, File, Metadata};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::snapshot::{is_sha256_hex, mtime_ns};
use crate::{Error, ErrorKind, Result};

const MAGIC: &[u8] = b"pe_failover stat cache v1\n";

/// What happened to the stat cache during a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// No cache file was configured.
    #[default]
    Disabled,
    /// The cache file did not exist yet.
    Missing,
    /// The cache was read and used.
    Loaded,
    /// The cache was unreadable or corrupt and was ignored (the reason).
    Ignored(String),
    /// The updated cache could not be written (the reason); only speed suffers.
    WriteFailed(String),
}

/// The cached stat fields of one file, and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// SHA-256 of the contents, lowercase hex (empty in a lookup key).
    pub sha256: String,
}

impl CacheEntry {
    /// The stat fields of `meta`, with no digest: a lookup key.
    pub fn key_of(meta: &Metadata) -> CacheEntry {
        CacheEntry {
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            sha256: String::new(),
        }
    }

    /// The same key with a digest attached.
    pub fn with_sha(mut self, sha256: String) -> CacheEntry {
        self.sha256 = sha256;
        self
    }

    /// Whether both describe the same unchanged file (digests not compared).
    pub fn same_file_as(&self, other: &CacheEntry) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.ino == other.ino
            && self.dev == other.dev
    }
}

/// A map from relative path to [`CacheEntry`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatCache {
    entries: FxHashMap<String, CacheEntry>,
}

impl StatCache {
    /// Loads the cache at `path` made for `root`. Never fails: a missing or
    /// bad cache gives an empty one and says why.
    pub fn load(path: &Path, root: &Path) -> (StatCache, CacheStatus) {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (StatCache::default(), CacheStatus::Missing)
            }
            Err(e) => {
                return (
                    StatCache::default(),
                    CacheStatus::Ignored(format!("cannot read {}: {e}", path.display())),
                )
            }
        };
        match StatCache::decode(&bytes, root) {
            Ok(cache) => (cache, CacheStatus::Loaded),
            Err(why) => (
                StatCache::default(),
                CacheStatus::Ignored(format!("{}: {why}", path.display())),
            ),
        }
    }

    /// An empty cache with room for `n` files.
    pub fn with_capacity(n: usize) -> StatCache {
        let mut entries = FxHashMap::default();
        entries.reserve(n);
        StatCache { entries }
    }

    /// The digest cached for `path`, if the cached stat fields equal `key`'s.
    pub fn lookup(&self, path: &str, key: &CacheEntry) -> Option<&str> {
        self.entries
            .get(path)
            .filter(|e| e.same_file_as(key))
            .map(|e| e.sha256.as_str())
    }

    /// Adds or replaces the entry for `path`.
    pub fn insert(&mut self, path: String, entry: CacheEntry) {
        self.entries.insert(path, entry);
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache for `root` to `path` atomically: a temporary file in
    /// the same directory, fsync, rename.
    pub fn save(&self, path: &Path, root: &Path) -> Result<()> {
        let bytes = self.encode(root);
        write_atomically(path, &bytes, 0o600)
    }

    fn encode(&self, root: &Path) -> Vec<u8> {
        let mut paths: Vec<&String> = self.entries.keys().collect();
        paths.sort();
        let mut out = Vec::with_capacity(64 + paths.len() * 120);
        out.extend_from_slice(MAGIC);
        let root = root.to_string_lossy();
        put_bytes(&mut out, root.as_bytes());
        out.extend_from_slice(&(paths.len() as u64).to_le_bytes());
        for path in paths {
            let e = &self.entries[path];
            put_bytes(&mut out, path.as_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.mtime_ns.to_le_bytes());
            out.extend_from_slice(&e.ctime_ns.to_le_bytes());
            out.extend_from_slice(&e.ino.to_le_bytes());
            out.extend_from_slice(&e.dev.to_le_bytes());
            out.extend_from_slice(e.sha256.as_bytes());
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(bytes: &[u8], root: &Path) -> std::result::Result<StatCache, String> {
        if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
            return Err("not a pe_failover stat cache".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum mismatch (truncated or corrupt)".into());
        }
        let mut r = Reader {
            buf: body,
            pos: MAGIC.len(),
        };
        let cached_root = r.bytes()?;
        if cached_root != root.to_string_lossy().as_bytes() {
            return Err("made for another directory".into());
        }
        let count = r.u64()?;
        let mut entries = FxHashMap::default();
        entries.reserve(count.min(10_000_000) as usize);
        for _ in 0..count {
            let path = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "bad path")?;
            let size = r.u64()?;
            let mtime_ns = r.u64()? as i64;
            let ctime_ns = r.u64()? as i64;
            let ino = r.u64()?;
            let dev = r.u64()?;
            let sha = std::str::from_utf8(r.take(64)?).map_err(|_| "bad digest")?;
            if !is_sha256_hex(sha) {
                return Err("bad digest".into());
            }
            entries.insert(
                path,
                CacheEntry {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino,
                    dev,
                    sha256: sha.to_string(),
                },
            );
        }
        if r.pos != body.len() {
            return Err("trailing data".into());
        }
        Ok(StatCache { entries })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "truncated")?))
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| "bad length")?;
        self.take(n)
    }
}

/// Replaces the file at `path` with `bytes` atomically: writes a temporary
/// file in the same directory with `mode`, syncs it, renames it over `path`
/// and syncs the directory. Readers see the old or the new file, never a
/// mixture; a crash leaves at most a stray temporary file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("cannot write {}: no file name", path.display()),
        )
    })?;
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{nonce}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatCache {
        let mut c = StatCache::default();
        c.insert(
            "signed/a.pem".into(),
            CacheEntry {
                size: 10,
                mtime_ns: 1,
                ctime_ns: 2,
                ino: 3,
                dev: 4,
                sha256: "ab".repeat(32),
            },
        );
        c
    }

    #[test]
    fn round_trips_and_rejects_other_roots() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        sample().save(&file, Path::new("/r")).unwrap();
        let (loaded, status) = StatCache::load(&file, Path::new("/r"));
        assert_eq!(status, CacheStatus::Loaded);
        assert_eq!(loaded, sample());
        let (other, status) = StatCache::load(&file, Path::new("/other"));
        assert!(other.is_empty());
        assert!(matches!(status, CacheStatus::Ignored(ref w) if w.contains("another directory")));
    }

    #[test]
    fn corrupt_or_truncated_caches_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        sample().save(&file, Path::new("/r")).unwrap();
        let good = fs::read(&file).unwrap();
        for cut in [0, 5, good.len() / 2, good.len() - 1] {
            fs::write(&file, &good[..cut]).unwrap();
            let (c, status) = StatCache::load(&file, Path::new("/r"));
            assert!(c.is_empty());
            assert!(matches!(status, CacheStatus::Ignored(_)), "{status:?}");
        }
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        fs::write(&file, &flipped).unwrap();
        let (c, status) = StatCache::load(&file, Path::new("/r"));
        assert!(c.is_empty());
        assert!(matches!(status, CacheStatus::Ignored(ref w) if w.contains("checksum")));
    }

    #[test]
    fn atomic_write_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/out");
        write_atomically(&file, b"one", 0o640).unwrap();
        write_atomically(&file, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
