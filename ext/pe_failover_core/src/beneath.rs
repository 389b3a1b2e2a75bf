//! Directories that another user may own, reached without following
//! symbolic links.
//!
//! The applier runs as root and writes into the live CA directory, which
//! belongs to puppetserver's user. A process of that user could put a
//! symlink in place of one of its directories between the applier's look at
//! the tree and its writes, and have root write or delete wherever the link
//! points. A [`Beneath`] opens each directory it is asked for once, one
//! component at a time from a trusted anchor (a directory such as
//! `/etc/puppetlabs/puppetserver` that only root can change), with
//! `O_NOFOLLOW`, and names every entry through the descriptor of the
//! directory that holds it (`/proc/self/fd/<n>/<name>`). A system call
//! given such a name reaches the entry in that very directory, whatever
//! has been swapped in above it since; the last component is the caller's
//! to treat without following (create with `O_EXCL`, `rename`, `unlink`,
//! `lchown`, ...). A symlink or a file where a directory is expected is an
//! [`ErrorKind::UnsafePath`] error, and nothing is done there.
//!
//! Errors of system calls on those names mention `/proc/self/fd/<n>`;
//! [`Beneath::explain`] puts the real directory back into the message.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustc_hash::FxHashMap;

use crate::fsutil::{self, PROC_FD};
use crate::{Error, ErrorKind, Result};

/// Open directories below trusted anchors; see the [module](self).
#[derive(Debug)]
pub(crate) struct Beneath {
    /// The trusted directories, each opened by its path.
    anchors: Vec<PathBuf>,
    /// Every directory opened, by its path when it was opened.
    open: FxHashMap<PathBuf, File>,
    /// Directories removed since they were opened: kept open, so that no
    /// later descriptor takes the number of a name made from theirs.
    retired: Vec<(PathBuf, File)>,
}

impl Beneath {
    /// Directories below `anchors`. Needs `/proc` mounted.
    pub(crate) fn new(anchors: impl IntoIterator<Item = PathBuf>) -> Result<Beneath> {
        if !Path::new(PROC_FD).is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{PROC_FD} is missing: the applier reaches the live files through their directories' descriptors there"
                ),
            )
            .with_path(PROC_FD)
            .with_hint("mount /proc (it is on every standard Linux system)"));
        }
        Ok(Beneath {
            anchors: anchors.into_iter().collect(),
            open: FxHashMap::default(),
            retired: Vec::new(),
        })
    }

    /// A name for `path` (an entry of a directory at or below an anchor)
    /// through the open descriptor of its directory. Its directory must
    /// exist ([`ErrorKind::NotFound`] otherwise).
    pub(crate) fn at(&mut self, path: &Path) -> Result<PathBuf> {
        self.at_existing(path)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "cannot reach {}: its directory does not exist",
                    path.display()
                ),
            )
            .with_path(path)
        })
    }

    /// As [`Beneath::at`], or none when `path`'s directory does not exist.
    pub(crate) fn at_existing(&mut self, path: &Path) -> Result<Option<PathBuf>> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(unsafe_name(path));
        };
        Ok(self
            .open_dir(dir, false)?
            .map(|f| fsutil::fd_path(f).join(name)))
    }

    /// The name of the existing directory `dir` through its descriptor: an
    /// entry's name there is this joined with the entry's (what
    /// [`Beneath::at`] gives, without looking the directory up again).
    pub(crate) fn held_dir(&mut self, dir: &Path) -> Result<PathBuf> {
        match self.open_dir(dir, false)? {
            Some(f) => Ok(fsutil::fd_path(f)),
            None => Err(Error::io(
                "open directory",
                dir,
                io::ErrorKind::NotFound.into(),
            )),
        }
    }

    /// Creates `dir` and the directories missing above it (down from its
    /// anchor; permission bits `0o777` less the umask, as `mkdir -p`).
    pub(crate) fn make_dirs(&mut self, dir: &Path) -> Result<()> {
        self.open_dir(dir, true).map(drop)
    }

    /// Syncs the directory `dir` so that the entries written in it are
    /// durable; nothing when it does not exist.
    pub(crate) fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        if let Some(file) = self.open_dir(dir, false)? {
            file.sync_all()
                .map_err(|e| Error::io("sync directory", dir, e))?;
        }
        Ok(())
    }

    /// The owner and group of the directory `dir`, if it exists.
    pub(crate) fn owner_of(&mut self, dir: &Path) -> Result<Option<(u32, u32)>> {
        let Some(file) = self.open_dir(dir, false)? else {
            return Ok(None);
        };
        let meta = file.metadata().map_err(|e| Error::io("stat", dir, e))?;
        Ok(Some((meta.uid(), meta.gid())))
    }

    /// Gives the existing directory `dir` permission bits `mode` and, when
    /// given, an owner.
    pub(crate) fn set_dir_meta(
        &mut self,
        dir: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let Some(file) = self.open_dir(dir, false)? else {
            return Err(Error::io(
                "set permissions of",
                dir,
                io::ErrorKind::NotFound.into(),
            ));
        };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", dir, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))
                .map_err(|e| Error::io("change owner of", dir, e))?;
        }
        Ok(())
    }

    /// Forgets the directory `path` and those below it (they were
    /// removed): a later request opens whatever is there then.
    pub(crate) fn forget(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .open
            .keys()
            .filter(|k| k.starts_with(path))
            .cloned()
            .collect();
        for k in gone {
            if let Some(file) = self.open.remove(&k) {
                self.retired.push((k, file));
            }
        }
    }

    /// `err` with every `/proc/self/fd/<n>` of a directory opened here
    /// replaced by that directory's path.
    pub(crate) fn explain(&self, err: Error) -> Error {
        let dirs: FxHashMap<RawFd, &Path> = self
            .open
            .iter()
            .map(|(p, f)| (f.as_raw_fd(), p.as_path()))
            .chain(
                self.retired
                    .iter()
                    .map(|(p, f)| (f.as_raw_fd(), p.as_path())),
            )
            .collect();
        err.map_paths(|text| real_names(text, &dirs))
    }

    /// The directory `dir`, opened down from its anchor without following
    /// links; none when it does not exist (unless `create`, which makes
    /// the missing directories).
    fn open_dir(&mut self, dir: &Path, create: bool) -> Result<Option<&File>> {
        if self.open.contains_key(dir) {
            return Ok(self.open.get(dir));
        }
        let anchor = self
            .anchors
            .iter()
            .filter(|a| dir.starts_with(a))
            .max_by_key(|a| a.components().count())
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("{} is outside the directories to write", dir.display()),
                )
                .with_path(dir)
            })?;
        let mut fd = match self.open.get(&anchor) {
            Some(f) => f.as_raw_fd(),
            None => {
                if create {
                    std::fs::create_dir_all(&anchor)
                        .map_err(|e| Error::io("create directory", &anchor, e))?;
                }
                match File::options()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&anchor)
                {
                    Ok(f) => {
                        let fd = f.as_raw_fd();
                        self.open.insert(anchor.clone(), f);
                        fd
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("open directory", &anchor, e)),
                }
            }
        };
        let below = dir.strip_prefix(&anchor).unwrap_or(Path::new(""));
        let mut here = anchor;
        for part in below.components() {
            let Component::Normal(name) = part else {
                return Err(unsafe_name(dir));
            };
            here.push(name);
            if let Some(f) = self.open.get(&here) {
                fd = f.as_raw_fd();
                continue;
            }
            let c_name = c_name(name, &here)?;
            let mut opened = open_below(fd, &c_name);
            if create
                && opened
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
            {
                // SAFETY: `fd` is an open directory of `self.open`; `c_name`
                // is NUL-terminated.
                let rc = unsafe { libc::mkdirat(fd, c_name.as_ptr(), 0o777) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::AlreadyExists {
                        return Err(Error::io("create directory", &here, err));
                    }
                }
                opened = open_below(fd, &c_name);
            }
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(not_a_directory(&here))
                }
                Err(e) => return Err(Error::io("open directory", &here, e)),
            };
            fd = file.as_raw_fd();
            self.open.insert(here.clone(), file);
        }
        Ok(self.open.get(dir))
    }
}

/// The directory `name` of the directory open as `fd`, not following a
/// symlink.
fn open_below(fd: RawFd, name: &CString) -> io::Result<File> {
    // SAFETY: `fd` is an open directory; `name` is NUL-terminated.
    let rc = unsafe {
        libc::openat(
            fd,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor just opened and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(rc) })
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| unsafe_name(path))
}

fn unsafe_name(path: &Path) -> Error {
    Error::new(
        ErrorKind::UnsafePath,
        format!("{} is not a plain path below its directory", path.display()),
    )
    .with_path(path)
}

fn not_a_directory(path: &Path) -> Error {
    Error::new(
        ErrorKind::UnsafePath,
        format!(
            "{} is no longer a directory: a symbolic link or a file was put in its place while the applier worked; nothing was written or deleted through it",
            path.display()
        ),
    )
    .with_path(path)
    .with_hint(
        "apply again: it compares the whole live CA and puts the directory back; \
         if it happens again, find out what changes the live CA directory",
    )
}

/// `text` with each `/proc/self/fd/<n>` whose `n` is in `dirs` replaced by
/// that directory's path.
fn real_names(text: &str, dirs: &FxHashMap<RawFd, &Path>) -> String {
    let prefix = &format!("{PROC_FD}/");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i]);
        let after = &rest[i + prefix.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits]
            .parse::<RawFd>()
            .ok()
            .and_then(|n| dirs.get(&n))
        {
            Some(dir) => out.push_str(&dir.display().to_string()),
            None => out.push_str(&rest[i..i + prefix.len() + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn names_reach_the_directory_opened_even_after_a_link_took_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let anchor = tmp.path().join("anchor");
        let dir = anchor.join("ca/signed");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        let mut b = Beneath::new([anchor.clone()]).unwrap();
        let name = b.at(&dir.join("x.pem")).unwrap();
        // The directory is moved away and a link put in its place.
        fs::rename(&dir, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        fs::write(&name, "cert").unwrap();
        assert!(tmp.path().join("moved/x.pem").is_file());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        // Asked again, the link is refused, not followed.
        let mut b = Beneath::new([anchor.clone()]).unwrap();
        let err = b.at(&dir.join("y.pem")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath);
        assert!(err.message().contains("no longer a directory"), "{err}");
        let err = b.make_dirs(&dir.join("sub")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn missing_directories_are_none_or_made_and_errors_name_real_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let anchor = tmp.path().join("anchor");
        let mut b = Beneath::new([anchor.clone()]).unwrap();
        let file = anchor.join("a/b/c.pem");
        assert_eq!(b.at_existing(&file).unwrap(), None);
        assert_eq!(b.at(&file).unwrap_err().kind(), ErrorKind::NotFound);
        b.make_dirs(&anchor.join("a/b")).unwrap();
        assert!(anchor.join("a/b").is_dir());
        let name = b.at(&file).unwrap();
        let err = Error::io("open", &name, fs::File::open(&name).unwrap_err());
        let err = b.explain(err);
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(err.path(), Some(file.as_path()));
        // A path outside every anchor is a mistake of the caller.
        let err = b.at(&tmp.path().join("x")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    #[test]
    fn only_descriptors_of_opened_directories_are_renamed() {
        let mut dirs = FxHashMap::default();
        dirs.insert(7, Path::new("/etc/ca"));
        assert_eq!(
            real_names(
                "cannot open /proc/self/fd/7/x: no; /proc/self/fd/71/y",
                &dirs
            ),
            "cannot open /etc/ca/x: no; /proc/self/fd/71/y"
        );
        assert_eq!(real_names("/proc/self/fd/", &dirs), "/proc/self/fd/");
    }
}
