//! The orchestrator: runs tasks concurrently and records their lives as
//! events.
//!
//! An event loop takes commands (submit, cancel) from a bounded queue. Each
//! submitted task gets a runner that records `TaskSubmitted`, waits for a
//! slot under the concurrency limit, and runs attempts of its handler, each
//! under the task's timeout and cancellation, recording `TaskStarted`,
//! `TaskProgress`, and how the attempt ended; failed and timed-out attempts
//! are retried with exponential backoff and jitter. Cancelling a task
//! cancels every task it started, transitively.
//!
//! Delivery is honest: an idempotency key deduplicates submission (the same
//! key is one task); execution is at-least-once (a handler killed part-way
//! may run again, so each attempt gets the task id and its attempt number);
//! and the log's rules make sure a task whose end was recorded never starts
//! again.
//!
//! Idempotency has two layers. The log is the durable one: its projection
//! refuses a second submission of a key, and a keyed task (durable or async)
//! runs only once its submission is committed. The event loop's map of keys
//! is the fast one, and bounded: it keeps the keys of tasks that run here
//! and of the last [`OrchestratorConfig::finished_keys`] that ended here, so
//! a prompt retry gets the task's handle; an older key is refused by the log
//! ([`OrchestratorError::AlreadySubmitted`]), never run twice. A key enters
//! the map only with a submission the log took: a duplicate sent while the
//! first submission of its key is being recorded gets that submission's
//! answer, and a submission the log refused (the key names another task)
//! or could not store (a store error) leaves no key behind, so a retry
//! meets the log's answer or makes a fresh attempt. (Ephemeral tasks are
//! never logged: their keys hold only within that window.)
//!
//! Stopping: a process that must stop now calls [`Orchestrator::interrupt`],
//! which records each running attempt as interrupted, as the next process
//! records one a crash interrupted (see [`Orchestrator::adopt`]), and waits
//! for every task to let go, so nothing is left half-recorded.
//!
//! Back-pressure: at most `max_concurrency` attempts run at once, and at most
//! `max_pending` tasks are admitted but unfinished; `submit` waits for room
//! beyond that, so a flood slows submitters instead of growing memory. A
//! task's async events wait in order for the store, at most
//! [`TASK_ASYNC_APPENDS`] of them: past that its handler waits.

mod builtin;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use builtin::builtin_handlers;

use crate::event::{NewEvent, SystemEvent};
use crate::state::ApplyError;
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::task::{Durability, TaskRecord, TaskRuleError, TaskSpec, TaskStatus};

/// Limits of an [`Orchestrator`].
#[derive(Debug, Clone, Copy)]
pub struct OrchestratorConfig {
    /// Attempts that may run at the same time.
    pub max_concurrency: usize,
    /// Tasks admitted but not finished; `submit` waits beyond this.
    pub max_pending: usize,
    /// Live events buffered per subscriber before a slow one misses some.
    pub live_buffer: usize,
    /// Idempotency keys of ended tasks kept in memory; older ones are
    /// answered by the log's projection.
    pub finished_keys: usize,
}

/// Idempotency keys of ended tasks an orchestrator remembers by default:
/// enough for a client's prompt retries to get the task's handle and
/// outcome at once; an older key costs a refusal from the log instead. A
/// key with its handle is about 200 bytes, so this is under 1 MiB.
pub const FINISHED_KEYS: usize = 4096;

/// Async events of one task that may wait for the store: past this its
/// handler's next progress report (or event) waits, so a handler reporting
/// in a tight loop against a slow store cannot grow memory.
pub const TASK_ASYNC_APPENDS: usize = 256;

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            max_pending: 10_000,
            live_buffer: 4096,
            finished_keys: FINISHED_KEYS,
        }
    }
}

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

/// The work behind a task: plugins and LLM agents implement this later.
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt. `ctx` says which task and attempt this is, reports
    /// progress, starts child tasks and tells when the task is cancelled.
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError>;
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// It produced an output.
    Completed(Value),
    /// Its last attempt failed.
    Failed(String),
    /// Its last attempt ran out of time.
    TimedOut,
    /// It was cancelled.
    Cancelled(String),
}

/// An event as it happens: committed ones carry their sequence number.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Sequence number in the log, for events already committed.
    pub seq: Option<u64>,
    /// The event.
    pub event: SystemEvent,
}

/// Errors of the orchestrator's commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestratorError {
    /// No handler has this name.
    #[error("unknown handler {0:?}")]
    UnknownHandler(String),
    /// No task has this id here.
    #[error("no task {0} is running here")]
    UnknownTask(Uuid),
    /// The task has ended: it never runs again.
    #[error("task {0} has already ended")]
    Ended(Uuid),
    /// The task already runs here.
    #[error("task {0} already runs here")]
    AlreadyRunning(Uuid),
    /// Another process already submitted a task with this idempotency key.
    #[error("the idempotency key already names task {0}")]
    AlreadySubmitted(Uuid),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The orchestrator has shut down.
    #[error("the orchestrator has shut down")]
    ShutDown,
}

/// A submitted task: its id, and its outcome once it ends.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    /// The task's id.
    pub id: Uuid,
    outcome: watch::Receiver<Option<TaskOutcome>>,
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

/// What a handler's attempt knows and can do.
#[derive(Clone)]
pub struct TaskContext {
    /// The task.
    pub task_id: Uuid,
    /// This attempt's number, from 1.
    pub attempt: u32,
    cancel: CancellationToken,
    recorder: Arc<Recorder>,
    orchestrator: Orchestrator,
    /// This attempt's slot under the concurrency limit, given up while the
    /// attempt waits for its children (or a parent waiting on children that
    /// need slots could deadlock the limit).
    slot: Arc<tokio::sync::Mutex<Option<OwnedSemaphorePermit>>>,
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

/// Runs tasks; cheap to clone (every clone drives the same orchestrator).
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    concurrency: Arc<Semaphore>,
    admission: Arc<Semaphore>,
    /// The admission semaphore's size.
    max_pending: usize,
    commands: mpsc::Sender<Command>,
    live: broadcast::Sender<LiveEvent>,
    correlation_id: Uuid,
}

/// Commands the event loop serves one at a time.
enum Command {
    Submit {
        spec: TaskSpec,
        cancel: Option<CancellationToken>,
        admitted: Option<OwnedSemaphorePermit>,
        adopt: Option<Adopted>,
        reply: oneshot::Sender<Result<TaskHandle, OrchestratorError>>,
    },
    Cancel {
        id: Uuid,
        reason: String,
        /// The cancellation is already in the log (another process wrote it).
        recorded: bool,
        reply: oneshot::Sender<Result<(), OrchestratorError>>,
    },
    /// A keyed task's submission was recorded, or could not be.
    Recorded {
        id: Uuid,
        result: Result<(), OrchestratorError>,
    },
    Ended {
        id: Uuid,
    },
    /// Stop every task at once; reply when none runs.
    Interrupt {
        reply: oneshot::Sender<()>,
    },
    IsRunning {
        id: Uuid,
        reply: oneshot::Sender<bool>,
    },
}

/// A task already in the log that this orchestrator takes over.
#[derive(Debug, Clone, Copy)]
struct Adopted {
    id: Uuid,
    /// Attempts started before.
    attempts: u32,
    /// An attempt was running when its process stopped.
    interrupted: bool,
}

/// Submission-queue length: commands are served quickly, this only absorbs bursts.
const COMMAND_QUEUE: usize = 1024;

/// The error recorded for an attempt whose process stopped while it ran.
const INTERRUPTED: &str = "interrupted: its process stopped while it ran";

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
            }),
        };
        tokio::spawn(
            EventLoop::new(Arc::downgrade(&orchestrator.inner), config.finished_keys).run(rx),
        );
        orchestrator
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

    async fn submit_under(
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
            Some(
                self.inner
                    .admission
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| OrchestratorError::ShutDown)?,
            )
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Submit {
            spec,
            cancel,
            admitted,
            adopt: None,
            reply,
        })
        .await?;
        answer.await.map_err(|_| OrchestratorError::ShutDown)?
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
        if !self.inner.handlers.contains_key(&task.spec.handler) {
            return Err(OrchestratorError::UnknownHandler(task.spec.handler.clone()));
        }
        let admitted = self
            .inner
            .admission
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OrchestratorError::ShutDown)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Submit {
            spec: task.spec.clone(),
            cancel: None,
            admitted: Some(admitted),
            adopt: Some(Adopted {
                id: task.id,
                attempts: task.attempts,
                interrupted: task.status == TaskStatus::Running,
            }),
            reply,
        })
        .await?;
        answer.await.map_err(|_| OrchestratorError::ShutDown)?
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

    async fn cancel_as(
        &self,
        id: Uuid,
        reason: &str,
        recorded: bool,
    ) -> Result<(), OrchestratorError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Cancel {
            id,
            reason: reason.to_owned(),
            recorded,
            reply,
        })
        .await?;
        answer.await.map_err(|_| OrchestratorError::ShutDown)?
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

    /// Follows events as they happen (a slow subscriber may miss some).
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.inner.live.subscribe()
    }

    async fn send(&self, command: Command) -> Result<(), OrchestratorError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| OrchestratorError::ShutDown)
    }
}

/// A task known to the event loop.
struct Entry {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<Stop>>>,
    /// Its idempotency key, remembered a while after it ends (dropped if
    /// its submission was never recorded).
    key: Option<String>,
    /// Duplicate submissions of its key that arrived while its submission
    /// was being recorded: they get the same answer.
    waiting: Vec<Reply>,
}

/// Where a submission's answer goes.
type Reply = oneshot::Sender<Result<TaskHandle, OrchestratorError>>;

/// The task an idempotency key names here.
struct Keyed {
    id: Uuid,
    outcome: watch::Receiver<Option<TaskOutcome>>,
    /// Whether the task's submission is in the log (or, for an ephemeral
    /// task, was published); until then duplicates wait for its answer.
    recorded: bool,
}

impl Keyed {
    fn handle(&self) -> TaskHandle {
        TaskHandle {
            id: self.id,
            outcome: self.outcome.clone(),
        }
    }
}

/// Why a task's token was cancelled.
#[derive(Debug, Clone)]
enum Stop {
    /// The task is cancelled: its end is recorded, unless `recorded` (the
    /// log has it already).
    Cancelled { reason: String, recorded: bool },
    /// Its orchestrator stops at once ([`Orchestrator::interrupt`]).
    Interrupted,
}

/// The loop's own state: tasks in flight and the idempotency keys used here
/// (those of running tasks, and of the last `finished_keys` that ended).
struct EventLoop {
    inner: std::sync::Weak<Inner>,
    running: HashMap<Uuid, Entry>,
    keys: HashMap<String, Keyed>,
    /// Keys of ended tasks with their tasks, oldest first: the first to be
    /// forgotten.
    finished: VecDeque<(String, Uuid)>,
    /// How many of those to keep.
    finished_keys: usize,
    /// Set by [`Command::Interrupt`]: no task is taken any more.
    interrupted: bool,
    /// Interrupters waiting for the last task to end.
    idle: Vec<oneshot::Sender<()>>,
}

impl EventLoop {
    fn new(inner: std::sync::Weak<Inner>, finished_keys: usize) -> Self {
        Self {
            inner,
            running: HashMap::new(),
            keys: HashMap::new(),
            finished: VecDeque::new(),
            finished_keys,
            interrupted: false,
            idle: Vec::new(),
        }
    }

    /// Forgets a task that ended; its key is kept among the last ended.
    fn ended(&mut self, id: Uuid) {
        let key = self.running.remove(&id).and_then(|e| e.key);
        if self.running.is_empty() {
            for reply in self.idle.drain(..) {
                let _ = reply.send(());
            }
        }
        let Some(key) = key else {
            return;
        };
        self.finished.push_back((key, id));
        while self.finished.len() > self.finished_keys {
            if let Some((old, task)) = self.finished.pop_front() {
                // The log still knows it: a later submission of it is
                // refused there, never run.
                self.forget_key(&old, task);
            }
        }
    }

    /// Drops `key` if it still names `task`.
    fn forget_key(&mut self, key: &str, task: Uuid) {
        if self.keys.get(key).is_some_and(|k| k.id == task) {
            self.keys.remove(key);
        }
    }

    /// A keyed task's submission was recorded (its key now stands for it)
    /// or was not (its key is dropped: a retry meets the log's answer, or
    /// makes a fresh attempt); duplicates that waited get the same answer.
    fn recorded(&mut self, id: Uuid, result: Result<(), OrchestratorError>) {
        let Some(entry) = self.running.get_mut(&id) else {
            return;
        };
        let waiting = std::mem::take(&mut entry.waiting);
        let key = if result.is_ok() {
            entry.key.clone()
        } else {
            entry.key.take()
        };
        let Some(key) = key else {
            return;
        };
        let handle = self
            .keys
            .get(&key)
            .filter(|k| k.id == id)
            .map(|k| k.handle());
        match &result {
            Ok(()) => {
                if let Some(known) = self.keys.get_mut(&key) {
                    known.recorded = true;
                }
            }
            Err(_) => self.forget_key(&key, id),
        }
        for reply in waiting {
            let answer = match (&result, &handle) {
                (Ok(()), Some(handle)) => Ok(handle.clone()),
                (Ok(()), None) => Err(OrchestratorError::ShutDown),
                (Err(e), _) => Err(e.clone()),
            };
            let _ = reply.send(answer);
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            match command {
                Command::Submit {
                    spec,
                    cancel,
                    admitted,
                    adopt,
                    reply,
                } => self.submit(&inner, spec, cancel, admitted, adopt, reply),
                Command::Cancel {
                    id,
                    reason,
                    recorded,
                    reply,
                } => {
                    let result = match self.running.get(&id) {
                        Some(entry) => {
                            entry
                                .reason
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(Stop::Cancelled { reason, recorded });
                            entry.cancel.cancel();
                            Ok(())
                        }
                        None => Err(OrchestratorError::UnknownTask(id)),
                    };
                    let _ = reply.send(result);
                }
                Command::Recorded { id, result } => self.recorded(id, result),
                Command::Ended { id } => self.ended(id),
                Command::Interrupt { reply } => self.interrupt(reply),
                Command::IsRunning { id, reply } => {
                    let _ = reply.send(self.running.contains_key(&id));
                }
            }
        }
    }

    /// Stops every task at once (see [`Orchestrator::interrupt`]).
    fn interrupt(&mut self, reply: oneshot::Sender<()>) {
        self.interrupted = true;
        // Every reason first: a parent's token cancels its children's, and
        // a child must not take that for its parent's cancellation.
        for entry in self.running.values() {
            entry
                .reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(Stop::Interrupted);
        }
        for entry in self.running.values() {
            entry.cancel.cancel();
        }
        if self.running.is_empty() {
            let _ = reply.send(());
        } else {
            self.idle.push(reply);
        }
    }

    fn submit(
        &mut self,
        inner: &Arc<Inner>,
        spec: TaskSpec,
        cancel: Option<CancellationToken>,
        admitted: Option<OwnedSemaphorePermit>,
        adopt: Option<Adopted>,
        reply: Reply,
    ) {
        if self.interrupted {
            let _ = reply.send(Err(OrchestratorError::ShutDown));
            return;
        }
        let known = spec.idempotency_key.as_ref().and_then(|k| self.keys.get(k));
        match (adopt, known) {
            (Some(adopted), _) if self.running.contains_key(&adopted.id) => {
                let _ = reply.send(Err(OrchestratorError::AlreadyRunning(adopted.id)));
                return;
            }
            // The log's task under this key ended here.
            (Some(adopted), Some(known)) if known.id == adopted.id => {
                let _ = reply.send(Err(OrchestratorError::Ended(adopted.id)));
                return;
            }
            // The log holds the adopted task under its key: it takes the
            // key over from any submission of it being recorded here (that
            // one's is refused by the log).
            (Some(_), _) => {}
            (None, Some(known)) => {
                let handle = known.handle();
                match self.running.get_mut(&known.id) {
                    Some(entry) if !known.recorded => entry.waiting.push(reply),
                    _ => {
                        let _ = reply.send(Ok(handle));
                    }
                }
                return;
            }
            (None, None) => {}
        }
        let id = adopt.map_or_else(Uuid::now_v7, |a| a.id);
        let (done, outcome) = watch::channel(None);
        let cancel = cancel.unwrap_or_default();
        let reason = Arc::new(Mutex::new(None));
        if let Some(key) = &spec.idempotency_key {
            self.keys.insert(
                key.clone(),
                Keyed {
                    id,
                    outcome: outcome.clone(),
                    // An adopted task's submission is in the log already.
                    recorded: adopt.is_some(),
                },
            );
        }
        self.running.insert(
            id,
            Entry {
                cancel: cancel.clone(),
                reason: reason.clone(),
                key: spec.idempotency_key.clone(),
                waiting: Vec::new(),
            },
        );
        let runner = Runner {
            orchestrator: Orchestrator {
                inner: inner.clone(),
            },
            id,
            spec,
            cancel,
            reason,
            recorder: Arc::new(Recorder::new(inner.clone(), id)),
            done,
            adopted: adopt,
            _admitted: admitted,
        };
        tokio::spawn(runner.run(reply, TaskHandle { id, outcome }));
    }
}

/// Records a task's events with its durability, in order.
struct Recorder {
    inner: Arc<Inner>,
    task_id: Uuid,
    durability: Mutex<Durability>,
    /// The last async append still in flight: each waits for the one before,
    /// so the log keeps the task's events in order.
    pending: tokio::sync::Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    /// One permit per async append in flight: at most
    /// [`TASK_ASYNC_APPENDS`] wait for the store.
    in_flight: Arc<Semaphore>,
}

impl Recorder {
    fn new(inner: Arc<Inner>, task_id: Uuid) -> Self {
        Self {
            inner,
            task_id,
            durability: Mutex::new(Durability::Durable),
            pending: tokio::sync::Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(TASK_ASYNC_APPENDS)),
        }
    }

    fn durability(&self) -> Durability {
        *self
            .durability
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records with the task's own durability.
    async fn record(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        match self.durability() {
            Durability::Durable => self.record_durable(event).await,
            Durability::Async => self.record_async(event).await,
            Durability::Ephemeral => {
                self.publish(None, event);
                Ok(())
            }
        }
    }

    /// Appends and waits for the commit, then publishes.
    async fn record_durable(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        self.flush().await?;
        let receipt = self
            .inner
            .store
            .append(vec![self.new_event(&event)], ExpectedVersion::Any)
            .await?;
        self.publish(Some(receipt.last_seq), event);
        Ok(())
    }

    /// Publishes at once; the append follows in the background, in order.
    async fn record_async(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        if self.durability() == Durability::Ephemeral {
            self.publish(None, event);
            return Ok(());
        }
        let new = self.new_event(&event);
        self.publish(None, event);
        let store = self.inner.store.clone();
        // Waits while TASK_ASYNC_APPENDS of this task's events wait already.
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OrchestratorError::ShutDown)?;
        let mut pending = self.pending.lock().await;
        let before = pending.take();
        *pending = Some(tokio::spawn(async move {
            let _permit = permit;
            if let Some(before) = before {
                before
                    .await
                    .map_err(|e| StoreError::Backend(format!("append task failed: {e}")))??;
            }
            store
                .append(vec![new], ExpectedVersion::Any)
                .await
                .map(|_| ())
        }));
        Ok(())
    }

    /// Waits for every background append of this task.
    async fn flush(&self) -> Result<(), OrchestratorError> {
        let last = self.pending.lock().await.take();
        if let Some(last) = last {
            last.await
                .map_err(|e| StoreError::Backend(format!("append task failed: {e}")))??;
        }
        Ok(())
    }

    fn new_event(&self, event: &SystemEvent) -> NewEvent {
        let mut new = NewEvent::new(event.clone(), self.inner.correlation_id);
        new.causation_id = Some(self.task_id);
        new
    }

    fn publish(&self, seq: Option<u64>, event: SystemEvent) {
        // No subscriber is fine.
        let _ = self.inner.live.send(LiveEvent { seq, event });
    }
}

/// Drives one task from submission to its end.
struct Runner {
    orchestrator: Orchestrator,
    id: Uuid,
    spec: TaskSpec,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<Stop>>>,
    recorder: Arc<Recorder>,
    done: watch::Sender<Option<TaskOutcome>>,
    /// Set when the task was taken over from the log rather than submitted.
    adopted: Option<Adopted>,
    /// Held until the task ends: counts against `max_pending`.
    _admitted: Option<OwnedSemaphorePermit>,
}

/// How one attempt ended.
enum Attempt {
    Completed(Value),
    Failed(String),
    TimedOut,
    Cancelled,
}

impl Runner {
    /// Records the submission, answers the submitter, then runs the task.
    async fn run(
        self,
        reply: oneshot::Sender<Result<TaskHandle, OrchestratorError>>,
        handle: TaskHandle,
    ) {
        *self
            .recorder
            .durability
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.spec.durability;
        let recorded = if self.adopted.is_some() {
            Ok(()) // already in the log
        } else {
            let submitted = SystemEvent::TaskSubmitted {
                task_id: self.id,
                spec: self.spec.clone(),
            };
            let recorded = match (&self.spec.idempotency_key, self.spec.durability) {
                // The log checks a key before the task may run: a keyed
                // async task waits for its submission's commit.
                (Some(_), Durability::Async) => self.recorder.record_durable(submitted).await,
                _ => self.recorder.record(submitted).await,
            };
            let recorded = match recorded {
                Err(OrchestratorError::Store(StoreError::Rejected(
                    ApplyError::DuplicateIdempotencyKey { task, .. },
                ))) => Err(OrchestratorError::AlreadySubmitted(task)),
                other => other,
            };
            if self.spec.idempotency_key.is_some() {
                // Before anyone hears the answer, so a retry sent after it
                // finds the key standing for this task, or gone.
                let _ = self
                    .orchestrator
                    .inner
                    .commands
                    .send(Command::Recorded {
                        id: self.id,
                        result: recorded.clone(),
                    })
                    .await;
            }
            recorded
        };
        if let Err(e) = recorded {
            let _ = reply.send(Err(e.clone()));
            self.finish(Some(TaskOutcome::Failed(e.to_string()))).await;
            return;
        }
        let _ = reply.send(Ok(handle));
        let outcome = match self.drive().await {
            Ok(outcome) => outcome,
            // Another process recorded the task's end (a cancellation).
            Err(OrchestratorError::Store(StoreError::Rejected(ApplyError::Task(
                TaskRuleError::Ended(_),
            )))) => Some(TaskOutcome::Cancelled("ended by another process".into())),
            Err(e) => {
                tracing::error!(task = %self.id, error = %e, "task could not be recorded");
                Some(TaskOutcome::Failed(format!("cannot record the task: {e}")))
            }
        };
        self.finish(outcome).await;
    }

    /// Reports the end (`None`: the task stops here unended, left to the
    /// next process), once every event of the task is recorded.
    async fn finish(&self, outcome: Option<TaskOutcome>) {
        if let Err(e) = self.recorder.flush().await {
            tracing::error!(task = %self.id, error = %e, "task events could not be recorded");
        }
        // The event loop hears of the end before anyone can see it, so a
        // command sent after seeing it finds the task ended.
        let _ = self
            .orchestrator
            .inner
            .commands
            .send(Command::Ended { id: self.id })
            .await;
        // Unended, the handle's sender is dropped with the runner: its
        // holders hear that the orchestrator shut down.
        if let Some(outcome) = outcome {
            self.done.send_replace(Some(outcome));
        }
    }

    /// Runs attempts until the task ends, or stops here unended (`None`)
    /// when the orchestrator is interrupted.
    async fn drive(&self) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let handler = self
            .orchestrator
            .inner
            .handlers
            .get(&self.spec.handler)
            .cloned()
            .ok_or_else(|| OrchestratorError::UnknownHandler(self.spec.handler.clone()))?;
        let mut attempt = self.adopted.map_or(0, |a| a.attempts);
        if let Some(a) = self.adopted
            && a.interrupted
        {
            // The attempt that was running when its process stopped.
            if let Some(ended) = self.failed(attempt, INTERRUPTED.to_owned()).await? {
                return Ok(Some(ended));
            }
            self.back_off(attempt).await?;
        }
        loop {
            attempt += 1;
            if self.cancel.is_cancelled() {
                return self.cancelled().await;
            }
            let slot = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return self.cancelled().await,
                slot = self.orchestrator.inner.concurrency.clone().acquire_owned() => {
                    slot.map_err(|_| OrchestratorError::ShutDown)?
                }
            };
            self.recorder
                .record(SystemEvent::TaskStarted {
                    task_id: self.id,
                    attempt,
                })
                .await?;
            let slot = Arc::new(tokio::sync::Mutex::new(Some(slot)));
            let ended = self.attempt(&handler, attempt, slot.clone()).await;
            drop(slot);
            let retry = self.spec.retry.allows_retry_after(attempt);
            match ended {
                Attempt::Completed(output) => {
                    self.recorder
                        .record(SystemEvent::TaskCompleted {
                            task_id: self.id,
                            attempt,
                            output: output.clone(),
                        })
                        .await?;
                    return Ok(Some(TaskOutcome::Completed(output)));
                }
                // Its process stops now: recorded as a crash would be,
                // retried (by the next process) or failed by policy.
                Attempt::Cancelled if self.interrupted() => {
                    return self.failed(attempt, INTERRUPTED.to_owned()).await;
                }
                Attempt::Cancelled => return self.cancelled().await,
                Attempt::Failed(error) => {
                    if let Some(ended) = self.failed(attempt, error).await? {
                        return Ok(Some(ended));
                    }
                }
                Attempt::TimedOut => {
                    self.recorder
                        .record(SystemEvent::TaskTimedOut {
                            task_id: self.id,
                            attempt,
                            is_final: !retry,
                        })
                        .await?;
                    if !retry {
                        return Ok(Some(TaskOutcome::TimedOut));
                    }
                }
            }
            self.back_off(attempt).await?;
        }
    }

    /// Records a failed attempt; returns the task's end if no retry follows.
    async fn failed(
        &self,
        attempt: u32,
        error: String,
    ) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let retry = self.spec.retry.allows_retry_after(attempt);
        self.recorder
            .record(SystemEvent::TaskFailed {
                task_id: self.id,
                attempt,
                error: error.clone(),
                is_final: !retry,
            })
            .await?;
        Ok((!retry).then_some(TaskOutcome::Failed(error)))
    }

    /// Waits before the attempt after `attempt` (returns early on cancellation,
    /// which the next attempt then records).
    async fn back_off(&self, attempt: u32) -> Result<(), OrchestratorError> {
        let delay = self.spec.retry.delay_after(attempt, rand::random::<f64>());
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
        Ok(())
    }

    /// Runs one attempt under the task's timeout and cancellation.
    async fn attempt(
        &self,
        handler: &Arc<dyn TaskHandler>,
        attempt: u32,
        slot: Arc<tokio::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    ) -> Attempt {
        let ctx = TaskContext {
            task_id: self.id,
            attempt,
            cancel: self.cancel.clone(),
            recorder: self.recorder.clone(),
            orchestrator: self.orchestrator.clone(),
            slot,
        };
        let work = handler.run(ctx, self.spec.input.clone());
        let limit = self.spec.timeout_ms.map(Duration::from_millis);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Attempt::Cancelled,
            result = async {
                match limit {
                    Some(limit) => tokio::time::timeout(limit, work).await.ok(),
                    None => Some(work.await),
                }
            } => match result {
                Some(Ok(output)) => Attempt::Completed(output),
                // Cancelled (on another thread) while the handler ran: it
                // saw that first and gave up, so the attempt was cancelled.
                Some(Err(_)) if self.cancel.is_cancelled() => Attempt::Cancelled,
                Some(Err(e)) => Attempt::Failed(e.0),
                None => Attempt::TimedOut,
            },
        }
    }

    /// Whether the task's token was cancelled by [`Orchestrator::interrupt`].
    fn interrupted(&self) -> bool {
        matches!(
            *self.reason.lock().unwrap_or_else(PoisonError::into_inner),
            Some(Stop::Interrupted)
        )
    }

    /// Ends the task cancelled, outside an attempt; interrupted, it stops
    /// unended, as the log has it (pending), for the next process.
    async fn cancelled(&self) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let stop = self
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (reason, recorded) = match stop {
            Some(Stop::Interrupted) => return Ok(None),
            Some(Stop::Cancelled { reason, recorded }) => (reason, recorded),
            None => ("parent task cancelled".to_owned(), false),
        };
        if !recorded {
            self.recorder
                .record(SystemEvent::TaskCancelled {
                    task_id: self.id,
                    reason: reason.clone(),
                })
                .await?;
        }
        Ok(Some(TaskOutcome::Cancelled(reason)))
    }
}
