//! What the log's projection keeps of each workflow run: its name, where it
//! came from and whether it has ended ([`RunRecord`]) — enough to list runs
//! and to find the unfinished ones a starting kernel drives, without
//! reading their events. A run's steps are folded from its own stream
//! ([`super::run::Run::replay`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::run::{RunEvent, RunOrigin};

/// Where a run is, as the projection keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Not ended: its steps run, or it waits for people or time.
    Running,
    /// Finished with its output.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        self != RunStatus::Running
    }

    /// The status's name, as the CLI and the API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// A run as the projection keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub id: Uuid,
    /// Its definition's name.
    pub name: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What started it, when another run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RunOrigin>,
    /// Where it is.
    pub status: RunStatus,
}

/// Why a run's event does not fit the projection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRecordError {
    /// A second start of a run.
    #[error("workflow run {0} has started already")]
    Duplicate(Uuid),
    /// An event of a run that never started.
    #[error("no workflow run {0}")]
    Unknown(Uuid),
    /// An event of a run that has ended.
    #[error("workflow run {0} has ended")]
    Ended(Uuid),
}

impl RunRecord {
    /// The record a run's first event makes; `None` for any other event.
    pub fn started(id: Uuid, event: &RunEvent) -> Option<Self> {
        match event {
            RunEvent::Started {
                name, at, origin, ..
            } => Some(Self {
                id,
                name: name.clone(),
                started_at: *at,
                origin: origin.clone(),
                status: RunStatus::Running,
            }),
            _ => None,
        }
    }

    /// Checks that a later event of the run fits: the run has not ended,
    /// and it does not start again.
    pub fn check(&self, event: &RunEvent) -> Result<(), RunRecordError> {
        match event {
            RunEvent::Started { .. } => Err(RunRecordError::Duplicate(self.id)),
            _ if self.status.is_final() => Err(RunRecordError::Ended(self.id)),
            _ => Ok(()),
        }
    }

    /// Applies a later event of the run (checked with [`RunRecord::check`]).
    pub fn apply(&mut self, event: &RunEvent) -> Result<(), RunRecordError> {
        self.check(event)?;
        match event {
            RunEvent::Completed { .. } => self.status = RunStatus::Completed,
            RunEvent::Failed { .. } => self.status = RunStatus::Failed,
            RunEvent::Cancelled { .. } => self.status = RunStatus::Cancelled,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn started(id: Uuid) -> RunRecord {
        let event: RunEvent = serde_json::from_value(json!({
            "type": "started", "engine": 1, "name": "flow",
            "sources": {"main": "flow.toml", "files": {}}, "input": {},
            "at": "2026-01-01T00:00:00Z"
        }))
        .expect("a started event");
        RunRecord::started(id, &event).expect("a record")
    }

    #[test]
    fn a_run_ends_once_and_takes_no_event_after() {
        let id = Uuid::now_v7();
        let mut record = started(id);
        let step = RunEvent::TimerSet {
            step: "a".into(),
            due: record.started_at,
        };
        record.apply(&step).expect("a step event");
        assert_eq!(record.status, RunStatus::Running);
        record
            .apply(&RunEvent::Cancelled { by: "me".into() })
            .expect("cancelled");
        assert_eq!(record.status, RunStatus::Cancelled);
        assert_eq!(record.apply(&step), Err(RunRecordError::Ended(id)));
        assert_eq!(
            record.apply(&RunEvent::Failed { error: "x".into() }),
            Err(RunRecordError::Ended(id))
        );
        assert_eq!(record.status, RunStatus::Cancelled);
    }
}
