//! Identifiers that come from outside (host ids, run ids, idempotency keys).
//!
//! They become file names, so they pass through one validated type first:
//! ASCII letters, digits and `-_.:@`, 1..=128 bytes, not starting with a dot.
//! That excludes `/`, `..`, NUL, whitespace and anything a shell or a path
//! could give meaning to. Nothing else in the crate turns a string into a path.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SpoolError;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A string that is safe to use as one path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeId(Arc<str>);

impl SafeId {
    /// Validates `s`; `what` names the id in the error ("hostId", "runId", ...).
    pub fn parse(what: &'static str, s: &str) -> Result<Self, SpoolError> {
        let problem = if s.is_empty() {
            Some("is empty")
        } else if s.len() > MAX_ID_LEN {
            Some("is longer than 128 bytes")
        } else if s.starts_with('.') {
            Some("starts with a dot")
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
        {
            Some("may only hold ASCII letters, digits and - _ . : @")
        } else {
            None
        };
        match problem {
            Some(reason) => Err(SpoolError::InvalidId {
                what,
                value: s.chars().take(80).collect(),
                reason,
            }),
            None => Ok(SafeId(Arc::from(s))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SafeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

macro_rules! id_type {
    ($name:ident, $what:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(SafeId);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, SpoolError> {
                SafeId::parse($what, s).map($name)
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = SpoolError;
            fn from_str(s: &str) -> Result<Self, SpoolError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    HostId,
    "hostId",
    "The id of a host; names its spool directory."
);
id_type!(RunId, "runId", "The id of a run; names its record file.");
id_type!(IdemKey, "idempotencyKey", "A caller's idempotency key.");

impl RunId {
    /// The smallest run id, for range queries.
    pub(crate) fn min() -> Self {
        // Made once: range queries ask for it on every execute.
        static MIN: std::sync::LazyLock<RunId> =
            std::sync::LazyLock::new(|| RunId(SafeId(Arc::from(""))));
        MIN.clone()
    }

    /// A fresh, time-ordered run id (UUIDv7 in lower-case hex, `r` prefix).
    pub fn generate() -> Self {
        let s = format!("r{}", uuid::Uuid::now_v7().simple());
        RunId(SafeId(Arc::from(s.as_str())))
    }

    /// The run id an idempotency key maps to, for one host: the same key on
    /// the same host always names the same run, so a repeat can find it.
    pub fn for_key(host: &HostId, key: &IdemKey) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(host.as_str().as_bytes());
        h.update([0u8]);
        h.update(key.as_str().as_bytes());
        let digest = h.finalize();
        let mut s = String::with_capacity(33);
        s.push('k');
        for b in &digest[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        RunId(SafeId(Arc::from(s.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["host-a", "web01.example", "r0192", "a:b@c_d", "X"] {
            assert!(HostId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_anything_that_could_be_a_path() {
        let long = "a".repeat(129);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\0b", "a b", "a\nb", ".hidden", "ä", &long,
            "a\\b", "$(x)", "a;b",
        ] {
            let err = HostId::parse(bad).expect_err(bad);
            assert_eq!(err.code(), "invalid_id");
            assert!(err.to_string().contains("hostId"));
        }
    }

    #[test]
    fn keyed_run_ids_are_stable_and_distinct_per_host() {
        let a = HostId::parse("a").expect("id");
        let b = HostId::parse("b").expect("id");
        let k = IdemKey::parse("deploy-1").expect("id");
        assert_eq!(RunId::for_key(&a, &k), RunId::for_key(&a, &k));
        assert_ne!(RunId::for_key(&a, &k), RunId::for_key(&b, &k));
        assert!(RunId::parse(RunId::for_key(&a, &k).as_str()).is_ok());
        assert!(RunId::parse(RunId::generate().as_str()).is_ok());
    }
}
