//! The call pipeline as the manager runs it: refuse a quarantined plugin
//! or unusable directories, record `plugin_invoked`, run the call through
//! the loaded plugin's [`Entry`], then record its outcome — denials,
//! key-value writes, emitted events, output or failure, and a quarantine
//! when earned — to the end even if the caller goes. A call dropped before
//! it ends is recorded as cancelled.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use uuid::Uuid;

use super::run_to_end::RunToEnd;
use super::{PluginManager, elapsed_micros};
use crate::event::{NewEvent, SystemEvent};
use crate::plugin::PluginError;
use crate::plugin::kv::KvWrite;
use crate::plugin::loaded::{CallResult, Entry};
use crate::plugin::record::{CallFailure, FailureKind};
use crate::plugin::sandbox::Effects;
use crate::store::StoreError;

/// Causal metadata of one call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// The request the call belongs to (the manager's own id when `None`).
    pub correlation_id: Option<Uuid>,
    /// What caused it (a task, an agent's message...).
    pub causation_id: Option<Uuid>,
}

impl PluginManager {
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
        // Recorded in the caller's task; a caller gone now (a cancelled
        // task) hands the rest to a task of its own, so it cannot cut the
        // recording short.
        let manager = self.clone();
        RunToEnd::new(
            async move {
                manager
                    .finish(&entry, call_id, result, started, options)
                    .await
            },
            self.inner.recording.clone(),
        )
        .await
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
                if let Some(failures) = self.quarantines(entry, &failure) {
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
                Err(PluginError::Call { name, failure })
            }
        };
        let recorded = self.record_call(entry, events, kv_writes).await;
        drop(turn);
        recorded?;
        result
    }

    /// Records a call's events and gives its key-value writes to the view.
    /// The next call reads these writes. A process that follows the log
    /// expects them back from it, so it marks them pending before they can
    /// show there; one that does not folds them in once recorded.
    async fn record_call(
        &self,
        entry: &Entry,
        events: Vec<NewEvent>,
        kv_writes: Vec<(Uuid, KvWrite)>,
    ) -> Result<(), StoreError> {
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
        recorded
    }

    /// Counts a failed call towards quarantine: the failures in a row, when
    /// this one quarantines the plugin (at most once per load).
    fn quarantines(&self, entry: &Entry, failure: &CallFailure) -> Option<u32> {
        if !failure.kind.counts_towards_quarantine() {
            return None;
        }
        let failures = entry.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        (failures >= self.inner.quarantine_after.load(Ordering::Relaxed)
            && !entry.quarantined.swap(true, Ordering::AcqRel))
        .then_some(failures)
    }

    /// Records the outcomes of calls dropped before they ended.
    pub(super) async fn record_unfinished(&self) -> Result<(), StoreError> {
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
