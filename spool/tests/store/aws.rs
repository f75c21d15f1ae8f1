//! Tests of the S3 + SQS store beyond the shared contract: pointer messages,
//! the redrive policy, the executor's API (fetch, mirror), index repair, and
//! the 1,000-round approve race.

use std::collections::BTreeMap;
use std::time::Duration;

use remediate_spool::aws::{HostMessage, MirrorOutcome, S3SqsStore};
use remediate_spool::record::{Event, EventKind, Next};
use remediate_spool::*;

use crate::contract::{held, host, ok_result, run};
use crate::moto::{fresh_store, store_for};

/// Everything on the host's queue now (receives until empty; received
/// messages stay invisible for the default 30 s, so none is seen twice).
async fn drain(s: &S3SqsStore, h: &HostId) -> Vec<HostMessage> {
    let mut out = Vec::new();
    loop {
        let got = s.receive(h, 10, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            return out;
        }
        for m in got {
            out.push(m.message.clone().expect("a valid host message"));
            s.delete_message(h, &m.receipt_handle).await.unwrap();
        }
    }
}

fn run_msg(r: &RunRecord) -> HostMessage {
    HostMessage::Run {
        run_id: r.run_id.clone(),
        host_id: r.host_id.clone(),
    }
}

fn sorted(mut v: Vec<HostMessage>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|m| m.to_body()).collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointer_messages_are_sent_exactly_when_a_run_becomes_ready() {
    let Some(s) = fresh_store().await else { return };
    let h = host("web-1");
    let ready = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let keyed = NewRun {
        idempotency_key: Some(IdemKey::parse("k1").unwrap()),
        ..run(&h, "restart")
    };
    let k1 = s.enqueue(keyed.clone()).await.unwrap().record;
    assert!(!s.enqueue(keyed).await.unwrap().created);
    let hold_me = s.enqueue(held(&h, "restart")).await.unwrap().record;
    let reject_me = s.enqueue(held(&h, "restart")).await.unwrap().record;
    assert_eq!(
        sorted(drain(&s, &h).await),
        sorted(vec![run_msg(&ready), run_msg(&k1)]),
        "one message per ready run; none for held runs or a repeated key"
    );

    s.reject(&reject_me.run_id, "bob", None).await.unwrap();
    s.hold(&ready.run_id, "policy").await.unwrap();
    s.cancel(&k1.run_id, "x").await.unwrap();
    assert_eq!(
        drain(&s, &h).await,
        vec![],
        "reject, hold and cancel send nothing"
    );

    s.approve(&hold_me.run_id, "alice", None).await.unwrap();
    assert_eq!(drain(&s, &h).await, vec![run_msg(&hold_me)]);

    // Replay into the queue sends; a replay that needs approval does not.
    let child = s.replay(&k1.run_id, "alice").await.unwrap();
    assert_eq!(child.state, RunState::Queued);
    let held_child = s.replay(&reject_me.run_id, "alice").await.unwrap();
    assert_eq!(held_child.state, RunState::Held);
    assert_eq!(drain(&s, &h).await, vec![run_msg(&child)]);

    s.request_drain(&h, 7).await.unwrap();
    assert_eq!(
        drain(&s, &h).await,
        vec![HostMessage::Drain {
            host_id: h.clone(),
            limit: 7
        }]
    );
    // A stored host document tells the host's executor to copy it.
    s.put_host_doc(&h, serde_json::json!({"enabled": false}))
        .await
        .unwrap();
    assert_eq!(
        drain(&s, &h).await,
        vec![HostMessage::Policy { host_id: h.clone() }]
    );
    assert_eq!(
        HostMessage::parse(r#"{"kind":"policy","hostId":"web-1"}"#),
        Ok(HostMessage::Policy { host_id: h.clone() })
    );
    // Another host's runs go to another queue.
    let h2 = host("web-2");
    let other = s.enqueue(run(&h2, "restart")).await.unwrap().record;
    assert_eq!(drain(&s, &h).await, vec![]);
    assert_eq!(drain(&s, &h2).await, vec![run_msg(&other)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_have_a_redrive_policy_and_bad_messages_reach_the_dlq() {
    let Some(s) = fresh_store().await else { return };
    let h = host("db-1");
    let q = s.ensure_host_queues(&h).await.unwrap();
    assert_eq!(s.ensure_host_queues(&h).await.unwrap(), q, "idempotent");
    let sqs = s.sqs_client();
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&q.queue_url)
        .attribute_names(A::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let policy: serde_json::Value =
        serde_json::from_str(attrs.attributes().unwrap().get(&A::RedrivePolicy).unwrap()).unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&q.dlq_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()
        .get(&A::QueueArn)
        .unwrap()
        .clone();
    assert_eq!(policy["deadLetterTargetArn"], serde_json::json!(dlq_arn));
    // moto answers the count as a number, AWS as a string.
    assert_eq!(policy["maxReceiveCount"].to_string().trim_matches('"'), "5");

    // A body the executor cannot decode: received as an error, never deleted,
    // and after 5 receives SQS moves it to the DLQ.
    sqs.send_message()
        .queue_url(&q.queue_url)
        .message_body("{not json")
        .send()
        .await
        .unwrap();
    let wrong_host = HostMessage::Run {
        run_id: RunId::parse("r1").unwrap(),
        host_id: host("db-2"),
    };
    sqs.send_message()
        .queue_url(&q.queue_url)
        .message_body(wrong_host.to_body())
        .send()
        .await
        .unwrap();
    let got = s.receive(&h, 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 2);
    for m in &got {
        assert!(m.message.is_err(), "{:?}", m.message);
        assert_eq!(m.receive_count, 1);
        sqs.change_message_visibility()
            .queue_url(&q.queue_url)
            .receipt_handle(&m.receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    let mut counts = Vec::new();
    for _ in 0..6 {
        let r = sqs
            .receive_message()
            .queue_url(&q.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .unwrap();
        counts.push(r.messages().len());
    }
    assert_eq!(
        counts,
        vec![2, 2, 2, 2, 0, 0],
        "receives 2..5, then redriven"
    );
    let in_dlq = sqs
        .receive_message()
        .queue_url(&q.dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(in_dlq.messages().len(), 2);
}

fn next_event(f: &remediate_spool::aws::FetchedRun, rec: &RunRecord, kind: EventKind) -> RunRecord {
    let mut r = rec.clone();
    let ev = Event {
        seq: f.version,
        at: rec.updated_at.unwrap_or(rec.requested_at) + chrono::Duration::milliseconds(5),
        kind,
    };
    remediate_spool::state::apply(&mut r, &ev).unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_writes_newer_copies_and_never_regresses() {
    let Some(s) = fresh_store().await else { return };
    let h = host("app-1");
    let r = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let f = s.fetch(&h, &r.run_id).await.unwrap().unwrap();
    assert_eq!(f.record, r);
    assert!(!f.etag.is_empty());
    assert_eq!(f.version, 1);
    assert!(
        s.fetch(&h, &RunId::parse("r-none").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // The executor's local moves: started, then succeeded.
    let running = next_event(
        &f,
        &r,
        EventKind::AttemptStarted {
            attempt: 1,
            worker: "exec".into(),
        },
    );
    let done = next_event(
        &f,
        &running,
        EventKind::AttemptFinished {
            attempt: 1,
            result: ok_result(),
            next: Next::Succeeded,
        },
    );
    assert_eq!(s.mirror(&running).await.unwrap(), MirrorOutcome::Applied);
    assert_eq!(
        s.mirror(&running).await.unwrap(),
        MirrorOutcome::AlreadyCurrent
    );
    assert_eq!(s.counts(Some(h.clone())).await.unwrap().running, 1);
    // A note from the API in between is kept by the next mirror.
    s.append_event(&r.run_id, "operator", serde_json::json!({"msg": "hi"}))
        .await
        .unwrap();
    assert_eq!(s.mirror(&done).await.unwrap(), MirrorOutcome::Applied);
    assert_eq!(
        s.mirror(&running).await.unwrap(),
        MirrorOutcome::Stale,
        "never regress"
    );
    assert_eq!(s.mirror(&r).await.unwrap(), MirrorOutcome::Stale);
    let now = s.get(&r.run_id).await.unwrap().unwrap();
    assert_eq!(now.state, RunState::Succeeded);
    assert_eq!(now.notes.len(), 1, "the API's note survived the mirror");
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.running, c.succeeded, c.queued), (0, 1, 0));

    // A run missing in S3 (pruned) is written again.
    let fresh = RunRecord::new(RunId::generate(), run(&h, "x"), chrono::Utc::now(), None);
    assert_eq!(s.mirror(&fresh).await.unwrap(), MirrorOutcome::Applied);
    assert_eq!(s.get(&fresh.run_id).await.unwrap(), Some(fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_rebuilds_a_lost_index_entry_and_resends_its_pointer() {
    let Some(s) = fresh_store().await else { return };
    let h = host("web-3");
    let a = s.enqueue(run(&h, "restart")).await.unwrap().record;
    let b = s.enqueue(held(&h, "restart")).await.unwrap().record;
    drain(&s, &h).await;
    // What a crash between the record write and the index write leaves.
    let listed = s
        .s3_client()
        .list_objects_v2()
        .bucket(&s.config().bucket)
        .prefix("hosts/web-3/index/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        s.s3_client()
            .delete_object()
            .bucket(&s.config().bucket)
            .key(k)
            .send()
            .await
            .unwrap();
    }
    // And a stale entry of an older version.
    s.s3_client()
        .put_object()
        .bucket(&s.config().bucket)
        .key(format!(
            "hosts/web-3/index/running/0000000000001~{}~0000000000001~0000000000",
            b.run_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(s.counts(Some(h.clone())).await.unwrap().queued, 0);
    let rep = s.recover().await.unwrap();
    assert_eq!(rep.relocated.len(), 2);
    let c = s.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.queued, c.held, c.running), (1, 1, 0));
    assert_eq!(
        drain(&s, &h).await,
        vec![run_msg(&a)],
        "the queued run's pointer again"
    );
    let again = s.recover().await.unwrap();
    assert!(again.relocated.is_empty(), "idempotent");
}

/// Two writers approve the same held run, 1,000 rounds: exactly one wins
/// each round; the other gets `Conflict` (it read before the winner wrote)
/// or `IllegalMove` (it read after). Rounds run 16 at a time; each round is
/// still a race of two writers on its own run. Against moto without
/// `moto_serial.py` this test finds rounds with two winners (moto's
/// conditional PUT is check-then-write); `VPS_REMEDIATE_RACE_ROUNDS=N`
/// runs fewer rounds while iterating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_approve_one_run_exactly_one_wins_1000_rounds() {
    let Some(setup) = fresh_store().await else {
        return;
    };
    let rounds: usize = std::env::var("VPS_REMEDIATE_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let w1 = store_for(setup.config().clone()).await;
    let w2 = store_for(setup.config().clone()).await;
    let h = host("race-1");
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    while done < rounds {
        let batch = (rounds - done).min(16);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let (setup, w1, w2, h) = (setup.clone(), w1.clone(), w2.clone(), h.clone());
            set.spawn(async move {
                let id = setup
                    .enqueue(held(&h, "restart"))
                    .await
                    .unwrap()
                    .record
                    .run_id;
                let (a, b) = tokio::join!(w1.approve(&id, "w1", None), w2.approve(&id, "w2", None));
                (id, a, b)
            });
        }
        while let Some(res) = set.join_next().await {
            let (id, a, b) = res.unwrap();
            let mut winners = Vec::new();
            for (who, r) in [("w1", a), ("w2", b)] {
                match r {
                    Ok(rec) => {
                        assert_eq!(rec.approval.decided_by.as_deref(), Some(who));
                        winners.push(who);
                    }
                    Err(SpoolError::Conflict { .. }) => *tally.entry("conflict").or_default() += 1,
                    Err(SpoolError::IllegalMove {
                        state: RunState::Queued,
                        ..
                    }) => *tally.entry("illegal_move").or_default() += 1,
                    Err(e) => panic!("round {id}: unexpected error {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {id}: winners {winners:?}");
            let stored = setup.get(&id).await.unwrap().unwrap();
            assert_eq!(stored.approval.decided_by.as_deref(), Some(winners[0]));
            *tally.entry("rounds").or_default() += 1;
        }
        done += batch;
    }
    eprintln!("approve race: {tally:?}");
    assert_eq!(tally.get("rounds"), Some(&rounds));
    assert!(
        tally.get("conflict").copied().unwrap_or(0) > 0,
        "no round was a true race (both read before one wrote): {tally:?}"
    );
    // Only the winner of each round sent a pointer.
    let c = setup.counts(Some(h.clone())).await.unwrap();
    assert_eq!((c.queued, c.held), (rounds, 0));
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let q = setup.ensure_host_queues(&h).await.unwrap();
    let attrs = setup
        .sqs_client()
        .get_queue_attributes()
        .queue_url(&q.queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let on_queue = attrs
        .attributes()
        .unwrap()
        .get(&A::ApproximateNumberOfMessages)
        .unwrap();
    assert_eq!(
        on_queue.parse::<usize>().unwrap(),
        rounds,
        "one pointer per round"
    );
}

/// S3's 409 ConditionalRequestConflict is retried: moto_serial.py answers
/// 409 to every other conditional PUT under `hosts/c409-`, so without the
/// retry each of these moves would fail with a backend error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_conditional_request_conflict_is_retried() {
    let Some(s) = fresh_store().await else { return };
    let h = host("c409-web");
    let r = s.enqueue(held(&h, "restart")).await.unwrap();
    assert!(r.created);
    let id = r.record.run_id;
    let a = s.approve(&id, "alice", None).await.unwrap();
    assert_eq!(a.state, RunState::Queued);
    s.claim_next(&h, vec![]).await.unwrap().unwrap();
    s.start_attempt(&id).await.unwrap();
    let done = s.complete(&id, ok_result()).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(s.get(&id).await.unwrap(), Some(done));
    // A lost race is still a 412 and a conflict, 409s or not.
    let h2 = host("c409-db");
    let id2 = s.enqueue(held(&h2, "x")).await.unwrap().record.run_id;
    let w2 = store_for(s.config().clone()).await;
    let (x, y) = tokio::join!(s.approve(&id2, "a", None), w2.approve(&id2, "b", None));
    assert_eq!(
        [&x, &y].iter().filter(|r| r.is_ok()).count(),
        1,
        "{x:?} {y:?}"
    );
}

/// A pointer that cannot be sent fails the enqueue and leaves nothing behind:
/// no record, no index entry, so the caller's retry makes the only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_pointer_cannot_be_sent_fails_and_leaves_no_run() {
    let Some(s) = fresh_store().await else { return };
    let h = host("gone-queue");
    let first = s.enqueue(run(&h, "restart")).await.unwrap().record;
    // The store has the queue's URL cached; take the queue away.
    let queues = s.ensure_host_queues(&h).await.unwrap();
    s.sqs_client()
        .delete_queue()
        .queue_url(&queues.queue_url)
        .send()
        .await
        .unwrap();
    let err = s.enqueue(run(&h, "restart")).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    let runs = s
        .list(ListQuery {
            host: Some(h.clone()),
            buckets: vec![Bucket::Queued],
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![first.run_id.clone()],
        "only the acknowledged run exists"
    );
    assert_eq!(s.counts(Some(h.clone())).await.unwrap().total(), 1);
    let keys = s
        .s3_client()
        .list_objects_v2()
        .bucket(&s.config().bucket)
        .prefix(format!("hosts/{}/runs/", h.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(keys.contents().len(), 1, "no stranded record: {keys:?}");
}

/// Executes of one host through separate writers (separate Lambda
/// invocations) at the same moment: the host's gate lease lets them check
/// the one-active-run gate one at a time, so exactly one is enqueued and
/// the others are refused; no lease is left behind. A lease whose holder
/// died is taken over once it has expired; a live one makes an execute
/// wait, then answer `host_busy` with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executes_of_one_host_at_once_pass_the_gates_one_at_a_time() {
    let Some(setup) = fresh_store().await else {
        return;
    };
    let h = host("gate-race");
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let lease_key = "gates/gate-race.lease";
    let lease_exists = |s: S3SqsStore| async move {
        s.s3_client()
            .head_object()
            .bucket(&s.config().bucket)
            .key(lease_key)
            .send()
            .await
            .is_ok()
    };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let w = store_for(setup.config().clone()).await;
        let h = h.clone();
        set.spawn(async move {
            w.enqueue_checked(run(&h, "restart"), since, crate::contract::one_active())
                .await
        });
    }
    let mut enqueued = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap().expect("no writer waits 10 s for the lease") {
            Checked::Enqueued(e) => enqueued.push(e.record),
            Checked::Refused(_) => refused += 1,
        }
    }
    assert_eq!(
        (enqueued.len(), refused),
        (1, 7),
        "one active run per action"
    );
    assert_eq!(setup.counts(Some(h.clone())).await.unwrap().queued, 1);
    assert!(
        !lease_exists(setup.clone()).await,
        "every lease was given back"
    );

    // A lease left by a holder that died, expired: taken over.
    setup.cancel(&enqueued[0].run_id, "done").await.unwrap();
    let put_lease = |expires_ms: i64| {
        setup
            .s3_client()
            .put_object()
            .bucket(&setup.config().bucket)
            .key(lease_key)
            .body(
                serde_json::to_vec(&serde_json::json!({"holder": "gone", "expiresMs": expires_ms}))
                    .unwrap()
                    .into(),
            )
            .send()
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    put_lease(now_ms - 1_000).await.unwrap();
    let Checked::Enqueued(second) = setup
        .enqueue_checked(run(&h, "restart"), since, crate::contract::one_active())
        .await
        .unwrap()
    else {
        panic!("the expired lease is taken over and the gate allows");
    };
    assert!(!lease_exists(setup.clone()).await);

    // A live lease: the execute waits, then says the host is busy.
    setup.cancel(&second.record.run_id, "done").await.unwrap();
    put_lease(now_ms + 600_000).await.unwrap();
    let err = setup
        .enqueue_checked(run(&h, "restart"), since, crate::contract::one_active())
        .await
        .expect_err("the lease is held");
    assert_eq!(err.code(), "host_busy", "{err}");
    assert!(err.is_transient());
    assert_eq!(
        setup.counts(Some(h.clone())).await.unwrap().queued,
        0,
        "nothing written"
    );
    assert!(
        lease_exists(setup.clone()).await,
        "another's lease is left alone"
    );
}
