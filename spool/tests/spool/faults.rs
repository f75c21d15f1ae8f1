//! Fault injection: an I/O error or a crash at every single durability
//! step of a workload that covers enqueue, claim, every move and recovery.
//! After each fault the spool is reopened, recovered and drained, and:
//! no acknowledged run is lost, no run is in two states, no non-idempotent
//! attempt runs twice, no acknowledged terminal state changes, and nothing
//! ends in corrupt/.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::util::*;
use remediate_spool::io::{Fault, FaultIo};
use remediate_spool::*;

#[derive(Default, Debug)]
struct Acks {
    /// Runs whose enqueue returned Ok, with whether they are idempotent.
    enqueued: BTreeMap<RunId, bool>,
    /// Attempts that started (a command would have run), per run.
    executions: HashMap<RunId, u32>,
    /// Terminal states the spool acknowledged.
    terminal: HashMap<RunId, RunState>,
}

impl Acks {
    fn enq(&mut self, r: Result<Enqueued>, idem: bool) -> Option<RunId> {
        let e = r.ok()?;
        self.enqueued.insert(e.record.run_id.clone(), idem);
        Some(e.record.run_id)
    }
    fn moved(&mut self, r: Result<RunRecord>) -> Option<RunRecord> {
        let rec = r.ok()?;
        if rec.state.is_terminal() {
            self.terminal.insert(rec.run_id.clone(), rec.state);
        }
        Some(rec)
    }
    fn started(&mut self, sp: &LocalSpool, id: &RunId) -> bool {
        if sp.start_attempt_blocking(id).is_ok() {
            *self.executions.entry(id.clone()).or_default() += 1;
            true
        } else {
            false
        }
    }
}

/// The workload. Every call may fail once a fault fired; it keeps going
/// with what it can (as a process that saw an error would).
fn workload(ts: &TempSpool, acks: &mut Acks) {
    let sp = &ts.spool;
    let h = host("h");
    let none = |_: &str| false;
    let mut r1 = run(&h, "one");
    r1.max_attempts = 2;
    let r1 = acks.enq(sp.enqueue_blocking(r1), false);
    let mut r2 = run(&h, "two");
    r2.idempotent = true;
    r2.idempotency_key = Some(IdemKey::parse("k2").unwrap());
    let r2id = acks.enq(sp.enqueue_blocking(r2.clone()), true);
    let mut r3 = run(&h, "three");
    r3.approval_required = true;
    let r3 = acks.enq(sp.enqueue_blocking(r3), false);
    let _ = acks.enq(sp.enqueue_blocking(r2), true);

    // r1: claim, start, succeed.
    if let Some(id) = &r1 {
        if let Ok(Some(c)) = sp.claim_next_blocking(&h, &|a| a != "one") {
            assert_eq!(&c.run_id, id);
            if acks.started(sp, id) {
                acks.moved(sp.complete_blocking(id, ok_result()));
            }
        }
    }
    // r2: fail once (retry), then dead-letter, then replay.
    let mut child = None;
    if let Some(id) = &r2id {
        if let Ok(Some(_)) = sp.claim_next_blocking(&h, &|a| a != "two") {
            if acks.started(sp, id) {
                let _ = sp.retry_at_blocking(id, sp.now(), fail_result());
            }
        }
        if let Ok(Some(_)) = sp.claim_next_blocking(&h, &|a| a != "two") {
            if acks.started(sp, id) {
                acks.moved(sp.dead_letter_blocking(
                    id,
                    "max_attempts_exceeded",
                    Some(fail_result()),
                ));
            }
        }
        if let Ok(c) = sp.replay_blocking(id, "op") {
            acks.enqueued.insert(c.run_id.clone(), true);
            child = Some(c.run_id);
        }
    }
    // r3: approve, claim, start, then its executor dies mid-attempt.
    if let Some(id) = &r3 {
        let _ = sp.approve_blocking(id, "op", None);
        if let Ok(Some(_)) = sp.claim_next_blocking(&h, &|a| a != "three") {
            if acks.started(sp, id) {
                sp.release_claim(id);
            }
        }
    }
    // The replay child: claimed, never started, claimer dies.
    if let Some(c) = &child {
        if let Ok(Some(_)) = sp.claim_next_blocking(&h, &|a| a != "two") {
            sp.release_claim(c);
        }
    }
    let _ = sp.recover_blocking();
    if let Some(c) = &child {
        if let Ok(Some(_)) = sp.claim_next_blocking(&h, &none) {
            acks.moved(sp.cancel_blocking(c, "host_disabled"));
        }
    }
    let r4 = acks.enq(sp.enqueue_blocking(run(&h, "four")), false);
    if let Some(id) = &r4 {
        acks.moved(sp.expire_blocking(id));
    }
}

/// Reopens with real I/O, recovers, drains everything due, checks.
fn settle_and_check(ts: &mut TempSpool, acks: &mut Acks, label: &str) {
    ts.reopen();
    let h = host("h");
    ts.spool
        .recover_blocking()
        .unwrap_or_else(|e| panic!("{label}: recovery failed: {e}"));
    for _ in 0..50 {
        match ts.spool.claim_next_blocking(&h, &|_| false).unwrap() {
            Some(c) => {
                assert!(acks.started(&ts.spool, &c.run_id), "{label}");
                acks.moved(ts.spool.complete_blocking(&c.run_id, ok_result()));
            }
            None => break,
        }
    }
    let census = census(ts, &h);
    for (id, dirs) in &census {
        assert_eq!(dirs.len(), 1, "{label}: {id} is in {dirs:?}");
        assert_ne!(dirs[0], Dir::Corrupt, "{label}: {id} ended corrupt");
    }
    for (id, idem) in &acks.enqueued {
        assert!(
            census.contains_key(id.as_str()),
            "{label}: acknowledged run {id} lost"
        );
        let n = acks.executions.get(id).copied().unwrap_or(0);
        if !idem {
            assert!(n <= 1, "{label}: non-idempotent {id} ran {n} times");
        }
    }
    for (id, st) in &acks.terminal {
        let now = ts.spool.get_blocking(id).unwrap().unwrap().state;
        let ok = now == *st || (*st == RunState::Dlq && now == RunState::Replayed);
        assert!(ok, "{label}: {id} was acknowledged {st} and is now {now}");
    }
    // Every record still validates and nothing is left claimable or running.
    assert!(ts.files(&h, Dir::Running).is_empty(), "{label}");
    assert!(ts.files(&h, Dir::Queued).is_empty(), "{label}");
}

#[test]
fn workload_without_faults_reaches_the_expected_end() {
    let io = Arc::new(FaultIo::counting());
    let mut ts = TempSpool::with_io(io.clone());
    let mut acks = Acks::default();
    workload(&ts, &mut acks);
    assert!(
        io.steps() > 40,
        "the workload exercises many steps: {}",
        io.steps()
    );
    let h = host("h");
    let states: Vec<_> = ts
        .spool
        .list_blocking(&ListQuery {
            host: Some(h.clone()),
            buckets: Bucket::ALL.to_vec(),
            limit: 100,
        })
        .unwrap()
        .into_iter()
        .map(|r| (r.action_key, r.state))
        .collect();
    let want = [
        ("one", RunState::Succeeded),
        ("two", RunState::Replayed),
        ("three", RunState::Dlq),
        ("two", RunState::Canceled),
        ("four", RunState::Expired),
    ];
    for (a, s) in want {
        assert!(states.contains(&(a.to_string(), s)), "{a} {s}: {states:?}");
    }
    settle_and_check(&mut ts, &mut acks, "no fault");
}

#[test]
fn error_or_crash_at_every_step_loses_and_duplicates_nothing() {
    let counter = Arc::new(FaultIo::counting());
    {
        let ts = TempSpool::with_io(counter.clone());
        workload(&ts, &mut Acks::default());
    }
    let total = counter.steps();
    let mut checked = 0;
    for step in 0..total {
        for fault in [Fault::Error, Fault::Crash] {
            let io = Arc::new(FaultIo::counting());
            io.arm(step, fault);
            let mut ts = TempSpool::with_io(io.clone());
            let mut acks = Acks::default();
            workload(&ts, &mut acks);
            settle_and_check(
                &mut ts,
                &mut acks,
                &format!("{fault:?} at step {step}/{total}"),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * total);
}

#[test]
fn failed_directory_fsync_on_enqueue_leaves_no_run_behind() {
    // Steps of an enqueue into an existing host: create+fsync, rename, fsync dir.
    let io = Arc::new(FaultIo::counting());
    let ts = TempSpool::with_io(io.clone());
    let h = host("h");
    ts.spool.enqueue_blocking(run(&h, "warm-up")).unwrap();
    io.arm(2, Fault::Error);
    let err = ts.spool.enqueue_blocking(run(&h, "x")).unwrap_err();
    assert_eq!(err.code(), "io_error");
    assert!(!err.is_transient());
    assert_eq!(ts.files(&h, Dir::Queued).len(), 1, "only the warm-up run");
}
