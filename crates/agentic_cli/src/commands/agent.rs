//! `lion agent spawn|list|send|stop`: LLM agents whose memory is the log.
//!
//! `send` streams the answer to the terminal chunk by chunk as the provider
//! sends it; the log records the prompt, the text (coalesced) and the
//! finished message. With a kernel running (`lion run`) the kernel runs the
//! agent as a task and streams it on its live socket, so other processes
//! (`lion events tail --live`) watch it too; otherwise it runs in this
//! process, its memory rebuilt from the log. The provider is resolved by
//! [`providers`](crate::providers). Tools are plugin functions granted at
//! spawn (`--tool PLUGIN.FUNCTION`), described to the model by their input
//! schemas and run in the plugin sandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentic_core::llm::{
    AGENT_HANDLER, AgentRunner, AgentSpec, AgentStatus, ProviderResolver, RunError, Tools,
};
use agentic_core::{
    AgentView, Cursor, Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, SystemEvent,
    TaskOutcome, TaskSpec,
};
use agentic_llm::local::pull::SPEC_PREFIX;
use agentic_llm::local::{ModelSpec, parse_spec};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Ctx, plugin, task};
use crate::cli::Paging;
use crate::live::{self, LiveClient};
use crate::providers::HomeProviders;
use crate::{lease, output};

/// `lion agent spawn`.
pub async fn spawn(
    home: &Path,
    store: &dyn EventStore,
    ctx: Ctx,
    name: &str,
    spec: AgentSpec,
) -> Result<()> {
    let plugins = Tools::plugins(store, &spec.tools).await?;
    Tools::granted(&plugins, &spec.tools).map_err(|e| anyhow!(e))?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ':') {
        bail!("an agent name must be non-empty, without spaces or ':'");
    }
    spec.check_limits().map_err(|e| anyhow!(e))?;
    let mut spec = spec;
    // A model file is kept by absolute path: a kernel or a later send may
    // run in another directory.
    if let Some(model) = &spec.model
        && let Ok(ModelSpec::File(path)) = parse_spec(model)
        && path.is_relative()
    {
        spec.model = Some(format!(
            "{SPEC_PREFIX}{}",
            std::path::absolute(&path)?.display()
        ));
    }
    let runs_on = HomeProviders::new(home).describe(&spec)?;
    let limits = Limits::of(&spec);
    // The spec keeps only the limits given here: an agent spawned without
    // them gets the defaults of the lion that runs it, as agents recorded
    // before there were defaults do.
    record(
        store,
        ctx,
        SystemEvent::AgentSpawned {
            name: name.to_owned(),
            spec,
        },
    )
    .await?;
    if ctx.json {
        return output::json(&json!({
            "spawned": name,
            "runs_on": runs_on,
            "budget_tokens": limits.budget_tokens,
            "max_answer_bytes": limits.max_answer_bytes,
        }));
    }
    outln!(
        "spawned {name} (runs on {runs_on}; budget {}, answers up to {})",
        limits.budget(),
        limits.answer()
    );
    Ok(())
}

/// The limits an agent runs under, and whether each is the default.
struct Limits {
    budget_tokens: u64,
    budget_default: bool,
    max_answer_bytes: u64,
    answer_default: bool,
}

impl Limits {
    fn of(spec: &AgentSpec) -> Self {
        Self {
            budget_tokens: spec.token_budget(),
            budget_default: spec.budget_tokens.is_none(),
            max_answer_bytes: spec.answer_bytes(),
            answer_default: spec.max_answer_bytes.is_none(),
        }
    }

    /// `4096 tokens (default)`.
    fn budget(&self) -> String {
        let default = if self.budget_default {
            " (default)"
        } else {
            ""
        };
        format!("{} tokens{default}", self.budget_tokens)
    }

    /// `1048576 bytes (default)`.
    fn answer(&self) -> String {
        let default = if self.answer_default {
            " (default)"
        } else {
            ""
        };
        format!("{} bytes{default}", self.max_answer_bytes)
    }
}

/// The model to record for `--provider P [--model M]`: `local` makes it a
/// `local:` spec (the default local model without `--model`); `openai`
/// wants a server's model, not a local one.
pub fn model_for(
    provider: Option<&str>,
    model: Option<String>,
    base_url: &Option<String>,
) -> Result<Option<String>> {
    let local = model.as_deref().is_some_and(|m| m.starts_with(SPEC_PREFIX));
    match provider {
        Some("local") if base_url.is_some() => {
            bail!("--provider local runs the model in-process: it takes no --base-url")
        }
        Some("local") if local => Ok(model),
        Some("local") => Ok(Some(format!(
            "{SPEC_PREFIX}{}",
            model
                .as_deref()
                .unwrap_or(agentic_llm::local::DEFAULT_MODEL)
        ))),
        Some("openai") if local => {
            bail!(
                "--provider openai asks a server; {} is a local model",
                model.unwrap_or_default()
            )
        }
        _ => Ok(model),
    }
}

/// `lion agent list`.
pub async fn list(store: &dyn EventStore, ctx: Ctx, paging: Paging) -> Result<()> {
    let listed = output::listed(paging, |after, limit| store.agents(after, limit)).await?;
    if ctx.json {
        // Conversations are not listed (`lion agent show` pages one).
        return listed.json_with(|view| {
            let mut value = agent_json(view)?;
            if let Some(fields) = value.as_object_mut() {
                fields.remove("messages");
                fields.remove("next");
            }
            Ok(value)
        });
    }
    if listed.items.is_empty() && !listed.paged {
        outln!("no agents (lion agent spawn NAME)");
        return Ok(());
    }
    let mut table = output::table([
        "name",
        "status",
        "model",
        "messages",
        "tokens",
        "budget",
        "answer bound",
    ]);
    for view in &listed.items {
        let a = &view.record;
        table.add_row(vec![
            a.name.clone(),
            match a.status {
                AgentStatus::Active => "active".to_owned(),
                AgentStatus::Stopped => "stopped".to_owned(),
            },
            a.spec.model.clone().unwrap_or_else(|| "(default)".into()),
            view.message_count.to_string(),
            (a.usage.prompt_tokens + a.usage.completion_tokens).to_string(),
            Limits::of(&a.spec).budget(),
            Limits::of(&a.spec).answer(),
        ]);
    }
    outln!("{table}");
    listed.more("lion agent list");
    Ok(())
}

/// An agent as JSON: its record (with the page of messages it was read
/// with), the size of its whole conversation, where the next page of it
/// starts, and the limits it runs under (its spec keeps only those given at
/// spawn).
fn agent_json(view: &AgentView) -> Result<Value> {
    let limits = Limits::of(&view.record.spec);
    let mut value = serde_json::to_value(&view.record)?;
    value["message_count"] = json!(view.message_count);
    value["next"] = json!(view.next);
    value["budget_tokens"] = json!(limits.budget_tokens);
    value["max_answer_bytes"] = json!(limits.max_answer_bytes);
    Ok(value)
}

/// `lion agent show`: an agent and a page of its conversation.
pub async fn show(
    store: &dyn EventStore,
    ctx: Ctx,
    name: &str,
    after: Cursor,
    limit: usize,
) -> Result<()> {
    let view = store
        .agent(name, after, limit)
        .await?
        .ok_or_else(|| RunError::UnknownAgent(name.to_owned()))?;
    if ctx.json {
        return output::json(&agent_json(&view)?);
    }
    let a = &view.record;
    let limits = Limits::of(&a.spec);
    outln!("name:     {}", a.name);
    outln!(
        "status:   {}",
        match a.status {
            AgentStatus::Active => "active",
            AgentStatus::Stopped => "stopped",
        }
    );
    outln!(
        "model:    {}",
        a.spec.model.as_deref().unwrap_or("(default)")
    );
    outln!(
        "tokens:   {} (budget {}, answers up to {})",
        a.usage.prompt_tokens + a.usage.completion_tokens,
        limits.budget(),
        limits.answer()
    );
    let first = after.0.min(view.message_count);
    outln!(
        "messages: {} (shown: {} from #{})",
        view.message_count,
        a.messages.len(),
        first + 1
    );
    for (i, m) in a.messages.iter().enumerate() {
        outln!(
            "  #{} {}: {}",
            first + 1 + i as u64,
            serde_json::to_value(m.role)?.as_str().unwrap_or("?"),
            output::clip(&m.content, 200)
        );
    }
    if let Some(next) = view.next {
        outln!("more: lion agent show {name} --limit {limit} --after {next}");
    }
    Ok(())
}

/// `lion agent stop`.
pub async fn stop(store: &dyn EventStore, ctx: Ctx, name: &str) -> Result<()> {
    record(
        store,
        ctx,
        SystemEvent::AgentStopped {
            name: name.to_owned(),
        },
    )
    .await?;
    if ctx.json {
        return output::json(&json!({ "stopped": name }));
    }
    outln!("stopped {name}");
    Ok(())
}

/// `lion agent send`: streams the agent's answer to stdout (and its tool
/// calls to stderr) as it happens. With a kernel running on the home, the
/// kernel runs the agent (as a task) and the chunks come from its live
/// stream; otherwise the agent runs in this process.
pub async fn send(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    name: &str,
    text: &str,
) -> Result<()> {
    let agent = store
        .agent(name, Cursor::START, 0)
        .await?
        .ok_or_else(|| RunError::UnknownAgent(name.to_owned()))?
        .record;
    if agent.status == AgentStatus::Stopped {
        return Err(RunError::Stopped(name.to_owned()).into());
    }
    if lease::held(home)
        && let Some(stream) = live::connect(home).await
    {
        return send_through_kernel(home, store.as_ref(), ctx, name, text, stream).await;
    }
    let resolved = HomeProviders::new(home).resolve(&agent.spec)?;
    let plugins = match agent.spec.tools.is_empty() {
        true => None,
        false => Some(plugin::manager(
            home,
            store.clone(),
            ctx,
            Durability::Durable,
        )?),
    };
    let (live, mut watch) = broadcast::channel::<LiveEvent>(1024);
    let printer = (!ctx.json).then(|| {
        tokio::spawn(async move {
            let mut printer = Printer::default();
            loop {
                match watch.recv().await {
                    Ok(event) => printer.show(&event.event, None),
                    // What was missed comes whole at the end.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            printer
        })
    });
    let dyn_store: Arc<dyn EventStore> = store;
    let runner = AgentRunner::new(
        dyn_store,
        resolved.provider,
        plugins,
        live,
        ctx.correlation_id,
    );
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let result = runner.send(name, text, &resolved.model, cancel).await;
    drop(runner);
    let printer = match printer {
        Some(printer) => Some(printer.await?),
        None => None,
    };
    let outcome = result.inspect_err(|_| {
        if let Some(printer) = &printer {
            printer.finish();
        }
    })?;
    if let Some(mut printer) = printer {
        printer.complete(&outcome.message.content);
    }
    if ctx.json {
        output::json(&json!({
            "run_id": outcome.run_id,
            "content": outcome.message.content,
            "usage": outcome.usage,
        }))?;
    }
    Ok(())
}

/// How often a send through the kernel checks that the kernel still runs.
const KERNEL_CHECK: Duration = Duration::from_secs(1);

/// Has the running kernel run the agent: submits an `agent` task and
/// prints the run's chunks from the kernel's live stream (already
/// connected, so none is missed) until the task ends.
async fn send_through_kernel(
    home: &Path,
    store: &dyn EventStore,
    ctx: Ctx,
    name: &str,
    text: &str,
    mut stream: LiveClient,
) -> Result<()> {
    let id = Uuid::now_v7();
    let spec = TaskSpec::new(AGENT_HANDLER, json!({"agent": name, "text": text}));
    task::append_submission(store, ctx, id, spec).await?;
    let mut printer = Printer::default();
    let mut kernel_check = tokio::time::interval(KERNEL_CHECK);
    let ended = loop {
        tokio::select! {
            // Lines already read are shown before the store check below.
            biased;
            line = stream.next() => {
                let Some(line) = line else {
                    bail!("the kernel stopped during the run (see `lion task show {id}`)");
                };
                if let Some(missed) = line.missed {
                    errln!("warning: missed {missed} live event(s): this reader was too slow");
                }
                let Some(event) = line.event else { continue };
                if !ctx.json {
                    printer.show(&event, Some(id));
                }
                match event {
                    SystemEvent::TaskCompleted { task_id, output, .. } if task_id == id => {
                        break Ok(output);
                    }
                    SystemEvent::TaskFailed { task_id, error, is_final: true, .. } if task_id == id => {
                        break Err(error);
                    }
                    SystemEvent::TaskTimedOut { task_id, is_final: true, .. } if task_id == id => {
                        break Err("the run timed out".to_owned());
                    }
                    SystemEvent::TaskCancelled { task_id, reason } if task_id == id => {
                        break Err(format!("cancelled: {reason}"));
                    }
                    _ => {}
                }
            }
            _ = kernel_check.tick() => {
                // The end may have been among events this reader missed.
                if let Some(task) = store.task(id).await?
                    && let Some(outcome) = task::recorded_outcome(&task)
                {
                    break match outcome {
                        TaskOutcome::Completed(output) => Ok(output),
                        TaskOutcome::Failed(error) => Err(error),
                        TaskOutcome::TimedOut => Err("the run timed out".to_owned()),
                        TaskOutcome::Cancelled(reason) => Err(format!("cancelled: {reason}")),
                    };
                }
                if !lease::held(home) {
                    bail!("the kernel stopped during the run (see `lion task show {id}`)");
                }
            }
            _ = tokio::signal::ctrl_c() => {
                task::cancel_in_log(store, ctx, id, "interrupted (Ctrl-C)").await?;
                printer.finish();
                bail!("cancelled: the kernel stops the run");
            }
        }
    };
    let output = ended.map_err(|e| {
        printer.finish();
        anyhow!(e)
    })?;
    if !ctx.json {
        // The end may come from the store before the last chunks arrive.
        printer.complete(output["content"].as_str().unwrap_or_default());
    }
    if ctx.json {
        output::json(&output)?;
    }
    Ok(())
}

/// Prints a run as it streams: its text to stdout, its tool calls and
/// their results to stderr.
#[derive(Default)]
struct Printer {
    /// The answer's text printed so far (this round's: the answer is the
    /// last round's text).
    streamed: String,
    /// Whether an earlier round printed text (the line still needs ending).
    printed_before: bool,
}

impl Printer {
    /// Shows `event` if it belongs to the run `run` (any run if `None`).
    fn show(&mut self, event: &SystemEvent, run: Option<Uuid>) {
        let ours = |r: &Uuid| run.is_none_or(|run| run == *r);
        match event {
            SystemEvent::LlmDelta { text, run_id, .. } if ours(run_id) => {
                self.streamed.push_str(text);
                out!("{text}");
            }
            SystemEvent::LlmFinished {
                message, run_id, ..
            } if ours(run_id) => {
                for call in &message.tool_calls {
                    errln!("[tool {} {}]", call.name, call.arguments);
                }
                // The answer is the last round's text: a round that called
                // tools is done with.
                if !message.tool_calls.is_empty() {
                    self.printed_before |= !self.streamed.is_empty();
                    self.streamed.clear();
                }
            }
            SystemEvent::AgentToolResult {
                message, run_id, ..
            } if ours(run_id) => {
                errln!("[tool result {}]", message.content);
            }
            _ => {}
        }
    }

    /// Ends the streamed answer's line.
    fn finish(&self) {
        if self.printed_before || !self.streamed.is_empty() {
            outln!();
        }
    }

    /// Ends a completed run whose whole answer is `content`: prints what
    /// of it did not stream (chunks missed or not yet arrived), then ends
    /// the line.
    fn complete(&mut self, content: &str) {
        if let Some(rest) = content.strip_prefix(self.streamed.as_str()) {
            out!("{rest}");
        } else {
            outln!();
            errln!("warning: the streamed answer had gaps; the whole answer follows");
            out!("{content}");
        }
        self.streamed = content.to_owned();
        self.finish();
    }
}

/// Appends one event of this invocation and waits for its commit.
async fn record(store: &dyn EventStore, ctx: Ctx, event: SystemEvent) -> Result<()> {
    store
        .append(
            vec![NewEvent::new(event, ctx.correlation_id)],
            ExpectedVersion::Any,
        )
        .await?;
    Ok(())
}
