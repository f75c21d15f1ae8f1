//! `remediate-api`: the HTTP API, served locally or under AWS Lambda.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use remediate_config::{Loaded, Loader};
use remediate_functions::auth::{AuthConfig, TokenFile};
use remediate_functions::{AppState, Metrics, app};
use remediate_spool::LocalSpool;

#[derive(Parser)]
#[command(
    name = "remediate-api",
    version,
    about = "The vps-remediate HTTP API (local server, or AWS Lambda when AWS_LAMBDA_RUNTIME_API is set)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API over HTTP (the default).
    Serve(ServeArgs),
    /// Print the SHA-256 hash of a token read from stdin, for the token file.
    HashToken,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Address to listen on [default: VPS_REMEDIATE_LISTEN_ADDR, else 127.0.0.1:3035].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Spool directory: runs, host policies, audit log [default: VPS_REMEDIATE_SPOOL_DIR].
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Config file [default: config/remediate.toml when present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Token file: TOML `[[token]]` entries with name, role, sha256 and optional hosts.
    #[arg(long, default_value = "./var/tokens.toml")]
    tokens: PathBuf,
    /// File holding the session signing key (created when missing).
    #[arg(long, default_value = "./var/session.key")]
    session_key: PathBuf,
    /// Seconds a drain waits for the executor's outcomes.
    #[arg(long, default_value_t = 20)]
    drain_wait_seconds: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

impl ServeArgs {
    fn parse_from_args(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: ServeArgs,
        }
        Wrap::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|w| w.a)
    }
}

fn session_key(path: &Path) -> anyhow::Result<Vec<u8>> {
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

/// Loads the configuration; every problem is printed, one per line.
fn load_config(path: Option<PathBuf>) -> anyhow::Result<Loaded> {
    let loaded = Loader::new().config_file(path).load().map_err(|e| {
        for err in e.errors() {
            eprintln!("config error: {err}");
        }
        anyhow::anyhow!("the configuration is invalid ({} problem(s))", e.len())
    })?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded)
}

fn state(
    args: &ServeArgs,
    loaded: Loaded,
    listen: SocketAddr,
    spool_dir: &Path,
) -> anyhow::Result<Arc<AppState>> {
    let spool = LocalSpool::open(spool_dir)
        .with_context(|| format!("opening spool {}", spool_dir.display()))?;
    let tokens = TokenFile::load(&args.tokens)?;
    let catalog = loaded
        .settings
        .catalog
        .load()
        .map_err(|e| anyhow::anyhow!("action catalog: {e}"))?;
    let queue_token = loaded
        .settings
        .queue_token
        .as_ref()
        .map(|s| s.expose().to_string());
    let mut auth = AuthConfig::new(
        tokens.tokens,
        queue_token.as_deref(),
        session_key(&args.session_key)?,
    );
    auth.secure_cookie = !listen.ip().is_loopback();
    let notify_url = loaded
        .settings
        .executor
        .notify_webhook_url
        .clone()
        .filter(|u| !u.is_empty());
    Ok(Arc::new(AppState {
        store: Arc::new(spool),
        loaded: Arc::new(loaded),
        catalog: Arc::new(catalog),
        auth,
        drain_wait: Duration::from_secs(args.drain_wait_seconds),
        notify_url,
        metrics: Metrics::default(),
        effective_cache: Default::default(),
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
        None => serve(ServeArgs::parse_from_args(&[]).map_err(|e| anyhow::anyhow!("{e}"))?).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format == "json");
    let loaded = load_config(args.config.clone())?;
    let listen = args.listen.unwrap_or(loaded.settings.listen_addr);
    let spool_dir = args
        .spool
        .clone()
        .unwrap_or_else(|| loaded.settings.spool_dir.clone());
    let st = state(&args, loaded, listen, &spool_dir)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, spool = %spool_dir.display(), "remediate-api listening");
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

/// Under Lambda: the same router. Until the S3/SQS store lands, the spool is
/// local to the function (`VPS_REMEDIATE_SPOOL_DIR`, default /tmp/spool),
/// which is only useful for tests.
#[cfg(feature = "lambda")]
async fn lambda_main() -> anyhow::Result<()> {
    init_tracing(true);
    let args = ServeArgs::parse_from_args(&["--session-key", "/tmp/session.key"])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = load_config(None)?;
    let spool_dir = std::env::var_os("VPS_REMEDIATE_SPOOL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/spool"));
    let listen = loaded.settings.listen_addr;
    let st = state(&args, loaded, listen, &spool_dir)?;
    lambda_http::run(app(st))
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
