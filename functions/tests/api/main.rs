//! Tests of the HTTP API: handlers through `app(..).oneshot(..)`, the
//! authorisation matrix, and the real server process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;
mod handlers;
mod matrix;
mod openapi;
mod remediate;
mod runbook;
mod server;
mod signals;
mod util;
