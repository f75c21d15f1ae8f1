//! `POST /api/hosts/{hostId}/signals`: the autonomous planner over the demo
//! catalog; every skip reason it can reach, a queued run's fields, auth and
//! bad input.

use axum::http::StatusCode;
use remediate_config::canary_bucket;
use remediate_spool::*;
use serde_json::{Value, json};

use crate::util::*;

async fn register(api: &Api, host: &str, doc: Value) {
    let (s, v) = api.put(&format!("/api/hosts/{host}"), ADMIN, doc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Registers `host` with autonomy on and these extra policy overrides.
async fn autonomous(api: &Api, host: &str, extra: Value) {
    let mut o = json!({ "autonomousEnabled": true });
    if let (Some(m), Value::Object(x)) = (o.as_object_mut(), extra) {
        m.extend(x);
    }
    register(api, host, json!({ "remediationPolicyOverrides": o })).await;
}

async fn signals(api: &Api, host: &str, codes: &[&str]) -> (StatusCode, Value) {
    let sig: Vec<Value> = codes.iter().map(|c| json!({ "code": c })).collect();
    api.post(
        &format!("/api/hosts/{host}/signals"),
        OPS,
        json!({ "signals": sig }),
    )
    .await
}

/// The skip code of each result, or "queued".
fn outcomes(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| {
            if r["queued"] == true {
                "queued".to_string()
            } else {
                r["skip"]["code"].as_str().unwrap().to_string()
            }
        })
        .collect()
}

async fn expect(api: &Api, host: &str, codes: &[&str], want: &[&str]) -> Value {
    let (s, v) = signals(api, host, codes).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(outcomes(&v), want, "{v}");
    v
}

#[tokio::test]
async fn autonomy_off_observe_fallback_and_tier_above_max() {
    let api = Api::new();
    register(&api, "host-a", json!({})).await;
    let v = expect(&api, "host-a", &["demo_disk"], &["autonomy_disabled"]).await;
    assert_eq!(v["autonomousEnabled"], false);
    let r = &v["results"][0];
    assert_eq!(r["actionId"], "demo-disk-usage");
    assert!(
        r["skip"]["message"].as_str().unwrap().contains("disabled"),
        "{r}"
    );

    autonomous(&api, "host-a", json!({})).await;
    let v = expect(
        &api,
        "host-a",
        &["no_such_signal", "demo_canary"],
        &["tier_observe", "tier_above_max"],
    )
    .await;
    assert_eq!(
        v["results"][0]["actionId"], "demo-system-info",
        "unknown codes map to the catalog's fallback"
    );
    assert_eq!(v["results"][1]["skip"]["tier"], "guarded_auto");
    assert_eq!(v["results"][1]["skip"]["max"], "safe_auto");
    assert!(api.spool.list_blocking(&all()).unwrap().is_empty());
}

fn all() -> ListQuery {
    ListQuery {
        host: None,
        buckets: Bucket::ALL.to_vec(),
        limit: 1000,
    }
}

#[tokio::test]
async fn a_queued_run_carries_the_auto_fields_and_the_host_policy() {
    let api = Api::new();
    autonomous(
        &api,
        "host-a",
        json!({ "maxRetryAttempts": 5, "queueTtlMinutes": 30 }),
    )
    .await;
    let before = chrono::Utc::now();
    let (s, v) = api
        .post(
            "/api/hosts/host-a/signals",
            OPS,
            json!({ "cycleId": "cycle-1", "signals": [{ "code": "demo_disk", "detail": "/ at 91 %" }] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["queuedCount"].as_u64(), v["skippedCount"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(v["cycleId"], "cycle-1");
    let r = &v["results"][0];
    assert_eq!(
        (&r["queued"], &r["approvalRequired"], &r["detail"]),
        (&json!(true), &json!(false), &json!("/ at 91 %"))
    );
    let run = &r["run"];
    assert_eq!(run["autoQueued"], true);
    assert_eq!(run["autoReason"], "demo_disk");
    assert_eq!(run["autoTier"], "safe_auto");
    assert_eq!(run["actionKey"], "demo-disk-usage");
    assert_eq!(run["hostId"], "host-a");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["approvalStatus"], "not-required");
    assert_eq!(run["maxAttempts"], 5, "from the host's overrides");
    assert_eq!(run["requestedBy"], "ops");
    assert_eq!(run["canary"]["percent"], 100, "safe_auto: every host");
    assert_eq!(run["canary"]["selected"], true);
    assert_eq!(run["canary"]["checks"], 1);
    assert_eq!(run["rollback"]["armed"], false, "no rollback commands");
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(run["expiresAt"].clone()).unwrap();
    let ttl = expires - before;
    assert!(
        ttl > chrono::Duration::minutes(29) && ttl <= chrono::Duration::minutes(31),
        "TTL 30 min: {ttl}"
    );
    assert_eq!(v["queue"]["drainTriggered"], true);

    // In the store as answered.
    let id = RunId::parse(run["runId"].as_str().unwrap()).unwrap();
    let rec = api.spool.get_blocking(&id).unwrap().unwrap();
    assert!(rec.auto_queued);
    assert_eq!(rec.auto_reason.as_deref(), Some("demo_disk"));
    assert_eq!(rec.state, RunState::Queued);

    // Audited once, with the report's codes.
    let text: String = std::fs::read_dir(api.spool.root().join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("\"signals\"")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("demo_disk") && lines[0].contains(id.as_str()));
}

#[tokio::test]
async fn guarded_action_inside_the_rollout_waits_for_approval_outside_is_skipped() {
    let api = Api::new();
    let action = "demo-canary-fails";
    // A host whose bucket is at least 1, so a 1 % rollout leaves it out.
    let outside = (0..100)
        .map(|i| format!("host-{i}"))
        .find(|h| canary_bucket(h, action) >= 1)
        .unwrap();
    let tier = json!({ "autonomousMaxTier": "guarded_auto" });
    let mut o = tier.clone();
    o["canaryRolloutPercent"] = json!(1);
    autonomous(&api, &outside, o).await;
    let v = expect(&api, &outside, &["demo_canary"], &["not_in_canary_rollout"]).await;
    let sk = &v["results"][0]["skip"];
    assert_eq!(sk["percent"], 1);
    assert_eq!(sk["bucket"], canary_bucket(&outside, action));

    let mut o = tier;
    o["canaryRolloutPercent"] = json!(100);
    autonomous(&api, "host-in", o).await;
    let v = expect(&api, "host-in", &["demo_canary"], &["queued"]).await;
    let r = &v["results"][0];
    assert_eq!(
        r["approvalRequired"], true,
        "medium risk at the medium threshold"
    );
    let run = &r["run"];
    assert_eq!(run["state"], "approval-pending");
    assert_eq!(run["approvalStatus"], "pending");
    assert_eq!(run["autoTier"], "guarded_auto");
    assert_eq!(run["canary"]["percent"], 100);
    assert_eq!(run["canary"]["selected"], true);
    assert_eq!(run["rollback"]["armed"], true);
    assert_eq!(
        v["queue"]["drainTriggered"], false,
        "a held run is not ready"
    );
}

#[tokio::test]
async fn cycle_cap_then_hourly_cap() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({})).await;
    // Cap 1 per cycle (the default): the second signal of the report waits.
    expect(
        &api,
        "host-a",
        &["demo_disk", "demo_echo"],
        &["queued", "cycle_cap_reached"],
    )
    .await;

    autonomous(
        &api,
        "host-h",
        json!({ "autonomousMaxQueuedPerHour": 1, "autonomousMaxQueuedPerCycle": 5 }),
    )
    .await;
    expect(&api, "host-h", &["demo_disk"], &["queued"]).await;
    let v = expect(&api, "host-h", &["demo_echo"], &["hourly_cap_reached"]).await;
    assert_eq!(v["results"][0]["skip"]["cap"], 1);
}

#[tokio::test]
async fn hourly_cap_counts_finished_auto_runs_but_not_operator_runs() {
    let api = Api::new();
    autonomous(
        &api,
        "host-a",
        json!({ "autonomousMaxQueuedPerHour": 1, "executeCooldownMinutes": 0 }),
    )
    .await;
    // An operator's run (not auto-queued) does not count.
    api.queued("host-a");
    let v = expect(&api, "host-a", &["demo_disk"], &["queued"]).await;
    // The auto run finishes; it still counts for the hour.
    let id = RunId::parse(v["results"][0]["run"]["runId"].as_str().unwrap()).unwrap();
    let h = HostId::parse("host-a").unwrap();
    let c = api
        .spool
        .claim_next_blocking(&h, &|a| a != "demo-disk-usage")
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, id);
    api.spool.start_attempt_blocking(&id).unwrap();
    api.spool
        .complete_blocking(&id, AttemptResult::default())
        .unwrap();
    expect(&api, "host-a", &["demo_disk"], &["hourly_cap_reached"]).await;
}

#[tokio::test]
async fn host_and_global_backlog() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({ "maxQueuePerHost": 1 })).await;
    api.queued("host-a");
    let v = expect(&api, "host-a", &["demo_disk"], &["host_backlog_full"]).await;
    assert_eq!(v["results"][0]["skip"]["limit"], 1);

    autonomous(&api, "host-g", json!({ "maxQueueTotal": 1 })).await;
    let v = expect(&api, "host-g", &["demo_disk"], &["global_backlog_full"]).await;
    assert_eq!(v["results"][0]["skip"]["limit"], 1);
}

#[tokio::test]
async fn cooldown_from_an_operator_execute_then_already_active() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({})).await;
    let (s, v) = api
        .post(
            "/api/remediate",
            OPS,
            json!({"mode": "dry-run", "hostId": "host-a", "actionId": "demo-disk-usage"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .post(
            "/api/remediate",
            OPS,
            json!({"mode": "execute", "hostId": "host-a", "actionId": "demo-disk-usage", "confirmPhrase": "EXECUTE demo-disk-usage"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = expect(&api, "host-a", &["demo_disk"], &["cooldown_active"]).await;
    let left = v["results"][0]["skip"]["remaining_seconds"]
        .as_u64()
        .unwrap();
    assert!(left > 200 && left <= 300, "5 min cooldown: {left}");

    // Without a cooldown, the run the operator queued is still active.
    autonomous(
        &api,
        "host-a",
        json!({ "executeCooldownMinutes": 0, "autonomousMaxQueuedPerCycle": 3 }),
    )
    .await;
    expect(&api, "host-a", &["demo_disk"], &["already_active"]).await;
    // And within one report, the second signal for the same action.
    autonomous(
        &api,
        "host-b",
        json!({ "executeCooldownMinutes": 0, "autonomousMaxQueuedPerCycle": 3 }),
    )
    .await;
    expect(
        &api,
        "host-b",
        &["demo_disk", "demo_disk"],
        &["queued", "already_active"],
    )
    .await;
}

#[tokio::test]
async fn an_auto_run_starts_the_cooldown_too() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({ "autonomousMaxQueuedPerCycle": 3 })).await;
    expect(
        &api,
        "host-a",
        &["demo_disk", "demo_disk"],
        &["queued", "cooldown_active"],
    )
    .await;
}

#[tokio::test]
async fn guard_blocked_and_canary_checks_missing() {
    let api = Api::new();
    register(
        &api,
        "host-a",
        json!({
            "remediationPolicyOverrides": { "autonomousEnabled": true, "autonomousMaxQueuedPerCycle": 5 },
            "remediationGuardOverrides": { "blocklistRegex": "^/usr/bin/df " },
        }),
    )
    .await;
    let v = expect(
        &api,
        "host-a",
        &["demo_disk", "demo_flaky"],
        &["guard_blocked", "canary_checks_missing"],
    )
    .await;
    let issues = v["results"][0]["skip"]["issues"].as_array().unwrap();
    assert!(!issues.is_empty(), "{v}");
    assert!(api.spool.list_blocking(&all()).unwrap().is_empty());
}

#[tokio::test]
async fn auth_host_limits_and_bad_input() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({})).await;
    autonomous(&api, "host-b", json!({})).await;
    let body = json!({ "signals": [{ "code": "demo_disk" }] });
    let (s, v) = api
        .post("/api/hosts/host-a/signals", OPS_B, body.clone())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "token limited to host-b: {v}");
    let (s, v) = api
        .post("/api/hosts/host-b/signals", OPS_B, body.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "its own host: {v}");
    let (s, _) = api
        .post("/api/hosts/host-a/signals", VIEWER, body.clone())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewer");
    let (s, v) = api
        .post("/api/hosts/host-new/signals", OPS, body.clone())
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("host_not_found"))
    );
    register(&api, "host-off", json!({ "enabled": false })).await;
    let (s, v) = api
        .post("/api/hosts/host-off/signals", OPS, body.clone())
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("host_disabled"))
    );

    let many: Vec<Value> = (0..51).map(|_| json!({ "code": "demo_disk" })).collect();
    let long = "x".repeat(1001);
    let cases = [
        (json!({ "signals": [] }), "signals_required"),
        (json!({}), "invalid_body"),
        (json!({ "signals": many }), "too_many_signals"),
        (
            json!({ "signals": [{ "code": "a b" }] }),
            "invalid_signal_code",
        ),
        (
            json!({ "signals": [{ "code": "" }] }),
            "invalid_signal_code",
        ),
        (
            json!({ "signals": [{ "code": "demo_disk", "detail": long }] }),
            "invalid_signal_detail",
        ),
        (
            json!({ "signals": [{ "code": "demo_disk" }], "cycleId": "../x" }),
            "invalid_cycle_id",
        ),
        (
            json!({ "signals": [{ "code": "demo_disk", "run": ["/bin/sh"] }] }),
            "invalid_field",
        ),
        (json!({ "signals": "demo_disk" }), "invalid_field"),
    ];
    for (body, code) in cases {
        let (s, v) = api
            .post("/api/hosts/host-a/signals", OPS, body.clone())
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}: {v}"
        );
    }
    let (s, v) = api.post("/api/hosts/..%2Fx/signals", OPS, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        api.spool.list_blocking(&all()).unwrap().len() == 1,
        "only host-b's run was queued"
    );
}

/// Reports of one host sent at the same moment: the gates and the enqueue
/// are one step, so the action is queued once and every other report is
/// refused because of that run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_reports_queue_an_action_once() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({})).await;
    let one = || signals(&api, "host-a", &["demo_disk"]);
    let (a, b, c, d, e, f) = tokio::join!(one(), one(), one(), one(), one(), one());
    let got: Vec<String> = [a, b, c, d, e, f]
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, StatusCode::OK, "{v}");
            outcomes(v).remove(0)
        })
        .collect();
    // The others meet the first one's run: its cooldown (checked first)
    // or its being active.
    assert_eq!(got.iter().filter(|o| *o == "queued").count(), 1, "{got:?}");
    assert!(
        got.iter()
            .all(|o| ["queued", "cooldown_active", "already_active"].contains(&o.as_str())),
        "{got:?}"
    );
    let h = HostId::parse("host-a").unwrap();
    assert_eq!(api.spool.counts_blocking(Some(&h)).unwrap().queued, 1);
}

/// A stored host document that no longer validates (edited by hand, or the
/// config changed under it) is a 409 `invalid_host_policy` on the signals
/// route, as on the remediate route, and nothing is queued (it was a 500).
#[tokio::test]
async fn an_invalid_stored_host_document_is_a_conflict_not_a_crash() {
    let api = Api::new();
    autonomous(&api, "host-a", json!({})).await;
    let h = HostId::parse("host-a").unwrap();
    api.spool
        .put_host_doc_blocking(&h, &json!({"remediationPolicyProfile": "no-such-profile"}))
        .unwrap();
    let (s, v) = signals(&api, "host-a", &["demo_disk"]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_host_policy")),
        "{v}"
    );
    let (s, v) = api
        .post(
            "/api/remediate",
            OPS,
            json!({"mode": "plan", "hostId": "host-a"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_host_policy")),
        "{v}"
    );
    let c = api.spool.counts_blocking(Some(&h)).unwrap();
    assert_eq!(c.queued + c.held, 0, "nothing queued");
}
