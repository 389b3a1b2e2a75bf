//! Property: scan a tree, mutate it, scan again; the diff reports exactly
//! the mutation (files), and at most an mtime change on the directories
//! whose entries were added or removed. With and without the stat cache.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pe_failover_core::diff::{diff, Field};
use pe_failover_core::snapshot::Scanner;
use proptest::prelude::*;
use util::TempTree;

#[derive(Clone, Debug)]
enum Op {
    Rewrite(Vec<u8>),
    Chmod(u32),
    Remove,
}

fn name() -> impl Strategy<Value = String> {
    (prop::sample::select(vec!["a", "b"]), 0..8u8).prop_map(|(d, n)| format!("{d}/f{n}.pem"))
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn diff_reports_exactly_the_mutation(
        initial in prop::collection::btree_map(name(), content(), 0..12),
        ops in prop::collection::btree_map(name(), prop_oneof![
            content().prop_map(Op::Rewrite),
            prop::sample::select(vec![0o600u32, 0o640, 0o644, 0o400]).prop_map(Op::Chmod),
            Just(Op::Remove),
        ], 0..8),
        use_cache in any::<bool>(),
    ) {
        let t = TempTree::new();
        t.dir("a");
        t.dir("b");
        for (p, c) in &initial {
            t.file(p, c);
            fs::set_permissions(t.path(p), fs::Permissions::from_mode(0o644)).unwrap();
        }
        let cache = t.path("../cache");
        let scan = |t: &TempTree| {
            let mut s = Scanner::new(t.root()).racy_window(Duration::ZERO);
            if use_cache {
                s = s.cache_file(&cache);
            }
            s.scan().unwrap()
        };
        let before = scan(&t);
        prop_assert!(before.problems.is_empty());

        let mut added = BTreeSet::new();
        let mut removed = BTreeSet::new();
        let mut changed: BTreeMap<String, BTreeSet<Field>> = BTreeMap::new();
        for (p, op) in &ops {
            let exists = initial.contains_key(p);
            match op {
                Op::Rewrite(c) => {
                    if exists {
                        // Make sure the contents differ from the old ones.
                        let mut c = c.clone();
                        c.extend_from_slice(b"#");
                        c.extend_from_slice(&initial[p]);
                        t.file(p, &c);
                        let set = changed.entry(p.clone()).or_default();
                        set.insert(Field::Content);
                        set.insert(Field::Size);
                    } else {
                        t.file(p, c);
                        added.insert(p.clone());
                    }
                }
                Op::Chmod(mode) if exists => {
                    fs::set_permissions(t.path(p), fs::Permissions::from_mode(*mode)).unwrap();
                    if *mode != 0o644 {
                        changed.entry(p.clone()).or_default().insert(Field::Mode);
                    }
                }
                Op::Remove if exists => {
                    fs::remove_file(t.path(p)).unwrap();
                    removed.insert(p.clone());
                }
                _ => {}
            }
        }
        let after = scan(&t);
        prop_assert!(after.problems.is_empty());
        let cs = diff(&before.manifest, &after.manifest);

        prop_assert_eq!(cs.added_paths().map(String::from).collect::<BTreeSet<_>>(), added.clone());
        prop_assert_eq!(cs.removed_paths().map(String::from).collect::<BTreeSet<_>>(), removed.clone());
        let touched_dirs: BTreeSet<String> = added
            .iter()
            .chain(removed.iter())
            .map(|p| p.split('/').next().unwrap().to_string())
            .collect();
        for c in &cs.changed {
            if let Some(expected) = changed.get(c.path()) {
                // Rewrites may or may not move the mtime within one clock tick.
                let got: BTreeSet<Field> = c.fields.iter().copied().filter(|f| *f != Field::Mtime).collect();
                let want: BTreeSet<Field> = expected
                    .iter()
                    .copied()
                    .filter(|f| *f != Field::Size || c.old.size != c.new.size)
                    .collect();
                prop_assert_eq!(got, want, "fields of {}", c.path());
            } else {
                prop_assert!(touched_dirs.contains(c.path()), "unexpected change {:?}", c);
                prop_assert_eq!(&c.fields, &vec![Field::Mtime]);
            }
        }
        for p in changed.keys() {
            prop_assert!(cs.changed_paths().any(|c| c == p), "missed change of {}", p);
        }
        // The root digest moves iff something was reported.
        prop_assert_eq!(cs.is_empty(), before.manifest.digest() == after.manifest.digest());
    }
}
