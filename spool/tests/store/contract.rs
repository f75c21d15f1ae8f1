//! The store contract: every case runs against the local spool and against
//! the S3 + SQS store (see `main.rs`), so both keep one behaviour. A case
//! gets a store with no runs and a host name of its own.

use std::collections::BTreeMap;

use remediate_spool::*;
use serde_json::json;

pub fn host(s: &str) -> HostId {
    HostId::parse(s).expect("valid host id")
}

pub fn run(h: &HostId, action: &str) -> NewRun {
    NewRun {
        params: BTreeMap::from([("unit".to_string(), json!("nginx"))]),
        ..NewRun::new(h.clone(), action, "tester")
    }
}

pub fn held(h: &HostId, action: &str) -> NewRun {
    NewRun {
        approval_required: true,
        ..run(h, action)
    }
}

pub fn ok_result() -> AttemptResult {
    AttemptResult {
        exit_status: Some(0),
        ..AttemptResult::default()
    }
}

pub fn fail_result() -> AttemptResult {
    AttemptResult {
        exit_status: Some(1),
        error: Some("exit 1".into()),
        ..AttemptResult::default()
    }
}

fn later() -> Timestamp {
    chrono::Utc::now() + chrono::Duration::hours(1)
}

#[track_caller]
fn illegal<T: std::fmt::Debug>(r: Result<T>, state: RunState) {
    match r {
        Err(SpoolError::IllegalMove { state: s, .. }) => assert_eq!(s, state),
        other => panic!("expected an illegal move from {state}, got {other:?}"),
    }
}

fn ids(v: &[RunRecord]) -> Vec<RunId> {
    v.iter().map(|r| r.run_id.clone()).collect()
}

/// A run is created once; an idempotency key on the same host returns the
/// first run, on another host names another run.
pub async fn enqueue_and_idempotency(s: &dyn Store) {
    let h = host("web-1");
    let a = s.enqueue(run(&h, "restart")).await.unwrap();
    assert!(a.created);
    assert_eq!(a.record.state, RunState::Queued);
    assert_eq!(a.record.attempts, 0);
    assert_eq!(
        s.get(&a.record.run_id).await.unwrap(),
        Some(a.record.clone())
    );
    assert_eq!(
        s.get(&RunId::parse("r-missing").unwrap()).await.unwrap(),
        None
    );

    let key = IdemKey::parse("deploy-42").unwrap();
    let keyed = NewRun {
        idempotency_key: Some(key.clone()),
        ..run(&h, "restart")
    };
    let first = s.enqueue(keyed.clone()).await.unwrap();
    assert!(first.created);
    let again = s.enqueue(keyed.clone()).await.unwrap();
    assert!(!again.created, "the same key twice creates one run");
    assert_eq!(again.record.run_id, first.record.run_id);
    assert_eq!(again.record, first.record);

    let other = host("web-2");
    let elsewhere = s
        .enqueue(NewRun {
            host_id: other.clone(),
            ..keyed
        })
        .await
        .unwrap();
    assert!(elsewhere.created, "the key is per host");
    assert_ne!(elsewhere.record.run_id, first.record.run_id);
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!(c.queued, 2);
    assert_eq!(s.counts(None).await.unwrap().queued, 3);
    assert_eq!(s.hosts().await.unwrap(), vec![h, other]);
}

/// Held runs wait for an operator; approve makes them ready, reject ends
/// them; each only from held.
pub async fn held_approve_reject(s: &dyn Store) {
    let h = host("db-1");
    let a = s.enqueue(held(&h, "vacuum")).await.unwrap().record;
    let b = s.enqueue(held(&h, "vacuum")).await.unwrap().record;
    assert_eq!(a.state, RunState::Held);
    assert_eq!(a.approval.status, ApprovalStatus::Pending);
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.held, c.queued), (2, 0));
    assert_eq!(
        s.claim_next(&h, vec![]).await.unwrap(),
        None,
        "held runs are not claimable"
    );

    let a2 = s
        .approve(&a.run_id, "alice", Some("ok".into()))
        .await
        .unwrap();
    assert_eq!(a2.state, RunState::Queued);
    assert_eq!(a2.approval.status, ApprovalStatus::Approved);
    assert_eq!(a2.approval.decided_by.as_deref(), Some("alice"));
    illegal(s.approve(&a.run_id, "bob", None).await, RunState::Queued);
    illegal(s.reject(&a.run_id, "bob", None).await, RunState::Queued);

    let b2 = s.reject(&b.run_id, "bob", Some("no".into())).await.unwrap();
    assert_eq!(b2.state, RunState::Rejected);
    illegal(
        s.approve(&b.run_id, "alice", None).await,
        RunState::Rejected,
    );
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.held, c.queued, c.rejected), (0, 1, 1));
    assert_eq!(s.get(&b.run_id).await.unwrap(), Some(b2));
    match s.approve(&RunId::parse("r-nope").unwrap(), "x", None).await {
        Err(SpoolError::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

/// claim -> start -> complete, oldest first, one active run per action.
pub async fn claim_start_complete(s: &dyn Store) {
    let h = host("app-1");
    let a = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let b = s.enqueue(run(&h, "rotate-logs")).await.unwrap().record;
    match s.complete(&a.run_id, ok_result()).await {
        Err(SpoolError::NotClaimed { .. }) => {}
        other => panic!("complete without a claim: {other:?}"),
    }
    match s.start_attempt(&a.run_id).await {
        Err(SpoolError::NotClaimed { .. }) => {}
        other => panic!("start without a claim: {other:?}"),
    }
    let got = s
        .claim_next(&h, vec!["restart".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.run_id, b.run_id, "a busy action is skipped");
    let got_a = s.claim_next(&h, vec![]).await.unwrap().unwrap();
    assert_eq!(got_a.run_id, a.run_id);
    assert_eq!(
        s.claim_next(&h, vec![]).await.unwrap(),
        None,
        "both are claimed"
    );
    illegal(s.complete(&a.run_id, ok_result()).await, RunState::Queued);

    let started = s.start_attempt(&a.run_id).await.unwrap();
    assert_eq!(started.state, RunState::Running);
    assert_eq!(started.attempts, 1);
    assert!(started.open_attempt().is_some());
    // Claimed runs count and list as running, started or not.
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.running, c.queued), (2, 0));
    let running = s
        .list(ListQuery {
            host: Some(h.clone()),
            buckets: vec![Bucket::Running],
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(ids(&running), vec![a.run_id.clone(), b.run_id.clone()]);
    illegal(s.start_attempt(&a.run_id).await, RunState::Running);
    let noted = s
        .append_event(&a.run_id, "progress", json!({"step": 1}))
        .await
        .unwrap();
    assert_eq!(noted.notes.len(), 1);
    assert_eq!(noted.state, RunState::Running);

    let done = s.complete(&a.run_id, ok_result()).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert!(done.finished_at.is_some());
    assert_eq!(done.history.len(), 1);
    assert_eq!(done.history[0].result.exit_status, Some(0));
    assert_eq!(s.get(&a.run_id).await.unwrap(), Some(done));
    illegal(s.cancel(&a.run_id, "late").await, RunState::Succeeded);

    s.start_attempt(&b.run_id).await.unwrap();
    s.complete(&b.run_id, ok_result()).await.unwrap();
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.queued, c.running, c.succeeded), (0, 0, 2));
}

/// A failed attempt is retried at its time; without attempts left the run
/// is dead-lettered; a replay makes a fresh linked run.
pub async fn retry_dead_letter_replay(s: &dyn Store) {
    let h = host("cache-1");
    let r = s
        .enqueue(NewRun {
            max_attempts: 2,
            ..run(&h, "flush")
        })
        .await
        .unwrap()
        .record;
    s.claim_next(&h, vec![]).await.unwrap().unwrap();
    s.start_attempt(&r.run_id).await.unwrap();
    let when = later();
    let q = s.retry_at(&r.run_id, when, fail_result()).await.unwrap();
    assert_eq!(q.state, RunState::Queued);
    assert!(q.is_retry_scheduled());
    assert_eq!(q.last_error.as_deref(), Some("exit 1"));
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.queued, c.retry_scheduled), (0, 1));
    assert_eq!(s.claim_next(&h, vec![]).await.unwrap(), None, "not due yet");
    let due = s.next_due(&h).await.unwrap().unwrap();
    assert_eq!(due.timestamp_millis(), when.timestamp_millis());

    assert_eq!(s.flush_retries(&h).await.unwrap(), 1);
    assert_eq!(s.flush_retries(&h).await.unwrap(), 0, "already due");
    s.claim_next(&h, vec![]).await.unwrap().unwrap();
    let second = s.start_attempt(&r.run_id).await.unwrap();
    assert_eq!(second.attempts, 2);
    illegal(
        s.retry_at(&r.run_id, later(), fail_result()).await,
        RunState::Running,
    );
    let dead = s
        .dead_letter(&r.run_id, "max_attempts_exceeded", Some(fail_result()))
        .await
        .unwrap();
    assert_eq!(dead.state, RunState::Dlq);
    assert!(dead.dlq);
    assert_eq!(dead.dlq_reason.as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(s.counts(Some(h.clone())).await.unwrap().dlq, 1);

    let child = s.replay(&r.run_id, "alice").await.unwrap();
    assert_ne!(child.run_id, r.run_id);
    assert_eq!(child.state, RunState::Queued);
    assert_eq!(child.attempts, 0);
    assert_eq!(child.replay_of_run_id.as_ref(), Some(&r.run_id));
    assert_eq!(child.requested_by, "alice");
    let src = s.get(&r.run_id).await.unwrap().unwrap();
    assert_eq!(src.state, RunState::Replayed);
    assert!(!src.dlq);
    assert_eq!(src.replayed_as, vec![child.run_id.clone()]);
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.dlq, c.replayed, c.queued), (0, 1, 1));
    illegal(s.replay(&child.run_id, "alice").await, RunState::Queued);

    // A queued run can be dead-lettered without an attempt.
    let q2 = s.enqueue(run(&h, "flush")).await.unwrap().record;
    let d2 = s
        .dead_letter(&q2.run_id, "policy_blocked", None)
        .await
        .unwrap();
    assert_eq!((d2.state, d2.attempts), (RunState::Dlq, 0));
}

/// hold, expire and cancel, each only from the states that allow it.
pub async fn hold_expire_cancel(s: &dyn Store) {
    let h = host("edge-1");
    let a = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let held_a = s.hold(&a.run_id, "policy changed").await.unwrap();
    assert_eq!(held_a.state, RunState::Held);
    assert_eq!(held_a.approval.status, ApprovalStatus::Pending);
    illegal(s.hold(&a.run_id, "again").await, RunState::Held);
    let exp = s.expire(&a.run_id).await.unwrap();
    assert_eq!(exp.state, RunState::Expired);
    assert_eq!(exp.end_reason.as_deref(), Some("expired"));
    illegal(s.expire(&a.run_id).await, RunState::Expired);

    let b = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let can = s.cancel(&b.run_id, "operator").await.unwrap();
    assert_eq!(can.state, RunState::Canceled);
    assert_eq!(can.end_reason.as_deref(), Some("operator"));
    illegal(s.hold(&b.run_id, "x").await, RunState::Canceled);
    illegal(
        s.dead_letter(&b.run_id, "x", None).await,
        RunState::Canceled,
    );
    // Replaying a finished (not dead-lettered) run keeps its state.
    let child = s.replay(&b.run_id, "bob").await.unwrap();
    assert_eq!(child.replay_of_run_id.as_ref(), Some(&b.run_id));
    assert_eq!(
        s.get(&b.run_id).await.unwrap().unwrap().state,
        RunState::Canceled
    );
    let c = s.counts(Some(h)).await.unwrap();
    assert_eq!((c.expired, c.canceled, c.queued), (1, 1, 1));
}

/// Snapshot lists: one state of one host, oldest request first, limited.
pub async fn counts_and_list(s: &dyn Store) {
    let h = host("web-9");
    let other = host("web-10");
    let mut queued = Vec::new();
    for _ in 0..4 {
        queued.push(s.enqueue(run(&h, "restart")).await.unwrap().record);
        // Distinct request times (records keep milliseconds), so "at or
        // after queued[2]" below cannot take queued[1] on a fast machine.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let hd = s.enqueue(held(&h, "restart")).await.unwrap().record;
    let o = s.enqueue(run(&other, "restart")).await.unwrap().record;

    let q = |host: Option<HostId>, buckets: Vec<Bucket>, limit| ListQuery {
        host,
        buckets,
        limit,
    };
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Queued], 10))
        .await
        .unwrap();
    assert_eq!(ids(&l), ids(&queued), "oldest first");
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Queued], 2))
        .await
        .unwrap();
    assert_eq!(ids(&l), ids(&queued[..2]));
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Held], 10))
        .await
        .unwrap();
    assert_eq!(ids(&l), vec![hd.run_id.clone()]);
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Held, Bucket::Queued], 10))
        .await
        .unwrap();
    assert_eq!(l.len(), 5);
    let l = s.list(q(None, vec![Bucket::Queued], 100)).await.unwrap();
    assert_eq!(l.len(), 5);
    assert!(ids(&l).contains(&o.run_id));
    let l = s
        .list(q(Some(other.clone()), vec![Bucket::Succeeded], 10))
        .await
        .unwrap();
    assert!(l.is_empty());

    // A move shows in the next snapshot.
    s.cancel(&queued[0].run_id, "x").await.unwrap();
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Queued], 10))
        .await
        .unwrap();
    assert_eq!(ids(&l), ids(&queued[1..]));
    let l = s
        .list(q(Some(h.clone()), vec![Bucket::Canceled], 10))
        .await
        .unwrap();
    assert_eq!(ids(&l), vec![queued[0].run_id.clone()]);

    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.queued, c.held, c.canceled, c.total()), (3, 1, 1, 5));
    let all = s.counts(None).await.unwrap();
    assert_eq!((all.queued, all.total()), (4, 6));

    let since = queued[2].requested_at;
    let recent = s.recent_requests(&h, since).await.unwrap();
    let times: Vec<_> = recent.iter().map(|r| r.requested_at).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert_eq!(recent.len(), 3, "queued[2], queued[3] and the held run");
    assert!(recent.iter().all(|r| r.action_key == "restart"));
}

/// Host documents, activity and audit.
pub async fn host_docs_activity_audit(s: &dyn Store) {
    let h = host("mail-1");
    assert_eq!(s.get_host_doc(&h).await.unwrap(), None);
    let doc = json!({"hostId": "mail-1", "overrides": {"maxAttempts": 2}});
    s.put_host_doc(&h, doc.clone()).await.unwrap();
    assert_eq!(s.get_host_doc(&h).await.unwrap(), Some(doc));
    let doc2 = json!({"hostId": "mail-1", "overrides": {}});
    s.put_host_doc(&h, doc2.clone()).await.unwrap();
    assert_eq!(s.get_host_doc(&h).await.unwrap(), Some(doc2));
    assert_eq!(s.get_host_doc(&host("mail-2")).await.unwrap(), None);

    assert_eq!(s.host_activity(&h).await.unwrap(), HostActivity::default());
    s.record_activity(&h, ActivityKind::DryRun, "restart")
        .await
        .unwrap();
    s.record_activity(&h, ActivityKind::Execute, "restart")
        .await
        .unwrap();
    s.record_activity(&h, ActivityKind::Execute, "flush")
        .await
        .unwrap();
    let a = s.host_activity(&h).await.unwrap();
    assert_eq!(a.dry_runs.keys().collect::<Vec<_>>(), vec!["restart"]);
    let ex: Vec<_> = a.executes.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(ex, vec!["restart", "flush"]);

    s.audit(
        AuditLine::of(&json!({"event": "approve", "runId": "r1"})).unwrap(),
        true,
    )
    .await
    .unwrap();
    s.audit(AuditLine::of(&json!({"event": "login"})).unwrap(), false)
        .await
        .unwrap();
    // Anything but a JSON object is refused before it is written.
    assert!(AuditLine::of(&json!(["login"])).is_err());
    assert!(AuditLine::of(&json!("login")).is_err());
    s.request_drain(&h, 5).await.unwrap();
}

/// Retention removes finished runs only.
pub async fn prune_finished(s: &dyn Store) {
    let h = host("batch-1");
    let keep = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let done = s.enqueue(run(&h, "restart")).await.unwrap().record;
    s.cancel(&done.run_id, "x").await.unwrap();
    let dl = s.enqueue(run(&h, "restart")).await.unwrap().record;
    s.dead_letter(&dl.run_id, "x", None).await.unwrap();

    let none = s.prune(Retention::default()).await.unwrap();
    assert_eq!((none.done_removed, none.dlq_removed), (0, 0));
    let r = s
        .prune(Retention {
            done_max_count: 0,
            dlq_max_count: 0,
            ..Retention::default()
        })
        .await
        .unwrap();
    assert_eq!((r.done_removed, r.dlq_removed), (1, 1));
    assert_eq!(s.get(&done.run_id).await.unwrap(), None);
    assert_eq!(s.get(&dl.run_id).await.unwrap(), None);
    assert_eq!(s.get(&keep.run_id).await.unwrap(), Some(keep));
    let c = s.counts(Some(h)).await.unwrap();
    assert_eq!((c.queued, c.canceled, c.dlq), (1, 0, 0));
}

/// Concurrent enqueues with one idempotency key create one run; every
/// caller gets that run.
pub async fn concurrent_same_key_creates_one(s: &dyn Store) {
    let h = host("api-1");
    let keyed = NewRun {
        idempotency_key: Some(IdemKey::parse("retry-storm").unwrap()),
        ..run(&h, "restart")
    };
    let (a, b, c, d) = tokio::join!(
        s.enqueue(keyed.clone()),
        s.enqueue(keyed.clone()),
        s.enqueue(keyed.clone()),
        s.enqueue(keyed.clone())
    );
    let all = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    assert_eq!(
        all.iter().filter(|e| e.created).count(),
        1,
        "exactly one creator"
    );
    assert!(all.iter().all(|e| e.record.run_id == all[0].record.run_id));
    assert_eq!(s.counts(Some(h)).await.unwrap().queued, 1);
}

/// A check that refuses when the action has an active run.
pub(crate) fn one_active() -> EnqueueCheck {
    Box::new(|f: &GateFacts| match &f.active_run {
        Some(id) => Err(Box::new(id.clone()) as Refusal),
        None => Ok(()),
    })
}

type Seen = std::sync::Arc<std::sync::Mutex<Option<GateFacts>>>;

/// [`one_active`], keeping the facts it was shown in `seen`.
fn recording(seen: &Seen) -> EnqueueCheck {
    let keep = seen.clone();
    Box::new(move |f: &GateFacts| {
        *keep.lock().unwrap() = Some(f.clone());
        one_active()(f)
    })
}

/// `enqueue_checked` hands the check what the gates need, enqueues only
/// what it allows, and writes nothing on a refusal.
pub async fn enqueue_checked_gates(s: &dyn Store) {
    let h = host("gate-1");
    let other = host("gate-2");
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    s.record_activity(&h, ActivityKind::DryRun, "restart")
        .await
        .unwrap();
    s.enqueue(held(&other, "flush")).await.unwrap();
    let seen = Seen::default();
    let first = s
        .enqueue_checked(run(&h, "restart"), since, recording(&seen))
        .await
        .unwrap();
    let Checked::Enqueued(first) = first else {
        panic!("allowed, so enqueued")
    };
    let f = seen.lock().unwrap().clone().expect("the check ran");
    assert_eq!(f.active_run, None);
    assert_eq!(
        (f.host_backlog, f.global_backlog),
        (0, 1),
        "the other host's held run"
    );
    assert!(f.recent.is_empty());
    assert!(f.activity.dry_runs.contains_key("restart"));

    // A second run of the action meets the first.
    let again = s
        .enqueue_checked(run(&h, "restart"), since, recording(&seen))
        .await
        .unwrap();
    let Checked::Refused(why) = again else {
        panic!("refused: the first run is active")
    };
    assert_eq!(*why.downcast::<RunId>().unwrap(), first.record.run_id);
    let f = seen.lock().unwrap().clone().unwrap();
    assert_eq!((f.host_backlog, f.global_backlog), (1, 2));
    assert_eq!(f.recent.len(), 1);
    assert_eq!(f.recent[0].action_key, "restart");
    assert_eq!(
        s.counts(Some(h.clone())).await.unwrap().queued,
        1,
        "nothing written"
    );

    // Another action of the host is not blocked by it.
    let Checked::Enqueued(_) = s
        .enqueue_checked(run(&h, "flush"), since, one_active())
        .await
        .unwrap()
    else {
        panic!("another action passes")
    };
    // Once the first run is finished, the action may run again.
    s.cancel(&first.record.run_id, "done with it")
        .await
        .unwrap();
    let Checked::Enqueued(_) = s
        .enqueue_checked(run(&h, "restart"), since, one_active())
        .await
        .unwrap()
    else {
        panic!("no active run any more")
    };
    assert_eq!(s.counts(Some(h)).await.unwrap().queued, 2);
}
