//! Group-set diff: what differs between the desired groups (the active
//! primary's dump, transformed) and the passive's live groups.
//!
//! Groups are matched by id. Read-only keys (`deleted`, `last_edited`,
//! `serial_number`) are ignored. The comparison follows what the classifier
//! can store, so that a difference is always something a write can fix and
//! a write always makes the difference go away:
//!
//! - a parameter, variable or `config_data` key whose value is `null` counts
//!   as absent (the classifier's merge removes keys whose value is `null`,
//!   nc-api §3.5);
//! - a `config_data` class with no data counts as absent, and so does an
//!   empty `config_data` (it stores nothing, §2.1);
//! - an empty `description` counts as absent (a delta removes a description
//!   by sending `""`, §3.4);
//! - classes with no parameters are kept (`{"pe_repo": {}}` declares the
//!   class).

use std::collections::{BTreeMap, HashMap};

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::model::{ClassMap, Group};
use crate::error::{Error, ErrorKind, Result};

/// A field of a group that can differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `name`
    Name,
    /// `description`
    Description,
    /// `environment`
    Environment,
    /// `environment_trumps`
    EnvironmentTrumps,
    /// `parent`
    Parent,
    /// `rule`
    Rule,
    /// `classes`
    Classes,
    /// `config_data`
    ConfigData,
    /// `variables`
    Variables,
}

impl Field {
    /// Every field, in the order diffs report them.
    pub const ALL: [Field; 9] = [
        Field::Name,
        Field::Description,
        Field::Environment,
        Field::EnvironmentTrumps,
        Field::Parent,
        Field::Rule,
        Field::Classes,
        Field::ConfigData,
        Field::Variables,
    ];

    /// The JSON key of the field.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Description => "description",
            Field::Environment => "environment",
            Field::EnvironmentTrumps => "environment_trumps",
            Field::Parent => "parent",
            Field::Rule => "rule",
            Field::Classes => "classes",
            Field::ConfigData => "config_data",
            Field::Variables => "variables",
        }
    }
}

/// A group present on both sides whose writable content differs.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChange<'a> {
    /// The desired group.
    pub desired: &'a Group,
    /// The group as it is now.
    pub current: &'a Group,
    /// The fields that differ, in [`Field::ALL`] order.
    pub fields: Vec<Field>,
}

/// The difference between a desired group set and the current one.
///
/// Every list is sorted by group id. Serialises (for Ruby and status output)
/// as
/// `{"added": [{"id", "name"}], "removed": [{"id", "name"}],
/// "changed": [{"id", "name", "fields": ["rule", ...]}], "unchanged": n}`.
#[derive(Clone, Debug)]
///
/// A diff is a computed result, read through its accessors, so that
/// [`plan`](super::plan::plan) can rely on it being consistent with the two
/// sets it came from.
pub struct GroupSetDiff<'a> {
    added: Vec<&'a Group>,
    removed: Vec<&'a Group>,
    changed: Vec<GroupChange<'a>>,
    unchanged: usize,
    desired: Vec<&'a Group>,
    current: Vec<&'a Group>,
}

impl<'a> GroupSetDiff<'a> {
    /// Whether the two sets are equal (nothing to write).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Groups only in the desired set (to create), sorted by id.
    pub fn added(&self) -> &[&'a Group] {
        &self.added
    }

    /// Groups only in the current set (to delete), sorted by id.
    pub fn removed(&self) -> &[&'a Group] {
        &self.removed
    }

    /// Groups in both sets that differ (to update), sorted by id.
    pub fn changed(&self) -> &[GroupChange<'a>] {
        &self.changed
    }

    /// How many groups are in both sets and equal.
    pub fn unchanged(&self) -> usize {
        self.unchanged
    }

    /// The desired set the diff was computed from, sorted by id.
    pub fn desired(&self) -> &[&'a Group] {
        &self.desired
    }

    /// The current set the diff was computed from, sorted by id.
    pub fn current(&self) -> &[&'a Group] {
        &self.current
    }
}

struct IdName<'a>(&'a Group);

impl Serialize for IdName<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Group", 2)?;
        st.serialize_field("id", &self.0.id)?;
        st.serialize_field("name", &self.0.name)?;
        st.end()
    }
}

impl Serialize for GroupChange<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("GroupChange", 3)?;
        st.serialize_field("id", &self.desired.id)?;
        st.serialize_field("name", &self.desired.name)?;
        st.serialize_field("fields", &self.fields)?;
        st.end()
    }
}

impl Serialize for GroupSetDiff<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(4))?;
        let added: Vec<IdName<'_>> = self.added.iter().map(|g| IdName(g)).collect();
        let removed: Vec<IdName<'_>> = self.removed.iter().map(|g| IdName(g)).collect();
        map.serialize_entry("added", &added)?;
        map.serialize_entry("removed", &removed)?;
        map.serialize_entry("changed", &self.changed)?;
        map.serialize_entry("unchanged", &self.unchanged)?;
        map.end()
    }
}

/// Compares `desired` (what the passive should hold) with `current` (what
/// it holds), matching groups by id.
///
/// Fails (kind [`ErrorKind::InvalidInput`]) only if an id appears twice in
/// one of the sets.
pub fn diff<'a>(desired: &'a [Group], current: &'a [Group]) -> Result<GroupSetDiff<'a>> {
    let desired_sorted = sorted_unique(desired, "desired")?;
    let current_sorted = sorted_unique(current, "current")?;
    let current_by_id: HashMap<&str, &Group> =
        current_sorted.iter().map(|g| (g.id.as_str(), *g)).collect();
    let mut out = GroupSetDiff {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
        desired: Vec::new(),
        current: Vec::new(),
    };
    for &d in &desired_sorted {
        match current_by_id.get(d.id.as_str()) {
            None => out.added.push(d),
            Some(&c) => {
                let fields = changed_fields(d, c);
                if fields.is_empty() {
                    out.unchanged += 1;
                } else {
                    out.changed.push(GroupChange {
                        desired: d,
                        current: c,
                        fields,
                    });
                }
            }
        }
    }
    let desired_ids: std::collections::HashSet<&str> =
        desired_sorted.iter().map(|g| g.id.as_str()).collect();
    out.removed = current_sorted
        .iter()
        .copied()
        .filter(|g| !desired_ids.contains(g.id.as_str()))
        .collect();
    out.desired = desired_sorted;
    out.current = current_sorted;
    Ok(out)
}

fn sorted_unique<'a>(groups: &'a [Group], which: &str) -> Result<Vec<&'a Group>> {
    let mut sorted: Vec<&Group> = groups.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("the {which} group set has the id {} twice", w[0].id),
        ));
    }
    Ok(sorted)
}

/// The fields in which `desired` and `current` differ, in [`Field::ALL`]
/// order, under the comparison rules of this module.
pub fn changed_fields(desired: &Group, current: &Group) -> Vec<Field> {
    // Each check compares the raw values first and normalises only when they
    // differ: most groups are equal, and then no map is built.
    let mut fields = Vec::new();
    if desired.name != current.name {
        fields.push(Field::Name);
    }
    if desired.description != current.description
        && effective_description(desired) != effective_description(current)
    {
        fields.push(Field::Description);
    }
    if desired.environment != current.environment {
        fields.push(Field::Environment);
    }
    if desired.environment_trumps != current.environment_trumps {
        fields.push(Field::EnvironmentTrumps);
    }
    if desired.parent != current.parent {
        fields.push(Field::Parent);
    }
    if desired.rule != current.rule && effective_rule(desired) != effective_rule(current) {
        fields.push(Field::Rule);
    }
    if desired.classes != current.classes
        && effective_classes(&desired.classes, false) != effective_classes(&current.classes, false)
    {
        fields.push(Field::Classes);
    }
    if desired.config_data != current.config_data
        && effective_config_data(desired) != effective_config_data(current)
    {
        fields.push(Field::ConfigData);
    }
    if desired.variables != current.variables
        && effective_vars(&desired.variables) != effective_vars(&current.variables)
    {
        fields.push(Field::Variables);
    }
    fields
}

/// Whether two groups hold the same writable content under the comparison
/// rules of this module.
pub fn equivalent(a: &Group, b: &Group) -> bool {
    a.id == b.id && changed_fields(a, b).is_empty()
}

/// The description as the comparison sees it: `None` for absent or empty.
pub(crate) fn effective_description(g: &Group) -> Option<&str> {
    g.description.as_deref().filter(|d| !d.is_empty())
}

/// The rule as the comparison sees it: `None` for absent or `null`.
pub(crate) fn effective_rule(g: &Group) -> Option<&Value> {
    g.rule.as_ref().filter(|r| !r.is_null())
}

/// Variables (or parameters) without `null` values.
pub(crate) fn effective_vars(vars: &BTreeMap<String, Value>) -> BTreeMap<&str, &Value> {
    vars.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

/// Classes without `null` parameters; with `drop_empty`, classes left with
/// no parameters are dropped too (the `config_data` rule).
pub(crate) fn effective_classes(
    classes: &ClassMap,
    drop_empty: bool,
) -> BTreeMap<&str, BTreeMap<&str, &Value>> {
    classes
        .iter()
        .map(|(class, params)| (class.as_str(), effective_vars(params)))
        .filter(|(_, params)| !(drop_empty && params.is_empty()))
        .collect()
}

/// `config_data` as the comparison sees it (absent and empty are equal).
pub(crate) fn effective_config_data(g: &Group) -> BTreeMap<&str, BTreeMap<&str, &Value>> {
    g.config_data
        .as_ref()
        .map(|cd| effective_classes(cd, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::model::{groups_from_value, ROOT_GROUP_ID};
    use serde_json::json;

    const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
    const C: &str = "cccccccc-0000-4000-8000-000000000003";

    fn g(id: &str, parent: &str, name: &str) -> Value {
        json!({"id": id, "parent": parent, "name": name, "environment": "production",
               "environment_trumps": false, "classes": {}, "variables": {}})
    }

    fn set(values: Vec<Value>) -> Vec<Group> {
        groups_from_value(&Value::Array(values)).unwrap()
    }

    #[test]
    fn added_removed_changed_sorted_by_id() {
        let mut a2 = g(A, ROOT_GROUP_ID, "a");
        a2["rule"] = json!(["or", ["=", "name", "x"]]);
        a2["classes"] = json!({"c": {"p": 1}});
        a2["serial_number"] = json!(4);
        let desired = set(vec![
            g(C, ROOT_GROUP_ID, "c"),
            a2,
            g(ROOT_GROUP_ID, ROOT_GROUP_ID, "All Nodes"),
        ]);
        let current = set(vec![
            g(ROOT_GROUP_ID, ROOT_GROUP_ID, "All Nodes"),
            g(B, ROOT_GROUP_ID, "b"),
            g(A, ROOT_GROUP_ID, "a"),
        ]);
        let d = diff(&desired, &current).unwrap();
        assert_eq!(
            d.added.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            vec![C]
        );
        assert_eq!(
            d.removed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            vec![B]
        );
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].fields, vec![Field::Rule, Field::Classes]);
        assert_eq!(d.unchanged, 1);
        assert!(!d.is_empty());
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            json!({"added": [{"id": C, "name": "c"}], "removed": [{"id": B, "name": "b"}],
                   "changed": [{"id": A, "name": "a", "fields": ["rule", "classes"]}],
                   "unchanged": 1})
        );
    }

    #[test]
    fn read_only_keys_and_equivalent_forms_are_not_changes() {
        let mut a1 = g(A, ROOT_GROUP_ID, "a");
        a1["serial_number"] = json!(1);
        a1["last_edited"] = json!("2024-01-01T00:00:00.000Z");
        a1["deleted"] = json!({"x": {"puppetlabs.classifier/deleted": true}});
        a1["description"] = json!("");
        a1["classes"] = json!({"c": {"p": null}});
        a1["variables"] = json!({"v": null});
        a1["config_data"] = json!({"c": {}, "d": {"k": null}});
        let mut a2 = g(A, ROOT_GROUP_ID, "a");
        a2["classes"] = json!({"c": {}});
        let (x, y) = (set(vec![a1]), set(vec![a2]));
        let d = diff(&x, &y).unwrap();
        assert!(d.is_empty(), "{:?}", d.changed);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn every_field_is_detected() {
        let base = g(A, ROOT_GROUP_ID, "a");
        let cases: Vec<(&str, Value, Field)> = vec![
            ("name", json!("b"), Field::Name),
            ("description", json!("d"), Field::Description),
            ("environment", json!("dev"), Field::Environment),
            ("environment_trumps", json!(true), Field::EnvironmentTrumps),
            ("parent", json!(B), Field::Parent),
            ("rule", json!(["and", ["=", "name", "x"]]), Field::Rule),
            ("classes", json!({"c": {}}), Field::Classes),
            ("config_data", json!({"c": {"k": 1}}), Field::ConfigData),
            ("variables", json!({"v": false}), Field::Variables),
        ];
        for (key, value, field) in cases {
            let mut other = base.clone();
            other[key] = value;
            let (x, y) = (set(vec![base.clone()]), set(vec![other]));
            let d = diff(&x, &y).unwrap();
            assert_eq!(d.changed[0].fields, vec![field], "{key}");
            let d = diff(&y, &x).unwrap();
            assert_eq!(d.changed[0].fields, vec![field], "{key} reversed");
        }
        // class parameter value types matter
        let mut x = base.clone();
        x["classes"] = json!({"c": {"p": 1}});
        let mut y = base.clone();
        y["classes"] = json!({"c": {"p": "1"}});
        assert!(!diff(&set(vec![x]), &set(vec![y])).unwrap().is_empty());
    }

    #[test]
    fn duplicate_ids_are_errors() {
        let dup = vec![
            Group::from_value(&g(A, ROOT_GROUP_ID, "a")).unwrap(),
            Group::from_value(&g(A, ROOT_GROUP_ID, "b")).unwrap(),
        ];
        let err = diff(&dup, &[]).unwrap_err();
        assert!(err.to_string().contains("twice"));
        assert!(diff(&[], &dup).is_err());
    }
}
