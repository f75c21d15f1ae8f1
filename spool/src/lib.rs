//! Run records, their state machine, and the durable local spool.
//!
//! # What a run is
//!
//! A run is one request to execute one catalog action on one host. Its
//! **record** is an append-only event log ([`record::EventKind`]): the first
//! event holds the whole initial record, each later event one move. Folding
//! the log through the [state machine](state) gives the [`RunRecord`] that
//! API answers show (camelCase, the original system's field names).
//!
//! # Layout
//!
//! ```text
//! <root>/hosts/<hostId>.json        host policy (written by the API)
//! <root>/hosts/<hostId>.activity.log  dry-runs and executes, one line each, appended
//! <root>/runs/<hostId>/tmp/         being written; never read by anyone else
//! <root>/runs/<hostId>/queued/      ready, or waiting for nextAttemptAt
//! <root>/runs/<hostId>/held/        waiting for an operator
//! <root>/runs/<hostId>/running/     claimed; the claimer holds an flock
//! <root>/runs/<hostId>/done/        succeeded, rejected, expired, canceled, replayed
//! <root>/runs/<hostId>/dlq/         dead-lettered, until replayed or pruned
//! <root>/runs/<hostId>/corrupt/     failed validation; kept for a human
//! <root>/runs/<hostId>/keys.lock    serialises enqueues that carry an idempotency key
//! <root>/audit/                     append-only audit log
//! ```
//!
//! A record file is named by its run id. Directories are created 0700 and
//! the spool refuses to open when one of them is writable by anyone but its
//! owner (whoever can write the spool can make the executor run commands).
//!
//! # States and moves
//!
//! | state | directory | moves out |
//! |---|---|---|
//! | queued | queued/ (running/ while claimed) | start attempt, hold, expire, cancel, dead-letter |
//! | held | held/ | approve, reject, expire, cancel |
//! | running | running/ | complete, retry at T (attempts left), dead-letter |
//! | succeeded, rejected, expired, canceled, replayed | done/ | replay (a new run) |
//! | dlq | dlq/ | replay (source becomes `replayed`) |
//!
//! Any other move is an [`SpoolError::IllegalMove`] naming the run, its
//! state and the move.
//!
//! # Invariants and how they are kept
//!
//! 1. **Publish only what is durable.** A new record is written under a
//!    unique O_EXCL name in `tmp/`, fsynced, renamed (no-replace) into its
//!    state directory, and that directory is fsynced before enqueue returns.
//!    Directory fsyncs are shared between concurrent writers (group commit).
//! 2. **Self-validating records.** Every log line carries a format tag, its
//!    length and a CRC-32; a file that fails is moved to `corrupt/`, reported
//!    and never executed or deleted. Only a final fragment without its
//!    newline (a torn append) is forgiven and cut off.
//! 3. **Claims are locked renames.** Open in `queued/`, `flock(LOCK_EX|
//!    LOCK_NB)`, re-check that the path names the locked inode, rename into
//!    `running/`. The lock lives as long as the claim, and the kernel drops it
//!    the moment the claimer dies, so an unlocked file in `running/` is an
//!    orphan: no lease, no heartbeat, no timeout.
//! 4. **The log is the truth.** Every writer holds the file's lock, appends
//!    and fdatasyncs one event (the commit point), then renames the file into
//!    the directory of its new state. Recovery moves a file whose directory
//!    disagrees with its log.
//! 5. **Attempt started before anything runs.** The executor calls
//!    [`Store::start_attempt`] and runs commands only after it returns. After
//!    a crash, an attempt that started and never finished was interrupted:
//!    retried only when the action is idempotent, otherwise dead-lettered
//!    with reason `interrupted`.
//! 6. **I/O errors are fatal for the request.** A failed fsync, append or
//!    rename returns [`SpoolError::Io`] (not transient) and nothing is
//!    acknowledged; the caller must not retry blindly.
//! 7. **Recovery** ([`LocalSpool::recover_blocking`]) is idempotent and may
//!    itself crash at any step.
//!
//! The durability syscalls go through [`io::DurableIo`]; tests swap in
//! [`io::FaultIo`] to inject an error or a crash at every step.

#[cfg(feature = "aws")]
pub mod aws;
pub mod codec;
pub mod error;
mod filecache;
mod groupsync;
pub mod id;
mod index;
pub mod io;
pub mod local;
pub mod record;
pub mod state;
pub mod store;

use std::sync::Mutex;

pub use error::{Result, SpoolError};
pub use id::{HostId, IdemKey, RunId};
pub use index::Bucket;
pub use local::{
    ACTIVITY_COMPACT_AT, ActivityEntry, ActivityKind, Counts, Dir, Enqueued, HostActivity,
    ImportOutcome, ListQuery, LocalSpool, PruneReport, RecoveryReport, Retention, SpoolOptions,
};
pub use record::{
    Approval, ApprovalStatus, Attempt, AttemptResult, Canary, CommandOutput, NewRun, Phase,
    Rollback, RunRecord, RunState, Timestamp,
};
pub use store::{
    AuditLine, Checked, EnqueueCheck, GateFacts, Refusal, Store,
    run_file_work_inline_on_this_thread,
};

/// Where the spool gets "now" from; tests pass a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, d: chrono::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
