//! [`Entry`]: a plugin loaded for calls — its grant and limits, each
//! function's compiled JSON Schemas, the permits that bound calls at once,
//! its key-value view and its failure count — and the call pipeline: check
//! the input, wait for a turn, run the call in the sandbox, check the
//! output.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};

use serde_json::Value;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::error::PluginError;
use super::kv::{KvView, KvWrite};
use super::manifest::{Grant, HostInterface, Limits, ManifestError};
use super::record::{CallFailure, FailureKind, InstalledPlugin, PluginStatus};
use super::sandbox::{CallContext, Effects, LoadedPlugin};
use crate::store::PluginSnapshot;

/// Longest quote of an offending value in a schema error: the error names
/// the place and the rule; repeating a large input whole would only bloat
/// the message and the log.
const MAX_SCHEMA_ERROR_CHARS: usize = 300;

/// A loaded plugin, ready for calls.
pub(super) struct Entry {
    /// The plugin's name.
    pub name: String,
    /// The install it was loaded from.
    pub install_id: Option<Uuid>,
    /// What was installed and granted.
    pub installed: InstalledPlugin,
    grant: Arc<Grant>,
    limits: Limits,
    plugin: Arc<dyn LoadedPlugin>,
    functions: HashMap<String, Schemas>,
    permits: Semaphore,
    /// Held through each call of a plugin granted `kv` until its events are
    /// recorded, so a call's reads and writes are not interleaved with
    /// another call's, and its writes reach the log in the order calls
    /// made them. One per plugin name, shared by every load of it.
    kv_turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Its key-value data as calls read it.
    pub kv: KvView,
    /// Failures in a row that count towards quarantine.
    pub consecutive_failures: AtomicU32,
    /// Set once it is quarantined: calls are refused.
    pub quarantined: AtomicBool,
}

/// A function's compiled input and output schemas.
struct Schemas {
    input: jsonschema::Validator,
    output: jsonschema::Validator,
}

/// What one call did: its outcome, its effects (to record), and its
/// key-value writes, each with the id of the `plugin_kv_set` event it must
/// be recorded as.
pub(super) struct CallResult {
    /// The call's key-value turn: the caller records the call's events
    /// before letting it go.
    pub turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The output, or why the call failed.
    pub outcome: Result<Value, CallFailure>,
    /// Denials, key-value writes and emitted events.
    pub effects: Effects,
    /// The key-value writes, in order, each with its event id (none on
    /// failure). They reach the view once recorded.
    pub kv_writes: Vec<(Uuid, KvWrite)>,
}

impl Entry {
    /// The entry for `snapshot`'s plugin, loaded as `plugin`, taking turns
    /// at key-value calls with `kv_turn` (shared by every load of the name):
    /// compiles each function's schemas.
    pub fn new(
        snapshot: PluginSnapshot,
        plugin: Arc<dyn LoadedPlugin>,
        kv_turn: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Self, PluginError> {
        let record = snapshot.record;
        let manifest = &record.installed.manifest;
        let mut functions = HashMap::new();
        for (function, spec) in &manifest.functions {
            let compile = |schema: &Value| {
                jsonschema::validator_for(schema).map_err(|e| {
                    PluginError::Manifest(ManifestError::Invalid {
                        field: format!("functions.{function}"),
                        reason: e.to_string(),
                    })
                })
            };
            functions.insert(
                function.clone(),
                Schemas {
                    input: compile(&spec.input_schema)?,
                    output: compile(&spec.output_schema)?,
                },
            );
        }
        let grant = &record.installed.grant;
        // A record made before the ceilings existed (or appended by hand)
        // runs at them, whatever it says.
        let limits = manifest.limits.capped();
        Ok(Self {
            name: record.name().to_owned(),
            install_id: record.installed.install_id,
            installed: record.installed.clone(),
            limits,
            functions,
            permits: Semaphore::new(limits.max_concurrency as usize),
            kv_turn: grant
                .interfaces
                .contains(&HostInterface::Kv)
                .then_some(kv_turn),
            grant: Arc::new(grant.clone()),
            plugin,
            kv: KvView::new(snapshot.kv, snapshot.as_of),
            consecutive_failures: AtomicU32::new(record.consecutive_failures),
            quarantined: AtomicBool::new(record.status == PluginStatus::Quarantined),
        })
    }

    /// Validates the input, waits for a turn, runs the call and checks its
    /// output. The result holds the call's turn: the caller records the
    /// call, then gives its key-value writes to the view, then lets the turn
    /// go.
    pub async fn run(&self, call_id: Uuid, function: &str, input: &str) -> CallResult {
        let failed = |failure| CallResult {
            turn: None,
            outcome: Err(failure),
            effects: Effects::default(),
            kv_writes: Vec::new(),
        };
        let invalid = |m: String| CallFailure::new(FailureKind::InvalidInput, m);
        let Some(schemas) = self.functions.get(function) else {
            let mut message = format!("the plugin has no function {function:?}");
            if self.installed.is_server() {
                message.push_str(&format!(
                    " approved (a tool its server offers since is callable once approved: `lion \
                     plugin approve {} --dry-run` shows it)",
                    self.installed.name()
                ));
            }
            return failed(invalid(message));
        };
        if input.len() as u64 > self.limits.max_input_bytes {
            return failed(invalid(format!(
                "the input is {} bytes, over the {} byte limit",
                input.len(),
                self.limits.max_input_bytes
            )));
        }
        let value = match serde_json::from_str::<Value>(input) {
            Ok(value) => value,
            Err(e) => return failed(invalid(format!("the input is not JSON: {e}"))),
        };
        if let Some(e) = schemas.input.validate(&value).err() {
            return failed(invalid(format!(
                "the input breaks the schema: {}",
                describe(&e)
            )));
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return failed(CallFailure::new(
                FailureKind::Host,
                "the plugin was unloaded",
            ));
        };
        let turn = match &self.kv_turn {
            Some(turn) => Some(turn.clone().lock_owned().await),
            None => None,
        };
        // Taken inside the turn, so it holds the previous call's writes.
        let ctx = Arc::new(CallContext::new(
            &self.name,
            call_id,
            self.grant.clone(),
            self.limits,
            self.kv.snapshot(),
        ));
        let outcome = self
            .plugin
            .call(function, input, ctx.clone())
            .await
            .and_then(|output| self.check_output(schemas, &output))
            .and_then(|value| match ctx.limit_hit() {
                Some(failure) => Err(failure),
                None => Ok(value),
            });
        let mut effects = ctx.take_effects();
        let kv_writes = if outcome.is_ok() {
            std::mem::take(&mut effects.kv_writes)
                .into_iter()
                .map(|write| (Uuid::now_v7(), write))
                .collect()
        } else {
            Vec::new()
        };
        CallResult {
            turn,
            outcome,
            effects,
            kv_writes,
        }
    }

    /// Checks an output's size, that it is JSON, and its schema.
    fn check_output(&self, schemas: &Schemas, output: &str) -> Result<Value, CallFailure> {
        if output.len() as u64 > self.limits.max_output_bytes {
            return Err(CallFailure::new(
                FailureKind::OutputLimit,
                format!(
                    "the output is {} bytes, over the {} byte limit",
                    output.len(),
                    self.limits.max_output_bytes
                ),
            ));
        }
        let bad = |m: String| CallFailure::new(FailureKind::InvalidOutput, m);
        let value: Value = serde_json::from_str(output)
            .map_err(|e| bad(format!("the output is not JSON: {e}")))?;
        if let Some(e) = schemas.output.validate(&value).err() {
            return Err(bad(format!(
                "the output breaks the schema: {}",
                describe(&e)
            )));
        }
        Ok(value)
    }
}

/// A schema violation in one line: where, and what, its quote of the
/// offending value clipped.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let what = clip(&e.to_string(), MAX_SCHEMA_ERROR_CHARS);
    let at = e.instance_path().to_string();
    if at.is_empty() {
        what
    } else {
        format!("at {at}: {what}")
    }
}

/// `text` cut to at most `max` characters, saying how long it was.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_error_does_not_repeat_a_large_input() {
        let schema =
            serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let validator = jsonschema::validator_for(&schema).expect("schema");
        let input = serde_json::json!({"n": "x".repeat(130_000)});
        let error = validator.iter_errors(&input).next().expect("an error");
        let message = describe(&error);
        assert!(message.starts_with("at /n: "), "{message}");
        assert!(message.len() < 1_000, "{} bytes", message.len());
        assert!(message.contains("bytes in all"), "{message}");
        // A short one is quoted whole.
        let short = serde_json::json!({"n": "x"});
        let error = validator.iter_errors(&short).next().expect("an error");
        assert_eq!(describe(&error), r#"at /n: "x" is not of type "integer""#);
    }
}
