//! The plugin manager with the wasmtime sandbox and the example plugins:
//! install, grants, calls, schemas, the key-value store, the compiled-code
//! cache, quarantine, removal, persistence across processes, tasks and
//! replay — each checked in the event log.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use agentic_core::plugin::{
    FailureKind, ManifestError, PLUGIN_HANDLER, PluginError, PluginManager, PluginStatus,
    PluginTask,
};
use agentic_core::{
    EventStore, Orchestrator, OrchestratorConfig, State, SystemEvent, TaskHandler, TaskOutcome,
    TaskSpec,
};
use serde_json::json;
use support::{Home, Listener, expect_kind, manifest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_greets_ada_and_every_step_is_an_event() {
    let home = Home::new();
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install");
    let out = home
        .call("hello_world", "greet", json!({"name": "Ada"}))
        .await
        .expect("greet");
    assert_eq!(out, json!({"greeting": "Hello, Ada!"}));
    let kinds: Vec<&str> = home.events().await.iter().map(SystemEvent::kind).collect();
    assert_eq!(
        kinds,
        [
            "plugin_installed",
            "plugin_loaded",
            "plugin_loaded",
            "plugin_invoked",
            "plugin_succeeded"
        ]
    );
}

/// Regression: `lion bench plugins` deleted its scratch home while the
/// manager's background appender still held the store, and the home was
/// sometimes left behind. Closing the last handle waits for that appender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_last_manager_handle_appends_what_was_recorded_and_lets_go_of_the_store() {
    let dir = tempfile::tempdir().expect("temp home");
    let (store, manager) = support::open(dir.path(), agentic_core::Durability::Async);
    let m = PluginManager::read_manifest(&manifest("hello_world")).expect("manifest");
    let grant = m.grant_from(&["interface:log".to_owned()]).expect("grant");
    manager.install(m, grant).await.expect("install");
    let greet = |manager: PluginManager, name: &str| {
        let input = json!({ "name": name }).to_string();
        async move {
            let options = agentic_core::plugin::CallOptions::default();
            let out = manager.call("hello_world", "greet", &input, options).await;
            out.expect("greet");
            manager
        }
    };
    // Closing a handle that is not the last leaves the manager working.
    greet(manager.clone(), "Ada").await.close().await;
    let manager = greet(manager, "Grace").await;
    manager.close().await;
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the appender still holds the store"
    );
    let succeeded = store
        .read_from(1, usize::MAX)
        .await
        .expect("read log")
        .iter()
        .filter(|e| e.decode().expect("decode").kind() == "plugin_succeeded")
        .count();
    assert_eq!(succeeded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_loads_the_checked_cache_and_a_tampered_cache_is_recompiled() {
    let home = Home::new();
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install");
    let loaded = |events: Vec<SystemEvent>| -> Vec<bool> {
        events
            .into_iter()
            .filter_map(|e| match e {
                SystemEvent::PluginLoaded { cached, .. } => Some(cached),
                _ => None,
            })
            .collect()
    };
    let (_, second) = home.reopen();
    let greet = |m: PluginManager| async move {
        m.call(
            "hello_world",
            "greet",
            r#"{"name":"Bo"}"#,
            Default::default(),
        )
        .await
        .expect("greet")
    };
    greet(second).await;
    assert_eq!(loaded(home.events().await), [false, true]);

    let compiled = std::fs::read_dir(home.dir.path().join("plugins/compiled"))
        .expect("compiled dir")
        .next()
        .expect("an artifact key")
        .expect("entry")
        .path();
    let artifact = std::fs::read_dir(&compiled)
        .expect("artifacts")
        .next()
        .expect("an artifact")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&artifact).expect("read artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, &bytes).expect("tamper");
    let (_, third) = home.reopen();
    greet(third).await;
    assert_eq!(loaded(home.events().await), [false, true, false]);
    let (_, fourth) = home.reopen();
    greet(fourth).await;
    assert_eq!(loaded(home.events().await), [false, true, false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_copy_is_what_runs_and_a_changed_copy_refuses_to_load() {
    let home = Home::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let wasm = scratch.path().join("hello_world.wasm");
    std::fs::copy(support::component("hello_world"), &wasm).expect("copy");
    let m = support::write_manifest(
        scratch.path(),
        "hello_world",
        &wasm,
        "interfaces = [\"log\"]",
        "",
        &["greet"],
    );
    home.install(&m, &["interface:log"]).await.expect("install");
    std::fs::write(&wasm, b"edited after install").expect("edit original");
    home.call("hello_world", "greet", json!({"name": "Ada"}))
        .await
        .expect("the installed copy still runs");

    // Damage the home's copy and its cache: loading refuses it.
    let sha = support::sha256_file(&support::component("hello_world"));
    let installed = home
        .dir
        .path()
        .join(format!("plugins/components/{sha}.wasm"));
    std::fs::write(&installed, b"not the component").expect("tamper");
    std::fs::remove_dir_all(home.dir.path().join("plugins/compiled")).expect("drop cache");
    let (_, other) = home.reopen();
    let err = other
        .call(
            "hello_world",
            "greet",
            r#"{"name":"Ada"}"#,
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no longer has sha256"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_installs_are_refused_with_one_line_and_install_nothing() {
    let home = Home::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let good = std::fs::read_to_string(manifest("hello_world")).expect("manifest");
    let dist = manifest("hello_world").parent().expect("dir").to_path_buf();
    let write = |name: &str, text: &str| {
        let path = dist.join(format!("test-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut cases = Vec::new();
    let sha = support::sha256_file(&support::component("hello_world"));
    cases.push((
        write("hash", &good.replace(&sha, &"0".repeat(64))),
        "but the manifest says",
    ));
    cases.push((
        write("missing", &good.replace("hello_world.wasm", "nope.wasm")),
        "nope.wasm",
    ));
    cases.push((
        write("unknown", &good.replace("[limits]", "[limits]\ncpu = 1")),
        "unknown field `cpu`",
    ));
    cases.push((
        write("noversion", &good.replace("version = \"0.1.0\"\n", "")),
        "missing field `version`",
    ));
    // A manifest that does not ask for the `log` interface the component imports.
    cases.push((
        write(
            "imports",
            &good.replace("interfaces = [\"log\"]", "interfaces = []"),
        ),
        "imports the log interface",
    ));
    let garbage = scratch.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").expect("garbage");
    cases.push((
        support::write_manifest(scratch.path(), "garbage", &garbage, "", "", &["f"]),
        "invalid plugin component",
    ));
    for (path, expected) in cases {
        let err = home.install(&path, &[]).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{}: {err}", path.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        let _ = std::fs::remove_file(&path);
    }
    // A grant the manifest does not ask for.
    let err = home
        .install(&manifest("hello_world"), &["interface:http"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, PluginError::Manifest(ManifestError::NotRequested(_))),
        "{err}"
    );
    assert!(home.events().await.is_empty(), "nothing may be recorded");
    assert_eq!(
        home.store
            .projected_state()
            .await
            .expect("state")
            .plugins()
            .len(),
        0
    );

    home.install(&manifest("hello_world"), &[])
        .await
        .expect("install");
    let again = home
        .install(&manifest("hello_world"), &[])
        .await
        .unwrap_err();
    assert!(matches!(again, PluginError::AlreadyInstalled(_)), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_outputs_are_checked_against_the_schemas() {
    let home = Home::new();
    home.install(&manifest("calculator"), &[])
        .await
        .expect("install");
    let out = home
        .call("calculator", "eval", json!({"expression": "2 * (3 + 4)"}))
        .await
        .expect("eval");
    assert_eq!(out, json!({"value": 14}));
    let f = expect_kind(
        home.call("calculator", "eval", json!({"expr": "1"})).await,
        FailureKind::InvalidInput,
    );
    assert!(f.message.contains("schema"), "{f}");
    expect_kind(
        home.manager
            .call("calculator", "eval", "{not json", Default::default())
            .await,
        FailureKind::InvalidInput,
    );
    expect_kind(
        home.call("calculator", "nope", json!({})).await,
        FailureKind::InvalidInput,
    );
    let f = expect_kind(
        home.call("calculator", "eval", json!({"expression": "1 / 0"}))
            .await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("zero"), "{f}");

    // An output that breaks its schema.
    let scratch = tempfile::tempdir().expect("scratch");
    let strict = std::fs::read_to_string(manifest("hello_world"))
        .expect("manifest")
        .replace(
            "required = [\"greeting\"]",
            "required = [\"greeting\", \"farewell\"]",
        )
        .replace("name = \"hello_world\"", "name = \"strict_hello\"")
        .replace(
            "path = \"hello_world.wasm\"",
            &format!(
                "path = {:?}",
                support::component("hello_world").display().to_string()
            ),
        );
    let path = scratch.path().join("strict.toml");
    std::fs::write(&path, strict).expect("write");
    home.install(&path, &["interface:log"])
        .await
        .expect("install");
    let f = expect_kind(
        home.call("strict_hello", "greet", json!({"name": "Ada"}))
            .await,
        FailureKind::InvalidOutput,
    );
    assert!(f.message.contains("farewell"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_value_store_persists_through_the_log_across_processes() {
    let home = Home::new();
    home.install(
        &manifest("kv_counter"),
        &["interface:kv", "interface:events", "interface:log"],
    )
    .await
    .expect("install");
    for expected in 1..=2 {
        let out = home
            .call("kv_counter", "increment", json!({"key": "visits"}))
            .await
            .expect("increment");
        assert_eq!(out, json!({"key": "visits", "value": expected}));
    }
    let (store, other) = home.reopen();
    let out = other
        .call(
            "kv_counter",
            "increment",
            r#"{"key":"visits"}"#,
            Default::default(),
        )
        .await
        .expect("increment in another process");
    assert_eq!(out, json!({"key": "visits", "value": 3}));
    let state = store.projected_state().await.expect("state");
    assert_eq!(
        state
            .plugin_kv("kv_counter")
            .and_then(|kv| kv.get("visits"))
            .map(String::as_str),
        Some("3")
    );
    let emitted = home
        .events()
        .await
        .into_iter()
        .filter(|e| matches!(e, SystemEvent::PluginEmitted { kind, .. } if kind == "counter_incremented"))
        .count();
    assert_eq!(emitted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_no_update() {
    let home = Home::new();
    home.install(
        &manifest("kv_counter"),
        &["interface:kv", "interface:events", "interface:log"],
    )
    .await
    .expect("install");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let manager = home.manager.clone();
        calls.spawn(async move {
            manager
                .call(
                    "kv_counter",
                    "increment",
                    r#"{"key":"n"}"#,
                    Default::default(),
                )
                .await
        });
    }
    while let Some(result) = calls.join_next().await {
        result.expect("join").expect("increment");
    }
    let out = home
        .call("kv_counter", "get", json!({"key": "n"}))
        .await
        .expect("get");
    assert_eq!(out, json!({"value": 16}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_reader_reads_its_granted_directory() {
    let home = Home::new();
    home.install(&manifest("dir_reader"), &["dir:/data"])
        .await
        .expect("install");
    let out = home
        .call("dir_reader", "read", json!({"path": "notes.txt"}))
        .await
        .expect("read");
    assert_eq!(
        out,
        json!({"content": "lion reads this file through a read-only grant.\n"})
    );
    let list = home
        .call("dir_reader", "list", json!({}))
        .await
        .expect("list");
    assert!(
        list["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{list}"
    );

    // Installed without the grant, the directory is not there at all.
    let bare = Home::new();
    bare.install(&manifest("dir_reader"), &[])
        .await
        .expect("install");
    expect_kind(
        bare.call("dir_reader", "read", json!({"path": "notes.txt"}))
            .await,
        FailureKind::Refused,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_reaches_a_granted_host_only() {
    let server = Listener::start(false).await;
    let url = format!("http://{}/hello", server.addr);
    let home = Home::new();
    home.install(
        &manifest("http_fetch"),
        &["interface:http", "host:127.0.0.1"],
    )
    .await
    .expect("install");
    let out = home
        .call("http_fetch", "get", json!({"url": url}))
        .await
        .expect("get");
    assert_eq!(
        out,
        json!({"status": 200, "body": "hello from the test server"})
    );
    assert_eq!(server.accepted(), 1);

    let denied = Home::new();
    denied
        .install(&manifest("http_fetch"), &["interface:http"])
        .await
        .expect("install");
    expect_kind(
        denied.call("http_fetch", "get", json!({"url": url})).await,
        FailureKind::Refused,
    );
    assert_eq!(server.accepted(), 1, "the ungranted call must not connect");
    let denials = denied.denials().await;
    assert_eq!(
        denials,
        [(
            format!("http 127.0.0.1:{}", server.addr.port()),
            "host not in the granted hosts".to_owned()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_quarantine_a_plugin_until_it_is_reinstalled() {
    let home = Home::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let m = support::abuse_manifest(scratch.path(), "", "");
    home.install(&m, &[]).await.expect("install");
    for _ in 0..agentic_core::plugin::DEFAULT_QUARANTINE_AFTER {
        expect_kind(
            home.call("abuse", "trap", json!({})).await,
            FailureKind::Trap,
        );
    }
    let f = expect_kind(
        home.call("abuse", "echo", json!({})).await,
        FailureKind::Quarantined,
    );
    assert!(f.message.contains("quarantined"), "{f}");
    let quarantined = home
        .events()
        .await
        .into_iter()
        .filter(|e| matches!(e, SystemEvent::PluginQuarantined { failures: 5, .. }))
        .count();
    assert_eq!(quarantined, 1);
    // Another process sees the quarantine too.
    let (store, other) = home.reopen();
    let state = store.projected_state().await.expect("state");
    assert_eq!(
        state.plugin("abuse").expect("abuse").status,
        PluginStatus::Quarantined
    );
    expect_kind(
        other.call("abuse", "echo", "{}", Default::default()).await,
        FailureKind::Quarantined,
    );
    // Refusals (the plugin's own errors) and bad input do not count.
    home.manager.remove("abuse").await.expect("remove");
    home.install(&m, &[]).await.expect("reinstall");
    for _ in 0..10 {
        expect_kind(
            home.call("abuse", "read_file", json!({"path": "/nowhere"}))
                .await,
            FailureKind::Refused,
        );
    }
    home.call("abuse", "echo", json!({"ok": true}))
        .await
        .expect("still active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_plugin_removes_its_data_and_files() {
    let home = Home::new();
    home.install(
        &manifest("kv_counter"),
        &["interface:kv", "interface:events", "interface:log"],
    )
    .await
    .expect("install");
    home.call("kv_counter", "increment", json!({"key": "k"}))
        .await
        .expect("increment");
    home.manager.remove("kv_counter").await.expect("remove");
    let err = home
        .call("kv_counter", "get", json!({"key": "k"}))
        .await
        .unwrap_err();
    assert!(matches!(err, PluginError::NotInstalled(_)), "{err}");
    let again = home.manager.remove("kv_counter").await.unwrap_err();
    assert!(matches!(again, PluginError::NotInstalled(_)), "{again}");
    let state = home.store.projected_state().await.expect("state");
    assert!(state.plugin("kv_counter").is_none());
    assert!(state.plugin_kv("kv_counter").is_none());
    let components = std::fs::read_dir(home.dir.path().join("plugins/components"))
        .expect("dir")
        .count();
    assert_eq!(components, 0);
    home.install(
        &manifest("kv_counter"),
        &["interface:kv", "interface:events", "interface:log"],
    )
    .await
    .expect("reinstall");
    let out = home
        .call("kv_counter", "get", json!({"key": "k"}))
        .await
        .expect("get");
    assert_eq!(out, json!({"value": null}), "removal took the data with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_plugins_through_the_orchestrator() {
    let home = Home::new();
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install");
    let mut handlers: HashMap<String, Arc<dyn TaskHandler>> = HashMap::new();
    handlers.insert(
        PLUGIN_HANDLER.into(),
        Arc::new(PluginTask::new(home.manager.clone())),
    );
    let store: Arc<dyn EventStore> = home.store.clone();
    let orchestrator = Orchestrator::start(
        store,
        handlers,
        OrchestratorConfig::default(),
        uuid::Uuid::now_v7(),
    );
    let spec = TaskSpec::new(
        PLUGIN_HANDLER,
        json!({"plugin": "hello_world", "function": "greet", "input": {"name": "Ada"}}),
    );
    let handle = orchestrator.submit(spec).await.expect("submit");
    let task = handle.id;
    let outcome = handle.outcome().await.expect("outcome");
    assert_eq!(
        outcome,
        TaskOutcome::Completed(json!({"greeting": "Hello, Ada!"}))
    );
    let records = home.store.read_from(1, usize::MAX).await.expect("log");
    let invoked = records
        .iter()
        .find(|r| matches!(r.decode(), Ok(SystemEvent::PluginInvoked { .. })))
        .expect("invoked");
    assert_eq!(invoked.causation_id, Some(task), "the call names its task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_log_rebuilds_the_plugin_projections_exactly() {
    let home = Home::new();
    home.install(
        &manifest("kv_counter"),
        &["interface:kv", "interface:events", "interface:log"],
    )
    .await
    .expect("install");
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install");
    let scratch = tempfile::tempdir().expect("scratch");
    home.install(&support::abuse_manifest(scratch.path(), "", ""), &[])
        .await
        .expect("install");
    for key in ["a", "b", "a"] {
        home.call("kv_counter", "increment", json!({"key": key}))
            .await
            .expect("increment");
    }
    home.call("kv_counter", "reset", json!({"key": "b"}))
        .await
        .expect("reset");
    for _ in 0..6 {
        let _ = home.call("abuse", "trap", json!({})).await;
    }
    home.manager.remove("hello_world").await.expect("remove");
    let mut replayed = State::new();
    for event in home.events().await {
        replayed.apply(&event).expect("apply");
    }
    let projected = home.store.projected_state().await.expect("state");
    assert_eq!(projected.diff(&replayed), Vec::<String>::new());
    assert_eq!(replayed.plugins().len(), 2);
    assert_eq!(
        replayed
            .plugin_kv("kv_counter")
            .expect("kv")
            .get("a")
            .map(String::as_str),
        Some("2")
    );
}
