//! Integration tests of remediate-config: one binary, one module per area.
#![allow(clippy::unwrap_used)]
// figment::Jail closures return figment::Result, whose error is large by design.
#![allow(clippy::result_large_err)]

mod catalogs;
mod guard_corpus;
mod loader;
mod profiles;
mod store_knobs;
mod util;
