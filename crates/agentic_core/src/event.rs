//! The event model: [`SystemEvent`] (what happened), its versioned encoding,
//! and the envelopes an event travels in before ([`NewEvent`],
//! [`PendingEvent`]) and after ([`EventEnvelope`]) it is stored.
//!
//! Encoding is JSON, externally tagged (`{"element_created":{...}}`), with a
//! schema version per event. Stored payload bytes are kept exactly as they
//! were hashed, so decoding and re-encoding never disturbs the hash chain.
//! When a variant's shape has to change, bump [`EVENT_SCHEMA_VERSION`] and
//! teach [`SystemEvent::decode`] to upcast the older versions: the golden log
//! in `tests/fixtures/` must keep replaying.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::agent::AgentId;
use crate::chain::Hash;
use crate::element::ElementData;
use crate::llm::{AgentSpec, ChatMessage, Usage};
use crate::plugin::{Artifact, CallFailure, FunctionSpec, Grant, InstalledPlugin};
use crate::task::{TaskChange, TaskSpec};
use crate::workflow::run::RunEvent;

/// Bytes reserved up front for an encoded event: most fit, saving regrowth.
const ENCODE_CAPACITY: usize = 256;

/// Schema version written with every newly encoded event.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

/// Everything that can happen in lion. Every change of state is one of these.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemEvent {
    /// A new element was created.
    ElementCreated {
        /// The element, as created.
        element: ElementData,
    },
    /// A task was submitted to the orchestrator.
    TaskSubmitted {
        /// The new task's id.
        task_id: Uuid,
        /// What it asks for.
        spec: TaskSpec,
    },
    /// An attempt of a task started.
    TaskStarted {
        /// The task.
        task_id: Uuid,
        /// 1-based attempt number.
        attempt: u32,
        /// The kernel that claimed the attempt, when several kernels share
        /// the log (absent for a home's only kernel, and in older logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel: Option<Uuid>,
    },
    /// A running attempt reported progress.
    TaskProgress {
        /// The task.
        task_id: Uuid,
        /// 1-based attempt number.
        attempt: u32,
        /// Whatever the handler reported.
        progress: Value,
    },
    /// An attempt finished with an output: the task is done.
    TaskCompleted {
        /// The task.
        task_id: Uuid,
        /// 1-based attempt number.
        attempt: u32,
        /// The handler's output.
        output: Value,
    },
    /// An attempt failed.
    TaskFailed {
        /// The task.
        task_id: Uuid,
        /// 1-based attempt number.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// True when no retry follows.
        #[serde(rename = "final")]
        is_final: bool,
        /// True when the attempt did not fail of itself: its process
        /// stopped under it (a crash, a stop, a lost lease).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// An attempt ran out of time.
    TaskTimedOut {
        /// The task.
        task_id: Uuid,
        /// 1-based attempt number.
        attempt: u32,
        /// True when no retry follows.
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// The task was cancelled.
    TaskCancelled {
        /// The task.
        task_id: Uuid,
        /// Why.
        reason: String,
    },
    /// A message to an agent was logged (durable or async delivery).
    AgentMessaged {
        /// The recipient.
        to: AgentId,
        /// What the sender logged about the message.
        message: Value,
    },
    /// An agent recorded an event of its own state (replayed on restart).
    AgentRecorded {
        /// The agent.
        agent: AgentId,
        /// The agent's event, in its own format.
        data: Value,
    },
    /// A plugin was installed with what the operator granted it.
    PluginInstalled {
        /// The manifest, the grant and the sandbox (boxed: it is large).
        plugin: Box<InstalledPlugin>,
    },
    /// A plugin was compiled, or loaded from its checked cached artifact.
    PluginLoaded {
        /// The plugin.
        name: String,
        /// The artifact that was loaded.
        artifact: Artifact,
        /// True when it came from the cache rather than the compiler.
        cached: bool,
        /// How long compiling or loading took, in microseconds.
        micros: u64,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A call of a plugin function started.
    PluginInvoked {
        /// The plugin.
        name: String,
        /// The call.
        call_id: Uuid,
        /// The function called.
        function: String,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A plugin call returned its output.
    PluginSucceeded {
        /// The plugin.
        name: String,
        /// The call.
        call_id: Uuid,
        /// The output, valid against the function's output schema.
        output: Value,
        /// How long the call took, in microseconds.
        micros: u64,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A plugin call failed.
    PluginFailed {
        /// The plugin.
        name: String,
        /// The call.
        call_id: Uuid,
        /// Why.
        failure: CallFailure,
        /// How long the call took, in microseconds.
        micros: u64,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A plugin asked for something it was not granted, and was refused.
    PluginPermissionDenied {
        /// The plugin.
        name: String,
        /// The call that asked, if any.
        call_id: Option<Uuid>,
        /// What it asked for (`tcp connect 127.0.0.1:80`, `interface kv`...).
        asked: String,
        /// Why it was refused.
        reason: String,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A plugin was quarantined after repeated failures: calls are refused.
    PluginQuarantined {
        /// The plugin.
        name: String,
        /// Failures in a row that led to it.
        failures: u32,
        /// The last failure.
        reason: String,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// A plugin was removed, with its key-value data.
    PluginRemoved {
        /// The plugin.
        name: String,
    },
    /// A plugin call wrote a key of its key-value store (committed with the
    /// call's result).
    PluginKvSet {
        /// The plugin.
        name: String,
        /// The key.
        key: String,
        /// The new value; `None` deletes the key.
        value: Option<String>,
        /// The install the call ran on ([`InstalledPlugin::install_id`]): a
        /// write of a call that outlived its install (the plugin was
        /// removed and installed again meanwhile) changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// The operator changed what an installed plugin is granted (`lion
    /// plugin grant`), naming every granted directory's host path.
    PluginGranted {
        /// The plugin.
        name: String,
        /// The whole new grant (a subset of what its manifest asks for).
        grant: Grant,
        /// The install it is for ([`InstalledPlugin::install_id`]): a grant
        /// meant for an earlier install of this name is refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
    /// The operator approved what a server plugin offers now (`lion plugin
    /// approve`): new tools, or tools whose description or schemas changed
    /// since they were approved, become callable.
    PluginApproved {
        /// The plugin.
        name: String,
        /// Every function it may now call, by lion's name (the whole set).
        functions: BTreeMap<String, FunctionSpec>,
        /// The install it is for: an approval meant for an earlier install
        /// of this name is refused.
        install_id: Option<Uuid>,
    },
    /// An LLM agent was spawned (or spawned again after being stopped).
    AgentSpawned {
        /// Its name.
        name: String,
        /// How.
        spec: AgentSpec,
    },
    /// A message was sent to an LLM agent: a run starts.
    AgentPrompted {
        /// The agent.
        name: String,
        /// The run (the completion that answers it).
        run_id: Uuid,
        /// The message.
        message: ChatMessage,
    },
    /// A tool call of an agent's model was answered: the plugin's output,
    /// its failure, or the refusal of a tool the agent was not granted.
    AgentToolResult {
        /// The agent.
        name: String,
        /// The run.
        run_id: Uuid,
        /// The answer, as a `tool` message naming the call.
        message: ChatMessage,
    },
    /// An LLM agent was stopped: it takes no more messages.
    AgentStopped {
        /// The agent.
        name: String,
    },
    /// Text an LLM streamed for an agent. Live subscribers get one of these
    /// per chunk, uncommitted; the log gets them coalesced (by size or time).
    LlmDelta {
        /// The agent.
        agent: String,
        /// The completion.
        run_id: Uuid,
        /// The text.
        text: String,
    },
    /// An LLM completion for an agent finished: the whole message.
    LlmFinished {
        /// The agent.
        agent: String,
        /// The completion.
        run_id: Uuid,
        /// The assistant's message, tool calls included.
        message: ChatMessage,
        /// Tokens used.
        usage: Usage,
        /// Why it ended (`stop`, `length`, `tool_calls`...).
        finish_reason: Option<String>,
    },
    /// An LLM completion for an agent was stopped before it finished.
    LlmStopped {
        /// The agent.
        agent: String,
        /// The completion.
        run_id: Uuid,
        /// Why: the token budget, a cancellation, or the provider's error.
        reason: String,
        /// The text streamed before it stopped.
        partial: String,
        /// Tokens counted when it stopped.
        tokens: u64,
    },
    /// An event of a workflow run, on the run's stream `workflow:<run>`
    /// (see [`crate::workflow::run`]).
    WorkflowRecorded {
        /// The run.
        run: Uuid,
        /// What happened to it (boxed: a run's start holds its definition).
        event: Box<RunEvent>,
    },
    /// A plugin emitted a custom event (committed with the call's result).
    PluginEmitted {
        /// The plugin.
        name: String,
        /// The call that emitted it.
        call_id: Uuid,
        /// The plugin's name for the event.
        kind: String,
        /// Its JSON data.
        data: Value,
        /// The install it is about ([`InstalledPlugin::install_id`]): an
        /// event of an earlier install of this name changes nothing. `None`
        /// in logs written before installs had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        install_id: Option<Uuid>,
    },
}

impl SystemEvent {
    /// The event's type name, as it appears in the encoded payload.
    pub fn kind(&self) -> &'static str {
        match self {
            SystemEvent::ElementCreated { .. } => "element_created",
            SystemEvent::TaskSubmitted { .. } => "task_submitted",
            SystemEvent::TaskStarted { .. } => "task_started",
            SystemEvent::TaskProgress { .. } => "task_progress",
            SystemEvent::TaskCompleted { .. } => "task_completed",
            SystemEvent::TaskFailed { .. } => "task_failed",
            SystemEvent::TaskTimedOut { .. } => "task_timed_out",
            SystemEvent::TaskCancelled { .. } => "task_cancelled",
            SystemEvent::AgentMessaged { .. } => "agent_messaged",
            SystemEvent::AgentRecorded { .. } => "agent_recorded",
            SystemEvent::PluginInstalled { .. } => "plugin_installed",
            SystemEvent::PluginLoaded { .. } => "plugin_loaded",
            SystemEvent::PluginInvoked { .. } => "plugin_invoked",
            SystemEvent::PluginSucceeded { .. } => "plugin_succeeded",
            SystemEvent::PluginFailed { .. } => "plugin_failed",
            SystemEvent::PluginPermissionDenied { .. } => "plugin_permission_denied",
            SystemEvent::PluginQuarantined { .. } => "plugin_quarantined",
            SystemEvent::PluginRemoved { .. } => "plugin_removed",
            SystemEvent::PluginKvSet { .. } => "plugin_kv_set",
            SystemEvent::PluginGranted { .. } => "plugin_granted",
            SystemEvent::PluginApproved { .. } => "plugin_approved",
            SystemEvent::PluginEmitted { .. } => "plugin_emitted",
            SystemEvent::AgentSpawned { .. } => "agent_spawned",
            SystemEvent::AgentPrompted { .. } => "agent_prompted",
            SystemEvent::AgentStopped { .. } => "agent_stopped",
            SystemEvent::AgentToolResult { .. } => "agent_tool_result",
            SystemEvent::LlmDelta { .. } => "llm_delta",
            SystemEvent::LlmFinished { .. } => "llm_finished",
            SystemEvent::LlmStopped { .. } => "llm_stopped",
            SystemEvent::WorkflowRecorded { .. } => "workflow_recorded",
        }
    }

    /// For an event that changes an LLM agent's record: the agent's name.
    pub fn agent_name(&self) -> Option<&str> {
        match self {
            SystemEvent::AgentSpawned { name, .. }
            | SystemEvent::AgentPrompted { name, .. }
            | SystemEvent::AgentToolResult { name, .. }
            | SystemEvent::AgentStopped { name } => Some(name),
            SystemEvent::LlmFinished { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// For an event about a plugin: the plugin's name.
    pub fn plugin_name(&self) -> Option<&str> {
        match self {
            SystemEvent::PluginInstalled { plugin } => Some(plugin.name()),
            SystemEvent::PluginLoaded { name, .. }
            | SystemEvent::PluginInvoked { name, .. }
            | SystemEvent::PluginSucceeded { name, .. }
            | SystemEvent::PluginFailed { name, .. }
            | SystemEvent::PluginPermissionDenied { name, .. }
            | SystemEvent::PluginQuarantined { name, .. }
            | SystemEvent::PluginRemoved { name }
            | SystemEvent::PluginKvSet { name, .. }
            | SystemEvent::PluginGranted { name, .. }
            | SystemEvent::PluginApproved { name, .. }
            | SystemEvent::PluginEmitted { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The install a plugin event is about, for the events that name one
    /// (calls, loads, key-value writes, grants); `None` for every other
    /// event and in logs written before installs had ids.
    pub fn plugin_install_id(&self) -> Option<Uuid> {
        match self {
            SystemEvent::PluginLoaded { install_id, .. }
            | SystemEvent::PluginInvoked { install_id, .. }
            | SystemEvent::PluginSucceeded { install_id, .. }
            | SystemEvent::PluginFailed { install_id, .. }
            | SystemEvent::PluginPermissionDenied { install_id, .. }
            | SystemEvent::PluginQuarantined { install_id, .. }
            | SystemEvent::PluginKvSet { install_id, .. }
            | SystemEvent::PluginEmitted { install_id, .. }
            | SystemEvent::PluginGranted { install_id, .. }
            | SystemEvent::PluginApproved { install_id, .. } => *install_id,
            _ => None,
        }
    }

    /// For an event about an existing task: the task and the change it makes.
    pub fn task_change(&self) -> Option<(Uuid, TaskChange)> {
        let change = match self {
            SystemEvent::ElementCreated { .. }
            | SystemEvent::TaskSubmitted { .. }
            | SystemEvent::AgentMessaged { .. }
            | SystemEvent::AgentRecorded { .. }
            | SystemEvent::PluginInstalled { .. }
            | SystemEvent::PluginLoaded { .. }
            | SystemEvent::PluginInvoked { .. }
            | SystemEvent::PluginSucceeded { .. }
            | SystemEvent::PluginFailed { .. }
            | SystemEvent::PluginPermissionDenied { .. }
            | SystemEvent::PluginQuarantined { .. }
            | SystemEvent::PluginRemoved { .. }
            | SystemEvent::PluginKvSet { .. }
            | SystemEvent::PluginGranted { .. }
            | SystemEvent::PluginApproved { .. }
            | SystemEvent::PluginEmitted { .. }
            | SystemEvent::AgentSpawned { .. }
            | SystemEvent::AgentPrompted { .. }
            | SystemEvent::AgentStopped { .. }
            | SystemEvent::AgentToolResult { .. }
            | SystemEvent::LlmDelta { .. }
            | SystemEvent::LlmFinished { .. }
            | SystemEvent::LlmStopped { .. }
            | SystemEvent::WorkflowRecorded { .. } => return None,
            SystemEvent::TaskStarted {
                task_id,
                attempt,
                kernel,
            } => (
                *task_id,
                TaskChange::Started {
                    attempt: *attempt,
                    kernel: *kernel,
                },
            ),
            SystemEvent::TaskProgress {
                task_id,
                attempt,
                progress,
            } => (
                *task_id,
                TaskChange::Progress {
                    attempt: *attempt,
                    progress: progress.clone(),
                },
            ),
            SystemEvent::TaskCompleted {
                task_id,
                attempt,
                output,
            } => (
                *task_id,
                TaskChange::Completed {
                    attempt: *attempt,
                    output: output.clone(),
                },
            ),
            SystemEvent::TaskFailed {
                task_id,
                attempt,
                error,
                is_final,
                interrupted,
            } => (
                *task_id,
                TaskChange::Failed {
                    attempt: *attempt,
                    error: error.clone(),
                    is_final: *is_final,
                    interrupted: *interrupted,
                },
            ),
            SystemEvent::TaskTimedOut {
                task_id,
                attempt,
                is_final,
            } => (
                *task_id,
                TaskChange::TimedOut {
                    attempt: *attempt,
                    is_final: *is_final,
                },
            ),
            SystemEvent::TaskCancelled { task_id, reason } => (
                *task_id,
                TaskChange::Cancelled {
                    reason: reason.clone(),
                },
            ),
        };
        Some(change)
    }

    /// The stream this event belongs to when the caller names none: one stream
    /// per entity, e.g. `element:<id>`.
    pub fn default_stream(&self) -> String {
        match self {
            SystemEvent::ElementCreated { element } => format!("element:{}", element.id),
            SystemEvent::TaskSubmitted { task_id, .. } => format!("task:{task_id}"),
            SystemEvent::AgentRecorded { agent, .. } => agent.stream(),
            SystemEvent::AgentMessaged { to, .. } => format!("{}:inbox", to.stream()),
            SystemEvent::WorkflowRecorded { run, .. } => crate::workflow::run::stream(*run),
            other if other.plugin_name().is_some() => {
                format!("plugin:{}", other.plugin_name().unwrap_or_default())
            }
            SystemEvent::LlmDelta { agent: name, .. }
            | SystemEvent::LlmFinished { agent: name, .. }
            | SystemEvent::LlmStopped { agent: name, .. }
            | SystemEvent::AgentSpawned { name, .. }
            | SystemEvent::AgentPrompted { name, .. }
            | SystemEvent::AgentToolResult { name, .. }
            | SystemEvent::AgentStopped { name } => format!("agent:{name}:llm"),
            other => match other.task_change() {
                Some((task_id, _)) => format!("task:{task_id}"),
                None => "system".to_owned(),
            },
        }
    }

    /// Encodes the event as JSON at the current [`EVENT_SCHEMA_VERSION`].
    pub fn encode(&self) -> Result<Vec<u8>, EventError> {
        let mut out = Vec::with_capacity(ENCODE_CAPACITY);
        serde_json::to_writer(&mut out, self).map_err(|e| EventError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Decodes a payload written at `schema_version`, upcasting older versions.
    pub fn decode(schema_version: u16, payload: &[u8]) -> Result<Self, EventError> {
        match schema_version {
            1 => serde_json::from_slice(payload).map_err(|e| EventError::Decode {
                schema_version,
                message: e.to_string(),
            }),
            other => Err(EventError::UnsupportedVersion(other)),
        }
    }
}

/// Errors encoding or decoding events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The event could not be serialised.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// A stored payload is not a valid event of its schema version.
    #[error("cannot decode event (schema v{schema_version}): {message}")]
    Decode {
        /// The schema version the payload claims.
        schema_version: u16,
        /// What the decoder said.
        message: String,
    },
    /// The payload was written by a newer lion than this one.
    #[error(
        "event schema version {0} is not supported by this lion (newest known: {EVENT_SCHEMA_VERSION})"
    )]
    UnsupportedVersion(u16),
}

/// An event a caller wants appended, with its causal metadata.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Unique id; appending the same id again is idempotent.
    pub event_id: Uuid,
    /// The stream (entity) the event belongs to. An element's creation is
    /// refused on any stream but its default, `element:<id>`.
    pub stream: String,
    /// Id shared by every event caused by one request.
    pub correlation_id: Uuid,
    /// Id of the event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// What happened.
    pub event: SystemEvent,
}

impl NewEvent {
    /// A new event on its default stream, with a fresh event id.
    pub fn new(event: SystemEvent, correlation_id: Uuid) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            stream: event.default_stream(),
            correlation_id,
            causation_id: None,
            event,
        }
    }

    /// Sets the causation id.
    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Encodes the payload into an unsealed record, ready for a store's
    /// writer to give it a position and seal it into the chain.
    pub fn encode(self) -> Result<PendingEvent, EventError> {
        let payload = self.event.encode()?;
        Ok(PendingEvent {
            record: EventEnvelope {
                seq: 0,
                event_id: self.event_id,
                stream: self.stream,
                stream_version: 0,
                recorded_at: DateTime::<Utc>::UNIX_EPOCH,
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
                schema_version: EVENT_SCHEMA_VERSION,
                payload,
                prev_hash: Hash::GENESIS,
                hash: Hash::GENESIS,
            },
            event: self.event,
        })
    }
}

/// A [`NewEvent`] encoded into a record that has no position yet: the writer
/// fills in `seq`, `stream_version`, `recorded_at` and the chain hashes.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// The record, unsealed.
    pub record: EventEnvelope,
    /// The decoded event, kept so the writer can update projections without decoding.
    pub event: SystemEvent,
}

/// A stored event: its position in the log, its metadata and its link in the
/// hash chain. The payload is kept encoded; [`EventEnvelope::decode`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Global sequence number: gapless, starting at 1, in commit order.
    pub seq: u64,
    /// Unique event id.
    pub event_id: Uuid,
    /// The stream (entity) the event belongs to.
    pub stream: String,
    /// Position within its stream, starting at 1.
    pub stream_version: u64,
    /// When the event was committed (microsecond precision).
    pub recorded_at: DateTime<Utc>,
    /// Id shared by every event caused by one request.
    pub correlation_id: Uuid,
    /// Id of the event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Schema version of `payload`.
    pub schema_version: u16,
    /// The encoded event, byte for byte as hashed.
    #[serde(with = "payload_text")]
    pub payload: Vec<u8>,
    /// Hash of the previous record (all zeros for the first).
    pub prev_hash: Hash,
    /// Hash of this record, covering every field above and `prev_hash`.
    pub hash: Hash,
}

impl EventEnvelope {
    /// The current time at the precision `recorded_at` is stored and hashed
    /// with (microseconds), so a record reads back exactly as it was hashed.
    pub fn now() -> DateTime<Utc> {
        let now = Utc::now();
        DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
    }

    /// Decodes the payload into a [`SystemEvent`].
    pub fn decode(&self) -> Result<SystemEvent, EventError> {
        SystemEvent::decode(self.schema_version, &self.payload)
    }
}

/// Serialises payload bytes (always UTF-8 JSON) as a string, so exported logs
/// stay readable.
mod payload_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d)
            .map(String::into_bytes)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn element() -> ElementData {
        let meta = json!({"k": "v"}).as_object().cloned().unwrap_or_default();
        ElementData::new(meta, Some("body".into()))
    }

    #[test]
    fn encoding_is_externally_tagged_and_round_trips() {
        let e = SystemEvent::ElementCreated { element: element() };
        let bytes = e.encode().expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert!(v.get("element_created").is_some(), "{v}");
        let decoded = SystemEvent::decode(EVENT_SCHEMA_VERSION, &bytes).expect("decode");
        match (e, decoded) {
            (
                SystemEvent::ElementCreated { element: orig },
                SystemEvent::ElementCreated { element: back },
            ) => assert!(orig.same_content(&back)),
            other => panic!("decoded into another event: {other:?}"),
        }
    }

    #[test]
    fn task_events_name_their_task_and_stream() {
        let task_id = Uuid::now_v7();
        let started = SystemEvent::TaskStarted {
            task_id,
            attempt: 1,
            kernel: None,
        };
        assert_eq!(started.kind(), "task_started");
        assert_eq!(started.default_stream(), format!("task:{task_id}"));
        assert_eq!(
            started.task_change(),
            Some((
                task_id,
                TaskChange::Started {
                    attempt: 1,
                    kernel: None
                }
            ))
        );
        let bytes = started.encode().expect("encode");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert_eq!(
            text,
            format!(r#"{{"task_started":{{"task_id":"{task_id}","attempt":1}}}}"#)
        );
        assert!(SystemEvent::decode(EVENT_SCHEMA_VERSION, &bytes).is_ok());
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert_eq!(
            SystemEvent::decode(99, b"{}").unwrap_err(),
            EventError::UnsupportedVersion(99)
        );
        assert!(matches!(
            SystemEvent::decode(1, b"{\"no_such_event\":{}}"),
            Err(EventError::Decode { .. })
        ));
    }

    #[test]
    fn new_event_uses_the_entity_stream() {
        let el = element();
        let id = el.id;
        let ev = NewEvent::new(SystemEvent::ElementCreated { element: el }, Uuid::now_v7());
        assert_eq!(ev.stream, format!("element:{id}"));
        let pending = ev.encode().expect("encode");
        assert_eq!(pending.record.schema_version, EVENT_SCHEMA_VERSION);
    }
}
