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
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::snapshot::{is_sha256_hex, mtime_ns};
use crate::{Error, ErrorKind, Result};

const MAGIC: &[u8] = b"pe_failover stat cache v1\n";

/// A stat cache being written by a thread of its own (see
/// [`Scanner::save_cache_in_background`](crate::snapshot::Scanner::save_cache_in_background)),
/// or nothing.
///
/// [`wait`](Self::wait) gives the write's outcome. Dropping it waits too: a
/// write is never cut short, and a scan that follows reads the new cache.
#[derive(Debug, Default)]
pub struct CacheSave {
    writer: Option<std::thread::JoinHandle<Result<()>>>,
}

impl CacheSave {
    /// Writes `cache` for `root` to `path` on a new thread. Fails only
    /// when no thread can be started (the cache is then not updated).
    pub(crate) fn start(cache: StatCache, path: PathBuf, root: PathBuf) -> Result<CacheSave> {
        let writer = std::thread::Builder::new()
            .name("pe_failover-cache".into())
            .spawn(move || cache.save(&path, &root))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot start a thread to write the stat cache: {e}"),
                )
            })?;
        Ok(CacheSave {
            writer: Some(writer),
        })
    }

    /// [`wait`](Self::wait), its failure told as a warning for the sync's
    /// log or report (the cache only saves time: a sync never fails for it).
    pub fn wait_for_warning(&mut self) -> Option<String> {
        self.wait().err().map(|e| {
            format!(
                "the stat cache was not updated: {e}; it only saves time (files changed since \
                 it was last written are read again by every scan), so fix this when convenient"
            )
        })
    }

    /// Waits for the write to end and returns its outcome (`Ok` when there
    /// was none, or it was already waited for).
    pub fn wait(&mut self) -> Result<()> {
        match self.writer.take() {
            None => Ok(()),
            Some(writer) => crate::joined(writer.join(), "writing the stat cache"),
        }
    }
}

impl Drop for CacheSave {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

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

    /// Whether both describe the same unchanged file (digests not compared).
    pub fn same_file_as(&self, other: &CacheEntry) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.ino == other.ino
            && self.dev == other.dev
    }
}

/// Bytes of the stat fields of one record: size, mtime, ctime, inode,
/// device, each a little-endian 64-bit integer.
const FIELDS: usize = 40;
/// Bytes of the hex digest of one record.
const SHA_HEX: usize = 64;

/// Where one record lives in [`StatCache::buf`]: the path bytes at
/// `start..start + path_len`, followed by [`FIELDS`] bytes of stat fields and
/// [`SHA_HEX`] bytes of digest.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: usize,
    path_len: usize,
}

/// A map from relative path to [`CacheEntry`].
///
/// A loaded cache is not unpacked into one allocation per file: it keeps the
/// file's bytes and a path-sorted index of the records in them, so loading
/// 100,000 entries costs one read, one checksum and one pass over the index.
#[derive(Clone, Default)]
pub struct StatCache {
    /// Records (see [`Slot`]), from the cache file and from [`insert`](Self::insert).
    buf: Vec<u8>,
    /// One slot per file, sorted by path bytes, no path twice.
    slots: Vec<Slot>,
}

impl std::fmt::Debug for StatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatCache")
            .field("entries", &self.slots.len())
            .finish()
    }
}

impl PartialEq for StatCache {
    fn eq(&self, other: &Self) -> bool {
        self.slots.len() == other.slots.len()
            && self
                .slots
                .iter()
                .zip(&other.slots)
                .all(|(a, b)| self.record(*a) == other.record(*b))
    }
}

impl Eq for StatCache {}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
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
        match StatCache::decode(bytes, root) {
            Ok(cache) => (cache, CacheStatus::Loaded),
            Err(why) => (
                StatCache::default(),
                CacheStatus::Ignored(format!("{}: {why}", path.display())),
            ),
        }
    }

    /// An empty cache with room for `n` files.
    pub fn with_capacity(n: usize) -> StatCache {
        StatCache {
            buf: Vec::with_capacity(n.saturating_mul(48 + FIELDS + SHA_HEX)),
            slots: Vec::with_capacity(n),
        }
    }

    fn path_of(&self, slot: Slot) -> &[u8] {
        &self.buf[slot.start..slot.start + slot.path_len]
    }

    /// The whole record of `slot`: path, stat fields, digest.
    fn record(&self, slot: Slot) -> &[u8] {
        &self.buf[slot.start..slot.start + slot.path_len + FIELDS + SHA_HEX]
    }

    fn find(&self, path: &[u8]) -> std::result::Result<usize, usize> {
        self.slots.binary_search_by(|s| self.path_of(*s).cmp(path))
    }

    /// The digest cached for `path`, if the cached stat fields equal `key`'s.
    pub fn lookup(&self, path: &str, key: &CacheEntry) -> Option<&str> {
        self.lookup_slot(self.find(path.as_bytes()).ok()?, key)
    }

    /// The record index of each of `paths`, which must come in ascending
    /// byte order (as a scan lists them): one merge pass over the sorted
    /// records instead of a search per path. A path out of order is
    /// reported as not cached (its file is hashed again).
    pub(crate) fn slots_of<'a>(&self, paths: impl Iterator<Item = &'a [u8]>) -> Vec<Option<usize>> {
        let mut next = 0;
        paths
            .map(|path| {
                while next < self.slots.len() && self.path_of(self.slots[next]) < path {
                    next += 1;
                }
                (next < self.slots.len() && self.path_of(self.slots[next]) == path).then_some(next)
            })
            .collect()
    }

    /// [`lookup`](Self::lookup) of the record at index `i` (from
    /// [`slots_of`](Self::slots_of)).
    pub(crate) fn lookup_slot(&self, i: usize, key: &CacheEntry) -> Option<&str> {
        let slot = *self.slots.get(i)?;
        let fields = &self.buf[slot.start + slot.path_len..][..FIELDS + SHA_HEX];
        let cached = CacheEntry {
            size: le_u64(&fields[0..]),
            mtime_ns: le_u64(&fields[8..]) as i64,
            ctime_ns: le_u64(&fields[16..]) as i64,
            ino: le_u64(&fields[24..]),
            dev: le_u64(&fields[32..]),
            sha256: String::new(),
        };
        if !cached.same_file_as(key) {
            return None;
        }
        // A record with a malformed digest is never trusted: the file is
        // hashed again.
        std::str::from_utf8(&fields[FIELDS..])
            .ok()
            .filter(|sha| is_sha256_hex(sha))
    }

    /// Adds or replaces the entry for `path`. Entries added in path order
    /// (as a scan produces them) cost O(1) each. An entry whose digest is not
    /// 64 lowercase hex digits is not cached (it could never be trusted).
    pub fn insert(&mut self, path: &str, entry: &CacheEntry) {
        self.insert_parts(path, entry, &entry.sha256);
    }

    /// [`insert`](Self::insert) of `path` with the stat fields of `key` and
    /// the digest `sha256`, copied into the cache's buffer (a scan records
    /// 100,000 files without allocating for each).
    pub(crate) fn insert_parts(&mut self, path: &str, key: &CacheEntry, sha256: &str) {
        if !is_sha256_hex(sha256) {
            return;
        }
        let at = match self.slots.last() {
            Some(last) if self.path_of(*last) < path.as_bytes() => Err(self.slots.len()),
            None => Err(0),
            Some(_) => self.find(path.as_bytes()),
        };
        let slot = Slot {
            start: self.buf.len(),
            path_len: path.len(),
        };
        self.buf.extend_from_slice(path.as_bytes());
        self.buf.extend_from_slice(&key.size.to_le_bytes());
        self.buf.extend_from_slice(&key.mtime_ns.to_le_bytes());
        self.buf.extend_from_slice(&key.ctime_ns.to_le_bytes());
        self.buf.extend_from_slice(&key.ino.to_le_bytes());
        self.buf.extend_from_slice(&key.dev.to_le_bytes());
        self.buf.extend_from_slice(sha256.as_bytes());
        match at {
            // The old record stays in `buf`, unreferenced.
            Ok(i) => self.slots[i] = slot,
            Err(i) => self.slots.insert(i, slot),
        }
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Writes the cache for `root` to `path` atomically: a temporary file in
    /// the same directory, fsync, rename.
    pub fn save(&self, path: &Path, root: &Path) -> Result<()> {
        let bytes = self.encode(root);
        write_cache_atomically(path, &bytes, 0o600)
    }

    fn encode(&self, root: &Path) -> Vec<u8> {
        let root = root.to_string_lossy();
        let records: usize = self
            .slots
            .iter()
            .map(|s| 8 + s.path_len + FIELDS + SHA_HEX)
            .sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + root.len() + 8 + records + 32);
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, root.as_bytes());
        out.extend_from_slice(&(self.slots.len() as u64).to_le_bytes());
        for slot in &self.slots {
            out.extend_from_slice(&(slot.path_len as u64).to_le_bytes());
            out.extend_from_slice(self.record(*slot));
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(mut bytes: Vec<u8>, root: &Path) -> std::result::Result<StatCache, String> {
        if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
            return Err("not a pe_failover stat cache".into());
        }
        let body_len = bytes.len() - 32;
        let (body, sum) = bytes.split_at(body_len);
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
        // Every record takes at least 8 + FIELDS + SHA_HEX bytes.
        let room = (body.len() - r.pos) / (8 + FIELDS + SHA_HEX);
        if count > room as u64 {
            return Err("truncated".into());
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(count as usize);
        let mut previous: &[u8] = &[];
        for _ in 0..count {
            let path = r.bytes()?;
            if !slots.is_empty() && path <= previous {
                return Err("paths out of order".into());
            }
            slots.push(Slot {
                start: r.pos - path.len(),
                path_len: path.len(),
            });
            r.take(FIELDS + SHA_HEX)?;
            previous = path;
        }
        if r.pos != body.len() {
            return Err("trailing data".into());
        }
        bytes.truncate(body_len);
        Ok(StatCache { buf: bytes, slots })
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
        Ok(le_u64(b))
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
    replace_file(path, bytes, mode, true)
}

/// [`write_atomically`] without the syncs, for caches that are checked when
/// read (the stat cache, the manifest last shipped to a replica): readers
/// still see the old or the new file, never a mixture, but after a crash
/// the file may be the old one or, on some file systems, empty.
pub fn write_cache_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    replace_file(path, bytes, mode, false)
}

fn replace_file(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<()> {
    StagedFile::write(path, bytes, mode, durable)?.install()
}

/// The new contents of a file, written to a temporary file beside it and
/// not yet renamed over it: [`install`](Self::install) does that; dropping
/// it removes the temporary file. Lets a caller write while it waits for
/// something else, and make the file visible only when that succeeded.
#[derive(Debug)]
pub struct StagedFile {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    durable: bool,
    installed: bool,
}

impl StagedFile {
    /// Writes `bytes` with `mode` to a temporary file in `path`'s directory
    /// (synced when `durable`).
    pub fn write(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<StagedFile> {
        Self::write_with(path, mode, durable, |f, tmp| {
            f.write_all(bytes).map_err(|e| Error::io("write", tmp, e))
        })
    }

    /// [`write`](Self::write) with the contents written by `fill`, given
    /// the new file (empty, open for writing) and its temporary name.
    pub(crate) fn write_with(
        path: &Path,
        mode: u32,
        durable: bool,
        fill: impl FnOnce(&mut File, &Path) -> Result<()>,
    ) -> Result<StagedFile> {
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
        let staged = StagedFile {
            tmp: hidden_sibling(dir, name, "tmp"),
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            durable,
            installed: false,
        };
        let tmp = &staged.tmp;
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
            .map_err(|e| Error::io("create", tmp, e))?;
        fill(&mut f, tmp)?;
        if durable {
            f.sync_all().map_err(|e| Error::io("sync", tmp, e))?;
        }
        Ok(staged)
    }

    /// Puts the new contents in the file's place (and syncs its directory
    /// when durable). A large file replaced is freed on a thread of its own
    /// (see [`ASIDE_MIN`]). When not durable, the new file is exchanged with
    /// the old one rather than renamed over it
    /// (`fsutil::put_in_place`), because ext4 starts
    /// writing out a file renamed over another (`auto_da_alloc`): 15 MB of
    /// writes queued at once, which the next `fsync` on that disk waits
    /// behind.
    pub fn install(mut self) -> Result<()> {
        if !self.durable {
            let old_here = crate::fsutil::put_in_place(&self.tmp, &self.path)?;
            self.installed = true;
            // The old contents are at the temporary name now.
            if old_here {
                let large = fs::symlink_metadata(&self.tmp).is_ok_and(|m| m.len() >= ASIDE_MIN);
                match large {
                    true => crate::drop_in_background(Aside {
                        file: self.tmp.clone(),
                        of: self.path.clone(),
                    }),
                    false => {
                        let _ = fs::remove_file(&self.tmp);
                    }
                }
            }
            return Ok(());
        }
        let aside = self.link_aside();
        let renamed = fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io("rename into place", &self.path, e));
        if let Some(file) = aside {
            crate::drop_in_background(Aside {
                file,
                of: self.path.clone(),
            });
        }
        renamed?;
        self.installed = true;
        if self.durable {
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl StagedFile {
    /// When the file to be replaced is large, a second name for it beside
    /// it (`.<name>.old.<pid>.<nonce>`): the rename then frees nothing, and
    /// the old contents go when that name is removed.
    fn link_aside(&self) -> Option<PathBuf> {
        let meta = fs::symlink_metadata(&self.path).ok()?;
        if !meta.is_file() || meta.len() < ASIDE_MIN {
            return None;
        }
        let aside = hidden_sibling(&self.dir, self.path.file_name()?, "old");
        fs::hard_link(&self.path, &aside).ok()?;
        Some(aside)
    }
}

/// `<dir>/.<name>.<tag>.<pid>.<unique>`: a hidden name of its own for a
/// file that stands in for `name` for a while.
fn hidden_sibling(dir: &Path, name: &std::ffi::OsStr, tag: &str) -> PathBuf {
    dir.join(format!(
        ".{}.{tag}.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        crate::fsutil::unique_hex()
    ))
}

/// Replaced files at least this large are freed in the background: freeing
/// a file's blocks takes the rename that drops its last name about 13 ms
/// for 15 MB (a 100k-certificate manifest) on a file system mounted with
/// `discard`, on the way of whoever waits for the rename.
pub const ASIDE_MIN: u64 = 1024 * 1024;

/// The name a replaced file has been left at: a second name given to it
/// (see [`StagedFile::link_aside`]), or the temporary name it was exchanged
/// to. Dropped (on a thread of its own when it frees large contents), it is
/// removed with any other `.<name>.old.*` left beside the file it replaced
/// by a process that ended before it could remove its own.
struct Aside {
    /// The old contents' name.
    file: PathBuf,
    /// The file they were replaced at.
    of: PathBuf,
}

impl Drop for Aside {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        let (Some(dir), Some(name)) = (self.of.parent(), self.of.file_name()) else {
            return;
        };
        // `.<name>.old.` then `<pid>.<unique>` (see `hidden_sibling`).
        let prefix = format!(".{}.old.", name.to_string_lossy());
        let is_aside = |n: &str| {
            n.strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('.'))
                .is_some_and(|(pid, unique)| {
                    !pid.is_empty()
                        && pid.bytes().all(|b| b.is_ascii_digit())
                        && unique.len() == 16
                        && unique.bytes().all(|b| b.is_ascii_hexdigit())
                })
        };
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if is_aside(&e.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_file_replaced_is_freed_aside_and_leftovers_go_too() {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.manifest.json");
        let big = vec![b'a'; ASIDE_MIN as usize];
        // What a process that ended before its thread ran left behind.
        let leftover = dir.path().join(".m.manifest.json.old.1.00000000000000ff");
        fs::write(&leftover, b"old").unwrap();
        // Another file's temporary file whose name starts alike stays.
        let other = dir
            .path()
            .join(".m.manifest.json.old.json.tmp.1.00000000000000ff");
        fs::write(&other, b"other").unwrap();
        let leftovers = || {
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".old."))
                .filter(|e| e.path() != other)
                .count()
        };
        for (round, durable) in [(0u8, false), (1, true), (2, false)] {
            fs::write(&path, &big).unwrap();
            let old = fs::metadata(&path).unwrap().ino();
            // A reader holding the old file keeps reading the old contents.
            let mut reader = File::open(&path).unwrap();
            let new = vec![b'b' + round; big.len() + 1];
            StagedFile::write(&path, &new, 0o600, durable)
                .unwrap()
                .install()
                .unwrap();
            assert_eq!(fs::read(&path).unwrap(), new);
            assert_ne!(fs::metadata(&path).unwrap().ino(), old);
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let mut held = Vec::new();
            reader.read_to_end(&mut held).unwrap();
            assert_eq!(held, big);
            let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while leftovers() > 0 && std::time::Instant::now() < end {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(leftovers(), 0, "round {round}");
        }
        // A small file is replaced in place, nothing set aside.
        fs::write(&path, b"small").unwrap();
        write_cache_atomically(&path, b"tiny", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"tiny");
        assert_eq!(leftovers(), 0);
        assert!(other.exists(), "another file's temporary file was removed");
    }

    fn sample() -> StatCache {
        let mut c = StatCache::default();
        c.insert(
            "signed/a.pem",
            &CacheEntry {
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
    fn a_staged_file_replaces_the_old_one_only_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shipped");
        fs::write(&path, "old").unwrap();
        let names = || {
            let mut v: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };

        // Dropped (the receiver never acknowledged): the old file stays and
        // the temporary file goes.
        let staged = StagedFile::write(&path, b"new", 0o600, false).unwrap();
        assert_eq!(names().len(), 2);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        drop(staged);
        assert_eq!(names(), ["shipped"]);
        assert_eq!(fs::read(&path).unwrap(), b"old");

        let staged = StagedFile::write(&path, b"new", 0o600, true).unwrap();
        staged.install().unwrap();
        assert_eq!(names(), ["shipped"]);
        assert_eq!(fs::read(&path).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
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

    fn entry(n: u64, sha: char) -> CacheEntry {
        CacheEntry {
            size: n,
            mtime_ns: n as i64 + 1,
            ctime_ns: n as i64 + 2,
            ino: n + 3,
            dev: n + 4,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn inserts_in_any_order_replace_and_look_up() {
        let mut c = StatCache::with_capacity(2);
        c.insert("b", &entry(2, 'b'));
        c.insert("a", &entry(1, 'a'));
        c.insert("c", &entry(3, 'c'));
        c.insert("b", &entry(20, 'd'));
        c.insert("bad", &entry(9, 'x'));
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup("a", &entry(1, '0')), Some("a".repeat(64).as_str()));
        assert_eq!(c.lookup("b", &entry(2, '0')), None);
        assert_eq!(
            c.lookup("b", &entry(20, '0')),
            Some("d".repeat(64).as_str())
        );
        assert_eq!(c.lookup("bad", &entry(9, '0')), None);
        let mut moved = entry(3, '0');
        moved.ino += 1;
        assert_eq!(c.lookup("c", &moved), None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        c.save(&file, Path::new("/r")).unwrap();
        let (loaded, status) = StatCache::load(&file, Path::new("/r"));
        assert_eq!(status, CacheStatus::Loaded);
        assert_eq!(loaded, c);
        assert_eq!(
            loaded.lookup("b", &entry(20, '0')),
            Some("d".repeat(64).as_str())
        );
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
