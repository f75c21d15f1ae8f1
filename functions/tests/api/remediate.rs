//! `/api/remediate` (plan, dry-run, execute, drain-queue) and
//! `/api/hosts/{hostId}`.

use axum::http::StatusCode;
use remediate_spool::*;
use serde_json::json;

use crate::util::*;

async fn register(api: &Api, host: &str, doc: serde_json::Value) {
    let (s, v) = api.put(&format!("/api/hosts/{host}"), ADMIN, doc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

fn exec(host: &str, action: &str) -> serde_json::Value {
    json!({"mode": "execute", "hostId": host, "actionId": action, "confirmPhrase": format!("EXECUTE {action}")})
}

fn dry(host: &str, action: &str) -> serde_json::Value {
    json!({"mode": "dry-run", "hostId": host, "actionId": action})
}

#[tokio::test]
async fn hosts_put_get_and_validation() {
    let api = Api::new();
    let (s, v) = api.get("/api/hosts/host-a", VIEWER).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["registered"], false);
    assert_eq!(v["effective"]["policy"]["maxRetryAttempts"], 3);
    let doc = json!({"remediationPolicyProfile": "strict", "remediationPolicyOverrides": {"maxRetryAttempts": 4}, "enabled": true});
    for tok in [VIEWER, OPS] {
        let (s, _) = api.put("/api/hosts/host-a", tok, doc.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    register(&api, "host-a", doc).await;
    let (_, v) = api.get("/api/hosts/host-a", VIEWER).await;
    assert_eq!(v["registered"], true);
    assert_eq!(v["raw"]["remediationPolicyProfile"], "strict");
    let p = &v["effective"]["policy"];
    assert_eq!(
        (
            p["maxRetryAttempts"].as_u64(),
            p["maxQueuePerHost"].as_u64()
        ),
        (Some(4), Some(2)),
        "host override over strict profile"
    );
    let explain = v["effective"]["explain"].as_array().unwrap();
    let layer = |k: &str| {
        explain
            .iter()
            .find(|e| e["key"] == k)
            .map(|e| e["layer"].clone())
    };
    assert_eq!(layer("maxRetryAttempts"), Some(json!("host")));
    assert_eq!(layer("maxQueuePerHost"), Some(json!("profile")));
    let (s, v) = api
        .put("/api/hosts/host-a", ADMIN, json!({"remediationPolicyProfile": "fast", "remediationPolicyOverrides": {"maxRetryAttempts": 99}}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_host_policy")),
        "{v}"
    );
    assert!(
        v["issues"].as_array().unwrap().len() >= 2,
        "every problem reported: {v}"
    );
    let (_, v) = api.get("/api/hosts/host-a", VIEWER).await;
    assert_eq!(
        v["raw"]["remediationPolicyProfile"], "strict",
        "a bad PUT changes nothing"
    );
    let (s, _) = api.get("/api/hosts/host-a", OPS_B).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "host-limited token");
}

#[tokio::test]
async fn remediate_errors_of_the_original() {
    let api = Api::new();
    register(&api, "host-a", json!({})).await;
    let cases = [
        (
            json!({"mode": "plan"}),
            StatusCode::BAD_REQUEST,
            "host_id_required",
        ),
        (
            json!({"mode": "plan", "hostId": "nope"}),
            StatusCode::NOT_FOUND,
            "host_not_found",
        ),
        (
            json!({"mode": "dry-run", "hostId": "host-a", "actionId": "nope"}),
            StatusCode::NOT_FOUND,
            "action_not_found",
        ),
        (
            json!({"mode": "execute", "hostId": "host-a", "actionId": "demo-disk-usage", "confirmPhrase": "EXECUTE"}),
            StatusCode::BAD_REQUEST,
            "confirm_phrase_mismatch",
        ),
        (
            exec("host-a", "demo-disk-usage"),
            StatusCode::CONFLICT,
            "dry_run_missing",
        ),
        (
            json!({"mode": "dry-run", "hostId": "host-a", "actionId": "demo-approval", "params": {"port": 22}}),
            StatusCode::BAD_REQUEST,
            "invalid_params",
        ),
        (
            json!({"mode": "nuke", "hostId": "host-a"}),
            StatusCode::BAD_REQUEST,
            "invalid_mode",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = api.post("/api/remediate", OPS, body.clone()).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
    }
    let (_, v) = api.post("/api/remediate", OPS, json!({"mode": "execute", "hostId": "host-a", "actionId": "demo-disk-usage", "confirmPhrase": "x"})).await;
    assert_eq!(v["expected"], "EXECUTE demo-disk-usage");
    let (s, _) = api
        .post("/api/remediate", VIEWER, dry("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewers may plan only");
    let (s, v) = api
        .post("/api/remediate", VIEWER, json!({"hostId": "host-a"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "plan");
    assert!(v["actions"].as_array().unwrap().len() >= 5);
    assert_eq!(
        api.spool.counts_blocking(None).unwrap().total(),
        0,
        "nothing queued by any of this"
    );
}

#[tokio::test]
async fn guard_blocks_with_profile_and_issues() {
    let api = Api::new();
    register(
        &api,
        "host-a",
        json!({"remediationGuardOverrides": {"blocklistRegex": "uname"}}),
    )
    .await;
    let (s, v) = api
        .post("/api/remediate", OPS, dry("host-a", "demo-system-info"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("guard_blocked")),
        "{v}"
    );
    assert_eq!(v["profile"], "balanced");
    assert_eq!(v["issues"][0]["index"], 0);
    assert!(v["issues"][0]["reason"].as_str().is_some());
}

#[tokio::test]
async fn execute_after_dry_run_queues_once_and_gates_the_rest() {
    let api = Api::new();
    register(&api, "host-a", json!({})).await;
    let (s, v) = api
        .post("/api/remediate", OPS, dry("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .post("/api/remediate", OPS, exec("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["queued"].clone(), v["run"]["state"].clone()),
        (json!(true), json!("queued"))
    );
    assert_eq!(
        v["queue"],
        json!({"autoDrain": true, "drainTriggered": true})
    );
    assert_eq!(v["run"]["maxAttempts"], 3);
    assert_eq!(v["run"]["canary"]["percent"], 100, "safe_auto");
    let run_id = v["run"]["runId"].as_str().unwrap().to_string();
    let (s, v) = api
        .post("/api/remediate", OPS, exec("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_active"))
    );
    assert_eq!(v["runningRunId"], run_id.as_str());
    // The executor finishes it; the cooldown then holds the next execute.
    let h = HostId::parse("host-a").unwrap();
    let c = api
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    api.spool.start_attempt_blocking(&c.run_id).unwrap();
    api.spool
        .complete_blocking(
            &c.run_id,
            AttemptResult {
                exit_status: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    let (s, v) = api
        .post("/api/remediate", OPS, exec("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("cooldown_active")),
        "{v}"
    );
    assert!(v["retryAfterSeconds"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn risky_action_waits_for_approval_and_backlog_is_capped() {
    let api = Api::new();
    register(
        &api,
        "host-a",
        json!({"remediationPolicyOverrides": {"maxQueuePerHost": 1}}),
    )
    .await;
    api.post("/api/remediate", OPS, json!({"mode": "dry-run", "hostId": "host-a", "actionId": "demo-approval", "params": {"port": 8080}})).await;
    let mut body = exec("host-a", "demo-approval");
    body["params"] = json!({"port": 8080, "protocol": "udp"});
    let (s, v) = api.post("/api/remediate", OPS, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["run"]["state"], "approval-pending");
    assert_eq!(v["approvalRequired"], true);
    assert_eq!(
        v["queue"]["drainTriggered"], false,
        "a held run is not drained"
    );
    assert_eq!(v["run"]["params"], json!({"port": 8080, "protocol": "udp"}));
    api.post("/api/remediate", OPS, dry("host-a", "demo-disk-usage"))
        .await;
    let (s, v) = api
        .post("/api/remediate", OPS, exec("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("host_backlog_full")),
        "{v}"
    );
}

/// Executes of one host and action sent at the same moment: the gates and
/// the enqueue are one step, so exactly one run is queued and every other
/// request is told which run is active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_executes_of_one_action_queue_one_run() {
    let api = Api::new();
    register(&api, "host-a", json!({})).await;
    let (s, v) = api
        .post("/api/remediate", OPS, dry("host-a", "demo-disk-usage"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let one = || api.post("/api/remediate", OPS, exec("host-a", "demo-disk-usage"));
    let (a, b, c, d, e, f, g, h) =
        tokio::join!(one(), one(), one(), one(), one(), one(), one(), one());
    let answers = [a, b, c, d, e, f, g, h];
    let ok: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, v)| v)
        .collect();
    let codes: Vec<_> = answers
        .iter()
        .map(|(s, v)| (*s, v["code"].clone()))
        .collect();
    assert_eq!(ok.len(), 1, "one queued, the rest refused: {codes:?}");
    let id = ok[0]["run"]["runId"].as_str().unwrap();
    for (s, v) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(
            (*s, v["code"].as_str(), v["runningRunId"].as_str()),
            (StatusCode::CONFLICT, Some("already_active"), Some(id)),
            "{v}"
        );
    }
    let h = HostId::parse("host-a").unwrap();
    assert_eq!(api.spool.counts_blocking(Some(&h)).unwrap().queued, 1);
}
