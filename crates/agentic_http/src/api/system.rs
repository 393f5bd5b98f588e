//! `/health`, `/version` and `/kernels`.

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

/// The kernels serving the store.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Kernels {
    /// Whether several kernels may share the store (PostgreSQL); `false`:
    /// the store is a home's own, served by this server's kernel alone.
    pub shared: bool,
    /// Each kernel that joined a shared store, newest first: its id, host,
    /// pid, `started_at`, `heartbeat_at`, `lease_ms`, `state` (alive,
    /// expired, stopped) and `claims` (unfinished tasks it holds).
    #[schema(value_type = Vec<Object>)]
    pub kernels: Vec<serde_json::Value>,
}

/// The kernels serving the store, their leases and the attempts they hold.
#[utoipa::path(get, path = "/kernels", tag = "system", responses((status = 200, body = Kernels)))]
pub async fn kernels(State(state): State<AppState>) -> Result<Json<Kernels>, Problem> {
    let store = state.kernel.store.as_ref();
    let Some(registry) = store.kernels() else {
        return Ok(Json(Kernels {
            shared: false,
            kernels: Vec::new(),
        }));
    };
    let claims = agentic_core::store::kernels::claims(store).await?;
    let kernels = registry
        .kernels()
        .await?
        .into_iter()
        .map(|k| {
            let mut value = serde_json::to_value(&k).unwrap_or_default();
            value["claims"] = serde_json::json!(claims.get(&k.id).copied().unwrap_or(0));
            value
        })
        .collect();
    Ok(Json(Kernels {
        shared: true,
        kernels,
    }))
}
