//! Small file-system helpers shared by the replication modules: durable
//! directory creation, `O_NOFOLLOW` opens, verified copies, advisory locks.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// Above this many freshly written files, one `syncfs` replaces an `fsync`
/// per file.
const SYNCFS_THRESHOLD: usize = 64;

/// Syncs the directory at `path` so that renames and new entries in it are
/// durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(|e| Error::io("open directory", path, e))?;
    dir.sync_all()
        .map_err(|e| Error::io("sync directory", path, e))
}

/// Puts `from` in the place of `to`, an existing name, atomically (as a
/// rename would: `to` never goes missing), and leaves what `to` named at
/// `from`, for the caller to remove. A rename over an existing file makes
/// ext4 (`auto_da_alloc`) start writing out the renamed file's unwritten
/// pages at once, which every later `fsync` on that disk then waits
/// behind; an exchange of the two names does not. `Ok(false)`, with
/// nothing done, where the kernel or the file system cannot exchange names
/// or `to` does not exist: the caller renames instead.
pub(crate) fn exchange(from: &Path, to: &Path) -> io::Result<bool> {
    let c = |p: &Path| {
        c_path(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) if from.exists() => {
            Ok(false)
        }
        _ => Err(e),
    }
}

/// Puts the file at `new` in the place of `path` atomically, `path` never
/// missing meanwhile: [exchanged](exchange) with the regular file there
/// where the kernel and the file system can, else renamed (over it, or to
/// it when there is none; a directory there is an error, as for a rename).
/// Returns whether the file replaced is now at `new`, for the caller to
/// remove.
pub(crate) fn put_in_place(new: &Path, path: &Path) -> Result<bool> {
    let placed = |e| Error::io("rename into place", path, e);
    let file_there = fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    let exchanged = file_there && exchange(new, path).map_err(placed)?;
    if !exchanged {
        fs::rename(new, path).map_err(placed)?;
    }
    Ok(exchanged)
}

/// Opens `path` for reading without following a symbolic link at its last
/// component.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Where a process finds its own open descriptors by number.
pub(crate) const PROC_FD: &str = "/proc/self/fd";

/// A name for what `file` holds open, whatever is at its path by now:
/// `/proc/self/fd/<n>` (for a directory, its entries' names go below it).
pub(crate) fn fd_path(file: &impl AsRawFd) -> PathBuf {
    Path::new(PROC_FD).join(file.as_raw_fd().to_string())
}

/// Gives `path` permission bits `mode` unless it is a symbolic link (a
/// link at its last component is neither followed nor changed).
pub(crate) fn chmod_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    let handle = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if handle.metadata()?.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(fd_path(&handle), fs::Permissions::from_mode(mode))
}

/// Creates `path` (and missing parents) and sets the permission bits of
/// `path` itself to `mode`, whatever the umask.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("set permissions of", path, e))?;
            }
            Ok(())
        }
        Ok(_) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} exists and is not a directory; move it away",
                path.display()
            ),
        )
        .with_path(path)),
        Err(_) => {
            fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("set permissions of", path, e))
        }
    }
}

/// Creates `path` (and missing parents) with permission bits `mode` when it
/// does not exist; an existing directory is left as it is.
pub(crate) fn create_dir_if_missing(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    ensure_dir(path, mode)
}

/// Removes `path` (a file, symlink or directory tree); missing is fine.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Makes the new files in `files`, all on one file system, durable: an
/// `fsync` each when there are few, one `syncfs` of their file system
/// (reached through the first of them) when there are many. Returns whether
/// `syncfs` was used (it also covers directory entries; per-file syncs do
/// not).
pub(crate) fn sync_new_files(files: &[PathBuf]) -> Result<bool> {
    if let (true, Some(first)) = (files.len() > SYNCFS_THRESHOLD, files.first()) {
        let file = open_nofollow(first).map_err(|e| Error::io("open", first, e))?;
        // SAFETY: `file` is an open descriptor for the whole call.
        let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
        if rc == 0 {
            return Ok(true);
        }
    }
    // Writeback of every file is started first, so the devices work on all
    // of them while each `fsync` waits for its own.
    let opened = files
        .iter()
        .map(|f| open_nofollow(f).map_err(|e| Error::io("open", f, e)))
        .collect::<Result<Vec<File>>>()?;
    for file in &opened {
        // SAFETY: `file` is an open descriptor for the whole call. Only a
        // hint: failures are left to the fsync below.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    for (file, path) in opened.iter().zip(files) {
        file.sync_all().map_err(|e| Error::io("sync", path, e))?;
    }
    Ok(false)
}

/// Background writeback while many new files are written on one file
/// system: every [`FLUSH_EVERY`] bytes (a small file counts as a page), a
/// thread of its own starts a `syncfs`, so the devices write while the
/// caller goes on and the sync that makes the files durable at the end
/// ([`sync_new_files`]) finds most of the work done. Only a head start:
/// durability is still that final sync's. The thread is started by the
/// first kick (a few small files never start one) and stops when the
/// flusher is dropped.
#[derive(Debug)]
pub(crate) struct Flusher {
    anchor: PathBuf,
    since: AtomicU64,
    kick: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How many bytes written make a [`Flusher`] start writeback.
const FLUSH_EVERY: u64 = 16 << 20;

impl Flusher {
    /// A flusher for the file system holding `anchor`.
    pub(crate) fn new(anchor: &Path) -> Flusher {
        Flusher {
            anchor: anchor.to_path_buf(),
            since: AtomicU64::new(0),
            kick: std::sync::Mutex::new(None),
            thread: std::sync::Mutex::new(None),
        }
    }

    /// Counts a file of `bytes` written.
    pub(crate) fn wrote(&self, bytes: u64) {
        let pages = bytes.div_ceil(4096).max(1) * 4096;
        let since = self.since.fetch_add(pages, Ordering::Relaxed) + pages;
        if since < FLUSH_EVERY {
            return;
        }
        let Ok(mut kick) = self.kick.lock() else {
            return;
        };
        if kick.is_none() {
            *kick = self.start();
        }
        // A writeback still running takes the next one's bytes too.
        if kick.as_ref().is_some_and(|k| k.try_send(()).is_ok()) {
            self.since.store(0, Ordering::Relaxed);
        }
    }

    fn start(&self) -> Option<std::sync::mpsc::SyncSender<()>> {
        let dir = File::open(&self.anchor).ok()?;
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("pe_failover-flush".into())
            .spawn(move || {
                while kicked.recv().is_ok() {
                    // SAFETY: `dir` is an open descriptor for the whole
                    // loop. Failures are left to the caller's final sync.
                    unsafe {
                        libc::syncfs(dir.as_raw_fd());
                    }
                }
            })
            .ok()?;
        if let Ok(mut slot) = self.thread.lock() {
            *slot = Some(thread);
        }
        Some(kick)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Ok(mut kick) = self.kick.lock() {
            kick.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// Copies the regular file `src` to the new file `dst` (which must not
/// exist) with permission bits `mode`, checking on the way that the copied
/// bytes have `size` and SHA-256 `sha256`. `src` is opened without following
/// a symlink. On any mismatch `dst` is removed and a
/// [`ErrorKind::Corrupt`] error names `what`. Large contents are written
/// around the page cache (see [`UncachedWriter`]). Returns `dst`, open for
/// writing (to set its owner or times).
pub(crate) fn copy_verified(
    src: &Path,
    dst: &Path,
    mode: u32,
    sha256: &str,
    size: u64,
    what: &str,
) -> Result<File> {
    concat_verified(&[], &[src], dst, mode, sha256, size, what)
}

/// Creates the new file `path` (which must not exist, not even as a
/// symlink) for writing, mode 0600.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Creates the new file `path` (see [`create_private`]), has `fill` write
/// it, then gives it permission bits `mode`; on any failure the file is
/// removed again. Returns it, open for writing (to set its owner or times).
pub(crate) fn create_filled(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<File> {
    let mut file = create_private(path)?;
    let filled = fill(&mut file).and_then(|()| {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", path, e))
    });
    match filled {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// Contents at least this large, written from memory, go to their file
/// around the page cache (see [`write_uncached`]); the smallest contents the
/// watcher and the applier hold in memory (`replset::HELD_MIN`) are as
/// large.
const UNCACHED_MIN: usize = 256 << 10;

/// The alignment of direct writes: of the buffer, the offset and the
/// length (4 KiB suits every logical block size in use).
const DIRECT_ALIGN: usize = 4096;

/// The size of the aligned buffer direct writes go through.
const DIRECT_CHUNK: usize = 1 << 20;

/// Buffers of [`BUFFER_LEN`] bytes given back by their last user (see
/// [`buffer`]), at most [`BUFFERS_KEPT`].
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// The length of a buffer of [`buffer`]: an aligned [`DIRECT_CHUNK`]
/// fits in it wherever it starts.
pub(crate) const BUFFER_LEN: usize = DIRECT_CHUNK + DIRECT_ALIGN;

/// Most buffers kept for reuse.
const BUFFERS_KEPT: usize = 8;

/// A buffer of [`BUFFER_LEN`] bytes (their values unspecified), for
/// direct writes, comparisons, pieces of a manifest file: one an earlier
/// user gave back ([`give_back`]) when there is one. Memory given back to
/// the system comes back as fresh pages to fault in, which on a virtual
/// machine whose free memory returns to the host costs about 13 us a page,
/// far more than the work done in a buffer.
pub(crate) fn buffer() -> Vec<u8> {
    let kept = BUFFERS.lock().ok().and_then(|mut kept| kept.pop());
    kept.unwrap_or_else(|| vec![0u8; BUFFER_LEN])
}

/// Keeps `buf` (from [`buffer`], whatever its length now) for the next
/// user, unless enough are kept already.
pub(crate) fn give_back(mut buf: Vec<u8>) {
    if !(BUFFER_LEN..=2 * BUFFER_LEN).contains(&buf.capacity()) {
        return;
    }
    buf.resize(BUFFER_LEN, 0);
    if let Ok(mut kept) = BUFFERS.lock() {
        if kept.len() < BUFFERS_KEPT {
            kept.push(buf);
        }
    }
}

/// Writes `bytes` at the start of `file` (new and empty, named `path`)
/// with an [`UncachedWriter`].
pub(crate) fn write_uncached(file: &File, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = UncachedWriter::new(file, path, bytes.len() as u64);
    out.write(bytes)?;
    out.finish()
}

/// How an [`UncachedWriter`] writes a chunk at an offset (`pwrite`; tests
/// put checks in its place).
type WriteAt = fn(&File, &[u8], u64) -> io::Result<usize>;

/// Writes a new file from its start, in order. Contents of at least
/// [`UNCACHED_MIN`] bytes go with `O_DIRECT`, gathered into an aligned
/// buffer and written [`DIRECT_CHUNK`] at a time: a copy the system will
/// not read back soon (a store object, a replaced live file) then takes no
/// page-cache pages of its own, and its `fsync` finds nothing left to write
/// back. The bytes after the last whole block, and everything on a file
/// system that refuses direct writes (from the refused write on), go
/// through the page cache as usual. Durability is still the caller's
/// `fsync`.
pub(crate) struct UncachedWriter<'f> {
    file: &'f File,
    path: &'f Path,
    write_at: WriteAt,
    /// The aligned buffer, from [`buffer`] (empty when not direct).
    buf: Vec<u8>,
    /// Where its aligned part starts.
    start: usize,
    /// How many bytes it holds.
    held: usize,
    /// The file offset of its first byte (of the next byte to write when
    /// not direct).
    at: u64,
    /// Whether `O_DIRECT` is on.
    direct: bool,
}

impl<'f> UncachedWriter<'f> {
    /// A writer of `size` bytes into `file` (new and empty, named `path`).
    pub(crate) fn new(file: &'f File, path: &'f Path, size: u64) -> Self {
        Self::with_write_at(file, path, size, |f, bytes, at| f.write_at(bytes, at))
    }

    fn with_write_at(file: &'f File, path: &'f Path, size: u64, write_at: WriteAt) -> Self {
        let direct = size >= UNCACHED_MIN as u64 && set_direct(file, true);
        let buf = match direct {
            true => buffer(),
            false => Vec::new(),
        };
        // The first aligned byte (`align_offset` may decline to say).
        let start = match buf.is_empty() {
            true => 0,
            false => (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN,
        };
        UncachedWriter {
            file,
            path,
            write_at,
            buf,
            start,
            held: 0,
            at: 0,
            direct,
        }
    }

    /// Writes `bytes` after those written before.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if !self.direct {
                return self.cached(bytes);
            }
            let n = bytes.len().min(DIRECT_CHUNK - self.held);
            let from = self.start + self.held;
            self.buf[from..from + n].copy_from_slice(&bytes[..n]);
            self.held += n;
            bytes = &bytes[n..];
            if self.held == DIRECT_CHUNK {
                self.write_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes what is left and turns `O_DIRECT` off again.
    pub(crate) fn finish(mut self) -> Result<()> {
        if self.direct {
            self.write_blocks()?;
            self.direct = false;
            if !set_direct(self.file, false) {
                return Err(Error::io(
                    "write",
                    self.path,
                    io::Error::other("cannot turn direct writes off again"),
                ));
            }
        }
        self.write_held(0, self.held)
    }

    /// Writes the whole blocks the buffer holds, directly until direct
    /// writes are refused and through the cache from there. The bytes after
    /// them, which only [`finish`](Self::finish) leaves (`write` calls this
    /// with a full buffer), move to its start.
    fn write_blocks(&mut self) -> Result<()> {
        let whole = self.held / DIRECT_ALIGN * DIRECT_ALIGN;
        let mut done = 0;
        while done < whole && self.direct {
            let chunk = &self.buf[self.start + done..self.start + whole];
            match (self.write_at)(self.file, chunk, self.at + done as u64) {
                Ok(0) => {
                    return Err(Error::io(
                        "write",
                        self.path,
                        io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused (some file systems take the flag and refuse the
                // writes, or a short write left an unaligned offset).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = false;
                    set_direct(self.file, false);
                }
                Err(e) => return Err(Error::io("write", self.path, e)),
            }
        }
        // Those not written directly go through the cache.
        self.write_held(done, whole)
    }

    /// Writes the bytes `from..to` of those held through the cache (at
    /// their offset), then counts the first `to` as written: the rest move
    /// to the buffer's start.
    fn write_held(&mut self, from: usize, to: usize) -> Result<()> {
        let held = &self.buf[self.start..self.start + self.held];
        self.file
            .write_all_at(&held[from..to], self.at + from as u64)
            .map_err(|e| Error::io("write", self.path, e))?;
        self.buf
            .copy_within(self.start + to..self.start + self.held, self.start);
        self.held -= to;
        self.at += to as u64;
        Ok(())
    }

    /// Writes `bytes` through the cache at the next offset.
    fn cached(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.at)
            .map_err(|e| Error::io("write", self.path, e))?;
        self.at += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for UncachedWriter<'_> {
    fn drop(&mut self) {
        if self.direct {
            set_direct(self.file, false);
        }
        if !self.buf.is_empty() {
            give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Turns `O_DIRECT` on or off for `file`; whether it is now as asked.
fn set_direct(file: &File, on: bool) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor for the whole call; F_GETFL and
    // F_SETFL only read and set its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let wanted = match on {
            true => flags | libc::O_DIRECT,
            false => flags & !libc::O_DIRECT,
        };
        wanted == flags || libc::fcntl(fd, libc::F_SETFL, wanted) == 0
    }
}

/// Reads sources one after the other into a SHA-256, up to one byte past
/// the expected size (enough to notice a longer source).
struct HashingReader {
    hasher: Sha256,
    total: u64,
    size: u64,
    buf: Vec<u8>,
}

impl HashingReader {
    fn new(size: u64) -> Self {
        let len = usize::try_from(size.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(64 * 1024);
        HashingReader {
            hasher: Sha256::new(),
            total: 0,
            size,
            buf: vec![0u8; len],
        }
    }

    /// Reads `input` (at `path`) to its end, handing each chunk to `sink`;
    /// returns false once more than the expected size was read.
    fn feed(
        &mut self,
        input: &mut File,
        path: &Path,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        loop {
            let n = match input.read(&mut self.buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", path, e)),
            };
            self.total += n as u64;
            if self.total > self.size {
                return Ok(false);
            }
            self.hasher.update(&self.buf[..n]);
            sink(&self.buf[..n])?;
        }
    }

    /// Counts and hashes `bytes` held in memory; returns false once more
    /// than the expected size was seen.
    fn feed_bytes(&mut self, bytes: &[u8]) -> bool {
        self.total += bytes.len() as u64;
        if self.total > self.size {
            return false;
        }
        self.hasher.update(bytes);
        true
    }

    /// Bytes read (more than the size: past it) and the SHA-256 (hex).
    fn finish(self) -> (u64, String) {
        (self.total, hex::encode(self.hasher.finalize()))
    }
}

/// Like [`copy_verified`], with `prefix` followed by the contents of `srcs`
/// one after the other.
pub(crate) fn concat_verified(
    prefix: &[u8],
    srcs: &[&Path],
    dst: &Path,
    mode: u32,
    sha256: &str,
    size: u64,
    what: &str,
) -> Result<File> {
    let mut inputs = Vec::with_capacity(srcs.len());
    for src in srcs {
        // A received suffix is the transfer user's file.
        let (input, _) = open_untrusted(src, what)?;
        inputs.push((input, *src));
    }
    let shown = (!prefix.is_empty())
        .then(|| format!("{} packed bytes", prefix.len()))
        .into_iter()
        .chain(srcs.iter().map(|p| p.display().to_string()))
        .collect::<Vec<_>>()
        .join(" + ");
    create_filled(dst, mode, |out| {
        let mut reader = HashingReader::new(size);
        let mut writer = UncachedWriter::new(out, dst, size);
        let mut more = reader.feed_bytes(prefix);
        if more {
            writer.write(prefix)?;
        }
        for (input, src) in inputs.iter_mut() {
            if !more {
                break;
            }
            more = reader.feed(input, src, |chunk| writer.write(chunk))?;
        }
        writer.finish()?;
        let (total, got) = reader.finish();
        if total != size || got != sha256 {
            return Err(not_as_recorded(what, &shown, (size, sha256), (total, &got))
                .with_path(srcs.first().copied().unwrap_or(dst)));
        }
        Ok(())
    })
}

/// The [`ErrorKind::Corrupt`] error for contents (`shown`, of `what`) that
/// are not the `expected` ones of their manifest entry (size, SHA-256):
/// `found` is the size read (more than expected: at least one byte more)
/// and the SHA-256 of what was read.
pub(crate) fn not_as_recorded(
    what: &str,
    shown: &str,
    (size, sha256): (u64, &str),
    (total, got): (u64, &str),
) -> Error {
    let found = match total.cmp(&size) {
        std::cmp::Ordering::Greater => format!("more than {size} bytes"),
        std::cmp::Ordering::Equal => format!("{total} bytes with SHA-256 {got}"),
        std::cmp::Ordering::Less => format!("{total} bytes"),
    };
    Error::new(
        ErrorKind::Corrupt,
        format!("{what}: {shown} does not match its manifest entry (expected {size} bytes with SHA-256 {sha256}, found {found})"),
    )
}

/// Makes the regular file `path` (with no other name) this process's own with permission bits
/// `mode` (its owner and group are changed when they differ and the
/// process may change them), then checks that it holds `size` bytes with
/// SHA-256 `sha256`. On a mismatch the file is removed and a
/// [`ErrorKind::Corrupt`] error names `what`.
pub(crate) fn adopt_verified(
    path: &Path,
    mode: u32,
    sha256: &str,
    size: u64,
    what: &str,
) -> Result<()> {
    let result = (|| {
        let mut file = take_over(path, 1, mode, what)?;
        let mut reader = HashingReader::new(size);
        reader.feed(&mut file, path, |_| Ok(()))?;
        let (total, got) = reader.finish();
        if total != size || got != sha256 {
            let shown = path.display().to_string();
            return Err(
                not_as_recorded(what, &shown, (size, sha256), (total, &got)).with_path(path)
            );
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Opens for reading a file another user could have put at `path` (the
/// transfer user's, in a transaction): a symlink is not followed, a FIFO
/// is not waited on, and anything but a regular file is
/// [`ErrorKind::Corrupt`], naming `what`. Returns it with its metadata.
pub(crate) fn open_untrusted(path: &Path, what: &str) -> Result<(File, fs::Metadata)> {
    let untrusted = |why: &str| {
        Error::new(
            ErrorKind::Corrupt,
            format!("{what}: {} is {why}, so it is not trusted", path.display()),
        )
        .with_path(path)
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => untrusted("a symbolic link"),
            _ => Error::io("open", path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(untrusted("not a regular file"));
    }
    Ok((file, meta))
}

/// Opens the regular file `path` (not following a symlink), which must
/// have exactly `names` names (the ones the caller knows of: a file with
/// more, such as a hard link to a system file, is refused as
/// [`ErrorKind::Corrupt`] naming `what`), makes it this process's own when
/// it runs as root and gives it permission bits `mode`.
pub(crate) fn take_over(path: &Path, names: u64, mode: u32, what: &str) -> Result<File> {
    let (file, meta) = open_untrusted(path, what)?;
    if meta.nlink() != names {
        // The caller's own links aside, the file must have one name.
        let want = match names {
            1 => "a single name".to_string(),
            2 => "a single name besides the link made here".to_string(),
            n => format!("a single name besides the {} links made here", n - 1),
        };
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{what}: {} is not a regular file with {want} (it has {}), so it is not trusted",
                path.display(),
                meta.nlink()
            ),
        )
        .with_path(path));
    }
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 && (meta.uid() != uid || meta.gid() != gid) {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| Error::io("change owner of", path, e))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))?;
    Ok(file)
}

/// The first `n` bytes of the file at `path` (fewer when it is shorter),
/// not following a symlink; `None` when it cannot be read.
pub(crate) fn read_head(path: &Path, n: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(n);
    open_nofollow(path)
        .ok()?
        .take(n as u64)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), different
/// after every restart; `None` where it cannot be read.
pub(crate) fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// An exclusive advisory lock (`flock`) on a file, released when dropped or
/// when the process dies (so it can never go stale).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing), waiting at most `wait`.
    /// `what` names the holder in the timeout error.
    pub(crate) fn acquire(path: &Path, wait: Duration, what: &str) -> Result<FileLock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        let started = Instant::now();
        loop {
            // SAFETY: `file` is an open descriptor for the whole call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io("lock", path, err));
            }
            if started.elapsed() >= wait {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "another {what} has held {} for {} s; retry later (a lock held by a dead process is released automatically)",
                        path.display(),
                        wait.as_secs()
                    ),
                )
                .with_path(path));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `n` random bytes as lowercase hex, from the kernel's generator (falling
/// back to the clock and process id, which is unique enough for names).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    hex::encode(buf)
}

/// Fills `buf` from the kernel's generator (falling back to the clock and
/// process id).
fn fill_random(buf: &mut [u8]) {
    let filled = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok();
    if !filled {
        let seed = format!(
            "{:?}{}{:?}",
            std::time::SystemTime::now(),
            std::process::id(),
            std::thread::current().id()
        );
        let sum = Sha256::digest(seed.as_bytes());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = sum[i % sum.len()];
        }
    }
}

/// A name suffix unique within this process and, with overwhelming
/// probability, across processes (16 hex digits: a random start drawn once
/// per process, counted up): for temporary files made in bulk, where a
/// random draw from the kernel per name would cost three system calls.
pub(crate) fn unique_hex() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        fill_random(&mut bytes);
        u64::from_le_bytes(bytes)
    });
    format!(
        "{:016x}",
        start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
    )
}

/// The extended attribute that holds a file's SELinux label
/// (NUL-terminated, as the system calls take it).
const SELINUX_XATTR: &[u8] = b"security.selinux\0";

fn c_path(path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{} has a NUL byte in its name", path.display()),
        )
        .with_path(path)
    })
}

/// The SELinux label of `path` (a symlink's own, not its target's), or
/// none when it has none: SELinux was never enabled on the host, or the
/// file system keeps no labels.
pub(crate) fn selinux_label(path: &Path) -> Result<Option<Vec<u8>>> {
    let name = c_path(path)?;
    // Labels are short: read into the stack first (nothing allocated for a
    // file without one), then, when that is too small, into the largest
    // value an attribute can have.
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    loop {
        let buf: &mut [u8] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        // SAFETY: `name` and the attribute name are NUL-terminated; `buf`
        // is valid for `buf.len()` bytes of writing.
        let n = unsafe {
            libc::lgetxattr(
                name.as_ptr(),
                SELINUX_XATTR.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(Some(buf[..n].to_vec()));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => return Ok(None),
            Some(libc::ERANGE) if large.is_empty() => large = vec![0u8; 64 * 1024],
            _ => return Err(Error::io("read the SELinux label of", path, err)),
        }
    }
}

/// Gives `path` (a symlink itself, not its target) the SELinux `label`,
/// as read by [`selinux_label`].
pub(crate) fn set_selinux_label(path: &Path, label: &[u8]) -> Result<()> {
    let name = c_path(path)?;
    // SAFETY: `name` and the attribute name are NUL-terminated; `label` is
    // valid for `label.len()` bytes of reading.
    let rc = unsafe {
        libc::lsetxattr(
            name.as_ptr(),
            SELINUX_XATTR.as_ptr().cast(),
            label.as_ptr().cast(),
            label.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(Error::io("set the SELinux label of", path, err))
}

/// Reads at most `limit` bytes of the regular file at `path` (not following
/// a symlink); larger files are an [`ErrorKind::InvalidInput`] error.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_bounded_into(path, limit, &mut out)?;
    Ok(out)
}

/// Reads the regular file at `path` (not following a symlink, at most
/// `limit` bytes, as [`read_bounded`]) into `buf`, in `buf`'s own memory:
/// when the file starts with the bytes `buf` holds, they are compared, not
/// read again, and only what follows them is appended (into `buf`'s spare
/// capacity, grown as a `Vec` grows); otherwise `buf` is refilled with the
/// whole file. Returns whether the file started with `buf`'s bytes.
/// For a file that grows at its end (`inventory.txt`), read again and again
/// by a long-running process: its fresh pages would cost more than the
/// read (see [`buffer`]).
pub(crate) fn read_bounded_into(path: &Path, limit: u64, buf: &mut Vec<u8>) -> Result<bool> {
    let mut file = open_nofollow(path).map_err(|e| Error::io("read", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        )
        .with_path(path));
    }
    let held = buf.len();
    let grown = meta.len() >= held as u64
        && file_starts_with(&mut file, buf).map_err(|e| Error::io("read", path, e))?;
    if !grown {
        buf.clear();
        std::io::Seek::rewind(&mut file).map_err(|e| Error::io("read", path, e))?;
    }
    buf.reserve(meta.len().min(limit).saturating_sub(buf.len() as u64) as usize);
    let room = (limit + 1).saturating_sub(buf.len() as u64);
    file.take(room)
        .read_to_end(buf)
        .map_err(|e| Error::io("read", path, e))?;
    if buf.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} is larger than the {limit} bytes allowed for it",
                path.display()
            ),
        )
        .with_path(path));
    }
    Ok(grown)
}

/// Whether what `file` holds from its position on starts with `expected`
/// (read a chunk at a time into a [`buffer`]); the
/// position is then after `expected` if so.
fn file_starts_with(file: &mut File, expected: &[u8]) -> io::Result<bool> {
    // (Nothing held: every `read_bounded` of a small file.)
    if expected.is_empty() {
        return Ok(true);
    }
    let mut chunk = buffer();
    let mut rest = expected;
    let same = loop {
        if rest.is_empty() {
            break Ok(true);
        }
        let want = rest.len().min(chunk.len());
        match file.read(&mut chunk[..want]) {
            Ok(0) => break Ok(false),
            Ok(n) if chunk[..n] != rest[..n] => break Ok(false),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    give_back(chunk);
    same
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_refuse_large_files_and_others_and_append_to_a_start_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.txt");
        let bytes: Vec<u8> = (0..100u8).collect();
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap(), bytes);
        let e = read_bounded(&path, 99).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let shown = format!(
            "{} is larger than the 99 bytes allowed for it",
            path.display()
        );
        assert_eq!(e.to_string(), shown);
        // Its start held: the rest appended.
        let mut buf = bytes[..40].to_vec();
        assert!(read_bounded_into(&path, 100, &mut buf).unwrap());
        assert_eq!(buf, bytes);
        // Other bytes, or more than the file has: read whole instead.
        for held in [
            &b"other"[..],
            &bytes[..],
            &[bytes.as_slice(), b"!"].concat(),
        ] {
            let mut buf = held.to_vec();
            let grew = read_bounded_into(&path, 100, &mut buf).unwrap();
            assert_eq!(grew, held == bytes.as_slice());
            assert_eq!(buf, bytes);
        }
        // Grown past the limit: refused all the same.
        let mut buf = bytes[..40].to_vec();
        let e = read_bounded_into(&path, 60, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        // Not a regular file: a directory, a symbolic link (not followed).
        let e = read_bounded(dir.path(), 100).unwrap_err();
        assert!(e.to_string().ends_with("is not a regular file"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = read_bounded(&link, 100).unwrap_err();
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        assert_eq!(
            e.io_error().and_then(io::Error::raw_os_error),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn exchange_swaps_two_names_and_declines_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = (dir.path().join("new"), dir.path().join("old"));
        fs::write(&new, "new").unwrap();
        fs::write(&old, "old").unwrap();
        assert!(exchange(&new, &old).unwrap());
        assert_eq!(fs::read_to_string(&old).unwrap(), "new");
        assert_eq!(fs::read_to_string(&new).unwrap(), "old");
        // Nothing to exchange with: nothing done, the caller renames.
        let missing = dir.path().join("missing");
        assert!(!exchange(&new, &missing).unwrap());
        assert_eq!(fs::read_to_string(&new).unwrap(), "old");
        assert!(!missing.exists());
        // A missing source is an error.
        let e = exchange(&dir.path().join("nothing"), &old).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_flusher_starts_its_thread_only_after_enough_bytes_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let small = Flusher::new(dir.path());
        for _ in 0..10 {
            small.wrote(100);
        }
        assert!(small.thread.lock().unwrap().is_none());
        drop(small);

        let busy = Flusher::new(dir.path());
        for i in 0..(2 * FLUSH_EVERY / 4096) {
            fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
            busy.wrote(1);
        }
        assert!(busy.thread.lock().unwrap().is_some());
        // Joins the thread, after the writeback it was running (if any).
        drop(busy);

        // A directory that cannot be opened: no thread, no failure.
        let gone = Flusher::new(&dir.path().join("missing"));
        gone.wrote(FLUSH_EVERY);
        assert!(gone.thread.lock().unwrap().is_none());
    }

    #[test]
    fn selinux_labels_are_read_and_set_on_the_link_itself_and_absent_ones_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let link = dir.path().join("l");
        fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink("f", &link).unwrap();
        assert_eq!(selinux_label(&file).unwrap(), None);
        let missing = selinux_label(&dir.path().join("gone")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert!(missing.to_string().contains("gone"), "{missing}");
        // Without SELinux the kernel keeps `security.*` attributes as given,
        // but only root may set them.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let label = b"system_u:object_r:puppet_etc_t:s0\0";
        set_selinux_label(&file, label).unwrap();
        assert_eq!(selinux_label(&file).unwrap().as_deref(), Some(&label[..]));
        assert_eq!(selinux_label(&link).unwrap(), None, "the link's own label");
        let long = [
            b"system_u:object_r:cert_t:s0:".as_slice(),
            &[b'c'; 400],
            b"\0",
        ]
        .concat();
        set_selinux_label(&link, &long).unwrap();
        assert_eq!(selinux_label(&link).unwrap(), Some(long));
        assert_eq!(selinux_label(&file).unwrap().as_deref(), Some(&label[..]));
        let err = set_selinux_label(&dir.path().join("gone"), label).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn verified_copy_rejects_wrong_content_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        let dst = dir.path().join("dst");
        copy_verified(&src, &dst, 0o640, &sha, 5, "test").unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let bad = dir.path().join("bad");
        let err = copy_verified(&src, &bad, 0o640, &"0".repeat(64), 5, "test").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(!bad.exists());
        let err = copy_verified(&src, &bad, 0o640, &sha, 4, "test").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(!bad.exists());
    }

    #[test]
    fn locks_exclude_each_other_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = FileLock::acquire(&path, Duration::ZERO, "test").unwrap();
        let err = FileLock::acquire(&path, Duration::from_millis(30), "test").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        drop(first);
        FileLock::acquire(&path, Duration::ZERO, "test").unwrap();
    }

    #[test]
    fn random_names_differ() {
        assert_ne!(random_hex(8), random_hex(8));
        assert_ne!(unique_hex(), unique_hex());
        assert_eq!(unique_hex().len(), 16);
        assert_eq!(random_hex(8).len(), 16);
    }

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    thread_local! {
        /// What the checking writer below does: refuse (EINVAL) from this
        /// offset on, write one block at a time, fail (EIO); how many
        /// chunks it wrote.
        static REFUSE_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
        static SHORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static FAIL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A direct write that checks what the kernel would first.
    fn checking_write_at(file: &File, chunk: &[u8], at: u64) -> io::Result<usize> {
        assert_eq!(chunk.as_ptr() as usize % DIRECT_ALIGN, 0, "buffer aligned");
        assert_eq!(at as usize % DIRECT_ALIGN, 0, "offset aligned");
        assert_eq!(chunk.len() % DIRECT_ALIGN, 0, "length aligned");
        if at >= REFUSE_AT.get() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if FAIL.get() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        CALLS.set(CALLS.get() + 1);
        let n = if SHORT.get() {
            DIRECT_ALIGN
        } else {
            chunk.len()
        };
        file.write_at(&chunk[..n], at)
    }

    #[test]
    fn direct_writes_are_aligned_whole_blocks_and_the_rest_goes_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = patterned(2 * DIRECT_CHUNK + DIRECT_CHUNK / 2 + 100);
        // Returns the file's contents and how many direct writes were made.
        let run = |name: &str, refuse_at: u64, short: bool, fail: bool| {
            REFUSE_AT.set(refuse_at);
            SHORT.set(short);
            FAIL.set(fail);
            CALLS.set(0);
            let path = dir.path().join(name);
            let file = create_private(&path).unwrap();
            let mut out =
                UncachedWriter::with_write_at(&file, &path, bytes.len() as u64, checking_write_at);
            // In pieces that do not line up with blocks or chunks.
            let written = bytes
                .chunks(65_536 + 7)
                .try_for_each(|piece| out.write(piece))
                .and_then(|()| out.finish());
            written.map(|()| (fs::read(&path).unwrap(), CALLS.get()))
        };
        let (got, calls) = run("whole", u64::MAX, false, false).unwrap();
        assert!(got == bytes);
        // Without direct writes here, the checking writer is never called.
        let direct_here = calls > 0;
        if direct_here {
            assert_eq!(calls, 3, "two whole chunks and the last one's blocks");
        }
        let (got, calls) = run("short", u64::MAX, true, false).unwrap();
        assert!(got == bytes, "short writes are resumed");
        if direct_here {
            assert_eq!(calls, bytes.len() / DIRECT_ALIGN);
        }
        // Refused in the second chunk: the rest went through the cache.
        let (got, calls) = run("refused", DIRECT_CHUNK as u64, false, false).unwrap();
        assert!(got == bytes);
        if direct_here {
            assert_eq!(calls, 1);
        }
        let failed = run("failed", u64::MAX, false, true);
        if direct_here {
            let e = failed.unwrap_err();
            assert_eq!(
                e.io_error().and_then(io::Error::raw_os_error),
                Some(libc::EIO)
            );
            let shown = dir.path().join("failed").display().to_string();
            assert!(
                e.to_string().starts_with(&format!("cannot write {shown}")),
                "{e}"
            );
        }
        REFUSE_AT.set(u64::MAX);
        FAIL.set(false);
        SHORT.set(false);
    }

    #[test]
    fn uncached_writes_keep_every_byte_and_leave_the_file_as_opened() {
        let dir = tempfile::tempdir().unwrap();
        // Whether this file system takes direct writes at all.
        let probe = dir.path().join("probe");
        let direct_here = File::options()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let large = 3 * DIRECT_CHUNK + 5;
        for len in [0, 10, UNCACHED_MIN - 1, UNCACHED_MIN, large] {
            let path = dir.path().join(format!("f{len}"));
            let bytes = patterned(len);
            let file = create_private(&path).unwrap();
            write_uncached(&file, &path, &bytes).unwrap();
            // SAFETY: an open descriptor; F_GETFL only reads its flags.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_DIRECT, 0, "direct writes turned off again");
            assert_eq!(fs::read(&path).unwrap(), bytes, "{len} bytes");
        }
        // Where the file system takes direct writes, the whole blocks of a
        // large file do not go through the page cache: before anything
        // reads it, at most its last (partial) page is cached.
        let path = dir.path().join("uncached");
        let file = create_private(&path).unwrap();
        write_uncached(&file, &path, &patterned(large)).unwrap();
        let cached = cached_pages(&File::open(&path).unwrap(), large);
        if direct_here {
            assert!(cached <= 1, "{cached} pages of {path:?} cached");
        }
        assert_eq!(fs::read(&path).unwrap(), patterned(large));
    }

    /// How many pages of the first `len` bytes of `file` (open for reading)
    /// are in the page cache.
    fn cached_pages(file: &File, len: usize) -> usize {
        // SAFETY: a shared read-only mapping of an open file, only passed
        // to mincore (which touches none of its pages) and unmapped.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            resident.iter().filter(|r| **r & 1 == 1).count()
        }
    }
}
