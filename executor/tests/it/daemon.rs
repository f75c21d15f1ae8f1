//! The daemon loop: event-driven pickup, the due timer, shutdown.

use std::time::Duration;

use remediate_executor::RunEnd;
use remediate_spool::{RunId, RunState};

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
    // The first request makes the host's drain file; the second rewrites
    // it in place, and that change must wake the daemon too.
    for _ in 0..2 {
        let id = env.enqueue(env.new_run("fail-once"));
        assert!(matches!(d.next_event().await, (ref i, RunEnd::RetryScheduled(_)) if *i == id));
        // Due in an hour; flushing makes it due now. The drain request (as
        // the HTTP drain route sends it) is taken from control/ by the
        // daemon.
        assert_eq!(
            env.spool.flush_retries_blocking(&env.host).expect("flush"),
            1
        );
        env.spool
            .request_drain_blocking(&env.host, 5)
            .expect("drain request");
        assert_eq!(d.next_event().await, (id, RunEnd::Succeeded));
    }
    d.shutdown().await;
    // The requests were consumed: the host's drain file is empty, and it
    // is all that control/ holds.
    assert_eq!(
        env.spool.take_drain_requests(&env.host).expect("take"),
        None
    );
    let left: Vec<_> = std::fs::read_dir(env.spool.control_path())
        .expect("control dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![format!("drain.{}", env.host)]);
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

/// The next two processed runs, in run id order: a run is reported when its
/// outcome is durable, and the run after it may end first.
async fn next_two(d: &mut Daemon) -> Vec<(RunId, RunEnd)> {
    let mut v = vec![d.next_event().await, d.next_event().await];
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn both(a: (RunId, RunEnd), b: (RunId, RunEnd)) -> Vec<(RunId, RunEnd)> {
    let mut v = vec![a, b];
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// An action whose command waits while `<scratch>/hold` exists: quick
/// without it, as long as a test likes with it.
fn gated(env: &Env) {
    let s = env.scratch();
    let s = s.display();
    env.planner.action(
        "gated",
        remediate_executor::StaticAction {
            commands: vec![sh(&format!(
                "touch {s}/started.{{run_id}}; while [ -e {s}/hold ]; do sleep 0.01; done; echo ran >> {s}/ran.{{run_id}}"
            ))],
            ..Default::default()
        },
    );
}

/// Settings where an action counts as quick if its commands took under
/// 10 s (the first run of `gated` must count as quick on a loaded machine).
fn ready_ahead() -> remediate_executor::DaemonSettings {
    remediate_executor::DaemonSettings {
        ready_ahead_under: Duration::from_secs(10),
        ..no_rescan()
    }
}

/// With a quick run of `gated` behind it (so the daemon knows the action
/// to be quick), `second` runs held and `third` is queued behind it; waits
/// until the daemon has readied `third`: its attempt started, its command
/// not.
async fn ready_one_ahead(env: &Env, d: &mut Daemon) -> (RunId, RunId) {
    gated(env);
    let first = env.enqueue(env.new_run("gated"));
    assert_eq!(d.next_event().await, (first, RunEnd::Succeeded));
    let hold = env.scratch().join("hold");
    std::fs::write(&hold, b"").expect("hold");
    let second = env.enqueue(env.new_run("gated"));
    wait_for_file(&env.marker("started", &second)).await;
    let third = env.enqueue(env.new_run("gated"));
    let mut r = env.get(&third);
    for _ in 0..2400 {
        if r.open_attempt().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        r = env.get(&third);
    }
    assert!(r.open_attempt().is_some(), "never readied: {r:?}");
    assert_eq!(r.state, RunState::Running);
    // One command slot: the readied run of the same action waits for it.
    assert!(
        !env.marker("started", &third).exists(),
        "the third run's command started while the second's ran"
    );
    assert_eq!(env.get(&second).state, RunState::Running);
    (second, third)
}

#[tokio::test]
async fn the_next_run_is_readied_while_a_quick_action_runs_and_waits_its_turn() {
    let env = Env::new();
    let mut d = Daemon::start(&env, ready_ahead());
    let (second, third) = ready_one_ahead(&env, &mut d).await;
    std::fs::remove_file(env.scratch().join("hold")).expect("release");
    assert_eq!(
        next_two(&mut d).await,
        both(
            (second.clone(), RunEnd::Succeeded),
            (third.clone(), RunEnd::Succeeded)
        )
    );
    d.shutdown().await;
    for id in [&second, &third] {
        assert_eq!(env.count_lines("ran", id), 1);
        assert_eq!(env.get(id).attempts, 1);
    }
}

/// Readies a run, applies `refuse` while it waits, lets the running one
/// finish: the readied run must end in the DLQ with `reason`, its command
/// never started, its attempt closed as "not launched".
async fn refused_while_readied(refuse: impl FnOnce(&Env), reason: &str) {
    let env = Env::new();
    let mut d = Daemon::start(&env, ready_ahead());
    let (second, third) = ready_one_ahead(&env, &mut d).await;
    refuse(&env);
    std::fs::remove_file(env.scratch().join("hold")).expect("release");
    // The running command finishes; the readied one never starts.
    assert_eq!(
        next_two(&mut d).await,
        both(
            (second.clone(), RunEnd::Succeeded),
            (third.clone(), RunEnd::DeadLettered(reason.into()))
        )
    );
    d.shutdown().await;
    assert!(!env.marker("started", &third).exists());
    let r = env.get(&third);
    assert_eq!(r.state, RunState::Dlq);
    assert_eq!(r.dlq_reason.as_deref(), Some(reason));
    assert!(r.open_attempt().is_none());
    let why = r.history[0].result.error.clone().unwrap_or_default();
    assert!(why.starts_with("not launched"), "{why}");
}

#[tokio::test]
async fn a_readied_run_does_not_launch_on_a_host_disabled_while_it_waited() {
    refused_while_readied(
        |env| env.planner.set_host_enabled(env.host.as_str(), false),
        "host_disabled",
    )
    .await;
}

#[tokio::test]
async fn a_readied_run_does_not_launch_when_the_guard_now_refuses_it() {
    refused_while_readied(
        |env| env.planner.set_blocked("gated", true),
        "policy_blocked",
    )
    .await;
}

#[tokio::test]
async fn shutdown_runs_a_readied_run_within_grace() {
    let env = Env::new();
    let mut d = Daemon::start(&env, ready_ahead());
    let (second, third) = ready_one_ahead(&env, &mut d).await;
    let Daemon {
        stop, task, events, ..
    } = d;
    if let Some(s) = stop {
        let _ = s.send(());
    }
    // Stopping: no new claims, but the readied run's attempt has started,
    // so it runs once the slot is free (within the grace period).
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_file(env.scratch().join("hold")).expect("release");
    let stopped = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stopped within a minute")
        .expect("join")
        .expect("daemon ok");
    drop(events);
    assert_eq!(stopped.interrupted, 0);
    for id in [&second, &third] {
        assert_eq!(env.get(id).state, RunState::Succeeded);
        assert_eq!(env.count_lines("ran", id), 1);
    }
}

/// The grace period ends while a readied run still waits for the command
/// slot: the running command is killed, and the readied run's command never
/// starts. Its attempt is closed as "not launched" and, since nothing ran,
/// it goes back to the queue although its action is not idempotent.
#[tokio::test]
async fn a_readied_run_is_not_launched_after_the_grace_period() {
    let env = Env::new();
    let mut settings = ready_ahead();
    settings.shutdown_grace = Duration::from_millis(300);
    let mut d = Daemon::start(&env, settings);
    let (second, third) = ready_one_ahead(&env, &mut d).await;
    d.shutdown().await;
    let _ = std::fs::remove_file(env.scratch().join("hold"));
    let killed = env.get(&second);
    assert_eq!(killed.state, RunState::Dlq);
    assert_eq!(killed.dlq_reason.as_deref(), Some("interrupted"));
    assert!(!env.marker("started", &third).exists());
    assert_eq!(env.count_lines("ran", &third), 0);
    let r = env.get(&third);
    assert_eq!(r.state, RunState::Queued, "{r:?}");
    assert!(!r.idempotent);
    assert_eq!(r.attempts, 1);
    assert!(r.open_attempt().is_none());
    let why = r.history[0].result.error.clone().unwrap_or_default();
    assert!(why.starts_with("not launched"), "{why}");
    assert!(r.next_attempt_at.is_some_and(|t| t <= env.spool.now()));
}

#[tokio::test]
async fn a_run_is_not_readied_behind_an_action_not_known_to_be_quick() {
    let env = Env::new();
    gated(&env);
    let mut d = Daemon::start(&env, no_rescan());
    std::fs::write(env.scratch().join("hold"), b"").expect("hold");
    // No quick run of `gated` yet: the daemon does not know how long its
    // commands take, so nothing is readied behind it.
    let first = env.enqueue(env.new_run("gated"));
    wait_for_file(&env.marker("started", &first)).await;
    let second = env.enqueue(env.new_run("gated"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = env.get(&second);
    assert_eq!(r.state, RunState::Queued, "{r:?}");
    std::fs::remove_file(env.scratch().join("hold")).expect("release");
    assert_eq!(
        next_two(&mut d).await,
        both((first, RunEnd::Succeeded), (second, RunEnd::Succeeded))
    );
    d.shutdown().await;
}
