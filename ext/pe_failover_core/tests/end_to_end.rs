//! CA replication end to end through the runner: a real OpenSSH sshd on
//! 127.0.0.1 whose authorized_keys entry forces the real receiver binary
//! (`restrict,command="pe_failover_receive --config <passive config>"`),
//! the sender driven by an active configuration file, and the applier and
//! watchers driven by the passive one.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pe_failover_core::cancel::CancelToken;
use pe_failover_core::log::Logger;
use pe_failover_core::replset::{load_manifest, manifest_file_digest};
use pe_failover_core::runner::{ReplicaOutcome, Runner, WatchSummary};
use pe_failover_core::stage::StateDir;
use pe_failover_core::ErrorKind;
use util::selinux::{selinux_label, set_selinux_label};
use util::sshd::{ClientKey, Sshd};
use util::{ca_tree, TempTree};

const RECEIVER: &str = env!("CARGO_BIN_EXE_pe_failover_receive");

struct E2e {
    sshd: Sshd,
    key: ClientKey,
    a: TempTree,
    b: TempTree,
    dir: tempfile::TempDir,
}

impl E2e {
    fn new(certs: usize) -> E2e {
        let sshd = Sshd::start();
        let a = ca_tree(certs);
        let b = TempTree::new();
        b.dir("ca");
        b.file("certs/b.test.pem", "b's own certificate\n");
        b.file("private_keys/b.test.pem", "b's own key\n");
        let dir = tempfile::tempdir().unwrap();
        let key = sshd.client_key("transfer");
        let e = E2e {
            sshd,
            key,
            a,
            b,
            dir,
        };
        e.write_active(|_| {});
        e.write_passive("passive");
        e.sshd.authorize(
            &e.key,
            &format!("{RECEIVER} --config {}", e.passive_config().display()),
        );
        e
    }

    fn active_config(&self) -> PathBuf {
        self.dir.path().join("active.json")
    }

    fn passive_config(&self) -> PathBuf {
        self.dir.path().join("passive.json")
    }

    fn a_state(&self) -> PathBuf {
        self.dir.path().join("a_state")
    }

    fn b_state(&self) -> PathBuf {
        self.dir.path().join("b_state")
    }

    fn a_cadir(&self) -> PathBuf {
        self.a.path("ca")
    }

    fn b_cadir(&self) -> PathBuf {
        self.b.path("ca")
    }

    /// Writes the active's configuration; `edit` adjusts the JSON.
    fn write_active(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut v = serde_json::json!({
            "role": "active",
            "certname": "a.test",
            "state_dir": self.a_state(),
            "ca": { "ssldir": self.a.root(), "cadir": self.a_cadir() },
            "replicas": [{
                "host": "127.0.0.1",
                "port": self.sshd.port(),
                "user": self.sshd.user(),
                "identity_file": self.key.private,
                "known_hosts": self.sshd.known_hosts(),
                "connect_timeout": 5,
                "io_timeout": 15
            }],
            "nc": { "enabled": false },
            "watch": { "debounce_ms": 100, "max_delay_ms": 1000, "verify_interval": 300, "retry_interval": 1 },
            "log": { "syslog": false, "stderr": false }
        });
        edit(&mut v);
        fs::write(self.active_config(), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn write_passive(&self, role: &str) {
        let v = serde_json::json!({
            "role": role,
            "certname": "b.test",
            "state_dir": self.b_state(),
            "ca": {
                "ssldir": self.b.root(),
                "cadir": self.b_cadir(),
                "owner": "root",
                "group": "root",
                "reload_command": ["true"]
            },
            "nc": { "enabled": false },
            "watch": { "debounce_ms": 50, "max_delay_ms": 500, "verify_interval": 300, "retry_interval": 1 },
            "log": { "syslog": false, "stderr": false }
        });
        fs::write(
            self.passive_config(),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
    }

    fn active(&self) -> Runner {
        Runner::load(self.active_config())
            .unwrap()
            .logger(Logger::silent())
    }

    fn passive(&self) -> Runner {
        Runner::load(self.passive_config())
            .unwrap()
            .logger(Logger::silent())
    }

    fn sign(&self, name: &str) {
        let ca = self.a_cadir();
        let serial =
            u64::from_str_radix(fs::read_to_string(ca.join("serial")).unwrap().trim(), 16).unwrap();
        fs::write(
            ca.join(format!("signed/{name}.pem")),
            format!("-----BEGIN CERTIFICATE-----\n{name} {serial}\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        fs::write(ca.join("serial"), format!("{:04X}\n", serial + 1)).unwrap();
        let mut inv = fs::OpenOptions::new()
            .append(true)
            .open(ca.join("inventory.txt"))
            .unwrap();
        writeln!(
            inv,
            "0x{serial:04x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN={name}"
        )
        .unwrap();
    }

    fn revoke(&self, name: &str) {
        let p = self.a_cadir().join("ca_crl.pem");
        let mut crl = fs::read_to_string(&p).unwrap();
        crl.push_str(&format!("revoked {name}\n"));
        fs::write(&p, crl).unwrap();
    }

    fn clean(&self, name: &str) {
        self.revoke(name);
        fs::remove_file(self.a_cadir().join(format!("signed/{name}.pem"))).unwrap();
    }

    fn converged(&self) -> bool {
        files(&self.a_cadir()) == files(&self.b_cadir())
    }

    fn assert_converged(&self) {
        let (a, b) = (files(&self.a_cadir()), files(&self.b_cadir()));
        if a != b {
            let only_a: Vec<_> = a
                .keys()
                .filter(|k| b.get(*k) != a.get(*k))
                .take(5)
                .collect();
            let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
            panic!("not converged: differ {only_a:?}, only on b {only_b:?}");
        }
        assert_eq!(
            fs::read(self.b.path("private_keys/b.test.pem")).unwrap(),
            b"b's own key\n",
            "the passive's own key is never touched"
        );
    }

    fn accepted_logins(&self) -> usize {
        self.sshd.log().matches("Accepted publickey").count()
    }

    fn sync_ok(&self) -> pe_failover_core::runner::SyncRun {
        let run = self.active().sync(None, false).unwrap();
        assert!(run.ok, "{:?}", run.lines);
        run
    }
}

/// Relative path → contents of every file under `root`.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn wait_until(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if what() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    what()
}

fn spawn_watch(runner: Runner) -> (CancelToken, thread::JoinHandle<WatchSummary>) {
    let token = CancelToken::new();
    let r = runner.cancel_token(token.clone());
    let h = thread::spawn(move || r.watch(false).expect("watch starts"));
    (token, h)
}

#[test]
fn sign_revoke_and_clean_each_reach_the_passive_through_sshd() {
    let e = E2e::new(10);

    // First full sync.
    let run = e.sync_ok();
    let r = &run.replicas[0];
    assert_eq!(r.outcome, ReplicaOutcome::Committed);
    assert!(r.base.is_none());
    assert!(r.added.contains(&"ca/ca_key.pem".to_string()));
    assert!(run.lines[0].contains("[SUCCESS]"), "{:?}", run.lines);
    let applied = e.passive().apply(false).unwrap();
    assert_eq!(
        applied.report.applied_digest.as_deref(),
        run.digest.as_deref()
    );
    e.assert_converged();

    // A no-change sync ships no file.
    let run = e.sync_ok();
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::UpToDate);
    assert_eq!(run.replicas[0].objects, 0);
    assert_eq!(run.replicas[0].changes, 0);

    // Sign.
    e.sign("new.test");
    let run = e.sync_ok();
    let r = &run.replicas[0];
    assert_eq!(r.added, ["ca/signed/new.test.pem"]);
    assert!(r.changed.contains(&"ca/serial".to_string()));
    e.passive().apply(false).unwrap();
    e.assert_converged();

    // Revoke only: the CRL changes, nothing in signed/. The replaced CRL
    // keeps its SELinux label (settable by root where no SELinux runs).
    e.revoke("node1.example.com");
    let run = e.sync_ok();
    assert_eq!(run.replicas[0].changed, ["ca/ca_crl.pem"]);
    let label = b"system_u:object_r:puppet_etc_t:s0\0";
    set_selinux_label(&e.b_cadir().join("ca_crl.pem"), label);
    let a = e.passive().apply(false).unwrap();
    assert!(a.report.live.written.contains(&"ca/ca_crl.pem".to_string()));
    assert!(a.report.reloaded);
    assert_eq!(
        selinux_label(&e.b_cadir().join("ca_crl.pem")).as_deref(),
        Some(&label[..])
    );
    assert!(
        a.lines[0].contains("SELinux labels kept on replaced files: 1"),
        "{:?}",
        a.lines
    );
    e.assert_converged();

    // Clean: removed on the passive.
    e.clean("node2.example.com");
    let run = e.sync_ok();
    assert_eq!(run.replicas[0].removed, ["ca/signed/node2.example.com.pem"]);
    e.passive().apply(false).unwrap();
    assert!(!e.b_cadir().join("signed/node2.example.com.pem").exists());
    e.assert_converged();

    // Both sides report healthy.
    let st = e.active().status().unwrap();
    assert!(st.healthy, "{:?}", st.problems);
    assert_eq!(st.entries[0].digest, run.digest);
    let st = e.passive().status().unwrap();
    assert!(st.healthy, "{:?}", st.problems);
    assert_eq!(st.entries.len(), 2);
    assert_eq!(st.entries[1].applied_digest, run.digest);
    assert_eq!(st.entries[0].peer.as_deref(), Some("a.test"));
}

#[test]
fn noop_reports_changes_and_ships_nothing() {
    let e = E2e::new(3);
    e.sync_ok();
    e.passive().apply(false).unwrap();
    e.sign("noop.test");
    let run = e.active().sync(Some("127.0.0.1"), true).unwrap();
    assert!(run.ok);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Noop);
    assert_eq!(run.replicas[0].added, ["ca/signed/noop.test.pem"]);
    assert!(run.lines[0].contains("would ship"), "{:?}", run.lines);
    assert!(fs::read_dir(e.b_state().join("incoming"))
        .unwrap()
        .flatten()
        .all(|d| !d.file_type().unwrap().is_dir()));
    let err = e.active().sync(Some("nope.test"), true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_stat_cache_that_cannot_be_written_is_a_warning_and_the_sync_goes_on() {
    let e = E2e::new(3);
    fs::create_dir_all(e.a_state().join("ca.scan")).unwrap();
    // Only files older than the cache's racy window (2 s) are cached.
    thread::sleep(Duration::from_millis(2100));
    let run = e.sync_ok();
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    let warning = run
        .lines
        .iter()
        .find(|l| l.contains("stat cache was not updated"))
        .unwrap_or_else(|| panic!("no warning about the stat cache: {:?}", run.lines));
    assert!(warning.contains("[WARNING]"), "{warning}");
    assert!(warning.contains("ca.scan"), "names the file: {warning}");
    e.passive().apply(false).unwrap();
    e.assert_converged();
}

#[test]
fn a_connection_killed_mid_transfer_leaves_the_live_ca_alone_and_the_next_sync_completes() {
    let e = E2e::new(3);
    e.sync_ok();
    e.passive().apply(false).unwrap();
    let before = files(&e.b_cadir());
    // A big file makes the transfer last long enough to cut.
    let big: Vec<u8> = (0..64u32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(e.a_cadir().join("big.bin"), &big).unwrap();
    let runner = e.active();
    let h = thread::spawn(move || runner.sync(None, false).unwrap());
    let incoming = e.b_state().join("incoming");
    let cut = wait_until(Duration::from_secs(30), || {
        fs::read_dir(&incoming)
            .map(|d| {
                d.flatten()
                    .any(|x| x.file_name().to_string_lossy().ends_with(".partial"))
            })
            .unwrap_or(false)
    });
    assert!(cut, "the transfer never started");
    thread::sleep(Duration::from_millis(100));
    for pid in e.sshd.session_pids() {
        // SAFETY: kill(2) on session processes of our own sshd.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let run = h.join().unwrap();
    assert!(!run.ok, "{:?}", run.lines);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Failed);
    assert!(run.lines[0].contains("[FAILURE]"), "{:?}", run.lines);
    // Nothing the applier would take; the live CA is unchanged.
    e.passive().apply(false).unwrap();
    assert_eq!(files(&e.b_cadir()), before);
    let st = e.active().status().unwrap();
    assert!(!st.healthy);
    // The next sync completes.
    e.sync_ok();
    e.passive().apply(false).unwrap();
    e.assert_converged();
}

#[test]
fn a_changed_host_key_and_an_unauthorized_key_fail_with_advice() {
    let e = E2e::new(2);
    // Host key mismatch: pin another key for the same host and port.
    let other = e.dir.path().join("other_known_hosts");
    fs::write(
        &other,
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7oRj0AyxV7eaSxDL0d1NiEkHMOb5tIHGn5sDd1wXQb\n",
            e.sshd.port()
        ),
    )
    .unwrap();
    e.write_active(|v| v["replicas"][0]["known_hosts"] = other.display().to_string().into());
    let run = e.active().sync(None, false).unwrap();
    assert!(!run.ok);
    let r = &run.replicas[0];
    assert_eq!(r.error.as_ref().unwrap().kind, "verification");
    assert!(r.advice.as_ref().unwrap().contains("pin-host-key"), "{r:?}");
    assert!(run.lines[0].contains("[FAILURE]") && run.lines[0].contains("127.0.0.1"));
    let st = e.active().status().unwrap();
    assert!(!st.healthy);
    assert!(st.problems[0].contains("pin-host-key"), "{:?}", st.problems);
    assert_eq!(e.accepted_logins(), 0);

    // Wrong client key.
    let stranger = e.sshd.client_key("stranger");
    e.write_active(|v| {
        v["replicas"][0]["identity_file"] = stranger.private.display().to_string().into()
    });
    let run = e.active().sync(None, false).unwrap();
    let r = &run.replicas[0];
    assert_eq!(r.error.as_ref().unwrap().kind, "unauthorized", "{r:?}");
    assert!(r.advice.as_ref().unwrap().contains("auth_key"));
    let text = format!("{:?}", run);
    let secret = fs::read_to_string(&stranger.private).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!text.contains(body), "no key material in reports");
    assert_eq!(e.accepted_logins(), 0);
}

#[test]
fn the_forced_command_runs_whatever_command_is_asked() {
    let e = E2e::new(2);
    let session = e.sshd.target(&e.key).connect().unwrap();
    let victim = e.b_cadir();
    let mut ch = session
        .exec(&format!("rm -rf {}", victim.display()))
        .unwrap();
    ch.write_all(b"not the protocol").unwrap();
    ch.send_eof().unwrap();
    let status = ch.finish().unwrap();
    assert_ne!(status, 0, "the receiver refused the garbage");
    assert!(victim.is_dir(), "rm never ran");
    assert!(
        ch.stderr().contains("pe_failover_receive"),
        "{}",
        ch.stderr()
    );
}

#[test]
fn a_fenced_replica_is_not_retried_until_the_configuration_changes() {
    let e = E2e::new(2);
    e.sync_ok();
    // B is promoted.
    e.write_passive("active");
    let run = e.active().sync(None, false).unwrap();
    assert!(!run.ok);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Fenced);
    assert!(run.lines[0].contains("[FAILURE]"), "{:?}", run.lines);
    assert!(run.lines[0].contains("promoted"), "{:?}", run.lines);
    let fence = e
        .a_state()
        .join(format!("replicas/127.0.0.1_{}/fenced.json", e.sshd.port()));
    assert!(fence.exists());
    let st = e.active().status().unwrap();
    assert!(!st.healthy);
    assert!(st.entries[0].fenced);

    // The watcher leaves it alone, through changes and retry intervals.
    let logins = e.accepted_logins();
    let runner = e.active();
    let lines = runner.clone();
    let (token, h) = spawn_watch(runner);
    thread::sleep(Duration::from_millis(500));
    e.sign("during.test");
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        e.accepted_logins(),
        logins,
        "a fenced replica was contacted"
    );
    assert!(lines
        .log_lines()
        .iter()
        .any(|l| l.contains("[WARNING]") && l.contains("fenced")));

    // Demoted again, and the active's configuration changes: it resumes.
    e.write_passive("passive");
    e.write_active(|v| v["watch"]["retry_interval"] = 2.into());
    assert!(
        wait_until(Duration::from_secs(15), || !fence.exists()),
        "{:?}",
        lines.log_lines()
    );
    token.cancel();
    let summary = h.join().unwrap();
    assert!(summary.cancelled);
    assert!(e.accepted_logins() > logins);
    e.passive().apply(false).unwrap();
    e.assert_converged();
}

#[test]
fn a_burst_of_1000_signings_is_coalesced_into_a_few_syncs() {
    let e = E2e::new(5);
    let (a_token, a) = spawn_watch(e.active());
    let (b_token, b) = spawn_watch(e.passive());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    let started = Instant::now();
    for i in 0..1000 {
        e.sign(&format!("burst{i}.test"));
    }
    let signing = started.elapsed();
    assert!(
        wait_until(Duration::from_secs(60), || e.converged()),
        "not converged within a minute"
    );
    let lag = started.elapsed() - signing;
    a_token.cancel();
    b_token.cancel();
    let a = a.join().unwrap();
    let b = b.join().unwrap();
    eprintln!(
        "burst: signing {signing:?}, then converged after {lag:?}; active {a:?}; passive rounds {}",
        b.rounds
    );
    assert!(a.batch_rounds >= 1);
    assert!(
        a.batch_rounds <= 15,
        "{} syncs for one burst: {:?}",
        a.batch_rounds,
        a
    );
    // A CA written to continuously can make a scan or a send give up (the
    // file kept changing); the round is retried, nothing is lost.
    assert!(a.failures <= 3, "{:?}", a.lines);
    e.assert_converged();
}

#[test]
fn the_active_watcher_keeps_its_session_and_connects_again_when_it_is_dropped() {
    let e = E2e::new(5);
    let before = e.accepted_logins();
    let (b_token, b) = spawn_watch(e.passive());
    let (a_token, a) = spawn_watch(e.active());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    for i in 0..3 {
        e.sign(&format!("kept{i}.test"));
        assert!(
            wait_until(Duration::from_secs(20), || e.converged()),
            "kept{i}.test did not arrive"
        );
    }
    assert_eq!(
        e.accepted_logins() - before,
        1,
        "the first round and three batches share one session:\n{}",
        e.sshd.log()
    );
    // A new directory makes the next round scan everything (the path a
    // one-shot sync takes): it too uses the kept session.
    fs::create_dir(e.a_cadir().join("extra")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || e
        .b_cadir()
        .join("extra")
        .is_dir()));
    assert_eq!(e.accepted_logins() - before, 1, "{}", e.sshd.log());

    // The server side of the idle session dies, with the receiver waiting
    // on it for the next round (killed once it runs: a login shell
    // killed half-way through its start-up files may leave their locks
    // behind): the next round notices and connects again, nothing is lost.
    assert!(wait_until(Duration::from_secs(5), || receivers(&e) == 1));
    for pid in e.sshd.session_pids() {
        // SAFETY: kill(2) on a session process of the test's own sshd.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    e.sign("after-drop.test");
    assert!(
        wait_until(Duration::from_secs(20), || e.converged()),
        "after-drop.test did not arrive"
    );
    assert_eq!(e.accepted_logins() - before, 2, "{}", e.sshd.log());
    a_token.cancel();
    b_token.cancel();
    let a = a.join().unwrap();
    b.join().unwrap();
    assert!(a.ok, "{:?}", a.lines);
    assert_eq!(
        a.failures, 0,
        "a dropped idle session is no failure: {:?}",
        a.lines
    );
    e.assert_converged();
}

/// The receivers running under the test's sshd.
fn receivers(e: &E2e) -> usize {
    e.sshd.running("pe_failover_receive")
}

/// The process ids of the receivers running under the test's sshd.
fn receiver_pids(e: &E2e) -> Vec<u32> {
    e.sshd.pids_running("pe_failover_receive")
}

#[test]
fn the_active_watchers_receiver_serves_round_after_round() {
    let e = E2e::new(5);
    let (b_token, b) = spawn_watch(e.passive());
    let (a_token, a) = spawn_watch(e.active());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    // Between rounds the last round's receiver waits on the kept session,
    // with the manifest it stored as its next base; every round talks to
    // that one process.
    assert!(
        wait_until(Duration::from_secs(5), || receivers(&e) == 1),
        "{} receivers between rounds",
        receivers(&e)
    );
    let serving = receiver_pids(&e);
    for i in 0..3 {
        e.sign(&format!("warm{i}.test"));
        assert!(
            wait_until(Duration::from_secs(20), || e.converged()),
            "warm{i}.test did not arrive"
        );
        assert_eq!(
            receiver_pids(&e),
            serving,
            "round {i} started another receiver"
        );
    }
    // A receiver that leaves after its session (as one of an earlier
    // version does) while the SSH session stays: the next round finds it
    // gone and runs again over a new connection, without a failure.
    let logins = e.accepted_logins();
    for pid in &serving {
        // SAFETY: kill(2) on a receiver process of the test's own sshd.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(wait_until(Duration::from_secs(5), || receivers(&e) == 0));
    e.sign("after-exit.test");
    assert!(
        wait_until(Duration::from_secs(20), || e.converged()),
        "after-exit.test did not arrive"
    );
    assert_eq!(e.accepted_logins(), logins + 1, "{}", e.sshd.log());
    assert!(wait_until(Duration::from_secs(5), || receivers(&e) == 1));
    assert_ne!(receiver_pids(&e), serving);
    let status_file = StateDir::new(e.b_state()).receiver_status_file();
    let before = fs::read(&status_file).unwrap();
    // The watcher stops: the waiting receiver is closed unused and leaves
    // quietly, its status file as it was.
    a_token.cancel();
    let a = a.join().unwrap();
    assert!(a.ok, "{:?}", a.lines);
    assert_eq!(a.failures, 0, "{:?}", a.lines);
    assert!(
        wait_until(Duration::from_secs(5), || receivers(&e) == 0),
        "{} receivers after the watcher stopped",
        receivers(&e)
    );
    assert_eq!(fs::read(&status_file).unwrap(), before);
    b_token.cancel();
    b.join().unwrap();
    e.assert_converged();
}

#[test]
fn restarting_the_watcher_during_a_burst_loses_nothing() {
    let e = E2e::new(5);
    let (b_token, b) = spawn_watch(e.passive());
    let (first, h1) = spawn_watch(e.active());
    let mut h1 = Some(h1);
    let done = Arc::new(AtomicBool::new(false));
    let mut second = None;
    for i in 0..1000 {
        e.sign(&format!("restart{i}.test"));
        if i == 300 {
            first.cancel();
            h1.take().unwrap().join().unwrap();
        }
        if i == 700 {
            second = Some(spawn_watch(e.active()));
        }
        if i % 100 == 0 {
            thread::sleep(Duration::from_millis(20));
        }
    }
    done.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(60), || e.converged()),
        "lost changes"
    );
    let (t2, h2) = second.unwrap();
    t2.cancel();
    let s2 = h2.join().unwrap();
    b_token.cancel();
    b.join().unwrap();
    assert!(s2.failures <= 3, "{:?}", s2.lines);
    e.assert_converged();
}

#[test]
fn watch_once_syncs_and_applies_what_is_pending() {
    let e = E2e::new(3);
    let a = e.active().watch(true).unwrap();
    assert_eq!(a.rounds, 1);
    assert!(a.ok, "{:?}", a.lines);
    let b = e.passive().watch(true).unwrap();
    assert!(b.ok, "{:?}", b.lines);
    e.assert_converged();
    // The passive refuses to sync, the active to apply or receive.
    assert_eq!(
        e.passive().sync(None, false).unwrap_err().kind(),
        ErrorKind::Refused
    );
    assert_eq!(
        e.active().apply(false).unwrap_err().kind(),
        ErrorKind::Fenced
    );
}

#[test]
fn a_sync_run_while_the_active_watcher_runs_is_run_by_the_watcher() {
    let e = E2e::new(5);
    // The watcher's own rounds come 3 s after a change: a `sync` run
    // meanwhile is the one that ships it.
    e.write_active(|v| v["watch"]["debounce_ms"] = 3000.into());
    let socket = e.a_state().join("watch.sock");
    let (b_token, b) = spawn_watch(e.passive());
    let (a_token, a) = spawn_watch(e.active());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    assert!(wait_until(Duration::from_secs(5), || socket.exists()));
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A signing, then `sync` at once: the watcher ships it, from what
    // inotify told it, before its own round would have.
    e.sign("asked.test");
    let run = e.sync_ok();
    assert!(run.via_watcher, "{:?}", run.lines);
    let r = &run.replicas[0];
    assert_eq!(r.outcome, ReplicaOutcome::Committed, "{:?}", run.lines);
    assert!(r.added.contains(&"ca/signed/asked.test.pem".to_string()));
    assert!(wait_until(Duration::from_secs(20), || e.converged()));

    // Two commands at once (a cron job and a Puppet run): the watcher runs
    // both, and the change goes once.
    e.sign("twice.test");
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| e.active().sync(None, false).unwrap());
        let two = s.spawn(|| e.active().sync(None, false).unwrap());
        (one.join().unwrap(), two.join().unwrap())
    });
    for run in [&one, &two] {
        assert!(run.ok && run.via_watcher, "{:?}", run.lines);
    }
    let outcomes = [one.replicas[0].outcome, two.replicas[0].outcome];
    assert!(
        outcomes.contains(&ReplicaOutcome::Committed),
        "{:?} {:?}",
        one.lines,
        two.lines
    );
    assert!(wait_until(Duration::from_secs(20), || e.converged()));

    // Noop through the watcher reports the change and ships nothing; the
    // change is then shipped by the watcher's own round all the same (at
    // once: the request cut its debounce short).
    e.sign("peek.test");
    let run = e.active().sync(None, true).unwrap();
    assert!(run.via_watcher);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Noop);
    assert_eq!(run.replicas[0].objects, 0);
    assert!(run.replicas[0]
        .added
        .contains(&"ca/signed/peek.test.pem".to_string()));
    assert!(wait_until(Duration::from_secs(20), || e.converged()));

    // Not asked: without the watcher, or with another configuration file.
    let run = e.active().use_watcher(false).sync(None, false).unwrap();
    assert!(!run.via_watcher);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::UpToDate);
    let other = e.dir.path().join("other.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(e.active_config()).unwrap()).unwrap();
    config["watch"]["retry_interval"] = 7.into();
    fs::write(&other, serde_json::to_vec(&config).unwrap()).unwrap();
    let run = Runner::load(&other)
        .unwrap()
        .logger(Logger::silent())
        .sync(None, false)
        .unwrap();
    assert!(!run.via_watcher);
    assert!(run.ok, "{:?}", run.lines);
    // Declined, and the caller says so.
    assert!(
        run.lines[0].contains("[WARNING]")
            && run.lines[0].contains("did not run this sync")
            && run.lines[0].contains("another configuration file"),
        "{:?}",
        run.lines
    );

    // A replica the configuration does not name: the watcher's answer is
    // the error a sync here gives.
    let err = e.active().sync(Some("nowhere.test"), false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    a_token.cancel();
    let a = a.join().unwrap();
    assert!(a.ok, "{:?}", a.lines);
    assert_eq!(a.requests, 4, "{:?}", a.lines);
    assert_eq!(a.failures, 0, "{:?}", a.lines);
    // Gone with the watcher: a sync scans here again.
    assert!(!socket.exists());
    e.sign("after.test");
    let run = e.sync_ok();
    assert!(!run.via_watcher);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    b_token.cancel();
    b.join().unwrap();
}

/// The manifest file the active keeps of what it shipped to the replica
/// (`replicas/<replica>/ca.manifest.json`), and the digest it records.
fn shipped_file(e: &E2e) -> (PathBuf, Option<String>) {
    let replicas = e.a_state().join("replicas");
    let dir = fs::read_dir(&replicas)
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|d| d.join("ca.status.json").exists())
        .expect("a replica's state directory");
    let file = dir.join("ca.manifest.json");
    let digest = manifest_file_digest(&file);
    (file, digest)
}

#[test]
fn the_active_watcher_writes_the_manifest_it_shipped_once_idle_and_when_it_stops() {
    let e = E2e::new(5);
    // The watcher's own rounds come 3 s after a change: the `sync` run at
    // once after a signing is the round that ships it (with the default
    // debounce, a loaded machine could let the watcher's own round go
    // first, and the request find the replica up to date).
    e.write_active(|v| v["watch"]["debounce_ms"] = 3000.into());
    let (b_token, b) = spawn_watch(e.passive());
    let (a_token, a) = spawn_watch(e.active());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    assert!(wait_until(Duration::from_secs(5), || e
        .a_state()
        .join("watch.sock")
        .exists()));

    // A round through the watcher leaves the file as it was (it is written
    // once no change or request came for two seconds, not during a burst)...
    e.sign("idle.test");
    let run = e.sync_ok();
    assert!(run.via_watcher, "{:?}", run.lines);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    let shipped = run.digest.clone().unwrap();
    let (file, before) = shipped_file(&e);
    assert_ne!(before.as_deref(), Some(shipped.as_str()));
    // ... then writes it, readable and with the digest the replica holds.
    assert!(wait_until(Duration::from_secs(15), || {
        manifest_file_digest(&file).as_deref() == Some(shipped.as_str())
    }));
    let written = load_manifest(&file).unwrap().unwrap();
    assert_eq!(written.digest(), shipped);
    assert!(written.get("ca/signed/idle.test.pem").is_some());
    assert!(wait_until(Duration::from_secs(20), || e.converged()));

    // Stopped right after a round: written before it exits.
    e.sign("stop.test");
    let run = e.sync_ok();
    assert!(run.via_watcher, "{:?}", run.lines);
    let shipped = run.digest.clone().unwrap();
    a_token.cancel();
    let a = a.join().unwrap();
    assert!(a.ok, "{:?}", a.lines);
    assert_eq!(
        manifest_file_digest(&file).as_deref(),
        Some(shipped.as_str())
    );
    assert!(wait_until(Duration::from_secs(20), || e.converged()));
    b_token.cancel();
    b.join().unwrap();

    // A sync without the watcher diffs against that file: no manifest
    // exchange with the replica.
    e.sign("after.test");
    let run = e.sync_ok();
    assert!(!run.via_watcher);
    assert_eq!(run.replicas[0].outcome, ReplicaOutcome::Committed);
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(file.with_file_name("ca.status.json")).unwrap()).unwrap();
    assert_eq!(
        status["last_counts"]["manifest_exchanged"],
        serde_json::json!(false),
        "{status}"
    );
}

#[test]
fn a_socket_left_by_a_dead_watcher_is_replaced_and_never_blocks_a_sync() {
    let e = E2e::new(3);
    e.write_active(|v| v["watch"]["debounce_ms"] = 3000.into());
    let socket = e.a_state().join("watch.sock");
    fs::create_dir_all(e.a_state()).unwrap();
    // Bound, then closed: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let run = e.sync_ok();
    assert!(!run.via_watcher);
    // No watcher: nothing to warn about.
    assert!(
        !run.lines.iter().any(|l| l.contains("watcher")),
        "{:?}",
        run.lines
    );
    let (a_token, a) = spawn_watch(e.active());
    assert!(wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }));
    e.sign("fresh.test");
    let run = e.sync_ok();
    assert!(run.via_watcher, "{:?}", run.lines);
    // The socket is served before the watcher's first round, which may
    // scan after the signing and ship it itself: the request's round then
    // finds the replica up to date. Either way the signing has arrived.
    assert!(
        matches!(
            run.replicas[0].outcome,
            ReplicaOutcome::Committed | ReplicaOutcome::UpToDate
        ),
        "{:?}",
        run.lines
    );
    e.passive().apply(false).unwrap();
    e.assert_converged();
    a_token.cancel();
    assert_eq!(a.join().unwrap().requests, 1);
}
