//! The [`Planner`] of production: the loaded settings, the action catalog and
//! each host's policy document in the spool (`hosts/<hostId>.json`), read
//! again for every run so that a policy change applies to the next run (the
//! effective policy is built once per distinct document).

use std::sync::Arc;
use std::time::Duration;

use remediate_config::{Catalog, EffectiveCache, Loaded, RenderContext, guard, retry_delay};
use remediate_spool::{HostId, LocalSpool, RunRecord};

use crate::error::{ExecError, Result};
use crate::plan::{Planner, Prepared, Refusal};
use crate::runner::RunnerConfig;

/// Policy and catalog from the config crate.
#[derive(Debug)]
pub struct ConfigPlanner {
    pub loaded: Loaded,
    pub catalog: Catalog,
    pub spool: LocalSpool,
    /// Between SIGTERM and SIGKILL when a command times out.
    pub kill_grace: Duration,
    /// Effective policies by host document (read again for every run).
    pub effective: EffectiveCache,
}

impl ConfigPlanner {
    pub fn new(loaded: Loaded, catalog: Catalog, spool: LocalSpool, kill_grace: Duration) -> Self {
        ConfigPlanner {
            loaded,
            catalog,
            spool,
            kill_grace,
            effective: EffectiveCache::default(),
        }
    }

    fn effective(&self, host: &HostId) -> Result<Arc<remediate_config::Effective>> {
        let doc = self.spool.get_host_doc_blocking(host)?;
        self.effective
            .get(&self.loaded, doc.as_ref())
            .map_err(|e| ExecError::HostPolicy {
                host_id: host.to_string(),
                reason: e.to_string(),
            })
    }
}

impl Planner for ConfigPlanner {
    fn host_enabled(&self, host: &HostId) -> Result<bool> {
        Ok(self.effective(host)?.enabled)
    }

    fn prepare(&self, run: &RunRecord, attempt: u32) -> Result<Result<Prepared, Refusal>> {
        let eff = self.effective(&run.host_id)?;
        let Some(action) = self.catalog.get(&run.action_key) else {
            return Ok(Err(Refusal::PolicyBlocked(format!(
                "action {} is not in the catalog ({})",
                run.action_key,
                self.catalog.origin()
            ))));
        };
        let params: serde_json::Map<String, serde_json::Value> = run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rendered =
            match action.render(&params, &RenderContext::new(run.run_id.as_str(), attempt)) {
                Ok(r) => r,
                Err(issues) => {
                    let why: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
                    return Ok(Err(Refusal::PolicyBlocked(format!(
                        "parameters no longer valid: {}",
                        why.join("; ")
                    ))));
                }
            };
        if let Err(issues) = guard::check_action(&rendered, &eff.guard) {
            let why: Vec<String> = issues
                .iter()
                .map(|i| format!("{:?} {}: {}", i.kind, i.index, i.reason))
                .collect();
            return Ok(Err(Refusal::PolicyBlocked(format!(
                "guard ({} profile): {}",
                eff.profile,
                why.join("; ")
            ))));
        }
        let policy = &eff.policy;
        let mut timeout = policy.command_timeout();
        if rendered.timeout_secs > 0 {
            timeout = timeout.min(Duration::from_secs(rendered.timeout_secs));
        }
        Ok(Ok(Prepared {
            commands: rendered.commands,
            canary_checks: rendered.canary_checks,
            rollback: rendered.rollback,
            sudo: rendered.sudo,
            runner: RunnerConfig {
                timeout,
                kill_grace: self.kill_grace,
                max_buffer_bytes: usize::try_from(policy.max_buffer_bytes).unwrap_or(usize::MAX),
                sudo_path: remediate_config::SUDO_PREFIX[0].to_string(),
            },
            auto_rollback: policy.auto_rollback,
            retry_delay: retry_delay(attempt, policy),
        }))
    }
}
