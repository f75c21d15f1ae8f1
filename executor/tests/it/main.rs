//! Integration tests of the executor: real child processes, a real spool.

mod cli;
mod daemon;
mod notify;
mod outcomes;
mod runner;
mod util;
