//! `POST /api/ops/remediate-hygiene` (`{drainLimit 30, replayLimit 15}`):
//! drain, replay the DLQ, drain again, with counts before and after.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Need;
use crate::error::ApiResult;
use crate::routes::clamp_limit;
use crate::routes::drain::drain_runs;
use crate::routes::queue::snapshot_value;
use crate::routes::replay::replay_batch;
use crate::{Ctx, SharedState, audit, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Hygiene {
    #[serde(default)]
    drain_limit: Option<i64>,
    #[serde(default)]
    replay_limit: Option<i64>,
}

pub async fn hygiene(
    State(st): State<SharedState>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS)?;
    let req: Hygiene = parse_json(&body)?;
    let drain_limit = clamp_limit(req.drain_limit, 30, 1, 50);
    let replay_limit = clamp_limit(req.replay_limit, 15, 1, 50);
    let before = snapshot_value(&st, &who, 1, false).await?["counts"].clone();
    let first = drain_runs(&st, &who, drain_limit).await?;
    let replay = replay_batch(&st, &who, replay_limit).await?;
    let second = drain_runs(&st, &who, drain_limit).await?;
    let after = snapshot_value(&st, &who, 1, false).await?["counts"].clone();
    audit(
        &st,
        &ctx,
        &who,
        "hygiene",
        None,
        json!({ "drained": first.len() + second.len(), "replayed": replay["replayed"] }),
    )
    .await?;
    Ok(Json(json!({
        "ok": true,
        "drainLimit": drain_limit,
        "replayLimit": replay_limit,
        "before": before,
        "drain": first,
        "replay": replay,
        "drainAgain": second,
        "after": after,
    })))
}
