//! `remediate-executor`: parses flags, sets up tracing, loads config, then
//! calls the library. Exit codes: 0 ok, 1 a run did not end well (`once`) or
//! the daemon failed, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use remediate_config::{Layer, Loaded, Loader};
use remediate_executor::config_planner::ConfigPlanner;
use remediate_executor::intake::{self, AwsSettings, StoreMode};
use remediate_executor::notify::{self, Notifier, NotifyOptions, WebhookUrl};
use remediate_executor::queue::{self, StateFilter};
use remediate_executor::{DaemonSettings, Deps};
use remediate_spool::{HostId, LocalSpool, Retention, RunId};

#[derive(Debug, Parser)]
#[command(
    name = "remediate-executor",
    version,
    about = "Claims this host's remediation runs from the spool and runs their guarded commands"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct Common {
    /// Host whose runs to execute (default: VPS_REMEDIATE_HOST_ID, else this
    /// machine's host name).
    #[arg(long)]
    host_id: Option<String>,
    /// Spool directory (default: VPS_REMEDIATE_SPOOL_DIR).
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Config file (default: config/remediate.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon for one host until SIGTERM/SIGINT.
    Run(Common),
    /// Drain up to N due runs and exit: 0 when every run touched succeeded,
    /// was scheduled for retry or waits for approval; 1 otherwise. In AWS
    /// mode it first pulls the host's SQS queue and mirrors the outcomes to
    /// S3 before it exits.
    Once {
        #[command(flatten)]
        common: Common,
        /// Most runs to process (default: OPS_WORKER_DRAIN_LIMIT).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Load and validate the configuration and the catalog; print what is
    /// wrong and exit 2 if anything is.
    ValidateConfig(Common),
    /// Look at and act on this host's queue (like mailq/postqueue).
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// List runs by state, as a table or JSON.
    List {
        #[command(flatten)]
        common: Common,
        /// States to list (default: queued, retry-scheduled, held, running, dlq).
        #[arg(long, value_enum)]
        state: Vec<StateFilter>,
        /// All hosts of the spool, not just this one.
        #[arg(long)]
        all_hosts: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one run with its attempt history.
    Show {
        #[command(flatten)]
        common: Common,
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Make every retry-scheduled run of this host due now.
    Flush(Common),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remediate-executor: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("remediate-executor: {e:#}");
            ExitCode::from(e.downcast_ref::<UsageError>().map_or(1, |_| 2))
        }
    }
}

/// An error that exits 2 (usage or configuration).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Config, spool and host, resolved from flags and settings.
struct Setup {
    loaded: Loaded,
    spool: LocalSpool,
    host: HostId,
}

fn load_config(common: &Common) -> anyhow::Result<Loaded> {
    let loaded = Loader::new()
        .config_file(common.config.clone())
        .load()
        .map_err(|e| UsageError(format!("invalid configuration:\n{e}")))?;
    for w in &loaded.warnings {
        tracing::warn!(
            name = %w.name,
            origin = %w.origin,
            suggestion = ?w.suggestion,
            "unknown setting ignored"
        );
    }
    for name in ["OPS_WORKER_BASE_URL", "OPS_WORKER_TOKEN"] {
        if loaded.layer_of(name).is_some_and(|l| l != Layer::Default) {
            tracing::warn!(
                variable = name,
                "set but unused: the executor reads the spool directly and calls no HTTP API"
            );
        }
    }
    Ok(loaded)
}

fn host_id(common: &Common, loaded: &Loaded) -> anyhow::Result<HostId> {
    let name = match common
        .host_id
        .clone()
        .or_else(|| loaded.settings.executor.host_id.clone())
    {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    HostId::parse(&name).map_err(|e| UsageError(format!("host id: {e}")).into())
}

fn setup(common: &Common) -> anyhow::Result<Setup> {
    let loaded = load_config(common)?;
    let root = common
        .spool
        .clone()
        .unwrap_or_else(|| loaded.settings.spool_dir.clone());
    let host = host_id(common, &loaded)?;
    let spool = LocalSpool::open(&root)
        .with_context(|| format!("opening the spool at {}", root.display()))?;
    Ok(Setup {
        loaded,
        spool,
        host,
    })
}

/// The webhook notifier, when `VPS_REMEDIATE_NOTIFY_WEBHOOK_URL` is set and
/// usable. An unusable URL (https) disables notifications with a warning
/// rather than keeping the executor from running commands.
fn notifier(loaded: &Loaded) -> Option<(Notifier, notify::Sender)> {
    let url = loaded.settings.executor.notify_webhook_url.as_deref()?;
    match WebhookUrl::parse(url) {
        Ok(u) => Some(Notifier::start(u, NotifyOptions::default())),
        Err(e) => {
            tracing::warn!(error = %e, "webhook notifications disabled");
            None
        }
    }
}

fn deps(s: &Setup) -> anyhow::Result<(Deps, Option<notify::Sender>)> {
    let settings = &s.loaded.settings;
    let catalog = settings
        .catalog
        .load()
        .map_err(|e| UsageError(format!("catalog: {e}")))?;
    let planner = ConfigPlanner::new(
        s.loaded.clone(),
        catalog,
        s.spool.clone(),
        Duration::from_secs(5),
    );
    let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
    let ex = &settings.executor;
    let w = &settings.worker;
    let (notifier, sender) = notifier(&s.loaded).unzip();
    let deps = Deps {
        spool: s.spool.clone(),
        host: s.host.clone(),
        planner: Arc::new(planner),
        settings: DaemonSettings {
            concurrency: usize::try_from(ex.concurrency).unwrap_or(1),
            drain_limit: usize::try_from(w.drain_limit).unwrap_or(5),
            rescan_interval: Duration::from_secs(w.interval_seconds),
            idle_rescan_interval: Duration::from_secs(w.idle_interval_seconds),
            max_error_backoff: Duration::from_secs(w.max_backoff_seconds),
            shutdown_grace: Duration::from_secs(ex.shutdown_grace_seconds),
            recovery_interval: Duration::from_secs(60),
            retention: Some(Retention {
                done_max_age: days(ex.retention_done_days),
                dlq_max_age: days(ex.retention_dlq_days),
                ..Retention::default()
            }),
            prune_interval: Duration::from_secs(3600),
            ..DaemonSettings::default()
        },
        events: None,
        notifier,
    };
    Ok((deps, sender))
}

/// How long queued notifications may take to go out when the process ends.
const NOTIFY_FLUSH: Duration = Duration::from_secs(10);

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run(common) => {
            let s = setup(&common)?;
            let (deps, sender) = deps(&s)?;
            let mode = intake::store_mode(&s.loaded.settings.store).map_err(UsageError)?;
            let stopped = match mode {
                StoreMode::Local => remediate_executor::run(deps, shutdown_signal()?).await?,
                StoreMode::Aws(aws) => run_aws(deps, aws).await?,
            };
            if let Some(sender) = sender {
                sender.finish(NOTIFY_FLUSH).await;
            }
            if stopped.interrupted > 0 {
                tracing::warn!(
                    interrupted = stopped.interrupted,
                    "runs interrupted at shutdown"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Once { common, limit } => {
            let s = setup(&common)?;
            let mode = intake::store_mode(&s.loaded.settings.store).map_err(UsageError)?;
            let (deps, sender) = deps(&s)?;
            let limit = limit.unwrap_or(deps.settings.drain_limit);
            if limit == 0 {
                bail!(UsageError("--limit must be at least 1".into()));
            }
            let (kill_tx, kill_rx) = tokio::sync::watch::channel(false);
            let signal = shutdown_signal()?;
            tokio::spawn(async move {
                signal.await;
                let _ = kill_tx.send(true);
            });
            let drained = match mode {
                StoreMode::Local => remediate_executor::drain_once(&deps, limit, kill_rx).await?,
                StoreMode::Aws(aws) => {
                    let remote = aws_remote(&deps.host, &aws).await?;
                    intake::once_with_intake(&deps, remote, limit, kill_rx).await?
                }
            };
            drop(deps);
            if let Some(sender) = sender {
                sender.finish(NOTIFY_FLUSH).await;
            }
            for (id, end) in &drained.runs {
                println!("{id}\t{}", end.label());
            }
            for e in &drained.errors {
                eprintln!("error: {e}");
            }
            Ok(if drained.all_well() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::ValidateConfig(common) => {
            let loaded = load_config(&common)?;
            let catalog = loaded
                .settings
                .catalog
                .load()
                .map_err(|e| UsageError(format!("catalog: {e}")))?;
            let host = host_id(&common, &loaded)?;
            let root = common
                .spool
                .clone()
                .unwrap_or_else(|| loaded.settings.spool_dir.clone());
            // The host document is checked only when the spool exists: the
            // first start creates it.
            if root.exists() {
                let spool = LocalSpool::open(&root)
                    .with_context(|| format!("opening the spool at {}", root.display()))?;
                let planner =
                    ConfigPlanner::new(loaded.clone(), catalog, spool, Duration::from_secs(5));
                use remediate_executor::Planner;
                planner
                    .host_enabled(&host)
                    .map_err(|e| UsageError(e.to_string()))?;
            }
            if let Some(url) = loaded.settings.executor.notify_webhook_url.as_deref()
                && let Err(e) = WebhookUrl::parse(url)
            {
                println!("warning: {e}; webhook notifications will be disabled");
            }
            println!("configuration ok (host {host})");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Queue { cmd } => queue_cmd(cmd).await,
    }
}

async fn queue_cmd(cmd: QueueCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCmd::List {
            common,
            state,
            all_hosts,
            limit,
            json,
        } => {
            let s = setup(&common)?;
            let host = (!all_hosts).then_some(s.host.clone());
            let runs = queue::list(&s.spool, host, &state, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", queue::table(&runs));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Show {
            common,
            run_id,
            json,
        } => {
            let s = setup(&common)?;
            let id = RunId::parse(&run_id).map_err(|e| UsageError(e.to_string()))?;
            let Some(run) = remediate_spool::Store::get(&s.spool, &id).await? else {
                eprintln!("run {id} not found");
                return Ok(ExitCode::from(1));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print!("{}", queue::show(&run));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Flush(common) => {
            let s = setup(&common)?;
            let n = remediate_spool::Store::flush_retries(&s.spool, &s.host).await?;
            println!("{n} retry-scheduled run(s) of {} made due now", s.host);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// AWS mode: the daemon with the SQS intake and the S3 mirror beside it.
async fn run_aws(
    deps: Deps,
    aws: AwsSettings,
) -> anyhow::Result<remediate_executor::daemon::Stopped> {
    let remote = aws_remote(&deps.host, &aws).await?;
    let settings = intake::IntakeSettings {
        pause_after_import: intake::pause_after_import_from_env(),
        ..intake::IntakeSettings::default()
    };
    Ok(intake::run_with_intake(deps, remote, settings, shutdown_signal()?).await?)
}

/// The S3 + SQS store of AWS mode, with this host's queues checked.
#[cfg(feature = "aws")]
async fn aws_remote(
    host: &remediate_spool::HostId,
    aws: &AwsSettings,
) -> anyhow::Result<Arc<dyn intake::RemoteRuns>> {
    let store = remediate_executor::intake_aws::connect(aws)
        .await
        .map_err(|e| UsageError(format!("AWS store: {e}")))?;
    // The template creates the queues; creating them here is for tests and
    // first starts, and may be denied to a least-privilege executor role.
    if let Err(e) = store.ensure_host_queues(host).await {
        tracing::warn!(error = %e, "cannot create or check this host's queues; using them as they are");
    }
    tracing::info!(
        bucket = %aws.bucket,
        queue_prefix = %aws.queue_prefix,
        region = %aws.region,
        "AWS mode: pulling this host's SQS queue into the spool"
    );
    Ok(Arc::new(store))
}

/// A build without the `aws` feature refuses AWS mode with a clear message.
#[cfg(not(feature = "aws"))]
async fn aws_remote(
    _host: &remediate_spool::HostId,
    _aws: &AwsSettings,
) -> anyhow::Result<Arc<dyn intake::RemoteRuns>> {
    Err(UsageError(
        "VPS_REMEDIATE_STORE=aws: this executor was built without the `aws` feature \
         (cargo build -p remediate-executor --features aws)"
            .into(),
    )
    .into())
}

/// Resolves on the first SIGTERM or SIGINT. A second one kills every
/// running command's process group and exits at once (recovery at the next
/// start records those attempts as interrupted).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested; a second signal exits at once");
        let _ = tx.send(());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let killed = remediate_executor::runner::kill_all_groups();
        eprintln!(
            "remediate-executor: second signal: exiting now ({killed} command group(s) killed)"
        );
        std::process::exit(130);
    });
    Ok(async move {
        let _ = rx.await;
    })
}
