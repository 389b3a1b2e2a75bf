//! CA replication end to end: sender and receiver over a socketpair (and a
//! real child process), applier on real directories, with the original
//! module's defects as test cases.

#[path = "util/pair.rs"]
mod pair;
#[path = "util/selinux.rs"]
mod selinux;

use std::fs;
use std::net::Shutdown;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use sha2::Digest;

use pair::{Counting, CutAfter, FlipFirstData, Pair, ACTIVE, PASSIVE};
use pe_failover_core::apply::{ApplyProgress, Owner};
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::protocol::ReceiveOutcome;
use pe_failover_core::replset::{detect_cadir, ReplicatedSet};
use pe_failover_core::stage::{latest_snapshot_meta, LatestCache, StateDir};
use pe_failover_core::state::{ReceiverStatus, ReplicaStatus, SenderStatus, SyncOutcome};
use pe_failover_core::ErrorKind;
use selinux::{selinux_label, set_selinux_label};

/// Says that the calling test is skipped for `why` (it returns next),
/// unless `PEF_TEST_NO_SKIP` is set, as CI sets it: then the test fails, so
/// that a run meant to cover everything never passes by skipping.
fn skip(why: &str) {
    assert!(
        std::env::var_os("PEF_TEST_NO_SKIP").is_none(),
        "this test cannot run here ({why}), and PEF_TEST_NO_SKIP is set"
    );
    eprintln!("skipped: {why}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn first_full_sync_replaces_the_ca_and_keeps_host_files() {
    let mut p = Pair::new(20);
    if is_root() {
        p.owner = Owner::Fixed {
            uid: 4242,
            gid: 4243,
        };
    }
    let (sync, apply) = p.sync_and_apply();
    assert_eq!(sync.outcome, SyncOutcome::Committed);
    assert_eq!(sync.base, None);
    assert!(
        !sync.stats.manifest_exchanged,
        "nothing to exchange with an empty replica"
    );
    assert_eq!(apply.staged.len(), 1);
    assert_eq!(apply.applied_digest.as_deref(), Some(sync.digest.as_str()));
    p.assert_converged(&[PASSIVE]);
    p.assert_host_files_untouched();
    // The passive's own certificate is replica-only: kept and reported.
    assert_eq!(apply.kept, [PASSIVE]);
    // The CA key keeps its mode; files get the configured owner.
    let key = fs::metadata(p.b_cadir.join("ca_key.pem")).unwrap();
    assert_eq!(key.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        fs::metadata(&p.b_cadir).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    if is_root() {
        for f in ["ca_key.pem", "signed/node3.example.com.pem", "signed"] {
            let m = fs::symlink_metadata(p.b_cadir.join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4243), "{f}");
        }
        let crl = fs::metadata(p.b_ssl.join("crl.pem")).unwrap();
        assert_eq!((crl.uid(), crl.gid()), (4242, 4243));
        let own = fs::metadata(p.b_ssl.join(format!("private_keys/{PASSIVE}.pem"))).unwrap();
        assert_eq!(own.uid(), 0, "the replica's own key is never chowned");
    }
    // The CRL changed (it is new): puppetserver was reloaded once.
    assert!(apply.reloaded);
    assert_eq!(p.reloads(), 1);

    // Snapshots: a manifest per snapshot, contents once in the 0700
    // content store under their SHA-256, `latest` link.
    let latest = fs::read_link(p.b_state.join("snapshots/latest")).unwrap();
    assert_eq!(latest.to_str().unwrap(), sync.digest);
    let snap = p.b_state.join("snapshots").join(&sync.digest);
    assert!(snap.join("manifest.json").is_file());
    let objects = p.b_state.join("snapshots/objects");
    assert_eq!(
        fs::metadata(&objects).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key = fs::read(p.a_cadir.join("ca_key.pem")).unwrap();
    let key_sha = hex::encode(sha2::Sha256::digest(&key));
    let stored = objects.join(&key_sha[..2]).join(&key_sha);
    assert_eq!(fs::read(&stored).unwrap(), key);
    assert_eq!(
        fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The receiver reads the staged manifest: the snapshot's own file.
    assert_eq!(
        fs::metadata(p.b_state.join("staged.manifest.json"))
            .unwrap()
            .ino(),
        fs::metadata(snap.join("manifest.json")).unwrap().ino()
    );
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());

    // Status files on both sides.
    let st = ReplicaStatus::load(&p.b_state.join("status.json"))
        .unwrap()
        .unwrap();
    assert!(st.last_run_ok);
    assert_eq!(st.staged.as_ref().unwrap().digest, sync.digest);
    assert_eq!(st.applied.as_ref().unwrap().digest, sync.digest);
    assert_eq!(st.divergence.replica_only_signed, [PASSIVE]);
    assert!(st.syslog_line().contains("[SUCCESS]"));
    let ss = SenderStatus::load(&p.sender().status_path())
        .unwrap()
        .unwrap();
    assert_eq!(ss.last_outcome, Some(SyncOutcome::Committed));
    assert_eq!(ss.last_shipped.unwrap().digest, sync.digest);
    let rs = ReceiverStatus::load(&p.b_state.join("incoming/receiver.status.json"))
        .unwrap()
        .unwrap();
    assert_eq!(rs.last_received.unwrap().digest, sync.digest);
    assert_eq!(rs.last_sender.as_deref(), Some(ACTIVE));
}

#[test]
fn sign_revoke_and_clean_each_reach_the_replica() {
    let p = Pair::new(5);
    p.sync_and_apply();
    let reloads = p.reloads();

    p.sign("new.example.com");
    let (s, a) = p.sync_and_apply();
    assert!(s
        .changes
        .added_paths()
        .any(|x| x == "ca/signed/new.example.com.pem"));
    assert!(a.live.written.contains(&"ca/serial".to_string()));
    assert!(!a.reloaded, "no CRL change, no reload");
    p.assert_converged(&[PASSIVE]);

    // A revocation touches nothing in signed/ (the original module missed it).
    p.revoke("node1.example.com");
    let (s, a) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert!(s.changes.changed_paths().any(|x| x == "ca/ca_crl.pem"));
    assert!(a.live.written.contains(&"ca/ca_crl.pem".to_string()));
    assert!(a.reloaded);
    assert_eq!(p.reloads(), reloads + 1);
    p.assert_converged(&[PASSIVE]);

    // The host CRL follows when the active's agent refreshes it.
    p.refresh_host_crl();
    let (_, a) = p.sync_and_apply();
    assert_eq!(a.live.written, ["ssl/crl.pem"]);
    assert!(a.reloaded);

    p.clean("node2.example.com");
    let (s, a) = p.sync_and_apply();
    assert_eq!(
        s.changes.removed_paths().collect::<Vec<_>>(),
        ["ca/signed/node2.example.com.pem"]
    );
    assert_eq!(a.live.deleted, ["ca/signed/node2.example.com.pem"]);
    assert!(!p.b_cadir.join("signed/node2.example.com.pem").exists());
    p.assert_converged(&[PASSIVE]);
    p.assert_host_files_untouched();
}

#[test]
fn bytes_on_the_wire_follow_the_changes_not_the_tree() {
    let p = Pair::new(2000);
    let (full, _) = p.sync_and_apply();
    assert!(full.stats.bytes_sent > 2000 * 1200, "{:?}", full.stats);

    // No change: no content, a handful of frames.
    let mut counter = None;
    let (s, r) = p.sync_wrapped(|s| {
        let (c, w, _) = Counting::new(s);
        counter = Some(w);
        c
    });
    assert_eq!(r.unwrap().outcome, ReceiveOutcome::NothingToDo);
    let sent = s.unwrap();
    let written = counter.unwrap().load(Ordering::Relaxed);
    assert_eq!(sent.outcome, SyncOutcome::UpToDate);
    assert_eq!(sent.stats.objects, 0);
    assert_eq!(sent.stats.bytes_sent, written);
    assert!(written < 512, "no-change sync wrote {written} bytes");

    // One signing: bytes ~ the changed entries and contents.
    let inventory_before = fs::metadata(p.a_cadir.join("inventory.txt")).unwrap().len();
    p.sign("one-more.example.com");
    let mut counter = None;
    let (s, r) = p.sync_wrapped(|s| {
        let (c, w, _) = Counting::new(s);
        counter = Some(w);
        c
    });
    let s = s.unwrap();
    r.unwrap();
    let written = counter.unwrap().load(Ordering::Relaxed);
    let changed_entries = s.changes.len() as u64;
    assert!(!s.stats.manifest_exchanged);
    assert!(changed_entries <= 5, "{:?}", s.changes);
    // Contents sent: the new certificate, serial, and only what was appended
    // to inventory.txt (an EXTEND of the replica's copy).
    let size = |f: &str| fs::metadata(p.a_cadir.join(f)).unwrap().len();
    let appended = size("inventory.txt") - inventory_before;
    assert_eq!(s.stats.objects, 3);
    assert_eq!(s.stats.objects_extended, 1);
    assert_eq!(
        s.stats.object_bytes,
        size("signed/one-more.example.com.pem") + size("serial") + appended
    );
    assert!(
        written <= s.stats.object_bytes + 400 * changed_entries + 1024,
        "one signing wrote {written} bytes for {changed_entries} entries and {} content bytes",
        s.stats.object_bytes
    );
    assert!(
        written * 500 < full.stats.bytes_sent,
        "{written} vs {}",
        full.stats.bytes_sent
    );
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_dropped_connection_leaves_the_live_ca_alone_and_the_next_sync_completes() {
    let p = Pair::new(3);
    p.sync_and_apply();
    for i in 0..60 {
        p.sign(&format!("burst{i}.example.com"));
    }
    let before = Pair::scan(&p.b_cadir);
    let (s, r) = p.sync_wrapped(|s| {
        CutAfter::new(s, 40_000, |s: &mut UnixStream| {
            let _ = s.shutdown(Shutdown::Both);
        })
    });
    assert_eq!(s.unwrap_err().kind(), ErrorKind::Network);
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Network);
    assert!(
        p.incoming().is_empty(),
        "nothing usable: {:?}",
        p.incoming()
    );
    let a = p.apply();
    assert!(a.staged.is_empty());
    assert_eq!(Pair::scan(&p.b_cadir), before, "live CA unchanged");

    let (s, a) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_killed_receiver_leaves_a_partial_that_the_next_session_cleans() {
    let p = Pair::new(3);
    p.sync_and_apply();
    for i in 0..60 {
        p.sign(&format!("burst{i}.example.com"));
    }
    let before = Pair::scan(&p.b_cadir);
    let mut child = p.spawn_receiver();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id() as libc::pid_t;
    let stream = CutAfter::new(
        pe_failover_core::protocol::Duplex::new(stdout, stdin),
        40_000,
        move |_| {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        },
    );
    let err = p.sender().sync(stream).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    let status = child.wait().unwrap();
    assert!(!status.success());
    let left = p.incoming();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".partial"), "{left:?}");
    let a = p.apply();
    assert!(a.staged.is_empty(), "the applier never touches a .partial");
    assert_eq!(Pair::scan(&p.b_cadir), before);

    let (s, _, _) = p.sync_child();
    assert_eq!(s.unwrap().outcome, SyncOutcome::Committed);
    let left = p.incoming();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        !left[0].ends_with(".partial"),
        "stale partial cleaned: {left:?}"
    );
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_receiver_child_process_speaks_on_stdin_and_stdout() {
    let p = Pair::new(10);
    let (s, status, stderr) = p.sync_child();
    let s = s.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Stored"), "{stderr}");
    assert_eq!(s.outcome, SyncOutcome::Committed);
    p.apply();
    p.assert_converged(&[PASSIVE]);

    p.sign("child.example.com");
    let (s, status, _) = p.sync_child();
    assert!(status.success());
    assert_eq!(s.unwrap().stats.objects, 3, "cert, serial, inventory");
    let (s, status, stderr) = p.sync_child();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("NothingToDo"), "{stderr}");
    assert_eq!(s.unwrap().outcome, SyncOutcome::UpToDate);
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn damaged_contents_are_rejected_and_nothing_is_applied() {
    let p = Pair::new(3);
    p.sync_and_apply();
    p.sign("victim.example.com");
    let before = Pair::scan(&p.b_cadir);
    let (s, r) = p.sync_wrapped(FlipFirstData::new);
    let r = r.unwrap_err();
    assert_eq!(r.kind(), ErrorKind::Corrupt, "{r}");
    assert!(r.to_string().contains("damaged in transit"), "{r}");
    let s = s.unwrap_err();
    assert_eq!(s.kind(), ErrorKind::Corrupt, "the sender hears why: {s}");
    assert!(s.to_string().contains(PASSIVE), "{s}");
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());
    assert!(p.apply().staged.is_empty());
    assert_eq!(Pair::scan(&p.b_cadir), before);
    let st = SenderStatus::load(&p.sender().status_path())
        .unwrap()
        .unwrap();
    assert_eq!(st.last_outcome, Some(SyncOutcome::Failed));
    assert!(st.syslog_line().contains("[FAILURE]"));

    // The next sync repairs it.
    p.sync_and_apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn an_empty_or_incomplete_source_is_refused_at_the_sender() {
    let p = Pair::new(3);
    p.sync_and_apply();
    let before = Pair::scan(&p.b_cadir);

    // Emptied CA directory: the original module's --delete wiped replicas.
    let saved = p.dir.path().join("saved-ca");
    fs::rename(&p.a_cadir, &saved).unwrap();
    fs::create_dir(&p.a_cadir).unwrap();
    let (s, r) = p.sync_with(p.sender(), p.receiver());
    let e = s.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("empty or incomplete"), "{e}");
    assert!(r.is_err());
    fs::remove_dir(&p.a_cadir).unwrap();
    fs::rename(&saved, &p.a_cadir).unwrap();

    // A database-backed CA (PE 2025+): no ca_key.pem, or a passphrase file.
    let key = p.a_cadir.join("ca_key.pem");
    let saved_key = p.dir.path().join("saved-key");
    fs::rename(&key, &saved_key).unwrap();
    let e = p.sender().sync(UnixStream::pair().unwrap().0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.to_string().contains("Puppet Enterprise 2025"), "{e}");
    fs::rename(&saved_key, &key).unwrap();
    fs::write(p.a_cadir.join(".private-key-passphrase"), "x").unwrap();
    let e = p.set().scan().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.to_string().contains("database"), "{e}");
    fs::remove_file(p.a_cadir.join(".private-key-passphrase")).unwrap();

    assert!(p.incoming().is_empty());
    p.apply();
    assert_eq!(Pair::scan(&p.b_cadir), before);
}

#[test]
fn replica_only_certificates_are_kept_and_reported() {
    let p = Pair::new(3);
    p.sync_and_apply();
    // The passive signs a certificate of its own.
    fs::write(p.b_cadir.join("signed/local.example.com.pem"), "local cert").unwrap();
    p.sign("remote.example.com");
    // An apply of new transactions reads only the paths they change: the
    // local certificate is left alone, but not looked at.
    let (_, a) = p.sync_and_apply();
    assert!(!a.verified);
    assert!(a.kept.is_empty(), "{:?}", a.kept);
    assert!(p.b_cadir.join("signed/local.example.com.pem").exists());
    // A verifying apply compares everything and reports it.
    let a = p.applier().verify(true).run().unwrap();
    assert!(a.verified);
    assert_eq!(a.kept, ["b.example.com", "local.example.com"]);
    assert!(p.b_cadir.join("signed/local.example.com.pem").exists());
    let st = ReplicaStatus::load(&p.b_state.join("status.json"))
        .unwrap()
        .unwrap();
    assert_eq!(
        st.divergence.replica_only_signed,
        ["b.example.com", "local.example.com"]
    );
    assert!(st.syslog_line().contains("local.example.com"));
    p.assert_converged(&[PASSIVE, "local.example.com"]);

    // A certificate the active cleaned goes; a stray file goes at the next
    // verifying apply. The divergence found by the last verification stays
    // reported in between.
    fs::write(p.b_cadir.join("stray.txt"), "x").unwrap();
    p.clean("remote.example.com");
    let (_, a) = p.sync_and_apply();
    assert_eq!(a.live.deleted, ["ca/signed/remote.example.com.pem"]);
    assert!(p.b_cadir.join("stray.txt").exists());
    let st = ReplicaStatus::load(&p.b_state.join("status.json"))
        .unwrap()
        .unwrap();
    assert_eq!(
        st.divergence.replica_only_signed,
        ["b.example.com", "local.example.com"]
    );
    let a = p.applier().verify(true).run().unwrap();
    assert_eq!(a.live.deleted, ["ca/stray.txt"]);
    assert!(p.b_cadir.join("signed/local.example.com.pem").exists());
}

#[test]
fn mass_deletion_is_refused_unless_forced() {
    let p = Pair::new(60);
    p.sync_and_apply();
    for i in 0..20 {
        p.clean(&format!("node{i}.example.com"));
    }
    p.sync();
    let e = p.applier().run().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("would delete 20 of the"), "{e}");
    assert!(e.to_string().contains("force"), "{e}");
    assert!(p.b_cadir.join("signed/node0.example.com.pem").exists());
    let st = ReplicaStatus::load(&p.b_state.join("status.json"))
        .unwrap()
        .unwrap();
    assert!(!st.last_run_ok);
    assert_eq!(st.last_error.unwrap().kind, "refused");
    assert_ne!(st.staged.unwrap().digest, st.applied.unwrap().digest);

    let a = p.applier().force(true).run().unwrap();
    assert_eq!(a.live.deleted.len(), 20);
    p.assert_converged(&[PASSIVE]);

    // A snapshot without the CA key is never applied without force.
    fs::remove_file(p.a_cadir.join("ca_key.pem")).unwrap();
    fs::write(p.a_cadir.join("ca_key.pem.bak"), "x").unwrap();
    let scan = p.set().scan();
    assert_eq!(scan.unwrap_err().kind(), ErrorKind::Refused);
}

#[test]
fn a_promoted_replica_is_fenced() {
    let p = Pair::new(3);
    p.sync_and_apply();
    p.sign("late.example.com");
    fs::write(&p.role_file, "pe_failover_mode: active\n").unwrap();
    let before = Pair::scan(&p.b_cadir);
    let (s, r) = p.sync_with(p.sender(), p.receiver());
    let s = s.unwrap_err();
    assert_eq!(s.kind(), ErrorKind::Fenced, "{s}");
    assert!(s.to_string().contains("promoted"), "{s}");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Fenced);
    assert!(p.incoming().is_empty());
    let st = SenderStatus::load(&p.sender().status_path())
        .unwrap()
        .unwrap();
    assert_eq!(st.last_error.unwrap().kind, "fenced");

    // The applier on a promoted host leaves the live CA alone too.
    let e = p.applier().run().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fenced);
    assert_eq!(Pair::scan(&p.b_cadir), before);

    // Demoted again, replication resumes.
    fs::write(&p.role_file, "passive").unwrap();
    p.sync_and_apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_replica_restored_from_an_old_backup_gets_a_manifest_exchange() {
    let p = Pair::new(5);
    p.sync_and_apply();
    let backup = p.dir.path().join("state-backup");
    copy_tree(&p.b_state, &backup);
    for name in ["x1", "x2", "x3"] {
        p.sign(&format!("{name}.example.com"));
        p.sync_and_apply();
    }
    fs::remove_dir_all(&p.b_state).unwrap();
    copy_tree(&backup, &p.b_state);

    p.sign("after-restore.example.com");
    let (s, a) = p.sync_and_apply();
    assert!(s.stats.manifest_exchanged);
    assert_eq!(s.outcome, SyncOutcome::Committed);
    // Only what the restored replica lacks is sent.
    assert_eq!(
        s.changes.added.len(),
        4,
        "{:?}",
        s.changes.added_paths().collect::<Vec<_>>()
    );
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
    // And the next sync is a plain delta again.
    p.sign("later.example.com");
    let (s, _) = p.sync_and_apply();
    assert!(!s.stats.manifest_exchanged);
}

#[test]
fn a_damaged_record_of_the_last_shipped_manifest_costs_a_manifest_exchange() {
    let p = Pair::new(5);
    p.sync_and_apply();
    let shipped = p
        .a_state
        .join(format!("replicas/{PASSIVE}/ca.manifest.json"));
    let good = fs::read(&shipped).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let damages: [(&str, Vec<u8>); 3] = [
        ("a byte of an entry flipped", flipped),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("a byte added", [&good[..], b"x"].concat()),
    ];
    for (i, (what, damaged)) in damages.into_iter().enumerate() {
        p.sign(&format!("damaged{i}.example.com"));
        // Damaged after the last sync wrote it.
        fs::write(&shipped, &damaged).unwrap();
        let (s, a) = p.sync_and_apply();
        assert!(s.stats.manifest_exchanged, "{what}");
        assert_eq!(s.outcome, SyncOutcome::Committed, "{what}");
        assert_eq!(s.changes.added.len(), 1, "{what}: {:?}", s.changes);
        assert_eq!(a.staged.len(), 1, "{what}");
        p.assert_converged(&[PASSIVE]);
    }
    // The record was written again: a plain delta from the file.
    p.sign("after.example.com");
    let (s, _) = p.sync_and_apply();
    assert!(!s.stats.manifest_exchanged);
    assert_eq!(s.changes.added.len(), 1, "{:?}", s.changes);
    p.assert_converged(&[PASSIVE]);
}

/// Every path under `dir` (not following symlinks), deepest first.
fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(all_paths(&path));
        }
        out.push(path);
    }
    out
}

/// Turns state directories written by this version into what the version
/// before BLAKE3 manifest digests left: manifest files of format 2 recording
/// the SHA-256 of the same canonical form, snapshots named by it, and the
/// records (`*.json`) and the `latest` link naming them. Returns the number
/// of digests renamed.
fn as_left_by_format_2(states: &[&Path]) -> usize {
    const V3: &[u8] = b"pe_failover manifest file v3\n";
    const V2: &[u8] = b"pe_failover manifest file v2\n";
    let paths: Vec<PathBuf> = states.iter().flat_map(|s| all_paths(s)).collect();
    let mut renamed: Vec<(String, String)> = Vec::new();
    for path in &paths {
        let meta = fs::symlink_metadata(path).unwrap();
        if !meta.is_file() {
            continue;
        }
        let bytes = fs::read(path).unwrap();
        if let Some(rest) = bytes.strip_prefix(V3) {
            let (old, body) = (std::str::from_utf8(&rest[..64]).unwrap(), &rest[65..]);
            let sha = hex::encode(sha2::Sha256::digest(body));
            // In place: the other names of the file (`staged.manifest.json`)
            // see it too.
            fs::write(path, [V2, sha.as_bytes(), b"\n", body].concat()).unwrap();
            if !renamed.iter().any(|(o, _)| o == old) {
                renamed.push((old.to_string(), sha));
            }
        }
    }
    assert!(!renamed.is_empty(), "no manifest file of format 3");
    for path in &paths {
        let meta = fs::symlink_metadata(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        if meta.is_file() && name.ends_with(".json") {
            let bytes = fs::read(path).unwrap();
            if bytes.starts_with(b"pe_failover manifest") {
                continue;
            }
            let text = String::from_utf8(bytes).unwrap();
            let mut new = text.clone();
            for (old, sha) in &renamed {
                new = new.replace(old.as_str(), sha);
            }
            if new != text {
                fs::write(path, new).unwrap();
            }
        } else if meta.is_symlink() {
            let target = fs::read_link(path).unwrap().to_str().unwrap().to_string();
            if let Some((_, sha)) = renamed.iter().find(|(o, _)| target.contains(o.as_str())) {
                let old = &renamed.iter().find(|(_, s)| s == sha).unwrap().0;
                fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(target.replace(old.as_str(), sha), path).unwrap();
            }
        } else if let Some((_, sha)) = renamed.iter().find(|(o, _)| o == name) {
            fs::rename(path, path.with_file_name(sha)).unwrap();
        }
    }
    renamed.len()
}

#[test]
fn state_left_by_the_sha256_manifest_digests_of_format_2_is_carried_on() {
    let p = Pair::new(5);
    p.sync_and_apply();
    p.sign("before.example.com");
    p.sync_and_apply();
    assert!(as_left_by_format_2(&[&p.a_state, &p.b_state]) >= 2);
    let latest = latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .expect("the snapshot of format 2 is read under its SHA-256 name");
    let shipped = p
        .a_state
        .join(format!("replicas/{PASSIVE}/ca.manifest.json"));
    assert!(fs::read(&shipped)
        .unwrap()
        .starts_with(b"pe_failover manifest file v2\n"));

    p.sign("after.example.com");
    let (s, a) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    // The replica's base, named by its SHA-256, is the manifest last
    // shipped: a plain delta, no manifest exchange, one new certificate.
    assert_eq!(s.base.as_deref(), Some(latest.digest.as_str()));
    assert!(!s.stats.manifest_exchanged);
    assert_eq!(s.changes.added.len(), 1, "{:?}", s.changes);
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
    // The new snapshot is named by the BLAKE3 digest and written in format 3.
    let now = latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .unwrap();
    assert_eq!(now.digest, s.digest);
    assert_ne!(now.digest, latest.digest);
    let file = fs::read(p.b_state.join("snapshots/latest/manifest.json")).unwrap();
    assert!(file.starts_with(b"pe_failover manifest file v3\n"));
    assert!(fs::read(&shipped)
        .unwrap()
        .starts_with(b"pe_failover manifest file v3\n"));
    // Nothing changed since: the next sync has nothing to send.
    let (s, _) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::UpToDate, "{:?}", s.changes);
    // The previous snapshots, of format 2, are still there under their names.
    assert!(p
        .b_state
        .join("snapshots")
        .join(&latest.digest)
        .join("manifest.json")
        .exists());
}

#[test]
fn state_left_by_format_2_with_nothing_changed_since_gets_the_current_digest_once() {
    let p = Pair::new(5);
    p.sync_and_apply();
    as_left_by_format_2(&[&p.a_state, &p.b_state]);
    let old = latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .unwrap();
    // The same entries under another digest: a transaction of no changes,
    // no contents, nothing written to the live CA.
    let (s, a) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert_eq!(s.base.as_deref(), Some(old.digest.as_str()));
    assert!(!s.stats.manifest_exchanged);
    assert!(s.changes.is_empty(), "{:?}", s.changes);
    assert_eq!(s.stats.objects, 0);
    assert!(a.live.written.is_empty(), "{:?}", a.live);
    let now = latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .unwrap();
    assert_eq!(now.digest, s.digest);
    p.assert_converged(&[PASSIVE]);
    let (s, _) = p.sync_and_apply();
    assert_eq!(s.outcome, SyncOutcome::UpToDate);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

struct StopAfter {
    left: std::sync::atomic::AtomicUsize,
    token: CancelToken,
}

impl ApplyProgress for StopAfter {
    fn live_entry(&self, _path: &str) {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.token.cancel();
        }
    }
}

/// Runs the applier of `p` and cancels it after 7 live entries.
fn apply_cancelled_after_7_entries(p: &Pair) {
    let token = CancelToken::new();
    let e = p
        .applier()
        .cancel_token(token.clone())
        .progress(StopAfter {
            left: 7.into(),
            token: token.clone(),
        })
        .run()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
}

#[test]
fn an_interrupted_apply_converges_when_run_again() {
    let p = Pair::new(30);
    p.sync();
    apply_cancelled_after_7_entries(&p);
    // Half-applied: some files new, none torn, no temporary files left.
    let written = fs::read_dir(p.b_cadir.join("signed")).unwrap().count();
    assert!(written < 31, "{written}");
    let leftovers: Vec<_> = walk(&p.b_cadir)
        .into_iter()
        .filter(|n| n.contains(".pe_failover-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A crash could leave a temporary file behind, or a directory being
    // filled: plant both (the directory's files are no certificates to
    // keep, nor deletions the guard counts).
    fs::write(p.b_cadir.join(".pe_failover-tmp-0123"), "half").unwrap();
    let filling = p.b_cadir.join(".pe_failover-tmp-4567");
    fs::create_dir_all(filling.join("sub")).unwrap();
    for i in 0..40 {
        fs::write(filling.join(format!("node{i}.pem")), "cert").unwrap();
    }
    fs::write(filling.join("sub/x.pem"), "cert").unwrap();

    let a = p.apply();
    assert_eq!(a.live.temp_removed, 2);
    assert!(a.live.deleted.is_empty(), "{:?}", a.live.deleted);
    assert!(!filling.exists());
    p.assert_converged(&[PASSIVE]);
    // Idempotent: nothing left to do.
    let a = p.apply();
    assert!(
        a.live.written.is_empty() && a.live.deleted.is_empty(),
        "{:?}",
        a.live
    );
}

#[test]
fn a_live_directory_that_does_not_exist_yet_appears_whole() {
    // More files than are synced one by one: the file system is synced
    // through a directory that exists.
    let p = Pair::new(100);
    p.sync();
    // A replica without a CA directory (a fresh standby): the applier
    // fills it under a temporary name and renames it into place.
    fs::remove_dir_all(&p.b_cadir).unwrap();
    apply_cancelled_after_7_entries(&p);
    // Interrupted: nothing of it is there, and nothing is left beside it.
    assert!(!p.b_cadir.exists());
    let parent = p.b_cadir.parent().unwrap();
    let leftovers = || -> Vec<String> {
        walk(parent)
            .into_iter()
            .filter(|n| n.contains(".pe_failover-tmp-"))
            .collect()
    };
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    let a = p.apply();
    assert!(
        a.live.dirs_created.iter().any(|d| d == "ca/signed"),
        "{:?}",
        a.live
    );
    for i in 0..100 {
        let cert = format!("ca/signed/node{i}.example.com.pem");
        assert!(
            a.live.written.contains(&cert),
            "{cert}: {:?}",
            a.live.written
        );
    }
    // The owner, modes and contents of every file, as a normal apply.
    p.assert_converged(&[]);
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn a_transaction_damaged_at_rest_is_discarded_and_resent() {
    let p = Pair::new(3);
    p.sync_and_apply();
    // Many objects, checked side by side by the applier: one is damaged.
    for i in 0..40 {
        p.sign(&format!("rest{i}.example.com"));
    }
    p.sync();
    // Someone (the unprivileged transfer user?) alters a stored object.
    let txn = p.incoming().pop().unwrap();
    let objects = p.b_state.join("incoming").join(&txn).join("objects");
    let obj = fs::read_dir(&objects)
        .unwrap()
        .nth(17)
        .unwrap()
        .unwrap()
        .path();
    fs::write(&obj, "tampered").unwrap();
    let store = p.b_state.join("snapshots").join("objects");
    let stored = || {
        let mut files: Vec<String> = walk(&store)
            .into_iter()
            .filter(|name| !(name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())))
            .collect();
        files.sort();
        files
    };
    let before = stored();
    p.assert_discarded_and_resent(|p| {
        // The other objects it took from the transaction are gone with it:
        // the store holds what it held, no temporary name left behind.
        assert_eq!(stored(), before);
        assert!(p.incoming().is_empty());
    });
}

#[test]
fn a_transaction_manifest_damaged_or_linked_elsewhere_is_discarded_and_resent() {
    use std::os::unix::fs::MetadataExt as _;
    let p = Pair::new(3);
    p.sync_and_apply();
    let manifest_of = |txn: &str| p.b_state.join("incoming").join(txn).join("manifest.json");

    // A flipped byte in the stored manifest.
    p.sign("flip.example.com");
    p.sync();
    let txn = p.incoming().pop().unwrap();
    let mut bytes = fs::read(manifest_of(&txn)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(manifest_of(&txn), bytes).unwrap();
    p.assert_discarded_and_resent(|_| {});

    // The manifest is a hard link to another file (a system file, as far as
    // the applier can tell): refused, and that file keeps its mode.
    p.sign("link.example.com");
    p.sync();
    let txn = p.incoming().pop().unwrap();
    let secret = p.dir.path().join("secret");
    fs::write(&secret, "not for the world\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(manifest_of(&txn)).unwrap();
    fs::hard_link(&secret, manifest_of(&txn)).unwrap();
    let e = p.assert_discarded_and_resent(|_| {});
    assert!(e.message().contains("single name"), "{e}");

    // A FIFO in its place: refused, not waited on.
    p.sign("fifo.example.com");
    p.sync();
    let txn = p.incoming().pop().unwrap();
    fs::remove_file(manifest_of(&txn)).unwrap();
    mkfifo(&manifest_of(&txn));
    let e = p.assert_discarded_and_resent(|_| {});
    assert!(e.message().contains("not a regular file"), "{e}");
    let meta = fs::metadata(&secret).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.nlink(), 1, "no name of it is left behind");
    assert!(fs::read_dir(p.b_state.join("snapshots"))
        .unwrap()
        .all(|d| !d
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")));
}

#[test]
fn noop_reports_the_changes_and_sends_no_content() {
    let p = Pair::new(3);
    p.sync_and_apply();
    p.sign("maybe.example.com");
    let (s, r) = p.sync_with(p.sender().noop(true), p.receiver());
    let s = s.unwrap();
    assert_eq!(s.outcome, SyncOutcome::Noop);
    assert_eq!(s.stats.objects, 0);
    assert!(s
        .changes
        .added_paths()
        .any(|x| x == "ca/signed/maybe.example.com.pem"));
    assert_eq!(r.unwrap().outcome, ReceiveOutcome::NothingToDo);
    assert!(p.incoming().is_empty());
    let st = SenderStatus::load(&p.sender().status_path())
        .unwrap()
        .unwrap();
    assert_eq!(
        st.last_outcome,
        Some(SyncOutcome::Committed),
        "noop leaves no trace"
    );
}

#[test]
fn a_stat_cache_that_cannot_be_written_is_a_warning_of_the_sync_not_a_failure() {
    let p = Pair::new(3);
    // A directory where the cache file should be: it can be neither read
    // nor replaced. Only files older than the cache's racy window (2 s) are
    // cached, so wait for there to be something to write.
    let cache = p.a_state.join("ca.scan");
    fs::create_dir_all(&cache).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (s, r) = p.sync_with(p.sender_of(p.set().cache_file(&cache)), p.receiver());
    let s = s.unwrap();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert_eq!(r.unwrap().outcome, ReceiveOutcome::Stored);
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("stat cache was not updated") && s.warnings[0].contains("ca.scan"),
        "names the file: {:?}",
        s.warnings
    );
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn replaced_live_files_keep_their_selinux_labels() {
    // Without SELinux the kernel keeps `security.selinux` as given, which
    // stands in for the labels of an enforcing host; only root sets it.
    if !is_root() {
        skip("needs root");
        return;
    }
    let p = Pair::new(5);
    p.sync_and_apply();
    let crl = p.b_cadir.join("ca_crl.pem");
    let inventory = p.b_cadir.join("inventory.txt");
    let ca_crt = p.b_cadir.join("ca_crt.pem");
    let crl_label = b"system_u:object_r:puppet_etc_t:s0\0";
    let inventory_label = b"unconfined_u:object_r:cert_t:s0\0";
    set_selinux_label(&crl, crl_label);
    set_selinux_label(&inventory, inventory_label);
    set_selinux_label(&ca_crt, crl_label);
    let inodes = |path: &Path| fs::symlink_metadata(path).unwrap().ino();
    let (crl_ino, inventory_ino) = (inodes(&crl), inodes(&inventory));

    p.sign("new.example.com");
    p.revoke("node1.example.com");
    let (_, a) = p.sync_and_apply();
    for path in [
        "ca/ca_crl.pem",
        "ca/inventory.txt",
        "ca/signed/new.example.com.pem",
    ] {
        assert!(
            a.live.written.contains(&path.to_string()),
            "{path}: {:?}",
            a.live.written
        );
    }
    assert_ne!(inodes(&crl), crl_ino, "replaced, not rewritten in place");
    assert_ne!(inodes(&inventory), inventory_ino);
    assert_eq!(selinux_label(&crl).as_deref(), Some(&crl_label[..]));
    assert_eq!(
        selinux_label(&inventory).as_deref(),
        Some(&inventory_label[..])
    );
    assert_eq!(
        selinux_label(&ca_crt).as_deref(),
        Some(&crl_label[..]),
        "untouched"
    );
    assert_eq!(
        selinux_label(&p.b_cadir.join("signed/new.example.com.pem")),
        None,
        "a new file gets what its directory gives"
    );
    assert_eq!(a.live.labels_kept, 2);
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn an_entry_that_changes_kind_keeps_the_selinux_label_of_the_one_it_replaces() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let p = Pair::new(3);
    let a_extra = p.a_cadir.join("extra.pem");
    let b_extra = p.b_cadir.join("extra.pem");
    fs::write(&a_extra, "a file first").unwrap();
    p.sync_and_apply();
    let label = b"system_u:object_r:cert_t:s0\0";
    set_selinux_label(&b_extra, label);

    // File -> symlink.
    fs::remove_file(&a_extra).unwrap();
    std::os::unix::fs::symlink("ca_crt.pem", &a_extra).unwrap();
    let (_, a) = p.sync_and_apply();
    assert!(fs::symlink_metadata(&b_extra)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(selinux_label(&b_extra).as_deref(), Some(&label[..]));
    assert_eq!(a.live.labels_kept, 1);

    // Symlink -> directory (with a file in it, which gets no label).
    fs::remove_file(&a_extra).unwrap();
    fs::create_dir(&a_extra).unwrap();
    fs::write(a_extra.join("inside.pem"), "new").unwrap();
    let (_, a) = p.sync_and_apply();
    assert!(fs::symlink_metadata(&b_extra).unwrap().is_dir());
    assert_eq!(selinux_label(&b_extra).as_deref(), Some(&label[..]));
    assert_eq!(selinux_label(&b_extra.join("inside.pem")), None);
    assert_eq!(a.live.labels_kept, 1);
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_symlink_turned_into_a_directory_is_applied_whole_without_looking_through_it() {
    let p = Pair::new(3);
    let a_extra = p.a_cadir.join("extra");
    let b_extra = p.b_cadir.join("extra");
    // A symlink to signed/, then a directory holding a copy of one of the
    // certificates in signed/: a stat of extra/<cert> through the old link
    // finds that certificate, same contents, same mode.
    std::os::unix::fs::symlink("signed", &a_extra).unwrap();
    p.sync_and_apply();
    assert!(fs::symlink_metadata(&b_extra)
        .unwrap()
        .file_type()
        .is_symlink());
    let cert = "node1.example.com.pem";
    fs::remove_file(&a_extra).unwrap();
    fs::create_dir(&a_extra).unwrap();
    fs::copy(p.a_cadir.join("signed").join(cert), a_extra.join(cert)).unwrap();
    // Only the changed paths are compared (the watcher's applies).
    let a = p.applier().verify(false);
    p.sync();
    let report = a.run().unwrap();
    assert!(
        report.live.written.contains(&format!("ca/extra/{cert}")),
        "{:?}",
        report.live
    );
    assert!(fs::symlink_metadata(&b_extra).unwrap().is_dir());
    assert!(b_extra.join(cert).is_file());
    p.assert_converged(&[PASSIVE]);

    // Back to the symlink: extra/<cert> is deleted with the directory, not
    // through the new link (which would delete signed/<cert>).
    fs::remove_dir_all(&a_extra).unwrap();
    std::os::unix::fs::symlink("signed", &a_extra).unwrap();
    p.sync();
    let report = p.applier().verify(false).run().unwrap();
    assert!(report.live.deleted.contains(&format!("ca/extra/{cert}")));
    assert!(
        p.b_cadir.join("signed").join(cert).is_file(),
        "deleted through the link"
    );
    p.assert_converged(&[PASSIVE]);

    // A symlink to a file turned into a directory: the stat below it fails
    // with "not a directory", which is no failure of the apply.
    fs::remove_file(&a_extra).unwrap();
    std::os::unix::fs::symlink("ca_crt.pem", &a_extra).unwrap();
    p.sync_and_apply();
    fs::remove_file(&a_extra).unwrap();
    fs::create_dir(&a_extra).unwrap();
    fs::write(a_extra.join("inside.pem"), "new").unwrap();
    p.sync();
    let report = p.applier().verify(false).run().unwrap();
    assert!(report
        .live
        .written
        .contains(&"ca/extra/inside.pem".to_string()));
    assert!(report.live.dirs_created.contains(&"ca/extra".to_string()));
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn new_directories_are_applied_comparing_only_the_changed_paths() {
    let p = Pair::new(3);
    p.sync_and_apply();
    fs::create_dir_all(p.a_cadir.join("new/deeper")).unwrap();
    fs::write(p.a_cadir.join("new/deeper/x.pem"), "x").unwrap();
    p.sync();
    let report = p.applier().verify(false).run().unwrap();
    assert!(
        !report.verified,
        "a missing directory is no reason to compare everything"
    );
    assert!(report
        .live
        .written
        .contains(&"ca/new/deeper/x.pem".to_string()));
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_live_directory_replaced_by_a_symlink_on_the_replica_is_not_written_through() {
    let p = Pair::new(3);
    p.sync_and_apply();
    // Drift on the replica: signed/ moved away and a symlink to another
    // directory put in its place (by hand, or by whoever owns the cadir).
    let elsewhere = p.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let b_signed = p.b_cadir.join("signed");
    swap_for_link(&b_signed, &p.dir.path().join("signed.moved"), &elsewhere);

    p.sign("new.example.com");
    p.sync();
    // Only the changed paths would be compared; the link below one of them
    // makes the applier compare everything, and replace the link.
    let report = p.applier().verify(false).run().unwrap();
    assert!(report.verified, "fell back to comparing everything");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the link"
    );
    assert!(fs::symlink_metadata(&b_signed).unwrap().is_dir());
    assert!(b_signed.join("new.example.com.pem").is_file());
    // The replica's own certificate went with the moved directory.
    p.assert_converged(&[]);
}

#[test]
fn the_cadir_is_detected_in_both_layouts() {
    let p = Pair::new(1);
    let ps = p.a_cadir.clone();
    // Puppet 7+ layout with the migration symlink from ssl/ca.
    p.symlink_old_cadir();
    assert_eq!(
        detect_cadir(&p.a_ssl, &ps).unwrap(),
        fs::canonicalize(&ps).unwrap()
    );
    // Only the old layout.
    let missing = p.dir.path().join("nowhere/ca");
    assert_eq!(
        detect_cadir(&p.a_ssl, &missing).unwrap(),
        fs::canonicalize(&ps).unwrap()
    );
    // The symlinked root is followed, links inside are not.
    let scan = ReplicatedSet::new(&p.a_ssl)
        .puppetserver_cadir(&missing)
        .scan()
        .unwrap();
    assert!(scan
        .manifest
        .get("ca/signed/node0.example.com.pem")
        .is_some());
    assert!(scan.manifest.get("ssl/crl.pem").is_some());
    assert!(scan
        .manifest
        .entries()
        .iter()
        .all(|e| e.path.starts_with("ca") || e.path.starts_with("ssl")));
    assert!(scan
        .manifest
        .get(&format!("ssl/private_keys/{ACTIVE}.pem"))
        .is_none());
    // Two real CA directories: refuse to guess.
    let other = p.dir.path().join("other/ca");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("ca_crt.pem"), "x").unwrap();
    let e = detect_cadir(&p.a_ssl, &other).unwrap_err();
    assert!(e.to_string().contains("two CA directories"), "{e}");
    // A cadir holding the ssl dir would ship host keys.
    let e = ReplicatedSet::new(&p.a_ssl)
        .cadir(p.dir.path().join("a"))
        .scan()
        .unwrap_err();
    assert!(e.to_string().contains("private keys"), "{e}");
}

#[test]
fn a_symlink_escaping_the_cadir_is_refused_at_the_sender() {
    let p = Pair::new(1);
    std::os::unix::fs::symlink("/etc/shadow", p.a_cadir.join("evil")).unwrap();
    let e = p.set().scan().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafePath);
    assert!(e.to_string().contains("evil"), "{e}");
    fs::remove_file(p.a_cadir.join("evil")).unwrap();
    std::os::unix::fs::symlink("ca_crt.pem", p.a_cadir.join("current.pem")).unwrap();
    p.sync_and_apply();
    assert_eq!(
        fs::read_link(p.b_cadir.join("current.pem"))
            .unwrap()
            .to_str(),
        Some("ca_crt.pem")
    );
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn old_snapshots_are_pruned_and_unchanged_contents_stored_once() {
    let p = Pair::new(5);
    p.sync_and_apply();
    let inventory0 = fs::read(p.a_cadir.join("inventory.txt")).unwrap();
    let inventory0_sha = hex::encode(sha2::Sha256::digest(&inventory0));
    for i in 0..12 {
        p.sign(&format!("p{i}.example.com"));
        p.sync();
    }
    let a = p.applier().keep_snapshots(3).run().unwrap();
    assert_eq!(a.staged.len(), 12);
    assert!(a.staged.iter().all(|s| s.copied <= 3), "{:?}", a.staged);
    let snaps: Vec<_> = fs::read_dir(p.b_state.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64)
        .collect();
    // The 3 newest: pruning comes after the live files were brought to the
    // newest, so the one they were at before is no longer protected.
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    let store = p.b_state.join("snapshots/objects");
    let old_inventory = store.join(&inventory0_sha[..2]).join(&inventory0_sha);
    // 10 snapshots removed: the store is swept every 16 removals.
    assert!(old_inventory.is_file());
    for i in 0..8 {
        p.sign(&format!("q{i}.example.com"));
        p.sync();
    }
    let a = p.applier().keep_snapshots(3).run().unwrap();
    assert_eq!(a.pruned.len(), 8, "{:?}", a.pruned);
    // Swept: contents no remaining snapshot names are gone, the others stay.
    assert!(!old_inventory.exists());
    let count = |dir: &std::path::Path| {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .map(|e| fs::read_dir(e.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
    let stored = count(&store);
    p.assert_converged(&[PASSIVE]);
    let latest = p.applier().verify(true).run().unwrap();
    assert!(latest.live.written.is_empty(), "{:?}", latest.live);
    assert_eq!(count(&store), stored);
    // Unchanged contents are stored once: ca_crt.pem's object serves every
    // snapshot.
    let crt = fs::read(p.a_cadir.join("ca_crt.pem")).unwrap();
    let crt_sha = hex::encode(sha2::Sha256::digest(&crt));
    assert!(store.join(&crt_sha[..2]).join(&crt_sha).is_file());
    p.assert_converged(&[PASSIVE]);
}

/// The latest snapshot's sequence number.
fn latest_seq(p: &Pair) -> u64 {
    latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .expect("a latest snapshot")
        .seq
}

/// Puts garbage in place of the latest snapshot's manifest file (a new
/// file: `staged.manifest.json`, its other name, keeps the good one).
fn garble_latest_manifest(p: &Pair) {
    let manifest = p.b_state.join("snapshots/latest/manifest.json");
    fs::remove_file(&manifest).unwrap();
    fs::write(&manifest, "garbage").unwrap();
}

#[test]
fn a_kept_latest_snapshot_spares_a_read_and_is_used_only_while_it_is_the_latest() {
    let p = Pair::new(5);
    let cache = LatestCache::new();
    let cached = || p.applier().latest_cache(cache.clone());
    p.sync();
    cached().run().unwrap();
    assert!(cache.is_kept());

    // The kept snapshot serves the next run: the file it came from is not
    // read again (garbled, it would stop a run without the cache).
    garble_latest_manifest(&p);
    p.sign("kept1.example.com");
    p.sync();
    let a = cached().run().unwrap();
    assert_eq!(a.staged.len(), 1);
    assert!(a
        .live
        .written
        .contains(&"ca/signed/kept1.example.com.pem".to_string()));
    p.assert_converged(&[PASSIVE]);
    garble_latest_manifest(&p);
    p.sign("kept2.example.com");
    p.sync();
    let e = p.applier().run().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("manifest.json"), "{e}");
    cached().run().unwrap();
    p.assert_converged(&[PASSIVE]);

    // An apply without the cache (`pe_failover apply` beside the watcher)
    // moves `latest` on: the kept snapshot is stale and is not used. Used,
    // the next snapshot would follow it instead of the one between.
    let kept_seq = latest_seq(&p);
    p.sign("foreign.example.com");
    p.sync();
    p.apply();
    let foreign_seq = latest_seq(&p);
    assert_eq!(foreign_seq, kept_seq + 1);
    p.sign("after.example.com");
    p.sync();
    let a = cached().run().unwrap();
    assert_eq!(a.staged.len(), 1);
    assert_eq!(latest_seq(&p), foreign_seq + 1);
    p.assert_converged(&[PASSIVE]);
    assert!(cache.is_kept());

    // With the kept snapshot, a transaction's manifest is decoded only
    // where it differs from it, and still checked whole: a byte changed in
    // a record they share (the CA certificate's) or in the new one is
    // refused, nothing of it is applied, and the next sync resends.
    for (name, damaged) in [
        ("shared.example.com", "ca_crt.pem"),
        ("fresh.example.com", "fresh.example.com"),
    ] {
        let seq = latest_seq(&p);
        p.sign(name);
        p.sync();
        let txn = p.incoming().pop().unwrap();
        let manifest = p.b_state.join("incoming").join(&txn).join("manifest.json");
        let mut bytes = fs::read(&manifest).unwrap();
        let at = bytes
            .windows(damaged.len())
            .position(|w| w == damaged.as_bytes())
            .unwrap();
        bytes[at] ^= 1;
        fs::write(&manifest, bytes).unwrap();
        let e = cached().run().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("not the recorded"), "{e}");
        assert!(p.incoming().is_empty());
        assert_eq!(latest_seq(&p), seq);
        let live = p.b_cadir.join(format!("signed/{name}.pem"));
        assert!(
            !live.exists(),
            "{name} was applied from a damaged transaction"
        );
        let (s, _) = p.sync_with(p.sender(), p.receiver());
        assert!(s.unwrap().stats.manifest_exchanged);
        cached().run().unwrap();
        assert_eq!(latest_seq(&p), seq + 1);
        p.assert_converged(&[PASSIVE]);
    }
}

/// Runs the project's Ruby TestCA (`spec/support/test_ca.rb`); `None` when
/// Ruby is not installed.
fn test_ca(args: &[&std::ffi::OsStr]) -> Option<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/support/test_ca.rb");
    let out = std::process::Command::new("ruby")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "test_ca.rb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

fn openssl_verify(cadir: &std::path::Path, cert: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-crl_check")
        .arg("-CAfile")
        .arg(cadir.join("ca_crt.pem"))
        .arg("-CRLfile")
        .arg(cadir.join("ca_crl.pem"))
        .arg(cert)
        .output()
        .expect("openssl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_real_puppet_ca_made_by_the_ruby_helper_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let os = |s: &str| std::ffi::OsString::from(s);
    let run = |args: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        test_ca(&refs)
    };
    if run(vec![os("create"), a.clone().into()]).is_none() {
        skip("ruby is not installed");
        return;
    }
    run(vec![
        os("host-files"),
        a.clone().into(),
        os("master-a.test"),
        a.join("ssl").into(),
    ]);
    run(vec![
        os("create"),
        b.clone().into(),
        os("--ca-name"),
        os("Puppet CA: b"),
    ]);
    run(vec![
        os("host-files"),
        b.clone().into(),
        os("master-b.test"),
        b.join("ssl").into(),
    ]);
    for n in ["agent1.test", "agent2.test"] {
        run(vec![os("sign"), a.clone().into(), os(n)]);
    }
    let b_key_before = fs::read(b.join("ssl/private_keys/master-b.test.pem")).unwrap();

    let set = || ReplicatedSet::new(a.join("ssl")).cadir(a.join("ca"));
    let sender = || pe_failover_core::protocol::Sender::new(set(), PASSIVE, a.join("state"));
    let receiver = || pe_failover_core::protocol::Receiver::new(b.join("state"));
    let live = pe_failover_core::replset::CaPaths {
        cadir: b.join("ca"),
        ssldir: b.join("ssl"),
    };
    let apply = || {
        pe_failover_core::apply::Applier::new(b.join("state"), live.clone())
            .reload_command(["true"])
            .run()
            .unwrap()
    };
    let sync = || {
        let (x, y) = UnixStream::pair().unwrap();
        let r = receiver();
        let h = std::thread::spawn(move || r.receive(y));
        let s = sender().sync(x).unwrap();
        h.join().unwrap().unwrap();
        s
    };

    sync();
    let report = apply();
    assert_eq!(
        report.kept,
        ["master-b.test"],
        "B's own certificate is kept"
    );
    let (ok, out) = openssl_verify(&b.join("ca"), &b.join("ca/signed/agent1.test.pem"));
    assert!(ok, "{out}");

    // Revoke on A: B's CRL revokes it too (nothing changed in signed/).
    run(vec![os("revoke"), a.clone().into(), os("agent1.test")]);
    let s = sync();
    assert!(s.changes.added.is_empty() && s.changes.removed.is_empty());
    let report = apply();
    assert!(report.reloaded);
    let (ok, out) = openssl_verify(&b.join("ca"), &b.join("ca/signed/agent1.test.pem"));
    assert!(!ok && out.contains("revoked"), "{out}");

    // Clean on A: gone on B.
    run(vec![os("clean"), a.clone().into(), os("agent2.test")]);
    sync();
    let report = apply();
    assert_eq!(report.live.deleted, ["ca/signed/agent2.test.pem"]);
    let (ok, out) = openssl_verify(&b.join("ca"), &b.join("ca/signed/agent1.test.pem"));
    assert!(!ok, "{out}");

    // Same CA files on both sides; B's identity untouched.
    for f in [
        "ca_crt.pem",
        "ca_key.pem",
        "ca_crl.pem",
        "serial",
        "inventory.txt",
    ] {
        assert_eq!(
            fs::read(a.join("ca").join(f)).unwrap(),
            fs::read(b.join("ca").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        fs::read(b.join("ssl/private_keys/master-b.test.pem")).unwrap(),
        b_key_before
    );
    assert!(!b.join("ssl/private_keys/master-a.test.pem").exists());
    assert!(b.join("ssl/certs/master-b.test.pem").exists());
}

#[test]
fn an_extension_is_verified_whole_by_the_applier() {
    let p = Pair::new(20);
    p.sync_and_apply();
    p.sign("grown.example.com");
    let s = p.sync();
    assert_eq!(
        s.stats.objects_extended, 1,
        "inventory.txt grew: {:?}",
        s.stats
    );
    let suffix = pending_suffix(&p);
    // Same length, other bytes: only the whole-content check can tell.
    let mut bytes = fs::read(&suffix).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&suffix, bytes).unwrap();
    let e = p.applier().run().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("inventory.txt"), "{e}");
    // Discarded; the next sync exchanges manifests and repairs.
    let (s, _) = p.sync_and_apply();
    assert!(s.stats.manifest_exchanged);
    p.assert_converged(&[PASSIVE]);
    // A FIFO as the suffix: refused, not waited on.
    p.sign("fifo-suffix.example.com");
    p.sync();
    let suffix = pending_suffix(&p);
    fs::remove_file(&suffix).unwrap();
    mkfifo(&suffix);
    let e = p.assert_discarded_and_resent(|_| {});
    assert!(e.message().contains("not a regular file"), "{e}");
    // Untampered extensions apply.
    p.sign("grown2.example.com");
    let (s, a) = p.sync_and_apply();
    assert_eq!(s.stats.objects_extended, 1);
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_failing_reload_is_a_warning_not_a_rollback() {
    let p = Pair::new(3);
    p.sync_and_apply();
    p.revoke("node0.example.com");
    p.sync();
    let report = p
        .applier()
        .reload_command([
            "sh",
            "-c",
            "echo 'Job for pe-puppetserver.service failed' >&2; exit 3",
        ])
        .run()
        .unwrap();
    assert!(!report.reloaded);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert!(
        w.contains("exit status: 3") && w.contains("Job for pe-puppetserver"),
        "{w}"
    );
    assert!(report.live.written.contains(&"ca/ca_crl.pem".to_string()));
    p.assert_converged(&[PASSIVE]);
    let st = ReplicaStatus::load(&p.b_state.join("status.json"))
        .unwrap()
        .unwrap();
    assert!(st.last_run_ok);
    assert_eq!(st.warnings, report.warnings);
    assert!(
        st.syslog_line().contains("[WARNING]"),
        "{}",
        st.syslog_line()
    );
    // A missing reload command is reported the same way.
    p.revoke("node1.example.com");
    p.sync();
    let report = p
        .applier()
        .reload_command(["/nonexistent/reload"])
        .run()
        .unwrap();
    assert!(
        report.warnings[0].contains("cannot run it"),
        "{:?}",
        report.warnings
    );
}

/// When the applier reports the live entry `after`, moves the live entry
/// `entry` away and leaves a symlink to `elsewhere` in its place: what the
/// owner of the cadir could do between the applier's compare and its
/// writes.
struct SwapForLink {
    after: &'static str,
    entry: PathBuf,
    moved: PathBuf,
    elsewhere: PathBuf,
}

impl ApplyProgress for SwapForLink {
    fn live_entry(&self, path: &str) {
        if path == self.after {
            swap_for_link(&self.entry, &self.moved, &self.elsewhere);
        }
    }
}

/// Moves `entry` to `moved` and puts a symlink to `target` in its place.
fn swap_for_link(entry: &Path, moved: &Path, target: &Path) {
    fs::rename(entry, moved).unwrap();
    std::os::unix::fs::symlink(target, entry).unwrap();
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_apply_is_not_written_or_deleted_through() {
    // Swapped between two renames into `signed/`, and after the last one
    // (before the deletion).
    for after in [
        "ca/signed/new1.example.com.pem",
        "ca/signed/new2.example.com.pem",
    ] {
        let p = Pair::new(20);
        p.sync_and_apply();
        // A file of the name the apply deletes, where the link will point.
        let elsewhere = p.dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("node3.example.com.pem"), "not a CA file").unwrap();
        p.sign("new1.example.com");
        p.sign("new2.example.com");
        p.clean("node3.example.com");
        p.sync();

        let moved = p.dir.path().join("signed.moved");
        let b_signed = p.b_cadir.join("signed");
        let report = p
            .applier()
            .progress(SwapForLink {
                after,
                entry: b_signed.clone(),
                moved: moved.clone(),
                elsewhere: elsewhere.clone(),
            })
            .run()
            .unwrap();
        assert_eq!(report.live.deleted.len(), 1, "{:?}", report.live);
        assert_eq!(
            walk(&elsewhere),
            vec!["node3.example.com.pem".to_string()],
            "nothing written or deleted through the link (swapped after {after})"
        );
        assert_eq!(
            fs::read(elsewhere.join("node3.example.com.pem")).unwrap(),
            b"not a CA file"
        );
        // The writes and the deletion happened in the directory the
        // applier had opened, wherever it went.
        assert!(moved.join("new1.example.com.pem").is_file());
        assert!(moved.join("new2.example.com.pem").is_file());
        assert!(!moved.join("node3.example.com.pem").exists());
        // The next apply that compares everything replaces the link.
        p.applier().verify(true).run().unwrap();
        assert!(fs::symlink_metadata(&b_signed).unwrap().is_dir());
        p.assert_converged(&[]);
    }
}

/// When the applier is about to remove the live entry `entry` (of another
/// kind than the snapshot's), removes it and renames `back` to its place:
/// the owner of the cadir undoing a swap between the compare and the
/// removal.
struct PutBack {
    entry: PathBuf,
    back: PathBuf,
}

impl ApplyProgress for PutBack {
    fn replacing(&self, _path: &str) {
        fs::remove_file(&self.entry).unwrap();
        fs::rename(&self.back, &self.entry).unwrap();
    }
}

#[test]
fn a_directory_put_back_where_the_compare_saw_a_symlink_is_not_removed_with_its_contents() {
    let p = Pair::new(20);
    p.sync_and_apply();
    // A certificate only the replica holds, in its real signed/.
    let b_signed = p.b_cadir.join("signed");
    fs::write(
        b_signed.join("own.example.com.pem"),
        "signed by the replica",
    )
    .unwrap();
    let before = walk(&b_signed);
    // signed/ swapped for a link to `elsewhere`; the compare will see the
    // link, and the applier plans to replace it by a directory.
    let elsewhere = p.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("planted.pem"), "not a CA file").unwrap();
    let moved = p.dir.path().join("signed.moved");
    swap_for_link(&b_signed, &moved, &elsewhere);
    p.sign("new1.example.com");
    p.sync();

    // The real directory is back by the time the applier removes "the link".
    let e = p
        .applier()
        .verify(true)
        .progress(PutBack {
            entry: b_signed.clone(),
            back: moved.clone(),
        })
        .run()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafePath, "{e}");
    assert!(
        e.message()
            .contains("is a directory now, but the compare found a symlink there"),
        "{e}"
    );
    assert!(e.message().contains(&b_signed.display().to_string()), "{e}");
    assert_eq!(walk(&b_signed), before, "signed/ was left whole");
    assert_eq!(walk(&elsewhere), vec!["planted.pem".to_string()]);

    // The next apply compares again and finds a directory: nothing to replace.
    p.applier().run().unwrap();
    assert!(b_signed.join("new1.example.com.pem").is_file());
    p.assert_converged(&[PASSIVE, "own.example.com"]);
}

/// When the applier is about to replace a live entry of another kind,
/// renames `away` back to `to`: a directory moved away by another process
/// while the applier compared, and back before it wrote.
struct MovedBack {
    away: PathBuf,
    to: PathBuf,
}

impl ApplyProgress for MovedBack {
    fn replacing(&self, _path: &str) {
        fs::rename(&self.away, &self.to).unwrap();
    }
}

#[test]
fn an_apply_that_compared_while_signed_was_away_deletes_what_it_missed_next_time() {
    let p = Pair::new(5);
    p.sync_and_apply();
    p.sign("new1.example.com");
    p.clean("node0.example.com");
    p.sync();
    // signed/ is away while the applier compares (it sees none, so no
    // certificate to delete), and back before it writes; a directory in
    // the place of ca_pub.pem, which the apply replaces first, marks the
    // moment.
    let b_signed = p.b_cadir.join("signed");
    let away = p.dir.path().join("signed.away");
    fs::rename(&b_signed, &away).unwrap();
    let pub_key = p.b_cadir.join("ca_pub.pem");
    fs::remove_file(&pub_key).unwrap();
    fs::create_dir(&pub_key).unwrap();
    let e = p
        .applier()
        .verify(true)
        .progress(MovedBack {
            away: away.clone(),
            to: b_signed.clone(),
        })
        .run()
        .unwrap_err();
    let cleaned = b_signed.join("node0.example.com.pem");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(
        e.message().contains(&format!(
            "{} is still in the live CA although snapshot",
            cleaned.display()
        )),
        "{e}"
    );
    assert!(cleaned.is_file());
    assert!(b_signed.join("new1.example.com.pem").is_file());
    // Not recorded as applied: the next apply compares again, with the
    // snapshot before, and deletes it.
    p.applier().run().unwrap();
    assert!(!cleaned.exists());
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn applies_racing_a_process_that_keeps_swapping_signed_for_a_symlink_never_reach_through_it() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let p = Pair::new(30);
    p.sync_and_apply();
    let elsewhere = p.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let b_signed = p.b_cadir.join("signed");
    let moved = p.dir.path().join("signed.moved");
    // Another process of the cadir's owner: signed/ moved away, a link
    // to `elsewhere` in its place, and back, over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, signed, moved, elsewhere) = (
            stop.clone(),
            b_signed.clone(),
            moved.clone(),
            elsewhere.clone(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if fs::rename(&signed, &moved).is_ok() {
                    let _ = std::os::unix::fs::symlink(&elsewhere, &signed);
                    std::thread::yield_now();
                    if fs::symlink_metadata(&signed).is_ok_and(|m| m.file_type().is_symlink()) {
                        let _ = fs::remove_file(&signed);
                    }
                    let _ = fs::rename(&moved, &signed);
                    swaps += 1;
                }
                std::thread::yield_now();
            }
            swaps
        })
    };
    let mut planted = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..25 {
        // Files of the names the apply deletes, where the link points.
        let victim = format!("node{i}.example.com.pem");
        fs::write(elsewhere.join(&victim), "not a CA file").unwrap();
        planted.push(victim);
        p.sign(&format!("new{i}.example.com"));
        p.clean(&format!("node{i}.example.com"));
        p.sync();
        // An apply may stop (a directory that is no longer one, a rename
        // whose target changed kind): what matters is where it wrote.
        outcomes.push(match p.applier().verify(i % 2 == 0).run() {
            Ok(_) => "applied".to_string(),
            Err(e) => format!("{:?}", e.kind()),
        });
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    planted.sort();
    let mut found = walk(&elsewhere);
    found.sort();
    assert_eq!(
        found, planted,
        "written or deleted through the link ({swaps} swaps; applies: {outcomes:?})"
    );
    for f in &found {
        assert_eq!(fs::read(elsewhere.join(f)).unwrap(), b"not a CA file");
    }
    // The passive's own certificate is never deleted: wherever the swaps
    // left the directory that holds it, it is there.
    let own = format!("{PASSIVE}.pem");
    assert!(
        b_signed.join(&own).is_file() || moved.join(&own).is_file(),
        "the replica's own certificate was deleted ({swaps} swaps; applies: {outcomes:?})"
    );
    // Left alone, the replica converges (forced: the applies that stopped
    // leave more deletions pending than the guard allows at once).
    if moved.exists() && fs::symlink_metadata(&b_signed).is_err() {
        fs::rename(&moved, &b_signed).unwrap();
    }
    p.applier().verify(true).force(true).run().unwrap();
    assert!(b_signed.join("new24.example.com.pem").is_file());
    assert!(!b_signed.join("node24.example.com.pem").exists());
}

#[test]
fn a_file_swapped_for_a_symlink_before_its_mode_is_fixed_leaves_the_target_alone() {
    let p = Pair::new(3);
    p.sync_and_apply();
    // Two live files whose modes drifted; the second becomes a link to a
    // private file once the first is fixed.
    for f in ["ca_crt.pem", "ca_pub.pem"] {
        fs::set_permissions(p.b_cadir.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let secret = p.dir.path().join("secret");
    fs::write(&secret, "private").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let report = p
        .applier()
        .verify(true)
        .progress(SwapForLink {
            after: "ca/ca_crt.pem",
            entry: p.b_cadir.join("ca_pub.pem"),
            moved: p.dir.path().join("ca_pub.moved"),
            elsewhere: secret.clone(),
        })
        .run()
        .unwrap();
    assert_eq!(
        report.live.metadata_fixed,
        ["ca/ca_crt.pem", "ca/ca_pub.pem"],
        "{:?}",
        report.live
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&p.b_cadir.join("ca_crt.pem")), 0o644);
    assert_eq!(mode(&secret), 0o600, "the link's target was changed");
    p.applier().verify(true).run().unwrap();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_replica_cadir_reached_through_the_migration_symlink_is_applied_to_the_real_directory() {
    let p = Pair::new(3);
    let link = p.b_ssl.join("ca");
    std::os::unix::fs::symlink(&p.b_cadir, &link).unwrap();
    fs::set_permissions(&p.b_cadir, fs::Permissions::from_mode(0o700)).unwrap();
    p.sync();
    let live = pe_failover_core::replset::CaPaths {
        cadir: link.clone(),
        ssldir: p.b_ssl.clone(),
    };
    let mut applier =
        pe_failover_core::apply::Applier::new(&p.b_state, live).reload_command(["true"]);
    if is_root() {
        applier = applier.owner(Owner::Fixed {
            uid: 4242,
            gid: 4243,
        });
    }
    applier.run().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let real = fs::metadata(&p.b_cadir).unwrap();
    assert_eq!(
        real.permissions().mode() & 0o7777,
        0o750,
        "the directory's mode, not the link's"
    );
    if is_root() {
        assert_eq!((real.uid(), real.gid()), (4242, 4243));
    }
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_cadir_link_pointed_elsewhere_after_an_apply_is_refused_unless_forced() {
    let p = Pair::new(3);
    let link = p.b_ssl.join("ca");
    std::os::unix::fs::symlink(&p.b_cadir, &link).unwrap();
    let live = pe_failover_core::replset::CaPaths {
        cadir: link.clone(),
        ssldir: p.b_ssl.clone(),
    };
    let applier =
        || pe_failover_core::apply::Applier::new(&p.b_state, live.clone()).reload_command(["true"]);
    p.sync();
    applier().run().unwrap();
    // The link now leads to another directory with a few files (fewer
    // than the deletions always allowed).
    let elsewhere = p.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("authorized_keys"), "ssh-ed25519 AAAA").unwrap();
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    p.sign("new.example.com");
    p.sync();
    for verify in [false, true] {
        let err = applier().verify(verify).run().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&elsewhere.display().to_string())
                && text.contains(&p.b_cadir.display().to_string())
                && text.contains("force"),
            "{text}"
        );
        assert_eq!(walk(&elsewhere), ["authorized_keys"]);
    }
    // Moved on purpose: forced once, then followed as usual.
    applier().force(true).run().unwrap();
    assert!(elsewhere.join("signed/new.example.com.pem").is_file());
    p.sign("next.example.com");
    p.sync();
    applier().run().unwrap();
    assert!(elsewhere.join("signed/next.example.com.pem").is_file());
}

#[test]
fn the_receiver_runs_unprivileged_and_the_applier_as_root() {
    if !is_root() {
        skip("needs root to switch users");
        return;
    }
    let nobody = (65534, 65534);
    let p = Pair::new(3);
    // The layout Puppet sets up: a root-owned state dir the transfer user
    // can traverse, and an incoming/ that only the transfer user writes.
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("b")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir_all(p.b_state.join("incoming")).unwrap();
    fs::set_permissions(&p.b_state, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(p.b_state.join("incoming"), Some(nobody.0), Some(nobody.1)).unwrap();
    fs::set_permissions(
        p.b_state.join("incoming"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();

    let (s, status, stderr) = p.sync_child_as(Some(nobody));
    assert!(status.success(), "{stderr}");
    assert_eq!(s.unwrap().outcome, SyncOutcome::Committed);
    let txn = p.incoming().pop().unwrap();
    let meta = fs::metadata(p.b_state.join("incoming").join(&txn)).unwrap();
    assert_eq!(meta.uid(), nobody.0, "written by the transfer user");
    p.apply();
    p.assert_converged(&[PASSIVE]);
    // Root-owned, private snapshots; the receiver reads only the published manifest.
    let snaps = fs::metadata(p.b_state.join("snapshots")).unwrap();
    assert_eq!(
        (snaps.uid(), snaps.permissions().mode() & 0o777),
        (0, 0o700)
    );
    // The transaction's manifest, written by the transfer user, became the
    // snapshot's: root's now, readable for the receiver.
    let manifest = fs::metadata(p.b_state.join("snapshots/latest/manifest.json")).unwrap();
    assert_eq!(
        (
            manifest.uid(),
            manifest.gid(),
            manifest.permissions().mode() & 0o777
        ),
        (0, 0, 0o644)
    );

    p.sign("unprivileged.example.com");
    let (s, status, stderr) = p.sync_child_as(Some(nobody));
    assert!(status.success(), "{stderr}");
    let s = s.unwrap();
    assert!(
        !s.stats.manifest_exchanged,
        "the receiver read the staged manifest"
    );
    assert_eq!(s.stats.objects, 3);
    p.apply();
    p.assert_converged(&[PASSIVE]);

    // Enough contents for a pack: the transfer user's, root's once adopted.
    for i in 0..300 {
        p.sign(&format!("packed{i}.example.com"));
    }
    let (s, status, stderr) = p.sync_child_as(Some(nobody));
    assert!(status.success(), "{stderr}");
    assert!(s.unwrap().stats.objects >= 300);
    let txn = p.incoming().pop().unwrap();
    let pack = fs::metadata(p.b_state.join("incoming").join(&txn).join("objects.pack")).unwrap();
    assert_eq!(pack.uid(), nobody.0);
    p.apply();
    p.assert_converged(&[PASSIVE]);
    for name in store_packs(&p) {
        let meta = fs::metadata(p.b_state.join("snapshots/objects/packs").join(&name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o777, meta.nlink()),
            (0, 0o600, 1),
            "{name}"
        );
    }
}

/// The suffix object of the one pending transaction.
fn pending_suffix(p: &Pair) -> PathBuf {
    let txn = p.incoming().pop().unwrap();
    let objects = p.b_state.join("incoming").join(&txn).join("objects");
    fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".suffix"))
        .expect("a suffix object")
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// The files in the content store's packs directory.
fn store_packs(p: &Pair) -> Vec<String> {
    let dir = p.b_state.join("snapshots/objects/packs");
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(r) => r
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Contents the content store holds in files of their own.
fn loose_objects(p: &Pair) -> usize {
    let store = p.b_state.join("snapshots/objects");
    fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().len() == 2)
        .map(|e| fs::read_dir(e.path()).unwrap().count())
        .sum()
}

#[test]
fn a_large_transaction_travels_as_one_pack_and_later_ones_build_on_it() {
    let p = Pair::new(400);
    let (s, _) = p.sync_and_apply();
    assert!(s.stats.objects >= 400, "{:?}", s.stats);
    p.assert_converged(&[PASSIVE]);
    // One pack and its index; no content has a file of its own.
    let packs = store_packs(&p);
    assert_eq!(packs.len(), 2, "{packs:?}");
    assert!(
        packs[0].ends_with(".idx") && packs[1].ends_with(".pack"),
        "{packs:?}"
    );
    assert_eq!(loose_objects(&p), 0);

    // A small change travels loose; inventory.txt grows from contents held
    // in the pack.
    p.sign("after-pack.example.com");
    p.revoke("node0.example.com");
    let (s, _) = p.sync_and_apply();
    assert!(s.stats.objects_extended >= 1, "{:?}", s.stats);
    p.assert_converged(&[PASSIVE]);
    assert!(loose_objects(&p) > 0);
    assert_eq!(store_packs(&p).len(), 2);

    // The live files are rewritten from the pack when they drift.
    let live = p.b_cadir.join("signed/node7.example.com.pem");
    fs::write(&live, "edited on the replica").unwrap();
    let a = p.applier().verify(true).run().unwrap();
    assert!(
        a.live
            .written
            .iter()
            .any(|w| w.ends_with("node7.example.com.pem")),
        "{a:?}"
    );
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_damaged_or_tampered_pack_is_discarded_and_resent() {
    use std::os::unix::fs::MetadataExt as _;
    let p = Pair::new(3);
    p.sync_and_apply();
    let txn_file = |txn: &str, name: &str| p.b_state.join("incoming").join(txn).join(name);
    let system_file = p.dir.path().join("system-file");
    fs::write(&system_file, "root's\n").unwrap();
    let mut round = 0;
    let mut packed_txn = || {
        round += 1;
        for i in 0..300 {
            p.sign(&format!("round{round}-{i}.example.com"));
        }
        p.sync();
        let txn = p.incoming().pop().unwrap();
        assert!(txn_file(&txn, "objects.pack").is_file());
        txn
    };
    // After the refusal: the content store as it is now (no pack, index or
    // temporary file kept), the transaction gone.
    let store_as_now = |p: &Pair| {
        let before = store_packs(p);
        move |p: &Pair| {
            assert_eq!(store_packs(p), before, "the content store changed");
            assert!(p.incoming().is_empty());
        }
    };

    // A pack tampered with by `tamper` (given the pack and the index) is
    // refused with an error that `says` so.
    let mut refused = |tamper: &dyn Fn(&Path, &Path), says: &str| {
        let txn = packed_txn();
        tamper(
            &txn_file(&txn, "objects.pack"),
            &txn_file(&txn, "objects.idx"),
        );
        let e = p.assert_discarded_and_resent(store_as_now(&p));
        assert!(e.message().contains(says), "{e}");
    };
    // Something else under the name of `path`.
    let swap = |path: &Path, put: &dyn Fn(&Path)| {
        fs::remove_file(path).unwrap();
        put(path);
    };
    let symlink_to_system_file =
        |path: &Path| std::os::unix::fs::symlink(&system_file, path).unwrap();

    // A flipped byte in one content.
    refused(
        &|pack, _| {
            let mut bytes = fs::read(pack).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            fs::write(pack, bytes).unwrap();
        },
        "do not match its manifest entry",
    );
    // An index that says something else (checksum and all).
    refused(
        &|_, idx| fs::write(idx, b"PEFIDX1\n garbage").unwrap(),
        "pack index",
    );
    // A symlink, then a FIFO (refused, not waited on), where the index
    // should be.
    refused(
        &|_, idx| swap(idx, &symlink_to_system_file),
        "symbolic link",
    );
    refused(&|_, idx| swap(idx, &mkfifo), "not a regular file");
    // An index without its pack.
    refused(&|pack, _| fs::remove_file(pack).unwrap(), "no pack");
    // A directory, a symlink to a file of the system and a FIFO under the
    // pack's name.
    let directory = |path: &Path| {
        fs::create_dir(path).unwrap();
        fs::write(path.join("x"), "x").unwrap();
    };
    refused(&|pack, _| swap(pack, &directory), "not a regular file");
    refused(
        &|pack, _| swap(pack, &symlink_to_system_file),
        "symbolic link",
    );
    assert_eq!(fs::read_to_string(&system_file).unwrap(), "root's\n");
    refused(&|pack, _| swap(pack, &mkfifo), "not a regular file");
    // A pack that is a hard link to another file: refused, and that file
    // keeps its owner and mode.
    let other = p.dir.path().join("other");
    refused(
        &|pack, _| {
            fs::copy(pack, &other).unwrap();
            fs::set_permissions(&other, fs::Permissions::from_mode(0o640)).unwrap();
            swap(pack, &|path| fs::hard_link(&other, path).unwrap());
        },
        "single name",
    );
    let meta = fs::metadata(&other).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.nlink()),
        (0o640, 1)
    );
}

#[test]
fn a_rescan_of_the_paths_inotify_reports_equals_a_full_scan() {
    use pe_failover_core::watch::{Debounce, Watcher};
    use std::time::Duration;
    let p = Pair::new(20);
    let set = p.set();
    let first = set.scan().unwrap();
    // (Known when it was shipped: a rescan then records what changed.)
    let base = first.manifest.digest();
    let mut watcher = Watcher::new().unwrap();
    watcher.add_tree(&p.a_cadir).unwrap();
    watcher.add_dir(&p.a_ssl).unwrap();
    let wait = |w: &mut Watcher| {
        let quiet = Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        w.wait(quiet, Some(Duration::from_secs(5)), &CancelToken::new())
            .unwrap()
    };

    // Sign, revoke, clean, chmod, the host's CRL copy, and a file outside
    // the set: only the changed files and their directories are read.
    p.sign("new.example.com");
    p.revoke("node3.example.com");
    p.clean("node4.example.com");
    let f = p.a_cadir.join("signed/node5.example.com.pem");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    p.refresh_host_crl();
    fs::write(p.a_ssl.join("unrelated.txt"), "x").unwrap();
    let batch = wait(&mut watcher);
    assert!(!batch.overflow);
    let quick = set
        .rescan_paths(&first, &batch.paths)
        .unwrap()
        .expect("an incremental rescan");
    let full = set.scan().unwrap();
    assert_eq!(quick.manifest.digest(), full.manifest.digest());
    assert_eq!(quick.manifest, full.manifest);
    // What changed since the first scan, as a diff of the two finds it: a
    // sender to a replica holding the first needs nothing else.
    let since = quick
        .since
        .as_ref()
        .expect("what changed since the first scan");
    assert_eq!(since.base, base);
    let changes = pe_failover_core::diff::diff(&first.manifest, &full.manifest);
    assert_eq!(since.changes, changes);
    // (Signed: one certificate more; cleaned: one fewer.)
    assert_eq!(
        (changes.added.len(), changes.removed.len()),
        (1, 1),
        "{changes:?}"
    );

    // A new directory, or a path nobody expects: only a full scan can tell.
    fs::create_dir(p.a_cadir.join("extra")).unwrap();
    let batch = wait(&mut watcher);
    assert!(set.rescan_paths(&full, &batch.paths).unwrap().is_none());
    let elsewhere = [p.dir.path().join("elsewhere.txt")].into_iter().collect();
    assert!(set.rescan_paths(&full, &elsewhere).unwrap().is_none());
    // Nothing changed: the same manifest.
    let none = Default::default();
    let same = set.rescan_paths(&full, &none).unwrap().unwrap();
    assert_eq!(same.manifest, full.manifest);
    // (`full`'s digest was computed above.)
    let since = same.since.expect("nothing changed since");
    assert_eq!(
        (since.base, since.changes.is_empty()),
        (full.manifest.digest(), true)
    );
    // A change that breaks a rule (a setuid certificate): refused, as by a
    // full scan (a rescan checks only what changed).
    let f = p.a_cadir.join("signed/node7.example.com.pem");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4644)).unwrap();
    let err = set
        .rescan_paths(&full, &[f].into_iter().collect())
        .unwrap_err();
    assert!(err.to_string().contains("setuid"), "{err}");
    let err = set.scan().unwrap_err();
    assert!(err.to_string().contains("setuid"), "{err}");
}

#[test]
fn a_receiver_started_early_reads_its_base_again_when_another_session_changed_it() {
    use pe_failover_core::protocol::Kind;
    let p = Pair::new(3);
    p.sync_and_apply();
    // Started by a sender that scans before it says HELLO: it reads the
    // CA base meanwhile.
    let (a, b) = UnixStream::pair().unwrap();
    let early = p.receiver().expect_kind(Some(Kind::Ca));
    let waiting = std::thread::spawn(move || early.receive(b));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Another session stores a transaction: the base is another one now.
    p.sign("between.example.com");
    assert_eq!(p.sync().outcome, SyncOutcome::Committed);
    // The delta on top of it must be merged with it, not with the old base.
    p.sign("after.example.com");
    let sent = p.sender().sync(a).expect("sync over the early receiver");
    assert_eq!(sent.outcome, SyncOutcome::Committed);
    assert!(!sent.stats.manifest_exchanged);
    let received = waiting.join().unwrap().expect("early receiver");
    assert_eq!(received.outcome, ReceiveOutcome::Stored);
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn contents_the_scan_kept_are_shipped_as_scanned_without_reading_the_files_again() {
    let p = Pair::new(3);
    p.sync_and_apply();
    p.sign("kept.example.com");
    let scan = p.set().keep_contents(1 << 20).scan().unwrap();
    assert!(!scan.contents.is_empty());
    let rel = "signed/kept.example.com.pem";
    let scanned = fs::read(p.a_cadir.join(rel)).unwrap();
    // Rewritten after the scan: a sender reading the file would find it
    // changed and give up; the kept contents match the manifest.
    fs::write(p.a_cadir.join(rel), "rewritten after the scan").unwrap();
    let (s, r) = p.sync_scanned(&scan);
    r.unwrap();
    assert_eq!(s.unwrap().outcome, SyncOutcome::Committed);
    p.apply();
    assert_eq!(fs::read(p.b_cadir.join(rel)).unwrap(), scanned);
    // The next sync ships what the file holds now.
    p.sync_and_apply();
    p.assert_converged(&[PASSIVE]);
}

/// Appends lines to the active's `inventory.txt` until it holds more than
/// `bytes`; returns its path.
fn grow_inventory(p: &Pair, bytes: u64) -> std::path::PathBuf {
    use std::io::Write as _;
    let inventory = p.a_cadir.join("inventory.txt");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&inventory)
        .unwrap();
    let mut lines = String::new();
    let mut i = 0;
    while file.metadata().unwrap().len() <= bytes {
        lines.clear();
        for _ in 0..10_000 {
            i += 1;
            lines.push_str(&format!(
                "{i:#06x} 2026-01-01T00:00:00UTC 2031-01-01T00:00:00UTC /CN=old{i}.example.com\n"
            ));
        }
        file.write_all(lines.as_bytes()).unwrap();
    }
    inventory
}

/// Flips the first byte of the content store's copy of the replica's live
/// `inventory.txt`.
#[track_caller]
fn damage_stored_inventory(p: &Pair) {
    let live = fs::read(p.b_cadir.join("inventory.txt")).unwrap();
    let object = StateDir::new(&p.b_state).object_path(&hex::encode(sha2::Sha256::digest(&live)));
    let mut bytes = fs::read(&object).unwrap();
    assert!(
        bytes == live,
        "{} differs from the live inventory",
        object.display()
    );
    bytes[0] ^= 0x01;
    fs::write(&object, bytes).unwrap();
}

#[test]
fn a_large_extension_is_built_from_the_contents_the_last_apply_held() {
    // An applier that keeps the latest snapshot (the passive's watcher)
    // builds a grown inventory of 256 KiB or more from the bytes it built
    // last time plus the suffix, without reading the store's copy again.
    let p = Pair::new(5);
    let cache = LatestCache::new();
    let cached = || p.applier().latest_cache(cache.clone());
    grow_inventory(&p, 300 << 10);
    p.sync();
    cached().run().unwrap();
    // The first extension reads the contents it extends from the store.
    p.sign("held1.example.com");
    assert_eq!(p.sync().stats.objects_extended, 1);
    cached().run().unwrap();
    p.assert_converged(&[PASSIVE]);
    // Now held: the store's copy is not read (damaged, it would be refused).
    damage_stored_inventory(&p);
    p.sign("held2.example.com");
    assert_eq!(p.sync().stats.objects_extended, 1);
    let a = cached().run().unwrap();
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
    // A round that leaves the inventory alone keeps it held.
    p.revoke("held1.example.com");
    p.sync();
    cached().run().unwrap();
    damage_stored_inventory(&p);
    p.sign("held3.example.com");
    assert_eq!(p.sync().stats.objects_extended, 1);
    cached().run().unwrap();
    p.assert_converged(&[PASSIVE]);
    // A live copy repaired by a verifying apply is written from them too.
    damage_stored_inventory(&p);
    fs::write(p.b_cadir.join("inventory.txt"), "cut short\n").unwrap();
    let a = cached().verify(true).run().unwrap();
    assert!(
        a.live.written.contains(&"ca/inventory.txt".to_string()),
        "{:?}",
        a.live
    );
    p.assert_converged(&[PASSIVE]);
    // An applier without the held bytes reads the store's copy (still
    // damaged) and checks it.
    p.sign("held4.example.com");
    assert_eq!(p.sync().stats.objects_extended, 1);
    let e = p.applier().run().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("the contents it extends"), "{e}");
}

#[test]
fn a_grown_inventory_is_hashed_and_sent_from_what_the_last_rescan_read() {
    // The watcher's rescans keep a large file they read whole; when it has
    // grown by the next one, only the appended bytes are hashed, and the
    // sender sends them from memory as an extension of what the replica
    // holds.
    let p = Pair::new(3);
    let inventory = grow_inventory(&p, 256 << 10);
    p.sync_and_apply();
    let set = p.set();
    let first = set.scan().unwrap();
    let _ = first.manifest.digest();
    let paths = |names: &[&str]| -> std::collections::BTreeSet<std::path::PathBuf> {
        names.iter().map(|n| p.a_cadir.join(n)).collect()
    };
    // A rescan that reads the inventory keeps it (nothing to extend yet).
    let read = set
        .rescan_paths(&first, &paths(&["inventory.txt"]))
        .unwrap()
        .unwrap();
    assert_eq!(read.manifest, first.manifest);

    p.sign("grown.example.com");
    let changed = paths(&["inventory.txt", "serial", "signed/grown.example.com.pem"]);
    let grown = set.rescan_paths(&read, &changed).unwrap().unwrap();
    assert_eq!(grown.manifest, set.scan().unwrap().manifest);
    let scanned = fs::read(&inventory).unwrap();
    // Its new line changed after the rescan: a sender reading the file
    // would find it changed and give up.
    let mut later = scanned.clone();
    let n = later.len();
    later[n - 2] = b'#';
    fs::write(&inventory, &later).unwrap();
    let (s, r) = p.sync_scanned(&grown);
    r.unwrap();
    let s = s.unwrap();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert_eq!(s.stats.objects_extended, 1, "{:?}", s.stats);
    let appended =
        scanned.len() as u64 - fs::metadata(p.b_cadir.join("inventory.txt")).unwrap().len();
    let cert = fs::metadata(p.a_cadir.join("signed/grown.example.com.pem"))
        .unwrap()
        .len();
    // (The serial's new contents, the certificate and the new line.)
    assert!(
        s.stats.object_bytes <= appended + cert + 16,
        "{:?}",
        s.stats
    );
    p.apply();
    assert_eq!(fs::read(p.b_cadir.join("inventory.txt")).unwrap(), scanned);

    // Rewritten rather than grown (a restored inventory, say): hashed
    // whole, and sent whole from the file.
    let mut rewritten = fs::read(&inventory).unwrap();
    rewritten[0] = b'#';
    rewritten.extend_from_slice(b"one more line\n");
    fs::write(&inventory, &rewritten).unwrap();
    let again = set
        .rescan_paths(&grown, &paths(&["inventory.txt"]))
        .unwrap()
        .unwrap();
    assert_eq!(again.manifest, set.scan().unwrap().manifest);
    let (s, r) = p.sync_scanned(&again);
    r.unwrap();
    let s = s.unwrap();
    assert_eq!(s.outcome, SyncOutcome::Committed);
    assert_eq!(s.stats.objects_extended, 0, "{:?}", s.stats);
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_rescan_reads_an_inventory_of_hundreds_of_thousands_of_certificates() {
    // 17 MiB (about 200,000 certificates' lines): a rescan still reads it,
    // rather than leaving every signing to a scan of the whole CA.
    let p = Pair::new(3);
    grow_inventory(&p, 17 << 20);
    let set = p.set();
    let first = set.scan().unwrap();
    p.sign("big.example.com");
    let changed = ["inventory.txt", "serial", "signed/big.example.com.pem"]
        .iter()
        .map(|n| p.a_cadir.join(n))
        .collect();
    let quick = set
        .rescan_paths(&first, &changed)
        .unwrap()
        .expect("an incremental rescan");
    assert_eq!(quick.manifest, set.scan().unwrap().manifest);
}

#[test]
fn one_receiver_serves_session_after_session_and_keeps_its_base_between_them() {
    let p = Pair::new(3);
    let (a, b) = UnixStream::pair().unwrap();
    let receiver = p.receiver();
    // (outcome, base kept, contents received, contents the replica held)
    let serving = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let last = receiver.serve(b, |r| {
            let r = r.as_ref().expect("a session failed");
            let s = &r.stats;
            if r.outcome != ReceiveOutcome::Unused {
                seen.push((r.outcome, s.base_kept, s.objects, s.objects_reused));
            }
        });
        (last, seen)
    });
    let sync = |what: &str| {
        let s = p
            .sender()
            .sync(&a)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        s.outcome
    };
    let copy = |from: &str, to: &str| {
        let signed = p.a_cadir.join("signed");
        fs::copy(signed.join(from), signed.join(to)).unwrap();
    };
    let node1 = fs::read(p.a_cadir.join("signed/node1.example.com.pem")).unwrap();
    assert_eq!(sync("first"), SyncOutcome::Committed);
    p.sign("one.example.com");
    assert_eq!(sync("a signing"), SyncOutcome::Committed);
    assert_eq!(sync("no change"), SyncOutcome::UpToDate);
    // The contents the replica holds follow every session: a file with the
    // contents of another is not sent again while one of them remains...
    copy("node1.example.com.pem", "twin.example.com.pem");
    assert_eq!(sync("a twin"), SyncOutcome::Committed);
    p.clean("node1.example.com");
    assert_eq!(sync("one twin cleaned"), SyncOutcome::Committed);
    copy("twin.example.com.pem", "third.example.com.pem");
    assert_eq!(sync("a third"), SyncOutcome::Committed);
    // ...and is sent once none does.
    p.clean("twin.example.com");
    p.clean("third.example.com");
    assert_eq!(sync("all cleaned"), SyncOutcome::Committed);
    fs::write(p.a_cadir.join("signed/back.example.com.pem"), &node1).unwrap();
    assert_eq!(sync("contents back"), SyncOutcome::Committed);
    // Another session (another connection) stores a transaction in
    // between: the kept base is not the replica's any more and is not used.
    p.sign("between.example.com");
    assert_eq!(p.sync().outcome, SyncOutcome::Committed);
    p.sign("after.example.com");
    assert_eq!(sync("after another session"), SyncOutcome::Committed);
    drop(a);
    let (last, seen) = serving.join().unwrap();
    assert_eq!(last.unwrap().outcome, ReceiveOutcome::Unused);
    let kept: Vec<bool> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        kept,
        [false, true, true, true, true, true, true, true, false],
        "{seen:?}"
    );
    use ReceiveOutcome::{NothingToDo, Stored};
    let outcomes: Vec<ReceiveOutcome> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        outcomes,
        [
            Stored,
            Stored,
            NothingToDo,
            Stored,
            Stored,
            Stored,
            Stored,
            Stored,
            Stored
        ]
    );
    // The twin and the third: held. After both were cleaned, not held.
    assert_eq!((seen[3].2, seen[3].3), (0, 1), "twin: {seen:?}");
    assert_eq!((seen[5].2, seen[5].3), (0, 1), "third: {seen:?}");
    assert_eq!((seen[7].2, seen[7].3), (1, 0), "back: {seen:?}");
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_grown_file_whose_start_changed_travels_whole_and_one_changed_after_the_scan_is_not_sent() {
    let p = Pair::new(20);
    p.sync_and_apply();
    // Larger, but not the held contents with more at the end: no EXTEND.
    let inventory = p.a_cadir.join("inventory.txt");
    let mut bytes = fs::read(&inventory).unwrap();
    bytes[0] ^= 0x01;
    bytes.extend_from_slice(b"0x0999 2026-12-05T00:00:00UTC 2031-12-05T00:00:00UTC /CN=x\n");
    fs::write(&inventory, &bytes).unwrap();
    let (s, _) = p.sync_and_apply();
    assert_eq!(s.stats.objects_extended, 0, "{:?}", s.stats);
    assert_eq!(s.stats.object_bytes, bytes.len() as u64, "{:?}", s.stats);
    p.assert_converged(&[PASSIVE]);
    // Grown by appending, then its new end edited after the scan: what
    // would go is not what the scan hashed, so nothing is committed.
    p.sign("scanned.example.com");
    let scan = p.set().scan().unwrap();
    let mut bytes = fs::read(&inventory).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    fs::write(&inventory, &bytes).unwrap();
    let (s, r) = p.sync_scanned(&scan);
    let e = s.unwrap_err();
    assert!(pe_failover_core::protocol::is_source_changed(&e), "{e}");
    assert!(r.is_err());
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());
    // The next sync ships what the file holds now.
    let (s, _) = p.sync_and_apply();
    assert_eq!(s.stats.objects_extended, 1, "{:?}", s.stats);
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_receiver_kept_between_sessions_is_fenced_once_its_host_is_promoted() {
    let p = Pair::new(3);
    let (a, b) = UnixStream::pair().unwrap();
    let receiver = p.receiver();
    let serving = std::thread::spawn(move || receiver.serve(b, |_| {}));
    let s = p.sender().sync(&a).expect("first session");
    assert_eq!(s.outcome, SyncOutcome::Committed);
    let pending = p.incoming();
    // Promoted while the receiver waits for the next session: the role file
    // is read again, and nothing more is taken from the old primary.
    fs::write(&p.role_file, "pe_failover_mode: active\n").unwrap();
    p.sign("after-promotion.example.com");
    let e = p.sender().sync(&a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
    let served = serving.join().unwrap();
    assert_eq!(served.unwrap_err().kind(), ErrorKind::Fenced);
    assert_eq!(p.incoming(), pending);
}
