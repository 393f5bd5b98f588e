//! The relay's [`Appender`]: appends a completion's events in order on a
//! task of its own, taking everything queued in one batch.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::NewEvent;
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Events a relay may have waiting for its appender. Past this the relay
/// coalesces harder (one growing delta) instead of queueing, so a slow
/// store bounds memory without stalling the live stream; the appender
/// takes everything waiting in one batch, so a few slots suffice.
pub const RELAY_APPEND_QUEUE: usize = 16;

/// Appends events in order on a task of its own, so the relay never waits
/// for a commit until the end. Its queue holds [`RELAY_APPEND_QUEUE`]
/// events.
pub(super) struct Appender {
    tx: mpsc::Sender<NewEvent>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Appender {
    /// Starts the appender's task, appending to `store`.
    pub(super) fn start(store: Arc<dyn EventStore>) -> Self {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(RELAY_APPEND_QUEUE);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                store.append(batch, ExpectedVersion::Any).await?;
            }
            Ok(())
        });
        Self { tx, task }
    }

    /// Room for one more event, if the queue has it now.
    pub(super) fn slot(&self) -> Option<mpsc::Permit<'_, NewEvent>> {
        // Closed only when the task stopped on an append error, which
        // `finish` reports.
        self.tx.try_reserve().ok()
    }

    /// Queues an event, waiting for room.
    pub(super) async fn send(&self, event: NewEvent) {
        // The task only stops early on an append error, which `finish` reports.
        let _ = self.tx.send(event).await;
    }

    /// Waits until everything sent is committed.
    pub(super) async fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| StoreError::Backend(format!("the LLM event appender failed: {e}")))?
    }
}
