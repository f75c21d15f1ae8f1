//! Crash soak: the real `remediate-executor run` binary, SIGKILLed at a
//! random moment 50-500 ms into each life and restarted, until every run is
//! terminal. Then every run must have ended exactly once in `done/` or
//! `dlq/`, none may be lost, and no command may have run twice where it must
//! not.
//!
//! Executions are counted by their side effect: each action's first command
//! is `/usr/bin/mktemp <effects>/<run_id>.<attempt>.XXXXXX`, which creates a
//! new file every time it runs, so two executions leave two files.
//!
//! Size: `SOAK_RUNS` (default 300, for CI; `make soak` runs 2,000).
//! `SOAK_SEED` replays a previous run's kill schedule and mix.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use remediate_spool::codec;
use remediate_spool::record::{EventKind, Next};
use remediate_spool::{Dir, HostId, LocalSpool, NewRun, RunId, RunRecord, RunState};
use remediate_tests::{clean_command, workspace_bin};

const HOST: &str = "soak-host";

/// One kind of run of the soak catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    action: &'static str,
    /// Must match the catalog's `idempotent`.
    idempotent: bool,
    max_attempts: u32,
    /// Share of the runs, out of 100.
    weight: u32,
}

/// Mirrors the demo catalog's succeed / fail then succeed / always fail /
/// slow actions, each with the counting side effect first. The actions that
/// must never run twice are marked `idempotent = false`.
const KINDS: &[Kind] = &[
    Kind {
        action: "soak-succeed",
        idempotent: false,
        max_attempts: 3,
        weight: 45,
    },
    Kind {
        action: "soak-flaky",
        idempotent: true,
        max_attempts: 4,
        weight: 20,
    },
    Kind {
        action: "soak-always-fails",
        idempotent: true,
        max_attempts: 2,
        weight: 25,
    },
    Kind {
        action: "soak-slow",
        idempotent: false,
        max_attempts: 3,
        weight: 10,
    },
];

fn catalog_toml(effects: &Path) -> String {
    let mark = format!("{}/{{run_id}}.{{attempt}}.XXXXXX", effects.display());
    format!(
        r#"# Written by the soak test. The first command of each action counts
# its executions: mktemp creates a new file every time it runs.

[[action]]
id = "soak-succeed"
title = "Succeed (not idempotent)"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = false
commands = [["/usr/bin/mktemp", "{mark}"]]

[[action]]
id = "soak-flaky"
title = "Fail on attempt 1, then succeed"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = true
commands = [["/usr/bin/mktemp", "{mark}"], ["/usr/bin/test", "{{attempt}}", "-ge", "2"]]

[[action]]
id = "soak-always-fails"
title = "Fail on every attempt"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = true
commands = [["/usr/bin/mktemp", "{mark}"], ["/usr/bin/false"]]

[[action]]
id = "soak-slow"
title = "Sleep a little (not idempotent)"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = false
commands = [["/usr/bin/mktemp", "{mark}"], ["/usr/bin/sleep", "0.2"]]
"#
    )
}

/// splitmix64: a reproducible schedule from one printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
    )
}

struct Soak {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spool_dir: PathBuf,
    effects: PathBuf,
    catalog: PathBuf,
    log: PathBuf,
    host: HostId,
    bin: PathBuf,
}

impl Soak {
    fn new() -> Soak {
        let bin = workspace_bin("remediate-executor").unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let effects = root.join("effects");
        fs::create_dir(&effects).expect("effects dir");
        let catalog = root.join("soak-catalog.toml");
        fs::write(&catalog, catalog_toml(&effects)).expect("write the catalog");
        Soak {
            spool_dir: root.join("spool"),
            log: root.join("executor.log"),
            host: HostId::parse(HOST).expect("host id"),
            effects,
            catalog,
            root,
            bin,
            _dir: dir,
        }
    }

    fn spawn(&self) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the executor log");
        clean_command(&self.bin)
            .args(["run", "--host-id", HOST, "--spool"])
            .arg(&self.spool_dir)
            .current_dir(&self.root)
            .env("VPS_REMEDIATE_CATALOG", &self.catalog)
            // mktemp has no entry in the built-in allowlist; rules 1-3 of the
            // guard (absolute path in a system dir, no interpreter, no shell
            // metacharacters) still apply to every command.
            .env("VPS_REMEDIATE_ENFORCE_ALLOWLIST", "false")
            .env("VPS_REMEDIATE_EXECUTOR_CONCURRENCY", "4")
            .env("VPS_REMEDIATE_RETRY_BACKOFF_SECONDS", "1")
            .env("VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS", "2")
            .env("OPS_WORKER_DRAIN_LIMIT", "50")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start remediate-executor")
    }

    /// Runs not yet in done/ or dlq/ (read while no daemon is alive).
    fn pending(&self) -> usize {
        [Dir::Queued, Dir::Held, Dir::Running]
            .iter()
            .map(|d| self.names(*d).len())
            .sum()
    }

    fn names(&self, dir: Dir) -> Vec<String> {
        let p = self.spool_dir.join("runs").join(HOST).join(dir.name());
        match fs::read_dir(&p) {
            Ok(rd) => rd
                .map(|e| {
                    e.expect("read dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", p.display()),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// The terminal events of one record's log: exactly one is expected.
fn terminal_events(kinds: &[EventKind]) -> usize {
    kinds
        .iter()
        .filter(|k| match k {
            EventKind::AttemptFinished { next, .. } => !matches!(next, Next::RetryAt { .. }),
            EventKind::DeadLettered { .. }
            | EventKind::Expired
            | EventKind::Canceled { .. }
            | EventKind::Rejected { .. } => true,
            _ => false,
        })
        .count()
}

#[test]
fn sigkilled_executor_loses_no_run_and_never_repeats_a_command() {
    let runs = env_u64("SOAK_RUNS").unwrap_or(300);
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // A hang guard, not a timing assertion: the soak must finish at all.
    let deadline = Duration::from_secs(env_u64("SOAK_MAX_SECONDS").unwrap_or(1800));
    eprintln!("soak: {runs} runs, SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let soak = Soak::new();

    // Enqueue everything up front, through the spool's durable enqueue.
    let spool = LocalSpool::open(&soak.spool_dir).expect("open the spool");
    let mut kind_of: HashMap<RunId, Kind> = HashMap::new();
    let total_weight: u32 = KINDS.iter().map(|k| k.weight).sum();
    for _ in 0..runs {
        let mut pick = rng.below(u64::from(total_weight)) as u32;
        let kind = *KINDS
            .iter()
            .find(|k| {
                if pick < k.weight {
                    true
                } else {
                    pick -= k.weight;
                    false
                }
            })
            .expect("weights cover the range");
        let new = NewRun {
            host_id: soak.host.clone(),
            action_key: kind.action.into(),
            params: BTreeMap::new(),
            requested_by: "soak".into(),
            idempotency_key: None,
            max_attempts: kind.max_attempts,
            expires_at: None,
            idempotent: kind.idempotent,
            approval_required: false,
            canary: Default::default(),
            rollback: Default::default(),
            auto_queued: false,
            auto_reason: None,
            auto_tier: None,
            risk: None,
            tier: None,
        };
        let id = spool.enqueue_blocking(new).expect("enqueue").record.run_id;
        kind_of.insert(id, kind);
    }
    drop(spool);

    // Kill and restart until nothing is left to do.
    let started = Instant::now();
    let mut lives = 0u32;
    let mut last_pending = usize::MAX;
    loop {
        let pending = soak.pending();
        if pending == 0 {
            break;
        }
        if pending != last_pending {
            eprintln!(
                "soak: life {lives}: {pending} runs pending after {:.1?}",
                started.elapsed()
            );
            last_pending = pending;
        }
        assert!(
            started.elapsed() < deadline,
            "soak did not finish: {pending} runs still pending after {lives} lives \
             (SOAK_SEED={seed}); last executor log lines:\n{}",
            soak.log_tail()
        );
        let mut child = soak.spawn();
        std::thread::sleep(Duration::from_millis(50 + rng.below(451)));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the executor exited by itself ({status}); log:\n{}",
                soak.log_tail()
            );
        }
        child.kill().expect("SIGKILL the executor");
        child.wait().expect("reap the executor");
        lives += 1;
    }
    eprintln!(
        "soak: all {runs} runs terminal after {lives} SIGKILLed lives in {:.1?}",
        started.elapsed()
    );

    check(&soak, &kind_of, lives, seed);
}

fn check(soak: &Soak, kind_of: &HashMap<RunId, Kind>, lives: u32, seed: u64) {
    let ctx = format!("(SOAK_SEED={seed})");
    // 1. Every run ends in exactly one of done/ or dlq/; nothing else is left.
    for d in [Dir::Queued, Dir::Held, Dir::Running, Dir::Corrupt] {
        let left = soak.names(d);
        assert!(left.is_empty(), "{}/ holds {left:?} {ctx}", d.name());
    }
    let mut dir_of: HashMap<String, Dir> = HashMap::new();
    for d in [Dir::Done, Dir::Dlq] {
        for name in soak.names(d) {
            if let Some(other) = dir_of.insert(name.clone(), d) {
                panic!(
                    "{name} is in both {}/ and {}/ {ctx}",
                    other.name(),
                    d.name()
                );
            }
        }
    }
    assert_eq!(
        dir_of.len(),
        kind_of.len(),
        "terminal records vs enqueued runs {ctx}"
    );

    // 2. Executions, from the side-effect files: `<run_id>.<attempt>.XXXXXX`.
    let mut executions: HashMap<(String, u32), usize> = HashMap::new();
    for e in fs::read_dir(&soak.effects).expect("read effects") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '.');
        let (Some(run), Some(attempt)) = (parts.next(), parts.next()) else {
            panic!("unexpected effect file {name}");
        };
        let attempt: u32 = attempt
            .parse()
            .unwrap_or_else(|_| panic!("effect file {name}: bad attempt"));
        *executions.entry((run.to_string(), attempt)).or_default() += 1;
    }

    let mut by_end: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_executions = 0usize;
    let mut interrupted_attempts = 0usize;
    for (id, kind) in kind_of {
        let dir = *dir_of
            .get(id.as_str())
            .unwrap_or_else(|| panic!("run {id} ({}) is lost {ctx}", kind.action));
        let path = soak
            .spool_dir
            .join("runs")
            .join(HOST)
            .join(dir.name())
            .join(id.as_str());
        let bytes = fs::read(&path).expect("read record");
        let decoded =
            codec::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e} {ctx}", path.display()));
        let rec: &RunRecord = &decoded.record;
        let kinds: Vec<EventKind> = decoded.events.iter().map(|e| e.kind.clone()).collect();

        // 3. Exactly once: one terminal event, the state matches the directory.
        assert_eq!(
            terminal_events(&kinds),
            1,
            "run {id}: terminal events in {kinds:?} {ctx}"
        );
        assert!(rec.state.is_terminal(), "run {id}: state {}", rec.state);
        assert_eq!(
            Dir::for_state(rec.state),
            dir,
            "run {id}: state vs directory"
        );
        assert!(
            rec.open_attempt().is_none(),
            "run {id}: an attempt never finished {ctx}"
        );
        assert!(rec.attempts <= kind.max_attempts, "run {id}: over budget");

        // 4. No attempt ran twice; nothing ran without a recorded attempt
        //    (spool rule 5); a non-idempotent run ran at most once.
        let mine: Vec<(u32, usize)> = executions
            .iter()
            .filter(|((r, _), _)| r == id.as_str())
            .map(|((_, a), n)| (*a, *n))
            .collect();
        for (attempt, n) in &mine {
            assert_eq!(
                *n, 1,
                "run {id}: attempt {attempt} executed {n} times {ctx}"
            );
            assert!(
                (1..=rec.attempts).contains(attempt),
                "run {id}: executed as attempt {attempt} but only {} attempts were recorded {ctx}",
                rec.attempts
            );
        }
        interrupted_attempts += rec.history.iter().filter(|a| a.result.interrupted).count();
        let ran: usize = mine.iter().map(|(_, n)| n).sum();
        total_executions += ran;
        if !kind.idempotent {
            assert!(
                ran <= 1,
                "run {id} ({}, not idempotent) executed {ran} times {ctx}",
                kind.action
            );
        }

        // 5. The end fits the action.
        let end = match rec.state {
            RunState::Succeeded => "succeeded".to_string(),
            RunState::Dlq => format!("dlq {}", rec.dlq_reason.clone().unwrap_or_default()),
            other => other.to_string(),
        };
        let allowed: &[&str] = match kind.action {
            "soak-succeed" | "soak-slow" => &["succeeded", "dlq interrupted"],
            "soak-flaky" => &["succeeded", "dlq max_attempts_exceeded"],
            _ => &["dlq max_attempts_exceeded"],
        };
        assert!(
            allowed.contains(&end.as_str()),
            "run {id} ({}) ended {end:?}; allowed {allowed:?} {ctx}",
            kind.action
        );
        if rec.state == RunState::Succeeded {
            let last = rec.attempts;
            assert!(
                mine.iter().any(|(a, _)| *a == last),
                "run {id} succeeded on attempt {last} without its command's effect {ctx}"
            );
            if kind.action == "soak-flaky" {
                assert!(last >= 2, "run {id}: flaky succeeded on attempt 1");
            }
        }
        *by_end
            .entry(format!("{} -> {end}", kind.action))
            .or_default() += 1;
    }
    for (end, n) in &by_end {
        eprintln!("soak: {n:>6}  {end}");
    }
    eprintln!(
        "soak: {total_executions} command executions counted by side effect; \
         {interrupted_attempts} attempts interrupted by SIGKILL"
    );
    // The schedule must actually have interrupted work, or the soak proved
    // nothing about crashes.
    assert!(lives > 1, "the executor was never killed and restarted");
}
