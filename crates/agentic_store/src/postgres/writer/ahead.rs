//! Commits of new elements by a writer that committed the head last, each
//! group admitted while the one before it commits.
//!
//! A group whose admission reads nothing — every request creates elements
//! and expects nothing of its stream — is admitted against the head the
//! writer left and committed in one statement that moves the head from
//! there (see the `writer` module). While that statement is in flight the
//! writer admits the requests already queued against the head it will
//! leave, so the next group is sealed by the time the server answers, and
//! its statement goes out at once. If a commit fails, nothing admitted
//! ahead is kept: its requests, and the failed group's, are committed
//! again the usual way (which finds retries, duplicates and a moved head).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

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
    /// The sealed records to write.
    rows: Vec<EventEnvelope>,
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
            stored: HashMap::new(),
            versions: HashMap::new(),
            overlay: Overlay::default(),
            from,
            to: from,
            recorded_at: EventEnvelope::now(),
        }
    }

    /// Nothing yet, to commit after `before`: what `before` writes counts
    /// as stored (a retry of one of its requests is answered with its
    /// positions, an element it creates is not created again), which holds
    /// if `before` commits — and if it does not, neither does this.
    fn after(before: &Admitted) -> Self {
        Self {
            stored: before.rows.iter().map(|r| (r.event_id, r.seq)).collect(),
            versions: before
                .rows
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
    /// it, each group admitted while the one before it commits. Returns
    /// the requests left to commit the usual way: the first that reads
    /// something, or every request not yet committed once a commit failed.
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
        loop {
            let mut ahead = Admitted::after(&current);
            let result = self
                .commit_admitted(&client, &insert, &mut current, &mut ahead, &mut left, rx)
                .await;
            if let Err(error) = result {
                if error.is_head_moved() {
                    self.turns.others_append.store(true, Ordering::Relaxed);
                }
                let mut again = current.group;
                again.append(&mut ahead.group);
                again.append(&mut left);
                return again;
            }
            for (request, outcome) in current.group.into_iter().zip(current.outcomes) {
                let _ = request.reply.send(outcome);
            }
            if left.is_empty() {
                // What arrived while the last commit was in flight.
                self.admit_queued(rx, &mut ahead, &mut left);
            }
            if ahead.group.is_empty() {
                return left;
            }
            current = ahead;
        }
    }

    /// Commits `current` in one statement, admitting into `ahead`, while it
    /// is in flight, the queued requests that read nothing (the first that
    /// reads something goes to `left`, and stops the admitting).
    async fn commit_admitted(
        &self,
        client: &ClientWrapper,
        insert: &Statement,
        current: &mut Admitted,
        ahead: &mut Admitted,
        left: &mut Vec<Request>,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Result<(), PgError> {
        let group: Vec<&Request> = current.group.iter().collect();
        retries_found(client, &group, &mut current.outcomes).await?;
        if current.rows.is_empty() {
            return Ok(());
        }
        let (committed, ()) = tokio::join!(
            insert_events(
                client,
                insert,
                &current.rows,
                Some((current.from, current.to))
            ),
            async {
                // Let the connection send the statement before the
                // admitting takes this thread.
                tokio::task::yield_now().await;
                self.admit_queued(rx, ahead, left)
            },
        );
        committed?;
        self.turns.committed(current.to);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(current.rows.len() as u64, Ordering::Relaxed);
        self.published(current.to);
        Ok(())
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
