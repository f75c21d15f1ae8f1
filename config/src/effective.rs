//! A host's policy document (the body of `PUT /api/hosts/:hostId`) and the
//! one function that turns settings + profile + host overrides into the
//! host's effective policy and guard, with an explain view.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigErrors, Problem};
use crate::knobs::{self, BACKOFF_MAX_LIMIT, Group, KNOBS, Knob, KnobValue, Raw, Values};
use crate::loader::{Loaded, backoff_error};
use crate::policy::{GuardPolicy, Policy};
use crate::types::{Layer, ProfileName};

/// A host's remediation policy as stored and as sent to
/// `PUT /api/hosts/:hostId` (the seed's camelCase field names).
///
/// Override objects map knob names to values. Names may be written as the
/// seed did (`maxRetryAttempts`), in snake_case (`max_retry_attempts`) or as
/// the env name; values may be JSON numbers, booleans or strings (booleans
/// also as `"yes"`/`"off"`, ...). `null` removes an override. Policy knobs go
/// in `remediationPolicyOverrides`, guard knobs in `remediationGuardOverrides`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPolicyDoc {
    /// strict, balanced (default) or rapid.
    #[serde(default)]
    pub remediation_policy_profile: ProfileName,
    /// Policy knob overrides.
    #[serde(default)]
    pub remediation_policy_overrides: serde_json::Map<String, serde_json::Value>,
    /// Guard knob overrides.
    #[serde(default)]
    pub remediation_guard_overrides: serde_json::Map<String, serde_json::Value>,
    /// A disabled host runs nothing; its queued runs are canceled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for HostPolicyDoc {
    fn default() -> Self {
        HostPolicyDoc {
            remediation_policy_profile: ProfileName::Balanced,
            remediation_policy_overrides: serde_json::Map::new(),
            remediation_guard_overrides: serde_json::Map::new(),
            enabled: true,
        }
    }
}

const PROFILE: &str = "remediationPolicyProfile";
const POLICY_OVERRIDES: &str = "remediationPolicyOverrides";
const GUARD_OVERRIDES: &str = "remediationGuardOverrides";
const ENABLED: &str = "enabled";

impl HostPolicyDoc {
    /// Parse and validate a request body, reporting every problem with its
    /// field: unknown fields, an unknown profile, overrides that are not
    /// objects, unknown or misplaced knobs, values of the wrong type or out of
    /// range. Missing fields take their defaults.
    pub fn from_json(body: &serde_json::Value) -> Result<HostPolicyDoc, ConfigErrors> {
        let Some(obj) = body.as_object() else {
            return Err(ConfigError::InvalidField {
                field: "body".into(),
                reason: "must be a JSON object".into(),
            }
            .into());
        };
        let mut errors = Vec::new();
        let mut doc = HostPolicyDoc::default();
        for (field, value) in obj {
            match field.as_str() {
                PROFILE => match value {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(s) => match s.parse() {
                        Ok(p) => doc.remediation_policy_profile = p,
                        Err(reason) => errors.push(field_error(PROFILE, reason)),
                    },
                    _ => errors.push(field_error(
                        PROFILE,
                        "must be a string: strict, balanced or rapid",
                    )),
                },
                POLICY_OVERRIDES | GUARD_OVERRIDES => {
                    let map = match value {
                        serde_json::Value::Null => serde_json::Map::new(),
                        serde_json::Value::Object(m) => m.clone(),
                        _ => {
                            errors.push(field_error(field, "must be an object of knob overrides"));
                            continue;
                        }
                    };
                    if field == POLICY_OVERRIDES {
                        doc.remediation_policy_overrides = map;
                    } else {
                        doc.remediation_guard_overrides = map;
                    }
                }
                ENABLED => {
                    let parsed = match value {
                        serde_json::Value::Bool(b) => Some(*b),
                        serde_json::Value::String(s) => knobs::parse_bool(s),
                        _ => None,
                    };
                    match parsed {
                        Some(b) => doc.enabled = b,
                        None => errors.push(field_error(ENABLED, "must be a boolean")),
                    }
                }
                other => errors.push(field_error(
                    other,
                    "unknown field; allowed: remediationPolicyProfile, remediationPolicyOverrides, remediationGuardOverrides, enabled",
                )),
            }
        }
        let mut scratch = Values::defaults();
        errors.extend(doc.apply_overrides(&mut scratch));
        ConfigErrors(errors).into_result(doc)
    }

    /// Apply both override objects to `values`, returning every problem.
    fn apply_overrides(&self, values: &mut Values) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (field, map, group) in [
            (
                POLICY_OVERRIDES,
                &self.remediation_policy_overrides,
                Group::Policy,
            ),
            (
                GUARD_OVERRIDES,
                &self.remediation_guard_overrides,
                Group::Guard,
            ),
        ] {
            for (name, value) in map {
                let path = format!("{field}.{name}");
                let Some((index, knob)) = knobs::per_host_by_name(name) else {
                    let names = KNOBS.iter().filter(|k| k.group == group).map(|k| k.camel);
                    errors.push(ConfigError::UnknownSetting {
                        name: path,
                        origin: "host override".into(),
                        suggestion: knobs::suggest(name, names),
                    });
                    continue;
                };
                if knob.group != group {
                    let right = if knob.group == Group::Guard {
                        GUARD_OVERRIDES
                    } else {
                        POLICY_OVERRIDES
                    };
                    errors.push(field_error(
                        &path,
                        format!(
                            "{} is a {} knob; put it in {right}",
                            knob.camel,
                            group_word(knob.group)
                        ),
                    ));
                    continue;
                }
                if value.is_null() {
                    continue;
                }
                let raw = Raw::from_json(value);
                match knob.coerce(&raw) {
                    Ok(v) => values.set(index, v, Layer::Host),
                    Err(problem) => errors.push(ConfigError::InvalidValue {
                        name: path,
                        value: knob.shown(&raw),
                        problem,
                        allowed: knob.allowed(),
                        origin: "host override".into(),
                    }),
                }
            }
        }
        errors
    }
}

fn group_word(g: Group) -> &'static str {
    if g == Group::Guard { "guard" } else { "policy" }
}

fn field_error(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// One line of the explain view: a knob's value and the layer that set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainEntry {
    /// The camelCase knob name (as in [`Policy`] and host overrides).
    pub key: String,
    /// The environment variable of the knob.
    pub variable: &'static str,
    /// The value (`null` when unset; secrets `"<redacted>"`).
    pub value: serde_json::Value,
    /// The layer that set it: default, file, env, profile or host.
    pub layer: Layer,
}

impl ExplainEntry {
    pub(crate) fn new(knob: &Knob, value: &KnobValue, layer: Layer) -> ExplainEntry {
        let value = if knob.is_secret() && *value != KnobValue::Unset {
            serde_json::Value::String("<redacted>".into())
        } else {
            value.to_json()
        };
        ExplainEntry {
            key: knob.camel.to_owned(),
            variable: knob.env,
            value,
            layer,
        }
    }
}

/// A host's effective policy and guard, and where each value came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Effective {
    /// The host's profile.
    pub profile: ProfileName,
    /// Whether the host is enabled.
    pub enabled: bool,
    /// The effective policy.
    pub policy: Policy,
    /// The effective guard policy.
    pub guard: GuardPolicy,
    /// For each policy and guard knob, its value and the layer that set it.
    pub explain: Vec<ExplainEntry>,
}

/// Compute a host's effective policy: the loaded settings (default, file,
/// env), then the host's profile, then its own overrides; later wins. Every
/// invalid override is reported, each naming its field.
pub fn effective_policy(loaded: &Loaded, doc: &HostPolicyDoc) -> Result<Effective, ConfigErrors> {
    let mut values = loaded.values.clone();
    for (index, value) in loaded.profiles.get(doc.remediation_policy_profile) {
        values.set(*index, value.clone(), Layer::Profile);
    }
    let mut errors = doc.apply_overrides(&mut values);
    if let Some((base, max)) = values.backoff_conflict() {
        let host = |key| values_layer(&values, key) == Some(Layer::Host);
        let e = if host("retry_backoff_max_seconds") {
            ConfigError::InvalidValue {
                name: format!("{POLICY_OVERRIDES}.retryBackoffMaxSeconds"),
                value: max.to_string(),
                problem: Problem::OutOfRange,
                allowed: format!(
                    "an integer in {base}..={BACKOFF_MAX_LIMIT} (at least retryBackoffSeconds, which is {base})"
                ),
                origin: "host override".into(),
            }
        } else if host("retry_backoff_seconds") {
            ConfigError::InvalidValue {
                name: format!("{POLICY_OVERRIDES}.retryBackoffSeconds"),
                value: base.to_string(),
                problem: Problem::OutOfRange,
                allowed: format!(
                    "an integer in 1..={max} (at most retryBackoffMaxSeconds, which is {max})"
                ),
                origin: "host override".into(),
            }
        } else {
            let file_origin = loaded
                .config_file
                .as_ref()
                .map(|p| format!("config file {}", p.display()))
                .unwrap_or_default();
            match backoff_error(&values, Some(doc.remediation_policy_profile), &file_origin) {
                Some(e) => e,
                None => field_error("retryBackoffMaxSeconds", "less than retryBackoffSeconds"),
            }
        };
        errors.push(e);
    }
    let policy = serde_json::from_value::<Policy>(values.group_json(Group::Policy));
    let guard = serde_json::from_value::<GuardPolicy>(values.group_json(Group::Guard));
    ConfigErrors(errors).into_result(())?;
    let (Ok(policy), Ok(guard)) = (policy, guard) else {
        return Err(field_error("policy", "validated values did not build the policy").into());
    };
    let explain = KNOBS
        .iter()
        .zip(&values.entries)
        .filter(|(k, _)| k.group.per_host())
        .map(|(k, (v, layer))| ExplainEntry::new(k, v, *layer))
        .collect();
    Ok(Effective {
        profile: doc.remediation_policy_profile,
        enabled: doc.enabled,
        policy,
        guard,
        explain,
    })
}

fn values_layer(values: &Values, key: &str) -> Option<Layer> {
    let (index, _) = knobs::by_key(key)?;
    values.entries.get(index).map(|(_, l)| *l)
}

/// Effective policies by stored host document, for a process that needs one
/// for every request or run: parsing the document and merging the knob
/// layers (a few µs) is done once per distinct document. Keyed by
/// the document's JSON text (a changed document is a new key); emptied when
/// it holds [`EffectiveCache::MAX`] documents. One cache serves one
/// [`Loaded`].
#[derive(Debug, Default)]
pub struct EffectiveCache(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Effective>>>,
);

impl EffectiveCache {
    pub const MAX: usize = 1024;

    /// The effective policy of a host whose stored document is `stored`
    /// (`None`: no document, the defaults), validated.
    pub fn get(
        &self,
        loaded: &Loaded,
        stored: Option<&serde_json::Value>,
    ) -> Result<std::sync::Arc<Effective>, ConfigErrors> {
        let key = stored.map(|v| v.to_string()).unwrap_or_default();
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = lock().get(&key) {
            return Ok(e.clone());
        }
        let doc = match stored {
            Some(v) => HostPolicyDoc::from_json(v)?,
            None => HostPolicyDoc::default(),
        };
        let eff = std::sync::Arc::new(effective_policy(loaded, &doc)?);
        let mut cache = lock();
        if cache.len() >= Self::MAX {
            cache.clear();
        }
        cache.insert(key, eff.clone());
        Ok(eff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_body_is_balanced_enabled_without_overrides() {
        let doc = HostPolicyDoc::from_json(&json!({})).expect("valid");
        assert_eq!(doc, HostPolicyDoc::default());
        let doc: HostPolicyDoc = serde_json::from_value(json!({})).expect("serde");
        assert!(doc.enabled);
    }

    #[test]
    fn host_doc_errors_name_their_fields() {
        let errs = HostPolicyDoc::from_json(&json!({
            "remediationPolicyProfile": "turbo",
            "remediationPolicyOverrides": {"maxRetryAttempts": 50, "maxRetryAtempts": 2, "maxCommandLength": 100},
            "remediationGuardOverrides": "no",
            "enabled": "perhaps",
            "hostname": "x"
        }))
        .expect_err("invalid");
        let text = errs.to_string();
        assert_eq!(errs.len(), 7, "{text}");
        for needle in [
            "remediationPolicyProfile: \"turbo\" is not a profile",
            "remediationPolicyOverrides.maxRetryAttempts=50: out of range; allowed: an integer in 1..=20",
            "remediationPolicyOverrides.maxRetryAtempts: unknown setting",
            "did you mean maxRetryAttempts?",
            "remediationPolicyOverrides.maxCommandLength: maxCommandLength is a guard knob; put it in remediationGuardOverrides",
            "remediationGuardOverrides: must be an object",
            "enabled: must be a boolean",
            "hostname: unknown field",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn overrides_go_over_the_profile_and_explain_says_so() {
        let loaded = Loaded::defaults();
        let doc = HostPolicyDoc::from_json(&json!({
            "remediationPolicyProfile": "strict",
            "remediationPolicyOverrides": {"maxRetryAttempts": "4", "queueAutoDrain": "yes"},
            "remediationGuardOverrides": {"blocklistRegex": "reboot", "max_command_length": 600}
        }))
        .expect("valid");
        let eff = effective_policy(&loaded, &doc).expect("effective");
        assert_eq!(eff.policy.max_retry_attempts, 4);
        assert!(eff.policy.queue_autodrain);
        assert_eq!(eff.policy.max_queue_per_host, 2, "from strict");
        assert_eq!(eff.policy.max_execute_per_hour, 2, "from strict");
        assert_eq!(eff.guard.max_command_length, 600);
        assert_eq!(
            eff.guard.blocklist_regex.as_ref().map(|r| r.as_str()),
            Some("reboot")
        );
        let layer = |key: &str| {
            eff.explain
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.layer)
                .expect(key)
        };
        assert_eq!(layer("maxRetryAttempts"), Layer::Host);
        assert_eq!(layer("maxQueuePerHost"), Layer::Profile);
        assert_eq!(layer("canaryRolloutPercent"), Layer::Default);
        assert_eq!(eff.explain.len(), 25);
    }

    #[test]
    fn backoff_conflicts_from_overrides_are_errors() {
        let loaded = Loaded::defaults();
        let doc = HostPolicyDoc {
            remediation_policy_profile: ProfileName::Strict,
            remediation_policy_overrides: json!({"retryBackoffSeconds": 900})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..HostPolicyDoc::default()
        };
        let errs = effective_policy(&loaded, &doc).expect_err("max 600 < base 900");
        let text = errs.to_string();
        assert!(text.starts_with("remediationPolicyOverrides.retryBackoffSeconds=900: out of range; allowed: an integer in 1..=600"), "{text}");
    }

    #[test]
    fn the_cache_builds_once_per_document_and_follows_changes() {
        let loaded = Loaded::defaults();
        let cache = EffectiveCache::default();
        let a = json!({"remediationPolicyOverrides": {"maxRetryAttempts": 5}});
        let first = cache.get(&loaded, Some(&a)).expect("valid");
        assert_eq!(first.policy.max_retry_attempts, 5);
        let again = cache.get(&loaded, Some(&a)).expect("valid");
        assert!(std::sync::Arc::ptr_eq(&first, &again), "built once");
        let b = json!({"remediationPolicyOverrides": {"maxRetryAttempts": 2}});
        assert_eq!(
            cache
                .get(&loaded, Some(&b))
                .expect("valid")
                .policy
                .max_retry_attempts,
            2
        );
        let none = cache.get(&loaded, None).expect("defaults");
        assert_eq!(
            none.policy.max_retry_attempts,
            loaded_default_attempts(&loaded)
        );
        let bad = json!({"remediationPolicyProfile": "turbo"});
        assert!(cache.get(&loaded, Some(&bad)).is_err());
        assert!(
            cache.get(&loaded, Some(&bad)).is_err(),
            "errors are not cached as policies"
        );
    }

    fn loaded_default_attempts(loaded: &Loaded) -> u32 {
        effective_policy(loaded, &HostPolicyDoc::default())
            .expect("defaults")
            .policy
            .max_retry_attempts
    }
}
