//! SSH public host keys: parsing, fingerprints and known_hosts lines.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// A public SSH host key: its algorithm name and its wire-format blob.
///
/// Public host keys are not secret; their fingerprint is what an
/// administrator compares out of band before pinning one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HostKey {
    key_type: String,
    blob: Vec<u8>,
}

impl HostKey {
    /// A key from its SSH wire-format blob (the bytes a server sends, and
    /// the base64-decoded second field of a `.pub` file). The algorithm name
    /// is read from the blob itself.
    pub fn from_blob(blob: impl Into<Vec<u8>>) -> Result<HostKey> {
        let blob = blob.into();
        let key_type = blob_key_type(&blob).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "malformed SSH public key: it does not start with an algorithm name",
            )
        })?;
        Ok(HostKey { key_type, blob })
    }

    /// A key from its algorithm name and base64 text, as in the fields of a
    /// known_hosts or `.pub` line. The name must match the one inside the
    /// blob.
    pub fn from_base64(key_type: &str, base64: &str) -> Result<HostKey> {
        let blob = STANDARD.decode(base64.trim()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("the {key_type} public key is not valid base64"),
            )
        })?;
        let key = HostKey::from_blob(blob)?;
        if key.key_type != key_type {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "public key says {key_type} but its data is a {} key",
                    key.key_type
                ),
            ));
        }
        Ok(key)
    }

    /// A key from OpenSSH public key text: `ssh-ed25519 AAAA... [comment]`,
    /// the contents of `/etc/ssh/ssh_host_ed25519_key.pub` (the form the
    /// module's `passive_host_key` parameter takes). A line that starts with
    /// a host name (a known_hosts or `ssh-keyscan` line) is accepted too; the
    /// host names are ignored.
    pub fn parse(text: &str) -> Result<HostKey> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let invalid = || {
            Error::new(
                ErrorKind::InvalidInput,
                "not an SSH public key: expected `<type> <base64> [comment]`, \
                 like the contents of /etc/ssh/ssh_host_ed25519_key.pub",
            )
        };
        let at = fields
            .iter()
            .take(2)
            .position(|f| looks_like_key_type(f))
            .ok_or_else(invalid)?;
        let base64 = fields.get(at + 1).ok_or_else(invalid)?;
        HostKey::from_base64(fields[at], base64)
    }

    /// The algorithm name, e.g. `ssh-ed25519` or `ecdsa-sha2-nistp256`.
    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    /// The key's wire-format blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The blob in base64, as written in known_hosts and `.pub` files.
    pub fn base64(&self) -> String {
        STANDARD.encode(&self.blob)
    }

    /// The SHA-256 fingerprint in OpenSSH's format, `SHA256:` followed by
    /// unpadded base64, exactly as `ssh-keygen -lf` and `ssh` print it.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(&self.blob))
        )
    }

    /// The short name `ssh-keyscan -t` takes for this key type (`ed25519`,
    /// `ecdsa`, `rsa`, ...).
    pub fn keyscan_type(&self) -> &str {
        keyscan_type(&self.key_type)
    }

    /// The known_hosts line that pins this key for `host` on `port`:
    /// `host ssh-ed25519 AAAA...` on port 22, `[host]:port ssh-ed25519
    /// AAAA...` on any other port (OpenSSH's convention).
    pub fn known_hosts_line(&self, host: &str, port: u16) -> String {
        format!(
            "{} {} {}",
            super::known_hosts::host_name_for(host, port),
            self.key_type,
            self.base64()
        )
    }
}

impl fmt::Display for HostKey {
    /// `ssh-ed25519 SHA256:...`: the type and fingerprint, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key_type, self.fingerprint())
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({self})")
    }
}

/// The `ssh-keyscan -t` name for an algorithm name.
pub(crate) fn keyscan_type(key_type: &str) -> &str {
    match key_type {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" => "rsa",
        "ssh-dss" => "dsa",
        t if t.starts_with("ecdsa-sha2-") => "ecdsa",
        t => t,
    }
}

/// Whether a known_hosts or `.pub` field is an algorithm name rather than
/// a host pattern or base64.
pub(crate) fn looks_like_key_type(field: &str) -> bool {
    field.starts_with("ssh-") || field.starts_with("ecdsa-") || field.starts_with("sk-")
}

/// The algorithm name at the start of a wire-format key blob.
fn blob_key_type(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4usize.checked_add(len)?)?;
    if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway public key made for these tests with ssh-keygen.
    const PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAQiXtkRbkZNAgTixS2gpOil4UmSqM2SxSLbinY/aOg6 test";

    #[test]
    fn parses_pub_lines_and_keyscan_lines() {
        let key = HostKey::parse(PUB).unwrap();
        assert_eq!(key.key_type(), "ssh-ed25519");
        assert_eq!(key.keyscan_type(), "ed25519");
        let scanned = HostKey::parse(&format!("[b.example.com]:2222 {PUB}")).unwrap();
        assert_eq!(scanned, key);
        // As printed by `ssh-keygen -lf` for this key.
        assert_eq!(
            key.fingerprint(),
            "SHA256:RALDau9HiV2ZYnxt9IaqjzfoOksK2OJ7qqa91hP2Q14"
        );
        assert_eq!(
            key.to_string(),
            format!("ssh-ed25519 {}", key.fingerprint())
        );
    }

    #[test]
    fn rejects_mismatched_type_and_garbage() {
        let b64 = PUB.split_whitespace().nth(1).unwrap();
        let err = HostKey::from_base64("ssh-rsa", b64).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(HostKey::parse("hello world").is_err());
        assert!(HostKey::from_base64("ssh-ed25519", "!!!").is_err());
        assert!(HostKey::from_blob(vec![0, 0, 0, 200, b'a']).is_err());
    }

    #[test]
    fn known_hosts_line_uses_brackets_off_port_22() {
        let key = HostKey::parse(PUB).unwrap();
        assert!(key
            .known_hosts_line("b.example.com", 22)
            .starts_with("b.example.com ssh-ed25519 AAAA"));
        assert!(key
            .known_hosts_line("b.example.com", 2222)
            .starts_with("[b.example.com]:2222 ssh-ed25519 AAAA"));
    }
}
