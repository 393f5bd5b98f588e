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
//! again. Idempotency has two layers, the log's and the event loop's: see
//! `idempotency`.
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
//!
//! Its rooms:
//!
//! - this file — the vocabulary: limits, outcomes, live events, errors;
//! - `handle` — [`Orchestrator`], the handle callers hold, and [`TaskHandle`];
//! - `handler` — [`TaskHandler`], the work behind a task, and the
//!   [`TaskContext`] an attempt gets;
//! - `event_loop` — the loop that serves commands one at a time: admits
//!   tasks, cancels them, interrupts them all;
//! - `idempotency` — the keys the loop remembers;
//! - `cancellation` — a task's token and why it was cancelled;
//! - `runner` — one task's life: its submission, attempts with retries and
//!   timeouts, its end;
//! - `ending` — a task's end handed to its submitter, to commit with what
//!   it causes;
//! - `recorder` — one task's events, in order, with its durability;
//! - `builtin` — the handlers tests and demos use.

mod builtin;
mod cancellation;
mod ending;
mod event_loop;
mod handle;
mod handler;
mod idempotency;
mod recorder;
mod runner;

use serde_json::Value;
use uuid::Uuid;

pub use builtin::builtin_handlers;
pub(crate) use cancellation::PARENT_CANCELLED;
pub use ending::{EndSink, TaskEnding};
pub use handle::{Orchestrator, TaskHandle};
pub use handler::{TaskContext, TaskError, TaskHandler};
pub use recorder::TASK_ASYNC_APPENDS;

use crate::event::SystemEvent;
use crate::store::StoreError;

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
    /// This kernel's id when several kernels share the log: each attempt
    /// it starts is claimed in the log under this id (`TaskStarted`), and an
    /// attempt another kernel claimed first, or took over, is left to it.
    pub kernel: Option<Uuid>,
}

/// Idempotency keys of ended tasks an orchestrator remembers by default:
/// enough for a client's prompt retries to get the task's handle and
/// outcome at once; an older key costs a refusal from the log instead. A
/// key with its handle is about 200 bytes, so this is under 1 MiB.
pub const FINISHED_KEYS: usize = 4096;

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            max_pending: 10_000,
            live_buffer: 4096,
            finished_keys: FINISHED_KEYS,
            kernel: None,
        }
    }
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
    /// The kernel it happened on, when another kernel sharing the store
    /// relayed it; `None`: it happened here.
    pub kernel: Option<Uuid>,
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
    /// A task handed over as claimed that the log does not show running.
    #[error("task {0} is not claimed: its record shows no running attempt")]
    NotClaimed(Uuid),
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
