//! Object keys and queue names of the S3 + SQS store. Everything here is a
//! pure function of ids, so the layout is written (and tested) in one place.

use crate::id::{HostId, RunId};
use crate::index::Bucket;
use crate::local::Dir;
use crate::record::RunRecord;

/// The run record: the same self-validating event log as a local record file.
pub(crate) fn record_key(host: &HostId, id: &RunId) -> String {
    format!("hosts/{}/runs/{}.log", host.as_str(), id.as_str())
}

pub(crate) fn runs_prefix(host: &HostId) -> String {
    format!("hosts/{}/runs/", host.as_str())
}

/// Claim marker of `claim_next` (one consumer at a time per run).
pub(crate) fn claim_key(host: &HostId, id: &RunId) -> String {
    format!("hosts/{}/claims/{}", host.as_str(), id.as_str())
}

pub(crate) fn claims_prefix(host: &HostId) -> String {
    format!("hosts/{}/claims/", host.as_str())
}

pub(crate) fn policy_key(host: &HostId) -> String {
    format!("hosts/{}/policy.json", host.as_str())
}

/// API-only: run id -> host, created first with `If-None-Match: *`.
pub(crate) fn pointer_key(id: &RunId) -> String {
    format!("run-ids/{}", id.as_str())
}

/// API-only: the host's gate lease, held while an execute checks its
/// gates and enqueues.
pub(crate) fn gate_key(host: &HostId) -> String {
    format!("gates/{}.lease", host.as_str())
}

pub(crate) fn activity_key(host: &HostId) -> String {
    format!("activity/{}.json", host.as_str())
}

pub(crate) fn audit_key(day: &str, millis: i64, nonce: u64) -> String {
    format!("audit/{day}/{millis:013}-{nonce:016x}.json")
}

/// The name of a bucket in index keys (the API's camelCase name).
pub(crate) fn bucket_name(b: Bucket) -> &'static str {
    match b {
        Bucket::Queued => "queued",
        Bucket::RetryScheduled => "retryScheduled",
        Bucket::Held => "held",
        Bucket::Running => "running",
        Bucket::Succeeded => "succeeded",
        Bucket::Rejected => "rejected",
        Bucket::Expired => "expired",
        Bucket::Canceled => "canceled",
        Bucket::Replayed => "replayed",
        Bucket::Dlq => "dlq",
        Bucket::Corrupt => "corrupt",
    }
}

fn bucket_of_name(s: &str) -> Option<Bucket> {
    Bucket::ALL.into_iter().find(|b| bucket_name(*b) == s)
}

/// The bucket a record is counted in when nobody holds a claim on it.
pub(crate) fn bucket_of(record: &RunRecord) -> Bucket {
    Bucket::of(record, Dir::for_state(record.state))
}

pub(crate) fn index_host_prefix(host: &HostId) -> String {
    format!("hosts/{}/index/", host.as_str())
}

pub(crate) fn index_prefix(host: &HostId, b: Bucket) -> String {
    format!("hosts/{}/index/{}/", host.as_str(), bucket_name(b))
}

/// One index entry, decoded from its key alone (no read of its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub bucket: Bucket,
    pub requested_ms: i64,
    pub run_id: RunId,
    pub due_ms: i64,
    pub version: u64,
}

/// `hosts/<host>/index/<bucket>/<requestedMs>~<runId>~<dueMs>~<version>`.
/// `~` cannot occur in an id; times are zero-padded so that a listing (in
/// key order) is oldest request first.
pub(crate) fn index_key(record: &RunRecord, version: u64) -> String {
    index_key_in(record, version, bucket_of(record))
}

/// The entry of a run claimed by `claim_next` and not started yet: it is
/// counted as running, as the local spool counts a file in `running/`.
pub(crate) fn claimed_index_key(record: &RunRecord, version: u64) -> String {
    index_key_in(record, version, Bucket::Running)
}

fn index_key_in(record: &RunRecord, version: u64, bucket: Bucket) -> String {
    format!(
        "{}{:013}~{}~{:013}~{:010}",
        index_prefix(&record.host_id, bucket),
        record.requested_at.timestamp_millis().max(0),
        record.run_id.as_str(),
        record.due_at().timestamp_millis().max(0),
        version
    )
}

pub(crate) fn parse_index_key(key: &str) -> Option<IndexEntry> {
    let rest = key.strip_prefix("hosts/")?;
    let (_host, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("index/")?;
    let (bucket, name) = rest.split_once('/')?;
    let mut parts = name.split('~');
    let requested_ms = parts.next()?.parse().ok()?;
    let run_id = RunId::parse(parts.next()?).ok()?;
    let due_ms = parts.next()?.parse().ok()?;
    let version = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(IndexEntry {
        bucket: bucket_of_name(bucket)?,
        requested_ms,
        run_id,
        due_ms,
        version,
    })
}

/// The host of a key under `hosts/`.
pub(crate) fn host_of_prefix(prefix: &str) -> Option<HostId> {
    let h = prefix.strip_prefix("hosts/")?.strip_suffix('/')?;
    HostId::parse(h).ok()
}

const SQS_NAME_MAX: usize = 80;

/// `(<prefix>-<host>, <prefix>-<host>-dlq)`. SQS allows only `[A-Za-z0-9_-]`
/// and 80 characters, host ids also allow `. : @` and 128 bytes: such a host
/// gets its other characters replaced by `_`, is cut short, and carries 8 hex
/// digits of a SHA-256 of the real id, so two hosts never share a queue.
pub fn queue_names(prefix: &str, host: &HostId) -> (String, String) {
    let h = host.as_str();
    let plain = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let fits = prefix.len() + 1 + h.len() + 4 <= SQS_NAME_MAX;
    let base = if plain && fits {
        format!("{prefix}-{h}")
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(h.as_bytes());
        let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let room = SQS_NAME_MAX.saturating_sub(prefix.len() + 1 + 1 + tag.len() + 4);
        let clean: String = h
            .chars()
            .take(room)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{prefix}-{clean}-{tag}")
    };
    let dlq = format!("{base}-dlq");
    (base, dlq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NewRun;

    fn host(s: &str) -> HostId {
        HostId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn index_keys_round_trip_and_sort_by_request_time() {
        let new = NewRun {
            host_id: host("web-1"),
            action_key: "restart".into(),
            params: Default::default(),
            requested_by: "t".into(),
            idempotency_key: None,
            max_attempts: 3,
            expires_at: None,
            idempotent: true,
            approval_required: false,
            canary: Default::default(),
            rollback: Default::default(),
            auto_queued: false,
            auto_reason: None,
            auto_tier: None,
            risk: None,
            tier: None,
        };
        let t0 = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap_or_default();
        let a = RunRecord::new(RunId::generate(), new.clone(), t0, None);
        let b = RunRecord::new(
            RunId::generate(),
            new,
            t0 + chrono::Duration::seconds(1),
            None,
        );
        let (ka, kb) = (index_key(&a, 1), index_key(&b, 7));
        assert!(ka < kb, "{ka} should sort before {kb}");
        assert!(ka.starts_with("hosts/web-1/index/queued/"), "{ka}");
        let e = parse_index_key(&kb).unwrap_or_else(|| panic!("unparsable {kb}"));
        assert_eq!(e.run_id, b.run_id);
        assert_eq!(e.bucket, Bucket::Queued);
        assert_eq!(e.version, 7);
        assert_eq!(e.requested_ms, 1_700_000_001_000);
        assert_eq!(e.due_ms, 1_700_000_001_000);
        assert_eq!(parse_index_key("hosts/web-1/index/queued/junk"), None);
    }

    #[test]
    fn queue_names_are_valid_sqs_names_and_distinct() {
        let valid = |s: &str| {
            s.len() <= 80
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let (q, d) = queue_names("vps-remediate", &host("web-1"));
        assert_eq!(q, "vps-remediate-web-1");
        assert_eq!(d, "vps-remediate-web-1-dlq");
        let long = "h".repeat(128);
        let odd = [host("a.b"), host("a_b"), host("a:b@c"), host(&long)];
        let mut seen = std::collections::HashSet::new();
        for h in &odd {
            let (q, d) = queue_names("vps-remediate", h);
            assert!(valid(&q) && valid(&d), "{q} / {d}");
            assert!(seen.insert(q), "two hosts share a queue");
        }
    }
}
