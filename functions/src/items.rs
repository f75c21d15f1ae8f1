//! How runs look in API answers: the original system's item fields
//! (`runId, hostId, actionKey, state, attempts, maxAttempts, nextAttemptAt,
//! dlq, error, approvalStatus, canaryPassed, rollbackAttempted,
//! rollbackSucceeded, autoQueued`) plus the rest of the record.

use remediate_spool::{ApprovalStatus, Counts, RunRecord, RunState};
use serde_json::{Value, json};

/// The original's state names: queued, running, succeeded, failed (DLQ),
/// canceled, retry-scheduled, approval-pending; plus rejected, expired and
/// replayed, which the original folded into others.
pub fn seed_state(r: &RunRecord) -> &'static str {
    match r.state {
        RunState::Queued if r.attempts > 0 => "retry-scheduled",
        RunState::Queued => "queued",
        RunState::Held => "approval-pending",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Dlq => "failed",
        RunState::Canceled => "canceled",
        RunState::Rejected => "rejected",
        RunState::Expired => "expired",
        RunState::Replayed => "replayed",
    }
}

fn approval_status(s: ApprovalStatus) -> &'static str {
    match s {
        ApprovalStatus::None => "not-required",
        ApprovalStatus::Pending => "pending",
        ApprovalStatus::Approved => "approved",
        ApprovalStatus::Rejected => "rejected",
    }
}

/// One run as an API item; `with_history` adds the attempt history.
pub fn item(r: &RunRecord, with_history: bool) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        if !with_history {
            m.remove("history");
            m.remove("notes");
        }
        m.insert("runState".into(), json!(r.state));
        m.insert("state".into(), json!(seed_state(r)));
        m.insert("error".into(), json!(r.last_error));
        m.insert(
            "approvalStatus".into(),
            json!(approval_status(r.approval.status)),
        );
        m.insert("canaryPassed".into(), json!(r.canary.passed));
        m.insert("rollbackAttempted".into(), json!(r.rollback.attempted));
        m.insert("rollbackSucceeded".into(), json!(r.rollback.succeeded));
    }
    v
}

/// Snapshot counts under the original's names, plus ours.
pub fn counts(c: &Counts) -> Value {
    json!({
        "queued": c.queued,
        "running": c.running,
        "succeeded": c.succeeded,
        "failed": c.dlq,
        "canceled": c.canceled,
        "dlq": c.dlq,
        "retryScheduled": c.retry_scheduled,
        "approvalPending": c.held,
        "rejected": c.rejected,
        "expired": c.expired,
        "replayed": c.replayed,
        "corrupt": c.corrupt,
    })
}
