//! The plugin's own key-value store, through the `kv` interface.
//!
//! Needs the `kv` grant: without it the call fails. Writes are committed
//! with the call's result, so a call that fails leaves the store as it was;
//! within a call, reads see the call's own writes.

use crate::bindings::lion::plugin::kv;

/// The value under `key`, if any.
pub fn get(key: &str) -> Option<String> {
    kv::get(key)
}

/// Sets `key` to `value`; an error says why the host refused.
pub fn set(key: &str, value: &str) -> Result<(), String> {
    kv::set(key, value)
}

/// Removes `key`; true when it was there.
pub fn delete(key: &str) -> bool {
    kv::delete(key)
}

/// Every key starting with `prefix` (all of them for `""`), in order.
pub fn keys(prefix: &str) -> Vec<String> {
    kv::keys(prefix)
}
