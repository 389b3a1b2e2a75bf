//! Replication benchmark: a CA of N signed certificates (default 10,000)
//! shipped by the sender to the receiver over a local socketpair, each
//! scenario run several times; medians of wall time and bytes on the wire,
//! plus the applier's time to stage the transaction and update the live
//! directory.
//!
//! - full: first sync to an empty replica (cold stat cache on the sender);
//! - no change: sync with nothing changed (warm stat cache);
//! - 10 signings + 1 revocation: the usual burst.
//!
//! `cargo bench -p pe_failover_core --bench replicate` (env: PEF_BENCH_FILES,
//! PEF_BENCH_RUNS, PEF_BENCH_DIR). The comparison with `rsync -a --delete`
//! over SSH is done elsewhere.

#[path = "util/allocator.rs"]
mod allocator;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

#[path = "util/fake_ca.rs"]
mod fake_ca;

use fake_ca::FakeCa;
use pe_failover_core::apply::Applier;
use pe_failover_core::protocol::{Receiver, Sender, SyncReport};
use pe_failover_core::replset::{CaPaths, ReplicatedSet};
use pe_failover_core::state::SyncOutcome;

struct Bench {
    root: PathBuf,
    ca: FakeCa,
}

impl Bench {
    fn sender(&self) -> Sender {
        let set = ReplicatedSet::new(self.ca.ssldir())
            .cadir(self.ca.cadir())
            .cache_file(self.root.join("a/state/ca.scan"));
        Sender::new(set, "b.example.com", self.root.join("a/state")).sender_host("a.example.com")
    }

    fn sync(&self, b_state: &Path) -> SyncReport {
        let (x, y) = UnixStream::pair().unwrap();
        let receiver = Receiver::new(b_state);
        let h = thread::spawn(move || receiver.receive(y));
        let report = self.sender().sync(x).expect("sync");
        h.join().unwrap().expect("receive");
        report
    }

    fn apply(&self, b: &Path) {
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
    }
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: usize = std::env::var("PEF_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runs: usize = std::env::var("PEF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let base = std::env::var("PEF_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let work = tempfile::tempdir_in(base).expect("temp dir");
    let mut b = Bench {
        root: work.path().to_path_buf(),
        ca: FakeCa::create(work.path(), n),
    };
    println!("replicate: {n} signed certificates, {runs} runs per scenario, medians\n");
    println!(
        "{:<30} {:>12} {:>14} {:>10} {:>12}",
        "scenario", "sync", "bytes sent", "objects", "apply"
    );

    // Full sync to an empty replica, cold sender cache each time.
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    let mut objects = 0;
    let mut applies = Vec::new();
    for run in 0..runs {
        let _ = fs::remove_dir_all(b.root.join("a/state"));
        let replica = b.root.join(format!("b{run}"));
        fs::create_dir_all(replica.join("ssl")).unwrap();
        let t = Instant::now();
        let r = b.sync(&replica.join("state"));
        times.push(t.elapsed());
        assert_eq!(r.outcome, SyncOutcome::Committed);
        bytes.push(r.stats.bytes_sent);
        objects = r.stats.objects;
        let t = Instant::now();
        b.apply(&replica);
        applies.push(t.elapsed());
        if run + 1 < runs {
            let _ = fs::remove_dir_all(&replica);
        }
    }
    let replica = b.root.join(format!("b{}", runs - 1));
    println!(
        "{:<30} {:>12} {:>14} {:>10} {:>12}",
        "full (cold cache)",
        ms(median(times)),
        median(bytes),
        objects,
        ms(median(applies))
    );

    // Let the racy window pass so the stat cache is trusted, then no change.
    thread::sleep(Duration::from_millis(2100));
    b.sync(&replica.join("state"));
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    let mut applies = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = b.sync(&replica.join("state"));
        times.push(t.elapsed());
        assert_eq!(r.outcome, SyncOutcome::UpToDate);
        bytes.push(r.stats.bytes_sent);
        let t = Instant::now();
        b.apply(&replica);
        applies.push(t.elapsed());
    }
    println!(
        "{:<30} {:>12} {:>14} {:>10} {:>12}",
        "no change",
        ms(median(times)),
        median(bytes),
        0,
        ms(median(applies))
    );

    // 10 signings and 1 revocation.
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    let mut objects = Vec::new();
    let mut applies = Vec::new();
    for run in 0..runs {
        for i in 0..10 {
            b.ca.sign(&format!("burst{run}-{i}.example.com"));
        }
        b.ca.revoke(&format!("node{run:06}.example.com"));
        let t = Instant::now();
        let r = b.sync(&replica.join("state"));
        times.push(t.elapsed());
        assert_eq!(r.outcome, SyncOutcome::Committed);
        bytes.push(r.stats.bytes_sent);
        objects.push(r.stats.objects);
        let t = Instant::now();
        b.apply(&replica);
        applies.push(t.elapsed());
    }
    println!(
        "{:<30} {:>12} {:>14} {:>10} {:>12}",
        "10 signings + 1 revocation",
        ms(median(times)),
        median(bytes),
        median(objects),
        ms(median(applies))
    );
}
