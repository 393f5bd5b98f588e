//! `lion bench runtime`: tasks per second through the orchestrator, with
//! ephemeral and durable recording, beside raw tokio baselines measured in
//! the same run (a bounded mpsc channel, a oneshot round trip).
//!
//! The agent runtime's rows (send, ask, spawn, memory per agent) come with
//! the agent runtime, which is not built yet; the table says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::orchestrator::builtin_handlers;
use agentic_core::{
    Durability, EventStore, Orchestrator, OrchestratorConfig, TaskOutcome, TaskSpec,
};
use agentic_store::{MemoryStore, SqliteOptions, SqliteStore};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::Ctx;
use crate::output;

/// Target on the reference machine: durable tasks limited by group commit,
/// not by the orchestrator.
const TARGET_DURABLE_TASKS_PER_SEC: f64 = 5_000.0;

/// Messages through a raw bounded channel: the baseline for message rates.
async fn raw_channel(messages: u64) -> f64 {
    let (tx, mut rx) = mpsc::channel::<u64>(1024);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(v) = rx.recv().await {
            sum = sum.wrapping_add(v);
        }
        sum
    });
    for i in 0..messages {
        if tx.send(i).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = consumer.await;
    messages as f64 / start.elapsed().as_secs_f64()
}

/// Request/response round trips through a task answering on oneshots.
async fn raw_ask(round_trips: u64) -> f64 {
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    tokio::spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v + 1);
        }
    });
    let start = Instant::now();
    for i in 0..round_trips {
        let (reply, answer) = oneshot::channel();
        if tx.send((i, reply)).await.is_err() {
            break;
        }
        let _ = answer.await;
    }
    round_trips as f64 / start.elapsed().as_secs_f64()
}

/// `submitters` concurrent loops each submitting `echo` tasks and waiting
/// for them, for `duration`: completed tasks per second.
async fn tasks(
    store: Arc<dyn EventStore>,
    durability: Durability,
    submitters: usize,
    duration: Duration,
) -> Result<f64> {
    let orchestrator = Orchestrator::start(
        store,
        builtin_handlers(),
        OrchestratorConfig::default(),
        Uuid::now_v7(),
    );
    let start = Instant::now();
    let deadline = start + duration;
    let loops: Vec<_> = (0..submitters)
        .map(|_| {
            let orchestrator = orchestrator.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let spec = TaskSpec {
                        durability,
                        ..TaskSpec::new("echo", Value::Null)
                    };
                    let handle = orchestrator.submit(spec).await?;
                    match handle.outcome().await? {
                        TaskOutcome::Completed(_) => done += 1,
                        other => bail!("a benchmark task ended {other:?}"),
                    }
                }
                Ok(done)
            })
        })
        .collect();
    let mut done = 0;
    for l in loops {
        done += l.await??;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M/s", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k/s", x / 1e3)
    } else {
        format!("{x:.0}/s")
    }
}

/// Runs the runtime benchmark and prints its table (or JSON).
pub async fn run(ctx: Ctx, quick: bool, dir: Option<PathBuf>) -> Result<()> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("lion-bench-runtime-{}", std::process::id())),
            true,
        ),
    };
    let (messages, duration) = if quick {
        (100_000, Duration::from_millis(300))
    } else {
        (5_000_000, Duration::from_secs(3))
    };
    eprintln!("bench: raw channel and oneshot baselines…");
    // Measured from a runtime task, as the orchestrator's own loops run.
    let channel = tokio::spawn(raw_channel(messages)).await?;
    let ask = tokio::spawn(raw_ask(messages / 5)).await?;
    eprintln!("bench: ephemeral tasks…");
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let ephemeral = tasks(memory, Durability::Ephemeral, 16, duration).await?;
    eprintln!("bench: durable tasks, 256 submitters…");
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir, SqliteOptions::default())?);
    let durable = tasks(store.clone(), Durability::Durable, 256, duration).await;
    drop(store);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let durable = durable?;
    if ctx.json {
        return output::json(&json!({
            "raw_channel_msgs_per_sec": channel,
            "raw_oneshot_round_trips_per_sec": ask,
            "ephemeral_tasks_per_sec": ephemeral,
            "durable_tasks_per_sec": durable,
        }));
    }
    let mut t = output::table(["measurement", "rate", "vs same-run baseline", "target"]);
    t.add_row([
        "raw tokio mpsc, bounded 1024".to_string(),
        rate(channel),
        "baseline (messages)".into(),
        String::new(),
    ]);
    t.add_row([
        "raw oneshot round trip".to_string(),
        rate(ask),
        "baseline (ask)".into(),
        String::new(),
    ]);
    t.add_row([
        "no-op tasks, ephemeral, 16 submitters".to_string(),
        rate(ephemeral),
        format!("{:.3}x raw round trips/s", ephemeral / ask),
        String::new(),
    ]);
    t.add_row([
        "no-op tasks, durable, 256 submitters".to_string(),
        rate(durable),
        format!("{:.3}x raw round trips/s", durable / ask),
        format!(
            "≥5k tasks/s: {}",
            if quick {
                "no evidence (quick run)"
            } else if durable >= TARGET_DURABLE_TASKS_PER_SEC {
                "PASS"
            } else {
                "FAIL"
            }
        ),
    ]);
    println!("{t}");
    println!("agent runtime (send, ask, spawn, memory per agent): not built yet, no figures");
    Ok(())
}
