//! The `Store` trait: what the HTTP handlers and the executor see of where
//! runs live. The local spool implements it here; the SQS + S3 store
//! implements it too, so both keep one contract (and one test suite).

use async_trait::async_trait;

use crate::error::{Result, SpoolError};
use crate::id::{HostId, RunId};
use crate::index::Bucket;
use crate::local::{
    ActivityKind, Counts, Enqueued, HostActivity, ListQuery, LocalSpool, PruneReport,
    RecentRequest, RecoveryReport, Retention,
};
use crate::record::{AttemptResult, NewRun, RunRecord, RunState, Timestamp};

/// What an operator's execute is gated on, read from the store in one pass
/// (see [`Store::enqueue_checked`]).
#[derive(Debug, Clone, Default)]
pub struct GateFacts {
    /// A run of the same host and action that has not finished (queued,
    /// retry scheduled, held or running).
    pub active_run: Option<RunId>,
    /// The host's runs waiting to run: queued, retry scheduled or held.
    pub host_backlog: usize,
    /// The same over every host.
    pub global_backlog: usize,
    /// The host's runs requested at or after the `since` asked for, newest
    /// first.
    pub recent: Vec<RecentRequest>,
    /// The host's recent dry-runs and executes.
    pub activity: HostActivity,
}

impl GateFacts {
    /// Since when the gates need the host's requests: the last hour (the
    /// hourly limits) or the cooldown, whichever reaches back further.
    pub fn window(now: Timestamp, cooldown: std::time::Duration) -> Timestamp {
        let hour = chrono::Duration::hours(1);
        now - chrono::Duration::from_std(cooldown)
            .unwrap_or(hour)
            .max(hour)
    }

    /// How many of the recent requests came after `after`, counting those
    /// of the autonomous planner (`auto`) or those of people.
    pub fn requests_after(&self, after: Timestamp, auto: bool) -> u32 {
        let n = self
            .recent
            .iter()
            .filter(|r| r.auto_queued == auto && r.requested_at > after)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// How long before `now` the latest recent run of `action` was
    /// requested, whoever asked (the cooldown counts from it).
    pub fn since_last_request(&self, action: &str, now: Timestamp) -> Option<std::time::Duration> {
        self.recent
            .iter()
            .filter(|r| r.action_key == action)
            .map(|r| r.requested_at)
            .max()
            .map(|at| (now - at).to_std().unwrap_or(std::time::Duration::ZERO))
    }
}

/// Why a check refused an execute: whatever the caller's check returned,
/// handed back untouched (the store does not interpret it).
pub type Refusal = Box<dyn std::any::Any + Send>;

/// The caller's gate: looks at the facts and allows the enqueue or refuses
/// it.
pub type EnqueueCheck = Box<dyn FnOnce(&GateFacts) -> std::result::Result<(), Refusal> + Send>;

/// The answer of [`Store::enqueue_checked`].
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "made once per execute and matched at once; a box would cost more than the copy"
)]
pub enum Checked {
    /// The check allowed it and the run was enqueued (or, with an
    /// idempotency key, found).
    Enqueued(Enqueued),
    /// The check refused; nothing was written.
    Refused(Refusal),
}

/// Where runs live. Every method is one durable step: when it returns Ok,
/// the change survives a crash; when it returns Err, the caller must assume
/// nothing was acknowledged.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Enqueues a run (held when approval is required). With an idempotency
    /// key, the same key for the same host returns the first run.
    async fn enqueue(&self, new: NewRun) -> Result<Enqueued>;
    /// Reads what an execute of `new` is gated on ([`GateFacts`], with the
    /// host's requests since `since`), asks `check`, and enqueues only if it
    /// allows. The local spool does this in one blocking step under the
    /// host's lock, so two executes of one host cannot both pass a gate
    /// that only one of them may (one active run per action); the S3 store
    /// does it under a per-host lease object. This default gathers the
    /// facts with the other methods and is not atomic.
    async fn enqueue_checked(
        &self,
        new: NewRun,
        since: Timestamp,
        check: EnqueueCheck,
    ) -> Result<Checked> {
        enqueue_checked_by_parts(self, new, since, check, None).await
    }
    async fn get(&self, id: &RunId) -> Result<Option<RunRecord>>;
    /// Oldest first.
    async fn list(&self, q: ListQuery) -> Result<Vec<RunRecord>>;
    async fn counts(&self, host: Option<HostId>) -> Result<Counts>;
    /// Claims the earliest due run of `host`, skipping runs whose action is in
    /// `busy_actions` (one active run per host+action).
    async fn claim_next(
        &self,
        host: &HostId,
        busy_actions: Vec<String>,
    ) -> Result<Option<RunRecord>>;
    /// Records "attempt started" durably; commands may run after this.
    async fn start_attempt(&self, id: &RunId) -> Result<RunRecord>;
    async fn append_event(
        &self,
        id: &RunId,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<RunRecord>;
    async fn complete(&self, id: &RunId, result: AttemptResult) -> Result<RunRecord>;
    async fn retry_at(&self, id: &RunId, at: Timestamp, result: AttemptResult)
    -> Result<RunRecord>;
    async fn dead_letter(
        &self,
        id: &RunId,
        reason: &str,
        result: Option<AttemptResult>,
    ) -> Result<RunRecord>;
    async fn hold(&self, id: &RunId, reason: &str) -> Result<RunRecord>;
    async fn approve(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord>;
    async fn reject(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord>;
    async fn expire(&self, id: &RunId) -> Result<RunRecord>;
    async fn cancel(&self, id: &RunId, reason: &str) -> Result<RunRecord>;
    /// A new run linked by `replayOfRunId`; returns the new run.
    async fn replay(&self, id: &RunId, by: &str) -> Result<RunRecord>;
    async fn next_due(&self, host: &HostId) -> Result<Option<Timestamp>>;
    async fn recover(&self) -> Result<RecoveryReport>;
    /// Every host that has runs.
    async fn hosts(&self) -> Result<Vec<HostId>>;
    /// Makes every retry-scheduled run of `host` due now; returns how many.
    async fn flush_retries(&self, host: &HostId) -> Result<usize>;
    /// A host's stored policy document (raw JSON), if any.
    async fn get_host_doc(&self, host: &HostId) -> Result<Option<serde_json::Value>>;
    /// Replaces a host's policy document durably.
    async fn put_host_doc(&self, host: &HostId, doc: serde_json::Value) -> Result<()>;
    /// Appends one entry to the audit log; with `durable`, fdatasyncs it
    /// before returning (without, the next durable append or the kernel
    /// writes it back).
    async fn audit(&self, entry: AuditLine, durable: bool) -> Result<()>;
    /// Runs of a host requested at or after `since` (any state), newest first.
    async fn recent_requests(&self, host: &HostId, since: Timestamp) -> Result<Vec<RecentRequest>>;
    /// Recent dry-runs and executes on a host.
    async fn host_activity(&self, host: &HostId) -> Result<HostActivity>;
    /// Records a dry-run or an execute of an action on a host.
    async fn record_activity(&self, host: &HostId, kind: ActivityKind, action: &str) -> Result<()>;
    /// Asks the host's executor to drain up to `limit` due runs now.
    async fn request_drain(&self, host: &HostId, limit: u32) -> Result<()>;
    async fn prune(&self, retention: Retention) -> Result<PruneReport>;
}

/// One audit entry, serialized: a JSON object, one line of the audit log.
/// Made with [`AuditLine::of`] from any serializable entry, so a caller
/// writes its entry straight to bytes instead of building a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine(Vec<u8>);

impl AuditLine {
    /// `entry` serialized; refused when it is not a JSON object.
    pub fn of<T: serde::Serialize + ?Sized>(entry: &T) -> Result<AuditLine> {
        let bytes = serde_json::to_vec(entry).map_err(|e| SpoolError::Invalid(e.to_string()))?;
        if bytes.first() != Some(&b'{') {
            return Err(SpoolError::Invalid(
                "an audit entry must be a JSON object".into(),
            ));
        }
        Ok(AuditLine(bytes))
    }

    /// The entry's JSON, without a line end.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The entry's JSON, without a line end.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

thread_local! {
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets the local spool's [`Store`] methods do their file work on the
/// calling thread from now on, instead of handing it to Tokio's blocking
/// pool and waiting to be woken. For a thread that serves one client at a
/// time on its own current-thread runtime (the local API server's
/// connection threads): nothing else waits for that thread, and each call
/// saves two thread hand-offs (0.1-0.25 ms each on a small VM). Other
/// threads are not affected.
pub fn run_file_work_inline_on_this_thread() {
    INLINE.set(true);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    if INLINE.get() {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Backend(format!("spool worker thread failed: {e}")))?
}

#[async_trait]
impl Store for LocalSpool {
    async fn enqueue(&self, new: NewRun) -> Result<Enqueued> {
        let s = self.clone();
        blocking(move || s.enqueue_blocking(new)).await
    }
    async fn enqueue_checked(
        &self,
        new: NewRun,
        since: Timestamp,
        check: EnqueueCheck,
    ) -> Result<Checked> {
        let s = self.clone();
        blocking(move || s.enqueue_checked_blocking(new, since, check)).await
    }
    async fn get(&self, id: &RunId) -> Result<Option<RunRecord>> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.get_blocking(&id)).await
    }
    async fn list(&self, q: ListQuery) -> Result<Vec<RunRecord>> {
        let s = self.clone();
        blocking(move || s.list_blocking(&q)).await
    }
    async fn counts(&self, host: Option<HostId>) -> Result<Counts> {
        let s = self.clone();
        blocking(move || s.counts_blocking(host.as_ref())).await
    }
    async fn claim_next(
        &self,
        host: &HostId,
        busy_actions: Vec<String>,
    ) -> Result<Option<RunRecord>> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || s.claim_next_blocking(&host, &|a| busy_actions.iter().any(|b| b == a)))
            .await
    }
    async fn start_attempt(&self, id: &RunId) -> Result<RunRecord> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.start_attempt_blocking(&id)).await
    }
    async fn append_event(
        &self,
        id: &RunId,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<RunRecord> {
        let (s, id, kind) = (self.clone(), id.clone(), kind.to_string());
        blocking(move || s.append_note_blocking(&id, &kind, data)).await
    }
    async fn complete(&self, id: &RunId, result: AttemptResult) -> Result<RunRecord> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.complete_blocking(&id, result)).await
    }
    async fn retry_at(
        &self,
        id: &RunId,
        at: Timestamp,
        result: AttemptResult,
    ) -> Result<RunRecord> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.retry_at_blocking(&id, at, result)).await
    }
    async fn dead_letter(
        &self,
        id: &RunId,
        reason: &str,
        result: Option<AttemptResult>,
    ) -> Result<RunRecord> {
        let (s, id, reason) = (self.clone(), id.clone(), reason.to_string());
        blocking(move || s.dead_letter_blocking(&id, &reason, result)).await
    }
    async fn hold(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let (s, id, reason) = (self.clone(), id.clone(), reason.to_string());
        blocking(move || s.hold_blocking(&id, &reason)).await
    }
    async fn approve(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord> {
        let (s, id, by) = (self.clone(), id.clone(), by.to_string());
        blocking(move || s.approve_blocking(&id, &by, reason)).await
    }
    async fn reject(&self, id: &RunId, by: &str, reason: Option<String>) -> Result<RunRecord> {
        let (s, id, by) = (self.clone(), id.clone(), by.to_string());
        blocking(move || s.reject_blocking(&id, &by, reason)).await
    }
    async fn expire(&self, id: &RunId) -> Result<RunRecord> {
        let (s, id) = (self.clone(), id.clone());
        blocking(move || s.expire_blocking(&id)).await
    }
    async fn cancel(&self, id: &RunId, reason: &str) -> Result<RunRecord> {
        let (s, id, reason) = (self.clone(), id.clone(), reason.to_string());
        blocking(move || s.cancel_blocking(&id, &reason)).await
    }
    async fn replay(&self, id: &RunId, by: &str) -> Result<RunRecord> {
        let (s, id, by) = (self.clone(), id.clone(), by.to_string());
        blocking(move || s.replay_blocking(&id, &by)).await
    }
    async fn next_due(&self, host: &HostId) -> Result<Option<Timestamp>> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || Ok(s.next_due_blocking(&host))).await
    }
    async fn recover(&self) -> Result<RecoveryReport> {
        let s = self.clone();
        blocking(move || s.recover_blocking()).await
    }
    async fn hosts(&self) -> Result<Vec<HostId>> {
        let s = self.clone();
        blocking(move || s.hosts()).await
    }
    async fn flush_retries(&self, host: &HostId) -> Result<usize> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || s.flush_retries_blocking(&host)).await
    }
    async fn get_host_doc(&self, host: &HostId) -> Result<Option<serde_json::Value>> {
        // One read of a file of a few hundred bytes, from the page cache
        // after the first: cheaper done here than the two thread hand-offs
        // of a blocking task (each one a wake-up of an idle CPU).
        self.get_host_doc_blocking(host)
    }
    async fn put_host_doc(&self, host: &HostId, doc: serde_json::Value) -> Result<()> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || s.put_host_doc_blocking(&host, &doc)).await
    }
    async fn audit(&self, entry: AuditLine, durable: bool) -> Result<()> {
        if !durable {
            // One write(2) of a line into the page cache, no fsync: done
            // here, as `get_host_doc`.
            return self.audit_blocking(entry, false);
        }
        let s = self.clone();
        blocking(move || s.audit_blocking(entry, durable)).await
    }
    async fn recent_requests(&self, host: &HostId, since: Timestamp) -> Result<Vec<RecentRequest>> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || Ok(s.recent_requests_blocking(&host, since))).await
    }
    async fn host_activity(&self, host: &HostId) -> Result<HostActivity> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || s.host_activity_blocking(&host)).await
    }
    async fn record_activity(&self, host: &HostId, kind: ActivityKind, action: &str) -> Result<()> {
        let (s, host, action) = (self.clone(), host.clone(), action.to_string());
        blocking(move || s.record_activity_blocking(&host, kind, &action)).await
    }
    async fn request_drain(&self, host: &HostId, limit: u32) -> Result<()> {
        let (s, host) = (self.clone(), host.clone());
        blocking(move || s.request_drain_blocking(&host, limit)).await
    }
    async fn prune(&self, retention: Retention) -> Result<PruneReport> {
        let s = self.clone();
        blocking(move || s.prune_blocking(retention)).await
    }
}

/// The default [`Store::enqueue_checked`]: gathers the facts with the other
/// methods, asks `check`, enqueues if it allows. Not atomic by itself; a
/// store that serialises a host's executes some other way (the S3 store's
/// gate lease) calls it while it holds that. With `commit_by`, nothing is
/// enqueued once that instant has passed (the caller's hold may have
/// lapsed): the answer is then a transient backend error.
pub(crate) async fn enqueue_checked_by_parts<S: Store + ?Sized>(
    store: &S,
    new: NewRun,
    since: Timestamp,
    check: EnqueueCheck,
    commit_by: Option<std::time::Instant>,
) -> Result<Checked> {
    let host = new.host_id.clone();
    let active_query = ListQuery {
        host: Some(host.clone()),
        buckets: Bucket::ACTIVE.to_vec(),
        limit: 10_000,
    };
    let (active, all, activity, recent) = tokio::try_join!(
        store.list(active_query),
        store.counts(None),
        store.host_activity(&host),
        store.recent_requests(&host, since),
    )?;
    let facts = GateFacts {
        active_run: active
            .iter()
            .find(|r| r.action_key == new.action_key)
            .map(|r| r.run_id.clone()),
        host_backlog: active
            .iter()
            .filter(|r| r.state != RunState::Running)
            .count(),
        global_backlog: all.queued + all.retry_scheduled + all.held,
        recent,
        activity,
    };
    match check(&facts) {
        Ok(()) => {
            if commit_by.is_some_and(|t| std::time::Instant::now() > t) {
                return Err(SpoolError::HostBusy {
                    host: host.to_string(),
                    what: "checking its gates took too long to enqueue safely".into(),
                });
            }
            store.enqueue(new).await.map(Checked::Enqueued)
        }
        Err(r) => Ok(Checked::Refused(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_facts_count_requests_and_the_cooldown() {
        let now = chrono::Utc::now();
        let ago = |m: i64| now - chrono::Duration::minutes(m);
        let req = |action: &str, at, auto| RecentRequest {
            action_key: action.into(),
            requested_at: at,
            auto_queued: auto,
        };
        let f = GateFacts {
            recent: vec![
                req("a", ago(5), false),
                req("a", ago(50), true),
                req("b", ago(70), false),
            ],
            ..GateFacts::default()
        };
        assert_eq!(f.requests_after(ago(60), false), 1);
        assert_eq!(f.requests_after(ago(60), true), 1);
        assert_eq!(f.requests_after(ago(90), false), 2);
        assert_eq!(
            f.since_last_request("a", now),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(f.since_last_request("c", now), None);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(
            GateFacts::window(now, std::time::Duration::ZERO),
            now - chrono::Duration::hours(1)
        );
        assert_eq!(
            GateFacts::window(now, 2 * hour),
            now - chrono::Duration::hours(2)
        );
    }
}
