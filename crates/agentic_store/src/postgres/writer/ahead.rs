//! Commits of new elements by a writer that committed the head last, each
//! group admitted while the one before it commits.
//!
//! A group whose admission reads nothing — every request creates elements
//! and expects nothing of its stream — is admitted against the head the
//! writer left and committed in one statement that moves the head from
//! there (see the `writer` module). While that statement is in flight the
//! writer admits the requests already queued against the head it will
//! leave, and sends the next group's statement behind it at once, so the
//! server runs one right after the other: two statements at most are in
//! flight. The second moves the head only from where the first leaves it,
//! so it commits only if the first did. If a commit fails, nothing
//! admitted ahead is kept: its requests, and the failed group's, are
//! committed again the usual way (which finds retries, duplicates and a
//! moved head).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use agentic_core::{
    AppendReceipt, ChainHead, EventEnvelope, ExpectedVersion, StoreError, SystemEvent,
};
use deadpool_postgres::ClientWrapper;
use tokio::sync::mpsc;
use tokio_postgres::Statement;

use super::{
    Admission, INSERT_EVENTS_MOVING_HEAD, Request, Writer, admit, insert_events, retries_found,
};
use crate::postgres::PgError;
use crate::postgres::durable;
use crate::postgres::projection::Overlay;

/// True for a request whose admission reads nothing: it creates elements
/// (on streams guessed new, with ids guessed unstored) and expects nothing
/// of its stream.
pub(super) fn reads_nothing(request: &Request) -> bool {
    !request.sealed
        && request.expected == ExpectedVersion::Any
        && request
            .events
            .iter()
            .all(|e| matches!(e.event, SystemEvent::ElementCreated { .. }))
}

/// Requests admitted against the head a commit before them will leave.
struct Admitted {
    /// The requests, in the order they were admitted.
    group: Vec<Request>,
    /// How many events they hold.
    events: usize,
    /// Each request's answer if the group commits.
    outcomes: Vec<Result<AppendReceipt, StoreError>>,
    /// The sealed records to write, until they are sent.
    rows: Vec<EventEnvelope>,
    /// The records sent to the server.
    sent: Arc<Vec<EventEnvelope>>,
    /// Event ids admitted here or in the group before, with their seqs (a
    /// request sent twice is answered with the first's positions).
    stored: HashMap<uuid::Uuid, u64>,
    /// Streams opened here or in the group before, at version 1.
    versions: HashMap<String, u64>,
    /// The reducer's view of what the group created.
    overlay: Overlay,
    /// The head the group's commit moves from.
    from: ChainHead,
    /// The head it leaves.
    to: ChainHead,
    /// The group's commit time, as its records say.
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Admitted {
    /// Nothing yet, to commit on `from`.
    fn on(from: ChainHead) -> Self {
        Self {
            group: Vec::new(),
            events: 0,
            outcomes: Vec::new(),
            rows: Vec::new(),
            sent: Arc::default(),
            stored: HashMap::new(),
            versions: HashMap::new(),
            overlay: Overlay::default(),
            from,
            to: from,
            recorded_at: EventEnvelope::now(),
        }
    }

    /// Nothing yet, to commit after `before` (sent): what `before` writes counts
    /// as stored (a retry of one of its requests is answered with its
    /// positions, an element it creates is not created again), which holds
    /// if `before` commits — and if it does not, neither does this.
    fn after(before: &Admitted) -> Self {
        Self {
            stored: before.sent.iter().map(|r| (r.event_id, r.seq)).collect(),
            versions: before
                .sent
                .iter()
                .map(|r| (r.stream.clone(), r.stream_version))
                .collect(),
            ..Self::on(before.to)
        }
    }

    /// Admits `request` after those already admitted.
    fn admit(&mut self, request: Request) {
        let outcome = admit(
            &request,
            &mut Admission {
                head: &mut self.to,
                stored: &mut self.stored,
                versions: &mut self.versions,
                overlay: &mut self.overlay,
                rows: &mut self.rows,
                recorded_at: self.recorded_at,
            },
        );
        self.events += request.events.len();
        self.outcomes.push(outcome);
        self.group.push(request);
    }
}

impl Writer {
    /// Commits `group` (whose requests read nothing) on `head`, the head
    /// this writer left, then the requests that read nothing queued behind
    /// it, each group admitted while the one before it commits, and sent
    /// behind it at once: the server runs the two statements back to back,
    /// and the second moves the head only from where the first leaves it,
    /// so it commits only if the first did. Returns the requests left to
    /// commit the usual way: the first that reads something, or every
    /// request not yet committed once a commit failed.
    pub(super) async fn commit_ahead(
        &self,
        group: Vec<Request>,
        head: ChainHead,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Vec<Request> {
        let prepared = async {
            let client = self.pool.get().await?;
            let insert = client.prepare_cached(INSERT_EVENTS_MOVING_HEAD).await?;
            Ok::<_, PgError>((client, insert))
        };
        let Ok((client, insert)) = prepared.await else {
            // The usual way reconnects, retries, and reports.
            return group;
        };
        let mut current = Admitted::on(head);
        for request in group {
            current.admit(request);
        }
        let mut left = Vec::new();
        let mut in_flight = match send(&client, &insert, &mut current, self.id).await {
            Ok(statement) => statement,
            Err(error) => return self.hand_back(&error, current, None, left),
        };
        loop {
            // Let the connection send the statement before the admitting
            // takes this thread.
            tokio::task::yield_now().await;
            let mut ahead = Admitted::after(&current);
            self.admit_queued(rx, &mut ahead, &mut left);
            // A group with a refusal reads before it is sent (its refused
            // requests may be retries): it waits for the one in flight.
            let pipelined = !ahead.group.is_empty() && ahead.outcomes.iter().all(Result::is_ok);
            let mut next = None;
            if pipelined {
                match send(&client, &insert, &mut ahead, self.id).await {
                    Ok(statement) => next = Some(statement),
                    Err(error) => {
                        // The group in flight is answered as it ends.
                        if let Err(failed) = in_flight.await {
                            return self.hand_back(&failed, current, Some(ahead), left);
                        }
                        self.committed_ahead(&current);
                        for (request, outcome) in current.group.into_iter().zip(current.outcomes) {
                            let _ = request.reply.send(outcome);
                        }
                        return self.hand_back(&error, ahead, None, left);
                    }
                }
            }
            if let Err(error) = in_flight.await {
                return self.hand_back(&error, current, Some(ahead), left);
            }
            self.committed_ahead(&current);
            for (request, outcome) in current.group.into_iter().zip(current.outcomes) {
                let _ = request.reply.send(outcome);
            }
            in_flight = match next {
                Some(statement) => statement,
                None => {
                    if left.is_empty() {
                        // What arrived while the last commit was in flight.
                        self.admit_queued(rx, &mut ahead, &mut left);
                    }
                    if ahead.group.is_empty() {
                        return left;
                    }
                    match send(&client, &insert, &mut ahead, self.id).await {
                        Ok(statement) => statement,
                        Err(error) => return self.hand_back(&error, ahead, None, left),
                    }
                }
            };
            current = ahead;
        }
    }

    /// The requests of a run of commits that failed with `error`, to
    /// commit again the usual way: the failed group's, those admitted
    /// behind it, and those left. The statement behind, if sent, failed
    /// too (the head it moves from was not reached), unless the failed
    /// group wrote nothing (a flush for retries found stored): then it may
    /// have committed, and committing it again finds its events stored.
    fn hand_back(
        &self,
        error: &PgError,
        failed: Admitted,
        behind: Option<Admitted>,
        mut left: Vec<Request>,
    ) -> Vec<Request> {
        if error.is_head_moved() {
            self.turns.others_append.store(true, Ordering::Relaxed);
        }
        let mut again = failed.group;
        if let Some(mut behind) = behind {
            again.append(&mut behind.group);
        }
        again.append(&mut left);
        again
    }

    /// Notes a group committed ahead: the head it left, and its counts.
    fn committed_ahead(&self, group: &Admitted) {
        if group.sent.is_empty() {
            return;
        }
        self.turns.committed(group.to);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(group.sent.len() as u64, Ordering::Relaxed);
        self.published(group.to);
    }

    /// Admits into `ahead` the queued requests that read nothing, up to
    /// the most events a commit takes; the first that reads something goes
    /// to `left`, and stops it.
    fn admit_queued(
        &self,
        rx: &mut mpsc::Receiver<Request>,
        ahead: &mut Admitted,
        left: &mut Vec<Request>,
    ) {
        while left.is_empty() && ahead.events < self.max_events_per_commit {
            match rx.try_recv() {
                Ok(request) if reads_nothing(&request) => ahead.admit(request),
                Ok(request) => left.push(request),
                Err(_) => break,
            }
        }
    }
}

/// A group's statement, sent: its outcome once the server answers.
type InFlight<'a> = Pin<Box<dyn Future<Output = Result<(), PgError>> + Send + 'a>>;

/// Sends `group`'s statement, moving the head from `group.from`, and
/// returns it in flight. A group with refused requests first reads whether
/// they are retries of stored ones ([`retries_found`]); one with no records
/// to write sends nothing but, when it answers retries found stored and a
/// turn is pending, a flush (for the writer's row `id`): what it found may
/// be a turn not yet durable (see the `durable` module).
async fn send<'a>(
    client: &'a ClientWrapper,
    insert: &'a Statement,
    group: &mut Admitted,
    id: uuid::Uuid,
) -> Result<InFlight<'a>, PgError> {
    let requests: Vec<&Request> = group.group.iter().collect();
    retries_found(client, &requests, &mut group.outcomes).await?;
    if group.rows.is_empty() {
        if group.outcomes.iter().any(Result::is_ok) {
            return Ok(Box::pin(durable::flush_if_pending(client, id)));
        }
        return Ok(Box::pin(std::future::ready(Ok(()))));
    }
    let rows = Arc::new(std::mem::take(&mut group.rows));
    group.sent = rows.clone();
    let moving = Some((group.from, group.to));
    let mut statement: InFlight<'a> =
        Box::pin(async move { insert_events(client, insert, &rows, moving).await });
    // Polled once, the statement goes to the connection to be sent; it
    // cannot be answered yet.
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = statement.as_mut().poll(cx) {
            statement = Box::pin(std::future::ready(result));
        }
        Poll::Ready(())
    })
    .await;
    Ok(statement)
}
