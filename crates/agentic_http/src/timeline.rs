//! The timeline's read model: what the dashboard's timeline filters on
//! (type, stream, correlation, time) and follows (causes and effects),
//! indexed in a SQLite file of its own beside the log (`timeline.db` in the
//! home), so the log's own appends carry no extra index. A task of the
//! server follows the log and adds events in batches, a while behind the
//! commit (`indexed` says how far it got); the file is only a cache: it is
//! rebuilt from the log when it is missing, damaged, or from another log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentic_core::{EventEnvelope, EventStore};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::events::kind_of;

/// Events written per transaction while catching up.
const BATCH: usize = 5000;

/// Version of the file's layout: another one is rebuilt.
const LAYOUT: i64 = 1;

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
}

/// The read model: its file and how far it has read the log.
pub struct Timeline {
    conn: Mutex<Connection>,
    indexed: AtomicU64,
}

impl Timeline {
    /// Opens (or makes) the read model at `path` (`None`: in memory).
    pub fn open(path: Option<&Path>) -> Result<Self, TimelineError> {
        let conn = match path {
            Some(path) => match Self::prepared(Connection::open(path)?) {
                Ok(conn) => conn,
                // Damaged or foreign: it is only a cache.
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                    Self::prepared(Connection::open(path)?)?
                }
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
                "DROP TABLE IF EXISTS ev; DROP TABLE IF EXISTS origin;
                 CREATE TABLE ev (
                     seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, stream TEXT NOT NULL,
                     correlation BLOB NOT NULL, causation BLOB, event_id BLOB NOT NULL,
                     at INTEGER NOT NULL);
                 CREATE INDEX ev_kind ON ev(kind, seq);
                 CREATE INDEX ev_stream ON ev(stream, seq);
                 CREATE INDEX ev_correlation ON ev(correlation, seq);
                 CREATE INDEX ev_causation ON ev(causation) WHERE causation IS NOT NULL;
                 CREATE INDEX ev_event_id ON ev(event_id);
                 CREATE INDEX ev_at ON ev(at);
                 CREATE TABLE origin (hash TEXT NOT NULL);",
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

    /// Follows the log until `stopping`: starts over if the file holds
    /// another log (its first event differs, or it is ahead of the log),
    /// then adds every event from where it stopped, in batches.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>, stopping: CancellationToken) {
        if let Err(e) = self.check_origin(store.as_ref()).await {
            tracing::warn!(error = %e, "the timeline read model cannot be checked; it is not kept");
            return;
        }
        let mut log = store.subscribe(self.indexed() + 1);
        loop {
            let first = tokio::select! {
                () = stopping.cancelled() => return,
                next = log.next() => next,
            };
            let mut batch = match first {
                Ok(e) => vec![e],
                Err(e) => {
                    tracing::warn!(error = %e, "the timeline read model stopped following the log");
                    return;
                }
            };
            while batch.len() < BATCH {
                match log.next().now_or_never() {
                    Some(Ok(e)) => batch.push(e),
                    _ => break,
                }
            }
            let last = batch.last().map_or(0, |e| e.seq);
            let rows: Vec<Row> = batch.iter().map(Row::of).collect();
            if let Err(e) = self.with(move |conn| write(conn, &rows)).await {
                tracing::warn!(error = %e, "the timeline read model cannot be written; it stops");
                return;
            }
            self.indexed.store(last, Ordering::Release);
        }
    }

    /// Empties the file if it was built from another log.
    async fn check_origin(self: &Arc<Self>, store: &dyn EventStore) -> Result<(), TimelineError> {
        let head = store.head().await?.seq;
        let first = store.read_from(1, 1).await?;
        let origin = first.first().map(|e| e.hash.to_hex()).unwrap_or_default();
        let indexed = self.indexed();
        let emptied = self
            .with(move |conn| {
                let kept: Option<String> = conn
                    .query_row("SELECT hash FROM origin", [], |r| r.get(0))
                    .optional()?;
                if kept.as_deref() == Some(origin.as_str()) && indexed <= head {
                    return Ok(false);
                }
                conn.execute_batch("DELETE FROM ev; DELETE FROM origin;")?;
                if !origin.is_empty() {
                    conn.execute("INSERT INTO origin (hash) VALUES (?1)", [&origin])?;
                }
                Ok(true)
            })
            .await?;
        if emptied {
            self.indexed.store(0, Ordering::Release);
        }
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
            let mut sql = String::from("SELECT seq FROM ev WHERE seq < ?1");
            let mut args: Vec<rusqlite::types::Value> =
                vec![(before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64).into()];
            let mut arg = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
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
    /// `workflow:ID`, …): what a causation id naming an entity points at.
    pub async fn entity_start(self: &Arc<Self>, id: Uuid) -> Result<Option<u64>, TimelineError> {
        self.with(move |conn| {
            let mut found = None;
            for stream in ["task", "workflow", "element"] {
                let seq: Option<i64> = conn.query_row(
                    "SELECT min(seq) FROM ev WHERE stream = ?1",
                    [format!("{stream}:{id}")],
                    |r| r.get(0),
                )?;
                if seq.is_some() {
                    found = seq.map(|s| s as u64);
                    break;
                }
            }
            Ok(found)
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
        }
    }
}

/// Adds `rows` in one transaction.
fn write(conn: &Connection, rows: &[Row]) -> Result<(), rusqlite::Error> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO ev (seq, kind, stream, correlation, causation, event_id, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in rows {
            insert.execute(params![
                r.seq,
                r.kind,
                r.stream,
                r.correlation.as_slice(),
                r.causation.as_ref().map(|c| c.as_slice()),
                r.event_id.as_slice(),
                r.at
            ])?;
        }
    }
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
        timeline.with(move |conn| write(conn, &rows)).await.unwrap();
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
