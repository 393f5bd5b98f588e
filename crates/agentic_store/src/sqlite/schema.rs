//! Opening a home's `lion.db`: recognising (or creating) a lion store,
//! refusing anything else without touching it, and the connection settings
//! every connection runs with — including the read-only ones, which change
//! no file of the home (see [`ReadOnly`]).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentic_core::StoreError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::head_file::io_error;

/// `PRAGMA application_id` of a lion store: "lion" in ASCII.
pub const APPLICATION_ID: i32 = 0x6C69_6F6E;

/// Version of the table layout (`PRAGMA user_version`): [`SCHEMA`] is
/// version 1, and [`MIGRATIONS`]`[i]` takes version `i + 1` to `i + 2`.
pub const SCHEMA_VERSION: i32 = 1 + MIGRATIONS.len() as i32;

/// Steps from each schema version to the next, applied in order on open.
const MIGRATIONS: &[&str] = &[
    // 1 → 2: the projection of task events.
    "CREATE TABLE tasks (
        seq             INTEGER PRIMARY KEY, -- the submitting event: submission order
        id              BLOB    NOT NULL UNIQUE,
        idempotency_key TEXT    UNIQUE,
        record          TEXT    NOT NULL     -- the TaskRecord, JSON
    );",
    // 2 → 3: the projection of plugin events.
    "CREATE TABLE plugins (
        name                 TEXT    PRIMARY KEY,
        seq                  INTEGER NOT NULL UNIQUE, -- the installing event: install order
        installed            TEXT    NOT NULL,        -- the InstalledPlugin, JSON
        status               TEXT    NOT NULL,        -- active | quarantined
        calls                INTEGER NOT NULL,
        succeeded            INTEGER NOT NULL,
        failed               INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        artifacts            TEXT    NOT NULL         -- artifact key -> sha256, JSON
    );
    CREATE TABLE plugin_kv (
        plugin TEXT NOT NULL,
        key    TEXT NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID;",
    // 3 → 4: the projection of LLM agent events.
    "CREATE TABLE agents (
        name   TEXT    PRIMARY KEY,
        seq    INTEGER NOT NULL,  -- the first spawning event: spawn order
        record TEXT    NOT NULL   -- the AgentRecord, JSON
    );",
    // 4 → 5: `elements` without a unique index on `id`. An element's
    // creation is always the first event of its own stream, so the unique
    // index on (stream, stream_version) already refuses a second one, and
    // every append paid for a fifth B-tree.
    "CREATE TABLE elements_v5 (
        seq        INTEGER PRIMARY KEY, -- the creating event: creation order
        id         BLOB    NOT NULL,
        created_at TEXT    NOT NULL,    -- RFC 3339, exact
        metadata   TEXT    NOT NULL,    -- JSON object
        content    TEXT
    );
    INSERT INTO elements_v5 (seq, id, created_at, metadata, content)
        SELECT seq, id, created_at, metadata, content FROM elements;
    DROP TABLE elements;
    ALTER TABLE elements_v5 RENAME TO elements;",
    // 5 → 6: each install's id beside its row, so a key-value write of a
    // call that outlived its install is told apart without parsing the
    // install's JSON (installs recorded before ids existed have none).
    "ALTER TABLE plugins ADD COLUMN install_id TEXT;",
    // 6 → 7: reads that do not grow with the log. Unfinished tasks are
    // found through a partial index (a starting kernel takes them over);
    // agents are paged in spawn order; an agent's conversation is rows,
    // appended one per message instead of the whole conversation being
    // rewritten into the agent's JSON on every answer.
    "ALTER TABLE tasks ADD COLUMN unfinished INTEGER NOT NULL DEFAULT 0;
    UPDATE tasks SET unfinished = json_extract(record, '$.status') IN ('pending', 'running');
    CREATE INDEX tasks_unfinished ON tasks(seq) WHERE unfinished = 1;
    CREATE TABLE agent_messages (
        agent   TEXT    NOT NULL,
        n       INTEGER NOT NULL, -- 0-based place in the conversation
        message TEXT    NOT NULL, -- the ChatMessage, JSON
        PRIMARY KEY (agent, n)
    ) WITHOUT ROWID;
    INSERT INTO agent_messages (agent, n, message)
        SELECT agents.name, m.key, m.value
        FROM agents, json_each(agents.record, '$.messages') AS m;
    ALTER TABLE agents ADD COLUMN messages INTEGER NOT NULL DEFAULT 0;
    UPDATE agents SET messages = json_array_length(record, '$.messages'),
                      record = json_set(record, '$.messages', json('[]'));
    CREATE INDEX agents_by_seq ON agents(seq);
    -- Elements created off their own stream (`element:<id>`), which logs
    -- written before schema 5 may hold: `element(id)` finds the others
    -- through their stream's first event, these by id. None are added
    -- since (the writer refuses such a creation).
    CREATE TABLE elements_off_stream (
        id  BLOB    PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO elements_off_stream (id, seq)
        SELECT e.id, e.seq FROM elements e JOIN events v ON v.seq = e.seq
        WHERE v.stream_version != 1 OR v.stream != 'element:' || (
            SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4)
                   || '-' || substr(h, 17, 4) || '-' || substr(h, 21, 12)
            FROM (SELECT lower(hex(e.id)) AS h));",
    // 7 → 8: the projection of workflow runs; the unfinished ones (what a
    // starting kernel drives) through a partial index.
    "CREATE TABLE workflows (
        seq        INTEGER PRIMARY KEY, -- the starting event: start order
        id         BLOB    NOT NULL UNIQUE,
        record     TEXT    NOT NULL,    -- the RunRecord, JSON
        unfinished INTEGER NOT NULL
    );
    CREATE INDEX workflows_unfinished ON workflows(seq) WHERE unfinished = 1;",
];

/// The table layout. `events` is append-only (triggers refuse UPDATE and
/// DELETE); `elements` is the projection of element events, written in the
/// same transaction as the events it reflects.
const SCHEMA: &str = "
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since the Unix epoch
    correlation_id BLOB    NOT NULL,
    causation_id   BLOB,
    schema_version INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    prev_hash      BLOB    NOT NULL,
    hash           BLOB    NOT NULL
);
CREATE UNIQUE INDEX events_by_stream ON events(stream, stream_version);
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;

CREATE TABLE elements (
    seq        INTEGER PRIMARY KEY, -- the creating event: creation order
    id         BLOB    NOT NULL UNIQUE,
    created_at TEXT    NOT NULL,    -- RFC 3339, exact
    metadata   TEXT    NOT NULL,    -- JSON object
    content    TEXT
);
";

/// The 16 bytes every SQLite database file starts with.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Checks a database file's header before SQLite opens it, so that a file
/// which is not a database, or was cut short, is refused without being touched.
pub fn check_file(path: &Path) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let mut file = fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let len = file.metadata().map_err(|e| io_error(path, &e))?.len();
    if len == 0 {
        return Ok(()); // an empty file is a database SQLite has not written yet
    }
    let mut header = [0u8; 100];
    file.read_exact(&mut header).map_err(|_| {
        corrupt(format!(
            "file is {len} bytes, shorter than a database header"
        ))
    })?;
    if &header[..16] != SQLITE_MAGIC {
        return Err(StoreError::NotAStore {
            path: path.display().to_string(),
            reason: "the file is not an SQLite database".into(),
        });
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // The page count is valid only when the change counter matches
    // "version-valid-for" (bytes 24 and 92 of the header). And while a WAL
    // file has content, a shorter file is no proof of damage: a checkpoint
    // (perhaps in another process, perhaps interrupted by a crash and redone
    // at the next open) writes the header page before the pages after it.
    let valid = header[24..28] == header[92..96];
    if valid && pages * page_size > len && !wal_has_content(path) {
        return Err(corrupt(format!(
            "file is truncated: its header counts {pages} pages of {page_size} bytes, \
             but it holds {len} bytes"
        )));
    }
    Ok(())
}

/// Path of a file SQLite keeps beside the database: `suffix` is `-wal` or `-shm`.
pub fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// Whether the database's WAL file exists and is not empty.
pub fn wal_has_content(db: &Path) -> bool {
    fs::metadata(sibling(db, "-wal")).is_ok_and(|m| m.len() > 0)
}

/// How a read-only connection reads the database without writing, creating
/// or truncating any file of the home. (A plain read-only SQLite connection
/// creates `-wal` and `-shm` files when they are missing, writes its read
/// marks into `-shm`, and leaves both behind.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {
    /// There is no WAL with content: `lion.db` alone holds the whole log.
    /// It is read as an immutable file (`immutable=1`): no SQLite lock, no
    /// `-wal` or `-shm` opened or created. SQLite's locks do not protect
    /// such a reader, so the caller keeps writers from opening the home
    /// meanwhile (a shared lock on `HEAD.lock`, which openers take
    /// exclusively); with no WAL, no writer has it open.
    Immutable,
    /// A WAL and its index exist (a store is open, or one crashed): read
    /// them through SQLite's read-only WAL support, with the index opened
    /// read-only (`readonly_shm=1`), so neither file is written.
    Wal,
}

/// Opens a read-only connection to the database (see [`ReadOnly`]).
pub fn connect_read_only(db: &DbFile, how: ReadOnly) -> Result<Connection, StoreError> {
    let query = match how {
        ReadOnly::Immutable => "mode=ro&immutable=1",
        ReadOnly::Wal => "mode=ro&readonly_shm=1",
    };
    let absolute = std::path::absolute(&db.path).map_err(|e| io_error(&db.path, &e))?;
    let uri = format!("file:{}?{query}", uri_path(&absolute));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).map_err(|e| db.err(e))?;
    conn.busy_timeout(db.busy_timeout).map_err(|e| db.err(e))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| db.err(e))?;
    Ok(conn)
}

/// A path as the path of an SQLite `file:` URI: every byte but unreserved
/// ASCII and `/` percent-encoded (SQLite decodes `%HH` in the path).
fn uri_path(path: &Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A connection to an empty store in memory: what a home with no database
/// yet reads as, without creating one.
pub fn empty_in_memory(db: &DbFile) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_in_memory().map_err(|e| db.err(e))?;
    initialise(&mut conn, db, || Ok(()))?;
    Ok(conn)
}

/// Opens a connection with the settings every store connection runs with:
/// WAL, `synchronous=FULL` (so a commit is durable when acknowledged) and a
/// busy timeout (so a writer waits for another process's lock).
pub fn connect(db: &DbFile) -> Result<Connection, StoreError> {
    let path = db.path.as_path();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| db.err(e))?;
    conn.busy_timeout(db.busy_timeout).map_err(|e| db.err(e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{}: cannot switch to WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
        .map_err(|e| db.err(e))?;
    // Plans must not depend on bound values: otherwise SQLite (built with
    // STAT4) re-prepares a cached statement each time a parameter changes,
    // which was a fifth of the writer's time.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| db.err(e))?;
    Ok(conn)
}

/// What a database holds, as far as lion is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Nothing at all: no tables, no application id (a new database).
    Empty,
    /// A lion store at this schema version (at most [`SCHEMA_VERSION`]).
    Lion(i32),
}

/// Reads what the database holds; refuses, naming why, a database of
/// another application, of a newer lion, or of an unknown schema version.
pub fn layout(conn: &Connection, db: &DbFile) -> Result<Layout, StoreError> {
    let path = db.path.as_path();
    let (app_id, version) = ids(conn, db)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    let not_a_store = |reason: String| StoreError::NotAStore {
        path: path.display().to_string(),
        reason,
    };
    match (app_id, version) {
        (0, 0) if tables == 0 => Ok(Layout::Empty),
        (APPLICATION_ID, v) if (1..=SCHEMA_VERSION).contains(&v) => Ok(Layout::Lion(v)),
        (APPLICATION_ID, v) if v > SCHEMA_VERSION => Err(not_a_store(format!(
            "it was written by a newer lion (schema {v}; this lion knows up to {SCHEMA_VERSION})"
        ))),
        (APPLICATION_ID, v) => Err(StoreError::Corrupt {
            path: path.display().to_string(),
            reason: format!("unknown schema version {v}"),
        }),
        _ => Err(not_a_store(
            "it is an SQLite database of another application".into(),
        )),
    }
}

/// Makes sure the database is a lion store at [`SCHEMA_VERSION`], creating
/// the tables in a new, empty database — once `may_start_log` agrees that a
/// new log may be started there. Anything else is refused unchanged.
pub fn initialise(
    conn: &mut Connection,
    db: &DbFile,
    may_start_log: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (app_id, version) = ids(conn, db)?;
    if app_id == APPLICATION_ID && version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| db.err(e))?;
    // Read again under the write lock: another process may have just created it.
    match layout(&tx, db)? {
        Layout::Empty => {
            may_start_log()?;
            tx.execute_batch(SCHEMA).map_err(|e| db.err(e))?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| db.err(e))?;
            migrate(&tx, db, 1)?;
        }
        Layout::Lion(v) if v < SCHEMA_VERSION => migrate(&tx, db, v)?,
        Layout::Lion(_) => {}
    }
    tx.commit().map_err(|e| db.err(e))
}

/// Applies the migrations from schema `from` to [`SCHEMA_VERSION`].
fn migrate(tx: &Connection, db: &DbFile, from: i32) -> Result<(), StoreError> {
    for step in &MIGRATIONS[(from - 1) as usize..] {
        tx.execute_batch(step).map_err(|e| db.err(e))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| db.err(e))
}

fn ids(conn: &Connection, db: &DbFile) -> Result<(i32, i32), StoreError> {
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    Ok((app, version))
}

/// A store's database file and how long its connections wait for a lock.
#[derive(Debug, Clone)]
pub struct DbFile {
    /// Path of `lion.db`.
    pub path: PathBuf,
    /// How long a connection waits for another process's lock.
    pub busy_timeout: Duration,
}

impl DbFile {
    /// Maps an SQLite error on this file to the store error a user can act on.
    pub fn err(&self, e: rusqlite::Error) -> StoreError {
        let path = self.path.display().to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked {
                path,
                waited_ms: u64::try_from(self.busy_timeout.as_millis()).unwrap_or(u64::MAX),
            },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path,
                reason: e.to_string(),
            },
            Some(ErrorCode::NotADatabase) => StoreError::NotAStore {
                path,
                reason: e.to_string(),
            },
            Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
                StoreError::Io {
                    path,
                    message: e.to_string(),
                }
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}
