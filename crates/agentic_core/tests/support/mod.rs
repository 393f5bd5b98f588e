//! Test support shared by the kernel's integration tests: [`GatedStore`],
//! an in-memory store whose appends wait at a gate the test opens, to play
//! a slow (or stuck) disk without sleeping, and that can fail an append
//! on request, to play a failing one; [`start_run`], a workflow run of a
//! definition's text recorded in a store.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

#[macro_use]
mod delegate;

use std::sync::Arc;

use agentic_core::{
    AppendReceipt, ChainHead, EventEnvelope, EventStore, ExpectedVersion, NewEvent, PluginSnapshot,
    State, StoreError, Subscription,
};
use agentic_store::MemoryStore;
use tokio::sync::watch;

/// A [`MemoryStore`] whose appends wait while its gate is closed.
pub struct GatedStore {
    inner: Arc<MemoryStore>,
    open: watch::Sender<bool>,
    /// Append calls that reached the store (waiting or done).
    calls: watch::Sender<usize>,
    /// Appends still to fail (after passing the gate) before any succeeds.
    failures: std::sync::atomic::AtomicUsize,
}

impl GatedStore {
    /// A store with its gate closed: appends wait until [`open`](Self::open).
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(MemoryStore::new()),
            open: watch::channel(false).0,
            calls: watch::channel(0).0,
            failures: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A store with its gate open: appends go through at once.
    pub fn open_now() -> Arc<Self> {
        let store = Self::closed();
        store.open();
        store
    }

    /// Closes the gate: later appends wait until [`open`](Self::open).
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Makes the next `n` appends through the gate fail (a disk error)
    /// without storing anything.
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets every waiting and later append through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// The store behind the gate.
    pub fn memory(&self) -> &MemoryStore {
        &self.inner
    }

    /// Append calls that have reached the store so far.
    pub fn calls(&self) -> usize {
        *self.calls.borrow()
    }

    /// Resolves once `n` append calls have reached the store.
    pub async fn calls_reached(&self, n: usize) {
        let mut calls = self.calls.subscribe();
        calls.wait_for(|c| *c >= n).await.expect("calls");
    }

    /// Every stored event, decoded, in log order.
    pub async fn events(&self) -> Vec<agentic_core::SystemEvent> {
        self.inner
            .read_from(1, usize::MAX)
            .await
            .expect("read")
            .iter()
            .map(|e| e.decode().expect("decode"))
            .collect()
    }
}

event_store_wrapper!(GatedStore {

    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, StoreError> {
        self.calls.send_modify(|c| *c += 1);
        let mut open = self.open.subscribe();
        open.wait_for(|o| *o)
            .await
            .map_err(|_| StoreError::Closed)?;
        let failing = self.failures.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StoreError::Backend(
                "disk I/O error (played by the test)".into(),
            ));
        }
        self.inner.append(events, expected).await
    }

    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_from(from, limit).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.inner.read_stream(stream, from, limit).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.inner.head().await
    }

    async fn wait_for_events(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.wait_for_events(seq).await
    }

    async fn projected_state(&self) -> Result<State, StoreError> {
        self.inner.projected_state().await
    }

    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        self.inner.plugin(name).await
    }

    fn subscribe(self: Arc<Self>, from: u64) -> Subscription {
        Subscription::new(self, from)
    }
});

/// Records the start of a run of the workflow definition `text` (one file,
/// no input) in `store`; the run's id.
pub async fn start_run(store: &dyn EventStore, text: &str) -> uuid::Uuid {
    use agentic_core::workflow::definition::{Definition, Sources};
    let sources = Sources {
        main: "flow.toml".into(),
        files: [("flow.toml".to_owned(), text.to_owned())].into(),
    };
    let definition = Definition::from_sources(sources).expect("a definition");
    let started = agentic_core::workflow::run::Run::start(
        &definition,
        serde_json::json!({}),
        chrono::Utc::now(),
        None,
    )
    .expect("input");
    let id = uuid::Uuid::now_v7();
    store
        .append(
            agentic_core::workflow::log::recorded(id, [started], id),
            ExpectedVersion::NoStream,
        )
        .await
        .expect("start");
    id
}
