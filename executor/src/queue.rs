//! `remediate-executor queue ...`: an operator's view of the host's queue on
//! the host itself, like `mailq`/`postqueue`. Listing reads the spool's
//! index; nothing here runs a command or moves a run except `flush`.

use std::fmt::Write as _;

use remediate_spool::{Bucket, HostId, ListQuery, LocalSpool, RunRecord, Store};

use crate::error::Result;

/// A state to list (`--state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Queued,
    RetryScheduled,
    Held,
    Running,
    Succeeded,
    Rejected,
    Expired,
    Canceled,
    Replayed,
    Dlq,
    Corrupt,
}

impl StateFilter {
    fn bucket(self) -> Bucket {
        match self {
            StateFilter::Queued => Bucket::Queued,
            StateFilter::RetryScheduled => Bucket::RetryScheduled,
            StateFilter::Held => Bucket::Held,
            StateFilter::Running => Bucket::Running,
            StateFilter::Succeeded => Bucket::Succeeded,
            StateFilter::Rejected => Bucket::Rejected,
            StateFilter::Expired => Bucket::Expired,
            StateFilter::Canceled => Bucket::Canceled,
            StateFilter::Replayed => Bucket::Replayed,
            StateFilter::Dlq => Bucket::Dlq,
            StateFilter::Corrupt => Bucket::Corrupt,
        }
    }
}

/// What `queue list` shows without `--state`: everything not finished well.
pub const DEFAULT_STATES: [StateFilter; 5] = [
    StateFilter::Queued,
    StateFilter::RetryScheduled,
    StateFilter::Held,
    StateFilter::Running,
    StateFilter::Dlq,
];

/// Runs in the given states (default [`DEFAULT_STATES`]), oldest first.
pub async fn list(
    spool: &LocalSpool,
    host: Option<HostId>,
    states: &[StateFilter],
    limit: usize,
) -> Result<Vec<RunRecord>> {
    let states = if states.is_empty() {
        &DEFAULT_STATES[..]
    } else {
        states
    };
    let q = ListQuery {
        host,
        buckets: states.iter().map(|s| s.bucket()).collect(),
        limit,
    };
    Ok(Store::list(spool, q).await?)
}

/// The state column: retry-scheduled runs are queued runs with attempts.
fn state_label(r: &RunRecord) -> String {
    if r.is_retry_scheduled() {
        "retry-scheduled".into()
    } else {
        r.state.to_string()
    }
}

fn short(s: &str, max: usize) -> String {
    let one_line = s.lines().next().unwrap_or("");
    if one_line.chars().count() <= max {
        one_line.to_string()
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// A fixed-width table, one run a line.
pub fn table(runs: &[RunRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<38} {:<16} {:<12} {:<30} {:>8} {:<20} LAST ERROR",
        "RUN ID", "STATE", "HOST", "ACTION", "ATTEMPTS", "DUE / UPDATED"
    );
    for r in runs {
        let when = if r.state == remediate_spool::RunState::Queued {
            Some(r.due_at())
        } else {
            r.updated_at
        }
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
        let err = r
            .dlq_reason
            .clone()
            .or_else(|| r.last_error.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<38} {:<16} {:<12} {:<30} {:>8} {:<20} {}",
            r.run_id.as_str(),
            state_label(r),
            short(r.host_id.as_str(), 12),
            short(&r.action_key, 30),
            format!("{}/{}", r.attempts, r.max_attempts),
            when,
            short(&err, 60)
        );
    }
    let _ = writeln!(out, "{} run(s)", runs.len());
    out
}

/// One run with its attempt history, for a person.
pub fn show(r: &RunRecord) -> String {
    let mut o = String::new();
    let t = |t: Option<remediate_spool::Timestamp>| t.map(|t| t.to_rfc3339()).unwrap_or("-".into());
    let _ = writeln!(o, "run        {}", r.run_id);
    let _ = writeln!(o, "host       {}", r.host_id);
    let _ = writeln!(o, "action     {}", r.action_key);
    let _ = writeln!(o, "state      {}", state_label(r));
    let _ = writeln!(o, "attempts   {}/{}", r.attempts, r.max_attempts);
    let _ = writeln!(
        o,
        "requested  {} by {}",
        r.requested_at.to_rfc3339(),
        r.requested_by
    );
    let _ = writeln!(o, "next due   {}", t(r.next_attempt_at));
    let _ = writeln!(o, "expires    {}", t(r.expires_at));
    let _ = writeln!(
        o,
        "approval   required={} status={:?}",
        r.approval.required, r.approval.status
    );
    if let Some(e) = &r.last_error {
        let _ = writeln!(o, "last error {e}");
    }
    if let Some(d) = &r.dlq_reason {
        let _ = writeln!(o, "dlq reason {d}");
    }
    if let Some(e) = &r.end_reason {
        let _ = writeln!(o, "end reason {e}");
    }
    if !r.params.is_empty() {
        let _ = writeln!(
            o,
            "params     {}",
            serde_json::to_string(&r.params).unwrap_or_default()
        );
    }
    for a in &r.history {
        let _ = writeln!(
            o,
            "\nattempt {} started {} finished {} worker {}{}",
            a.attempt,
            a.started_at.to_rfc3339(),
            t(a.finished_at),
            a.worker.as_deref().unwrap_or("-"),
            if a.result.interrupted {
                " INTERRUPTED"
            } else {
                ""
            }
        );
        if let Some(e) = &a.result.error {
            let _ = writeln!(o, "  error: {e}");
        }
        if let Some(c) = a.result.canary_passed {
            let _ = writeln!(o, "  canary passed: {c}");
        }
        if a.result.rollback_attempted {
            let _ = writeln!(
                o,
                "  rollback succeeded: {}",
                a.result.rollback_succeeded.unwrap_or(false)
            );
        }
        for c in &a.result.outputs {
            let status = match (c.exit_code, c.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("signal {sig}"),
                (None, None) => "no status".into(),
            };
            let _ = writeln!(
                o,
                "  [{:?}] {} -> {}{} ({} ms){}",
                c.phase,
                c.argv.join(" "),
                status,
                if c.timed_out { ", timed out" } else { "" },
                c.duration_ms,
                if c.truncated {
                    ", output truncated"
                } else {
                    ""
                }
            );
            for (name, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
                for line in text.lines().take(20) {
                    let _ = writeln!(o, "    {name}| {line}");
                }
            }
        }
    }
    o
}
