//! Helpers shared by the integration tests: temporary trees, and (in
//! [`sshd`]) a real OpenSSH server on 127.0.0.1.
#![allow(dead_code)]

pub mod emulator;
pub mod selinux;
pub mod sshd;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// A temporary directory with a `tree/` root inside it, so tests can put
/// side files (caches) next to the root with `path("../x")`.
pub struct TempTree {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl TempTree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("tree");
        fs::create_dir(&root).expect("root");
        TempTree { dir, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        if let Some(side) = rel.strip_prefix("../") {
            self.dir.path().join(side)
        } else {
            self.root.join(rel)
        }
    }

    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

/// A tree shaped like a Puppet cadir with `n` signed certificates.
pub fn ca_tree(n: usize) -> TempTree {
    let t = TempTree::new();
    t.file(
        "ca/ca_crt.pem",
        "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
    );
    t.file(
        "ca/ca_key.pem",
        "-----BEGIN RSA PRIVATE KEY-----\nK\n-----END RSA PRIVATE KEY-----\n",
    );
    t.file("ca/ca_crl.pem", "crl");
    t.file("ca/serial", format!("{:04X}\n", n + 2));
    let mut inventory = String::new();
    for i in 0..n {
        t.file(
            &format!("ca/signed/node{i}.example.com.pem"),
            format!(
                "-----BEGIN CERTIFICATE-----\nnode {i} {}\n-----END CERTIFICATE-----\n",
                "A".repeat(1500)
            ),
        );
        inventory.push_str(&format!(
            "0x{:04x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN=node{i}.example.com\n",
            i + 2
        ));
    }
    t.file("ca/inventory.txt", inventory);
    t
}

/// `n` small files spread over directories of 1000 (`dNNN/fNNNNNNN.pem`).
pub fn many_files(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(
            dir.join(format!("f{i:07}.pem")),
            format!("certificate {i}\n"),
        )
        .unwrap();
    }
}

pub fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
