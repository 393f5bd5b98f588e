//! The raw wasmtime path, for benchmarks: a plugin component loaded into a
//! [`WasmSandbox`] and called with nothing of the plugin manager around it.
//!
//! A [`RawPlugin`] call runs exactly what the sandbox runs for a managed
//! call — the same engine (the same [`WasmSandbox`]), a fresh store per call
//! from the same pre-instantiated component, the same WASI context builder
//! (with only what the grant gives: for a plugin granted no directories or
//! environment, nothing), the same memory and table limiter, fuel and epoch
//! deadline, the same host interfaces — and nothing else: no JSON parsing or
//! schema validation of the input or the output, no events, no concurrency
//! permits, no key-value snapshot, no quarantine. The output comes back as
//! the plugin returned it.
//!
//! It is the sandbox's own call, so the tokio timeout around the call and
//! the naming of a failure are in it too (a fraction of a microsecond).
//!
//! `lion bench plugins` measures calls through the plugin manager against
//! this path, in the same run, so that the manager's own cost shows as a
//! ratio.

use std::sync::Arc;

use agentic_core::plugin::{
    CallContext, CallFailure, Grant, Limits, LoadedPlugin, Sandbox, SandboxError, VerifiedArtifact,
};

use crate::WasmSandbox;

/// A plugin loaded into a [`WasmSandbox`], called directly: the raw
/// wasmtime path, for benchmarks.
pub struct RawPlugin {
    name: String,
    grant: Arc<Grant>,
    limits: Limits,
    plugin: Arc<dyn LoadedPlugin>,
}

impl RawPlugin {
    /// Loads `artifact` (compiled by `sandbox`) as plugin `name`, whose
    /// calls run under `grant` and `limits` — pass the installed plugin's
    /// grant and its manifest's limits to run what a managed call runs.
    pub fn load(
        sandbox: &WasmSandbox,
        artifact: &VerifiedArtifact,
        name: &str,
        grant: Grant,
        limits: Limits,
    ) -> Result<Self, SandboxError> {
        Ok(Self {
            name: name.to_owned(),
            grant: Arc::new(grant),
            limits,
            plugin: sandbox.load(artifact)?,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls `function` with `input` (JSON text, passed to the plugin
    /// unchecked) in a fresh instance; the plugin's output, unchecked, or
    /// why the call failed. Whatever the call writes to the key-value store
    /// or emits is dropped.
    pub async fn call(&self, function: &str, input: &str) -> Result<String, CallFailure> {
        let ctx = Arc::new(CallContext::new(
            &self.name,
            Default::default(),
            self.grant.clone(),
            self.limits,
            Arc::default(),
        ));
        self.plugin.call(function, input, ctx).await
    }
}

impl std::fmt::Debug for RawPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPlugin")
            .field("name", &self.name)
            .field("grant", &self.grant)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
