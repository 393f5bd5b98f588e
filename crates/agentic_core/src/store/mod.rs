//! The [`EventStore`] port: the durable, append-only, hash-chained log that
//! every lion state change goes through, and [`Subscription`], which follows
//! it.
//!
//! Contract every adapter keeps:
//!
//! - sequence numbers start at 1 and are **gapless and in commit order**, so a
//!   reader that has seen seq N has seen everything before it;
//! - an append is all-or-nothing, and acknowledged only once durable (for
//!   durable adapters);
//! - appending an event id that is already stored is idempotent: the original
//!   positions are returned and nothing is written twice;
//! - an event the [`State`] reducer would refuse is refused, so the log always
//!   folds cleanly, and projections are updated in the same transaction;
//! - reads of the projections are point reads (one element, task, agent or
//!   plugin) and pages of lists ([`page`]): what they cost depends on what
//!   they return, not on the length of the log. Only replay's comparison
//!   loads the whole state ([`EventStore::projected_state`]).

pub mod audit;
pub mod blobs;
pub mod import;
pub mod kernels;
pub mod live;
pub mod page;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use uuid::Uuid;

use crate::chain::{ChainError, ChainHead};
use crate::element::ElementData;
use crate::event::{EventEnvelope, EventError, NewEvent, PendingEvent, SystemEvent};
use crate::plugin::PluginRecord;
use crate::state::{ApplyError, State};
use crate::task::TaskRecord;
use crate::workflow::RunRecord;
pub use page::{AgentView, Cursor, Page, TaskFilter};

/// Optimistic-concurrency expectation on the stream a batch appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's newest event must be at this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Checks the expectation against a stream's current version (0 = no stream).
    pub fn check(self, stream: &str, current: u64) -> Result<(), StoreError> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected: self,
                actual: current,
            })
        }
    }
}

/// What an acknowledged append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Sequence number of the batch's first event.
    pub first_seq: u64,
    /// Sequence number of the batch's last event.
    pub last_seq: u64,
    /// True when every event was already stored (an idempotent retry).
    pub deduplicated: bool,
}

impl AppendReceipt {
    /// The answer to a retry of a batch stored before, at `seqs`.
    pub fn already_stored(seqs: impl IntoIterator<Item = u64>) -> Self {
        let (first_seq, last_seq) = seqs
            .into_iter()
            .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        Self {
            first_seq,
            last_seq,
            deduplicated: true,
        }
    }
}

/// Errors from an event store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the version the batch expected.
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 = no stream).
        actual: u64,
    },
    /// The batch is malformed (empty, or several streams with an expected version).
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// Some but not all of the batch's event ids are already stored.
    #[error("event {0} is already stored, but the rest of its batch is not")]
    PartialDuplicate(Uuid),
    /// The reducer refuses an event of the batch.
    #[error("event refused: {0}")]
    Rejected(ApplyError),
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The stored log fails verification.
    #[error("log verification failed: {0}")]
    Chain(ChainError),
    /// Another process held the store's write lock for longer than the busy timeout.
    #[error("store {path} is locked by another process (gave up after {waited_ms} ms)")]
    Locked {
        /// The locked store.
        path: String,
        /// How long the writer waited.
        waited_ms: u64,
    },
    /// The location is not a lion store.
    #[error("{path} is not a lion store: {reason}")]
    NotAStore {
        /// The location opened.
        path: String,
        /// Why it is not one.
        reason: String,
    },
    /// The store's files are damaged.
    #[error("store {path} is damaged: {reason}")]
    Corrupt {
        /// The damaged file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file of the store could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// The storage engine reported an error not covered above.
    #[error("storage error: {0}")]
    Backend(String),
    /// The store was closed.
    #[error("event store is closed")]
    Closed,
    /// A record sealed by another store does not continue this log
    /// ([`EventStore::import`]).
    #[error("cannot import event {seq}: {reason}")]
    Import {
        /// The record's position.
        seq: u64,
        /// What does not fit.
        reason: String,
    },
    /// This kernel's lease on a shared store ran out (it was paused, or
    /// cut off from the store, for longer than its lease).
    #[error(
        "kernel {0}'s lease ran out (was it paused?): other kernels take over its attempts, so it stops"
    )]
    LeaseLost(Uuid),
}

// The messages above already include their cause, so these are plain
// conversions rather than `#[from]` (which would also report the cause as the
// error's source, and print it twice).
impl From<ApplyError> for StoreError {
    fn from(e: ApplyError) -> Self {
        StoreError::Rejected(e)
    }
}

impl From<ChainError> for StoreError {
    fn from(e: ChainError) -> Self {
        StoreError::Chain(e)
    }
}

/// Running totals of what one store instance's writer committed, readable
/// while it runs (for metrics and benchmarks).
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events committed (idempotent retries not counted).
    pub events: AtomicU64,
}

/// An installed plugin read from the projections: its record and its
/// key-value data, as of one position of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSnapshot {
    /// What was installed and granted, and what its calls did.
    pub record: PluginRecord,
    /// Its key-value data.
    pub kv: BTreeMap<String, String>,
    /// The sequence number of the last event the read reflects: every
    /// event up to it is in, none after it.
    pub as_of: u64,
}

/// The durable event log (port). See the module docs for the contract.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch atomically, once `expected` holds for its stream.
    ///
    /// The expectation is checked on the stream of the batch's first event;
    /// the others may be on other streams (a workflow run's decision and the
    /// task it submits commit together, fenced by the run's stream). An
    /// element's creation must be
    /// on its own stream, `element:<id>`, which holds nothing else
    /// ([`element_stream_rule`]).
    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, StoreError>;

    /// Appends records sealed by another store (a copy of its log)
    /// verbatim, all or nothing: each must continue this log (position,
    /// link, hash: [`import::check_sealed`]), keep its stream's versions
    /// gapless ([`import::check_stream_version`]) and pass the reducer's
    /// rules; its id must not be stored. Projections are updated as for an
    /// append. Records all stored already, each at its own position, are
    /// a retry whose acknowledgement was lost: nothing is written, and the
    /// answer is the head after the last of them. Returns the head after
    /// the records.
    async fn import(&self, records: Vec<EventEnvelope>) -> Result<ChainHead, StoreError>;

    /// Reads up to `limit` events with `seq >= from`, in order.
    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Up to `limit` events from `seq` `from` on that this instance
    /// committed lately and still holds in memory, if it holds `from`: an
    /// unbroken run, which may stop before the log's end (another process
    /// may have written after it); an empty run when `from` is just past
    /// the newest it holds. A follower's fast path, taken before
    /// [`EventStore::read_from`]; `None` sends it there. After records
    /// taken from here, a follower answered with an empty run waits
    /// without reading the log, so a store that answers so must end
    /// [`EventStore::wait_for_events`] within a bounded time even when it
    /// commits nothing itself (another process's commits are read then).
    fn recent(&self, from: u64, limit: usize) -> Option<Vec<EventEnvelope>> {
        let _ = (from, limit);
        None
    }

    /// Reads up to `limit` events of `stream` with `stream_version >= from`,
    /// in stream order.
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// The newest committed record.
    async fn head(&self) -> Result<ChainHead, StoreError>;

    /// Resolves once the log may hold events after `seq` (it may wake early;
    /// callers re-read).
    async fn wait_for_events(&self, seq: u64) -> Result<(), StoreError>;

    /// The whole state as kept by the store's projections (not re-folded),
    /// for `lion replay` to compare with a fold of the log. It grows with
    /// the home: everything else reads with the point and paged reads below.
    async fn projected_state(&self) -> Result<State, StoreError>;

    /// The element with this id, if any.
    async fn element(&self, id: Uuid) -> Result<Option<ElementData>, StoreError>;

    /// A page of elements in creation order, from `after` on; at most
    /// `limit` (at least 1) of them.
    async fn elements(&self, after: Cursor, limit: usize) -> Result<Page<ElementData>, StoreError>;

    /// The task with this id, if any.
    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;

    /// The task an idempotency key names, if any.
    async fn task_by_key(&self, key: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// A page of the tasks `filter` selects, in submission order, from
    /// `after` on; at most `limit` (at least 1) of them.
    async fn tasks(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<TaskRecord>, StoreError>;

    /// The workflow run with this id, as the projection keeps it, if any.
    async fn workflow(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError>;

    /// A page of the workflow runs `filter` selects, in the order they
    /// started, from `after` on; at most `limit` (at least 1) of them.
    async fn workflows(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<RunRecord>, StoreError>;

    /// The agent `name` with a page of its conversation: the messages after
    /// the first `after` ones, at most `limit` of them (0 for none); `None`
    /// when no agent has that name. Record and messages are read together.
    async fn agent(
        &self,
        name: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<AgentView>, StoreError>;

    /// A page of agents in the order they were first spawned, from `after`
    /// on, at most `limit` (at least 1); each without its messages (their
    /// count is given).
    async fn agents(&self, after: Cursor, limit: usize) -> Result<Page<AgentView>, StoreError>;

    /// One installed plugin and its key-value data as the projections hold
    /// them, read together with the log position they reflect; `None` when
    /// no plugin of that name is installed.
    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError>;

    /// A page of installed plugins in installation order, from `after` on;
    /// at most `limit` (at least 1) of them.
    async fn plugins(&self, after: Cursor, limit: usize) -> Result<Page<PluginRecord>, StoreError>;

    /// Follows the log from `from` on: every stored event, then new ones as
    /// they are committed.
    fn subscribe(self: Arc<Self>, from: u64) -> Subscription;

    /// The registry of kernels sharing this log, for stores several
    /// kernels can reach (`None`: one kernel per store, leased elsewhere).
    fn kernels(&self) -> Option<&dyn kernels::KernelRegistry> {
        None
    }

    /// Content-addressed files kept in the store, for stores several
    /// kernels share (`None`: each home keeps its own files).
    fn blobs(&self) -> Option<&dyn blobs::BlobStore> {
        None
    }

    /// The relay of live events between the kernels sharing this store
    /// (`None`: one kernel per store, whose live events stay on it).
    fn live_relay(&self) -> Option<&dyn live::LiveRelay> {
        None
    }

    /// What this instance's writer committed, for stores that count it.
    fn commit_counters(&self) -> Option<&CommitCounters> {
        None
    }
}

/// Events read per round trip while a subscription catches up.
const SUBSCRIPTION_BATCH: usize = 512;

/// A cursor over a store that yields every event from a sequence number on,
/// waiting for new ones at the end of the log.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    next: u64,
    buffer: VecDeque<EventEnvelope>,
    /// The last events came from [`EventStore::recent`]: once they are
    /// taken, the subscription waits without reading the store. What
    /// another process commits after them is read once the wait ends
    /// with nothing newer in memory, or when this instance's next commit
    /// does not continue the run held there.
    after_recent: bool,
}

impl Subscription {
    /// Follows `store` from sequence number `from` (1 = the whole log).
    pub fn new(store: Arc<dyn EventStore>, from: u64) -> Self {
        Self {
            store,
            next: from.max(1),
            buffer: VecDeque::new(),
            after_recent: false,
        }
    }

    /// The next event, waiting for one to be committed if need be.
    pub async fn next(&mut self) -> Result<EventEnvelope, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(e);
            }
            let (batch, in_memory) = match self.store.recent(self.next, SUBSCRIPTION_BATCH) {
                Some(batch) if !batch.is_empty() || self.after_recent => (batch, true),
                _ => (
                    self.store.read_from(self.next, SUBSCRIPTION_BATCH).await?,
                    false,
                ),
            };
            self.after_recent = in_memory && !batch.is_empty();
            match batch.last() {
                Some(last) => {
                    self.next = last.seq + 1;
                    self.buffer.extend(batch);
                }
                None => self.store.wait_for_events(self.next - 1).await?,
            }
        }
    }
}

/// Checks a batch's shape and returns the stream an expectation applies to:
/// its first event's.
///
/// An element's creation must be on the element's own stream
/// (`element:<id>`, its default), which holds nothing else: being that
/// stream's first event is what makes a second creation of the same element
/// detectable, and what finds an element from its stream.
pub fn batch_stream(events: &[NewEvent]) -> Result<&str, StoreError> {
    let first = events
        .first()
        .ok_or(StoreError::InvalidBatch("no events"))?;
    if let Some(reason) = events
        .iter()
        .find_map(|e| element_stream_rule(&e.stream, &e.event))
    {
        return Err(StoreError::InvalidBatch(reason));
    }
    Ok(&first.stream)
}

/// Checks a batch's shape ([`batch_stream`]) and encodes its events for a
/// writer to seal: what an adapter's `append` does before its writer sees
/// the batch.
pub fn encode_batch(events: Vec<NewEvent>) -> Result<Vec<PendingEvent>, StoreError> {
    batch_stream(&events)?;
    events
        .into_iter()
        .map(|e| e.encode().map_err(StoreError::from))
        .collect()
}

/// What an event on `stream` breaks of the element streams' rule, if
/// anything: an element's creation belongs on its own stream,
/// `element:<id>` (lowercase, hyphenated), which holds nothing else.
/// Appends ([`batch_stream`]) and imports keep it.
pub fn element_stream_rule(stream: &str, event: &SystemEvent) -> Option<&'static str> {
    match event {
        SystemEvent::ElementCreated { element } => {
            let mut id = Uuid::encode_buffer();
            (stream.strip_prefix("element:") != Some(element.id.hyphenated().encode_lower(&mut id)))
                .then_some("an element's creation belongs on its own stream, element:<id>")
        }
        _ => stream
            .starts_with("element:")
            .then_some("an element's stream, element:<id>, holds only its creation"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_element_is_created_only_on_its_own_stream() {
        let element = crate::ElementData::new(serde_json::Map::new(), None);
        let id = element.id;
        let mut event = NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7());
        assert_eq!(event.stream, format!("element:{id}"));
        assert!(batch_stream(std::slice::from_ref(&event)).is_ok());
        for other in [
            "elements".to_owned(),
            format!("element:{}", Uuid::now_v7()),
            format!("element:{}", id.simple()),
            format!("element:{}", id.braced()),
            format!("element:{id}").to_uppercase(),
            format!("x-element:{id}"),
        ] {
            event.stream = other;
            assert_eq!(
                batch_stream(std::slice::from_ref(&event)),
                Err(StoreError::InvalidBatch(
                    "an element's creation belongs on its own stream, element:<id>"
                )),
                "{}",
                event.stream
            );
        }
    }

    #[test]
    fn an_element_stream_holds_only_its_creation() {
        let element = crate::ElementData::new(serde_json::Map::new(), None);
        let id = element.id;
        let mut event = NewEvent::new(
            SystemEvent::TaskCancelled {
                task_id: Uuid::now_v7(),
                reason: "x".into(),
            },
            Uuid::now_v7(),
        );
        assert!(batch_stream(std::slice::from_ref(&event)).is_ok());
        event.stream = format!("element:{id}");
        assert_eq!(
            batch_stream(std::slice::from_ref(&event)),
            Err(StoreError::InvalidBatch(
                "an element's stream, element:<id>, holds only its creation"
            ))
        );
    }

    #[test]
    fn expectations() {
        assert!(ExpectedVersion::Any.check("s", 7).is_ok());
        assert!(ExpectedVersion::NoStream.check("s", 0).is_ok());
        assert!(ExpectedVersion::NoStream.check("s", 1).is_err());
        assert!(ExpectedVersion::Exact(3).check("s", 3).is_ok());
        assert_eq!(
            ExpectedVersion::Exact(3).check("s", 4),
            Err(StoreError::WrongExpectedVersion {
                stream: "s".into(),
                expected: ExpectedVersion::Exact(3),
                actual: 4
            })
        );
    }
}
