//! `lion bench model`: the embedded local model's speed on this machine —
//! generated tokens/s, time to first token, load time and resident memory —
//! through lion's provider (its inference worker and stream), one generation
//! and two at once, against a bare candle loop on the same weights measured
//! in the same run.

use std::time::{Duration, Instant};

use agentic_llm::local::{LocalModel, LocalProvider, bench};
use anyhow::Result;

use super::{Ctx, model};
use crate::output;

/// Target: generated tokens per second through the provider.
const TARGET_TOKENS_PER_SECOND: f64 = 55.0;
/// Target: time to the first token of a short prompt.
const TARGET_FIRST_TOKEN: Duration = Duration::from_millis(400);

/// `lion bench model`.
pub async fn run(ctx: Ctx, quick: bool, spec: &str, tokens: Option<u32>) -> Result<()> {
    let tokens = tokens.unwrap_or(if quick { 16 } else { 128 });
    let path = model::file(spec)?;
    errln!(
        "bench: loading {}, then {tokens} tokens on each path…",
        path.display()
    );
    let started = Instant::now();
    let model = LocalModel::load(&path, Default::default())?;
    let load = started.elapsed();
    let info = model.info().clone();
    let raw = bench::raw_candle(&model, tokens)?;
    let provider = LocalProvider::from_model(model, Default::default())?;
    let one = bench::measure(&provider, load, tokens).await?;
    let began = Instant::now();
    let (a, b) = tokio::join!(
        bench::measure(&provider, load, tokens),
        bench::measure(&provider, load, tokens)
    );
    let (a, b) = (a?, b?);
    let together = (a.generated_tokens + b.generated_tokens) as f64 / began.elapsed().as_secs_f64();

    let verdict = |pass: bool| match (quick, pass) {
        (true, _) => "no evidence (quick run)",
        (false, true) => "PASS",
        (false, false) => "FAIL",
    };
    let speed = verdict(one.tokens_per_second >= TARGET_TOKENS_PER_SECOND);
    let first = verdict(one.first_token < TARGET_FIRST_TOKEN);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let rss = one
        .resident_bytes
        .map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20));
    if ctx.json {
        return output::json(&serde_json::json!({
            "model": path,
            "quantization": info.quantization,
            "requantized_q8": info.requantized,
            "compute_threads": one.compute_threads,
            "tokens": tokens,
            "prompt_tokens": one.prompt_tokens,
            "load_ms": load.as_secs_f64() * 1000.0,
            "raw_candle": {"tokens_per_s": raw.tokens_per_second, "first_token_ms": raw.first_token.as_secs_f64() * 1000.0},
            "provider": {"tokens_per_s": one.tokens_per_second, "first_token_ms": one.first_token.as_secs_f64() * 1000.0},
            "two_at_once_tokens_per_s": together,
            "resident_bytes": one.resident_bytes,
            "verdict": {"tokens_per_s": speed, "first_token": first},
        }));
    }
    let mut table = output::bench_table();
    table.add_row(vec![
        "generated tokens/s, one generation".into(),
        format!("{:.1}", one.tokens_per_second),
        format!(
            "raw candle loop {:.1} ({:.2}x)",
            raw.tokens_per_second,
            one.tokens_per_second / raw.tokens_per_second.max(f64::EPSILON)
        ),
        format!(">= {TARGET_TOKENS_PER_SECOND:.0}"),
        speed.into(),
    ]);
    table.add_row(vec![
        format!("time to first token ({} prompt tokens)", one.prompt_tokens),
        ms(one.first_token),
        format!("raw candle loop {}", ms(raw.first_token)),
        format!("< {}", ms(TARGET_FIRST_TOKEN)),
        first.into(),
    ]);
    table.add_row(vec![
        "generated tokens/s, two generations at once (total)".into(),
        format!("{together:.1}"),
        "one worker, turns token by token".into(),
        String::new(),
        String::new(),
    ]);
    table.add_row(vec![
        "load (read, re-quantize, warm up)".into(),
        ms(load),
        String::new(),
        String::new(),
        String::new(),
    ]);
    table.add_row(vec![
        "resident memory after the runs".into(),
        rss,
        String::new(),
        String::new(),
        String::new(),
    ]);
    outln!(
        "lion bench model — {} ({}{}), {} compute threads, {tokens} tokens per generation, greedy",
        info.name.as_deref().unwrap_or("GGUF model"),
        info.quantization,
        if info.requantized {
            ", re-quantized to Q8_0 at load"
        } else {
            ""
        },
        one.compute_threads
    );
    outln!("{table}");
    outln!(
        "for scale, measured separately, not in this run: llama.cpp (build 0c1e570, 2 threads) on the same file and machine kind generated 118 tokens/s and read a 42-token prompt in ~136 ms (docs/local-model.md)"
    );
    Ok(())
}
