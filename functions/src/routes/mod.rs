//! Every endpoint, grouped by file.

use axum::Router;
use axum::routing::{get, post};

use crate::SharedState;

pub mod drain;
pub mod health;
pub mod hosts;
pub mod hygiene;
pub mod notify;
pub mod queue;
pub mod remediate;
pub mod replay;
pub mod runs;
pub mod session;
pub mod signals;
pub mod workflow;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/api/openapi.json", get(crate::openapi::serve))
        .route("/api/remediate", post(remediate::remediate))
        .route(
            "/api/hosts/{host_id}",
            get(hosts::get_host).put(hosts::put_host),
        )
        .route("/api/hosts/{host_id}/signals", post(signals::report))
        .route("/api/auth/login", post(session::login))
        .route("/api/auth/logout", post(session::logout))
        .route(
            "/api/ops/remediate-queue",
            get(queue::snapshot).post(queue::decide),
        )
        .route("/api/ops/runs/{run_id}", get(runs::get_run))
        .route("/api/ops/remediate-replay", post(replay::replay))
        .route("/api/ops/remediate-drain", post(drain::drain))
        .route("/api/ops/remediate-hygiene", post(hygiene::hygiene))
        .route(
            "/api/ops/incident-workflow",
            get(workflow::list).post(workflow::run_step),
        )
        .route("/api/notify/test", post(notify::test))
}

/// The seed's clamping of `limit`: absent -> default, else into [min, max].
pub fn clamp_limit(v: Option<i64>, default: i64, min: i64, max: i64) -> usize {
    v.unwrap_or(default).clamp(min, max) as usize
}
