//! A task's cancellation: its token, and why it was cancelled.
//!
//! The tokens make the cancellation tree: a child task's token is a child of
//! its parent's (see [`TaskContext::spawn_child`](super::TaskContext::spawn_child)),
//! so cancelling a task cancels every task it started, transitively. The
//! event loop cancels; the task's runner reads the reason to record the end
//! (a token cancelled with no reason of its own was cancelled through its
//! parent).

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// The reason recorded for a task cancelled through its parent.
pub(crate) const PARENT_CANCELLED: &str = "parent task cancelled";

/// Why a task's token was cancelled.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// The task is cancelled: its end is recorded, unless `recorded` (the
    /// log has it already).
    Cancelled { reason: String, recorded: bool },
    /// Its orchestrator stops at once
    /// ([`Orchestrator::interrupt`](super::Orchestrator::interrupt)).
    Interrupted,
}

/// A task's token with the reason it was cancelled, shared by the event
/// loop and the task's runner.
#[derive(Clone)]
pub(super) struct Cancellation {
    /// Cancelled when the task is (or its parent is).
    pub(super) token: CancellationToken,
    /// The first reason given; `None` while none was, or when the token was
    /// cancelled through a parent.
    reason: Arc<Mutex<Option<Stop>>>,
}

impl Cancellation {
    /// A task's cancellation under `token`.
    pub(super) fn new(token: CancellationToken) -> Self {
        Self {
            token,
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Notes why the task stops, unless a reason was noted first; does not
    /// cancel the token.
    pub(super) fn note(&self, stop: Stop) {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(stop);
    }

    /// Notes why (unless a reason was noted first) and cancels the token.
    pub(super) fn cancel(&self, stop: Stop) {
        self.note(stop);
        self.token.cancel();
    }

    /// The reason noted, if any.
    pub(super) fn reason(&self) -> Option<Stop> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the token was cancelled by
    /// [`Orchestrator::interrupt`](super::Orchestrator::interrupt).
    pub(super) fn interrupted(&self) -> bool {
        matches!(
            *self.reason.lock().unwrap_or_else(PoisonError::into_inner),
            Some(Stop::Interrupted)
        )
    }
}
