//! The limits a relayed completion streams under: its token budget, the
//! run's shared [`TokenBudget`], and the bound on its answer's size.
//!
//! Tokens are counted as they stream: the provider's usage when it reports
//! it (most report it only at the end), and until then an estimate from
//! what streamed ([`BYTES_PER_TOKEN`]); the larger of the two counts. The
//! piece of a chunk past a budget or the size bound is neither published
//! nor logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StopReason;

/// Tokens shared by every completion of one run: a top-level request and
/// everything that shares its correlation id (all the agents a pattern
/// starts). Each completion charges the tokens it generates as they stream.
#[derive(Debug)]
pub struct TokenBudget {
    pub(super) limit: u64,
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
    pub(super) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// Charges `tokens`; the total when that goes past the limit.
    pub(super) fn charge(&self, tokens: u64) -> Result<(), u64> {
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

/// What a completion streamed so far, as the provider sent it (refused
/// pieces included), and what that counts as in tokens.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Count {
    /// Chunks of text or tool calls.
    chunks: u64,
    /// Their bytes.
    bytes: u64,
    /// Completion tokens the provider last reported.
    pub(super) reported: u64,
}

impl Count {
    /// The tokens this counts as: the provider's figure or the estimate
    /// from what streamed, whichever is larger.
    pub(super) fn tokens(&self) -> u64 {
        self.chunks
            .max(self.bytes.div_ceil(BYTES_PER_TOKEN))
            .max(self.reported)
    }
}

/// What the limits make of a piece that streamed.
pub(super) struct Verdict {
    /// Bytes of the piece to keep.
    pub(super) keep: usize,
    /// Why the completion stops here, if it does.
    pub(super) stop: Option<StopReason>,
}

/// The limits of one completion.
pub(super) struct Limits<'a> {
    /// The completion's own budget, in tokens.
    pub(super) budget: Option<u64>,
    /// The run's budget, shared with its other completions.
    pub(super) run: Option<&'a TokenBudget>,
    /// Most bytes of text and tool calls the answer may hold.
    pub(super) max_bytes: u64,
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
    pub(super) fn take(&self, count: &mut Count, len: usize, charged: u64) -> Verdict {
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
    pub(super) fn check(&self, count: &Count, charged: u64) -> Verdict {
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
pub(super) fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
