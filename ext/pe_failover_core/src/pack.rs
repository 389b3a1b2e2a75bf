//! Packs: the contents of a large transaction in one file.
//!
//! A full sync carries one content per certificate. As separate files, each
//! of 100,000 contents is a directory entry the receiver creates, an inode
//! written back to disk, and two more names the applier moves it through on
//! its way into the content store. A pack holds them all in one file: the
//! receiver appends every content of a transaction that carries at least
//! [`PACK_MIN`] of them to `objects.pack`, and lists each one's SHA-256,
//! offset and size in `objects.idx`. The applier moves the pack whole into
//! the content store (`snapshots/objects/packs/<name>.pack`), checks every
//! content it needs against its SHA-256, and writes its own index of the
//! checked ones beside it (`<name>.idx`, named last: a pack without an index
//! is a leftover the sweep removes). Readers look for a content loose
//! (`objects/<sh>/<sha256>`) first, then in the packs.
//!
//! Index format, integers big-endian: the magic `PEFIDX1\n`; the count (u64);
//! per content, sorted by SHA-256 with no repeat, its SHA-256 (32 bytes),
//! offset (u64) and size (u64); then the SHA-256 of everything before it.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// Contents a CA transaction must carry for the receiver to pack them.
pub(crate) const PACK_MIN: usize = 256;

/// Bytes read from a pack at a time.
const CHUNK: u64 = 64 * 1024;

/// Bytes a receiver gathers before it writes them to its pack.
const PACK_BUFFER: usize = 1 << 20;

/// The directory of the content store holding packs.
pub(crate) const PACKS_DIR: &str = "packs";

const MAGIC: &[u8; 8] = b"PEFIDX1\n";
const HEADER: usize = 16;
const RECORD: usize = 48;
const CHECKSUM: usize = 32;
/// Largest index read (4 million contents).
const INDEX_LIMIT: u64 = (HEADER + RECORD * (1 << 22) + CHECKSUM) as u64;

/// One content of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackEntry {
    /// Its SHA-256.
    pub(crate) sha: [u8; 32],
    /// Where it starts in the pack.
    pub(crate) offset: u64,
    /// Its length.
    pub(crate) size: u64,
}

/// The index of `entries` (sorted and freed of repeats here).
pub(crate) fn encode_index(mut entries: Vec<PackEntry>) -> Vec<u8> {
    entries.sort_unstable_by_key(|a| a.sha);
    entries.dedup_by(|a, b| a.sha == b.sha);
    let mut out = Vec::with_capacity(HEADER + RECORD * entries.len() + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for e in &entries {
        out.extend_from_slice(&e.sha);
        out.extend_from_slice(&e.offset.to_be_bytes());
        out.extend_from_slice(&e.size.to_be_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Parses the index at `path` of a pack of `pack_len` bytes: every
/// content must lie inside the pack.
pub(crate) fn decode_index(bytes: &[u8], pack_len: u64, path: &Path) -> Result<Vec<PackEntry>> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!("pack index {} is damaged: {why}", path.display()),
        )
        .with_path(path)
    };
    if bytes.len() < HEADER + CHECKSUM || &bytes[..8] != MAGIC {
        return Err(bad("it lacks the pe_failover pack index header".into()));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad("its checksum does not match its contents".into()));
    }
    let count = u64_at(body, 8);
    if ((body.len() - HEADER) / RECORD) as u64 != count || (body.len() - HEADER) % RECORD != 0 {
        return Err(bad(format!(
            "it announces {count} contents in {} bytes",
            body.len()
        )));
    }
    let mut out: Vec<PackEntry> = Vec::with_capacity(count as usize);
    for rec in body[HEADER..].chunks_exact(RECORD) {
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&rec[..32]);
        let e = PackEntry {
            sha,
            offset: u64_at(rec, 32),
            size: u64_at(rec, 40),
        };
        if e.offset
            .checked_add(e.size)
            .is_none_or(|end| end > pack_len)
        {
            return Err(bad(format!(
                "content {} ({} bytes at {}) lies outside the {pack_len}-byte pack",
                hex::encode(e.sha),
                e.size,
                e.offset
            )));
        }
        if out.last().is_some_and(|prev| prev.sha >= e.sha) {
            return Err(bad(format!(
                "content {} is out of order or listed twice",
                hex::encode(e.sha)
            )));
        }
        out.push(e);
    }
    Ok(out)
}

/// Reads and parses the index at `path` (see [`decode_index`]). Opened
/// without following a symlink and without waiting on a FIFO: the
/// transaction's index is the transfer user's file.
pub(crate) fn read_index(path: &Path, pack_len: u64) -> Result<Vec<PackEntry>> {
    let what = format!("pack index {}", path.display());
    let (file, meta) = crate::fsutil::open_untrusted(path, &what)?;
    if meta.len() > INDEX_LIMIT {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("{what} is larger than the {INDEX_LIMIT} bytes an index may have"),
        )
        .with_path(path));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(INDEX_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    decode_index(&bytes, pack_len, path)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Opens the pack at `pack` and reads its index at `idx`.
pub(crate) fn open_pack(pack: &Path, idx: &Path) -> Result<(File, Vec<PackEntry>)> {
    let file = crate::fsutil::open_nofollow(pack).map_err(|e| Error::io("open", pack, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", pack, e))?
        .len();
    let entries = read_index(idx, len)?;
    Ok((file, entries))
}

/// Appends contents to a new pack and records where each one went.
#[derive(Debug)]
pub(crate) struct PackWriter {
    file: BufWriter<File>,
    path: PathBuf,
    len: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Creates the pack at `path` (which must not exist), mode 0600.
    pub(crate) fn create(path: PathBuf) -> Result<PackWriter> {
        let file = crate::fsutil::create_private(&path)?;
        Ok(PackWriter {
            file: BufWriter::with_capacity(PACK_BUFFER, file),
            path,
            len: 0,
            entries: Vec::new(),
        })
    }

    /// The pack (buffered), to append one content to, and its path.
    pub(crate) fn file(&mut self) -> (&mut BufWriter<File>, &Path) {
        (&mut self.file, &self.path)
    }

    /// Records the content of `size` bytes with SHA-256 `sha` just
    /// appended.
    pub(crate) fn added(&mut self, sha: [u8; 32], size: u64) {
        self.entries.push(PackEntry {
            sha,
            offset: self.len,
            size,
        });
        self.len += size;
    }

    /// The pack's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the index to `idx` (a new file, mode 0600); the caller makes
    /// both durable.
    pub(crate) fn finish(self, idx: &Path) -> Result<()> {
        let path = self.path;
        self.file
            .into_inner()
            .map_err(|e| Error::io("write", &path, e.into_error()))?;
        write_new(idx, &encode_index(self.entries)).map(drop)
    }
}

/// Writes `bytes` to the new file `path`, mode 0600; returns it open.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<File> {
    crate::fsutil::create_filled(path, 0o600, |file| {
        file.write_all(bytes)
            .map_err(|e| Error::io("write", path, e))
    })
}

/// Largest content read from a pack into memory (the base of an
/// extension); larger ones are only streamed.
const IN_MEMORY_MAX: u64 = 256 * 1024 * 1024;

/// The packs of a content store, opened, and where each content is.
#[derive(Debug, Default)]
pub(crate) struct StorePacks {
    packs: Vec<(PathBuf, File)>,
    index: FxHashMap<[u8; 32], (usize, PackEntry)>,
    /// Packs that could not be read, as messages.
    problems: Vec<String>,
}

/// A content found in a pack.
#[derive(Debug)]
pub(crate) struct Packed<'a> {
    /// The pack.
    pub(crate) path: &'a Path,
    file: &'a File,
    entry: PackEntry,
}

impl<'a> Packed<'a> {
    /// The content `entry` of the pack `file` (at `path`).
    pub(crate) fn new(path: &'a Path, file: &'a File, entry: PackEntry) -> Self {
        Packed { path, file, entry }
    }

    /// Reads the content in chunks, handing each to `sink`, and checks it
    /// has `size` bytes (before anything is read: an index may claim
    /// anything its pack, sparse, holds) and SHA-256 `sha`; a mismatch is
    /// [`ErrorKind::Corrupt`], naming `what`.
    pub(crate) fn copy_verified(
        &self,
        sha: &str,
        size: u64,
        what: &str,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (e, path) = (&self.entry, self.path);
        if e.size != size {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what}: {} lists {} bytes at offset {} where its manifest entry has {size}",
                    path.display(),
                    e.size,
                    e.offset
                ),
            )
            .with_path(path));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; size.clamp(1, CHUNK) as usize];
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], e.offset + done)
                .map_err(|err| Error::io("read", path, err))?;
            hasher.update(&buf[..n]);
            sink(&buf[..n])?;
            done += n as u64;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{what}: the {size} bytes at offset {} of {} do not match its manifest entry (expected SHA-256 {sha}, found {got})",
                    e.offset,
                    path.display()
                ),
            )
            .with_path(path));
        }
        Ok(())
    }

    /// [`copy_verified`](Self::copy_verified) into memory, for contents of
    /// at most 256 MiB.
    pub(crate) fn read_verified(&self, sha: &str, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > IN_MEMORY_MAX {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{what}: {size} bytes are more than a pack's contents are read into memory for ({IN_MEMORY_MAX})"),
            )
            .with_path(self.path));
        }
        let mut out = Vec::with_capacity(size as usize);
        self.copy_verified(sha, size, what, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

impl StorePacks {
    /// Opens every pack with an index in `dir` (none when it is missing).
    /// A pack that cannot be read is left out and named in
    /// [`problems`](Self::problems).
    pub(crate) fn load(dir: &Path) -> StorePacks {
        let mut out = StorePacks::default();
        let reader = match fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => {
                out.problems.push(Error::io("list", dir, e).to_string());
                return out;
            }
        };
        let mut names: Vec<String> = reader
            .filter_map(|item| item.ok())
            .filter_map(|item| {
                let name = item.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".idx")?;
                (!stem.starts_with('.')).then(|| stem.to_string())
            })
            .collect();
        names.sort();
        for stem in names {
            let pack_path = dir.join(format!("{stem}.pack"));
            match open_pack(&pack_path, &dir.join(format!("{stem}.idx"))) {
                Ok((file, entries)) => {
                    let n = out.packs.len();
                    for e in entries {
                        out.index.entry(e.sha).or_insert((n, e));
                    }
                    out.packs.push((pack_path, file));
                }
                Err(e) => out.problems.push(e.to_string()),
            }
        }
        out
    }

    /// Where the content with SHA-256 `sha` is, if in a pack.
    pub(crate) fn find(&self, sha: &[u8; 32]) -> Option<Packed<'_>> {
        let (n, entry) = self.index.get(sha)?;
        let (path, file) = &self.packs[*n];
        Some(Packed::new(path, file, *entry))
    }

    /// Packs left out because they could not be read.
    pub(crate) fn problems(&self) -> &[String] {
        &self.problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: u8, offset: u64, size: u64) -> PackEntry {
        PackEntry {
            sha: [b; 32],
            offset,
            size,
        }
    }

    #[test]
    fn a_content_is_checked_against_its_entry_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.pack");
        // A terabyte, nearly all holes: an index may point anywhere in it.
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 40).unwrap();
        file.write_all_at(b"cert", 8).unwrap();
        let sha = hex::encode(Sha256::digest(b"cert"));
        let huge = PackEntry {
            sha: [1; 32],
            offset: 0,
            size: 1 << 39,
        };
        let e = Packed::new(&path, &file, huge)
            .read_verified(&sha, 4, "t")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(
            e.message().contains("where its manifest entry has 4"),
            "{e}"
        );
        // A manifest entry as large: streamed, never read into memory whole.
        let e = Packed::new(&path, &file, huge)
            .read_verified(&sha, 1 << 39, "t")
            .unwrap_err();
        assert!(e.message().contains("read into memory"), "{e}");
        let mut chunks = 0;
        let e = Packed::new(&path, &file, huge)
            .copy_verified(&sha, 1 << 39, "t", |c| {
                chunks += 1;
                assert!(c.len() as u64 <= CHUNK);
                // Stop after a few chunks: the sink's error ends the copy.
                if chunks == 3 {
                    return Err(Error::new(ErrorKind::Cancelled, "enough"));
                }
                Ok(())
            })
            .unwrap_err();
        assert_eq!((e.kind(), chunks), (ErrorKind::Cancelled, 3));
        let right = PackEntry {
            sha: [1; 32],
            offset: 8,
            size: 4,
        };
        assert_eq!(
            Packed::new(&path, &file, right)
                .read_verified(&sha, 4, "t")
                .unwrap(),
            b"cert"
        );
        let wrong = PackEntry { offset: 9, ..right };
        let e = Packed::new(&path, &file, wrong)
            .read_verified(&sha, 4, "t")
            .unwrap_err();
        assert!(e.message().contains("do not match"), "{e}");
    }

    #[test]
    fn an_index_reads_back_sorted_and_without_repeats() {
        let bytes = encode_index(vec![entry(9, 0, 5), entry(1, 5, 3), entry(9, 8, 5)]);
        let got = decode_index(&bytes, 13, Path::new("x.idx")).unwrap();
        assert_eq!(got, vec![entry(1, 5, 3), entry(9, 0, 5)]);
    }

    #[test]
    fn a_damaged_index_or_one_pointing_outside_its_pack_is_refused() {
        let path = Path::new("x.idx");
        let good = encode_index(vec![entry(1, 0, 4), entry(2, 4, 4)]);
        // Outside the pack.
        let e = decode_index(&good, 7, path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("outside the 7-byte pack"), "{e}");
        // A flipped byte, a cut, another magic.
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert!(decode_index(&flipped, 8, path)
            .unwrap_err()
            .message()
            .contains("checksum"));
        assert!(decode_index(&good[..good.len() - 1], 8, path).is_err());
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(decode_index(&magic, 8, path)
            .unwrap_err()
            .message()
            .contains("header"));
        // Out of order, with a valid checksum.
        let mut body = good[..good.len() - CHECKSUM].to_vec();
        body.swap(HEADER, HEADER + RECORD);
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        assert!(decode_index(&body, 8, path)
            .unwrap_err()
            .message()
            .contains("out of order"));
        assert_eq!(decode_index(&good, 8, path).unwrap().len(), 2);
    }
}
