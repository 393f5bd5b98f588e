//! `/elements`: create, get and list elements (as `lion element`).

use agentic_core::{ElementData, ExpectedVersion, NewEvent, SystemEvent};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

use super::{Body, Listed, Object, Paging, Path, Query};
use crate::AppState;
use crate::problem::Problem;

/// An element to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewElement {
    /// Free-form JSON object describing it.
    #[serde(default)]
    pub metadata: Object,
    /// Optional text content.
    #[serde(default)]
    pub content: Option<String>,
}

/// An element.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Element {
    /// Its id (a UUID v7).
    pub id: Uuid,
    /// When it was created (UTC).
    pub created_at: DateTime<Utc>,
    /// Its metadata.
    pub metadata: Object,
    /// Its text content, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl From<ElementData> for Element {
    fn from(e: ElementData) -> Self {
        Self {
            id: e.id,
            created_at: e.created_at,
            metadata: e.metadata.to_map(),
            content: e.content,
        }
    }
}

/// A created element: its id and where its creation is in the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    /// The element's id.
    pub id: Uuid,
    /// The sequence number of its `element_created` event.
    pub seq: u64,
}

/// Creates an element.
#[utoipa::path(post, path = "/elements", tag = "elements", request_body = NewElement,
    responses((status = 201, body = Created), (status = 400, body = Problem),
        (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Body(new): Body<NewElement>,
) -> Result<(StatusCode, Json<Created>), Problem> {
    let element = ElementData::new(new.metadata, new.content);
    let id = element.id;
    let event = NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7());
    let receipt = state
        .kernel
        .store
        .append(vec![event], ExpectedVersion::NoStream)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            seq: receipt.first_seq,
        }),
    ))
}

/// One element.
#[utoipa::path(get, path = "/elements/{id}", tag = "elements",
    params(("id" = Uuid, Path, description = "The element's id")),
    responses((status = 200, body = Element), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    let body = match state.elements.get(id) {
        Some(body) => body,
        None => match state.kernel.store.element(id).await? {
            Some(e) => state.elements.put(id, &Element::from(e)),
            None => return Err(Problem::not_found(format!("no element {id}"))),
        },
    };
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// Most bytes of element JSON kept by [`ElementCache`].
const CACHE_BYTES: usize = 8 << 20;

/// Elements answered recently, as their JSON. An element never changes
/// once created, so a kept copy is never stale: a hot element is answered
/// without a store read. Bounded by bytes ([`CACHE_BYTES`]; one element
/// over a sixteenth of it is not kept), the oldest dropped first.
#[derive(Default)]
pub struct ElementCache {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_id: HashMap<Uuid, Bytes>,
    order: VecDeque<Uuid>,
    bytes: usize,
}

impl ElementCache {
    /// The JSON of element `id`, if kept.
    fn get(&self, id: Uuid) -> Option<Bytes> {
        let kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        kept.by_id.get(&id).cloned()
    }

    /// Keeps `element`'s JSON (if small enough) and returns it.
    fn put(&self, id: Uuid, element: &Element) -> Bytes {
        let body = Bytes::from(serde_json::to_vec(element).unwrap_or_default());
        if body.len() > CACHE_BYTES / 16 {
            return body;
        }
        let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if kept.by_id.insert(id, body.clone()).is_none() {
            kept.order.push_back(id);
            kept.bytes += body.len();
        }
        while kept.bytes > CACHE_BYTES {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(gone) = kept.by_id.remove(&oldest) {
                kept.bytes -= gone.len();
            }
        }
        body
    }
}

/// A page of elements, in creation order.
#[utoipa::path(get, path = "/elements", tag = "elements", params(Paging),
    responses((status = 200, body = Listed<Element>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Listed<Element>>, Problem> {
    let (after, limit) = paging.read()?;
    let page = state.kernel.store.elements(after, limit).await?;
    Ok(Json(Listed::of(page, Element::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_a_bounded_number_of_bytes() {
        let cache = ElementCache::default();
        let big = "x".repeat(64 * 1024);
        let mut first = None;
        for _ in 0..300 {
            let element =
                Element::from(ElementData::new(serde_json::Map::new(), Some(big.clone())));
            let id = element.id;
            first.get_or_insert(id);
            let body = cache.put(id, &element);
            assert_eq!(cache.get(id), Some(body));
        }
        let kept = cache.inner.lock().unwrap();
        assert!(kept.bytes <= CACHE_BYTES, "{}", kept.bytes);
        assert_eq!(
            kept.bytes,
            kept.by_id.values().map(Bytes::len).sum::<usize>()
        );
        assert!(
            !kept.by_id.contains_key(&first.unwrap()),
            "the oldest goes first"
        );
    }
}
