//! Ruby binding of `pe_failover_core`, loaded by the pe_failover Puppet
//! module as `PuppetX::PeFailover::Native`.
//!
//! This crate only converts values, releases the GVL around long work, and
//! turns every core error and every panic into an ordinary Ruby exception.
//! All logic lives in `pe_failover_core`; idiomatic Ruby (keyword arguments,
//! defaults, docs) lives in `lib/puppet_x/pe_failover/`.

mod helpers;
mod ruby_api;

use magnus::{Error, Ruby};

/// The allocator of everything this library allocates (Ruby keeps its own):
/// mimalloc, for the scans and manifests of one record per certificate,
/// which it builds and frees faster than the C library's allocator (README,
/// Benchmarks). Nothing allocated here is freed by Ruby or the reverse:
/// values cross the binding as copies.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[magnus::init]
fn init(ruby: &Ruby) -> Result<(), Error> {
    ruby_api::init(ruby)
}
