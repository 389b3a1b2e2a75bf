//! The SSH transport against a real OpenSSH sshd on 127.0.0.1 (see
//! `util/sshd.rs`): forced commands, pinned host keys, key authentication,
//! and every way a connection can fail.

mod util;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::ssh::{fetch_host_key, pin_host_key, Channel, HostKey, Session, SshTarget};
use pe_failover_core::{Error, ErrorKind};
use sha2::{Digest, Sha256};

use util::sshd::{is_alive, keygen, ClientKey, Sshd};

fn err<T: std::fmt::Debug>(r: pe_failover_core::Result<T>) -> Error {
    r.expect_err("expected an error")
}

fn connect(target: &SshTarget) -> Session {
    target
        .connect()
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// Deterministic, incompressible-looking bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn run(session: &Session, command: &str, input: &[u8]) -> (Vec<u8>, i32, String) {
    let mut ch = session.exec(command).unwrap();
    ch.write_all(input).unwrap();
    ch.send_eof().unwrap();
    let mut out = Vec::new();
    ch.read_to_end(&mut out).unwrap();
    let status = ch.finish().unwrap();
    (out, status, ch.stderr())
}

fn assert_never_shows_private_key(message: &str, key: &ClientKey) {
    let private = fs::read_to_string(&key.private).unwrap();
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    for line in private.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !message.contains(line),
            "private key material in: {message}"
        );
    }
}

#[test]
fn cat_round_trips_five_megabytes_both_ways() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let session = connect(&sshd.target(&key));
    assert_eq!(session.host_key().key_type(), "ssh-ed25519");
    // OpenSSL's AES-GCM both ways, not libssh2's own (slower) ChaCha20.
    let (cs, sc) = session.ciphers();
    assert!(cs.contains("-gcm@openssh.com"), "{cs}");
    assert!(sc.contains("-gcm@openssh.com"), "{sc}");

    let data = payload(5 * 1024 * 1024);
    // Written in one go before reading anything: the channel must keep the
    // echo flowing while it waits, or this would deadlock.
    let (out, status, stderr) = run(&session, "ignored by the forced command", &data);
    assert_eq!(status, 0, "stderr: {stderr}");
    assert_eq!(out.len(), data.len());
    assert_eq!(Sha256::digest(&out), Sha256::digest(&data));

    // The session carries more than one command.
    let (out, status, _) = run(&session, "again", b"second");
    assert_eq!((out.as_slice(), status), (&b"second"[..], 0));
}

#[test]
fn forced_command_runs_instead_of_the_requested_one() {
    let sshd = Sshd::start();
    let victim = sshd.dir().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "x").unwrap();
    let key = sshd.client("sender", r#"printf 'forced:%s' "$SSH_ORIGINAL_COMMAND""#);
    let session = connect(&sshd.target(&key));

    let asked = format!("rm -rf {}", victim.display());
    let (out, status, _) = run(&session, &asked, b"");
    assert_eq!(String::from_utf8(out).unwrap(), format!("forced:{asked}"));
    assert_eq!(status, 0);
    assert!(victim.join("keep").exists(), "the requested command ran");
}

#[test]
fn sessions_get_an_empty_home_so_no_start_up_file_of_the_login_user_runs() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", r#"printf '%s' "$HOME""#);
    let session = connect(&sshd.target(&key));
    let (out, status, _) = run(&session, "ignored", b"");
    assert_eq!(status, 0);
    let home = sshd.dir().join("home");
    assert_eq!(String::from_utf8(out).unwrap(), home.display().to_string());
    assert_eq!(fs::read_dir(&home).unwrap().count(), 0);
}

#[test]
fn exit_status_and_stderr_are_propagated() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "echo out; echo 'receiver: fenced' >&2; exit 3");
    let session = connect(&sshd.target(&key));
    let (out, status, stderr) = run(&session, "x", b"");
    assert_eq!(out, b"out\n");
    assert_eq!(status, 3);
    assert_eq!(stderr, "receiver: fenced\n");

    // finish() without reading or closing first: stdout is discarded.
    let mut ch = session.exec("x").unwrap();
    assert_eq!(ch.finish().unwrap(), 3);
    assert_eq!(ch.finish().unwrap(), 3, "finish is idempotent");
    assert!(ch.stderr().contains("fenced"));
}

#[test]
fn command_that_exits_without_reading_fails_the_write_promptly() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "echo 'receiver: fenced, refusing' >&2; exit 4");
    // A long I/O timeout: the write must fail because the command is gone,
    // not because it waited that long.
    let session = connect(&sshd.target(&key).io_timeout(Duration::from_secs(60)));
    let mut ch = session.exec("x").unwrap();
    let started = Instant::now();
    let e = Error::from_io_error(ch.write_all(&payload(20 * 1024 * 1024)).unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(
        e.to_string()
            .contains("exited before reading all its input"),
        "{e}"
    );
    assert!(e.to_string().contains("fenced, refusing"), "{e}");
    assert_eq!(ch.finish().unwrap(), 4);
}

#[test]
fn command_killed_by_a_signal_is_an_error_with_its_stderr() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "echo 'dying now' >&2; kill -KILL $$");
    let session = connect(&sshd.target(&key));
    let mut ch = session.exec("x").unwrap();
    let e = err(ch.finish());
    assert_eq!(e.kind(), ErrorKind::Io);
    let text = e.to_string();
    assert!(text.contains("killed by signal KILL"), "{text}");
    assert!(text.contains("dying now"), "{text}");
    assert_eq!(e.host(), Some("127.0.0.1"));
}

#[test]
fn huge_stderr_is_kept_bounded() {
    let sshd = Sshd::start();
    let key = sshd.client(
        "sender",
        "echo first >&2; head -c 3000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last >&2; echo done",
    );
    let session = connect(&sshd.target(&key));
    let (out, status, stderr) = run(&session, "x", b"");
    assert_eq!((out.as_slice(), status), (&b"done\n"[..], 0));
    assert!(stderr.starts_with("first\n"), "{}", &stderr[..40]);
    assert!(stderr.ends_with("xxx\nlast\n"));
    assert!(stderr.len() <= 70 * 1024, "{} bytes kept", stderr.len());
    assert!(stderr.contains("bytes of stderr not kept"));
}

#[test]
fn unknown_host_key_is_refused_with_its_fingerprint() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let fingerprint = sshd.host_key_fingerprint();
    let empty = sshd.dir().join("empty_known_hosts");
    fs::write(&empty, "# nothing pinned yet\n").unwrap();

    for known_hosts in [empty.clone(), sshd.dir().join("no_such_file")] {
        let e = err(sshd.target(&key).known_hosts(&known_hosts).connect());
        assert_eq!(e.kind(), ErrorKind::Verification, "{e}");
        assert_eq!(e.host(), Some("127.0.0.1"));
        assert_eq!(e.path(), Some(known_hosts.as_path()));
        let text = e.to_string();
        assert!(text.contains(&fingerprint), "{text}");
        assert!(text.contains("ssh-ed25519"), "{text}");
        assert!(text.contains(&known_hosts.display().to_string()), "{text}");
        let keyscan = format!("ssh-keyscan -p {} -t ed25519 127.0.0.1", sshd.port());
        assert!(text.contains(&keyscan), "{text}");
        assert!(text.contains("passive_host_key"), "{text}");
    }
    // Nothing was trusted on the way.
    assert_eq!(
        fs::read_to_string(&empty).unwrap(),
        "# nothing pinned yet\n"
    );
    assert!(!sshd.dir().join("no_such_file").exists());
}

#[test]
fn changed_host_key_is_refused() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let other = sshd.dir().join("other_host_key");
    keygen(&other, "someone else");
    let other_key =
        HostKey::parse(&fs::read_to_string(other.with_extension("pub")).unwrap()).unwrap();
    let known_hosts = sshd.dir().join("stale_known_hosts");
    fs::write(
        &known_hosts,
        other_key.known_hosts_line("127.0.0.1", sshd.port()) + "\n",
    )
    .unwrap();

    let e = err(sshd.target(&key).known_hosts(&known_hosts).connect());
    assert_eq!(e.kind(), ErrorKind::Verification);
    let text = e.to_string();
    assert!(text.contains("HOST KEY CHANGED"), "{text}");
    assert!(text.contains(&sshd.host_key_fingerprint()), "{text}");
    assert!(text.contains(&other_key.fingerprint()), "{text}");
    assert!(
        text.contains(&format!("ssh-keygen -R '[127.0.0.1]:{}'", sshd.port())),
        "{text}"
    );
}

#[test]
fn revoked_host_key_is_refused() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let known_hosts = sshd.dir().join("revoking_known_hosts");
    let pinned = fs::read_to_string(sshd.known_hosts()).unwrap();
    fs::write(
        &known_hosts,
        format!("{pinned}@revoked * {}\n", sshd.host_key_line()),
    )
    .unwrap();
    let e = err(sshd.target(&key).known_hosts(&known_hosts).connect());
    assert_eq!(e.kind(), ErrorKind::Verification);
    assert!(e.to_string().contains("@revoked"), "{e}");
}

#[test]
fn hashed_known_hosts_entry_is_accepted() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let hashed = sshd.dir().join("hashed_known_hosts");
    fs::copy(sshd.known_hosts(), &hashed).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = fs::read_to_string(&hashed).unwrap();
    assert!(text.starts_with("|1|"), "not hashed: {text}");
    assert!(!text.contains("127.0.0.1"));

    let session = connect(&sshd.target(&key).known_hosts(&hashed));
    assert_eq!(run(&session, "x", b"hi").0, b"hi");
}

#[test]
fn bracketed_and_listed_host_names_are_accepted_and_port_22_names_are_not() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let host_key = sshd.host_key_line();

    let listed = sshd.dir().join("listed_known_hosts");
    fs::write(
        &listed,
        format!("b.example.com,[127.0.0.1]:{} {host_key}\n", sshd.port()),
    )
    .unwrap();
    connect(&sshd.target(&key).known_hosts(&listed));

    // A bare name pins port 22 only, as in OpenSSH.
    let bare = sshd.dir().join("bare_known_hosts");
    fs::write(&bare, format!("127.0.0.1 {host_key}\n")).unwrap();
    let e = err(sshd.target(&key).known_hosts(&bare).connect());
    assert_eq!(e.kind(), ErrorKind::Verification);
}

#[test]
fn wrong_client_key_is_unauthorized() {
    let sshd = Sshd::start();
    sshd.client("sender", "cat");
    let stranger = sshd.client_key("stranger");
    let e = err(sshd.target(&stranger).connect());
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let text = e.to_string();
    let who = format!("{}@127.0.0.1:{}", sshd.user(), sshd.port());
    assert!(text.contains(&who), "{text}");
    assert!(
        text.contains(&stranger.private.display().to_string()),
        "{text}"
    );
    assert!(text.contains("authorized_keys"), "{text}");
    assert_never_shows_private_key(&text, &stranger);
    assert_never_shows_private_key(&format!("{e:?}"), &stranger);
}

#[test]
fn from_restriction_is_honoured() {
    let sshd = Sshd::start();
    let here = sshd.client_key("here");
    sshd.authorize_with(&here, "echo allowed", Some("127.0.0.1"));
    let elsewhere = sshd.client_key("elsewhere");
    sshd.authorize_with(&elsewhere, "echo allowed", Some("127.0.0.2"));

    let session = connect(&sshd.target(&here));
    assert_eq!(run(&session, "x", b"").0, b"allowed\n");

    let e = err(sshd.target(&elsewhere).connect());
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("from="), "{e}");
}

#[test]
fn ssh_keygen_and_pkcs8_ed25519_keys_both_work() {
    let sshd = Sshd::start();
    // ssh-keygen's own format (openssh-key-v1).
    let openssh = sshd.client("openssh", "echo ok");
    let head = fs::read_to_string(&openssh.private).unwrap();
    assert!(head.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let session = connect(&sshd.target(&openssh));
    assert_eq!(run(&session, "x", b"").0, b"ok\n");

    // PKCS#8 PEM, as `openssl genpkey` writes it; the public half is built
    // from the raw key `openssl pkey -pubout` gives.
    let pem = sshd.dir().join("client_pkcs8");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem)
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(ok);
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .unwrap()
        .stdout;
    let raw = &der[der.len() - 32..];
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(raw);
    let public = pem.with_extension("pub");
    fs::write(
        &public,
        format!(
            "ssh-ed25519 {} pkcs8\n",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        ),
    )
    .unwrap();
    let pkcs8 = ClientKey {
        private: pem,
        public,
    };
    sshd.authorize(&pkcs8, "echo ok");
    let session = connect(&sshd.target(&pkcs8));
    assert_eq!(run(&session, "x", b"").0, b"ok\n");
}

#[test]
fn unusable_private_keys_are_refused_before_connecting() {
    let sshd = Sshd::start();
    let locked = sshd.dir().join("client_locked");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&locked)
        .status()
        .unwrap();
    assert!(status.success());
    let mut target = sshd.target(&ClientKey {
        private: locked.clone(),
        public: locked.with_extension("pub"),
    });
    let e = err(target.connect());
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("passphrase"), "{e}");

    target = target.private_key(sshd.dir().join("client_missing"));
    let e = err(target.connect());
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("ssh-keygen -t ed25519"), "{e}");

    // Nothing reached the server.
    assert!(!sshd.log().contains("Connection from"), "{}", sshd.log());
}

#[test]
fn closed_port_is_a_network_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    keygen(&key, "t");
    let e = err(SshTarget::new("127.0.0.1", "root")
        .port(port)
        .private_key(&key)
        .known_hosts(dir.path().join("known_hosts"))
        .connect());
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert_eq!(e.host(), Some("127.0.0.1"));
    assert!(e.to_string().contains(&port.to_string()), "{e}");

    let e = err(fetch_host_key("127.0.0.1", port, Duration::from_secs(5)));
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
}

#[test]
fn silent_listener_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds connections, never says a word.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..2 {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    keygen(&key, "t");
    let started = Instant::now();
    let e = err(SshTarget::new("127.0.0.1", "root")
        .port(port)
        .private_key(&key)
        .known_hosts(dir.path().join("known_hosts"))
        .connect_timeout(Duration::from_secs(1))
        .connect());
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("handshake"), "{e}");
    let e = err(fetch_host_key("127.0.0.1", port, Duration::from_secs(1)));
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(started.elapsed() < Duration::from_secs(60));
    holder.join().unwrap();
}

#[test]
fn silent_remote_command_times_out() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "echo 'waiting forever' >&2; exec cat >/dev/null");
    let session = connect(&sshd.target(&key).io_timeout(Duration::from_secs(1)));
    let mut ch = session.exec("x").unwrap();
    let mut buf = [0u8; 16];
    let io_err = ch.read(&mut buf).unwrap_err();
    assert_eq!(io_err.kind(), std::io::ErrorKind::TimedOut);
    let e = Error::from_io_error(io_err);
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert_eq!(e.host(), Some("127.0.0.1"));
    assert!(
        e.to_string().contains("waiting forever"),
        "stderr quoted: {e}"
    );
}

#[test]
fn cancel_token_stops_a_waiting_read() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "exec cat >/dev/null");
    let token = CancelToken::new();
    let session = connect(&sshd.target(&key).cancel_token(token.clone()));
    let mut ch = session.exec("x").unwrap();
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            token.cancel();
        })
    };
    let started = Instant::now();
    let e = Error::from_io_error(ch.read(&mut [0u8; 8]).unwrap_err());
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller.join().unwrap();
}

#[test]
fn keepalives_do_not_disturb_a_quiet_command() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "sleep 3; echo done");
    let session = connect(
        &sshd
            .target(&key)
            .keepalive_interval(Some(Duration::from_secs(1)))
            .io_timeout(Duration::from_secs(20)),
    );
    assert!(session.keepalive().is_ok());
    let (out, status, _) = run(&session, "x", b"");
    assert_eq!((out.as_slice(), status), (&b"done\n"[..], 0));
}

#[test]
fn sessions_and_channels_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Session>();
    assert_send::<Channel>();
    let sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let session = connect(&sshd.target(&key));
    let ch = session.exec("x").unwrap();
    let out = std::thread::spawn(move || {
        let mut ch = ch;
        ch.write_all(b"moved").unwrap();
        ch.send_eof().unwrap();
        let mut out = Vec::new();
        ch.read_to_end(&mut out).unwrap();
        out
    })
    .join()
    .unwrap();
    assert_eq!(out, b"moved");
}

#[test]
fn server_killed_mid_transfer_is_a_network_error() {
    let mut sshd = Sshd::start();
    let key = sshd.client("sender", "cat");
    let session = connect(&sshd.target(&key).io_timeout(Duration::from_secs(20)));
    let mut ch = session.exec("x").unwrap();
    let chunk = payload(256 * 1024);
    ch.write_all(&chunk).unwrap();
    let mut first = vec![0u8; 1024];
    ch.read_exact(&mut first).unwrap();
    assert_eq!(first, chunk[..1024]);
    assert!(!sshd.session_pids().is_empty());

    sshd.kill();

    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let failure = loop {
        assert!(started.elapsed() < Duration::from_secs(60), "never failed");
        if let Err(e) = ch.write_all(&chunk) {
            break e;
        }
        match ch.read(&mut buf) {
            Err(e) => break e,
            Ok(0) => panic!("a killed server looked like a clean end of file"),
            Ok(_) => {}
        }
    };
    let e = Error::from_io_error(failure);
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert_eq!(e.host(), Some("127.0.0.1"));
    assert!(
        e.to_string()
            .contains(&format!("127.0.0.1:{}", sshd.port())),
        "{e}"
    );
    let e = err(ch.finish());
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
}

#[test]
fn fetch_host_key_gives_a_pin_that_then_verifies() {
    let sshd = Sshd::start();
    let key = sshd.client("sender", "echo pinned");
    let fetched = fetch_host_key("127.0.0.1", sshd.port(), Duration::from_secs(5)).unwrap();
    assert_eq!(fetched.key_type(), "ssh-ed25519");
    assert_eq!(fetched.fingerprint(), sshd.host_key_fingerprint());
    assert_eq!(
        format!("{} {}", fetched.key_type(), fetched.base64()),
        sshd.host_key_line()
    );
    let line = fetched.known_hosts_line("127.0.0.1", sshd.port());
    assert_eq!(
        line,
        format!("[127.0.0.1]:{} {}", sshd.port(), sshd.host_key_line())
    );

    // Explicit trust on first use: pin once, then connect.
    let known_hosts = sshd.dir().join("tofu/known_hosts");
    assert!(pin_host_key(&known_hosts, "127.0.0.1", sshd.port(), &fetched).unwrap());
    assert!(!pin_host_key(&known_hosts, "127.0.0.1", sshd.port(), &fetched).unwrap());
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), line + "\n");
    let session = connect(&sshd.target(&key).known_hosts(&known_hosts));
    assert_eq!(session.host_key(), &fetched);
    assert_eq!(run(&session, "x", b"").0, b"pinned\n");
}

#[test]
fn harness_stops_sshd_and_its_sessions_by_pid() {
    // Twice: once while the command is still being started (the racy
    // moment), once with it running.
    for settle in [false, true] {
        let mut sshd = Sshd::start();
        let pid = sshd.pid().unwrap();
        let key = sshd.client("sender", "exec sleep 60");
        let session = connect(&sshd.target(&key));
        let _ch = session.exec("x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let running = |sshd: &Sshd| {
            sshd.session_pids().iter().any(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
            })
        };
        while !(if settle {
            running(&sshd)
        } else {
            sshd.session_pids().len() >= 2
        }) {
            assert!(Instant::now() < deadline, "the session never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let sessions = sshd.session_pids();
        sshd.stop();
        assert!(sshd.pid().is_none());
        assert!(!is_alive(pid), "sshd {pid} still running");
        for p in sessions {
            assert!(!is_alive(p), "session process {p} still running");
        }
    }
}
