//! The real server process on 127.0.0.1:0, spoken to over a socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::util::*;

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start() -> Server {
    start_with(&[])
}

/// Starts the server with extra environment variables.
pub fn start_with(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    for t in tokens() {
        toml.push_str(&format!(
            "[[token]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            t.name,
            format!("{:?}", t.role).to_lowercase(),
            t.sha256
        ));
        if let Some(h) = &t.hosts {
            toml.push_str(&format!("hosts = {:?}\n", h.iter().collect::<Vec<_>>()));
        }
    }
    std::fs::write(dir.path().join("tokens.toml"), toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remediate-api"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--tokens")
        .arg(dir.path().join("tokens.toml"))
        .arg("--session-key")
        .arg(dir.path().join("session.key"))
        .args(["--drain-wait-seconds", "1"])
        .env("VPS_REMEDIATE_QUEUE_TOKEN", QUEUE)
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    Server { child, addr, dir }
}

/// One HTTP/1.1 request; returns status and JSON body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp.split(' ').nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn real_server_answers_health_and_runbook_queue_calls() {
    let srv = start();
    let (s, v) = http(&srv.addr, "GET", "/healthz", &[], None);
    assert_eq!((s, v["ok"].clone()), (200, json!(true)));
    let bearer = format!("Bearer {OPS}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    // A run waiting for approval, written by another process's spool handle.
    let spool = remediate_spool::LocalSpool::open(srv.dir.path().join("spool")).unwrap();
    let mut r = new_run("host-a");
    r.approval_required = true;
    let id = spool.enqueue_blocking(r).unwrap().record.run_id;
    let (s, v) = http(
        &srv.addr,
        "GET",
        "/api/ops/remediate-queue?limit=30",
        &auth,
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["snapshot"]["counts"]["approvalPending"], 1);
    let (s, v) = http(
        &srv.addr,
        "GET",
        "/api/ops/remediate-queue?limit=30&dlq=1",
        &auth,
        None,
    );
    assert_eq!(
        (s, v["snapshot"]["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (s, v) = http(
        &srv.addr,
        "POST",
        "/api/ops/remediate-queue",
        &auth,
        Some(&json!({"runId": id.as_str(), "mode": "approve", "reason": "validated in canary"})),
    );
    assert_eq!(
        (s, v["result"]["approvalStatus"].as_str()),
        (200, Some("approved")),
        "{v}"
    );
    let (s, v) = http(
        &srv.addr,
        "POST",
        "/api/ops/remediate-drain",
        &[
            ("x-remediate-queue-token", QUEUE),
            ("content-type", "application/json"),
        ],
        Some(&json!({"limit": 5})),
    );
    assert_eq!((s, v["ok"].clone()), (200, json!(true)), "{v}");
    assert_eq!(v["drained"][0]["runId"], id.as_str());
    let (s, v) = http(
        &srv.addr,
        "POST",
        "/api/ops/remediate-replay",
        &auth,
        Some(&json!({"mode": "dlq-batch", "limit": 3})),
    );
    assert_eq!((s, v["mode"].as_str()), (200, Some("dlq-batch")), "{v}");
    let (s, _) = http(
        &srv.addr,
        "GET",
        "/api/ops/remediate-queue",
        &[("x-forwarded-for", "127.0.0.1")],
        None,
    );
    assert_eq!(s, 401);
}

/// Ctrl-C (SIGINT) or SIGTERM (`systemctl stop`): the server stops
/// accepting, answers the request it is working on, closes idle keep-alive
/// connections and exits 0.
#[test]
fn sigint_and_sigterm_answer_the_request_in_flight_close_idle_connections_and_exit_zero() {
    stops_gracefully_on(nix::sys::signal::Signal::SIGINT);
    stops_gracefully_on(nix::sys::signal::Signal::SIGTERM);
}

fn stops_gracefully_on(sig: nix::sys::signal::Signal) {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let mut srv = start();
    // A keep-alive connection that has had its answer and now idles.
    let mut idle = TcpStream::connect(&srv.addr).unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", srv.addr).unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A drain of a run no executor takes: it waits its second for outcomes.
    let spool = remediate_spool::LocalSpool::open(srv.dir.path().join("spool")).unwrap();
    spool.enqueue_blocking(new_run("host-a")).unwrap();
    let mut busy = TcpStream::connect(&srv.addr).unwrap();
    let body = r#"{"limit":1}"#;
    write!(
        busy,
        "POST /api/ops/remediate-drain HTTP/1.1\r\nhost: {}\r\nx-remediate-queue-token: {QUEUE}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        srv.addr,
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = Pid::from_raw(i32::try_from(srv.child.id()).unwrap());
    kill(pid, sig).unwrap();
    let mut resp = String::new();
    busy.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{sig}: {resp}");
    idle.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "the idle connection is closed"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{sig}: {status}");
    assert!(
        TcpStream::connect(&srv.addr).is_err(),
        "{sig}: still listening"
    );
}
