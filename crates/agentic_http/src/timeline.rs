//! The timeline's read model: what the dashboard's timeline filters on
//! (type, stream, correlation, time) and follows (causes and effects),
//! indexed in a SQLite file of its own beside the log (`timeline.db` in the
//! home), so the log's own appends carry no extra index. A task of the
//! server follows the log and adds events in batches, a while behind the
//! commit (`indexed` says how far it got), and starts again after an error.
//! The file is only a cache: it is rebuilt from the log when it cannot be
//! read, or was built from another log (the event at `indexed` is not the
//! one it read there).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_core::{EventEnvelope, EventStore};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::events::kind_of;

/// Events read and written per transaction while catching up.
const BATCH: usize = 5000;

/// How long the follower waits after an error before it starts again.
const RETRY: Duration = Duration::from_secs(1);

/// Version of the file's layout: another one is rebuilt.
const LAYOUT: i64 = 3;

/// Errors of the read model.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The file could not be read or written.
    #[error("timeline read model: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The log could not be read.
    #[error("timeline read model: {0}")]
    Store(#[from] agentic_core::StoreError),
}

/// Which events a query wants (all given filters must match).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Events of this type.
    pub kind: Option<String>,
    /// Events of streams starting with this.
    pub stream: Option<String>,
    /// Events of this request.
    pub correlation: Option<Uuid>,
    /// Events recorded at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Events recorded before this.
    pub until: Option<DateTime<Utc>>,
    /// Only each stream's first event (a task's submission, a run's start,
    /// an agent's spawn): the streams themselves, newest first.
    pub first: bool,
}

/// The read model: its file and how far it has read the log.
pub struct Timeline {
    conn: Mutex<Connection>,
    indexed: AtomicU64,
}

/// Whether `e` says the file is not a database, or a damaged one.
fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

impl Timeline {
    /// Opens (or makes) the read model at `path` (`None`: in memory); a
    /// file that is not a database, or a damaged one, is made afresh.
    pub fn open(path: Option<&Path>) -> Result<Self, TimelineError> {
        let conn = match path {
            Some(path) => match Connection::open(path).and_then(Self::prepared) {
                Ok(conn) => conn,
                Err(e) if unreadable(&e) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let mut file = path.as_os_str().to_owned();
                        file.push(suffix);
                        let _ = std::fs::remove_file(file);
                    }
                    Self::prepared(Connection::open(path)?)?
                }
                Err(e) => return Err(e.into()),
            },
            None => Self::prepared(Connection::open_in_memory()?)?,
        };
        let indexed: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM ev", [], |r| r.get(0))?;
        Ok(Self {
            conn: Mutex::new(conn),
            indexed: AtomicU64::new(indexed as u64),
        })
    }

    /// `conn` with the read model's tables (emptied if of another layout).
    fn prepared(conn: Connection) -> Result<Connection, rusqlite::Error> {
        // A cache: losing its last writes to a crash only means reading
        // those events again.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
        let layout: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if layout != LAYOUT {
            conn.execute_batch(
                "DROP TABLE IF EXISTS ev; DROP TABLE IF EXISTS origin; DROP TABLE IF EXISTS last;
                 CREATE TABLE ev (
                     seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, stream TEXT NOT NULL,
                     correlation BLOB NOT NULL, causation BLOB, event_id BLOB NOT NULL,
                     at INTEGER NOT NULL, first INTEGER NOT NULL);
                 CREATE INDEX ev_kind ON ev(kind, seq);
                 CREATE INDEX ev_stream ON ev(stream, seq);
                 CREATE INDEX ev_correlation ON ev(correlation, seq);
                 CREATE INDEX ev_causation ON ev(causation) WHERE causation IS NOT NULL;
                 CREATE INDEX ev_event_id ON ev(event_id);
                 CREATE INDEX ev_at ON ev(at);
                 CREATE INDEX ev_firsts ON ev(stream, seq) WHERE first = 1;
                 CREATE TABLE last (seq INTEGER NOT NULL, hash TEXT NOT NULL);",
            )?;
            conn.pragma_update(None, "user_version", LAYOUT)?;
        }
        Ok(conn)
    }

    /// How far the read model has read the log (a sequence number).
    pub fn indexed(&self) -> u64 {
        self.indexed.load(Ordering::Acquire)
    }

    /// Runs `f` on the connection (on a blocking thread).
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, TimelineError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        .map_err(TimelineError::Sql)
    }

    /// Follows the log until `stopping`; after an error (the log or the
    /// file unreadable a while) it waits a moment and starts again from
    /// where it got, checking first that the file still holds this log.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>, stopping: CancellationToken) {
        loop {
            let error = match self.check(store.as_ref()).await {
                Ok(()) => match self.read_on(store.as_ref(), &stopping).await {
                    Ok(()) => return,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            tracing::warn!(error = %error, "the timeline read model stopped; starting again");
            if let TimelineError::Sql(e) = &error
                && unreadable(e)
            {
                let _ = self.emptied().await;
            }
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Reads the log from where the file stopped, a batch per transaction,
    /// waiting for new events at its end; returns when `stopping`.
    async fn read_on(
        self: &Arc<Self>,
        store: &dyn EventStore,
        stopping: &CancellationToken,
    ) -> Result<(), TimelineError> {
        loop {
            let next = self.indexed() + 1;
            let batch = tokio::select! {
                () = stopping.cancelled() => return Ok(()),
                batch = store.read_from(next, BATCH) => batch?,
            };
            let Some(last) = batch.last() else {
                tokio::select! {
                    () = stopping.cancelled() => return Ok(()),
                    waited = store.wait_for_events(next - 1) => waited?,
                }
                continue;
            };
            let (seq, hash) = (last.seq, last.hash.to_hex());
            let rows: Vec<Row> = batch.iter().map(Row::of).collect();
            self.with(move |conn| write(conn, &rows, seq, &hash))
                .await?;
            self.indexed.store(seq, Ordering::Release);
        }
    }

    /// Empties the file if the log's event at `indexed` is not the one it
    /// read there (another log, or this one replaced).
    async fn check(self: &Arc<Self>, store: &dyn EventStore) -> Result<(), TimelineError> {
        let kept = self
            .with(|conn| {
                conn.query_row("SELECT seq, hash FROM last", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .await?;
        let Some((seq, hash)) = kept else {
            if self.indexed() > 0 {
                self.emptied().await?;
            }
            return Ok(());
        };
        let now = store.read_from(seq as u64, 1).await?;
        let same = now
            .first()
            .is_some_and(|e| e.seq == seq as u64 && e.hash.to_hex() == hash);
        if !same || seq as u64 != self.indexed() {
            self.emptied().await?;
        }
        Ok(())
    }

    /// Empties the file: the log is read again from its start.
    async fn emptied(self: &Arc<Self>) -> Result<(), TimelineError> {
        self.with(|conn| conn.execute_batch("DELETE FROM ev; DELETE FROM last;"))
            .await?;
        self.indexed.store(0, Ordering::Release);
        Ok(())
    }

    /// The sequence numbers of the events `filter` matches before `before`
    /// (newest first, at most `limit`).
    pub async fn matching(
        self: &Arc<Self>,
        filter: Filter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, TimelineError> {
        self.with(move |conn| {
            // Times become a range of sequence numbers first (through the
            // time index), so a time filter never walks the whole table.
            let bound = |t: DateTime<Utc>| -> Result<Option<i64>, rusqlite::Error> {
                conn.query_row(
                    "SELECT seq FROM ev WHERE at >= ?1 ORDER BY at LIMIT 1",
                    [t.timestamp_micros()],
                    |r| r.get(0),
                )
                .optional()
            };
            let mut low: i64 = 0;
            let mut high: i64 = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            if let Some(t) = filter.since {
                match bound(t)? {
                    Some(seq) => low = low.max(seq - 1),
                    None => return Ok(Vec::new()),
                }
            }
            if let Some(t) = filter.until
                && let Some(seq) = bound(t)?
            {
                high = high.min(seq);
            }
            // Only a stream prefix to go by: its index, not the table.
            let index = match (
                &filter.kind,
                &filter.correlation,
                &filter.stream,
                filter.first,
            ) {
                (None, None, Some(_), true) => " INDEXED BY ev_firsts",
                (None, None, Some(_), false) => " INDEXED BY ev_stream",
                _ => "",
            };
            let mut sql = format!("SELECT seq FROM ev{index} WHERE seq > ?1 AND seq < ?2");
            let mut args: Vec<rusqlite::types::Value> = vec![low.into(), high.into()];
            let mut arg = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
            if filter.first {
                sql.push_str(" AND first = 1");
            }
            if let Some(kind) = filter.kind {
                arg(&mut sql, " AND kind = ?", kind.into());
            }
            if let Some(prefix) = filter.stream {
                // A prefix as a range of the stream index.
                arg(&mut sql, " AND stream >= ?", prefix.clone().into());
                arg(
                    &mut sql,
                    " AND stream < ?",
                    format!("{prefix}\u{10FFFF}").into(),
                );
            }
            if let Some(c) = filter.correlation {
                arg(
                    &mut sql,
                    " AND correlation = ?",
                    c.as_bytes().to_vec().into(),
                );
            }
            if let Some(t) = filter.since {
                arg(&mut sql, " AND at >= ?", t.timestamp_micros().into());
            }
            if let Some(t) = filter.until {
                arg(&mut sql, " AND at < ?", t.timestamp_micros().into());
            }
            arg(
                &mut sql,
                " ORDER BY seq DESC LIMIT ?",
                (limit as i64).into(),
            );
            let mut statement = conn.prepare(&sql)?;
            let rows = statement.query_map(params_from_iter(args), |r| r.get::<_, i64>(0))?;
            rows.map(|s| s.map(|s| s as u64)).collect()
        })
        .await
    }

    /// The event with this id, if indexed (its sequence number).
    pub async fn by_event_id(self: &Arc<Self>, id: Uuid) -> Result<Option<u64>, TimelineError> {
        self.with(move |conn| {
            conn.query_row(
                "SELECT seq FROM ev WHERE event_id = ?1",
                [id.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|s| s.map(|s| s as u64))
        })
        .await
    }

    /// The first event of the stream of entity `id` (`task:ID`,
    /// `workflow:ID`, `element:ID`): what a causation id naming an entity
    /// points at.
    pub async fn entity_start(self: &Arc<Self>, id: Uuid) -> Result<Option<u64>, TimelineError> {
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq FROM ev WHERE stream IN (?1, ?2, ?3) ORDER BY seq LIMIT 1",
            )?;
            statement
                .query_row(
                    params![
                        format!("task:{id}"),
                        format!("workflow:{id}"),
                        format!("element:{id}")
                    ],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|s| s.map(|s| s as u64))
        })
        .await
    }

    /// The events caused by `id` (an event's, or an entity's), oldest
    /// first, at most `limit`.
    pub async fn caused_by(
        self: &Arc<Self>,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<u64>, TimelineError> {
        self.with(move |conn| {
            let mut statement =
                conn.prepare("SELECT seq FROM ev WHERE causation = ?1 ORDER BY seq LIMIT ?2")?;
            let rows = statement
                .query_map(params![id.as_bytes().as_slice(), limit as i64], |r| {
                    r.get::<_, i64>(0)
                })?;
            rows.map(|s| s.map(|s| s as u64)).collect()
        })
        .await
    }
}

/// One event as the read model keeps it.
struct Row {
    seq: i64,
    kind: String,
    stream: String,
    correlation: [u8; 16],
    causation: Option<[u8; 16]>,
    event_id: [u8; 16],
    at: i64,
    first: bool,
}

impl Row {
    fn of(e: &EventEnvelope) -> Self {
        Self {
            seq: e.seq as i64,
            kind: kind_of(&e.payload).unwrap_or("?").to_owned(),
            stream: e.stream.clone(),
            correlation: *e.correlation_id.as_bytes(),
            causation: e.causation_id.map(|c| *c.as_bytes()),
            event_id: *e.event_id.as_bytes(),
            at: e.recorded_at.timestamp_micros(),
            first: e.stream_version == 1,
        }
    }
}

/// Adds `rows` in one transaction, with the last one's `seq` and `hash`
/// (what [`Timeline::check`] compares with the log).
fn write(conn: &Connection, rows: &[Row], seq: u64, hash: &str) -> Result<(), rusqlite::Error> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO ev
                 (seq, kind, stream, correlation, causation, event_id, at, first)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for r in rows {
            insert.execute(params![
                r.seq,
                r.kind,
                r.stream,
                r.correlation.as_slice(),
                r.causation.as_ref().map(|c| c.as_slice()),
                r.event_id.as_slice(),
                r.at,
                r.first
            ])?;
        }
    }
    tx.execute("DELETE FROM last", [])?;
    tx.execute(
        "INSERT INTO last (seq, hash) VALUES (?1, ?2)",
        params![seq as i64, hash],
    )?;
    tx.commit()
}

/// Where the read model of a home is kept.
pub fn file_in(home: &Path) -> PathBuf {
    home.join("timeline.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, kind: &str, stream: &str, causation: Option<Uuid>) -> Row {
        Row {
            seq,
            kind: kind.to_owned(),
            stream: stream.to_owned(),
            correlation: [seq as u8; 16],
            causation: causation.map(|c| *c.as_bytes()),
            event_id: *Uuid::from_u128(seq as u128).as_bytes(),
            at: seq * 1_000_000,
            first: !matches!(seq, 3),
        }
    }

    #[tokio::test]
    async fn filters_match_newest_first_and_streams_by_prefix() {
        let timeline = Arc::new(Timeline::open(None).unwrap());
        let cause = Uuid::from_u128(1);
        let rows = vec![
            row(1, "element_created", "element:a", None),
            row(2, "task_submitted", "task:b", None),
            row(3, "task_started", "task:b", Some(cause)),
            row(4, "task_submitted", "tasks:c", None),
            row(5, "task_submitted", "task:d", Some(cause)),
        ];
        timeline
            .with(move |conn| write(conn, &rows, 5, "h"))
            .await
            .unwrap();
        let query = |kind: Option<&str>, stream: Option<&str>, before| {
            let filter = Filter {
                kind: kind.map(str::to_owned),
                stream: stream.map(str::to_owned),
                ..Filter::default()
            };
            let timeline = timeline.clone();
            async move { timeline.matching(filter, before, 10).await.unwrap() }
        };
        assert_eq!(query(Some("task_submitted"), None, None).await, [5, 4, 2]);
        assert_eq!(query(None, Some("task:"), None).await, [5, 3, 2]);
        assert_eq!(query(None, Some("task:"), Some(5)).await, [3, 2]);
        let firsts = Filter {
            stream: Some("task:".into()),
            first: true,
            ..Filter::default()
        };
        assert_eq!(timeline.matching(firsts, None, 10).await.unwrap(), [5, 2]);
        assert_eq!(query(None, None, None).await.len(), 5);
        let since = Filter {
            since: DateTime::from_timestamp(4, 0),
            ..Filter::default()
        };
        assert_eq!(timeline.matching(since, None, 10).await.unwrap(), [5, 4]);
        assert_eq!(timeline.caused_by(cause, 10).await.unwrap(), [3, 5]);
        assert_eq!(
            timeline.by_event_id(Uuid::from_u128(4)).await.unwrap(),
            Some(4)
        );
    }

    #[test]
    fn a_damaged_file_is_rebuilt_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("timeline.db");
        std::fs::write(&file, b"not a database at all, just bytes").unwrap();
        let timeline = Timeline::open(Some(&file)).unwrap();
        assert_eq!(timeline.indexed(), 0);
    }
}
