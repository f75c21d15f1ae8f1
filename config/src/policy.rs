//! The typed per-host policy and guard policy. Both are built from validated
//! knob values (see [`crate::knobs`]) and serialize with the seed's camelCase
//! field names.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::knobs::{Group, Values};
use crate::types::{RiskThreshold, Tier};

/// Retry, queue, autonomy, approval, canary and execute limits for a host.
/// Field names and units are the seed's (`*Seconds`, `*Minutes`, `*Ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Attempts a run gets before dead-lettering (frozen into the run at enqueue).
    pub max_retry_attempts: u32,
    /// Base of the exponential retry delay, seconds.
    pub retry_backoff_seconds: u64,
    /// Cap of the retry delay, seconds; at least the base.
    pub retry_backoff_max_seconds: u64,
    /// Queued or held runs one host may have.
    pub max_queue_per_host: u32,
    /// Queued or held runs across all hosts.
    pub max_queue_total: u32,
    /// Minutes after the request at which a run not yet started expires.
    pub queue_ttl_minutes: u64,
    /// Per-command timeout, milliseconds.
    pub command_timeout_ms: u64,
    /// Bytes of output kept per stream per command.
    pub max_buffer_bytes: u64,
    /// Whether an execute request wakes the executor at once.
    pub queue_autodrain: bool,
    /// Whether the planner may queue runs on its own.
    pub autonomous_enabled: bool,
    /// Highest tier the planner may queue.
    pub autonomous_max_tier: Tier,
    /// Runs the planner may queue per cycle.
    pub autonomous_max_queued_per_cycle: u32,
    /// Runs the planner may queue per host per hour.
    pub autonomous_max_queued_per_hour: u32,
    /// Risk from which approval is required.
    pub approval_risk_threshold: RiskThreshold,
    /// Share of hosts (percent) an autonomous guarded action reaches.
    pub canary_rollout_percent: u32,
    /// Whether actions without canary checks are kept from autonomy.
    pub canary_require_checks: bool,
    /// Whether rollback commands run when a run or its canary fails.
    pub auto_rollback: bool,
    /// Maximum age of the dry-run an execute needs, minutes.
    pub dry_run_max_age_minutes: u64,
    /// Minimum minutes between executes of one action on one host.
    pub execute_cooldown_minutes: u64,
    /// Manual executes per host per hour.
    pub max_execute_per_hour: u32,
}

impl Policy {
    /// The base retry delay.
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_secs(self.retry_backoff_seconds)
    }
    /// The retry delay cap.
    pub fn retry_backoff_max(&self) -> Duration {
        Duration::from_secs(self.retry_backoff_max_seconds)
    }
    /// How long a run may wait before it expires.
    pub fn queue_ttl(&self) -> Duration {
        Duration::from_secs(self.queue_ttl_minutes.saturating_mul(60))
    }
    /// The per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
    /// Maximum age of a dry-run that allows an execute.
    pub fn dry_run_max_age(&self) -> Duration {
        Duration::from_secs(self.dry_run_max_age_minutes.saturating_mul(60))
    }
    /// Minimum time between executes of one action on one host.
    pub fn execute_cooldown(&self) -> Duration {
        Duration::from_secs(self.execute_cooldown_minutes.saturating_mul(60))
    }
}

impl Default for Policy {
    /// The built-in defaults (the balanced profile with no env or file).
    fn default() -> Self {
        let json = Values::defaults().group_json(Group::Policy);
        serde_json::from_value(json).expect("built-in defaults build a Policy (tested)")
    }
}

/// The guard's per-host settings. The fixed rules (no shells, absolute
/// allowlisted executables, option checks, ...) are in [`crate::guard`] and
/// cannot be turned off; these knobs tune the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardPolicy {
    /// Only executables of the built-in allowlist may run, and
    /// `allowlist_regex` applies. When off, other executables in the system
    /// directories may run, but every fixed rule still applies.
    pub enforce_allowlist: bool,
    /// Most commands in each list of an action (commands, canary, rollback).
    pub max_commands_per_action: u32,
    /// Most characters of one command, argv joined with single spaces.
    pub max_command_length: u32,
    /// If set (and the allowlist enforced), every command joined with single
    /// spaces must match.
    pub allowlist_regex: Option<GuardRegex>,
    /// If set, a command joined with single spaces that matches is blocked.
    pub blocklist_regex: Option<GuardRegex>,
}

impl Default for GuardPolicy {
    /// The built-in defaults.
    fn default() -> Self {
        let json = Values::defaults().group_json(Group::Guard);
        serde_json::from_value(json).expect("built-in defaults build a GuardPolicy (tested)")
    }
}

/// A compiled guard regex that serializes as its pattern.
#[derive(Debug, Clone)]
pub struct GuardRegex(regex::Regex);

impl GuardRegex {
    /// Compile a pattern with the guard's size limit.
    pub fn new(pattern: &str) -> Result<GuardRegex, String> {
        crate::knobs::compile_guard_regex(pattern).map(GuardRegex)
    }
    /// The pattern.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    /// Whether the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for GuardRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for GuardRegex {}

impl Serialize for GuardRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GuardRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GuardRegex::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_defaults() {
        let p = Policy::default();
        assert_eq!(p.max_retry_attempts, 3);
        assert_eq!(p.retry_backoff_max_seconds, 900);
        assert_eq!(p.autonomous_max_tier, Tier::SafeAuto);
        assert_eq!(p.approval_risk_threshold, RiskThreshold::Medium);
        assert_eq!(p.command_timeout(), Duration::from_secs(20));
        let g = GuardPolicy::default();
        assert!(g.enforce_allowlist);
        assert_eq!((g.max_commands_per_action, g.max_command_length), (20, 800));
        assert!(g.allowlist_regex.is_none() && g.blocklist_regex.is_none());
    }

    #[test]
    fn policy_serializes_camel_case() {
        let json = serde_json::to_value(Policy::default()).expect("json");
        assert_eq!(json["maxRetryAttempts"], 3);
        assert_eq!(json["autonomousMaxTier"], "safe_auto");
        let g = GuardPolicy {
            blocklist_regex: Some(GuardRegex::new("rm -rf").expect("regex")),
            ..GuardPolicy::default()
        };
        let json = serde_json::to_value(&g).expect("json");
        assert_eq!(json["blocklistRegex"], "rm -rf");
        let back: GuardPolicy = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, g);
    }
}
