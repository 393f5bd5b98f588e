//! Groups of new elements numbered and linked by the database, for a
//! writer taking turns on the head with other kernels.
//!
//! Taking turns, a writer's commit usually locks the head, learns it (a
//! round trip), admits its group against it and sends the writes: the head
//! stays locked through a round trip to the kernel. A group whose
//! admission reads nothing (see [`super::ahead::reads_nothing`]) is
//! admitted with its positions counted from 1 and sent whole to
//! `lion.append_sealed`, which locks the head, numbers and links the
//! records there, and commits: the head is held only while the database
//! works. The records' hashes are the ones the writer would compute (the
//! writer sends each record's hashed bytes after its seq and link, see
//! [`agentic_core::chain::hashed_tail`]). If the commit fails, the group is
//! committed again the usual way (which finds retries and duplicates).

use std::sync::atomic::Ordering;

use agentic_core::ChainHead;
use agentic_core::chain::{Hash, RECORD_TAG, hashed_tail};
use uuid::Uuid;

use super::ahead::Admitted;
use super::{Request, Writer, retries_found};
use crate::postgres::PgError;

/// Appends admitted records, numbered and linked in the database.
pub(super) const APPEND_SEALED: &str =
    "SELECT first_seq, last_hash FROM lion.append_sealed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

impl Writer {
    /// Commits `group` (whose requests read nothing) in one statement that
    /// numbers and links its records in the database, and answers it; or
    /// hands it back, if the commit failed, to commit the usual way.
    pub(super) async fn commit_server_sealed(&self, group: Vec<Request>) -> Option<Vec<Request>> {
        let mut admitted = Admitted::on(ChainHead::EMPTY);
        for request in group {
            admitted.admit(request);
        }
        // Positions counted from 1, to move once the database has numbered
        // the records (answers found in the log are where the log has them).
        let counted: Vec<bool> = admitted.outcomes.iter().map(Result::is_ok).collect();
        let committed = match self.append_sealed(&mut admitted).await {
            Ok(committed) => committed,
            Err(_) => return Some(admitted.group),
        };
        if let Some(head) = committed {
            let moved_by = head.seq - admitted.rows.len() as u64;
            for (outcome, counted) in admitted.outcomes.iter_mut().zip(counted) {
                if let (Ok(receipt), true) = (outcome, counted) {
                    receipt.first_seq += moved_by;
                    receipt.last_seq += moved_by;
                }
            }
            self.turns.sealed(moved_by, head);
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .events
                .fetch_add(admitted.rows.len() as u64, Ordering::Relaxed);
            self.published(head);
        }
        for (request, outcome) in admitted.group.into_iter().zip(admitted.outcomes) {
            let _ = request.reply.send(outcome);
        }
        None
    }

    /// Sends `admitted`'s records to `lion.append_sealed` (after checking
    /// its refused requests for retries); the head it left, if it wrote.
    async fn append_sealed(&self, admitted: &mut Admitted) -> Result<Option<ChainHead>, PgError> {
        let client = self.pool.get().await?;
        let group: Vec<&Request> = admitted.group.iter().collect();
        retries_found(&client, &group, &mut admitted.outcomes).await?;
        let rows = &admitted.rows;
        if rows.is_empty() {
            return Ok(None);
        }
        let statement = client.prepare_cached(APPEND_SEALED).await?;
        let tails: Vec<Vec<u8>> = rows.iter().map(hashed_tail).collect();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        let streams: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.stream_version as i64).collect();
        let at: Vec<i64> = rows
            .iter()
            .map(|r| r.recorded_at.timestamp_micros())
            .collect();
        let correlation: Vec<Uuid> = rows.iter().map(|r| r.correlation_id).collect();
        let causation: Vec<Option<Uuid>> = rows.iter().map(|r| r.causation_id).collect();
        let schema: Vec<i32> = rows.iter().map(|r| i32::from(r.schema_version)).collect();
        let payload: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
        let row = client
            .query_one(
                &statement,
                &[
                    &RECORD_TAG,
                    &tails,
                    &ids,
                    &streams,
                    &versions,
                    &at,
                    &correlation,
                    &causation,
                    &schema,
                    &payload,
                ],
            )
            .await?;
        let first: i64 = row.get(0);
        let hash: Vec<u8> = row.get(1);
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| PgError::Corrupt("lion.append_sealed gave a hash not 32 bytes".into()))?;
        Ok(Some(ChainHead {
            seq: first as u64 + rows.len() as u64 - 1,
            hash: Hash(hash),
        }))
    }
}
