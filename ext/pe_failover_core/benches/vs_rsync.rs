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
//! - lag: with both watchers running (`Runner::watch`, the module's default
//!   debounce of 150 ms), the time from a signing on the active to the
//!   certificate's arrival, complete, in the replica's live CA directory
//!   (`PEF_BENCH_LAG` signings, default 20, one every 300 ms); p50 and p90.
//!
//! "pe_failover" is the whole job: scan with the stat cache, SSH session to
//! the forced command `pe_failover_receive`, verified staging of the
//! transaction, then the applier (snapshot, live ssl directory updated file
//! by file, made durable before the renames). rsync writes straight into its
//! destination and does not flush it to disk, so the comparison favours it.
//!
//! `cargo bench -p pe_failover_core --bench vs_rsync` (env: PEF_BENCH_SIZES,
//! e.g. `10000,100000`; PEF_BENCH_RUNS; PEF_BENCH_LAG; PEF_BENCH_DIR, where
//! the trees go; PEF_BENCH_ONLY=lag, one first sync and the lag only;
//! PEF_BENCH_PHASES, connect/sync/apply times of each run).
//! Needs root, `openssh-server`, `openssh-client` and `rsync`.

#[path = "util/fake_ca.rs"]
mod fake_ca;
#[path = "../tests/util/sshd.rs"]
mod sshd;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use pe_failover_core::apply::Applier;
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::log::Logger;
use pe_failover_core::protocol::Sender;
use pe_failover_core::replset::{CaPaths, ReplicatedSet};
use pe_failover_core::runner::Runner;
use pe_failover_core::state::SyncOutcome;

use fake_ca::FakeCa;
use sshd::{ClientKey, Sshd};

/// One generated active CA and its two replicas (one per tool).
struct Bench {
    root: PathBuf,
    ca: FakeCa,
    sshd: Sshd,
    ours_key: ClientKey,
    rsync_key: ClientKey,
}

impl Bench {
    fn new(root: &Path, n: usize) -> Bench {
        let sshd = Sshd::start();
        let receiver = env!("CARGO_BIN_EXE_pe_failover_receive");
        let ours_key = sshd.client(
            "ours",
            &format!("{receiver} --state {}", root.join("b/state").display()),
        );
        let rsync_key = sshd.client_key("rsync");
        sshd.authorize_line(&rsync_key.public_line());
        Bench {
            root: root.to_path_buf(),
            ca: FakeCa::create(root, n),
            sshd,
            ours_key,
            rsync_key,
        }
    }

    /// pe_failover's sync over SSH plus the replica's apply.
    fn ours(&self) -> SyncOutcome {
        let set = ReplicatedSet::new(self.ca.ssldir())
            .cadir(self.ca.cadir())
            .cache_file(self.root.join("a/state/ca.scan"));
        let sender = Sender::new(set, "b.example.com", self.root.join("a/state"))
            .sender_host("a.example.com");
        let t0 = Instant::now();
        let session = self
            .sshd
            .target(&self.ours_key)
            .connect()
            .expect("ssh connect");
        let channel = session.exec("pe_failover receive").expect("exec");
        let t1 = Instant::now();
        let report = sender.sync(channel).expect("sync");
        let t2 = Instant::now();
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
        .run()
        .expect("apply");
        if std::env::var_os("PEF_BENCH_PHASES").is_some() {
            eprintln!(
                "  phases: connect {:?}, sync {:?}, apply {:?}",
                t1 - t0,
                t2 - t1,
                t2.elapsed()
            );
        }
        report.outcome
    }

    /// `rsync -a --delete` of the same cadir over the same sshd.
    fn rsync(&self) {
        let dest = self.root.join("r/ca");
        fs::create_dir_all(&dest).unwrap();
        let ssh = format!(
            "ssh -p {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.sshd.port(),
            self.rsync_key.private.display(),
            self.sshd.known_hosts().display()
        );
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
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn row(n: usize, scenario: &str, ours: Duration, rsync: Duration) {
    println!(
        "{:>8} {:<28} {:>12.1} {:>12.1} {:>9.1}x",
        n,
        scenario,
        ours.as_secs_f64() * 1000.0,
        rsync.as_secs_f64() * 1000.0,
        rsync.as_secs_f64() / ours.as_secs_f64()
    );
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
    let lag_only = std::env::var("PEF_BENCH_ONLY").is_ok_and(|v| v == "lag");
    let base: PathBuf = std::env::var("PEF_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());

    println!("pe_failover vs rsync -a --delete -e ssh, 127.0.0.1, medians (ms); ratio = rsync / pe_failover\n");
    println!(
        "{:>8} {:<28} {:>12} {:>12} {:>10}",
        "certs", "scenario", "pe_failover", "rsync", "ratio"
    );
    for n in sizes {
        let work = tempfile::tempdir_in(&base).expect("temp dir");
        let mut b = Bench::new(work.path(), n);
        if lag_only {
            assert_eq!(b.ours(), SyncOutcome::Committed);
            lag(&mut b, n, lag_signings);
            continue;
        }
        let full_runs = if n >= 50_000 { runs.min(3) } else { runs };

        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..full_runs {
            b.reset_replicas();
            ours.push(timed(|| assert_eq!(b.ours(), SyncOutcome::Committed)));
            theirs.push(timed(|| b.rsync()));
        }
        row(n, "full", median(ours), median(theirs));

        // Past the stat cache's racy window, as on a live CA between events.
        thread::sleep(Duration::from_millis(2100));
        b.ours();
        b.rsync();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(timed(|| assert_eq!(b.ours(), SyncOutcome::UpToDate)));
            theirs.push(timed(|| b.rsync()));
        }
        row(n, "no change", median(ours), median(theirs));

        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 0..runs {
            for i in 0..10 {
                b.ca.sign(&format!("burst{run}-{i}.example.com"));
            }
            b.ca.revoke(&format!("node{run:06}.example.com"));
            ours.push(timed(|| assert_eq!(b.ours(), SyncOutcome::Committed)));
            theirs.push(timed(|| b.rsync()));
        }
        row(
            n,
            "10 signings + 1 revocation",
            median(ours),
            median(theirs),
        );

        lag(&mut b, n, lag_signings);
    }
}
