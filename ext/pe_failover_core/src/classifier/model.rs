//! The node group model, dump parsing, hierarchy checks and the canonical
//! form of a group set.
//!
//! A [`Group`] holds exactly the keys of a classifier node group (nc-api §2.1).
//! Parsing is strict: unknown keys, wrong types and malformed ids are errors
//! that name the group (by index, name and id) and the key at fault, because a
//! dump that the classifier would refuse should be refused here, before any
//! write.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// The fixed id of the root group ("All Nodes"), whose parent is itself.
pub const ROOT_GROUP_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Parameters of one class: parameter name → any JSON value.
pub type Params = BTreeMap<String, Value>;

/// Classes of a group (or its `config_data`): class name → parameters.
pub type ClassMap = BTreeMap<String, Params>;

/// Variables of a group: variable name → any JSON value.
pub type Variables = BTreeMap<String, Value>;

/// The keys a group object may carry (nc-api §2.1).
const KNOWN_KEYS: [&str; 13] = [
    "id",
    "name",
    "description",
    "environment",
    "environment_trumps",
    "parent",
    "rule",
    "classes",
    "config_data",
    "variables",
    "deleted",
    "last_edited",
    "serial_number",
];

/// A Node Classifier node group, with exactly the keys of nc-api §2.1.
///
/// Maps are ordered (`BTreeMap`), so serialising a group is deterministic.
/// Parameter, variable and `config_data` values are kept as
/// [`serde_json::Value`] and round-trip unchanged, whatever their type.
///
/// The optional keys `description`, `rule` and `config_data` are `None` when
/// the key is absent and are then left out when serialising, as the
/// classifier does; an explicit JSON `null` is read as absent.
///
/// Deserialising goes through [`Group::from_value`], so serde users get the
/// same checks and messages as [`parse_dump`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// The group's id, a lowercase UUID.
    pub id: String,
    /// The group's name, unique per environment.
    pub name: String,
    /// A free-text description, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Puppet environment of the group.
    pub environment: String,
    /// Whether this group's environment wins over other matched groups'.
    pub environment_trumps: bool,
    /// The id of the parent group (the root's parent is itself).
    pub parent: String,
    /// The matching rule (nc-api §5), when set. Pinned nodes live here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Value>,
    /// Classes with their parameters.
    pub classes: ClassMap,
    /// Hiera-style data per class (PE 2017.3+), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_data: Option<ClassMap>,
    /// Top-scope variables.
    pub variables: Variables,
    /// Read-only: annotation of references to deleted classes (nc-api §2.6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Value>,
    /// Read-only: time of the last committed change (PE 2018.1+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_edited: Option<String>,
    /// Read-only: change counter used for optimistic locking (PE 2018.1+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<u64>,
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Group::from_value(&value).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

impl Group {
    /// Builds a group from a JSON object, checking every key.
    ///
    /// Errors (kind [`ErrorKind::InvalidInput`]) name the group and the key:
    /// an unknown key, a missing required key (`id`, `name`, `environment`,
    /// `environment_trumps`, `parent`, `classes`, `variables`), a wrong type,
    /// or an `id`/`parent` that is not a lowercase UUID.
    pub fn from_value(value: &Value) -> Result<Group> {
        group_from_value(value.clone())
            .map_err(|msg| invalid(format!("invalid group {}: {msg}", describe(value))))
    }

    /// Whether this is the root group ([`ROOT_GROUP_ID`]).
    pub fn is_root(&self) -> bool {
        self.id == ROOT_GROUP_ID
    }

    /// The writable form of the group: a copy without the read-only keys
    /// `deleted`, `last_edited` and `serial_number`, suitable for PUT and
    /// import-hierarchy bodies.
    pub fn writable(&self) -> Group {
        Group {
            deleted: None,
            last_edited: None,
            serial_number: None,
            ..self.clone()
        }
    }

    /// The uniqueness key of the group: `(name, environment)` (nc-api §2.3).
    pub fn key(&self) -> (&str, &str) {
        (&self.name, &self.environment)
    }

    /// The group as a JSON object (all keys it carries, read-only ones
    /// included).
    pub fn to_value(&self) -> Value {
        group_to_value(self)
    }
}

/// Serialises a group to a JSON object without going through a fallible
/// serializer (every part is already JSON).
fn group_to_value(group: &Group) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), Value::String(group.id.clone()));
    map.insert("name".into(), Value::String(group.name.clone()));
    if let Some(d) = &group.description {
        map.insert("description".into(), Value::String(d.clone()));
    }
    map.insert(
        "environment".into(),
        Value::String(group.environment.clone()),
    );
    map.insert(
        "environment_trumps".into(),
        Value::Bool(group.environment_trumps),
    );
    map.insert("parent".into(), Value::String(group.parent.clone()));
    if let Some(rule) = &group.rule {
        map.insert("rule".into(), rule.clone());
    }
    map.insert("classes".into(), class_map_to_value(&group.classes));
    if let Some(cd) = &group.config_data {
        map.insert("config_data".into(), class_map_to_value(cd));
    }
    map.insert("variables".into(), vars_to_value(&group.variables));
    if let Some(d) = &group.deleted {
        map.insert("deleted".into(), d.clone());
    }
    if let Some(t) = &group.last_edited {
        map.insert("last_edited".into(), Value::String(t.clone()));
    }
    if let Some(n) = group.serial_number {
        map.insert("serial_number".into(), Value::from(n));
    }
    Value::Object(map)
}

pub(crate) fn class_map_to_value(classes: &ClassMap) -> Value {
    Value::Object(
        classes
            .iter()
            .map(|(class, params)| (class.clone(), vars_to_value(params)))
            .collect(),
    )
}

pub(crate) fn vars_to_value(vars: &BTreeMap<String, Value>) -> Value {
    Value::Object(vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// A short description of a group value for error messages:
/// `"PE Master" (id e1ee…)`, or what is known of it.
fn describe(value: &Value) -> String {
    let name = value.get("name").and_then(Value::as_str);
    let id = value.get("id").and_then(Value::as_str);
    match (name, id) {
        (Some(n), Some(i)) => format!("{n:?} (id {i})"),
        (Some(n), None) => format!("{n:?}"),
        (None, Some(i)) => format!("with id {i}"),
        (None, None) => "without name or id".into(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `s` is a lowercase type-4-shaped UUID as the classifier checks it
/// (`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`, §2.2).
pub fn is_valid_group_id(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    bytes.iter().enumerate().all(|(i, &b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
    })
}

/// Builds a group from a JSON value, moving its parts out (no copies).
fn group_from_value(value: Value) -> std::result::Result<Group, String> {
    let mut obj = match value {
        Value::Object(obj) => obj,
        other => return Err(format!("expected an object, found {}", type_name(&other))),
    };
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN_KEYS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown key(s) {} (the classifier's group schema is closed, nc-api §2.8)",
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut take = |key: &str| obj.remove(key);
    let required = |key: &str, v: Option<Value>| v.ok_or_else(|| format!("missing key `{key}`"));
    let string = |key: &str, v: Option<Value>| match required(key, v)? {
        Value::String(s) => Ok(s),
        v => Err(format!(
            "key `{key}` must be a string, found {}",
            type_name(&v)
        )),
    };
    // an optional key given as `null` is absent
    let optional = |v: Option<Value>| v.filter(|v| !v.is_null());

    let id = string("id", take("id"))?;
    if !is_valid_group_id(&id) {
        return Err(format!("key `id` is not a lowercase UUID: {id:?}"));
    }
    let parent = string("parent", take("parent"))?;
    if !is_valid_group_id(&parent) {
        return Err(format!("key `parent` is not a lowercase UUID: {parent:?}"));
    }
    let name = string("name", take("name"))?;
    let environment = string("environment", take("environment"))?;
    let environment_trumps = match required("environment_trumps", take("environment_trumps"))? {
        Value::Bool(b) => b,
        v => {
            return Err(format!(
                "key `environment_trumps` must be a boolean, found {}",
                type_name(&v)
            ))
        }
    };
    let description = match optional(take("description")) {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            return Err(format!(
                "key `description` must be a string, found {}",
                type_name(&v)
            ))
        }
    };
    let rule = match optional(take("rule")) {
        None => None,
        Some(v @ Value::Array(_)) => Some(v),
        Some(v) => {
            return Err(format!(
                "key `rule` must be an array (nc-api §5), found {}",
                type_name(&v)
            ))
        }
    };
    let classes = class_map("classes", required("classes", take("classes"))?)?;
    let config_data = match optional(take("config_data")) {
        None => None,
        Some(v) => Some(class_map("config_data", v)?),
    };
    let variables = match required("variables", take("variables"))? {
        Value::Object(map) => map.into_iter().collect(),
        v => {
            return Err(format!(
                "key `variables` must be an object, found {}",
                type_name(&v)
            ))
        }
    };
    let deleted = optional(take("deleted"));
    let last_edited = match optional(take("last_edited")) {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            return Err(format!(
                "key `last_edited` must be a string, found {}",
                type_name(&v)
            ))
        }
    };
    let serial_number = match optional(take("serial_number")) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            format!("key `serial_number` must be a non-negative integer, found {v}")
        })?),
    };
    Ok(Group {
        id,
        name,
        description,
        environment,
        environment_trumps,
        parent,
        rule,
        classes,
        config_data,
        variables,
        deleted,
        last_edited,
        serial_number,
    })
}

fn class_map(key: &str, value: Value) -> std::result::Result<ClassMap, String> {
    let obj = match value {
        Value::Object(obj) => obj,
        v => {
            return Err(format!(
                "key `{key}` must be an object of classes, found {}",
                type_name(&v)
            ))
        }
    };
    let mut classes = ClassMap::new();
    for (class, params) in obj {
        match params {
            Value::Object(params) => {
                classes.insert(class, params.into_iter().collect());
            }
            v => {
                return Err(format!(
                    "`{key}.{class}` must be an object of parameters, found {}",
                    type_name(&v)
                ))
            }
        }
    }
    Ok(classes)
}

/// Parses a `GET /v1/groups` response (a JSON array of groups).
///
/// Checks each group as [`Group::from_value`] does and that no id appears
/// twice. Errors name the group's index in the array, its name and id.
/// It does not check the hierarchy (see [`validate_hierarchy`]), so that
/// the apply guards can report an incomplete dump in their own words.
pub fn parse_dump(json: &str) -> Result<Vec<Group>> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| invalid(format!("the group dump is not valid JSON: {e}")))?;
    groups_from_owned(value)
}

/// Builds a group set from an already parsed JSON array; see [`parse_dump`].
pub fn groups_from_value(value: &Value) -> Result<Vec<Group>> {
    groups_from_owned(value.clone())
}

fn groups_from_owned(value: Value) -> Result<Vec<Group>> {
    let items = match value {
        Value::Array(items) => items,
        v => {
            return Err(invalid(format!(
                "the group dump must be a JSON array of groups, found {}",
                type_name(&v)
            )))
        }
    };
    let mut groups = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let what = describe(&item);
        let group = group_from_value(item)
            .map_err(|msg| invalid(format!("group #{index} {what}: {msg}")))?;
        if let Some(first) = seen.insert(group.id.clone(), index) {
            return Err(invalid(format!(
                "group #{index} {what}: id {} already used by group #{first}",
                group.id
            )));
        }
        groups.push(group);
    }
    Ok(groups)
}

/// Parses one group object (the body of `GET /v1/groups/<id>`).
pub fn parse_group(json: &str) -> Result<Group> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| invalid(format!("the group is not valid JSON: {e}")))?;
    let what = describe(&value);
    group_from_value(value).map_err(|msg| invalid(format!("invalid group {what}: {msg}")))
}

/// The writable form of a whole set: each group without its read-only keys.
pub fn writable_set(groups: &[Group]) -> Vec<Group> {
    groups.iter().map(Group::writable).collect()
}

/// Checks that `groups` form a hierarchy the classifier accepts (nc-api §6):
/// ids are valid and unique; there is exactly one root group, with the fixed
/// id and itself as parent; every other group's parent exists and is not
/// itself; there is no cycle; `(name, environment)` is unique.
///
/// Errors (kind [`ErrorKind::InvalidInput`]) name the offending groups.
pub fn validate_hierarchy(groups: &[Group]) -> Result<()> {
    let refs: Vec<&Group> = groups.iter().collect();
    check_hierarchy(&refs)
}

/// [`validate_hierarchy`] over borrowed groups.
pub(crate) fn check_hierarchy(groups: &[&Group]) -> Result<()> {
    let mut by_id: HashMap<&str, &Group> = HashMap::with_capacity(groups.len());
    let mut keys: HashMap<(&str, &str), &Group> = HashMap::with_capacity(groups.len());
    for &g in groups {
        if !is_valid_group_id(&g.id) {
            return Err(invalid(format!(
                "group {:?} has an id that is not a lowercase UUID: {:?}",
                g.name, g.id
            )));
        }
        if !is_valid_group_id(&g.parent) {
            return Err(invalid(format!(
                "group {:?} (id {}) has a parent that is not a lowercase UUID: {:?}",
                g.name, g.id, g.parent
            )));
        }
        if by_id.insert(&g.id, g).is_some() {
            return Err(invalid(format!("group id {} appears twice", g.id)));
        }
        if let Some(other) = keys.insert(g.key(), g) {
            return Err(invalid(format!(
                "groups {} and {} share the name {:?} in environment {:?} \
                 (names are unique per environment)",
                other.id, g.id, g.name, g.environment
            )));
        }
    }
    match by_id.get(ROOT_GROUP_ID) {
        None => {
            return Err(invalid(format!(
                "the group set has no root group (id {ROOT_GROUP_ID})"
            )))
        }
        Some(root) if root.parent != ROOT_GROUP_ID => {
            return Err(invalid(format!(
                "the root group's parent must be itself, found {}",
                root.parent
            )))
        }
        Some(_) => {}
    }
    // Walk up from every group, colouring ids: "on the current path" or
    // "reaches the root", so the whole check is linear.
    const ON_PATH: u8 = 1;
    const REACHES_ROOT: u8 = 2;
    let mut state: HashMap<&str, u8> = HashMap::with_capacity(groups.len());
    state.insert(ROOT_GROUP_ID, REACHES_ROOT);
    let mut path: Vec<&str> = Vec::new();
    for &g in groups {
        path.clear();
        let mut cur: &Group = g;
        loop {
            match state.get(cur.id.as_str()) {
                Some(&REACHES_ROOT) => break,
                Some(_) => {
                    let names: Vec<&str> = path
                        .iter()
                        .skip_while(|id| **id != cur.id)
                        .filter_map(|id| by_id.get(id).map(|g| g.name.as_str()))
                        .collect();
                    return Err(invalid(format!(
                        "inheritance cycle: {} -> {}",
                        names.join(" -> "),
                        cur.name
                    )));
                }
                None => {}
            }
            state.insert(&cur.id, ON_PATH);
            path.push(&cur.id);
            match by_id.get(cur.parent.as_str()) {
                Some(parent) => cur = parent,
                None => {
                    return Err(invalid(format!(
                        "group {:?} (id {}) has a parent {} that is not in the set",
                        cur.name, cur.id, cur.parent
                    )))
                }
            }
        }
        for id in &path {
            state.insert(id, REACHES_ROOT);
        }
    }
    Ok(())
}

/// The canonical JSON of a group set: the writable form of each group
/// (read-only keys removed), groups sorted by id, object keys sorted at every
/// depth, no whitespace.
///
/// Two dumps that differ only in key order, group order, whitespace or
/// read-only keys have the same canonical form. Values are otherwise kept as
/// they are (a parameter set to `null` is not the same as an absent one here;
/// the diff treats them alike, see `classifier::diff`).
pub fn canonical_json(groups: &[Group]) -> String {
    let mut sorted: Vec<&Group> = groups.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = String::with_capacity(groups.len() * 512);
    out.push('[');
    for (i, group) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_canonical_group(group, &mut out);
    }
    out.push(']');
    out
}

/// Writes the canonical form of one group's writable keys, straight from
/// the struct. Keys are written in sorted order; the maps are `BTreeMap`s,
/// already sorted the same way (by bytes).
fn write_canonical_group(g: &Group, out: &mut String) {
    fn key(out: &mut String, first: &mut bool, k: &str) {
        if !*first {
            out.push(',');
        }
        *first = false;
        write_json_string(k, out);
        out.push(':');
    }
    fn map(out: &mut String, m: &BTreeMap<String, Value>) {
        out.push('{');
        let mut first = true;
        for (k, v) in m {
            key(out, &mut first, k);
            write_canonical(v, out);
        }
        out.push('}');
    }
    fn classes(out: &mut String, c: &ClassMap) {
        out.push('{');
        let mut first = true;
        for (class, params) in c {
            key(out, &mut first, class);
            map(out, params);
        }
        out.push('}');
    }
    let mut first = true;
    out.push('{');
    key(out, &mut first, "classes");
    classes(out, &g.classes);
    if let Some(cd) = &g.config_data {
        key(out, &mut first, "config_data");
        classes(out, cd);
    }
    if let Some(d) = &g.description {
        key(out, &mut first, "description");
        write_json_string(d, out);
    }
    key(out, &mut first, "environment");
    write_json_string(&g.environment, out);
    key(out, &mut first, "environment_trumps");
    out.push_str(if g.environment_trumps {
        "true"
    } else {
        "false"
    });
    key(out, &mut first, "id");
    write_json_string(&g.id, out);
    key(out, &mut first, "name");
    write_json_string(&g.name, out);
    key(out, &mut first, "parent");
    write_json_string(&g.parent, out);
    if let Some(rule) = &g.rule {
        key(out, &mut first, "rule");
        write_canonical(rule, out);
    }
    key(out, &mut first, "variables");
    map(out, &g.variables);
    out.push('}');
}

/// The SHA-256 (lowercase hex) of [`canonical_json`]: equal for semantically
/// equal dumps whatever their key or group order.
pub fn canonical_digest(groups: &[Group]) -> String {
    hex::encode(Sha256::digest(canonical_json(groups).as_bytes()))
}

/// Writes `value` as compact JSON with object keys sorted.
pub(crate) fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// Writes a JSON string literal, escaping as serde_json does.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root() -> Value {
        json!({"id": ROOT_GROUP_ID, "parent": ROOT_GROUP_ID, "name": "All Nodes",
               "environment": "production", "environment_trumps": false,
               "rule": ["and", ["~", "name", ".*"]], "classes": {}, "variables": {}})
    }

    fn child(id: &str, parent: &str, name: &str) -> Value {
        json!({"id": id, "parent": parent, "name": name, "environment": "production",
               "environment_trumps": false, "classes": {}, "variables": {}})
    }

    const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

    #[test]
    fn any_json_value_round_trips() {
        let v = json!({"id": A, "parent": ROOT_GROUP_ID, "name": "x", "description": "d",
            "environment": "production", "environment_trumps": true,
            "rule": ["or", ["=", "name", "h"]],
            "classes": {"c": {"s": "x", "n": 1.5, "i": -3, "b": false, "nul": null,
                              "arr": [1, "a", {"k": [null]}], "obj": {"z": 1, "a": 2}}},
            "config_data": {"c": {"k": {"deep": [true]}}},
            "variables": {"v": [1, 2], "w": {"x": null}},
            "deleted": {"c": {"puppetlabs.classifier/deleted": true}},
            "last_edited": "2024-07-19T10:53:20.184Z", "serial_number": 7});
        let g = Group::from_value(&v).unwrap();
        assert_eq!(g.to_value(), v);
        let back: Group = serde_json::from_value(serde_json::to_value(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn absent_optional_keys_stay_absent() {
        let g = Group::from_value(&child(A, ROOT_GROUP_ID, "x")).unwrap();
        assert_eq!(g.description, None);
        assert_eq!(g.rule, None);
        assert_eq!(g.config_data, None);
        let out = serde_json::to_value(&g).unwrap();
        for key in [
            "description",
            "rule",
            "config_data",
            "deleted",
            "last_edited",
            "serial_number",
        ] {
            assert!(out.get(key).is_none(), "{key} should be absent");
        }
        // present-but-empty is kept
        let mut v = child(A, ROOT_GROUP_ID, "x");
        v["description"] = json!("");
        v["config_data"] = json!({});
        let g = Group::from_value(&v).unwrap();
        assert_eq!(g.description.as_deref(), Some(""));
        assert_eq!(g.config_data, Some(ClassMap::new()));
        assert_eq!(g.to_value(), v);
    }

    #[test]
    fn writable_strips_read_only_keys() {
        let mut v = child(A, ROOT_GROUP_ID, "x");
        v["serial_number"] = json!(3);
        v["last_edited"] = json!("2024-01-01T00:00:00.000Z");
        v["deleted"] = json!({});
        let g = Group::from_value(&v).unwrap().writable();
        assert_eq!(g.to_value(), child(A, ROOT_GROUP_ID, "x"));
    }

    #[test]
    fn errors_name_the_group_and_the_problem() {
        let mut bad = child(B, ROOT_GROUP_ID, "PE Master");
        bad["environment_trumps"] = json!("true");
        let dump = json!([root(), bad]).to_string();
        let err = parse_dump(&dump).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        assert!(msg.contains("group #1"), "{msg}");
        assert!(msg.contains("PE Master"), "{msg}");
        assert!(msg.contains("environment_trumps"), "{msg}");
        assert!(msg.contains("boolean"), "{msg}");

        let mut bad = child(B, ROOT_GROUP_ID, "G");
        bad["purge_behavior"] = json!("none");
        let msg = parse_dump(&json!([bad]).to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("purge_behavior"), "{msg}");

        let mut bad = child(B, ROOT_GROUP_ID, "G");
        bad.as_object_mut().unwrap().remove("classes");
        let msg = parse_dump(&json!([bad]).to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing key `classes`"), "{msg}");

        let mut bad = child(B, ROOT_GROUP_ID, "G");
        bad["classes"] = json!({"apache": "yes"});
        let msg = parse_dump(&json!([bad]).to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("classes.apache"), "{msg}");

        let bad = child("../../etc", ROOT_GROUP_ID, "G");
        let msg = parse_dump(&json!([bad]).to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("UUID"), "{msg}");

        let msg = parse_dump(&json!([root(), root()]).to_string())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("already used by group #0"), "{msg}");

        for text in ["", "{", "{}", "[1]", "[[]]", "null"] {
            let err = parse_dump(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{text}");
        }
        let mut bad = child(B, ROOT_GROUP_ID, "G");
        bad["serial_number"] = json!(-1);
        assert!(parse_dump(&json!([bad]).to_string()).is_err());
        let mut bad = child(B, ROOT_GROUP_ID, "G");
        bad["rule"] = json!("name = x");
        assert!(parse_dump(&json!([bad]).to_string()).is_err());
    }

    proptest::proptest! {
        /// Whatever the input, parsing returns a value or an error.
        #[test]
        fn parsing_never_panics(text in ".{0,200}") {
            let _ = parse_dump(&text);
            let _ = parse_group(&text);
        }

        /// Valid JSON of the wrong shapes is an error, never a panic.
        #[test]
        fn wrong_shapes_are_errors(
            key in proptest::sample::select(vec!["id", "parent", "name", "environment",
                "environment_trumps", "rule", "classes", "config_data", "variables",
                "description", "serial_number", "last_edited", "deleted"]),
            value in proptest::sample::select(vec![json!(null), json!(1), json!(-1), json!(1.5),
                json!("s"), json!(true), json!([]), json!([1]), json!({}), json!({"a": 1}),
                json!({"a": {"b": [null]}})]),
        ) {
            let mut v = child(A, ROOT_GROUP_ID, "x");
            v[key] = value;
            let _ = parse_dump(&json!([v]).to_string());
        }
    }

    #[test]
    fn serde_deserialize_uses_the_same_checks() {
        let r: std::result::Result<Group, _> = serde_json::from_value(json!({"id": 1}));
        assert!(r.unwrap_err().to_string().contains("`id` must be a string"));
    }

    #[test]
    fn hierarchy_checks() {
        let ok = groups_from_value(&json!([
            root(),
            child(A, ROOT_GROUP_ID, "a"),
            child(B, A, "b")
        ]))
        .unwrap();
        validate_hierarchy(&ok).unwrap();

        let no_root = groups_from_value(&json!([child(A, B, "a"), child(B, A, "b")])).unwrap();
        let msg = validate_hierarchy(&no_root).unwrap_err().to_string();
        assert!(msg.contains("no root"), "{msg}");

        let cycle =
            groups_from_value(&json!([root(), child(A, B, "a"), child(B, A, "b")])).unwrap();
        let msg = validate_hierarchy(&cycle).unwrap_err().to_string();
        assert!(msg.contains("cycle"), "{msg}");

        let self_parent = groups_from_value(&json!([root(), child(A, A, "a")])).unwrap();
        assert!(validate_hierarchy(&self_parent).is_err());

        let orphan = groups_from_value(&json!([root(), child(A, B, "a")])).unwrap();
        let msg = validate_hierarchy(&orphan).unwrap_err().to_string();
        assert!(msg.contains("not in the set"), "{msg}");

        let dup = groups_from_value(&json!([
            root(),
            child(A, ROOT_GROUP_ID, "x"),
            child(B, ROOT_GROUP_ID, "x")
        ]))
        .unwrap();
        let msg = validate_hierarchy(&dup).unwrap_err().to_string();
        assert!(msg.contains("share the name"), "{msg}");
        // same name, other environment: fine
        let mut other_env = child(B, ROOT_GROUP_ID, "x");
        other_env["environment"] = json!("dev");
        let ok =
            groups_from_value(&json!([root(), child(A, ROOT_GROUP_ID, "x"), other_env])).unwrap();
        validate_hierarchy(&ok).unwrap();
    }

    #[test]
    fn canonical_form_ignores_key_and_group_order_and_read_only_keys() {
        let a = groups_from_value(&json!([root(), child(A, ROOT_GROUP_ID, "a")])).unwrap();
        let mut reordered = child(A, ROOT_GROUP_ID, "a");
        reordered["serial_number"] = json!(9);
        let b = groups_from_value(&json!([reordered, root()])).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_digest(&a), canonical_digest(&b));
        let c = groups_from_value(&json!([root(), child(A, ROOT_GROUP_ID, "b")])).unwrap();
        assert_ne!(canonical_digest(&a), canonical_digest(&c));
        let text = canonical_json(&a);
        assert!(!text.contains(' ') || text.contains("All Nodes"));
        assert!(
            text.starts_with(r#"[{"classes":{},"environment":"production""#),
            "{text}"
        );
        assert_eq!(canonical_digest(&a).len(), 64);
    }

    #[test]
    fn canonical_group_writer_equals_sorted_generic_json() {
        let v = json!({"id": A, "parent": ROOT_GROUP_ID, "name": "n\"x", "description": "d",
            "environment": "production", "environment_trumps": true,
            "rule": ["or", ["=", "name", "h"]],
            "classes": {"b": {"z": 1, "a": {"y": [2, {"k": 1, "c": 2}]}}, "a::b": {}, "B": {}},
            "config_data": {"c": {"k": null}}, "variables": {"w": 1, "V": "é"},
            "serial_number": 3});
        let g = Group::from_value(&v).unwrap();
        let mut generic = String::from("[");
        write_canonical(&g.writable().to_value(), &mut generic);
        generic.push(']');
        assert_eq!(canonical_json(&[g]), generic);
    }

    #[test]
    fn canonical_strings_match_serde_json_escaping() {
        let s = "q\"b\\n\nt\tc\u{1}é\u{7f}";
        let mut out = String::new();
        write_canonical(&json!(s), &mut out);
        assert_eq!(out, serde_json::to_string(s).unwrap());
        let mut out = String::new();
        write_canonical(&json!({"b": 1.5, "a": [null, true, -2]}), &mut out);
        assert_eq!(out, r#"{"a":[null,true,-2],"b":1.5}"#);
    }
}
