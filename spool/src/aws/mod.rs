//! The S3 + SQS store: the same [`Store`] contract as the local spool, for
//! AWS mode (handlers on Lambda, one executor per host). Behind the cargo
//! feature `aws`; local-only builds do not compile the AWS SDK.
//!
//! # Key layout
//!
//! ```text
//! hosts/<host>/runs/<runId>.log          the run record: the local spool's event-log format
//! hosts/<host>/index/<bucket>/<requestedMs>~<runId>~<dueMs>~<version>
//!                                         empty index entry; the key is the data
//! hosts/<host>/claims/<runId>            claim marker of claim_next
//! hosts/<host>/policy.json               the host's policy document
//! run-ids/<runId>                        run id -> host (API only), created first
//! audit/<day>/<millis>-<nonce>.json      one audit entry per object (API only)
//! activity/<host>.json                   recent dry-runs and executes (API only)
//! gates/<host>.lease                     the host's gate lease (API only)
//! ```
//!
//! Everything one executor needs is under `hosts/<host>/`, so IAM can scope
//! a host's executor to that prefix. Idempotency keys need no object of
//! their own: the run id is derived from (host, key) ([`RunId::for_key`]), so
//! the record's key *is* the idempotency key and its `If-None-Match: *`
//! create decides which request was first.
//!
//! A snapshot lists one state of one host by listing
//! `hosts/<host>/index/<bucket>/` (keys sort oldest request first), and
//! counts without reading any record; `claim_next` picks the earliest due run
//! from the keys of `queued/` and `retryScheduled/` and reads only that one.
//!
//! # Writes: create once, then compare-and-swap
//!
//! * A record is created with `If-None-Match: *`. An enqueue writes the
//!   `run-ids/` pointer, then the record, then sends the pointer message
//!   (ready runs only), then the index entry.
//! * Every later move reads the record and its ETag, checks the move against
//!   the state machine ([`crate::state`]; an illegal move stays
//!   [`SpoolError::IllegalMove`]), appends one event and writes the whole
//!   object back with `If-Match: <etag>`. That write is the commit point. A
//!   `412 Precondition Failed` means someone else wrote first: the move
//!   returns [`SpoolError::Conflict`] and nothing is written, never a silent
//!   overwrite. A `409 ConditionalRequestConflict` (another conditional write
//!   on the key in flight) is retried with backoff (module `retry`).
//! * After the commit the index entry of the new version is written and the
//!   old one deleted. A crash in between leaves a missing or stale entry:
//!   readers drop entries older than the newest of the same run and re-check
//!   the record they read; [`Store::recover`] rebuilds a host's index from
//!   its records and re-sends the pointer of every queued, never-attempted
//!   run (a message lost to a crash or a failed send between the commit and
//!   the send; the executor deduplicates by run id).
//!
//! # Gates: one execute of a host at a time
//!
//! An execute (and the planner) reads what its gates need (one active run
//! per host and action, the backlogs, the recent requests) and enqueues
//! only if they allow. Two Lambda invocations doing that at once for one
//! host could both see no active run and both enqueue. So
//! [`Store::enqueue_checked`] holds the host's **gate lease** meanwhile: it
//! creates `gates/<host>.lease` with `If-None-Match: *` (the body says
//! until when it is good), waits with backoff while another holds it
//! (answering `host_busy` after 10 s), and deletes it after, with `If-Match`
//! on its own ETag. A lease whose holder died (an invocation killed at its
//! timeout) expires after 60 s, twice the function's timeout, and is then
//! taken over with `If-Match` on its ETag; a holder enqueues only within
//! 20 s of taking it, so a live holder never outlasts its lease. The global
//! backlog is still read without the other hosts' leases (a soft limit).
//!
//! # Queues
//!
//! One standard queue per host, `<prefix>-<host>`, with a redrive policy to
//! `<prefix>-<host>-dlq` (maxReceiveCount 5). A `{"kind":"run",...}` pointer
//! goes on it when a run becomes ready (enqueued without approval, approved,
//! replayed into the queue); held runs are never sent. `request_drain` sends
//! `{"kind":"drain",...}`; `put_host_doc` sends `{"kind":"policy",...}` after
//! the document is stored, so the executor copies it at once (a failed send
//! is logged: the executor also copies it after every empty long poll).
//!
//! # What moto (the test stand-in) lacks
//!
//! The tests run against moto 5.2.5 in server mode. It implements
//! `If-None-Match: *` and `If-Match` on PutObject, but:
//!
//! * its conditional PutObject is **not atomic**: `S3Response.put_object`
//!   compares the ETag and stores the object several steps later, with no
//!   lock in between, so two concurrent PUTs with the same `If-Match` can
//!   both succeed. Our two-writer race test found such double winners
//!   within a few hundred rounds. S3 itself applies the condition and the
//!   write as one step. The tests therefore start moto through
//!   `spool/tests/store/moto_serial.py`, which wraps that one method in a
//!   lock and changes nothing else;
//! * it never answers `409 ConditionalRequestConflict`. The retry loop
//!   (module `retry`) is unit-tested, and `moto_serial.py` also answers 409
//!   to every other conditional PUT under `hosts/c409-`, so a test drives
//!   the store's classification and retry of a real 409 response.
//!
mod keys;
mod retry;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, SpoolError};
use crate::id::{HostId, RunId};
use crate::index::Bucket;
use crate::local::{
    ActivityEntry, ActivityKind, Counts, Enqueued, HostActivity, ListQuery, PruneReport,
    RecentRequest, RecoveryReport, Retention,
};
use crate::record::{
    AttemptResult, Event, EventKind, NewRun, Next, RunRecord, RunState, Timestamp,
};
use crate::state::{self, Move};
use crate::store::{AuditLine, Store};
use crate::{Clock, SystemClock};

use keys::IndexEntry;
pub use keys::queue_names;
use retry::{Try, retry_409};

/// Where the store lives. Built by the config loader from `VPS_REMEDIATE_S3_BUCKET`,
/// `VPS_REMEDIATE_SQS_QUEUE_PREFIX`, `AWS_REGION` and `AWS_ENDPOINT_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3SqsConfig {
    pub bucket: String,
    pub queue_prefix: String,
    pub region: String,
    /// Another S3/SQS endpoint (moto in tests); also turns on path-style S3
    /// addressing.
    pub endpoint_url: Option<String>,
}

/// A host's queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostQueues {
    pub queue_url: String,
    pub dlq_url: String,
}

/// What a message on a host's queue asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// Run `run_id` is ready: fetch it and import it.
    Run { run_id: RunId, host_id: HostId },
    /// Drain up to `limit` due runs now.
    Drain { host_id: HostId, limit: u32 },
    /// The host's policy document changed: copy it now.
    Policy { host_id: HostId },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Wire {
    Run {
        #[serde(rename = "runId")]
        run_id: RunId,
        #[serde(rename = "hostId")]
        host_id: HostId,
    },
    Drain {
        #[serde(rename = "hostId")]
        host_id: HostId,
        limit: u32,
    },
    Policy {
        #[serde(rename = "hostId")]
        host_id: HostId,
    },
}

impl HostMessage {
    /// The message body (JSON).
    pub fn to_body(&self) -> String {
        let w = match self.clone() {
            HostMessage::Run { run_id, host_id } => Wire::Run { run_id, host_id },
            HostMessage::Drain { host_id, limit } => Wire::Drain { host_id, limit },
            HostMessage::Policy { host_id } => Wire::Policy { host_id },
        };
        serde_json::to_string(&w).unwrap_or_default()
    }

    /// Parses a message body; the error says what is wrong with it.
    pub fn parse(body: &str) -> std::result::Result<HostMessage, String> {
        match serde_json::from_str::<Wire>(body) {
            Ok(Wire::Run { run_id, host_id }) => Ok(HostMessage::Run { run_id, host_id }),
            Ok(Wire::Drain { host_id, limit }) => Ok(HostMessage::Drain { host_id, limit }),
            Ok(Wire::Policy { host_id }) => Ok(HostMessage::Policy { host_id }),
            Err(e) => Err(format!("not a host message: {e}")),
        }
    }
}

/// One message received from a host's queue.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The decoded body, or why it could not be decoded (a message that
    /// never decodes is redriven to the DLQ after 5 receives if not deleted).
    pub message: std::result::Result<HostMessage, String>,
    pub receipt_handle: String,
    pub message_id: String,
    /// SQS's ApproximateReceiveCount (1 on the first delivery).
    pub receive_count: u32,
}

/// A run as read from S3, with what a compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct FetchedRun {
    pub record: RunRecord,
    /// The object's ETag (quoted, as S3 returns it).
    pub etag: String,
    /// How many events the record's log holds (its version in index keys).
    pub version: u64,
    /// The raw log, to append to.
    bytes: Vec<u8>,
}

/// How long a gate lease is good for: twice the stack's function timeout
/// (30 s), so a lease whose holder died is free again after at most this,
/// while a live holder never loses it (it enqueues only within
/// [`GATE_HOLD`]).
const GATE_LEASE: Duration = Duration::from_secs(60);
/// Longest a holder works under its lease before it gives up without
/// enqueuing (well inside the lease, for clock skew between invocations).
const GATE_HOLD: Duration = Duration::from_secs(20);
/// How long an execute waits for another's lease before `host_busy`.
const GATE_WAIT: Duration = Duration::from_secs(10);

/// The body of `gates/<host>.lease`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GateLease {
    /// A random id of the holder, for people reading the bucket.
    holder: String,
    /// Until when the lease is good (ms since the epoch).
    expires_ms: i64,
}

/// What [`S3SqsStore::mirror`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// The executor's copy was newer and is now in S3.
    Applied,
    /// S3 already holds exactly this copy.
    AlreadyCurrent,
    /// S3 holds a copy at least as far along: nothing was written (a record
    /// never regresses).
    Stale,
}

/// The S3 + SQS store. Cheap to clone (clients and caches are shared).
#[derive(Clone)]
pub struct S3SqsStore {
    inner: Arc<Inner>,
}

struct Inner {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    cfg: S3SqsConfig,
    clock: Arc<dyn Clock>,
    /// Written into attempts, and into claim markers.
    worker: String,
    queues: Mutex<HashMap<HostId, HostQueues>>,
    hosts_of: Mutex<HashMap<RunId, HostId>>,
    /// Runs this instance claimed (claim marker written) and not released.
    claims: Mutex<HashMap<RunId, HostId>>,
}

impl std::fmt::Debug for S3SqsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3SqsStore")
            .field("cfg", &self.inner.cfg)
            .field("worker", &self.inner.worker)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backend<E: std::error::Error + 'static>(op: &str, what: &str, e: E) -> SpoolError {
    SpoolError::Backend(format!("{op} {what}: {}", DisplayErrorContext(e)))
}

fn status<E, R: AsHttpStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(|r| r.http_status())
}

trait AsHttpStatus {
    fn http_status(&self) -> u16;
}

impl AsHttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// How an S3 conditional write ended.
enum PutOutcome {
    /// Written; the new ETag.
    Written(String),
    /// 412: the condition was false (exists / changed).
    PreconditionFailed,
}

fn millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// How far along a record is, for [`S3SqsStore::mirror`]: attempts started,
/// whether the last one finished, terminal or not, then the last change
/// time. Moves only ever increase it, except approve/hold/reschedule which
/// keep the first three and move the time.
fn progress(r: &RunRecord) -> (u32, bool, bool, i64) {
    let last_finished = r.history.last().is_some_and(|a| a.finished_at.is_some());
    (
        r.attempts,
        last_finished,
        r.state.is_terminal(),
        r.updated_at.map(millis).unwrap_or(0),
    )
}

fn encode_log(events: &[Event]) -> Vec<u8> {
    events.iter().flat_map(codec::encode).collect()
}

impl S3SqsStore {
    /// Connects with the SDK's default credential chain (environment, web
    /// identity, container and instance roles).
    pub async fn connect(cfg: S3SqsConfig) -> Result<Self> {
        Self::build(cfg, None).await
    }

    /// Connects with fixed credentials (tests against moto: `test`/`test`).
    pub async fn connect_with_static_credentials(
        cfg: S3SqsConfig,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Self> {
        let creds = aws_sdk_s3::config::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "static",
        );
        Self::build(cfg, Some(creds)).await
    }

    async fn build(
        cfg: S3SqsConfig,
        creds: Option<aws_sdk_s3::config::Credentials>,
    ) -> Result<Self> {
        if cfg.bucket.is_empty() {
            return Err(SpoolError::Invalid("the S3 bucket name is empty".into()));
        }
        if cfg.queue_prefix.is_empty()
            || cfg.queue_prefix.len() > 40
            || !cfg
                .queue_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SpoolError::Invalid(format!(
                "queue prefix {:?}: it must be 1-40 of [A-Za-z0-9_-]",
                cfg.queue_prefix
            )));
        }
        // rustls with ring: no aws-lc build (see TOOLCHAIN.md).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .http_client(http);
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(c) = creds {
            loader = loader.credentials_provider(c);
        }
        let sdk = loader.load().await;
        let s3conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.endpoint_url.is_some())
            .build();
        let instance = uuid::Uuid::now_v7().simple().to_string();
        Ok(S3SqsStore {
            inner: Arc::new(Inner {
                s3: aws_sdk_s3::Client::from_conf(s3conf),
                sqs: aws_sdk_sqs::Client::new(&sdk),
                cfg,
                clock: Arc::new(SystemClock),
                worker: format!("aws-store/{}", &instance[instance.len() - 12..]),
                queues: Mutex::new(HashMap::new()),
                hosts_of: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The same store with another clock (tests). Call before sharing it.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        let i = &self.inner;
        S3SqsStore {
            inner: Arc::new(Inner {
                s3: i.s3.clone(),
                sqs: i.sqs.clone(),
                cfg: i.cfg.clone(),
                clock,
                worker: i.worker.clone(),
                queues: Mutex::new(lock(&i.queues).clone()),
                hosts_of: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &S3SqsConfig {
        &self.inner.cfg
    }

    /// The S3 client (tests and tools).
    pub fn s3_client(&self) -> &aws_sdk_s3::Client {
        &self.inner.s3
    }

    /// The SQS client (tests and tools).
    pub fn sqs_client(&self) -> &aws_sdk_sqs::Client {
        &self.inner.sqs
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn bucket(&self) -> &str {
        &self.inner.cfg.bucket
    }

    // ----- S3 primitives -----

    async fn get_object(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        match self
            .inner
            .s3
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| backend("read", key, e))?
                    .into_bytes()
                    .to_vec();
                Ok(Some((bytes, etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => Ok(None),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("get", key, e)),
        }
    }

    /// One conditional PUT (`cond` = `If-None-Match: *` when None, else
    /// `If-Match: <etag>`), retrying S3's 409 with backoff.
    async fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        if_match: Option<&str>,
    ) -> Result<PutOutcome> {
        retry_409(
            || async {
                let mut req = self
                    .inner
                    .s3
                    .put_object()
                    .bucket(self.bucket())
                    .key(key)
                    .body(ByteStream::from(body.to_vec()));
                req = match if_match {
                    Some(etag) => req.if_match(etag),
                    None => req.if_none_match("*"),
                };
                match req.send().await {
                    Ok(out) => Try::Done(PutOutcome::Written(
                        out.e_tag().unwrap_or_default().to_string(),
                    )),
                    // 404: If-Match on a key that is gone (pruned): we lost too.
                    Err(e) if matches!(status(&e), Some(412) | Some(404)) => {
                        Try::Done(PutOutcome::PreconditionFailed)
                    }
                    Err(e) if status(&e) == Some(409) => Try::Conflict409(backend("put", key, e)),
                    Err(e) => Try::Failed(backend("put", key, e)),
                }
            },
            tokio::time::sleep,
        )
        .await
    }

    /// Takes the host's gate lease (module docs, "Gates"): returns the
    /// instant by which the holder must have enqueued, or `HostBusy` when
    /// another holder kept it for [`GATE_WAIT`].
    async fn take_gate(&self, host: &HostId) -> Result<(std::time::Instant, String)> {
        let key = keys::gate_key(host);
        let started = std::time::Instant::now();
        let mut tries = 0u32;
        loop {
            let taken_at = std::time::Instant::now();
            let lease = GateLease {
                holder: format!("{:016x}", rand::random::<u64>()),
                expires_ms: millis(self.now()) + GATE_LEASE.as_millis() as i64,
            };
            let body =
                serde_json::to_vec(&lease).map_err(|e| SpoolError::Invalid(e.to_string()))?;
            if let PutOutcome::Written(etag) = self.put_conditional(&key, &body, None).await? {
                return Ok((taken_at + GATE_HOLD, etag));
            }
            if let Some((held, etag)) = self.get_object(&key).await? {
                let expired = serde_json::from_slice::<GateLease>(&held)
                    .map_or(true, |l| l.expires_ms <= millis(self.now()));
                if expired
                    && let PutOutcome::Written(etag) =
                        self.put_conditional(&key, &body, Some(&etag)).await?
                {
                    tracing::warn!(host_id = %host, "took over an expired gate lease (its holder died while checking an execute)");
                    return Ok((taken_at + GATE_HOLD, etag));
                }
            }
            if started.elapsed() >= GATE_WAIT {
                return Err(SpoolError::HostBusy {
                    host: host.to_string(),
                    what: format!(
                        "another execute of this host held its gate for {} s",
                        GATE_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(retry::backoff(tries.min(4), rand::random::<f64>())).await;
            tries += 1;
        }
    }

    /// Gives the host's gate lease back (only if it is still the one taken:
    /// `If-Match` on its ETag). A failure is logged: the lease then expires.
    async fn release_gate(&self, host: &HostId, etag: &str) {
        let key = keys::gate_key(host);
        let res = self
            .inner
            .s3
            .delete_object()
            .bucket(self.bucket())
            .key(&key)
            .if_match(etag)
            .send()
            .await;
        if let Err(e) = res {
            tracing::warn!(host_id = %host, error = %backend("delete", &key, e),
                "could not give the gate lease back: this host's executes wait for it to expire (60 s)");
        }
    }

    async fn put_plain(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.inner
            .s3
            .put_object()
            .bucket(self.bucket())
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| backend("put", key, e))
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        self.inner
            .s3
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| backend("delete", key, e))
    }

    /// Keys (with their last-modified time in ms) under `prefix`, in key
    /// order, at most `limit`.
    async fn list_keys(&self, prefix: &str, limit: usize) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .s3
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_continuation_token(token.take())
                .max_keys(limit.saturating_sub(out.len()).clamp(1, 1000) as i32)
                .send()
                .await
                .map_err(|e| backend("list", prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let t = o
                        .last_modified()
                        .map(|d| d.to_millis().unwrap_or(0))
                        .unwrap_or(0);
                    out.push((k.to_string(), t));
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || out.len() >= limit {
                return Ok(out);
            }
        }
    }

    /// Sub-prefixes of `prefix` (one level, `/`-delimited).
    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .s3
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(prefix)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| backend("list", prefix, e))?;
            out.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    // ----- records -----

    async fn host_of(&self, id: &RunId) -> Result<Option<HostId>> {
        if let Some(h) = lock(&self.inner.hosts_of).get(id) {
            return Ok(Some(h.clone()));
        }
        let key = keys::pointer_key(id);
        let Some((bytes, _)) = self.get_object(&key).await? else {
            return Ok(None);
        };
        let host = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| HostId::parse(s.trim()).ok())
            .ok_or_else(|| SpoolError::Backend(format!("{key}: not a host id")))?;
        lock(&self.inner.hosts_of).insert(id.clone(), host.clone());
        Ok(Some(host))
    }

    /// Reads a run of `host` with its ETag, or None if there is none.
    pub async fn fetch(&self, host: &HostId, id: &RunId) -> Result<Option<FetchedRun>> {
        let key = keys::record_key(host, id);
        let Some((bytes, etag)) = self.get_object(&key).await? else {
            return Ok(None);
        };
        let d = codec::decode(&bytes).map_err(|reason| SpoolError::Corrupt {
            path: key.clone().into(),
            reason,
        })?;
        if d.record.run_id != *id || d.record.host_id != *host {
            return Err(SpoolError::Corrupt {
                path: key.into(),
                reason: "the record names another run or host".into(),
            });
        }
        let valid = usize::try_from(d.valid_len)
            .unwrap_or(bytes.len())
            .min(bytes.len());
        let mut bytes = bytes;
        bytes.truncate(valid);
        Ok(Some(FetchedRun {
            version: d.events.len() as u64,
            record: d.record,
            etag,
            bytes,
        }))
    }

    async fn fetch_by_id(&self, id: &RunId) -> Result<FetchedRun> {
        let not_found = || SpoolError::NotFound {
            run_id: id.to_string(),
        };
        let host = self.host_of(id).await?.ok_or_else(not_found)?;
        self.fetch(&host, id).await?.ok_or_else(not_found)
    }

    /// Appends `kind` to `cur` with `If-Match` on its ETag: the commit point
    /// of every move. Then moves the index entry. A lost race is `Conflict`.
    ///
    /// `claimed_after`: this instance still holds its claim after the move
    /// (the index entry then stays in the running bucket while queued).
    async fn commit(
        &self,
        cur: &FetchedRun,
        kind: EventKind,
        claimed_after: bool,
    ) -> Result<FetchedRun> {
        let ev = Event {
            seq: cur.version,
            at: self.now(),
            kind,
        };
        let mut next = cur.record.clone();
        state::apply(&mut next, &ev)?;
        let mut bytes = cur.bytes.clone();
        bytes.extend_from_slice(&codec::encode(&ev));
        let key = keys::record_key(&cur.record.host_id, &cur.record.run_id);
        match self.put_conditional(&key, &bytes, Some(&cur.etag)).await? {
            PutOutcome::Written(etag) => {
                let new = FetchedRun {
                    record: next,
                    etag,
                    version: cur.version + 1,
                    bytes,
                };
                let claimed_before = lock(&self.inner.claims).contains_key(&cur.record.run_id);
                let old_key = self.entry_key(&cur.record, cur.version, claimed_before);
                let new_key = self.entry_key(&new.record, new.version, claimed_after);
                self.put_plain(&new_key, Vec::new()).await?;
                if old_key != new_key {
                    self.delete_key(&old_key).await?;
                }
                Ok(new)
            }
            PutOutcome::PreconditionFailed => Err(SpoolError::Conflict {
                run_id: cur.record.run_id.to_string(),
                what: format!(
                    "its record changed since it was read ({} lost)",
                    ev_name(&ev)
                ),
            }),
        }
    }

    fn entry_key(&self, rec: &RunRecord, version: u64, claimed: bool) -> String {
        if claimed && rec.state == RunState::Queued {
            keys::claimed_index_key(rec, version)
        } else {
            keys::index_key(rec, version)
        }
    }

    async fn move_index(
        &self,
        old: Option<(&RunRecord, u64)>,
        new: &RunRecord,
        version: u64,
    ) -> Result<()> {
        let new_key = keys::index_key(new, version);
        self.put_plain(&new_key, Vec::new()).await?;
        if let Some((rec, v)) = old {
            let old_key = keys::index_key(rec, v);
            if old_key != new_key {
                self.delete_key(&old_key).await?;
            }
        }
        Ok(())
    }

    /// Reads, checks `mv`, commits. For state moves.
    async fn do_move(
        &self,
        id: &RunId,
        mv: Move,
        make: impl FnOnce(&RunRecord) -> Result<EventKind>,
        claimed_after: bool,
    ) -> Result<FetchedRun> {
        let cur = self.fetch_by_id(id).await?;
        state::check(&cur.record, mv)?;
        let kind = make(&cur.record)?;
        self.commit(&cur, kind, claimed_after).await
    }

    fn is_claimed(&self, id: &RunId) -> bool {
        lock(&self.inner.claims).contains_key(id)
    }

    /// Creates a new record: pointer, record (`If-None-Match: *`), pointer
    /// message when ready, index entry. Returns None when the record exists.
    async fn create(&self, record: &RunRecord) -> Result<Option<FetchedRun>> {
        let host = &record.host_id;
        let id = &record.run_id;
        let pkey = keys::pointer_key(id);
        match self
            .put_conditional(&pkey, host.as_str().as_bytes(), None)
            .await?
        {
            PutOutcome::Written(_) => {}
            PutOutcome::PreconditionFailed => {
                // Exists: fine when it names this host (a repeat of a keyed
                // enqueue, or the first creator died before the record).
                if self.host_of(id).await?.as_ref() != Some(host) {
                    return Err(SpoolError::Invalid(format!(
                        "run id {id} is taken by another host"
                    )));
                }
            }
        }
        lock(&self.inner.hosts_of).insert(id.clone(), host.clone());
        let ev = Event {
            seq: 0,
            at: record.requested_at,
            kind: EventKind::Enqueued {
                record: Box::new(record.clone()),
            },
        };
        let bytes = encode_log(std::slice::from_ref(&ev));
        let key = keys::record_key(host, id);
        let etag = match self.put_conditional(&key, &bytes, None).await? {
            PutOutcome::Written(etag) => etag,
            PutOutcome::PreconditionFailed => return Ok(None),
        };
        if record.state == RunState::Queued
            && let Err(e) = self
                .send(
                    host,
                    &HostMessage::Run {
                        run_id: id.clone(),
                        host_id: host.clone(),
                    },
                )
                .await
        {
            // Not acknowledged, and no executor will hear of it: undo the
            // record (no index entry exists yet), so that the caller's retry
            // cannot leave a stranded second copy. A run-ids pointer without
            // a record reads as "no such run".
            if let Err(undo) = self.delete_key(&key).await {
                tracing::error!(run_id = %id, error = %undo,
                    "enqueue failed to send its pointer and could not remove the record; the next recover() re-sends it");
            }
            return Err(e);
        }
        self.move_index(None, record, 1).await?;
        Ok(Some(FetchedRun {
            record: record.clone(),
            etag,
            version: 1,
            bytes,
        }))
    }

    // ----- queues -----

    /// Creates (or finds) the host's queue and DLQ, with a redrive policy
    /// to the DLQ after 5 receives. Idempotent.
    pub async fn ensure_host_queues(&self, host: &HostId) -> Result<HostQueues> {
        let (name, dlq_name) = queue_names(&self.inner.cfg.queue_prefix, host);
        let sqs = &self.inner.sqs;
        let dlq_url = sqs
            .create_queue()
            .queue_name(&dlq_name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .map_err(|e| backend("create queue", &dlq_name, e))?
            .queue_url()
            .unwrap_or_default()
            .to_string();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| backend("get queue attributes", &dlq_name, e))?;
        let arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| SpoolError::Backend(format!("queue {dlq_name} has no ARN")))?;
        let redrive =
            serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": 5 }).to_string();
        let queue_url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .map_err(|e| backend("create queue", &name, e))?
            .queue_url()
            .unwrap_or_default()
            .to_string();
        let q = HostQueues { queue_url, dlq_url };
        lock(&self.inner.queues).insert(host.clone(), q.clone());
        Ok(q)
    }

    /// Run ids of the host's ready runs (queued index, oldest request
    /// first, at most `limit`), read from index keys alone. The executor's
    /// intake uses it as a safety net beside the pointer messages: a run
    /// whose message was never sent (an approve or replay whose send
    /// failed after its commit) is still found.
    pub async fn ready_runs(&self, host: &HostId, limit: usize) -> Result<Vec<RunId>> {
        Ok(self
            .list_keys(&keys::index_prefix(host, Bucket::Queued), limit)
            .await?
            .into_iter()
            .filter_map(|(k, _)| keys::parse_index_key(&k).map(|e| e.run_id))
            .collect())
    }

    /// The host's queue URL: cached, else looked up, else created.
    async fn queue_url(&self, host: &HostId) -> Result<String> {
        if let Some(q) = lock(&self.inner.queues).get(host) {
            return Ok(q.queue_url.clone());
        }
        let (name, _) = queue_names(&self.inner.cfg.queue_prefix, host);
        match self
            .inner
            .sqs
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
        {
            Ok(out) => Ok(out.queue_url().unwrap_or_default().to_string()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                Ok(self.ensure_host_queues(host).await?.queue_url)
            }
            Err(e) => Err(backend("get queue url", &name, e)),
        }
    }

    async fn send(&self, host: &HostId, msg: &HostMessage) -> Result<()> {
        let url = self.queue_url(host).await?;
        self.inner
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(msg.to_body())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| backend("send message to", &url, e))
    }

    /// Long-polls the host's queue: up to `max` (1-10) messages, waiting at
    /// most `wait` (up to 20 s) for the first.
    pub async fn receive(
        &self,
        host: &HostId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let url = self.queue_url(host).await?;
        let out = self
            .inner
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| backend("receive from", &url, e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let message = match m.body() {
                    Some(b) => HostMessage::parse(b).and_then(|msg| {
                        let h = match &msg {
                            HostMessage::Run { host_id, .. }
                            | HostMessage::Drain { host_id, .. }
                            | HostMessage::Policy { host_id } => host_id,
                        };
                        if h == host {
                            Ok(msg)
                        } else {
                            Err(format!("message for host {h} on the queue of {host}"))
                        }
                    }),
                    None => Err("empty message body".into()),
                };
                ReceivedMessage {
                    message,
                    receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                }
            })
            .collect())
    }

    /// Deletes a received message (after its run was imported durably).
    pub async fn delete_message(&self, host: &HostId, receipt_handle: &str) -> Result<()> {
        let url = self.queue_url(host).await?;
        self.inner
            .sqs
            .delete_message()
            .queue_url(&url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| backend("delete message from", &url, e))
    }

    // ----- the executor's write-back -----

    /// Writes the executor's newer copy of a run back to S3 with `If-Match`
    /// CAS, retrying on conflict by re-reading (up to 16 times, then
    /// `Conflict`). It never replaces a record with one that is not further
    /// along: that is `Stale`, and nothing is written. "Further along"
    /// compares, in order: attempts started, whether the last attempt
    /// finished, terminal or not, then the last change time. The copy is
    /// appended as a `mirrored` event, so S3's log keeps its history, and
    /// notes the API added in S3 meanwhile are kept. A run missing in S3
    /// (pruned) is created again.
    pub async fn mirror(&self, record: &RunRecord) -> Result<MirrorOutcome> {
        let host = &record.host_id;
        let id = &record.run_id;
        for n in 0..16u32 {
            let Some(cur) = self.fetch(host, id).await? else {
                // The pointer lets the API find the run by id. A host's
                // executor may write only under `hosts/<host>/` (IAM): then
                // the run is still listed in snapshots, just not found by id.
                let key = keys::pointer_key(id);
                if let Err(e) = self
                    .put_conditional(&key, host.as_str().as_bytes(), None)
                    .await
                {
                    tracing::warn!(run_id = %id, error = %e, "mirror: could not write the run's id pointer");
                }
                let ev = Event {
                    seq: 0,
                    at: record.requested_at,
                    kind: EventKind::Enqueued {
                        record: Box::new(record.clone()),
                    },
                };
                let rkey = keys::record_key(host, id);
                match self
                    .put_conditional(&rkey, &encode_log(std::slice::from_ref(&ev)), None)
                    .await?
                {
                    PutOutcome::Written(_) => {
                        self.move_index(None, record, 1).await?;
                        return Ok(MirrorOutcome::Applied);
                    }
                    PutOutcome::PreconditionFailed => continue,
                }
            };
            if cur.record == *record {
                return Ok(MirrorOutcome::AlreadyCurrent);
            }
            if progress(record) <= progress(&cur.record) {
                return Ok(MirrorOutcome::Stale);
            }
            match self
                .commit(
                    &cur,
                    EventKind::Mirrored {
                        record: Box::new(record.clone()),
                    },
                    false,
                )
                .await
            {
                Ok(_) => return Ok(MirrorOutcome::Applied),
                Err(SpoolError::Conflict { .. }) => {
                    tokio::time::sleep(retry::backoff(n.min(6), rand::random::<f64>())).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(SpoolError::Conflict {
            run_id: id.to_string(),
            what: "16 tries to mirror it lost to other writers".into(),
        })
    }

    // ----- claims -----

    async fn release_claim(&self, id: &RunId) -> Result<()> {
        let host = lock(&self.inner.claims).remove(id);
        if let Some(host) = host {
            self.delete_key(&keys::claim_key(&host, id)).await?;
        }
        Ok(())
    }

    fn require_claim(&self, id: &RunId) -> Result<()> {
        if lock(&self.inner.claims).contains_key(id) {
            Ok(())
        } else {
            Err(SpoolError::NotClaimed {
                run_id: id.to_string(),
            })
        }
    }

    async fn finish(
        &self,
        id: &RunId,
        mv: Move,
        result: AttemptResult,
        next: Next,
    ) -> Result<RunRecord> {
        self.require_claim(id)?;
        let f = self
            .do_move(
                id,
                mv,
                |r| Ok(EventKind::attempt_finished(r, result, next)),
                false,
            )
            .await?;
        self.release_claim(id).await?;
        Ok(f.record)
    }

    // ----- index reading -----

    /// The newest index entry of each run in `prefix` (drops entries a crash
    /// left behind).
    async fn entries(&self, prefix: &str) -> Result<Vec<(IndexEntry, i64)>> {
        self.entries_in(prefix, usize::MAX).await
    }

    /// As [`Self::entries`], from the first `limit` keys only.
    async fn entries_in(&self, prefix: &str, limit: usize) -> Result<Vec<(IndexEntry, i64)>> {
        let mut newest: HashMap<RunId, (IndexEntry, i64)> = HashMap::new();
        for (k, t) in self.list_keys(prefix, limit).await? {
            if let Some(e) = keys::parse_index_key(&k) {
                match newest.get(&e.run_id) {
                    Some((old, _)) if old.version >= e.version => {}
                    _ => {
                        newest.insert(e.run_id.clone(), (e, t));
                    }
                }
            }
        }
        Ok(newest.into_values().collect())
    }

    async fn hosts_listed(&self, host: Option<&HostId>) -> Result<Vec<HostId>> {
        Ok(match host {
            Some(h) => vec![h.clone()],
            None => self.hosts().await?,
        })
    }

    /// Queued runs of `host` by due time: (due, requested, id).
    async fn due_list(&self, host: &HostId) -> Result<Vec<(i64, i64, RunId)>> {
        let mut v = Vec::new();
        for b in [Bucket::Queued, Bucket::RetryScheduled] {
            for (e, _) in self.entries(&keys::index_prefix(host, b)).await? {
                v.push((e.due_ms, e.requested_ms, e.run_id));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Rebuilds one host's index from its records (reads every record).
    async fn repair_host(&self, host: &HostId, rep: &mut RecoveryReport) -> Result<()> {
        let mut want: BTreeMap<String, RunRecord> = BTreeMap::new();
        for (k, _) in self.list_keys(&keys::runs_prefix(host), usize::MAX).await? {
            let Some(id) = k
                .strip_prefix(&keys::runs_prefix(host))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| RunId::parse(n).ok())
            else {
                continue;
            };
            match self.fetch(host, &id).await {
                Ok(Some(f)) => {
                    let claimed = self.is_claimed(&f.record.run_id);
                    want.insert(self.entry_key(&f.record, f.version, claimed), f.record);
                }
                Ok(None) => {}
                Err(SpoolError::Corrupt { reason, .. }) => {
                    rep.quarantined.push((id.to_string(), reason));
                }
                Err(e) => return Err(e),
            }
        }
        let have: std::collections::HashSet<String> = self
            .list_keys(&keys::index_host_prefix(host), usize::MAX)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in &have {
            if !want.contains_key(k) {
                self.delete_key(k).await?;
            }
        }
        for (k, rec) in &want {
            if !have.contains(k) {
                self.put_plain(k, Vec::new()).await?;
                rep.relocated.push(rec.run_id.to_string());
            }
            // At least once: a crash (or a failed send) between a commit and
            // its message must not strand a ready run. The executor
            // deduplicates by run id.
            if rec.state == RunState::Queued && rec.attempts == 0 && !self.is_claimed(&rec.run_id) {
                self.send(
                    host,
                    &HostMessage::Run {
                        run_id: rec.run_id.clone(),
                        host_id: host.clone(),
                    },
                )
                .await?;
            }
        }
        // Claim markers of other (dead) instances: there is no lease, so
        // recover must only be called by the one consumer of a host, at start.
        let mine: Vec<RunId> = lock(&self.inner.claims).keys().cloned().collect();
        for (k, _) in self
            .list_keys(&keys::claims_prefix(host), usize::MAX)
            .await?
        {
            let id = k.rsplit('/').next().and_then(|n| RunId::parse(n).ok());
            if id.is_some_and(|id| !mine.contains(&id)) {
                self.delete_key(&k).await?;
                rep.orphans_requeued.push(k);
            }
        }
        Ok(())
    }
}

fn ev_name(ev: &Event) -> &'static str {
    match &ev.kind {
        EventKind::Enqueued { .. } => "enqueue",
        EventKind::Held { .. } => "hold",
        EventKind::Approved { .. } => "approve",
        EventKind::Rejected { .. } => "reject",
        EventKind::AttemptStarted { .. } => "start attempt",
        EventKind::AttemptFinished { .. } => "finish attempt",
        EventKind::DeadLettered { .. } => "dead-letter",
        EventKind::Expired => "expire",
        EventKind::Canceled { .. } => "cancel",
        EventKind::ReplayRequested { .. } | EventKind::Replayed { .. } => "replay",
        EventKind::Rescheduled { .. } => "reschedule",
        EventKind::Note { .. } => "note",
        EventKind::Mirrored { .. } => "mirror",
    }
}

/// The child of a replay (as the local spool builds it).
fn fresh_child(src: &RunRecord, id: RunId, by: &str, now: Timestamp) -> RunRecord {
    let ttl = src.expires_at.map(|e| e - src.requested_at);
    let mut canary = src.canary.clone();
    canary.passed = None;
    let mut rollback = src.rollback.clone();
    rollback.attempted = false;
    rollback.succeeded = None;
    let new = NewRun {
        host_id: src.host_id.clone(),
        action_key: src.action_key.clone(),
        params: src.params.clone(),
        requested_by: by.to_string(),
        idempotency_key: None,
        max_attempts: src.max_attempts,
        expires_at: ttl.map(|t| now + t),
        idempotent: src.idempotent,
        approval_required: src.approval.required,
        canary,
        rollback,
        auto_queued: false,
        auto_reason: None,
        auto_tier: src.auto_tier.clone(),
        risk: src.risk.clone(),
        tier: src.tier.clone(),
    };
    RunRecord::new(id, new, now, Some(src.run_id.clone()))
}

#[async_trait]
impl Store for S3SqsStore {
    /// Under the host's gate lease (module docs, "Gates").
    async fn enqueue_checked(
        &self,
        new: NewRun,
        since: Timestamp,
        check: crate::store::EnqueueCheck,
    ) -> Result<crate::store::Checked> {
        let host = new.host_id.clone();
        let (commit_by, etag) = self.take_gate(&host).await?;
        let out =
            crate::store::enqueue_checked_by_parts(self, new, since, check, Some(commit_by)).await;
        self.release_gate(&host, &etag).await;
        out
    }

    async fn enqueue(&self, new: NewRun) -> Result<Enqueued> {
        let host = new.host_id.clone();
        let id = match &new.idempotency_key {
            Some(k) => RunId::for_key(&host, k),
            None => RunId::generate(),
        };
        let keyed = new.idempotency_key.is_some();
        if keyed && let Some(f) = self.fetch(&host, &id).await? {
            return Ok(Enqueued {
                record: f.record,
                created: false,
            });
        }
        let record = RunRecord::new(id.clone(), new, self.now(), None);
        match self.create(&record).await? {
            Some(f) => Ok(Enqueued {
                record: f.record,
                created: true,
            }),
            None if keyed => match self.fetch(&host, &id).await? {
                Some(f) => Ok(Enqueued {
                    record: f.record,
                    created: false,
                }),
                None => Err(SpoolError::Conflict {
                    run_id: id.to_string(),
                    what: "its record vanished during the enqueue".into(),
                }),
            },
            None => Err(SpoolError::Backend(format!(
                "fresh run id {id} already exists"
            ))),
        }
    }

    async fn get(&self, id: &RunId) -> Result<Option<RunRecord>> {
        let Some(host) = self.host_of(id).await? else {
            return Ok(None);
        };
        Ok(self.fetch(&host, id).await?.map(|f| f.record))
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<RunRecord>> {
        let mut picks: Vec<(IndexEntry, HostId)> = Vec::new();
        for host in self.hosts_listed(q.host.as_ref()).await? {
            for b in &q.buckets {
                // Keys sort oldest request first: the first page(s) suffice.
                // The slack covers entries a crash left behind.
                let prefix = keys::index_prefix(&host, *b);
                let mut es = self.entries_in(&prefix, q.limit.saturating_add(64)).await?;
                es.sort_by(|a, b| {
                    (a.0.requested_ms, &a.0.run_id).cmp(&(b.0.requested_ms, &b.0.run_id))
                });
                es.truncate(q.limit);
                picks.extend(es.into_iter().map(|(e, _)| (e, host.clone())));
            }
        }
        picks.sort_by(|a, b| (a.0.requested_ms, &a.0.run_id).cmp(&(b.0.requested_ms, &b.0.run_id)));
        picks.truncate(q.limit);
        let mut out = Vec::with_capacity(picks.len());
        for (e, host) in picks {
            // An entry a crash left stale names an older version, and the
            // record is listed where its current entry is.
            if let Some(f) = self.fetch(&host, &e.run_id).await?
                && (f.version == e.version || keys::bucket_of(&f.record) == e.bucket)
            {
                out.push(f.record);
            }
        }
        Ok(out)
    }

    async fn counts(&self, host: Option<HostId>) -> Result<Counts> {
        let mut c = Counts::default();
        for h in self.hosts_listed(host.as_ref()).await? {
            for (e, _) in self.entries(&keys::index_host_prefix(&h)).await? {
                match e.bucket {
                    Bucket::Queued => c.queued += 1,
                    Bucket::RetryScheduled => c.retry_scheduled += 1,
                    Bucket::Held => c.held += 1,
                    Bucket::Running => c.running += 1,
                    Bucket::Succeeded => c.succeeded += 1,
                    Bucket::Rejected => c.rejected += 1,
                    Bucket::Expired => c.expired += 1,
                    Bucket::Canceled => c.canceled += 1,
                    Bucket::Replayed => c.replayed += 1,
                    Bucket::Dlq => c.dlq += 1,
                    Bucket::Corrupt => c.corrupt += 1,
                }
            }
        }
        Ok(c)
    }

    async fn claim_next(
        &self,
        host: &HostId,
        busy_actions: Vec<String>,
    ) -> Result<Option<RunRecord>> {
        let now_ms = millis(self.now());
        for (due, _, id) in self.due_list(host).await? {
            if due > now_ms {
                break;
            }
            if lock(&self.inner.claims).contains_key(&id) {
                continue;
            }
            let Some(f) = self.fetch(host, &id).await? else {
                continue;
            };
            let r = &f.record;
            if r.state != RunState::Queued
                || millis(r.due_at()) > now_ms
                || busy_actions.contains(&r.action_key)
            {
                continue;
            }
            let marker = serde_json::json!({ "worker": self.inner.worker, "at": self.now() });
            let key = keys::claim_key(host, &id);
            match self
                .put_conditional(&key, marker.to_string().as_bytes(), None)
                .await?
            {
                PutOutcome::Written(_) => {
                    lock(&self.inner.claims).insert(id.clone(), host.clone());
                    lock(&self.inner.hosts_of).insert(id, host.clone());
                    // Counted as running from now on, as in the local spool.
                    self.put_plain(&keys::claimed_index_key(&f.record, f.version), Vec::new())
                        .await?;
                    self.delete_key(&keys::index_key(&f.record, f.version))
                        .await?;
                    return Ok(Some(f.record));
                }
                PutOutcome::PreconditionFailed => continue,
            }
        }
        Ok(None)
    }

    async fn start_attempt(&self, id: &RunId) -> Result<RunRecord> {
        self.require_claim(id)?;
        let worker = self.inner.worker.clone();
        let f = self
            .do_move(
                id,
                Move::StartAttempt,
                |r| {
                    Ok(EventKind::AttemptStarted {
                        attempt: r.attempts + 1,
                        worker,
                    })
                },
                true,
            )
            .await?;
        Ok(f.record)
    }

    async fn append_event(
        &self,
        id: &RunId,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<RunRecord> {
        // Notes commute with every move: a lost race is retried on the new copy.
        for n in 0..8u32 {
            let cur = self.fetch_by_id(id).await?;
            let ev = EventKind::Note {
                kind: kind.to_string(),
                data: data.clone(),
            };
            match self.commit(&cur, ev, self.is_claimed(id)).await {
                Err(SpoolError::Conflict { .. }) => {
                    tokio::time::sleep(retry::backoff(n, rand::random::<f64>())).await
                }
                other => return other.map(|f| f.record),
            }
        }
        Err(SpoolError::Conflict {
            run_id: id.to_string(),
            what: "8 tries to add a note lost to other writers".into(),
        })
    }

    async fn complete(&self, id: &RunId, result: AttemptResult) -> Result<RunRecord> {
        self.finish(id, Move::Complete, result, Next::Succeeded)
            .await
    }

    async fn retry_at(
        &self,
        id: &RunId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<RunRecord> {
        self.finish(id, Move::RetryAt, result, Next::RetryAt { at })
            .await
    }

    async fn dead_letter(
        &self,
        id: &RunId,
        reason: &str,
        result: Option<AttemptResult>,
    ) -> Result<RunRecord> {
        let reason = reason.to_string();
        let f = self
            .do_move(
                id,
                Move::DeadLetter,
                move |r| Ok(EventKind::dead_letter(r, reason, result)),
                false,
            )
            .await?;
        self.release_claim(id).await?;
        Ok(f.record)
    }

    async fn hold(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let reason = reason.to_string();
        let f = self
            .do_move(id, Move::Hold, |_| Ok(EventKind::Held { reason }), false)
            .await?;
        self.release_claim(id).await?;
        Ok(f.record)
    }

    async fn approve(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord> {
        let by = by.to_string();
        let f = self
            .do_move(
                id,
                Move::Approve,
                |_| Ok(EventKind::Approved { by, reason }),
                false,
            )
            .await?;
        // Ready now: only the writer that won the CAS sends the pointer.
        self.send(
            &f.record.host_id,
            &HostMessage::Run {
                run_id: id.clone(),
                host_id: f.record.host_id.clone(),
            },
        )
        .await?;
        Ok(f.record)
    }

    async fn reject(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord> {
        let by = by.to_string();
        let f = self
            .do_move(
                id,
                Move::Reject,
                |_| Ok(EventKind::Rejected { by, reason }),
                false,
            )
            .await?;
        Ok(f.record)
    }

    async fn expire(&self, id: &RunId) -> Result<RunRecord> {
        let f = self
            .do_move(id, Move::Expire, |_| Ok(EventKind::Expired), false)
            .await?;
        self.release_claim(id).await?;
        Ok(f.record)
    }

    async fn cancel(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let reason = reason.to_string();
        let f = self
            .do_move(
                id,
                Move::Cancel,
                |_| Ok(EventKind::Canceled { reason }),
                false,
            )
            .await?;
        self.release_claim(id).await?;
        Ok(f.record)
    }

    /// Replay: (1) commit `replay-requested` on the source (the CAS that
    /// decides a race), (2) create the child (pointer, record, message when
    /// ready, index), (3) commit `replayed` on the source. A crash after (1)
    /// leaves an intent without a child, which is ignored; after (2), a
    /// child and a source still in the DLQ, which a later replay attempt
    /// cannot double (it would need to win (1) again on the new version).
    async fn replay(&self, id: &RunId, by: &str) -> Result<RunRecord> {
        let cur = self.fetch_by_id(id).await?;
        state::check(&cur.record, Move::Replay)?;
        let child_id = RunId::generate();
        let cur = self
            .commit(
                &cur,
                EventKind::ReplayRequested {
                    child: child_id.clone(),
                    by: by.to_string(),
                },
                false,
            )
            .await?;
        let child = fresh_child(&cur.record, child_id.clone(), by, self.now());
        let made = self.create(&child).await?.ok_or_else(|| {
            SpoolError::Backend(format!("fresh run id {child_id} already exists"))
        })?;
        let mut cur = cur;
        for n in 0..8u32 {
            match self
                .commit(
                    &cur,
                    EventKind::Replayed {
                        child: child_id.clone(),
                    },
                    false,
                )
                .await
            {
                Ok(_) => return Ok(made.record),
                Err(SpoolError::Conflict { .. }) => {
                    tokio::time::sleep(retry::backoff(n, rand::random::<f64>())).await;
                    cur = self.fetch_by_id(id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(SpoolError::Conflict {
            run_id: id.to_string(),
            what: format!("replayed as {child_id} but could not mark the source"),
        })
    }

    async fn next_due(&self, host: &HostId) -> Result<Option<Timestamp>> {
        Ok(self
            .due_list(host)
            .await?
            .first()
            .and_then(|(due, _, _)| chrono::DateTime::from_timestamp_millis(*due)))
    }

    /// Rebuilds every host's index from the records (reads every record),
    /// re-sends the pointer of every queued, never-attempted run (a crash or
    /// a failed send after a commit loses no run; the executor deduplicates
    /// by run id), and drops claim markers of other instances (call it only
    /// from the one consumer of a host, at start, or from an operator tool).
    /// Unlike the local spool it does not settle interrupted attempts: in
    /// AWS mode the executor's local spool owns running runs.
    async fn recover(&self) -> Result<RecoveryReport> {
        let mut rep = RecoveryReport::default();
        for h in self.hosts().await? {
            self.repair_host(&h, &mut rep).await?;
        }
        Ok(rep)
    }

    async fn hosts(&self) -> Result<Vec<HostId>> {
        let mut v: Vec<HostId> = self
            .list_prefixes("hosts/")
            .await?
            .iter()
            .filter_map(|p| keys::host_of_prefix(p))
            .collect();
        v.sort();
        // Only hosts that have runs (a host may have only a policy document).
        let mut out = Vec::new();
        for h in v {
            if !self.list_keys(&keys::runs_prefix(&h), 1).await?.is_empty() {
                out.push(h);
            }
        }
        Ok(out)
    }

    async fn flush_retries(&self, host: &HostId) -> Result<usize> {
        let now = self.now();
        let mut n = 0;
        for (e, _) in self
            .entries(&keys::index_prefix(host, Bucket::RetryScheduled))
            .await?
        {
            if e.due_ms <= millis(now) {
                continue;
            }
            let res = self
                .do_move(
                    &e.run_id,
                    Move::Reschedule,
                    |r| {
                        if r.due_at() <= now {
                            Err(SpoolError::Invalid("already due".into()))
                        } else {
                            Ok(EventKind::Rescheduled { at: now })
                        }
                    },
                    self.is_claimed(&e.run_id),
                )
                .await;
            match res {
                Ok(_) => n += 1,
                Err(
                    SpoolError::Conflict { .. }
                    | SpoolError::Invalid(_)
                    | SpoolError::NotFound { .. }
                    | SpoolError::IllegalMove { .. },
                ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    async fn get_host_doc(&self, host: &HostId) -> Result<Option<serde_json::Value>> {
        let key = keys::policy_key(host);
        match self.get_object(&key).await? {
            Some((b, _)) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| SpoolError::Corrupt {
                    path: key.into(),
                    reason: format!("host document is not JSON: {e}"),
                }),
            None => Ok(None),
        }
    }

    async fn put_host_doc(&self, host: &HostId, doc: serde_json::Value) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| SpoolError::Invalid(e.to_string()))?;
        self.put_plain(&keys::policy_key(host), bytes).await?;
        // The executor copies the document whenever a receive returns
        // messages and after every empty long poll (up to 20 s); this
        // message makes the copy immediate, so a host disabled by an
        // operator stops running its queued and retrying runs at once. The
        // document is stored either way: a failed send only delays the copy.
        let msg = HostMessage::Policy {
            host_id: host.clone(),
        };
        if let Err(e) = self.send(host, &msg).await {
            tracing::warn!(host_id = %host, error = %e,
                "host document stored, but telling the host's executor failed: it copies the document after its current long poll (at most 20 s)");
        }
        Ok(())
    }

    /// One object per entry: a PUT that returned is durable, so `durable`
    /// changes nothing here.
    async fn audit(&self, entry: AuditLine, _durable: bool) -> Result<()> {
        let now = self.now();
        let key = keys::audit_key(
            &now.format("%Y-%m-%d").to_string(),
            millis(now),
            rand::random(),
        );
        self.put_plain(&key, entry.into_bytes()).await
    }

    async fn recent_requests(&self, host: &HostId, since: Timestamp) -> Result<Vec<RecentRequest>> {
        let since_ms = millis(since);
        let mut out = Vec::new();
        for (e, _) in self.entries(&keys::index_host_prefix(host)).await? {
            if e.requested_ms < since_ms {
                continue;
            }
            if let Some(f) = self.fetch(host, &e.run_id).await? {
                out.push(RecentRequest {
                    action_key: f.record.action_key,
                    requested_at: f.record.requested_at,
                    auto_queued: f.record.auto_queued,
                });
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
        Ok(out)
    }

    async fn host_activity(&self, host: &HostId) -> Result<HostActivity> {
        Ok(match self.get_object(&keys::activity_key(host)).await? {
            Some((b, _)) => serde_json::from_slice(&b).unwrap_or_default(),
            None => HostActivity::default(),
        })
    }

    /// Read, modify, write with CAS; a lost race is retried on the new copy.
    async fn record_activity(&self, host: &HostId, kind: ActivityKind, action: &str) -> Result<()> {
        let key = keys::activity_key(host);
        for n in 0..16u32 {
            let cur = self.get_object(&key).await?;
            let mut a: HostActivity = cur
                .as_ref()
                .and_then(|(b, _)| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            let now = self.now();
            let day_ago = now - chrono::Duration::days(1);
            a.executes.retain(|e| e.at > day_ago);
            match kind {
                ActivityKind::DryRun => {
                    a.dry_runs.insert(action.to_string(), now);
                }
                ActivityKind::Execute => a.executes.push(ActivityEntry {
                    action: action.to_string(),
                    at: now,
                }),
            }
            let bytes = serde_json::to_vec(&a).map_err(|e| SpoolError::Invalid(e.to_string()))?;
            let etag = cur.as_ref().map(|(_, e)| e.as_str());
            match self.put_conditional(&key, &bytes, etag).await? {
                PutOutcome::Written(_) => return Ok(()),
                PutOutcome::PreconditionFailed => {
                    tokio::time::sleep(retry::backoff(n.min(6), rand::random::<f64>())).await
                }
            }
        }
        Err(SpoolError::Backend(format!(
            "{key}: 16 writers in a row beat us"
        )))
    }

    async fn request_drain(&self, host: &HostId, limit: u32) -> Result<()> {
        self.send(
            host,
            &HostMessage::Drain {
                host_id: host.clone(),
                limit,
            },
        )
        .await
    }

    /// Removes finished runs (record, index entry, pointer) older than the
    /// retention, judged by the last move (the index entry's write time),
    /// and keeps at most the newest `*_max_count` per host.
    async fn prune(&self, r: Retention) -> Result<PruneReport> {
        let mut rep = PruneReport::default();
        let now_ms = millis(self.now());
        for host in self.hosts().await? {
            let groups: [(&[Bucket], Duration, usize, bool); 2] = [
                (
                    &[
                        Bucket::Succeeded,
                        Bucket::Rejected,
                        Bucket::Expired,
                        Bucket::Canceled,
                        Bucket::Replayed,
                    ],
                    r.done_max_age,
                    r.done_max_count,
                    false,
                ),
                (&[Bucket::Dlq], r.dlq_max_age, r.dlq_max_count, true),
            ];
            for (buckets, max_age, max_count, is_dlq) in groups {
                let mut all: Vec<(i64, IndexEntry)> = Vec::new();
                for b in buckets {
                    for (e, t) in self.entries(&keys::index_prefix(&host, *b)).await? {
                        all.push((t, e));
                    }
                }
                all.sort_by(|a, b| (a.0, &a.1.run_id).cmp(&(b.0, &b.1.run_id)));
                let excess = all.len().saturating_sub(max_count);
                let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
                let mut removed = 0;
                for (i, (t, e)) in all.iter().enumerate() {
                    let too_old = now_ms.saturating_sub(*t) > max_age_ms;
                    if i >= excess && !too_old {
                        continue;
                    }
                    // Only when the record still is what the entry says.
                    let Some(f) = self.fetch(&host, &e.run_id).await? else {
                        continue;
                    };
                    if keys::bucket_of(&f.record) != e.bucket {
                        continue;
                    }
                    self.delete_key(&keys::record_key(&host, &e.run_id)).await?;
                    self.delete_key(&keys::index_key(&f.record, f.version))
                        .await?;
                    self.delete_key(&keys::pointer_key(&e.run_id)).await?;
                    lock(&self.inner.hosts_of).remove(&e.run_id);
                    removed += 1;
                }
                if is_dlq {
                    rep.dlq_removed += removed;
                } else {
                    rep.done_removed += removed;
                }
            }
        }
        Ok(rep)
    }
}
