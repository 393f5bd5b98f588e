//! The golden log written by the first lion release must verify and replay
//! to the same state forever (see `tests/fixtures/README.md`).

use agentic_core::{ChainHead, ChainVerifier, EventEnvelope, State};
use uuid::Uuid;

const GOLDEN_V1: &str = include_str!("fixtures/golden_v1.jsonl");

fn golden_v1() -> Vec<EventEnvelope> {
    GOLDEN_V1
        .lines()
        .map(|line| serde_json::from_str(line).expect("golden record parses"))
        .collect()
}

#[test]
fn golden_v1_hash_chain_verifies() {
    let log = golden_v1();
    assert_eq!(log.len(), 4);
    let mut verifier = ChainVerifier::watching(4);
    for record in &log {
        verifier.check(record).expect("golden record verifies");
    }
    let head = ChainHead {
        seq: 4,
        hash: log[3].hash,
    };
    assert_eq!(verifier.finish(Some(head)), Ok(head));
    assert_eq!(
        head.hash.to_hex(),
        "b715fc033136b57e98330bfefd9f33da77704f75ceb2b0f78324885a4314e71b"
    );
}

#[test]
fn golden_v1_replays_to_the_recorded_state() {
    let mut state = State::new();
    for record in golden_v1() {
        let event = record.decode().expect("golden payload decodes");
        state.apply(&event).expect("golden event applies");
    }
    let elements: Vec<_> = state.elements().collect();
    assert_eq!(elements.len(), 4);

    let id = |s: &str| Uuid::parse_str(s).expect("uuid");
    assert_eq!(elements[0].id, id("01a211fe-79b7-7728-b339-288ca6dcd73b"));
    assert_eq!(
        elements[0].metadata.as_str(),
        r#"{"name":"Ada Lovelace","role":"first programmer"}"#
    );
    assert_eq!(
        elements[0].content.as_deref(),
        Some("Notes on the Analytical Engine")
    );
    assert_eq!(
        elements[0].created_at.to_rfc3339(),
        "2026-11-25T09:16:59.703234885+00:00"
    );

    assert_eq!(elements[1].id, id("01a211fe-79ba-7242-964a-0c73f7816510"));
    assert!(elements[1].metadata.is_empty());
    assert_eq!(elements[1].content, None);

    assert_eq!(elements[2].id, id("01a211fe-79be-71b4-ab3d-276d79f53a72"));
    assert_eq!(
        elements[2].metadata.as_str(),
        r#"{"nested":{"empty":{},"list":[1,2.5,"three",null,true]},"unicode":"λ — 🦁"}"#
    );
    assert_eq!(
        elements[2].content.as_deref(),
        Some("multi\nline \"quoted\" content")
    );

    assert_eq!(elements[3].id, id("01a211fe-79c2-7683-bb5b-16ded82fbc65"));
    assert_eq!(
        elements[3].metadata.as_str(),
        r#"{"big":12345678901234567890,"n":-42}"#
    );
    assert_eq!(elements[3].content.as_deref(), Some(""));
}

const GOLDEN_V2: &str = include_str!("fixtures/golden_v2.jsonl");

/// The golden log written before issue 14: an element, a task, two plugins
/// (one granted a directory, one with key-value data) and an agent with a
/// two-turn conversation.
fn golden_v2() -> Vec<EventEnvelope> {
    GOLDEN_V2
        .lines()
        .map(|line| serde_json::from_str(line).expect("golden record parses"))
        .collect()
}

#[test]
fn golden_v2_hash_chain_verifies_and_replays() {
    let log = golden_v2();
    assert_eq!(log.len(), 28);
    let mut verifier = ChainVerifier::watching(28);
    for record in &log {
        verifier.check(record).expect("golden record verifies");
    }
    let head = ChainHead {
        seq: 28,
        hash: log[27].hash,
    };
    assert_eq!(verifier.finish(Some(head)), Ok(head));
    assert_eq!(
        head.hash.to_hex(),
        "8bde918df32079947ca7268a8f560cb8e336295cd468f50fb12ab86b2d7ae61a"
    );

    let mut state = State::new();
    for record in &log {
        let event = record.decode().expect("golden payload decodes");
        state.apply(&event).expect("golden event applies");
    }
    assert_eq!(state.elements().count(), 1);
    assert_eq!(state.tasks().count(), 1);
    let plugins: Vec<_> = state.plugins().map(|p| p.name().to_owned()).collect();
    assert_eq!(plugins, ["dir_reader", "kv_counter"]);
    let kv = state.plugin_kv("kv_counter").expect("kv_counter's kv");
    assert_eq!(kv.get("visits").map(String::as_str), Some("2"));
}
