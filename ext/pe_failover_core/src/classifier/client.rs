//! A blocking HTTPS client of the Node Classifier API (nc-api §1, §3).
//!
//! It authenticates the way tools on a PE primary do: with the host's own
//! Puppet certificate, which PE allowlists for the classifier (nc-api §1),
//! and it trusts only the Puppet CA, never the system's roots.
//!
//! ```no_run
//! use pe_failover_core::classifier::ClassifierClient;
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let client = ClassifierClient::builder("https://b.example.com:4433")
//!     .puppet_ssldir("/etc/puppetlabs/puppet/ssl", "a.example.com")
//!     .build()?;
//! for group in client.groups()? {
//!     println!("{} {}", group.id, group.name);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every error names the host, and what to do next where that is known:
//!
//! - `401`: [`ErrorKind::Unauthorized`], naming the certname and the
//!   allowlist file ([`ALLOWLIST_PATH`]) on that host;
//! - a certificate problem: [`ErrorKind::Verification`], with the file at
//!   fault as the error's path (the CA file when the server's certificate is
//!   not trusted, the client certificate or key when the server refuses it);
//! - any other error status: [`ErrorKind::Api`], with the classifier's
//!   `kind` and `msg` and the request (method and path);
//! - connection failures: [`ErrorKind::Network`]; timeouts:
//!   [`ErrorKind::Timeout`].
//!
//! # Retries
//!
//! While `pe-console-services` starts, connections are refused and the
//! classifier answers `503`. Requests are retried then, with exponential
//! backoff, for at most [`RetryPolicy::max_wait`]; see [`RetryPolicy`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{groups_from_value, Group};
use super::plan::{Operation, GROUPS_PATH};
use super::tls::{self, TlsFiles};
use crate::cancel::CancelToken;
use crate::error::{Error, ErrorKind, Result};

/// The classifier's default port (nc-api §1).
pub const DEFAULT_PORT: u16 = 4433;

/// The RBAC certificate allowlist on a PE primary (PE 2021+; older releases
/// call it `rbac-certificate-whitelist`).
pub const ALLOWLIST_PATH: &str = "/etc/puppetlabs/console-services/rbac-certificate-allowlist";

/// Class refresh endpoint.
const UPDATE_CLASSES_PATH: &str = "/classifier-api/v1/update-classes";
/// All classes, in every environment.
const CLASSES_PATH: &str = "/classifier-api/v1/classes";
/// The classifier's entry in the status service.
const STATUS_PATH: &str = "/status/v1/services/classifier-service";

/// When and how long requests are retried while the classifier starts.
///
/// A request is retried when the connection is refused or the classifier
/// answers `503 Service Unavailable` (both mean `pe-console-services` is not
/// up yet), and, for `GET`, `PUT` and `DELETE` only, when the connection
/// closes before an answer arrives. Waits double from `initial_delay` up to
/// `max_delay`; once the next wait would pass `max_wait` in total, the
/// request fails with an error that says how long it tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait; default 500 ms.
    pub initial_delay: Duration,
    /// Longest single wait; default 10 s.
    pub max_delay: Duration,
    /// Longest total wait before giving up; default 120 s (PE's console
    /// services take a minute or two to start). Zero disables retries.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries: every request is tried once.
    pub fn none() -> Self {
        RetryPolicy {
            max_wait: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The default backoff, giving up after `max_wait` in total.
    pub fn up_to(max_wait: Duration) -> Self {
        RetryPolicy {
            max_wait,
            ..RetryPolicy::default()
        }
    }
}

/// Builds a [`ClassifierClient`]; see [`ClassifierClient::builder`].
///
/// Defaults: connect timeout 10 s, request timeout 120 s (one attempt, from
/// connecting to the last byte of the answer), [`RetryPolicy::default`], no
/// CRL. The client certificate, its key and the CA certificate are required.
#[derive(Clone, Debug)]
pub struct ClassifierClientBuilder {
    base_url: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    cancel: CancelToken,
}

impl ClassifierClientBuilder {
    /// The client certificate (PEM), e.g. `ssl/certs/<certname>.pem`.
    pub fn client_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.cert = Some(path.into());
        self
    }

    /// The client certificate's private key (PEM: PKCS#1 RSA, PKCS#8 or
    /// SEC1 EC), e.g. `ssl/private_keys/<certname>.pem`. It is read once and
    /// never logged.
    pub fn client_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.key = Some(path.into());
        self
    }

    /// The CA certificate(s) the server's certificate must chain to, e.g.
    /// `ssl/certs/ca.pem`. The system's trust store is never used.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// A CRL (PEM, e.g. `ssl/crl.pem`): a revoked server certificate is
    /// refused. Optional.
    pub fn crl(mut self, path: impl Into<PathBuf>) -> Self {
        self.crl = Some(path.into());
        self
    }

    /// Sets certificate, key, CA and (if the file exists) CRL from a Puppet
    /// ssldir and the host's certname: `certs/<certname>.pem`,
    /// `private_keys/<certname>.pem`, `certs/ca.pem`, `crl.pem`.
    pub fn puppet_ssldir(self, ssldir: impl AsRef<Path>, certname: &str) -> Self {
        let ssldir = ssldir.as_ref();
        let crl = ssldir.join("crl.pem");
        let this = self
            .client_cert(ssldir.join("certs").join(format!("{certname}.pem")))
            .client_key(ssldir.join("private_keys").join(format!("{certname}.pem")))
            .ca_cert(ssldir.join("certs").join("ca.pem"));
        if crl.is_file() {
            this.crl(crl)
        } else {
            this
        }
    }

    /// How long to wait for a TCP connection and TLS handshake; default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one attempt of a request may take, from connecting to
    /// reading the last byte of the answer; default 120 s (an
    /// import-hierarchy of a large tree is one request).
    ///
    /// This is a deadline per attempt rather than a limit on each read:
    /// reqwest's per-read timeout cannot be used with its blocking client
    /// (reading the body then panics outside reqwest's runtime).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The retry policy; default [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// A token that stops retries (checked before every attempt and while
    /// waiting between attempts). A request in flight runs until it is
    /// answered or times out.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Checks the settings and the certificate files, and builds the client.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] for a bad base URL or a missing
    /// setting, with [`ErrorKind::NotFound`]/[`ErrorKind::PermissionDenied`]
    /// for unreadable files, and with [`ErrorKind::Verification`] for a
    /// file that does not hold what it should (see the module docs). Nothing
    /// is sent over the network.
    pub fn build(self) -> Result<ClassifierClient> {
        let base = parse_base_url(&self.base_url)?;
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => unreachable_host(&self.base_url)?,
        };
        let missing = |what: &str, method: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("the classifier client needs {what} (set it with {method})"),
            )
        };
        let files = TlsFiles {
            cert: self
                .cert
                .ok_or_else(|| missing("a client certificate", "client_cert"))?,
            key: self
                .key
                .ok_or_else(|| missing("the client certificate's private key", "client_key"))?,
            ca: self
                .ca
                .ok_or_else(|| missing("the Puppet CA certificate", "ca_cert"))?,
            crl: self.crl,
        };
        let tls = tls::client_config(&files)?;
        let inner = reqwest::ClientBuilder::new()
            .connect_timeout(self.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("pe_failover/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(tls.config);
        let http = reqwest::blocking::ClientBuilder::from(inner)
            .timeout(self.request_timeout)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot set up the HTTPS client: {e}"),
                )
            })?;
        Ok(ClassifierClient {
            http,
            base,
            host,
            certname: tls.certname,
            files,
            retry: self.retry,
            cancel: self.cancel,
        })
    }
}

fn unreachable_host<T>(url: &str) -> Result<T> {
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!("the classifier URL {url:?} has no host"),
    ))
}

/// Parses `https://host[:port][/]`; the port defaults to 4433.
fn parse_base_url(text: &str) -> Result<Url> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid classifier URL {text:?}: {why} (expected https://<host>:4433)"),
        )
    };
    let mut url = Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("the classifier is only reached over https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(bad(
            "give only scheme, host and port; the API paths are added by the client",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("no query, fragment or user name expected"));
    }
    // `Url` hides an explicit default port (443); only add ours when the
    // text names no port at all.
    let authority = text
        .trim()
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("");
    let names_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':')
    });
    if url.port().is_none() && !names_port {
        url.set_port(Some(DEFAULT_PORT))
            .map_err(|()| bad("cannot set the port"))?;
    }
    Ok(url)
}

/// A class as the classifier knows it (nc-api §3.9).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// The class name.
    pub name: String,
    /// The environment it was found in.
    pub environment: String,
    /// Parameters with their defaults (`null`: required).
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
}

/// Class names per environment, as [`missing_classes`](super::missing_classes)
/// takes them.
pub type ClassCatalog = BTreeMap<String, BTreeSet<String>>;

/// The classifier service's state, from the status service (nc-api §3.13).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceStatus {
    /// `running`, `starting`, `error`, `unknown`, ...
    pub state: String,
    /// The service version, e.g. `2021.7.0.0`.
    pub version: Option<String>,
    /// The whole status entry as the service returned it.
    pub detail: Value,
}

impl ServiceStatus {
    /// Whether the classifier is up.
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// The answer to an executed [`Operation`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Executed {
    /// The HTTP status (200, 201, 204, 303).
    pub status: u16,
    /// The group id the answer names: from `Location` for a `303`, from
    /// the body's `id` otherwise, from the path for deletes.
    pub group_id: Option<String>,
    /// How many attempts it took (more than one after retries).
    pub attempts: u32,
    /// Time from the first attempt to the answer.
    #[serde(serialize_with = "millis")]
    pub elapsed: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A successful answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
    attempts: u32,
    elapsed: Duration,
}

/// Why one attempt did not get an answer worth returning.
enum Retryable {
    /// Connection refused.
    Refused(Error),
    /// `503`.
    Unavailable(Error),
    /// The connection closed before the answer.
    Closed(Error),
}

/// A client of one classifier. Cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct ClassifierClient {
    http: reqwest::blocking::Client,
    base: Url,
    host: String,
    certname: String,
    files: TlsFiles,
    retry: RetryPolicy,
    cancel: CancelToken,
}

impl ClassifierClient {
    /// A builder for a client of the classifier at `base_url`
    /// (`https://<host>:4433`; the port defaults to 4433).
    pub fn builder(base_url: impl Into<String>) -> ClassifierClientBuilder {
        ClassifierClientBuilder {
            base_url: base_url.into(),
            cert: None,
            key: None,
            ca: None,
            crl: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            cancel: CancelToken::new(),
        }
    }

    /// The same client (sharing connections) with another cancel token.
    pub fn with_cancel_token(&self, token: CancelToken) -> ClassifierClient {
        ClassifierClient {
            cancel: token,
            ..self.clone()
        }
    }

    /// The same client (sharing connections) with another retry policy.
    pub fn with_retry(&self, policy: RetryPolicy) -> ClassifierClient {
        ClassifierClient {
            retry: policy,
            ..self.clone()
        }
    }

    /// `https://<host>:<port>` of the classifier.
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `<host>:<port>` of the classifier, as errors name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The certname (subject CN) of the client certificate.
    pub fn certname(&self) -> &str {
        &self.certname
    }

    /// Every group (`GET /classifier-api/v1/groups`), strictly parsed.
    pub fn groups(&self) -> Result<Vec<Group>> {
        let reply = self.request(Method::GET, GROUPS_PATH, None, &[StatusCode::OK])?;
        let value = self.json(&reply, "GET", GROUPS_PATH)?;
        groups_from_value(&value).map_err(|e| self.bad_answer("GET", GROUPS_PATH, e.message()))
    }

    /// One group by id (`GET /classifier-api/v1/groups/<id>`); `None` if the
    /// classifier has no such group.
    pub fn group(&self, id: &str) -> Result<Option<Group>> {
        check_id(id)?;
        let path = format!("{GROUPS_PATH}/{id}");
        let reply = self.request(
            Method::GET,
            &path,
            None,
            &[StatusCode::OK, StatusCode::NOT_FOUND],
        )?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value = self.json(&reply, "GET", &path)?;
        Group::from_value(&value)
            .map(Some)
            .map_err(|e| self.bad_answer("GET", &path, e.message()))
    }

    /// Creates a group with an id the classifier chooses
    /// (`POST /classifier-api/v1/groups`, answered `303 See Other`) and
    /// returns that id, taken from the `Location` header (nc-api §3.3,
    /// §7.14). `body` is a group object without `id`.
    pub fn create_group(&self, body: &Value) -> Result<String> {
        let reply = self.request(
            Method::POST,
            GROUPS_PATH,
            Some(body),
            &[StatusCode::SEE_OTHER],
        )?;
        self.location_id(&reply, "POST", GROUPS_PATH)
    }

    /// Asks the classifier to refresh its class catalog from Puppet Server
    /// (`POST /classifier-api/v1/update-classes`), for one environment or
    /// all of them.
    pub fn update_classes(&self, environment: Option<&str>) -> Result<()> {
        let path = match environment {
            Some(env) => format!("{UPDATE_CLASSES_PATH}?environment={}", encode(env)),
            None => UPDATE_CLASSES_PATH.to_owned(),
        };
        self.request(Method::POST, &path, None, &[StatusCode::CREATED])?;
        Ok(())
    }

    /// The classes of one environment
    /// (`GET /classifier-api/v1/environments/<env>/classes`).
    pub fn classes(&self, environment: &str) -> Result<Vec<ClassInfo>> {
        let path = format!(
            "/classifier-api/v1/environments/{}/classes",
            encode(environment)
        );
        self.class_list(&path)
    }

    /// The classes of every environment (`GET /classifier-api/v1/classes`).
    pub fn all_classes(&self) -> Result<Vec<ClassInfo>> {
        self.class_list(CLASSES_PATH)
    }

    /// Class names per environment, from [`all_classes`](Self::all_classes).
    pub fn class_catalog(&self) -> Result<ClassCatalog> {
        let mut catalog = ClassCatalog::new();
        for class in self.all_classes()? {
            catalog
                .entry(class.environment)
                .or_default()
                .insert(class.name);
        }
        Ok(catalog)
    }

    fn class_list(&self, path: &str) -> Result<Vec<ClassInfo>> {
        let reply = self.request(Method::GET, path, None, &[StatusCode::OK])?;
        let value = self.json(&reply, "GET", path)?;
        serde_json::from_value(value)
            .map_err(|e| self.bad_answer("GET", path, &format!("not a list of classes: {e}")))
    }

    /// The classifier service's status
    /// (`GET /status/v1/services/classifier-service`). One attempt, no
    /// retry: a starting service is a state here (`starting`), not an error.
    pub fn status(&self) -> Result<ServiceStatus> {
        let once = self.with_retry(RetryPolicy::none());
        // a 503 is expected here: the body still says what state the
        // service is in
        let reply = once.request(
            Method::GET,
            STATUS_PATH,
            None,
            &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        )?;
        let detail = self.json(&reply, "GET", STATUS_PATH)?;
        let state = detail
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let version = detail
            .get("service_version")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(ServiceStatus {
            state,
            version,
            detail,
        })
    }

    /// Executes one planned call (see [`plan`](super::plan())): `PUT` (create
    /// with an id: `201`, or `200` if identical), `POST` delta (`200`),
    /// `DELETE` (`204`), import-hierarchy (`204`). A `POST` to the groups
    /// collection is a create with a server-chosen id (`303`, its `Location`
    /// names the new group).
    pub fn execute(&self, op: &Operation) -> Result<Executed> {
        let method = Method::from_bytes(op.method.as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("unknown HTTP method {:?} in a planned operation", op.method),
            )
        })?;
        let expect: &[StatusCode] = match op.method {
            "PUT" => &[StatusCode::OK, StatusCode::CREATED],
            "DELETE" => &[StatusCode::NO_CONTENT],
            "POST" if op.path == GROUPS_PATH => &[StatusCode::SEE_OTHER],
            "POST" => &[StatusCode::OK, StatusCode::CREATED, StatusCode::NO_CONTENT],
            _ => &[StatusCode::OK],
        };
        let reply = self.request(method, &op.path, op.body.as_ref(), expect)?;
        let group_id = if reply.status == StatusCode::SEE_OTHER {
            Some(self.location_id(&reply, op.method, &op.path)?)
        } else if reply.body.is_empty() {
            op.group_id.clone()
        } else {
            serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
                .or_else(|| op.group_id.clone())
        };
        Ok(Executed {
            status: reply.status.as_u16(),
            group_id,
            attempts: reply.attempts,
            elapsed: reply.elapsed,
        })
    }

    /// The last path segment of `Location`, checked to be a group id.
    fn location_id(&self, reply: &Reply, method: &str, path: &str) -> Result<String> {
        let location = reply.location.as_deref().ok_or_else(|| {
            self.bad_answer(method, path, "303 See Other without a Location header")
        })?;
        let id = location
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("");
        if !super::model::is_valid_group_id(id) {
            return Err(self.bad_answer(
                method,
                path,
                &format!("the Location {location:?} does not end in a group id"),
            ));
        }
        Ok(id.to_owned())
    }

    fn json(&self, reply: &Reply, method: &str, path: &str) -> Result<Value> {
        serde_json::from_slice(&reply.body)
            .map_err(|e| self.bad_answer(method, path, &format!("the answer is not JSON: {e}")))
    }

    fn bad_answer(&self, method: &str, path: &str, why: &str) -> Error {
        Error::new(
            ErrorKind::Protocol,
            format!("unexpected answer from the classifier to {method} {path}: {why}"),
        )
        .with_host(self.host.clone())
    }

    /// Sends a request, retrying as the policy says, and turns any status
    /// not in `expect` into an error.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expect: &[StatusCode],
    ) -> Result<Reply> {
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut delay = self.retry.initial_delay;
        let mut attempts = 0u32;
        let payload = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot encode the request body: {e}"),
                )
            })?),
            None => None,
        };
        loop {
            self.cancel.check()?;
            attempts += 1;
            let outcome = self.attempt(&method, path, payload.as_deref(), expect);
            let (why, err) = match outcome {
                Ok(mut reply) => {
                    reply.attempts = attempts;
                    reply.elapsed = started.elapsed();
                    return Ok(reply);
                }
                Err(Ok(fatal)) => return Err(fatal),
                Err(Err(Retryable::Refused(e))) => ("connection refused", e),
                Err(Err(Retryable::Unavailable(e))) => ("503 Service Unavailable", e),
                Err(Err(Retryable::Closed(e))) => {
                    if matches!(method, Method::GET | Method::PUT | Method::DELETE) {
                        ("connection closed before an answer", e)
                    } else {
                        // A POST may have been applied: not ours to repeat.
                        return Err(e);
                    }
                }
            };
            let wait = delay.min(self.retry.max_delay);
            if waited + wait > self.retry.max_wait {
                if attempts == 1 {
                    return Err(err);
                }
                return Err(self.gave_up(err, why, attempts, started.elapsed()));
            }
            self.sleep(wait)?;
            waited += wait;
            delay = delay.saturating_mul(2);
        }
    }

    fn gave_up(&self, last: Error, why: &str, attempts: u32, elapsed: Duration) -> Error {
        let hint = format!(
            "check `systemctl status pe-console-services` and \
             /var/log/puppetlabs/console-services/console-services.log on {}, then run again",
            self.hostname()
        );
        Error::new(
            last.kind(),
            format!(
                "the classifier was still unavailable after {attempts} attempts in {:.1} s \
                 ({why}); last error: {}",
                elapsed.as_secs_f64(),
                last.message()
            ),
        )
        .with_host(self.host.clone())
        .with_hint(hint)
    }

    /// Sleeps `wait`, waking every 50 ms to check the cancel token.
    fn sleep(&self, wait: Duration) -> Result<()> {
        let until = Instant::now() + wait;
        loop {
            self.cancel.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    fn hostname(&self) -> &str {
        self.base.host_str().unwrap_or(&self.host)
    }

    /// One attempt: `Ok(reply)`, `Err(Ok(error))` to give up at once,
    /// `Err(Err(retryable))` to try again.
    fn attempt(
        &self,
        method: &Method,
        path: &str,
        payload: Option<&[u8]>,
        expect: &[StatusCode],
    ) -> std::result::Result<Reply, std::result::Result<Error, Retryable>> {
        let url = self.url(path).map_err(Ok)?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/json");
        if let Some(bytes) = payload {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(bytes.to_vec());
        } else if *method == Method::POST || *method == Method::PUT {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let response = req
            .send()
            .map_err(|e| self.transport_error(method, path, &e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .map_err(|e| self.transport_error(method, path, &e))?
            .to_vec();
        if expect.contains(&status) {
            return Ok(Reply {
                status,
                location,
                body,
                attempts: 0,
                elapsed: Duration::ZERO,
            });
        }
        let err = self.status_error(method, path, status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Err(Err(Retryable::Unavailable(err)))
        } else {
            Err(Ok(err))
        }
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot build a URL from {path:?}: {e}"),
            )
        })
    }

    /// The error for an answer with an unexpected status.
    fn status_error(&self, method: &Method, path: &str, status: StatusCode, body: &[u8]) -> Error {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let kind = field("kind");
        let msg = field("msg");
        let code = status.as_u16();
        let what = match (&kind, &msg) {
            (Some(k), Some(m)) => format!("{code} {k}: {m}"),
            (Some(k), None) => format!("{code} {k}"),
            (None, Some(m)) => format!("{code}: {m}"),
            (None, None) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    format!("{code} {}", status.canonical_reason().unwrap_or(""))
                        .trim_end()
                        .to_owned()
                } else {
                    format!("{code}: {}", truncate(text, 300))
                }
            }
        };
        match status {
            StatusCode::UNAUTHORIZED => Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "the classifier refused the client certificate of {:?} ({}) for {method} \
                     {path}: {what}",
                    self.certname,
                    self.files.cert.display()
                ),
            )
            .with_host(self.host.clone())
            .with_path(self.files.cert.clone())
            .with_hint(format!(
                "the certname {:?} is not in {ALLOWLIST_PATH} on {}: add it there (one \
                 certname a line) and run `systemctl reload pe-console-services`",
                self.certname,
                self.hostname()
            )),
            StatusCode::FORBIDDEN => Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "the classifier denied {:?} permission for {method} {path}: {what}",
                    self.certname
                ),
            )
            .with_host(self.host.clone())
            .with_hint(format!(
                "use the primary's own certificate, which {ALLOWLIST_PATH} grants full rights"
            )),
            _ => {
                let details = parsed
                    .as_ref()
                    .and_then(|v| v.get("details"))
                    .and_then(|d| details_summary(kind.as_deref(), d))
                    .map(|d| format!(" ({})", truncate(&d, 500)))
                    .unwrap_or_default();
                Error::new(
                    ErrorKind::Api,
                    format!("{method} {path} failed: {what}{details}"),
                )
                .with_host(self.host.clone())
            }
        }
    }

    /// The error for a request that got no answer.
    fn transport_error(
        &self,
        method: &Method,
        path: &str,
        err: &reqwest::Error,
    ) -> std::result::Result<Error, Retryable> {
        let host = self.host.clone();
        if let Some(tls) = find_cause::<rustls::Error>(err) {
            return Ok(self.tls_error(tls));
        }
        if let Some(io) = find_io_error(err) {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Err(Retryable::Refused(
                    Error::new(
                        ErrorKind::Network,
                        format!("cannot connect to the classifier for {method} {path}: connection refused"),
                    )
                    .with_host(host)
                    .with_hint(format!(
                        "is pe-console-services running on {} and listening on port {}?",
                        self.hostname(),
                        self.base.port_or_known_default().unwrap_or(DEFAULT_PORT)
                    )),
                ));
            }
        }
        if err.is_timeout() {
            return Ok(Error::new(
                ErrorKind::Timeout,
                format!("the classifier did not answer {method} {path} in time"),
            )
            .with_host(host)
            .with_hint("check the classifier's load and logs, or raise the request timeout"));
        }
        let closed = find_cause::<hyper::Error>(err)
            .is_some_and(|h| h.is_incomplete_message() || h.is_closed() || h.is_canceled())
            || find_io_error(err).is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                )
            });
        let message = format!("{method} {path} failed: {}", error_chain(err));
        let error = Error::new(ErrorKind::Network, message).with_host(host);
        if closed {
            Err(Retryable::Closed(error))
        } else {
            Ok(error)
        }
    }

    /// A TLS failure, blamed on the file that can fix it.
    fn tls_error(&self, err: &rustls::Error) -> Error {
        use rustls::{AlertDescription as A, CertificateError as C};
        let host = self.host.clone();
        let ca = self.files.ca.display();
        let cert = self.files.cert.display();
        let hostname = self.hostname();
        let server_cert = |why: String, path: &Path, hint: String| {
            Error::new(
                ErrorKind::Verification,
                format!("the classifier's server certificate is not trusted: {why}"),
            )
            .with_host(host.clone())
            .with_path(path)
            .with_hint(hint)
        };
        let same_ca = format!(
            "{ca} must be the CA certificate of the Puppet infrastructure {hostname} belongs to \
             (ssl/certs/ca.pem on a host of that infrastructure)"
        );
        match err {
            rustls::Error::InvalidCertificate(e) => match e {
                C::UnknownIssuer | C::BadSignature => server_cert(
                    format!("it is not signed by the CA in {ca}"),
                    &self.files.ca,
                    same_ca,
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => server_cert(
                    format!("it does not name {hostname}"),
                    &self.files.ca,
                    format!(
                        "connect with a name the certificate has (the primary's certname or \
                         one of its DNS alt names) instead of {hostname}"
                    ),
                ),
                C::Expired | C::ExpiredContext { .. } => server_cert(
                    "it has expired".to_owned(),
                    &self.files.ca,
                    format!("renew the certificate of {hostname}"),
                ),
                C::NotValidYet | C::NotValidYetContext { .. } => server_cert(
                    "it is not valid yet".to_owned(),
                    &self.files.ca,
                    "check the clocks of both hosts".to_owned(),
                ),
                C::Revoked => {
                    let crl = self.files.crl.as_deref().unwrap_or(&self.files.ca);
                    server_cert(
                        format!("it is revoked by the CRL {}", crl.display()),
                        crl,
                        format!("{hostname} needs a new certificate from the Puppet CA"),
                    )
                }
                other => server_cert(format!("{other:?}"), &self.files.ca, same_ca),
            },
            rustls::Error::AlertReceived(alert) => {
                let why = match alert {
                    A::UnknownCA => "it is not signed by the CA the classifier trusts",
                    A::CertificateRevoked => "it has been revoked",
                    A::CertificateExpired => "it has expired",
                    A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                        "the classifier could not verify it"
                    }
                    A::DecryptError => "the key does not match the certificate",
                    A::CertificateRequired => "no client certificate was sent",
                    A::AccessDenied => "access denied",
                    _ => "the TLS handshake failed",
                };
                Error::new(
                    ErrorKind::Verification,
                    format!(
                        "the classifier refused the client certificate {cert} ({:?}): {why} \
                         (TLS alert {alert:?})",
                        self.certname
                    ),
                )
                .with_host(host)
                .with_path(self.files.cert.clone())
                .with_hint(format!(
                    "use this host's own Puppet certificate and key, signed by the CA of \
                     {hostname}'s Puppet infrastructure and not revoked"
                ))
            }
            other => Error::new(
                ErrorKind::Verification,
                format!("TLS with the classifier failed: {other}"),
            )
            .with_host(host)
            .with_path(self.files.ca.clone()),
        }
    }
}

/// The part of an error's `details` that says more than its `msg`, for the
/// kinds where it does (nc-api §4); `None` for the others, whose details
/// repeat the message or hold whole groups.
fn details_summary(kind: Option<&str>, details: &Value) -> Option<String> {
    match kind? {
        "schema-violation" => details.get("error").map(|e| format!("problem: {e}")),
        "uniqueness-violation" => details.get("conflict").map(|c| format!("conflict: {c}")),
        "missing-referents" => {
            let items: Vec<String> = details
                .as_array()?
                .iter()
                .map(|m| {
                    let field = |k: &str| m.get(k).map(|v| v.to_string()).unwrap_or_default();
                    format!(
                        "{} {} in {} for group {}",
                        field("kind"),
                        field("missing"),
                        field("environment"),
                        field("group")
                    )
                })
                .collect();
            (!items.is_empty()).then(|| format!("missing: {}", items.join("; ")))
        }
        _ => None,
    }
}

fn check_id(id: &str) -> Result<()> {
    if super::model::is_valid_group_id(id) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{id:?} is not a group id (a lowercase UUID)"),
        ))
    }
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The messages of an error and its causes, joined with ": ".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = next_cause(e);
    }
    parts.join(": ")
}

/// The next error in a chain, looking inside `io::Error`s (whose `source`
/// skips the wrapped error itself).
fn next_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            return Some(inner);
        }
    }
    e.source()
}

fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = next_cause(e);
    }
    None
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    find_cause::<std::io::Error>(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let ok = |text: &str, want: &str| {
            assert_eq!(parse_base_url(text).unwrap().as_str(), want, "{text}");
        };
        ok("https://b.example.com:4433", "https://b.example.com:4433/");
        ok("https://b.example.com", "https://b.example.com:4433/");
        ok("https://b.example.com/", "https://b.example.com:4433/");
        ok("https://127.0.0.1:5555", "https://127.0.0.1:5555/");
        ok("https://b.example.com:443", "https://b.example.com/");
        for bad in [
            "http://b.example.com:4433",
            "b.example.com",
            "https://b.example.com:4433/classifier-api/v1",
            "https://b.example.com:4433/?x=1",
            "https://user@b.example.com:4433",
            "",
        ] {
            let err = parse_base_url(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains("https://<host>:4433"), "{err}");
        }
    }

    #[test]
    fn retry_policies() {
        assert_eq!(RetryPolicy::none().max_wait, Duration::ZERO);
        assert_eq!(
            RetryPolicy::up_to(Duration::from_secs(3)).max_wait,
            Duration::from_secs(3)
        );
        assert_eq!(
            RetryPolicy::default().initial_delay,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn encoding_and_truncation() {
        assert_eq!(encode("production"), "production");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é...");
    }

    #[test]
    fn error_details_are_summarised_for_the_kinds_that_need_them() {
        let refs = serde_json::json!([{"kind": "missing-class", "missing": "apache",
            "environment": "production", "group": "Web", "defined_by": "Web"}]);
        assert_eq!(
            details_summary(Some("missing-referents"), &refs).as_deref(),
            Some(r#"missing: "missing-class" "apache" in "production" for group "Web""#)
        );
        let schema = serde_json::json!({"submitted": {}, "schema": {}, "error": "(not x)"});
        assert_eq!(
            details_summary(Some("schema-violation"), &schema).as_deref(),
            Some(r#"problem: "(not x)""#)
        );
        assert_eq!(details_summary(Some("children-present"), &schema), None);
        assert_eq!(details_summary(None, &schema), None);
    }

    #[test]
    fn missing_settings_are_named() {
        let err = ClassifierClient::builder("https://x:4433")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("client_cert"), "{err}");
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClassifierClient::builder("https://x:4433")
            .puppet_ssldir(dir.path(), "a.example")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.path(), Some(dir.path().join("certs/ca.pem").as_path()));
    }
}
