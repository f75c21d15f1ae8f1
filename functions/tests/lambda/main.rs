//! The Lambda entry: API Gateway HTTP API (payload 2.0) and function URL
//! events through `lambda::invoke` give the same answers as the same
//! requests to the real router on a loopback socket; and the real
//! `remediate-api` binary answers an invocation from an in-test Lambda
//! runtime API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;
mod harness;
mod runtime;
