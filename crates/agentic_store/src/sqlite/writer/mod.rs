//! The group-commit writer: one thread per process owns the write connection
//! and commits, in one transaction (one fsync), every append that arrived
//! while the previous commit was being made durable — writing requests into
//! the open transaction as they arrive.
//!
//! The common requests (no expected version; element creations, or events
//! with no projection on a stream the writer knows) are sealed into the chain
//! at once and written [`BATCH_ROWS`] rows to a statement, whenever the queue
//! is momentarily empty; the others are written one row at a time.
//!
//! A request that is refused (wrong expected version, refused event) does
//! not fail its group: refusals found before the request wrote anything just
//! skip it; one found part-way (rare: a duplicate event id or element) rolls
//! the transaction back and the group is written again without it. A batched
//! statement that hits a constraint cannot say which request broke it: the
//! group is rolled back and written again one row at a time, which finds it.
//!
//! Acknowledgements go out only after the commit returns, from a task on the
//! appenders' own runtime (see [`AckBatch`]).
//!
//! Several processes may append to the same
//! home: each commit takes SQLite's write lock (`BEGIN IMMEDIATE`, waiting up
//! to the busy timeout) and reads the chain head inside the transaction, so
//! processes take turns and the chain never forks.
//!
//! This module runs the loop (gathering a group, committing it, retrying,
//! acknowledging); [`group`] writes one group's transaction (each request's
//! checks, rows and projections) and [`rows`] holds the multi-row `INSERT`
//! statements.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use agentic_core::store::CommitCounters;
use std::time::{Duration, Instant};

use agentic_core::{
    AppendReceipt, ChainHead, EventEnvelope, ExpectedVersion, PendingEvent, StoreError,
};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug_span;

mod group;
mod import;
mod rows;

use group::{Group, Refusal};
pub(crate) use group::{ProjectError, is_unique_violation};
pub(crate) use rows::STATEMENT_CACHE;
use rows::{BATCH_ROWS, Statements};

use super::checkpoint::Recycler;
use super::head_file::Recording;
use super::reads::read_head;
use super::schema::DbFile;
use super::tail::Tail;

/// A message to the writer thread.
pub(crate) enum Request {
    /// Append a batch of events.
    Append {
        /// The encoded events, all-or-nothing.
        events: Vec<PendingEvent>,
        /// Expectation on the batch's stream.
        expected: ExpectedVersion,
        /// Where the outcome goes once durable, with the events given back
        /// (so they are freed by the appender, beside its other memory).
        reply: Reply,
        /// The appender's async runtime, which the acknowledgements are sent from.
        runtime: Option<tokio::runtime::Handle>,
    },
    /// Report the write connection's `PRAGMA synchronous` level.
    Synchronous(oneshot::Sender<Result<i64, StoreError>>),
    /// Write records sealed by another store, verbatim.
    Import {
        /// The records, in order, continuing the log.
        records: Vec<EventEnvelope>,
        /// Where the new head goes once durable.
        reply: oneshot::Sender<Result<ChainHead, StoreError>>,
    },
}

/// An import that arrived while a group was being gathered: written once
/// the group is committed.
pub(crate) type DeferredImport = (
    Vec<EventEnvelope>,
    oneshot::Sender<Result<ChainHead, StoreError>>,
);

/// State owned by the writer thread.
pub(crate) struct Writer {
    /// The one write connection of this process.
    pub conn: Connection,
    /// The database file, for error messages.
    pub db: DbFile,
    /// Records each committed head in the home's `HEAD` file.
    pub head_recorder: std::sync::mpsc::Sender<Recording>,
    /// Restarts the WAL from the writer's side once the checkpointer has
    /// copied most of it (see [`Recycler`]).
    pub recycler: Recycler,
    /// Publishes the newest committed head to waiting readers in this process.
    pub head_tx: watch::Sender<ChainHead>,
    /// Most events committed in one transaction; the rest wait for the next.
    pub max_events_per_commit: usize,
    /// Counters of what this writer committed.
    pub stats: Arc<CommitCounters>,
    /// Known stream versions. Exact while no other process has written since
    /// this writer's last commit (checked at the start of each transaction).
    pub streams: HashMap<String, u64>,
    /// The head this writer last committed, to tell whether another process
    /// wrote since.
    pub last_head: Option<ChainHead>,
    /// Imports waiting for the group being written.
    pub deferred: Vec<DeferredImport>,
    /// Where each commit's records go for followers in this process.
    pub tail: Arc<Tail>,
}

/// The channel an append's outcome goes back on, with its events.
pub(crate) type Reply = oneshot::Sender<(Result<AppendReceipt, StoreError>, Vec<PendingEvent>)>;
/// Most stream versions the writer remembers; past this the cache starts over.
const STREAM_CACHE_MAX: usize = 65_536;

/// The previous group must have had this many requests for the writer to
/// linger for more (fewer means light load: commit at once).
const LINGER_MIN_GROUP: usize = 8;
/// Longest the writer lingers for appenders before committing.
const LINGER_MAX: Duration = Duration::from_millis(2);
/// Lingering stops when no request arrived for this long.
const LINGER_IDLE: Duration = Duration::from_micros(250);
/// How long the writer sleeps between looks at the queue while lingering.
const LINGER_POLL: Duration = Duration::from_micros(30);

impl Writer {
    /// Serves requests until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut last_group = 0;
        while let Some(first) = rx.blocking_recv() {
            let mut requests = Vec::new();
            match first {
                Request::Append {
                    events,
                    expected,
                    reply,
                    runtime,
                } => requests.push(Pending::new(events, expected, reply, runtime)),
                Request::Synchronous(reply) => {
                    let _ = reply.send(synchronous(&self.conn, &self.db));
                    continue;
                }
                Request::Import { records, reply } => {
                    self.deferred.push((records, reply));
                }
            }
            if !requests.is_empty() {
                let gathering = Gathering::new(last_group);
                let result = self.write(&mut rx, &mut requests, gathering);
                last_group = requests.len();
                self.finish(requests, result);
            }
            for (records, reply) in std::mem::take(&mut self.deferred) {
                let _ = reply.send(self.import(records));
            }
            self.recycler.recycle(&self.conn, &self.db);
        }
    }

    /// Answers a group's requests once its transaction is over.
    fn finish(&mut self, requests: Vec<Pending>, result: Result<ChainHead, StoreError>) {
        let span = debug_span!("commit", requests = requests.len());
        let _enter = span.enter();
        match result {
            Ok(head) => {
                let before = self.head_tx.borrow().seq;
                let written: u64 = requests
                    .iter()
                    .filter_map(|r| match &r.outcome {
                        Some(Ok(receipt)) if !receipt.deduplicated => {
                            Some(receipt.last_seq - receipt.first_seq + 1)
                        }
                        _ => None,
                    })
                    .sum();
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.events.fetch_add(written, Ordering::Relaxed);
                // The runtime of an appender still waiting is being driven.
                let runtime = requests
                    .iter()
                    .find(|r| !r.reply.is_closed())
                    .and_then(|r| r.runtime.clone());
                let batch = AckBatch(
                    requests
                        .into_iter()
                        .map(|r| {
                            let outcome = r.outcome.unwrap_or(Err(StoreError::Closed));
                            (r.reply, outcome, r.events)
                        })
                        .collect(),
                );
                // The tail has the records before anyone hears of them.
                self.tail
                    .push(batch.0.iter().flat_map(|(_, outcome, events)| {
                        let stored = matches!(outcome, Ok(r) if !r.deduplicated);
                        events
                            .iter()
                            .filter(move |_| stored)
                            .map(|e| e.record.clone())
                    }));
                // The head goes to the recorder before the acknowledgements,
                // so that a flush asked for after one finds it there.
                if head.seq > before {
                    self.head_tx.send_replace(head);
                    // The recorder outlives the writer; if it died, HEAD lags.
                    let _ = self.head_recorder.send(Recording::Head(head));
                }
                batch.send_from(runtime);
            }
            Err(e) => {
                for r in requests {
                    let _ = r.reply.send((Err(e.clone()), r.events));
                }
            }
        }
    }

    /// Writes one group in one transaction and returns the new head; each
    /// request's outcome is left in it, and an error fails the whole group.
    ///
    /// Requests are written as they arrive, so the transaction fills while
    /// the appenders released by the previous commit are still coming back,
    /// and is committed once the queue goes quiet (see [`Gathering`]).
    fn write(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        requests: &mut Vec<Pending>,
        gathering: Gathering,
    ) -> Result<ChainHead, StoreError> {
        let result = self.try_write(rx, requests, gathering);
        match result {
            Ok(head) => self.last_head = Some(head),
            Err(_) => self.forget_streams(),
        }
        result
    }

    /// Drops the stream-version cache (after a rollback, or when unsure).
    fn forget_streams(&mut self) {
        self.streams.clear();
        self.last_head = None;
    }

    fn try_write(
        &mut self,
        rx: &mut mpsc::Receiver<Request>,
        requests: &mut Vec<Pending>,
        mut gathering: Gathering,
    ) -> Result<ChainHead, StoreError> {
        let db = self.db.clone();
        let max_events = self.max_events_per_commit;
        // After a batched insert failed, the group is written one row at a time.
        let mut careful = false;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| db.err(e))?;
            let head = read_head(&tx, &db)?;
            if self.last_head != Some(head) || self.streams.len() > STREAM_CACHE_MAX {
                self.streams.clear(); // another process wrote, or the cache is full
            }
            let mut group = Group {
                statements: Statements::prepare(&tx).map_err(|e| db.err(e))?,
                head,
                streams: &mut self.streams,
                recorded_at: EventEnvelope::now(),
                tx: &tx,
                db: &db,
                buffered: Vec::new(),
            };
            let mut written = 0;
            let mut events = 0;
            let mut rewrite = false;
            'gather: loop {
                while written < requests.len() {
                    let index = written;
                    written += 1;
                    if matches!(requests[index].outcome, Some(Err(_))) {
                        continue; // refused in an earlier attempt
                    }
                    events += requests[index].events.len();
                    let batched = !careful && group.can_batch(&requests[index]);
                    let mut r = Ok(());
                    if !batched || group.buffered.len() >= BATCH_ROWS {
                        // The row-at-a-time path reads the log: write what is buffered first.
                        r = group.flush(requests);
                    }
                    let r = r.and_then(|()| {
                        let request = &mut requests[index];
                        if batched {
                            Ok(group.append_batched(index, request))
                        } else {
                            group.append(&mut request.events, request.expected)
                        }
                    });
                    let request = &mut requests[index];
                    match r {
                        Ok(receipt) => request.outcome = Some(Ok(receipt)),
                        Err(Refusal::Before(e)) => request.outcome = Some(Err(e)),
                        Err(Refusal::PartWay(e)) => {
                            request.outcome = Some(Err(e));
                            rewrite = true;
                            break 'gather;
                        }
                        Err(Refusal::Rewrite) => {
                            rewrite = true;
                            careful = true;
                            break 'gather;
                        }
                        Err(Refusal::Fatal(e)) => return Err(e),
                    }
                }
                if events >= max_events {
                    break;
                }
                // Nothing waiting: write the batch while the appenders catch up.
                if !group.buffered.is_empty() && rx.is_empty() && group.flush_fails(requests)? {
                    (rewrite, careful) = (true, true);
                    break 'gather;
                }
                match gathering.next(rx, requests.len()) {
                    Some(Request::Append {
                        events,
                        expected,
                        reply,
                        runtime,
                    }) => requests.push(Pending::new(events, expected, reply, runtime)),
                    Some(Request::Synchronous(reply)) => {
                        let _ = reply.send(synchronous(&tx, &db));
                    }
                    Some(Request::Import { records, reply }) => {
                        self.deferred.push((records, reply));
                        break;
                    }
                    None => break,
                }
            }
            if !rewrite && group.flush_fails(requests)? {
                (rewrite, careful) = (true, true);
            }
            let head = group.head;
            drop(group); // releases the statements, which borrow the transaction
            if rewrite {
                // Roll back and write the group again without the refused
                // request (or row by row, to find it); gather no more.
                drop(tx);
                self.forget_streams();
                for r in requests.iter_mut() {
                    if matches!(r.outcome, Some(Ok(_))) {
                        r.outcome = None;
                    }
                }
                gathering = Gathering::closed();
                continue;
            }
            tx.commit().map_err(|e| db.err(e))?;
            return Ok(head);
        }
    }
}

/// `PRAGMA synchronous` of the write connection (2 = FULL).
fn synchronous(conn: &Connection, db: &DbFile) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(|e| db.err(e))
}

/// Decides when a group stops taking requests.
///
/// It takes every request already queued. When the previous group was large,
/// it also lingers briefly for the appenders that group's commit released
/// (like PostgreSQL's `commit_delay`): they are busy making their next
/// request, and without the wait most of them would miss this commit and
/// wait a whole flush for the next. It stops as soon as as many requests as
/// last time have arrived, after [`LINGER_IDLE`] without a new one, or after
/// [`LINGER_MAX`]; under light load it does not wait at all.
struct Gathering {
    /// False once the group must take no more requests.
    open: bool,
    linger: bool,
    last_group: usize,
    start: Instant,
    idle_since: Instant,
}

impl Gathering {
    fn new(last_group: usize) -> Self {
        let now = Instant::now();
        Self {
            open: true,
            linger: last_group >= LINGER_MIN_GROUP,
            last_group,
            start: now,
            idle_since: now,
        }
    }

    /// Takes nothing more.
    fn closed() -> Self {
        Self {
            open: false,
            ..Self::new(0)
        }
    }

    /// The next request for this group, or `None` when the group is complete.
    fn next(&mut self, rx: &mut mpsc::Receiver<Request>, gathered: usize) -> Option<Request> {
        if !self.open {
            return None;
        }
        loop {
            match rx.try_recv() {
                Ok(request) => {
                    self.idle_since = Instant::now();
                    return Some(request);
                }
                Err(mpsc::error::TryRecvError::Empty)
                    if self.linger
                        && gathered < self.last_group
                        && self.idle_since.elapsed() < LINGER_IDLE
                        && self.start.elapsed() < LINGER_MAX =>
                {
                    std::thread::park_timeout(LINGER_POLL);
                }
                Err(_) => return None,
            }
        }
    }
}

/// One append request inside a group, and its outcome once known.
struct Pending {
    events: Vec<PendingEvent>,
    expected: ExpectedVersion,
    reply: Reply,
    runtime: Option<tokio::runtime::Handle>,
    outcome: Option<Result<AppendReceipt, StoreError>>,
}

impl Pending {
    fn new(
        events: Vec<PendingEvent>,
        expected: ExpectedVersion,
        reply: Reply,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        Self {
            events,
            expected,
            reply,
            runtime,
            outcome: None,
        }
    }
}

/// A group's acknowledgements, sent when the batch is dropped.
///
/// The writer hands the batch to a task on the appenders' runtime, so each
/// appender is woken from a worker thread of its own runtime (a cheap local
/// wake-up) instead of by 256 cross-thread wake-ups from the writer. If that
/// task never runs (its runtime shut down), dropping it still sends them.
struct AckBatch(Vec<(Reply, Result<AppendReceipt, StoreError>, Vec<PendingEvent>)>);

impl AckBatch {
    /// Sends the acknowledgements from tasks on `runtime`, one per worker:
    /// each wakes its share of the appenders on its own queue, and no worker
    /// keeps waking another to steal from it. Without a runtime, sends them
    /// from this thread.
    fn send_from(mut self, runtime: Option<tokio::runtime::Handle>) {
        let Some(rt) = runtime else {
            return; // dropping the batch sends it
        };
        let per = self.0.len().div_ceil(rt.metrics().num_workers().max(1));
        while self.0.len() > per {
            let rest = AckBatch(self.0.split_off(per));
            drop(rt.spawn(async move { drop(rest) }));
        }
        drop(rt.spawn(async move { drop(self) }));
    }
}

impl Drop for AckBatch {
    fn drop(&mut self) {
        for (reply, outcome, events) in self.0.drain(..) {
            let _ = reply.send((outcome, events));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(seq: u64) -> Result<AppendReceipt, StoreError> {
        Ok(AppendReceipt {
            first_seq: seq,
            last_seq: seq,
            deduplicated: false,
        })
    }

    #[test]
    fn acknowledgements_handed_to_a_runtime_that_shut_down_are_still_sent() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let handle = runtime.handle().clone();
        drop(runtime);
        let (reply, ack) = oneshot::channel();
        let batch = AckBatch(vec![(reply, receipt(7), Vec::new())]);
        // The runtime is gone: the task is dropped unrun, and so is the batch.
        drop(handle.spawn(async move { drop(batch) }));
        let (outcome, _) = ack.blocking_recv().expect("an acknowledgement");
        assert_eq!(outcome, receipt(7));
    }
}
