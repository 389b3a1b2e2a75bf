//! CA and Node Classifier replication together through the runner: a real
//! OpenSSH sshd on 127.0.0.1 whose authorized_keys entry forces the real
//! receiver binary, a real (test) Puppet CA on the active, and two
//! classifier emulators (`spec/support/nc_emulator.rb`) playing the
//! primaries' classifiers. `sync` on the active ships the CA and then the
//! groups (host names rewritten) over SSH; `apply` on the passive applies
//! both.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use pe_failover_core::classifier::{self, canonical_digest, parse_dump, update_operation, Group};
use pe_failover_core::log::Logger;
use pe_failover_core::runner::{ReplicaOutcome, Runner};
use serde_json::json;
use util::emulator::{catalog_for, nc_fixture, Emulator, HostFiles, TestCa};
use util::sshd::{ClientKey, Sshd};

const RECEIVER: &str = env!("CARGO_BIN_EXE_pe_failover_receive");
const ACTIVE: &str = "master1.puppet.vm";
const PASSIVE: &str = "master2.puppet.vm";

fn active_groups() -> Vec<Group> {
    parse_dump(&fs::read_to_string(nc_fixture("ncio-pe2016-groups-master1.min.json")).unwrap())
        .unwrap()
}

fn desired() -> Vec<Group> {
    classifier::prepare_active(&active_groups(), &[(ACTIVE, PASSIVE)])
        .unwrap()
        .groups
}

struct Site {
    sshd: Sshd,
    _key: ClientKey,
    dir: tempfile::TempDir,
    ca: TestCa,
    active_nc: Emulator,
    passive_nc: Emulator,
}

impl Site {
    fn new() -> Site {
        let sshd = Sshd::start();
        let key = sshd.client_key("transfer");
        let dir = tempfile::tempdir().unwrap();
        // The active's ssldir is the test CA's directory (its cadir `ca/`).
        let ca = TestCa::create(&dir.path().join("a_ssl"));
        let active_nc = Emulator::builder(&ca, dir.path().join("a_nc"))
            .seed_groups(&active_groups())
            .start();
        let passive_nc = Emulator::builder(&ca, dir.path().join("b_nc"))
            .classes(catalog_for(&desired()))
            .start();
        fs::create_dir_all(dir.path().join("b_ssl/ca")).unwrap();
        let site = Site {
            sshd,
            _key: key,
            dir,
            ca,
            active_nc,
            passive_nc,
        };
        let a_files = site
            .ca
            .host_files("client.test", &site.path("a_client_ssl"));
        let b_files = site
            .ca
            .host_files("client.test", &site.path("b_client_ssl"));
        site.write_active(&a_files);
        site.write_passive(&b_files);
        site.sshd.authorize(
            &site._key,
            &format!(
                "{RECEIVER} --config {}",
                site.path("passive.json").display()
            ),
        );
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn nc_section(emu: &Emulator, files: &HostFiles) -> serde_json::Value {
        json!({
            "enabled": true,
            "server": emu.base_url(),
            "cert": files.cert, "key": files.key, "cacert": files.ca,
            "hostnames": {ACTIVE: PASSIVE},
            "interval": 1
        })
    }

    fn write_active(&self, files: &HostFiles) {
        let v = json!({
            "role": "active",
            "certname": ACTIVE,
            "state_dir": self.path("a_state"),
            "ca": { "ssldir": self.ca.dir(), "cadir": self.ca.dir().join("ca") },
            "replicas": [{
                "host": "127.0.0.1",
                "port": self.sshd.port(),
                "user": self.sshd.user(),
                "identity_file": self._key.private,
                "known_hosts": self.sshd.known_hosts(),
                "connect_timeout": 5,
                "io_timeout": 15
            }],
            "nc": Site::nc_section(&self.active_nc, files),
            "watch": { "debounce_ms": 100, "max_delay_ms": 1000, "verify_interval": 300, "retry_interval": 1 },
            "log": { "syslog": false, "stderr": false }
        });
        fs::write(
            self.path("active.json"),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
    }

    fn write_passive(&self, files: &HostFiles) {
        let v = json!({
            "role": "passive",
            "certname": PASSIVE,
            "state_dir": self.path("b_state"),
            "ca": {
                "ssldir": self.path("b_ssl"),
                "cadir": self.path("b_ssl/ca"),
                "owner": "root",
                "group": "root",
                "reload_command": ["true"]
            },
            "nc": Site::nc_section(&self.passive_nc, files),
            "watch": { "debounce_ms": 50, "max_delay_ms": 500, "verify_interval": 300, "retry_interval": 1 },
            "log": { "syslog": false, "stderr": false }
        });
        fs::write(
            self.path("passive.json"),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
    }

    fn active(&self) -> Runner {
        Runner::load(self.path("active.json"))
            .unwrap()
            .logger(Logger::silent())
    }

    fn passive(&self) -> Runner {
        Runner::load(self.path("passive.json"))
            .unwrap()
            .logger(Logger::silent())
    }
}

fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn sync_and_apply_ship_ca_and_classifier_groups_over_sshd() {
    let mut site = Site::new();
    let (active, passive) = (site.active(), site.passive());

    // First sync: the CA, then the groups, each over its own SSH session.
    let run = active.sync(None, false).unwrap();
    assert!(run.ok, "{:#?}", run.lines);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    let nc = run.nc.as_ref().expect("an nc section");
    assert!(nc.ok, "{:#?}", nc);
    let prepared = nc.prepared.as_ref().unwrap();
    assert!(prepared.changed);
    assert!(prepared.rewrites > 0);
    assert_eq!(prepared.digest, canonical_digest(&desired()));
    assert_eq!(nc.replicas.len(), 1);
    assert_eq!(nc.replicas[0].outcome, "committed");
    assert!(run.lines.iter().any(|l| l.contains("nc to 127.0.0.1")
        && l.contains("SUCCESS")
        && l.contains("committed")));
    assert_eq!(
        site.sshd.log().matches("Accepted publickey").count(),
        2,
        "one session for the CA, one for the groups"
    );

    // Apply: the CA files, then the groups with the passive's host names.
    let applied = passive.apply(false).unwrap();
    assert!(applied.ok, "{:#?}", applied.lines);
    let nc_apply = applied.nc.as_ref().unwrap();
    assert!(nc_apply.ok, "{nc_apply:#?}");
    assert_eq!(
        files(&site.ca.dir().join("ca")),
        files(&site.path("b_ssl/ca")),
        "the CA reached the passive"
    );
    let b_groups = site.passive_nc.groups();
    assert_eq!(canonical_digest(&b_groups), canonical_digest(&desired()));
    let b_json =
        serde_json::to_string(&b_groups.iter().map(Group::to_value).collect::<Vec<_>>()).unwrap();
    assert!(b_json.contains(PASSIVE) && !b_json.contains(ACTIVE));

    // Status on the passive: CA entries and a healthy NC entry.
    let status = passive.status().unwrap();
    let entry = status
        .entries
        .iter()
        .find(|e| e.kind == "nc")
        .expect("an nc entry");
    assert!(entry.healthy, "{status:#?}");
    assert_eq!(
        entry.applied_digest.as_deref(),
        Some(prepared.digest.as_str())
    );
    let a_status = active.status().unwrap();
    assert!(a_status.entries.iter().any(|e| e.kind == "nc" && e.healthy));

    // Second run: nothing changed, so nothing is written anywhere.
    site.passive_nc.reset_stats();
    let run = active.sync(None, false).unwrap();
    assert!(run.ok, "{:#?}", run.lines);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::UpToDate);
    let nc = run.nc.as_ref().unwrap();
    assert!(!nc.prepared.as_ref().unwrap().changed);
    assert_eq!(nc.replicas[0].outcome, "up_to_date");
    let applied = passive.apply(false).unwrap();
    assert!(applied.ok);
    let report = applied.nc.unwrap().report.unwrap();
    assert_eq!(report.writes(), 0);
    assert_eq!(site.passive_nc.writes(), 0);

    // One group edited on A: it follows on B.
    let a = site.active_nc.client("client.test").build().unwrap();
    let current = a.groups().unwrap();
    let agent = current.iter().find(|g| g.name == "PE Agent").unwrap();
    let mut edited = agent.clone();
    edited
        .variables
        .insert("pe_failover_test".into(), json!("edited"));
    a.execute(&update_operation(agent, &edited).unwrap())
        .unwrap();
    let run = active.sync(None, false).unwrap();
    assert!(run.ok, "{:#?}", run.lines);
    assert_eq!(run.nc.as_ref().unwrap().replicas[0].outcome, "committed");
    site.passive_nc.reset_stats();
    let applied = passive.apply(false).unwrap();
    assert!(applied.ok, "{:#?}", applied.lines);
    assert_eq!(site.passive_nc.writes(), 1);
    let edited_b = site.passive_nc.groups();
    let agent_b = edited_b.iter().find(|g| g.name == "PE Agent").unwrap();
    assert_eq!(agent_b.variables["pe_failover_test"], json!("edited"));
}

#[test]
fn a_classifier_failure_does_not_block_the_ca_and_nc_false_skips_it() {
    let mut site = Site::new();
    let (active, passive) = (site.active(), site.passive());

    // The active's classifier fails: the CA is shipped anyway.
    site.active_nc.fault("error500", Some(100), None);
    let run = active.sync(None, false).unwrap();
    assert!(!run.ok);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    let nc = run.nc.as_ref().unwrap();
    assert!(!nc.ok && nc.prepared.is_none() && nc.error.is_some());
    assert!(nc.advice.as_deref().unwrap_or("").contains("CA"));
    assert!(run
        .lines
        .iter()
        .any(|l| l.contains("FAILURE") && l.contains("the CA is not affected")));
    site.active_nc.fault("none", None, None);

    // `nc: Some(false)`: the CA only.
    let run = active.sync_with_nc(None, false, Some(false)).unwrap();
    assert!(run.ok);
    assert!(run.nc.is_none());

    // The passive applies the CA although no groups arrived.
    let applied = passive.apply(false).unwrap();
    assert_eq!(
        files(&site.ca.dir().join("ca")),
        files(&site.path("b_ssl/ca"))
    );
    let nc = applied.nc.unwrap();
    assert!(nc.ok, "{nc:#?}");
    assert!(nc.report.unwrap().dump.is_none());

    // Noop: compared, nothing written or shipped.
    let run = active.sync(None, true).unwrap();
    assert!(run.ok, "{:#?}", run.lines);
    assert_eq!(run.nc.as_ref().unwrap().replicas[0].outcome, "noop");
    assert!(!site.path("a_state/nc/outgoing/groups.json").exists());
}

#[test]
fn watch_once_ships_and_applies_the_groups_with_the_ca() {
    let site = Site::new();
    let summary = site.active().watch(true).unwrap();
    assert!(summary.ok, "{:#?}", summary.lines);
    assert_eq!(summary.failures, 0, "{:#?}", summary.lines);
    assert!(site.path("a_state/nc/outgoing/groups.json").is_file());
    let summary = site.passive().watch(true).unwrap();
    assert!(summary.ok, "{:#?}", summary.lines);
    assert!(summary
        .lines
        .iter()
        .any(|l| l.contains("nc: classifier brought to groups")));
    assert_eq!(
        canonical_digest(&site.passive_nc.groups()),
        canonical_digest(&desired())
    );
    assert_eq!(
        files(&site.ca.dir().join("ca")),
        files(&site.path("b_ssl/ca"))
    );
}

fn spawn_watch(
    runner: Runner,
) -> (
    pe_failover_core::cancel::CancelToken,
    std::thread::JoinHandle<pe_failover_core::runner::WatchSummary>,
) {
    let token = pe_failover_core::cancel::CancelToken::new();
    let r = runner.cancel_token(token.clone());
    let h = std::thread::spawn(move || r.watch(false).expect("watch starts"));
    (token, h)
}

#[test]
fn running_watchers_poll_the_classifier_and_ship_only_changes() {
    let mut site = Site::new();
    let (a_stop, a_watch) = spawn_watch(site.active());
    let (b_stop, b_watch) = spawn_watch(site.passive());
    let wait_until = |what: &str, f: &mut dyn FnMut() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let want = canonical_digest(&desired());
    wait_until("the first groups reach B", &mut || {
        canonical_digest(&site.passive_nc.groups()) == want
    });

    // Quiet polls (nc.interval is 1 s) open no SSH session.
    let logins = site.sshd.log().matches("Accepted publickey").count();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        site.sshd.log().matches("Accepted publickey").count(),
        logins,
        "an unchanged classifier ships nothing"
    );

    // An edit on A follows within a poll or two.
    let a = site.active_nc.client("client.test").build().unwrap();
    let current = a.groups().unwrap();
    let agent = current.iter().find(|g| g.name == "PE Agent").unwrap();
    let mut edited = agent.clone();
    edited
        .variables
        .insert("pe_failover_test".into(), json!("watched"));
    a.execute(&update_operation(agent, &edited).unwrap())
        .unwrap();
    let passive_nc = &mut site.passive_nc;
    wait_until("the edit reaches B", &mut || {
        passive_nc.groups().iter().any(|g| {
            g.name == "PE Agent" && g.variables.get("pe_failover_test") == Some(&json!("watched"))
        })
    });

    // The classifier's rounds use the kept session too: the CA receiver
    // left waiting on it is closed (it exits) and a new one waits after.
    wait_until("one receiver waits between rounds", &mut || {
        site.sshd.running("pe_failover_receive") == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(site.sshd.running("pe_failover_receive"), 1);

    a_stop.cancel();
    b_stop.cancel();
    let (a_sum, b_sum) = (a_watch.join().unwrap(), b_watch.join().unwrap());
    assert_eq!(a_sum.failures, 0, "{:#?}", a_sum.lines);
    assert_eq!(b_sum.failures, 0, "{:#?}", b_sum.lines);
}
