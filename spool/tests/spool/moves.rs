//! Every move through the spool, legal and illegal, and what lands on disk.

use std::sync::{Arc, Mutex};

use crate::util::*;
use remediate_spool::*;

#[test]
fn enqueue_claim_start_complete_lands_in_done() {
    let ts = TempSpool::new();
    let h = host("host-a");
    let e = ts.spool.enqueue_blocking(run(&h, "a")).unwrap();
    assert!(e.created);
    assert_eq!(e.record.state, RunState::Queued);
    assert_eq!(ts.files(&h, Dir::Queued), vec![e.record.run_id.to_string()]);
    let c = ts
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, e.record.run_id);
    assert_eq!(ts.files(&h, Dir::Running).len(), 1);
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none()
    );
    let s = ts.spool.start_attempt_blocking(&c.run_id).unwrap();
    assert_eq!((s.state, s.attempts), (RunState::Running, 1));
    let d = ts.spool.complete_blocking(&c.run_id, ok_result()).unwrap();
    assert_eq!(d.state, RunState::Succeeded);
    assert_eq!(d.history.len(), 1);
    assert!(d.history[0].finished_at.is_some());
    assert_eq!(ts.files(&h, Dir::Done), vec![c.run_id.to_string()]);
    assert!(ts.files(&h, Dir::Running).is_empty());
    let got = ts.spool.get_blocking(&c.run_id).unwrap().unwrap();
    assert_eq!(got, d);
}

#[test]
fn retry_waits_for_its_time_then_exhausts_into_dlq() {
    let ts = TempSpool::new();
    let h = host("h");
    let mut r = run(&h, "a");
    r.max_attempts = 2;
    let id = ts.spool.enqueue_blocking(r).unwrap().record.run_id;
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    let at = ts.spool.now() + chrono::Duration::seconds(15);
    let q = ts.spool.retry_at_blocking(&id, at, fail_result()).unwrap();
    assert_eq!(q.state, RunState::Queued);
    assert_eq!(q.next_attempt_at, Some(at));
    assert_eq!(q.last_error.as_deref(), Some("exit 1"));
    assert_eq!(ts.spool.counts_blocking(None).unwrap().retry_scheduled, 1);
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none(),
        "not due yet"
    );
    ts.advance_secs(15);
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    let err = ts
        .spool
        .retry_at_blocking(&id, at, fail_result())
        .unwrap_err();
    assert_eq!(err.code(), "illegal_move");
    assert!(err.to_string().contains("no attempts left"), "{err}");
    // The illegal move kept the claim: the executor can still dead-letter.
    let d = ts
        .spool
        .dead_letter_blocking(&id, "max_attempts_exceeded", Some(fail_result()))
        .unwrap();
    assert_eq!(d.state, RunState::Dlq);
    assert!(d.dlq);
    assert_eq!(d.dlq_reason.as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(d.history.len(), 2);
    assert_eq!(ts.files(&h, Dir::Dlq), vec![id.to_string()]);
}

#[test]
fn approval_flow_and_second_approval_is_illegal() {
    let ts = TempSpool::new();
    let h = host("h");
    let mut r = run(&h, "risky");
    r.approval_required = true;
    let id = ts.spool.enqueue_blocking(r.clone()).unwrap().record.run_id;
    assert_eq!(ts.files(&h, Dir::Held), vec![id.to_string()]);
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none(),
        "held is never claimable"
    );
    let a = ts
        .spool
        .approve_blocking(&id, "op", Some("ok".into()))
        .unwrap();
    assert_eq!(a.state, RunState::Queued);
    assert_eq!(a.approval.status, ApprovalStatus::Approved);
    let err = ts.spool.approve_blocking(&id, "op", None).unwrap_err();
    assert_eq!(err.code(), "illegal_move");
    let msg = err.to_string();
    assert!(
        msg.contains(id.as_str()) && msg.contains("queued") && msg.contains("approve"),
        "{msg}"
    );
    let id2 = ts.spool.enqueue_blocking(r).unwrap().record.run_id;
    let rj = ts
        .spool
        .reject_blocking(&id2, "op", Some("no".into()))
        .unwrap();
    assert_eq!(rj.state, RunState::Rejected);
    assert_eq!(rj.approval.status, ApprovalStatus::Rejected);
    assert!(ts.spool.reject_blocking(&id2, "op", None).is_err());
    assert!(ts.files(&h, Dir::Done).contains(&id2.to_string()));
}

#[test]
fn claimed_run_can_be_held_canceled_expired_or_dead_lettered() {
    let ts = TempSpool::new();
    let h = host("h");
    for mv in ["hold", "cancel", "expire", "dlq"] {
        let id = ts
            .spool
            .enqueue_blocking(run(&h, mv))
            .unwrap()
            .record
            .run_id;
        let c = ts
            .spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .unwrap();
        assert_eq!(c.run_id, id);
        let r = match mv {
            "hold" => ts.spool.hold_blocking(&id, "approval revoked").unwrap(),
            "cancel" => ts.spool.cancel_blocking(&id, "host_disabled").unwrap(),
            "expire" => ts.spool.expire_blocking(&id).unwrap(),
            _ => ts
                .spool
                .dead_letter_blocking(&id, "policy_blocked", None)
                .unwrap(),
        };
        let want = match mv {
            "hold" => RunState::Held,
            "cancel" => RunState::Canceled,
            "expire" => RunState::Expired,
            _ => RunState::Dlq,
        };
        assert_eq!(r.state, want, "{mv}");
        assert!(ts.spool.claimed().is_empty(), "{mv} released the claim");
    }
    assert!(ts.files(&h, Dir::Running).is_empty());
}

#[test]
fn moves_that_are_illegal_name_run_state_and_move() {
    let ts = TempSpool::new();
    let h = host("h");
    let id = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    // Queued, unclaimed: attempt moves need a claim; state moves are checked.
    assert_eq!(
        ts.spool.start_attempt_blocking(&id).unwrap_err().code(),
        "not_claimed"
    );
    assert_eq!(
        ts.spool
            .complete_blocking(&id, ok_result())
            .unwrap_err()
            .code(),
        "not_claimed"
    );
    for e in [
        ts.spool.approve_blocking(&id, "x", None).unwrap_err(),
        ts.spool.reject_blocking(&id, "x", None).unwrap_err(),
        ts.spool.replay_blocking(&id, "x").unwrap_err(),
    ] {
        assert_eq!(e.code(), "illegal_move", "{e}");
        assert!(e.to_string().contains("is queued"), "{e}");
    }
    // Done: nothing but replay.
    ts.spool.cancel_blocking(&id, "test").unwrap();
    for e in [
        ts.spool.cancel_blocking(&id, "x").unwrap_err(),
        ts.spool.expire_blocking(&id).unwrap_err(),
        ts.spool.hold_blocking(&id, "x").unwrap_err(),
        ts.spool.dead_letter_blocking(&id, "x", None).unwrap_err(),
    ] {
        assert_eq!(e.code(), "illegal_move", "{e}");
        assert!(e.to_string().contains("is canceled"), "{e}");
    }
    let unknown = RunId::parse("r-missing").unwrap();
    assert_eq!(
        ts.spool
            .approve_blocking(&unknown, "x", None)
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert!(ts.spool.get_blocking(&unknown).unwrap().is_none());
}

#[test]
fn replay_makes_a_fresh_linked_run_and_takes_the_source_out_of_dlq() {
    let ts = TempSpool::new();
    let h = host("h");
    let mut r = run(&h, "a");
    r.max_attempts = 1;
    r.approval_required = true;
    r.canary = Canary {
        percent: 25,
        bucket: 5,
        selected: true,
        checks: 2,
        passed: None,
    };
    r.rollback = Rollback {
        armed: true,
        attempted: false,
        succeeded: None,
    };
    let id = ts.spool.enqueue_blocking(r).unwrap().record.run_id;
    ts.spool.approve_blocking(&id, "op", None).unwrap();
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    let failed = AttemptResult {
        canary_passed: Some(false),
        rollback_attempted: true,
        rollback_succeeded: Some(true),
        ..fail_result()
    };
    let d = ts
        .spool
        .dead_letter_blocking(&id, "auto_rolled_back", Some(failed))
        .unwrap();
    assert_eq!(d.canary.passed, Some(false));
    assert!(d.rollback.attempted);

    let child = ts.spool.replay_blocking(&id, "op2").unwrap();
    assert_eq!(child.replay_of_run_id.as_ref(), Some(&id));
    assert_eq!(child.attempts, 0);
    assert_eq!(child.max_attempts, 1);
    assert_eq!(child.state, RunState::Held, "approval is asked again");
    assert_eq!(child.approval.status, ApprovalStatus::Pending);
    assert_eq!(child.canary.passed, None);
    assert!(!child.rollback.attempted && child.rollback.succeeded.is_none());
    assert!(child.history.is_empty() && !child.dlq);
    let src = ts.spool.get_blocking(&id).unwrap().unwrap();
    assert_eq!(src.state, RunState::Replayed);
    assert_eq!(src.replayed_as, vec![child.run_id.clone()]);
    assert!(ts.files(&h, Dir::Dlq).is_empty());
    // A replayed source can be replayed again, from done/.
    let again = ts.spool.replay_blocking(&id, "op2").unwrap();
    assert_ne!(again.run_id, child.run_id);
    // Held and queued runs are not replayable.
    assert_eq!(
        ts.spool
            .replay_blocking(&child.run_id, "x")
            .unwrap_err()
            .code(),
        "illegal_move"
    );
}

#[test]
fn idempotency_key_returns_the_first_run_whatever_its_state() {
    let ts = TempSpool::new();
    let h = host("h");
    let mut r = run(&h, "a");
    r.idempotency_key = Some(IdemKey::parse("deploy-42").unwrap());
    let first = ts.spool.enqueue_blocking(r.clone()).unwrap();
    assert!(first.created);
    let second = ts.spool.enqueue_blocking(r.clone()).unwrap();
    assert!(!second.created);
    assert_eq!(second.record.run_id, first.record.run_id);
    let id = first.record.run_id;
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    ts.spool.complete_blocking(&id, ok_result()).unwrap();
    let third = ts.spool.enqueue_blocking(r.clone()).unwrap();
    assert!(!third.created);
    assert_eq!(third.record.state, RunState::Succeeded);
    assert_eq!(census(&ts, &h).len(), 1);
    // Same key on another host is another run.
    let mut other = r;
    other.host_id = host("h2");
    assert!(ts.spool.enqueue_blocking(other).unwrap().created);
}

#[test]
fn idempotency_key_under_concurrency_creates_exactly_one_run() {
    let ts = TempSpool::new();
    let h = host("h");
    let mut r = run(&h, "a");
    r.idempotency_key = Some(IdemKey::parse("same").unwrap());
    let created: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (sp, r) = (ts.spool.clone(), r.clone());
                s.spawn(move || sp.enqueue_blocking(r).unwrap().created as usize)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 1);
    assert_eq!(census(&ts, &h).len(), 1);
}

#[test]
fn claim_skips_busy_actions_and_takes_earliest_due() {
    let ts = TempSpool::new();
    let h = host("h");
    let a = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    ts.advance_secs(1);
    let b = ts
        .spool
        .enqueue_blocking(run(&h, "b"))
        .unwrap()
        .record
        .run_id;
    let c = ts
        .spool
        .claim_next_blocking(&h, &|act| act == "a")
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, b);
    let c = ts
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, a);
}

#[test]
fn counts_and_list_follow_changes_made_by_another_handle() {
    // Two independent spools on one directory stand for two processes: the
    // second learns of the first's changes through inotify.
    let ts = TempSpool::new();
    let h = host("h");
    assert_eq!(ts.spool.counts_blocking(None).unwrap().total(), 0);
    let other = open(
        ts.dir.path(),
        std::sync::Arc::new(remediate_spool::io::RealIo),
        ts.clock.clone(),
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            other
                .enqueue_blocking(run(&h, &format!("a{i}")))
                .unwrap()
                .record
                .run_id,
        );
        ts.advance_secs(1);
    }
    let c = ts.spool.counts_blocking(Some(&h)).unwrap();
    assert_eq!(c.queued, 5);
    let got = other.claim_next_blocking(&h, &|_| false).unwrap().unwrap();
    other.start_attempt_blocking(&got.run_id).unwrap();
    other.complete_blocking(&got.run_id, ok_result()).unwrap();
    let c = ts.spool.counts_blocking(Some(&h)).unwrap();
    assert_eq!((c.queued, c.succeeded), (4, 1));
    let oldest = ts
        .spool
        .list_blocking(&ListQuery {
            host: None,
            buckets: vec![Bucket::Queued],
            limit: 2,
        })
        .unwrap();
    assert_eq!(
        oldest.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        ids[1..3].to_vec()
    );
}

#[test]
fn spool_refuses_directories_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let ts = TempSpool::new();
    let h = host("h");
    ts.spool.enqueue_blocking(run(&h, "a")).unwrap();
    let q = ts.spool.host_dir(&h, Dir::Queued);
    assert_eq!(
        std::fs::metadata(&q).unwrap().permissions().mode() & 0o777,
        0o700
    );
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = LocalSpool::open(ts.dir.path().join("spool")).unwrap_err();
    assert_eq!(err.code(), "unsafe_spool");
    let msg = err.to_string();
    assert!(msg.contains("queued") && msg.contains("777"), "{msg}");
}

#[test]
fn prune_keeps_recent_and_removes_old_and_excess() {
    let ts = TempSpool::new();
    let h = host("h");
    for _ in 0..5 {
        let id = ts
            .spool
            .enqueue_blocking(run(&h, "a"))
            .unwrap()
            .record
            .run_id;
        ts.spool.cancel_blocking(&id, "t").unwrap();
    }
    let keep_all = Retention::default();
    assert_eq!(ts.spool.prune_blocking(keep_all).unwrap().done_removed, 0);
    let r = Retention {
        done_max_count: 2,
        ..Retention::default()
    };
    assert_eq!(ts.spool.prune_blocking(r).unwrap().done_removed, 3);
    assert_eq!(ts.files(&h, Dir::Done).len(), 2);
    let r = Retention {
        done_max_age: std::time::Duration::ZERO,
        ..Retention::default()
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(ts.spool.prune_blocking(r).unwrap().done_removed, 2);
}

#[test]
fn recovery_requeues_orphans_and_settles_interrupted_attempts() {
    let mut ts = TempSpool::new();
    let h = host("h");
    let mut idem = run(&h, "idem");
    idem.idempotent = true;
    let i = ts.spool.enqueue_blocking(idem).unwrap().record.run_id;
    let n = ts
        .spool
        .enqueue_blocking(run(&h, "nonidem"))
        .unwrap()
        .record
        .run_id;
    let o = ts
        .spool
        .enqueue_blocking(run(&h, "orphan"))
        .unwrap()
        .record
        .run_id;
    for id in [&i, &n] {
        let c = ts
            .spool
            .claim_next_blocking(&h, &|a| a == "orphan")
            .unwrap()
            .unwrap();
        assert_eq!(&c.run_id, id);
        ts.spool.start_attempt_blocking(id).unwrap();
    }
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    // A live claimer's files are left alone.
    let other = open(
        ts.dir.path(),
        std::sync::Arc::new(remediate_spool::io::RealIo),
        ts.clock.clone(),
    );
    let rep = other.recover_blocking().unwrap();
    assert_eq!(rep.busy, 3);
    assert_eq!(ts.files(&h, Dir::Running).len(), 3);
    // The claimer dies.
    ts.reopen();
    let rep = ts.spool.recover_blocking().unwrap();
    assert_eq!(rep.interrupted_retried, vec![i.to_string()]);
    assert_eq!(rep.interrupted_dead_lettered, vec![n.to_string()]);
    assert_eq!(rep.orphans_requeued, vec![o.to_string()]);
    let nr = ts.spool.get_blocking(&n).unwrap().unwrap();
    assert_eq!(
        (nr.state, nr.dlq_reason.as_deref()),
        (RunState::Dlq, Some("interrupted"))
    );
    assert!(nr.history[0].result.interrupted);
    let ir = ts.spool.get_blocking(&i).unwrap().unwrap();
    assert_eq!((ir.state, ir.attempts), (RunState::Queued, 1));
    // Idempotent: a second pass changes nothing.
    let again = ts.spool.recover_blocking().unwrap();
    assert_eq!(again, RecoveryReport::default());
}

#[test]
fn flush_makes_scheduled_retries_due_now() {
    let ts = TempSpool::new();
    let h = host("h");
    let id = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    let later = ts.spool.now() + chrono::Duration::minutes(10);
    ts.spool
        .retry_at_blocking(&id, later, fail_result())
        .unwrap();
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none()
    );
    assert_eq!(ts.spool.flush_retries_blocking(&h).unwrap(), 1);
    assert_eq!(
        ts.spool.flush_retries_blocking(&h).unwrap(),
        0,
        "already due"
    );
    let c = ts
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, id);
    assert_eq!(c.next_attempt_at, Some(ts.spool.now()));
}

#[test]
fn host_documents_audit_and_drain_requests() {
    let ts = TempSpool::new();
    let h = host("h");
    assert!(ts.spool.get_host_doc_blocking(&h).unwrap().is_none());
    let doc = serde_json::json!({"remediationPolicyProfile": "strict", "enabled": true});
    ts.spool.put_host_doc_blocking(&h, &doc).unwrap();
    ts.spool.put_host_doc_blocking(&h, &doc).unwrap();
    assert_eq!(ts.spool.get_host_doc_blocking(&h).unwrap(), Some(doc));
    // A registered host has its run directories before its first run.
    assert!(ts.spool.host_dir(&h, remediate_spool::Dir::Queued).is_dir());
    assert_eq!(ts.spool.hosts().unwrap(), vec![h.clone()]);
    ts.spool
        .audit_blocking(
            AuditLine::of(&serde_json::json!({"what": "approve"})).unwrap(),
            true,
        )
        .unwrap();
    ts.spool
        .audit_blocking(
            AuditLine::of(&serde_json::json!({"what": "reject"})).unwrap(),
            false,
        )
        .unwrap();
    let audit_dir = ts.spool.root().join("audit");
    let files: Vec<_> = std::fs::read_dir(&audit_dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let log = files[0].as_ref().unwrap().path();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2);
    // The log is kept open between lines; one moved away by hand is not
    // written to unseen: the next line starts a new file at the path.
    let moved = ts.spool.root().join("audit-moved.jsonl");
    std::fs::rename(&log, &moved).unwrap();
    ts.spool
        .audit_blocking(
            AuditLine::of(&serde_json::json!({"what": "replay"})).unwrap(),
            false,
        )
        .unwrap();
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), text);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("replay"), "{text}");
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), None);
    ts.spool.request_drain_blocking(&h, 5).unwrap();
    ts.spool.request_drain_blocking(&h, 8).unwrap();
    ts.spool.request_drain_blocking(&host("other"), 3).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(8));
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), None);
    assert_eq!(
        ts.spool.take_drain_requests(&host("other")).unwrap(),
        Some(3)
    );
}

/// Host ids may hold dots: one host's drain requests are never another's
/// whose id it begins (requests were once files named
/// `drain.<host>.<nonce>`, and the executor of `web` took those of
/// `web.example.com` as its own).
#[test]
fn drain_requests_of_hosts_whose_ids_share_a_prefix_stay_apart() {
    let ts = TempSpool::new();
    let (web, long) = (host("web"), host("web.example.com"));
    ts.spool.request_drain_blocking(&long, 4).unwrap();
    ts.spool.request_drain_blocking(&web, 2).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&web).unwrap(), Some(2));
    assert_eq!(ts.spool.take_drain_requests(&web).unwrap(), None);
    assert_eq!(ts.spool.take_drain_requests(&long).unwrap(), Some(4));
    // A limit above the executor's cap is taken as the cap.
    ts.spool.request_drain_blocking(&long, 500).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&long).unwrap(), Some(50));
}

/// Under the default autodrain every execute asks for a drain: the
/// requests of a host go through one file, written in place, so asking and
/// taking create and free no inode (an ext4 without a journal makes every
/// later file creation near a freed inode scan past it for minutes).
#[test]
fn drain_requests_reuse_one_file_per_host() {
    use std::os::unix::fs::MetadataExt;
    let ts = TempSpool::new();
    let h = host("h");
    let control = ts.spool.control_path();
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&control)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    ts.spool.request_drain_blocking(&h, 3).unwrap();
    let file = control.join("drain.h");
    let ino = std::fs::metadata(&file).unwrap().ino();
    for limit in [1, 7, 2] {
        ts.spool.request_drain_blocking(&h, limit).unwrap();
    }
    // The largest pending limit, and nothing but it.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "7\n");
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(7));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
    ts.spool.request_drain_blocking(&h, 1).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(1));
    assert_eq!(names(), vec!["drain.h".to_string()]);
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), ino);
    // Contents torn by a crash still ask for a drain (of one run), and
    // are replaced by the next request.
    std::fs::write(&file, b"\x00\x00\x00").unwrap();
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(1));
    for garbage in [
        "garbage",
        "12345678901234567890123456789012345678901234567890",
    ] {
        std::fs::write(&file, garbage).unwrap();
        ts.spool.request_drain_blocking(&h, 4).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "4\n");
        std::fs::write(&file, garbage).unwrap();
        assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(1));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
    }
    // A control/ directory removed by hand is made again.
    std::fs::remove_dir_all(&control).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), None);
    ts.spool.request_drain_blocking(&h, 2).unwrap();
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(2));
}

/// A drain file whose lock holder is stopped (a debugger, SIGSTOP) makes
/// neither an execute's request nor the executor's take hang: the request
/// is dropped (it is a wake-up), the take fails and leaves what is pending.
#[test]
fn a_drain_file_locked_by_a_stopped_holder_blocks_nobody() {
    use nix::fcntl::{Flock, FlockArg};
    let ts = TempSpool::new();
    let h = host("h");
    ts.spool.request_drain_blocking(&h, 3).unwrap();
    let file = ts.spool.control_path().join("drain.h");
    let holder = Flock::lock(
        std::fs::File::open(&file).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    ts.spool.request_drain_blocking(&h, 9).unwrap();
    let err = ts.spool.take_drain_requests(&h).unwrap_err();
    assert!(err.to_string().contains("over 50 ms"), "{err}");
    drop(holder);
    assert_eq!(ts.spool.take_drain_requests(&h).unwrap(), Some(3));
}

/// The drain file is written in place, so never through a symbolic link
/// (the spool's directories are its owner's alone, rule 8; this is the
/// second line of defence): both sides refuse one and write nothing.
#[test]
fn a_drain_file_that_is_a_symlink_is_refused() {
    let ts = TempSpool::new();
    let h = host("h");
    let target = ts.spool.root().join("elsewhere");
    std::fs::write(&target, "precious\n").unwrap();
    std::fs::create_dir_all(ts.spool.control_path()).unwrap();
    std::os::unix::fs::symlink(&target, ts.spool.control_path().join("drain.h")).unwrap();
    let err = ts.spool.request_drain_blocking(&h, 5).unwrap_err();
    assert!(err.to_string().contains("drain.h"), "{err}");
    assert!(ts.spool.take_drain_requests(&h).is_err());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

/// Requests and takes from several threads (as from the API's connection
/// threads and the executor): the largest limit asked for is always taken
/// by some take, none after its request is lost to a take that emptied the
/// file in between.
#[test]
fn concurrent_drain_requests_are_never_lost_to_a_take() {
    let ts = TempSpool::new();
    let h = host("h");
    let spool = &ts.spool;
    let done = std::sync::atomic::AtomicBool::new(false);
    for round in 0..20u32 {
        let top = 10 + round;
        let taken = std::thread::scope(|s| {
            let taker = s.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.extend(spool.take_drain_requests(&h).unwrap());
                }
                seen
            });
            let askers: Vec<_> = (0..4u32)
                .map(|t| {
                    let h = h.clone();
                    s.spawn(move || {
                        for i in 0..50u32 {
                            // One thread asks for `top` once, amid the rest.
                            let limit = if t == 0 && i == 25 {
                                top
                            } else {
                                1 + (i + t) % 9
                            };
                            spool.request_drain_blocking(&h, limit).unwrap();
                        }
                    })
                })
                .collect();
            for a in askers {
                a.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut seen = taker.join().unwrap();
            done.store(false, std::sync::atomic::Ordering::SeqCst);
            seen.extend(spool.take_drain_requests(&h).unwrap());
            seen
        });
        assert_eq!(taken.iter().max(), Some(&top), "round {round}: {taken:?}");
    }
}

#[test]
fn host_activity_keeps_latest_dry_run_and_recent_executes() {
    let ts = TempSpool::new();
    let h = host("h");
    assert_eq!(
        ts.spool.host_activity_blocking(&h).unwrap(),
        HostActivity::default()
    );
    ts.spool
        .record_activity_blocking(&h, ActivityKind::DryRun, "a")
        .unwrap();
    ts.advance_secs(60);
    ts.spool
        .record_activity_blocking(&h, ActivityKind::DryRun, "a")
        .unwrap();
    ts.spool
        .record_activity_blocking(&h, ActivityKind::Execute, "a")
        .unwrap();
    let a = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(a.dry_runs["a"], ts.spool.now());
    assert_eq!(a.executes.len(), 1);
    ts.advance_secs(2 * 86_400);
    ts.spool
        .record_activity_blocking(&h, ActivityKind::Execute, "b")
        .unwrap();
    let a = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(
        a.executes
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "a day-old execute is dropped"
    );
}

/// Records `kind` of `action` on `h`.
fn record(ts: &TempSpool, h: &HostId, kind: ActivityKind, action: &str) {
    ts.spool.record_activity_blocking(h, kind, action).unwrap();
}

/// The activity log of `h` in the spool of `ts`.
fn activity_log(ts: &TempSpool, h: &HostId) -> std::path::PathBuf {
    ts.dir
        .path()
        .join("spool/hosts")
        .join(format!("{h}.activity.log"))
}

/// Recording activity appends to one file: its inode stays the same (no
/// file is created and freed per dry-run), and it is read back whole.
#[test]
fn activity_is_appended_to_one_file() {
    use std::os::unix::fs::MetadataExt;
    let ts = TempSpool::new();
    let h = host("h");
    record(&ts, &h, ActivityKind::DryRun, "a");
    let p = activity_log(&ts, &h);
    let ino = std::fs::metadata(&p).unwrap().ino();
    for (i, action) in ["b", "a", "c"].iter().enumerate() {
        ts.advance_secs(10);
        record(&ts, &h, ActivityKind::DryRun, action);
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "append {i}");
    }
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    let a = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(a.dry_runs.len(), 3);
    assert_eq!(
        a.dry_runs["a"],
        ts.spool.now() - chrono::Duration::seconds(10)
    );
    assert_eq!(a.dry_runs["c"], ts.spool.now());
    let names: Vec<String> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("activity") && !n.ends_with(".lock"))
        .collect();
    assert_eq!(names, [format!("{h}.activity.log")], "no leftovers");
}

/// A torn last line (a crash in the middle of an append) is skipped when
/// read, and the next append starts on a line of its own, so it counts.
#[test]
fn a_torn_activity_line_costs_only_itself() {
    use std::io::Write;
    let ts = TempSpool::new();
    let h = host("h");
    record(&ts, &h, ActivityKind::DryRun, "a");
    let p = activity_log(&ts, &h);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"{\"kind\":\"dryRun\",\"act")
        .unwrap();
    let a = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(a.dry_runs.keys().collect::<Vec<_>>(), ["a"]);
    ts.advance_secs(5);
    record(&ts, &h, ActivityKind::DryRun, "b");
    let a = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(a.dry_runs.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(a.dry_runs["b"], ts.spool.now());
}

/// A log past the compaction size is rewritten with what is still in force
/// (the latest dry-run of each action, the last day's executes) and the
/// answers stay the same.
#[test]
fn the_activity_log_is_compacted_without_losing_what_counts() {
    let ts = TempSpool::new();
    let h = host("h");
    record(&ts, &h, ActivityKind::Execute, "old");
    ts.advance_secs(2 * 86_400);
    let p = activity_log(&ts, &h);
    let mut i = 0u64;
    while std::fs::metadata(&p).unwrap().len() < remediate_spool::ACTIVITY_COMPACT_AT {
        ts.advance_secs(1);
        let action = format!("action-{}", i % 7);
        record(&ts, &h, ActivityKind::DryRun, &action);
        i += 1;
    }
    record(&ts, &h, ActivityKind::Execute, "action-0");
    let before = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(before.dry_runs.len(), 7);
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 8, "7 dry-runs and 1 execute: {text}");
    assert_eq!(
        before
            .executes
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        ["action-0"],
        "the execute of two days ago is gone"
    );
    ts.advance_secs(1);
    record(&ts, &h, ActivityKind::DryRun, "action-1");
    let after = ts.spool.host_activity_blocking(&h).unwrap();
    assert_eq!(after.dry_runs["action-1"], ts.spool.now());
    assert_eq!(after.dry_runs["action-2"], before.dry_runs["action-2"]);
}

#[test]
fn recent_requests_come_from_the_index_newest_first() {
    let ts = TempSpool::new();
    let h = host("h");
    let a = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    ts.advance_secs(3600);
    let since = ts.spool.now();
    let mut auto = run(&h, "b");
    auto.auto_queued = true;
    ts.spool.enqueue_blocking(auto).unwrap();
    ts.advance_secs(1);
    ts.spool.enqueue_blocking(run(&h, "c")).unwrap();
    ts.spool.cancel_blocking(&a, "t").unwrap();
    let r = ts.spool.recent_requests_blocking(&h, since);
    let got: Vec<_> = r
        .iter()
        .map(|x| (x.action_key.as_str(), x.auto_queued))
        .collect();
    assert_eq!(got, [("c", false), ("b", true)]);
    assert!(
        ts.spool
            .recent_requests_blocking(&host("other"), since)
            .is_empty()
    );
}

/// Regression: a host whose directory this process created (first enqueue)
/// was indexed but never watched, so another process's moves of its runs
/// went unseen and the counts stayed stale forever.
#[test]
fn a_new_host_is_watched_so_other_processes_moves_are_seen() {
    let ts = TempSpool::new();
    // The index is built before the host exists.
    assert_eq!(ts.spool.counts_blocking(None).unwrap().total(), 0);
    let h = host("brand-new");
    let id = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    let other = open(
        ts.dir.path(),
        std::sync::Arc::new(remediate_spool::io::RealIo),
        ts.clock.clone(),
    );
    let c = other.claim_next_blocking(&h, &|_| false).unwrap().unwrap();
    assert_eq!(c.run_id, id);
    other.start_attempt_blocking(&id).unwrap();
    other.complete_blocking(&id, ok_result()).unwrap();
    let counts = ts.spool.counts_blocking(Some(&h)).unwrap();
    assert_eq!((counts.queued, counts.succeeded), (0, 1), "{counts:?}");
}

/// The queued record file of `id`, locked as a recovery pass or an approval
/// locks it while it reads or commits.
fn lock_queued(ts: &TempSpool, h: &HostId, id: &RunId) -> std::fs::File {
    let p = ts.spool.host_dir(h, Dir::Queued).join(id.as_str());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&p)
        .expect("open the queued record");
    f.lock().expect("flock");
    f
}

#[test]
fn a_claim_waits_for_a_briefly_locked_record_instead_of_overtaking_it() {
    let ts = TempSpool::new();
    let h = host("h");
    let a = ts.enqueue(&h, "x");
    let b = ts.enqueue(&h, "x");
    let held = lock_queued(&ts, &h, &a);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(held);
    });
    let c = ts.spool.claim_next_blocking(&h, &|_| false).unwrap();
    release.join().unwrap();
    assert_eq!(c.map(|r| r.run_id), Some(a));
    assert_eq!(ts.files(&h, Dir::Queued), vec![b.to_string()]);
}

#[test]
fn a_record_locked_for_long_holds_back_its_action_but_not_others() {
    let ts = TempSpool::new();
    let h = host("h");
    let a = ts.enqueue(&h, "x");
    let b = ts.enqueue(&h, "x");
    let other = ts.enqueue(&h, "y");
    let held = lock_queued(&ts, &h, &a);
    // `b` would overtake `a`: it waits; the other action's run goes.
    let c = ts.spool.claim_next_blocking(&h, &|_| false).unwrap();
    assert_eq!(c.map(|r| r.run_id), Some(other));
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none()
    );
    drop(held);
    let c = ts.spool.claim_next_blocking(&h, &|_| false).unwrap();
    assert_eq!(c.map(|r| r.run_id), Some(a));
    let mut left = ts.files(&h, Dir::Queued);
    left.sort();
    assert_eq!(left, vec![b.to_string()]);
}

#[test]
fn racing_checked_enqueues_of_one_action_create_one_run() {
    let ts = TempSpool::new();
    let h = host("h");
    let since = ts.spool.now() - chrono::Duration::hours(1);
    let created: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let sp = ts.spool.clone();
                let h = h.clone();
                s.spawn(move || {
                    let check: EnqueueCheck = Box::new(|f: &GateFacts| match f.active_run {
                        Some(_) => Err(Box::new("already active") as Refusal),
                        None => Ok(()),
                    });
                    match sp.enqueue_checked_blocking(run(&h, "x"), since, check) {
                        Ok(Checked::Enqueued(e)) => usize::from(e.created),
                        Ok(Checked::Refused(_)) => 0,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 1);
    assert_eq!(ts.files(&h, Dir::Queued).len(), 1);
}

/// An outcome is committed by its fdatasync'd line; a crash between the
/// rename that follows and the fsync of the target directory can lose the
/// rename (the file is back in `running/`, unlocked, its log finished).
/// Recovery must then move it where the log says and start nothing.
#[test]
fn an_outcome_whose_rename_was_lost_is_moved_on_by_recovery() {
    let mut ts = TempSpool::new();
    let h = host("h");
    let mut idem = run(&h, "retry-me");
    idem.idempotent = true;
    let done = ts.enqueue(&h, "ok");
    let again = ts.spool.enqueue_blocking(idem).unwrap().record.run_id;
    for (id, action) in [(&done, "ok"), (&again, "retry-me")] {
        let c = ts.spool.claim_next_blocking(&h, &|a| a != action).unwrap();
        assert_eq!(c.map(|r| r.run_id).as_ref(), Some(id));
        ts.spool.start_attempt_blocking(id).unwrap();
    }
    ts.spool.complete_blocking(&done, ok_result()).unwrap();
    let later = ts.spool.now() + chrono::Duration::seconds(60);
    ts.spool
        .retry_at_blocking(&again, later, fail_result())
        .unwrap();
    // The crash: both renames never reached the disk.
    for (id, from) in [(&done, Dir::Done), (&again, Dir::Queued)] {
        std::fs::rename(
            ts.spool.host_dir(&h, from).join(id.as_str()),
            ts.spool.host_dir(&h, Dir::Running).join(id.as_str()),
        )
        .unwrap();
    }
    ts.reopen();
    let rep = ts.spool.recover_blocking().unwrap();
    assert!(
        rep.interrupted_retried.is_empty() && rep.interrupted_dead_lettered.is_empty(),
        "{rep:?}"
    );
    assert_eq!(ts.files(&h, Dir::Done), vec![done.to_string()]);
    assert_eq!(ts.files(&h, Dir::Queued), vec![again.to_string()]);
    assert!(ts.files(&h, Dir::Running).is_empty());
    let d = ts.spool.get_blocking(&done).unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (RunState::Succeeded, 1));
    let a = ts.spool.get_blocking(&again).unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.next_attempt_at),
        (RunState::Queued, 1, Some(later))
    );
    // Nothing is due before its time: the retry waits.
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none()
    );
}

/// The global backlog an execute is gated on, as `enqueue_checked` shows it
/// (refusing, so that nothing is written).
fn global_backlog(s: &LocalSpool, h: &HostId) -> usize {
    let seen = Arc::new(Mutex::new(None));
    let keep = seen.clone();
    let check: EnqueueCheck = Box::new(move |f: &GateFacts| {
        *keep.lock().unwrap() = Some(f.global_backlog);
        Err(Box::new(()) as Refusal)
    });
    let since = s.now() - chrono::Duration::hours(1);
    let got = s.enqueue_checked_blocking(run(h, "probe"), since, check);
    assert!(matches!(got, Ok(Checked::Refused(_))), "the probe refuses");
    seen.lock().unwrap().expect("the check ran")
}

/// The waiting runs of every host as the snapshot counts them.
fn waiting(s: &LocalSpool) -> usize {
    let c = s.counts_blocking(None).unwrap();
    c.queued + c.retry_scheduled + c.held
}

/// The index keeps the global backlog as a running count rather than
/// summing every host per execute: it stays equal to the snapshot's count
/// through enqueue, hold, approve, claim, retry, dead letter, replay and
/// completion, whether this process made the move or another one did (seen
/// through inotify), and after a reopen (a full scan).
#[test]
fn global_backlog_follows_every_move() {
    let mut ts = TempSpool::new();
    let other = open(ts.dir.path(), Arc::new(io::RealIo), ts.clock.clone());
    let (a, b) = (host("gb-a"), host("gb-b"));
    let check = |ts: &TempSpool, expected: usize| {
        assert_eq!(waiting(&ts.spool), expected);
        assert_eq!(global_backlog(&ts.spool, &a), expected, "this process");
        assert_eq!(global_backlog(&other, &b), expected, "the other process");
    };
    check(&ts, 0);
    let a1 = ts.enqueue(&a, "one");
    let b1 = other
        .enqueue_blocking(run(&b, "one"))
        .unwrap()
        .record
        .run_id;
    let a2 = ts.enqueue(&a, "two");
    check(&ts, 3);
    // Held runs wait too; approving keeps the count, rejecting ends it.
    ts.spool.hold_blocking(&a2, "needs approval").unwrap();
    check(&ts, 3);
    ts.spool.approve_blocking(&a2, "op", None).unwrap();
    check(&ts, 3);
    // Claimed runs are running, not waiting; a retry waits again.
    let c = ts
        .spool
        .claim_next_blocking(&a, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, a1);
    check(&ts, 2);
    ts.spool.start_attempt_blocking(&a1).unwrap();
    let at = ts.spool.now() + chrono::Duration::seconds(30);
    ts.spool.retry_at_blocking(&a1, at, fail_result()).unwrap();
    check(&ts, 3);
    // The other process runs b1 to the end.
    other.claim_next_blocking(&b, &|_| false).unwrap().unwrap();
    other.start_attempt_blocking(&b1).unwrap();
    other.complete_blocking(&b1, ok_result()).unwrap();
    check(&ts, 2);
    // A dead letter leaves the backlog; its replay comes back to it.
    ts.advance_secs(60);
    let d = ts
        .spool
        .claim_next_blocking(&a, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&d.run_id).unwrap();
    ts.spool
        .dead_letter_blocking(&d.run_id, "gave up", Some(fail_result()))
        .unwrap();
    check(&ts, 1);
    let replayed = ts.spool.replay_blocking(&d.run_id, "op").unwrap();
    assert_ne!(replayed.run_id, d.run_id);
    check(&ts, 2);
    ts.reopen();
    check(&ts, 2);
}
