//! Transactions whose manifest the receiver stores as a delta from its base
//! (a small change to a CA of some size), end to end over a socketpair with
//! the applier on real directories: what is stored where, what a fresh
//! receiver and applier make of pending deltas, damaged or forged deltas,
//! and snapshot manifests that did not reach the disk before a crash.

#[path = "util/pair.rs"]
mod pair;

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use pair::{Pair, PASSIVE};
use pe_failover_core::protocol::Kind;
use pe_failover_core::replset::load_manifest;
use pe_failover_core::stage::{latest_snapshot_meta, receiver_base, LatestCache, StateDir};

/// Enough certificates that a signing (three entries: the certificate,
/// `serial`, `inventory.txt`) is a small change.
const CERTS: usize = 40;

/// A pair synced and applied once (that first transaction is whole).
fn pair() -> Pair {
    let p = Pair::new(CERTS);
    p.sync_and_apply();
    p
}

/// The directory of the one pending transaction.
fn pending(p: &Pair) -> PathBuf {
    let mut txns = p.incoming();
    assert_eq!(txns.len(), 1, "{txns:?}");
    p.b_state.join("incoming").join(txns.pop().unwrap())
}

fn latest_dir(p: &Pair) -> PathBuf {
    let meta = latest_snapshot_meta(&StateDir::new(&p.b_state))
        .unwrap()
        .expect("a latest snapshot");
    p.b_state.join("snapshots").join(meta.digest)
}

fn snapshot_dirs(p: &Pair) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(p.b_state.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.file_name().unwrap().len() == 64 && d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The base digest a delta file records (its second line).
fn delta_base(delta: &Path) -> String {
    let bytes = fs::read(delta).unwrap();
    String::from_utf8(bytes[30..94].to_vec()).unwrap()
}

/// Replaces the first occurrence of `from` in the file at `path` by `to`
/// (same length), in place.
fn patch(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(path).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} is not in {}", path.display()));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    fs::write(path, bytes).unwrap();
}

/// The applier refuses the pending transaction (`Corrupt`, with `says` in
/// the message), applies nothing of it and removes it; the next sync
/// exchanges manifests and the replica converges.
fn assert_refused_and_resent(p: &Pair, name: &str, says: &str) {
    let before = latest_dir(p);
    let e = p.assert_discarded_and_resent(|p| {
        assert_eq!(latest_dir(p), before);
        assert!(!p.b_cadir.join(format!("signed/{name}.pem")).exists());
    });
    assert!(e.to_string().contains(says), "{e}");
}

#[test]
fn a_small_change_is_stored_as_a_delta_and_its_snapshot_keeps_it_until_settled() {
    let p = pair();
    assert!(p.b_state.join("snapshots/latest/manifest.json").is_file());
    p.sign("d1.example.com");
    p.clean("node3.example.com");
    let s = p.sync();
    assert!(!s.stats.manifest_exchanged);
    let txn = pending(&p);
    let delta = txn.join("manifest.delta");
    assert!(delta.is_file());
    assert!(!txn.join("manifest.json").exists());
    // Four entries' worth, not the whole manifest.
    let whole = fs::metadata(p.b_state.join("staged.manifest.json"))
        .unwrap()
        .len();
    let size = fs::metadata(&delta).unwrap().len();
    assert!(size * 4 < whole, "delta {size} bytes, manifest {whole}");

    let a = p.apply();
    assert_eq!(a.staged.len(), 1);
    p.assert_converged(&[PASSIVE]);
    // The snapshot has its whole manifest, which is also the staged one,
    // and keeps the delta until it is settled.
    let snap = latest_dir(&p);
    let manifest = snap.join("manifest.json");
    let read = load_manifest(&manifest).unwrap().unwrap();
    assert_eq!(read.digest(), a.staged[0].digest);
    assert_eq!(
        fs::metadata(&manifest).unwrap().ino(),
        fs::metadata(p.b_state.join("staged.manifest.json"))
            .unwrap()
            .ino()
    );
    assert!(snap.join("manifest.delta").is_file());
    assert_eq!(
        fs::metadata(snap.join("manifest.delta")).unwrap().mode() & 0o777,
        0o600
    );

    // The next change builds on it as a delta, read by a new receiver from
    // the staged manifest.
    p.sign("d2.example.com");
    let s = p.sync();
    assert!(!s.stats.manifest_exchanged);
    assert!(pending(&p).join("manifest.delta").is_file());
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn a_new_receiver_builds_its_base_from_the_pending_deltas() {
    let p = pair();
    for n in 0..3 {
        p.sign(&format!("chain{n}.example.com"));
        let s = p.sync();
        // Each sync starts a receiver that reads the staged manifest and
        // the deltas pending since.
        assert!(!s.stats.manifest_exchanged, "sync {n}");
    }
    let txns = p.incoming();
    assert_eq!(txns.len(), 3);
    for t in &txns {
        assert!(p
            .b_state
            .join("incoming")
            .join(t)
            .join("manifest.delta")
            .is_file());
    }

    // The applier stages the first one while a receiver that listed all
    // three reads its base: it starts from the newly staged manifest.
    let state = StateDir::new(&p.b_state);
    let base = receiver_base(&state, "ca").unwrap();
    assert_eq!(base.pending, 3);
    let expected = base.digest.clone().unwrap();
    let first = p.b_state.join("incoming").join(
        txns.iter()
            .find(|t| {
                delta_base(&p.b_state.join("incoming").join(t).join("manifest.delta"))
                    == load_manifest(&p.b_state.join("staged.manifest.json"))
                        .unwrap()
                        .unwrap()
                        .digest()
            })
            .unwrap(),
    );
    let aside = p.dir.path().join("aside");
    fs::create_dir(&aside).unwrap();
    for t in &txns {
        let dir = p.b_state.join("incoming").join(t);
        if dir != first {
            fs::rename(&dir, aside.join(t)).unwrap();
        }
    }
    assert_eq!(p.apply().staged.len(), 1);
    for t in &txns {
        if aside.join(t).exists() {
            fs::rename(aside.join(t), p.b_state.join("incoming").join(t)).unwrap();
        }
    }
    assert_eq!(base.manifest(Kind::Ca).unwrap().digest(), expected);

    let a = p.apply();
    assert_eq!(a.staged.len(), 2);
    p.assert_converged(&[PASSIVE]);
    let s = p.sync();
    assert!(!s.stats.manifest_exchanged);
    assert!(p.incoming().is_empty(), "nothing changed");
}

/// Cuts the file at `path` in place to what `keep` says of its length.
fn cut_short(path: &Path, keep: impl FnOnce(u64) -> u64) {
    let len = fs::metadata(path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(keep(len))
        .unwrap();
}

#[test]
fn a_damaged_delta_is_refused_and_the_change_resent() {
    let p = pair();
    // The certificate signed, one cleaned too (or none), what is done to the
    // stored delta, and what the refusal says.
    type Damage = fn(&Path);
    let cases: [(&str, Option<&str>, Damage, &str); 5] = [
        // A changed byte in an upserted entry's path: the manifest it makes
        // is another one.
        (
            "flip.example.com",
            None,
            |d| patch(d, "flip.example.com", "flip.example.cop"),
            "its metadata says",
        ),
        (
            "cut.example.com",
            None,
            |d| cut_short(d, |n| n - 7),
            "truncated",
        ),
        // A path removed that the base does not have.
        (
            "rm.example.com",
            Some("node7.example.com"),
            |d| patch(d, "node7.example.com", "node7.example.con"),
            "which its base does not have",
        ),
        // Another digest recorded than the transaction's metadata's.
        (
            "other.example.com",
            None,
            |d| {
                let mut bytes = fs::read(d).unwrap();
                bytes[95] = if bytes[95] == b'0' { b'1' } else { b'0' };
                fs::write(d, bytes).unwrap();
            },
            "its metadata says",
        ),
        // An upserted entry that breaks the replication rules.
        (
            "rule.example.com",
            None,
            |d| {
                patch(
                    d,
                    "ca/signed/rule.example.com",
                    "ca/signed/../../etc/passwd",
                )
            },
            "manifest delta",
        ),
    ];
    for (name, cleaned, damage, says) in cases {
        p.sign(name);
        if let Some(c) = cleaned {
            p.clean(c);
        }
        p.sync();
        damage(&pending(&p).join("manifest.delta"));
        assert_refused_and_resent(&p, name, says);
    }

    // An upserted file whose SHA-256 is a path out of the content store
    // (the rules are checked on another thread while contents are added):
    // refused before anything is read or written there.
    p.sign("sha.example.com");
    p.sync();
    let pem = fs::read(p.a_cadir.join("signed/sha.example.com.pem")).unwrap();
    let sha = hex::encode(Sha256::digest(&pem));
    let outside = format!("{}tmp/pwn", "../".repeat(19));
    patch(&pending(&p).join("manifest.delta"), &sha, &outside);
    assert_refused_and_resent(&p, "sha.example.com", "malformed SHA-256");
    assert!(!Path::new("/tmp/pwn").exists());

    // A delta with another name elsewhere (a file of the system, as far as
    // the applier can tell) is not taken over, and keeps its mode.
    p.sign("link.example.com");
    p.sync();
    let delta = pending(&p).join("manifest.delta");
    let elsewhere = p.dir.path().join("elsewhere");
    fs::hard_link(&delta, &elsewhere).unwrap();
    let mode = fs::metadata(&elsewhere).unwrap().mode();
    assert_refused_and_resent(&p, "link.example.com", "not trusted");
    assert_eq!(fs::metadata(&elsewhere).unwrap().mode(), mode);
}

/// Makes the snapshot in `dir` look built during another boot: its
/// manifest file may then not have reached the disk.
fn built_in_another_boot(dir: &Path) {
    let meta = dir.join("meta.json");
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert!(json["boot_id"].is_string(), "{json}");
    json["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    fs::write(&meta, serde_json::to_vec(&json).unwrap()).unwrap();
}

/// Cuts the manifest file of the snapshot in `dir` short in place (both
/// its names, as writeback lost after a crash would).
fn lose_manifest(dir: &Path) {
    cut_short(&dir.join("manifest.json"), |n| n / 2);
}

#[test]
fn a_snapshot_manifest_lost_in_a_crash_is_rebuilt_from_its_delta() {
    let p = pair();

    // After a restart, an unsettled latest snapshot whose manifest reached
    // the disk is read once, which settles it (the file is kept).
    p.sign("kept.example.com");
    p.sync();
    p.apply();
    let snap = latest_dir(&p);
    assert!(snap.join("manifest.delta").is_file());
    let inode = fs::metadata(snap.join("manifest.json")).unwrap().ino();
    built_in_another_boot(&snap);
    p.apply();
    assert!(!snap.join("manifest.delta").exists());
    assert_eq!(
        fs::metadata(snap.join("manifest.json")).unwrap().ino(),
        inode
    );

    // When it did not reach the disk, it is rebuilt.
    p.sign("lost.example.com");
    p.sync();
    let a = p.apply();
    let digest = a.staged[0].digest.clone();
    let snap = latest_dir(&p);
    assert!(snap.join("manifest.delta").is_file());

    // After a restart, with nothing new to apply, the applier does not take
    // the unsettled manifest on trust: it reads it, rebuilds it from the
    // delta and the snapshot before, and publishes it for the receiver.
    built_in_another_boot(&snap);
    lose_manifest(&snap);
    assert!(load_manifest(&snap.join("manifest.json")).is_err());
    let a = p.apply();
    assert!(a.staged.is_empty());
    assert_eq!(a.applied_digest.as_deref(), Some(digest.as_str()));
    let manifest = load_manifest(&snap.join("manifest.json")).unwrap().unwrap();
    assert_eq!(manifest.digest(), digest);
    assert!(!snap.join("manifest.delta").exists(), "settled");
    let staged = load_manifest(&p.b_state.join("staged.manifest.json"))
        .unwrap()
        .unwrap();
    assert_eq!(staged.digest(), digest);
    p.sign("after.example.com");
    let s = p.sync();
    assert!(!s.stats.manifest_exchanged);
    p.apply();
    p.assert_converged(&[PASSIVE]);

    // During this boot an applier without the kept snapshot reads it too,
    // and rebuilds what it cannot read.
    let snap = latest_dir(&p);
    assert!(snap.join("manifest.delta").is_file());
    lose_manifest(&snap);
    p.sign("again.example.com");
    let (s, _) = p.sync_with(p.sender(), p.receiver());
    let e = s.unwrap_err();
    assert!(e.to_string().contains("staged.manifest.json"), "{e}");
    p.applier().verify(true).run().unwrap();
    assert!(load_manifest(&snap.join("manifest.json"))
        .unwrap()
        .is_some());
    let s = p.sync();
    assert!(!s.stats.manifest_exchanged);
    p.apply();
    p.assert_converged(&[PASSIVE]);
}

#[test]
fn pruning_settles_the_snapshots_built_on_those_it_removes() {
    let p = pair();
    let cache = LatestCache::new();
    let applier = || p.applier().keep_snapshots(3).latest_cache(cache.clone());
    // Every snapshot left either is settled (no delta) or has the one its
    // delta builds on, and its manifest can be read.
    let check = |p: &Pair| {
        let dirs = snapshot_dirs(p);
        assert!(dirs.len() <= 3, "{dirs:?}");
        for d in &dirs {
            let delta = d.join("manifest.delta");
            if delta.exists() {
                let base = p.b_state.join("snapshots").join(delta_base(&delta));
                assert!(base.is_dir(), "{} lost its base", d.display());
            }
            assert!(load_manifest(&d.join("manifest.json")).unwrap().is_some());
        }
    };
    let mut built = Vec::new();
    for n in 0..5 {
        p.sign(&format!("prune{n}.example.com"));
        p.sync();
        applier().run().unwrap();
        check(&p);
        built.push(latest_dir(&p));
    }
    p.assert_converged(&[PASSIVE]);
    // The oldest left was settled when its base went.
    let left = snapshot_dirs(&p);
    assert_eq!(left.len(), 3);
    let oldest = built.iter().find(|d| left.contains(d)).unwrap();
    assert!(!oldest.join("manifest.delta").exists());

    // A snapshot from another boot whose manifest did not reach the disk,
    // and is not the latest (which the applier keeps in memory, so nothing
    // reads the other one first): rebuilt when its base is pruned.
    let next_to_go_base = built.iter().position(|d| d == oldest).unwrap() + 1;
    let middle = built[next_to_go_base].clone();
    assert!(middle.join("manifest.delta").is_file());
    built_in_another_boot(&middle);
    lose_manifest(&middle);
    p.sign("prune-last.example.com");
    p.sync();
    let a = applier().run().unwrap();
    assert_eq!(a.pruned.len(), 1);
    assert!(!oldest.exists());
    assert!(!middle.join("manifest.delta").exists());
    check(&p);
    p.assert_converged(&[PASSIVE]);
}

/// The files of the CA directory `dir`, counted through its tree.
fn files_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => files_in(&e.path()),
            false => 1,
        })
        .sum()
}

#[test]
fn a_delta_applied_with_the_entries_of_the_snapshot_before_moved_guards_and_deletes_as_before() {
    // The applier keeps the latest snapshot; a single delta's manifest takes
    // its entries, and the live files are applied with what is left of it:
    // its entries at the changed paths.
    let p = pair();
    let cache = LatestCache::new();
    let applier = || p.applier().latest_cache(cache.clone());
    p.sign("first.example.com");
    p.sync();
    applier().run().unwrap();
    // A certificate only the replica has (it signed it).
    fs::copy(
        p.b_cadir.join("signed/node1.example.com.pem"),
        p.b_cadir.join("signed/local.example.com.pem"),
    )
    .unwrap();

    // The deletion guard's base is the live CA's files as last applied:
    // the active's before the change. Counted from the target and the
    // entries left of the snapshot before in the first round, then from the
    // count of the snapshot before and the paths each round changed.
    for round in 0..3 {
        let files = files_in(&p.a_cadir);
        p.clean(&format!("node{}.example.com", 3 + round));
        p.sign(&format!("d{round}.example.com"));
        p.sync();
        assert!(pending(&p).join("manifest.delta").is_file());
        let e = applier()
            .max_delete_share(0.0)
            .delete_allowance(0)
            .run()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("would delete 1 of the {files} files")),
            "round {round}: {e}"
        );
        assert!(p
            .b_cadir
            .join(format!("signed/node{}.example.com.pem", 3 + round))
            .exists());
        applier().run().unwrap();
    }

    // A certificate cleaned on the active goes (the snapshot before had
    // it: not the replica's own); the replica's own stays. Only the changed
    // paths were compared.
    p.clean("node9.example.com");
    p.sign("last.example.com");
    p.sync();
    assert!(pending(&p).join("manifest.delta").is_file());
    let a = applier().run().unwrap();
    assert!(!a.verified);
    assert_eq!(a.live.deleted, ["ca/signed/node9.example.com.pem"]);
    assert!(p.b_cadir.join("signed/local.example.com.pem").exists());
    assert!(p.b_cadir.join("signed/last.example.com.pem").exists());
    p.assert_converged(&[PASSIVE, "local.example.com"]);
}
