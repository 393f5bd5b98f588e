//! Which LLM provider an agent runs on. The model and the server come from
//! its spawn flags, then the environment (`LION_LLM_MODEL`,
//! `LION_LLM_BASE_URL`), then the home's `config.toml` (`[llm] model`,
//! `base_url`). A model `local:NAME` or `local:/path/file.gguf` runs
//! in-process on the embedded local model; with neither a server nor a
//! model configured, agents run on the catalog's default local model
//! (pulled on first use). The API key comes only from `LION_LLM_API_KEY`
//! and is never stored. A running kernel resolves with its own environment,
//! inline sends with the sender's.
//!
//! The key belongs to the server the operator configured beside it
//! (`LION_LLM_BASE_URL`, else `[llm] base_url`): it is sent only to that
//! server (compared as parsed URLs: scheme, host, port, path prefix). An
//! agent whose recorded `--base-url` names another server runs without the
//! key, with a warning saying why, so that whoever can append an
//! `agent_spawned` event cannot send the key elsewhere; a server that needs
//! a key then refuses with 401, while a keyless one (a local Ollama beside
//! a hosted default) still works. The timeouts of the requests to a server
//! come from `[llm]` too (`connect_timeout_secs`, `response_timeout_secs`,
//! `idle_timeout_secs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentic_core::llm::{AgentSpec, LlmError, ProviderResolver, ResolvedProvider};
use agentic_llm::local::pull::SPEC_PREFIX;
use agentic_llm::local::{
    DEFAULT_MODEL, LocalConfig, LocalError, LocalProvider, ModelSpec, parse_spec,
};
use agentic_llm::openai::same_server;
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::commands::model;

const BASE_URL_ENV: &str = "LION_LLM_BASE_URL";
const MODEL_ENV: &str = "LION_LLM_MODEL";
const API_KEY_ENV: &str = "LION_LLM_API_KEY";
/// The local model's sampling seed, for repeatable answers.
const SEED_ENV: &str = "LION_LLM_SEED";
/// The local model's temperature when a request names none.
const LOCAL_TEMPERATURE: f64 = 0.7;

/// Resolves agents' providers from a home's settings.
pub struct HomeProviders {
    home: PathBuf,
}

impl HomeProviders {
    /// Providers configured for `home`.
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_owned(),
        }
    }

    /// Where an agent spawned with `spec` would run, for people; an error
    /// if its settings cannot work (a `local:` model that cannot be found).
    pub fn describe(&self, spec: &AgentSpec) -> Result<String> {
        Ok(match Settings::resolve(&self.home, spec) {
            Ok(Settings::Server {
                config,
                model,
                withheld,
            }) => match withheld {
                Some(why) => format!("model {model} at {}; {why}", config.base_url),
                None => format!("model {model} at {}", config.base_url),
            },
            Ok(Settings::Local { model }) => {
                if let ModelSpec::File(path) = parse_spec(&model)?
                    && !path.is_file()
                {
                    bail!("no model file {}", path.display());
                }
                format!("the embedded local model {model}")
            }
            // A kernel may run it with settings this process lacks.
            Err(e) => format!("nothing here yet: {e:#}"),
        })
    }

    /// Where an agent spawned with `spec` runs when this process runs it:
    /// as [`describe`](Self::describe), but settings this process cannot
    /// resolve are an error (a server's kernel is this process).
    pub fn runs_on(&self, spec: &AgentSpec) -> Result<String> {
        Settings::resolve(&self.home, spec)?;
        self.describe(spec)
    }

    /// The provider and model for an agent spawned with `spec`.
    fn choose(&self, spec: &AgentSpec) -> Result<ResolvedProvider> {
        match Settings::resolve(&self.home, spec)? {
            Settings::Server {
                config,
                model,
                withheld,
            } => {
                if let Some(why) = withheld {
                    tracing::warn!("{why}");
                }
                let location = config.base_url.clone();
                let provider = OpenAiProvider::new(config)?;
                Ok(ResolvedProvider {
                    provider: Arc::new(provider),
                    model,
                    location,
                })
            }
            Settings::Local { model } => {
                let provider = local_provider(&model)?;
                Ok(ResolvedProvider {
                    location: provider.info().path.display().to_string(),
                    provider: Arc::new(provider),
                    model,
                })
            }
        }
    }
}

impl ProviderResolver for HomeProviders {
    fn resolve(&self, spec: &AgentSpec) -> Result<ResolvedProvider, LlmError> {
        self.choose(spec)
            .map_err(|e| match e.downcast_ref::<LocalError>() {
                Some(local) => LlmError::Local(local.to_string()),
                None => LlmError::NotConfigured(format!("{e:#}")),
            })
    }
}

/// The local models this process has loaded, by file: one model, and one
/// inference worker, however many agents use it.
static LOADED: Mutex<Option<HashMap<PathBuf, LocalProvider>>> = Mutex::new(None);

/// The local provider for `model` (`local:NAME` or `local:/path.gguf`),
/// pulling a catalog model the cache does not have yet (and saying so).
fn local_provider(model: &str) -> Result<LocalProvider> {
    let path = model::file(model)?;
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    let loaded = loaded.get_or_insert_with(HashMap::new);
    if let Some(provider) = loaded.get(&path) {
        return Ok(provider.clone());
    }
    let config = LocalConfig {
        // Sampling keeps a small model from looping on one phrase, as greedy
        // decoding tends to; a seed makes it repeatable.
        default_temperature: Some(LOCAL_TEMPERATURE),
        seed: match std::env::var(SEED_ENV) {
            Ok(seed) => Some(
                seed.parse()
                    .with_context(|| format!("{SEED_ENV} must be a whole number, got {seed:?}"))?,
            ),
            Err(_) => None,
        },
        ..LocalConfig::default()
    };
    let provider = LocalProvider::load(&path, config)?;
    loaded.insert(path, provider.clone());
    Ok(provider)
}

/// Where an agent's answers come from, resolved.
enum Settings {
    /// An OpenAI-compatible server.
    Server {
        /// Where, with the key if it belongs there, and the timeouts.
        config: OpenAiConfig,
        model: String,
        /// Why the configured key is not sent to this server, if it is not.
        withheld: Option<String>,
    },
    /// The embedded local model (`local:…`).
    Local { model: String },
}

/// The home's `config.toml`: `[llm]` here, `[store]` in `home`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    llm: LlmSection,
    /// Read by `home` (where the log is); accepted here.
    #[serde(default)]
    #[allow(dead_code)]
    store: crate::home::StoreSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmSection {
    base_url: Option<String>,
    model: Option<String>,
    /// [`OpenAiConfig::connect_timeout`], in seconds.
    connect_timeout_secs: Option<u64>,
    /// [`OpenAiConfig::response_timeout`], in seconds.
    response_timeout_secs: Option<u64>,
    /// [`OpenAiConfig::idle_timeout`], in seconds.
    idle_timeout_secs: Option<u64>,
}

impl LlmSection {
    /// A server's settings: `base_url` with `api_key` and these timeouts.
    fn server(
        &self,
        base_url: String,
        api_key: Option<ApiKey>,
        path: &Path,
    ) -> Result<OpenAiConfig> {
        let mut config = OpenAiConfig {
            api_key,
            ..OpenAiConfig::new(base_url)
        };
        for (key, value, field) in [
            (
                "connect_timeout_secs",
                self.connect_timeout_secs,
                &mut config.connect_timeout,
            ),
            (
                "response_timeout_secs",
                self.response_timeout_secs,
                &mut config.response_timeout,
            ),
            (
                "idle_timeout_secs",
                self.idle_timeout_secs,
                &mut config.idle_timeout,
            ),
        ] {
            match value {
                Some(0) => bail!("{}: [llm] {key} must be at least 1", path.display()),
                Some(secs) => *field = Duration::from_secs(secs),
                None => {}
            }
        }
        Ok(config)
    }
}

/// The API key for `base_url`: the configured key if `base_url` is the
/// server configured with it (`configured`), else none and why.
fn key_for(
    key: Option<ApiKey>,
    configured: Option<&str>,
    base_url: &str,
) -> (Option<ApiKey>, Option<String>) {
    match (key, configured) {
        (None, _) => (None, None),
        (Some(key), Some(server)) if same_server(server, base_url) => (Some(key), None),
        (Some(_), Some(server)) => (
            None,
            Some(format!(
                "{API_KEY_ENV} is not sent to {base_url}: it is only sent to {server}, the server \
                 configured with it"
            )),
        ),
        (Some(_), None) => (
            None,
            Some(format!(
                "{API_KEY_ENV} is not sent to {base_url}: it is only sent to the server configured \
                 with it ({BASE_URL_ENV} or base_url under [llm]), and none is"
            )),
        ),
    }
}

impl Settings {
    /// Spawn flags, then the environment, then the home's config file, then
    /// the default local model.
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
        // The server the operator configured, which the API key belongs to.
        let configured = env(BASE_URL_ENV).or(file.llm.base_url.clone());
        let base_url = spec.base_url.clone().or(configured.clone());
        let model = spec
            .model
            .clone()
            .or_else(|| env(MODEL_ENV))
            .or(file.llm.model.clone());
        match (base_url, model) {
            (_, Some(model)) if model.starts_with(SPEC_PREFIX) => Ok(Self::Local { model }),
            (Some(base_url), Some(model)) => {
                let (api_key, withheld) = key_for(
                    env(API_KEY_ENV).map(ApiKey::new),
                    configured.as_deref(),
                    &base_url,
                );
                Ok(Self::Server {
                    config: file.llm.server(base_url, api_key, &path)?,
                    model,
                    withheld,
                })
            }
            (Some(_), None) => bail!(
                "no model is configured for the LLM server: set {MODEL_ENV}, put model under \
                 [llm] in {}, or spawn the agent with --model",
                path.display()
            ),
            (None, Some(model)) => bail!(
                "model {model:?} needs an LLM server, and none is configured: set \
                 {BASE_URL_ENV} (for example http://localhost:11434/v1 for Ollama or \
                 http://localhost:8080/v1 for llama.cpp's server), put base_url under [llm] in \
                 {}, or use an embedded local model (--model local:{DEFAULT_MODEL})",
                path.display()
            ),
            (None, None) => Ok(Self::Local {
                model: format!("{SPEC_PREFIX}{DEFAULT_MODEL}"),
            }),
        }
    }
}
