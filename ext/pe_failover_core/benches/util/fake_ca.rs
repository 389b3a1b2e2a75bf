//! A generated CA in the Puppet layout for the replication benchmarks:
//! certificate-sized files in `signed/`, an inventory that grows, a serial
//! file and a CRL, changed the way puppetserver changes them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The active's ssl directory (`<root>/a/ssl`) and cadir (`<root>/a/ca`).
pub struct FakeCa {
    root: PathBuf,
    serial: u64,
}

impl FakeCa {
    /// Creates the CA under `root` with `n` signed certificates.
    pub fn create(root: &Path, n: usize) -> FakeCa {
        let mut ca = FakeCa {
            root: root.to_path_buf(),
            serial: 2,
        };
        let cadir = ca.cadir();
        fs::create_dir_all(cadir.join("signed")).unwrap();
        fs::create_dir_all(ca.ssldir().join("certs")).unwrap();
        for (f, body) in [
            ("ca_crt.pem", "CA CERT\n"),
            ("ca_key.pem", "CA KEY\n"),
            ("ca_crl.pem", "CRL\n"),
            ("inventory.txt", ""),
            ("serial", "0002\n"),
        ] {
            fs::write(cadir.join(f), body).unwrap();
        }
        fs::write(ca.ssldir().join("crl.pem"), "CRL\n").unwrap();
        fs::write(ca.ssldir().join("certs/ca.pem"), "CA CERT\n").unwrap();
        for i in 0..n {
            ca.sign(&format!("node{i:06}.example.com"));
        }
        ca
    }

    /// `<root>/a/ssl`.
    pub fn ssldir(&self) -> PathBuf {
        self.root.join("a/ssl")
    }

    /// `<root>/a/ca`.
    pub fn cadir(&self) -> PathBuf {
        self.root.join("a/ca")
    }

    /// A signing: a new certificate, a line appended to the inventory, the
    /// serial file rewritten.
    pub fn sign(&mut self, name: &str) {
        let ca = self.cadir();
        fs::write(
            ca.join(format!("signed/{name}.pem")),
            format!(
                "-----BEGIN CERTIFICATE-----\n{name} {:#x}\n{}\n-----END CERTIFICATE-----\n",
                self.serial,
                "M".repeat(1300)
            ),
        )
        .unwrap();
        let mut inv = fs::OpenOptions::new()
            .append(true)
            .open(ca.join("inventory.txt"))
            .unwrap();
        writeln!(
            inv,
            "{:#06x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN={name}",
            self.serial
        )
        .unwrap();
        self.serial += 1;
        fs::write(ca.join("serial"), format!("{:04X}\n", self.serial)).unwrap();
    }

    /// A revocation: the CRL changes, nothing in `signed/` does.
    pub fn revoke(&mut self, name: &str) {
        let path = self.cadir().join("ca_crl.pem");
        let mut crl = fs::read_to_string(&path).unwrap();
        crl.push_str(&format!("revoked {name}\n"));
        fs::write(path, crl).unwrap();
    }
}
