//! The OpenAPI 3.1 document of the API, derived from the handlers'
//! annotations (utoipa), served at `/openapi.json`.
//!
//! What every operation shares is added here rather than repeated on each
//! handler: the bearer token (except on the public operations), and the
//! problems any request can meet (400 for a malformed request, 401 and 403
//! from the access guard, 413 and 415 for a body, 503 while the kernel
//! starts), all as `application/problem+json`. The handlers the server
//! runs are filled in when the document is served: they depend on how the
//! kernel was put together.

use axum::Json;
use axum::extract::State;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi};

use crate::AppState;
use crate::api::{agents, elements, events, plugins, system, tasks, timeline, workflows};
use crate::problem::PROBLEM_JSON;
use crate::{access, stream};

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(title = "lion", description = "The lion kernel's HTTP API (`lion serve`)."),
    paths(
        system::health, system::version, system::kernels,
        access::sign_in, access::sign_out,
        elements::create, elements::show, elements::list,
        tasks::submit, tasks::show, tasks::list, tasks::cancel, tasks::wait,
        agents::spawn, agents::show, agents::list, agents::stop, agents::send,
        plugins::list, plugins::install, plugins::info, plugins::call,
        workflows::start, workflows::list, workflows::show, workflows::history,
        workflows::approve, workflows::reject, workflows::cancel, workflows::fork,
        events::list, events::verify, events::stream, stream::events,
        timeline::list, timeline::related,
    ),
    modifiers(&Shared),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Operations served without a token.
const PUBLIC: &[(&str, &str)] = &[("/health", "get"), ("/auth/session", "post")];

/// Adds what every operation shares (see the module docs).
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("delete", item.delete.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let public = PUBLIC.contains(&(path.as_str(), method));
                if public {
                    operation.security = Some(vec![SecurityRequirement::default()]);
                }
                add_problems(operation, public);
            }
        }
    }
}

/// Gives `operation` the problems any request can meet, and makes every
/// problem it declares `application/problem+json`.
fn add_problems(operation: &mut Operation, public: bool) {
    let has_body = operation.request_body.is_some();
    let mut common = vec![("400", "The request is malformed (query, path or body)")];
    if !public {
        common.extend([
            ("401", "No valid token or session"),
            ("403", "Foreign Host or Origin, or a missing CSRF token"),
            ("503", "The kernel is starting"),
        ]);
    }
    if has_body {
        common.extend([
            ("413", "The body is over 1 MiB"),
            ("415", "The body is not sent as JSON"),
            ("422", "The body does not have the expected shape"),
        ]);
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    }
    for (status, response) in responses.iter_mut() {
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        if let RefOr::T(response) = response {
            response.content.clear();
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                )))),
            );
        }
    }
}

/// The document, with the handlers this server runs.
pub async fn document(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut()
        && let Some(RefOr::T(Schema::Object(new_task))) = components.schemas.get_mut("NewTask")
        && let Some(RefOr::T(Schema::Object(handler))) = new_task.properties.get_mut("handler")
    {
        handler.enum_values = Some(
            state
                .kernel
                .orchestrator
                .handler_names()
                .into_iter()
                .map(Into::into)
                .collect(),
        );
    }
    Json(doc)
}
