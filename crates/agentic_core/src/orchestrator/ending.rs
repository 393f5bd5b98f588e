//! Task ends recorded by the submitter: a task adopted with an [`EndSink`]
//! hands its final event to whoever submitted it (the workflow driver),
//! which commits it in the same batch as what the end causes (the run's
//! next move), so the end costs no commit of its own. A submitter that
//! cannot take the end now drops the [`TaskEnding`], and the task records
//! its end alone, as any other task does.

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::event::SystemEvent;

/// Where a task adopted with [`crate::Orchestrator::adopt_claimed`] sends
/// its end to be recorded.
pub type EndSink = mpsc::UnboundedSender<TaskEnding>;

/// A task's final event (`TaskCompleted`, or a final `TaskFailed` or
/// `TaskTimedOut`), waiting for its submitter to record it. Dropping it
/// declines: the task then records the event alone.
#[derive(Debug)]
pub struct TaskEnding {
    /// The task that ended.
    pub task: Uuid,
    /// The event that records its end.
    pub event: SystemEvent,
    /// Told the event's sequence number once it is committed.
    pub(super) reply: oneshot::Sender<u64>,
}

impl TaskEnding {
    /// Tells the task its end was committed, as event number `seq`.
    pub fn recorded(self, seq: u64) {
        // A task that stopped waiting (its process stopping) is fine.
        let _ = self.reply.send(seq);
    }
}
