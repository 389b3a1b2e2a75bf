//! Scan benchmark: a tree of N small certificate-sized files (default
//! 100,000), scanned without a stat cache (every file hashed) and re-scanned
//! with a warm stat cache (nothing hashed), each run several times; medians
//! printed side by side with anchors measured in the same run on the same
//! tree: `sha256sum` over every file (the hashing work of a first scan),
//! `find -printf` of the stat fields, and the tree listed and every entry
//! statted on all cores with nothing else done (the floor for a re-scan,
//! and so for a sync that has no watcher to tell it what changed).
//!
//! The same tree, as a replicated manifest (`ca/...`), is then saved and
//! loaded as a manifest file (`replset::save_manifest` / `load_manifest`),
//! and its digest computed from scratch.
//!
//! `cargo bench -p pe_failover_core --bench scan` (env: PEF_BENCH_FILES,
//! PEF_BENCH_RUNS, PEF_BENCH_DIR).

#[path = "util/allocator.rs"]
mod allocator;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pe_failover_core::replset::{load_manifest, manifest_from_entries, save_manifest};
use pe_failover_core::snapshot::{Entry, Manifest, Scanner};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn sh(script: &str, dir: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sh runs");
    assert!(status.success(), "{script}");
}

fn main() {
    let n: usize = std::env::var("PEF_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::var("PEF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let base = std::env::var("PEF_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let work = tempfile::tempdir_in(base).expect("temp dir");
    let root = work.path().join("signed");
    fs::create_dir(&root).unwrap();
    let body = "-----BEGIN CERTIFICATE-----\n".to_string()
        + &"MIIFakeCertificateBody0123456789abcdef\n".repeat(48);
    let t = Instant::now();
    for i in 0..n {
        let dir = root.join(format!("d{:03}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(
            dir.join(format!("node{i:07}.example.com.pem")),
            format!("{body}{i}\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
    }
    eprintln!(
        "generated {n} files in {:.1?}; waiting out the stat cache's racy window",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(2100));

    let cache = work.path().join("scan.cache");
    let cold = time(runs, || {
        let _ = fs::remove_file(&cache);
        let s = Scanner::new(&root).cache_file(&cache).scan().unwrap();
        assert_eq!(s.stats.hashed as usize, n);
    });
    let warm = time(runs, || {
        let s = Scanner::new(&root).cache_file(&cache).scan().unwrap();
        assert_eq!(s.stats.hashed, 0);
    });
    // One file changed, then a scan that trusts it at once, so every run
    // rewrites the cache (as a sync right after a signing does: the records
    // of the CRL, serial and inventory it replaced are dropped); timed until
    // the scan returns. In the background (as the replication scans do),
    // the write is waited for after the timing.
    let one_changed_scan = |background: bool| -> Duration {
        median(
            (0..runs)
                .map(|_| {
                    fs::write(
                        root.join("d000/node0000000.example.com.pem"),
                        format!("{body}changed {:?}\n", Instant::now()),
                    )
                    .unwrap();
                    let t = Instant::now();
                    let mut s = Scanner::new(&root)
                        .cache_file(&cache)
                        .racy_window(Duration::ZERO)
                        .save_cache_in_background(background)
                        .scan()
                        .unwrap();
                    let took = t.elapsed();
                    assert_eq!(s.stats.hashed, 1);
                    s.cache_save.wait().unwrap();
                    took
                })
                .collect(),
        )
    };
    let one_changed = one_changed_scan(false);
    let one_changed_bg = one_changed_scan(true);
    // The first scan after a reboot reads from disk: measure it too when we
    // may drop the page cache (root).
    let drop_caches = || {
        let _ = Command::new("sync").status();
        fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
    };
    let cold_disk = if drop_caches() {
        Some(time(runs, || {
            let _ = fs::remove_file(&cache);
            assert!(drop_caches());
            Scanner::new(&root).cache_file(&cache).scan().unwrap();
        }))
    } else {
        None
    };
    let sha256sum_cold = cold_disk.map(|_| {
        time(runs, || {
            assert!(drop_caches());
            sh(
                "find . -type f -print0 | xargs -0 -P2 -n2000 sha256sum",
                &root,
            )
        })
    });
    // Leave the cache warm for what follows.
    Scanner::new(&root).cache_file(&cache).scan().unwrap();
    let sha256sum = time(runs, || {
        sh(
            "find . -type f -print0 | xargs -0 -P2 -n2000 sha256sum",
            &root,
        )
    });
    let find_stat = time(runs, || {
        sh("find . -printf '%p %s %T@ %C@ %i %m %U %G\\n'", &root)
    });
    // The floor of any re-scan on this machine: every directory listed and
    // every entry statted (as the scanner does: fstatat relative to the
    // directory), on all cores, nothing else done or kept.
    let floor = time(runs, || {
        assert_eq!(list_and_stat(&root), n + n.div_ceil(1000));
    });

    // The tree as a replicated manifest, saved and loaded as a file.
    let scanned = Scanner::new(&root).scan().unwrap().manifest;
    let mut entries: Vec<Entry> = vec![Entry::synthetic_dir("ca")];
    entries.extend(Vec::from(scanned).into_iter().map(|mut e| {
        e.path.insert_str(0, "ca/");
        e
    }));
    let manifest = manifest_from_entries(entries.clone()).unwrap();
    let manifest_file = work.path().join("ca.manifest.json");
    let digest = time(runs, || {
        // A fresh manifest each time: the digest is remembered once computed.
        let m = Manifest::from_entries(entries.clone()).unwrap();
        std::hint::black_box(m.digest());
    });
    let save = time(runs, || {
        save_manifest(&manifest_file, &manifest, 0o600).unwrap();
    });
    let load = time(runs, || {
        let m = load_manifest(&manifest_file).unwrap().unwrap();
        assert_eq!(m.len(), manifest.len());
    });
    let file_size = fs::metadata(&manifest_file).unwrap().len();

    println!("scan of {n} files, median of {runs} runs (2 cores)");
    println!("| what | time | anchor | anchor time | ratio |");
    println!("|---|---:|---|---:|---:|");
    println!("| first scan, every file hashed | {cold:.2?} | `find | xargs -P2 sha256sum` | {sha256sum:.2?} | {:.2}x |", sha256sum.as_secs_f64() / cold.as_secs_f64());
    if let (Some(c), Some(a)) = (cold_disk, sha256sum_cold) {
        println!("| first scan, page cache dropped | {c:.2?} | same, page cache dropped | {a:.2?} | {:.2}x |", a.as_secs_f64() / c.as_secs_f64());
    }
    println!("| re-scan, unchanged, stat cache | {warm:.2?} | `find -printf` (stat only) | {find_stat:.2?} | {:.2}x |", find_stat.as_secs_f64() / warm.as_secs_f64());
    println!(
        "| same | {warm:.2?} | listing and statting alone, all cores | {floor:.2?} | {:.2}x |",
        floor.as_secs_f64() / warm.as_secs_f64()
    );
    println!("| re-scan, 1 file changed (stat cache rewritten) | {one_changed:.2?} | | | |");
    println!("| same, stat cache written in the background | {one_changed_bg:.2?} | | | |");
    println!(
        "manifest of {} entries: file {:.1} MB, save {save:.2?}, load (checked) {load:.2?}; from_entries + digest {digest:.2?}",
        manifest.len(),
        file_size as f64 / 1e6
    );
    println!(
        "first scan / unchanged re-scan = {:.1}x (page cache warm)",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    if let Some(c) = cold_disk {
        println!(
            "first scan after a reboot (page cache dropped) / unchanged re-scan = {:.1}x",
            c.as_secs_f64() / warm.as_secs_f64()
        );
    }
}

/// Lists every directory below `root` and stats each entry (`fstatat`
/// relative to its directory, on all cores), keeping nothing; returns the
/// number of entries.
fn list_and_stat(root: &Path) -> usize {
    use rayon::prelude::*;
    let mut pending = vec![root.to_path_buf()];
    let mut count = 0;
    while let Some(dir) = pending.pop() {
        let listed: Vec<fs::DirEntry> = fs::read_dir(&dir)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let dirs: Vec<_> = listed
            .par_iter()
            .with_min_len(256)
            .filter_map(|e| e.metadata().unwrap().is_dir().then(|| e.path()))
            .collect();
        count += listed.len();
        pending.extend(dirs);
    }
    count
}
