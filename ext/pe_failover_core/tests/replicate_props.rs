//! Property: any sequence of CA operations on the active primary, synced
//! and applied (after every operation or in batches), leaves the passive's
//! live cadir content-equal to the active's, apart from the certificates
//! the passive signed itself, which are kept.

#[path = "util/pair.rs"]
mod pair;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use pair::{Pair, PASSIVE};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Sign(u8),
    Revoke(u8),
    Clean(u8),
    RefreshHostCrl,
    Chmod(u8, u32),
    PassiveSigns(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8).prop_map(Op::Sign),
        2 => (0..8u8).prop_map(Op::Revoke),
        2 => (0..8u8).prop_map(Op::Clean),
        1 => Just(Op::RefreshHostCrl),
        1 => ((0..8u8), prop::sample::select(vec![0o600u32, 0o640, 0o644])).prop_map(|(n, m)| Op::Chmod(n, m)),
        1 => (0..3u8).prop_map(Op::PassiveSigns),
    ]
}

fn name(n: u8) -> String {
    format!("host{n}.example.com")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replica_converges_to_the_active(
        ops in prop::collection::vec((op(), any::<bool>()), 1..10),
    ) {
        let p = Pair::new(4);
        p.sync_and_apply();
        let mut kept = vec![PASSIVE.to_string()];
        for (op, sync_now) in &ops {
            match op {
                Op::Sign(n) => p.sign(&name(*n)),
                Op::Revoke(n) => p.revoke(&name(*n)),
                Op::Clean(n) => p.clean(&name(*n)),
                Op::RefreshHostCrl => p.refresh_host_crl(),
                Op::Chmod(n, mode) => {
                    let f = p.a_cadir.join(format!("signed/{}.pem", name(*n)));
                    if f.exists() {
                        fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
                    }
                }
                Op::PassiveSigns(n) => {
                    let local = format!("local{n}.example.com");
                    fs::write(p.b_cadir.join(format!("signed/{local}.pem")), "local").unwrap();
                    if !kept.contains(&local) {
                        kept.push(local);
                    }
                }
            }
            if *sync_now {
                p.sync_and_apply();
            }
        }
        p.sync_and_apply();
        kept.sort();
        let kept_refs: Vec<&str> = kept.iter().map(String::as_str).collect();
        p.assert_converged(&kept_refs);
        // The applies above read only what each transaction changed; a
        // verifying one compares everything and finds nothing left to do.
        let report = p.applier().verify(true).run().unwrap();
        prop_assert_eq!(&report.kept, &kept);
        prop_assert!(report.live.written.is_empty(), "{:?}", report.live);
        prop_assert!(report.live.deleted.is_empty(), "{:?}", report.live);
        prop_assert!(report.live.metadata_fixed.is_empty(), "{:?}", report.live);
        p.assert_host_files_untouched();
        prop_assert!(p.incoming().is_empty());
    }
}
