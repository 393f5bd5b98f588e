//! Loading a GGUF chat model for the CPU: checks that the file is a GGUF
//! file of the llama architecture with a byte-level BPE tokenizer, builds
//! the tokenizer and the chat template from its metadata, works out the
//! tokens that end a turn, and loads the weights with candle's quantized
//! llama.
//!
//! With [`LoadOptions::requantize_q8`] (the default) weights stored as
//! Q4_0/Q4_1 are re-quantized to Q8_0 at load: candle's Q8_0 kernels are
//! faster on x86 (SmolLM2-135M Q4_1: about 79 tokens/s instead of 60 on two
//! cores) and greedy decoding still matches llama.cpp token for token. It
//! costs about 50% more memory for those weights.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};

use super::error::candle_message;
use super::template::ChatTemplate;
use super::tokenizer::{GgufTokenizer, metadata_str};
use super::{LocalError, gguf};

/// The architecture this provider runs.
const ARCHITECTURE: &str = "llama";

/// How to load a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Re-quantize Q4_0/Q4_1 weights to Q8_0 (faster on the CPU).
    pub requantize_q8: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            requantize_q8: true,
        }
    }
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// `general.architecture` (always `llama`).
    pub architecture: String,
    /// Tokens of context the model runs with (its own limit, capped by
    /// the inference code's).
    pub context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The weights' quantization types in the file, with tensor counts
    /// (`Q4_1 x210`).
    pub quantization: String,
    /// Whether Q4 weights were re-quantized to Q8_0 at load.
    pub requantized: bool,
    /// Parameters (weights) in the model.
    pub parameters: u64,
}

/// A model ready to run: weights (without any KV cache), tokenizer, chat
/// template and stop tokens.
pub struct LocalModel {
    /// The weights; each generation runs on a clone of its own, which
    /// shares the tensors and has its own KV cache.
    pub(crate) weights: ModelWeights,
    pub(crate) tokenizer: GgufTokenizer,
    pub(crate) template: ChatTemplate,
    pub(crate) stop_ids: Vec<u32>,
    pub(crate) info: ModelInfo,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("info", &self.info)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl LocalModel {
    /// Loads the model at `path`. Errors are one line each: a missing file,
    /// a file that is not GGUF, an unsupported architecture, tokenizer or
    /// quantization. The model is run once on a throwaway copy before this
    /// returns, so the first request is as fast as the rest.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self, LocalError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::MissingFile {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(LocalError::io("cannot open", path, e)),
        };
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(LocalError::NotGguf {
                path: path.to_owned(),
                reason: "it is a directory".into(),
            });
        }
        let mut reader = BufReader::new(file);
        let Header {
            content,
            tokenizer,
            template,
            stop_ids,
            info,
        } = Header::read(&mut reader, path)?;

        let device = Device::Cpu;
        let (weights, requantized) = if options.requantize_q8 {
            load_requantized(content, &mut reader, &device)?
        } else {
            let weights = ModelWeights::from_gguf(content, &mut reader, &device)
                .map_err(|e| LocalError::Weights(candle_message(&e)))?;
            (weights, false)
        };
        warm_up(&weights, tokenizer.eos_id().unwrap_or(0))?;
        Ok(Self {
            weights,
            tokenizer,
            template,
            stop_ids,
            info: ModelInfo {
                requantized,
                ..info
            },
        })
    }

    /// What the model is.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Its chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokens that end the assistant's turn.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
}

/// What a GGUF file's header says, read and checked: everything a model
/// is but its weights.
struct Header {
    content: Content,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    info: ModelInfo,
}

impl Header {
    /// Reads the header and metadata of the GGUF file `reader` holds (from
    /// its start), after the bounded check of [`gguf::check`]: the
    /// architecture, the tokenizer, the chat template, the stop tokens and
    /// what the model is. `path` names the file in errors.
    fn read<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<Self, LocalError> {
        let content = gguf::read(reader, path)?;
        let architecture = metadata_str(&content, "general.architecture")?.to_owned();
        if architecture != ARCHITECTURE {
            // Escaped: the file's text, in a one-line refusal.
            return Err(LocalError::UnsupportedArchitecture(
                architecture.escape_debug().to_string(),
            ));
        }
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let source = metadata_str(&content, "tokenizer.chat_template")?;
        let text_of = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token(id))
                .unwrap_or_default()
                .to_owned()
        };
        let template = ChatTemplate::new(
            source,
            text_of(tokenizer.bos_id()),
            text_of(tokenizer.eos_id()),
        )?;
        let stop_ids = stop_ids(&content, &tokenizer, source);

        let model_context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize);
        let info = ModelInfo {
            path: path.to_owned(),
            name: content
                .metadata
                .get("general.name")
                .and_then(|v| v.to_string().ok())
                .cloned(),
            architecture,
            context_length: model_context.min(MAX_SEQ_LEN),
            vocab_size: tokenizer.vocab_size(),
            quantization: quantization_summary(&content),
            requantized: false,
            parameters: content
                .tensor_infos
                .values()
                .map(|t| t.shape.elem_count() as u64)
                .sum(),
        };
        Ok(Self {
            content,
            tokenizer,
            template,
            stop_ids,
            info,
        })
    }
}

/// Reads what the GGUF model in `reader` is without loading its weights:
/// every check [`LocalModel::load`] makes of the header and metadata (the
/// bounded check of [`gguf::check`], candle's reader, the architecture,
/// the tokenizer, the chat template), with the same errors. `path` names
/// the file in errors. (The fuzz target `gguf` runs files through this.)
pub fn inspect<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<ModelInfo, LocalError> {
    Header::read(reader, path).map(|header| header.info)
}

/// Control tokens that end generation wherever they appear in a
/// vocabulary, as llama.cpp treats them (end of text, of turn, of message).
const END_OF_GENERATION: &[&str] = &[
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<EOT>",
];

/// The tokens that end a turn: EOS, the file's end-of-turn tokens
/// (`tokenizer.ggml.eot_token_id`, `eom_token_id`), the well-known
/// end-of-generation control tokens, and every other control token the
/// chat template writes that does not open something (ChatML's
/// `<|im_end|>`, Llama 3's `<|eot_id|>`...).
fn stop_ids(content: &Content, tokenizer: &GgufTokenizer, template: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = content.metadata.get(key).and_then(|v| v.to_u32().ok())
            && (id as usize) < tokenizer.vocab_size()
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    for id in (0..tokenizer.vocab_size() as u32).filter(|id| tokenizer.is_control(*id)) {
        let Some(text) = tokenizer.token(id) else {
            continue;
        };
        let lower = text.to_ascii_lowercase();
        let opens = ["start", "begin", "header", "bos"]
            .iter()
            .any(|w| lower.contains(w));
        let ends_turn = END_OF_GENERATION.contains(&text)
            || (!opens && text.len() > 2 && template.contains(text));
        if ends_turn && Some(id) != tokenizer.bos_id() && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Runs the model once on a throwaway copy (a two-token prompt, then one
/// decode step) so the first real request does not pay for what candle does
/// lazily on first use: repacking weights into its tiled layout, spawning
/// its compute threads. Costs a few tens of milliseconds at load.
fn warm_up(weights: &ModelWeights, token: u32) -> Result<(), LocalError> {
    let run = || -> candle_core::Result<()> {
        let mut model = weights.clone();
        let device = Device::Cpu;
        model.forward(&Tensor::new(&[token, token], &device)?.unsqueeze(0)?, 0)?;
        model.forward(&Tensor::new(&[token], &device)?.unsqueeze(0)?, 2)?;
        Ok(())
    };
    run().map_err(|e| LocalError::Weights(format!("the model does not run: {e}")))
}

/// The file's weight types with counts, largest count first.
fn quantization_summary(content: &Content) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for info in content.tensor_infos.values() {
        let name = format!("{:?}", info.ggml_dtype);
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the weights with Q4_0/Q4_1 tensors re-quantized to Q8_0: reads
/// every tensor, converts those, writes an in-memory GGUF with the same
/// metadata and loads the model from it (candle's loader reads tensors by
/// name from a GGUF reader). The buffer is freed once loaded.
fn load_requantized<R: Read + Seek>(
    content: Content,
    reader: &mut R,
    device: &Device,
) -> Result<(ModelWeights, bool), LocalError> {
    let weights_error = |e: candle_core::Error| LocalError::Weights(candle_message(&e));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    let mut converted = 0usize;
    for name in names {
        let tensor = content
            .tensor(reader, name, device)
            .map_err(weights_error)?;
        let tensor = if matches!(tensor.dtype(), GgmlDType::Q4_0 | GgmlDType::Q4_1) {
            converted += 1;
            let dense = tensor.dequantize(device).map_err(weights_error)?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(weights_error)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    if converted == 0 {
        reader
            .rewind()
            .map_err(|e| LocalError::Weights(e.to_string()))?;
        drop(tensors);
        let weights = ModelWeights::from_gguf(content, reader, device).map_err(weights_error)?;
        return Ok((weights, false));
    }
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buffer = Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut buffer, &metadata, &refs)
        .map_err(weights_error)?;
    drop(refs);
    drop(tensors);
    buffer.set_position(0);
    let requantized = Content::read(&mut buffer).map_err(weights_error)?;
    let weights =
        ModelWeights::from_gguf(requantized, &mut buffer, device).map_err(weights_error)?;
    Ok((weights, true))
}
