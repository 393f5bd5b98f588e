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
    /// append in one batch. If the store refuses the batch, each record
    /// call's events are appended on their own, so one refused call (a
    /// plugin removed meanwhile) loses no other call's events. A failure is
    /// logged, and reported to the flushes waiting in that round (or the
    /// next flush), once.
    async fn append_queued(store: Arc<dyn EventStore>, mut rx: mpsc::Receiver<Queued>) {
        let mut failed: Option<StoreError> = None;
        let mut items: Vec<Vec<NewEvent>> = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut queued = 0;
            while let Some(item) = next.take().or_else(|| rx.try_recv().ok()) {
                match item {
                    Queued::Events(events) => {
                        queued += events.len();
                        items.push(events);
                    }
                    Queued::Flush(reply) => flushes.push(reply),
                }
                if queued >= ASYNC_QUEUE {
                    break;
                }
            }
            if let Err(e) = Self::append_items(&store, std::mem::take(&mut items)).await {
                failed.get_or_insert(e);
            }
            if flushes.is_empty() {
                continue;
            }
            let outcome = failed.take();
            for reply in flushes.drain(..) {
                let _ = reply.send(match &outcome {
                    Some(e) => Err(StoreError::Backend(format!(
                        "a background append of plugin events failed: {e}"
                    ))),
                    None => Ok(()),
                });
            }
        }
    }

    /// Appends the events of several record calls: together, or, if the
    /// store refuses them together, each call's on its own. The first
    /// failure, if any.
    async fn append_items(
        store: &Arc<dyn EventStore>,
        mut items: Vec<Vec<NewEvent>>,
    ) -> Result<(), StoreError> {
        if items.len() > 1 {
            let all: Vec<NewEvent> = items.iter().flatten().cloned().collect();
            match store.append(all, ExpectedVersion::Any).await {
                Ok(_) => return Ok(()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "a batch of plugin events was refused; appending each call's on its own"
                ),
            }
        }
        let mut first = None;
        for events in items.drain(..) {
            if events.is_empty() {
                continue;
            }
            if let Err(e) = store.append(events, ExpectedVersion::Any).await {
                tracing::error!(error = %e, "appending plugin events failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
