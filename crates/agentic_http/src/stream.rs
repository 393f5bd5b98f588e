//! The log as Server-Sent Events: `GET /events/stream?from=SEQ`.
//!
//! A client gets every committed event from `SEQ` on, in order, each with
//! its sequence number as the SSE id — so a client that reconnects with
//! `Last-Event-ID` misses nothing — and then new ones as they commit. Live
//! events not committed yet (LLM chunks, progress) come between them as
//! `event: live`, without an id: they are for watching, and a slow client
//! may miss some (it is told, as `event: missed`).
//!
//! Memory is bounded whatever the clients do. One task follows the log for
//! the whole server and broadcasts each committed event once ([`LogFeed`])
//! into a ring of [`FEED_BUFFER`] slots; an event over [`FEED_INLINE_MAX`]
//! bytes travels as its sequence number only, for each reader to fetch, so
//! the ring holds at most `FEED_BUFFER × FEED_INLINE_MAX` bytes of events
//! (16 MiB) however slow its slowest reader. A client that falls behind the
//! ring reads what it missed from the store, [`CATCH_UP_BATCH`] events at a
//! time, and rejoins it. Open streams are bounded ([`MAX_STREAMS`], then
//! 429).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use agentic_core::{EventEnvelope, EventStore, LiveEvent, Orchestrator, SystemEvent};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::api::Query;
use crate::api::events::{self, EventFilter, EventQuery};
use crate::metrics::Metrics;
use crate::problem::Problem;

/// Event streams open at once; one more is refused with 429.
pub const MAX_STREAMS: usize = 1024;

/// Committed events the broadcast holds for its slowest reader; one that
/// falls further behind reads from the store instead.
pub const FEED_BUFFER: usize = 1024;

/// The largest event (payload bytes) the broadcast carries whole.
pub const FEED_INLINE_MAX: usize = 16 * 1024;

/// Events read from the store per round trip while a client catches up.
pub const CATCH_UP_BATCH: usize = 64;

/// How long the feed waits before following the log again after the
/// store failed it.
const FEED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// One committed event as the feed passes it on.
#[derive(Debug, Clone)]
enum Fed {
    /// A small event, whole.
    Event(Arc<EventEnvelope>),
    /// A large one, by sequence number: readers fetch it.
    Large(u64),
}

impl Fed {
    fn seq(&self) -> u64 {
        match self {
            Fed::Event(e) => e.seq,
            Fed::Large(seq) => *seq,
        }
    }
}

/// One Server-Sent Event, as the document describes a stream's items.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SseEvent {
    /// Its name (absent for a committed event of the log).
    pub event: Option<String>,
    /// Its JSON payload, as text.
    pub data: String,
    /// Its id: the sequence number of a committed event.
    pub id: Option<String>,
}

/// The server's one follower of the log, and what streams share.
#[derive(Clone)]
pub struct LogFeed {
    store: Arc<dyn EventStore>,
    orchestrator: Orchestrator,
    committed: broadcast::Sender<Fed>,
    /// The last sequence number the feed has passed on.
    seen: watch::Sender<u64>,
    streams: Arc<Semaphore>,
    stopping: CancellationToken,
}

impl LogFeed {
    /// Starts following `store` from its head; live events come from
    /// `orchestrator`. Every stream ends when `stopping` is cancelled.
    pub fn start(
        store: Arc<dyn EventStore>,
        orchestrator: Orchestrator,
        metrics: Arc<Metrics>,
        stopping: CancellationToken,
    ) -> Self {
        let (committed, _) = broadcast::channel(FEED_BUFFER);
        let feed = Self {
            store,
            orchestrator,
            committed,
            seen: watch::Sender::new(0),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stopping,
        };
        tokio::spawn(feed.clone().follow(metrics.clone()));
        tokio::spawn(feed.clone().count_chunks(metrics));
        feed
    }

    /// Waits (up to `limit`) until the feed has passed on every event up
    /// to `seq`.
    pub async fn caught_up(&self, seq: u64, limit: std::time::Duration) {
        let mut seen = self.seen.subscribe();
        let _ = tokio::time::timeout(limit, seen.wait_for(|s| *s >= seq)).await;
    }

    /// Counts the answer chunks streamed live.
    async fn count_chunks(self, metrics: Arc<Metrics>) {
        let mut live = self.orchestrator.subscribe();
        loop {
            let event = tokio::select! {
                () = self.stopping.cancelled() => return,
                event = live.recv() => event,
            };
            match event {
                Ok(LiveEvent {
                    seq: None,
                    event: SystemEvent::LlmDelta { .. },
                    kernel: None,
                }) => metrics.chunk_streamed(),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Broadcasts each committed event, from the head at start on; a store
    /// error pauses it ([`FEED_RETRY`]), and it goes on where it was.
    async fn follow(self, metrics: Arc<Metrics>) {
        let mut next = loop {
            match self.store.head().await {
                Ok(head) => break head.seq + 1,
                Err(e) => {
                    tracing::error!(error = %e, "the event feed cannot read the log's head; retrying");
                    tokio::select! {
                        () = self.stopping.cancelled() => return,
                        () = tokio::time::sleep(FEED_RETRY) => {}
                    }
                }
            }
        };
        self.seen.send_replace(next - 1);
        loop {
            let mut log = self.store.clone().subscribe(next);
            loop {
                let event = tokio::select! {
                    () = self.stopping.cancelled() => return,
                    event = log.next() => event,
                };
                match event {
                    // No receiver is fine: nobody is watching.
                    Ok(event) => {
                        metrics.committed(&event);
                        let seq = event.seq;
                        let fed = if event.payload.len() > FEED_INLINE_MAX {
                            Fed::Large(seq)
                        } else {
                            Fed::Event(Arc::new(event))
                        };
                        drop(self.committed.send(fed));
                        self.seen.send_replace(seq);
                        next = seq + 1;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the event feed cannot read the log; retrying");
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.stopping.cancelled() => return,
                () = tokio::time::sleep(FEED_RETRY) => {}
            }
        }
    }
}

/// Streams the log: committed events from `from` (or after
/// `Last-Event-ID`) on, then live.
#[utoipa::path(get, path = "/events/stream", tag = "events", params(EventQuery),
    responses((status = 200, content_type = "text/event-stream", body = SseEvent,
        description = "Committed events (id = sequence number), `live` events, `missed` notices"),
        (status = 429, body = Problem)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> Result<Response, Problem> {
    let feed = state.log.clone();
    let permit = feed.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::too_many(format!(
            "{MAX_STREAMS} event streams are open: close one, or retry later"
        ))
    })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Problem::bad_request("Last-Event-ID must be a sequence number"))
        })
        .transpose()?;
    let from = match resume {
        Some(seq) => seq
            .checked_add(1)
            .ok_or_else(|| Problem::bad_request("Last-Event-ID is past any sequence number"))?,
        None => query.from.unwrap_or(1).max(1),
    };
    let filter = EventFilter::of(&query);
    // Live events carry no stream name, time or correlation id: a filter
    // on those leaves them out.
    let with_live = query.correlation_id.is_none()
        && query.since.is_none()
        && query.until.is_none()
        && query.stream.is_none();
    let reader = Reader {
        committed: feed.committed.subscribe(),
        live: with_live.then(|| feed.orchestrator.subscribe()),
        store: feed.store.clone(),
        kind: query.kind.clone(),
        filter,
        next: from,
        ready: VecDeque::new(),
        catching_up: true,
        stopping: feed.stopping.clone(),
        _permit: permit,
    };
    Ok(Sse::new(reader.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One client's position in the log.
struct Reader {
    committed: broadcast::Receiver<Fed>,
    live: Option<broadcast::Receiver<LiveEvent>>,
    store: Arc<dyn EventStore>,
    kind: Option<String>,
    filter: EventFilter,
    /// The next sequence number this client is owed.
    next: u64,
    /// Events read from the store, not sent yet.
    ready: VecDeque<EventEnvelope>,
    /// Reading from the store until it has nothing newer.
    catching_up: bool,
    stopping: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

/// What a reader sends next.
enum Next {
    Send(Event),
    Skip,
    End,
}

impl Reader {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut reader| async move {
            loop {
                match reader.step().await {
                    Next::Send(event) => return Some((Ok(event), reader)),
                    Next::Skip => {}
                    Next::End => return None,
                }
            }
        })
    }

    async fn step(&mut self) -> Next {
        if self.stopping.is_cancelled() {
            return Next::End;
        }
        if let Some(e) = self.ready.pop_front() {
            return self.committed_event(&e);
        }
        if self.catching_up {
            return match self.store.read_from(self.next, CATCH_UP_BATCH).await {
                Ok(batch) if batch.is_empty() => {
                    self.catching_up = false;
                    Next::Skip
                }
                Ok(batch) => {
                    self.ready.extend(batch);
                    Next::Skip
                }
                Err(e) => self.failed(&e.to_string()),
            };
        }
        tokio::select! {
            biased;
            () = self.stopping.cancelled() => Next::End,
            e = self.committed.recv() => match e {
                Ok(fed) if fed.seq() < self.next => Next::Skip,
                Ok(Fed::Event(e)) if e.seq == self.next => self.committed_event(&e),
                // A large event, or a gap (the feed was ahead when this
                // client caught up): the store has it.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    self.catching_up = true;
                    Next::Skip
                }
                Err(RecvError::Closed) => Next::End,
            },
            live = recv_live(&mut self.live) => match live {
                Ok(LiveEvent {
                    seq: None,
                    event,
                    kernel,
                }) => {
                    if self.kind.as_deref().is_some_and(|k| k != event.kind()) {
                        return Next::Skip;
                    }
                    let mut data = json!({"type": event.kind(), "event": event});
                    if let Some(kernel) = kernel {
                        data["kernel"] = json!(kernel);
                    }
                    Next::Send(Event::default().event("live").data(data.to_string()))
                }
                // Committed ones come from the log, in order.
                Ok(_) => Next::Skip,
                Err(RecvError::Lagged(n)) => Next::Send(
                    Event::default().event("missed").data(json!({"missed": n}).to_string()),
                ),
                Err(RecvError::Closed) => {
                    self.live = None;
                    Next::Skip
                }
            },
        }
    }

    /// Sends `e` if it passes the filters; moves past it either way.
    fn committed_event(&mut self, e: &EventEnvelope) -> Next {
        self.next = e.seq + 1;
        if !self.filter.matches(e) {
            return Next::Skip;
        }
        let data = serde_json::to_string(&events::Event::from(e)).unwrap_or_default();
        Next::Send(Event::default().id(e.seq.to_string()).data(data))
    }

    fn failed(&mut self, error: &str) -> Next {
        tracing::warn!(error, "an event stream ended: the log cannot be read");
        self.stopping = CancellationToken::new();
        self.stopping.cancel();
        self.catching_up = false;
        Next::Send(
            Event::default()
                .event("error")
                .data(json!({"error": error}).to_string()),
        )
    }
}

/// The next live event, or never when the stream takes none.
async fn recv_live(
    live: &mut Option<broadcast::Receiver<LiveEvent>>,
) -> Result<LiveEvent, RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
