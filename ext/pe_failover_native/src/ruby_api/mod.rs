//! Defines `PuppetX::PeFailover::Native` and its primitives.
//!
//! Primitives are positional and prefixed with `_`; the Ruby facade in
//! `lib/puppet_x/pe_failover/` wraps them with keyword arguments and docs.

mod classifier;
mod replication;
mod snapshot;

use magnus::{function, prelude::*, Error, RModule, Ruby};

use crate::helpers::nogvl;

pub fn init(ruby: &Ruby) -> Result<(), Error> {
    let puppet_x = ruby.define_module("PuppetX")?;
    let ns = puppet_x.define_module("PeFailover")?;
    let native: RModule = ns.define_module("Native")?;
    native.define_module_function("_version", function!(version, 0))?;
    native.define_module_function("_selftest_panic", function!(selftest_panic, 1))?;
    snapshot::init(&native)?;
    classifier::init(ruby, &native)?;
    replication::init(&native)?;
    Ok(())
}

/// The version of the native extension (the crate version).
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Panics on purpose, inside and outside the GVL, so specs can prove a panic
/// reaches Ruby as `InternalError` and never as `fatal`. `where` is
/// `"gvl"` or `"nogvl"`.
fn selftest_panic(ruby: &Ruby, place: String) -> Result<(), Error> {
    let token = pe_failover_core::cancel::CancelToken::new();
    if place == "nogvl" {
        nogvl::without_gvl(ruby, &token, || -> () {
            panic!("self-test panic without the GVL")
        })
    } else {
        nogvl::guard(ruby, || -> Result<(), Error> {
            panic!("self-test panic with the GVL")
        })
    }
}
