//! One completion as it is relayed: what streamed so far, the text waiting
//! for the log, and a step for each thing the relay's loop reacts to — a
//! chunk of text, a piece of a tool call, a usage report, the provider's
//! finish, the coalescing timer — then its end.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::appender::Appender;
use super::limits::{Count, Limits, Verdict, floor_char_boundary};
use super::{Relay, RelayOptions, RelayOutcome, StopReason};
use crate::event::SystemEvent;
use crate::llm::{ChatMessage, Role, ToolCall, Usage};
use crate::orchestrator::LiveEvent;
use crate::store::StoreError;

/// A completion being relayed.
pub(super) struct Completion<'a> {
    relay: &'a Relay,
    agent: &'a str,
    run_id: Uuid,
    limits: Limits<'a>,
    /// Coalesced text is logged once it reaches this many bytes…
    coalesce_bytes: usize,
    /// …or this long after its first chunk.
    coalesce_interval: Duration,
    appender: Appender,
    /// The answer's text so far.
    text: String,
    /// Text published but not handed to the appender yet.
    pending: String,
    /// When `pending` is due for the log.
    flush_at: Option<Instant>,
    /// The tool calls so far, by index.
    calls: BTreeMap<u32, ToolCall>,
    count: Count,
    /// Tokens charged to the run's budget so far.
    charged: u64,
    /// The provider's last usage report.
    usage: Option<Usage>,
    /// Why the provider says it finished.
    finish_reason: Option<String>,
}

impl<'a> Completion<'a> {
    /// The completion `run_id` of `agent`, relayed by `relay` with `options`;
    /// starts its appender.
    pub(super) fn new(
        relay: &'a Relay,
        agent: &'a str,
        run_id: Uuid,
        options: &'a RelayOptions,
    ) -> Self {
        Self {
            relay,
            agent,
            run_id,
            limits: Limits {
                budget: options.budget_tokens,
                run: options.run_budget.as_deref(),
                max_bytes: options.max_answer_bytes,
            },
            coalesce_bytes: options.coalesce_bytes,
            coalesce_interval: options.coalesce_interval,
            appender: Appender::start(relay.store.clone()),
            text: String::new(),
            pending: String::new(),
            flush_at: None,
            calls: BTreeMap::new(),
            count: Count::default(),
            charged: 0,
            usage: None,
            finish_reason: None,
        }
    }

    /// Resolves when the pending text is due for the log; never while none
    /// waits.
    pub(super) fn flush_due(&self) -> impl Future<Output = ()> + use<> {
        let flush_at = self.flush_at;
        async move {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Hands the pending text to the appender if it has room; else keeps
    /// it, to go with more in one delta once the store catches up.
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            self.flush_at = None;
        } else if let Some(slot) = self.appender.slot() {
            let text = std::mem::take(&mut self.pending);
            slot.send(self.relay.new_event(self.delta(text)));
            self.flush_at = None;
        } else {
            self.flush_at = Some(Instant::now() + self.coalesce_interval);
        }
    }

    /// A chunk of text: what fits the limits is published at once and
    /// waits for the log.
    pub(super) fn text(&mut self, mut text: String) -> Verdict {
        let verdict = self.limits.take(&mut self.count, text.len(), self.charged);
        text.truncate(floor_char_boundary(&text, verdict.keep));
        if !text.is_empty() {
            // Live first: no subscriber waits for the log.
            let _ = self.relay.live.send(LiveEvent {
                seq: None,
                event: self.delta(text.clone()),
                kernel: None,
            });
            self.text.push_str(&text);
            self.pending.push_str(&text);
            if self.pending.len() >= self.coalesce_bytes {
                self.flush();
            } else if self.flush_at.is_none() {
                self.flush_at = Some(Instant::now() + self.coalesce_interval);
            }
        }
        verdict
    }

    /// A piece of the tool call `index`: added to it if it fits the limits.
    pub(super) fn tool_call(
        &mut self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) -> Verdict {
        let size = arguments.len()
            + name.as_ref().map_or(0, String::len)
            + id.as_ref().map_or(0, String::len);
        let verdict = self.limits.take(&mut self.count, size, self.charged);
        // A call is only ever run whole: a refused piece stops the
        // completion, and its calls with it.
        if verdict.stop.is_none() {
            let call = self.calls.entry(index).or_insert_with(|| ToolCall {
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

    /// The provider's usage report: its count of tokens stands if larger.
    pub(super) fn usage(&mut self, usage: Usage) -> Verdict {
        self.usage = Some(usage);
        self.count.reported = usage.completion_tokens;
        self.limits.check(&self.count, self.charged)
    }

    /// The provider says why the completion finished.
    pub(super) fn finished(&mut self, reason: Option<String>) {
        self.finish_reason = reason;
    }

    /// Charges the run's budget with the tokens counted since the last
    /// charge; the stop if another completion of the run took the room
    /// meanwhile.
    pub(super) fn charge_run(&mut self) -> Option<StopReason> {
        let used = self.count.tokens();
        if let Some(run) = self.limits.run
            && used > self.charged
        {
            let result = run.charge(used - self.charged);
            self.charged = used;
            if let Err(total) = result {
                return Some(StopReason::RunBudget {
                    used: total,
                    budget: run.limit,
                });
            }
        }
        None
    }

    /// Ends the completion, stopped or (`None`) finished: charges the run
    /// what the provider generated, logs the pending text and the end,
    /// publishes the end, and waits for every event to be committed.
    pub(super) async fn end(
        mut self,
        stopped: Option<StopReason>,
    ) -> Result<RelayOutcome, StoreError> {
        if let Some(run) = self.limits.run
            && self.count.tokens() > self.charged
        {
            // What the provider generated past the limit is spent all the same.
            let _ = run.charge(self.count.tokens() - self.charged);
        }
        if !self.pending.is_empty() {
            let text = std::mem::take(&mut self.pending);
            self.appender
                .send(self.relay.new_event(self.delta(text)))
                .await;
        }
        let (event, outcome) = self.outcome(stopped);
        let _ = self.relay.live.send(LiveEvent {
            seq: None,
            event: event.clone(),
            kernel: None,
        });
        self.appender.send(self.relay.new_event(event)).await;
        self.appender.finish().await?;
        Ok(outcome)
    }

    /// The event that records how the completion ended, and the outcome.
    fn outcome(&mut self, stopped: Option<StopReason>) -> (SystemEvent, RelayOutcome) {
        let agent = self.agent.to_owned();
        let run_id = self.run_id;
        let text = std::mem::take(&mut self.text);
        let tokens = self.count.tokens();
        match stopped {
            Some(reason) => (
                SystemEvent::LlmStopped {
                    agent,
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
                    tool_calls: std::mem::take(&mut self.calls).into_values().collect(),
                    tool_call_id: None,
                };
                let usage = self.usage.unwrap_or(Usage {
                    prompt_tokens: 0,
                    completion_tokens: tokens,
                });
                let finish_reason = self.finish_reason.take();
                (
                    SystemEvent::LlmFinished {
                        agent,
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
        }
    }

    /// A delta event carrying `text`.
    fn delta(&self, text: String) -> SystemEvent {
        SystemEvent::LlmDelta {
            agent: self.agent.to_owned(),
            run_id: self.run_id,
            text,
        }
    }
}
