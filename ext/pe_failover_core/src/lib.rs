//! The replication engine of the `ipcrm-pe_failover` Puppet module.
//!
//! Everything with logic lives here, free of Ruby: the binding
//! (`pe_failover_native`) only converts values and errors.
//!
//! - [`snapshot`], [`diff`], [`exclude`], [`cache`]: manifests of trees and
//!   their differences.
//! - CA replication, from the active primary to the passive one:
//!   [`replset`] (what is replicated), [`protocol`] (sender and receiver
//!   over any `Read + Write` stream), [`stage`] (received transactions and
//!   snapshots), [`apply`] (the live directories), [`state`] (roles and
//!   status files).
//! - [`classifier`]: Node Classifier group logic; [`ncship`]: shipping the
//!   active's groups through the same transport and applying them on the
//!   passive.
//! - [`runner`]: the commands (`sync`, `receive`, `apply`, `watch`,
//!   `status`) driven by a [`config::Config`].
//!
//! ```ignore
//! use pe_failover_core::snapshot::Scanner;
//!
//! # fn main() -> pe_failover_core::Result<()> {
//! let before = Scanner::new("/etc/puppetlabs/puppetserver/ca").scan()?;
//! // ... a certificate is signed ...
//! let after = Scanner::new("/etc/puppetlabs/puppetserver/ca").scan()?;
//! let changes = pe_failover_core::diff::diff(&before.manifest, &after.manifest);
//! println!("root digest {} -> {}", before.manifest.digest(), after.manifest.digest());
//! for path in changes.added_paths() {
//!     println!("signed: {path}");
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod apply;
mod beneath;
mod bulk;
pub mod cache;
pub mod cancel;
pub mod classifier;
pub mod config;
pub mod diff;
pub mod error;
pub mod exclude;
mod fsutil;
pub mod log;
mod manifest_delta;
pub mod ncship;
mod pack;
pub mod protocol;
pub mod replset;
pub mod runner;
pub mod snapshot;
pub mod ssh;
pub mod stage;
pub mod state;
pub mod watch;

pub use error::{Error, ErrorKind, Result};

/// `d` for a message: whole seconds as `30s`, else to a tenth (`0.2s`).
pub(crate) fn seconds(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The outcome of a thread that returns a [`Result`], from its join: a
/// panic (already reported on stderr by the panic hook) becomes an
/// [`ErrorKind::Internal`] error saying that the thread `doing` it
/// panicked.
pub(crate) fn joined<T>(join: std::thread::Result<Result<T>>, doing: &str) -> Result<T> {
    join.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Internal,
            format!("the thread {doing} panicked"),
        ))
    })
}

/// Drops `value` on a short-lived thread of its own: freeing a large scan
/// or manifest (200,000 allocations at 100k certificates) takes
/// milliseconds a caller that is done with it need not wait for. Dropped
/// here when no thread can be started.
pub(crate) fn drop_in_background<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("pe_failover-drop".into())
        .spawn(move || drop(value));
}
