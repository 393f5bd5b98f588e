//! [`PluginManager`]: installs plugins into a home, loads them (compiled
//! once, cached on disk by hash and checked before loading), calls them with
//! JSON Schema validation, concurrency limits and quarantine, and removes
//! them — every step an event in the log.
//!
//! Files, under the manager's directory: `components/<sha256>.wasm` (the
//! installed component, named by its hash, so editing the original changes
//! nothing) and `compiled/<artifact key>/<sha256>.bin` (compiled code; its
//! hash is in the log's `plugin_loaded` event and is checked before use).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::manifest::{Grant, HostInterface, ManifestError, PluginManifest};
use super::record::{
    Artifact, CallFailure, FailureKind, InstalledPlugin, PluginRecord, PluginStatus,
};
use super::sandbox::{
    CallContext, Effects, LoadedPlugin, Sandbox, SandboxError, VerifiedArtifact, sha256_hex,
};
use crate::event::{NewEvent, SystemEvent};
use crate::state::ApplyError;
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::task::Durability;

/// Failures in a row (of the kinds that count) before a plugin is
/// quarantined.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;

/// Events queued for the background appender before callers wait.
const ASYNC_QUEUE: usize = 1024;

/// Why a plugin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The manifest or the grant is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component does not hash to what the manifest says.
    #[error("component {path} has sha256 {actual}, but the manifest says {expected}")]
    HashMismatch {
        /// The component file.
        path: String,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The component could not be compiled or loaded.
    #[error("plugin {name}: {source}")]
    Sandbox {
        /// The plugin.
        name: String,
        /// What the sandbox said.
        source: SandboxError,
    },
    /// A plugin with this name is installed already.
    #[error("plugin {0} is already installed (remove it first)")]
    AlreadyInstalled(String),
    /// No plugin with this name is installed.
    #[error("no plugin {0} is installed")]
    NotInstalled(String),
    /// The call failed; the failure is in the log.
    #[error("plugin {name}: {failure}")]
    Call {
        /// The plugin.
        name: String,
        /// Why the call failed.
        failure: CallFailure,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PluginError {
    fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Causal metadata of one call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// The request the call belongs to (the manager's own id when `None`).
    pub correlation_id: Option<Uuid>,
    /// What caused it (a task, an agent's message...).
    pub causation_id: Option<Uuid>,
}

/// Installs, loads, calls and removes plugins, as events.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    sandbox: Arc<dyn Sandbox>,
    dir: PathBuf,
    correlation_id: Uuid,
    quarantine_after: AtomicU32,
    recorder: Recorder,
    /// Loaded plugins by name; loading holds the lock (loads are rare).
    loaded: tokio::sync::Mutex<HashMap<String, Arc<Entry>>>,
}

/// A loaded plugin, ready for calls.
struct Entry {
    name: String,
    grant: Arc<Grant>,
    limits: super::manifest::Limits,
    plugin: Arc<dyn LoadedPlugin>,
    functions: HashMap<String, Schemas>,
    permits: Semaphore,
    /// Held through each call of a plugin granted `kv`, so a call's reads
    /// and writes are not interleaved with another call's.
    kv_turn: Option<tokio::sync::Mutex<()>>,
    kv: Mutex<Arc<BTreeMap<String, String>>>,
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
}

/// A function's compiled input and output schemas.
struct Schemas {
    input: jsonschema::Validator,
    output: jsonschema::Validator,
}

impl PluginManager {
    /// A manager keeping plugin files under `dir`, recording its events
    /// with `correlation_id` and `durability` (`Durable` waits for each
    /// commit; `Async` queues events for a background appender, in order;
    /// `Ephemeral` is treated as `Async`: plugin calls are always logged).
    pub fn new(
        store: Arc<dyn EventStore>,
        sandbox: Arc<dyn Sandbox>,
        dir: impl Into<PathBuf>,
        correlation_id: Uuid,
        durability: Durability,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                recorder: Recorder::new(store.clone(), durability),
                store,
                sandbox,
                dir: dir.into(),
                correlation_id,
                quarantine_after: AtomicU32::new(DEFAULT_QUARANTINE_AFTER),
                loaded: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets how many failures in a row quarantine a plugin (at least 1).
    pub fn set_quarantine_after(&self, failures: u32) {
        self.inner
            .quarantine_after
            .store(failures.max(1), Ordering::Relaxed);
    }

    /// Drops a loaded plugin from memory; its next call loads it again
    /// (from the cache). Returns whether it was loaded.
    pub async fn unload(&self, name: &str) -> bool {
        self.inner.loaded.lock().await.remove(name).is_some()
    }

    /// Reads a manifest file: the component path and directory paths are
    /// made absolute against the manifest's directory (directories must
    /// exist).
    pub fn read_manifest(path: &Path) -> Result<PluginManifest, PluginError> {
        let text = std::fs::read_to_string(path).map_err(|e| PluginError::io(path, e))?;
        let mut manifest = PluginManifest::parse(&text).map_err(|e| match e {
            ManifestError::Parse(m) => ManifestError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        manifest.component.path = base.join(&manifest.component.path);
        for dir in &mut manifest.permissions.dirs {
            let joined = base.join(&dir.path);
            dir.path = joined
                .canonicalize()
                .map_err(|e| PluginError::io(&joined, e))?;
        }
        Ok(manifest)
    }

    /// Installs the plugin `manifest` describes with `grant`: checks the
    /// component's hash and that it compiles and imports nothing the
    /// manifest does not ask for, copies it into the home under its hash,
    /// and records `plugin_installed` and `plugin_loaded`.
    pub async fn install(
        &self,
        manifest: PluginManifest,
        grant: Grant,
    ) -> Result<PluginRecord, PluginError> {
        manifest.check_grant(&grant)?;
        let path = manifest.component.path.clone();
        let bytes = std::fs::read(&path).map_err(|e| PluginError::io(&path, e))?;
        let actual = sha256_hex(&bytes);
        if actual != manifest.component.sha256 {
            return Err(PluginError::HashMismatch {
                path: path.display().to_string(),
                expected: manifest.component.sha256.clone(),
                actual,
            });
        }
        let state = self.inner.store.projected_state().await?;
        if state.plugin(&manifest.name).is_some() {
            return Err(PluginError::AlreadyInstalled(manifest.name));
        }
        let name = manifest.name.clone();
        let started = Instant::now();
        let sandbox = self.inner.sandbox.clone();
        let compiled =
            tokio::task::spawn_blocking(move || sandbox.compile(&bytes).map(|c| (c, bytes)))
                .await
                .map_err(|e| StoreError::Backend(format!("compile task failed: {e}")))?
                .map_err(|source| PluginError::Sandbox {
                    name: name.clone(),
                    source,
                })?;
        let (compiled, bytes) = compiled;
        if let Some(i) = compiled
            .imports
            .iter()
            .find(|i| !manifest.permissions.interfaces.contains(i))
        {
            return Err(PluginError::Sandbox {
                name,
                source: SandboxError::InvalidComponent(format!(
                    "it imports the {} interface, which its manifest does not ask for",
                    i.as_str()
                )),
            });
        }
        let micros = elapsed_micros(started);
        let sha = manifest.component.sha256.clone();
        write_atomic(&self.component_path(&sha), &bytes)?;
        let artifact = VerifiedArtifact::compiled(compiled.artifact);
        write_atomic(&self.artifact_path(&sha), artifact.bytes())?;
        let installed = InstalledPlugin {
            manifest,
            grant,
            sandbox: self.inner.sandbox.kind().to_owned(),
        };
        let events = vec![
            SystemEvent::PluginInstalled {
                plugin: Box::new(installed.clone()),
            },
            SystemEvent::PluginLoaded {
                name: name.clone(),
                artifact: Artifact {
                    key: self.inner.sandbox.artifact_key().to_owned(),
                    sha256: artifact.sha256().to_owned(),
                },
                cached: false,
                micros,
            },
        ];
        let mut record = PluginRecord::installed(installed);
        for event in &events[1..] {
            record.apply(event);
        }
        match self.append_now(events, None).await {
            Err(StoreError::Rejected(ApplyError::DuplicatePlugin(n))) => {
                Err(PluginError::AlreadyInstalled(n))
            }
            other => other.map(|()| record).map_err(Into::into),
        }
    }

    /// Removes a plugin (and its key-value data) and deletes its files when
    /// no other installed plugin shares them.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        self.flush().await?;
        let state = self.inner.store.projected_state().await?;
        let record = state
            .plugin(name)
            .ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?;
        let sha = record.installed.sha256().to_owned();
        let shared = state
            .plugins()
            .any(|p| p.name() != name && p.installed.sha256() == sha);
        let event = SystemEvent::PluginRemoved {
            name: name.to_owned(),
        };
        match self.append_now(vec![event], None).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            other => other?,
        }
        self.unload(name).await;
        if !shared {
            // Content-addressed files; a failure to delete leaves only garbage.
            let _ = std::fs::remove_file(self.component_path(&sha));
            let _ = std::fs::remove_file(self.artifact_path(&sha));
        }
        Ok(())
    }

    /// Calls `function` of plugin `name` with JSON `input`: validates the
    /// input, runs the call in the sandbox under the plugin's grant and
    /// limits, validates the output, and records the call's events.
    pub async fn call(
        &self,
        name: &str,
        function: &str,
        input: &str,
        options: CallOptions,
    ) -> Result<Value, PluginError> {
        let entry = self.entry(name).await?;
        if entry.quarantined.load(Ordering::Acquire) {
            return Err(PluginError::Call {
                name: name.to_owned(),
                failure: CallFailure::new(
                    FailureKind::Quarantined,
                    "the plugin is quarantined after repeated failures; remove and reinstall it",
                ),
            });
        }
        let call_id = Uuid::now_v7();
        let started = Instant::now();
        self.record(
            vec![SystemEvent::PluginInvoked {
                name: name.to_owned(),
                call_id,
                function: function.to_owned(),
            }],
            options,
        )
        .await?;
        let (outcome, effects) = run(&entry, call_id, function, input).await;
        self.finish(&entry, call_id, outcome, effects, started, options)
            .await
    }

    /// Records the outcome of a call — denials, then on success its
    /// key-value writes, emitted events and output, on failure why (and a
    /// quarantine when earned) — and returns it.
    async fn finish(
        &self,
        entry: &Entry,
        call_id: Uuid,
        outcome: Result<Value, CallFailure>,
        effects: Effects,
        started: Instant,
        options: CallOptions,
    ) -> Result<Value, PluginError> {
        let name = entry.name.clone();
        let micros = elapsed_micros(started);
        let mut events = Vec::new();
        for (asked, reason) in effects.denials {
            events.push(SystemEvent::PluginPermissionDenied {
                name: name.clone(),
                call_id: Some(call_id),
                asked,
                reason,
            });
        }
        let result = match outcome {
            Ok(output) => {
                for (key, value) in effects.kv_writes {
                    events.push(SystemEvent::PluginKvSet {
                        name: name.clone(),
                        key,
                        value,
                    });
                }
                for (kind, data) in effects.emitted {
                    events.push(SystemEvent::PluginEmitted {
                        name: name.clone(),
                        call_id,
                        kind,
                        data,
                    });
                }
                events.push(SystemEvent::PluginSucceeded {
                    name: name.clone(),
                    call_id,
                    output: output.clone(),
                    micros,
                });
                entry.consecutive_failures.store(0, Ordering::Release);
                Ok(output)
            }
            Err(failure) => {
                events.push(SystemEvent::PluginFailed {
                    name: name.clone(),
                    call_id,
                    failure: failure.clone(),
                    micros,
                });
                if failure.kind.counts_towards_quarantine() {
                    let failures = entry.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                    if failures >= self.inner.quarantine_after.load(Ordering::Relaxed)
                        && !entry.quarantined.swap(true, Ordering::AcqRel)
                    {
                        events.push(SystemEvent::PluginQuarantined {
                            name: name.clone(),
                            failures,
                            reason: failure.to_string(),
                        });
                    }
                }
                Err(PluginError::Call { name, failure })
            }
        };
        self.record(events, options).await?;
        result
    }

    /// The loaded plugin `name`, loading it first if needed.
    async fn entry(&self, name: &str) -> Result<Arc<Entry>, PluginError> {
        let mut loaded = self.inner.loaded.lock().await;
        if let Some(entry) = loaded.get(name) {
            return Ok(entry.clone());
        }
        let state = self.inner.store.projected_state().await?;
        let record = state
            .plugin(name)
            .ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?
            .clone();
        let kv = state.plugin_kv(name).cloned().unwrap_or_default();
        let entry = Arc::new(self.load(record, kv).await?);
        loaded.insert(name.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Loads a plugin: its cached artifact when its hash checks out,
    /// otherwise compiles the installed component (and caches the result).
    async fn load(
        &self,
        record: PluginRecord,
        kv: BTreeMap<String, String>,
    ) -> Result<Entry, PluginError> {
        let name = record.name().to_owned();
        let sha = record.installed.sha256().to_owned();
        let key = self.inner.sandbox.artifact_key().to_owned();
        let started = Instant::now();
        let sandbox = self.inner.sandbox.clone();
        let artifact_path = self.artifact_path(&sha);
        let component_path = self.component_path(&sha);
        let expected = record.artifacts.get(&key).cloned();
        let sandbox_error = |source| PluginError::Sandbox {
            name: name.clone(),
            source,
        };
        let (plugin, artifact, cached) = tokio::task::spawn_blocking(move || {
            if let Some(expected) = expected
                && let Ok(bytes) = std::fs::read(&artifact_path)
            {
                match VerifiedArtifact::check(bytes, &expected) {
                    Some(artifact) => {
                        let plugin = sandbox.load(&artifact)?;
                        return Ok::<_, SandboxError>((plugin, artifact.sha256().to_owned(), true));
                    }
                    None => tracing::warn!(
                        path = %artifact_path.display(),
                        "cached compiled plugin does not match its recorded hash; recompiling"
                    ),
                }
            }
            let bytes = std::fs::read(&component_path)
                .map_err(|e| SandboxError::Host(format!("{}: {e}", component_path.display())))?;
            if sha256_hex(&bytes) != sha {
                return Err(SandboxError::InvalidComponent(format!(
                    "{} no longer has sha256 {sha}",
                    component_path.display()
                )));
            }
            let compiled = sandbox.compile(&bytes)?;
            let artifact = VerifiedArtifact::compiled(compiled.artifact);
            write_atomic(&artifact_path, artifact.bytes())
                .map_err(|e| SandboxError::Host(e.to_string()))?;
            let plugin = sandbox.load(&artifact)?;
            Ok((plugin, artifact.sha256().to_owned(), false))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("load task failed: {e}")))?
        .map_err(sandbox_error)?;
        self.record(
            vec![SystemEvent::PluginLoaded {
                name: name.clone(),
                artifact: Artifact {
                    key,
                    sha256: artifact,
                },
                cached,
                micros: elapsed_micros(started),
            }],
            CallOptions::default(),
        )
        .await?;
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
        Ok(Entry {
            name,
            limits: manifest.limits,
            functions,
            permits: Semaphore::new(manifest.limits.max_concurrency as usize),
            kv_turn: grant
                .interfaces
                .contains(&HostInterface::Kv)
                .then(|| tokio::sync::Mutex::new(())),
            grant: Arc::new(grant.clone()),
            plugin,
            kv: Mutex::new(Arc::new(kv)),
            consecutive_failures: AtomicU32::new(record.consecutive_failures),
            quarantined: AtomicBool::new(record.status == PluginStatus::Quarantined),
        })
    }

    /// Takes note of an event another process recorded (the kernel calls
    /// this for every event it follows): an installed, removed or
    /// quarantined plugin is reloaded on its next call, and key-value
    /// writes reach the loaded snapshot.
    pub async fn observe(&self, event: &SystemEvent) {
        match event {
            SystemEvent::PluginInstalled { .. }
            | SystemEvent::PluginRemoved { .. }
            | SystemEvent::PluginQuarantined { .. } => {
                if let Some(name) = event.plugin_name() {
                    self.unload(name).await;
                }
            }
            SystemEvent::PluginKvSet { name, key, value } => {
                if let Some(entry) = self.inner.loaded.lock().await.get(name) {
                    let mut kv = entry.kv.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut next = (**kv).clone();
                    match value {
                        Some(v) => next.insert(key.clone(), v.clone()),
                        None => next.remove(key),
                    };
                    *kv = Arc::new(next);
                }
            }
            _ => {}
        }
    }

    /// Waits until every event recorded so far is committed; the first
    /// background append error, if any.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.recorder.flush().await
    }

    /// Drops this handle; if it was the manager's last, also waits until the
    /// background appender has appended what was recorded and let go of the
    /// store, so the caller may close the store (and delete its home) next.
    pub async fn close(self) {
        if let Some(inner) = Arc::into_inner(self.inner) {
            inner.recorder.close().await;
        }
    }

    /// Appends `events` and waits for the commit, whatever the durability.
    async fn append_now(
        &self,
        events: Vec<SystemEvent>,
        options: Option<CallOptions>,
    ) -> Result<(), StoreError> {
        self.flush().await?;
        let events = self.new_events(events, options.unwrap_or_default());
        self.inner
            .store
            .append(events, ExpectedVersion::Any)
            .await
            .map(|_| ())
    }

    /// Records `events` with the manager's durability.
    async fn record(
        &self,
        events: Vec<SystemEvent>,
        options: CallOptions,
    ) -> Result<(), StoreError> {
        let events = self.new_events(events, options);
        self.inner.recorder.record(events).await
    }

    fn new_events(&self, events: Vec<SystemEvent>, options: CallOptions) -> Vec<NewEvent> {
        let correlation = options.correlation_id.unwrap_or(self.inner.correlation_id);
        events
            .into_iter()
            .map(|event| {
                let mut new = NewEvent::new(event, correlation);
                new.causation_id = options.causation_id;
                new
            })
            .collect()
    }

    fn component_path(&self, sha: &str) -> PathBuf {
        self.inner
            .dir
            .join("components")
            .join(format!("{sha}.wasm"))
    }

    fn artifact_path(&self, sha: &str) -> PathBuf {
        self.inner
            .dir
            .join("compiled")
            .join(self.inner.sandbox.artifact_key())
            .join(format!("{sha}.bin"))
    }
}

/// Validates the input, waits for a turn, runs the call and checks its
/// output; on success the call's key-value writes reach the entry's
/// snapshot before its turn ends. Returns the outcome and the call's
/// effects (which the caller records).
async fn run(
    entry: &Entry,
    call_id: Uuid,
    function: &str,
    input: &str,
) -> (Result<Value, CallFailure>, Effects) {
    let invalid = |m: String| CallFailure::new(FailureKind::InvalidInput, m);
    let Some(schemas) = entry.functions.get(function) else {
        let failure = invalid(format!("the plugin has no function {function:?}"));
        return (Err(failure), Effects::default());
    };
    if input.len() as u64 > entry.limits.max_input_bytes {
        let failure = invalid(format!(
            "the input is {} bytes, over the {} byte limit",
            input.len(),
            entry.limits.max_input_bytes
        ));
        return (Err(failure), Effects::default());
    }
    let value = match serde_json::from_str::<Value>(input) {
        Ok(value) => value,
        Err(e) => {
            let failure = invalid(format!("the input is not JSON: {e}"));
            return (Err(failure), Effects::default());
        }
    };
    if let Some(e) = schemas.input.iter_errors(&value).next() {
        let failure = invalid(format!("the input breaks the schema: {}", describe(&e)));
        return (Err(failure), Effects::default());
    }
    let Ok(_permit) = entry.permits.acquire().await else {
        let failure = CallFailure::new(FailureKind::Host, "the plugin was unloaded");
        return (Err(failure), Effects::default());
    };
    let _kv_turn = match &entry.kv_turn {
        Some(turn) => Some(turn.lock().await),
        None => None,
    };
    // Taken inside the turn, so it holds the previous call's writes.
    let snapshot = entry
        .kv
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let ctx = Arc::new(CallContext::new(
        &entry.name,
        call_id,
        entry.grant.clone(),
        entry.limits,
        snapshot,
    ));
    let outcome = entry
        .plugin
        .call(function, input, ctx.clone())
        .await
        .and_then(|output| check_output(entry, schemas, &output))
        .and_then(|value| match ctx.limit_hit() {
            Some(failure) => Err(failure),
            None => Ok(value),
        });
    let effects = ctx.take_effects();
    if outcome.is_ok() && !effects.kv_writes.is_empty() {
        let mut kv = entry.kv.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = (**kv).clone();
        for (key, value) in &effects.kv_writes {
            match value {
                Some(v) => next.insert(key.clone(), v.clone()),
                None => next.remove(key),
            };
        }
        *kv = Arc::new(next);
    }
    (outcome, effects)
}

/// Checks an output's size, that it is JSON, and its schema.
fn check_output(entry: &Entry, schemas: &Schemas, output: &str) -> Result<Value, CallFailure> {
    if output.len() as u64 > entry.limits.max_output_bytes {
        return Err(CallFailure::new(
            FailureKind::OutputLimit,
            format!(
                "the output is {} bytes, over the {} byte limit",
                output.len(),
                entry.limits.max_output_bytes
            ),
        ));
    }
    let bad = |m: String| CallFailure::new(FailureKind::InvalidOutput, m);
    let value: Value =
        serde_json::from_str(output).map_err(|e| bad(format!("the output is not JSON: {e}")))?;
    if let Some(e) = schemas.output.iter_errors(&value).next() {
        return Err(bad(format!(
            "the output breaks the schema: {}",
            describe(&e)
        )));
    }
    Ok(value)
}

/// A schema violation in one line: where, and what.
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let at = e.instance_path().to_string();
    if at.is_empty() {
        e.to_string()
    } else {
        format!("at {at}: {e}")
    }
}

fn elapsed_micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| PluginError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        Uuid::new_v4().simple()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| PluginError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PluginError::io(path, e)
    })
}

/// Appends events with a durability: at once, or through one background
/// appender that batches whatever is queued into each append, in order.
struct Recorder {
    store: Arc<dyn EventStore>,
    queue: Option<mpsc::Sender<Queued>>,
    /// The background appender, which holds the store until `queue` closes.
    appender: Option<JoinHandle<()>>,
}

enum Queued {
    Events(Vec<NewEvent>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

impl Recorder {
    fn new(store: Arc<dyn EventStore>, durability: Durability) -> Self {
        let (queue, appender) = match durability {
            Durability::Durable => (None, None),
            Durability::Async | Durability::Ephemeral => {
                let (tx, rx) = mpsc::channel(ASYNC_QUEUE);
                let appender = tokio::spawn(Self::append_queued(store.clone(), rx));
                (Some(tx), Some(appender))
            }
        };
        Self {
            store,
            queue,
            appender,
        }
    }

    /// Closes the queue and waits for the background appender to append
    /// what is in it and stop.
    async fn close(self) {
        drop(self.queue);
        if let Some(appender) = self.appender {
            let _ = appender.await;
        }
    }

    async fn record(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
        match &self.queue {
            None => self
                .store
                .append(events, ExpectedVersion::Any)
                .await
                .map(|_| ()),
            Some(queue) => queue
                .send(Queued::Events(events))
                .await
                .map_err(|_| StoreError::Backend("the plugin event appender stopped".into())),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        queue
            .send(Queued::Flush(tx))
            .await
            .map_err(|_| StoreError::Backend("the plugin event appender stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the plugin event appender stopped".into()))?
    }

    /// The background appender: appends everything queued since its last
    /// append in one batch; remembers the first error for the next flush.
    async fn append_queued(store: Arc<dyn EventStore>, mut rx: mpsc::Receiver<Queued>) {
        let mut failed: Option<StoreError> = None;
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(item) = next.take().or_else(|| rx.try_recv().ok()) {
                match item {
                    Queued::Events(events) => batch.extend(events),
                    Queued::Flush(reply) => flushes.push(reply),
                }
                if batch.len() >= ASYNC_QUEUE {
                    break;
                }
            }
            if !batch.is_empty()
                && let Err(e) = store
                    .append(std::mem::take(&mut batch), ExpectedVersion::Any)
                    .await
            {
                tracing::error!(error = %e, "appending plugin events failed");
                failed.get_or_insert(e);
            }
            for reply in flushes.drain(..) {
                let _ = reply.send(match &failed {
                    Some(e) => Err(StoreError::Backend(format!(
                        "a background append of plugin events failed: {e}"
                    ))),
                    None => Ok(()),
                });
            }
        }
    }
}
