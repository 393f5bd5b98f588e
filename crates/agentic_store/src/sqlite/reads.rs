//! Reads of a SQLite store: the pool of reader connections, the log's
//! records, and the point and paged reads of the projections — each a few
//! indexed lookups, whatever the length of the log. Only
//! [`Readers::projected_state`], for replay's comparison, reads everything.

use std::sync::{Mutex, PoisonError};

use agentic_core::plugin::PluginRecord;
use agentic_core::workflow::RunRecord;
use agentic_core::{
    AgentView, ChainHead, Cursor, ElementData, EventEnvelope, Hash, Page, PluginSnapshot, State,
    StoreError, TaskFilter, TaskRecord,
};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::schema::{self, DbFile, ReadOnly};
use super::{agent_projection, plugin_projection, task_projection, workflow_projection};

/// Schema versions that added the task, plugin and agent projections (see
/// the migrations in `schema`).
const TASKS_SINCE: i32 = 2;
const PLUGINS_SINCE: i32 = 3;
const AGENTS_SINCE: i32 = 4;
/// The schema version that made agents' conversations rows and added the
/// index of unfinished tasks: the point and paged reads need it.
const READS_SINCE: i32 = 7;
/// The schema version that added the projection of workflow runs.
const WORKFLOWS_SINCE: i32 = 8;

/// The pool of reader connections, shared with blocking read tasks.
pub(super) struct Readers {
    /// The database, for connections and error messages.
    pub db: DbFile,
    /// How new connections are opened.
    pub access: Access,
    /// Schema version of the database: older than [`SCHEMA_VERSION`] only
    /// on a store opened read-only, which migrates nothing.
    pub version: i32,
    /// Idle connections.
    pub pool: Mutex<Vec<Connection>>,
}

/// How a store's reader connections reach the database.
#[derive(Debug, Clone, Copy)]
pub(super) enum Access {
    /// Ordinary connections, beside this process's writer.
    ReadWrite,
    /// Read-only connections that change no file (see [`ReadOnly`]).
    ReadOnly(ReadOnly),
    /// The home has no database yet: an empty store in memory, so that
    /// reading it creates nothing.
    Empty,
}

impl Readers {
    /// Runs `f` with a pooled reader connection on the calling thread.
    pub(super) fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&conn).map_err(|e| self.db.err(e));
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        result
    }

    /// A new connection, as this store's access allows.
    fn connect(&self) -> Result<Connection, StoreError> {
        match self.access {
            Access::ReadWrite => schema::connect(&self.db),
            Access::ReadOnly(how) => schema::connect_read_only(&self.db, how),
            Access::Empty => schema::empty_in_memory(&self.db),
        }
    }

    /// The newest record's (seq, hash).
    pub(super) fn with_head(&self) -> Result<ChainHead, StoreError> {
        self.with(|conn| Ok(read_head(conn, &self.db)))?
    }

    /// Calls `f` with every record from seq `from` on, until it returns false.
    pub(super) fn scan(
        &self,
        from: u64,
        mut f: impl FnMut(EventEnvelope) -> bool,
    ) -> Result<(), StoreError> {
        let mut decode_error = None;
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(SELECT_EVENTS)?;
            let mut rows = stmt.query([from as i64])?;
            while let Some(row) = rows.next()? {
                match envelope(row) {
                    Ok(e) => {
                        if !f(e) {
                            break;
                        }
                    }
                    Err(reason) => {
                        decode_error = Some(reason);
                        break;
                    }
                }
            }
            Ok(())
        })?;
        match decode_error {
            Some(reason) => Err(StoreError::Corrupt {
                path: self.db.path.display().to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The `elements` projection, as a [`State`].
    /// Up to `limit` events of one stream from `from` on (by stream version).
    pub(super) fn stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let mut bad = None;
        let out = self.with(|conn| {
            let mut stmt = conn.prepare_cached(SELECT_STREAM)?;
            let mut rows = stmt.query(rusqlite::params![stream, from as i64, limit as i64])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                match envelope(row) {
                    Ok(e) => out.push(e),
                    Err(reason) => {
                        bad = Some(reason);
                        break;
                    }
                }
            }
            Ok(out)
        })?;
        match bad {
            Some(reason) => Err(StoreError::Corrupt {
                path: self.db.path.display().to_string(),
                reason,
            }),
            None => Ok(out),
        }
    }

    /// The projections (elements, tasks, plugins and agents), as a [`State`], read in one
    /// transaction so they agree with each other.
    pub(super) fn projected_state(&self) -> Result<State, StoreError> {
        let mut bad = None;
        let state = self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut state = State::new();
            let mut stmt = tx.prepare_cached(
                "SELECT id, created_at, metadata, content FROM elements ORDER BY seq",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                match element(row) {
                    Ok(e) => state.load_element(e),
                    Err(reason) => {
                        bad = Some(format!("elements projection: {reason}"));
                        return Ok(state);
                    }
                }
            }
            // A store opened read-only is not migrated: a projection its
            // schema does not have yet is empty (its lion wrote no such event).
            if self.version < TASKS_SINCE {
                return Ok(state);
            }
            if let Err(reason) = task_projection::load(&tx, &mut state) {
                bad = Some(format!("tasks projection: {reason}"));
                return Ok(state);
            }
            if self.version < PLUGINS_SINCE {
                return Ok(state);
            }
            if let Err(reason) = plugin_projection::load(&tx, &mut state) {
                bad = Some(format!("plugins projection: {reason}"));
            }
            if self.version < AGENTS_SINCE {
                return Ok(state);
            }
            let agents = if self.version < READS_SINCE {
                agent_projection::load_before_messages(&tx, &mut state)
            } else {
                agent_projection::load(&tx, &mut state)
            };
            if let Err(reason) = agents {
                bad = Some(format!("agents projection: {reason}"));
            }
            if self.version >= WORKFLOWS_SINCE
                && let Err(reason) = workflow_projection::load(&tx, &mut state)
            {
                bad = Some(format!("workflows projection: {reason}"));
            }
            Ok(state)
        })?;
        match bad {
            Some(reason) => Err(StoreError::Corrupt {
                path: self.db.path.display().to_string(),
                reason,
            }),
            None => Ok(state),
        }
    }
}

impl Readers {
    /// One plugin, its key-value store and the log position they reflect,
    /// read in one transaction.
    pub(super) fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        let mut bad = None;
        let found = self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let as_of: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
            match plugin_projection::load_one(&tx, name, as_of as u64) {
                Ok(found) => Ok(found),
                Err(reason) => {
                    bad = Some(format!("plugins projection: {reason}"));
                    Ok(None)
                }
            }
        })?;
        match bad {
            Some(reason) => Err(StoreError::Corrupt {
                path: self.db.path.display().to_string(),
                reason,
            }),
            None => Ok(found),
        }
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

/// A cursor as the `seq` (or message number) it stands for in SQL: one past
/// the largest SQLite integer reads as the largest, after every row.
pub(super) fn position(after: Cursor) -> i64 {
    i64::try_from(after.0).unwrap_or(i64::MAX)
}

/// A page of a list, read with `sql`: its `?1` is the cursor's position and
/// its `?2` how many rows to read, and `row` turns each row into the item's
/// position (its creating event's seq) and the item.
pub(super) fn page<T>(
    conn: &Connection,
    sql: &str,
    after: Cursor,
    limit: usize,
    mut row: impl FnMut(&Row<'_>) -> rusqlite::Result<(i64, T)>,
) -> rusqlite::Result<Page<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(rusqlite::params![position(after), rows_for(limit)], |r| {
        row(r).map(|(seq, item)| (seq as u64, item))
    })?;
    Ok(Page::from_rows(
        rows.collect::<rusqlite::Result<_>>()?,
        limit.max(1),
    ))
}

/// The rows a page of `limit` items reads: one more than it keeps, to tell
/// whether the list goes on.
pub(super) fn rows_for(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).map_or(i64::MAX, |n| n.saturating_add(1))
}

/// The point and paged reads of the projections.
impl Readers {
    /// Runs `f` in one read transaction (so what it reads agrees), on a
    /// schema that has the projections' indexes; what cannot be decoded is
    /// damage, reported as [`StoreError::Corrupt`] naming the projection.
    fn projection<R>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        if self.version < READS_SINCE {
            return Err(StoreError::Backend(format!(
                "{}: the store's schema is version {}, older than this lion reads; \
                 any command but `verify` and `replay` migrates it (e.g. `lion task list`)",
                self.db.path.display(),
                self.version
            )));
        }
        let result = self.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            Ok(f(&tx))
        })?;
        result.map_err(|e| match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt {
                path: self.db.path.display().to_string(),
                reason: format!("{what} projection: {e}"),
            },
            other => self.db.err(other),
        })
    }

    /// The element with this id: its stream's first event is its creation.
    pub(super) fn element(&self, id: Uuid) -> Result<Option<ElementData>, StoreError> {
        let stream = format!("element:{}", id.hyphenated());
        self.projection("elements", |conn| {
            conn.prepare_cached(
                "SELECT e.id, e.created_at, e.metadata, e.content FROM events v \
                 JOIN elements e ON e.seq = v.seq \
                 WHERE v.stream = ?1 AND v.stream_version = 1",
            )?
            .query_row([&stream], |row| element(row).map_err(corrupt))
            .optional()?
            .map_or_else(
                // Homes written before schema 5 may hold elements created
                // on other streams: those are listed by id.
                || {
                    conn.prepare_cached(
                        "SELECT e.id, e.created_at, e.metadata, e.content \
                         FROM elements_off_stream o JOIN elements e ON e.seq = o.seq \
                         WHERE o.id = ?1",
                    )?
                    .query_row([id.as_bytes()], |row| element(row).map_err(corrupt))
                    .optional()
                },
                |found| Ok(Some(found)),
            )
        })
    }

    /// A page of elements in creation order.
    pub(super) fn elements(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<ElementData>, StoreError> {
        self.projection("elements", |conn| {
            page(
                conn,
                "SELECT id, created_at, metadata, content, seq FROM elements \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                after,
                limit,
                |row| Ok((row.get(4)?, element(row).map_err(corrupt)?)),
            )
        })
    }

    /// The task with this id.
    pub(super) fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.projection("tasks", |conn| task_projection::get(conn, id))
    }

    /// The task an idempotency key names.
    pub(super) fn task_by_key(&self, key: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.projection("tasks", |conn| task_projection::by_key(conn, key))
    }

    /// A page of tasks in submission order.
    pub(super) fn tasks(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<TaskRecord>, StoreError> {
        self.projection("tasks", |conn| {
            task_projection::page(conn, filter, after, limit)
        })
    }

    /// The workflow run with this id (none in a store older than the
    /// projection, opened read-only: its lion recorded no run).
    pub(super) fn workflow(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        if self.version < WORKFLOWS_SINCE {
            return Ok(None);
        }
        self.projection("workflows", |conn| workflow_projection::get(conn, id))
    }

    /// A page of workflow runs in start order.
    pub(super) fn workflows(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<RunRecord>, StoreError> {
        if self.version < WORKFLOWS_SINCE {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.projection("workflows", |conn| {
            workflow_projection::page(conn, filter, after, limit)
        })
    }

    /// An agent with a page of its conversation.
    pub(super) fn agent(
        &self,
        name: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<AgentView>, StoreError> {
        self.projection("agents", |conn| {
            agent_projection::view(conn, name, after, limit)
        })
    }

    /// A page of agents in spawn order.
    pub(super) fn agents(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<AgentView>, StoreError> {
        self.projection("agents", |conn| agent_projection::page(conn, after, limit))
    }

    /// A page of plugins in installation order.
    pub(super) fn plugins(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<PluginRecord>, StoreError> {
        self.projection("plugins", |conn| {
            plugin_projection::page(conn, after, limit)
        })
    }
}

/// A projection row that cannot be decoded, as the error SQLite's row
/// mapping carries.
pub(super) fn corrupt(reason: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, reason.into())
}

const SELECT_EVENTS: &str = "SELECT seq, event_id, stream, stream_version, recorded_at, \
    correlation_id, causation_id, schema_version, payload, prev_hash, hash \
    FROM events WHERE seq >= ?1 ORDER BY seq";

const SELECT_STREAM: &str = "SELECT seq, event_id, stream, stream_version, recorded_at, \
    correlation_id, causation_id, schema_version, payload, prev_hash, hash \
    FROM events WHERE stream = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3";

/// Reads a row of [`SELECT_EVENTS`] or [`SELECT_STREAM`]; a malformed column
/// is named in the error.
fn envelope(row: &Row<'_>) -> Result<EventEnvelope, String> {
    let seq: i64 = row.get(0).map_err(|e| e.to_string())?;
    let bad = |what: &str| format!("record at seq {seq}: malformed {what}");
    let uuid = |i: usize, what: &str| -> Result<Uuid, String> {
        let b = row.get_ref(i).map_err(|_| bad(what))?;
        Uuid::from_slice(b.as_blob().map_err(|_| bad(what))?).map_err(|_| bad(what))
    };
    let hash = |i: usize, what: &str| -> Result<Hash, String> {
        let b = row.get_ref(i).map_err(|_| bad(what))?;
        let bytes: [u8; 32] = b
            .as_blob()
            .map_err(|_| bad(what))?
            .try_into()
            .map_err(|_| bad(what))?;
        Ok(Hash(bytes))
    };
    let causation_id = match row.get_ref(6).map_err(|_| bad("causation_id"))? {
        rusqlite::types::ValueRef::Null => None,
        _ => Some(uuid(6, "causation_id")?),
    };
    let micros: i64 = row.get(4).map_err(|_| bad("recorded_at"))?;
    Ok(EventEnvelope {
        seq: seq as u64,
        event_id: uuid(1, "event_id")?,
        stream: row.get(2).map_err(|_| bad("stream"))?,
        stream_version: row.get::<_, i64>(3).map_err(|_| bad("stream_version"))? as u64,
        recorded_at: DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| bad("recorded_at"))?,
        correlation_id: uuid(5, "correlation_id")?,
        causation_id,
        schema_version: row.get(7).map_err(|_| bad("schema_version"))?,
        payload: row.get(8).map_err(|_| bad("payload"))?,
        prev_hash: hash(9, "prev_hash")?,
        hash: hash(10, "hash")?,
    })
}

/// Reads a row of the `elements` projection.
pub(super) fn element(row: &Row<'_>) -> Result<ElementData, String> {
    let id = row
        .get_ref(0)
        .ok()
        .and_then(|v| v.as_blob().ok())
        .and_then(|b| Uuid::from_slice(b).ok())
        .ok_or("malformed id")?;
    let created_at: String = row.get(1).map_err(|e| e.to_string())?;
    let metadata: String = row.get(2).map_err(|e| e.to_string())?;
    Ok(ElementData {
        id,
        created_at: DateTime::parse_from_rfc3339(&created_at)
            .map_err(|e| format!("element {id}: created_at: {e}"))?
            .with_timezone(&Utc),
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| format!("element {id}: metadata: {e}"))?,
        content: row.get(3).map_err(|e| e.to_string())?,
    })
}

/// A projection row's value from its JSON text column.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// A projection row's JSON text column.
pub(super) fn to_json(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}
