//! The claim loop of one host: recovery at start and every minute (beside
//! the loop, never delaying a pickup), pickup woken by inotify and by a
//! timer for the earliest due run (a slow rescan only as a safety net),
//! bounded concurrency with one active run per action (at concurrency 1,
//! one run readied ahead behind a quick one: see [`Turn::Ahead`]),
//! backoff after store errors, and a two-stage shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use remediate_spool::{Dir, HostId, LocalSpool, Retention, RunId, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::attempt::{Ctx, RunEnd, Turn, process_claimed};
use crate::error::Result;
use crate::notify::{Notice, NoticeKind, Notifier};
use crate::plan::Planner;
use crate::watch::DirWatch;

/// The daemon's knobs (the seed's `OPS_WORKER_*` keep their meaning).
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Runs executed at once (`VPS_REMEDIATE_EXECUTOR_CONCURRENCY`, >= 1).
    pub concurrency: usize,
    /// Most runs claimed per wake-up (`OPS_WORKER_DRAIN_LIMIT`).
    pub drain_limit: usize,
    /// Safety-net rescan while runs are waiting (`OPS_WORKER_INTERVAL_SECONDS`).
    pub rescan_interval: Duration,
    /// Safety-net rescan when nothing is queued (`OPS_WORKER_IDLE_INTERVAL_SECONDS`).
    pub idle_rescan_interval: Duration,
    /// Longest pause after store errors (`OPS_WORKER_MAX_BACKOFF_SECONDS`).
    pub max_error_backoff: Duration,
    /// Time running commands get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Recovery period (after the pass at start).
    pub recovery_interval: Duration,
    /// Retention of done/ and dlq/, applied every `prune_interval`.
    pub retention: Option<Retention>,
    pub prune_interval: Duration,
    /// At concurrency 1, the next run is readied (claimed, checked, its
    /// attempt started) while the running one's commands run only if that
    /// action's commands took less than this last time: a readied run shows
    /// as running, and a crash while it waits leaves it interrupted, so it
    /// should wait for milliseconds, not minutes. Zero: never.
    pub ready_ahead_under: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            concurrency: 1,
            drain_limit: 5,
            rescan_interval: Duration::from_secs(15),
            idle_rescan_interval: Duration::from_secs(30),
            max_error_backoff: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
            recovery_interval: Duration::from_secs(60),
            retention: None,
            prune_interval: Duration::from_secs(3600),
            ready_ahead_under: Duration::from_millis(50),
        }
    }
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct Deps {
    pub spool: LocalSpool,
    pub host: HostId,
    pub planner: Arc<dyn Planner>,
    pub settings: DaemonSettings,
    /// Told about every run processed (for tests and the `once` report).
    pub events: Option<mpsc::UnboundedSender<(RunId, RunEnd)>>,
    /// Webhook notifications of dead letters and approvals, if configured.
    pub notifier: Option<Notifier>,
}

impl Deps {
    fn ctx(&self) -> Ctx {
        Ctx {
            spool: self.spool.clone(),
            planner: self.planner.clone(),
            notifier: self.notifier.clone(),
            commands_over: None,
        }
    }
}

/// How the daemon stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Runs still executing when the grace period ended: their commands were
    /// killed and their attempts recorded as interrupted.
    pub interrupted: usize,
}

async fn recover(spool: &LocalSpool, notifier: Option<&Notifier>) {
    match Store::recover(spool).await {
        Ok(rep) => {
            if let Some(n) = notifier {
                notify_dead_lettered(spool, n, &rep.interrupted_dead_lettered).await;
            }
            let moved = rep.orphans_requeued.len()
                + rep.interrupted_retried.len()
                + rep.interrupted_dead_lettered.len()
                + rep.relocated.len()
                + rep.quarantined.len();
            if moved > 0 {
                tracing::warn!(
                    orphans_requeued = rep.orphans_requeued.len(),
                    interrupted_retried = rep.interrupted_retried.len(),
                    interrupted_dead_lettered = rep.interrupted_dead_lettered.len(),
                    relocated = rep.relocated.len(),
                    quarantined = rep.quarantined.len(),
                    "recovery settled runs"
                );
            } else {
                tracing::debug!(busy = rep.busy, "recovery: nothing to do");
            }
        }
        Err(e) => tracing::error!(error = %e, code = e.code(), "recovery failed"),
    }
}

/// Tells the webhook about runs that recovery dead-lettered (interrupted by
/// a crash and not idempotent, or out of attempts).
async fn notify_dead_lettered(spool: &LocalSpool, n: &Notifier, ids: &[String]) {
    for id in ids {
        let Ok(id) = RunId::parse(id) else { continue };
        match Store::get(spool, &id).await {
            Ok(Some(rec)) if rec.state == remediate_spool::RunState::Dlq => {
                let reason = rec.dlq_reason.clone().unwrap_or_default();
                n.notify(Notice::about(
                    NoticeKind::DeadLettered,
                    &rec,
                    &reason,
                    spool.now(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(run_id = %id, error = %e, "cannot read a recovered run to notify")
            }
        }
    }
}

/// Runs the daemon for `deps.host` until `shutdown` resolves. Then it stops
/// claiming, gives running commands `shutdown_grace` to finish, kills the
/// rest (recorded as interrupted) and returns.
pub async fn run(deps: Deps, shutdown: impl Future<Output = ()>) -> Result<Stopped> {
    let s = deps.settings.clone();
    let concurrency = s.concurrency.max(1);
    let drain_limit = s.drain_limit.max(1);
    deps.spool.ensure_host(&deps.host)?;
    // Recovery and pruning read every record of the spool (hundreds of ms
    // with thousands of finished runs), so they run beside the claim loop,
    // one pass at a time: a restarted daemon picks up due runs at once and
    // a periodic pass never delays a pickup. A claim and a recovery pass
    // exclude each other per file through the record's flock, and recovery
    // skips this process's claims. What recovery requeues lands in
    // `queued/`, where the watch sees it.
    let mut upkeep = Some(spawn_upkeep(&deps, true, s.retention));

    let queued_dir = deps.spool.host_dir(&deps.host, Dir::Queued);
    let watch = match DirWatch::new(&queued_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no inotify: falling back to the rescan interval");
            None
        }
    };
    // Drain requests from the HTTP side land in control/: a host's drain
    // file is written in place, so its changes are watched too (the take's
    // own emptying of it wakes the loop once more, to find nothing).
    let control = match DirWatch::on(&[&deps.spool.control_path()], true) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch control/: drain requests wait for the rescan");
            None
        }
    };
    let mut boost = take_drain(&deps);
    tracing::info!(
        host_id = %deps.host,
        concurrency,
        spool = %deps.spool.root().display(),
        "executor started"
    );

    let (kill_tx, kill_rx) = watch::channel(false);
    let (over_tx, mut over_rx) = mpsc::unbounded_channel::<(RunId, Duration)>();
    // At concurrency 1 the daemon readies one run ahead (see `Turn::Ahead`)
    // while the running one's commands are quick; the command slot makes
    // its commands wait.
    let slot = (concurrency == 1).then(|| Arc::new(tokio::sync::Semaphore::new(1)));
    let ctx = Ctx {
        commands_over: Some(over_tx),
        ..deps.ctx()
    };
    // Run tasks: from the claim to the durable record of the outcome.
    let mut inflight: JoinSet<(RunId, Result<RunEnd>)> = JoinSet::new();
    // Runs whose commands may still be running, with their actions: what
    // the concurrency limit and the one-run-per-action rule count. A run
    // leaves it when its commands are over, before its outcome is recorded.
    let mut busy: HashMap<RunId, String> = HashMap::new();
    // Actions whose last commands took less than `ready_ahead_under`.
    let mut quick: HashMap<String, bool> = HashMap::new();
    let mut tasks: HashMap<tokio::task::Id, RunId> = HashMap::new();
    let mut error_backoff: Option<Duration> = None;
    let mut next_recovery = Instant::now() + s.recovery_interval;
    let mut next_prune = Instant::now() + s.prune_interval;
    tokio::pin!(shutdown);

    loop {
        // Claim while there is room.
        let mut taken = 0;
        let mut store_error = false;
        let limit = drain_limit.max(boost.take().unwrap_or(0));
        while taken < limit {
            // One run more than the slots while every running one is of an
            // action whose commands were quick last time: its start is then
            // written while they run, and it waits for the slot (so it may
            // be of the same action: its commands still start only after).
            let readying = slot.is_some()
                && busy.len() == concurrency
                && busy.values().all(|a| quick.get(a) == Some(&true));
            if busy.len() >= concurrency + usize::from(readying) {
                break;
            }
            match deps
                .spool
                .claim_next_blocking(&deps.host, &|a| !readying && busy.values().any(|b| b == a))
            {
                Ok(Some(run)) => {
                    taken += 1;
                    busy.insert(run.run_id.clone(), run.action_key.clone());
                    // The slot is taken here, in claim order, for a run
                    // that is not readied ahead: a readied run claimed
                    // after it cannot overtake it, whichever task runs
                    // first.
                    let turn = match &slot {
                        None => Turn::Now(None),
                        Some(sem) if readying => Turn::Ahead(sem.clone()),
                        Some(sem) => match sem.clone().try_acquire_owned() {
                            Ok(permit) => Turn::Now(Some(permit)),
                            Err(_) => Turn::Ahead(sem.clone()),
                        },
                    };
                    let (ctx, kill) = (ctx.clone(), kill_rx.clone());
                    let id = run.run_id.clone();
                    let handle = inflight.spawn(async move {
                        let id = run.run_id.clone();
                        (id, process_claimed(&ctx, run, turn, kill).await)
                    });
                    tasks.insert(handle.id(), id);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, code = e.code(), "claim failed");
                    store_error = true;
                    break;
                }
            }
        }
        error_backoff = if store_error {
            Some(
                error_backoff
                    .map_or(Duration::from_secs(1), |d| d * 2)
                    .min(s.max_error_backoff.max(Duration::from_secs(1))),
            )
        } else {
            None
        };

        let now = Instant::now();
        let wake_at = match error_backoff {
            Some(d) => now + d,
            None if busy.len() < concurrency && taken == limit => now,
            None => match deps.spool.next_due_blocking(&deps.host) {
                Some(due) => {
                    let until = due - deps.spool.now();
                    match until.to_std() {
                        // A future retry: wake exactly then.
                        Ok(d) if !d.is_zero() => now + d.min(s.rescan_interval),
                        // Due now but not claimable (its action is busy, or
                        // another process holds it): look again soon.
                        _ => now + s.rescan_interval.min(Duration::from_secs(1)),
                    }
                }
                None => now + s.idle_rescan_interval,
            },
        };
        let wake_at = wake_at.min(next_recovery);

        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some((id, took)) = over_rx.recv() => {
                if let Some(action) = busy.remove(&id) {
                    quick.insert(action, took < s.ready_ahead_under);
                }
            }
            Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                finished(&deps, &mut busy, &mut tasks, joined);
            }
            r = async { match &watch { Some(w) => w.arrivals().await, None => std::future::pending().await } } => {
                match r {
                    // The spool index's own watch may not have these yet:
                    // without this, the claim below could miss them and
                    // the loop sleep until the next rescan.
                    Ok(names) => deps.spool.note_arrivals(&deps.host, Dir::Queued, &names),
                    Err(e) => tracing::warn!(error = %e, "inotify read failed"),
                }
            }
            r = async { match &control { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "inotify read failed on control/");
                }
                boost = take_drain(&deps);
            }
            _ = tokio::time::sleep_until(wake_at) => {}
        }

        let now = Instant::now();
        let recover_due = now >= next_recovery;
        let prune_due = s.retention.is_some() && now >= next_prune;
        if recover_due || prune_due {
            // A pass still running when the next one is due: skip that one
            // rather than queue passes up.
            if upkeep.as_ref().is_none_or(|h| h.is_finished()) {
                upkeep = Some(spawn_upkeep(
                    &deps,
                    recover_due,
                    s.retention.filter(|_| prune_due),
                ));
            }
            if recover_due {
                next_recovery = now + s.recovery_interval;
            }
            if prune_due {
                next_prune = now + s.prune_interval;
            }
        }
    }

    // Shutdown: no more claims; running commands get the grace period.
    let mut stopped = Stopped::default();
    if !inflight.is_empty() {
        tracing::info!(
            running = inflight.len(),
            grace_s = s.shutdown_grace.as_secs(),
            "stopping: waiting for running commands"
        );
        let grace = tokio::time::sleep(s.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = inflight.join_next_with_id() => match joined {
                    Some(j) => finished(&deps, &mut busy, &mut tasks, j),
                    None => break,
                },
                Some((id, _)) = over_rx.recv() => {
                    busy.remove(&id);
                }
                _ = &mut grace, if !*kill_rx.borrow() => {
                    stopped.interrupted = busy.len();
                    tracing::warn!(running = busy.len(), "grace period over: killing commands");
                    let _ = kill_tx.send(true);
                }
            }
        }
    }
    // A recovery pass that is under way finishes (it is crash-safe, but
    // ending it cleanly keeps the log quiet).
    if let Some(h) = upkeep.take() {
        let _ = h.await;
    }
    tracing::info!("executor stopped");
    Ok(stopped)
}

/// One background pass: recovery, then pruning when `prune` is given.
fn spawn_upkeep(
    deps: &Deps,
    recovery: bool,
    prune: Option<Retention>,
) -> tokio::task::JoinHandle<()> {
    let (spool, notifier) = (deps.spool.clone(), deps.notifier.clone());
    tokio::spawn(async move {
        if recovery {
            recover(&spool, notifier.as_ref()).await;
        }
        if let Some(r) = prune {
            match Store::prune(&spool, r).await {
                Ok(rep) => tracing::info!(
                    done_removed = rep.done_removed,
                    dlq_removed = rep.dlq_removed,
                    "pruned"
                ),
                Err(e) => tracing::error!(error = %e, "prune failed"),
            }
        }
    })
}

/// Takes this host's pending drain requests: the largest limit asked for.
fn take_drain(deps: &Deps) -> Option<usize> {
    match deps.spool.take_drain_requests(&deps.host) {
        Ok(Some(limit)) => {
            tracing::info!(limit, "drain requested");
            usize::try_from(limit).ok()
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read drain requests");
            None
        }
    }
}

type Joined =
    std::result::Result<(tokio::task::Id, (RunId, Result<RunEnd>)), tokio::task::JoinError>;

fn finished(
    deps: &Deps,
    busy: &mut HashMap<RunId, String>,
    tasks: &mut HashMap<tokio::task::Id, RunId>,
    joined: Joined,
) {
    match joined {
        Ok((task, (id, res))) => {
            tasks.remove(&task);
            busy.remove(&id);
            if let (Ok(end), Some(tx)) = (res, &deps.events) {
                let _ = tx.send((id, end));
            }
        }
        Err(e) => {
            // A run task that panicked: drop its claim so that recovery
            // settles the file (an attempt that started is interrupted).
            if let Some(id) = tasks.remove(&e.id()) {
                tracing::error!(run_id = %id, error = %e, "run task failed");
                deps.spool.release_claim(&id);
                busy.remove(&id);
            }
        }
    }
}

/// What `once` did.
#[derive(Debug, Default)]
pub struct Drained {
    pub runs: Vec<(RunId, RunEnd)>,
    /// Runs left for recovery after a store error, and claim errors.
    pub errors: Vec<String>,
}

impl Drained {
    /// Every run touched ended well and nothing failed.
    pub fn all_well(&self) -> bool {
        self.errors.is_empty() && self.runs.iter().all(|(_, e)| e.ended_well())
    }
}

/// Recovers, then processes up to `limit` due runs one after the other and
/// returns what happened to each (`remediate-executor once`).
pub async fn drain_once(deps: &Deps, limit: usize, kill: watch::Receiver<bool>) -> Result<Drained> {
    deps.spool.ensure_host(&deps.host)?;
    recover(&deps.spool, deps.notifier.as_ref()).await;
    let ctx = deps.ctx();
    let mut out = Drained::default();
    for _ in 0..limit {
        if *kill.borrow() {
            break;
        }
        let run = match deps.spool.claim_next(&deps.host, Vec::new()).await {
            Ok(Some(run)) => run,
            Ok(None) => break,
            Err(e) => {
                out.errors.push(format!("claim: {e}"));
                break;
            }
        };
        let id = run.run_id.clone();
        match process_claimed(&ctx, run, Turn::Now(None), kill.clone()).await {
            Ok(end) => {
                if let Some(tx) = &deps.events {
                    let _ = tx.send((id.clone(), end.clone()));
                }
                out.runs.push((id, end));
            }
            Err(e) => out.errors.push(format!("{id}: {e}")),
        }
    }
    Ok(out)
}
