//! `/workflows`: start, list, show, approve, reject, cancel and fork
//! workflow runs (as `lion workflow`). A run is started from its
//! definition's sources sent in the request (the server reads no file a
//! client names); the server's kernel runs it. A decision recorded here is
//! by the API token (`by: "api token"`).

use std::collections::BTreeMap;

use agentic_core::TaskFilter;
use agentic_core::workflow::definition::{Definition, Sources};
use agentic_core::workflow::log::{self, Stored, WorkflowError};
use agentic_core::workflow::record::RunRecord;
use agentic_core::workflow::run::{Run, RunEnd, RunError, RunEvent};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Body, Listed, Path, Query, whole};
use crate::AppState;
use crate::problem::Problem;

/// Who a decision made over the API is recorded as.
const BY: &str = "api token";

/// A run to start: its definition's files (the main one and the
/// sub-workflows it names, by path relative to the main file) and its
/// input.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    /// The main file's name, a key of `files`.
    pub main: String,
    /// Each file's TOML text, by path.
    pub files: BTreeMap<String, String>,
    /// The run's input (checked against the definition's schema).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
}

/// A decision on an approval step.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// What to add to the decision (the step's output carries it).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
}

/// A fork of a run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFork {
    /// The step to run again, with everything downstream of it; the other
    /// steps keep their recorded outputs.
    pub from: String,
    /// The new run's input [default: the old run's].
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
}

/// A run as a list shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// Its id.
    pub id: Uuid,
    /// Its definition's name.
    pub name: String,
    /// running, completed, failed or cancelled.
    pub status: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What started it, when another run did (a sub-workflow's parent, or
    /// the run it was forked from).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub origin: Option<Value>,
}

impl From<RunRecord> for RunSummary {
    fn from(r: RunRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            status: r.status.as_str().to_owned(),
            started_at: r.started_at,
            origin: r.origin.map(|o| json!(o)),
        }
    }
}

/// A run with each step's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// Its id.
    pub id: Uuid,
    /// Its definition's name.
    pub name: String,
    /// running, completed, failed or cancelled.
    pub status: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What started it, when another run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub origin: Option<Value>,
    /// Its input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Each step's state (`state`, `kind`, `after`: the steps it runs
    /// after, and its `output`, `error`, `task`, `deadline` or `due` where
    /// it has one), in an order the steps can run.
    #[schema(value_type = Object)]
    pub steps: Value,
    /// The run's output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// Why it failed, or who cancelled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events on its stream so far.
    pub version: u64,
}

impl From<Stored> for RunView {
    fn from(stored: Stored) -> Self {
        let run = stored.run;
        let (status, output, error) = match &run.end {
            None => ("running", None, None),
            Some(RunEnd::Completed(output)) => ("completed", Some(output.clone()), None),
            Some(RunEnd::Failed(error)) => ("failed", None, Some(error.clone())),
            Some(RunEnd::Cancelled(by)) => ("cancelled", None, Some(format!("cancelled by {by}"))),
        };
        Self {
            id: run.id,
            name: run.definition.name.clone(),
            status: status.to_owned(),
            started_at: run.started_at,
            origin: run.origin.as_ref().map(|o| json!(o)),
            input: run.input.clone(),
            steps: log::step_states(&run),
            output,
            error,
            version: stored.version,
        }
    }
}

/// One event of a run's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Its place in the log.
    pub seq: u64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The run's event (`type` says which).
    #[schema(value_type = Object)]
    pub event: Value,
}

/// A workflow failure as a problem: 404 for no such run, 409 for what
/// does not fit the run as it is, 422 for a bad definition or input.
fn problem(e: WorkflowError) -> Problem {
    match e {
        WorkflowError::NotFound(_) => Problem::not_found(e.to_string()),
        WorkflowError::Refused(_) | WorkflowError::Busy(_) => Problem::conflict(e.to_string()),
        WorkflowError::Run(RunError::Input(_) | RunError::Definition(_)) => {
            Problem::unprocessable(e.to_string())
        }
        WorkflowError::Run(RunError::NoSuchStep(_)) => Problem::not_found(e.to_string()),
        WorkflowError::Run(_) => Problem::conflict(e.to_string()),
        WorkflowError::Store(store) => store.into(),
        WorkflowError::Undecodable { .. } => Problem::internal(e.to_string()),
    }
}

/// Run `id` as its stream holds it.
async fn read(state: &AppState, id: Uuid) -> Result<Stored, Problem> {
    log::load(state.kernel.store.as_ref(), id)
        .await
        .map_err(problem)
}

/// Records the first events of a new run; the run.
async fn begin(state: &AppState, events: Vec<RunEvent>) -> Result<Stored, Problem> {
    let id = Uuid::now_v7();
    let batch = log::recorded(id, events, id);
    state
        .kernel
        .store
        .append(batch, agentic_core::ExpectedVersion::NoStream)
        .await?;
    read(state, id).await
}

/// Starts a run of the definition sent; the kernel runs it.
#[utoipa::path(post, path = "/workflows", tag = "workflows", request_body = NewRun,
    responses((status = 201, body = RunView),
        (status = 422, body = Problem, description = "The definition or the input is refused")))]
pub async fn start(
    State(state): State<AppState>,
    Body(new): Body<NewRun>,
) -> Result<(StatusCode, Json<RunView>), Problem> {
    let sources = Sources {
        main: new.main,
        files: new.files,
    };
    let definition =
        Definition::from_sources(sources).map_err(|e| Problem::unprocessable(e.to_string()))?;
    let input = new.input.unwrap_or_else(|| json!({}));
    let started = Run::start(&definition, input, Utc::now(), None)
        .map_err(|e| problem(WorkflowError::Run(e)))?;
    let run = begin(&state, vec![started]).await?;
    Ok((StatusCode::CREATED, Json(run.into())))
}

/// Which runs a list holds.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Where the page starts: the `next` of the page before.
    #[serde(default, deserialize_with = "whole::int64")]
    pub after: Option<u64>,
    /// Items per page (1 to 1000; 100 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `unfinished`: only the runs that have not ended.
    #[serde(default)]
    #[param(inline)]
    pub status: Option<RunFilter>,
}

/// The runs a list may be limited to.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunFilter {
    /// Not ended.
    Unfinished,
}

/// Lists the runs, in the order they started.
#[utoipa::path(get, path = "/workflows", tag = "workflows", params(RunQuery),
    responses((status = 200, body = Listed<RunSummary>)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<RunQuery>,
) -> Result<Json<Listed<RunSummary>>, Problem> {
    let (after, limit) = super::Paging {
        after: query.after,
        limit: query.limit,
    }
    .read()?;
    let filter = match query.status {
        Some(RunFilter::Unfinished) => TaskFilter::Unfinished,
        None => TaskFilter::All,
    };
    let page = state.kernel.store.workflows(filter, after, limit).await?;
    Ok(Json(Listed::of(page, RunSummary::from)))
}

/// Shows a run: each step's state, output or error.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    responses((status = 200, body = RunView), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RunView>, Problem> {
    Ok(Json(read(&state, id).await?.into()))
}

/// Every event of a run, in order.
#[utoipa::path(get, path = "/workflows/{id}/history", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    responses((status = 200, body = Vec<HistoryEntry>), (status = 404, body = Problem)))]
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<HistoryEntry>>, Problem> {
    let events = log::history(state.kernel.store.as_ref(), id)
        .await
        .map_err(problem)?;
    if events.is_empty() {
        return Err(problem(WorkflowError::NotFound(id)));
    }
    Ok(Json(
        events
            .into_iter()
            .map(|(record, event)| HistoryEntry {
                seq: record.seq,
                recorded_at: record.recorded_at,
                event: json!(event),
            })
            .collect(),
    ))
}

/// Records a decision on an approval step that waits.
async fn decide(
    state: &AppState,
    id: Uuid,
    step: &str,
    approved: bool,
    decision: Decision,
) -> Result<Json<RunView>, Problem> {
    let store = state.kernel.store.as_ref();
    log::record_approval(
        store,
        Uuid::now_v7(),
        id,
        step,
        (approved, BY, decision.input),
    )
    .await
    .map_err(problem)?;
    Ok(Json(read(state, id).await?.into()))
}

/// Approves an approval step that waits; the run goes on.
#[utoipa::path(post, path = "/workflows/{id}/steps/{step}/approve", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The approval step")),
    request_body = Decision,
    responses((status = 200, body = RunView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "The step does not wait, or the run has ended")))]
pub async fn approve(
    State(state): State<AppState>,
    Path((id, step)): Path<(Uuid, String)>,
    Body(decision): Body<Decision>,
) -> Result<Json<RunView>, Problem> {
    decide(&state, id, &step, true, decision).await
}

/// Rejects an approval step that waits; the run goes on.
#[utoipa::path(post, path = "/workflows/{id}/steps/{step}/reject", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The approval step")),
    request_body = Decision,
    responses((status = 200, body = RunView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "The step does not wait, or the run has ended")))]
pub async fn reject(
    State(state): State<AppState>,
    Path((id, step)): Path<(Uuid, String)>,
    Body(decision): Body<Decision>,
) -> Result<Json<RunView>, Problem> {
    decide(&state, id, &step, false, decision).await
}

/// Cancels a run, the step tasks it runs and its sub-workflow runs.
#[utoipa::path(post, path = "/workflows/{id}/cancel", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id")),
    responses((status = 200, body = RunView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "It has already ended")))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RunView>, Problem> {
    log::record_cancel(state.kernel.store.as_ref(), Uuid::now_v7(), id, BY)
        .await
        .map_err(problem)?;
    Ok(Json(read(&state, id).await?.into()))
}

/// Starts a new run from a step of an old one: the steps that are neither
/// that step nor downstream of it keep their recorded outputs.
#[utoipa::path(post, path = "/workflows/{id}/fork", tag = "workflows",
    params(("id" = Uuid, Path, description = "The run to fork")),
    request_body = NewFork,
    responses((status = 201, body = RunView), (status = 404, body = Problem),
        (status = 422, body = Problem, description = "The input is refused")))]
pub async fn fork(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Body(new): Body<NewFork>,
) -> Result<(StatusCode, Json<RunView>), Problem> {
    let old = read(&state, id).await?;
    let events = log::fork(&old.run, &new.from, new.input, Utc::now()).map_err(problem)?;
    let run = begin(&state, events).await?;
    Ok((StatusCode::CREATED, Json(run.into())))
}
