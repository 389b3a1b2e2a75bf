//! Node Classifier shipping: the active primary's groups travel to the
//! passive through the same transport as the CA ([`crate::protocol`]), as a
//! set holding one file, the canonical dump [`NC_DUMP_FILE`].
//!
//! ```text
//! A: nc_prepare ──▶ <state>/nc/outgoing/groups.json   (rewritten only when the digest changed)
//!    Sender::nc ══ same protocol, kind "nc" ══▶ B: Receiver ──▶ <state>/nc/incoming/<txn>/
//! B: NcApplier ──▶ <state>/nc/snapshots/<digest>/, latest ──▶ B's classifier (update-classes, diff, plan)
//!                                                        └──▶ <state>/nc/status.json
//! ```
//!
//! - **Active** ([`nc_prepare`]): fetches `GET /v1/groups` from the local
//!   classifier, rewrites the host names (`nc.hostnames`, active → passive),
//!   and writes the dump atomically only when its canonical digest differs
//!   from the one already there, so an unchanged classifier ships nothing.
//!   [`nc_dump`] prints the raw or rewritten groups (`pe_failover nc dump`).
//! - **Transport**: [`Sender::nc`](crate::protocol::Sender::nc) ships the
//!   outbox; the receiver checks that the set holds nothing but the dump
//!   file and stages it under `<state>/nc/` (its own transactions, base
//!   digest, lock and status, never mixed with the CA's), with the same
//!   fencing.
//! - **Passive** ([`NcApplier`], [`nc_apply`]): stages the chain of received
//!   transactions into snapshots (keeping the newest N), verifies the dump
//!   (file SHA-256 and the canonical digest recorded in it), refuses on a
//!   promoted host unless forced, then brings the live classifier to the
//!   dump with [`classifier::sync`](crate::classifier::sync()): guards (no
//!   root, empty, too many deletes), `update-classes`, missing classes named
//!   with advice, minimal calls in dependency order or `import-hierarchy`.
//!   No change means one read and zero writes. It records [`NcStatus`].
//!
//! The dump file is JSON: `{"format":1,"digest":"<canonical digest>",
//! "groups":[<canonical groups>]}` followed by a newline. Groups are in the
//! canonical form ([`canonical_json`]): sorted by id, keys sorted, read-only
//! keys left out, so equal classifications give byte-identical files.
//!
//! ```no_run
//! use pe_failover_core::config::Config;
//! use pe_failover_core::ncship::{self, NcApplyOptions, NcOutbox};
//! use pe_failover_core::protocol::Sender;
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! # let stream = std::os::unix::net::UnixStream::connect("/run/x").unwrap();
//! // On A, every nc.interval seconds:
//! let config = Config::load("/etc/pe_failover/config.json")?;
//! let prepared = ncship::nc_prepare(&config)?;
//! if prepared.changed {
//!     let outbox = NcOutbox::in_state_dir(&config.state_dir);
//!     Sender::nc(outbox, "b.example.com", &config.state_dir).sync(stream)?;
//! }
//! // On B, after a receive:
//! let report = ncship::nc_apply(&config, &NcApplyOptions::default())?;
//! println!("{} writes", report.writes());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::apply::{pending_chain, DiscardedTxn, StagedTxn};
use crate::cache::write_atomically;
use crate::cancel::CancelToken;
use crate::classifier::{
    self, canonical_digest, canonical_json, groups_from_value, transform, ClassifierApi,
    ClassifierClient, GuardOptions, SyncMode, SyncOptions, ROOT_GROUP_ID,
};
use crate::config::{self, Config};
use crate::fsutil::{self, FileLock};
use crate::protocol::Kind;
use crate::snapshot::{is_sha256_hex, Entry, EntryKind, Manifest};
use crate::stage::{
    build_snapshot, latest_snapshot, list_txns, prune_snapshots, switch_latest, Snapshot, StateDir,
};
use crate::state::{nc_status_path, DigestAt, ErrorRecord, NcApplyCounts, NcStatus, Role, Stamp};
use crate::{Error, ErrorKind, Result};

/// The name of the dump file, the only path an NC set may hold.
pub const NC_DUMP_FILE: &str = "groups.json";

/// Format number of the dump file.
pub const NC_DUMP_FORMAT: u32 = 1;

/// Largest dump file read (10,000 groups take about 10 MiB).
pub const NC_DUMP_LIMIT: u64 = 256 * 1024 * 1024;

/// Permission bits of the dump file everywhere (class parameters may hold
/// secrets).
pub const NC_DUMP_MODE: u32 = 0o600;

/// Whether `path` may appear in an NC manifest: only [`NC_DUMP_FILE`].
pub fn is_nc_path(path: &str) -> bool {
    path == NC_DUMP_FILE
}

/// Checks the rules of an NC manifest: only [`NC_DUMP_FILE`], as a plain
/// file without setuid, setgid or sticky bits.
pub fn validate_nc_manifest(manifest: &Manifest) -> Result<()> {
    manifest.entries().iter().try_for_each(check_nc_entry)
}

/// The rules of [`validate_nc_manifest`] for one entry.
pub(crate) fn check_nc_entry(e: &Entry) -> Result<()> {
    if !is_nc_path(&e.path) {
        return Err(Error::new(
            ErrorKind::UnsafePath,
            format!(
                "unsafe path {:?}: a Node Classifier set may only hold {NC_DUMP_FILE}",
                e.path
            ),
        ));
    }
    if e.kind != EntryKind::File || e.mode & !0o777 != 0 || e.sha256.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "manifest entry {:?} must be a plain file with a SHA-256 (got a {} with mode {:o})",
                e.path,
                e.kind.as_str(),
                e.mode
            ),
        ));
    }
    Ok(())
}

// ---- the dump file ----

/// A dump read back and verified.
#[derive(Clone, Debug)]
pub struct NcDump {
    /// The canonical digest recorded in the file (and checked).
    pub digest: String,
    /// The groups.
    pub groups: Vec<classifier::Group>,
}

/// The bytes of the dump file for `groups` and their canonical digest.
pub fn encode_dump(groups: &[classifier::Group]) -> (String, Vec<u8>) {
    let json = canonical_json(groups);
    let digest = hex::encode(Sha256::digest(json.as_bytes()));
    let mut out = Vec::with_capacity(json.len() + 120);
    out.extend_from_slice(
        format!("{{\"format\":{NC_DUMP_FORMAT},\"digest\":\"{digest}\",\"groups\":").as_bytes(),
    );
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"}\n");
    (digest, out)
}

/// Parses and verifies a dump file's bytes (`origin` names it in errors):
/// known format, valid groups (closed schema), and a canonical digest equal
/// to the one recorded. Failures are [`ErrorKind::Corrupt`].
pub fn decode_dump(bytes: &[u8], origin: &Path) -> Result<NcDump> {
    let corrupt = |why: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "Node Classifier dump {} is not valid: {why}; nothing was applied, and the next dump from the active primary replaces it",
                origin.display()
            ),
        )
        .with_path(origin)
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(corrupt("not a JSON object".into()));
    };
    if let Some(k) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "format" | "digest" | "groups"))
    {
        return Err(corrupt(format!("unknown key {k:?}")));
    }
    if map.get("format").and_then(Value::as_u64) != Some(u64::from(NC_DUMP_FORMAT)) {
        return Err(corrupt(format!(
            "unknown format {} (this version reads format {NC_DUMP_FORMAT}; install the same pe_failover version on both primaries)",
            map.get("format").map(Value::to_string).unwrap_or_else(|| "(none)".into())
        )));
    }
    let recorded = map
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| is_sha256_hex(d))
        .ok_or_else(|| corrupt("no valid digest".into()))?
        .to_string();
    let groups = groups_from_value(map.get("groups").unwrap_or(&Value::Null))
        .map_err(|e| corrupt(e.message().to_string()))?;
    let digest = canonical_digest(&groups);
    if digest != recorded {
        return Err(corrupt(format!(
            "its groups have digest {digest}, not the recorded {recorded}"
        )));
    }
    Ok(NcDump { digest, groups })
}

/// Reads and verifies the dump of a staged snapshot: the file's SHA-256
/// against the snapshot's manifest, then [`decode_dump`].
fn snapshot_dump(snapshot: &Snapshot) -> Result<NcDump> {
    let entry = snapshot.manifest.get(NC_DUMP_FILE).ok_or_else(|| {
        Error::new(
            ErrorKind::Refused,
            format!(
                "snapshot {} holds no {NC_DUMP_FILE}: the active primary shipped an empty Node Classifier set; nothing was applied",
                snapshot.dir.display()
            ),
        )
        .with_path(&snapshot.dir)
    })?;
    let path = snapshot.object_path(entry.sha256.as_deref().unwrap_or_default());
    let bytes = fsutil::read_bounded(&path, NC_DUMP_LIMIT)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if Some(sha.as_str()) != entry.sha256.as_deref() {
        // Stored contents are named by their SHA-256: these are garbage.
        let _ = std::fs::remove_file(&path);
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{} has SHA-256 {sha}, not the {} it was staged with: it was damaged or edited; nothing was applied (remove the snapshot and let the active primary resend)",
                path.display(),
                entry.sha256.as_deref().unwrap_or("?")
            ),
        )
        .with_path(&path));
    }
    decode_dump(&bytes, &path)
}

// ---- the active side ----

/// The active primary's outgoing dump directory (the set [`Sender::nc`]
/// ships): it holds [`NC_DUMP_FILE`] and nothing else that is shipped.
///
/// [`Sender::nc`]: crate::protocol::Sender::nc
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NcOutbox {
    dir: PathBuf,
}

/// What [`NcOutbox::write`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NcWrite {
    /// The canonical digest of the groups written (or already there).
    pub digest: String,
    /// The digest the file held before (none: no file).
    pub previous: Option<String>,
    /// Whether the file was (re)written.
    pub changed: bool,
}

impl NcOutbox {
    /// The outbox at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NcOutbox { dir: dir.into() }
    }

    /// The outbox of the state directory `state_dir`:
    /// `<state_dir>/nc/outgoing`.
    pub fn in_state_dir(state_dir: impl AsRef<Path>) -> Self {
        NcOutbox::new(state_dir.as_ref().join("nc").join("outgoing"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/groups.json`.
    pub fn dump_path(&self) -> PathBuf {
        self.dir.join(NC_DUMP_FILE)
    }

    /// The canonical digest recorded at the start of the dump file, without
    /// reading the groups; `None` when there is no file or it is not one.
    pub fn current_digest(&self) -> Option<String> {
        use std::io::Read;
        let mut head = [0u8; 96];
        let mut file = fsutil::open_nofollow(&self.dump_path()).ok()?;
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(_) => return None,
            }
        }
        let prefix = format!("{{\"format\":{NC_DUMP_FORMAT},\"digest\":\"");
        let rest = head[..filled].strip_prefix(prefix.as_bytes())?;
        let digest = std::str::from_utf8(rest.get(..64)?).ok()?;
        (is_sha256_hex(digest) && rest.get(64) == Some(&b'"')).then(|| digest.to_string())
    }

    /// Writes the dump of `groups` atomically (mode 0600), unless the file
    /// already holds exactly these bytes (same canonical digest, and not
    /// damaged): then nothing is written and the file keeps its time.
    pub fn write(&self, groups: &[classifier::Group]) -> Result<NcWrite> {
        let previous = self.current_digest();
        let (digest, bytes) = encode_dump(groups);
        if previous.as_deref() == Some(digest.as_str()) {
            let same = fsutil::read_bounded(&self.dump_path(), NC_DUMP_LIMIT)
                .is_ok_and(|old| old == bytes);
            if same {
                return Ok(NcWrite {
                    digest,
                    previous,
                    changed: false,
                });
            }
        }
        fsutil::create_dir_if_missing(&self.dir, 0o700)?;
        write_atomically(&self.dump_path(), &bytes, NC_DUMP_MODE)?;
        Ok(NcWrite {
            digest,
            previous,
            changed: true,
        })
    }

    /// Reads and verifies the dump ([`decode_dump`]).
    pub fn read(&self) -> Result<NcDump> {
        let path = self.dump_path();
        let bytes = fsutil::read_bounded(&path, NC_DUMP_LIMIT)?;
        decode_dump(&bytes, &path)
    }

    /// The manifest of the set: one entry for the dump file with its size
    /// and SHA-256, and fixed metadata (mode 0600, owner 0, time 0), so the
    /// manifest digest depends on the contents only.
    pub fn scan(&self) -> Result<Manifest> {
        let path = self.dump_path();
        let bytes = match fsutil::read_bounded(&path, NC_DUMP_LIMIT) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "there is no Node Classifier dump to ship in {}: prepare one first (`pe_failover nc prepare`, ncship::nc_prepare)",
                        self.dir.display()
                    ),
                )
                .with_path(&path))
            }
            Err(e) => return Err(e),
        };
        Manifest::from_entries(vec![Entry {
            path: NC_DUMP_FILE.into(),
            kind: EntryKind::File,
            mode: NC_DUMP_MODE,
            uid: 0,
            gid: 0,
            size: bytes.len() as u64,
            mtime_ns: 0,
            sha256: Some(hex::encode(Sha256::digest(&bytes))),
            target: None,
        }])
    }
}

/// What [`nc_prepare`] did.
#[derive(Clone, Debug, Serialize)]
pub struct NcPrepared {
    /// The canonical digest of the rewritten groups (what the passive will
    /// report as applied).
    pub digest: String,
    /// The canonical digest of the groups as fetched.
    pub source_digest: String,
    /// The digest of the dump that was there before (none: first dump).
    pub previous: Option<String>,
    /// Whether the dump was rewritten; when false there is nothing new to
    /// ship.
    pub changed: bool,
    /// The dump file.
    pub path: PathBuf,
    /// Groups in the dump.
    pub groups: usize,
    /// Values rewritten by the host name transform.
    pub rewrites: usize,
    /// Things to look at (no host name mapping configured).
    pub warnings: Vec<String>,
}

/// The classifier client of this host, from the configuration: `nc.server`
/// (default `https://<certname>:4433`), `nc.cert`, `nc.key`, `nc.cacert`
/// (defaults in the Puppet ssldir), and `<ssldir>/crl.pem` when it exists.
pub fn nc_client(config: &Config) -> Result<ClassifierClient> {
    let mut builder = ClassifierClient::builder(config.nc_server())
        .client_cert(config.nc_cert())
        .client_key(config.nc_key())
        .ca_cert(config.nc_cacert());
    let crl = config.ca.ssldir.join("crl.pem");
    if crl.is_file() {
        builder = builder.crl(crl);
    }
    builder.build()
}

/// The host name rewrites of the configuration (`nc.hostnames`, active →
/// passive), in order.
pub fn nc_hostnames(config: &Config) -> Vec<(String, String)> {
    config
        .nc
        .hostnames
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect()
}

fn check_enabled(config: &Config) -> Result<()> {
    if config.nc.enabled {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "Node Classifier replication is disabled in the configuration (nc.enabled is false); enable it to prepare, ship or apply groups",
        ))
    }
}

/// Prepares the dump to ship on the active primary: fetches the groups from
/// its classifier ([`nc_client`]), rewrites the host names
/// ([`nc_hostnames`]) and writes `<state_dir>/nc/outgoing/groups.json` only
/// when the canonical digest changed. See [`nc_prepare_with`].
pub fn nc_prepare(config: &Config) -> Result<NcPrepared> {
    check_enabled(config)?;
    let client = nc_client(config)?;
    nc_prepare_with(
        &client,
        &nc_hostnames(config),
        &NcOutbox::in_state_dir(&config.state_dir),
    )
}

/// [`nc_prepare`] with an explicit classifier, host name rewrites and
/// outbox.
///
/// Refuses ([`ErrorKind::Refused`]) to write a dump that is empty or lacks
/// the root group: that is a broken classifier, and shipping it would only
/// make the passive refuse it.
pub fn nc_prepare_with(
    active: &dyn ClassifierApi,
    hostnames: &[(String, String)],
    outbox: &NcOutbox,
) -> Result<NcPrepared> {
    let host = active.host().to_owned();
    let fetched = active.groups()?;
    if fetched.is_empty() || !fetched.iter().any(|g| g.id == ROOT_GROUP_ID) {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "the classifier at {host} returned {} groups without the root group {ROOT_GROUP_ID}; refusing to ship an incomplete classification (the previous dump in {} is kept). Check the console services on this host",
                fetched.len(),
                outbox.dir().display()
            ),
        )
        .with_host(host));
    }
    let (groups, report) = transform(&fetched, hostnames)?;
    let written = outbox.write(&groups)?;
    let mut warnings = Vec::new();
    if hostnames.is_empty() {
        warnings.push(
            "nc.hostnames is empty: groups are shipped with the active primary's host names unchanged; map the active's name to the passive's"
                .to_owned(),
        );
    }
    Ok(NcPrepared {
        digest: written.digest,
        source_digest: canonical_digest(&fetched),
        previous: written.previous,
        changed: written.changed,
        path: outbox.dump_path(),
        groups: groups.len(),
        rewrites: report.rewrites.len(),
        warnings,
    })
}

/// Which groups [`nc_dump`] prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpForm {
    /// As the classifier returned them (read-only keys included).
    Raw,
    /// With the host names rewritten, as they are shipped (default).
    #[default]
    Transformed,
}

/// `pe_failover nc dump`: this host's groups as pretty JSON (an array of
/// group objects, the shape of `GET /v1/groups`), raw or rewritten.
pub fn nc_dump(config: &Config, form: DumpForm) -> Result<String> {
    let client = nc_client(config)?;
    nc_dump_with(&client, &nc_hostnames(config), form)
}

/// [`nc_dump`] with an explicit classifier and host name rewrites.
pub fn nc_dump_with(
    active: &dyn ClassifierApi,
    hostnames: &[(String, String)],
    form: DumpForm,
) -> Result<String> {
    let fetched = active.groups()?;
    let groups = match form {
        DumpForm::Raw => fetched,
        DumpForm::Transformed => transform(&fetched, hostnames)?.0,
    };
    let value = Value::Array(groups.iter().map(classifier::Group::to_value).collect());
    serde_json::to_string_pretty(&value).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot encode the groups: {e}"),
        )
    })
}

// ---- the passive side ----

/// The dump a run applied (or tried to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedDump {
    /// The snapshot (manifest digest) it was read from.
    pub snapshot: String,
    /// The canonical digest of its groups.
    pub digest: String,
    /// The transaction that carried it.
    pub txn: Option<String>,
    /// Groups in it.
    pub groups: usize,
}

/// What one [`NcApplier::run`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NcApplyReport {
    /// Transactions staged into snapshots, in order.
    pub staged: Vec<StagedTxn>,
    /// Transactions removed without being staged (corrupt, stale).
    pub discarded: Vec<DiscardedTxn>,
    /// Snapshots removed by retention.
    pub pruned: Vec<String>,
    /// The dump brought to the classifier (none: nothing received yet).
    pub dump: Option<AppliedDump>,
    /// What the classifier sync did (diff, plan, calls).
    pub sync: Option<classifier::SyncReport>,
    /// Classes the passive lacks for the dump's groups: why a run was
    /// refused, or what `force` let through. The advice is
    /// [`classifier::MISSING_CLASSES_ADVICE`].
    pub missing_classes: Vec<classifier::MissingClass>,
    /// Warnings: forced guards, discarded transactions, nothing received.
    pub warnings: Vec<String>,
    /// Wall-clock duration.
    pub elapsed: Duration,
}

impl NcApplyReport {
    /// Write calls made to the classifier.
    pub fn writes(&self) -> usize {
        self.sync.as_ref().map_or(0, |s| s.counts.writes)
    }
}

/// Options of [`nc_apply`] that come from the command line, not the
/// configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NcApplyOptions {
    /// Override the guards (too many deletes, missing classes, no root) and
    /// the fencing of a promoted host. Default: false.
    pub force: bool,
    /// Stage, diff and plan, but write nothing to the classifier. Default:
    /// false.
    pub noop: bool,
    /// A role file ([`Role::read`]) consulted besides the configured role.
    pub role_file: Option<PathBuf>,
}

/// `pe_failover nc apply` on the passive primary: builds the classifier
/// client of this host ([`nc_client`]) and runs [`NcApplier::from_config`].
pub fn nc_apply(config: &Config, options: &NcApplyOptions) -> Result<NcApplyReport> {
    check_enabled(config)?;
    let client = nc_client(config)?;
    let mut applier = NcApplier::from_config(config)
        .force(options.force)
        .noop(options.noop);
    if let Some(path) = &options.role_file {
        applier = applier.role_file(path);
    }
    applier.run(&client)
}

/// `pe_failover status` for the Node Classifier on a passive primary: the
/// last [`NcStatus`] written under `state_dir`, if any.
pub fn nc_status(state_dir: impl AsRef<Path>) -> Result<Option<NcStatus>> {
    NcStatus::load(&nc_status_path(state_dir.as_ref()))
}

/// Applies received Node Classifier dumps to the passive primary's
/// classifier (see the [module documentation](self)).
///
/// ```no_run
/// use pe_failover_core::classifier::ClassifierClient;
/// use pe_failover_core::ncship::NcApplier;
///
/// # fn main() -> pe_failover_core::Result<()> {
/// let passive = ClassifierClient::builder("https://b.example.com:4433")
///     .puppet_ssldir("/etc/puppetlabs/puppet/ssl", "b.example.com")
///     .build()?;
/// let report = NcApplier::new("/opt/pe_failover/state")
///     .role_file("/opt/puppetlabs/facter/facts.d/pe_failover.yaml")
///     .run(&passive)?;
/// println!("{} writes", report.writes());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct NcApplier {
    state: StateDir,
    status_path: PathBuf,
    keep: usize,
    max_delete_share: f64,
    force: bool,
    noop: bool,
    replace: bool,
    role: Option<Role>,
    role_file: Option<PathBuf>,
    lock_wait: Duration,
    cancel: CancelToken,
}

impl NcApplier {
    /// An applier for the state directory `state_dir` (it works in
    /// `<state_dir>/nc/`). Defaults: keep 10 dumps, refuse to delete more
    /// than 10 % of the passive's groups, not forced, not noop, minimal
    /// updates (not replace), role passive, no role file, waits up to 60 s
    /// for another NC applier.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let root: PathBuf = state_dir.into();
        NcApplier {
            status_path: nc_status_path(&root),
            state: StateDir::for_kind(root, Kind::Nc),
            keep: 10,
            max_delete_share: classifier::DEFAULT_MAX_DELETE_SHARE,
            force: false,
            noop: false,
            replace: false,
            role: None,
            role_file: None,
            lock_wait: Duration::from_secs(60),
            cancel: CancelToken::new(),
        }
    }

    /// An applier with the configuration's state directory, `nc.keep_dumps`,
    /// `nc.max_delete_share`, `nc.replace` and `role`.
    pub fn from_config(config: &Config) -> Self {
        NcApplier::new(&config.state_dir)
            .keep_dumps(config.nc.keep_dumps)
            .max_delete_share(config.nc.max_delete_share)
            .replace(config.nc.replace)
            .role(match config.role {
                config::Role::Active => Role::Active,
                config::Role::Passive => Role::Passive,
            })
    }

    /// How many dumps (snapshots) to keep, at least 1; the latest is always
    /// kept. Default: 10.
    pub fn keep_dumps(mut self, n: usize) -> Self {
        self.keep = n.max(1);
        self
    }

    /// The share of the passive's groups one run may delete without
    /// `force`. Default: 0.10.
    pub fn max_delete_share(mut self, share: f64) -> Self {
        self.max_delete_share = share.clamp(0.0, 1.0);
        self
    }

    /// Overrides the guards (empty or rootless dump, too many deletes,
    /// missing classes) and applies even on a host whose role is active.
    /// Default: false.
    pub fn force(mut self, yes: bool) -> Self {
        self.force = yes;
        self
    }

    /// Stages, diffs and plans, but writes nothing to the classifier (and
    /// does not refresh classes). Default: false.
    pub fn noop(mut self, yes: bool) -> Self {
        self.noop = yes;
        self
    }

    /// Replaces the whole tree with one `import-hierarchy` call when
    /// anything differs, instead of the minimal calls. Default: false.
    pub fn replace(mut self, yes: bool) -> Self {
        self.replace = yes;
        self
    }

    /// This host's role as configured; `Active` fences the applier.
    /// Default: passive.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// A role file ([`Role::read`]); when it says `active` the applier is
    /// fenced, when it cannot be read or parsed the run is refused.
    /// Default: none.
    pub fn role_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.role_file = Some(path.into());
        self
    }

    /// How long to wait for another NC applier. Default: 60 s.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Stops staging when `token` is tripped (a classifier call in flight
    /// finishes).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// The NC state directory (`<state>/nc`).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The status file (`<state>/nc/status.json`).
    pub fn status_path(&self) -> &Path {
        &self.status_path
    }

    /// Stages pending transactions and brings `passive` (this host's
    /// classifier) to the latest dump. Writes the status file whatever
    /// happens (a status that cannot be written becomes a warning).
    ///
    /// The report of a failed run is not returned; what it found is in the
    /// status file ([`NcStatus`]: error, missing classes, warnings).
    pub fn run(&self, passive: &dyn ClassifierApi) -> Result<NcApplyReport> {
        let started = Instant::now();
        let mut report = NcApplyReport::default();
        let mut role = self.role;
        let result = self.run_inner(passive, &mut report, &mut role);
        report.elapsed = started.elapsed();
        let result = result.map_err(|e| {
            if e.host().is_none() && e.path().is_none() {
                e.with_host(passive.host().to_owned())
            } else {
                e
            }
        });
        if let Err(e) = self.record(passive, &report, role, result.as_ref().err()) {
            report
                .warnings
                .push(format!("the status file was not written: {e}"));
        }
        result.map(|()| report)
    }

    fn role_now(&self) -> Result<Option<Role>> {
        if let Some(path) = &self.role_file {
            match Role::read(path) {
                Ok(Some(Role::Active)) => return Ok(Some(Role::Active)),
                Ok(Some(r)) if self.role.is_none() => return Ok(Some(r)),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Refused,
                        format!(
                            "cannot tell this host's role, so the Node Classifier applier does nothing: {e}"
                        ),
                    )
                    .with_path(path))
                }
            }
        }
        Ok(self.role)
    }

    fn run_inner(
        &self,
        passive: &dyn ClassifierApi,
        report: &mut NcApplyReport,
        role_seen: &mut Option<Role>,
    ) -> Result<()> {
        let role = self.role_now()?;
        *role_seen = role;
        if role == Some(Role::Active) {
            if !self.force {
                return Err(Error::new(
                    ErrorKind::Fenced,
                    format!(
                        "this host has been promoted to active, so the Node Classifier applier leaves its classifier ({}) alone; received dumps stay in {} until it is demoted to passive (or apply with force)",
                        passive.host(),
                        self.state.incoming().display()
                    ),
                ));
            }
            report.warnings.push(
                "forced: applying the old primary's groups on a host whose role is active"
                    .to_owned(),
            );
        }
        fsutil::create_dir_if_missing(self.state.root(), 0o755)?;
        let _lock = FileLock::acquire(
            &self.state.apply_lock(),
            self.lock_wait,
            "Node Classifier applier",
        )?;

        // 1. Stage the chain of received transactions.
        let mut latest = latest_snapshot(&self.state)?;
        let start = latest.as_ref().map(|s| s.meta.digest.clone());
        let (txns, order) = pending_chain(
            &self.state,
            Kind::Nc.as_str(),
            start.as_deref(),
            &mut report.discarded,
        )?;
        let mut failure = None;
        for (n, &i) in order.iter().enumerate() {
            let txn = &txns[i];
            let staged =
                build_snapshot(&self.state, latest.as_mut(), false, txn, None, &self.cancel)
                    .and_then(|(snap, stats)| match snapshot_dump(&snap) {
                        Ok(_) => Ok((snap, stats)),
                        Err(e) => {
                            let _ = fsutil::remove_any(&snap.dir);
                            Err(e)
                        }
                    });
            match staged {
                Ok((snap, stats)) => {
                    switch_latest(&self.state, &snap)?;
                    fsutil::remove_any(&txn.dir)?;
                    report.staged.push(StagedTxn {
                        txn: txn.meta.txn.clone(),
                        digest: snap.meta.digest.clone(),
                        reused: stats.reused,
                        copied: stats.copied,
                    });
                    latest = Some(snap);
                }
                Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
                Err(e) => {
                    for &j in &order[n..] {
                        fsutil::remove_any(&txns[j].dir)?;
                        report.discarded.push(DiscardedTxn {
                            txn: txns[j].meta.txn.clone(),
                            reason: if j == i {
                                e.to_string()
                            } else {
                                format!("follows the discarded transaction {}", txn.meta.txn)
                            },
                        });
                    }
                    failure = Some(Error::new(
                        e.kind(),
                        format!(
                            "transaction {} from {} was refused and discarded: {}",
                            txn.meta.txn,
                            txn.meta.sender,
                            e.message()
                        ),
                    ));
                    break;
                }
            }
        }
        for d in &report.discarded {
            report
                .warnings
                .push(format!("discarded transaction {}: {}", d.txn, d.reason));
        }
        let protect: Vec<&str> = latest
            .as_ref()
            .map(|s| s.meta.digest.as_str())
            .into_iter()
            .collect();
        report.pruned = prune_snapshots(&self.state, self.keep, &protect)?;
        // A refused transaction stops the run before the classifier is
        // touched: the error must be seen, not hidden by an apply of the
        // previous dump.
        if let Some(e) = failure {
            return Err(e);
        }

        // 2. Bring the classifier to the latest dump.
        let Some(target) = latest else {
            report.warnings.push(format!(
                "no Node Classifier dump has been received yet in {}; nothing to apply",
                self.state.root().display()
            ));
            return Ok(());
        };
        let dump = snapshot_dump(&target)?;
        report.dump = Some(AppliedDump {
            snapshot: target.meta.digest.clone(),
            digest: dump.digest.clone(),
            txn: target.meta.txn.clone(),
            groups: dump.groups.len(),
        });
        let options = SyncOptions {
            mode: if self.replace {
                SyncMode::Replace
            } else {
                SyncMode::Update
            },
            noop: self.noop,
            guard: GuardOptions {
                max_delete_share: self.max_delete_share,
                passive_promoted: false,
                force: self.force,
            },
            refresh_classes: true,
            check_classes: true,
        };
        let synced = match classifier::sync(passive, &dump.groups, &options) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e.kind(), ErrorKind::Refused | ErrorKind::Api) {
                    // Refused for missing classes, or a write the classifier
                    // rejected (forced through them): name the classes the
                    // passive lacks in the status too (best effort, one
                    // more read).
                    if let Ok(catalog) = passive.class_catalog() {
                        report.missing_classes =
                            classifier::missing_classes(&dump.groups, &catalog);
                    }
                }
                return Err(e);
            }
        };
        report.missing_classes = synced.missing_classes.clone();
        report.warnings.extend(synced.warnings.iter().cloned());
        if !synced.in_sync && !self.noop {
            report.warnings.push(format!(
                "the classifier at {} still differs from dump {} after the run; the next run retries",
                synced.host, dump.digest
            ));
        }
        report.sync = Some(synced);
        Ok(())
    }

    /// Updates the status file with the outcome of one run.
    fn record(
        &self,
        passive: &dyn ClassifierApi,
        report: &NcApplyReport,
        role: Option<Role>,
        error: Option<&Error>,
    ) -> Result<()> {
        if !self.state.root().is_dir() {
            // Fenced before anything was created: nothing to record into.
            if let Some(parent) = self.state.root().parent() {
                if !parent.is_dir() {
                    return Ok(());
                }
            }
            fsutil::create_dir_if_missing(self.state.root(), 0o755)?;
        }
        let mut status = NcStatus::load(&self.status_path)
            .unwrap_or(None)
            .unwrap_or_default();
        let now = Stamp::now();
        status.role = role.or(Some(Role::Passive));
        status.classifier = Some(passive.host().to_owned());
        status.last_run = Some(now.clone());
        status.last_run_ok = error.is_none();
        status.warnings = report.warnings.clone();
        status.pending_txns = list_txns(&self.state, Kind::Nc.as_str())
            .map(|l| l.complete.len() as u64)
            .unwrap_or(0);
        let mut counts = NcApplyCounts {
            txns_applied: report.staged.len() as u64,
            txns_discarded: report.discarded.len() as u64,
            ..NcApplyCounts::default()
        };
        if let Some(dump) = &report.dump {
            counts.groups = dump.groups as u64;
            let at = latest_snapshot(&self.state)
                .ok()
                .flatten()
                .filter(|s| s.meta.digest == dump.snapshot)
                .map(|s| s.meta.created)
                .unwrap_or_else(|| now.clone());
            status.staged = Some(DigestAt {
                digest: dump.digest.clone(),
                txn: dump.txn.clone(),
                at,
            });
        }
        status.missing_classes = report
            .missing_classes
            .iter()
            .map(ToString::to_string)
            .collect();
        if let Some(sync) = &report.sync {
            counts.created = sync.counts.created as u64;
            counts.updated = sync.counts.updated as u64;
            counts.deleted = sync.counts.deleted as u64;
            counts.imported = sync.counts.imported as u64;
            counts.writes = sync.counts.writes as u64;
            if sync.in_sync && !sync.noop {
                let dump = report.dump.as_ref();
                let same = status.applied.as_ref().map(|a| a.digest.as_str())
                    == dump.map(|d| d.digest.as_str());
                if !same {
                    status.applied = dump.map(|d| DigestAt {
                        digest: d.digest.clone(),
                        txn: d.txn.clone(),
                        at: now.clone(),
                    });
                }
            }
        }
        status.counts = counts;
        match error {
            Some(e) => status.last_error = Some(ErrorRecord::from_error(e)),
            None => status.last_success = Some(now),
        }
        status.save(&self.status_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::parse_dump;
    use crate::replset::manifest_from_entries_of;
    use std::fs;

    fn groups() -> Vec<classifier::Group> {
        parse_dump(
            r#"[{"id":"00000000-0000-4000-8000-000000000000",
            "parent":"00000000-0000-4000-8000-000000000000","name":"All Nodes",
            "environment":"production","environment_trumps":false,
            "classes":{},"variables":{},"serial_number":3}]"#,
        )
        .unwrap()
    }

    #[test]
    fn dumps_round_trip_and_detect_tampering() {
        let (digest, bytes) = encode_dump(&groups());
        assert_eq!(digest, canonical_digest(&groups()));
        let dump = decode_dump(&bytes, Path::new("x")).unwrap();
        assert_eq!(dump.digest, digest);
        let tampered = String::from_utf8(bytes)
            .unwrap()
            .replace("All Nodes", "All Nodez");
        let err = decode_dump(tampered.as_bytes(), Path::new("x")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("not the recorded"), "{err}");
    }

    #[test]
    fn the_outbox_is_rewritten_only_when_the_digest_changes() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = NcOutbox::new(dir.path().join("out"));
        assert!(outbox
            .scan()
            .unwrap_err()
            .to_string()
            .contains("nc prepare"));
        let first = outbox.write(&groups()).unwrap();
        assert!(first.changed && first.previous.is_none());
        let mtime = fs::metadata(outbox.dump_path())
            .unwrap()
            .modified()
            .unwrap();
        let again = outbox.write(&groups()).unwrap();
        assert!(!again.changed);
        assert_eq!(again.previous.as_deref(), Some(first.digest.as_str()));
        assert_eq!(
            fs::metadata(outbox.dump_path())
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
        let m = outbox.scan().unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(outbox.read().unwrap().digest, first.digest);
    }

    #[test]
    fn nc_manifests_hold_only_the_dump_file() {
        let entry = |path: &str| Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 0,
            sha256: Some("a".repeat(64)),
            target: None,
        };
        manifest_from_entries_of(Kind::Nc, vec![entry(NC_DUMP_FILE)]).unwrap();
        for bad in ["ca_key.pem", "other.json", ".groups.json.tmp"] {
            let err = manifest_from_entries_of(Kind::Nc, vec![entry(bad)]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsafePath, "{bad}");
        }
        // Nested paths fail earlier (no parent directory entry) or here.
        assert!(manifest_from_entries_of(Kind::Nc, vec![entry("ca/ca_key.pem")]).is_err());
        let err = manifest_from_entries_of(Kind::Ca, vec![entry(NC_DUMP_FILE)]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsafePath);
        let mut suid = entry(NC_DUMP_FILE);
        suid.mode = 0o4600;
        assert!(manifest_from_entries_of(Kind::Nc, vec![suid]).is_err());
    }
}
