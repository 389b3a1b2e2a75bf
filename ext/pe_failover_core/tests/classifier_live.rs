//! The classifier client and sync against the emulator, over real mutual
//! TLS: two `spec/support/nc_emulator.rb` processes play the active and the
//! passive primary, with identities from `spec/support/test_ca.rb`.

mod util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pe_failover_core::classifier::Group;
use pe_failover_core::classifier::{
    self, canonical_digest, parse_dump, ClassifierClient, GroupSpec, GuardOptions, OperationKind,
    RetryPolicy, SyncMode, SyncOptions, UpsertAction, ALLOWLIST_PATH, ROOT_GROUP_ID,
};
use pe_failover_core::ErrorKind;
use serde_json::{json, Value};
use util::emulator::{catalog_for, free_port, nc_fixture, traditional_key, Emulator, TestCa};

const ACTIVE: &str = "master1.puppet.vm";
const PASSIVE: &str = "master2.puppet.vm";

fn active_groups() -> Vec<Group> {
    parse_dump(&std::fs::read_to_string(nc_fixture("ncio-pe2016-groups-master1.min.json")).unwrap())
        .unwrap()
}

/// The active fixture with the hostnames rewritten: what the passive should
/// hold.
fn desired() -> Vec<Group> {
    classifier::prepare_active(&active_groups(), &[(ACTIVE, PASSIVE)])
        .unwrap()
        .groups
}

/// A freshly installed passive: the same PE groups, with ids of its own.
fn fresh_pe_tree() -> Vec<Group> {
    let fresh = |id: &str| {
        if id == ROOT_GROUP_ID {
            id.to_owned()
        } else {
            format!("beefbeef{}", &id[8..])
        }
    };
    desired()
        .into_iter()
        .map(|mut g| {
            g.id = fresh(&g.id);
            g.parent = fresh(&g.parent);
            g.serial_number = None;
            g.last_edited = None;
            g
        })
        .collect()
}

fn ids(groups: &[Group]) -> BTreeSet<String> {
    groups.iter().map(|g| g.id.clone()).collect()
}

fn forced() -> SyncOptions {
    SyncOptions {
        guard: GuardOptions {
            force: true,
            ..GuardOptions::default()
        },
        ..SyncOptions::default()
    }
}

struct Site {
    _tmp: tempfile::TempDir,
    ca: TestCa,
    dir: std::path::PathBuf,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = TestCa::create(&dir.join("ca"));
    Site { _tmp: tmp, ca, dir }
}

impl Site {
    fn active(&self) -> Emulator {
        Emulator::builder(&self.ca, self.dir.join("active"))
            .seed(json!(active_groups()
                .iter()
                .map(Group::to_value)
                .collect::<Vec<_>>()))
            .start()
    }

    /// A passive seeded with `groups` (root only when empty) and the class
    /// catalog the desired groups need.
    fn passive(&self, groups: &[Group]) -> Emulator {
        let b =
            Emulator::builder(&self.ca, self.dir.join("passive")).classes(catalog_for(&desired()));
        if groups.is_empty() {
            b
        } else {
            b.seed_groups(groups)
        }
        .start()
    }
}

#[test]
fn round_trip_from_the_active_to_a_freshly_installed_passive() {
    let site = site();
    let mut active = site.active();
    let mut passive = site.passive(&fresh_pe_tree());
    let a = active.client("client.test").build().unwrap();
    let b = passive.client("client.test").build().unwrap();
    assert_eq!(a.certname(), "client.test");

    let dump = classifier::fetch_active(&a, &[(ACTIVE, PASSIVE)]).unwrap();
    assert_eq!(dump.digest, canonical_digest(&desired()));
    assert!(!dump.transform.rewrites.is_empty());
    assert!(dump.changed_since(None));

    // A fresh passive has the same groups under other ids: replacing them
    // deletes nearly all of its groups, which only `force` allows.
    let err = classifier::sync(&b, &dump.groups, &SyncOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("would delete"), "{err}");
    assert_eq!(passive.writes(), 0);

    let report = classifier::sync(&b, &dump.groups, &forced()).unwrap();
    assert!(report.in_sync, "{:?}", report.warnings);
    assert_eq!(report.after_digest, dump.digest);
    assert_eq!(report.counts.writes, report.executed.len());
    assert!(report.counts.created > 0 && report.counts.deleted > 0);
    assert!(report
        .executed
        .iter()
        .all(|e| matches!(e.result.status, 200 | 201 | 204)));
    assert_eq!(passive.writes(), report.counts.writes as u64);

    let live = passive.groups();
    assert_eq!(canonical_digest(&live), dump.digest);
    assert_eq!(
        ids(&live),
        ids(&active_groups()),
        "the active's ids are kept"
    );

    // Nothing changed: the second run makes no write call at all.
    passive.reset_stats();
    let again = classifier::sync(&b, &dump.groups, &SyncOptions::default()).unwrap();
    assert_eq!(again.counts.writes, 0);
    assert!(again.plan.is_empty() && again.in_sync);
    assert_eq!(passive.writes(), 0);
    assert_eq!(
        passive.stats()["by_route"],
        json!({"GET /classifier-api/v1/groups": 1}),
        "an unchanged passive is only read"
    );
    assert_eq!(active.writes(), 0, "the active is only read");

    let dump2 = classifier::fetch_active(&a, &[(ACTIVE, PASSIVE)]).unwrap();
    assert!(!dump2.changed_since(Some(&dump.digest)));
}

#[test]
fn noop_then_sync_into_an_empty_passive() {
    let site = site();
    let mut passive = site.passive(&[]);
    let b = passive.client("client.test").build().unwrap();
    let desired = desired();
    let noop = SyncOptions {
        noop: true,
        ..SyncOptions::default()
    };
    let plan = classifier::sync(&b, &desired, &noop).unwrap();
    assert!(plan.noop && !plan.in_sync);
    assert_eq!(plan.plan.count(OperationKind::Create), desired.len() - 1);
    assert!(plan.executed.is_empty());
    assert_eq!(passive.writes(), 0);
    let report = classifier::sync(&b, &desired, &SyncOptions::default()).unwrap();
    assert_eq!(report.counts.created, desired.len() - 1);
    assert!(report.in_sync);
    assert_eq!(
        canonical_digest(&passive.groups()),
        canonical_digest(&desired)
    );
}

#[test]
fn guards_refuse_unsafe_dumps_without_writing() {
    let site = site();
    let desired = desired();
    let mut passive = site.passive(&desired);
    let b = passive.client("client.test").build().unwrap();
    let sync = |groups: &[Group], opts: &SyncOptions| classifier::sync(&b, groups, opts);

    let err = sync(&[], &SyncOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("empty"), "{err}");

    let rootless: Vec<Group> = desired.iter().filter(|g| !g.is_root()).cloned().collect();
    let err = sync(&rootless, &SyncOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no root group"), "{err}");

    // two leaves gone: 2 of 12 groups deleted is more than 10%
    let parents: BTreeSet<&str> = desired.iter().map(|g| g.parent.as_str()).collect();
    let leaves: Vec<&str> = desired
        .iter()
        .filter(|g| !parents.contains(g.id.as_str()))
        .map(|g| g.id.as_str())
        .take(2)
        .collect();
    let fewer: Vec<Group> = desired
        .iter()
        .filter(|g| !leaves.contains(&g.id.as_str()))
        .cloned()
        .collect();
    let err = sync(&fewer, &SyncOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(
        err.to_string()
            .contains("delete 2 of the passive's 12 groups"),
        "{err}"
    );
    assert!(err.to_string().contains("force"), "{err}");

    let promoted = SyncOptions {
        guard: GuardOptions {
            passive_promoted: true,
            force: true,
            ..GuardOptions::default()
        },
        ..SyncOptions::default()
    };
    let err = sync(&desired, &promoted).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced);
    assert!(err.to_string().contains("promoted"), "{err}");
    assert_eq!(passive.writes(), 0, "no guard lets a write through");

    let report = sync(&fewer, &forced()).unwrap();
    assert_eq!(report.counts.deleted, 2);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(passive.writes(), 2);
    assert_eq!(passive.groups().len(), 10);
}

#[test]
fn a_certificate_missing_from_the_allowlist_is_named() {
    let site = site();
    let passive = site.passive(&[]);
    let stranger = passive.client("stranger.test").build().unwrap();
    let err = stranger.groups().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    let msg = err.to_string();
    assert!(msg.contains("\"stranger.test\""), "{msg}");
    assert!(msg.contains(ALLOWLIST_PATH), "{msg}");
    assert!(msg.contains("reload pe-console-services"), "{msg}");
    assert!(msg.contains("GET /classifier-api/v1/groups"), "{msg}");
    assert!(msg.contains("user-unauthenticated"), "{msg}");
    assert_eq!(
        err.host(),
        Some(format!("127.0.0.1:{}", passive.port()).as_str())
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_naming_the_ca_file() {
    let site = site();
    let other = TestCa::create(&site.dir.join("other_ca"));
    let emu = Emulator::builder(&site.ca, site.dir.join("emu"))
        .server_ca(&other)
        .start();
    let ca_file = site.dir.join("ca/clients/client.test/certs/ca.pem");
    let client = emu.client("client.test").build().unwrap();
    let err = client.groups().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Verification, "{err}");
    assert_eq!(err.path(), Some(ca_file.as_path()));
    let msg = err.to_string();
    assert!(msg.contains("not signed by the CA in"), "{msg}");
    assert!(msg.contains(ca_file.to_str().unwrap()), "{msg}");
}

#[test]
fn client_identity_problems_are_named_before_connecting() {
    let site = site();
    let other = TestCa::create(&site.dir.join("other_ca"));
    let mine = site.ca.host_files("client.test", &site.dir.join("mine"));
    let theirs = other.host_files("client.test", &site.dir.join("theirs"));
    let url = format!("https://127.0.0.1:{}", free_port());
    let build = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        ClassifierClient::builder(url.clone())
            .client_cert(cert)
            .client_key(key)
            .ca_cert(ca)
            .build()
            .unwrap_err()
    };

    let err = build(&mine.cert, &theirs.key, &mine.ca);
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert_eq!(err.path(), Some(theirs.key.as_path()));
    assert!(
        err.to_string()
            .contains("does not belong to the client certificate"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("BEGIN"),
        "never key material: {err}"
    );

    let err = build(&theirs.cert, &theirs.key, &mine.ca);
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert_eq!(err.path(), Some(theirs.cert.as_path()));
    assert!(
        err.to_string().contains("is not signed by the CA in"),
        "{err}"
    );

    let err = build(&mine.cert, &mine.key, &mine.key);
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert_eq!(
        err.path(),
        Some(mine.key.as_path()),
        "a key given as the CA file"
    );

    let err = build(&mine.cert, &mine.cert, &mine.ca);
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert!(err.to_string().contains("holds no private key"), "{err}");

    let missing = site.dir.join("nope.pem");
    let err = build(&mine.cert, &missing, &mine.ca);
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.path(), Some(missing.as_path()));

    site.ca.revoke("client.test");
    let err = ClassifierClient::builder(url.clone())
        .client_cert(&mine.cert)
        .client_key(&mine.key)
        .ca_cert(&mine.ca)
        .crl(site.ca.crl_path())
        .build()
        .unwrap_err();
    assert_eq!(err.path(), Some(mine.cert.as_path()));
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[test]
fn rsa_pkcs1_pkcs8_and_ec_sec1_keys_all_work() {
    let site = site();
    let emu = Emulator::builder(&site.ca, site.dir.join("emu"))
        .allowlist(&["rsa.test", "ec.test"])
        .start();
    let rsa = site.ca.rsa_host_files("rsa.test", &site.dir.join("rsa"));
    let ec = site.ca.host_files("ec.test", &site.dir.join("ec"));
    let pkcs1 = traditional_key(&rsa.key);
    let sec1 = traditional_key(&ec.key);
    let header = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header(&rsa.key), "-----BEGIN PRIVATE KEY-----");
    assert_eq!(header(&pkcs1), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(header(&sec1), "-----BEGIN EC PRIVATE KEY-----");
    for (files, key) in [
        (&rsa, &rsa.key),
        (&rsa, &pkcs1),
        (&ec, &ec.key),
        (&ec, &sec1),
    ] {
        let client = ClassifierClient::builder(emu.base_url())
            .client_cert(&files.cert)
            .client_key(key)
            .ca_cert(&files.ca)
            .crl(&files.crl)
            .build()
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        assert_eq!(client.groups().unwrap().len(), 1, "{}", key.display());
    }
}

#[test]
fn a_revoked_server_certificate_is_refused_with_the_crl() {
    let site = site();
    let emu = Emulator::builder(&site.ca, site.dir.join("emu")).start();
    let client = emu.client("client.test").build().unwrap();
    assert!(client.groups().is_ok());
    site.ca.revoke("nc.test");
    let client = emu.client("client.test").build().unwrap();
    let err = client.groups().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Verification);
    assert_eq!(err.path(), Some(site.ca.crl_path().as_path()));
    assert!(err.to_string().contains("revoked by the CRL"), "{err}");
}

#[test]
fn a_client_certificate_the_server_refuses_is_named() {
    let site = site();
    let emu = Emulator::builder(&site.ca, site.dir.join("emu")).start();
    assert!(emu.client("client.test").build().unwrap().groups().is_ok());
    // Revoked after the files were written: no CRL on our side to catch it,
    // so the emulator refuses the handshake and we must say which file.
    site.ca.revoke("client.test");
    let ssl = site.dir.join("ca/clients/client.test");
    let cert = ssl.join("certs/client.test.pem");
    let err = ClassifierClient::builder(emu.base_url())
        .client_cert(&cert)
        .client_key(ssl.join("private_keys/client.test.pem"))
        .ca_cert(ssl.join("certs/ca.pem"))
        .retry(RetryPolicy::none())
        .build()
        .unwrap()
        .groups()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Verification, "{err}");
    assert_eq!(err.path(), Some(cert.as_path()));
    assert!(
        err.to_string().contains("refused the client certificate"),
        "{err}"
    );
}

#[test]
fn a_classifier_that_starts_slowly_is_waited_for() {
    let site = site();
    let mut emu = Emulator::builder(&site.ca, site.dir.join("emu"))
        .start_delay(1.5)
        .start();
    let client = emu.client("client.test").build().unwrap();
    let started = Instant::now();
    let groups = client.groups().expect("retried until the socket opens");
    assert_eq!(groups.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    emu.wait_listening();

    // then a service that answers 503 while it starts
    emu.reset_stats();
    emu.fault("starting", Some(3), None);
    let op = classifier::update_operation(&groups[0], &{
        let mut g = groups[0].clone();
        g.variables.insert("x".into(), json!(1));
        g
    })
    .unwrap();
    let done = client.execute(&op).unwrap();
    assert_eq!(done.status, 200);
    assert_eq!(done.attempts, 4);
    assert_eq!(emu.stats()["by_status"]["503"], 3);
}

#[test]
fn a_classifier_that_stays_unavailable_fails_clearly() {
    let site = site();
    let mut emu = Emulator::builder(&site.ca, site.dir.join("emu")).start();
    emu.fault("starting", None, None);
    let client = emu
        .client("client.test")
        .retry(RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_wait: Duration::from_millis(1500),
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.groups().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Api);
    let msg = err.to_string();
    assert!(msg.contains("still unavailable after"), "{msg}");
    assert!(msg.contains("503"), "{msg}");
    assert!(msg.contains("service-unavailable"), "{msg}");
    assert!(msg.contains("pe-console-services"), "{msg}");
    let status = client.status().unwrap();
    assert_eq!(status.state, "starting");
    assert!(!status.is_running());

    // nothing listening at all
    let nobody = ClassifierClient::builder(format!("https://127.0.0.1:{}", free_port()))
        .client_cert(
            site.dir
                .join("ca/clients/client.test/certs/client.test.pem"),
        )
        .client_key(
            site.dir
                .join("ca/clients/client.test/private_keys/client.test.pem"),
        )
        .ca_cert(site.dir.join("ca/clients/client.test/certs/ca.pem"))
        .retry(RetryPolicy::up_to(Duration::from_millis(700)))
        .build()
        .unwrap();
    let err = nobody.groups().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network);
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(err.to_string().contains("attempts"), "{err}");
}

#[test]
fn a_slow_answer_times_out() {
    let site = site();
    let mut emu = Emulator::builder(&site.ca, site.dir.join("emu")).start();
    emu.fault("slow", Some(1), Some(3.0));
    let client = emu
        .client("client.test")
        .request_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let err = client.groups().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

#[test]
fn a_failure_in_the_middle_of_a_plan_is_repaired_by_the_next_run() {
    let site = site();
    let mut passive = site.passive(&[]);
    let b = passive.client("client.test").build().unwrap();
    let desired = desired();
    let mut steps = Vec::new();
    let err = classifier::sync_with_progress(&b, &desired, &SyncOptions::default(), &mut |s| {
        steps.push((s.step, s.result.is_ok()));
        if s.step == 3 {
            passive.fault("error500", Some(1), None);
        }
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Api);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("127.0.0.1:{}: step 4 of ", passive.port())),
        "{msg}"
    );
    assert!(msg.contains("500 application-error"), "{msg}");
    assert!(msg.contains("3 earlier step(s) were applied"), "{msg}");
    assert!(msg.contains("run again"), "{msg}");
    assert_eq!(steps, vec![(1, true), (2, true), (3, true), (4, false)]);
    let partial = passive.groups();
    assert_eq!(partial.len(), 4);

    let report = classifier::sync(&b, &desired, &SyncOptions::default()).unwrap();
    assert!(report.in_sync);
    assert_eq!(report.counts.created, desired.len() - 4);
    assert_eq!(
        canonical_digest(&passive.groups()),
        canonical_digest(&desired)
    );
}

#[test]
fn missing_classes_on_the_passive_are_reported_with_advice() {
    let site = site();
    let desired = desired();
    let mut catalog = catalog_for(&desired);
    let full = catalog.clone();
    catalog["production"]
        .as_object_mut()
        .unwrap()
        .remove("puppet_enterprise::profile::master");
    let mut passive = Emulator::builder(&site.ca, site.dir.join("passive"))
        .classes(catalog)
        .start();
    let b = passive.client("client.test").build().unwrap();
    let err = classifier::sync(&b, &desired, &SyncOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    let msg = err.to_string();
    assert!(msg.contains("group \"PE Master\""), "{msg}");
    assert!(
        msg.contains("\"puppet_enterprise::profile::master\""),
        "{msg}"
    );
    assert!(msg.contains("deploy the same code to the passive"), "{msg}");
    assert!(msg.contains("update-classes"), "{msg}");
    assert_eq!(passive.writes(), 0);

    // Code deployed: the next run's update-classes brings the class in.
    passive.stage_classes(full);
    let report = classifier::sync(&b, &desired, &SyncOptions::default()).unwrap();
    assert!(report.in_sync);
    assert!(report.missing_classes.is_empty());
}

#[test]
fn replace_mode_imports_the_hierarchy_once() {
    let site = site();
    let mut passive = site.passive(&fresh_pe_tree());
    let b = passive.client("client.test").build().unwrap();
    let desired = desired();
    let replace = SyncOptions {
        mode: SyncMode::Replace,
        ..forced()
    };
    let report = classifier::sync(&b, &desired, &replace).unwrap();
    assert_eq!(report.counts.imported, 1);
    assert_eq!(report.counts.writes, 1);
    assert!(report.in_sync);
    let stats = passive.stats();
    assert_eq!(stats["writes"], 1);
    assert_eq!(
        stats["by_route"]["POST /classifier-api/v1/import-hierarchy"],
        1
    );
    let live = passive.groups();
    assert_eq!(canonical_digest(&live), canonical_digest(&desired));
    assert_eq!(ids(&live), ids(&desired));

    passive.reset_stats();
    let again = classifier::sync(&b, &desired, &replace).unwrap();
    assert_eq!(again.counts.writes, 0);
    assert_eq!(passive.writes(), 0);
}

#[test]
fn single_calls_and_api_errors() {
    let site = site();
    let desired = desired();
    let passive = site.passive(&desired);
    let b = passive.client("client.test").build().unwrap();

    let id = b
        .create_group(&json!({"name": "pe_failover", "parent": ROOT_GROUP_ID, "classes": {}}))
        .unwrap();
    let created = b.group(&id).unwrap().expect("created group");
    assert_eq!(created.name, "pe_failover");
    assert_eq!(created.environment, "production");
    assert!(b
        .group("0badc0de-0000-4000-8000-000000000000")
        .unwrap()
        .is_none());
    assert!(b.group("../etc").is_err());

    b.update_classes(Some("production")).unwrap();
    let classes = b.classes("production").unwrap();
    assert!(classes
        .iter()
        .any(|c| c.name == "puppet_enterprise::profile::master"));
    assert!(!b.all_classes().unwrap().is_empty());
    assert!(b.class_catalog().unwrap().contains_key("production"));
    let status = b.status().unwrap();
    assert!(status.is_running());
    assert!(status.version.is_some());

    // a group with children cannot be deleted: the classifier's kind and
    // msg come back with the request
    let parent = desired
        .iter()
        .find(|g| g.name == "PE Infrastructure")
        .unwrap();
    let err = b
        .execute(&classifier::delete_operation(parent))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Api);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("DELETE /classifier-api/v1/groups/{}", parent.id)),
        "{msg}"
    );
    assert!(msg.contains("422 children-present"), "{msg}");
    assert!(msg.contains("has children"), "{msg}");
}

#[test]
fn groups_are_managed_by_name() {
    let site = site();
    let mut emu = site.passive(&desired());
    let b = emu.client("client.test").build().unwrap();
    let specs = [
        json!({"name": "pe_failover", "parent": "PE Infrastructure",
               "rule": ["and", ["~", ["fact", "pe_failover_mode"], "^(active|passive)$"]],
               "classes": {}, "description": "pe_failover replication"}),
        json!({"name": "pe_failover-active", "parent": "pe_failover",
               "rule": ["and", ["=", ["fact", "pe_failover_mode"], "active"]]}),
        json!({"name": "pe_failover-passive", "parent": "pe_failover",
               "rule": ["and", ["=", ["fact", "pe_failover_mode"], "passive"]]}),
    ];
    for s in &specs {
        let out = classifier::upsert_group(&b, &GroupSpec::from_value(s).unwrap(), false).unwrap();
        assert_eq!(out.action, UpsertAction::Created, "{s}");
        assert!(out.id.is_some());
    }
    emu.reset_stats();
    for s in &specs {
        let out = classifier::upsert_group(&b, &GroupSpec::from_value(s).unwrap(), false).unwrap();
        assert_eq!(out.action, UpsertAction::Unchanged, "{s}");
    }
    assert_eq!(emu.writes(), 0);
    let spec = GroupSpec::from_value(&json!({"name": "pe_failover", "rule": null})).unwrap();
    let out = classifier::upsert_group(&b, &spec, false).unwrap();
    assert_eq!(out.action, UpsertAction::Updated);
    assert_eq!(
        out.operation.unwrap().body,
        Some(json!({"rule": Value::Null}))
    );
    assert_eq!(emu.writes(), 1);
}
