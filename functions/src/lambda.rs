//! The Lambda entry: the same router as the local server, behind
//! `lambda_http`. API Gateway HTTP API (payload 2.0), Lambda function URL,
//! API Gateway REST and ALB events are all understood; the answer is shaped
//! for the event's origin (for payload 2.0, `Set-Cookie` headers become the
//! `cookies` list).
//!
//! [`run`] serves invocations from the Lambda runtime API; [`invoke`] puts
//! one event through exactly the same adapter without a runtime, for tests
//! and tools.

use axum::Router;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use tower::ServiceExt;

/// Serve Lambda invocations with `router` until the runtime stops. Needs
/// the Lambda environment (`AWS_LAMBDA_RUNTIME_API` and the function's
/// name, memory size and version): check
/// [`crate::startup::under_lambda`] first.
pub async fn run(router: Router) -> anyhow::Result<()> {
    lambda_http::run(router)
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}

/// Why [`invoke`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The event is not an HTTP event of a service `lambda_http` knows.
    #[error("the event is not an API Gateway, function URL or ALB request: {0}")]
    Event(serde_json::Error),
    /// The response could not be written as JSON.
    #[error("the response could not be serialised: {0}")]
    Response(serde_json::Error),
}

/// Put one Lambda event (the JSON the runtime API hands the function)
/// through the router and return the response JSON the function would send
/// back (`statusCode`, `headers`, `body`, `isBase64Encoded`, `cookies`...).
pub async fn invoke(router: Router, event_json: &[u8]) -> Result<serde_json::Value, InvokeError> {
    let request: LambdaRequest = serde_json::from_slice(event_json).map_err(InvokeError::Event)?;
    let event = LambdaEvent::new(request, Context::default());
    let mut adapter = Adapter::from(router);
    let response = match adapter.ready().await {
        Ok(ready) => ready.call(event).await,
        Err(e) => Err(e),
    };
    // The router's error type is `Infallible`.
    let response = match response {
        Ok(r) => r,
        Err(never) => match never {},
    };
    serde_json::to_value(&response).map_err(InvokeError::Response)
}
