//! Which LLM provider an agent runs on: its spawn flags, then the
//! environment (`LION_LLM_BASE_URL`, `LION_LLM_MODEL`), then the home's
//! `config.toml` (`[llm] base_url`, `model`). The API key comes only from
//! `LION_LLM_API_KEY` and is never stored. A running kernel resolves with
//! its own environment, inline sends with the sender's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentic_core::llm::{AgentSpec, LlmError, ProviderResolver, ResolvedProvider};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

const BASE_URL_ENV: &str = "LION_LLM_BASE_URL";
const MODEL_ENV: &str = "LION_LLM_MODEL";
const API_KEY_ENV: &str = "LION_LLM_API_KEY";

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
}

impl ProviderResolver for HomeProviders {
    fn resolve(&self, spec: &AgentSpec) -> Result<ResolvedProvider, LlmError> {
        let settings = Settings::resolve(&self.home, spec)
            .map_err(|e| LlmError::NotConfigured(format!("{e:#}")))?;
        let provider = OpenAiProvider::new(OpenAiConfig {
            base_url: settings.base_url.clone(),
            api_key: settings.api_key,
            max_retries: 2,
        })?;
        Ok(ResolvedProvider {
            provider: Arc::new(provider),
            model: settings.model,
            location: settings.base_url,
        })
    }
}

/// The provider an agent uses, resolved.
struct Settings {
    /// Base URL of the OpenAI-compatible server.
    base_url: String,
    /// The model.
    model: String,
    /// The API key, from the environment.
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
