//! What happens to a run after an attempt: a pure function of what the
//! attempt did, the run's attempt budget and the current time, so every path
//! of SEED-BEHAVIOUR.md's retry/canary/rollback rules is unit-tested here.

use remediate_spool::Timestamp;

/// Dead-letter reasons (the seed's names).
pub mod reason {
    pub const MAX_ATTEMPTS_EXCEEDED: &str = "max_attempts_exceeded";
    pub const CANARY_FAILED: &str = "canary_failed";
    pub const AUTO_ROLLED_BACK: &str = "auto_rolled_back";
    pub const AUTO_ROLLBACK_FAILED: &str = "auto_rollback_failed";
    pub const POLICY_BLOCKED: &str = "policy_blocked";
    /// Interrupted (shutdown or crash) and not idempotent: an operator decides.
    pub const INTERRUPTED: &str = "interrupted";
}

/// What an attempt did, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptSummary {
    /// Every command exited 0.
    pub commands_ok: bool,
    /// `None`: no canary checks ran.
    pub canary_passed: Option<bool>,
    /// `None`: no rollback ran; else whether every rollback command exited 0.
    pub rollback_succeeded: Option<bool>,
    /// Cut short by shutdown, not ended by its commands.
    pub interrupted: bool,
}

/// The outcome of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    RetryAt(Timestamp),
    DeadLetter(&'static str),
}

/// The budget and timing a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The number of the attempt that just ended (1 for the first).
    pub attempt: u32,
    /// Frozen into the run at enqueue.
    pub max_attempts: u32,
    pub idempotent: bool,
    pub now: Timestamp,
    /// `now + backoff(attempt)`.
    pub retry_at: Timestamp,
}

pub fn decide(s: &AttemptSummary, b: &Budget) -> Outcome {
    let attempts_left = b.attempt < b.max_attempts;
    if s.interrupted {
        // As recovery does after a crash (spool rule 5): only an idempotent
        // action may run again after an attempt whose effect is unknown.
        return if !b.idempotent {
            Outcome::DeadLetter(reason::INTERRUPTED)
        } else if attempts_left {
            Outcome::RetryAt(b.now)
        } else {
            Outcome::DeadLetter(reason::MAX_ATTEMPTS_EXCEEDED)
        };
    }
    match s.rollback_succeeded {
        Some(true) => return Outcome::DeadLetter(reason::AUTO_ROLLED_BACK),
        Some(false) => return Outcome::DeadLetter(reason::AUTO_ROLLBACK_FAILED),
        None => {}
    }
    if s.canary_passed == Some(false) {
        return Outcome::DeadLetter(reason::CANARY_FAILED);
    }
    if s.commands_ok {
        return Outcome::Succeeded;
    }
    if attempts_left {
        Outcome::RetryAt(b.retry_at)
    } else {
        Outcome::DeadLetter(reason::MAX_ATTEMPTS_EXCEEDED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(attempt: u32, max: u32, idempotent: bool) -> Budget {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        Budget {
            attempt,
            max_attempts: max,
            idempotent,
            now,
            retry_at: now + chrono::Duration::seconds(30),
        }
    }

    fn ok() -> AttemptSummary {
        AttemptSummary {
            commands_ok: true,
            ..AttemptSummary::default()
        }
    }

    #[test]
    fn success_with_and_without_canary() {
        assert_eq!(decide(&ok(), &budget(1, 3, false)), Outcome::Succeeded);
        let s = AttemptSummary {
            canary_passed: Some(true),
            ..ok()
        };
        assert_eq!(decide(&s, &budget(3, 3, false)), Outcome::Succeeded);
    }

    #[test]
    fn failure_retries_while_attempts_remain_then_dead_letters() {
        let f = AttemptSummary::default();
        let b = budget(2, 3, false);
        assert_eq!(decide(&f, &b), Outcome::RetryAt(b.retry_at));
        assert_eq!(
            decide(&f, &budget(3, 3, false)),
            Outcome::DeadLetter("max_attempts_exceeded")
        );
    }

    #[test]
    fn canary_failure_goes_straight_to_dlq() {
        let s = AttemptSummary {
            canary_passed: Some(false),
            ..ok()
        };
        assert_eq!(
            decide(&s, &budget(1, 5, true)),
            Outcome::DeadLetter("canary_failed")
        );
    }

    #[test]
    fn a_rolled_back_run_goes_straight_to_dlq() {
        let rolled = AttemptSummary {
            rollback_succeeded: Some(true),
            ..AttemptSummary::default()
        };
        assert_eq!(
            decide(&rolled, &budget(1, 5, true)),
            Outcome::DeadLetter("auto_rolled_back")
        );
        let failed = AttemptSummary {
            canary_passed: Some(false),
            rollback_succeeded: Some(false),
            ..ok()
        };
        assert_eq!(
            decide(&failed, &budget(1, 5, true)),
            Outcome::DeadLetter("auto_rollback_failed")
        );
    }

    #[test]
    fn interrupted_retries_only_idempotent_actions() {
        let s = AttemptSummary {
            interrupted: true,
            ..AttemptSummary::default()
        };
        let b = budget(1, 3, true);
        assert_eq!(decide(&s, &b), Outcome::RetryAt(b.now));
        assert_eq!(
            decide(&s, &budget(1, 3, false)),
            Outcome::DeadLetter("interrupted")
        );
        assert_eq!(
            decide(&s, &budget(3, 3, true)),
            Outcome::DeadLetter("max_attempts_exceeded")
        );
    }
}
