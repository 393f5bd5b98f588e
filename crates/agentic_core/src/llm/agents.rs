//! LLM agents as data: what `lion agent spawn` records ([`AgentSpec`]) and
//! what the log says of an agent since ([`AgentRecord`]: its status, its
//! conversation memory and the tokens it used).

use serde::{Deserialize, Serialize};

use super::{ChatMessage, Role, Usage};

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
    /// Most tokens one run may generate.
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    /// Plugin functions the agent may call, as `PLUGIN.FUNCTION`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
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
