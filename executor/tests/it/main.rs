//! Integration tests of the executor: real child processes, a real spool.

mod cli;
mod daemon;
mod outcomes;
mod runner;
mod util;
