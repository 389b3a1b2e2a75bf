//! Bulk phases: transparent huge pages off while a process allocates for
//! every certificate at once.
//!
//! mimalloc (the allocator of the receiver binary and of the Ruby binding)
//! marks its memory for transparent huge pages, so a page fault in fresh
//! or returned memory zeroes a whole 2 MiB page. That pays off in the
//! incremental syncs, which work on manifests already in memory: with huge
//! pages off for the whole receiver, the 10+1 sync through the watcher at
//! 100k took 0.26-0.33 s against 0.19-0.22 s (two alternating pairs of
//! runs). But not in the phases that allocate for every certificate within a
//! second or two: in a full sync at 100,000 certificates, `perf` put 63 % of
//! the active's first scan and two thirds of a core of the receiver's
//! reading of the delta in the kernel's `clear_page_erms` under
//! `do_huge_pmd_anonymous_page`. Those phases hold a [`BulkPhase`]: a scan
//! that hashes at least [`BULK_ENTRIES`] files, and a receive of a delta that
//! upserts at least as many entries. While one is held, the process takes
//! small pages (`prctl(PR_SET_THP_DISABLE)`, a setting of the whole
//! process, restored when the last one ends; memory already backed by huge
//! pages keeps them, and a child started meanwhile would inherit it: none
//! is, the scan and the receive start none).

use std::sync::Mutex;

/// Cache misses (files to hash) or upserted entries from which a scan or a
/// receive is a bulk phase: a first sync, or a CA that changed wholesale.
pub(crate) const BULK_ENTRIES: usize = 10_000;

/// The phases held, and whether the first of them turned huge pages off
/// (they stay as they were found when something else had).
static HELD: Mutex<(usize, bool)> = Mutex::new((0, false));

/// A bulk phase of this process; see the module. Ends when dropped.
#[derive(Debug)]
pub(crate) struct BulkPhase(());

impl BulkPhase {
    /// Starts one (nested and concurrent phases share the setting).
    pub(crate) fn begin() -> BulkPhase {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 == 0 {
            held.1 = thp_disabled() == Some(false) && set_thp_disabled(true);
        }
        held.0 += 1;
        BulkPhase(())
    }

    /// Starts one when `entries` reach [`BULK_ENTRIES`].
    pub(crate) fn begin_for(entries: usize) -> Option<BulkPhase> {
        (entries >= BULK_ENTRIES).then(BulkPhase::begin)
    }
}

impl Drop for BulkPhase {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.0 = held.0.saturating_sub(1);
        if held.0 == 0 && held.1 {
            set_thp_disabled(false);
            held.1 = false;
        }
    }
}

/// Whether huge pages are off for this process (None: the kernel cannot
/// tell, so they are left alone).
fn thp_disabled() -> Option<bool> {
    // SAFETY: PR_GET_THP_DISABLE takes no pointer and changes nothing.
    match unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Turns huge pages off (or back on) for this process; whether it did.
fn set_thp_disabled(off: bool) -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes an integer and no pointer.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(off), 0, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_while_a_phase_is_held_and_restored_after_the_last() {
        let before = thp_disabled().expect("PR_GET_THP_DISABLE");
        // From huge pages on, whatever this process started with.
        assert!(set_thp_disabled(false));
        assert!(BulkPhase::begin_for(BULK_ENTRIES - 1).is_none());
        assert_eq!(thp_disabled(), Some(false));
        let outer = BulkPhase::begin_for(BULK_ENTRIES).unwrap();
        assert_eq!(thp_disabled(), Some(true));
        let inner = BulkPhase::begin();
        drop(outer);
        // The other phase still holds.
        assert_eq!(thp_disabled(), Some(true));
        drop(inner);
        assert_eq!(thp_disabled(), Some(false));

        // Off already (not by a phase): left off.
        assert!(set_thp_disabled(true));
        drop(BulkPhase::begin());
        assert_eq!(thp_disabled(), Some(true));
        assert!(set_thp_disabled(before));
    }
}
