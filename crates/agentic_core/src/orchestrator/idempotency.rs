//! The idempotency keys the event loop remembers.
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
//! [`OrchestratorConfig::finished_keys`]: super::OrchestratorConfig::finished_keys
//! [`OrchestratorError::AlreadySubmitted`]: super::OrchestratorError::AlreadySubmitted

use std::collections::{HashMap, VecDeque};

use tokio::sync::watch;
use uuid::Uuid;

use super::{TaskHandle, TaskOutcome};

/// The task an idempotency key names here.
pub(super) struct Keyed {
    pub(super) id: Uuid,
    pub(super) outcome: watch::Receiver<Option<TaskOutcome>>,
    /// Whether the task's submission is in the log (or, for an ephemeral
    /// task, was published); until then duplicates wait for its answer.
    pub(super) recorded: bool,
}

impl Keyed {
    /// A handle to the task the key names.
    pub(super) fn handle(&self) -> TaskHandle {
        TaskHandle {
            id: self.id,
            outcome: self.outcome.clone(),
        }
    }
}

/// The idempotency keys used here: those of running tasks, and of the last
/// `finished_keys` that ended.
pub(super) struct IdempotencyKeys {
    keys: HashMap<String, Keyed>,
    /// Keys of ended tasks with their tasks, oldest first: the first to be
    /// forgotten.
    finished: VecDeque<(String, Uuid)>,
    /// How many of those to keep.
    finished_keys: usize,
}

impl IdempotencyKeys {
    /// No key yet; `finished_keys` of ended tasks will be kept.
    pub(super) fn new(finished_keys: usize) -> Self {
        Self {
            keys: HashMap::new(),
            finished: VecDeque::new(),
            finished_keys,
        }
    }

    /// The task `key` names here, if any.
    pub(super) fn get(&self, key: &str) -> Option<&Keyed> {
        self.keys.get(key)
    }

    /// Lets `key` name a task (in place of any it named before).
    pub(super) fn insert(&mut self, key: String, keyed: Keyed) {
        self.keys.insert(key, keyed);
    }

    /// Keeps the key of task `id`, which ended, among the last ended; the
    /// oldest beyond `finished_keys` are forgotten.
    pub(super) fn ended(&mut self, key: String, id: Uuid) {
        self.finished.push_back((key, id));
        while self.finished.len() > self.finished_keys {
            if let Some((old, task)) = self.finished.pop_front() {
                // The log still knows it: a later submission of it is
                // refused there, never run.
                self.forget(&old, task);
            }
        }
    }

    /// Drops `key` if it still names `task`.
    pub(super) fn forget(&mut self, key: &str, task: Uuid) {
        if self.keys.get(key).is_some_and(|k| k.id == task) {
            self.keys.remove(key);
        }
    }

    /// Task `id`'s submission under `key` was recorded (the key now stands
    /// for it) or was not (the key is dropped if it still names it). Returns
    /// the handle the key gave task `id` before, for the duplicates that
    /// waited for this answer.
    pub(super) fn recorded(&mut self, key: &str, id: Uuid, recorded: bool) -> Option<TaskHandle> {
        let handle = self.keys.get(key).filter(|k| k.id == id).map(Keyed::handle);
        if recorded {
            if let Some(known) = self.keys.get_mut(key) {
                known.recorded = true;
            }
        } else {
            self.forget(key, id);
        }
        handle
    }
}
