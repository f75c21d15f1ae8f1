//! One place that turns errors into HTTP answers.
//!
//! Bad input is a 4xx with a stable machine `code` and a message a person can
//! act on, and is not logged as an error. Internal failures are a generic
//! 5xx, logged with the request's span; the answer never carries internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use remediate_spool::SpoolError;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body (e.g. `expected`, `issues`).
    pub extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to complete the request; nothing was acknowledged",
        )
    }
    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl From<SpoolError> for ApiError {
    fn from(e: SpoolError) -> Self {
        match &e {
            SpoolError::InvalidId { .. } | SpoolError::Invalid(_) => {
                ApiError::bad_request(e.code(), e.to_string())
            }
            SpoolError::NotFound { .. } => ApiError::not_found("run_not_found", e.to_string()),
            SpoolError::IllegalMove { state, .. } => {
                ApiError::conflict("illegal_state", e.to_string()).with(json!({ "state": state }))
            }
            SpoolError::Busy { .. } => ApiError::conflict("run_busy", e.to_string()),
            SpoolError::HostBusy { .. } => ApiError::conflict(e.code(), e.to_string()),
            SpoolError::Conflict { .. } => ApiError::conflict(e.code(), e.to_string()),
            SpoolError::NotClaimed { .. }
            | SpoolError::Corrupt { .. }
            | SpoolError::UnsafeDir { .. }
            | SpoolError::Io { .. }
            | SpoolError::Backend(_) => {
                tracing::error!(error = %e, code = e.code(), "store failure");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "ok": false, "error": self.message, "code": self.code });
        if let (Some(Value::Object(extra)), Value::Object(b)) = (self.extra, &mut body) {
            for (k, v) in extra {
                b.insert(k, v);
            }
        }
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
