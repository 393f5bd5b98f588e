//! Multi-row `INSERT` statements for the common appends: rows bound
//! [`BATCH_ROWS`] at a time into statements prepared once per size.

use std::sync::LazyLock;

use agentic_core::{ElementData, EventEnvelope};
use chrono::SecondsFormat;
use rusqlite::{CachedStatement, Transaction};

use super::super::schema::DbFile;
use super::group::{Refusal, refusal};

/// Writes rows with batched `INSERT`s inside a group's transaction.
pub(super) struct Batches<'a> {
    pub(super) tx: &'a Transaction<'a>,
    pub(super) db: &'a DbFile,
}

impl<'a> Batches<'a> {
    /// Inserts `rows` in statements of [`BATCH_ROWS`] rows, then of smaller
    /// powers of two; `held` are the group's statements for a full batch and
    /// for one row, `sql` gives the others. A constraint failure asks for a
    /// rewrite ([`Refusal::Rewrite`]).
    pub(super) fn insert<T>(
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
pub(super) struct Statements<'a> {
    pub(super) insert_event: CachedStatement<'a>,
    pub(super) insert_element: CachedStatement<'a>,
    /// The full-size batched inserts, kept for the group: most batches are full.
    pub(super) insert_events_batch: CachedStatement<'a>,
    pub(super) insert_elements_batch: CachedStatement<'a>,
}

impl<'a> Statements<'a> {
    pub(super) fn prepare(tx: &'a Transaction<'a>) -> rusqlite::Result<Self> {
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
pub(super) const BATCH_ROWS: usize = 32;

/// Statements the write connection keeps prepared: the batched inserts of
/// every size, the projections' and the lookups'.
pub(crate) const STATEMENT_CACHE: usize = 64;

/// Columns of one `events` row, and of one `elements` row.
pub(super) const EVENT_COLUMNS: usize = 11;
pub(super) const ELEMENT_COLUMNS: usize = 5;

/// Rows the next batched statement takes out of `n` waiting: the largest
/// power of two up to `n` and [`BATCH_ROWS`].
pub(super) fn batch_size(n: usize) -> usize {
    let n = n.clamp(1, BATCH_ROWS);
    1 << n.ilog2()
}

/// `INSERT` statements for `events` and `elements`, by log2 of their rows.
pub(super) static INSERT_SQL: LazyLock<[Vec<String>; 2]> = LazyLock::new(|| {
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
pub(super) fn insert_events_sql(rows: usize) -> &'static str {
    &INSERT_SQL[0][rows.ilog2() as usize]
}

/// The statement inserting `rows` (a power of two) `elements` rows.
pub(super) fn insert_elements_sql(rows: usize) -> &'static str {
    &INSERT_SQL[1][rows.ilog2() as usize]
}

/// Binds one sealed record as the `events` row after the first `offset` parameters.
pub(super) fn bind_record(
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
pub(super) fn bind_element(
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
pub(super) fn insert_record(
    stmt: &mut CachedStatement<'_>,
    record: &EventEnvelope,
) -> rusqlite::Result<()> {
    bind_record(stmt, 0, record)?;
    stmt.raw_execute().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn batched_statements_take_the_largest_power_of_two_that_fits() {
        let sizes: Vec<usize> = [1, 2, 3, 31, 32, 33, 500].map(batch_size).to_vec();
        assert_eq!(sizes, vec![1, 2, 2, 16, 32, 32, 32]);
        assert_eq!(insert_events_sql(4).matches("(?,").count(), 4);
        assert!(insert_events_sql(1).starts_with("INSERT INTO"));
        assert!(insert_elements_sql(BATCH_ROWS).starts_with("INSERT OR FAIL INTO"));
    }
}
