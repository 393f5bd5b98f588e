//! lion's example plugin: named counters in the plugin's key-value store.
//!
//! `increment` `{"key":"visits"}` reads the counter, adds one, writes it back,
//! emits a `counter_incremented` event and answers `{"key":"visits","value":N}`;
//! `get` answers `{"value":N}` (`null` when unset); `reset` removes it;
//! `once` `{"key":K}` makes one side effect per idempotency key, however
//! often it is asked (what a workflow step that may run again needs).

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

/// The output of `once`: how many side effects the key has made (1: the
/// effect runs once however often it is asked), and whether this call made
/// it.
#[derive(Serialize)]
struct Once {
    key: String,
    effects: u64,
    first: bool,
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

/// Makes one side effect per idempotency key: the first call with `key`
/// counts it under `once:<key>` (and emits `effect_made`); a later call
/// with the same key (a step run again after a crash) answers the same
/// without making it again.
fn once(Key { key }: Key) -> Result<Once, String> {
    let slot = format!("once:{key}");
    if let Some(effects) = read(&slot)? {
        return Ok(Once {
            key,
            effects,
            first: false,
        });
    }
    kv::set(&slot, "1")?;
    let made = Once {
        key,
        effects: 1,
        first: true,
    };
    events::emit("effect_made", &made)?;
    Ok(made)
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

agentic_pdk::plugin!(increment, once, get, reset);
