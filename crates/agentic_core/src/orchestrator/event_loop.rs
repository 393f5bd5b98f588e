//! The event loop: serves the orchestrator's commands one at a time. It
//! admits submitted and adopted tasks (answering duplicates of an
//! idempotency key with the task the key names), starts a runner for each,
//! cancels and interrupts them, and forgets them when they end.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cancellation::{Cancellation, Stop};
use super::ending::EndSink;
use super::handle::Inner;
use super::idempotency::{IdempotencyKeys, Keyed};
use super::recorder::Recorder;
use super::runner::Runner;
use super::{Orchestrator, OrchestratorError, TaskHandle};
use crate::task::TaskSpec;

/// Commands the event loop serves one at a time.
pub(super) enum Command {
    /// Admit a task (submitted, or adopted from the log) and start it.
    Submit {
        spec: TaskSpec,
        /// The parent's token's child, for a child task.
        cancel: Option<CancellationToken>,
        /// Its place under `max_pending` (children have none).
        admitted: Option<OwnedSemaphorePermit>,
        adopt: Option<Adopted>,
        reply: Reply,
    },
    /// Cancel a running task, and through it the tasks it started.
    Cancel {
        id: Uuid,
        reason: String,
        /// The cancellation is already in the log (another process wrote it).
        recorded: bool,
        reply: oneshot::Sender<Result<(), OrchestratorError>>,
    },
    /// Cancel a task claimed here that the log records as cancelled:
    /// running, it stops; not handed over yet, it starts cancelled.
    CancelClaimed { id: Uuid, reason: String },
    /// A claimed task was handed over (or could not be): a cancellation
    /// kept for it is no longer needed.
    HandedOver { id: Uuid },
    /// A keyed task's submission was recorded, or could not be.
    Recorded {
        id: Uuid,
        result: Result<(), OrchestratorError>,
    },
    /// A task ended (or stopped here unended).
    Ended { id: Uuid },
    /// Stop every task at once; reply when none runs.
    Interrupt { reply: oneshot::Sender<()> },
    /// Whether a task runs here.
    IsRunning {
        id: Uuid,
        reply: oneshot::Sender<bool>,
    },
}

/// A task already in the log that this orchestrator takes over.
#[derive(Debug, Clone)]
pub(super) struct Adopted {
    pub(super) id: Uuid,
    /// Attempts started before.
    pub(super) attempts: u32,
    /// How many of those were recorded as interrupted.
    pub(super) interruptions: u32,
    /// An attempt was running when its process stopped.
    pub(super) interrupted: bool,
    /// The kernel that claimed that attempt, if the log names one.
    pub(super) kernel: Option<Uuid>,
    /// Its newest attempt was claimed for this process in the batch that
    /// submitted it: it runs now, not as an interrupted one.
    pub(super) claimed: bool,
    /// When the batch holding that claim was stored.
    pub(super) stored: Option<std::time::Instant>,
    /// It waited for room under the admission limit before it came here.
    pub(super) waited: bool,
    /// Where its end goes to be recorded with what it causes, if anywhere.
    pub(super) ends: Option<EndSink>,
}

/// Where a submission's answer goes.
pub(super) type Reply = oneshot::Sender<Result<TaskHandle, OrchestratorError>>;

/// A task known to the event loop.
struct Entry {
    cancel: Cancellation,
    /// Its idempotency key, remembered a while after it ends (dropped if
    /// its submission was never recorded).
    key: Option<String>,
    /// Duplicate submissions of its key that arrived while its submission
    /// was being recorded: they get the same answer.
    waiting: Vec<Reply>,
}

/// The loop's own state: tasks in flight and the idempotency keys used here.
pub(super) struct EventLoop {
    inner: Weak<Inner>,
    running: HashMap<Uuid, Entry>,
    keys: IdempotencyKeys,
    /// Cancellations the log recorded for tasks claimed here before they
    /// were handed over, by task: each starts cancelled.
    cancelled_early: HashMap<Uuid, String>,
    /// Set by [`Command::Interrupt`]: no task is taken any more.
    interrupted: bool,
    /// Interrupters waiting for the last task to end.
    idle: Vec<oneshot::Sender<()>>,
}

impl EventLoop {
    /// A loop for the orchestrator `inner`, remembering the keys of
    /// `finished_keys` ended tasks.
    pub(super) fn new(inner: Weak<Inner>, finished_keys: usize) -> Self {
        Self {
            inner,
            running: HashMap::new(),
            keys: IdempotencyKeys::new(finished_keys),
            cancelled_early: HashMap::new(),
            interrupted: false,
            idle: Vec::new(),
        }
    }

    /// Serves commands until every sender is gone or the orchestrator is.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
                    let _ = reply.send(self.cancel(id, reason, recorded));
                }
                Command::CancelClaimed { id, reason } => {
                    if self.cancel(id, reason.clone(), true).is_err() {
                        self.cancelled_early.insert(id, reason);
                    }
                }
                Command::HandedOver { id } => {
                    self.cancelled_early.remove(&id);
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

    /// Admits a task and starts its runner, or answers with the task its
    /// idempotency key names here.
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
        match (&adopt, known) {
            (Some(adopted), _) if self.running.contains_key(&adopted.id) => {
                let _ = reply.send(Err(OrchestratorError::AlreadyRunning(adopted.id)));
                return;
            }
            // The log's task under this key ended here (one that stopped
            // here unended, left to another kernel, may be taken back).
            (Some(adopted), Some(known))
                if known.id == adopted.id && known.outcome.borrow().is_some() =>
            {
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
        let id = adopt.as_ref().map_or_else(Uuid::now_v7, |a| a.id);
        let (done, outcome) = watch::channel(None);
        let cancel = Cancellation::new(cancel.unwrap_or_default());
        if let Some(reason) = adopt
            .as_ref()
            .and_then(|a| self.cancelled_early.remove(&a.id))
        {
            cancel.cancel(Stop::Cancelled {
                reason,
                recorded: true,
            });
        }
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
                key: spec.idempotency_key.clone(),
                waiting: Vec::new(),
            },
        );
        let runner = Runner {
            orchestrator: Orchestrator {
                inner: inner.clone(),
            },
            id,
            recorder: Arc::new(Recorder::new(inner.clone(), id, spec.durability)),
            spec,
            cancel,
            done,
            adopted: adopt,
            _admitted: admitted,
        };
        tokio::spawn(runner.run(reply, TaskHandle { id, outcome }));
    }

    /// Cancels a running task (its first reason stands), and through its
    /// token the tasks it started.
    fn cancel(&self, id: Uuid, reason: String, recorded: bool) -> Result<(), OrchestratorError> {
        let entry = self
            .running
            .get(&id)
            .ok_or(OrchestratorError::UnknownTask(id))?;
        entry.cancel.cancel(Stop::Cancelled { reason, recorded });
        Ok(())
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
        let handle = self.keys.recorded(&key, id, result.is_ok());
        for reply in waiting {
            let answer = match (&result, &handle) {
                (Ok(()), Some(handle)) => Ok(handle.clone()),
                (Ok(()), None) => Err(OrchestratorError::ShutDown),
                (Err(e), _) => Err(e.clone()),
            };
            let _ = reply.send(answer);
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
        if let Some(key) = key {
            self.keys.ended(key, id);
        }
    }

    /// Stops every task at once (see [`Orchestrator::interrupt`]).
    fn interrupt(&mut self, reply: oneshot::Sender<()>) {
        self.interrupted = true;
        // Every reason first: a parent's token cancels its children's, and
        // a child must not take that for its parent's cancellation.
        for entry in self.running.values() {
            entry.cancel.note(Stop::Interrupted);
        }
        for entry in self.running.values() {
            entry.cancel.token.cancel();
        }
        if self.running.is_empty() {
            let _ = reply.send(());
        } else {
            self.idle.push(reply);
        }
    }
}
