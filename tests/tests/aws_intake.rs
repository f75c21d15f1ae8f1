//! The executor's SQS intake and S3 mirror, in process, on the real S3 + SQS
//! store against moto. A wrapper around the real store injects faults and
//! writes down what the local spool held at the moment of every delete, so
//! the order "import durably, then delete" is checked, not assumed.
//!
//! Run: `cargo test -p remediate-tests --features aws --test aws_intake`
//! (moto from `make moto-venv` or `MOTO_SERVER_BIN`).
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_support::*;
use remediate_executor::intake::{
    Handled, Intake, IntakeSettings, Mirror, Mirrored, Received, RemoteMessage, RemoteRuns,
    UNREACHABLE_AFTER,
};
use remediate_spool::aws::S3SqsStore;
use remediate_spool::{
    Dir, HostId, LocalSpool, Result, RunId, RunRecord, RunState, SpoolError, Store,
};
use tokio::sync::Notify;

/// The real store, with switches that make a call fail, and a journal of
/// deletes: for each, whether its run was in the local spool at that moment.
#[derive(Debug)]
struct Faulty {
    store: S3SqsStore,
    spool: LocalSpool,
    fail_fetch: AtomicBool,
    fail_delete: AtomicBool,
    fail_host_doc: AtomicBool,
    mirror_failures_left: AtomicU32,
    mirror_calls: AtomicU32,
    /// receipt handle -> run id, from the messages received.
    runs_of: Mutex<HashMap<String, RunId>>,
    /// (run id, present locally when its message was deleted).
    deletes: Mutex<Vec<(Option<RunId>, bool)>>,
}

impl Faulty {
    fn new(store: S3SqsStore, spool: LocalSpool) -> Arc<Faulty> {
        Arc::new(Faulty {
            store,
            spool,
            fail_fetch: false.into(),
            fail_delete: false.into(),
            fail_host_doc: false.into(),
            mirror_failures_left: 0.into(),
            mirror_calls: 0.into(),
            runs_of: Mutex::new(HashMap::new()),
            deletes: Mutex::new(Vec::new()),
        })
    }

    fn deletes(&self) -> Vec<(Option<RunId>, bool)> {
        self.deletes.lock().unwrap().clone()
    }
}

fn unreachable() -> SpoolError {
    SpoolError::Backend("injected: S3 cannot be reached".into())
}

#[async_trait]
impl RemoteRuns for Faulty {
    async fn receive(&self, host: &HostId, max: u32, wait: Duration) -> Result<Vec<Received>> {
        let got = RemoteRuns::receive(&self.store, host, max, wait).await?;
        for m in &got {
            if let Ok(RemoteMessage::Run { run_id, .. }) = &m.message {
                self.runs_of
                    .lock()
                    .unwrap()
                    .insert(m.receipt_handle.clone(), run_id.clone());
            }
        }
        Ok(got)
    }

    async fn delete_message(&self, host: &HostId, receipt_handle: &str) -> Result<()> {
        let run = self.runs_of.lock().unwrap().get(receipt_handle).cloned();
        let present = match &run {
            Some(id) => self.spool.get_blocking(id).ok().flatten().is_some(),
            None => false,
        };
        self.deletes.lock().unwrap().push((run, present));
        if self.fail_delete.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        RemoteRuns::delete_message(&self.store, host, receipt_handle).await
    }

    async fn fetch(&self, host: &HostId, id: &RunId) -> Result<Option<RunRecord>> {
        if self.fail_fetch.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        RemoteRuns::fetch(&self.store, host, id).await
    }

    async fn mirror(&self, record: &RunRecord) -> Result<Mirrored> {
        self.mirror_calls.fetch_add(1, Ordering::SeqCst);
        let left = self.mirror_failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.mirror_failures_left.store(left - 1, Ordering::SeqCst);
            return Err(unreachable());
        }
        RemoteRuns::mirror(&self.store, record).await
    }

    async fn host_doc(&self, host: &HostId) -> Result<Option<serde_json::Value>> {
        if self.fail_host_doc.load(Ordering::SeqCst) {
            return Err(unreachable());
        }
        RemoteRuns::host_doc(&self.store, host).await
    }

    async fn ready_runs(&self, host: &HostId, limit: usize) -> Result<Vec<RunId>> {
        RemoteRuns::ready_runs(&self.store, host, limit).await
    }
}

struct Fixture {
    _aws: Aws,
    _dir: tempfile::TempDir,
    store: S3SqsStore,
    spool: LocalSpool,
    remote: Arc<Faulty>,
    intake: Intake,
    host: HostId,
}

async fn fixture(test: &str) -> Option<Fixture> {
    let aws = aws(test, "intake").await?;
    let h = host("web-1");
    aws.store.ensure_host_queues(&h).await.expect("queues");
    let dir = tempfile::tempdir().unwrap();
    let spool = LocalSpool::open(dir.path().join("spool")).unwrap();
    let remote = Faulty::new(aws.store.clone(), spool.clone());
    let intake = Intake {
        spool: spool.clone(),
        host: h.clone(),
        remote: remote.clone(),
        settings: IntakeSettings {
            wait: Duration::from_secs(1),
            reconcile_grace: Duration::ZERO,
            ..IntakeSettings::default()
        },
        nudge: Arc::new(Notify::new()),
    };
    Some(Fixture {
        store: aws.store.clone(),
        _aws: aws,
        _dir: dir,
        spool,
        remote,
        intake,
        host: h,
    })
}

impl Fixture {
    /// Polls until the queue answers nothing (each poll long-polls 1 s).
    async fn drain(&self) -> Vec<Handled> {
        let mut all = Vec::new();
        loop {
            let got = self.intake.poll_once().await.expect("poll");
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }

    /// Messages on the host's queue, (visible, in flight), as SQS counts them.
    async fn queue_depth(&self) -> (u32, u32) {
        let q = self.store.ensure_host_queues(&self.host).await.unwrap();
        let attrs = self
            .store
            .sqs_client()
            .get_queue_attributes()
            .queue_url(&q.queue_url)
            .attribute_names("ApproximateNumberOfMessages".into())
            .attribute_names("ApproximateNumberOfMessagesNotVisible".into())
            .send()
            .await
            .unwrap();
        let get = |k: &str| -> u32 {
            attrs
                .attributes()
                .and_then(|a| a.iter().find(|(n, _)| n.as_str() == k).map(|(_, v)| v))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            get("ApproximateNumberOfMessages"),
            get("ApproximateNumberOfMessagesNotVisible"),
        )
    }

    async fn send_raw(&self, body: &str) {
        let q = self.store.ensure_host_queues(&self.host).await.unwrap();
        self.store
            .sqs_client()
            .send_message()
            .queue_url(&q.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_imported_durably_before_its_message_is_deleted() {
    let Some(f) = fixture("a_run_is_imported_durably_before_its_message_is_deleted").await else {
        return;
    };
    let enq = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap();
    let id = enq.record.run_id.clone();
    let handled = f.drain().await;
    assert_eq!(handled, vec![Handled::Imported(id.clone())]);
    assert_eq!(
        f.remote.deletes(),
        vec![(Some(id.clone()), true)],
        "the delete came after the run was in the spool"
    );
    let local = f.spool.get_blocking(&id).unwrap().unwrap();
    let remote = f.store.fetch(&f.host, &id).await.unwrap().unwrap().record;
    assert_eq!(local, remote, "the spool holds exactly the S3 record");
    assert_eq!(local.state, RunState::Queued);
    assert_eq!(f.queue_depth().await, (0, 0), "the message is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_deleted_without_a_second_copy() {
    let Some(f) = fixture("a_redelivered_message_is_deleted_without_a_second_copy").await else {
        return;
    };
    let id = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    // At-least-once delivery: the same pointer a second time.
    f.send_raw(&format!(
        r#"{{"kind":"run","runId":"{id}","hostId":"{}"}}"#,
        f.host
    ))
    .await;
    let mut handled = f.drain().await;
    handled.sort_by_key(|h| format!("{h:?}"));
    assert_eq!(
        handled,
        vec![
            Handled::Duplicate(id.clone()),
            Handled::Imported(id.clone())
        ]
    );
    let copies: usize = [Dir::Queued, Dir::Held, Dir::Running, Dir::Done, Dir::Dlq]
        .iter()
        .map(|d| f.spool.files_in(&f.host, *d).len())
        .sum();
    assert_eq!(copies, 1);
    // Even after the run finished locally, a late duplicate changes nothing.
    f.spool.claim_next_blocking(&f.host, &|_| false).unwrap();
    f.spool.start_attempt_blocking(&id).unwrap();
    f.spool.complete_blocking(&id, Default::default()).unwrap();
    f.send_raw(&format!(
        r#"{{"kind":"run","runId":"{id}","hostId":"{}"}}"#,
        f.host
    ))
    .await;
    assert_eq!(f.drain().await, vec![Handled::Duplicate(id.clone())]);
    let rec = f.spool.get_blocking(&id).unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (RunState::Succeeded, 1));
    assert_eq!(f.queue_depth().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_cannot_be_imported_stay_on_the_queue() {
    let Some(f) = fixture("messages_that_cannot_be_imported_stay_on_the_queue").await else {
        return;
    };
    // 1. S3 unreachable while fetching.
    f.remote.fail_fetch.store(true, Ordering::SeqCst);
    let id = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    let mut handled = f.drain().await;
    f.remote.fail_fetch.store(false, Ordering::SeqCst);
    // 2. Not JSON. 3. A pointer to a run S3 does not have. 4. Another host's run.
    f.send_raw("this is not a pointer").await;
    let missing = RunId::generate();
    f.send_raw(&format!(
        r#"{{"kind":"run","runId":"{missing}","hostId":"{}"}}"#,
        f.host
    ))
    .await;
    let other = f
        .store
        .enqueue(new_run(&host("web-2"), "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    f.send_raw(&format!(
        r#"{{"kind":"run","runId":"{other}","hostId":"web-2"}}"#
    ))
    .await;
    handled.extend(f.drain().await);
    assert_eq!(handled.len(), 4, "{handled:?}");
    for h in &handled {
        assert!(matches!(h, Handled::Left(_)), "{handled:?}");
    }
    let reasons: Vec<String> = handled
        .iter()
        .map(|h| match h {
            Handled::Left(r) => r.clone(),
            _ => String::new(),
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("fetching the record failed")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unparseable")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no record in S3")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("web-2")), "{reasons:?}");
    assert!(f.remote.deletes().is_empty(), "nothing was deleted");
    assert_eq!(
        f.queue_depth().await,
        (0, 4),
        "all four wait for redelivery"
    );
    assert!(f.spool.get_blocking(&id).unwrap().is_none());
    assert!(f.spool.hosts().unwrap().iter().all(|h| h == &f.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_keeps_the_import_and_a_drain_reaches_the_daemon() {
    let Some(f) = fixture("a_failed_delete_keeps_the_import_and_a_drain_reaches_the_daemon").await
    else {
        return;
    };
    f.remote.fail_delete.store(true, Ordering::SeqCst);
    let id = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    assert_eq!(f.drain().await, vec![Handled::DeleteFailed(id.clone())]);
    assert!(f.spool.get_blocking(&id).unwrap().is_some());
    assert_eq!(f.queue_depth().await, (0, 1), "comes back later");
    f.remote.fail_delete.store(false, Ordering::SeqCst);
    f.store.request_drain(&f.host, 7).await.unwrap();
    assert_eq!(f.drain().await, vec![Handled::Drain(7)]);
    assert_eq!(f.spool.take_drain_requests(&f.host).unwrap(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_retries_until_s3_answers_and_loses_nothing_across_restarts() {
    let Some(f) =
        fixture("the_mirror_retries_until_s3_answers_and_loses_nothing_across_restarts").await
    else {
        return;
    };
    let id = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    f.drain().await;
    let mirror = Mirror::open(f.spool.clone(), f.host.clone(), f.remote.clone()).unwrap();
    // Freshly imported: S3 already has it.
    let p = mirror.pass().await.unwrap();
    assert_eq!(p.already_current, vec![id.clone()]);
    // The executor runs it locally while S3 cannot be reached.
    f.spool.claim_next_blocking(&f.host, &|_| false).unwrap();
    f.spool.start_attempt_blocking(&id).unwrap();
    f.spool.complete_blocking(&id, Default::default()).unwrap();
    f.remote.mirror_failures_left.store(2, Ordering::SeqCst);
    for _ in 0..2 {
        let p = mirror.pass().await.unwrap();
        assert_eq!(p.failed.len(), 1, "{p:?}");
        assert!(p.applied.is_empty());
    }
    assert_eq!(
        f.store
            .fetch(&f.host, &id)
            .await
            .unwrap()
            .unwrap()
            .record
            .state,
        RunState::Queued,
        "nothing reached S3 yet"
    );
    let p = mirror.pass().await.unwrap();
    assert_eq!(p.applied, vec![id.clone()]);
    let s3 = f.store.fetch(&f.host, &id).await.unwrap().unwrap().record;
    assert_eq!((s3.state, s3.attempts), (RunState::Succeeded, 1));
    assert_eq!(s3, f.spool.get_blocking(&id).unwrap().unwrap());
    // Nothing left to do, also for a restarted executor (markers on disk).
    let calls = f.remote.mirror_calls.load(Ordering::SeqCst);
    assert_eq!(mirror.pass().await.unwrap(), Default::default());
    drop(mirror);
    let again = Mirror::open(f.spool.clone(), f.host.clone(), f.remote.clone()).unwrap();
    assert_eq!(again.pass().await.unwrap(), Default::default());
    assert_eq!(f.remote.mirror_calls.load(Ordering::SeqCst), calls);
    // A change made while the executor was down (no marker update) is found.
    drop(again);
    std::fs::remove_dir_all(f.spool.root().join("mirror")).unwrap();
    let fresh = Mirror::open(f.spool.clone(), f.host.clone(), f.remote.clone()).unwrap();
    assert_eq!(fresh.pass().await.unwrap().already_current, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_run_does_not_hold_back_the_others_and_an_outage_stops_the_pass() {
    let Some(f) =
        fixture("one_failing_run_does_not_hold_back_the_others_and_an_outage_stops_the_pass").await
    else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = f
            .store
            .enqueue(new_run(&f.host, "count", false))
            .await
            .unwrap()
            .record
            .run_id;
        ids.push(id);
    }
    f.drain().await;
    let mirror = Mirror::open(f.spool.clone(), f.host.clone(), f.remote.clone()).unwrap();
    assert_eq!(mirror.pass().await.unwrap().already_current.len(), 4);
    // Every run changes locally (a note each).
    for id in &ids {
        f.spool
            .append_note_blocking(id, "test", serde_json::json!({}))
            .unwrap();
    }
    // An outage: UNREACHABLE_AFTER failures in a row stop the pass.
    f.remote
        .mirror_failures_left
        .store(UNREACHABLE_AFTER as u32, Ordering::SeqCst);
    let calls = f.remote.mirror_calls.load(Ordering::SeqCst);
    assert_eq!(mirror.pass().await.unwrap_err().code(), "backend_error");
    assert_eq!(
        f.remote.mirror_calls.load(Ordering::SeqCst) - calls,
        UNREACHABLE_AFTER as u32,
        "the pass stopped instead of trying every run"
    );
    // One failure: the other three are mirrored in the same pass.
    f.remote.mirror_failures_left.store(1, Ordering::SeqCst);
    let p = mirror.pass().await.unwrap();
    assert_eq!((p.failed.len(), p.applied.len()), (1, 3), "{p:?}");
    // And the one left over is mirrored by the next pass.
    let p = mirror.pass().await.unwrap();
    assert_eq!((p.failed.len(), p.applied.len()), (0, 1), "{p:?}");
    for id in &ids {
        let s3 = f.store.fetch(&f.host, id).await.unwrap().unwrap().record;
        assert_eq!(s3, f.spool.get_blocking(id).unwrap().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_never_moves_s3_back_to_an_older_state() {
    let Some(f) = fixture("the_mirror_never_moves_s3_back_to_an_older_state").await else {
        return;
    };
    let id = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record
        .run_id;
    f.drain().await;
    // An operator cancels it through the API (in S3) after the import; the
    // local copy is still queued and then gets a note (a local change).
    f.store.cancel(&id, "operator").await.unwrap();
    f.spool
        .append_note_blocking(&id, "test", serde_json::json!({}))
        .unwrap();
    let mirror = Mirror::open(f.spool.clone(), f.host.clone(), f.remote.clone()).unwrap();
    let p = mirror.pass().await.unwrap();
    assert_eq!(p.stale, vec![id.clone()]);
    assert_eq!(
        f.store
            .fetch(&f.host, &id)
            .await
            .unwrap()
            .unwrap()
            .record
            .state,
        RunState::Canceled
    );
    // Stale is final: not tried again until the local record changes.
    assert_eq!(mirror.pass().await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_document_follows_s3_before_runs_are_imported() {
    let Some(f) = fixture("the_host_document_follows_s3_before_runs_are_imported").await else {
        return;
    };
    let doc = serde_json::json!({"hostId": "web-1", "enabled": true, "profile": "strict"});
    f.store.put_host_doc(&f.host, doc.clone()).await.unwrap();
    f.store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap();
    f.drain().await;
    assert_eq!(
        f.spool.get_host_doc_blocking(&f.host).unwrap(),
        Some(doc),
        "copied with the batch"
    );
    let disabled = serde_json::json!({"hostId": "web-1", "enabled": false, "profile": "strict"});
    f.store
        .put_host_doc(&f.host, disabled.clone())
        .await
        .unwrap();
    f.intake.sync_host_doc().await;
    assert_eq!(
        f.spool.get_host_doc_blocking(&f.host).unwrap(),
        Some(disabled)
    );
}

/// Writing the host document through the store sends a policy message;
/// the intake copies the document and deletes the message. While S3 cannot
/// be read, the message is left to come back and the local copy is kept;
/// the copy after an empty long poll catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_message_copies_the_host_document_at_once() {
    let Some(f) = fixture("a_policy_message_copies_the_host_document_at_once").await else {
        return;
    };
    let on = serde_json::json!({"hostId": "web-1", "enabled": true});
    f.store.put_host_doc(&f.host, on.clone()).await.unwrap();
    assert_eq!(f.drain().await, vec![Handled::Policy]);
    assert_eq!(
        f.spool.get_host_doc_blocking(&f.host).unwrap(),
        Some(on.clone())
    );
    assert_eq!(f.queue_depth().await, (0, 0), "the message was deleted");

    let deleted = f.remote.deletes().len();
    f.remote.fail_host_doc.store(true, Ordering::SeqCst);
    let off = serde_json::json!({"hostId": "web-1", "enabled": false});
    f.store.put_host_doc(&f.host, off.clone()).await.unwrap();
    let got = f.intake.poll_once().await.unwrap();
    assert!(matches!(got[..], [Handled::Left(_)]), "{got:?}");
    assert_eq!(
        f.spool.get_host_doc_blocking(&f.host).unwrap(),
        Some(on),
        "the local copy is kept while S3 cannot be read"
    );
    assert_eq!(
        f.queue_depth().await,
        (0, 1),
        "left in flight, to come back"
    );
    assert_eq!(f.remote.deletes().len(), deleted, "nothing was deleted");

    f.remote.fail_host_doc.store(false, Ordering::SeqCst);
    assert!(f.intake.sync_host_doc().await);
    assert_eq!(f.spool.get_host_doc_blocking(&f.host).unwrap(), Some(off));
}

/// A ready run whose message never arrived (an approve whose send failed
/// after its commit; here the message is taken off the queue unread) is
/// found by the reconcile pass and imported once (once it is older than the
/// grace, here zero); held runs and runs already attempted are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_imports_ready_runs_whose_message_never_arrived() {
    let Some(f) = fixture("reconcile_imports_ready_runs_whose_message_never_arrived").await else {
        return;
    };
    let lost = f
        .store
        .enqueue(new_run(&f.host, "count", false))
        .await
        .unwrap()
        .record;
    let mut held = new_run(&f.host, "count", false);
    held.approval_required = true;
    let held = f.store.enqueue(held).await.unwrap().record;
    // Lose the pointer: receive it and delete it without importing.
    for m in f
        .store
        .receive(&f.host, 10, Duration::from_secs(1))
        .await
        .unwrap()
    {
        f.store
            .delete_message(&f.host, &m.receipt_handle)
            .await
            .unwrap();
    }
    assert_eq!(f.queue_depth().await, (0, 0));
    assert!(f.spool.get_blocking(&lost.run_id).unwrap().is_none());

    // With the default grace, a run that changed a moment ago is left to
    // its message.
    let patient = Intake {
        settings: IntakeSettings::default(),
        ..f.intake.clone()
    };
    assert_eq!(
        patient.reconcile_once().await.unwrap(),
        Vec::<RunId>::new(),
        "too recent to be a lost message"
    );
    assert!(f.spool.get_blocking(&lost.run_id).unwrap().is_none());

    let imported = f.intake.reconcile_once().await.unwrap();
    assert_eq!(imported, vec![lost.run_id.clone()]);
    let local = f.spool.get_blocking(&lost.run_id).unwrap().unwrap();
    assert_eq!(local.state, RunState::Queued);
    assert!(
        f.spool.get_blocking(&held.run_id).unwrap().is_none(),
        "a held run is not ready"
    );
    assert_eq!(
        f.intake.reconcile_once().await.unwrap(),
        Vec::<RunId>::new(),
        "present locally: not imported twice"
    );
}
