//! A moto server (S3 + SQS stand-in) for this test process: started once on
//! a free loopback port, stopped when the process ends.
//!
//! It runs through `moto_serial.py`, which makes moto's conditional PutObject
//! atomic (moto checks `If-Match` and writes later without a lock; S3 does
//! both in one step): see that file. moto also never answers 409
//! ConditionalRequestConflict, so the store's 409 retry is unit-tested.
//!
//! moto runs under a small `sh` that holds a pipe from this process on its
//! stdin: when this process exits (normally, by panic or by SIGKILL) the
//! pipe closes and the shell kills moto, so no server is left behind even
//! though a `static` is never dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use remediate_spool::aws::{S3SqsConfig, S3SqsStore};

#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    /// The shell; its stdin is the pipe whose end stops moto.
    child: Mutex<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        drop(c.stdin.take());
        let _ = c.wait();
    }
}

fn moto_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/moto-venv/bin/moto_server");
    p.exists().then_some(p)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One plain HTTP request; returns the status code.
pub fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))
}

fn start(bin: &Path) -> Moto {
    let log = std::env::temp_dir().join(format!("moto-{}.log", std::process::id()));
    // The Python of moto's venv runs moto with the serialising patch.
    let venv_python = bin.with_file_name("python");
    let python = if venv_python.exists() {
        venv_python
    } else {
        PathBuf::from("python3")
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/store/moto_serial.py");
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$3" -H 127.0.0.1 -p "$1" </dev/null >"$2" 2>&1 & m=$!; cat >/dev/null; kill $m 2>/dev/null; wait $m"#)
            .arg(&python)
            .arg(port.to_string())
            .arg(&log)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sh for moto_server");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Mutex::new(child),
        };
        // Readiness, not a timing assertion: give up after a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http(port, "GET", "/moto-api/").is_ok_and(|c| c == 200) {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    out.contains("moto_serial: S3 PutObject check-and-write serialised"),
                    "moto started without the serialising patch:\n{out}"
                );
                return moto;
            }
            let exited = moto
                .child
                .lock()
                .map(|mut c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(moto);
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    panic!("moto_server did not start (log {}):\n{tail}", log.display());
}

/// The process's moto, or None when it is not installed and
/// `VPS_REMEDIATE_SKIP_AWS_TESTS=1` says to skip (loudly).
pub fn moto() -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| match moto_bin() {
        Some(bin) => Some(start(&bin)),
        None if std::env::var("VPS_REMEDIATE_SKIP_AWS_TESTS").as_deref() == Ok("1") => {
            eprintln!(
                "\n*** SKIPPING the S3/SQS store tests: moto_server not found \
                 (VPS_REMEDIATE_SKIP_AWS_TESTS=1) ***\n"
            );
            None
        }
        None => panic!(
            "moto_server not found: run `make moto-venv` (installs target/moto-venv), \
             set MOTO_SERVER_BIN, or set VPS_REMEDIATE_SKIP_AWS_TESTS=1 to skip the AWS tests"
        ),
    })
    .as_ref()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// A store on a fresh bucket with a fresh queue prefix, so tests sharing one
/// moto never see each other's objects or queues.
pub async fn fresh_store() -> Option<S3SqsStore> {
    let m = moto()?;
    let cfg = S3SqsConfig {
        bucket: unique("t-"),
        queue_prefix: unique("q"),
        region: "us-east-1".into(),
        endpoint_url: Some(m.endpoint.clone()),
    };
    Some(store_for(cfg).await)
}

/// Another store (another writer) on the same bucket and queues.
pub async fn store_for(cfg: S3SqsConfig) -> S3SqsStore {
    let s = S3SqsStore::connect_with_static_credentials(cfg.clone(), "test", "test")
        .await
        .expect("connect to moto");
    match s
        .s3_client()
        .create_bucket()
        .bucket(&cfg.bucket)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) => {
            let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
            assert!(
                msg.contains("BucketAlreadyOwnedByYou"),
                "create bucket: {msg}"
            );
        }
    }
    s
}
