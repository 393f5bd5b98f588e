//! Custom events in lion's event log, through the `events` interface.
//!
//! Needs the `events` grant: without it the call fails. Events are committed
//! with the call's result: a call that fails records none.

use serde::Serialize;

use crate::bindings::lion::plugin::events;

/// Records an event of `kind` whose data is `data` as JSON.
pub fn emit(kind: &str, data: &impl Serialize) -> Result<(), String> {
    let data = serde_json::to_string(data)
        .map_err(|e| format!("the data of event {kind:?} is not JSON: {e}"))?;
    events::emit(kind, &data)
}
