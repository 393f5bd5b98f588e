//! The local model's benchmark rows: generated tokens per second, time to
//! first token for a short chat prompt, load time and resident memory —
//! through lion's provider (worker, stream) and, as the same-run baseline,
//! a bare candle loop on the same weights.

use std::time::{Duration, Instant};

use agentic_core::llm::{ChatChunk, ChatMessage, Role};

use candle_core::{DType, Device, Tensor};

use super::{GenerationOptions, LocalError, LocalModel, LocalProvider};

/// The short chat prompt the benchmark times.
pub const BENCH_PROMPT: &str = "Write a short story about a lion who learns to code.";

/// One benchmark run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Time to load the model and start its worker.
    pub load: Duration,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u64,
    /// From the request to the first text chunk (prompt processing and the
    /// first token).
    pub first_token: Duration,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Generated tokens per second after the first (decoding speed).
    pub tokens_per_second: f64,
    /// Resident memory of the process after the run (`VmRSS`), if known.
    pub resident_bytes: Option<u64>,
    /// Candle's compute threads.
    pub compute_threads: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} tokens/s ({} tokens), first token {:.0} ms ({} prompt tokens), load {:.0} ms, RSS {}, {} compute threads",
            self.tokens_per_second,
            self.generated_tokens,
            self.first_token.as_secs_f64() * 1000.0,
            self.prompt_tokens,
            self.load.as_secs_f64() * 1000.0,
            self.resident_bytes
                .map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20)),
            self.compute_threads,
        )
    }
}

/// Measures one greedy generation of `tokens` tokens on a loaded provider;
/// `load` is reported as given.
pub async fn measure(
    provider: &LocalProvider,
    load: Duration,
    tokens: u32,
) -> Result<BenchReport, LocalError> {
    let messages = [ChatMessage::new(Role::User, BENCH_PROMPT)];
    let options = GenerationOptions {
        max_tokens: tokens,
        temperature: None,
        top_p: None,
        seed: 0,
        ignore_stop: true,
    };
    let started = Instant::now();
    let (mut stream, mut handle) = provider.generate(&messages, options)?;
    let mut first: Option<Instant> = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(ChatChunk::Text(_)) if first.is_none() => first = Some(Instant::now()),
            Ok(_) => {}
            Err(e) => return Err(LocalError::Inference(e.to_string())),
        }
    }
    let ended = Instant::now();
    let outcome = handle.finished().await;
    let first_at = first.unwrap_or(ended);
    // Tokens 2..N were generated between the first chunk and the end.
    let after_first = outcome.usage.completion_tokens.saturating_sub(1);
    let decode_time = ended.duration_since(first_at).as_secs_f64();
    Ok(BenchReport {
        load,
        prompt_tokens: outcome.usage.prompt_tokens,
        first_token: first_at.duration_since(started),
        generated_tokens: outcome.usage.completion_tokens,
        tokens_per_second: if decode_time > 0.0 {
            after_first as f64 / decode_time
        } else {
            0.0
        },
        resident_bytes: resident_bytes(),
        compute_threads: super::compute_threads(),
    })
}

/// The baseline: greedy decoding of `tokens` tokens for [`BENCH_PROMPT`]
/// in a bare loop of candle forward passes and argmax on `model`'s weights
/// (no worker, no stream, no tokenizer on the way out).
pub fn raw_candle(model: &LocalModel, tokens: u32) -> Result<BenchReport, LocalError> {
    let messages = [ChatMessage::new(Role::User, BENCH_PROMPT)];
    let prompt = model
        .tokenizer
        .encode(&model.template.render(&messages, true)?)?;
    let failed = |e: candle_core::Error| LocalError::Inference(e.to_string());
    let mut weights = model.weights.clone();
    let device = Device::Cpu;
    let argmax = |logits: Tensor| -> candle_core::Result<u32> {
        logits
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .argmax(0)?
            .to_scalar::<u32>()
    };
    let started = Instant::now();
    let input = Tensor::new(prompt.as_slice(), &device)
        .and_then(|t| t.unsqueeze(0))
        .map_err(failed)?;
    let mut token = weights
        .forward(&input, 0)
        .and_then(argmax)
        .map_err(failed)?;
    let first = started.elapsed();
    let decode = Instant::now();
    for i in 1..tokens as usize {
        let input = Tensor::new(&[token], &device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(failed)?;
        token = weights
            .forward(&input, prompt.len() + i - 1)
            .and_then(argmax)
            .map_err(failed)?;
    }
    let decode_time = decode.elapsed().as_secs_f64();
    Ok(BenchReport {
        load: Duration::ZERO,
        prompt_tokens: prompt.len() as u64,
        first_token: first,
        generated_tokens: u64::from(tokens),
        tokens_per_second: f64::from(tokens.saturating_sub(1)) / decode_time.max(f64::EPSILON),
        resident_bytes: resident_bytes(),
        compute_threads: super::compute_threads(),
    })
}

/// The process's resident memory, from `VmRSS` in `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
