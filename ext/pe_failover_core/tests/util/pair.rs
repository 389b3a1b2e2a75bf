//! Two primaries on one disk, for replication tests: an active one with a
//! Puppet-shaped CA (synthetic files), a passive one with its own host
//! identity and its own CA, state directories for both, and helpers to
//! sync them over a socketpair, a child process, or a faulty stream.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use pe_failover_core::apply::{Applier, ApplyReport, Owner};
use pe_failover_core::diff::{content_fields, diff_with};
use pe_failover_core::exclude::Excludes;
use pe_failover_core::protocol::{Duplex, ReceiveReport, Receiver, Sender, SyncReport};
use pe_failover_core::replset::{CaPaths, ReplicatedSet, SetScan};
use pe_failover_core::snapshot::{Manifest, Scanner};
use pe_failover_core::Result;

pub const ACTIVE: &str = "a.example.com";
pub const PASSIVE: &str = "b.example.com";

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub a_ssl: PathBuf,
    pub a_cadir: PathBuf,
    pub a_state: PathBuf,
    pub b_ssl: PathBuf,
    pub b_cadir: PathBuf,
    pub b_state: PathBuf,
    pub role_file: PathBuf,
    pub reload_log: PathBuf,
    pub owner: Owner,
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn cert(name: &str, serial: u64) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\nsubject={name} serial={serial:#06x}\n{}\n-----END CERTIFICATE-----\n",
        "M".repeat(1200)
    )
}

impl Pair {
    /// An active CA with `certs` signed certificates, and a passive primary
    /// whose own CA signed its own host certificate.
    pub fn new(certs: usize) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let p = Pair {
            a_ssl: root.join("a/ssl"),
            a_cadir: root.join("a/puppetserver/ca"),
            a_state: root.join("a/state"),
            b_ssl: root.join("b/ssl"),
            b_cadir: root.join("b/puppetserver/ca"),
            b_state: root.join("b/state"),
            role_file: root.join("b/facts.d/pe_failover.yaml"),
            reload_log: root.join("reloads.log"),
            owner: Owner::Inherit,
            dir,
        };
        // Active: CA and host identity.
        let ca = &p.a_cadir;
        fs::create_dir_all(ca.join("signed")).unwrap();
        fs::set_permissions(ca, fs::Permissions::from_mode(0o750)).unwrap();
        write(&ca.join("ca_crt.pem"), cert("Puppet CA: a", 1), 0o644);
        write(
            &ca.join("ca_key.pem"),
            "-----BEGIN RSA PRIVATE KEY-----\nACTIVE CA KEY\n-----END RSA PRIVATE KEY-----\n",
            0o640,
        );
        write(&ca.join("ca_pub.pem"), "public\n", 0o644);
        write(&ca.join("infra_crl.pem"), "infra crl\n", 0o644);
        write(&ca.join("infra_inventory.txt"), "", 0o644);
        write(&ca.join("infra_serials"), "", 0o644);
        write(&ca.join("serial"), "0002\n", 0o644);
        write(&ca.join("inventory.txt"), "", 0o644);
        write(&ca.join("ca_crl.pem"), "CRL v1\n", 0o644);
        write(&p.a_ssl.join("crl.pem"), "CRL v1\n", 0o644);
        write(
            &p.a_ssl.join("certs/ca.pem"),
            cert("Puppet CA: a", 1),
            0o644,
        );
        write(
            &p.a_ssl.join(format!("certs/{ACTIVE}.pem")),
            cert(ACTIVE, 2),
            0o644,
        );
        write(
            &p.a_ssl.join(format!("private_keys/{ACTIVE}.pem")),
            "ACTIVE HOST KEY\n",
            0o640,
        );
        for i in 0..certs {
            p.sign(&format!("node{i}.example.com"));
        }
        // Passive: its own identity and its own CA (it signed itself).
        let b = &p.b_cadir;
        fs::create_dir_all(b.join("signed")).unwrap();
        write(&b.join("ca_crt.pem"), cert("Puppet CA: b", 1), 0o644);
        write(&b.join("ca_key.pem"), "PASSIVE CA KEY\n", 0o640);
        write(&b.join("serial"), "0003\n", 0o644);
        write(
            &b.join(format!("signed/{PASSIVE}.pem")),
            cert(PASSIVE, 2),
            0o644,
        );
        write(&p.b_ssl.join("crl.pem"), "passive crl\n", 0o644);
        write(
            &p.b_ssl.join("certs/ca.pem"),
            cert("Puppet CA: b", 1),
            0o644,
        );
        write(
            &p.b_ssl.join(format!("certs/{PASSIVE}.pem")),
            cert(PASSIVE, 2),
            0o644,
        );
        write(
            &p.b_ssl.join(format!("private_keys/{PASSIVE}.pem")),
            "PASSIVE HOST KEY\n",
            0o640,
        );
        write(
            &p.b_ssl.join(format!("public_keys/{PASSIVE}.pem")),
            "pub\n",
            0o644,
        );
        write(&p.role_file, "pe_failover_mode: passive\n", 0o644);
        p
    }

    pub fn set(&self) -> ReplicatedSet {
        ReplicatedSet::new(&self.a_ssl).cadir(&self.a_cadir)
    }

    pub fn sender(&self) -> Sender {
        self.sender_of(self.set())
    }

    /// The active's sender to the passive, shipping `set`.
    pub fn sender_of(&self, set: ReplicatedSet) -> Sender {
        Sender::new(set, PASSIVE, &self.a_state).sender_host(ACTIVE)
    }

    pub fn receiver(&self) -> Receiver {
        Receiver::new(&self.b_state)
            .host(PASSIVE)
            .role_file(&self.role_file)
    }

    pub fn live(&self) -> CaPaths {
        CaPaths {
            cadir: self.b_cadir.clone(),
            ssldir: self.b_ssl.clone(),
        }
    }

    pub fn applier(&self) -> Applier {
        Applier::new(&self.b_state, self.live())
            .owner(self.owner)
            .role_file(&self.role_file)
            .reload_command([
                "sh".to_string(),
                "-c".to_string(),
                format!("echo reload >> '{}'", self.reload_log.display()),
            ])
    }

    pub fn reloads(&self) -> usize {
        fs::read_to_string(&self.reload_log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    // ---- CA operations on the active primary (Puppet's file effects) ----

    fn next_serial(&self) -> u64 {
        let text = fs::read_to_string(self.a_cadir.join("serial")).unwrap();
        let serial = u64::from_str_radix(text.trim(), 16).unwrap();
        write(
            &self.a_cadir.join("serial"),
            format!("{:04X}\n", serial + 1),
            0o644,
        );
        serial
    }

    /// Signing writes signed/<name>.pem, bumps serial, appends inventory.
    pub fn sign(&self, name: &str) {
        let serial = self.next_serial();
        write(
            &self.a_cadir.join(format!("signed/{name}.pem")),
            cert(name, serial),
            0o644,
        );
        let mut inv = fs::OpenOptions::new()
            .append(true)
            .open(self.a_cadir.join("inventory.txt"))
            .unwrap();
        writeln!(
            inv,
            "{serial:#06x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN={name}"
        )
        .unwrap();
    }

    /// Revoking rewrites ca_crl.pem only.
    pub fn revoke(&self, name: &str) {
        let path = self.a_cadir.join("ca_crl.pem");
        let mut crl = fs::read_to_string(&path).unwrap();
        crl.push_str(&format!("revoked {name}\n"));
        write(&path, crl, 0o644);
    }

    /// Cleaning revokes and removes signed/<name>.pem.
    pub fn clean(&self, name: &str) {
        self.revoke(name);
        let _ = fs::remove_file(self.a_cadir.join(format!("signed/{name}.pem")));
    }

    /// The active's agent run copies the CRL into its ssl dir.
    pub fn refresh_host_crl(&self) {
        fs::copy(self.a_cadir.join("ca_crl.pem"), self.a_ssl.join("crl.pem")).unwrap();
    }

    // ---- syncing ----

    /// `receiver` on one end of a socketpair, in a thread of its own, and
    /// `send` on the other.
    fn over_pair(
        receiver: Receiver,
        send: impl FnOnce(UnixStream) -> Result<SyncReport>,
    ) -> (Result<SyncReport>, Result<ReceiveReport>) {
        let (a, b) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || receiver.receive(b));
        let sent = send(a);
        (sent, handle.join().expect("receiver thread"))
    }

    /// Sender and receiver in two threads over a socketpair.
    pub fn sync_with(
        &self,
        sender: Sender,
        receiver: Receiver,
    ) -> (Result<SyncReport>, Result<ReceiveReport>) {
        Self::over_pair(receiver, |a| sender.sync(a))
    }

    /// Sender and receiver over a socketpair, the sender's end wrapped.
    pub fn sync_wrapped<W, F>(&self, wrap: F) -> (Result<SyncReport>, Result<ReceiveReport>)
    where
        W: Read + Write,
        F: FnOnce(UnixStream) -> W,
    {
        Self::over_pair(self.receiver(), |a| self.sender().sync(wrap(a)))
    }

    /// Sender and receiver over a socketpair, the sender shipping `scan`,
    /// made before.
    pub fn sync_scanned(&self, scan: &SetScan) -> (Result<SyncReport>, Result<ReceiveReport>) {
        Self::over_pair(self.receiver(), |a| self.sender().sync_scanned(scan, a))
    }

    pub fn sync(&self) -> SyncReport {
        let (s, r) = self.sync_with(self.sender(), self.receiver());
        let r = r.unwrap_or_else(|e| panic!("receiver failed: {e}"));
        let s = s.unwrap_or_else(|e| panic!("sender failed: {e}"));
        let _ = r;
        s
    }

    pub fn apply(&self) -> ApplyReport {
        self.applier()
            .run()
            .unwrap_or_else(|e| panic!("apply failed: {e}"))
    }

    pub fn sync_and_apply(&self) -> (SyncReport, ApplyReport) {
        let s = self.sync();
        let a = self.apply();
        (s, a)
    }

    /// The receiver as a child process speaking on stdin/stdout.
    pub fn spawn_receiver(&self) -> Child {
        self.spawn_receiver_as(None)
    }

    /// The receiver as a child process, optionally as another user
    /// (`uid`, `gid`), like the transfer user of a forced command.
    pub fn spawn_receiver_as(&self, user: Option<(u32, u32)>) -> Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pe_failover_receive"));
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        cmd.arg("--state")
            .arg(&self.b_state)
            .arg("--role-file")
            .arg(&self.role_file)
            .arg("--host")
            .arg(PASSIVE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the receiver binary")
    }

    /// Syncs to a receiver child process; returns the sender's result, the
    /// child's exit status and its stderr.
    pub fn sync_child(&self) -> (Result<SyncReport>, std::process::ExitStatus, String) {
        self.sync_child_as(None)
    }

    /// [`sync_child`](Self::sync_child) with the receiver running as `user`.
    pub fn sync_child_as(
        &self,
        user: Option<(u32, u32)>,
    ) -> (Result<SyncReport>, std::process::ExitStatus, String) {
        let mut child = self.spawn_receiver_as(user);
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let sent = self.sender().sync(Duplex::new(stdout, stdin));
        let output = child.wait_with_output().unwrap();
        (
            sent,
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    // ---- checks ----

    pub fn scan(dir: &Path) -> Manifest {
        Scanner::new(dir).scan().unwrap().into_complete().unwrap()
    }

    /// The applier refuses the pending transactions as corrupt and removes
    /// them; after `after_refusal`, the next sync exchanges manifests and
    /// the replica converges. Returns the refusal.
    pub fn assert_discarded_and_resent(
        &self,
        after_refusal: impl FnOnce(&Pair),
    ) -> pe_failover_core::Error {
        let e = self.applier().run().unwrap_err();
        assert_eq!(e.kind(), pe_failover_core::ErrorKind::Corrupt, "{e}");
        assert!(self.incoming().is_empty());
        after_refusal(self);
        let (s, _) = self.sync_and_apply();
        assert!(s.stats.manifest_exchanged);
        self.assert_converged(&[PASSIVE]);
        e
    }

    /// The passive's live cadir has the active's contents and modes, apart
    /// from the passive's own certificates in `signed/` (`kept`).
    pub fn assert_converged(&self, kept: &[&str]) {
        let a = Pair::scan(&self.a_cadir);
        let b = Pair::scan(&self.b_cadir);
        let kept: Vec<String> = kept.iter().map(|k| format!("signed/{k}.pem")).collect();
        let cs = diff_with(&a, &b, &Excludes::default(), content_fields);
        let added: Vec<&str> = cs
            .added_paths()
            .filter(|p| !kept.iter().any(|k| k == p))
            .collect();
        assert!(
            added.is_empty() && cs.removed.is_empty() && cs.changed.is_empty(),
            "live cadir differs from the active's: only on passive {added:?}, only on active {:?}, changed {:?}",
            cs.removed_paths().collect::<Vec<_>>(),
            cs.changed_paths().collect::<Vec<_>>()
        );
        for k in &kept {
            assert!(self.b_cadir.join(k).is_file(), "{k} must be kept");
        }
        for f in ["crl.pem", "certs/ca.pem"] {
            assert_eq!(
                fs::read(self.a_ssl.join(f)).unwrap(),
                fs::read(self.b_ssl.join(f)).unwrap(),
                "ssl/{f}"
            );
        }
    }

    /// The passive's own host files are as the fixture made them.
    pub fn assert_host_files_untouched(&self) {
        assert_eq!(
            fs::read_to_string(self.b_ssl.join(format!("private_keys/{PASSIVE}.pem"))).unwrap(),
            "PASSIVE HOST KEY\n"
        );
        assert_eq!(
            fs::read_to_string(self.b_ssl.join(format!("certs/{PASSIVE}.pem"))).unwrap(),
            cert(PASSIVE, 2)
        );
        assert!(self
            .b_ssl
            .join(format!("public_keys/{PASSIVE}.pem"))
            .is_file());
        assert!(!self
            .b_ssl
            .join(format!("private_keys/{ACTIVE}.pem"))
            .exists());
        assert!(!self.b_ssl.join(format!("certs/{ACTIVE}.pem")).exists());
    }

    /// Names in `<state>/incoming/` other than the receiver's own files.
    pub fn incoming(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.b_state.join("incoming")) {
            Ok(r) => r
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                // (Hidden: the temporary file of a status being written.)
                .filter(|n| n != "receiver.status.json" && n != "receive.lock")
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    pub fn symlink_old_cadir(&self) {
        symlink(&self.a_cadir, self.a_ssl.join("ca")).unwrap();
    }
}

// ---- stream wrappers ----

/// Counts the bytes written and read through a stream.
pub struct Counting<S> {
    pub inner: S,
    pub written: Arc<AtomicU64>,
    pub read: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> (Self, Arc<AtomicU64>, Arc<AtomicU64>) {
        let w = Arc::new(AtomicU64::new(0));
        let r = Arc::new(AtomicU64::new(0));
        (
            Counting {
                inner,
                written: w.clone(),
                read: r.clone(),
            },
            w,
            r,
        )
    }
}

impl<S: Read> Read for Counting<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<S: Write> Write for Counting<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a [`CutAfter`] does when it cuts.
pub type CutAction<S> = Box<dyn FnOnce(&mut S) + Send>;

/// Lets `limit` bytes through, then calls `cut` (close the socket, kill the
/// peer) and fails every later write, like a connection that dropped.
pub struct CutAfter<S> {
    pub inner: S,
    pub left: usize,
    pub cut: Option<CutAction<S>>,
}

impl<S> CutAfter<S> {
    pub fn new(inner: S, limit: usize, cut: impl FnOnce(&mut S) + Send + 'static) -> Self {
        CutAfter {
            inner,
            left: limit,
            cut: Some(Box::new(cut)),
        }
    }
}

impl<S: Read> Read for CutAfter<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cut.is_none() {
            return Ok(0);
        }
        self.inner.read(buf)
    }
}

impl<S: Write> Write for CutAfter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            if let Some(cut) = self.cut.take() {
                cut(&mut self.inner);
            }
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection cut by the test",
            ));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.write(&buf[..n])?;
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Flips the first payload byte of the first `DATA` frame written: file
/// contents damaged in transit, framing intact.
pub struct FlipFirstData<S> {
    pub inner: S,
    header: Vec<u8>,
    remaining: usize,
    in_data: bool,
    done: bool,
}

impl<S> FlipFirstData<S> {
    pub fn new(inner: S) -> Self {
        FlipFirstData {
            inner,
            header: Vec::new(),
            remaining: 0,
            in_data: false,
            done: false,
        }
    }
}

impl<S: Read> Read for FlipFirstData<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Write> Write for FlipFirstData<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = buf.to_vec();
        for b in out.iter_mut() {
            if self.remaining == 0 {
                self.header.push(*b);
                if self.header.len() == 5 {
                    self.in_data = self.header[0] == 11;
                    self.remaining = u32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]) as usize;
                    self.header.clear();
                }
            } else {
                if self.in_data && !self.done {
                    *b ^= 0xff;
                    self.done = true;
                }
                self.remaining -= 1;
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
