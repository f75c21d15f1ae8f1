//! Who is calling: bearer API tokens (roles viewer < ops < admin, stored as
//! SHA-256 hashes), the signed admin session cookie, and the worker queue
//! token (`x-remediate-queue-token`, accepted on the drain, queue-snapshot
//! and replay routes only). No header but these is trusted: not Host, not
//! X-Forwarded-For. Every comparison of a secret is constant-time.

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "vr_session";
pub const QUEUE_TOKEN_HEADER: &str = "x-remediate-queue-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Ops,
    Admin,
}

/// One API token as configured: its hash, never the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Hosts this token may touch; absent = all hosts.
    #[serde(default)]
    pub hosts: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

impl TokenFile {
    pub fn load(path: &Path) -> anyhow::Result<TokenFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
        let f: TokenFile = toml_parse(&text)
            .map_err(|e| anyhow::anyhow!("token file {} is invalid: {e}", path.display()))?;
        for t in &f.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "token file {}: token {:?} needs `sha256` = 64 hex digits",
                    path.display(),
                    t.name
                );
            }
        }
        Ok(f)
    }
}

fn toml_parse(text: &str) -> Result<TokenFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// Hex SHA-256 of a token, as stored in the token file.
pub fn hash_token(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(2 * d.len());
    for b in d {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// A fresh random token (256 bits, URL-safe).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("vr_{}", B64.encode(bytes))
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    Bearer,
    Session,
    QueueToken,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Bearer => "bearer",
            AuthMode::Session => "session",
            AuthMode::QueueToken => "queue-token",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub hosts: Option<BTreeSet<String>>,
    pub mode: AuthMode,
}

impl Principal {
    pub fn may_touch(&self, host: &str) -> bool {
        self.hosts.as_ref().is_none_or(|h| h.contains(host))
    }
}

/// What authentication knows.
#[derive(Clone)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
    pub queue_token_sha256: Option<[u8; 32]>,
    pub session_key: Vec<u8>,
    pub session_ttl: chrono::Duration,
    /// Mark the cookie Secure (off only when serving on loopback in dev).
    pub secure_cookie: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.len())
            .field("queue_token", &self.queue_token_sha256.is_some())
            .field("secure_cookie", &self.secure_cookie)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    role: Role,
    #[serde(default)]
    hosts: Option<BTreeSet<String>>,
    exp: i64,
}

impl AuthConfig {
    pub fn new(tokens: Vec<TokenEntry>, queue_token: Option<&str>, session_key: Vec<u8>) -> Self {
        AuthConfig {
            tokens,
            queue_token_sha256: queue_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            session_key,
            session_ttl: chrono::Duration::hours(12),
            secure_cookie: true,
        }
    }

    /// Finds the token entry for a presented token (constant-time compare
    /// of the hashes; every entry is compared).
    pub fn token(&self, presented: &str) -> Option<&TokenEntry> {
        let h = hash_token(presented);
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.sha256.as_bytes().ct_eq(h.as_bytes())) {
                found = Some(t);
            }
        }
        found
    }

    fn queue_token_ok(&self, presented: &str) -> bool {
        match &self.queue_token_sha256 {
            Some(want) => {
                let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                bool::from(want.ct_eq(&got))
            }
            None => false,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.session_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// A signed session cookie value for a token's holder.
    pub fn session_for(&self, t: &TokenEntry, now: chrono::DateTime<chrono::Utc>) -> String {
        let claims = SessionClaims {
            sub: t.name.clone(),
            role: t.role,
            hosts: t.hosts.clone(),
            exp: (now + self.session_ttl).timestamp(),
        };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    fn verify_session(&self, value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Principal> {
        let (payload, sig) = value.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).ok()?;
        let claims: SessionClaims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        if claims.exp <= now.timestamp() {
            return None;
        }
        // A token removed from the configuration ends its sessions too.
        let still = self
            .tokens
            .iter()
            .any(|t| t.name == claims.sub && t.role == claims.role);
        if !still {
            return None;
        }
        Some(Principal {
            name: claims.sub,
            role: claims.role,
            hosts: claims.hosts,
            mode: AuthMode::Session,
        })
    }

    pub fn set_cookie(&self, value: &str) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!(
            "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.session_ttl.num_seconds()
        )
    }

    pub fn clear_cookie(&self) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Which credentials a route accepts.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub role: Role,
    pub queue_token: bool,
}

impl Need {
    pub const VIEWER: Need = Need {
        role: Role::Viewer,
        queue_token: false,
    };
    pub const OPS: Need = Need {
        role: Role::Ops,
        queue_token: false,
    };
    pub const ADMIN: Need = Need {
        role: Role::Admin,
        queue_token: false,
    };
    pub const OPS_OR_QUEUE: Need = Need {
        role: Role::Ops,
        queue_token: true,
    };
    pub const VIEWER_OR_QUEUE: Need = Need {
        role: Role::Viewer,
        queue_token: true,
    };
}

/// Authenticates a request and checks its role. For a state-changing
/// request authenticated by cookie, also requires a JSON body and an Origin
/// that matches the request's own host (CSRF).
pub fn authenticate(
    cfg: &AuthConfig,
    method: &Method,
    headers: &HeaderMap,
    need: Need,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Principal, ApiError> {
    let principal = if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("");
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        let t = cfg
            .token(token.trim())
            .ok_or_else(|| ApiError::unauthorized("unknown API token"))?;
        Principal {
            name: t.name.clone(),
            role: t.role,
            hosts: t.hosts.clone(),
            mode: AuthMode::Bearer,
        }
    } else if let Some(v) = headers.get(QUEUE_TOKEN_HEADER) {
        if !need.queue_token {
            return Err(ApiError::forbidden(
                "the queue token is accepted only on the drain, queue-snapshot and replay routes",
            ));
        }
        if !cfg.queue_token_ok(v.to_str().unwrap_or("")) {
            return Err(ApiError::unauthorized("wrong queue token"));
        }
        return Ok(Principal {
            name: "queue-token".into(),
            role: need.role,
            hosts: None,
            mode: AuthMode::QueueToken,
        });
    } else if let Some(v) = cookie_value(headers, SESSION_COOKIE) {
        let p = cfg
            .verify_session(v, now)
            .ok_or_else(|| ApiError::unauthorized("session expired or invalid; log in again"))?;
        if *method != Method::GET && *method != Method::HEAD {
            check_same_origin(headers)?;
        }
        p
    } else {
        return Err(ApiError::unauthorized(
            "credentials required: `Authorization: Bearer <token>` or a session cookie",
        ));
    };
    require_role(&principal, need.role)?;
    Ok(principal)
}

/// Checks that an authenticated principal has at least `role` (for a route
/// that learns the role it needs from the body it may only parse once the
/// caller is authenticated).
pub fn require_role(principal: &Principal, role: Role) -> Result<(), ApiError> {
    if principal.role < role {
        return Err(ApiError::forbidden(format!(
            "this needs the {:?} role; token {:?} has {:?}",
            role, principal.name, principal.role
        )));
    }
    Ok(())
}

fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ApiError::forbidden(
            "a session-authenticated change needs `content-type: application/json`",
        ));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let same = match (origin, host) {
        (Some(o), Some(h)) => o
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h)),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "cross-origin request refused (Origin must match the server)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig::new(
            vec![TokenEntry {
                name: "a".into(),
                role: Role::Admin,
                sha256: hash_token("s3cret"),
                hosts: None,
            }],
            Some("q"),
            b"key".to_vec(),
        )
    }

    #[test]
    fn session_cookie_roundtrip_expiry_and_forgery() {
        let c = cfg();
        let now = chrono::Utc::now();
        let v = c.session_for(&c.tokens[0], now);
        assert!(c.verify_session(&v, now).is_some());
        assert!(
            c.verify_session(&v, now + chrono::Duration::hours(13))
                .is_none(),
            "expired"
        );
        let mut forged = v.clone();
        forged.insert(3, 'x');
        assert!(c.verify_session(&forged, now).is_none());
        let other = AuthConfig::new(c.tokens.clone(), None, b"other".to_vec());
        assert!(
            other.verify_session(&v, now).is_none(),
            "signed with another key"
        );
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let c = cfg();
        assert!(c.token("s3cret").is_some());
        assert!(c.token("s3cre").is_none());
        assert!(c.queue_token_ok("q"));
        assert!(!c.queue_token_ok("Q"));
        assert!(!AuthConfig::new(vec![], None, vec![]).queue_token_ok(""));
    }
}
