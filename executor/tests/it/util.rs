//! Shared helpers: a spool in a temporary directory, a planner with a small
//! catalog of shell-free-at-runtime test actions, and a daemon in a task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remediate_executor::runner::RunnerConfig;
use remediate_executor::{DaemonSettings, Deps, RunEnd, StaticAction, StaticPlanner};
use remediate_spool::{HostId, LocalSpool, NewRun, RunId, RunRecord};
use tokio::sync::{mpsc, oneshot, watch};

pub fn host(s: &str) -> HostId {
    HostId::parse(s).expect("valid host id")
}

pub fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

pub fn sh(script: &str) -> Vec<String> {
    words(&["/bin/sh", "-c", script])
}

/// A spool, a planner and a scratch directory for side-effect files.
#[derive(Debug)]
pub struct Env {
    pub dir: tempfile::TempDir,
    pub spool: LocalSpool,
    pub planner: Arc<StaticPlanner>,
    pub host: HostId,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = LocalSpool::open(dir.path().join("spool")).expect("open spool");
        let planner = Arc::new(StaticPlanner::new(RunnerConfig {
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_millis(200),
            max_buffer_bytes: 64 * 1024,
            ..RunnerConfig::default()
        }));
        planner.set_backoff(Duration::ZERO, Duration::ZERO);
        let host = host("host-a");
        spool.ensure_host(&host).expect("host dirs");
        let env = Env {
            dir,
            spool,
            planner,
            host,
        };
        env.catalog();
        env
    }

    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Marker file `<scratch>/<name>.<run_id>` written by test commands.
    pub fn marker(&self, name: &str, id: &RunId) -> PathBuf {
        self.scratch().join(format!("{name}.{id}"))
    }

    fn catalog(&self) {
        let s = self.scratch();
        let s = s.display();
        let p = &self.planner;
        p.action(
            "ok",
            StaticAction {
                commands: vec![sh(&format!("echo ran >> {s}/ran.{{run_id}}"))],
                ..StaticAction::default()
            },
        );
        p.action(
            "fail-once",
            StaticAction {
                commands: vec![sh(&format!(
                    "echo ran >> {s}/ran.{{run_id}}; test -e {s}/seen.{{run_id}} && exit 0; touch {s}/seen.{{run_id}}; exit 3"
                ))],
                ..StaticAction::default()
            },
        );
        p.action(
            "always-fail",
            StaticAction {
                commands: vec![sh(&format!("echo ran >> {s}/ran.{{run_id}}; exit 1"))],
                ..StaticAction::default()
            },
        );
        p.action(
            "two-steps-first-fails",
            StaticAction {
                commands: vec![
                    words(&["/bin/false"]),
                    sh(&format!("touch {s}/second.{{run_id}}")),
                ],
                ..StaticAction::default()
            },
        );
        p.action(
            "canary-fails",
            StaticAction {
                commands: vec![words(&["/bin/true"])],
                canary_checks: vec![words(&["/bin/true"]), words(&["/bin/false"])],
                ..StaticAction::default()
            },
        );
        p.action(
            "canary-fails-rollback",
            StaticAction {
                commands: vec![words(&["/bin/true"])],
                canary_checks: vec![words(&["/bin/false"])],
                rollback: vec![sh(&format!("touch {s}/rolledback.{{run_id}}"))],
                ..StaticAction::default()
            },
        );
        p.action(
            "fail-rollback",
            StaticAction {
                commands: vec![words(&["/bin/false"])],
                rollback: vec![sh(&format!("touch {s}/rolledback.{{run_id}}"))],
                ..StaticAction::default()
            },
        );
        p.action(
            "fail-rollback-fails",
            StaticAction {
                commands: vec![words(&["/bin/false"])],
                rollback: vec![words(&["/bin/false"])],
                ..StaticAction::default()
            },
        );
        p.action(
            "canary-ok",
            StaticAction {
                commands: vec![words(&["/bin/true"])],
                canary_checks: vec![words(&["/bin/true"])],
                rollback: vec![sh(&format!("touch {s}/rolledback.{{run_id}}"))],
                ..StaticAction::default()
            },
        );
        p.action(
            "slow",
            StaticAction {
                commands: vec![sh(&format!(
                    "echo ran >> {s}/ran.{{run_id}}; touch {s}/started.{{run_id}}; exec sleep 1000"
                ))],
                ..StaticAction::default()
            },
        );
        p.action(
            "show-own-record",
            StaticAction {
                // The command reads its own record file from running/.
                commands: vec![sh(&format!(
                    "cat {}/runs/host-a/running/{{run_id}}",
                    self.spool.root().display()
                ))],
                ..StaticAction::default()
            },
        );
    }

    pub fn new_run(&self, action: &str) -> NewRun {
        NewRun {
            host_id: self.host.clone(),
            action_key: action.into(),
            params: BTreeMap::new(),
            requested_by: "tester".into(),
            idempotency_key: None,
            max_attempts: 3,
            expires_at: None,
            idempotent: false,
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

    pub fn enqueue(&self, new: NewRun) -> RunId {
        self.spool
            .enqueue_blocking(new)
            .expect("enqueue")
            .record
            .run_id
    }

    pub fn get(&self, id: &RunId) -> RunRecord {
        self.spool
            .get_blocking(id)
            .expect("get")
            .expect("run exists")
    }

    pub fn deps(
        &self,
        settings: DaemonSettings,
    ) -> (Deps, mpsc::UnboundedReceiver<(RunId, RunEnd)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Deps {
                spool: self.spool.clone(),
                host: self.host.clone(),
                planner: self.planner.clone(),
                settings,
                events: Some(tx),
                notifier: None,
            },
            rx,
        )
    }

    pub fn count_lines(&self, name: &str, id: &RunId) -> usize {
        std::fs::read_to_string(self.marker(name, id))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// A kill switch that is never thrown.
pub fn no_kill() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    rx
}

/// A daemon running in a task, stopped by `stop`.
pub struct Daemon {
    pub stop: Option<oneshot::Sender<()>>,
    pub task:
        tokio::task::JoinHandle<remediate_executor::Result<remediate_executor::daemon::Stopped>>,
    pub events: mpsc::UnboundedReceiver<(RunId, RunEnd)>,
}

impl Daemon {
    pub fn start(env: &Env, settings: DaemonSettings) -> Daemon {
        let (deps, events) = env.deps(settings);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(remediate_executor::run(deps, async move {
            let _ = rx.await;
        }));
        Daemon {
            stop: Some(tx),
            task,
            events,
        }
    }

    /// The next processed run, waiting at most a minute (a hang is a failure,
    /// not a timing assertion).
    pub async fn next_event(&mut self) -> (RunId, RunEnd) {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("the daemon processed a run within a minute")
            .expect("daemon alive")
    }

    pub async fn shutdown(mut self) -> remediate_executor::daemon::Stopped {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("daemon stopped within a minute")
            .expect("join")
            .expect("daemon ok")
    }
}

/// Settings where only inotify and the due timer can wake the daemon.
pub fn no_rescan() -> DaemonSettings {
    DaemonSettings {
        rescan_interval: Duration::from_secs(3600),
        idle_rescan_interval: Duration::from_secs(3600),
        recovery_interval: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(30),
        ..DaemonSettings::default()
    }
}

pub async fn wait_for_file(path: &Path) {
    for _ in 0..2400 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", path.display());
}

/// A local webhook receiver: answers each POST with the next status of
/// `statuses` (200 once they run out) and hands over the JSON bodies.
pub struct Hook {
    pub url: String,
    pub bodies: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Hook {
    pub fn start(statuses: Vec<u16>) -> Hook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/hooks/remediate",
            listener.local_addr().expect("addr")
        );
        let (tx, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut r = BufReader::new(stream);
                let mut len = 0usize;
                let mut request_line = String::new();
                let _ = r.read_line(&mut request_line);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let status = statuses.next().unwrap_or(200);
                let mut s = r.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                assert!(request_line.starts_with("POST /hooks/remediate HTTP/1.1"));
                let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Hook { url, bodies }
    }

    /// The next body received, waiting at most a minute (a hang guard).
    pub fn next(&self) -> serde_json::Value {
        self.bodies
            .recv_timeout(Duration::from_secs(60))
            .expect("a notification arrived within a minute")
    }
}
