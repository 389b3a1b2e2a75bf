//! Differences between two manifests.
//!
//! [`diff`] compares an old and a new [`Manifest`] in one pass over both
//! sorted entry lists and returns a [`Changeset`]: the entries added, the
//! entries removed, and for each changed entry which recorded fields differ.
//! The result is sorted by path and deterministic.

use serde::Serialize;

use crate::exclude::Excludes;
use crate::snapshot::{Entry, Manifest};

/// A recorded field of an entry that can differ between two manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// File, directory or symlink.
    Kind,
    /// Permission bits.
    Mode,
    /// Owner user id.
    Uid,
    /// Owner group id.
    Gid,
    /// Size.
    Size,
    /// Modification time.
    Mtime,
    /// File contents (SHA-256).
    Content,
    /// Symlink target.
    Target,
}

impl Field {
    /// The field's lowercase name (`"mode"`, `"content"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::Mode => "mode",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::Size => "size",
            Field::Mtime => "mtime",
            Field::Content => "content",
            Field::Target => "target",
        }
    }
}

/// One entry present in both manifests with different recorded fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The entry as it was.
    pub old: Entry,
    /// The entry as it is now.
    pub new: Entry,
    /// Which fields differ, in [`Field`] order.
    pub fields: Vec<Field>,
}

impl Change {
    /// The changed entry's path.
    pub fn path(&self) -> &str {
        &self.new.path
    }

    /// Whether only metadata changed (the contents or link target did not).
    pub fn metadata_only(&self) -> bool {
        !self.fields.iter().any(|f| {
            matches!(
                f,
                Field::Kind | Field::Content | Field::Target | Field::Size
            )
        })
    }
}

/// What changed from one manifest to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changeset {
    /// Entries only in the new manifest, by path.
    pub added: Vec<Entry>,
    /// Entries in both with different fields, by path.
    pub changed: Vec<Change>,
    /// Entries only in the old manifest, by path.
    pub removed: Vec<Entry>,
}

impl Changeset {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// Number of added, changed and removed entries together.
    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// Paths of the added entries.
    pub fn added_paths(&self) -> impl Iterator<Item = &str> {
        self.added.iter().map(|e| e.path.as_str())
    }

    /// Paths of the changed entries.
    pub fn changed_paths(&self) -> impl Iterator<Item = &str> {
        self.changed.iter().map(Change::path)
    }

    /// Paths of the removed entries.
    pub fn removed_paths(&self) -> impl Iterator<Item = &str> {
        self.removed.iter().map(|e| e.path.as_str())
    }

    /// Bytes of file content the new side has that the old side lacks: the
    /// sizes of added files and of files whose contents changed.
    pub fn content_bytes(&self) -> u64 {
        let added = self
            .added
            .iter()
            .filter(|e| e.sha256.is_some())
            .map(|e| e.size);
        let changed = self
            .changed
            .iter()
            .filter(|c| c.fields.contains(&Field::Content))
            .map(|c| c.new.size);
        added.chain(changed).sum()
    }
}

/// Which fields of `old` and `new` (same path) differ.
pub fn changed_fields(old: &Entry, new: &Entry) -> Vec<Field> {
    let mut fields = Vec::new();
    if old.kind != new.kind {
        fields.push(Field::Kind);
    }
    if old.mode != new.mode {
        fields.push(Field::Mode);
    }
    if old.uid != new.uid {
        fields.push(Field::Uid);
    }
    if old.gid != new.gid {
        fields.push(Field::Gid);
    }
    if old.size != new.size {
        fields.push(Field::Size);
    }
    if old.mtime_ns != new.mtime_ns {
        fields.push(Field::Mtime);
    }
    if old.sha256 != new.sha256 {
        fields.push(Field::Content);
    }
    if old.target != new.target {
        fields.push(Field::Target);
    }
    fields
}

/// Like [`changed_fields`], limited to what two hosts' copies of a tree
/// must share: type, permission bits, contents and link target. Owners and
/// modification times legitimately differ between hosts.
pub fn content_fields(old: &Entry, new: &Entry) -> Vec<Field> {
    let mut fields = changed_fields(old, new);
    fields.retain(|f| {
        matches!(
            f,
            Field::Kind | Field::Mode | Field::Content | Field::Target
        )
    });
    fields
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &Manifest, new: &Manifest) -> Changeset {
    diff_excluding(old, new, &Excludes::default())
}

/// The changes that turn `old` into `new`, ignoring every path matched by
/// `excludes` on either side.
pub fn diff_excluding(old: &Manifest, new: &Manifest, excludes: &Excludes) -> Changeset {
    diff_with(old, new, excludes, changed_fields)
}

/// Like [`diff_excluding`], with `compare` deciding which fields of two
/// entries at the same path count as changed (an empty list means equal).
/// Replication uses it to ignore fields it does not carry, such as owners.
pub fn diff_with<F>(old: &Manifest, new: &Manifest, excludes: &Excludes, compare: F) -> Changeset
where
    F: Fn(&Entry, &Entry) -> Vec<Field>,
{
    let keep = |e: &&Entry| !excludes.is_excluded(&e.path);
    let mut a = old.entries().iter().filter(keep).peekable();
    let mut b = new.entries().iter().filter(keep).peekable();
    let mut out = Changeset::default();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => out.removed.push(a.next().cloned().expect("peeked")),
            (None, Some(_)) => out.added.push(b.next().cloned().expect("peeked")),
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => out.removed.push(a.next().cloned().expect("peeked")),
                std::cmp::Ordering::Greater => out.added.push(b.next().cloned().expect("peeked")),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    let fields = compare(x, y);
                    if !fields.is_empty() {
                        out.changed.push(Change {
                            old: x.clone(),
                            new: y.clone(),
                            fields,
                        });
                    }
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EntryKind;

    fn file(path: &str, sha: char, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 0,
            sha256: Some(sha.to_string().repeat(64)),
            target: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            sha256: None,
            target: None,
        }
    }

    #[test]
    fn reports_added_changed_removed_in_order() {
        let old = Manifest::from_entries(vec![
            dir("signed"),
            file("signed/a.pem", 'a', 0o644),
            file("signed/b.pem", 'b', 0o644),
            file("serial", 'c', 0o644),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![
            dir("signed"),
            file("signed/a.pem", 'a', 0o600),
            file("signed/c.pem", 'c', 0o644),
            file("serial", 'd', 0o644),
        ])
        .unwrap();
        let cs = diff(&old, &new);
        assert_eq!(cs.added_paths().collect::<Vec<_>>(), ["signed/c.pem"]);
        assert_eq!(cs.removed_paths().collect::<Vec<_>>(), ["signed/b.pem"]);
        assert_eq!(
            cs.changed_paths().collect::<Vec<_>>(),
            ["serial", "signed/a.pem"]
        );
        assert_eq!(cs.changed[0].fields, [Field::Content]);
        assert_eq!(cs.changed[1].fields, [Field::Mode]);
        assert!(cs.changed[1].metadata_only());
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn excluded_paths_are_ignored_on_both_sides() {
        let old = Manifest::from_entries(vec![
            dir("private_keys"),
            file("private_keys/x", 'a', 0o600),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![]).unwrap();
        let ex = Excludes::new(["private_keys"]).unwrap();
        assert!(diff_excluding(&old, &new, &ex).is_empty());
        assert_eq!(diff(&old, &new).removed.len(), 2);
    }

    #[test]
    fn manifests_reject_duplicates_orphans_and_unsafe_paths() {
        assert!(Manifest::from_entries(vec![file("a", 'a', 0), file("a", 'b', 0)]).is_err());
        assert!(Manifest::from_entries(vec![file("d/a", 'a', 0)]).is_err());
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", ""] {
            let err = Manifest::from_entries(vec![file(bad, 'a', 0)]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::UnsafePath, "{bad}");
        }
    }
}
