//! The OpenAPI 3.1 document of the API, derived from the handlers'
//! annotations (utoipa), served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{agents, elements, events, plugins, system, tasks};
use crate::{access, stream};

/// The document's root.
#[derive(OpenApi)]
#[openapi(
    info(title = "lion", description = "The lion kernel's HTTP API (`lion serve`)."),
    paths(
        system::health, system::version,
        access::sign_in, access::sign_out,
        elements::create, elements::show, elements::list,
        tasks::submit, tasks::show, tasks::list, tasks::cancel, tasks::wait,
        agents::spawn, agents::show, agents::list, agents::stop, agents::send,
        plugins::list, plugins::info, plugins::call,
        events::list, events::verify, stream::events,
    ),
    modifiers(&BearerToken),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Declares the bearer token every API request carries.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document, as JSON.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
