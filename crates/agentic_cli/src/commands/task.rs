//! `lion task submit|list|show|cancel` (and the seed's `submit-task`).
//!
//! A submitted task goes into the log, where a running kernel (`lion run`)
//! picks it up; `--wait` follows it there to its end. With `--wait` and no
//! kernel running, the task runs in this process on an orchestrator of its
//! own, so one-shot use needs no daemon.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use agentic_core::orchestrator::builtin_handlers;
use agentic_core::plugin::{PLUGIN_HANDLER, PluginError, PluginTask};
use agentic_core::{
    Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, Orchestrator, OrchestratorConfig,
    RetryPolicy, SystemEvent, TaskFilter, TaskOutcome, TaskRecord, TaskSpec, TaskStatus,
};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Ctx, plugin};
use crate::cli::{DurabilityArg, Paging, SubmitTask};
use crate::output;
use crate::{lease, live};

/// Submits a task and, with `--wait`, runs it here until it ends.
pub async fn submit(
    home: &Path,
    open: impl AsyncFnOnce() -> Result<Arc<dyn EventStore>>,
    ctx: Ctx,
    args: &SubmitTask,
) -> Result<()> {
    let input: Value = serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    let store = open().await?;
    let (handler, input) = match (&args.plugin, &args.function, &args.handler) {
        (Some(plugin), Some(function), _) => {
            let record = store
                .plugin(plugin)
                .await?
                .ok_or_else(|| PluginError::NotInstalled(plugin.clone()))?
                .record;
            let functions = &record.installed.manifest.functions;
            if !functions.contains_key(function) {
                let names: Vec<&str> = functions.keys().map(String::as_str).collect();
                bail!(
                    "plugin {plugin} has no function {function:?} (its functions are: {})",
                    names.join(", ")
                );
            }
            let input = json!({"plugin": plugin, "function": function, "input": input});
            (PLUGIN_HANDLER.to_owned(), input)
        }
        (_, _, Some(handler)) => {
            let handlers = builtin_handlers();
            if !handlers.contains_key(handler) {
                let mut names: Vec<&str> = handlers.keys().map(String::as_str).collect();
                names.sort_unstable();
                bail!(
                    "unknown handler {handler:?} (the handlers are: {}; plugins run with --plugin)",
                    names.join(", ")
                );
            }
            (handler.clone(), input)
        }
        _ => bail!("name a --handler, or a --plugin and its --function"),
    };
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
        ..TaskSpec::new(handler, input)
    };
    // The same key is one task: report the one already recorded.
    if let Some(key) = &spec.idempotency_key
        && let Some(task) = store.task_by_key(key).await?
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
    let kernel = lease::serving(home, store.as_ref()).await?;
    match (args.wait, kernel) {
        (_, _) if spec.durability == Durability::Ephemeral && !args.wait => bail!(
            "an ephemeral task is never logged, so no kernel can see it: add --wait to run it here"
        ),
        (false, _) => queue(store.as_ref(), ctx, spec, kernel).await,
        (true, true) if spec.durability != Durability::Ephemeral => {
            follow(home, &store, ctx, spec).await
        }
        // Run here, its attempt would claim no kernel's lease: a kernel
        // starting meanwhile would take it over and run it again.
        (true, false) if store.kernels().is_some() && spec.durability != Durability::Ephemeral => {
            bail!(
                "no kernel serves this shared store, and a task run here could be run again by \
                 one that starts: start one (lion run --store …), or submit without --wait"
            )
        }
        (true, _) => run_here(home, store, ctx, spec).await,
    }
}

/// Appends the task for a kernel to run; prints its id.
async fn queue(store: &dyn EventStore, ctx: Ctx, spec: TaskSpec, kernel: bool) -> Result<()> {
    let id = Uuid::now_v7();
    let seq = append_submission(store, ctx, id, spec).await?;
    if !kernel {
        errln!("note: no kernel is running on this home; the task runs when `lion run` starts");
    }
    if ctx.json {
        output::json(&json!({"task_id": id, "status": "submitted", "seq": seq}))
    } else {
        outln!("{id}");
        Ok(())
    }
}

/// Appends a task's submission; the sequence number it got.
pub(crate) async fn append_submission(
    store: &dyn EventStore,
    ctx: Ctx,
    id: Uuid,
    spec: TaskSpec,
) -> Result<u64> {
    let event = SystemEvent::TaskSubmitted { task_id: id, spec };
    let receipt = store
        .append(
            vec![NewEvent::new(event, ctx.correlation_id)],
            ExpectedVersion::Any,
        )
        .await?;
    tracing::info!(task = %id, seq = receipt.first_seq, "task submitted to the kernel");
    Ok(receipt.first_seq)
}

/// How often a waiting `task submit` checks that the kernel still runs.
const KERNEL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Submits the task to the running kernel and follows the log to its end;
/// progress comes from the kernel's live stream as it happens.
async fn follow(home: &Path, store: &Arc<dyn EventStore>, ctx: Ctx, spec: TaskSpec) -> Result<()> {
    let show_progress = std::io::stdout().is_terminal() && !ctx.json;
    let (id, outcome) = run_by_kernel(home, store, ctx, spec, show_progress).await?;
    report(ctx, id, &outcome)
}

/// Submits `spec` to the kernel running on `home` and waits for the task
/// to end (following the log from its submission), its id and how it
/// ended; with `show_progress`, each of its changes goes to stderr as the
/// kernel's live stream shows it. Ctrl-C records its cancellation, which
/// the kernel applies.
pub(crate) async fn run_by_kernel(
    home: &Path,
    store: &Arc<dyn EventStore>,
    ctx: Ctx,
    spec: TaskSpec,
    show_progress: bool,
) -> Result<(Uuid, TaskOutcome)> {
    let id = Uuid::now_v7();
    let mut live = match show_progress {
        true => live::connect(home).await,
        false => None,
    };
    let seq = append_submission(store.as_ref(), ctx, id, spec).await?;
    let mut log = store.clone().subscribe(seq);
    let mut kernel_check = tokio::time::interval(KERNEL_CHECK);
    loop {
        let event = tokio::select! {
            event = log.next() => event?,
            _ = kernel_check.tick() => {
                if !lease::serving(home, store.as_ref()).await? {
                    bail!(
                        "the kernel stopped before task {id} ended; it resumes when `lion run` \
                         starts again (follow it with `lion task show {id}`)"
                    );
                }
                continue;
            }
            line = async { live.as_mut()?.next().await }, if live.is_some() => {
                match line {
                    Some(line) => {
                        if let Some(event) = line.event
                            && event.task_change().is_some_and(|(t, _)| t == id)
                        {
                            let live = LiveEvent {
                                seq: line.seq,
                                event,
                                kernel: None,
                            };
                            errln!("{}", describe(&live));
                        }
                    }
                    None => live = None,
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                cancel_in_log(store.as_ref(), ctx, id, "interrupted (Ctrl-C)").await?;
                continue;
            }
        };
        let Ok(event) = event.decode() else { continue };
        let Some((task_id, _)) = event.task_change() else {
            continue;
        };
        if task_id != id {
            continue;
        }
        if show_progress {
            errln!(
                "{}",
                describe(&LiveEvent {
                    seq: None,
                    event: event.clone(),
                    kernel: None,
                })
            );
        }
        let outcome = match event {
            SystemEvent::TaskCompleted { output, .. } => TaskOutcome::Completed(output),
            SystemEvent::TaskFailed {
                error,
                is_final: true,
                ..
            } => TaskOutcome::Failed(error),
            SystemEvent::TaskTimedOut { is_final: true, .. } => TaskOutcome::TimedOut,
            SystemEvent::TaskCancelled { reason, .. } => TaskOutcome::Cancelled(reason),
            _ => continue,
        };
        return Ok((id, outcome));
    }
}

/// Runs the task in this process (no kernel is running, or it is ephemeral).
async fn run_here(home: &Path, store: Arc<dyn EventStore>, ctx: Ctx, spec: TaskSpec) -> Result<()> {
    let mut handlers = builtin_handlers();
    if spec.handler == PLUGIN_HANDLER {
        let manager = plugin::manager(home, store.clone(), ctx, Durability::Durable)?;
        handlers.insert(PLUGIN_HANDLER.into(), Arc::new(PluginTask::new(manager)));
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
                    errln!("{}", describe(&event));
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
        SystemEvent::TaskStarted {
            task_id,
            attempt,
            kernel,
        } => match kernel {
            Some(kernel) => format!(
                "task …{} attempt {attempt} started on kernel …{}",
                short(task_id),
                short(kernel)
            ),
            None => format!("task …{} attempt {attempt} started", short(task_id)),
        },
        SystemEvent::TaskProgress {
            task_id, progress, ..
        } => format!("task …{} progress {progress}", short(task_id)),
        SystemEvent::TaskCompleted { task_id, .. } => format!("task …{} completed", short(task_id)),
        SystemEvent::TaskFailed {
            task_id,
            attempt,
            error,
            is_final,
            ..
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
pub(crate) fn recorded_outcome(task: &TaskRecord) -> Option<TaskOutcome> {
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
        outln!("{}", serde_json::to_string_pretty(v)?);
    }
    match error {
        None => Ok(()),
        Some(e) => bail!("task {id} {}: {e}", status.replace('_', " ")),
    }
}

/// Lists this home's tasks (all, or the page `paging` asks for), in
/// submission order.
pub async fn list(store: &dyn EventStore, ctx: Ctx, paging: Paging) -> Result<()> {
    let listed = output::listed(paging, |after, limit| {
        store.tasks(TaskFilter::All, after, limit)
    })
    .await?;
    if ctx.json {
        return listed.json();
    }
    let mut t = output::table(["id", "handler", "status", "attempts", "result"]);
    for task in &listed.items {
        let result = match (&task.output, &task.error) {
            (Some(v), _) => v.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        t.add_row([
            task.id.to_string(),
            task.spec.handler.clone(),
            status_name(task.status).to_owned(),
            match task.interrupted {
                0 => task.attempts.to_string(),
                n => format!("{} ({n} interrupted)", task.attempts),
            },
            output::clip(&result, 40),
        ]);
    }
    outln!("{t}");
    outln!("{} task(s)", listed.items.len());
    listed.more("lion task list");
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

/// Records a task's cancellation; a kernel running it stops it (and the
/// tasks it started) when it sees the event.
pub(crate) async fn cancel_in_log(
    store: &dyn EventStore,
    ctx: Ctx,
    id: Uuid,
    reason: &str,
) -> Result<u64> {
    let event = SystemEvent::TaskCancelled {
        task_id: id,
        reason: reason.into(),
    };
    let receipt = store
        .append(
            vec![NewEvent::new(event, ctx.correlation_id)],
            ExpectedVersion::Any,
        )
        .await?;
    Ok(receipt.first_seq)
}

fn parse_id(id: &str) -> Result<Uuid> {
    id.parse()
        .with_context(|| format!("{id:?} is not a task id (a UUID)"))
}

/// Shows one task in full.
pub async fn show(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_id(id)?;
    let Some(task) = store.task(id).await? else {
        bail!("no task {id} in this home");
    };
    if ctx.json {
        return output::json(&task);
    }
    outln!("{}", serde_json::to_string_pretty(&task)?);
    Ok(())
}

/// Cancels a task that is not running anywhere yet.
pub async fn cancel(store: &dyn EventStore, ctx: Ctx, id: &str) -> Result<()> {
    let id = parse_id(id)?;
    let Some(task) = store.task(id).await? else {
        bail!("no task {id} in this home");
    };
    if task.status.is_final() {
        bail!("task {id} has already ended ({})", status_name(task.status));
    }
    let seq = cancel_in_log(store, ctx, id, "cancelled with `lion task cancel`").await?;
    if ctx.json {
        output::json(&json!({"task_id": id, "status": "cancelled", "seq": seq}))
    } else {
        outln!("task {id} cancelled");
        Ok(())
    }
}
