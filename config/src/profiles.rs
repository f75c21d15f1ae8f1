//! The policy profiles strict, balanced and rapid. Their source is
//! `config/profiles/*.toml`, embedded into the binary so that it works
//! without the repository; a profile file holds per-host knobs under their
//! config-file keys.

use crate::error::{ConfigError, Problem};
use crate::knobs::{self, KNOBS, KnobValue, Raw};
use crate::types::ProfileName;

const STRICT: &str = include_str!("../profiles/strict.toml");
const BALANCED: &str = include_str!("../profiles/balanced.toml");
const RAPID: &str = include_str!("../profiles/rapid.toml");

/// The TOML source of a built-in profile.
pub fn profile_source(name: ProfileName) -> &'static str {
    match name {
        ProfileName::Strict => STRICT,
        ProfileName::Balanced => BALANCED,
        ProfileName::Rapid => RAPID,
    }
}

/// The parsed built-in profiles: for each, the knobs it sets.
#[derive(Debug, Clone)]
pub(crate) struct Profiles {
    strict: Vec<(usize, KnobValue)>,
    balanced: Vec<(usize, KnobValue)>,
    rapid: Vec<(usize, KnobValue)>,
}

impl Profiles {
    pub(crate) fn embedded() -> Result<Profiles, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut parse = |name| {
            parse_profile(name, profile_source(name)).unwrap_or_else(|mut e| {
                errors.append(&mut e);
                Vec::new()
            })
        };
        let profiles = Profiles {
            strict: parse(ProfileName::Strict),
            balanced: parse(ProfileName::Balanced),
            rapid: parse(ProfileName::Rapid),
        };
        if errors.is_empty() {
            Ok(profiles)
        } else {
            Err(errors)
        }
    }

    pub(crate) fn get(&self, name: ProfileName) -> &[(usize, KnobValue)] {
        match name {
            ProfileName::Strict => &self.strict,
            ProfileName::Balanced => &self.balanced,
            ProfileName::Rapid => &self.rapid,
        }
    }
}

/// Parse one profile: every key must be a per-host knob's config-file key and
/// every value must validate.
pub(crate) fn parse_profile(
    name: ProfileName,
    text: &str,
) -> Result<Vec<(usize, KnobValue)>, Vec<ConfigError>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        vec![ConfigError::Profile {
            profile: name.to_string(),
            reason: e.message().to_owned(),
        }]
    })?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let origin = format!("profile {name}");
    for (key, value) in &table {
        let Some((index, knob)) = knobs::by_key(key).filter(|(_, k)| k.group.per_host()) else {
            let per_host = KNOBS.iter().filter(|k| k.group.per_host()).map(|k| k.key);
            errors.push(ConfigError::UnknownSetting {
                name: format!("{name}.toml: {key}"),
                origin: origin.clone(),
                suggestion: knobs::suggest(key, per_host),
            });
            continue;
        };
        let raw = Raw::from_toml(value);
        match knob.coerce(&raw) {
            Ok(v) => out.push((index, v)),
            Err(problem) => errors.push(invalid(knob, &raw, problem, &origin)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn invalid(knob: &knobs::Knob, raw: &Raw, problem: Problem, origin: &str) -> ConfigError {
    ConfigError::InvalidValue {
        name: knob.env.to_owned(),
        value: knob.shown(raw),
        problem,
        allowed: knob.allowed(),
        origin: origin.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_parse() {
        let p = Profiles::embedded().expect("profiles");
        assert!(p.get(ProfileName::Balanced).is_empty());
        assert_eq!(p.get(ProfileName::Strict).len(), 16);
        assert_eq!(p.get(ProfileName::Rapid).len(), 21);
    }

    #[test]
    fn profiles_reject_unknown_and_process_wide_keys() {
        let errs = parse_profile(
            ProfileName::Strict,
            "max_retry_atempts = 2\nqueue_token = \"x\"\n",
        )
        .expect_err("rejected");
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0]
                .to_string()
                .contains("did you mean max_retry_attempts?")
        );
        let errs =
            parse_profile(ProfileName::Strict, "max_retry_attempts = 99").expect_err("range");
        assert_eq!(errs[0].code(), "out_of_range");
    }
}
