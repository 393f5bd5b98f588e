//! `lion task submit|list|show|cancel` (and the seed's `submit-task`).
//!
//! With `--wait`, a task runs in this process on an orchestrator of its own:
//! one-shot use needs no daemon. Handing tasks to a long-running kernel
//! (`lion run`) is not built yet, and the commands that would need it say so.

use std::io::IsTerminal;
use std::sync::Arc;

use agentic_core::orchestrator::builtin_handlers;
use agentic_core::{
    Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, Orchestrator, OrchestratorConfig,
    RetryPolicy, SystemEvent, TaskOutcome, TaskRecord, TaskSpec, TaskStatus,
};
use agentic_store::SqliteStore;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Ctx;
use crate::cli::{DurabilityArg, SubmitTask};
use crate::output;

/// Submits a task and, with `--wait`, runs it here until it ends.
pub async fn submit(
    open: impl FnOnce() -> Result<Arc<SqliteStore>>,
    ctx: Ctx,
    args: &SubmitTask,
) -> Result<()> {
    let input: Value = serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    let handlers = builtin_handlers();
    if !handlers.contains_key(&args.handler) {
        let mut names: Vec<&str> = handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        bail!(
            "unknown handler {:?} (the handlers are: {})",
            args.handler,
            names.join(", ")
        );
    }
    if !args.wait {
        bail!(
            "`task submit` without --wait hands the task to a running kernel (`lion run`), \
             which is not built yet; add --wait to run the task in this process"
        );
    }
    let spec = TaskSpec {
        timeout_ms: args.timeout,
        retry: RetryPolicy {
            max_retries: args.retries,
            ..RetryPolicy::default()
        },
        idempotency_key: args.idempotency_key.clone(),
        durability: match args.durability {
            DurabilityArg::Durable => Durability::Durable,
            DurabilityArg::Async => Durability::Async,
            DurabilityArg::Ephemeral => Durability::Ephemeral,
        },
        ..TaskSpec::new(args.handler.clone(), input)
    };
    let store = open()?;
    // The same key is one task: report the one already recorded.
    if let Some(key) = &spec.idempotency_key
        && let Some(task) = store.projected_state().await?.task_by_key(key).cloned()
    {
        tracing::info!(task = %task.id, "idempotency key already used");
        return match recorded_outcome(&task) {
            Some(outcome) => report(ctx, task.id, &outcome),
            None => bail!(
                "the idempotency key {key:?} names task {}, which is {} in another process",
                task.id,
                status_name(task.status)
            ),
        };
    }
    let store: Arc<dyn EventStore> = store;
    let orchestrator = Orchestrator::start(
        store,
        handlers,
        OrchestratorConfig::default(),
        ctx.correlation_id,
    );
    let mut live = orchestrator.subscribe();
    let handle = orchestrator.submit(spec).await?;
    let id = handle.id;
    tracing::info!(task = %id, "task submitted");
    let show_progress = std::io::stdout().is_terminal() && !ctx.json;
    let outcome = handle.outcome();
    tokio::pin!(outcome);
    let outcome = loop {
        tokio::select! {
            outcome = &mut outcome => break outcome?,
            event = live.recv() => {
                if show_progress && let Ok(event) = event {
                    eprintln!("{}", describe(&event));
                }
            }
            _ = tokio::signal::ctrl_c() => {
                orchestrator.cancel(id, "interrupted (Ctrl-C)").await?;
            }
        }
    };
    report(ctx, id, &outcome)
}

/// One line about a live event, for the progress display.
fn describe(e: &LiveEvent) -> String {
    let short = |id: &Uuid| id.to_string()[24..].to_owned();
    match &e.event {
        SystemEvent::TaskSubmitted { task_id, spec } => {
            format!("task …{} submitted ({})", short(task_id), spec.handler)
        }
        SystemEvent::TaskStarted { task_id, attempt } => {
            format!("task …{} attempt {attempt} started", short(task_id))
        }
        SystemEvent::TaskProgress {
            task_id, progress, ..
        } => format!("task …{} progress {progress}", short(task_id)),
        SystemEvent::TaskCompleted { task_id, .. } => format!("task …{} completed", short(task_id)),
        SystemEvent::TaskFailed {
            task_id,
            attempt,
            error,
            is_final,
        } => format!(
            "task …{} attempt {attempt} failed: {error}{}",
            short(task_id),
            if *is_final { "" } else { " (will retry)" }
        ),
        SystemEvent::TaskTimedOut {
            task_id,
            attempt,
            is_final,
        } => format!(
            "task …{} attempt {attempt} timed out{}",
            short(task_id),
            if *is_final { "" } else { " (will retry)" }
        ),
        SystemEvent::TaskCancelled { task_id, reason } => {
            format!("task …{} cancelled: {reason}", short(task_id))
        }
        other => other.kind().to_owned(),
    }
}

/// How a recorded task ended, if it has.
fn recorded_outcome(task: &TaskRecord) -> Option<TaskOutcome> {
    let error = || task.error.clone().unwrap_or_default();
    Some(match task.status {
        TaskStatus::Completed => TaskOutcome::Completed(task.output.clone().unwrap_or(Value::Null)),
        TaskStatus::Failed => TaskOutcome::Failed(error()),
        TaskStatus::TimedOut => TaskOutcome::TimedOut,
        TaskStatus::Cancelled => TaskOutcome::Cancelled(error()),
        TaskStatus::Pending | TaskStatus::Running => return None,
    })
}

/// Prints the outcome; anything but completion is an error (exit 1).
fn report(ctx: Ctx, id: Uuid, outcome: &TaskOutcome) -> Result<()> {
    let (status, output, error) = match outcome {
        TaskOutcome::Completed(v) => ("completed", Some(v), None),
        TaskOutcome::Failed(e) => ("failed", None, Some(e.clone())),
        TaskOutcome::TimedOut => ("timed_out", None, Some("timed out".to_owned())),
        TaskOutcome::Cancelled(r) => ("cancelled", None, Some(r.clone())),
    };
    if ctx.json {
        output::json(&json!({"task_id": id, "status": status, "output": output, "error": error}))?;
    } else if let Some(v) = output {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    match error {
        None => Ok(()),
        Some(e) => bail!("task {id} {}: {e}", status.replace('_', " ")),
    }
}

/// Lists every task of this home, in submission order.
pub async fn list(store: &SqliteStore, ctx: Ctx) -> Result<()> {
    let state = store.projected_state().await?;
    if ctx.json {
        let all: Vec<&TaskRecord> = state.tasks().collect();
        return output::json(&all);
    }
    let mut t = output::table(["id", "handler", "status", "attempts", "result"]);
    for task in state.tasks() {
        let result = match (&task.output, &task.error) {
            (Some(v), _) => v.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        t.add_row([
            task.id.to_string(),
            task.spec.handler.clone(),
            status_name(task.status).to_owned(),
            task.attempts.to_string(),
            output::clip(&result, 40),
        ]);
    }
    println!("{t}");
    println!("{} task(s)", state.tasks().len());
    Ok(())
}

fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Pending => "pending",
        TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::TimedOut => "timed out",
    }
}

fn parse_id(id: &str) -> Result<Uuid> {
    id.parse()
        .with_context(|| format!("{id:?} is not a task id (a UUID)"))
}

/// Shows one task in full.
pub async fn show(store: &SqliteStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_id(id)?;
    let state = store.projected_state().await?;
    let Some(task) = state.task(id) else {
        bail!("no task {id} in this home");
    };
    if ctx.json {
        return output::json(task);
    }
    println!("{}", serde_json::to_string_pretty(task)?);
    Ok(())
}

/// Cancels a task that is not running anywhere yet.
pub async fn cancel(store: &SqliteStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_id(id)?;
    let state = store.projected_state().await?;
    let Some(task) = state.task(id) else {
        bail!("no task {id} in this home");
    };
    match task.status {
        status if status.is_final() => {
            bail!("task {id} has already ended ({})", status_name(status))
        }
        TaskStatus::Running => bail!(
            "task {id} is running in another process; cancelling it there needs the kernel \
             (`lion run`), which is not built yet"
        ),
        _ => {}
    }
    let event = SystemEvent::TaskCancelled {
        task_id: id,
        reason: "cancelled with `lion task cancel`".into(),
    };
    let receipt = store
        .append(
            vec![NewEvent::new(event, ctx.correlation_id)],
            ExpectedVersion::Any,
        )
        .await?;
    if ctx.json {
        output::json(&json!({"task_id": id, "status": "cancelled", "seq": receipt.first_seq}))
    } else {
        println!("task {id} cancelled");
        Ok(())
    }
}
