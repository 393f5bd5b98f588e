//! lion agents behind the OpenAI chat protocol: `POST /v1/chat/completions`
//! (streamed or not) and `GET /v1/models`, so any OpenAI client library
//! talks to a lion agent by naming it as the model (`agent:NAME`) and
//! passing the server's token as its API key.
//!
//! An agent keeps its own memory (the log), so the protocol's habit of
//! resending the whole conversation is read this way:
//!
//! - **The new turn** is the messages after the last `assistant` message:
//!   one or more `user` messages, sent to the agent as one message (joined
//!   by blank lines). Earlier messages are the client's copy of a
//!   conversation the agent already remembers and are not replayed.
//! - **System messages** are ignored: the agent answers under the system
//!   prompt it was spawned with, which a client cannot replace.
//! - **Client tools** (`tools`, `functions`, a `tool` message in the turn)
//!   are refused (400): an agent calls only the plugin functions the
//!   operator granted it, in lion's sandbox.
//! - **Two requests for one agent at once**: the second gets 409.
//! - Sampling settings (`temperature`, `max_tokens`, …) are accepted and
//!   ignored: the agent's own budget and answer bound apply; `n` must be 1.
//!
//! The run is recorded as `lion agent send` records it; a client that
//! disconnects before the answer ends cancels the run, which is recorded.
//! Errors use OpenAI's shape (`{"error": {"message", "type", "code"}}`) so
//! client libraries raise them with their message.

use std::convert::Infallible;

use agentic_core::Cursor;
use agentic_core::llm::AgentStatus;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::agents::{AgentRun, RunStep};
use crate::problem::Problem;

/// What a model name starts with: the rest is an agent's name.
pub const MODEL_PREFIX: &str = "agent:";

/// Most agents `/v1/models` lists.
const MAX_MODELS: usize = 10_000;

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        let (kind, code) = match p.status {
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::CONFLICT => ("conflict_error", None),
            StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request_error", None),
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => ("agent_error", None),
            StatusCode::SERVICE_UNAVAILABLE => ("server_error", None),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        Self {
            status: p.status,
            message: p.detail,
            kind,
            code,
        }
    }
}

/// A JSON body whose rejection is an OpenAI-shaped error.
pub struct ChatBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ChatBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

fn rejected(rejection: &JsonRejection) -> ApiError {
    ApiError::new(
        rejection.status(),
        "invalid_request_error",
        rejection.body_text(),
    )
}

/// A chat completion request (the fields lion reads; others are ignored).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// `agent:NAME`.
    pub model: String,
    /// The conversation as the client has it.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as chunks.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options (`include_usage`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Client tools: refused.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// Legacy client functions: refused.
    #[serde(default)]
    pub functions: Option<Vec<Value>>,
    /// How many answers: 1 only.
    #[serde(default)]
    pub n: Option<u32>,
}

/// Streaming options.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the run's token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of parts (text parts only).
    #[serde(default)]
    pub content: Option<Value>,
}

impl ChatMessage {
    /// The message's text; parts other than text are refused.
    fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(parts)) => {
                let mut text = Vec::new();
                for part in parts {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(t)) => text.push(t),
                        _ => {
                            return Err(ApiError::invalid(
                                "lion agents take text only: every content part must be {\"type\": \"text\", \"text\": …}",
                            ));
                        }
                    }
                }
                Ok(text.join("\n"))
            }
            Some(_) => Err(ApiError::invalid(
                "a message's content is a string or a list of text parts",
            )),
        }
    }
}

/// The agent a request is for, and the text of its new turn.
fn turn(request: &ChatRequest) -> Result<(String, String), ApiError> {
    let name = request
        .model
        .strip_prefix(MODEL_PREFIX)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "model {:?} is not a lion agent: name one as \"agent:NAME\" (GET /v1/models lists them)",
                    request.model
                ),
            );
            e.code = Some("model_not_found");
            e
        })?;
    if request.tools.as_ref().is_some_and(|t| !t.is_empty())
        || request.functions.as_ref().is_some_and(|f| !f.is_empty())
    {
        return Err(ApiError::invalid(
            "lion agents call only the tools granted at spawn: client tools are not accepted",
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n must be 1: an agent gives one answer"));
    }
    let start = request
        .messages
        .iter()
        .rposition(|m| m.role == "assistant")
        .map_or(0, |i| i + 1);
    let mut parts = Vec::new();
    for message in &request.messages[start..] {
        match message.role.as_str() {
            "user" => parts.push(message.text()?),
            "system" | "developer" => {}
            "tool" => {
                return Err(ApiError::invalid(
                    "a tool message answers a client tool, and lion agents take none",
                ));
            }
            other => return Err(ApiError::invalid(format!("unknown role {other:?}"))),
        }
    }
    let text = parts.join("\n\n");
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "no new user message: the turn is the user messages after the last assistant message",
        ));
    }
    Ok((name.to_owned(), text))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    ChatBody(request): ChatBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let (name, text) = turn(&request)?;
    let mut run = AgentRun::start(&state, &name, &text).await?;
    let created = chrono::Utc::now().timestamp();
    let id = format!("chatcmpl-{}", run.id.simple());
    if !request.stream {
        let answer = run.answer().await?;
        let usage = answer.usage;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }))
        .into_response());
    }
    let chunks = Chunks {
        run,
        id,
        model: request.model,
        created,
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
        state: ChunkState::Role,
    };
    Ok(Sse::new(chunks.into_stream())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where a streamed answer is.
enum ChunkState {
    /// The first chunk names the role.
    Role,
    /// Text chunks.
    Text,
    /// The usage chunk (if asked for) and `[DONE]` are left.
    Closing(Option<Value>),
    /// `[DONE]` is left.
    Done,
    /// Nothing is left.
    Ended,
}

/// A run, as chat completion chunks.
struct Chunks {
    run: AgentRun,
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    state: ChunkState,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            match std::mem::replace(&mut self.state, ChunkState::Ended) {
                ChunkState::Role => {
                    self.state = ChunkState::Text;
                    let chunk = self.chunk(json!({"role": "assistant", "content": ""}), None);
                    return Some(Event::default().data(chunk.to_string()));
                }
                ChunkState::Text => {
                    self.state = ChunkState::Text;
                    match self.run.next().await? {
                        RunStep::Delta(text) => {
                            let chunk = self.chunk(json!({"content": text}), None);
                            return Some(Event::default().data(chunk.to_string()));
                        }
                        RunStep::Done(answer) => {
                            let usage = self.include_usage.then(|| {
                                json!({
                                    "id": self.id,
                                    "object": "chat.completion.chunk",
                                    "created": self.created,
                                    "model": self.model,
                                    "choices": [],
                                    "usage": {
                                        "prompt_tokens": answer.usage.prompt_tokens,
                                        "completion_tokens": answer.usage.completion_tokens,
                                        "total_tokens": answer.usage.prompt_tokens
                                            + answer.usage.completion_tokens,
                                    },
                                })
                            });
                            self.state = ChunkState::Closing(usage);
                            let chunk = self.chunk(json!({}), Some("stop"));
                            return Some(Event::default().data(chunk.to_string()));
                        }
                        RunStep::Failed(failure) => {
                            let error = failure.message;
                            // OpenAI's streams report a failure as an
                            // error object, then end.
                            self.state = ChunkState::Ended;
                            let body = ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "agent_error",
                                format!("the agent's run failed: {error}"),
                            )
                            .body();
                            return Some(Event::default().data(body.to_string()));
                        }
                        // The agent's own tool calls are its business.
                        RunStep::ToolCall { .. } | RunStep::ToolResult(_) | RunStep::Missed(_) => {}
                    }
                }
                ChunkState::Closing(usage) => {
                    self.state = ChunkState::Done;
                    if let Some(usage) = usage {
                        return Some(Event::default().data(usage.to_string()));
                    }
                }
                ChunkState::Done => return Some(Event::default().data("[DONE]")),
                ChunkState::Ended => return None,
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut chunks| async move {
            let event = chunks.next().await?;
            Some((Ok(event), chunks))
        })
    }
}

/// `GET /v1/models`: the active agents, as models.
pub async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut data = Vec::new();
    let mut after = Cursor::START;
    loop {
        let page = state
            .kernel
            .store
            .agents(after, 1000)
            .await
            .map_err(Problem::from)?;
        for view in &page.items {
            if view.record.status == AgentStatus::Active && data.len() < MAX_MODELS {
                data.push(json!({
                    "id": format!("{MODEL_PREFIX}{}", view.record.name),
                    "object": "model",
                    "created": 0,
                    "owned_by": "lion",
                }));
            }
        }
        match page.next {
            Some(next) if data.len() < MAX_MODELS => after = next,
            _ => break,
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Value) -> ChatRequest {
        serde_json::from_value(json!({"model": "agent:ada", "messages": messages})).unwrap()
    }

    #[test]
    fn the_turn_is_what_follows_the_last_answer() {
        let r = request(json!([
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "one"},
            {"role": "user", "content": "second"},
            {"role": "user", "content": [{"type": "text", "text": "third"}]},
        ]));
        assert_eq!(turn(&r).unwrap(), ("ada".into(), "second\n\nthird".into()));
    }

    #[test]
    fn a_turn_without_a_user_message_is_refused() {
        let r = request(json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "one"},
        ]));
        assert!(
            turn(&r)
                .unwrap_err()
                .message
                .contains("no new user message")
        );
    }

    #[test]
    fn client_tools_and_foreign_models_are_refused() {
        let mut r = request(json!([{"role": "user", "content": "hi"}]));
        r.tools = Some(vec![json!({"type": "function"})]);
        assert!(turn(&r).unwrap_err().message.contains("client tools"));
        let mut r = request(json!([{"role": "user", "content": "hi"}]));
        r.model = "gpt-4o".into();
        let e = turn(&r).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, Some("model_not_found"));
    }

    #[test]
    fn images_are_refused() {
        let r =
            request(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]));
        assert!(turn(&r).unwrap_err().message.contains("text only"));
    }
}
