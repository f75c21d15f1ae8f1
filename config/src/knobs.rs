//! The table of every setting ("knob"): its env name, config-file key,
//! camelCase name, type, range, default and meaning. Loading, validation,
//! host overrides, the explain view and the README table are all driven by
//! this one table, so a knob cannot be known to one of them and not another.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::error::{Problem, quote};
use crate::types::{RiskThreshold, Tier};

/// Which part of [`crate::Settings`] a knob belongs to. `Policy` and `Guard`
/// knobs can be changed per host by profiles and host overrides; the others
/// are process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Retry, queue, autonomy, approval, canary and execute limits.
    Policy,
    /// The command guard.
    Guard,
    /// Process-wide settings of the HTTP service and the executor.
    Service,
    /// The executor daemon.
    Executor,
    /// The `OPS_WORKER_*` drain worker of the original system.
    Worker,
    /// Where runs are stored: the local spool, or S3 + SQS (AWS mode).
    Store,
}

impl Group {
    /// Whether profiles and host overrides may set knobs of this group.
    pub fn per_host(self) -> bool {
        matches!(self, Group::Policy | Group::Guard)
    }
}

/// The type and allowed values of a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer in `min..=max`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// A boolean: 1/true/yes/on or 0/false/no/off, any case.
    Bool,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A regular expression (Rust `regex` syntax, linear-time matching).
    Regex,
    /// A secret token: at least 16 printable ASCII characters, never shown.
    Secret,
    /// An `http://` or `https://` URL.
    Url,
    /// An IP address and port.
    SocketAddr,
    /// A file-system path.
    Path,
    /// A host identifier.
    Ident,
    /// `builtin`, `demo` or the path of a catalog `.toml` file.
    CatalogRef,
    /// An S3 bucket name (3-63 of a-z 0-9 . -, the S3 naming rules).
    S3Bucket,
    /// The prefix of SQS queue names: A-Z a-z 0-9 _ -, short enough that
    /// `<prefix>-<host>-dlq` fits SQS's 80 characters.
    QueuePrefix,
    /// An AWS region name such as `us-east-1`.
    AwsRegion,
    /// A signing key: at least 32 printable ASCII characters, never shown.
    SigningKey,
}

/// A knob's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnobDefault {
    /// An integer default.
    Int(i64),
    /// A boolean default.
    Bool(bool),
    /// A text default (also for choices).
    Text(&'static str),
    /// No default: the setting is optional and unset unless given.
    Unset,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    /// Environment variable, e.g. `VPS_REMEDIATE_MAX_RETRY_ATTEMPTS`.
    pub env: &'static str,
    /// Config-file key, e.g. `max_retry_attempts` or `worker.drain_limit`.
    pub key: &'static str,
    /// Field name in JSON (`Policy`, `GuardPolicy`, host overrides, explain).
    pub camel: &'static str,
    /// Where it belongs.
    pub group: Group,
    /// Type and range.
    pub kind: Kind,
    /// Default.
    pub default: KnobDefault,
    /// One line saying what it does.
    pub doc: &'static str,
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

macro_rules! knob {
    ($group:ident, $env:literal, $key:literal, $camel:literal, $kind:expr, $default:expr, $doc:literal) => {
        Knob {
            env: $env,
            key: $key,
            camel: $camel,
            group: Group::$group,
            kind: $kind,
            default: $default,
            doc: $doc,
        }
    };
}

/// Upper bound of `VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS`; its lower bound is
/// the base backoff.
pub const BACKOFF_MAX_LIMIT: i64 = 86_400;

/// Every knob, in documentation order.
pub static KNOBS: &[Knob] = &[
    knob!(
        Policy,
        "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS",
        "max_retry_attempts",
        "maxRetryAttempts",
        int(1, 20),
        KnobDefault::Int(3),
        "Attempts a run gets (frozen at enqueue) before it is dead-lettered."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_RETRY_BACKOFF_SECONDS",
        "retry_backoff_seconds",
        "retryBackoffSeconds",
        int(1, 3600),
        KnobDefault::Int(15),
        "Base retry delay: attempt n waits base * 2^(n-1) seconds."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS",
        "retry_backoff_max_seconds",
        "retryBackoffMaxSeconds",
        int(1, BACKOFF_MAX_LIMIT),
        KnobDefault::Int(900),
        "Cap of the retry delay; at least the base."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_MAX_QUEUE_PER_HOST",
        "max_queue_per_host",
        "maxQueuePerHost",
        int(1, 200),
        KnobDefault::Int(4),
        "Queued or held runs one host may have (its backlog)."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_MAX_QUEUE_TOTAL",
        "max_queue_total",
        "maxQueueTotal",
        int(1, 10_000),
        KnobDefault::Int(200),
        "Queued or held runs across all hosts (global backlog)."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_QUEUE_TTL_MINUTES",
        "queue_ttl_minutes",
        "queueTtlMinutes",
        int(1, 10_080),
        KnobDefault::Int(120),
        "A run not started this long after its request expires."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_COMMAND_TIMEOUT_MS",
        "command_timeout_ms",
        "commandTimeoutMs",
        int(1000, 600_000),
        KnobDefault::Int(20_000),
        "Each command's process group is killed after this long."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_MAX_BUFFER_BYTES",
        "max_buffer_bytes",
        "maxBufferBytes",
        int(32_000, 8_000_000),
        KnobDefault::Int(512_000),
        "Output kept per stream of a command; the rest is cut and marked."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_QUEUE_AUTODRAIN",
        "queue_autodrain",
        "queueAutodrain",
        Kind::Bool,
        KnobDefault::Bool(true),
        "An execute request wakes the executor at once."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_AUTONOMOUS_ENABLED",
        "autonomous_enabled",
        "autonomousEnabled",
        Kind::Bool,
        KnobDefault::Bool(false),
        "The planner may queue runs without an operator."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_AUTONOMOUS_MAX_TIER",
        "autonomous_max_tier",
        "autonomousMaxTier",
        Kind::Choice(Tier::WORDS),
        KnobDefault::Text("safe_auto"),
        "Highest tier the planner may queue."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_AUTONOMOUS_MAX_QUEUED_PER_CYCLE",
        "autonomous_max_queued_per_cycle",
        "autonomousMaxQueuedPerCycle",
        int(1, 20),
        KnobDefault::Int(1),
        "Runs the planner may queue per planning cycle."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_AUTONOMOUS_MAX_QUEUED_PER_HOUR",
        "autonomous_max_queued_per_hour",
        "autonomousMaxQueuedPerHour",
        int(1, 500),
        KnobDefault::Int(4),
        "Runs the planner may queue per host per hour."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_APPROVAL_RISK_THRESHOLD",
        "approval_risk_threshold",
        "approvalRiskThreshold",
        Kind::Choice(RiskThreshold::WORDS),
        KnobDefault::Text("medium"),
        "Risk from which a run waits for approval (none: never by risk)."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_CANARY_ROLLOUT_PERCENT",
        "canary_rollout_percent",
        "canaryRolloutPercent",
        int(1, 100),
        KnobDefault::Int(25),
        "Share of hosts an autonomous guarded_auto/risky_manual action reaches."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_CANARY_REQUIRE_CHECKS",
        "canary_require_checks",
        "canaryRequireChecks",
        Kind::Bool,
        KnobDefault::Bool(true),
        "Actions without canary checks are never queued autonomously."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_AUTO_ROLLBACK",
        "auto_rollback",
        "autoRollback",
        Kind::Bool,
        KnobDefault::Bool(true),
        "Run the rollback commands once when a run or its canary fails."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_DRY_RUN_MAX_AGE_MINUTES",
        "dry_run_max_age_minutes",
        "dryRunMaxAgeMinutes",
        int(1, 1440),
        KnobDefault::Int(30),
        "An execute needs a dry-run of the same action at most this old."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_EXECUTE_COOLDOWN_MINUTES",
        "execute_cooldown_minutes",
        "executeCooldownMinutes",
        int(0, 1440),
        KnobDefault::Int(5),
        "Minimum time between two executes of one action on one host."
    ),
    knob!(
        Policy,
        "VPS_REMEDIATE_MAX_EXECUTE_PER_HOUR",
        "max_execute_per_hour",
        "maxExecutePerHour",
        int(1, 1000),
        KnobDefault::Int(6),
        "Manual executes per host per hour."
    ),
    knob!(
        Guard,
        "VPS_REMEDIATE_ENFORCE_ALLOWLIST",
        "enforce_allowlist",
        "enforceAllowlist",
        Kind::Bool,
        KnobDefault::Bool(true),
        "Only allowlisted executables may run, and ALLOWLIST_REGEX applies."
    ),
    knob!(
        Guard,
        "VPS_REMEDIATE_MAX_COMMANDS_PER_ACTION",
        "max_commands_per_action",
        "maxCommandsPerAction",
        int(1, 200),
        KnobDefault::Int(20),
        "Most commands in each list (commands, canary checks, rollback)."
    ),
    knob!(
        Guard,
        "VPS_REMEDIATE_MAX_COMMAND_LENGTH",
        "max_command_length",
        "maxCommandLength",
        int(10, 8000),
        KnobDefault::Int(800),
        "Most characters of one command (argv joined with single spaces)."
    ),
    knob!(
        Guard,
        "VPS_REMEDIATE_ALLOWLIST_REGEX",
        "allowlist_regex",
        "allowlistRegex",
        Kind::Regex,
        KnobDefault::Unset,
        "If set, every command (argv joined with spaces) must match it."
    ),
    knob!(
        Guard,
        "VPS_REMEDIATE_BLOCKLIST_REGEX",
        "blocklist_regex",
        "blocklistRegex",
        Kind::Regex,
        KnobDefault::Unset,
        "If set, a command (argv joined with spaces) matching it is blocked."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_QUEUE_TOKEN",
        "queue_token",
        "queueToken",
        Kind::Secret,
        KnobDefault::Unset,
        "Token of the x-remediate-queue-token header (drain, snapshot, replay)."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_LISTEN_ADDR",
        "listen_addr",
        "listenAddr",
        Kind::SocketAddr,
        KnobDefault::Text("127.0.0.1:3035"),
        "Address the local HTTP service listens on."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_SPOOL_DIR",
        "spool_dir",
        "spoolDir",
        Kind::Path,
        KnobDefault::Text("/var/lib/vps-remediate"),
        "Root of the local spool (hosts/, runs/, audit/)."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_CATALOG",
        "catalog",
        "catalog",
        Kind::CatalogRef,
        KnobDefault::Text("builtin"),
        "Action catalog: builtin, demo, or the path of a catalog .toml file."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_TOKENS_FILE",
        "tokens_file",
        "tokensFile",
        Kind::Path,
        KnobDefault::Text("./var/tokens.toml"),
        "API token file (hashes); under Lambda a relative path is under LAMBDA_TASK_ROOT."
    ),
    knob!(
        Service,
        "VPS_REMEDIATE_SESSION_KEY",
        "session_key",
        "sessionKey",
        Kind::SigningKey,
        KnobDefault::Unset,
        "Key signing the admin session cookie; required under Lambda (unset: a key file)."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_HOST_ID",
        "host_id",
        "hostId",
        Kind::Ident,
        KnobDefault::Unset,
        "Host id this executor serves (unset: the executor decides, e.g. hostname)."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_EXECUTOR_CONCURRENCY",
        "executor_concurrency",
        "concurrency",
        int(1, 64),
        KnobDefault::Int(1),
        "Runs the executor executes at the same time (at 1, it may ready one more run behind a quick one: see the README's executor section)."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_SHUTDOWN_GRACE_SECONDS",
        "shutdown_grace_seconds",
        "shutdownGraceSeconds",
        int(0, 3600),
        KnobDefault::Int(30),
        "On shutdown, how long running commands may finish before being killed."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_RETENTION_DONE_DAYS",
        "retention_done_days",
        "retentionDoneDays",
        int(1, 3650),
        KnobDefault::Int(7),
        "Finished runs are pruned after this many days."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_RETENTION_DLQ_DAYS",
        "retention_dlq_days",
        "retentionDlqDays",
        int(1, 3650),
        KnobDefault::Int(30),
        "Dead-lettered runs are pruned after this many days."
    ),
    knob!(
        Executor,
        "VPS_REMEDIATE_NOTIFY_WEBHOOK_URL",
        "notify_webhook_url",
        "notifyWebhookUrl",
        Kind::Url,
        KnobDefault::Unset,
        "Where notifications (dead letters, approvals) are POSTed; unset: none."
    ),
    knob!(
        Store,
        "VPS_REMEDIATE_STORE",
        "store",
        "kind",
        Kind::Choice(STORE_KINDS),
        KnobDefault::Text("local"),
        "Where runs live: local (the spool directory) or aws (S3 + SQS)."
    ),
    knob!(
        Store,
        "VPS_REMEDIATE_S3_BUCKET",
        "s3_bucket",
        "s3Bucket",
        Kind::S3Bucket,
        KnobDefault::Unset,
        "S3 bucket of the run records; required when the store is aws."
    ),
    knob!(
        Store,
        "VPS_REMEDIATE_SQS_QUEUE_PREFIX",
        "sqs_queue_prefix",
        "sqsQueuePrefix",
        Kind::QueuePrefix,
        KnobDefault::Text("vps-remediate"),
        "Host queues are <prefix>-<host> and <prefix>-<host>-dlq."
    ),
    knob!(
        Store,
        "AWS_REGION",
        "aws_region",
        "awsRegion",
        Kind::AwsRegion,
        KnobDefault::Text("us-east-1"),
        "AWS region of the bucket and the queues (aws store)."
    ),
    knob!(
        Store,
        "AWS_ENDPOINT_URL",
        "aws_endpoint_url",
        "awsEndpointUrl",
        Kind::Url,
        KnobDefault::Unset,
        "Endpoint of S3 and SQS instead of AWS's (a test server such as moto)."
    ),
    knob!(
        Worker,
        "OPS_WORKER_DRAIN_LIMIT",
        "worker.drain_limit",
        "drainLimit",
        int(1, 50),
        KnobDefault::Int(5),
        "Runs one drain call may process."
    ),
    knob!(
        Worker,
        "OPS_WORKER_INTERVAL_SECONDS",
        "worker.interval_seconds",
        "intervalSeconds",
        int(1, 3600),
        KnobDefault::Int(15),
        "Drain worker tick while there is work."
    ),
    knob!(
        Worker,
        "OPS_WORKER_IDLE_INTERVAL_SECONDS",
        "worker.idle_interval_seconds",
        "idleIntervalSeconds",
        int(1, 3600),
        KnobDefault::Int(30),
        "Drain worker tick when idle."
    ),
    knob!(
        Worker,
        "OPS_WORKER_MAX_BACKOFF_SECONDS",
        "worker.max_backoff_seconds",
        "maxBackoffSeconds",
        int(1, 3600),
        KnobDefault::Int(120),
        "Drain worker backoff cap after errors."
    ),
    knob!(
        Worker,
        "OPS_WORKER_BASE_URL",
        "worker.base_url",
        "baseUrl",
        Kind::Url,
        KnobDefault::Text("http://127.0.0.1:3035"),
        "Base URL the drain worker calls."
    ),
    knob!(
        Worker,
        "OPS_WORKER_TOKEN",
        "worker.token",
        "token",
        Kind::Secret,
        KnobDefault::Unset,
        "Drain worker's queue token; falls back to VPS_REMEDIATE_QUEUE_TOKEN."
    ),
];

/// Prefix of the main environment variables.
pub const ENV_PREFIX: &str = "VPS_REMEDIATE_";
/// Prefix of the AWS SDK's own variables that are also knobs (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`). Other `AWS_*` variables are not ours and are never
/// warned about.
pub const AWS_ENV_PREFIX: &str = "AWS_";

/// The values of `VPS_REMEDIATE_STORE`.
pub const STORE_KINDS: &[&str] = &["local", "aws"];

/// SQS queue names are at most this long.
pub const SQS_QUEUE_NAME_MAX: usize = 80;
/// The longest host id that AWS mode names a queue after. Host ids are
/// validated to 64 characters; a queue name needs `<prefix>-<host>-dlq`
/// to fit [`SQS_QUEUE_NAME_MAX`], and a 64-character host would leave no
/// room for the default prefix, so AWS mode budgets 48 characters of host id.
pub const SQS_HOST_ID_MAX: usize = 48;
/// The longest `VPS_REMEDIATE_SQS_QUEUE_PREFIX`:
/// `80 - len("-") - 48 - len("-dlq")` = 27.
pub const SQS_QUEUE_PREFIX_MAX: usize = SQS_QUEUE_NAME_MAX - 1 - SQS_HOST_ID_MAX - 4;
/// Shortest accepted session signing key, in bytes.
pub const MIN_SIGNING_KEY_LEN: usize = 32;
/// Prefix of the drain worker's environment variables.
pub const WORKER_ENV_PREFIX: &str = "OPS_WORKER_";

/// The knob with this env name.
pub fn by_env(env: &str) -> Option<(usize, &'static Knob)> {
    KNOBS.iter().enumerate().find(|(_, k)| k.env == env)
}

/// The knob with this config-file key.
pub fn by_key(key: &str) -> Option<(usize, &'static Knob)> {
    KNOBS.iter().enumerate().find(|(_, k)| k.key == key)
}

/// Lowercase alphanumerics only: `maxRetryAttempts`, `max_retry_attempts`
/// and `MAX-RETRY-ATTEMPTS` all normalise to `maxretryattempts`.
fn loose(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The per-host knob answering to `name` in a host override or profile:
/// camelCase (`maxRetryAttempts`, the seed's spelling), snake_case or the env
/// name all work.
pub fn per_host_by_name(name: &str) -> Option<(usize, &'static Knob)> {
    let want = loose(name);
    let want = want.strip_prefix("vpsremediate").unwrap_or(&want);
    KNOBS
        .iter()
        .enumerate()
        .filter(|(_, k)| k.group.per_host())
        .find(|(_, k)| loose(k.camel) == want)
}

/// The closest of `candidates` to `name`, if close enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let target = name.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&target, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (target.len() / 4).clamp(1, 4);
    (d <= limit).then(|| c.to_owned())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A validated knob value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KnobValue {
    Int(i64),
    Bool(bool),
    Text(String),
    Unset,
}

impl KnobValue {
    pub(crate) fn from_default(d: KnobDefault) -> KnobValue {
        match d {
            KnobDefault::Int(i) => KnobValue::Int(i),
            KnobDefault::Bool(b) => KnobValue::Bool(b),
            KnobDefault::Text(t) => KnobValue::Text(t.to_owned()),
            KnobDefault::Unset => KnobValue::Unset,
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            KnobValue::Int(i) => serde_json::Value::from(*i),
            KnobValue::Bool(b) => serde_json::Value::Bool(*b),
            KnobValue::Text(s) => serde_json::Value::String(s.clone()),
            KnobValue::Unset => serde_json::Value::Null,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            KnobValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A value as some layer gave it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
    /// Arrays, tables...: always the wrong type.
    Other(&'static str),
}

impl Raw {
    /// The value for an error message (secrets are redacted by the caller).
    pub(crate) fn shown(&self) -> String {
        match self {
            Raw::Str(s) => quote(s),
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Bool(b) => b.to_string(),
            Raw::Null => "null".to_owned(),
            Raw::Other(what) => format!("<{what}>"),
        }
    }

    pub(crate) fn from_json(v: &serde_json::Value) -> Raw {
        match v {
            serde_json::Value::Null => Raw::Null,
            serde_json::Value::Bool(b) => Raw::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Raw::Int(i128::from(i)),
                (None, Some(u), _) => Raw::Int(i128::from(u)),
                (None, None, Some(f)) => Raw::Float(f),
                _ => Raw::Other("number"),
            },
            serde_json::Value::String(s) => Raw::Str(s.clone()),
            serde_json::Value::Array(_) => Raw::Other("array"),
            serde_json::Value::Object(_) => Raw::Other("object"),
        }
    }

    pub(crate) fn from_toml(v: &toml::Value) -> Raw {
        match v {
            toml::Value::String(s) => Raw::Str(s.clone()),
            toml::Value::Integer(i) => Raw::Int(i128::from(*i)),
            toml::Value::Float(f) => Raw::Float(*f),
            toml::Value::Boolean(b) => Raw::Bool(*b),
            toml::Value::Datetime(_) => Raw::Other("datetime"),
            toml::Value::Array(_) => Raw::Other("array"),
            toml::Value::Table(_) => Raw::Other("table"),
        }
    }

    pub(crate) fn from_figment(v: &figment::value::Value) -> Raw {
        use figment::value::Value as V;
        match v {
            V::String(_, s) => Raw::Str(s.clone()),
            V::Char(_, c) => Raw::Str(c.to_string()),
            V::Bool(_, b) => Raw::Bool(*b),
            V::Num(_, n) => match n.to_i128() {
                Some(i) => Raw::Int(i),
                None => n.to_f64().map_or(Raw::Other("number"), Raw::Float),
            },
            V::Empty(_, _) => Raw::Null,
            V::Dict(_, _) => Raw::Other("table"),
            V::Array(_, _) => Raw::Other("array"),
        }
    }
}

impl Knob {
    /// What this knob accepts, in words, for error messages and the README.
    pub fn allowed(&self) -> String {
        match self.kind {
            Kind::Int { min, max } => format!("an integer in {min}..={max}"),
            Kind::Bool => "1/true/yes/on or 0/false/no/off".to_owned(),
            Kind::Choice(words) => format!("one of {}", words.join(", ")),
            Kind::Regex => format!("a regular expression of at most {MAX_REGEX_LEN} characters"),
            Kind::Secret => {
                format!("at least {MIN_SECRET_LEN} printable ASCII characters, no spaces")
            }
            Kind::Url => "an http:// or https:// URL".to_owned(),
            Kind::SocketAddr => "an IP address and port, e.g. 127.0.0.1:3035".to_owned(),
            Kind::Path => "a file-system path".to_owned(),
            Kind::Ident => "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit".to_owned(),
            Kind::CatalogRef => "builtin, demo, or a path ending in .toml".to_owned(),
            Kind::S3Bucket => {
                "an S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit, not an IP address".to_owned()
            }
            Kind::QueuePrefix => format!(
                "1-{SQS_QUEUE_PREFIX_MAX} of A-Z a-z 0-9 _ - (so <prefix>-<host>-dlq fits {SQS_QUEUE_NAME_MAX} characters with a {SQS_HOST_ID_MAX}-character host id)"
            ),
            Kind::AwsRegion => "an AWS region such as us-east-1 (a-z 0-9 -)".to_owned(),
            Kind::SigningKey => {
                format!("at least {MIN_SIGNING_KEY_LEN} printable ASCII characters, no spaces")
            }
        }
    }

    /// Whether the value must never appear in messages or the explain view.
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::Secret | Kind::SigningKey)
    }

    /// How a value is shown in an error message.
    pub(crate) fn shown(&self, raw: &Raw) -> String {
        match (self.kind, raw) {
            _ if self.is_secret() => "<redacted>".to_owned(),
            // A URL's user info is a credential: never echo it.
            (Kind::Url, Raw::Str(s)) => quote(&redact_userinfo(s)),
            _ => raw.shown(),
        }
    }

    /// Validate one raw value. Empty strings unset optional knobs.
    pub(crate) fn coerce(&self, raw: &Raw) -> Result<KnobValue, Problem> {
        let optional = matches!(self.default, KnobDefault::Unset);
        let text = match raw {
            Raw::Str(s) => Some(s.trim()),
            _ => None,
        };
        if optional && (matches!(raw, Raw::Null) || text == Some("")) {
            return Ok(KnobValue::Unset);
        }
        match self.kind {
            Kind::Int { min, max } => {
                let n = match (raw, text) {
                    (Raw::Int(i), _) => *i,
                    (_, Some(t)) => t.parse::<i128>().map_err(|_| Problem::WrongType {
                        expected: "an integer",
                    })?,
                    _ => {
                        return Err(Problem::WrongType {
                            expected: "an integer",
                        });
                    }
                };
                if n < i128::from(min) || n > i128::from(max) {
                    return Err(Problem::OutOfRange);
                }
                i64::try_from(n)
                    .map(KnobValue::Int)
                    .map_err(|_| Problem::OutOfRange)
            }
            Kind::Bool => {
                let b = match (raw, text) {
                    (Raw::Bool(b), _) => Some(*b),
                    (Raw::Int(1), _) => Some(true),
                    (Raw::Int(0), _) => Some(false),
                    (_, Some(t)) => parse_bool(t),
                    _ => None,
                };
                b.map(KnobValue::Bool).ok_or(Problem::WrongType {
                    expected: "a boolean",
                })
            }
            Kind::Choice(words) => {
                let t = text.ok_or(Problem::WrongType {
                    expected: "a string",
                })?;
                let norm = t.to_ascii_lowercase().replace('-', "_");
                words
                    .iter()
                    .find(|w| **w == norm)
                    .map(|w| KnobValue::Text((*w).to_owned()))
                    .ok_or(Problem::NotAllowed)
            }
            _ => {
                let t = text.ok_or(Problem::WrongType {
                    expected: "a string",
                })?;
                self.check_text(t).map(|()| KnobValue::Text(t.to_owned()))
            }
        }
    }

    fn check_text(&self, t: &str) -> Result<(), Problem> {
        let invalid = |why: &str| Err(Problem::Invalid(why.to_owned()));
        if t.chars().any(char::is_control) {
            return invalid("contains a control character");
        }
        match self.kind {
            Kind::Regex => {
                if t.len() > MAX_REGEX_LEN {
                    return invalid("regular expression too long");
                }
                compile_guard_regex(t).map(|_| ()).map_err(Problem::Invalid)
            }
            Kind::Secret | Kind::SigningKey => {
                let min = if self.kind == Kind::SigningKey {
                    MIN_SIGNING_KEY_LEN
                } else {
                    MIN_SECRET_LEN
                };
                if t.len() < min {
                    return invalid("too short");
                }
                if !t.chars().all(|c| c.is_ascii_graphic()) {
                    return invalid("has spaces or non-ASCII characters");
                }
                Ok(())
            }
            Kind::Url => check_url(t).map_err(Problem::Invalid),
            Kind::SocketAddr => t
                .parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|_| Problem::Invalid("not an address:port".to_owned())),
            Kind::Path => Ok(()),
            Kind::Ident => {
                if is_ident(t) {
                    Ok(())
                } else {
                    invalid("not a valid host id")
                }
            }
            Kind::CatalogRef => {
                if t == "builtin" || t == "demo" || t.ends_with(".toml") {
                    Ok(())
                } else {
                    invalid("not a catalog")
                }
            }
            Kind::S3Bucket => check_bucket(t).map_err(Problem::Invalid),
            Kind::QueuePrefix => {
                if t.len() > SQS_QUEUE_PREFIX_MAX {
                    return invalid("too long");
                }
                if t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                {
                    Ok(())
                } else {
                    invalid("has characters SQS queue names do not allow")
                }
            }
            Kind::AwsRegion => {
                let ok = (2..=32).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !t.starts_with('-')
                    && !t.ends_with('-');
                if ok {
                    Ok(())
                } else {
                    invalid("not a region name")
                }
            }
            Kind::Int { .. } | Kind::Bool | Kind::Choice(_) => Ok(()),
        }
    }
}

/// The S3 bucket naming rules (general purpose buckets): 3-63 characters of
/// lowercase letters, digits, dots and hyphens; a letter or digit first and
/// last; no two adjacent dots; not shaped like an IPv4 address; none of the
/// reserved prefixes and suffixes.
pub fn check_bucket(t: &str) -> Result<(), String> {
    if !(3..=63).contains(&t.len()) {
        return Err("must be 3-63 characters long".to_owned());
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    {
        return Err("may only hold a-z 0-9 . -".to_owned());
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge(t.bytes().next()) || !edge(t.bytes().last()) {
        return Err("must start and end with a letter or digit".to_owned());
    }
    if t.contains("..") || t.contains(".-") || t.contains("-.") {
        return Err("has adjacent dots or a dot next to a hyphen".to_owned());
    }
    if t.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("is formatted as an IP address".to_owned());
    }
    for p in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if t.starts_with(p) {
            return Err(format!("starts with the reserved prefix {p}"));
        }
    }
    for sfx in ["-s3alias", "--ol-s3", "--x-s3", "--table-s3", ".mrap"] {
        if t.ends_with(sfx) {
            return Err(format!("ends with the reserved suffix {sfx}"));
        }
    }
    Ok(())
}

/// Longest accepted guard regex, in bytes.
pub const MAX_REGEX_LEN: usize = 1000;
/// Shortest accepted secret token.
pub const MIN_SECRET_LEN: usize = 16;

/// Compile a guard regex with a bounded program size, so a configured
/// pattern cannot use unbounded memory. The `regex` crate matches in linear
/// time, so there is no catastrophic backtracking either.
pub(crate) fn compile_guard_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            let last = msg.lines().last().unwrap_or("invalid").trim().to_owned();
            format!("not a valid regular expression ({last})")
        })
}

/// `1/true/yes/on` and `0/false/no/off`, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Host ids: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `scheme://user:password@host/...` -> `scheme://<redacted>@host/...`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<redacted>@{host}{tail}"),
        None => url.to_owned(),
    }
}

fn check_url(t: &str) -> Result<(), String> {
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(|| "not an http:// or https:// URL".to_owned())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err("URL has no host, or has credentials in it".to_owned());
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) {
        return Err("URL has spaces or non-ASCII characters".to_owned());
    }
    Ok(())
}

/// One value per knob (aligned with [`KNOBS`]), with the layer that set it.
#[derive(Clone)]
pub(crate) struct Values {
    pub(crate) entries: Vec<(KnobValue, crate::types::Layer)>,
}

/// Secrets are redacted: `Loaded` is Debug, and a debug print of the
/// configuration must never carry the queue token into a log.
impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (knob, (value, layer)) in KNOBS.iter().zip(&self.entries) {
            if knob.is_secret() && *value != KnobValue::Unset {
                map.entry(&knob.key, &("<redacted>", layer));
            } else {
                map.entry(&knob.key, &(value, layer));
            }
        }
        map.finish()
    }
}

impl Values {
    pub(crate) fn defaults() -> Values {
        Values {
            entries: KNOBS
                .iter()
                .map(|k| {
                    (
                        KnobValue::from_default(k.default),
                        crate::types::Layer::Default,
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn get(&self, index: usize) -> Option<&KnobValue> {
        self.entries.get(index).map(|(v, _)| v)
    }

    pub(crate) fn set(&mut self, index: usize, value: KnobValue, layer: crate::types::Layer) {
        if let Some(slot) = self.entries.get_mut(index) {
            *slot = (value, layer);
        }
    }

    /// A JSON object of one group's values under their camelCase names.
    pub(crate) fn group_json(&self, group: Group) -> serde_json::Value {
        let map = KNOBS
            .iter()
            .zip(&self.entries)
            .filter(|(k, _)| k.group == group)
            .map(|(k, (v, _))| (k.camel.to_owned(), v.to_json()))
            .collect();
        serde_json::Value::Object(map)
    }

    /// The base-backoff invariant (`max >= base`), checked after every layer.
    /// Returns the offending max value when broken.
    pub(crate) fn backoff_conflict(&self) -> Option<(i64, i64)> {
        let (bi, _) = by_key("retry_backoff_seconds")?;
        let (mi, _) = by_key("retry_backoff_max_seconds")?;
        let base = self.get(bi)?.as_int()?;
        let max = self.get(mi)?.as_int()?;
        (max < base).then_some((base, max))
    }
}

/// The README's knob table, generated from [`KNOBS`]. A test keeps
/// `config/README.md` equal to it.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| variable | file key | default | allowed | per host | meaning |\n|---|---|---|---|---|---|\n",
    );
    for k in KNOBS {
        let default = match k.default {
            KnobDefault::Int(i) => i.to_string(),
            KnobDefault::Bool(b) => b.to_string(),
            KnobDefault::Text(t) => t.to_owned(),
            KnobDefault::Unset => "(unset)".to_owned(),
        };
        let allowed = if k.env == "VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS" {
            format!("an integer in RETRY_BACKOFF_SECONDS..={BACKOFF_MAX_LIMIT}")
        } else {
            k.allowed()
        };
        let per_host = if k.group.per_host() {
            format!("`{}`", k.camel)
        } else {
            "no".to_owned()
        };
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} | {} |",
            k.env, k.key, default, allowed, per_host, k.doc
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_consistent() {
        for k in KNOBS {
            let prefix = if k.group == Group::Worker {
                WORKER_ENV_PREFIX
            } else if k.env.starts_with(AWS_ENV_PREFIX) {
                ""
            } else {
                ENV_PREFIX
            };
            let rest = k.env.strip_prefix(prefix).expect("env prefix");
            let key = k.key.strip_prefix("worker.").unwrap_or(k.key);
            assert_eq!(rest.to_ascii_lowercase(), key, "{}", k.env);
            if k.group.per_host() {
                assert_eq!(loose(k.camel), loose(key), "{}", k.env);
            }
            assert!(k.coerce(&default_raw(k)).is_ok(), "default of {}", k.env);
        }
        let mut envs: Vec<_> = KNOBS.iter().map(|k| k.env).collect();
        envs.sort_unstable();
        envs.dedup();
        assert_eq!(envs.len(), KNOBS.len());
    }

    fn default_raw(k: &Knob) -> Raw {
        match k.default {
            KnobDefault::Int(i) => Raw::Int(i128::from(i)),
            KnobDefault::Bool(b) => Raw::Bool(b),
            KnobDefault::Text(t) => Raw::Str(t.to_owned()),
            KnobDefault::Unset => Raw::Null,
        }
    }

    #[test]
    fn booleans_accept_the_seed_spellings() {
        for t in ["1", "true", "YES", "On", " true "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "false", "No", "OFF"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(parse_bool("2"), None);
    }

    #[test]
    fn per_host_names_accept_camel_snake_and_env_forms() {
        for name in [
            "maxRetryAttempts",
            "max_retry_attempts",
            "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS",
        ] {
            let (_, k) = per_host_by_name(name).expect(name);
            assert_eq!(k.camel, "maxRetryAttempts");
        }
        assert!(per_host_by_name("queueAutoDrain").is_some());
        assert!(per_host_by_name("queueToken").is_none(), "not per host");
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let envs = KNOBS.iter().map(|k| k.env);
        assert_eq!(
            suggest("VPS_REMEDIATE_MAX_RETRY_ATEMPTS", envs.clone()).as_deref(),
            Some("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS")
        );
        assert_eq!(suggest("VPS_REMEDIATE_SOMETHING_ELSE", envs), None);
    }

    #[test]
    fn coerce_checks_type_and_range() {
        let (_, k) = by_env("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS").expect("knob");
        assert_eq!(k.coerce(&Raw::Str(" 7 ".into())), Ok(KnobValue::Int(7)));
        assert_eq!(k.coerce(&Raw::Int(0)), Err(Problem::OutOfRange));
        assert_eq!(
            k.coerce(&Raw::Int(i128::from(u64::MAX) * 4)),
            Err(Problem::OutOfRange)
        );
        assert!(matches!(
            k.coerce(&Raw::Str("3.5".into())),
            Err(Problem::WrongType { .. })
        ));
        assert!(matches!(
            k.coerce(&Raw::Float(3.0)),
            Err(Problem::WrongType { .. })
        ));
        assert!(matches!(
            k.coerce(&Raw::Null),
            Err(Problem::WrongType { .. })
        ));
        let (_, tier) = by_env("VPS_REMEDIATE_AUTONOMOUS_MAX_TIER").expect("knob");
        assert_eq!(
            tier.coerce(&Raw::Str("Guarded-Auto".into())),
            Ok(KnobValue::Text("guarded_auto".into()))
        );
        assert_eq!(
            tier.coerce(&Raw::Str("all".into())),
            Err(Problem::NotAllowed)
        );
        let (_, re) = by_env("VPS_REMEDIATE_BLOCKLIST_REGEX").expect("knob");
        assert_eq!(re.coerce(&Raw::Str(String::new())), Ok(KnobValue::Unset));
        assert!(matches!(
            re.coerce(&Raw::Str("(".into())),
            Err(Problem::Invalid(_))
        ));
        let (_, url) = by_env("OPS_WORKER_BASE_URL").expect("knob");
        assert!(url.coerce(&Raw::Str("ftp://x".into())).is_err());
        assert!(url.coerce(&Raw::Str("https://user:pw@x/".into())).is_err());
        assert!(
            url.coerce(&Raw::Str("https://ops.example/hook".into()))
                .is_ok()
        );
    }
}
