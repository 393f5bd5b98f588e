//! [`PluginTask`]: the `plugin` task handler, so the orchestrator runs
//! plugin calls as tasks (`lion task submit --plugin NAME --function F`).

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::manager::{CallOptions, PluginManager};
use crate::orchestrator::{TaskContext, TaskError, TaskHandler};

/// The name plugin tasks are submitted under.
pub const PLUGIN_HANDLER: &str = "plugin";

/// Runs `{"plugin": NAME, "function": F, "input": {...}}` through the plugin
/// manager; the call's events name the task as their cause. Cancelling the
/// task abandons the call (its fresh instance is dropped).
pub struct PluginTask {
    manager: PluginManager,
}

impl PluginTask {
    /// A handler calling plugins through `manager`.
    pub fn new(manager: PluginManager) -> Self {
        Self { manager }
    }
}

/// What a plugin task asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginCall {
    plugin: String,
    function: String,
    #[serde(default)]
    input: Value,
}

#[async_trait]
impl TaskHandler for PluginTask {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let call: PluginCall = serde_json::from_value(input).map_err(|e| {
            TaskError::new(format!(
                "a plugin task needs {{\"plugin\", \"function\", \"input\"}}: {e}"
            ))
        })?;
        let options = CallOptions {
            correlation_id: None,
            causation_id: Some(ctx.task_id),
        };
        let input = call.input.to_string();
        tokio::select! {
            result = self.manager.call(&call.plugin, &call.function, &input, options) => {
                result.map_err(|e| TaskError::new(e.to_string()))
            }
            () = ctx.cancelled() => Err(TaskError::new("cancelled")),
        }
    }
}
