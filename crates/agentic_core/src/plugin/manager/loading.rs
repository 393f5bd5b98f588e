//! Loading plugins: each name has a load slot, filled once by the first
//! call that needs it (a compile can take a second) while calls to other
//! plugins go on; and what the followed log shows reaching loaded plugins —
//! a plugin installed, granted, removed or quarantined is reloaded on its
//! next call, and key-value writes reach its view, those seen while it
//! loaded included.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::OnceCell;
use uuid::Uuid;

use super::dirs::usable_dirs;
use super::{CallOptions, PluginManager, elapsed_micros};
use crate::event::{EventEnvelope, SystemEvent};
use crate::plugin::LoadedPlugin;
use crate::plugin::PluginError;
use crate::plugin::kv::KvWrite;
use crate::plugin::loaded::Entry;
use crate::plugin::record::{Artifact, InstalledPlugin};
use crate::store::StoreError;

/// A plugin's load slot: filled once by the first call that needs it,
/// while calls to other plugins go on.
#[derive(Default)]
pub(super) struct Slot {
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

impl PluginManager {
    /// Drops a loaded plugin from memory; its next call loads it again
    /// (from the cache). Returns whether it was loaded.
    pub async fn unload(&self, name: &str) -> bool {
        self.lock_loaded()
            .remove(name)
            .is_some_and(|slot| slot.entry.initialized())
    }

    /// The loaded plugin `name`, loading it first if needed. Only the slot
    /// lookup holds the manager's lock; the load itself (maybe a compile)
    /// holds up only calls to the same plugin.
    pub(super) async fn entry(&self, name: &str) -> Result<Arc<Entry>, PluginError> {
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
        let snapshot = self.recorded(name).await?;
        let record = &snapshot.record;
        if let Err((asked, reason)) = usable_dirs(&record.installed, self.home()) {
            self.record_denial(&record.installed, asked, reason.clone())
                .await?;
            return Err(PluginError::GrantRefused {
                name: name.to_owned(),
                reason,
            });
        }
        let plugin = if record.installed.is_server() {
            self.start_server(&record.installed).await?
        } else {
            self.load_component(name, &record.installed, &record.artifacts)
                .await?
        };
        // The data a call reads is read last: wait for calls of an entry
        // this one replaces to be recorded, and for what this process
        // recorded to be in the log.
        let turn = self.kv_turn(name);
        let _turn = turn.clone().lock_owned().await;
        self.flush().await?;
        let snapshot = self.recorded(name).await?;
        let entry = Arc::new(Entry::new(snapshot, plugin, turn)?);
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

    /// Loads WebAssembly plugin `installed`: its cached artifact when that
    /// matches the hash the log recorded (`artifacts`), else a fresh
    /// compile; records `plugin_loaded`.
    async fn load_component(
        &self,
        name: &str,
        installed: &InstalledPlugin,
        artifacts: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn LoadedPlugin>, PluginError> {
        let sha = installed.sha256().to_owned();
        if let Some(blobs) = self.inner.store.blobs() {
            self.inner.files.fetch(&sha, blobs).await?;
        }
        let key = self.inner.files.sandbox().artifact_key().to_owned();
        let expected = artifacts.get(&key).cloned();
        let started = Instant::now();
        let files = self.inner.files.clone();
        let loaded = tokio::task::spawn_blocking(move || files.load(&sha, expected.as_deref()))
            .await
            .map_err(|e| StoreError::Backend(format!("load task failed: {e}")))?
            .map_err(|source| PluginError::Sandbox {
                name: name.to_owned(),
                error: source,
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
                install_id: installed.install_id,
            }],
            CallOptions::default(),
        )
        .await?;
        Ok(loaded.plugin)
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
            | SystemEvent::PluginApproved { .. }
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

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
