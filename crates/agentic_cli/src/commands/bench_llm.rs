//! `lion bench llm`: what the kernel adds to each streamed LLM chunk. A local
//! OpenAI-compatible test server streams chunks stamped with the time they
//! were written; the baseline reads them straight from the provider, the
//! measured path takes them through the relay (live subscriber, coalesced
//! durable appends to a SQLite store) — both in the same run, one agent and
//! then ten at once.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentic_core::llm::{
    ChatChunk, ChatMessage, ChatRequest, LlmProvider, Relay, RelayOptions, Role,
};
use agentic_core::{EventStore, LiveEvent, SystemEvent};
use agentic_llm::{OpenAiConfig, OpenAiProvider};
use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Ctx;
use crate::output;

/// Target: microseconds the kernel may add to a chunk, provider to subscriber.
const TARGET_ADDED_MICROS: f64 = 50.0;

/// The moment every timestamp in this run counts from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Starts a server streaming `chunks` chunks per request, each text being
/// the nanosecond it was written, `pace` apart (as fast as it can when
/// `None`); returns its base URL.
async fn server(chunks: usize, pace: Option<Duration>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse().ok())
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..chunks {
                    let line = format!(
                        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}|\"}}}}]}}\n\n",
                        now_nanos()
                    );
                    if socket.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    // One chunk per write, as a model server streams tokens.
                    match pace {
                        Some(pace) => tokio::time::sleep(pace).await,
                        None => tokio::task::yield_now().await,
                    }
                }
                let tail = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
                let _ = socket.write_all(tail.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

/// Latencies (µs) from the stamps in `text` (`<nanos>|` per chunk).
fn latencies(text: &str, received: u64, out: &mut Vec<f64>) {
    for stamp in text.split('|').filter(|s| !s.is_empty()) {
        if let Ok(sent) = stamp.parse::<u64>() {
            out.push(received.saturating_sub(sent) as f64 / 1000.0);
        }
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "bench".into(),
        messages: vec![ChatMessage::new(Role::User, "stream")],
        tools: Vec::new(),
        temperature: None,
        max_tokens: None,
    }
}

/// Reads one stream straight from the provider: chunk latencies.
async fn raw_stream(provider: Arc<OpenAiProvider>) -> Result<Vec<f64>> {
    let mut stream = provider.stream(request()).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        if let ChatChunk::Text(t) = chunk? {
            latencies(&t, now_nanos(), &mut out);
        }
    }
    Ok(out)
}

/// Takes one stream through the relay: latencies at a live subscriber.
async fn relayed_stream(
    provider: Arc<OpenAiProvider>,
    store: Arc<dyn EventStore>,
    agent: String,
) -> Result<Vec<f64>> {
    let (live, mut watch) = broadcast::channel::<LiveEvent>(4096);
    let subscriber = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Ok(event) = watch.recv().await {
            if let SystemEvent::LlmDelta { text, .. } = &event.event {
                latencies(text, now_nanos(), &mut out);
            }
        }
        out
    });
    let relay = Relay::new(store, live, Uuid::now_v7());
    let stream = provider.stream(request()).await?;
    relay
        .relay(
            &agent,
            Uuid::now_v7(),
            stream,
            RelayOptions::default(),
            CancellationToken::new(),
        )
        .await?;
    drop(relay);
    Ok(subscriber.await?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `n` streams at once; returns (all latencies, chunks/s).
async fn concurrent<F, Fut>(n: usize, run: F) -> Result<(Vec<f64>, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<f64>>> + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(run(i))).collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all, rate))
}

/// `lion bench llm`.
pub async fn run(ctx: Ctx, quick: bool, dir: Option<PathBuf>) -> Result<()> {
    let chunks = if quick { 200 } else { 5_000 };
    let paced_chunks = if quick { 50 } else { 2_000 };
    origin();
    // Latency is measured on a paced stream (a chunk a millisecond, faster
    // than a model server streams tokens), so it is the path's cost and not
    // a queue; throughput on streams sent as fast as the server can.
    let connect = |url: String| {
        OpenAiProvider::new(OpenAiConfig {
            max_retries: 0,
            ..OpenAiConfig::new(url)
        })
        .map(Arc::new)
    };
    let paced = connect(server(paced_chunks, Some(Duration::from_millis(1))).await?)?;
    let provider = connect(server(chunks, None).await?)?;
    let scratch = match dir {
        Some(dir) => dir.join(format!("lion-bench-llm-{}", std::process::id())),
        None => std::env::temp_dir().join(format!("lion-bench-llm-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let store = Arc::new(SqliteStore::open(&scratch, SqliteOptions::default())?);
    let dyn_store: Arc<dyn EventStore> = store.clone();

    errln!(
        "bench: latency over {paced_chunks} paced chunks, then throughput of 10 streams of {chunks} chunks, on each path…"
    );
    let (raw1, _) = {
        let p = paced.clone();
        concurrent(1, move |_| raw_stream(p.clone())).await?
    };
    let (kern1, _) = {
        let (p, s) = (paced.clone(), dyn_store.clone());
        concurrent(1, move |i| {
            relayed_stream(p.clone(), s.clone(), format!("bench{i}"))
        })
        .await?
    };
    let (raw10, raw10_rate) = {
        let p = provider.clone();
        concurrent(10, move |_| raw_stream(p.clone())).await?
    };
    let (kern10, kern10_rate) = {
        let (p, s) = (provider.clone(), dyn_store.clone());
        concurrent(10, move |i| {
            relayed_stream(p.clone(), s.clone(), format!("bench{i}"))
        })
        .await?
    };
    let head = store.head().await?.seq;
    drop(dyn_store);
    drop(store);
    let _ = std::fs::remove_dir_all(&scratch);

    let added = percentile(&kern1, 0.5) - percentile(&raw1, 0.5);
    let verdict = if quick {
        "no evidence (quick run)"
    } else if added < TARGET_ADDED_MICROS {
        "PASS"
    } else {
        "FAIL"
    };
    let total_chunks = (kern1.len() + kern10.len()) as u64;
    if ctx.json {
        return output::json(&serde_json::json!({
            "chunks_per_stream": chunks,
            "paced_chunks": paced_chunks,
            "raw_1": {"p50_us": percentile(&raw1, 0.5), "p99_us": percentile(&raw1, 0.99)},
            "kernel_1": {"p50_us": percentile(&kern1, 0.5), "p99_us": percentile(&kern1, 0.99)},
            "raw_10": {"p50_us": percentile(&raw10, 0.5), "p99_us": percentile(&raw10, 0.99), "chunks_per_s": raw10_rate},
            "kernel_10": {"p50_us": percentile(&kern10, 0.5), "p99_us": percentile(&kern10, 0.99), "chunks_per_s": kern10_rate},
            "added_p50_us": added,
            "logged_events": head,
            "relayed_chunks": total_chunks,
            "verdict": verdict,
        }));
    }
    let us = |x: f64| format!("{x:.1} µs");
    let mut table = output::bench_table();
    for (what, kernel, raw) in [
        ("1 paced stream", &kern1, &raw1),
        ("10 streams flat out", &kern10, &raw10),
    ] {
        for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
            table.add_row(vec![
                format!("chunk latency, server write to subscriber, {what}: {name}"),
                us(percentile(kernel, p)),
                format!("raw provider {}", us(percentile(raw, p))),
                String::new(),
                String::new(),
            ]);
        }
    }
    table.add_row(vec![
        "added by the kernel per chunk (p50, paced stream)".into(),
        us(added),
        String::new(),
        format!("< {TARGET_ADDED_MICROS:.0} µs"),
        verdict.into(),
    ]);
    table.add_row(vec![
        "chunks/s through the event path, 10 agents at once".into(),
        output::rate(kern10_rate),
        format!("raw {}", output::rate(raw10_rate)),
        String::new(),
        String::new(),
    ]);
    table.add_row(vec![
        "durable events written for the relayed chunks".into(),
        format!("{head} for {total_chunks} chunks"),
        "coalesced: 1 KiB or 100 ms".into(),
        String::new(),
        String::new(),
    ]);
    outln!(
        "lion bench llm — OpenAI-compatible SSE from a local test server, relayed to a live subscriber with a SQLite store"
    );
    outln!("{table}");
    outln!(
        "note: live chunks never wait for a commit: appends run on their own task; the subscriber sees each chunk before it is logged"
    );
    Ok(())
}
