//! [`AgentRunner`]: one run of an LLM agent — a message in, the answer out.
//! The agent's memory comes from the log; the answer streams through the
//! [`Relay`]; tool calls run the agent's granted plugin functions through
//! the [`PluginManager`] and go back to the model, round after round; the
//! token budget covers the whole run.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    AgentStatus, BYTES_PER_TOKEN, ChatMessage, ChatRequest, LlmError, LlmProvider, Relay,
    RelayOptions, RelayOutcome, Role, StopReason, TokenBudget, ToolCall, ToolSpec, Usage,
};
use crate::event::{NewEvent, SystemEvent};
use crate::orchestrator::LiveEvent;
use crate::plugin::{CallOptions, PluginManager, PluginRecord};
use crate::store::{Cursor, EventStore, ExpectedVersion, StoreError};

/// Rounds of tool calls one message may lead to.
pub const MAX_TOOL_ROUNDS: usize = 8;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No agent has this name.
    #[error("no agent {0} (lion agent spawn {0})")]
    UnknownAgent(String),
    /// The agent is stopped.
    #[error("agent {0} is stopped")]
    Stopped(String),
    /// A tool the agent was spawned with is not (or no longer) available.
    #[error("{0}")]
    Tool(String),
    /// The request cannot be run as asked.
    #[error("{0}")]
    Invalid(String),
    /// The provider failed before streaming.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The run was stopped (budget, cancellation, provider error mid-stream,
    /// too many tool rounds); what streamed is in the log.
    #[error("agent {agent} stopped: {reason}")]
    Halted {
        /// The agent.
        agent: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a run ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The run's id (on its events).
    pub run_id: Uuid,
    /// The final answer.
    pub message: ChatMessage,
    /// Tokens the run's completions used.
    pub usage: Usage,
}

/// Runs LLM agents whose memory is the log.
#[derive(Clone)]
pub struct AgentRunner {
    store: Arc<dyn EventStore>,
    provider: Arc<dyn LlmProvider>,
    plugins: Option<PluginManager>,
    live: broadcast::Sender<LiveEvent>,
    correlation_id: Uuid,
    run_budget: Option<Arc<TokenBudget>>,
}

impl AgentRunner {
    /// This runner with a token budget shared by every send of it and of
    /// its clones: one run, however many agents it involves.
    pub fn with_run_budget(mut self, tokens: u64) -> Self {
        self.run_budget = Some(TokenBudget::new(tokens));
        self
    }

    /// A runner recording into `store`, asking `provider`, running tools
    /// through `plugins` (agents with tools need it), publishing every
    /// event as it happens on `live`.
    pub fn new(
        store: Arc<dyn EventStore>,
        provider: Arc<dyn LlmProvider>,
        plugins: Option<PluginManager>,
        live: broadcast::Sender<LiveEvent>,
        correlation_id: Uuid,
    ) -> Self {
        Self {
            store,
            provider,
            plugins,
            live,
            correlation_id,
            run_budget: None,
        }
    }

    /// Sends `text` to agent `name` (answering with `model`) and runs it
    /// until it answers without calling tools, or is stopped. Nothing is
    /// recorded when the provider fails before its first chunk.
    pub async fn send(
        &self,
        name: &str,
        text: &str,
        model: &str,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, RunError> {
        self.send_as(Uuid::now_v7(), name, text, model, cancel)
            .await
    }

    /// [`send`](Self::send) under a run id chosen by the caller (a kernel
    /// running the agent as a task uses the task's id, so whoever submitted
    /// it can pick its chunks out of the live stream).
    pub async fn send_as(
        &self,
        run_id: Uuid,
        name: &str,
        text: &str,
        model: &str,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, RunError> {
        // The whole conversation: the model is sent all of it.
        let agent = self
            .store
            .agent(name, Cursor::START, usize::MAX)
            .await?
            .ok_or_else(|| RunError::UnknownAgent(name.to_owned()))?
            .record;
        if agent.status == AgentStatus::Stopped {
            return Err(RunError::Stopped(name.to_owned()));
        }
        let plugins = Tools::plugins(self.store.as_ref(), &agent.spec.tools).await?;
        let tools = Tools::granted(&plugins, &agent.spec.tools).map_err(RunError::Tool)?;
        let user = ChatMessage::new(Role::User, text);
        let mut messages = agent.prompt();
        messages.push(user.clone());
        let request = |messages: &[ChatMessage]| ChatRequest {
            model: model.to_owned(),
            messages: messages.to_vec(),
            tools: tools.specs.clone(),
            temperature: None,
            max_tokens: None,
        };
        let mut stream = self.provider.stream(request(&messages)).await?;
        self.record(SystemEvent::AgentPrompted {
            name: name.to_owned(),
            run_id,
            message: user,
        })
        .await?;
        let relay = Relay::new(self.store.clone(), self.live.clone(), self.correlation_id);
        let halted = |reason: String| RunError::Halted {
            agent: name.to_owned(),
            reason,
        };
        // Every agent is bounded, those spawned before there were defaults
        // too: their spec says nothing, which means the defaults.
        let budget = agent.spec.token_budget();
        let mut total = Usage::default();
        // Tokens the run's completions counted (the larger of the
        // provider's figure and the estimate): what the budget is charged.
        let mut used = 0u64;
        let mut rounds = 0;
        loop {
            let options = RelayOptions {
                budget_tokens: Some(budget.saturating_sub(used)),
                run_budget: self.run_budget.clone(),
                max_answer_bytes: agent.spec.answer_bytes(),
                ..RelayOptions::default()
            };
            let outcome = relay
                .relay(name, run_id, stream, options, cancel.clone())
                .await?;
            let (message, usage) = match outcome {
                RelayOutcome::Finished { message, usage, .. } => (message, usage),
                RelayOutcome::Stopped { reason, .. } => {
                    let reason = match reason {
                        // Say the run's figures, not this round's.
                        StopReason::Budget { used: round, .. } => StopReason::Budget {
                            used: used + round,
                            budget,
                        },
                        other => other,
                    };
                    return Err(halted(reason.to_string()));
                }
            };
            used += usage.completion_tokens.max(estimated(&message));
            total.prompt_tokens += usage.prompt_tokens;
            total.completion_tokens += usage.completion_tokens;
            if message.tool_calls.is_empty() {
                return Ok(RunOutcome {
                    run_id,
                    message,
                    usage: total,
                });
            }
            rounds += 1;
            if rounds > MAX_TOOL_ROUNDS {
                return Err(halted(format!(
                    "the model still called tools after {MAX_TOOL_ROUNDS} rounds"
                )));
            }
            let calls = message.tool_calls.clone();
            messages.push(message);
            for call in calls {
                let content = tools
                    .run(self.plugins.as_ref(), &call, self.correlation_id, run_id)
                    .await;
                let answer = ChatMessage {
                    role: Role::Tool,
                    content,
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call.id),
                };
                self.record(SystemEvent::AgentToolResult {
                    name: name.to_owned(),
                    run_id,
                    message: answer.clone(),
                })
                .await?;
                messages.push(answer);
            }
            stream = self.provider.stream(request(&messages)).await?;
        }
    }

    /// Appends one event, waits for its commit, and publishes it.
    async fn record(&self, event: SystemEvent) -> Result<(), StoreError> {
        let receipt = self
            .store
            .append(
                vec![NewEvent::new(event.clone(), self.correlation_id)],
                ExpectedVersion::Any,
            )
            .await?;
        let _ = self.live.send(LiveEvent {
            seq: Some(receipt.last_seq),
            event,
            kernel: None,
        });
        Ok(())
    }
}

/// The tokens a finished answer counts as when the provider reported fewer:
/// the relay's estimate from its size (a provider must not stretch a
/// budget by under-reporting).
fn estimated(message: &ChatMessage) -> u64 {
    let bytes = message.content.len()
        + message
            .tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len())
            .sum::<usize>();
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The longest tool name the OpenAI chat protocol accepts: a function
/// name must match `^[a-zA-Z0-9_-]{1,64}$`.
pub const MAX_TOOL_NAME: usize = 64;

/// Hex digits of the SHA-256 that ends a tool name that cannot be written
/// out: 64 bits, so two tools of one agent meet by chance about once in
/// 2^32 agents with 2^16 tools each; [`Tools::granted`] refuses it then.
const TOOL_NAME_HASH_HEX: usize = 16;

/// The name the model calls plugin function `plugin`.`function` by.
///
/// `PLUGIN__FUNCTION` when that is a valid name and reads back one way
/// only: within [`MAX_TOOL_NAME`] characters of `[a-zA-Z0-9_-]`, and with
/// the first `__` the separator (the plugin name neither contains `__`
/// nor ends with `_`, so `a` + `_b` and `a_` + `b` cannot both be
/// `a___b`). Any other pair gets the readable part with its other
/// characters replaced by `_`, cut short, then `-` and a hash of the exact
/// pair: distinct pairs get distinct names but for a hash collision, which
/// [`Tools::granted`] refuses.
pub fn tool_name(plugin: &str, function: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let plain = format!("{plugin}__{function}");
    let unambiguous = !plugin.is_empty() && !plugin.contains("__") && !plugin.ends_with('_');
    if unambiguous && plain.len() <= MAX_TOOL_NAME && plain.chars().all(allowed) {
        return plain;
    }
    // A plugin name holds no `.` (`PLUGIN.FUNCTION` splits at the first),
    // so this names the pair exactly.
    let digest = Sha256::digest(format!("{plugin}.{function}").as_bytes());
    let hash = &hex::encode(digest)[..TOOL_NAME_HASH_HEX];
    let readable: String = plain
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(MAX_TOOL_NAME - TOOL_NAME_HASH_HEX - 1)
        .collect();
    format!("{readable}-{hash}")
}

/// The plugin functions an agent may call, as the model sees them.
pub struct Tools {
    /// What the model is told.
    pub specs: Vec<ToolSpec>,
    /// The model's name of each tool → (plugin, function).
    by_name: HashMap<String, (String, String)>,
}

impl Tools {
    /// The installed plugins that the tools `granted` names (`PLUGIN.FUNCTION`)
    /// belong to, read one by one; a name that is not installed is left out
    /// (for [`Tools::granted`] to refuse).
    pub async fn plugins(
        store: &dyn EventStore,
        granted: &[String],
    ) -> Result<HashMap<String, PluginRecord>, StoreError> {
        let mut plugins = HashMap::new();
        for tool in granted {
            let Some((plugin, _)) = tool.split_once('.') else {
                continue;
            };
            if !plugins.contains_key(plugin)
                && let Some(snapshot) = store.plugin(plugin).await?
            {
                plugins.insert(plugin.to_owned(), snapshot.record);
            }
        }
        Ok(plugins)
    }

    /// The tools `granted` names (`PLUGIN.FUNCTION`), each described by its
    /// plugin's manifest and named by [`tool_name`]; an unknown plugin or
    /// function is an error, and so are two tools the model would call by
    /// one name.
    pub fn granted(
        plugins: &HashMap<String, PluginRecord>,
        granted: &[String],
    ) -> Result<Self, String> {
        let mut specs = Vec::new();
        let mut by_name = HashMap::new();
        for tool in granted {
            let (plugin, function) = tool
                .split_once('.')
                .ok_or_else(|| format!("a tool is PLUGIN.FUNCTION, got {tool:?}"))?;
            let record = plugins
                .get(plugin)
                .ok_or_else(|| format!("tool {tool}: no plugin {plugin} is installed"))?;
            let spec = record
                .installed
                .manifest
                .functions
                .get(function)
                .ok_or_else(|| {
                    format!("tool {tool}: plugin {plugin} has no function {function:?}")
                })?;
            let name = tool_name(plugin, function);
            match by_name.get(&name) {
                // The same tool granted twice is one tool.
                Some((p, f)) if p == plugin && f == function => continue,
                Some((p, f)) => {
                    return Err(format!(
                        "tools {p}.{f} and {tool} would both be called {name} by the model: grant only one of them"
                    ));
                }
                None => {}
            }
            specs.push(ToolSpec {
                name: name.clone(),
                description: spec.description.clone(),
                parameters: spec.input_schema.clone(),
            });
            by_name.insert(name, (plugin.to_owned(), function.to_owned()));
        }
        Ok(Self { specs, by_name })
    }

    /// Runs one tool call; what goes back to the model: the output JSON,
    /// or an error saying why (a tool not granted is refused unrun).
    async fn run(
        &self,
        plugins: Option<&PluginManager>,
        call: &ToolCall,
        correlation_id: Uuid,
        run_id: Uuid,
    ) -> String {
        let (Some((plugin, function)), Some(manager)) = (self.by_name.get(&call.name), plugins)
        else {
            return format!("error: the tool {} is not granted to this agent", call.name);
        };
        let options = CallOptions {
            correlation_id: Some(correlation_id),
            causation_id: Some(run_id),
        };
        match manager
            .call(plugin, function, &call.arguments, options)
            .await
        {
            Ok(output) => output.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `^[a-zA-Z0-9_-]{1,64}$`, OpenAI's rule for a function's name.
    fn valid(name: &str) -> bool {
        (1..=MAX_TOOL_NAME).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn plain_pairs_keep_their_readable_names() {
        assert_eq!(tool_name("calculator", "eval"), "calculator__eval");
        assert_eq!(tool_name("hello_world", "greet"), "hello_world__greet");
        assert_eq!(tool_name("a", "_b"), "a___b");
    }

    /// Regression (issue 14): `a` + `_b` and `a_` + `b` were both `a___b`.
    #[test]
    fn pairs_that_would_read_alike_get_distinct_names() {
        let pairs = [
            ("a", "_b"),
            ("a_", "b"),
            ("a__b", "c"),
            ("a", "b__c"),
            ("a", "b c"),
            ("a", "b_c"),
            ("a", "b.c"),
            ("a", "b\u{e9}"),
            ("a", "b\u{e8}"),
        ];
        let names: std::collections::BTreeSet<String> =
            pairs.iter().map(|(p, f)| tool_name(p, f)).collect();
        assert_eq!(names.len(), pairs.len(), "{names:?}");
        assert!(names.iter().all(|n| valid(n)), "{names:?}");
    }

    /// Regression (issue 14): a 64-character plugin name made a tool name
    /// the protocol refuses.
    #[test]
    fn long_names_are_cut_to_the_protocol_limit_and_stay_distinct() {
        let plugin = "p".repeat(64);
        let a = tool_name(&plugin, &"f".repeat(200));
        let b = tool_name(&plugin, &format!("{}g", "f".repeat(199)));
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("pppp"), "still readable: {a}");
    }
}
