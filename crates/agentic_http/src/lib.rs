//! lion's HTTP server adapter: what `lion serve` puts in front of a running
//! kernel, so programs in any language reach it through protocols they
//! already speak.
//!
//! Modules, one job each:
//!
//! - [`access`] — who may call: the home's bearer token, browser sessions
//!   (an HttpOnly cookie and a CSRF token), and the `Host`/`Origin` checks
//!   that stop DNS rebinding.
//! - [`problem`] — errors as `application/problem+json`, with the status
//!   each kind of failure deserves.
//! - [`api`] — the REST API over the kernel: elements, tasks, agents,
//!   plugins, events, health and version, with the CLI's semantics.
//! - [`stream`] — the log as Server-Sent Events: every committed event from
//!   a sequence number on (the SSE id is the sequence), then live.
//! - [`openai`] — agents behind the OpenAI chat protocol (`/v1`).
//! - `/mcp` — the plugin functions the operator exposed, as MCP tools over
//!   streamable HTTP ([`agentic_mcp::PluginTools`]).
//! - [`openapi`] — the OpenAPI 3.1 document, derived from the handlers.
//! - [`assets`] — the static pages a browser loads without a token.
//! - [`tls`] — TLS for addresses other than loopback.
//! - [`metrics`] — `/metrics`, in the Prometheus text format.
//!
//! The binary (`agentic_cli`) picks the adapters, starts the kernel and
//! hands its parts to [`router`] as a [`Kernel`]; [`serve`] runs the router
//! on a listener until told to stop.

pub mod access;
pub mod api;
pub mod assets;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod problem;
pub mod stream;
pub mod timeline;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use agentic_core::llm::AgentSpec;
use agentic_core::plugin::PluginManager;
use agentic_core::{EventStore, Orchestrator};
use agentic_mcp::{Exposure, PluginTools};
use axum::Router;
use axum::serve::ListenerExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use access::{Access, AccessError, TOKEN_FILE, Token};
pub use problem::Problem;

/// The kernel's parts the server drives: the same ones `lion run` holds.
#[derive(Clone)]
pub struct Kernel {
    /// The home's event log.
    pub store: Arc<dyn EventStore>,
    /// Runs submitted tasks (plugin calls and agent runs among them).
    pub orchestrator: Orchestrator,
    /// Loads and calls plugins.
    pub plugins: PluginManager,
    /// The id every event this server records without a request of its own
    /// carries (the kernel's).
    pub correlation_id: Uuid,
    /// Where an agent with this spec would run, or why it cannot: the
    /// binary knows the providers.
    pub runs_on: RunsOn,
    /// The totals of the store's writer in this process, if it keeps them.
    pub commits: Option<CommitsFn>,
    /// The directory whose plugin manifests may be installed over HTTP
    /// (canonical); `None`: installing over HTTP is off.
    pub plugin_dir: Option<PathBuf>,
    /// Where the timeline's read model is kept (see [`timeline`]); `None`:
    /// in memory, rebuilt at each start.
    pub timeline_file: Option<PathBuf>,
}

/// (commit groups, events) a store's writer committed so far.
pub type CommitsFn = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// Where an agent would run (for people), or why it cannot.
pub type RunsOn = Arc<dyn Fn(&AgentSpec) -> Result<String, String> + Send + Sync>;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The kernel's parts.
    pub kernel: Kernel,
    /// The token and sessions requests are checked against.
    pub access: Arc<Access>,
    /// The log as a broadcast, for event streams.
    pub log: stream::LogFeed,
    /// Becomes true once the kernel has recovered its unfinished tasks;
    /// until then API requests get 503.
    pub ready: watch::Receiver<bool>,
    /// The agents answering a request through this server.
    pub runs: Arc<api::agents::Busy>,
    /// What `/metrics` reports.
    pub metrics: Arc<metrics::Metrics>,
    /// Elements answered recently (they never change).
    pub elements: Arc<api::elements::ElementCache>,
    /// The timeline's read model (filters, causes and effects).
    pub timeline: Arc<timeline::Timeline>,
}

/// The whole HTTP surface of `lion serve` for `kernel`: the API behind the
/// access checks, the OpenAPI document and the static pages. Event streams
/// end when `stopping` is cancelled (they would hold a graceful shutdown
/// open for ever).
pub fn router(
    kernel: Kernel,
    access: Arc<Access>,
    ready: watch::Receiver<bool>,
    stopping: CancellationToken,
    exposure: Exposure,
) -> Router {
    let tools = PluginTools::new(kernel.store.clone(), kernel.plugins.clone(), exposure);
    // Host and Origin are checked by the access guard in front of it, with
    // the operator's names: the service's own (loopback-only) check is off.
    let mcp = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_cancellation_token(stopping.child_token()),
    );
    let metrics = Arc::new(metrics::Metrics::new(kernel.commits.clone()));
    let timeline = open_timeline(kernel.timeline_file.as_deref());
    tokio::spawn(
        timeline
            .clone()
            .follow(kernel.store.clone(), stopping.child_token()),
    );
    let log = stream::LogFeed::start(
        kernel.store.clone(),
        kernel.orchestrator.clone(),
        metrics.clone(),
        stopping,
    );
    let state = AppState {
        kernel,
        access,
        log,
        ready,
        runs: Arc::default(),
        metrics,
        elements: Arc::default(),
        timeline,
    };
    api::routes(state, mcp)
}

/// The timeline's read model at `file`, or in memory if that cannot be
/// opened (it is a cache: the server works without its file).
fn open_timeline(file: Option<&std::path::Path>) -> Arc<timeline::Timeline> {
    let opened = timeline::Timeline::open(file).or_else(|e| {
        tracing::warn!(error = %e, "the timeline read model's file cannot be opened; kept in memory");
        timeline::Timeline::open(None)
    });
    match opened {
        Ok(t) => Arc::new(t),
        Err(e) => panic!("an in-memory SQLite database cannot be opened: {e}"),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; requests in
/// flight then finish. Connections send at once (`TCP_NODELAY`): a small
/// event of a stream must not wait for the client's delayed ACK.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// As [`serve`], over TLS.
pub async fn serve_tls(
    listener: tls::TlsListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
