//! [`Relay`]: carries a streamed completion from a provider to everyone who
//! watches. Each chunk is published to live subscribers the moment it
//! arrives; the log gets the text coalesced (by size or time) from a
//! background appender, so streaming never waits for a disk commit; the
//! whole message is recorded when the completion ends. A token budget and a
//! bound on the answer's size are enforced while the stream flows (see
//! `limits`, which says how tokens are counted), and a cancellation stops
//! it at once.
//!
//! The appender's queue is bounded ([`RELAY_APPEND_QUEUE`]). When the store
//! falls behind, the relay keeps the text in one growing delta (bounded by
//! the answer's size bound) instead of queueing more events, so a slow store
//! neither stalls the live stream nor grows memory; the last delta and the
//! completion's end wait for room, so nothing is dropped.
//!
//! Its rooms: this file holds the options, the outcomes and the loop that
//! reacts to the stream; `completion` one completion's state with a step
//! for each thing the loop reacts to; `limits` the budgets and size bound;
//! `appender` the background appender.

mod appender;
mod completion;
mod limits;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use appender::RELAY_APPEND_QUEUE;
pub use limits::{BYTES_PER_TOKEN, TokenBudget};

use super::{ChatChunk, ChatMessage, ChatStream, DEFAULT_ANSWER_BYTES, LlmError, Usage};
use crate::event::{NewEvent, SystemEvent};
use crate::orchestrator::LiveEvent;
use crate::store::{EventStore, StoreError};
use completion::Completion;

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
        let mut completion = Completion::new(self, agent, run_id, &options);
        let stopped = loop {
            let verdict = tokio::select! {
                biased;
                () = cancel.cancelled() => break Some(StopReason::Cancelled),
                () = completion.flush_due() => {
                    completion.flush();
                    continue;
                }
                item = stream.next() => match item {
                    None => break None,
                    Some(Err(e)) => break Some(StopReason::Failed(e)),
                    Some(Ok(ChatChunk::Text(text))) => completion.text(text),
                    Some(Ok(ChatChunk::ToolCallDelta { index, id, name, arguments })) => {
                        completion.tool_call(index, id, name, arguments)
                    }
                    Some(Ok(ChatChunk::Usage(usage))) => completion.usage(usage),
                    Some(Ok(ChatChunk::Finished(reason))) => {
                        completion.finished(reason);
                        continue;
                    }
                },
            };
            if let Some(reason) = verdict.stop.or_else(|| completion.charge_run()) {
                break Some(reason);
            }
        };
        // Dropping the stream cancels the provider's request.
        drop(stream);
        completion.end(stopped).await
    }

    /// The event to append, with the relay's correlation id.
    fn new_event(&self, event: SystemEvent) -> NewEvent {
        NewEvent::new(event, self.correlation_id)
    }
}
