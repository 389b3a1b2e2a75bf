//! Helpers shared by the Ruby-facing modules.

pub mod errors;
pub mod nogvl;
