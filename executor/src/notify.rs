//! Webhook notifications (`VPS_REMEDIATE_NOTIFY_WEBHOOK_URL`) when a run is
//! dead-lettered or starts waiting for an operator's approval.
//!
//! The claim loop never waits for the network: [`Notifier::notify`] puts a
//! notice on a bounded channel and returns; one task POSTs the notices in
//! order, each retried with exponential backoff. When the channel is full
//! (the webhook is down and notices pile up) a notice is dropped and logged:
//! the spool, not the webhook, is the record of what happened.
//!
//! Only `http://` URLs are supported (a minimal HTTP/1.1 POST over a tokio
//! `TcpStream`, `connection: close`); point it at a local relay for https.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use remediate_spool::{RunRecord, Timestamp};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{ExecError, Result};

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NoticeKind {
    #[serde(rename = "run.dead_lettered")]
    DeadLettered,
    #[serde(rename = "run.approval_pending")]
    ApprovalPending,
}

/// The JSON body of one notification. `kind`, `title` and `detail` are the
/// fields of the original system's notifications; the rest is for machines.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub kind: NoticeKind,
    pub title: String,
    pub detail: String,
    pub run_id: String,
    pub host_id: String,
    pub action_key: String,
    /// The dead-letter reason, or why the run waits.
    pub reason: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub at: Timestamp,
    pub source: &'static str,
}

impl Notice {
    /// A notice about `run`, which just moved to the DLQ or to `held/`.
    pub fn about(kind: NoticeKind, run: &RunRecord, reason: &str, at: Timestamp) -> Notice {
        let what = match kind {
            NoticeKind::DeadLettered => format!("dead-lettered ({reason})"),
            NoticeKind::ApprovalPending => "waiting for approval".to_string(),
        };
        let detail = match (kind, &run.last_error) {
            (NoticeKind::DeadLettered, Some(e)) => {
                format!("after {} attempt(s): {e}", run.attempts)
            }
            (NoticeKind::DeadLettered, None) => format!("after {} attempt(s)", run.attempts),
            (NoticeKind::ApprovalPending, _) => format!(
                "approve or reject it: POST /api/ops/remediate-queue {{\"runId\":\"{}\"}}",
                run.run_id
            ),
        };
        Notice {
            kind,
            title: format!(
                "{} on {}: run {} {what}",
                run.action_key, run.host_id, run.run_id
            ),
            detail,
            run_id: run.run_id.to_string(),
            host_id: run.host_id.to_string(),
            action_key: run.action_key.clone(),
            reason: reason.to_string(),
            attempts: run.attempts,
            max_attempts: run.max_attempts,
            at,
            source: "remediate-executor",
        }
    }
}

/// An `http://host[:port]/path` webhook URL, checked once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `host:port` to connect to.
    addr: String,
    /// The `host` header.
    authority: String,
    /// Path and query, at least `/`.
    path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl> {
        let bad = |why: &str| ExecError::Config(format!("notify webhook URL {url:?}: {why}"));
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// is supported by the executor (use a local relay for https)")
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
            || path.chars().any(|c| c.is_ascii_control() || c == ' ')
        {
            return Err(bad("unexpected characters"));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, port)) if !authority.ends_with(']') => {
                if port.is_empty() || port.parse::<u16>().is_err() {
                    return Err(bad("bad port"));
                }
                true
            }
            _ => false,
        };
        let addr = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookUrl {
            addr,
            authority: authority.to_string(),
            path,
        })
    }
}

/// Delivery knobs; the defaults suit a real webhook, tests shorten them.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Notices waiting to be sent; beyond this they are dropped.
    pub capacity: usize,
    /// Tries per notice.
    pub max_attempts: u32,
    /// Delay before the second try; doubled for each further one.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Limit of one POST, connect to status line.
    pub request_timeout: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            capacity: 256,
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of what happened to the notices.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notice>,
    stats: Arc<NotifyStats>,
}

/// The delivery task; [`Sender::finish`] waits for the queue to empty.
#[derive(Debug)]
pub struct Sender {
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Starts the delivery task (needs a tokio runtime).
    pub fn start(url: WebhookUrl, opts: NotifyOptions) -> (Notifier, Sender) {
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        let stats = Arc::new(NotifyStats::default());
        let task = tokio::spawn(deliver_all(url, opts, rx, stats.clone()));
        (Notifier { tx, stats }, Sender { task })
    }

    /// Queues a notice without waiting; returns false when it was dropped
    /// because the queue is full or the sender is gone.
    pub fn notify(&self, notice: Notice) -> bool {
        match self.tx.try_send(notice) {
            Ok(()) => true,
            Err(e) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let (why, n) = match e {
                    mpsc::error::TrySendError::Full(n) => ("queue full", n),
                    mpsc::error::TrySendError::Closed(n) => ("sender stopped", n),
                };
                tracing::warn!(
                    run_id = %n.run_id,
                    kind = ?n.kind,
                    dropped,
                    "webhook notification dropped: {why}"
                );
                false
            }
        }
    }

    pub fn stats(&self) -> &NotifyStats {
        &self.stats
    }
}

impl Sender {
    /// Lets the queued notices go out, for at most `limit`, once every
    /// [`Notifier`] clone is dropped (for `once`, which exits right after).
    pub async fn finish(self, limit: Duration) {
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!("webhook notifications still pending at exit: abandoned");
            task.abort();
        }
    }
}

/// `min(base * 2^(n-1), max)` before try `n + 1`.
fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

async fn deliver_all(
    url: WebhookUrl,
    opts: NotifyOptions,
    mut rx: mpsc::Receiver<Notice>,
    stats: Arc<NotifyStats>,
) {
    while let Some(notice) = rx.recv().await {
        let body = match serde_json::to_vec(&notice) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a notification");
                continue;
            }
        };
        let mut n = 0;
        loop {
            n += 1;
            let res = tokio::time::timeout(opts.request_timeout, post(&url, &body)).await;
            let err = match res {
                Ok(Ok(status)) if (200..300).contains(&status) => None,
                Ok(Ok(status)) => Some((format!("HTTP {status}"), retryable(status))),
                Ok(Err(e)) => Some((e.to_string(), true)),
                Err(_) => Some(("timed out".to_string(), true)),
            };
            match err {
                None => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(run_id = %notice.run_id, kind = ?notice.kind, tries = n, "webhook notified");
                    break;
                }
                Some((error, again)) if again && n < opts.max_attempts => {
                    let wait = backoff(n, opts.backoff_base, opts.backoff_max);
                    tracing::debug!(run_id = %notice.run_id, %error, tries = n, wait_ms = wait.as_millis() as u64, "webhook failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Some((error, _)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(run_id = %notice.run_id, kind = ?notice.kind, %error, tries = n, "webhook notification failed");
                    break;
                }
            }
        }
    }
}

/// A client error other than timeout or rate limit will not get better.
fn retryable(status: u16) -> bool {
    !(400..500).contains(&status) || status == 408 || status == 429
}

/// One POST; returns the status code of the answer.
async fn post(url: &WebhookUrl, body: &[u8]) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(&url.addr).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nuser-agent: remediate-executor\r\n\r\n",
        url.path,
        url.authority,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    // Only the status line matters: read until its end (at most 1 KiB).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the webhook answered without an HTTP status line",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_and_refuses_the_rest() {
        let u = WebhookUrl::parse("http://127.0.0.1:8080/hooks/x?y=1").expect("url");
        assert_eq!(
            (u.addr.as_str(), u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:8080", "127.0.0.1:8080", "/hooks/x?y=1")
        );
        let u = WebhookUrl::parse("http://relay.local").expect("url");
        assert_eq!((u.addr.as_str(), u.path.as_str()), ("relay.local:80", "/"));
        let u = WebhookUrl::parse("http://[::1]/h").expect("url");
        assert_eq!(u.addr, "[::1]:80");
        let u = WebhookUrl::parse("http://[::1]:9/h").expect("url");
        assert_eq!(u.addr, "[::1]:9");
        let u = WebhookUrl::parse("http://h:1?q").expect("url");
        assert_eq!(u.path, "/?q");
        for bad in [
            "https://example.com/",
            "ftp://x",
            "http://",
            "http://user:pw@host/",
            "http://host:99999/",
            "http://host:/",
            "http://host/a b",
            "http://ho st/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(1), s(30)), s(1));
        assert_eq!(backoff(2, s(1), s(30)), s(2));
        assert_eq!(backoff(5, s(1), s(30)), s(16));
        assert_eq!(backoff(6, s(1), s(30)), s(30));
        assert_eq!(backoff(400, s(1), s(30)), s(30));
    }

    #[test]
    fn client_errors_are_not_retried_but_timeouts_and_limits_are() {
        assert!(retryable(500) && retryable(503) && retryable(408) && retryable(429));
        assert!(!retryable(400) && !retryable(404));
    }
}
