//! The classifier logic against real captured data (`spec/fixtures/nc/`):
//! a PE 2016 `GET /v1/groups` dump of `master1.puppet.vm`, the same dump as
//! ncio's pretty-printed backup, what `ncio transform --hostname
//! master1.puppet.vm:master2.puppet.vm` made of it, and a PE 3.x group.

use std::path::PathBuf;

use pe_failover_core::classifier::{
    self, canonical_digest, canonical_json, parse_dump, parse_group, transform, Field,
    GuardOptions, Operation, OperationKind,
};
use serde_json::json;

const MASTER1: &str = "master1.puppet.vm";
const MASTER2: &str = "master2.puppet.vm";

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../spec/fixtures/nc")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn master1() -> Vec<classifier::Group> {
    parse_dump(&fixture("ncio-pe2016-groups-master1.min.json")).unwrap()
}

fn ncio_transformed() -> Vec<classifier::Group> {
    parse_dump(&fixture("ncio-pe2016-groups-master2-transformed.json")).unwrap()
}

#[test]
fn all_fixtures_parse() {
    for name in [
        "ncio-pe2016-groups-master1.min.json",
        "ncio-pe2016-groups-master1.pretty.json",
        "ncio-pe2016-groups-master2-transformed.json",
    ] {
        let groups = parse_dump(&fixture(name)).unwrap();
        assert_eq!(groups.len(), 12, "{name}");
        classifier::validate_hierarchy(&groups).unwrap();
        assert!(groups.iter().any(|g| g.is_root()));
    }
    let group = parse_group(&fixture("puppetclassify-pe3x-group-pe-master.json")).unwrap();
    assert_eq!(group.name, "PE Master");
    assert_eq!(group.classes.len(), 5);
    // values of every JSON type survive a round trip
    let dump = master1();
    let infra = dump.iter().find(|g| g.name == "PE Infrastructure").unwrap();
    let pe = &infra.classes["puppet_enterprise"];
    assert_eq!(pe["database_ssl"], json!(true));
    assert_eq!(pe["mcollective_middleware_hosts"], json!([MASTER1]));
    assert_eq!(pe["database_port"], json!("5432"));
    let again: Vec<classifier::Group> =
        serde_json::from_str(&serde_json::to_string(&dump).unwrap()).unwrap();
    assert_eq!(again, dump);
}

#[test]
fn compact_and_pretty_dumps_have_the_same_canonical_digest() {
    let min = master1();
    let pretty = parse_dump(&fixture("ncio-pe2016-groups-master1.pretty.json")).unwrap();
    assert_eq!(canonical_json(&min), canonical_json(&pretty));
    assert_eq!(canonical_digest(&min), canonical_digest(&pretty));
    assert_ne!(
        canonical_digest(&min),
        canonical_digest(&ncio_transformed())
    );
}

#[test]
fn transform_makes_every_rewrite_ncio_makes_and_no_other() {
    let (ours, report) = transform(&master1(), &[(MASTER1, MASTER2)]).unwrap();
    // ncio's output is pretty-printed: compare canonical forms
    assert_eq!(canonical_json(&ours), canonical_json(&ncio_transformed()));

    // exactly these values were rewritten; in this dump the host appears
    // only where ncio rewrites it (pins and puppet_enterprise parameters), so
    // our wider reach (all classes, config_data, variables) adds nothing here
    let mut got: Vec<(String, String)> = report
        .rewrites
        .iter()
        .map(|r| (r.group_name.clone(), r.location.clone()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        "PE ActiveMQ Broker",
        "PE Certificate Authority",
        "PE Console",
        "PE Master",
        "PE Orchestrator",
        "PE PuppetDB",
    ]
    .iter()
    .map(|g| (g.to_string(), "rule[1][2]".to_string()))
    .collect();
    for param in [
        "certificate_authority_host",
        "console_host",
        "database_host",
        "mcollective_middleware_hosts[0]",
        "pcp_broker_host",
        "puppet_master_host",
        "puppetdb_host",
    ] {
        want.push((
            "PE Infrastructure".into(),
            format!("classes.puppet_enterprise.{param}"),
        ));
    }
    want.sort();
    assert_eq!(got, want);
    for r in &report.rewrites {
        assert_eq!((r.old.as_str(), r.new.as_str()), (MASTER1, MASTER2));
    }
    // nothing mentions master1 any more
    assert!(!canonical_json(&ours).contains(MASTER1));
}

#[test]
fn transform_of_a_pe3_group() {
    let group = parse_group(&fixture("puppetclassify-pe3x-group-pe-master.json")).unwrap();
    let (out, report) = transform(&[group], &[("puppetmaster.local", "standby.local")]).unwrap();
    assert_eq!(report.rewrites.len(), 1);
    assert_eq!(
        out[0].rule,
        Some(json!(["or", ["=", "name", "standby.local"]]))
    );
}

#[test]
fn plan_from_master1_to_transformed_only_updates_groups_with_the_host() {
    let current = master1();
    let desired = ncio_transformed();
    let diff = classifier::diff(&desired, &current).unwrap();
    assert!(diff.added().is_empty() && diff.removed().is_empty());
    assert_eq!(diff.unchanged(), 5);
    classifier::check_apply(&diff, &GuardOptions::default()).unwrap();

    // the groups that mention the host, found independently of the diff
    let mut with_host: Vec<&str> = current
        .iter()
        .filter(|g| serde_json::to_string(g).unwrap().contains(MASTER1))
        .map(|g| g.id.as_str())
        .collect();
    with_host.sort();

    let plan = classifier::plan(&diff).unwrap();
    assert!(plan.warnings.is_empty());
    assert_eq!(plan.count(OperationKind::Update), plan.operations.len());
    let mut updated: Vec<&str> = plan
        .operations
        .iter()
        .map(|o| o.group_id.as_deref().unwrap())
        .collect();
    updated.sort();
    assert_eq!(updated, with_host);
    assert_eq!(updated.len(), 7);

    for op in &plan.operations {
        assert_eq!(op.method, "POST");
        let name = op.group_name.as_deref().unwrap();
        let body = op.body.as_ref().unwrap();
        if name == "PE Infrastructure" {
            let change = diff
                .changed()
                .iter()
                .find(|c| c.desired.name == name)
                .unwrap();
            assert_eq!(change.fields, vec![Field::Classes]);
            assert_eq!(
                body,
                &json!({"classes": {"puppet_enterprise": {
                    "certificate_authority_host": MASTER2,
                    "console_host": MASTER2,
                    "database_host": MASTER2,
                    "mcollective_middleware_hosts": [MASTER2],
                    "pcp_broker_host": MASTER2,
                    "puppet_master_host": MASTER2,
                    "puppetdb_host": MASTER2}}}),
            );
        } else {
            assert_eq!(
                body,
                &json!({"rule": ["or", ["=", "name", MASTER2]]}),
                "{name}"
            );
        }
    }
    // a second round (passive now equal) writes nothing
    let again = classifier::diff(&desired, &desired).unwrap();
    assert!(classifier::plan(&again).unwrap().is_empty());
}

#[test]
fn import_hierarchy_carries_the_whole_set() {
    let desired = ncio_transformed();
    let op: Operation = classifier::import_hierarchy(&desired).unwrap();
    assert_eq!(op.path, "/classifier-api/v1/import-hierarchy");
    let body = op.body.as_ref().unwrap().as_array().unwrap();
    assert_eq!(body.len(), 12);
    let back = classifier::groups_from_value(op.body.as_ref().unwrap()).unwrap();
    assert_eq!(canonical_json(&back), canonical_json(&desired));
}
