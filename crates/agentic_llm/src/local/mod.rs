//! The embedded local model: a GGUF chat model of the llama architecture,
//! run in-process on the CPU with candle, behind the same
//! [`LlmProvider`] port as the remote providers.
//!
//! - [`pull`] — the catalog, the per-user model cache and `model pull`.
//! - [`model`] — loading a GGUF file (checks, weights, metadata).
//! - [`gguf`] — the bounded check of a GGUF header run before candle reads it.
//! - [`tokenizer`] — byte-level BPE from the file's own vocabulary.
//! - [`template`] — the file's own Jinja chat template.
//! - [`worker`] — the one inference thread that runs every generation.
//! - [`bench`] — tokens/s, time to first token and memory.
//!
//! [`LocalProvider`] ties them together: it renders the request's messages
//! with the chat template, tokenizes them, and hands the generation to its
//! worker, which streams text chunk by chunk as tokens are generated, then
//! the usage, then `Finished("stop" | "length")`. Dropping the stream
//! cancels the generation between two tokens.
//!
//! Tools: small local models cannot call tools, so `request.tools` is
//! ignored and no tool-call chunks are ever sent. The request's `model` is
//! ignored too: the provider runs the one model it was loaded with.

pub mod bench;
mod error;
pub mod gguf;
pub mod model;
pub mod pull;
pub mod template;
pub mod tokenizer;
pub mod worker;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;

use agentic_core::llm::{ChatMessage, ChatRequest, ChatStream, LlmError, LlmProvider};
use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use error::LocalError;
pub use model::{LoadOptions, LocalModel, ModelInfo};
pub use pull::{
    CATALOG, CatalogEntry, DEFAULT_MODEL, ModelCache, ModelSpec, PullProgress, PullStage,
    catalog_entry, parse_spec,
};
pub use tokenizer::{GgufTokenizer, StreamDecoder};
pub use worker::{FinishReason, GenerationHandle, GenerationOptions, GenerationOutcome};

use template::{ChatTemplate, PromptPart};
use worker::{Job, WorkerModel};

/// Most generations the inference worker takes at once, running or about
/// to start. They take turns token by token, so more at once only makes
/// each slower (eight at once already share two cores' 80 tokens/s), and
/// each holds a KV cache of its own: for SmolLM2-135M, 30 layers x K and V
/// x 192 floats, 45 KiB a token, up to 180 MiB at the 4096-token context,
/// so eight cost at most 1.4 GiB. Past it [`LocalProvider::generate`] is
/// refused ([`LocalError::Busy`]) and [`LlmProvider::stream`] waits for a
/// generation to end (dropping its future gives up the wait).
pub const MAX_GENERATIONS: usize = 8;

/// Settings of a [`LocalProvider`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalConfig {
    /// How to load the model.
    pub load: LoadOptions,
    /// Most tokens per answer when the request does not say.
    pub default_max_tokens: u32,
    /// The temperature when the request does not say; `None` is greedy.
    pub default_temperature: Option<f64>,
    /// Nucleus-sampling threshold used when the temperature is above zero.
    pub top_p: f64,
    /// The sampler's seed for every request; `None` draws a fresh seed per
    /// request. (Greedy decoding, temperature 0 or unset, needs none.)
    pub seed: Option<u64>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            // Long enough for a paragraph of chat, short enough that a small
            // model rambling on costs seconds, not minutes.
            default_max_tokens: 512,
            // Greedy: the same prompt gives the same answer.
            default_temperature: None,
            // The usual nucleus for chat models.
            top_p: 0.95,
            seed: None,
        }
    }
}

/// The embedded local model as an [`LlmProvider`]. Cheap to clone: clones
/// share the model and its one inference worker.
#[derive(Clone, Debug)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info: ModelInfo,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    config: LocalConfig,
    stop_ids: Vec<u32>,
    jobs: mpsc::Sender<Job>,
    /// One permit per generation the worker may take ([`MAX_GENERATIONS`]);
    /// a job holds its permit until it has ended.
    slots: Arc<Semaphore>,
}

impl LocalProvider {
    /// Loads the GGUF model at `path` and starts its inference worker.
    pub fn load(path: &Path, config: LocalConfig) -> Result<Self, LocalError> {
        let model = LocalModel::load(path, config.load)?;
        Self::from_model(model, config)
    }

    /// A provider for a loaded model; starts its inference worker.
    pub fn from_model(model: LocalModel, config: LocalConfig) -> Result<Self, LocalError> {
        let LocalModel {
            weights,
            tokenizer,
            template,
            stop_ids,
            info,
        } = model;
        // Every job in the channel holds a slot, so it never holds more.
        let (jobs, receiver) = mpsc::channel(MAX_GENERATIONS);
        worker::spawn(
            WorkerModel {
                weights,
                token_bytes: tokenizer.token_bytes().to_vec(),
                stop_ids: stop_ids.clone(),
                context_length: info.context_length,
            },
            receiver,
        )
        .map_err(|e| LocalError::Inference(format!("cannot start the inference worker: {e}")))?;
        tracing::info!(
            model = %info.path.display(),
            quantization = %info.quantization,
            requantized = info.requantized,
            compute_threads = compute_threads(),
            "local model loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                info,
                tokenizer,
                template,
                config,
                stop_ids,
                jobs,
                slots: Arc::new(Semaphore::new(MAX_GENERATIONS)),
            }),
        })
    }

    /// What model this is.
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.inner.tokenizer
    }

    /// The model's chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// The tokens that end the assistant's turn (EOS and the template's
    /// end-of-turn tokens).
    pub fn stop_ids(&self) -> &[u32] {
        &self.inner.stop_ids
    }

    /// The prompt's token ids for `messages`: rendered with the chat
    /// template (opening the assistant's turn), then tokenized — the
    /// template's markup with its control tokens, each message's content as
    /// plain text, so no message can forge a turn.
    pub fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        let tokenizer = &self.inner.tokenizer;
        let mut ids = Vec::new();
        for part in self.inner.template.render_parts(messages, true)? {
            ids.extend(match part {
                PromptPart::Markup(text) => tokenizer.encode(&text)?,
                PromptPart::Content(text) => tokenizer.encode_plain(&text)?,
            });
        }
        Ok(ids)
    }

    /// The generation options for `request` under this provider's settings.
    pub fn options_for(&self, request: &ChatRequest) -> GenerationOptions {
        let config = &self.inner.config;
        GenerationOptions {
            max_tokens: request.max_tokens.unwrap_or(config.default_max_tokens),
            temperature: request
                .temperature
                .map(f64::from)
                .or(config.default_temperature),
            top_p: Some(config.top_p),
            seed: config
                .seed
                .unwrap_or_else(|| RandomState::new().hash_one(std::time::SystemTime::now())),
            ignore_stop: false,
        }
    }

    /// Starts generating an answer to `messages`; refused with
    /// [`LocalError::Busy`] while [`MAX_GENERATIONS`] are under way.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        options: GenerationOptions,
    ) -> Result<(ChatStream, GenerationHandle), LocalError> {
        let prompt = self.prompt_ids(messages)?;
        self.generate_from_ids(prompt, options)
    }

    /// Starts generating a continuation of the token ids `prompt`; refused
    /// with [`LocalError::Busy`] while [`MAX_GENERATIONS`] are under way.
    pub fn generate_from_ids(
        &self,
        prompt: Vec<u32>,
        options: GenerationOptions,
    ) -> Result<(ChatStream, GenerationHandle), LocalError> {
        self.check_prompt(&prompt)?;
        let slot = self
            .inner
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| LocalError::Busy {
                limit: MAX_GENERATIONS,
            })?;
        self.start(prompt, options, slot)
    }

    /// A prompt the model can take: not empty, shorter than its context.
    fn check_prompt(&self, prompt: &[u32]) -> Result<(), LocalError> {
        let limit = self.inner.info.context_length;
        if prompt.is_empty() {
            return Err(LocalError::Template("the prompt is empty".into()));
        }
        if prompt.len() >= limit {
            return Err(LocalError::PromptTooLong {
                tokens: prompt.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Hands a generation that holds `slot` to the worker.
    fn start(
        &self,
        prompt: Vec<u32>,
        options: GenerationOptions,
        slot: OwnedSemaphorePermit,
    ) -> Result<(ChatStream, GenerationHandle), LocalError> {
        let (tx, stream) = ChatStream::channel();
        let (job, handle) = Job::new(prompt, options, tx, slot);
        self.inner.jobs.try_send(job).map_err(|e| match e {
            // Cannot happen while every queued job holds a slot; refuse
            // rather than wait if it ever does.
            mpsc::error::TrySendError::Full(_) => LocalError::Busy {
                limit: MAX_GENERATIONS,
            },
            mpsc::error::TrySendError::Closed(_) => LocalError::WorkerStopped,
        })?;
        Ok((stream, handle))
    }
}

/// How many compute threads candle uses (its pool, sized by
/// `RAYON_NUM_THREADS`, else the number of physical cores). Setting that
/// variable above the number of cores collapses throughput: keep it unset.
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

#[async_trait]
impl LlmProvider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    /// Waits for a slot while [`MAX_GENERATIONS`] are under way.
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let options = self.options_for(&request);
        let prompt = self.prompt_ids(&request.messages)?;
        self.check_prompt(&prompt)?;
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LocalError::WorkerStopped)?;
        let (stream, _handle) = self.start(prompt, options, slot)?;
        Ok(stream)
    }
}
