//! The guarded command runner: runs one argv (never through a shell) with a
//! cleared environment, in its own process group, with a timeout that kills
//! the whole group and per-stream output caps.
//!
//! Invariants kept here:
//! - no shell: the argv goes to execve as it is, so `a && b` is two words;
//! - the child sees only [`FIXED_PATH`], `LANG=C`, `REMEDIATE_RUN_ID` and
//!   `REMEDIATE_ATTEMPT`, whatever the daemon's own environment holds;
//! - no process of a command outlives it: on timeout, on shutdown and when
//!   the leader exits, the group is signalled; a dropped run kills the group;
//! - stdout and stderr are drained concurrently to EOF, so a chatty child
//!   never blocks on a full pipe; only the first `max_buffer_bytes` of each
//!   are kept, and a visible mark says how much was dropped;
//! - secrets are redacted from everything kept (output and argv).

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use regex::Regex;
use remediate_spool::{CommandOutput, Phase};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

/// The only PATH a command sees.
pub const FIXED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `sudo` is looked up when an action declares it.
pub const DEFAULT_SUDO: &str = "/usr/bin/sudo";

/// How the runner treats every command.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Per-command timeout (`VPS_REMEDIATE_COMMAND_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL to the group.
    pub kill_grace: Duration,
    /// Bytes kept per stream (`VPS_REMEDIATE_MAX_BUFFER_BYTES`).
    pub max_buffer_bytes: usize,
    /// The sudo binary used for actions that declare `sudo`.
    pub sudo_path: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            timeout: Duration::from_millis(20_000),
            kill_grace: Duration::from_secs(5),
            max_buffer_bytes: 512_000,
            sudo_path: DEFAULT_SUDO.to_string(),
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct CommandSpec<'a> {
    pub phase: Phase,
    pub argv: &'a [String],
    /// Prefix with `sudo -n --` (only when the action declares it).
    pub sudo: bool,
    pub run_id: &'a str,
    pub attempt: u32,
}

/// Why a command was stopped by the runner rather than ending by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Timeout,
    /// The shutdown switch was thrown (daemon stopping): the attempt was
    /// interrupted, not failed by its command.
    Shutdown,
}

/// What running one command produced.
#[derive(Debug, Clone)]
pub struct Executed {
    pub output: CommandOutput,
    pub stopped: Option<Stopped>,
    /// The command could not be started (no such file, permission, ...).
    pub spawn_error: Option<String>,
}

impl Executed {
    /// Exit code 0, not stopped, started at all.
    pub fn success(&self) -> bool {
        self.spawn_error.is_none() && self.stopped.is_none() && self.output.exit_code == Some(0)
    }

    pub fn interrupted(&self) -> bool {
        self.stopped == Some(Stopped::Shutdown)
    }

    /// A one-line account of a failure, for `lastError`.
    pub fn describe_failure(&self) -> String {
        let what = self.output.argv.join(" ");
        if let Some(e) = &self.spawn_error {
            return format!("{what}: could not start: {e}");
        }
        match (self.stopped, self.output.exit_code, self.output.signal) {
            (Some(Stopped::Timeout), ..) => format!("{what}: timed out"),
            (Some(Stopped::Shutdown), ..) => format!("{what}: interrupted by shutdown"),
            (None, Some(code), _) => format!("{what}: exit code {code}"),
            (None, None, Some(sig)) => format!("{what}: killed by signal {sig}"),
            (None, None, None) => format!("{what}: ended without status"),
        }
    }
}

/// A switch that tells running commands to stop (daemon shutdown after the
/// grace period). `false` until thrown.
pub type KillSwitch = watch::Receiver<bool>;

/// Process groups of commands running now, so that an immediate exit (a
/// second SIGTERM) can still kill them: see [`kill_all_groups`].
static LIVE_GROUPS: LazyLock<Mutex<HashSet<i32>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

fn live_groups() -> std::sync::MutexGuard<'static, HashSet<i32>> {
    // The set is only a list of ids: a panic elsewhere leaves it usable.
    LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs the process group of every command running now. For an
/// immediate exit, when there is no time left to wait for them.
pub fn kill_all_groups() -> usize {
    let groups: Vec<i32> = live_groups().iter().copied().collect();
    for pg in &groups {
        let _ = killpg(Pid::from_raw(*pg), Signal::SIGKILL);
    }
    groups.len()
}

/// Kills the process group if the run is dropped half-way (task aborted,
/// runtime shutting down), so no command outlives the runner.
struct GroupGuard {
    pgid: Option<Pid>,
    registered: Option<i32>,
}

impl GroupGuard {
    fn new(pgid: Option<Pid>) -> GroupGuard {
        let registered = pgid.map(|p| p.as_raw());
        if let Some(pg) = registered {
            live_groups().insert(pg);
        }
        GroupGuard { pgid, registered }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.pgid.take() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if let Some(pg) = self.registered.take() {
            live_groups().remove(&pg);
        }
    }
}

/// The argv actually executed (with the sudo prefix when declared).
pub fn effective_argv(spec: &CommandSpec<'_>, cfg: &RunnerConfig) -> Vec<String> {
    let mut v = Vec::with_capacity(spec.argv.len() + 3);
    if spec.sudo {
        v.push(cfg.sudo_path.clone());
        v.push("-n".to_string());
        v.push("--".to_string());
    }
    v.extend(spec.argv.iter().cloned());
    v
}

/// Runs one command to its end and returns what it produced. Never panics on
/// what the child does; a command that cannot start is reported in
/// [`Executed::spawn_error`].
pub async fn run_command(
    spec: &CommandSpec<'_>,
    cfg: &RunnerConfig,
    mut kill: Option<KillSwitch>,
) -> Executed {
    let argv = effective_argv(spec, cfg);
    let started = Instant::now();
    let mut output = CommandOutput {
        phase: spec.phase,
        argv: argv.iter().map(|a| redact(a)).collect(),
        exit_code: None,
        signal: None,
        timed_out: false,
        duration_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
    };
    let Some((program, args)) = argv.split_first() else {
        return Executed {
            output,
            stopped: None,
            spawn_error: Some("empty command".to_string()),
        };
    };

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", FIXED_PATH)
        .env("LANG", "C")
        .env("REMEDIATE_RUN_ID", spec.run_id)
        .env("REMEDIATE_ATTEMPT", spec.attempt.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            output.duration_ms = elapsed_ms(started);
            return Executed {
                output,
                stopped: None,
                spawn_error: Some(e.to_string()),
            };
        }
    };
    // process_group(0): the group id is the leader's pid.
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let mut guard = GroupGuard::new(pgid);

    let cap = cfg.max_buffer_bytes;
    // Thrown when the group is dead but a pipe is still open (held by a
    // process that left the group): the readers stop with what they have.
    let (stop_tx, stop_rx) = watch::channel(false);
    let out_task = child
        .stdout
        .take()
        .map(|s| tokio::spawn(drain(s, cap, stop_rx.clone())));
    let err_task = child
        .stderr
        .take()
        .map(|s| tokio::spawn(drain(s, cap, stop_rx)));
    let readers = async move {
        let o = match out_task {
            Some(t) => t.await.unwrap_or_default(),
            None => Captured::default(),
        };
        let e = match err_task {
            Some(t) => t.await.unwrap_or_default(),
            None => Captured::default(),
        };
        (o, e)
    };
    tokio::pin!(readers);

    let deadline = tokio::time::sleep(cfg.timeout);
    tokio::pin!(deadline);
    let killed = async {
        match kill.as_mut() {
            Some(k) => {
                if k.wait_for(|v| *v).await.is_err() {
                    // The sender is gone: nobody can ask us to stop any more.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(killed);

    let mut stopped = None;
    let mut status: Option<ExitStatus> = None;
    let mut captured: Option<(Captured, Captured)> = None;

    // Phase 1: the leader exits, or the deadline or the kill switch comes.
    tokio::select! {
        s = child.wait() => { status = s.ok(); }
        _ = &mut deadline => { stopped = Some(Stopped::Timeout); }
        _ = &mut killed => { stopped = Some(Stopped::Shutdown); }
    }
    // Phase 2: the leader is gone; wait for the pipes to close (members of
    // the group may still hold them) until the same deadline.
    if stopped.is_none() {
        tokio::select! {
            c = &mut readers => { captured = Some(c); }
            _ = &mut deadline => { stopped = Some(Stopped::Timeout); }
            _ = &mut killed => { stopped = Some(Stopped::Shutdown); }
        }
    }
    if stopped.is_some() {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGTERM);
        }
        let grace = tokio::time::sleep(cfg.kill_grace);
        tokio::pin!(grace);
        if status.is_none() {
            tokio::select! {
                s = child.wait() => { status = s.ok(); }
                _ = &mut grace => {}
            }
        }
        if captured.is_none() {
            tokio::select! {
                c = &mut readers => { captured = Some(c); }
                _ = &mut grace => {}
            }
        }
    }
    // Whatever is left of the group now (members that ignore SIGTERM, or
    // that outlived a leader which exited by itself) is killed: no process
    // of a command outlives it. The group id cannot be handed to a new
    // process while any member of the group exists, so this reaches only
    // the command's own processes.
    if let Some(pg) = guard.pgid.take()
        && killpg(pg, None).is_ok()
    {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    if status.is_none() {
        status = child.wait().await.ok();
    }
    let (out, err) = match captured {
        Some(c) => c,
        None => {
            let grace = tokio::time::sleep(cfg.kill_grace);
            tokio::select! {
                c = &mut readers => c,
                _ = grace => {
                    let _ = stop_tx.send(true);
                    readers.await
                }
            }
        }
    };

    if let Some(st) = status {
        output.exit_code = st.code();
        output.signal = st.signal();
    }
    output.timed_out = stopped == Some(Stopped::Timeout);
    output.truncated = out.dropped > 0 || err.dropped > 0;
    output.stdout = out.render();
    output.stderr = err.render();
    output.duration_ms = elapsed_ms(started);
    Executed {
        output,
        stopped,
        spawn_error: None,
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What was kept of one stream.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    /// Bytes read past the cap and thrown away.
    dropped: u64,
    read_error: Option<String>,
}

impl Captured {
    fn render(&self) -> String {
        let mut s = redact(&String::from_utf8_lossy(&self.kept));
        if self.dropped > 0 {
            if !s.ends_with('\n') && !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&format!(
                "[remediate: output truncated, {} more bytes not kept]",
                self.dropped
            ));
        }
        if let Some(e) = &self.read_error {
            s.push_str(&format!("\n[remediate: read error: {e}]"));
        }
        s
    }
}

/// Reads a stream to EOF, keeping at most `cap` bytes and discarding the
/// rest, so the writer is never blocked by a full pipe. Stops early when
/// `stop` is thrown.
async fn drain<R: AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut c = Captured {
        kept: Vec::with_capacity(cap.min(64 * 1024)),
        ..Captured::default()
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            biased;
            r = r.read(&mut buf) => r,
            _ = stop.wait_for(|v| *v) => {
                c.read_error = Some("stream still open after the command's group was killed".into());
                break;
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                let chunk = &buf[..n];
                let room = cap.saturating_sub(c.kept.len());
                let keep = room.min(n);
                c.kept.extend_from_slice(&chunk[..keep]);
                c.dropped += (n - keep) as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                c.read_error = Some(e.to_string());
                break;
            }
        }
    }
    c
}

static SECRET_PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // Authorization: Bearer <token>
        (r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]+", "${1}[REDACTED]"),
        // x-remediate-queue-token: <value> (header or env-like form)
        (
            r#"(?i)(x-remediate-queue-token["']?\s*[:=]\s*["']?)[^\s"',;&]+"#,
            "${1}[REDACTED]",
        ),
        // token=..., access_token=..., password=..., passwd=..., secret=...
        (
            r#"(?i)(\b[A-Za-z0-9_\-]*(?:token|password|passwd|secret)=)[^\s"',;&]+"#,
            "${1}[REDACTED]",
        ),
        // JSON-ish "password": "..." / "token": "..."
        (
            r#"(?i)("[A-Za-z0-9_\-]*(?:token|password|passwd|secret)"\s*:\s*")[^"]*"#,
            "${1}[REDACTED]",
        ),
    ]
    .into_iter()
    .filter_map(|(p, r)| Regex::new(p).ok().map(|re| (re, r)))
    .collect()
});

/// Removes secrets (bearer tokens, `token=`, `password=`, the queue token
/// header) from text that is kept or logged.
pub fn redact(text: &str) -> String {
    let mut s = std::borrow::Cow::Borrowed(text);
    for (re, rep) in SECRET_PATTERNS.iter() {
        if re.is_match(&s) {
            s = std::borrow::Cow::Owned(re.replace_all(&s, *rep).into_owned());
        }
    }
    s.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_covers_the_secret_forms() {
        let cases = [
            (
                "Authorization: Bearer abc.DEF-123",
                "Authorization: Bearer [REDACTED]",
            ),
            (
                "curl -H 'x-remediate-queue-token: s3cr3t'",
                "curl -H 'x-remediate-queue-token: [REDACTED]'",
            ),
            ("url?token=abc123&x=1", "url?token=[REDACTED]&x=1"),
            ("password=hunter2 next", "password=[REDACTED] next"),
            ("ACCESS_TOKEN=zzz", "ACCESS_TOKEN=[REDACTED]"),
            (r#"{"password": "p4ss"}"#, r#"{"password": "[REDACTED]"}"#),
            ("nothing to see", "nothing to see"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "input {input:?}");
        }
    }

    #[test]
    fn sudo_prefix_only_when_declared() {
        let argv = vec!["/usr/bin/true".to_string()];
        let cfg = RunnerConfig::default();
        let mut spec = CommandSpec {
            phase: Phase::Command,
            argv: &argv,
            sudo: false,
            run_id: "r",
            attempt: 1,
        };
        assert_eq!(effective_argv(&spec, &cfg), argv);
        spec.sudo = true;
        assert_eq!(
            effective_argv(&spec, &cfg),
            vec!["/usr/bin/sudo", "-n", "--", "/usr/bin/true"]
        );
    }
}
