//! The kernel's workflow driver with a real kernel (`kernel::serve`) on the
//! in-memory store: step tasks claimed in their scheduling move run, and
//! hand their ends to the run's next move, even when the orchestrator's
//! admission limit is full; a step task cancelled before it was handed to
//! the orchestrator never runs.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentic_core::orchestrator::builtin_handlers;
use agentic_core::workflow::log;
use agentic_core::workflow::run::RunEvent;
use agentic_core::{
    EventStore, Orchestrator, OrchestratorConfig, SystemEvent, TaskContext, TaskError, TaskHandler,
    TaskSpec,
};
use agentic_store::MemoryStore;
use async_trait::async_trait;
use serde_json::{Value, json};
use support::start_run;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Two plugin steps side by side.
const TWO: &str = "name = \"two\"\n\
[steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n\
[steps.b]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n";

/// One plugin step.
const ONE: &str = "name = \"one\"\n\
[steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n";

/// A plugin step's handler that counts its calls and answers at once.
struct Counting(Arc<AtomicUsize>);

#[async_trait]
impl TaskHandler for Counting {
    async fn run(&self, _ctx: TaskContext, _input: Value) -> Result<Value, TaskError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"ok": true}))
    }
}

/// A task that holds its place until the test lets it go.
struct Gate(Arc<Semaphore>);

#[async_trait]
impl TaskHandler for Gate {
    async fn run(&self, _ctx: TaskContext, _input: Value) -> Result<Value, TaskError> {
        let _ = self.0.acquire().await;
        Ok(Value::Null)
    }
}

/// A kernel serving a fresh in-memory store with at most `max_pending`
/// tasks admitted; the store, the orchestrator, the plugin steps' call
/// count and the gate.
async fn kernel(
    max_pending: usize,
) -> (
    Arc<dyn EventStore>,
    Orchestrator,
    Arc<AtomicUsize>,
    Arc<Semaphore>,
) {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let mut handlers: HashMap<String, Arc<dyn TaskHandler>> = builtin_handlers();
    handlers.insert("plugin".into(), Arc::new(Counting(calls.clone())));
    handlers.insert("gate".into(), Arc::new(Gate(gate.clone())));
    let config = OrchestratorConfig {
        max_pending,
        ..OrchestratorConfig::default()
    };
    let orchestrator = Orchestrator::start(store.clone(), handlers, config, Uuid::now_v7());
    let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
    tokio::spawn(agentic_core::kernel::serve(
        store.clone(),
        orchestrator.clone(),
        None,
        std::future::pending(),
        std::future::pending(),
        ready_tx,
        None,
    ));
    ready.wait_for(|r| *r).await.expect("the kernel is ready");
    (store, orchestrator, calls, gate)
}

/// Follows the log from its start until run `id` records an event `want`
/// accepts (a stuck run fails the test after a minute, not a hang).
async fn until(store: &Arc<dyn EventStore>, id: Uuid, want: impl Fn(&RunEvent) -> bool) {
    let mut log = store.clone().subscribe(1);
    loop {
        let record = tokio::time::timeout(Duration::from_secs(60), log.next())
            .await
            .expect("the run stopped moving")
            .expect("read");
        if let Ok(SystemEvent::WorkflowRecorded { run, event }) = record.decode()
            && run == id
            && want(&event)
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_steps_finish_when_the_admission_limit_is_full() {
    let (store, _orchestrator, calls, _gate) = kernel(1).await;
    let run = start_run(store.as_ref(), TWO).await;
    until(&store, run, |e| matches!(e, RunEvent::Completed { .. })).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_task_cancelled_before_it_was_handed_over_never_runs() {
    let (store, orchestrator, calls, gate) = kernel(1).await;
    // The gate holds the only place: the step task, claimed by its move,
    // waits to be handed to the orchestrator.
    let holder = orchestrator
        .submit(TaskSpec::new("gate", Value::Null))
        .await
        .expect("submit");
    let run = start_run(store.as_ref(), ONE).await;
    until(&store, run, |e| matches!(e, RunEvent::StepScheduled { .. })).await;
    log::record_cancel(store.as_ref(), Uuid::now_v7(), run, "the test")
        .await
        .expect("cancel");
    gate.add_permits(1);
    holder.outcome().await.expect("the holder ends");
    // A second run's step task queues for the place behind the first's:
    // once it has run, the first was handed over (and ended) before it.
    let second = start_run(store.as_ref(), ONE).await;
    until(&store, second, |e| matches!(e, RunEvent::Completed { .. })).await;
    orchestrator.drained().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the cancelled step task ran"
    );
    let stored = log::load(store.as_ref(), run).await.expect("load");
    assert!(stored.run.end.is_some());
}
