//! A run's events in the store: reading a run back from its stream, deciding
//! what it does next as one batch to append (its events, the tasks its work
//! steps become, the runs its sub-workflow steps start), and the
//! cancellations a run's end makes. The kernel's driver and the CLI share
//! these, so a run moves the same way whoever records its events.
//!
//! Every batch is appended with the run stream's expected version (checked
//! on the batch's first event, a run event): two writers deciding for one
//! run at once — two kernels, or a kernel and `lion workflow approve` — never
//! both succeed; the one refused reads the run again and decides afresh.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::definition::{Call, StepKind, Work};
use super::run::{Run, RunError, RunEvent, RunOrigin, StepState, idempotency_key, stream};
use crate::event::{EventEnvelope, NewEvent, SystemEvent};
use crate::llm::AGENT_HANDLER;
use crate::plugin::PLUGIN_HANDLER;
use crate::store::{EventStore, StoreError};
use crate::task::{RetryPolicy, TaskSpec, TaskStatus};

/// Events read per page of a run's stream.
const PAGE: usize = 1_000;

/// Why a run cannot be read or moved.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run's events do not fold (or the event does not fit it).
    #[error(transparent)]
    Run(#[from] RunError),
    /// No run has this id.
    #[error("no workflow run {0}")]
    NotFound(Uuid),
    /// What was asked does not fit the run as it is now (it has ended, the
    /// step does not wait for a decision).
    #[error("{0}")]
    Refused(String),
    /// Others kept moving the run while this tried to record a move.
    #[error("workflow run {0} kept changing while this was recorded; try again")]
    Busy(Uuid),
    /// A stored event of the run does not decode.
    #[error("workflow run {run}: event {seq} does not decode: {reason}")]
    Undecodable {
        /// The run.
        run: Uuid,
        /// The event's place in the log.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// A run as its stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The run, folded.
    pub run: Run,
    /// Its stream's version: what the next batch expects.
    pub version: u64,
}

/// The run event a record of run `id`'s stream holds.
fn run_event(id: Uuid, record: &EventEnvelope) -> Result<RunEvent, WorkflowError> {
    let undecodable = |reason| WorkflowError::Undecodable {
        run: id,
        seq: record.seq,
        reason,
    };
    match record.decode() {
        Ok(SystemEvent::WorkflowRecorded { event, .. }) => Ok(*event),
        Ok(other) => Err(undecodable(format!(
            "a {} event on the run's stream",
            other.kind()
        ))),
        Err(e) => Err(undecodable(e.to_string())),
    }
}

/// Run `id`'s `events` as events to append (on its stream), each carrying
/// `correlation`.
pub fn recorded(
    id: Uuid,
    events: impl IntoIterator<Item = RunEvent>,
    correlation: Uuid,
) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|event| {
            let event = SystemEvent::WorkflowRecorded {
                run: id,
                event: Box::new(event),
            };
            NewEvent::new(event, correlation)
        })
        .collect()
}

/// Every event of run `id`, in order, with its record.
pub async fn history(
    store: &dyn EventStore,
    id: Uuid,
) -> Result<Vec<(EventEnvelope, RunEvent)>, WorkflowError> {
    let stream = stream(id);
    let mut out = Vec::new();
    loop {
        let page = store
            .read_stream(&stream, out.len() as u64 + 1, PAGE)
            .await?;
        let full = page.len() == PAGE;
        for record in page {
            let event = run_event(id, &record)?;
            out.push((record, event));
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Run `id` folded from its stream, or [`WorkflowError::NotFound`].
pub async fn load(store: &dyn EventStore, id: Uuid) -> Result<Stored, WorkflowError> {
    let events = history(store, id).await?;
    if events.is_empty() {
        return Err(WorkflowError::NotFound(id));
    }
    let run = Run::replay(id, events.iter().map(|(_, e)| e))?;
    Ok(Stored {
        run,
        version: events.len() as u64,
    })
}

/// `stored` brought up to date with the events its stream has after it
/// (read from its version on, not from the start).
pub async fn catch_up(store: &dyn EventStore, stored: &Stored) -> Result<Stored, WorkflowError> {
    let id = stored.run.id;
    let stream = stream(id);
    let mut next = stored.clone();
    loop {
        let page = store.read_stream(&stream, next.version + 1, PAGE).await?;
        let full = page.len() == PAGE;
        for record in page {
            next.run.apply(&run_event(id, &record)?)?;
            next.version = record.stream_version;
        }
        if !full {
            return Ok(next);
        }
    }
}

/// What a run decided: the run after it, the run's events, and the first
/// event of each sub-workflow run it starts (by the child's id).
#[derive(Debug)]
pub struct Decision {
    /// The run with the events applied.
    pub next: Run,
    /// The run's new events, in order.
    pub events: Vec<RunEvent>,
    /// Sub-workflow runs started, with their first events.
    pub children: Vec<(Uuid, RunEvent)>,
}

impl Decision {
    /// The batch that records the decision: the run's events first (the
    /// batch's expected version is the run stream's), then the tasks its
    /// work steps become and the runs its sub-workflows start — and when
    /// the decision ends the run, their cancellation right after them, so
    /// nothing it started runs on.
    pub fn batch(&self, correlation: Uuid) -> Vec<NewEvent> {
        let run = self.next.id;
        let mut batch = recorded(run, self.events.iter().cloned(), correlation);
        for event in &self.events {
            if let RunEvent::StepScheduled {
                step,
                item,
                task,
                input,
            } = event
                && let Some(spec) = task_spec(&self.next, step, *item, input)
            {
                let submitted = SystemEvent::TaskSubmitted {
                    task_id: *task,
                    spec,
                };
                batch.push(NewEvent::new(submitted, correlation).caused_by(run));
            }
        }
        for (child, started) in &self.children {
            let event = SystemEvent::WorkflowRecorded {
                run: *child,
                event: Box::new(started.clone()),
            };
            batch.push(NewEvent::new(event, correlation).caused_by(run));
        }
        if self.next.end.is_some() {
            let reason = format!("workflow run {run} ended");
            let mut stops = Vec::new();
            for event in &batch {
                let stop = match &event.event {
                    SystemEvent::TaskSubmitted { task_id, .. } => SystemEvent::TaskCancelled {
                        task_id: *task_id,
                        reason: reason.clone(),
                    },
                    SystemEvent::WorkflowRecorded { run: child, .. } if *child != run => {
                        SystemEvent::WorkflowRecorded {
                            run: *child,
                            event: Box::new(RunEvent::Cancelled { by: reason.clone() }),
                        }
                    }
                    _ => continue,
                };
                stops.push(NewEvent::new(stop, correlation).caused_by(run));
            }
            batch.extend(stops);
        }
        batch
    }
}

/// Applies `pending` (outcomes reported to the run; those that no longer
/// fit are dropped) and settles the run: everything it does next, with the
/// sub-workflow runs it starts. A sub-workflow whose input its definition
/// refuses fails its step.
pub fn decide(run: &Run, pending: Vec<RunEvent>, now: DateTime<Utc>) -> Decision {
    let mut next = run.clone();
    let mut events = Vec::new();
    for event in pending {
        if next.apply(&event).is_ok() {
            events.push(event);
        }
    }
    let mut children = Vec::new();
    loop {
        let decided = next.settle(now, &mut Uuid::now_v7);
        if decided.is_empty() {
            break;
        }
        let mut failed = Vec::new();
        for event in &decided {
            let RunEvent::StepScheduled {
                step,
                item,
                task,
                input,
            } = event
            else {
                continue;
            };
            let Some(Call::Workflow { path, .. }) = work(&next, step).map(|w| &w.call) else {
                continue;
            };
            let origin = RunOrigin::Parent {
                run: next.id,
                step: step.clone(),
                item: *item,
            };
            let started = match next.definition.workflows.get(path) {
                Some(definition) => {
                    Run::start(definition, input["input"].clone(), now, Some(origin))
                        .map_err(|e| format!("sub-workflow {path}: {e}"))
                }
                None => Err(format!("sub-workflow {path} is not in the run's sources")),
            };
            match started {
                Ok(started) => children.push((*task, started)),
                Err(error) => failed.push(RunEvent::StepFailed {
                    step: step.clone(),
                    item: *item,
                    error,
                }),
            }
        }
        events.extend(decided);
        for event in failed {
            if next.apply(&event).is_ok() {
                events.push(event);
            }
        }
    }
    Decision {
        next,
        events,
        children,
    }
}

/// The work step (or a map's work) `step` of `run`.
fn work<'r>(run: &'r Run, step: &str) -> Option<&'r Work> {
    match &run.definition.steps.get(step)?.kind {
        StepKind::Work(work) => Some(work),
        StepKind::Map { each, .. } => Some(each),
        _ => None,
    }
}

/// Whether step `step` of `run` runs sub-workflows (its "tasks" are runs).
pub fn runs_workflows(run: &Run, step: &str) -> bool {
    matches!(
        work(run, step).map(|w| &w.call),
        Some(Call::Workflow { .. })
    )
}

/// The task that runs a plugin call or agent turn scheduled with `input`
/// (`None` for a sub-workflow, which is a run, not a task): its handler,
/// its timeout and attempts from the step, and the step's idempotency key.
fn task_spec(run: &Run, step: &str, item: Option<usize>, input: &Value) -> Option<TaskSpec> {
    let work = work(run, step)?;
    let handler = match work.call {
        Call::Plugin { .. } => PLUGIN_HANDLER,
        Call::Agent { .. } => AGENT_HANDLER,
        Call::Workflow { .. } => return None,
    };
    let mut spec = TaskSpec::new(handler, input.clone());
    spec.timeout_ms = work
        .timeout
        .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    spec.retry = RetryPolicy {
        max_retries: work.attempts.unwrap_or(1).saturating_sub(1),
        retry_interrupted: true,
        ..RetryPolicy::default()
    };
    spec.idempotency_key = Some(idempotency_key(run.id, step, item));
    Some(spec)
}

/// The task a log event ends and how, as a step sees it: its output, or
/// why it failed (`None` for any other event, a retried attempt's too).
pub fn task_end(event: &SystemEvent) -> Option<(Uuid, Result<Value, String>)> {
    Some(match event {
        SystemEvent::TaskCompleted {
            task_id, output, ..
        } => (*task_id, Ok(output.clone())),
        SystemEvent::TaskFailed {
            task_id,
            error,
            is_final: true,
            ..
        } => (*task_id, Err(error.clone())),
        SystemEvent::TaskTimedOut {
            task_id,
            is_final: true,
            ..
        } => (*task_id, Err("timed out".to_owned())),
        SystemEvent::TaskCancelled { task_id, reason } => {
            (*task_id, Err(format!("cancelled: {reason}")))
        }
        _ => return None,
    })
}

/// The step (and item) of `run` that task (or sub-workflow run) `task`
/// runs, while it is outstanding.
pub fn step_of(run: &Run, task: Uuid) -> Option<(String, Option<usize>)> {
    run.steps.iter().find_map(|(id, state)| match state {
        StepState::Scheduled { task: t } if *t == task => Some((id.clone(), None)),
        StepState::Mapping { tasks, outputs, .. } => tasks
            .iter()
            .zip(outputs)
            .position(|(t, o)| *t == Some(task) && o.is_none())
            .map(|i| (id.clone(), Some(i))),
        _ => None,
    })
}

/// How a step's task (or sub-workflow run) ended, as the run's event;
/// `None` while it has not.
async fn outcome(
    store: &dyn EventStore,
    run: &Run,
    step: &str,
    item: Option<usize>,
    task: Uuid,
) -> Result<Option<RunEvent>, WorkflowError> {
    let (done, error) = if runs_workflows(run, step) {
        match store.workflow(task).await? {
            Some(child) if child.status.is_final() => {
                let events = history(store, task).await?;
                match events.last().map(|(_, e)| e) {
                    Some(RunEvent::Completed { output }) => (Some(output.clone()), None),
                    Some(RunEvent::Failed { error }) => (None, Some(error.clone())),
                    Some(RunEvent::Cancelled { by }) => (None, Some(format!("cancelled by {by}"))),
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        }
    } else {
        match store.task(task).await? {
            Some(record) if record.status.is_final() => match record.status {
                TaskStatus::Completed => (Some(record.output.unwrap_or(Value::Null)), None),
                TaskStatus::TimedOut => (None, Some("timed out".to_owned())),
                TaskStatus::Cancelled => (None, Some("cancelled".to_owned())),
                _ => (
                    None,
                    Some(record.error.unwrap_or_else(|| "failed".to_owned())),
                ),
            },
            _ => return Ok(None),
        }
    };
    let step = step.to_owned();
    Ok(Some(match (done, error) {
        (Some(output), _) => RunEvent::StepCompleted { step, item, output },
        (None, error) => RunEvent::StepFailed {
            step,
            item,
            error: error.unwrap_or_default(),
        },
    }))
}

/// The outcomes of every outstanding step of `run` whose task (or
/// sub-workflow run) has ended: what a run read back after a crash or a
/// conflict has missed.
pub async fn missed(store: &dyn EventStore, run: &Run) -> Result<Vec<RunEvent>, WorkflowError> {
    let mut out = Vec::new();
    for (step, item, task) in run.outstanding() {
        if let Some(event) = outcome(store, run, &step, item, task).await? {
            out.push(event);
        }
    }
    Ok(out)
}

/// What ending `run` (already ended in `run.end`) cancels: each outstanding
/// task not ended yet, and each sub-workflow run still running with
/// everything it holds in turn — to append in the batch after the end (or
/// with it), so nothing of an ended run runs on, whichever kernel holds it.
pub async fn cancellations(
    store: &dyn EventStore,
    run: &Run,
    reason: &str,
    correlation: Uuid,
) -> Result<Vec<NewEvent>, WorkflowError> {
    let mut out = Vec::new();
    let mut todo = vec![(run.clone(), run.id)];
    // Each run at most once, whatever the records say.
    let mut seen = BTreeMap::new();
    while let Some((run, cause)) = todo.pop() {
        if seen.insert(run.id, ()).is_some() {
            continue;
        }
        for (step, _, task) in run.outstanding() {
            if runs_workflows(&run, &step) {
                let Ok(child) = load(store, task).await else {
                    continue;
                };
                if child.run.end.is_some() {
                    continue;
                }
                let cancelled = RunEvent::Cancelled {
                    by: reason.to_owned(),
                };
                let mut ended = child.run.clone();
                ended.apply(&cancelled)?;
                out.push(
                    NewEvent::new(
                        SystemEvent::WorkflowRecorded {
                            run: task,
                            event: Box::new(cancelled),
                        },
                        correlation,
                    )
                    .caused_by(cause),
                );
                todo.push((ended, task));
            } else if store
                .task(task)
                .await?
                .is_some_and(|t| !t.status.is_final())
            {
                let event = SystemEvent::TaskCancelled {
                    task_id: task,
                    reason: reason.to_owned(),
                };
                out.push(NewEvent::new(event, correlation).caused_by(cause));
            }
        }
    }
    Ok(out)
}

/// Each step's state as JSON, in an order the steps can run, with its kind
/// and the steps it runs after (what `lion workflow status --json`, the API
/// and the dashboard show).
pub fn step_states(run: &Run) -> Value {
    let steps: serde_json::Map<String, Value> = run
        .definition
        .order
        .iter()
        .map(|id| {
            let mut state = match &run.steps[id] {
                StepState::Pending => json!({"state": "pending"}),
                StepState::Scheduled { task } => json!({"state": "running", "task": task}),
                StepState::Mapping {
                    items,
                    tasks,
                    outputs,
                } => json!({
                    "state": "running",
                    "items": items.len(),
                    "started": tasks.iter().flatten().count(),
                    "done": outputs.iter().flatten().count(),
                }),
                StepState::Asking { deadline } => {
                    json!({"state": "waiting for approval", "deadline": deadline})
                }
                StepState::Waiting { due } => json!({"state": "waiting", "due": due}),
                StepState::Completed { output } => json!({"state": "completed", "output": output}),
                StepState::Failed { error } => json!({"state": "failed", "error": error}),
                StepState::Skipped => json!({"state": "skipped"}),
            };
            let step = &run.definition.steps[id];
            state["kind"] = json!(step.kind.name());
            state["after"] = json!(step.after);
            (id.clone(), state)
        })
        .collect();
    Value::Object(steps)
}

/// The first events of a fork of `old` from step `from`: the new run's
/// start (the same sources; `input`, or the old run's), then the recorded
/// output of every step that is neither `from` nor downstream of it
/// (skips kept as skips), so only `from` and what follows it run again.
pub fn fork(
    old: &Run,
    from: &str,
    input: Option<Value>,
    now: DateTime<Utc>,
) -> Result<Vec<RunEvent>, WorkflowError> {
    let definition = &old.definition;
    if !definition.steps.contains_key(from) {
        return Err(RunError::NoSuchStep(from.to_owned()).into());
    }
    let mut again = std::collections::BTreeSet::new();
    for id in &definition.order {
        if id == from || definition.steps[id].after.iter().any(|d| again.contains(d)) {
            again.insert(id.clone());
        }
    }
    let origin = RunOrigin::Fork {
        run: old.id,
        from: from.to_owned(),
    };
    let input = input.unwrap_or_else(|| old.input.clone());
    let mut events = vec![Run::start(definition, input, now, Some(origin))?];
    for id in definition.order.iter().filter(|id| !again.contains(*id)) {
        match &old.steps[id] {
            StepState::Completed { output } => events.push(RunEvent::StepReused {
                step: id.clone(),
                output: output.clone(),
                from: old.id,
            }),
            StepState::Skipped => events.push(RunEvent::StepSkipped {
                step: id.clone(),
                because: format!("skipped in run {}", old.id),
            }),
            _ => {}
        }
    }
    Ok(events)
}

/// Times a move is recorded again after a kernel moved the run between its
/// read and its append.
const MOVE_TRIES: usize = 20;

/// Appends a move of run `stored` — its `events`, then `more` — against
/// the run stream's version; the batch's first seq, or `None` when another
/// writer moved the run first (read it again and decide afresh).
async fn append_move(
    store: &dyn EventStore,
    correlation: Uuid,
    stored: &Stored,
    events: Vec<RunEvent>,
    more: Vec<NewEvent>,
) -> Result<Option<u64>, WorkflowError> {
    let mut batch = recorded(stored.run.id, events, correlation);
    batch.extend(more);
    match store
        .append(batch, crate::store::ExpectedVersion::Exact(stored.version))
        .await
    {
        Ok(receipt) => Ok(Some(receipt.first_seq)),
        Err(StoreError::WrongExpectedVersion { .. } | StoreError::Rejected(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records a person's decision on approval step `step` of run `id` (see
/// [`approval`]), reading the run again while others move it; the seq of
/// the decision.
pub async fn record_approval(
    store: &dyn EventStore,
    correlation: Uuid,
    id: Uuid,
    step: &str,
    (approved, by, input): (bool, &str, Option<Value>),
) -> Result<u64, WorkflowError> {
    for _ in 0..MOVE_TRIES {
        let stored = load(store, id).await?;
        let decided = approval(&stored, step, approved, by, input.clone())?;
        if let Some(seq) = append_move(store, correlation, &stored, vec![decided], vec![]).await? {
            return Ok(seq);
        }
    }
    Err(WorkflowError::Busy(id))
}

/// Cancels run `id` by `by` (see [`cancel`]), reading the run again while
/// others move it; the run as it was just before.
pub async fn record_cancel(
    store: &dyn EventStore,
    correlation: Uuid,
    id: Uuid,
    by: &str,
) -> Result<Stored, WorkflowError> {
    for _ in 0..MOVE_TRIES {
        let stored = load(store, id).await?;
        let (events, more) = cancel(store, &stored, by, correlation).await?;
        if append_move(store, correlation, &stored, events, more)
            .await?
            .is_some()
        {
            return Ok(stored);
        }
    }
    Err(WorkflowError::Busy(id))
}

/// A person's decision on approval step `step` of run `stored`, checked
/// against the run as it is.
pub fn approval(
    stored: &Stored,
    step: &str,
    approved: bool,
    by: &str,
    input: Option<Value>,
) -> Result<RunEvent, WorkflowError> {
    let id = stored.run.id;
    if let Some(end) = &stored.run.end {
        return Err(WorkflowError::Refused(format!(
            "workflow run {id} has ended ({})",
            end_word(end)
        )));
    }
    match stored.run.steps.get(step) {
        None => {
            return Err(WorkflowError::Refused(format!(
                "workflow run {id} has no step {step:?}"
            )));
        }
        Some(StepState::Asking { .. }) => {}
        Some(_) => {
            return Err(WorkflowError::Refused(format!(
                "step {step} of workflow run {id} is not waiting for approval"
            )));
        }
    }
    let decided = RunEvent::ApprovalDecided {
        step: step.to_owned(),
        approved,
        by: by.to_owned(),
        input,
        at: Utc::now(),
    };
    stored.run.clone().apply(&decided)?;
    Ok(decided)
}

/// What cancelling run `stored` records: its end by `by`, and (to append
/// with it) the cancellation of everything it still runs.
pub async fn cancel(
    store: &dyn EventStore,
    stored: &Stored,
    by: &str,
    correlation: Uuid,
) -> Result<(Vec<RunEvent>, Vec<NewEvent>), WorkflowError> {
    let id = stored.run.id;
    if let Some(end) = &stored.run.end {
        return Err(WorkflowError::Refused(format!(
            "workflow run {id} has already ended ({})",
            end_word(end)
        )));
    }
    let cancelled = RunEvent::Cancelled { by: by.to_owned() };
    let mut ended = stored.run.clone();
    ended.apply(&cancelled)?;
    let reason = format!("workflow run {id} was cancelled by {by}");
    let more = cancellations(store, &ended, &reason, correlation).await?;
    Ok((vec![cancelled], more))
}

/// How a run ended, in a word.
pub fn end_word(end: &super::run::RunEnd) -> &'static str {
    match end {
        super::run::RunEnd::Completed(_) => "completed",
        super::run::RunEnd::Failed(_) => "failed",
        super::run::RunEnd::Cancelled(_) => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::definition::{Definition, Sources};

    fn run_of(text: &str) -> (Run, RunEvent) {
        let sources = Sources {
            main: "flow.toml".into(),
            files: [
                ("flow.toml".to_owned(), text.to_owned()),
                (
                    "sub.toml".to_owned(),
                    "name = \"s\"\n[steps.t]\nkind = \"timer\"\nduration = \"1h\"\n".to_owned(),
                ),
            ]
            .into(),
        };
        let definition = Definition::from_sources(sources).expect("a definition");
        let started = Run::start(&definition, json!({}), Utc::now(), None).expect("input");
        (
            Run::replay(Uuid::now_v7(), [&started]).expect("replay"),
            started,
        )
    }

    #[test]
    fn a_decision_that_fails_the_run_cancels_the_tasks_and_runs_it_starts() {
        let (run, started) = run_of(
            "name = \"f\"\n\
             [steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
             [steps.c]\nkind = \"workflow\"\nworkflow = \"sub.toml\"\n\
             [steps.b]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
             input = { x = \"{{ input.missing }}\" }\n",
        );
        let decision = decide(&run, Vec::new(), Utc::now());
        assert!(matches!(
            decision.next.end,
            Some(super::super::run::RunEnd::Failed(_))
        ));
        let batch = decision.batch(Uuid::now_v7());
        let kinds: Vec<&str> = batch.iter().map(|e| e.event.kind()).collect();
        let submitted = kinds.iter().filter(|k| **k == "task_submitted").count();
        let cancelled = kinds.iter().filter(|k| **k == "task_cancelled").count();
        assert_eq!((submitted, cancelled), (1, 1), "{kinds:?}");
        // The sub-workflow run it started is cancelled in the same batch.
        let child_ends = batch
            .iter()
            .filter(|e| {
                matches!(&e.event, SystemEvent::WorkflowRecorded { run: r, event }
                    if *r != run.id && matches!(**event, RunEvent::Cancelled { .. }))
            })
            .count();
        assert_eq!(child_ends, decision.children.len());
        // Every event of the batch folds: the tasks end before they start.
        let mut state = crate::State::new();
        let start = SystemEvent::WorkflowRecorded {
            run: run.id,
            event: Box::new(started),
        };
        state.apply(&start).expect("the start");
        for event in &batch {
            state.apply(&event.event).expect("the batch folds");
        }
    }
}
