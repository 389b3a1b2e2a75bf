//! Exclusion rules: glob patterns matched against paths relative to a root.
//!
//! Patterns use the usual glob syntax (`*` does not cross `/`, `**` does).
//! A pattern that matches a directory excludes everything below it, so
//! `private_keys` and `private_keys/**` both keep a whole directory out.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{Error, ErrorKind, Result};

/// A compiled set of exclusion patterns.
#[derive(Clone, Debug)]
pub struct Excludes {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for Excludes {
    fn default() -> Self {
        Excludes {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl Excludes {
    /// Compiles `patterns`; an invalid glob gives an
    /// [`ErrorKind::InvalidPattern`] error naming it.
    pub fn new<I, S>(patterns: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let trimmed = pattern.trim_start_matches("./").trim_end_matches('/');
            if trimmed.is_empty() || trimmed.starts_with('/') {
                return Err(Error::new(
                    ErrorKind::InvalidPattern,
                    format!(
                        "invalid exclude pattern {pattern:?}: patterns are relative to the scanned directory and must not be empty or start with '/'"
                    ),
                ));
            }
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidPattern,
                        format!("invalid exclude pattern {pattern:?}: {e}"),
                    )
                })?;
            builder.add(glob);
            kept.push(pattern.to_string());
        }
        let set = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::InvalidPattern,
                format!("invalid exclude patterns: {e}"),
            )
        })?;
        Ok(Excludes {
            patterns: kept,
            set,
        })
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `rel` (a `/`-separated path relative to the root) or any of its
    /// parent directories matches a pattern.
    pub fn is_excluded(&self, rel: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        if self.set.is_match(rel) {
            return true;
        }
        let mut end = rel.len();
        while let Some(pos) = rel[..end].rfind('/') {
            if self.set.is_match(&rel[..pos]) {
                return true;
            }
            end = pos;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_patterns_cover_their_contents() {
        let ex = Excludes::new(["private_keys", "*.tmp"]).unwrap();
        assert!(ex.is_excluded("private_keys"));
        assert!(ex.is_excluded("private_keys/a.pem"));
        assert!(ex.is_excluded("x.tmp"));
        assert!(!ex.is_excluded("signed/x.tmp.pem"));
        assert!(!ex.is_excluded("certs/ca.pem"));
        // `*` does not cross directories
        assert!(!ex.is_excluded("signed/a.tmp"));
    }

    #[test]
    fn double_star_crosses_directories() {
        let ex = Excludes::new(["**/*.tmp"]).unwrap();
        assert!(ex.is_excluded("signed/a.tmp"));
        assert!(ex.is_excluded("a.tmp"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Excludes::new(["signed/[a"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPattern);
        assert!(err.to_string().contains("signed/[a"));
        assert_eq!(
            Excludes::new(["/etc"]).unwrap_err().kind(),
            ErrorKind::InvalidPattern
        );
    }
}
