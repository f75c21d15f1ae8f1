//! The HTTP handler functions of vps-remediate.
//!
//! One router ([`app`]) serves every endpoint; the local server
//! (`remediate-api serve`) and the Lambda entry point both call it, and
//! handler tests drive it with `oneshot` and no socket. Handlers are
//! stateless: every request reads and writes the [`Store`].
//!
//! Routes sit with their handlers in [`routes`], one file per endpoint group.
//! [`startup`] builds the state (store, keys, tokens) for both entry points;
//! [`server`] is the local server's thread-per-connection loop;
//! `lambda` (feature `lambda`) is the Lambda entry.

pub mod auth;
pub mod console;
pub mod error;
pub mod items;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use remediate_spool::Store;
use serde::de::DeserializeOwned;

use crate::auth::{AuthConfig, Need, Principal};
use crate::error::ApiError;

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Validated settings and profiles (figment layers).
    pub loaded: Arc<remediate_config::Loaded>,
    /// The action catalog.
    pub catalog: Arc<remediate_config::Catalog>,
    pub auth: AuthConfig,
    /// How long a drain waits for the executor's outcomes.
    pub drain_wait: Duration,
    /// The webhook for notifications (`http://` only), if configured.
    pub notify_url: Option<String>,
    pub metrics: Metrics,
    /// Effective policies by stored host document, built once per distinct
    /// document rather than per request.
    pub effective_cache: remediate_config::EffectiveCache,
}

impl AppState {
    /// The effective policy for a stored host document (validated).
    pub fn effective(
        &self,
        stored: &serde_json::Value,
    ) -> Result<Arc<remediate_config::Effective>, remediate_config::ConfigErrors> {
        self.effective_cache.get(&self.loaded, Some(stored))
    }
}

/// Counters kept by this process (the store holds the rest).
#[derive(Debug, Default)]
pub struct Metrics {
    pub enqueues: AtomicU64,
    pub requests: AtomicU64,
}

pub type SharedState = Arc<AppState>;

/// The router: every endpoint, one state.
pub fn app(state: SharedState) -> Router {
    routes::router()
        .merge(console::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Request facts a handler needs for auth and audit.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub method: Method,
    pub headers: HeaderMap,
    /// The peer address from the socket (absent under Lambda and in tests).
    pub peer: Option<SocketAddr>,
    pub path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Ctx {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            peer: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            path: parts.uri.path().to_string(),
        })
    }
}

impl Ctx {
    pub fn auth(&self, st: &AppState, need: Need) -> Result<Principal, ApiError> {
        auth::authenticate(
            &st.auth,
            &self.method,
            &self.headers,
            need,
            chrono::Utc::now(),
        )
    }
}

/// Parses a JSON body; a malformed body or a wrong type is a 400 that names
/// the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}" as &[u8]
    } else {
        body
    };
    // Most bodies are valid: parse them without tracking the path (which
    // copies every key it passes), and parse again with it only to name
    // the field of an error.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            )
        } else if path == "." || path.is_empty() {
            ApiError::bad_request("invalid_body", format!("invalid body: {inner}"))
        } else {
            ApiError::bad_request("invalid_field", format!("field `{path}`: {inner}"))
                .with(serde_json::json!({ "field": path }))
        }
    })
}

/// Writes one audit entry for a state change; an audit failure fails the
/// request (the change itself is already durable, and the 5xx says so).
pub async fn audit(
    st: &AppState,
    ctx: &Ctx,
    who: &Principal,
    what: &str,
    run_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let entry = audit_entry(ctx, who, what, run_id, &detail)?;
    st.store.audit(entry, true).await.map_err(ApiError::from)
}

/// One audit line: who (name and credential), from which peer, what, on
/// which path and run, and the details.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditEntry<'a> {
    at: chrono::DateTime<chrono::Utc>,
    who: &'a str,
    credential: &'static str,
    /// The socket's peer address, as `ip:port`.
    peer: Option<SocketAddr>,
    what: &'a str,
    path: &'a str,
    run_id: Option<&'a str>,
    detail: &'a serde_json::Value,
}

fn audit_entry(
    ctx: &Ctx,
    who: &Principal,
    what: &str,
    run_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<remediate_spool::AuditLine, ApiError> {
    let entry = AuditEntry {
        at: chrono::Utc::now(),
        who: &who.name,
        credential: who.mode.as_str(),
        peer: ctx.peer,
        what,
        path: &ctx.path,
        run_id,
        detail,
    };
    remediate_spool::AuditLine::of(&entry).map_err(ApiError::from)
}

/// The audit line of an enqueue. The run's own record, fsynced before the
/// answer, already holds who asked and when, so this line is appended
/// without an fsync of its own: the next durable append, or the kernel,
/// writes it back. It saves an fsync on the hottest write path.
pub async fn audit_enqueue(
    st: &AppState,
    ctx: &Ctx,
    who: &Principal,
    what: &str,
    run_id: &str,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let entry = audit_entry(ctx, who, what, Some(run_id), &detail)?;
    st.store.audit(entry, false).await.map_err(ApiError::from)
}
