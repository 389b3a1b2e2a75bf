//! Node Classifier shipping end to end, with real parts: two classifier
//! emulators (`spec/support/nc_emulator.rb`, HTTPS with client-certificate
//! checks) play the active and the passive primary; the dump travels from
//! the active's outbox through the replication protocol over a socketpair
//! into the passive's state directory, where the NC applier brings the
//! passive's classifier to it.

mod util;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;

use pe_failover_core::classifier::{
    self, canonical_digest, parse_dump, update_operation, ClassCatalog, ClassifierApi,
    ClassifierClient, Executed, Group, Operation,
};
use pe_failover_core::config::Config;
use pe_failover_core::ncship::{self, DumpForm, NcApplier, NcApplyOptions, NcOutbox, NC_DUMP_FILE};
use pe_failover_core::protocol::{
    encode_frame, FrameType, Kind, ReceiveOutcome, ReceiveReport, Receiver, Sender, SyncReport,
    PROTOCOL_VERSION,
};
use pe_failover_core::stage::{list_txns, StateDir};
use pe_failover_core::state::{ReceiverStatus, SenderStatus, SyncOutcome};
use pe_failover_core::{ErrorKind, Result};
use serde_json::{json, Value};
use util::emulator::{catalog_for, nc_fixture, Emulator, HostFiles, TestCa};

const ACTIVE: &str = "master1.puppet.vm";
const PASSIVE: &str = "master2.puppet.vm";

fn active_groups() -> Vec<Group> {
    parse_dump(&fs::read_to_string(nc_fixture("ncio-pe2016-groups-master1.min.json")).unwrap())
        .unwrap()
}

/// What the passive must end up with: the active's groups, host names
/// rewritten, ids kept.
fn desired() -> Vec<Group> {
    classifier::prepare_active(&active_groups(), &[(ACTIVE, PASSIVE)])
        .unwrap()
        .groups
}

/// The classifier API routes called since the last stats reset.
fn api_routes(emu: &mut Emulator) -> Vec<String> {
    emu.stats()["by_route"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.contains("/classifier-api/"))
        .cloned()
        .collect()
}

fn ids(groups: &[Group]) -> BTreeSet<String> {
    groups.iter().map(|g| g.id.clone()).collect()
}

/// Two primaries: classifiers, state directories, configurations.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: TestCa,
    _active: Emulator,
    passive: Emulator,
    a_state: PathBuf,
    b_state: PathBuf,
    a_config: Config,
    b_config: Config,
}

fn config(role: &str, certname: &str, emu: &Emulator, files: &HostFiles, state: &Path) -> Config {
    Config::parse(
        &json!({
            "role": role,
            "certname": certname,
            "state_dir": state,
            "ca": {"ssldir": state.join("no-ssldir")},
            "nc": {
                "server": emu.base_url(),
                "cert": files.cert, "key": files.key, "cacert": files.ca,
                "hostnames": {ACTIVE: PASSIVE},
                "keep_dumps": 3
            }
        })
        .to_string(),
    )
    .unwrap()
}

/// The active seeded with the real PE 2016 dump; the passive with
/// `passive_groups` (only the root when empty) and the classes the desired
/// groups need.
fn site(passive_groups: &[Group]) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = TestCa::create(&dir.join("ca"));
    let active = Emulator::builder(&ca, dir.join("active"))
        .seed_groups(&active_groups())
        .start();
    let b = Emulator::builder(&ca, dir.join("passive")).classes(catalog_for(&desired()));
    let passive = if passive_groups.is_empty() {
        b
    } else {
        b.seed_groups(passive_groups)
    }
    .start();
    let a_state = dir.join("a_state");
    let b_state = dir.join("b_state");
    let a_files = ca.host_files("client.test", &dir.join("a_ssl"));
    let b_files = ca.host_files("client.test", &dir.join("b_ssl"));
    let a_config = config("active", ACTIVE, &active, &a_files, &a_state);
    let b_config = config("passive", PASSIVE, &passive, &b_files, &b_state);
    Site {
        _tmp: tmp,
        dir,
        ca,
        _active: active,
        passive,
        a_state,
        b_state,
        a_config,
        b_config,
    }
}

impl Site {
    fn a_client(&self) -> ClassifierClient {
        ncship::nc_client(&self.a_config).unwrap()
    }

    fn b_client(&self) -> ClassifierClient {
        ncship::nc_client(&self.b_config).unwrap()
    }

    fn outbox(&self) -> NcOutbox {
        NcOutbox::in_state_dir(&self.a_state)
    }

    fn receiver(&self) -> Receiver {
        Receiver::new(&self.b_state).host(PASSIVE)
    }

    /// Ships the active's outbox to the passive over a socketpair.
    fn ship_with(&self, receiver: Receiver) -> (Result<SyncReport>, Result<ReceiveReport>) {
        let (a, b) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || receiver.receive(b));
        let sent = Sender::nc(self.outbox(), PASSIVE, &self.a_state)
            .sender_host(ACTIVE)
            .sync(a);
        (sent, handle.join().unwrap())
    }

    fn ship(&self) -> (SyncReport, ReceiveReport) {
        let (s, r) = self.ship_with(self.receiver());
        (s.unwrap(), r.unwrap())
    }

    fn nc_state(&self) -> StateDir {
        StateDir::for_kind(&self.b_state, Kind::Nc)
    }

    fn nc_txns(&self) -> usize {
        list_txns(&self.nc_state(), "nc").unwrap().complete.len()
    }

    /// Writes a hand-made dump into the active's outbox and ships it.
    fn ship_groups(&self, groups: &[Group]) -> SyncReport {
        self.outbox().write(groups).unwrap();
        self.ship().0
    }
}

#[test]
fn groups_travel_from_the_active_to_the_passive_and_an_unchanged_run_writes_nothing() {
    let mut site = site(&[]);

    // A: prepare the dump from the live classifier.
    let prepared = ncship::nc_prepare(&site.a_config).unwrap();
    assert!(prepared.changed);
    assert_eq!(prepared.previous, None);
    assert_eq!(prepared.digest, canonical_digest(&desired()));
    assert_eq!(prepared.source_digest, canonical_digest(&active_groups()));
    assert_eq!(prepared.groups, 12);
    assert!(prepared.rewrites > 0);
    assert!(prepared.warnings.is_empty());
    assert_eq!(prepared.path, site.a_state.join("nc/outgoing/groups.json"));
    let mode = fs::metadata(&prepared.path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // Ship it: a transaction of kind nc, staged apart from the CA.
    let (sent, received) = site.ship();
    assert_eq!(sent.kind, Kind::Nc);
    assert_eq!(sent.outcome, SyncOutcome::Committed);
    assert_eq!(sent.stats.entries, 1);
    assert_eq!(received.outcome, ReceiveOutcome::Stored);
    let txn_dir = received.txn_dir.clone().unwrap();
    assert!(
        txn_dir.starts_with(site.b_state.join("nc/incoming")),
        "{txn_dir:?}"
    );
    assert_eq!(site.nc_txns(), 1);
    let ca_state = StateDir::new(&site.b_state);
    assert!(list_txns(&ca_state, "ca").unwrap().complete.is_empty());
    assert!(
        !site.b_state.join("incoming").exists(),
        "the CA namespace is untouched"
    );
    let rstatus = ReceiverStatus::load(&site.nc_state().receiver_status_file())
        .unwrap()
        .unwrap();
    assert_eq!(rstatus.kind, "nc");
    let sstatus = SenderStatus::load(
        &site
            .a_state
            .join(format!("replicas/{PASSIVE}/nc.status.json")),
    )
    .unwrap()
    .unwrap();
    assert_eq!(sstatus.kind, "nc");
    assert_eq!(sstatus.last_outcome, Some(SyncOutcome::Committed));

    // B: apply through the configuration, as `pe_failover nc apply` does.
    site.passive.reset_stats();
    let report = ncship::nc_apply(&site.b_config, &NcApplyOptions::default()).unwrap();
    let sync = report.sync.as_ref().unwrap();
    assert!(sync.in_sync, "{:?}", report.warnings);
    assert!(report.writes() > 0);
    assert_eq!(site.passive.writes(), report.writes() as u64);
    assert_eq!(site.nc_txns(), 0, "the transaction was consumed");
    let live = site.passive.groups();
    assert_eq!(canonical_digest(&live), prepared.digest);
    assert_eq!(
        ids(&live),
        ids(&active_groups()),
        "the active's ids are kept"
    );
    let master = live.iter().find(|g| g.name == "PE Master").unwrap();
    assert!(serde_json::to_string(&master.rule)
        .unwrap()
        .contains(PASSIVE));
    assert!(
        !serde_json::to_string(&live.iter().map(Group::to_value).collect::<Vec<_>>())
            .unwrap()
            .contains(ACTIVE)
    );

    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert!(status.last_run_ok);
    assert_eq!(status.kind, "nc");
    assert_eq!(status.applied.as_ref().unwrap().digest, prepared.digest);
    assert_eq!(status.staged.as_ref().unwrap().digest, prepared.digest);
    assert_eq!(status.counts.writes, report.writes() as u64);
    assert_eq!(status.counts.groups, 12);
    assert!(status
        .syslog_line()
        .starts_with("PE_FAILOVER: nc_apply ---> [SUCCESS] nc at "));

    // Nothing changed: the dump is not rewritten, nothing is shipped, and
    // the passive gets one read and zero writes.
    let before = fs::metadata(&prepared.path).unwrap().modified().unwrap();
    let again = ncship::nc_prepare(&site.a_config).unwrap();
    assert!(!again.changed);
    assert_eq!(again.previous.as_deref(), Some(prepared.digest.as_str()));
    assert_eq!(
        fs::metadata(&prepared.path).unwrap().modified().unwrap(),
        before
    );
    let (sent, received) = site.ship();
    assert_eq!(sent.outcome, SyncOutcome::UpToDate);
    assert_eq!(received.outcome, ReceiveOutcome::NothingToDo);
    site.passive.reset_stats();
    let report = ncship::nc_apply(&site.b_config, &NcApplyOptions::default()).unwrap();
    assert_eq!(report.writes(), 0);
    assert_eq!(site.passive.writes(), 0);
    assert_eq!(
        api_routes(&mut site.passive),
        ["GET /classifier-api/v1/groups"]
    );

    // One group edited on A: one update call on B.
    let a = site.a_client();
    let current = a.groups().unwrap();
    let agent = current.iter().find(|g| g.name == "PE Agent").unwrap();
    let mut edited = agent.clone();
    edited
        .variables
        .insert("pe_failover_test".into(), json!("edited"));
    a.execute(&update_operation(agent, &edited).unwrap())
        .unwrap();
    let changed = ncship::nc_prepare(&site.a_config).unwrap();
    assert!(changed.changed);
    assert_ne!(changed.digest, prepared.digest);
    let (sent, _) = site.ship();
    assert_eq!(sent.outcome, SyncOutcome::Committed);
    assert_eq!(sent.stats.upserts, 1);
    site.passive.reset_stats();
    let report = ncship::nc_apply(&site.b_config, &NcApplyOptions::default()).unwrap();
    assert_eq!(report.writes(), 1);
    assert_eq!(report.sync.as_ref().unwrap().counts.updated, 1);
    assert_eq!(canonical_digest(&site.passive.groups()), changed.digest);
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert_eq!(status.applied.unwrap().digest, changed.digest);
}

#[test]
fn nc_dump_prints_raw_or_rewritten_groups() {
    let site = site(&[]);
    let raw = ncship::nc_dump(&site.a_config, DumpForm::Raw).unwrap();
    let rewritten = ncship::nc_dump(&site.a_config, DumpForm::Transformed).unwrap();
    assert!(raw.contains(ACTIVE) && !raw.contains(PASSIVE));
    assert!(rewritten.contains(PASSIVE) && !rewritten.contains(ACTIVE));
    let parsed = parse_dump(&rewritten).unwrap();
    assert_eq!(canonical_digest(&parsed), canonical_digest(&desired()));
    assert_eq!(
        canonical_digest(&parse_dump(&raw).unwrap()),
        canonical_digest(&active_groups())
    );
}

#[test]
fn unsafe_dumps_are_refused_without_a_write_and_force_overrides_the_delete_guard() {
    let mut site = site(&desired());
    site.passive.reset_stats();
    let applier = || NcApplier::new(&site.b_state);
    let client = site.b_client();

    // Empty.
    site.ship_groups(&[]);
    let err = applier().run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("empty"), "{err}");

    // No root group.
    let rootless: Vec<Group> = desired().into_iter().filter(|g| !g.is_root()).collect();
    site.ship_groups(&rootless);
    let err = applier().run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("no root group"), "{err}");

    // Deleting 3 of 12 groups (25 %) is more than the 10 % allowed.
    let leaves = ["PE Agent", "PE MCollective", "Agent-specified environment"];
    let fewer: Vec<Group> = desired()
        .into_iter()
        .filter(|g| !leaves.contains(&g.name.as_str()))
        .collect();
    site.ship_groups(&fewer);
    let err = applier().run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(err.to_string().contains("would delete 3"), "{err}");
    assert_eq!(site.passive.writes(), 0, "no guard lets a write through");
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert!(!status.last_run_ok);
    assert_eq!(status.last_error.as_ref().unwrap().kind, "refused");
    assert!(status.syslog_line().contains("[FAILURE]"));

    // Forced: applied, with the overridden guard as a warning.
    let report = applier().force(true).run(&client).unwrap();
    assert_eq!(report.sync.as_ref().unwrap().counts.deleted, 3);
    assert!(
        report.warnings.iter().any(|w| w.contains("would delete 3")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        canonical_digest(&site.passive.groups()),
        canonical_digest(&fewer)
    );
    // Retention: at most keep_dumps snapshots stay.
    let snapshots = fs::read_dir(site.nc_state().snapshots())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
        .count();
    assert!(snapshots <= 10, "{snapshots}");
}

#[test]
fn retention_keeps_the_newest_dumps() {
    let site = site(&[]);
    let client = site.b_client();
    let mut digests = Vec::new();
    for i in 0..5 {
        let mut groups = desired();
        groups[0].variables.insert("round".into(), json!(i));
        if i == 2 {
            // The active lost its record of what it shipped (restored from
            // a backup): the manifests are exchanged, under the NC rules.
            fs::remove_file(
                site.a_state
                    .join(format!("replicas/{PASSIVE}/nc.manifest.json")),
            )
            .unwrap();
        }
        let sent = site.ship_groups(&groups);
        assert_eq!(sent.stats.manifest_exchanged, i == 2, "round {i}");
        assert_eq!(sent.outcome, SyncOutcome::Committed);
        let report = NcApplier::new(&site.b_state)
            .keep_dumps(2)
            .max_delete_share(1.0)
            .run(&client)
            .unwrap();
        digests.push(report.dump.unwrap().snapshot);
    }
    let mut kept: Vec<String> = fs::read_dir(site.nc_state().snapshots())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.len() == 64)
        .collect();
    kept.sort();
    let mut want = digests[3..].to_vec();
    want.sort();
    assert_eq!(kept, want);
}

#[test]
fn a_promoted_passive_is_fenced_unless_forced() {
    let mut site = site(&[]);
    ncship::nc_prepare(&site.a_config).unwrap();
    let role = site.dir.join("pe_failover.yaml");
    fs::write(&role, "---\npe_failover_mode: active\n").unwrap();

    // The receiver refuses the session and stores nothing.
    let (sent, received) = site.ship_with(site.receiver().role_file(&role));
    let err = sent.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    assert!(err.to_string().contains("promoted"), "{err}");
    assert_eq!(received.unwrap_err().kind(), ErrorKind::Fenced);
    assert_eq!(site.nc_txns(), 0);

    // Received while passive, then promoted: the applier leaves the
    // classifier alone and keeps the transaction.
    site.ship();
    site.passive.reset_stats();
    let client = site.b_client();
    let err = NcApplier::new(&site.b_state)
        .role_file(&role)
        .run(&client)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    assert!(err.to_string().contains("demoted"), "{err}");
    assert_eq!(site.nc_txns(), 1);
    assert_eq!(site.passive.writes(), 0);
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert_eq!(status.last_error.unwrap().kind, "fenced");

    // The configured role fences too.
    let mut promoted = site.b_config.clone();
    promoted.role = pe_failover_core::config::Role::Active;
    let err = ncship::nc_apply(&promoted, &NcApplyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced);

    // Forced: applied, with a warning.
    let report = NcApplier::new(&site.b_state)
        .role_file(&role)
        .force(true)
        .run(&client)
        .unwrap();
    assert!(report.sync.unwrap().in_sync);
    assert!(report.warnings.iter().any(|w| w.contains("role is active")));
}

#[test]
fn corrupted_dumps_are_refused_and_discarded() {
    let mut site = site(&[]);
    let client = site.b_client();
    ncship::nc_prepare(&site.a_config).unwrap();

    // Damaged in the passive's incoming directory.
    let (_, received) = site.ship();
    let objects = received.txn_dir.unwrap().join("objects");
    let object = fs::read_dir(&objects)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    fs::write(&object, bytes).unwrap();
    site.passive.reset_stats();
    let err = NcApplier::new(&site.b_state).run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("refused and discarded"), "{err}");
    assert_eq!(site.nc_txns(), 0, "the damaged transaction is removed");
    assert!(
        !site.nc_state().latest_link().exists(),
        "nothing was staged"
    );
    assert_eq!(site.passive.writes(), 0);

    // Tampered on the active after it was written: the file's digest no
    // longer matches its groups. It travels intact, and is refused.
    let dump = site.outbox().dump_path();
    let text = fs::read_to_string(&dump).unwrap();
    fs::write(&dump, text.replace("PE Master", "PE Mister")).unwrap();
    let (sent, _) = site.ship();
    assert_eq!(sent.outcome, SyncOutcome::Committed);
    let err = NcApplier::new(&site.b_state).run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("not the recorded"), "{err}");
    assert!(!site.nc_state().latest_link().exists());
    assert_eq!(site.passive.writes(), 0);

    // The next prepare notices the damaged file and rewrites it; the good
    // dump then goes through.
    let prepared = ncship::nc_prepare(&site.a_config).unwrap();
    assert!(prepared.changed);
    site.ship();
    let report = NcApplier::new(&site.b_state).run(&client).unwrap();
    assert!(report.sync.unwrap().in_sync);
    assert_eq!(canonical_digest(&site.passive.groups()), prepared.digest);
}

/// The passive's client, with a fault injected into the emulator right
/// after the `fail_after`-th write call.
struct Faulty<'a> {
    inner: ClassifierClient,
    emulator: &'a RefCell<&'a mut Emulator>,
    writes: Cell<usize>,
    fail_after: usize,
}

impl ClassifierApi for Faulty<'_> {
    fn host(&self) -> &str {
        self.inner.host()
    }
    fn groups(&self) -> Result<Vec<Group>> {
        self.inner.groups()
    }
    fn update_classes(&self) -> Result<()> {
        ClassifierApi::update_classes(&self.inner)
    }
    fn class_catalog(&self) -> Result<ClassCatalog> {
        self.inner.class_catalog()
    }
    fn execute(&self, op: &Operation) -> Result<Executed> {
        let n = self.writes.get();
        self.writes.set(n + 1);
        if n == self.fail_after {
            self.emulator.borrow_mut().fault("error500", Some(1), None);
        }
        self.inner.execute(op)
    }
}

#[test]
fn a_failure_in_the_middle_of_a_plan_is_repaired_by_the_next_run() {
    let mut site = site(&[]);
    ncship::nc_prepare(&site.a_config).unwrap();
    site.ship();
    let client = site.b_client();
    {
        let cell = RefCell::new(&mut site.passive);
        let faulty = Faulty {
            inner: client.clone(),
            emulator: &cell,
            writes: Cell::new(0),
            fail_after: 3,
        };
        let err = NcApplier::new(&site.b_state).run(&faulty).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Api, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("step 4 of"), "{msg}");
        assert!(msg.contains("3 earlier step(s) were applied"), "{msg}");
    }
    assert_eq!(site.passive.groups().len(), 4);
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert!(!status.last_run_ok);
    assert_eq!(status.last_error.as_ref().unwrap().kind, "api");
    assert!(status.applied.is_none());

    // The next run (no new transaction) plans from where it stopped.
    let report = NcApplier::new(&site.b_state).run(&client).unwrap();
    let sync = report.sync.unwrap();
    assert!(sync.in_sync);
    assert_eq!(sync.counts.created, 12 - 4);
    assert_eq!(
        canonical_digest(&site.passive.groups()),
        canonical_digest(&desired())
    );
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert!(status.last_run_ok);
    assert_eq!(status.applied.unwrap().digest, canonical_digest(&desired()));
}

#[test]
fn missing_classes_are_named_with_advice_and_nothing_is_written() {
    let mut site = site(&desired());
    let mut groups = desired();
    let agent = groups.iter_mut().find(|g| g.name == "PE Agent").unwrap();
    agent
        .classes
        .insert("site::absent".into(), Default::default());
    site.ship_groups(&groups);
    site.passive.reset_stats();
    let client = site.b_client();
    let err = NcApplier::new(&site.b_state).run(&client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("\"site::absent\""), "{msg}");
    assert!(msg.contains("\"PE Agent\""), "{msg}");
    assert!(msg.contains("update-classes"), "{msg}");
    assert_eq!(site.passive.writes(), 0);
    assert!(
        api_routes(&mut site.passive)
            .contains(&"POST /classifier-api/v1/update-classes".to_owned()),
        "classes were refreshed before the check"
    );
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert_eq!(
        status.missing_classes,
        ["group \"PE Agent\": class \"site::absent\" is missing from environment \"production\""]
    );

    // Forced: the write is attempted, and the classifier itself refuses the
    // reference (missing-referents); the step is named and the class stays
    // reported.
    let err = NcApplier::new(&site.b_state)
        .force(true)
        .run(&client)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Api, "{err}");
    assert!(err.to_string().contains("missing-referents"), "{err}");
    let status = ncship::nc_status(&site.b_state).unwrap().unwrap();
    assert_eq!(status.missing_classes.len(), 1);
}

#[test]
fn nothing_received_yet_is_a_warning_not_a_call() {
    let mut site = site(&[]);
    site.passive.reset_stats();
    let report = NcApplier::new(&site.b_state).run(&site.b_client()).unwrap();
    assert!(report.dump.is_none());
    assert!(report.warnings[0].contains("no Node Classifier dump"));
    assert!(api_routes(&mut site.passive).is_empty());
    let _ = &site.ca;
}

// ---- a hostile sender speaking raw frames ----

fn frame(s: &mut UnixStream, ty: FrameType, v: Value) {
    let _ = s.write_all(&encode_frame(ty, &serde_json::to_vec(&v).unwrap()));
}

fn read_frame(s: &mut UnixStream) -> (u8, Value) {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (
        header[0],
        serde_json::from_slice(&payload).unwrap_or(Value::Null),
    )
}

#[test]
fn an_nc_transaction_may_hold_only_the_dump_file() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for (path, want) in [
        ("ca/ca_key.pem", "unsafe"),
        ("ca_crt.pem", "unsafe"),
        ("../groups.json", "unsafe"),
    ] {
        let (mut a, b) = UnixStream::pair().unwrap();
        let receiver = Receiver::new(&state).host(PASSIVE);
        let handle = thread::spawn(move || receiver.receive(b));
        frame(
            &mut a,
            FrameType::Hello,
            json!({"protocol": "pe_failover", "version": PROTOCOL_VERSION, "kind": "nc",
                   "sender": "evil.example.com", "txn": "t1"}),
        );
        let (ty, welcome) = read_frame(&mut a);
        assert_eq!(ty, FrameType::Welcome as u8);
        assert_eq!(welcome["base"], Value::Null);
        frame(
            &mut a,
            FrameType::DeltaHead,
            json!({"base": null, "digest": "a".repeat(64), "upserts": 1, "removes": 0}),
        );
        frame(
            &mut a,
            FrameType::Entries,
            json!([{"path": path, "kind": "file", "mode": 0o600, "uid": 0, "gid": 0,
                    "size": 1, "mtime_ns": 0, "sha256": "b".repeat(64)}]),
        );
        let (ty, error) = read_frame(&mut a);
        assert_eq!(ty, FrameType::Error as u8, "{path}: {error}");
        assert!(
            error["kind"].as_str().unwrap().contains(want),
            "{path}: {error}"
        );
        let err = handle.join().unwrap().unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::UnsafePath | ErrorKind::InvalidInput),
            "{path}: {err}"
        );
    }
    // Nothing was stored in either namespace.
    let nc = StateDir::for_kind(&state, Kind::Nc);
    assert!(list_txns(&nc, "nc").unwrap().complete.is_empty());
    assert!(!state.join("incoming").exists());
    assert_eq!(NC_DUMP_FILE, "groups.json");

    // An unknown kind is refused by name.
    let (mut a, b) = UnixStream::pair().unwrap();
    let receiver = Receiver::new(&state).host(PASSIVE);
    let handle = thread::spawn(move || receiver.receive(b));
    frame(
        &mut a,
        FrameType::Hello,
        json!({"protocol": "pe_failover", "version": PROTOCOL_VERSION, "kind": "puppetdb",
               "sender": "a", "txn": "t2"}),
    );
    let (ty, error) = read_frame(&mut a);
    assert_eq!(ty, FrameType::Error as u8);
    assert!(
        error["message"].as_str().unwrap().contains("\"puppetdb\""),
        "{error}"
    );
    assert!(handle.join().unwrap().is_err());
}
