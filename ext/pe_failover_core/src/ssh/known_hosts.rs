//! Pinned host keys in OpenSSH's known_hosts format.
//!
//! Supported, as OpenSSH reads them:
//!
//! - plain names and addresses, comma-separated (`b.example.com,10.0.0.2`);
//! - `[host]:port` for any port but 22 (a plain name only matches port 22);
//! - `*` and `?` wildcards and `!` negation in patterns;
//! - hashed names (`|1|salt|hash`, written by `ssh-keygen -H` and
//!   `ssh-keyscan -H`);
//! - `@revoked` lines: a key listed there is refused for every host
//!   (stricter than OpenSSH, which applies the host pattern too);
//! - `@cert-authority` lines are not used: pe_failover pins the host's own
//!   key, and says so when a host is only trusted through a CA.
//!
//! Host names are compared case-insensitively. Malformed lines are skipped,
//! as OpenSSH does.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::host_key::{looks_like_key_type, HostKey};
use crate::{Error, ErrorKind, Result};

/// The name a host is looked up under: `host` on port 22, `[host]:port`
/// on any other port.
pub fn host_name_for(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// What a known_hosts file says about a key a host offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key is pinned for this host on this (1-based) line.
    Trusted {
        /// Line number of the matching entry.
        line: usize,
    },
    /// The host is known, but with other keys: either its key changed (a
    /// reinstalled passive, or someone in the middle), or it offered a type
    /// that is not pinned.
    Changed {
        /// The keys pinned for this host, with their line numbers.
        pinned: Vec<(usize, HostKey)>,
    },
    /// The key is listed under `@revoked` on this line.
    Revoked {
        /// Line number of the `@revoked` entry.
        line: usize,
    },
    /// Nothing pins a key for this host.
    Unknown {
        /// Lines that trust a certificate authority for this host
        /// (`@cert-authority`), which pe_failover does not use.
        cert_authority_lines: Vec<usize>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    None,
    CertAuthority,
    Revoked,
}

#[derive(Clone, Debug)]
enum Hosts {
    Patterns(String),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    marker: Marker,
    hosts: Hosts,
    key: HostKey,
}

/// The entries of one known_hosts file.
#[derive(Clone, Debug, Default)]
pub struct KnownHosts {
    path: PathBuf,
    exists: bool,
    entries: Vec<Entry>,
    skipped: usize,
}

impl KnownHosts {
    /// Reads `path`. A file that does not exist yields an empty set (every
    /// host is then unknown, and [`exists`](Self::exists) is false); any
    /// other read error is returned.
    pub fn load(path: impl AsRef<Path>) -> Result<KnownHosts> {
        let path = path.as_ref();
        match fs::read(path) {
            Ok(bytes) => {
                let mut known = KnownHosts::parse(&String::from_utf8_lossy(&bytes));
                known.path = path.to_path_buf();
                known.exists = true;
                Ok(known)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KnownHosts {
                path: path.to_path_buf(),
                ..KnownHosts::default()
            }),
            Err(e) => Err(Error::io("read the known_hosts file", path, e)),
        }
    }

    /// Parses known_hosts text (no file behind it).
    pub fn parse(text: &str) -> KnownHosts {
        let mut known = KnownHosts {
            exists: true,
            ..KnownHosts::default()
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(i + 1, line) {
                Some(entry) => known.entries.push(entry),
                None => known.skipped += 1,
            }
        }
        known
    }

    /// The file these entries came from (empty for parsed text).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file existed when it was loaded.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// How many lines were skipped as malformed or of an unknown marker.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// Checks the key `host` offered on `port` against the pinned entries.
    pub fn check(&self, host: &str, port: u16, offered: &HostKey) -> HostKeyStatus {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.marker == Marker::Revoked && e.key == *offered)
        {
            return HostKeyStatus::Revoked { line: e.line };
        }
        let name = host_name_for(&host.to_ascii_lowercase(), port);
        let mut pinned = Vec::new();
        let mut cert_authority_lines = Vec::new();
        for e in self.entries.iter().filter(|e| e.matches(&name)) {
            match e.marker {
                Marker::None if e.key == *offered => {
                    return HostKeyStatus::Trusted { line: e.line };
                }
                Marker::None => pinned.push((e.line, e.key.clone())),
                Marker::CertAuthority => cert_authority_lines.push(e.line),
                Marker::Revoked => {}
            }
        }
        if pinned.is_empty() {
            HostKeyStatus::Unknown {
                cert_authority_lines,
            }
        } else {
            HostKeyStatus::Changed { pinned }
        }
    }

    /// The algorithm names pinned for `host` on `port`, in file order,
    /// without repeats. Used to ask the server for a key type we can check.
    pub fn key_types_for(&self, host: &str, port: u16) -> Vec<String> {
        let name = host_name_for(&host.to_ascii_lowercase(), port);
        let mut types: Vec<String> = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| e.marker == Marker::None && e.matches(&name))
        {
            if !types.iter().any(|t| t == e.key.key_type()) {
                types.push(e.key.key_type().to_string());
            }
        }
        types
    }
}

impl Entry {
    fn matches(&self, name: &str) -> bool {
        match &self.hosts {
            Hosts::Patterns(list) => match_pattern_list(name, list),
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
        }
    }
}

fn parse_line(line_no: usize, line: &str) -> Option<Entry> {
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = if let Some(m) = first.strip_prefix('@') {
        first = fields.next()?;
        match m {
            "cert-authority" => Marker::CertAuthority,
            "revoked" => Marker::Revoked,
            _ => return None,
        }
    } else {
        Marker::None
    };
    let hosts = if let Some(hashed) = first.strip_prefix("|1|") {
        let (salt, hash) = hashed.split_once('|')?;
        Hosts::Hashed {
            salt: STANDARD.decode(salt).ok()?,
            hash: STANDARD.decode(hash).ok()?,
        }
    } else {
        Hosts::Patterns(first.to_ascii_lowercase())
    };
    let key_type = fields.next()?;
    if !looks_like_key_type(key_type) {
        return None;
    }
    let key = HostKey::from_base64(key_type, fields.next()?).ok()?;
    Some(Entry {
        line: line_no,
        marker,
        hosts,
        key,
    })
}

/// OpenSSH's pattern-list rule: the name matches if some pattern matches and
/// no negated (`!`) pattern does.
fn match_pattern_list(name: &str, list: &str) -> bool {
    let mut positive = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), name.as_bytes()) {
            positive = true;
        }
    }
    positive
}

/// `*` (any run) and `?` (one character) wildcards; everything else literal.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Pins `key` for `host` on `port` by appending its line to the known_hosts
/// file at `path` (created 0644, its directory 0700, when missing).
///
/// This is the explicit trust-on-first-use step: call it only after the
/// fingerprint was checked, or when the administrator asked to trust the
/// first key seen. Returns `Ok(false)` when the key was already pinned, and
/// refuses with [`ErrorKind::Verification`] when another key is pinned for
/// that host (a pin is never replaced silently) or the key is revoked.
pub fn pin_host_key(path: impl AsRef<Path>, host: &str, port: u16, key: &HostKey) -> Result<bool> {
    let path = path.as_ref();
    let known = KnownHosts::load(path)?;
    let name = host_name_for(host, port);
    match known.check(host, port, key) {
        HostKeyStatus::Trusted { .. } => return Ok(false),
        HostKeyStatus::Revoked { line } => {
            return Err(Error::new(
                ErrorKind::Verification,
                format!(
                    "refusing to pin {key} for {name}: {} line {line} lists it as @revoked",
                    path.display()
                ),
            )
            .with_host(host)
            .with_path(path))
        }
        HostKeyStatus::Changed { pinned } => {
            let lines: Vec<String> = pinned
                .iter()
                .map(|(l, k)| format!("line {l}: {k}"))
                .collect();
            return Err(Error::new(
                ErrorKind::Verification,
                format!(
                    "refusing to pin {key} for {name}: {} already pins another key ({})",
                    path.display(),
                    lines.join("; ")
                ),
            )
            .with_host(host)
            .with_path(path)
            .with_hint(format!(
                "if the passive was reinstalled, check its new fingerprint out of band, then \
                 remove the old entry with `ssh-keygen -R '{name}' -f {}`",
                path.display()
            )));
        }
        HostKeyStatus::Unknown { .. } => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("create the directory", dir, e))?;
        }
    }
    let mut text = String::new();
    if known.exists() && !ends_with_newline(path)? {
        text.push('\n');
    }
    text.push_str(&key.known_hosts_line(host, port));
    text.push('\n');
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io("open the known_hosts file", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write the known_hosts file", path, e))?;
    Ok(true)
}

fn ends_with_newline(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).map_err(|e| Error::io("read the known_hosts file", path, e))?;
    Ok(bytes.is_empty() || bytes.ends_with(b"\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAQiXtkRbkZNAgTixS2gpOil4UmSqM2SxSLbinY/aOg6";
    // Another throwaway ed25519 key (ssh-keygen).
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIG53gJbeG63+F+KAyoft4KhOrwfaR6sAHJMJKHge2aPX";

    fn key(b64: &str) -> HostKey {
        HostKey::from_base64("ssh-ed25519", b64).unwrap()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn plain_bracketed_and_listed_names() {
        let kh = KnownHosts::parse(&format!(
            "# comment\n\nb.example.com,10.0.0.2 ssh-ed25519 {KEY_A}\n[c.example.com]:2222 ssh-ed25519 {KEY_A} c\n"
        ));
        let a = key(KEY_A);
        assert_eq!(
            kh.check("B.Example.com", 22, &a),
            HostKeyStatus::Trusted { line: 3 }
        );
        assert_eq!(
            kh.check("10.0.0.2", 22, &a),
            HostKeyStatus::Trusted { line: 3 }
        );
        assert_eq!(
            kh.check("c.example.com", 2222, &a),
            HostKeyStatus::Trusted { line: 4 }
        );
        // A plain name pins port 22 only, and [host]:port only that port.
        assert!(matches!(
            kh.check("b.example.com", 2222, &a),
            HostKeyStatus::Unknown { .. }
        ));
        assert!(matches!(
            kh.check("c.example.com", 22, &a),
            HostKeyStatus::Unknown { .. }
        ));
        assert_eq!(kh.key_types_for("b.example.com", 22), vec!["ssh-ed25519"]);
        assert!(kh.key_types_for("x.example.com", 22).is_empty());
    }

    #[test]
    fn changed_key_is_reported_with_the_pinned_one() {
        let kh = KnownHosts::parse(&format!("b.example.com ssh-ed25519 {KEY_A}\n"));
        match kh.check("b.example.com", 22, &key(KEY_B)) {
            HostKeyStatus::Changed { pinned } => assert_eq!(pinned, vec![(1, key(KEY_A))]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hashed_names() {
        let kh = KnownHosts::parse(&format!(
            "{} ssh-ed25519 {KEY_A}\n{} ssh-ed25519 {KEY_A}\n",
            hashed("b.example.com", b"01234567890123456789"),
            hashed("[127.0.0.1]:2200", b"abcdefghijabcdefghij"),
        ));
        let a = key(KEY_A);
        assert_eq!(
            kh.check("b.example.com", 22, &a),
            HostKeyStatus::Trusted { line: 1 }
        );
        assert_eq!(
            kh.check("127.0.0.1", 2200, &a),
            HostKeyStatus::Trusted { line: 2 }
        );
        assert!(matches!(
            kh.check("127.0.0.1", 2201, &a),
            HostKeyStatus::Unknown { .. }
        ));
    }

    #[test]
    fn wildcards_and_negation() {
        let kh = KnownHosts::parse(&format!(
            "*.example.com,!evil.example.com ssh-ed25519 {KEY_A}\n[10.0.0.?]:2222 ssh-ed25519 {KEY_A}\n"
        ));
        let a = key(KEY_A);
        assert!(matches!(
            kh.check("b.example.com", 22, &a),
            HostKeyStatus::Trusted { .. }
        ));
        assert!(matches!(
            kh.check("evil.example.com", 22, &a),
            HostKeyStatus::Unknown { .. }
        ));
        assert!(matches!(
            kh.check("10.0.0.7", 2222, &a),
            HostKeyStatus::Trusted { line: 2 }
        ));
        assert!(matches!(
            kh.check("10.0.0.17", 2222, &a),
            HostKeyStatus::Unknown { .. }
        ));
        assert!(glob(b"a*b*c", b"aXXbYc"));
        assert!(!glob(b"a*b", b"aXXbc"));
    }

    #[test]
    fn markers_and_malformed_lines() {
        let kh = KnownHosts::parse(&format!(
            "@cert-authority *.example.com ssh-ed25519 {KEY_B}\n\
             @revoked * ssh-ed25519 {KEY_B}\n\
             @bogus b.example.com ssh-ed25519 {KEY_A}\n\
             b.example.com ssh-ed25519 not-base64\n\
             b.example.com ssh-rsa {KEY_A}\n\
             justonefield\n"
        ));
        assert_eq!(kh.skipped_lines(), 4);
        assert_eq!(
            kh.check("b.example.com", 22, &key(KEY_A)),
            HostKeyStatus::Unknown {
                cert_authority_lines: vec![1]
            }
        );
        assert_eq!(
            kh.check("b.example.com", 22, &key(KEY_B)),
            HostKeyStatus::Revoked { line: 2 }
        );
    }

    #[test]
    fn pin_appends_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        assert!(pin_host_key(&path, "127.0.0.1", 2222, &key(KEY_A)).unwrap());
        assert!(!pin_host_key(&path, "127.0.0.1", 2222, &key(KEY_A)).unwrap());
        let err = pin_host_key(&path, "127.0.0.1", 2222, &key(KEY_B)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Verification);
        assert!(err.to_string().contains("ssh-keygen -R"), "{err}");
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"));
        let kh = KnownHosts::load(&path).unwrap();
        assert!(matches!(
            kh.check("127.0.0.1", 2222, &key(KEY_A)),
            HostKeyStatus::Trusted { .. }
        ));
    }

    #[test]
    fn missing_file_is_empty() {
        let kh = KnownHosts::load("/nonexistent/known_hosts").unwrap();
        assert!(!kh.exists());
        assert!(matches!(
            kh.check("h", 22, &key(KEY_A)),
            HostKeyStatus::Unknown { .. }
        ));
    }
}
