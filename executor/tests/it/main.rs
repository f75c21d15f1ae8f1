//! Integration tests of the executor: real child processes, a real spool.

mod runner;
