//! [`AgentTask`]: the `agent` task handler, so a running kernel runs agents
//! for other processes. `lion agent send` with a kernel running submits
//! `{"agent": NAME, "text": TEXT}`; the kernel runs it with the task's id as
//! the run id and streams the chunks on its live stream, where the sender
//! (and anyone else watching) picks them up.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AgentRunner, AgentSpec, LlmError, LlmProvider};
use crate::orchestrator::{TaskContext, TaskError, TaskHandler};
use crate::plugin::PluginManager;
use crate::store::{Cursor, EventStore};

/// The name agent tasks are submitted under.
pub const AGENT_HANDLER: &str = "agent";

/// A provider and the model to ask, chosen for one agent.
pub struct ResolvedProvider {
    /// The provider.
    pub provider: Arc<dyn LlmProvider>,
    /// The model it is asked for.
    pub model: String,
    /// Where it runs, for people (a server's URL, a model file).
    pub location: String,
}

/// Chooses the provider an agent runs on (its spawn settings, else the
/// process's configuration): the part of running an agent that belongs to
/// the process, not to the kernel.
pub trait ProviderResolver: Send + Sync + 'static {
    /// The provider and model for an agent spawned with `spec`. It may
    /// block (fetch or load a model): callers on a runtime use a blocking
    /// thread.
    fn resolve(&self, spec: &AgentSpec) -> Result<ResolvedProvider, LlmError>;
}

/// Runs agents as tasks.
pub struct AgentTask {
    store: Arc<dyn EventStore>,
    plugins: Option<PluginManager>,
    providers: Arc<dyn ProviderResolver>,
}

impl AgentTask {
    /// A handler running agents recorded in `store`, on the providers
    /// `providers` picks, with tools through `plugins`.
    pub fn new(
        store: Arc<dyn EventStore>,
        plugins: Option<PluginManager>,
        providers: Arc<dyn ProviderResolver>,
    ) -> Self {
        Self {
            store,
            plugins,
            providers,
        }
    }
}

/// What an agent task asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentMessage {
    agent: String,
    text: String,
}

#[async_trait]
impl TaskHandler for AgentTask {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let message: AgentMessage = serde_json::from_value(input).map_err(|e| {
            TaskError::new(format!("an agent task needs {{\"agent\", \"text\"}}: {e}"))
        })?;
        let fail = |e: &dyn std::fmt::Display| TaskError::new(e.to_string());
        let spec = self
            .store
            .agent(&message.agent, Cursor::START, 0)
            .await
            .map_err(|e| fail(&e))?
            .map(|a| a.record.spec)
            .ok_or_else(|| fail(&format!("no agent {}", message.agent)))?;
        // Resolving may pull and load a model: not on the runtime's threads.
        let providers = self.providers.clone();
        let resolved = tokio::task::spawn_blocking(move || providers.resolve(&spec))
            .await
            .map_err(|e| fail(&e))?
            .map_err(|e| fail(&e))?;
        // The run is the task: its events share the task's id as their
        // correlation, and its chunks carry it as their run id.
        let runner = AgentRunner::new(
            self.store.clone(),
            resolved.provider,
            self.plugins.clone(),
            ctx.live(),
            ctx.task_id,
        );
        let outcome = runner
            .send_as(
                ctx.task_id,
                &message.agent,
                &message.text,
                &resolved.model,
                ctx.cancellation(),
            )
            .await
            .map_err(|e| fail(&e))?;
        Ok(json!({
            "run_id": outcome.run_id,
            "content": outcome.message.content,
            "usage": outcome.usage,
        }))
    }
}
