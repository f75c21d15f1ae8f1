//! `POST /api/hosts/{hostId}/signals` (ops): a host reports what it observed
//! (signal codes such as `ssh_failed_password`), and the autonomous planner
//! decides, code by code, whether to queue the catalog's action for it.
//!
//! Each code maps to the first action listing it as a trigger, else the
//! catalog's fallback. The action is queued only when every gate of
//! [`autonomous_gate`] passes, with counts taken from the store: the host's
//! and the global backlog, active runs of the action, runs queued earlier in
//! this request (the cycle), auto-queued runs of the host in the last hour,
//! the cooldown since the action last ran, and the guard over the action
//! rendered with its example parameters. Otherwise the answer names the
//! [`SkipReason`]. A queued run is marked `autoQueued`, with the signal code
//! as `autoReason` and the tier as `autoTier`; approval, canary and rollback
//! are set as for an operator's execute.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use remediate_config::{
    Action, GateInput, RenderContext, SkipReason, approval_required, autonomous_gate,
    canary_bucket, canary_percent, canary_selected,
};
use remediate_spool::{Checked, EnqueueCheck, GateFacts, HostId, IdemKey, NewRun, Refusal};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Need;
use crate::error::{ApiError, ApiResult};
use crate::items::Item;
use crate::{Ctx, SharedState, audit, parse_json};

/// Most signals one report may carry.
pub const MAX_SIGNALS: usize = 50;
const MAX_CODE_LEN: usize = 64;
const MAX_DETAIL_LEN: usize = 1000;
const MAX_CYCLE_LEN: usize = 64;

/// What a host reports.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SignalReport {
    /// What the host observed, in order; 1 to 50 signals.
    #[schemars(length(min = 1, max = 50))]
    signals: Vec<Signal>,
    /// The host's planning cycle, echoed and audited; a repeated report of
    /// the same cycle finds the runs it queued instead of queueing again.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]*$")
    )]
    cycle_id: Option<String>,
}

/// One observation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Signal {
    /// The signal code, matched against the catalog's trigger codes.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_.:-]+$"))]
    code: String,
    /// Free text for people (at most 1000 characters); echoed, never executed.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    detail: Option<String>,
}

fn validate(r: &SignalReport) -> ApiResult<()> {
    if r.signals.is_empty() {
        return Err(ApiError::bad_request(
            "signals_required",
            "signals must hold at least one {code}",
        ));
    }
    if r.signals.len() > MAX_SIGNALS {
        return Err(ApiError::bad_request(
            "too_many_signals",
            format!(
                "at most {MAX_SIGNALS} signals per report, got {}",
                r.signals.len()
            ),
        ));
    }
    for (i, s) in r.signals.iter().enumerate() {
        let ok = !s.code.is_empty()
            && s.code.len() <= MAX_CODE_LEN
            && s.code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !ok {
            return Err(ApiError::bad_request(
                "invalid_signal_code",
                format!("signals[{i}].code must be 1-{MAX_CODE_LEN} of A-Z a-z 0-9 _ . : -"),
            )
            .with(json!({ "field": format!("signals[{i}].code") })));
        }
        if s.detail
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DETAIL_LEN)
        {
            return Err(ApiError::bad_request(
                "invalid_signal_detail",
                format!("signals[{i}].detail is longer than {MAX_DETAIL_LEN} characters"),
            )
            .with(json!({ "field": format!("signals[{i}].detail") })));
        }
    }
    if let Some(c) = &r.cycle_id
        && (c.len() > MAX_CYCLE_LEN || IdemKey::parse(c).is_err())
    {
        return Err(ApiError::bad_request(
            "invalid_cycle_id",
            format!(
                "cycleId must be 1-{MAX_CYCLE_LEN} of A-Z a-z 0-9 - _ . : @, not starting with a dot"
            ),
        )
        .with(json!({ "field": "cycleId" })));
    }
    Ok(())
}

fn word<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn skip(reason: &SkipReason) -> Value {
    let mut v = serde_json::to_value(reason).unwrap_or_else(|_| json!({ "code": reason.code() }));
    if let Value::Object(m) = &mut v {
        m.insert("message".into(), json!(reason.to_string()));
    }
    v
}

/// Renders the action with its example parameters and runs the guard;
/// `Err` holds the issues (parameter or guard) that block it.
fn guard_issues(
    a: &Action,
    guard: &remediate_config::GuardPolicy,
) -> Result<BTreeMap<String, Value>, Value> {
    let rendered = a
        .render(&a.example_params(), &RenderContext::new("preview", 1))
        .map_err(|issues| json!({ "paramIssues": issues }))?;
    remediate_config::guard::check_action(&rendered, guard)
        .map_err(|issues| json!({ "issues": issues }))?;
    Ok(rendered.params.clone().into_iter().collect())
}

pub async fn report(
    State(st): State<SharedState>,
    ctx: Ctx,
    Path(host): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS)?;
    let host = HostId::parse(&host)
        .map_err(|e| ApiError::bad_request("invalid_host_id", e.to_string()))?;
    if !who.may_touch(host.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not act on host {host}",
            who.name
        )));
    }
    let req: SignalReport = parse_json(&body)?;
    validate(&req)?;
    let doc = st.store.get_host_doc(&host).await?.ok_or_else(|| {
        ApiError::not_found(
            "host_not_found",
            format!(
                "host {host} is not registered; an admin registers it with PUT /api/hosts/{host}"
            ),
        )
    })?;
    // As the remediate route: the cached effective policy of the stored
    // document; a document that no longer validates (the config changed
    // under it, or it was edited by hand) is a conflict an admin resolves
    // with a PUT.
    let eff = st.effective(&doc).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "invalid_host_policy",
            format!("host {host}'s policy is invalid: {e}"),
        )
    })?;
    if !eff.enabled {
        return Err(ApiError::conflict(
            "host_disabled",
            format!("host {host} is disabled"),
        ));
    }
    let p = &eff.policy;
    let now = Utc::now();
    // Every run requested within the hour or the cooldown counts (from the
    // spool's index, whatever state they are in now: the hourly count must
    // see auto-queued runs that already finished).
    let hour_ago = now - chrono::Duration::hours(1);
    let window = GateFacts::window(now, p.execute_cooldown());
    let ttl = chrono::Duration::from_std(p.queue_ttl()).unwrap_or(chrono::Duration::hours(2));
    let mut results = Vec::with_capacity(req.signals.len());
    let mut queued_ids = Vec::new();
    let mut ready = 0u32;
    let mut queued_this_cycle = 0u32;
    for s in &req.signals {
        let Some(a) = st.catalog.for_trigger(&s.code) else {
            results.push(json!({
                "code": s.code,
                "detail": s.detail,
                "actionId": null,
                "queued": false,
                "skip": {
                    "code": "no_action",
                    "message": "no catalog action answers this code and the catalog has no fallback",
                },
            }));
            continue;
        };
        let guard = guard_issues(a, &eff.guard);
        let base = json!({
            "code": s.code,
            "detail": s.detail,
            "actionId": a.id,
            "risk": a.risk,
            "tier": a.tier,
        });
        let needs_approval = approval_required(a.risk, a.tier, p.approval_risk_threshold);
        let key = req
            .cycle_id
            .as_ref()
            .and_then(|cy| IdemKey::parse(&format!("signal:{cy}:{}", a.id)).ok());
        let new = NewRun {
            host_id: host.clone(),
            action_key: a.id.clone(),
            // A guard-blocked action is refused by the gate below and never
            // queued.
            params: guard.clone().unwrap_or_default(),
            requested_by: who.name.clone(),
            idempotency_key: key,
            max_attempts: p.max_retry_attempts,
            expires_at: Some(now + ttl),
            idempotent: a.idempotent,
            approval_required: needs_approval,
            canary: remediate_spool::Canary {
                percent: canary_percent(a.tier, p),
                bucket: canary_bucket(host.as_str(), &a.id),
                selected: canary_selected(host.as_str(), &a.id, a.tier, p),
                checks: a.canary_checks.len() as u32,
                passed: None,
            },
            rollback: remediate_spool::Rollback {
                armed: p.auto_rollback && !a.rollback.is_empty(),
                attempted: false,
                succeeded: None,
            },
            auto_queued: true,
            auto_reason: Some(s.code.clone()),
            auto_tier: Some(word(a.tier)),
            risk: Some(word(a.risk)),
            tier: Some(word(a.tier)),
        };
        // The gates and the enqueue are one store step (see the execute
        // route): the facts are read again for each signal, so later
        // signals see the runs earlier ones queued.
        let (policy, host_id, action_id) = (p.clone(), host.to_string(), a.id.clone());
        let (tier, has_canary_checks) = (a.tier, !a.canary_checks.is_empty());
        let guard_blocked = guard.is_err();
        let cycle = queued_this_cycle;
        let check: EnqueueCheck = Box::new(move |f: &GateFacts| {
            let gate = GateInput {
                policy: &policy,
                host_id: &host_id,
                action_id: &action_id,
                tier,
                has_canary_checks,
                queued_this_cycle: cycle,
                queued_last_hour: f.requests_after(hour_ago, true),
                host_backlog: u32::try_from(f.host_backlog).unwrap_or(u32::MAX),
                global_backlog: u32::try_from(f.global_backlog).unwrap_or(u32::MAX),
                // Any run of the action, an operator's or the planner's,
                // starts its cooldown when it is requested.
                since_last_execute: f.since_last_request(&action_id, now),
                active_run: f.active_run.is_some(),
                guard_blocked,
            };
            autonomous_gate(&gate).map_err(|reason| Box::new(reason) as Refusal)
        });
        let enq = match st.store.enqueue_checked(new, window, check).await? {
            Checked::Enqueued(enq) => enq,
            Checked::Refused(r) => {
                let reason = match r.downcast::<SkipReason>() {
                    Ok(reason) => *reason,
                    Err(_) => return Err(ApiError::internal()),
                };
                let mut sk = skip(&reason);
                if let (SkipReason::GuardBlocked, Err(Value::Object(issues)), Value::Object(m)) =
                    (&reason, guard, &mut sk)
                {
                    m.extend(issues);
                }
                results.push(merge(base, json!({ "queued": false, "skip": sk })));
                continue;
            }
        };
        queued_this_cycle += 1;
        if enq.created {
            st.metrics
                .enqueues
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !needs_approval {
                ready += 1;
            }
        }
        queued_ids.push(enq.record.run_id.to_string());
        results.push(merge(
            base,
            json!({
                "queued": true,
                "created": enq.created,
                "approvalRequired": needs_approval,
                "run": Item::new(&enq.record, false),
            }),
        ));
    }
    let auto_drain = p.queue_autodrain;
    let drain_triggered = auto_drain && ready > 0;
    if drain_triggered {
        st.store.request_drain(&host, ready).await?;
    }
    let codes: Vec<&str> = req.signals.iter().map(|s| s.code.as_str()).collect();
    audit(
        &st,
        &ctx,
        &who,
        "signals",
        queued_ids.first().map(String::as_str),
        json!({
            "hostId": host,
            "cycleId": req.cycle_id,
            "signals": codes,
            "queued": queued_ids,
            "skipped": results.len() - queued_ids.len(),
        }),
    )
    .await?;
    Ok(Json(json!({
        "ok": true,
        "hostId": host,
        "cycleId": req.cycle_id,
        "profile": eff.profile,
        "autonomousEnabled": p.autonomous_enabled,
        "queuedCount": queued_ids.len(),
        "skippedCount": results.len() - queued_ids.len(),
        "results": results,
        "queue": { "autoDrain": auto_drain, "drainTriggered": drain_triggered },
    })))
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(m), Value::Object(extra)) = (&mut a, b) {
        m.extend(extra);
    }
    a
}
