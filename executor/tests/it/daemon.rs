//! The daemon loop: event-driven pickup, the due timer, shutdown.

use std::time::Duration;

use remediate_executor::RunEnd;
use remediate_spool::RunState;

use crate::util::*;

#[tokio::test]
async fn picks_up_a_new_run_through_inotify_without_rescan() {
    let env = Env::new();
    let mut d = Daemon::start(&env, no_rescan());
    // Rescans are an hour apart: only the queued/ watch can wake it.
    let id = env.enqueue(env.new_run("ok"));
    let (got, end) = d.next_event().await;
    assert_eq!((got, end), (id.clone(), RunEnd::Succeeded));
    let id2 = env.enqueue(env.new_run("ok"));
    assert_eq!(d.next_event().await, (id2, RunEnd::Succeeded));
    assert_eq!(d.shutdown().await.interrupted, 0);
    assert_eq!(env.get(&id).state, RunState::Succeeded);
}

#[tokio::test]
async fn a_scheduled_retry_wakes_the_daemon_when_due() {
    let env = Env::new();
    env.planner
        .set_backoff(Duration::from_secs(1), Duration::from_secs(1));
    let mut d = Daemon::start(&env, no_rescan());
    let id = env.enqueue(env.new_run("fail-once"));
    assert!(matches!(d.next_event().await, (ref i, RunEnd::RetryScheduled(_)) if *i == id));
    // Nothing is published when the retry becomes due: the timer wakes it.
    assert_eq!(d.next_event().await, (id.clone(), RunEnd::Succeeded));
    d.shutdown().await;
    assert_eq!(env.get(&id).attempts, 2);
}

#[tokio::test]
async fn runs_queued_before_start_are_drained() {
    let env = Env::new();
    let ids: Vec<_> = (0..3).map(|_| env.enqueue(env.new_run("ok"))).collect();
    let mut d = Daemon::start(&env, no_rescan());
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(d.next_event().await.0);
    }
    d.shutdown().await;
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn shutdown_lets_a_running_command_finish_within_grace() {
    let env = Env::new();
    env.planner.action(
        "short",
        remediate_executor::StaticAction {
            commands: vec![sh(&format!(
                "touch {}/started.$REMEDIATE_RUN_ID; sleep 0.3",
                env.scratch().display()
            ))],
            ..Default::default()
        },
    );
    let d = Daemon::start(&env, no_rescan());
    let id = env.enqueue(env.new_run("short"));
    wait_for_file(&env.marker("started", &id)).await;
    let stopped = d.shutdown().await;
    assert_eq!(stopped.interrupted, 0);
    assert_eq!(env.get(&id).state, RunState::Succeeded);
}

#[tokio::test]
async fn shutdown_after_grace_kills_and_records_interrupted() {
    let env = Env::new();
    let mut settings = no_rescan();
    settings.shutdown_grace = Duration::from_millis(200);
    let d = Daemon::start(&env, settings.clone());
    let id = env.enqueue(env.new_run("slow"));
    let mut idem = env.new_run("slow");
    idem.idempotent = true;
    wait_for_file(&env.marker("started", &id)).await;
    let stopped = d.shutdown().await;
    assert_eq!(stopped.interrupted, 1);
    let r = env.get(&id);
    assert_eq!(
        r.state,
        RunState::Dlq,
        "not idempotent: an operator decides"
    );
    assert_eq!(r.dlq_reason.as_deref(), Some("interrupted"));
    assert!(r.history[0].result.interrupted);

    // An idempotent action is queued again, due now.
    let d = Daemon::start(&env, settings);
    let id2 = env.enqueue(idem);
    wait_for_file(&env.marker("started", &id2)).await;
    d.shutdown().await;
    let r = env.get(&id2);
    assert_eq!(r.state, RunState::Queued);
    assert!(r.history[0].result.interrupted);
    assert!(r.next_attempt_at.is_some_and(|t| t <= env.spool.now()));
}

#[tokio::test]
async fn one_active_run_per_action_even_with_concurrency() {
    let env = Env::new();
    let mut settings = no_rescan();
    settings.concurrency = 4;
    settings.shutdown_grace = Duration::from_millis(100);
    let d = Daemon::start(&env, settings);
    let a = env.enqueue(env.new_run("slow"));
    let b = env.enqueue(env.new_run("slow"));
    let c = env.enqueue(env.new_run("ok"));
    wait_for_file(&env.marker("started", &a)).await;
    wait_for_file(&env.marker("ran", &c)).await;
    // `a` blocks the second run of the same action while it runs; `ok` ran
    // beside it. (Read b first: if b started, a must have ended before.)
    let b_started = env.marker("started", &b).exists();
    let a_now = env.get(&a);
    if a_now.state == RunState::Running {
        assert!(!b_started, "b started while a was running: {a_now:?}");
        assert_eq!(env.get(&b).state, RunState::Queued);
    } else {
        eprintln!(
            "a ended before the check ({:?}); b started: {b_started}",
            a_now.state
        );
    }
    d.shutdown().await;
}

#[tokio::test]
async fn flushed_retries_run_at_once_and_drain_requests_are_consumed() {
    let env = Env::new();
    env.planner
        .set_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
    let mut d = Daemon::start(&env, no_rescan());
    let id = env.enqueue(env.new_run("fail-once"));
    assert!(matches!(d.next_event().await, (ref i, RunEnd::RetryScheduled(_)) if *i == id));
    // Due in an hour; flushing makes it due now. The drain request (as the
    // HTTP drain route sends it) is taken from control/ by the daemon.
    assert_eq!(
        env.spool.flush_retries_blocking(&env.host).expect("flush"),
        1
    );
    env.spool
        .request_drain_blocking(&env.host, 5)
        .expect("drain request");
    assert_eq!(d.next_event().await, (id.clone(), RunEnd::Succeeded));
    d.shutdown().await;
    // The request was consumed.
    let left = std::fs::read_dir(env.spool.control_path())
        .expect("control dir")
        .count();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn runs_left_by_a_dead_executor_are_settled_by_the_recovery_at_start() {
    let env = Env::new();
    // Another process's view of the spool claims two runs and dies: one
    // claim only, one with its attempt started (dropping the spool closes
    // the files, so the kernel drops their locks as on SIGKILL).
    let dead = remediate_spool::LocalSpool::open(env.spool.root()).expect("open");
    let orphan = env.enqueue(env.new_run("ok"));
    let claimed = dead
        .claim_next_blocking(&env.host, &|_| false)
        .expect("claim");
    assert_eq!(claimed.map(|r| r.run_id), Some(orphan.clone()));
    let interrupted = env.enqueue(env.new_run("ok"));
    let claimed = dead
        .claim_next_blocking(&env.host, &|_| false)
        .expect("claim");
    assert_eq!(claimed.map(|r| r.run_id), Some(interrupted.clone()));
    dead.start_attempt_blocking(&interrupted).expect("start");
    drop(dead);

    // Recovery runs beside the claim loop; what it requeues is picked up
    // through the queued/ watch.
    let mut d = Daemon::start(&env, no_rescan());
    assert_eq!(d.next_event().await, (orphan.clone(), RunEnd::Succeeded));
    assert_eq!(env.count_lines("ran", &orphan), 1);
    // Not idempotent and its attempt started: an operator decides.
    let mut r = env.get(&interrupted);
    for _ in 0..2400 {
        if r.state == RunState::Dlq {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        r = env.get(&interrupted);
    }
    assert_eq!(r.state, RunState::Dlq);
    assert_eq!(r.dlq_reason.as_deref(), Some("interrupted"));
    assert_eq!(env.count_lines("ran", &interrupted), 0);
    d.shutdown().await;
}
