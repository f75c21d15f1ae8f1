//! `remediate-api`: the HTTP API, served locally or under AWS Lambda.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use remediate_config::{Loaded, Loader, StoreKind};
use remediate_functions::app;
use remediate_functions::startup::{self, SessionKeySource, StartOptions};

/// Seconds a drain waits for the executor's outcomes, unless told otherwise.
const DEFAULT_DRAIN_WAIT_SECONDS: u64 = 20;

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
    /// Token file: TOML `[[token]]` entries with name, role, sha256 and optional hosts
    /// [default: VPS_REMEDIATE_TOKENS_FILE, else ./var/tokens.toml].
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// File holding the session signing key (created when missing; not used
    /// when VPS_REMEDIATE_SESSION_KEY is set).
    #[arg(long, default_value = "./var/session.key")]
    session_key: PathBuf,
    /// Seconds a drain waits for the executor's outcomes.
    #[arg(long, default_value_t = DEFAULT_DRAIN_WAIT_SECONDS)]
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

// One thread for the main runtime: with the local store it only accepts
// connections (each is served on a thread of its own, see `server`); with
// the AWS store its handlers wait on the network; Lambda runs one request
// at a time anyway.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if startup::under_lambda() {
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
    let opts = StartOptions {
        tokens: args
            .tokens
            .clone()
            .unwrap_or_else(|| loaded.settings.tokens_file.clone()),
        session_key: SessionKeySource::SettingOrFile(args.session_key.clone()),
        spool_dir: spool_dir.clone(),
        drain_wait: Duration::from_secs(args.drain_wait_seconds),
        secure_cookie: !listen.ip().is_loopback(),
    };
    let store = loaded.settings.store.kind;
    let st = startup::build_state(loaded, opts).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = store.as_str(), spool = %spool_dir.display(), "remediate-api listening");
    println!("remediate-api listening on http://{addr}");
    let stop = stop_signal()?;
    match store {
        StoreKind::Local => remediate_functions::server::serve(listener, app(st), stop).await?,
        StoreKind::Aws => {
            axum::serve(
                listener,
                app(st).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await?
        }
    }
    Ok(())
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM (`systemctl stop`,
/// the dev script's stop): the server then stops accepting and answers the
/// requests in progress before it exits.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    })
}

/// Under Lambda: the same router, with the store of `VPS_REMEDIATE_STORE`
/// (the S3/SQS store in production; a local spool under /tmp is only useful
/// for tests), the session key from `VPS_REMEDIATE_SESSION_KEY`, and the
/// token file under `LAMBDA_TASK_ROOT` when its path is relative.
#[cfg(feature = "lambda")]
async fn lambda_main() -> anyhow::Result<()> {
    init_tracing(true);
    let loaded = load_config(None)?;
    let task_root = std::env::var_os(startup::LAMBDA_TASK_ROOT_ENV).map(PathBuf::from);
    let opts = StartOptions {
        tokens: startup::task_relative(&loaded.settings.tokens_file, task_root.as_deref()),
        session_key: SessionKeySource::Setting,
        spool_dir: startup::lambda_spool_dir(&loaded)?,
        drain_wait: Duration::from_secs(DEFAULT_DRAIN_WAIT_SECONDS),
        // Function URLs and API Gateway answer over HTTPS only.
        secure_cookie: true,
    };
    tracing::info!(
        store = loaded.settings.store.kind.as_str(),
        "remediate-api under Lambda"
    );
    let st = startup::build_state(loaded, opts).await?;
    remediate_functions::lambda::run(app(st)).await
}

#[cfg(not(feature = "lambda"))]
async fn lambda_main() -> anyhow::Result<()> {
    anyhow::bail!(
        "AWS_LAMBDA_RUNTIME_API is set, but this binary was built without the Lambda entry (feature lambda)"
    )
}
