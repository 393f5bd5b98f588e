//! One task's life: the runner records its submission, answers the
//! submitter, then runs attempts of its handler, each under the task's
//! timeout and cancellation, retrying failed and timed-out ones by the
//! task's policy, and reports how the task ended. An adopted task starts by
//! recording the attempt its process's crash interrupted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use uuid::Uuid;

use super::cancellation::{Cancellation, PARENT_CANCELLED, Stop};
use super::ending::TaskEnding;
use super::event_loop::{Adopted, Command};
use super::recorder::Recorder;
use super::{Orchestrator, OrchestratorError, TaskContext, TaskHandle, TaskHandler, TaskOutcome};
use crate::event::SystemEvent;
use crate::state::ApplyError;
use crate::store::StoreError;
use crate::task::{Durability, TaskRuleError, TaskSpec, TaskStatus};

/// How soon after the commit that claimed it, with its submission, a task's
/// first attempt may start without reading its record back (see
/// `Runner::ended_before_start`).
const FRESH_CLAIM: Duration = Duration::from_millis(10);

/// The error recorded for an attempt whose process stopped while it ran.
const INTERRUPTED: &str = "interrupted: its process stopped while it ran";

/// Drives one task from submission to its end.
pub(super) struct Runner {
    pub(super) orchestrator: Orchestrator,
    pub(super) id: Uuid,
    pub(super) spec: TaskSpec,
    pub(super) cancel: Cancellation,
    pub(super) recorder: Arc<Recorder>,
    pub(super) done: watch::Sender<Option<TaskOutcome>>,
    /// Set when the task was taken over from the log rather than submitted.
    pub(super) adopted: Option<Adopted>,
    /// Held until the task ends: counts against `max_pending`.
    pub(super) _admitted: Option<OwnedSemaphorePermit>,
}

/// How one attempt ended.
enum Attempt {
    Completed(Value),
    Failed(String),
    TimedOut,
    Cancelled,
}

/// A task's end as its record has it (the record must have ended).
fn outcome_of(task: crate::task::TaskRecord) -> TaskOutcome {
    match task.status {
        TaskStatus::Completed => TaskOutcome::Completed(task.output.unwrap_or(Value::Null)),
        TaskStatus::TimedOut => TaskOutcome::TimedOut,
        TaskStatus::Cancelled => TaskOutcome::Cancelled(task.error.unwrap_or_default()),
        _ => TaskOutcome::Failed(task.error.unwrap_or_default()),
    }
}

impl Runner {
    /// Records the submission, answers the submitter, then runs the task.
    pub(super) async fn run(
        self,
        reply: oneshot::Sender<Result<TaskHandle, OrchestratorError>>,
        handle: TaskHandle,
    ) {
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
            // Another kernel claimed the attempt, or took the task over:
            // it is theirs to record. A task submitted here still answers
            // its submitter, with the end the log records.
            Err(e) if self.lost(&e) => match self.adopted {
                Some(_) => None,
                None => {
                    // Forgotten here first: if the kernel that runs it
                    // dies, this one takes it over like any other task.
                    self.finish(None).await;
                    if let Some(outcome) = self.ended_elsewhere().await {
                        self.done.send_replace(Some(outcome));
                    }
                    return;
                }
            },
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
        let mut attempt = self.adopted.as_ref().map_or(0, |a| a.attempts);
        // Attempts recorded as interrupted so far.
        let mut interruptions = self.adopted.as_ref().map_or(0, |a| a.interruptions);
        // Claimed in the batch that submitted it: that attempt runs now. A
        // cancellation the kernel's loop read before the hand-over has
        // cancelled it already (see `Orchestrator::cancel_claimed`);
        // starting late, it reads whether the log ended it meanwhile.
        let mut claimed = self.adopted.as_ref().is_some_and(|a| a.claimed);
        if claimed {
            attempt -= 1;
        }
        if let Some(a) = &self.adopted
            && a.interrupted
        {
            // The attempt that was running when its process stopped (or
            // its kernel's lease ran out).
            let why = match a.kernel {
                Some(kernel) if Some(kernel) != self.orchestrator.inner.kernel => {
                    format!("interrupted: kernel {kernel} stopped renewing its lease while it ran")
                }
                _ => INTERRUPTED.to_owned(),
            };
            match self.interrupted(attempt, why, interruptions + 1).await {
                Ok(Some(ended)) => return Ok(Some(ended)),
                Ok(None) => interruptions += 1,
                // Another kernel recorded the interruption (or the old
                // kernel its failure) first: the retry, if the policy
                // allows one, is claimed as usual, counting the
                // interruptions the log now holds.
                Err(OrchestratorError::Store(StoreError::Rejected(ApplyError::Task(
                    TaskRuleError::NotRunning(_),
                )))) if self.orchestrator.inner.kernel.is_some() => {
                    match self.orchestrator.inner.store.task(self.id).await {
                        Ok(Some(task)) if task.status.is_final() => {
                            return Ok(Some(outcome_of(task)));
                        }
                        Ok(Some(task)) => interruptions = task.interrupted,
                        Ok(None) => {}
                        // The claim that follows meets the log's answer.
                        Err(e) => tracing::warn!(task = %self.id, error = %e,
                            "cannot read the task again; its interruptions may be undercounted"),
                    }
                }
                Err(e) => return Err(e),
            }
            self.back_off(attempt).await?;
        }
        loop {
            attempt += 1;
            if self.cancel.token.is_cancelled() {
                return self.cancelled().await;
            }
            let slot = tokio::select! {
                biased;
                () = self.cancel.token.cancelled() => return self.cancelled().await,
                slot = self.orchestrator.inner.concurrency.clone().acquire_owned() => {
                    slot.map_err(|_| OrchestratorError::ShutDown)?
                }
            };
            if !std::mem::take(&mut claimed) {
                self.claim(attempt).await?;
            } else if let Some(ended) = self.ended_before_start().await {
                return Ok(Some(ended));
            }
            let slot = Arc::new(tokio::sync::Mutex::new(Some(slot)));
            let ended = self.attempt(&handler, attempt, slot.clone()).await;
            drop(slot);
            let retry = self.spec.retry.allows_retry_after(attempt, interruptions);
            match ended {
                Attempt::Completed(output) => {
                    self.record_final(SystemEvent::TaskCompleted {
                        task_id: self.id,
                        attempt,
                        output: output.clone(),
                    })
                    .await?;
                    return Ok(Some(TaskOutcome::Completed(output)));
                }
                // Its process stops now: recorded as a crash would be,
                // retried (by the next process) or failed by policy.
                Attempt::Cancelled if self.cancel.interrupted() => {
                    let why = INTERRUPTED.to_owned();
                    return self.interrupted(attempt, why, interruptions + 1).await;
                }
                Attempt::Cancelled => return self.cancelled().await,
                Attempt::Failed(error) => {
                    let failed = self.failed_after(attempt, error, interruptions);
                    if let Some(ended) = failed.await? {
                        return Ok(Some(ended));
                    }
                }
                Attempt::TimedOut => {
                    let timed_out = SystemEvent::TaskTimedOut {
                        task_id: self.id,
                        attempt,
                        is_final: !retry,
                    };
                    match retry {
                        true => self.record_end(timed_out).await?,
                        false => self.record_final(timed_out).await?,
                    }
                    if !retry {
                        return Ok(Some(TaskOutcome::TimedOut));
                    }
                }
            }
            self.back_off(attempt).await?;
        }
    }

    /// For the attempt claimed with the task's submission, about to run:
    /// if it starts late — it waited for admission, or more than
    /// [`FRESH_CLAIM`] has passed since its claim was stored — the task's
    /// end, when the log ended it meanwhile (a cancellation the kernel's
    /// loop has not read yet). A read that fails only warns: a
    /// cancellation still reaches the task through the loop.
    async fn ended_before_start(&self) -> Option<TaskOutcome> {
        let adopted = self.adopted.as_ref()?;
        let late = adopted.waited || adopted.stored.is_some_and(|at| at.elapsed() > FRESH_CLAIM);
        if !late {
            return None;
        }
        match self.orchestrator.inner.store.task(self.id).await {
            Ok(Some(task)) if task.status.is_final() => Some(outcome_of(task)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(task = %self.id, error = %e,
                    "cannot read the claimed task before it starts; running it");
                None
            }
        }
    }

    /// Records the start of `attempt`. With several kernels on the log this
    /// is the attempt's claim: committed before the handler runs, and
    /// refused by the log if another kernel claimed it first.
    async fn claim(&self, attempt: u32) -> Result<(), OrchestratorError> {
        let kernel = self.orchestrator.inner.kernel;
        let started = SystemEvent::TaskStarted {
            task_id: self.id,
            attempt,
            kernel,
        };
        match kernel {
            Some(_) if self.spec.durability != Durability::Ephemeral => {
                self.recorder.record_durable(started).await
            }
            _ => self.recorder.record(started).await,
        }
    }

    /// Records how an attempt (or the task) ended. With several kernels on
    /// the log it is committed before anyone hears of it: the log may
    /// refuse it (another kernel took the attempt over), and then no one
    /// must have been told.
    async fn record_end(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        match self.orchestrator.inner.kernel {
            Some(_) if self.spec.durability != Durability::Ephemeral => {
                self.recorder.record_durable(event).await
            }
            _ => self.recorder.record(event).await,
        }
    }

    /// Records the task's final event: handed to its submitter when it
    /// takes ends (committed there with what the end causes, in one
    /// batch), else — or if the submitter declines it — recorded alone.
    async fn record_final(&self, event: SystemEvent) -> Result<(), OrchestratorError> {
        let sink = self.adopted.as_ref().and_then(|a| a.ends.as_ref());
        if let Some(sink) = sink
            && self.spec.durability != Durability::Ephemeral
            && !self.cancel.interrupted()
        {
            self.recorder.flush().await?;
            let (reply, recorded) = oneshot::channel();
            let ending = TaskEnding {
                task: self.id,
                event: event.clone(),
                reply,
            };
            if sink.send(ending).is_ok()
                && let Ok(seq) = recorded.await
            {
                self.recorder.publish(Some(seq), event);
                return Ok(());
            }
        }
        self.record_end(event).await
    }

    /// Whether `e` says the task is another kernel's now: the log refused
    /// this kernel's claim or outcome because another attempt started, the
    /// attempt was recorded as interrupted, or the task ended.
    fn lost(&self, e: &OrchestratorError) -> bool {
        self.orchestrator.inner.kernel.is_some()
            && matches!(
                e,
                OrchestratorError::Store(StoreError::Rejected(ApplyError::Task(
                    TaskRuleError::AttemptOutOfOrder { .. }
                        | TaskRuleError::NotRunning(_)
                        | TaskRuleError::Ended(_)
                )))
            )
    }

    /// Waits for the end another kernel records for this task, as the
    /// kernel's loop sees it in the log ([`Orchestrator::observe_end`]);
    /// `None` if its token is cancelled first.
    async fn ended_elsewhere(&self) -> Option<TaskOutcome> {
        let (tx, mut ended) = oneshot::channel();
        self.orchestrator.inner.awaiting(self.id, Some(tx));
        // It may have ended before this waited.
        match self.orchestrator.inner.store.task(self.id).await {
            Ok(Some(task)) if task.status.is_final() => {
                self.orchestrator.inner.awaiting(self.id, None);
                return Some(outcome_of(task));
            }
            Ok(_) => {}
            Err(e) => {
                self.orchestrator.inner.awaiting(self.id, None);
                return Some(TaskOutcome::Failed(format!("cannot read the task: {e}")));
            }
        }
        tokio::select! {
            outcome = &mut ended => outcome.ok(),
            // Interrupted, or its parent here was cancelled: this runner no
            // longer counts as running here, so it cannot tell which, and it
            // must not cancel what a healthy kernel runs. It stops waiting;
            // a cancellation meant for the task goes through the log.
            () = self.cancel.token.cancelled() => {
                self.orchestrator.inner.awaiting(self.id, None);
                None
            }
        }
    }

    /// Records that `attempt` failed of itself, `interruptions` attempts
    /// before it having been interrupted; returns the task's end if no
    /// retry follows.
    async fn failed_after(
        &self,
        attempt: u32,
        error: String,
        interruptions: u32,
    ) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let retry = self.spec.retry.allows_retry_after(attempt, interruptions);
        self.record_failure(attempt, error, retry, false).await
    }

    /// Records that `attempt` was interrupted by its process's stop, the
    /// task's `n`th interruption; returns the task's end if no retry
    /// follows.
    async fn interrupted(
        &self,
        attempt: u32,
        error: String,
        n: u32,
    ) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let retry = self.spec.retry.allows_retry_after_interruption(attempt, n);
        self.record_failure(attempt, error, retry, true).await
    }

    /// Records attempt `attempt`'s failure (final unless `retry`); returns
    /// the task's end if no retry follows.
    async fn record_failure(
        &self,
        attempt: u32,
        error: String,
        retry: bool,
        interrupted: bool,
    ) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let failed = SystemEvent::TaskFailed {
            task_id: self.id,
            attempt,
            error: error.clone(),
            is_final: !retry,
            interrupted,
        };
        match retry || interrupted {
            true => self.record_end(failed).await?,
            false => self.record_final(failed).await?,
        }
        Ok((!retry).then_some(TaskOutcome::Failed(error)))
    }

    /// Waits before the attempt after `attempt` (returns early on cancellation,
    /// which the next attempt then records).
    async fn back_off(&self, attempt: u32) -> Result<(), OrchestratorError> {
        let delay = self.spec.retry.delay_after(attempt, rand::random::<f64>());
        tokio::select! {
            biased;
            () = self.cancel.token.cancelled() => {}
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
            cancel: self.cancel.token.clone(),
            recorder: self.recorder.clone(),
            orchestrator: self.orchestrator.clone(),
            slot,
        };
        let work = handler.run(ctx, self.spec.input.clone());
        let limit = self.spec.timeout_ms.map(Duration::from_millis);
        tokio::select! {
            biased;
            () = self.cancel.token.cancelled() => Attempt::Cancelled,
            result = async {
                match limit {
                    Some(limit) => tokio::time::timeout(limit, work).await.ok(),
                    None => Some(work.await),
                }
            } => match result {
                Some(Ok(output)) => Attempt::Completed(output),
                // Cancelled (on another thread) while the handler ran: it
                // saw that first and gave up, so the attempt was cancelled.
                Some(Err(_)) if self.cancel.token.is_cancelled() => Attempt::Cancelled,
                Some(Err(e)) => Attempt::Failed(e.0),
                None => Attempt::TimedOut,
            },
        }
    }

    /// Ends the task cancelled, outside an attempt; interrupted, it stops
    /// unended, as the log has it (pending), for the next process.
    async fn cancelled(&self) -> Result<Option<TaskOutcome>, OrchestratorError> {
        let (reason, recorded) = match self.cancel.reason() {
            Some(Stop::Interrupted) => return Ok(None),
            Some(Stop::Cancelled { reason, recorded }) => (reason, recorded),
            None => (PARENT_CANCELLED.to_owned(), false),
        };
        if !recorded {
            self.record_end(SystemEvent::TaskCancelled {
                task_id: self.id,
                reason: reason.clone(),
            })
            .await?;
        }
        Ok(Some(TaskOutcome::Cancelled(reason)))
    }
}
