//! `/health` and `/version`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::AppState;
use crate::problem::Problem;

/// Whether the server and its kernel are up.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` once the kernel has recovered, `starting` before.
    pub status: String,
    /// The log's last sequence number.
    pub head_seq: u64,
}

/// The server's health: 200 when it takes work, 503 while it starts.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, Problem> {
    if !*state.ready.borrow() {
        return Err(Problem::unavailable("the kernel is starting"));
    }
    let head = state.kernel.store.head().await?;
    Ok(Json(Health {
        status: "ok".into(),
        head_seq: head.seq,
    }))
}

/// The server's version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// `lion`.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// lion's version.
#[utoipa::path(get, path = "/version", tag = "system", responses((status = 200, body = Version)))]
pub async fn version() -> Json<Version> {
    Json(Version {
        name: "lion".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
