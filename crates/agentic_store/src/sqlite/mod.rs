//! [`SqliteStore`]: the embedded, durable [`EventStore`] — one home directory
//! holding `lion.db` (SQLite, WAL, `synchronous=FULL`) and `HEAD`.
//!
//! Appends go through one group-commit writer thread per process
//! ([`writer`]), which also updates the projections (`*_projection`) in the
//! append's transaction; reads ([`reads`]) use a small pool of reader
//! connections, which WAL lets run beside the writer. Several processes may
//! open the same home at once.
//!
//! Opening checks, once, that the home has not lost its log ([`recognise`]):
//! a missing or empty `lion.db` is a new log only in a home that holds no
//! trace of an earlier one, and `HEAD` must not record more (or other)
//! events than the log holds. A damaged home is refused before anything is
//! written to it ([`StoreError::Corrupt`]). [`SqliteStore::open_read_only`]
//! opens a home for checking it ([`replay`]: verify and replay) without
//! changing any of its files.

mod agent_projection;
mod checkpoint;
mod head_file;
mod plugin_projection;
mod reads;
mod recognise;
mod replay;
mod schema;
mod tail;
mod task_projection;
mod workflow_projection;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use agentic_core::plugin::PluginRecord;
use agentic_core::store::encode_batch;
use agentic_core::workflow::RunRecord;
use agentic_core::{
    AgentView, AppendReceipt, ChainHead, Cursor, ElementData, EventEnvelope, EventStore,
    ExpectedVersion, NewEvent, Page, PluginSnapshot, State, StoreError, Subscription, TaskFilter,
    TaskRecord,
};
use async_trait::async_trait;

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use head_file::HeadFile;
use head_file::{RecorderStatus, Recording};
use reads::{Access, Readers};
use recognise::{
    DbState, check_before_writing, check_recorded_head, read_only_connection, recognise,
    refuse_if_history, shared_home_lock,
};
pub use replay::VerifyReport;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
use schema::{DbFile, Layout, ReadOnly};
use tail::Tail;
pub use writer::CommitCounters;
use writer::{Request, Writer};

/// File name of the database inside a home.
pub const DB_FILE: &str = "lion.db";
/// File name of the recorded chain head inside a home.
pub const HEAD_FILE: &str = "HEAD";

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
    /// Longest WAL (pages of 4 KiB) before the writer starts it over once it
    /// is copied into the database, so commits overwrite WAL blocks instead
    /// of growing the file (see the `checkpoint` module). Small commits
    /// start it over sooner, after about 256 of them. Bounds the WAL to
    /// about this size plus one checkpoint's worth of appends.
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
    /// The newest records this store's writer committed.
    tail: Arc<Tail>,
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
            deferred: Vec::new(),
            tail: Arc::default(),
        };
        let stats = writer.stats.clone();
        let tail = writer.tail.clone();
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
            tail,
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
            tail: Arc::default(),
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
        let events = encode_batch(events)?;
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

    async fn import(&self, records: Vec<EventEnvelope>) -> Result<ChainHead, StoreError> {
        let (reply, head) = oneshot::channel();
        self.sender()?
            .send(Request::Import { records, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        head.await.map_err(|_| StoreError::Closed)?
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

    fn recent(&self, from: u64, limit: usize) -> Option<Vec<EventEnvelope>> {
        self.tail.read(from, limit)
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

    async fn workflow(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        self.read(move |r| r.workflow(id)).await
    }

    async fn workflows(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<RunRecord>, StoreError> {
        self.read(move |r| r.workflows(filter, after, limit)).await
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

    fn commit_counters(&self) -> Option<&CommitCounters> {
        Some(&self.stats)
    }

    fn subscribe(self: Arc<Self>, from: u64) -> Subscription {
        Subscription::new(self, from)
    }
}
