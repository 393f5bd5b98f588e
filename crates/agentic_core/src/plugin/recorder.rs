//! [`Recorder`]: how the plugin manager appends its events — at once
//! (durable: each caller waits for its commit) or through one background
//! appender that batches whatever is queued into each append, in order
//! (async: calls do not wait on the disk).
//!
//! The background appender lingers [`ASYNC_LINGER`] after the first event
//! of a batch before it appends, so the calls of those moments share one
//! commit (each commit is an `fdatasync`): on two cores, a commit per few
//! calls competed with the calls themselves for the CPU, and made a warm
//! server call through the manager 1.3x the bare call instead of 1.15x
//! (`lion bench plugins`). A flush or close cuts the linger short, and so
//! does a queue of [`ENOUGH_TO_APPEND`] record calls: under load the batches
//! are large without waiting, and a writer left idle would only cap the
//! throughput.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::event::NewEvent;
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::task::Durability;

/// Events queued for the background appender before callers wait.
const ASYNC_QUEUE: usize = 1024;
/// Record calls queued that end the appender's linger at once: a batch
/// this large already spreads its commit's cost thin.
const ENOUGH_TO_APPEND: usize = ASYNC_QUEUE / 4;
/// How long the background appender waits after the first event of a
/// batch for more to join it: the most a recorded event waits before its
/// commit begins.
const ASYNC_LINGER: Duration = Duration::from_millis(5);

/// Appends events with a durability: at once, or through one background
/// appender that batches whatever is queued into each append, in order.
pub(super) struct Recorder {
    store: Arc<dyn EventStore>,
    queue: Option<mpsc::Sender<Queued>>,
    /// Ends the appender's linger at once (a flush or close is waiting, or
    /// the queue is long enough).
    hurry: Arc<Notify>,
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
        let hurry = Arc::new(Notify::new());
        let (queue, appender) = match durability {
            Durability::Durable => (None, None),
            Durability::Async | Durability::Ephemeral => {
                let (tx, rx) = mpsc::channel(ASYNC_QUEUE);
                let appender = tokio::spawn(Self::append_queued(store.clone(), rx, hurry.clone()));
                (Some(tx), Some(appender))
            }
        };
        Self {
            store,
            queue,
            hurry,
            appender,
        }
    }

    /// Closes the queue and waits for the background appender to append
    /// what is in it and stop.
    pub(super) async fn close(self) {
        drop(self.queue);
        self.hurry.notify_one();
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
            Some(queue) => {
                queue
                    .send(Queued::Events(events))
                    .await
                    .map_err(|_| StoreError::Backend("the plugin event appender stopped".into()))?;
                if queue.max_capacity() - queue.capacity() >= ENOUGH_TO_APPEND {
                    self.hurry.notify_one();
                }
                Ok(())
            }
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
        self.hurry.notify_one();
        rx.await
            .map_err(|_| StoreError::Backend("the plugin event appender stopped".into()))?
    }

    /// The background appender: appends everything queued since its last
    /// append in one batch, after lingering [`ASYNC_LINGER`] (or until
    /// `hurry`) from the batch's first event. If the store refuses the batch, each record
    /// call's events are appended on their own, so one refused call (a
    /// plugin removed meanwhile) loses no other call's events. A failure is
    /// logged, and reported to the flushes waiting in that round (or the
    /// next flush), once.
    async fn append_queued(
        store: Arc<dyn EventStore>,
        mut rx: mpsc::Receiver<Queued>,
        hurry: Arc<Notify>,
    ) {
        let mut failed: Option<StoreError> = None;
        let mut items: Vec<Vec<NewEvent>> = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            if matches!(first, Queued::Events(_)) {
                tokio::select! {
                    () = tokio::time::sleep(ASYNC_LINGER) => {}
                    () = hurry.notified() => {}
                }
            }
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
