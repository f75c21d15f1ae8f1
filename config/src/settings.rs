//! The typed, validated process settings: every knob of [`crate::knobs`]
//! once the default, file and environment layers are merged.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::knobs::{Group, Values};
use crate::policy::{GuardPolicy, Policy};

/// Every setting of the system, validated. Per-host policy is computed from
/// `policy` and `guard` by [`crate::effective_policy`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// Global policy (before a host's profile and overrides).
    pub policy: Policy,
    /// Global guard policy (before a host's profile and overrides).
    pub guard: GuardPolicy,
    /// `VPS_REMEDIATE_QUEUE_TOKEN`: token of the queue routes; unset means
    /// those routes accept only operator credentials.
    pub queue_token: Option<Secret>,
    /// `VPS_REMEDIATE_LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// `VPS_REMEDIATE_SPOOL_DIR`.
    pub spool_dir: PathBuf,
    /// `VPS_REMEDIATE_CATALOG`.
    pub catalog: CatalogSource,
    /// `VPS_REMEDIATE_TOKENS_FILE`: the API token file (`--tokens` wins).
    pub tokens_file: PathBuf,
    /// `VPS_REMEDIATE_SESSION_KEY`: the key signing the admin session cookie
    /// (at least 32 characters). Required under Lambda, where there is no
    /// key file to keep; optional on a local server.
    pub session_key: Option<Secret>,
    /// Where runs are stored.
    pub store: StoreSettings,
    /// The executor daemon's settings.
    pub executor: ExecutorSettings,
    /// The drain worker's settings (`OPS_WORKER_*`).
    pub worker: WorkerSettings,
}

impl Settings {
    pub(crate) fn from_values(values: &Values) -> Result<Settings, String> {
        let mut top = match values.group_json(Group::Service) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        top.insert("policy".into(), values.group_json(Group::Policy));
        top.insert("guard".into(), values.group_json(Group::Guard));
        top.insert("executor".into(), values.group_json(Group::Executor));
        top.insert("worker".into(), values.group_json(Group::Worker));
        top.insert("store".into(), values.group_json(Group::Store));
        serde_json::from_value(serde_json::Value::Object(top)).map_err(|e| e.to_string())
    }

    /// The drain worker's token: `OPS_WORKER_TOKEN`, else
    /// `VPS_REMEDIATE_QUEUE_TOKEN`.
    pub fn worker_token(&self) -> Option<&Secret> {
        self.worker.token.as_ref().or(self.queue_token.as_ref())
    }
}

/// Which store: the local spool or S3 + SQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The local spool directory (`VPS_REMEDIATE_SPOOL_DIR`).
    Local,
    /// S3 for the records, one SQS queue per host (AWS mode).
    Aws,
}

impl StoreKind {
    /// The word used in `VPS_REMEDIATE_STORE`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Aws => "aws",
        }
    }
}

/// The store settings (`VPS_REMEDIATE_STORE` and the AWS mode knobs). When
/// `kind` is [`StoreKind::Aws`], the loader has made sure `s3_bucket` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSettings {
    /// `VPS_REMEDIATE_STORE`: local (default) or aws.
    pub kind: StoreKind,
    /// `VPS_REMEDIATE_S3_BUCKET`: the bucket of the run records.
    pub s3_bucket: Option<String>,
    /// `VPS_REMEDIATE_SQS_QUEUE_PREFIX`: queue names are `<prefix>-<host>`
    /// and `<prefix>-<host>-dlq`.
    pub sqs_queue_prefix: String,
    /// `AWS_REGION` (default us-east-1).
    pub aws_region: String,
    /// `AWS_ENDPOINT_URL`: S3 and SQS endpoint instead of AWS's (moto in tests).
    pub aws_endpoint_url: Option<String>,
}

/// The executor daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutorSettings {
    /// `VPS_REMEDIATE_HOST_ID`: the host this executor serves, if fixed.
    pub host_id: Option<String>,
    /// `VPS_REMEDIATE_EXECUTOR_CONCURRENCY`: runs executed at once (default 1).
    pub concurrency: u32,
    /// `VPS_REMEDIATE_SHUTDOWN_GRACE_SECONDS`: time running commands get on shutdown.
    pub shutdown_grace_seconds: u64,
    /// `VPS_REMEDIATE_RETENTION_DONE_DAYS`: days finished runs are kept.
    pub retention_done_days: u32,
    /// `VPS_REMEDIATE_RETENTION_DLQ_DAYS`: days dead-lettered runs are kept.
    pub retention_dlq_days: u32,
    /// `VPS_REMEDIATE_NOTIFY_WEBHOOK_URL`: where notifications go, if anywhere.
    pub notify_webhook_url: Option<String>,
}

/// The `OPS_WORKER_*` settings of the original drain worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerSettings {
    /// `OPS_WORKER_DRAIN_LIMIT`.
    pub drain_limit: u32,
    /// `OPS_WORKER_INTERVAL_SECONDS`.
    pub interval_seconds: u64,
    /// `OPS_WORKER_IDLE_INTERVAL_SECONDS`.
    pub idle_interval_seconds: u64,
    /// `OPS_WORKER_MAX_BACKOFF_SECONDS`.
    pub max_backoff_seconds: u64,
    /// `OPS_WORKER_BASE_URL`.
    pub base_url: String,
    /// `OPS_WORKER_TOKEN`; see [`Settings::worker_token`] for the fallback.
    pub token: Option<Secret>,
}

/// Which action catalog to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogSource {
    /// The embedded catalog of real remediation actions.
    Builtin,
    /// The embedded demo catalog, harmless on a laptop.
    Demo,
    /// A catalog TOML file.
    File(PathBuf),
}

impl CatalogSource {
    /// Load the catalog this names.
    pub fn load(&self) -> Result<crate::Catalog, crate::CatalogError> {
        match self {
            CatalogSource::Builtin => Ok(crate::Catalog::builtin()),
            CatalogSource::Demo => Ok(crate::Catalog::demo()),
            CatalogSource::File(path) => crate::Catalog::load(path),
        }
    }
}

impl<'de> Deserialize<'de> for CatalogSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "builtin" => CatalogSource::Builtin,
            "demo" => CatalogSource::Demo,
            _ => CatalogSource::File(PathBuf::from(s)),
        })
    }
}

/// A secret string. `Debug` and `Display` never show it; compare it with
/// [`Secret::matches`], which takes the same time wherever the inputs differ.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for sending it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented token: the time taken
    /// depends on the lengths only, not on where the bytes differ.
    pub fn matches(&self, presented: &str) -> bool {
        let a = self.0.as_bytes();
        let b = presented.as_bytes();
        let mut diff = u8::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= x ^ y;
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_settings() {
        let s = Settings::from_values(&Values::defaults()).expect("defaults");
        assert_eq!(s.listen_addr.to_string(), "127.0.0.1:3035");
        assert_eq!(s.catalog, CatalogSource::Builtin);
        assert_eq!(s.executor.concurrency, 1);
        assert_eq!(s.worker.base_url, "http://127.0.0.1:3035");
        assert!(s.worker_token().is_none());
        assert_eq!(s.session_key, None);
        assert_eq!(s.store.kind, StoreKind::Local);
        assert_eq!(s.store.s3_bucket, None);
        assert_eq!(s.store.sqs_queue_prefix, "vps-remediate");
        assert_eq!(s.store.aws_region, "us-east-1");
        assert_eq!(s.store.aws_endpoint_url, None);
    }

    #[test]
    fn secret_never_prints_and_compares_exactly() {
        let s = Secret::new("0123456789abcdef");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert!(s.matches("0123456789abcdef"));
        assert!(!s.matches("0123456789abcdeX"));
        assert!(!s.matches("0123456789abcdef0"));
        assert!(!s.matches(""));
    }
}
