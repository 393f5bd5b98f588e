//! The mapping between an MCP server's tool names and lion function names.
//!
//! MCP tool names are the server's to choose: they may hold dots, slashes,
//! spaces or any unicode, and be of any length. lion calls a function
//! `PLUGIN.FUNCTION` and the agent runner offers it to a model as
//! `PLUGIN__FUNCTION` (`agentic_core::llm::tool_name`), which OpenAI-style
//! providers only accept within `^[a-zA-Z0-9_-]{1,64}$`. So each tool gets a
//! function name of at most [`MAX_FUNCTION_NAME`] characters of
//! `[A-Za-z0-9_-]`:
//!
//! - a tool name that already is one is kept as it is (`echo`,
//!   `get_current_time`, `trigger-long-running-operation`);
//! - any other name is *sanitized* (each other character becomes `_`), cut
//!   to leave room, and ends with `-` and the first [`HASH_HEX`] hex digits
//!   of the SHA-256 of the exact MCP name (`files/read.v2` →
//!   `files_read_v2-1a2b3c4d`). An empty readable part becomes `tool`.
//!
//! The result is recorded in a [`NameTable`], which reads back both ways:
//! the function name a model calls → the exact MCP name sent in
//! `tools/call`. Names are decided for the whole tool list at once, so the
//! table is collision-free even when a server names a tool after another
//! tool's hashed form, or two hashes meet: the plain or first (in MCP-name
//! order) claimant keeps the name, every other one is hashed again with a
//! counter until it is unique. A tool's name depends only on its own MCP
//! name unless such a collision happens, and never on the order the server
//! listed the tools in.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest lion function name made from an MCP tool name. 40 leaves the
/// agent runner's `PLUGIN__FUNCTION` within the 64 characters providers
/// accept for plugin names of up to 22 characters, so those read plainly;
/// longer plugin names still work (the runner hashes the pair).
pub const MAX_FUNCTION_NAME: usize = 40;

/// Hex digits of SHA-256 that end a function name that could not keep its
/// MCP name: 32 bits tell a server's tools apart by chance but for about
/// one pair in 2^16 among 2^8 tools, and [`NameTable::build`] resolves such
/// a meeting rather than trusting chance, so readability wins over length.
pub const HASH_HEX: usize = 8;

/// The most tools one table maps; a server listing more is refused by the
/// session before it gets here (`session::MAX_TOOLS`), this bounds the
/// rehash loop and the table on its own.
pub const MAX_TABLE_TOOLS: usize = 4096;

/// Why a tool list cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The server listed two tools under one name, so a call could not say
    /// which it means.
    #[error("the server lists the tool {0:?} twice")]
    Duplicate(String),
    /// A recorded table names a function lion would not have made.
    #[error(
        "the recorded function name {0:?} is not 1 to {MAX_FUNCTION_NAME} characters of [A-Za-z0-9_-]"
    )]
    InvalidRecorded(String),
    /// More tools than [`MAX_TABLE_TOOLS`].
    #[error("{count} tools is more than the {MAX_TABLE_TOOLS} one plugin may map")]
    TooMany {
        /// How many tools were offered.
        count: usize,
    },
}

/// Whether `name` is a function name lion accepts for an MCP tool:
/// 1 to [`MAX_FUNCTION_NAME`] characters of `[A-Za-z0-9_-]`.
pub fn is_valid_function_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_FUNCTION_NAME && name.bytes().all(allowed)
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The function name `mcp_name` gets when nothing else in its table claims
/// it: itself when valid, else the sanitized, shortened name with a hash of
/// the exact MCP name.
pub fn candidate(mcp_name: &str) -> String {
    if is_valid_function_name(mcp_name) {
        return mcp_name.to_owned();
    }
    hashed(mcp_name, 0)
}

/// `READABLE-HASH` for `mcp_name`, the hash salted with `round` when the
/// plain hash was taken (round 0 is unsalted).
fn hashed(mcp_name: &str, round: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(mcp_name.as_bytes());
    if round > 0 {
        // A NUL cannot end a name and a decimal round, so salted inputs
        // never equal another tool's unsalted one.
        hasher.update([0]);
        hasher.update(round.to_string().as_bytes());
    }
    let hash = &hex::encode(hasher.finalize())[..HASH_HEX];
    let keep = MAX_FUNCTION_NAME - HASH_HEX - 1;
    let mut readable: String = mcp_name
        .chars()
        .map(|c| {
            if c.is_ascii() && allowed(c as u8) {
                c
            } else {
                '_'
            }
        })
        .take(keep)
        .collect();
    if readable.is_empty() {
        readable.push_str("tool");
    }
    format!("{readable}-{hash}")
}

/// The recorded mapping of one server's tools: function name ↔ MCP name.
///
/// Serializes as `{"functions": {FUNCTION: MCP_NAME, ...}}` so the registry
/// can keep it with the plugin and read it back without re-deriving it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTable {
    /// Function name → exact MCP tool name.
    functions: BTreeMap<String, String>,
    /// MCP tool name → function name (derived; not serialized).
    #[serde(skip)]
    tools: BTreeMap<String, String>,
}

impl NameTable {
    /// Maps every tool name of one server. Deterministic: the same set of
    /// names (in any order) gives the same table.
    pub fn build<'a>(mcp_names: impl IntoIterator<Item = &'a str>) -> Result<Self, NameError> {
        let mut names = BTreeSet::new();
        let mut count = 0usize;
        for name in mcp_names {
            count += 1;
            if count > MAX_TABLE_TOOLS {
                return Err(NameError::TooMany { count });
            }
            if !names.insert(name) {
                return Err(NameError::Duplicate(name.to_owned()));
            }
        }
        // Who claims each candidate name, in MCP-name order.
        let mut claims: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for &name in &names {
            claims.entry(candidate(name)).or_default().push(name);
        }
        let mut functions = BTreeMap::new();
        let mut losers = Vec::new();
        for (function, claimants) in &claims {
            // A tool whose own name is the candidate keeps it; else the
            // first in order does.
            let winner = claimants
                .iter()
                .copied()
                .find(|n| n == function)
                .unwrap_or(claimants[0]);
            functions.insert(function.clone(), winner.to_owned());
            losers.extend(claimants.iter().copied().filter(|n| *n != winner));
        }
        // Losers are rehashed only once every first choice is placed, so a
        // rehash never takes a name another tool would have had on its own.
        for name in losers {
            let function = (1u32..)
                .map(|round| hashed(name, round))
                .find(|f| !functions.contains_key(f))
                .unwrap_or_else(|| unreachable!("an unbounded range always yields a free name"));
            functions.insert(function, name.to_owned());
        }
        Ok(Self::from_functions(functions))
    }

    fn from_functions(functions: BTreeMap<String, String>) -> Self {
        let tools = functions
            .iter()
            .map(|(f, t)| (t.clone(), f.clone()))
            .collect();
        Self { functions, tools }
    }

    /// The exact MCP tool name behind lion function `function`.
    pub fn mcp_name(&self, function: &str) -> Option<&str> {
        self.functions.get(function).map(String::as_str)
    }

    /// The lion function name of MCP tool `mcp_name`.
    pub fn function_name(&self, mcp_name: &str) -> Option<&str> {
        self.tools.get(mcp_name).map(String::as_str)
    }

    /// Every (function name, MCP name) pair, by function name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.functions.iter().map(|(f, t)| (f.as_str(), t.as_str()))
    }

    /// How many tools the table maps.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether the table maps no tool.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Rebuilds the reverse index after deserializing; a recorded table
    /// whose names are invalid or map one MCP name twice is refused.
    pub fn validated(self) -> Result<Self, NameError> {
        let mut seen = BTreeSet::new();
        for (function, tool) in &self.functions {
            if !is_valid_function_name(function) {
                return Err(NameError::InvalidRecorded(function.clone()));
            }
            if !seen.insert(tool.as_str()) {
                return Err(NameError::Duplicate(tool.clone()));
            }
        }
        Ok(Self::from_functions(self.functions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept() {
        for name in ["echo", "get_current_time", "trigger-long-running-operation"] {
            assert_eq!(candidate(name), name);
        }
        let t = NameTable::build(["echo", "get-sum"]).unwrap();
        assert_eq!(t.function_name("echo"), Some("echo"));
        assert_eq!(t.mcp_name("get-sum"), Some("get-sum"));
    }

    #[test]
    fn dotted_unicode_long_and_empty_names_are_sanitized_with_a_hash() {
        let dotted = candidate("files/read.v2");
        assert!(dotted.starts_with("files_read_v2-"), "{dotted}");
        assert_eq!(dotted.len(), "files_read_v2-".len() + HASH_HEX);
        let uni = candidate("météo");
        assert!(uni.starts_with("m_t_o-"), "{uni}");
        let long = candidate(&"a".repeat(100));
        assert_eq!(long.len(), MAX_FUNCTION_NAME);
        assert!(candidate("").starts_with("tool-"));
        assert!(candidate("…").starts_with("_-"));
        for n in [dotted, uni, long] {
            assert!(is_valid_function_name(&n), "{n}");
        }
    }

    #[test]
    fn a_tool_named_after_anothers_hash_does_not_collide() {
        let hashed_form = candidate("a.b");
        let t = NameTable::build(["a.b", hashed_form.as_str()]).unwrap();
        // The tool literally named so keeps its name; `a.b` is rehashed.
        assert_eq!(t.function_name(&hashed_form), Some(hashed_form.as_str()));
        let other = t.function_name("a.b").unwrap();
        assert_ne!(other, hashed_form);
        assert!(is_valid_function_name(other));
        assert_eq!(t.mcp_name(other), Some("a.b"));
    }

    #[test]
    fn duplicates_and_too_many_are_refused() {
        assert_eq!(
            NameTable::build(["x", "y", "x"]),
            Err(NameError::Duplicate("x".into()))
        );
        let many: Vec<String> = (0..=MAX_TABLE_TOOLS).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            NameTable::build(many.iter().map(String::as_str)),
            Err(NameError::TooMany { .. })
        ));
    }

    #[test]
    fn the_table_round_trips_through_json() {
        let t = NameTable::build(["a.b", "c", "d/e"]).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        let back: NameTable = serde_json::from_str(&json).unwrap();
        let back = back.validated().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.function_name("d/e"), t.function_name("d/e"));
    }
}
