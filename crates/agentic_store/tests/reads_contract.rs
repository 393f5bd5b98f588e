//! The contract of the store port's point and paged reads, run on both
//! adapters: the in-memory store and the SQLite one. Each read must agree
//! with a fold of the same events through the kernel's reducer, and paging
//! through a list must give every item once, in order.

use std::sync::Arc;

use agentic_core::llm::{AgentSpec, ChatMessage, Role, Usage};
use agentic_core::plugin::{Grant, InstalledPlugin, PluginManifest};
use agentic_core::{
    Cursor, ElementData, EventStore, ExpectedVersion, NewEvent, Page, State, StoreError,
    SystemEvent, TaskFilter, TaskSpec,
};
use agentic_store::{MemoryStore, SqliteOptions, SqliteStore};
use serde_json::{Map, json};
use uuid::Uuid;

/// A store under test, and what keeps it alive (the SQLite home).
struct Subject {
    store: Arc<dyn EventStore>,
    _home: Option<tempfile::TempDir>,
}

fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _home: None,
    }
}

fn sqlite() -> Subject {
    let home = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open");
    Subject {
        store: Arc::new(store),
        _home: Some(home),
    }
}

/// Runs each contract check on both stores, as its own pair of tests.
macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::memory()).await;
                }
            )*
        }
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::sqlite()).await;
                }
            )*
        }
    };
}

on_both_stores!(
    elements_are_read_by_id_and_in_pages,
    tasks_are_read_by_id_by_key_and_unfinished,
    an_agent_is_read_with_a_page_of_its_conversation,
    a_respawned_agent_starts_a_new_conversation,
    plugins_are_read_in_pages,
    an_approval_replaces_the_functions_of_the_current_install_only,
);

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
        SystemEvent::TaskStarted {
            task_id: ids[4],
            attempt: 1,
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
