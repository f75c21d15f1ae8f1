//! The run state machine: which move is legal from which state.
//!
//! ```text
//!            +--> held --approve--> queued        held --reject--> rejected
//! enqueue ---+
//!            +--> queued --start attempt--> running --ok--> succeeded
//!                   ^                         |--retry (attempts left)--> queued
//!                   |                         +--dead-letter--> dlq
//!                   +---------- replay (a new run) ------ dlq --> replayed
//! queued/held --expire--> expired;  queued/held --cancel--> canceled
//! queued (claimed) --hold--> held;  queued (claimed) --dead-letter--> dlq
//! queued --reschedule--> queued (a retry made due now: `queue flush`)
//! ```
//!
//! Every move is checked here, both when a caller asks for it and when a log
//! is folded back into a record, so a log that describes an impossible
//! history is corrupt rather than silently accepted.

use crate::error::SpoolError;
use crate::record::{ApprovalStatus, Attempt, Event, EventKind, Next, Note, RunRecord, RunState};

/// A named state move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Hold,
    Approve,
    Reject,
    StartAttempt,
    Complete,
    RetryAt,
    DeadLetter,
    Expire,
    Cancel,
    Replay,
    Reschedule,
    Note,
}

impl Move {
    pub const ALL: [Move; 12] = [
        Move::Hold,
        Move::Approve,
        Move::Reject,
        Move::StartAttempt,
        Move::Complete,
        Move::RetryAt,
        Move::DeadLetter,
        Move::Expire,
        Move::Cancel,
        Move::Replay,
        Move::Reschedule,
        Move::Note,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Move::Hold => "hold",
            Move::Approve => "approve",
            Move::Reject => "reject",
            Move::StartAttempt => "start an attempt of",
            Move::Complete => "complete",
            Move::RetryAt => "schedule a retry of",
            Move::DeadLetter => "dead-letter",
            Move::Expire => "expire",
            Move::Cancel => "cancel",
            Move::Replay => "replay",
            Move::Reschedule => "reschedule",
            Move::Note => "annotate",
        }
    }
}

/// The state a legal move leads to, or `None` when the move is illegal.
pub fn next_state(from: RunState, mv: Move) -> Option<RunState> {
    use RunState::*;
    match (mv, from) {
        (Move::Hold, Queued) => Some(Held),
        (Move::Approve, Held) => Some(Queued),
        (Move::Reject, Held) => Some(Rejected),
        (Move::StartAttempt, Queued) => Some(Running),
        (Move::Complete, Running) => Some(Succeeded),
        (Move::RetryAt, Running) => Some(Queued),
        (Move::DeadLetter, Running | Queued) => Some(Dlq),
        (Move::Expire, Queued | Held) => Some(Expired),
        (Move::Cancel, Queued | Held) => Some(Canceled),
        (Move::Replay, Dlq) => Some(Replayed),
        (Move::Replay, s @ (Succeeded | Rejected | Expired | Canceled | Replayed)) => Some(s),
        (Move::Reschedule, Queued) => Some(Queued),
        (Move::Note, s) => Some(s),
        _ => None,
    }
}

/// Checks `mv` against the record, including the rules that depend on more
/// than the state (a retry needs attempts left).
pub fn check(record: &RunRecord, mv: Move) -> Result<RunState, SpoolError> {
    let illegal = || SpoolError::IllegalMove {
        run_id: record.run_id.to_string(),
        state: record.state,
        action: mv.name(),
    };
    let next = next_state(record.state, mv).ok_or_else(illegal)?;
    if mv == Move::RetryAt && record.attempts >= record.max_attempts {
        return Err(SpoolError::IllegalMove {
            run_id: record.run_id.to_string(),
            state: record.state,
            action: "schedule a retry (no attempts left) of",
        });
    }
    Ok(next)
}

fn move_of(kind: &EventKind) -> Option<Move> {
    Some(match kind {
        EventKind::Enqueued { .. } => return None,
        EventKind::Held { .. } => Move::Hold,
        EventKind::Approved { .. } => Move::Approve,
        EventKind::Rejected { .. } => Move::Reject,
        EventKind::AttemptStarted { .. } => Move::StartAttempt,
        EventKind::AttemptFinished { next, .. } => match next {
            Next::Succeeded => Move::Complete,
            Next::RetryAt { .. } => Move::RetryAt,
            Next::DeadLetter { .. } => Move::DeadLetter,
        },
        EventKind::DeadLettered { .. } => Move::DeadLetter,
        EventKind::Expired => Move::Expire,
        EventKind::Canceled { .. } => Move::Cancel,
        EventKind::ReplayRequested { .. } => Move::Note,
        EventKind::Replayed { .. } => Move::Replay,
        EventKind::Rescheduled { .. } => Move::Reschedule,
        EventKind::Note { .. } => Move::Note,
        EventKind::Mirrored { .. } => Move::Note,
    })
}

/// Applies one event (after the first) to a record, checking legality.
pub fn apply(record: &mut RunRecord, ev: &Event) -> Result<(), SpoolError> {
    if let EventKind::Mirrored { record: newer } = &ev.kind {
        // Not a move: the executor's copy replaces the record wholesale. Its
        // moves were checked by the executor's own spool.
        if newer.run_id != record.run_id || newer.host_id != record.host_id {
            return Err(SpoolError::Invalid(format!(
                "run {}: a mirrored copy of another run ({})",
                record.run_id, newer.run_id
            )));
        }
        // Notes added on this side (the API) since the copy was taken are
        // kept: a note is never lost to a mirror.
        let mut merged = (**newer).clone();
        for n in &record.notes {
            if !merged.notes.contains(n) {
                merged.notes.push(n.clone());
            }
        }
        merged.notes.sort_by_key(|n| n.at);
        *record = merged;
        return Ok(());
    }
    let Some(mv) = move_of(&ev.kind) else {
        return Err(SpoolError::Invalid(format!(
            "run {}: a second enqueued event",
            record.run_id
        )));
    };
    let next = check(record, mv)?;
    let at = ev.at;
    match &ev.kind {
        EventKind::Enqueued { .. } => {}
        EventKind::Held { reason } => {
            record.approval.required = true;
            record.approval.status = ApprovalStatus::Pending;
            record.approval.reason = Some(reason.clone());
        }
        EventKind::Approved { by, reason } | EventKind::Rejected { by, reason } => {
            record.approval.status = if mv == Move::Approve {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::Rejected
            };
            record.approval.decided_by = Some(by.clone());
            record.approval.decided_at = Some(at);
            record.approval.reason = reason.clone();
            if mv == Move::Reject {
                record.finished_at = Some(at);
                record.end_reason = Some("rejected".into());
            }
        }
        EventKind::AttemptStarted { attempt, worker } => {
            if *attempt != record.attempts + 1 {
                return Err(SpoolError::Invalid(format!(
                    "run {}: attempt {attempt} started after {}",
                    record.run_id, record.attempts
                )));
            }
            record.attempts = *attempt;
            record.started_at.get_or_insert(at);
            record.history.push(Attempt {
                attempt: *attempt,
                started_at: at,
                finished_at: None,
                worker: Some(worker.clone()),
                result: Default::default(),
            });
        }
        EventKind::AttemptFinished {
            attempt,
            result,
            next: n,
        } => {
            let open = record
                .history
                .last_mut()
                .filter(|a| a.attempt == *attempt && a.finished_at.is_none())
                .ok_or_else(|| {
                    SpoolError::Invalid(format!(
                        "run {}: attempt {attempt} finished but was not open",
                        record.run_id
                    ))
                })?;
            open.finished_at = Some(at);
            open.result = result.clone();
            if result.canary_passed.is_some() {
                record.canary.passed = result.canary_passed;
            }
            if result.rollback_attempted {
                record.rollback.attempted = true;
                record.rollback.succeeded = result.rollback_succeeded;
            }
            record.last_error = result.error.clone().or(record.last_error.take());
            match n {
                Next::Succeeded => {
                    record.last_error = None;
                    record.next_attempt_at = None;
                    record.finished_at = Some(at);
                }
                Next::RetryAt { at: when } => record.next_attempt_at = Some(*when),
                Next::DeadLetter { reason } => {
                    record.dlq = true;
                    record.dlq_reason = Some(reason.clone());
                    record.next_attempt_at = None;
                    record.finished_at = Some(at);
                }
            }
        }
        EventKind::DeadLettered { reason, error } => {
            record.dlq = true;
            record.dlq_reason = Some(reason.clone());
            if error.is_some() {
                record.last_error = error.clone();
            }
            record.next_attempt_at = None;
            record.finished_at = Some(at);
        }
        EventKind::Expired => {
            record.finished_at = Some(at);
            record.end_reason = Some("expired".into());
        }
        EventKind::Canceled { reason } => {
            record.finished_at = Some(at);
            record.end_reason = Some(reason.clone());
        }
        EventKind::ReplayRequested { .. } => {}
        EventKind::Rescheduled { at: when } => record.next_attempt_at = Some(*when),
        EventKind::Replayed { child } => {
            record.replayed_as.push(child.clone());
            if record.state == RunState::Dlq {
                record.dlq = false;
                record.end_reason = Some("replayed".into());
            }
        }
        EventKind::Mirrored { .. } => {}
        EventKind::Note { kind, data } => record.notes.push(Note {
            at,
            kind: kind.clone(),
            data: data.clone(),
        }),
    }
    record.state = next;
    record.updated_at = Some(at);
    Ok(())
}

/// Folds a whole log (first event: enqueued) into a record.
pub fn fold(events: &[Event]) -> Result<RunRecord, SpoolError> {
    let (first, rest) = events
        .split_first()
        .ok_or_else(|| SpoolError::Invalid("empty log".into()))?;
    let EventKind::Enqueued { record } = &first.kind else {
        return Err(SpoolError::Invalid(
            "log does not start with an enqueued event".into(),
        ));
    };
    let mut rec = (**record).clone();
    for ev in rest {
        apply(&mut rec, ev)?;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table: every (state, move) pair is either the drawn move or
    /// illegal, and nothing else.
    #[test]
    fn every_legal_and_illegal_move() {
        use RunState::*;
        let legal: &[(Move, RunState, RunState)] = &[
            (Move::Hold, Queued, Held),
            (Move::Approve, Held, Queued),
            (Move::Reject, Held, Rejected),
            (Move::StartAttempt, Queued, Running),
            (Move::Complete, Running, Succeeded),
            (Move::RetryAt, Running, Queued),
            (Move::DeadLetter, Running, Dlq),
            (Move::DeadLetter, Queued, Dlq),
            (Move::Expire, Queued, Expired),
            (Move::Expire, Held, Expired),
            (Move::Cancel, Queued, Canceled),
            (Move::Cancel, Held, Canceled),
            (Move::Replay, Dlq, Replayed),
            (Move::Replay, Succeeded, Succeeded),
            (Move::Replay, Rejected, Rejected),
            (Move::Replay, Expired, Expired),
            (Move::Replay, Canceled, Canceled),
            (Move::Replay, Replayed, Replayed),
            (Move::Reschedule, Queued, Queued),
        ];
        let mut n_legal = 0;
        for mv in Move::ALL {
            for from in RunState::ALL {
                let expected = if mv == Move::Note {
                    Some(from)
                } else {
                    legal
                        .iter()
                        .find(|(m, f, _)| *m == mv && *f == from)
                        .map(|(_, _, to)| *to)
                };
                assert_eq!(next_state(from, mv), expected, "{mv:?} from {from:?}");
                if expected.is_some() {
                    n_legal += 1;
                }
            }
        }
        assert_eq!(n_legal, legal.len() + RunState::ALL.len());
    }
}
