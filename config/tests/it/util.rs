//! Helpers shared by the integration tests.

use figment::Jail;

/// An argv from string slices.
pub fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// A JSON object literal as a map.
pub fn obj(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    value.as_object().cloned().expect("a JSON object")
}

/// Run `f` in a figment jail (temp working directory, restored environment)
/// with every environment variable removed first, so the host's own
/// `VPS_REMEDIATE_*` variables cannot leak into a test.
pub fn jail(f: impl FnOnce(&mut Jail) -> figment::Result<()>) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        f(jail)
    });
}
