//! Test harness: a spool in a temp dir, tokens of every role, requests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use remediate_functions::auth::{AuthConfig, Role, TokenEntry, hash_token};
use remediate_functions::{AppState, Metrics, app};
use remediate_spool::*;
use serde_json::Value;
use tower::ServiceExt;

pub const VIEWER: &str = "viewer-token";
pub const OPS: &str = "ops-token";
pub const ADMIN: &str = "admin-token";
pub const OPS_B: &str = "ops-host-b-token";
pub const QUEUE: &str = "queue-token-0123456789abcdef";
pub const SESSION_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn tokens() -> Vec<TokenEntry> {
    let t = |name: &str, role, tok: &str, hosts: Option<&[&str]>| TokenEntry {
        name: name.into(),
        role,
        sha256: hash_token(tok),
        hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()),
    };
    vec![
        t("viewer", Role::Viewer, VIEWER, None),
        t("ops", Role::Ops, OPS, None),
        t("admin", Role::Admin, ADMIN, None),
        t("ops-b", Role::Ops, OPS_B, Some(&["host-b"])),
    ]
}

pub fn auth() -> AuthConfig {
    let mut a = AuthConfig::new(tokens(), Some(QUEUE), SESSION_KEY.to_vec());
    a.secure_cookie = false;
    a
}

pub struct Api {
    pub _dir: tempfile::TempDir,
    pub spool: LocalSpool,
    pub state: Arc<AppState>,
}

impl Api {
    pub fn new() -> Api {
        Self::with_wait(Duration::from_millis(200))
    }

    pub fn with_wait(drain_wait: Duration) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let spool = LocalSpool::open(dir.path().join("spool")).unwrap();
        let state = Arc::new(AppState {
            store: Arc::new(spool.clone()),
            loaded: Arc::new(remediate_config::Loaded::defaults()),
            catalog: Arc::new(remediate_config::Catalog::demo()),
            auth: auth(),
            drain_wait,
            notify_url: None,
            metrics: Metrics::default(),
            effective_cache: Default::default(),
        });
        Api {
            _dir: dir,
            spool,
            state,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(
            Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            Request::post(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            Request::put(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// A run waiting for approval on `host`.
    pub fn held(&self, host: &str) -> RunId {
        let mut r = new_run(host);
        r.approval_required = true;
        self.spool.enqueue_blocking(r).unwrap().record.run_id
    }

    pub fn queued(&self, host: &str) -> RunId {
        self.spool
            .enqueue_blocking(new_run(host))
            .unwrap()
            .record
            .run_id
    }

    /// A run that failed into the DLQ on `host`.
    pub fn dead(&self, host: &str) -> RunId {
        let h = HostId::parse(host).unwrap();
        let mut r = new_run(host);
        let action = format!("dead-{}", RunId::generate());
        r.action_key = action.clone();
        let id = self.spool.enqueue_blocking(r).unwrap().record.run_id;
        let c = self
            .spool
            .claim_next_blocking(&h, &|a| a != action)
            .unwrap()
            .unwrap();
        assert_eq!(c.run_id, id);
        self.spool.start_attempt_blocking(&id).unwrap();
        self.spool
            .dead_letter_blocking(
                &id,
                "max_attempts_exceeded",
                Some(AttemptResult {
                    exit_status: Some(1),
                    error: Some("exit 1".into()),
                    ..Default::default()
                }),
            )
            .unwrap();
        id
    }
}

pub fn new_run(host: &str) -> NewRun {
    NewRun {
        host_id: HostId::parse(host).unwrap(),
        action_key: "demo-read-only".into(),
        params: Default::default(),
        requested_by: "test".into(),
        idempotency_key: None,
        max_attempts: 2,
        expires_at: None,
        idempotent: true,
        approval_required: false,
        canary: Canary::default(),
        rollback: Rollback::default(),
        auto_queued: false,
        auto_reason: None,
        auto_tier: None,
        risk: None,
        tier: None,
    }
}
