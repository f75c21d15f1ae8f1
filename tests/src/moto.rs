//! A moto server (S3 + SQS stand-in) for the AWS-mode tests: started on a
//! free loopback port, killed (with its process group) when dropped.
//!
//! The binary is `MOTO_SERVER_BIN`, else `target/moto-venv/bin/moto_server`
//! under the workspace root (`make moto-venv` installs it). When neither
//! exists the test fails with a message saying how to install it, unless
//! `VPS_REMEDIATE_SKIP_AWS_TESTS=1`, where it is skipped loudly.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn workspace_root() -> PathBuf {
    // tests/ is one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where moto_server is, or why it is not there.
pub fn moto_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("MOTO_SERVER_BIN={} is not a file", p.display()))
        };
    }
    let p = workspace_root().join("target/moto-venv/bin/moto_server");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run `make moto-venv` (pip install 'moto[server]') or set MOTO_SERVER_BIN",
            p.display()
        ))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Moto {
    /// Starts moto, or returns None (after saying so on stderr) when it is
    /// missing and `VPS_REMEDIATE_SKIP_AWS_TESTS=1`. Panics when it is
    /// missing otherwise, or when it does not come up.
    pub fn start_or_skip(test: &str) -> Option<Moto> {
        let bin = match moto_bin() {
            Ok(b) => b,
            Err(why) => {
                if std::env::var("VPS_REMEDIATE_SKIP_AWS_TESTS").as_deref() == Ok("1") {
                    eprintln!("SKIPPED {test}: moto is not available: {why}");
                    return None;
                }
                panic!(
                    "{test}: moto is not available: {why} (set VPS_REMEDIATE_SKIP_AWS_TESTS=1 to skip the AWS tests)"
                );
            }
        };
        Some(Moto::start(&bin).unwrap_or_else(|e| panic!("{test}: starting moto: {e}")))
    }

    fn start(bin: &std::path::Path) -> Result<Moto, String> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("moto.log");
        let mut last = String::new();
        // A port found free may be taken before moto binds it: try a few.
        for _ in 0..5 {
            let port = free_port().map_err(|e| e.to_string())?;
            let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut child = Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
            // A hang guard for a server that never answers, not a timing
            // assertion: moto answers in about a second.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("moto exited with {status}: {}", read(&log));
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Moto {
                        child,
                        port,
                        log,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("moto did not listen on {port}: {}", read(&log)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto's own log (for failure messages).
    pub fn log(&self) -> String {
        read(&self.log)
    }
}

fn read(p: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    let start = s.len().saturating_sub(4000);
    s.get(start..).unwrap_or_default().to_string()
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Its whole process group: moto may start helpers.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
