//! One group's transaction: each request's checks (expected version,
//! idempotent retries, the reducer's rules through the projections), its
//! events sealed into the chain and inserted, and the projections updated —
//! or why it was refused, and whether the group goes on without it.

use std::collections::HashMap;

use agentic_core::chain::seal;
use agentic_core::{
    AppendReceipt, ApplyError, ChainHead, ElementData, ExpectedVersion, PendingEvent, StoreError,
    SystemEvent,
};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction};
use uuid::Uuid;

use super::super::schema::DbFile;
use super::super::{agent_projection, plugin_projection, task_projection, workflow_projection};
use super::Pending;
use super::rows::{
    Batches, ELEMENT_COLUMNS, EVENT_COLUMNS, Statements, bind_element, bind_record,
    insert_elements_sql, insert_events_sql, insert_record,
};

/// Why a request was not appended.
pub(super) enum Refusal {
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
    pub(super) fn of(e: StoreError, wrote: bool) -> Self {
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
pub(super) struct Group<'a> {
    /// The group's write statements, prepared once per transaction.
    pub(super) statements: Statements<'a>,
    pub(super) head: ChainHead,
    pub(super) streams: &'a mut HashMap<String, u64>,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) tx: &'a Transaction<'a>,
    pub(super) db: &'a DbFile,
    /// Sealed events not written yet, as (request, event) indices: batched
    /// events are written [`BATCH_ROWS`] to a statement by [`Group::flush`].
    pub(super) buffered: Vec<(usize, usize)>,
}

impl Group<'_> {
    /// Whether `request` can take the batched path: no expectation to check,
    /// and every event either an element's creation on a stream not known
    /// to exist (guessed new) or projection-free on a known stream.
    /// Everything else takes the row-at-a-time path of [`Group::append`],
    /// which also refuses the creation of an element whose stream exists.
    pub(super) fn can_batch(&self, request: &Pending) -> bool {
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
    pub(super) fn append_batched(&mut self, index: usize, request: &mut Pending) -> AppendReceipt {
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
    pub(super) fn flush_fails(&mut self, requests: &[Pending]) -> Result<bool, StoreError> {
        match self.flush(requests) {
            Ok(()) => Ok(false),
            Err(Refusal::Fatal(e)) => Err(e),
            Err(_) => Ok(true),
        }
    }

    /// Writes the buffered events and their element rows, many rows to a
    /// statement. A constraint failure (a duplicate, or a stream guessed new
    /// that was not) asks for the group to be rewritten row by row.
    pub(super) fn flush(&mut self, requests: &[Pending]) -> Result<(), Refusal> {
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

    pub(super) fn append(
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
    pub(super) fn stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
        match self.streams.get(stream) {
            Some(v) => Ok(*v),
            None => self.read_stream_version(stream),
        }
    }

    /// The stream's current version read from the log, remembered in the cache.
    pub(super) fn read_stream_version(&mut self, stream: &str) -> Result<u64, StoreError> {
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
    pub(super) fn already_stored(&self, ids: &[Uuid]) -> Result<Option<AppendReceipt>, StoreError> {
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
                Ok(Some(AppendReceipt::already_stored(seqs)))
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
    pub(super) fn insert(&mut self, event: &mut PendingEvent) -> Result<(), InsertError> {
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

/// What a failed batched insert means for the group.
pub(super) fn refusal(db: &DbFile, e: rusqlite::Error) -> Refusal {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => Refusal::Rewrite,
        _ => Refusal::Fatal(db.err(e)),
    }
}

/// What an event changes besides the log.
pub(super) enum Projection<'e> {
    /// A new row of the `elements` projection.
    Element(&'e ElementData),
    /// Nothing.
    None,
    /// Rows of the task, plugin, agent or workflow projections (see
    /// [`project`]).
    Other,
}

/// Which projection `event` updates.
pub(super) fn projection_of(event: &SystemEvent) -> Projection<'_> {
    match event {
        SystemEvent::ElementCreated { element } => Projection::Element(element),
        other
            if task_projection::applies(other)
                || other.plugin_name().is_some()
                || other.agent_name().is_some()
                || matches!(other, SystemEvent::WorkflowRecorded { .. }) =>
        {
            Projection::Other
        }
        _ => Projection::None,
    }
}

pub(super) enum InsertError {
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
pub(crate) enum ProjectError {
    /// The event breaks the reducer's rules.
    Refused(ApplyError),
    /// SQLite failed.
    Sql(rusqlite::Error),
}

/// Updates the projection tables for one event, in the append's transaction.
pub(super) fn project(
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
        SystemEvent::WorkflowRecorded { run, event } => {
            workflow_projection::project(tx, seq, *run, event)?;
        }
        other => {
            if let Some(name) = other.agent_name() {
                agent_projection::project(tx, seq, name, other)?;
            }
        }
    }
    Ok(())
}

/// Whether `e` is a UNIQUE violation on an index covering `column`
/// (SQLite says "UNIQUE constraint failed: table.a, table.b").
pub(crate) fn is_unique_violation(e: &rusqlite::Error, column: &str) -> bool {
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
