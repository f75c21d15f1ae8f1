//! Shared setup: a fresh spool, tokens of every role, the router's state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remediate_functions::auth::{AuthConfig, Role, TokenEntry, hash_token};
use remediate_functions::{AppState, Metrics};
use remediate_spool::{Canary, HostId, LocalSpool, NewRun, Rollback, RunId};

pub const OPS: &str = "ops-token";
pub const ADMIN: &str = "admin-token";
pub const VIEWER: &str = "viewer-token";
pub const QUEUE: &str = "queue-token-0123456789abcdef";
pub const SESSION_KEY: &str = "0123456789abcdef0123456789abcdef-lambda";

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lambda/fixtures")
}

pub fn tokens() -> Vec<TokenEntry> {
    let t = |name: &str, role, tok: &str| TokenEntry {
        name: name.into(),
        role,
        sha256: hash_token(tok),
        hosts: None::<BTreeSet<String>>,
    };
    vec![
        t("viewer", Role::Viewer, VIEWER),
        t("ops", Role::Ops, OPS),
        t("admin", Role::Admin, ADMIN),
    ]
}

/// The token file the binary reads, in the format of `TokenFile`.
pub fn tokens_toml() -> String {
    let mut toml = String::new();
    for t in tokens() {
        toml.push_str(&format!(
            "[[token]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n",
            t.name,
            format!("{:?}", t.role).to_lowercase(),
            t.sha256
        ));
    }
    toml
}

/// One side of a comparison: its own spool and state.
pub struct Side {
    pub _dir: tempfile::TempDir,
    pub spool: LocalSpool,
    pub state: Arc<AppState>,
}

impl Side {
    pub fn new() -> Side {
        let dir = tempfile::tempdir().unwrap();
        let spool = LocalSpool::open(dir.path().join("spool")).unwrap();
        let mut auth = AuthConfig::new(tokens(), Some(QUEUE), SESSION_KEY.as_bytes().to_vec());
        auth.secure_cookie = true;
        let state = Arc::new(AppState {
            store: Arc::new(spool.clone()),
            loaded: Arc::new(remediate_config::Loaded::defaults()),
            catalog: Arc::new(remediate_config::Catalog::demo()),
            auth,
            drain_wait: Duration::from_millis(200),
            notify_url: None,
            metrics: Metrics::default(),
            effective_cache: Default::default(),
        });
        Side {
            _dir: dir,
            spool,
            state,
        }
    }

    /// A run waiting for approval on `host`.
    pub fn held(&self, host: &str) -> RunId {
        let run = NewRun {
            host_id: HostId::parse(host).unwrap(),
            action_key: "demo-approval".into(),
            params: Default::default(),
            requested_by: "test".into(),
            idempotency_key: None,
            max_attempts: 2,
            expires_at: None,
            idempotent: true,
            approval_required: true,
            canary: Canary::default(),
            rollback: Rollback::default(),
            auto_queued: false,
            auto_reason: None,
            auto_tier: None,
            risk: None,
            tier: None,
        };
        self.spool.enqueue_blocking(run).unwrap().record.run_id
    }
}
