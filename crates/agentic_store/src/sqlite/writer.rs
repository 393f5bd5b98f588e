//! The group-commit writer: one thread per process owns the write connection
//! and commits, in one transaction (one fsync), every append that arrived
//! while the previous commit was being made durable.
//!
//! Each request in a group runs inside its own savepoint, so a request that
//! fails (wrong expected version, refused event) is rolled back alone while
//! the rest of the group commits. Several processes may append to the same
//! home: each commit takes SQLite's write lock (`BEGIN IMMEDIATE`, waiting up
//! to the busy timeout) and reads the chain head inside the transaction, so
//! processes take turns and the chain never forks.

use std::collections::HashMap;

use agentic_core::chain::seal;
use agentic_core::{
    AppendReceipt, ApplyError, ChainHead, EventEnvelope, ExpectedVersion, Hash, PendingEvent,
    StoreError, SystemEvent,
};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug_span, warn};
use uuid::Uuid;

use super::head_file::HeadFile;
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
    /// The home's `HEAD` file, advanced after each commit.
    pub head_file: HeadFile,
    /// Publishes the newest committed head to waiting readers in this process.
    pub head_tx: watch::Sender<ChainHead>,
    /// Most events committed in one transaction; the rest wait for the next.
    pub max_events_per_commit: usize,
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
        let (requests, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|(events, expected, reply)| ((events, expected), reply))
            .unzip();
        match self.write(requests) {
            Ok((results, head)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                if head.seq > self.head_tx.borrow().seq {
                    self.head_tx.send_replace(head);
                    if let Err(e) = self.head_file.advance(head) {
                        warn!(error = %e, "cannot record HEAD; verification will see it lag");
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes a group in one transaction. The outer error aborts the whole
    /// group; inner errors refuse one request.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        requests: Vec<(Vec<PendingEvent>, ExpectedVersion)>,
    ) -> Result<(Vec<Result<AppendReceipt, StoreError>>, ChainHead), StoreError> {
        let db = self.db.clone();
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
        let mut results = Vec::with_capacity(requests.len());
        for (events, expected) in requests {
            tx.execute_batch("SAVEPOINT request")
                .map_err(|e| db.err(e))?;
            let before = group.head;
            let streams: Vec<String> = events.iter().map(|e| e.stream.clone()).collect();
            match group.append(events, expected) {
                Ok(receipt) => {
                    tx.execute_batch("RELEASE request").map_err(|e| db.err(e))?;
                    results.push(Ok(receipt));
                }
                Err(Refusal::Request(e)) => {
                    tx.execute_batch("ROLLBACK TO request; RELEASE request")
                        .map_err(|e| db.err(e))?;
                    group.head = before;
                    for s in &streams {
                        group.streams.remove(s);
                    }
                    results.push(Err(e));
                }
                Err(Refusal::Fatal(e)) => return Err(e),
            }
        }
        let head = group.head;
        tx.commit().map_err(|e| db.err(e))?;
        Ok((results, head))
    }
}

/// Why a request was not appended: it alone is refused, or the whole group fails.
enum Refusal {
    Request(StoreError),
    Fatal(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. }
            | StoreError::InvalidBatch(_)
            | StoreError::PartialDuplicate(_)
            | StoreError::Rejected(_)
            | StoreError::Event(_) => Refusal::Request(e),
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
        events: Vec<PendingEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, Refusal> {
        let stream = events
            .first()
            .map(|e| e.stream.clone())
            .ok_or(StoreError::InvalidBatch("no events"))?;
        let current = self.stream_version(&stream)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        if expected != ExpectedVersion::Any {
            // A retried batch is answered before its expectation is checked:
            // the expectation held when it was first appended.
            if let Some(receipt) = self.already_stored(&ids)? {
                return Ok(receipt);
            }
            expected.check(&stream, current)?;
        }
        let first_seq = self.head.seq + 1;
        for event in events {
            match self.insert(event) {
                Ok(()) => {}
                Err(InsertError::DuplicateEventId) => {
                    return match self.already_stored(&ids)? {
                        Some(receipt) => Ok(receipt),
                        None => Err(Refusal::Fatal(StoreError::Backend(
                            "duplicate event id vanished".into(),
                        ))),
                    };
                }
                Err(InsertError::Store(e)) => return Err(e.into()),
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
    fn insert(&mut self, event: PendingEvent) -> Result<(), InsertError> {
        let version = self.stream_version(&event.stream)? + 1;
        let record = seal(
            &self.head,
            EventEnvelope {
                seq: 0,
                event_id: event.event_id,
                stream: event.stream,
                stream_version: version,
                recorded_at: self.recorded_at,
                correlation_id: event.correlation_id,
                causation_id: event.causation_id,
                schema_version: event.schema_version,
                payload: event.payload,
                prev_hash: Hash::GENESIS,
                hash: Hash::GENESIS,
            },
        );
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
        project(self.tx, record.seq, &event.event).map_err(|e| match e {
            ProjectError::Refused(a) => InsertError::Store(StoreError::Rejected(a)),
            ProjectError::Sql(e) => InsertError::Store(self.db.err(e)),
        })?;
        self.streams.insert(record.stream, version);
        self.head = ChainHead {
            seq: record.seq,
            hash: record.hash,
        };
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
            let metadata = serde_json::to_string(&element.metadata).map_err(|e| {
                ProjectError::Sql(rusqlite::Error::ToSqlConversionFailure(e.into()))
            })?;
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
                    metadata,
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
