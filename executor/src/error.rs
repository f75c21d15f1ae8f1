//! Errors of the executor, each with a stable machine code.

use std::path::PathBuf;

use remediate_spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("host {host_id}: {reason}")]
    HostPolicy { host_id: String, reason: String },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid usage: {0}")]
    Usage(String),
}

impl ExecError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ExecError::Spool(e) => e.code(),
            ExecError::Config(_) => "config_invalid",
            ExecError::HostPolicy { .. } => "host_policy_invalid",
            ExecError::Watch { .. } => "watch_failed",
            ExecError::Usage(_) => "usage",
        }
    }

    /// Whether trying again later may succeed (the daemon backs off and
    /// retries these; the others stop it or are reported).
    pub fn is_transient(&self) -> bool {
        match self {
            ExecError::Spool(e) => e.is_transient(),
            ExecError::HostPolicy { .. } => true,
            ExecError::Config(_) | ExecError::Watch { .. } | ExecError::Usage(_) => false,
        }
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
