//! `/tasks`: submit, get, list, cancel and wait for tasks (as `lion task`).
//!
//! A task submitted here runs on the server's kernel. An idempotency key
//! makes a submission safe to retry: the same key with the same request
//! answers with the task it already names (200, not 202); the same key
//! with a different request is a conflict (409).

use std::time::Duration;

use agentic_core::llm::AGENT_HANDLER;
use agentic_core::plugin::PLUGIN_HANDLER;
use agentic_core::{
    Durability, OrchestratorError, RetryPolicy, TaskFilter, TaskOutcome, TaskRecord, TaskSpec,
    TaskStatus,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Body, Listed, Paging, Path, Query, whole};
use crate::AppState;
use crate::problem::Problem;

/// A task to submit: the handler that runs it and its input. A plugin
/// function runs as handler `plugin` with input `{"plugin", "function",
/// "input"}`; an agent's message as handler `agent` with `{"agent",
/// "text"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The handler (`GET /openapi.json` lists this server's).
    pub handler: String,
    /// The handler's input.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub input: Value,
    /// Time limit per attempt, in milliseconds.
    #[serde(default, deserialize_with = "whole::int64")]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Attempts after the first when one fails (at most 10).
    #[serde(default, deserialize_with = "whole::int32")]
    #[schema(maximum = 10)]
    pub retries: Option<u32>,
    /// Makes the submission safe to retry: one key, one task.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub idempotency_key: Option<String>,
    /// How the task's events are recorded. (Over HTTP a task is always
    /// logged: ephemeral tasks, never logged, are for `lion task submit
    /// --wait` in one process.)
    #[serde(default)]
    pub durability: DurabilityArg,
    /// Answer once the task has ended, or after 30 s at most (then 202:
    /// follow it with `GET /tasks/{id}/wait`).
    #[serde(default)]
    pub wait: bool,
}

/// Longest a submission waits for its task to end.
const SUBMIT_WAIT: Duration = Duration::from_secs(30);

/// Most retries a task submitted here may ask for.
const MAX_RETRIES: u32 = 10;

/// How a task's events are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityArg {
    /// Each event committed before the task goes on.
    #[default]
    Durable,
    /// Events committed in the background, in groups.
    Async,
}

/// A task as the log has it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Task {
    /// Its id.
    pub id: Uuid,
    /// The handler that runs it.
    pub handler: String,
    /// Its input.
    #[schema(value_type = Value)]
    pub input: Value,
    /// Where it is: pending, running, completed, failed, cancelled or
    /// timed_out.
    pub status: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// How many of them were interrupted (their kernel stopped under them).
    pub interrupted: u32,
    /// The output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub output: Option<Value>,
    /// The last error, if an attempt failed, timed out or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its idempotency key, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The task that started it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// Tasks it started.
    pub children: Vec<Uuid>,
}

impl From<TaskRecord> for Task {
    fn from(t: TaskRecord) -> Self {
        Self {
            id: t.id,
            handler: t.spec.handler,
            input: t.spec.input,
            status: status_name(t.status).to_owned(),
            attempts: t.attempts,
            interrupted: t.interrupted,
            output: t.output,
            error: t.error,
            idempotency_key: t.spec.idempotency_key,
            parent: t.spec.parent,
            children: t.children,
        }
    }
}

/// The name of a status, as the API writes it.
pub fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Pending => "pending",
        TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::TimedOut => "timed_out",
    }
}

/// Turns a submission into a task spec, checking what can be checked
/// before anything is recorded: the handler exists (404), the plugin and
/// function a plugin task names exist (404), the key's length (422).
async fn spec_of(state: &AppState, new: NewTask) -> Result<TaskSpec, Problem> {
    if !state
        .kernel
        .orchestrator
        .handler_names()
        .contains(&new.handler)
    {
        return Err(Problem::not_found(format!(
            "no handler {:?} (the handlers are: {})",
            new.handler,
            state.kernel.orchestrator.handler_names().join(", ")
        )));
    }
    if new.handler == PLUGIN_HANDLER
        && let (Some(plugin), Some(function)) =
            (new.input["plugin"].as_str(), new.input["function"].as_str())
    {
        let record = state
            .kernel
            .store
            .plugin(plugin)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no plugin {plugin} is installed")))?
            .record;
        if !record.installed.manifest.functions.contains_key(function) {
            return Err(Problem::not_found(format!(
                "plugin {plugin} has no function {function:?}"
            )));
        }
    }
    if new.timeout_ms == Some(0) {
        return Err(Problem::unprocessable("timeout_ms is at least 1"));
    }
    if new.retries.is_some_and(|r| r > MAX_RETRIES) {
        return Err(Problem::unprocessable(format!(
            "retries is at most {MAX_RETRIES}"
        )));
    }
    if let Some(key) = &new.idempotency_key
        && (key.is_empty() || key.chars().count() > 256)
    {
        return Err(Problem::unprocessable(
            "an idempotency key has 1 to 256 characters",
        ));
    }
    Ok(TaskSpec {
        timeout_ms: new.timeout_ms,
        retry: RetryPolicy {
            max_retries: new.retries.unwrap_or(0),
            ..RetryPolicy::default()
        },
        idempotency_key: new.idempotency_key,
        durability: match new.durability {
            DurabilityArg::Durable => Durability::Durable,
            DurabilityArg::Async => Durability::Async,
        },
        ..TaskSpec::new(new.handler, new.input)
    })
}

/// Submits a task; answers 202 with the task as submitted, or, with
/// `wait`, 200 once it has ended.
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = NewTask,
    responses((status = 202, body = Task, description = "Submitted"),
        (status = 200, body = Task, description = "Ended (wait), or the task its idempotency key already names"),
        (status = 404, body = Problem, description = "No such handler, plugin or function"),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn submit(
    State(state): State<AppState>,
    Body(new): Body<NewTask>,
) -> Result<(StatusCode, Json<Task>), Problem> {
    let wait = new.wait;
    let spec = spec_of(&state, new).await?;
    // One run per agent through this server, whichever way it is asked.
    let agent_claim = match (spec.handler == AGENT_HANDLER, spec.input["agent"].as_str()) {
        (true, Some(agent)) => Some(state.runs.claim(agent).ok_or_else(|| {
            Problem::conflict(format!(
                "agent {agent} is answering another request: one run per agent at a time"
            ))
        })?),
        _ => None,
    };
    let store = &state.kernel.store;
    if let Some(key) = &spec.idempotency_key
        && let Some(task) = store.task_by_key(key).await?
    {
        return same_request(&spec, task).map(|t| (StatusCode::OK, Json(t)));
    }
    let handle = match state.kernel.orchestrator.submit(spec.clone()).await {
        Ok(handle) => handle,
        Err(OrchestratorError::AlreadySubmitted(id)) => {
            let task = store
                .task(id)
                .await?
                .ok_or_else(|| Problem::conflict(format!("the idempotency key names task {id}")))?;
            return same_request(&spec, task).map(|t| (StatusCode::OK, Json(t)));
        }
        Err(e) => return Err(e.into()),
    };
    let id = handle.id;
    if spec.durability == Durability::Async {
        // Its submission is appended in the background: answer once the
        // log has it, so the id answered can be read at once.
        logged(&state, id).await?;
    }
    // Two submissions of one key racing past the check above get the same
    // task from the orchestrator: the one whose request differs from the
    // task's is told so.
    if spec.idempotency_key.is_some()
        && let Some(task) = store.task(id).await?
    {
        same_request(&spec, task)?;
    }
    // An agent's run started here holds the agent, as a message does.
    if spec.handler == AGENT_HANDLER
        && let Some(busy) = agent_claim
    {
        let outcome = handle.clone();
        tokio::spawn(async move {
            let _ = outcome.outcome().await;
            drop(busy);
        });
    }
    if !wait {
        let task = store
            .task(id)
            .await?
            .map_or_else(|| submitted(id, &spec), Task::from);
        return Ok((StatusCode::ACCEPTED, Json(task)));
    }
    let Ok(outcome) = tokio::time::timeout(SUBMIT_WAIT, handle.outcome()).await else {
        // Still running: the task as it is now, for the client to follow.
        let task = store
            .task(id)
            .await?
            .map_or_else(|| submitted(id, &spec), Task::from);
        return Ok((StatusCode::ACCEPTED, Json(task)));
    };
    let task = match store.task(id).await? {
        Some(task) if task.status.is_final() => task.into(),
        // Ephemeral (never logged) or async (not committed yet): the
        // outcome is the answer.
        _ => ended(id, &spec, outcome?),
    };
    Ok((StatusCode::OK, Json(task)))
}

/// How long a submission waits for an async task's submission to be
/// committed before answering anyway.
const LOGGED_WAIT: Duration = Duration::from_secs(5);

/// Waits (up to [`LOGGED_WAIT`]) until the log holds task `id`.
async fn logged(state: &AppState, id: Uuid) -> Result<(), Problem> {
    let store = &state.kernel.store;
    let wait = async {
        loop {
            let head = store.head().await?.seq;
            if store.task(id).await?.is_some() {
                return Ok::<_, Problem>(());
            }
            store.wait_for_events(head).await?;
        }
    };
    match tokio::time::timeout(LOGGED_WAIT, wait).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// The task a repeated idempotency key names, if the request is the same
/// one; a conflict otherwise.
fn same_request(spec: &TaskSpec, task: TaskRecord) -> Result<Task, Problem> {
    if task.spec.handler == spec.handler && task.spec.input == spec.input {
        Ok(task.into())
    } else {
        Err(Problem::conflict(format!(
            "the idempotency key already names task {}, submitted with another request",
            task.id
        )))
    }
}

/// A task just submitted, before the log shows it.
fn submitted(id: Uuid, spec: &TaskSpec) -> Task {
    Task {
        id,
        handler: spec.handler.clone(),
        input: spec.input.clone(),
        status: "pending".into(),
        attempts: 0,
        interrupted: 0,
        output: None,
        error: None,
        idempotency_key: spec.idempotency_key.clone(),
        parent: spec.parent,
        children: Vec::new(),
    }
}

/// A task that ended with `outcome`, for one the log does not show ended.
fn ended(id: Uuid, spec: &TaskSpec, outcome: TaskOutcome) -> Task {
    let mut task = submitted(id, spec);
    let (status, output, error) = match outcome {
        TaskOutcome::Completed(v) => ("completed", Some(v), None),
        TaskOutcome::Failed(e) => ("failed", None, Some(e)),
        TaskOutcome::TimedOut => ("timed_out", None, Some("timed out".to_owned())),
        TaskOutcome::Cancelled(r) => ("cancelled", None, Some(r)),
    };
    task.status = status.into();
    task.output = output;
    task.error = error;
    task
}

/// One task.
#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses((status = 200, body = Task), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Task>, Problem> {
    Ok(Json(read(&state, id).await?.into()))
}

async fn read(state: &AppState, id: Uuid) -> Result<TaskRecord, Problem> {
    state
        .kernel
        .store
        .task(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no task {id}")))
}

/// Which tasks to list.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// Where the page starts: the `next` of the page before.
    #[serde(default, deserialize_with = "whole::int64")]
    pub after: Option<u64>,
    /// Items per page (1 to 1000; 100 by default).
    #[serde(default, deserialize_with = "whole::count")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `unfinished` for only pending and running tasks.
    #[param(inline)]
    pub status: Option<StatusFilter>,
}

/// A status filter of a task list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Every task.
    All,
    /// Pending or running tasks.
    Unfinished,
}

/// A page of tasks, in submission order.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = Listed<Task>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<TaskQuery>,
) -> Result<Json<Listed<Task>>, Problem> {
    let (after, limit) = Paging {
        after: query.after,
        limit: query.limit,
    }
    .read()?;
    let filter = match query.status {
        Some(StatusFilter::Unfinished) => TaskFilter::Unfinished,
        _ => TaskFilter::All,
    };
    let page = state.kernel.store.tasks(filter, after, limit).await?;
    Ok(Json(Listed::of(page, Task::from)))
}

/// Cancels a task that has not ended: the kernel stops it, and the tasks
/// it started.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses((status = 200, body = Task), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "It has already ended")))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Task>, Problem> {
    let task = read(&state, id).await?;
    if task.status.is_final() {
        return Err(Problem::conflict(format!(
            "task {id} has already ended ({})",
            status_name(task.status)
        )));
    }
    match state
        .kernel
        .orchestrator
        .cancel(id, "cancelled over the HTTP API")
        .await
    {
        Ok(()) | Err(OrchestratorError::Ended(_)) => {}
        // Not running here (pending in the log only): record it.
        Err(OrchestratorError::UnknownTask(_)) => {
            let event = agentic_core::SystemEvent::TaskCancelled {
                task_id: id,
                reason: "cancelled over the HTTP API".into(),
            };
            state
                .kernel
                .store
                .append(
                    vec![agentic_core::NewEvent::new(event, Uuid::now_v7())],
                    agentic_core::ExpectedVersion::Any,
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Json(read(&state, id).await?.into()))
}

/// How long to wait for a task.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Longest wait in milliseconds (at most 60000; 30000 by default).
    #[serde(default, deserialize_with = "whole::int64")]
    pub timeout_ms: Option<u64>,
}

/// Longest a wait request may hold its connection.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Waits for a task to end (up to `timeout_ms`) and answers with it as the
/// log has it then: check `status` to see whether it ended.
#[utoipa::path(get, path = "/tasks/{id}/wait", tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), WaitQuery),
    responses((status = 200, body = Task), (status = 404, body = Problem)))]
pub async fn wait(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Task>, Problem> {
    let limit = query
        .timeout_ms
        .map_or(Duration::from_secs(30), Duration::from_millis)
        .min(MAX_WAIT);
    let task = read(&state, id).await?;
    if task.status.is_final() {
        return Ok(Json(task.into()));
    }
    let store = state.kernel.store.clone();
    let follow = async {
        let mut log = store.clone().subscribe(store.head().await?.seq + 1);
        // Read once more: it may have ended before the subscription began.
        if let Some(task) = store.task(id).await?
            && task.status.is_final()
        {
            return Ok::<_, Problem>(());
        }
        loop {
            let event = log.next().await?;
            if let Ok(event) = event.decode()
                && event.task_change().is_some_and(|(t, _)| t == id)
                && let Some(task) = store.task(id).await?
                && task.status.is_final()
            {
                return Ok(());
            }
        }
    };
    if let Ok(result) = tokio::time::timeout(limit, follow).await {
        result?;
    }
    Ok(Json(read(&state, id).await?.into()))
}
