//! `/agents`: spawn, get, list, stop and talk to LLM agents (as `lion
//! agent`). A message runs the agent as a task on the server's kernel;
//! its answer streams as Server-Sent Events while the model writes it, or
//! comes whole. One run per agent at a time (409 for a second); a client
//! that goes away mid-run cancels it, and the cancellation is recorded.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use agentic_core::llm::{AGENT_HANDLER, AgentSpec, AgentStatus, Tools, Usage};
use agentic_core::{
    AgentView, Cursor, ExpectedVersion, LiveEvent, NewEvent, Orchestrator, OrchestratorError,
    SystemEvent, TaskOutcome, TaskSpec,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{Body, Listed, Paging, Path, Query, whole};
use crate::AppState;
use crate::problem::Problem;

/// An agent to spawn.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Its name: no spaces, no ':'.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s:\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub name: String,
    /// The model: a server's model name, or `local:NAME` for the embedded
    /// runtime; the home's default when absent. (The server an agent asks,
    /// and model files by path, are the operator's choice: `lion agent
    /// spawn` on the server's machine.)
    #[serde(default)]
    #[schema(pattern = r"^(?!local:[^/]*/)[^\u0000-\u001f\u007f]*$")]
    pub model: Option<String>,
    /// Its system prompt.
    #[serde(default)]
    pub system: String,
    /// Plugin functions it may call, as `PLUGIN.FUNCTION`.
    #[serde(default)]
    #[schema(value_type = Vec<ToolRef>)]
    pub tools: Vec<String>,
    /// Tokens it may use in all, prompts included.
    #[serde(default, deserialize_with = "whole::int64")]
    #[schema(minimum = 1)]
    pub budget_tokens: Option<u64>,
    /// Longest answer, in bytes.
    #[serde(default, deserialize_with = "whole::int64")]
    #[schema(minimum = 1, maximum = 67108864)]
    pub max_answer_bytes: Option<u64>,
}

/// A plugin function an agent may call: `PLUGIN.FUNCTION`.
#[derive(Debug, utoipa::ToSchema)]
#[schema(pattern = r"^[^.]+\.[^.]+$")]
pub struct ToolRef(pub String);

/// An agent: its spec, status and usage (its conversation is paged with
/// `GET /agents/{name}?after=&limit=`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Agent {
    /// Its name.
    pub name: String,
    /// `active` or `stopped`.
    pub status: String,
    /// Its model, if one was chosen at spawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Its system prompt.
    pub system: String,
    /// The tools it may call.
    pub tools: Vec<String>,
    /// Tokens it may use in all.
    pub budget_tokens: u64,
    /// Longest answer, in bytes.
    pub max_answer_bytes: u64,
    /// Tokens used so far (prompts and answers).
    pub tokens_used: u64,
    /// Messages in its whole conversation.
    pub message_count: u64,
    /// A page of its conversation (empty in lists).
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// Where the next page of the conversation starts, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// Where it runs (given when it is spawned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
}

impl From<AgentView> for Agent {
    fn from(view: AgentView) -> Self {
        let a = view.record;
        Self {
            status: match a.status {
                AgentStatus::Active => "active",
                AgentStatus::Stopped => "stopped",
            }
            .to_owned(),
            budget_tokens: a.spec.token_budget(),
            max_answer_bytes: a.spec.answer_bytes(),
            tokens_used: a.usage.prompt_tokens + a.usage.completion_tokens,
            message_count: view.message_count,
            messages: a
                .messages
                .iter()
                .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                .collect(),
            next: view.next.map(|c| c.0),
            runs_on: None,
            name: a.name,
            model: a.spec.model,
            system: a.spec.system,
            tools: a.spec.tools,
        }
    }
}

/// Spawns an agent.
#[utoipa::path(post, path = "/agents", tag = "agents", request_body = NewAgent,
    responses((status = 201, body = Agent),
        (status = 404, body = Problem, description = "A tool's plugin or function is not installed"),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn spawn(
    State(state): State<AppState>,
    Body(new): Body<NewAgent>,
) -> Result<(StatusCode, Json<Agent>), Problem> {
    if new.name.is_empty()
        || new.name.chars().count() > 128
        || new
            .name
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c.is_control())
    {
        return Err(Problem::unprocessable(
            "an agent name has 1 to 128 characters, without spaces or ':'",
        ));
    }
    let model = new.model.as_deref().unwrap_or("");
    if model.chars().any(|c| c.is_ascii_control()) {
        return Err(Problem::unprocessable(
            "a model name has no control characters",
        ));
    }
    if model.starts_with("local:") && model.contains('/') {
        return Err(Problem::unprocessable(
            "a model file is chosen by path on the server's machine (lion agent spawn), not over HTTP",
        ));
    }
    let store = &state.kernel.store;
    let spec = AgentSpec {
        model: new.model,
        base_url: None,
        system: new.system,
        budget_tokens: new.budget_tokens,
        max_answer_bytes: new.max_answer_bytes,
        tools: new.tools,
    };
    spec.check_limits().map_err(Problem::unprocessable)?;
    let runs_on = (state.kernel.runs_on)(&spec).map_err(Problem::unprocessable)?;
    let plugins = Tools::plugins(store.as_ref(), &spec.tools).await?;
    // A tool naming what is not installed is a missing resource.
    Tools::granted(&plugins, &spec.tools).map_err(|e| {
        if e.contains("no plugin") || e.contains("has no function") {
            Problem::not_found(e)
        } else {
            Problem::unprocessable(e)
        }
    })?;
    if let Some(view) = store.agent(&new.name, Cursor::START, 0).await?
        && view.record.status == AgentStatus::Active
    {
        return Err(Problem::conflict(format!(
            "agent {} already exists (stop it first to spawn it anew)",
            new.name
        )));
    }
    record(
        &state,
        SystemEvent::AgentSpawned {
            name: new.name.clone(),
            spec,
        },
    )
    .await?;
    let view = read(&state, &new.name, Cursor::START, 0).await?;
    let mut agent = Agent::from(view);
    agent.runs_on = Some(runs_on);
    Ok((StatusCode::CREATED, Json(agent)))
}

async fn record(state: &AppState, event: SystemEvent) -> Result<(), Problem> {
    state
        .kernel
        .store
        .append(
            vec![NewEvent::new(event, Uuid::now_v7())],
            ExpectedVersion::Any,
        )
        .await?;
    Ok(())
}

async fn read(
    state: &AppState,
    name: &str,
    after: Cursor,
    limit: usize,
) -> Result<AgentView, Problem> {
    state
        .kernel
        .store
        .agent(name, after, limit)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no agent {name}")))
}

/// An agent with a page of its conversation.
#[utoipa::path(get, path = "/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "The agent's name"), Paging),
    responses((status = 200, body = Agent), (status = 404, body = Problem)))]
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Agent>, Problem> {
    let (after, limit) = paging.read()?;
    Ok(Json(read(&state, &name, after, limit).await?.into()))
}

/// A page of agents, in the order they were spawned.
#[utoipa::path(get, path = "/agents", tag = "agents", params(Paging),
    responses((status = 200, body = Listed<Agent>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Listed<Agent>>, Problem> {
    let (after, limit) = paging.read()?;
    let page = state.kernel.store.agents(after, limit).await?;
    Ok(Json(Listed::of(page, Agent::from)))
}

/// Stops an agent: it takes no more messages.
#[utoipa::path(post, path = "/agents/{name}/stop", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses((status = 200, body = Agent), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Already stopped")))]
pub async fn stop(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Agent>, Problem> {
    read(&state, &name, Cursor::START, 0).await?;
    record(&state, SystemEvent::AgentStopped { name: name.clone() }).await?;
    Ok(Json(read(&state, &name, Cursor::START, 0).await?.into()))
}

/// A message to an agent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// What to say.
    #[schema(min_length = 1)]
    pub text: String,
    /// Stream the answer as Server-Sent Events (`delta`, `tool_call`,
    /// `tool_result`, then `done` or `error`).
    #[serde(default)]
    pub stream: bool,
}

/// An agent's answer to one message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Answer {
    /// The run (the task that ran the agent).
    pub run_id: Uuid,
    /// The answer's text.
    pub content: String,
    /// Tokens the run used.
    pub usage: UsageView,
}

/// Tokens used.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageView {
    /// Tokens of the prompts.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// Sends a message and answers with the agent's reply, whole or streamed.
#[utoipa::path(post, path = "/agents/{name}/messages", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    request_body = Message,
    responses((status = 200, description = "The answer; with stream, as Server-Sent Events",
            content((Answer = "application/json"), (crate::stream::SseEvent = "text/event-stream"))),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "Stopped, busy, out of budget, over its answer bound, or the run was cancelled"),
        (status = 502, body = Problem, description = "The run failed"),
        (status = 504, body = Problem, description = "The run timed out")))]
pub async fn send(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(message): Body<Message>,
) -> Result<Response, Problem> {
    let mut run = AgentRun::start(&state, &name, &message.text).await?;
    if !message.stream {
        return run.answer().await.map(|a| Json(a).into_response());
    }
    Ok(Sse::new(run.into_sse())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The agents with a run in progress through this server.
#[derive(Debug, Default)]
pub struct Busy {
    names: Mutex<HashSet<String>>,
}

impl Busy {
    /// Marks `name` busy until the guard drops; `None` if it already is.
    pub fn claim(self: &Arc<Self>, name: &str) -> Option<BusyGuard> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.insert(name.to_owned()).then(|| BusyGuard {
            busy: self.clone(),
            name: name.to_owned(),
        })
    }
}

/// Frees its agent when dropped.
#[derive(Debug)]
pub struct BusyGuard {
    busy: Arc<Busy>,
    name: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut names = self.busy.names.lock().unwrap_or_else(|p| p.into_inner());
        names.remove(&self.name);
    }
}

/// What happens next in a run.
#[derive(Debug, Clone)]
pub enum RunStep {
    /// Text of the answer.
    Delta(String),
    /// The model called a tool.
    ToolCall {
        /// The tool's name, as the model called it.
        name: String,
        /// Its arguments (JSON text).
        arguments: String,
    },
    /// A tool answered.
    ToolResult(String),
    /// Some live events were missed (a slow reader); the answer is still
    /// whole in [`RunStep::Done`].
    Missed(u64),
    /// The run ended with this answer.
    Done(Answer),
    /// The run failed, timed out or was cancelled.
    Failed(RunFailure),
}

/// Why a run gave no answer, and the status that says so: 409 when the
/// agent stopped itself (its budget or answer bound reached) or the run was
/// cancelled, 502 when its provider failed, 504 when it timed out, 503
/// when the kernel is stopping.
#[derive(Debug, Clone)]
pub struct RunFailure {
    /// The status a whole-answer request gets.
    pub status: StatusCode,
    /// What happened.
    pub message: String,
}

impl RunFailure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// The failure as a problem.
    pub fn problem(&self) -> Problem {
        Problem::new(
            self.status,
            format!("the agent's run failed: {}", self.message),
        )
    }
}

type Outcome = Pin<Box<dyn Future<Output = Result<TaskOutcome, OrchestratorError>> + Send>>;

/// One run of an agent on the server's kernel: its live steps, its
/// outcome. Dropped before it ends (the client went away), it cancels the
/// run, which records the cancellation.
pub struct AgentRun {
    /// The run's id (its task's).
    pub id: Uuid,
    /// The agent.
    agent: String,
    live: broadcast::Receiver<LiveEvent>,
    outcome: Outcome,
    orchestrator: Orchestrator,
    /// Steps read after the outcome arrived, the end last.
    queued: VecDeque<RunStep>,
    ended: bool,
    /// Text streamed so far, to send what a slow reader missed at the end.
    streamed: String,
    /// Set once live events were missed: deltas stop, and the rest of the
    /// answer comes whole at the end.
    gap: bool,
    /// Holds the agent until the run has ended (even after a drop).
    busy: Option<BusyGuard>,
}

impl AgentRun {
    /// Starts a run of agent `name` on `text`: 404 for an unknown agent,
    /// 409 if it is stopped or already running here.
    pub async fn start(state: &AppState, name: &str, text: &str) -> Result<Self, Problem> {
        let view = read(state, name, Cursor::START, 0).await?;
        if view.record.status == AgentStatus::Stopped {
            return Err(Problem::conflict(format!("agent {name} is stopped")));
        }
        if text.is_empty() {
            return Err(Problem::unprocessable("the message is empty"));
        }
        let busy = state.runs.claim(name).ok_or_else(|| {
            Problem::conflict(format!(
                "agent {name} is answering another request: one run per agent at a time"
            ))
        })?;
        let orchestrator = state.kernel.orchestrator.clone();
        // Subscribed before the task exists: no chunk is missed.
        let live = orchestrator.subscribe();
        let spec = TaskSpec::new(AGENT_HANDLER, json!({"agent": name, "text": text}));
        let handle = orchestrator.submit(spec).await?;
        Ok(Self {
            id: handle.id,
            agent: name.to_owned(),
            live,
            outcome: Box::pin(handle.outcome()),
            orchestrator,
            queued: VecDeque::new(),
            ended: false,
            streamed: String::new(),
            gap: false,
            busy: Some(busy),
        })
    }

    /// The next step; `None` after `Done` or `Failed`.
    pub async fn next(&mut self) -> Option<RunStep> {
        if let Some(step) = self.queued.pop_front() {
            return Some(step);
        }
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                biased;
                event = self.live.recv() => match event {
                    Ok(event) => {
                        if let Some(step) = self.step(event.event) {
                            return Some(step);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        self.gap = true;
                        return Some(RunStep::Missed(n));
                    }
                    Err(RecvError::Closed) => {}
                },
                outcome = &mut self.outcome => {
                    // Chunks published before the end may still be queued.
                    while let Ok(event) = self.live.try_recv() {
                        if let Some(step) = self.step(event.event) {
                            self.queued.push_back(step);
                        }
                    }
                    self.ended = true;
                    let end = self.end(outcome);
                    self.queued.push_back(end);
                    return self.queued.pop_front();
                }
            }
        }
    }

    /// The step a live event is, if it belongs to this run.
    fn step(&mut self, event: SystemEvent) -> Option<RunStep> {
        match event {
            SystemEvent::LlmDelta { run_id, text, .. } if run_id == self.id && !self.gap => {
                self.streamed.push_str(&text);
                Some(RunStep::Delta(text))
            }
            SystemEvent::LlmFinished {
                run_id, message, ..
            } if run_id == self.id => {
                let mut calls = message
                    .tool_calls
                    .into_iter()
                    .map(|call| RunStep::ToolCall {
                        name: call.name,
                        arguments: call.arguments,
                    });
                let first = calls.next()?;
                self.queued.extend(calls);
                Some(first)
            }
            SystemEvent::AgentToolResult {
                run_id, message, ..
            } if run_id == self.id => Some(RunStep::ToolResult(message.content)),
            _ => None,
        }
    }

    /// The last step, from the task's outcome.
    fn end(&mut self, outcome: Result<TaskOutcome, OrchestratorError>) -> RunStep {
        match outcome {
            Ok(TaskOutcome::Completed(output)) => {
                let content = output["content"].as_str().unwrap_or_default().to_owned();
                let usage = serde_json::from_value::<UsageView>(output["usage"].clone())
                    .unwrap_or_default();
                // A slow reader missed chunks: what it has not seen of the
                // answer comes as one last delta.
                if content.len() > self.streamed.len()
                    && content.starts_with(&self.streamed)
                    && content.is_char_boundary(self.streamed.len())
                {
                    let rest = content[self.streamed.len()..].to_owned();
                    self.streamed.push_str(&rest);
                    self.queued.push_back(RunStep::Delta(rest));
                }
                RunStep::Done(Answer {
                    run_id: self.id,
                    content,
                    usage,
                })
            }
            // An agent that stopped itself (its budget, its answer bound,
            // too many tool rounds: `RunError::Halted`) cannot answer in
            // its state; any other failure is its provider's.
            Ok(TaskOutcome::Failed(e))
                if e.starts_with(&format!("agent {} stopped: ", self.agent)) =>
            {
                RunStep::Failed(RunFailure::new(StatusCode::CONFLICT, e))
            }
            Ok(TaskOutcome::Failed(e)) => {
                RunStep::Failed(RunFailure::new(StatusCode::BAD_GATEWAY, e))
            }
            Ok(TaskOutcome::TimedOut) => RunStep::Failed(RunFailure::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the run timed out",
            )),
            Ok(TaskOutcome::Cancelled(reason)) => RunStep::Failed(RunFailure::new(
                StatusCode::CONFLICT,
                format!("cancelled: {reason}"),
            )),
            Err(e) => RunStep::Failed(RunFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            )),
        }
    }

    /// Waits for the whole answer; a failed run is a problem (see
    /// [`RunFailure`]).
    pub async fn answer(&mut self) -> Result<Answer, Problem> {
        while let Some(step) = self.next().await {
            match step {
                RunStep::Done(answer) => return Ok(answer),
                RunStep::Failed(failure) => return Err(failure.problem()),
                _ => {}
            }
        }
        Err(Problem::internal("the run ended without an outcome"))
    }

    /// The run as Server-Sent Events (`delta`, `tool_call`, `tool_result`,
    /// `missed`, then `done` or `error`).
    pub fn into_sse(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut run| async move {
            let step = run.next().await?;
            let event = match step {
                RunStep::Delta(text) => Event::default()
                    .event("delta")
                    .json_data(json!({"text": text})),
                RunStep::ToolCall { name, arguments } => Event::default()
                    .event("tool_call")
                    .json_data(json!({"name": name, "arguments": arguments})),
                RunStep::ToolResult(content) => Event::default()
                    .event("tool_result")
                    .json_data(json!({"content": content})),
                RunStep::Missed(n) => Event::default()
                    .event("missed")
                    .json_data(json!({"missed": n})),
                RunStep::Done(answer) => Event::default().event("done").json_data(answer),
                RunStep::Failed(RunFailure { message: error, .. }) => Event::default()
                    .event("error")
                    .json_data(json!({"error": error})),
            };
            let event =
                event.unwrap_or_else(|_| Event::default().event("error").data("unencodable"));
            Some((Ok(event), run))
        })
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The client went away mid-run: stop the run (the kernel records
        // its cancellation), and hold the agent until it has ended.
        let orchestrator = self.orchestrator.clone();
        let id = self.id;
        let busy = self.busy.take();
        let outcome = std::mem::replace(
            &mut self.outcome,
            Box::pin(std::future::ready(Err(OrchestratorError::ShutDown))),
        );
        tracing::info!(run = %id, "client went away: cancelling the agent's run");
        tokio::spawn(async move {
            let _ = orchestrator
                .cancel(id, "the HTTP client went away before the answer ended")
                .await;
            let _ = outcome.await;
            drop(busy);
        });
    }
}
