//! [`Relay`]: carries a streamed completion from a provider to everyone who
//! watches. Each chunk is published to live subscribers the moment it
//! arrives; the log gets the text coalesced (by size or time) from a
//! background appender, so streaming never waits for a disk commit; the
//! whole message is recorded when the completion ends. A token budget and a
//! bound on the answer's size are enforced while the stream flows, and a
//! cancellation stops it at once.
//!
//! Tokens are counted as they stream: the provider's usage when it reports
//! it (most report it only at the end), and until then an estimate from
//! what streamed ([`BYTES_PER_TOKEN`]); the larger of the two counts. The
//! piece of a chunk past a budget or the size bound is neither published
//! nor logged.
//!
//! The appender's queue is bounded ([`RELAY_APPEND_QUEUE`]). When the store
//! falls behind, the relay keeps the text in one growing delta (bounded by
//! the answer's size bound) instead of queueing more events, so a slow store
//! neither stalls the live stream nor grows memory; the last delta and the
//! completion's end wait for room, so nothing is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    ChatChunk, ChatMessage, ChatStream, DEFAULT_ANSWER_BYTES, LlmError, Role, ToolCall, Usage,
};
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

    /// Tokens left before the limit.
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// Charges `tokens`; the total when that goes past the limit.
    fn charge(&self, tokens: u64) -> Result<(), u64> {
        let used = self.used.fetch_add(tokens, Ordering::Relaxed) + tokens;
        if used > self.limit { Err(used) } else { Ok(()) }
    }
}

/// Bytes of streamed text per token, to estimate a completion's tokens
/// before (or without) the provider's usage: the usual rule of thumb for
/// English with BPE tokenizers (about four characters a token). Each chunk
/// counts as at least one token too, so a provider streaming a token a
/// chunk is counted exactly; one streaming huge chunks is counted by size.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Events a relay may have waiting for its appender. Past this the relay
/// coalesces harder (one growing delta) instead of queueing, so a slow
/// store bounds memory without stalling the live stream; the appender
/// takes everything waiting in one batch, so a few slots suffice.
pub const RELAY_APPEND_QUEUE: usize = 16;

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
    /// Most bytes of text and tool calls (arguments, names and ids) the
    /// completion may stream; it is stopped past this.
    pub max_answer_bytes: u64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            coalesce_bytes: 1024,
            coalesce_interval: Duration::from_millis(100),
            budget_tokens: None,
            run_budget: None,
            max_answer_bytes: DEFAULT_ANSWER_BYTES,
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
    /// It streamed more bytes of text and tool-call arguments than its
    /// answer may hold.
    AnswerTooLong {
        /// The bound, in bytes.
        limit: u64,
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
            Self::AnswerTooLong { limit } => write!(
                f,
                "answer too long: more than {limit} bytes of text and tool-call arguments"
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
        /// The text streamed before (what fitted the limits).
        partial: String,
        /// Tokens counted, the refused piece of the last chunk included.
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
    /// exceeds its budget or size bound, fails, or `cancel` fires; returns
    /// how it ended once its events are committed.
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
        let mut count = Count::default();
        let mut charged = 0u64;
        let mut usage: Option<Usage> = None;
        let mut finish_reason = None;
        let limits = Limits {
            budget: options.budget_tokens,
            run: options.run_budget.as_deref(),
            max_bytes: options.max_answer_bytes,
        };
        let delta = |text: String| SystemEvent::LlmDelta {
            agent: agent.to_owned(),
            run_id,
            text,
        };
        // Hands the coalesced text to the appender if it has room; else
        // keeps it, to go with more in one delta once the store catches up.
        let flush = |pending: &mut String, flush_at: &mut Option<Instant>| {
            if pending.is_empty() {
                *flush_at = None;
            } else if let Some(slot) = appender.slot() {
                slot.send(self.new_event(delta(std::mem::take(pending))));
                *flush_at = None;
            } else {
                *flush_at = Some(Instant::now() + options.coalesce_interval);
            }
        };
        let stopped = loop {
            let flush_due = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let verdict = tokio::select! {
                biased;
                () = cancel.cancelled() => break Some(StopReason::Cancelled),
                () = flush_due => {
                    flush(&mut pending, &mut flush_at);
                    continue;
                }
                item = stream.next() => match item {
                    None => break None,
                    Some(Err(e)) => break Some(StopReason::Failed(e)),
                    Some(Ok(ChatChunk::Text(mut t))) => {
                        let verdict = limits.take(&mut count, t.len(), charged);
                        t.truncate(floor_char_boundary(&t, verdict.keep));
                        if !t.is_empty() {
                            // Live first: no subscriber waits for the log.
                            let _ = self.live.send(LiveEvent { seq: None, event: delta(t.clone()) });
                            text.push_str(&t);
                            pending.push_str(&t);
                            if pending.len() >= options.coalesce_bytes {
                                flush(&mut pending, &mut flush_at);
                            } else if flush_at.is_none() {
                                flush_at = Some(Instant::now() + options.coalesce_interval);
                            }
                        }
                        verdict
                    }
                    Some(Ok(ChatChunk::ToolCallDelta { index, id, name, arguments })) => {
                        let size = arguments.len()
                            + name.as_ref().map_or(0, String::len)
                            + id.as_ref().map_or(0, String::len);
                        let verdict = limits.take(&mut count, size, charged);
                        // A call is only ever run whole: a refused piece
                        // stops the completion, and its calls with it.
                        if verdict.stop.is_none() {
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
                        verdict
                    }
                    Some(Ok(ChatChunk::Usage(u))) => {
                        usage = Some(u);
                        count.reported = u.completion_tokens;
                        limits.check(&count, charged)
                    }
                    Some(Ok(ChatChunk::Finished(reason))) => {
                        finish_reason = reason;
                        continue;
                    }
                },
            };
            if let Some(reason) = verdict.stop {
                break Some(reason);
            }
            let used = count.tokens();
            if let Some(run) = limits.run
                && used > charged
            {
                let result = run.charge(used - charged);
                charged = used;
                if let Err(total) = result {
                    // Another completion of the run took the room meanwhile.
                    break Some(StopReason::RunBudget {
                        used: total,
                        budget: run.limit,
                    });
                }
            }
        };
        // Dropping the stream cancels the provider's request.
        drop(stream);
        if let Some(run) = limits.run
            && count.tokens() > charged
        {
            // What the provider generated past the limit is spent all the same.
            let _ = run.charge(count.tokens() - charged);
        }
        if !pending.is_empty() {
            appender.send(self.new_event(delta(pending))).await;
        }
        let tokens = count.tokens();
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
                    completion_tokens: tokens,
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
        appender.send(self.new_event(event)).await;
        appender.finish().await?;
        Ok(outcome)
    }

    fn new_event(&self, event: SystemEvent) -> NewEvent {
        NewEvent::new(event, self.correlation_id)
    }
}

/// What a completion streamed so far, as the provider sent it (refused
/// pieces included), and what that counts as in tokens.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    /// Chunks of text or tool calls.
    chunks: u64,
    /// Their bytes.
    bytes: u64,
    /// Completion tokens the provider last reported.
    reported: u64,
}

impl Count {
    /// The tokens this counts as: the provider's figure or the estimate
    /// from what streamed, whichever is larger.
    fn tokens(&self) -> u64 {
        self.chunks
            .max(self.bytes.div_ceil(BYTES_PER_TOKEN))
            .max(self.reported)
    }
}

/// What the limits make of a piece that streamed.
struct Verdict {
    /// Bytes of the piece to keep.
    keep: usize,
    /// Why the completion stops here, if it does.
    stop: Option<StopReason>,
}

/// The limits of one completion.
struct Limits<'a> {
    budget: Option<u64>,
    run: Option<&'a TokenBudget>,
    max_bytes: u64,
}

impl Limits<'_> {
    /// Most tokens the completion may reach now: its own budget, and what
    /// the run has left on top of what this completion already charged.
    fn cap(&self, charged: u64) -> u64 {
        let run = self
            .run
            .map_or(u64::MAX, |r| charged.saturating_add(r.remaining()));
        self.budget.unwrap_or(u64::MAX).min(run)
    }

    /// Counts a piece of `len` bytes; keeps what fits, and says why the
    /// completion stops if the whole piece does not.
    fn take(&self, count: &mut Count, len: usize, charged: u64) -> Verdict {
        let before = *count;
        let len = len as u64;
        count.chunks += 1;
        count.bytes = count.bytes.saturating_add(len);
        let cap = self.cap(charged);
        let stop = self.stop_reason(count, charged);
        let keep = match stop {
            None => len,
            Some(_) => {
                // The most bytes the limits leave room for: the size bound,
                // and the budget's worth of bytes if one more chunk fits it.
                let by_tokens = match count.chunks.max(before.reported) <= cap {
                    true => cap.saturating_mul(BYTES_PER_TOKEN),
                    false => before.bytes,
                };
                self.max_bytes
                    .min(by_tokens)
                    .saturating_sub(before.bytes)
                    .min(len)
            }
        };
        Verdict {
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            stop,
        }
    }

    /// Whether `count` is within the limits (after a usage report).
    fn check(&self, count: &Count, charged: u64) -> Verdict {
        Verdict {
            keep: 0,
            stop: self.stop_reason(count, charged),
        }
    }

    /// Why `count` is past a limit, if it is: the completion's budget
    /// first, then the run's, then the size bound.
    fn stop_reason(&self, count: &Count, charged: u64) -> Option<StopReason> {
        let used = count.tokens();
        if let Some(budget) = self.budget
            && used > budget
        {
            return Some(StopReason::Budget { used, budget });
        }
        if let Some(run) = self.run
            && used > self.cap(charged)
        {
            return Some(StopReason::RunBudget {
                used: run.used() + (used - charged),
                budget: run.limit,
            });
        }
        (count.bytes > self.max_bytes).then_some(StopReason::AnswerTooLong {
            limit: self.max_bytes,
        })
    }
}

/// The largest index at most `at` that starts a character of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Appends events in order on a task of its own, so the relay never waits
/// for a commit until the end. Its queue holds [`RELAY_APPEND_QUEUE`]
/// events.
struct Appender {
    tx: mpsc::Sender<NewEvent>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Appender {
    fn start(store: Arc<dyn EventStore>) -> Self {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(RELAY_APPEND_QUEUE);
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

    /// Room for one more event, if the queue has it now.
    fn slot(&self) -> Option<mpsc::Permit<'_, NewEvent>> {
        // Closed only when the task stopped on an append error, which
        // `finish` reports.
        self.tx.try_reserve().ok()
    }

    /// Queues an event, waiting for room.
    async fn send(&self, event: NewEvent) {
        // The task only stops early on an append error, which `finish` reports.
        let _ = self.tx.send(event).await;
    }

    /// Waits until everything sent is committed.
    async fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| StoreError::Backend(format!("the LLM event appender failed: {e}")))?
    }
}
