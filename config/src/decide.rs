//! Pure decisions from policy: retry delay, approval, the autonomous and
//! manual-execute gates, and canary rollout. No I/O, no clock: callers pass
//! counts and ages in, so every rule is unit-tested here.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::policy::Policy;
use crate::types::{Risk, RiskThreshold, Tier};

/// Delay before attempt `attempt + 1` after attempt `attempt` failed:
/// `min(base * 2^(attempt-1), max)`. Attempt numbers start at 1 (0 counts
/// as 1); overflow saturates to the maximum.
pub fn retry_delay(attempt: u32, policy: &Policy) -> Duration {
    let exp = attempt.saturating_sub(1);
    let secs = 1u64
        .checked_shl(exp)
        .and_then(|f| policy.retry_backoff_seconds.checked_mul(f))
        .unwrap_or(u64::MAX)
        .min(policy.retry_backoff_max_seconds);
    Duration::from_secs(secs)
}

/// Whether a run that has made `attempts` attempts may be retried, given the
/// `max_attempts` frozen into it at enqueue. When not, it is dead-lettered
/// with `max_attempts_exceeded`.
pub fn retry_allowed(attempts: u32, max_attempts: u32) -> bool {
    attempts < max_attempts
}

/// Whether a run must wait for an operator: always for `risky_manual`;
/// otherwise when the risk is at or above the threshold; never by risk when
/// the threshold is `none`.
pub fn approval_required(risk: Risk, tier: Tier, threshold: RiskThreshold) -> bool {
    tier == Tier::RiskyManual || threshold.min_risk().is_some_and(|min| risk >= min)
}

/// Why a run was not queued. `code()` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum SkipReason {
    /// `autonomousEnabled` is off for the host.
    AutonomyDisabled,
    /// `observe` actions are never queued autonomously.
    TierObserve,
    /// The action's tier is above `autonomousMaxTier`.
    TierAboveMax {
        /// The action's tier.
        tier: Tier,
        /// The policy's maximum.
        max: Tier,
    },
    /// `autonomousMaxQueuedPerCycle` runs were already queued this cycle.
    CycleCapReached {
        /// The cap.
        cap: u32,
    },
    /// `autonomousMaxQueuedPerHour` runs were queued for the host this hour.
    HourlyCapReached {
        /// The cap.
        cap: u32,
    },
    /// Manual executes this hour reached `maxExecutePerHour`.
    ExecuteHourlyLimit {
        /// The limit.
        limit: u32,
    },
    /// The host's backlog is at `maxQueuePerHost`.
    HostBacklogFull {
        /// The limit.
        limit: u32,
    },
    /// The global backlog is at `maxQueueTotal`.
    GlobalBacklogFull {
        /// The limit.
        limit: u32,
    },
    /// The action ran on the host less than `executeCooldownMinutes` ago.
    CooldownActive {
        /// Seconds until the cooldown ends.
        remaining_seconds: u64,
    },
    /// A run of this action is already queued, held or running on the host.
    AlreadyActive,
    /// The guard rejects the action's rendered commands.
    GuardBlocked,
    /// Canary checks are required and the action has none.
    CanaryChecksMissing,
    /// The host is outside the action's canary rollout.
    NotInCanaryRollout {
        /// The host's bucket, 0..=99.
        bucket: u32,
        /// The rollout percent.
        percent: u32,
    },
    /// An execute needs a dry-run of the same action first.
    DryRunMissing,
    /// The last dry-run is older than `dryRunMaxAgeMinutes`.
    DryRunStale {
        /// Its age in seconds.
        age_seconds: u64,
    },
}

impl SkipReason {
    /// Stable machine code (the serialized `code` field).
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::AutonomyDisabled => "autonomy_disabled",
            SkipReason::TierObserve => "tier_observe",
            SkipReason::TierAboveMax { .. } => "tier_above_max",
            SkipReason::CycleCapReached { .. } => "cycle_cap_reached",
            SkipReason::HourlyCapReached { .. } => "hourly_cap_reached",
            SkipReason::ExecuteHourlyLimit { .. } => "execute_hourly_limit",
            SkipReason::HostBacklogFull { .. } => "host_backlog_full",
            SkipReason::GlobalBacklogFull { .. } => "global_backlog_full",
            SkipReason::CooldownActive { .. } => "cooldown_active",
            SkipReason::AlreadyActive => "already_active",
            SkipReason::GuardBlocked => "guard_blocked",
            SkipReason::CanaryChecksMissing => "canary_checks_missing",
            SkipReason::NotInCanaryRollout { .. } => "not_in_canary_rollout",
            SkipReason::DryRunMissing => "dry_run_missing",
            SkipReason::DryRunStale { .. } => "dry_run_stale",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::AutonomyDisabled => {
                f.write_str("autonomous remediation is disabled for this host")
            }
            SkipReason::TierObserve => f.write_str("observe actions are never queued autonomously"),
            SkipReason::TierAboveMax { tier, max } => {
                write!(f, "tier {tier} is above the autonomous maximum {max}")
            }
            SkipReason::CycleCapReached { cap } => {
                write!(f, "{cap} run(s) already queued this cycle")
            }
            SkipReason::HourlyCapReached { cap } => {
                write!(f, "{cap} autonomous run(s) already queued this hour")
            }
            SkipReason::ExecuteHourlyLimit { limit } => {
                write!(f, "hourly execute limit of {limit} reached")
            }
            SkipReason::HostBacklogFull { limit } => write!(f, "host backlog is full ({limit})"),
            SkipReason::GlobalBacklogFull { limit } => {
                write!(f, "global backlog is full ({limit})")
            }
            SkipReason::CooldownActive { remaining_seconds } => {
                write!(f, "cooldown active for another {remaining_seconds} s")
            }
            SkipReason::AlreadyActive => {
                f.write_str("a run of this action is already active on this host")
            }
            SkipReason::GuardBlocked => f.write_str("the guard blocks this action's commands"),
            SkipReason::CanaryChecksMissing => {
                f.write_str("canary checks are required and the action has none")
            }
            SkipReason::NotInCanaryRollout { bucket, percent } => {
                write!(
                    f,
                    "host bucket {bucket} is outside the {percent} % canary rollout"
                )
            }
            SkipReason::DryRunMissing => {
                f.write_str("execute needs a dry-run of this action first")
            }
            SkipReason::DryRunStale { age_seconds } => {
                write!(f, "the last dry-run is too old ({age_seconds} s)")
            }
        }
    }
}

/// What the autonomous planner knows when it considers queueing an action
/// on a host. Counts are the caller's, taken from the store.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    /// The host's effective policy.
    pub policy: &'a Policy,
    /// The host.
    pub host_id: &'a str,
    /// The action.
    pub action_id: &'a str,
    /// The action's tier.
    pub tier: Tier,
    /// Whether the action declares canary checks.
    pub has_canary_checks: bool,
    /// Runs the planner has queued in this cycle (all hosts).
    pub queued_this_cycle: u32,
    /// Autonomous runs queued for this host in the last hour.
    pub queued_last_hour: u32,
    /// Queued and held runs of this host.
    pub host_backlog: u32,
    /// Queued and held runs of all hosts.
    pub global_backlog: u32,
    /// Time since this action last started on this host, if it ever did.
    pub since_last_execute: Option<Duration>,
    /// Whether a run of this action is queued, held or running on this host.
    pub active_run: bool,
    /// Whether the guard rejects the rendered action under the host's guard.
    pub guard_blocked: bool,
}

/// Whether the planner may queue this action on this host now. The gates,
/// in order (the first that fails is the reason): autonomy enabled; tier not
/// observe; tier at most the maximum; per-cycle cap; per-hour cap; host
/// backlog; global backlog; cooldown; no active run; guard passes; canary
/// checks present when required; and last, the host is inside the action's
/// canary rollout ([`canary_selected`]).
pub fn autonomous_gate(input: &GateInput<'_>) -> Result<(), SkipReason> {
    let p = input.policy;
    if !p.autonomous_enabled {
        return Err(SkipReason::AutonomyDisabled);
    }
    if input.tier == Tier::Observe {
        return Err(SkipReason::TierObserve);
    }
    if input.tier > p.autonomous_max_tier {
        return Err(SkipReason::TierAboveMax {
            tier: input.tier,
            max: p.autonomous_max_tier,
        });
    }
    if input.queued_this_cycle >= p.autonomous_max_queued_per_cycle {
        return Err(SkipReason::CycleCapReached {
            cap: p.autonomous_max_queued_per_cycle,
        });
    }
    if input.queued_last_hour >= p.autonomous_max_queued_per_hour {
        return Err(SkipReason::HourlyCapReached {
            cap: p.autonomous_max_queued_per_hour,
        });
    }
    check_backlog(p, input.host_backlog, input.global_backlog)?;
    check_cooldown(p, input.since_last_execute)?;
    if input.active_run {
        return Err(SkipReason::AlreadyActive);
    }
    if input.guard_blocked {
        return Err(SkipReason::GuardBlocked);
    }
    if p.canary_require_checks && !input.has_canary_checks {
        return Err(SkipReason::CanaryChecksMissing);
    }
    let percent = canary_percent(input.tier, p);
    let bucket = canary_bucket(input.host_id, input.action_id);
    if bucket >= percent {
        return Err(SkipReason::NotInCanaryRollout { bucket, percent });
    }
    Ok(())
}

fn check_backlog(p: &Policy, host_backlog: u32, global_backlog: u32) -> Result<(), SkipReason> {
    if host_backlog >= p.max_queue_per_host {
        return Err(SkipReason::HostBacklogFull {
            limit: p.max_queue_per_host,
        });
    }
    if global_backlog >= p.max_queue_total {
        return Err(SkipReason::GlobalBacklogFull {
            limit: p.max_queue_total,
        });
    }
    Ok(())
}

fn check_cooldown(p: &Policy, since_last_execute: Option<Duration>) -> Result<(), SkipReason> {
    let cooldown = p.execute_cooldown();
    match since_last_execute {
        Some(since) if since < cooldown => {
            let left = cooldown.saturating_sub(since);
            let remaining_seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            Err(SkipReason::CooldownActive { remaining_seconds })
        }
        _ => Ok(()),
    }
}

/// What an operator's execute request is checked against.
#[derive(Debug, Clone)]
pub struct ExecuteGateInput<'a> {
    /// The host's effective policy.
    pub policy: &'a Policy,
    /// Whether a run of this action is queued, held or running on this host.
    pub active_run: bool,
    /// Executes on this host in the last hour.
    pub executes_last_hour: u32,
    /// Time since this action last started on this host, if it ever did.
    pub since_last_execute: Option<Duration>,
    /// Queued and held runs of this host.
    pub host_backlog: u32,
    /// Queued and held runs of all hosts.
    pub global_backlog: u32,
    /// Age of the latest dry-run of this action on this host, if any.
    pub dry_run_age: Option<Duration>,
}

/// Whether an operator's execute may be queued, in the seed's order: an
/// active run (409), the hourly limit, cooldown, host backlog, global backlog
/// (429), then a fresh dry-run (409).
pub fn execute_gate(input: &ExecuteGateInput<'_>) -> Result<(), SkipReason> {
    let p = input.policy;
    if input.active_run {
        return Err(SkipReason::AlreadyActive);
    }
    if input.executes_last_hour >= p.max_execute_per_hour {
        return Err(SkipReason::ExecuteHourlyLimit {
            limit: p.max_execute_per_hour,
        });
    }
    check_cooldown(p, input.since_last_execute)?;
    check_backlog(p, input.host_backlog, input.global_backlog)?;
    match input.dry_run_age {
        None => Err(SkipReason::DryRunMissing),
        Some(age) if age > p.dry_run_max_age() => Err(SkipReason::DryRunStale {
            age_seconds: age.as_secs(),
        }),
        Some(_) => Ok(()),
    }
}

/// The host's canary bucket for an action, 0..=99: FNV-1a (32 bit) over the
/// UTF-16 code units of `"<hostId>::<actionId>"`, modulo 100. Each code unit
/// is XORed in whole, as the original's JavaScript did with `charCodeAt`.
pub fn canary_bucket(host_id: &str, action_id: &str) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let key = format!("{host_id}::{action_id}");
    let hash = key
        .encode_utf16()
        .fold(OFFSET, |h, unit| (h ^ u32::from(unit)).wrapping_mul(PRIME));
    hash % 100
}

/// The canary rollout percent of a tier: 100 for safe_auto, 0 for observe,
/// else `canaryRolloutPercent`.
pub fn canary_percent(tier: Tier, policy: &Policy) -> u32 {
    match tier {
        Tier::SafeAuto => 100,
        Tier::Observe => 0,
        Tier::GuardedAuto | Tier::RiskyManual => policy.canary_rollout_percent.min(100),
    }
}

/// Whether the host is inside the action's canary rollout: its bucket is
/// below the tier's percent.
pub fn canary_selected(host_id: &str, action_id: &str, tier: Tier, policy: &Policy) -> bool {
    canary_bucket(host_id, action_id) < canary_percent(tier, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let p = policy(); // 15 s base, 900 s cap
        let secs: Vec<u64> = (0..=8).map(|a| retry_delay(a, &p).as_secs()).collect();
        assert_eq!(secs, vec![15, 15, 30, 60, 120, 240, 480, 900, 900]);
    }

    #[test]
    fn retry_delay_never_overflows() {
        let p = Policy {
            retry_backoff_seconds: 3600,
            retry_backoff_max_seconds: 86_400,
            ..policy()
        };
        for attempt in [30, 63, 64, 65, 1000, u32::MAX] {
            assert_eq!(
                retry_delay(attempt, &p),
                Duration::from_secs(86_400),
                "{attempt}"
            );
        }
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        assert!(retry_allowed(1, 3));
        assert!(retry_allowed(2, 3));
        assert!(!retry_allowed(3, 3));
        assert!(!retry_allowed(4, 3));
    }

    #[test]
    fn approval_rules() {
        use Risk::*;
        use RiskThreshold as T;
        assert!(
            approval_required(Low, Tier::RiskyManual, T::None),
            "risky_manual always"
        );
        assert!(
            !approval_required(High, Tier::SafeAuto, T::None),
            "none never by risk"
        );
        assert!(approval_required(Medium, Tier::GuardedAuto, T::Medium));
        assert!(approval_required(High, Tier::GuardedAuto, T::Medium));
        assert!(!approval_required(Low, Tier::GuardedAuto, T::Medium));
        assert!(approval_required(Low, Tier::Observe, T::Low));
        assert!(!approval_required(Medium, Tier::SafeAuto, T::High));
        assert!(approval_required(High, Tier::SafeAuto, T::High));
    }

    #[test]
    fn canary_bucket_matches_the_original() {
        assert_eq!(canary_bucket("host-a", "action-a"), 5);
        // Non-ASCII is hashed by UTF-16 code unit, including surrogate pairs.
        let b = canary_bucket("hôst-😀", "a");
        assert!(b < 100);
        let p = policy();
        assert_eq!(canary_percent(Tier::SafeAuto, &p), 100);
        assert_eq!(canary_percent(Tier::Observe, &p), 0);
        assert_eq!(canary_percent(Tier::GuardedAuto, &p), 25);
        assert!(
            canary_selected("host-a", "action-a", Tier::GuardedAuto, &p),
            "5 < 25"
        );
        let one = Policy {
            canary_rollout_percent: 5,
            ..p.clone()
        };
        assert!(
            !canary_selected("host-a", "action-a", Tier::GuardedAuto, &one),
            "5 !< 5"
        );
        assert!(!canary_selected("host-a", "action-a", Tier::Observe, &p));
    }

    fn open_policy() -> Policy {
        Policy {
            autonomous_enabled: true,
            autonomous_max_tier: Tier::GuardedAuto,
            canary_rollout_percent: 100,
            ..policy()
        }
    }

    fn input(p: &Policy) -> GateInput<'_> {
        GateInput {
            policy: p,
            host_id: "host-a",
            action_id: "action-a",
            tier: Tier::GuardedAuto,
            has_canary_checks: true,
            queued_this_cycle: 0,
            queued_last_hour: 0,
            host_backlog: 0,
            global_backlog: 0,
            since_last_execute: None,
            active_run: false,
            guard_blocked: false,
        }
    }

    #[test]
    fn every_gate_has_its_reason_in_order() {
        let open = open_policy();
        assert_eq!(autonomous_gate(&input(&open)), Ok(()));
        let code = |i: GateInput<'_>| autonomous_gate(&i).map_err(|e| e.code());

        let off = Policy {
            autonomous_enabled: false,
            ..open.clone()
        };
        // Everything is wrong: the first gate wins.
        let all_bad = GateInput {
            tier: Tier::Observe,
            queued_this_cycle: 99,
            active_run: true,
            guard_blocked: true,
            ..input(&off)
        };
        assert_eq!(code(all_bad), Err("autonomy_disabled"));
        assert_eq!(
            code(GateInput {
                tier: Tier::Observe,
                ..input(&open)
            }),
            Err("tier_observe")
        );
        assert_eq!(
            code(GateInput {
                tier: Tier::RiskyManual,
                queued_this_cycle: 9,
                ..input(&open)
            }),
            Err("tier_above_max")
        );
        assert_eq!(
            code(GateInput {
                queued_this_cycle: 1,
                queued_last_hour: 9,
                ..input(&open)
            }),
            Err("cycle_cap_reached")
        );
        assert_eq!(
            code(GateInput {
                queued_last_hour: 4,
                host_backlog: 9,
                ..input(&open)
            }),
            Err("hourly_cap_reached")
        );
        assert_eq!(
            code(GateInput {
                host_backlog: 4,
                global_backlog: 999,
                ..input(&open)
            }),
            Err("host_backlog_full")
        );
        assert_eq!(
            code(GateInput {
                global_backlog: 200,
                since_last_execute: Some(Duration::ZERO),
                ..input(&open)
            }),
            Err("global_backlog_full")
        );
        assert_eq!(
            autonomous_gate(&GateInput {
                since_last_execute: Some(Duration::from_secs(299)),
                active_run: true,
                ..input(&open)
            }),
            Err(SkipReason::CooldownActive {
                remaining_seconds: 1
            })
        );
        assert_eq!(
            code(GateInput {
                since_last_execute: Some(Duration::from_secs(300)),
                active_run: true,
                guard_blocked: true,
                ..input(&open)
            }),
            Err("already_active")
        );
        assert_eq!(
            code(GateInput {
                guard_blocked: true,
                has_canary_checks: false,
                ..input(&open)
            }),
            Err("guard_blocked")
        );
        assert_eq!(
            code(GateInput {
                has_canary_checks: false,
                ..input(&open)
            }),
            Err("canary_checks_missing")
        );
        let relaxed = Policy {
            canary_require_checks: false,
            ..open.clone()
        };
        assert_eq!(
            code(GateInput {
                has_canary_checks: false,
                ..input(&relaxed)
            }),
            Ok(())
        );
        let narrow = Policy {
            canary_rollout_percent: 5,
            ..open.clone()
        };
        assert_eq!(
            autonomous_gate(&input(&narrow)),
            Err(SkipReason::NotInCanaryRollout {
                bucket: 5,
                percent: 5
            })
        );
        assert_eq!(
            code(GateInput {
                tier: Tier::SafeAuto,
                ..input(&narrow)
            }),
            Ok(()),
            "safe_auto rolls out to 100 %"
        );
    }

    #[test]
    fn skip_reasons_serialize_with_their_code() {
        let json = serde_json::to_value(SkipReason::CooldownActive {
            remaining_seconds: 7,
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"code": "cooldown_active", "remaining_seconds": 7})
        );
        assert_eq!(SkipReason::AlreadyActive.code(), "already_active");
    }

    #[test]
    fn execute_gate_order() {
        let p = policy();
        let ok = ExecuteGateInput {
            policy: &p,
            active_run: false,
            executes_last_hour: 0,
            since_last_execute: None,
            host_backlog: 0,
            global_backlog: 0,
            dry_run_age: Some(Duration::from_secs(60)),
        };
        assert_eq!(execute_gate(&ok), Ok(()));
        let code = |i: ExecuteGateInput<'_>| execute_gate(&i).map_err(|e| e.code());
        assert_eq!(
            code(ExecuteGateInput {
                active_run: true,
                executes_last_hour: 99,
                ..ok.clone()
            }),
            Err("already_active")
        );
        assert_eq!(
            code(ExecuteGateInput {
                executes_last_hour: 6,
                host_backlog: 99,
                ..ok.clone()
            }),
            Err("execute_hourly_limit")
        );
        assert_eq!(
            code(ExecuteGateInput {
                host_backlog: 4,
                ..ok.clone()
            }),
            Err("host_backlog_full")
        );
        assert_eq!(
            code(ExecuteGateInput {
                global_backlog: 200,
                ..ok.clone()
            }),
            Err("global_backlog_full")
        );
        assert_eq!(
            code(ExecuteGateInput {
                since_last_execute: Some(Duration::from_secs(10)),
                host_backlog: 4,
                dry_run_age: None,
                ..ok.clone()
            }),
            Err("cooldown_active")
        );
        assert_eq!(
            code(ExecuteGateInput {
                dry_run_age: None,
                ..ok.clone()
            }),
            Err("dry_run_missing")
        );
        assert_eq!(
            code(ExecuteGateInput {
                dry_run_age: Some(Duration::from_secs(31 * 60)),
                ..ok.clone()
            }),
            Err("dry_run_stale")
        );
    }
}
