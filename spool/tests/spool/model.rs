//! Model test: random sequences of operations and crashes, applied to the
//! spool and to a plain in-memory model, must agree on every run's state.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::util::*;
use remediate_spool::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        idempotent: bool,
        approval: bool,
        key: Option<u8>,
        max: u32,
    },
    /// Claim the next due run and end its attempt with `outcome`
    /// (0 success, 1 retry or dead-letter when exhausted, 2 dead-letter).
    Execute {
        outcome: u8,
        delay: i64,
    },
    /// Claim, maybe start, then the process dies.
    CrashDuring {
        started: bool,
    },
    Approve(usize),
    Reject(usize),
    Replay(usize),
    Expire(usize),
    Cancel(usize),
    Advance(i64),
    Recover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), prop::bool::weighted(0.3), prop::option::weighted(0.3, 0u8..3), 1u32..4)
            .prop_map(|(idempotent, approval, key, max)| Op::Enqueue { idempotent, approval, key, max }),
        3 => (0u8..3, 0i64..30).prop_map(|(outcome, delay)| Op::Execute { outcome, delay }),
        1 => any::<bool>().prop_map(|started| Op::CrashDuring { started }),
        1 => (0usize..16).prop_map(Op::Approve),
        1 => (0usize..16).prop_map(Op::Reject),
        1 => (0usize..16).prop_map(Op::Replay),
        1 => (0usize..16).prop_map(Op::Expire),
        1 => (0usize..16).prop_map(Op::Cancel),
        1 => (1i64..60).prop_map(Op::Advance),
        1 => Just(Op::Recover),
    ]
}

#[derive(Debug, Clone)]
struct M {
    state: RunState,
    attempts: u32,
    max: u32,
    idempotent: bool,
    approval: bool,
    due: i64,
}

struct Model {
    runs: BTreeMap<RunId, M>,
    order: Vec<RunId>,
    keys: BTreeMap<u8, RunId>,
    now: i64,
}

impl Model {
    fn pick(&self, i: usize) -> Option<RunId> {
        if self.order.is_empty() {
            None
        } else {
            Some(self.order[i % self.order.len()].clone())
        }
    }
    fn due_now(&self) -> Vec<&RunId> {
        self.runs
            .iter()
            .filter(|(_, m)| m.state == RunState::Queued && m.due <= self.now)
            .map(|(id, _)| id)
            .collect()
    }
    fn legal(&self, id: &RunId, mv: state::Move) -> Option<RunState> {
        state::next_state(self.runs[id].state, mv)
    }
}

fn check_agree(ts: &TempSpool, m: &Model) {
    for (id, mr) in &m.runs {
        let r = ts
            .spool
            .get_blocking(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(r.state, mr.state, "{id}");
        assert_eq!(r.attempts, mr.attempts, "{id}");
    }
    let h = host("h");
    let c = census(ts, &h);
    assert_eq!(c.len(), m.runs.len(), "spool has exactly the model's runs");
    assert!(c.values().all(|d| d.len() == 1 && d[0] != Dir::Corrupt));
    let counts = ts.spool.counts_blocking(None).unwrap();
    assert_eq!(
        counts.total(),
        m.runs.len(),
        "index counts agree: {counts:?}"
    );
}

fn apply(ts: &mut TempSpool, m: &mut Model, op: &Op) {
    let h = host("h");
    let none = |_: &str| false;
    match op {
        Op::Enqueue {
            idempotent,
            approval,
            key,
            max,
        } => {
            let mut r = run(&h, "a");
            r.idempotent = *idempotent;
            r.approval_required = *approval;
            r.max_attempts = *max;
            r.idempotency_key = key.map(|k| IdemKey::parse(&format!("key{k}")).unwrap());
            let e = ts.spool.enqueue_blocking(r).unwrap();
            if let Some(k) = key {
                if let Some(first) = m.keys.get(k) {
                    assert!(!e.created);
                    assert_eq!(&e.record.run_id, first);
                    return;
                }
                m.keys.insert(*k, e.record.run_id.clone());
            }
            assert!(e.created);
            m.order.push(e.record.run_id.clone());
            m.runs.insert(
                e.record.run_id,
                M {
                    state: if *approval {
                        RunState::Held
                    } else {
                        RunState::Queued
                    },
                    attempts: 0,
                    max: (*max).max(1),
                    idempotent: *idempotent,
                    approval: *approval,
                    due: m.now,
                },
            );
        }
        Op::Execute { outcome, delay } => {
            let due = m.due_now().len();
            let c = ts.spool.claim_next_blocking(&h, &none).unwrap();
            let Some(c) = c else {
                assert_eq!(due, 0, "claim found nothing but the model has due runs");
                return;
            };
            let mr = m.runs.get_mut(&c.run_id).expect("claimed run is modelled");
            assert!(
                mr.state == RunState::Queued && mr.due <= m.now,
                "claimed a run that was not due"
            );
            ts.spool.start_attempt_blocking(&c.run_id).unwrap();
            mr.attempts += 1;
            let id = c.run_id;
            match outcome {
                0 => {
                    ts.spool.complete_blocking(&id, ok_result()).unwrap();
                    mr.state = RunState::Succeeded;
                }
                1 if mr.attempts < mr.max => {
                    let at = ts.spool.now() + chrono::Duration::seconds(*delay);
                    ts.spool.retry_at_blocking(&id, at, fail_result()).unwrap();
                    mr.state = RunState::Queued;
                    mr.due = m.now + delay;
                }
                _ => {
                    ts.spool
                        .dead_letter_blocking(&id, "failed", Some(fail_result()))
                        .unwrap();
                    mr.state = RunState::Dlq;
                }
            }
        }
        Op::CrashDuring { started } => {
            if let Some(c) = ts.spool.claim_next_blocking(&h, &none).unwrap() {
                let mr = m.runs.get_mut(&c.run_id).unwrap();
                if *started {
                    ts.spool.start_attempt_blocking(&c.run_id).unwrap();
                    mr.attempts += 1;
                    if mr.idempotent && mr.attempts < mr.max {
                        mr.due = m.now;
                    } else {
                        mr.state = RunState::Dlq;
                    }
                }
            }
            ts.reopen();
            ts.spool.recover_blocking().unwrap();
        }
        Op::Approve(i) | Op::Reject(i) | Op::Expire(i) | Op::Cancel(i) | Op::Replay(i) => {
            let Some(id) = m.pick(*i) else { return };
            let mv = match op {
                Op::Approve(_) => state::Move::Approve,
                Op::Reject(_) => state::Move::Reject,
                Op::Expire(_) => state::Move::Expire,
                Op::Cancel(_) => state::Move::Cancel,
                _ => state::Move::Replay,
            };
            let want = m.legal(&id, mv);
            let got = match op {
                Op::Approve(_) => ts.spool.approve_blocking(&id, "op", None),
                Op::Reject(_) => ts.spool.reject_blocking(&id, "op", None),
                Op::Expire(_) => ts.spool.expire_blocking(&id),
                Op::Cancel(_) => ts.spool.cancel_blocking(&id, "t"),
                _ => ts.spool.replay_blocking(&id, "op"),
            };
            match (want, got) {
                (None, Err(e)) => assert_eq!(e.code(), "illegal_move", "{e}"),
                (None, Ok(r)) => panic!("illegal {mv:?} on {id} succeeded: {:?}", r.state),
                (Some(_), Err(e)) => panic!("legal {mv:?} on {id} failed: {e}"),
                (Some(next), Ok(r)) => {
                    let src = m.runs.get_mut(&id).unwrap();
                    src.state = next;
                    if mv == state::Move::Replay {
                        let (idempotent, max, approval) = (src.idempotent, src.max, src.approval);
                        m.order.push(r.run_id.clone());
                        m.runs.insert(
                            r.run_id,
                            M {
                                state: if approval {
                                    RunState::Held
                                } else {
                                    RunState::Queued
                                },
                                attempts: 0,
                                max,
                                idempotent,
                                approval,
                                due: m.now,
                            },
                        );
                    }
                }
            }
        }
        Op::Advance(s) => {
            ts.advance_secs(*s);
            m.now += s;
        }
        Op::Recover => {
            let rep = ts.spool.recover_blocking().unwrap();
            assert_eq!(
                rep,
                RecoveryReport::default(),
                "a healthy spool needs no repair"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn spool_agrees_with_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut ts = TempSpool::new();
        let mut m = Model { runs: BTreeMap::new(), order: Vec::new(), keys: BTreeMap::new(), now: 0 };
        for op in &ops {
            apply(&mut ts, &mut m, op);
            check_agree(&ts, &m);
        }
    }
}
