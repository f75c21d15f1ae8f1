//! The on-disk record format: a self-validating, append-only event log.
//!
//! Each line is `R1 <len:8 hex> <crc32:8 hex> <json>\n`, where `len` is the
//! byte length of `<json>` and `crc32` its CRC-32 (IEEE). Events carry a
//! sequence number starting at 0, and the first one is `enqueued` with the
//! whole initial record.
//!
//! Reading is strict: a line that ends in `\n` but fails any check makes the
//! file corrupt (a hand edit, a foreign file). Only a final fragment *without*
//! its newline is forgiven: that is what a crash in the middle of an append
//! leaves, since the newline is the last byte written. The fragment is
//! reported as a torn tail and cut off before the next append.

use crate::record::{Event, EventKind, RunRecord};
use crate::state;

const MAGIC: &[u8] = b"R1 ";
/// Longest event line accepted (captured output is capped well below this).
pub const MAX_LINE: usize = 64 << 20;

/// Encodes one event as a log line.
pub fn encode(ev: &Event) -> Vec<u8> {
    // Serializing our own types to a Vec cannot fail: no maps with non-string
    // keys, no custom serializers that error.
    let json = serde_json::to_vec(ev).unwrap_or_default();
    let crc = crc32fast::hash(&json);
    let mut line = Vec::with_capacity(json.len() + 22);
    line.extend_from_slice(MAGIC);
    line.extend_from_slice(format!("{:08x} {:08x} ", json.len(), crc).as_bytes());
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// A successfully read log.
#[derive(Debug)]
pub struct Decoded {
    pub record: RunRecord,
    pub events: Vec<Event>,
    /// Bytes of the file that are valid lines; anything after is a torn tail.
    pub valid_len: u64,
    pub torn_tail: bool,
}

/// Why a file is not a valid record.
pub type CorruptReason = String;

/// Decodes and validates a whole record file.
pub fn decode(bytes: &[u8]) -> Result<Decoded, CorruptReason> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let mut events = Vec::new();
    let mut pos = 0usize;
    let mut torn_tail = false;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: an append that a crash cut short.
            torn_tail = true;
            break;
        };
        let line = &rest[..nl];
        let ev = decode_line(line).map_err(|e| format!("line {}: {e}", events.len() + 1))?;
        if ev.seq != events.len() as u64 {
            return Err(format!(
                "line {}: sequence {} where {} was expected",
                events.len() + 1,
                ev.seq,
                events.len()
            ));
        }
        events.push(ev);
        pos += nl + 1;
    }
    if events.is_empty() {
        return Err("no complete event".into());
    }
    if !matches!(events[0].kind, EventKind::Enqueued { .. }) {
        return Err("first event is not `enqueued`".into());
    }
    let record = state::fold(&events).map_err(|e| format!("impossible history: {e}"))?;
    Ok(Decoded {
        record,
        events,
        valid_len: pos as u64,
        torn_tail,
    })
}

fn decode_line(line: &[u8]) -> Result<Event, String> {
    if line.len() > MAX_LINE {
        return Err("line too long".into());
    }
    let rest = line
        .strip_prefix(MAGIC)
        .ok_or("not a record line (bad magic or version)")?;
    if rest.len() < 18 || rest[8] != b' ' || rest[17] != b' ' {
        return Err("malformed header".into());
    }
    let len = parse_hex(&rest[..8]).ok_or("malformed length")?;
    let crc = parse_hex(&rest[9..17]).ok_or("malformed checksum")?;
    let json = &rest[18..];
    if json.len() as u64 != u64::from(len) {
        return Err(format!("length {} but header says {len}", json.len()));
    }
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("bad event: {e}"))
}

fn parse_hex(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b).ok()?;
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{HostId, RunId};
    use crate::record::{NewRun, RunRecord};
    use chrono::Utc;

    fn sample() -> Event {
        let new = NewRun {
            host_id: HostId::parse("h").expect("id"),
            action_key: "a".into(),
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
        let rec = RunRecord::new(RunId::generate(), new, Utc::now(), None);
        Event {
            seq: 0,
            at: Utc::now(),
            kind: EventKind::Enqueued {
                record: Box::new(rec),
            },
        }
    }

    #[test]
    fn roundtrip_and_torn_tail() {
        let line = encode(&sample());
        let d = decode(&line).expect("valid");
        assert!(!d.torn_tail);
        let mut torn = line.clone();
        torn.extend_from_slice(&line[..10]);
        let d = decode(&torn).expect("torn tail is forgiven");
        assert!(d.torn_tail);
        assert_eq!(d.valid_len, line.len() as u64);
    }

    #[test]
    fn corruptions_are_rejected() {
        let line = encode(&sample());
        assert!(decode(b"").is_err());
        assert!(decode(&line[..line.len() - 1]).is_err(), "only a torn line");
        let mut flipped = line.clone();
        let i = line.len() - 5;
        flipped[i] ^= 0x01;
        assert!(decode(&flipped).is_err(), "hand edit");
        assert!(decode(b"hello world\n").is_err(), "foreign");
        let mut twice = line.clone();
        twice.extend_from_slice(&line);
        assert!(decode(&twice).is_err(), "duplicated sequence");
    }
}
