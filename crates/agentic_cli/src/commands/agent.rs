//! `lion agent spawn|list|send|stop`: LLM agents whose memory is the log.
//!
//! `send` runs the agent in this process: its memory is rebuilt from the
//! log, the answer streams to the terminal chunk by chunk as the provider
//! sends it, and the log records the prompt, the text (coalesced) and the
//! finished message. The provider comes from the agent's spawn flags, else
//! `LION_LLM_BASE_URL` / `LION_LLM_MODEL`, else the home's `config.toml`;
//! the API key only from `LION_LLM_API_KEY` (it is never stored). Tools are
//! plugin functions granted at spawn (`--tool PLUGIN.FUNCTION`), described
//! to the model by their input schemas and run in the plugin sandbox.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use agentic_core::llm::{AgentRunner, AgentSpec, AgentStatus, RunError, Tools};
use agentic_core::{Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, SystemEvent};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
use agentic_store::SqliteStore;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Ctx, plugin};
use crate::output;

const BASE_URL_ENV: &str = "LION_LLM_BASE_URL";
const MODEL_ENV: &str = "LION_LLM_MODEL";
const API_KEY_ENV: &str = "LION_LLM_API_KEY";

/// `lion agent spawn`.
pub async fn spawn(store: &SqliteStore, ctx: Ctx, name: &str, spec: AgentSpec) -> Result<()> {
    Tools::granted(&store.projected_state().await?, &spec.tools).map_err(|e| anyhow!(e))?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ':') {
        bail!("an agent name must be non-empty, without spaces or ':'");
    }
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
        return output::json(&json!({ "spawned": name }));
    }
    println!("spawned {name}");
    Ok(())
}

/// `lion agent list`.
pub async fn list(store: &SqliteStore, ctx: Ctx) -> Result<()> {
    let state = store.projected_state().await?;
    if ctx.json {
        let agents: Vec<_> = state.agents().collect();
        return output::json(&agents);
    }
    if state.agents().len() == 0 {
        println!("no agents (lion agent spawn NAME)");
        return Ok(());
    }
    let mut table = output::table(["name", "status", "model", "messages", "tokens", "budget"]);
    for a in state.agents() {
        table.add_row(vec![
            a.name.clone(),
            match a.status {
                AgentStatus::Active => "active".to_owned(),
                AgentStatus::Stopped => "stopped".to_owned(),
            },
            a.spec.model.clone().unwrap_or_else(|| "(default)".into()),
            a.messages.len().to_string(),
            (a.usage.prompt_tokens + a.usage.completion_tokens).to_string(),
            a.spec
                .budget_tokens
                .map_or_else(|| "-".into(), |b| b.to_string()),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// `lion agent stop`.
pub async fn stop(store: &SqliteStore, ctx: Ctx, name: &str) -> Result<()> {
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
    println!("stopped {name}");
    Ok(())
}

/// `lion agent send`: runs the agent here, streaming its answer to stdout
/// (and its tool calls to stderr) as it happens.
pub async fn send(
    home: &Path,
    store: Arc<SqliteStore>,
    ctx: Ctx,
    name: &str,
    text: &str,
) -> Result<()> {
    let state = store.projected_state().await?;
    let agent = state
        .agent(name)
        .ok_or_else(|| RunError::UnknownAgent(name.to_owned()))?;
    if agent.status == AgentStatus::Stopped {
        return Err(RunError::Stopped(name.to_owned()).into());
    }
    let settings = Settings::resolve(home, &agent.spec)?;
    let plugins = match agent.spec.tools.is_empty() {
        true => None,
        false => Some(plugin::manager(
            home,
            store.clone(),
            ctx,
            Durability::Durable,
        )?),
    };
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: settings.base_url,
        api_key: settings.api_key,
        max_retries: 2,
    })?;
    let (live, mut watch) = broadcast::channel::<LiveEvent>(1024);
    let printer = (!ctx.json).then(|| {
        tokio::spawn(async move {
            let mut stdout = std::io::stdout();
            let mut printed = false;
            while let Ok(event) = watch.recv().await {
                match event.event {
                    SystemEvent::LlmDelta { text, .. } => {
                        printed = true;
                        let _ = stdout.write_all(text.as_bytes());
                        let _ = stdout.flush();
                    }
                    SystemEvent::LlmFinished { message, .. } => {
                        for call in message.tool_calls {
                            eprintln!("[tool {} {}]", call.name, call.arguments);
                        }
                    }
                    SystemEvent::AgentToolResult { message, .. } => {
                        eprintln!("[tool result {}]", message.content);
                    }
                    _ => {}
                }
            }
            printed
        })
    });
    let dyn_store: Arc<dyn EventStore> = store;
    let runner = AgentRunner::new(
        dyn_store,
        Arc::new(provider),
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
    let result = runner.send(name, text, &settings.model, cancel).await;
    drop(runner);
    // End the streamed answer's line.
    if let Some(printer) = printer
        && printer.await.unwrap_or(false)
    {
        println!();
    }
    let outcome = result?;
    if ctx.json {
        output::json(&json!({
            "run_id": outcome.run_id,
            "content": outcome.message.content,
            "usage": outcome.usage,
        }))?;
    }
    Ok(())
}

/// Appends one event of this invocation and waits for its commit.
async fn record(store: &SqliteStore, ctx: Ctx, event: SystemEvent) -> Result<()> {
    store
        .append(
            vec![NewEvent::new(event, ctx.correlation_id)],
            ExpectedVersion::Any,
        )
        .await?;
    Ok(())
}

/// The provider an agent uses, resolved.
pub(crate) struct Settings {
    /// Base URL of the OpenAI-compatible server.
    pub(crate) base_url: String,
    /// The model.
    pub(crate) model: String,
    /// The API key, from the environment.
    pub(crate) api_key: Option<ApiKey>,
}

/// `[llm]` of the home's `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    llm: LlmSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmSection {
    base_url: Option<String>,
    model: Option<String>,
}

impl Settings {
    /// Spawn flags, then the environment, then the home's config file.
    pub(crate) fn resolve(home: &Path, spec: &AgentSpec) -> Result<Self> {
        let path = home.join("config.toml");
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<ConfigFile>(&text).map_err(|e| {
                anyhow!(
                    "{}: {}",
                    path.display(),
                    e.message().lines().next().unwrap_or("invalid TOML")
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(e) => return Err(e).with_context(|| path.display().to_string()),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let base_url = spec
            .base_url
            .clone()
            .or_else(|| env(BASE_URL_ENV))
            .or(file.llm.base_url)
            .ok_or_else(|| {
                anyhow!(
                    "no LLM provider is configured: set {BASE_URL_ENV} (for example \
                     http://localhost:11434/v1 for Ollama or http://localhost:8080/v1 for \
                     llama.cpp's server), put base_url under [llm] in {}, or spawn the agent \
                     with --base-url (the embedded local model is not built yet)",
                    path.display()
                )
            })?;
        let model = spec
            .model
            .clone()
            .or_else(|| env(MODEL_ENV))
            .or(file.llm.model)
            .ok_or_else(|| {
                anyhow!(
                    "no model is configured: set {MODEL_ENV}, put model under [llm] in {}, \
                     or spawn the agent with --model",
                    path.display()
                )
            })?;
        Ok(Self {
            base_url,
            model,
            api_key: env(API_KEY_ENV).map(ApiKey::new),
        })
    }
}
