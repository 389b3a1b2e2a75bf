//! The Node Classifier part of the commands: `sync` prepares the dump of
//! this host's groups and ships it to each replica over its own SSH session
//! (after the CA); `apply` brings the passive's classifier to the latest
//! dump received (after the CA). A classifier failure never stops the CA,
//! and a CA failure never stops the classifier.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{advice, replica_key, short, Runner};
use crate::config::{Config, ReplicaConfig};
use crate::log::Status;
use crate::ncship::{self, NcApplier, NcApplyReport, NcOutbox, NcPrepared};
use crate::protocol::{Sender, SyncReport};
use crate::state::{ErrorRecord, SyncOutcome};
use crate::{Error, ErrorKind, Result};

/// One replica's part of an [`NcSyncRun`].
#[derive(Clone, Debug, Serialize)]
pub struct NcReplicaSync {
    /// The replica's host, as configured.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// Whether it holds (or, in noop, was compared with) the current dump.
    pub ok: bool,
    /// `committed`, `up_to_date`, `noop`, `fenced`, `failed` or `skipped`.
    pub outcome: String,
    /// The manifest digest the replica held before.
    pub base: Option<String>,
    /// The manifest digest shipped.
    pub digest: Option<String>,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
    /// The error, when it failed.
    pub error: Option<ErrorRecord>,
    /// What to do about the error.
    pub advice: Option<String>,
}

/// The `nc` section of a [`SyncRun`](super::SyncRun).
#[derive(Clone, Debug, Serialize)]
pub struct NcSyncRun {
    /// Whether the dump was prepared and every replica holds it.
    pub ok: bool,
    /// Noop mode: nothing written, nothing shipped.
    pub noop: bool,
    /// What the preparation of the dump did (none: it failed).
    pub prepared: Option<NcPrepared>,
    /// Why the dump could not be prepared.
    pub error: Option<ErrorRecord>,
    /// What to do about it.
    pub advice: Option<String>,
    /// Per replica.
    pub replicas: Vec<NcReplicaSync>,
    /// Summary lines, as logged.
    pub lines: Vec<String>,
}

/// The `nc` section of an [`ApplyRun`](super::ApplyRun).
#[derive(Clone, Debug, Serialize)]
pub struct NcApplyRun {
    /// Whether the classifier holds the latest dump received.
    pub ok: bool,
    /// Summary lines, as logged.
    pub lines: Vec<String>,
    /// The applier's report (none: it failed; see the NC status file).
    pub report: Option<NcApplyReport>,
    /// The error, when it failed.
    pub error: Option<ErrorRecord>,
    /// What to do about it.
    pub advice: Option<String>,
}

/// A scratch directory removed when dropped (the outbox of a noop sync).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "pe_failover-nc-noop-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create a scratch directory", &dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What to do about a classifier error (the CA advice, plus classifier
/// specifics).
pub(crate) fn nc_advice(err: &Error, replica: Option<&ReplicaConfig>, config: &Config) -> String {
    match err.kind() {
        ErrorKind::InvalidInput if !config.nc.enabled => {
            "set nc.enabled (class parameter nc_enabled) to replicate classifier groups".into()
        }
        ErrorKind::Refused | ErrorKind::Fenced | ErrorKind::Cancelled | ErrorKind::PermissionDenied => {
            advice(err, replica, config)
        }
        _ if replica.is_none() => format!(
            "check that the console services (classifier at {}) run on this host and that nc.cert, nc.key and nc.cacert are right; the CA is replicated regardless, and the watcher tries again in {} s",
            config.nc_server(),
            config.nc.interval
        ),
        _ => advice(err, replica, config),
    }
}

impl Runner {
    /// Whether `sync` ships classifier groups: `nc` when given, else the
    /// configuration's `nc.enabled`.
    pub(crate) fn nc_wanted(&self, nc: Option<bool>) -> bool {
        nc.unwrap_or(self.config.nc.enabled)
    }

    /// The configuration with `nc.enabled` forced on (for `sync --nc`).
    fn nc_config(&self) -> Config {
        let mut c = self.config.clone();
        c.nc.enabled = true;
        c
    }

    /// Prepares this host's dump and ships it to `replicas` (each over its
    /// own SSH session). With `only_changed`, replicas are contacted only
    /// when the dump changed or when they are in `retry` (the watcher).
    /// In noop mode the dump is compared, not written or shipped.
    pub(crate) fn sync_nc(
        &self,
        replicas: &[ReplicaConfig],
        noop: bool,
        only_changed: bool,
        retry: &[String],
    ) -> NcSyncRun {
        let mut run = NcSyncRun {
            ok: true,
            noop,
            prepared: None,
            error: None,
            advice: None,
            replicas: Vec::new(),
            lines: Vec::new(),
        };
        let config = self.nc_config();
        // Noop: prepare into a scratch outbox so nothing of the state changes.
        let scratch = if noop {
            match Scratch::new() {
                Ok(d) => Some(d),
                Err(e) => return self.nc_prepare_failed(run, &e),
            }
        } else {
            None
        };
        let outbox = match &scratch {
            Some(d) => NcOutbox::new(&d.0),
            None => NcOutbox::in_state_dir(&config.state_dir),
        };
        let prepared = ncship::nc_client(&config).and_then(|client| {
            ncship::nc_prepare_with(&client, &ncship::nc_hostnames(&config), &outbox)
        });
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return self.nc_prepare_failed(run, &e),
        };
        for w in &prepared.warnings {
            run.lines.push(self.log("nc", Status::Warning, w));
        }
        let changed = prepared.changed;
        if !noop && changed {
            run.lines.push(self.log(
                "nc",
                Status::Success,
                &format!(
                    "classifier groups changed: dump {} written ({} groups, {} host names rewritten)",
                    short(&prepared.digest),
                    prepared.groups,
                    prepared.rewrites
                ),
            ));
        }
        run.prepared = Some(prepared);
        for r in replicas {
            if self.cancel.is_cancelled() {
                break;
            }
            let key = replica_key(r);
            if only_changed && !changed && !retry.contains(&key) {
                continue;
            }
            let started = Instant::now();
            let result = self.sync_nc_one(&outbox, r, noop);
            let item = self.nc_replica_result(r, result, started.elapsed());
            run.ok &= item.ok;
            run.lines.push(self.log_nc_replica(&item, noop));
            run.replicas.push(item);
        }
        drop(scratch);
        run
    }

    fn nc_prepare_failed(&self, mut run: NcSyncRun, e: &Error) -> NcSyncRun {
        let next = nc_advice(e, None, &self.config);
        let msg = format!(
            "cannot read this host's classifier groups, no groups were shipped (the CA is not affected): {e}; {next}"
        );
        let line = if run.noop {
            crate::log::format_line("nc", Status::Failure, &msg)
        } else {
            self.log("nc", Status::Failure, &msg)
        };
        run.ok = false;
        run.error = Some(ErrorRecord::from_error(e));
        run.advice = Some(next);
        run.lines.push(line);
        run
    }

    fn sync_nc_one(&self, outbox: &NcOutbox, r: &ReplicaConfig, noop: bool) -> Result<SyncReport> {
        self.ship(r, noop, "nc", None, |channel, _| {
            Sender::nc(outbox.clone(), replica_key(r), &self.config.state_dir)
                .sender_host(self.config.certname.clone())
                .noop(noop)
                .cancel_token(self.cancel.clone())
                .sync(channel)
        })
    }

    fn nc_replica_result(
        &self,
        r: &ReplicaConfig,
        result: Result<SyncReport>,
        elapsed: Duration,
    ) -> NcReplicaSync {
        let mut item = NcReplicaSync {
            host: r.host.clone(),
            port: r.port,
            ok: false,
            outcome: "failed".into(),
            base: None,
            digest: None,
            bytes_sent: 0,
            elapsed_ms: elapsed.as_millis() as u64,
            error: None,
            advice: None,
        };
        match result {
            Ok(rep) => {
                item.ok = true;
                item.outcome = match rep.outcome {
                    SyncOutcome::Committed => "committed",
                    SyncOutcome::Noop => "noop",
                    _ => "up_to_date",
                }
                .into();
                item.base = rep.base;
                item.digest = Some(rep.digest);
                item.bytes_sent = rep.stats.bytes_sent;
            }
            Err(e) => {
                if e.kind() == ErrorKind::Fenced {
                    item.outcome = "fenced".into();
                }
                item.advice = Some(nc_advice(&e, Some(r), &self.config));
                item.error = Some(ErrorRecord::from_error(&e));
            }
        }
        item
    }

    fn log_nc_replica(&self, item: &NcReplicaSync, noop: bool) -> String {
        let label = if item.port == crate::ssh::DEFAULT_PORT {
            item.host.clone()
        } else {
            format!("{}:{}", item.host, item.port)
        };
        let digest = item.digest.as_deref().map(short).unwrap_or("-");
        match item.outcome.as_str() {
            "committed" => self.log(
                "sync",
                Status::Success,
                &format!(
                    "nc to {label}: committed {digest} ({} bytes sent in {} ms); {label} applies the groups next",
                    item.bytes_sent, item.elapsed_ms
                ),
            ),
            "up_to_date" => self.log(
                "sync",
                Status::Success,
                &format!("nc to {label}: already up to date at {digest}"),
            ),
            "noop" => crate::log::format_line(
                "sync",
                Status::Success,
                &format!(
                    "nc to {label} (noop): {}",
                    if item.base.as_deref() == item.digest.as_deref() {
                        "nothing would change".to_string()
                    } else {
                        format!("would ship groups {digest}")
                    }
                ),
            ),
            _ => {
                let err = item
                    .error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or("failed");
                let msg = format!(
                    "nc to {label} failed (the CA is not affected): {err}; {}",
                    item.advice.as_deref().unwrap_or("")
                );
                if noop {
                    crate::log::format_line("sync", Status::Failure, &msg)
                } else {
                    self.log("sync", Status::Failure, &msg)
                }
            }
        }
    }

    /// Brings this host's classifier to the latest dump received (the
    /// passive's part of `apply` when `nc.enabled`). Never fails: the
    /// outcome is in the returned run and the NC status file.
    pub fn apply_nc(&self, force: bool, noop: bool, replace: Option<bool>) -> NcApplyRun {
        let config = &self.config;
        let result = ncship::nc_client(config).and_then(|client| {
            let mut applier = NcApplier::from_config(config)
                .force(force)
                .noop(noop)
                .cancel_token(self.cancel.clone());
            if let Some(replace) = replace {
                applier = applier.replace(replace);
            }
            applier.run(&client)
        });
        match result {
            Ok(report) => {
                let line = self.log_nc_apply(&report, noop);
                NcApplyRun {
                    ok: true,
                    lines: vec![line],
                    report: Some(report),
                    error: None,
                    advice: None,
                }
            }
            Err(e) => {
                let mut next = nc_advice(&e, None, config);
                if e.kind() == ErrorKind::Refused {
                    next.push_str(&format!(
                        "; details in {}",
                        crate::state::nc_status_path(&config.state_dir).display()
                    ));
                }
                let msg =
                    format!("classifier groups not applied (the CA is not affected): {e}; {next}");
                let line = if noop {
                    crate::log::format_line("apply", Status::Failure, &msg)
                } else {
                    self.log("apply", Status::Failure, &msg)
                };
                NcApplyRun {
                    ok: false,
                    lines: vec![line],
                    report: None,
                    error: Some(ErrorRecord::from_error(&e)),
                    advice: Some(next),
                }
            }
        }
    }

    fn log_nc_apply(&self, r: &NcApplyReport, noop: bool) -> String {
        let Some(dump) = &r.dump else {
            let msg = "nc: no classifier groups received yet; the active primary ships them on its next sync";
            return self.log("apply", Status::Warning, msg);
        };
        let digest = short(&dump.digest);
        let mut msg = match &r.sync {
            Some(s) if noop => {
                if s.in_sync {
                    format!("nc (noop): classifier already holds groups {digest}")
                } else {
                    format!(
                        "nc (noop): classifier differs from groups {digest}: {} planned calls",
                        s.plan.operations.len()
                    )
                }
            }
            Some(s) if s.counts.writes == 0 => {
                format!("nc: classifier already holds groups {digest} ({} groups)", dump.groups)
            }
            Some(s) => format!(
                "nc: classifier brought to groups {digest}: {} created, {} updated, {} deleted, {} imported",
                s.counts.created, s.counts.updated, s.counts.deleted, s.counts.imported
            ),
            None => format!("nc: groups {digest} staged"),
        };
        let mut warnings = r.warnings.clone();
        if !r.missing_classes.is_empty() {
            warnings.push(format!(
                "{} classes missing on this host",
                r.missing_classes.len()
            ));
        }
        if warnings.is_empty() {
            if noop {
                crate::log::format_line("apply", Status::Success, &msg)
            } else {
                self.log("apply", Status::Success, &msg)
            }
        } else {
            msg.push_str("; ");
            msg.push_str(&warnings.join("; "));
            if noop {
                crate::log::format_line("apply", Status::Warning, &msg)
            } else {
                self.log("apply", Status::Warning, &msg)
            }
        }
    }
}
