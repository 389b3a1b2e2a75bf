//! `status`: the status files of this host, as one report with advice.

use serde::Serialize;

use super::{advice, age, replica_key, replica_label, short, Runner};
use crate::config::ReplicaConfig;
use crate::protocol::kind_from_name;
use crate::stage::StateDir;
use crate::state::{
    sender_status_path, ErrorRecord, ReceiverStatus, ReplicaStatus, Role, SenderStatus, Stamp,
    SyncOutcome,
};
use crate::{Error, Result};

/// One line of the status: one kind of data, one component, one peer.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEntry {
    /// `"ca"` or `"nc"`.
    pub kind: String,
    /// `"sync"` (active), `"receive"` or `"apply"` (passive).
    pub component: String,
    /// The other host: the replica (active) or the last sender (passive).
    pub peer: Option<String>,
    /// Whether this part works.
    pub healthy: bool,
    /// When it last succeeded (RFC 3339, UTC).
    pub last_success: Option<String>,
    /// Seconds since then.
    pub age_seconds: Option<i64>,
    /// The digest shipped (active) or applied (passive).
    pub digest: Option<String>,
    /// Passive: the newest staged snapshot's digest.
    pub staged_digest: Option<String>,
    /// Passive: the digest of the live files.
    pub applied_digest: Option<String>,
    /// Passive: complete transactions waiting for the applier.
    pub pending_txns: Option<u64>,
    /// The last outcome (`committed`, `up_to_date`, `failed`, ...).
    pub outcome: Option<String>,
    /// The replica refused this host as fenced (it was promoted).
    pub fenced: bool,
    /// The last error, if it is newer than the last success.
    pub last_error: Option<ErrorRecord>,
}

impl StatusEntry {
    /// An entry of `kind` and `component` with nothing known yet (unhealthy).
    fn new(kind: &str, component: &str) -> StatusEntry {
        StatusEntry {
            kind: kind.into(),
            component: component.into(),
            peer: None,
            healthy: false,
            last_success: None,
            age_seconds: None,
            digest: None,
            staged_digest: None,
            applied_digest: None,
            pending_txns: None,
            outcome: None,
            fenced: false,
            last_error: None,
        }
    }
}

/// Replication health of this host.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// This host's certname.
    pub host: String,
    /// `"active"` or `"passive"`.
    pub role: String,
    /// Whether every entry is healthy.
    pub healthy: bool,
    /// When the report was made.
    pub checked_at: Stamp,
    /// Seconds after which a part with no success counts as stale.
    pub stale_after: i64,
    /// One per kind and peer.
    pub entries: Vec<StatusEntry>,
    /// What is wrong, each with what to do next.
    pub problems: Vec<String>,
    /// Intended or harmless differences worth knowing.
    pub warnings: Vec<String>,
}

impl Runner {
    /// Reads this host's status files into one report.
    pub fn status(&self) -> Result<StatusReport> {
        let now = Stamp::now();
        let stale_after = 2 * self.config.watch.verify_interval as i64 + 60;
        let mut report = StatusReport {
            host: self.config.certname.clone(),
            role: self.role().as_str().into(),
            healthy: true,
            checked_at: now.clone(),
            stale_after,
            entries: Vec::new(),
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        match self.role() {
            Role::Active => {
                if self.config.replicas.is_empty() {
                    report.problems.push(
                        "no replicas are configured: add the passive primary to `replicas` (class pe_failover::active, parameter passive_master)".into(),
                    );
                }
                for r in &self.config.replicas {
                    for kind in ["ca", "nc"] {
                        let path =
                            sender_status_path(&self.config.state_dir, &replica_key(r), kind);
                        if kind == "nc" && !path.exists() {
                            continue;
                        }
                        let stale = if kind == "nc" {
                            2 * self.config.nc.interval as i64 + 60
                        } else {
                            stale_after
                        };
                        let status = SenderStatus::load(&path)?;
                        let entry = self.sender_entry(r, kind, status, &now, stale, &mut report);
                        report.entries.push(entry);
                    }
                }
            }
            Role::Passive => self.passive_entries(&now, stale_after, &mut report)?,
        }
        report.healthy = report.entries.iter().all(|e| e.healthy) && report.problems.is_empty();
        Ok(report)
    }

    fn sender_entry(
        &self,
        r: &ReplicaConfig,
        kind: &str,
        status: Option<SenderStatus>,
        now: &Stamp,
        stale: i64,
        report: &mut StatusReport,
    ) -> StatusEntry {
        let label = replica_label(r);
        let mut entry = StatusEntry {
            peer: Some(label.clone()),
            ..StatusEntry::new(kind, "sync")
        };
        let fence = if kind == "ca" {
            self.fence_record(r)
        } else {
            None
        };
        let Some(st) = status else {
            report.problems.push(format!(
                "{kind} to {label}: never synced; run `pe_failover sync --replica {}` or start the pe_failover watch service",
                r.host
            ));
            return entry;
        };
        entry.last_success = st.last_success.as_ref().map(|s| s.time.clone());
        entry.age_seconds = st.last_success.as_ref().map(|s| age(s, now));
        entry.digest = st.last_shipped.as_ref().map(|d| d.digest.clone());
        entry.outcome = st.last_outcome.map(outcome_name);
        let failed = st.last_outcome == Some(SyncOutcome::Failed);
        entry.last_error = if failed { st.last_error.clone() } else { None };
        let is_stale = entry.age_seconds.is_none_or(|a| a > stale);
        entry.healthy = !failed && !is_stale && fence.is_none();
        if let Some(f) = &fence {
            entry.fenced = true;
            report.problems.push(format!(
                "{kind} to {label}: refused as fenced at {} ({}); demote this host or remove {label} from the replicas; the watcher leaves it alone until the configuration changes",
                f.at.time, f.message
            ));
        } else if failed {
            let err = st.last_error.as_ref();
            let message = err.map(|e| e.message.as_str()).unwrap_or("failed");
            let kind_name = err.map(|e| e.kind.as_str()).unwrap_or("io");
            let next = advice(
                &Error::new(kind_from_name(kind_name), message),
                Some(r),
                &self.config,
            );
            report.problems.push(format!(
                "{kind} to {label}: last sync failed at {}: {message}; {next}",
                err.map(|e| e.at.time.as_str()).unwrap_or("?")
            ));
        } else if is_stale {
            report.problems.push(format!(
                "{kind} to {label}: last success {} ago, more than {stale} s; is the pe_failover watch service running on this host?",
                entry
                    .age_seconds
                    .map(|a| format!("{a} s"))
                    .unwrap_or_else(|| "never".into())
            ));
        }
        entry
    }

    fn passive_entries(&self, now: &Stamp, stale: i64, report: &mut StatusReport) -> Result<()> {
        let state = StateDir::new(&self.config.state_dir);
        // What arrives.
        let recv = ReceiverStatus::load(&state.receiver_status_file())?;
        let mut entry = StatusEntry::new("ca", "receive");
        match &recv {
            None => report.problems.push(
                "ca: nothing received yet; check that the active primary lists this host in its replicas and that its watch service runs".into(),
            ),
            Some(st) => {
                entry.peer = st.last_sender.clone();
                entry.last_success = st.last_success.as_ref().map(|s| s.time.clone());
                entry.age_seconds = st.last_success.as_ref().map(|s| age(s, now));
                entry.digest = st.last_received.as_ref().map(|d| d.digest.clone());
                entry.last_error = newer_error(st.last_error.as_ref(), st.last_success.as_ref());
                let is_stale = entry.age_seconds.is_none_or(|a| a > stale);
                entry.healthy = entry.last_error.is_none() && !is_stale;
                if let Some(e) = &entry.last_error {
                    report.problems.push(format!(
                        "ca: the last receive session failed at {}: {}",
                        e.at.time, e.message
                    ));
                } else if is_stale {
                    report.problems.push(format!(
                        "ca: no session from the active primary for {}, more than {stale} s; check its watch service and the SSH path to this host",
                        entry.age_seconds.map(|a| format!("{a} s")).unwrap_or_else(|| "ever".into())
                    ));
                }
            }
        }
        report.entries.push(entry);

        // What is applied.
        let applied = ReplicaStatus::load(&state.status_file())?;
        let mut entry = StatusEntry {
            peer: recv.as_ref().and_then(|r| r.last_sender.clone()),
            ..StatusEntry::new("ca", "apply")
        };
        match applied {
            None => report.problems.push(
                "ca: never applied; run `pe_failover apply` or start the pe_failover watch service"
                    .into(),
            ),
            Some(st) => {
                let success = if st.last_run_ok {
                    st.last_run.clone()
                } else {
                    st.applied.as_ref().map(|a| a.at.clone())
                };
                entry.last_success = success.as_ref().map(|s| s.time.clone());
                entry.age_seconds = success.as_ref().map(|s| age(s, now));
                entry.applied_digest = st.applied.as_ref().map(|d| d.digest.clone());
                entry.staged_digest = st.staged.as_ref().map(|d| d.digest.clone());
                entry.digest = entry.applied_digest.clone();
                entry.pending_txns = Some(st.pending_txns);
                entry.outcome = Some(if st.last_run_ok { "applied" } else { "failed" }.into());
                entry.last_error = if st.last_run_ok {
                    None
                } else {
                    st.last_error.clone()
                };
                let behind = entry.applied_digest != entry.staged_digest;
                entry.healthy = st.last_run_ok && !behind;
                if !st.last_run_ok {
                    let err = st.last_error.as_ref();
                    let message = err.map(|e| e.message.as_str()).unwrap_or("failed");
                    let kind_name = err.map(|e| e.kind.as_str()).unwrap_or("io");
                    let next = advice(
                        &Error::new(kind_from_name(kind_name), message),
                        None,
                        &self.config,
                    );
                    report
                        .problems
                        .push(format!("ca: the last apply failed: {message}; {next}"));
                } else if behind {
                    report.problems.push(format!(
                        "ca: staged {} but the live files are at {}; run `pe_failover apply`",
                        entry.staged_digest.as_deref().map(short).unwrap_or("-"),
                        entry
                            .applied_digest
                            .as_deref()
                            .map(short)
                            .unwrap_or("nothing")
                    ));
                }
                if !st.divergence.replica_only_signed.is_empty() {
                    report.warnings.push(format!(
                        "certificates only this host signed (kept): {}",
                        st.divergence.replica_only_signed.join(", ")
                    ));
                }
                report.warnings.extend(st.warnings.iter().cloned());
            }
        }
        report.entries.push(entry);
        self.passive_nc_entry(now, report)
    }

    /// The classifier entry of a passive: from `nc/status.json`, when
    /// `nc.enabled` or when the file exists.
    fn passive_nc_entry(&self, now: &Stamp, report: &mut StatusReport) -> Result<()> {
        let status = crate::ncship::nc_status(&self.config.state_dir)?;
        if !self.config.nc.enabled && status.is_none() {
            return Ok(());
        }
        let stale =
            2 * self.config.watch.verify_interval as i64 + 2 * self.config.nc.interval as i64 + 60;
        let mut entry = StatusEntry::new("nc", "apply");
        match status {
            None => report.problems.push(
                "nc: classifier groups never applied; check that the active primary ships them (nc.enabled there) and run `pe_failover apply`".into(),
            ),
            Some(st) => {
                entry.peer = st.classifier.clone();
                entry.last_success = st.last_success.as_ref().map(|s| s.time.clone());
                entry.age_seconds = st.last_success.as_ref().map(|s| age(s, now));
                entry.applied_digest = st.applied.as_ref().map(|d| d.digest.clone());
                entry.staged_digest = st.staged.as_ref().map(|d| d.digest.clone());
                entry.digest = entry.applied_digest.clone();
                entry.pending_txns = Some(st.pending_txns);
                entry.outcome = Some(if st.last_run_ok { "applied" } else { "failed" }.into());
                entry.last_error = if st.last_run_ok {
                    None
                } else {
                    st.last_error.clone()
                };
                let behind = entry.staged_digest.is_some() && entry.applied_digest != entry.staged_digest;
                let is_stale = entry.age_seconds.is_none_or(|a| a > stale);
                entry.healthy = st.last_run_ok && !behind && !is_stale;
                if !st.last_run_ok {
                    let err = st.last_error.as_ref();
                    let message = err.map(|e| e.message.as_str()).unwrap_or("failed");
                    let kind_name = err.map(|e| e.kind.as_str()).unwrap_or("io");
                    let next = super::nc::nc_advice(
                        &Error::new(kind_from_name(kind_name), message),
                        None,
                        &self.config,
                    );
                    report
                        .problems
                        .push(format!("nc: the last apply failed: {message}; {next}"));
                    if !st.missing_classes.is_empty() {
                        report.problems.push(format!(
                            "nc: classes missing on this host: {}",
                            st.missing_classes.join(", ")
                        ));
                    }
                } else if behind {
                    report.problems.push(format!(
                        "nc: staged groups {} but the classifier holds {}; run `pe_failover apply`",
                        entry.staged_digest.as_deref().map(short).unwrap_or("-"),
                        entry.applied_digest.as_deref().map(short).unwrap_or("nothing")
                    ));
                } else if is_stale {
                    report.problems.push(format!(
                        "nc: no successful classifier apply for more than {stale} s; check the pe_failover watch service"
                    ));
                }
                report.warnings.extend(st.warnings.iter().map(|w| format!("nc: {w}")));
            }
        }
        report.entries.push(entry);
        Ok(())
    }
}

fn outcome_name(o: SyncOutcome) -> String {
    match o {
        SyncOutcome::Committed => "committed",
        SyncOutcome::UpToDate => "up_to_date",
        SyncOutcome::Noop => "noop",
        SyncOutcome::Failed => "failed",
    }
    .into()
}

/// The error, if it happened after the last success.
fn newer_error(err: Option<&ErrorRecord>, success: Option<&Stamp>) -> Option<ErrorRecord> {
    let err = err?;
    match success {
        Some(s) if s.unix >= err.at.unix => None,
        _ => Some(err.clone()),
    }
}
