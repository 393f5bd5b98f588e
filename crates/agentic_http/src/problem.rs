//! Errors as RFC 9457 problem details (`application/problem+json`): one
//! status per kind of failure, a title naming the kind and a one-line
//! detail naming what was wrong.

use agentic_core::plugin::PluginError;
use agentic_core::{OrchestratorError, StoreError};
use axum::http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A failed request, as the client gets it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// The kind of failure, e.g. "Not Found".
    pub title: String,
    /// The HTTP status.
    #[serde(rename = "status", serialize_with = "status_code")]
    #[schema(value_type = u16)]
    pub status: StatusCode,
    /// What exactly was wrong, in one line.
    pub detail: String,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem with `status` and `detail`; the title is the status's.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status,
            detail: detail.into(),
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    /// 403: credentials or origin not good enough for this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    /// 404: no such thing.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: it conflicts with what the log holds or what runs.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    /// 422: well-formed, but not acceptable.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 429: a bounded resource is full.
    pub fn too_many(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, detail)
    }

    /// 503: not now (starting, stopping, or a dependency is down).
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    /// 500: lion failed.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of a refused body is never read: the connection
            // cannot carry another request, and the client must know.
            StatusCode::PAYLOAD_TOO_LARGE => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. } | StoreError::PartialDuplicate(_) => {
                Self::conflict(e.to_string())
            }
            StoreError::Rejected(_) => Self::conflict(e.to_string()),
            StoreError::Locked { .. } | StoreError::Closed => Self::unavailable(e.to_string()),
            other => {
                tracing::error!(error = %other, "store error answering a request");
                Self::internal(other.to_string())
            }
        }
    }
}

impl From<OrchestratorError> for Problem {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::UnknownHandler(_) => Self::unprocessable(e.to_string()),
            OrchestratorError::UnknownTask(_) => Self::not_found(e.to_string()),
            OrchestratorError::Ended(_)
            | OrchestratorError::AlreadyRunning(_)
            | OrchestratorError::NotClaimed(_)
            | OrchestratorError::AlreadySubmitted(_) => Self::conflict(e.to_string()),
            OrchestratorError::Store(store) => store.into(),
            OrchestratorError::ShutDown => Self::unavailable(e.to_string()),
        }
    }
}

impl From<PluginError> for Problem {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::NotInstalled(_) => Self::not_found(e.to_string()),
            PluginError::AlreadyInstalled(_) => Self::conflict(e.to_string()),
            PluginError::Store(store) => store.into(),
            // A call's own failure (bad input, a denial, a trap) is the
            // caller's problem to read, not a server error.
            other => Self::unprocessable(other.to_string()),
        }
    }
}
