//! [`Recorder`]: how the plugin manager appends its events — at once
//! (durable: each caller waits for its commit) or through one background
//! appender that batches whatever is queued into each append, in order
//! (async: calls do not wait on the disk).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event::NewEvent;
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::task::Durability;

/// Events queued for the background appender before callers wait.
const ASYNC_QUEUE: usize = 1024;

/// Appends events with a durability: at once, or through one background
/// appender that batches whatever is queued into each append, in order.
pub(super) struct Recorder {
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
    /// A recorder appending to `store` with `durability` (`Ephemeral` is
    /// treated as `Async`: plugin calls are always logged).
    pub(super) fn new(store: Arc<dyn EventStore>, durability: Durability) -> Self {
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
    pub(super) async fn close(self) {
        drop(self.queue);
        if let Some(appender) = self.appender {
            let _ = appender.await;
        }
    }

    /// Appends `events` (durable), or queues them for the background
    /// appender (async).
    pub(super) async fn record(&self, events: Vec<NewEvent>) -> Result<(), StoreError> {
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

    /// Waits until everything recorded so far is committed; the first
    /// background append error, if any.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
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
