//! The real `remediate-api` binary under a Lambda runtime API served by
//! this test: it takes one invocation (a function URL event), answers it
//! through the router, and the answer comes back to the runtime API.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{SESSION_KEY, VIEWER, fixtures_dir, tokens_toml};

const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

/// What the function sent back: a response, or an error report.
#[derive(Debug)]
enum Outcome {
    Response(String, Value),
    InvocationError(String, String),
    InitError(String),
}

#[derive(Clone)]
struct RuntimeApi {
    /// The one event to hand out; later polls wait forever, as Lambda's do
    /// when no request comes.
    event: Arc<Mutex<Option<Vec<u8>>>>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

async fn next(State(rt): State<RuntimeApi>) -> (HeaderMap, Vec<u8>) {
    let event = rt.event.lock().unwrap().take();
    let Some(event) = event else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let mut h = HeaderMap::new();
    h.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static(REQUEST_ID),
    );
    h.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    h.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:remediate-api"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static(
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
        ),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    (h, event)
}

async fn response(State(rt): State<RuntimeApi>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = rt.outcomes.send(Outcome::Response(id, v));
    StatusCode::ACCEPTED
}

async fn invocation_error(
    State(rt): State<RuntimeApi>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let _ = rt.outcomes.send(Outcome::InvocationError(
        id,
        String::from_utf8_lossy(&body).into(),
    ));
    StatusCode::ACCEPTED
}

async fn init_error(State(rt): State<RuntimeApi>, body: Bytes) -> StatusCode {
    let _ = rt
        .outcomes
        .send(Outcome::InitError(String::from_utf8_lossy(&body).into()));
    StatusCode::ACCEPTED
}

#[tokio::test]
async fn the_binary_answers_an_invocation_from_the_runtime_api() {
    // The event: a function URL request for the queue snapshot with a query
    // string, by a viewer token from the token file under the task root.
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("function-url/snapshot-query.json")).unwrap(),
    )
    .unwrap();
    let headers = event["headers"].as_object_mut().unwrap();
    headers.remove("x-remediate-queue-token");
    headers.insert("authorization".into(), json!(format!("Bearer {VIEWER}")));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let rt = RuntimeApi {
        event: Arc::new(Mutex::new(Some(event.to_string().into_bytes()))),
        outcomes: tx,
    };
    let api = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(rt);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });

    // The task root holds the token file at the configured relative path;
    // the spool lives under a temp dir (/tmp under Lambda).
    let task_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(task_root.path().join("var")).unwrap();
    std::fs::write(task_root.path().join("var/tokens.toml"), tokens_toml()).unwrap();
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let stderr_path = work.path().join("stderr.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_remediate-api"))
        .current_dir(work.path())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "remediate-api")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("LAMBDA_TASK_ROOT", task_root.path())
        .env("VPS_REMEDIATE_SESSION_KEY", SESSION_KEY)
        .env("VPS_REMEDIATE_SPOOL_DIR", work.path().join("spool"))
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env("VPS_REMEDIATE_STORE", "local")
        .env_remove("VPS_REMEDIATE_TOKENS_FILE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let outcome = tokio::select! {
        o = rx.recv() => o,
        status = child.wait() => {
            panic!(
                "remediate-api exited ({status:?}) before answering:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        }
    };
    child.kill().await.unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match outcome {
        Some(Outcome::Response(id, resp)) => {
            assert_eq!(id, REQUEST_ID);
            assert_eq!(resp["statusCode"], 200, "{resp}\n{stderr}");
            let body: Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["ok"], true, "{body}");
            assert_eq!(body["authMode"], "bearer", "{body}");
            assert!(body["snapshot"]["counts"].is_object(), "{body}");
        }
        Some(Outcome::InvocationError(id, body)) => {
            panic!("invocation {id} failed: {body}\n{stderr}")
        }
        Some(Outcome::InitError(body)) => panic!("init failed: {body}\n{stderr}"),
        None => panic!("the runtime API stopped\n{stderr}"),
    }
    // The spool was created where it was told to be, and nothing was
    // written into the task root.
    assert!(work.path().join("spool").is_dir(), "{stderr}");
    let mut written: Vec<_> = walk(task_root.path());
    written.sort();
    assert_eq!(written, vec![task_root.path().join("var/tokens.toml")]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Starts the binary as Lambda would, with a runtime API nobody answers
/// on, and returns its exit status and stderr: every case here must fail
/// at startup, before it polls for an invocation.
fn start_failure(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let task_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(task_root.path().join("var")).unwrap();
    std::fs::write(task_root.path().join("var/tokens.toml"), tokens_toml()).unwrap();
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remediate-api"))
        .current_dir(work.path())
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("AWS_LAMBDA_FUNCTION_NAME", "remediate-api")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("LAMBDA_TASK_ROOT", task_root.path())
        .env("VPS_REMEDIATE_SPOOL_DIR", work.path().join("spool"))
        .env("VPS_REMEDIATE_CATALOG", "demo")
        .env_remove("VPS_REMEDIATE_SESSION_KEY")
        .env_remove("VPS_REMEDIATE_STORE")
        .env_remove("VPS_REMEDIATE_S3_BUCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn under_lambda_the_session_key_must_be_configured() {
    let (status, stderr) = start_failure(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains("VPS_REMEDIATE_SESSION_KEY is required under Lambda"),
        "{stderr}"
    );
    let (status, stderr) = start_failure(&[("VPS_REMEDIATE_SESSION_KEY", "too-short")]);
    assert!(!status.success());
    assert!(
        stderr.contains("config error: VPS_REMEDIATE_SESSION_KEY=<redacted>: too short"),
        "{stderr}"
    );
    assert!(!stderr.contains("too-short\""), "the key leaked: {stderr}");
}

#[test]
fn under_lambda_the_aws_store_needs_a_bucket_and_the_aws_build() {
    let (status, stderr) = start_failure(&[
        ("VPS_REMEDIATE_SESSION_KEY", SESSION_KEY),
        ("VPS_REMEDIATE_STORE", "aws"),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains(
            "config error: VPS_REMEDIATE_S3_BUCKET=(unset): required when VPS_REMEDIATE_STORE=aws"
        ),
        "{stderr}"
    );
    #[cfg(not(feature = "aws"))]
    {
        let (status, stderr) = start_failure(&[
            ("VPS_REMEDIATE_SESSION_KEY", SESSION_KEY),
            ("VPS_REMEDIATE_STORE", "aws"),
            ("VPS_REMEDIATE_S3_BUCKET", "runs-bucket"),
        ]);
        assert!(!status.success());
        assert!(
            stderr.contains("this binary was built without AWS support (feature aws)"),
            "{stderr}"
        );
    }
}

#[test]
fn under_lambda_a_local_spool_must_be_under_tmp() {
    let (status, stderr) = start_failure(&[
        ("VPS_REMEDIATE_SESSION_KEY", SESSION_KEY),
        ("VPS_REMEDIATE_SPOOL_DIR", "/var/lib/vps-remediate"),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("under Lambda only /tmp is writable"),
        "{stderr}"
    );
}
