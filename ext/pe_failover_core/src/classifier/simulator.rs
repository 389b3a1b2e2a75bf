//! Test-only: an in-memory classifier that applies [`Operation`]s the way
//! the real one does (nc-api §3.4–§3.7) and checks its invariants after
//! every step (§6: parent exists, no cycle, unique `(name, environment)`, no
//! delete with children, the root's rule never changes).

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::{check_hierarchy, is_valid_group_id, ClassMap, Group, Params, ROOT_GROUP_ID};
use super::plan::{Operation, GROUPS_PATH, IMPORT_HIERARCHY_PATH};

/// The classifier's group store, in memory.
pub(crate) struct Simulator {
    groups: BTreeMap<String, Group>,
    root_rule: Option<Value>,
    /// Number of write calls applied.
    pub(crate) writes: usize,
}

impl Simulator {
    /// Starts from `groups`, which must be a valid hierarchy.
    pub(crate) fn new(groups: &[Group]) -> Simulator {
        let sim = Simulator {
            groups: groups
                .iter()
                .map(|g| (g.id.clone(), g.writable()))
                .collect(),
            root_rule: groups
                .iter()
                .find(|g| g.is_root())
                .and_then(|g| g.rule.clone()),
            writes: 0,
        };
        sim.check()
            .expect("the simulator starts from a valid hierarchy");
        sim
    }

    /// The groups now, sorted by id.
    pub(crate) fn groups(&self) -> Vec<Group> {
        self.groups.values().cloned().collect()
    }

    fn check(&self) -> Result<(), String> {
        let refs: Vec<&Group> = self.groups.values().collect();
        check_hierarchy(&refs).map_err(|e| e.to_string())?;
        let root = &self.groups[ROOT_GROUP_ID];
        if root.rule != self.root_rule {
            return Err("the root group's rule changed".into());
        }
        Ok(())
    }

    /// Applies one call; on error the store is unchanged.
    pub(crate) fn apply(&mut self, op: &Operation) -> Result<(), String> {
        let before = self.groups.clone();
        let result = self.apply_inner(op).and_then(|()| self.check());
        if result.is_err() {
            self.groups = before;
        } else {
            self.writes += 1;
        }
        result.map_err(|e| format!("{} {}: {e}", op.method, op.path))
    }

    fn apply_inner(&mut self, op: &Operation) -> Result<(), String> {
        if op.path == IMPORT_HIERARCHY_PATH {
            if op.method != "POST" {
                return Err("405".into());
            }
            let body = op.body.as_ref().ok_or("import needs a body")?;
            let groups = super::model::groups_from_value(body).map_err(|e| e.to_string())?;
            if let Some(g) = groups.iter().find(|g| g.is_root()) {
                if g.rule != self.root_rule {
                    return Err("import changes the root rule".into());
                }
            }
            self.groups = groups.into_iter().map(|g| (g.id.clone(), g)).collect();
            return Ok(());
        }
        let id = op
            .path
            .strip_prefix(GROUPS_PATH)
            .and_then(|p| p.strip_prefix('/'))
            .filter(|id| is_valid_group_id(id))
            .ok_or("400 malformed-uuid")?
            .to_owned();
        match op.method {
            "PUT" => {
                let mut body = op.body.clone().ok_or("PUT needs a body")?;
                let obj = body.as_object_mut().ok_or("body is not an object")?;
                match obj.get("id") {
                    None => {
                        obj.insert("id".into(), Value::String(id.clone()));
                    }
                    Some(v) if v.as_str() == Some(id.as_str()) => {}
                    Some(_) => return Err("400 conflicting-ids".into()),
                }
                let mut group = Group::from_value(&body).map_err(|e| e.to_string())?;
                clean(&mut group);
                if let Some(old) = self.groups.get(&id) {
                    if old.is_root() && group.rule != old.rule {
                        return Err("422 root-rule-edit".into());
                    }
                }
                self.groups.insert(id, group);
                Ok(())
            }
            "POST" => {
                let body = op
                    .body
                    .as_ref()
                    .and_then(Value::as_object)
                    .ok_or("delta must be an object")?;
                let group = self.groups.get_mut(&id).ok_or("404 not-found")?;
                if group.is_root() && body.contains_key("rule") {
                    return Err("422 root-rule-edit".into());
                }
                for (key, value) in body {
                    match key.as_str() {
                        "id" if value.as_str() == Some(id.as_str()) => {}
                        "name" => group.name = string(value)?,
                        "environment" => group.environment = string(value)?,
                        "parent" => group.parent = string(value)?,
                        "description" => group.description = Some(string(value)?),
                        "environment_trumps" => {
                            group.environment_trumps =
                                value.as_bool().ok_or("400 schema-violation")?
                        }
                        "rule" => {
                            group.rule = match value {
                                Value::Null => None,
                                Value::Array(_) => Some(value.clone()),
                                _ => return Err("400 schema-violation: rule".into()),
                            }
                        }
                        "classes" => merge_classes(&mut group.classes, value)?,
                        "config_data" => {
                            let mut cd = group.config_data.take().unwrap_or_default();
                            merge_classes(&mut cd, value)?;
                            group.config_data = Some(cd);
                        }
                        "variables" => merge_params(&mut group.variables, value)?,
                        other => return Err(format!("400 disallowed-key {other}")),
                    }
                }
                clean(group);
                Ok(())
            }
            "DELETE" => {
                if id == ROOT_GROUP_ID {
                    return Err("500 cannot delete the root".into());
                }
                if !self.groups.contains_key(&id) {
                    return Err("404 not-found".into());
                }
                if self.groups.values().any(|g| g.parent == id && g.id != id) {
                    return Err("422 children-present".into());
                }
                self.groups.remove(&id);
                Ok(())
            }
            other => Err(format!("405 {other}")),
        }
    }
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("400 schema-violation: {v}"))
}

/// What the classifier stores: no `null` parameters or variables, no
/// `config_data` class without data, no empty `config_data`.
fn clean(group: &mut Group) {
    for params in group.classes.values_mut() {
        params.retain(|_, v| !v.is_null());
    }
    group.variables.retain(|_, v| !v.is_null());
    if let Some(cd) = group.config_data.as_mut() {
        for params in cd.values_mut() {
            params.retain(|_, v| !v.is_null());
        }
        cd.retain(|_, p| !p.is_empty());
    }
    if group.config_data.as_ref().is_some_and(|cd| cd.is_empty()) {
        group.config_data = None;
    }
}

fn merge_params(params: &mut Params, delta: &Value) -> Result<(), String> {
    let delta = delta
        .as_object()
        .ok_or("400 schema-violation: not an object")?;
    for (k, v) in delta {
        if v.is_null() {
            params.remove(k);
        } else {
            params.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

fn merge_classes(classes: &mut ClassMap, delta: &Value) -> Result<(), String> {
    let delta = delta
        .as_object()
        .ok_or("400 schema-violation: not an object")?;
    for (class, params) in delta {
        if params.is_null() {
            classes.remove(class);
        } else {
            merge_params(classes.entry(class.clone()).or_default(), params)?;
        }
    }
    Ok(())
}
