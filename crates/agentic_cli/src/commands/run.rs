//! `lion run`: the kernel in the foreground, holding the home's lease. It
//! runs the tasks other processes submit — plugin calls, and agents
//! (`lion agent send`), whose chunks it streams on its live socket.
//!
//! The first SIGINT/SIGTERM stops it taking work and waits for the tasks it
//! runs to end; a second one stops it at once: each running attempt is
//! recorded as interrupted, as after a crash (a task with a retry left
//! resumes at the next start, any other fails), and each plugin call those
//! attempts drop is recorded as cancelled, before it exits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentic_core::kernel::{self, KernelReport, Membership};
use agentic_core::llm::{AGENT_HANDLER, AgentTask};
use agentic_core::orchestrator::builtin_handlers;
use agentic_core::plugin::{PLUGIN_HANDLER, PluginManager, PluginTask};
use agentic_core::store::kernels::KernelJoin;
use agentic_core::{Durability, EventStore, Orchestrator, OrchestratorConfig};
use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Ctx, plugin};
use crate::providers::HomeProviders;
use crate::{lease, live};

/// Runs the kernel until interrupted.
pub async fn run(
    home: &Path,
    open: impl AsyncFnOnce() -> Result<Arc<dyn EventStore>>,
    ctx: Ctx,
    concurrency: usize,
    lease: Duration,
) -> Result<()> {
    let store = open().await?;
    let _lease = lease::acquire(home)?;
    let signals = count_signals()?;
    let membership = membership(&store, lease);
    let (plugins, orchestrator) = start(home, &store, ctx, concurrency, membership.as_ref())?;
    let _live = live::serve(home, &orchestrator)?;
    // "Running" once the kernel takes work: it has joined the kernels
    // sharing the store, if any, and taken over its unfinished tasks.
    let (ready, mut is_ready) = watch::channel(false);
    let shown = home.display().to_string();
    tokio::spawn(async move {
        if is_ready.wait_for(|r| *r).await.is_ok() {
            errln!(
                "lion kernel running on {shown} (pid {}); Ctrl-C or SIGTERM stops it",
                std::process::id()
            );
        }
    });
    let store: Arc<dyn EventStore> = store;
    let report = kernel::serve(
        store,
        orchestrator,
        Some(plugins),
        wait_for(signals.clone(), 1),
        wait_for(signals, 2),
        ready,
        membership,
    )
    .await?;
    stopped(report);
    Ok(())
}

/// This kernel's membership among the kernels sharing `store`, when the
/// store can be shared (a new id, this machine and process, and `lease`).
pub fn membership(store: &Arc<dyn EventStore>, lease: Duration) -> Option<Membership> {
    store.kernels()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Some(Membership {
        join: KernelJoin {
            id: Uuid::now_v7(),
            host,
            pid: std::process::id(),
            lease,
        },
    })
}

/// The kernel's working parts on `store`: the plugin manager (both
/// sandboxes) and an orchestrator running plugin calls, agents and the
/// built-in handlers, at most `concurrency` at a time, claiming attempts
/// under `membership`'s id when the store is shared. Call it only while
/// holding the home's lease.
pub fn start(
    home: &Path,
    store: &Arc<dyn EventStore>,
    ctx: Ctx,
    concurrency: usize,
    membership: Option<&Membership>,
) -> Result<(PluginManager, Orchestrator)> {
    let plugins = plugin::manager(home, store.clone(), ctx, Durability::Durable)?;
    let mut handlers = builtin_handlers();
    handlers.insert(
        PLUGIN_HANDLER.into(),
        Arc::new(PluginTask::new(plugins.clone())),
    );
    handlers.insert(
        AGENT_HANDLER.into(),
        Arc::new(AgentTask::new(
            store.clone(),
            Some(plugins.clone()),
            Arc::new(HomeProviders::new(home)),
        )),
    );
    let orchestrator = Orchestrator::start(
        store.clone(),
        handlers,
        OrchestratorConfig {
            max_concurrency: concurrency.max(1),
            kernel: membership.map(|m| m.join.id),
            ..OrchestratorConfig::default()
        },
        ctx.correlation_id,
    );
    Ok((plugins, orchestrator))
}

/// Says how a kernel run went.
pub fn stopped(report: KernelReport) {
    errln!(
        "lion kernel stopped: {} task(s) recovered at start, {} taken from other processes",
        report.recovered,
        report.adopted
    );
}

/// Counts SIGINT and SIGTERM as they arrive.
pub fn count_signals() -> Result<watch::Receiver<u32>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
            errln!("lion kernel: stopping (send the signal again to stop at once)");
        }
    });
    Ok(rx)
}

/// Resolves once `n` signals have arrived.
pub async fn wait_for(mut signals: watch::Receiver<u32>, n: u32) {
    let _ = signals.wait_for(|count| *count >= n).await;
}
