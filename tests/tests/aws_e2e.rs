//! AWS mode end to end against moto: the HTTP router in process, in Lambda
//! mode (API Gateway v2 events through `remediate_functions::lambda::invoke`),
//! on the S3 + SQS store enqueues a run -> its pointer goes on the host's SQS queue
//! -> the real `remediate-executor run` child (AWS mode) imports it into its
//! spool and runs it -> the state mirrored back to S3 is read through the
//! router's routes as `succeeded`.
//!
//! The second test SIGKILLs the executor between the durable import and the
//! delete of the message (the `test-hooks` pause), restarts it, and checks
//! that the redelivered message is recognised and the command ran exactly
//! once (its side effect is a new file per execution, as in the soak test).
//! The third runs `remediate-executor once` in AWS mode: intake, run and
//! mirror in one command. The fourth disables the host through the router
//! while a run waits for its retry: the policy message makes the executor
//! cancel it instead of running it again.
//!
//! Run:
//! `cargo build -p remediate-executor --features aws,test-hooks &&
//!  cargo test -p remediate-tests --features aws --test aws_e2e`
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_support::*;
use remediate_functions::auth::{AuthConfig, Role, TokenEntry, hash_token};
use remediate_functions::{AppState, Metrics, app};
use remediate_spool::{Dir, HostId, RunId};
use remediate_tests::{clean_command, workspace_bin};
use serde_json::{Value, json};

const HOST: &str = "aws-e2e-host";
const ADMIN: &str = "admin-token-for-the-aws-e2e";
const ACTION: &str = "count-once";
const FAILING: &str = "count-then-fail";

/// The test catalog: a non-idempotent action whose first command leaves a
/// new file per execution, and one that leaves its file and then fails (so
/// it is retried after the default backoff, 15 s).
fn catalog_toml(effects: &Path) -> String {
    let mark = format!("{}/{{run_id}}.{{attempt}}.XXXXXX", effects.display());
    format!(
        r#"[[action]]
id = "{ACTION}"
title = "Count executions (not idempotent)"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = false
commands = [["/usr/bin/mktemp", "{mark}"]]

[[action]]
id = "{FAILING}"
title = "Count executions, then fail"
risk = "low"
tier = "safe_auto"
timeout_secs = 30
idempotent = true
commands = [["/usr/bin/mktemp", "{mark}"], ["/usr/bin/false"]]
"#
    )
}

struct World {
    aws: Aws,
    dir: tempfile::TempDir,
    state: Arc<AppState>,
    catalog: PathBuf,
    effects: PathBuf,
    spool: PathBuf,
}

async fn world(test: &str, prefix: &str) -> Option<World> {
    let aws = aws(test, prefix).await?;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects");
    std::fs::create_dir(&effects).unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, catalog_toml(&effects)).unwrap();
    // mktemp has no entry in the built-in allowlist (as in the soak test);
    // the guard's rules 1-3 still apply.
    let config = dir.path().join("remediate.toml");
    std::fs::write(
        &config,
        format!(
            "enforce_allowlist = false\ncatalog = {:?}\n",
            catalog.display().to_string()
        ),
    )
    .unwrap();
    let loaded = remediate_config::Loader::new()
        .config_file(Some(config))
        .load()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let cat = remediate_config::Catalog::load(&catalog).unwrap();
    let tokens = vec![TokenEntry {
        name: "admin".into(),
        role: Role::Admin,
        sha256: hash_token(ADMIN),
        hosts: None::<BTreeSet<String>>,
    }];
    let mut auth = AuthConfig::new(tokens, None, b"0123456789abcdef0123456789abcdef".to_vec());
    auth.secure_cookie = false;
    let host = HostId::parse(HOST).unwrap();
    aws.store.ensure_host_queues(&host).await.unwrap();
    let state = Arc::new(AppState {
        store: Arc::new(aws.store.clone()),
        loaded: Arc::new(loaded),
        catalog: Arc::new(cat),
        auth,
        drain_wait: Duration::from_millis(200),
        notify_url: None,
        metrics: Metrics::default(),
        effective_cache: Default::default(),
    });
    let w = World {
        spool: dir.path().join("spool"),
        aws,
        dir,
        state,
        catalog,
        effects,
    };
    w.register_host().await;
    Some(w)
}

impl World {
    /// One request through the Lambda entry, as API Gateway (HTTP API, `$default`
    /// stage) hands it to the function: an event in, the response JSON out.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut headers = json!({
            "host": "e2e.execute-api.us-east-1.amazonaws.com",
            "authorization": format!("Bearer {ADMIN}"),
            "x-forwarded-proto": "https",
        });
        if body.is_some() {
            headers["content-type"] = json!("application/json");
        }
        let event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": raw_path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "e2e",
                "domainName": "e2e.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "e2e",
                "http": {
                    "method": method,
                    "path": raw_path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "198.51.100.7",
                    "userAgent": "aws-e2e"
                },
                "requestId": "aws-e2e",
                "routeKey": "$default",
                "stage": "$default",
                "time": "28/Nov/2026:13:40:00 +0000",
                "timeEpoch": 1795873200000u64
            },
            "body": body.map(|b| b.to_string()),
            "isBase64Encoded": false
        });
        let out = remediate_functions::lambda::invoke(
            app(self.state.clone()),
            event.to_string().as_bytes(),
        )
        .await
        .unwrap();
        let status = out["statusCode"].as_u64().unwrap() as u16;
        assert_eq!(out["isBase64Encoded"], false, "{out}");
        let text = out["body"].as_str().unwrap_or_default();
        (
            status,
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        )
    }

    /// Registers the host through the router (its policy document goes to
    /// S3, where the executor's intake picks it up).
    async fn register_host(&self) {
        let (s, v) = self
            .call("PUT", &format!("/api/hosts/{HOST}"), Some(json!({})))
            .await;
        assert_eq!(s, 200, "register host: {v}");
    }

    /// Dry-run, then execute [`ACTION`] through the router: returns the run
    /// id.
    async fn execute(&self) -> RunId {
        self.execute_action(ACTION).await
    }

    async fn execute_action(&self, action: &str) -> RunId {
        let (s, v) = self
            .call(
                "POST",
                "/api/remediate",
                Some(json!({"mode": "dry-run", "hostId": HOST, "actionId": action, "params": {}})),
            )
            .await;
        assert_eq!(s, 200, "dry-run: {v}");
        let (s, v) = self
            .call(
                "POST",
                "/api/remediate",
                Some(
                    json!({"mode": "execute", "hostId": HOST, "actionId": action, "params": {},
                            "confirmPhrase": format!("EXECUTE {action}")}),
                ),
            )
            .await;
        assert_eq!(s, 200, "execute: {v}");
        assert_eq!(v["run"]["state"], "queued", "{v}");
        RunId::parse(v["run"]["runId"].as_str().unwrap()).unwrap()
    }

    /// The run as the router shows it (read from S3).
    async fn run(&self, id: &RunId) -> Value {
        let (s, v) = self.call("GET", &format!("/api/ops/runs/{id}"), None).await;
        assert_eq!(s, 200, "{v}");
        v["run"].clone()
    }

    /// Waits until the router says `want`. The deadline is a hang guard for
    /// a broken pipeline, not a timing assertion.
    async fn wait_state(&self, id: &RunId, want: &str, exec: &mut Executor) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let run = self.run(id).await;
            if run["state"] == want {
                return run;
            }
            exec.check_alive();
            assert!(
                Instant::now() < deadline,
                "run {id} never became {want} in S3: {run}\nexecutor log:\n{}",
                exec.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn executions(&self, id: &RunId) -> usize {
        std::fs::read_dir(&self.effects)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(id.as_str()))
            .count()
    }

    fn local_dir_of(&self, id: &RunId) -> Option<Dir> {
        [
            Dir::Queued,
            Dir::Held,
            Dir::Running,
            Dir::Done,
            Dir::Dlq,
            Dir::Corrupt,
        ]
        .into_iter()
        .find(|d| {
            self.spool
                .join("runs")
                .join(HOST)
                .join(d.name())
                .join(id.as_str())
                .exists()
        })
    }

    /// `remediate-executor <sub>` in AWS mode against this world's moto,
    /// its stderr to `log`.
    fn executor_command(&self, sub: &str, log: &Path) -> std::process::Command {
        let bin = workspace_bin("remediate-executor").unwrap_or_else(|e| panic!("{e}"));
        let err = std::fs::File::create(log).unwrap();
        let mut cmd = clean_command(&bin);
        cmd.args([sub, "--host-id", HOST, "--spool"])
            .arg(&self.spool)
            .current_dir(self.dir.path())
            .env("VPS_REMEDIATE_STORE", "aws")
            .env("VPS_REMEDIATE_S3_BUCKET", &self.aws.cfg.bucket)
            .env("VPS_REMEDIATE_SQS_QUEUE_PREFIX", &self.aws.cfg.queue_prefix)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", self.aws.moto.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("VPS_REMEDIATE_CATALOG", &self.catalog)
            .env("VPS_REMEDIATE_ENFORCE_ALLOWLIST", "false")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        cmd
    }

    fn start_executor(&self, life: u32, pause_after_import: Option<u64>) -> Executor {
        let log = self.dir.path().join(format!("executor-{life}.log"));
        let mut cmd = self.executor_command("run", &log);
        if let Some(s) = pause_after_import {
            cmd.env(
                remediate_executor::intake::PAUSE_AFTER_IMPORT_VAR,
                s.to_string(),
            );
        }
        Executor {
            child: cmd.spawn().expect("start remediate-executor"),
            log,
        }
    }

    /// `remediate-executor once` to its end (a hang guard kills it after
    /// 180 s): its exit status, stdout and log.
    fn once(&self, n: u32) -> (std::process::ExitStatus, String, String) {
        let log = self.dir.path().join(format!("once-{n}.log"));
        let out = self.dir.path().join(format!("once-{n}.out"));
        let mut cmd = self.executor_command("once", &log);
        cmd.stdout(std::fs::File::create(&out).unwrap());
        let mut child = cmd.spawn().expect("start remediate-executor once");
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "`once` did not end:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }
}

struct Executor {
    child: Child,
    log: PathBuf,
}

impl Executor {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the executor exited ({status}):\n{}", self.log());
        }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_enqueues_executor_imports_runs_and_mirrors_succeeded() {
    let Some(w) = world(
        "router_enqueues_executor_imports_runs_and_mirrors_succeeded",
        "e2e",
    )
    .await
    else {
        return;
    };
    let mut exec = w.start_executor(1, None);
    let id = w.execute().await;
    let run = w.wait_state(&id, "succeeded", &mut exec).await;
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(w.executions(&id), 1, "the command ran once");
    assert_eq!(w.local_dir_of(&id), Some(Dir::Done));
    // The snapshot route counts it too (S3 index entries).
    let (s, v) = w
        .call("GET", "/api/ops/remediate-queue?limit=100", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["snapshot"]["counts"]["succeeded"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    assert!(
        exec.log().contains("run imported from SQS"),
        "{}",
        exec.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_between_import_and_delete_runs_the_command_once() {
    let Some(w) = world(
        "executor_killed_between_import_and_delete_runs_the_command_once",
        "kill",
    )
    .await
    else {
        return;
    };
    // Life 1 pauses (for an hour) after the durable import, before the
    // delete: it is SIGKILLed there, with the message still on the queue.
    let mut first = w.start_executor(1, Some(3600));
    let id = w.execute().await;
    // Let the daemon run it meanwhile (so a second execution would show),
    // and wait for the hook's log line: the process is inside the pause.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        first.check_alive();
        let log = first.log();
        let paused = log.contains("test hook: pausing between import and delete");
        if paused && w.local_dir_of(&id) == Some(Dir::Done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "life 1 never imported and ran {id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.sigkill();
    assert!(
        !first.log().contains("duplicate delivery"),
        "life 1 saw one delivery:\n{}",
        first.log()
    );
    assert_eq!(w.executions(&id), 1);

    // Life 2: the message comes back after its visibility timeout, is found
    // in the spool, and is deleted without running anything again.
    let mut second = w.start_executor(2, None);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !second.log().contains("duplicate delivery") {
        second.check_alive();
        assert!(
            Instant::now() < deadline,
            "the message never came back:\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = w.wait_state(&id, "succeeded", &mut second).await;
    assert_eq!(run["attempts"], 1, "one attempt: {run}");
    assert_eq!(w.executions(&id), 1, "the command ran exactly once");
    assert!(second.log().contains(id.as_str()));
}

/// `remediate-executor once` in AWS mode does one round of what `run` does
/// around its claim loop: it pulls the run from the host's queue, runs it,
/// and has its outcome in S3 before it exits (no waiting). A second `once`
/// finds nothing and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_imports_from_sqs_runs_and_mirrors_before_it_exits() {
    let Some(w) = world(
        "once_imports_from_sqs_runs_and_mirrors_before_it_exits",
        "once",
    )
    .await
    else {
        return;
    };
    let id = w.execute().await;
    let (status, out, log) = w.once(1);
    assert!(status.success(), "once: {status}\n{out}\n{log}");
    assert_eq!(out.trim(), format!("{id}\tsucceeded"), "{log}");
    assert!(log.contains("run imported from SQS"), "{log}");
    let run = w.run(&id).await;
    assert_eq!(run["state"], "succeeded", "mirrored before exit: {run}");
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(w.executions(&id), 1);
    assert_eq!(w.local_dir_of(&id), Some(Dir::Done));

    let (status, out, log) = w.once(2);
    assert!(status.success(), "second once: {status}\n{log}");
    assert_eq!(out.trim(), "", "nothing left to run: {log}");
    assert_eq!(w.executions(&id), 1, "the command ran once");
}

/// Disabling a host through the API reaches its executor at once, by a
/// policy message on the host's queue, not after the intake's current long
/// poll (20 s): a run waiting for its retry (15 s) is canceled when it comes
/// due instead of running again. Without the message, the executor would
/// copy the document only when the long poll that began at the import ends,
/// after the retry ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_host_through_the_api_stops_its_retrying_run() {
    let Some(w) = world(
        "disabling_a_host_through_the_api_stops_its_retrying_run",
        "policy",
    )
    .await
    else {
        return;
    };
    let mut exec = w.start_executor(1, None);
    let id = w.execute_action(FAILING).await;
    let run = w.wait_state(&id, "retry-scheduled", &mut exec).await;
    assert_eq!(run["attempts"], 1, "the first attempt failed: {run}");
    let (s, v) = w
        .call(
            "PUT",
            &format!("/api/hosts/{HOST}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "disable: {v}");
    let run = w.wait_state(&id, "canceled", &mut exec).await;
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(w.executions(&id), 1, "the retry never started");
    assert!(
        exec.log()
            .contains("policy message: the host document is current"),
        "{}",
        exec.log()
    );
}
