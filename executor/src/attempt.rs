//! One claimed run, from the checks before it may run to the durable record
//! of how its attempt ended.
//!
//! Order matters for safety: every check that can refuse the run (host
//! disabled, expired, approval pending, guard) happens before
//! `start_attempt`, and `start_attempt` is durable before any command runs
//! (spool rule 5), so a crash at any point is classified correctly by
//! recovery. A run readied ahead (its attempt started while another run's
//! commands ran) that waited for the command slot longer than
//! [`RECHECK_AFTER`] checks the host's switch and the guard again before
//! its commands start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use remediate_spool::{
    AttemptResult, CommandOutput, LocalSpool, Phase, RunId, RunRecord, Store, Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::error::Result;
use crate::notify::{Notice, NoticeKind, Notifier};
use crate::outcome::{self, AttemptSummary, Budget, Outcome};
use crate::plan::{Planner, Prepared, Refusal};
use crate::runner::{CommandSpec, Executed, KillSwitch, run_command};

/// How a run this executor touched ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    RetryScheduled(Timestamp),
    WaitingApproval,
    DeadLettered(String),
    Canceled,
    Expired,
}

impl RunEnd {
    /// Succeeded, retry scheduled or waiting for approval: what `once`
    /// counts as a good drain.
    pub fn ended_well(&self) -> bool {
        matches!(
            self,
            RunEnd::Succeeded | RunEnd::RetryScheduled(_) | RunEnd::WaitingApproval
        )
    }

    /// A short label for tables and logs.
    pub fn label(&self) -> String {
        match self {
            RunEnd::Succeeded => "succeeded".into(),
            RunEnd::RetryScheduled(at) => format!("retry-scheduled {}", at.to_rfc3339()),
            RunEnd::WaitingApproval => "approval-pending".into(),
            RunEnd::DeadLettered(r) => format!("dlq {r}"),
            RunEnd::Canceled => "canceled".into(),
            RunEnd::Expired => "expired".into(),
        }
    }
}

/// Reason recorded when a disabled host's run is canceled.
pub const HOST_DISABLED: &str = "host_disabled";
/// Reason recorded when a claimed run turns out to still need approval.
pub const APPROVAL_PENDING: &str = "approval_pending";

/// What processing a claimed run needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub spool: LocalSpool,
    pub planner: Arc<dyn Planner>,
    /// Told when a run is dead-lettered or goes back to wait for approval.
    pub notifier: Option<Notifier>,
    /// Told the moment a run's commands are over (before its outcome is
    /// recorded), with how long they took, so the daemon can start the next
    /// run while this one's outcome is made durable.
    pub commands_over: Option<tokio::sync::mpsc::UnboundedSender<(RunId, Duration)>>,
}

/// When a claimed run's commands may start.
#[derive(Debug)]
pub enum Turn {
    /// As soon as its attempt has started: nothing to share, or the command
    /// slot taken for it when it was claimed (and held until its commands
    /// are over).
    Now(Option<OwnedSemaphorePermit>),
    /// Readied ahead: the daemon (at concurrency 1) claimed it while a quick
    /// action's commands ran, so its checks and its durable "attempt
    /// started" overlap them; its commands wait for the command slot.
    Ahead(Arc<Semaphore>),
}

/// A run readied ahead (its attempt started while another run's commands
/// ran) that waited longer than this for the command slot looks again at
/// what may have changed meanwhile: its host's switch and the guard.
pub const RECHECK_AFTER: Duration = Duration::from_millis(20);

/// Processes one run this process has claimed. On a spool error the claim
/// is released (the file stays in `running/`, unlocked) so recovery settles
/// it; nothing is retried blindly.
pub async fn process_claimed(
    ctx: &Ctx,
    run: RunRecord,
    turn: Turn,
    kill: KillSwitch,
) -> Result<RunEnd> {
    let span = tracing::info_span!(
        "run",
        run_id = %run.run_id,
        host_id = %run.host_id,
        action = %run.action_key,
        attempt = run.attempts + 1,
    );
    let id = run.run_id.clone();
    let res = process(ctx, run, turn, kill).instrument(span.clone()).await;
    match res {
        Ok((end, rec)) => {
            span.in_scope(|| tracing::info!(end = %end.label(), "run processed"));
            if let (Some(n), Some(rec)) = (&ctx.notifier, rec) {
                let notice = match &end {
                    RunEnd::DeadLettered(reason) => {
                        Some((NoticeKind::DeadLettered, reason.as_str()))
                    }
                    RunEnd::WaitingApproval => {
                        Some((NoticeKind::ApprovalPending, APPROVAL_PENDING))
                    }
                    _ => None,
                };
                if let Some((kind, reason)) = notice {
                    n.notify(Notice::about(kind, &rec, reason, ctx.spool.now()));
                }
            }
            Ok(end)
        }
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, code = e.code(), "run left for recovery"));
            ctx.spool.release_claim(&id);
            Err(e)
        }
    }
}

/// The end of a run, and its record after the last move when the end is
/// one to notify about.
type Processed = (RunEnd, Option<RunRecord>);

async fn process(ctx: &Ctx, run: RunRecord, turn: Turn, kill: KillSwitch) -> Result<Processed> {
    let store: &dyn Store = &ctx.spool;
    let id = run.run_id.clone();
    let now = ctx.spool.now();

    if !ctx.planner.host_enabled(&run.host_id)? {
        store.cancel(&id, HOST_DISABLED).await?;
        return Ok((RunEnd::Canceled, None));
    }
    if run.expires_at.is_some_and(|t| t <= now) {
        store.expire(&id).await?;
        return Ok((RunEnd::Expired, None));
    }
    if run.approval.required && run.approval.status != remediate_spool::ApprovalStatus::Approved {
        let rec = store.hold(&id, APPROVAL_PENDING).await?;
        return Ok((RunEnd::WaitingApproval, Some(rec)));
    }
    let attempt = run.attempts + 1;
    let prepared = match ctx.planner.prepare(&run, attempt)? {
        Ok(p) => p,
        Err(Refusal::PolicyBlocked(why)) => {
            tracing::warn!(reason = %why, "guard refuses the run under the current policy");
            let result = AttemptResult {
                error: Some(why),
                ..AttemptResult::default()
            };
            let rec = store
                .dead_letter(&id, outcome::reason::POLICY_BLOCKED, Some(result))
                .await?;
            return Ok((
                RunEnd::DeadLettered(outcome::reason::POLICY_BLOCKED.into()),
                Some(rec),
            ));
        }
    };

    // Rule 5: durable before anything runs. The start is written inline:
    // on this runtime's one thread that is the quickest way to the disk,
    // also for a run readied ahead (a blocking-pool thread woken now would
    // often wait for the core of the command it overlaps).
    let started = ctx.spool.start_attempt_blocking(&id)?;
    let mut prepared = prepared;
    let slot = match turn {
        Turn::Now(permit) => permit,
        Turn::Ahead(sem) => {
            let parked = Instant::now();
            let permit = sem.acquire_owned().await.ok();
            if *kill.borrow() {
                // The daemon's grace period ended while this run waited:
                // its commands never start. Nothing ran, so the run goes
                // back to the queue whether or not its action is
                // idempotent (an interrupted attempt of a non-idempotent
                // action would be dead-lettered).
                let why = "the executor stopped while the run waited for the command slot";
                return not_launched(ctx, &started, outcome::reason::INTERRUPTED, why, true).await;
            }
            if parked.elapsed() > RECHECK_AFTER {
                // Waited long enough for an operator to have switched the
                // host off or changed its policy: the run does not launch
                // against either. Its attempt started, so it ends as a
                // dead letter an operator can replay.
                let refused = if !ctx.planner.host_enabled(&started.host_id)? {
                    Some((
                        HOST_DISABLED,
                        "the host was disabled while the run waited for the command slot"
                            .to_string(),
                    ))
                } else {
                    match ctx.planner.prepare(&started, started.attempts)? {
                        Ok(p) => {
                            prepared = p;
                            None
                        }
                        Err(Refusal::PolicyBlocked(why)) => {
                            Some((outcome::reason::POLICY_BLOCKED, why))
                        }
                    }
                };
                if let Some((reason, why)) = refused {
                    return not_launched(ctx, &started, reason, &why, false).await;
                }
            }
            permit
        }
    };
    let t = Instant::now();
    let (result, summary) = execute(&prepared, &id, started.attempts, kill).await;
    // No command of this run is running any more: the next run may start
    // while this outcome is written (the two fsyncs then overlap). A crash
    // before the outcome is durable leaves this attempt started and
    // unfinished, which recovery settles as interrupted, as it would a
    // crash just after the command exited.
    drop(slot);
    if let Some(tx) = &ctx.commands_over {
        let _ = tx.send((id.clone(), t.elapsed()));
    }

    let now = ctx.spool.now();
    let retry_delay = chrono::Duration::from_std(prepared.retry_delay)
        .unwrap_or_else(|_| chrono::Duration::days(1));
    let budget = Budget {
        attempt: started.attempts,
        max_attempts: started.max_attempts,
        idempotent: started.idempotent,
        now,
        retry_at: now + retry_delay,
    };
    match outcome::decide(&summary, &budget) {
        Outcome::Succeeded => {
            store.complete(&id, result).await?;
            Ok((RunEnd::Succeeded, None))
        }
        Outcome::RetryAt(at) => {
            store.retry_at(&id, at, result).await?;
            Ok((RunEnd::RetryScheduled(at), None))
        }
        Outcome::DeadLetter(reason) => {
            let rec = store.dead_letter(&id, reason, Some(result)).await?;
            Ok((RunEnd::DeadLettered(reason.to_string()), Some(rec)))
        }
    }
}

/// Ends the attempt of a run readied ahead whose commands will not start:
/// its result says "not launched: `why`". With `retry`, and attempts left,
/// the run goes back to the queue, due now (nothing ran); otherwise it is
/// dead-lettered with `reason`, for an operator to replay.
async fn not_launched(
    ctx: &Ctx,
    run: &RunRecord,
    reason: &str,
    why: &str,
    retry: bool,
) -> Result<Processed> {
    let store: &dyn Store = &ctx.spool;
    tracing::warn!(reason, why, "not launched");
    let result = AttemptResult {
        error: Some(format!("not launched: {why}")),
        ..AttemptResult::default()
    };
    if retry && run.attempts < run.max_attempts {
        let at = ctx.spool.now();
        store.retry_at(&run.run_id, at, result).await?;
        return Ok((RunEnd::RetryScheduled(at), None));
    }
    let rec = store.dead_letter(&run.run_id, reason, Some(result)).await?;
    Ok((RunEnd::DeadLettered(reason.into()), Some(rec)))
}

/// Runs the commands, then the canary checks, then (on failure, once) the
/// rollback. Shutdown stops everything at once: no rollback then, since the
/// daemon is going away and the attempt is recorded as interrupted.
async fn execute(
    p: &Prepared,
    id: &RunId,
    attempt: u32,
    kill: KillSwitch,
) -> (AttemptResult, AttemptSummary) {
    let mut outputs: Vec<CommandOutput> = Vec::new();
    let mut summary = AttemptSummary::default();
    let mut error: Option<String> = None;
    let mut exit_status = None;

    let (outs, stop) = run_phase(p, Phase::Command, &p.commands, id, attempt, &kill).await;
    outputs.extend(outs);
    let mut failed = false;
    match stop {
        None => {
            summary.commands_ok = true;
            exit_status = Some(0);
        }
        Some(PhaseStop::Interrupted(e)) => {
            summary.interrupted = true;
            error = Some(e.unwrap_or_else(|| "interrupted by shutdown".into()));
        }
        Some(PhaseStop::Failed(e, code)) => {
            failed = true;
            exit_status = code;
            error = Some(e);
        }
    }

    if summary.commands_ok && !p.canary_checks.is_empty() {
        let (outs, stop) = run_phase(p, Phase::Canary, &p.canary_checks, id, attempt, &kill).await;
        outputs.extend(outs);
        match stop {
            None => summary.canary_passed = Some(true),
            Some(PhaseStop::Interrupted(e)) => {
                summary.interrupted = true;
                error = Some(e.unwrap_or_else(|| "interrupted by shutdown".into()));
            }
            Some(PhaseStop::Failed(e, _)) => {
                summary.canary_passed = Some(false);
                failed = true;
                error = Some(format!("canary check failed: {e}"));
            }
        }
    }

    if failed && !summary.interrupted && p.auto_rollback && !p.rollback.is_empty() {
        tracing::warn!("rolling back");
        let (outs, stop) = run_phase(p, Phase::Rollback, &p.rollback, id, attempt, &kill).await;
        outputs.extend(outs);
        match stop {
            None => summary.rollback_succeeded = Some(true),
            Some(PhaseStop::Interrupted(_)) => {
                summary.interrupted = true;
                summary.rollback_succeeded = Some(false);
            }
            Some(PhaseStop::Failed(e, _)) => {
                summary.rollback_succeeded = Some(false);
                error = Some(format!(
                    "{}; rollback failed: {e}",
                    error.unwrap_or_default()
                ));
            }
        }
    }

    let result = AttemptResult {
        exit_status,
        error,
        outputs,
        canary_passed: summary.canary_passed,
        rollback_attempted: summary.rollback_succeeded.is_some(),
        rollback_succeeded: summary.rollback_succeeded,
        interrupted: summary.interrupted,
    };
    (result, summary)
}

/// Runs one list of commands in order, stopping at the first failure or at
/// shutdown.
async fn run_phase(
    p: &Prepared,
    phase: Phase,
    list: &[Vec<String>],
    id: &RunId,
    attempt: u32,
    kill: &KillSwitch,
) -> (Vec<CommandOutput>, Option<PhaseStop>) {
    let mut collected = Vec::with_capacity(list.len());
    for argv in list {
        if *kill.borrow() {
            return (collected, Some(PhaseStop::Interrupted(None)));
        }
        let spec = CommandSpec {
            phase,
            argv,
            sudo: p.sudo,
            run_id: id.as_str(),
            attempt,
        };
        let ex = run_command(&spec, &p.runner, Some(kill.clone())).await;
        log_command(&ex);
        let stop = if ex.interrupted() {
            Some(PhaseStop::Interrupted(Some(ex.describe_failure())))
        } else if !ex.success() {
            Some(PhaseStop::Failed(
                ex.describe_failure(),
                ex.output.exit_code,
            ))
        } else {
            None
        };
        collected.push(ex.output);
        if stop.is_some() {
            return (collected, stop);
        }
    }
    (collected, None)
}

enum PhaseStop {
    Interrupted(Option<String>),
    Failed(String, Option<i32>),
}

fn log_command(ex: &Executed) {
    let o = &ex.output;
    if ex.success() {
        tracing::info!(
            phase = ?o.phase,
            argv = %o.argv.join(" "),
            duration_ms = o.duration_ms,
            truncated = o.truncated,
            "command succeeded"
        );
    } else {
        tracing::warn!(
            phase = ?o.phase,
            argv = %o.argv.join(" "),
            exit_code = ?o.exit_code,
            signal = ?o.signal,
            timed_out = o.timed_out,
            duration_ms = o.duration_ms,
            error = %ex.describe_failure(),
            "command failed"
        );
    }
}
