//! The work behind a task: the [`TaskHandler`] trait that built-in
//! handlers, plugins and LLM agents implement, and the [`TaskContext`] each
//! attempt gets (its task and attempt number, progress, child tasks,
//! cancellation).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::recorder::Recorder;
use super::{LiveEvent, Orchestrator, OrchestratorError, TaskHandle, TaskOutcome};
use crate::event::SystemEvent;
use crate::task::TaskSpec;

/// Why a handler's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

impl TaskError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The work behind a task: the built-in handlers, plugins and LLM agents
/// implement this.
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt. `ctx` says which task and attempt this is, reports
    /// progress, starts child tasks and tells when the task is cancelled.
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError>;
}

/// What a handler's attempt knows and can do.
#[derive(Clone)]
pub struct TaskContext {
    /// The task.
    pub task_id: Uuid,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub(super) cancel: CancellationToken,
    pub(super) recorder: Arc<Recorder>,
    pub(super) orchestrator: Orchestrator,
    /// This attempt's slot under the concurrency limit, given up while the
    /// attempt waits for its children (or a parent waiting on children that
    /// need slots could deadlock the limit).
    pub(super) slot: Arc<tokio::sync::Mutex<Option<OwnedSemaphorePermit>>>,
}

impl TaskContext {
    /// Resolves when the task is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the task has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A token cancelled when the task is, for work the handler hands on.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// The orchestrator's live stream, for handlers that publish events as
    /// they happen (an agent's streamed chunks) next to the task's own.
    pub fn live(&self) -> broadcast::Sender<LiveEvent> {
        self.orchestrator.inner.live.clone()
    }

    /// Reports progress: recorded with async durability (delivered at once).
    pub async fn progress(&self, progress: Value) -> Result<(), OrchestratorError> {
        let event = SystemEvent::TaskProgress {
            task_id: self.task_id,
            attempt: self.attempt,
            progress,
        };
        self.recorder.record_async(event).await
    }

    /// Starts a child task: cancelling this task cancels it too.
    pub async fn spawn_child(&self, mut spec: TaskSpec) -> Result<TaskHandle, OrchestratorError> {
        spec.parent = Some(self.task_id);
        self.orchestrator
            .submit_under(spec, Some(self.cancel.child_token()))
            .await
    }

    /// Waits for tasks (typically this one's children) to end, giving up this
    /// attempt's concurrency slot meanwhile and taking one again after.
    pub async fn join(
        &self,
        handles: Vec<TaskHandle>,
    ) -> Result<Vec<TaskOutcome>, OrchestratorError> {
        let mut slot = self.slot.lock().await;
        slot.take();
        let mut outcomes = Vec::with_capacity(handles.len());
        for handle in handles {
            outcomes.push(handle.outcome().await?);
        }
        *slot = Some(
            self.orchestrator
                .inner
                .concurrency
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| OrchestratorError::ShutDown)?,
        );
        Ok(outcomes)
    }
}
