//! Log in with an API token to get the admin session cookie; log out.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuthMode, Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::{Ctx, SharedState, audit, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    token: String,
}

pub async fn login(State(st): State<SharedState>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let req: Login = parse_json(&body)?;
    let t = st
        .auth
        .token(req.token.trim())
        .ok_or_else(|| ApiError::unauthorized("unknown API token"))?
        .clone();
    if t.role < Role::Admin {
        return Err(ApiError::forbidden(
            "the operator console needs an admin token",
        ));
    }
    let who = Principal {
        name: t.name.clone(),
        role: t.role,
        hosts: t.hosts.clone(),
        mode: AuthMode::Bearer,
    };
    audit(&st, &ctx, &who, "login", None, json!({})).await?;
    let cookie = st
        .auth
        .set_cookie(&st.auth.session_for(&t, chrono::Utc::now()));
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "ok": true, "name": t.name, "role": t.role })),
    )
        .into_response())
}

pub async fn logout(State(st): State<SharedState>) -> Response {
    (
        StatusCode::OK,
        [(header::SET_COOKIE, st.auth.clear_cookie())],
        Json(json!({ "ok": true })),
    )
        .into_response()
}
