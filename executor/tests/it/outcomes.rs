//! Every outcome path of a claimed run, with real commands, via `once`.

use remediate_executor::{RunEnd, drain_once};
use remediate_spool::{Phase, RunState};

use crate::util::*;

async fn once(env: &Env, limit: usize) -> remediate_executor::daemon::Drained {
    let (deps, _rx) = env.deps(Default::default());
    drain_once(&deps, limit, no_kill()).await.expect("drain")
}

#[tokio::test]
async fn success_completes_the_run_with_its_output() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("ok"));
    let d = once(&env, 5).await;
    assert_eq!(d.runs, vec![(id.clone(), RunEnd::Succeeded)]);
    assert!(d.all_well());
    let r = env.get(&id);
    assert_eq!(r.state, RunState::Succeeded);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.history.len(), 1);
    let out = &r.history[0].result.outputs;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exit_code, Some(0));
    assert_eq!(env.count_lines("ran", &id), 1);
}

#[tokio::test]
async fn attempt_started_is_durable_before_the_first_command() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("show-own-record"));
    let d = once(&env, 1).await;
    assert!(d.all_well(), "{d:?}");
    let r = env.get(&id);
    let seen = &r.history[0].result.outputs[0].stdout;
    assert!(
        seen.contains(r#""type":"attemptStarted""#),
        "the command saw its record without attempt-started: {seen}"
    );
}

#[tokio::test]
async fn retryable_failure_schedules_a_retry_then_succeeds() {
    let env = Env::new();
    env.planner.set_backoff(
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(3600),
    );
    let id = env.enqueue(env.new_run("fail-once"));
    let d = once(&env, 5).await;
    assert_eq!(d.runs.len(), 1, "a retry an hour away is not due: {d:?}");
    assert!(matches!(d.runs[0].1, RunEnd::RetryScheduled(_)));
    assert!(d.all_well(), "retry scheduled counts as ended well");
    let r = env.get(&id);
    assert_eq!(r.state, RunState::Queued);
    assert!(r.is_retry_scheduled());
    let due = r.next_attempt_at.expect("next attempt time");
    assert!(due > env.spool.now() + chrono::Duration::minutes(59));
    assert_eq!(
        r.last_error.as_deref().map(|e| e.contains("exit code 3")),
        Some(true)
    );

    // With no backoff the retry is due at once and succeeds.
    env.planner
        .set_backoff(std::time::Duration::ZERO, std::time::Duration::ZERO);
    let id2 = env.enqueue(env.new_run("fail-once"));
    let d = once(&env, 5).await;
    let ends: Vec<_> = d
        .runs
        .iter()
        .filter(|(i, _)| *i == id2)
        .map(|(_, e)| e.clone())
        .collect();
    assert!(matches!(ends[0], RunEnd::RetryScheduled(_)));
    assert_eq!(ends[1], RunEnd::Succeeded);
    let r = env.get(&id2);
    assert_eq!(
        (r.state, r.attempts, r.history.len()),
        (RunState::Succeeded, 2, 2)
    );
}

#[tokio::test]
async fn exhausted_attempts_dead_letter_max_attempts_exceeded() {
    let env = Env::new();
    let mut new = env.new_run("always-fail");
    new.max_attempts = 2;
    let id = env.enqueue(new);
    let d = once(&env, 5).await;
    assert_eq!(d.runs.len(), 2);
    assert_eq!(
        d.runs[1].1,
        RunEnd::DeadLettered("max_attempts_exceeded".into())
    );
    assert!(!d.all_well());
    let r = env.get(&id);
    assert_eq!(r.state, RunState::Dlq);
    assert_eq!(r.dlq_reason.as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(env.count_lines("ran", &id), 2);
}

#[tokio::test]
async fn commands_stop_at_the_first_failure() {
    let env = Env::new();
    let mut new = env.new_run("two-steps-first-fails");
    new.max_attempts = 1;
    let id = env.enqueue(new);
    once(&env, 1).await;
    assert!(!env.marker("second", &id).exists());
    let r = env.get(&id);
    assert_eq!(r.history[0].result.outputs.len(), 1);
    assert_eq!(r.history[0].result.exit_status, Some(1));
}

#[tokio::test]
async fn canary_failure_dead_letters_canary_failed() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("canary-fails"));
    let d = once(&env, 5).await;
    assert_eq!(
        d.runs,
        vec![(id.clone(), RunEnd::DeadLettered("canary_failed".into()))]
    );
    let r = env.get(&id);
    assert_eq!(r.dlq_reason.as_deref(), Some("canary_failed"));
    let res = &r.history[0].result;
    assert_eq!(res.canary_passed, Some(false));
    assert!(!res.rollback_attempted);
    let phases: Vec<Phase> = res.outputs.iter().map(|o| o.phase).collect();
    assert_eq!(phases, vec![Phase::Command, Phase::Canary, Phase::Canary]);
}

#[tokio::test]
async fn canary_failure_with_rollback_dead_letters_auto_rolled_back() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("canary-fails-rollback"));
    once(&env, 5).await;
    let r = env.get(&id);
    assert_eq!(r.dlq_reason.as_deref(), Some("auto_rolled_back"));
    assert!(env.marker("rolledback", &id).exists());
    let res = &r.history[0].result;
    assert!(res.rollback_attempted);
    assert_eq!(res.rollback_succeeded, Some(true));
}

#[tokio::test]
async fn command_failure_with_rollback_is_rolled_back_once_not_retried() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("fail-rollback"));
    let d = once(&env, 5).await;
    assert_eq!(
        d.runs,
        vec![(id.clone(), RunEnd::DeadLettered("auto_rolled_back".into()))]
    );
    assert_eq!(env.get(&id).attempts, 1);
}

#[tokio::test]
async fn failed_rollback_dead_letters_auto_rollback_failed() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("fail-rollback-fails"));
    once(&env, 5).await;
    let r = env.get(&id);
    assert_eq!(r.dlq_reason.as_deref(), Some("auto_rollback_failed"));
    assert_eq!(r.history[0].result.rollback_succeeded, Some(false));
}

#[tokio::test]
async fn without_auto_rollback_a_failure_is_retried() {
    let env = Env::new();
    env.planner.set_auto_rollback(false);
    let mut new = env.new_run("fail-rollback");
    new.max_attempts = 2;
    let id = env.enqueue(new);
    once(&env, 5).await;
    let r = env.get(&id);
    assert_eq!(r.dlq_reason.as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(r.attempts, 2);
    assert!(!env.marker("rolledback", &id).exists());
}

#[tokio::test]
async fn passing_canary_succeeds_without_rollback() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("canary-ok"));
    once(&env, 5).await;
    let r = env.get(&id);
    assert_eq!(r.state, RunState::Succeeded);
    assert_eq!(r.history[0].result.canary_passed, Some(true));
    assert!(!env.marker("rolledback", &id).exists());
}

#[tokio::test]
async fn disabled_host_cancels_without_running() {
    let env = Env::new();
    env.planner.set_host_enabled("host-a", false);
    let id = env.enqueue(env.new_run("ok"));
    let d = once(&env, 5).await;
    assert_eq!(d.runs, vec![(id.clone(), RunEnd::Canceled)]);
    assert!(!d.all_well());
    assert_eq!(env.get(&id).state, RunState::Canceled);
    assert_eq!(env.count_lines("ran", &id), 0);
}

#[tokio::test]
async fn expired_run_is_not_executed() {
    let env = Env::new();
    let mut new = env.new_run("ok");
    new.expires_at = Some(env.spool.now() - chrono::Duration::seconds(1));
    let id = env.enqueue(new);
    let d = once(&env, 5).await;
    assert_eq!(d.runs, vec![(id.clone(), RunEnd::Expired)]);
    assert_eq!(env.get(&id).state, RunState::Expired);
    assert_eq!(env.count_lines("ran", &id), 0);
}

#[tokio::test]
async fn guard_recheck_dead_letters_policy_blocked_without_an_attempt() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("ok"));
    // The policy changed between enqueue and execution.
    env.planner.set_blocked("ok", true);
    let d = once(&env, 5).await;
    assert_eq!(
        d.runs,
        vec![(id.clone(), RunEnd::DeadLettered("policy_blocked".into()))]
    );
    let r = env.get(&id);
    assert_eq!((r.state, r.attempts), (RunState::Dlq, 0));
    assert_eq!(r.dlq_reason.as_deref(), Some("policy_blocked"));
    assert_eq!(env.count_lines("ran", &id), 0);
}

#[tokio::test]
async fn action_missing_from_catalog_is_policy_blocked() {
    let env = Env::new();
    let id = env.enqueue(env.new_run("no-such-action"));
    once(&env, 5).await;
    assert_eq!(env.get(&id).dlq_reason.as_deref(), Some("policy_blocked"));
}

#[tokio::test]
async fn held_runs_are_never_executed() {
    let env = Env::new();
    let mut new = env.new_run("ok");
    new.approval_required = true;
    let id = env.enqueue(new);
    let d = once(&env, 5).await;
    assert!(d.runs.is_empty());
    assert_eq!(env.get(&id).state, RunState::Held);
    env.spool
        .approve_blocking(&id, "op", None)
        .expect("approve");
    let d = once(&env, 5).await;
    assert_eq!(d.runs, vec![(id.clone(), RunEnd::Succeeded)]);
}

#[tokio::test]
async fn once_respects_its_limit() {
    let env = Env::new();
    for _ in 0..3 {
        env.enqueue(env.new_run("ok"));
    }
    assert_eq!(once(&env, 2).await.runs.len(), 2);
    assert_eq!(once(&env, 2).await.runs.len(), 1);
    assert_eq!(once(&env, 2).await.runs.len(), 0);
}
