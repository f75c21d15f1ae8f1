//! `GET /api/ops/runs/{runId}` (viewer): one run with its attempt history,
//! each command's captured output, its canary and its rollback. The console's
//! run page reads it; 404 for an unknown run, 403 for a token limited to
//! other hosts.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::auth::Need;
use crate::error::ApiResult;
use crate::items::item;
use crate::routes::queue::run_for;
use crate::{Ctx, SharedState};

pub async fn get_run(
    State(st): State<SharedState>,
    ctx: Ctx,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::VIEWER)?;
    let rec = run_for(&st, &who, &run_id).await?;
    Ok(Json(json!({ "ok": true, "run": item(&rec, true) })))
}
