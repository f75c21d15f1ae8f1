//! Each event fixture goes through `lambda::invoke` on one state, and the
//! same request goes over a socket to the real router on another state
//! (same setup, same order): status, machine code, content type, cookies
//! and the shape of the JSON body must agree, and the status must be the
//! one this test expects.

use std::net::SocketAddr;
use std::path::Path;

use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use remediate_functions::{app, lambda};
use serde_json::{Value, json};

use crate::harness::{Side, fixtures_dir};

/// The fixtures in the order they run, with the status each must give.
const CASES: &[(&str, u16)] = &[
    ("health", 200),
    ("auth-refused", 401),
    ("forged-cookie", 401),
    ("put-host", 200),
    ("dry-run-base64", 200),
    ("enqueue", 200),
    ("snapshot-query", 200),
    ("approve", 200),
    ("unknown-run", 404),
    ("no-such-route", 404),
    ("bad-body", 400),
    ("login", 200),
];

const HELD: &str = "__HELD_RUN_ID__";

/// What a response is compared on.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    /// `code` of an error body, `ok` of any JSON body.
    code: Value,
    ok: Value,
    /// The JSON body with every scalar replaced by its type.
    shape: Value,
    /// Set-Cookie values with the cookie's value blanked (it is signed
    /// with the current time).
    cookies: Vec<String>,
    /// `snapshot.items` of a queue snapshot: how many.
    snapshot_items: Option<usize>,
}

fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

fn blank_cookie(c: &str) -> String {
    let (first, rest) = c.split_once(';').unwrap_or((c, ""));
    let name = first.split_once('=').map_or(first, |(n, _)| n);
    format!("{name}=<value>;{rest}")
}

fn answer(status: u16, content_type: Option<String>, body: &[u8], cookies: &[String]) -> Answer {
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(body)}))
    };
    Answer {
        status,
        content_type,
        code: json.get("code").cloned().unwrap_or(Value::Null),
        ok: json.get("ok").cloned().unwrap_or(Value::Null),
        shape: shape(&json),
        cookies: cookies.iter().map(|c| blank_cookie(c)).collect(),
        snapshot_items: json["snapshot"]["items"].as_array().map(Vec::len),
    }
}

fn load_event(kind: &str, name: &str, held: &str) -> Value {
    let path = fixtures_dir().join(kind).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();
    if let Some(body) = event["body"].as_str() {
        let body = body.replace(HELD, held);
        event["body"] = json!(body);
    }
    event
}

/// The Lambda side: the event through the Lambda entry.
async fn via_lambda(side: &Side, event: &Value) -> Answer {
    let resp = lambda::invoke(app(side.state.clone()), event.to_string().as_bytes())
        .await
        .unwrap();
    let status = resp["statusCode"].as_u64().unwrap() as u16;
    let body = match resp["body"].as_str() {
        None => Vec::new(),
        Some(b) if resp["isBase64Encoded"] == json!(true) => B64.decode(b).unwrap(),
        Some(b) => b.as_bytes().to_vec(),
    };
    let headers = resp["headers"].as_object().cloned().unwrap_or_default();
    assert!(
        !headers.contains_key("set-cookie"),
        "payload 2.0 answers carry cookies in `cookies`, not headers: {resp}"
    );
    let cookies: Vec<String> = resp["cookies"]
        .as_array()
        .map(|a| a.iter().map(|c| c.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let ct = headers
        .get("content-type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    answer(status, ct, &body, &cookies)
}

/// The local side: the same request over a socket to the real router.
async fn via_socket(addr: SocketAddr, event: &Value) -> Answer {
    let method = event["requestContext"]["http"]["method"].as_str().unwrap();
    let mut uri = format!("http://{addr}{}", event["rawPath"].as_str().unwrap());
    let qs = event["rawQueryString"].as_str().unwrap_or("");
    if !qs.is_empty() {
        uri = format!("{uri}?{qs}");
    }
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in event["headers"].as_object().unwrap() {
        if k != "host" && k != "content-length" {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
    }
    if let Some(c) = event["cookies"].as_array() {
        let joined: Vec<&str> = c.iter().map(|c| c.as_str().unwrap()).collect();
        req = req.header("cookie", joined.join("; "));
    }
    let body = match event["body"].as_str() {
        None => Vec::new(),
        Some(b) if event["isBase64Encoded"] == json!(true) => B64.decode(b).unwrap(),
        Some(b) => b.as_bytes().to_vec(),
    };
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    answer(status, ct, &body, &cookies)
}

async fn serve(side: &Side) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(side.state.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn compare(kind: &str) {
    let lambda_side = Side::new();
    let socket_side = Side::new();
    let held_lambda = lambda_side.held("host-a");
    let held_socket = socket_side.held("host-a");
    let addr = serve(&socket_side).await;
    for (name, expected) in CASES {
        let on_lambda =
            via_lambda(&lambda_side, &load_event(kind, name, held_lambda.as_str())).await;
        let on_socket = via_socket(addr, &load_event(kind, name, held_socket.as_str())).await;
        assert_eq!(
            on_lambda, on_socket,
            "{kind}/{name}: Lambda vs local server"
        );
        assert_eq!(on_lambda.status, *expected, "{kind}/{name}: {on_lambda:?}");
        if *name == "snapshot-query" {
            // Two runs exist (the execute's and the held one); the query
            // string's limit=1 must reach the handler.
            assert_eq!(on_lambda.snapshot_items, Some(1), "{kind}/{name}");
        }
        if *name == "login" {
            assert_eq!(on_lambda.cookies.len(), 1, "{kind}/{name}: {on_lambda:?}");
        }
    }
    // The states match too: one run queued by the execute, the held run
    // approved.
    for side in [&lambda_side, &socket_side] {
        let counts = side.spool.counts_blocking(None).unwrap();
        assert_eq!(counts.queued, 2, "{kind}: {counts:?}");
        assert_eq!(counts.held, 0, "{kind}: {counts:?}");
    }
}

#[test]
fn every_kind_has_the_same_fixtures() {
    let names = |kind: &str| {
        let mut v: Vec<String> = std::fs::read_dir(fixtures_dir().join(kind))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let v2 = names("apigw-v2");
    assert_eq!(v2, names("function-url"));
    assert!(v2.len() >= 8);
    let mut listed: Vec<String> = CASES.iter().map(|(n, _)| format!("{n}.json")).collect();
    listed.sort();
    assert_eq!(v2, listed, "every fixture runs in the comparison");
    assert!(Path::new(&fixtures_dir()).is_dir());
}

#[tokio::test]
async fn api_gateway_v2_events_answer_like_the_local_server() {
    compare("apigw-v2").await;
}

#[tokio::test]
async fn function_url_events_answer_like_the_local_server() {
    compare("function-url").await;
}

#[tokio::test]
async fn a_non_http_event_is_an_error_not_a_panic() {
    let side = Side::new();
    let err = lambda::invoke(app(side.state.clone()), br#"{"Records": []}"#)
        .await
        .expect_err("not an HTTP event");
    assert!(err.to_string().contains("not an API Gateway"), "{err}");
}
