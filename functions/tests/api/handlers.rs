//! Handler behaviour through `oneshot`: answers, errors, and that a failed
//! request changes nothing.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use remediate_spool::*;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn health_needs_no_credentials_and_nothing_else_does() {
    let api = Api::new();
    let (s, v) = api
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, v["ok"].clone()), (StatusCode::OK, json!(true)));
    let (s, v) = api
        .send(
            Request::get("/api/ops/remediate-queue")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "unauthorized");
}

#[tokio::test]
async fn snapshot_counts_items_limit_and_dlq_filter() {
    let api = Api::new();
    for _ in 0..3 {
        api.queued("host-a");
    }
    let held = api.held("host-a");
    let dead = api.dead("host-b");
    let (s, v) = api.get("/api/ops/remediate-queue?limit=30", OPS).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["authMode"], "bearer");
    let c = &v["snapshot"]["counts"];
    assert_eq!(
        (
            c["queued"].as_u64(),
            c["approvalPending"].as_u64(),
            c["dlq"].as_u64()
        ),
        (Some(3), Some(1), Some(1))
    );
    assert_eq!(c["failed"], c["dlq"]);
    let items = v["snapshot"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let h = items.iter().find(|i| i["runId"] == held.as_str()).unwrap();
    assert_eq!(
        (h["state"].as_str(), h["approvalStatus"].as_str()),
        (Some("approval-pending"), Some("pending"))
    );
    for f in [
        "runId",
        "hostId",
        "actionKey",
        "state",
        "attempts",
        "maxAttempts",
        "nextAttemptAt",
        "dlq",
        "error",
        "approvalStatus",
        "canaryPassed",
        "rollbackAttempted",
        "rollbackSucceeded",
        "autoQueued",
    ] {
        assert!(h.get(f).is_some(), "item field {f} missing: {h}");
    }
    let (_, v) = api
        .get(
            "/api/ops/remediate-queue?limit=30&dlq=1",
            "not-the-queue-token",
        )
        .await;
    assert_eq!(v["code"], "unauthorized");
    let (s, v) = api
        .send(
            Request::get("/api/ops/remediate-queue?limit=30&dlq=1")
                .header("x-remediate-queue-token", QUEUE)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["authMode"], "queue-token");
    let items = v["snapshot"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["runId"], dead.as_str());
    assert_eq!(items[0]["state"], "failed");
    assert_eq!(items[0]["dlqReason"], "max_attempts_exceeded");
    // limit is clamped like the original: 0 -> 1, 500 -> 100; junk is a 400.
    let (_, v) = api.get("/api/ops/remediate-queue?limit=0", OPS).await;
    assert_eq!(v["snapshot"]["limit"], 1);
    let (_, v) = api.get("/api/ops/remediate-queue?limit=500", OPS).await;
    assert_eq!(v["snapshot"]["limit"], 100);
    let (s, v) = api.get("/api/ops/remediate-queue?limit=ten", OPS).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
}

#[tokio::test]
async fn approve_then_second_approve_is_409_and_reject_ends_the_run() {
    let api = Api::new();
    let id = api.held("host-a");
    let body = json!({"runId": id.as_str(), "mode": "approve", "reason": "validated in canary"});
    let (s, v) = api
        .post("/api/ops/remediate-queue", OPS, body.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["result"],
        json!({"ok": true, "runId": id.as_str(), "state": "queued", "approvalStatus": "approved"})
    );
    let (s, v) = api.post("/api/ops/remediate-queue", OPS, body).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_pending"))
    );
    let id2 = api.held("host-a");
    let (s, v) = api
        .post("/api/ops/remediate-queue", OPS, json!({"runId": id2.as_str(), "mode": "reject", "reason": "manual intervention required"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["result"]["state"], "rejected");
    assert_eq!(
        api.spool.get_blocking(&id2).unwrap().unwrap().state,
        RunState::Rejected
    );
    // Audited once each.
    let audit_dir = api.spool.root().join("audit");
    let text: String = std::fs::read_dir(audit_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        text.lines().filter(|l| l.contains("\"approve\"")).count(),
        1
    );
    assert_eq!(text.lines().filter(|l| l.contains("\"reject\"")).count(), 1);
}

#[tokio::test]
async fn bad_approval_requests_are_clear_errors_and_change_nothing() {
    let api = Api::new();
    let id = api.held("host-a");
    let cases = [
        (
            json!({"runId": id.as_str(), "mode": "approved"}),
            StatusCode::BAD_REQUEST,
            "invalid_mode",
        ),
        (
            json!({"runId": id.as_str(), "mode": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_mode",
        ),
        (
            json!({"runId": id.as_str(), "mode": "approve", "reason": "x".repeat(281)}),
            StatusCode::BAD_REQUEST,
            "reason_too_long",
        ),
        (
            json!({"runId": 5, "mode": "approve"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"mode": "approve"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"runId": "../../etc/passwd", "mode": "approve"}),
            StatusCode::BAD_REQUEST,
            "invalid_run_id",
        ),
        (
            json!({"runId": "r-unknown", "mode": "approve"}),
            StatusCode::NOT_FOUND,
            "run_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = api
            .post("/api/ops/remediate-queue", OPS, body.clone())
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (s, v) = api
        .send(
            Request::post("/api/ops/remediate-queue")
                .header("authorization", format!("Bearer {OPS}"))
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let big = format!(
        "{{\"runId\":\"{}\",\"mode\":\"approve\",\"reason\":\"{}\"}}",
        id,
        "x".repeat(70_000)
    );
    let (s, _) = api
        .send(
            Request::post("/api/ops/remediate-queue")
                .header("authorization", format!("Bearer {OPS}"))
                .body(Body::from(big))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let r = api.spool.get_blocking(&id).unwrap().unwrap();
    assert_eq!(
        (r.state, r.approval.status),
        (RunState::Held, ApprovalStatus::Pending)
    );
}

#[tokio::test]
async fn replay_single_and_dlq_batch() {
    let api = Api::new();
    let a = api.dead("host-a");
    let b = api.dead("host-a");
    let c = api.dead("host-a");
    let (s, v) = api
        .post(
            "/api/ops/remediate-replay",
            OPS,
            json!({"mode": "single", "runId": a.as_str()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["replayed"]["replayOfRunId"], a.as_str());
    assert_eq!(v["replayed"]["state"], "queued");
    let (s, v) = api
        .post(
            "/api/ops/remediate-replay",
            OPS,
            json!({"mode": "single", "runId": a.as_str()}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a replayed source may be replayed again: {v}"
    );
    let queued = api.queued("host-a");
    let (s, v) = api
        .post(
            "/api/ops/remediate-replay",
            OPS,
            json!({"mode": "single", "runId": queued.as_str()}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_replayable"))
    );
    let (s, v) = api
        .post(
            "/api/ops/remediate-replay",
            OPS,
            json!({"mode": "dlq-batch", "limit": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["summary"]["replayed"], 1);
    assert_eq!(
        v["summary"]["items"][0]["sourceRunId"],
        b.as_str(),
        "oldest first"
    );
    let (_, v) = api
        .post(
            "/api/ops/remediate-replay",
            OPS,
            json!({"mode": "dlq-batch", "limit": 99}),
        )
        .await;
    assert_eq!(v["summary"]["limit"], 50);
    assert_eq!(v["summary"]["items"][0]["sourceRunId"], c.as_str());
    let (s, v) = api
        .post("/api/ops/remediate-replay", OPS, json!({"mode": "all"}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_mode"))
    );
}

#[tokio::test]
async fn drain_without_an_executor_reports_runs_as_they_are() {
    let api = Api::new();
    let id = api.queued("host-a");
    let (s, v) = api
        .post("/api/ops/remediate-drain", OPS, json!({"limit": 5}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["drained"][0]["runId"], id.as_str());
    assert_eq!(v["drained"][0]["finished"], false);
    assert_eq!(v["drained"][0]["state"], "queued");
}

#[tokio::test]
async fn drain_reports_outcomes_an_executor_produced() {
    let api = Api::with_wait(std::time::Duration::from_secs(10));
    let id = api.queued("host-a");
    // A stand-in executor: takes the drain request, runs the run.
    let sp = api.spool.clone();
    let worker = std::thread::spawn(move || {
        let h = HostId::parse("host-a").unwrap();
        for _ in 0..2000 {
            if sp.take_drain_requests(&h).unwrap().is_some() {
                let c = sp.claim_next_blocking(&h, &|_| false).unwrap().unwrap();
                sp.start_attempt_blocking(&c.run_id).unwrap();
                sp.complete_blocking(
                    &c.run_id,
                    AttemptResult {
                        exit_status: Some(0),
                        ..Default::default()
                    },
                )
                .unwrap();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    let (s, v) = api.post("/api/ops/remediate-drain", QUEUE, json!({})).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the queue token is a header, not a bearer token: {v}"
    );
    let (s, v) = api
        .send(
            Request::post("/api/ops/remediate-drain")
                .header("x-remediate-queue-token", QUEUE)
                .header("content-type", "application/json")
                .body(Body::from("{\"limit\":5}"))
                .unwrap(),
        )
        .await;
    worker.join().unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["authMode"], "queue-token");
    assert_eq!(v["drained"][0]["runId"], id.as_str());
    assert_eq!(v["drained"][0]["state"], "succeeded");
    assert_eq!(v["drained"][0]["finished"], true);
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_that_works_same_origin_only() {
    let api = Api::new();
    let id = api.held("host-a");
    let login = |tok: &str| {
        Request::post("/api/auth/login")
            .header("content-type", "application/json")
            .body(Body::from(json!({"token": tok}).to_string()))
            .unwrap()
    };
    let (s, _) = api.send(login(OPS)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "console needs admin");
    let (s, _) = api.send(login("nope")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let resp =
        tower::ServiceExt::oneshot(remediate_functions::app(api.state.clone()), login(ADMIN))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let value = cookie.split(';').next().unwrap().to_string();
    let approve = |origin: Option<&str>, ct: &str| {
        let mut b = Request::post("/api/ops/remediate-queue")
            .header("cookie", &value)
            .header("host", "127.0.0.1:3035")
            .header("content-type", ct);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(Body::from(
            json!({"runId": id.as_str(), "mode": "approve"}).to_string(),
        ))
        .unwrap()
    };
    let (s, _) = api.send(approve(None, "application/json")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no Origin");
    let (s, _) = api
        .send(approve(Some("https://evil.example"), "application/json"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "cross-origin");
    let (s, _) = api
        .send(approve(Some("http://127.0.0.1:3035"), "text/plain"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "form-like body");
    assert_eq!(
        api.spool.get_blocking(&id).unwrap().unwrap().state,
        RunState::Held
    );
    let (s, v) = api
        .send(approve(Some("http://127.0.0.1:3035"), "application/json"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = api
        .send(
            Request::post("/api/auth/logout")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_and_host_headers_grant_nothing() {
    let api = Api::new();
    let (s, _) = api
        .send(
            Request::get("/api/ops/remediate-queue")
                .header("x-forwarded-for", "127.0.0.1")
                .header("host", "localhost")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn hygiene_drains_replays_and_reports_before_and_after() {
    let api = Api::new();
    api.dead("host-a");
    api.queued("host-a");
    let (s, v) = api
        .post(
            "/api/ops/remediate-hygiene",
            OPS,
            json!({"drainLimit": 30, "replayLimit": 15}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["before"]["dlq"], 1);
    assert_eq!(v["replay"]["replayed"], 1);
    assert_eq!(v["after"]["dlq"], 0);
    assert_eq!(
        v["after"]["queued"], 2,
        "the replay and the queued run wait for an executor"
    );
    assert_eq!(v["drain"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn incident_workflow_steps() {
    let api = Api::new();
    let (s, v) = api.get("/api/ops/incident-workflow", OPS).await;
    assert_eq!(s, StatusCode::OK);
    let steps: Vec<_> = v["workflows"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        steps,
        [
            "status-snapshot",
            "drain-queue",
            "replay-dlq",
            "notify-test",
            "manual-validate"
        ]
    );
    api.dead("host-a");
    let step = |id: &str, payload: serde_json::Value| json!({"workflowId": "critical-triage", "stepId": id, "payload": payload});
    let (s, v) = api
        .post(
            "/api/ops/incident-workflow",
            OPS,
            step("status-snapshot", json!({})),
        )
        .await;
    assert_eq!(
        (s, v["result"]["counts"]["dlq"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (s, v) = api
        .post(
            "/api/ops/incident-workflow",
            OPS,
            step("replay-dlq", json!({"limit": 3})),
        )
        .await;
    assert_eq!(
        (s, v["result"]["replayed"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (s, v) = api
        .post(
            "/api/ops/incident-workflow",
            OPS,
            step("notify-test", json!({})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("notify_not_configured")
        )
    );
    let (s, v) = api
        .post(
            "/api/ops/incident-workflow",
            OPS,
            step("manual-validate", json!({"note": "ssh ok"})),
        )
        .await;
    assert_eq!(
        (s, v["result"]["validatedBy"].as_str()),
        (StatusCode::OK, Some("ops"))
    );
    let (s, v) = api
        .post("/api/ops/incident-workflow", OPS, step("reboot", json!({})))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("step_not_found"))
    );
    let (s, v) = api
        .post(
            "/api/ops/incident-workflow",
            OPS,
            json!({"workflowId": "nope", "stepId": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("workflow_not_found"))
    );
    let (s, _) = api
        .post(
            "/api/ops/incident-workflow",
            VIEWER,
            step("status-snapshot", json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn notify_test_delivers_to_a_webhook_and_retries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The first delivery gets a 503, the second a 204.
    let hook = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for status in ["503 Service Unavailable", "204 No Content"] {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap();
            bodies.push(String::from_utf8_lossy(&buf[..n]).to_string());
            s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
        }
        bodies
    });
    let mut api = Api::new();
    std::sync::Arc::get_mut(&mut api.state).unwrap().notify_url =
        Some(format!("http://{addr}/hook"));
    let (s, v) = api
        .post(
            "/api/notify/test",
            OPS,
            json!({"target": "webhook", "kind": "test", "title": "hello", "detail": "d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"]["delivered"], true);
    let attempts = v["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            attempts[0]["status"].as_u64(),
            attempts[1]["status"].as_u64()
        ),
        (Some(503), Some(204))
    );
    let bodies = hook.await.unwrap();
    assert!(bodies[1].starts_with("POST /hook HTTP/1.1"));
    assert!(bodies[1].contains("\"title\":\"hello\""));
    let (s, v) = api
        .post("/api/notify/test", OPS, json!({"target": "pager"}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_target"))
    );
}
