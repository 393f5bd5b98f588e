//! The commands on workflow runs. A command records a run's events in the
//! log — a start, a person's decision, a cancellation, a fork — with the run
//! stream's expected version (read again and tried again when a kernel moved
//! the run meanwhile); the kernel that serves the home moves the run on from
//! there. `status` and `history` read the run's own stream.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use agentic_core::workflow::definition::Definition;
use agentic_core::workflow::log::{self, Stored, WorkflowError};
use agentic_core::workflow::run::{Run, RunEnd, RunEvent, RunOrigin, StepState};
use agentic_core::{EventStore, ExpectedVersion, SystemEvent, TaskFilter};
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::super::Ctx;
use crate::cli::Paging;
use crate::{lease, output};

/// How often a waiting command checks that a kernel still serves the home.
const KERNEL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// `--input` as JSON.
fn parse_input(input: Option<&str>) -> Result<Option<Value>> {
    input
        .map(|text| {
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))
        })
        .transpose()
}

/// A run id from the command line.
fn parse_run(id: &str) -> Result<Uuid> {
    id.parse()
        .with_context(|| format!("{id:?} is not a workflow run id (a UUID)"))
}

/// Who decides, as the log records it: the OS user.
fn os_user() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown user".to_owned(),
        })
}

/// Run `id` from its stream, with a message naming the run when it is not
/// there or cannot be read.
async fn load(store: &dyn EventStore, id: Uuid) -> Result<Stored> {
    match log::load(store, id).await {
        Ok(stored) => Ok(stored),
        Err(WorkflowError::NotFound(_)) => bail!("no workflow run {id} in this home"),
        Err(e) => Err(e).with_context(|| format!("workflow run {id} cannot be read")),
    }
}

/// `lion workflow run FILE`: checks the definition and the input, records
/// the run's start, and (with `wait`) follows it to its end.
pub async fn start(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    file: &Path,
    input: Option<&str>,
    wait: bool,
) -> Result<()> {
    let definition = Definition::load(file)?;
    let input = parse_input(input)?.unwrap_or_else(|| json!({}));
    let started = Run::start(&definition, input, Utc::now(), None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    refuse_wait_without_kernel(home, store.as_ref(), wait).await?;
    let id = Uuid::now_v7();
    let seq = record(
        store.as_ref(),
        ctx,
        id,
        vec![started],
        ExpectedVersion::NoStream,
    )
    .await?;
    announce(home, store, ctx, id, &definition.name, seq, wait).await
}

/// With `wait`, refuses before anything is recorded when no kernel serves
/// the home (a run started anyway would wait; the command could not).
async fn refuse_wait_without_kernel(home: &Path, store: &dyn EventStore, wait: bool) -> Result<()> {
    if wait && !lease::serving(home, store).await? {
        bail!(
            "no kernel serves this home, so --wait would wait forever; start one with `lion run` \
             (nothing was recorded)"
        );
    }
    Ok(())
}

/// Says where a new run is, and follows it with `wait`.
async fn announce(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    id: Uuid,
    name: &str,
    seq: u64,
    wait: bool,
) -> Result<()> {
    if wait {
        return follow(home, store, ctx, id, seq).await;
    }
    let serving = lease::serving(home, store.as_ref()).await?;
    if ctx.json {
        return output::json(&json!({"run": id, "name": name, "status": "running"}));
    }
    outln!("workflow run {id} ({name}) started");
    if !serving {
        outln!("no kernel serves this home: it starts when `lion run` does");
    }
    outln!("follow it with `lion workflow status {id}`");
    Ok(())
}

/// Appends `events` of run `id` as one batch against `expected`; the seq
/// of the first.
async fn record(
    store: &dyn EventStore,
    ctx: Ctx,
    id: Uuid,
    events: Vec<RunEvent>,
    expected: ExpectedVersion,
) -> Result<u64> {
    let batch = log::recorded(id, events, ctx.correlation_id);
    Ok(store.append(batch, expected).await?.first_seq)
}

/// Follows run `id` in the log from `seq` until it ends (steps reported on
/// stderr at a terminal), then reports how it ended.
async fn follow(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    id: Uuid,
    seq: u64,
) -> Result<()> {
    let progress = std::io::stderr().is_terminal() && !ctx.json;
    let mut log = store.clone().subscribe(seq);
    let mut kernel_check = tokio::time::interval(KERNEL_CHECK);
    loop {
        let record = tokio::select! {
            record = log.next() => record?,
            _ = kernel_check.tick() => {
                if !lease::serving(home, store.as_ref()).await? {
                    bail!(
                        "the kernel stopped before workflow run {id} ended; it resumes when \
                         `lion run` starts again (follow it with `lion workflow status {id}`)"
                    );
                }
                continue;
            }
        };
        let Ok(SystemEvent::WorkflowRecorded { run, event }) = record.decode() else {
            continue;
        };
        if run != id {
            continue;
        }
        if progress && let Some(line) = progress_line(&event) {
            errln!("{line}");
        }
        let end = match *event {
            RunEvent::Completed { output } => RunEnd::Completed(output),
            RunEvent::Failed { error } => RunEnd::Failed(error),
            RunEvent::Cancelled { by } => RunEnd::Cancelled(by),
            _ => continue,
        };
        return report_end(ctx, id, &end);
    }
}

/// A step's move in a line, for a person following a run.
fn progress_line(event: &RunEvent) -> Option<String> {
    Some(match event {
        RunEvent::StepScheduled {
            step,
            item: Some(i),
            ..
        } => format!("  {step}[{i}] started"),
        RunEvent::StepScheduled { step, .. } => format!("  {step} started"),
        RunEvent::StepCompleted {
            step,
            item: Some(i),
            ..
        } => format!("  {step}[{i}] completed"),
        RunEvent::StepCompleted { step, .. } => format!("  {step} completed"),
        RunEvent::StepFailed { step, error, .. } => format!("  {step} failed: {error}"),
        RunEvent::StepSkipped { step, because } => format!("  {step} skipped ({because})"),
        RunEvent::ApprovalRequested { step, .. } => {
            format!("  {step} waits for approval: `lion workflow approve RUN {step}` or `reject`")
        }
        RunEvent::ApprovalDecided {
            step, approved, by, ..
        } => format!(
            "  {step} {} by {by}",
            if *approved { "approved" } else { "rejected" }
        ),
        RunEvent::TimerSet { step, due } => format!("  {step} waits until {due}"),
        RunEvent::TimerFired { step, .. } => format!("  {step} fired"),
        _ => return None,
    })
}

/// Prints how run `id` ended; an error (non-zero exit) unless it completed.
fn report_end(ctx: Ctx, id: Uuid, end: &RunEnd) -> Result<()> {
    let (status, output, error) = match end {
        RunEnd::Completed(output) => ("completed", Some(output), None),
        RunEnd::Failed(error) => ("failed", None, Some(format!("failed: {error}"))),
        RunEnd::Cancelled(by) => ("cancelled", None, Some(format!("was cancelled by {by}"))),
    };
    if ctx.json {
        output::json(&json!({"run": id, "status": status, "output": output, "error": error}))?;
    } else if let Some(Value::String(text)) = output {
        out!("{text}");
        if !text.ends_with('\n') {
            outln!();
        }
    } else if let Some(output) = output {
        outln!("{}", serde_json::to_string_pretty(output)?);
    }
    match error {
        None => Ok(()),
        Some(error) => bail!("workflow run {id} {error}"),
    }
}

/// `lion workflow list`: the runs, in the order they started.
pub async fn list(store: &dyn EventStore, ctx: Ctx, paging: Paging) -> Result<()> {
    let listed = output::listed(paging, |after, limit| {
        store.workflows(TaskFilter::All, after, limit)
    })
    .await?;
    if ctx.json {
        return listed.json();
    }
    let mut table = output::table(["run", "workflow", "status", "started (UTC)", "from"]);
    for run in &listed.items {
        table.add_row([
            run.id.to_string(),
            run.name.clone(),
            run.status.as_str().to_owned(),
            run.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            origin(run.origin.as_ref()),
        ]);
    }
    outln!("{table}");
    outln!("{} run(s)", listed.items.len());
    listed.more("lion workflow list");
    Ok(())
}

/// Where a run came from, in a few words.
fn origin(origin: Option<&RunOrigin>) -> String {
    match origin {
        None => String::new(),
        Some(RunOrigin::Parent { run, step, item }) => match item {
            Some(i) => format!("step {step}[{i}] of {run}"),
            None => format!("step {step} of {run}"),
        },
        Some(RunOrigin::Fork { run, from }) => format!("fork of {run} from {from}"),
    }
}

/// The step an event of a run is about, if any.
fn step_of(event: &RunEvent) -> Option<&str> {
    match event {
        RunEvent::StepScheduled { step, .. }
        | RunEvent::MapExpanded { step, .. }
        | RunEvent::StepCompleted { step, .. }
        | RunEvent::StepFailed { step, .. }
        | RunEvent::StepReused { step, .. }
        | RunEvent::StepSkipped { step, .. }
        | RunEvent::ApprovalRequested { step, .. }
        | RunEvent::ApprovalDecided { step, .. }
        | RunEvent::TimerSet { step, .. }
        | RunEvent::TimerFired { step, .. } => Some(step),
        _ => None,
    }
}

/// When each step's first and last events were recorded.
fn step_times(
    events: &[(agentic_core::EventEnvelope, RunEvent)],
) -> std::collections::BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> {
    let mut times = std::collections::BTreeMap::new();
    for (record, event) in events {
        if let Some(step) = step_of(event) {
            times
                .entry(step.to_owned())
                .and_modify(|(_, last)| *last = record.recorded_at)
                .or_insert((record.recorded_at, record.recorded_at));
        }
    }
    times
}

/// A run's status word.
fn status_word(run: &Run) -> &'static str {
    match &run.end {
        None => "running",
        Some(RunEnd::Completed(_)) => "completed",
        Some(RunEnd::Failed(_)) => "failed",
        Some(RunEnd::Cancelled(_)) => "cancelled",
    }
}

/// `lion workflow status RUN`: the run's steps in the order they can run,
/// each with its state, timing and output.
pub async fn status(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_run(id)?;
    let events = log::history(store, id).await?;
    if events.is_empty() {
        bail!("no workflow run {id} in this home");
    }
    let run = Run::replay(id, events.iter().map(|(_, e)| e))
        .with_context(|| format!("workflow run {id} cannot be read"))?;
    let times = step_times(&events);
    let end = match &run.end {
        Some(RunEnd::Completed(output)) => json!({"output": output}),
        Some(RunEnd::Failed(error)) => json!({"error": error}),
        Some(RunEnd::Cancelled(by)) => json!({"cancelled_by": by}),
        None => Value::Null,
    };
    if ctx.json {
        let mut steps = log::step_states(&run);
        for (step, (first, last)) in &times {
            if let Some(state) = steps.get_mut(step) {
                state["first_event_at"] = json!(first);
                state["last_event_at"] = json!(last);
            }
        }
        return output::json(&json!({
            "run": id,
            "name": run.definition.name,
            "status": status_word(&run),
            "started_at": run.started_at,
            "origin": run.origin,
            "input": run.input,
            "steps": steps,
            "end": end,
        }));
    }
    outln!(
        "workflow run {id} ({}): {}, started {}{}",
        run.definition.name,
        status_word(&run),
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        match origin(run.origin.as_ref()) {
            o if o.is_empty() => String::new(),
            o => format!(", {o}"),
        }
    );
    let mut table = output::table(["step", "kind", "state", "after", "took", "output / error"]);
    for step_id in &run.definition.order {
        let step = &run.definition.steps[step_id];
        let state = &run.steps[step_id];
        let (word, detail) = match state {
            StepState::Pending => ("pending".to_owned(), String::new()),
            StepState::Scheduled { task } => ("running".to_owned(), format!("task {task}")),
            StepState::Mapping { items, outputs, .. } => (
                format!(
                    "running {}/{} items",
                    outputs.iter().flatten().count(),
                    items.len()
                ),
                String::new(),
            ),
            StepState::Asking { deadline } => (
                "waiting for approval".to_owned(),
                format!("until {}", deadline.format("%Y-%m-%d %H:%M:%S UTC")),
            ),
            StepState::Waiting { due } => (
                "waiting".to_owned(),
                format!("until {}", due.format("%Y-%m-%d %H:%M:%S UTC")),
            ),
            StepState::Completed { output } => ("completed".to_owned(), text(output)),
            StepState::Failed { error } => ("failed".to_owned(), error.clone()),
            StepState::Skipped => ("skipped".to_owned(), String::new()),
        };
        let took = match (times.get(step_id), state.is_final()) {
            (Some((first, last)), true) => took(*last - *first),
            _ => String::new(),
        };
        let after: Vec<&str> = step.after.iter().map(String::as_str).collect();
        table.add_row(vec![
            step_id.clone(),
            step.kind.name().to_owned(),
            word,
            after.join(", "),
            took,
            output::clip(&detail, 60),
        ]);
    }
    outln!("{table}");
    match &run.end {
        Some(RunEnd::Completed(output)) => outln!("output: {}", text(output)),
        Some(RunEnd::Failed(error)) => outln!("failed: {error}"),
        Some(RunEnd::Cancelled(by)) => outln!("cancelled by {by}"),
        None => {}
    }
    Ok(())
}

/// A value in a table cell: a string as it is, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A duration, readable.
fn took(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => super::span(std::time::Duration::from_secs((ms / 1000) as u64)),
    }
}

/// `lion workflow history RUN`: every event of the run, in order.
pub async fn history(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_run(id)?;
    let events = log::history(store, id).await?;
    if events.is_empty() {
        bail!("no workflow run {id} in this home");
    }
    let mut table = output::table(["seq", "recorded (UTC)", "event", "step", "detail"]);
    for (record, event) in &events {
        if ctx.json {
            output::json(&json!({
                "seq": record.seq,
                "recorded_at": record.recorded_at,
                "event": event,
            }))?;
            continue;
        }
        let mut body = serde_json::to_value(event)?;
        let kind = body["type"].as_str().unwrap_or("?").to_owned();
        if let Some(map) = body.as_object_mut() {
            map.remove("type");
            map.remove("step");
            map.remove("sources");
        }
        table.add_row([
            record.seq.to_string(),
            record
                .recorded_at
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string(),
            kind,
            step_of(event).unwrap_or_default().to_owned(),
            output::clip(&body.to_string(), 60),
        ]);
    }
    if !ctx.json {
        outln!("{table}");
        outln!("{} event(s)", events.len());
    }
    Ok(())
}

/// `lion workflow approve|reject RUN STEP`: records a person's decision on
/// an approval step that waits.
pub async fn decide(
    store: &dyn EventStore,
    ctx: Ctx,
    id: &str,
    step: &str,
    approved: bool,
    input: Option<&str>,
) -> Result<()> {
    let id = parse_run(id)?;
    let input = parse_input(input)?;
    let by = os_user();
    let seq =
        log::record_approval(store, ctx.correlation_id, id, step, (approved, &by, input)).await?;
    let word = if approved { "approved" } else { "rejected" };
    if ctx.json {
        return output::json(
            &json!({"run": id, "step": step, "decision": word, "by": by, "seq": seq}),
        );
    }
    outln!("step {step} of workflow run {id} {word} by {by}");
    Ok(())
}

/// `lion workflow cancel RUN`: ends the run, and with it every task it runs
/// and every sub-workflow run it started.
pub async fn cancel(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_run(id)?;
    let by = os_user();
    let stored = log::record_cancel(store, ctx.correlation_id, id, &by).await?;
    let stopped = stored.run.outstanding().len();
    if ctx.json {
        return output::json(
            &json!({"run": id, "status": "cancelled", "by": by, "stopped": stopped}),
        );
    }
    outln!("workflow run {id} cancelled ({stopped} running step task(s) cancelled with it)");
    Ok(())
}

/// `lion workflow fork RUN --from STEP`: a new run of the same definition
/// (as the old run recorded it) that reuses the outputs of every step that
/// is neither STEP nor downstream of it, and runs the rest.
pub async fn fork(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    id: &str,
    from: &str,
    input: Option<&str>,
    wait: bool,
) -> Result<()> {
    let old = load(store.as_ref(), parse_run(id)?).await?;
    let input = parse_input(input)?;
    let events = log::fork(&old.run, from, input, Utc::now())?;
    refuse_wait_without_kernel(home, store.as_ref(), wait).await?;
    let reused = events
        .iter()
        .filter(|e| matches!(e, RunEvent::StepReused { .. }))
        .count();
    let new = Uuid::now_v7();
    let seq = record(store.as_ref(), ctx, new, events, ExpectedVersion::NoStream).await?;
    if !ctx.json && !wait {
        outln!(
            "forked workflow run {} from step {from}: {reused} step output(s) reused",
            old.run.id
        );
    }
    let name = old.run.definition.name.clone();
    announce(home, store, ctx, new, &name, seq, wait).await
}
