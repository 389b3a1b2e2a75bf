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

#[magnus::init]
fn init(ruby: &Ruby) -> Result<(), Error> {
    ruby_api::init(ruby)
}
