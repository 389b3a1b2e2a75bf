//! Managing single groups by name, as the `pe_failover_node_group` Puppet
//! type does: create or update a group from the properties it manages,
//! delete it.
//!
//! A [`GroupSpec`] names the group and holds only the properties to manage;
//! `None` leaves a property as it is. [`upsert_group`] reads the live groups,
//! resolves the parent by name, and makes at most one write call: a create
//! (`POST /v1/groups`, the new id taken from the `303`'s `Location`) or a
//! delta update carrying only what differs (removed classes, parameters and
//! variables as explicit `null`s, nc-api §7.3). Equal means no call.

use serde::Serialize;
use serde_json::{Map, Value};

use super::diff::{changed_fields, Field};
use super::model::{ClassMap, Group, Variables, ROOT_GROUP_ID};
use super::plan::{delete_operation, update_operation, Operation, OperationKind, GROUPS_PATH};
use super::sync::ClassifierApi;
use crate::error::{Error, ErrorKind, Result};

/// The properties of a group to manage; `None` leaves one alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// The parent group's name (default on create: `All Nodes`).
    pub parent: Option<String>,
    /// The environment (default on create: `production`). Also picks the
    /// group when the name exists in several environments.
    pub environment: Option<String>,
    /// Whether the group's environment wins (default on create: false).
    pub environment_trumps: Option<bool>,
    /// The rule: `Some(None)` removes it.
    pub rule: Option<Option<Value>>,
    /// Classes and parameters, in full: classes or parameters not listed
    /// are removed.
    pub classes: Option<ClassMap>,
    /// Variables, in full.
    pub variables: Option<Variables>,
    /// The description: `Some("")` removes it.
    pub description: Option<String>,
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

impl GroupSpec {
    /// Reads a spec from a JSON object with the keys `name` (required),
    /// `parent`, `environment`, `environment_trumps`, `rule`, `classes`,
    /// `variables` and `description`. An absent key is not managed; `rule`
    /// `null` or `[]` removes the rule.
    pub fn from_value(value: &Value) -> Result<GroupSpec> {
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("a group spec must be a JSON object".into()))?;
        const KEYS: [&str; 8] = [
            "name",
            "parent",
            "environment",
            "environment_trumps",
            "rule",
            "classes",
            "variables",
            "description",
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown key {k:?} in a group spec (known: {})",
                KEYS.join(", ")
            )));
        }
        let string = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(format!("`{key}` must be a string"))),
            }
        };
        let name = string("name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("a group spec needs a non-empty `name`".into()))?;
        let environment_trumps = match obj.get("environment_trumps") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(invalid("`environment_trumps` must be a boolean".into())),
        };
        let rule = match obj.get("rule") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::Array(a)) if a.is_empty() => Some(None),
            Some(v @ Value::Array(_)) => Some(Some(v.clone())),
            Some(_) => {
                return Err(invalid(
                    "`rule` must be an array (nc-api §5) or null".into(),
                ))
            }
        };
        let classes = match obj.get("classes") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                let mut classes = ClassMap::new();
                for (class, params) in map {
                    let params = match params {
                        Value::Null => Default::default(),
                        Value::Object(p) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        _ => {
                            return Err(invalid(format!(
                                "`classes.{class}` must be an object of parameters"
                            )))
                        }
                    };
                    classes.insert(class.clone(), params);
                }
                Some(classes)
            }
            Some(_) => return Err(invalid("`classes` must be an object".into())),
        };
        let variables = match obj.get("variables") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Some(_) => return Err(invalid("`variables` must be an object".into())),
        };
        Ok(GroupSpec {
            name,
            parent: string("parent")?,
            environment: string("environment")?,
            environment_trumps,
            rule,
            classes,
            variables,
            description: string("description")?,
        })
    }
}

/// The group named `name` in `groups`. With several groups of that name (in
/// different environments), `environment` picks one; without it, that is
/// an error naming the environments.
pub fn find_by_name<'a>(
    groups: &'a [Group],
    name: &str,
    environment: Option<&str>,
) -> Result<Option<&'a Group>> {
    let found: Vec<&Group> = groups.iter().filter(|g| g.name == name).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => {
            if let Some(env) = environment {
                if let Some(g) = many.iter().find(|g| g.environment == env) {
                    return Ok(Some(g));
                }
            }
            let envs: Vec<&str> = many.iter().map(|g| g.environment.as_str()).collect();
            Err(invalid(format!(
                "there are {} groups named {name:?} (in environments {}); say which \
                 environment is meant",
                many.len(),
                envs.join(", ")
            )))
        }
    }
}

/// What [`upsert_group`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsertAction {
    /// The group did not exist and was (or, with noop, would be) created.
    Created,
    /// The group differed and was (or would be) updated.
    Updated,
    /// The group already matched: no call.
    Unchanged,
}

/// The result of [`upsert_group`] or [`delete_group`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ManageOutcome {
    /// What happened.
    pub action: UpsertAction,
    /// The group's id (`None` for a group created with noop, or absent).
    pub id: Option<String>,
    /// The fields that differed (updates), in field order.
    pub changed: Vec<Field>,
    /// The call made (or, with noop, the call a real run would make).
    pub operation: Option<Operation>,
    /// Whether the call was made.
    pub written: bool,
}

/// Creates or updates the group `spec` names; see the module docs.
///
/// `spec.parent` is resolved by name among the live groups (an unknown
/// parent is [`ErrorKind::NotFound`]). With `noop`, the call is returned
/// but not made.
pub fn upsert_group(
    api: &dyn ClassifierApi,
    spec: &GroupSpec,
    noop: bool,
) -> Result<ManageOutcome> {
    let groups = api.groups()?;
    let host = api.host().to_owned();
    let parent_id = match &spec.parent {
        None => None,
        Some(parent) => Some(
            find_by_name(&groups, parent, None)
                .map_err(|e| e.with_host(host.clone()))?
                .map(|g| g.id.clone())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "the parent group {parent:?} of group {:?} does not exist",
                            spec.name
                        ),
                    )
                    .with_host(host.clone())
                    .with_hint("create the parent group first")
                })?,
        ),
    };
    let existing = find_by_name(&groups, &spec.name, spec.environment.as_deref())
        .map_err(|e| e.with_host(host.clone()))?;
    let outcome = match existing {
        None => {
            let body = create_body(spec, parent_id.as_deref().unwrap_or(ROOT_GROUP_ID));
            let op = Operation {
                kind: OperationKind::Create,
                method: "POST",
                path: GROUPS_PATH.to_owned(),
                group_id: None,
                group_name: Some(spec.name.clone()),
                body: Some(body),
                note: None,
            };
            ManageOutcome {
                action: UpsertAction::Created,
                id: None,
                changed: Vec::new(),
                operation: Some(op),
                written: false,
            }
        }
        Some(current) => {
            let desired = apply_spec(current, spec, parent_id.as_deref());
            let changed = changed_fields(&desired, current);
            let operation = update_operation(current, &desired);
            ManageOutcome {
                action: if operation.is_some() {
                    UpsertAction::Updated
                } else {
                    UpsertAction::Unchanged
                },
                id: Some(current.id.clone()),
                changed,
                operation,
                written: false,
            }
        }
    };
    execute(api, outcome, noop)
}

/// Deletes the group named `name` (in `environment` when several share the
/// name). An absent group is [`UpsertAction::Unchanged`]. A group with
/// children is refused ([`ErrorKind::Refused`]) naming them: deletes never
/// cascade (nc-api §3.6).
pub fn delete_group(
    api: &dyn ClassifierApi,
    name: &str,
    environment: Option<&str>,
    noop: bool,
) -> Result<ManageOutcome> {
    let groups = api.groups()?;
    let host = api.host().to_owned();
    let Some(group) =
        find_by_name(&groups, name, environment).map_err(|e| e.with_host(host.clone()))?
    else {
        return Ok(ManageOutcome {
            action: UpsertAction::Unchanged,
            id: None,
            changed: Vec::new(),
            operation: None,
            written: false,
        });
    };
    if group.is_root() {
        return Err(Error::new(
            ErrorKind::Refused,
            "the root group \"All Nodes\" cannot be deleted",
        )
        .with_host(host));
    }
    let children: Vec<&str> = groups
        .iter()
        .filter(|g| g.parent == group.id && !g.is_root())
        .map(|g| g.name.as_str())
        .collect();
    if !children.is_empty() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "cannot delete group {name:?}: it has children ({}); the classifier never \
                 deletes a subtree",
                children.join(", ")
            ),
        )
        .with_host(host)
        .with_hint("delete or re-parent the children first"));
    }
    let outcome = ManageOutcome {
        action: UpsertAction::Updated,
        id: Some(group.id.clone()),
        changed: Vec::new(),
        operation: Some(delete_operation(group)),
        written: false,
    };
    execute(api, outcome, noop)
}

fn execute(
    api: &dyn ClassifierApi,
    mut outcome: ManageOutcome,
    noop: bool,
) -> Result<ManageOutcome> {
    if noop {
        return Ok(outcome);
    }
    if let Some(op) = &outcome.operation {
        let done = api.execute(op)?;
        if outcome.id.is_none() {
            outcome.id = done.group_id;
        }
        outcome.written = true;
    }
    Ok(outcome)
}

/// The `POST /v1/groups` body for a new group (defaults filled in, as the
/// classifier would).
fn create_body(spec: &GroupSpec, parent_id: &str) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), Value::String(spec.name.clone()));
    body.insert(
        "environment".into(),
        Value::String(
            spec.environment
                .clone()
                .unwrap_or_else(|| "production".into()),
        ),
    );
    body.insert(
        "environment_trumps".into(),
        Value::Bool(spec.environment_trumps.unwrap_or(false)),
    );
    body.insert("parent".into(), Value::String(parent_id.to_owned()));
    if let Some(Some(rule)) = &spec.rule {
        body.insert("rule".into(), rule.clone());
    }
    let classes = spec.classes.clone().unwrap_or_default();
    body.insert(
        "classes".into(),
        Value::Object(
            classes
                .into_iter()
                .map(|(c, p)| (c, Value::Object(p.into_iter().collect())))
                .collect(),
        ),
    );
    body.insert(
        "variables".into(),
        Value::Object(
            spec.variables
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        ),
    );
    if let Some(d) = spec.description.as_deref().filter(|d| !d.is_empty()) {
        body.insert("description".into(), Value::String(d.to_owned()));
    }
    Value::Object(body)
}

/// `current` with the managed properties of `spec` applied.
fn apply_spec(current: &Group, spec: &GroupSpec, parent_id: Option<&str>) -> Group {
    let mut g = current.writable();
    if let Some(p) = parent_id {
        if !current.is_root() {
            g.parent = p.to_owned();
        }
    }
    if let Some(env) = &spec.environment {
        g.environment = env.clone();
    }
    if let Some(t) = spec.environment_trumps {
        g.environment_trumps = t;
    }
    if let Some(rule) = &spec.rule {
        g.rule = rule.clone();
    }
    if let Some(classes) = &spec.classes {
        g.classes = classes.clone();
    }
    if let Some(vars) = &spec.variables {
        g.variables = vars.clone();
    }
    if let Some(d) = &spec.description {
        g.description = Some(d.clone());
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::client::{ClassCatalog, Executed};
    use crate::classifier::model::groups_from_value;
    use crate::classifier::simulator::Simulator;
    use serde_json::json;
    use std::cell::RefCell;
    use std::time::Duration;

    struct Fake(RefCell<Simulator>, RefCell<u64>);

    impl ClassifierApi for Fake {
        fn host(&self) -> &str {
            "fake:4433"
        }
        fn groups(&self) -> Result<Vec<Group>> {
            Ok(self.0.borrow().groups())
        }
        fn update_classes(&self) -> Result<()> {
            Ok(())
        }
        fn class_catalog(&self) -> Result<ClassCatalog> {
            Ok(ClassCatalog::new())
        }
        fn execute(&self, op: &Operation) -> Result<Executed> {
            // a POST create gets an id from the "server"
            let mut op = op.clone();
            let mut new_id = None;
            if op.method == "POST" && op.path == GROUPS_PATH {
                *self.1.borrow_mut() += 1;
                let id = format!("dddddddd-0000-4000-8000-{:012x}", *self.1.borrow());
                op.method = "PUT";
                op.path = format!("{GROUPS_PATH}/{id}");
                op.body.as_mut().unwrap()["id"] = json!(id);
                new_id = Some(id);
            }
            self.0
                .borrow_mut()
                .apply(&op)
                .map_err(|e| Error::new(ErrorKind::Api, e))?;
            Ok(Executed {
                status: 200,
                group_id: new_id.or(op.group_id.clone()),
                attempts: 1,
                elapsed: Duration::ZERO,
            })
        }
    }

    fn fake() -> Fake {
        let root = json!({"id": ROOT_GROUP_ID, "parent": ROOT_GROUP_ID, "name": "All Nodes",
            "environment": "production", "environment_trumps": false,
            "rule": ["and", ["~", "name", ".*"]], "classes": {}, "variables": {}});
        let groups = groups_from_value(&json!([root])).unwrap();
        Fake(RefCell::new(Simulator::new(&groups)), RefCell::new(0))
    }

    fn spec(v: Value) -> GroupSpec {
        GroupSpec::from_value(&v).unwrap()
    }

    #[test]
    fn create_then_nothing_then_minimal_update() {
        let api = fake();
        let s = spec(
            json!({"name": "pe_failover", "rule": ["and", ["~", ["fact", "pe_failover_mode"], "^(active|passive)$"]],
                            "classes": {"a": {"x": 1}, "b": {}}, "variables": {"v": "1"}}),
        );
        let out = upsert_group(&api, &s, false).unwrap();
        assert_eq!(out.action, UpsertAction::Created);
        assert!(out.written);
        let id = out.id.clone().unwrap();
        let again = upsert_group(&api, &s, false).unwrap();
        assert_eq!(again.action, UpsertAction::Unchanged);
        assert_eq!(again.id.as_deref(), Some(id.as_str()));
        assert!(again.operation.is_none());

        let child = spec(json!({"name": "pe_failover-active", "parent": "pe_failover"}));
        let out = upsert_group(&api, &child, false).unwrap();
        assert_eq!(out.action, UpsertAction::Created);
        let kid = api
            .groups()
            .unwrap()
            .into_iter()
            .find(|g| g.name == "pe_failover-active")
            .unwrap();
        assert_eq!(kid.parent, id);

        // class b removed, parameter changed: one delta with a null
        let s2 = spec(json!({"name": "pe_failover", "classes": {"a": {"x": 2}}}));
        let out = upsert_group(&api, &s2, true).unwrap();
        assert_eq!(out.action, UpsertAction::Updated);
        assert!(!out.written);
        assert_eq!(out.changed, vec![Field::Classes]);
        assert_eq!(
            out.operation.as_ref().unwrap().body,
            Some(json!({"classes": {"a": {"x": 2}, "b": null}}))
        );
        let out = upsert_group(&api, &s2, false).unwrap();
        assert!(out.written);
        let g = api
            .groups()
            .unwrap()
            .into_iter()
            .find(|g| g.name == "pe_failover")
            .unwrap();
        assert_eq!(g.classes.len(), 1);
        assert_eq!(g.variables.len(), 1, "unmanaged variables are left alone");
    }

    #[test]
    fn deletes_leaves_and_refuses_parents() {
        let api = fake();
        upsert_group(&api, &spec(json!({"name": "p"})), false).unwrap();
        upsert_group(&api, &spec(json!({"name": "c", "parent": "p"})), false).unwrap();
        let err = delete_group(&api, "p", None, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused);
        assert!(err.to_string().contains("children (c)"), "{err}");
        assert!(delete_group(&api, "c", None, false).unwrap().written);
        assert!(delete_group(&api, "p", None, false).unwrap().written);
        let gone = delete_group(&api, "p", None, false).unwrap();
        assert_eq!(gone.action, UpsertAction::Unchanged);
        assert!(delete_group(&api, "All Nodes", None, false).is_err());
    }

    #[test]
    fn unknown_parent_and_bad_specs() {
        let api = fake();
        let err =
            upsert_group(&api, &spec(json!({"name": "x", "parent": "nope"})), false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("\"nope\""), "{err}");
        for bad in [
            json!([]),
            json!({}),
            json!({"name": ""}),
            json!({"name": "x", "purge": 1}),
            json!({"name": "x", "rule": "r"}),
            json!({"name": "x", "classes": {"a": 1}}),
        ] {
            assert!(GroupSpec::from_value(&bad).is_err(), "{bad}");
        }
        assert_eq!(spec(json!({"name": "x", "rule": []})).rule, Some(None));
    }

    #[test]
    fn names_in_several_environments_need_the_environment() {
        let root = json!({"id": ROOT_GROUP_ID, "parent": ROOT_GROUP_ID, "name": "All Nodes",
            "environment": "production", "environment_trumps": false, "classes": {}, "variables": {}});
        let a = json!({"id": "aaaaaaaa-0000-4000-8000-000000000001", "parent": ROOT_GROUP_ID, "name": "x",
            "environment": "production", "environment_trumps": false, "classes": {}, "variables": {}});
        let mut b = a.clone();
        b["id"] = json!("bbbbbbbb-0000-4000-8000-000000000002");
        b["environment"] = json!("dev");
        let groups = groups_from_value(&json!([root, a, b])).unwrap();
        assert!(find_by_name(&groups, "x", None).is_err());
        assert_eq!(
            find_by_name(&groups, "x", Some("dev"))
                .unwrap()
                .unwrap()
                .environment,
            "dev"
        );
        assert!(find_by_name(&groups, "y", None).unwrap().is_none());
    }
}
