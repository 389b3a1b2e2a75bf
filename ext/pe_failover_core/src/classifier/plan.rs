//! Plans: the ordered classifier API calls that turn the passive's groups
//! into the desired groups.
//!
//! [`plan`] turns a [`GroupSetDiff`] into the fewest write calls, ordered so
//! that the classifier accepts every one of them: after each call every
//! group's parent exists, there is no inheritance cycle, `(name,
//! environment)` is unique, no deleted group has children, and the root's
//! rule is never sent (nc-api §6, §7.7, §7.8, §7.9).
//!
//! # Operations
//!
//! - **Create** — `PUT /classifier-api/v1/groups/<id>` with the desired
//!   group. PUT (rather than `POST /v1/groups`, which makes a random id) keeps
//!   the active primary's ids on the passive. That keeps both trees
//!   id-identical, as `import-hierarchy` does, so the next diff matches groups
//!   by id, renamed groups are updated instead of deleted and re-created, and
//!   the ids that other tools (or a later failback) hold stay valid.
//! - **Update** — `POST /classifier-api/v1/groups/<id>` with a delta holding
//!   only the changed keys. The classifier merges `classes`, `config_data` and
//!   `variables`, so removed classes, parameters and variables are sent as
//!   explicit `null`s (§7.3); a removed rule is sent as `"rule": null`; a
//!   removed description as `""` (§3.4). The root group's rule is never sent
//!   (§7.7); a difference there is reported as a warning instead.
//! - **Delete** — `DELETE /classifier-api/v1/groups/<id>`.
//!
//! # Order
//!
//! 1. *Releases*: a group whose current `(name, environment)` is taken over
//!    by another group is moved out of the way first — a deleted group whose
//!    whole subtree goes is deleted now (leaves first); a deleted group with
//!    surviving descendants, or a renamed group that cannot take its final
//!    form yet (its name is held by a group that is itself waiting, as in a
//!    swap, or its new parent does not exist yet), gets a temporary name (one
//!    extra call); other renamed groups get their full update now, chains
//!    of renames ordered so each name is free when it is taken.
//! 2. *Creates*, parents first.
//! 3. *Updates*, top-down in the desired tree. When a group is re-parented,
//!    all its desired ancestors already have their final parents, so the new
//!    parent's ancestry is the desired one and cannot contain the group: no
//!    cycle, even when a group moves under one of its current descendants.
//! 4. *Deletes*, leaves first. Surviving children of deleted groups were
//!    re-parented in step 3.
//!
//! The planner replays every step on a model of the passive's tree and
//! refuses (kind [`ErrorKind::Internal`]) to return a plan that would break
//! an invariant.
//!
//! [`import_hierarchy`] is the alternative "replace" mode: one call carrying
//! the whole desired set.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};

use super::diff::{
    effective_classes, effective_config_data, effective_description, effective_rule,
    effective_vars, GroupSetDiff,
};
use super::model::{check_hierarchy, Group, ROOT_GROUP_ID};
use crate::error::{Error, ErrorKind, Result};

/// The path of the groups endpoint; a group is at `<GROUPS_PATH>/<id>`.
pub const GROUPS_PATH: &str = "/classifier-api/v1/groups";

/// The path of the import-hierarchy endpoint.
pub const IMPORT_HIERARCHY_PATH: &str = "/classifier-api/v1/import-hierarchy";

/// What an [`Operation`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Create a group with a given id (`PUT`).
    Create,
    /// Change some keys of a group (`POST` delta).
    Update,
    /// Delete a group (`DELETE`).
    Delete,
    /// Replace the whole hierarchy (`POST /v1/import-hierarchy`).
    ImportHierarchy,
}

/// One classifier API call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Operation {
    /// What the call does.
    pub kind: OperationKind,
    /// The HTTP method: `PUT`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path, e.g. `/classifier-api/v1/groups/<id>`.
    pub path: String,
    /// The id of the group concerned (none for import-hierarchy).
    pub group_id: Option<String>,
    /// The group's name, for people: the desired name for creates and
    /// updates, the current one for deletes and temporary renames.
    pub group_name: Option<String>,
    /// The JSON body, if the call has one.
    pub body: Option<Value>,
    /// Why the call is there, when it is not obvious (temporary renames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Operation {
    /// The size in bytes of the compact JSON body (0 without a body).
    pub fn body_bytes(&self) -> usize {
        self.body
            .as_ref()
            .map_or(0, |b| serde_json::to_string(b).map_or(0, |s| s.len()))
    }
}

/// An ordered list of API calls, plus warnings about differences that no
/// call can fix.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    /// The calls, in the order they must be made.
    pub operations: Vec<Operation>,
    /// Differences left as they are (the root group's rule).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// How many calls of `kind` the plan makes.
    pub fn count(&self, kind: OperationKind) -> usize {
        self.operations.iter().filter(|o| o.kind == kind).count()
    }

    /// The total size of all request bodies, in bytes.
    pub fn payload_bytes(&self) -> usize {
        self.operations.iter().map(Operation::body_bytes).sum()
    }
}

fn group_path(id: &str) -> String {
    format!("{GROUPS_PATH}/{id}")
}

/// The body written for a group on create and import: its writable keys in
/// the form the diff compares (`null` parameters and variables, empty
/// descriptions and `config_data` classes without data are left out, as the
/// classifier would not store them).
pub fn group_body(g: &Group) -> Value {
    let mut body = Map::new();
    body.insert("id".into(), Value::String(g.id.clone()));
    body.insert("name".into(), Value::String(g.name.clone()));
    if let Some(d) = effective_description(g) {
        body.insert("description".into(), Value::String(d.to_owned()));
    }
    body.insert("environment".into(), Value::String(g.environment.clone()));
    body.insert(
        "environment_trumps".into(),
        Value::Bool(g.environment_trumps),
    );
    body.insert("parent".into(), Value::String(g.parent.clone()));
    if let Some(rule) = effective_rule(g) {
        body.insert("rule".into(), rule.clone());
    }
    body.insert(
        "classes".into(),
        nested_to_value(&effective_classes(&g.classes, false)),
    );
    let config_data = effective_config_data(g);
    if !config_data.is_empty() {
        body.insert("config_data".into(), nested_to_value(&config_data));
    }
    body.insert(
        "variables".into(),
        flat_to_value(&effective_vars(&g.variables)),
    );
    Value::Object(body)
}

fn flat_to_value(map: &BTreeMap<&str, &Value>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).clone()))
            .collect(),
    )
}

fn nested_to_value(map: &BTreeMap<&str, BTreeMap<&str, &Value>>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| ((*k).to_owned(), flat_to_value(v)))
            .collect(),
    )
}

/// Delta of two flat maps: new or changed keys with their value, removed
/// keys with `null`.
fn flat_delta(
    current: &BTreeMap<&str, &Value>,
    desired: &BTreeMap<&str, &Value>,
) -> Map<String, Value> {
    let mut delta = Map::new();
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            delta.insert((*k).to_owned(), (*v).clone());
        }
    }
    for k in current.keys() {
        if !desired.contains_key(k) {
            delta.insert((*k).to_owned(), Value::Null);
        }
    }
    delta
}

/// Delta of two class maps: new classes in full, changed ones as parameter
/// deltas, removed ones as `null`.
fn nested_delta(
    current: &BTreeMap<&str, BTreeMap<&str, &Value>>,
    desired: &BTreeMap<&str, BTreeMap<&str, &Value>>,
) -> Map<String, Value> {
    let mut delta = Map::new();
    for (class, params) in desired {
        match current.get(class) {
            None => {
                delta.insert((*class).to_owned(), flat_to_value(params));
            }
            Some(cur) => {
                let d = flat_delta(cur, params);
                if !d.is_empty() {
                    delta.insert((*class).to_owned(), Value::Object(d));
                }
            }
        }
    }
    for class in current.keys() {
        if !desired.contains_key(class) {
            delta.insert((*class).to_owned(), Value::Null);
        }
    }
    delta
}

/// The POST delta that turns `current` (whose name is now `current_name`)
/// into `desired`. Never carries `rule` for the root group.
fn update_body(current: &Group, current_name: &str, desired: &Group) -> Map<String, Value> {
    let mut body = Map::new();
    if current_name != desired.name {
        body.insert("name".into(), Value::String(desired.name.clone()));
    }
    if effective_description(current) != effective_description(desired) {
        let d = effective_description(desired).unwrap_or("");
        body.insert("description".into(), Value::String(d.to_owned()));
    }
    if current.environment != desired.environment {
        body.insert(
            "environment".into(),
            Value::String(desired.environment.clone()),
        );
    }
    if current.environment_trumps != desired.environment_trumps {
        body.insert(
            "environment_trumps".into(),
            Value::Bool(desired.environment_trumps),
        );
    }
    if current.parent != desired.parent {
        body.insert("parent".into(), Value::String(desired.parent.clone()));
    }
    if !desired.is_root() && effective_rule(current) != effective_rule(desired) {
        body.insert(
            "rule".into(),
            effective_rule(desired).cloned().unwrap_or(Value::Null),
        );
    }
    // unchanged maps (the common case) are skipped without normalising
    if current.classes != desired.classes {
        let classes = nested_delta(
            &effective_classes(&current.classes, false),
            &effective_classes(&desired.classes, false),
        );
        if !classes.is_empty() {
            body.insert("classes".into(), Value::Object(classes));
        }
    }
    if current.config_data != desired.config_data {
        let config_data = nested_delta(
            &effective_config_data(current),
            &effective_config_data(desired),
        );
        if !config_data.is_empty() {
            body.insert("config_data".into(), Value::Object(config_data));
        }
    }
    if current.variables != desired.variables {
        let variables = flat_delta(
            &effective_vars(&current.variables),
            &effective_vars(&desired.variables),
        );
        if !variables.is_empty() {
            body.insert("variables".into(), Value::Object(variables));
        }
    }
    body
}

/// The uniqueness key of a group.
type Key = (String, String);

fn key_of(g: &Group) -> Key {
    (g.name.clone(), g.environment.clone())
}

/// A model of the passive's tree while the plan is built: parents, keys and
/// child counts. Every change is checked against the classifier's rules.
struct Work {
    parent: HashMap<String, String>,
    key: HashMap<String, Key>,
    owner: HashMap<Key, String>,
    children: HashMap<String, usize>,
}

fn internal(message: String) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("classifier plan: {message} (this is a bug in pe_failover)"),
    )
}

impl Work {
    fn new(groups: &[&Group]) -> Work {
        let mut w = Work {
            parent: HashMap::with_capacity(groups.len()),
            key: HashMap::with_capacity(groups.len()),
            owner: HashMap::with_capacity(groups.len()),
            children: HashMap::with_capacity(groups.len()),
        };
        for g in groups {
            w.parent.insert(g.id.clone(), g.parent.clone());
            w.key.insert(g.id.clone(), key_of(g));
            w.owner.insert(key_of(g), g.id.clone());
            if !g.is_root() {
                *w.children.entry(g.parent.clone()).or_default() += 1;
            }
        }
        w
    }

    fn exists(&self, id: &str) -> bool {
        self.parent.contains_key(id)
    }

    fn owner(&self, key: &Key) -> Option<&str> {
        self.owner.get(key).map(String::as_str)
    }

    fn key_free_for(&self, key: &Key, id: &str) -> bool {
        !matches!(self.owner(key), Some(o) if o != id)
    }

    /// Whether making `new_parent` the parent of `id` is allowed: the parent
    /// exists and is not `id` or one of its descendants.
    fn can_parent(&self, id: &str, new_parent: &str) -> bool {
        if id == ROOT_GROUP_ID {
            return new_parent == ROOT_GROUP_ID;
        }
        if !self.exists(new_parent) {
            return false;
        }
        let mut cur = new_parent;
        for _ in 0..=self.parent.len() {
            if cur == id {
                return false;
            }
            if cur == ROOT_GROUP_ID {
                return true;
            }
            match self.parent.get(cur) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    }

    fn set_key(&mut self, id: &str, key: Key) -> Result<()> {
        if !self.key_free_for(&key, id) {
            return Err(internal(format!(
                "name {:?} in environment {:?} is still taken when group {id} needs it",
                key.0, key.1
            )));
        }
        if let Some(old) = self.key.insert(id.to_owned(), key.clone()) {
            self.owner.remove(&old);
        }
        self.owner.insert(key, id.to_owned());
        Ok(())
    }

    fn set_parent(&mut self, id: &str, new_parent: &str) -> Result<()> {
        let old = self.parent.get(id).cloned().unwrap_or_default();
        if old == new_parent {
            return Ok(());
        }
        if !self.can_parent(id, new_parent) {
            return Err(internal(format!(
                "re-parenting group {id} under {new_parent} would break the tree"
            )));
        }
        if let Some(n) = self.children.get_mut(&old) {
            *n = n.saturating_sub(1);
        }
        *self.children.entry(new_parent.to_owned()).or_default() += 1;
        self.parent.insert(id.to_owned(), new_parent.to_owned());
        Ok(())
    }

    fn create(&mut self, g: &Group) -> Result<()> {
        if self.exists(&g.id) || !self.exists(&g.parent) {
            return Err(internal(format!(
                "group {} cannot be created now (exists already, or parent missing)",
                g.id
            )));
        }
        self.parent.insert(g.id.clone(), g.parent.clone());
        *self.children.entry(g.parent.clone()).or_default() += 1;
        self.set_key(&g.id, key_of(g))
    }

    fn delete(&mut self, id: &str) -> Result<()> {
        if id == ROOT_GROUP_ID || self.children.get(id).copied().unwrap_or(0) > 0 {
            return Err(internal(format!(
                "group {id} cannot be deleted now (root, or it still has children)"
            )));
        }
        let parent = self
            .parent
            .remove(id)
            .ok_or_else(|| internal(format!("group {id} is deleted twice")))?;
        if let Some(n) = self.children.get_mut(&parent) {
            *n = n.saturating_sub(1);
        }
        if let Some(key) = self.key.remove(id) {
            self.owner.remove(&key);
        }
        Ok(())
    }
}

/// The group with `id` in `set`, or an internal error (the diff and its
/// sets always agree, so this cannot fail; it just must not panic).
fn lookup<'a>(set: &HashMap<&str, &'a Group>, id: &str, which: &str) -> Result<&'a Group> {
    set.get(id)
        .copied()
        .ok_or_else(|| internal(format!("group {id} is not in the {which} set")))
}

/// Depth of every group in a (validated) tree; the root is 0.
fn depths<'a>(groups: &HashMap<&'a str, &'a Group>) -> HashMap<&'a str, usize> {
    let mut depth: HashMap<&str, usize> = HashMap::with_capacity(groups.len());
    depth.insert(ROOT_GROUP_ID, 0);
    for &id in groups.keys() {
        let mut path: Vec<&str> = Vec::new();
        let mut cur = id;
        let base = loop {
            if let Some(&d) = depth.get(cur) {
                break d;
            }
            path.push(cur);
            match groups.get(cur) {
                Some(g) if path.len() <= groups.len() => cur = g.parent.as_str(),
                // cannot happen in a validated tree; treat as a root child
                _ => break 0,
            }
        };
        for (i, id) in path.iter().rev().enumerate() {
            depth.insert(id, base + i + 1);
        }
    }
    depth
}

fn prefixed(which: &str, err: Error) -> Error {
    Error::new(
        err.kind(),
        format!(
            "the {which} group set is not a valid hierarchy: {}",
            err.message()
        ),
    )
}

/// Plans the API calls that make the passive's groups (`diff.current()`)
/// equal to the desired ones (`diff.desired()`).
///
/// Both sets must be valid hierarchies (see
/// [`validate_hierarchy`](super::model::validate_hierarchy)); otherwise the
/// error has kind [`ErrorKind::InvalidInput`]. Equal sets give an empty plan.
/// See the module documentation for the calls and their order.
pub fn plan(diff: &GroupSetDiff<'_>) -> Result<Plan> {
    check_hierarchy(diff.desired()).map_err(|e| prefixed("desired", e))?;
    check_hierarchy(diff.current()).map_err(|e| prefixed("current", e))?;
    let mut out = Plan::default();
    if diff.is_empty() {
        return Ok(out);
    }

    let desired: HashMap<&str, &Group> =
        diff.desired().iter().map(|g| (g.id.as_str(), *g)).collect();
    let current: HashMap<&str, &Group> =
        diff.current().iter().map(|g| (g.id.as_str(), *g)).collect();
    let desired_depth = depths(&desired);
    let current_depth = depths(&current);
    let removed: HashSet<&str> = diff.removed().iter().map(|g| g.id.as_str()).collect();
    let changed: HashMap<&str, &Group> = diff
        .changed()
        .iter()
        .map(|c| (c.desired.id.as_str(), c.desired))
        .collect();
    // (name, environment) → id in the desired set
    let claimed: HashMap<(&str, &str), &str> = diff
        .desired()
        .iter()
        .map(|g| (g.key(), g.id.as_str()))
        .collect();

    // Removed groups that have a surviving descendant (it must be
    // re-parented before they can go).
    let mut has_survivor: HashSet<&str> = HashSet::new();
    let mut walked: HashSet<&str> = HashSet::new();
    for g in diff.current() {
        if removed.contains(g.id.as_str()) {
            continue;
        }
        let mut cur = g.parent.as_str();
        while cur != ROOT_GROUP_ID && walked.insert(cur) {
            if removed.contains(cur) {
                has_survivor.insert(cur);
            }
            match current.get(cur) {
                Some(p) => cur = p.parent.as_str(),
                None => break,
            }
        }
    }
    let mut current_children: HashMap<&str, Vec<&str>> = HashMap::new();
    for g in diff.current() {
        if !g.is_root() {
            current_children
                .entry(g.parent.as_str())
                .or_default()
                .push(g.id.as_str());
        }
    }

    let mut work = Work::new(diff.current());
    let mut temp_names: HashMap<&str, String> = HashMap::new();
    let mut early_deleted: HashSet<&str> = HashSet::new();
    let mut fully_updated: HashSet<&str> = HashSet::new();

    // 1. Releases. Groups whose current key another desired group claims.
    let mut early_delete: Vec<&str> = Vec::new();
    let mut temp_removed: Vec<&str> = Vec::new();
    let mut renamers: Vec<&str> = Vec::new();
    for g in diff.current() {
        let id = g.id.as_str();
        match claimed.get(&g.key()) {
            Some(&claimer) if claimer != id => {}
            _ => continue,
        }
        if removed.contains(id) {
            if has_survivor.contains(id) {
                temp_removed.push(id);
            } else {
                // the whole subtree goes: delete it now
                let mut stack = vec![id];
                while let Some(x) = stack.pop() {
                    if early_deleted.insert(x) {
                        early_delete.push(x);
                        if let Some(kids) = current_children.get(x) {
                            stack.extend(kids.iter().copied());
                        }
                    }
                }
            }
        } else {
            renamers.push(id);
        }
    }
    let by_depth_desc = |ids: &mut Vec<&str>, depth: &HashMap<&str, usize>| {
        ids.sort_by(|a, b| depth.get(b).cmp(&depth.get(a)).then_with(|| a.cmp(b)));
    };
    by_depth_desc(&mut early_delete, &current_depth);
    for id in &early_delete {
        work.delete(id)?;
        out.operations
            .push(delete_op(lookup(&current, id, "current")?));
    }
    // every key a temporary name must avoid
    let mut taken_names: HashSet<Key> = diff.desired().iter().map(|g| key_of(g)).collect();
    for id in temp_removed {
        let temp = temp_rename(
            &mut work,
            lookup(&current, id, "current")?,
            &mut taken_names,
            &mut out,
            "it is deleted later, once its children have moved",
        )?;
        temp_names.insert(id, temp);
    }
    let renamer_set: HashSet<&str> = renamers.iter().copied().collect();
    let mut resolved: HashSet<&str> = HashSet::new();
    for &start in &renamers {
        if resolved.contains(start) {
            continue;
        }
        // Follow the chain: start wants a key held by h1, which wants a key
        // held by h2, ... until a free key or a loop.
        let mut chain = vec![start];
        let mut in_chain: HashSet<&str> = HashSet::from([start]);
        loop {
            let last = chain[chain.len() - 1];
            let target = key_of(lookup(&desired, last, "desired")?);
            match work.owner(&target) {
                Some(holder) if holder != last => {
                    let holder = current
                        .get_key_value(holder)
                        .map(|(k, _)| *k)
                        .ok_or_else(|| internal(format!("unknown key holder {holder}")))?;
                    if in_chain.contains(holder)
                        || resolved.contains(holder)
                        || !renamer_set.contains(holder)
                    {
                        break;
                    }
                    chain.push(holder);
                    in_chain.insert(holder);
                }
                _ => break,
            }
        }
        for &id in chain.iter().rev() {
            resolved.insert(id);
            let (cur, d) = (
                lookup(&current, id, "current")?,
                lookup(&desired, id, "desired")?,
            );
            if work.key_free_for(&key_of(d), id) && work.can_parent(id, &d.parent) {
                work.set_key(id, key_of(d))?;
                work.set_parent(id, &d.parent)?;
                let body = update_body(cur, &cur.name, d);
                out.operations.push(update_op(d, body));
                fully_updated.insert(id);
            } else {
                let temp = temp_rename(
                    &mut work,
                    cur,
                    &mut taken_names,
                    &mut out,
                    "its name is needed by another group first",
                )?;
                temp_names.insert(id, temp);
            }
        }
    }

    // 2. Creates, parents first.
    let mut creates: Vec<&Group> = diff.added().to_vec();
    creates.sort_by(|a, b| {
        desired_depth
            .get(a.id.as_str())
            .cmp(&desired_depth.get(b.id.as_str()))
            .then_with(|| a.id.cmp(&b.id))
    });
    for g in creates {
        work.create(g)?;
        out.operations.push(Operation {
            kind: OperationKind::Create,
            method: "PUT",
            path: group_path(&g.id),
            group_id: Some(g.id.clone()),
            group_name: Some(g.name.clone()),
            body: Some(group_body(g)),
            note: None,
        });
    }

    // 3. Updates, top-down in the desired tree.
    let mut updates: Vec<&str> = changed
        .keys()
        .copied()
        .filter(|id| !fully_updated.contains(id))
        .collect();
    updates.sort_by(|a, b| {
        desired_depth
            .get(a)
            .cmp(&desired_depth.get(b))
            .then_with(|| a.cmp(b))
    });
    for id in updates {
        let (cur, d) = (
            lookup(&current, id, "current")?,
            lookup(&desired, id, "desired")?,
        );
        let name_now = temp_names.get(id).map_or(cur.name.as_str(), String::as_str);
        if d.is_root() && effective_rule(cur) != effective_rule(d) {
            out.warnings.push(format!(
                "the root group's rule differs ({} here, {} desired) but the classifier \
                 does not allow changing it; left as is",
                rule_text(cur),
                rule_text(d)
            ));
        }
        let body = update_body(cur, name_now, d);
        if body.is_empty() {
            continue;
        }
        work.set_key(id, key_of(d))?;
        work.set_parent(id, &d.parent)?;
        out.operations.push(update_op(d, body));
    }

    // 4. Deletes, leaves first.
    let mut deletes: Vec<&str> = removed
        .iter()
        .copied()
        .filter(|id| !early_deleted.contains(id))
        .collect();
    by_depth_desc(&mut deletes, &current_depth);
    for id in deletes {
        work.delete(id)?;
        out.operations
            .push(delete_op(lookup(&current, id, "current")?));
    }
    Ok(out)
}

/// The single call that turns `current` into `desired` (the same group,
/// matched by id): a `POST` delta carrying only what differs, with explicit
/// `null`s for removed classes, parameters and variables, as [`plan`] sends
/// it. `None` when nothing a write can change differs (the root group's
/// rule is never sent).
pub fn update_operation(current: &Group, desired: &Group) -> Option<Operation> {
    let body = update_body(current, &current.name, desired);
    (!body.is_empty()).then(|| update_op(desired, body))
}

/// The call that deletes `group` (`DELETE /classifier-api/v1/groups/<id>`).
pub fn delete_operation(group: &Group) -> Operation {
    delete_op(group)
}

fn rule_text(g: &Group) -> String {
    effective_rule(g).map_or_else(|| "none".to_owned(), Value::to_string)
}

fn update_op(desired: &Group, body: Map<String, Value>) -> Operation {
    Operation {
        kind: OperationKind::Update,
        method: "POST",
        path: group_path(&desired.id),
        group_id: Some(desired.id.clone()),
        group_name: Some(desired.name.clone()),
        body: Some(Value::Object(body)),
        note: None,
    }
}

fn delete_op(current: &Group) -> Operation {
    Operation {
        kind: OperationKind::Delete,
        method: "DELETE",
        path: group_path(&current.id),
        group_id: Some(current.id.clone()),
        group_name: Some(current.name.clone()),
        body: None,
        note: None,
    }
}

/// Renames `g` to a temporary name unused on both sides and records the
/// call.
fn temp_rename(
    work: &mut Work,
    g: &Group,
    taken: &mut HashSet<Key>,
    out: &mut Plan,
    why: &str,
) -> Result<String> {
    let base = format!("{} (pe_failover: renaming {})", g.name, g.id);
    let mut name = base.clone();
    let mut n = 2;
    loop {
        let key = (name.clone(), g.environment.clone());
        if !taken.contains(&key) && work.owner(&key).is_none() {
            break;
        }
        name = format!("{base} #{n}");
        n += 1;
    }
    let key = (name.clone(), g.environment.clone());
    taken.insert(key.clone());
    work.set_key(&g.id, key)?;
    let mut body = Map::new();
    body.insert("name".into(), Value::String(name.clone()));
    out.operations.push(Operation {
        kind: OperationKind::Update,
        method: "POST",
        path: group_path(&g.id),
        group_id: Some(g.id.clone()),
        group_name: Some(g.name.clone()),
        body: Some(Value::Object(body)),
        note: Some(format!(
            "temporary name: frees {:?} in environment {:?}; {why}",
            g.name, g.environment
        )),
    });
    Ok(name)
}

/// The "replace" mode: one `POST /classifier-api/v1/import-hierarchy` call
/// whose body is the whole desired set (writable form, sorted by id).
///
/// The set must be a valid hierarchy (kind [`ErrorKind::InvalidInput`]
/// otherwise), as the classifier refuses anything else.
pub fn import_hierarchy(desired: &[Group]) -> Result<Operation> {
    let mut sorted: Vec<&Group> = desired.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    check_hierarchy(&sorted).map_err(|e| prefixed("desired", e))?;
    Ok(Operation {
        kind: OperationKind::ImportHierarchy,
        method: "POST",
        path: IMPORT_HIERARCHY_PATH.to_owned(),
        group_id: None,
        group_name: None,
        body: Some(Value::Array(sorted.into_iter().map(group_body).collect())),
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::diff::diff;
    use crate::classifier::model::groups_from_value;
    use crate::classifier::simulator::Simulator;
    use proptest::prelude::*;
    use serde_json::json;

    const ROOT_RULE: &str = r#"["and",["~","name",".*"]]"#;

    fn id(n: u64) -> String {
        if n == 0 {
            ROOT_GROUP_ID.to_owned()
        } else {
            format!("{n:08x}-0000-4000-8000-{n:012x}")
        }
    }

    /// A group with id `n`, parent `p` and name `name`, in production.
    fn g(n: u64, p: u64, name: &str) -> Value {
        let mut v = json!({"id": id(n), "parent": id(p), "name": name,
            "environment": "production", "environment_trumps": false,
            "classes": {}, "variables": {}});
        if n == 0 {
            v["rule"] = serde_json::from_str(ROOT_RULE).unwrap();
        }
        v
    }

    fn set(values: Vec<Value>) -> Vec<Group> {
        groups_from_value(&Value::Array(values)).unwrap()
    }

    /// Plans `current → desired`, applies it in the simulator (checking every
    /// step) and checks the result equals `desired`.
    fn apply(desired: &[Group], current: &[Group]) -> Plan {
        let d = diff(desired, current).unwrap();
        let p = plan(&d).unwrap();
        let mut sim = Simulator::new(current);
        for op in &p.operations {
            if let Err(e) = sim.apply(op) {
                panic!("step failed: {e}\nplan: {:#?}", p.operations);
            }
        }
        let result = sim.groups();
        let after = diff(desired, &result).unwrap();
        assert!(
            after.is_empty(),
            "result differs: {}\nplan: {:#?}",
            serde_json::to_string(&after).unwrap(),
            p.operations
        );
        p
    }

    fn kinds(p: &Plan) -> Vec<(OperationKind, String)> {
        p.operations
            .iter()
            .map(|o| (o.kind, o.group_name.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn identical_sets_need_no_calls() {
        let s = set(vec![g(0, 0, "All Nodes"), g(1, 0, "a"), g(2, 1, "b")]);
        let p = plan(&diff(&s, &s).unwrap()).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.payload_bytes(), 0);
    }

    #[test]
    fn update_delta_carries_only_changes_with_explicit_nulls() {
        let mut cur = g(1, 0, "a");
        cur["classes"] = json!({"keep": {"x": 1, "drop": 2}, "gone": {}});
        cur["variables"] = json!({"v": 1, "w": 2});
        cur["config_data"] = json!({"c": {"k": 1}, "d": {"k": 2}});
        cur["rule"] = json!(["or", ["=", "name", "m1"]]);
        cur["description"] = json!("old");
        let mut des = g(1, 0, "a");
        des["classes"] = json!({"keep": {"x": 1, "new": [1]}, "added": {}});
        des["variables"] = json!({"v": 1, "z": {"a": null}});
        des["config_data"] = json!({"c": {"k": 1}});
        let current = set(vec![g(0, 0, "All Nodes"), cur]);
        let desired = set(vec![g(0, 0, "All Nodes"), des]);
        let p = apply(&desired, &current);
        assert_eq!(p.operations.len(), 1);
        let op = &p.operations[0];
        assert_eq!((op.kind, op.method), (OperationKind::Update, "POST"));
        assert_eq!(op.path, format!("/classifier-api/v1/groups/{}", id(1)));
        assert_eq!(
            op.body.as_ref().unwrap(),
            &json!({"description": "", "rule": null,
                    "classes": {"added": {}, "keep": {"new": [1], "drop": null}, "gone": null},
                    "config_data": {"d": null},
                    "variables": {"z": {"a": null}, "w": null}})
        );
    }

    #[test]
    fn root_rule_is_never_sent() {
        let mut root = g(0, 0, "All Nodes");
        root["rule"] = json!(["and", ["~", "name", "x"]]);
        root["variables"] = json!({"v": 1});
        let desired = set(vec![root]);
        let current = set(vec![g(0, 0, "All Nodes")]);
        let p = plan(&diff(&desired, &current).unwrap()).unwrap();
        assert_eq!(p.operations.len(), 1);
        assert_eq!(p.operations[0].body, Some(json!({"variables": {"v": 1}})));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("root group's rule"));
        // only the rule differs: no call at all
        let mut root = g(0, 0, "All Nodes");
        root["rule"] = json!(["and", ["~", "name", "x"]]);
        let desired = set(vec![root]);
        let p = plan(&diff(&desired, &current).unwrap()).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn creates_parents_first_with_put_and_deletes_leaves_first() {
        let current = set(vec![
            g(0, 0, "All Nodes"),
            g(5, 0, "old"),
            g(6, 5, "old child"),
            g(7, 6, "old grandchild"),
        ]);
        let desired = set(vec![
            g(0, 0, "All Nodes"),
            g(3, 2, "c"),
            g(2, 1, "b"),
            g(1, 0, "a"),
        ]);
        let p = apply(&desired, &current);
        assert_eq!(
            kinds(&p),
            vec![
                (OperationKind::Create, "a".into()),
                (OperationKind::Create, "b".into()),
                (OperationKind::Create, "c".into()),
                (OperationKind::Delete, "old grandchild".into()),
                (OperationKind::Delete, "old child".into()),
                (OperationKind::Delete, "old".into()),
            ]
        );
        let create = &p.operations[0];
        assert_eq!(create.method, "PUT");
        assert_eq!(create.body.as_ref().unwrap()["id"], id(1));
        assert_eq!(p.operations[3].method, "DELETE");
        assert_eq!(p.operations[3].body, None);
    }

    #[test]
    fn surviving_children_move_to_a_new_parent_before_the_old_one_goes() {
        let current = set(vec![g(0, 0, "All Nodes"), g(1, 0, "old"), g(2, 1, "kept")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(3, 0, "new"), g(2, 3, "kept")]);
        let p = apply(&desired, &current);
        assert_eq!(
            kinds(&p),
            vec![
                (OperationKind::Create, "new".into()),
                (OperationKind::Update, "kept".into()),
                (OperationKind::Delete, "old".into()),
            ]
        );
        assert_eq!(p.operations[1].body, Some(json!({"parent": id(3)})));
    }

    #[test]
    fn moving_a_group_under_its_current_descendant() {
        // now: root > a > b > c ; desired: root > c > b > a
        let current = set(vec![
            g(0, 0, "All Nodes"),
            g(1, 0, "a"),
            g(2, 1, "b"),
            g(3, 2, "c"),
        ]);
        let desired = set(vec![
            g(0, 0, "All Nodes"),
            g(3, 0, "c"),
            g(2, 3, "b"),
            g(1, 2, "a"),
        ]);
        let p = apply(&desired, &current);
        assert_eq!(
            kinds(&p),
            vec![
                (OperationKind::Update, "c".into()),
                (OperationKind::Update, "b".into()),
                (OperationKind::Update, "a".into()),
            ]
        );
    }

    #[test]
    fn name_swap_uses_one_temporary_name() {
        let current = set(vec![g(0, 0, "All Nodes"), g(1, 0, "x"), g(2, 0, "y")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(1, 0, "y"), g(2, 0, "x")]);
        let p = apply(&desired, &current);
        assert_eq!(p.operations.len(), 3, "{:#?}", p.operations);
        assert_eq!(p.count(OperationKind::Update), 3);
        assert!(p.operations[0]
            .note
            .as_deref()
            .unwrap_or("")
            .contains("temporary name"));
        // a three-way rotation also costs one extra call
        let current = set(vec![
            g(0, 0, "All Nodes"),
            g(1, 0, "x"),
            g(2, 0, "y"),
            g(3, 0, "z"),
        ]);
        let desired = set(vec![
            g(0, 0, "All Nodes"),
            g(1, 0, "y"),
            g(2, 0, "z"),
            g(3, 0, "x"),
        ]);
        assert_eq!(apply(&desired, &current).operations.len(), 4);
    }

    #[test]
    fn rename_away_before_a_create_takes_the_name() {
        // b renames from "x" to "w"; new group c takes "x"
        let current = set(vec![g(0, 0, "All Nodes"), g(2, 0, "x")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(2, 0, "w"), g(3, 0, "x")]);
        let p = apply(&desired, &current);
        assert_eq!(
            kinds(&p),
            vec![
                (OperationKind::Update, "w".into()),
                (OperationKind::Create, "x".into())
            ]
        );
        // ... even when the renamed group moves under the new one
        let desired = set(vec![g(0, 0, "All Nodes"), g(2, 3, "w"), g(3, 0, "x")]);
        let p = apply(&desired, &current);
        assert_eq!(p.operations.len(), 3, "{:#?}", p.operations);
    }

    #[test]
    fn deleted_group_frees_its_name_first() {
        // a deleted leaf holding a name: deleted before the create
        let current = set(vec![g(0, 0, "All Nodes"), g(1, 0, "x")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(2, 0, "x")]);
        let p = apply(&desired, &current);
        assert_eq!(
            kinds(&p),
            vec![
                (OperationKind::Delete, "x".into()),
                (OperationKind::Create, "x".into())
            ]
        );
        // a deleted group whose child survives under the new group: renamed
        // out of the way, deleted at the end
        let current = set(vec![g(0, 0, "All Nodes"), g(1, 0, "x"), g(4, 1, "kid")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(2, 0, "x"), g(4, 2, "kid")]);
        let p = apply(&desired, &current);
        assert_eq!(p.operations.len(), 4, "{:#?}", p.operations);
        assert_eq!(p.operations[3].kind, OperationKind::Delete);
    }

    #[test]
    fn same_name_in_another_environment_is_no_conflict() {
        let mut dev = g(2, 0, "x");
        dev["environment"] = json!("dev");
        let current = set(vec![g(0, 0, "All Nodes"), g(1, 0, "x")]);
        let desired = set(vec![g(0, 0, "All Nodes"), g(1, 0, "x"), dev]);
        let p = apply(&desired, &current);
        assert_eq!(kinds(&p), vec![(OperationKind::Create, "x".into())]);
    }

    #[test]
    fn invalid_sets_are_refused() {
        let good = set(vec![g(0, 0, "All Nodes")]);
        let cyclic = set(vec![g(0, 0, "All Nodes"), g(1, 2, "a"), g(2, 1, "b")]);
        let err = plan(&diff(&cyclic, &good).unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("desired"), "{err}");
        let no_root = set(vec![g(1, 1, "a")]);
        assert!(plan(&diff(&no_root, &good).unwrap()).is_err());
        let err = plan(&diff(&good, &no_root).unwrap()).unwrap_err();
        assert!(err.to_string().contains("current"), "{err}");
        assert!(import_hierarchy(&cyclic).is_err());
    }

    #[test]
    fn import_hierarchy_is_one_call_with_the_whole_set() {
        let mut a = g(1, 0, "a");
        a["serial_number"] = json!(3);
        let desired = set(vec![a, g(0, 0, "All Nodes")]);
        let op = import_hierarchy(&desired).unwrap();
        assert_eq!(
            (op.kind, op.method, op.path.as_str()),
            (
                OperationKind::ImportHierarchy,
                "POST",
                IMPORT_HIERARCHY_PATH
            )
        );
        let body = op.body.as_ref().unwrap().as_array().unwrap();
        assert_eq!(body.len(), 2);
        assert_eq!(body[0]["id"], ROOT_GROUP_ID);
        assert!(body[1].get("serial_number").is_none());
        let mut sim = Simulator::new(&set(vec![g(0, 0, "All Nodes"), g(9, 0, "z")]));
        sim.apply(&op).unwrap();
        assert!(diff(&desired, &sim.groups()).unwrap().is_empty());
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["kind"], "import_hierarchy");
    }

    /// splitmix64: a small deterministic generator for random trees.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())].clone()
        }
    }

    /// A random valid hierarchy over ids `0..=universe` (each non-root id
    /// present with 70% chance). Names come from a small pool so renames,
    /// swaps and takeovers are frequent.
    fn random_set(seed: u64, universe: u64) -> Vec<Group> {
        let mut rng = Rng(seed);
        let mut ids: Vec<u64> = (1..=universe).filter(|_| rng.chance(70)).collect();
        for i in (1..ids.len()).rev() {
            let j = rng.below(i + 1);
            ids.swap(i, j);
        }
        let mut keys: Vec<(&str, &str)> = Vec::new();
        for name in ["All Nodes", "a", "b", "c", "d", "e"] {
            for env in ["production", "dev"] {
                keys.push((name, env));
            }
        }
        for i in (1..keys.len()).rev() {
            let j = rng.below(i + 1);
            keys.swap(i, j);
        }
        let mut placed: Vec<u64> = vec![0];
        let mut values = Vec::new();
        for (k, n) in std::iter::once(0).chain(ids).enumerate() {
            let parent = if n == 0 { 0 } else { rng.pick(&placed) };
            let mut v = g(n, parent, keys[k].0);
            v["environment"] = json!(keys[k].1);
            v["environment_trumps"] = json!(rng.chance(30));
            match rng.below(4) {
                0 => {}
                1 => v["description"] = json!(""),
                2 => v["description"] = json!("one"),
                _ => v["description"] = json!("two"),
            }
            if n != 0 {
                match rng.below(4) {
                    0 => {}
                    1 => v["rule"] = json!(["or", ["=", "name", "m1.example"]]),
                    2 => v["rule"] = json!(["or", ["=", "name", "m2.example"]]),
                    _ => v["rule"] = json!(["and", ["~", ["fact", "os"], "x"]]),
                }
            }
            let mut classes = Map::new();
            for class in ["c1", "c2", "c3"] {
                if rng.chance(50) {
                    let mut params = Map::new();
                    if rng.chance(50) {
                        params.insert(
                            "p".into(),
                            rng.pick(&[
                                json!(1),
                                json!("x"),
                                json!([1, "m1.example"]),
                                json!({"k": null}),
                            ]),
                        );
                    }
                    if rng.chance(30) {
                        params.insert("q".into(), json!(true));
                    }
                    classes.insert(class.into(), Value::Object(params));
                }
            }
            v["classes"] = Value::Object(classes);
            match rng.below(4) {
                0 => {}
                1 => v["config_data"] = json!({}),
                2 => v["config_data"] = json!({"c1": {"k": 1}}),
                _ => v["config_data"] = json!({"c1": {"k": 2}, "c2": {"j": [true]}}),
            }
            let mut vars = Map::new();
            if rng.chance(50) {
                vars.insert("v1".into(), rng.pick(&[json!(1), json!("s")]));
            }
            if rng.chance(30) {
                vars.insert("v2".into(), json!({"o": [1, 2]}));
            }
            v["variables"] = Value::Object(vars);
            values.push(v);
            placed.push(n);
        }
        let groups = set(values);
        crate::classifier::model::validate_hierarchy(&groups).unwrap();
        groups
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Applying plan(diff(from, to)) to `to` yields `from`, and the
        /// classifier accepts every step.
        #[test]
        fn plan_turns_current_into_desired(a in any::<u64>(), b in any::<u64>(), universe in 1u64..9) {
            let from = random_set(a, universe);
            let to = random_set(b, universe);
            let p = apply(&from, &to);
            let d = diff(&from, &to).unwrap();
            // never more calls than changes, plus one temporary name per
            // changed or removed group at most
            prop_assert!(p.count(OperationKind::Create) == d.added().len());
            prop_assert!(p.count(OperationKind::Delete) == d.removed().len());
            prop_assert!(p.count(OperationKind::Update) <= 2 * d.changed().len() + d.removed().len());
            for op in &p.operations {
                if op.group_id.as_deref() == Some(ROOT_GROUP_ID) {
                    prop_assert!(op.body.as_ref().and_then(|b| b.get("rule")).is_none());
                }
            }
        }

        /// Equal sets (in any order, with read-only keys) plan nothing.
        #[test]
        fn equal_sets_plan_nothing(a in any::<u64>(), universe in 1u64..9) {
            let from = random_set(a, universe);
            let mut to: Vec<Group> = from.iter().rev().cloned().collect();
            for (i, g) in to.iter_mut().enumerate() {
                g.serial_number = Some(i as u64);
            }
            let p = plan(&diff(&from, &to).unwrap()).unwrap();
            prop_assert!(p.is_empty());
        }
    }
}
