//! The figment loader: merges the built-in defaults, the config file and the
//! environment, validates every knob and reports all errors at once.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Serialized};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::effective::ExplainEntry;
use crate::error::{ConfigError, ConfigErrors, ConfigWarning, Problem};
use crate::knobs::{
    self, AWS_ENV_PREFIX, BACKOFF_MAX_LIMIT, ENV_PREFIX, Group, KNOBS, Knob, KnobDefault,
    KnobValue, Raw, Values, WORKER_ENV_PREFIX,
};
use crate::profiles::Profiles;
use crate::settings::Settings;
use crate::types::{Layer, ProfileName};

/// The config file used when no `--config PATH` is given, relative to the
/// working directory, and only when it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/remediate.toml";

/// Loads and validates the settings of the whole system.
///
/// Layers, later wins:
///
/// 1. **default**: the built-in defaults (the seed's; see the knob table).
/// 2. **file**: the config file: the `--config PATH` given to
///    [`Loader::config_file`], else `config/remediate.toml` in the working
///    directory when it exists. Keys are the env names without their prefix,
///    lowercased (`max_retry_attempts = 3`); `OPS_WORKER_*` knobs go in a
///    `[worker]` table (`drain_limit = 5`).
/// 3. **env**: `VPS_REMEDIATE_*` and `OPS_WORKER_*` environment variables.
///
/// Then, per host, in [`crate::effective_policy`]:
///
/// 4. **profile**: the host's profile (strict, balanced, rapid), which sets
///    some policy and guard knobs (balanced sets none).
/// 5. **host**: the host's own `remediationPolicyOverrides` and
///    `remediationGuardOverrides`.
///
/// Every value is validated; every error is collected and returned together,
/// one line each, naming the variable, the value given and what is allowed.
/// Unknown `VPS_REMEDIATE_*`/`OPS_WORKER_*` variables and unknown file keys
/// do not stop loading: they come back as [`Loaded::warnings`], with the
/// closest known name when there is one. `load` also checks that each
/// profile, applied over these settings, gives a valid policy, so a host with
/// no overrides can never fail later.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    config_file: Option<PathBuf>,
}

impl Loader {
    /// A loader with no explicit config file.
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Use this config file (from `--config PATH`); it must exist. `None`
    /// falls back to `config/remediate.toml` when present.
    pub fn config_file(mut self, path: Option<PathBuf>) -> Loader {
        self.config_file = path;
        self
    }

    /// Merge the layers and validate. See the type's doc for the order.
    pub fn load(&self) -> Result<Loaded, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let (file, file_table) = match self.read_file() {
            Ok(Some((path, table))) => (Some(path), table),
            Ok(None) => (None, toml::Table::new()),
            Err(e) => {
                errors.push(e);
                (None, toml::Table::new())
            }
        };
        let file_origin = file.as_deref().map(file_origin).unwrap_or_default();
        let file_known = known_file_keys(
            &file_table,
            file.as_deref(),
            &file_origin,
            &mut warnings,
            &mut errors,
        );
        warnings.extend(unknown_env_vars());

        let figment = Figment::new()
            .merge(Named::new(Serialized::defaults(defaults_dict()), "default"))
            .merge(Named::new(Serialized::defaults(file_known), "file"))
            .merge(EnvLayer);

        let mut values = Values::defaults();
        for (index, knob) in KNOBS.iter().enumerate() {
            let Ok(value) = figment.find_value(knob.key) else {
                continue;
            };
            let layer = match figment.get_metadata(value.tag()).map(|m| m.name.as_ref()) {
                Some("file") => Layer::File,
                Some("environment") => Layer::Env,
                _ => Layer::Default,
            };
            let raw = Raw::from_figment(&value);
            match knob.coerce(&raw) {
                Ok(v) => values.set(index, v, layer),
                Err(problem) => errors.push(ConfigError::InvalidValue {
                    name: knob.env.to_owned(),
                    value: knob.shown(&raw),
                    problem,
                    allowed: knob.allowed(),
                    origin: origin(layer, knob, &file_origin),
                }),
            }
        }
        if let Some(e) = backoff_error(&values, None, &file_origin) {
            errors.push(e);
        }
        errors.extend(store_error(&values, &file_origin));

        let profiles = match Profiles::embedded() {
            Ok(p) => Some(p),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        if let (Some(profiles), true) = (&profiles, errors.is_empty()) {
            for name in ProfileName::ALL {
                let mut v = values.clone();
                for (index, value) in profiles.get(name) {
                    v.set(*index, value.clone(), Layer::Profile);
                }
                errors.extend(backoff_error(&v, Some(name), &file_origin));
            }
        }

        let settings = Settings::from_values(&values);
        ConfigErrors(errors).into_result(())?;
        let (Ok(settings), Some(profiles)) = (settings, profiles) else {
            // Unreachable when every knob validated; reported rather than panicking.
            return Err(ConfigError::InvalidField {
                field: "settings".into(),
                reason: "validated values did not build the settings".into(),
            }
            .into());
        };
        Ok(Loaded {
            settings,
            warnings,
            config_file: file,
            values,
            profiles,
        })
    }

    fn read_file(&self) -> Result<Option<(PathBuf, toml::Table)>, ConfigError> {
        let path = match &self.config_file {
            Some(p) => p.clone(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                if !p.is_file() {
                    return Ok(None);
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::ConfigFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text.get(..s.start).unwrap_or("").lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::ConfigFile {
                path: path.clone(),
                reason: format!("{}{at}", e.message().trim()),
            }
        })?;
        Ok(Some((path, table)))
    }
}

fn file_origin(path: &Path) -> String {
    format!("config file {}", path.display())
}

fn origin(layer: Layer, knob: &Knob, file_origin: &str) -> String {
    match layer {
        Layer::File => format!("{file_origin}, key {}", knob.key),
        Layer::Env => "environment".to_owned(),
        Layer::Default => "built-in default".to_owned(),
        Layer::Profile => "profile".to_owned(),
        Layer::Host => "host override".to_owned(),
    }
}

/// The `max >= base` rule of the retry backoff, as an error on the max knob.
pub(crate) fn backoff_error(
    values: &Values,
    profile: Option<ProfileName>,
    file_origin: &str,
) -> Option<ConfigError> {
    let (base, max) = values.backoff_conflict()?;
    let (index, knob) = knobs::by_key("retry_backoff_max_seconds")?;
    let layer = values
        .entries
        .get(index)
        .map_or(Layer::Default, |(_, l)| *l);
    let mut origin = origin(layer, knob, file_origin);
    if let Some(p) = profile {
        origin = format!("{origin}, with profile {p}");
    }
    Some(ConfigError::InvalidValue {
        name: knob.env.to_owned(),
        value: max.to_string(),
        problem: Problem::OutOfRange,
        allowed: format!(
            "an integer in {base}..={BACKOFF_MAX_LIMIT} (at least VPS_REMEDIATE_RETRY_BACKOFF_SECONDS, which is {base})"
        ),
        origin,
    })
}

/// The AWS store needs a bucket: `VPS_REMEDIATE_STORE=aws` without
/// `VPS_REMEDIATE_S3_BUCKET` is an error on the bucket knob.
fn store_error(values: &Values, file_origin: &str) -> Option<ConfigError> {
    let (si, store) = knobs::by_key("store")?;
    let (bi, bucket) = knobs::by_key("s3_bucket")?;
    let aws = matches!(values.get(si), Some(KnobValue::Text(t)) if t == "aws");
    if !aws || values.get(bi) != Some(&KnobValue::Unset) {
        return None;
    }
    let layer = values.entries.get(si).map_or(Layer::Default, |(_, l)| *l);
    Some(ConfigError::InvalidValue {
        name: bucket.env.to_owned(),
        value: "(unset)".to_owned(),
        problem: Problem::Required("required when VPS_REMEDIATE_STORE=aws"),
        allowed: bucket.allowed(),
        origin: format!("{} from {}", store.env, origin(layer, store, file_origin)),
    })
}

/// The defaults as a figment dictionary, nested like the config file.
fn defaults_dict() -> Dict {
    let mut dict = Dict::new();
    let mut worker = Dict::new();
    for k in KNOBS {
        let value: Value = match k.default {
            KnobDefault::Int(i) => i.into(),
            KnobDefault::Bool(b) => b.into(),
            KnobDefault::Text(t) => t.into(),
            KnobDefault::Unset => continue,
        };
        match k.key.strip_prefix("worker.") {
            Some(sub) => worker.insert(sub.to_owned(), value),
            None => dict.insert(k.key.to_owned(), value),
        };
    }
    dict.insert("worker".to_owned(), worker.into());
    dict
}

/// Keep the file's known keys for figment; warn about the others.
fn known_file_keys(
    table: &toml::Table,
    path: Option<&Path>,
    origin: &str,
    warnings: &mut Vec<ConfigWarning>,
    errors: &mut Vec<ConfigError>,
) -> toml::Table {
    let top_keys = || {
        KNOBS
            .iter()
            .filter(|k| k.group != Group::Worker)
            .map(|k| k.key)
    };
    let worker_keys = || KNOBS.iter().filter_map(|k| k.key.strip_prefix("worker."));
    let mut known = toml::Table::new();
    for (key, value) in table {
        if key == "worker" {
            let Some(sub) = value.as_table() else {
                errors.push(ConfigError::ConfigFile {
                    path: path.map(Path::to_path_buf).unwrap_or_default(),
                    reason: "`worker` must be a table of OPS_WORKER_* settings".to_owned(),
                });
                continue;
            };
            let mut kept = toml::Table::new();
            for (k, v) in sub {
                if worker_keys().any(|w| w == k) {
                    kept.insert(k.clone(), v.clone());
                } else {
                    warnings.push(ConfigWarning {
                        name: format!("worker.{k}"),
                        origin: origin.to_owned(),
                        suggestion: knobs::suggest(k, worker_keys()).map(|s| format!("worker.{s}")),
                    });
                }
            }
            known.insert(key.clone(), toml::Value::Table(kept));
        } else if top_keys().any(|k| k == key) {
            known.insert(key.clone(), value.clone());
        } else {
            warnings.push(ConfigWarning {
                name: key.clone(),
                origin: origin.to_owned(),
                suggestion: knobs::suggest(key, top_keys()),
            });
        }
    }
    known
}

/// Warnings for `VPS_REMEDIATE_*` and `OPS_WORKER_*` variables that no knob
/// answers to: a typo must not pass silently.
fn unknown_env_vars() -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().trim().to_ascii_uppercase();
        let ours = name.starts_with(ENV_PREFIX) || name.starts_with(WORKER_ENV_PREFIX);
        if ours && knobs::by_env(&name).is_none() {
            out.push(ConfigWarning {
                suggestion: knobs::suggest(&name, KNOBS.iter().map(|k| k.env)),
                name,
                origin: "environment".to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A provider with a fixed metadata name, which is how a value's layer is
/// found again after merging.
struct Named<P> {
    inner: P,
    name: &'static str,
}

impl<P> Named<P> {
    fn new(inner: P, name: &'static str) -> Named<P> {
        Named { inner, name }
    }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// The environment layer: figment's `Env` finds the variables; values stay
/// raw strings (no TOML-ish parsing, so a regex like `[a-z]+` stays a
/// string) and are validated by the knob table. Unknown names are left out
/// here and warned about by [`unknown_env_vars`].
struct EnvLayer;

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in Env::prefixed(ENV_PREFIX).iter() {
            if knobs::by_key(key.as_str())
                .is_some_and(|(_, k)| k.group != Group::Worker && k.env.starts_with(ENV_PREFIX))
            {
                dict.insert(key.as_str().to_owned(), Value::from(value));
            }
        }
        // `AWS_REGION` and `AWS_ENDPOINT_URL` keep the SDK's own names: read
        // exactly those, unprefixed; other `AWS_*` variables are not ours.
        let aws: Vec<&str> = KNOBS
            .iter()
            .filter(|k| k.env.starts_with(AWS_ENV_PREFIX))
            .map(|k| k.env)
            .collect();
        for (key, value) in Env::raw().only(&aws).iter() {
            if knobs::by_key(key.as_str()).is_some() {
                dict.insert(key.as_str().to_owned(), Value::from(value));
            }
        }
        let mut worker = Dict::new();
        for (key, value) in Env::prefixed(WORKER_ENV_PREFIX).iter() {
            if knobs::by_key(&format!("worker.{}", key.as_str())).is_some() {
                worker.insert(key.as_str().to_owned(), Value::from(value));
            }
        }
        if !worker.is_empty() {
            dict.insert("worker".to_owned(), worker.into());
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// The result of [`Loader::load`]: validated settings, warnings, and what is
/// needed to compute any host's effective policy.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// Problems that did not stop loading (unknown variables and keys).
    pub warnings: Vec<ConfigWarning>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub(crate) values: Values,
    pub(crate) profiles: Profiles,
}

impl Loaded {
    /// The built-in defaults only: no file, no environment. For tests and
    /// tools that must not depend on the process environment.
    pub fn defaults() -> Loaded {
        let values = Values::defaults();
        Loaded {
            settings: Settings::from_values(&values).expect("built-in defaults are valid (tested)"),
            warnings: Vec::new(),
            config_file: None,
            profiles: Profiles::embedded().expect("built-in profiles are valid (tested)"),
            values,
        }
    }

    /// For every knob, its value and the layer that set it. Secrets show as
    /// `"<redacted>"` when set.
    pub fn explain(&self) -> Vec<ExplainEntry> {
        KNOBS
            .iter()
            .zip(&self.values.entries)
            .map(|(k, (v, layer))| ExplainEntry::new(k, v, *layer))
            .collect()
    }

    /// The layer that set the knob with this env name.
    pub fn layer_of(&self, env: &str) -> Option<Layer> {
        let (index, _) = knobs::by_env(env)?;
        self.values.entries.get(index).map(|(_, l)| *l)
    }
}
