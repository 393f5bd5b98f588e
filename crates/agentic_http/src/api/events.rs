//! `/events`: read the log with filters, and verify its hash chain (as
//! `lion events list|verify`); `/streams/{stream}/events`: one stream's
//! events through its index. `/events/stream` follows it live (see
//! [`crate::stream`]).

use agentic_core::{ChainVerifier, EventEnvelope};
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{MAX_PAGE, Query, whole};
use crate::AppState;
use crate::problem::Problem;

/// Events read per round trip while listing or verifying.
const READ_BATCH: usize = 1000;

/// Most events one list request looks at: a filter that matches rarely
/// answers with what it found so far and a `next` to go on from, instead
/// of reading the whole log in one request.
pub const MAX_SCAN: usize = 10_000;

/// Which events to read.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// First sequence number to read (1 by default).
    #[serde(default, deserialize_with = "whole::int64")]
    pub from: Option<u64>,
    /// Most events to return (1 to 1000; 100 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only events of streams starting with this (e.g. `task:`, `agent:ada`).
    pub stream: Option<String>,
    /// Only events of this type (e.g. `task_completed`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only events of this request (correlation id).
    pub correlation_id: Option<Uuid>,
    /// Only events recorded at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events recorded before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// The filters of an [`EventQuery`], to match events with.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    stream: Option<String>,
    kind: Option<String>,
    correlation_id: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// The filters of `query`.
    pub fn of(query: &EventQuery) -> Self {
        Self {
            stream: query.stream.clone(),
            kind: query.kind.clone(),
            correlation_id: query.correlation_id,
            since: query.since,
            until: query.until,
        }
    }

    /// Whether `e` passes every filter.
    pub fn matches(&self, e: &EventEnvelope) -> bool {
        self.stream
            .as_ref()
            .is_none_or(|p| e.stream.starts_with(p.as_str()))
            && self.correlation_id.is_none_or(|c| e.correlation_id == c)
            && self.since.is_none_or(|t| e.recorded_at >= t)
            && self.until.is_none_or(|t| e.recorded_at < t)
            && self
                .kind
                .as_ref()
                .is_none_or(|k| kind_of(&e.payload) == Some(k.as_str()))
    }
}

/// The type of an encoded event: its payload is `{"<type>": {…}}`.
pub fn kind_of(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = text.trim_start().strip_prefix("{\"")?;
    rest.split_once('"').map(|(kind, _)| kind)
}

/// A stored event: its envelope, with its payload decoded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Its sequence number in the log.
    pub seq: u64,
    /// Its unique id.
    pub event_id: Uuid,
    /// The stream (entity) it belongs to.
    pub stream: String,
    /// Its position in its stream.
    pub stream_version: u64,
    /// Its type.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// When it was committed (UTC).
    pub recorded_at: DateTime<Utc>,
    /// The request it belongs to.
    pub correlation_id: Uuid,
    /// What caused it, if recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Its payload's schema version.
    pub schema_version: u16,
    /// The event.
    #[schema(value_type = Object)]
    pub event: Value,
    /// Its hash (hex), chained to the one before.
    pub hash: String,
}

impl From<&EventEnvelope> for Event {
    fn from(e: &EventEnvelope) -> Self {
        Self {
            seq: e.seq,
            event_id: e.event_id,
            stream: e.stream.clone(),
            stream_version: e.stream_version,
            kind: kind_of(&e.payload).unwrap_or("?").to_owned(),
            recorded_at: e.recorded_at,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            schema_version: e.schema_version,
            event: serde_json::from_slice(&e.payload).unwrap_or(Value::Null),
            hash: e.hash.to_hex(),
        }
    }
}

/// Events read by a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// The matching events, in log order.
    pub items: Vec<Event>,
    /// Where to go on from (pass as `from`); absent when the log was read
    /// to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Stored events from `from` on that pass the filters.
#[utoipa::path(get, path = "/events", tag = "events", params(EventQuery),
    responses((status = 200, body = EventPage), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<EventQuery>,
) -> Result<Json<EventPage>, Problem> {
    let limit = query.limit.unwrap_or(super::DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let filter = EventFilter::of(&query);
    let mut next = query.from.unwrap_or(1).max(1);
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let batch = state.kernel.store.read_from(next, READ_BATCH).await?;
        if batch.is_empty() {
            return Ok(Json(EventPage { items, next: None }));
        }
        for e in &batch {
            next = e.seq + 1;
            scanned += 1;
            if filter.matches(e) {
                items.push(Event::from(e));
                if items.len() == limit {
                    return Ok(Json(EventPage {
                        items,
                        next: Some(next),
                    }));
                }
            }
            if scanned == MAX_SCAN {
                return Ok(Json(EventPage {
                    items,
                    next: Some(next),
                }));
            }
        }
    }
}

/// What a verification found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verified {
    /// Whether every record links to the one before and its hash holds.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The last sequence number checked.
    pub head_seq: u64,
    /// The first bad record's sequence number, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// What was wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Verifies the log's hash chain from the first event to the head.
#[utoipa::path(get, path = "/events/verify", tag = "events",
    responses((status = 200, body = Verified)))]
pub async fn verify(State(state): State<AppState>) -> Result<Json<Verified>, Problem> {
    let store = &state.kernel.store;
    let head = store.head().await?;
    let mut verifier = ChainVerifier::new();
    let mut next = 1;
    let mut events = 0;
    while next <= head.seq {
        let batch = store.read_from(next, READ_BATCH).await?;
        let Some(last) = batch.last() else { break };
        next = last.seq + 1;
        for e in batch.iter().take_while(|e| e.seq <= head.seq) {
            if let Err(error) = verifier.check(e) {
                return Ok(Json(Verified {
                    ok: false,
                    events,
                    head_seq: e.seq.saturating_sub(1),
                    first_bad_seq: Some(error.seq()),
                    error: Some(error.to_string()),
                }));
            }
            events += 1;
        }
    }
    if let Err(error) = verifier.finish(Some(head)) {
        return Ok(Json(Verified {
            ok: false,
            events,
            head_seq: verifier.head().seq,
            first_bad_seq: Some(error.seq()),
            error: Some(error.to_string()),
        }));
    }
    Ok(Json(Verified {
        ok: true,
        events,
        head_seq: verifier.head().seq,
        first_bad_seq: None,
        error: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_is_the_payloads_only_key() {
        assert_eq!(
            kind_of(br#"{"task_started":{"a":1}}"#),
            Some("task_started")
        );
        assert_eq!(kind_of(b"[1]"), None);
        assert_eq!(kind_of(b"\xff"), None);
    }
}

/// Which events of one stream to read.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// First stream version to read (1 by default).
    #[serde(default, deserialize_with = "whole::int64")]
    pub from: Option<u64>,
    /// Most events to return (1 to 1000; 100 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Read the stream's last `limit` events instead (its newest).
    #[serde(default)]
    pub last: bool,
}

/// The version of `stream`'s newest event (0 when it has none), found with
/// a few point reads (doubling, then halving), not by reading the stream.
async fn stream_head(store: &dyn agentic_core::EventStore, stream: &str) -> Result<u64, Problem> {
    let has = |v: u64| async move {
        Ok::<_, Problem>(!store.read_stream(stream, v, 1).await?.is_empty())
    };
    if !has(1).await? {
        return Ok(0);
    }
    let mut low = 1;
    let mut high = 2;
    while has(high).await? {
        low = high;
        high = high.saturating_mul(2);
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if has(mid).await? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(low)
}

/// The events of one stream (`task:ID`, `plugin:NAME`, `agent:NAME:llm`,
/// `workflow:ID`…) in stream order, by stream version — from `from`, or its
/// last `limit` with `last=true` — through the stream's index, whatever
/// the log's length.
#[utoipa::path(get, path = "/streams/{stream}/events", tag = "events",
    params(("stream" = String, Path, description = "The stream's exact name"), StreamQuery),
    responses((status = 200, body = EventPage, description = "`next` is a stream version"),
        (status = 400, body = Problem)))]
pub async fn stream(
    State(state): State<AppState>,
    super::Path(stream): super::Path<String>,
    Query(query): Query<StreamQuery>,
) -> Result<Json<EventPage>, Problem> {
    let limit = query.limit.unwrap_or(super::DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let store = state.kernel.store.as_ref();
    let from = match query.last {
        true => (stream_head(store, &stream).await? + 1)
            .saturating_sub(limit as u64)
            .max(1),
        false => query.from.unwrap_or(1).max(1),
    };
    let batch = store.read_stream(&stream, from, limit + 1).await?;
    let next = (batch.len() > limit).then(|| batch[limit].stream_version);
    Ok(Json(EventPage {
        items: batch.iter().take(limit).map(Event::from).collect(),
        next,
    }))
}
