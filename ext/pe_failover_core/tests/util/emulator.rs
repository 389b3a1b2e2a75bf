//! The classifier emulator (`spec/support/nc_emulator.rb`) and the test CA
//! (`spec/support/test_ca.rb`) as child processes, for tests over real TLS.
//!
//! ```ignore
//! let ca = TestCa::create(&tmp.path().join("ca"));
//! let emu = Emulator::builder(&ca, tmp.path().join("active")).seed(fixture).start();
//! let client = emu.client("client.test").build().unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pe_failover_core::classifier::{ClassifierClient, ClassifierClientBuilder, Group, RetryPolicy};
use serde_json::{json, Value};

/// The repository root (two levels above the core crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A file of `spec/fixtures/nc/`.
pub fn nc_fixture(name: &str) -> PathBuf {
    repo_root().join("spec/fixtures/nc").join(name)
}

fn ruby(args: &[&str]) -> String {
    let out = Command::new("ruby")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("ruby must be installed (apt-get install ruby ruby-webrick)");
    assert!(
        out.status.success(),
        "ruby {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A host identity in a Puppet ssldir.
#[derive(Clone, Debug)]
pub struct HostFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: PathBuf,
}

/// A test CA driven through `ruby spec/support/test_ca.rb`.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> TestCa {
        let d = dir.to_str().unwrap();
        ruby(&["spec/support/test_ca.rb", "create", d]);
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's current CRL (rewritten on every revoke).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("ca/ca_crl.pem")
    }

    /// Signs `certname` (first use) and writes its files into `ssldir`.
    pub fn host_files(&self, certname: &str, ssldir: &Path) -> HostFiles {
        let out = ruby(&[
            "spec/support/test_ca.rb",
            "host-files",
            self.dir.to_str().unwrap(),
            certname,
            ssldir.to_str().unwrap(),
        ]);
        let files: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
        HostFiles {
            cert: PathBuf::from(files["cert"]),
            key: PathBuf::from(files["key"]),
            ca: PathBuf::from(files["ca"]),
            crl: PathBuf::from(files["crl"]),
        }
    }

    /// Like [`host_files`](Self::host_files), with an RSA key (the CA signs
    /// the key it finds in its `host_keys/`).
    pub fn rsa_host_files(&self, certname: &str, ssldir: &Path) -> HostFiles {
        let key = self.dir.join("host_keys").join(format!("{certname}.pem"));
        fs::create_dir_all(key.parent().unwrap()).unwrap();
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
        self.host_files(certname, ssldir)
    }

    pub fn revoke(&self, certname: &str) {
        ruby(&[
            "spec/support/test_ca.rb",
            "revoke",
            self.dir.to_str().unwrap(),
            certname,
        ]);
    }
}

/// Rewrites a PEM private key in its traditional form (PKCS#1 for RSA,
/// SEC1 for EC) next to it and returns the new path.
pub fn traditional_key(key: &Path) -> PathBuf {
    let out = key.with_extension("traditional.pem");
    let status = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(key)
        .arg("-out")
        .arg(&out)
        .status()
        .expect("openssl");
    assert!(status.success());
    out
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start an emulator.
pub struct EmulatorBuilder<'a> {
    ca: &'a TestCa,
    dir: PathBuf,
    server_ca: Option<&'a TestCa>,
    seed: Option<Value>,
    classes: Option<Value>,
    allowlist: Vec<String>,
    start_delay: Option<f64>,
    crl: bool,
}

impl<'a> EmulatorBuilder<'a> {
    /// Initial groups (a `GET /v1/groups` array).
    pub fn seed(mut self, groups: Value) -> Self {
        self.seed = Some(groups);
        self
    }

    /// Initial groups from typed groups.
    pub fn seed_groups(self, groups: &[Group]) -> Self {
        let v = Value::Array(groups.iter().map(Group::to_value).collect());
        self.seed(v)
    }

    /// The class catalog `{"env": {"class": {"param": default}}}`.
    pub fn classes(mut self, catalog: Value) -> Self {
        self.classes = Some(catalog);
        self
    }

    /// Certnames allowed in (default: `client.test`).
    pub fn allowlist(mut self, names: &[&str]) -> Self {
        self.allowlist = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Serve with a certificate from another CA than the clients'.
    pub fn server_ca(mut self, ca: &'a TestCa) -> Self {
        self.server_ca = Some(ca);
        self
    }

    /// Open the socket only after `secs` (connections are refused meanwhile).
    pub fn start_delay(mut self, secs: f64) -> Self {
        self.start_delay = Some(secs);
        self
    }

    /// Check client certificates against the CA's CRL (default true).
    pub fn crl(mut self, on: bool) -> Self {
        self.crl = on;
        self
    }

    /// Starts the process and waits until it listens (unless a start delay
    /// was asked for: then it returns at once, with the port chosen).
    pub fn start(self) -> Emulator {
        fs::create_dir_all(&self.dir).unwrap();
        let server_ca = self.server_ca.unwrap_or(self.ca);
        let server = server_ca.host_files("nc.test", &self.dir.join("server_ssl"));
        // Client certificates are checked against the clients' CA.
        let client_ca = self.ca.dir.join("ca/ca_crt.pem");
        let allowlist = self.dir.join("rbac-certificate-allowlist");
        fs::write(&allowlist, self.allowlist.join("\n") + "\n").unwrap();
        let ready = self.dir.join("ready");
        let _ = fs::remove_file(&ready);
        let port = if self.start_delay.is_some() {
            free_port()
        } else {
            0
        };
        let mut cmd = Command::new("ruby");
        cmd.arg(repo_root().join("spec/support/nc_emulator.rb"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--cert")
            .arg(&server.cert)
            .arg("--key")
            .arg(&server.key)
            .arg("--cacert")
            .arg(&client_ca)
            .arg("--allowlist")
            .arg(&allowlist)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--log")
            .arg(self.dir.join("emulator.log"));
        if self.crl {
            cmd.arg("--crl").arg(self.ca.crl_path());
        }
        for (name, value) in [("seed", &self.seed), ("classes", &self.classes)] {
            if let Some(v) = value {
                let path = self.dir.join(format!("{name}.json"));
                fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
                cmd.arg(format!("--{name}")).arg(path);
            }
        }
        if let Some(delay) = self.start_delay {
            cmd.args(["--start-delay", &delay.to_string()]);
        }
        let out = fs::File::create(self.dir.join("emulator.out")).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the emulator");
        let mut emu = Emulator {
            child,
            dir: self.dir,
            port,
            control: None,
            control_files: self
                .ca
                .host_files("emulator-control.test", &self.ca.dir.join("control_ssl")),
            ca_dir: self.ca.dir.clone(),
        };
        if self.start_delay.is_none() {
            emu.wait_ready(&ready);
        }
        emu
    }
}

/// A running emulator; stopped when dropped.
pub struct Emulator {
    child: Child,
    dir: PathBuf,
    port: u16,
    control: Option<reqwest::blocking::Client>,
    control_files: HostFiles,
    ca_dir: PathBuf,
}

impl Emulator {
    /// `ca`: the CA of the clients (and, unless `server_ca` is given, of
    /// the server). `dir`: where its files go.
    pub fn builder(ca: &TestCa, dir: impl Into<PathBuf>) -> EmulatorBuilder<'_> {
        EmulatorBuilder {
            ca,
            dir: dir.into(),
            server_ca: None,
            seed: None,
            classes: None,
            allowlist: vec!["client.test".into()],
            start_delay: None,
            crl: true,
        }
    }

    fn wait_ready(&mut self, ready: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = fs::read_to_string(ready) {
                if let Ok(port) = text.trim().parse() {
                    self.port = port;
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("emulator exited ({status}):\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "emulator not ready:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a delayed start to finish.
    pub fn wait_listening(&mut self) {
        let ready = self.dir.join("ready");
        self.wait_ready(&ready);
    }

    pub fn output(&self) -> String {
        ["emulator.out", "emulator.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client builder with `certname`'s identity (signed on first use by
    /// the clients' CA), the CA's CRL, fast retries.
    pub fn client(&self, certname: &str) -> ClassifierClientBuilder {
        let ssl = self.ca_dir.join("clients").join(certname);
        let ca = TestCa {
            dir: self.ca_dir.clone(),
        };
        let files = ca.host_files(certname, &ssl);
        ClassifierClient::builder(self.base_url())
            .client_cert(files.cert)
            .client_key(files.key)
            .ca_cert(files.ca)
            .crl(ca.crl_path())
            .retry(RetryPolicy {
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(500),
                max_wait: Duration::from_secs(10),
            })
    }

    fn control_client(&mut self) -> reqwest::blocking::Client {
        if let Some(c) = &self.control {
            return c.clone();
        }
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        for cert in CertificateDer::pem_file_iter(&self.control_files.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&self.control_files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(&self.control_files.key).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let inner = reqwest::ClientBuilder::new()
            .no_proxy()
            .tls_backend_preconfigured(config);
        let client = reqwest::blocking::ClientBuilder::from(inner)
            .build()
            .unwrap();
        self.control = Some(client.clone());
        client
    }

    /// A test-only control call (`/_emulator/...`); returns the JSON answer.
    pub fn control(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let client = self.control_client();
        let url = format!("{}/_emulator/{path}", self.base_url());
        let mut req = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&b).unwrap());
        }
        let res = req.send().expect("control request");
        let status = res.status();
        let text = res.text().unwrap();
        assert!(
            status.is_success(),
            "control {method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    /// Injects a fault (`starting`, `error500`, `slow`, `drop`, `none`).
    pub fn fault(&mut self, mode: &str, count: Option<u64>, delay: Option<f64>) {
        let mut doc = json!({"mode": mode});
        if let Some(c) = count {
            doc["count"] = json!(c);
        }
        if let Some(d) = delay {
            doc["delay"] = json!(d);
        }
        self.control("POST", "fault", Some(doc));
    }

    pub fn stats(&mut self) -> Value {
        self.control("GET", "stats", None)
    }

    /// Write calls since the last [`reset_stats`](Self::reset_stats).
    pub fn writes(&mut self) -> u64 {
        self.stats()["writes"].as_u64().unwrap()
    }

    pub fn reset_stats(&mut self) {
        self.control("DELETE", "stats", None);
    }

    /// Stages a class catalog for the next `update-classes`.
    pub fn stage_classes(&mut self, catalog: Value) {
        self.control("PUT", "classes", Some(catalog));
    }

    /// The emulator's groups, read through a fresh client.
    pub fn groups(&self) -> Vec<Group> {
        self.client("client.test")
            .build()
            .unwrap()
            .groups()
            .unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SIGTERM lets it remove its files; then make sure it is gone.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The class catalog a classifier would have for `groups`: every class a
/// group uses or inherits, in the group's environment, with the parameters
/// set anywhere.
pub fn catalog_for(groups: &[Group]) -> Value {
    let by_id: HashMap<&str, &Group> = groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut catalog: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
    for g in groups {
        let env = catalog.entry(g.environment.clone()).or_default();
        let mut cur = Some(g);
        for _ in 0..=groups.len() {
            let Some(node) = cur else { break };
            for (class, params) in &node.classes {
                let entry = env.entry(class.clone()).or_default();
                for (p, v) in params {
                    entry.insert(p.clone(), v.clone());
                }
            }
            if node.is_root() {
                break;
            }
            cur = by_id.get(node.parent.as_str()).copied();
        }
    }
    serde_json::to_value(catalog).unwrap()
}
