//! A workflow run as a fold of its events, and what it does next.
//!
//! A run is nothing but its events: [`Run::replay`] folds them into the
//! state of every step, and [`Run::decide`] says what the run does next, as
//! more events — a step scheduled (with the task id that will run it and its
//! input, templates evaluated), an approval requested, a timer set or fired,
//! a condition's branch picked, steps skipped, the run completed or failed.
//! Deciding is pure: given the same events and the same clock it decides the
//! same, and it never decides again what an event already records — so a run
//! resumed after a crash from its events never schedules a completed step
//! again, and a step scheduled and not finished is found scheduled, to be run
//! again under its stable idempotency key ([`idempotency_key`]).
//!
//! What runs the steps (the orchestrator's tasks, people deciding approvals)
//! reports back with [`RunEvent::StepCompleted`], [`RunEvent::StepFailed`]
//! and [`RunEvent::ApprovalDecided`]; [`Run::apply`] refuses an event the
//! run's state does not allow (a step completed twice, an approval decided
//! that was not requested), so whoever appends them can check them first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::definition::{
    Call, Definition, DefinitionError, OnTimeout, Sources, StepKind, check_against,
};
use super::template::KEY_ROOT;

/// The version of the rules [`Run`] folds and decides by: recorded when a
/// run starts, and raised when a change would make a run in flight decide
/// differently (how definitions are read, dependencies inferred, steps
/// ordered, templates evaluated).
pub const ENGINE: u32 = 1;

fn first_engine() -> u32 {
    1
}

/// One event of a run, in the order the run's stream holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run started: the definition's sources and the input, checked.
    Started {
        /// The version of the rules that read the definition and decide
        /// (a run continues only under the rules it started with).
        #[serde(default = "first_engine")]
        engine: u32,
        /// The definition's name (the projection lists runs by it).
        name: String,
        /// The definition's files, as they were when the run started.
        sources: Sources,
        /// The run's input.
        input: Value,
        /// When.
        at: DateTime<Utc>,
        /// What started it, when another run did (a sub-workflow, a fork).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<RunOrigin>,
    },
    /// A step (or one item of a map) was given to a task.
    StepScheduled {
        /// The step.
        step: String,
        /// The map's item, for a map.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        /// The task that runs it.
        task: Uuid,
        /// What the task is asked, templates evaluated.
        input: Value,
    },
    /// A map's list, evaluated once.
    MapExpanded {
        /// The map step.
        step: String,
        /// Its items.
        items: Vec<Value>,
    },
    /// A step (or one item of a map) finished with an output.
    StepCompleted {
        /// The step.
        step: String,
        /// The map's item, for one item.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        /// Its output.
        output: Value,
    },
    /// A step (or one item of a map) failed for good.
    StepFailed {
        /// The step.
        step: String,
        /// The map's item, for one item.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        /// Why.
        error: String,
    },
    /// A fork took a step's output from the run it was forked from: the
    /// step is completed without running.
    StepReused {
        /// The step.
        step: String,
        /// Its output, as the other run recorded it.
        output: Value,
        /// The run it comes from.
        from: Uuid,
    },
    /// A step will not run: a condition picked another branch, or a step it
    /// runs after was skipped.
    StepSkipped {
        /// The step.
        step: String,
        /// Why, in a few words.
        because: String,
    },
    /// An approval step asks a person.
    ApprovalRequested {
        /// The step.
        step: String,
        /// What is asked, templates evaluated.
        prompt: String,
        /// When it stops waiting.
        deadline: DateTime<Utc>,
    },
    /// A person decided an approval, or its deadline passed.
    ApprovalDecided {
        /// The step.
        step: String,
        /// Approved or rejected.
        approved: bool,
        /// Who: the OS user, the API token's name, or `timeout`.
        by: String,
        /// What they added, if anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Value>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A timer step started waiting.
    TimerSet {
        /// The step.
        step: String,
        /// When it fires.
        due: DateTime<Utc>,
    },
    /// A timer fired (possibly late: the run was not running when it was due).
    TimerFired {
        /// The step.
        step: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The run finished with its output.
    Completed {
        /// The output.
        output: Value,
    },
    /// The run failed.
    Failed {
        /// Why.
        error: String,
    },
    /// The run was cancelled.
    Cancelled {
        /// Who cancelled it.
        by: String,
    },
}

/// What started a run, when another run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunOrigin {
    /// A sub-workflow, started by a step of its parent run (its id is the
    /// id the parent scheduled the step with).
    Parent {
        /// The parent run.
        run: Uuid,
        /// Its step.
        step: String,
        /// The map's item, for a sub-workflow run for each item.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
    },
    /// A fork of another run, from one of its steps.
    Fork {
        /// The run forked.
        run: Uuid,
        /// The step it was forked from.
        from: String,
    },
}

/// The stream that holds run `run`'s events.
pub fn stream(run: Uuid) -> String {
    format!("workflow:{run}")
}

/// Why an event does not fit a run, or a run cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The first event is not `started`, or `started` comes twice.
    #[error("a run's events start with one `started` event")]
    NotStarted,
    /// The recorded definition no longer reads.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The input does not match the definition's schema.
    #[error("{0}")]
    Input(String),
    /// The event names a step the definition does not have.
    #[error("the run has no step `{0}`")]
    NoSuchStep(String),
    /// The event does not fit the step's state.
    #[error("step `{step}`: {reason}")]
    Refused {
        /// The step.
        step: String,
        /// What does not fit.
        reason: String,
    },
    /// The run has ended.
    #[error("the run has ended")]
    Ended,
    /// The run started under rules this version does not have.
    #[error("the run started under workflow engine {0}; this lion has engine {ENGINE}")]
    Engine(u32),
}

/// Where a step is.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState {
    /// Waiting for the steps it runs after.
    Pending,
    /// Given to a task, not finished.
    Scheduled {
        /// The task.
        task: Uuid,
    },
    /// A map, item by item.
    Mapping {
        /// The items.
        items: Vec<Value>,
        /// Each item's task, once scheduled.
        tasks: Vec<Option<Uuid>>,
        /// Each item's output, once completed.
        outputs: Vec<Option<Value>>,
    },
    /// An approval waiting for a person.
    Asking {
        /// When it stops waiting.
        deadline: DateTime<Utc>,
    },
    /// A timer waiting.
    Waiting {
        /// When it fires.
        due: DateTime<Utc>,
    },
    /// Finished.
    Completed {
        /// Its output.
        output: Value,
    },
    /// Failed for good.
    Failed {
        /// Why.
        error: String,
    },
    /// Will not run.
    Skipped,
}

impl StepState {
    /// Finished one way or another.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StepState::Completed { .. } | StepState::Failed { .. } | StepState::Skipped
        )
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// With its output.
    Completed(Value),
    /// With an error.
    Failed(String),
    /// Cancelled, by whom.
    Cancelled(String),
}

/// A run: its definition, input, and where each step is.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run's id.
    pub id: Uuid,
    /// The definition it runs (from the recorded sources).
    pub definition: Arc<Definition>,
    /// Its input.
    pub input: Value,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Each step's state.
    pub steps: BTreeMap<String, StepState>,
    /// How it ended, once it has.
    pub end: Option<RunEnd>,
    /// What started it, when another run did.
    pub origin: Option<RunOrigin>,
}

/// The idempotency key of a step's task (of one item, for a map): the same
/// however often the step is scheduled again, so a plugin can make it
/// exactly-once.
pub fn idempotency_key(run: Uuid, step: &str, item: Option<usize>) -> String {
    match item {
        Some(i) => format!("workflow:{run}:{step}:{i}"),
        None => format!("workflow:{run}:{step}"),
    }
}

impl Run {
    /// The first event of a new run, once the input is checked.
    pub fn start(
        definition: &Definition,
        input: Value,
        at: DateTime<Utc>,
        origin: Option<RunOrigin>,
    ) -> Result<RunEvent, RunError> {
        definition
            .check_input(&input)
            .map_err(|e| RunError::Input(e.to_string()))?;
        Ok(RunEvent::Started {
            engine: ENGINE,
            name: definition.name.clone(),
            sources: definition.sources.clone(),
            input,
            at,
            origin,
        })
    }

    /// Folds the events of run `id`.
    pub fn replay<'a>(
        id: Uuid,
        events: impl IntoIterator<Item = &'a RunEvent>,
    ) -> Result<Run, RunError> {
        let mut events = events.into_iter();
        let Some(RunEvent::Started {
            sources,
            input,
            at,
            engine,
            origin,
            ..
        }) = events.next()
        else {
            return Err(RunError::NotStarted);
        };
        if *engine != ENGINE {
            return Err(RunError::Engine(*engine));
        }
        let definition = Arc::new(Definition::from_sources(sources.clone())?);
        let steps = definition
            .order
            .iter()
            .map(|id| (id.clone(), StepState::Pending))
            .collect();
        let mut run = Run {
            id,
            definition,
            input: input.clone(),
            started_at: *at,
            steps,
            end: None,
            origin: origin.clone(),
        };
        for event in events {
            run.apply(event)?;
        }
        Ok(run)
    }

    /// Applies one event, refusing one the state does not allow: each
    /// event must fit its step's kind and state, items their map, and the
    /// run's end its steps.
    pub fn apply(&mut self, event: &RunEvent) -> Result<(), RunError> {
        if self.end.is_some() {
            return Err(RunError::Ended);
        }
        let definition = Arc::clone(&self.definition);
        let kind_of_step = |step: &str| {
            definition
                .steps
                .get(step)
                .map(|s| &s.kind)
                .ok_or_else(|| RunError::NoSuchStep(step.to_owned()))
        };
        match event {
            RunEvent::Started { .. } => return Err(RunError::NotStarted),
            RunEvent::Completed { output } => {
                if let Some((step, _)) = self.steps.iter().find(|(_, s)| !s.is_final()) {
                    return Err(refused(step, "has not ended, and the run cannot before it"));
                }
                self.end = Some(RunEnd::Completed(output.clone()));
            }
            RunEvent::Failed { error } => self.end = Some(RunEnd::Failed(error.clone())),
            RunEvent::Cancelled { by } => self.end = Some(RunEnd::Cancelled(by.clone())),
            RunEvent::StepScheduled {
                step, item, task, ..
            } => {
                let kind = kind_of_step(step)?;
                let after = &definition.steps[step].after;
                if !after
                    .iter()
                    .all(|d| matches!(self.steps[d], StepState::Completed { .. }))
                {
                    return Err(refused(step, "runs after steps that have not completed"));
                }
                match (kind, item, self.state_mut(step)?) {
                    (StepKind::Work(_), None, s @ StepState::Pending) => {
                        *s = StepState::Scheduled { task: *task }
                    }
                    (
                        StepKind::Map { concurrency, .. },
                        Some(i),
                        StepState::Mapping { tasks, outputs, .. },
                    ) if *i < tasks.len() && tasks[*i].is_none() => {
                        let running = running_items(tasks, outputs);
                        if running >= *concurrency as usize {
                            return Err(refused(step, "runs as many items as it may already"));
                        }
                        tasks[*i] = Some(*task);
                    }
                    _ => return Err(refused(step, "cannot be scheduled now")),
                }
            }
            RunEvent::MapExpanded { step, items } => {
                let kind = kind_of_step(step)?;
                match (kind, self.state_mut(step)?) {
                    (StepKind::Map { .. }, s @ StepState::Pending) => {
                        *s = StepState::Mapping {
                            tasks: vec![None; items.len()],
                            outputs: vec![None; items.len()],
                            items: items.clone(),
                        }
                    }
                    _ => return Err(refused(step, "cannot be expanded now")),
                }
            }
            RunEvent::StepCompleted { step, item, output } => {
                let kind = kind_of_step(step)?;
                match (kind, item, self.state_mut(step)?) {
                    (StepKind::Work(_), None, s @ StepState::Scheduled { .. })
                    | (StepKind::Condition { .. }, None, s @ StepState::Pending) => {
                        *s = StepState::Completed {
                            output: output.clone(),
                        }
                    }
                    (StepKind::Map { .. }, None, s @ StepState::Mapping { .. }) => {
                        let StepState::Mapping { outputs, .. } = &*s else {
                            unreachable!()
                        };
                        if outputs.iter().any(Option::is_none) {
                            return Err(refused(step, "has items not completed"));
                        }
                        *s = StepState::Completed {
                            output: output.clone(),
                        }
                    }
                    (StepKind::Map { .. }, Some(i), StepState::Mapping { tasks, outputs, .. })
                        if *i < outputs.len() && tasks[*i].is_some() && outputs[*i].is_none() =>
                    {
                        outputs[*i] = Some(output.clone());
                    }
                    _ => return Err(refused(step, "cannot complete now")),
                }
            }
            RunEvent::StepFailed { step, item, error } => {
                let state = self.state_mut(step)?;
                let fits = match (&*state, item) {
                    (StepState::Mapping { outputs, .. }, Some(i)) => {
                        *i < outputs.len() && outputs[*i].is_none()
                    }
                    (s, None) => !s.is_final(),
                    _ => false,
                };
                if !fits {
                    return Err(refused(step, "cannot fail now"));
                }
                *state = StepState::Failed {
                    error: match item {
                        Some(i) => format!("item {i}: {error}"),
                        None => error.clone(),
                    },
                };
            }
            RunEvent::StepReused { step, output, .. } => match self.state_mut(step)? {
                s @ StepState::Pending => {
                    *s = StepState::Completed {
                        output: output.clone(),
                    }
                }
                _ => return Err(refused(step, "cannot be reused now")),
            },
            RunEvent::StepSkipped { step, .. } => match self.state_mut(step)? {
                s @ StepState::Pending => *s = StepState::Skipped,
                _ => return Err(refused(step, "cannot be skipped now")),
            },
            RunEvent::ApprovalRequested { step, deadline, .. } => {
                let kind = kind_of_step(step)?;
                match (kind, self.state_mut(step)?) {
                    (StepKind::Approval { .. }, s @ StepState::Pending) => {
                        *s = StepState::Asking {
                            deadline: *deadline,
                        }
                    }
                    _ => return Err(refused(step, "cannot ask now")),
                }
            }
            RunEvent::ApprovalDecided {
                step,
                approved,
                by,
                input,
                at,
            } => match self.state_mut(step)? {
                s @ StepState::Asking { .. } => {
                    *s = StepState::Completed {
                        output: json!({
                            "approved": approved,
                            "by": by,
                            "at": at,
                            "input": input,
                        }),
                    }
                }
                _ => return Err(refused(step, "is not waiting for a decision")),
            },
            RunEvent::TimerSet { step, due } => {
                let kind = kind_of_step(step)?;
                match (kind, self.state_mut(step)?) {
                    (StepKind::Timer { .. }, s @ StepState::Pending) => {
                        *s = StepState::Waiting { due: *due }
                    }
                    _ => return Err(refused(step, "cannot be set now")),
                }
            }
            RunEvent::TimerFired { step, at } => match self.state_mut(step)? {
                s @ StepState::Waiting { .. } => {
                    let StepState::Waiting { due } = *s else {
                        unreachable!()
                    };
                    if *at < due {
                        return Err(refused(step, "cannot fire before it is due"));
                    }
                    let late = (*at - due).num_milliseconds();
                    *s = StepState::Completed {
                        output: json!({ "due": due, "fired_at": at, "late_ms": late }),
                    }
                }
                _ => return Err(refused(step, "is not waiting")),
            },
        }
        Ok(())
    }

    /// The tasks scheduled and not finished, as `(step, item, task)`: what
    /// to cancel once the run has ended.
    pub fn outstanding(&self) -> Vec<(String, Option<usize>, Uuid)> {
        let mut out = Vec::new();
        for (id, state) in &self.steps {
            match state {
                StepState::Scheduled { task } => out.push((id.clone(), None, *task)),
                StepState::Mapping { tasks, outputs, .. } => {
                    for (i, (task, output)) in tasks.iter().zip(outputs).enumerate() {
                        if let (Some(task), None) = (task, output) {
                            out.push((id.clone(), Some(i), *task));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn state_mut(&mut self, step: &str) -> Result<&mut StepState, RunError> {
        self.steps
            .get_mut(step)
            .ok_or_else(|| RunError::NoSuchStep(step.to_owned()))
    }

    /// What the run does next, as events to record (none once it has
    /// ended, or while it waits for tasks, people or time). `task_id` makes
    /// the id of each task scheduled. Each event decided is applied to a
    /// copy of the run before the next is decided, so one call never
    /// decides a step twice and every event it returns fits.
    pub fn decide(&self, now: DateTime<Utc>, task_id: &mut impl FnMut() -> Uuid) -> Vec<RunEvent> {
        self.clone().advance(now, task_id)
    }

    /// [`Run::decide`], applying each event decided to this run as it goes
    /// (an event [`Run::apply`] refuses leaves the run as it was, so the
    /// run changes only by the events returned).
    fn advance(&mut self, now: DateTime<Utc>, task_id: &mut impl FnMut() -> Uuid) -> Vec<RunEvent> {
        let definition = Arc::clone(&self.definition);
        let mut decided = Vec::new();
        let mut take = |run: &mut Run, events: Vec<RunEvent>| {
            for event in events {
                match run.apply(&event) {
                    Ok(()) => decided.push(event),
                    Err(e) => {
                        debug_assert!(false, "decided an event that does not fit: {e}");
                        tracing::error!(error = %e, "a workflow run decided an event that does not fit");
                    }
                }
            }
        };
        if self.end.is_some() {
            return decided;
        }
        if let Some((step, StepState::Failed { error })) = self
            .steps
            .iter()
            .find(|(_, s)| matches!(s, StepState::Failed { .. }))
        {
            let failed = RunEvent::Failed {
                error: format!("step `{step}`: {error}"),
            };
            take(self, vec![failed]);
            return decided;
        }
        if self.steps.values().all(StepState::is_final) {
            let end = self.finish();
            take(self, vec![end]);
            return decided;
        }
        for id in &definition.order {
            let step = &definition.steps[id];
            let events = match &self.steps[id] {
                StepState::Pending => {
                    if let Some(skipped) = step
                        .after
                        .iter()
                        .find(|d| self.steps[*d] == StepState::Skipped)
                    {
                        vec![RunEvent::StepSkipped {
                            step: id.clone(),
                            because: format!("`{skipped}` was skipped"),
                        }]
                    } else if step
                        .after
                        .iter()
                        .all(|d| matches!(self.steps[d], StepState::Completed { .. }))
                    {
                        let context = self.context(Some(&step.after));
                        self.begin(id, &step.kind, &context, now, task_id)
                    } else {
                        Vec::new()
                    }
                }
                StepState::Mapping { .. } => self.advance_map(id, &step.kind, task_id),
                StepState::Asking { deadline } if now >= *deadline => {
                    let StepKind::Approval { on_timeout, .. } = &step.kind else {
                        continue;
                    };
                    vec![match on_timeout {
                        OnTimeout::Fail => RunEvent::StepFailed {
                            step: id.clone(),
                            item: None,
                            error: format!("nobody decided by {deadline}"),
                        },
                        approve_or_reject => RunEvent::ApprovalDecided {
                            step: id.clone(),
                            approved: *approve_or_reject == OnTimeout::Approve,
                            by: "timeout".into(),
                            input: None,
                            at: now,
                        },
                    }]
                }
                StepState::Waiting { due } if now >= *due => vec![RunEvent::TimerFired {
                    step: id.clone(),
                    at: now,
                }],
                _ => Vec::new(),
            };
            take(self, events);
            // A failure ends the run: nothing more is started.
            if matches!(self.steps[id], StepState::Failed { .. }) {
                break;
            }
        }
        decided
    }

    /// Decides, applies and decides again until the run waits: every event
    /// decided, in order. The run changes only by the events returned.
    pub fn settle(
        &mut self,
        now: DateTime<Utc>,
        task_id: &mut impl FnMut() -> Uuid,
    ) -> Vec<RunEvent> {
        let mut all = Vec::new();
        loop {
            let decided = self.advance(now, task_id);
            if decided.is_empty() {
                return all;
            }
            all.extend(decided);
        }
    }

    /// The events that start a ready step.
    fn begin(
        &self,
        id: &str,
        kind: &StepKind,
        context: &Value,
        now: DateTime<Utc>,
        task_id: &mut impl FnMut() -> Uuid,
    ) -> Vec<RunEvent> {
        let failed = |error: String| {
            vec![RunEvent::StepFailed {
                step: id.to_owned(),
                item: None,
                error,
            }]
        };
        match kind {
            StepKind::Work(work) => match call_input(&work.call, &self.keyed(context, id, None)) {
                Ok(input) => vec![RunEvent::StepScheduled {
                    step: id.to_owned(),
                    item: None,
                    task: task_id(),
                    input,
                }],
                Err(error) => failed(error),
            },
            StepKind::Approval {
                prompt, timeout, ..
            } => match prompt.evaluate(context) {
                Ok(prompt) => vec![RunEvent::ApprovalRequested {
                    step: id.to_owned(),
                    prompt: text_of(prompt),
                    deadline: now + *timeout,
                }],
                Err(e) => failed(e.0),
            },
            StepKind::Timer { duration } => vec![RunEvent::TimerSet {
                step: id.to_owned(),
                due: now + *duration,
            }],
            StepKind::Map { over, .. } => match over.evaluate(context) {
                Ok(Value::Array(items)) => vec![RunEvent::MapExpanded {
                    step: id.to_owned(),
                    items,
                }],
                Ok(other) => failed(format!("`over` is not a list: {}", kind_of(&other))),
                Err(e) => failed(e.0),
            },
            StepKind::Condition {
                branches,
                otherwise,
            } => {
                let mut chosen = None;
                for branch in branches {
                    match branch.when.evaluate(context) {
                        Ok(value) if truthy(&value) => {
                            chosen = Some(branch.then.clone());
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => return failed(e.0),
                    }
                }
                let chosen = chosen.or_else(|| otherwise.clone());
                let mut events = vec![RunEvent::StepCompleted {
                    step: id.to_owned(),
                    item: None,
                    output: json!({ "chose": chosen }),
                }];
                let targets = branches
                    .iter()
                    .map(|b| &b.then)
                    .chain(otherwise.iter())
                    .filter(|t| Some(*t) != chosen.as_ref())
                    .filter(|t| self.steps.get(*t) == Some(&StepState::Pending))
                    .collect::<BTreeSet<_>>();
                events.extend(targets.into_iter().map(|t| RunEvent::StepSkipped {
                    step: t.clone(),
                    because: format!("condition `{id}` chose another branch"),
                }));
                events
            }
        }
    }

    /// The events that move a map on: items scheduled up to its
    /// concurrency, or its output once every item is done.
    fn advance_map(
        &self,
        id: &str,
        kind: &StepKind,
        task_id: &mut impl FnMut() -> Uuid,
    ) -> Vec<RunEvent> {
        let (
            StepKind::Map {
                concurrency, each, ..
            },
            StepState::Mapping {
                items,
                tasks,
                outputs,
            },
        ) = (kind, &self.steps[id])
        else {
            return Vec::new();
        };
        if outputs.iter().all(Option::is_some) {
            return vec![RunEvent::StepCompleted {
                step: id.to_owned(),
                item: None,
                output: Value::Array(outputs.iter().flatten().cloned().collect()),
            }];
        }
        let running = running_items(tasks, outputs);
        let mut context = self.context(Some(&self.definition.steps[id].after));
        let mut events = Vec::new();
        let free = (*concurrency as usize).saturating_sub(running);
        for (i, _) in tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .take(free)
        {
            context["item"] = items[i].clone();
            context["index"] = json!(i);
            context[KEY_ROOT] = json!(idempotency_key(self.id, id, Some(i)));
            events.push(match call_input(&each.call, &context) {
                Ok(input) => RunEvent::StepScheduled {
                    step: id.to_owned(),
                    item: Some(i),
                    task: task_id(),
                    input,
                },
                Err(error) => RunEvent::StepFailed {
                    step: id.to_owned(),
                    item: Some(i),
                    error,
                },
            });
            if matches!(events.last(), Some(RunEvent::StepFailed { .. })) {
                break;
            }
        }
        events
    }

    /// The run's end once every step is: its output, checked.
    fn finish(&self) -> RunEvent {
        let context = self.context(None);
        let output = match self
            .definition
            .output
            .as_ref()
            .and_then(|o| o.value.as_ref())
        {
            Some(template) => match template.evaluate(&context) {
                Ok(output) => output,
                Err(e) => {
                    return RunEvent::Failed {
                        error: format!("the output: {}", e.0),
                    };
                }
            },
            None => context["steps"]
                .as_object()
                .map(|steps| {
                    steps
                        .iter()
                        .map(|(id, s)| (id.clone(), s["output"].clone()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if let Some(schema) = self
            .definition
            .output
            .as_ref()
            .and_then(|o| o.schema.as_ref())
            && let Err(reason) = check_against(schema, &output)
        {
            return RunEvent::Failed {
                error: format!("the output does not match its schema: {reason}"),
            };
        }
        RunEvent::Completed { output }
    }

    /// `context` with the idempotency key of step `step` (item `item`), for
    /// a work step's templates.
    fn keyed(&self, context: &Value, step: &str, item: Option<usize>) -> Value {
        let mut context = context.clone();
        context[KEY_ROOT] = json!(idempotency_key(self.id, step, item));
        context
    }

    /// What templates see: the input, and the output of each finished
    /// step among `only` (every step if `None`; `null` for a skipped one).
    /// A step's templates see only the steps it runs after, so a read its
    /// definition did not declare fails, whatever ran first.
    fn context(&self, only: Option<&BTreeSet<String>>) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter(|(id, _)| only.is_none_or(|only| only.contains(*id)))
            .filter_map(|(id, state)| match state {
                StepState::Completed { output } => Some((id.clone(), json!({ "output": output }))),
                StepState::Skipped => Some((id.clone(), json!({ "output": null }))),
                _ => None,
            })
            .collect();
        json!({ "input": self.input, "steps": steps })
    }
}

/// What a work step's task is asked, templates evaluated: the input of the
/// task handler that runs it (a plugin call's `{plugin, function, input}`,
/// an agent turn's `{agent, text}`).
fn call_input(call: &Call, context: &Value) -> Result<Value, String> {
    Ok(match call {
        Call::Plugin {
            plugin,
            function,
            input,
        } => json!({
            "plugin": plugin,
            "function": function,
            "input": input.evaluate(context).map_err(|e| e.0)?,
        }),
        Call::Agent { agent, prompt } => json!({
            "agent": agent,
            "text": text_of(prompt.evaluate(context).map_err(|e| e.0)?),
        }),
        Call::Workflow { path, input } => json!({
            "workflow": path,
            "input": input.evaluate(context).map_err(|e| e.0)?,
        }),
    })
}

/// A value as text: a string as it is, anything else as JSON.
fn text_of(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Jinja's truth: false, null, 0, "" and empty lists and objects are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Items of a map scheduled and not finished.
fn running_items(tasks: &[Option<Uuid>], outputs: &[Option<Value>]) -> usize {
    tasks
        .iter()
        .zip(outputs)
        .filter(|(t, o)| t.is_some() && o.is_none())
        .count()
}

fn refused(step: &str, reason: &str) -> RunError {
    RunError::Refused {
        step: step.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeDelta;
    use proptest::prelude::*;

    use super::*;

    /// A definition read from `text` (sub-workflows from `subs`).
    fn definition(text: &str, subs: &[(&str, &str)]) -> Definition {
        let mut files: BTreeMap<String, String> = subs
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect();
        files.insert("main.toml".into(), text.into());
        Definition::from_sources(Sources {
            main: "main.toml".into(),
            files,
        })
        .expect("valid")
    }

    const FLOW: &str = r#"
name = "flow"
input = { type = "object", required = ["topic"] }
[output]
value = { summary = "{{ steps.draft.output }}", pick = "{{ steps.route.output.chose }}" }

[steps.search]
kind = "plugin"
plugin = "search"
function = "find"
input = { q = "{{ input.topic }}" }

[steps.read]
kind = "map"
over = "{{ steps.search.output }}"
concurrency = 2
each = { kind = "plugin", plugin = "web", function = "get", input = { url = "{{ item }}", n = "{{ index }}" } }

[steps.draft]
kind = "agent"
agent = "writer"
prompt = "{{ steps.read.output | join(', ') }}"

[steps.approve]
kind = "approval"
prompt = "ok? {{ steps.draft.output }}"
timeout = "30d"

[steps.route]
kind = "condition"
branches = [{ when = "{{ steps.approve.output.approved }}", then = "publish" }]
otherwise = "shelve"

[steps.publish]
kind = "plugin"
plugin = "blog"
function = "post"
input = { body = "{{ steps.draft.output }}" }

[steps.shelve]
kind = "timer"
duration = "10m"

[steps.after_publish]
kind = "timer"
duration = "1s"
after = ["publish"]
"#;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    /// What a task answers: a pure function of what it was asked.
    fn task_output(input: &Value) -> Value {
        if input.get("plugin") == Some(&json!("search")) {
            return json!(["a", "b", "c"]);
        }
        if let Some(prompt) = input.get("text") {
            return json!(format!("draft of {}", prompt.as_str().unwrap()));
        }
        json!({ "did": input })
    }

    /// Drives a run to its end: tasks complete in the order `pick` chooses,
    /// the approval is decided `approve` when asked, time jumps to the
    /// next timer; `crash` says after which steps of the drive the run is
    /// rebuilt from its events alone.
    struct Drive {
        events: Vec<RunEvent>,
        run: Run,
        now: DateTime<Utc>,
        next_task: u128,
        scheduled: BTreeSet<(String, Option<usize>)>,
    }

    impl Drive {
        fn new(def: &Definition, input: Value) -> Self {
            let started = Run::start(def, input, t0(), None).expect("input");
            let run = Run::replay(Uuid::nil(), [&started]).expect("replay");
            Drive {
                events: vec![started],
                run,
                now: t0(),
                next_task: 1,
                scheduled: BTreeSet::new(),
            }
        }

        fn record(&mut self, event: RunEvent) {
            self.run.apply(&event).expect("fits");
            self.events.push(event);
        }

        fn settle(&mut self) {
            let mut n = self.next_task;
            let decided = self.run.settle(self.now, &mut || {
                n += 1;
                Uuid::from_u128(n)
            });
            self.next_task = n;
            // Quiet: ended, or waiting for a task, a person or time.
            let waiting = self.run.steps.values().any(|s| {
                matches!(
                    s,
                    StepState::Scheduled { .. }
                        | StepState::Mapping { .. }
                        | StepState::Asking { .. }
                        | StepState::Waiting { .. }
                )
            });
            assert!(
                self.run.end.is_some() || waiting,
                "stuck: {:?}",
                self.run.steps
            );
            for event in decided {
                if let RunEvent::StepScheduled { step, item, .. } = &event {
                    assert!(
                        self.scheduled.insert((step.clone(), *item)),
                        "{step} {item:?} scheduled twice"
                    );
                }
                self.events.push(event);
            }
        }

        fn crash(&mut self) {
            let replayed = Run::replay(Uuid::nil(), &self.events).expect("replays");
            assert_eq!(
                replayed.steps, self.run.steps,
                "the log holds the run's state"
            );
            assert_eq!(replayed.end, self.run.end);
            self.run = replayed;
        }

        /// Runs to the end; `choices` picks among what can happen next.
        fn finish(&mut self, approve: bool, choices: &mut impl FnMut(usize) -> usize) -> RunEnd {
            for _ in 0..1_000 {
                self.settle();
                if let Some(end) = &self.run.end {
                    return end.clone();
                }
                let mut moves: Vec<RunEvent> = Vec::new();
                for (id, state) in &self.run.steps {
                    match state {
                        StepState::Scheduled { task } => {
                            let input = self.input_of(*task);
                            moves.push(RunEvent::StepCompleted {
                                step: id.clone(),
                                item: None,
                                output: task_output(&input),
                            });
                        }
                        StepState::Mapping { tasks, outputs, .. } => {
                            for (i, (t, o)) in tasks.iter().zip(outputs).enumerate() {
                                if let (Some(task), None) = (t, o) {
                                    moves.push(RunEvent::StepCompleted {
                                        step: id.clone(),
                                        item: Some(i),
                                        output: task_output(&self.input_of(*task)),
                                    });
                                }
                            }
                        }
                        StepState::Asking { .. } => moves.push(RunEvent::ApprovalDecided {
                            step: id.clone(),
                            approved: approve,
                            by: "ada".into(),
                            input: None,
                            at: self.now,
                        }),
                        _ => {}
                    }
                }
                // A move, time passing, or a crash.
                let choice = choices(moves.len() + 2);
                if choice < moves.len() {
                    let chosen = moves.swap_remove(choice);
                    self.record(chosen);
                } else if choice == moves.len() {
                    self.now += TimeDelta::minutes(11);
                } else {
                    self.crash();
                }
            }
            panic!("the run did not end: {:?}", self.run.steps);
        }

        fn input_of(&self, task: Uuid) -> Value {
            self.events
                .iter()
                .find_map(|e| match e {
                    RunEvent::StepScheduled { task: t, input, .. } if *t == task => {
                        Some(input.clone())
                    }
                    _ => None,
                })
                .expect("scheduled")
        }
    }

    fn first(_: usize) -> usize {
        0
    }

    #[test]
    fn a_run_goes_step_by_step_to_its_output() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        let end = drive.finish(true, &mut first);
        let RunEnd::Completed(output) = end else {
            panic!("{end:?}");
        };
        assert_eq!(output["pick"], json!("publish"));
        let summary = output["summary"].as_str().unwrap();
        assert!(
            summary.starts_with("draft of {'did': {'function': 'get'"),
            "{summary}"
        );
        assert!(
            summary.contains("'url': 'c'"),
            "each item's output, in order: {summary}"
        );
        assert_eq!(drive.run.steps["shelve"], StepState::Skipped);
        assert!(matches!(
            drive.run.steps["after_publish"],
            StepState::Completed { .. }
        ));
        let items: Vec<_> = drive
            .scheduled
            .iter()
            .filter(|(s, _)| s == "read")
            .collect();
        assert_eq!(items.len(), 3, "each item once");
    }

    #[test]
    fn a_rejection_takes_the_other_branch_and_skips_what_follows_the_first() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        let RunEnd::Completed(output) = drive.finish(false, &mut first) else {
            panic!("completed");
        };
        assert_eq!(output["pick"], json!("shelve"));
        assert_eq!(drive.run.steps["publish"], StepState::Skipped);
        assert_eq!(drive.run.steps["after_publish"], StepState::Skipped);
        let StepState::Completed { output } = &drive.run.steps["shelve"] else {
            panic!("the timer fired");
        };
        assert!(output["late_ms"].as_i64().unwrap() >= 0);
    }

    #[test]
    fn a_map_runs_no_more_items_at_once_than_its_concurrency() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.settle();
        drive.record(RunEvent::StepCompleted {
            step: "search".into(),
            item: None,
            output: json!(["a", "b", "c", "d", "e"]),
        });
        drive.settle();
        let StepState::Mapping { tasks, .. } = &drive.run.steps["read"] else {
            panic!("mapping");
        };
        assert_eq!(tasks.iter().flatten().count(), 2);
    }

    #[test]
    fn an_approval_nobody_decides_times_out_as_its_definition_says() {
        for (on_timeout, approved) in [
            ("reject", Some(false)),
            ("approve", Some(true)),
            ("fail", None),
        ] {
            let def = definition(
                &format!(
                    "name = \"a\"\n[steps.ask]\nkind = \"approval\"\nprompt = \"ok?\"\n\
                     timeout = \"1h\"\non_timeout = \"{on_timeout}\"\n"
                ),
                &[],
            );
            let mut drive = Drive::new(&def, json!({}));
            drive.settle();
            assert!(matches!(drive.run.steps["ask"], StepState::Asking { .. }));
            drive.now += TimeDelta::minutes(59);
            drive.settle();
            assert!(matches!(drive.run.steps["ask"], StepState::Asking { .. }));
            drive.now += TimeDelta::minutes(2);
            drive.settle();
            match (approved, drive.run.end.clone()) {
                (Some(approved), Some(RunEnd::Completed(output))) => {
                    assert_eq!(output["ask"]["approved"], json!(approved));
                    assert_eq!(output["ask"]["by"], json!("timeout"));
                }
                (None, Some(RunEnd::Failed(error))) => {
                    assert!(
                        error.starts_with("step `ask`: nobody decided by"),
                        "{error}"
                    );
                }
                other => panic!("{on_timeout}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_template_failing_at_run_time_fails_the_step_and_the_run() {
        let def = definition(
            "name = \"a\"\n[steps.x]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
             input = { v = \"{{ input.missing }}\" }\n",
            &[],
        );
        let mut drive = Drive::new(&def, json!({}));
        drive.settle();
        let Some(RunEnd::Failed(error)) = &drive.run.end else {
            panic!("{:?}", drive.run.end);
        };
        assert!(
            error.starts_with("step `x`: `{{ input.missing }}` is undefined"),
            "{error}"
        );
    }

    #[test]
    fn events_that_do_not_fit_are_refused() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.settle();
        let done = RunEvent::StepCompleted {
            step: "search".into(),
            item: None,
            output: json!([]),
        };
        drive.record(done.clone());
        assert!(matches!(
            drive.run.clone().apply(&done),
            Err(RunError::Refused { .. })
        ));
        let decided = RunEvent::ApprovalDecided {
            step: "approve".into(),
            approved: true,
            by: "ada".into(),
            input: None,
            at: t0(),
        };
        assert!(matches!(
            drive.run.clone().apply(&decided),
            Err(RunError::Refused { .. })
        ));
        let nowhere = RunEvent::StepSkipped {
            step: "nowhere".into(),
            because: String::new(),
        };
        assert_eq!(
            drive.run.clone().apply(&nowhere),
            Err(RunError::NoSuchStep("nowhere".into()))
        );
        assert_eq!(
            Run::replay(Uuid::nil(), &drive.events[1..]).err(),
            Some(RunError::NotStarted)
        );
        let bad_input = Run::start(&def, json!({}), t0(), None).unwrap_err();
        assert!(
            bad_input.to_string().contains("does not match"),
            "{bad_input}"
        );
    }

    #[test]
    fn events_survive_a_round_trip_through_json() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.finish(true, &mut first);
        let text = serde_json::to_string(&drive.events).unwrap();
        let back: Vec<RunEvent> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, drive.events);
        let again = Run::replay(Uuid::nil(), &back).unwrap();
        assert_eq!(again.end, drive.run.end);
    }

    proptest! {
        /// Whatever order tasks finish in, wherever the run is rebuilt from
        /// its events, and however time jumps, every step and item is
        /// scheduled once and the run ends as an uninterrupted one does.
        #[test]
        fn crashes_and_orders_do_not_change_the_run(
            choices in proptest::collection::vec(0usize..1000, 200),
            approve in any::<bool>(),
        ) {
            let def = definition(FLOW, &[]);
            let mut plain = Drive::new(&def, json!({"topic": "owls"}));
            let expected = plain.finish(approve, &mut first);
            let mut drive = Drive::new(&def, json!({"topic": "owls"}));
            let mut choices = choices.into_iter().cycle();
            let end = drive.finish(approve, &mut |n| choices.next().unwrap() % n);
            prop_assert_eq!(end, expected);
        }
    }

    #[test]
    fn a_step_sees_only_the_steps_it_runs_after() {
        // `{% set %}` hides the read of `a` from the definition's check:
        // the step runs without waiting for `a`, and its template finds no
        // `a`, instead of reading it or not depending on what ran first.
        let def = definition(
            "name = \"w\"\n[steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
             [steps.b]\nkind = \"agent\"\nagent = \"x\"\n\
             prompt = \"{% set steps = steps %}{{ steps.a.output }}\"\n",
            &[],
        );
        let mut drive = Drive::new(&def, json!({}));
        drive.settle();
        let Some(RunEnd::Failed(error)) = &drive.run.end else {
            panic!("{:?}", drive.run.steps);
        };
        assert!(error.starts_with("step `b`:"), "{error}");
    }

    #[test]
    fn a_step_skipped_for_one_reason_is_not_skipped_again_for_another() {
        // `t` runs after `a` (skipped by `c1`) and is `c2`'s branch not
        // taken: skipped once, whichever comes first.
        for c2_after in ["[\"c1\"]", "[\"work\"]"] {
            let def = definition(
                &format!(
                    "name = \"w\"\n\
                     [steps.c1]\nkind = \"condition\"\nbranches = [{{ when = \"{{{{ input.x }}}}\", then = \"a\" }}]\n\
                     [steps.a]\nkind = \"timer\"\nduration = \"1s\"\n\
                     [steps.work]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
                     [steps.c2]\nkind = \"condition\"\nafter = {c2_after}\n\
                     branches = [{{ when = \"{{{{ input.y }}}}\", then = \"t\" }}]\notherwise = \"u\"\n\
                     [steps.t]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"a\"]\n\
                     [steps.u]\nkind = \"timer\"\nduration = \"1s\"\n"
                ),
                &[],
            );
            let mut drive = Drive::new(&def, json!({"x": false, "y": false}));
            let end = drive.finish(true, &mut first);
            assert!(matches!(end, RunEnd::Completed(_)), "{c2_after}: {end:?}");
            assert_eq!(drive.run.steps["t"], StepState::Skipped);
            let skips = drive
                .events
                .iter()
                .filter(|e| matches!(e, RunEvent::StepSkipped { step, .. } if step == "t"))
                .count();
            assert_eq!(skips, 1, "{c2_after}");
        }
    }

    #[test]
    fn an_item_failing_ends_the_run_and_names_what_still_runs() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.settle();
        drive.record(RunEvent::StepCompleted {
            step: "search".into(),
            item: None,
            output: json!(["a", "b", "c"]),
        });
        drive.settle();
        drive.record(RunEvent::StepFailed {
            step: "read".into(),
            item: Some(0),
            error: "404".into(),
        });
        drive.settle();
        let Some(RunEnd::Failed(error)) = &drive.run.end else {
            panic!("{:?}", drive.run.end);
        };
        assert_eq!(error, "step `read`: item 0: 404");
        let late = RunEvent::StepCompleted {
            step: "read".into(),
            item: Some(1),
            output: json!("late"),
        };
        assert_eq!(drive.run.clone().apply(&late), Err(RunError::Ended));
    }

    #[test]
    fn outstanding_names_the_tasks_still_running() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.settle();
        drive.record(RunEvent::StepCompleted {
            step: "search".into(),
            item: None,
            output: json!(["a", "b", "c"]),
        });
        drive.settle();
        let running: Vec<_> = drive
            .run
            .outstanding()
            .into_iter()
            .map(|(step, item, _)| (step, item))
            .collect();
        assert_eq!(
            running,
            [("read".to_owned(), Some(0)), ("read".to_owned(), Some(1))]
        );
    }

    #[test]
    fn events_a_driver_must_not_record_are_refused() {
        let def = definition(FLOW, &[]);
        let mut drive = Drive::new(&def, json!({"topic": "owls"}));
        drive.settle();
        let at = t0();
        let refusals = [
            // Completing work that was never scheduled.
            RunEvent::StepCompleted {
                step: "draft".into(),
                item: None,
                output: json!(1),
            },
            // Scheduling a step whose dependencies have not completed.
            RunEvent::StepScheduled {
                step: "draft".into(),
                item: None,
                task: Uuid::nil(),
                input: json!({}),
            },
            // The wrong kind of event for the step.
            RunEvent::ApprovalRequested {
                step: "search".into(),
                prompt: String::new(),
                deadline: at,
            },
            RunEvent::TimerSet {
                step: "approve".into(),
                due: at,
            },
            RunEvent::MapExpanded {
                step: "draft".into(),
                items: vec![],
            },
            // Items out of range or never expanded.
            RunEvent::StepFailed {
                step: "read".into(),
                item: Some(99),
                error: String::new(),
            },
            // The run ending while steps have not.
            RunEvent::Completed { output: json!({}) },
        ];
        for event in refusals {
            let result = drive.run.clone().apply(&event);
            assert!(
                matches!(result, Err(RunError::Refused { .. })),
                "{event:?}: {result:?}"
            );
        }
        drive.record(RunEvent::StepCompleted {
            step: "search".into(),
            item: None,
            output: json!(["a", "b", "c"]),
        });
        drive.settle();
        let refusals = [
            // A third item while two run (concurrency 2).
            RunEvent::StepScheduled {
                step: "read".into(),
                item: Some(2),
                task: Uuid::nil(),
                input: json!({}),
            },
            // The map's output before its items'.
            RunEvent::StepCompleted {
                step: "read".into(),
                item: None,
                output: json!([]),
            },
            // An item completed that was not scheduled.
            RunEvent::StepCompleted {
                step: "read".into(),
                item: Some(2),
                output: json!(1),
            },
        ];
        for event in refusals {
            let result = drive.run.clone().apply(&event);
            assert!(
                matches!(result, Err(RunError::Refused { .. })),
                "{event:?}: {result:?}"
            );
        }
        let timer = definition(
            "name = \"t\"\n[steps.z]\nkind = \"timer\"\nduration = \"1h\"\n",
            &[],
        );
        let mut drive = Drive::new(&timer, json!({}));
        drive.settle();
        let early = RunEvent::TimerFired {
            step: "z".into(),
            at,
        };
        assert!(matches!(
            drive.run.clone().apply(&early),
            Err(RunError::Refused { .. })
        ));
    }

    #[test]
    fn a_run_of_another_engine_is_not_continued() {
        let def = definition(FLOW, &[]);
        let RunEvent::Started {
            sources, input, at, ..
        } = Run::start(&def, json!({"topic": "x"}), t0(), None).unwrap()
        else {
            unreachable!()
        };
        let newer = RunEvent::Started {
            engine: ENGINE + 1,
            name: "flow".into(),
            sources,
            input,
            at,
            origin: None,
        };
        assert_eq!(
            Run::replay(Uuid::nil(), [&newer]).err(),
            Some(RunError::Engine(ENGINE + 1))
        );
    }
}
