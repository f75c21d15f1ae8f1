//! Errors of this crate. Each carries the context a person needs to act on it
//! (the variable, the value, what is allowed) and a stable machine code for
//! callers, who should match on `code()`, never on the message.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with one configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The value has the right type but lies outside the allowed range.
    OutOfRange,
    /// The value is not of the expected type (`expected` reads "an integer",
    /// "a boolean", ...).
    WrongType {
        /// What was expected, with its article ("an integer").
        expected: &'static str,
    },
    /// The value is not one of a fixed set of choices.
    NotAllowed,
    /// The value has the right type but is malformed (bad regex, bad URL...).
    Invalid(String),
    /// The setting is unset but another setting needs it (the text says
    /// which, e.g. "required when VPS_REMEDIATE_STORE=aws").
    Required(&'static str),
}

impl Problem {
    /// Stable machine code of this problem.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::OutOfRange => "out_of_range",
            Problem::WrongType { .. } => "wrong_type",
            Problem::NotAllowed => "not_allowed",
            Problem::Invalid(_) => "invalid",
            Problem::Required(_) => "required",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::OutOfRange => f.write_str("out of range"),
            Problem::WrongType { expected } => write!(f, "not {expected}"),
            Problem::NotAllowed => f.write_str("not an allowed value"),
            Problem::Invalid(why) => f.write_str(why),
            Problem::Required(why) => f.write_str(why),
        }
    }
}

/// One configuration error. Its `Display` is a single line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not pass validation.
    #[error("{name}={value}: {problem}; allowed: {allowed} (set by {origin})")]
    InvalidValue {
        /// The variable: an env name such as `VPS_REMEDIATE_MAX_RETRY_ATTEMPTS`,
        /// or a field path such as `remediationPolicyOverrides.maxRetryAttempts`.
        name: String,
        /// The value as given, quoted and escaped, shortened when long,
        /// `<redacted>` for secrets.
        value: String,
        /// What is wrong with it.
        problem: Problem,
        /// What would be accepted.
        allowed: String,
        /// Which layer supplied it ("environment", "config file x.toml", ...).
        origin: String,
    },
    /// A key no knob answers to, where unknown keys are errors (host
    /// overrides, profile files). Unknown env variables are warnings instead.
    #[error("{name}: unknown setting (set by {origin}){}", hint(.suggestion))]
    UnknownSetting {
        /// The key as written.
        name: String,
        /// Which layer supplied it.
        origin: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A structural problem in a document (host policy JSON): a field of the
    /// wrong shape, an unknown profile name.
    #[error("{field}: {reason}")]
    InvalidField {
        /// JSON field path, e.g. `remediationPolicyProfile`.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The config file could not be read or parsed.
    #[error("config file {}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why it failed (one line).
        reason: String,
    },
    /// A built-in profile does not parse; a bug caught by this crate's tests.
    #[error("profile {profile}: {reason}")]
    Profile {
        /// Profile name.
        profile: String,
        /// What is wrong.
        reason: String,
    },
}

fn hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean {s}?"),
        None => String::new(),
    }
}

impl ConfigError {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::InvalidValue { problem, .. } => problem.code(),
            ConfigError::UnknownSetting { .. } => "unknown_setting",
            ConfigError::InvalidField { .. } => "invalid_field",
            ConfigError::ConfigFile { .. } => "config_file",
            ConfigError::Profile { .. } => "profile",
        }
    }
}

/// Every configuration error found, reported together so one restart fixes
/// them all. `Display` prints one error per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Stable machine code of the whole set.
    pub fn code(&self) -> &'static str {
        "config_invalid"
    }

    /// The errors, in the order found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when empty, else `Err(self)`.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// A warning from loading: the configuration works, but something in it is
/// probably a mistake (today: an unknown variable or file key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: unknown setting, ignored (set by {origin}){}", hint(.suggestion))]
pub struct ConfigWarning {
    /// The variable or key.
    pub name: String,
    /// Where it was found.
    pub origin: String,
    /// The closest known name, if one is close.
    pub suggestion: Option<String>,
}

impl ConfigWarning {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        "unknown_setting"
    }
}

/// Loading or validating an action catalog failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file could not be read.
    #[error("catalog {}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The TOML does not parse or does not have the catalog's shape.
    #[error("catalog {origin}: {reason}")]
    Syntax {
        /// File path or "built-in"/"demo".
        origin: String,
        /// The parser's message, on one line.
        reason: String,
    },
    /// The catalog parses but breaks a rule; every problem is listed, one per
    /// line, each naming its action.
    #[error("catalog {origin}: {}", problems.join("; "))]
    Invalid {
        /// File path or "built-in"/"demo".
        origin: String,
        /// One message per problem, each starting with the action id.
        problems: Vec<String>,
    },
}

impl CatalogError {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::Io { .. } => "catalog_io",
            CatalogError::Syntax { .. } => "catalog_syntax",
            CatalogError::Invalid { .. } => "catalog_invalid",
        }
    }
}

/// Quote and escape a value for an error message, so that the message stays
/// on one line whatever the value holds, and shorten it when long.
pub(crate) fn quote(value: &str) -> String {
    const MAX: usize = 80;
    let shown: String = if value.chars().count() > MAX {
        let head: String = value.chars().take(MAX).collect();
        format!("{head}...")
    } else {
        value.to_owned()
    };
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_value_is_one_line_naming_variable_value_and_allowed() {
        let e = ConfigError::InvalidValue {
            name: "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS".into(),
            value: quote("0\nx"),
            problem: Problem::OutOfRange,
            allowed: "an integer in 1..=20".into(),
            origin: "environment".into(),
        };
        let s = e.to_string();
        assert_eq!(
            s,
            "VPS_REMEDIATE_MAX_RETRY_ATTEMPTS=\"0\\nx\": out of range; allowed: an integer in 1..=20 (set by environment)"
        );
        assert_eq!(e.code(), "out_of_range");
    }

    #[test]
    fn errors_display_one_line_each() {
        let errs = ConfigErrors(vec![
            ConfigError::InvalidField {
                field: "a".into(),
                reason: "b".into(),
            },
            ConfigError::UnknownSetting {
                name: "maxRetryAtempts".into(),
                origin: "host override".into(),
                suggestion: Some("maxRetryAttempts".into()),
            },
        ]);
        let text = errs.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("did you mean maxRetryAttempts?"));
    }

    #[test]
    fn quote_shortens_long_values() {
        let long = "x".repeat(200);
        let q = quote(&long);
        assert!(q.len() < 100);
        assert!(q.ends_with("...\""));
    }
}
