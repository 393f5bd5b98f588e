//! Importing records sealed by another store ([`EventStore::import`]), on
//! the writer thread: one transaction, each record checked to continue the
//! log and written verbatim with its projections.
//!
//! [`EventStore::import`]: agentic_core::EventStore::import

use std::collections::HashMap;

use agentic_core::store::import;
use agentic_core::{ChainHead, EventEnvelope, StoreError};
use rusqlite::{OptionalExtension, TransactionBehavior};

use super::super::head_file::Recording;
use super::super::reads::read_head;
use super::Writer;
use super::group::{ProjectError, is_unique_violation, project};
use super::rows::{Statements, insert_record};

impl Writer {
    /// Writes `records` after the log's head, all or nothing, and returns
    /// the new head.
    pub(super) fn import(&mut self, records: Vec<EventEnvelope>) -> Result<ChainHead, StoreError> {
        let result = self.try_import(&records);
        // The stream-version cache knows nothing of imported streams.
        self.forget_streams();
        let head = result?;
        if head.seq > self.head_tx.borrow().seq {
            self.head_tx.send_replace(head);
            // The recorder outlives the writer; if it died, HEAD lags.
            let _ = self.head_recorder.send(Recording::Head(head));
        }
        Ok(head)
    }

    fn try_import(&mut self, records: &[EventEnvelope]) -> Result<ChainHead, StoreError> {
        let db = self.db.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db.err(e))?;
        let head = read_head(&tx, &db)?;
        let first = records.first().map_or(u64::MAX, |r| r.seq);
        if first <= head.seq {
            let mut stmt = tx
                .prepare_cached("SELECT seq FROM events WHERE event_id = ?1")
                .map_err(|e| db.err(e))?;
            let mut failed = None;
            let retry = import::is_retry(records, |id| {
                let seq = stmt
                    .query_row([id.as_bytes()], |r| r.get::<_, i64>(0))
                    .optional();
                seq.unwrap_or_else(|e| {
                    failed = Some(db.err(e));
                    None
                })
                .map(|s| s as u64)
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if retry {
                let last = &records[records.len() - 1];
                return Ok(ChainHead {
                    seq: last.seq,
                    hash: last.hash,
                });
            }
        }
        let head = import::check_sealed(head, records)?;
        let events: Vec<_> = records
            .iter()
            .map(import::decode)
            .collect::<Result<_, _>>()?;
        let mut statements = Statements::prepare(&tx).map_err(|e| db.err(e))?;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        for (record, event) in records.iter().zip(&events) {
            let current = match versions.get(record.stream.as_str()) {
                Some(v) => *v,
                None => tx
                    .prepare_cached(
                        "SELECT stream_version FROM events WHERE stream = ?1 \
                         ORDER BY stream_version DESC LIMIT 1",
                    )
                    .and_then(|mut s| s.query_row([&record.stream], |r| r.get::<_, i64>(0)))
                    .optional()
                    .map_err(|e| db.err(e))?
                    .map_or(0, |v| v as u64),
            };
            import::check_stream_version(record, event, current)?;
            insert_record(&mut statements.insert_event, record).map_err(|e| {
                if is_unique_violation(&e, "events.event_id") {
                    StoreError::Import {
                        seq: record.seq,
                        reason: format!("event id {} is already stored", record.event_id),
                    }
                } else {
                    db.err(e)
                }
            })?;
            project(&mut statements, &tx, record.seq, event).map_err(|e| match e {
                ProjectError::Refused(a) => StoreError::Rejected(a),
                ProjectError::Sql(e) => db.err(e),
            })?;
            versions.insert(&record.stream, record.stream_version);
        }
        drop(statements);
        tx.commit().map_err(|e| db.err(e))?;
        Ok(head)
    }
}
