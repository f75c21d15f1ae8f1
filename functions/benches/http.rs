//! HTTP benchmarks (`make bench`), each figure next to a baseline measured in
//! the same run:
//!
//! - durable enqueue through `POST /api/remediate` (mode execute) with 1 and
//!   32 concurrent keep-alive clients (1: a blocking connection; 32: 32
//!   connections driven by one thread, as a load generator does), against the spool's own enqueue of the
//!   same (host, action) runs from 1 and 32 threads in this process, the
//!   two sides in alternating rounds (the ratio is the median of the
//!   rounds' ratios); p50 and p99 latency of both sides, and the CPU time per run of
//!   the in-process spool, of the server and of the HTTP clients (the
//!   clients share the machine's cores with the server);
//! - the server's time from process start to its first answer on /healthz.
//!
//! Each execute goes through the whole handler: auth, host policy, render,
//! guard, gates, the durable enqueue and the audit line. Hosts are spread so
//! the per-action gates (one active run, cooldown) do not refuse requests.
//! The server runs with `VPS_REMEDIATE_QUEUE_AUTODRAIN=false`: no executor
//! runs here to take the drain request each execute would otherwise make
//! (its host's drain file in `control/`, rewritten in place, not fsynced).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use remediate_spool::{ActivityKind, HostId, LocalSpool, NewRun};

const TOKEN: &str = "bench-admin-token-0123456789";
const ACTIONS: [&str; 4] = [
    "demo-system-info",
    "demo-disk-usage",
    "demo-always-fails",
    "demo-flaky",
];

/// A keep-alive HTTP/1.1 client connection, lean on purpose: at 32 clients
/// the clients share the machine's two cores with the server, so what they
/// spend is taken from it (buffers are reused; a response is parsed as far
/// as its status line and Content-Length).
/// One request, with the bench token and a JSON body, into `out`.
fn write_request(out: &mut Vec<u8>, addr: &str, method: &str, path: &str, body: &str) {
    out.clear();
    write!(
        out,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

/// The status of a response's status line.
fn status_of(line: &str) -> u16 {
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The value of a Content-Length header line, if `line` is one.
fn content_length(line: &str) -> Option<usize> {
    const CL: &str = "content-length:";
    (line.len() > CL.len() && line.as_bytes()[..CL.len()].eq_ignore_ascii_case(CL.as_bytes()))
        .then(|| line[CL.len()..].trim().parse().unwrap())
}

/// The body of an execute of `action` on `host`.
fn execute_body(host: &str, action: &str) -> String {
    format!(
        "{{\"mode\":\"execute\",\"hostId\":\"{host}\",\"actionId\":\"{action}\",\"confirmPhrase\":\"EXECUTE {action}\"}}"
    )
}

struct Conn {
    r: BufReader<TcpStream>,
    addr: String,
    out: Vec<u8>,
    line: String,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s),
            addr: addr.to_string(),
            out: Vec::with_capacity(512),
            line: String::with_capacity(128),
        }
    }

    fn req(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        write_request(&mut self.out, &self.addr, method, path, body);
        self.r.get_mut().write_all(&self.out).unwrap();
        let line = &mut self.line;
        line.clear();
        self.r.read_line(line).unwrap();
        let status = status_of(line);
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(line).unwrap();
            if line == "\r\n" {
                break;
            }
            len = content_length(line).unwrap_or(len);
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).unwrap();
        (status, String::from_utf8(buf).unwrap())
    }
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> (Server, Duration) {
    let tokens = dir.join("tokens.toml");
    let hash = remediate_functions::auth::hash_token(TOKEN);
    std::fs::write(
        &tokens,
        format!("[[token]]\nname = \"bench\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remediate-api"))
        .args(["serve", "--listen", "127.0.0.1:0", "--spool"])
        .arg(dir.join("spool"))
        .arg("--tokens")
        .arg(&tokens)
        .arg("--session-key")
        .arg(dir.join("session.key"))
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("VPS_REMEDIATE_QUEUE_AUTODRAIN", "false")
        .env("VPS_REMEDIATE_MAX_EXECUTE_PER_HOUR", "1000")
        .env("VPS_REMEDIATE_MAX_QUEUE_TOTAL", "10000")
        .env("VPS_REMEDIATE_MAX_QUEUE_PER_HOST", "200")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    // First answer: connect and ask /healthz.
    let mut c = Conn::new(&addr);
    let (s, _) = c.req("GET", "/healthz", "");
    assert_eq!(s, 200);
    (Server { child, addr }, started.elapsed())
}

fn new_run(h: &HostId, action: &str) -> NewRun {
    NewRun {
        idempotent: true,
        risk: Some("low".into()),
        tier: Some("observe".into()),
        ..NewRun::new(h.clone(), action, "bench")
    }
}

/// The (host, action) pairs one enqueue figure covers: `hosts` hosts named
/// `prefix-i`, every bench action on each. HTTP and the in-process baseline
/// enqueue exactly these, split the same way between clients, so both pay
/// for the same directories (a host's runs share directory fsyncs, runs of
/// different hosts cannot).
fn jobs(prefix: &str, hosts: usize) -> Vec<(String, &'static str)> {
    (0..hosts)
        .flat_map(|i| ACTIONS.iter().map(move |a| (format!("{prefix}-{i}"), *a)))
        .collect()
}

/// The spool's own durable enqueue of `work` from `writers` threads in this
/// process; the time it took and each enqueue's latency.
fn spool_enqueue(
    sp: &LocalSpool,
    work: &[(HostId, &str)],
    writers: usize,
) -> (Duration, Vec<Duration>) {
    let per = work.len().div_ceil(writers).max(1);
    let t = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = work
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    let mut l = Vec::new();
                    for (h, a) in chunk {
                        let t = Instant::now();
                        sp.enqueue_blocking(new_run(h, a)).unwrap();
                        l.push(t.elapsed());
                    }
                    l
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    (t.elapsed(), lat)
}

/// Registers `hosts` hosts and dry-runs every bench action on each (setup),
/// and does the same to the baseline's spool, host by host with the
/// server's: the same directories, the same host document and activity
/// file, each rewritten as often. So the two spools' files live side by
/// side on the disk, in the same state. (It matters: ext4 without a
/// journal skips inodes freed in the last minutes when it places a new
/// file, so a block group where the activity file was just replaced four
/// times makes every enqueue there scan further.)
fn prepare(addr: &str, direct: &LocalSpool, prefix: &str, hosts: usize) {
    const DOC: &str = "{\"remediationPolicyOverrides\":{\"executeCooldownMinutes\":0}}";
    let mut c = Conn::new(addr);
    for i in 0..hosts {
        let h = format!("{prefix}-{i}");
        let host = HostId::parse(&h).unwrap();
        direct.ensure_host(&host).unwrap();
        direct
            .put_host_doc_blocking(&host, &serde_json::from_str(DOC).unwrap())
            .unwrap();
        let (s, b) = c.req("PUT", &format!("/api/hosts/{h}"), DOC);
        assert_eq!(s, 200, "{b}");
        for a in ACTIONS {
            direct
                .record_activity_blocking(&host, ActivityKind::DryRun, a)
                .unwrap();
            let (s, b) = c.req(
                "POST",
                "/api/remediate",
                &format!("{{\"mode\":\"dry-run\",\"hostId\":\"{h}\",\"actionId\":\"{a}\"}}"),
            );
            assert_eq!(s, 200, "{b}");
        }
    }
}

/// `work` as executes through HTTP from `clients` keep-alive connections;
/// the time it took and each request's latency. One client is a blocking
/// connection on this thread; more are that many connections driven by one
/// thread (as a load generator such as wrk does), so the clients do not
/// add a thread per connection to the two cores the server runs on.
fn http_enqueue(addr: &str, work: &[(String, &str)], clients: usize) -> (Duration, Vec<Duration>) {
    if clients > 1 {
        return http_enqueue_async(addr, work, clients);
    }
    let mut c = Conn::new(addr);
    let t = Instant::now();
    let mut lat = Vec::with_capacity(work.len());
    for (h, a) in work {
        let body = execute_body(h, a);
        let t = Instant::now();
        let (st, b) = c.req("POST", "/api/remediate", &body);
        lat.push(t.elapsed());
        assert_eq!(st, 200, "{b}");
    }
    (t.elapsed(), lat)
}

fn http_enqueue_async(
    addr: &str,
    work: &[(String, &str)],
    clients: usize,
) -> (Duration, Vec<Duration>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let per = work.len().div_ceil(clients).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        // Connect first: the clock runs for the requests only, as with the
        // blocking client.
        let mut conns = Vec::new();
        for _ in 0..clients {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            conns.push(tokio::io::BufReader::new(s));
        }
        let t = Instant::now();
        let tasks: Vec<_> = work
            .chunks(per)
            .zip(conns)
            .map(|(chunk, mut c)| {
                let chunk: Vec<(String, String)> = chunk
                    .iter()
                    .map(|(h, a)| (h.clone(), a.to_string()))
                    .collect();
                let addr = addr.to_string();
                async move {
                    let (mut out, mut line) = (Vec::with_capacity(512), String::with_capacity(128));
                    let mut l = Vec::new();
                    for (h, a) in chunk {
                        let body = execute_body(&h, &a);
                        write_request(&mut out, &addr, "POST", "/api/remediate", &body);
                        let t = Instant::now();
                        c.get_mut().write_all(&out).await.unwrap();
                        line.clear();
                        c.read_line(&mut line).await.unwrap();
                        let status = status_of(&line);
                        let mut len = 0usize;
                        loop {
                            line.clear();
                            c.read_line(&mut line).await.unwrap();
                            if line == "\r\n" {
                                break;
                            }
                            len = content_length(&line).unwrap_or(len);
                        }
                        let mut buf = vec![0u8; len];
                        c.read_exact(&mut buf).await.unwrap();
                        l.push(t.elapsed());
                        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&buf));
                    }
                    l
                }
            })
            .collect();
        // Spawned on this one-thread runtime: they run concurrently.
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.await.unwrap());
        }
        (t.elapsed(), lat)
    })
}

/// One comparison: the same (host, action) runs enqueued by the spool in
/// this process (into a spool of its own) and through HTTP, at the same
/// concurrency, in alternating rounds (spool first in even rounds, HTTP
/// first in odd ones) so that a slow spell of the machine hits both sides.
/// The ratio reported is the median of the rounds' ratios, with their
/// range: a disk that stalls for a moment spoils one round, not the figure.
struct Compared {
    spool_rate: f64,
    http_rate: f64,
    ratio: f64,
    ratio_range: (f64, f64),
    lat: Vec<Duration>,
    spool_lat: Vec<Duration>,
    spool_cpu: Duration,
    http_cpu: Duration,
    /// This process's CPU time per run while it was the HTTP clients.
    client_cpu: Duration,
}

const ROUNDS: usize = 9;

fn compare(sp: &LocalSpool, server: &Server, prefix: &str, hosts: usize, conc: usize) -> Compared {
    let jobs = jobs(prefix, hosts);
    let direct: Vec<(HostId, &str)> = jobs
        .iter()
        .map(|(h, a)| (HostId::parse(h).unwrap(), *a))
        .collect();
    let per = jobs.len().div_ceil(ROUNDS);
    let (me, pid) = (std::process::id(), server.child.id());
    let (mut st, mut ht) = (Duration::ZERO, Duration::ZERO);
    let (mut sc, mut hc, mut cc) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut lat, mut spool_lat) = (Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    for (r, (d, h)) in direct.chunks(per).zip(jobs.chunks(per)).enumerate() {
        let (mut rs, mut rh) = (Duration::ZERO, Duration::ZERO);
        for spool_side in if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            if spool_side {
                let c = cpu_time(me);
                let (t, l) = spool_enqueue(sp, d, conc);
                sc += cpu_time(me) - c;
                rs = t;
                spool_lat.extend(l);
            } else {
                let (c, mine) = (cpu_time(pid), cpu_time(me));
                let (t, l) = http_enqueue(&server.addr, h, conc);
                hc += cpu_time(pid) - c;
                cc += cpu_time(me) - mine;
                rh = t;
                lat.extend(l);
            }
        }
        // Both sides enqueued the same number of runs this round.
        ratios.push(rs.as_secs_f64() / rh.as_secs_f64());
        st += rs;
        ht += rh;
    }
    ratios.sort_by(f64::total_cmp);
    let n = jobs.len() as f64;
    Compared {
        spool_rate: n / st.as_secs_f64(),
        http_rate: n / ht.as_secs_f64(),
        ratio: ratios[ratios.len() / 2],
        ratio_range: (ratios[0], ratios[ratios.len() - 1]),
        lat,
        spool_lat,
        spool_cpu: sc / jobs.len() as u32,
        http_cpu: hc / jobs.len() as u32,
        client_cpu: cc / jobs.len() as u32,
    }
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis(ticks * 1000 / hz)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-http"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "# HTTP benchmarks\nmachine: {cores} cores; directory: {}\n",
        base.display()
    );

    let mut starts = Vec::new();
    for i in 0..if quick { 3 } else { 11 } {
        let d = base.join(format!("start-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let (_srv, t) = start(&d);
        starts.push(t);
    }
    let start_p50 = pct(&mut starts, 0.5);

    let hosts1 = if quick { 10 } else { 250 };
    let hosts32 = if quick { 40 } else { 1200 };
    let d = base.join("enqueue");
    std::fs::create_dir_all(&d).unwrap();
    let (srv, _) = start(&d);
    let direct = LocalSpool::open(d.join("spool-direct")).unwrap();
    prepare(&srv.addr, &direct, "one", hosts1);
    prepare(&srv.addr, &direct, "many", hosts32);
    // A server that has run for a while has its index built: the queue
    // snapshot builds it now, as the baseline's spool has its hosts ready.
    let (s, b) = Conn::new(&srv.addr).req("GET", "/api/ops/remediate-queue", "");
    assert_eq!(s, 200, "{b}");
    let one = compare(&direct, &srv, "one", hosts1, 1);
    let many = compare(&direct, &srv, "many", hosts32, 32);
    println!("| durable enqueue | runs/s | ratio | p50 | p99 | CPU per run (server) |");
    println!("|---|---|---|---|---|---|");
    for (c, n) in [(one, 1), (many, 32)] {
        let Compared {
            spool_rate,
            http_rate,
            ratio,
            ratio_range: (lo, hi),
            mut lat,
            mut spool_lat,
            spool_cpu,
            http_cpu,
            client_cpu,
        } = c;
        let who = if n == 1 { "1 writer" } else { "32 writers" };
        let clients = if n == 1 { "1 client" } else { "32 clients" };
        println!(
            "| spool in-process, {who} | {spool_rate:.0} | 1.00 (baseline) | {:?} | {:?} | {spool_cpu:?} |",
            pct(&mut spool_lat, 0.5),
            pct(&mut spool_lat, 0.99)
        );
        println!(
            "| HTTP execute, {clients} | {http_rate:.0} | {ratio:.2}x spool (rounds {lo:.2}-{hi:.2}; target >= 0.70) | {:?} | {:?} | {http_cpu:?} (+ clients {client_cpu:?}) |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    println!(
        "\nserver start to first /healthz answer: median {start_p50:?} of {} starts (target <= 50 ms)",
        starts.len()
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&base);
}
