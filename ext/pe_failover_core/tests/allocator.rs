//! The shipped allocator's set-up, checked with the kernel: mimalloc as the
//! receiver binary and the Ruby binding build it (`no_thp`) never marks its
//! memory for transparent huge pages. With the request, a full sync's first
//! scan spent most of its time zeroing huge pages (README, Benchmarks).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `VmFlags` of every mapping of this process that has `flag`.
fn mappings_with(flag: &str) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut found = Vec::new();
    let mut range = "";
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| f == flag) {
                found.push(format!("{range} ({})", flags.trim()));
            }
        } else if !first.ends_with(':') {
            // A mapping's first line: its address range, then the rest.
            range = first;
        }
    }
    found
}

#[test]
fn mimalloc_memory_is_not_marked_for_huge_pages() {
    // Small and large blocks, touched: mimalloc has reserved and committed
    // arena memory for both by now.
    let small: Vec<Vec<u8>> = (0..100_000).map(|i| vec![i as u8; 96]).collect();
    let large = vec![1u8; 64 << 20];
    assert_eq!(small.len() + large.len(), 100_000 + (64 << 20));
    let marked = mappings_with("hg");
    assert!(
        marked.is_empty(),
        "mappings marked MADV_HUGEPAGE (is mimalloc built without the no_thp feature?): {marked:?}"
    );
}
