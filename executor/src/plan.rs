//! What the executor asks of policy and catalog before it runs a claimed run:
//! is the host enabled, and what exactly may run now under the host's
//! *current* policy. The [`Planner`] trait is the seam between the daemon and
//! the config crate, so the daemon's outcome paths are tested with a
//! [`StaticPlanner`] and real processes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use remediate_spool::{HostId, RunRecord};

use crate::error::Result;
use crate::runner::RunnerConfig;

/// One claimed run, rendered and checked against the host's current policy.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Commands, in order; the run stops at the first failure.
    pub commands: Vec<Vec<String>>,
    /// Checks run after the commands succeed; a failing check fails the run.
    pub canary_checks: Vec<Vec<String>>,
    /// Run once when the commands or the canary fail, if `auto_rollback`.
    pub rollback: Vec<Vec<String>>,
    /// Prefix every command with `sudo -n` (the action declares it).
    pub sudo: bool,
    /// Timeout, kill grace and output cap from the host's current policy.
    pub runner: RunnerConfig,
    /// The host's `autoRollback` knob.
    pub auto_rollback: bool,
    /// Delay before the next attempt if this one fails and may be retried.
    pub retry_delay: Duration,
}

/// Why a claimed run may not run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The guard (or the catalog) refuses it under the current policy:
    /// dead-lettered as `policy_blocked` without an attempt.
    PolicyBlocked(String),
}

/// What the daemon needs from configuration. Implementations read the
/// current host policy each time: a policy change applies to the next run.
pub trait Planner: Send + Sync + std::fmt::Debug {
    /// Whether the host is enabled; a disabled host's runs are canceled.
    fn host_enabled(&self, host: &HostId) -> Result<bool>;

    /// Renders the run's action for attempt number `attempt` and checks
    /// every command (commands, canary checks, rollback) with the guard.
    fn prepare(&self, run: &RunRecord, attempt: u32) -> Result<Result<Prepared, Refusal>>;
}

/// One action of a [`StaticPlanner`].
#[derive(Debug, Clone, Default)]
pub struct StaticAction {
    pub commands: Vec<Vec<String>>,
    pub canary_checks: Vec<Vec<String>>,
    pub rollback: Vec<Vec<String>>,
    pub sudo: bool,
}

/// A planner with a fixed catalog and settings, changeable at run time (to
/// disable a host or block an action, as an operator would). For tests and
/// benchmarks; `{run_id}` and `{attempt}` in argv words are filled in.
#[derive(Debug, Default)]
pub struct StaticPlanner {
    inner: Mutex<StaticInner>,
}

#[derive(Debug, Default)]
struct StaticInner {
    actions: BTreeMap<String, StaticAction>,
    disabled_hosts: BTreeSet<String>,
    blocked_actions: BTreeSet<String>,
    runner: RunnerConfig,
    auto_rollback: bool,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl StaticPlanner {
    pub fn new(runner: RunnerConfig) -> Self {
        StaticPlanner {
            inner: Mutex::new(StaticInner {
                runner,
                auto_rollback: true,
                backoff_base: Duration::from_secs(15),
                backoff_max: Duration::from_secs(900),
                ..StaticInner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StaticInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn action(&self, key: &str, action: StaticAction) -> &Self {
        self.lock().actions.insert(key.to_string(), action);
        self
    }

    pub fn set_host_enabled(&self, host: &str, enabled: bool) {
        let mut g = self.lock();
        if enabled {
            g.disabled_hosts.remove(host);
        } else {
            g.disabled_hosts.insert(host.to_string());
        }
    }

    pub fn set_blocked(&self, action: &str, blocked: bool) {
        let mut g = self.lock();
        if blocked {
            g.blocked_actions.insert(action.to_string());
        } else {
            g.blocked_actions.remove(action);
        }
    }

    pub fn set_auto_rollback(&self, on: bool) {
        self.lock().auto_rollback = on;
    }

    pub fn set_backoff(&self, base: Duration, max: Duration) {
        let mut g = self.lock();
        g.backoff_base = base;
        g.backoff_max = max;
    }
}

/// `min(base * 2^(attempt-1), max)`: the seed's retry delay.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(63);
    let factor = 1u32.checked_shl(exp).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

fn fill(words: &[Vec<String>], run_id: &str, attempt: u32) -> Vec<Vec<String>> {
    let attempt = attempt.to_string();
    words
        .iter()
        .map(|argv| {
            argv.iter()
                .map(|w| w.replace("{run_id}", run_id).replace("{attempt}", &attempt))
                .collect()
        })
        .collect()
}

impl Planner for StaticPlanner {
    fn host_enabled(&self, host: &HostId) -> Result<bool> {
        Ok(!self.lock().disabled_hosts.contains(host.as_str()))
    }

    fn prepare(&self, run: &RunRecord, attempt: u32) -> Result<Result<Prepared, Refusal>> {
        let g = self.lock();
        if g.blocked_actions.contains(&run.action_key) {
            return Ok(Err(Refusal::PolicyBlocked(format!(
                "action {} is blocked by the host's current guard policy",
                run.action_key
            ))));
        }
        let Some(a) = g.actions.get(&run.action_key) else {
            return Ok(Err(Refusal::PolicyBlocked(format!(
                "action {} is not in the catalog",
                run.action_key
            ))));
        };
        let id = run.run_id.as_str();
        Ok(Ok(Prepared {
            commands: fill(&a.commands, id, attempt),
            canary_checks: fill(&a.canary_checks, id, attempt),
            rollback: fill(&a.rollback, id, attempt),
            sudo: a.sudo,
            runner: g.runner.clone(),
            auto_rollback: g.auto_rollback,
            retry_delay: backoff(attempt, g.backoff_base, g.backoff_max),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(0, s(15), s(900)), s(15));
        assert_eq!(backoff(1, s(15), s(900)), s(15));
        assert_eq!(backoff(2, s(15), s(900)), s(30));
        assert_eq!(backoff(3, s(15), s(900)), s(60));
        assert_eq!(backoff(7, s(15), s(900)), s(900));
        assert_eq!(backoff(200, s(15), s(900)), s(900));
    }
}
