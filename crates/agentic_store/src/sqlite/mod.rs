//! [`SqliteStore`]: the embedded, durable [`EventStore`] — one home directory
//! holding `lion.db` (SQLite, WAL, `synchronous=FULL`) and `HEAD`.
//!
//! Appends go through one group-commit writer thread per process
//! ([`writer`]); reads use a small pool of reader connections, which WAL lets
//! run beside the writer. Several processes may open the same home at once.

mod agent_projection;
mod checkpoint;
mod head_file;
mod plugin_projection;
mod schema;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use agentic_core::store::batch_stream;
use agentic_core::{
    AppendReceipt, ChainHead, ChainVerifier, ElementData, EventEnvelope, EventStore,
    ExpectedVersion, Hash, NewEvent, PluginSnapshot, State, StoreError, Subscription, SystemEvent,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use head_file::HeadFile;
use schema::DbFile;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use writer::CommitCounters;
use writer::{Request, Writer};

/// File name of the database inside a home.
pub const DB_FILE: &str = "lion.db";
/// File name of the recorded chain head inside a home.
pub const HEAD_FILE: &str = "HEAD";

/// Files a home may hold besides the database; a directory holding anything
/// else and no database is not a lion home.
const HOME_FILES: &[&str] = &[
    DB_FILE,
    HEAD_FILE,
    "HEAD.lock",
    "lion.db-wal",
    "lion.db-shm",
    "lion.db-journal",
    "kernel.lock",
    "kernel.sock",
    "plugins",
    "config.toml",
];

/// How often a waiting subscriber re-reads the log for commits made by other
/// processes (commits of this process wake it at once).
const CROSS_PROCESS_POLL: Duration = Duration::from_millis(100);

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a commit waits for another process's write lock before
    /// failing with [`StoreError::Locked`].
    pub busy_timeout: Duration,
    /// Most events committed in one transaction.
    pub max_events_per_commit: usize,
    /// Append requests that may wait for the writer before appenders are
    /// slowed down (backpressure).
    pub writer_queue: usize,
    /// A CPU to pin the group-commit writer thread to (see [`crate::cpu`]);
    /// `None` lets it run anywhere.
    pub writer_cpu: Option<usize>,
    /// WAL length (pages of 4 KiB) from which the writer starts the WAL over
    /// once it is copied into the database, so commits overwrite WAL blocks
    /// instead of growing the file (see the `checkpoint` module). Bounds the
    /// WAL to about this size plus one checkpoint's worth of appends.
    pub wal_recycle_pages: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_events_per_commit: 8192,
            writer_queue: 4096,
            writer_cpu: None,
            wal_recycle_pages: 16_384,
        }
    }
}

/// The outcome of a successful [`SqliteStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records checked.
    pub events: u64,
    /// The verified head of the log.
    pub head: ChainHead,
    /// The head recorded in `HEAD`, if the file exists.
    pub recorded_head: Option<ChainHead>,
}

/// The durable event store of one lion home.
pub struct SqliteStore {
    home: PathBuf,
    head_path: PathBuf,
    requests: Option<mpsc::Sender<Request>>,
    head_rx: watch::Receiver<ChainHead>,
    readers: Arc<Readers>,
    /// The writer thread, joined first on drop.
    writer: Option<JoinHandle<()>>,
    /// The checkpointer, stopped once the writer's connection is closed.
    checkpointer: checkpoint::Checkpointer,
    /// The HEAD recorder, which stops once the writer has.
    recorder: Option<JoinHandle<()>>,
    stats: Arc<CommitCounters>,
}

/// The pool of reader connections, shared with blocking read tasks.
struct Readers {
    db: DbFile,
    pool: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens the store in `home`, creating the directory and an empty store if
    /// there is none. Refuses, without changing anything, a directory that
    /// holds other files, a database of another application or a damaged one.
    pub fn open(home: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let db = DbFile {
            path: home.join(DB_FILE),
            busy_timeout: options.busy_timeout,
        };
        let head_path = home.join(HEAD_FILE);
        let recognise = || -> Result<(), StoreError> {
            prepare_home(home, &db.path, &head_path)?;
            if db.path.exists() {
                schema::check_file(&db.path)?;
            }
            Ok(())
        };
        // First without creating anything (not even the lock file), so that
        // what is not a lion home is left exactly as it was.
        recognise()?;
        let head_file = HeadFile::open(head_path.clone())?;
        // Openers take turns: SQLite refuses at once (without waiting for the
        // busy timeout) to switch a database to WAL while another connection
        // is creating it.
        let conn = head_file.exclusive(|| {
            recognise()?;
            let mut conn = schema::connect(&db)?;
            schema::initialise(&mut conn, &db)?;
            Ok(conn)
        })?;
        let head = writer::read_head(&conn).map_err(|e| db.err(e))?;
        let mut conn = conn;
        conn.set_prepared_statement_cache_capacity(writer::STATEMENT_CACHE);
        let (checkpointer, recycler) =
            checkpoint::start(&mut conn, &db, options.wal_recycle_pages)?;
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(options.writer_queue.max(1));
        let (head_recorder, recorder) = head_file::spawn_recorder(head_file)?;
        let writer = Writer {
            conn,
            db: db.clone(),
            head_recorder,
            recycler,
            head_tx,
            max_events_per_commit: options.max_events_per_commit.max(1),
            stats: Arc::default(),
            streams: HashMap::new(),
            last_head: None,
        };
        let stats = writer.stats.clone();
        let writer_cpu = options.writer_cpu;
        let handle = std::thread::Builder::new()
            .name("lion-store-writer".into())
            .spawn(move || {
                if let Some(cpu) = writer_cpu
                    && let Err(e) = crate::cpu::pin_current_thread(&[cpu])
                {
                    tracing::warn!(cpu, error = %e, "cannot pin the store writer to its CPU");
                }
                writer.run(rx)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            home: home.to_path_buf(),
            head_path,
            requests: Some(tx),
            head_rx,
            readers: Arc::new(Readers {
                db,
                pool: Mutex::new(Vec::new()),
            }),
            writer: Some(handle),
            checkpointer,
            recorder: Some(recorder),
            stats,
        })
    }

    /// The home directory this store lives in.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// What this process's writer has committed so far.
    pub fn commit_stats(&self) -> &CommitCounters {
        &self.stats
    }

    /// The head recorded in the `HEAD` file (`None` if there is none yet).
    pub fn recorded_head(&self) -> Result<Option<ChainHead>, StoreError> {
        head_file::read(&self.head_path)
    }

    /// `PRAGMA synchronous` of every connection this store holds (the writer's
    /// first); 2 means FULL.
    pub async fn synchronous_levels(&self) -> Result<Vec<i64>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(Request::Synchronous(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let mut levels = vec![rx.await.map_err(|_| StoreError::Closed)??];
        // Make sure at least one reader exists, then ask every pooled one.
        self.readers.with(|_| Ok(()))?;
        let pool = self
            .readers
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for conn in pool.iter() {
            levels.push(
                conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .map_err(|e| self.readers.db.err(e))?,
            );
        }
        Ok(levels)
    }

    /// Checks the whole log: SQLite's own page check, then every record's
    /// position, link and hash, then the recorded head (truncation).
    ///
    /// Runs on the calling thread; it reads the whole log.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let recorded = self.recorded_head()?;
        self.readers.with(|conn| {
            let result: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if result != "ok" {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(result),
                ));
            }
            Ok(())
        })?;
        let mut verifier = ChainVerifier::watching(recorded.map_or(0, |h| h.seq));
        let mut chain_error = None;
        self.readers.scan(1, |e| match verifier.check(&e) {
            Ok(()) => true,
            Err(err) => {
                chain_error = Some(err);
                false
            }
        })?;
        if let Some(e) = chain_error {
            return Err(e.into());
        }
        let head = verifier.finish(recorded)?;
        Ok(VerifyReport {
            events: head.seq,
            head,
            recorded_head: recorded,
        })
    }

    /// Folds the whole log into a fresh [`State`] (replay) and returns it with
    /// the number of events applied. With `verify_chain`, every record's
    /// chain link and hash are checked too.
    ///
    /// Reading runs on a second thread, overlapping with folding on the
    /// calling one; it reads the whole log.
    pub fn replay(&self, verify_chain: bool) -> Result<(State, u64), StoreError> {
        let length = self.readers.with(writer::read_head)?.seq;
        let mut state = State::with_capacity(usize::try_from(length).unwrap_or(0));
        let mut count = 0u64;
        let readers = &self.readers;
        let mut fold = |item: Replayed| {
            count += 1;
            let (seq, event) = item.decode();
            apply(&mut state, seq, event?)
        };
        if verify_chain {
            // Reader: rows, their order and links. Folder: apply. Each
            // record's hash check and decoding go to whichever of the two is
            // free (see `pipeline`); errors still come out in log order.
            pipeline(
                |emit| {
                    let mut verifier = ChainVerifier::new();
                    let mut broken = None;
                    readers.scan(1, |e| match verifier.check_link(&e) {
                        Ok(()) => emit(Replayed::Unsealed(e)),
                        Err(err) => {
                            broken = Some(err);
                            false
                        }
                    })?;
                    broken.map_or(Ok(()), |e| Err(e.into()))
                },
                Replayed::decode_here,
                &mut fold,
            )?;
        } else {
            // Reader: rows and decoding, straight from SQLite's buffer (a
            // copy for the folder to decode cost more than it saved).
            // Folder: apply.
            pipeline(
                |emit| {
                    readers.with(|conn| {
                        let mut stmt = conn.prepare_cached(
                            "SELECT seq, schema_version, payload FROM events ORDER BY seq",
                        )?;
                        let mut rows = stmt.query([])?;
                        while let Some(row) = rows.next()? {
                            let seq = row.get::<_, i64>(0)? as u64;
                            let version: u16 = row.get(1)?;
                            let payload = row.get_ref(2)?.as_blob()?;
                            if !emit(Replayed::Decoded(seq, decode(seq, version, payload))) {
                                break;
                            }
                        }
                        Ok(())
                    })
                },
                Replayed::decode_here,
                &mut fold,
            )?;
        }
        Ok((state, count))
    }

    /// Calls `f` with every record from seq `from` on, in order, until it
    /// returns false. Runs on the calling thread.
    pub fn scan(&self, from: u64, f: impl FnMut(EventEnvelope) -> bool) -> Result<(), StoreError> {
        self.readers.scan(from, f)
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>, StoreError> {
        self.requests.as_ref().ok_or(StoreError::Closed)
    }

    /// Runs a read on a blocking thread, off the async runtime.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Readers) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || f(&readers))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

impl Readers {
    /// Runs `f` with a pooled reader connection on the calling thread.
    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::connect(&self.db)?,
        };
        let result = f(&conn).map_err(|e| self.db.err(e));
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        result
    }

    /// Calls `f` with every record from seq `from` on, until it returns false.
    fn scan(&self, from: u64, mut f: impl FnMut(EventEnvelope) -> bool) -> Result<(), StoreError> {
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
    fn stream(
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
    fn projected_state(&self) -> Result<State, StoreError> {
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
            let mut stmt = tx.prepare_cached("SELECT record FROM tasks ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let text = row.get_ref(0)?.as_str()?;
                match serde_json::from_str(text) {
                    Ok(task) => state.load_task(task),
                    Err(e) => {
                        bad = Some(format!("tasks projection: {e}"));
                        return Ok(state);
                    }
                }
            }
            if let Err(reason) = plugin_projection::load(&tx, &mut state) {
                bad = Some(format!("plugins projection: {reason}"));
            }
            if let Err(reason) = agent_projection::load(&tx, &mut state) {
                bad = Some(format!("agents projection: {reason}"));
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
    fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it has, then stop;
        // that closes the recorder's queue, which records the last head.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.checkpointer.stop();
        if let Some(recorder) = self.recorder.take() {
            let _ = recorder.join();
        }
    }
}

/// Items handed from replay's reader thread to its folder in one message.
const REPLAY_BATCH: usize = 1024;

/// Runs `produce` on a second thread and `consume` on this one, passing items
/// in batches, so the two stages of replay overlap on two cores. `produce`
/// gets an `emit` function that returns false once the consumer has stopped.
/// When the consumer is behind (its queue is full), the producer calls
/// `ripen` on each item of the batch it was about to send, doing work the
/// consumer would otherwise do, instead of waiting idle.
/// The consumer's error wins: it is always about an earlier item.
fn pipeline<T: Send>(
    produce: impl FnOnce(&mut dyn FnMut(T) -> bool) -> Result<(), StoreError> + Send,
    ripen: impl Fn(&mut T) + Send,
    mut consume: impl FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use std::sync::mpsc::TrySendError;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
        let producer = scope.spawn(move || {
            let send = |mut batch: Vec<T>| match tx.try_send(batch) {
                Ok(()) => true,
                Err(TrySendError::Full(returned)) => {
                    batch = returned;
                    batch.iter_mut().for_each(&ripen);
                    tx.send(batch).is_ok()
                }
                Err(TrySendError::Disconnected(_)) => false,
            };
            let mut batch = Vec::with_capacity(REPLAY_BATCH);
            let result = produce(&mut |item| {
                batch.push(item);
                batch.len() < REPLAY_BATCH
                    || send(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(REPLAY_BATCH),
                    ))
            });
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            result
        });
        let mut consumed = Ok(());
        'batches: for batch in rx.iter() {
            for item in batch {
                if let Err(e) = consume(item) {
                    consumed = Err(e);
                    break 'batches;
                }
            }
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(StoreError::Backend("the replay reader panicked".into())));
        consumed.and(produced)
    })
}

/// A record on its way from replay's reader to its folder: its position
/// and link checked, its own hash not yet, and still encoded; or already
/// checked and decoded by the reader while the folder was behind.
enum Replayed {
    /// The stored record, linked into the chain but its hash not checked.
    Unsealed(EventEnvelope),
    /// The decoded event (or why the record is refused).
    Decoded(u64, Result<SystemEvent, StoreError>),
}

impl Replayed {
    /// Checks the record's hash and decodes it, in place, on this thread.
    fn decode_here(&mut self) {
        if let Replayed::Unsealed(e) = self {
            *self = Replayed::Decoded(e.seq, unseal(e));
        }
    }

    /// The record's seq and its event, checking and decoding it if need be.
    fn decode(self) -> (u64, Result<SystemEvent, StoreError>) {
        match self {
            Replayed::Unsealed(e) => (e.seq, unseal(&e)),
            Replayed::Decoded(seq, event) => (seq, event),
        }
    }
}

/// Checks a linked record's own hash, then decodes its payload.
fn unseal(e: &EventEnvelope) -> Result<SystemEvent, StoreError> {
    agentic_core::chain::check_seal(e)?;
    decode(e.seq, e.schema_version, &e.payload)
}

/// Decodes the payload of the record at `seq`.
fn decode(seq: u64, version: u16, payload: &[u8]) -> Result<SystemEvent, StoreError> {
    SystemEvent::decode(version, payload).map_err(|e| StoreError::Corrupt {
        path: format!("event log at seq {seq}"),
        reason: e.to_string(),
    })
}

/// Applies the event at `seq` to `state`.
fn apply(state: &mut State, seq: u64, event: SystemEvent) -> Result<(), StoreError> {
    state.apply_owned(event).map_err(|e| StoreError::Corrupt {
        path: format!("event log at seq {seq}"),
        reason: format!("replay refuses it: {e}"),
    })
}

/// Creates the home if needed and refuses directories that are not homes.
fn prepare_home(home: &Path, db: &Path, head: &Path) -> Result<(), StoreError> {
    let io = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(home).map_err(|e| io(home, e))?;
    if db.exists() {
        return Ok(());
    }
    if let Some(recorded) = head_file::read(head)? {
        return Err(StoreError::Corrupt {
            path: db.display().to_string(),
            reason: format!(
                "the database is missing, but HEAD records {} events: the log was deleted",
                recorded.seq
            ),
        });
    }
    let entries = std::fs::read_dir(home).map_err(|e| io(home, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(home, e))?;
        let name = entry.file_name();
        let ours = HOME_FILES.iter().any(|f| name == *f)
            || name.to_string_lossy().starts_with(head_file::TMP_PREFIX);
        if !ours {
            return Err(StoreError::NotAStore {
                path: home.display().to_string(),
                reason: format!(
                    "the directory holds other files (e.g. {}) and no {DB_FILE}",
                    name.to_string_lossy()
                ),
            });
        }
    }
    Ok(())
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
fn element(row: &Row<'_>) -> Result<ElementData, String> {
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

#[async_trait]
impl EventStore for SqliteStore {
    #[tracing::instrument(name = "append", skip_all, fields(
        correlation_id = %events.first().map(|e| e.correlation_id).unwrap_or_default(),
        events = events.len(),
    ))]
    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, StoreError> {
        batch_stream(&events, expected)?;
        let events = events
            .into_iter()
            .map(NewEvent::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, receipt) = oneshot::channel();
        self.sender()?
            .send(Request::Append {
                events,
                expected,
                reply,
                runtime: tokio::runtime::Handle::try_current().ok(),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        let (outcome, spent) = receipt.await.map_err(|_| StoreError::Closed)?;
        drop(spent); // freed here, by the appender that allocated it
        outcome
    }

    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.read(move |r| {
            let mut out = Vec::new();
            if limit > 0 {
                r.scan(from.max(1), |e| {
                    out.push(e);
                    out.len() < limit
                })?;
            }
            Ok(out)
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let stream = stream.to_owned();
        self.read(move |r| r.stream(&stream, from, limit)).await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.read(|r| r.with(writer::read_head)).await
    }

    async fn wait_for_events(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.head_rx.clone();
        tokio::select! {
            r = rx.wait_for(|h| h.seq > seq) => r.map(|_| ()).map_err(|_| StoreError::Closed),
            () = tokio::time::sleep(CROSS_PROCESS_POLL) => Ok(()),
        }
    }

    async fn projected_state(&self) -> Result<State, StoreError> {
        self.read(Readers::projected_state).await
    }

    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        let name = name.to_owned();
        self.read(move |r| r.plugin(&name)).await
    }

    fn subscribe(self: Arc<Self>, from: u64) -> Subscription {
        Subscription::new(self, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items as the pipeline's stages see them: `true` once ripened.
    type Item = (usize, bool);

    #[test]
    fn a_pipeline_keeps_order_and_ripens_batches_when_its_consumer_is_behind() {
        const ITEMS: usize = 20 * REPLAY_BATCH + 7;
        let (seen, ripened) = (Mutex::new(Vec::new()), Mutex::new(0));
        // The consumer holds the first item until the producer has had to
        // ripen a batch (its queue of four batches was full).
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let first_tx = Mutex::new(Some(first_tx));
        pipeline(
            |emit| {
                for i in 0..ITEMS {
                    if !emit((i, false)) {
                        break;
                    }
                }
                Ok(())
            },
            |item: &mut Item| {
                item.1 = true;
                if let Some(tx) = first_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
            },
            |item: Item| {
                if item.0 == 0 {
                    first_rx.recv().expect("a ripened batch");
                }
                *ripened.lock().expect("lock") += usize::from(item.1);
                seen.lock().expect("lock").push(item.0);
                Ok(())
            },
        )
        .expect("pipeline");
        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen, (0..ITEMS).collect::<Vec<_>>());
        assert!(ripened.into_inner().expect("lock") >= REPLAY_BATCH);
    }

    #[test]
    fn a_consumer_error_stops_the_pipeline_and_is_returned() {
        let result = pipeline(
            |emit| {
                let mut i = 0;
                while emit(i) {
                    i += 1;
                }
                Ok(())
            },
            |_: &mut usize| {},
            |i: usize| {
                if i == 3 * REPLAY_BATCH {
                    Err(StoreError::Backend("stop".into()))
                } else {
                    Ok(())
                }
            },
        );
        assert!(matches!(result, Err(StoreError::Backend(m)) if m == "stop"));
    }
}
