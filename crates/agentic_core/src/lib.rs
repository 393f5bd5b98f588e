//! The lion kernel: the primitives, the event model and the ports that
//! adapters implement. It has no SQL, HTTP or WebAssembly dependency: the I/O
//! lives in adapter crates around it.
//!
//! Modules, one job each:
//!
//! - [`agent`] — the agent runtime: supervised actors with mailboxes,
//!   `send`/`ask`, topics, and state rebuilt from their events.
//! - [`element`] — [`ElementData`], the identity every lion object shares.
//! - [`plugin`] — plugins as data: the manifest and the operator's grant.
//! - [`progression`] — [`Progression`], an ordered list of ids.
//! - [`pile`] — [`Pile`], a thread-safe, insertion-ordered collection keyed by id.
//! - [`event`] — [`SystemEvent`], its versioned encoding and the envelope a
//!   stored event travels in.
//! - [`chain`] — the SHA-256 hash chain that makes the log tamper-evident, and
//!   its verifier.
//! - [`llm`] — the [`LlmProvider`](llm::LlmProvider) port: chat completions
//!   streamed chunk by chunk.
//! - [`kernel`] — the long-running kernel's loop: recovery, then following
//!   the log for work other processes submit.
//! - [`orchestrator`] — [`Orchestrator`]: runs tasks concurrently through
//!   handlers, with limits, timeouts, retries and cancellation, as events.
//! - [`state`] — [`State`], the pure reducer: replay is a fold of the log.
//! - [`task`] — [`TaskSpec`] and [`TaskRecord`]: tasks as data, and the
//!   rules their events follow.
//! - [`store`] — the [`EventStore`] port that event-store adapters implement,
//!   and [`Subscription`], which follows a store's new events.
//! - [`toml_error`] — TOML parse errors told in one line, with their place.
//! - [`workflow`] — durable workflows: definitions checked into a DAG of
//!   steps, and the templates that carry data between them.

pub mod agent;
pub mod chain;
pub mod element;
pub mod event;
pub mod kernel;
pub mod llm;
pub mod orchestrator;
pub mod pile;
pub mod plugin;
pub mod progression;
pub mod state;
pub mod store;
pub mod task;
pub mod toml_error;
pub mod workflow;

pub use agent::{
    Agent, AgentContext, AgentError, AgentId, AgentRef, Reply, RestartLimit, RestartPolicy,
    Runtime, RuntimeError, SpawnOptions,
};
pub use chain::{ChainError, ChainHead, ChainVerifier, Hash};
pub use element::{Element, ElementData, Metadata};
pub use event::{EventEnvelope, EventError, NewEvent, PendingEvent, SystemEvent};
pub use orchestrator::{
    LiveEvent, Orchestrator, OrchestratorConfig, OrchestratorError, TaskContext, TaskError,
    TaskHandle, TaskHandler, TaskOutcome,
};
pub use pile::{Pile, PileError};
pub use progression::{Progression, ProgressionError};
pub use state::{ApplyError, State};
pub use store::{
    AgentView, AppendReceipt, Cursor, EventStore, ExpectedVersion, Page, PluginSnapshot,
    StoreError, Subscription, TaskFilter,
};
pub use task::{Durability, RetryPolicy, TaskChange, TaskRecord, TaskSpec, TaskStatus};

/// An error with its causes, in one line (`error: cause: root cause`): for
/// messages made from foreign errors (an HTTP client's, say) whose useful
/// part is in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
