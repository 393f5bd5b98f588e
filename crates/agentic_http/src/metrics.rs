//! `/metrics`: the server and its kernel in the Prometheus text format
//! (prometheus-client), for a scraper holding the token.
//!
//! - `lion_http_requests_total{method,route,status}` and
//!   `lion_http_request_duration_seconds{method,route}`: every request,
//!   refused ones included; `route` is the matched pattern
//!   (`/tasks/{id}`), so the label set stays bounded.
//! - `lion_events_committed_total` and `lion_commit_groups_total`: what
//!   this process's writer committed, and in how many transactions.
//! - `lion_tasks{state}`: unfinished tasks (pending, running) as the log
//!   has them at the scrape; `lion_tasks_ended_total{state}`: tasks that
//!   ended since the server started.
//! - `lion_plugin_calls_total{plugin,outcome}` and
//!   `lion_plugin_denials_total{plugin}`: plugin calls and permission
//!   denials since the server started.
//! - `lion_llm_chunks_streamed_total` and `lion_llm_tokens_total{kind}`:
//!   answer chunks streamed live, and tokens the providers reported.
//!
//! Counts "since the server started" come from the committed events the
//! server's feed sees (any process's: a `lion plugin call` beside the
//! server counts too).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentic_core::{Cursor, EventEnvelope, SystemEvent, TaskFilter, TaskStatus};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::problem::Problem;
use crate::{AppState, CommitsFn};

/// Labels as name/value pairs.
type Labels = Vec<(&'static str, String)>;

/// Unfinished tasks read per page at a scrape.
const SCRAPE_PAGE: usize = 1000;

/// Most unfinished tasks a scrape counts: beyond this the gauge says this
/// many, and a scrape stays cheap whatever the backlog.
const SCRAPE_MAX_TASKS: usize = 100_000;

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    events: Counter,
    groups: Counter,
    tasks: Family<Labels, Gauge>,
    ended: Family<Labels, Counter>,
    plugin_calls: Family<Labels, Counter>,
    denials: Family<Labels, Counter>,
    chunks: Counter,
    tokens: Family<Labels, Counter>,
    /// The writer's totals at the last scrape, for the counters' increments.
    last_commits: Mutex<(u64, u64)>,
    commits: Option<CommitsFn>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    /// A registry with every metric at zero; `commits` reads the writer's
    /// totals (none for a store that keeps none).
    pub fn new(commits: Option<CommitsFn>) -> Self {
        let mut registry = Registry::with_prefix("lion");
        let requests = Family::<Labels, Counter>::default();
        let durations =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let (events, groups, chunks) = (Counter::default(), Counter::default(), Counter::default());
        let tasks = Family::<Labels, Gauge>::default();
        let ended = Family::<Labels, Counter>::default();
        let plugin_calls = Family::<Labels, Counter>::default();
        let denials = Family::<Labels, Counter>::default();
        let tokens = Family::<Labels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to its first byte for a stream)",
            durations.clone(),
        );
        registry.register(
            "events_committed",
            "Events this process committed",
            events.clone(),
        );
        registry.register(
            "commit_groups",
            "Transactions this process's writer committed",
            groups.clone(),
        );
        registry.register("tasks", "Unfinished tasks in the log", tasks.clone());
        registry.register(
            "tasks_ended",
            "Tasks that ended since the server started",
            ended.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin calls that ended",
            plugin_calls.clone(),
        );
        registry.register(
            "plugin_denials",
            "Permissions plugins were denied",
            denials.clone(),
        );
        registry.register(
            "llm_chunks_streamed",
            "Answer chunks streamed live",
            chunks.clone(),
        );
        registry.register(
            "llm_tokens",
            "Tokens the LLM providers reported",
            tokens.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            events,
            groups,
            tasks,
            ended,
            plugin_calls,
            denials,
            chunks,
            tokens,
            last_commits: Mutex::new((0, 0)),
            commits,
        }
    }

    /// Counts a committed event.
    pub fn committed(&self, envelope: &EventEnvelope) {
        let Ok(event) = envelope.decode() else { return };
        let label = |name: &'static str, value: &str| vec![(name, value.to_owned())];
        match &event {
            SystemEvent::TaskCompleted { .. } => {
                self.ended.get_or_create(&label("state", "completed")).inc();
            }
            SystemEvent::TaskFailed { is_final: true, .. } => {
                self.ended.get_or_create(&label("state", "failed")).inc();
            }
            SystemEvent::TaskTimedOut { is_final: true, .. } => {
                self.ended.get_or_create(&label("state", "timed_out")).inc();
            }
            SystemEvent::TaskCancelled { .. } => {
                self.ended.get_or_create(&label("state", "cancelled")).inc();
            }
            SystemEvent::PluginSucceeded { name, .. } => {
                let labels = vec![
                    ("plugin", name.clone()),
                    ("outcome", "succeeded".to_owned()),
                ];
                self.plugin_calls.get_or_create(&labels).inc();
            }
            SystemEvent::PluginFailed { name, .. } => {
                let labels = vec![("plugin", name.clone()), ("outcome", "failed".to_owned())];
                self.plugin_calls.get_or_create(&labels).inc();
            }
            SystemEvent::PluginPermissionDenied { name, .. } => {
                self.denials.get_or_create(&label("plugin", name)).inc();
            }
            SystemEvent::LlmFinished { usage, .. } => {
                self.tokens
                    .get_or_create(&label("kind", "prompt"))
                    .inc_by(usage.prompt_tokens);
                self.tokens
                    .get_or_create(&label("kind", "completion"))
                    .inc_by(usage.completion_tokens);
            }
            _ => {}
        }
    }

    /// Counts a chunk of an answer streamed live.
    pub fn chunk_streamed(&self) {
        self.chunks.inc();
    }

    /// The scrape's text, with the gauges read now.
    async fn render(&self, state: &AppState) -> Result<String, Problem> {
        if let Some(commits) = &self.commits {
            let (groups, events) = commits();
            let mut last = self.last_commits.lock().unwrap_or_else(|p| p.into_inner());
            self.groups.inc_by(groups.saturating_sub(last.0));
            self.events.inc_by(events.saturating_sub(last.1));
            *last = (groups, events);
        }
        let (mut pending, mut running, mut seen) = (0i64, 0i64, 0usize);
        let mut after = Cursor::START;
        loop {
            let page = state
                .kernel
                .store
                .tasks(TaskFilter::Unfinished, after, SCRAPE_PAGE)
                .await?;
            for task in &page.items {
                match task.status {
                    TaskStatus::Running => running += 1,
                    _ => pending += 1,
                }
            }
            seen += page.items.len();
            match page.next {
                Some(next) if seen < SCRAPE_MAX_TASKS => after = next,
                _ => break,
            }
        }
        self.tasks
            .get_or_create(&vec![("state", "pending".to_owned())])
            .set(pending);
        self.tasks
            .get_or_create(&vec![("state", "running".to_owned())])
            .set(running);
        let mut text = String::new();
        encode(&mut text, &self.registry).map_err(|e| Problem::internal(e.to_string()))?;
        Ok(text)
    }
}

/// The middleware counting and timing every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    let labels = vec![("method", method.clone()), ("route", route.clone())];
    metrics
        .durations
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    let labels = vec![
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// Longest a scrape waits for the event feed to count what is committed.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// A method as a label: the standard ones by name, any other as `other`,
/// so a client inventing methods cannot grow the label set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// `GET /metrics`: every event committed before the scrape is counted.
pub async fn scrape(State(state): State<AppState>) -> Result<Response, Problem> {
    let head = state.kernel.store.head().await?.seq;
    state.log.caught_up(head, CATCH_UP).await;
    let text = state.metrics.render(&state).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
