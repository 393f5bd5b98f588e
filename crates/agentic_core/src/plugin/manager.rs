//! [`PluginManager`]: installs plugins into a home, loads them (compiled
//! once, cached on disk by hash and checked before loading; see
//! [`cache`](super::cache)), calls them through the pipeline of
//! [`loaded`](super::loaded), quarantines those that keep failing, changes
//! their grants and removes them — every step an event in the log, appended
//! by a [`Recorder`].
//!
//! This file holds the manager and how it records its events; its jobs are
//! in rooms of their own: `install` (install, grant, remove), `loading`
//! (each plugin loaded once on its first call, and the log's events
//! reaching loaded plugins), `server` (server plugins: discovered at
//! install, started warm at load), `call` (the call pipeline, its outcome and
//! quarantine, recorded to the end by a `run_to_end` future even when its
//! caller is cancelled) and `dirs` (directory grants kept usable and out of
//! the home).

mod call;
mod dirs;
mod install;
mod loading;
mod run_to_end;
mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use call::CallOptions;
pub use server::Approval;

use super::cache::PluginFiles;
use super::error::PluginError;
use super::recorder::Recorder;
use super::server::ServerSandbox;
use crate::event::{NewEvent, SystemEvent};
use crate::store::{EventStore, ExpectedVersion, PluginSnapshot, StoreError};
use crate::task::Durability;
use loading::Slot;

/// Failures in a row (of the kinds that count) before a plugin is
/// quarantined.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;

/// Installs, loads, calls and removes plugins, as events.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

/// What every clone of a [`PluginManager`] shares.
struct Inner {
    store: Arc<dyn EventStore>,
    files: PluginFiles,
    correlation_id: Uuid,
    quarantine_after: AtomicU32,
    recorder: Recorder,
    /// Set when the caller passes every event of the log to
    /// [`PluginManager::observe`] (the kernel does): the key-value writes of
    /// this process then wait for the log to show them.
    follows_log: AtomicBool,
    /// Loaded plugins by name (the lock is held only to find a slot).
    loaded: Mutex<HashMap<String, Arc<Slot>>>,
    /// Each plugin's key-value turn, by name: shared by every load of it,
    /// so calls of an entry being replaced and of its successor still take
    /// turns.
    kv_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Outcomes of calls dropped before they ended (cancelled), waiting to
    /// be recorded.
    unfinished: Mutex<Vec<NewEvent>>,
    /// Held while outcomes taken from `unfinished` are recorded, so a flush
    /// waits for a recording under way.
    recording_unfinished: tokio::sync::Mutex<()>,
    /// The sandbox that runs server plugins, once the caller gave one
    /// ([`PluginManager::run_servers_with`]).
    servers: std::sync::OnceLock<Arc<dyn ServerSandbox>>,
    /// The tasks finishing the recording of calls whose callers went
    /// before it ended (a call's outcome is recorded in its caller's task
    /// until then): [`PluginManager::close`] waits for them, so a stopping
    /// process does not drop one halfway through its append.
    recording: TaskTracker,
}

impl PluginManager {
    /// A manager keeping plugin files under `dir`, recording its events
    /// with `correlation_id` and `durability` (`Durable` waits for each
    /// commit; `Async` queues events for a background appender, in order;
    /// `Ephemeral` is treated as `Async`: plugin calls are always logged).
    pub fn new(
        store: Arc<dyn EventStore>,
        sandbox: Arc<dyn super::sandbox::Sandbox>,
        dir: impl Into<std::path::PathBuf>,
        correlation_id: Uuid,
        durability: Durability,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                recorder: Recorder::new(store.clone(), durability),
                store,
                files: PluginFiles::new(dir.into(), sandbox),
                correlation_id,
                quarantine_after: AtomicU32::new(DEFAULT_QUARANTINE_AFTER),
                follows_log: AtomicBool::new(false),
                loaded: Mutex::new(HashMap::new()),
                kv_turns: Mutex::new(HashMap::new()),
                unfinished: Mutex::new(Vec::new()),
                recording_unfinished: tokio::sync::Mutex::new(()),
                servers: std::sync::OnceLock::new(),
                recording: TaskTracker::new(),
            }),
        }
    }

    /// Runs server plugins with `sandbox` (without one, installing or
    /// calling a server plugin is refused). The first sandbox given stays.
    pub fn run_servers_with(&self, sandbox: Arc<dyn ServerSandbox>) {
        let _ = self.inner.servers.set(sandbox);
    }

    /// Sets how many failures in a row quarantine a plugin (at least 1).
    pub fn set_quarantine_after(&self, failures: u32) {
        self.inner
            .quarantine_after
            .store(failures.max(1), Ordering::Relaxed);
    }

    /// Says that from now on the caller passes every event appended to the
    /// log, this manager's own included, to [`observe`](Self::observe), as
    /// the kernel does: key-value writes made elsewhere then reach loaded
    /// plugins, and this manager's own are not taken back when the log shows
    /// them late.
    pub fn follow_log(&self) {
        self.inner.follows_log.store(true, Ordering::Release);
    }

    /// Waits until every event recorded so far is committed (the outcomes
    /// of cancelled calls included); the first background append error, if
    /// any.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.record_unfinished().await?;
        self.inner.recorder.flush().await
    }

    /// Drops this handle after recording what the manager's calls left to
    /// record: it waits for the tasks finishing the recording of calls
    /// whose callers went, records the outcomes of cancelled calls and
    /// waits until what was recorded is appended. If this was the manager's last handle, the background
    /// appender also lets go of the store, so the caller may close the store
    /// (and delete its home) next.
    pub async fn close(self) {
        // Later calls (through other handles) still record theirs: closing
        // the tracker only lets `wait` end once the tasks of now are done.
        self.inner.recording.close();
        self.inner.recording.wait().await;
        if let Err(e) = self.record_unfinished().await {
            tracing::error!(error = %e, "recording cancelled plugin calls failed");
        }
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.recorder.close().await,
            Err(inner) => {
                if let Err(e) = inner.recorder.flush().await {
                    tracing::error!(error = %e, "recording plugin calls failed");
                }
            }
        }
    }

    /// Appends `events` and waits for the commit, whatever the durability.
    pub(super) async fn append_now(&self, events: Vec<SystemEvent>) -> Result<(), StoreError> {
        self.flush().await?;
        let events = events
            .into_iter()
            .map(|e| self.new_event(e, CallOptions::default()))
            .collect();
        self.inner
            .store
            .append(events, ExpectedVersion::Any)
            .await
            .map(|_| ())
    }

    /// Records `events` with the manager's durability.
    pub(super) async fn record(
        &self,
        events: Vec<SystemEvent>,
        options: CallOptions,
    ) -> Result<(), StoreError> {
        let events = events
            .into_iter()
            .map(|e| self.new_event(e, options))
            .collect();
        self.inner.recorder.record(events).await
    }

    /// The event to record, with the call's correlation (else the
    /// manager's) and cause.
    pub(super) fn new_event(&self, event: SystemEvent, options: CallOptions) -> NewEvent {
        let correlation = options.correlation_id.unwrap_or(self.inner.correlation_id);
        let mut new = NewEvent::new(event, correlation);
        new.causation_id = options.causation_id;
        new
    }

    /// Plugin `name` as the store holds it, or that it is not installed.
    pub(super) async fn recorded(&self, name: &str) -> Result<PluginSnapshot, PluginError> {
        self.inner
            .store
            .plugin(name)
            .await?
            .ok_or_else(|| PluginError::NotInstalled(name.to_owned()))
    }
}

/// Microseconds since `started`.
pub(super) fn elapsed_micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
