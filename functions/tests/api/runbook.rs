//! Every curl command of the original runbook, run with curl against the
//! real server, with a bearer token in place of the runbook's cookie.

use std::process::Command;

use serde_json::{Value, json};

use crate::server::start;
use crate::util::*;

/// Runs curl with the runbook's flags; returns the parsed JSON answer.
fn curl(args: &[&str]) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .output()
        .expect("curl must be installed (the README lists it; .ci/run installs it)");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {args:?} failed: {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("curl {args:?}: not JSON ({e}): {body}"))
}

#[test]
fn every_runbook_curl_works_with_a_bearer_token() {
    let srv = start();
    let base = format!("http://{}", srv.addr);
    let auth = format!("authorization: Bearer {ADMIN}");
    let queue = format!("x-remediate-queue-token: {QUEUE}");
    // Something for each command to act on.
    let spool = remediate_spool::LocalSpool::open(srv.dir.path().join("spool")).unwrap();
    let mut held = new_run("host-a");
    held.approval_required = true;
    let to_approve = spool.enqueue_blocking(held.clone()).unwrap().record.run_id;
    let to_reject = spool.enqueue_blocking(held).unwrap().record.run_id;

    // Admin session route: drain through /api/remediate.
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/remediate"),
        "-d",
        r#"{"mode":"drain-queue","limit":5}"#,
    ]);
    assert_eq!(
        (v["ok"].clone(), v["mode"].clone()),
        (json!(true), json!("drain-queue")),
        "{v}"
    );
    assert!(v["drained"].is_array());

    // Token route (worker/automation).
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &queue,
        &format!("{base}/api/ops/remediate-drain"),
        "-d",
        r#"{"limit":5}"#,
    ]);
    assert_eq!(
        (v["ok"].clone(), v["authMode"].clone()),
        (json!(true), json!("queue-token")),
        "{v}"
    );
    assert!(v["drained"].is_array());

    // Queue snapshot and the DLQ-only snapshot.
    let v = curl(&[
        "-X",
        "GET",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-queue?limit=30"),
    ]);
    let counts = &v["snapshot"]["counts"];
    for f in [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "dlq",
        "retryScheduled",
        "approvalPending",
    ] {
        assert!(counts[f].is_u64(), "count {f} missing: {v}");
    }
    assert_eq!(counts["approvalPending"], 2);
    let v = curl(&[
        "-X",
        "GET",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-queue?limit=30&dlq=1"),
    ]);
    assert_eq!(v["snapshot"]["dlqOnly"], true, "{v}");

    // Approve and reject.
    let body =
        json!({"runId": to_approve.as_str(), "mode": "approve", "reason": "validated in canary"})
            .to_string();
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-queue"),
        "-d",
        &body,
    ]);
    assert_eq!(
        v["result"],
        json!({"ok": true, "runId": to_approve.as_str(), "state": "queued", "approvalStatus": "approved"})
    );
    let body = json!({"runId": to_reject.as_str(), "mode": "reject", "reason": "manual intervention required"}).to_string();
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-queue"),
        "-d",
        &body,
    ]);
    assert_eq!(v["result"]["approvalStatus"], "rejected", "{v}");

    // Replay one run (the rejected one is finished), then a DLQ batch.
    let body = json!({"mode": "single", "runId": to_reject.as_str()}).to_string();
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-replay"),
        "-d",
        &body,
    ]);
    assert_eq!(
        (v["ok"].clone(), v["mode"].clone()),
        (json!(true), json!("single")),
        "{v}"
    );
    assert_eq!(v["replayed"]["replayOfRunId"], to_reject.as_str());
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/ops/remediate-replay"),
        "-d",
        r#"{"mode":"dlq-batch","limit":3}"#,
    ]);
    assert_eq!(
        (v["ok"].clone(), v["mode"].clone()),
        (json!(true), json!("dlq-batch")),
        "{v}"
    );
    assert!(v["summary"].is_object());

    // The incident workflow and the host policy update the runbook names.
    let v = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/ops/incident-workflow"),
        "-d",
        r#"{"workflowId":"critical-triage","stepId":"drain-queue","payload":{"limit":8}}"#,
    ]);
    assert_eq!(v["ok"], true, "{v}");
    let v = curl(&[
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "-H",
        &auth,
        &format!("{base}/api/hosts/host-a"),
        "-d",
        r#"{"remediationPolicyProfile":"strict","remediationPolicyOverrides":{"maxRetryAttempts":2},"remediationGuardOverrides":{"maxCommandLength":400}}"#,
    ]);
    assert_eq!(v["effective"]["policy"]["maxRetryAttempts"], 2, "{v}");
}
