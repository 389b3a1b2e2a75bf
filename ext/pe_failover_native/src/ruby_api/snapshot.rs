//! Snapshot primitives: scan a tree, digest it, diff two trees.

use std::path::PathBuf;

use magnus::{function, Error, RHash, RModule, Ruby};
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::diff::{self, Changeset};
use pe_failover_core::exclude::Excludes;
use pe_failover_core::snapshot::{Entry, Scan, Scanner};

use crate::helpers::errors::IntoRuby;
use crate::helpers::nogvl::{guard, without_gvl};

pub fn init(native: &RModule) -> Result<(), Error> {
    native.define_module_function("_scan", function!(scan, 4))?;
    native.define_module_function("_diff", function!(diff_dirs, 4))?;
    Ok(())
}

fn scanner(
    root: String,
    excludes: &Excludes,
    cache: Option<String>,
    token: &CancelToken,
) -> Scanner {
    let mut s = Scanner::new(PathBuf::from(root))
        .excludes(excludes.clone())
        .cancel_token(token.clone());
    if let Some(cache) = cache {
        s = s.cache_file(cache);
    }
    s
}

/// `_scan(root, excludes, cache_file_or_nil, with_entries)` → Hash with
/// `"digest"`, `"count"`, `"stats"`, `"problems"` and, when asked,
/// `"entries"`. Problems with single entries are returned, not raised.
fn scan(
    ruby: &Ruby,
    root: String,
    excludes: Vec<String>,
    cache: Option<String>,
    with_entries: bool,
) -> Result<RHash, Error> {
    guard(ruby, || {
        let excludes = Excludes::new(&excludes).into_ruby(ruby)?;
        let token = CancelToken::new();
        let scanner = scanner(root.clone(), &excludes, cache, &token);
        let scan: Scan = without_gvl(ruby, &token, move || scanner.scan())?.into_ruby(ruby)?;
        let out = ruby.hash_new();
        out.aset("root", root)?;
        out.aset("digest", scan.manifest.digest())?;
        out.aset("count", scan.manifest.len())?;
        let stats = ruby.hash_new();
        stats.aset("entries", scan.stats.entries)?;
        stats.aset("files", scan.stats.files)?;
        stats.aset("hashed", scan.stats.hashed)?;
        stats.aset("cached", scan.stats.cached)?;
        stats.aset("bytes_hashed", scan.stats.bytes_hashed)?;
        stats.aset("vanished", scan.stats.vanished)?;
        stats.aset("excluded", scan.stats.excluded)?;
        stats.aset("cache", cache_status(&scan.stats.cache))?;
        stats.aset("seconds", scan.stats.elapsed.as_secs_f64())?;
        out.aset("stats", stats)?;
        let problems = ruby.ary_new();
        for p in &scan.problems {
            let h = ruby.hash_new();
            h.aset("kind", p.kind().as_str())?;
            h.aset("path", p.path().map(|p| p.display().to_string()))?;
            h.aset("message", p.to_string())?;
            problems.push(h)?;
        }
        out.aset("problems", problems)?;
        if with_entries {
            let entries = ruby.ary_new_capa(scan.manifest.len());
            for e in scan.manifest.entries() {
                entries.push(entry_hash(ruby, e)?)?;
            }
            out.aset("entries", entries)?;
        }
        Ok(out)
    })
}

fn cache_status(status: &pe_failover_core::cache::CacheStatus) -> String {
    use pe_failover_core::cache::CacheStatus::*;
    match status {
        Disabled => "disabled".into(),
        Missing => "missing".into(),
        Loaded => "loaded".into(),
        Ignored(why) => format!("ignored: {why}"),
        WriteFailed(why) => format!("write failed: {why}"),
    }
}

fn entry_hash(ruby: &Ruby, e: &Entry) -> Result<RHash, Error> {
    let h = ruby.hash_new();
    h.aset("path", e.path.as_str())?;
    h.aset("kind", e.kind.as_str())?;
    h.aset("mode", e.mode)?;
    h.aset("uid", e.uid)?;
    h.aset("gid", e.gid)?;
    h.aset("size", e.size)?;
    h.aset("mtime_ns", e.mtime_ns)?;
    h.aset("sha256", e.sha256.as_deref())?;
    h.aset("target", e.target.as_deref())?;
    Ok(h)
}

/// `_diff(from_dir, to_dir, excludes, mode)` → Hash with `"added"`,
/// `"removed"` (paths), `"changed"` (`{"path","fields"}`), and both digests.
/// `mode` `"content"` compares type, permission bits, contents and link
/// targets; `"all"` also owners and mtimes. Raises if either tree has an
/// entry that cannot be read: a partial comparison would mislead.
fn diff_dirs(
    ruby: &Ruby,
    from: String,
    to: String,
    excludes: Vec<String>,
    mode: String,
) -> Result<RHash, Error> {
    guard(ruby, || {
        let excludes = Excludes::new(&excludes).into_ruby(ruby)?;
        let content_only = match mode.as_str() {
            "content" => true,
            "all" => false,
            other => {
                return Err(crate::helpers::errors::to_ruby(
                    ruby,
                    pe_failover_core::Error::new(
                        pe_failover_core::ErrorKind::InvalidInput,
                        format!("unknown diff mode {other:?} (use \"content\" or \"all\")"),
                    ),
                ))
            }
        };
        let token = CancelToken::new();
        let a = scanner(from, &excludes, None, &token);
        let b = scanner(to, &excludes, None, &token);
        let result = without_gvl(ruby, &token, move || {
            let (a, b) = rayon::join(|| a.scan(), || b.scan());
            let a = a?.into_complete()?;
            let b = b?.into_complete()?;
            let cs = if content_only {
                diff::diff_with(&a, &b, &Excludes::default(), diff::content_fields)
            } else {
                diff::diff(&a, &b)
            };
            Ok::<_, pe_failover_core::Error>((a.digest(), b.digest(), cs))
        })?
        .into_ruby(ruby)?;
        let (from_digest, to_digest, cs) = result;
        changeset_hash(ruby, &cs, from_digest, to_digest)
    })
}

fn changeset_hash(ruby: &Ruby, cs: &Changeset, from: String, to: String) -> Result<RHash, Error> {
    let out = ruby.hash_new();
    let added = ruby.ary_from_iter(cs.added_paths());
    let removed = ruby.ary_from_iter(cs.removed_paths());
    let changed = ruby.ary_new_capa(cs.changed.len());
    for c in &cs.changed {
        let h = ruby.hash_new();
        h.aset("path", c.path())?;
        let fields = ruby.ary_from_iter(c.fields.iter().map(|f| f.as_str()));
        h.aset("fields", fields)?;
        changed.push(h)?;
    }
    out.aset("added", added)?;
    out.aset("changed", changed)?;
    out.aset("removed", removed)?;
    out.aset("from_digest", from)?;
    out.aset("to_digest", to)?;
    Ok(out)
}
