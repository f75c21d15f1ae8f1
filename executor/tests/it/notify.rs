//! Webhook notifications: dead letters and approvals are POSTed as JSON,
//! retried after a server error, and never block the claim loop.

use std::time::Duration;

use remediate_executor::RunEnd;
use remediate_executor::notify::{Notice, NoticeKind, Notifier, NotifyOptions, WebhookUrl};
use remediate_spool::codec;
use remediate_spool::record::{Event, EventKind};
use remediate_spool::{Dir, RunRecord, RunState};

use crate::util::*;

fn quick() -> NotifyOptions {
    NotifyOptions {
        capacity: 16,
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        request_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn dead_letters_and_approvals_are_posted_and_retried_after_a_server_error() {
    let env = Env::new();
    // The first POST gets a 500: the same notice comes again.
    let hook = Hook::start(vec![500]);
    let url = WebhookUrl::parse(&hook.url).expect("url");
    let (notifier, sender) = Notifier::start(url, quick());
    let (mut deps, mut events) = env.deps(no_rescan());
    deps.notifier = Some(notifier.clone());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(remediate_executor::run(deps, async move {
        let _ = rx.await;
    }));

    let mut new = env.new_run("always-fail");
    new.max_attempts = 1;
    let dead = env.enqueue(new);
    let (id, end) = events.recv().await.expect("event");
    assert_eq!(
        (id, end),
        (
            dead.clone(),
            RunEnd::DeadLettered("max_attempts_exceeded".into())
        )
    );
    let first = tokio::task::spawn_blocking(move || {
        let a = hook.next();
        let b = hook.next();
        (a, b, hook)
    });
    let (a, b, hook) = first.await.expect("join");
    assert_eq!(a, b, "the retry sends the same notice");
    assert_eq!(a["kind"], "run.dead_lettered");
    assert_eq!(a["runId"], dead.as_str());
    assert_eq!(a["hostId"], "host-a");
    assert_eq!(a["actionKey"], "always-fail");
    assert_eq!(a["reason"], "max_attempts_exceeded");
    assert_eq!(a["attempts"], 1);
    assert!(
        a["title"]
            .as_str()
            .is_some_and(|t| t.contains("dead-lettered"))
    );

    // A queued run that turns out to still need approval goes back to
    // held/ and the operator is told.
    let mut rec = RunRecord::new(
        remediate_spool::RunId::generate(),
        env.new_run("ok"),
        env.spool.now(),
        None,
    );
    rec.approval.required = true;
    rec.approval.status = remediate_spool::ApprovalStatus::Pending;
    let line = codec::encode(&Event {
        seq: 0,
        at: rec.requested_at,
        kind: EventKind::Enqueued {
            record: Box::new(rec.clone()),
        },
    });
    let tmp = env.spool.host_dir(&env.host, Dir::Tmp).join("approval");
    std::fs::write(&tmp, line).expect("write");
    std::fs::rename(
        &tmp,
        env.spool
            .host_dir(&env.host, Dir::Queued)
            .join(rec.run_id.as_str()),
    )
    .expect("publish");
    let (id, end) = events.recv().await.expect("event");
    assert_eq!((id, end), (rec.run_id.clone(), RunEnd::WaitingApproval));
    let c = tokio::task::spawn_blocking(move || hook.next())
        .await
        .expect("join");
    assert_eq!(c["kind"], "run.approval_pending");
    assert_eq!(c["runId"], rec.run_id.as_str());
    assert_eq!(env.get(&rec.run_id).state, RunState::Held);

    let _ = stop.send(());
    task.await.expect("join").expect("daemon ok");
    let stats = notifier.stats();
    assert_eq!(
        stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    drop(notifier);
    sender.finish(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_full_notification_queue_drops_instead_of_blocking() {
    // A webhook that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url =
        WebhookUrl::parse(&format!("http://{}/", silent.local_addr().expect("addr"))).expect("url");
    let opts = NotifyOptions {
        capacity: 1,
        request_timeout: Duration::from_secs(3600),
        ..quick()
    };
    let (notifier, _sender) = Notifier::start(url, opts);
    let env = Env::new();
    let id = env.enqueue(env.new_run("ok"));
    let rec = env.get(&id);
    let sent: Vec<bool> = (0..5)
        .map(|_| {
            notifier.notify(Notice::about(
                NoticeKind::DeadLettered,
                &rec,
                "x",
                env.spool.now(),
            ))
        })
        .collect();
    // One notice in flight at most, one waiting: the rest were dropped, and
    // every call returned at once.
    let dropped = sent.iter().filter(|ok| !**ok).count();
    assert!(dropped >= 3, "{sent:?}");
    assert_eq!(
        notifier
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        dropped as u64
    );
}
