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
//! Several kernels may share one log (a store with a [`KernelRegistry`]):
//! each joins with a lease ([`Membership`]) that a task of its own renews.
//! Every kernel sees every submission and races to claim its first attempt
//! (the log accepts one `TaskStarted` per attempt) — except a workflow step's
//! task, whose first attempt the move that scheduled it claims for the
//! kernel that made the move (see [`workflows`]); a task stays with the
//! kernel that claimed it until it ends, unless that kernel's lease runs
//! out: then another kernel records the claimed attempt as interrupted and
//! retries it by its policy. A kernel whose lease ran out while it was
//! paused finds out at its next renewal and stops at once; the log refuses
//! any outcome it tries to record for an attempt it no longer owns. Live
//! events that are not in the log (yet) travel between the kernels through
//! the store's relay ([`relay`]), so a subscriber of any kernel watches
//! them all.
//!
//! Workflow runs are driven here too ([`workflows`]): the kernel holds
//! every unfinished run and records what each does next as the log tells
//! it what happened.
//!
//! However it stops, nothing it runs is left half-recorded: a kernel that
//! stops at once (or on a store error) interrupts its tasks, which records
//! each running attempt as interrupted (see [`Orchestrator::interrupt`]),
//! and every stop closes the plugin manager, which records the outcome of
//! each plugin call a stopped task dropped.

mod relay;
mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::event::{NewEvent, SystemEvent};
use crate::orchestrator::{Orchestrator, OrchestratorError, PARENT_CANCELLED, TaskOutcome};
use crate::plugin::PluginManager;
use crate::store::kernels::KernelJoin;
use crate::store::{Cursor, EventStore, ExpectedVersion, StoreError, TaskFilter};
use crate::task::{TaskRecord, TaskStatus};

/// A kernel's membership among several sharing one log.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Who it is, where it runs, and its lease.
    pub join: KernelJoin,
}

/// How long a kernel keeps trying to read a log it cannot reach before it
/// stops with the error.
const READ_OUTAGE: Duration = Duration::from_secs(60);

/// The pause between those tries.
const READ_PAUSE: Duration = Duration::from_millis(250);

/// How many lease renewals a kernel makes per lease.
const RENEWALS_PER_LEASE: u32 = 4;

/// Every this many renewals, a kernel looks for work of lost kernels even
/// if it expired none itself (another kernel may have, and then died).
const RESCAN_EVERY: u32 = 4;

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
    membership: Option<Membership>,
) -> Result<KernelReport, StoreError> {
    let mut report = KernelReport::default();
    let shared = match &membership {
        Some(m) => Some(Shared::join(&store, &orchestrator, m).await?),
        None => None,
    };
    let ended = follow(
        &store,
        &orchestrator,
        plugins.as_ref(),
        shutdown,
        drain,
        Reporting {
            ready: &ready,
            report: &mut report,
        },
        shared,
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
    if let (Some(m), Some(registry)) = (&membership, store.kernels())
        && let Err(e) = registry.leave(m.join.id).await
    {
        tracing::warn!(error = %e, "could not record this kernel's stop; its lease runs out instead");
    }
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

/// What the kernel's loop tells its caller: when it is ready, and what it
/// took.
struct Reporting<'a> {
    ready: &'a watch::Sender<bool>,
    report: &'a mut KernelReport,
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
    reporting: Reporting<'_>,
    mut shared: Option<Shared>,
) -> Result<Ended, StoreError> {
    let Reporting { ready, report } = reporting;
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
    let me = shared.as_ref().map(|s| s.id);
    report.recovered +=
        take_over_unfinished(store.as_ref(), orchestrator, me, true, |_| false).await?;
    // Runs after tasks: a run's step tasks are running again by now.
    let mut workflows = workflows::Driver::new(store.clone(), orchestrator.clone());
    let runs = workflows.recover().await?;
    tracing::info!(recovered = report.recovered, runs, "kernel ready");
    ready.send_replace(true);
    let mut log = store.clone().subscribe(start);
    tokio::pin!(shutdown);
    tokio::pin!(drain);
    let mut stopping = false;
    let drained = orchestrator.drained();
    tokio::pin!(drained);
    // Since when the log could not be read, if it cannot now.
    let mut outage: Option<tokio::time::Instant> = None;
    loop {
        let due = workflows.next_due();
        tokio::select! {
            () = wake_at(due), if due.is_some() && !stopping => workflows.tick().await,
            answer = workflows.answered(), if !stopping => workflows.take_answer(answer).await,
            signal = async { shared.as_mut()?.signals.recv().await }, if shared.is_some() => {
                match signal {
                    Some(Signal::Rescan) if !stopping => {
                        let claims = |task| workflows.claims(task);
                        report.adopted +=
                            take_over_unfinished(store.as_ref(), orchestrator, me, false, claims)
                                .await?;
                    }
                    Some(Signal::Rescan) => {}
                    Some(Signal::LeaseLost) | None => {
                        let id = shared.as_ref().map(|s| s.id).unwrap_or_default();
                        return Err(StoreError::LeaseLost(id));
                    }
                }
            }
            () = &mut shutdown, if !stopping => {
                tracing::info!("kernel stopping: no new work; waiting for running tasks");
                stopping = true;
                workflows.stop();
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
                let event = match event {
                    Ok(event) => {
                        outage = None;
                        event
                    }
                    // The store is unreachable (restarting, say): read
                    // again after a pause, for a while, from where the
                    // log was left.
                    Err(e @ (StoreError::Backend(_) | StoreError::Locked { .. })) => {
                        let since = *outage.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > READ_OUTAGE {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "cannot read the log; trying again");
                        tokio::time::sleep(READ_PAUSE).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let decoded = event.decode();
                // While stopping, runs wait for the next kernel, which
                // records what they missed.
                if let (Ok(decoded), false) = (&decoded, stopping) {
                    workflows.observe(&event, decoded).await;
                }
                match decoded {
                    // While stopping, new work is left for the next kernel.
                    // A step task a workflow move claimed here runs already.
                    Ok(SystemEvent::TaskSubmitted { task_id, .. }) if !stopping => {
                        if !workflows.claims(task_id) && !orchestrator.is_running(task_id).await {
                            match take_over(store.as_ref(), orchestrator, me, task_id).await {
                                Ok(true) => report.adopted += 1,
                                Ok(false) => {}
                                // One task that cannot be read stops no kernel.
                                Err(e) => tracing::warn!(
                                    task = %task_id, error = %e, "task cannot be read; not taken"
                                ),
                            }
                        }
                    }
                    // Cancellations still reach the tasks that run here,
                    // and through the kernel that ran a task, its children
                    // wherever they run.
                    Ok(SystemEvent::TaskCancelled { task_id, reason }) => {
                        if workflows.claims(task_id) {
                            // Maybe not handed to the orchestrator yet.
                            orchestrator.cancel_claimed(task_id, reason.clone()).await;
                            workflows.cancelled_before_hand_over(task_id);
                        } else {
                            let _ = orchestrator.cancel_recorded(task_id).await;
                        }
                        orchestrator.observe_end(task_id, TaskOutcome::Cancelled(reason));
                        tokio::spawn(cancel_children(
                            store.clone(),
                            orchestrator.clone(),
                            me,
                            task_id,
                            (event.correlation_id, event.event_id),
                        ));
                    }
                    // Ends recorded by other kernels, for the tasks
                    // submitted here that they ran.
                    Ok(SystemEvent::TaskCompleted { task_id, output, .. }) => {
                        orchestrator.observe_end(task_id, TaskOutcome::Completed(output));
                    }
                    Ok(SystemEvent::TaskFailed { task_id, error, is_final: true, .. }) => {
                        orchestrator.observe_end(task_id, TaskOutcome::Failed(error));
                    }
                    Ok(SystemEvent::TaskTimedOut { task_id, is_final: true, .. }) => {
                        orchestrator.observe_end(task_id, TaskOutcome::TimedOut);
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

/// Resolves at `due` (at once if it has passed; never without one).
async fn wake_at(due: Option<chrono::DateTime<chrono::Utc>>) {
    match due {
        Some(due) => {
            let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// Takes over every unfinished task this kernel may run, a page at a time
/// (a start costs what is left to do, not the length of the log); returns
/// how many it took. Alone on its log, a kernel takes them all; among
/// several (`me` is its id), only those no live kernel holds (see
/// [`claimable`]), and `at_start` also those never started. Tasks for which
/// `claimed` holds are about to run here (a workflow move claimed them).
async fn take_over_unfinished(
    store: &dyn EventStore,
    orchestrator: &Orchestrator,
    me: Option<Uuid>,
    at_start: bool,
    claimed: impl Fn(Uuid) -> bool,
) -> Result<usize, StoreError> {
    let alive = match store.kernels() {
        Some(registry) => Some(holders(registry.alive().await?, me)),
        None => None,
    };
    let mut taken = 0;
    let mut after = Cursor::START;
    loop {
        let page = store
            .tasks(TaskFilter::Unfinished, after, RECOVERY_PAGE)
            .await?;
        for task in &page.items {
            let ours = match &alive {
                None => true,
                Some(alive) => claimable(task, alive, at_start),
            };
            if ours
                && !claimed(task.id)
                && !orchestrator.is_running(task.id).await
                && take_over(store, orchestrator, me, task.id).await?
            {
                taken += 1;
            }
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(taken),
        }
    }
}

/// Whether a kernel among several may take `task`: no live kernel holds
/// it. A task never started is everyone's (the first claim wins); one
/// whose newest attempt a live kernel claimed is that kernel's, until it
/// ends or that kernel's lease runs out. A claim naming no kernel (from
/// when one kernel ran alone) is taken over only `at_start`.
fn claimable(task: &TaskRecord, alive: &std::collections::HashSet<Uuid>, at_start: bool) -> bool {
    match task.kernel {
        Some(kernel) => !alive.contains(&kernel),
        None => at_start || (task.attempts == 0 && task.status == TaskStatus::Pending),
    }
}

/// The live kernels whose claims hold: all but `me`, whose own claims on
/// tasks it does not run (their runner could not record an outcome) are
/// taken over like a dead kernel's, so none is stuck.
fn holders(
    mut alive: std::collections::HashSet<Uuid>,
    me: Option<Uuid>,
) -> std::collections::HashSet<Uuid> {
    if let Some(me) = me {
        alive.remove(&me);
    }
    alive
}

/// Takes over task `id` as the log has it now: one that ended since it
/// was listed or submitted (it ran here, or in another process) is not run
/// again, and among several kernels one another live kernel holds is left
/// to it. Whether it was taken.
async fn take_over(
    store: &dyn EventStore,
    orchestrator: &Orchestrator,
    me: Option<Uuid>,
    id: Uuid,
) -> Result<bool, StoreError> {
    let Some(task) = store.task(id).await? else {
        return Ok(false);
    };
    if task.status.is_final() {
        return Ok(false);
    }
    if let (Some(registry), Some(kernel)) = (store.kernels(), task.kernel)
        && holders(registry.alive().await?, me).contains(&kernel)
    {
        return Ok(false);
    }
    // A child submitted as its parent was being cancelled (after the
    // parent's kernel read its children) is cancelled, not run.
    if let Some(parent) = task.spec.parent
        && store
            .task(parent)
            .await?
            .is_some_and(|p| p.status == TaskStatus::Cancelled)
    {
        let event = SystemEvent::TaskCancelled {
            task_id: id,
            reason: PARENT_CANCELLED.into(),
        };
        let event = NewEvent::new(event, Uuid::now_v7());
        return match store.append(vec![event], ExpectedVersion::Any).await {
            Ok(_) | Err(StoreError::Rejected(_)) => Ok(false),
            Err(e) => Err(e),
        };
    }
    Ok(adopt(orchestrator, &task).await)
}

/// Cancels the unfinished children of cancelled task `id`, if this kernel
/// ran it (`me` is the kernel's id among several) or no live kernel did
/// (its kernel died: whoever sees the cancellation passes it on; the
/// others' attempts are refused as the children end): those running here
/// through the orchestrator (a child started here is cancelled by its
/// parent's token already, and ends the same way), the others by recording
/// their cancellation in the log for whichever kernel claims or runs them —
/// which then does the same for their children, so a cancellation reaches
/// the whole tree across kernels. `cause` is the cancellation's
/// correlation and event ids.
async fn cancel_children(
    store: Arc<dyn EventStore>,
    orchestrator: Orchestrator,
    me: Option<Uuid>,
    id: Uuid,
    (correlation, cause): (Uuid, Uuid),
) {
    let read = async {
        let Some(task) = store.task(id).await? else {
            return Ok(None);
        };
        if task.children.is_empty() {
            return Ok(None);
        }
        if task.kernel != me
            && let (Some(registry), Some(kernel)) = (store.kernels(), task.kernel)
            && holders(registry.alive().await?, me).contains(&kernel)
        {
            return Ok(None); // its own kernel passes it on
        }
        Ok::<_, StoreError>(Some(task))
    };
    let task = match read.await {
        Ok(Some(task)) => task,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "cannot read a cancelled task's children");
            return;
        }
    };
    for child in task.children {
        if orchestrator.is_running(child).await {
            let _ = orchestrator.cancel(child, PARENT_CANCELLED).await;
            continue;
        }
        match store.task(child).await {
            Ok(Some(record)) if !record.status.is_final() => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(task = %child, error = %e, "cannot read a child to cancel");
                continue;
            }
        }
        let event = SystemEvent::TaskCancelled {
            task_id: child,
            reason: PARENT_CANCELLED.into(),
        };
        let event = NewEvent::new(event, correlation).caused_by(cause);
        match store.append(vec![event], ExpectedVersion::Any).await {
            // Refused: it ended meanwhile.
            Ok(_) | Err(StoreError::Rejected(_)) => {}
            Err(e) => tracing::warn!(task = %child, error = %e, "cannot cancel a child"),
        }
    }
}

/// What the lease keeper tells the kernel's loop.
enum Signal {
    /// Kernels were found dead (or it is time to look again): take over
    /// what they held.
    Rescan,
    /// This kernel's lease ran out: stop now.
    LeaseLost,
}

/// A kernel's part in a shared log while it runs: the lease keeper's
/// messages, and the live relay (the keeper and the relay stop when this
/// is dropped).
struct Shared {
    /// The kernel's id.
    id: Uuid,
    signals: tokio::sync::mpsc::Receiver<Signal>,
    keeper: tokio::task::JoinHandle<()>,
    relay: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.keeper.abort();
        for task in &self.relay {
            task.abort();
        }
    }
}

impl Shared {
    /// Joins the registry of `store`, starts keeping the lease, and relays
    /// live events between `orchestrator` and the other kernels.
    async fn join(
        store: &Arc<dyn EventStore>,
        orchestrator: &Orchestrator,
        membership: &Membership,
    ) -> Result<Self, StoreError> {
        let registry = store.kernels().ok_or_else(|| {
            StoreError::Backend("this store cannot be shared by several kernels".into())
        })?;
        registry.join(&membership.join).await?;
        let (tx, signals) = tokio::sync::mpsc::channel(4);
        let keeper = tokio::spawn(keep_lease(store.clone(), membership.join.clone(), tx));
        Ok(Self {
            id: membership.join.id,
            signals,
            keeper,
            relay: relay::start(store, orchestrator, membership.join.id),
        })
    }
}

/// Renews the lease of kernel `me` several times per lease, expires
/// kernels whose leases ran out, and tells the kernel's loop.
async fn keep_lease(
    store: Arc<dyn EventStore>,
    me: KernelJoin,
    signals: tokio::sync::mpsc::Sender<Signal>,
) {
    let Some(registry) = store.kernels() else {
        return;
    };
    let mut tick = tokio::time::interval(me.lease / RENEWALS_PER_LEASE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals = 0u32;
    // By this kernel's own clock: past a lease without a renewal, others
    // may be taking over, so it stops even if the store cannot say so.
    let mut renewed = tokio::time::Instant::now();
    // The store refuses renewals past three quarters of a lease: a renewal
    // that has not succeeded by then never will.
    let renewable = me.lease * 3 / 4;
    loop {
        tick.tick().await;
        renewals = renewals.wrapping_add(1);
        let sent = tokio::time::Instant::now();
        let renewal = tokio::time::timeout_at(renewed + renewable, registry.renew(me.id)).await;
        match renewal.unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the renewal did not finish within the lease".into(),
            ))
        }) {
            Ok(true) => renewed = sent,
            Ok(false) => {
                tracing::error!(kernel = %me.id, "this kernel's lease ran out; stopping");
                let _ = signals.send(Signal::LeaseLost).await;
                return;
            }
            Err(e) if renewed.elapsed() >= renewable => {
                tracing::error!(error = %e, "no lease renewal for a whole lease; stopping");
                let _ = signals.send(Signal::LeaseLost).await;
                return;
            }
            // The store is unreachable: keep trying, for up to a lease.
            Err(e) => tracing::warn!(error = %e, "cannot renew this kernel's lease"),
        }
        let expired = registry.expire_overdue().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look for kernels whose lease ran out");
            Vec::new()
        });
        for kernel in &expired {
            tracing::warn!(%kernel, "a kernel's lease ran out: taking over its attempts");
        }
        if !expired.is_empty() || renewals.is_multiple_of(RESCAN_EVERY) {
            // A full queue means a rescan is already pending.
            let _ = signals.try_send(Signal::Rescan);
        }
    }
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
