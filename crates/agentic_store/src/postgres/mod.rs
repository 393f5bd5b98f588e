//! [`PostgresStore`]: the shared, durable [`EventStore`] — the log and its
//! projections in a PostgreSQL database, so that kernels on several
//! machines share one log.
//!
//! - [`schema`] creates and checks the tables (in the `lion` schema).
//! - [`writer`] is each store's group-commit writer: one connection that
//!   commits every append that arrived during the previous commit in one
//!   transaction, holding the log's head lock to commit, so
//!   appends of all kernels are serialised in commit order and the chain
//!   never forks. Sequence numbers are therefore gapless *and* in commit
//!   order: a reader following the log never skips an event that committed
//!   late, and never waits on a guess.
//! - [`durable`] says which commits are durable: while kernels take turns
//!   on the head, each commits without waiting for its flush and answers
//!   after a flush of its own; the log's readers stop at the durable
//!   frontier, and commands' reads wait until what they saw is durable.
//! - [`projection`] updates the projections in the append's transaction,
//!   through the kernel's own reducer, loading only the rows a group touches.
//! - [`reads`] are the point and paged reads, from a bounded pool.
//! - [`kernels`] is the registry of the kernels sharing the log: their
//!   leases, by the database's clock.
//! - [`blobs`] keeps plugin components by their hash, for every kernel.
//! - [`notify`] wakes readers: each head made durable is announced with
//!   `NOTIFY lion_log` (by a commit that waited for its flush, or by the
//!   flush behind relaxed turns: see [`durable`]), and a listening
//!   connection per store turns it into a wake-up. Notifications only
//!   wake; readers always re-read the log.
//!
//! Every connection runs with a statement timeout and a lock timeout, so a
//! stuck database gives a clear error instead of a hung kernel. When the
//! database restarts, the writer reconnects and commits again what was not
//! acknowledged: appends are idempotent by event id, so a commit whose
//! acknowledgement was lost is found, not written twice.

/// The condition picking elements' creations out of `lion.events`, as
/// its partial index `events_element_creations` states it: a query must
/// state it word for word for the planner to use the index.
macro_rules! element_creations {
    () => {
        "stream_version = 1 AND stream LIKE 'element:%'"
    };
}

mod blobs;
mod connect;
mod durable;
mod kernels;
mod notify;
mod projection;
mod reads;
mod schema;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use agentic_core::plugin::PluginRecord;
use agentic_core::store::live::{LiveRelay, Relayed};
use agentic_core::store::{CommitCounters, audit, encode_batch, import};
use agentic_core::workflow::RunRecord;
use agentic_core::{
    AgentView, AppendReceipt, ChainHead, Cursor, ElementData, EventEnvelope, EventStore,
    ExpectedVersion, NewEvent, Page, PendingEvent, PluginSnapshot, State, StoreError, Subscription,
    SystemEvent, TaskFilter, TaskRecord,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

pub use schema::SCHEMA_VERSION;

use crate::VerifyReport;

use writer::{Request, Writer};

/// Tuning of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections the store's reads use at once (the writer and the
    /// listener have one each besides).
    pub pool_size: usize,
    /// Longest any statement may run before the database cancels it.
    pub statement_timeout: Duration,
    /// Longest a statement waits for a lock (the log's head, held by
    /// another kernel's commit) before failing.
    pub lock_timeout: Duration,
    /// Longest a connection attempt, or a wait for a pooled connection, may
    /// take.
    pub connect_timeout: Duration,
    /// How long a connection may sit idle inside a transaction before the
    /// database ends it: a kernel paused (or cut off) in the middle of a
    /// commit holds the log's head lock, which stalls every other kernel's
    /// appends until then. Keep it well under the kernels' lease.
    pub idle_in_transaction: Duration,
    /// How long the writer keeps reconnecting and retrying a group while
    /// the database is unreachable (or the log's head is locked) before
    /// failing its appends.
    pub reconnect_for: Duration,
    /// Most events committed in one transaction.
    pub max_events_per_commit: usize,
    /// Append requests that may wait for the writer before appenders are
    /// slowed down (backpressure).
    pub writer_queue: usize,
    /// Whether a read of the projections or of a stream is answered only
    /// once what it saw is durable (see the `durable` module): for commands,
    /// which show what they read. A kernel's own reads need not wait: it
    /// acts on what it read through appends, which commit after it, so
    /// their flush makes it durable first (what the API it serves shows
    /// from the projections may then run one flush ahead: see
    /// docs/shared-store.md). Reads of the log by seq and its head never
    /// show a commit before it is durable, either way.
    pub settle_reads: bool,
    /// How often an open store looks for a turn committed without waiting
    /// for its flush that is still not known durable (its writer died, or
    /// its flush failed): found pending at two looks in a row (so after one
    /// to two of these), it is flushed for, which makes it visible to the
    /// log's readers. Each look also tells this store's followers the
    /// durable head, in case a writer died before announcing its flush.
    pub abandoned_after: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_in_transaction: Duration::from_secs(2),
            reconnect_for: Duration::from_secs(30),
            max_events_per_commit: 8192,
            writer_queue: 4096,
            settle_reads: true,
            abandoned_after: Duration::from_secs(1),
        }
    }
}

/// An event store in a PostgreSQL database, shared by every kernel that
/// opens the same database.
pub struct PostgresStore {
    /// Where the database is, for messages (no user name or password).
    location: Arc<str>,
    /// The store's id, made when its tables were created.
    store_id: Uuid,
    requests: mpsc::Sender<Request>,
    /// The newest sequence number known to be committed durably (by any
    /// kernel): what the writer commits, and what the listener and the
    /// look for abandoned turns hear of.
    committed: Arc<watch::Sender<u64>>,
    pool: Pool,
    stats: Arc<CommitCounters>,
    listener: tokio::task::JoinHandle<()>,
    /// Live events relayed by the kernels of this store.
    live: broadcast::Sender<Relayed>,
    /// Signs the live events this store relays (see [`notify`]).
    relay_key: ring::hmac::Key,
    /// Makes durable what a read saw before it is answered (see
    /// [`durable`]).
    flusher: Arc<durable::Flusher>,
    /// Flushes for writers that died before their flush
    /// ([`durable::clear_abandoned`]).
    abandoned: tokio::task::JoinHandle<()>,
    /// Whether reads of the projections wait for that
    /// ([`PostgresOptions::settle_reads`]).
    settle_reads: bool,
}

/// Relayed live events a slow receiver may fall behind by before it
/// misses some.
const LIVE_BUFFER: usize = 1024;

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.abandoned.abort();
    }
}

impl PostgresStore {
    /// Opens the store in the database `url` names (`postgres://…`),
    /// creating lion's tables in an empty database, and moving a store of
    /// the previous layout to this one. Refuses a database whose `lion`
    /// schema is not a lion store, or one of another layout version. Must
    /// be called within a tokio runtime: the writer and the listener run as
    /// tasks on it.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let (config, tls) = connection_config(url, &options)?;
        let location: Arc<str> = describe(&config).into();
        let err = |e: PgError| e.into_store(&location);
        let (mut setup, connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| err(e.into()))?;
        let driver = tokio::spawn(connection);
        let opened = schema::initialise(&mut setup).await.map_err(err)?;
        durable::forget_settled(&setup).await;
        let store_id = opened.store_id;
        let relay_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &opened.relay_key);
        let head = reads::head(&setup).await.map_err(err)?;
        drop(setup);
        let _ = driver.await;
        let pool = pool(&config, &tls, options.pool_size.max(1), &options)?;
        let writer_pool = pool_of_one(&writer_config(&config), &tls, &options)?;
        let committed = Arc::new(watch::Sender::new(head.seq));
        let live = broadcast::channel(LIVE_BUFFER).0;
        let flusher = Arc::new(durable::Flusher::new(Uuid::now_v7()));
        let listener = tokio::spawn(notify::listen(
            (config.clone(), tls),
            location.clone(),
            committed.clone(),
            (live.clone(), relay_key.clone()),
        ));
        let (requests, rx) = mpsc::channel(options.writer_queue.max(1));
        let stats = Arc::new(CommitCounters::default());
        let writer = Writer {
            pool: writer_pool,
            location: location.clone(),
            committed: committed.clone(),
            max_events_per_commit: options.max_events_per_commit.max(1),
            reconnect_for: options.reconnect_for,
            stats: stats.clone(),
            turns: Default::default(),
            id: Uuid::now_v7(),
            unflushed: Default::default(),
        };
        tokio::spawn(writer.run(rx));
        let abandoned = tokio::spawn(durable::clear_abandoned(
            pool.clone(),
            flusher.clone(),
            committed.clone(),
            options.abandoned_after.max(Duration::from_millis(10)),
        ));
        Ok(Self {
            location,
            store_id,
            requests,
            committed,
            pool,
            stats,
            listener,
            live,
            relay_key,
            flusher,
            abandoned,
            settle_reads: options.settle_reads,
        })
    }

    /// Where the database is (`postgres://host:port/name`, without
    /// credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The store's id, made when its tables were created; the same for
    /// every kernel on this database.
    pub fn store_id(&self) -> Uuid {
        self.store_id
    }

    /// What this store's writer has committed so far.
    pub fn commit_stats(&self) -> &CommitCounters {
        &self.stats
    }

    /// Checks the whole log up to its durable head: every record's
    /// position, link and hash, and that the head (the head row, updated
    /// in each append's transaction, or the durable frontier behind it
    /// while a turn is pending) names a record of it, so a log cut short is
    /// found.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let head = audit::scan(self, |_| Ok(())).await?;
        Ok(VerifyReport {
            events: head.seq,
            head,
            recorded_head: Some(head),
        })
    }

    /// Folds the whole log into a fresh [`State`], checking the chain as
    /// [`PostgresStore::verify`] does; returns it with the number of events.
    pub async fn replay(&self) -> Result<(State, u64), StoreError> {
        audit::replay(self).await
    }

    /// A connection from the read pool.
    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::from(e).into_store(&self.location))
    }

    /// Runs `f` on a pooled connection, mapping its errors.
    async fn query<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let mut client = self.reader().await?;
        f(&mut client)
            .await
            .map_err(|e| e.into_store(&self.location))
    }

    /// Runs a read of projections on a pooled connection, and answers it
    /// once what it saw is durable, if the store settles its reads (see
    /// [`durable`]).
    async fn read<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        self.query(async |c| {
            let value = f(c).await?;
            if self.settle_reads {
                self.flusher.settle(c, &self.committed).await?;
            }
            Ok(value)
        })
        .await
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, StoreError> {
        let events = encode_batch(events)?;
        let (reply, receipt) = oneshot::channel();
        self.requests
            .send(Request {
                events,
                expected,
                sealed: false,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        let answer = receipt.await.map_err(|_| StoreError::Closed)?;
        if let Err(
            StoreError::WrongExpectedVersion { .. }
            | StoreError::PartialDuplicate(_)
            | StoreError::Rejected(_),
        ) = &answer
        {
            // A refusal rests on what the writer read, which may be a turn
            // not yet durable: the caller (who may act on it, as a kernel
            // rereading a workflow run does) hears of it once that is,
            // and the writer goes on meanwhile (see [`durable`]). If that
            // cannot be made sure (the database away), the caller gets that
            // error instead: a refusal it must not act on yet.
            self.query(async |c| self.flusher.settle(c, &self.committed).await)
                .await?;
        }
        answer
    }

    async fn import(&self, records: Vec<EventEnvelope>) -> Result<ChainHead, StoreError> {
        let Some(last) = records.last() else {
            return self.head().await;
        };
        let head = ChainHead {
            seq: last.seq,
            hash: last.hash,
        };
        let events = records
            .into_iter()
            .map(|record| {
                let event = import::decode(&record)?;
                Ok(PendingEvent { record, event })
            })
            .collect::<Result<_, StoreError>>()?;
        let (reply, receipt) = oneshot::channel();
        self.requests
            .send(Request {
                events,
                expected: ExpectedVersion::Any,
                sealed: true,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        receipt.await.map_err(|_| StoreError::Closed)??;
        Ok(head)
    }

    /// Reads up to the durable frontier (see [`durable`]). Finding nothing
    /// there, though a commit at `from` or beyond was announced (one that
    /// waited for its flush, after a relaxed one whose flush is not
    /// recorded), makes the log durable up to the head and reads again.
    /// Finding nothing still: if the head that flush made durable is below
    /// the announced one, the announcement was not lion's (any role that
    /// can connect may notify), and it is taken back (the watch set to the
    /// durable head), so followers wait for the next real one instead of
    /// reading in a loop; if it reaches it, the store is corrupt.
    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.query(async |c| {
            let events = reads::events_from(c, from, limit).await?;
            let announced = *self.committed.borrow();
            if !events.is_empty() || limit == 0 || announced < from.max(1) {
                return Ok(events);
            }
            let durable = self.flusher.flush_past(c, announced).await?;
            let events = reads::events_from(c, from, limit).await?;
            if events.is_empty() && durable >= announced {
                // A flush of this store's recorded the log durable there.
                return Err(PgError::Corrupt(format!(
                    "the log was made durable up to seq {durable}, \
                     but holds nothing from seq {from} up to there"
                )));
            }
            if events.is_empty() {
                tracing::warn!(
                    announced,
                    durable,
                    "a notification on {} announced a head the log does not reach; ignored",
                    notify::CHANNEL
                );
                self.committed.send_if_modified(|seq| {
                    if *seq == announced {
                        *seq = durable;
                    }
                    false
                });
                // A real head announced meanwhile was dropped under the
                // false one: read it.
                let head = reads::head(&***c).await?.seq;
                notify::publish(&self.committed, head);
            }
            Ok(events)
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.read(async |c| reads::stream(c, stream, from, limit).await)
            .await
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        self.query(async |c| {
            let client: &tokio_postgres::Client = c;
            reads::head(client).await
        })
        .await
    }

    async fn wait_for_events(&self, seq: u64) -> Result<(), StoreError> {
        self.committed
            .subscribe()
            .wait_for(|c| *c > seq)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }

    async fn projected_state(&self) -> Result<State, StoreError> {
        self.read(async |c| reads::projected_state(c).await).await
    }

    async fn element(&self, id: Uuid) -> Result<Option<ElementData>, StoreError> {
        self.read(async |c| reads::element(c, id).await).await
    }

    async fn elements(&self, after: Cursor, limit: usize) -> Result<Page<ElementData>, StoreError> {
        self.read(async |c| reads::elements(c, after, limit).await)
            .await
    }

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.read(async |c| reads::task(c, id).await).await
    }

    async fn task_by_key(&self, key: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.read(async |c| reads::task_by_key(c, key).await).await
    }

    async fn tasks(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<TaskRecord>, StoreError> {
        self.read(async |c| reads::tasks(c, filter, after, limit).await)
            .await
    }

    async fn workflow(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        self.read(async |c| reads::workflow(c, id).await).await
    }

    async fn workflows(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<RunRecord>, StoreError> {
        self.read(async |c| reads::workflows(c, filter, after, limit).await)
            .await
    }

    async fn agent(
        &self,
        name: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<AgentView>, StoreError> {
        self.read(async |c| reads::agent(c, name, after, limit).await)
            .await
    }

    async fn agents(&self, after: Cursor, limit: usize) -> Result<Page<AgentView>, StoreError> {
        self.read(async |c| reads::agents(c, after, limit).await)
            .await
    }

    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        self.read(async |c| reads::plugin(c, name).await).await
    }

    async fn plugins(&self, after: Cursor, limit: usize) -> Result<Page<PluginRecord>, StoreError> {
        self.read(async |c| reads::plugins(c, after, limit).await)
            .await
    }

    fn kernels(&self) -> Option<&dyn agentic_core::store::kernels::KernelRegistry> {
        Some(self)
    }

    fn live_relay(&self) -> Option<&dyn LiveRelay> {
        Some(self)
    }

    fn blobs(&self) -> Option<&dyn agentic_core::store::blobs::BlobStore> {
        Some(self)
    }

    fn commit_counters(&self) -> Option<&CommitCounters> {
        Some(&self.stats)
    }

    fn subscribe(self: Arc<Self>, from: u64) -> Subscription {
        Subscription::new(self, from)
    }
}

#[async_trait]
impl LiveRelay for PostgresStore {
    /// Sends the events with `NOTIFY lion_live`, as many to a notification
    /// as fit, each notification signed ([`notify::sign`]); an event too
    /// large for a notification on its own is not relayed (it reaches other
    /// kernels through the log once committed, if it is committed).
    async fn send(&self, from: Uuid, events: &[SystemEvent]) -> Result<(), StoreError> {
        for payload in notify::payloads(&self.relay_key, from, events) {
            self.query(async |c| {
                let stmt = c.prepare_cached(RELAY_LIVE).await?;
                c.execute(&stmt, &[&notify::LIVE_CHANNEL, &payload]).await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    fn receive(&self) -> broadcast::Receiver<Relayed> {
        self.live.subscribe()
    }
}

/// Relays one notification of live events.
const RELAY_LIVE: &str = "SELECT pg_notify($1, $2)";

/// The connection settings of `url`, with lion's timeouts and a name the
/// database's activity views show.
fn connection_config(
    url: &str,
    options: &PostgresOptions,
) -> Result<(tokio_postgres::Config, connect::Tls), StoreError> {
    let (mut config, tls) = connect::parse(url)?;
    if config.get_application_name().is_none() {
        config.application_name("lion");
    }
    let timeouts = format!(
        "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
        options.statement_timeout.as_millis(),
        options.lock_timeout.as_millis(),
        options.idle_in_transaction.as_millis(),
    );
    let combined = match config.get_options() {
        Some(theirs) => format!("{theirs} {timeouts}"),
        None => timeouts,
    };
    config.options(&combined);
    config.connect_timeout(options.connect_timeout);
    // A database that vanished (its machine gone) is noticed in seconds,
    // not hours.
    config.keepalives_idle(Duration::from_secs(10));
    Ok((config, tls))
}

/// The connection settings and TLS of `url`, for connections of lion's
/// own beside a store's (the benches' baselines).
pub(crate) fn connection_settings(
    url: &str,
) -> Result<(tokio_postgres::Config, connect::Tls), StoreError> {
    connect::parse(url)
}

/// The writer's connection settings: every statement it runs while it
/// holds, or is about to take, the head lock is an index probe or an
/// insert, and must stay one. Its
/// statements are prepared once per connection, and PostgreSQL may settle
/// on a generic plan while a new store's tables are nearly empty — a
/// sequential scan, kept (until the tables are next analyzed) as they
/// grow, with the head lock held. Turning sequential scans off for this
/// connection keeps the probes on their indexes whatever the statistics say.
/// Its transactions read committed whatever the database's default, the
/// one-statement commits included (see the `writer` module).
fn writer_config(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = config.clone();
    let options = config.get_options().unwrap_or_default();
    config.options(format!(
        "{options} -c enable_seqscan=off -c default_transaction_isolation=read\\ committed"
    ));
    config
}

/// A pool of up to `size` connections.
fn pool(
    config: &tokio_postgres::Config,
    tls: &connect::Tls,
    size: usize,
    options: &PostgresOptions,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.statement_timeout))
        .create_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot make a connection pool: {e}")))
}

/// The writer's own connection, re-made by the pool when it breaks.
fn pool_of_one(
    config: &tokio_postgres::Config,
    tls: &connect::Tls,
    options: &PostgresOptions,
) -> Result<Pool, StoreError> {
    pool(config, tls, 1, options)
}

/// `postgres://host:port/dbname`, naming where a config points without its
/// credentials.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{host}:{port}/{db}")
}

/// What went wrong talking to PostgreSQL, before it is named for the caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// The database or the connection to it failed.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("{0}")]
    Pool(String),
    /// The database holds something that is not a lion store.
    #[error("{0}")]
    NotAStore(String),
    /// A stored row could not be read back.
    #[error("{0}")]
    Corrupt(String),
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Db(e),
            other => PgError::Pool(other.to_string()),
        }
    }
}

/// The SQLSTATE `lion.move_head` fails with when the head is elsewhere.
const HEAD_MOVED: &str = "LN001";

impl PgError {
    /// True when the failure passes: the connection failed (the database
    /// restarted, went away, or could not be reached), or a lock was held
    /// past the lock timeout (by a kernel that was paused mid-commit, until
    /// the database ends its transaction). Worth trying again.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            PgError::Pool(_) => true,
            PgError::Db(e) => {
                let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
                e.is_closed()
                    || io
                    || e.code().is_some_and(|code| {
                        code.code().starts_with("08")
                            || *code == SqlState::LOCK_NOT_AVAILABLE
                            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                            || *code == SqlState::ADMIN_SHUTDOWN
                            || *code == SqlState::CRASH_SHUTDOWN
                            || *code == SqlState::CANNOT_CONNECT_NOW
                    })
            }
            PgError::NotAStore(_) | PgError::Corrupt(_) => false,
        }
    }

    /// True when a writer found the log's head elsewhere than it expected
    /// (`lion.move_head` refused to move it): another writer committed.
    pub(crate) fn is_head_moved(&self) -> bool {
        matches!(self, PgError::Db(e) if e.code().is_some_and(|c| c.code() == HEAD_MOVED))
    }

    /// The store error this is, naming the database at `location`.
    pub(crate) fn into_store(self, location: &str) -> StoreError {
        match self {
            PgError::NotAStore(reason) => StoreError::NotAStore {
                path: location.to_owned(),
                reason,
            },
            PgError::Corrupt(reason) => StoreError::Corrupt {
                path: location.to_owned(),
                reason,
            },
            PgError::Pool(reason) => {
                StoreError::Backend(format!("PostgreSQL at {location}: {reason}"))
            }
            PgError::Db(e) => match e.code() {
                Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => {
                    StoreError::Backend(format!(
                        "PostgreSQL at {location}: gave up waiting for a lock past the lock timeout \
                     (another kernel's commit holds the log's head)"
                    ))
                }
                Some(code) if *code == SqlState::QUERY_CANCELED => StoreError::Backend(format!(
                    "PostgreSQL at {location}: a statement ran past the statement timeout"
                )),
                _ => StoreError::Backend(format!("PostgreSQL at {location}: {}", message(&e))),
            },
        }
    }
}

/// A tokio-postgres error as one line: the server's message when there is
/// one, else the client's with its cause.
fn message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
