//! MCP tool servers as lion plugins: the subprocess adapter of the
//! kernel's `ServerSandbox` port. A server is started in `agentic_jail`, spoken
//! to over stdio with `rmcp` (the official Rust MCP SDK), and each of its
//! tools becomes a plugin function.
//!
//! - [`session`]: one client session over the server's stdout/stdin, with
//!   deadlines, bounded input, roots offered and sampling/elicitation
//!   refused;
//! - [`names`]: MCP tool names ↔ lion function names, recorded in a table;
//! - [`output`]: a tool result → lion output JSON, `isError` → a typed
//!   error, and a tool's schemas as the function's;
//! - [`registry`]: installing servers from npm and PyPI, pinned, and the
//!   tree hash of an installed server, checked before each start;
//! - [`sandbox`]: [`ProcessSandbox`], the adapter of the kernel's
//!   `ServerSandbox` port; `launch` builds a server's jail and session,
//!   `warm` keeps one server running for calls;
//! - [`expose`]: the other direction — lion's plugin functions offered as
//!   MCP tools ([`PluginTools`]), to IDEs and other agents;
//! - [`forward`]: a server's `host:HOST:PORT` grants — a listener lion
//!   holds in the jail's network namespace per host, the name mapped to it
//!   inside, and each connection forwarded after lion's own checks.

pub mod expose;
pub mod forward;
mod launch;
pub mod names;
pub mod output;
pub mod registry;
mod sandbox;
pub mod session;
mod warm;

pub use expose::{Exposure, ExposureError, Naming, PluginTools};
pub use forward::{Forward, NetworkPlan};
pub use names::{NameError, NameTable};
pub use output::{FunctionSchemas, ToolError, function_schemas, tool_output};
pub use sandbox::ProcessSandbox;
pub use session::{McpSession, Refusal, ServerIdentity, SessionConfig, SessionError};
