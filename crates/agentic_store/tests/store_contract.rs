//! The contract of the store port, run on all three adapters — the
//! in-memory store, SQLite and PostgreSQL — one suite, three adapters:
//!
//! - appends: idempotent by event id (also within one group commit),
//!   partial duplicates refused whole, expected versions per stream, an
//!   element created once and only on its own stream, large batches in
//!   order, the hash chain verifying after all of it;
//! - reads: each point and paged read agrees with a fold of the same
//!   events through the kernel's reducer, and paging through a list gives
//!   every item once, in order;
//! - subscriptions: a follower on another instance of the store sees every
//!   event once, in order, catching up and then live;
//! - imports (`lion store copy`): another store's records kept verbatim,
//!   the same chain and the same projections, and anything that does not
//!   continue the log refused whole.
//!
//! The PostgreSQL subjects use a throwaway cluster this test process starts
//! (see `postgres_cluster`), a fresh database per test.

mod postgres_cluster;

use std::sync::Arc;
use std::time::Duration;

use agentic_core::chain::ChainVerifier;
use agentic_core::llm::{AgentSpec, ChatMessage, Role, Usage};
use agentic_core::plugin::{Grant, InstalledPlugin, PluginManifest};
use agentic_core::{
    AgentId, ApplyError, Cursor, ElementData, EventEnvelope, EventStore, ExpectedVersion, NewEvent,
    Page, State, StoreError, SystemEvent, TaskFilter, TaskSpec,
};
use agentic_store::{MemoryStore, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A failure guard for waits that should end at once; never a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

/// A store under test, what keeps it alive, and how to open a second
/// instance of the same store (another process, as far as it can tell).
struct Subject {
    store: Arc<dyn EventStore>,
    _home: Option<Arc<tempfile::TempDir>>,
    kind: Kind,
}

/// Which adapter a subject is, and where its data lives.
#[derive(Clone)]
enum Kind {
    Memory,
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Subject {
    /// Another instance of the same store: the same object in memory, the
    /// same home or database otherwise.
    async fn another(&self) -> Arc<dyn EventStore> {
        match &self.kind {
            Kind::Memory => self.store.clone(),
            Kind::Sqlite(home) => {
                Arc::new(SqliteStore::open(home, SqliteOptions::default()).expect("open again"))
            }
            Kind::Postgres(url) => Arc::new(
                PostgresStore::open(url, PostgresOptions::default())
                    .await
                    .expect("open again"),
            ),
        }
    }
}

async fn memory(_test: &str) -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _home: None,
        kind: Kind::Memory,
    }
}

async fn sqlite(_test: &str) -> Subject {
    let home = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open");
    Subject {
        store: Arc::new(store),
        kind: Kind::Sqlite(home.path().to_path_buf()),
        _home: Some(Arc::new(home)),
    }
}

async fn postgres(test: &str) -> Subject {
    let url = postgres_cluster::cluster().database(test).await;
    let store = PostgresStore::open(&url, PostgresOptions::default())
        .await
        .expect("open");
    Subject {
        store: Arc::new(store),
        _home: None,
        kind: Kind::Postgres(url),
    }
}

/// Runs each contract check on every adapter, as its own test per adapter.
macro_rules! on_every_store {
    ($($check:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::memory(stringify!($check)).await).await;
                }
            )*
        }
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::sqlite(stringify!($check)).await).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::postgres(stringify!($check)).await).await;
                }
            )*
        }
    };
}

on_every_store!(
    appending_the_same_event_ids_again_returns_the_original_positions_and_writes_nothing,
    retries_of_one_batch_appended_at_once_store_it_once,
    a_batch_that_is_only_partly_stored_is_refused_and_writes_nothing,
    expected_versions_are_enforced_per_stream,
    a_batch_creating_one_element_twice_is_refused_whole,
    an_element_is_created_once_and_only_on_its_own_stream,
    a_large_batch_is_stored_in_order,
    concurrent_appenders_build_one_gapless_chain,
    a_subscriber_on_another_instance_sees_every_event_once_in_order,
    elements_are_read_by_id_and_in_pages,
    tasks_are_read_by_id_by_key_and_unfinished,
    an_agent_is_read_with_a_page_of_its_conversation,
    a_respawned_agent_starts_a_new_conversation,
    plugins_are_read_in_pages,
    an_approval_replaces_the_functions_of_the_current_install_only,
    workflow_runs_are_read_by_id_and_unfinished,
    a_retried_append_that_the_rules_would_now_refuse_returns_its_positions,
    a_log_imported_from_another_store_is_the_same_chain_with_the_same_projections,
    an_import_that_does_not_continue_the_log_is_refused_whole,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A JSON object literal as element metadata.
fn meta(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("a JSON object")
}

/// A new element with this metadata.
fn element(metadata: Value) -> ElementData {
    ElementData::new(meta(metadata), Some("content".to_owned()))
}

/// An event creating `element`, on the element's stream, with a fresh event id.
fn created(element: ElementData) -> NewEvent {
    NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
}

/// An event creating a fresh element with this metadata.
fn new_event(metadata: Value) -> NewEvent {
    created(element(metadata))
}

/// An event no projection reflects (an agent's own record) on `stream`.
fn on_stream(stream: &str) -> NewEvent {
    let agent = AgentId::new("test", "notes");
    let data = json!({ "stream": stream });
    let mut event = NewEvent::new(SystemEvent::AgentRecorded { agent, data }, Uuid::now_v7());
    event.stream = stream.to_owned();
    event
}

/// Every record of the log, in order, with the chain verified.
async fn log(store: &dyn EventStore) -> Vec<EventEnvelope> {
    let mut out: Vec<EventEnvelope> = Vec::new();
    loop {
        let batch = store
            .read_from(out.len() as u64 + 1, 1000)
            .await
            .expect("read the log");
        if batch.is_empty() {
            break;
        }
        out.extend(batch);
    }
    let mut verifier = ChainVerifier::new();
    for record in &out {
        verifier.check(record).expect("the chain verifies");
    }
    assert_eq!(
        store.head().await.expect("head"),
        verifier.head(),
        "the head is the last record"
    );
    out
}

fn seqs(records: &[EventEnvelope]) -> Vec<u64> {
    records.iter().map(|e| e.seq).collect()
}

/// The differences between a fold of the log and the store's projections;
/// empty when they agree.
async fn replay_vs_projection(store: &dyn EventStore) -> Vec<String> {
    let mut replayed = State::new();
    for record in log(store).await {
        replayed
            .apply_owned(record.decode().expect("decode"))
            .expect("the log folds");
    }
    let projected = store.projected_state().await.expect("projected state");
    replayed.diff(&projected)
}

// ---------------------------------------------------------------------------
// Appends
// ---------------------------------------------------------------------------

async fn appending_the_same_event_ids_again_returns_the_original_positions_and_writes_nothing(
    subject: Subject,
) {
    let store = subject.store.as_ref();
    for i in 0..2 {
        store
            .append(
                vec![new_event(json!({ "single": i }))],
                ExpectedVersion::Any,
            )
            .await
            .expect("append");
    }
    let batch: Vec<_> = (0..3).map(|i| new_event(json!({ "batch": i }))).collect();
    let first = store
        .append(batch.clone(), ExpectedVersion::Any)
        .await
        .expect("first append");
    assert_eq!(
        (first.first_seq, first.last_seq, first.deduplicated),
        (3, 5, false)
    );
    let retry = store
        .append(batch.clone(), ExpectedVersion::Any)
        .await
        .expect("retry");
    assert_eq!(
        (retry.first_seq, retry.last_seq, retry.deduplicated),
        (3, 5, true)
    );
    // A retry is answered before its expectation is checked: the
    // expectation held when the batch was first appended.
    let single = new_event(json!({ "single": true }));
    let stream = single.stream.clone();
    let stored = store
        .append(vec![single.clone()], ExpectedVersion::NoStream)
        .await
        .expect("single append");
    let again = store
        .append(vec![single.clone()], ExpectedVersion::NoStream)
        .await
        .expect("retry with an expectation that no longer holds");
    assert_eq!((stored.first_seq, stored.deduplicated), (6, false));
    assert_eq!(
        (again.first_seq, again.last_seq, again.deduplicated),
        (6, 6, true)
    );
    let records = log(store).await;
    assert_eq!(seqs(&records), (1..=6).collect::<Vec<_>>());
    assert_eq!(records.iter().filter(|e| e.stream == stream).count(), 1);
    assert_eq!(
        store
            .projected_state()
            .await
            .expect("state")
            .elements()
            .len(),
        6
    );
    assert!(replay_vs_projection(store).await.is_empty());
}

async fn retries_of_one_batch_appended_at_once_store_it_once(subject: Subject) {
    let store = subject.store.clone();
    let batch: Vec<_> = (0..4).map(|i| new_event(json!({ "i": i }))).collect();
    let retries = (0..8).map(|_| {
        let store = store.clone();
        let batch = batch.clone();
        tokio::spawn(async move { store.append(batch, ExpectedVersion::Any).await })
    });
    let mut fresh = 0;
    for retry in retries.collect::<Vec<_>>() {
        let receipt = retry.await.expect("join").expect("append");
        assert_eq!((receipt.first_seq, receipt.last_seq), (1, 4));
        fresh += usize::from(!receipt.deduplicated);
    }
    assert_eq!(fresh, 1, "exactly one of the retries writes the batch");
    assert_eq!(seqs(&log(store.as_ref()).await), vec![1, 2, 3, 4]);
}

async fn a_batch_that_is_only_partly_stored_is_refused_and_writes_nothing(subject: Subject) {
    let store = subject.store.as_ref();
    let old = new_event(json!({ "old": true }));
    let fresh = new_event(json!({ "fresh": true }));
    store
        .append(vec![old.clone()], ExpectedVersion::Any)
        .await
        .expect("store the old event");
    let before = log(store).await;
    for batch in [
        vec![old.clone(), fresh.clone()],
        vec![fresh.clone(), old.clone()],
    ] {
        assert_eq!(
            store.append(batch, ExpectedVersion::Any).await,
            Err(StoreError::PartialDuplicate(old.event_id))
        );
    }
    assert_eq!(log(store).await, before);
    assert_eq!(
        store
            .projected_state()
            .await
            .expect("state")
            .elements()
            .len(),
        1
    );
    let receipt = store
        .append(vec![fresh], ExpectedVersion::Any)
        .await
        .expect("fresh alone");
    assert_eq!((receipt.first_seq, receipt.deduplicated), (2, false));
    assert!(replay_vs_projection(store).await.is_empty());
}

async fn expected_versions_are_enforced_per_stream(subject: Subject) {
    let store = subject.store.as_ref();
    let on = on_stream;
    let wrong = |expected, actual| {
        Err(StoreError::WrongExpectedVersion {
            stream: "orders".into(),
            expected,
            actual,
        })
    };
    let first = |r: Result<agentic_core::AppendReceipt, StoreError>| r.map(|r| r.first_seq);
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::NoStream)
                .await
        ),
        Ok(1)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::NoStream)
                .await
        ),
        wrong(ExpectedVersion::NoStream, 1)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::Exact(0))
                .await
        ),
        wrong(ExpectedVersion::Exact(0), 1)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders"), on("orders")], ExpectedVersion::Exact(1))
                .await
        ),
        Ok(2)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::Exact(1))
                .await
        ),
        wrong(ExpectedVersion::Exact(1), 3)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::Exact(4))
                .await
        ),
        wrong(ExpectedVersion::Exact(4), 3)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("orders")], ExpectedVersion::Exact(3))
                .await
        ),
        Ok(4)
    );
    assert_eq!(
        first(
            store
                .append(vec![on("invoices")], ExpectedVersion::Exact(0))
                .await
        ),
        Ok(5)
    );
    // A batch over several streams is checked on its first event's.
    assert_eq!(
        first(
            store
                .append(
                    vec![on("orders"), on("invoices")],
                    ExpectedVersion::Exact(3)
                )
                .await
        ),
        wrong(ExpectedVersion::Exact(3), 4)
    );
    assert_eq!(
        first(
            store
                .append(
                    vec![on("orders"), on("invoices")],
                    ExpectedVersion::Exact(4)
                )
                .await
        ),
        Ok(6)
    );
    assert!(matches!(
        store.append(Vec::new(), ExpectedVersion::Any).await,
        Err(StoreError::InvalidBatch(_))
    ));
    let versions: Vec<(String, u64)> = log(store)
        .await
        .into_iter()
        .map(|e| (e.stream, e.stream_version))
        .collect();
    let expected: Vec<(String, u64)> = [
        ("orders", 1),
        ("orders", 2),
        ("orders", 3),
        ("orders", 4),
        ("invoices", 1),
        ("orders", 5),
        ("invoices", 2),
    ]
    .into_iter()
    .map(|(s, v)| (s.to_owned(), v))
    .collect();
    assert_eq!(versions, expected);
}

async fn a_batch_creating_one_element_twice_is_refused_whole(subject: Subject) {
    let store = subject.store.as_ref();
    let existing = element(json!({ "existing": true }));
    store
        .append(vec![created(existing.clone())], ExpectedVersion::Any)
        .await
        .expect("create");
    let before = log(store).await;
    let twice = element(json!({ "twice": true }));
    let bystander = element(json!({ "bystander": true }));
    let batch = vec![
        created(bystander.clone()),
        created(twice.clone()),
        created(twice.clone()),
    ];
    assert_eq!(
        store.append(batch, ExpectedVersion::Any).await,
        Err(StoreError::Rejected(ApplyError::DuplicateElement(twice.id)))
    );
    assert_eq!(
        store
            .append(vec![created(existing.clone())], ExpectedVersion::Any)
            .await,
        Err(StoreError::Rejected(ApplyError::DuplicateElement(
            existing.id
        )))
    );
    assert_eq!(log(store).await, before);
    let state = store.projected_state().await.expect("state");
    assert_eq!(state.elements().len(), 1);
    assert!(state.element(bystander.id).is_none());
    assert!(replay_vs_projection(store).await.is_empty());
}

async fn an_element_is_created_once_and_only_on_its_own_stream(subject: Subject) {
    let store = subject.store.as_ref();
    let mut elsewhere = new_event(json!({ "elsewhere": true }));
    elsewhere.stream = "notes".into();
    assert!(matches!(
        store.append(vec![elsewhere], ExpectedVersion::Any).await,
        Err(StoreError::InvalidBatch(_))
    ));
    let once = element(json!({ "once": true }));
    let first = created(once.clone());
    let receipt = store
        .append(vec![first.clone()], ExpectedVersion::NoStream)
        .await
        .expect("create");
    assert_eq!(
        store
            .append(vec![created(once.clone())], ExpectedVersion::Any)
            .await,
        Err(StoreError::Rejected(ApplyError::DuplicateElement(once.id)))
    );
    let retried = store
        .append(vec![first], ExpectedVersion::Any)
        .await
        .expect("retry");
    assert_eq!(
        (retried.first_seq, retried.deduplicated),
        (receipt.first_seq, true)
    );
    assert_eq!(seqs(&log(store).await), vec![1]);
    assert!(replay_vs_projection(store).await.is_empty());
}

async fn a_large_batch_is_stored_in_order(subject: Subject) {
    let store = subject.store.as_ref();
    store
        .append(
            vec![new_event(json!({ "first": true }))],
            ExpectedVersion::Any,
        )
        .await
        .expect("append");
    let batch: Vec<_> = (0..75).map(|i| new_event(json!({ "i": i }))).collect();
    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let receipt = store
        .append(batch, ExpectedVersion::Any)
        .await
        .expect("append");
    assert_eq!((receipt.first_seq, receipt.last_seq), (2, 76));
    let records = log(store).await;
    assert_eq!(
        records[1..].iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids
    );
    assert!(replay_vs_projection(store).await.is_empty());
}

/// Many appenders at once, on two instances of the store: every
/// acknowledged event is in the log once, the sequence has no gap, and
/// the chain verifies.
async fn concurrent_appenders_build_one_gapless_chain(subject: Subject) {
    let stores = [subject.store.clone(), subject.another().await];
    let appenders: Vec<_> = (0..32)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for j in 0..20 {
                    let event = new_event(json!({ "appender": i, "n": j }));
                    ids.push(event.event_id);
                    store
                        .append(vec![event], ExpectedVersion::Any)
                        .await
                        .expect("append");
                }
                ids
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for appender in appenders {
        acknowledged.extend(appender.await.expect("join"));
    }
    let records = log(subject.store.as_ref()).await;
    assert_eq!(seqs(&records), (1..=640).collect::<Vec<_>>());
    let mut stored: Vec<Uuid> = records.iter().map(|e| e.event_id).collect();
    stored.sort_unstable();
    acknowledged.sort_unstable();
    assert_eq!(stored, acknowledged);
    assert!(
        replay_vs_projection(subject.store.as_ref())
            .await
            .is_empty()
    );
}

async fn a_subscriber_on_another_instance_sees_every_event_once_in_order(subject: Subject) {
    let writer = subject.store.clone();
    let follower = subject.another().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = new_event(json!({ "before": i }));
        ids.push(e.event_id);
        writer
            .append(vec![e], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    let mut subscription = follower.subscribe(1);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(GUARD, subscription.next())
            .await
            .expect("catch-up read never came")
            .expect("subscription");
        seen.push((e.seq, e.event_id));
    }
    // Now the subscriber is at the end of the log and has to wait.
    let waiting = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            let e = tokio::time::timeout(GUARD, subscription.next())
                .await
                .expect("the subscriber never saw the other instance's commit")
                .expect("subscription");
            got.push((e.seq, e.event_id));
        }
        got
    });
    for i in 0..3 {
        let e = new_event(json!({ "after": i }));
        ids.push(e.event_id);
        writer
            .append(vec![e], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    seen.extend(waiting.await.expect("subscriber task"));
    let expected: Vec<(u64, Uuid)> = (1..=6).zip(ids).collect();
    assert_eq!(seen, expected);
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// Appends `events` one by one, folding them into `state` too.
async fn record(store: &dyn EventStore, state: &mut State, events: Vec<SystemEvent>) {
    for event in events {
        state.apply(&event).expect("the reducer takes it");
        store
            .append(
                vec![NewEvent::new(event, Uuid::now_v7())],
                ExpectedVersion::Any,
            )
            .await
            .expect("append");
    }
}

/// Every item of a list, read `limit` at a time, checking each page's size.
async fn every<T, F>(limit: usize, read: impl FnMut(Cursor) -> F) -> Vec<T>
where
    F: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    every_after(Cursor::START, limit, read).await
}

/// [`every`] from `start` on.
async fn every_after<T, F>(start: Cursor, limit: usize, mut read: impl FnMut(Cursor) -> F) -> Vec<T>
where
    F: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    let mut all = Vec::new();
    let mut after = start;
    loop {
        let page = read(after).await.expect("page");
        assert!(page.items.len() <= limit, "a page holds at most its limit");
        let full = page.items.len() == limit;
        all.extend(page.items);
        match page.next {
            Some(next) => {
                assert!(full, "only a full page says the list goes on");
                after = next;
            }
            None => return all,
        }
    }
}

async fn elements_are_read_by_id_and_in_pages(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let created: Vec<SystemEvent> = (0..7)
        .map(|i| {
            let mut metadata = Map::new();
            metadata.insert("i".into(), json!(i));
            SystemEvent::ElementCreated {
                element: ElementData::new(metadata, Some(format!("element {i}"))),
            }
        })
        .collect();
    record(store, &mut state, created).await;
    for element in state.elements() {
        assert_eq!(
            store.element(element.id).await.expect("read").as_ref(),
            Some(element)
        );
    }
    assert_eq!(store.element(Uuid::now_v7()).await.expect("read"), None);
    let want: Vec<ElementData> = state.elements().cloned().collect();
    for limit in [1, 3, 7, 100] {
        let all = every(limit, |after| store.elements(after, limit)).await;
        assert_eq!(all, want, "pages of {limit}");
    }
    let everything = store
        .elements(Cursor::START, usize::MAX)
        .await
        .expect("all");
    assert_eq!((everything.items, everything.next), (want.clone(), None));
    // A limit of 0 reads as 1: a page always makes progress.
    let page = store.elements(Cursor::START, 0).await.expect("page");
    assert_eq!(page.items.len(), 1);
    assert!(page.next.is_some());
}

async fn tasks_are_read_by_id_by_key_and_unfinished(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let mut submitted = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut spec = TaskSpec::new("echo", json!({ "i": i }));
        if i == 2 {
            spec.idempotency_key = Some("the-key".into());
        }
        if i == 5 {
            spec.parent = Some(ids[0]);
        }
        submitted.push(SystemEvent::TaskSubmitted { task_id: *id, spec });
    }
    record(store, &mut state, submitted).await;
    // Tasks 1 and 3 end; task 4 is running.
    let lives = vec![
        SystemEvent::TaskStarted {
            task_id: ids[1],
            attempt: 1,
            kernel: None,
        },
        SystemEvent::TaskCompleted {
            task_id: ids[1],
            attempt: 1,
            output: json!("done"),
        },
        SystemEvent::TaskCancelled {
            task_id: ids[3],
            reason: "no longer wanted".into(),
        },
        // Claimed by a kernel among several: the claim is projected too.
        SystemEvent::TaskStarted {
            task_id: ids[4],
            attempt: 1,
            kernel: Some(Uuid::now_v7()),
        },
    ];
    record(store, &mut state, lives).await;

    for task in state.tasks() {
        assert_eq!(
            store.task(task.id).await.expect("read").as_ref(),
            Some(task)
        );
    }
    assert_eq!(
        store
            .task(ids[0])
            .await
            .expect("read")
            .expect("parent")
            .children,
        vec![ids[5]]
    );
    assert_eq!(store.task(Uuid::now_v7()).await.expect("read"), None);
    assert_eq!(
        store
            .task_by_key("the-key")
            .await
            .expect("read")
            .map(|t| t.id),
        Some(ids[2])
    );
    assert_eq!(store.task_by_key("another").await.expect("read"), None);

    let all: Vec<_> = state.tasks().cloned().collect();
    let unfinished: Vec<_> = state
        .tasks()
        .filter(|t| !t.status.is_final())
        .cloned()
        .collect();
    assert_eq!(unfinished.len(), 4);
    for limit in [1, 2, 10] {
        let read = every(limit, |after| store.tasks(TaskFilter::All, after, limit)).await;
        assert_eq!(read, all, "all tasks, pages of {limit}");
        let read = every(limit, |after| {
            store.tasks(TaskFilter::Unfinished, after, limit)
        })
        .await;
        assert_eq!(read, unfinished, "unfinished tasks, pages of {limit}");
    }

    // A cursor stays valid while tasks end and new ones come.
    let first = store
        .tasks(TaskFilter::Unfinished, Cursor::START, 2)
        .await
        .expect("first page");
    let late = Uuid::now_v7();
    record(
        store,
        &mut state,
        vec![
            SystemEvent::TaskCompleted {
                task_id: ids[4],
                attempt: 1,
                output: json!(4),
            },
            SystemEvent::TaskSubmitted {
                task_id: late,
                spec: TaskSpec::new("echo", json!(null)),
            },
        ],
    )
    .await;
    let start = first.next.expect("more unfinished tasks");
    let rest = every_after(start, 1, |after| {
        store.tasks(TaskFilter::Unfinished, after, 1)
    })
    .await;
    let ids_of =
        |tasks: &[agentic_core::TaskRecord]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids_of(&first.items), vec![ids[0], ids[2]]);
    assert_eq!(ids_of(&rest), vec![ids[5], late]);
}

fn message(role: Role, text: &str) -> ChatMessage {
    ChatMessage::new(role, text)
}

/// Events giving agent `name` a conversation of `turns` prompts and answers.
fn conversation(name: &str, turns: usize) -> Vec<SystemEvent> {
    let mut events = Vec::new();
    for turn in 0..turns {
        let run_id = Uuid::now_v7();
        events.push(SystemEvent::AgentPrompted {
            name: name.into(),
            run_id,
            message: message(Role::User, &format!("{name} question {turn}")),
        });
        events.push(SystemEvent::LlmFinished {
            agent: name.into(),
            run_id,
            message: message(Role::Assistant, &format!("{name} answer {turn}")),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            finish_reason: Some("stop".into()),
        });
    }
    events
}

fn spawn(name: &str, system: &str) -> SystemEvent {
    SystemEvent::AgentSpawned {
        name: name.into(),
        spec: AgentSpec {
            system: system.into(),
            ..AgentSpec::default()
        },
    }
}

async fn an_agent_is_read_with_a_page_of_its_conversation(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let mut events = vec![spawn("ada", "Be brief."), spawn("bob", "")];
    events.extend(conversation("ada", 5));
    events.extend(conversation("bob", 1));
    events.push(SystemEvent::AgentStopped { name: "bob".into() });
    record(store, &mut state, events).await;

    let ada = state.agent("ada").expect("ada");
    let whole = store
        .agent("ada", Cursor::START, usize::MAX)
        .await
        .expect("read")
        .expect("ada is there");
    assert_eq!(&whole.record, ada);
    assert_eq!((whole.message_count, whole.next), (10, None));
    // Pages of 4: messages 0..4, 4..8, 8..10.
    let mut after = Cursor::START;
    let mut read = Vec::new();
    loop {
        let page = store
            .agent("ada", after, 4)
            .await
            .expect("read")
            .expect("ada");
        assert_eq!(page.message_count, 10);
        assert_eq!(page.record.usage, ada.usage);
        read.extend(page.record.messages);
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(read, ada.messages);
    let none = store
        .agent("ada", Cursor(3), 0)
        .await
        .expect("read")
        .expect("ada");
    assert!(none.record.messages.is_empty());
    assert_eq!(none.next, Some(Cursor(3)));
    let past = store
        .agent("ada", Cursor(99), 5)
        .await
        .expect("read")
        .expect("ada");
    assert!(past.record.messages.is_empty());
    assert_eq!(past.next, None);
    assert_eq!(
        store.agent("nobody", Cursor::START, 5).await.expect("read"),
        None
    );

    let listed = every(1, |after| store.agents(after, 1)).await;
    let names: Vec<&str> = listed.iter().map(|a| a.record.name.as_str()).collect();
    assert_eq!(names, ["ada", "bob"]);
    assert_eq!(
        listed.iter().map(|a| a.message_count).collect::<Vec<_>>(),
        [10, 2]
    );
    assert!(listed.iter().all(|a| a.record.messages.is_empty()));
    assert_eq!(
        listed[1].record.status,
        state.agent("bob").expect("bob").status
    );
}

async fn a_respawned_agent_starts_a_new_conversation(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let mut events = vec![spawn("ada", "first")];
    events.extend(conversation("ada", 3));
    events.push(SystemEvent::AgentStopped { name: "ada".into() });
    events.push(spawn("ada", "second"));
    events.extend(conversation("ada", 1));
    record(store, &mut state, events).await;
    let view = store
        .agent("ada", Cursor::START, usize::MAX)
        .await
        .expect("read")
        .expect("ada");
    assert_eq!(&view.record, state.agent("ada").expect("ada"));
    assert_eq!(view.message_count, 2);
    assert_eq!(view.record.spec.system, "second");
}

fn installed(name: &str) -> InstalledPlugin {
    let manifest = PluginManifest::parse(&format!(
        r#"
name = "{name}"
version = "0.1.0"
description = "A plugin of the contract suite"

[component]
path = "plugin.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[functions.run]
description = "Runs"
input_schema = {{ type = "object" }}
output_schema = {{ type = "object" }}
"#
    ))
    .expect("manifest");
    InstalledPlugin {
        manifest,
        grant: Grant::default(),
        sandbox: "wasm".into(),
        install_id: Some(Uuid::now_v7()),
        dirs_named: true,
    }
}

async fn plugins_are_read_in_pages(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let mut events: Vec<SystemEvent> = ["p1", "p2", "p3", "p4", "p5"]
        .iter()
        .map(|n| SystemEvent::PluginInstalled {
            plugin: Box::new(installed(n)),
        })
        .collect();
    events.push(SystemEvent::PluginRemoved { name: "p2".into() });
    events.push(SystemEvent::PluginInstalled {
        plugin: Box::new(installed("p2")),
    });
    record(store, &mut state, events).await;
    let want: Vec<_> = state.plugins().cloned().collect();
    let names: Vec<&str> = want.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["p1", "p3", "p4", "p5", "p2"]);
    for limit in [1, 2, 5, 50] {
        assert_eq!(
            every(limit, |after| store.plugins(after, limit)).await,
            want,
            "pages of {limit}"
        );
    }
    for plugin in &want {
        let snapshot = store
            .plugin(plugin.name())
            .await
            .expect("read")
            .expect("installed");
        assert_eq!(&snapshot.record, plugin);
    }
    let everything = store.plugins(Cursor::START, usize::MAX).await.expect("all");
    assert_eq!((everything.items.len(), everything.next), (5, None));

    // A cursor stays put when a plugin before it is removed.
    let first = store.plugins(Cursor::START, 2).await.expect("first page");
    record(
        store,
        &mut state,
        vec![SystemEvent::PluginRemoved { name: "p1".into() }],
    )
    .await;
    let start = first.next.expect("more plugins");
    let rest = every_after(start, 1, |after| store.plugins(after, 1)).await;
    let names = |plugins: &[agentic_core::plugin::PluginRecord]| {
        plugins
            .iter()
            .map(|p| p.name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first.items), ["p1", "p3"]);
    assert_eq!(names(&rest), ["p4", "p5", "p2"]);
}

/// Server plugin `name` as installed: its discovered tools recorded.
fn installed_server(name: &str) -> InstalledPlugin {
    let mut manifest = PluginManifest::parse(&format!(
        r#"
name = "{name}"
version = "0.1.0"
description = "A server plugin of the contract suite"

[server]
command = "/usr/bin/env"
"#
    ))
    .expect("manifest");
    // The tools it listed at install, recorded as its functions.
    manifest.functions = installed(name).manifest.functions;
    if let Some(server) = &mut manifest.server {
        server.tree_sha256 = Some("0".repeat(64));
    }
    InstalledPlugin {
        manifest,
        grant: Grant::default(),
        sandbox: "process".into(),
        install_id: Some(Uuid::now_v7()),
        dirs_named: true,
    }
}

async fn an_approval_replaces_the_functions_of_the_current_install_only(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let first = installed_server("srv");
    let stale_id = first.install_id;
    record(
        store,
        &mut state,
        vec![
            SystemEvent::PluginInstalled {
                plugin: Box::new(first),
            },
            SystemEvent::PluginRemoved { name: "srv".into() },
            SystemEvent::PluginInstalled {
                plugin: Box::new(installed_server("srv")),
            },
            SystemEvent::PluginInstalled {
                plugin: Box::new(installed("wasm")),
            },
        ],
    )
    .await;
    let current = store.plugin("srv").await.expect("read").expect("installed");
    let mut functions = current.record.installed.manifest.functions.clone();
    let mut added = functions["run"].clone();
    added.description = "Added later".into();
    added.tool = Some("added.tool".into());
    functions.insert("added_tool".into(), added);
    record(
        store,
        &mut state,
        vec![SystemEvent::PluginApproved {
            name: "srv".into(),
            functions: functions.clone(),
            install_id: current.record.installed.install_id,
        }],
    )
    .await;
    let approved = store.plugin("srv").await.expect("read").expect("installed");
    assert_eq!(approved.record.installed.manifest.functions, functions);
    assert_eq!(
        Some(&approved.record),
        state.plugins().find(|p| p.name() == "srv")
    );

    // An approval meant for the earlier install is refused by both.
    let stale = SystemEvent::PluginApproved {
        name: "srv".into(),
        functions: Default::default(),
        install_id: stale_id,
    };
    assert!(state.clone().apply(&stale).is_err());
    let refused = store
        .append(
            vec![NewEvent::new(stale, Uuid::now_v7())],
            ExpectedVersion::Any,
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let after = store.plugin("srv").await.expect("read").expect("installed");
    assert_eq!(after.record.installed.manifest.functions, functions);

    // A WebAssembly plugin's functions are its component's: refused by both.
    let wasm = store
        .plugin("wasm")
        .await
        .expect("read")
        .expect("installed");
    let approval = SystemEvent::PluginApproved {
        name: "wasm".into(),
        functions: Default::default(),
        install_id: wasm.record.installed.install_id,
    };
    assert!(state.clone().apply(&approval).is_err());
    let refused = store
        .append(
            vec![NewEvent::new(approval, Uuid::now_v7())],
            ExpectedVersion::Any,
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

// ---------------------------------------------------------------------------
// Imports
// ---------------------------------------------------------------------------

/// A log of every kind of event a projection reflects, sealed by an
/// in-memory store: elements, tasks (with a key, children and an end),
/// agents with conversations, a plugin, and a stream of several versions.
/// An event of workflow run `run`, from its JSON.
fn run_event(run: Uuid, event: Value) -> SystemEvent {
    SystemEvent::WorkflowRecorded {
        run,
        event: Box::new(serde_json::from_value(event).expect("a run event")),
    }
}

/// The first event of a run of a definition named `name`.
fn run_started(run: Uuid, name: &str) -> SystemEvent {
    run_event(
        run,
        json!({
            "type": "started", "engine": 1, "name": name,
            "sources": {"main": "flow.toml", "files": {"flow.toml": "name = \"flow\""}},
            "input": {"n": 1}, "at": "2026-12-05T08:00:00Z"
        }),
    )
}

async fn workflow_runs_are_read_by_id_and_unfinished(subject: Subject) {
    let store = subject.store.as_ref();
    let mut state = State::new();
    let runs: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for (i, run) in runs.iter().enumerate() {
        record(
            store,
            &mut state,
            vec![run_started(*run, &format!("flow{i}"))],
        )
        .await;
    }
    let timer = |run| {
        run_event(
            run,
            json!({"type": "timer_set", "step": "a", "due": "2026-12-05T09:00:00Z"}),
        )
    };
    record(
        store,
        &mut state,
        vec![
            timer(runs[0]),
            run_event(
                runs[1],
                json!({"type": "completed", "output": {"ok": true}}),
            ),
            run_event(runs[3], json!({"type": "cancelled", "by": "me"})),
        ],
    )
    .await;
    // Refused whole: a second start, an event of a run that never started,
    // one after the run ended; nothing is written.
    let head = store.head().await.expect("head").seq;
    for (event, reason) in [
        (run_started(runs[0], "again"), "has started already"),
        (timer(Uuid::now_v7()), "no workflow run"),
        (timer(runs[1]), "has ended"),
        (
            run_event(runs[3], json!({"type": "failed", "error": "x"})),
            "has ended",
        ),
    ] {
        let refused = store
            .append(
                vec![NewEvent::new(event, Uuid::now_v7())],
                ExpectedVersion::Any,
            )
            .await
            .expect_err("refused");
        assert!(
            matches!(&refused, StoreError::Rejected(ApplyError::Workflow(e)) if e.to_string().contains(reason)),
            "{refused}"
        );
    }
    assert_eq!(store.head().await.expect("head").seq, head);
    let read = store.workflow(runs[1]).await.expect("read").expect("run 1");
    assert_eq!(Some(&read), state.workflow(runs[1]));
    assert_eq!(read.status, agentic_core::workflow::RunStatus::Completed);
    assert_eq!(read.name, "flow1");
    assert_eq!(store.workflow(Uuid::now_v7()).await.expect("read"), None);
    let all = every(2, |after| store.workflows(TaskFilter::All, after, 2)).await;
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), runs);
    let unfinished = every(2, |after| store.workflows(TaskFilter::Unfinished, after, 2)).await;
    assert_eq!(
        unfinished.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![runs[0], runs[2], runs[4]]
    );
    assert_eq!(replay_vs_projection(store).await, Vec::<String>::new());
}

async fn source_log() -> (MemoryStore, State) {
    let source = MemoryStore::new();
    let mut state = State::new();
    let parent = Uuid::now_v7();
    let child = Uuid::now_v7();
    let mut keyed = TaskSpec::new("echo", json!({ "k": 1 }));
    keyed.idempotency_key = Some("imported-key".into());
    let mut child_spec = TaskSpec::new("echo", json!(2));
    child_spec.parent = Some(parent);
    let mut events = vec![
        SystemEvent::ElementCreated {
            element: element(json!({ "n": 1 })),
        },
        SystemEvent::TaskSubmitted {
            task_id: parent,
            spec: keyed,
        },
        SystemEvent::TaskSubmitted {
            task_id: child,
            spec: child_spec,
        },
        SystemEvent::TaskStarted {
            task_id: parent,
            attempt: 1,
            kernel: Some(Uuid::now_v7()),
        },
        SystemEvent::TaskCompleted {
            task_id: parent,
            attempt: 1,
            output: json!("done"),
        },
        spawn("ada", "Be brief."),
        SystemEvent::PluginInstalled {
            plugin: Box::new(installed("imported")),
        },
    ];
    let run = Uuid::now_v7();
    events.push(run_started(run, "imported"));
    events.push(run_event(run, json!({"type": "failed", "error": "x"})));
    events.extend(conversation("ada", 3));
    record(&source, &mut state, events).await;
    for _ in 0..3 {
        source
            .append(vec![on_stream("notes")], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    for n in 0..40 {
        let event = SystemEvent::ElementCreated {
            element: element(json!({ "n": n })),
        };
        record(&source, &mut state, vec![event]).await;
    }
    (source, state)
}

async fn a_log_imported_from_another_store_is_the_same_chain_with_the_same_projections(
    subject: Subject,
) {
    let store = subject.store.as_ref();
    let (source, state) = source_log().await;
    let records = log(&source).await;
    // In pieces of several sizes, as a copy reads pages.
    let mut head = None;
    for piece in [&records[..1], &records[1..10], &records[10..]] {
        head = Some(store.import(piece.to_vec()).await.expect("import"));
    }
    assert_eq!(head, Some(source.head().await.expect("head")));
    assert_eq!(log(store).await, records, "the same records, byte for byte");
    assert!(replay_vs_projection(store).await.is_empty());
    assert!(
        state
            .diff(&store.projected_state().await.expect("state"))
            .is_empty()
    );
    assert_eq!(
        store
            .task_by_key("imported-key")
            .await
            .expect("read")
            .map(|t| t.status.is_final()),
        Some(true)
    );
    assert!(store.plugin("imported").await.expect("read").is_some());
    // Imported again (a retry whose acknowledgement was lost): nothing
    // is written twice.
    let again = store.import(records[10..].to_vec()).await.expect("retry");
    assert_eq!(Some(again), head);
    assert_eq!(log(store).await.len(), records.len());
    // The log goes on from the imported head; the streams' versions too.
    store
        .append(vec![on_stream("notes")], ExpectedVersion::Exact(3))
        .await
        .expect("an append after the import");
    let after = log(store).await;
    assert_eq!(after.len(), records.len() + 1);
    assert_eq!(after.last().expect("last").stream_version, 4);
}

async fn an_import_that_does_not_continue_the_log_is_refused_whole(subject: Subject) {
    let store = subject.store.as_ref();
    let (source, _) = source_log().await;
    let records = log(&source).await;
    let refused = |e: StoreError, seq: u64| match e {
        StoreError::Import { seq: at, .. } => assert_eq!(at, seq, "{e}"),
        other => panic!("expected an import refusal at {seq}, got {other}"),
    };
    // A record missing from the middle.
    let mut gapped = records[..5].to_vec();
    gapped.remove(2);
    refused(store.import(gapped).await.unwrap_err(), 4);
    // A record changed after it was sealed.
    let mut edited = records[..5].to_vec();
    edited[3].payload.push(b' ');
    refused(store.import(edited).await.unwrap_err(), 4);
    // Nothing of either was kept.
    assert_eq!(store.head().await.expect("head").seq, 0);
    // A store with a log of its own takes no other log.
    store
        .append(
            vec![new_event(json!({ "own": true }))],
            ExpectedVersion::Any,
        )
        .await
        .expect("append");
    refused(store.import(records[..5].to_vec()).await.unwrap_err(), 1);
    assert_eq!(log(store).await.len(), 1);
}

/// A retry (its acknowledgement lost) of an append whose expectation or
/// rules held when it was stored, and would not now: the original
/// positions, nothing written.
async fn a_retried_append_that_the_rules_would_now_refuse_returns_its_positions(subject: Subject) {
    let store = subject.store.as_ref();
    let task_id = Uuid::now_v7();
    let submitted = NewEvent::new(
        SystemEvent::TaskSubmitted {
            task_id,
            spec: TaskSpec::new("echo", json!(1)),
        },
        Uuid::now_v7(),
    );
    let first = store
        .append(vec![submitted.clone()], ExpectedVersion::Any)
        .await
        .expect("submit");
    // The same task submitted again would be refused; the same event is a retry.
    let again = store
        .append(vec![submitted], ExpectedVersion::Any)
        .await
        .expect("a retry of the submission");
    assert_eq!(
        (again.first_seq, again.deduplicated),
        (first.first_seq, true)
    );
    // An expectation that held then, not now.
    let note = on_stream("expect");
    let stored = store
        .append(vec![note.clone()], ExpectedVersion::NoStream)
        .await
        .expect("first on its stream");
    let retried = store
        .append(vec![note], ExpectedVersion::NoStream)
        .await
        .expect("a retry with its expectation");
    assert_eq!(
        (retried.first_seq, retried.deduplicated),
        (stored.first_seq, true)
    );
    assert_eq!(log(store).await.len(), 2);
}
