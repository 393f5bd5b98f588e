//! The REST API over the kernel, with the CLI's semantics: one module per
//! resource, JSON in and out, errors as problems.
//!
//! - [`elements`] — create, get, list.
//! - [`tasks`] — submit (with an idempotency key), get, list, cancel, wait.
//! - [`agents`] — spawn, get, list, stop, send (streamed).
//! - [`plugins`] — list, info, call.
//! - [`workflows`] — start, list, show, history, approve, reject, cancel,
//!   fork.
//! - [`events`] — list with filters, verify the chain.
//! - [`system`] — health and version.
//!
//! Request bodies, query strings and path segments go through the
//! extractors here ([`Body`], [`Query`], [`Path`]), so a malformed one is a
//! problem (400, 413, 415, 422) like any other failure.

pub mod agents;
pub mod elements;
pub mod events;
pub mod plugins;
pub mod system;
pub mod tasks;
pub mod timeline;
pub mod workflows;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// The MCP endpoint's service.
pub type McpService = rmcp::transport::streamable_http_server::StreamableHttpService<
    agentic_mcp::PluginTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
>;
use crate::{AppState, access, assets, metrics, openai, openapi, stream};

/// Largest request body accepted: plugin inputs and agent prompts fit with
/// room to spare; anything bigger is refused with 413 before it is read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Items per page when a list request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// Most items a list request may ask for at once.
pub const MAX_PAGE: usize = 1000;

/// Every route, `mcp` at `/mcp`, behind the access guard.
pub fn routes(state: AppState, mcp: McpService) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/openapi.json", get(openapi::document))
        .route(
            "/auth/session",
            post(access::sign_in).delete(access::sign_out),
        )
        .route("/health", get(system::health))
        .route("/version", get(system::version))
        .route("/kernels", get(system::kernels))
        .route("/elements", post(elements::create).get(elements::list))
        .route("/elements/{id}", get(elements::show))
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/wait", get(tasks::wait))
        .route("/agents", post(agents::spawn).get(agents::list))
        .route("/agents/{name}", get(agents::show))
        .route("/agents/{name}/stop", post(agents::stop))
        .route("/agents/{name}/messages", post(agents::send))
        .route("/plugins", get(plugins::list).post(plugins::install))
        .route("/plugins/{name}", get(plugins::info))
        .route("/plugins/{name}/call/{function}", post(plugins::call))
        .route("/workflows", post(workflows::start).get(workflows::list))
        .route("/workflows/{id}", get(workflows::show))
        .route("/workflows/{id}/history", get(workflows::history))
        .route(
            "/workflows/{id}/steps/{step}/approve",
            post(workflows::approve),
        )
        .route(
            "/workflows/{id}/steps/{step}/reject",
            post(workflows::reject),
        )
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/fork", post(workflows::fork))
        .route("/events", get(events::list))
        .route("/events/verify", get(events::verify))
        .route("/streams/{stream}/events", get(events::stream))
        .route("/timeline", get(timeline::list))
        .route("/events/{seq}/related", get(timeline::related))
        .route("/events/stream", get(stream::events))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route_service("/mcp", mcp)
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), access::guard))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route {}", uri.path()))
}

/// A JSON request body; a malformed one is a problem: 400 (not JSON), 415
/// (not sent as JSON), 413 (too big) or 422 (the wrong shape).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    Problem::new(rejection.status(), rejection.body_text())
}

/// A query string; a malformed one is a 400 problem.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_problem(rejection)),
        }
    }
}

fn query_problem(rejection: QueryRejection) -> Problem {
    Problem::bad_request(rejection.body_text())
}

/// Path segments; one that does not parse (an id that is not a UUID) is a
/// 400 problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

fn path_problem(rejection: PathRejection) -> Problem {
    Problem::bad_request(rejection.body_text())
}

/// Paging of a list: `?after=CURSOR&limit=N`.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Where the page starts: the `next` of the page before (absent for
    /// the first page).
    #[serde(default, deserialize_with = "whole::int64")]
    pub after: Option<u64>,
    /// Items per page (1 to 1000; 100 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

impl Paging {
    /// The cursor and limit to read with; a limit out of range is a 400.
    pub fn read(self) -> Result<(agentic_core::Cursor, usize), Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Problem::bad_request(format!(
                "limit must be between 1 and {MAX_PAGE}, got {limit}"
            )));
        }
        Ok((agentic_core::Cursor(self.after.unwrap_or(0)), limit))
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

impl<T> Listed<T> {
    /// A page of `items` mapped through `f`.
    pub fn of<U>(page: agentic_core::Page<U>, f: impl FnMut(U) -> T) -> Self {
        Self {
            items: page.items.into_iter().map(f).collect(),
            next: page.next.map(|c| c.0),
        }
    }
}

/// A JSON object, for the schema of free-form values.
pub type Object = serde_json::Map<String, serde_json::Value>;

/// Whole numbers as the document declares them (JSON Schema `integer`,
/// format int64 or int32): `3` and `3.0` alike — both are integers to a
/// JSON Schema validator — in a body or a query string, and never beyond
/// the format's range, so what the document calls valid is accepted and
/// what it calls invalid is refused.
pub mod whole {
    use serde::{Deserialize, Deserializer};

    /// A number as it may arrive: JSON integer, JSON float, or query text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Text(String),
    }

    /// The whole number in `0..=max`, if `number` is one.
    fn whole(number: Number, max: u64) -> Option<u64> {
        let value = match number {
            Number::Unsigned(n) => n,
            Number::Signed(n) => u64::try_from(n).ok()?,
            Number::Float(f) if f.fract() == 0.0 && f >= 0.0 && f <= max as f64 => f as u64,
            Number::Float(_) => return None,
            Number::Text(text) => return whole(parse(&text)?, max),
        };
        (value <= max).then_some(value)
    }

    fn parse(text: &str) -> Option<Number> {
        if let Ok(n) = text.parse::<u64>() {
            Some(Number::Unsigned(n))
        } else {
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Number::Float)
        }
    }

    fn optional<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<Option<u64>, D::Error> {
        match Option::<Number>::deserialize(d)? {
            None => Ok(None),
            Some(number) => whole(number, max).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!("expected a whole number from 0 to {max}"))
            }),
        }
    }

    /// An optional int64 (0 to 2^63 - 1).
    pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        optional(d, i64::MAX as u64)
    }

    /// An optional int32 (0 to 2^31 - 1).
    pub fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(optional(d, i32::MAX as u64)?.map(|n| n as u32))
    }

    /// An optional count (a page size: 0 to 2^31 - 1, the rest is checked
    /// by the caller).
    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        Ok(optional(d, i32::MAX as u64)?.map(|n| n as usize))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[derive(Deserialize)]
        struct Probe {
            #[serde(default, deserialize_with = "int64")]
            n: Option<u64>,
        }

        fn probe(json: &str) -> Option<Option<u64>> {
            serde_json::from_str::<Probe>(json).ok().map(|p| p.n)
        }

        #[test]
        fn integers_as_json_schema_counts_them() {
            assert_eq!(probe(r#"{"n": 3}"#), Some(Some(3)));
            assert_eq!(probe(r#"{"n": 3.0}"#), Some(Some(3)));
            assert_eq!(probe(r#"{}"#), Some(None));
            assert_eq!(probe(r#"{"n": null}"#), Some(None));
            assert_eq!(probe(r#"{"n": 3.5}"#), None);
            assert_eq!(probe(r#"{"n": -1}"#), None);
            assert_eq!(probe(r#"{"n": 9223372036854775808}"#), None);
            assert_eq!(probe(r#"{"n": "3"}"#), Some(Some(3)));
        }
    }
}
