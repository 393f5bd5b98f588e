//! [`PluginManager`]: installs plugins into a home, loads them (compiled
//! once, cached on disk by hash and checked before loading; see
//! [`cache`](super::cache)), calls them through the pipeline of
//! [`loaded`](super::loaded), quarantines those that keep failing, changes
//! their grants and removes them — every step an event in the log, appended
//! by a [`Recorder`](super::recorder::Recorder).
//!
//! Loading one plugin (a compile can take a second) never holds up calls to
//! the others: each name has its own load slot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::cache::PluginFiles;
use super::files::{MAX_COMPONENT_BYTES, MAX_MANIFEST_BYTES, read_regular};
use super::kv::KvWrite;
use super::loaded::{CallResult, Entry};
use super::manifest::{DirAccess, Grant, ManifestError, PluginManifest};
use super::record::{Artifact, CallFailure, FailureKind, InstalledPlugin, PluginRecord};
use super::recorder::Recorder;
use super::sandbox::{Effects, SandboxError, sha256_hex};
use crate::event::{EventEnvelope, NewEvent, SystemEvent};
use crate::state::ApplyError;
use crate::store::{Cursor, EventStore, ExpectedVersion, StoreError};
use crate::task::Durability;

/// Installed plugins read per page when looking through all of them.
const PLUGIN_PAGE: usize = 256;

/// Failures in a row (of the kinds that count) before a plugin is
/// quarantined.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;

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
    /// The plugin's grant cannot be used as recorded (a directory grant
    /// the operator never named, or a granted directory that moved).
    #[error("plugin {name}: {reason}")]
    GrantRefused {
        /// The plugin.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PluginError {
    /// A failure to read or write `path`.
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
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

/// A plugin's load slot: filled once by the first call that needs it,
/// while calls to other plugins go on.
#[derive(Default)]
struct Slot {
    entry: OnceCell<Arc<Entry>>,
    /// Key-value writes the log showed while the slot was loading (kept to
    /// be given to the entry once loaded), or the loaded entry.
    observed: Mutex<Observed>,
}

/// What a load slot does with key-value writes seen in the log.
enum Observed {
    /// Keeps them for the entry being loaded.
    Loading(Vec<ObservedWrite>),
    /// Gives them to the loaded entry.
    Ready(Arc<Entry>),
}

impl Default for Observed {
    fn default() -> Self {
        Self::Loading(Vec::new())
    }
}

/// A key-value write as the log showed it: position, event id, the write,
/// and the install it was for.
type ObservedWrite = (u64, Uuid, KvWrite, Option<Uuid>);

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
    /// The tasks recording calls' outcomes apart from their callers:
    /// [`PluginManager::close`] waits for them, so a stopping process does
    /// not drop one halfway through its append.
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
                recording: TaskTracker::new(),
            }),
        }
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

    /// Drops a loaded plugin from memory; its next call loads it again
    /// (from the cache). Returns whether it was loaded.
    pub async fn unload(&self, name: &str) -> bool {
        self.lock_loaded()
            .remove(name)
            .is_some_and(|slot| slot.entry.initialized())
    }

    /// Reads a manifest file (a regular file of at most
    /// [`MAX_MANIFEST_BYTES`]): the component path and directory paths are
    /// made absolute against the manifest's folder, directories with their
    /// symbolic links resolved where they exist, and the folder is kept for
    /// the grant ([`PluginManifest::grant_from`]).
    pub fn read_manifest(path: &Path) -> Result<PluginManifest, PluginError> {
        let bytes = read_regular(path, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| PluginError::io(path, "not UTF-8"))?;
        let mut manifest = PluginManifest::parse(&text).map_err(|e| match e {
            ManifestError::Parse(m) => ManifestError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        manifest.component.path = base.join(&manifest.component.path);
        for dir in &mut manifest.permissions.dirs {
            let joined = base.join(&dir.path);
            dir.path = joined.canonicalize().unwrap_or(joined);
        }
        manifest.folder = Some(base.canonicalize().map_err(|e| PluginError::io(base, e))?);
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
        self.check_dirs_keep_out_of_home(&manifest.name, &grant)?;
        let path = manifest.component.path.clone();
        let bytes = read_regular(&path, MAX_COMPONENT_BYTES)?;
        let actual = sha256_hex(&bytes);
        if actual != manifest.component.sha256 {
            return Err(PluginError::HashMismatch {
                path: path.display().to_string(),
                expected: manifest.component.sha256.clone(),
                actual,
            });
        }
        if self.inner.store.plugin(&manifest.name).await?.is_some() {
            return Err(PluginError::AlreadyInstalled(manifest.name));
        }
        let name = manifest.name.clone();
        let started = Instant::now();
        let files = self.inner.files.clone();
        let compiled =
            tokio::task::spawn_blocking(move || files.compile(&bytes).map(|c| (c, bytes)))
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
        let artifact = self.inner.files.keep(&sha, &bytes, compiled.artifact)?;
        let sandbox = self.inner.files.sandbox();
        let installed = InstalledPlugin {
            manifest,
            grant,
            sandbox: sandbox.kind().to_owned(),
            install_id: Some(Uuid::now_v7()),
            dirs_named: true,
        };
        let events = vec![
            SystemEvent::PluginInstalled {
                plugin: Box::new(installed.clone()),
            },
            SystemEvent::PluginLoaded {
                name: name.clone(),
                artifact: Artifact {
                    key: sandbox.artifact_key().to_owned(),
                    sha256: artifact.sha256().to_owned(),
                },
                cached: false,
                micros,
                install_id: installed.install_id,
            },
        ];
        let mut record = PluginRecord::installed(installed);
        for event in &events[1..] {
            record.apply(event);
        }
        match self.append_now(events).await {
            Err(StoreError::Rejected(ApplyError::DuplicatePlugin(n))) => {
                Err(PluginError::AlreadyInstalled(n))
            }
            other => other.map(|()| record).map_err(Into::into),
        }
    }

    /// Replaces what plugin `name` is granted with `grant` (checked against
    /// its recorded manifest; directories' host paths named by the
    /// operator) and records `plugin_granted`; the next call loads the
    /// plugin with it.
    pub async fn grant(&self, name: &str, grant: Grant) -> Result<PluginRecord, PluginError> {
        let snapshot = self
            .inner
            .store
            .plugin(name)
            .await?
            .ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?;
        snapshot.record.installed.manifest.check_grant(&grant)?;
        self.check_dirs_keep_out_of_home(name, &grant)?;
        let event = SystemEvent::PluginGranted {
            name: name.to_owned(),
            grant,
            install_id: snapshot.record.installed.install_id,
        };
        let mut record = snapshot.record;
        record.apply(&event);
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            Err(StoreError::Rejected(e @ ApplyError::StaleGrant(_))) => {
                return Err(PluginError::GrantRefused {
                    name: name.to_owned(),
                    reason: e.to_string(),
                });
            }
            other => other?,
        }
        self.unload(name).await;
        Ok(record)
    }

    /// Removes a plugin (and its key-value data) and deletes its files when
    /// no other installed plugin shares them.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        self.flush().await?;
        let record = self
            .inner
            .store
            .plugin(name)
            .await?
            .ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?
            .record;
        let sha = record.installed.sha256().to_owned();
        let shared = self.shares_files(name, &sha).await?;
        let event = SystemEvent::PluginRemoved {
            name: name.to_owned(),
        };
        match self.append_now(vec![event]).await {
            Err(StoreError::Rejected(ApplyError::UnknownPlugin(n))) => {
                return Err(PluginError::NotInstalled(n));
            }
            other => other?,
        }
        self.unload(name).await;
        if !shared {
            self.inner.files.forget(&sha);
        }
        Ok(())
    }

    /// Whether an installed plugin other than `name` uses the files of
    /// component `sha` (installs are few: they are read a page at a time).
    async fn shares_files(&self, name: &str, sha: &str) -> Result<bool, StoreError> {
        let mut after = Cursor::START;
        loop {
            let page = self.inner.store.plugins(after, PLUGIN_PAGE).await?;
            if page
                .items
                .iter()
                .any(|p| p.name() != name && p.installed.sha256() == sha)
            {
                return Ok(true);
            }
            match page.next {
                Some(next) => after = next,
                None => return Ok(false),
            }
        }
    }

    /// Calls `function` of plugin `name` with JSON `input`: validates the
    /// input, runs the call in the sandbox under the plugin's grant and
    /// limits, validates the output, and records the call's events. A call
    /// dropped before it ends (cancelled) is recorded as failed with kind
    /// `cancelled`; once it has ended, its outcome is recorded whatever
    /// happens to the caller.
    pub async fn call(
        &self,
        name: &str,
        function: &str,
        input: &str,
        options: CallOptions,
    ) -> Result<Value, PluginError> {
        let entry = self.entry(name).await?;
        let install_id = entry.install_id;
        if entry.quarantined.load(Ordering::Acquire) {
            return Err(PluginError::Call {
                name: name.to_owned(),
                failure: CallFailure::new(
                    FailureKind::Quarantined,
                    "the plugin is quarantined after repeated failures; remove and reinstall it",
                ),
            });
        }
        // Directories are opened by path at each call: each must still be
        // the one granted.
        self.refuse_unusable_dirs(&entry.installed).await?;
        let call_id = Uuid::now_v7();
        let started = Instant::now();
        let mut unfinished = Unfinished {
            manager: self,
            name,
            call_id,
            install_id,
            options,
            started,
            armed: true,
        };
        let invoked = SystemEvent::PluginInvoked {
            name: name.to_owned(),
            call_id,
            function: function.to_owned(),
            install_id,
        };
        if let Err(e) = self.record(vec![invoked], options).await {
            unfinished.armed = false;
            return Err(e.into());
        }
        let result = entry.run(call_id, function, input).await;
        unfinished.armed = false;
        // Recorded by a task of its own, so a caller gone now (a cancelled
        // task) cannot cut the recording short.
        let manager = self.clone();
        self.inner
            .recording
            .spawn(async move {
                manager
                    .finish(&entry, call_id, result, started, options)
                    .await
            })
            .await
            .map_err(|e| StoreError::Backend(format!("recording a plugin call failed: {e}")))?
    }

    /// Records the outcome of a call — denials, then on success its
    /// key-value writes, emitted events and output, on failure why (and a
    /// quarantine when earned) — gives its key-value writes to the view
    /// once recorded, lets its turn go, and returns the outcome.
    async fn finish(
        &self,
        entry: &Entry,
        call_id: Uuid,
        result: CallResult,
        started: Instant,
        options: CallOptions,
    ) -> Result<Value, PluginError> {
        let CallResult {
            turn,
            outcome,
            effects,
            kv_writes,
        } = result;
        let Effects {
            denials, emitted, ..
        } = effects;
        let name = entry.name.clone();
        let install_id = entry.install_id;
        let micros = elapsed_micros(started);
        let mut events = Vec::new();
        for (asked, reason) in denials {
            events.push(self.new_event(
                SystemEvent::PluginPermissionDenied {
                    name: name.clone(),
                    call_id: Some(call_id),
                    asked,
                    reason,
                    install_id,
                },
                options,
            ));
        }
        let result = match outcome {
            Ok(output) => {
                for (id, (key, value)) in &kv_writes {
                    let mut event = self.new_event(
                        SystemEvent::PluginKvSet {
                            name: name.clone(),
                            key: key.clone(),
                            value: value.clone(),
                            install_id,
                        },
                        options,
                    );
                    event.event_id = *id;
                    events.push(event);
                }
                for (kind, data) in emitted {
                    events.push(self.new_event(
                        SystemEvent::PluginEmitted {
                            name: name.clone(),
                            call_id,
                            kind,
                            data,
                            install_id,
                        },
                        options,
                    ));
                }
                events.push(self.new_event(
                    SystemEvent::PluginSucceeded {
                        name: name.clone(),
                        call_id,
                        output: output.clone(),
                        micros,
                        install_id,
                    },
                    options,
                ));
                entry.consecutive_failures.store(0, Ordering::Release);
                Ok(output)
            }
            Err(failure) => {
                events.push(self.new_event(
                    SystemEvent::PluginFailed {
                        name: name.clone(),
                        call_id,
                        failure: failure.clone(),
                        micros,
                        install_id,
                    },
                    options,
                ));
                if failure.kind.counts_towards_quarantine() {
                    let failures = entry.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                    if failures >= self.inner.quarantine_after.load(Ordering::Relaxed)
                        && !entry.quarantined.swap(true, Ordering::AcqRel)
                    {
                        events.push(self.new_event(
                            SystemEvent::PluginQuarantined {
                                name: name.clone(),
                                failures,
                                reason: failure.to_string(),
                                install_id,
                            },
                            options,
                        ));
                    }
                }
                Err(PluginError::Call { name, failure })
            }
        };
        // The next call reads these writes. A process that follows the log
        // expects them back from it, so it marks them pending before they
        // can show there; one that does not folds them in once recorded.
        let followed = self.inner.follows_log.load(Ordering::Acquire);
        let ids: Vec<Uuid> = kv_writes.iter().map(|(id, _)| *id).collect();
        if followed {
            entry.kv.wrote(kv_writes.clone(), true);
        }
        let recorded = self.inner.recorder.record(events).await;
        match &recorded {
            Ok(()) if !followed => entry.kv.wrote(kv_writes, false),
            Ok(()) => {}
            Err(_) if followed => entry.kv.forget(&ids),
            Err(_) => {}
        }
        drop(turn);
        recorded?;
        result
    }

    /// The loaded plugin `name`, loading it first if needed. Only the slot
    /// lookup holds the manager's lock; the load itself (maybe a compile)
    /// holds up only calls to the same plugin.
    async fn entry(&self, name: &str) -> Result<Arc<Entry>, PluginError> {
        let slot = self
            .lock_loaded()
            .entry(name.to_owned())
            .or_default()
            .clone();
        let loaded = slot
            .entry
            .get_or_try_init(|| self.load(name, &slot))
            .await
            .cloned();
        if loaded.is_err() {
            // Forget the empty slot, unless it was replaced meanwhile.
            let mut map = self.lock_loaded();
            if map.get(name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                map.remove(name);
            }
        }
        loaded
    }

    /// Loads plugin `name` into `slot`: compiles it or loads its cached
    /// artifact (recording `plugin_loaded`), then reads its record and
    /// key-value data from the log — after this process's own events are
    /// in, and with no call of the plugin under way — and gives the entry
    /// the writes the log showed while it loaded.
    async fn load(&self, name: &str, slot: &Slot) -> Result<Arc<Entry>, PluginError> {
        let found = self.inner.store.plugin(name).await?;
        let snapshot = found.ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?;
        let record = &snapshot.record;
        if let Err((asked, reason)) = usable_dirs(&record.installed, self.home()) {
            self.record_denial(&record.installed, asked, reason.clone())
                .await?;
            return Err(PluginError::GrantRefused {
                name: name.to_owned(),
                reason,
            });
        }
        let sha = record.installed.sha256().to_owned();
        let key = self.inner.files.sandbox().artifact_key().to_owned();
        let expected = record.artifacts.get(&key).cloned();
        let started = Instant::now();
        let files = self.inner.files.clone();
        let loaded = tokio::task::spawn_blocking(move || files.load(&sha, expected.as_deref()))
            .await
            .map_err(|e| StoreError::Backend(format!("load task failed: {e}")))?
            .map_err(|source| PluginError::Sandbox {
                name: name.to_owned(),
                source,
            })?;
        self.record(
            vec![SystemEvent::PluginLoaded {
                name: name.to_owned(),
                artifact: Artifact {
                    key,
                    sha256: loaded.artifact_sha256,
                },
                cached: loaded.cached,
                micros: elapsed_micros(started),
                install_id: record.installed.install_id,
            }],
            CallOptions::default(),
        )
        .await?;
        // The data a call reads is read last: wait for calls of an entry
        // this one replaces to be recorded, and for what this process
        // recorded to be in the log.
        let turn = self.kv_turn(name);
        let _turn = turn.clone().lock_owned().await;
        self.flush().await?;
        let found = self.inner.store.plugin(name).await?;
        let snapshot = found.ok_or_else(|| PluginError::NotInstalled(name.to_owned()))?;
        let entry = Arc::new(Entry::new(snapshot, loaded.plugin, turn)?);
        let mut observed = slot.observed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Observed::Loading(writes) = &mut *observed {
            for (seq, id, write, install_id) in writes.drain(..) {
                if install_id.is_none() || install_id == entry.install_id {
                    entry.kv.observe(seq, id, write);
                }
            }
        }
        *observed = Observed::Ready(entry.clone());
        Ok(entry)
    }

    /// Refuses a call whose plugin's directories are no longer usable as
    /// granted, recording the denial.
    async fn refuse_unusable_dirs(&self, installed: &InstalledPlugin) -> Result<(), PluginError> {
        match usable_dirs(installed, self.home()) {
            Ok(()) => Ok(()),
            Err((asked, reason)) => {
                self.record_denial(installed, asked, reason.clone()).await?;
                Err(PluginError::GrantRefused {
                    name: installed.name().to_owned(),
                    reason,
                })
            }
        }
    }

    /// Records that `installed` was refused `asked`, for `reason`, outside
    /// any call.
    async fn record_denial(
        &self,
        installed: &InstalledPlugin,
        asked: String,
        reason: String,
    ) -> Result<(), StoreError> {
        self.record(
            vec![SystemEvent::PluginPermissionDenied {
                name: installed.name().to_owned(),
                call_id: None,
                asked,
                reason,
                install_id: installed.install_id,
            }],
            CallOptions::default(),
        )
        .await
    }

    /// Refuses a grant of a directory that holds the home, or lies in it:
    /// a plugin must never see or change the log it is recorded in.
    fn check_dirs_keep_out_of_home(&self, name: &str, grant: &Grant) -> Result<(), PluginError> {
        for d in &grant.dirs {
            if let Some(reason) = overlaps_home(&d.path, self.home()) {
                return Err(PluginError::GrantRefused {
                    name: name.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The lion home this manager's files are in (the folder above them).
    fn home(&self) -> Option<&Path> {
        self.inner.files.dir().parent()
    }

    /// Plugin `name`'s key-value turn, shared by every load of it.
    fn kv_turn(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .kv_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Takes note of an event of the log (the kernel passes every event it
    /// follows, after [`follow_log`](Self::follow_log)): a plugin
    /// installed, granted, removed or quarantined is reloaded on its next
    /// call, and key-value writes reach its loaded view.
    pub async fn observe(&self, record: &EventEnvelope, event: &SystemEvent) {
        match event {
            SystemEvent::PluginInstalled { .. }
            | SystemEvent::PluginGranted { .. }
            | SystemEvent::PluginRemoved { .. }
            | SystemEvent::PluginQuarantined { .. } => {
                if let Some(name) = event.plugin_name() {
                    self.unload(name).await;
                }
            }
            SystemEvent::PluginKvSet {
                name,
                key,
                value,
                install_id,
            } => {
                let Some(slot) = self.lock_loaded().get(name).cloned() else {
                    return;
                };
                let write = (key.clone(), value.clone());
                let mut observed = slot.observed.lock().unwrap_or_else(PoisonError::into_inner);
                match &mut *observed {
                    Observed::Loading(writes) => {
                        writes.push((record.seq, record.event_id, write, *install_id));
                    }
                    Observed::Ready(entry) => {
                        if install_id.is_none() || *install_id == entry.install_id {
                            entry.kv.observe(record.seq, record.event_id, write);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Waits until every event recorded so far is committed (the outcomes
    /// of cancelled calls included); the first background append error, if
    /// any.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.record_unfinished().await?;
        self.inner.recorder.flush().await
    }

    /// Drops this handle after recording what the manager's calls left to
    /// record: it waits for the tasks recording calls' outcomes, records
    /// the outcomes of cancelled calls and waits until what was recorded is
    /// appended. If this was the manager's last handle, the background
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

    /// Records the outcomes of calls dropped before they ended.
    async fn record_unfinished(&self) -> Result<(), StoreError> {
        let _recording = self.inner.recording_unfinished.lock().await;
        let events = std::mem::take(
            &mut *self
                .inner
                .unfinished
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if events.is_empty() {
            return Ok(());
        }
        self.inner.recorder.record(events).await
    }

    /// Appends `events` and waits for the commit, whatever the durability.
    async fn append_now(&self, events: Vec<SystemEvent>) -> Result<(), StoreError> {
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
    async fn record(
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

    fn new_event(&self, event: SystemEvent, options: CallOptions) -> NewEvent {
        let correlation = options.correlation_id.unwrap_or(self.inner.correlation_id);
        let mut new = NewEvent::new(event, correlation);
        new.causation_id = options.causation_id;
        new
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call in flight: if it is dropped before it ends (its task cancelled,
/// its caller interrupted), its outcome is recorded as `cancelled`, so no
/// `plugin_invoked` is left without one.
struct Unfinished<'a> {
    manager: &'a PluginManager,
    name: &'a str,
    call_id: Uuid,
    install_id: Option<Uuid>,
    options: CallOptions,
    started: Instant,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let event = self.manager.new_event(
            SystemEvent::PluginFailed {
                name: self.name.to_owned(),
                call_id: self.call_id,
                failure: CallFailure::new(
                    FailureKind::Cancelled,
                    "the call was cancelled before it ended",
                ),
                micros: elapsed_micros(self.started),
                install_id: self.install_id,
            },
            self.options,
        );
        self.manager
            .inner
            .unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        // Recorded soon by a task of its own, or by the next flush or close.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let manager = self.manager.clone();
            self.manager.inner.recording.spawn_on(
                async move {
                    if let Err(e) = manager.record_unfinished().await {
                        tracing::error!(error = %e, "recording a cancelled plugin call failed");
                    }
                },
                &runtime,
            );
        }
    }
}

/// Checks that a plugin's directory grants can be used as recorded: their
/// host paths named by the operator (installs recorded before lion asked
/// for that must be re-granted), and each still the directory it was,
/// symbolic links resolved. On refusal: what was asked, and why.
fn usable_dirs(installed: &InstalledPlugin, home: Option<&Path>) -> Result<(), (String, String)> {
    let dirs = &installed.grant.dirs;
    let describe = |d: &super::manifest::DirPermission| {
        format!("directory {} = {}", d.guest, d.path.display())
    };
    if !dirs.is_empty() && !installed.dirs_named {
        let asked: Vec<String> = dirs.iter().map(describe).collect();
        return Err((
            asked.join(", "),
            format!(
                "its directory grant ({}) was recorded before lion asked operators to name \
                 granted host paths; check the paths and re-grant them: {}",
                asked.join(", "),
                regrant_command(installed)
            ),
        ));
    }
    for d in dirs {
        if let Some(reason) = overlaps_home(&d.path, home) {
            return Err((describe(d), reason));
        }
        match d.path.canonicalize() {
            Ok(now) if now == d.path && now.is_dir() => {}
            Ok(now) => {
                return Err((
                    describe(d),
                    format!(
                        "the granted directory {} now resolves to {}; re-grant it: {}",
                        d.path.display(),
                        now.display(),
                        regrant_command(installed)
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    describe(d),
                    format!("the granted directory {}: {e}", d.path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Why granting `dir` would expose the lion `home` (the directory holds
/// the home or lies inside it), if it would.
fn overlaps_home(dir: &Path, home: Option<&Path>) -> Option<String> {
    let home = home?;
    let home = match home.canonicalize() {
        Ok(home) => home,
        // Fail closed: a grant is refused when the home it must keep out
        // of cannot be found.
        Err(e) => {
            return Some(format!(
                "the lion home {} cannot be resolved ({e}), so no directory can be checked \
                 against it",
                home.display()
            ));
        }
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    (home.starts_with(&dir) || dir.starts_with(&home)).then(|| {
        format!(
            "the directory {} {} the lion home {}: a plugin may not see the log it is \
             recorded in",
            dir.display(),
            if dir.starts_with(&home) {
                "lies inside"
            } else {
                "holds"
            },
            home.display()
        )
    })
}

/// The `lion plugin grant` command that grants a plugin what it holds now,
/// each directory's host path named.
fn regrant_command(installed: &InstalledPlugin) -> String {
    let grant = &installed.grant;
    let mut command = format!("lion plugin grant {}", installed.name());
    for d in &grant.dirs {
        let ro = if d.mode == DirAccess::ReadOnly {
            ":ro"
        } else {
            ""
        };
        command.push_str(&format!(
            " --grant dir:{}={}{ro}",
            d.guest,
            d.path.display()
        ));
    }
    for i in &grant.interfaces {
        command.push_str(&format!(" --grant interface:{}", i.as_str()));
    }
    for h in &grant.hosts {
        command.push_str(&format!(" --grant host:{h}"));
    }
    for v in &grant.env {
        command.push_str(&format!(" --grant env:{v}"));
    }
    command
}

fn elapsed_micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
