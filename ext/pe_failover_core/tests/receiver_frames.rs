//! A hostile or broken sender, speaking raw frames to a receiver: every
//! violation is answered with a clear ERROR and nothing is stored.

#[path = "util/pair.rs"]
mod pair;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;

use pair::{Pair, PASSIVE};
use pe_failover_core::protocol::{
    encode_frame, FrameType, Kind, ReceiveOutcome, ReceiveReport, Receiver, PROTOCOL_VERSION,
};
use pe_failover_core::replset::CaPaths;
use pe_failover_core::snapshot::{Entry, Manifest};
use pe_failover_core::{ErrorKind, Result};
use serde_json::{json, Value};

struct Raw {
    s: UnixStream,
}

impl Raw {
    fn send(&mut self, ty: FrameType, payload: &[u8]) {
        // The receiver may hang up early; that is what some tests expect.
        let _ = self.s.write_all(&encode_frame(ty, payload));
    }

    fn json(&mut self, ty: FrameType, v: Value) {
        self.send(ty, &serde_json::to_vec(&v).unwrap());
    }

    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.s.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some((header[0], payload))
    }

    fn hello(&mut self, version: u64) {
        self.json(
            FrameType::Hello,
            json!({"protocol": "pe_failover", "version": version, "kind": "ca",
                   "sender": "evil.example.com", "txn": "t1"}),
        );
    }

    fn welcome(&mut self) -> Value {
        let (ty, payload) = self.recv().expect("WELCOME");
        assert_eq!(
            ty,
            FrameType::Welcome as u8,
            "{}",
            String::from_utf8_lossy(&payload)
        );
        serde_json::from_slice(&payload).unwrap()
    }

    /// The ERROR the receiver answered with: (kind, message).
    fn error(&mut self) -> (String, String) {
        let (ty, payload) = self.recv().expect("an ERROR frame");
        assert_eq!(
            ty,
            FrameType::Error as u8,
            "{}",
            String::from_utf8_lossy(&payload)
        );
        let v: Value = serde_json::from_slice(&payload).unwrap();
        (
            v["kind"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
        )
    }
}

fn session(p: &Pair, script: impl FnOnce(&mut Raw)) -> Result<ReceiveReport> {
    session_with(p.receiver(), script)
}

fn session_with(receiver: Receiver, script: impl FnOnce(&mut Raw)) -> Result<ReceiveReport> {
    let (a, b) = UnixStream::pair().unwrap();
    let handle = thread::spawn(move || receiver.receive(b));
    let mut raw = Raw { s: a };
    script(&mut raw);
    drop(raw);
    handle.join().unwrap()
}

fn file(path: &str) -> Value {
    json!({"path": path, "kind": "file", "mode": 420, "uid": 0, "gid": 0, "size": 1,
           "mtime_ns": 0, "sha256": "a".repeat(64)})
}

fn dir(path: &str) -> Value {
    json!({"path": path, "kind": "dir", "mode": 493, "uid": 0, "gid": 0, "size": 0, "mtime_ns": 0})
}

fn delta(raw: &mut Raw, base: Value, digest: &str, upserts: Vec<Value>, removes: Vec<&str>) {
    raw.json(
        FrameType::DeltaHead,
        json!({"base": base, "digest": digest, "upserts": upserts.len(), "removes": removes.len()}),
    );
    // In batches, as the sender sends them: a frame is bounded.
    for batch in upserts.chunks(5_000) {
        raw.json(FrameType::Entries, Value::Array(batch.to_vec()));
    }
    if !removes.is_empty() {
        raw.json(FrameType::Removes, json!(removes));
    }
}

#[test]
fn malicious_paths_are_refused_with_a_clear_error_and_nothing_is_written() {
    let mut link = file("ca/link");
    link["kind"] = json!("symlink");
    link["target"] = json!("signed");
    link.as_object_mut().unwrap().remove("sha256");
    let cases: Vec<(&str, Vec<Value>, &str, &str)> = vec![
        (
            "absolute",
            vec![dir("ca"), file("/etc/passwd")],
            "unsafe_path",
            "it is absolute",
        ),
        (
            "dot-dot",
            vec![dir("ca"), file("ca/../../etc/cron.d/x")],
            "unsafe_path",
            "'..' component",
        ),
        (
            "NUL",
            vec![dir("ca"), file("ca/a\u{0}b")],
            "unsafe_path",
            "NUL byte",
        ),
        (
            "outside",
            vec![
                dir("ssl"),
                dir("ssl/private_keys"),
                file("ssl/private_keys/b.pem"),
            ],
            "unsafe_path",
            "only ca/...",
        ),
        (
            "elsewhere",
            vec![file("etc_passwd")],
            "unsafe_path",
            "only ca/...",
        ),
        (
            "duplicate",
            vec![dir("ca"), file("ca/x"), file("ca/x")],
            "invalid_input",
            "twice",
        ),
        (
            "below a symlink",
            vec![dir("ca"), link.clone(), file("ca/link/x")],
            "unsafe_path",
            "below the symbolic link",
        ),
        (
            "temporary name",
            vec![dir("ca"), file("ca/.pe_failover-tmp-x")],
            "unsafe_path",
            "reserved",
        ),
    ];
    for (name, upserts, kind, needle) in cases {
        let p = Pair::new(0);
        let mut answer = None;
        let result = session(&p, |raw| {
            raw.hello(PROTOCOL_VERSION.into());
            assert_eq!(raw.welcome()["base"], Value::Null);
            delta(raw, Value::Null, &"b".repeat(64), upserts, vec![]);
            answer = Some(raw.error());
        });
        let (k, message) = answer.unwrap();
        assert_eq!(k, kind, "{name}: {message}");
        assert!(message.contains(needle), "{name}: {message}");
        let err = result.unwrap_err();
        assert_eq!(err.kind().as_str(), kind, "{name}");
        assert!(
            err.to_string().contains("evil.example.com"),
            "{name}: {err}"
        );
        assert!(p.incoming().is_empty(), "{name}: {:?}", p.incoming());
    }
}

#[test]
fn oversize_frames_are_refused_before_they_are_read() {
    let p = Pair::new(0);
    let mut answer = None;
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        raw.welcome();
        // Announce 2 MiB of entries and send nothing: the receiver must not wait.
        let _ = raw.s.write_all(&[FrameType::Entries as u8, 0, 0x20, 0, 0]);
        answer = Some(raw.error());
    });
    let (kind, message) = answer.unwrap();
    assert_eq!(kind, "protocol");
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);

    let p = Pair::new(0);
    let mut answer = None;
    let _ = session(&p, |raw| {
        raw.send(FrameType::Hello, &vec![b' '; 70_000]);
        answer = Some(raw.error());
    });
    assert!(answer.unwrap().1.contains("limit of 65536 bytes"));
    assert!(p.incoming().is_empty());
}

#[test]
fn an_unknown_protocol_version_or_garbage_is_refused() {
    let p = Pair::new(0);
    // 1: a sender of the version whose manifest digests were SHA-256s,
    // refused before it sends a delta the receiver would check otherwise.
    for version in [99, 1] {
        let mut answer = None;
        let result = session(&p, |raw| {
            raw.hello(version);
            answer = Some(raw.error());
        });
        let (kind, message) = answer.unwrap();
        assert_eq!(kind, "protocol");
        let unsupported = format!("unsupported protocol version {version}:");
        assert!(message.contains(&unsupported), "{message}");
        assert!(message.contains("speaks version 2"), "{message}");
        assert!(
            message.contains("install the same pe_failover version"),
            "{message}"
        );
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
    }

    let mut answer = None;
    let _ = session(&p, |raw| {
        let _ = raw.s.write_all(b"Welcome to Debian!\n");
        answer = Some(raw.error());
    });
    assert!(answer.unwrap().1.contains("unknown frame type"));

    let mut answer = None;
    let _ = session(&p, |raw| {
        raw.json(
            FrameType::Hello,
            json!({"protocol": "pe_failover", "version": PROTOCOL_VERSION, "kind": "ca",
                   "sender": "a", "txn": "../../etc"}),
        );
        answer = Some(raw.error());
    });
    assert!(answer.unwrap().1.contains("invalid transaction id"));
    assert!(p.incoming().is_empty());
}

#[test]
fn a_delta_that_does_not_produce_its_digest_is_refused() {
    // The receiver hashes the manifest a delta makes while it writes it and
    // the contents arrive, and compares at COMMIT: nothing is stored, and
    // the partial transaction goes.
    let p = Pair::new(2);
    let manifest = p.set().scan().unwrap().manifest;
    let entries: Vec<Value> = manifest
        .entries()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let wrong = "0".repeat(64);
    let mut answer = None;
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        raw.welcome();
        delta(raw, Value::Null, &wrong, entries, vec![]);
        let (ty, want) = raw.recv().unwrap();
        assert_eq!(ty, FrameType::Want as u8);
        // Every content once, in path order, as a sender sends them.
        let paths = CaPaths {
            cadir: p.a_cadir.clone(),
            ssldir: p.a_ssl.clone(),
        };
        let mut seen = std::collections::HashSet::new();
        let objects: Vec<&Entry> = manifest
            .entries()
            .iter()
            .filter(|e| e.sha256.as_ref().is_some_and(|s| seen.insert(s.clone())))
            .collect();
        assert_eq!(want.len(), objects.len().div_ceil(8));
        for (i, e) in objects.into_iter().enumerate() {
            if want[i / 8] & (1 << (i % 8)) == 0 {
                continue;
            }
            let bytes = std::fs::read(paths.resolve(&e.path).unwrap()).unwrap();
            let mut payload = hex::decode(e.sha256.as_deref().unwrap()).unwrap();
            payload.extend_from_slice(&e.size.to_be_bytes());
            raw.send(FrameType::Object, &payload);
            if !bytes.is_empty() {
                raw.send(FrameType::Data, &bytes);
            }
        }
        raw.json(FrameType::Commit, json!({"txn": "t1", "digest": wrong}));
        answer = Some(raw.error());
    });
    let (kind, message) = answer.unwrap();
    assert_eq!(kind, "corrupt", "{message}");
    assert!(message.contains("does not produce the digest"), "{message}");
    assert!(message.contains("nothing was stored"), "{message}");
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Corrupt);
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());

    // Nor is a COMMIT of another digest than the one announced.
    let p = Pair::new(2);
    p.sync_and_apply();
    let target = without_key(&manifest);
    let mut answer = None;
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        let base = raw.welcome()["base"].clone();
        delta(raw, base, &target, vec![], vec!["ca/ca_key.pem"]);
        let (ty, _) = raw.recv().unwrap();
        assert_eq!(ty, FrameType::Want as u8);
        raw.json(FrameType::Commit, json!({"txn": "t1", "digest": wrong}));
        answer = Some(raw.error());
    });
    let (kind, message) = answer.unwrap();
    assert_eq!(kind, "protocol");
    assert!(
        message.contains("committed transaction t1 with digest"),
        "{message}"
    );
    assert!(result.is_err());
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());
}

/// The digest of `manifest` without the CA's key.
fn without_key(manifest: &Manifest) -> String {
    let entries: Vec<_> = manifest
        .entries()
        .iter()
        .filter(|e| e.path != "ca/ca_key.pem")
        .cloned()
        .collect();
    Manifest::from_entries(entries).unwrap().digest()
}

/// Reads the receiver's WANT, then answers as a sender whose source
/// changed meanwhile.
fn give_up_after_want(raw: &mut Raw) {
    let (ty, _) = raw.recv().unwrap();
    assert_eq!(ty, FrameType::Want as u8);
    raw.json(
        FrameType::Error,
        json!({"kind": "io", "message": "source changed"}),
    );
}

#[test]
fn a_sender_that_aborts_mid_transfer_leaves_nothing() {
    let p = Pair::new(2);
    let manifest = p.set().scan().unwrap().manifest;
    let entries: Vec<Value> = manifest
        .entries()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        raw.welcome();
        delta(raw, Value::Null, &manifest.digest(), entries, vec![]);
        give_up_after_want(raw);
    });
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("source changed"), "{err}");
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());
}

#[test]
fn a_sender_that_aborts_while_the_manifest_is_being_written_leaves_nothing() {
    // 60,000 entries more (a manifest of about 9 MB): the receiver is still
    // writing and flushing it, on a thread of its own, when the sender
    // gives up right after WANT. The partial transaction must go all the
    // same, whatever that thread had written by then.
    let p = Pair::new(2);
    let mut upserts: Vec<Value> = p
        .set()
        .scan()
        .unwrap()
        .manifest
        .entries()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    upserts.extend((0..60_000).map(|i| file(&format!("ca/signed/extra{i:06}.example.com.pem"))));
    let entries: Vec<Entry> = upserts
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let digest = Manifest::from_entries(entries).unwrap().digest();
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        raw.welcome();
        delta(raw, Value::Null, &digest, upserts, vec![]);
        give_up_after_want(raw);
    });
    let err = result.unwrap_err();
    assert!(err.to_string().contains("source changed"), "{err}");
    assert!(p.incoming().is_empty(), "{:?}", p.incoming());
}

#[test]
fn an_incomplete_snapshot_is_stored_but_never_applied_without_force() {
    let p = Pair::new(2);
    p.sync_and_apply();
    let manifest = p.set().scan().unwrap().manifest;
    let target = without_key(&manifest);
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        let base = raw.welcome()["base"].clone();
        assert_eq!(base, json!(manifest.digest()));
        delta(raw, base, &target, vec![], vec!["ca/ca_key.pem"]);
        let (ty, want) = raw.recv().unwrap();
        assert_eq!((ty, want.len()), (FrameType::Want as u8, 0));
        raw.json(FrameType::Commit, json!({"txn": "t1", "digest": target}));
        let (ty, _) = raw.recv().unwrap();
        assert_eq!(ty, FrameType::Ack as u8);
    });
    result.unwrap();
    let err = p.applier().run().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("ca/ca_key.pem missing"), "{err}");
    assert!(err.to_string().contains("force"), "{err}");
    assert!(p.b_cadir.join("ca_key.pem").exists());
    let report = p.applier().force(true).run().unwrap();
    assert_eq!(report.live.deleted, ["ca/ca_key.pem"]);
    assert_eq!(report.kept, [PASSIVE]);
}

#[test]
fn an_extension_of_contents_the_replica_does_not_hold_is_refused() {
    let p = Pair::new(2);
    p.sync_and_apply();
    let before = p.set().scan().unwrap().manifest;
    p.sign("grown.example.com");
    let after = p.set().scan().unwrap().manifest;
    let cs = pe_failover_core::diff::diff(&before, &after);
    let upserts: Vec<Value> = cs
        .added
        .iter()
        .chain(cs.changed.iter().map(|c| &c.new))
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let mut sorted = upserts.clone();
    sorted.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    // The first object in path order is inventory.txt: claim it extends
    // contents the replica never had.
    let first = sorted.iter().find(|e| e["kind"] == "file").unwrap().clone();
    assert_eq!(first["path"], "ca/inventory.txt");
    let sha = hex::decode(first["sha256"].as_str().unwrap()).unwrap();
    let size = first["size"].as_u64().unwrap();
    let mut answer = None;
    let result = session(&p, |raw| {
        raw.hello(PROTOCOL_VERSION.into());
        let base = raw.welcome()["base"].clone();
        delta(raw, base, &after.digest(), sorted, vec![]);
        let (ty, _) = raw.recv().unwrap();
        assert_eq!(ty, FrameType::Want as u8);
        let mut header = sha.clone();
        header.extend_from_slice(&size.to_be_bytes());
        header.extend_from_slice(&[0x11; 32]);
        header.extend_from_slice(&1u64.to_be_bytes());
        header.extend_from_slice(&[0x22; 32]);
        raw.send(FrameType::Extend, &header);
        answer = Some(raw.error());
    });
    let (kind, message) = answer.unwrap();
    assert_eq!(kind, "protocol");
    assert!(message.contains("does not hold there"), "{message}");
    assert!(result.is_err());
    assert!(p.incoming().is_empty());
}

#[test]
fn a_receiver_started_and_closed_unused_records_no_failure_but_a_broken_session_does() {
    let p = Pair::new(2);
    p.sync_and_apply();
    let status = p.b_state.join("incoming").join("receiver.status.json");
    let recorded = || std::fs::read_to_string(&status).unwrap();
    let before = recorded();

    // The sender started it during its scan (or for its watcher's next
    // round), naming the kind of session, then had nothing to say: no
    // failure, nothing recorded (and the runner logs nothing).
    let r = session_with(p.receiver().expect_kind(Some(Kind::Ca)), |_| {}).unwrap();
    assert_eq!(r.outcome, ReceiveOutcome::Unused);
    assert_eq!(recorded(), before);

    // Silence from a connection that named no kind is recorded.
    let e = session(&p, |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    let after: Value = serde_json::from_str(&recorded()).unwrap();
    assert_eq!(after["last_error"]["kind"], "network", "{after}");
    let after_silence = recorded();

    // A session that began and broke off is recorded.
    let e = session(&p, |raw| raw.hello(PROTOCOL_VERSION.into())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert_ne!(recorded(), after_silence);
    let after: Value = serde_json::from_str(&recorded()).unwrap();
    assert_eq!(after["last_error"]["kind"], "network", "{after}");
}
