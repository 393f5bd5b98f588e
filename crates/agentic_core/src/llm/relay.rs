//! [`Relay`]: carries a streamed completion from a provider to everyone who
//! watches. Each chunk is published to live subscribers the moment it
//! arrives; the log gets the text coalesced (by size or time) from a
//! background appender, so streaming never waits for a disk commit; the
//! whole message is recorded when the completion ends. A token budget is
//! enforced while the stream flows, and a cancellation stops it at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ChatChunk, ChatMessage, ChatStream, LlmError, Role, ToolCall, Usage};
use crate::event::{NewEvent, SystemEvent};
use crate::orchestrator::LiveEvent;
use crate::store::{EventStore, ExpectedVersion, StoreError};

/// Tokens shared by every completion of one run: a top-level request and
/// everything that shares its correlation id (all the agents a pattern
/// starts). Each completion charges the tokens it generates as they stream.
#[derive(Debug)]
pub struct TokenBudget {
    limit: u64,
    used: AtomicU64,
}

impl TokenBudget {
    /// A budget of `limit` tokens for a run.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Tokens charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `tokens`; the total when that goes past the limit.
    fn charge(&self, tokens: u64) -> Result<(), u64> {
        let used = self.used.fetch_add(tokens, Ordering::Relaxed) + tokens;
        if used > self.limit { Err(used) } else { Ok(()) }
    }
}

/// How a completion is relayed.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Coalesced text is logged once it reaches this many bytes…
    pub coalesce_bytes: usize,
    /// …or this long after its first chunk, whichever comes first.
    pub coalesce_interval: Duration,
    /// Most tokens the completion may generate; it is stopped past this.
    pub budget_tokens: Option<u64>,
    /// The run's budget, shared with every other completion of the run.
    pub run_budget: Option<Arc<TokenBudget>>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            coalesce_bytes: 1024,
            coalesce_interval: Duration::from_millis(100),
            budget_tokens: None,
            run_budget: None,
        }
    }
}

/// Why a completion was stopped before it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// It generated more tokens than its budget.
    Budget {
        /// Tokens counted when it was stopped.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The run, all its agents together, generated more tokens than the
    /// run's budget.
    RunBudget {
        /// Tokens the run had used when this completion was stopped.
        used: u64,
        /// The run's budget.
        budget: u64,
    },
    /// It was cancelled.
    Cancelled,
    /// The provider failed mid-stream.
    Failed(LlmError),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Budget { used, budget } => {
                write!(f, "token budget exceeded ({used} tokens, budget {budget})")
            }
            Self::RunBudget { used, budget } => write!(
                f,
                "the run's token budget exceeded ({used} tokens, budget {budget})"
            ),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// How a relayed completion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// It finished.
    Finished {
        /// The assistant's message.
        message: ChatMessage,
        /// Tokens used (as the provider reported, or as counted).
        usage: Usage,
        /// Why it ended.
        finish_reason: Option<String>,
    },
    /// It was stopped.
    Stopped {
        /// Why.
        reason: StopReason,
        /// The text streamed before.
        partial: String,
        /// Tokens counted.
        tokens: u64,
    },
}

/// Relays completions into a store and a live channel.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn EventStore>,
    live: broadcast::Sender<LiveEvent>,
    correlation_id: Uuid,
}

impl Relay {
    /// A relay recording into `store` and publishing on `live`, with
    /// `correlation_id` on every event.
    pub fn new(
        store: Arc<dyn EventStore>,
        live: broadcast::Sender<LiveEvent>,
        correlation_id: Uuid,
    ) -> Self {
        Self {
            store,
            live,
            correlation_id,
        }
    }

    /// Relays `stream`, the completion `run_id` of `agent`, until it ends,
    /// exceeds its budget, fails, or `cancel` fires; returns how it ended
    /// once its events are committed.
    pub async fn relay(
        &self,
        agent: &str,
        run_id: Uuid,
        mut stream: ChatStream,
        options: RelayOptions,
        cancel: CancellationToken,
    ) -> Result<RelayOutcome, StoreError> {
        let appender = Appender::start(self.store.clone());
        let mut text = String::new();
        let mut pending = String::new();
        let mut flush_at: Option<Instant> = None;
        let mut calls: BTreeMap<u32, ToolCall> = BTreeMap::new();
        let mut counted = 0u64;
        let mut charged = 0u64;
        let mut usage: Option<Usage> = None;
        let mut finish_reason = None;
        let delta = |text: String| SystemEvent::LlmDelta {
            agent: agent.to_owned(),
            run_id,
            text,
        };
        let stopped = loop {
            let flush_due = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Some(StopReason::Cancelled),
                () = flush_due => {
                    appender.send(self.new_event(delta(std::mem::take(&mut pending))));
                    flush_at = None;
                }
                item = stream.next() => match item {
                    None => break None,
                    Some(Err(e)) => break Some(StopReason::Failed(e)),
                    Some(Ok(ChatChunk::Text(t))) => {
                        counted += 1;
                        // Live first: no subscriber waits for the log.
                        let _ = self.live.send(LiveEvent { seq: None, event: delta(t.clone()) });
                        text.push_str(&t);
                        pending.push_str(&t);
                        if pending.len() >= options.coalesce_bytes {
                            appender.send(self.new_event(delta(std::mem::take(&mut pending))));
                            flush_at = None;
                        } else if flush_at.is_none() {
                            flush_at = Some(Instant::now() + options.coalesce_interval);
                        }
                    }
                    Some(Ok(ChatChunk::ToolCallDelta { index, id, name, arguments })) => {
                        counted += 1;
                        let call = calls.entry(index).or_insert_with(|| ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        });
                        if let Some(id) = id {
                            call.id = id;
                        }
                        if let Some(name) = name {
                            call.name.push_str(&name);
                        }
                        call.arguments.push_str(&arguments);
                    }
                    Some(Ok(ChatChunk::Usage(u))) => usage = Some(u),
                    Some(Ok(ChatChunk::Finished(reason))) => finish_reason = reason,
                },
            }
            let used = usage.map_or(counted, |u| u.completion_tokens.max(counted));
            if let Some(run) = &options.run_budget
                && used > charged
            {
                let result = run.charge(used - charged);
                charged = used;
                if let Err(total) = result {
                    break Some(StopReason::RunBudget {
                        used: total,
                        budget: run.limit,
                    });
                }
            }
            if let Some(budget) = options.budget_tokens
                && used > budget
            {
                break Some(StopReason::Budget { used, budget });
            }
        };
        // Dropping the stream cancels the provider's request.
        drop(stream);
        if !pending.is_empty() {
            appender.send(self.new_event(delta(pending)));
        }
        let tokens = usage.map_or(counted, |u| u.completion_tokens.max(counted));
        let (event, outcome) = match stopped {
            Some(reason) => (
                SystemEvent::LlmStopped {
                    agent: agent.to_owned(),
                    run_id,
                    reason: reason.to_string(),
                    partial: text.clone(),
                    tokens,
                },
                RelayOutcome::Stopped {
                    reason,
                    partial: text,
                    tokens,
                },
            ),
            None => {
                let message = ChatMessage {
                    role: Role::Assistant,
                    content: text,
                    tool_calls: calls.into_values().collect(),
                    tool_call_id: None,
                };
                let usage = usage.unwrap_or(Usage {
                    prompt_tokens: 0,
                    completion_tokens: counted,
                });
                (
                    SystemEvent::LlmFinished {
                        agent: agent.to_owned(),
                        run_id,
                        message: message.clone(),
                        usage,
                        finish_reason: finish_reason.clone(),
                    },
                    RelayOutcome::Finished {
                        message,
                        usage,
                        finish_reason,
                    },
                )
            }
        };
        let _ = self.live.send(LiveEvent {
            seq: None,
            event: event.clone(),
        });
        appender.send(self.new_event(event));
        appender.finish().await?;
        Ok(outcome)
    }

    fn new_event(&self, event: SystemEvent) -> NewEvent {
        NewEvent::new(event, self.correlation_id)
    }
}

/// Appends events in order on a task of its own, so the relay never waits
/// for a commit until the end.
struct Appender {
    tx: mpsc::UnboundedSender<NewEvent>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Appender {
    fn start(store: Arc<dyn EventStore>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<NewEvent>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                store.append(batch, ExpectedVersion::Any).await?;
            }
            Ok(())
        });
        Self { tx, task }
    }

    fn send(&self, event: NewEvent) {
        // The task only stops early on an append error, which `finish` reports.
        let _ = self.tx.send(event);
    }

    /// Waits until everything sent is committed.
    async fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| StoreError::Backend(format!("the LLM event appender failed: {e}")))?
    }
}
