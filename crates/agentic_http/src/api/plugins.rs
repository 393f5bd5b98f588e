//! `/plugins`: list installed plugins, show one, call a function (as
//! `lion plugin list|info|call`). A call runs in the plugin's sandbox under
//! its grant and is recorded like any other.

use std::collections::BTreeMap;

use agentic_core::plugin::{CallOptions, PluginManager, PluginRecord, PluginStatus};
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
    /// What its manifest asks for (interfaces, hosts, directories, env).
    #[schema(value_type = Object)]
    pub asked: Value,
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
            asked: serde_json::to_value(&m.permissions).unwrap_or(Value::Null),
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

/// A plugin to install from the operator's plugin directory.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlugin {
    /// Its manifest, relative to the directory `lion serve --plugin-dir`
    /// names (e.g. `hello_world/plugin.toml`).
    pub manifest: String,
    /// What it is granted, as `lion plugin install --grant` takes it
    /// (`interface:log`, `dir:NAME:ro`, `host:NAME:PORT`, …).
    #[serde(default)]
    pub grant: Vec<String>,
}

/// Installs a plugin whose manifest the operator put in the plugin
/// directory (`lion serve --plugin-dir DIR`): nothing outside it can be
/// installed over HTTP, and nothing at all without it (403).
#[utoipa::path(post, path = "/plugins", tag = "plugins", request_body = NewPlugin,
    responses((status = 201, body = Plugin),
        (status = 403, body = Problem, description = "No plugin directory, or a manifest outside it"),
        (status = 404, body = Problem, description = "No such manifest in the plugin directory"),
        (status = 409, body = Problem, description = "Already installed"),
        (status = 422, body = Problem, description = "The manifest, component or grant is refused")))]
pub async fn install(
    State(state): State<AppState>,
    super::Body(new): super::Body<NewPlugin>,
) -> Result<(axum::http::StatusCode, Json<Plugin>), Problem> {
    let Some(dir) = &state.kernel.plugin_dir else {
        return Err(Problem::forbidden(
            "installing plugins over HTTP is off: start lion serve with --plugin-dir DIR",
        ));
    };
    let manifest = confined(dir, &new.manifest)?;
    let manifest = PluginManager::read_manifest(&manifest)?;
    if let Some(component) = &manifest.component {
        confined(dir, &component.path.to_string_lossy())?;
    }
    // A grant over HTTP names what the manifest asks for; a host path of
    // its own choosing (`dir:GUEST=HOST`) is the operator's to give, on the
    // command line.
    if let Some(chosen) = new.grant.iter().find(|g| g.contains('=')) {
        return Err(Problem::forbidden(format!(
            "{chosen:?} chooses a host path: over HTTP a plugin gets only directories its manifest names inside the plugin directory"
        )));
    }
    let grant = manifest
        .grant_from(&new.grant)
        .map_err(|e| Problem::unprocessable(e.to_string()))?;
    for granted in &grant.dirs {
        confined_dir(dir, &granted.path)?;
    }
    let record = state.kernel.plugins.install(manifest, grant).await?;
    Ok((axum::http::StatusCode::CREATED, Json(record.into())))
}

/// `path` (relative to `dir`, or absolute) as a file inside `dir`, links
/// resolved: 404 if there is none, 403 if it lies outside.
fn confined(dir: &std::path::Path, path: &str) -> Result<std::path::PathBuf, Problem> {
    let resolved = dir
        .join(path)
        .canonicalize()
        .map_err(|_| Problem::not_found(format!("no file {path} in the plugin directory")))?;
    if !resolved.starts_with(dir) || !resolved.is_file() {
        return Err(Problem::forbidden(format!(
            "{path} is not a file inside the plugin directory"
        )));
    }
    Ok(resolved)
}

/// A granted directory that lies inside `dir`, links resolved; 403 if not.
fn confined_dir(dir: &std::path::Path, path: &std::path::Path) -> Result<(), Problem> {
    match path.canonicalize() {
        Ok(resolved) if resolved.starts_with(dir) && resolved.is_dir() => Ok(()),
        _ => Err(Problem::forbidden(format!(
            "{} is not a directory inside the plugin directory: over HTTP only those are granted",
            path.display()
        ))),
    }
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
