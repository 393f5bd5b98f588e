//! The body of the `manifest` fuzz target, shared with the corpus-replay
//! test of `agentic_core` (`tests/fuzz_corpus.rs`): a plugin manifest as
//! `PluginManager::read_manifest` hands it to [`PluginManifest::parse`]
//! (UTF-8 text of at most `MAX_MANIFEST_BYTES`).
//!
//! What must hold, whatever the bytes:
//! - parsing returns; it never panics, whatever TOML and JSON Schemas the
//!   manifest holds;
//! - a refusal is one line (`lion plugin install` prints it as is);
//! - an accepted manifest is one the rest of lion can use: it survives the
//!   JSON round trip through the log (`plugin_installed` records it and
//!   replay reads it back) unchanged, and granting what it asks for (all
//!   but directories, whose grants look at the file system) passes
//!   `check_grant`.

use agentic_core::plugin::{MAX_MANIFEST_BYTES, PluginManifest};

/// Runs the checks above on one input.
pub fn run(data: &[u8]) {
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let manifest = match PluginManifest::parse(text) {
        Ok(manifest) => manifest,
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.contains('\n'),
                "a refusal must be one line: {message:?}"
            );
            return;
        }
    };

    // The log's round trip: recorded as JSON, read back by replay.
    let json = serde_json::to_vec(&manifest).expect("an accepted manifest encodes as JSON");
    let back: PluginManifest =
        serde_json::from_slice(&json).expect("the recorded manifest decodes again");
    assert_eq!(back, manifest, "the manifest changed through the log");

    // Granting what it asks for (directories aside) is within what it asks.
    let mut flags: Vec<String> = Vec::new();
    flags.extend(
        manifest
            .permissions
            .interfaces
            .iter()
            .map(|i| format!("interface:{}", i.as_str())),
    );
    flags.extend(
        manifest
            .permissions
            .hosts
            .iter()
            .filter(|h| !h.is_empty())
            .map(|h| format!("host:{h}")),
    );
    flags.extend(
        manifest
            .permissions
            .env
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| format!("env:{v}")),
    );
    match manifest.grant_from(&flags) {
        Ok(grant) => manifest
            .check_grant(&grant)
            .expect("a grant grant_from made passes check_grant"),
        Err(e) => panic!("granting what the manifest asks for is refused: {e} ({flags:?})"),
    }
}
