//! Integration tests of the local spool: moves, durability under injected
//! faults, a model test, a claim race between real processes and corrupt
//! files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::collapsible_if)]

mod util;

mod corrupt;
mod faults;
mod import;
mod model;
mod moves;
mod race;
