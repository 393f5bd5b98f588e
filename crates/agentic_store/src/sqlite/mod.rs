//! [`SqliteStore`]: the embedded, durable [`EventStore`] — one home directory
//! holding `lion.db` (SQLite, WAL, `synchronous=FULL`) and `HEAD`.
//!
//! Appends go through one group-commit writer thread per process
//! ([`writer`]); reads use a small pool of reader connections, which WAL lets
//! run beside the writer. Several processes may open the same home at once.
//!
//! Opening checks, once, that the home has not lost its log: a missing or
//! empty `lion.db` is a new log only in a home that holds no trace of an
//! earlier one, and `HEAD` must not record more (or other) events than the
//! log holds. A damaged home is refused before anything is written to it
//! ([`StoreError::Corrupt`]). [`SqliteStore::open_read_only`] opens a home
//! for checking it (verify, replay) without changing any of its files.

mod agent_projection;
mod checkpoint;
mod head_file;
mod plugin_projection;
mod reads;
mod schema;
mod task_projection;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use agentic_core::plugin::PluginRecord;
use agentic_core::store::batch_stream;
use agentic_core::{
    AgentView, AppendReceipt, ChainHead, ChainVerifier, Cursor, ElementData, EventEnvelope,
    EventStore, ExpectedVersion, Hash, NewEvent, Page, PluginSnapshot, State, StoreError,
    Subscription, SystemEvent, TaskFilter, TaskRecord,
};
use async_trait::async_trait;

use rusqlite::Connection;
use rusqlite::OptionalExtension;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use head_file::HeadFile;
use head_file::{RecorderStatus, Recording};
use reads::{Access, Readers};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
use schema::{DbFile, Layout, ReadOnly};
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

/// Files a home holds only once it has had a log (besides a `HEAD.tmp.*`
/// file and a WAL with content): one of them beside a missing or empty
/// `lion.db` means the log was lost, not that the home is new. Not in the
/// list: `HEAD.lock` (created before the database), `config.toml` (an
/// operator may write it first), and an empty WAL or its index (what a
/// creation interrupted by a crash leaves).
const HISTORY_FILES: &[&str] = &[HEAD_FILE, "kernel.lock", "kernel.sock", "plugins"];

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
    /// The writer's queue; `None` on a store opened read-only.
    requests: Option<mpsc::Sender<Request>>,
    head_rx: watch::Receiver<ChainHead>,
    /// Keeps `head_rx` open on a read-only store, which has no writer.
    _head_tx: Option<watch::Sender<ChainHead>>,
    readers: Arc<Readers>,
    /// A shared lock on `HEAD.lock`, held while a read-only store reads
    /// `lion.db` as an immutable file, so that no writer opens the home
    /// meanwhile (see [`ReadOnly::Immutable`]). Declared after `readers`,
    /// so it is released after their connections are closed.
    _snapshot_lock: Option<File>,
    /// The writer thread, joined first on drop.
    writer: Option<JoinHandle<()>>,
    /// The checkpointer, stopped once the writer's connection is closed.
    checkpointer: Option<checkpoint::Checkpointer>,
    /// The HEAD recorder, which stops once the writer and this store have
    /// let go of its queue.
    recorder: Option<JoinHandle<()>>,
    /// This store's way to the recorder, for [`SqliteStore::record_head`].
    to_recorder: Option<std::sync::mpsc::Sender<Recording>>,
    /// What the HEAD recorder could not record.
    recorder_status: Option<Arc<RecorderStatus>>,
    stats: Arc<CommitCounters>,
}

/// What a home's `lion.db` is, before SQLite opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbState {
    /// There is no database, or an empty file with no WAL content: opening
    /// it starts a new log.
    New,
    /// There is a database (perhaps still all in its WAL).
    Present,
}

impl SqliteStore {
    /// Opens the store in `home`, creating the directory and an empty store if
    /// there is none. Refuses, without changing anything, a directory that
    /// holds other files, a database of another application or a damaged one
    /// — including a home that lost its log: a missing or empty database
    /// beside traces of an earlier one, or a log that `HEAD` says is missing
    /// committed events or was rewritten. Those checks run here, once; they
    /// cost appends nothing.
    pub fn open(home: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let db = DbFile {
            path: home.join(DB_FILE),
            busy_timeout: options.busy_timeout,
        };
        let head_path = home.join(HEAD_FILE);
        // First without creating anything (not even the lock file), so that
        // what is not a lion home, or one that lost its log, is left exactly
        // as it was.
        recognise(home, &db.path, true)?;
        let head_file = HeadFile::open(head_path.clone())?;
        // Openers take turns: SQLite refuses at once (without waiting for the
        // busy timeout) to switch a database to WAL while another connection
        // is creating it.
        let (conn, head) = head_file.exclusive(|| {
            if recognise(home, &db.path, true)? == DbState::Present {
                check_before_writing(home, &db, &head_path)?;
            }
            let mut conn = schema::connect(&db)?;
            schema::initialise(&mut conn, &db, || refuse_if_history(home, &db.path))?;
            let head = check_recorded_head(&conn, &db, &head_path)?;
            Ok((conn, head))
        })?;
        let mut conn = conn;
        conn.set_prepared_statement_cache_capacity(writer::STATEMENT_CACHE);
        let (checkpointer, recycler) =
            checkpoint::start(&mut conn, &db, options.wal_recycle_pages)?;
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(options.writer_queue.max(1));
        let head_file::Recorder {
            queue: head_recorder,
            status: recorder_status,
            thread: recorder,
        } = head_file::spawn_recorder(head_file)?;
        let to_recorder = Some(head_recorder.clone());
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
        let handle = std::thread::Builder::new()
            .name("lion-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            home: home.to_path_buf(),
            head_path,
            requests: Some(tx),
            head_rx,
            _head_tx: None,
            readers: Arc::new(Readers {
                db,
                access: Access::ReadWrite,
                version: SCHEMA_VERSION,
                pool: Mutex::new(Vec::new()),
            }),
            _snapshot_lock: None,
            writer: Some(handle),
            checkpointer: Some(checkpointer),
            recorder: Some(recorder),
            to_recorder,
            recorder_status: Some(recorder_status),
            stats,
        })
    }

    /// Opens the store in `home` for reading only — for checks (verify,
    /// replay) that must not change what they check: no file of the home is
    /// created, written, truncated or removed, not even SQLite's `-wal` and
    /// `-shm` (see [`ReadOnly`]), and nothing is migrated. A home with no
    /// database reads as an empty log; appends fail.
    ///
    /// Refuses what [`SqliteStore::open`] refuses before it writes (a
    /// directory that is not a home, a file that is not a lion store, a
    /// truncated file, a missing or empty database beside traces of a log);
    /// the log's consistency with `HEAD` is left to [`SqliteStore::verify`]
    /// and [`SqliteStore::replay`], which report it in detail.
    pub fn open_read_only(home: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let db = DbFile {
            path: home.join(DB_FILE),
            busy_timeout: options.busy_timeout,
        };
        let head_path = home.join(HEAD_FILE);
        // Taken before looking at the WAL, so no writer can open the home
        // (and start one) between that look and the end of the reading.
        let lock = shared_home_lock(home)?;
        let state = recognise(home, &db.path, false)?;
        let mut access = Access::Empty;
        let mut version = SCHEMA_VERSION;
        let mut pool = Vec::new();
        if state == DbState::Present {
            match read_only_connection(&db)? {
                (_, _, Layout::Empty) => refuse_if_history(home, &db.path)?,
                (how, conn, Layout::Lion(v)) => {
                    access = Access::ReadOnly(how);
                    version = v;
                    pool.push(conn);
                }
            }
        }
        let keep_lock = matches!(access, Access::ReadOnly(ReadOnly::Immutable));
        let readers = Readers {
            db,
            access,
            version,
            pool: Mutex::new(pool),
        };
        let head = readers.with_head()?;
        let (head_tx, head_rx) = watch::channel(head);
        Ok(Self {
            home: home.to_path_buf(),
            head_path,
            requests: None,
            head_rx,
            _head_tx: Some(head_tx),
            readers: Arc::new(readers),
            _snapshot_lock: lock.filter(|_| keep_lock),
            writer: None,
            checkpointer: None,
            recorder: None,
            to_recorder: None,
            recorder_status: None,
            stats: Arc::default(),
        })
    }

    /// Records the newest head this store committed in `HEAD` now, instead
    /// of within the recorder's interval, and says whether `HEAD` records it
    /// (or a newer one). Blocks until the recorder has tried; on a read-only
    /// store there is nothing to record.
    pub fn record_head(&self) -> Result<(), StoreError> {
        let Some(to_recorder) = &self.to_recorder else {
            return Ok(());
        };
        let (reply, answer) = std::sync::mpsc::channel();
        to_recorder
            .send(Recording::Flush(reply))
            .map_err(|_| StoreError::Closed)?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Why the newest committed head is not recorded in `HEAD`, if this
    /// store failed to record it (`None` once a later attempt succeeded, and
    /// on a read-only store). The commits themselves stand: `HEAD` only lags.
    pub fn head_recording_failure(&self) -> Option<StoreError> {
        self.recorder_status.as_ref().and_then(|s| s.failure())
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
    ///
    /// With `verify_chain`, the log is also checked against the head
    /// recorded in `HEAD` (as [`SqliteStore::verify`] does), so a log cut
    /// short does not replay as if it were whole.
    pub fn replay(&self, verify_chain: bool) -> Result<(State, u64), StoreError> {
        // HEAD first: it never leads the log, so the log read after it is
        // at least as long.
        let recorded = if verify_chain {
            self.recorded_head()?
        } else {
            None
        };
        let length = self.readers.with_head()?.seq;
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
                    let mut verifier = ChainVerifier::watching(recorded.map_or(0, |h| h.seq));
                    let mut broken = None;
                    readers.scan(1, |e| match verifier.check_link(&e) {
                        Ok(()) => emit(Replayed::Unsealed(e)),
                        Err(err) => {
                            broken = Some(err);
                            false
                        }
                    })?;
                    match broken {
                        Some(e) => Err(e.into()),
                        None => verifier.finish(recorded).map(|_| ()).map_err(Into::into),
                    }
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
        self.requests.as_ref().ok_or_else(|| {
            StoreError::Backend(format!(
                "the store of {} is open for reading only",
                self.home.display()
            ))
        })
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it has, then stop;
        // that closes the recorder's queue, which records the last head.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.stop();
        }
        self.to_recorder.take();
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

/// Looks at a home before SQLite opens its database: creates the directory
/// if `create` (else a missing one is a new home), refuses a directory that is
/// not a lion home, a home that lost its log (a missing or empty database
/// beside traces of one) and a database file that is not SQLite or is cut
/// short. Changes nothing else.
fn recognise(home: &Path, db: &Path, create: bool) -> Result<DbState, StoreError> {
    let io = |p: &Path, e: std::io::Error| StoreError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    if create {
        std::fs::create_dir_all(home).map_err(|e| io(home, e))?;
    } else if !home.exists() {
        return Ok(DbState::New);
    }
    let len = match std::fs::metadata(db) {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(db, e)),
    };
    match len {
        Some(0) if !schema::wal_has_content(db) => {
            if let Err(lost) = refuse_if_history(home, db) {
                return look_again(home, db, create, lost);
            }
            Ok(DbState::New)
        }
        Some(_) => {
            schema::check_file(db)?;
            Ok(DbState::Present)
        }
        None => {
            if let Err(lost) = refuse_if_history(home, db) {
                return look_again(home, db, create, lost);
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
            Ok(DbState::New)
        }
    }
}

/// Decides whether a home that looked like it lost its log (`lost`) did, or
/// whether another opener created the log between the look at the database
/// and the look for traces: an opener that is not holding `HEAD.lock` (the
/// first look, which creates nothing, is made without it) can see the
/// database still missing and then the `HEAD` written after that opener's
/// first commit. The log has content once a trace exists, so it is looked
/// for again: the WAL first, then the database, since a checkpoint copies the
/// WAL into the database before it empties the WAL.
fn look_again(
    home: &Path,
    db: &Path,
    create: bool,
    lost: StoreError,
) -> Result<DbState, StoreError> {
    let wal = schema::wal_has_content(db);
    // A database that is still missing is refused whatever the WAL holds
    // (and so `recognise` below cannot come back here).
    let appeared = std::fs::metadata(db).is_ok_and(|m| wal || m.len() > 0);
    if appeared {
        recognise(home, db, create)
    } else {
        Err(lost)
    }
}

/// Refuses to start a new log in `home` (its database `db` is missing or
/// holds nothing) if the home holds a trace of an earlier one: `HEAD`, a
/// WAL with content, or one of [`HISTORY_FILES`]. Only a new home starts a
/// new log; anything else lost its log, and writing a new one would hide it.
fn refuse_if_history(home: &Path, db: &Path) -> Result<(), StoreError> {
    let (what, how) = match std::fs::metadata(db) {
        Ok(meta) if meta.len() == 0 => ("is empty (0 bytes)", "truncated"),
        Ok(_) => ("holds no log (no tables)", "replaced"),
        Err(_) => ("is missing", "deleted"),
    };
    let lost = |reason: String| StoreError::Corrupt {
        path: db.display().to_string(),
        reason: format!("{reason}; restore the home from a backup"),
    };
    let head = home.join(HEAD_FILE);
    if let Some(recorded) = head_file::read(&head)? {
        return Err(lost(format!(
            "the database {what}, but {} records {} events: the log was {how}",
            head.display(),
            recorded.seq
        )));
    }
    let wal = schema::sibling(db, "-wal");
    let mut trace = schema::wal_has_content(db).then_some(wal);
    if trace.is_none() && home.is_dir() {
        let entries = std::fs::read_dir(home).map_err(|e| head_file::io_error(home, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| head_file::io_error(home, &e))?;
            let name = entry.file_name();
            if HISTORY_FILES.iter().any(|f| name == *f)
                || name.to_string_lossy().starts_with(head_file::TMP_PREFIX)
            {
                trace = Some(entry.path());
                break;
            }
        }
    }
    match trace {
        Some(path) => Err(lost(format!(
            "the database {what}, but the home holds {}, left by an earlier lion: \
             its log was {how}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Checks the log against the head recorded in `HEAD` and returns the log's
/// head: a log that ends before `HEAD` lost committed events (a truncated or
/// replaced database, a WAL deleted after a crash), and one whose record at
/// `HEAD`'s position has another hash was rewritten. Either is refused, so
/// that nothing is appended to it. One indexed read; run once, at open.
fn check_recorded_head(
    conn: &Connection,
    db: &DbFile,
    head_path: &Path,
) -> Result<ChainHead, StoreError> {
    // HEAD first: it never leads the log, so the log read after it is at
    // least as long, whatever other processes commit meanwhile.
    let recorded = head_file::read(head_path)?;
    let head = reads::read_head(conn, db)?;
    let Some(recorded) = recorded else {
        return Ok(head);
    };
    let damaged = |reason: String| StoreError::Corrupt {
        path: db.path.display().to_string(),
        reason,
    };
    if recorded.seq > head.seq {
        return Err(damaged(format!(
            "its log ends at seq {}, but {} records seq {}: committed events are missing \
             (the database was truncated or replaced, or its -wal deleted after a crash); \
             restore the home from a backup",
            head.seq,
            head_path.display(),
            recorded.seq
        )));
    }
    let stored: Option<Hash> = if recorded.seq == 0 {
        Some(Hash::GENESIS)
    } else {
        conn.prepare_cached("SELECT hash FROM events WHERE seq = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([recorded.seq as i64], |r| {
                    Ok(r.get_ref(0)?
                        .as_blob()
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .map(Hash))
                })
                .optional()
            })
            .map_err(|e| db.err(e))?
            .flatten()
    };
    if stored != Some(recorded.hash) {
        return Err(damaged(format!(
            "its record at seq {} is not the one {} records: the log was rewritten; \
             restore the home from a backup",
            recorded.seq,
            head_path.display()
        )));
    }
    Ok(head)
}

/// Runs the checks of a present database ([`check_recorded_head`], and
/// [`refuse_if_history`] for one with no tables) on a read-only connection,
/// before the writable one opens it: closing that one (the last connection)
/// would copy the WAL into `lion.db` and remove it, changing a home that is
/// about to be refused. The caller holds `HEAD.lock`, so no writer opens the
/// home meanwhile. When the database cannot be read without changing a file
/// (a WAL with content but no index), the checks are left to the writable
/// connection, after SQLite's recovery of that WAL (which loses nothing).
fn check_before_writing(home: &Path, db: &DbFile, head_path: &Path) -> Result<(), StoreError> {
    match read_only_connection(db) {
        Ok((_, _, Layout::Empty)) => refuse_if_history(home, &db.path),
        Ok((_, conn, Layout::Lion(_))) => check_recorded_head(&conn, db, head_path).map(|_| ()),
        Err(StoreError::Io { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Times a read-only open looks again when the WAL and its index change
/// under it: a store closing elsewhere removes both (the index first) within
/// microseconds, and no store can open meanwhile (the caller holds
/// `HEAD.lock`), so the files settle at once; a state that lasts (a WAL
/// without its index) is reported.
const READ_ONLY_ATTEMPTS: usize = 5;
/// Pause between those looks.
const READ_ONLY_PAUSE: Duration = Duration::from_millis(2);

/// Opens a read-only connection that changes no file (see [`ReadOnly`]),
/// chosen by the files present, and reads the database's layout through it.
fn read_only_connection(db: &DbFile) -> Result<(ReadOnly, Connection, Layout), StoreError> {
    let mut attempt = 1;
    loop {
        let opened = read_only_mode(&db.path).and_then(|how| {
            let conn = schema::connect_read_only(db, how)?;
            let layout = schema::layout(&conn, db)?;
            Ok((how, conn, layout))
        });
        match opened {
            Err(StoreError::Io { .. }) if attempt < READ_ONLY_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(READ_ONLY_PAUSE);
            }
            other => return other,
        }
    }
}

/// A shared lock on the home's `HEAD.lock`, which openers take exclusively:
/// held, it keeps writers from opening the home. `None` if there is no lock
/// file (it is not created: a read-only open creates nothing).
fn shared_home_lock(home: &Path) -> Result<Option<File>, StoreError> {
    let path = home.join(HEAD_FILE).with_extension("lock");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(head_file::io_error(&path, &e)),
    };
    file.lock_shared()
        .map_err(|e| head_file::io_error(&path, &e))?;
    Ok(Some(file))
}

/// How a read-only store reads a present database (see [`ReadOnly`]).
fn read_only_mode(db: &Path) -> Result<ReadOnly, StoreError> {
    let wal = schema::sibling(db, "-wal");
    let shm = schema::sibling(db, "-shm");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).ok();
    match (wal_len, shm.exists()) {
        // No WAL, or an empty one without its index: nobody has the
        // database open, and `lion.db` holds the whole log.
        (None, _) | (Some(0), false) => Ok(ReadOnly::Immutable),
        (Some(_), true) => Ok(ReadOnly::Wal),
        (Some(_), false) => Err(StoreError::Io {
            path: shm.display().to_string(),
            message: format!(
                "missing, while {} holds commits not yet copied into {DB_FILE}: reading them \
                 read-only would have to create it; open the home once with another lion \
                 command (e.g. `lion events list --limit 1`), which recovers the WAL, then \
                 check again",
                wal.display()
            ),
        }),
    }
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
        self.read(Readers::with_head).await
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

    async fn element(&self, id: Uuid) -> Result<Option<ElementData>, StoreError> {
        self.read(move |r| r.element(id)).await
    }

    async fn elements(&self, after: Cursor, limit: usize) -> Result<Page<ElementData>, StoreError> {
        self.read(move |r| r.elements(after, limit)).await
    }

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.read(move |r| r.task(id)).await
    }

    async fn task_by_key(&self, key: &str) -> Result<Option<TaskRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |r| r.task_by_key(&key)).await
    }

    async fn tasks(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<TaskRecord>, StoreError> {
        self.read(move |r| r.tasks(filter, after, limit)).await
    }

    async fn agent(
        &self,
        name: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<AgentView>, StoreError> {
        let name = name.to_owned();
        self.read(move |r| r.agent(&name, after, limit)).await
    }

    async fn agents(&self, after: Cursor, limit: usize) -> Result<Page<AgentView>, StoreError> {
        self.read(move |r| r.agents(after, limit)).await
    }

    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        let name = name.to_owned();
        self.read(move |r| r.plugin(&name)).await
    }

    async fn plugins(&self, after: Cursor, limit: usize) -> Result<Page<PluginRecord>, StoreError> {
        self.read(move |r| r.plugins(after, limit)).await
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
