//! The operator console in real headless Chromium (via chromedriver and
//! fantoccini) against the real API server and executor, plus plain HTTP
//! checks that its pages and JSON need the session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, Locator};
use serde_json::json;

use harness::*;

/// Polls `f` until it returns `Some`, failing after a deadline with `what`.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn row_state(c: &Client, run: &str) -> Option<String> {
    c.find(Locator::Css(&format!("tr[data-run-id='{run}']")))
        .await
        .ok()?
        .attr("data-state")
        .await
        .ok()?
}

async fn wait_row_state(c: &Client, run: &str, want: &str) {
    until(&format!("run {run} shown as {want}"), async || {
        (row_state(c, run).await.as_deref() == Some(want)).then_some(())
    })
    .await
}

async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    until(&format!("{css} saying {needle:?}"), async || {
        text_of(c, css).await.filter(|t| t.contains(needle))
    })
    .await
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Clicks a row's action, fills the reason if asked, and confirms.
async fn act(c: &Client, key: &str, reason: Option<&str>) {
    click(c, &format!("button[data-key='{key}']")).await;
    confirm(c, reason).await;
}

async fn confirm(c: &Client, reason: Option<&str>) {
    until("the confirmation dialog", async || {
        c.find(Locator::Css("dialog#confirm[open]")).await.ok()
    })
    .await;
    if let Some(r) = reason {
        c.find(Locator::Id("reason"))
            .await
            .unwrap()
            .send_keys(r)
            .await
            .unwrap();
    }
    click(c, "#confirm-ok").await;
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_log_in_approve_reject_and_replay_in_chromium() {
    let srv = start_server();
    let api = Api {
        addr: &srv.addr,
        token: ADMIN,
    };
    // One attempt each, so a failing run reaches the DLQ at once.
    api.host(
        "console-a",
        json!({"remediationPolicyOverrides": {"maxRetryAttempts": 1}}),
    );
    api.host("console-b", json!({}));
    let _exec = start_executor(&srv, "console-a");
    let browser = start_browser().await;
    let c = &browser.client;
    let base = format!("http://{}", srv.addr);
    let shots = artifacts_dir();

    // Without the session the console sends us to the login page.
    c.goto(&format!("{base}/admin")).await.unwrap();
    assert_eq!(path_of(c).await, "/admin/login");

    // A wrong token is refused, in words.
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-a-token")
        .await
        .unwrap();
    click(c, "#login-submit").await;
    wait_text(c, "#login-result", "Login refused: this token is not valid").await;
    assert_eq!(path_of(c).await, "/admin/login");

    // The admin token opens the queue.
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    click(c, "#login-submit").await;
    until("the queue page", async || {
        (path_of(c).await == "/admin").then_some(())
    })
    .await;

    // High-risk runs wait for approval; a failing one heads for the DLQ.
    let approve_me = api.execute("console-a", "demo-approval", json!({"port": 8080}));
    let reject_me = api.execute("console-b", "demo-approval", json!({"port": 8080}));
    let fails = api.execute("console-a", "demo-always-fails", json!({}));
    wait_row_state(c, &approve_me, "approval-pending").await;
    wait_row_state(c, &reject_me, "approval-pending").await;
    wait_text(c, "#counts [data-count='approvalPending'] .n", "2").await;
    let row = text_of(c, &format!("tr[data-run-id='{approve_me}']"))
        .await
        .unwrap();
    assert!(row.contains("console-a / demo-approval"), "{row}");
    assert!(row.contains("pending"), "{row}");

    // Approve in the page and watch it succeed without a reload: a marker
    // set on the window before must still be there after.
    c.execute("window.__sameDocument = true; return true;", vec![])
        .await
        .unwrap();
    act(
        c,
        &format!("approve:{approve_me}"),
        Some("validated in canary"),
    )
    .await;
    wait_text(c, "#result", &format!("Approved run {approve_me}")).await;
    wait_row_state(c, &approve_me, "succeeded").await;
    let same = c
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page reloaded");
    assert_eq!(api.run(&approve_me)["approval"]["decidedBy"], "admin");

    // Reject another, with a reason, by keyboard only: Enter on the
    // button, type into the focused reason field, Tab to Confirm, Enter.
    let enter = Key::Enter.to_string();
    c.find(Locator::Css(&format!(
        "button[data-key='reject:{reject_me}']"
    )))
    .await
    .unwrap()
    .send_keys(&enter)
    .await
    .unwrap();
    until("the reject dialog", async || {
        c.find(Locator::Css("dialog#confirm[open]")).await.ok()
    })
    .await;
    let focused = c.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("reason"));
    focused
        .send_keys("not during business hours")
        .await
        .unwrap();
    focused.send_keys(&Key::Tab.to_string()).await.unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("confirm-ok")
    );
    focused.send_keys(&enter).await.unwrap();
    wait_text(c, "#result", &format!("Rejected run {reject_me}")).await;
    wait_row_state(c, &reject_me, "rejected").await;
    assert_eq!(
        api.run(&reject_me)["approval"]["reason"],
        "not during business hours"
    );
    c.screenshot()
        .await
        .map(|png| save(&shots.join("console-queue.png"), &png))
        .unwrap();

    // Replay a run from the DLQ.
    click(c, "input[name='filter'][value='dlq']").await;
    wait_row_state(c, &fails, "failed").await;
    let row = text_of(c, &format!("tr[data-run-id='{fails}']"))
        .await
        .unwrap();
    assert!(row.contains("max_attempts_exceeded"), "{row}");
    act(c, &format!("replay:{fails}"), None).await;
    let said = wait_text(c, "#result", &format!("Replayed run {fails} as new run ")).await;
    let new_id = said
        .split("as new run ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(api.run(&new_id)["replayOfRunId"], fails.as_str());

    // The replay fails again; a DLQ batch replay (confirmed) takes it.
    wait_row_state(c, &new_id, "failed").await;
    click(c, "#replay-batch").await;
    confirm(c, None).await;
    wait_text(c, "#result", "Replayed 1 of 1 DLQ runs").await;

    // Drain asks first; canceling changes nothing, confirming reports.
    click(c, "#drain").await;
    until("the drain dialog", async || {
        c.find(Locator::Css("dialog#confirm[open]")).await.ok()
    })
    .await;
    click(c, "#confirm-cancel").await;
    wait_text(c, "#result", "Drain canceled: nothing was changed").await;
    click(c, "#drain").await;
    confirm(c, None).await;
    until("the drain's result", async || {
        text_of(c, "#result")
            .await
            .filter(|t| t.starts_with("Drained ") || t.starts_with("Drain done"))
    })
    .await;

    // An incident workflow step, confirmed, reports in words.
    c.find(Locator::Id("wf-step"))
        .await
        .unwrap()
        .select_by_value("critical-triage/status-snapshot")
        .await
        .unwrap();
    click(c, "#wf-run").await;
    confirm(c, None).await;
    wait_text(c, "#result", "Step \"Snapshot the queue\" done:").await;

    // Readable at 390 px: nothing wider than the screen.
    click(c, "input[name='filter'][value='all']").await;
    c.set_window_size(390, 844).await.unwrap();
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "wider than 390 px by {overflow}"
    );
    c.screenshot()
        .await
        .map(|png| save(&shots.join("console-queue-390.png"), &png))
        .unwrap();
    c.set_window_size(1280, 900).await.unwrap();

    // The run's page: its attempt and each command's captured output.
    c.goto(&format!("{base}/admin/runs/{approve_me}"))
        .await
        .unwrap();
    wait_text(c, "#run-state", "succeeded").await;
    let attempts = wait_text(c, "#attempts", "Attempt 1").await;
    assert!(attempts.contains("stdout"), "{attempts}");
    // demo-approval has a canary check: its output and verdict are shown.
    assert!(
        attempts.contains("canary: ") && attempts.contains("canary passed: yes"),
        "{attempts}"
    );
    let outputs = c
        .find_all(Locator::Css("#attempts article.output"))
        .await
        .unwrap();
    assert!(!outputs.is_empty(), "no command output shown");
    let summary = text_of(c, "#summary").await.unwrap();
    assert!(summary.contains("validated in canary"), "{summary}");
    c.screenshot()
        .await
        .map(|png| save(&shots.join("console-run.png"), &png))
        .unwrap();

    // The host's page: each knob's effective value and the layer that set
    // it; an admin edits an override, and a wrong one is refused in words.
    c.goto(&format!("{base}/admin/hosts/console-a"))
        .await
        .unwrap();
    wait_text(c, "tr[data-knob='maxRetryAttempts'] .knob-layer", "host").await;
    wait_text(
        c,
        "tr[data-knob='retryBackoffSeconds'] .knob-layer",
        "default",
    )
    .await;
    let field = c
        .find(Locator::Id("ovr-retryBackoffSeconds"))
        .await
        .unwrap();
    field.send_keys("7").await.unwrap();
    click(c, "#save").await;
    wait_text(
        c,
        "#result",
        "Saved host console-a: profile balanced, enabled, 2 overrides",
    )
    .await;
    wait_text(c, "tr[data-knob='retryBackoffSeconds'] .knob-layer", "host").await;
    wait_text(c, "tr[data-knob='retryBackoffSeconds'] .knob-value", "7").await;
    let (_, v) = api.call("GET", "/api/hosts/console-a", None);
    assert_eq!(
        v["raw"]["remediationPolicyOverrides"]["retryBackoffSeconds"],
        7
    );
    let field = c.find(Locator::Id("ovr-maxRetryAttempts")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("99").await.unwrap();
    click(c, "#save").await;
    wait_text(c, "#result", "Saving host console-a failed:").await;
    let (_, v) = api.call("GET", "/api/hosts/console-a", None);
    assert_eq!(
        v["raw"]["remediationPolicyOverrides"]["maxRetryAttempts"],
        1
    );
    c.screenshot()
        .await
        .map(|png| save(&shots.join("console-host.png"), &png))
        .unwrap();

    // The run and host pages are readable at 390 px too.
    c.set_window_size(390, 844).await.unwrap();
    for page in [
        format!("/admin/runs/{approve_me}"),
        "/admin/hosts/console-a".to_string(),
    ] {
        c.goto(&format!("{base}{page}")).await.unwrap();
        until(&format!("{page} loaded"), async || {
            text_of(c, "#updated")
                .await
                .filter(|t| !t.starts_with("Loading"))
        })
        .await;
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{page} is wider than 390 px by {overflow}"
        );
    }
    c.set_window_size(1280, 900).await.unwrap();

    // No secret is ever rendered.
    for page in [
        "/admin",
        &format!("/admin/runs/{approve_me}"),
        "/admin/hosts/console-a",
    ] {
        c.goto(&format!("{base}{page}")).await.unwrap();
        let html = c.source().await.unwrap();
        assert!(!html.contains(ADMIN), "{page} shows the token");
    }

    // Logging out ends the session.
    click(c, "#logout").await;
    until("the login page after logout", async || {
        (path_of(c).await == "/admin/login").then_some(())
    })
    .await;
    c.goto(&format!("{base}/admin")).await.unwrap();
    assert_eq!(path_of(c).await, "/admin/login");
    c.clone().close().await.unwrap();
}

#[test]
fn pages_and_their_json_need_the_session() {
    let srv = start_server();
    let a = srv.addr.as_str();
    let api = Api {
        addr: a,
        token: ADMIN,
    };
    api.host("console-a", json!({}));
    api.host("other-host", json!({}));
    let run = api.execute("console-a", "demo-approval", json!({"port": 8080}));
    let other_run = api.execute("other-host", "demo-approval", json!({"port": 8080}));

    // Pages without the session: 303 to the login page.
    for page in ["/admin", &format!("/admin/runs/{run}")] {
        let r = http(a, "GET", page, &[], None);
        assert_eq!(r.status, 303, "{page}");
        assert_eq!(r.header("location").as_deref(), Some("/admin/login"));
    }
    let r = http(
        a,
        "GET",
        "/admin",
        &[("cookie", "vr_session=forged.value")],
        None,
    );
    assert_eq!(r.status, 303, "a forged cookie is no session");
    let r = http(a, "GET", "/admin/", &[], None);
    assert_eq!(r.header("location").as_deref(), Some("/admin"));
    let r = http(a, "GET", "/admin/hosts/console-a", &[], None);
    assert_eq!(r.status, 303, "the host page needs the session too");
    assert_eq!(http(a, "GET", "/admin/login", &[], None).status, 200);
    assert_eq!(
        http(a, "GET", "/admin/assets/console.js", &[], None).status,
        200
    );

    // The JSON the page reads and writes: 401 without credentials.
    let json_ct = [("content-type", "application/json")];
    let calls = [
        (
            "GET",
            "/api/ops/remediate-queue?limit=100".to_string(),
            None,
        ),
        ("GET", format!("/api/ops/runs/{run}"), None),
        (
            "POST",
            "/api/ops/remediate-queue".to_string(),
            Some(json!({"runId": run, "mode": "approve"})),
        ),
        (
            "POST",
            "/api/ops/remediate-replay".to_string(),
            Some(json!({"mode": "dlq-batch", "limit": 3})),
        ),
        (
            "POST",
            "/api/ops/remediate-drain".to_string(),
            Some(json!({"limit": 5})),
        ),
    ];
    for (m, p, b) in &calls {
        let r = http(a, m, p, &json_ct, b.as_ref());
        assert_eq!(r.status, 401, "{m} {p}: {}", r.body);
    }

    // Only an admin token logs in.
    let r = http(
        a,
        "POST",
        "/api/auth/login",
        &json_ct,
        Some(&json!({"token": VIEWER})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        a,
        "POST",
        "/api/auth/login",
        &json_ct,
        Some(&json!({"token": ADMIN})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    // With the session: the pages, and the page's reads.
    let page = http(a, "GET", "/admin", &[("cookie", &cookie)], None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    assert!(!page.body.contains(ADMIN) && !page.body.contains(&cookie[11..]));
    let page = http(
        a,
        "GET",
        &format!("/admin/runs/{run}"),
        &[("cookie", &cookie)],
        None,
    );
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&run));
    assert_eq!(
        http(
            a,
            "GET",
            "/admin/runs/no-such-run",
            &[("cookie", &cookie)],
            None
        )
        .status,
        404
    );
    let r = http(
        a,
        "GET",
        &format!("/api/ops/runs/{run}"),
        &[("cookie", &cookie)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A session change needs JSON and a same-origin Origin (CSRF).
    let approve = json!({"runId": run, "mode": "approve"});
    let origin = format!("http://{a}");
    for (what, headers) in [
        (
            "no Origin",
            vec![
                ("cookie", cookie.as_str()),
                ("content-type", "application/json"),
            ],
        ),
        (
            "another Origin",
            vec![
                ("cookie", cookie.as_str()),
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
        ),
        (
            "a form body",
            vec![
                ("cookie", cookie.as_str()),
                ("content-type", "text/plain"),
                ("origin", origin.as_str()),
            ],
        ),
    ] {
        let r = http(
            a,
            "POST",
            "/api/ops/remediate-queue",
            &headers,
            Some(&approve),
        );
        assert_eq!(r.status, 403, "{what}: {}", r.body);
    }

    // GET /api/ops/runs/{runId}: the run with its history; 404; 403 for a
    // token limited to another host.
    let (s, v) = api.call("GET", &format!("/api/ops/runs/{run}"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["run"]["runId"], run.as_str());
    assert_eq!(v["run"]["state"], "approval-pending");
    assert!(v["run"]["history"].is_array(), "{v}");
    let (s, _) = api.call("GET", "/api/ops/runs/no-such-run", None);
    assert_eq!(s, 404);
    let other = Api {
        addr: a,
        token: OTHER,
    };
    let (s, v) = other.call("GET", &format!("/api/ops/runs/{run}"), None);
    assert_eq!(s, 403, "{v}");
    let (s, v) = other.call("GET", &format!("/api/ops/runs/{other_run}"), None);
    assert_eq!(s, 200, "{v}");
    let viewer = Api {
        addr: a,
        token: VIEWER,
    };
    assert_eq!(
        viewer.call("GET", &format!("/api/ops/runs/{run}"), None).0,
        200
    );
}
