//! `/elements`: create, get and list elements (as `lion element`).

use agentic_core::{ElementData, ExpectedVersion, NewEvent, SystemEvent};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
) -> Result<Json<Element>, Problem> {
    match state.kernel.store.element(id).await? {
        Some(e) => Ok(Json(e.into())),
        None => Err(Problem::not_found(format!("no element {id}"))),
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
