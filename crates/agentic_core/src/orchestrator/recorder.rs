//! Records one task's events with its durability, in order: durable ones
//! are appended and published once committed, async ones published at once
//! and appended in the background (at most [`TASK_ASYNC_APPENDS`] waiting),
//! ephemeral ones only published.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::handle::Inner;
use super::{LiveEvent, OrchestratorError};
use crate::event::{NewEvent, SystemEvent};
use crate::store::{ExpectedVersion, StoreError};
use crate::task::Durability;

/// Async events of one task that may wait for the store: past this its
/// handler's next progress report (or event) waits, so a handler reporting
/// in a tight loop against a slow store cannot grow memory.
pub const TASK_ASYNC_APPENDS: usize = 256;

/// Records a task's events with its durability, in order.
pub(super) struct Recorder {
    inner: Arc<Inner>,
    task_id: Uuid,
    durability: Durability,
    /// The last async append still in flight: each waits for the one before,
    /// so the log keeps the task's events in order.
    pending: tokio::sync::Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    /// One permit per async append in flight: at most
    /// [`TASK_ASYNC_APPENDS`] wait for the store.
    in_flight: Arc<Semaphore>,
}

impl Recorder {
    /// A recorder of task `task_id`'s events, with its `durability`.
    pub(super) fn new(inner: Arc<Inner>, task_id: Uuid, durability: Durability) -> Self {
        Self {
            inner,
            task_id,
            durability,
            pending: tokio::sync::Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(TASK_ASYNC_APPENDS)),
        }
    }

    /// Records with the task's own durability.
    pub(super) async fn record(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        match self.durability {
            Durability::Durable => self.record_durable(event).await,
            Durability::Async => self.record_async(event).await,
            Durability::Ephemeral => {
                self.publish(None, event);
                Ok(())
            }
        }
    }

    /// Appends and waits for the commit, then publishes.
    pub(super) async fn record_durable(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        self.flush().await?;
        let receipt = self
            .inner
            .store
            .append(vec![self.new_event(&event)], ExpectedVersion::Any)
            .await?;
        self.publish(Some(receipt.last_seq), event);
        Ok(())
    }

    /// Publishes at once; the append follows in the background, in order.
    pub(super) async fn record_async(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        if self.durability == Durability::Ephemeral {
            self.publish(None, event);
            return Ok(());
        }
        let new = self.new_event(&event);
        self.publish(None, event);
        let store = self.inner.store.clone();
        // Waits while TASK_ASYNC_APPENDS of this task's events wait already.
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OrchestratorError::ShutDown)?;
        let mut pending = self.pending.lock().await;
        let before = pending.take();
        *pending = Some(tokio::spawn(async move {
            let _permit = permit;
            if let Some(before) = before {
                before
                    .await
                    .map_err(|e| StoreError::Backend(format!("append task failed: {e}")))??;
            }
            store
                .append(vec![new], ExpectedVersion::Any)
                .await
                .map(|_| ())
        }));
        Ok(())
    }

    /// Waits for every background append of this task.
    pub(super) async fn flush(&self) -> Result<(), OrchestratorError> {
        let last = self.pending.lock().await.take();
        if let Some(last) = last {
            last.await
                .map_err(|e| StoreError::Backend(format!("append task failed: {e}")))??;
        }
        Ok(())
    }

    /// The event to append: with the orchestrator's correlation id, caused
    /// by the task.
    fn new_event(&self, event: &SystemEvent) -> NewEvent {
        let mut new = NewEvent::new(event.clone(), self.inner.correlation_id);
        new.causation_id = Some(self.task_id);
        new
    }

    /// Sends the event to live subscribers.
    pub(super) fn publish(&self, seq: Option<u64>, event: SystemEvent) {
        // No subscriber is fine.
        let _ = self.inner.live.send(LiveEvent {
            seq,
            event,
            kernel: None,
        });
    }
}
