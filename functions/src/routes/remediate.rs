//! `POST /api/remediate`: `mode` plan (default), dry-run, execute or
//! drain-queue, as the original: `{hostId, actionId, params, confirmPhrase =
//! "EXECUTE <actionId>", limit}`. Plan and dry-run render the action and
//! run the guard; execute passes the gates (active run, hourly limit,
//! cooldown, backlogs, a fresh dry-run) and queues a run for the host's
//! executor. Nothing here runs a command.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use remediate_config::{
    Action, Effective, ExecuteGateInput, RenderContext, RenderedAction, SkipReason,
    approval_required, canary_bucket, canary_percent, canary_selected, execute_gate,
};
use remediate_spool::{
    ActivityKind, Checked, EnqueueCheck, GateFacts, HostId, IdemKey, NewRun, Refusal,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{Need, Principal};
use crate::error::{ApiError, ApiResult};
use crate::items::Item;
use crate::routes::clamp_limit;
use crate::routes::drain::drain_runs;
use crate::{AppState, Ctx, SharedState, audit, audit_enqueue, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Remediate {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    host_id: Option<String>,
    #[serde(default)]
    action_id: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    confirm_phrase: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub async fn remediate(
    State(st): State<SharedState>,
    ctx: Ctx,
    body: Bytes,
) -> ApiResult<Response> {
    // Plan is a read; everything else changes something. The body is only
    // parsed for an authenticated caller, and says which role it needs.
    let who = ctx.auth(&st, Need::VIEWER)?;
    let req: Remediate = parse_json(&body)?;
    let mode = req.mode.as_deref().unwrap_or("plan");
    if mode != "plan" {
        crate::auth::require_role(&who, Need::OPS.role)?;
    }
    match mode {
        "drain-queue" => {
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
            Ok(
                Json(json!({ "ok": true, "mode": "drain-queue", "drained": drained }))
                    .into_response(),
            )
        }
        "plan" | "dry-run" | "execute" => {
            let target = Target::resolve(&st, &who, &req).await?;
            match mode {
                "plan" => Ok(Json(plan(&st, &target, &req)).into_response()),
                "dry-run" => Ok(dry_run(&st, &ctx, &who, &target, &req)
                    .await?
                    .into_response()),
                _ => Ok(execute(&st, &ctx, &who, &target, &req)
                    .await?
                    .into_response()),
            }
        }
        other => Err(ApiError::bad_request(
            "invalid_mode",
            format!("mode must be plan, dry-run, execute or drain-queue, got {other:?}"),
        )),
    }
}

/// A host, its effective policy and (for dry-run and execute) an action.
struct Target<'a> {
    host: HostId,
    effective: std::sync::Arc<Effective>,
    action: Option<&'a Action>,
}

impl<'a> Target<'a> {
    async fn resolve(st: &'a AppState, who: &Principal, req: &Remediate) -> ApiResult<Target<'a>> {
        let host_str = req
            .host_id
            .as_deref()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ApiError::bad_request("host_id_required", "hostId is required"))?;
        let host = HostId::parse(host_str)
            .map_err(|e| ApiError::bad_request("invalid_host_id", e.to_string()))?;
        if !who.may_touch(host.as_str()) {
            return Err(ApiError::forbidden(format!(
                "token {:?} may not act on host {host}",
                who.name
            )));
        }
        let doc = st.store.get_host_doc(&host).await?.ok_or_else(|| {
            ApiError::not_found(
                "host_not_found",
                format!("host {host} is not registered; an admin registers it with PUT /api/hosts/{host}"),
            )
        })?;
        // A stored document that no longer validates (the global settings
        // changed under it) is a conflict an admin resolves with a PUT.
        let effective = st.effective(&doc).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "invalid_host_policy",
                format!("host {host}'s policy is invalid: {e}"),
            )
        })?;
        let action = match req.action_id.as_deref().filter(|a| !a.is_empty()) {
            Some(id) => Some(st.catalog.get(id).ok_or_else(|| {
                ApiError::not_found(
                    "action_not_found",
                    format!("action {id:?} is not in the catalog"),
                )
            })?),
            None => None,
        };
        Ok(Target {
            host,
            effective,
            action,
        })
    }

    fn action(&self) -> ApiResult<&'a Action> {
        self.action
            .ok_or_else(|| ApiError::bad_request("action_id_required", "actionId is required"))
    }
}

/// Renders an action for the host and runs the guard over every command,
/// canary check and rollback command.
fn render(
    t: &Target<'_>,
    action: &Action,
    params: &serde_json::Map<String, Value>,
) -> ApiResult<RenderedAction> {
    let rendered = action
        .render(params, &RenderContext::new("preview", 1))
        .map_err(|issues| {
            ApiError::bad_request(
                "invalid_params",
                format!("parameters of {} are invalid", action.id),
            )
            .with(json!({ "issues": issues }))
        })?;
    remediate_config::guard::check_action(&rendered, &t.effective.guard).map_err(|issues| {
        ApiError::bad_request(
            "guard_blocked",
            format!("the command guard refuses {}", action.id),
        )
        .with(json!({ "profile": t.effective.profile, "issues": issues }))
    })?;
    Ok(rendered)
}

fn action_view(t: &Target<'_>, a: &Action, params: &serde_json::Map<String, Value>) -> Value {
    let p = &t.effective.policy;
    let (rendered, guard) = match a.render(params, &RenderContext::new("preview", 1)) {
        Ok(r) => {
            let g = match remediate_config::guard::check_action(&r, &t.effective.guard) {
                Ok(()) => json!({ "allowed": true, "issues": [] }),
                Err(issues) => json!({ "allowed": false, "issues": issues }),
            };
            (json!(r), g)
        }
        Err(issues) => (
            Value::Null,
            json!({ "allowed": false, "paramIssues": issues }),
        ),
    };
    json!({
        "actionId": a.id,
        "title": a.title,
        "risk": a.risk,
        "tier": a.tier,
        "idempotent": a.idempotent,
        "params": a.params,
        "rendered": rendered,
        "guard": guard,
        "approvalRequired": approval_required(a.risk, a.tier, p.approval_risk_threshold),
        "canary": {
            "percent": canary_percent(a.tier, p),
            "bucket": canary_bucket(t.host.as_str(), &a.id),
            "selected": canary_selected(t.host.as_str(), &a.id, a.tier, p),
            "checks": a.canary_checks.len(),
        },
        "rollback": { "armed": p.auto_rollback && !a.rollback.is_empty(), "commands": a.rollback.len() },
        "confirmPhrase": format!("EXECUTE {}", a.id),
    })
}

fn plan(st: &AppState, t: &Target<'_>, req: &Remediate) -> Value {
    let actions: Vec<Value> = match &t.action {
        Some(a) => vec![action_view(t, a, &req.params)],
        None => st
            .catalog
            .actions()
            .iter()
            .map(|a| action_view(t, a, &a.example_params()))
            .collect(),
    };
    json!({
        "ok": true,
        "mode": "plan",
        "hostId": t.host,
        "profile": t.effective.profile,
        "enabled": t.effective.enabled,
        "actions": actions,
    })
}

async fn dry_run(
    st: &AppState,
    ctx: &Ctx,
    who: &Principal,
    t: &Target<'_>,
    req: &Remediate,
) -> ApiResult<Json<Value>> {
    let a = t.action()?;
    let rendered = render(t, a, &req.params)?;
    st.store
        .record_activity(&t.host, ActivityKind::DryRun, &a.id)
        .await?;
    audit(
        st,
        ctx,
        who,
        "dry-run",
        None,
        json!({ "hostId": t.host, "actionId": a.id }),
    )
    .await?;
    Ok(Json(json!({
        "ok": true,
        "mode": "dry-run",
        "hostId": t.host,
        "actionId": a.id,
        "rendered": rendered,
        "plan": action_view(t, a, &req.params),
        "validForMinutes": t.effective.policy.dry_run_max_age_minutes,
    })))
}

/// An execute gate's refusal, carried through the store's check.
struct Refused {
    reason: SkipReason,
    active: Option<String>,
}

fn gate_error(reason: SkipReason, active: Option<&str>) -> ApiError {
    let code = reason.code();
    let msg = reason.to_string();
    match reason {
        SkipReason::AlreadyActive => {
            ApiError::conflict(code, msg).with(json!({ "runningRunId": active }))
        }
        SkipReason::DryRunMissing | SkipReason::DryRunStale { .. } => ApiError::conflict(
            code,
            format!("{msg}: run mode \"dry-run\" for this host and action first"),
        ),
        SkipReason::CooldownActive { remaining_seconds } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, msg)
                .with(json!({ "retryAfterSeconds": remaining_seconds }))
        }
        SkipReason::ExecuteHourlyLimit { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, msg)
                .with(json!({ "retryAfterSeconds": 3600 }))
        }
        _ => ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, msg)
            .with(json!({ "retryAfterSeconds": 60 })),
    }
}

/// The answer to an execute, written straight from the run's record.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteAnswer<'a> {
    ok: bool,
    mode: &'static str,
    created: bool,
    queued: bool,
    approval_required: bool,
    queue: QueueAnswer,
    run: Item<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueAnswer {
    auto_drain: bool,
    drain_triggered: bool,
}

async fn execute(
    st: &AppState,
    ctx: &Ctx,
    who: &Principal,
    t: &Target<'_>,
    req: &Remediate,
) -> ApiResult<Response> {
    let a = t.action()?;
    let expected = format!("EXECUTE {}", a.id);
    if req.confirm_phrase.as_deref() != Some(expected.as_str()) {
        return Err(ApiError::bad_request(
            "confirm_phrase_mismatch",
            format!("confirmPhrase must be {expected:?}"),
        )
        .with(json!({ "expected": expected })));
    }
    if !t.effective.enabled {
        return Err(ApiError::conflict(
            "host_disabled",
            format!("host {} is disabled", t.host),
        ));
    }
    let rendered = render(t, a, &req.params)?;
    let p = &t.effective.policy;
    let now = chrono::Utc::now();
    let needs_approval = approval_required(a.risk, a.tier, p.approval_risk_threshold);
    let ttl = chrono::Duration::from_std(p.queue_ttl()).unwrap_or(chrono::Duration::hours(2));
    let key = match req.idempotency_key.as_deref() {
        Some(k) => Some(
            IdemKey::parse(k)
                .map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))?,
        ),
        None => None,
    };
    let new = NewRun {
        host_id: t.host.clone(),
        action_key: a.id.clone(),
        params: rendered.params.into_iter().collect(),
        requested_by: who.name.clone(),
        idempotency_key: key,
        max_attempts: p.max_retry_attempts,
        expires_at: Some(now + ttl),
        idempotent: a.idempotent,
        approval_required: needs_approval,
        canary: remediate_spool::Canary {
            percent: canary_percent(a.tier, p),
            bucket: canary_bucket(t.host.as_str(), &a.id),
            selected: canary_selected(t.host.as_str(), &a.id, a.tier, p),
            checks: a.canary_checks.len() as u32,
            passed: None,
        },
        rollback: remediate_spool::Rollback {
            armed: p.auto_rollback && !a.rollback.is_empty(),
            attempted: false,
            succeeded: None,
        },
        auto_queued: false,
        auto_reason: None,
        auto_tier: None,
        risk: Some(a.risk.as_str().to_string()),
        tier: Some(a.tier.as_str().to_string()),
    };
    // The gates and the enqueue are one store step (under the host's lock
    // in the local spool): the facts the gates see stay true until the run
    // is published. Executes are the runs people asked for, counted from
    // the store's index; an execute writes nothing but its own run.
    let hour_ago = now - chrono::Duration::hours(1);
    let window = GateFacts::window(now, p.execute_cooldown());
    // The gate check runs in the store step: it takes the effective policy
    // along (a reference count, not a copy of the policy).
    let effective = t.effective.clone();
    let action_id = a.id.clone();
    let check: EnqueueCheck = Box::new(move |f: &GateFacts| {
        let gate = ExecuteGateInput {
            policy: &effective.policy,
            active_run: f.active_run.is_some(),
            executes_last_hour: f.requests_after(hour_ago, false),
            since_last_execute: f.since_last_request(&action_id, now),
            host_backlog: u32::try_from(f.host_backlog).unwrap_or(u32::MAX),
            global_backlog: u32::try_from(f.global_backlog).unwrap_or(u32::MAX),
            dry_run_age: f
                .activity
                .dry_runs
                .get(&action_id)
                .map(|at| (now - *at).to_std().unwrap_or(Duration::ZERO)),
        };
        execute_gate(&gate).map_err(|reason| -> Refusal {
            Box::new(Refused {
                reason,
                active: f.active_run.as_ref().map(|id| id.to_string()),
            })
        })
    });
    let enq = match st.store.enqueue_checked(new, window, check).await? {
        Checked::Enqueued(enq) => enq,
        Checked::Refused(r) => {
            return Err(match r.downcast::<Refused>() {
                Ok(r) => gate_error(r.reason, r.active.as_deref()),
                Err(_) => ApiError::internal(),
            });
        }
    };
    if enq.created {
        st.metrics
            .enqueues
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let auto_drain = p.queue_autodrain;
    let mut drain_triggered = false;
    if auto_drain && !needs_approval && enq.created {
        st.store.request_drain(&t.host, 1).await?;
        drain_triggered = true;
    }
    audit_enqueue(
        st,
        ctx,
        who,
        "execute",
        enq.record.run_id.as_str(),
        json!({ "hostId": t.host, "actionId": a.id, "created": enq.created, "approvalRequired": needs_approval }),
    )
    .await?;
    Ok(Json(ExecuteAnswer {
        ok: true,
        mode: "execute",
        created: enq.created,
        queued: true,
        approval_required: needs_approval,
        queue: QueueAnswer {
            auto_drain,
            drain_triggered,
        },
        run: Item::new(&enq.record, false),
    })
    .into_response())
}
