//! The action catalog: what may be run, as data. An action's commands,
//! canary checks and rollback commands are argv arrays with `{placeholder}`
//! substitution of typed, validated parameters; a request chooses an action
//! and fills its parameters, never a command.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CatalogError;
use crate::policy::GuardRegex;
use crate::types::{Risk, Tier};

/// The built-in catalog's TOML (`config/catalog/actions.toml`).
pub const BUILTIN_TOML: &str = include_str!("../catalog/actions.toml");
/// The demo catalog's TOML (`config/catalog/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../catalog/demo.toml");

/// Placeholders every action may use, filled from [`RenderContext`]:
/// `{run_id}` and `{attempt}` (1 for the first attempt).
pub const RESERVED_PLACEHOLDERS: &[&str] = &["run_id", "attempt"];

/// The prefix the executor puts before each argv of an action marked `sudo`,
/// after the guard has checked the argv itself.
pub const SUDO_PREFIX: [&str; 3] = ["/usr/bin/sudo", "-n", "--"];

/// Longest allowed timeout of an action, seconds.
pub const MAX_ACTION_TIMEOUT_SECS: u64 = 3600;

/// A set of actions, looked up by id or trigger code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalog {
    origin: String,
    actions: Vec<Action>,
}

/// One remediation action.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Stable id, `a-z 0-9 -`.
    pub id: String,
    /// One line for people.
    pub title: String,
    /// What it does and why, for the console.
    pub description: String,
    /// How much damage it can do.
    pub risk: Risk,
    /// How much autonomy it may have.
    pub tier: Tier,
    /// Finding codes this action answers.
    pub triggers: Vec<String>,
    /// Whether this is the catalog's fallback for unknown findings.
    pub fallback: bool,
    /// Declared parameters, by name.
    pub params: Vec<Param>,
    /// Commands, run in order; the first failure fails the attempt.
    pub commands: Vec<Vec<String>>,
    /// Checks run after the commands succeed; each must exit 0.
    pub canary_checks: Vec<Vec<String>>,
    /// Commands run once when the run or its canary fails.
    pub rollback: Vec<Vec<String>>,
    /// Time limit of the whole attempt, seconds.
    pub timeout_secs: u64,
    /// Whether running it twice is the same as running it once; an
    /// interrupted attempt is retried only if so.
    pub idempotent: bool,
    /// Whether the executor runs each command through `sudo -n --`.
    pub sudo: bool,
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Param {
    /// Name, used as `{name}` in argv templates.
    pub name: String,
    /// What it is, for the console.
    pub description: String,
    /// Its type and restrictions.
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Value used when the request leaves it out; without one it is required.
    pub default: Option<serde_json::Value>,
    /// An example value for documentation and tests.
    pub example: Option<serde_json::Value>,
}

/// A parameter's type. Values are checked against it before substitution.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// An integer in `min..=max`, not in `exclude`; substituted in decimal.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// Values refused although in range (e.g. port 22).
        exclude: Vec<i64>,
    },
    /// One of fixed words.
    Enum {
        /// The allowed words.
        values: Vec<String>,
    },
    /// An absolute path under one of `prefixes`, of `A-Z a-z 0-9 . _ - + @ /`,
    /// with no `.`/`..` components and no empty ones.
    Path {
        /// Allowed directories; a value must be one of them or inside one.
        prefixes: Vec<String>,
    },
    /// Printable ASCII without spaces, not starting with `-`, at most
    /// `max_len` characters, matching `pattern` in full.
    String {
        /// The regex a value must match entirely.
        pattern: String,
        /// Longest value.
        max_len: usize,
        /// `pattern`, anchored and compiled.
        #[serde(skip)]
        regex: GuardRegex,
    },
}

/// Why a parameter value (or the run context) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamIssue {
    /// The parameter (or `run_id`/`attempt`).
    pub param: String,
    /// Stable machine code, e.g. `out_of_range`, `path_traversal`.
    pub code: &'static str,
    /// A sentence a person can act on.
    pub reason: String,
}

impl std::fmt::Display for ParamIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.reason)
    }
}

/// The reserved placeholder values of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// The run's id (`A-Z a-z 0-9 _ -`, at most 64).
    pub run_id: String,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl RenderContext {
    /// Context of attempt `attempt` of run `run_id`.
    pub fn new(run_id: impl Into<String>, attempt: u32) -> RenderContext {
        RenderContext {
            run_id: run_id.into(),
            attempt,
        }
    }
}

/// An action with every placeholder substituted: what the guard checks and
/// the executor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderedAction {
    /// The action.
    pub action_id: String,
    /// The parameter values used, defaults filled in, in canonical form.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Commands.
    pub commands: Vec<Vec<String>>,
    /// Canary checks.
    pub canary_checks: Vec<Vec<String>>,
    /// Rollback commands.
    pub rollback: Vec<Vec<String>>,
    /// Whether each argv runs through `sudo -n --`.
    pub sudo: bool,
    /// Time limit of the attempt, seconds.
    pub timeout_secs: u64,
    /// Whether the action is idempotent.
    pub idempotent: bool,
}

impl RenderedAction {
    /// The argv to execute for a guarded `argv` of this action: with
    /// [`SUDO_PREFIX`] in front when the action is marked `sudo`.
    pub fn exec_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len() + SUDO_PREFIX.len());
        if self.sudo {
            out.extend(SUDO_PREFIX.iter().map(|s| (*s).to_owned()));
        }
        out.extend(argv.iter().cloned());
        out
    }
}

impl Catalog {
    /// The built-in catalog: the five remediation actions of the system we
    /// replace, rewritten as argv commands.
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN_TOML, "built-in").expect("built-in catalog is valid (tested)")
    }

    /// The demo catalog: harmless actions for a laptop and for tests.
    pub fn demo() -> Catalog {
        Catalog::parse(DEMO_TOML, "demo").expect("demo catalog is valid (tested)")
    }

    /// Load a catalog file.
    pub fn load(path: impl AsRef<Path>) -> Result<Catalog, CatalogError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parse a catalog from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        Catalog::parse(text, "inline")
    }

    fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| CatalogError::Syntax {
            origin: origin.to_owned(),
            reason: one_line(&e.to_string()),
        })?;
        let mut problems = Vec::new();
        let mut actions = Vec::new();
        let mut ids = BTreeSet::new();
        for ra in raw.action {
            if !ids.insert(ra.id.clone()) {
                problems.push(format!("{}: duplicate action id", ra.id));
            }
            match build_action(ra) {
                Ok(a) => actions.push(a),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if actions.iter().filter(|a| a.fallback).count() > 1 {
            problems.push("catalog: more than one fallback action".to_owned());
        }
        if problems.is_empty() {
            Ok(Catalog {
                origin: origin.to_owned(),
                actions,
            })
        } else {
            Err(CatalogError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Where the catalog came from ("built-in", "demo", "inline" or a path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// All actions, in file order.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// The action with this id.
    pub fn get(&self, id: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.id == id)
    }

    /// The first action listing this trigger code, else the fallback.
    pub fn for_trigger(&self, code: &str) -> Option<&Action> {
        self.actions
            .iter()
            .find(|a| a.triggers.iter().any(|t| t == code))
            .or_else(|| self.fallback())
    }

    /// The fallback action, if the catalog has one.
    pub fn fallback(&self) -> Option<&Action> {
        self.actions.iter().find(|a| a.fallback)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    action: Vec<RawAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    risk: Risk,
    tier: Tier,
    #[serde(default)]
    triggers: Vec<String>,
    #[serde(default)]
    fallback: bool,
    commands: Vec<Vec<String>>,
    #[serde(default)]
    canary_checks: Vec<Vec<String>>,
    #[serde(default)]
    rollback: Vec<Vec<String>>,
    timeout_secs: u64,
    idempotent: bool,
    #[serde(default)]
    sudo: bool,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(default)]
    exclude: Vec<i64>,
    values: Option<Vec<String>>,
    prefixes: Option<Vec<String>>,
    pattern: Option<String>,
    max_len: Option<usize>,
    default: Option<toml::Value>,
    example: Option<toml::Value>,
}

fn is_word(s: &str, extra: &[char], max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

fn build_action(ra: RawAction) -> Result<Action, Vec<String>> {
    let id = ra.id.clone();
    let mut problems = Vec::new();
    let mut problem = |msg: String| problems.push(format!("{id}: {msg}"));
    if !is_word(&ra.id, &['-'], 64) || ra.id.starts_with('-') {
        problem("id must be 1-64 of a-z 0-9 -".into());
    }
    if ra.title.trim().is_empty() {
        problem("title is empty".into());
    }
    for t in &ra.triggers {
        if !is_word(t, &['_'], 64) {
            problem(format!("trigger {t:?} must be a-z 0-9 _"));
        }
    }
    if ra.timeout_secs == 0 || ra.timeout_secs > MAX_ACTION_TIMEOUT_SECS {
        problem(format!(
            "timeout_secs must be in 1..={MAX_ACTION_TIMEOUT_SECS}"
        ));
    }
    if ra.commands.is_empty() {
        problem("has no commands".into());
    }
    let mut params = Vec::new();
    for (name, rp) in ra.params {
        if !is_word(&name, &['_'], 32) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            problem(format!(
                "parameter name {name:?} must be a-z 0-9 _, starting with a letter"
            ));
            continue;
        }
        if RESERVED_PLACEHOLDERS.contains(&name.as_str()) {
            problem(format!("parameter {name} is a reserved placeholder"));
            continue;
        }
        match build_param(&name, rp) {
            Ok(p) => params.push(p),
            Err(msg) => problem(format!("parameter {name}: {msg}")),
        }
    }
    let mut used = BTreeSet::new();
    for (list, cmds) in [
        ("commands", &ra.commands),
        ("canary_checks", &ra.canary_checks),
        ("rollback", &ra.rollback),
    ] {
        for (i, argv) in cmds.iter().enumerate() {
            let Some(exe) = argv.first() else {
                problem(format!("{list}[{i}] is empty"));
                continue;
            };
            if !exe.starts_with('/') || exe.contains(['{', '}']) {
                problem(format!(
                    "{list}[{i}]: the executable must be a literal absolute path, not {exe:?}"
                ));
            }
            for word in argv {
                match placeholders(word) {
                    Ok(names) => {
                        for n in names {
                            let declared = params.iter().any(|p| p.name == n)
                                || RESERVED_PLACEHOLDERS.contains(&n.as_str());
                            if !declared {
                                problem(format!("{list}[{i}] uses undeclared placeholder {{{n}}}"));
                            }
                            used.insert(n);
                        }
                    }
                    Err(msg) => problem(format!("{list}[{i}] {word:?}: {msg}")),
                }
            }
        }
    }
    for p in &params {
        if !used.contains(&p.name) {
            problem(format!("parameter {} is never used", p.name));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Action {
        id: ra.id,
        title: ra.title,
        description: ra.description.trim().to_owned(),
        risk: ra.risk,
        tier: ra.tier,
        triggers: ra.triggers,
        fallback: ra.fallback,
        params,
        commands: ra.commands,
        canary_checks: ra.canary_checks,
        rollback: ra.rollback,
        timeout_secs: ra.timeout_secs,
        idempotent: ra.idempotent,
        sudo: ra.sudo,
    })
}

fn build_param(name: &str, rp: RawParam) -> Result<Param, String> {
    let only = |field: &str, present: bool, kind: &str| {
        if present {
            Err(format!("{field} does not apply to type {kind}"))
        } else {
            Ok(())
        }
    };
    let kind = match rp.kind.as_str() {
        "int" => {
            only("values", rp.values.is_some(), "int")?;
            only("prefixes", rp.prefixes.is_some(), "int")?;
            only("pattern", rp.pattern.is_some(), "int")?;
            let (Some(min), Some(max)) = (rp.min, rp.max) else {
                return Err("type int needs min and max".into());
            };
            if min > max {
                return Err("min is greater than max".into());
            }
            ParamKind::Int {
                min,
                max,
                exclude: rp.exclude,
            }
        }
        "enum" => {
            only("min/max", rp.min.is_some() || rp.max.is_some(), "enum")?;
            only("prefixes", rp.prefixes.is_some(), "enum")?;
            only("pattern", rp.pattern.is_some(), "enum")?;
            let values = rp.values.unwrap_or_default();
            if values.is_empty() {
                return Err("type enum needs values".into());
            }
            let safe = |v: &String| {
                !v.is_empty()
                    && v.len() <= 64
                    && !v.starts_with('-')
                    && v.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+')
                    })
            };
            if let Some(bad) = values.iter().find(|v| !safe(v)) {
                return Err(format!(
                    "enum value {bad:?} must be 1-64 of A-Z a-z 0-9 . _ - : @ +"
                ));
            }
            ParamKind::Enum { values }
        }
        "path" => {
            only("min/max", rp.min.is_some() || rp.max.is_some(), "path")?;
            only("values", rp.values.is_some(), "path")?;
            only("pattern", rp.pattern.is_some(), "path")?;
            let prefixes = rp.prefixes.unwrap_or_default();
            if prefixes.is_empty() {
                return Err("type path needs prefixes".into());
            }
            for p in &prefixes {
                if p != "/" && check_path_shape(p).is_err() {
                    return Err(format!("prefix {p:?} is not a normalised absolute path"));
                }
            }
            ParamKind::Path { prefixes }
        }
        "string" => {
            only("min/max", rp.min.is_some() || rp.max.is_some(), "string")?;
            only("values", rp.values.is_some(), "string")?;
            only("prefixes", rp.prefixes.is_some(), "string")?;
            let pattern = rp.pattern.ok_or("type string needs a pattern")?;
            let max_len = rp.max_len.unwrap_or(64);
            if max_len == 0 || max_len > 256 {
                return Err("max_len must be in 1..=256".into());
            }
            let regex = GuardRegex::new(&format!("^(?:{pattern})$"))?;
            ParamKind::String {
                pattern,
                max_len,
                regex,
            }
        }
        other => {
            return Err(format!(
                "unknown type {other:?}; allowed: int, enum, path, string"
            ));
        }
    };
    let mut param = Param {
        name: name.to_owned(),
        description: rp.description,
        kind,
        default: None,
        example: None,
    };
    for (field, value) in [("default", rp.default), ("example", rp.example)] {
        let Some(value) = value else { continue };
        let json = serde_json::to_value(&value).map_err(|e| e.to_string())?;
        if let Err(issue) = param.check(&json) {
            return Err(format!("{field} {json}: {}", issue.1));
        }
        if field == "default" {
            param.default = Some(json);
        } else {
            param.example = Some(json);
        }
    }
    Ok(param)
}

/// The placeholder names in one argv template word, or why it is malformed.
/// `{name}` is a placeholder; `{{` and `}}` are literal braces.
fn placeholders(word: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' => {
                            name.push(c)
                        }
                        _ => {
                            return Err(
                                "a '{' must open a {placeholder} of a-z 0-9 _ or be doubled".into(),
                            );
                        }
                    }
                }
                if name.is_empty() {
                    return Err("empty placeholder {}".into());
                }
                names.push(name);
            }
            '}' => return Err("a lone '}' must be doubled".into()),
            _ => {}
        }
    }
    Ok(names)
}

/// Substitute placeholders in a template word (validated at load).
fn substitute(word: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                match values.get(&name) {
                    Some(v) => out.push_str(v),
                    // Cannot happen after load validation; leave it visible
                    // so the guard refuses the braces.
                    None => {
                        out.push('{');
                        out.push_str(&name);
                        out.push('}');
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A path value's shape: absolute, safe characters, no empty, `.` or `..`
/// components. Returns (code, reason) when wrong.
fn check_path_shape(v: &str) -> Result<(), (&'static str, String)> {
    if !v.starts_with('/') {
        return Err(("invalid_path", "must be an absolute path".into()));
    }
    if v.len() > 1024 {
        return Err(("too_long", "is longer than 1024 characters".into()));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '/')))
    {
        return Err((
            "invalid_path",
            format!("contains {c:?}; allowed: A-Z a-z 0-9 . _ - + @ /"),
        ));
    }
    let components: Vec<&str> = v[1..].split('/').collect();
    if components.iter().any(|c| *c == ".." || *c == ".") {
        return Err(("path_traversal", "contains a '.' or '..' component".into()));
    }
    if components.iter().any(|c| c.is_empty()) {
        return Err((
            "invalid_path",
            "contains an empty component ('//' or a trailing '/')".into(),
        ));
    }
    Ok(())
}

impl Param {
    /// Check a value against this parameter's type; returns the canonical
    /// text to substitute, or (code, reason).
    fn check(&self, value: &serde_json::Value) -> Result<String, (&'static str, String)> {
        match &self.kind {
            ParamKind::Int { min, max, exclude } => {
                let n = match value {
                    serde_json::Value::Number(n) => n.as_i64(),
                    serde_json::Value::String(s)
                        if !s.is_empty()
                            && s.len() <= 20
                            && s.trim_start_matches('-')
                                .chars()
                                .all(|c| c.is_ascii_digit()) =>
                    {
                        s.parse::<i64>().ok()
                    }
                    _ => None,
                };
                let Some(n) = n else {
                    return Err(("wrong_type", format!("must be an integer in {min}..={max}")));
                };
                if n < *min || n > *max {
                    return Err(("out_of_range", format!("{n} is outside {min}..={max}")));
                }
                if exclude.contains(&n) {
                    return Err(("excluded", format!("{n} is not allowed for this action")));
                }
                Ok(n.to_string())
            }
            ParamKind::Enum { values } => match value.as_str() {
                Some(s) if values.iter().any(|v| v == s) => Ok(s.to_owned()),
                _ => Err((
                    "not_allowed",
                    format!("must be one of {}", values.join(", ")),
                )),
            },
            ParamKind::Path { prefixes } => {
                let Some(s) = value.as_str() else {
                    return Err(("wrong_type", "must be a string path".into()));
                };
                check_text(s)?;
                check_path_shape(s)?;
                let inside = |p: &String| {
                    p == "/"
                        || s == p
                        || s.strip_prefix(p.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                };
                if !prefixes.iter().any(inside) {
                    return Err((
                        "path_not_allowed",
                        format!("must be inside {}", prefixes.join(" or ")),
                    ));
                }
                Ok(s.to_owned())
            }
            ParamKind::String { max_len, regex, .. } => {
                let Some(s) = value.as_str() else {
                    return Err(("wrong_type", "must be a string".into()));
                };
                check_text(s)?;
                if s.is_empty() {
                    return Err(("empty", "must not be empty".into()));
                }
                if s.len() > *max_len {
                    return Err(("too_long", format!("is longer than {max_len} characters")));
                }
                if s.starts_with('-') {
                    return Err((
                        "leading_dash",
                        "must not start with '-' (it would read as an option)".into(),
                    ));
                }
                if !regex.is_match(s) {
                    return Err((
                        "pattern_mismatch",
                        format!("does not match {}", regex.as_str()),
                    ));
                }
                Ok(s.to_owned())
            }
        }
    }
}

/// Text rules common to every string value: no NUL, newline or other
/// control character, ASCII only, no spaces.
fn check_text(s: &str) -> Result<(), (&'static str, String)> {
    if s.chars().any(char::is_control) {
        return Err((
            "control_char",
            "contains a NUL, newline or other control character".into(),
        ));
    }
    if !s.is_ascii() {
        return Err(("non_ascii", "contains non-ASCII characters".into()));
    }
    if s.contains(' ') {
        return Err(("whitespace", "contains a space".into()));
    }
    Ok(())
}

/// Checked parameters: canonical JSON values, and the text substituted
/// for each placeholder.
type Checked = (
    serde_json::Map<String, serde_json::Value>,
    BTreeMap<String, String>,
);

impl Action {
    /// Check request parameters: no unknown ones, every required one given,
    /// each value of its declared type. Returns the values with defaults
    /// filled in, in canonical form (integers as numbers).
    pub fn validate_params(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Vec<ParamIssue>> {
        self.checked(params).map(|(map, _)| map)
    }

    fn checked(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Checked, Vec<ParamIssue>> {
        let mut issues = Vec::new();
        for name in params.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                issues.push(ParamIssue {
                    param: name.clone(),
                    code: "unknown_param",
                    reason: format!("{} has no parameter {name:?}; parameters: {known}", self.id),
                });
            }
        }
        let mut canonical = serde_json::Map::new();
        let mut text = BTreeMap::new();
        for p in &self.params {
            let Some(value) = params.get(&p.name).or(p.default.as_ref()) else {
                issues.push(ParamIssue {
                    param: p.name.clone(),
                    code: "missing_param",
                    reason: "is required".into(),
                });
                continue;
            };
            match p.check(value) {
                Ok(t) => {
                    let json = match (&p.kind, t.parse::<i64>()) {
                        (ParamKind::Int { .. }, Ok(n)) => serde_json::Value::from(n),
                        _ => serde_json::Value::String(t.clone()),
                    };
                    canonical.insert(p.name.clone(), json);
                    text.insert(p.name.clone(), t);
                }
                Err((code, reason)) => issues.push(ParamIssue {
                    param: p.name.clone(),
                    code,
                    reason,
                }),
            }
        }
        if issues.is_empty() {
            Ok((canonical, text))
        } else {
            Err(issues)
        }
    }

    /// Check `params` against their declared types, then substitute them
    /// and the reserved `{run_id}`/`{attempt}` into every argv. Nothing is
    /// substituted unless every value is valid. The result still has to
    /// pass [`crate::guard::check_action`].
    pub fn render(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
        ctx: &RenderContext,
    ) -> Result<RenderedAction, Vec<ParamIssue>> {
        let checked = self.checked(params);
        let run_id_ok = !ctx.run_id.is_empty()
            && ctx.run_id.len() <= 64
            && ctx
                .run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let (canonical, mut values) = match (checked, run_id_ok) {
            (Ok(c), true) => c,
            (checked, run_id_ok) => {
                let mut issues = checked.err().unwrap_or_default();
                if !run_id_ok {
                    issues.push(ParamIssue {
                        param: "run_id".into(),
                        code: "invalid_run_id",
                        reason: "must be 1-64 of A-Z a-z 0-9 _ -".into(),
                    });
                }
                return Err(issues);
            }
        };
        values.insert("run_id".into(), ctx.run_id.clone());
        values.insert("attempt".into(), ctx.attempt.to_string());
        let render = |cmds: &[Vec<String>]| -> Vec<Vec<String>> {
            cmds.iter()
                .map(|argv| argv.iter().map(|w| substitute(w, &values)).collect())
                .collect()
        };
        Ok(RenderedAction {
            action_id: self.id.clone(),
            params: canonical,
            commands: render(&self.commands),
            canary_checks: render(&self.canary_checks),
            rollback: render(&self.rollback),
            sudo: self.sudo,
            timeout_secs: self.timeout_secs,
            idempotent: self.idempotent,
        })
    }

    /// The parameters' examples (or defaults), for documentation and tests.
    pub fn example_params(&self) -> serde_json::Map<String, serde_json::Value> {
        self.params
            .iter()
            .filter_map(|p| {
                let v = p.example.as_ref().or(p.default.as_ref())?;
                Some((p.name.clone(), v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    const ONE: &str = r#"
[[action]]
id = "t"
title = "t"
risk = "low"
tier = "safe_auto"
timeout_secs = 10
idempotent = true
commands = [["/usr/sbin/ufw", "deny", "{port}/{protocol}"], ["/usr/bin/echo", "{{literal}}", "run-{run_id}-{attempt}"]]
canary_checks = [["/usr/bin/ls", "{dir}"]]
rollback = [["/usr/bin/echo", "{word}"]]

[action.params.port]
type = "int"
min = 1
max = 65535
exclude = [22]

[action.params.protocol]
type = "enum"
values = ["tcp", "udp"]
default = "tcp"

[action.params.dir]
type = "path"
prefixes = ["/var/log"]
default = "/var/log"

[action.params.word]
type = "string"
pattern = "[a-z]+"
default = "x"
"#;

    #[test]
    fn render_substitutes_validated_values() {
        let cat = Catalog::from_toml_str(ONE).expect("catalog");
        let a = cat.get("t").expect("action");
        let r = a
            .render(&obj(json!({"port": "8080"})), &RenderContext::new("r1", 2))
            .expect("render");
        assert_eq!(r.commands[0], ["/usr/sbin/ufw", "deny", "8080/tcp"]);
        assert_eq!(r.commands[1], ["/usr/bin/echo", "{literal}", "run-r1-2"]);
        assert_eq!(r.canary_checks[0], ["/usr/bin/ls", "/var/log"]);
        assert_eq!(
            r.params,
            obj(json!({"port": 8080, "protocol": "tcp", "dir": "/var/log", "word": "x"}))
        );
    }

    #[test]
    fn every_bad_value_is_reported_before_substitution() {
        let cat = Catalog::from_toml_str(ONE).expect("catalog");
        let a = cat.get("t").expect("action");
        let issues = a
            .render(
                &obj(json!({"port": 22, "protocol": "icmp", "dir": "/var/log/../../etc", "word": "-x", "extra": 1})),
                &RenderContext::new("bad id", 1),
            )
            .expect_err("invalid");
        let codes: Vec<_> = issues.iter().map(|i| (i.param.as_str(), i.code)).collect();
        assert_eq!(
            codes,
            vec![
                ("extra", "unknown_param"),
                ("dir", "path_traversal"),
                ("port", "excluded"),
                ("protocol", "not_allowed"),
                ("word", "leading_dash"),
                ("run_id", "invalid_run_id"),
            ]
        );
        let missing = a
            .render(&obj(json!({})), &RenderContext::new("r", 1))
            .expect_err("port");
        assert_eq!(missing[0].code, "missing_param");
    }

    #[test]
    fn path_values_must_stay_inside_their_prefix() {
        let cat = Catalog::from_toml_str(ONE).expect("catalog");
        let a = cat.get("t").expect("action");
        let code = |dir: &str| {
            a.validate_params(&obj(json!({"port": 80, "dir": dir})))
                .err()
                .map(|i| i[0].code)
        };
        assert_eq!(code("/var/log/nginx"), None);
        assert_eq!(code("/var/logs"), Some("path_not_allowed"));
        assert_eq!(code("/var/log//x"), Some("invalid_path"));
        assert_eq!(code("/var/log/./x"), Some("path_traversal"));
        assert_eq!(code("var/log"), Some("invalid_path"));
        assert_eq!(code("/var/log/a b"), Some("whitespace"));
        assert_eq!(code("/var/log/\u{0}"), Some("control_char"));
    }

    #[test]
    fn load_time_rules() {
        let bad = r#"
[[action]]
id = "Bad_Id"
title = ""
risk = "low"
tier = "observe"
timeout_secs = 0
idempotent = true
commands = [["{exe}", "x"], ["/usr/bin/echo", "{nope}", "a}b"], []]
[action.params.unused]
type = "int"
min = 5
max = 1
"#;
        let err = Catalog::from_toml_str(bad).expect_err("invalid");
        let CatalogError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err}");
        };
        let text = problems.join("\n");
        for needle in [
            "id must be",
            "title is empty",
            "timeout_secs",
            "min is greater than max",
            "executable must be a literal absolute path",
            "undeclared placeholder {nope}",
            "lone '}'",
            "commands[2] is empty",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        let typo =
            Catalog::from_toml_str("[[action]]\nid='a'\ntitel='x'\n").expect_err("unknown key");
        assert_eq!(typo.code(), "catalog_syntax");
    }

    #[test]
    fn sudo_prefix_is_added_outside_the_guarded_argv() {
        let r = RenderedAction {
            action_id: "a".into(),
            params: serde_json::Map::new(),
            commands: vec![],
            canary_checks: vec![],
            rollback: vec![],
            sudo: true,
            timeout_secs: 1,
            idempotent: true,
        };
        let argv = vec!["/usr/bin/systemctl".to_owned(), "daemon-reload".to_owned()];
        assert_eq!(
            r.exec_argv(&argv),
            [
                "/usr/bin/sudo",
                "-n",
                "--",
                "/usr/bin/systemctl",
                "daemon-reload"
            ]
        );
    }
}
