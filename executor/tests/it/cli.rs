//! The `remediate-executor` binary with the real config crate and the demo
//! catalog: `once`, `queue list|show|flush`, `validate-config`, `run` + SIGTERM.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use remediate_spool::{LocalSpool, RunState};

use crate::util::*;

const BIN: &str = env!("CARGO_BIN_EXE_remediate-executor");

fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    // Only the test's settings: none of the caller's VPS_REMEDIATE_*.
    for (k, _) in std::env::vars() {
        if k.starts_with("VPS_REMEDIATE_") || k.starts_with("OPS_WORKER_") {
            c.env_remove(k);
        }
    }
    c.current_dir(dir)
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn exec(dir: &Path, args: &[&str]) -> Output {
    cmd(dir).args(args).output().expect("run the binary")
}

struct Cli {
    dir: tempfile::TempDir,
    spool: LocalSpool,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = LocalSpool::open(dir.path().join("spool")).expect("spool");
        Cli { dir, spool }
    }
    fn spool_arg(&self) -> String {
        self.dir.path().join("spool").display().to_string()
    }
    fn run(&self, args: &[&str]) -> Output {
        let spool = self.spool_arg();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--spool", &spool, "--host-id", "host-a"]);
        exec(self.dir.path(), &all)
    }
    fn enqueue(&self, action: &str, max_attempts: u32) -> remediate_spool::RunId {
        let env_like = Env::new();
        let mut new = env_like.new_run(action);
        new.max_attempts = max_attempts;
        self.spool
            .enqueue_blocking(new)
            .expect("enqueue")
            .record
            .run_id
    }
    fn get(&self, id: &remediate_spool::RunId) -> remediate_spool::RunRecord {
        // A fresh view: the binary changed the files.
        LocalSpool::open(self.dir.path().join("spool"))
            .expect("spool")
            .get_blocking(id)
            .expect("get")
            .expect("exists")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn once_runs_demo_actions_and_exits_1_when_a_run_dead_letters() {
    let c = Cli::new();
    let ok = c.enqueue("demo-system-info", 3);
    let bad = c.enqueue("demo-always-fails", 1);
    let out = c.run(&["once", "--limit", "10"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("{ok}\tsucceeded")), "{stdout}");
    assert!(
        stdout.contains(&format!("{bad}\tdlq max_attempts_exceeded")),
        "{stdout}"
    );
    let r = c.get(&ok);
    assert_eq!(r.state, RunState::Succeeded);
    // `uname -a` ran for real, without a shell.
    assert_eq!(r.history[0].result.outputs[0].argv[0], "/usr/bin/uname");

    let out = c.run(&["queue", "show", bad.as_str()]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("dlq reason max_attempts_exceeded"),
        "{shown}"
    );
    assert!(shown.contains("/usr/bin/false -> exit 1"), "{shown}");

    let out = c.run(&["queue", "list", "--json", "--state", "dlq"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(1));
    assert_eq!(v[0]["runId"], bad.as_str());
}

#[test]
fn once_exits_0_for_success_and_scheduled_retry_and_flush_makes_it_due() {
    let c = Cli::new();
    // Succeeds from attempt 3 on; the default backoff is 15 s.
    let flaky = c.enqueue("demo-flaky", 3);
    let out = c.run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("retry-scheduled"));
    let out = c.run(&["queue", "list"]);
    assert!(
        text(&out.stdout).contains("retry-scheduled"),
        "{}",
        text(&out.stdout)
    );

    // Not due yet: once touches nothing.
    let out = c.run(&["once"]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(c.get(&flaky).attempts, 1);

    let out = c.run(&["queue", "flush"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("1 retry-scheduled"),
        "{}",
        text(&out.stdout)
    );
    c.run(&["once"]);
    assert_eq!(c.get(&flaky).attempts, 2);
}

#[test]
fn host_policy_document_disables_the_host_and_tightens_the_guard() {
    let c = Cli::new();
    let h = host("host-a");
    c.spool
        .put_host_doc_blocking(
            &h,
            &serde_json::json!({"remediationGuardOverrides": {"maxCommandsPerAction": 1}}),
        )
        .expect("host doc");
    // demo-system-info has four commands: the guard now refuses it.
    let blocked = c.enqueue("demo-system-info", 3);
    let out = c.run(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    let r = c.get(&blocked);
    assert_eq!((r.state, r.attempts), (RunState::Dlq, 0));
    assert_eq!(r.dlq_reason.as_deref(), Some("policy_blocked"));

    c.spool
        .put_host_doc_blocking(&h, &serde_json::json!({"enabled": false}))
        .expect("host doc");
    let canceled = c.enqueue("demo-system-info", 3);
    let out = c.run(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(c.get(&canceled).state, RunState::Canceled);
}

#[test]
fn validate_config_reports_the_variable_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cmd(dir.path())
        .args(["validate-config", "--host-id", "host-a"])
        .env("VPS_REMEDIATE_SPOOL_DIR", dir.path().join("spool"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = cmd(dir.path())
        .args(["validate-config", "--host-id", "host-a"])
        .env("VPS_REMEDIATE_COMMAND_TIMEOUT_MS", "5")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("VPS_REMEDIATE_COMMAND_TIMEOUT_MS"));
    let out = exec(dir.path(), &["once", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_daemon_executes_and_exits_0_on_sigterm() {
    let c = Cli::new();
    let spool = c.spool_arg();
    let mut child = cmd(c.dir.path())
        .args(["run", "--spool", &spool, "--host-id", "host-a"])
        .env("OPS_WORKER_INTERVAL_SECONDS", "3600")
        .env("OPS_WORKER_IDLE_INTERVAL_SECONDS", "3600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let id = c.enqueue("demo-system-info", 3);
    let mut done = false;
    for _ in 0..2400 {
        if c.get(&id).state == RunState::Succeeded {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(done, "the daemon ran the run");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn once_posts_a_dead_letter_to_the_webhook_before_it_exits() {
    let c = Cli::new();
    let hook = Hook::start(vec![503]);
    let bad = c.enqueue("demo-always-fails", 1);
    let spool = c.spool_arg();
    let out = cmd(c.dir.path())
        .env("VPS_REMEDIATE_NOTIFY_WEBHOOK_URL", &hook.url)
        .args(["once", "--spool", &spool, "--host-id", "host-a"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The 503 was retried (after the default 1 s backoff) before the exit.
    let first = hook.next();
    let again = hook.next();
    assert_eq!(first, again);
    assert_eq!(first["kind"], "run.dead_lettered");
    assert_eq!(first["runId"], bad.as_str());
    assert_eq!(first["actionKey"], "demo-always-fails");
}

#[test]
fn validate_config_warns_about_an_https_webhook() {
    let c = Cli::new();
    let out = cmd(c.dir.path())
        .env(
            "VPS_REMEDIATE_NOTIFY_WEBHOOK_URL",
            "https://hooks.example.com/x",
        )
        .args(["validate-config", "--host-id", "host-a"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("only http:// is supported"),
        "{}",
        text(&out.stdout)
    );
}
