//! Tasks as data: what a submitted task asks for ([`TaskSpec`]), the events
//! of its life, and [`TaskRecord`], the state those events fold into.
//!
//! The rules the reducer enforces are the orchestrator's delivery promises:
//! a task is submitted once (an idempotency key names one task), each
//! attempt starts after the previous one ended, and a task whose completion
//! (or any other end) was recorded never starts again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// How an event reaches the log and subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Delivered after the event is committed (the default for tasks).
    #[default]
    Durable,
    /// Delivered at once; committed by the next group commit.
    Async,
    /// Delivered at once and never logged: it cannot change replayable state.
    Ephemeral,
}

/// Retries after a failed or timed-out attempt: exponential backoff with
/// jitter, `base_delay_ms * 2^(attempt-1)` capped at `max_delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts after the first; 0 = never retry.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base_delay_ms: u64,
    /// Longest delay between attempts.
    pub max_delay_ms: u64,
    /// An attempt that its process's crash or stop interrupted runs again
    /// and does not count against `max_retries` (up to
    /// [`MAX_INTERRUPTED_RETRIES`] interruptions): a task does not fail, or
    /// lose a try, because a kernel died under it (a workflow's steps run
    /// at least once, and as often as their policy says).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_interrupted: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 0,
            base_delay_ms: 100,
            max_delay_ms: 30_000,
            retry_interrupted: false,
        }
    }
}

/// Interruptions a task with [`RetryPolicy::retry_interrupted`] is run
/// again after: a task whose attempts keep killing their process (running
/// out of memory, say) fails after these instead of crash-looping its
/// kernels.
pub const MAX_INTERRUPTED_RETRIES: u32 = 16;

impl RetryPolicy {
    /// Whether a task may run again after its attempt numbered `attempt`
    /// (1-based) failed or timed out, `interrupted` of its attempts so far
    /// having been interrupted (which, with `retry_interrupted`, do not
    /// count against `max_retries`).
    pub fn allows_retry_after(&self, attempt: u32, interrupted: u32) -> bool {
        let counted = match self.retry_interrupted {
            true => attempt.saturating_sub(interrupted),
            false => attempt,
        };
        counted <= self.max_retries
    }

    /// Whether a task may run again after its attempt numbered `attempt`
    /// was interrupted by its process's stop, `interrupted` of its attempts
    /// (this one included) having been.
    pub fn allows_retry_after_interruption(&self, attempt: u32, interrupted: u32) -> bool {
        match self.retry_interrupted {
            true => interrupted <= MAX_INTERRUPTED_RETRIES,
            false => self.allows_retry_after(attempt, 0),
        }
    }

    /// The delay before the attempt after `attempt`, given a jitter factor in
    /// `[0, 1)`: the exponential delay is scaled into `[50%, 100%]` of itself
    /// ("equal jitter"), so retries of many tasks spread out but still back off.
    pub fn delay_after(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base_delay_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let capped = exp.min(self.max_delay_ms) as f64;
        let jitter = jitter.clamp(0.0, 1.0);
        Duration::from_millis((capped * (0.5 + 0.5 * jitter)) as u64)
    }
}

/// What a caller asks the orchestrator to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Name of the handler that runs it.
    pub handler: String,
    /// Input handed to the handler.
    pub input: Value,
    /// Wall-clock limit of one attempt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What happens after a failed attempt.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Submitting the same key again yields the same task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The task that started this one, if any (cancelling it cancels this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// How the task's events are delivered.
    #[serde(default)]
    pub durability: Durability,
}

impl TaskSpec {
    /// A spec for `handler` with `input` and every other setting at its default.
    pub fn new(handler: impl Into<String>, input: Value) -> Self {
        Self {
            handler: handler.into(),
            input,
            timeout_ms: None,
            retry: RetryPolicy::default(),
            idempotency_key: None,
            parent: None,
            durability: Durability::default(),
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Submitted, not started yet (or waiting to retry).
    Pending,
    /// An attempt is running.
    Running,
    /// Finished with an output.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Its last attempt ran out of time, for good.
    TimedOut,
}

impl TaskStatus {
    /// Whether the task has ended (it will never run again).
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }
}

/// Everything the log says about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: Uuid,
    /// What was asked.
    pub spec: TaskSpec,
    /// Where it is.
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// How many of them were interrupted (their process stopped under them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u32,
    /// The output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The last error, if an attempt failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tasks this one started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Uuid>,
    /// The kernel that claimed the newest attempt, when several kernels
    /// share the log: the one whose lease its retries depend on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Uuid>,
}

/// Whether a count is zero (left out of a serialised record).
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A task event's change to its task, as the reducer applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskChange {
    /// Attempt `attempt` started.
    Started {
        /// 1-based attempt number.
        attempt: u32,
        /// The kernel that claimed the attempt, if the log names one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel: Option<Uuid>,
    },
    /// Attempt `attempt` reported progress (changes nothing but the log).
    Progress {
        /// 1-based attempt number.
        attempt: u32,
        /// Whatever the handler reported.
        progress: Value,
    },
    /// Attempt `attempt` finished with `output`.
    Completed {
        /// 1-based attempt number.
        attempt: u32,
        /// The handler's output.
        output: Value,
    },
    /// Attempt `attempt` failed; `final` when no retry follows.
    Failed {
        /// 1-based attempt number.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// True when the task will not be retried.
        #[serde(rename = "final")]
        is_final: bool,
        /// True when the attempt did not fail of itself: its process
        /// stopped under it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// Attempt `attempt` ran out of time; `final` when no retry follows.
    TimedOut {
        /// 1-based attempt number.
        attempt: u32,
        /// True when the task will not be retried.
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// The task was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// Why a task event cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskRuleError {
    /// The task has ended; nothing more may happen to it.
    #[error("task {0} has already ended")]
    Ended(Uuid),
    /// An attempt number out of sequence.
    #[error("task {task}: attempt {got} does not follow attempt {current}")]
    AttemptOutOfOrder {
        /// The task.
        task: Uuid,
        /// The attempt the event names.
        got: u32,
        /// The task's current attempt.
        current: u32,
    },
    /// The event needs a running attempt and there is none.
    #[error("task {0} has no running attempt")]
    NotRunning(Uuid),
}

impl TaskRecord {
    /// The record of a task just submitted.
    pub fn submitted(id: Uuid, spec: TaskSpec) -> Self {
        Self {
            id,
            spec,
            status: TaskStatus::Pending,
            attempts: 0,
            interrupted: 0,
            output: None,
            error: None,
            children: Vec::new(),
            kernel: None,
        }
    }

    /// Checks a change against the task's rules without applying it.
    pub fn check(&self, change: &TaskChange) -> Result<(), TaskRuleError> {
        if self.status.is_final() {
            return Err(TaskRuleError::Ended(self.id));
        }
        let running = |attempt: u32| {
            if self.status != TaskStatus::Running {
                Err(TaskRuleError::NotRunning(self.id))
            } else if attempt != self.attempts {
                Err(TaskRuleError::AttemptOutOfOrder {
                    task: self.id,
                    got: attempt,
                    current: self.attempts,
                })
            } else {
                Ok(())
            }
        };
        match change {
            TaskChange::Started { attempt, .. } => {
                if *attempt != self.attempts + 1 {
                    return Err(TaskRuleError::AttemptOutOfOrder {
                        task: self.id,
                        got: *attempt,
                        current: self.attempts,
                    });
                }
                Ok(())
            }
            TaskChange::Progress { attempt, .. }
            | TaskChange::Completed { attempt, .. }
            | TaskChange::Failed { attempt, .. }
            | TaskChange::TimedOut { attempt, .. } => running(*attempt),
            TaskChange::Cancelled { .. } => Ok(()),
        }
    }

    /// Applies a change (after [`TaskRecord::check`]).
    pub fn apply(&mut self, change: &TaskChange) -> Result<(), TaskRuleError> {
        self.check(change)?;
        match change {
            TaskChange::Started { attempt, kernel } => {
                self.attempts = *attempt;
                self.status = TaskStatus::Running;
                self.kernel = *kernel;
            }
            TaskChange::Progress { .. } => {}
            TaskChange::Completed { output, .. } => {
                self.status = TaskStatus::Completed;
                self.output = Some(output.clone());
            }
            TaskChange::Failed {
                error,
                is_final,
                interrupted,
                ..
            } => {
                self.interrupted += u32::from(*interrupted);
                self.error = Some(error.clone());
                self.status = if *is_final {
                    TaskStatus::Failed
                } else {
                    TaskStatus::Pending
                };
            }
            TaskChange::TimedOut { is_final, .. } => {
                self.error = Some("timed out".into());
                self.status = if *is_final {
                    TaskStatus::TimedOut
                } else {
                    TaskStatus::Pending
                };
            }
            TaskChange::Cancelled { reason } => {
                self.error = Some(reason.clone());
                self.status = TaskStatus::Cancelled;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> TaskRecord {
        TaskRecord::submitted(Uuid::now_v7(), TaskSpec::new("echo", json!({"x": 1})))
    }

    #[test]
    fn a_task_runs_attempts_in_order_and_ends_once() {
        let mut t = record();
        t.apply(&TaskChange::Started {
            attempt: 1,
            kernel: None,
        })
        .expect("start");
        t.apply(&TaskChange::Failed {
            attempt: 1,
            error: "boom".into(),
            is_final: false,
            interrupted: false,
        })
        .expect("fail");
        assert_eq!(t.status, TaskStatus::Pending);
        assert!(matches!(
            t.check(&TaskChange::Started {
                attempt: 1,
                kernel: None
            }),
            Err(TaskRuleError::AttemptOutOfOrder { .. })
        ));
        t.apply(&TaskChange::Started {
            attempt: 2,
            kernel: None,
        })
        .expect("retry");
        t.apply(&TaskChange::Completed {
            attempt: 2,
            output: json!(3),
        })
        .expect("complete");
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(
            t.check(&TaskChange::Started {
                attempt: 3,
                kernel: None
            }),
            Err(TaskRuleError::Ended(t.id))
        );
        assert_eq!(
            t.check(&TaskChange::Cancelled {
                reason: "late".into()
            }),
            Err(TaskRuleError::Ended(t.id))
        );
    }

    #[test]
    fn results_need_a_running_attempt() {
        let t = record();
        assert_eq!(
            t.check(&TaskChange::Completed {
                attempt: 1,
                output: json!(null)
            }),
            Err(TaskRuleError::NotRunning(t.id))
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let p = RetryPolicy {
            max_retries: 5,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            retry_interrupted: false,
        };
        assert_eq!(p.delay_after(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay_after(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay_after(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay_after(10, 1.0), Duration::from_millis(1_000));
        assert!(p.allows_retry_after(5, 0));
        assert!(!p.allows_retry_after(6, 0));
        assert_eq!(p.delay_after(40, 0.5), Duration::from_millis(750));
    }

    #[test]
    fn interruptions_cost_a_try_only_without_retry_interrupted() {
        let plain = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        // Attempts 1 and 2 interrupted, 3 failed: three attempts, the
        // policy's all.
        assert!(plain.allows_retry_after_interruption(2, 2));
        assert!(!plain.allows_retry_after(3, 2));
        assert!(!plain.allows_retry_after_interruption(3, 3));
        let steps = RetryPolicy {
            retry_interrupted: true,
            ..plain
        };
        // The same with interruptions not counted: two real tries left.
        assert!(steps.allows_retry_after(3, 2));
        assert!(steps.allows_retry_after(4, 2));
        assert!(!steps.allows_retry_after(5, 2));
        // Interruptions alone are bounded.
        assert!(steps.allows_retry_after_interruption(40, MAX_INTERRUPTED_RETRIES));
        assert!(!steps.allows_retry_after_interruption(40, MAX_INTERRUPTED_RETRIES + 1));
    }

    #[test]
    fn a_record_counts_its_interrupted_attempts() {
        let mut t = record();
        for (attempt, interrupted) in [(1, true), (2, false)] {
            t.apply(&TaskChange::Started {
                attempt,
                kernel: None,
            })
            .expect("start");
            t.apply(&TaskChange::Failed {
                attempt,
                error: "x".into(),
                is_final: false,
                interrupted,
            })
            .expect("fail");
        }
        assert_eq!((t.attempts, t.interrupted), (2, 1));
        // Left out of the record while zero, as records were before.
        let fresh = serde_json::to_value(record()).expect("encode");
        assert!(fresh.get("interrupted").is_none());
    }

    #[test]
    fn specs_round_trip_with_defaults() {
        let spec: TaskSpec =
            serde_json::from_value(json!({"handler": "echo", "input": 1})).expect("minimal spec");
        assert_eq!(spec, TaskSpec::new("echo", json!(1)));
        let text = serde_json::to_string(&spec).expect("serialize");
        assert_eq!(
            serde_json::from_str::<TaskSpec>(&text).expect("parse"),
            spec
        );
    }
}
