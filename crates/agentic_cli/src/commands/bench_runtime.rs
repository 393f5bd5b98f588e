//! `lion bench runtime`: tasks per second through the orchestrator, with
//! ephemeral and durable recording, beside raw tokio baselines measured in
//! the same run (a bounded mpsc channel, a oneshot round trip).
//!
//! Agents: `send` and `ask` rates to one agent, and the time and memory to
//! spawn 100k idle agents.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::orchestrator::builtin_handlers;
use agentic_core::{
    Agent, AgentContext, AgentError, AgentId, Durability, EventStore, Orchestrator,
    OrchestratorConfig, Reply, Runtime, SpawnOptions, TaskOutcome, TaskSpec,
};
use agentic_store::{MemoryStore, SqliteOptions, SqliteStore};
use anyhow::{Result, bail};
use async_trait::async_trait;
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

/// The benchmark agent: counts what it is sent, answers what it is asked.
struct Sink {
    seen: u64,
}

enum SinkMsg {
    Ping,
    Ask(Reply<u64>),
}

#[async_trait]
impl Agent for Sink {
    type Msg = SinkMsg;

    async fn start(_ctx: &AgentContext) -> Result<Self, AgentError> {
        Ok(Sink { seen: 0 })
    }

    async fn handle(&mut self, _ctx: &AgentContext, msg: SinkMsg) -> Result<(), AgentError> {
        match msg {
            SinkMsg::Ping => self.seen += 1,
            SinkMsg::Ask(reply) => {
                let _ = reply.send(self.seen);
            }
        }
        Ok(())
    }
}

/// Messages sent to one agent per second (ephemeral: nothing is logged).
async fn agent_send(messages: u64) -> Result<f64> {
    let runtime = Runtime::new(None, Uuid::now_v7());
    let sink = runtime.spawn::<Sink>(
        AgentId::new("bench", "send"),
        SpawnOptions {
            mailbox: 1024,
            ..SpawnOptions::default()
        },
    )?;
    let start = Instant::now();
    for _ in 0..messages {
        sink.send(SinkMsg::Ping).await?;
    }
    // The last message is handled when this answer comes back.
    let seen = sink.ask(SinkMsg::Ask, Duration::from_secs(60)).await?;
    if seen != messages {
        bail!("the agent saw {seen} of {messages} messages");
    }
    Ok(messages as f64 / start.elapsed().as_secs_f64())
}

/// `ask` round trips to one agent per second.
async fn agent_ask(round_trips: u64) -> Result<f64> {
    let runtime = Runtime::new(None, Uuid::now_v7());
    let sink = runtime.spawn::<Sink>(AgentId::new("bench", "ask"), SpawnOptions::default())?;
    let start = Instant::now();
    for _ in 0..round_trips {
        sink.ask(SinkMsg::Ask, Duration::from_secs(60)).await?;
    }
    Ok(round_trips as f64 / start.elapsed().as_secs_f64())
}

/// Spawns `n` idle agents: seconds taken, and resident bytes per agent.
async fn agent_spawn(n: u64) -> Result<(f64, Option<f64>)> {
    let runtime = Runtime::new(None, Uuid::now_v7());
    let before = resident_bytes();
    let start = Instant::now();
    let mut agents = Vec::with_capacity(n as usize);
    for i in 0..n {
        agents.push(
            runtime.spawn::<Sink>(AgentId::new("idle", i.to_string()), SpawnOptions::default())?,
        );
    }
    // Every agent has started once it answers.
    for a in &agents {
        a.ask(SinkMsg::Ask, Duration::from_secs(60)).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_agent = resident_bytes()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / n as f64);
    Ok((secs, per_agent))
}

/// The baseline for an idle agent: a task waiting on a bounded channel of
/// 16-byte messages. Resident bytes per task.
/// The tasks are returned so they stay alive (and their memory in use)
/// while the agents are measured after them.
async fn raw_idle_tasks(n: u64) -> (Option<f64>, IdleTasks) {
    let before = resident_bytes();
    let mut senders = Vec::with_capacity(n as usize);
    let mut tasks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (tx, mut rx) = mpsc::channel::<(u64, u64)>(64);
        tasks.push(tokio::spawn(
            async move { while rx.recv().await.is_some() {} },
        ));
        senders.push(tx);
    }
    tokio::task::yield_now().await;
    let per_task = resident_bytes()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / n as f64);
    (per_task, IdleTasks { senders, tasks })
}

/// Idle baseline tasks, kept alive until dropped.
struct IdleTasks {
    senders: Vec<mpsc::Sender<(u64, u64)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IdleTasks {
    async fn end(self) {
        drop(self.senders);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Resident memory of this process (VmRSS), in bytes.
fn resident_bytes() -> Option<u64> {
    agentic_store::bench::proc_status_kib("VmRSS").map(|kib| kib * 1024)
}

/// A rate with its unit, for the table.
fn per_sec(x: f64) -> String {
    format!("{}/s", output::rate(x))
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
    errln!("bench: raw channel and oneshot baselines…");
    // Measured from a runtime task, as the orchestrator's own loops run.
    let channel = tokio::spawn(raw_channel(messages)).await?;
    let ask = tokio::spawn(raw_ask(messages / 5)).await?;
    errln!("bench: agents…");
    let agents_n = if quick { 10_000 } else { 100_000 };
    let send = tokio::spawn(agent_send(messages)).await??;
    let asked = tokio::spawn(agent_ask(messages / 5)).await??;
    let (raw_idle, idle_tasks) = tokio::spawn(raw_idle_tasks(agents_n)).await?;
    let (spawn_secs, per_agent) = tokio::spawn(agent_spawn(agents_n)).await??;
    idle_tasks.end().await;
    errln!("bench: ephemeral tasks…");
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let ephemeral = tasks(memory, Durability::Ephemeral, 16, duration).await?;
    errln!("bench: durable tasks, 256 submitters…");
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
            "agent_send_msgs_per_sec": send,
            "agent_ask_round_trips_per_sec": asked,
            "agents_spawned": agents_n,
            "agent_spawn_seconds": spawn_secs,
            "idle_agent_bytes": per_agent,
            "raw_idle_task_bytes": raw_idle,
            "ephemeral_tasks_per_sec": ephemeral,
            "durable_tasks_per_sec": durable,
        }));
    }
    let mut t = output::table(["measurement", "rate", "vs same-run baseline", "target"]);
    t.add_row([
        "raw tokio mpsc, bounded 1024".to_string(),
        per_sec(channel),
        "baseline (messages)".into(),
        String::new(),
    ]);
    t.add_row([
        "raw oneshot round trip".to_string(),
        per_sec(ask),
        "baseline (ask)".into(),
        String::new(),
    ]);
    let verdict = |ok: bool| {
        if quick {
            "no evidence (quick run)"
        } else if ok {
            "PASS"
        } else {
            "FAIL"
        }
    };
    t.add_row([
        "agent send (ephemeral), 1 sender → 1 agent".to_string(),
        per_sec(send),
        format!("{:.2}x raw channel", send / channel),
        format!(
            "≥2M/s and within 3x of raw: {}",
            verdict(send >= 2e6 && send * 3.0 >= channel)
        ),
    ]);
    t.add_row([
        "agent ask round trip".to_string(),
        per_sec(asked),
        format!("{:.2}x raw round trip", asked / ask),
        format!("≥1M/s: {}", verdict(asked >= 1e6)),
    ]);
    t.add_row([
        format!("spawn {agents_n} idle agents (not logged)"),
        format!("{spawn_secs:.2} s"),
        String::new(),
        format!("100k in <1 s: {}", verdict(spawn_secs < 1.0)),
    ]);
    t.add_row([
        "memory per idle agent (VmRSS delta)".to_string(),
        per_agent.map_or_else(|| "unknown".into(), |b| format!("{:.2} KiB", b / 1024.0)),
        raw_idle.map_or_else(
            || "raw idle task: unknown".into(),
            |b| format!("raw idle task + channel: {:.2} KiB", b / 1024.0),
        ),
        format!("<2 KiB: {}", verdict(per_agent.is_some_and(|b| b < 2048.0))),
    ]);
    t.add_row([
        "no-op tasks, ephemeral, 16 submitters".to_string(),
        per_sec(ephemeral),
        format!("{:.3}x raw round trips/s", ephemeral / ask),
        String::new(),
    ]);
    t.add_row([
        "no-op tasks, durable, 256 submitters".to_string(),
        per_sec(durable),
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
    outln!("{t}");
    Ok(())
}
