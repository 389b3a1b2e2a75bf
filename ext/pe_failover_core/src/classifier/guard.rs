//! Safety guards before the desired groups are written to the passive.
//!
//! [`check_apply`] refuses dumps that look broken (no root group, empty),
//! plans that would delete too much of the passive, and any write to a
//! passive that has been promoted. [`missing_classes`] reports classes that
//! the passive's class catalog does not have, which would make creates fail
//! with `missing-referents` (nc-api §7.4).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use super::diff::GroupSetDiff;
use super::model::{Group, ROOT_GROUP_ID};
use crate::error::{Error, ErrorKind, Result};

/// The default largest share of the passive's groups one apply may delete.
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.10;

/// Options of [`check_apply`], with documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardOptions {
    /// Largest share (0.0–1.0) of the passive's groups that may be deleted;
    /// default [`DEFAULT_MAX_DELETE_SHARE`] (10%).
    pub max_delete_share: f64,
    /// Whether the passive has been promoted to active (given by the caller).
    pub passive_promoted: bool,
    /// Apply even though a guard objects (not for a promoted passive).
    pub force: bool,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            max_delete_share: DEFAULT_MAX_DELETE_SHARE,
            passive_promoted: false,
            force: false,
        }
    }
}

/// Checks whether `diff` (desired set → passive's live set) may be applied.
///
/// Refuses with [`ErrorKind::Refused`], naming every reason at once, when:
///
/// - the desired set is empty;
/// - it lacks the root group `00000000-0000-4000-8000-000000000000`;
/// - it would delete more than `max_delete_share` of the passive's groups.
///
/// With `force` these are overridden and returned as warnings instead, so
/// the caller can log them. A promoted passive is refused with
/// [`ErrorKind::Fenced`] whatever `force` says: it is the active primary now,
/// and the old primary must not overwrite its classification.
///
/// `max_delete_share` outside 0.0–1.0 is an [`ErrorKind::InvalidInput`].
pub fn check_apply(diff: &GroupSetDiff<'_>, options: &GuardOptions) -> Result<Vec<String>> {
    let share = options.max_delete_share;
    if !(0.0..=1.0).contains(&share) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("the largest share of groups to delete must be between 0 and 1, got {share}"),
        ));
    }
    if options.passive_promoted {
        return Err(Error::new(
            ErrorKind::Fenced,
            "refusing to write classifier groups: this passive has been promoted to active",
        )
        .with_hint(
            "it no longer takes groups from its old primary; demote it (set it back to \
             passive) first if the old primary is to be the active one again",
        ));
    }
    let desired = diff.desired();
    let current_len = diff.current().len();
    let mut reasons = Vec::new();
    if desired.is_empty() {
        reasons.push("the desired group dump is empty".to_owned());
    } else if !desired.iter().any(|g| g.id == ROOT_GROUP_ID) {
        reasons.push(format!(
            "the desired group dump has no root group ({ROOT_GROUP_ID}), so it is incomplete"
        ));
    }
    let deletes = diff.removed().len();
    if deletes > 0 && current_len > 0 {
        let ratio = deletes as f64 / current_len as f64;
        if ratio > share {
            let names: Vec<&str> = diff
                .removed()
                .iter()
                .take(5)
                .map(|g| g.name.as_str())
                .collect();
            let more = if deletes > names.len() { ", ..." } else { "" };
            reasons.push(format!(
                "it would delete {deletes} of the passive's {current_len} groups ({:.0}%, more \
                 than the {:.0}% allowed): {}{more}",
                ratio * 100.0,
                share * 100.0,
                names.join(", ")
            ));
        }
    }
    if reasons.is_empty() || options.force {
        return Ok(reasons);
    }
    Err(Error::new(
        ErrorKind::Refused,
        format!(
            "refusing to apply the classifier groups to the passive: {}",
            reasons.join("; ")
        ),
    )
    .with_hint(
        "check the active primary's classifier; if this is really wanted, run again with \
         force (or raise the allowed delete share)",
    ))
}

/// A class that a desired group uses but the passive's catalog lacks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MissingClass {
    /// The name of the group that would fail.
    pub group: String,
    /// The id of that group.
    pub group_id: String,
    /// The missing class.
    pub class: String,
    /// The environment it is missing from (the group's own).
    pub environment: String,
    /// The name of the group that declares the class: the group itself, or
    /// the ancestor it inherits the class from.
    pub defined_by: String,
}

impl fmt::Display for MissingClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group {:?}: class {:?} is missing from environment {:?}",
            self.group, self.class, self.environment
        )?;
        if self.defined_by != self.group {
            write!(f, " (inherited from {:?})", self.defined_by)?;
        }
        Ok(())
    }
}

/// The advice given with missing classes.
pub const MISSING_CLASSES_ADVICE: &str =
    "deploy the same code to the passive and refresh classes (POST /v1/update-classes)";

/// The classes used by `desired` that `catalog` (environment → class names,
/// as the passive's classifier knows them) does not have.
///
/// Like the classifier (nc-api §6.4), each group is checked in its own
/// environment against its own classes and those it inherits from its
/// ancestors. An environment absent from the catalog has no classes. The
/// result is sorted by group name, then class.
pub fn missing_classes(
    desired: &[Group],
    catalog: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<MissingClass> {
    let by_id: HashMap<&str, &Group> = desired.iter().map(|g| (g.id.as_str(), g)).collect();
    let empty = BTreeSet::new();
    let mut out = BTreeSet::new();
    for g in desired {
        let known = catalog.get(&g.environment).unwrap_or(&empty);
        let mut cur = Some(g);
        // walk up to the root; bounded in case the set has a cycle
        for _ in 0..=desired.len() {
            let Some(node) = cur else { break };
            for class in node.classes.keys() {
                if !known.contains(class) {
                    out.insert(MissingClass {
                        group: g.name.clone(),
                        group_id: g.id.clone(),
                        class: class.clone(),
                        environment: g.environment.clone(),
                        defined_by: node.name.clone(),
                    });
                }
            }
            if node.is_root() {
                break;
            }
            cur = by_id.get(node.parent.as_str()).copied();
        }
    }
    out.into_iter().collect()
}

/// Turns a [`missing_classes`] report into an error (kind
/// [`ErrorKind::Refused`]) listing every missing class, with the advice to
/// deploy code and refresh classes; `Ok` when nothing is missing.
pub fn check_classes(missing: &[MissingClass]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
    Err(Error::new(
        ErrorKind::Refused,
        format!(
            "the passive's classifier lacks {} class reference(s) the groups need: {}",
            missing.len(),
            lines.join("; ")
        ),
    )
    .with_hint(MISSING_CLASSES_ADVICE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::diff::diff;
    use crate::classifier::model::groups_from_value;
    use serde_json::{json, Value};

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

    fn tree(n: u64) -> Vec<Group> {
        let mut v = vec![g(0, 0, "All Nodes", json!({}))];
        v.extend((1..n).map(|i| g(i, 0, &format!("g{i}"), json!({}))));
        groups_from_value(&Value::Array(v)).unwrap()
    }

    #[test]
    fn accepts_a_normal_apply() {
        let a = tree(20);
        let b = tree(21); // one group to delete: 1/21 < 10%
        assert_eq!(
            check_apply(&diff(&a, &b).unwrap(), &GuardOptions::default()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn refuses_empty_and_rootless_dumps() {
        let b = tree(3);
        let opts = GuardOptions {
            max_delete_share: 1.0,
            ..GuardOptions::default()
        };
        let err = check_apply(&diff(&[], &b).unwrap(), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(err.to_string().contains("force"), "{err}");
        let rootless: Vec<Group> = tree(3).into_iter().skip(1).collect();
        let err = check_apply(&diff(&rootless, &b).unwrap(), &opts).unwrap_err();
        assert!(err.to_string().contains("no root group"), "{err}");
        let forced = GuardOptions {
            force: true,
            ..opts
        };
        let warnings = check_apply(&diff(&rootless, &b).unwrap(), &forced).unwrap();
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn refuses_deleting_too_much() {
        let a = tree(8);
        let b = tree(10); // 2 of 10 = 20% > 10%
        let err = check_apply(&diff(&a, &b).unwrap(), &GuardOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        let msg = err.to_string();
        assert!(msg.contains("delete 2 of the passive's 10 groups"), "{msg}");
        assert!(msg.contains("g8, g9"), "{msg}");
        let wide = GuardOptions {
            max_delete_share: 0.2,
            ..GuardOptions::default()
        };
        assert!(check_apply(&diff(&a, &b).unwrap(), &wide).is_ok());
        let forced = GuardOptions {
            force: true,
            ..GuardOptions::default()
        };
        assert_eq!(
            check_apply(&diff(&a, &b).unwrap(), &forced).unwrap().len(),
            1
        );
        let bad = GuardOptions {
            max_delete_share: 1.5,
            ..GuardOptions::default()
        };
        assert_eq!(
            check_apply(&diff(&a, &b).unwrap(), &bad)
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_promoted_passive_is_fenced_even_with_force() {
        let a = tree(3);
        let opts = GuardOptions {
            passive_promoted: true,
            force: true,
            ..GuardOptions::default()
        };
        let err = check_apply(&diff(&a, &a).unwrap(), &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fenced);
        assert!(err.to_string().contains("promoted"), "{err}");
    }

    #[test]
    fn reports_missing_classes_with_inheritance() {
        let mut dev = g(3, 1, "Dev", json!({"dev_only": {}}));
        dev["environment"] = json!("dev");
        let groups = groups_from_value(&json!([
            g(0, 0, "All Nodes", json!({})),
            g(
                1,
                0,
                "PE Infrastructure",
                json!({"puppet_enterprise": {"x": 1}})
            ),
            g(
                2,
                1,
                "PE Master",
                json!({"pe_repo": {}, "puppet_enterprise::profile::master": {}})
            ),
            dev,
        ]))
        .unwrap();
        let catalog: BTreeMap<String, BTreeSet<String>> = BTreeMap::from([
            (
                "production".to_owned(),
                BTreeSet::from(["puppet_enterprise".to_owned(), "pe_repo".to_owned()]),
            ),
            ("dev".to_owned(), BTreeSet::from(["dev_only".to_owned()])),
        ]);
        let missing = missing_classes(&groups, &catalog);
        let summary: Vec<(String, String, String)> = missing
            .iter()
            .map(|m| (m.group.clone(), m.class.clone(), m.defined_by.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "Dev".into(),
                    "puppet_enterprise".into(),
                    "PE Infrastructure".into()
                ),
                (
                    "PE Master".into(),
                    "puppet_enterprise::profile::master".into(),
                    "PE Master".into()
                ),
            ]
        );
        let err = check_classes(&missing).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("update-classes"), "{msg}");
        assert!(
            msg.contains("inherited from \"PE Infrastructure\""),
            "{msg}"
        );
        assert!(check_classes(&[]).is_ok());
    }
}
