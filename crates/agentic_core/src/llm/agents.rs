//! LLM agents as data: what `lion agent spawn` records ([`AgentSpec`]) and
//! what the log says of an agent since ([`AgentRecord`]: its status, its
//! conversation memory and the tokens it used).
//!
//! Every agent is bounded: a token budget per message ([`AgentSpec::token_budget`],
//! [`DEFAULT_BUDGET_TOKENS`] unless spawned with another) and a size bound on
//! each answer ([`AgentSpec::answer_bytes`], [`DEFAULT_ANSWER_BYTES`]). Agents
//! recorded before these defaults existed get them when they run: their
//! spec says nothing, and nothing means the default.

use serde::{Deserialize, Serialize};

use super::{ChatMessage, Role, Usage};

/// Tokens one message to an agent may make the model generate, tool rounds
/// included, when the agent was spawned without `--budget-tokens`. About
/// 16 KB of text: room for a long chat answer, and a stop for a model (or a
/// server) that streams without end, whose every chunk is published and
/// logged.
pub const DEFAULT_BUDGET_TOKENS: u64 = 4096;

/// Bytes of text and tool-call arguments one completion may stream when the
/// agent was spawned without `--max-answer-bytes`: 1 MiB, far past what
/// [`DEFAULT_BUDGET_TOKENS`] lets through, so it binds only under a large
/// budget or a provider whose chunks are huge. Past it the stream is
/// stopped, as by a budget, and that is recorded.
pub const DEFAULT_ANSWER_BYTES: u64 = 1 << 20;

/// The largest answer bound an agent may be given: an answer is held in
/// memory while it streams and logged twice (its coalesced deltas, then the
/// whole message), so the bound must stay a small part of the host's memory
/// and disk.
pub const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// How an LLM agent was spawned. No secret is kept here: API keys come from
/// the environment at each use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The model, when chosen at spawn (else the configured default).
    #[serde(default)]
    pub model: Option<String>,
    /// The provider's base URL, when chosen at spawn.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The system prompt.
    #[serde(default)]
    pub system: String,
    /// Most tokens one run may generate; none: [`DEFAULT_BUDGET_TOKENS`]
    /// (see [`AgentSpec::token_budget`]).
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    /// Most bytes of text and tool-call arguments one completion may
    /// stream; none: [`DEFAULT_ANSWER_BYTES`] (see [`AgentSpec::answer_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answer_bytes: Option<u64>,
    /// Plugin functions the agent may call, as `PLUGIN.FUNCTION`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

impl AgentSpec {
    /// The token budget of one message: the one chosen at spawn, else
    /// [`DEFAULT_BUDGET_TOKENS`] (agents spawned before there was a default
    /// get it too).
    pub fn token_budget(&self) -> u64 {
        self.budget_tokens.unwrap_or(DEFAULT_BUDGET_TOKENS)
    }

    /// The size bound of one answer, in bytes: the one chosen at spawn
    /// (at most [`MAX_ANSWER_BYTES`]), else [`DEFAULT_ANSWER_BYTES`].
    pub fn answer_bytes(&self) -> u64 {
        self.max_answer_bytes
            .map_or(DEFAULT_ANSWER_BYTES, |b| b.min(MAX_ANSWER_BYTES))
    }

    /// Checks the limits chosen at spawn: a budget of at least one token,
    /// an answer bound of 1 byte to [`MAX_ANSWER_BYTES`]. The error names
    /// the flag to fix.
    pub fn check_limits(&self) -> Result<(), String> {
        if self.budget_tokens == Some(0) {
            return Err("--budget-tokens must be at least 1".into());
        }
        match self.max_answer_bytes {
            Some(b) if b == 0 || b > MAX_ANSWER_BYTES => Err(format!(
                "--max-answer-bytes must be 1 to {MAX_ANSWER_BYTES} (64 MiB), got {b}"
            )),
            _ => Ok(()),
        }
    }
}

/// Whether an agent takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// It answers.
    Active,
    /// `lion agent stop` stopped it.
    Stopped,
}

/// An LLM agent, folded from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its name.
    pub name: String,
    /// How it was spawned.
    pub spec: AgentSpec,
    /// Whether it takes messages.
    pub status: AgentStatus,
    /// Its conversation: each prompt and each finished answer, in order.
    pub messages: Vec<ChatMessage>,
    /// Tokens its finished completions used.
    pub usage: Usage,
}

impl AgentRecord {
    /// A freshly spawned agent.
    pub fn spawned(name: &str, spec: AgentSpec) -> Self {
        Self {
            name: name.to_owned(),
            spec,
            status: AgentStatus::Active,
            messages: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// The messages to send the model: the system prompt, then memory.
    pub fn prompt(&self) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if !self.spec.system.is_empty() {
            out.push(ChatMessage::new(Role::System, self.spec.system.clone()));
        }
        out.extend(self.messages.iter().cloned());
        out
    }

    /// Takes note of a finished answer.
    pub fn answered(&mut self, message: &ChatMessage, usage: &Usage) {
        self.messages.push(message.clone());
        self.usage.prompt_tokens += usage.prompt_tokens;
        self.usage.completion_tokens += usage.completion_tokens;
    }
}
