//! Liveness and Prometheus metrics.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use remediate_spool::Bucket;
use serde_json::json;

use crate::auth::Need;
use crate::error::ApiResult;
use crate::{Ctx, SharedState};

/// The only endpoint that answers without credentials.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "ok": true, "service": "vps-remediate" }))
}

/// Prometheus text: runs by state and host, enqueues through this process.
pub async fn metrics(State(st): State<SharedState>, ctx: Ctx) -> ApiResult<impl IntoResponse> {
    ctx.auth(&st, Need::VIEWER)?;
    let mut out = String::new();
    out.push_str(
        "# HELP remediate_runs Runs in the store by host and state.\n# TYPE remediate_runs gauge\n",
    );
    for host in st.store.hosts().await? {
        let c = st.store.counts(Some(host.clone())).await?;
        for b in Bucket::ALL {
            let name = serde_json::to_value(b)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "remediate_runs{{host=\"{host}\",state=\"{name}\"}} {}",
                c.get(b)
            );
        }
    }
    out.push_str("# HELP remediate_enqueues_total Runs enqueued through this process.\n# TYPE remediate_enqueues_total counter\n");
    let _ = writeln!(
        out,
        "remediate_enqueues_total {}",
        st.metrics.enqueues.load(Ordering::Relaxed)
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
