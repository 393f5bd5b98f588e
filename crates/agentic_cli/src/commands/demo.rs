//! `lion demo`: a multi-agent scenario against the configured model
//! provider — two agents streaming at once, a plugin tool call (by the model
//! when it can call tools, else as a pipeline step the kernel runs on an
//! agent's output, and it says which), a token budget — then the event
//! summary and a replay check. Every answer comes from the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agentic_core::llm::{AgentRunner, AgentSpec, ProviderResolver, RunError, RunOutcome};
use agentic_core::plugin::CallOptions;
use agentic_core::{Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, SystemEvent};
use anyhow::{Result, bail};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Ctx, plugin};
use crate::providers::HomeProviders;

/// `lion demo`.
pub async fn run(
    home: &Path,
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    calculator: Option<PathBuf>,
) -> Result<()> {
    let resolved = HomeProviders::new(home).resolve(&AgentSpec::default())?;
    let start_seq = store.head().await?.seq;
    let manager = plugin::manager(home, store.clone(), ctx, Durability::Durable)?;
    if store.plugin("calculator").await?.is_none() {
        let path =
            calculator.unwrap_or_else(|| PathBuf::from("plugins/dist/calculator/plugin.toml"));
        if !path.exists() {
            bail!(
                "the demo needs the calculator plugin: run scripts/build-plugins, or give --calculator MANIFEST"
            );
        }
        let manifest = agentic_core::plugin::PluginManager::read_manifest(&path)?;
        manager.install(manifest, Default::default()).await?;
        outln!("installed the calculator plugin (nothing granted: it needs nothing)");
    }
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let name = |role: &str| format!("demo-{role}-{tag}");
    let spawn = |role: &str, system: &str, budget: u64, tools: Vec<String>| {
        let store = store.clone();
        let event = SystemEvent::AgentSpawned {
            name: name(role),
            spec: AgentSpec {
                model: None,
                base_url: None,
                system: system.to_owned(),
                budget_tokens: Some(budget),
                max_answer_bytes: None,
                tools,
            },
        };
        async move {
            store
                .append(
                    vec![NewEvent::new(event, ctx.correlation_id)],
                    ExpectedVersion::Any,
                )
                .await
        }
    };
    spawn("poet", "You write one short sentence.", 160, vec![]).await?;
    spawn("critic", "You answer in one short sentence.", 160, vec![]).await?;
    spawn(
        "calc",
        "Use the calculator tool for arithmetic.",
        128,
        vec!["calculator.eval".into()],
    )
    .await?;
    spawn("rambler", "You are verbose.", 8, vec![]).await?;
    outln!(
        "spawned 4 agents ({}) on {} with model {}",
        name("*"),
        resolved.location,
        resolved.model
    );

    let provider = resolved.provider;
    let (live, _) = broadcast::channel::<LiveEvent>(4096);
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let runner = AgentRunner::new(
        dyn_store,
        provider,
        Some(manager.clone()),
        live.clone(),
        ctx.correlation_id,
    );
    let model = resolved.model;
    let cancel = CancellationToken::new();

    outln!("\n== two agents streaming at once");
    let began = Instant::now();
    let timed = |agent: String, text: &'static str| {
        let (runner, model, cancel, live) =
            (runner.clone(), model.clone(), cancel.clone(), live.clone());
        async move {
            let mut watch = live.subscribe();
            let watcher = {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let (mut first, mut last, mut chunks) = (None, None, 0u32);
                    let mut streamed = String::new();
                    while let Ok(e) = watch.recv().await {
                        match e.event {
                            SystemEvent::LlmDelta { agent: a, text, .. } if a == agent => {
                                let t = began.elapsed().as_secs_f64();
                                first.get_or_insert(t);
                                last = Some(t);
                                chunks += 1;
                                streamed.push_str(&text);
                            }
                            SystemEvent::LlmFinished { agent: a, .. }
                            | SystemEvent::LlmStopped { agent: a, .. }
                                if a == agent =>
                            {
                                break;
                            }
                            _ => {}
                        }
                    }
                    let timing = (first.unwrap_or(0.0), last.unwrap_or(0.0), chunks);
                    (timing, streamed)
                })
            };
            let outcome = runner.send(&agent, text, &model, cancel).await;
            let (timing, streamed) = watcher.await.unwrap_or_default();
            (answer(outcome, streamed), timing)
        }
    };
    let (poet, critic) = tokio::join!(
        timed(name("poet"), "Write one sentence about a lion."),
        timed(
            name("critic"),
            "In one sentence, what makes a sentence good?"
        )
    );
    for (who, (text, (first, last, chunks))) in [("poet", poet), ("critic", critic)] {
        let text = text?;
        outln!(
            "{who} ({chunks} chunks streamed from {first:.2} s to {last:.2} s): {}",
            text.trim()
        );
    }

    outln!("\n== a plugin tool");
    let before = store.head().await?.seq;
    let (calc, _) = timed(name("calc"), "What is 17 * 23?").await;
    let calc = calc?;
    let called = store
        .read_from(before + 1, usize::MAX)
        .await?
        .iter()
        .any(|e| matches!(e.decode(), Ok(SystemEvent::AgentToolResult { .. })));
    outln!("calc: {}", calc.trim());
    if called {
        outln!("the model called calculator.eval itself (see agent_tool_result in the log)");
    } else {
        match expression(&calc) {
            Some(expr) => {
                let input = serde_json::json!({ "expression": expr }).to_string();
                let options = CallOptions {
                    correlation_id: Some(ctx.correlation_id),
                    causation_id: None,
                };
                let out = manager.call("calculator", "eval", &input, options).await;
                outln!(
                    "the model did not call the tool, so the kernel ran calculator.eval on the expression in its answer ({expr}): {}",
                    match out {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("error: {e}"),
                    }
                );
            }
            None => outln!(
                "the model neither called the tool nor wrote an arithmetic expression, so no tool step ran"
            ),
        }
    }

    outln!("\n== a token budget");
    match runner
        .send(
            &name("rambler"),
            "Count from 1 to 100, one number per line.",
            &model,
            cancel,
        )
        .await
    {
        Ok(outcome) => outln!(
            "rambler finished within its 8-token budget: {}",
            outcome.message.content.trim()
        ),
        Err(RunError::Halted { reason, .. }) => outln!("rambler was stopped: {reason}"),
        Err(e) => return Err(e.into()),
    }

    outln!("\n== the log");
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for e in store.read_from(start_seq + 1, usize::MAX).await? {
        if let Ok(event) = e.decode() {
            *kinds.entry(event.kind()).or_default() += 1;
        }
    }
    for (kind, n) in &kinds {
        outln!("{n:>5}  {kind}");
    }
    let (folded, events) = agentic_core::store::audit::replay(store.as_ref()).await?;
    let diff = folded.diff(&store.projected_state().await?);
    if !diff.is_empty() {
        bail!(crate::IntegrityFailure(format!(
            "replay differs from the projections: {}",
            diff.join("; ")
        )));
    }
    outln!("replay: {events} events folded afresh, hash chain verified; the projections match");
    Ok(())
}

/// An answer's text; for a run its budget stopped, what it streamed and
/// why it stopped; else the run's error.
fn answer(outcome: Result<RunOutcome, RunError>, streamed: String) -> Result<String> {
    match outcome {
        Ok(outcome) => Ok(outcome.message.content),
        Err(RunError::Halted { reason, .. }) => {
            Ok(format!("{} [stopped: {reason}]", streamed.trim()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The first run of arithmetic in `text` holding a digit and an operator
/// (an answer usually restates the question before anything else).
fn expression(text: &str) -> Option<String> {
    let is_math = |c: char| c.is_ascii_digit() || " +-*/().".contains(c);
    text.split(|c: char| !is_math(c))
        .map(|s| s.trim().trim_end_matches('.').trim_end())
        .find(|s| s.chars().any(|c| c.is_ascii_digit()) && s.contains(['+', '-', '*', '/']))
        .map(str::to_owned)
}
