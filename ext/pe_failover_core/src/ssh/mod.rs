//! SSH transport to the passive primary: a pinned host key, public-key
//! authentication, and an exec channel that is a plain byte stream.
//!
//! The original module trusted whatever host key the passive offered on first
//! contact (and hung on the prompt); this one refuses any host whose key is
//! not already pinned in a known_hosts file, with a message that gives the
//! offered key's fingerprint and how to pin it. Pinning on first use exists
//! only as an explicit step ([`fetch_host_key`] then
//! [`known_hosts::pin_host_key`]).
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use pe_failover_core::ssh::SshTarget;
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let session = SshTarget::new("b.example.com", "pe-transfer")
//!     .private_key("/etc/puppetlabs/pe_failover/ssh/id_ed25519")
//!     .known_hosts("/etc/puppetlabs/pe_failover/ssh/known_hosts")
//!     .connect()?;
//! // On the passive, the key's authorized_keys entry forces the receiver to
//! // run, whatever command is asked for here.
//! let mut channel = session.exec("pe_failover receive")?;
//! channel.write_all(b"hello").map_err(pe_failover_core::Error::from_io_error)?;
//! channel.send_eof()?;
//! let mut reply = Vec::new();
//! channel.read_to_end(&mut reply).map_err(pe_failover_core::Error::from_io_error)?;
//! let status = channel.finish()?;
//! println!("exit {status}, stderr: {}", channel.stderr());
//! # Ok(())
//! # }
//! ```
//!
//! All socket work is non-blocking underneath, so every wait is bounded by a
//! timeout of [`SshTarget`], keepalives go out while waiting, and the remote
//! stderr is collected as it arrives.

mod channel;
mod host_key;
mod key_file;
pub mod known_hosts;

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use channel::Channel;
pub use host_key::HostKey;
pub use known_hosts::{pin_host_key, HostKeyStatus, KnownHosts};

use crate::cancel::CancelToken;
use crate::{Error, ErrorKind, Result};

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 22;
/// Default bound on each step of opening a session (TCP connect, SSH
/// handshake, authentication).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on how long one read, write or other channel operation may
/// wait without progress.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between SSH keepalives (and the TCP keepalive idle time).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Where and how to reach the passive over SSH.
///
/// | setting | default |
/// |---|---|
/// | [`port`](Self::port) | 22 |
/// | [`private_key`](Self::private_key) | `$HOME/.ssh/id_ed25519` of the user running the process |
/// | [`known_hosts`](Self::known_hosts) | `$HOME/.ssh/known_hosts` of the user running the process |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s, for each of TCP connect, handshake and authentication |
/// | [`io_timeout`](Self::io_timeout) | 30 s without progress on one operation |
/// | [`keepalive_interval`](Self::keepalive_interval) | 15 s (`None` turns keepalives off) |
/// | [`cancel_token`](Self::cancel_token) | none |
///
/// The host key is always checked against the known_hosts file; there is
/// no setting to skip that.
#[derive(Clone, Debug)]
pub struct SshTarget {
    host: String,
    port: u16,
    user: String,
    private_key: PathBuf,
    known_hosts: PathBuf,
    connect_timeout: Duration,
    io_timeout: Duration,
    keepalive_interval: Option<Duration>,
    cancel: Option<CancelToken>,
}

impl SshTarget {
    /// A target for `user` on `host` (a name or an IP address), with the
    /// defaults above.
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> Self {
        let home = home_dir().unwrap_or_else(|| PathBuf::from("/root"));
        let ssh = home.join(".ssh");
        SshTarget {
            host: host.into(),
            port: DEFAULT_PORT,
            user: user.into(),
            private_key: ssh.join("id_ed25519"),
            known_hosts: ssh.join("known_hosts"),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            cancel: None,
        }
    }

    /// The TCP port sshd listens on.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The unencrypted private key to authenticate with (ed25519 is what
    /// the module generates; any type libssh2 reads works).
    pub fn private_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.private_key = path.into();
        self
    }

    /// The known_hosts file that pins the passive's host key.
    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = path.into();
        self
    }

    /// The bound on each step of opening a session.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The bound on how long one operation may wait without progress.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How often to send keepalives while waiting; `None` for never.
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// A token that stops every wait of the session and its channels with
    /// [`ErrorKind::Cancelled`] once tripped (checked at least every 100 ms;
    /// the TCP connect itself is only bounded by the connect timeout).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Opens a session: see [`connect`].
    pub fn connect(&self) -> Result<Session> {
        connect(self)
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn tcp_port(&self) -> u16 {
        self.port
    }

    /// The remote user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key file.
    pub fn private_key_path(&self) -> &Path {
        &self.private_key
    }

    /// The known_hosts file.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// `user@host:port`, as used in messages.
    pub fn display_name(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid SSH target: {what}"),
            )
            .with_host(self.host.clone())
        };
        if self.host.is_empty() || self.host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("the host must be a name or an IP address"));
        }
        if self.user.is_empty() || self.user.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(bad("the user must be a plain user name"));
        }
        if self.port == 0 {
            return Err(bad("the port must be between 1 and 65535"));
        }
        if self.connect_timeout.is_zero() || self.io_timeout.is_zero() {
            return Err(bad("timeouts must be longer than zero"));
        }
        Ok(())
    }
}

/// An authenticated SSH session to a host whose key matched its pin.
///
/// Dropping the session (and all its channels) disconnects.
pub struct Session {
    link: Arc<Link>,
    target: SshTarget,
    host_key: HostKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target.display_name())
            .field("host_key", &self.host_key)
            .finish()
    }
}

impl Session {
    /// Runs `command` on the host and returns its channel: stdin and stdout
    /// through [`Read`](std::io::Read) and [`Write`](std::io::Write), stderr
    /// collected on the side.
    ///
    /// When the key's authorized_keys entry has a forced command
    /// (`command="..."`), the server runs that instead; `command` is then
    /// only visible to it as `SSH_ORIGINAL_COMMAND`.
    pub fn exec(&self, command: &str) -> Result<Channel> {
        let link = &self.link;
        let shown = channel::shown_command(command);
        let mut ch = link.retry(link.io_timeout, "opening a session channel", || {
            link.ssh.channel_session()
        })?;
        link.retry(link.io_timeout, &format!("starting {shown}"), || {
            ch.exec(command)
        })?;
        Ok(Channel::new(Arc::clone(link), ch, command))
    }

    /// Sends a keepalive if one is due; returns how long until the next.
    /// A long-lived idle session calls this periodically (reads and writes
    /// do it themselves while they wait).
    pub fn keepalive(&self) -> Result<Duration> {
        let link = &self.link;
        let secs = link.retry(link.io_timeout, "sending a keepalive", || {
            link.ssh.keepalive_send()
        })?;
        Ok(Duration::from_secs(u64::from(secs)))
    }

    /// The host key the server presented (and that matched its pin).
    pub fn host_key(&self) -> &HostKey {
        &self.host_key
    }

    /// The target this session was opened to.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The ciphers negotiated for each direction (client to server, server
    /// to client).
    pub fn ciphers(&self) -> (String, String) {
        let of = |m| self.link.ssh.methods(m).unwrap_or("?").to_string();
        (of(ssh2::MethodType::CryptCs), of(ssh2::MethodType::CryptSc))
    }
}

/// Opens an SSH session to `target`:
///
/// 1. checks the private key file (present, readable, unencrypted) and reads
///    the known_hosts file;
/// 2. connects over TCP, within the connect timeout, with TCP keepalives;
/// 3. runs the SSH handshake, asking for a host key type that is pinned;
/// 4. verifies the host key against known_hosts: an unknown, changed or
///    revoked key is refused with [`ErrorKind::Verification`], naming the
///    offered key's SHA256 fingerprint and how to pin it;
/// 5. authenticates with the private key: a refusal is
///    [`ErrorKind::Unauthorized`].
///
/// Unreachable hosts are [`ErrorKind::Network`], silent ones
/// [`ErrorKind::Timeout`].
pub fn connect(target: &SshTarget) -> Result<Session> {
    target.validate()?;
    key_file::check_private_key(&target.private_key)?;
    let known = KnownHosts::load(&target.known_hosts)?;

    if let Some(token) = &target.cancel {
        token.check()?;
    }
    let tcp = tcp_connect(&target.host, target.port, target.connect_timeout)?;
    set_tcp_keepalive(&tcp, target.keepalive_interval);
    let mut link = Link::new(tcp, &target.host, target.port, target.io_timeout)?;
    link.cancel = target.cancel.clone();
    link.prefer_host_key_types(&known.key_types_for(&target.host, target.port));
    link.prefer_fast_ciphers();
    link.handshake(target.connect_timeout)?;
    let host_key = link.host_key()?;
    verify_host_key(target, &known, &host_key)?;
    link.authenticate(target)?;
    if let Some(interval) = target.keepalive_interval {
        let secs = interval.as_secs().clamp(2, u64::from(u32::MAX)) as u32;
        link.ssh.set_keepalive(true, secs);
        link.keepalive = true;
    }
    Ok(Session {
        link: Arc::new(link),
        target: target.clone(),
        host_key,
    })
}

/// Connects to `host:port` only to read the host key it offers (ed25519
/// preferred), without authenticating or trusting it.
///
/// This is the first half of an explicit trust-on-first-use: show the
/// fingerprint, then pin it with [`pin_host_key`] (or
/// [`HostKey::known_hosts_line`]) and say so.
pub fn fetch_host_key(host: &str, port: u16, timeout: Duration) -> Result<HostKey> {
    if timeout.is_zero() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the timeout must be longer than zero",
        ));
    }
    let tcp = tcp_connect(host, port, timeout)?;
    let mut link = Link::new(tcp, host, port, timeout)?;
    link.prefer_host_key_types(&[]);
    link.prefer_fast_ciphers();
    link.handshake(timeout)?;
    link.host_key()
}

fn verify_host_key(target: &SshTarget, known: &KnownHosts, offered: &HostKey) -> Result<()> {
    let name = known_hosts::host_name_for(&target.host, target.port);
    let path = known.path().display().to_string();
    let fail = |message: String, hint: String| {
        Err(Error::new(ErrorKind::Verification, message)
            .with_host(target.host.clone())
            .with_path(known.path())
            .with_hint(hint))
    };
    let check_out_of_band = format!(
        "compare it out of band with the fingerprint that `ssh-keygen -lf \
         /etc/ssh/ssh_host_{}_key.pub` prints on the passive",
        offered.keyscan_type()
    );
    let how_to_pin = format!(
        "{check_out_of_band}, then pin it with `ssh-keyscan -p {} -t {} {} >> {path}` or by \
         setting the module's passive_host_key parameter to the passive's public host key",
        target.port,
        offered.keyscan_type(),
        target.host,
    );
    match known.check(&target.host, target.port, offered) {
        HostKeyStatus::Trusted { .. } => Ok(()),
        HostKeyStatus::Unknown {
            cert_authority_lines,
        } => {
            let mut why = if known.exists() {
                format!("{name} has no pinned host key in {path}")
            } else {
                format!("{name} has no pinned host key: {path} does not exist")
            };
            if !cert_authority_lines.is_empty() {
                why.push_str(&format!(
                    " (@cert-authority line {} is not used: pe_failover pins the host's own key)",
                    join_numbers(&cert_authority_lines)
                ));
            }
            fail(
                format!(
                    "refusing to connect to an unverified host: {why}; it offered the {} key {}",
                    offered.key_type(),
                    offered.fingerprint()
                ),
                how_to_pin,
            )
        }
        HostKeyStatus::Changed { pinned } => {
            let same_type: Vec<&(usize, HostKey)> = pinned
                .iter()
                .filter(|(_, k)| k.key_type() == offered.key_type())
                .collect();
            if same_type.is_empty() {
                let types: Vec<&str> = pinned.iter().map(|(_, k)| k.key_type()).collect();
                fail(
                    format!(
                        "refusing to connect: {name} offered the {} key {}, but {path} pins only {} \
                         key(s) for it",
                        offered.key_type(),
                        offered.fingerprint(),
                        types.join(", ")
                    ),
                    how_to_pin,
                )
            } else {
                let was: Vec<String> = same_type
                    .iter()
                    .map(|(line, k)| format!("{} (line {line})", k.fingerprint()))
                    .collect();
                fail(
                    format!(
                        "HOST KEY CHANGED: {name} offered the {} key {}, but {path} pins {}; \
                         either the passive was reinstalled or someone is intercepting the \
                         connection, so nothing was sent",
                        offered.key_type(),
                        offered.fingerprint(),
                        was.join(", ")
                    ),
                    format!(
                        "{check_out_of_band}; if the change is expected, remove the old pin \
                         with `ssh-keygen -R '{name}' -f {path}` and pin the new key \
                         (passive_host_key parameter or ssh-keyscan)"
                    ),
                )
            }
        }
        HostKeyStatus::Revoked { line } => fail(
            format!(
                "refusing to connect: {name} offered the {} key {}, which {path} line {line} \
                 lists as @revoked",
                offered.key_type(),
                offered.fingerprint()
            ),
            "give the passive a new host key and pin that one".to_string(),
        ),
    }
}

fn join_numbers(numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::new(ErrorKind::Network, format!("cannot resolve {host}: {e}"))
                .with_host(host)
                .with_hint("check the passive's name in DNS or /etc/hosts")
        })?
        .collect();
    let mut last: Option<io::Error> = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(err) = last else {
        return Err(
            Error::new(ErrorKind::Network, format!("{host} has no address"))
                .with_host(host)
                .with_hint("check the passive's name in DNS or /etc/hosts"),
        );
    };
    Err(match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::new(
            ErrorKind::Timeout,
            format!(
                "no answer on port {port} within {} while connecting",
                crate::seconds(timeout)
            ),
        )
        .with_hint("check that the passive is up and that no firewall drops SSH traffic"),
        io::ErrorKind::ConnectionRefused => Error::new(
            ErrorKind::Network,
            format!("connection to port {port} refused"),
        )
        .with_hint(format!(
            "check that sshd runs on the passive and listens on port {port}"
        )),
        _ => Error::new(
            ErrorKind::Network,
            format!("cannot connect to port {port}: {err}"),
        )
        .with_hint("check the network between the primaries"),
    }
    .with_host(host))
}

/// TCP keepalives at the same interval as the SSH ones, so a dead peer is
/// noticed even while nothing is being sent. Best effort.
fn set_tcp_keepalive(tcp: &TcpStream, interval: Option<Duration>) {
    let Some(interval) = interval else { return };
    let fd = tcp.as_raw_fd();
    let secs = interval.as_secs().clamp(1, 3600) as libc::c_int;
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    #[cfg(target_os = "linux")]
    {
        set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs);
        set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs);
        set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = secs;
}

/// Acknowledges what the server sent at once instead of after Linux's
/// delayed-ACK timer (up to 40 ms), both for data already received and for
/// what arrives next.
///
/// sshd leaves Nagle's algorithm on for sessions without a terminal, such
/// as the receiver's: it holds back a small packet until the previous one
/// is acknowledged. A reply made of several small packets (the answer to a
/// channel request, the receiver's frames, exit status and close) then
/// stalls on our delayed ACK at every step. Linux forgets this setting on
/// its own, so it is renewed before each wait. Best effort: elsewhere it is
/// a no-op.
fn ack_promptly(fd: RawFd) {
    #[cfg(target_os = "linux")]
    set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, 1);
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// `setsockopt` with an integer value; failures are ignored (every caller
/// is best effort).
fn set_socket_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: fd is an open socket for the duration of the call (owned by
    // the caller's stream or session); the option value is a c_int that
    // outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The home directory of the effective user: `$HOME`, else the password
/// database.
fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and buf's length is passed.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir points at a C string in buf.
    let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
    Some(PathBuf::from(OsString::from_vec(dir.to_bytes().to_vec())))
}

// libssh2 error codes (include/libssh2.h) that decide an error's kind.
const LIBSSH2_ERROR_SOCKET_NONE: i32 = -1;
const LIBSSH2_ERROR_BANNER_RECV: i32 = -2;
const LIBSSH2_ERROR_BANNER_SEND: i32 = -3;
const LIBSSH2_ERROR_SOCKET_SEND: i32 = -7;
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
const LIBSSH2_ERROR_SOCKET_DISCONNECT: i32 = -13;
const LIBSSH2_ERROR_FILE: i32 = -16;
const LIBSSH2_ERROR_AUTHENTICATION_FAILED: i32 = -18;
const LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED: i32 = -19;
const LIBSSH2_ERROR_SOCKET_TIMEOUT: i32 = -30;
const LIBSSH2_ERROR_EAGAIN: i32 = -37;
const LIBSSH2_ERROR_SOCKET_RECV: i32 = -43;
const LIBSSH2_ERROR_BAD_SOCKET: i32 = -45;

/// What a socket-level libssh2 error means, in words (libssh2's own
/// message is often just the name of the step that failed).
fn socket_failure(code: i32, e: &ssh2::Error) -> &str {
    match code {
        LIBSSH2_ERROR_SOCKET_DISCONNECT => "the other end closed the connection",
        LIBSSH2_ERROR_SOCKET_RECV => "receiving failed (connection reset?)",
        LIBSSH2_ERROR_SOCKET_SEND => "sending failed (connection reset?)",
        LIBSSH2_ERROR_BANNER_RECV => "the server closed the connection before saying it speaks SSH",
        _ => e.message(),
    }
}

fn code_of(e: &ssh2::Error) -> i32 {
    match e.code() {
        ssh2::ErrorCode::Session(code) => code,
        ssh2::ErrorCode::SFTP(_) => 0,
    }
}

fn is_eagain(e: &ssh2::Error) -> bool {
    code_of(e) == LIBSSH2_ERROR_EAGAIN
}

/// A point in time to give up at, and the budget it came from (for
/// messages).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }
}

/// The connection under a session and its channels: the libssh2 session
/// (non-blocking), its socket, and what error messages need.
pub(crate) struct Link {
    ssh: ssh2::Session,
    fd: RawFd,
    host: String,
    port: u16,
    io_timeout: Duration,
    keepalive: bool,
    established: bool,
    cancel: Option<CancelToken>,
}

impl Link {
    fn new(tcp: TcpStream, host: &str, port: u16, io_timeout: Duration) -> Result<Link> {
        let fd = tcp.as_raw_fd();
        let mut ssh = ssh2::Session::new().map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot create an SSH session: {}", e.message()),
            )
        })?;
        ssh.set_tcp_stream(tcp);
        ssh.set_blocking(false);
        Ok(Link {
            ssh,
            fd,
            host: host.to_string(),
            port,
            io_timeout,
            keepalive: false,
            established: false,
            cancel: None,
        })
    }

    /// Asks for host key algorithms matching `pinned` types first, so a
    /// server with several host keys presents one we can check; with none
    /// pinned, ed25519 first.
    fn prefer_host_key_types(&mut self, pinned: &[String]) {
        let supported = self
            .ssh
            .supported_algs(ssh2::MethodType::HostKey)
            .unwrap_or_default();
        let expand = |t: &str| -> Vec<String> {
            if t == "ssh-rsa" {
                vec![
                    "rsa-sha2-512".into(),
                    "rsa-sha2-256".into(),
                    "ssh-rsa".into(),
                ]
            } else {
                vec![t.to_string()]
            }
        };
        let defaults = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "ssh-rsa",
        ];
        let wanted: Vec<String> = if pinned.is_empty() {
            defaults.iter().flat_map(|t| expand(t)).collect()
        } else {
            pinned.iter().flat_map(|t| expand(t)).collect()
        };
        let mut prefs: Vec<String> = wanted
            .into_iter()
            .filter(|a| supported.contains(&a.as_str()))
            .collect();
        prefs.dedup();
        if prefs.is_empty() {
            // Nothing pinned that libssh2 can check: take the defaults and
            // let verification explain the mismatch.
            prefs = defaults
                .iter()
                .flat_map(|t| expand(t))
                .filter(|a| supported.contains(&a.as_str()))
                .collect();
        }
        if !prefs.is_empty() {
            let _ = self
                .ssh
                .method_pref(ssh2::MethodType::HostKey, &prefs.join(","));
        }
    }

    /// Asks for AES-GCM first (libssh2 runs it through OpenSSL, with the
    /// CPU's AES instructions; its own ChaCha20-Poly1305, its first choice,
    /// is portable C and the slowest part of a full sync), then libssh2's
    /// usual order. Every choice is one OpenSSH offers by default.
    fn prefer_fast_ciphers(&mut self) {
        for method in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
            let supported = self.ssh.supported_algs(method).unwrap_or_default();
            let mut prefs: Vec<&str> = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
                .into_iter()
                .filter(|c| supported.contains(c))
                .collect();
            if prefs.is_empty() {
                continue;
            }
            let rest: Vec<&str> = supported
                .iter()
                .copied()
                .filter(|c| !prefs.contains(c))
                .collect();
            prefs.extend(rest);
            let _ = self.ssh.method_pref(method, &prefs.join(","));
        }
    }

    fn handshake(&mut self, timeout: Duration) -> Result<()> {
        let mut ssh = self.ssh.clone();
        self.retry(timeout, "performing the SSH handshake", || ssh.handshake())?;
        self.established = true;
        Ok(())
    }

    fn host_key(&self) -> Result<HostKey> {
        let (blob, _) = self.ssh.host_key().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("{}:{} presented no host key", self.host, self.port),
            )
            .with_host(self.host.clone())
        })?;
        HostKey::from_blob(blob.to_vec()).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!(
                    "{}:{} presented a malformed host key: {e}",
                    self.host, self.port
                ),
            )
            .with_host(self.host.clone())
        })
    }

    fn authenticate(&mut self, target: &SshTarget) -> Result<()> {
        let who = target.display_name();
        let key = target.private_key.display().to_string();
        let user = target.user.as_str();
        let refused_hint = format!(
            "check that the passive's authorized_keys for {user} holds the public half of {key}, \
             which `ssh-keygen -y -f {key}` prints; that the entry's from= option allows this \
             host's address; and that the passive's sshd lets {user} log in"
        );
        let what = format!("authenticating as {user}");
        let methods = match self.retry(target.connect_timeout, &what, || {
            self.ssh.auth_methods(user).map(str::to_owned)
        }) {
            Ok(methods) => methods,
            Err(_) if self.ssh.authenticated() => return Ok(()),
            Err(e) => return Err(e),
        };
        if !methods.split(',').any(|m| m.trim() == "publickey") {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "{who} does not accept public-key authentication (it offers: {})",
                    if methods.is_empty() {
                        "nothing"
                    } else {
                        &methods
                    }
                ),
            )
            .with_host(target.host.clone())
            .with_path(&target.private_key)
            .with_hint("enable PubkeyAuthentication in the passive's sshd_config"));
        }
        let deadline = Deadline::after(target.connect_timeout);
        loop {
            match self
                .ssh
                .userauth_pubkey_file(user, None, &target.private_key, None)
            {
                Ok(()) => break,
                Err(e) if is_eagain(&e) => self.wait(deadline, &what)?,
                Err(e) => {
                    return Err(match code_of(&e) {
                        LIBSSH2_ERROR_AUTHENTICATION_FAILED
                        | LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED => Error::new(
                            ErrorKind::Unauthorized,
                            format!("{who} refused the key {key}"),
                        )
                        .with_host(target.host.clone())
                        .with_path(&target.private_key)
                        .with_hint(refused_hint),
                        LIBSSH2_ERROR_FILE => Error::new(
                            ErrorKind::InvalidInput,
                            format!("cannot use the SSH private key {key}: {}", e.message()),
                        )
                        .with_path(&target.private_key)
                        .with_hint("use an unencrypted ed25519 key made by ssh-keygen"),
                        _ => self.ssh_error(&e, &what),
                    });
                }
            }
        }
        if !self.ssh.authenticated() {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                format!("{who} did not accept the key {key}"),
            )
            .with_host(target.host.clone())
            .with_path(&target.private_key)
            .with_hint(refused_hint));
        }
        Ok(())
    }

    /// Runs a libssh2 operation until it stops asking to be retried, waiting
    /// for the socket in between, for at most `timeout`.
    fn retry<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut op: impl FnMut() -> std::result::Result<T, ssh2::Error>,
    ) -> Result<T> {
        let deadline = Deadline::after(timeout);
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if is_eagain(&e) => self.wait(deadline, what)?,
                Err(e) => return Err(self.ssh_error(&e, what)),
            }
        }
    }

    /// Waits until the socket is ready in the direction libssh2 is blocked
    /// on, sending keepalives when due; `Timeout` once `deadline` passes.
    fn wait(&self, deadline: Deadline, what: &str) -> Result<()> {
        if let Some(token) = &self.cancel {
            if token.is_cancelled() {
                return Err(Error::cancelled().with_host(self.host.clone()));
            }
        }
        let now = Instant::now();
        if now >= deadline.at {
            return Err(self.timeout_error(what, deadline.budget));
        }
        let mut wait = deadline.at - now;
        if self.keepalive {
            match self.ssh.keepalive_send() {
                Ok(secs) => wait = wait.min(Duration::from_secs(u64::from(secs.max(1)))),
                Err(e) if is_eagain(&e) => {}
                Err(e) => return Err(self.ssh_error(&e, "sending a keepalive")),
            }
        }
        if self.cancel.is_some() {
            wait = wait.min(Duration::from_millis(100));
        }
        let events = match self.ssh.block_directions() {
            ssh2::BlockDirections::Inbound => libc::POLLIN,
            ssh2::BlockDirections::Outbound => libc::POLLOUT,
            ssh2::BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
            ssh2::BlockDirections::None => {
                wait = wait.min(Duration::from_millis(10));
                libc::POLLIN
            }
        };
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        ack_promptly(self.fd);
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(self.network_error(what, &err.to_string()));
            }
        }
        Ok(())
    }

    fn timeout_error(&self, what: &str, budget: Duration) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "no response on port {} for {} while {what}",
                self.port,
                crate::seconds(budget)
            ),
        )
        .with_host(self.host.clone())
        .with_hint(format!(
            "check that the passive is up and its sshd answers on port {}; a slow link may \
             need a longer timeout",
            self.port
        ))
    }

    fn network_error(&self, what: &str, detail: &str) -> Error {
        Error::new(
            ErrorKind::Network,
            format!(
                "the connection to {}:{} broke while {what}: {detail}",
                self.host, self.port
            ),
        )
        .with_host(self.host.clone())
        .with_hint(
            "check that the passive and its sshd are running, and the network between the \
             primaries",
        )
    }

    /// Maps a libssh2 error to this crate's kinds.
    fn ssh_error(&self, e: &ssh2::Error, what: &str) -> Error {
        let code = code_of(e);
        match code {
            LIBSSH2_ERROR_TIMEOUT | LIBSSH2_ERROR_SOCKET_TIMEOUT => {
                self.timeout_error(what, self.io_timeout)
            }
            LIBSSH2_ERROR_SOCKET_NONE
            | LIBSSH2_ERROR_BANNER_RECV
            | LIBSSH2_ERROR_BANNER_SEND
            | LIBSSH2_ERROR_SOCKET_SEND
            | LIBSSH2_ERROR_SOCKET_DISCONNECT
            | LIBSSH2_ERROR_SOCKET_RECV
            | LIBSSH2_ERROR_BAD_SOCKET => self.network_error(what, socket_failure(code, e)),
            LIBSSH2_ERROR_AUTHENTICATION_FAILED | LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED => Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "{}:{} refused authentication while {what}: {}",
                    self.host,
                    self.port,
                    e.message()
                ),
            )
            .with_host(self.host.clone()),
            _ => Error::new(
                ErrorKind::Protocol,
                format!(
                    "SSH failure with {}:{} while {what}: {} (libssh2 error {code})",
                    self.host,
                    self.port,
                    e.message()
                ),
            )
            .with_host(self.host.clone())
            .with_hint("check that this port is served by OpenSSH's sshd on the passive"),
        }
    }

    /// The error behind a failed `Read`/`Write` on a channel stream (the
    /// `io::Error` from ssh2 loses libssh2's code; the session keeps it).
    fn stream_error(&self, err: &io::Error, what: &str) -> Error {
        match ssh2::Error::last_session_error(&self.ssh) {
            Some(e) if !is_eagain(&e) => self.ssh_error(&e, what),
            _ => self.network_error(what, &err.to_string()),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if !self.established {
            return;
        }
        // Let libssh2 finish closing and freeing in blocking mode, briefly,
        // so nothing is left half-freed; failures do not matter any more.
        self.ssh.set_timeout(1000);
        self.ssh.set_blocking(true);
        let _ = self
            .ssh
            .disconnect(None, "pe_failover closing the session", None);
    }
}
