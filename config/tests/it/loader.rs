//! The figment loader: layer order, defaults, validation messages, warnings.

use std::path::PathBuf;

use remediate_config::knobs::{KNOBS, KnobDefault};
use remediate_config::{
    CatalogSource, HostPolicyDoc, Layer, Loader, ProfileName, RiskThreshold, Tier, effective_policy,
};
use serde_json::json;

use crate::util::{jail, obj};

#[test]
fn every_knob_has_its_default_when_nothing_is_set() {
    jail(|_| {
        let loaded = Loader::new().load().expect("defaults load");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config_file, None);
        let explain = loaded.explain();
        assert_eq!(explain.len(), KNOBS.len());
        for (knob, entry) in KNOBS.iter().zip(&explain) {
            let expected = match knob.default {
                KnobDefault::Int(i) => json!(i),
                KnobDefault::Bool(b) => json!(b),
                KnobDefault::Text(t) => json!(t),
                KnobDefault::Unset => json!(null),
            };
            assert_eq!(entry.variable, knob.env);
            assert_eq!(entry.value, expected, "{}", knob.env);
            assert_eq!(entry.layer, Layer::Default, "{}", knob.env);
        }

        // The same defaults, typed, against SEED-BEHAVIOUR.md's list.
        let s = &loaded.settings;
        let p = &s.policy;
        assert_eq!(p.max_retry_attempts, 3);
        assert_eq!(p.retry_backoff_seconds, 15);
        assert_eq!(p.retry_backoff_max_seconds, 900);
        assert_eq!(p.max_queue_per_host, 4);
        assert_eq!(p.max_queue_total, 200);
        assert_eq!(p.queue_ttl_minutes, 120);
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
        assert_eq!(p.dry_run_max_age_minutes, 30);
        assert_eq!(p.execute_cooldown_minutes, 5);
        assert_eq!(p.max_execute_per_hour, 6);
        let g = &s.guard;
        assert!(g.enforce_allowlist);
        assert_eq!(g.max_commands_per_action, 20);
        assert_eq!(g.max_command_length, 800);
        assert_eq!(g.allowlist_regex, None);
        assert_eq!(g.blocklist_regex, None);
        assert_eq!(s.queue_token, None);
        assert_eq!(s.listen_addr.to_string(), "127.0.0.1:3035");
        assert_eq!(s.spool_dir, PathBuf::from("/var/lib/vps-remediate"));
        assert_eq!(s.catalog, CatalogSource::Builtin);
        let e = &s.executor;
        assert_eq!(e.host_id, None);
        assert_eq!(e.concurrency, 1);
        assert_eq!(e.shutdown_grace_seconds, 30);
        assert_eq!(e.retention_done_days, 7);
        assert_eq!(e.retention_dlq_days, 30);
        assert_eq!(e.notify_webhook_url, None);
        let w = &s.worker;
        assert_eq!(w.drain_limit, 5);
        assert_eq!(w.interval_seconds, 15);
        assert_eq!(w.idle_interval_seconds, 30);
        assert_eq!(w.max_backoff_seconds, 120);
        assert_eq!(w.base_url, "http://127.0.0.1:3035");
        assert_eq!(w.token, None);
        Ok(())
    });
}

#[test]
fn each_layer_overrides_the_one_before() {
    jail(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            "config/remediate.toml",
            r#"
max_retry_attempts = 5
queue_ttl_minutes = 90
canary_rollout_percent = 40
max_queue_per_host = 7

[worker]
drain_limit = 9
interval_seconds = 20
"#,
        )?;
        jail.set_env("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS", "7");
        jail.set_env("VPS_REMEDIATE_MAX_QUEUE_PER_HOST", "8");
        jail.set_env("OPS_WORKER_DRAIN_LIMIT", "11");
        let loaded = Loader::new().load().expect("loads");
        assert_eq!(
            loaded.config_file,
            Some(PathBuf::from("config/remediate.toml"))
        );
        let p = &loaded.settings.policy;
        // default < file < env
        assert_eq!(p.max_retry_attempts, 7);
        assert_eq!(
            loaded.layer_of("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS"),
            Some(Layer::Env)
        );
        assert_eq!(p.queue_ttl_minutes, 90);
        assert_eq!(
            loaded.layer_of("VPS_REMEDIATE_QUEUE_TTL_MINUTES"),
            Some(Layer::File)
        );
        assert_eq!(p.max_buffer_bytes, 512_000);
        assert_eq!(
            loaded.layer_of("VPS_REMEDIATE_MAX_BUFFER_BYTES"),
            Some(Layer::Default)
        );
        assert_eq!(loaded.settings.worker.drain_limit, 11);
        assert_eq!(loaded.settings.worker.interval_seconds, 20);
        assert_eq!(
            loaded.layer_of("OPS_WORKER_INTERVAL_SECONDS"),
            Some(Layer::File)
        );

        // balanced sets nothing: the env and file values stay.
        let balanced = effective_policy(&loaded, &HostPolicyDoc::default()).expect("balanced");
        assert_eq!(balanced.policy.max_retry_attempts, 7);
        assert_eq!(balanced.policy.canary_rollout_percent, 40);

        // env < profile: strict sets 2 attempts and 2 per host.
        let strict_doc = HostPolicyDoc {
            remediation_policy_profile: ProfileName::Strict,
            ..HostPolicyDoc::default()
        };
        let strict = effective_policy(&loaded, &strict_doc).expect("strict");
        assert_eq!(strict.policy.max_retry_attempts, 2);
        assert_eq!(strict.policy.max_queue_per_host, 2);
        assert_eq!(
            strict.policy.canary_rollout_percent, 40,
            "strict does not set it"
        );
        assert_eq!(strict.policy.queue_ttl_minutes, 60);

        // profile < host overrides.
        let host_doc = HostPolicyDoc {
            remediation_policy_overrides: obj(json!({"maxRetryAttempts": 4})),
            ..strict_doc
        };
        let host = effective_policy(&loaded, &host_doc).expect("host");
        assert_eq!(host.policy.max_retry_attempts, 4);
        let layers: Vec<(String, Layer)> = host
            .explain
            .iter()
            .filter(|e| {
                [
                    "maxRetryAttempts",
                    "maxQueuePerHost",
                    "canaryRolloutPercent",
                    "autonomousMaxTier",
                ]
                .contains(&e.key.as_str())
            })
            .map(|e| (e.key.clone(), e.layer))
            .collect();
        assert_eq!(
            layers,
            vec![
                ("maxRetryAttempts".to_owned(), Layer::Host),
                ("maxQueuePerHost".to_owned(), Layer::Profile),
                ("autonomousMaxTier".to_owned(), Layer::Default),
                ("canaryRolloutPercent".to_owned(), Layer::File),
            ]
        );
        Ok(())
    });
}

#[test]
fn explicit_config_file_wins_over_the_default_path_and_must_exist() {
    jail(|jail| {
        jail.create_dir("config")?;
        jail.create_file("config/remediate.toml", "max_retry_attempts = 5\n")?;
        jail.create_file("other.toml", "max_retry_attempts = 6\n")?;
        let loaded = Loader::new()
            .config_file(Some("other.toml".into()))
            .load()
            .expect("loads");
        assert_eq!(loaded.settings.policy.max_retry_attempts, 6);

        let err = Loader::new()
            .config_file(Some("missing.toml".into()))
            .load()
            .expect_err("missing explicit file");
        assert_eq!(err.errors()[0].code(), "config_file");
        assert!(
            err.to_string().starts_with("config file missing.toml: "),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn out_of_range_wrong_type_and_bad_values_are_all_reported_at_once() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS", "0");
        jail.set_env("VPS_REMEDIATE_COMMAND_TIMEOUT_MS", "20s");
        jail.set_env("VPS_REMEDIATE_QUEUE_AUTODRAIN", "maybe");
        jail.set_env("VPS_REMEDIATE_AUTONOMOUS_MAX_TIER", "everything");
        jail.set_env("VPS_REMEDIATE_BLOCKLIST_REGEX", "(unclosed");
        jail.set_env("VPS_REMEDIATE_QUEUE_TOKEN", "hunter2");
        jail.set_env("OPS_WORKER_DRAIN_LIMIT", "51");
        jail.set_env("VPS_REMEDIATE_LISTEN_ADDR", "localhost");
        let err = Loader::new().load().expect_err("invalid");
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        for expected in [
            "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS=\"0\": out of range; allowed: an integer in 1..=20 (set by environment)",
            "VPS_REMEDIATE_COMMAND_TIMEOUT_MS=\"20s\": not an integer; allowed: an integer in 1000..=600000 (set by environment)",
            "VPS_REMEDIATE_QUEUE_AUTODRAIN=\"maybe\": not a boolean; allowed: 1/true/yes/on or 0/false/no/off (set by environment)",
            "VPS_REMEDIATE_AUTONOMOUS_MAX_TIER=\"everything\": not an allowed value; allowed: one of observe, safe_auto, guarded_auto, risky_manual (set by environment)",
            "OPS_WORKER_DRAIN_LIMIT=\"51\": out of range; allowed: an integer in 1..=50 (set by environment)",
            "VPS_REMEDIATE_QUEUE_TOKEN=<redacted>: too short; allowed: at least 16 printable ASCII characters, no spaces (set by environment)",
            "VPS_REMEDIATE_LISTEN_ADDR=\"localhost\": not an address:port; allowed: an IP address and port, e.g. 127.0.0.1:3035 (set by environment)",
        ] {
            assert!(
                lines.contains(&expected),
                "missing line {expected:?} in:\n{text}"
            );
        }
        assert!(
            lines.iter().any(|l| l.starts_with(
                "VPS_REMEDIATE_BLOCKLIST_REGEX=\"(unclosed\": not a valid regular expression"
            )),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "secret leaked: {text}");
        let codes: Vec<&str> = err.errors().iter().map(|e| e.code()).collect();
        assert!(
            codes.contains(&"out_of_range")
                && codes.contains(&"wrong_type")
                && codes.contains(&"not_allowed")
        );
        Ok(())
    });
}

#[test]
fn wrong_types_in_the_config_file_name_the_variable_and_the_key() {
    jail(|jail| {
        jail.create_file(
            "bad.toml",
            "max_retry_attempts = \"many\"\ncanary_rollout_percent = 25.5\nauto_rollback = 2\nmax_queue_total = [1]\n",
        )?;
        let err = Loader::new()
            .config_file(Some("bad.toml".into()))
            .load()
            .expect_err("invalid");
        let text = err.to_string();
        for expected in [
            "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS=\"many\": not an integer; allowed: an integer in 1..=20 (set by config file bad.toml, key max_retry_attempts)",
            "VPS_REMEDIATE_CANARY_ROLLOUT_PERCENT=25.5: not an integer; allowed: an integer in 1..=100 (set by config file bad.toml, key canary_rollout_percent)",
            "VPS_REMEDIATE_AUTO_ROLLBACK=2: not a boolean; allowed: 1/true/yes/on or 0/false/no/off (set by config file bad.toml, key auto_rollback)",
            "VPS_REMEDIATE_MAX_QUEUE_TOTAL=<array>: not an integer",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(err.len(), 4);
        Ok(())
    });
}

#[test]
fn a_config_file_that_does_not_parse_says_where() {
    jail(|jail| {
        jail.create_file(
            "broken.toml",
            "max_retry_attempts = 3\nqueue_ttl_minutes = \n",
        )?;
        let err = Loader::new()
            .config_file(Some("broken.toml".into()))
            .load()
            .expect_err("syntax");
        let text = err.to_string();
        assert!(text.starts_with("config file broken.toml: "), "{text}");
        assert!(text.contains("(line 2)"), "{text}");
        assert_eq!(text.lines().count(), 1);
        Ok(())
    });
}

#[test]
fn booleans_accept_every_seed_spelling_in_any_case() {
    for (word, expected) in [
        ("1", true),
        ("true", true),
        ("YES", true),
        ("On", true),
        ("0", false),
        ("False", false),
        ("no", false),
        ("OFF", false),
    ] {
        jail(|jail| {
            jail.set_env("VPS_REMEDIATE_AUTONOMOUS_ENABLED", word);
            jail.set_env("VPS_REMEDIATE_QUEUE_AUTODRAIN", word);
            let loaded = Loader::new().load().expect(word);
            assert_eq!(
                loaded.settings.policy.autonomous_enabled, expected,
                "{word}"
            );
            assert_eq!(loaded.settings.policy.queue_autodrain, expected, "{word}");
            Ok(())
        });
    }
}

#[test]
fn unknown_variables_and_keys_are_warnings_with_suggestions() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_MAX_RETRY_ATEMPTS", "5");
        jail.set_env("VPS_REMEDIATE_COMPLETELY_UNRELATED", "1");
        jail.set_env("OPS_WORKER_DRAIN_LIMT", "3");
        jail.create_file(
            "c.toml",
            "max_retries = 4\n[worker]\nintervall_seconds = 3\n",
        )?;
        let loaded = Loader::new()
            .config_file(Some("c.toml".into()))
            .load()
            .expect("warnings do not stop loading");
        assert_eq!(
            loaded.settings.policy.max_retry_attempts, 3,
            "the typo is not applied"
        );
        let lines: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        for expected in [
            "VPS_REMEDIATE_MAX_RETRY_ATEMPTS: unknown setting, ignored (set by environment); did you mean VPS_REMEDIATE_MAX_RETRY_ATTEMPTS?",
            "VPS_REMEDIATE_COMPLETELY_UNRELATED: unknown setting, ignored (set by environment)",
            "OPS_WORKER_DRAIN_LIMT: unknown setting, ignored (set by environment); did you mean OPS_WORKER_DRAIN_LIMIT?",
            "worker.intervall_seconds: unknown setting, ignored (set by config file c.toml); did you mean worker.interval_seconds?",
            "max_retries: unknown setting, ignored (set by config file c.toml)",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "missing {expected:?} in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), 5);
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.code() == "unknown_setting")
        );
        Ok(())
    });
}

#[test]
fn backoff_max_below_base_is_refused() {
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_RETRY_BACKOFF_SECONDS", "120");
        jail.set_env("VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS", "60");
        let err = Loader::new().load().expect_err("max < base");
        assert_eq!(
            err.to_string(),
            "VPS_REMEDIATE_RETRY_BACKOFF_MAX_SECONDS=60: out of range; allowed: an integer in 120..=86400 (at least VPS_REMEDIATE_RETRY_BACKOFF_SECONDS, which is 120) (set by environment)"
        );
        Ok(())
    });
    jail(|jail| {
        // The profiles set base and cap together, so an env base cannot
        // conflict with them; load() still checks every profile.
        jail.set_env("VPS_REMEDIATE_RETRY_BACKOFF_SECONDS", "400");
        let loaded = Loader::new().load().expect("loads");
        let rapid = HostPolicyDoc {
            remediation_policy_profile: ProfileName::Rapid,
            ..HostPolicyDoc::default()
        };
        let eff = effective_policy(&loaded, &rapid).expect("rapid");
        assert_eq!(
            (
                eff.policy.retry_backoff_seconds,
                eff.policy.retry_backoff_max_seconds
            ),
            (10, 300)
        );
        Ok(())
    });
}

#[test]
fn env_values_stay_raw_strings() {
    jail(|jail| {
        // figment's own Env would parse these as an array and a number.
        jail.set_env("VPS_REMEDIATE_BLOCKLIST_REGEX", "[a-z]+ --force");
        jail.set_env("VPS_REMEDIATE_HOST_ID", "0123");
        jail.set_env("VPS_REMEDIATE_QUEUE_TOKEN", "0123456789abcdef-token");
        jail.set_env("VPS_REMEDIATE_CATALOG", "demo");
        let loaded = Loader::new().load().expect("loads");
        let s = &loaded.settings;
        assert_eq!(
            s.guard.blocklist_regex.as_ref().map(|r| r.as_str()),
            Some("[a-z]+ --force")
        );
        assert_eq!(s.executor.host_id.as_deref(), Some("0123"));
        assert_eq!(s.catalog, CatalogSource::Demo);
        assert_eq!(
            s.worker_token().map(|t| t.expose()),
            Some("0123456789abcdef-token")
        );
        let token = loaded
            .explain()
            .into_iter()
            .find(|e| e.variable == "VPS_REMEDIATE_QUEUE_TOKEN")
            .expect("token entry");
        assert_eq!(token.value, json!("<redacted>"));
        assert!(!format!("{loaded:?}").contains("0123456789abcdef-token"));
        Ok(())
    });
}

#[test]
fn empty_values_unset_optional_knobs_only() {
    jail(|jail| {
        jail.create_file("c.toml", "allowlist_regex = \"^/usr/bin/\"\n")?;
        jail.set_env("VPS_REMEDIATE_ALLOWLIST_REGEX", "");
        let loaded = Loader::new()
            .config_file(Some("c.toml".into()))
            .load()
            .expect("loads");
        assert_eq!(
            loaded.settings.guard.allowlist_regex, None,
            "env unsets the file's value"
        );
        assert_eq!(
            loaded.layer_of("VPS_REMEDIATE_ALLOWLIST_REGEX"),
            Some(Layer::Env)
        );
        Ok(())
    });
    jail(|jail| {
        jail.set_env("VPS_REMEDIATE_MAX_RETRY_ATTEMPTS", "");
        let err = Loader::new().load().expect_err("required knob");
        assert_eq!(err.errors()[0].code(), "wrong_type");
        Ok(())
    });
}

#[test]
fn a_worker_key_that_is_not_a_table_is_an_error() {
    jail(|jail| {
        jail.create_file("w.toml", "worker = 5\n")?;
        let err = Loader::new()
            .config_file(Some("w.toml".into()))
            .load()
            .expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "config file w.toml: `worker` must be a table of OPS_WORKER_* settings"
        );
        Ok(())
    });
}
