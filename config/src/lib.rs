#![doc = include_str!("../README.md")]
//!
//! # API map
//!
//! - Loading: [`Loader`] → [`Loaded`] (with [`Settings`] and warnings), or
//!   [`ConfigErrors`] listing every problem.
//! - Per host: [`HostPolicyDoc`] and [`effective_policy`] → [`Effective`]
//!   ([`Policy`], [`GuardPolicy`], [`ExplainEntry`] per knob).
//! - Knobs: [`knobs::KNOBS`], the single table behind all of the above.
//! - Catalog: [`Catalog`], [`Action`], [`Action::render`] →
//!   [`RenderedAction`] or [`ParamIssue`]s.
//! - Guard: [`guard::check`], [`guard::check_action`] → [`guard::GuardIssue`]s.
//! - Decisions: [`retry_delay`], [`retry_allowed`], [`approval_required`],
//!   [`autonomous_gate`], [`execute_gate`], [`canary_bucket`],
//!   [`canary_percent`], [`canary_selected`].

mod catalog;
mod decide;
mod effective;
pub mod error;
pub mod guard;
pub mod knobs;
mod loader;
mod policy;
mod profiles;
mod settings;
mod types;

pub use catalog::{
    Action, BUILTIN_TOML, Catalog, DEMO_TOML, MAX_ACTION_TIMEOUT_SECS, Param, ParamIssue,
    ParamKind, RESERVED_PLACEHOLDERS, RenderContext, RenderedAction, SUDO_PREFIX,
};
pub use decide::{
    ExecuteGateInput, GateInput, SkipReason, approval_required, autonomous_gate, canary_bucket,
    canary_percent, canary_selected, execute_gate, retry_allowed, retry_delay,
};
pub use effective::{Effective, EffectiveCache, ExplainEntry, HostPolicyDoc, effective_policy};
pub use error::{CatalogError, ConfigError, ConfigErrors, ConfigWarning, Problem};
pub use guard::{CommandKind, GuardIssue};
pub use loader::{DEFAULT_CONFIG_FILE, Loaded, Loader};
pub use policy::{GuardPolicy, GuardRegex, Policy};
pub use profiles::profile_source;
pub use settings::{
    CatalogSource, ExecutorSettings, Secret, Settings, StoreKind, StoreSettings, WorkerSettings,
};
pub use types::{Layer, ProfileName, Risk, RiskThreshold, Tier};
