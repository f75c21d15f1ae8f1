//! Executor benchmarks against the real `remediate-executor run` binary
//! (release build), each figure beside a baseline measured in the same run:
//!
//! - pickup latency: from the rename(2) that publishes a run in `queued/`
//!   to its command, `/usr/bin/true`. The record's own timestamps (wall
//!   clock, ns) bound the command's start: the attempt-started event is
//!   stamped just before it is made durable and the command spawned (a
//!   lower bound), the attempt-finished event just after the command
//!   exited (an upper bound, the figure held against the target). File
//!   mtimes are too coarse for this (the kernel stamps them from a clock
//!   that ticks every few ms), and the guard keeps `date +%s%N` out of a
//!   catalog. Baseline: one fdatasync'd append (what spool rule 5 costs
//!   before any command) plus spawning and waiting for the same command,
//!   measured the same way.
//! - throughput of runs of `/usr/bin/true`, against a bare loop that
//!   spawns and waits for `/usr/bin/true`, and against the same loop plus
//!   the durable writes every run needs;
//! - resident memory (VmRSS) of the idle daemon, and with 100,000 queued
//!   runs (written straight into `queued/`, due tomorrow so none runs).
//!
//! `cargo bench -p remediate-executor --bench executor`; `BENCH_QUICK=1`
//! shrinks every size for a smoke run.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use remediate_spool::codec;
use remediate_spool::record::{Event, EventKind};
use remediate_spool::{Dir, HostId, LocalSpool, NewRun, RunId, RunRecord};

const BIN: &str = env!("CARGO_BIN_EXE_remediate-executor");
const HOST: &str = "bench";
/// Distinct actions for the concurrent throughput run (one active run per
/// host+action).
const PARALLEL_ACTIONS: usize = 4;

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn catalog(dir: &Path) -> PathBuf {
    let mut t = String::new();
    for i in 0..PARALLEL_ACTIONS {
        t.push_str(&format!(
            "\n[[action]]\nid = \"bench-true-{i}\"\ntitle = \"true\"\nrisk = \"low\"\n\
             tier = \"safe_auto\"\ntimeout_secs = 30\nidempotent = true\n\
             commands = [[\"/usr/bin/true\"]]\n"
        ));
    }
    let p = dir.join("bench-catalog.toml");
    fs::write(&p, t).expect("write catalog");
    p
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    catalog: PathBuf,
    host: HostId,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let catalog = catalog(&root);
        let host = HostId::parse(HOST).expect("host");
        let sp = LocalSpool::open(root.join("spool")).expect("spool");
        sp.ensure_host(&host).expect("host dirs");
        Env {
            _dir: dir,
            root,
            catalog,
            host,
        }
    }

    fn dir(&self, d: Dir) -> PathBuf {
        self.root.join("spool/runs").join(HOST).join(d.name())
    }

    /// Starts the daemon and waits for its "executor started" line.
    fn start(&self, concurrency: usize) -> Daemon {
        let mut c = Command::new(BIN);
        for (k, _) in std::env::vars_os() {
            let n = k.to_string_lossy();
            if n.starts_with("VPS_REMEDIATE_") || n.starts_with("OPS_WORKER_") {
                c.env_remove(&k);
            }
        }
        let mut child = c
            .args(["run", "--host-id", HOST, "--spool"])
            .arg(self.root.join("spool"))
            .current_dir(&self.root)
            .env("VPS_REMEDIATE_CATALOG", &self.catalog)
            .env(
                "VPS_REMEDIATE_EXECUTOR_CONCURRENCY",
                concurrency.to_string(),
            )
            .env("OPS_WORKER_DRAIN_LIMIT", "50")
            .env("RUST_LOG", "warn,remediate_executor::daemon=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the executor");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let d = Daemon { child, log: rx };
        d.wait_for("executor started", Duration::from_secs(600));
        d
    }

    fn record(&self, new: &NewRun, due_in: Option<chrono::Duration>) -> (RunId, Vec<u8>) {
        let now = chrono::Utc::now();
        let mut rec = RunRecord::new(RunId::generate(), new.clone(), now, None);
        rec.next_attempt_at = due_in.map(|d| now + d);
        let line = codec::encode(&Event {
            seq: 0,
            at: now,
            kind: EventKind::Enqueued {
                record: Box::new(rec.clone()),
            },
        });
        (rec.run_id, line)
    }

    fn new_run(&self, action: &str) -> NewRun {
        NewRun {
            host_id: self.host.clone(),
            action_key: action.into(),
            params: Default::default(),
            requested_by: "bench".into(),
            idempotency_key: None,
            max_attempts: 1,
            expires_at: None,
            idempotent: true,
            approval_required: false,
            canary: Default::default(),
            rollback: Default::default(),
            auto_queued: false,
            auto_reason: None,
            auto_tier: None,
            risk: None,
            tier: None,
        }
    }

    /// Writes a record into tmp/ (its name stays out of queued/ until
    /// `publish`).
    fn stage(&self, new: &NewRun, due_in: Option<chrono::Duration>) -> (RunId, PathBuf) {
        let (id, line) = self.record(new, due_in);
        let tmp = self.dir(Dir::Tmp).join(id.as_str());
        // Durable, as the API's enqueue leaves it (rule 1): otherwise the
        // daemon's first fdatasync of the file would also write the
        // record's data, allocate its blocks and sync its directory entry.
        let mut f = fs::File::create_new(&tmp).expect("create record");
        f.write_all(&line).expect("write record");
        f.sync_all().expect("fsync record");
        (id, tmp)
    }

    fn publish(&self, id: &RunId, tmp: &Path) {
        fs::rename(tmp, self.dir(Dir::Queued).join(id.as_str())).expect("publish");
    }

    fn count(&self, d: Dir) -> usize {
        fs::read_dir(self.dir(d)).map(|r| r.count()).unwrap_or(0)
    }
}

struct Daemon {
    child: Child,
    log: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    fn wait_for(&self, needle: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match self.log.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => panic!("the executor exited while waiting for {needle:?}"),
            }
        }
        panic!("no {needle:?} from the executor within {limit:?}");
    }

    fn rss_kib(&self) -> (u64, u64) {
        status_kib(self.child.id())
    }

    fn stop(mut self) {
        let _ = Command::new("/bin/kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// (VmRSS, VmHWM) of a process, KiB.
fn status_kib(pid: u32) -> (u64, u64) {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ns(t: chrono::DateTime<chrono::Utc>) -> i128 {
    i128::from(t.timestamp_nanos_opt().unwrap_or(0))
}

/// The attempt's started and finished times, ns since the epoch.
fn attempt_ns(env: &Env, id: &RunId) -> Option<(i128, i128)> {
    let bytes = fs::read(env.dir(Dir::Done).join(id.as_str())).ok()?;
    let d = codec::decode(&bytes).ok()?;
    let a = d.record.history.first()?;
    Some((ns(a.started_at), ns(a.finished_at?)))
}

/// Pickup latency (ms), p50 and p99: publish -> attempt started, publish
/// -> command exited, and the floor.
type P = (f64, f64);
fn pickup(samples: usize) -> (P, P, P) {
    let env = Env::new();
    let d = env.start(1);
    let new = env.new_run("bench-true-0");
    let mut lower = Vec::with_capacity(samples);
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (id, tmp) = env.stage(&new, None);
        let t0 = now_ns();
        env.publish(&id, &tmp);
        let done = env.dir(Dir::Done).join(id.as_str());
        let dlq = env.dir(Dir::Dlq).join(id.as_str());
        wait_until(Duration::from_secs(30), || done.exists() || dlq.exists());
        if dlq.exists() {
            let text = fs::read_to_string(&dlq).unwrap_or_default();
            panic!("the stamp run was dead-lettered: {text}");
        }
        let (started, finished) = attempt_ns(&env, &id).expect("the attempt's times");
        lower.push((started - t0) as f64 / 1e6);
        lat.push((finished - t0) as f64 / 1e6);
    }
    d.stop();

    // Floor: append + fdatasync one line, then spawn the same command.
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.root.join("floor.log"))
        .expect("floor file");
    let mut floor = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = now_ns();
        f.write_all(b"attempt-started\n").expect("append");
        f.sync_data().expect("fdatasync");
        let st = Command::new("/usr/bin/true").status().expect("spawn true");
        assert!(st.success());
        floor.push((now_ns() - t0) as f64 / 1e6);
    }
    (
        (pct(&mut lower, 0.5), pct(&mut lower, 0.99)),
        (pct(&mut lat, 0.5), pct(&mut lat, 0.99)),
        (pct(&mut floor, 0.5), pct(&mut floor, 0.99)),
    )
}

/// Runs of `/usr/bin/true` per second through the daemon: `n` runs
/// published at once over `actions` distinct actions.
fn throughput(n: usize, concurrency: usize, actions: usize) -> f64 {
    let env = Env::new();
    let d = env.start(concurrency);
    let staged: Vec<(RunId, PathBuf)> = (0..n)
        .map(|i| env.stage(&env.new_run(&format!("bench-true-{}", i % actions)), None))
        .collect();
    fs::File::open(env.dir(Dir::Tmp))
        .and_then(|d| d.sync_all())
        .expect("fsync tmp/");
    let t = Instant::now();
    for (id, tmp) in &staged {
        env.publish(id, tmp);
    }
    // Counting done/ reads the whole directory and takes the lock the
    // daemon's moves need: look for the last run published (due last, so
    // done last or nearly), a stat every ms, and count only once it is
    // there (an error of < 0.1% on the figure).
    let end = Instant::now() + Duration::from_secs(600);
    let last = staged
        .last()
        .map(|(id, _)| env.dir(Dir::Done).join(id.as_str()))
        .expect("runs");
    loop {
        assert!(Instant::now() < end, "timed out");
        if last.exists() && env.count(Dir::Done) >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    d.stop();
    n as f64 / secs
}

fn bare_true(n: usize, durable_writes: usize, dir: &Path) -> f64 {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("bare.log"))
        .expect("file");
    let t = Instant::now();
    for _ in 0..n {
        for _ in 0..durable_writes {
            f.write_all(b"event\n").expect("append");
            f.sync_data().expect("fdatasync");
        }
        let st = Command::new("/usr/bin/true").status().expect("spawn true");
        assert!(st.success());
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The runner alone, as the daemon calls it for each command (spawn in a
/// process group, both pipes captured, reaped, the group killed after),
/// on a runtime like the daemon's: no spool, no claim.
fn runner_alone(n: usize) -> f64 {
    use remediate_executor::runner::{CommandSpec, RunnerConfig, run_command};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let argv = vec!["/usr/bin/true".to_string()];
    let cfg = RunnerConfig::default();
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            let spec = CommandSpec {
                phase: remediate_spool::Phase::Command,
                argv: &argv,
                sudo: false,
                run_id: "r0",
                attempt: 1,
            };
            let ex = run_command(&spec, &cfg, None).await;
            assert_eq!(ex.output.exit_code, Some(0));
        }
        n as f64 / t.elapsed().as_secs_f64()
    })
}

/// (idle RSS, RSS with `n` queued, peak with `n` queued), KiB.
fn memory(n: usize) -> (u64, u64, u64) {
    let env = Env::new();
    let d = env.start(1);
    std::thread::sleep(Duration::from_secs(2));
    let (idle, _) = d.rss_kib();
    d.stop();

    // Due tomorrow: queued, indexed, never run.
    let new = env.new_run("bench-true-0");
    let q = env.dir(Dir::Queued);
    for _ in 0..n {
        let (id, line) = env.record(&new, Some(chrono::Duration::days(1)));
        fs::write(q.join(id.as_str()), line).expect("write");
    }
    let d = env.start(1);
    // Recovery at start reads every record; wait for its pass to end.
    d.wait_for("recovery", Duration::from_secs(1200));
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = d.rss_kib();
    assert_eq!(env.count(Dir::Queued), n, "nothing ran");
    d.stop();
    (idle, rss, hwm)
}

/// Throughput figures measured in alternating rounds (each round runs
/// every loop once, one after the other), so that a noisy neighbour slows
/// a baseline and the figure it is compared with alike. Each figure is the
/// median over the rounds; each ratio the median of the per-round ratios.
struct Rounds {
    bare: Vec<f64>,
    bare_durable: Vec<f64>,
    runner: Vec<f64>,
    t1: Vec<f64>,
    tn: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    pct(&mut v, 0.5)
}

impl Rounds {
    fn measure(n: usize, rounds: usize) -> Rounds {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut r = Rounds {
            bare: Vec::new(),
            bare_durable: Vec::new(),
            runner: Vec::new(),
            t1: Vec::new(),
            tn: Vec::new(),
        };
        for _ in 0..rounds {
            r.bare.push(bare_true(n, 0, scratch.path()));
            r.t1.push(throughput(n, 1, 1));
            // A run needs at least: attempt started (fdatasync), attempt
            // finished (fdatasync), and the directory fsync of its move to
            // done/.
            r.bare_durable.push(bare_true(n, 3, scratch.path()));
            r.runner.push(runner_alone(n));
            r.tn.push(throughput(n, PARALLEL_ACTIONS, PARALLEL_ACTIONS));
        }
        r
    }

    /// Each round's ratio of `a` to `b`.
    fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(a, b)| a / b).collect()
    }

    fn ratio(a: &[f64], b: &[f64]) -> f64 {
        median(&Self::ratios(a, b))
    }

    fn table(&self, n: usize) -> String {
        let k = self.bare.len();
        let (bare, t1, tn) = (median(&self.bare), median(&self.t1), median(&self.tn));
        let range = |v: &[f64], b: &[f64]| {
            let r = Self::ratios(v, b);
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(0.0, f64::max);
            format!("{lo:.2}-{hi:.2}")
        };
        let mut s = String::new();
        s.push_str(&format!(
            "| throughput, /usr/bin/true, concurrency 1 ({n} runs, median of {k} rounds) | {t1:.0} runs/s | {bare:.0}/s bare spawn+wait loop | {:.2}x (rounds {}) | >= 0.7x |\n",
            Self::ratio(&self.t1, &self.bare),
            range(&self.t1, &self.bare),
        ));
        s.push_str(&format!(
            "| same, vs the loop plus 3 fdatasyncs per run | {t1:.0} runs/s | {:.0}/s | {:.2}x | - |\n",
            median(&self.bare_durable),
            Self::ratio(&self.t1, &self.bare_durable),
        ));
        s.push_str(&format!(
            "| the command runner alone (no spool), /usr/bin/true | {:.0} runs/s | {bare:.0}/s bare loop | {:.2}x | - |\n",
            median(&self.runner),
            Self::ratio(&self.runner, &self.bare),
        ));
        s.push_str(&format!(
            "| throughput, concurrency {PARALLEL_ACTIONS}, {PARALLEL_ACTIONS} actions | {tn:.0} runs/s | {bare:.0}/s bare loop | {:.2}x (rounds {}) | - |\n",
            Self::ratio(&self.tn, &self.bare),
            range(&self.tn, &self.bare),
        ));
        s
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let q = quick();
    let (lat_n, thr_n, mem_n) = if q {
        (30, 100, 2_000)
    } else {
        (300, 1_000, 100_000)
    };
    println!("# executor benchmarks\n\nmachine: {}\n", machine());

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "throughput" {
        // A/B runs: throughput rounds only.
        let r = Rounds::measure(thr_n, if q { 2 } else { 5 });
        println!("{}", r.table(thr_n));
        return;
    }
    let ((l50, l99), (p50, p99), (f50, f99)) = pickup(lat_n);
    let r = Rounds::measure(thr_n, if q { 2 } else { 5 });
    let mut sleeper = Command::new("/usr/bin/sleep")
        .arg("5")
        .spawn()
        .expect("sleep");
    std::thread::sleep(Duration::from_millis(200));
    let (sleep_rss, _) = status_kib(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let (idle, rss, hwm) = memory(mem_n);

    let mib = |k: u64| k as f64 / 1024.0;
    println!("| figure | executor | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| pickup p50, publish -> attempt started (lower bound of command start, {lat_n} runs) | {l50:.2} ms | - | - | - |"
    );
    println!("| pickup p99, publish -> attempt started | {l99:.2} ms | - | - | - |");
    println!(
        "| pickup p50, publish -> command exited (upper bound of command start) | {p50:.2} ms | {f50:.2} ms (fdatasync'd append + spawn and wait) | {:.1}x | <= 5 ms |",
        p50 / f50
    );
    println!(
        "| pickup p99, publish -> command exited | {p99:.2} ms | {f99:.2} ms | {:.1}x | <= 25 ms |",
        p99 / f99
    );
    print!("{}", r.table(thr_n));
    println!(
        "| RSS, idle daemon | {:.1} MiB | {:.1} MiB (/usr/bin/sleep) | - | <= 10 MiB |",
        mib(idle),
        mib(sleep_rss)
    );
    println!(
        "| RSS, {mem_n} queued runs (peak) | {:.1} MiB ({:.1} MiB) | {:.1} MiB idle | {:.1}x | <= 64 MiB |",
        mib(rss),
        mib(hwm),
        mib(idle),
        rss as f64 / idle.max(1) as f64
    );
}
