//! The executor daemon: claims runs of its host from the spool and runs their
//! guarded commands, then records success, a scheduled retry or a
//! dead-letter move.
//!
//! - [`runner`]: one command, argv only, clean environment, own process
//!   group, timeout, capped output, redaction;
//! - [`attempt`]: one claimed run, checks first, `start_attempt` before any
//!   command, then commands, canary checks, rollback, and the outcome;
//! - [`outcome`]: the pure retry / dead-letter decision;
//! - [`daemon`]: the claim loop (inotify + due timer + safety rescan),
//!   recovery, shutdown; [`daemon::drain_once`] for `once`;
//! - [`plan`]: what the daemon asks of policy and catalog ([`plan::Planner`]);
//!   [`config_planner`] answers it from the config crate and the host's
//!   policy document;
//! - [`queue`]: `queue list|show|flush` for an operator on the host;
//! - [`notify`]: webhook notifications of dead letters and approvals,
//!   never blocking the claim loop;
//! - [`intake`]: AWS mode: the SQS intake into the local spool and the
//!   mirror of local state to S3 (the store itself behind feature `aws`).

pub mod attempt;
pub mod config_planner;
pub mod daemon;
pub mod error;
pub mod intake;
#[cfg(feature = "aws")]
pub mod intake_aws;
pub mod notify;
pub mod outcome;
pub mod plan;
pub mod queue;
pub mod runner;
pub mod watch;

pub use attempt::RunEnd;
pub use daemon::{DaemonSettings, Deps, drain_once, run};
pub use error::{ExecError, Result};
pub use plan::{Planner, Prepared, Refusal, StaticAction, StaticPlanner};
