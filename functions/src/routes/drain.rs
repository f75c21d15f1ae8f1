//! `POST /api/ops/remediate-drain` (`{limit}` 1..50, default 5): asks the
//! executors to take up to `limit` due runs now and waits, bounded, for
//! their outcomes. Runs that did not finish in time are reported with their
//! current state. The HTTP side never runs a command itself.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use remediate_spool::{Bucket, HostId, ListQuery, RunRecord, RunState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Need, Principal};
use crate::error::ApiResult;
use crate::items::item;
use crate::routes::clamp_limit;
use crate::{AppState, Ctx, SharedState, audit, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct Drain {
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn drain(State(st): State<SharedState>, ctx: Ctx, body: Bytes) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS_OR_QUEUE)?;
    let req: Drain = parse_json(&body)?;
    let limit = clamp_limit(req.limit, 5, 1, 50);
    let drained = drain_runs(&st, &who, limit).await?;
    if !drained.is_empty() {
        audit(
            &st,
            &ctx,
            &who,
            "drain",
            None,
            json!({ "limit": limit, "runs": drained.len() }),
        )
        .await?;
    }
    Ok(Json(
        json!({ "ok": true, "authMode": who.mode.as_str(), "drained": drained }),
    ))
}

/// Whether a run has moved on since it was picked for a drain.
fn settled(before: &RunRecord, now: &RunRecord) -> bool {
    match now.state {
        RunState::Queued => now.attempts > before.attempts,
        RunState::Running => false,
        _ => true,
    }
}

/// Picks up to `limit` due runs the principal may touch, asks their hosts'
/// executors to drain, and waits up to the configured time for outcomes.
pub async fn drain_runs(st: &AppState, who: &Principal, limit: usize) -> ApiResult<Vec<Value>> {
    let now = chrono::Utc::now();
    let mut due: Vec<RunRecord> = st
        .store
        .list(ListQuery {
            host: None,
            buckets: vec![Bucket::Queued, Bucket::RetryScheduled],
            limit: 10_000,
        })
        .await?
        .into_iter()
        .filter(|r| r.due_at() <= now && who.may_touch(r.host_id.as_str()))
        .collect();
    due.sort_by_key(|r| r.due_at());
    due.truncate(limit);
    let mut per_host: BTreeMap<HostId, u32> = BTreeMap::new();
    for r in &due {
        *per_host.entry(r.host_id.clone()).or_default() += 1;
    }
    for (h, n) in &per_host {
        st.store.request_drain(h, *n).await?;
    }
    let deadline = tokio::time::Instant::now() + st.drain_wait;
    let mut latest: Vec<RunRecord> = due.clone();
    loop {
        let mut all = true;
        for (i, before) in due.iter().enumerate() {
            if settled(before, &latest[i]) {
                continue;
            }
            if let Some(r) = st.store.get(&before.run_id).await? {
                latest[i] = r;
            }
            all &= settled(before, &latest[i]);
        }
        if all || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Ok(due
        .iter()
        .zip(&latest)
        .map(|(b, r)| {
            let mut v = item(r, false);
            v["finished"] = json!(settled(b, r));
            v
        })
        .collect())
}
