//! Startup shared by the local server and the Lambda entry: which store the
//! router gets, where the session signing key and the token file come from.
//!
//! - The store follows `VPS_REMEDIATE_STORE`: `local` opens the spool
//!   directory; `aws` connects the S3 + SQS store (only in a binary built
//!   with the `aws` feature; without it, startup fails and says so).
//! - Under Lambda (`AWS_LAMBDA_RUNTIME_API` set) the session key must come
//!   from `VPS_REMEDIATE_SESSION_KEY`: nothing is written outside `/tmp`,
//!   and every instance of the function must sign cookies with one key. A
//!   relative token file path is resolved under `LAMBDA_TASK_ROOT`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use remediate_config::{Layer, Loaded, Settings, StoreKind};
use remediate_spool::{LocalSpool, Store};

use crate::auth::{AuthConfig, TokenFile};
use crate::{AppState, Metrics};

/// Set by the Lambda service: the address of the runtime API.
pub const LAMBDA_RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";
/// Set by the Lambda service: where the function's package is unpacked.
pub const LAMBDA_TASK_ROOT_ENV: &str = "LAMBDA_TASK_ROOT";
/// The local spool of a Lambda function when none is configured. It is only
/// useful for tests: each instance has its own `/tmp`.
pub const LAMBDA_DEFAULT_SPOOL: &str = "/tmp/spool";

/// Whether this process runs under AWS Lambda.
pub fn under_lambda() -> bool {
    std::env::var_os(LAMBDA_RUNTIME_API_ENV).is_some()
}

/// The store the settings ask for. `spool_dir` is used by the local store
/// only.
pub async fn build_store(settings: &Settings, spool_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    match settings.store.kind {
        StoreKind::Local => {
            let spool = LocalSpool::open(spool_dir)
                .with_context(|| format!("opening spool {}", spool_dir.display()))?;
            Ok(Arc::new(spool))
        }
        StoreKind::Aws => aws_store(settings).await,
    }
}

#[cfg(feature = "aws")]
async fn aws_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    use remediate_spool::aws::{S3SqsConfig, S3SqsStore};
    let st = &settings.store;
    let bucket = st.s3_bucket.clone().ok_or_else(|| {
        anyhow::anyhow!("VPS_REMEDIATE_S3_BUCKET is required when VPS_REMEDIATE_STORE=aws")
    })?;
    let config = S3SqsConfig {
        bucket: bucket.clone(),
        queue_prefix: st.sqs_queue_prefix.clone(),
        region: st.aws_region.clone(),
        endpoint_url: st.aws_endpoint_url.clone(),
    };
    let store = S3SqsStore::connect(config).await.with_context(|| {
        format!(
            "connecting the S3/SQS store (bucket {bucket}, region {})",
            st.aws_region
        )
    })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "aws"))]
async fn aws_store(_settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::bail!(
        "VPS_REMEDIATE_STORE=aws, but this binary was built without AWS support (feature aws)"
    )
}

/// A path from the configuration, resolved under the Lambda task root when
/// relative and a task root is given; otherwise unchanged.
pub fn task_relative(path: &Path, task_root: Option<&Path>) -> PathBuf {
    match task_root {
        Some(root) if path.is_relative() => root.join(path.strip_prefix("./").unwrap_or(path)),
        _ => path.to_path_buf(),
    }
}

/// The local spool directory of a Lambda function: the configured one when
/// set by the file or the environment, else [`LAMBDA_DEFAULT_SPOOL`]. Only
/// `/tmp` is writable under Lambda, so anything else is refused.
pub fn lambda_spool_dir(loaded: &Loaded) -> anyhow::Result<PathBuf> {
    let dir = match loaded.layer_of("VPS_REMEDIATE_SPOOL_DIR") {
        Some(Layer::Default) | None => PathBuf::from(LAMBDA_DEFAULT_SPOOL),
        Some(_) => loaded.settings.spool_dir.clone(),
    };
    if loaded.settings.store.kind == StoreKind::Local && !dir.starts_with("/tmp") {
        anyhow::bail!(
            "VPS_REMEDIATE_SPOOL_DIR={}: under Lambda only /tmp is writable; use a directory under /tmp or VPS_REMEDIATE_STORE=aws",
            dir.display()
        );
    }
    Ok(dir)
}

/// Where the session signing key comes from.
#[derive(Debug, Clone)]
pub enum SessionKeySource {
    /// `VPS_REMEDIATE_SESSION_KEY` only (Lambda): unset is a startup error.
    Setting,
    /// `VPS_REMEDIATE_SESSION_KEY` when set, else this key file, created
    /// with 32 random bytes (mode 0600) when missing (the local server).
    SettingOrFile(PathBuf),
}

/// The session signing key, see [`SessionKeySource`].
pub fn session_key(settings: &Settings, source: &SessionKeySource) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = &settings.session_key {
        return Ok(key.expose().as_bytes().to_vec());
    }
    match source {
        SessionKeySource::Setting => anyhow::bail!(
            "VPS_REMEDIATE_SESSION_KEY is required under Lambda (at least 32 characters): every instance must sign session cookies with the same key, and there is no key file to keep"
        ),
        SessionKeySource::SettingOrFile(path) => session_key_file(path),
    }
}

fn session_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
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

/// What [`build_state`] needs besides the configuration.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The token file (already resolved).
    pub tokens: PathBuf,
    /// Where the session key comes from.
    pub session_key: SessionKeySource,
    /// The local spool directory (local store only).
    pub spool_dir: PathBuf,
    /// How long a drain waits for the executor's outcomes.
    pub drain_wait: Duration,
    /// Whether the session cookie carries `Secure`.
    pub secure_cookie: bool,
}

/// The router's state: the store, tokens, session key, catalog.
pub async fn build_state(loaded: Loaded, opts: StartOptions) -> anyhow::Result<Arc<AppState>> {
    let tokens = TokenFile::load(&opts.tokens)?;
    let catalog = loaded
        .settings
        .catalog
        .load()
        .map_err(|e| anyhow::anyhow!("action catalog: {e}"))?;
    let key = session_key(&loaded.settings, &opts.session_key)?;
    let queue_token = loaded
        .settings
        .queue_token
        .as_ref()
        .map(|s| s.expose().to_string());
    let mut auth = AuthConfig::new(tokens.tokens, queue_token.as_deref(), key);
    auth.secure_cookie = opts.secure_cookie;
    let notify_url = loaded
        .settings
        .executor
        .notify_webhook_url
        .clone()
        .filter(|u| !u.is_empty());
    let store = build_store(&loaded.settings, &opts.spool_dir).await?;
    Ok(Arc::new(AppState {
        store,
        loaded: Arc::new(loaded),
        catalog: Arc::new(catalog),
        auth,
        drain_wait: opts.drain_wait,
        notify_url,
        metrics: Metrics::default(),
        effective_cache: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_the_task_root_only() {
        let root = Path::new("/var/task");
        assert_eq!(
            task_relative(Path::new("./var/tokens.toml"), Some(root)),
            PathBuf::from("/var/task/var/tokens.toml")
        );
        assert_eq!(
            task_relative(Path::new("tokens.toml"), Some(root)),
            PathBuf::from("/var/task/tokens.toml")
        );
        assert_eq!(
            task_relative(Path::new("/opt/tokens.toml"), Some(root)),
            PathBuf::from("/opt/tokens.toml")
        );
        assert_eq!(
            task_relative(Path::new("./var/tokens.toml"), None),
            PathBuf::from("./var/tokens.toml")
        );
    }

    #[test]
    fn lambda_needs_the_session_key_setting() {
        let mut loaded = Loaded::defaults();
        let err = session_key(&loaded.settings, &SessionKeySource::Setting)
            .expect_err("no key under Lambda");
        assert!(
            err.to_string()
                .contains("VPS_REMEDIATE_SESSION_KEY is required")
        );
        loaded.settings.session_key = Some(remediate_config::Secret::new("k".repeat(32)));
        let key = session_key(&loaded.settings, &SessionKeySource::Setting).expect("key");
        assert_eq!(key, "k".repeat(32).into_bytes());
    }

    #[cfg(not(feature = "aws"))]
    #[tokio::test]
    async fn the_aws_store_is_refused_without_the_feature() {
        let mut loaded = Loaded::defaults();
        loaded.settings.store.kind = StoreKind::Aws;
        loaded.settings.store.s3_bucket = Some("runs".into());
        let dir = std::env::temp_dir();
        let result = build_store(&loaded.settings, &dir).await;
        assert_eq!(
            result.err().map(|e| e.to_string()).as_deref(),
            Some(
                "VPS_REMEDIATE_STORE=aws, but this binary was built without AWS support (feature aws)"
            )
        );
    }

    #[tokio::test]
    async fn the_local_store_opens_the_spool_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = Loaded::defaults();
        let spool = dir.path().join("spool");
        build_store(&loaded.settings, &spool)
            .await
            .expect("local store");
        assert!(spool.is_dir());
    }
}
