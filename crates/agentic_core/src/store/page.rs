//! The shapes of the store's paged reads: a [`Cursor`] saying where a page
//! starts, the [`Page`] that comes back, and the views of agents and tasks
//! those reads return. Reads cost what their page holds, never the size of
//! the log.

use serde::{Deserialize, Serialize};

use crate::llm::AgentRecord;

/// Where a page of a list starts: just after the item a previous page ended
/// at. Opaque: only the store that gave it knows what it points at, and it
/// stays valid as the list grows (new items come after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub u64);

impl Cursor {
    /// The start of a list.
    pub const START: Cursor = Cursor(0);
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Cursor)
    }
}

/// One page of a list, in the list's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, at most as many as asked for.
    pub items: Vec<T>,
    /// Where the next page starts; `None` when this page ends the list.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page made from a read of up to `limit + 1` rows, each with its
    /// position in the list: the extra row, if there is one, only proves
    /// that the list goes on, and the next page starts after the last row
    /// kept.
    pub fn from_rows(mut rows: Vec<(u64, T)>, limit: usize) -> Self {
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(position, _)| Cursor(*position))
        } else {
            None
        };
        Self {
            items: rows.into_iter().map(|(_, item)| item).collect(),
            next,
        }
    }
}

/// Which tasks (or workflow runs) a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskFilter {
    /// Every one, in submission (start) order.
    #[default]
    All,
    /// Only those that have not ended (pending or running): what a kernel
    /// takes over when it starts.
    Unfinished,
}

/// An agent as a paged read returns it: its record with one page of its
/// conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The agent; its `messages` hold only the page asked for.
    pub record: AgentRecord,
    /// How many messages its whole conversation holds.
    pub message_count: u64,
    /// Where the next page of messages starts; `None` when this page holds
    /// the last one.
    pub next: Option<Cursor>,
}
