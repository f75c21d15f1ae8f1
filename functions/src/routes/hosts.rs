//! `GET /api/hosts/{hostId}` (viewer): the host's stored policy document and
//! its effective policy, with the layer that set each value.
//! `PUT /api/hosts/{hostId}` (admin): replace the document
//! (`remediationPolicyProfile`, `remediationPolicyOverrides`,
//! `remediationGuardOverrides`, `enabled`); every invalid field is reported.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use remediate_config::{HostPolicyDoc, effective_policy};
use remediate_spool::HostId;
use serde_json::{Value, json};

use crate::auth::{Need, Principal};
use crate::error::{ApiError, ApiResult};
use crate::{Ctx, SharedState, audit, parse_json};

fn host_for(who: &Principal, raw: &str) -> ApiResult<HostId> {
    let host =
        HostId::parse(raw).map_err(|e| ApiError::bad_request("invalid_host_id", e.to_string()))?;
    if !who.may_touch(host.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not act on host {host}",
            who.name
        )));
    }
    Ok(host)
}

fn config_error(e: remediate_config::ConfigErrors) -> ApiError {
    let issues: Vec<Value> = e
        .errors()
        .iter()
        .map(|x| json!({ "code": x.code(), "message": x.to_string() }))
        .collect();
    ApiError::bad_request("invalid_host_policy", e.to_string()).with(json!({ "issues": issues }))
}

pub async fn get_host(
    State(st): State<SharedState>,
    ctx: Ctx,
    Path(host): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::VIEWER)?;
    let host = host_for(&who, &host)?;
    let stored = st.store.get_host_doc(&host).await?;
    let doc = match &stored {
        Some(v) => HostPolicyDoc::from_json(v).map_err(config_error)?,
        None => HostPolicyDoc::default(),
    };
    let effective = effective_policy(&st.loaded, &doc).map_err(config_error)?;
    Ok(Json(json!({
        "ok": true,
        "hostId": host,
        "registered": stored.is_some(),
        "raw": doc,
        "effective": effective,
    })))
}

pub async fn put_host(
    State(st): State<SharedState>,
    ctx: Ctx,
    Path(host): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::ADMIN)?;
    let host = host_for(&who, &host)?;
    let body: Value = parse_json(&body)?;
    let doc = HostPolicyDoc::from_json(&body).map_err(config_error)?;
    let effective = effective_policy(&st.loaded, &doc).map_err(config_error)?;
    let raw = serde_json::to_value(&doc).map_err(|_| ApiError::internal())?;
    st.store.put_host_doc(&host, raw.clone()).await?;
    audit(
        &st,
        &ctx,
        &who,
        "put-host",
        None,
        json!({ "hostId": host, "doc": raw }),
    )
    .await?;
    Ok(Json(
        json!({ "ok": true, "hostId": host, "registered": true, "raw": doc, "effective": effective }),
    ))
}
