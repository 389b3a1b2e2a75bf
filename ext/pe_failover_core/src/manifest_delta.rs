//! Manifest deltas: what a transaction changes in the manifest it builds on.
//!
//! A receiver that merged a small delta into its base stores the
//! transaction's manifest as `manifest.delta` (the entries the delta
//! upserts and the paths it removes, with the base's digest and the new
//! one) instead of the whole new manifest: at 100,000 certificates a whole
//! manifest is 15 MB to write and flush for a change of a dozen entries.
//! The applier applies the delta to the snapshot it names as base, checks
//! the result as the receiver did and against the digest, and keeps the
//! delta in the snapshot (see `stage::prepare_snapshot`) until the whole
//! manifest it writes there is known to be on disk.
//!
//! The file: the line `pe_failover manifest delta v1`, the base digest and
//! a newline, the new digest and a newline, then the length (8 bytes,
//! little-endian) and the canonical form of the upserted entries (see
//! `snapshot::canonical_form_of`, strictly sorted by path), then the number
//! of removed paths (8 bytes) and each path, strictly sorted, prefixed by its
//! length (8 bytes). Nothing else may follow.

use std::io::Write as _;
use std::path::Path;

use rustc_hash::FxHashSet;

use crate::protocol::Kind;
use crate::replset::{digest_line, manifest_from_merge};
use crate::snapshot::{canonical_form_of, parse_canonical, Entry, Manifest, Records};
use crate::{fsutil, Error, ErrorKind, Result};

/// Whether a change of `changes` entries (upserted or removed) to a
/// manifest, making one of `entries`, is stored as a delta: when it changes
/// at most one entry in eight (a first sync or a wholesale change is stored
/// whole: its delta would be as large).
pub(crate) fn is_small_change(changes: usize, entries: usize) -> bool {
    changes.saturating_mul(8) <= entries
}

/// The name of a delta file in a transaction or snapshot directory.
pub(crate) const DELTA_FILE: &str = "manifest.delta";

/// The first line of a delta file.
const MAGIC: &[u8] = b"pe_failover manifest delta v1\n";

/// Largest delta file read.
const LIMIT: u64 = 1024 * 1024 * 1024;

/// A delta read from a file (see the [module documentation](self)).
#[derive(Debug)]
pub(crate) struct ManifestDelta {
    /// The digest of the manifest it applies to.
    pub(crate) base: String,
    /// The digest of the manifest it makes.
    pub(crate) digest: String,
    /// The entries it adds or replaces, strictly sorted by path.
    pub(crate) upserts: Vec<Entry>,
    /// The paths it removes, strictly sorted.
    pub(crate) removed: Vec<String>,
}

/// Writes the delta from `base` to `digest` (`upserts` and `removed` in any
/// order) to `path`, a new file with mode 0600, not flushed (the caller
/// flushes it with the rest of its transaction).
pub(crate) fn write_delta(
    path: &Path,
    base: &str,
    digest: &str,
    upserts: &[&Entry],
    removed: &[&str],
) -> Result<()> {
    let mut upserts = upserts.to_vec();
    upserts.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let mut removed = removed.to_vec();
    removed.sort_unstable();
    let form = canonical_form_of(&upserts);
    let mut bytes = Vec::with_capacity(MAGIC.len() + 130 + 16 + form.len() + removed.len() * 64);
    bytes.extend_from_slice(MAGIC);
    for d in [base, digest] {
        bytes.extend_from_slice(d.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(&(form.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&form);
    bytes.extend_from_slice(&(removed.len() as u64).to_le_bytes());
    for p in removed {
        bytes.extend_from_slice(&(p.len() as u64).to_le_bytes());
        bytes.extend_from_slice(p.as_bytes());
    }
    let mut file = fsutil::create_private(path)?;
    file.write_all(&bytes)
        .map_err(|e| Error::io("write", path, e))
}

/// Reads the delta file at `path` (not following a symlink).
/// [`ErrorKind::NotFound`] when there is none; [`ErrorKind::Corrupt`], naming
/// the file, when it is not one.
pub(crate) fn read_delta(path: &Path) -> Result<ManifestDelta> {
    let bytes = fsutil::read_bounded(path, LIMIT)?;
    parse(&bytes).map_err(|why| {
        Error::new(
            ErrorKind::Corrupt,
            format!("manifest delta {} is not valid: {why}", path.display()),
        )
        .with_path(path)
    })
}

/// The base digest recorded at the start of the delta file at `path`
/// (without reading the rest); `None` when there is no such file or it is
/// not one.
pub(crate) fn delta_base(path: &Path) -> Option<String> {
    let head = fsutil::read_head(path, MAGIC.len() + 65)?;
    let (base, _) = digest_line(head.strip_prefix(MAGIC)?)?;
    Some(base.to_string())
}

/// The digest line at the start of `rest`, and what follows it.
fn header_digests(rest: &[u8]) -> std::result::Result<(&str, &[u8]), String> {
    digest_line(rest).ok_or_else(|| "its header has no valid digest (truncated?)".into())
}

fn parse(bytes: &[u8]) -> std::result::Result<ManifestDelta, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a pe_failover manifest delta")?;
    let (base, rest) = header_digests(rest)?;
    let (digest, rest) = header_digests(rest)?;
    let mut r = Records::raw(rest);
    let upserts = parse_canonical(r.field("upserts")?)?;
    let count = r.u64()?;
    // Every path takes at least 9 bytes.
    if count > (r.remaining() / 9) as u64 {
        return Err(format!(
            "{count} removed paths cannot fit in {} bytes",
            r.remaining()
        ));
    }
    let mut removed: Vec<String> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let path = r.text("removed path")?;
        if removed.last().is_some_and(|last| last.as_str() >= path) {
            return Err(format!("removed path {path:?} is out of order"));
        }
        removed.push(path.to_string());
    }
    if r.remaining() > 0 {
        return Err(format!("{} bytes of trailing data", r.remaining()));
    }
    Ok(ManifestDelta {
        base: base.to_string(),
        digest: digest.to_string(),
        upserts,
        removed,
    })
}

impl ManifestDelta {
    /// The manifest this delta makes of `base`, checked by the rules of
    /// `kind` where the delta changes it (`base` passed them when it was
    /// read or built): `base` must have the digest the delta names, every
    /// removed path must be in it and none upserted too. The new digest is
    /// the caller's to check (it hashes the result as it writes it).
    pub(crate) fn apply(&self, kind: Kind, base: &Manifest) -> Result<Manifest> {
        let removed = self.check_base(base)?;
        let upserts: Vec<&Entry> = self.upserts.iter().collect();
        let merged = merge_delta_cloned(base.entries(), &upserts, &removed);
        let removed: Vec<&str> = self.removed.iter().map(String::as_str).collect();
        manifest_from_merge(kind, merged, &upserts, &removed)
    }

    /// [`apply`](Self::apply) to a `base` given away: its entries move into
    /// the new manifest instead of being copied (at 100,000 entries the
    /// copy took 8-15 ms). Also returns the entries of `base` the delta
    /// replaced or removed, in path order: what the caller still needs of
    /// the manifest before (see `apply::Earlier`).
    pub(crate) fn apply_taking(
        &self,
        kind: Kind,
        base: Manifest,
    ) -> Result<(Manifest, Vec<Entry>)> {
        self.check_base(&base)?;
        let upserts: Vec<&Entry> = self.upserts.iter().collect();
        let removed: Vec<&str> = self.removed.iter().map(String::as_str).collect();
        let (merged, replaced) = merge_taking(base.into_entries(), &upserts, &removed);
        let manifest = manifest_from_merge(kind, merged, &upserts, &removed)?;
        Ok((manifest, replaced))
    }

    /// Refuses a `base` the delta does not apply to: another digest than
    /// the one it names, a removed path it lacks, or a path both upserted
    /// and removed. Returns the removed paths.
    fn check_base(&self, base: &Manifest) -> Result<FxHashSet<&str>> {
        let bad = |why: String| Error::new(ErrorKind::Corrupt, why);
        let base_digest = base.digest();
        if base_digest != self.base {
            return Err(bad(format!(
                "the delta applies to the manifest with digest {}, not to {base_digest}",
                self.base
            )));
        }
        let mut removed: FxHashSet<&str> = FxHashSet::default();
        for path in &self.removed {
            if base.get(path).is_none() {
                return Err(bad(format!(
                    "the delta removes {path:?}, which its base does not have"
                )));
            }
            if self
                .upserts
                .binary_search_by(|e| e.path.as_str().cmp(path))
                .is_ok()
            {
                return Err(bad(format!("the delta both upserts and removes {path:?}")));
            }
            removed.insert(path);
        }
        Ok(removed)
    }
}

/// [`merge_delta`] of entries borrowed from `base`, cloned in pieces on
/// all cores (at 100,000 entries, cloning them one by one took about 8 ms):
/// each piece of `base` gets the upserts that sort from its first path to
/// the next piece's.
fn merge_delta_cloned(base: &[Entry], upserts: &[&Entry], removed: &FxHashSet<&str>) -> Vec<Entry> {
    use rayon::prelude::*;
    const PIECE: usize = 16 * 1024;
    let pieces: Vec<&[Entry]> = base.chunks(PIECE).collect();
    let merged: Vec<Vec<Entry>> = (0..pieces.len().max(1))
        .into_par_iter()
        .map(|i| {
            let piece = pieces.get(i).copied().unwrap_or_default();
            // The upserts from this piece's first path (all those before it,
            // for the first piece) to the next piece's first path (all those
            // after it, for the last one).
            let from = match i {
                0 => 0,
                _ => upserts.partition_point(|u| u.path < piece[0].path),
            };
            let to = match pieces.get(i + 1) {
                Some(next) => upserts.partition_point(|u| u.path < next[0].path),
                None => upserts.len(),
            };
            merge_delta(
                piece.iter().cloned(),
                piece.len(),
                &upserts[from..to],
                removed,
            )
        })
        .collect();
    let mut out = Vec::with_capacity(base.len() + upserts.len());
    for piece in merged {
        out.extend(piece);
    }
    out
}

/// The entries of `base` (in path order) with `upserts` put in and the
/// paths `removed` left out, in path order, in `base`'s own memory: an
/// upsert of a path `base` has replaces its entry where it is, the
/// entries after a removed path move up once, and new paths are put in
/// from the last, the entries after each moved up once into the room made
/// at the end. A small change to a large manifest thus moves about its
/// entries once (whatever the number of new paths), and
/// allocates none of them anew (fresh pages of a large buffer cost more to
/// fault in than the moves, much more on a virtual machine whose free
/// memory goes back to the host), unless the new paths outgrow `base`'s
/// capacity. `upserts` and `removed` are sorted by path and share no path.
/// Also returns the entries of `base` at the changed paths, in path order.
pub(crate) fn merge_taking(
    mut entries: Vec<Entry>,
    upserts: &[&Entry],
    removed: &[&str],
) -> (Vec<Entry>, Vec<Entry>) {
    let find =
        |entries: &[Entry], path: &str| entries.binary_search_by(|e| e.path.as_str().cmp(path));
    let mut replaced = Vec::with_capacity(upserts.len() + removed.len());
    let mut new: Vec<Entry> = Vec::new();
    for u in upserts {
        match find(&entries, &u.path) {
            Ok(i) => replaced.push(std::mem::replace(&mut entries[i], (*u).clone())),
            Err(_) => new.push((*u).clone()),
        }
    }
    // (A path also upserted stays: the upsert replaced its entry.)
    let mut gone: Vec<usize> = (removed.iter())
        .filter(|r| {
            upserts
                .binary_search_by(|u| u.path.as_str().cmp(r))
                .is_err()
        })
        .filter_map(|r| find(&entries, r).ok())
        .collect();
    gone.sort_unstable();
    gone.dedup();
    if let Some(&first) = gone.first() {
        // The entries kept move up over the removed ones, which end last.
        let mut next = gone.iter().peekable();
        let mut kept = first;
        for i in first..entries.len() {
            if next.next_if(|&&g| g == i).is_none() {
                entries.swap(kept, i);
                kept += 1;
            }
        }
        replaced.extend(entries.drain(kept..));
        replaced.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }
    // The new paths go in from the last, into room made at the end (empty
    // placeholders, which allocate nothing): the entries after each move
    // once, by swaps, to the end of the room left, and the new one takes
    // the slot before them. Between `old` and `room` are placeholders.
    let mut old = entries.len();
    entries.resize_with(old + new.len(), || Entry::synthetic_dir(""));
    let mut room = entries.len();
    for e in new.into_iter().rev() {
        let at = entries[..old].partition_point(|o| o.path < e.path);
        for i in (at..old).rev() {
            room -= 1;
            entries.swap(i, room);
        }
        room -= 1;
        entries[room] = e;
        old = at;
    }
    (entries, replaced)
}

/// The entries of `base` (in path order, about `len` of them) with
/// `upserts` (in path order) put in and the paths in `removed` left out,
/// in path order.
pub(crate) fn merge_delta(
    base: impl IntoIterator<Item = Entry>,
    len: usize,
    upserts: &[&Entry],
    removed: &FxHashSet<&str>,
) -> Vec<Entry> {
    let mut out = Vec::with_capacity(len + upserts.len());
    let mut ups = upserts.iter().peekable();
    for e in base {
        while let Some(u) = ups.next_if(|u| u.path < e.path) {
            out.push((*u).clone());
        }
        if let Some(u) = ups.next_if(|u| u.path == e.path) {
            out.push((*u).clone());
        } else if !removed.contains(e.path.as_str()) {
            out.push(e);
        }
    }
    out.extend(ups.map(|u| (*u).clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EntryKind;
    use proptest::prelude::*;

    fn entry(path: &str, kind: EntryKind, n: u64) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: n,
            mtime_ns: n as i64,
            sha256: (kind == EntryKind::File).then(|| format!("{n:064x}")),
            target: None,
        }
    }

    /// A CA manifest of `n` certificates.
    fn base(n: u64) -> Manifest {
        let mut entries = vec![
            entry("ca", EntryKind::Dir, 0),
            entry("ca/ca_crt.pem", EntryKind::File, 1),
            entry("ca/serial", EntryKind::File, 2),
            entry("ca/signed", EntryKind::Dir, 0),
        ];
        entries
            .extend((0..n).map(|i| entry(&format!("ca/signed/n{i:03}.pem"), EntryKind::File, i)));
        Manifest::from_entries(entries).unwrap()
    }

    fn written(
        base: &Manifest,
        target: &Manifest,
        upserts: &[&Entry],
        removed: &[&str],
    ) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DELTA_FILE);
        write_delta(&path, &base.digest(), &target.digest(), upserts, removed).unwrap();
        fs_read(&path)
    }

    fn fs_read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any change to a manifest, written as a delta in any order and
        /// read back, makes the changed manifest of the base.
        #[test]
        fn a_delta_read_back_makes_the_manifest_it_was_written_for(
            n in 1u64..40,
            changed in prop::collection::btree_set(0u64..60, 0..8),
            gone in prop::collection::btree_set(0u64..40, 0..5),
        ) {
            let base = base(n);
            let gone: Vec<String> = gone
                .into_iter()
                .filter(|i| *i < n && !changed.contains(i))
                .map(|i| format!("ca/signed/n{i:03}.pem"))
                .collect();
            let upserts: Vec<Entry> = changed
                .iter()
                .map(|i| entry(&format!("ca/signed/n{i:03}.pem"), EntryKind::File, i + 1000))
                .collect();
            let mut target: Vec<Entry> = base
                .entries()
                .iter()
                .filter(|e| !gone.contains(&e.path) && !upserts.iter().any(|u| u.path == e.path))
                .cloned()
                .collect();
            target.extend(upserts.iter().cloned());
            let target = Manifest::from_entries(target).unwrap();
            let mut ups: Vec<&Entry> = upserts.iter().collect();
            ups.reverse();
            let mut rm: Vec<&str> = gone.iter().map(String::as_str).collect();
            rm.reverse();
            let bytes = written(&base, &target, &ups, &rm);
            let delta = parse(&bytes).unwrap();
            prop_assert_eq!(&delta.base, &base.digest());
            prop_assert_eq!(&delta.digest, &target.digest());
            prop_assert_eq!(&delta.upserts, &upserts);
            prop_assert_eq!(&delta.removed, &gone);
            let made = delta.apply(Kind::Ca, &base).unwrap();
            prop_assert_eq!(&made, &target);
            prop_assert_eq!(made.digest(), target.digest());
            // Given the base away: the same manifest, and the base's entries
            // at the changed paths.
            let (taken, replaced) = delta.apply_taking(Kind::Ca, base.clone()).unwrap();
            prop_assert_eq!(&taken, &target);
            let were: Vec<Entry> = base
                .entries()
                .iter()
                .filter(|e| gone.contains(&e.path) || upserts.iter().any(|u| u.path == e.path))
                .cloned()
                .collect();
            prop_assert_eq!(replaced, were);
            // Applied to another manifest: refused.
            let other = crate::snapshot::Manifest::from_entries(base.entries()[..3].to_vec()).unwrap();
            prop_assert!(delta.apply(Kind::Ca, &other).is_err());
        }
    }

    #[test]
    fn merge_taking_works_in_the_memory_of_the_entries_it_is_given() {
        let mut entries: Vec<Entry> = base(50).into();
        entries.reserve(8);
        let memory = entries.as_ptr();
        let upserts = [
            entry("ca/ca_crt.pem", EntryKind::File, 501),
            entry("ca/serial", EntryKind::File, 502),
            entry("ca/signed/n005.pem", EntryKind::File, 505),
            entry("ca/signed/n0105.pem", EntryKind::File, 510),
            entry("ca/signed/n049.pem", EntryKind::File, 549),
            entry("ca/signed/n050.pem", EntryKind::File, 550),
            entry("ca/signed/n051.pem", EntryKind::File, 551),
        ];
        let ups: Vec<&Entry> = upserts.iter().collect();
        let gone = [
            "ca/signed/n000.pem",
            "ca/signed/n020.pem",
            "ca/signed/n030.pem",
        ];
        let removed: FxHashSet<&str> = gone.into_iter().collect();
        let expected = merge_delta(entries.iter().cloned(), entries.len(), &ups, &removed);
        let were: Vec<Entry> = (entries.iter())
            .filter(|e| gone.contains(&e.path.as_str()) || upserts.iter().any(|u| u.path == e.path))
            .cloned()
            .collect();
        let (merged, replaced) = merge_taking(entries, &ups, &gone);
        assert_eq!(merged, expected);
        assert_eq!(replaced, were);
        assert_eq!(
            merged.as_ptr(),
            memory,
            "the entries were moved to new memory"
        );
        // Outgrown: new memory, the same entries; new paths first, last and
        // between most entries.
        let full: Vec<Entry> = base(50).into();
        let mut more: Vec<Entry> = (0..40)
            .map(|i| entry(&format!("ca/signed/n{i:03}x.pem"), EntryKind::File, i))
            .collect();
        more.push(entry("ca/aaa.pem", EntryKind::File, 100));
        more.push(entry("ca/zzz.pem", EntryKind::File, 101));
        more.push(entry("0.pem", EntryKind::File, 102));
        more.sort_by(|a, b| a.path.cmp(&b.path));
        let ups: Vec<&Entry> = more.iter().collect();
        let expected = merge_delta(
            full.iter().cloned(),
            full.len(),
            &ups,
            &FxHashSet::default(),
        );
        assert_eq!(merge_taking(full, &ups, &[]).0, expected);
    }

    #[test]
    fn a_delta_file_cut_short_garbled_or_padded_is_refused() {
        let base = base(5);
        let up = entry("ca/signed/new.pem", EntryKind::File, 77);
        let bytes = written(&base, &base, &[&up], &["ca/signed/n001.pem"]);
        parse(&bytes).unwrap();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "cut to {len} bytes");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(parse(&padded).unwrap_err().contains("trailing"));
        let mut magic = bytes.clone();
        magic[0] = b'P';
        assert!(parse(&magic).unwrap_err().contains("not a pe_failover"));
        let mut digest = bytes.clone();
        digest[MAGIC.len()] = b'G';
        assert!(parse(&digest).unwrap_err().contains("no valid digest"));
        // The removed path's last byte: not UTF-8.
        let mut utf8 = bytes.clone();
        let last = utf8.len() - 1;
        utf8[last] = 0xff;
        assert!(parse(&utf8).unwrap_err().contains("not UTF-8"));

        // Two removed paths out of order, and upserts out of order.
        let swap = |bytes: &[u8], x: &str, y: &str| -> Vec<u8> {
            let find = |b: &[u8], s: &str| b.windows(s.len()).position(|w| w == s.as_bytes());
            let mut out = bytes.to_vec();
            let (i, j) = (find(bytes, x).unwrap(), find(bytes, y).unwrap());
            out[i..i + x.len()].copy_from_slice(y.as_bytes());
            out[j..j + y.len()].copy_from_slice(x.as_bytes());
            out
        };
        let two = written(
            &base,
            &base,
            &[],
            &["ca/signed/n002.pem", "ca/signed/n001.pem"],
        );
        let swapped = swap(&two, "n001", "n002");
        assert!(parse(&swapped).unwrap_err().contains("out of order"));
        let a = entry("ca/signed/a.pem", EntryKind::File, 1);
        let b = entry("ca/signed/b.pem", EntryKind::File, 2);
        let ab = written(&base, &base, &[&a, &b], &[]);
        let ba = swap(&ab, "signed/a.pem", "signed/b.pem");
        assert!(parse(&ba).unwrap_err().contains("out of order"));
    }

    #[test]
    fn a_delta_that_does_not_fit_its_base_is_refused() {
        let base = base(3);
        let delta = |upserts: Vec<Entry>, removed: &[&str]| ManifestDelta {
            base: base.digest(),
            digest: "0".repeat(64),
            upserts,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        };
        let e = delta(vec![], &["ca/signed/n009.pem"])
            .apply(Kind::Ca, &base)
            .unwrap_err();
        assert!(e.message().contains("which its base does not have"), "{e}");
        let again = entry("ca/signed/n001.pem", EntryKind::File, 5);
        let both = delta(vec![again], &["ca/signed/n001.pem"]);
        let e = both.apply(Kind::Ca, &base).unwrap_err();
        assert!(e.message().contains("both upserts and removes"), "{e}");
        let e = both.apply_taking(Kind::Ca, base.clone()).unwrap_err();
        assert!(e.message().contains("both upserts and removes"), "{e}");
        // What the delta changes is checked by the replication rules.
        let orphan = entry("ca/nowhere/x.pem", EntryKind::File, 5);
        let e = delta(vec![orphan.clone()], &[])
            .apply(Kind::Ca, &base)
            .unwrap_err();
        assert!(e.message().contains("no parent directory entry"), "{e}");
        let e = delta(vec![orphan], &[])
            .apply_taking(Kind::Ca, base.clone())
            .unwrap_err();
        assert!(e.message().contains("no parent directory entry"), "{e}");
        let e = delta(vec![], &["ca/signed"])
            .apply(Kind::Ca, &base)
            .unwrap_err();
        assert!(e.message().contains("no parent directory entry"), "{e}");
        let nc = entry("groups.json", EntryKind::File, 5);
        assert!(delta(vec![nc], &[]).apply(Kind::Ca, &base).is_err());
    }

    #[test]
    fn a_merge_cloned_in_pieces_is_the_merge() {
        let base: Vec<Entry> = (0..40_000u64)
            .map(|i| {
                entry(
                    &format!("ca/signed/n{:06}.pem", i * 2 + 1),
                    EntryKind::File,
                    i,
                )
            })
            .collect();
        // Before the first entry, around and at the pieces' first entries
        // (16,384 apart), replacing entries, and after the last.
        let mut at: Vec<u64> = vec![0, 80_000, 80_001];
        for piece in [16_384u64, 32_768] {
            at.extend([piece * 2 - 2, piece * 2 - 1, piece * 2, piece * 2 + 1]);
        }
        at.sort_unstable();
        let upserts: Vec<Entry> = at
            .iter()
            .map(|i| entry(&format!("ca/signed/n{i:06}.pem"), EntryKind::File, 7))
            .collect();
        let ups: Vec<&Entry> = upserts.iter().collect();
        let removed: FxHashSet<&str> = ["ca/signed/n000003.pem", "ca/signed/n032771.pem"]
            .into_iter()
            .collect();
        let cloned = merge_delta_cloned(&base, &ups, &removed);
        let serial = merge_delta(base.iter().cloned(), base.len(), &ups, &removed);
        assert_eq!(cloned, serial);
        let mut gone: Vec<&str> = removed.iter().copied().collect();
        gone.sort_unstable();
        let (taken, replaced) = merge_taking(base.clone(), &ups, &gone);
        assert_eq!(taken, serial);
        let were: Vec<Entry> = base
            .iter()
            .filter(|e| gone.contains(&e.path.as_str()) || ups.iter().any(|u| u.path == e.path))
            .cloned()
            .collect();
        assert_eq!(replaced.len(), 4 + gone.len());
        assert_eq!(replaced, were);
        assert_eq!(cloned.len(), base.len() + upserts.len() - 4 - removed.len());
        assert!(cloned.windows(2).all(|w| w[0].path < w[1].path));
        assert!(merge_delta_cloned(&[], &ups, &removed).len() == ups.len());
    }
}
