//! The run record and the events whose fold produces it.
//!
//! A record file is an append-only log of [`Event`]s; [`crate::state::fold`]
//! folds them through the state machine of [`crate::state`]. Field names are
//! the original system's (camelCase) so API answers can expose them unchanged.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{HostId, IdemKey, RunId};

pub type Timestamp = DateTime<Utc>;

/// Where a run is in its life. `Running` means an attempt has started and not
/// finished; a run that is claimed but whose attempt has not started is still
/// `Queued` in its log (its file sits in `running/`, locked by the claimer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Held,
    Running,
    Succeeded,
    Rejected,
    Expired,
    Canceled,
    Replayed,
    Dlq,
}

impl RunState {
    pub const ALL: [RunState; 9] = [
        RunState::Queued,
        RunState::Held,
        RunState::Running,
        RunState::Succeeded,
        RunState::Rejected,
        RunState::Expired,
        RunState::Canceled,
        RunState::Replayed,
        RunState::Dlq,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Held => "held",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Rejected => "rejected",
            RunState::Expired => "expired",
            RunState::Canceled => "canceled",
            RunState::Replayed => "replayed",
            RunState::Dlq => "dlq",
        }
    }

    /// Terminal states live in `done/` (or `dlq/`) and are never executed again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Held | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    #[default]
    None,
    Pending,
    Approved,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub required: bool,
    pub status: ApprovalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    pub percent: u32,
    pub bucket: u32,
    pub selected: bool,
    /// How many canary checks the action declares.
    pub checks: u32,
    #[serde(default)]
    pub passed: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// The action has rollback commands and auto-rollback is on.
    pub armed: bool,
    pub attempted: bool,
    #[serde(default)]
    pub succeeded: Option<bool>,
}

/// Which part of an attempt a command belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Command,
    Canary,
    Rollback,
}

/// One command's captured result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutput {
    pub phase: Phase,
    pub argv: Vec<String>,
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// What the executor reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<CommandOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_passed: Option<bool>,
    #[serde(default)]
    pub rollback_attempted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_succeeded: Option<bool>,
    /// The attempt was cut short by a crash or shutdown, not by its commands.
    #[serde(default)]
    pub interrupted: bool,
}

/// One attempt in a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: Timestamp,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(flatten)]
    pub result: AttemptResult,
}

/// What a caller asks for when enqueueing. The spool fills in ids, times and
/// the initial state (held when `approval_required`, else queued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRun {
    pub host_id: HostId,
    pub action_key: String,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    pub requested_by: String,
    #[serde(default)]
    pub idempotency_key: Option<IdemKey>,
    /// Frozen at enqueue: a later policy change does not alter this run.
    pub max_attempts: u32,
    /// Absolute expiry (request time + TTL), or none.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    pub idempotent: bool,
    pub approval_required: bool,
    #[serde(default)]
    pub canary: Canary,
    #[serde(default)]
    pub rollback: Rollback,
    #[serde(default)]
    pub auto_queued: bool,
    #[serde(default)]
    pub auto_reason: Option<String>,
    #[serde(default)]
    pub auto_tier: Option<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
}

impl NewRun {
    /// A plain request: 3 attempts, not idempotent, no approval, no
    /// parameters, canary, rollback, expiry or idempotency key. Set the
    /// rest with struct update syntax.
    pub fn new(
        host_id: HostId,
        action_key: impl Into<String>,
        requested_by: impl Into<String>,
    ) -> NewRun {
        NewRun {
            host_id,
            action_key: action_key.into(),
            params: BTreeMap::new(),
            requested_by: requested_by.into(),
            idempotency_key: None,
            max_attempts: 3,
            expires_at: None,
            idempotent: false,
            approval_required: false,
            canary: Canary::default(),
            rollback: Rollback::default(),
            auto_queued: false,
            auto_reason: None,
            auto_tier: None,
            risk: None,
            tier: None,
        }
    }
}

/// The state of one run, as folded from its event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run_id: RunId,
    pub host_id: HostId,
    pub action_key: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub requested_by: String,
    pub requested_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdemKey>,
    pub state: RunState,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(default)]
    pub next_attempt_at: Option<Timestamp>,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub dlq: bool,
    #[serde(default)]
    pub dlq_reason: Option<String>,
    #[serde(default)]
    pub replay_of_run_id: Option<RunId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed_as: Vec<RunId>,
    pub idempotent: bool,
    pub approval: Approval,
    pub canary: Canary,
    pub rollback: Rollback,
    pub auto_queued: bool,
    #[serde(default)]
    pub auto_reason: Option<String>,
    #[serde(default)]
    pub auto_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    /// Why a run ended in done/ other than success (rejected, expired, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// Free-form notes appended with [`crate::Store::append_event`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub at: Timestamp,
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl RunRecord {
    /// The record a fresh enqueue produces.
    pub fn new(run_id: RunId, new: NewRun, now: Timestamp, replay_of: Option<RunId>) -> Self {
        let state = if new.approval_required {
            RunState::Held
        } else {
            RunState::Queued
        };
        RunRecord {
            run_id,
            host_id: new.host_id,
            action_key: new.action_key,
            params: new.params,
            requested_by: new.requested_by,
            requested_at: now,
            idempotency_key: new.idempotency_key,
            state,
            attempts: 0,
            max_attempts: new.max_attempts.max(1),
            next_attempt_at: None,
            expires_at: new.expires_at,
            last_error: None,
            dlq: false,
            dlq_reason: None,
            replay_of_run_id: replay_of,
            replayed_as: Vec::new(),
            idempotent: new.idempotent,
            approval: Approval {
                required: new.approval_required,
                status: if new.approval_required {
                    ApprovalStatus::Pending
                } else {
                    ApprovalStatus::None
                },
                ..Approval::default()
            },
            canary: new.canary,
            rollback: new.rollback,
            auto_queued: new.auto_queued,
            auto_reason: new.auto_reason,
            auto_tier: new.auto_tier,
            risk: new.risk,
            tier: new.tier,
            started_at: None,
            finished_at: None,
            updated_at: Some(now),
            end_reason: None,
            history: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// When the run may next be claimed.
    pub fn due_at(&self) -> Timestamp {
        self.next_attempt_at.unwrap_or(self.requested_at)
    }

    /// A queued run that already failed at least once and waits to retry.
    pub fn is_retry_scheduled(&self) -> bool {
        self.state == RunState::Queued && self.attempts > 0
    }

    /// The attempt that started and has not finished, if any.
    pub fn open_attempt(&self) -> Option<&Attempt> {
        self.history.last().filter(|a| a.finished_at.is_none())
    }
}

/// What happens to a run after an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "next")]
pub enum Next {
    Succeeded,
    RetryAt {
        #[serde(rename = "nextAttemptAt")]
        at: Timestamp,
    },
    DeadLetter {
        reason: String,
    },
}

/// One line of a record's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EventKind {
    /// Always the first event: the whole initial record.
    Enqueued {
        record: Box<RunRecord>,
    },
    Held {
        reason: String,
    },
    Approved {
        by: String,
        reason: Option<String>,
    },
    Rejected {
        by: String,
        reason: Option<String>,
    },
    AttemptStarted {
        attempt: u32,
        worker: String,
    },
    AttemptFinished {
        attempt: u32,
        result: AttemptResult,
        #[serde(flatten)]
        next: Next,
    },
    /// Dead-lettered without an attempt (policy now blocks it, ...).
    DeadLettered {
        reason: String,
        error: Option<String>,
    },
    Expired,
    Canceled {
        reason: String,
    },
    /// Replay intent: the child run is about to be created.
    ReplayRequested {
        child: RunId,
        by: String,
    },
    /// The child run exists; a DLQ source leaves the DLQ.
    Replayed {
        child: RunId,
    },
    /// A queued run's due time changed (an operator flushed the retries).
    Rescheduled {
        #[serde(rename = "nextAttemptAt")]
        at: Timestamp,
    },
    Note {
        kind: String,
        data: serde_json::Value,
    },
    /// The S3 store only: an executor's newer copy of the whole record (see
    /// `aws::S3SqsStore::mirror`), which replaces the folded record as is.
    /// The executor ran the moves in its local spool, whose log has them.
    Mirrored {
        record: Box<RunRecord>,
    },
}

impl EventKind {
    /// Ends `r`'s open attempt with `result`, then `next`.
    pub fn attempt_finished(r: &RunRecord, result: AttemptResult, next: Next) -> EventKind {
        EventKind::AttemptFinished {
            attempt: r.attempts,
            result,
            next,
        }
    }

    /// The dead-letter event for `r`: a running run's attempt ends with it;
    /// any other run is dead-lettered without an attempt (keeping the
    /// result's error, if any).
    pub fn dead_letter(r: &RunRecord, reason: String, result: Option<AttemptResult>) -> EventKind {
        if r.state == RunState::Running {
            EventKind::attempt_finished(r, result.unwrap_or_default(), Next::DeadLetter { reason })
        } else {
            EventKind::DeadLettered {
                reason,
                error: result.and_then(|r| r.error),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: Timestamp,
    #[serde(flatten)]
    pub kind: EventKind,
}
