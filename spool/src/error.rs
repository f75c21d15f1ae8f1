//! Errors of the spool, each with a stable machine code.

use std::io;
use std::path::PathBuf;

use crate::record::RunState;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("invalid {what} {value:?}: it {reason}")]
    InvalidId {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("run {run_id} not found")]
    NotFound { run_id: String },
    #[error("run {run_id} is {state}: cannot {action} it")]
    IllegalMove {
        run_id: String,
        state: RunState,
        action: &'static str,
    },
    #[error("run {run_id} is busy: another process holds its lock")]
    Busy { run_id: String },
    /// Another execute of the host is checking its gates (the S3 store's
    /// per-host gate lease): nothing was written; try again shortly.
    #[error("host {host} is busy: {what}; nothing was enqueued, try again")]
    HostBusy { host: String, what: String },
    #[error("run {run_id} is not claimed by this process")]
    NotClaimed { run_id: String },
    #[error("record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("unsafe spool directory {path} (mode {mode:o}): {reason}")]
    UnsafeDir {
        path: PathBuf,
        mode: u32,
        reason: &'static str,
    },
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A compare-and-swap lost: someone else changed the run between our read
    /// and our write (the S3 store's `If-Match`/`If-None-Match` failed). Nothing
    /// was written; re-read before deciding again.
    #[error("run {run_id} was changed concurrently: {what}")]
    Conflict { run_id: String, what: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

impl SpoolError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SpoolError::InvalidId { .. } => "invalid_id",
            SpoolError::NotFound { .. } => "not_found",
            SpoolError::IllegalMove { .. } => "illegal_move",
            SpoolError::Busy { .. } => "busy",
            SpoolError::HostBusy { .. } => "host_busy",
            SpoolError::NotClaimed { .. } => "not_claimed",
            SpoolError::Corrupt { .. } => "corrupt_record",
            SpoolError::UnsafeDir { .. } => "unsafe_spool",
            SpoolError::Io { .. } => "io_error",
            SpoolError::Conflict { .. } => "conflict",
            SpoolError::Invalid(_) => "invalid_request",
            SpoolError::Backend(_) => "backend_error",
        }
    }

    /// Whether trying again later may succeed. I/O errors are not transient:
    /// after a failed fsync the page cache may already have dropped the data,
    /// so the caller must not retry blindly (the "fsyncgate" lesson).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SpoolError::Busy { .. } | SpoolError::HostBusy { .. } | SpoolError::Backend(_)
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = SpoolError> = std::result::Result<T, E>;
