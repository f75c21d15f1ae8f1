//! Small closed vocabularies shared by policy, catalog and decisions: tiers,
//! risks, the approval threshold, profile names and configuration layers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How much autonomy an action may have, lowest first:
/// `observe < safe_auto < guarded_auto < risky_manual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Read-only collection; never queued autonomously.
    Observe,
    /// Safe to run unattended; canary rollout is 100 %.
    SafeAuto,
    /// May run unattended within the canary rollout and with canary checks.
    GuardedAuto,
    /// Always needs an operator's approval.
    RiskyManual,
}

/// How much damage an action can do when it goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Read-only or trivially reversible.
    Low,
    /// Changes configuration; reversible by its rollback.
    Medium,
    /// Can cut access or service.
    High,
}

/// From which risk on approval is required (`none`: never, by risk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskThreshold {
    /// Risk never requires approval (risky_manual still does).
    None,
    /// Every action needs approval.
    Low,
    /// Medium and high risk need approval.
    Medium,
    /// Only high risk needs approval.
    High,
}

impl RiskThreshold {
    /// The lowest risk that needs approval, or `None` for the `none` threshold.
    pub fn min_risk(self) -> Option<Risk> {
        match self {
            RiskThreshold::None => None,
            RiskThreshold::Low => Some(Risk::Low),
            RiskThreshold::Medium => Some(Risk::Medium),
            RiskThreshold::High => Some(Risk::High),
        }
    }
}

/// A named policy profile applied over the global settings for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    /// Conservative: small queues, few attempts, no autonomy.
    Strict,
    /// The global settings as they are.
    #[default]
    Balanced,
    /// Bigger queues, more attempts, autonomy up to guarded_auto.
    Rapid,
}

impl ProfileName {
    /// All profiles.
    pub const ALL: [ProfileName; 3] = [
        ProfileName::Strict,
        ProfileName::Balanced,
        ProfileName::Rapid,
    ];
}

/// Which configuration layer set a value; later layers win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Built into the binary.
    Default,
    /// The config file.
    File,
    /// `VPS_REMEDIATE_*` or `OPS_WORKER_*` environment variables.
    Env,
    /// The host's profile.
    Profile,
    /// The host's own overrides.
    Host,
}

macro_rules! word_enum {
    ($ty:ty, $what:literal, [$($variant:path => $word:literal),+ $(,)?]) => {
        impl $ty {
            /// The configuration spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $word),+ }
            }
            /// Every spelling, in order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            /// Case-insensitive; `-` and `_` are the same.
            fn from_str(s: &str) -> Result<Self, String> {
                let norm = s.trim().to_ascii_lowercase().replace('-', "_");
                match norm.as_str() {
                    $($word => Ok($variant),)+
                    _ => Err(format!(
                        "{:?} is not a {}; allowed: {}",
                        s, $what, Self::WORDS.join(", ")
                    )),
                }
            }
        }
    };
}

word_enum!(Tier, "tier", [
    Tier::Observe => "observe",
    Tier::SafeAuto => "safe_auto",
    Tier::GuardedAuto => "guarded_auto",
    Tier::RiskyManual => "risky_manual",
]);
word_enum!(Risk, "risk", [Risk::Low => "low", Risk::Medium => "medium", Risk::High => "high"]);
word_enum!(RiskThreshold, "risk threshold", [
    RiskThreshold::None => "none",
    RiskThreshold::Low => "low",
    RiskThreshold::Medium => "medium",
    RiskThreshold::High => "high",
]);
word_enum!(ProfileName, "profile", [
    ProfileName::Strict => "strict",
    ProfileName::Balanced => "balanced",
    ProfileName::Rapid => "rapid",
]);
word_enum!(Layer, "layer", [
    Layer::Default => "default",
    Layer::File => "file",
    Layer::Env => "env",
    Layer::Profile => "profile",
    Layer::Host => "host",
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered_lowest_first() {
        assert!(Tier::Observe < Tier::SafeAuto);
        assert!(Tier::SafeAuto < Tier::GuardedAuto);
        assert!(Tier::GuardedAuto < Tier::RiskyManual);
        assert!(Risk::Low < Risk::Medium && Risk::Medium < Risk::High);
    }

    #[test]
    fn words_parse_case_insensitively_and_round_trip() {
        assert_eq!("SAFE-AUTO".parse::<Tier>(), Ok(Tier::SafeAuto));
        assert_eq!("Rapid".parse::<ProfileName>(), Ok(ProfileName::Rapid));
        for w in Tier::WORDS {
            let t: Tier = w.parse().expect("tier word");
            assert_eq!(t.as_str(), *w);
            let json = serde_json::to_string(&t).expect("serialize");
            assert_eq!(json, format!("\"{w}\""));
        }
        let err = "turbo".parse::<ProfileName>().expect_err("unknown");
        assert!(err.contains("strict, balanced, rapid"), "{err}");
    }
}
