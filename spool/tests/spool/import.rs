//! `LocalSpool::import_blocking`: a run created elsewhere (S3 in AWS mode)
//! enters the spool durably and only once, whatever happened before.

use std::sync::Arc;

use crate::util::*;
use remediate_spool::io::{Fault, FaultIo};
use remediate_spool::*;

/// A record as another store would hand it over: made by a different spool
/// (so it shares nothing with the one under test), optionally after one
/// failed attempt.
fn foreign_record(h: &HostId, action: &str, failed_once: bool) -> RunRecord {
    let other = TempSpool::new();
    let mut new = run(h, action);
    new.idempotent = true;
    let id = other.spool.enqueue_blocking(new).unwrap().record.run_id;
    if failed_once {
        other.spool.claim_next_blocking(h, &|_| false).unwrap();
        other.spool.start_attempt_blocking(&id).unwrap();
        other
            .spool
            .retry_at_blocking(&id, other.spool.now(), fail_result())
            .unwrap();
    }
    other.spool.get_blocking(&id).unwrap().unwrap()
}

#[test]
fn imported_run_is_queued_and_runs_like_a_local_one() {
    let ts = TempSpool::new();
    let h = host("h");
    let rec = foreign_record(&h, "a", true);
    assert_eq!(rec.attempts, 1);
    let out = ts.spool.import_blocking(&h, rec.clone()).unwrap();
    assert_eq!(out, ImportOutcome::Imported(Dir::Queued));
    assert_eq!(ts.files(&h, Dir::Queued), vec![rec.run_id.to_string()]);
    assert_eq!(ts.spool.get_blocking(&rec.run_id).unwrap().unwrap(), rec);
    // The attempt history carries on where the other store left it.
    let c = ts
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, rec.run_id);
    let started = ts.spool.start_attempt_blocking(&rec.run_id).unwrap();
    assert_eq!(started.attempts, 2);
    let done = ts
        .spool
        .complete_blocking(&rec.run_id, ok_result())
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.history.len(), 2);
}

#[test]
fn duplicate_import_is_refused_in_every_state() {
    let mut ts = TempSpool::new();
    let h = host("h");
    let rec = foreign_record(&h, "a", false);
    let id = rec.run_id.clone();
    assert_eq!(
        ts.spool.import_blocking(&h, rec.clone()).unwrap(),
        ImportOutcome::Imported(Dir::Queued)
    );
    assert_eq!(
        ts.spool.import_blocking(&h, rec.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Queued)
    );
    // Running (claimed, attempt started): still present, never a second copy.
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    assert_eq!(
        ts.spool.import_blocking(&h, rec.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Running)
    );
    // Done.
    ts.spool.complete_blocking(&id, ok_result()).unwrap();
    assert_eq!(
        ts.spool.import_blocking(&h, rec.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Done)
    );
    assert_eq!(
        ts.spool.get_blocking(&id).unwrap().unwrap().state,
        RunState::Succeeded,
        "a repeated import never resets a finished run"
    );
    // Dead-lettered.
    let rec2 = foreign_record(&h, "b", false);
    ts.spool.import_blocking(&h, rec2.clone()).unwrap();
    ts.spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool
        .dead_letter_blocking(&rec2.run_id, "policy", None)
        .unwrap();
    assert_eq!(
        ts.spool.import_blocking(&h, rec2.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Dlq)
    );
    // Corrupt: a damaged copy stays set aside and is not replaced.
    let rec3 = foreign_record(&h, "c", false);
    ts.spool.import_blocking(&h, rec3.clone()).unwrap();
    let path = ts
        .spool
        .host_dir(&h, Dir::Queued)
        .join(rec3.run_id.as_str());
    std::fs::write(&path, b"R1 garbage\n").unwrap();
    ts.reopen();
    ts.spool.recover_blocking().unwrap();
    assert_eq!(ts.files(&h, Dir::Corrupt).len(), 1);
    assert_eq!(
        ts.spool.import_blocking(&h, rec3.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Corrupt)
    );
    // A second quarantined copy is named <id>.1 and still counts.
    std::fs::rename(
        ts.spool
            .host_dir(&h, Dir::Corrupt)
            .join(rec3.run_id.as_str()),
        ts.spool
            .host_dir(&h, Dir::Corrupt)
            .join(format!("{}.1", rec3.run_id)),
    )
    .unwrap();
    assert_eq!(
        ts.spool.import_blocking(&h, rec3.clone()).unwrap(),
        ImportOutcome::AlreadyPresent(Dir::Corrupt)
    );
    let census = census(&ts, &h);
    for (id, dirs) in &census {
        assert_eq!(dirs.len(), 1, "{id} is in {dirs:?}");
    }
    assert!(ts.files(&h, Dir::Queued).is_empty());
}

#[test]
fn import_of_another_hosts_run_is_refused_and_writes_nothing() {
    let ts = TempSpool::new();
    let mine = host("mine");
    let rec = foreign_record(&host("other"), "a", false);
    let err = ts.spool.import_blocking(&mine, rec).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("belongs to host other"), "{err}");
    assert!(
        ts.spool.hosts().unwrap().is_empty(),
        "no host directory made"
    );
}

#[test]
fn inconsistent_records_are_refused() {
    let ts = TempSpool::new();
    let h = host("h");
    let good = foreign_record(&h, "a", true);
    let mut cases = Vec::new();
    let mut r = good.clone();
    r.history.clear();
    cases.push(("history shorter than attempts", r));
    let mut r = good.clone();
    r.attempts = r.max_attempts + 1;
    cases.push(("too many attempts", r));
    let mut r = good.clone();
    r.history[0].finished_at = None;
    cases.push(("open attempt but queued", r));
    let mut r = good.clone();
    r.max_attempts = 0;
    cases.push(("no attempts allowed", r));
    for (label, r) in cases {
        let err = ts.spool.import_blocking(&h, r).unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{label}");
    }
    assert!(ts.files(&h, Dir::Queued).is_empty());
    assert_eq!(
        ts.spool.import_blocking(&h, good).unwrap(),
        ImportOutcome::Imported(Dir::Queued)
    );
}

/// An error or a crash at every durability step of an import (into a fresh
/// spool, so the host directories are created too): the failed import says
/// Err, and after a restart and recovery a repeated import leaves exactly one
/// copy, queued, identical to the original, that runs once.
#[test]
fn error_or_crash_at_every_import_step_then_reimport_gives_one_run() {
    let h = host("h");
    let rec = foreign_record(&h, "a", false);
    let counter = Arc::new(FaultIo::counting());
    {
        let ts = TempSpool::with_io(counter.clone());
        ts.spool.import_blocking(&h, rec.clone()).unwrap();
    }
    let total = counter.steps();
    assert!(total >= 5, "host dirs + create + rename + fsync: {total}");
    for step in 0..total {
        for fault in [Fault::Error, Fault::Crash] {
            let label = format!("{fault:?} at step {step}/{total}");
            let io = Arc::new(FaultIo::counting());
            io.arm(step, fault);
            let mut ts = TempSpool::with_io(io.clone());
            let first = ts.spool.import_blocking(&h, rec.clone());
            assert!(first.is_err(), "{label}: the fault is reported");
            ts.reopen();
            ts.spool
                .recover_blocking()
                .unwrap_or_else(|e| panic!("{label}: recovery failed: {e}"));
            let again = ts
                .spool
                .import_blocking(&h, rec.clone())
                .unwrap_or_else(|e| panic!("{label}: re-import failed: {e}"));
            assert!(
                matches!(
                    again,
                    ImportOutcome::Imported(Dir::Queued)
                        | ImportOutcome::AlreadyPresent(Dir::Queued)
                ),
                "{label}: {again:?}"
            );
            let census = census(&ts, &h);
            assert_eq!(census.len(), 1, "{label}: {census:?}");
            assert_eq!(
                census.get(rec.run_id.as_str()),
                Some(&vec![Dir::Queued]),
                "{label}"
            );
            assert_eq!(
                ts.spool.get_blocking(&rec.run_id).unwrap().unwrap(),
                rec,
                "{label}"
            );
            let c = ts.spool.claim_next_blocking(&h, &|_| false).unwrap();
            assert!(c.is_some(), "{label}: claimable");
            ts.spool.start_attempt_blocking(&rec.run_id).unwrap();
            ts.spool
                .complete_blocking(&rec.run_id, ok_result())
                .unwrap();
            assert!(
                ts.spool
                    .claim_next_blocking(&h, &|_| false)
                    .unwrap()
                    .is_none(),
                "{label}: nothing left to run"
            );
        }
    }
}

/// The same, for the import into a host that already exists: the steps are
/// only create, rename, fsync. A failed directory fsync takes the run back
/// out, so the failed import leaves nothing claimable.
#[test]
fn failed_directory_fsync_on_import_leaves_no_run_behind() {
    let io = Arc::new(FaultIo::counting());
    let ts = TempSpool::with_io(io.clone());
    let h = host("h");
    ts.spool
        .import_blocking(&h, foreign_record(&h, "warm-up", false))
        .unwrap();
    let rec = foreign_record(&h, "x", false);
    io.arm(2, Fault::Error);
    let err = ts.spool.import_blocking(&h, rec.clone()).unwrap_err();
    assert_eq!(err.code(), "io_error");
    assert_eq!(ts.files(&h, Dir::Queued).len(), 1, "only the warm-up run");
    assert_eq!(
        ts.spool.import_blocking(&h, rec).unwrap(),
        ImportOutcome::Imported(Dir::Queued)
    );
}
