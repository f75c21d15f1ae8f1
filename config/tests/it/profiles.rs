//! Each profile's effective values equal SEED-BEHAVIOUR.md's list, value by
//! value (with nothing set in the file or the environment).

use remediate_config::{
    Effective, HostPolicyDoc, Layer, Loaded, Loader, ProfileName, RiskThreshold, Tier,
    effective_policy,
};

use crate::util::jail;

fn effective(name: ProfileName) -> Effective {
    let doc = HostPolicyDoc {
        remediation_policy_profile: name,
        ..HostPolicyDoc::default()
    };
    effective_policy(&Loaded::defaults(), &doc).expect("profile applies")
}

#[test]
fn balanced_is_the_defaults() {
    let e = effective(ProfileName::Balanced);
    let p = &e.policy;
    assert_eq!(p.dry_run_max_age_minutes, 30);
    assert_eq!(p.execute_cooldown_minutes, 5);
    assert_eq!(p.max_execute_per_hour, 6);
    assert_eq!(p.max_queue_per_host, 4);
    assert_eq!(p.max_queue_total, 200);
    assert_eq!(p.queue_ttl_minutes, 120);
    assert_eq!(p.max_retry_attempts, 3);
    assert_eq!(p.retry_backoff_seconds, 15);
    assert_eq!(p.retry_backoff_max_seconds, 900);
    assert_eq!(p.command_timeout_ms, 20_000);
    assert_eq!(p.max_buffer_bytes, 512_000);
    assert!(p.queue_autodrain);
    assert!(!p.autonomous_enabled);
    assert_eq!(p.autonomous_max_tier, Tier::SafeAuto);
    assert_eq!(p.autonomous_max_queued_per_cycle, 1);
    assert_eq!(p.autonomous_max_queued_per_hour, 4);
    assert_eq!(p.approval_risk_threshold, RiskThreshold::Medium);
    assert_eq!(p.canary_rollout_percent, 25);
    assert!(p.canary_require_checks);
    assert!(p.auto_rollback);
    assert!(e.guard.enforce_allowlist);
    assert_eq!(e.guard.max_commands_per_action, 20);
    assert_eq!(e.guard.max_command_length, 800);
    assert!(e.explain.iter().all(|x| x.layer == Layer::Default));
}

#[test]
fn strict_matches_the_seed() {
    let e = effective(ProfileName::Strict);
    let p = &e.policy;
    // "dry-run max age 20, cooldown 15, 2 executes/h, queue 2/host, 100 total,
    // TTL 60 min, 2 attempts, backoff 30 s up to 600 s, timeout 15 s, buffer
    // 256000, no autodrain, no autonomy; guard: allowlist on, at most 10
    // commands of 500 chars."
    assert_eq!(p.dry_run_max_age_minutes, 20);
    assert_eq!(p.execute_cooldown_minutes, 15);
    assert_eq!(p.max_execute_per_hour, 2);
    assert_eq!(p.max_queue_per_host, 2);
    assert_eq!(p.max_queue_total, 100);
    assert_eq!(p.queue_ttl_minutes, 60);
    assert_eq!(p.max_retry_attempts, 2);
    assert_eq!(p.retry_backoff_seconds, 30);
    assert_eq!(p.retry_backoff_max_seconds, 600);
    assert_eq!(p.command_timeout_ms, 15_000);
    assert_eq!(p.max_buffer_bytes, 256_000);
    assert!(!p.queue_autodrain);
    assert!(!p.autonomous_enabled);
    assert!(e.guard.enforce_allowlist);
    assert_eq!(e.guard.max_commands_per_action, 10);
    assert_eq!(e.guard.max_command_length, 500);
    // Not in strict's list: the defaults.
    assert_eq!(p.autonomous_max_tier, Tier::SafeAuto);
    assert_eq!(p.approval_risk_threshold, RiskThreshold::Medium);
    assert_eq!(p.canary_rollout_percent, 25);
    assert!(p.canary_require_checks && p.auto_rollback);
}

#[test]
fn rapid_matches_the_seed() {
    let e = effective(ProfileName::Rapid);
    let p = &e.policy;
    // "dry-run max age 60, cooldown 1, 20 executes/h, queue 10/host, 800
    // total, TTL 240 min, 5 attempts, backoff 10 s up to 300 s, timeout 30 s,
    // buffer 1000000, autonomy on up to guarded_auto, 2 per cycle, 30 per
    // hour, approval threshold high, canary 75 %, checks required, auto
    // rollback; guard: at most 30 commands of 1200 chars."
    assert_eq!(p.dry_run_max_age_minutes, 60);
    assert_eq!(p.execute_cooldown_minutes, 1);
    assert_eq!(p.max_execute_per_hour, 20);
    assert_eq!(p.max_queue_per_host, 10);
    assert_eq!(p.max_queue_total, 800);
    assert_eq!(p.queue_ttl_minutes, 240);
    assert_eq!(p.max_retry_attempts, 5);
    assert_eq!(p.retry_backoff_seconds, 10);
    assert_eq!(p.retry_backoff_max_seconds, 300);
    assert_eq!(p.command_timeout_ms, 30_000);
    assert_eq!(p.max_buffer_bytes, 1_000_000);
    assert!(p.autonomous_enabled);
    assert_eq!(p.autonomous_max_tier, Tier::GuardedAuto);
    assert_eq!(p.autonomous_max_queued_per_cycle, 2);
    assert_eq!(p.autonomous_max_queued_per_hour, 30);
    assert_eq!(p.approval_risk_threshold, RiskThreshold::High);
    assert_eq!(p.canary_rollout_percent, 75);
    assert!(p.canary_require_checks);
    assert!(p.auto_rollback);
    assert_eq!(e.guard.max_commands_per_action, 30);
    assert_eq!(e.guard.max_command_length, 1200);
    // Not in rapid's list: the default.
    assert!(p.queue_autodrain);
    assert!(e.guard.enforce_allowlist);
}

#[test]
fn profiles_sit_over_the_environment_and_under_host_overrides() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS", "9");
        jail.set_env("VPS_REMEDIATE_MAX_BUFFER_BYTES", "64000");
        let loaded = Loader::new().load().expect("loads");
        for (name, attempts) in [
            (ProfileName::Strict, 2),
            (ProfileName::Balanced, 9),
            (ProfileName::Rapid, 5),
        ] {
            let doc = HostPolicyDoc {
                remediation_policy_profile: name,
                ..HostPolicyDoc::default()
            };
            let e = effective_policy(&loaded, &doc).expect("applies");
            assert_eq!(e.policy.max_retry_attempts, attempts, "{name}");
        }
        Ok(())
    });
}

#[test]
fn profile_sources_are_embedded() {
    for name in ProfileName::ALL {
        let src = remediate_config::profile_source(name);
        assert!(src.contains(&format!("Profile \"{name}\"")), "{name}");
    }
}

#[test]
fn host_policy_doc_round_trips_with_the_seed_field_names() {
    let body = serde_json::json!({
        "remediationPolicyProfile": "rapid",
        "remediationPolicyOverrides": {"maxRetryAttempts": 2},
        "remediationGuardOverrides": {"maxCommandsPerAction": 5},
        "enabled": false
    });
    let doc = HostPolicyDoc::from_json(&body).expect("valid");
    assert_eq!(serde_json::to_value(&doc).expect("json"), body);
    let e = effective_policy(&Loaded::defaults(), &doc).expect("applies");
    assert!(!e.enabled);
    assert_eq!(e.profile, ProfileName::Rapid);
    assert_eq!(e.policy.max_retry_attempts, 2);
    assert_eq!(e.guard.max_commands_per_action, 5);
    let json = serde_json::to_value(&e).expect("json");
    assert_eq!(json["policy"]["maxRetryAttempts"], 2);
    assert_eq!(json["guard"]["maxCommandsPerAction"], 5);
    assert_eq!(json["explain"][0]["layer"], "host");
}
