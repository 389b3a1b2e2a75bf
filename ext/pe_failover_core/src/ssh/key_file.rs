//! Checks on the client's private key file before it is handed to libssh2,
//! so a missing, unreadable, encrypted or wrong file gets a clear error.
//! The key's contents never appear in a message.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::{Error, ErrorKind, Result};

/// Larger than any private key file; anything bigger is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Wipes its buffer when dropped, so key bytes do not linger in freed memory.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away.
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Fails unless `path` holds an unencrypted private key in a format libssh2
/// reads (OpenSSH's `openssh-key-v1`, or PEM/PKCS#8).
pub(crate) fn check_private_key(path: &Path) -> Result<()> {
    let generate = format!(
        "create the transfer key with `ssh-keygen -t ed25519 -N '' -f {}`, or point \
         private_key at the existing one",
        path.display()
    );
    let file = fs::File::open(path).map_err(|e| {
        let err = Error::io("read the SSH private key", path, e);
        if err.kind() == ErrorKind::NotFound {
            err.with_hint(generate.clone())
        } else {
            err
        }
    })?;
    let mut data = Wiped(Vec::with_capacity(4096));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut data.0)
        .map_err(|e| Error::io("read the SSH private key", path, e))?;
    let invalid = |what: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} is not usable as an SSH private key: {what}",
                path.display()
            ),
        )
        .with_path(path)
    };
    if data.0.len() as u64 > MAX_KEY_FILE {
        return Err(invalid("the file is far too large for a key").with_hint(generate));
    }
    let text = String::from_utf8_lossy(&data.0);
    let text = text.trim_start();
    if text.starts_with("ssh-") || text.starts_with("ecdsa-") {
        return Err(invalid("it is a public key (.pub)")
            .with_hint("point private_key at the private half, the file without .pub"));
    }
    if let Some(rest) = text.strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let body: String = rest
            .split("-----END")
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let blob = Wiped(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|_| invalid("its OpenSSH key data is not valid base64"))?,
        );
        let cipher = openssh_cipher(&blob.0).ok_or_else(|| invalid("malformed OpenSSH key"))?;
        if cipher != b"none" {
            return Err(encrypted(path));
        }
        return Ok(());
    }
    if text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || (text.starts_with("-----BEGIN ") && text.contains("Proc-Type: 4,ENCRYPTED"))
    {
        return Err(encrypted(path));
    }
    if text.starts_with("-----BEGIN ") && text.contains("PRIVATE KEY-----") {
        return Ok(());
    }
    Err(invalid("it holds no private key").with_hint(generate))
}

fn encrypted(path: &Path) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "the SSH private key {} is protected by a passphrase, but replication runs \
             unattended",
            path.display()
        ),
    )
    .with_path(path)
    .with_hint(format!(
        "remove the passphrase with `ssh-keygen -p -N '' -f {}` (the key stays 0600 and \
         can only run the receiver on the passive)",
        path.display()
    ))
}

/// The cipher name of an `openssh-key-v1` blob (`none` when unencrypted).
fn openssh_cipher(blob: &[u8]) -> Option<&[u8]> {
    let rest = blob.strip_prefix(b"openssh-key-v1\0")?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest.get(4..4 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    fn openssh(cipher: &str) -> String {
        let mut blob = b"openssh-key-v1\0".to_vec();
        blob.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
        blob.extend_from_slice(cipher.as_bytes());
        blob.extend_from_slice(&[0; 16]);
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            STANDARD.encode(blob)
        )
    }

    #[test]
    fn classifies_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(check_private_key(&write(d, "ok", &openssh("none"))).is_ok());
        let pkcs8 =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(check_private_key(&write(d, "pkcs8", pkcs8)).is_ok());

        let err = check_private_key(&write(d, "enc", &openssh("aes256-ctr"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("passphrase"), "{err}");

        let enc_pem =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(check_private_key(&write(d, "encpem", enc_pem))
            .unwrap_err()
            .to_string()
            .contains("passphrase"));

        let err = check_private_key(&write(d, "pub", "ssh-ed25519 AAAA x\n")).unwrap_err();
        assert!(err.to_string().contains("public key"), "{err}");

        let err = check_private_key(&d.join("missing")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("ssh-keygen -t ed25519"), "{err}");

        let err = check_private_key(&write(d, "junk", "hello\n")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!err.to_string().contains("hello"), "{err}");
    }
}
