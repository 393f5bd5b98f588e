//! The orchestrator's promises, on the in-memory store with paused time (no
//! real sleeps): concurrency, limits, timeouts, retries with backoff,
//! cancellation of task trees, idempotency, back-pressure, durability modes,
//! and a log that replays to the live state.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentic_core::orchestrator::TASK_ASYNC_APPENDS;
use agentic_core::orchestrator::builtin_handlers;
use agentic_core::{
    Durability, EventStore, LiveEvent, Orchestrator, OrchestratorConfig, OrchestratorError,
    RetryPolicy, State, SystemEvent, TaskContext, TaskError, TaskHandler, TaskOutcome, TaskSpec,
    TaskStatus,
};
use agentic_store::MemoryStore;
use async_trait::async_trait;
use serde_json::{Value, json};
use support::GatedStore;
use tokio::time::Instant;
use uuid::Uuid;

fn start(config: OrchestratorConfig) -> (Arc<MemoryStore>, Orchestrator) {
    let store = Arc::new(MemoryStore::new());
    let orchestrator =
        Orchestrator::start(store.clone(), builtin_handlers(), config, Uuid::now_v7());
    (store, orchestrator)
}

fn spec(handler: &str, input: serde_json::Value) -> TaskSpec {
    TaskSpec::new(handler, input)
}

/// Folds the whole log afresh.
async fn replayed(store: &MemoryStore) -> State {
    let mut state = State::new();
    for e in store.read_from(1, usize::MAX).await.expect("read") {
        state.apply(&e.decode().expect("decode")).expect("apply");
    }
    state
}

/// A task's (attempts, interrupted attempts), as the projection has them.
async fn attempts_of(store: &MemoryStore, task: Uuid) -> (u32, u32) {
    let state = store.projected_state().await.expect("state");
    let task = state.task(task).expect("task");
    (task.attempts, task.interrupted)
}

async fn events_of(store: &MemoryStore, task: Uuid) -> Vec<String> {
    store
        .read_from(1, usize::MAX)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.stream == format!("task:{task}"))
        .map(|e| e.decode().expect("decode").kind().to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn many_tasks_submitted_concurrently_all_complete_once() {
    let (store, orch) = start(OrchestratorConfig::default());
    let submitters: Vec<_> = (0..200)
        .map(|i| {
            let orch = orch.clone();
            tokio::spawn(async move {
                let handle = orch.submit(spec("echo", json!(i))).await.expect("submit");
                (i, handle.outcome().await.expect("outcome"))
            })
        })
        .collect();
    for s in submitters {
        let (i, outcome) = s.await.expect("join");
        assert_eq!(outcome, TaskOutcome::Completed(json!(i)));
    }
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.tasks().len(), 200);
    for task in state.tasks() {
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.attempts, 1, "task {} ran more than once", task.id);
    }
    assert!(replayed(&store).await.diff(&state).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried_then_the_task_times_out() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut s = spec("sleep", json!({"ms": 10_000}));
    s.timeout_ms = Some(100);
    s.retry = RetryPolicy {
        max_retries: 1,
        base_delay_ms: 10,
        max_delay_ms: 10,
        retry_interrupted: false,
    };
    let handle = orch.submit(s).await.expect("submit");
    let id = handle.id;
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::TimedOut
    );
    assert_eq!(
        events_of(&store, id).await,
        [
            "task_submitted",
            "task_started",
            "task_timed_out",
            "task_started",
            "task_timed_out"
        ]
    );
    let state = store.projected_state().await.expect("state");
    assert_eq!(
        state.task(id).map(|t| (t.status, t.attempts)),
        Some((TaskStatus::TimedOut, 2))
    );
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_are_retried_with_exponential_backoff_and_jitter() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut s = spec("fail", json!({"times": 2, "message": "flaky"}));
    s.retry = RetryPolicy {
        max_retries: 3,
        base_delay_ms: 1_000,
        max_delay_ms: 60_000,
        retry_interrupted: false,
    };
    let began = Instant::now();
    let handle = orch.submit(s).await.expect("submit");
    let id = handle.id;
    let outcome = handle.outcome().await.expect("outcome");
    let waited = began.elapsed();
    assert_eq!(
        outcome,
        TaskOutcome::Completed(json!({"times": 2, "message": "flaky"}))
    );
    // Delays of 1 s and 2 s, each scaled into [50%, 100%] by jitter.
    assert!(waited >= Duration::from_millis(1_500), "{waited:?}");
    assert!(waited <= Duration::from_millis(3_100), "{waited:?}");
    let task = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 3));
    assert_eq!(
        events_of(&store, id).await,
        [
            "task_submitted",
            "task_started",
            "task_failed",
            "task_started",
            "task_failed",
            "task_started",
            "task_completed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_that_keeps_failing_fails_for_good_after_its_retries() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut s = spec("fail", json!({"message": "always"}));
    s.retry.max_retries = 2;
    let handle = orch.submit(s).await.expect("submit");
    let id = handle.id;
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Failed("always".into())
    );
    let task = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    assert_eq!((task.status, task.attempts), (TaskStatus::Failed, 3));
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_fanout_cancels_every_child() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut live = orch.subscribe();
    let parent = orch
        .submit(spec(
            "fanout",
            json!({"n": 3, "handler": "sleep", "input": {"ms": 60_000}}),
        ))
        .await
        .expect("submit");
    // Wait until all three children are running.
    let mut started_children = 0;
    while started_children < 3 {
        let LiveEvent { event, .. } = live.recv().await.expect("live event");
        if let SystemEvent::TaskStarted { task_id, .. } = event
            && task_id != parent.id
        {
            started_children += 1;
        }
    }
    orch.cancel(parent.id, "operator said stop")
        .await
        .expect("cancel");
    assert_eq!(
        parent.clone().outcome().await.expect("outcome"),
        TaskOutcome::Cancelled("operator said stop".into())
    );
    let state = store.projected_state().await.expect("state");
    let record = state.task(parent.id).cloned().expect("parent");
    assert_eq!(record.children.len(), 3);
    for child in &record.children {
        let child = state.task(*child).expect("child");
        assert_eq!(child.status, TaskStatus::Cancelled, "child {}", child.id);
    }
    assert!(replayed(&store).await.diff(&state).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_same_idempotency_key_is_one_task() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut s = spec("echo", json!("once"));
    s.idempotency_key = Some("order-42".into());
    let a = orch.submit(s.clone()).await.expect("first");
    let b = orch.submit(s).await.expect("second");
    assert_eq!(a.id, b.id);
    assert_eq!(
        a.outcome().await.expect("a"),
        TaskOutcome::Completed(json!("once"))
    );
    assert_eq!(
        b.outcome().await.expect("b"),
        TaskOutcome::Completed(json!("once"))
    );
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.tasks().len(), 1);
    assert_eq!(state.tasks().next().map(|t| t.attempts), Some(1));
}

/// Counts its runs; `{"reports": N}` reports progress N times first.
#[derive(Default)]
struct Counted {
    runs: AtomicUsize,
    reports: AtomicUsize,
}

#[async_trait]
impl TaskHandler for Counted {
    async fn run(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        for i in 0..input["reports"].as_u64().unwrap_or(0) {
            ctx.progress(json!(i))
                .await
                .map_err(|e| TaskError::new(e.to_string()))?;
            self.reports.fetch_add(1, Ordering::SeqCst);
        }
        Ok(input)
    }
}

/// An orchestrator on `store` whose only handler is `counted`.
fn counting(
    store: Arc<dyn EventStore>,
    config: OrchestratorConfig,
) -> (Arc<Counted>, Orchestrator) {
    let counted = Arc::new(Counted::default());
    let mut handlers: HashMap<String, Arc<dyn TaskHandler>> = HashMap::new();
    handlers.insert("counted".into(), counted.clone());
    let orch = Orchestrator::start(store, handlers, config, Uuid::now_v7());
    (counted, orch)
}

fn keyed(key: &str, durability: Durability) -> TaskSpec {
    let mut s = spec("counted", json!({}));
    s.idempotency_key = Some(key.into());
    s.durability = durability;
    s
}

/// Regression (issue 14): the idempotency map was never pruned. It keeps
/// the keys of the last `finished_keys` ended tasks; an older key is
/// refused by the log's projection, and its task never runs again, async
/// or durable.
#[tokio::test(start_paused = true)]
async fn old_idempotency_keys_are_forgotten_here_and_still_refused_by_the_log() {
    for durability in [Durability::Durable, Durability::Async] {
        let store = Arc::new(MemoryStore::new());
        let config = OrchestratorConfig {
            finished_keys: 2,
            ..OrchestratorConfig::default()
        };
        let (counted, orch) = counting(store.clone(), config);
        let mut ids = Vec::new();
        for key in ["k0", "k1", "k2"] {
            let handle = orch.submit(keyed(key, durability)).await.expect("submit");
            ids.push(handle.id);
            handle.outcome().await.expect("outcome");
        }
        // k1 and k2 are remembered: the same task, at once.
        let again = orch.submit(keyed("k2", durability)).await.expect("k2");
        assert_eq!(again.id, ids[2]);
        assert_eq!(
            again.outcome().await.expect("outcome"),
            TaskOutcome::Completed(json!({}))
        );
        // k0 is forgotten here; the log refuses it.
        let err = orch.submit(keyed("k0", durability)).await.unwrap_err();
        assert_eq!(
            err,
            OrchestratorError::AlreadySubmitted(ids[0]),
            "{durability:?}"
        );
        assert_eq!(counted.runs.load(Ordering::SeqCst), 3, "{durability:?}");
        assert_eq!(
            store.projected_state().await.expect("state").tasks().len(),
            3
        );
    }
}

/// Regression (issue 14, found beside the unpruned map): a keyed async
/// task's submission was appended in the background while it ran, so a key
/// the log already held (another process's, or one forgotten here) ran its
/// task again.
#[tokio::test(start_paused = true)]
async fn a_keyed_async_task_never_runs_twice_across_orchestrators() {
    let store = Arc::new(MemoryStore::new());
    let (first, a) = counting(store.clone(), OrchestratorConfig::default());
    let handle = a
        .submit(keyed("order-7", Durability::Async))
        .await
        .expect("submit");
    let id = handle.id;
    handle.outcome().await.expect("outcome");
    // Another process (its own orchestrator, its own memory) retries.
    let (second, b) = counting(store.clone(), OrchestratorConfig::default());
    let err = b
        .submit(keyed("order-7", Durability::Async))
        .await
        .unwrap_err();
    assert_eq!(err, OrchestratorError::AlreadySubmitted(id));
    assert_eq!(first.runs.load(Ordering::SeqCst), 1);
    assert_eq!(second.runs.load(Ordering::SeqCst), 0, "ran twice");
}

/// Regression (issue 14 review): a keyed submission the log refused kept
/// its key here, mapped to a task id the log never held, so a retry got
/// `Ok` with a handle whose outcome was a made-up failure. A refused key
/// now names the task the log has under it, every time.
#[tokio::test(start_paused = true)]
async fn a_key_the_log_refuses_keeps_naming_the_logged_task() {
    for durability in [Durability::Durable, Durability::Async] {
        let store = Arc::new(MemoryStore::new());
        let (first, a) = counting(store.clone(), OrchestratorConfig::default());
        let handle = a.submit(keyed("order-9", durability)).await.expect("a");
        let id = handle.id;
        handle.outcome().await.expect("outcome");
        // Another process retries the key, then retries again.
        let (second, b) = counting(store.clone(), OrchestratorConfig::default());
        for retry in 0..2 {
            let refused = b.submit(keyed("order-9", durability)).await;
            assert_eq!(
                refused.map(|h| h.id),
                Err(OrchestratorError::AlreadySubmitted(id)),
                "{durability:?}, retry {retry}"
            );
        }
        assert_eq!(first.runs.load(Ordering::SeqCst), 1);
        assert_eq!(second.runs.load(Ordering::SeqCst), 0);
        assert_eq!(
            store.projected_state().await.expect("state").tasks().len(),
            1
        );
    }
}

/// Regression (issue 14 review): a keyed submission whose append failed
/// kept its key here, so every retry got `Ok` with a handle to a task the
/// log never held, failed with the old store error, instead of a fresh
/// attempt at submitting it.
#[tokio::test(start_paused = true)]
async fn a_key_whose_submission_could_not_be_stored_can_be_submitted_again() {
    for durability in [Durability::Durable, Durability::Async] {
        let store = GatedStore::open_now();
        let (counted, orch) = counting(store.clone(), OrchestratorConfig::default());
        store.fail_next(1);
        let failed = orch.submit(keyed("order-10", durability)).await;
        assert!(
            matches!(failed, Err(OrchestratorError::Store(_))),
            "{durability:?}: {:?}",
            failed.map(|h| h.id)
        );
        assert_eq!(counted.runs.load(Ordering::SeqCst), 0);
        // The retry is a fresh submission: stored, run, and the key's task.
        let retried = orch
            .submit(keyed("order-10", durability))
            .await
            .expect("retry");
        let id = retried.id;
        assert_eq!(
            retried.outcome().await.expect("outcome"),
            TaskOutcome::Completed(json!({})),
            "{durability:?}"
        );
        let state = store.memory().projected_state().await.expect("state");
        assert_eq!(
            state.task(id).map(|t| t.status),
            Some(TaskStatus::Completed),
            "{durability:?}"
        );
        assert_eq!(state.tasks().len(), 1);
        assert_eq!(counted.runs.load(Ordering::SeqCst), 1);
        let again = orch.submit(keyed("order-10", durability)).await;
        assert_eq!(again.map(|h| h.id), Ok(id), "{durability:?}");
    }
}

/// Polls `future` once, so a submission reaches the event loop's queue,
/// and hands it back to be awaited later.
async fn poll_once<F: std::future::Future + Unpin>(mut future: F) -> F {
    tokio::select! {
        biased;
        _ = &mut future => panic!("resolved on its first poll"),
        () = std::future::ready(()) => {}
    }
    future
}

/// Regression (issue 14 review), the same defect seen by a duplicate sent
/// while the first submission of its key waits for the store: it was
/// answered at once with the first one's handle, which then failed with a
/// made-up error when the log refused the key (or the append failed). A
/// duplicate now gets the answer the first submission gets.
#[tokio::test(start_paused = true)]
async fn a_duplicate_sent_while_its_key_is_being_stored_gets_the_same_answer() {
    let store = GatedStore::open_now();
    let (_, a) = counting(store.clone(), OrchestratorConfig::default());
    let handle = a.submit(keyed("k", Durability::Durable)).await.expect("a");
    let logged = handle.id;
    handle.outcome().await.expect("outcome");
    let (second, b) = counting(store.clone(), OrchestratorConfig::default());
    // The store refuses the key: both get the logged task's id.
    store.close();
    let reached = store.calls() + 1;
    let first = tokio::spawn({
        let b = b.clone();
        async move { b.submit(keyed("k", Durability::Durable)).await }
    });
    store.calls_reached(reached).await;
    let duplicate = poll_once(Box::pin(b.submit(keyed("k", Durability::Durable)))).await;
    // The loop serves commands in order: once this returns, it has seen
    // the duplicate.
    assert!(!b.is_running(Uuid::nil()).await);
    store.open();
    assert_eq!(
        first.await.expect("join").map(|h| h.id),
        Err(OrchestratorError::AlreadySubmitted(logged))
    );
    assert_eq!(
        duplicate.await.map(|h| h.id),
        Err(OrchestratorError::AlreadySubmitted(logged))
    );
    // The append fails: both get the store's error, and the key is free.
    store.close();
    store.fail_next(1);
    let reached = store.calls() + 1;
    let first = tokio::spawn({
        let b = b.clone();
        async move { b.submit(keyed("fresh", Durability::Durable)).await }
    });
    store.calls_reached(reached).await;
    let duplicate = poll_once(Box::pin(b.submit(keyed("fresh", Durability::Durable)))).await;
    assert!(!b.is_running(Uuid::nil()).await);
    store.open();
    assert!(matches!(
        first.await.expect("join"),
        Err(OrchestratorError::Store(_))
    ));
    assert!(matches!(duplicate.await, Err(OrchestratorError::Store(_))));
    let fresh = b
        .submit(keyed("fresh", Durability::Durable))
        .await
        .expect("retry");
    fresh.outcome().await.expect("outcome");
    assert_eq!(second.runs.load(Ordering::SeqCst), 1);
}

/// Regression (issue 14): a task's async events each waited for the store
/// on a task of their own, as many as the handler made. With the store
/// stuck, a handler reporting in a loop now waits once
/// `TASK_ASYNC_APPENDS` of its events are waiting; when the store moves,
/// every report is logged, in order.
#[tokio::test(start_paused = true)]
async fn a_stuck_store_makes_a_chatty_handler_wait_instead_of_growing_memory() {
    let store = GatedStore::closed();
    let (counted, orch) = counting(store.clone(), OrchestratorConfig::default());
    let reports = 3 * TASK_ASYNC_APPENDS;
    let mut task = spec("counted", json!({ "reports": reports }));
    task.durability = Durability::Async;
    let handle = orch.submit(task).await.expect("submit");
    // The paused clock moves only once every task is idle: the handler is
    // waiting for the store, or has finished.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let made = counted.reports.load(Ordering::SeqCst);
    assert!(
        made <= TASK_ASYNC_APPENDS,
        "{made} of {reports} reports made while the store was stuck"
    );
    store.open();
    handle.outcome().await.expect("outcome");
    assert_eq!(counted.reports.load(Ordering::SeqCst), reports);
    let progress: Vec<Value> = store
        .events()
        .await
        .into_iter()
        .filter_map(|e| match e {
            SystemEvent::TaskProgress { progress, .. } => Some(progress),
            _ => None,
        })
        .collect();
    let expected: Vec<Value> = (0..reports).map(|i| json!(i)).collect();
    assert_eq!(progress, expected);
}

#[tokio::test(start_paused = true)]
async fn a_full_orchestrator_slows_submitters_instead_of_dropping_or_growing() {
    let (store, orch) = start(OrchestratorConfig {
        max_pending: 2,
        ..OrchestratorConfig::default()
    });
    let first = orch
        .submit(spec("sleep", json!({"ms": 1_000})))
        .await
        .expect("1");
    let _second = orch
        .submit(spec("sleep", json!({"ms": 1_000})))
        .await
        .expect("2");
    // A third must wait until one of the two ends.
    let third = tokio::time::timeout(
        Duration::from_millis(500),
        orch.submit(spec("echo", json!(3))),
    )
    .await;
    assert!(
        third.is_err(),
        "the third submission got in while two were pending"
    );
    assert!(matches!(
        first.outcome().await,
        Ok(TaskOutcome::Completed(_))
    ));
    let third = orch
        .submit(spec("echo", json!(3)))
        .await
        .expect("3 after room");
    assert_eq!(
        third.outcome().await.expect("3"),
        TaskOutcome::Completed(json!(3))
    );
    assert_eq!(
        store.projected_state().await.expect("state").tasks().len(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn no_more_attempts_run_at_once_than_the_concurrency_limit() {
    let (_store, orch) = start(OrchestratorConfig {
        max_concurrency: 2,
        ..OrchestratorConfig::default()
    });
    let began = Instant::now();
    let handles = futures_join(
        &orch,
        (0..6).map(|_| spec("sleep", json!({"ms": 100}))).collect(),
    )
    .await;
    for h in handles {
        assert!(matches!(h.outcome().await, Ok(TaskOutcome::Completed(_))));
    }
    // Six 100 ms tasks, two at a time: three rounds.
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(400), "{took:?}");
}

async fn futures_join(orch: &Orchestrator, specs: Vec<TaskSpec>) -> Vec<agentic_core::TaskHandle> {
    let mut handles = Vec::new();
    for s in specs {
        handles.push(orch.submit(s).await.expect("submit"));
    }
    handles
}

#[tokio::test(start_paused = true)]
async fn ephemeral_tasks_are_never_logged_and_async_ones_are() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut eph = spec("echo", json!("e"));
    eph.durability = Durability::Ephemeral;
    let mut asy = spec("echo", json!("a"));
    asy.durability = Durability::Async;
    let mut live = orch.subscribe();
    let e = orch.submit(eph).await.expect("ephemeral");
    assert_eq!(
        e.clone().outcome().await.expect("e"),
        TaskOutcome::Completed(json!("e"))
    );
    let a = orch.submit(asy).await.expect("async");
    assert_eq!(
        a.clone().outcome().await.expect("a"),
        TaskOutcome::Completed(json!("a"))
    );
    let state = store.projected_state().await.expect("state");
    assert!(
        state.task(e.id).is_none(),
        "an ephemeral task reached the log"
    );
    assert_eq!(
        state.task(a.id).map(|t| t.status),
        Some(TaskStatus::Completed)
    );
    // Both were seen live, the ephemeral one without a sequence number.
    let mut seen_ephemeral = false;
    while let Ok(LiveEvent { seq, event, .. }) = live.try_recv() {
        if let SystemEvent::TaskCompleted { task_id, .. } = event
            && task_id == e.id
        {
            assert_eq!(seq, None);
            seen_ephemeral = true;
        }
    }
    assert!(seen_ephemeral);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_handler_is_refused_before_anything_is_logged() {
    let (store, orch) = start(OrchestratorConfig::default());
    let err = orch
        .submit(spec("no-such-handler", json!(null)))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unknown handler \"no-such-handler\"");
    assert_eq!(store.head().await.expect("head").seq, 0);
    assert!(orch.cancel(Uuid::now_v7(), "x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn progress_is_recorded_and_events_carry_correlation_and_causation() {
    let (store, orch) = start(OrchestratorConfig::default());
    let handle = orch
        .submit(spec("sleep", json!({"ms": 100})))
        .await
        .expect("submit");
    let id = handle.id;
    handle.outcome().await.expect("outcome");
    assert_eq!(
        events_of(&store, id).await,
        [
            "task_submitted",
            "task_started",
            "task_progress",
            "task_completed"
        ]
    );
    let log = store.read_from(1, usize::MAX).await.expect("read");
    let correlation = log[0].correlation_id;
    for e in &log {
        assert_eq!(e.correlation_id, correlation);
        assert_eq!(e.causation_id, Some(id));
    }
}

/// Appends events as another process would.
async fn append(store: &MemoryStore, events: Vec<SystemEvent>) {
    let events = events
        .into_iter()
        .map(|e| agentic_core::NewEvent::new(e, Uuid::now_v7()))
        .collect();
    store
        .append(events, agentic_core::ExpectedVersion::Any)
        .await
        .expect("append");
}

#[tokio::test(start_paused = true)]
async fn a_task_submitted_elsewhere_is_adopted_and_run() {
    let (store, orch) = start(OrchestratorConfig::default());
    let id = Uuid::now_v7();
    append(
        &store,
        vec![SystemEvent::TaskSubmitted {
            task_id: id,
            spec: spec("echo", json!("from afar")),
        }],
    )
    .await;
    let record = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    let handle = orch.adopt(&record).await.expect("adopt");
    assert_eq!(handle.id, id);
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Completed(json!("from afar"))
    );
    assert_eq!(
        events_of(&store, id).await,
        ["task_submitted", "task_started", "task_completed"]
    );
    let ended = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    assert!(orch.adopt(&ended).await.is_err(), "an ended task ran again");
}

/// The next end a claimed task hands over (time is paused: no real wait).
async fn next_ending(
    endings: &mut tokio::sync::mpsc::UnboundedReceiver<agentic_core::orchestrator::TaskEnding>,
) -> agentic_core::orchestrator::TaskEnding {
    tokio::time::timeout(Duration::from_secs(60), endings.recv())
        .await
        .expect("the task handed over no end")
        .expect("an ending")
}

/// Records `spec` as submitted with its first attempt claimed in the same
/// batch, as a workflow move does; the task's record.
async fn claimed(store: &MemoryStore, spec: TaskSpec) -> agentic_core::TaskRecord {
    let id = Uuid::now_v7();
    append(
        store,
        vec![
            SystemEvent::TaskSubmitted { task_id: id, spec },
            SystemEvent::TaskStarted {
                task_id: id,
                attempt: 1,
                kernel: None,
            },
        ],
    )
    .await;
    let state = store.projected_state().await.expect("state");
    state.task(id).cloned().expect("task")
}

#[tokio::test(start_paused = true)]
async fn a_claimed_task_runs_at_once_and_hands_its_end_to_its_submitter() {
    let (store, orch) = start(OrchestratorConfig::default());
    let (sink, mut endings) = tokio::sync::mpsc::unbounded_channel();

    // Taken: the submitter commits the end (here alone; a workflow driver
    // commits it with the run's next move) and tells the task.
    let task = claimed(&store, spec("echo", json!("claimed"))).await;
    let handle = orch
        .adopt_claimed(&task, sink.clone(), std::time::Instant::now())
        .await
        .expect("adopt");
    let ending = next_ending(&mut endings).await;
    assert_eq!(ending.task, task.id);
    assert!(
        matches!(&ending.event, SystemEvent::TaskCompleted { attempt: 1, output, .. } if output == &json!("claimed")),
        "{:?}",
        ending.event
    );
    let events = vec![agentic_core::NewEvent::new(
        ending.event.clone(),
        Uuid::now_v7(),
    )];
    let receipt = store
        .append(events, agentic_core::ExpectedVersion::Any)
        .await
        .expect("append");
    ending.recorded(receipt.first_seq);
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Completed(json!("claimed"))
    );
    assert_eq!(
        events_of(&store, task.id).await,
        ["task_submitted", "task_started", "task_completed"],
        "the claimed attempt was claimed again, or its end recorded twice"
    );

    // Declined: the task records its end alone. A retry is claimed and
    // recorded by the task itself; only the final end is handed over.
    let mut failing = spec("fail", json!("no"));
    failing.retry = RetryPolicy {
        max_retries: 1,
        ..RetryPolicy::default()
    };
    let task = claimed(&store, failing).await;
    let handle = orch
        .adopt_claimed(&task, sink, std::time::Instant::now())
        .await
        .expect("adopt");
    let ending = next_ending(&mut endings).await;
    assert!(
        matches!(
            ending.event,
            SystemEvent::TaskFailed {
                attempt: 2,
                is_final: true,
                ..
            }
        ),
        "{:?}",
        ending.event
    );
    drop(ending);
    assert!(matches!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Failed(_)
    ));
    assert_eq!(
        events_of(&store, task.id).await,
        [
            "task_submitted",
            "task_started",
            "task_failed",
            "task_started",
            "task_failed"
        ]
    );
    assert!(
        replayed(&store)
            .await
            .diff(&store.projected_state().await.expect("state"))
            .is_empty()
    );
}

/// A claimed task as its move stores it, and its cancellation recorded
/// after: the orchestrator counting its handler's runs, the store, the task.
async fn claimed_then_cancelled() -> (
    Arc<Counted>,
    Orchestrator,
    Arc<MemoryStore>,
    agentic_core::TaskRecord,
) {
    let store = Arc::new(MemoryStore::new());
    let (counted, orch) = counting(store.clone(), OrchestratorConfig::default());
    let task = claimed(&store, spec("counted", json!({}))).await;
    append(
        &store,
        vec![SystemEvent::TaskCancelled {
            task_id: task.id,
            reason: "the test".into(),
        }],
    )
    .await;
    (counted, orch, store, task)
}

/// Hands claimed `task`, whose claim was stored at `stored`, to `orch`, and
/// checks it ends cancelled as the log says without its handler having run
/// or its cancellation recorded again. Ends are declined (no receiver): a
/// task that ran would record its own.
async fn ends_cancelled_unrun(
    counted: &Counted,
    orch: &Orchestrator,
    store: &MemoryStore,
    task: &agentic_core::TaskRecord,
    stored: std::time::Instant,
) {
    let (sink, _) = tokio::sync::mpsc::unbounded_channel();
    let handle = orch.adopt_claimed(task, sink, stored).await.expect("adopt");
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Cancelled("the test".into())
    );
    assert_eq!(counted.runs.load(Ordering::SeqCst), 0, "its handler ran");
    assert_eq!(
        events_of(store, task.id).await,
        ["task_submitted", "task_started", "task_cancelled"],
        "the cancellation was recorded again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_claimed_task_cancelled_before_its_hand_over_starts_cancelled() {
    let (counted, orch, store, task) = claimed_then_cancelled().await;
    // The kernel's loop read the cancellation before the hand-over; the
    // task is handed over at once, so it does not read its record back.
    orch.cancel_claimed(task.id, "the test".into()).await;
    ends_cancelled_unrun(&counted, &orch, &store, &task, std::time::Instant::now()).await;
}

#[tokio::test(start_paused = true)]
async fn a_claimed_task_handed_over_late_reads_that_it_was_cancelled() {
    let (counted, orch, store, task) = claimed_then_cancelled().await;
    // The kernel's loop has not read the cancellation; the hand-over comes
    // a second after the claim was stored.
    let stored = std::time::Instant::now()
        .checked_sub(Duration::from_secs(1))
        .expect("an instant a second ago");
    ends_cancelled_unrun(&counted, &orch, &store, &task, stored).await;
}

#[tokio::test(start_paused = true)]
async fn an_early_cancellation_is_forgotten_once_its_task_was_handed_over() {
    let store = Arc::new(MemoryStore::new());
    let (counted, orch) = counting(store.clone(), OrchestratorConfig::default());
    let task = claimed(&store, spec("counted", json!({}))).await;
    // Kept for a hand-over that failed elsewhere, then dropped: a later
    // adoption of the same id runs as usual.
    orch.cancel_claimed(task.id, "the test".into()).await;
    orch.handed_over(task.id).await;
    let (sink, mut endings) = tokio::sync::mpsc::unbounded_channel();
    let handle = orch
        .adopt_claimed(&task, sink, std::time::Instant::now())
        .await
        .expect("adopt");
    let ending = next_ending(&mut endings).await;
    assert!(matches!(ending.event, SystemEvent::TaskCompleted { .. }));
    drop(ending); // declined: the task records its end alone
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Completed(json!({}))
    );
    assert_eq!(counted.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_task_not_running_in_the_log_is_not_taken_as_claimed() {
    let (store, orch) = start(OrchestratorConfig::default());
    let id = Uuid::now_v7();
    append(
        &store,
        vec![SystemEvent::TaskSubmitted {
            task_id: id,
            spec: spec("echo", json!(1)),
        }],
    )
    .await;
    let pending = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    let (sink, _endings) = tokio::sync::mpsc::unbounded_channel();
    assert_eq!(
        orch.adopt_claimed(&pending, sink, std::time::Instant::now())
            .await
            .err(),
        Some(OrchestratorError::NotClaimed(id))
    );
    assert_eq!(events_of(&store, id).await, ["task_submitted"]);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_attempt_is_recorded_then_retried_or_failed_by_policy() {
    let (store, orch) = start(OrchestratorConfig::default());
    let retried = Uuid::now_v7();
    let failed = Uuid::now_v7();
    let again = Uuid::now_v7();
    let mut with_retry = spec("echo", json!(1));
    with_retry.retry.max_retries = 1;
    // No retry for its failures, but one for an interruption.
    let mut runs_again = spec("echo", json!(3));
    runs_again.retry.retry_interrupted = true;
    append(
        &store,
        vec![
            SystemEvent::TaskSubmitted {
                task_id: retried,
                spec: with_retry,
            },
            SystemEvent::TaskStarted {
                task_id: retried,
                attempt: 1,
                kernel: None,
            },
            SystemEvent::TaskSubmitted {
                task_id: failed,
                spec: spec("echo", json!(2)),
            },
            SystemEvent::TaskStarted {
                task_id: failed,
                attempt: 1,
                kernel: None,
            },
            SystemEvent::TaskSubmitted {
                task_id: again,
                spec: runs_again,
            },
            SystemEvent::TaskStarted {
                task_id: again,
                attempt: 1,
                kernel: None,
            },
        ],
    )
    .await;
    let state = store.projected_state().await.expect("state");
    let c = orch
        .adopt(state.task(again).expect("again"))
        .await
        .expect("adopt");
    assert_eq!(
        c.outcome().await.expect("c"),
        TaskOutcome::Completed(json!(3))
    );
    let a = orch
        .adopt(state.task(retried).expect("retried"))
        .await
        .expect("adopt");
    let b = orch
        .adopt(state.task(failed).expect("failed"))
        .await
        .expect("adopt");
    assert_eq!(
        a.outcome().await.expect("a"),
        TaskOutcome::Completed(json!(1))
    );
    assert!(
        matches!(b.outcome().await.expect("b"), TaskOutcome::Failed(e) if e.starts_with("interrupted"))
    );
    assert_eq!(
        events_of(&store, retried).await,
        [
            "task_submitted",
            "task_started",
            "task_failed",
            "task_started",
            "task_completed"
        ]
    );
    assert_eq!(
        events_of(&store, failed).await,
        ["task_submitted", "task_started", "task_failed"]
    );
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.task(retried).map(|t| t.attempts), Some(2));
    assert!(replayed(&store).await.diff(&state).is_empty());
}

/// Regression: a workflow step's interruptions used up its retries (a
/// step with one retry, interrupted twice, failed at its first real
/// failure). With `retry_interrupted`, interrupted attempts do not count.
#[tokio::test(start_paused = true)]
async fn interrupted_attempts_do_not_use_up_the_retries_of_a_task_that_runs_again_after_them() {
    let (store, orch) = start(OrchestratorConfig::default());
    let id = Uuid::now_v7();
    // Fails its first three attempts: two interrupted, then one real failure.
    let mut step = spec("fail", json!({"times": 3, "message": "flaky"}));
    step.retry.max_retries = 1;
    step.retry.retry_interrupted = true;
    let started = |attempt| SystemEvent::TaskStarted {
        task_id: id,
        attempt,
        kernel: None,
    };
    append(
        &store,
        vec![
            SystemEvent::TaskSubmitted {
                task_id: id,
                spec: step,
            },
            started(1),
            SystemEvent::TaskFailed {
                task_id: id,
                attempt: 1,
                error: "interrupted: its process stopped while it ran".into(),
                is_final: false,
                interrupted: true,
            },
            started(2),
        ],
    )
    .await;
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.task(id).map(|t| t.interrupted), Some(1));
    let handle = orch
        .adopt(state.task(id).expect("task"))
        .await
        .expect("adopt");
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Completed(json!({"times": 3, "message": "flaky"}))
    );
    assert_eq!(attempts_of(&store, id).await, (4, 2));
    let failures: Vec<(u32, bool)> = store
        .read_from(1, usize::MAX)
        .await
        .expect("read")
        .into_iter()
        .filter_map(|e| match e.decode().expect("decode") {
            SystemEvent::TaskFailed {
                attempt,
                interrupted,
                ..
            } => Some((attempt, interrupted)),
            _ => None,
        })
        .collect();
    assert_eq!(failures, [(1, true), (2, true), (3, false)]);
    let state = store.projected_state().await.expect("state");
    assert!(replayed(&store).await.diff(&state).is_empty());
}

/// Review regression: a kernel that took over an interrupted attempt whose
/// interruption another kernel recorded first did not count it, so a
/// later real failure used up one retry too many.
#[tokio::test(start_paused = true)]
async fn an_interruption_another_kernel_recorded_first_is_counted_all_the_same() {
    let (me, dead) = (Uuid::now_v7(), Uuid::now_v7());
    let (store, orch) = start(OrchestratorConfig {
        kernel: Some(me),
        ..OrchestratorConfig::default()
    });
    let id = Uuid::now_v7();
    // Attempt 1 interrupted; attempt 2 fails for real; attempt 3 succeeds.
    let mut step = spec("fail", json!({"times": 2, "message": "flaky"}));
    step.retry.max_retries = 1;
    step.retry.retry_interrupted = true;
    append(
        &store,
        vec![
            SystemEvent::TaskSubmitted {
                task_id: id,
                spec: step,
            },
            SystemEvent::TaskStarted {
                task_id: id,
                attempt: 1,
                kernel: Some(dead),
            },
        ],
    )
    .await;
    // This kernel read the task while its attempt was still running...
    let stale = store
        .projected_state()
        .await
        .expect("state")
        .task(id)
        .cloned()
        .expect("task");
    // ...and another kernel recorded the interruption before it could.
    append(
        &store,
        vec![SystemEvent::TaskFailed {
            task_id: id,
            attempt: 1,
            error: "interrupted: kernel stopped renewing its lease while it ran".into(),
            is_final: false,
            interrupted: true,
        }],
    )
    .await;
    let handle = orch.adopt(&stale).await.expect("adopt");
    assert_eq!(
        handle.outcome().await.expect("outcome"),
        TaskOutcome::Completed(json!({"times": 2, "message": "flaky"}))
    );
    assert_eq!(attempts_of(&store, id).await, (3, 1));
}

/// Regression (issue 14 review): a process told to stop at once dropped
/// its running tasks unrecorded. `interrupt` now records each running
/// attempt as a crash would be seen by the next process (failed
/// "interrupted", retried by policy), children included (as interrupted,
/// not as cancelled by their parent), leaves a task waiting for a slot as
/// the log has it, refuses new work, and the next orchestrator finishes
/// what is left.
#[tokio::test(start_paused = true)]
async fn interrupting_records_running_attempts_as_a_crash_would_be() {
    let (store, orch) = start(OrchestratorConfig {
        max_concurrency: 3,
        ..OrchestratorConfig::default()
    });
    let mut live = orch.subscribe();
    let long = json!({"ms": 60_000});
    let failed = orch.submit(spec("sleep", long.clone())).await.expect("a");
    let mut with_retry = spec("sleep", long.clone());
    with_retry.retry = RetryPolicy {
        max_retries: 1,
        base_delay_ms: 10,
        max_delay_ms: 10,
        retry_interrupted: false,
    };
    let retried = orch.submit(with_retry).await.expect("b");
    let parent = orch
        .submit(spec(
            "fanout",
            json!({"n": 1, "handler": "sleep", "input": long}),
        ))
        .await
        .expect("parent");
    // The three, and the parent's child (in the slot its parent gave up).
    let mut started = 0;
    while started < 4 {
        if let SystemEvent::TaskStarted { .. } = live.recv().await.expect("live").event {
            started += 1;
        }
    }
    let waiting = orch.submit(spec("sleep", long.clone())).await.expect("d");
    let (failed_id, retried_id, parent_id, waiting_id) =
        (failed.id, retried.id, parent.id, waiting.id);

    orch.interrupt().await;

    let interrupted = |outcome: TaskOutcome| matches!(&outcome, TaskOutcome::Failed(e) if e.starts_with("interrupted"));
    assert!(interrupted(failed.outcome().await.expect("a")));
    assert!(interrupted(parent.outcome().await.expect("parent")));
    // Unended here: the next process's.
    assert_eq!(retried.outcome().await, Err(OrchestratorError::ShutDown));
    assert_eq!(waiting.outcome().await, Err(OrchestratorError::ShutDown));
    assert!(matches!(
        orch.submit(spec("echo", json!(1))).await,
        Err(OrchestratorError::ShutDown)
    ));

    let state = store.projected_state().await.expect("state");
    let child = state.task(parent_id).expect("parent").children[0];
    for id in [failed_id, parent_id, child] {
        let task = state.task(id).expect("task");
        assert_eq!(task.status, TaskStatus::Failed, "{id}");
        assert!(
            task.error
                .as_deref()
                .is_some_and(|e| e.starts_with("interrupted")),
            "{task:?}"
        );
        assert_eq!(
            events_of(&store, id).await,
            ["task_submitted", "task_started", "task_failed"]
        );
    }
    assert_eq!(
        events_of(&store, retried_id).await,
        ["task_submitted", "task_started", "task_failed"]
    );
    assert_eq!(events_of(&store, waiting_id).await, ["task_submitted"]);
    for id in [retried_id, waiting_id] {
        assert_eq!(state.task(id).map(|t| t.status), Some(TaskStatus::Pending));
    }
    assert!(replayed(&store).await.diff(&state).is_empty());

    // The next process runs what is left: the retry, and the waiting task.
    drop(orch);
    let next = Orchestrator::start(
        store.clone(),
        builtin_handlers(),
        OrchestratorConfig::default(),
        Uuid::now_v7(),
    );
    for id in [retried_id, waiting_id] {
        let task = state.task(id).expect("task");
        let handle = next.adopt(task).await.expect("adopt");
        assert_eq!(
            handle.outcome().await.expect("outcome"),
            TaskOutcome::Completed(json!({"slept_ms": 60_000}))
        );
    }
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.task(retried_id).map(|t| t.attempts), Some(2));
    assert_eq!(state.task(waiting_id).map(|t| t.attempts), Some(1));
}
#[tokio::test(start_paused = true)]
async fn a_cancellation_recorded_by_another_process_stops_the_task_here() {
    let (store, orch) = start(OrchestratorConfig::default());
    let mut live = orch.subscribe();
    let handle = orch
        .submit(spec("sleep", json!({"ms": 60_000})))
        .await
        .expect("submit");
    while !matches!(
        live.recv().await.expect("live").event,
        SystemEvent::TaskStarted { .. }
    ) {}
    append(
        &store,
        vec![SystemEvent::TaskCancelled {
            task_id: handle.id,
            reason: "from the CLI".into(),
        }],
    )
    .await;
    assert!(orch.is_running(handle.id).await);
    orch.cancel_recorded(handle.id).await.expect("cancel");
    assert!(matches!(
        handle.clone().outcome().await.expect("outcome"),
        TaskOutcome::Cancelled(_)
    ));
    // The cancellation is in the log once.
    assert_eq!(
        events_of(&store, handle.id).await,
        ["task_submitted", "task_started", "task_cancelled"]
    );
}
