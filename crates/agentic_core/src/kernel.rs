//! The long-running kernel's loop: recover the tasks the log says are
//! unfinished, then follow the log and run what other processes submit.
//!
//! The log is the bus: another `lion` process submits a task by appending
//! `TaskSubmitted`, and cancels one by appending `TaskCancelled`; the kernel
//! sees both as it follows the log. Tasks interrupted by a crash are found
//! at start (their last attempt is recorded as failed, then retried or failed
//! by policy; see [`Orchestrator::adopt`]). Plugin events recorded elsewhere
//! reach the kernel's plugin manager, so it reloads what changed.
//!
//! However it stops, nothing it runs is left half-recorded: a kernel that
//! stops at once (or on a store error) interrupts its tasks, which records
//! each running attempt as interrupted (see [`Orchestrator::interrupt`]),
//! and every stop closes the plugin manager, which records the outcome of
//! each plugin call a stopped task dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::event::SystemEvent;
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::plugin::PluginManager;
use crate::store::{Cursor, EventStore, StoreError, TaskFilter};
use crate::task::TaskRecord;

/// What a kernel run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelReport {
    /// Unfinished tasks found in the log at start and taken over.
    pub recovered: usize,
    /// Tasks submitted by other processes while it ran.
    pub adopted: usize,
}

/// How long a kernel that stops waits for its interrupted tasks to record
/// that, and then for its plugin manager to record the outcomes of the
/// calls they dropped. Both are a few appends (the tasks are cancelled, not
/// awaited), so this is only reached with a stuck store, which must not
/// hold a kernel its operator told to stop at once.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// How the kernel's loop ended.
enum Ended {
    /// Every task it ran ended.
    Drained,
    /// It was told to stop at once.
    Forced,
}

/// Runs the kernel until `shutdown` resolves, then stops taking work and
/// waits for the tasks it runs to end. `ready` is set once the unfinished
/// tasks the log holds are taken over (what a server waits for before it
/// answers requests). `drain` resolving early stops the
/// wait: the tasks still running are interrupted (each running attempt is
/// recorded as interrupted: the next kernel retries it if its policy
/// allows, as after a crash). Either way the plugin manager is closed
/// before this returns, so the outcome of every plugin call is recorded.
pub async fn serve(
    store: Arc<dyn EventStore>,
    orchestrator: Orchestrator,
    plugins: Option<PluginManager>,
    shutdown: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
    ready: watch::Sender<bool>,
) -> Result<KernelReport, StoreError> {
    let mut report = KernelReport::default();
    let ended = follow(
        &store,
        &orchestrator,
        plugins.as_ref(),
        shutdown,
        drain,
        &ready,
        &mut report,
    )
    .await;
    if !matches!(ended, Ok(Ended::Drained)) {
        // Stopping now (or the log failed): nothing may be left running
        // when the runtime goes, or its recording is lost.
        if tokio::time::timeout(STOP_WAIT, orchestrator.interrupt())
            .await
            .is_err()
        {
            tracing::error!(
                wait = ?STOP_WAIT,
                "interrupted tasks could not record that in time; the next kernel will"
            );
        }
    }
    drop(orchestrator);
    if let Some(plugins) = plugins
        && tokio::time::timeout(STOP_WAIT, plugins.close())
            .await
            .is_err()
    {
        tracing::error!(
            wait = ?STOP_WAIT,
            "the outcomes of cancelled plugin calls could not be recorded in time"
        );
    }
    ended.map(|_| report)
}

/// Unfinished tasks read per page while a kernel starts: enough that a
/// page is one round trip for most homes, few enough that a backlog of
/// tasks is never held in memory at once.
const RECOVERY_PAGE: usize = 256;

/// Recovers, then follows the log until told to stop and the tasks drain,
/// or to stop at once.
async fn follow(
    store: &Arc<dyn EventStore>,
    orchestrator: &Orchestrator,
    plugins: Option<&PluginManager>,
    shutdown: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
    ready: &watch::Sender<bool>,
    report: &mut KernelReport,
) -> Result<Ended, StoreError> {
    if let Some(plugins) = plugins {
        // Every event from `start` on reaches `observe` below.
        plugins.follow_log();
    }
    let start = store.head().await?.seq + 1;
    // Only the unfinished tasks are read, a page at a time: a start costs
    // what is left to do, not the length of the log. A task submitted after
    // `start` is seen by both this walk and the log below, and a page may be
    // stale by the time its last task is reached: `take_over` reads each
    // task again and leaves alone one that has ended meanwhile.
    let mut after = Cursor::START;
    loop {
        let page = store
            .tasks(TaskFilter::Unfinished, after, RECOVERY_PAGE)
            .await?;
        for task in &page.items {
            if take_over(store.as_ref(), orchestrator, task.id).await? {
                report.recovered += 1;
            }
        }
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    tracing::info!(recovered = report.recovered, "kernel ready");
    ready.send_replace(true);
    let mut log = store.clone().subscribe(start);
    tokio::pin!(shutdown);
    tokio::pin!(drain);
    let mut stopping = false;
    let drained = orchestrator.drained();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            () = &mut shutdown, if !stopping => {
                tracing::info!("kernel stopping: no new work; waiting for running tasks");
                stopping = true;
                // Only now: `drained` must count the tasks taken so far.
                drained.set(orchestrator.drained());
            }
            () = &mut drained, if stopping => return Ok(Ended::Drained),
            () = &mut drain, if stopping => {
                tracing::warn!(
                    "stopping at once: running attempts are recorded as interrupted; \
                     unfinished tasks resume at the next start"
                );
                return Ok(Ended::Forced);
            }
            event = log.next() => {
                let event = event?;
                match event.decode() {
                    // While stopping, new work is left for the next kernel.
                    Ok(SystemEvent::TaskSubmitted { task_id, .. }) if !stopping => {
                        if !orchestrator.is_running(task_id).await {
                            match take_over(store.as_ref(), orchestrator, task_id).await {
                                Ok(true) => report.adopted += 1,
                                Ok(false) => {}
                                // One task that cannot be read stops no kernel.
                                Err(e) => tracing::warn!(
                                    task = %task_id, error = %e, "task cannot be read; not taken"
                                ),
                            }
                        }
                    }
                    // Cancellations still reach the tasks that run here.
                    Ok(SystemEvent::TaskCancelled { task_id, .. }) => {
                        let _ = orchestrator.cancel_recorded(task_id).await;
                    }
                    // Plugins installed, removed or quarantined elsewhere.
                    Ok(other) if other.plugin_name().is_some() => {
                        if let Some(plugins) = plugins {
                            plugins.observe(&event, &other).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(seq = event.seq, error = %e, "undecodable event skipped"),
                }
            }
        }
    }
}

/// Takes over task `id` as the log has it now: one that ended since it
/// was listed or submitted (it ran here, or in another process) is not run
/// again. Whether it was taken.
async fn take_over(
    store: &dyn EventStore,
    orchestrator: &Orchestrator,
    id: Uuid,
) -> Result<bool, StoreError> {
    let Some(task) = store.task(id).await? else {
        return Ok(false);
    };
    if task.status.is_final() {
        return Ok(false);
    }
    Ok(adopt(orchestrator, &task).await)
}

/// Adopts a task, logging (not failing on) tasks that cannot run here.
async fn adopt(orchestrator: &Orchestrator, task: &TaskRecord) -> bool {
    match orchestrator.adopt(task).await {
        Ok(_) => true,
        Err(OrchestratorError::AlreadyRunning(_) | OrchestratorError::Ended(_)) => false,
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "task cannot run here");
            false
        }
    }
}
