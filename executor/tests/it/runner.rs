//! The command runner against real child processes.

use std::time::Duration;

use remediate_executor::runner::{CommandSpec, RunnerConfig, Stopped, run_command};
use remediate_spool::Phase;

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn spec(argv: &[String]) -> CommandSpec<'_> {
    CommandSpec {
        phase: Phase::Command,
        argv,
        sudo: false,
        run_id: "run-test-1",
        attempt: 2,
    }
}

fn cfg(timeout: Duration) -> RunnerConfig {
    RunnerConfig {
        timeout,
        kill_grace: Duration::from_millis(300),
        max_buffer_bytes: 64 * 1024,
        ..RunnerConfig::default()
    }
}

/// Whether a pid is gone or a zombie (dead, not yet reaped by its new parent).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X')
            })
            .unwrap_or(false),
    }
}

/// Waits (bounded) for the kernel to finish killing `pid`; the assertion is
/// on the outcome, not on how long it took.
async fn wait_dead(pid: i32) -> bool {
    for _ in 0..200 {
        if dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    dead(pid)
}

#[tokio::test]
async fn success_keeps_output_and_exit_code() {
    let a = argv(&["/bin/sh", "-c", "echo out; echo err >&2; exit 0"]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(r.output.exit_code, Some(0));
    assert_eq!(r.output.stdout, "out\n");
    assert_eq!(r.output.stderr, "err\n");
    assert!(!r.output.truncated && !r.output.timed_out);
    assert_eq!(r.output.argv, a);
}

#[tokio::test]
async fn failure_reports_exit_code() {
    let a = argv(&["/bin/sh", "-c", "exit 7"]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(!r.success());
    assert_eq!(r.output.exit_code, Some(7));
    assert!(r.describe_failure().ends_with("exit code 7"));
}

#[tokio::test]
async fn argv_is_never_given_to_a_shell() {
    // Regression for the seed's prefix allowlist: `a && b` must be one word.
    let a = argv(&[
        "/bin/echo",
        "hello && touch /tmp/should-not-exist-remediate",
    ]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success());
    assert_eq!(
        r.output.stdout,
        "hello && touch /tmp/should-not-exist-remediate\n"
    );
    assert!(!std::path::Path::new("/tmp/should-not-exist-remediate").exists());
}

#[tokio::test]
async fn missing_executable_is_a_spawn_error() {
    let a = argv(&["/nonexistent/remediate-nothing"]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(!r.success());
    assert!(r.spawn_error.is_some());
    assert!(r.describe_failure().contains("could not start"));
}

#[tokio::test]
async fn environment_is_clean() {
    // The test process has plenty of variables (HOME, CARGO_*, ...) that
    // would leak into the child if the environment were not cleared.
    assert!(std::env::vars().count() > 4);
    let a = argv(&["/usr/bin/env"]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success(), "{r:?}");
    let mut lines: Vec<&str> = r.output.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "LANG=C",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "REMEDIATE_ATTEMPT=2",
            "REMEDIATE_RUN_ID=run-test-1",
        ]
    );
}

#[tokio::test]
async fn runs_in_its_own_process_group() {
    let a = argv(&["/bin/sh", "-c", "echo $$; ps -o pgid= -p $$"]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success(), "{r:?}");
    let mut it = r.output.stdout.split_whitespace();
    let pid = it.next().expect("pid");
    let pgid = it.next().expect("pgid");
    assert_eq!(pid, pgid, "the command leads its own group");
    let ours = nix::unistd::getpgrp().as_raw().to_string();
    assert_ne!(pgid, ours);
}

#[tokio::test]
async fn timeout_kills_a_group_that_ignores_sigterm_and_its_grandchildren() {
    // The shell ignores SIGTERM, and so do the children it starts (an
    // ignored disposition survives exec); one grandchild even closes its
    // pipes, so only the group kill can reach it.
    let script = r#"trap '' TERM
sleep 1000 &
echo $!
sleep 1000 >/dev/null 2>&1 </dev/null &
echo $!
wait"#;
    let a = argv(&["/bin/sh", "-c", script]);
    let r = run_command(&spec(&a), &cfg(Duration::from_millis(500)), None).await;
    assert_eq!(r.stopped, Some(Stopped::Timeout));
    assert!(r.output.timed_out);
    assert!(!r.success());
    assert_eq!(r.output.signal, Some(9), "the leader needed SIGKILL: {r:?}");
    let pids: Vec<i32> = r
        .output
        .stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{r:?}");
    for pid in pids {
        assert!(
            wait_dead(pid).await,
            "grandchild {pid} survived the timeout"
        );
    }
}

#[tokio::test]
async fn leftover_group_members_are_killed_after_the_leader_exits() {
    let a = argv(&[
        "/bin/sh",
        "-c",
        "sleep 1000 >/dev/null 2>&1 </dev/null & echo $!",
    ]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success(), "{r:?}");
    let pid: i32 = r.output.stdout.trim().parse().expect("pid");
    assert!(
        wait_dead(pid).await,
        "background process {pid} outlived its command"
    );
}

#[tokio::test]
async fn fifty_megabytes_are_capped_without_deadlock() {
    // 50 MB on stderr first, then on stdout: a runner reading one stream at
    // a time would block forever on the other's full pipe.
    let script = "head -c 52428800 /dev/zero | tr '\\0' e >&2; head -c 52428800 /dev/zero | tr '\\0' o; echo tail";
    let a = argv(&["/bin/sh", "-c", script]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(120)), None).await;
    assert!(r.success(), "{:?}", r.spawn_error);
    assert!(r.output.truncated);
    let cap = 64 * 1024;
    assert!(r.output.stdout.starts_with(&"o".repeat(cap)));
    assert!(r.output.stderr.starts_with(&"e".repeat(cap)));
    assert!(r.output.stdout.len() < cap + 200);
    assert!(r.output.stderr.len() < cap + 200);
    assert!(
        r.output.stdout.ends_with(&format!(
            "[remediate: output truncated, {} more bytes not kept]",
            52428800 + 5 - cap
        )),
        "{}",
        &r.output.stdout[cap..]
    );
    assert!(r.output.stderr.contains("output truncated"));
}

#[tokio::test]
async fn secrets_are_redacted_from_output_and_argv() {
    let a = argv(&[
        "/bin/sh",
        "-c",
        "echo 'Authorization: Bearer abc.def'; echo 'x-remediate-queue-token: qtok' >&2; echo url?token=t0k\\&password=pw; echo done",
        "password=inargv",
    ]);
    let r = run_command(&spec(&a), &cfg(Duration::from_secs(30)), None).await;
    assert!(r.success(), "{r:?}");
    let all = format!(
        "{} {} {:?}",
        r.output.stdout, r.output.stderr, r.output.argv
    );
    for secret in ["abc.def", "qtok", "t0k", "=pw", "inargv"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    assert!(r.output.stdout.contains("Bearer [REDACTED]"));
    assert!(
        r.output
            .stderr
            .contains("x-remediate-queue-token: [REDACTED]")
    );
    assert!(r.output.stdout.contains("done"));
}

#[tokio::test]
async fn kill_switch_interrupts_a_running_command() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let a = argv(&["/bin/sh", "-c", "echo started; exec sleep 1000"]);
    let cfg = cfg(Duration::from_secs(600));
    let task = tokio::spawn(async move {
        let a = a;
        run_command(&spec(&a), &cfg, Some(rx)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(true).expect("send");
    let r = task.await.expect("join");
    assert_eq!(r.stopped, Some(Stopped::Shutdown));
    assert!(r.interrupted());
    assert!(!r.output.timed_out);
    assert_eq!(r.output.signal, Some(15));
}

#[tokio::test]
async fn sudo_prefix_is_applied_when_declared() {
    // A fake sudo records its argv, so the test does not need root.
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("sudo");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$*\"\n").expect("write");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let a = argv(&["/usr/bin/id", "-u"]);
    let mut s = spec(&a);
    s.sudo = true;
    let mut c = cfg(Duration::from_secs(30));
    c.sudo_path = fake.to_string_lossy().into_owned();
    let mut r = run_command(&s, &c, None).await;
    // Another test thread forking while the script was open for writing
    // makes exec fail with ETXTBSY for a moment.
    for _ in 0..50 {
        if !r.spawn_error.as_deref().is_some_and(|e| e.contains("busy")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = run_command(&s, &c, None).await;
    }
    assert!(r.success(), "{r:?}");
    assert_eq!(r.output.stdout, "-n -- /usr/bin/id -u\n");
    assert_eq!(r.output.argv[1..], ["-n", "--", "/usr/bin/id", "-u"]);
}
