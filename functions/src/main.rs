//! `remediate-api`: the HTTP API, served locally or under AWS Lambda.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use remediate_functions::auth::{AuthConfig, TokenFile};
use remediate_functions::{AppState, Metrics, app};
use remediate_spool::LocalSpool;

#[derive(Parser)]
#[command(
    name = "remediate-api",
    version,
    about = "The vps-remediate HTTP API (local server or AWS Lambda)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API over HTTP (the default on a host).
    Serve(ServeArgs),
    /// Print the SHA-256 hash of a token read from stdin, for the token file.
    HashToken,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3035", env = "VPS_REMEDIATE_LISTEN")]
    listen: SocketAddr,
    /// Spool directory (runs, host policies, audit log).
    #[arg(long, default_value = "./var/spool", env = "VPS_REMEDIATE_SPOOL")]
    spool: PathBuf,
    /// Token file (TOML `[[token]]` entries with name, role, sha256, hosts).
    #[arg(
        long,
        env = "VPS_REMEDIATE_TOKENS_FILE",
        default_value = "./var/tokens.toml"
    )]
    tokens: PathBuf,
    /// File holding the session signing key (created when missing).
    #[arg(
        long,
        env = "VPS_REMEDIATE_SESSION_KEY_FILE",
        default_value = "./var/session.key"
    )]
    session_key: PathBuf,
    /// Seconds a drain waits for the executor's outcomes.
    #[arg(long, default_value_t = 20)]
    drain_wait_seconds: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn session_key(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => Ok(k),
        Ok(_) => anyhow::bail!("session key {} is shorter than 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key.to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("reading session key {}", path.display())),
    }
}

fn state(args: &ServeArgs) -> anyhow::Result<Arc<AppState>> {
    let spool = LocalSpool::open(&args.spool)
        .with_context(|| format!("opening spool {}", args.spool.display()))?;
    let tokens = TokenFile::load(&args.tokens)?;
    let queue_token = std::env::var("VPS_REMEDIATE_QUEUE_TOKEN").ok();
    let mut auth = AuthConfig::new(
        tokens.tokens,
        queue_token.as_deref(),
        session_key(&args.session_key)?,
    );
    auth.secure_cookie = !args.listen.ip().is_loopback();
    Ok(Arc::new(AppState {
        store: Arc::new(spool),
        auth,
        drain_wait: Duration::from_secs(args.drain_wait_seconds),
        notify_url: std::env::var("VPS_REMEDIATE_NOTIFY_WEBHOOK_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        metrics: Metrics::default(),
    }))
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "lambda")]
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda_main().await;
    }
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::HashToken) => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
            println!("{}", remediate_functions::auth::hash_token(s.trim()));
            Ok(())
        }
        Some(Cmd::Serve(args)) => serve(args).await,
        None => {
            let args = ServeArgs::try_parse_from(["serve"]).map_err(|e| anyhow::anyhow!("{e}"));
            serve(args?).await
        }
    }
}

impl ServeArgs {
    fn try_parse_from<I: IntoIterator<Item = &'static str>>(
        it: I,
    ) -> Result<ServeArgs, clap::Error> {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: ServeArgs,
        }
        Wrap::try_parse_from(it).map(|w| w.a)
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format == "json");
    let st = state(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, spool = %args.spool.display(), "remediate-api listening");
    println!("remediate-api listening on http://{addr}");
    axum::serve(
        listener,
        app(st).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

#[cfg(feature = "lambda")]
async fn lambda_main() -> anyhow::Result<()> {
    init_tracing(true);
    let args = ServeArgs::try_parse_from([
        "serve",
        "--spool",
        "/tmp/spool",
        "--session-key",
        "/tmp/session.key",
    ])
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let st = state(&args)?;
    lambda_http::run(app(st))
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
