//! Hostname transform: rewrite the active primary's hostname to the
//! passive's wherever it is used as a host.
//!
//! # What is rewritten
//!
//! String values, recursively through arrays and objects (object *values*,
//! never keys), in:
//!
//! - `rule`: the value of every operation (`["=", "name", "<host>"]`, the
//!   pins of PE infrastructure groups, nc-api §5.4). Operators and fact paths
//!   (such as the field name `"name"`) are never touched. A rule that does not
//!   follow the grammar is walked as plain JSON (every string element).
//! - `classes` parameters, `config_data` and `variables`.
//!
//! A hostname is found only as a whole *host token*: the text between two
//! characters that cannot be part of a hostname (the hostname characters are
//! `[A-Za-z0-9.-]`). So these are all rewritten — the exact string, `host:port`,
//! URLs (`https://host:8140/x`, `pcp://host/x`), `user@host`, and hosts inside
//! comma- or space-separated lists — while longer names that merely contain
//! the host (`xmaster1.puppet.vm`, `db-master1.puppet.vm`,
//! `master1.puppet.vmx`, `master1.puppet.vm.example`) are left alone. One
//! trailing dot (`master1.puppet.vm.` as a fully qualified name, or ending a
//! sentence) still counts as the host. Matching is case-sensitive.
//!
//! In the value of a `~` (regular expression) rule, a host written with
//! escaped dots (`^master1\.puppet\.vm$`, `\bmaster1\.puppet\.vm\b`) is
//! recognised too and rewritten with escaped dots. An escape next to the host
//! that can match hostname characters (`\d`, `\w`, ...) prevents a match, as
//! the expression may then be about longer names: that errs towards a missed
//! rewrite, never a wrong one.
//!
//! # What is not rewritten (a choice)
//!
//! `id`, `parent`, `name`, `environment` and `description` of groups: ids are
//! not hosts, group names and descriptions are labels for people (PE's own
//! group names never contain the host), and keeping them lets the diff match
//! groups by id on both primaries. Read-only keys (`deleted`, ...) are not
//! written back, so they are not rewritten either.
//!
//! `ncio transform` rewrites rules and the parameters of `puppet_enterprise*`
//! classes; this transform covers those and also other classes, `config_data`
//! and `variables` (for example a `server_list` of `"host:8140"` strings).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::model::Group;
use crate::error::{Error, ErrorKind, Result};

/// The operators of a rule operation (nc-api §5.1).
const OPERATORS: [&str; 6] = ["=", "~", ">", ">=", "<", "<="];

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// A checked set of hostname mappings, applied all at once (so `a→b` with
/// `b→a` swaps the two names).
#[derive(Clone, Debug)]
pub struct HostMap {
    map: HashMap<String, String>,
}

impl HostMap {
    /// Checks `mappings` (`(from, to)` pairs) and builds the map.
    ///
    /// Both names must be non-empty, made only of `[A-Za-z0-9.-]`, and not
    /// start or end with `.` or `-`. A `from` may appear only once. Pairs with
    /// `from == to` are accepted and change nothing.
    pub fn new<A: AsRef<str>, B: AsRef<str>>(mappings: &[(A, B)]) -> Result<HostMap> {
        let mut map = HashMap::with_capacity(mappings.len());
        for (from, to) in mappings {
            let (from, to) = (from.as_ref(), to.as_ref());
            check_hostname(from)?;
            check_hostname(to)?;
            if map.insert(from.to_owned(), to.to_owned()).is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("hostname {from:?} is mapped more than once"),
                ));
            }
        }
        map.retain(|from, to| from != to);
        Ok(HostMap { map })
    }

    /// Whether the map rewrites nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Rewrites every host token of `text` that is mapped; `None` when
    /// nothing was rewritten.
    ///
    /// ```
    /// use pe_failover_core::classifier::HostMap;
    /// let map = HostMap::new(&[("master1.puppet.vm", "master2.puppet.vm")])?;
    /// assert_eq!(
    ///     map.rewrite("https://master1.puppet.vm:8140, db-master1.puppet.vm").as_deref(),
    ///     Some("https://master2.puppet.vm:8140, db-master1.puppet.vm"),
    /// );
    /// assert_eq!(map.rewrite("master1.puppet.vm.example"), None);
    /// # Ok::<(), pe_failover_core::Error>(())
    /// ```
    pub fn rewrite(&self, text: &str) -> Option<String> {
        self.rewrite_tokens(text, false)
    }

    /// Like [`HostMap::rewrite`], for a regular expression: a host written
    /// with escaped dots (`master1\.puppet\.vm`) also matches, and is replaced
    /// with the new name's dots escaped.
    pub fn rewrite_regex(&self, text: &str) -> Option<String> {
        self.rewrite_tokens(text, true)
    }

    fn rewrite_tokens(&self, text: &str, regex: bool) -> Option<String> {
        if self.map.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        // In a regex, `\.` and `\-` are escaped hostname characters.
        let escaped_host_char =
            |i: usize| regex && bytes[i] == b'\\' && matches!(bytes.get(i + 1), Some(b'.' | b'-'));
        let mut out: Option<String> = None;
        let mut copied = 0; // bytes of `text` already handled in `out`
        let mut safe_before = true; // may a host start after the last delimiter?
        let mut i = 0;
        while i < bytes.len() {
            if !is_host_byte(bytes[i]) && !escaped_host_char(i) {
                if regex && bytes[i] == b'\\' {
                    // an escape such as `\b` or `\d`: skip it as one delimiter
                    safe_before = regex_escape_is_boundary(bytes.get(i + 1).copied());
                    i += 2;
                } else {
                    safe_before = true;
                    i += 1;
                }
                continue;
            }
            // A maximal run of hostname characters (and escaped ones).
            let start = i;
            let mut escaped = false;
            while i < bytes.len() {
                if is_host_byte(bytes[i]) {
                    i += 1;
                } else if escaped_host_char(i) {
                    escaped = true;
                    i += 2;
                } else {
                    break;
                }
            }
            let safe_after = !(regex && bytes.get(i) == Some(&b'\\'))
                || regex_escape_is_boundary(bytes.get(i + 1).copied());
            if !(safe_before && safe_after) {
                continue;
            }
            // Runs start and end at ASCII bytes, so these are char boundaries.
            let run = &text[start..i];
            let (host, trailing): (Cow<'_, str>, &str) = if escaped {
                let plain = run.replace("\\.", ".").replace("\\-", "-");
                let trailing = if run.ends_with("\\.") {
                    "\\."
                } else if run.ends_with('.') {
                    "."
                } else {
                    ""
                };
                let host = match plain.strip_suffix('.') {
                    Some(h) => h.to_owned(),
                    None => plain,
                };
                (Cow::Owned(host), trailing)
            } else {
                match run.strip_suffix('.') {
                    Some(h) => (Cow::Borrowed(h), "."),
                    None => (Cow::Borrowed(run), ""),
                }
            };
            let Some(to) = self.map.get(host.as_ref()) else {
                continue;
            };
            // escape the new name's dots only if the old name's were
            let escape_to = escaped && run[..run.len() - trailing.len()].contains("\\.");
            let buf = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
            buf.push_str(&text[copied..start]);
            if escape_to {
                buf.push_str(&to.replace('.', "\\."));
            } else {
                buf.push_str(to);
            }
            buf.push_str(trailing);
            copied = i;
        }
        out.map(|mut buf| {
            buf.push_str(&text[copied..]);
            buf
        })
    }
}

/// Whether a regular-expression escape `\<c>` next to a host keeps it a
/// whole host: yes for `\b`, `\s`, `\A`, `\z`, `\Z` and escaped
/// punctuation (`\/`, `\(`), no for escapes that can match hostname
/// characters (`\d`, `\w`, `\S`, `\B`, ...), which could make the
/// expression match a longer name.
fn regex_escape_is_boundary(c: Option<u8>) -> bool {
    match c {
        Some(c) if c.is_ascii_alphanumeric() => matches!(c, b'b' | b's' | b'A' | b'z' | b'Z'),
        _ => true,
    }
}

fn check_hostname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.bytes().all(is_host_byte)
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{name:?} is not a hostname (expected letters, digits, `.` and `-`, \
                 not starting or ending with `.` or `-`)"
            ),
        ))
    }
}

/// One rewritten value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// The id of the group.
    pub group_id: String,
    /// The name of the group.
    pub group_name: String,
    /// Where in the group: `rule[1][2]`,
    /// `classes.puppet_enterprise.puppet_master_host`,
    /// `classes.puppet_enterprise.mcollective_middleware_hosts[0]`,
    /// `config_data.<class>.<key>`, `variables.<name>`.
    pub location: String,
    /// The string before.
    pub old: String,
    /// The string after.
    pub new: String,
}

/// What a transform rewrote, in group order then location order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransformReport {
    /// Every rewritten value.
    pub rewrites: Vec<Rewrite>,
}

impl TransformReport {
    /// Whether nothing was rewritten.
    pub fn is_empty(&self) -> bool {
        self.rewrites.is_empty()
    }

    /// The ids of the groups that changed, each once, in order.
    pub fn changed_group_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::new();
        for r in &self.rewrites {
            if ids.last() != Some(&r.group_id.as_str()) {
                ids.push(&r.group_id);
            }
        }
        ids.dedup();
        ids
    }
}

/// Returns a transformed copy of `groups` and what was rewritten.
///
/// `mappings` are `(from, to)` hostname pairs, applied simultaneously; see
/// the module documentation for where and how hosts are matched.
///
/// ```
/// use pe_failover_core::classifier::{parse_dump, transform};
/// let dump = r#"[{"id":"00000000-0000-4000-8000-000000000000",
///   "parent":"00000000-0000-4000-8000-000000000000","name":"All Nodes",
///   "environment":"production","environment_trumps":false,
///   "rule":["or",["=","name","master1.puppet.vm"]],
///   "classes":{"puppet_enterprise":{"puppet_master_host":"master1.puppet.vm"}},
///   "variables":{}}]"#;
/// let groups = parse_dump(dump)?;
/// let (out, report) = transform(&groups, &[("master1.puppet.vm", "master2.puppet.vm")])?;
/// assert_eq!(report.rewrites.len(), 2);
/// assert_eq!(report.rewrites[0].location, "rule[1][2]");
/// assert_eq!(out[0].classes["puppet_enterprise"]["puppet_master_host"], "master2.puppet.vm");
/// # Ok::<(), pe_failover_core::Error>(())
/// ```
pub fn transform<A: AsRef<str>, B: AsRef<str>>(
    groups: &[Group],
    mappings: &[(A, B)],
) -> Result<(Vec<Group>, TransformReport)> {
    let mut out = groups.to_vec();
    let report = transform_in_place(&mut out, mappings)?;
    Ok((out, report))
}

/// Transforms `groups` in place; see [`transform`].
pub fn transform_in_place<A: AsRef<str>, B: AsRef<str>>(
    groups: &mut [Group],
    mappings: &[(A, B)],
) -> Result<TransformReport> {
    let map = HostMap::new(mappings)?;
    Ok(transform_with(groups, &map))
}

/// Transforms `groups` in place with an already checked [`HostMap`].
pub fn transform_with(groups: &mut [Group], map: &HostMap) -> TransformReport {
    let mut rewrites = Vec::new();
    if map.is_empty() {
        return TransformReport { rewrites };
    }
    for group in groups.iter_mut() {
        let mut walker = Walker {
            map,
            group_id: &group.id,
            group_name: &group.name,
            rewrites: &mut rewrites,
            location: String::with_capacity(64),
        };
        if let Some(rule) = group.rule.as_mut() {
            walker.location.push_str("rule");
            walker.rule(rule);
            walker.location.clear();
        }
        for (section, classes) in [
            ("classes", Some(&mut group.classes)),
            ("config_data", group.config_data.as_mut()),
        ] {
            for (class, params) in classes.into_iter().flatten() {
                for (param, value) in params.iter_mut() {
                    walker.location.clear();
                    walker.location.push_str(section);
                    walker.location.push('.');
                    walker.location.push_str(class);
                    walker.location.push('.');
                    walker.location.push_str(param);
                    walker.value(value, false);
                }
            }
        }
        for (name, value) in group.variables.iter_mut() {
            walker.location.clear();
            walker.location.push_str("variables.");
            walker.location.push_str(name);
            walker.value(value, false);
        }
    }
    TransformReport { rewrites }
}

struct Walker<'a> {
    map: &'a HostMap,
    group_id: &'a str,
    group_name: &'a str,
    rewrites: &'a mut Vec<Rewrite>,
    location: String,
}

impl Walker<'_> {
    /// Walks a rule condition following the grammar; only operation values
    /// are rewritten.
    fn rule(&mut self, cond: &mut Value) {
        let Value::Array(items) = cond else {
            return self.value(cond, false);
        };
        let head = items.first().and_then(Value::as_str).map(str::to_owned);
        match head.as_deref() {
            Some("and" | "or") if items.len() >= 2 => {
                for (i, sub) in items.iter_mut().enumerate().skip(1) {
                    self.indexed(i, |w| w.rule(sub));
                }
            }
            Some("not") if items.len() == 2 => {
                self.indexed(1, |w| w.rule(&mut items[1]));
            }
            Some(op) if OPERATORS.contains(&op) && items.len() == 3 => {
                let regex = op == "~";
                self.indexed(2, |w| w.value(&mut items[2], regex));
            }
            _ => self.value(cond, false),
        }
    }

    fn indexed(&mut self, index: usize, f: impl FnOnce(&mut Self)) {
        let len = self.location.len();
        self.location.push('[');
        self.location.push_str(&index.to_string());
        self.location.push(']');
        f(self);
        self.location.truncate(len);
    }

    /// Rewrites string leaves of a JSON value (object values, not keys).
    fn value(&mut self, value: &mut Value, regex: bool) {
        match value {
            Value::String(s) => {
                let new = if regex {
                    self.map.rewrite_regex(s)
                } else {
                    self.map.rewrite(s)
                };
                if let Some(new) = new {
                    let old = std::mem::replace(s, new);
                    self.rewrites.push(Rewrite {
                        group_id: self.group_id.to_owned(),
                        group_name: self.group_name.to_owned(),
                        location: self.location.clone(),
                        old,
                        new: s.clone(),
                    });
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.indexed(i, |w| w.value(item, regex));
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let len = self.location.len();
                    self.location.push('.');
                    self.location.push_str(key);
                    self.value(item, regex);
                    self.location.truncate(len);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::model::{groups_from_value, ROOT_GROUP_ID};
    use serde_json::json;

    const H1: &str = "master1.puppet.vm";
    const H2: &str = "master2.puppet.vm";

    fn one() -> HostMap {
        HostMap::new(&[(H1, H2)]).unwrap()
    }

    #[test]
    fn rewrites_host_tokens() {
        let m = one();
        for (input, want) in [
            ("master1.puppet.vm", "master2.puppet.vm"),
            ("master1.puppet.vm:8140", "master2.puppet.vm:8140"),
            (
                "https://master1.puppet.vm:8140/puppet-ca/v1",
                "https://master2.puppet.vm:8140/puppet-ca/v1",
            ),
            (
                "pcp://master1.puppet.vm/server",
                "pcp://master2.puppet.vm/server",
            ),
            (
                "a.example,master1.puppet.vm:8140,b",
                "a.example,master2.puppet.vm:8140,b",
            ),
            (
                "master1.puppet.vm master1.puppet.vm",
                "master2.puppet.vm master2.puppet.vm",
            ),
            ("x, master1.puppet.vm", "x, master2.puppet.vm"),
            ("pe-admin@master1.puppet.vm", "pe-admin@master2.puppet.vm"),
            ("master1.puppet.vm.", "master2.puppet.vm."),
            ("see master1.puppet.vm. Then", "see master2.puppet.vm. Then"),
            ("[master1.puppet.vm]", "[master2.puppet.vm]"),
            ("é master1.puppet.vm é", "é master2.puppet.vm é"),
        ] {
            assert_eq!(m.rewrite(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn never_touches_longer_names() {
        let m = one();
        for input in [
            "master1.puppet.vm.example",
            "xmaster1.puppet.vm",
            "master1.puppet.vmx",
            "db-master1.puppet.vm",
            "master1.puppet.vm-2",
            "master1.puppet.vm..",
            ".master1.puppet.vm",
            "MASTER1.puppet.vm",
            "Master1.Puppet.VM",
            "master1",
            "master1.puppet",
            "https://db-master1.puppet.vm:8140",
            "",
        ] {
            assert_eq!(m.rewrite(input), None, "{input}");
        }
    }

    #[test]
    fn regex_values_with_escaped_dots() {
        let m = one();
        assert_eq!(
            m.rewrite_regex(r"^master1\.puppet\.vm$").as_deref(),
            Some(r"^master2\.puppet\.vm$")
        );
        assert_eq!(
            m.rewrite_regex(r"^(master1\.puppet\.vm|other)$").as_deref(),
            Some(r"^(master2\.puppet\.vm|other)$")
        );
        assert_eq!(
            m.rewrite_regex("^master1.puppet.vm$").as_deref(),
            Some("^master2.puppet.vm$")
        );
        assert_eq!(m.rewrite_regex(r"^master1\.puppet\.vm\.example$"), None);
        assert_eq!(m.rewrite_regex(r"^db-master1\.puppet\.vm$"), None);
        assert_eq!(
            m.rewrite_regex(r"\bmaster1\.puppet\.vm\b").as_deref(),
            Some(r"\bmaster2\.puppet\.vm\b")
        );
        assert_eq!(
            m.rewrite_regex(r"^https?://master1\.puppet\.vm\/")
                .as_deref(),
            Some(r"^https?://master2\.puppet\.vm\/")
        );
        assert_eq!(m.rewrite_regex(r"master1\.puppet\.vm\d"), None);
        assert_eq!(m.rewrite_regex(r"\wmaster1\.puppet\.vm"), None);
        assert_eq!(m.rewrite_regex(r"master1\.puppet\.vm\-2"), None);
        assert_eq!(
            m.rewrite_regex(r"\\master1.puppet.vm"),
            Some(r"\\master2.puppet.vm".into())
        );
        assert_eq!(
            m.rewrite_regex("master1.puppet.vm\\"),
            Some("master2.puppet.vm\\".into())
        );
        assert_eq!(m.rewrite_regex("\\"), None);
        // dots are escaped in the new name only if they were in the old one
        assert_eq!(
            m.rewrite_regex(r"^master1.puppet.vm\.$").as_deref(),
            Some(r"^master2.puppet.vm\.$")
        );
        // plain mode does not unescape
        assert_eq!(m.rewrite(r"^master1\.puppet\.vm$"), None);
    }

    #[test]
    fn several_mappings_apply_at_once() {
        let m = HostMap::new(&[("a.example", "b.example"), ("b.example", "a.example")]).unwrap();
        assert_eq!(
            m.rewrite("a.example,b.example").as_deref(),
            Some("b.example,a.example")
        );
        let m =
            HostMap::new(&[("a.example", "c.example"), ("a.example.net", "d.example")]).unwrap();
        assert_eq!(
            m.rewrite("a.example a.example.net").as_deref(),
            Some("c.example d.example")
        );
    }

    #[test]
    fn bad_mappings_are_errors() {
        for (from, to) in [
            ("", "x"),
            ("x", ""),
            ("a b", "c"),
            ("a", "b/c"),
            (".a", "b"),
            ("a.", "b"),
            ("a", "-b"),
        ] {
            let err = HostMap::new(&[(from, to)]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{from} {to}");
        }
        assert!(HostMap::new(&[("a", "b"), ("a", "c")]).is_err());
        assert!(HostMap::new(&[("a", "a")]).unwrap().is_empty());
    }

    #[test]
    fn walks_rules_params_config_data_and_variables_but_not_names_or_keys() {
        let groups = groups_from_value(&json!([{
            "id": ROOT_GROUP_ID, "parent": ROOT_GROUP_ID,
            "name": "master1.puppet.vm", "description": "pinned to master1.puppet.vm",
            "environment": "production", "environment_trumps": false,
            "rule": ["or", ["and", ["=", ["trusted", "extensions", "pp_auth_role"], "pe_compiler"]],
                     ["=", "name", "master1.puppet.vm"],
                     ["not", ["~", "name", "^master1\\.puppet\\.vm$"]],
                     ["=", "master1.puppet.vm", "x"]],
            "classes": {"puppet_enterprise::profile::master": {
                "puppetdb_host": ["master1.puppet.vm", "db-master1.puppet.vm"],
                "master1.puppet.vm": "key stays",
                "nested": {"master1.puppet.vm": {"url": "https://master1.puppet.vm:8081"}}}},
            "config_data": {"c": {"server_list": "master1.puppet.vm:8140,compiler.puppet.vm:8140"}},
            "variables": {"primary": "master1.puppet.vm", "n": 1}
        }]))
        .unwrap();
        let (out, report) = transform(&groups, &[(H1, H2)]).unwrap();
        let g = &out[0];
        assert_eq!(g.name, "master1.puppet.vm");
        assert_eq!(
            g.description.as_deref(),
            Some("pinned to master1.puppet.vm")
        );
        let locations: Vec<(&str, &str)> = report
            .rewrites
            .iter()
            .map(|r| (r.location.as_str(), r.new.as_str()))
            .collect();
        assert_eq!(
            locations,
            vec![
                ("rule[2][2]", "master2.puppet.vm"),
                ("rule[3][1][2]", "^master2\\.puppet\\.vm$"),
                (
                    "classes.puppet_enterprise::profile::master.nested.master1.puppet.vm.url",
                    "https://master2.puppet.vm:8081"
                ),
                (
                    "classes.puppet_enterprise::profile::master.puppetdb_host[0]",
                    "master2.puppet.vm"
                ),
                (
                    "config_data.c.server_list",
                    "master2.puppet.vm:8140,compiler.puppet.vm:8140"
                ),
                ("variables.primary", "master2.puppet.vm"),
            ]
        );
        // a field name in an operation is not a value
        assert_eq!(g.rule.as_ref().unwrap()[4][1], "master1.puppet.vm");
        let params = &g.classes["puppet_enterprise::profile::master"];
        assert_eq!(params["puppetdb_host"][1], "db-master1.puppet.vm");
        assert_eq!(params["master1.puppet.vm"], "key stays");
        assert!(params["nested"].get("master1.puppet.vm").is_some());
        assert_eq!(report.rewrites[0].old, "master1.puppet.vm");
        assert_eq!(report.changed_group_ids(), vec![ROOT_GROUP_ID]);
        // transforming again changes nothing
        let (again, report) = transform(&out, &[(H1, H2)]).unwrap();
        assert!(report.is_empty());
        assert_eq!(again, out);
    }

    proptest::proptest! {
        /// Any text, either mode: no panic; only host tokens change, so
        /// mapping back restores the text (when the new name was not already
        /// in it); a mapping to itself changes nothing.
        #[test]
        fn rewrite_round_trips(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "master1.puppet.vm", "master2.puppet.vm", ".", "-", "x", ":", "/", ",", " ",
                "\\", "\\.", "\\b", "\\d", "db-", "é", "8140", "$", "^",
            ]),
            0..12,
        ), regex: bool) {
            let text: String = parts.concat();
            let there = HostMap::new(&[(H1, H2)]).unwrap();
            let back = HostMap::new(&[(H2, H1)]).unwrap();
            let run = |m: &HostMap, t: &str| if regex { m.rewrite_regex(t) } else { m.rewrite(t) };
            if run(&back, &text).is_none() {
                if let Some(new) = run(&there, &text) {
                    proptest::prop_assert!(!new.is_empty());
                    proptest::prop_assert_eq!(run(&back, &new), Some(text.clone()));
                }
            }
            proptest::prop_assert_eq!(run(&HostMap::new(&[(H1, H1)]).unwrap(), &text), None);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".*") {
            let m = one();
            let _ = m.rewrite(&text);
            let _ = m.rewrite_regex(&text);
        }
    }

    #[test]
    fn malformed_rules_are_walked_as_plain_json() {
        let groups = groups_from_value(&json!([{
            "id": ROOT_GROUP_ID, "parent": ROOT_GROUP_ID, "name": "x",
            "environment": "production", "environment_trumps": false,
            "rule": ["weird", {"k": "master1.puppet.vm"}],
            "classes": {}, "variables": {}}]))
        .unwrap();
        let (_, report) = transform(&groups, &[(H1, H2)]).unwrap();
        assert_eq!(report.rewrites[0].location, "rule[1].k");
    }
}
