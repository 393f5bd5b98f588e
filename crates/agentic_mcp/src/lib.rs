//! MCP tool servers as lion plugins: the subprocess adapter of the
//! kernel's `Sandbox` port. A server is started in `agentic_jail`, spoken
//! to over stdio with `rmcp` (the official Rust MCP SDK), and each of its
//! tools becomes a plugin function.
pub mod registry;
