//! `lion mcp serve`: the exposed plugin functions as MCP tools over stdio,
//! for an IDE or an agent that starts lion as its tool server.
//!
//! The protocol has stdout to itself; diagnostics go to stderr. The server
//! runs until the client closes stdin; every call goes through a plugin
//! manager of this process, in lion's sandbox, recorded in the home's log.

use std::path::Path;
use std::sync::Arc;

use agentic_core::{Durability, EventStore};
use agentic_mcp::{Exposure, Naming, PluginTools};
use anyhow::{Context, Result};
use rmcp::ServiceExt;

use super::{Ctx, plugin};
use crate::cli::McpExpose;

/// What `--expose` and `--bare-names` ask for.
pub fn exposure(args: &McpExpose) -> Result<Exposure> {
    let naming = if args.bare_names {
        Naming::Bare
    } else {
        Naming::Qualified
    };
    Ok(Exposure::parse(&args.expose, naming)?)
}

/// `lion mcp serve`.
pub async fn serve(
    home: &Path,
    open: impl AsyncFnOnce() -> Result<Arc<dyn EventStore>>,
    ctx: Ctx,
    args: &McpExpose,
) -> Result<()> {
    let exposure = exposure(args)?;
    if exposure.is_empty() {
        errln!("note: nothing is exposed, so no tool is offered (--expose PLUGIN[.FUNCTION])");
    }
    let store = open().await?;
    let plugins = plugin::manager(home, store.clone(), ctx, Durability::Durable)?;
    let store: Arc<dyn EventStore> = store;
    let tools = PluginTools::new(store, plugins.clone(), exposure);
    let running = tools
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not complete the handshake")?;
    let ended = running.waiting().await;
    // Calls a departing client dropped are recorded as cancelled.
    plugins.close().await;
    ended.context("the MCP session failed")?;
    Ok(())
}
