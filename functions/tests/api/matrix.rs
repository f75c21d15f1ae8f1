//! The authorisation matrix: every route x every kind of credential gives
//! exactly the expected status.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use remediate_functions::auth::AuthConfig;
use serde_json::json;

use crate::util::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cred {
    None,
    WrongToken,
    ForgedCookie,
    ExpiredCookie,
    Viewer,
    Ops,
    Admin,
    AdminCookie,
    QueueToken,
    OtherHostToken,
}

const CREDS: [Cred; 10] = [
    Cred::None,
    Cred::WrongToken,
    Cred::ForgedCookie,
    Cred::ExpiredCookie,
    Cred::Viewer,
    Cred::Ops,
    Cred::Admin,
    Cred::AdminCookie,
    Cred::QueueToken,
    Cred::OtherHostToken,
];

fn cookie(expired: bool) -> String {
    let mut a: AuthConfig = auth();
    if expired {
        a.session_ttl = chrono::Duration::hours(-1);
    }
    let admin = tokens().into_iter().find(|t| t.name == "admin").unwrap();
    format!("vr_session={}", a.session_for(&admin, chrono::Utc::now()))
}

fn with_cred(mut b: axum::http::request::Builder, c: Cred) -> axum::http::request::Builder {
    b = b
        .header("host", "127.0.0.1:3035")
        .header("origin", "http://127.0.0.1:3035");
    match c {
        Cred::None => b,
        Cred::WrongToken => b.header("authorization", "Bearer not-a-token"),
        Cred::ForgedCookie => {
            let c = cookie(false);
            b.header("cookie", format!("{}x", &c[..c.len() - 1]))
        }
        Cred::ExpiredCookie => b.header("cookie", cookie(true)),
        Cred::Viewer => b.header("authorization", format!("Bearer {VIEWER}")),
        Cred::Ops => b.header("authorization", format!("Bearer {OPS}")),
        Cred::Admin => b.header("authorization", format!("Bearer {ADMIN}")),
        Cred::AdminCookie => b.header("cookie", cookie(false)),
        Cred::QueueToken => b.header("x-remediate-queue-token", QUEUE),
        Cred::OtherHostToken => b.header("authorization", format!("Bearer {OPS_B}")),
    }
}

use Cred::*;
const U: StatusCode = StatusCode::UNAUTHORIZED;
const F: StatusCode = StatusCode::FORBIDDEN;
const K: StatusCode = StatusCode::OK;

fn expect(route: &str, c: Cred) -> StatusCode {
    let unauth = matches!(c, None | WrongToken | ForgedCookie | ExpiredCookie);
    match route {
        "healthz" => K,
        _ if unauth => U,
        "metrics" => match c {
            QueueToken => F,
            _ => K,
        },
        "snapshot" => K,
        "approve" => match c {
            Viewer | QueueToken | OtherHostToken => F,
            _ => K,
        },
        "replay" => match c {
            Viewer | OtherHostToken => F,
            _ => K,
        },
        "drain" => match c {
            Viewer => F,
            _ => K,
        },
        "openapi" => match c {
            QueueToken => F,
            _ => K,
        },
        "signals" => match c {
            Viewer | QueueToken | OtherHostToken => F,
            _ => K,
        },
        "hygiene" | "workflows" => match c {
            Viewer | QueueToken => F,
            _ => K,
        },
        // One run of host-a: viewers read it; tokens of other hosts and the
        // queue token do not.
        "run" | "host-get" | "plan" => match c {
            QueueToken | OtherHostToken => F,
            _ => K,
        },
        "host-put" => match c {
            Admin | AdminCookie => K,
            _ => F,
        },
        "dry-run" => match c {
            Viewer | QueueToken | OtherHostToken => F,
            _ => K,
        },
        "workflow-step" => match c {
            Viewer | QueueToken => F,
            _ => K,
        },
        // Authorised, but no webhook is configured in this harness.
        "notify" => match c {
            Viewer | QueueToken => F,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        },
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_route_times_every_credential() {
    let api = Api::new();
    let mut failures = Vec::new();
    let (s, v) = api.put("/api/hosts/host-a", ADMIN, json!({})).await;
    assert_eq!(s, K, "{v}");
    let routes = [
        "healthz",
        "metrics",
        "openapi",
        "snapshot",
        "approve",
        "replay",
        "drain",
        "hygiene",
        "workflows",
        "notify",
        "signals",
        "run",
        "host-get",
        "host-put",
        "plan",
        "dry-run",
        "workflow-step",
    ];
    let mut cells = 0;
    for route in routes {
        for c in CREDS {
            let req = match route {
                "healthz" => with_cred(Request::get("/healthz"), c).body(Body::empty()),
                "metrics" => with_cred(Request::get("/metrics"), c).body(Body::empty()),
                "snapshot" => {
                    with_cred(Request::get("/api/ops/remediate-queue"), c).body(Body::empty())
                }
                "approve" => {
                    let id = api.held("host-a");
                    with_cred(Request::post("/api/ops/remediate-queue"), c)
                        .header("content-type", "application/json")
                        .body(Body::from(
                            json!({"runId": id.as_str(), "mode": "approve"}).to_string(),
                        ))
                }
                "replay" => {
                    let id = api.dead("host-a");
                    with_cred(Request::post("/api/ops/remediate-replay"), c)
                        .header("content-type", "application/json")
                        .body(Body::from(
                            json!({"mode": "single", "runId": id.as_str()}).to_string(),
                        ))
                }
                "drain" => with_cred(Request::post("/api/ops/remediate-drain"), c)
                    .header("content-type", "application/json")
                    .body(Body::from("{\"limit\":1}")),
                "hygiene" => with_cred(Request::post("/api/ops/remediate-hygiene"), c)
                    .header("content-type", "application/json")
                    .body(Body::from("{\"drainLimit\":1,\"replayLimit\":1}")),
                "workflows" => {
                    with_cred(Request::get("/api/ops/incident-workflow"), c).body(Body::empty())
                }
                "openapi" => with_cred(Request::get("/api/openapi.json"), c).body(Body::empty()),
                "signals" => with_cred(Request::post("/api/hosts/host-a/signals"), c)
                    .header("content-type", "application/json")
                    .body(Body::from("{\"signals\":[{\"code\":\"demo_disk\"}]}")),
                "notify" => with_cred(Request::post("/api/notify/test"), c)
                    .header("content-type", "application/json")
                    .body(Body::from("{}")),
                "run" => {
                    let id = api.queued("host-a");
                    with_cred(Request::get(format!("/api/ops/runs/{id}")), c).body(Body::empty())
                }
                "host-get" => with_cred(Request::get("/api/hosts/host-a"), c).body(Body::empty()),
                "host-put" => with_cred(Request::put("/api/hosts/host-a"), c)
                    .header("content-type", "application/json")
                    .body(Body::from("{}")),
                "plan" => with_cred(Request::post("/api/remediate"), c)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        json!({"mode": "plan", "hostId": "host-a"}).to_string(),
                    )),
                "dry-run" => with_cred(Request::post("/api/remediate"), c)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        json!({"mode": "dry-run", "hostId": "host-a", "actionId": "demo-disk-usage"})
                            .to_string(),
                    )),
                "workflow-step" => with_cred(Request::post("/api/ops/incident-workflow"), c)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        json!({"workflowId": "critical-triage", "stepId": "status-snapshot", "payload": {}})
                            .to_string(),
                    )),
                other => unreachable!("no request for route {other}"),
            }
            .unwrap();
            cells += 1;
            let (got, body) = api.send(req).await;
            let want = expect(route, c);
            if got != want {
                failures.push(format!(
                    "{route} with {c:?}: got {got}, want {want}: {body}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cells, routes.len() * CREDS.len());
}

#[tokio::test]
async fn a_host_limited_token_sees_only_its_hosts() {
    let api = Api::new();
    api.queued("host-a");
    let b = api.queued("host-b");
    let (_, v) = api.get("/api/ops/remediate-queue", OPS_B).await;
    let items = v["snapshot"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["runId"], b.as_str());
    assert_eq!(v["snapshot"]["counts"]["queued"], 1);
    let (_, v) = api
        .post("/api/ops/remediate-drain", OPS_B, json!({"limit": 50}))
        .await;
    let drained = v["drained"].as_array().unwrap();
    assert!(drained.iter().all(|d| d["hostId"] == "host-b"), "{v}");
}
