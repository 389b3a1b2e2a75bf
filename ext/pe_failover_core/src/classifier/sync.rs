//! Replication of node groups: the active side prepares a dump, the passive
//! side applies it.
//!
//! - [`prepare_active`] / [`fetch_active`] (on the active primary): fetch
//!   the groups, rewrite the hostnames, and compute the canonical digest that
//!   says whether anything changed since the last shipment.
//! - [`sync`] (on the passive primary): refuse unsafe dumps, diff against
//!   the live groups, refresh classes and refuse groups whose classes are
//!   missing, and execute the plan in order, or report it (`noop`). Nothing
//!   changed means one read and no other call.
//!
//! A failed call stops the run; the error names the step and the calls
//! already made. Every call leaves the classifier valid (the plan's order
//! guarantees it), so the next run plans from where this one stopped and
//! finishes the job.
//!
//! ```no_run
//! use pe_failover_core::classifier::{self, ClassifierClient, SyncOptions};
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let active = ClassifierClient::builder("https://a.example.com:4433")
//!     .puppet_ssldir("/etc/puppetlabs/puppet/ssl", "a.example.com")
//!     .build()?;
//! let dump = classifier::fetch_active(&active, &[("a.example.com", "b.example.com")])?;
//! // ... shipped to B, where:
//! let passive = ClassifierClient::builder("https://b.example.com:4433")
//!     .puppet_ssldir("/etc/puppetlabs/puppet/ssl", "b.example.com")
//!     .build()?;
//! let report = classifier::sync(&passive, &dump.groups, &SyncOptions::default())?;
//! println!("{} writes", report.counts.writes);
//! # Ok(())
//! # }
//! ```

use serde::Serialize;
use std::collections::{HashMap, HashSet};

use super::client::{ClassCatalog, ClassifierClient, Executed};
use super::diff::{changed_fields, diff, Field, GroupSetDiff};
use super::guard::{check_apply, check_classes, missing_classes, GuardOptions, MissingClass};
use super::model::{canonical_digest, canonical_json, Group};
use super::plan::{import_hierarchy, plan, Operation, OperationKind, Plan};
use super::transform::{transform, TransformReport};
use crate::error::{Error, ErrorKind, Result};

/// What [`sync`] needs from a classifier. [`ClassifierClient`] implements it;
/// tests implement it over an in-memory classifier.
pub trait ClassifierApi {
    /// `<host>:<port>`, for messages.
    fn host(&self) -> &str;
    /// Every group (`GET /v1/groups`).
    fn groups(&self) -> Result<Vec<Group>>;
    /// Refreshes the class catalog (`POST /v1/update-classes`).
    fn update_classes(&self) -> Result<()>;
    /// Class names per environment (`GET /v1/classes`).
    fn class_catalog(&self) -> Result<ClassCatalog>;
    /// Executes one planned call.
    fn execute(&self, op: &Operation) -> Result<Executed>;
}

impl ClassifierApi for ClassifierClient {
    fn host(&self) -> &str {
        ClassifierClient::host(self)
    }
    fn groups(&self) -> Result<Vec<Group>> {
        ClassifierClient::groups(self)
    }
    fn update_classes(&self) -> Result<()> {
        ClassifierClient::update_classes(self, None)
    }
    fn class_catalog(&self) -> Result<ClassCatalog> {
        ClassifierClient::class_catalog(self)
    }
    fn execute(&self, op: &Operation) -> Result<Executed> {
        ClassifierClient::execute(self, op)
    }
}

/// The active primary's groups, ready to ship.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveDump {
    /// The groups with the hostnames rewritten (read-only keys included as
    /// fetched; the canonical form and every write leave them out).
    pub groups: Vec<Group>,
    /// [`canonical_digest`] of `groups`: compare it with the last shipped
    /// digest to decide whether anything changed.
    pub digest: String,
    /// [`canonical_digest`] of the groups before the rewrite.
    pub source_digest: String,
    /// Every rewrite made.
    pub transform: TransformReport,
}

impl ActiveDump {
    /// Whether this dump differs from the one last shipped (`None`: nothing
    /// shipped yet).
    pub fn changed_since(&self, last_digest: Option<&str>) -> bool {
        last_digest != Some(self.digest.as_str())
    }

    /// The canonical JSON of the groups, as shipped.
    pub fn to_json(&self) -> String {
        canonical_json(&self.groups)
    }
}

/// Rewrites `groups` (the active primary's `GET /v1/groups`) with the
/// `(from, to)` hostname `mappings` and digests the result.
pub fn prepare_active<A: AsRef<str>, B: AsRef<str>>(
    groups: &[Group],
    mappings: &[(A, B)],
) -> Result<ActiveDump> {
    let (out, report) = transform(groups, mappings)?;
    Ok(ActiveDump {
        digest: canonical_digest(&out),
        source_digest: canonical_digest(groups),
        groups: out,
        transform: report,
    })
}

/// Fetches the active primary's groups and prepares them; see
/// [`prepare_active`].
pub fn fetch_active<A: AsRef<str>, B: AsRef<str>>(
    active: &dyn ClassifierApi,
    mappings: &[(A, B)],
) -> Result<ActiveDump> {
    prepare_active(&active.groups()?, mappings)
}

/// How [`sync`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// The fewest create/update/delete calls, in dependency order (default).
    #[default]
    Update,
    /// One `POST /v1/import-hierarchy` with the whole set, when anything
    /// differs.
    Replace,
}

/// Options of [`sync`], with documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncOptions {
    /// [`SyncMode::Update`] by default.
    pub mode: SyncMode,
    /// Plan and check, but write nothing (and do not refresh classes).
    pub noop: bool,
    /// The safety guards; `force` also turns missing classes into warnings.
    pub guard: GuardOptions,
    /// Call `update-classes` before checking classes; default true.
    pub refresh_classes: bool,
    /// Refuse groups that use classes the passive lacks; default true.
    pub check_classes: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            mode: SyncMode::Update,
            noop: false,
            guard: GuardOptions::default(),
            refresh_classes: true,
            check_classes: true,
        }
    }
}

/// A group named in a diff summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupRef {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A changed group in a diff summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangedGroup {
    /// Its id.
    pub id: String,
    /// Its (desired) name.
    pub name: String,
    /// What differs.
    pub fields: Vec<Field>,
}

/// An owned summary of a [`GroupSetDiff`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// Groups to create.
    pub added: Vec<GroupRef>,
    /// Groups to delete.
    pub removed: Vec<GroupRef>,
    /// Groups to update.
    pub changed: Vec<ChangedGroup>,
    /// Groups already equal.
    pub unchanged: usize,
}

impl DiffSummary {
    /// Summarises `diff`.
    pub fn of(diff: &GroupSetDiff<'_>) -> DiffSummary {
        let r = |g: &&Group| GroupRef {
            id: g.id.clone(),
            name: g.name.clone(),
        };
        DiffSummary {
            added: diff.added().iter().map(r).collect(),
            removed: diff.removed().iter().map(r).collect(),
            changed: diff
                .changed()
                .iter()
                .map(|c| ChangedGroup {
                    id: c.desired.id.clone(),
                    name: c.desired.name.clone(),
                    fields: c.fields.clone(),
                })
                .collect(),
            unchanged: diff.unchanged(),
        }
    }

    /// Whether the two sets were equal.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// One call made by [`sync`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExecutedOperation {
    /// Its position in the plan, from 1.
    pub step: usize,
    /// What it did.
    pub kind: OperationKind,
    /// The HTTP method.
    pub method: &'static str,
    /// The path.
    pub path: String,
    /// The group concerned.
    pub group_id: Option<String>,
    /// Its name.
    pub group_name: Option<String>,
    /// The classifier's answer.
    #[serde(flatten)]
    pub result: Executed,
}

/// How many calls of each kind a sync made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncCounts {
    /// Groups created.
    pub created: usize,
    /// Update calls (temporary renames included).
    pub updated: usize,
    /// Groups deleted.
    pub deleted: usize,
    /// import-hierarchy calls.
    pub imported: usize,
    /// Every write call.
    pub writes: usize,
}

/// What [`sync`] did (or, with `noop`, would do).
#[derive(Clone, Debug, Serialize)]
#[must_use]
pub struct SyncReport {
    /// The passive classifier, `<host>:<port>`.
    pub host: String,
    /// The mode used.
    pub mode: SyncMode,
    /// Whether nothing was written on purpose.
    pub noop: bool,
    /// [`canonical_digest`] of the desired groups.
    pub desired_digest: String,
    /// [`canonical_digest`] of the passive's groups before the run.
    pub before_digest: String,
    /// [`canonical_digest`] of the passive's groups after the run (read back
    /// after writes; equal to `before_digest` otherwise).
    pub after_digest: String,
    /// Desired groups against the passive's, before the run.
    pub diff: DiffSummary,
    /// The planned calls (with `noop`, what a real run would call).
    pub plan: Plan,
    /// The calls made, in order, with their answers.
    pub executed: Vec<ExecutedOperation>,
    /// Counts of `executed`.
    pub counts: SyncCounts,
    /// Overridden guards (with `force`), differences no call can fix (the
    /// root group's rule), and any difference left after the run.
    pub warnings: Vec<String>,
    /// Classes the passive lacks, reported when `force` let the run go on.
    pub missing_classes: Vec<MissingClass>,
    /// Whether the passive now holds the desired groups (with `noop`:
    /// whether it already did).
    pub in_sync: bool,
}

/// One step of a running [`sync`], for progress output.
#[derive(Debug)]
pub struct Step<'a> {
    /// Position in the plan, from 1.
    pub step: usize,
    /// Number of calls in the plan.
    pub total: usize,
    /// The call.
    pub operation: &'a Operation,
    /// Its outcome.
    pub result: std::result::Result<&'a Executed, &'a Error>,
}

/// Makes the passive's groups equal to `desired` (the active primary's
/// dump, already transformed); see the module documentation.
///
/// In order: a promoted passive is refused ([`ErrorKind::Fenced`]); the
/// live groups are fetched and diffed; [`check_apply`] refuses an empty or
/// rootless dump and too many deletes; when anything is to be written,
/// `update-classes` is called (unless `noop` or `refresh_classes` is off)
/// and the classes the writes need are checked against the passive's
/// catalog (refused with advice, or warnings with `force`); the plan is
/// executed in order and the result read back. An unchanged passive is
/// only read: one `GET /v1/groups`.
pub fn sync(
    passive: &dyn ClassifierApi,
    desired: &[Group],
    options: &SyncOptions,
) -> Result<SyncReport> {
    sync_with_progress(passive, desired, options, &mut |_| {})
}

/// [`sync`], calling `progress` after every executed call (successful or
/// not).
pub fn sync_with_progress(
    passive: &dyn ClassifierApi,
    desired: &[Group],
    options: &SyncOptions,
    progress: &mut dyn FnMut(&Step<'_>),
) -> Result<SyncReport> {
    let host = passive.host().to_owned();
    let with_host = |e: Error| {
        if e.host().is_some() {
            e
        } else {
            e.with_host(host.clone())
        }
    };
    if options.guard.passive_promoted {
        // check_apply refuses a promoted passive before looking at the diff.
        check_apply(&diff(&[], &[])?, &options.guard).map_err(with_host)?;
    }
    let current = passive.groups()?;
    let d = diff(desired, &current).map_err(with_host)?;
    let mut warnings = check_apply(&d, &options.guard).map_err(with_host)?;
    let summary = DiffSummary::of(&d);
    let planned = match options.mode {
        SyncMode::Update => plan(&d)?,
        SyncMode::Replace if d.is_empty() => Plan::default(),
        SyncMode::Replace => Plan {
            operations: vec![import_hierarchy(desired)?],
            warnings: Vec::new(),
        },
    };
    warnings.extend(planned.warnings.iter().cloned());
    let before_digest = canonical_digest(&current);
    let mut report = SyncReport {
        host: host.clone(),
        mode: options.mode,
        noop: options.noop,
        desired_digest: canonical_digest(desired),
        after_digest: before_digest.clone(),
        before_digest,
        in_sync: planned.is_empty(),
        diff: summary,
        plan: planned,
        executed: Vec::new(),
        counts: SyncCounts::default(),
        warnings,
        missing_classes: Vec::new(),
    };
    if report.plan.is_empty() {
        return Ok(report);
    }

    // Classes matter only to writes: an unchanged passive is only read.
    if options.refresh_classes && !options.noop {
        passive.update_classes()?;
    }
    if options.check_classes {
        let catalog = passive.class_catalog()?;
        let missing = needed_missing_classes(&d, options.mode, &catalog);
        if !missing.is_empty() {
            if options.guard.force {
                report.warnings.push(
                    check_classes(&missing)
                        .err()
                        .map_or_else(String::new, |e| format!("forced: {e}")),
                );
                report.missing_classes = missing;
            } else {
                return Err(with_host(check_classes(&missing).err().unwrap_or_else(
                    || Error::new(ErrorKind::Internal, "missing classes reported no error"),
                )));
            }
        }
    }
    if options.noop {
        return Ok(report);
    }

    let total = report.plan.operations.len();
    for (i, op) in report.plan.operations.iter().enumerate() {
        let step = i + 1;
        match passive.execute(op) {
            Ok(result) => {
                progress(&Step {
                    step,
                    total,
                    operation: op,
                    result: Ok(&result),
                });
                count(&mut report.counts, op.kind);
                report.executed.push(ExecutedOperation {
                    step,
                    kind: op.kind,
                    method: op.method,
                    path: op.path.clone(),
                    group_id: op.group_id.clone(),
                    group_name: op.group_name.clone(),
                    result,
                });
            }
            Err(err) => {
                progress(&Step {
                    step,
                    total,
                    operation: op,
                    result: Err(&err),
                });
                return Err(step_error(&host, step, total, op, err));
            }
        }
    }

    let after = passive.groups()?;
    report.after_digest = canonical_digest(&after);
    let left = diff(desired, &after)?;
    let residual = plan(&left)
        .map(|p| p.operations.len())
        .unwrap_or(usize::MAX);
    report.in_sync = residual == 0;
    if !report.in_sync {
        let s = DiffSummary::of(&left);
        report.warnings.push(format!(
            "the passive still differs after the run: {} to create, {} to update, {} to \
             delete; the next run will try again",
            s.added.len(),
            s.changed.len(),
            s.removed.len()
        ));
    }
    Ok(report)
}

fn count(counts: &mut SyncCounts, kind: OperationKind) {
    match kind {
        OperationKind::Create => counts.created += 1,
        OperationKind::Update => counts.updated += 1,
        OperationKind::Delete => counts.deleted += 1,
        OperationKind::ImportHierarchy => counts.imported += 1,
    }
    counts.writes += 1;
}

/// The error of a failed step: its cause, with which step failed and how
/// many were made before it.
fn step_error(host: &str, step: usize, total: usize, op: &Operation, cause: Error) -> Error {
    let what = match (&op.group_name, op.kind) {
        (Some(name), OperationKind::Create) => format!("create group {name:?}"),
        (Some(name), OperationKind::Update) => format!("update group {name:?}"),
        (Some(name), OperationKind::Delete) => format!("delete group {name:?}"),
        _ => "import the hierarchy".to_owned(),
    };
    let done = step - 1;
    let hint = match cause.hint() {
        Some(h) => format!("{h}; then run again: the next run continues from the passive's state"),
        None => "fix the cause and run again: the next run continues from the passive's state"
            .to_owned(),
    };
    // most causes already name the request
    let request = if cause.message().contains(&op.path) {
        String::new()
    } else {
        format!(": {} {}", op.method, op.path)
    };
    let mut err = Error::new(
        cause.kind(),
        format!(
            "step {step} of {total} ({what}{request}) failed: {}; {done} earlier step(s) \
             were applied, {} not attempted",
            cause.message(),
            total - step
        ),
    )
    .with_host(cause.host().unwrap_or(host).to_owned())
    .with_hint(hint);
    if let Some(path) = cause.path() {
        err = err.with_path(path);
    }
    err
}

/// The missing classes that the writes of this run would trip over.
///
/// A create is checked with everything it inherits; an update only for
/// classes the group itself newly declares (the classifier tolerates
/// references that were already dangling, nc-api §3.5). In replace mode
/// every group is written, so every missing class counts.
fn needed_missing_classes(
    d: &GroupSetDiff<'_>,
    mode: SyncMode,
    catalog: &ClassCatalog,
) -> Vec<MissingClass> {
    let desired: Vec<Group> = d.desired().iter().map(|g| (*g).clone()).collect();
    let all = missing_classes(&desired, catalog);
    if mode == SyncMode::Replace {
        return all;
    }
    let added: HashSet<&str> = d.added().iter().map(|g| g.id.as_str()).collect();
    let changed: HashMap<&str, (&Group, &Group)> = d
        .changed()
        .iter()
        .map(|c| (c.desired.id.as_str(), (c.desired, c.current)))
        .collect();
    all.into_iter()
        .filter(|m| {
            if added.contains(m.group_id.as_str()) {
                return true;
            }
            match changed.get(m.group_id.as_str()) {
                Some((want, now)) => {
                    m.defined_by == want.name
                        && !now.classes.contains_key(&m.class)
                        && changed_fields(want, now).contains(&Field::Classes)
                }
                None => false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::model::{groups_from_value, ROOT_GROUP_ID};
    use crate::classifier::simulator::Simulator;
    use serde_json::{json, Value};
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// An in-memory passive: the plan simulator behind the sync API.
    struct Fake {
        sim: RefCell<Simulator>,
        catalog: ClassCatalog,
        fail_at: Cell<Option<usize>>,
        calls: Cell<usize>,
        refreshed: Cell<usize>,
    }

    impl Fake {
        fn new(groups: &[Group]) -> Fake {
            let mut classes = BTreeSet::new();
            classes.insert("c1".to_owned());
            classes.insert("c2".to_owned());
            Fake {
                sim: RefCell::new(Simulator::new(groups)),
                catalog: ClassCatalog::from([("production".to_owned(), classes)]),
                fail_at: Cell::new(None),
                calls: Cell::new(0),
                refreshed: Cell::new(0),
            }
        }
        fn writes(&self) -> usize {
            self.sim.borrow().writes
        }
    }

    impl ClassifierApi for Fake {
        fn host(&self) -> &str {
            "fake:4433"
        }
        fn groups(&self) -> Result<Vec<Group>> {
            Ok(self.sim.borrow().groups())
        }
        fn update_classes(&self) -> Result<()> {
            self.refreshed.set(self.refreshed.get() + 1);
            Ok(())
        }
        fn class_catalog(&self) -> Result<ClassCatalog> {
            Ok(self.catalog.clone())
        }
        fn execute(&self, op: &Operation) -> Result<Executed> {
            let n = self.calls.get() + 1;
            self.calls.set(n);
            if self.fail_at.get() == Some(n) {
                return Err(Error::new(
                    ErrorKind::Api,
                    "POST x failed: 500 application-error",
                ));
            }
            self.sim
                .borrow_mut()
                .apply(op)
                .map_err(|e| Error::new(ErrorKind::Api, e))?;
            Ok(Executed {
                status: 200,
                group_id: op.group_id.clone(),
                attempts: 1,
                elapsed: Duration::ZERO,
            })
        }
    }

    fn id(n: u64) -> String {
        if n == 0 {
            ROOT_GROUP_ID.to_owned()
        } else {
            format!("{n:08x}-0000-4000-8000-{n:012x}")
        }
    }

    fn g(n: u64, p: u64, name: &str, classes: Value) -> Value {
        json!({"id": id(n), "parent": id(p), "name": name, "environment": "production",
               "environment_trumps": false, "classes": classes, "variables": {}})
    }

    fn set(values: Vec<Value>) -> Vec<Group> {
        groups_from_value(&Value::Array(values)).unwrap()
    }

    fn tree(n: u64) -> Vec<Group> {
        let mut v = vec![g(0, 0, "All Nodes", json!({}))];
        v.extend((1..n).map(|i| g(i, 0, &format!("g{i}"), json!({"c1": {"p": i}}))));
        set(v)
    }

    #[test]
    fn converges_then_writes_nothing() {
        let desired = tree(12);
        let fake = Fake::new(&tree(11));
        let mut changed = desired.clone();
        changed[3].classes.insert("c2".into(), Default::default());
        let report = sync(&fake, &changed, &SyncOptions::default()).unwrap();
        assert_eq!(report.counts.created, 1);
        assert_eq!(report.counts.updated, 1);
        assert_eq!(report.counts.writes, 2);
        assert!(report.in_sync);
        assert_eq!(report.after_digest, report.desired_digest);
        assert_eq!(fake.refreshed.get(), 1);
        let again = sync(&fake, &changed, &SyncOptions::default()).unwrap();
        assert_eq!(again.counts.writes, 0);
        assert!(again.plan.is_empty());
        assert_eq!(fake.writes(), 2);
        assert_eq!(
            fake.refreshed.get(),
            1,
            "nothing to write: classes not refreshed"
        );
    }

    #[test]
    fn noop_plans_without_writing_or_refreshing() {
        let fake = Fake::new(&tree(11));
        let opts = SyncOptions {
            noop: true,
            ..SyncOptions::default()
        };
        let report = sync(&fake, &tree(12), &opts).unwrap();
        assert_eq!(report.plan.operations.len(), 1);
        assert!(report.executed.is_empty());
        assert!(!report.in_sync);
        assert_eq!(fake.writes(), 0);
        assert_eq!(fake.refreshed.get(), 0);
    }

    #[test]
    fn guards_refuse_before_any_write() {
        let fake = Fake::new(&tree(12));
        let err = sync(&fake, &[], &SyncOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert_eq!(err.host(), Some("fake:4433"));
        let promoted = SyncOptions {
            guard: GuardOptions {
                passive_promoted: true,
                force: true,
                ..GuardOptions::default()
            },
            ..SyncOptions::default()
        };
        let err = sync(&fake, &tree(12), &promoted).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fenced);
        assert_eq!(fake.refreshed.get(), 0, "refused before update-classes");
        assert_eq!(fake.writes(), 0);
    }

    #[test]
    fn missing_classes_are_refused_with_advice_or_forced() {
        let fake = Fake::new(&tree(3));
        let mut desired = tree(3);
        desired[1]
            .classes
            .insert("absent::klass".into(), Default::default());
        let err = sync(&fake, &desired, &SyncOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        let msg = err.to_string();
        assert!(msg.contains("\"absent::klass\""), "{msg}");
        assert!(msg.contains("\"g1\""), "{msg}");
        assert!(msg.contains("update-classes"), "{msg}");
        let forced = SyncOptions {
            guard: GuardOptions {
                force: true,
                ..GuardOptions::default()
            },
            ..SyncOptions::default()
        };
        let report = sync(&fake, &desired, &forced).unwrap();
        assert_eq!(report.missing_classes.len(), 1);
        assert_eq!(report.counts.writes, 1);
    }

    #[test]
    fn dangling_references_already_there_do_not_block_updates() {
        let mut current = tree(3);
        current[1].classes.insert("gone".into(), Default::default());
        let fake = Fake::new(&current);
        let mut desired = current.clone();
        desired[1].variables.insert("v".into(), json!(1));
        let report = sync(&fake, &desired, &SyncOptions::default()).unwrap();
        assert_eq!(report.counts.updated, 1);
    }

    #[test]
    fn a_failed_step_is_named_and_the_next_run_finishes() {
        let fake = Fake::new(&tree(2));
        let desired = tree(6);
        fake.fail_at.set(Some(3));
        let mut seen = Vec::new();
        let err = sync_with_progress(
            &fake,
            &desired,
            &SyncOptions {
                guard: GuardOptions {
                    max_delete_share: 1.0,
                    ..GuardOptions::default()
                },
                ..SyncOptions::default()
            },
            &mut |s| seen.push((s.step, s.result.is_ok())),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("step 3 of 4"), "{msg}");
        assert!(
            msg.contains("2 earlier step(s) were applied, 1 not attempted"),
            "{msg}"
        );
        assert!(msg.contains("run again"), "{msg}");
        assert_eq!(seen, vec![(1, true), (2, true), (3, false)]);
        let report = sync(&fake, &desired, &SyncOptions::default()).unwrap();
        assert_eq!(report.counts.created, 2);
        assert!(report.in_sync);
    }

    #[test]
    fn replace_mode_imports_once_and_only_when_needed() {
        let fake = Fake::new(&tree(11));
        let opts = SyncOptions {
            mode: SyncMode::Replace,
            ..SyncOptions::default()
        };
        let report = sync(&fake, &tree(12), &opts).unwrap();
        assert_eq!(report.counts.imported, 1);
        assert_eq!(report.counts.writes, 1);
        assert!(report.in_sync);
        let again = sync(&fake, &tree(12), &opts).unwrap();
        assert_eq!(again.counts.writes, 0);
    }

    #[test]
    fn active_dump_digest_decides_whether_to_ship() {
        let groups = set(vec![
            g(0, 0, "All Nodes", json!({})),
            g(1, 0, "PE Master", json!({"c1": {"host": "a.example.com"}})),
        ]);
        let dump = prepare_active(&groups, &[("a.example.com", "b.example.com")]).unwrap();
        assert_eq!(dump.transform.rewrites.len(), 1);
        assert_ne!(dump.digest, dump.source_digest);
        assert!(dump.changed_since(None));
        assert!(!dump.changed_since(Some(&dump.digest)));
        let again = prepare_active(&groups, &[("a.example.com", "b.example.com")]).unwrap();
        assert_eq!(again.digest, dump.digest);
        assert!(dump.to_json().contains("b.example.com"));
    }
}
