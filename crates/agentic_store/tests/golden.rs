//! The golden home written by the first lion release (`fixtures/golden_v1`)
//! must open, verify and replay with every later version of the SQLite
//! adapter, to the same state as the kernel's golden JSONL log.

use std::path::Path;

use agentic_core::{Cursor, EventStore, State, TaskFilter};
use agentic_store::{SqliteOptions, SqliteStore};

fn copy_golden(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden_v1");
    for file in ["lion.db", "HEAD"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy golden fixture");
    }
}

fn kernel_golden_state() -> State {
    let text = include_str!("../../agentic_core/tests/fixtures/golden_v1.jsonl");
    let mut state = State::new();
    for line in text.lines() {
        let record: agentic_core::EventEnvelope = serde_json::from_str(line).expect("parse");
        state
            .apply(&record.decode().expect("decode"))
            .expect("apply");
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_v1_home_opens_verifies_and_replays() {
    let home = tempfile::tempdir().expect("tempdir");
    copy_golden(home.path());
    let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open golden");

    let report = store.verify().expect("golden log verifies");
    assert_eq!(report.events, 4);
    assert_eq!(report.recorded_head, Some(report.head));

    let (replayed, events) = store.replay(true).expect("golden log replays");
    assert_eq!(events, 4);
    let projected = store.projected_state().await.expect("projections");
    assert!(
        replayed.diff(&projected).is_empty(),
        "{:?}",
        replayed.diff(&projected)
    );
    let expected = kernel_golden_state();
    assert!(
        replayed.diff(&expected).is_empty(),
        "{:?}",
        replayed.diff(&expected)
    );
    drop(store);

    // The migrations ran: the schema is the newest, and `elements` was
    // rebuilt without the index on `id` that schema 1 gave it.
    let db = rusqlite::Connection::open(home.path().join("lion.db")).expect("open lion.db");
    let version: i32 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, agentic_store::sqlite::SCHEMA_VERSION);
    let indexes: i64 = db
        .query_row(
            "SELECT count(*) FROM pragma_index_list('elements')",
            [],
            |r| r.get(0),
        )
        .expect("index list");
    assert_eq!(indexes, 0);
}

/// The golden home written before issue 14 (`fixtures/golden_v2`: plugins,
/// key-value data and an agent conversation) opens, verifies and replays to
/// the state its JSONL log folds to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_v2_home_opens_verifies_and_replays() {
    let home = tempfile::tempdir().expect("tempdir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden_v2");
    for file in ["lion.db", "HEAD"] {
        std::fs::copy(from.join(file), home.path().join(file)).expect("copy golden fixture");
    }
    let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open golden");
    let report = store.verify().expect("golden log verifies");
    assert_eq!(report.events, 28);
    assert_eq!(report.recorded_head, Some(report.head));

    let (replayed, events) = store.replay(true).expect("golden log replays");
    assert_eq!(events, 28);
    let projected = store.projected_state().await.expect("projections");
    assert!(
        replayed.diff(&projected).is_empty(),
        "{:?}",
        replayed.diff(&projected)
    );
    let mut expected = State::new();
    let text = include_str!("../../agentic_core/tests/fixtures/golden_v2.jsonl");
    for line in text.lines() {
        let record: agentic_core::EventEnvelope = serde_json::from_str(line).expect("parse");
        expected
            .apply(&record.decode().expect("decode"))
            .expect("apply");
    }
    assert!(
        replayed.diff(&expected).is_empty(),
        "{:?}",
        replayed.diff(&expected)
    );

    // The point and paged reads, on the migrated projections, agree with
    // the fold: each agent's conversation (moved out of its JSON into rows),
    // each task, element and plugin.
    for agent in expected.agents() {
        let view = store
            .agent(&agent.name, Cursor::START, usize::MAX)
            .await
            .expect("agent")
            .expect("the agent is there");
        assert_eq!(&view.record, agent);
        assert_eq!(view.message_count, agent.messages.len() as u64);
        let page = store
            .agent(&agent.name, Cursor(1), 1)
            .await
            .expect("agent page")
            .expect("the agent is there");
        assert_eq!(page.record.messages, agent.messages[1..2]);
    }
    assert!(expected.agents().any(|a| a.messages.len() >= 2));
    for task in expected.tasks() {
        assert_eq!(
            store.task(task.id).await.expect("task").as_ref(),
            Some(task)
        );
    }
    let unfinished = store
        .tasks(TaskFilter::Unfinished, Cursor::START, 100)
        .await
        .expect("unfinished tasks");
    let want: Vec<_> = expected
        .tasks()
        .filter(|t| !t.status.is_final())
        .cloned()
        .collect();
    assert_eq!(unfinished.items, want);
    for element in expected.elements() {
        assert_eq!(
            store.element(element.id).await.expect("element").as_ref(),
            Some(element)
        );
    }
    let plugins = store.plugins(Cursor::START, 100).await.expect("plugins");
    assert_eq!(
        plugins.items,
        expected.plugins().cloned().collect::<Vec<_>>()
    );
}
