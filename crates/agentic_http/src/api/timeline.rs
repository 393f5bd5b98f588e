//! `/timeline`: the log's events that match filters, newest first, and an
//! event's causes and effects — read from the timeline's read model
//! ([`crate::timeline`]), not by scanning the log.

use agentic_core::EventEnvelope;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::Event;
use super::{MAX_PAGE, Path, Query, whole};
use crate::AppState;
use crate::problem::Problem;
use crate::timeline::{Filter, TimelineError};

/// Most causes followed back, and effects listed.
const RELATED: usize = 50;

/// Which events of the timeline to read.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// Only events of this type (e.g. `task_completed`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only events of streams starting with this (e.g. `task:`).
    pub stream: Option<String>,
    /// Only events of this request (correlation id).
    pub correlation_id: Option<Uuid>,
    /// Only events recorded at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events recorded before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only each stream's first event (a task's submission, a run's start,
    /// an agent's spawn): with `stream=task:`, the newest tasks first.
    #[serde(default)]
    pub first: bool,
    /// Only events before this sequence number (the previous page's `next`).
    #[serde(default, deserialize_with = "whole::int64")]
    pub before: Option<u64>,
    /// Most events to return (1 to 1000; 200 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A page of the timeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelinePage {
    /// The matching events, newest first.
    pub items: Vec<Event>,
    /// Pass as `before` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// How far the read model has read the log: newer events are not in
    /// the answer yet.
    pub indexed: u64,
}

/// An event with its causes and effects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Related {
    /// The event.
    pub event: Event,
    /// What caused it, nearest first: the event (or the entity's first
    /// event) its causation id names, then what caused that, and so on.
    pub causes: Vec<Event>,
    /// The events it caused (those whose causation id is its id, or, for
    /// an entity's first event, the entity's), oldest first.
    pub effects: Vec<Event>,
    /// How far the read model has read the log: later effects are not
    /// listed yet.
    pub indexed: u64,
}

fn problem(e: TimelineError) -> Problem {
    Problem::unavailable(e.to_string())
}

/// The events at `seqs` (ascending), read a run of nearby numbers at a
/// time rather than one by one.
async fn events_at(state: &AppState, seqs: &[u64]) -> Result<Vec<EventEnvelope>, Problem> {
    /// Numbers this close share one read.
    const NEAR: u64 = 64;
    let mut out = Vec::with_capacity(seqs.len());
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] - seqs[j] <= NEAR {
            j += 1;
        }
        let span = (seqs[j] - start + 1) as usize;
        let read = state.kernel.store.read_from(start, span).await?;
        let wanted = &seqs[i..=j];
        out.extend(
            read.into_iter()
                .filter(|e| wanted.binary_search(&e.seq).is_ok()),
        );
        i = j + 1;
    }
    Ok(out)
}

/// The event at `seq`, if the log has it.
async fn at(state: &AppState, seq: u64) -> Result<Option<EventEnvelope>, Problem> {
    Ok(state
        .kernel
        .store
        .read_from(seq, 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq))
}

/// The log's events matching the filters, newest first, from the
/// timeline's read model (`indexed` says how far it has read the log).
#[utoipa::path(get, path = "/timeline", tag = "events", params(TimelineQuery),
    responses((status = 200, body = TimelinePage), (status = 400, body = Problem),
        (status = 503, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<TimelineQuery>,
) -> Result<Json<TimelinePage>, Problem> {
    let limit = query.limit.unwrap_or(200);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let filter = Filter {
        kind: query.kind,
        stream: query.stream,
        correlation: query.correlation_id,
        since: query.since,
        until: query.until,
        first: query.first,
    };
    let indexed = state.timeline.indexed();
    let seqs = state
        .timeline
        .matching(filter, query.before, limit + 1)
        .await
        .map_err(problem)?;
    let next = (seqs.len() > limit).then(|| seqs[limit - 1]);
    let mut wanted: Vec<u64> = seqs.into_iter().take(limit).collect();
    wanted.sort_unstable();
    let mut items: Vec<Event> = events_at(&state, &wanted)
        .await?
        .iter()
        .map(Event::from)
        .collect();
    items.reverse();
    Ok(Json(TimelinePage {
        items,
        next,
        indexed,
    }))
}

/// An event with its causes (its causation chain) and its effects.
#[utoipa::path(get, path = "/events/{seq}/related", tag = "events",
    params(("seq" = u64, Path, description = "The event's sequence number")),
    responses((status = 200, body = Related), (status = 404, body = Problem),
        (status = 503, body = Problem)))]
pub async fn related(
    State(state): State<AppState>,
    Path(seq): Path<u64>,
) -> Result<Json<Related>, Problem> {
    let Some(event) = at(&state, seq).await? else {
        return Err(Problem::not_found(format!("no event {seq} in the log")));
    };
    let timeline = &state.timeline;
    let mut causes = Vec::new();
    let (mut cause, mut after) = (event.causation_id, seq);
    while let Some(id) = cause
        && causes.len() < RELATED
    {
        let found = match timeline.by_event_id(id).await.map_err(problem)? {
            Some(seq) => Some(seq),
            None => timeline.entity_start(id).await.map_err(problem)?,
        };
        // Causes come before: an entity's first event naming the entity
        // itself ends the chain.
        let Some(e) = found.filter(|s| *s < after) else {
            break;
        };
        let Some(e) = at(&state, e).await? else { break };
        (cause, after) = (e.causation_id, e.seq);
        causes.push(Event::from(&e));
    }
    let mut caused = timeline
        .caused_by(event.event_id, RELATED)
        .await
        .map_err(problem)?;
    // An entity's first event stands for the entity its causations name.
    if event.stream_version == 1
        && let Some(id) = event
            .stream
            .split_once(':')
            .and_then(|(_, id)| id.parse::<Uuid>().ok())
    {
        caused.extend(timeline.caused_by(id, RELATED).await.map_err(problem)?);
        caused.sort_unstable();
        caused.dedup();
        caused.truncate(RELATED);
    }
    caused.retain(|s| *s != seq);
    let effects = events_at(&state, &caused)
        .await?
        .iter()
        .map(Event::from)
        .collect();
    Ok(Json(Related {
        event: Event::from(&event),
        causes,
        effects,
        indexed: timeline.indexed(),
    }))
}
