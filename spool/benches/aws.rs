//! S3 + SQS store benchmark (`make bench-aws`): the same operations through
//! the `Store` trait against the local spool and against the S3/SQS store on
//! a moto server started by this process, in one run, printed as ratios:
//!
//! - enqueue, 1 writer and 8 concurrent writers;
//! - claim + start + complete, one consumer.
//!
//! moto is a stand-in (one Python process, every request on loopback), so
//! this is a regression guard for the store's request count per operation,
//! not a claim about AWS. `BENCH_QUICK=1` shrinks the sizes; `BENCH_DIR`
//! picks the local spool's directory (default `target/bench-aws`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/store/moto.rs"]
#[allow(dead_code)]
mod moto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remediate_spool::*;

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn new_run(h: &HostId) -> NewRun {
    let mut params = BTreeMap::new();
    params.insert("port".to_string(), serde_json::json!(8080));
    params.insert("protocol".to_string(), serde_json::json!("tcp"));
    NewRun {
        params,
        risk: Some("high".into()),
        ..NewRun::new(h.clone(), "quarantine-unexpected-listener", "bench")
    }
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Enqueues `n` runs with `writers` concurrent tasks; runs/s.
async fn enqueue(s: Arc<dyn Store>, h: &HostId, writers: usize, n: usize) -> f64 {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (s, h) = (s.clone(), h.clone());
        set.spawn(async move {
            for _ in 0..n / writers {
                s.enqueue(new_run(&h)).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    per_sec(n / writers * writers, start.elapsed())
}

/// Enqueues `n` runs, then claims, starts and completes them all; runs/s of
/// the second part.
async fn claim_complete(s: Arc<dyn Store>, h: &HostId, n: usize) -> f64 {
    for _ in 0..n {
        s.enqueue(new_run(h)).await.unwrap();
    }
    let ok = AttemptResult {
        exit_status: Some(0),
        ..AttemptResult::default()
    };
    let start = Instant::now();
    let mut done = 0;
    while let Some(c) = s.claim_next(h, vec![]).await.unwrap() {
        s.start_attempt(&c.run_id).await.unwrap();
        s.complete(&c.run_id, ok.clone()).await.unwrap();
        done += 1;
    }
    assert_eq!(done, n, "every run was claimed once");
    per_sec(done, start.elapsed())
}

fn local(base: &Path, name: &str) -> Arc<dyn Store> {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    Arc::new(LocalSpool::open(d).unwrap())
}

async fn s3() -> Arc<dyn Store> {
    Arc::new(
        moto::fresh_store()
            .await
            .expect("moto_server is needed: run `make moto-venv`"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let q = quick();
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-aws"));
    std::fs::create_dir_all(&base).unwrap();
    let h = HostId::parse("bench").unwrap();
    let (n1, n8, nc) = if q { (40, 80, 20) } else { (300, 800, 150) };
    println!("# S3/SQS store vs local spool (moto 5.2.5 on loopback)\n");
    println!("a regression guard for requests per operation, not a figure for AWS\n");
    println!("| operation | local spool runs/s | S3/SQS on moto runs/s | local ÷ S3/SQS |");
    println!("|---|---|---|---|");
    let rows = [
        ("enqueue, 1 writer", 1usize, n1),
        ("enqueue, 8 writers", 8, n8),
    ];
    for (name, writers, n) in rows {
        let l = enqueue(local(&base, &format!("enq{writers}")), &h, writers, n).await;
        let s = enqueue(s3().await, &h, writers, n).await;
        println!("| {name} ({n} runs) | {l:.0} | {s:.0} | {:.0} |", l / s);
    }
    let l = claim_complete(local(&base, "claim"), &h, nc).await;
    let s = claim_complete(s3().await, &h, nc).await;
    println!(
        "| claim + start + complete ({nc} runs) | {l:.0} | {s:.0} | {:.0} |",
        l / s
    );
}
