//! Several real processes claim from one spool at once: every run must be
//! claimed exactly once.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use crate::util::*;
use remediate_spool::*;

const DIR_VAR: &str = "SPOOL_RACE_DIR";
const OUT_VAR: &str = "SPOOL_RACE_OUT";

/// Entry point of a claiming process (the test binary runs itself with
/// `--ignored --exact race::claim_worker`). Not a test on its own.
#[test]
#[ignore = "entry point of the processes spawned by claim_race_between_processes"]
fn claim_worker() {
    let (Ok(dir), Ok(out)) = (std::env::var(DIR_VAR), std::env::var(OUT_VAR)) else {
        panic!("run by claim_race_between_processes only");
    };
    let dir = std::path::PathBuf::from(dir);
    let sp = LocalSpool::open(dir.join("spool")).unwrap();
    let h = host("h");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .unwrap();
    // Ready to claim: the parent says go only when every worker is, so a
    // slow start (a loaded machine) cannot leave one worker all the runs.
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), b"").unwrap();
    while !dir.join("go").exists() {
        std::thread::yield_now();
    }
    while let Some(c) = sp.claim_next_blocking(&h, &|_| false).unwrap() {
        writeln!(log, "{}", c.run_id).unwrap();
        sp.start_attempt_blocking(&c.run_id).unwrap();
        sp.complete_blocking(&c.run_id, ok_result()).unwrap();
    }
}

#[test]
fn claim_race_between_processes() {
    const RUNS: usize = 400;
    const WORKERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let sp = LocalSpool::open(dir.path().join("spool")).unwrap();
    let h = host("h");
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(
            sp.enqueue_blocking(run(&h, "a"))
                .unwrap()
                .record
                .run_id
                .to_string(),
        );
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORKERS)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "race::claim_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DIR_VAR, dir.path())
                .env(OUT_VAR, dir.path().join(format!("claims-{i}")))
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let ready = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("ready-"))
            .count();
        if ready == WORKERS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {ready} of {WORKERS} workers started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::write(dir.path().join("go"), b"").unwrap();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_worker = Vec::new();
    for i in 0..WORKERS {
        let text =
            std::fs::read_to_string(dir.path().join(format!("claims-{i}"))).unwrap_or_default();
        per_worker.push(text.lines().count());
        for l in text.lines() {
            *claims.entry(l.to_string()).or_default() += 1;
        }
    }
    let dups: Vec<_> = claims.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "claimed twice: {dups:?}");
    assert_eq!(
        claims.len(),
        RUNS,
        "every run claimed (per worker: {per_worker:?})"
    );
    for id in &ids {
        assert!(claims.contains_key(id));
    }
    let ts_files = sp.files_in(&h, Dir::Done);
    assert_eq!(ts_files.len(), RUNS);
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() > 1,
        "the race had more than one claimer: {per_worker:?}"
    );
}
