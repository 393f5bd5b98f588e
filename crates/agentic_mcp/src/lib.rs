//! MCP tool servers as lion plugins: the subprocess adapter of the
//! kernel's `Sandbox` port. A server is started in `agentic_jail`, spoken
//! to over stdio with `rmcp` (the official Rust MCP SDK), and each of its
//! tools becomes a plugin function.
//!
//! - [`session`]: one client session over the server's stdout/stdin, with
//!   deadlines, bounded input, roots offered and sampling/elicitation
//!   refused;
//! - [`names`]: MCP tool names ↔ lion function names, recorded in a table;
//! - [`output`]: a tool result → lion output JSON, `isError` → a typed
//!   error, and a tool's schemas as the function's.

pub mod names;
pub mod output;
pub mod session;

pub use names::{NameError, NameTable};
pub use output::{FunctionSchemas, ToolError, function_schemas, tool_output};
pub use session::{McpSession, Refusal, ServerIdentity, SessionConfig, SessionError};
