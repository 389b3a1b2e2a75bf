//! Node Classifier replication: group models, hostname transform, diff, plan,
//! the HTTPS client and the sync that ties them together.
//!
//! The models, transform, diff, plan and guards are pure functions over
//! values; [`ClassifierClient`] does the HTTP, and [`sync()`] (passive side)
//! and [`fetch_active`] (active side) use both. The pure pieces, in the order
//! the replication uses them:
//!
//! 1. [`parse_dump`] reads a `GET /classifier-api/v1/groups` response into
//!    [`Group`]s, strictly (closed schema, clear errors).
//! 2. [`canonical_digest`] says whether the active primary's groups changed
//!    since the last run.
//! 3. [`transform()`] rewrites the active primary's hostname to the passive's
//!    wherever it is used as a host, and reports each rewrite.
//! 4. [`diff()`] compares the desired groups with the passive's live groups.
//! 5. [`check_apply`] and [`missing_classes`] refuse unsafe applies.
//! 6. [`plan()`] lists the create/update/delete calls, in an order the
//!    classifier accepts; [`import_hierarchy`] is the one-call alternative.
//!
//! ```
//! use pe_failover_core::classifier::{self, GuardOptions};
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let root = r#"{"id":"00000000-0000-4000-8000-000000000000",
//!     "parent":"00000000-0000-4000-8000-000000000000","name":"All Nodes",
//!     "environment":"production","environment_trumps":false,
//!     "rule":["and",["~","name",".*"]],"classes":{},"variables":{}}"#;
//! let master = r#"{"id":"e1ee1064-ef43-4000-9984-f413a2105eb9",
//!     "parent":"00000000-0000-4000-8000-000000000000","name":"PE Master",
//!     "environment":"production","environment_trumps":false,
//!     "rule":["or",["=","name","master1.puppet.vm"]],
//!     "classes":{"puppet_enterprise::profile::master":{}},"variables":{}}"#;
//! let active = classifier::parse_dump(&format!("[{root},{master}]"))?;
//! let passive = classifier::parse_dump(&format!("[{root}]"))?;
//!
//! let (desired, report) =
//!     classifier::transform(&active, &[("master1.puppet.vm", "master2.puppet.vm")])?;
//! assert_eq!(report.rewrites[0].location, "rule[1][2]");
//!
//! let diff = classifier::diff(&desired, &passive)?;
//! classifier::check_apply(&diff, &GuardOptions { max_delete_share: 0.5, ..Default::default() })?;
//! let plan = classifier::plan(&diff)?;
//! assert_eq!(plan.operations.len(), 1);
//! assert_eq!(plan.operations[0].method, "PUT"); // create, keeping the id
//! assert_eq!(
//!     plan.operations[0].path,
//!     "/classifier-api/v1/groups/e1ee1064-ef43-4000-9984-f413a2105eb9"
//! );
//! // applied, the passive equals the desired set: the next plan is empty
//! let again = classifier::diff(&desired, &desired)?;
//! assert!(classifier::plan(&again)?.is_empty());
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod diff;
pub mod guard;
pub mod manage;
pub mod model;
pub mod plan;
#[cfg(test)]
mod simulator;
pub mod sync;
mod tls;
pub mod transform;

pub use client::{
    ClassCatalog, ClassInfo, ClassifierClient, ClassifierClientBuilder, Executed, RetryPolicy,
    ServiceStatus, ALLOWLIST_PATH, DEFAULT_PORT,
};
pub use manage::{
    delete_group, find_by_name, upsert_group, GroupSpec, ManageOutcome, UpsertAction,
};
pub use sync::{
    fetch_active, prepare_active, sync, sync_with_progress, ActiveDump, ChangedGroup,
    ClassifierApi, DiffSummary, ExecutedOperation, GroupRef, Step, SyncCounts, SyncMode,
    SyncOptions, SyncReport,
};

pub use diff::{changed_fields, diff, equivalent, Field, GroupChange, GroupSetDiff};
pub use guard::{
    check_apply, check_classes, missing_classes, GuardOptions, MissingClass,
    DEFAULT_MAX_DELETE_SHARE, MISSING_CLASSES_ADVICE,
};
pub use model::{
    canonical_digest, canonical_json, groups_from_value, is_valid_group_id, parse_dump,
    parse_group, validate_hierarchy, writable_set, ClassMap, Group, Params, Variables,
    ROOT_GROUP_ID,
};
pub use plan::{
    delete_operation, group_body, import_hierarchy, plan, update_operation, Operation,
    OperationKind, Plan, GROUPS_PATH, IMPORT_HIERARCHY_PATH,
};
pub use transform::{
    transform, transform_in_place, transform_with, HostMap, Rewrite, TransformReport,
};
