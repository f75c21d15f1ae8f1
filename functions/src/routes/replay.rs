//! `POST /api/ops/remediate-replay`: `{mode: "single", runId}` replays one
//! run; `{mode: "dlq-batch", limit 1..50 (3)}` replays the oldest DLQ runs.
//! A replay is a new run (`replayOfRunId`) with a fresh attempt budget and
//! fresh approval, canary and rollback state; the source must be finished.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use remediate_spool::{Bucket, ListQuery, SpoolError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Need, Principal};
use crate::error::{ApiError, ApiResult};
use crate::items::item;
use crate::routes::clamp_limit;
use crate::routes::queue::run_for;
use crate::{AppState, Ctx, SharedState, audit, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Replay {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn replay(
    State(st): State<SharedState>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS_OR_QUEUE)?;
    let req: Replay = parse_json(&body)?;
    match req.mode.as_deref().unwrap_or("single") {
        "single" => {
            let run_id = req.run_id.ok_or_else(|| {
                ApiError::bad_request("run_id_required", "runId is required for mode \"single\"")
            })?;
            let src = run_for(&st, &who, &run_id).await?;
            let child = st
                .store
                .replay(&src.run_id, &who.name)
                .await
                .map_err(|e| match e {
                    remediate_spool::SpoolError::IllegalMove { .. } => ApiError::conflict(
                        "not_replayable",
                        format!(
                            "run {} is {}: only finished runs can be replayed",
                            src.run_id,
                            crate::items::seed_state(&src)
                        ),
                    ),
                    other => other.into(),
                })?;
            audit(
                &st,
                &ctx,
                &who,
                "replay",
                Some(src.run_id.as_str()),
                json!({ "newRunId": child.run_id }),
            )
            .await?;
            Ok(Json(
                json!({ "ok": true, "mode": "single", "replayed": item(&child, false) }),
            ))
        }
        "dlq-batch" => {
            let limit = clamp_limit(req.limit, 3, 1, 50);
            let summary = replay_batch(&st, &who, limit).await?;
            audit(
                &st,
                &ctx,
                &who,
                "replay-dlq-batch",
                None,
                json!({ "replayed": summary["replayed"], "failed": summary["failed"] }),
            )
            .await?;
            Ok(Json(
                json!({ "ok": true, "mode": "dlq-batch", "summary": summary }),
            ))
        }
        other => Err(ApiError::bad_request(
            "invalid_mode",
            format!("mode must be \"single\" or \"dlq-batch\", got {other:?}"),
        )),
    }
}

/// Replays up to `limit` of the oldest DLQ runs the principal may touch.
pub async fn replay_batch(st: &AppState, who: &Principal, limit: usize) -> ApiResult<Value> {
    let fetch = if who.hosts.is_some() { 10_000 } else { limit };
    let mut candidates = st
        .store
        .list(ListQuery {
            host: None,
            buckets: vec![Bucket::Dlq],
            limit: fetch,
        })
        .await?;
    candidates.retain(|r| who.may_touch(r.host_id.as_str()));
    candidates.truncate(limit);
    let mut replayed = Vec::new();
    let mut failed = Vec::new();
    for src in &candidates {
        match st.store.replay(&src.run_id, &who.name).await {
            Ok(child) => {
                replayed.push(json!({ "sourceRunId": src.run_id, "run": item(&child, false) }))
            }
            // Another operator replayed it meanwhile, or it is busy: report it.
            Err(
                e @ (SpoolError::IllegalMove { .. }
                | SpoolError::Busy { .. }
                | SpoolError::NotFound { .. }),
            ) => failed.push(
                json!({ "sourceRunId": src.run_id, "error": e.to_string(), "code": e.code() }),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(json!({
        "limit": limit,
        "considered": candidates.len(),
        "replayed": replayed.len(),
        "failed": failed.len(),
        "items": replayed,
        "errors": failed,
    }))
}
