//! One module per command group; each takes parsed arguments and an open
//! store, and prints its result.

pub mod agent;
pub mod bench;
pub mod bench_dashboard;
pub mod bench_llm;
pub mod bench_model;
pub mod bench_plugins;
pub mod bench_runtime;
pub mod bench_scale;
pub mod bench_serve;
pub mod bench_shared;
pub mod bench_workflow;
pub mod demo;
pub mod element;
pub mod events;
pub mod kernel;
pub mod mcp;
pub mod model;
pub mod plugin;
pub mod plugin_package;
pub mod replay;
pub mod run;
pub mod serve;
pub mod store;
pub mod task;
pub mod workflow;

use uuid::Uuid;

/// What every command knows about the invocation it runs in.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Print JSON rather than tables.
    pub json: bool,
    /// Correlation id of this invocation: every event it causes carries it.
    pub correlation_id: Uuid,
}
