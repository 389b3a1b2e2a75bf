//! A real OpenSSH `sshd` on 127.0.0.1 for integration tests.
//!
//! Each [`Sshd`] runs `/usr/sbin/sshd -D -e -f <config>` from its own
//! temporary directory: its own ed25519 host key, its own
//! `authorized_keys`, a free port on 127.0.0.1, and nothing from
//! `/etc/ssh`. Keys are only accepted with the options a test gives
//! (`restrict,command="..."`, optionally `from="..."`), exactly as the
//! module's authorized_keys entry on the passive will be written.
//!
//! ```ignore
//! let sshd = Sshd::start();
//! let key = sshd.client("sender", "cat");          // forced command `cat`
//! let session = sshd.target(&key).connect()?;       // pinned host key
//! ```
//!
//! The server and every session process it forked are stopped by PID
//! (TERM, then KILL) when the value is dropped. A forced command that
//! outlives its connection (`sleep 60` after the client hung up) has left
//! sshd's process tree by then and is out of reach: prefer commands that end
//! at end of input (`cat >/dev/null` is a silent one). Needs root (sshd's
//! privilege separation) and `openssh-server` + `openssh-client`.
#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pe_failover_core::ssh::SshTarget;

/// Where Debian's openssh-server puts the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Options for [`Sshd`] before it starts.
#[derive(Clone, Debug, Default)]
pub struct SshdBuilder {
    user: Option<String>,
    config: Vec<String>,
}

impl SshdBuilder {
    /// The only user allowed to log in (default: the user running the
    /// tests, root). That user needs a shell and an unlocked account
    /// (with `UsePAM no`, sshd refuses a `!` password: `usermod -p '*' USER`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// An extra `sshd_config` line (e.g. `"MaxSessions 1"`).
    pub fn config_line(mut self, line: &str) -> Self {
        self.config.push(line.to_string());
        self
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> Sshd {
        Sshd::start_with(self)
    }
}

/// A client key pair made by `ssh-keygen -t ed25519`.
#[derive(Clone, Debug)]
pub struct ClientKey {
    /// The private key file (0600, OpenSSH format, no passphrase).
    pub private: PathBuf,
    /// The public key file (`.pub`).
    pub public: PathBuf,
}

impl ClientKey {
    /// `ssh-ed25519 AAAA... comment`.
    pub fn public_line(&self) -> String {
        fs::read_to_string(&self.public)
            .expect("read client public key")
            .trim()
            .to_string()
    }
}

/// A running sshd; stopped on drop.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    user: String,
    host_key: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    log: PathBuf,
}

impl Sshd {
    /// Starts a server that lets the current user in.
    pub fn start() -> Sshd {
        SshdBuilder::default().start()
    }

    /// Options before starting.
    pub fn builder() -> SshdBuilder {
        SshdBuilder::default()
    }

    fn start_with(options: SshdBuilder) -> Sshd {
        require_tool(SSHD, "openssh-server");
        require_tool("/usr/bin/ssh-keygen", "openssh-client");
        // sshd's privilege separation directory; Debian's package makes it at
        // boot, containers often lack it.
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() {
            fs::create_dir_all(privsep).expect("create /run/sshd");
            fs::set_permissions(privsep, fs::Permissions::from_mode(0o755))
                .expect("chmod /run/sshd");
        }

        let dir = tempfile::Builder::new()
            .prefix("pe_failover-sshd-")
            .tempdir()
            .expect("temp dir for sshd");
        // Readable by a non-root login user: sshd reads authorized_keys as it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let host_key = dir.path().join("ssh_host_ed25519_key");
        keygen(&host_key, "pe_failover test sshd");
        // The sessions' home (see `write_config`): empty, so no login
        // user's start-up files run.
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        let authorized_keys = dir.path().join("authorized_keys");
        fs::write(&authorized_keys, "").unwrap();
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644)).unwrap();
        let user = options.user.clone().unwrap_or_else(current_user);

        let mut sshd = Sshd {
            known_hosts: dir.path().join("known_hosts"),
            log: dir.path().join("sshd.log"),
            dir,
            port: 0,
            child: None,
            user,
            host_key,
            authorized_keys,
        };
        // A free port can be taken by someone else before sshd binds it:
        // try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            sshd.port = free_port();
            sshd.write_config(&options.config);
            match sshd.spawn_and_wait() {
                Ok(()) => {
                    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key_line());
                    fs::write(&sshd.known_hosts, line + "\n").unwrap();
                    return sshd;
                }
                Err(log) => last_log = log,
            }
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// The configuration. `HOME` is set to an empty directory: sshd runs a
    /// forced command with the login user's shell, and bash reads
    /// `~/.bashrc` even then (a build option Debian uses). The root account
    /// of a development machine may start slow tools there (pyenv takes a
    /// lock file); a session killed inside them leaves that lock behind and
    /// later sessions wait for it.
    fn write_config(&self, extra: &[String]) {
        let d = self.dir.path().display();
        let mut config = format!(
            "# Generated by the pe_failover test harness; nothing from /etc/ssh.\n\
             Port {port}\n\
             ListenAddress 127.0.0.1\n\
             AddressFamily inet\n\
             HostKey {d}/ssh_host_ed25519_key\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             HostbasedAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             AllowTcpForwarding no\n\
             AllowAgentForwarding no\n\
             X11Forwarding no\n\
             PermitTunnel no\n\
             PermitUserEnvironment no\n\
             SetEnv HOME={d}/home\n\
             UseDNS no\n\
             PrintMotd no\n\
             LoginGraceTime 30\n\
             MaxStartups 100\n\
             LogLevel VERBOSE\n",
            port = self.port,
            user = self.user,
        );
        for line in extra {
            config.push_str(line);
            config.push('\n');
        }
        fs::write(self.config_path(), config).unwrap();
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::File::create(&self.log).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SSHD}: {e}"));
        self.child = Some(child);
        let listening = format!("Server listening on 127.0.0.1 port {}", self.port);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("(exited: {status})\n{}", self.log()));
            }
            // The log line, not a probe connection: tests can then check
            // that nothing else connected.
            if self.log().contains(&listening) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(format!("(not listening after 15 s)\n{}", self.log()))
    }

    /// Always 127.0.0.1.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user allowed to log in.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The PID of the listening sshd (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its temporary directory (config, keys, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated `sshd_config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    /// The server's public host key file.
    pub fn host_key_pub(&self) -> PathBuf {
        self.host_key.with_extension("pub")
    }

    /// `ssh-ed25519 AAAA...` of the server's host key (no comment).
    pub fn host_key_line(&self) -> String {
        let text = fs::read_to_string(self.host_key_pub()).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `SHA256:...` of the host key, as `ssh-keygen -lf` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.host_key_pub())
            .output()
            .expect("ssh-keygen -lf");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .expect("fingerprint field")
            .to_string()
    }

    /// A known_hosts file that pins this server (`[127.0.0.1]:port ...`).
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The authorized_keys file sshd reads.
    pub fn authorized_keys(&self) -> &Path {
        &self.authorized_keys
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new ed25519 key pair in the server's directory (not authorized).
    pub fn client_key(&self, name: &str) -> ClientKey {
        let private = self.dir.path().join(format!("client_{name}"));
        keygen(&private, name);
        ClientKey {
            public: private.with_extension("pub"),
            private,
        }
    }

    /// Authorizes `key` with `restrict,command="<command>"`.
    pub fn authorize(&self, key: &ClientKey, command: &str) {
        self.authorize_with(key, command, None);
    }

    /// Authorizes `key` with `restrict,command="<command>"` and, when given,
    /// `from="<pattern>"`.
    pub fn authorize_with(&self, key: &ClientKey, command: &str, from: Option<&str>) {
        let mut options = format!("restrict,command=\"{}\"", command.replace('"', "\\\""));
        if let Some(from) = from {
            options.push_str(&format!(",from=\"{from}\""));
        }
        self.authorize_line(&format!("{options} {}", key.public_line()));
    }

    /// Appends a raw line to authorized_keys.
    pub fn authorize_line(&self, line: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// A new key, authorized with the forced command `command`.
    pub fn client(&self, name: &str, command: &str) -> ClientKey {
        let key = self.client_key(name);
        self.authorize(&key, command);
        key
    }

    /// A target for this server with `key`, pinned by [`known_hosts`](Self::known_hosts).
    pub fn target(&self, key: &ClientKey) -> SshTarget {
        SshTarget::new(self.host(), self.user())
            .port(self.port)
            .private_key(&key.private)
            .known_hosts(&self.known_hosts)
    }

    /// The PIDs of the session processes sshd forked (children of the
    /// listener, recursively).
    pub fn session_pids(&self) -> Vec<u32> {
        match self.pid() {
            Some(pid) => descendants(pid),
            None => Vec::new(),
        }
    }

    /// How many session processes run `program` (their first argument ends
    /// with it: a login shell running it with `-c` is not counted).
    pub fn running(&self, program: &str) -> usize {
        self.pids_running(program).len()
    }

    /// The session processes that run `program` (see [`running`](Self::running)).
    pub fn pids_running(&self, program: &str) -> Vec<u32> {
        self.session_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.split(|&b| b == 0)
                        .next()
                        .is_some_and(|a| a.ends_with(program.as_bytes()))
                })
            })
            .collect()
    }

    /// Kills the server and its sessions with SIGKILL at once, like a crash.
    pub fn kill(&mut self) {
        let sessions = self.session_pids();
        self.signal(&sessions, libc::SIGKILL);
        self.reap(Duration::from_secs(5));
        wait_gone(&sessions, Duration::from_secs(5));
    }

    /// Stops the server and its sessions: TERM, then KILL to whatever is
    /// left after 3 s. (A session process caught between fork and exec can
    /// swallow the TERM in sshd's handler, so survivors always get KILL.)
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let sessions = self.session_pids();
        self.signal(&sessions, libc::SIGTERM);
        let listener_gone = self.reap(Duration::from_secs(3));
        let left = wait_gone(
            &sessions,
            Duration::from_secs(if listener_gone { 1 } else { 0 }),
        );
        if !listener_gone || !left.is_empty() {
            self.signal(&left, libc::SIGKILL);
            self.reap(Duration::from_secs(5));
            wait_gone(&left, Duration::from_secs(5));
        }
    }

    /// Sends `signal` to `sessions`, then to the listener. Sessions first:
    /// once the listener is gone they are reparented and could no longer
    /// be found.
    fn signal(&self, sessions: &[u32], signal: libc::c_int) {
        for &pid in sessions {
            // SAFETY: plain kill(2) on a PID found under our own sshd.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
        if let Some(pid) = self.pid() {
            // SAFETY: as above, on the PID of the sshd this value spawned.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Waits for the listener to exit; true if it did.
    fn reap(&mut self, within: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + within;
        loop {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits up to `within` for `pids` to end; returns those still alive.
fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_tool(path: &str, package: &str) {
    if !Path::new(path).exists() {
        panic!(
            "{path} is missing: the SSH tests need a real OpenSSH ({package}); \
             install it with `apt-get install {package}` (or `make deps`)"
        );
    }
}

/// `ssh-keygen -t ed25519` without a passphrase.
pub fn keygen(path: &Path, comment: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; it
    // is read at once, from this thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "no passwd entry for the current user");
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces; the
            // parent PID is the second field after it.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}
