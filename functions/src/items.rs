//! How runs look in API answers: the original system's item fields
//! (`runId, hostId, actionKey, state, attempts, maxAttempts, nextAttemptAt,
//! dlq, error, approvalStatus, canaryPassed, rollbackAttempted,
//! rollbackSucceeded, autoQueued`) plus the rest of the record.

use remediate_spool::{ApprovalStatus, Counts, RunRecord, RunState};
use serde::Serialize;
use serde::ser::{Impossible, SerializeMap, SerializeStruct, Serializer};
use serde_json::{Value, json};

/// The original's state names: queued, running, succeeded, failed (DLQ),
/// canceled, retry-scheduled, approval-pending; plus rejected, expired and
/// replayed, which the original folded into others.
pub fn seed_state(r: &RunRecord) -> &'static str {
    match r.state {
        RunState::Queued if r.attempts > 0 => "retry-scheduled",
        RunState::Queued => "queued",
        RunState::Held => "approval-pending",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Dlq => "failed",
        RunState::Canceled => "canceled",
        RunState::Rejected => "rejected",
        RunState::Expired => "expired",
        RunState::Replayed => "replayed",
    }
}

fn approval_status(s: ApprovalStatus) -> &'static str {
    match s {
        ApprovalStatus::None => "not-required",
        ApprovalStatus::Pending => "pending",
        ApprovalStatus::Approved => "approved",
        ApprovalStatus::Rejected => "rejected",
    }
}

/// One run as an API item; `with_history` adds the attempt history.
pub fn item(r: &RunRecord, with_history: bool) -> Value {
    serde_json::to_value(Item::new(r, with_history)).unwrap_or(Value::Null)
}

/// One run as an API item, serialized straight into an answer: the
/// record's own fields (the attempt history and notes only `with_history`),
/// `state` under the original's name with ours as `runState`, and the
/// original's `error`, `approvalStatus`, `canaryPassed`,
/// `rollbackAttempted` and `rollbackSucceeded`. [`item`] is the same as a
/// JSON value.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    record: &'a RunRecord,
    with_history: bool,
}

impl<'a> Item<'a> {
    pub fn new(record: &'a RunRecord, with_history: bool) -> Item<'a> {
        Item {
            record,
            with_history,
        }
    }
}

impl Serialize for Item<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let skip: &[&str] = if self.with_history {
            &["state"]
        } else {
            &["state", "history", "notes"]
        };
        let mut map = serializer.serialize_map(None)?;
        r.serialize(StructFields {
            map: &mut map,
            skip,
        })?;
        map.serialize_entry("runState", &r.state)?;
        map.serialize_entry("state", seed_state(r))?;
        map.serialize_entry("error", &r.last_error)?;
        map.serialize_entry("approvalStatus", approval_status(r.approval.status))?;
        map.serialize_entry("canaryPassed", &r.canary.passed)?;
        map.serialize_entry("rollbackAttempted", &r.rollback.attempted)?;
        map.serialize_entry("rollbackSucceeded", &r.rollback.succeeded)?;
        map.end()
    }
}

/// Serializes a struct's fields, but those named in `skip`, as entries of
/// a map being written: the record's own fields go into the item without
/// being copied into a JSON value first. Anything but a struct is an error.
struct StructFields<'m, M> {
    map: &'m mut M,
    skip: &'m [&'m str],
}

/// What [`StructFields`] answers to anything but a struct.
fn not_a_struct<E: serde::ser::Error>() -> E {
    E::custom("a run item is made of a struct's fields")
}

macro_rules! not_a_struct {
    ($($f:ident($t:ty)),* $(,)?) => {$(
        fn $f(self, _: $t) -> Result<(), M::Error> {
            Err(not_a_struct())
        }
    )*};
}

impl<'m, M: SerializeMap> Serializer for StructFields<'m, M> {
    type Ok = ();
    type Error = M::Error;
    type SerializeSeq = Impossible<(), M::Error>;
    type SerializeTuple = Impossible<(), M::Error>;
    type SerializeTupleStruct = Impossible<(), M::Error>;
    type SerializeTupleVariant = Impossible<(), M::Error>;
    type SerializeMap = Impossible<(), M::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), M::Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, M::Error> {
        Ok(self)
    }

    not_a_struct!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<(), M::Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), M::Error> {
        self.serialize_unit()
    }
    fn serialize_unit(self) -> Result<(), M::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), M::Error> {
        self.serialize_unit()
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), M::Error> {
        self.serialize_unit()
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), M::Error> {
        self.serialize_unit()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, M::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, M::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, M::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, M::Error> {
        Err(not_a_struct())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, M::Error> {
        Err(not_a_struct())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, M::Error> {
        Err(not_a_struct())
    }
}

impl<M: SerializeMap> SerializeStruct for StructFields<'_, M> {
    type Ok = ();
    type Error = M::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), M::Error> {
        if self.skip.contains(&key) {
            return Ok(());
        }
        self.map.serialize_entry(key, value)
    }

    fn end(self) -> Result<(), M::Error> {
        Ok(())
    }
}

/// Snapshot counts under the original's names, plus ours.
pub fn counts(c: &Counts) -> Value {
    json!({
        "queued": c.queued,
        "running": c.running,
        "succeeded": c.succeeded,
        "failed": c.dlq,
        "canceled": c.canceled,
        "dlq": c.dlq,
        "retryScheduled": c.retry_scheduled,
        "approvalPending": c.held,
        "rejected": c.rejected,
        "expired": c.expired,
        "replayed": c.replayed,
        "corrupt": c.corrupt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use remediate_spool::record::Note;
    use remediate_spool::{Attempt, AttemptResult, HostId, NewRun, RunId};

    /// A record with every optional part filled in: history, notes,
    /// idempotency key, error, canary and rollback outcomes.
    fn full_record() -> RunRecord {
        let host = HostId::parse("web-1").expect("host id");
        let mut new = NewRun::new(host.clone(), "demo-flaky", "ops");
        new.idempotency_key = Some(remediate_spool::IdemKey::parse("k-1").expect("key"));
        new.params.insert("port".into(), json!(8080));
        let now = chrono::Utc::now();
        let mut r = RunRecord::new(RunId::generate(), new, now, None);
        r.attempts = 1;
        r.last_error = Some("exit status 1".into());
        r.canary.passed = Some(false);
        r.rollback.attempted = true;
        r.rollback.succeeded = Some(true);
        r.history.push(Attempt {
            attempt: 1,
            started_at: now,
            finished_at: Some(now),
            worker: Some("pid-1".into()),
            result: AttemptResult {
                exit_status: Some(1),
                error: Some("exit status 1".into()),
                ..AttemptResult::default()
            },
        });
        r.notes.push(Note {
            at: now,
            kind: "operator".into(),
            data: json!({ "text": "looked at it" }),
        });
        r
    }

    /// The item as it was made before [`Item`]: the record as a JSON value,
    /// changed in place.
    fn reference(r: &RunRecord, with_history: bool) -> Value {
        let mut v = serde_json::to_value(r).expect("record serializes");
        let m = v.as_object_mut().expect("an object");
        if !with_history {
            m.remove("history");
            m.remove("notes");
        }
        m.insert("runState".into(), json!(r.state));
        m.insert("state".into(), json!(seed_state(r)));
        m.insert("error".into(), json!(r.last_error));
        m.insert(
            "approvalStatus".into(),
            json!(approval_status(r.approval.status)),
        );
        m.insert("canaryPassed".into(), json!(r.canary.passed));
        m.insert("rollbackAttempted".into(), json!(r.rollback.attempted));
        m.insert("rollbackSucceeded".into(), json!(r.rollback.succeeded));
        v
    }

    #[test]
    fn items_have_every_field_of_the_record_and_the_originals_names() {
        let full = full_record();
        let bare = RunRecord::new(
            RunId::generate(),
            NewRun::new(
                HostId::parse("web-2").expect("host id"),
                "demo-system-info",
                "ops",
            ),
            chrono::Utc::now(),
            None,
        );
        for r in [&full, &bare] {
            for with_history in [false, true] {
                let got = item(r, with_history);
                assert_eq!(
                    got,
                    reference(r, with_history),
                    "with_history {with_history}"
                );
                // Written straight into an answer, the same JSON.
                let text = serde_json::to_string(&Item::new(r, with_history)).expect("serializes");
                let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(parsed, got);
            }
        }
        let short = item(&full, false);
        assert!(short.get("history").is_none() && short.get("notes").is_none());
        assert_eq!(short["state"], "retry-scheduled");
        assert_eq!(short["runState"], "queued");
        let long = item(&full, true);
        assert_eq!(long["history"].as_array().map(Vec::len), Some(1));
        assert_eq!(long["notes"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn struct_fields_refuses_what_is_not_a_struct() {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None).expect("map");
        let err = 5u32
            .serialize(StructFields {
                map: &mut map,
                skip: &[],
            })
            .expect_err("a number is not a struct");
        assert!(err.to_string().contains("struct"), "{err}");
    }
}
