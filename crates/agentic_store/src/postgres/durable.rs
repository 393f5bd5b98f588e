//! Which committed events are durable: turns that release the head lock
//! before their flush, and the frontier readers stop at.
//!
//! While several kernels append, each commit holds the log's head lock,
//! and a commit that waited for its flush with the lock held would make
//! the kernels' flushes take turns too: one flush per kernel's turn. So a
//! writer taking turns commits *relaxed* (`synchronous_commit = off`): the
//! lock is released as soon as the commit is in the write-ahead log, and
//! the writer acknowledges the group only after a small durable
//! transaction of its own, [`FLUSH`], has committed behind it. The WAL is
//! flushed in order, so that transaction's flush covers the turn, and the
//! kernels' flushes merge in PostgreSQL's group commit instead of taking
//! turns.
//!
//! Between a relaxed commit and its flush, other connections can already
//! see the turn; if the database crashed then, the turn would be lost
//! (along with every commit after it: the WAL is replayed as a prefix).
//! No writer acts on such a turn unless its own later commit is durable,
//! which makes the turn durable first; readers outside the database must
//! not see it at all. `lion.flushes` tells them where to stop. Each row is
//! a store instance's (a kernel's, or a command's) and says:
//!
//! - `from_seq` → `turn`: the head before and after its newest relaxed
//!   commit;
//! - `flushed`: a head it made sure was durable (by a durable transaction
//!   that read that head and committed after every turn up to it).
//!
//! Every seq up to the greatest `flushed` is durable. A row whose `turn`
//! is beyond it is *pending*: its seqs after `from_seq` may not be. The
//! durable frontier is the smallest pending `from_seq`, but never below
//! the greatest `flushed`, or the head when nothing is pending
//! (the `frontier!` macro); reads of the log stop there. A writer moves
//! its row on to its next turn after its previous turn's flush committed;
//! while that flush may have failed, the row keeps its previous turn's
//! start, so nothing is left pending behind it ([`MOVE_HEAD_RELAXED`]).
//!
//! A reader of projections (or of a stream, whose versions appends compare
//! with) cannot stop at a seq. In a store that settles its reads (a
//! command's), it checks after its read whether anything is pending
//! ([`PENDING`]); if so it waits for a flush to announce the head it saw
//! durable, and after [`FLUSH_WAIT`] makes it durable itself with its own
//! [`FLUSH`]. A kernel's store does not: the kernel acts on what it reads
//! through appends, which commit after it.
//!
//! Only durable heads are announced (`NOTIFY lion_log`, and this store's
//! `committed` watch): a durable commit's own notification, [`ANNOUNCE`]
//! of what a writer's row says it flushed, or the durable head a store
//! reads (its listener when it connects, each look for abandoned turns);
//! a false notification found out is taken back from the watch. So a reader of the
//! log woken for a seq it then finds beyond the frontier (a durable commit
//! landed after a turn whose row is still pending) flushes and reads
//! again. A turn whose writer died between its commit and its flush is
//! flushed for by every open store that finds its row pending with the
//! same turn twice, a while apart ([`clear_abandoned`]); that flush, like
//! every writer's, announces the head it made durable, so a store whose
//! listener connected after a commit past a pending turn (and read the
//! durable head, below it) hears of it then.
//!
//! A writer answers an append it finds already stored only once that is
//! durable too. It refuses an append (a wrong expected version, an attempt
//! another kernel claimed, a rule of the reducer) on what it reads, pending
//! or not, and goes on with its next group; the refused caller hears of the
//! refusal only once what it rests on is durable (settled as a command's
//! read is, whatever the store's `settle_reads`), since it may act on it (a
//! kernel whose workflow move was refused rereads the run and goes on from
//! what it finds). Flushing in the writer for each refusal made the
//! kernels that lost claim races lose every race.
//!
//! Every role that uses the store needs `SELECT`, `INSERT` and `UPDATE` on
//! `lion.flushes`, readers included (`DELETE` only for tidying). If
//! `synchronous_commit` is `off` by default (for the server, the database
//! or lion's role), nothing lion commits waits for its flush, relaxed or
//! not.
//!
//! A notification on `lion_log` is taken for an announcement of a durable
//! head; any role that can connect can send one. A follower that finds the
//! log does not reach an announced head, even after a flush of its own,
//! takes it back (see `PostgresStore::read_from`); a command's read that
//! waits for an announcement could be told early by a false one, and show a
//! turn up to one flush before it is durable.

use deadpool_postgres::ClientWrapper;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use super::PgError;

/// The greatest head any row says is durable, as a scalar subquery:
/// every seq up to it is.
macro_rules! flushed {
    () => {
        "(SELECT coalesce(max(flushed), 0) FROM lion.flushes)"
    };
}

/// The durable frontier, as a scalar subquery: the newest seq every reader
/// may see (see the module's doc). `i64::MAX` when nothing is pending: a
/// read bounded by it is bounded by the head alone.
macro_rules! frontier {
    () => {
        concat!(
            "(SELECT greatest(w.seq, (SELECT coalesce(min(p.from_seq), 9223372036854775807) \
              FROM lion.flushes p WHERE p.turn > w.seq)) FROM (SELECT ",
            $crate::postgres::durable::flushed!(),
            " AS seq) w)"
        )
    };
}
pub(super) use {flushed, frontier};

/// Whether any relaxed commit is not yet known durable, and the head.
pub(super) const PENDING: &str = concat!(
    "SELECT EXISTS (SELECT FROM lion.flushes WHERE turn > ",
    flushed!(),
    "), (SELECT head_seq FROM lion.store WHERE id = 1)"
);

/// Records, in a durable transaction of its own, that the head it reads is
/// durable, for the row `$1`; returns that head. Run with the server's own
/// `synchronous_commit` (never `off`): its commit waits for the flush,
/// which covers every commit before it. It notifies nobody: PostgreSQL
/// commits the transactions that notify one at a time, flush included,
/// which would make the kernels' flushes take turns again ([`ANNOUNCE`]
/// follows it instead).
pub(super) const FLUSH: &str = "INSERT INTO lion.flushes AS f (writer, from_seq, turn, flushed) \
     SELECT $1, 0, 0, head_seq FROM lion.store WHERE id = 1 \
     ON CONFLICT (writer) DO UPDATE SET flushed = greatest(f.flushed, EXCLUDED.flushed) \
     RETURNING f.flushed";

/// Wakes the readers listening on every kernel with the head the row `$1`
/// says is durable (so a turn that rolled back, or a flush that failed,
/// announces nothing new), in a transaction that writes nothing, so it
/// waits for no flush.
pub(super) const ANNOUNCE: &str =
    "SELECT pg_notify('lion_log', flushed::text) FROM lion.flushes WHERE writer = $1";

/// Moves the head ($1, $2) in a relaxed commit, marking the writer's row
/// (`$3`) pending from the head before the move (`$4`) — or from where its
/// previous turn started, if that one may not be durable: the writer has
/// not seen its flush through (`$5`), and its row says no flush of its own
/// passed it. (Asking whether any other flush passed it would read the
/// whole table with the head locked, which cost a turn tens of
/// milliseconds under load; the writer flushes again before its next
/// group, so its old start rarely outlives one turn.) Wakes nobody: the
/// flush behind it does.
pub(super) const MOVE_HEAD_RELAXED: &str = "WITH moved AS (\
     UPDATE lion.store SET head_seq = $1, head_hash = $2 WHERE id = 1 RETURNING head_seq) \
     INSERT INTO lion.flushes AS f (writer, from_seq, turn, flushed) \
     SELECT $3, $4, head_seq, 0 FROM moved \
     ON CONFLICT (writer) DO UPDATE SET turn = EXCLUDED.turn, \
     from_seq = CASE WHEN $5 AND f.flushed < f.turn THEN f.from_seq ELSE EXCLUDED.from_seq END";

/// Forgets the rows that say nothing the greatest `flushed` does not (no
/// pending turn, an older `flushed`): those of store instances long gone,
/// or idle (an idle writer's row comes back with its next turn). Rows
/// being written are skipped, and the delete does not wait for its flush:
/// a row that comes back after a crash is as harmless as before.
const FORGET_SETTLED: &str = "\
     BEGIN; SET LOCAL synchronous_commit = off; \
     DELETE FROM lion.flushes WHERE writer IN (SELECT writer FROM lion.flushes \
     WHERE turn <= (SELECT max(flushed) FROM lion.flushes) \
     AND flushed < (SELECT max(flushed) FROM lion.flushes) FOR UPDATE SKIP LOCKED); \
     COMMIT";

/// Forgets settled rows (see [`FORGET_SETTLED`]), when a store opens; only
/// tidying, so a failure (a role that may not delete them) is logged and
/// the store opens all the same.
pub(super) async fn forget_settled(client: &tokio_postgres::Client) {
    if let Err(e) = client.batch_execute(FORGET_SETTLED).await {
        tracing::debug!(error = %e, "settled rows of lion.flushes left in place");
        let _ = client.batch_execute("ROLLBACK").await;
    }
}

/// How long a read of projections waits for a pending turn's own flush
/// before flushing itself: a flush takes milliseconds, so a turn still
/// pending after this is most likely one whose writer is gone (and one
/// flush more costs nothing but its time either way).
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// A store's readers' flushes: one at a time, each covering the ones
/// asked for while it ran.
pub(super) struct Flusher {
    /// The row this store's readers record their flushes in (not the
    /// writer's: a flush holds its row until it is durable, which a turn
    /// marking the writer's row must not wait for).
    id: Uuid,
    /// The newest head a flush of these readers made durable.
    done: Mutex<u64>,
}

impl Flusher {
    /// A flusher recording in the row `id`.
    pub fn new(id: Uuid) -> Self {
        Self {
            id,
            done: Mutex::new(0),
        }
    }

    /// Makes every commit up to `seen` durable (and known so to every
    /// reader), unless a flush of this store's readers already did; returns
    /// the newest head these readers' flushes made durable.
    pub async fn flush_past(&self, client: &ClientWrapper, seen: u64) -> Result<u64, PgError> {
        let mut done = self.done.lock().await;
        if *done < seen {
            *done = flush(client, self.id).await?.max(*done);
        }
        Ok(*done)
    }

    /// After a read of projections on `client`: returns once what it saw
    /// is durable. A turn pending then is waited for until a flush
    /// announces it durable (`announced`: the heads announced durable);
    /// one that stays pending past [`FLUSH_WAIT`] (its writer died before
    /// its flush) is flushed here.
    pub async fn settle(
        &self,
        client: &ClientWrapper,
        announced: &watch::Sender<u64>,
    ) -> Result<(), PgError> {
        let stmt = client.prepare_cached(PENDING).await?;
        let row = client.query_one(&stmt, &[]).await?;
        if !row.get::<_, bool>(0) {
            return Ok(());
        }
        let seen = row.get::<_, i64>(1).max(0) as u64;
        let mut announced = announced.subscribe();
        let announced = tokio::time::timeout(FLUSH_WAIT, announced.wait_for(|a| *a >= seen))
            .await
            .is_ok_and(|r| r.is_ok());
        if !announced {
            self.flush_past(client, seen).await?;
        }
        Ok(())
    }
}

/// The pending rows: each writer with a turn not known durable.
const PENDING_ROWS: &str = concat!(
    "SELECT writer, turn FROM lion.flushes WHERE turn > ",
    flushed!()
);

/// Flushes, for as long as the store is open, for writers that died between
/// a relaxed commit and its flush: a row pending with the same turn at two
/// looks `every` apart (a live writer flushes within a flush's time of its
/// commit; see `PostgresOptions::abandoned_after`). Without it, the turn
/// would stay hidden from the log's readers until some later commit's flush
/// covered it. Each look also tells this store's readers (`committed`) the
/// durable head it reads: a writer that died between its flush and its
/// announcement (or whose announcement failed) has told nobody. Failures
/// (the database away) are met again at the next look.
pub(super) async fn clear_abandoned(
    pool: deadpool_postgres::Pool,
    flusher: std::sync::Arc<Flusher>,
    committed: std::sync::Arc<watch::Sender<u64>>,
    every: std::time::Duration,
) {
    let mut seen: Vec<(Uuid, i64)> = Vec::new();
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let look = async {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(PENDING_ROWS).await?;
            let pending: Vec<(Uuid, i64)> = client
                .query(&stmt, &[])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let durable = super::reads::head(&**client).await?.seq;
            super::notify::publish(&committed, durable);
            if let Some(&(_, turn)) = pending.iter().find(|row| seen.contains(row)) {
                tracing::debug!(turn, "flushing for a writer that left its turn pending");
                flusher.flush_past(&client, turn.max(0) as u64).await?;
            }
            Ok::<_, PgError>(pending)
        };
        match look.await {
            Ok(pending) => seen = pending,
            Err(e) => tracing::debug!(error = %e, "cannot look for abandoned turns"),
        }
    }
}

/// Makes every commit so far durable if any turn is pending, for the row
/// `id`: for a writer about to answer a group that wrote nothing, from what
/// it read (a stored event, a version, a refusal's reason), which may be a
/// pending turn of another writer, or its own whose flush failed.
pub(super) async fn flush_if_pending(client: &ClientWrapper, id: Uuid) -> Result<(), PgError> {
    let stmt = client.prepare_cached(PENDING).await?;
    if client.query_one(&stmt, &[]).await?.get::<_, bool>(0) {
        flush(client, id).await?;
    }
    Ok(())
}

/// Runs [`FLUSH`] for the row `id`, then [`ANNOUNCE`]s the head it made
/// durable, and returns it.
pub(super) async fn flush(client: &ClientWrapper, id: Uuid) -> Result<u64, PgError> {
    let stmt = client.prepare_cached(FLUSH).await?;
    let flushed: i64 = client.query_one(&stmt, &[&id]).await?.get(0);
    let announce = client.prepare_cached(ANNOUNCE).await?;
    client.execute(&announce, &[&id]).await?;
    Ok(flushed.max(0) as u64)
}
