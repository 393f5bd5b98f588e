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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use agentic_core::chain::seal;
use agentic_core::{
    AppendReceipt, ApplyError, ChainHead, ElementData, EventEnvelope, ExpectedVersion, Hash,
    PendingEvent, StoreError, SystemEvent,
};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{CachedStatement, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug_span;
use uuid::Uuid;

use super::checkpoint::Recycler;
use super::head_file::Recording;
use super::schema::DbFile;
use super::{agent_projection, plugin_projection, task_projection};

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
}

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
}

/// Running totals of one writer's commits, readable while it runs.
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events committed (idempotent retries not counted).
    pub events: AtomicU64,
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
            }
            let gathering = Gathering::new(last_group);
            let result = self.write(&mut rx, &mut requests, gathering);
            last_group = requests.len();
            self.finish(requests, result);
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

/// Why a request was not appended.
enum Refusal {
    /// Refused before it wrote anything: the group goes on.
    Before(StoreError),
    /// Refused after writing part of it: the group is rolled back and rewritten.
    PartWay(StoreError),
    /// A batched insert hit a constraint: the group is rolled back and
    /// rewritten one row at a time, which finds the request to refuse.
    Rewrite,
    /// The store failed: the whole group fails.
    Fatal(StoreError),
}

impl Refusal {
    /// Classifies an error raised before (`wrote == false`) or after the
    /// request wrote something.
    fn of(e: StoreError, wrote: bool) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. }
            | StoreError::InvalidBatch(_)
            | StoreError::PartialDuplicate(_)
            | StoreError::Rejected(_)
            | StoreError::Event(_) => {
                if wrote {
                    Refusal::PartWay(e)
                } else {
                    Refusal::Before(e)
                }
            }
            other => Refusal::Fatal(other),
        }
    }
}

/// One transaction's view: the chain head and stream versions as it goes.
struct Group<'a> {
    /// The group's write statements, prepared once per transaction.
    statements: Statements<'a>,
    head: ChainHead,
    streams: &'a mut HashMap<String, u64>,
    recorded_at: DateTime<Utc>,
    tx: &'a Transaction<'a>,
    db: &'a DbFile,
    /// Sealed events not written yet, as (request, event) indices: batched
    /// events are written [`BATCH_ROWS`] to a statement by [`Group::flush`].
    buffered: Vec<(usize, usize)>,
}

impl Group<'_> {
    /// Whether `request` can take the batched path: no expectation to check,
    /// and every event either an element's creation on a stream not known
    /// to exist (guessed new) or projection-free on a known stream.
    /// Everything else takes the row-at-a-time path of [`Group::append`],
    /// which also refuses the creation of an element whose stream exists.
    fn can_batch(&self, request: &Pending) -> bool {
        request.expected == ExpectedVersion::Any
            && request.events.iter().all(|e| {
                let known = self.streams.contains_key(&e.record.stream);
                match projection_of(&e.event) {
                    Projection::Element(_) => !known,
                    Projection::None => known,
                    Projection::Other => false,
                }
            })
    }

    /// Seals a batchable request's events into the chain and buffers them
    /// for [`Group::flush`]; `index` is the request's place in the group.
    fn append_batched(&mut self, index: usize, request: &mut Pending) -> AppendReceipt {
        let first_seq = self.head.seq + 1;
        for (i, event) in request.events.iter_mut().enumerate() {
            let record = &mut event.record;
            let version = self.streams.get(&record.stream).map_or(1, |v| v + 1);
            record.stream_version = version;
            record.recorded_at = self.recorded_at;
            self.head = seal(&self.head, record);
            // A stream guessed new is not remembered (most are an element's,
            // written once); a second event on it in this group would be
            // guessed new again, fail, and have the group rewritten row by row.
            if let Some(v) = self.streams.get_mut(&record.stream) {
                *v = version;
            }
            self.buffered.push((index, i));
        }
        AppendReceipt {
            first_seq,
            last_seq: self.head.seq,
            deduplicated: false,
        }
    }

    /// [`Group::flush`], telling whether the group must be rewritten.
    fn flush_fails(&mut self, requests: &[Pending]) -> Result<bool, StoreError> {
        match self.flush(requests) {
            Ok(()) => Ok(false),
            Err(Refusal::Fatal(e)) => Err(e),
            Err(_) => Ok(true),
        }
    }

    /// Writes the buffered events and their element rows, many rows to a
    /// statement. A constraint failure (a duplicate, or a stream guessed new
    /// that was not) asks for the group to be rewritten row by row.
    fn flush(&mut self, requests: &[Pending]) -> Result<(), Refusal> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let events: Vec<&PendingEvent> = self
            .buffered
            .iter()
            .map(|&(r, i)| &requests[r].events[i])
            .collect();
        let elements: Vec<(u64, &ElementData)> = events
            .iter()
            .filter_map(|event| match &event.event {
                SystemEvent::ElementCreated { element } => Some((event.record.seq, element)),
                _ => None,
            })
            .collect();
        let s = &mut self.statements;
        let (tx, db) = (self.tx, self.db);
        let batches = Batches { tx, db };
        batches.insert(
            [&mut s.insert_events_batch, &mut s.insert_event],
            (insert_events_sql, EVENT_COLUMNS),
            &events,
            |stmt, at, event| bind_record(stmt, at, &event.record),
        )?;
        batches.insert(
            [&mut s.insert_elements_batch, &mut s.insert_element],
            (insert_elements_sql, ELEMENT_COLUMNS),
            &elements,
            |stmt, at, (seq, element)| bind_element(stmt, at, *seq, element),
        )?;
        self.buffered.clear();
        Ok(())
    }

    fn append(
        &mut self,
        events: &mut [PendingEvent],
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, Refusal> {
        let before = |e| Refusal::of(e, false);
        let stream = events
            .first()
            .map(|e| e.record.stream.clone())
            .ok_or(StoreError::InvalidBatch("no events"))
            .map_err(before)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.record.event_id).collect();
        if expected != ExpectedVersion::Any {
            // A retried batch is answered before its expectation is checked:
            // the expectation held when it was first appended.
            if let Some(receipt) = self.already_stored(&ids).map_err(before)? {
                return Ok(receipt);
            }
            let current = self.stream_version(&stream).map_err(before)?;
            expected.check(&stream, current).map_err(before)?;
        }
        let first_seq = self.head.seq + 1;
        for (i, event) in events.iter_mut().enumerate() {
            let wrote = i > 0;
            match self.insert(event) {
                Ok(()) => {}
                Err(InsertError::DuplicateEventId) => {
                    return match self.already_stored(&ids) {
                        Ok(Some(receipt)) if !wrote => Ok(receipt),
                        Ok(_) => Err(Refusal::of(StoreError::PartialDuplicate(ids[i]), wrote)),
                        Err(e) => Err(Refusal::of(e, wrote)),
                    };
                }
                Err(InsertError::Refused(e)) => return Err(Refusal::of(e, wrote)),
                Err(InsertError::Store(e)) => return Err(Refusal::of(e, true)),
            }
        }
        Ok(AppendReceipt {
            first_seq,
            last_seq: self.head.seq,
            deduplicated: false,
        })
    }

    /// The stream's current version (0 = no stream), from the cache or the log.
    fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        match self.streams.get(stream) {
            Some(v) => Ok(*v),
            None => self.read_stream_version(stream),
        }
    }

    /// The stream's current version read from the log, remembered in the cache.
    fn read_stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .tx
            .prepare_cached(
                "SELECT stream_version FROM events WHERE stream = ?1 \
                 ORDER BY stream_version DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([stream], |r| r.get(0)).optional())
            .map_err(|e| self.db.err(e))?;
        let v = v.map_or(0, |v| v as u64);
        self.streams.insert(stream.to_owned(), v);
        Ok(v)
    }

    /// The receipt for a batch stored before, `None` if none of it is stored,
    /// and an error if only part of it is.
    fn already_stored(&self, ids: &[Uuid]) -> Result<Option<AppendReceipt>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT seq FROM events WHERE event_id = ?1")
            .map_err(|e| self.db.err(e))?;
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            let seq: Option<i64> = stmt
                .query_row([id.as_bytes()], |r| r.get(0))
                .optional()
                .map_err(|e| self.db.err(e))?;
            seqs.push(seq);
        }
        match (
            seqs.iter().position(Option::is_some),
            seqs.iter().position(Option::is_none),
        ) {
            (None, _) => Ok(None),
            (Some(stored), Some(_)) => Err(StoreError::PartialDuplicate(ids[stored])),
            (Some(_), None) => {
                let seqs = seqs.into_iter().flatten().map(|s| s as u64);
                let (lo, hi) = seqs.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
                Ok(Some(AppendReceipt {
                    first_seq: lo,
                    last_seq: hi,
                    deduplicated: true,
                }))
            }
        }
    }

    /// Seals one event into the chain and writes it with its projection.
    ///
    /// A stream the cache does not know is first tried at version 1, which
    /// is right for every new stream (most of them: one per element) and
    /// saves a lookup; if the stream exists, its unique index refuses the row
    /// and the version is read from the log. A wrong guess can only be too
    /// low (versions are gapless), so it can never be stored.
    ///
    /// An element's creation must be the first event of its stream (see
    /// [`agentic_core::store::batch_stream`]): if the stream already exists,
    /// so does the element, and the event is refused before it writes
    /// anything, unless it is that very event, stored before (a retry).
    fn insert(&mut self, event: &mut PendingEvent) -> Result<(), InsertError> {
        let record = &mut event.record;
        let mut version = self.streams.get(&record.stream).map_or(1, |v| v + 1);
        let mut looked_up = false;
        let head = loop {
            if let (SystemEvent::ElementCreated { element }, 2..) = (&event.event, version) {
                let id = std::slice::from_ref(&record.event_id);
                if self.already_stored(id)?.is_some() {
                    return Err(InsertError::DuplicateEventId);
                }
                let duplicate = ApplyError::DuplicateElement(element.id);
                return Err(InsertError::Refused(StoreError::Rejected(duplicate)));
            }
            record.stream_version = version;
            record.recorded_at = self.recorded_at;
            let head = seal(&self.head, record);
            match insert_record(&mut self.statements.insert_event, record) {
                Ok(()) => break head,
                Err(e) if is_unique_violation(&e, "events.event_id") => {
                    return Err(InsertError::DuplicateEventId);
                }
                Err(e) if !looked_up && is_unique_violation(&e, "events.stream") => {
                    looked_up = true;
                    version = self.read_stream_version(&record.stream)? + 1;
                }
                Err(e) => return Err(InsertError::Store(self.db.err(e))),
            }
        };
        project(&mut self.statements, self.tx, head.seq, &event.event).map_err(|e| match e {
            ProjectError::Refused(a) => InsertError::Store(StoreError::Rejected(a)),
            ProjectError::Sql(e) => InsertError::Store(self.db.err(e)),
        })?;
        if let Some(v) = self.streams.get_mut(&event.record.stream) {
            *v = version;
        }
        self.head = head;
        Ok(())
    }
}

/// Writes rows with batched `INSERT`s inside a group's transaction.
struct Batches<'a> {
    tx: &'a Transaction<'a>,
    db: &'a DbFile,
}

impl<'a> Batches<'a> {
    /// Inserts `rows` in statements of [`BATCH_ROWS`] rows, then of smaller
    /// powers of two; `held` are the group's statements for a full batch and
    /// for one row, `sql` gives the others. A constraint failure asks for a
    /// rewrite ([`Refusal::Rewrite`]).
    fn insert<T>(
        &self,
        held: [&mut CachedStatement<'a>; 2],
        (sql, columns): (fn(usize) -> &'static str, usize),
        rows: &[T],
        bind: impl Fn(&mut CachedStatement<'a>, usize, &T) -> rusqlite::Result<()>,
    ) -> Result<(), Refusal> {
        let [full, single] = held;
        let fatal = |e| Refusal::Fatal(self.db.err(e));
        let mut rest = rows;
        while !rest.is_empty() {
            let n = batch_size(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut prepared;
            let stmt = match n {
                BATCH_ROWS => &mut *full,
                1 => &mut *single,
                _ => {
                    prepared = self.tx.prepare_cached(sql(n)).map_err(fatal)?;
                    &mut prepared
                }
            };
            for (k, row) in chunk.iter().enumerate() {
                bind(stmt, k * columns, row).map_err(fatal)?;
            }
            let done = stmt.raw_execute();
            done.map_err(|e| refusal(self.db, e))?;
        }
        Ok(())
    }
}

/// The statements a group runs for every event written one at a time.
struct Statements<'a> {
    insert_event: CachedStatement<'a>,
    insert_element: CachedStatement<'a>,
    /// The full-size batched inserts, kept for the group: most batches are full.
    insert_events_batch: CachedStatement<'a>,
    insert_elements_batch: CachedStatement<'a>,
}

impl<'a> Statements<'a> {
    fn prepare(tx: &'a Transaction<'a>) -> rusqlite::Result<Self> {
        Ok(Self {
            insert_event: tx.prepare_cached(insert_events_sql(1))?,
            insert_element: tx.prepare_cached(insert_elements_sql(1))?,
            insert_events_batch: tx.prepare_cached(insert_events_sql(BATCH_ROWS))?,
            insert_elements_batch: tx.prepare_cached(insert_elements_sql(BATCH_ROWS))?,
        })
    }
}

/// Most rows one batched `INSERT` writes. Batched inserts cost about a
/// third less per row than one statement per row; statements of 1, 2, 4 …
/// `BATCH_ROWS` rows are prepared, so a few stay cached.
const BATCH_ROWS: usize = 32;

/// Statements the write connection keeps prepared: the batched inserts of
/// every size, the projections' and the lookups'.
pub(crate) const STATEMENT_CACHE: usize = 64;

/// Columns of one `events` row, and of one `elements` row.
const EVENT_COLUMNS: usize = 11;
const ELEMENT_COLUMNS: usize = 5;

/// Rows the next batched statement takes out of `n` waiting: the largest
/// power of two up to `n` and [`BATCH_ROWS`].
fn batch_size(n: usize) -> usize {
    let n = n.clamp(1, BATCH_ROWS);
    1 << n.ilog2()
}

/// `INSERT` statements for `events` and `elements`, by log2 of their rows.
static INSERT_SQL: LazyLock<[Vec<String>; 2]> = LazyLock::new(|| {
    let sizes = || (0..=BATCH_ROWS.ilog2()).map(|b| 1usize << b);
    let values = |rows: usize, columns: usize| {
        let row = format!("({})", vec!["?"; columns].join(","));
        vec![row; rows].join(",")
    };
    // A statement of several rows fails rather than aborts on a constraint
    // (keeping the rows before it), so SQLite keeps no statement journal for
    // it: the group is rolled back and rewritten anyway.
    let insert = |rows: usize| if rows > 1 { "INSERT OR FAIL" } else { "INSERT" };
    [
        sizes()
            .map(|n| {
                format!(
                    "{} INTO events (seq, event_id, stream, stream_version, recorded_at, \
                     correlation_id, causation_id, schema_version, payload, prev_hash, hash) \
                     VALUES {}",
                    insert(n),
                    values(n, EVENT_COLUMNS)
                )
            })
            .collect(),
        sizes()
            .map(|n| {
                format!(
                    "{} INTO elements (seq, id, created_at, metadata, content) VALUES {}",
                    insert(n),
                    values(n, ELEMENT_COLUMNS)
                )
            })
            .collect(),
    ]
});

/// The statement inserting `rows` (a power of two) `events` rows.
fn insert_events_sql(rows: usize) -> &'static str {
    &INSERT_SQL[0][rows.ilog2() as usize]
}

/// The statement inserting `rows` (a power of two) `elements` rows.
fn insert_elements_sql(rows: usize) -> &'static str {
    &INSERT_SQL[1][rows.ilog2() as usize]
}

/// What a failed batched insert means for the group.
fn refusal(db: &DbFile, e: rusqlite::Error) -> Refusal {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => Refusal::Rewrite,
        _ => Refusal::Fatal(db.err(e)),
    }
}

/// Binds one sealed record as the `events` row after the first `offset` parameters.
fn bind_record(
    stmt: &mut CachedStatement<'_>,
    offset: usize,
    record: &EventEnvelope,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(offset + 1, record.seq as i64)?;
    stmt.raw_bind_parameter(offset + 2, &record.event_id.as_bytes()[..])?;
    stmt.raw_bind_parameter(offset + 3, &record.stream)?;
    stmt.raw_bind_parameter(offset + 4, record.stream_version as i64)?;
    stmt.raw_bind_parameter(offset + 5, record.recorded_at.timestamp_micros())?;
    stmt.raw_bind_parameter(offset + 6, &record.correlation_id.as_bytes()[..])?;
    stmt.raw_bind_parameter(
        offset + 7,
        record.causation_id.as_ref().map(|c| &c.as_bytes()[..]),
    )?;
    stmt.raw_bind_parameter(offset + 8, record.schema_version)?;
    stmt.raw_bind_parameter(offset + 9, &record.payload[..])?;
    stmt.raw_bind_parameter(offset + 10, &record.prev_hash.0[..])?;
    stmt.raw_bind_parameter(offset + 11, &record.hash.0[..])
}

/// Binds an element created by the event at `seq` as the `elements` row
/// after the first `offset` parameters.
fn bind_element(
    stmt: &mut CachedStatement<'_>,
    offset: usize,
    seq: u64,
    element: &ElementData,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(offset + 1, seq as i64)?;
    stmt.raw_bind_parameter(offset + 2, &element.id.as_bytes()[..])?;
    stmt.raw_bind_parameter(
        offset + 3,
        element
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )?;
    stmt.raw_bind_parameter(offset + 4, element.metadata.as_str())?;
    stmt.raw_bind_parameter(offset + 5, &element.content)
}

/// Writes one sealed record into `events`.
fn insert_record(stmt: &mut CachedStatement<'_>, record: &EventEnvelope) -> rusqlite::Result<()> {
    bind_record(stmt, 0, record)?;
    stmt.raw_execute().map(|_| ())
}

/// What an event changes besides the log.
enum Projection<'e> {
    /// A new row of the `elements` projection.
    Element(&'e ElementData),
    /// Nothing.
    None,
    /// Rows of the task, plugin or agent projections (see [`project`]).
    Other,
}

/// Which projection `event` updates.
fn projection_of(event: &SystemEvent) -> Projection<'_> {
    match event {
        SystemEvent::ElementCreated { element } => Projection::Element(element),
        other
            if task_projection::applies(other)
                || other.plugin_name().is_some()
                || agent_projection::agent_of(other).is_some() =>
        {
            Projection::Other
        }
        _ => Projection::None,
    }
}

enum InsertError {
    /// The event's id is already stored.
    DuplicateEventId,
    /// Refused before the event wrote anything.
    Refused(StoreError),
    /// Refused or failed after the event's row was written.
    Store(StoreError),
}

impl From<StoreError> for InsertError {
    fn from(e: StoreError) -> Self {
        InsertError::Store(e)
    }
}

/// Why an event could not be projected: refused by the rules, or SQL.
pub(super) enum ProjectError {
    /// The event breaks the reducer's rules.
    Refused(ApplyError),
    /// SQLite failed.
    Sql(rusqlite::Error),
}

/// Updates the projection tables for one event, in the append's transaction.
fn project(
    statements: &mut Statements<'_>,
    tx: &Transaction<'_>,
    seq: u64,
    event: &SystemEvent,
) -> Result<(), ProjectError> {
    match projection_of(event) {
        Projection::None => return Ok(()),
        Projection::Element(element) => {
            let stmt = &mut statements.insert_element;
            bind_element(stmt, 0, seq, element)
                .and_then(|()| stmt.raw_execute())
                .map_err(ProjectError::Sql)?;
            return Ok(());
        }
        Projection::Other => {}
    }
    match event {
        other if task_projection::applies(other) => task_projection::project(tx, seq, other)?,
        other if other.plugin_name().is_some() => plugin_projection::project(tx, seq, other)?,
        other => {
            if let Some(name) = agent_projection::agent_of(other) {
                agent_projection::project(tx, seq, name, other)?;
            }
        }
    }
    Ok(())
}

/// Whether `e` is a UNIQUE violation on an index covering `column`
/// (SQLite says "UNIQUE constraint failed: table.a, table.b").
pub(super) fn is_unique_violation(e: &rusqlite::Error, column: &str) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            msg.split_once("failed: ")
                .is_some_and(|(_, cols)| cols.split(", ").any(|c| c == column))
        }
        _ => false,
    }
}

/// The newest record's (seq, hash), read inside the caller's transaction.
/// A stored hash that is not 32 bytes, or a position below 1, is damage: an
/// error naming the database, never a made-up head.
pub(crate) fn read_head(conn: &Connection, db: &DbFile) -> Result<ChainHead, StoreError> {
    let newest = conn
        .prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        .and_then(|mut stmt| {
            stmt.query_row([], |r| {
                let seq: i64 = r.get(0)?;
                let hash = r.get_ref(1)?.as_blob().map(<[u8]>::to_vec);
                Ok((seq, hash))
            })
            .optional()
        })
        .map_err(|e| db.err(e))?;
    let Some((seq, hash)) = newest else {
        return Ok(ChainHead::EMPTY);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: db.path.display().to_string(),
        reason,
    };
    let seq = u64::try_from(seq)
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| corrupt(format!("the newest record has position {seq}, below 1")))?;
    let hash: [u8; 32] = match hash {
        Ok(bytes) => bytes.try_into().map_err(|b: Vec<u8>| {
            corrupt(format!(
                "the hash of the newest record (seq {seq}) is {} bytes, not 32",
                b.len()
            ))
        })?,
        Err(_) => {
            return Err(corrupt(format!(
                "the hash of the newest record (seq {seq}) is not a blob"
            )));
        }
    };
    Ok(ChainHead {
        seq,
        hash: Hash(hash),
    })
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

    #[test]
    fn batched_statements_take_the_largest_power_of_two_that_fits() {
        let sizes: Vec<usize> = [1, 2, 3, 31, 32, 33, 500].map(batch_size).to_vec();
        assert_eq!(sizes, vec![1, 2, 2, 16, 32, 32, 32]);
        assert_eq!(insert_events_sql(4).matches("(?,").count(), 4);
        assert!(insert_events_sql(1).starts_with("INSERT INTO"));
        assert!(insert_elements_sql(BATCH_ROWS).starts_with("INSERT OR FAIL INTO"));
    }
}
