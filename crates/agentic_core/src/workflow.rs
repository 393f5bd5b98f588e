//! Durable workflows: multi-step work as a DAG of steps, each run as an
//! orchestrator task or a wait recorded in the log.
//!
//! - [`definition`] — definitions as TOML files, checked into a DAG before
//!   anything runs: kinds and fields, durations, JSON Schemas, templates,
//!   dependencies and cycles, sub-workflows; one-line errors naming the
//!   file, the step and the field.
//! - [`run`] — a run as a fold of its events, and what it does next, as more
//!   events: pure, so a run resumed from its log decides as it would have.
//! - [`log`] — a run's events in the store: reading a run back, deciding
//!   what it does next as one batch (its events, the tasks and sub-runs it
//!   starts), and what a run's end cancels.
//! - [`record`] — what the log's projection keeps of each run: its name,
//!   origin and whether it has ended.
//! - [`template`] — the values that flow between steps: JSON whose strings
//!   may be `minijinja` templates over the input and earlier outputs.

pub mod definition;
pub mod log;
pub mod record;
pub mod run;
pub mod template;

pub use definition::{Definition, DefinitionError, Step, StepKind};
pub use record::{RunRecord, RunRecordError, RunStatus};
pub use template::{Template, TemplateError};
