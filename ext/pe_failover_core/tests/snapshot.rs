//! Scans of real directory trees: manifests, digests, the stat cache,
//! exclusions, and the problems a scan must survive.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use pe_failover_core::cache::CacheStatus;
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::diff::{diff, Field};
use pe_failover_core::exclude::Excludes;
use pe_failover_core::snapshot::{EntryKind, Scanner};
use pe_failover_core::ErrorKind;
use util::{ca_tree, set_mtime, TempTree};

fn scanner(root: &Path) -> Scanner {
    Scanner::new(root).racy_window(Duration::ZERO)
}

#[test]
fn records_files_dirs_and_symlinks_without_following() {
    let t = TempTree::new();
    t.file("signed/a.pem", "cert a");
    t.dir("empty");
    symlink("/etc/passwd", t.path("outside")).unwrap();
    symlink("signed", t.path("link-to-dir")).unwrap();
    fs::set_permissions(t.path("signed/a.pem"), fs::Permissions::from_mode(0o640)).unwrap();

    let scan = scanner(t.root()).scan().unwrap();
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let m = &scan.manifest;
    let paths: Vec<_> = m.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["empty", "link-to-dir", "outside", "signed", "signed/a.pem"]
    );
    let a = m.get("signed/a.pem").unwrap();
    assert_eq!(a.kind, EntryKind::File);
    assert_eq!(a.mode, 0o640);
    assert_eq!(a.size, 6);
    assert_eq!(a.sha256.as_deref().unwrap(), util::sha256_hex(b"cert a"));
    let link = m.get("outside").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.target.as_deref(), Some("/etc/passwd"));
    assert!(link.sha256.is_none());
    // The symlinked directory is recorded, not descended into.
    assert!(m.get("link-to-dir/a.pem").is_none());
    assert_eq!(m.digest().len(), 64);
}

#[test]
fn root_digest_changes_iff_a_recorded_field_changes() {
    let t = ca_tree(20);
    let base = scanner(t.root()).scan().unwrap().manifest;
    // Rescan without changes: same digest.
    assert_eq!(
        base.digest(),
        scanner(t.root()).scan().unwrap().manifest.digest()
    );

    let mut seen = BTreeSet::new();
    seen.insert(base.digest());
    let check = |what: &str, seen: &mut BTreeSet<String>| {
        let d = scanner(t.root()).scan().unwrap().manifest.digest();
        assert!(seen.insert(d), "digest did not change after {what}");
    };
    // content, same size and mtime
    let p = t.path("ca/signed/node3.example.com.pem");
    let meta = fs::metadata(&p).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 1;
    fs::write(&p, &bytes).unwrap();
    set_mtime(&p, meta.modified().unwrap());
    check("content", &mut seen);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    check("mode", &mut seen);
    set_mtime(&p, std::time::UNIX_EPOCH + Duration::from_secs(1_000_000));
    check("mtime", &mut seen);
    std::os::unix::fs::lchown(&p, Some(4242), None).unwrap();
    check("uid", &mut seen);
    std::os::unix::fs::lchown(&p, None, Some(4343)).unwrap();
    check("gid", &mut seen);
    fs::write(t.path("ca/signed/new.pem"), "x").unwrap();
    check("added file", &mut seen);
    fs::remove_file(t.path("ca/signed/node4.example.com.pem")).unwrap();
    check("removed file", &mut seen);
    symlink("a", t.path("ca/l")).unwrap();
    check("added symlink", &mut seen);
    fs::remove_file(t.path("ca/l")).unwrap();
    symlink("b", t.path("ca/l")).unwrap();
    let d = scanner(t.root()).scan().unwrap().manifest;
    assert!(d.get("ca/l").unwrap().target.as_deref() == Some("b"));
}

#[test]
fn stat_cache_hashes_only_changed_files() {
    let t = ca_tree(200);
    let cache = t.path("../scan.cache");
    let first = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(first.stats.cache, CacheStatus::Missing);
    assert_eq!(first.stats.hashed, first.stats.files);

    let second = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(second.stats.cache, CacheStatus::Loaded);
    assert_eq!(second.stats.hashed, 0, "{:?}", second.stats);
    assert_eq!(second.stats.cached, second.stats.files);
    assert_eq!(first.manifest, second.manifest);

    // Change one file in place keeping its size and mtime: ctime changes,
    // so the cache must not be trusted for it.
    let p = t.path("ca/signed/node7.example.com.pem");
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    let mut bytes = fs::read(&p).unwrap();
    bytes[3] ^= 0x20;
    fs::write(&p, &bytes).unwrap();
    set_mtime(&p, mtime);
    let third = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(third.stats.hashed, 1, "{:?}", third.stats);
    let cs = diff(&second.manifest, &third.manifest);
    assert_eq!(
        cs.changed_paths().collect::<Vec<_>>(),
        ["ca/signed/node7.example.com.pem"]
    );
    assert_eq!(cs.changed[0].fields, [Field::Content]);
}

#[test]
fn a_stat_cache_saved_in_the_background_serves_the_next_scan() {
    let t = ca_tree(200);
    let cache = t.path("../scan.cache");
    let background = |root: &Path| {
        scanner(root)
            .cache_file(&cache)
            .save_cache_in_background(true)
    };

    // Waited for: the write's outcome is known and the next scan uses it.
    let mut first = background(t.root()).scan().unwrap();
    assert_eq!(first.stats.cache, CacheStatus::Missing);
    first.cache_save.wait().unwrap();
    let second = background(t.root()).scan().unwrap();
    assert_eq!(second.stats.cache, CacheStatus::Loaded);
    assert_eq!(second.stats.hashed, 0, "{:?}", second.stats);
    assert_eq!(first.manifest, second.manifest);

    // Not waited for: dropping the scan finishes the write all the same.
    fs::write(t.path("ca/signed/new.pem"), "new").unwrap();
    let third = background(t.root()).scan().unwrap();
    assert_eq!(third.stats.hashed, 1, "{:?}", third.stats);
    drop(third);
    let fourth = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(fourth.stats.hashed, 0, "{:?}", fourth.stats);
    assert_eq!(fourth.stats.cached, fourth.stats.files);
}

#[test]
fn a_stat_cache_that_cannot_be_saved_in_the_background_says_so_and_costs_only_time() {
    let t = ca_tree(20);
    // A directory where the cache file should be: it can be neither read
    // nor replaced.
    let cache = t.path("../scan.cache");
    fs::create_dir(&cache).unwrap();
    let mut scan = scanner(t.root())
        .cache_file(&cache)
        .save_cache_in_background(true)
        .scan()
        .unwrap();
    assert!(
        matches!(scan.stats.cache, CacheStatus::Ignored(_)),
        "{:?}",
        scan.stats.cache
    );
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    let plain = scanner(t.root()).scan().unwrap();
    assert_eq!(scan.manifest, plain.manifest);
    let err = scan.cache_save.wait().unwrap_err();
    assert!(
        err.to_string().contains("scan.cache"),
        "the error names the cache file: {err}"
    );
    // Waited for once, the outcome is not reported twice.
    scan.cache_save.wait().unwrap();
}

#[test]
fn a_prefixed_scan_records_the_same_tree_under_the_prefix_and_shares_the_cache() {
    // More entries in one directory than one stat batch (statted while the
    // directory is still being read), plus an excluded file and a subtree.
    let t = TempTree::new();
    for i in 0..2500 {
        t.file(&format!("signed/n{i:04}.pem"), format!("cert {i}"));
    }
    t.file("signed/skip.tmp", "left out");
    t.file("serial", "0a");
    let cache = t.path("../scan.cache");
    let excludes = Excludes::new(&["signed/*.tmp".to_string()]).unwrap();
    let plain = scanner(t.root())
        .excludes(excludes.clone())
        .cache_file(&cache)
        .scan()
        .unwrap();
    assert_eq!(plain.stats.hashed, 2501);
    assert_eq!(plain.stats.excluded, 1);

    let prefixed = scanner(t.root())
        .prefix("ca/")
        .excludes(excludes)
        .cache_file(&cache)
        .scan()
        .unwrap();
    assert!(prefixed.problems.is_empty(), "{:?}", prefixed.problems);
    // The cache written by the plain scan serves the prefixed one.
    assert_eq!(prefixed.stats.hashed, 0, "{:?}", prefixed.stats);
    assert_eq!(prefixed.stats.cached, 2501);
    assert_eq!(prefixed.stats.excluded, 1);
    let want: Vec<_> = plain
        .manifest
        .entries()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.path = format!("ca/{}", e.path);
            e
        })
        .collect();
    assert_eq!(prefixed.manifest.entries(), &want[..]);
    assert!(prefixed.manifest.get("ca/signed/skip.tmp").is_none());
    assert_eq!(
        prefixed.manifest.get("ca/signed/n2499.pem").unwrap().sha256,
        Some(util::sha256_hex(b"cert 2499"))
    );

    // A file changed behind the cache is hashed again under the prefix.
    fs::write(t.path("signed/n1234.pem"), "changed").unwrap();
    let again = scanner(t.root())
        .prefix("ca/")
        .cache_file(&cache)
        .scan()
        .unwrap();
    // (and the file no longer excluded, never cached)
    assert_eq!(again.stats.hashed, 2, "{:?}", again.stats);
    assert_eq!(
        again.manifest.get("ca/signed/n1234.pem").unwrap().sha256,
        Some(util::sha256_hex(b"changed"))
    );
}

#[test]
fn recently_changed_files_are_not_trusted_from_the_cache() {
    let t = ca_tree(5);
    let cache = t.path("../scan.cache");
    // Default racy window: everything was just written, nothing is cached.
    Scanner::new(t.root()).cache_file(&cache).scan().unwrap();
    let again = Scanner::new(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(again.stats.hashed, again.stats.files);
}

#[test]
fn corrupt_cache_is_ignored_and_rebuilt() {
    let t = ca_tree(10);
    let cache = t.path("../scan.cache");
    let good = scanner(t.root())
        .cache_file(&cache)
        .scan()
        .unwrap()
        .manifest;
    fs::write(
        &cache,
        b"pe_failover stat cache v1\ngarbage garbage garbage garbage garbage",
    )
    .unwrap();
    let scan = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert!(
        matches!(scan.stats.cache, CacheStatus::Ignored(_)),
        "{:?}",
        scan.stats.cache
    );
    assert_eq!(scan.manifest, good);
    assert_eq!(scan.stats.hashed, scan.stats.files);
    let rebuilt = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(rebuilt.stats.cache, CacheStatus::Loaded);
    assert_eq!(rebuilt.stats.hashed, 0);
}

#[test]
fn a_cache_poisoned_with_wrong_digests_for_changed_files_is_not_used() {
    // A cache written for one tree, then the tree replaced by other files
    // with new inodes: every entry misses.
    let t = ca_tree(10);
    let cache = t.path("../scan.cache");
    scanner(t.root()).cache_file(&cache).scan().unwrap();
    for i in 0..10 {
        let p = t.path(&format!("ca/signed/node{i}.example.com.pem"));
        fs::remove_file(&p).unwrap();
        fs::write(&p, format!("replaced {i}")).unwrap();
    }
    let scan = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(scan.stats.hashed, 10);
    assert_eq!(
        scan.manifest
            .get("ca/signed/node1.example.com.pem")
            .unwrap()
            .sha256
            .as_deref(),
        Some(util::sha256_hex(b"replaced 1").as_str())
    );
}

#[test]
fn exclusions_leave_out_whole_directories() {
    let t = ca_tree(3);
    t.file("private_keys/host.pem", "secret");
    t.file("ca/requests/x.pem", "csr");
    let ex = Excludes::new(["private_keys", "ca/requests/**"]).unwrap();
    let scan = scanner(t.root()).excludes(ex).scan().unwrap();
    assert!(scan.manifest.get("private_keys").is_none());
    assert!(scan.manifest.get("private_keys/host.pem").is_none());
    assert!(scan.manifest.get("ca/requests/x.pem").is_none());
    assert!(scan.manifest.get("ca/requests").is_some());
    assert_eq!(scan.stats.excluded, 2);
}

#[test]
fn missing_or_non_directory_root_is_a_clear_error() {
    let t = TempTree::new();
    let err = Scanner::new(t.path("nope")).scan().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("nope"), "{err}");
    t.file("f", "x");
    let err = Scanner::new(t.path("f")).scan().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn non_utf8_names_are_reported_not_fatal() {
    let t = TempTree::new();
    t.file("ok.pem", "x");
    let bad = t.root().join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    fs::write(&bad, "y").unwrap();
    let scan = scanner(t.root()).scan().unwrap();
    assert_eq!(scan.manifest.len(), 1);
    assert_eq!(scan.problems.len(), 1);
    assert_eq!(scan.problems[0].kind(), ErrorKind::NonUtf8Path);
    assert!(scan.problems[0].to_string().contains("not valid UTF-8"));
    let err = scan.into_complete().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonUtf8Path);
}

#[test]
fn special_files_are_reported() {
    let t = TempTree::new();
    let fifo = t.path("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let scan = scanner(t.root()).scan().unwrap();
    assert_eq!(scan.problems.len(), 1);
    assert!(scan.problems[0].to_string().contains("not a regular file"));
}

/// Runs the permission checks as an unprivileged user (root reads
/// everything), by running this test binary again under `setpriv`.
#[test]
fn unreadable_entries_are_reported_with_their_path() {
    let t = TempTree::new();
    t.file("ok.pem", "x");
    t.file("secret.pem", "y");
    t.file("locked/inner.pem", "z");
    fs::set_permissions(t.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(t.path("secret.pem"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(t.path("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        check_unreadable(t.root());
        return;
    }
    // Make the tree reachable for 'nobody'.
    let mut p = t.root().to_path_buf();
    while let Some(parent) = p.parent() {
        let mode = fs::metadata(parent).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o001)).unwrap();
        }
        p = parent.to_path_buf();
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "unreadable_child", "--ignored", "--nocapture"])
        .env("PEF_UNREADABLE_TREE", t.root())
        .output()
        .expect("setpriv runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by unreadable_entries_are_reported_with_their_path as an unprivileged user"]
fn unreadable_child() {
    let root = std::env::var("PEF_UNREADABLE_TREE").expect("set by the parent test");
    check_unreadable(Path::new(&root));
}

fn check_unreadable(root: &Path) {
    let scan = Scanner::new(root).scan().unwrap();
    let mut problems: Vec<_> = scan
        .problems
        .iter()
        .map(|p| (p.path().unwrap().file_name().unwrap().to_owned(), p.kind()))
        .collect();
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        problems,
        [
            ("locked".into(), ErrorKind::PermissionDenied),
            ("secret.pem".into(), ErrorKind::PermissionDenied),
        ]
    );
    assert!(scan.manifest.get("ok.pem").is_some());
    let err = scan.into_complete().unwrap_err();
    assert!(err.to_string().contains("and 1 more"), "{err}");
}

#[test]
fn cancellation_stops_a_scan() {
    let t = ca_tree(50);
    let token = CancelToken::new();
    token.cancel();
    let err = scanner(t.root()).cancel_token(token).scan().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
}

#[test]
fn scans_survive_files_vanishing_and_appearing_meanwhile() {
    let t = ca_tree(300);
    let root = t.root().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let root = root.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = root.join(format!("ca/signed/churn{}.pem", i % 50));
                if i % 2 == 0 {
                    let _ = fs::write(&p, vec![b'x'; 4096]);
                } else {
                    let _ = fs::remove_file(&p);
                }
                i += 1;
            }
        })
    };
    for _ in 0..15 {
        let scan = scanner(&root).threads(2).scan().unwrap();
        for p in &scan.problems {
            // The only acceptable problem is a file that kept changing.
            assert!(p.to_string().contains("kept changing"), "{p}");
        }
        for e in scan.manifest.entries() {
            if e.path.contains("churn") {
                // A recorded churn file was read whole.
                assert_eq!(e.sha256.as_deref().unwrap().len(), 64);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}

#[test]
fn a_hundred_thousand_files() {
    let t = TempTree::new();
    util::many_files(t.root(), 100_000);
    let cache = t.path("../scan.cache");
    let first = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert!(first.problems.is_empty());
    assert_eq!(first.stats.files, 100_000);
    let second = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(second.stats.hashed, 0);
    assert_eq!(first.manifest.digest(), second.manifest.digest());
    fs::write(t.path("d042/f0042017.pem"), "changed").unwrap();
    let third = scanner(t.root()).cache_file(&cache).scan().unwrap();
    assert_eq!(third.stats.hashed, 1);
    let cs = diff(&second.manifest, &third.manifest);
    assert_eq!(
        cs.changed_paths().collect::<Vec<_>>(),
        ["d042/f0042017.pem"]
    );
}

#[test]
fn a_scan_keeps_the_small_files_it_hashes_when_asked_within_its_budget() {
    use pe_failover_core::snapshot::KEEP_FILE_MAX;
    let t = TempTree::new();
    t.file("a.pem", "cert a");
    t.file("b.pem", "cert b");
    t.file("c.pem", "cert c");
    t.file("big", "x".repeat(KEEP_FILE_MAX as usize + 1));
    let cache = t.path("../keep.cache");
    let sha = |m: &pe_failover_core::snapshot::Manifest, p: &str| {
        m.get(p).unwrap().sha256.clone().unwrap()
    };

    // Not asked: nothing kept.
    let scan = scanner(t.root()).scan().unwrap();
    assert!(scan.contents.is_empty());

    // Asked: the small files, as they were read.
    let scan = scanner(t.root())
        .keep_contents(1 << 20)
        .cache_file(&cache)
        .scan()
        .unwrap();
    assert_eq!(scan.contents.len(), 3);
    let m = &scan.manifest;
    assert_eq!(scan.contents.get(&sha(m, "a.pem")), Some(&b"cert a"[..]));
    assert_eq!(
        scan.contents.get(&sha(m, "big")),
        None,
        "larger than KEEP_FILE_MAX"
    );

    // Within the budget: two of the three 6-byte files.
    let scan = scanner(t.root()).keep_contents(12).scan().unwrap();
    assert_eq!(scan.contents.len(), 2);

    // The stat cache vouches for unchanged files: they are not read, so
    // not kept; a changed one is.
    t.file("b.pem", "cert b, renewed");
    let scan = scanner(t.root())
        .keep_contents(1 << 20)
        .cache_file(&cache)
        .scan()
        .unwrap();
    assert_eq!(scan.contents.len(), 1);
    let renewed = sha(&scan.manifest, "b.pem");
    assert_eq!(scan.contents.get(&renewed), Some(&b"cert b, renewed"[..]));
}
