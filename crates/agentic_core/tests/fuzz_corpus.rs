//! The fuzz targets of `agentic_core` (fuzz/fuzz_targets: `manifest`,
//! `records`) replayed on the stable toolchain: each target's body, the
//! very code the fuzzer runs (fuzz/bodies), over every saved input of its
//! corpus (fuzz/corpus/TARGET) and every crash it found
//! (fuzz/artifacts/TARGET), plus a named test per crash with the bug it
//! found. `scripts/fuzz` fuzzes; this only replays.
//!
//! With `LION_FUZZ_WRITE_SEEDS=DIR` set, `seeds_reach_deep` also writes
//! the seed inputs it checks into `DIR/TARGET/` (`scripts/fuzz --seed`).

#[path = "../../../fuzz/bodies/manifest.rs"]
mod manifest;
#[path = "../../../fuzz/bodies/records.rs"]
mod records;

#[path = "../../../fuzz/replay.rs"]
mod replay;

use agentic_core::chain::ChainHead;
use agentic_core::event::EventEnvelope;

#[test]
fn manifest_corpus_replays() {
    replay::corpus("manifest", manifest::run);
}

#[test]
fn records_corpus_replays() {
    replay::corpus("records", records::run);
}

/// What the example manifests hold where scripts/build-plugins writes the
/// component's SHA-256.
const SHA256_SLOT: &str = "@SHA256@";

/// The golden log of `name` (tests/fixtures), its records as stored.
fn golden(name: &str) -> Vec<EventEnvelope> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a golden record"))
        .collect()
}

/// The seeds are real inputs that reach deep: the example plugins'
/// manifests parse and the golden logs, in the records layout, verify and
/// replay whole; one record alone still decodes. Written out as the seed
/// corpora when `LION_FUZZ_WRITE_SEEDS` is set.
#[test]
fn seeds_reach_deep() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();

    let plugins = format!("{}/../../plugins", env!("CARGO_MANIFEST_DIR"));
    let mut manifests = 0;
    for entry in std::fs::read_dir(&plugins).expect("plugins/") {
        let path = entry.expect("entry").path().join("plugin.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // scripts/build-plugins fills in the component's digest; any
        // digest will do for parsing.
        let text = text.replace(SHA256_SLOT, &"5a".repeat(32)).into_bytes();
        agentic_core::plugin::PluginManifest::parse(std::str::from_utf8(&text).expect("UTF-8"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .expect("a plugin folder");
        seeds.push(("manifest", format!("plugin-{name}.toml"), text));
        manifests += 1;
    }
    assert!(manifests >= 5, "only {manifests} example manifests");

    for name in ["golden_v1.jsonl", "golden_v2.jsonl"] {
        let log = golden(name);
        let last = log.last().expect("records");
        let head = ChainHead {
            seq: last.seq,
            hash: last.hash,
        };
        let bytes = records::encode(&head.to_line(), &log);
        let parsed = records::parse(&bytes);
        assert_eq!(parsed.records, log, "{name}: the layout reads back");
        let (verified, state) = records::replay_verified(&parsed)
            .unwrap_or_else(|e| panic!("{name} does not replay verified: {e}"));
        assert_eq!(verified, head);
        assert!(
            state.elements().next().is_some(),
            "{name}: no element replayed"
        );
        let stem = name.trim_end_matches(".jsonl");
        seeds.push(("records", format!("{stem}-log"), bytes));

        // A log cut after its third record, under the whole log's head:
        // verification reports it truncated.
        let cut = records::encode(&head.to_line(), &log[..3]);
        assert!(records::replay_verified(&records::parse(&cut)).is_err());
        seeds.push(("records", format!("{stem}-truncated"), cut));

        // Each record alone, without a head: decoded and folded.
        for e in &log {
            let one = records::encode("", std::slice::from_ref(e));
            assert_eq!(records::parse(&one).records.len(), 1);
            seeds.push(("records", format!("{stem}-seq{}", e.seq), one));
        }
    }

    for (target, name, bytes) in &seeds {
        match *target {
            "manifest" => manifest::run(bytes),
            _ => records::run(bytes),
        }
        replay::write_seed(target, name, bytes);
    }
}
