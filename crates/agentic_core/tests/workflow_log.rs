//! A workflow run's events in a store (`agentic_core::workflow::log`), on
//! the in-memory store: a copy brought up to date from its stream's tail
//! equals the run read whole, and a cancellation recorded with no kernel
//! running ends the run and the step task it had started, once.

mod support;

use std::sync::Arc;

use agentic_core::workflow::log::{self, WorkflowError};
use agentic_core::workflow::run::{RunEnd, StepState};
use agentic_core::{EventStore, ExpectedVersion, TaskStatus};
use agentic_store::MemoryStore;
use chrono::Utc;
use support::start_run;
use uuid::Uuid;

/// Records what run `id` decides now, as the kernel's driver would.
async fn move_on(store: &dyn EventStore, id: Uuid) {
    let stored = log::load(store, id).await.expect("load");
    let decision = log::decide(&stored.run, Vec::new(), Utc::now());
    store
        .append(decision.batch(id), ExpectedVersion::Exact(stored.version))
        .await
        .expect("move");
}

#[tokio::test]
async fn a_copy_caught_up_from_the_tail_is_the_run_read_whole() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let id = start_run(
        store.as_ref(),
        "name = \"a\"\n[steps.ask]\nkind = \"approval\"\nprompt = \"ok?\"\ntimeout = \"1h\"\n",
    )
    .await;
    move_on(store.as_ref(), id).await;
    let old = log::load(store.as_ref(), id).await.expect("load");
    assert!(matches!(old.run.steps["ask"], StepState::Asking { .. }));
    // Another writer decides; the old copy catches up.
    log::record_approval(
        store.as_ref(),
        Uuid::now_v7(),
        id,
        "ask",
        (true, "ada", None),
    )
    .await
    .expect("approve");
    move_on(store.as_ref(), id).await;
    let caught = log::catch_up(store.as_ref(), &old).await.expect("catch up");
    let whole = log::load(store.as_ref(), id).await.expect("load");
    assert_eq!(caught.version, whole.version);
    assert_eq!(caught.run.steps, whole.run.steps);
    assert_eq!(caught.run.end, whole.run.end);
    assert!(matches!(whole.run.end, Some(RunEnd::Completed(_))));
    // A decision on a step that no longer waits is refused.
    let late = log::record_approval(
        store.as_ref(),
        Uuid::now_v7(),
        id,
        "ask",
        (false, "bo", None),
    )
    .await
    .unwrap_err();
    assert!(matches!(late, WorkflowError::Refused(_)), "{late}");
}

#[tokio::test]
async fn a_cancellation_with_no_kernel_ends_the_run_and_its_step_task_once() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let id = start_run(
        store.as_ref(),
        "name = \"c\"\n[steps.work]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\n",
    )
    .await;
    move_on(store.as_ref(), id).await;
    let stored = log::load(store.as_ref(), id).await.expect("load");
    let StepState::Scheduled { task } = stored.run.steps["work"] else {
        panic!("the step is scheduled: {:?}", stored.run.steps["work"]);
    };
    assert_eq!(
        store.task(task).await.expect("read").map(|t| t.status),
        Some(TaskStatus::Pending)
    );
    log::record_cancel(store.as_ref(), Uuid::now_v7(), id, "ada")
        .await
        .expect("cancel");
    assert_eq!(
        store.task(task).await.expect("read").map(|t| t.status),
        Some(TaskStatus::Cancelled)
    );
    let ended = log::load(store.as_ref(), id).await.expect("load");
    assert_eq!(ended.run.end, Some(RunEnd::Cancelled("ada".into())));
    let again = log::record_cancel(store.as_ref(), Uuid::now_v7(), id, "ada")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("has already ended"), "{again}");
}
