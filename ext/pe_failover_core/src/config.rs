//! The configuration file shared by every pe_failover command.
//!
//! One JSON document, written by the Puppet classes (or by hand), read by
//! `pe_failover sync|receive|apply|watch|status|nc`. Every key except `role`
//! has a default; unknown keys are refused so that a typo never silently
//! falls back to a default. [`Config::load`] reports problems with the key's
//! full name (`replicas[0].known_hosts`) and the file.
//!
//! ```json
//! {
//!   "role": "active",
//!   "certname": "a.example.com",
//!   "state_dir": "/opt/pe_failover/state",
//!   "ca": { "ssldir": "/etc/puppetlabs/puppet/ssl" },
//!   "replicas": [ { "host": "b.example.com" } ],
//!   "nc": { "enabled": true, "hostnames": { "a.example.com": "b.example.com" } }
//! }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// Which side of the pair this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ships its CA and classifier groups to the replicas.
    Active,
    /// Receives and applies; refuses nothing but transactions once promoted.
    Passive,
}

impl Role {
    /// `"active"` or `"passive"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Passive => "passive",
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host's role.
    pub role: Role,
    /// This host's certname: its own certificate and key are never
    /// replicated nor overwritten. Default: the host name.
    #[serde(default = "default_certname")]
    pub certname: String,
    /// Where staging, snapshots, caches and status files live.
    /// Default: `/opt/pe_failover/state`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// CA replication settings.
    #[serde(default)]
    pub ca: CaConfig,
    /// The passive primaries this host ships to (active role).
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Node Classifier replication settings.
    #[serde(default)]
    pub nc: NcConfig,
    /// Watcher timing.
    #[serde(default)]
    pub watch: WatchConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// CA replication settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Puppet's ssldir. Default: `/etc/puppetlabs/puppet/ssl`.
    #[serde(default = "default_ssldir")]
    pub ssldir: PathBuf,
    /// The CA directory; detected when absent (`/etc/puppetlabs/puppetserver/ca`
    /// from Puppet 7 on, else `<ssldir>/ca`).
    #[serde(default)]
    pub cadir: Option<PathBuf>,
    /// Extra glob patterns (relative to the cadir) never replicated.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Owner of the files written on the passive. Default: `pe-puppet`.
    #[serde(default = "default_puppet_user")]
    pub owner: String,
    /// Group of the files written on the passive. Default: `pe-puppet`.
    #[serde(default = "default_puppet_user")]
    pub group: String,
    /// Command run on the passive after the CRL changed, as argv.
    /// Default: `["systemctl", "reload", "pe-puppetserver"]`.
    #[serde(default = "default_reload")]
    pub reload_command: Vec<String>,
    /// Largest share of the live CA files one apply may delete before it is
    /// refused (unless forced). Default: 0.10.
    #[serde(default = "default_share")]
    pub max_delete_share: f64,
    /// Snapshots kept on the passive. Default: 10.
    #[serde(default = "default_keep")]
    pub keep_snapshots: usize,
}

impl Default for CaConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every CaConfig key has a default")
    }
}

/// One passive primary to ship to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Host name (or address) of the passive.
    pub host: String,
    /// SSH port. Default: 22.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Transfer user on the passive. Default: `pe-transfer`.
    #[serde(default = "default_transfer_user")]
    pub user: String,
    /// Private key (ed25519). Default: `/opt/pe_failover/ssh/id_ed25519`.
    #[serde(default = "default_identity")]
    pub identity_file: PathBuf,
    /// known_hosts file pinning the passive's host key.
    /// Default: `/opt/pe_failover/ssh/known_hosts`.
    #[serde(default = "default_known_hosts")]
    pub known_hosts: PathBuf,
    /// Seconds to wait for the TCP connection and SSH handshake. Default: 10.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// Seconds a read or write may block. Default: 30.
    #[serde(default = "default_io_timeout")]
    pub io_timeout: u64,
}

/// Node Classifier replication settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcConfig {
    /// Whether classifier groups are replicated. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// This host's classifier. Default: `https://<certname>:4433`.
    #[serde(default)]
    pub server: Option<String>,
    /// Client certificate. Default: `<ssldir>/certs/<certname>.pem`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client key. Default: `<ssldir>/private_keys/<certname>.pem`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// CA certificate that signed the classifier's certificate.
    /// Default: `<ssldir>/certs/ca.pem`.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// Seconds between polls of the active's classifier. Default: 60.
    #[serde(default = "default_nc_interval")]
    pub interval: u64,
    /// Host names rewritten in groups on their way to the passive
    /// (active name → passive name).
    #[serde(default)]
    pub hostnames: BTreeMap<String, String>,
    /// Largest share of the passive's groups one apply may delete before it
    /// is refused (unless forced). Default: 0.10.
    #[serde(default = "default_share")]
    pub max_delete_share: f64,
    /// Replace the passive's whole tree with import-hierarchy instead of
    /// applying the minimal set of changes. Default: false.
    #[serde(default)]
    pub replace: bool,
    /// Received group dumps kept on the passive. Default: 10.
    #[serde(default = "default_keep")]
    pub keep_dumps: usize,
}

impl Default for NcConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every NcConfig key has a default")
    }
}

/// Watcher timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Quiet time after the last change before syncing, ms. Default: 150.
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
    /// Longest delay from a change to its sync during a burst, ms. Default: 1000.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// Seconds between full verifications that repair missed events.
    /// Default: 300.
    #[serde(default = "default_verify_interval")]
    pub verify_interval: u64,
    /// Seconds to wait after a failed sync before trying again. Default: 5.
    #[serde(default = "default_retry")]
    pub retry_interval: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every WatchConfig key has a default")
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Send log lines to syslog. Default: true.
    #[serde(default = "default_true")]
    pub syslog: bool,
    /// Also write them to stderr; default: only when stderr is a terminal.
    #[serde(default)]
    pub stderr: Option<bool>,
}

impl Default for LogConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every LogConfig key has a default")
    }
}

fn default_certname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/opt/pe_failover/state")
}
fn default_ssldir() -> PathBuf {
    PathBuf::from("/etc/puppetlabs/puppet/ssl")
}
fn default_puppet_user() -> String {
    "pe-puppet".into()
}
fn default_reload() -> Vec<String> {
    vec![
        "systemctl".into(),
        "reload".into(),
        "pe-puppetserver".into(),
    ]
}
fn default_share() -> f64 {
    0.10
}
fn default_keep() -> usize {
    10
}
fn default_port() -> u16 {
    22
}
fn default_transfer_user() -> String {
    "pe-transfer".into()
}
fn default_identity() -> PathBuf {
    PathBuf::from("/opt/pe_failover/ssh/id_ed25519")
}
fn default_known_hosts() -> PathBuf {
    PathBuf::from("/opt/pe_failover/ssh/known_hosts")
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_io_timeout() -> u64 {
    30
}
fn default_true() -> bool {
    true
}
fn default_nc_interval() -> u64 {
    60
}
fn default_debounce() -> u64 {
    150
}
fn default_max_delay() -> u64 {
    1000
}
fn default_verify_interval() -> u64 {
    300
}
fn default_retry() -> u64 {
    5
}

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|e| {
            Error::io("read the configuration", path, e)
                .with_hint("pass the file written by the pe_failover class with --config")
        })?;
        Config::parse(&text).map_err(|e| {
            Error::new(e.kind(), format!("{}: {}", path.display(), e.message())).with_path(path)
        })
    }

    /// Parses and validates a configuration document.
    pub fn parse(text: &str) -> Result<Config> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let msg = if at == "." || at.is_empty() {
                format!("invalid configuration: {inner}")
            } else {
                format!("invalid configuration at {at}: {inner}")
            };
            Error::new(ErrorKind::InvalidInput, msg)
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("invalid configuration at {key}: {why}"),
            ))
        };
        if self.certname.is_empty() {
            return bad("certname", "must not be empty".into());
        }
        if !self.state_dir.is_absolute() {
            return bad("state_dir", "must be an absolute path".into());
        }
        if !self.ca.ssldir.is_absolute() {
            return bad("ca.ssldir", "must be an absolute path".into());
        }
        if let Some(c) = &self.ca.cadir {
            if !c.is_absolute() {
                return bad("ca.cadir", "must be an absolute path".into());
            }
        }
        for (key, share) in [
            ("ca.max_delete_share", self.ca.max_delete_share),
            ("nc.max_delete_share", self.nc.max_delete_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return bad(key, format!("{share} is not between 0 and 1"));
            }
        }
        if self.ca.keep_snapshots == 0 {
            return bad("ca.keep_snapshots", "must be at least 1".into());
        }
        if self.ca.reload_command.is_empty() {
            return bad(
                "ca.reload_command",
                "must name a command (use [\"true\"] to do nothing)".into(),
            );
        }
        crate::exclude::Excludes::new(&self.ca.exclude).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid configuration at ca.exclude: {}", e.message()),
            )
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if r.host.is_empty() {
                return bad(&format!("replicas[{i}].host"), "must not be empty".into());
            }
            if !seen.insert((r.host.as_str(), r.port)) {
                return bad(
                    &format!("replicas[{i}].host"),
                    format!("{}:{} is listed twice", r.host, r.port),
                );
            }
            if r.connect_timeout == 0 || r.io_timeout == 0 {
                return bad(
                    &format!("replicas[{i}]"),
                    "timeouts must be at least 1 second".into(),
                );
            }
        }
        if self.nc.keep_dumps == 0 {
            return bad("nc.keep_dumps", "must be at least 1".into());
        }
        if self.nc.interval == 0 {
            return bad("nc.interval", "must be at least 1 second".into());
        }
        if let Some(server) = &self.nc.server {
            if !server.starts_with("https://") {
                return bad("nc.server", format!("{server:?} must be an https:// URL"));
            }
        }
        for (from, to) in &self.nc.hostnames {
            if from.is_empty() || to.is_empty() || from == to {
                return bad(
                    "nc.hostnames",
                    format!("{from:?} => {to:?} is not a rewrite of one host name into another"),
                );
            }
        }
        Ok(())
    }

    /// The replica entry for `host`, if configured.
    pub fn replica(&self, host: &str) -> Option<&ReplicaConfig> {
        self.replicas.iter().find(|r| r.host == host)
    }

    /// The classifier URL of this host.
    pub fn nc_server(&self) -> String {
        self.nc
            .server
            .clone()
            .unwrap_or_else(|| format!("https://{}:4433", self.certname))
    }

    /// Client certificate for the classifier.
    pub fn nc_cert(&self) -> PathBuf {
        self.nc.cert.clone().unwrap_or_else(|| {
            self.ca
                .ssldir
                .join("certs")
                .join(format!("{}.pem", self.certname))
        })
    }

    /// Client key for the classifier.
    pub fn nc_key(&self) -> PathBuf {
        self.nc.key.clone().unwrap_or_else(|| {
            self.ca
                .ssldir
                .join("private_keys")
                .join(format!("{}.pem", self.certname))
        })
    }

    /// CA certificate for verifying the classifier.
    pub fn nc_cacert(&self) -> PathBuf {
        self.nc
            .cacert
            .clone()
            .unwrap_or_else(|| self.ca.ssldir.join("certs").join("ca.pem"))
    }

    /// Watcher debounce settings.
    pub fn debounce(&self) -> crate::watch::Debounce {
        crate::watch::Debounce {
            quiet: Duration::from_millis(self.watch.debounce_ms),
            max_delay: Duration::from_millis(self.watch.max_delay_ms.max(self.watch.debounce_ms)),
        }
    }
}

/// Resolves a user name (or numeric id) to a uid.
pub fn lookup_uid(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad user name {name:?}")))?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we
    // copy the field out before any other call.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "user {name:?} does not exist on this host (check ca.owner in the configuration)"
            ),
        ));
    }
    Ok(unsafe { (*pw).pw_uid })
}

/// Resolves a group name (or numeric id) to a gid.
pub fn lookup_gid(name: &str) -> Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad group name {name:?}")))?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(cname.as_ptr()) };
    if gr.is_null() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "group {name:?} does not exist on this host (check ca.group in the configuration)"
            ),
        ));
    }
    Ok(unsafe { (*gr).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(r#"{"role":"passive"}"#).unwrap();
        assert_eq!(c.role, Role::Passive);
        assert_eq!(c.state_dir, PathBuf::from("/opt/pe_failover/state"));
        assert_eq!(c.ca.owner, "pe-puppet");
        assert_eq!(c.ca.max_delete_share, 0.10);
        assert_eq!(
            c.ca.reload_command,
            ["systemctl", "reload", "pe-puppetserver"]
        );
        assert_eq!(c.nc.interval, 60);
        assert!(c.nc.enabled);
        assert_eq!(c.watch.debounce_ms, 150);
        assert!(c.replicas.is_empty());
    }

    #[test]
    fn replicas_and_derived_paths() {
        let c = Config::parse(
            r#"{"role":"active","certname":"a.example.com",
                "replicas":[{"host":"b.example.com"}],
                "nc":{"hostnames":{"a.example.com":"b.example.com"}}}"#,
        )
        .unwrap();
        let r = c.replica("b.example.com").unwrap();
        assert_eq!((r.port, r.user.as_str()), (22, "pe-transfer"));
        assert_eq!(c.nc_server(), "https://a.example.com:4433");
        assert_eq!(
            c.nc_cert(),
            PathBuf::from("/etc/puppetlabs/puppet/ssl/certs/a.example.com.pem")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"role":"primary"}"#, "role"),
            (
                r#"{"role":"active","replicas":[{"host":"b","prot":22}]}"#,
                "replicas[0]",
            ),
            (
                r#"{"role":"active","ca":{"max_delete_share":2}}"#,
                "ca.max_delete_share",
            ),
            (r#"{"role":"active","state_dir":"relative"}"#, "state_dir"),
            (r#"{"role":"active","ca":{"exclude":["[x"]}}"#, "ca.exclude"),
            (
                r#"{"role":"active","replicas":[{"host":"b"},{"host":"b"}]}"#,
                "listed twice",
            ),
            (
                r#"{"role":"active","nc":{"server":"http://x"}}"#,
                "nc.server",
            ),
            (r#"{"rol":"active"}"#, "unknown field"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        fs::write(&p, "{").unwrap();
        let err = Config::load(&p).unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
        let err = Config::load(dir.path().join("missing.json")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("--config"), "{err}");
    }

    #[test]
    fn users_and_groups_resolve() {
        assert_eq!(lookup_uid("root").unwrap(), 0);
        assert_eq!(lookup_gid("0").unwrap(), 0);
        assert_eq!(
            lookup_uid("no-such-user-pe").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
