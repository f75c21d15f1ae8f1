//! AWS mode: the executor's SQS intake and its mirror of local state to S3.
//!
//! In AWS mode the HTTP handlers run on Lambda and keep runs in S3; each
//! host has an SQS queue of pointers (run id, host). The executor stays the
//! same daemon working on its local spool, with two tasks beside it:
//!
//! - the **intake** ([`Intake`]) long-polls the host's queue. For a run
//!   message it fetches the record from S3, imports it into the local spool
//!   durably ([`LocalSpool::import`], deduplicated by run id) and **only
//!   then** deletes the message. Delivery is at least once: a message whose
//!   import did not finish (crash, I/O error) comes back after its
//!   visibility timeout and is imported or found present then. A message
//!   that cannot be parsed, names another host, or whose record is missing
//!   or refused stays undeleted and is logged; the queue's redrive policy
//!   moves it to the host's DLQ after 5 receives. A drain message becomes
//!   the local drain request the daemon already watches (`control/`). A
//!   policy message (sent when the host's document is written through the
//!   API) copies the document into the spool at once, so a host disabled
//!   by an operator runs nothing more: every attempt checks the local copy
//!   first. Without messages the document is also copied after every empty
//!   long poll.
//! - the **mirror** ([`Mirror`]) copies every local change of the host's
//!   runs back to S3 with the store's compare-and-swap
//!   ([`RemoteRuns::mirror`]). Which runs need it is found from the spool
//!   itself: a record file is an append-only log, so its length is its
//!   version; the mirror remembers the length it last copied per run in
//!   `<spool>/mirror/<host>/<runId>`. The spool is the durable outbox: a
//!   lost marker only costs one redundant copy (answered `AlreadyCurrent`),
//!   so nothing is lost across restarts and markers need no fsync. While AWS
//!   cannot be reached, passes are retried with exponential backoff. The
//!   store never lets a record go back to an older state; its `Stale`
//!   answer is final for that version.
//!
//! The AWS calls sit behind [`RemoteRuns`]; the S3 + SQS store implements it
//! (feature `aws`, module `intake_aws`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use remediate_spool::{
    Dir, HostId, ImportOutcome, LocalSpool, Result as SpoolResult, RunId, RunRecord, SpoolError,
    Store,
};
use tokio::sync::{Notify, watch};

use crate::daemon::Drained;

/// A message of a host's queue, as the intake understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteMessage {
    /// A run became ready (enqueued, approved or replayed) in S3.
    Run { run_id: RunId, host_id: HostId },
    /// Drain up to `limit` due runs now.
    Drain { host_id: HostId, limit: u32 },
    /// The host's policy document changed in S3.
    Policy { host_id: HostId },
}

/// One received message. `message` is `Err` (with the reason) when its body
/// could not be parsed.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: Result<RemoteMessage, String>,
    pub receipt_handle: String,
    pub message_id: String,
    pub receive_count: u32,
}

/// What a mirror call did in S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrored {
    /// S3 now holds this version.
    Applied,
    /// S3 already held it.
    AlreadyCurrent,
    /// S3 holds a later state; nothing was written (final).
    Stale,
}

/// The remote side of AWS mode: the host's SQS queue and the run records in
/// S3. Implemented by the S3 + SQS store (feature `aws`).
#[async_trait]
pub trait RemoteRuns: Send + Sync + std::fmt::Debug {
    /// Long-polls the host's queue for up to `max` messages.
    async fn receive(&self, host: &HostId, max: u32, wait: Duration) -> SpoolResult<Vec<Received>>;
    async fn delete_message(&self, host: &HostId, receipt_handle: &str) -> SpoolResult<()>;
    async fn fetch(&self, host: &HostId, id: &RunId) -> SpoolResult<Option<RunRecord>>;
    /// Writes the local record to S3 unless S3 holds a later state.
    async fn mirror(&self, record: &RunRecord) -> SpoolResult<Mirrored>;
    /// The host's policy document in S3 (`hosts/<host>/policy.json`).
    async fn host_doc(&self, host: &HostId) -> SpoolResult<Option<serde_json::Value>>;
    /// Ids of the host's ready (queued) runs in S3, oldest first, at most
    /// `limit`.
    async fn ready_runs(&self, host: &HostId, limit: usize) -> SpoolResult<Vec<RunId>>;
}

// ----- settings -----

/// Where the executor's runs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreMode {
    /// Runs are enqueued into the local spool directly (the default).
    Local,
    /// Runs arrive through the host's SQS queue; records live in S3.
    Aws(AwsSettings),
}

/// What AWS mode needs (the fields of the store's `S3SqsConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub bucket: String,
    pub queue_prefix: String,
    pub region: String,
    pub endpoint_url: Option<String>,
}

/// The store mode from the config loader's store knobs
/// (`VPS_REMEDIATE_STORE`, `VPS_REMEDIATE_S3_BUCKET`,
/// `VPS_REMEDIATE_SQS_QUEUE_PREFIX`, `AWS_REGION`, `AWS_ENDPOINT_URL`; the
/// loader validates them and requires the bucket in AWS mode).
pub fn store_mode(s: &remediate_config::StoreSettings) -> Result<StoreMode, String> {
    match s.kind {
        remediate_config::StoreKind::Local => Ok(StoreMode::Local),
        remediate_config::StoreKind::Aws => {
            let bucket = s.s3_bucket.clone().filter(|b| !b.is_empty()).ok_or_else(|| {
                "VPS_REMEDIATE_STORE=aws needs VPS_REMEDIATE_S3_BUCKET (the bucket of the run records)"
                    .to_string()
            })?;
            Ok(StoreMode::Aws(AwsSettings {
                bucket,
                queue_prefix: s.sqs_queue_prefix.clone(),
                region: s.aws_region.clone(),
                endpoint_url: s.aws_endpoint_url.clone(),
            }))
        }
    }
}

/// Knobs of the intake and the mirror.
#[derive(Debug, Clone)]
pub struct IntakeSettings {
    /// Messages per receive (SQS allows 1-10).
    pub batch: u32,
    /// Long-poll wait (SQS allows up to 20 s).
    pub wait: Duration,
    /// Longest pause between retries while AWS cannot be reached.
    pub max_backoff: Duration,
    /// Safety-net rescan of the mirror (it is woken by inotify and imports).
    pub mirror_rescan: Duration,
    /// How often the intake lists the host's ready runs in S3 and imports
    /// those it never got a message for ([`Intake::reconcile_once`]).
    pub reconcile_interval: Duration,
    /// A ready run whose record changed less than this long ago is left to
    /// its message, which normally arrives within a second: importing it
    /// from the listing would race the message and log a duplicate
    /// delivery. Older ones are imported.
    pub reconcile_grace: Duration,
    /// Test hook: pause this long after a durable import and before the
    /// delete, so a test can SIGKILL the executor there. Set only from
    /// `VPS_REMEDIATE_TEST_PAUSE_AFTER_IMPORT_SECONDS` in builds with the
    /// `test-hooks` feature.
    pub pause_after_import: Option<Duration>,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            batch: 10,
            wait: Duration::from_secs(20),
            max_backoff: Duration::from_secs(60),
            mirror_rescan: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(60),
            reconcile_grace: Duration::from_secs(60),
            pause_after_import: None,
        }
    }
}

/// Most ready runs one reconcile pass looks at.
pub const RECONCILE_BATCH: usize = 200;

/// The test hook's variable (honoured only with the `test-hooks` feature).
pub const PAUSE_AFTER_IMPORT_VAR: &str = "VPS_REMEDIATE_TEST_PAUSE_AFTER_IMPORT_SECONDS";

/// Reads the test hook: `Some` only in builds with the `test-hooks` feature;
/// other builds warn when the variable is set and ignore it.
pub fn pause_after_import_from_env() -> Option<Duration> {
    let v = std::env::var(PAUSE_AFTER_IMPORT_VAR).ok()?;
    if cfg!(feature = "test-hooks") {
        match v.trim().parse::<u64>() {
            Ok(s) => Some(Duration::from_secs(s)),
            Err(_) => {
                tracing::warn!(variable = PAUSE_AFTER_IMPORT_VAR, value = %v, "not a number of seconds; ignored");
                None
            }
        }
    } else {
        tracing::warn!(
            variable = PAUSE_AFTER_IMPORT_VAR,
            "test hook ignored: this build has no `test-hooks` feature"
        );
        None
    }
}

fn next_backoff(cur: Option<Duration>, max: Duration) -> Duration {
    cur.map_or(Duration::from_secs(1), |d| d * 2)
        .min(max.max(Duration::from_secs(1)))
}

// ----- intake -----

/// What the intake did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Imported into the local spool, then the message was deleted.
    Imported(RunId),
    /// The run was already in the local spool; the message was deleted.
    Duplicate(RunId),
    /// A drain request was handed to the daemon; the message was deleted.
    Drain(u32),
    /// The host document was copied from S3; the message was deleted (also
    /// when deleting it failed: a redelivery copies it again).
    Policy,
    /// Left on the queue (to come back, and reach the DLQ after 5 receives).
    Left(String),
    /// Imported (or present), but deleting the message failed: it comes back
    /// and is then found present.
    DeleteFailed(RunId),
}

/// Pulls the host's SQS queue into the local spool.
#[derive(Debug, Clone)]
pub struct Intake {
    pub spool: LocalSpool,
    pub host: HostId,
    pub remote: Arc<dyn RemoteRuns>,
    pub settings: IntakeSettings,
    /// Woken after every import, so the mirror looks at once.
    pub nudge: Arc<Notify>,
}

impl Intake {
    /// One receive and every message it returned.
    pub async fn poll_once(&self) -> SpoolResult<Vec<Handled>> {
        let msgs = self
            .remote
            .receive(&self.host, self.settings.batch, self.settings.wait)
            .await?;
        if !msgs.is_empty() {
            self.sync_host_doc().await;
        }
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.handle(m).await);
        }
        Ok(out)
    }

    /// Copies the host's policy document from S3 into the spool when it
    /// changed, so the execution-time checks (host enabled, guard) use what
    /// operators set through the API. Failures keep the local copy and are
    /// logged; returns whether the local copy now matches S3 (true when S3
    /// holds no document).
    pub async fn sync_host_doc(&self) -> bool {
        let remote = match self.remote.host_doc(&self.host).await {
            Ok(Some(doc)) => doc,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the host document from S3; keeping the local copy");
                return false;
            }
        };
        let local = Store::get_host_doc(&self.spool, &self.host)
            .await
            .ok()
            .flatten();
        if local.as_ref() == Some(&remote) {
            return true;
        }
        match Store::put_host_doc(&self.spool, &self.host, remote).await {
            Ok(()) => {
                tracing::info!(host_id = %self.host, "host document copied from S3");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store the host document from S3");
                false
            }
        }
    }

    /// Handles one message: the message is deleted only after what it asks
    /// for is durable locally.
    pub async fn handle(&self, m: Received) -> Handled {
        let msg = match m.message.clone() {
            Ok(msg) => msg,
            Err(reason) => {
                return self.leave(
                    &m.message_id,
                    m.receive_count,
                    format!("unparseable message: {reason}"),
                );
            }
        };
        match msg {
            RemoteMessage::Run { host_id, .. }
            | RemoteMessage::Drain { host_id, .. }
            | RemoteMessage::Policy { host_id }
                if host_id != self.host =>
            {
                self.leave(
                    &m.message_id,
                    m.receive_count,
                    format!("message for host {host_id} on the queue of {}", self.host),
                )
            }
            RemoteMessage::Drain { limit, .. } => {
                let limit = limit.clamp(1, 50);
                if let Err(e) = Store::request_drain(&self.spool, &self.host, limit).await {
                    return self.leave(
                        &m.message_id,
                        m.receive_count,
                        format!("cannot record the drain request: {e}"),
                    );
                }
                match self
                    .remote
                    .delete_message(&self.host, &m.receipt_handle)
                    .await
                {
                    Ok(()) => Handled::Drain(limit),
                    Err(e) => {
                        tracing::warn!(message_id = %m.message_id, error = %e, "drain requested; deleting its message failed (it comes back)");
                        Handled::Drain(limit)
                    }
                }
            }
            RemoteMessage::Policy { .. } => {
                // The batch's receive copied the document already, unless
                // S3 changed since; one more GET on a rare message is cheap.
                if !self.sync_host_doc().await {
                    return self.leave(
                        &m.message_id,
                        m.receive_count,
                        "cannot copy the host document from S3 (logged above)".into(),
                    );
                }
                if let Err(e) = self
                    .remote
                    .delete_message(&self.host, &m.receipt_handle)
                    .await
                {
                    tracing::warn!(message_id = %m.message_id, error = %e, "host document copied; deleting its message failed (it comes back)");
                }
                tracing::info!(message_id = %m.message_id, "policy message: the host document is current");
                Handled::Policy
            }
            RemoteMessage::Run { run_id, .. } => self.import_run(&m, run_id).await,
        }
    }

    async fn import_run(&self, m: &Received, run_id: RunId) -> Handled {
        let fetched = match self.remote.fetch(&self.host, &run_id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                return self.leave(
                    &m.message_id,
                    m.receive_count,
                    format!("run {run_id}: no record in S3"),
                );
            }
            Err(e) => {
                return self.leave(
                    &m.message_id,
                    m.receive_count,
                    format!("run {run_id}: fetching the record failed: {e}"),
                );
            }
        };
        if fetched.run_id != run_id {
            return self.leave(
                &m.message_id,
                m.receive_count,
                format!(
                    "run {run_id}: S3 answered with the record of {}",
                    fetched.run_id
                ),
            );
        }
        let outcome = match self.spool.import(&self.host, fetched).await {
            Ok(o) => o,
            Err(e) => {
                return self.leave(
                    &m.message_id,
                    m.receive_count,
                    format!("run {run_id}: import refused or failed ({}): {e}", e.code()),
                );
            }
        };
        // Durable locally from here on.
        let handled = match outcome {
            ImportOutcome::Imported(dir) => {
                tracing::info!(run_id = %run_id, dir = dir.name(), message_id = %m.message_id, "run imported from SQS");
                self.nudge.notify_one();
                Handled::Imported(run_id.clone())
            }
            ImportOutcome::AlreadyPresent(dir) => {
                tracing::info!(run_id = %run_id, dir = dir.name(), message_id = %m.message_id, receive_count = m.receive_count, "duplicate delivery: run already in the spool; deleting the message");
                Handled::Duplicate(run_id.clone())
            }
        };
        if let Some(p) = self.settings.pause_after_import {
            tracing::warn!(run_id = %run_id, pause_s = p.as_secs(), "test hook: pausing between import and delete");
            tokio::time::sleep(p).await;
        }
        match self
            .remote
            .delete_message(&self.host, &m.receipt_handle)
            .await
        {
            Ok(()) => handled,
            Err(e) => {
                tracing::warn!(run_id = %run_id, message_id = %m.message_id, error = %e, "deleting the message failed; it comes back and is found present");
                Handled::DeleteFailed(run_id)
            }
        }
    }

    fn leave(&self, message_id: &str, receive_count: u32, reason: String) -> Handled {
        tracing::error!(
            host_id = %self.host,
            message_id,
            receive_count,
            %reason,
            "message left on the queue (the DLQ takes it after 5 receives)"
        );
        Handled::Left(reason)
    }

    /// The safety net beside the pointer messages: imports every ready run
    /// of this host that S3 lists and the local spool does not hold, if it
    /// was never attempted (a run attempted here is present locally; one
    /// attempted elsewhere is not ours to run again) and if it last changed
    /// at least [`IntakeSettings::reconcile_grace`] ago. Finds runs whose
    /// message was never sent. Returns the runs imported.
    pub async fn reconcile_once(&self) -> SpoolResult<Vec<RunId>> {
        let ids = self.remote.ready_runs(&self.host, RECONCILE_BATCH).await?;
        let grace = chrono::Duration::from_std(self.settings.reconcile_grace)
            .unwrap_or(chrono::Duration::MAX);
        let settled_before = self.spool.now() - grace;
        let mut imported = Vec::new();
        for id in ids {
            if Store::get(&self.spool, &id).await?.is_some() {
                continue;
            }
            let Some(rec) = self.remote.fetch(&self.host, &id).await? else {
                continue;
            };
            if rec.run_id != id
                || rec.host_id != self.host
                || rec.state != remediate_spool::RunState::Queued
                || rec.attempts != 0
                || rec.updated_at.unwrap_or(rec.requested_at) > settled_before
            {
                continue;
            }
            match self.spool.import(&self.host, rec).await {
                Ok(ImportOutcome::Imported(dir)) => {
                    tracing::warn!(run_id = %id, dir = dir.name(), "run found in S3 without a message; imported");
                    self.nudge.notify_one();
                    imported.push(id);
                }
                Ok(ImportOutcome::AlreadyPresent(_)) => {}
                Err(e) => {
                    tracing::error!(run_id = %id, error = %e, code = e.code(), "cannot import a run found in S3")
                }
            }
        }
        Ok(imported)
    }

    /// Polls until `stop` turns true, backing off while SQS cannot be
    /// reached. A receive under way is abandoned on stop (its messages stay
    /// invisible until their timeout and then come back).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff: Option<Duration> = None;
        tracing::info!(host_id = %self.host, "SQS intake started");
        self.sync_host_doc().await;
        let mut next_reconcile = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if tokio::time::Instant::now() >= next_reconcile {
                next_reconcile = tokio::time::Instant::now() + self.settings.reconcile_interval;
                if let Err(e) = self.reconcile_once().await {
                    tracing::warn!(error = %e, code = e.code(), "listing ready runs in S3 failed");
                }
            }
            let polled = tokio::select! {
                r = self.poll_once() => r,
                _ = stop.changed() => break,
            };
            match polled {
                Ok(handled) => {
                    backoff = None;
                    // A quiet queue: still pick up policy changes (one GET
                    // per long poll).
                    if handled.is_empty() {
                        self.sync_host_doc().await;
                    }
                }
                Err(e) => {
                    let d = next_backoff(backoff, self.settings.max_backoff);
                    backoff = Some(d);
                    tracing::warn!(error = %e, code = e.code(), retry_in_s = d.as_secs(), "receiving from SQS failed");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        tracing::info!("SQS intake stopped");
    }
}

// ----- mirror -----

/// What one mirror pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MirrorPass {
    pub applied: Vec<RunId>,
    pub already_current: Vec<RunId>,
    pub stale: Vec<RunId>,
    /// Runs whose mirror failed for a reason that retrying now will not fix
    /// (they are tried again at the next pass).
    pub failed: Vec<(RunId, String)>,
}

/// Copies local state changes of one host's runs to S3.
#[derive(Debug)]
pub struct Mirror {
    spool: LocalSpool,
    host: HostId,
    remote: Arc<dyn RemoteRuns>,
    marks_dir: PathBuf,
    /// Log length last mirrored, per run (the markers, loaded at start).
    marks: Mutex<HashMap<RunId, u64>>,
}

/// Transient mirror failures in a row after which a pass takes S3 as
/// unreachable and stops.
pub const UNREACHABLE_AFTER: usize = 3;

/// The directories whose runs are mirrored (corrupt/ cannot be read).
const MIRRORED_DIRS: [Dir; 5] = [Dir::Queued, Dir::Held, Dir::Running, Dir::Done, Dir::Dlq];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mirror {
    /// Opens the mirror of `host`, creating `<spool>/mirror/<host>/` (0700)
    /// and reading its markers.
    pub fn open(
        spool: LocalSpool,
        host: HostId,
        remote: Arc<dyn RemoteRuns>,
    ) -> SpoolResult<Mirror> {
        use std::os::unix::fs::DirBuilderExt;
        let marks_dir = spool.root().join("mirror").join(host.as_str());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&marks_dir)
            .map_err(|e| SpoolError::Backend(format!("mkdir {}: {e}", marks_dir.display())))?;
        let mut marks = HashMap::new();
        if let Ok(rd) = std::fs::read_dir(&marks_dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(id) = RunId::parse(&name) else {
                    continue;
                };
                let len = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if let Some(len) = len {
                    marks.insert(id, len);
                }
            }
        }
        Ok(Mirror {
            spool,
            host,
            remote,
            marks_dir,
            marks: Mutex::new(marks),
        })
    }

    /// The directories a watch should cover to see every change.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        MIRRORED_DIRS
            .iter()
            .map(|d| self.spool.host_dir(&self.host, *d))
            .collect()
    }

    /// Records that S3 holds the version of `id` whose log is `len` bytes.
    fn mark(&self, id: &RunId, len: u64) {
        lock(&self.marks).insert(id.clone(), len);
        // Not fsynced on purpose: a lost marker costs one redundant mirror.
        let tmp = self.marks_dir.join(format!(".{id}.tmp"));
        let dest = self.marks_dir.join(id.as_str());
        let res = std::fs::write(&tmp, len.to_string()).and_then(|_| std::fs::rename(&tmp, &dest));
        if let Err(e) = res {
            tracing::warn!(run_id = %id, error = %e, "cannot write the mirror marker (the run will be mirrored again)");
        }
    }

    fn unmark(&self, id: &RunId) {
        lock(&self.marks).remove(id);
        let _ = std::fs::remove_file(self.marks_dir.join(id.as_str()));
    }

    /// The runs whose log length differs from what was last mirrored, with
    /// the length seen (read before the record, so a change made meanwhile
    /// is mirrored again next time), and the ids present.
    fn dirty(&self) -> (Vec<(RunId, u64)>, HashSet<RunId>) {
        let marks = lock(&self.marks).clone();
        let mut dirty = Vec::new();
        let mut present = HashSet::new();
        for d in MIRRORED_DIRS {
            for p in self.spool.files_in(&self.host, d) {
                let Some(id) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| RunId::parse(n).ok())
                else {
                    continue;
                };
                let Ok(md) = std::fs::metadata(&p) else {
                    continue; // moved since the listing: the next pass sees it
                };
                present.insert(id.clone());
                if marks.get(&id) != Some(&md.len()) {
                    dirty.push((id, md.len()));
                }
            }
        }
        (dirty, present)
    }

    /// Mirrors every run that changed since it was last mirrored. A run
    /// whose mirror fails is listed in [`MirrorPass::failed`] and the pass
    /// goes on, so one run S3 refuses never holds back the others; after
    /// [`UNREACHABLE_AFTER`] transient failures in a row (and no success in
    /// between) S3 is taken as unreachable: the pass stops and returns that
    /// error. Either way the caller retries with backoff.
    pub async fn pass(&self) -> SpoolResult<MirrorPass> {
        let mut transient_in_a_row = 0;
        // A listing and a stat per run (microseconds each): done inline.
        let (dirty, present) = self.dirty();
        let mut out = MirrorPass::default();
        for (id, len) in dirty {
            let rec = match Store::get(&self.spool, &id).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    out.failed.push((id, e.to_string()));
                    continue;
                }
            };
            match self.remote.mirror(&rec).await {
                Ok(m) => {
                    match m {
                        Mirrored::Applied => out.applied.push(id.clone()),
                        Mirrored::AlreadyCurrent => out.already_current.push(id.clone()),
                        Mirrored::Stale => {
                            tracing::warn!(run_id = %id, state = %rec.state, "S3 holds a later state of this run; local state not mirrored");
                            out.stale.push(id.clone())
                        }
                    }
                    self.mark(&id, len);
                    transient_in_a_row = 0;
                }
                Err(e) if e.is_transient() => {
                    transient_in_a_row += 1;
                    if transient_in_a_row >= UNREACHABLE_AFTER {
                        return Err(e);
                    }
                    tracing::warn!(run_id = %id, error = %e, code = e.code(), "mirroring to S3 failed; retried with backoff");
                    out.failed.push((id, e.to_string()));
                }
                Err(e) => {
                    tracing::error!(run_id = %id, error = %e, code = e.code(), "mirroring to S3 failed");
                    out.failed.push((id, e.to_string()));
                }
            }
        }
        // Markers of runs that left the spool (pruned).
        let gone: Vec<RunId> = lock(&self.marks)
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.unmark(&id);
        }
        Ok(out)
    }

    /// Mirrors until `stop` turns true: a pass at start, then after every
    /// change in the host's directories (inotify), every nudge and every
    /// `rescan`; after a transient failure, again with exponential backoff.
    /// On stop, one last pass is tried.
    pub async fn run(
        self,
        nudge: Arc<Notify>,
        rescan: Duration,
        max_backoff: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let dirs = self.watched_dirs();
        let refs: Vec<&Path> = dirs.iter().map(|p| p.as_path()).collect();
        let watch = match crate::watch::DirWatch::on(&refs, true) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify for the mirror: it runs every rescan interval");
                None
            }
        };
        let mut backoff: Option<Duration> = None;
        loop {
            // While S3 is unreachable, only the backoff timer wakes the
            // mirror; after a partial failure, changes still do.
            let mut unreachable = false;
            let wait = match self.pass().await {
                Ok(p) if !p.failed.is_empty() => {
                    let d = next_backoff(backoff, max_backoff);
                    backoff = Some(d);
                    tracing::warn!(
                        failed = p.failed.len(),
                        applied = p.applied.len(),
                        retry_in_s = d.as_secs(),
                        "some runs were not mirrored; retrying"
                    );
                    d
                }
                Ok(p) => {
                    backoff = None;
                    if !p.applied.is_empty() || !p.stale.is_empty() {
                        tracing::debug!(
                            applied = p.applied.len(),
                            stale = p.stale.len(),
                            "mirrored to S3"
                        );
                    }
                    rescan
                }
                Err(e) => {
                    let d = next_backoff(backoff, max_backoff);
                    backoff = Some(d);
                    unreachable = true;
                    tracing::warn!(error = %e, code = e.code(), retry_in_s = d.as_secs(), "S3 unreachable; mirror paused");
                    d
                }
            };
            if *stop.borrow() {
                break;
            }
            let in_backoff = unreachable;
            tokio::select! {
                _ = stop.changed() => {
                    // One last try before the process ends.
                    if !in_backoff && let Err(e) = self.pass().await {
                        tracing::warn!(error = %e, "last mirror pass failed; the next start catches up");
                    }
                    break;
                }
                _ = nudge.notified(), if !in_backoff => {}
                r = async { match &watch { Some(w) => w.changed().await, None => std::future::pending().await } }, if !in_backoff => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "inotify read failed (mirror)");
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

// ----- the daemon with both tasks -----

/// Most receives one `once` makes (up to 10 messages each); what is left
/// on the queue waits for the next `once` or for `run`.
pub const ONCE_MAX_RECEIVES: usize = 10;

/// `remediate-executor once` in AWS mode: one round of what `run` does
/// beside its claim loop. Copies the host's policy document, pulls the
/// host's queue until a receive comes back empty (long polls of 1 s, at
/// most [`ONCE_MAX_RECEIVES`]), imports the runs S3 holds without a
/// message, drains up to `limit` due runs ([`crate::drain_once`]), then
/// mirrors every changed run to S3, so the outcomes are there when the
/// command exits. Intake and mirror failures are listed in
/// [`Drained::errors`] (the command then exits 1); what is not mirrored now,
/// the next `once` or `run` mirrors (the spool is the outbox).
pub async fn once_with_intake(
    deps: &crate::Deps,
    remote: Arc<dyn RemoteRuns>,
    limit: usize,
    kill: watch::Receiver<bool>,
) -> crate::Result<Drained> {
    deps.spool.ensure_host(&deps.host)?;
    let intake = Intake {
        spool: deps.spool.clone(),
        host: deps.host.clone(),
        remote: remote.clone(),
        settings: IntakeSettings {
            wait: Duration::from_secs(1),
            ..IntakeSettings::default()
        },
        nudge: Arc::new(Notify::new()),
    };
    let mut errors = Vec::new();
    let mut received = false;
    for _ in 0..ONCE_MAX_RECEIVES {
        if *kill.borrow() {
            break;
        }
        match intake.poll_once().await {
            Ok(handled) if handled.is_empty() => break,
            Ok(_) => received = true,
            Err(e) => {
                errors.push(format!("SQS intake: {e}"));
                break;
            }
        }
    }
    // A receive with messages copied the host document already; runs
    // found by the listing need it too.
    if !received {
        intake.sync_host_doc().await;
    }
    if let Err(e) = intake.reconcile_once().await {
        errors.push(format!("listing this host's ready runs in S3: {e}"));
    }
    let mut drained = crate::drain_once(deps, limit, kill).await?;
    let mirror = Mirror::open(deps.spool.clone(), deps.host.clone(), remote)?;
    match mirror.pass().await {
        Ok(pass) => errors.extend(
            pass.failed
                .into_iter()
                .map(|(id, e)| format!("mirroring {id} to S3: {e}")),
        ),
        Err(e) => errors.push(format!("mirroring to S3: {e}")),
    }
    drained.errors.extend(errors);
    Ok(drained)
}

/// Runs the daemon of `deps.host` in AWS mode: the intake and the mirror
/// beside the claim loop. On `shutdown` the intake stops first (nothing new
/// is imported), then the daemon stops as in local mode, then the mirror
/// makes a last pass so the final states reach S3 (what it cannot copy now,
/// the next start copies).
pub async fn run_with_intake(
    deps: crate::Deps,
    remote: Arc<dyn RemoteRuns>,
    settings: IntakeSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<crate::daemon::Stopped> {
    deps.spool.ensure_host(&deps.host)?;
    let nudge = Arc::new(Notify::new());
    let mirror = Mirror::open(deps.spool.clone(), deps.host.clone(), remote.clone())?;
    let intake = Intake {
        spool: deps.spool.clone(),
        host: deps.host.clone(),
        remote,
        settings: settings.clone(),
        nudge: nudge.clone(),
    };
    let (intake_stop, intake_rx) = watch::channel(false);
    let (mirror_stop, mirror_rx) = watch::channel(false);
    let intake_task = tokio::spawn(intake.run(intake_rx));
    let mirror_task = tokio::spawn(mirror.run(
        nudge,
        settings.mirror_rescan,
        settings.max_backoff,
        mirror_rx,
    ));
    let intake_stop = Arc::new(intake_stop);
    let stop_on_signal = intake_stop.clone();
    let stopped = crate::daemon::run(deps, async move {
        shutdown.await;
        stop_on_signal.send_replace(true);
    })
    .await;
    // Also when the daemon failed before any signal.
    intake_stop.send_replace(true);
    let _ = intake_task.await;
    mirror_stop.send_replace(true);
    let _ = mirror_task.await;
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's Jail wants a closure returning its (large) error type.
    #[allow(clippy::result_large_err)]
    fn loaded(vars: &[(&str, &str)]) -> Result<remediate_config::Loaded, String> {
        let mut out = Err(String::new());
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            out = remediate_config::Loader::new()
                .load()
                .map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn store_mode_follows_the_config_knobs() {
        let l = loaded(&[]).expect("defaults load");
        assert_eq!(store_mode(&l.settings.store), Ok(StoreMode::Local));
        let l = loaded(&[
            ("VPS_REMEDIATE_STORE", "aws"),
            ("VPS_REMEDIATE_S3_BUCKET", "runs-bucket"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ])
        .expect("aws loads");
        assert_eq!(
            store_mode(&l.settings.store),
            Ok(StoreMode::Aws(AwsSettings {
                bucket: "runs-bucket".into(),
                queue_prefix: "vps-remediate".into(),
                region: "us-east-1".into(),
                endpoint_url: Some("http://127.0.0.1:5000".into()),
            }))
        );
        let e = loaded(&[("VPS_REMEDIATE_STORE", "aws")]).expect_err("no bucket");
        assert!(e.contains("VPS_REMEDIATE_S3_BUCKET"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(10);
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let n = next_backoff(d, max);
            seen.push(n.as_secs());
            d = Some(n);
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 10, 10]);
    }
}
