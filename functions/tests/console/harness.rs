//! The pieces the console tests need: the real API server and executor on a
//! temp spool, a plain HTTP client, and chromedriver driving headless
//! Debian Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use remediate_functions::auth::hash_token;
use serde_json::{Value, json};

pub const ADMIN: &str = "console-admin-token-6b1f0e";
pub const VIEWER: &str = "console-viewer-token-93ac2d";
/// An ops token limited to `other-host`.
pub const OTHER: &str = "console-other-host-token-51d7";

/// Kills the child when dropped (SIGTERM first, so the executor exits cleanly).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

pub struct Server {
    pub addr: String,
    pub dir: tempfile::TempDir,
    _child: Proc,
}

/// Starts `remediate-api serve` on 127.0.0.1:0 with a temp spool, a token
/// file and the demo catalog.
pub fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[token]]\nname = \"admin\"\nrole = \"admin\"\nsha256 = {:?}\n\
         [[token]]\nname = \"viewer\"\nrole = \"viewer\"\nsha256 = {:?}\n\
         [[token]]\nname = \"other\"\nrole = \"ops\"\nsha256 = {:?}\nhosts = [\"other-host\"]\n",
        hash_token(ADMIN),
        hash_token(VIEWER),
        hash_token(OTHER)
    );
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
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    Server {
        addr,
        dir,
        _child: Proc(child),
    }
}

/// The directory of the workspace's binaries, next to this test's own.
fn target_profile_dir() -> PathBuf {
    // Tests run from target/<profile>/deps.
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// Starts the real executor for one host on the server's spool.
pub fn start_executor(srv: &Server, host: &str) -> Proc {
    let bin = target_profile_dir().join("remediate-executor");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p remediate-executor`)",
        bin.display()
    );
    let child = Command::new(bin)
        .args(["run", "--host-id", host, "--spool"])
        .arg(srv.dir.path().join("spool"))
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Where screenshots go: `<target>/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = target_profile_dir()
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
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
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A bearer-token client of the JSON API.
pub struct Api<'a> {
    pub addr: &'a str,
    pub token: &'a str,
}

impl Api<'_> {
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bearer = format!("Bearer {}", self.token);
        let r = http(
            self.addr,
            method,
            path,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body.as_ref(),
        );
        (r.status, r.json())
    }

    /// Registers a host with a policy document.
    pub fn host(&self, host: &str, doc: Value) {
        let (s, v) = self.call("PUT", &format!("/api/hosts/{host}"), Some(doc));
        assert_eq!(s, 200, "register {host}: {v}");
    }

    /// Dry-run then execute an action; returns the new run's id.
    pub fn execute(&self, host: &str, action: &str, params: Value) -> String {
        let (s, v) = self.call(
            "POST",
            "/api/remediate",
            Some(json!({"mode": "dry-run", "hostId": host, "actionId": action, "params": params})),
        );
        assert_eq!(s, 200, "dry-run {action}: {v}");
        let (s, v) = self.call(
            "POST",
            "/api/remediate",
            Some(
                json!({"mode": "execute", "hostId": host, "actionId": action, "params": params,
                "confirmPhrase": format!("EXECUTE {action}")}),
            ),
        );
        assert_eq!(s, 200, "execute {action}: {v}");
        v["run"]["runId"].as_str().unwrap().to_string()
    }

    pub fn run(&self, id: &str) -> Value {
        let (s, v) = self.call("GET", &format!("/api/ops/runs/{id}"), None);
        assert_eq!(s, 200, "{v}");
        v["run"].clone()
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver and headless Chromium, with a fresh profile.
pub struct Browser {
    pub client: Client,
    /// chromedriver's process group, which holds the browser too.
    driver_group: i32,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

/// Starts chromedriver and a Chromium session. Fails (never skips) when
/// either is missing.
pub async fn start_browser() -> Browser {
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| which("chromedriver"))
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found: the console's browser tests need Debian's Chromium and \
                 ChromeDriver (`apt-get install -y chromium chromium-driver`), or CHROMEDRIVER \
                 set to the driver's path"
            )
        });
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| which("chromium"))
        .unwrap_or_else(|| {
            panic!(
                "chromium not found: `apt-get install -y chromium chromium-driver`, or CHROMIUM \
                 set to the browser's path"
            )
        });
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    // Its own process group: the browser it starts is in it too, so a
    // failed test (no `close()`) still ends the browser (see `Browser`).
    let child = Command::new(&driver)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
    let driver_group = child.id() as i32;
    let driver_proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver never listened on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("chromedriver would not start Chromium: {e}"));
    Browser {
        client,
        driver_group,
        _driver: driver_proc,
        _profile: profile,
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver_group),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn save(path: &Path, png: &[u8]) {
    std::fs::write(path, png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        path.display()
    );
}
