//! Change notification for directory trees (Linux inotify), debounced and
//! coalesced.
//!
//! A [`Watcher`] watches whole trees (new subdirectories are added as they
//! appear) and single directories. [`Watcher::wait`] blocks until something
//! changes, then keeps collecting events until the tree has been quiet for
//! the debounce interval, or the maximum delay since the first event has
//! passed, and returns everything seen as one [`Batch`]. A burst of a
//! thousand certificate signings therefore becomes a handful of batches,
//! each followed by one sync.
//!
//! Events can be lost (the kernel queue overflows, or a change happens while
//! no watcher runs); callers must treat a batch as a hint and rescan, and
//! should also rescan periodically. [`Batch::overflow`] says when the kernel
//! dropped events.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::cancel::CancelToken;
use crate::{Error, ErrorKind, Result};

/// What one call to [`Watcher::wait`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Changed paths (absolute), deduplicated and sorted.
    pub paths: BTreeSet<PathBuf>,
    /// The kernel dropped events: rescan everything.
    pub overflow: bool,
    /// A watched root itself was deleted or moved away.
    pub root_gone: bool,
    /// Number of raw events coalesced into this batch.
    pub events: u64,
    /// The wait ended early because a [`Waker`] was woken.
    pub woken: bool,
}

impl Batch {
    /// Whether nothing happened (the wait timed out).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.overflow && !self.root_gone
    }
}

/// Timing of [`Watcher::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time after the last event before a batch is returned.
    /// Default: 150 ms.
    pub quiet: Duration,
    /// Longest time from the first event of a batch to its return, so a
    /// continuous stream of changes still yields regular batches.
    /// Default: 1 s.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(150),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Ends a [`Watcher::wait_or_woken`] early, from another thread: the
/// batch collected so far (events the kernel has queued included) is
/// returned at once. Clones share one event counter (an `eventfd`).
#[derive(Clone, Debug)]
pub struct Waker(std::sync::Arc<std::os::fd::OwnedFd>);

impl Waker {
    /// A waker nobody has woken yet.
    pub fn new() -> Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; a valid descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot create an eventfd: {}", io::Error::last_os_error()),
            ));
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        Ok(Waker(std::sync::Arc::new(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd)
        })))
    }

    /// Wakes the wait (now, or the next one if none is under way).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an owned eventfd. A
        // full counter (EAGAIN) already means "woken".
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the counter; whether it had been woken.
    fn take(&self) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from an owned,
        // non-blocking eventfd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n == 8
    }
}

/// A set of watched trees and directories.
pub struct Watcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, (PathBuf, bool)>,
    roots: Vec<PathBuf>,
    buffer: Vec<u8>,
}

fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

impl Watcher {
    /// A watcher with nothing watched yet.
    pub fn new() -> Result<Self> {
        let inotify = Inotify::init().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "cannot start inotify: {e} (raise fs.inotify.max_user_instances if it is exhausted)"
                ),
            )
        })?;
        Ok(Watcher {
            inotify,
            dirs: HashMap::new(),
            roots: Vec::new(),
            buffer: vec![0u8; 64 * 1024],
        })
    }

    /// Watches `root` and every directory below it (symlinks not followed).
    pub fn add_tree(&mut self, root: impl AsRef<Path>) -> Result<()> {
        let root = root.as_ref().to_path_buf();
        self.add_dir_inner(&root, true)?;
        self.roots.push(root);
        Ok(())
    }

    /// Watches the entries of `dir` only, not its subdirectories.
    pub fn add_dir(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref().to_path_buf();
        self.add_dir_inner(&dir, false)?;
        self.roots.push(dir);
        Ok(())
    }

    /// The directories being watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    fn add_dir_inner(&mut self, dir: &Path, recursive: bool) -> Result<()> {
        let wd = self.inotify.watches().add(dir, mask()).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
                " (raise fs.inotify.max_user_watches)"
            } else {
                ""
            };
            Error::io("watch", dir, e).with_hint(format!("inotify could not watch it{hint}"))
        })?;
        self.dirs.insert(wd, (dir.to_path_buf(), recursive));
        if recursive {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("list directory", dir, e)),
            };
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    // A directory that vanished meanwhile is not an error.
                    match self.add_dir_inner(&entry.path(), true) {
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        other => other?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever when `None`) for changes, then
    /// debounces as `debounce` says and returns the batch. Returns an empty
    /// batch on timeout, and `Cancelled` when `cancel` is tripped.
    pub fn wait(
        &mut self,
        debounce: Debounce,
        timeout: Option<Duration>,
        cancel: &CancelToken,
    ) -> Result<Batch> {
        self.wait_or_woken(debounce, timeout, cancel, None)
    }

    /// [`wait`](Self::wait), ended early by `waker`: then the events queued
    /// so far are returned at once (perhaps none), with [`Batch::woken`] set.
    pub fn wait_or_woken(
        &mut self,
        debounce: Debounce,
        timeout: Option<Duration>,
        cancel: &CancelToken,
        waker: Option<&Waker>,
    ) -> Result<Batch> {
        let mut batch = Batch::default();
        let started = Instant::now();
        // Phase 1: the first event.
        loop {
            cancel.check()?;
            let slice = Duration::from_millis(100);
            let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
            if remaining == Some(Duration::ZERO) {
                return Ok(batch);
            }
            let wait_for = remaining.map_or(slice, |r| r.min(slice));
            let (events, woken) = self.poll(wait_for, waker)?;
            if events || woken {
                self.drain(&mut batch)?;
                batch.woken = woken;
                if woken {
                    return Ok(batch);
                }
                if !batch.is_empty() {
                    break;
                }
            }
        }
        // Phase 2: keep collecting until quiet or the maximum delay.
        let first = Instant::now();
        let mut last = first;
        loop {
            cancel.check()?;
            let since_first = first.elapsed();
            if since_first >= debounce.max_delay {
                break;
            }
            let quiet_left = debounce.quiet.saturating_sub(last.elapsed());
            if quiet_left.is_zero() {
                break;
            }
            let wait_for = quiet_left.min(debounce.max_delay - since_first);
            let (events, woken) = self.poll(wait_for, waker)?;
            if events || woken {
                let before = batch.events;
                self.drain(&mut batch)?;
                if batch.events > before {
                    last = Instant::now();
                }
                if woken {
                    batch.woken = true;
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Waits up to `wait` for inotify events or `waker`; says which came
    /// (a wake is taken, so the next wait does not see it again).
    fn poll(&self, wait: Duration, waker: Option<&Waker>) -> Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: waker.map_or(-1, |w| w.0.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two valid pollfds (a negative fd is ignored) for the
        // duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok((false, false));
            }
            return Err(Error::new(
                ErrorKind::Io,
                format!("waiting for inotify events failed: {err}"),
            ));
        }
        let woken = fds[1].revents != 0 && waker.is_some_and(Waker::take);
        Ok((fds[0].revents != 0, woken))
    }

    fn drain(&mut self, batch: &mut Batch) -> Result<()> {
        loop {
            let mut buffer = std::mem::take(&mut self.buffer);
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.buffer = buffer;
                    return Ok(());
                }
                Err(e) => {
                    self.buffer = buffer;
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("reading inotify events failed: {e}"),
                    ));
                }
            };
            let mut new_dirs = Vec::new();
            let mut gone = Vec::new();
            let mut any = false;
            for event in events {
                any = true;
                batch.events += 1;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    batch.overflow = true;
                    continue;
                }
                let Some((dir, recursive)) = self.dirs.get(&event.wd).cloned() else {
                    continue;
                };
                if event.mask.contains(EventMask::IGNORED) {
                    gone.push(event.wd.clone());
                    continue;
                }
                if event
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    if self.roots.contains(&dir) {
                        batch.root_gone = true;
                    }
                    batch.paths.insert(dir.clone());
                    continue;
                }
                let path = match event.name {
                    Some(name) => dir.join(name as &OsStr),
                    None => dir.clone(),
                };
                if recursive
                    && event.mask.contains(EventMask::ISDIR)
                    && event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                {
                    new_dirs.push(path.clone());
                }
                batch.paths.insert(path);
            }
            self.buffer = buffer;
            for wd in gone {
                self.dirs.remove(&wd);
            }
            for dir in new_dirs {
                // Files created in it before the watch existed are covered
                // by reporting the directory itself.
                match self.add_dir_inner(&dir, true) {
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            if !any {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_millis(600),
        }
    }

    #[test]
    fn a_waker_ends_the_wait_at_once_with_the_events_queued_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        w.add_tree(dir.path()).unwrap();
        let cancel = CancelToken::new();
        let waker = Waker::new().unwrap();
        let slow = Debounce {
            quiet: Duration::from_secs(30),
            max_delay: Duration::from_secs(60),
        };
        let wait = |w: &mut Watcher| {
            let started = Instant::now();
            let b = w
                .wait_or_woken(slow, Some(Duration::from_secs(30)), &cancel, Some(&waker))
                .unwrap();
            (b, started.elapsed())
        };

        // Woken before any event: an empty batch, at once.
        waker.wake();
        let (b, took) = wait(&mut w);
        assert!(b.woken && b.is_empty(), "{b:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");

        // A change, then a wake from another thread while the batch is
        // being debounced: the change comes with the early return.
        fs::write(dir.path().join("a.pem"), "a").unwrap();
        let other = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            other.wake();
        });
        let (b, took) = wait(&mut w);
        t.join().unwrap();
        assert!(b.woken, "{b:?}");
        assert!(b.paths.contains(&dir.path().join("a.pem")), "{b:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");

        // A wake is taken once: the next wait times out as usual.
        let b = w
            .wait_or_woken(
                slow,
                Some(Duration::from_millis(200)),
                &cancel,
                Some(&waker),
            )
            .unwrap();
        assert!(!b.woken && b.is_empty(), "{b:?}");
    }

    #[test]
    fn reports_writes_renames_and_deletes_in_trees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ca");
        fs::create_dir_all(root.join("signed")).unwrap();
        let mut w = Watcher::new().unwrap();
        w.add_tree(&root).unwrap();
        let cancel = CancelToken::new();
        assert!(w
            .wait(quick(), Some(Duration::from_millis(150)), &cancel)
            .unwrap()
            .is_empty());

        fs::write(root.join("signed/a.pem"), "a").unwrap();
        let b = w
            .wait(quick(), Some(Duration::from_secs(5)), &cancel)
            .unwrap();
        assert!(b.paths.contains(&root.join("signed/a.pem")), "{b:?}");

        fs::write(root.join("serial.tmp"), "x").unwrap();
        fs::rename(root.join("serial.tmp"), root.join("serial")).unwrap();
        let b = w
            .wait(quick(), Some(Duration::from_secs(5)), &cancel)
            .unwrap();
        assert!(b.paths.contains(&root.join("serial")), "{b:?}");

        fs::remove_file(root.join("signed/a.pem")).unwrap();
        let b = w
            .wait(quick(), Some(Duration::from_secs(5)), &cancel)
            .unwrap();
        assert!(b.paths.contains(&root.join("signed/a.pem")), "{b:?}");
    }

    #[test]
    fn new_subdirectories_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        w.add_tree(dir.path()).unwrap();
        let cancel = CancelToken::new();
        fs::create_dir(dir.path().join("new")).unwrap();
        w.wait(quick(), Some(Duration::from_secs(5)), &cancel)
            .unwrap();
        fs::write(dir.path().join("new/x"), "x").unwrap();
        let b = w
            .wait(quick(), Some(Duration::from_secs(5)), &cancel)
            .unwrap();
        assert!(b.paths.contains(&dir.path().join("new/x")), "{b:?}");
    }

    #[test]
    fn a_burst_is_coalesced_into_few_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        w.add_tree(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            for i in 0..1000 {
                fs::write(root.join(format!("n{i}.pem")), "cert").unwrap();
            }
        });
        let cancel = CancelToken::new();
        let mut batches = 0;
        let mut seen = BTreeSet::new();
        while seen.len() < 1000 {
            let b = w
                .wait(quick(), Some(Duration::from_secs(10)), &cancel)
                .unwrap();
            assert!(!b.is_empty(), "events stopped after {} files", seen.len());
            assert!(!b.overflow);
            batches += 1;
            seen.extend(b.paths);
        }
        writer.join().unwrap();
        // 1000 writes: a handful of batches, far fewer than writes.
        assert!(batches <= 20, "{batches} batches");
    }

    #[test]
    fn cancellation_and_missing_roots() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        let err = w.add_tree(dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        w.add_dir(dir.path()).unwrap();
        let cancel = CancelToken::new();
        cancel.cancel();
        let err = w.wait(quick(), None, &cancel).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
    }
}
