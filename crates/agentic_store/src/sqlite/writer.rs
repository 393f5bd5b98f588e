//! The group-commit writer: one thread per process owns the write connection
//! and commits, in one transaction (one fsync), every append that arrived
//! while the previous commit was being made durable.
//!
//! A request that is refused (wrong expected version, refused event) does
//! not fail its group: refusals found before the request wrote anything just
//! skip it; one found part-way (rare: a duplicate event id or element) rolls
//! the transaction back and the group is written again without it. Several processes may append to the same
//! home: each commit takes SQLite's write lock (`BEGIN IMMEDIATE`, waiting up
//! to the busy timeout) and reads the chain head inside the transaction, so
//! processes take turns and the chain never forks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentic_core::chain::seal;
use agentic_core::{
    AppendReceipt, ApplyError, ChainHead, ExpectedVersion, Hash, PendingEvent, StoreError,
    SystemEvent,
};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug_span;
use uuid::Uuid;

use super::schema::DbFile;
use crate::memory::now_micros;

/// A message to the writer thread.
pub(crate) enum Request {
    /// Append a batch of events.
    Append {
        /// The encoded events, all-or-nothing.
        events: Vec<PendingEvent>,
        /// Expectation on the batch's stream.
        expected: ExpectedVersion,
        /// Where the outcome goes once durable.
        reply: oneshot::Sender<Result<AppendReceipt, StoreError>>,
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
    pub head_recorder: std::sync::mpsc::Sender<ChainHead>,
    /// Publishes the newest committed head to waiting readers in this process.
    pub head_tx: watch::Sender<ChainHead>,
    /// Most events committed in one transaction; the rest wait for the next.
    pub max_events_per_commit: usize,
    /// Counters of what this writer committed.
    pub stats: Arc<CommitCounters>,
}

/// Running totals of one writer's commits, readable while it runs.
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events committed (idempotent retries not counted).
    pub events: AtomicU64,
}

type Reply = oneshot::Sender<Result<AppendReceipt, StoreError>>;

impl Writer {
    /// Serves requests until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut events = 0;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        events: batch,
                        expected,
                        reply,
                    } => {
                        events += batch.len();
                        group.push((batch, expected, reply));
                    }
                    Request::Synchronous(reply) => {
                        let level = self
                            .conn
                            .query_row("PRAGMA synchronous", [], |r| r.get(0))
                            .map_err(|e| self.db.err(e));
                        let _ = reply.send(level);
                    }
                }
                if events < self.max_events_per_commit {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
        }
    }

    fn commit_group(&mut self, group: Vec<(Vec<PendingEvent>, ExpectedVersion, Reply)>) {
        let span = debug_span!("commit", requests = group.len());
        let _enter = span.enter();
        let mut requests: Vec<Pending> = group
            .into_iter()
            .map(|(events, expected, reply)| Pending {
                events,
                expected,
                reply,
                outcome: None,
            })
            .collect();
        match self.write(&mut requests) {
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
                for r in requests {
                    let outcome = r.outcome.unwrap_or(Err(StoreError::Closed));
                    let _ = r.reply.send(outcome);
                }
                if head.seq > before {
                    self.head_tx.send_replace(head);
                    // The recorder outlives the writer; if it died, HEAD lags.
                    let _ = self.head_recorder.send(head);
                }
            }
            Err(e) => {
                for r in requests {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes a group in one transaction and returns the new head. Each
    /// request's outcome is left in it; an error fails the whole group.
    fn write(&mut self, requests: &mut [Pending]) -> Result<ChainHead, StoreError> {
        let db = self.db.clone();
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| db.err(e))?;
            let mut group = Group {
                head: read_head(&tx).map_err(|e| db.err(e))?,
                streams: HashMap::new(),
                recorded_at: now_micros(),
                tx: &tx,
                db: &db,
            };
            let mut rewrite = false;
            for request in requests.iter_mut() {
                if matches!(request.outcome, Some(Err(_))) {
                    continue; // refused in an earlier attempt
                }
                match group.append(&mut request.events, request.expected) {
                    Ok(receipt) => request.outcome = Some(Ok(receipt)),
                    Err(Refusal::Before(e)) => request.outcome = Some(Err(e)),
                    Err(Refusal::PartWay(e)) => {
                        request.outcome = Some(Err(e));
                        rewrite = true;
                        break;
                    }
                    Err(Refusal::Fatal(e)) => return Err(e),
                }
            }
            if rewrite {
                drop(tx); // rolls back
                for r in requests.iter_mut() {
                    if matches!(r.outcome, Some(Ok(_))) {
                        r.outcome = None;
                    }
                }
                continue;
            }
            let head = group.head;
            tx.commit().map_err(|e| db.err(e))?;
            return Ok(head);
        }
    }
}

/// One append request inside a group, and its outcome once known.
struct Pending {
    events: Vec<PendingEvent>,
    expected: ExpectedVersion,
    reply: Reply,
    outcome: Option<Result<AppendReceipt, StoreError>>,
}

/// Why a request was not appended.
enum Refusal {
    /// Refused before it wrote anything: the group goes on.
    Before(StoreError),
    /// Refused after writing part of it: the group is rolled back and rewritten.
    PartWay(StoreError),
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
    head: ChainHead,
    streams: HashMap<String, u64>,
    recorded_at: DateTime<Utc>,
    tx: &'a Transaction<'a>,
    db: &'a DbFile,
}

impl Group<'_> {
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
                Err(InsertError::Store(e)) => return Err(Refusal::of(e, true)),
            }
        }
        Ok(AppendReceipt {
            first_seq,
            last_seq: self.head.seq,
            deduplicated: false,
        })
    }

    fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        if let Some(v) = self.streams.get(stream) {
            return Ok(*v);
        }
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
    fn insert(&mut self, event: &mut PendingEvent) -> Result<(), InsertError> {
        let record = &mut event.record;
        let version = self.stream_version(&record.stream)? + 1;
        record.stream_version = version;
        record.recorded_at = self.recorded_at;
        let head = seal(&self.head, record);
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO events (seq, event_id, stream, stream_version, recorded_at, \
                 correlation_id, causation_id, schema_version, payload, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.seq as i64,
                    record.event_id.as_bytes(),
                    record.stream,
                    record.stream_version as i64,
                    record.recorded_at.timestamp_micros(),
                    record.correlation_id.as_bytes(),
                    record.causation_id.as_ref().map(Uuid::as_bytes),
                    record.schema_version,
                    record.payload,
                    record.prev_hash.0,
                    record.hash.0,
                ])
            });
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "events.event_id") => {
                return Err(InsertError::DuplicateEventId);
            }
            Err(e) => return Err(InsertError::Store(self.db.err(e))),
        }
        project(self.tx, head.seq, &event.event).map_err(|e| match e {
            ProjectError::Refused(a) => InsertError::Store(StoreError::Rejected(a)),
            ProjectError::Sql(e) => InsertError::Store(self.db.err(e)),
        })?;
        self.streams.insert(event.record.stream.clone(), version);
        self.head = head;
        Ok(())
    }
}

enum InsertError {
    DuplicateEventId,
    Store(StoreError),
}

impl From<StoreError> for InsertError {
    fn from(e: StoreError) -> Self {
        InsertError::Store(e)
    }
}

enum ProjectError {
    Refused(ApplyError),
    Sql(rusqlite::Error),
}

/// Updates the projection tables for one event, in the append's transaction.
fn project(tx: &Transaction<'_>, seq: u64, event: &SystemEvent) -> Result<(), ProjectError> {
    match event {
        SystemEvent::ElementCreated { element } => {
            tx.prepare_cached(
                "INSERT INTO elements (seq, id, created_at, metadata, content) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq as i64,
                    element.id.as_bytes(),
                    element
                        .created_at
                        .to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    element.metadata.as_str(),
                    element.content,
                ])
            })
            .map_err(|e| {
                if is_unique_violation(&e, "elements.id") {
                    ProjectError::Refused(ApplyError::DuplicateElement(element.id))
                } else {
                    ProjectError::Sql(e)
                }
            })?;
        }
    }
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error, column: &str) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(msg))
        if f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains(column))
}

/// The newest record's (seq, hash), read inside the caller's transaction.
pub(crate) fn read_head(conn: &Connection) -> rusqlite::Result<ChainHead> {
    conn.prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            let seq: i64 = r.get(0)?;
            let hash: Vec<u8> = r.get(1)?;
            Ok(ChainHead {
                seq: seq as u64,
                hash: Hash(hash.try_into().unwrap_or([0; 32])),
            })
        })
        .optional()
        .map(Option::unwrap_or_default)
}
