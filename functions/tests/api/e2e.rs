//! End to end across processes: the real API server and the real executor
//! daemon on one spool, the demo catalog, spoken to over HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{http, start_with};
use crate::util::*;

const HOST: &str = "e2e-host";

fn executor_bin() -> PathBuf {
    // Tests run from target/<profile>/deps; binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("remediate-executor");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p remediate-executor`; `make test` does)",
        bin.display()
    );
    bin
}

struct Executor(Child);

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start_executor(spool: &std::path::Path) -> Executor {
    let child = Command::new(executor_bin())
        .args(["run", "--host-id", HOST, "--spool"])
        .arg(spool)
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Executor(child)
}

struct Client<'a> {
    addr: &'a str,
    bearer: String,
}

impl Client<'_> {
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        http(
            self.addr,
            "POST",
            path,
            &[
                ("authorization", &self.bearer),
                ("content-type", "application/json"),
            ],
            Some(&body),
        )
    }
    fn put(&self, path: &str, body: Value) -> (u16, Value) {
        http(
            self.addr,
            "PUT",
            path,
            &[
                ("authorization", &self.bearer),
                ("content-type", "application/json"),
            ],
            Some(&body),
        )
    }
    fn snapshot(&self, dlq: bool) -> Value {
        let path = if dlq {
            "/api/ops/remediate-queue?limit=100&dlq=1"
        } else {
            "/api/ops/remediate-queue?limit=100"
        };
        let (s, v) = http(
            self.addr,
            "GET",
            path,
            &[("authorization", &self.bearer)],
            None,
        );
        assert_eq!(s, 200, "{v}");
        v
    }
    fn execute(&self, action: &str, params: Value) -> Value {
        let (s, v) = self.post(
            "/api/remediate",
            json!({"mode": "dry-run", "hostId": HOST, "actionId": action, "params": params}),
        );
        assert_eq!(s, 200, "dry-run {action}: {v}");
        let (s, v) = self.post(
            "/api/remediate",
            json!({"mode": "execute", "hostId": HOST, "actionId": action, "params": params, "confirmPhrase": format!("EXECUTE {action}")}),
        );
        assert_eq!(s, 200, "execute {action}: {v}");
        v["run"].clone()
    }
    /// Waits until the run's state (as the API reports it) is `want`.
    fn wait_for(&self, run_id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let spool = spool_of(self);
        loop {
            let rec = spool
                .get_blocking(&remediate_spool::RunId::parse(run_id).unwrap())
                .unwrap()
                .unwrap();
            let item = remediate_functions::items::item(&rec, true);
            if item["state"] == want {
                return item;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never became {want}; it is {}",
                item["state"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

thread_local! {
    static SPOOL: std::cell::RefCell<Option<remediate_spool::LocalSpool>> = const { std::cell::RefCell::new(None) };
}

fn spool_of(_: &Client<'_>) -> remediate_spool::LocalSpool {
    SPOOL.with(|s| s.borrow().clone().unwrap())
}

#[test]
fn execute_approve_retry_dlq_and_replay_across_processes() {
    let srv = start_with(&[("VPS_REMEDIATE_QUEUE_AUTODRAIN", "true")]);
    let spool_dir = srv.dir.path().join("spool");
    SPOOL.with(|s| *s.borrow_mut() = Some(remediate_spool::LocalSpool::open(&spool_dir).unwrap()));
    let _exec = start_executor(&spool_dir);
    let c = Client {
        addr: &srv.addr,
        bearer: format!("Bearer {ADMIN}"),
    };
    let (s, v) = c.put(
        &format!("/api/hosts/{HOST}"),
        json!({"remediationPolicyOverrides": {"maxRetryAttempts": 2, "retryBackoffSeconds": 1, "retryBackoffMaxSeconds": 1}}),
    );
    assert_eq!(s, 200, "{v}");

    // 1. Execute -> the executor runs it -> the snapshot shows it succeeded.
    let run = c.execute("demo-system-info", json!({}));
    let id = run["runId"].as_str().unwrap().to_string();
    let done = c.wait_for(&id, "succeeded");
    let outputs = done["history"][0]["outputs"].as_array().unwrap();
    assert!(
        outputs[0]["stdout"].as_str().unwrap().contains("Linux"),
        "uname output kept: {done}"
    );
    // The log says succeeded a moment before the file reaches done/, which
    // is what the API's counts follow: poll them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.snapshot(false)["snapshot"]["counts"]["succeeded"]
        .as_u64()
        .unwrap()
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the snapshot never counted the success"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // 2. A high-risk action waits for approval, is approved, runs.
    let run = c.execute("demo-approval", json!({"port": 8080, "protocol": "tcp"}));
    let risky = run["runId"].as_str().unwrap().to_string();
    assert_eq!(run["state"], "approval-pending");
    std::thread::sleep(Duration::from_millis(300));
    c.wait_for(&risky, "approval-pending");
    let (s, v) = c.post(
        "/api/ops/remediate-queue",
        json!({"runId": risky, "mode": "approve", "reason": "validated in canary"}),
    );
    assert_eq!(s, 200, "{v}");
    let done = c.wait_for(&risky, "succeeded");
    assert_eq!(done["canaryPassed"], true);

    // 3. A failing one retries, then lands in the DLQ.
    let run = c.execute("demo-always-fails", json!({}));
    let bad = run["runId"].as_str().unwrap().to_string();
    let dead = c.wait_for(&bad, "failed");
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["dlqReason"], "max_attempts_exceeded");
    let dlq = c.snapshot(true);
    assert!(
        dlq["snapshot"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["runId"] == bad.as_str())
    );

    // 4. Replay brings it back: a new run, linked, with a fresh budget, runs again.
    let (s, v) = c.post(
        "/api/ops/remediate-replay",
        json!({"mode": "single", "runId": bad}),
    );
    assert_eq!(s, 200, "{v}");
    let again = v["replayed"]["runId"].as_str().unwrap().to_string();
    assert_eq!(v["replayed"]["replayOfRunId"], bad.as_str());
    let dead_again = c.wait_for(&again, "failed");
    assert_eq!(dead_again["attempts"], 2, "a fresh attempt budget");
    assert_eq!(
        c.wait_for(&bad, "replayed")["replayedAs"][0],
        again.as_str()
    );
}
