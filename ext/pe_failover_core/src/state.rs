//! Roles and status files: what each side of a replication remembers about
//! its last runs, in a JSON schema the `status` command, the
//! `pe_failover_status` fact and syslog lines all read.
//!
//! - On a passive primary the applier writes [`ReplicaStatus`] to
//!   `<state>/status.json` after every run.
//! - On a passive primary the receiver writes [`ReceiverStatus`] to
//!   `<state>/incoming/receiver.status.json`.
//! - On the active primary the sender writes one [`SenderStatus`] per replica
//!   and kind to `<state>/replicas/<replica>/<kind>.status.json`.
//! - On a passive primary the Node Classifier applier writes [`NcStatus`] to
//!   `<state>/nc/status.json` ([`nc_status_path`]); its receiver writes a
//!   [`ReceiverStatus`] of kind `nc` to `<state>/nc/incoming/receiver.status.json`.
//!
//! Both are replaced atomically, carry a `format` number (1), and record
//! times twice: RFC 3339 in UTC for people, Unix seconds for arithmetic
//! ("seconds since the last success"). They only report, so they are not
//! flushed to disk: after a crash one may show the run before, or be empty
//! (read as no status yet), until the next run.
//!
//! The host's role (active or passive) is read from a role file, see
//! [`Role::read`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::write_cache_atomically;
use crate::{Error, ErrorKind, Result};

/// Version of the status file schemas.
pub const STATUS_FORMAT: u32 = 1;

/// The role of a primary in the failover pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The primary that serves agents and whose CA is replicated.
    Active,
    /// The warm spare that receives the replicated CA.
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

    /// Parses the contents of a role file: either a single word (`active` or
    /// `passive`) or YAML/`key=value` lines of which one sets
    /// `pe_failover_mode` (the layout of the module's
    /// `facts.d/pe_failover.yaml`). Case and quotes are ignored.
    pub fn parse(text: &str) -> Result<Role> {
        let word = |s: &str| -> Option<Role> {
            match s
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_ascii_lowercase()
                .as_str()
            {
                "active" => Some(Role::Active),
                "passive" => Some(Role::Passive),
                _ => None,
            }
        };
        let trimmed = text.trim();
        if let Some(role) = word(trimmed) {
            return Ok(role);
        }
        for line in trimmed.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("pe_failover_mode") else {
                continue;
            };
            let rest = rest.trim_start();
            let Some(value) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('=')) else {
                continue;
            };
            if let Some(role) = word(value) {
                return Ok(role);
            }
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            "the role file says neither \"active\" nor \"passive\" (expected one word, or a line `pe_failover_mode: active|passive`)",
        ))
    }

    /// Reads the role file at `path`. A missing file means no role has been
    /// set yet (`Ok(None)`); a file that cannot be read or parsed is an
    /// error, so that callers refuse to act rather than guess.
    pub fn read(path: &Path) -> Result<Option<Role>> {
        match fs::read_to_string(path) {
            Ok(text) => Role::parse(&text).map(Some).map_err(|e| {
                Error::new(e.kind(), format!("{}: {}", path.display(), e.message())).with_path(path)
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read role file", path, e)),
        }
    }
}

/// A point in time, twice: RFC 3339 in UTC and Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub time: String,
    /// Seconds since the Unix epoch.
    pub unix: i64,
}

impl Stamp {
    /// The current time.
    pub fn now() -> Stamp {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Stamp::from_unix(unix)
    }

    /// The time `unix` seconds after the epoch.
    pub fn from_unix(unix: i64) -> Stamp {
        Stamp {
            time: rfc3339(unix),
            unix,
        }
    }
}

/// Formats Unix seconds as RFC 3339 in UTC (`2026-01-31T12:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The last error of a component: its kind, message and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// [`ErrorKind::as_str`] of the error (`"refused"`, `"fenced"`, ...).
    pub kind: String,
    /// The complete message (never key material: errors carry none).
    pub message: String,
    /// When it happened.
    pub at: Stamp,
}

impl ErrorRecord {
    /// Records `err` as happening now.
    pub fn from_error(err: &Error) -> ErrorRecord {
        ErrorRecord {
            kind: err.kind().as_str().to_string(),
            message: err.to_string(),
            at: Stamp::now(),
        }
    }
}

/// A manifest digest and when it reached a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestAt {
    /// Root digest of the manifest.
    pub digest: String,
    /// The transaction that carried it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// When.
    pub at: Stamp,
}

/// Counters of the last apply on a passive primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCounts {
    /// Entries in the applied manifest.
    pub entries: u64,
    /// Transactions staged into snapshots in this run.
    pub txns_applied: u64,
    /// Transactions discarded in this run (corrupt, or not on the chain).
    pub txns_discarded: u64,
    /// Live files written (created or replaced).
    pub written: u64,
    /// Live entries whose mode or owner only was corrected.
    pub metadata_fixed: u64,
    /// Live files and symlinks deleted.
    pub deleted: u64,
    /// Live directories removed.
    pub dirs_removed: u64,
    /// Replica-only certificates kept.
    pub kept: u64,
}

/// How the passive's CA differs from the active's on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Certnames whose `signed/<certname>.pem` exists only on this replica
    /// (it signed them itself); they are kept, never deleted.
    pub replica_only_signed: Vec<String>,
}

/// The status of a passive primary's replication of one kind, written by
/// the applier to `<state>/status.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Schema version ([`STATUS_FORMAT`]).
    pub format: u32,
    /// This host's role when the status was written.
    pub role: Option<Role>,
    /// What is replicated (`"ca"`).
    pub kind: String,
    /// The newest snapshot built from received transactions.
    pub staged: Option<DigestAt>,
    /// The snapshot the live directories were last brought to.
    pub applied: Option<DigestAt>,
    /// Complete transactions waiting for the applier.
    pub pending_txns: u64,
    /// When the applier last ran, and whether that run succeeded.
    pub last_run: Option<Stamp>,
    /// Whether the last run succeeded.
    pub last_run_ok: bool,
    /// Counters of the last run.
    pub counts: ApplyCounts,
    /// Intended differences from the active primary.
    pub divergence: Divergence,
    /// Warnings of the last run (a failed reload, discarded transactions).
    pub warnings: Vec<String>,
    /// The last error, kept after later successes so it can be inspected;
    /// compare its time with `last_run`.
    pub last_error: Option<ErrorRecord>,
}

impl ReplicaStatus {
    /// An empty status for `kind`.
    pub fn new(kind: &str) -> ReplicaStatus {
        ReplicaStatus {
            format: STATUS_FORMAT,
            role: None,
            kind: kind.to_string(),
            staged: None,
            applied: None,
            pending_txns: 0,
            last_run: None,
            last_run_ok: false,
            counts: ApplyCounts::default(),
            divergence: Divergence::default(),
            warnings: Vec::new(),
            last_error: None,
        }
    }

    /// Reads a status file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<ReplicaStatus>> {
        load_json(path)
    }

    /// Replaces the status file atomically (mode 0644; not flushed to disk,
    /// see the [module documentation](self)).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }

    /// The syslog line for the last run:
    /// `PE_FAILOVER: apply ---> [SUCCESS|FAILURE|WARNING] <message>`.
    pub fn syslog_line(&self) -> String {
        let applied = self
            .applied
            .as_ref()
            .map(|a| short(&a.digest))
            .unwrap_or("none");
        if !self.last_run_ok {
            let msg = self
                .last_error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("failed");
            return syslog_line("apply", Level::Failure, msg);
        }
        let mut msg = format!(
            "{} at {applied}: {} written, {} deleted, {} kept",
            self.kind, self.counts.written, self.counts.deleted, self.counts.kept
        );
        if !self.divergence.replica_only_signed.is_empty() {
            msg.push_str(&format!(
                "; replica-only certificates: {}",
                self.divergence.replica_only_signed.join(", ")
            ));
        }
        if self.warnings.is_empty() {
            syslog_line("apply", Level::Success, &msg)
        } else {
            msg.push_str("; ");
            msg.push_str(&self.warnings.join("; "));
            syslog_line("apply", Level::Warning, &msg)
        }
    }
}

/// What the receiver on a passive primary last stored, written to
/// `<state>/incoming/receiver.status.json` (the receiver runs unprivileged
/// and can write only there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// Schema version ([`STATUS_FORMAT`]).
    pub format: u32,
    /// What is replicated (`"ca"`).
    pub kind: String,
    /// The last transaction stored, with its digest.
    pub last_received: Option<DigestAt>,
    /// The host that sent it.
    pub last_sender: Option<String>,
    /// When a session last ended without error (stored or nothing to do).
    pub last_success: Option<Stamp>,
    /// The last error; compare its time with `last_success`.
    pub last_error: Option<ErrorRecord>,
}

impl ReceiverStatus {
    /// An empty status for `kind`.
    pub fn new(kind: &str) -> ReceiverStatus {
        ReceiverStatus {
            format: STATUS_FORMAT,
            kind: kind.to_string(),
            last_received: None,
            last_sender: None,
            last_success: None,
            last_error: None,
        }
    }

    /// Reads a status file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<ReceiverStatus>> {
        load_json(path)
    }

    /// Replaces the status file atomically (mode 0644; not flushed to disk,
    /// see the [module documentation](self)).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }
}

/// What the last sync of a sender to one replica did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// A transaction was committed on the replica.
    Committed,
    /// The replica already had the current state; nothing was sent.
    UpToDate,
    /// Noop mode: the changes were computed, nothing was sent.
    Noop,
    /// The sync failed (see `last_error`).
    Failed,
}

/// Counters of the last sync, as kept in the sender's status file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounts {
    /// Entries in the shipped manifest.
    pub entries: u64,
    /// Entries added or changed.
    pub upserts: u64,
    /// Entries removed.
    pub removes: u64,
    /// File contents sent.
    pub objects: u64,
    /// Bytes of file contents sent.
    pub object_bytes: u64,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Bytes read from the connection.
    pub bytes_received: u64,
    /// Whether manifests had to be exchanged (first sync, drift).
    pub manifest_exchanged: bool,
    /// Duration of the sync in milliseconds.
    pub elapsed_ms: u64,
}

/// The status of the replication of one kind to one replica, written by the
/// sender on the active primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderStatus {
    /// Schema version ([`STATUS_FORMAT`]).
    pub format: u32,
    /// What is replicated (`"ca"`).
    pub kind: String,
    /// The replica's name.
    pub replica: String,
    /// When a sync last succeeded (committed or found up to date).
    pub last_success: Option<Stamp>,
    /// When a sync was last attempted.
    pub last_attempt: Option<Stamp>,
    /// What the last attempt did.
    pub last_outcome: Option<SyncOutcome>,
    /// The digest the replica holds as far as this sender knows.
    pub last_shipped: Option<DigestAt>,
    /// Counters of the last attempt.
    pub last_counts: SyncCounts,
    /// The last error, kept after later successes; compare its time with
    /// `last_success`.
    pub last_error: Option<ErrorRecord>,
}

impl SenderStatus {
    /// An empty status for `replica` and `kind`.
    pub fn new(replica: &str, kind: &str) -> SenderStatus {
        SenderStatus {
            format: STATUS_FORMAT,
            kind: kind.to_string(),
            replica: replica.to_string(),
            last_success: None,
            last_attempt: None,
            last_outcome: None,
            last_shipped: None,
            last_counts: SyncCounts::default(),
            last_error: None,
        }
    }

    /// Reads a status file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<SenderStatus>> {
        load_json(path)
    }

    /// Replaces the status file atomically (mode 0644; not flushed to disk,
    /// see the [module documentation](self)).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }

    /// Seconds since the last success at `now`, if there was one.
    pub fn lag_seconds(&self, now: &Stamp) -> Option<i64> {
        self.last_success.as_ref().map(|s| now.unix - s.unix)
    }

    /// The syslog line for the last attempt:
    /// `PE_FAILOVER: sync ---> [SUCCESS|FAILURE] <message>`.
    pub fn syslog_line(&self) -> String {
        match self.last_outcome {
            Some(SyncOutcome::Failed) | None => {
                let msg = self
                    .last_error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("no sync yet");
                syslog_line("sync", Level::Failure, &format!("{}: {msg}", self.replica))
            }
            Some(outcome) => {
                let digest = self
                    .last_shipped
                    .as_ref()
                    .map(|s| short(&s.digest))
                    .unwrap_or("none");
                let what = match outcome {
                    SyncOutcome::Committed => "committed",
                    SyncOutcome::UpToDate => "up to date",
                    _ => "noop",
                };
                syslog_line(
                    "sync",
                    Level::Success,
                    &format!(
                        "{} {} {what} at {digest}: {} upserts, {} removes, {} bytes sent",
                        self.kind,
                        self.replica,
                        self.last_counts.upserts,
                        self.last_counts.removes,
                        self.last_counts.bytes_sent
                    ),
                )
            }
        }
    }
}

/// Counters of the last Node Classifier apply on a passive primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NcApplyCounts {
    /// Groups in the applied dump.
    pub groups: u64,
    /// Transactions staged in this run.
    pub txns_applied: u64,
    /// Transactions discarded in this run (corrupt, or not on the chain).
    pub txns_discarded: u64,
    /// Groups created.
    pub created: u64,
    /// Update calls (temporary renames included).
    pub updated: u64,
    /// Groups deleted.
    pub deleted: u64,
    /// `import-hierarchy` calls.
    pub imported: u64,
    /// Every write call made to the classifier (0 when nothing changed).
    pub writes: u64,
}

/// The status of a passive primary's Node Classifier replication, written
/// by the NC applier to `<state>/nc/status.json` after every run (the CA's
/// is [`ReplicaStatus`]).
///
/// Digests are the canonical digests of the groups
/// (`classifier::canonical_digest`), the same the active primary reports
/// when it prepares a dump, so the two sides can be compared directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NcStatus {
    /// Schema version ([`STATUS_FORMAT`]).
    pub format: u32,
    /// This host's role when the status was written.
    pub role: Option<Role>,
    /// Always `"nc"`.
    pub kind: String,
    /// The newest dump staged from received transactions (groups digest,
    /// transaction, time).
    pub staged: Option<DigestAt>,
    /// The dump the live classifier was last brought to.
    pub applied: Option<DigestAt>,
    /// The classifier written to (`<host>:<port>`).
    pub classifier: Option<String>,
    /// Complete transactions waiting for the applier.
    pub pending_txns: u64,
    /// When the applier last ran.
    pub last_run: Option<Stamp>,
    /// Whether the last run succeeded.
    pub last_run_ok: bool,
    /// When a run last succeeded.
    pub last_success: Option<Stamp>,
    /// Counters of the last run.
    pub counts: NcApplyCounts,
    /// Classes the passive lacks (`group: class in environment`), reported
    /// by the last run (refused, or forced through).
    pub missing_classes: Vec<String>,
    /// Warnings of the last run (forced guards, discarded transactions).
    pub warnings: Vec<String>,
    /// The last error, kept after later successes; compare its time with
    /// `last_run`.
    pub last_error: Option<ErrorRecord>,
}

impl NcStatus {
    /// An empty status.
    pub fn new() -> NcStatus {
        NcStatus {
            format: STATUS_FORMAT,
            role: None,
            kind: "nc".into(),
            staged: None,
            applied: None,
            classifier: None,
            pending_txns: 0,
            last_run: None,
            last_run_ok: false,
            last_success: None,
            counts: NcApplyCounts::default(),
            missing_classes: Vec::new(),
            warnings: Vec::new(),
            last_error: None,
        }
    }

    /// Reads a status file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<NcStatus>> {
        load_json(path)
    }

    /// Replaces the status file atomically (mode 0644; not flushed to disk,
    /// see the [module documentation](self)).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }

    /// Seconds since the last successful run at `now`, if there was one.
    pub fn lag_seconds(&self, now: &Stamp) -> Option<i64> {
        self.last_success.as_ref().map(|s| now.unix - s.unix)
    }

    /// The syslog line for the last run:
    /// `PE_FAILOVER: nc_apply ---> [SUCCESS|FAILURE|WARNING] <message>`.
    pub fn syslog_line(&self) -> String {
        if !self.last_run_ok {
            let msg = self
                .last_error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("failed");
            return syslog_line("nc_apply", Level::Failure, msg);
        }
        let applied = self
            .applied
            .as_ref()
            .map(|a| short(&a.digest))
            .unwrap_or("none");
        let mut msg = format!(
            "nc at {applied}: {} groups, {} created, {} updated, {} deleted, {} imported",
            self.counts.groups,
            self.counts.created,
            self.counts.updated,
            self.counts.deleted,
            self.counts.imported
        );
        if self.warnings.is_empty() {
            syslog_line("nc_apply", Level::Success, &msg)
        } else {
            msg.push_str("; ");
            msg.push_str(&self.warnings.join("; "));
            syslog_line("nc_apply", Level::Warning, &msg)
        }
    }
}

impl Default for NcStatus {
    fn default() -> Self {
        NcStatus::new()
    }
}

/// The Node Classifier status file of a passive primary whose state
/// directory is `state_dir`: `<state_dir>/nc/status.json`.
pub fn nc_status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("nc").join("status.json")
}

/// The path of the sender status file for `replica` and `kind` under the
/// sender's state directory.
pub fn sender_status_path(state_dir: &Path, replica: &str, kind: &str) -> PathBuf {
    state_dir
        .join("replicas")
        .join(replica)
        .join(format!("{kind}.status.json"))
}

/// Severity of a syslog line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The operation succeeded.
    Success,
    /// The operation failed.
    Failure,
    /// The operation succeeded with something to look at.
    Warning,
}

/// A log line in the module's historical format:
/// `PE_FAILOVER: <component> ---> [SUCCESS|FAILURE|WARNING] <message>`.
/// Line breaks in `message` are replaced by spaces.
pub fn syslog_line(component: &str, level: Level, message: &str) -> String {
    let tag = match level {
        Level::Success => "SUCCESS",
        Level::Failure => "FAILURE",
        Level::Warning => "WARNING",
    };
    let message: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("PE_FAILOVER: {component} ---> [{tag}] {message}")
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        // Empty: written just before a crash (see `save_json`).
        Ok(b) if b.is_empty() => return Ok(None),
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "status file {} is not valid: {e} (delete it; it is rewritten on the next run)",
                path.display()
            ),
        )
        .with_path(path)
    })
}

/// Replaces a status file. It only reports (nothing is decided from it), so
/// it is not flushed to disk, which took a few milliseconds of every round:
/// readers see the old or the new file, and after a crash it may be the
/// one before or, on some file systems, empty (read as none) until the next
/// run writes it again.
fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot encode {}: {e}", path.display()),
        )
    })?;
    bytes.push(b'\n');
    write_cache_atomically(path, &bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parses_role_files() {
        assert_eq!(Role::parse("active\n").unwrap(), Role::Active);
        assert_eq!(Role::parse(" Passive ").unwrap(), Role::Passive);
        assert_eq!(
            Role::parse("---\npe_failover_mode: 'active'\npe_failover_key: x\n").unwrap(),
            Role::Active
        );
        assert_eq!(
            Role::parse("pe_failover_mode=passive").unwrap(),
            Role::Passive
        );
        assert_eq!(
            Role::parse("standby").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Role::read(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn status_files_round_trip_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut st = ReplicaStatus::new("ca");
        st.last_run_ok = true;
        st.applied = Some(DigestAt {
            digest: "ab".repeat(32),
            txn: None,
            at: Stamp::from_unix(0),
        });
        st.divergence
            .replica_only_signed
            .push("b.example.com".into());
        st.save(&path).unwrap();
        assert_eq!(ReplicaStatus::load(&path).unwrap().unwrap(), st);
        // Empty (written just before a crash, not flushed): none yet; a
        // damaged one is an error that says what to do.
        fs::write(&path, "").unwrap();
        assert_eq!(ReplicaStatus::load(&path).unwrap(), None);
        fs::write(&path, "{\"format\":").unwrap();
        let e = ReplicaStatus::load(&path).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
        st.save(&path).unwrap();
        let line = st.syslog_line();
        assert!(line.starts_with("PE_FAILOVER: apply ---> [SUCCESS] ca at abababababab"));
        assert!(line.contains("b.example.com"));

        let mut s = SenderStatus::new("b.example.com", "ca");
        s.last_outcome = Some(SyncOutcome::Failed);
        s.last_error = Some(ErrorRecord::from_error(&Error::new(
            ErrorKind::Fenced,
            "b.example.com: promoted\nsecond line",
        )));
        assert_eq!(
            s.syslog_line(),
            "PE_FAILOVER: sync ---> [FAILURE] b.example.com: b.example.com: promoted second line"
        );
    }
}
