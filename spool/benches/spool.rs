//! Spool benchmarks (`make bench`). Every figure is printed next to a
//! baseline measured in the same run, as a ratio, because this machine kind
//! is noisy:
//!
//! - durable enqueue, 1 and 32 writers, against a bare loop of create +
//!   write + fsync + rename + directory fsync of a record of the same size,
//!   and against SQLite (WAL, synchronous=FULL, one transaction per run);
//! - claim + start + complete per second;
//! - claim cost with 100, 10,000 and 100,000 queued runs;
//! - a snapshot (counts and the 30 oldest) over 100,000 runs.
//!
//! `BENCH_QUICK=1` shrinks the sizes (for a smoke run); `BENCH_DIR` picks
//! the directory (default: `target/bench-spool`, on the project's disk).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use remediate_spool::record::{Event, EventKind};
use remediate_spool::*;

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn new_run(h: &HostId) -> NewRun {
    let mut params = BTreeMap::new();
    params.insert("port".to_string(), serde_json::json!(8080));
    params.insert("protocol".to_string(), serde_json::json!("tcp"));
    NewRun {
        host_id: h.clone(),
        action_key: "quarantine-unexpected-listener".into(),
        params,
        requested_by: "bench".into(),
        idempotency_key: None,
        max_attempts: 3,
        expires_at: None,
        idempotent: false,
        approval_required: false,
        canary: Canary {
            percent: 25,
            bucket: 5,
            selected: true,
            checks: 1,
            passed: None,
        },
        rollback: Rollback {
            armed: true,
            attempted: false,
            succeeded: None,
        },
        auto_queued: false,
        auto_reason: None,
        auto_tier: None,
        risk: Some("high".into()),
        tier: Some("risky_manual".into()),
    }
}

/// The bytes of one enqueued record, to size the baselines alike.
fn record_bytes(h: &HostId) -> Vec<u8> {
    let rec = RunRecord::new(RunId::generate(), new_run(h), chrono::Utc::now(), None);
    codec::encode(&Event {
        seq: 0,
        at: rec.requested_at,
        kind: EventKind::Enqueued {
            record: Box::new(rec),
        },
    })
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The disk's ceiling for one record at a time.
fn bare_loop(dir: &Path, n: usize, bytes: &[u8]) -> f64 {
    let tmp = dir.join("tmp");
    let q = dir.join("queued");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&q).unwrap();
    let start = Instant::now();
    for i in 0..n {
        let t = tmp.join(format!("{i}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&t)
            .unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&t, q.join(format!("{i}"))).unwrap();
        File::open(&q).unwrap().sync_all().unwrap();
    }
    per_sec(n, start.elapsed())
}

fn spool_enqueue(dir: &Path, writers: usize, n: usize) -> (f64, Vec<Duration>) {
    let sp = LocalSpool::open(dir.join("spool")).unwrap();
    let h = HostId::parse("bench").unwrap();
    sp.ensure_host(&h).unwrap();
    let start = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|_| {
                let (sp, h) = (sp.clone(), h.clone());
                s.spawn(move || {
                    let mut l = Vec::new();
                    for _ in 0..n / writers {
                        let t = Instant::now();
                        sp.enqueue_blocking(new_run(&h)).unwrap();
                        l.push(t.elapsed());
                    }
                    l
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    (per_sec(lat.len(), start.elapsed()), lat)
}

/// SQLite with one connection per writer (writers wait in SQLite's busy
/// handler), or, with `shared`, one connection behind a mutex (writers queue
/// in-process, the best SQLite does without group commit).
fn sqlite_enqueue(dir: &Path, writers: usize, n: usize, bytes: &[u8], shared: bool) -> f64 {
    let path = dir.join("queue.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, host TEXT NOT NULL, state TEXT NOT NULL,
             due INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE INDEX runs_due ON runs (host, state, due);",
        )
        .unwrap();
    }
    let open = || {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c
    };
    let one = std::sync::Mutex::new(open());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            let (open, one) = (&open, &one);
            s.spawn(move || {
                let mut own = if shared { None } else { Some(open()) };
                for _ in 0..n / writers {
                    let mut guard = if shared { Some(one.lock().unwrap()) } else { None };
                    let c = match (&mut own, &mut guard) {
                        (Some(c), _) => c,
                        (None, Some(g)) => &mut **g,
                        (None, None) => unreachable!(),
                    };
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    tx.execute(
                        "INSERT INTO runs (id, host, state, due, body) VALUES (?1, 'bench', 'queued', ?2, ?3)",
                        rusqlite::params![RunId::generate().as_str(), chrono::Utc::now().timestamp_millis(), bytes],
                    )
                    .unwrap();
                    tx.commit().unwrap();
                }
            });
        }
    });
    per_sec(n / writers * writers, start.elapsed())
}

/// Fills a host's queued/ quickly (no fsync: this is setup, not measured).
fn fill_queued(root: &Path, h: &HostId, n: usize) {
    let sp = LocalSpool::open(root).unwrap();
    sp.ensure_host(h).unwrap();
    let q = sp.host_dir(h, Dir::Queued);
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    for i in 0..n {
        let at = base + chrono::Duration::milliseconds(i as i64);
        let rec = RunRecord::new(RunId::generate(), new_run(h), at, None);
        let line = codec::encode(&Event {
            seq: 0,
            at,
            kind: EventKind::Enqueued {
                record: Box::new(rec.clone()),
            },
        });
        std::fs::write(q.join(rec.run_id.as_str()), line).unwrap();
    }
}

/// Median cost of one claim (index lookup, lock, read, rename) with `n` queued.
fn claim_cost(base: &Path, n: usize, samples: usize) -> (Duration, Duration) {
    let root = fresh_dir(base, &format!("claim-{n}")).join("spool");
    let h = HostId::parse("bench").unwrap();
    fill_queued(&root, &h, n);
    let sp = LocalSpool::open(&root).unwrap();
    let t = Instant::now();
    sp.counts_blocking(None).unwrap();
    let index_build = t.elapsed();
    let mut d = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let c = sp.claim_next_blocking(&h, &|_| false).unwrap().unwrap();
        d.push(t.elapsed());
        std::hint::black_box(c);
    }
    d.sort();
    (d[d.len() / 2], index_build)
}

fn claim_complete(dir: &Path, n: usize) -> f64 {
    let sp = LocalSpool::open(dir.join("spool")).unwrap();
    let h = HostId::parse("bench").unwrap();
    for _ in 0..n {
        sp.enqueue_blocking(new_run(&h)).unwrap();
    }
    let start = Instant::now();
    let ok = AttemptResult {
        exit_status: Some(0),
        ..AttemptResult::default()
    };
    let mut done = 0;
    while let Some(c) = sp.claim_next_blocking(&h, &|_| false).unwrap() {
        sp.start_attempt_blocking(&c.run_id).unwrap();
        sp.complete_blocking(&c.run_id, ok.clone()).unwrap();
        done += 1;
    }
    per_sec(done, start.elapsed())
}

fn snapshot(base: &Path, n: usize) -> (Duration, Duration) {
    let root = fresh_dir(base, "snapshot").join("spool");
    let h = HostId::parse("bench").unwrap();
    fill_queued(&root, &h, n);
    let q = ListQuery {
        host: None,
        buckets: vec![Bucket::Queued],
        limit: 30,
    };
    let sp = LocalSpool::open(&root).unwrap();
    // Cold: a process that just started builds its index first.
    let t = Instant::now();
    let c = sp.counts_blocking(None).unwrap();
    let items = sp.list_blocking(&q).unwrap();
    let cold = t.elapsed();
    assert_eq!((c.queued, items.len()), (n, 30));
    let mut d = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let c = sp.counts_blocking(None).unwrap();
        let items = sp.list_blocking(&q).unwrap();
        d.push(t.elapsed());
        std::hint::black_box((c, items));
    }
    d.sort();
    (d[d.len() / 2], cold)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let q = quick();
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-spool")
        });
    std::fs::create_dir_all(&base).unwrap();
    let h = HostId::parse("bench").unwrap();
    let bytes = record_bytes(&h);
    let n = if q { 200 } else { 2000 };
    let n32 = if q { 320 } else { 6400 };
    println!(
        "# spool benchmarks\nmachine: {}\ndirectory: {}\nrecord size: {} bytes\n",
        machine(),
        base.display(),
        bytes.len()
    );

    let bare = bare_loop(&fresh_dir(&base, "bare"), n, &bytes);
    let (one, mut lat1) = spool_enqueue(&fresh_dir(&base, "enq1"), 1, n);
    let (many, mut lat32) = spool_enqueue(&fresh_dir(&base, "enq32"), 32, n32);
    let sql1 = sqlite_enqueue(&fresh_dir(&base, "sql1"), 1, n, &bytes, false);
    let sql32 = sqlite_enqueue(&fresh_dir(&base, "sql32"), 32, n32 / 4, &bytes, false);
    let sql32s = sqlite_enqueue(&fresh_dir(&base, "sql32s"), 32, n32, &bytes, true);
    println!("| durable enqueue | runs/s | ratio |");
    println!("|---|---|---|");
    println!(
        "| bare loop (create+write+fsync+rename+dir fsync), 1 thread | {bare:.0} | 1.00 (baseline) |"
    );
    println!(
        "| spool, 1 writer | {one:.0} | {:.2}x bare loop (target >= 0.8) |",
        one / bare
    );
    println!(
        "| spool, 32 writers | {many:.0} | {:.2}x spool 1 writer (target >= 2) |",
        many / one
    );
    println!(
        "| SQLite WAL synchronous=FULL, 1 writer | {sql1:.0} | {:.2}x bare loop |",
        sql1 / bare
    );
    println!(
        "| SQLite WAL synchronous=FULL, 32 writers, a connection each | {sql32:.0} | spool 32 writers = {:.2}x this |",
        many / sql32
    );
    println!(
        "| SQLite WAL synchronous=FULL, 32 writers, one shared connection | {sql32s:.0} | spool 32 writers = {:.2}x this (target >= 1 against the better SQLite) |",
        many / sql32s.max(sql32)
    );
    println!(
        "\nenqueue latency: 1 writer p50 {:?} p99 {:?}; 32 writers p50 {:?} p99 {:?}",
        pct(&mut lat1, 0.5),
        pct(&mut lat1, 0.99),
        pct(&mut lat32, 0.5),
        pct(&mut lat32, 0.99)
    );

    let cc = claim_complete(&fresh_dir(&base, "cc"), if q { 100 } else { 1000 });
    println!(
        "\n| claim + start attempt + complete | {cc:.0} runs/s | {:.2}x bare loop |",
        cc / bare
    );

    println!("\n| queued runs | median claim | index build at open | ratio to 100 |");
    println!("|---|---|---|---|");
    let sizes: &[usize] = if q {
        &[100, 1000, 5000]
    } else {
        &[100, 10_000, 100_000]
    };
    let mut first = None;
    for &size in sizes {
        let (c, build) = claim_cost(&base, size, 51);
        let r = first.get_or_insert(c);
        println!(
            "| {size} | {c:?} | {build:?} | {:.2}x (target at 100,000 <= 2) |",
            c.as_secs_f64() / r.as_secs_f64()
        );
    }
    let snap_n = *sizes.last().unwrap_or(&100);
    let (warm, cold) = snapshot(&base, snap_n);
    println!(
        "\nsnapshot (counts + 30 oldest) over {snap_n} runs: median {warm:?} (target < 200 ms); first one after open, index build included: {cold:?}"
    );
    let _ = std::fs::remove_dir_all(&base);
}
