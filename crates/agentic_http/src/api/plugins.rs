//! `/plugins`: list installed plugins, show one, call a function (as
//! `lion plugin list|info|call`). A call runs in the plugin's sandbox under
//! its grant and is recorded like any other.

use std::collections::BTreeMap;

use agentic_core::plugin::{CallOptions, PluginRecord, PluginStatus};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Listed, Paging, Path, Query};
use crate::AppState;
use crate::problem::Problem;

/// An installed plugin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Plugin {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// `wasm` (a WebAssembly component) or `server` (an MCP server in the
    /// subprocess sandbox).
    pub kind: String,
    /// `active` or `quarantined`.
    pub status: String,
    /// Calls started, succeeded and failed.
    pub calls: u64,
    /// Calls that returned an output.
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// What the operator granted it.
    #[schema(value_type = Object)]
    pub grant: Value,
    /// Its functions, by name.
    pub functions: BTreeMap<String, Function>,
}

/// A plugin function.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Function {
    /// What it does.
    pub description: String,
    /// JSON Schema of its input.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// JSON Schema of its output.
    #[schema(value_type = Object)]
    pub output_schema: Value,
}

impl From<PluginRecord> for Plugin {
    fn from(p: PluginRecord) -> Self {
        let m = p.installed.manifest;
        Self {
            kind: if m.server.is_some() { "server" } else { "wasm" }.to_owned(),
            status: match p.status {
                PluginStatus::Active => "active",
                PluginStatus::Quarantined => "quarantined",
            }
            .to_owned(),
            calls: p.calls,
            succeeded: p.succeeded,
            failed: p.failed,
            grant: serde_json::to_value(&p.installed.grant).unwrap_or(Value::Null),
            functions: m
                .functions
                .into_iter()
                .map(|(name, f)| {
                    (
                        name,
                        Function {
                            description: f.description,
                            input_schema: f.input_schema,
                            output_schema: f.output_schema,
                        },
                    )
                })
                .collect(),
            name: m.name,
            version: m.version,
            description: m.description,
        }
    }
}

/// A page of installed plugins, in installation order.
#[utoipa::path(get, path = "/plugins", tag = "plugins", params(Paging),
    responses((status = 200, body = Listed<Plugin>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Listed<Plugin>>, Problem> {
    let (after, limit) = paging.read()?;
    let page = state.kernel.store.plugins(after, limit).await?;
    Ok(Json(Listed::of(page, Plugin::from)))
}

/// One installed plugin.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = Plugin), (status = 404, body = Problem)))]
pub async fn info(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Plugin>, Problem> {
    match state.kernel.store.plugin(&name).await? {
        Some(snapshot) => Ok(Json(snapshot.record.into())),
        None => Err(Problem::not_found(format!("no plugin {name} is installed"))),
    }
}

/// A plugin call's output.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallOutput {
    /// What the function returned.
    #[schema(value_type = Object)]
    pub output: Value,
}

/// Calls a plugin function with the request body as its input (any JSON
/// value its input schema accepts). A call the plugin refuses or fails is
/// 422 with the reason; the call is recorded either way.
#[utoipa::path(post, path = "/plugins/{name}/call/{function}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name"),
        ("function" = String, Path, description = "The function to call")),
    request_body(content = Object, description = "The function's input"),
    responses((status = 200, body = CallOutput), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn call(
    State(state): State<AppState>,
    Path((name, function)): Path<(String, String)>,
    super::Body(input): super::Body<Value>,
) -> Result<Json<CallOutput>, Problem> {
    let Some(snapshot) = state.kernel.store.plugin(&name).await? else {
        return Err(Problem::not_found(format!("no plugin {name} is installed")));
    };
    if !snapshot
        .record
        .installed
        .manifest
        .functions
        .contains_key(&function)
    {
        return Err(Problem::not_found(format!(
            "plugin {name} has no function {function:?}"
        )));
    }
    let options = CallOptions {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
    };
    let output = state
        .kernel
        .plugins
        .call(&name, &function, &input.to_string(), options)
        .await?;
    Ok(Json(CallOutput { output }))
}
