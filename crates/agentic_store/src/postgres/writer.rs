//! The group-commit writer of a [`super::PostgresStore`]: one task and one
//! connection per store, committing in one transaction every append that
//! arrived while the previous transaction was being committed.
//!
//! Every transaction locks the log's head row (`lion.store`) to commit,
//! and moves it: a writer that finds it locked waits for the holder to
//! commit, then sees the row the holder left. That serialises appends
//! across every kernel on the database: the chain always links to the
//! committed head, and sequence numbers are assigned in commit order — the
//! next writer gets the lock only once the previous transaction is
//! visible, so a reader never sees seq N+1 without seq N.
//!
//! A group is admitted against a head: each request is checked and applied
//! in memory against what the group needs to read (which of its event ids
//! are stored, its streams' versions, the projection rows it touches), then
//! the events, the projections and the head's move are written. A refused
//! request (wrong expected version, refused event, partial duplicate) is
//! answered with its error and writes nothing; the rest of its group
//! commits. Event ids are guessed unstored, and an element's creation to
//! open a new stream, so neither is read; a statement that fails (a wrong
//! guess — a retried append, an element created twice — or a reason the
//! checks did not foresee) fails the group, which is committed again
//! reading every event id and stream version, then request by request to
//! find the one at fault.
//!
//! Which head, three ways:
//!
//! - A writer that committed the head last, as far as it knows (no other
//!   writer has moved it since), reads no head: it admits its group
//!   against the head it left, reads what the group needs without a lock,
//!   and moves the head from there with `lion.move_head`, which locks the
//!   head row and fails (SQLSTATE `LN001`) when the head is elsewhere —
//!   the group is then committed again holding the lock, and the writer
//!   takes turns from then on. If the move passes, nothing was committed
//!   since the writer's last commit, so its reads saw the log as the head
//!   left it. A group that changes no projection row is one statement,
//!   committed on its own (one round trip); groups of new elements are
//!   admitted while the one before them commits (the `ahead` module).
//! - While other kernels append too, a commit takes the head lock before
//!   it reads anything (`SELECT … FOR UPDATE`, one round trip) and adds to
//!   its group what arrived while it waited its turn; then reads, admits,
//!   and writes with `COMMIT` in one more round trip — a relaxed commit,
//!   which releases the lock before its flush, followed in the same round
//!   trip by a flush of the writer's own that the answers wait for (the
//!   `durable` module).
//! - After a failure, the same under the lock, with nothing guessed
//!   ([`Probe::Careful`]); imports always lock first, and read their event
//!   ids (not the streams their element creations open, until a failure).
//!
//! When the connection breaks (the database restarted or is unreachable),
//! or the head stays locked past the lock timeout (a kernel paused
//! mid-commit holds it until the database ends its idle transaction), the
//! group is retried, on a new connection if need be, until `reconnect_for`
//! has passed. Retrying is safe even when the commit went through and only its
//! acknowledgement was lost: the retry finds the events stored (by id) and
//! answers with their positions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentic_core::store::CommitCounters;
use std::time::{Duration, Instant};

use agentic_core::chain::{Hash, seal};
use agentic_core::store::import;
use agentic_core::{
    AppendReceipt, ApplyError, ChainHead, EventEnvelope, ExpectedVersion, PendingEvent, StoreError,
    SystemEvent,
};
use deadpool_postgres::{ClientWrapper, Pool};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Statement;
use uuid::Uuid;

use super::PgError;
use super::durable;
use super::projection::Overlay;
use super::reads::position;

mod ahead;

/// An append waiting for the writer.
pub(super) struct Request {
    /// The encoded events, all-or-nothing.
    pub events: Vec<PendingEvent>,
    /// Expectation on the batch's stream.
    pub expected: ExpectedVersion,
    /// The records are sealed by another store (an import): they are
    /// checked to continue the log and written verbatim, not sealed here.
    pub sealed: bool,
    /// Where the outcome goes once committed.
    pub reply: oneshot::Sender<Result<AppendReceipt, StoreError>>,
}

/// The writer task's state.
pub(super) struct Writer {
    /// Its connection (a pool of one, which re-makes a broken connection).
    pub pool: Pool,
    /// Where the database is, for messages.
    pub location: Arc<str>,
    /// Publishes the newest committed sequence number to this store's readers.
    pub committed: Arc<watch::Sender<u64>>,
    /// Most events committed in one transaction; the rest wait for the next.
    pub max_events_per_commit: usize,
    /// How long a group is retried while the database is unreachable.
    pub reconnect_for: Duration,
    /// What this writer committed.
    pub stats: Arc<CommitCounters>,
    /// Whether other kernels take turns on the head with it.
    pub turns: Turns,
    /// Its row in `lion.flushes` (see the `durable` module).
    pub id: Uuid,
    /// A relaxed commit of this writer may have gone through without the
    /// flush that makes it durable: the next locked commit flushes behind
    /// it, and the writer flushes before it waits for its next group.
    pub unflushed: AtomicBool,
}

/// Reads the log's head and locks it until the transaction ends: a row
/// lock is released only once the commit is visible to every reader, and
/// a writer that waited for it reads the row as the holder committed it.
const LOCK_HEAD: &str = "SELECT head_seq, head_hash FROM lion.store WHERE id = 1 FOR UPDATE";

/// Moves the head and wakes the readers listening on every kernel.
const MOVE_HEAD: &str = "WITH moved AS (UPDATE lion.store SET head_seq = $1, head_hash = $2 \
     WHERE id = 1 RETURNING head_seq) SELECT pg_notify('lion_log', head_seq::text) FROM moved";

/// Moves the head from where the writer expects it (locking it), and wakes
/// the readers; fails (see [`PgError::is_head_moved`]) when it is elsewhere.
const MOVE_HEAD_FROM: &str = "SELECT lion.move_head($1, $2, $3, $4)";

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One group's outcome: each request's answer and the head after it.
type GroupOutcome = (Vec<Result<AppendReceipt, StoreError>>, ChainHead);

impl Writer {
    /// Serves requests until every sender is dropped.
    pub async fn run(self, mut rx: mpsc::Receiver<Request>) {
        // Requests handed back by a run of commits admitted ahead, to
        // commit the usual way, oldest first, a commit's worth at a time.
        let mut carried: std::collections::VecDeque<Request> = Default::default();
        loop {
            if self.unflushed.load(Ordering::Relaxed) {
                // A relaxed commit's flush failed and its group was
                // answered with the failure: settle it before going on,
                // so readers need not (a failure here is met again).
                if let Ok(client) = self.pool.get().await {
                    let _ = self.flush_own(&client).await;
                }
            }
            let fresh = carried.is_empty();
            let mut group = Vec::new();
            if fresh {
                match rx.recv().await {
                    Some(first) => group.push(first),
                    None => break,
                }
            }
            let mut size = 0;
            while let Some(request) = carried.pop_front() {
                size += request.events.len();
                group.push(request);
                if size >= self.max_events_per_commit {
                    break;
                }
            }
            if carried.is_empty() {
                self.gather(&mut rx, &mut group, 0);
            }
            if let Some(head) = self.turns.guess()
                && fresh
                && group.iter().all(ahead::reads_nothing)
            {
                carried = self.commit_ahead(group, head, &mut rx).await.into();
                continue;
            }
            let outcomes = self.commit_gathering(&mut group, &mut rx).await;
            for (request, outcome) in group.into_iter().zip(outcomes) {
                let _ = request.reply.send(outcome);
            }
        }
    }

    /// Adds the requests waiting in `rx` to `group`, which joins a group of
    /// `before` events, up to the most events a commit takes.
    fn gather(&self, rx: &mut mpsc::Receiver<Request>, group: &mut Vec<Request>, before: usize) {
        let mut size: usize = before + group.iter().map(|r| r.events.len()).sum::<usize>();
        while size < self.max_events_per_commit {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.events.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
    }

    /// Commits `group`. While other kernels are appending too, the first
    /// attempt takes the head lock before it reads anything, and adds to
    /// the group every request that arrived while it waited its turn: the
    /// kernels then take turns with groups as large as their queues,
    /// instead of with the groups they had when they started waiting. An
    /// attempt on the head this writer left that finds another kernel moved
    /// it is made again that way.
    async fn commit_gathering(
        &self,
        group: &mut Vec<Request>,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Vec<Result<AppendReceipt, StoreError>> {
        let gather = self.turns.others_append.load(Ordering::Relaxed);
        let mut late = Vec::new();
        let mut attempt = self
            .try_commit(group, gather.then_some((rx, &mut late)), Probe::Guess)
            .await;
        if attempt.as_ref().is_err_and(PgError::is_head_moved) {
            // Another kernel appended since this writer's last commit.
            self.turns.others_append.store(true, Ordering::Relaxed);
            attempt = self
                .try_commit(group, Some((rx, &mut late)), Probe::Guess)
                .await;
        }
        group.append(&mut late);
        match attempt {
            Ok((outcomes, head)) => {
                self.published(head);
                outcomes
            }
            Err(e) => self.commit(group, e, Probe::Guess).await,
        }
    }

    /// Flushes (and announces) behind this writer's relaxed commits, one of
    /// which may have gone through without its flush or its announcement.
    async fn flush_own(&self, client: &ClientWrapper) -> Result<(), PgError> {
        durable::flush(client, self.id).await?;
        self.unflushed.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Tells this store's readers of a commit.
    fn published(&self, head: ChainHead) {
        super::notify::publish(&self.committed, head.seq);
    }

    /// Commits a group whose last attempt (probing as `probe` says) failed
    /// with `error`: again after a passing failure, until `reconnect_for`
    /// has passed; probing every stream after any other failure (a stream
    /// guessed new may not have been); then request by request, to find the
    /// one at fault.
    async fn commit(
        &self,
        group: &[Request],
        mut error: PgError,
        mut probe: Probe,
    ) -> Vec<Result<AppendReceipt, StoreError>> {
        let deadline = Instant::now() + self.reconnect_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match error {
                e if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(
                        location = %self.location,
                        error = %e,
                        "the commit failed for a passing reason; committing again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // It may have committed, and only its answer been lost.
                    probe = Probe::Careful;
                }
                e if !e.is_transient() && probe == Probe::Guess => probe = Probe::Careful,
                e if group.len() > 1 && !e.is_transient() => {
                    let mut outcomes = Vec::with_capacity(group.len());
                    for request in group {
                        let alone = std::slice::from_ref(request);
                        let outcome = match self.try_commit(alone, None, Probe::Careful).await {
                            Ok((outcome, head)) => {
                                self.published(head);
                                outcome
                            }
                            Err(e) => Box::pin(self.commit(alone, e, Probe::Careful)).await,
                        };
                        outcomes.extend(outcome);
                    }
                    return outcomes;
                }
                e => {
                    let error = e.into_store(&self.location);
                    return group.iter().map(|_| Err(error.clone())).collect();
                }
            }
            match self.try_commit(group, None, probe).await {
                Ok((outcomes, head)) => {
                    self.published(head);
                    return outcomes;
                }
                Err(e) => error = e,
            }
        }
    }

    /// One attempt at committing a group in one transaction: against the
    /// head this writer left, if it guesses (see the module's doc), moving
    /// it from there with the writes; else in two round trips, `BEGIN`, the
    /// head's lock, the head and every read the group needs, pipelined (the
    /// server runs them in order, so the reads see the log as the lock
    /// holder), then every write and `COMMIT`, pipelined.
    ///
    /// With `late`, the lock and the head are a round trip of their own,
    /// after which the requests waiting in the queue join the group (in the
    /// vector given).
    async fn try_commit(
        &self,
        group: &[Request],
        late: Option<Late<'_>>,
        probe: Probe,
    ) -> Result<GroupOutcome, PgError> {
        let client = self.pool.get().await?;
        // Every statement is prepared before any is pipelined: a statement
        // prepared part-way would let a later one (COMMIT) overtake it.
        let head = client.prepare_cached(LOCK_HEAD).await?;
        let move_head = client.prepare_cached(MOVE_HEAD).await?;
        let move_head_from = client.prepare_cached(MOVE_HEAD_FROM).await?;
        prepare(&client).await?;
        Overlay::prepare(&client).await?;
        let statements = Statements {
            head,
            move_head,
            move_head_from,
            move_head_relaxed: client.prepare_cached(durable::MOVE_HEAD_RELAXED).await?,
            flush: client.prepare_cached(durable::FLUSH).await?,
            announce: client.prepare_cached(durable::ANNOUNCE).await?,
        };
        let result = self
            .commit_on(&client, group, late, probe, &statements)
            .await;
        if result.is_err() {
            // Whatever the transaction's state, end it before the
            // connection goes back to the pool (a broken one is dropped).
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// [`Writer::try_commit`] on a connection whose statements are prepared.
    async fn commit_on(
        &self,
        client: &ClientWrapper,
        group: &[Request],
        late: Option<Late<'_>>,
        probe: Probe,
        statements: &Statements,
    ) -> Result<GroupOutcome, PgError> {
        let Statements {
            head,
            move_head,
            move_head_from,
            move_head_relaxed,
            flush: flush_stmt,
            announce,
        } = statements;
        // A writer that committed the head last, as far as it knows, admits
        // its group against that head with no lock and no transaction yet:
        // the head is checked as it is moved, in the pipeline of the writes
        // (one round trip for a group that reads nothing). If another
        // writer moved it meanwhile, the commit fails and is made again
        // holding the lock. The group's reads, if any, then see the log as
        // the head it expects left it.
        // (Not for imports: a record refused as not continuing the guessed
        // head would be refused with nothing written to find the guess
        // wrong.)
        let guessed = match (&late, probe) {
            (None, Probe::Guess) if !group.iter().any(|r| r.sealed) => self.turns.guess(),
            _ => None,
        };
        // BEGIN, then the head, locked.
        let start = || async {
            let (_, row) = tokio::try_join!(
                // Read committed whatever the database's default: each
                // statement after the lock must see the holder's commit.
                async {
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                        .await
                        .map_err(PgError::from)
                },
                async { client.query_one(head, &[]).await.map_err(PgError::from) },
            )?;
            head_of(row.get(0), row.get(1))
        };
        let mut early = None;
        let group: Vec<&Request> = match late {
            Some((rx, late)) => {
                early = Some(start().await?);
                let before = group.iter().map(|r| r.events.len()).sum();
                self.gather(rx, late, before);
                group.iter().chain(late.iter()).collect()
            }
            None => group.iter().collect(),
        };
        let events = || group.iter().flat_map(|r| &r.events);
        // An element's creation opens its stream: guessed new when its
        // request expects nothing of it, its stream is not probed (if it
        // exists, the log's unique index refuses the group, which is then
        // committed again probing every stream).
        let mut streams: Vec<&str> = group
            .iter()
            .flat_map(|r| r.events.iter().map(move |e| (r, e)))
            .filter(|(r, e)| {
                probe == Probe::Careful
                    || r.expected != ExpectedVersion::Any
                    || !matches!(e.event, SystemEvent::ElementCreated { .. })
            })
            .map(|(_, e)| e.record.stream.as_str())
            .collect();
        streams.sort_unstable();
        streams.dedup();
        // Event ids are fresh too, but for a retry: guessed unstored, they
        // are not probed either (a stored one makes the log's unique index
        // refuse the group, which is then committed again probing them) —
        // but for an import's, whose retry is found before its chain is
        // checked.
        let ids: Vec<Uuid> = group
            .iter()
            .filter(|r| probe == Probe::Careful || r.sealed)
            .flat_map(|r| r.events.iter().map(|e| e.record.event_id))
            .collect();
        let reads = async {
            tokio::try_join!(
                stored_ids(client, &ids),
                stream_versions(client, &streams),
                Overlay::load(client, events().map(|e| &e.event)),
            )
        };
        let (found, (mut stored, mut versions, mut overlay)) = match (early, guessed) {
            (Some(head), _) | (None, Some(head)) => (head, reads.await?),
            (None, None) => tokio::try_join!(start(), reads)?,
        };
        if guessed.is_none() {
            self.turns.saw(found);
        }
        let mut head = found;
        let recorded_at = EventEnvelope::now();
        let mut rows = Vec::new();
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group.iter().copied() {
            let outcome = admit(
                request,
                &mut Admission {
                    head: &mut head,
                    stored: &mut stored,
                    versions: &mut versions,
                    overlay: &mut overlay,
                    rows: &mut rows,
                    recorded_at,
                },
            );
            outcomes.push(outcome);
        }
        if probe == Probe::Guess {
            retries_found(client, &group, &mut outcomes).await?;
        }
        if rows.is_empty() {
            if guessed.is_none() {
                client.batch_execute("ROLLBACK").await?;
            }
            // An append found stored may be in a relaxed commit (this
            // writer's, whose flush failed, or another kernel's) not yet
            // durable: it is not acknowledged, nor the head published,
            // until it is. Refusals are answered at once, and the refused
            // caller waits for durability itself (see the `durable`
            // module): under contention most groups that write nothing are
            // claims another kernel won, and a flush each here would slow
            // the losers' writers down until they lost every race.
            if outcomes.iter().any(Result::is_ok) {
                // This writer's own turn may be durable already with its
                // announcement lost: a flush of its own announces it.
                match self.unflushed.load(Ordering::Relaxed) {
                    true => self.flush_own(client).await?,
                    false => durable::flush_if_pending(client, self.id).await?,
                }
                return Ok((outcomes, head));
            }
            return Ok((outcomes, self.turns.last().unwrap_or(ChainHead::EMPTY)));
        }
        // If a write fails, the server answers the COMMIT behind it with a
        // rollback; the write's error is what this returns.
        // Everything is prepared before anything is sent, so the writes go
        // out in this order, all at once, and the COMMIT last.
        let writes = overlay.writes(client).await?;
        match guessed {
            // The events alone, with the head moved from the guess: one
            // statement, committed on its own.
            Some(from) if writes.is_empty() => {
                let insert = client.prepare_cached(INSERT_EVENTS_MOVING_HEAD).await?;
                insert_events(client, &insert, &rows, Some((from, head))).await?;
            }
            // The transaction starts with moving the head from the guess
            // (which locks it).
            Some(from) => {
                let insert = client.prepare_cached(INSERT_EVENTS).await?;
                let (from_seq, from_hash) = (position(from.seq), from.hash.0.to_vec());
                let (seq, hash) = (position(head.seq), head.hash.0.to_vec());
                tokio::try_join!(
                    async {
                        client
                            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                            .await
                            .map_err(PgError::from)
                    },
                    async {
                        client
                            .execute(move_head_from, &[&from_seq, &from_hash, &seq, &hash])
                            .await
                            .map_err(PgError::from)
                    },
                    insert_events(client, &insert, &rows, None),
                    writes.send(client),
                    async { client.batch_execute("COMMIT").await.map_err(PgError::from) },
                )?;
            }
            // The head is locked: the writes, its move, the COMMIT —
            // relaxed while other kernels take turns, and then a flush
            // behind it (see the `durable` module).
            None => {
                let insert = client.prepare_cached(INSERT_EVENTS).await?;
                let (seq, hash) = (position(head.seq), head.hash.0.to_vec());
                let relaxed = self.turns.others_append.load(Ordering::Relaxed);
                let unflushed = self.unflushed.load(Ordering::Relaxed);
                let flush = relaxed || unflushed;
                if relaxed {
                    // Set before it is sent: its commit may go through
                    // with its answer lost.
                    self.unflushed.store(true, Ordering::Relaxed);
                }
                let from_seq = position(found.seq);
                tokio::try_join!(
                    async {
                        if relaxed {
                            client
                                .batch_execute("SET LOCAL synchronous_commit = off")
                                .await?;
                        }
                        Ok::<_, PgError>(())
                    },
                    insert_events(client, &insert, &rows, None),
                    writes.send(client),
                    async {
                        let moved = match relaxed {
                            true => {
                                client
                                    .execute(
                                        move_head_relaxed,
                                        &[&seq, &hash, &self.id, &from_seq, &unflushed],
                                    )
                                    .await
                            }
                            false => client.execute(move_head, &[&seq, &hash]).await,
                        };
                        moved.map_err(PgError::from)
                    },
                    async { client.batch_execute("COMMIT").await.map_err(PgError::from) },
                    async {
                        if flush {
                            client.query_one(flush_stmt, &[&self.id]).await?;
                        }
                        Ok::<_, PgError>(())
                    },
                    async {
                        // Behind the flush: what the writer's row says is
                        // durable, whatever became of the turn and the flush.
                        if flush {
                            client.execute(announce, &[&self.id]).await?;
                        }
                        Ok::<_, PgError>(())
                    },
                )?;
                if flush {
                    self.unflushed.store(false, Ordering::Relaxed);
                }
            }
        }
        self.turns.committed(head);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok((outcomes, head))
    }
}

/// Which streams' versions a commit reads before admitting its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Every stream but those an element's creation opens, guessed new
    /// (element ids are fresh), and no event id, guessed unstored (event
    /// ids are fresh, but for retries: found when the guess fails).
    Guess,
    /// Every stream the group writes to, and every event id.
    Careful,
}

/// Where requests that arrive while a commit waits for the head lock go:
/// the writer's queue, and the vector they join.
type Late<'a> = (&'a mut mpsc::Receiver<Request>, &'a mut Vec<Request>);

/// Whether other kernels append to the log too: the head a commit finds
/// is not the one this writer's last commit left.
#[derive(Debug, Default)]
pub(super) struct Turns {
    /// The head after this writer's last commit.
    last: std::sync::Mutex<Option<ChainHead>>,
    /// Another writer committed between this writer's last two commits (or
    /// moved the head this writer expected): take turns, locking first.
    others_append: std::sync::atomic::AtomicBool,
}

impl Turns {
    /// Notes the head a commit found once it held the lock.
    fn saw(&self, head: ChainHead) {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.others_append
            .store(last.is_some_and(|last| last != head), Ordering::Relaxed);
    }

    /// The head to admit a group against without reading it: the one this
    /// writer's last commit left, unless others append too.
    fn guess(&self) -> Option<ChainHead> {
        match self.others_append.load(Ordering::Relaxed) {
            true => None,
            false => self.last(),
        }
    }

    /// The head this writer's last commit left, if it committed.
    fn last(&self) -> Option<ChainHead> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the head this writer's commit left.
    fn committed(&self, head: ChainHead) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }
}

/// The writer's statements on one connection.
struct Statements {
    /// Reads and locks the head ([`LOCK_HEAD`]).
    head: Statement,
    /// Moves the head and wakes readers ([`MOVE_HEAD`]).
    move_head: Statement,
    /// Moves the head from where it is expected ([`MOVE_HEAD_FROM`]).
    move_head_from: Statement,
    /// Moves the head in a relaxed commit ([`durable::MOVE_HEAD_RELAXED`]).
    move_head_relaxed: Statement,
    /// Makes the relaxed commits before it durable ([`durable::FLUSH`]).
    flush: Statement,
    /// Wakes readers once they are ([`durable::ANNOUNCE`]).
    announce: Statement,
}

/// What checking and applying one request updates.
struct Admission<'a> {
    /// The chain's head, moved on by each admitted event.
    head: &'a mut ChainHead,
    /// Event ids stored (before or in this group), with their seqs.
    stored: &'a mut HashMap<Uuid, u64>,
    /// Stream versions, moved on by each admitted event.
    versions: &'a mut HashMap<String, u64>,
    /// The projection rows the group touches.
    overlay: &'a mut Overlay,
    /// The sealed records to write.
    rows: &'a mut Vec<EventEnvelope>,
    /// The group's commit time.
    recorded_at: chrono::DateTime<chrono::Utc>,
}

/// Checks one request against the log and the projections; if it is
/// admitted, seals its events into the chain and applies them to the
/// overlay. Refusals change nothing.
fn admit(request: &Request, a: &mut Admission<'_>) -> Result<AppendReceipt, StoreError> {
    let events = &request.events;
    let seqs: Vec<Option<u64>> = events
        .iter()
        .map(|e| a.stored.get(&e.record.event_id).copied())
        .collect();
    if seqs.iter().all(Option::is_some) {
        // An import retried after its acknowledgement was lost finds its
        // records where it put them; anywhere else they are not its own.
        if let Some((e, _)) = events
            .iter()
            .zip(&seqs)
            .find(|(e, s)| request.sealed && **s != Some(e.record.seq))
        {
            return Err(StoreError::Import {
                seq: e.record.seq,
                reason: format!("event id {} is already stored", e.record.event_id),
            });
        }
        return Ok(AppendReceipt::already_stored(seqs.into_iter().flatten()));
    }
    if let Some(stored) = events.iter().zip(&seqs).find(|(_, s)| s.is_some()) {
        let id = stored.0.record.event_id;
        return Err(match request.sealed {
            true => StoreError::Import {
                seq: stored.0.record.seq,
                reason: format!("event id {id} is already stored"),
            },
            false => StoreError::PartialDuplicate(id),
        });
    }
    let mut ids: Vec<Uuid> = events.iter().map(|e| e.record.event_id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError::InvalidBatch(
            "an event id appears twice in the batch",
        ));
    }
    if request.sealed {
        return admit_sealed(events, a);
    }
    let stream = &events[0].record.stream;
    request
        .expected
        .check(stream, a.versions.get(stream).copied().unwrap_or(0))?;
    // Positions first (refusing an element created twice), then the
    // reducer's checks, then the seal: nothing is kept unless all pass.
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut placed = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let stream = event.record.stream.as_str();
        let version = versions
            .entry(stream)
            .or_insert_with(|| a.versions.get(stream).copied().unwrap_or(0));
        *version += 1;
        if let (SystemEvent::ElementCreated { element }, 2..) = (&event.event, *version) {
            return Err(StoreError::Rejected(ApplyError::DuplicateElement(
                element.id,
            )));
        }
        placed.push((a.head.seq + 1 + i as u64, *version));
    }
    let applied: Vec<(u64, &SystemEvent)> = events
        .iter()
        .zip(&placed)
        .map(|(e, (seq, _))| (*seq, &e.event))
        .collect();
    a.overlay.apply(&applied)?;
    for (event, (_, version)) in events.iter().zip(placed) {
        let mut record = event.record.clone();
        record.stream_version = version;
        record.recorded_at = a.recorded_at;
        *a.head = seal(a.head, &mut record);
        a.stored.insert(record.event_id, record.seq);
        a.versions.insert(record.stream.clone(), version);
        a.rows.push(record);
    }
    Ok(AppendReceipt {
        first_seq: a.head.seq + 1 - events.len() as u64,
        last_seq: a.head.seq,
        deduplicated: false,
    })
}

/// [`admit`] for records sealed by another store: each must continue the
/// chain and its stream, and pass the reducer's rules; they are kept as
/// they are.
fn admit_sealed(
    events: &[PendingEvent],
    a: &mut Admission<'_>,
) -> Result<AppendReceipt, StoreError> {
    let head = import::check_sealed(*a.head, events.iter().map(|e| &e.record))?;
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for e in events {
        let stream = e.record.stream.as_str();
        let current = versions
            .get(stream)
            .or_else(|| a.versions.get(stream))
            .copied()
            .unwrap_or(0);
        import::check_stream_version(&e.record, &e.event, current)?;
        versions.insert(stream, e.record.stream_version);
    }
    let applied: Vec<(u64, &SystemEvent)> =
        events.iter().map(|e| (e.record.seq, &e.event)).collect();
    a.overlay.apply(&applied)?;
    let first_seq = a.head.seq + 1;
    for e in events {
        a.stored.insert(e.record.event_id, e.record.seq);
        a.versions
            .insert(e.record.stream.clone(), e.record.stream_version);
        a.rows.push(e.record.clone());
    }
    *a.head = head;
    Ok(AppendReceipt {
        first_seq,
        last_seq: head.seq,
        deduplicated: false,
    })
}

/// Answers, as the log has them, the requests of a group admitted without
/// reading its event ids ([`Probe::Guess`]) that were refused: a refused
/// request may be the retry of one already stored (its expectation or the
/// reducer's rules held when it was first appended, not now). Reads only
/// when something was refused: inside the transaction when the head lock
/// is held, so the answer stands; else before the head is moved from where
/// the writer left it, so the answer stands if the move does (a stored
/// event stays stored either way).
async fn retries_found(
    client: &ClientWrapper,
    group: &[&Request],
    outcomes: &mut [Result<AppendReceipt, StoreError>],
) -> Result<(), PgError> {
    let refused: Vec<usize> = (0..group.len())
        .filter(|&i| outcomes[i].is_err() && !group[i].sealed)
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = refused
        .iter()
        .flat_map(|&i| group[i].events.iter().map(|e| e.record.event_id))
        .collect();
    let found = stored_ids(client, &ids).await?;
    for i in refused {
        let seqs: Vec<Option<u64>> = group[i]
            .events
            .iter()
            .map(|e| found.get(&e.record.event_id).copied())
            .collect();
        if seqs.iter().all(Option::is_some) {
            outcomes[i] = Ok(AppendReceipt::already_stored(seqs.into_iter().flatten()));
        } else if let Some((event, _)) =
            group[i].events.iter().zip(&seqs).find(|(_, s)| s.is_some())
        {
            outcomes[i] = Err(StoreError::PartialDuplicate(event.record.event_id));
        }
    }
    Ok(())
}

/// The chain head from the head row's columns.
pub(super) fn head_of(seq: i64, hash: Vec<u8>) -> Result<ChainHead, PgError> {
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| PgError::Corrupt("the log's head hash is not 32 bytes".into()))?;
    Ok(ChainHead {
        seq: u64::try_from(seq)
            .map_err(|_| PgError::Corrupt("the log's head is at a negative seq".into()))?,
        hash: Hash(hash),
    })
}

/// Which of a group's event ids are stored.
const STORED_IDS: &str = "SELECT event_id, seq FROM lion.events WHERE event_id = ANY($1)";

/// The current versions of a group's streams: one backward index probe
/// per stream, not a scan of its events.
const STREAM_VERSIONS: &str = "SELECT s, (SELECT e.stream_version FROM lion.events e \
     WHERE e.stream = s ORDER BY e.stream_version DESC LIMIT 1) FROM unnest($1::text[]) AS s";

/// A group's sealed records, in one statement.
const INSERT_EVENTS: &str = "INSERT INTO lion.events (seq, event_id, stream, stream_version, \
     recorded_at, correlation_id, causation_id, schema_version, payload, prev_hash, hash) \
     SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[], \
     $6::uuid[], $7::uuid[], $8::integer[], $9::bytea[], $10::bytea[], $11::bytea[])";

/// A group's sealed records and the head's move from where the writer
/// expects it, in one statement (its own transaction): the head is moved
/// (and locked) first, or the statement fails.
const INSERT_EVENTS_MOVING_HEAD: &str = "WITH moved AS MATERIALIZED \
     (SELECT lion.move_head($12, $13, $14, $15)) \
     INSERT INTO lion.events (seq, event_id, stream, stream_version, \
     recorded_at, correlation_id, causation_id, schema_version, payload, prev_hash, hash) \
     SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[], \
     $6::uuid[], $7::uuid[], $8::integer[], $9::bytea[], $10::bytea[], $11::bytea[]) \
     WHERE EXISTS (SELECT FROM moved)";

/// Prepares (once per connection) the writer's own statements.
async fn prepare(client: &ClientWrapper) -> Result<(), PgError> {
    for sql in [
        STORED_IDS,
        STREAM_VERSIONS,
        INSERT_EVENTS,
        INSERT_EVENTS_MOVING_HEAD,
    ] {
        client.prepare_cached(sql).await?;
    }
    Ok(())
}

/// Which of `ids` are stored, with their seqs.
async fn stored_ids(client: &ClientWrapper, ids: &[Uuid]) -> Result<HashMap<Uuid, u64>, PgError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = client.prepare_cached(STORED_IDS).await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, Uuid>(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// The current version of each of `streams` (absent: no such stream).
async fn stream_versions(
    client: &ClientWrapper,
    streams: &[&str],
) -> Result<HashMap<String, u64>, PgError> {
    if streams.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = client.prepare_cached(STREAM_VERSIONS).await?;
    let rows = client.query(&stmt, &[&streams]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<i64>>(1)? as u64)))
        .collect())
}

/// Writes the sealed records, in one statement ([`INSERT_EVENTS`]; or
/// [`INSERT_EVENTS_MOVING_HEAD`] with the head's move from `.0` to `.1`).
async fn insert_events(
    client: &ClientWrapper,
    stmt: &Statement,
    rows: &[EventEnvelope],
    moving: Option<(ChainHead, ChainHead)>,
) -> Result<(), PgError> {
    let seq: Vec<i64> = rows.iter().map(|r| position(r.seq)).collect();
    let event_id: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let stream: Vec<&str> = rows.iter().map(|r| r.stream.as_str()).collect();
    let version: Vec<i64> = rows.iter().map(|r| position(r.stream_version)).collect();
    let at: Vec<i64> = rows
        .iter()
        .map(|r| r.recorded_at.timestamp_micros())
        .collect();
    let correlation: Vec<Uuid> = rows.iter().map(|r| r.correlation_id).collect();
    let causation: Vec<Option<Uuid>> = rows.iter().map(|r| r.causation_id).collect();
    let schema: Vec<i32> = rows.iter().map(|r| i32::from(r.schema_version)).collect();
    let payload: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let prev: Vec<&[u8]> = rows.iter().map(|r| r.prev_hash.0.as_slice()).collect();
    let hash: Vec<&[u8]> = rows.iter().map(|r| r.hash.0.as_slice()).collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &seq,
        &event_id,
        &stream,
        &version,
        &at,
        &correlation,
        &causation,
        &schema,
        &payload,
        &prev,
        &hash,
    ];
    let heads = moving.map(|(from, to)| {
        let column = |head: ChainHead| (position(head.seq), head.hash.0.to_vec());
        (column(from), column(to))
    });
    if let Some(((from_seq, from_hash), (to_seq, to_hash))) = &heads {
        params.extend([
            from_seq as &(dyn tokio_postgres::types::ToSql + Sync),
            from_hash,
            to_seq,
            to_hash,
        ]);
    }
    client.execute(stmt, &params).await?;
    Ok(())
}
