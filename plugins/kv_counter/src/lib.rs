//! lion's example plugin: named counters in the plugin's key-value store.
//!
//! `increment` `{"key":"visits"}` reads the counter, adds one, writes it back,
//! emits a `counter_incremented` event and answers `{"key":"visits","value":N}`;
//! `get` answers `{"value":N}` (`null` when unset); `reset` removes it.

use agentic_pdk::{events, kv, log};
use serde::{Deserialize, Serialize};

/// The input of every function.
#[derive(Deserialize)]
struct Key {
    key: String,
}

/// The output of `increment`, and the data of its event.
#[derive(Serialize)]
struct Counter {
    key: String,
    value: u64,
}

/// The output of `get`.
#[derive(Serialize)]
struct Value {
    value: Option<u64>,
}

/// The output of `reset`.
#[derive(Serialize)]
struct Removed {
    removed: bool,
}

/// Adds one to the counter under `key` (absent counts as 0).
fn increment(Key { key }: Key) -> Result<Counter, String> {
    let value = read(&key)?.unwrap_or(0) + 1;
    kv::set(&key, &value.to_string())?;
    let counter = Counter { key, value };
    events::emit("counter_incremented", &counter)?;
    log::debug(&format!("{} is now {}", counter.key, counter.value));
    Ok(counter)
}

/// The counter under `key`, if set.
fn get(Key { key }: Key) -> Result<Value, String> {
    Ok(Value { value: read(&key)? })
}

/// Removes the counter under `key`.
fn reset(Key { key }: Key) -> Result<Removed, String> {
    Ok(Removed {
        removed: kv::delete(&key),
    })
}

/// Reads the counter under `key` from the store.
fn read(key: &str) -> Result<Option<u64>, String> {
    kv::get(key)
        .map(|v| {
            v.parse()
                .map_err(|e| format!("the value under {key:?} is not a counter ({v:?}): {e}"))
        })
        .transpose()
}

agentic_pdk::plugin!(increment, get, reset);
