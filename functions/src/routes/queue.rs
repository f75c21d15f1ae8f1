//! `GET /api/ops/remediate-queue`: the queue snapshot (counts and the oldest
//! items, `?limit=1..100` default 25, `?dlq=1` for the DLQ only).
//! `POST /api/ops/remediate-queue`: approve or reject a run that waits for
//! approval (`{runId, mode: approve|reject, reason <= 280 chars}`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use remediate_spool::{ApprovalStatus, Bucket, ListQuery, RunId, RunState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Need, Principal};
use crate::error::{ApiError, ApiResult};
use crate::items::{counts, item};
use crate::routes::clamp_limit;
use crate::{AppState, Ctx, SharedState, audit, parse_json};

fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("query `{name}` must be an integer, got {v:?}"),
            )
        }),
    }
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"))
}

pub async fn snapshot(
    State(st): State<SharedState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::VIEWER_OR_QUEUE)?;
    let limit = clamp_limit(int_param(&q, "limit")?, 25, 1, 100);
    let dlq = flag(&q, "dlq");
    let snap = snapshot_value(&st, &who, limit, dlq).await?;
    Ok(Json(
        json!({ "ok": true, "authMode": who.mode.as_str(), "snapshot": snap }),
    ))
}

/// Counts and items as the principal may see them (a host-limited token
/// sees its hosts only).
pub async fn snapshot_value(
    st: &AppState,
    who: &Principal,
    limit: usize,
    dlq: bool,
) -> ApiResult<Value> {
    let buckets = if dlq {
        vec![Bucket::Dlq]
    } else {
        vec![
            Bucket::Held,
            Bucket::Queued,
            Bucket::RetryScheduled,
            Bucket::Running,
            Bucket::Dlq,
        ]
    };
    let (c, items) = match &who.hosts {
        None => {
            let c = st.store.counts(None).await?;
            let items = st
                .store
                .list(ListQuery {
                    host: None,
                    buckets,
                    limit,
                })
                .await?;
            (c, items)
        }
        Some(hosts) => {
            let mut total = remediate_spool::Counts::default();
            let mut items = Vec::new();
            for h in hosts {
                let Ok(h) = remediate_spool::HostId::parse(h) else {
                    continue;
                };
                let c = st.store.counts(Some(h.clone())).await?;
                for b in Bucket::ALL {
                    add(&mut total, b, c.get(b));
                }
                items.extend(
                    st.store
                        .list(ListQuery {
                            host: Some(h),
                            buckets: buckets.clone(),
                            limit,
                        })
                        .await?,
                );
            }
            items.sort_by_key(|r| r.requested_at);
            items.truncate(limit);
            (total, items)
        }
    };
    Ok(json!({
        "counts": counts(&c),
        "items": items.iter().map(|r| item(r, false)).collect::<Vec<_>>(),
        "limit": limit,
        "dlqOnly": dlq,
    }))
}

fn add(c: &mut remediate_spool::Counts, b: Bucket, n: usize) {
    let f = match b {
        Bucket::Queued => &mut c.queued,
        Bucket::RetryScheduled => &mut c.retry_scheduled,
        Bucket::Held => &mut c.held,
        Bucket::Running => &mut c.running,
        Bucket::Succeeded => &mut c.succeeded,
        Bucket::Rejected => &mut c.rejected,
        Bucket::Expired => &mut c.expired,
        Bucket::Canceled => &mut c.canceled,
        Bucket::Replayed => &mut c.replayed,
        Bucket::Dlq => &mut c.dlq,
        Bucket::Corrupt => &mut c.corrupt,
    };
    *f += n;
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Decide {
    run_id: String,
    mode: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Looks up a run for a principal: 404 when unknown, 403 when the
/// principal's token is limited to other hosts.
pub async fn run_for(
    st: &AppState,
    who: &Principal,
    run_id: &str,
) -> ApiResult<remediate_spool::RunRecord> {
    let id =
        RunId::parse(run_id).map_err(|e| ApiError::bad_request("invalid_run_id", e.to_string()))?;
    let r =
        st.store.get(&id).await?.ok_or_else(|| {
            ApiError::not_found("run_not_found", format!("run {run_id} not found"))
        })?;
    if !who.may_touch(r.host_id.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not act on host {}",
            who.name, r.host_id
        )));
    }
    Ok(r)
}

pub async fn decide(
    State(st): State<SharedState>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS)?;
    let req: Decide = parse_json(&body)?;
    let approve = match req.mode.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(ApiError::bad_request(
                "invalid_mode",
                format!("mode must be \"approve\" or \"reject\", got {other:?}"),
            ));
        }
    };
    if req.reason.as_ref().is_some_and(|r| r.chars().count() > 280) {
        return Err(ApiError::bad_request(
            "reason_too_long",
            "reason must be at most 280 characters",
        ));
    }
    let run = run_for(&st, &who, &req.run_id).await?;
    if run.state != RunState::Held || run.approval.status != ApprovalStatus::Pending {
        return Err(ApiError::conflict(
            "not_pending",
            format!(
                "run {} is not waiting for approval (it is {})",
                run.run_id,
                crate::items::seed_state(&run)
            ),
        )
        .with(json!({ "state": crate::items::seed_state(&run) })));
    }
    let res = if approve {
        st.store
            .approve(&run.run_id, &who.name, req.reason.clone())
            .await
    } else {
        st.store
            .reject(&run.run_id, &who.name, req.reason.clone())
            .await
    };
    let rec = match res {
        Ok(r) => r,
        Err(remediate_spool::SpoolError::IllegalMove { .. }) => {
            return Err(ApiError::conflict(
                "not_pending",
                format!("run {} is no longer waiting for approval", run.run_id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    audit(
        &st,
        &ctx,
        &who,
        &req.mode,
        Some(rec.run_id.as_str()),
        json!({ "reason": req.reason }),
    )
    .await?;
    let it = item(&rec, false);
    Ok(Json(json!({
        "ok": true,
        "result": { "ok": true, "runId": rec.run_id, "state": it["state"], "approvalStatus": it["approvalStatus"] },
    })))
}
