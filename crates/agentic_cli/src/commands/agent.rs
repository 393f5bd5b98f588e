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

use std::collections::HashMap;

use agentic_core::llm::{
    AgentSpec, AgentStatus, ChatMessage, ChatRequest, LlmProvider, Relay, RelayOptions,
    RelayOutcome, Role, ToolCall, ToolSpec,
};
use agentic_core::plugin::{CallOptions, PluginManager};
use agentic_core::{
    Durability, EventStore, ExpectedVersion, LiveEvent, NewEvent, State, SystemEvent,
};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
use agentic_store::SqliteStore;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Ctx, plugin};
use crate::output;

const BASE_URL_ENV: &str = "LION_LLM_BASE_URL";
const MODEL_ENV: &str = "LION_LLM_MODEL";
const API_KEY_ENV: &str = "LION_LLM_API_KEY";

/// `lion agent spawn`.
pub async fn spawn(store: &SqliteStore, ctx: Ctx, name: &str, spec: AgentSpec) -> Result<()> {
    Tools::granted(&store.projected_state().await?, &spec.tools)?;
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

/// Rounds of tool calls one message may lead to.
const MAX_TOOL_ROUNDS: usize = 8;

/// `lion agent send`: runs the agent here, streaming its answer; tool calls
/// run the granted plugin functions and go back to the model.
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
        .ok_or_else(|| anyhow!("no agent {name} (lion agent spawn {name})"))?;
    if agent.status == AgentStatus::Stopped {
        bail!("agent {name} is stopped");
    }
    let settings = Settings::resolve(home, &agent.spec)?;
    let tools = Tools::granted(&state, &agent.spec.tools)?;
    let plugins = match tools.specs.is_empty() {
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
    let user = ChatMessage::new(Role::User, text);
    let mut messages = agent.prompt();
    messages.push(user.clone());
    let request = |messages: &[ChatMessage]| ChatRequest {
        model: settings.model.clone(),
        messages: messages.to_vec(),
        tools: tools.specs.clone(),
        temperature: None,
        max_tokens: None,
    };
    // Errors before the first chunk (unreachable, refused key, unknown
    // model) leave the log untouched.
    let mut stream = provider.stream(request(&messages)).await?;
    let run_id = Uuid::now_v7();
    record(
        &store,
        ctx,
        SystemEvent::AgentPrompted {
            name: name.to_owned(),
            run_id,
            message: user,
        },
    )
    .await?;
    let (live, mut watch) = broadcast::channel::<LiveEvent>(1024);
    let printer = (!ctx.json).then(|| {
        tokio::spawn(async move {
            let mut stdout = std::io::stdout();
            while let Ok(event) = watch.recv().await {
                if let SystemEvent::LlmDelta { text, .. } = event.event {
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                }
            }
        })
    });
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let relay = Relay::new(dyn_store, live, ctx.correlation_id);
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let mut used = 0u64;
    let mut rounds = 0;
    let result = loop {
        // The budget is the run's: what earlier rounds used counts.
        let options = RelayOptions {
            budget_tokens: agent.spec.budget_tokens.map(|b| b.saturating_sub(used)),
            ..RelayOptions::default()
        };
        let outcome = relay
            .relay(name, run_id, stream, options, cancel.clone())
            .await?;
        let (message, usage) = match outcome {
            RelayOutcome::Finished { message, usage, .. } => (message, usage),
            RelayOutcome::Stopped { reason, .. } => {
                break Err(anyhow!("agent {name} stopped: {reason}"));
            }
        };
        used += usage.completion_tokens;
        if message.tool_calls.is_empty() {
            break Ok((message, usage));
        }
        rounds += 1;
        if rounds > MAX_TOOL_ROUNDS {
            break Err(anyhow!(
                "agent {name} stopped: the model still called tools after {MAX_TOOL_ROUNDS} rounds"
            ));
        }
        let calls = message.tool_calls.clone();
        messages.push(message);
        for call in calls {
            let content = tools.run(plugins.as_ref(), &call, ctx, run_id).await;
            if !ctx.json {
                eprintln!("[tool {} {} -> {}]", call.name, call.arguments, content);
            }
            let answer = ChatMessage {
                role: Role::Tool,
                content,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id),
            };
            record(
                &store,
                ctx,
                SystemEvent::AgentToolResult {
                    name: name.to_owned(),
                    run_id,
                    message: answer.clone(),
                },
            )
            .await?;
            messages.push(answer);
        }
        stream = provider.stream(request(&messages)).await?;
    };
    drop(relay);
    if let Some(printer) = printer {
        let _ = printer.await;
        println!();
    }
    let (message, usage) = result?;
    if ctx.json {
        output::json(&json!({
            "run_id": run_id,
            "content": message.content,
            "usage": usage,
        }))?;
    }
    Ok(())
}

/// The plugin functions an agent may call, as the model sees them.
struct Tools {
    /// What the model is told.
    specs: Vec<ToolSpec>,
    /// The model's name of each tool → (plugin, function).
    by_name: HashMap<String, (String, String)>,
}

impl Tools {
    /// The tools `granted` names (`PLUGIN.FUNCTION`), each described by its
    /// plugin's manifest; an unknown plugin or function is an error.
    fn granted(state: &State, granted: &[String]) -> Result<Self> {
        let mut specs = Vec::new();
        let mut by_name = HashMap::new();
        for tool in granted {
            let (plugin, function) = tool
                .split_once('.')
                .ok_or_else(|| anyhow!("a tool is PLUGIN.FUNCTION, got {tool:?}"))?;
            let record = state
                .plugin(plugin)
                .ok_or_else(|| anyhow!("tool {tool}: no plugin {plugin} is installed"))?;
            let spec = record
                .installed
                .manifest
                .functions
                .get(function)
                .ok_or_else(|| {
                    anyhow!("tool {tool}: plugin {plugin} has no function {function:?}")
                })?;
            // Function names the protocol accepts: letters, digits, _ and -.
            let name = format!("{plugin}__{function}");
            specs.push(ToolSpec {
                name: name.clone(),
                description: spec.description.clone(),
                parameters: spec.input_schema.clone(),
            });
            by_name.insert(name, (plugin.to_owned(), function.to_owned()));
        }
        Ok(Self { specs, by_name })
    }

    /// Runs one tool call; what goes back to the model: the output JSON,
    /// or an error saying why (a tool not granted is refused unrun).
    async fn run(
        &self,
        plugins: Option<&PluginManager>,
        call: &ToolCall,
        ctx: Ctx,
        run_id: Uuid,
    ) -> String {
        let (Some((plugin, function)), Some(manager)) = (self.by_name.get(&call.name), plugins)
        else {
            return format!("error: the tool {} is not granted to this agent", call.name);
        };
        let options = CallOptions {
            correlation_id: Some(ctx.correlation_id),
            causation_id: Some(run_id),
        };
        match manager
            .call(plugin, function, &call.arguments, options)
            .await
        {
            Ok(output) => output.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }
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
struct Settings {
    base_url: String,
    model: String,
    api_key: Option<ApiKey>,
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
    fn resolve(home: &Path, spec: &AgentSpec) -> Result<Self> {
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
