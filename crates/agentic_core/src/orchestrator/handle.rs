//! The handles callers hold: [`Orchestrator`], whose methods send commands
//! to the event loop and wait for its answers, and [`TaskHandle`], a
//! submitted task's id and outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{
    OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast, mpsc, oneshot, watch,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ending::EndSink;
use super::event_loop::{Adopted, Command, EventLoop};
use super::{LiveEvent, OrchestratorConfig, OrchestratorError, TaskHandler, TaskOutcome};
use crate::store::EventStore;
use crate::task::{TaskRecord, TaskSpec, TaskStatus};

/// A submitted task: its id, and its outcome once it ends.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    /// The task's id.
    pub id: Uuid,
    pub(super) outcome: watch::Receiver<Option<TaskOutcome>>,
}

impl TaskHandle {
    /// Waits for the task to end.
    pub async fn outcome(mut self) -> Result<TaskOutcome, OrchestratorError> {
        let seen = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| OrchestratorError::ShutDown)?;
        seen.clone().ok_or(OrchestratorError::ShutDown)
    }
}

/// Runs tasks; cheap to clone (every clone drives the same orchestrator).
#[derive(Clone)]
pub struct Orchestrator {
    pub(super) inner: Arc<Inner>,
}

/// What every clone of an [`Orchestrator`] shares.
pub(super) struct Inner {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) handlers: HashMap<String, Arc<dyn TaskHandler>>,
    pub(super) concurrency: Arc<Semaphore>,
    admission: Arc<Semaphore>,
    /// The admission semaphore's size.
    max_pending: usize,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) live: broadcast::Sender<LiveEvent>,
    pub(super) correlation_id: Uuid,
    /// This kernel's id, when several kernels share the log.
    pub(super) kernel: Option<Uuid>,
    /// Tasks submitted here that another kernel runs, waiting for the end
    /// it records (see [`Orchestrator::observe_end`]).
    elsewhere: std::sync::Mutex<HashMap<Uuid, oneshot::Sender<TaskOutcome>>>,
}

impl Inner {
    /// Registers (`Some`) or forgets (`None`) a task waiting for its end
    /// to be recorded by another kernel.
    pub(super) fn awaiting(&self, id: Uuid, end: Option<oneshot::Sender<TaskOutcome>>) {
        let mut waiting = self
            .elsewhere
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match end {
            Some(end) => {
                waiting.insert(id, end);
            }
            None => {
                waiting.remove(&id);
            }
        }
    }
}

/// Submission-queue length: commands are served quickly, this only absorbs bursts.
const COMMAND_QUEUE: usize = 1024;

impl Orchestrator {
    /// Starts an orchestrator recording to `store` and running `handlers`.
    /// Every event it records carries `correlation_id`.
    pub fn start(
        store: Arc<dyn EventStore>,
        handlers: HashMap<String, Arc<dyn TaskHandler>>,
        config: OrchestratorConfig,
        correlation_id: Uuid,
    ) -> Self {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let orchestrator = Orchestrator {
            inner: Arc::new(Inner {
                store,
                handlers,
                concurrency: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
                admission: Arc::new(Semaphore::new(config.max_pending.max(1))),
                max_pending: config.max_pending.max(1),
                commands,
                live: broadcast::channel(config.live_buffer.max(1)).0,
                correlation_id,
                kernel: config.kernel,
                elsewhere: std::sync::Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(
            EventLoop::new(Arc::downgrade(&orchestrator.inner), config.finished_keys).run(rx),
        );
        orchestrator
    }

    /// The names of the handlers this orchestrator runs, sorted.
    pub fn handler_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.handlers.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Submits a task; waits while `max_pending` tasks are unfinished. With
    /// an idempotency key of a task running here or among the last
    /// `finished_keys` that ended here, returns that task instead (once its
    /// submission is recorded: if that fails, so does this); with one the
    /// log already holds (used earlier, or by another process), fails with
    /// [`OrchestratorError::AlreadySubmitted`] naming its task.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskHandle, OrchestratorError> {
        self.submit_under(spec, None).await
    }

    /// Submits a task; with `cancel` (its parent's token's child) it is a child
    /// task, admitted through its parent.
    pub(super) async fn submit_under(
        &self,
        spec: TaskSpec,
        cancel: Option<CancellationToken>,
    ) -> Result<TaskHandle, OrchestratorError> {
        if !self.inner.handlers.contains_key(&spec.handler) {
            return Err(OrchestratorError::UnknownHandler(spec.handler));
        }
        // Children are admitted through their parent (bounded by it), so a
        // full orchestrator cannot deadlock parents waiting on children.
        let admitted = if cancel.is_some() {
            None
        } else {
            Some(self.admit().await?)
        };
        self.ask(|reply| Command::Submit {
            spec,
            cancel,
            admitted,
            adopt: None,
            reply,
        })
        .await
    }

    /// Takes over a task the log holds but no process runs: one submitted
    /// elsewhere (pending), or one whose process stopped while it ran
    /// (running). An interrupted attempt is recorded as failed, then the
    /// task is retried or fails for good, by its policy. Ended tasks are
    /// refused: a task whose end was recorded never runs again.
    pub async fn adopt(&self, task: &TaskRecord) -> Result<TaskHandle, OrchestratorError> {
        if task.status.is_final() {
            return Err(OrchestratorError::Ended(task.id));
        }
        let interrupted = task.status == TaskStatus::Running;
        self.take_over(task, interrupted, None).await
    }

    /// Runs a task whose newest attempt was claimed for this process in
    /// the very batch that submitted it, stored at `stored` (its record
    /// says it is running here): that attempt runs now, without a claim of
    /// its own. Its end goes to `ends`, to be recorded with what it causes
    /// (see [`super::TaskEnding`]); a later attempt, a retry, is claimed
    /// and recorded as usual.
    ///
    /// A task that waited for room under the admission limit, or starts
    /// its handler more than 10 ms after `stored`, reads its record first,
    /// and ends as the log says if it was ended (say, cancelled) meanwhile;
    /// one that starts at once does not, and a cancellation the kernel's
    /// loop reads before then reaches it through
    /// [`Orchestrator::cancel_claimed`].
    pub async fn adopt_claimed(
        &self,
        task: &TaskRecord,
        ends: EndSink,
        stored: Instant,
    ) -> Result<TaskHandle, OrchestratorError> {
        if task.status != TaskStatus::Running || task.attempts == 0 {
            return Err(OrchestratorError::NotClaimed(task.id));
        }
        self.take_over(task, false, Some((ends, stored))).await
    }

    /// Admits and starts `task` as the log has it: its attempt interrupted
    /// (recorded so first), or claimed for this process when it has the
    /// end sink and store time of its `claim`.
    async fn take_over(
        &self,
        task: &TaskRecord,
        interrupted: bool,
        claim: Option<(EndSink, Instant)>,
    ) -> Result<TaskHandle, OrchestratorError> {
        if !self.inner.handlers.contains_key(&task.spec.handler) {
            return Err(OrchestratorError::UnknownHandler(task.spec.handler.clone()));
        }
        let (admitted, waited) = match self.inner.admission.clone().try_acquire_owned() {
            Ok(admitted) => (admitted, false),
            Err(TryAcquireError::NoPermits) => (self.admit().await?, true),
            Err(TryAcquireError::Closed) => return Err(OrchestratorError::ShutDown),
        };
        let (ends, stored) = match claim {
            Some((ends, stored)) => (Some(ends), Some(stored)),
            None => (None, None),
        };
        self.ask(|reply| Command::Submit {
            spec: task.spec.clone(),
            cancel: None,
            admitted: Some(admitted),
            adopt: Some(Adopted {
                id: task.id,
                attempts: task.attempts,
                interruptions: task.interrupted,
                interrupted,
                kernel: task.kernel,
                claimed: ends.is_some(),
                stored,
                waited,
                ends,
            }),
            reply,
        })
        .await
    }

    /// This kernel's id among several sharing the log (`None` alone): the
    /// kernel its claims name.
    pub fn kernel(&self) -> Option<Uuid> {
        self.inner.kernel
    }

    /// Cancels a running task and, through it, every task it started.
    pub async fn cancel(&self, id: Uuid, reason: &str) -> Result<(), OrchestratorError> {
        self.cancel_as(id, reason, false).await
    }

    /// Stops running a task whose cancellation another process already
    /// recorded in the log; the tasks it started are cancelled as usual.
    pub async fn cancel_recorded(&self, id: Uuid) -> Result<(), OrchestratorError> {
        self.cancel_as(id, "cancelled by another process", true)
            .await
    }

    /// Stops task `id`, claimed here by a workflow move, whose cancellation
    /// the log records (for `reason`): running, it stops as with
    /// [`Orchestrator::cancel_recorded`]; not yet handed over by
    /// [`Orchestrator::adopt_claimed`], it starts cancelled, its handler
    /// never called. Call [`Orchestrator::handed_over`] once the hand-over
    /// is done, so nothing is kept for a task that never comes.
    ///
    /// A cancellation the kernel's loop has not read by the hand-over is
    /// not known here: a task handed over late reads its record instead
    /// (see [`Orchestrator::adopt_claimed`]), and one handed over at once
    /// may start and is stopped when the loop reads it.
    pub async fn cancel_claimed(&self, id: Uuid, reason: String) {
        // Shut down, the orchestrator starts nothing more anyway.
        let _ = self.send(Command::CancelClaimed { id, reason }).await;
    }

    /// Task `id`, claimed here, was handed over by
    /// [`Orchestrator::adopt_claimed`] or could not be: forgets an early
    /// cancellation [`Orchestrator::cancel_claimed`] kept for it.
    pub async fn handed_over(&self, id: Uuid) {
        let _ = self.send(Command::HandedOver { id }).await;
    }

    /// Cancels a task for `reason`; `recorded`: the log has the cancellation.
    async fn cancel_as(
        &self,
        id: Uuid,
        reason: &str,
        recorded: bool,
    ) -> Result<(), OrchestratorError> {
        self.ask(|reply| Command::Cancel {
            id,
            reason: reason.to_owned(),
            recorded,
            reply,
        })
        .await
    }

    /// Stops every task running here at once, for a process that must stop
    /// now; resolves once none runs. A running attempt is recorded as
    /// interrupted: failed, as the next process records an attempt a crash
    /// interrupted, so a task its policy lets retry is left pending for the
    /// next process and any other fails for good. Tasks waiting for a slot
    /// or a retry are left as the log has them, for the next process;
    /// cancellations already asked for are recorded as such. Submissions
    /// are refused from then on ([`OrchestratorError::ShutDown`]); the
    /// handles of tasks left unended say the same.
    pub async fn interrupt(&self) {
        let (reply, stopped) = oneshot::channel();
        if self.send(Command::Interrupt { reply }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Tells a task submitted here, but run by another kernel sharing the
    /// log, how it ended: the kernel's loop calls this for each end it sees
    /// in the log (a no-op for every other task).
    pub fn observe_end(&self, id: Uuid, outcome: TaskOutcome) {
        let waiting = self
            .inner
            .elsewhere
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(end) = waiting {
            let _ = end.send(outcome);
        }
    }

    /// Whether a task runs here now.
    pub async fn is_running(&self, id: Uuid) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::IsRunning { id, reply }).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Resolves once every admitted task has ended (children end with their
    /// parents). Tasks submitted meanwhile are waited for too.
    pub async fn drained(&self) {
        let all = u32::try_from(self.inner.max_pending).unwrap_or(u32::MAX);
        if let Ok(permits) = self.inner.admission.acquire_many(all).await {
            drop(permits);
        }
    }

    /// Publishes to this orchestrator's subscribers a live event another
    /// kernel sharing the store relayed.
    pub fn relay_live(&self, event: LiveEvent) {
        // No subscriber is fine.
        let _ = self.inner.live.send(event);
    }

    /// Follows events as they happen (a slow subscriber may miss some).
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.inner.live.subscribe()
    }

    /// A place under `max_pending`: waits while the orchestrator is full.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, OrchestratorError> {
        self.inner
            .admission
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OrchestratorError::ShutDown)
    }

    /// Sends the event loop the command `command` makes with a reply
    /// channel, and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, OrchestratorError>>) -> Command,
    ) -> Result<T, OrchestratorError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| OrchestratorError::ShutDown)?
    }

    /// Queues a command for the event loop.
    async fn send(&self, command: Command) -> Result<(), OrchestratorError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| OrchestratorError::ShutDown)
    }
}
