//! Directory snapshots.
