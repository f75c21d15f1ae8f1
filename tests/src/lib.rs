//! End-to-end tests across processes (`tests/tests/*.rs`) and the harness
//! code they share: where the workspace's binaries are, and a clean
//! environment for running them.

pub mod moto;

use std::path::PathBuf;
use std::process::Command;

/// Variable that names a binary explicitly, e.g.
/// `REMEDIATE_EXECUTOR_BIN` for `remediate-executor`.
fn override_var(name: &str) -> String {
    format!(
        "REMEDIATE_{}_BIN",
        name.trim_start_matches("remediate-").to_uppercase()
    )
}

/// The path of a binary of another workspace package, built by cargo into
/// the same target directory as this test (`cargo test --workspace` builds
/// every binary first; `cargo build -p <package>` builds one).
///
/// Integration tests run from `<target>/<profile>/deps/`, so the binary is
/// one directory up. `REMEDIATE_<NAME>_BIN` (e.g. `REMEDIATE_EXECUTOR_BIN`)
/// overrides the lookup. A missing binary is an error that says how to
/// build it; it is never skipped silently.
pub fn workspace_bin(name: &str) -> Result<PathBuf, String> {
    let var = override_var(name);
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(|d| d.parent())
        .ok_or_else(|| {
            format!(
                "cannot find the target directory from {} (not under .../deps/); set {var}",
                exe.display()
            )
        })?;
    let bin = profile_dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it first with `cargo build -p {name}` (same profile and \
             CARGO_TARGET_DIR as this test), run `cargo test --workspace`, or set {var}",
            bin.display()
        ))
    }
}

/// A command for a workspace binary with none of the caller's
/// `VPS_REMEDIATE_*` / `OPS_WORKER_*` settings: a test sets its own.
pub fn clean_command(bin: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("VPS_REMEDIATE_") || name.starts_with("OPS_WORKER_") {
            c.env_remove(&k);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_variable_names_the_binary() {
        assert_eq!(override_var("remediate-executor"), "REMEDIATE_EXECUTOR_BIN");
        assert_eq!(override_var("remediate-api"), "REMEDIATE_API_BIN");
    }
}
