//! `GET /api/ops/incident-workflow`: the workflows and their steps.
//! `POST /api/ops/incident-workflow` (`{workflowId, stepId, payload}`): runs
//! one step. `critical-triage` = status-snapshot, drain-queue {limit 8},
//! replay-dlq {limit 3}, notify-test, manual-validate.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Need;
use crate::error::{ApiError, ApiResult};
use crate::routes::drain::drain_runs;
use crate::routes::queue::snapshot_value;
use crate::routes::replay::replay_batch;
use crate::{Ctx, SharedState, audit, parse_json};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub id: &'static str,
    pub title: &'static str,
    pub default_payload: Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub id: &'static str,
    pub title: &'static str,
    pub steps: Vec<Step>,
}

pub fn workflows() -> Vec<Workflow> {
    vec![Workflow {
        id: "critical-triage",
        title: "Critical incident triage",
        steps: vec![
            Step {
                id: "status-snapshot",
                title: "Snapshot the queue",
                default_payload: json!({ "limit": 30 }),
            },
            Step {
                id: "drain-queue",
                title: "Drain due runs now",
                default_payload: json!({ "limit": 8 }),
            },
            Step {
                id: "replay-dlq",
                title: "Replay the oldest DLQ runs",
                default_payload: json!({ "limit": 3 }),
            },
            Step {
                id: "notify-test",
                title: "Check that notifications reach the on-call",
                default_payload: json!({}),
            },
            Step {
                id: "manual-validate",
                title: "An operator confirms the host is healthy",
                default_payload: json!({ "note": "" }),
            },
        ],
    }]
}

pub async fn list(State(st): State<SharedState>, ctx: Ctx) -> ApiResult<Json<Value>> {
    ctx.auth(&st, Need::OPS)?;
    Ok(Json(json!({ "ok": true, "workflows": workflows() })))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunStep {
    workflow_id: String,
    step_id: String,
    #[serde(default)]
    payload: Value,
}

fn payload_limit(p: &Value, default: i64, max: i64) -> Result<usize, ApiError> {
    match p.get("limit") {
        None | Some(Value::Null) => Ok(default as usize),
        Some(v) => v.as_i64().map(|n| n.clamp(1, max) as usize).ok_or_else(|| {
            ApiError::bad_request("invalid_field", "field `payload.limit` must be an integer")
        }),
    }
}

pub async fn run_step(
    State(st): State<SharedState>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS)?;
    let req: RunStep = parse_json(&body)?;
    let wf = workflows()
        .into_iter()
        .find(|w| w.id == req.workflow_id)
        .ok_or_else(|| {
            ApiError::not_found(
                "workflow_not_found",
                format!("no workflow {:?}", req.workflow_id),
            )
        })?;
    if !wf.steps.iter().any(|s| s.id == req.step_id) {
        return Err(ApiError::not_found(
            "step_not_found",
            format!("workflow {} has no step {:?}", wf.id, req.step_id),
        ));
    }
    let result = match req.step_id.as_str() {
        "status-snapshot" => {
            snapshot_value(&st, &who, payload_limit(&req.payload, 30, 100)?, false).await?
        }
        "drain-queue" => {
            json!({ "drained": drain_runs(&st, &who, payload_limit(&req.payload, 8, 50)?).await? })
        }
        "replay-dlq" => replay_batch(&st, &who, payload_limit(&req.payload, 3, 50)?).await?,
        "notify-test" => crate::routes::notify::deliver(&st, &who, &req.payload).await?,
        _ => {
            let note = req
                .payload
                .get("note")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if note.chars().count() > 280 {
                return Err(ApiError::bad_request(
                    "note_too_long",
                    "payload.note must be at most 280 characters",
                ));
            }
            json!({ "validatedBy": who.name, "note": note })
        }
    };
    if req.step_id != "status-snapshot" {
        audit(
            &st,
            &ctx,
            &who,
            "incident-workflow",
            None,
            json!({ "workflowId": wf.id, "stepId": req.step_id }),
        )
        .await?;
    }
    Ok(Json(
        json!({ "ok": true, "workflowId": wf.id, "stepId": req.step_id, "result": result }),
    ))
}
