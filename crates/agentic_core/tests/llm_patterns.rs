//! Multi-agent patterns on the agent runner, with a scripted provider (it
//! answers by the agent's system prompt, streaming in chunks) on the
//! in-memory store: direct messages, a planner fanning out to parallel
//! workers, a round-robin with a stop word, cancellation reaching every
//! worker, and replay equality.

use std::sync::Arc;

use agentic_core::llm::patterns::{Participant, fan_out, forward, round_robin};
use agentic_core::llm::{
    AgentRunner, AgentSpec, ChatChunk, ChatRequest, ChatStream, DEFAULT_BUDGET_TOKENS, LlmError,
    LlmProvider, Role, RunError,
};
use agentic_core::{EventStore, ExpectedVersion, NewEvent, State, SystemEvent};
use agentic_store::MemoryStore;
use async_trait::async_trait;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Answers by the agent's system prompt; counts streams still open.
struct Scripted {
    open: Arc<watch::Sender<usize>>,
}

fn answer(request: &ChatRequest) -> Option<String> {
    let system = request
        .messages
        .iter()
        .find(|m| m.role == Role::System)
        .map_or("", |m| m.content.as_str());
    let last = request.messages.last().map_or("", |m| m.content.as_str());
    match system {
        "planner" if last.starts_with("Results") => {
            Some(format!("summary of {} results", last.lines().count() - 1))
        }
        "planner" => Some("add 1 2\nadd 3 4\nadd 5 6".into()),
        "worker" => {
            let sum: i64 = last
                .split_whitespace()
                .filter_map(|w| w.parse::<i64>().ok())
                .sum();
            Some(format!("{sum}"))
        }
        "counter" => {
            let n: i64 = last.trim_end_matches(" DONE").parse().unwrap_or(0) + 1;
            Some(if n >= 5 {
                format!("{n} DONE")
            } else {
                n.to_string()
            })
        }
        "echo" => Some(format!("heard: {last}")),
        _ => None, // "slow": never finishes
    }
}

#[async_trait]
impl LlmProvider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let (tx, stream) = ChatStream::channel();
        let reply = answer(&request);
        let open = self.open.clone();
        open.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            match reply {
                Some(text) => {
                    let (a, b) = text.split_at(text.len() / 2);
                    for part in [a, b] {
                        let _ = tx.send(Ok(ChatChunk::Text(part.to_owned()))).await;
                    }
                    let _ = tx.send(Ok(ChatChunk::Finished(Some("stop".into())))).await;
                }
                None => {
                    let _ = tx.send(Ok(ChatChunk::Text("working".into()))).await;
                    tx.closed().await;
                }
            }
            open.send_modify(|n| *n -= 1);
        });
        Ok(stream)
    }
}

struct Fixture {
    store: Arc<MemoryStore>,
    runner: AgentRunner,
    open: watch::Receiver<usize>,
}

async fn fixture(agents: &[(&str, &str)]) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    for (name, system) in agents {
        let spec = AgentSpec {
            model: None,
            base_url: None,
            system: (*system).to_owned(),
            budget_tokens: None,
            max_answer_bytes: None,
            tools: Vec::new(),
        };
        let event = SystemEvent::AgentSpawned {
            name: (*name).to_owned(),
            spec,
        };
        store
            .append(
                vec![NewEvent::new(event, Uuid::now_v7())],
                ExpectedVersion::Any,
            )
            .await
            .expect("spawn");
    }
    let (open_tx, open) = watch::channel(0);
    let provider = Scripted {
        open: Arc::new(open_tx),
    };
    let (live, _) = broadcast::channel(1024);
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let runner = AgentRunner::new(dyn_store, Arc::new(provider), None, live, Uuid::now_v7());
    Fixture {
        store,
        runner,
        open,
    }
}

fn p(agent: &str) -> Participant {
    Participant {
        agent: agent.into(),
        model: "m".into(),
    }
}

async fn replay_matches(store: &MemoryStore) {
    let mut replayed = State::new();
    for e in store.read_from(1, usize::MAX).await.expect("read") {
        replayed.apply(&e.decode().expect("decode")).expect("apply");
    }
    let projected = store.projected_state().await.expect("state");
    assert_eq!(projected.diff(&replayed), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_carries_one_answer_to_another_agent() {
    let f = fixture(&[("ada", "worker"), ("bob", "echo")]).await;
    let (first, second) = forward(
        &f.runner,
        &p("ada"),
        &p("bob"),
        "add 2 3",
        CancellationToken::new(),
    )
    .await
    .expect("forward");
    assert_eq!(first.message.content, "5");
    assert_eq!(second.message.content, "heard: 5");
    replay_matches(&f.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_fans_out_to_parallel_workers_and_gathers_the_results() {
    let f = fixture(&[("plan", "planner"), ("w1", "worker"), ("w2", "worker")]).await;
    let out = fan_out(
        &f.runner,
        &p("plan"),
        &[p("w1"), p("w2")],
        "sum things",
        CancellationToken::new(),
    )
    .await
    .expect("fan out");
    assert_eq!(out.subtasks, ["add 1 2", "add 3 4", "add 5 6"]);
    let sums: Vec<&str> = out
        .results
        .iter()
        .map(|r| r.message.content.as_str())
        .collect();
    assert_eq!(sums, ["3", "7", "11"]);
    assert_eq!(out.summary.message.content, "summary of 3 results");
    let state = f.store.projected_state().await.expect("state");
    assert_eq!(
        state.agent("w1").expect("w1").messages.len(),
        4,
        "two subtasks, two answers"
    );
    assert_eq!(state.agent("w2").expect("w2").messages.len(), 2);
    replay_matches(&f.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_robin_stops_at_the_stop_word() {
    let f = fixture(&[("alice", "counter"), ("bob", "counter")]).await;
    let transcript = round_robin(
        &f.runner,
        &[p("alice"), p("bob")],
        "0",
        "DONE",
        20,
        CancellationToken::new(),
    )
    .await
    .expect("round robin");
    let said: Vec<(&str, &str)> = transcript
        .iter()
        .map(|(a, r)| (a.as_str(), r.message.content.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("alice", "1"),
            ("bob", "2"),
            ("alice", "3"),
            ("bob", "4"),
            ("alice", "5 DONE")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_stops_every_worker() {
    let f = fixture(&[("plan", "planner"), ("s1", "slow"), ("s2", "slow")]).await;
    let cancel = CancellationToken::new();
    let runner = f.runner.clone();
    let token = cancel.clone();
    let run = tokio::spawn(async move {
        fan_out(&runner, &p("plan"), &[p("s1"), p("s2")], "go", token).await
    });
    // Wait until the three subtasks' streams are open, then cancel.
    let mut live = f.store.clone().subscribe(1);
    let mut started = 0;
    while started < 3 {
        let event = live.next().await.expect("event").decode().expect("decode");
        if matches!(&event, SystemEvent::AgentPrompted { name, .. } if name.starts_with('s')) {
            started += 1;
        }
    }
    cancel.cancel();
    let err = run.await.expect("join").unwrap_err();
    assert!(
        matches!(&err, RunError::Halted { reason, .. } if reason == "cancelled"),
        "{err}"
    );
    // Every worker's stream was dropped (the provider saw it close).
    let stopped = f
        .store
        .read_from(1, usize::MAX)
        .await
        .expect("read")
        .iter()
        .filter(|e| matches!(e.decode(), Ok(SystemEvent::LlmStopped { .. })))
        .count();
    assert_eq!(stopped, 3, "each worker recorded that it was stopped");
    // Every provider stream closes (a guard, not a performance threshold).
    let mut open = f.open.clone();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        open.wait_for(|n| *n == 0),
    )
    .await
    .expect("a provider stream was left open")
    .expect("watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_budget_is_shared_by_every_agent_of_the_run() {
    let f = fixture(&[("plan", "planner"), ("w1", "worker"), ("w2", "worker")]).await;
    // The plan takes 2 tokens and each of three workers 2 more: 8 in all.
    let runner = f.runner.clone().with_run_budget(5);
    let err = fan_out(
        &runner,
        &p("plan"),
        &[p("w1"), p("w2")],
        "sum things",
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RunError::Halted { reason, .. } if reason.starts_with("the run's token budget exceeded")),
        "{err}"
    );
    // The same agents under a budget that fits: it completes.
    let roomy = f.runner.clone().with_run_budget(100);
    fan_out(
        &roomy,
        &p("plan"),
        &[p("w1"), p("w2")],
        "sum things",
        CancellationToken::new(),
    )
    .await
    .expect("within budget");
}

/// Streams 1 KiB chunks until it has sent `chunks` of them (or its stream
/// is dropped); counts what it sent.
struct Flood {
    chunks: usize,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl LlmProvider for Flood {
    fn name(&self) -> &str {
        "flood"
    }

    async fn stream(&self, _request: ChatRequest) -> Result<ChatStream, LlmError> {
        let (tx, stream) = ChatStream::channel();
        let (chunks, sent) = (self.chunks, self.sent.clone());
        tokio::spawn(async move {
            let chunk = "flood ".repeat(1024 / 6);
            for _ in 0..chunks {
                if tx.send(Ok(ChatChunk::Text(chunk.clone()))).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = tx.send(Ok(ChatChunk::Finished(Some("stop".into())))).await;
        });
        Ok(stream)
    }
}

/// Regression (issue 14): an agent spawned without a budget (every agent
/// recorded before there was a default, too) had none, and a model that
/// streams without end filled the log. It now runs under
/// `DEFAULT_BUDGET_TOKENS`, counted from the bytes that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_spawned_without_a_budget_runs_under_the_default() {
    let f = fixture(&[("old", "anything")]).await;
    let spec = f
        .store
        .projected_state()
        .await
        .expect("state")
        .agent("old")
        .map(|a| a.spec.clone())
        .expect("agent");
    assert_eq!(spec.budget_tokens, None, "recorded with no budget");
    // Far more than the default budget's worth: 4 MiB.
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood = Flood {
        chunks: 4096,
        sent: sent.clone(),
    };
    let (live, _) = broadcast::channel(1024);
    let dyn_store: Arc<dyn EventStore> = f.store.clone();
    let runner = AgentRunner::new(dyn_store, Arc::new(flood), None, live, Uuid::now_v7());
    let err = runner
        .send("old", "go on", "m", CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RunError::Halted { reason, .. }
            if reason.starts_with("token budget exceeded") && reason.ends_with(&format!("budget {DEFAULT_BUDGET_TOKENS})"))),
        "{err}"
    );
    let logged: usize = f
        .store
        .read_from(1, usize::MAX)
        .await
        .expect("read")
        .iter()
        .map(|e| match e.decode().expect("decode") {
            SystemEvent::LlmDelta { text, .. } => text.len(),
            _ => 0,
        })
        .sum();
    assert!(
        logged as u64 <= DEFAULT_BUDGET_TOKENS * agentic_core::llm::BYTES_PER_TOKEN,
        "{logged} bytes logged"
    );
    assert!(
        sent.load(std::sync::atomic::Ordering::SeqCst) < 4096,
        "the stream was dropped"
    );
}
