//! pe_failover against `rsync -a --delete -e ssh`, on the same generated CA,
//! over the same real OpenSSH server on 127.0.0.1, in one run.
//!
//! For each size (default 10,000 and 100,000 signed certificates) and each
//! scenario, both tools run `PEF_BENCH_RUNS` times (default 5, 3 for full
//! syncs of 100k) and the medians are printed side by side with their ratio:
//!
//! - full: an empty replica receives the whole CA;
//! - no change: nothing changed since the last sync;
//! - 10 signings + 1 revocation: the usual burst;
//! - the same two with the active's watcher running (`watcher` below):
//!   `Runner::sync` is then run by the watcher (see `Runner::use_watcher`),
//!   which knows from inotify what changed and keeps its SSH session; as
//!   `pe_failover sync` and the Puppet type run on an active primary whose
//!   watcher runs. rsync has no such mode: its rows are timed the same way;
//! - session (once, before the sizes): what every one-shot sync of either
//!   tool pays first, an SSH session to the same sshd that runs `true`
//!   (forced command) and returns its exit status: this project's client
//!   (libssh2) against the OpenSSH client rsync runs;
//! - lag: with both watchers running (`Runner::watch`, the module's default
//!   debounce of 150 ms), the time from a signing on the active to the
//!   certificate's arrival, complete, in the replica's live CA directory
//!   (`PEF_BENCH_LAG` signings, default 20, one every 300 ms); p50 and p90.
//!
//! "pe_failover" is the whole job: `Runner::sync` (scan with the stat cache,
//! the SSH session opened meanwhile, the forced command
//! `pe_failover_receive`, verified staging of the transaction), then the
//! applier (snapshot, live ssl directory updated file by file, made durable
//! before the renames). rsync writes straight into its destination and does
//! not flush it to disk, so the comparison favours it. Both log in as the
//! same dedicated user, `pe_failover_bench` (created on first use), whose
//! shell is `/bin/sh` with no start-up files, as the module's transfer user.
//!
//! `cargo bench -p pe_failover_core --bench vs_rsync` (env: PEF_BENCH_SIZES,
//! e.g. `10000,100000`; PEF_BENCH_RUNS; PEF_BENCH_LAG; PEF_BENCH_DIR, where
//! the trees go; PEF_BENCH_ONLY, a comma-separated subset of `session`,
//! `full`, `nochange`, `burst`, `watcher` and `lag`; PEF_BENCH_PHASES, the sync and apply times
//! of each run and every lag).
//! Needs root, `openssh-server`, `openssh-client` and `rsync`.

#[path = "util/allocator.rs"]
mod allocator;

#[path = "util/fake_ca.rs"]
mod fake_ca;
#[path = "../tests/util/sshd.rs"]
mod sshd;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use pe_failover_core::apply::Applier;
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::log::Logger;
use pe_failover_core::replset::CaPaths;
use pe_failover_core::runner::ReplicaOutcome;
use pe_failover_core::runner::Runner;
use pe_failover_core::stage::LatestCache;

use fake_ca::FakeCa;
use sshd::{ClientKey, Sshd};

/// One generated active CA and its two replicas (one per tool).
struct Bench {
    root: PathBuf,
    ca: FakeCa,
    sshd: Sshd,
    ours_key: ClientKey,
    rsync_key: ClientKey,
    /// The active's runners, made once (outside the timed runs): for
    /// one-shot syncs (it never asks a watcher), and one that asks it.
    active: std::cell::OnceCell<Runner>,
    asking: std::cell::OnceCell<Runner>,
    /// Whether `ours` asks the active's watcher (the `watcher` rows).
    through_watcher: std::cell::Cell<bool>,
    /// The replica's latest snapshot between applies, as the passive
    /// watcher keeps it.
    latest: LatestCache,
}

impl Bench {
    fn new(root: &Path, n: usize) -> Bench {
        let sshd = Sshd::builder().user(&transfer_user().0).start();
        // The transfer user reaches its directories through this one.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        let receiver = env!("CARGO_BIN_EXE_pe_failover_receive");
        let ours_key = sshd.client(
            "ours",
            &format!("{receiver} --state {}", root.join("b/state").display()),
        );
        let rsync_key = sshd.client_key("rsync");
        sshd.authorize_line(&rsync_key.public_line());
        let bench = Bench {
            root: root.to_path_buf(),
            ca: FakeCa::create(root, n),
            sshd,
            ours_key,
            rsync_key,
            active: std::cell::OnceCell::new(),
            asking: std::cell::OnceCell::new(),
            through_watcher: std::cell::Cell::new(false),
            latest: LatestCache::new(),
        };
        bench.prepare_replicas();
        bench
            .active
            .get_or_init(|| bench.runners().0.use_watcher(false));
        bench
            .asking
            .get_or_init(|| bench.active.get().unwrap().clone().use_watcher(true));
        bench
    }

    /// The replicas' directories as the module lays them out on a passive:
    /// a root-owned state directory whose `incoming/` only the transfer
    /// user writes (the receiver runs as it; the applier as root), and, for
    /// rsync, a destination the transfer user owns.
    fn prepare_replicas(&self) {
        let (_, uid, gid) = transfer_user();
        let state = self.root.join("b/state");
        fs::create_dir_all(state.join("incoming")).unwrap();
        for d in [self.root.join("b"), state.clone()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let r = self.root.join("r/ca");
        fs::create_dir_all(&r).unwrap();
        for d in [state.join("incoming"), self.root.join("r"), r] {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
        }
        fs::set_permissions(state.join("incoming"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// pe_failover's sync over SSH (the active's `Runner::sync`, as the
    /// CLI and the Puppet type run it) plus the replica's apply (what the
    /// passive's watcher does when a transaction arrives, with the latest
    /// snapshot kept from its previous round).
    fn ours(&self) -> ReplicaOutcome {
        let asking = self.through_watcher.get();
        let runner = if asking { &self.asking } else { &self.active };
        let active = runner.get().expect("the runners are made in Bench::new");
        let t0 = Instant::now();
        let run = active.sync(None, false).expect("sync");
        assert_eq!(run.via_watcher, asking, "{:?}", run.lines);
        let t1 = Instant::now();
        let b = self.root.join("b");
        fs::create_dir_all(b.join("ssl")).unwrap();
        Applier::new(
            b.join("state"),
            CaPaths {
                cadir: b.join("ca"),
                ssldir: b.join("ssl"),
            },
        )
        .reload_command(Vec::<String>::new())
        .max_delete_share(1.0)
        .latest_cache(self.latest.clone())
        .run()
        .expect("apply");
        if std::env::var_os("PEF_BENCH_PHASES").is_some() {
            eprintln!(
                "  phases: sync {:?} (session opened during the scan), apply {:?}",
                t1 - t0,
                t1.elapsed()
            );
        }
        assert!(run.ok, "sync failed: {:?}", run.lines);
        run.replicas[0].outcome
    }

    /// `rsync -a --delete` of the same cadir over the same sshd.
    fn rsync(&self) {
        let dest = self.root.join("r/ca");
        fs::create_dir_all(&dest).unwrap();
        let ssh = self.ssh_command(&self.rsync_key);
        let status = Command::new("rsync")
            .arg("-a")
            .arg("--delete")
            .arg("-e")
            .arg(ssh)
            .arg(format!("{}/", self.ca.cadir().display()))
            .arg(format!(
                "{}@127.0.0.1:{}/",
                self.sshd.user(),
                dest.display()
            ))
            .status()
            .expect("run rsync");
        assert!(status.success(), "rsync failed: {status}");
    }

    /// The OpenSSH client command line rsync runs (`-e`), with `key`.
    fn ssh_command(&self, key: &ClientKey) -> String {
        format!(
            "ssh -p {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.sshd.port(),
            key.private.display(),
            self.sshd.known_hosts().display()
        )
    }

    /// One SSH session that runs `true` (the key's forced command) and
    /// returns its exit status: ours, then the OpenSSH client's.
    fn session(&self, key: &ClientKey) -> (Duration, Duration) {
        let target = self.sshd.target(key);
        let ours = timed(|| {
            let session = pe_failover_core::ssh::connect(&target).expect("connect");
            let mut channel = session.exec("true").expect("exec");
            channel.send_eof().expect("eof");
            assert_eq!(channel.finish().expect("exit status"), 0);
        });
        let theirs = timed(|| {
            let mut argv = self.ssh_command(key);
            argv.push_str(&format!(" {}@127.0.0.1 true", self.sshd.user()));
            let status = Command::new("sh")
                .arg("-c")
                .arg(argv)
                .status()
                .expect("run ssh");
            assert!(status.success(), "ssh failed: {status}");
        });
        (ours, theirs)
    }

    /// Writes the two watchers' configurations (the replica `b` is the one
    /// `ours` fills) and returns (active, passive) runners.
    fn runners(&self) -> (Runner, Runner) {
        let watch = serde_json::json!({
            "debounce_ms": 150, "max_delay_ms": 1000, "verify_interval": 3600, "retry_interval": 1
        });
        let log = serde_json::json!({ "syslog": false, "stderr": false });
        let active = serde_json::json!({
            "role": "active",
            "certname": "a.example.com",
            "state_dir": self.root.join("a/state"),
            "ca": { "ssldir": self.ca.ssldir(), "cadir": self.ca.cadir() },
            "replicas": [{
                "host": "127.0.0.1",
                "port": self.sshd.port(),
                "user": self.sshd.user(),
                "identity_file": self.ours_key.private,
                "known_hosts": self.sshd.known_hosts(),
            }],
            "nc": { "enabled": false },
            "watch": watch,
            "log": log,
        });
        let b = self.root.join("b");
        let passive = serde_json::json!({
            "role": "passive",
            "certname": "b.example.com",
            "state_dir": b.join("state"),
            "ca": {
                "ssldir": b.join("ssl"),
                "cadir": b.join("ca"),
                "owner": "root",
                "group": "root",
                "reload_command": ["true"],
                "max_delete_share": 1.0
            },
            "nc": { "enabled": false },
            "watch": watch,
            "log": log,
        });
        let load = |name: &str, v: &serde_json::Value| {
            let path = self.root.join(name);
            fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
            Runner::load(&path)
                .expect("config")
                .logger(Logger::silent())
        };
        (load("active.json", &active), load("passive.json", &passive))
    }

    /// Empty replicas for a full run. The previous ones are moved aside,
    /// not deleted: on a journal-less ext4 (such as this project's CI VMs)
    /// creating files right after deleting many is slow (inode allocation
    /// skips recently freed inodes), which would penalise whichever tool
    /// runs next rather than measure it. They go with the work directory.
    fn reset_replicas(&self) {
        let trash = self.root.join("trash").join(format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&trash).unwrap();
        for (i, d) in ["a/state", "b", "r"].iter().enumerate() {
            let _ = fs::rename(self.root.join(d), trash.join(i.to_string()));
        }
        self.prepare_replicas();
    }
}

/// The login both tools use on the replica, shaped like the transfer user
/// the module creates on a passive: a system account whose shell is
/// `/bin/sh` and an empty home, so no shell start-up files run. (A login shell's
/// rc files, such as root's, run on every session of either tool and would
/// only add the same constant to both.) Created on first use; returns
/// (name, uid, gid).
fn transfer_user() -> (String, u32, u32) {
    static USER: std::sync::OnceLock<(String, u32, u32)> = std::sync::OnceLock::new();
    USER.get_or_init(make_transfer_user).clone()
}

fn make_transfer_user() -> (String, u32, u32) {
    const NAME: &str = "pe_failover_bench";
    const HOME: &str = "/var/lib/pe_failover_bench";
    fs::create_dir_all(HOME).expect("create the bench user's home");
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(NAME).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--shell", "/bin/sh", "--home-dir", HOME])
            .args(["--no-create-home", NAME])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {NAME} failed: {status}");
        // sshd refuses a locked (`!`) account.
        let status = Command::new("usermod")
            .args(["-p", "*", NAME])
            .status()
            .expect("run usermod");
        assert!(status.success(), "usermod {NAME} failed: {status}");
    } else {
        // An account from an older run of this bench.
        let _ = Command::new("usermod").args(["-d", HOME, NAME]).output();
    }
    (
        NAME.to_string(),
        id("-u").expect("uid of the bench user"),
        id("-g").expect("gid of the bench user"),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Writes out every file system's dirty data, untimed, before a timed run:
/// rsync leaves its files to the kernel's writeback, which would otherwise
/// run during (and, through `syncfs`, be waited for by) the next run of
/// either tool, which then pays for the other's writes.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// One line of the table: `certs` (a count, or `-`), the scenario, both
/// medians in ms, their ratio, then `note`.
fn row(certs: &str, scenario: &str, ours: Duration, rsync: Duration, note: &str) {
    println!(
        "{:>8} {:<28} {:>12.1} {:>12.1} {:>9.1}x{note}",
        certs,
        scenario,
        ours.as_secs_f64() * 1000.0,
        rsync.as_secs_f64() * 1000.0,
        rsync.as_secs_f64() / ours.as_secs_f64()
    );
}

/// `runs` one-shot runs of both tools, each after `prepare` (untimed, given
/// the run's number) made the scenario's change, ours first; prints the row
/// of medians. Each of our runs must end with `expect`.
fn compare(
    b: &mut Bench,
    n: usize,
    scenario: &str,
    runs: usize,
    expect: ReplicaOutcome,
    mut prepare: impl FnMut(&mut Bench, usize),
) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        prepare(b, run);
        settle();
        ours.push(timed(|| assert_eq!(b.ours(), expect)));
        settle();
        theirs.push(timed(|| b.rsync()));
    }
    row(&n.to_string(), scenario, median(ours), median(theirs), "");
}

fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Signing-to-applied lag with both watchers running.
fn lag(b: &mut Bench, n: usize, signings: usize) {
    let (active, passive) = b.runners();
    let watch = |runner: Runner| {
        let token = CancelToken::new();
        let r = runner.cancel_token(token.clone());
        (token, thread::spawn(move || r.watch(false)))
    };
    let (b_token, b_watch) = watch(passive);
    let (a_token, a_watch) = watch(active);
    let live = b.root.join("b/ca");
    let mut lags = Vec::new();
    for i in 0..signings {
        thread::sleep(Duration::from_millis(300));
        let name = format!("lag{i}.example.com");
        let t = Instant::now();
        b.ca.sign(&name);
        let want = fs::read(b.ca.cadir().join(format!("signed/{name}.pem"))).unwrap();
        let target = live.join(format!("signed/{name}.pem"));
        while fs::read(&target).ok().as_deref() != Some(&want[..]) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} did not reach the replica within 60 s"
            );
            thread::sleep(Duration::from_millis(2));
        }
        lags.push(t.elapsed());
    }
    if std::env::var_os("PEF_BENCH_PHASES").is_some() {
        eprintln!("  lags: {lags:?}");
    }
    a_token.cancel();
    b_token.cancel();
    a_watch.join().unwrap().expect("active watcher");
    b_watch.join().unwrap().expect("passive watcher");
    println!(
        "{:>8} {:<28} {:>12.1} {:>12} {:>10}",
        n,
        format!("lag p50 ({signings} signings)"),
        median(lags.clone()).as_secs_f64() * 1000.0,
        "-",
        "-"
    );
    println!(
        "{:>8} {:<28} {:>12.1} {:>12} {:>10}",
        n,
        "lag p90",
        percentile(lags, 90).as_secs_f64() * 1000.0,
        "-",
        "-"
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PEF_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("PEF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let lag_signings: usize = std::env::var("PEF_BENCH_LAG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let only = std::env::var("PEF_BENCH_ONLY").unwrap_or_default();
    let wanted = |scenario: &str| only.is_empty() || only.split(',').any(|s| s.trim() == scenario);
    let base: PathBuf = std::env::var("PEF_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());

    println!("pe_failover vs rsync -a --delete -e ssh, 127.0.0.1, medians (ms); ratio = rsync / pe_failover\n");
    println!(
        "{:>8} {:<28} {:>12} {:>12} {:>10}",
        "certs", "scenario", "pe_failover", "rsync", "ratio"
    );
    // Nothing is deleted until every size is measured: on ext4 without a
    // journal, creating files within minutes of deleting many others is an
    // order of magnitude slower (the allocator skips recently freed
    // inodes), which would make the timings depend on the order of sizes.
    let mut works = Vec::new();
    for n in sizes {
        let work = tempfile::tempdir_in(&base).expect("temp dir");
        let mut b = Bench::new(work.path(), n);
        works.push(work);
        let full_runs = if n >= 50_000 { runs.min(3) } else { runs };
        if wanted("session") && works.len() == 1 {
            let key = b.sshd.client("session", "true");
            let (ours, theirs): (Vec<_>, Vec<_>) =
                (0..runs.max(9)).map(|_| b.session(&key)).unzip();
            row(
                "-",
                "SSH session running `true`",
                median(ours),
                median(theirs),
                "   (OpenSSH client)",
            );
        }
        if wanted("full") {
            compare(
                &mut b,
                n,
                "full",
                full_runs,
                ReplicaOutcome::Committed,
                |b, _| b.reset_replicas(),
            );
        }
        // The other scenarios start from synced replicas, past the stat
        // cache's racy window, as on a live CA between events.
        b.ours();
        b.rsync();
        thread::sleep(Duration::from_millis(2100));
        b.ours();
        b.rsync();

        if wanted("nochange") {
            compare(
                &mut b,
                n,
                "no change",
                runs,
                ReplicaOutcome::UpToDate,
                |_, _| {},
            );
        }

        if wanted("burst") {
            let scenario = "10 signings + 1 revocation";
            compare(
                &mut b,
                n,
                scenario,
                runs,
                ReplicaOutcome::Committed,
                |b, run| {
                    for i in 0..10 {
                        b.ca.sign(&format!("burst{run}-{i}.example.com"));
                    }
                    b.ca.revoke(&format!("node{run:06}.example.com"));
                },
            );
        }

        if wanted("watcher") {
            let watcher = b.runners().0;
            let token = CancelToken::new();
            let r = watcher.cancel_token(token.clone());
            let watching = thread::spawn(move || r.watch(false));
            // Served once its first round (a full scan) is done.
            b.through_watcher.set(true);
            let socket = b.root.join("a/state/watch.sock");
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                thread::sleep(Duration::from_millis(10));
            }
            b.ours();
            compare(
                &mut b,
                n,
                "no change, watcher runs",
                runs,
                ReplicaOutcome::UpToDate,
                |_, _| {},
            );
            compare(
                &mut b,
                n,
                "10+1, watcher runs",
                runs,
                ReplicaOutcome::Committed,
                |b, run| {
                    for i in 0..10 {
                        b.ca.sign(&format!("asked{run}-{i}.example.com"));
                    }
                    b.ca.revoke(&format!("node{:06}.example.com", run + 100));
                },
            );
            b.through_watcher.set(false);
            token.cancel();
            watching.join().unwrap().expect("active watcher");
        }

        if wanted("lag") {
            lag(&mut b, n, lag_signings);
        }
    }
}
