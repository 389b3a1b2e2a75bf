//! Manifest diffs.
