//! [`WarmServer`]: one server plugin loaded for calls — one jailed process
//! serving call after call (it keeps state between them), started again
//! on the next call after it died, stopped when idle or when the plugin is
//! unloaded (dropped). How it ended names each failed call: seccomp, a
//! limit, a timeout, a crash, with the tail of its stderr.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentic_core::plugin::{CallContext, CallFailure, FailureKind, LoadedPlugin, ServerLaunch};
use agentic_jail::ExitCause;
use async_trait::async_trait;
use serde_json::Value;

use crate::forward::CallIds;
use crate::launch::Running;
use crate::output::{ToolError, tool_output};
use crate::sandbox::{Compared, check_tree, compare};
use crate::session::SessionError;

/// What lion calls a function of the server: the MCP tool's exact name,
/// and whether it declares an output schema (then its structured content
/// is the output).
#[derive(Debug, Clone)]
pub struct Callable {
    /// The tool's MCP name.
    pub tool: String,
    /// Whether it declares an `outputSchema`.
    pub structured: bool,
}

/// A server plugin loaded for calls.
pub struct WarmServer {
    launch: ServerLaunch,
    /// The approved functions the running server offers, by lion's name
    /// (listed again at each start: a server may change what it offers).
    callable: Mutex<HashMap<String, Callable>>,
    /// The running server, if any (started on the first call after none).
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
    /// When the last call started or ended, to stop the server when idle.
    last_used: Arc<Mutex<Instant>>,
    /// Calls under way: a server is not idle while one runs.
    in_flight: AtomicUsize,
    /// The ids of the calls under way, to name the call a refused forward
    /// happened in.
    calls: CallIds,
}

impl WarmServer {
    /// A warm server for `launch`, already `running` (started with
    /// `calls`), offering `callable`.
    pub fn new(
        launch: ServerLaunch,
        callable: HashMap<String, Callable>,
        running: Running,
        calls: CallIds,
    ) -> Arc<Self> {
        let server = Arc::new(Self {
            launch,
            callable: Mutex::new(callable),
            running: tokio::sync::Mutex::new(Some(Arc::new(running))),
            last_used: Arc::new(Mutex::new(Instant::now())),
            in_flight: AtomicUsize::new(0),
            calls,
        });
        tokio::spawn(stop_when_idle(Arc::downgrade(&server)));
        server
    }

    /// The running server, started first if it is not running (then what
    /// it offers is listed again: tools it offers unapproved now are
    /// denials of `ctx`'s call, and not callable).
    async fn running(&self, ctx: &CallContext) -> Result<Arc<Running>, CallFailure> {
        let mut slot = self.running.lock().await;
        if let Some(running) = &*slot
            && !running.session.is_closed()
        {
            return Ok(running.clone());
        }
        if let Some(dead) = slot.take() {
            dead.stop().await;
        }
        // A start again checks the files as the first did: what runs is
        // what was installed.
        check_tree(&self.launch).await.map_err(|e| {
            CallFailure::new(
                FailureKind::LoadFailed,
                format!("the server was not started again: {e}"),
            )
        })?;
        let running = Arc::new(
            Running::start(&self.launch, self.calls.clone())
                .await
                .map_err(|e| {
                    CallFailure::new(
                        FailureKind::LoadFailed,
                        format!("the server could not be started again: {e}"),
                    )
                })?,
        );
        let tools = match running.session.list_tools().await {
            Ok(tools) => tools,
            Err(e) => {
                running.stop().await;
                return Err(CallFailure::new(
                    FailureKind::LoadFailed,
                    format!("the server started again did not list its tools: {e}"),
                ));
            }
        };
        let Compared {
            callable,
            unapproved,
        } = match compare(&self.launch.approved, &tools) {
            Ok(compared) => compared,
            Err(e) => {
                running.stop().await;
                return Err(CallFailure::new(FailureKind::LoadFailed, e.to_string()));
            }
        };
        for (function, why) in unapproved {
            ctx.deny(
                format!("tool {function}"),
                format!("{why}; not callable until the operator approves it"),
            );
        }
        *self.callable.lock().unwrap_or_else(PoisonError::into_inner) = callable;
        *slot = Some(running.clone());
        Ok(running)
    }

    /// Forgets `running` if it is still the current server, and stops it,
    /// saying `why` to the other calls it was serving.
    async fn drop_running(&self, running: &Arc<Running>, why: &str) {
        running.stopping_because(why);
        let mut slot = self.running.lock().await;
        if slot.as_ref().is_some_and(|r| Arc::ptr_eq(r, running)) {
            slot.take();
        }
        drop(slot);
        running.stop().await;
    }

    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

#[async_trait]
impl LoadedPlugin for WarmServer {
    async fn call(
        &self,
        function: &str,
        input: &str,
        ctx: Arc<CallContext>,
    ) -> Result<String, CallFailure> {
        let arguments: Value = serde_json::from_str(input)
            .map_err(|e| CallFailure::new(FailureKind::InvalidInput, e.to_string()))?;
        let limits = ctx.limits();
        self.touch();
        let in_flight = InFlight::enter(&self.in_flight);
        let call = self.calls.enter(ctx.call_id());
        // A (re)start is bounded by the server's own start_timeout_ms, and
        // is not cut short by a call: the call's deadline counts from when
        // its server is ready.
        let running = self.running(&ctx).await?;
        let timeout = Duration::from_millis(limits.timeout_ms);
        let callable = self
            .callable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(function)
            .cloned();
        let Some(callable) = callable else {
            // Refused, not denied: the operator has yet to approve it, and
            // calls of it do not count towards quarantine.
            let failure = CallFailure::new(
                FailureKind::Refused,
                format!(
                    "the server does not offer {function} as approved (it changed, or is \
                     new or gone, since the approval; `lion plugin approve {} --dry-run` shows what)",
                    self.launch.name
                ),
            );
            ctx.deny(format!("tool {function}"), "not approved");
            return Err(failure);
        };
        let result = running
            .session
            .call_tool(&callable.tool, arguments, timeout)
            .await;
        drop(call);
        drop(in_flight);
        self.touch();
        let result = match result {
            Ok(result) => result,
            Err(SessionError::Timeout { .. }) => {
                // A server that missed its deadline may be wedged, and
                // everything it started is killed with it.
                self.drop_running(&running, "another call it was serving timed out")
                    .await;
                return Err(CallFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "the tool did not answer within {} ms; the server was stopped",
                        limits.timeout_ms
                    ),
                ));
            }
            // The server answered with a JSON-RPC error: it is alive, and
            // the call was refused (bad arguments, unknown tool...).
            Err(SessionError::Server { message, .. }) => {
                return Err(CallFailure::new(
                    FailureKind::Refused,
                    running.redact(&message),
                ));
            }
            Err(e @ SessionError::ArgumentsNotObject(_)) => {
                return Err(CallFailure::new(FailureKind::InvalidInput, e.to_string()));
            }
            Err(e) => return Err(self.died(&running, &e).await),
        };
        let max = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
        match tool_output(result, callable.structured, max) {
            Ok(output) => Ok(output.to_string()),
            Err(ToolError::Reported { text, .. }) => Err(CallFailure::new(
                FailureKind::Refused,
                running.redact(&text),
            )),
            Err(e @ ToolError::TooLarge { .. }) => {
                Err(CallFailure::new(FailureKind::OutputLimit, e.to_string()))
            }
            Err(e) => Err(CallFailure::new(FailureKind::InvalidOutput, e.to_string())),
        }
    }
}

impl WarmServer {
    /// The failure of a call whose session broke (`error`). A server whose
    /// output closed is on its way out: how it ended (seccomp, a limit, an
    /// exit code) is waited for and named, with its stderr's tail. A server
    /// that broke the protocol while alive (a line over the cap, a line
    /// that is not JSON-RPC) is stopped by lion, and the failure says what
    /// it sent. Either way the next call starts it again.
    async fn died(&self, running: &Arc<Running>, error: &SessionError) -> CallFailure {
        // lion stopped it for another call's sake: not this call's fault.
        if let Some(why) = running.stopped_because() {
            return CallFailure::new(
                FailureKind::Cancelled,
                format!("the server was stopped while serving this call: {why}"),
            );
        }
        let gone = matches!(error, SessionError::ServerGone);
        let report = if gone {
            running.ended().await
        } else {
            // The other calls it serves fail as cancelled, saying why.
            running.stopping_because(&format!("it broke the protocol ({error})"));
            running.stop().await
        };
        {
            let mut slot = self.running.lock().await;
            if slot.as_ref().is_some_and(|r| Arc::ptr_eq(r, running)) {
                slot.take();
            }
        }
        let stderr = running.stderr_tail();
        let (kind, trap) = match error {
            SessionError::MessageTooLarge { .. } => (FailureKind::OutputLimit, None),
            SessionError::Malformed { .. } | SessionError::Protocol { .. } => {
                (FailureKind::InvalidOutput, None)
            }
            _ => match report.and_then(|r| r.cause) {
                Some(ExitCause::Seccomp) => (FailureKind::PermissionDenied, Some("seccomp")),
                Some(ExitCause::MemoryLimit) => (FailureKind::MemoryLimit, None),
                Some(ExitCause::CpuLimit) => (FailureKind::Timeout, Some("cpu_limit")),
                Some(ExitCause::FileSizeLimit) => (FailureKind::WriteLimit, None),
                Some(ExitCause::ProcessLimit) => (FailureKind::Trap, Some("process_limit")),
                Some(ExitCause::Killed) | None => (FailureKind::Trap, Some("server_exited")),
            },
        };
        let mut message = match report {
            Some(report) if gone => format!("the server {report}: {error}"),
            _ if gone => format!("the server broke the session: {error}; it was stopped"),
            _ => format!("{error}; lion stopped the server"),
        };
        if !stderr.is_empty() {
            message.push_str(&format!("; its stderr ends: {stderr}"));
        }
        let mut failure = CallFailure::new(kind, message);
        failure.trap = trap.map(str::to_owned);
        failure
    }
}

/// An unloaded server (the plugin was removed, regranted, approved or
/// quarantined, or its manager dropped) is stopped and reaped, its cgroups
/// removed, rather than only killed when its handle goes.
impl Drop for WarmServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                running.stop().await;
            });
        }
    }
}

/// One call under way, counted until it ends or is dropped (cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stops `server`'s process after `idle_stop_secs` without a call (the
/// next call starts it again); ends when the server is dropped.
async fn stop_when_idle(server: std::sync::Weak<WarmServer>) {
    loop {
        let (idle, last) = match server.upgrade() {
            Some(s) => (
                Duration::from_secs(u64::from(s.launch.spec.limits.idle_stop_secs)),
                *s.last_used.lock().unwrap_or_else(PoisonError::into_inner),
            ),
            None => return,
        };
        let busy = server
            .upgrade()
            .is_some_and(|s| s.in_flight.load(Ordering::Acquire) > 0);
        // While a call runs, look again a whole idle period later (not at
        // once: that would spin).
        let wake = if busy {
            Instant::now() + idle
        } else {
            last + idle
        };
        tokio::time::sleep_until(wake.into()).await;
        let Some(s) = server.upgrade() else { return };
        let last_now = *s.last_used.lock().unwrap_or_else(PoisonError::into_inner);
        if last_now.elapsed() >= idle && s.in_flight.load(Ordering::Acquire) == 0 {
            let mut slot = s.running.lock().await;
            // Looked at again under the lock a call takes to get the server.
            let last_now = *s.last_used.lock().unwrap_or_else(PoisonError::into_inner);
            let running = if last_now.elapsed() >= idle && s.in_flight.load(Ordering::Acquire) == 0
            {
                slot.take()
            } else {
                None
            };
            drop(slot);
            if let Some(running) = running {
                tracing::info!(plugin = %s.launch.name, "stopping an idle server");
                running.stop().await;
            }
            *s.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}
