//! `POST /api/notify/test` (`{target, kind, title, detail}`): sends a test
//! notification to the configured webhook and reports each delivery attempt.
//! Webhooks are plain `http://` URLs (a relay on the host or in the VPC);
//! delivery is retried with backoff, three attempts at most.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{Need, Principal};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, Ctx, SharedState, audit, parse_json};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NotifyTest {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

pub async fn test(State(st): State<SharedState>, ctx: Ctx, body: Bytes) -> ApiResult<Json<Value>> {
    let who = ctx.auth(&st, Need::OPS)?;
    let req: NotifyTest = parse_json(&body)?;
    let payload =
        json!({ "target": req.target, "kind": req.kind, "title": req.title, "detail": req.detail });
    let result = deliver(&st, &who, &payload).await?;
    audit(
        &st,
        &ctx,
        &who,
        "notify-test",
        None,
        json!({ "delivered": result["delivered"] }),
    )
    .await?;
    Ok(Json(json!({ "ok": true, "result": result })))
}

/// Sends one test notification; the answer lists every attempt.
pub async fn deliver(st: &AppState, who: &Principal, payload: &Value) -> ApiResult<Value> {
    let target = payload
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("webhook");
    if target != "webhook" {
        return Err(ApiError::bad_request(
            "unknown_target",
            format!("notification target {target:?} is not known; use \"webhook\""),
        ));
    }
    let Some(url) = st.notify_url.as_deref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "notify_not_configured",
            "no webhook is configured: set VPS_REMEDIATE_NOTIFY_WEBHOOK_URL",
        ));
    };
    let field = |k: &str, d: &str| {
        payload
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or(d)
            .to_string()
    };
    let body = json!({
        "kind": field("kind", "test"),
        "title": field("title", "vps-remediate test notification"),
        "detail": field("detail", ""),
        "requestedBy": who.name,
        "at": chrono::Utc::now(),
    });
    let mut attempts = Vec::new();
    let mut delay = Duration::from_millis(200);
    let mut delivered = false;
    for n in 1..=3 {
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(5), post_json(url, &body)).await;
        let (ok, status, error) = match res {
            Ok(Ok(code)) => ((200..300).contains(&code), Some(code), None),
            Ok(Err(e)) => (false, None, Some(e)),
            Err(_) => (false, None, Some("timed out after 5 s".to_string())),
        };
        attempts.push(json!({ "attempt": n, "ok": ok, "status": status, "error": error, "ms": started.elapsed().as_millis() as u64 }));
        if ok {
            delivered = true;
            break;
        }
        if n < 3 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Ok(json!({ "target": "webhook", "delivered": delivered, "attempts": attempts }))
}

/// A minimal HTTP/1.1 POST for `http://host:port/path` URLs.
async fn post_json(url: &str, body: &Value) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// webhook URLs are supported".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: vps-remediate\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the webhook answered without an HTTP status".to_string())
}
