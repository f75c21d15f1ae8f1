//! The executor daemon: claims runs of its host from the spool and runs their
//! guarded commands, then records success, a scheduled retry or a
//! dead-letter move.

pub mod runner;
