//! The [`LlmProvider`] port: chat completions streamed chunk by chunk, as
//! lion's agents need them. Adapters (the OpenAI-compatible protocol, the
//! embedded local model) live outside the kernel, in `agentic_llm`.
//!
//! A stream is a [`ChatStream`]: chunks arrive the moment the provider sends
//! them; dropping the stream cancels the request. [`Relay`] carries one to
//! live subscribers and, coalesced, into the log; [`AgentRunner`] runs an
//! agent's turn (memory from the log, tools through the plugin manager);
//! [`AgentTask`] lets a running kernel run agents for other processes.

mod agents;
pub mod patterns;
mod relay;
mod runner;
mod task;

pub use agents::{
    AgentRecord, AgentSpec, AgentStatus, DEFAULT_ANSWER_BYTES, DEFAULT_BUDGET_TOKENS,
    MAX_ANSWER_BYTES,
};
pub use relay::{
    BYTES_PER_TOKEN, RELAY_APPEND_QUEUE, Relay, RelayOptions, RelayOutcome, StopReason, TokenBudget,
};
pub use runner::{
    AgentRunner, MAX_TOOL_NAME, MAX_TOOL_ROUNDS, RunError, RunOutcome, Tools, tool_name,
};
pub use task::{AGENT_HANDLER, AgentTask, ProviderResolver, ResolvedProvider};

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person (or agent) asking.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (echoed in the tool's answer).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// Its arguments, as the model wrote them (JSON text).
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// Tool calls the assistant asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool's answer: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call, described by a JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

/// A request for one streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model to use.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// Tokens a completion used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// One piece of a streamed completion, in the order the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatChunk {
    /// More text of the answer.
    Text(String),
    /// Part of a tool call: the first part of each call carries its id and
    /// name, later parts more of its arguments.
    ToolCallDelta {
        /// Which call (the provider's index) this part belongs to.
        index: u32,
        /// The call's id, on its first part.
        id: Option<String>,
        /// The tool's name, on its first part.
        name: Option<String>,
        /// More of the arguments' JSON text.
        arguments: String,
    },
    /// Tokens used so far (providers send it at the end).
    Usage(Usage),
    /// The completion ended, and why (`stop`, `length`, `tool_calls`...).
    Finished(Option<String>),
}

/// Why a completion failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No provider is configured, or its configuration is invalid (the
    /// message says which, and how to fix it).
    #[error("{0}")]
    NotConfigured(String),
    /// The provider could not be reached.
    #[error("cannot reach the LLM provider at {url}: {message}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// The provider refused the API key (401/403).
    #[error("the LLM provider refused the API key ({status}): {message}")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// Too many requests, still after retrying.
    #[error("the LLM provider is rate limiting (429){}: {message}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// How long the provider asked to wait.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// The provider refused the request (unknown model, bad parameters...).
    #[error("the LLM provider refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider failed (5xx), still after retrying.
    #[error("the LLM provider failed ({status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The stream stopped before it was finished.
    #[error("the LLM stream broke off: {0}")]
    StreamBroken(String),
    /// A chunk could not be understood.
    #[error("the LLM provider sent a malformed chunk: {0}")]
    Malformed(String),
    /// The embedded local model could not run the request (a prompt longer
    /// than its context, a template it cannot render, an inference failure).
    #[error("the local model: {0}")]
    Local(String),
}

/// A streamed completion: chunks arrive as the provider sends them, then
/// the stream ends (`None`). Dropping it cancels the request.
pub struct ChatStream {
    rx: mpsc::Receiver<Result<ChatChunk, LlmError>>,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChatStream")
    }
}

/// The sending half of a [`ChatStream`], for providers.
pub type ChunkSender = mpsc::Sender<Result<ChatChunk, LlmError>>;

impl ChatStream {
    /// A stream and the sender a provider feeds it through. A small buffer:
    /// a slow reader slows the provider rather than piling chunks up.
    pub fn channel() -> (ChunkSender, Self) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Self { rx })
    }

    /// The next chunk, or `None` when the completion is over.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, LlmError>> {
        self.rx.recv().await
    }
}

/// A chat model that streams its answers.
#[async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// A short name for logs and events (`openai`, `local`...).
    fn name(&self) -> &str;

    /// Starts a streamed completion. Errors before the first chunk (the
    /// provider unreachable, a refused key, an unknown model) come back
    /// here; errors after it come through the stream.
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError>;
}
