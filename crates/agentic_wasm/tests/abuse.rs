//! The abuse suite: plugins that try to escape the sandbox or exhaust its
//! resources. Each case asserts the exact failure or denial recorded in the
//! log, has a positive control (the same plugin granted, or under the
//! limit, succeeds — so a broken plugin cannot pass for a working sandbox),
//! and runs beside a `hello_world` call that must succeed.

mod support;

use std::path::Path;

use agentic_core::EventStore;
use agentic_core::plugin::{FailureKind, PluginError};
use serde_json::json;
use support::{Home, Listener, abuse_home, beside_hello, expect_kind, logged, manifest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_in_a_call_times_out() {
    let (home, _s) = abuse_home("", "timeout_ms = 200", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "spin", json!({})).await,
        FailureKind::Timeout,
    );
    assert!(f.message.contains("200 ms"), "{f}");
    logged(&home, &f).await;
    beside_hello(&home, "echo", json!({"x": 1}))
        .await
        .expect("control: a call under the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_bounds_a_loop_deterministically() {
    let (home, _s) = abuse_home("", "fuel = 1000000", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "spin", json!({})).await,
        FailureKind::FuelExhausted,
    );
    logged(&home, &f).await;
    beside_hello(&home, "echo", json!({}))
        .await
        .expect("control: a small call has fuel enough");
}

/// A core module for the plugin world whose `invoke` runs `body` and then
/// answers `{}`; `pages` of memory; `extra` fields (a start function, a
/// table...).
fn wat(pages: u32, body: &str, extra: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") {pages})
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (data (i32.const 100) "{{}}")
  (func (export "describe") (result i32)
    (i32.store (i32.const 32) (i32.const 100))
    (i32.store (i32.const 36) (i32.const 2))
    (i32.const 32))
  (func (export "invoke") (param i32 i32 i32 i32) (result i32)
    {body}
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 100))
    (i32.store (i32.const 24) (i32.const 2))
    (i32.const 16))
  {extra})"#
    )
}

/// Installs a WAT plugin named `name` into `home` with `limits`.
async fn install_wat(home: &Home, dir: &Path, name: &str, wat: &str, limits: &str) {
    let wasm = dir.join(format!("{name}.wasm"));
    std::fs::write(&wasm, support::wat_component(wat)).expect("write component");
    let m = support::write_manifest(dir, name, &wasm, "", limits, &["run"]);
    home.install(&m, &[]).await.expect("install WAT plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_while_instantiating_times_out() {
    let home = Home::new();
    home.install(&manifest("hello_world"), &["interface:log"])
        .await
        .expect("install");
    let dir = tempfile::tempdir().expect("dir");
    let looping = wat(1, "", "(func $start (loop $l (br $l))) (start $start)");
    let fine = wat(1, "", "(func $start) (start $start)");
    install_wat(
        &home,
        dir.path(),
        "start_loop",
        &looping,
        "timeout_ms = 200",
    )
    .await;
    install_wat(&home, dir.path(), "start_fine", &fine, "timeout_ms = 200").await;
    let (bad, hello) = tokio::join!(
        home.call("start_loop", "run", json!({})),
        home.call("hello_world", "greet", json!({"name": "Ada"}))
    );
    hello.expect("bystander");
    let f = expect_kind(bad, FailureKind::Timeout);
    logged(&home, &f).await;
    home.call("start_fine", "run", json!({}))
        .await
        .expect("control: a start function that returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_blocked_in_a_slow_host_call_times_out() {
    let silent = Listener::start(true).await;
    let answering = Listener::start(false).await;
    let (home, _s) = abuse_home(
        "hosts = [\"127.0.0.1\"]",
        "timeout_ms = 300",
        &["interface:http", "host:127.0.0.1"],
    )
    .await;
    let url = format!("http://{}/", silent.addr);
    let f = expect_kind(
        beside_hello(&home, "http_get", json!({"url": url})).await,
        FailureKind::Timeout,
    );
    assert!(f.message.contains("host call"), "{f}");
    logged(&home, &f).await;
    let url = format!("http://{}/", answering.addr);
    let out = beside_hello(&home, "http_get", json!({"url": url}))
        .await
        .expect("control: a host that answers");
    assert_eq!(out["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_grow_bomb_hits_the_memory_limit() {
    let (home, _s) = abuse_home("", "memory_mib = 32", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "grow", json!({"mib": 1000})).await,
        FailureKind::MemoryLimit,
    );
    assert!(f.message.contains("33554432 byte limit"), "{f}");
    logged(&home, &f).await;
    let out = beside_hello(&home, "grow", json!({"mib": 8}))
        .await
        .expect("control: growth under the limit");
    assert_eq!(out, json!({"allocated_mib": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_initial_memory_hits_the_memory_limit() {
    let home = Home::new();
    let dir = tempfile::tempdir().expect("dir");
    // 1600 pages = 100 MiB of initial memory.
    let huge = wat(1600, "", "");
    install_wat(
        &home,
        dir.path(),
        "huge_small_limit",
        &huge,
        "memory_mib = 16",
    )
    .await;
    install_wat(
        &home,
        dir.path(),
        "huge_big_limit",
        &huge,
        "memory_mib = 128",
    )
    .await;
    let f = expect_kind(
        home.call("huge_small_limit", "run", json!({})).await,
        FailureKind::MemoryLimit,
    );
    logged(&home, &f).await;
    home.call("huge_big_limit", "run", json!({}))
        .await
        .expect("control: the same module under a limit it fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_bomb_hits_the_table_limit() {
    let home = Home::new();
    let dir = tempfile::tempdir().expect("dir");
    let grow = |n: u32| {
        wat(
            1,
            &format!(
                "(if (i32.eq (table.grow $t (ref.null func) (i32.const {n})) (i32.const -1)) \
                 (then unreachable))"
            ),
            "(table $t 1 funcref)",
        )
    };
    install_wat(&home, dir.path(), "table_bomb", &grow(1_000_000), "").await;
    install_wat(&home, dir.path(), "table_small", &grow(100), "").await;
    let f = expect_kind(
        home.call("table_bomb", "run", json!({})).await,
        FailureKind::MemoryLimit,
    );
    assert!(f.message.contains("table"), "{f}");
    logged(&home, &f).await;
    home.call("table_small", "run", json!({}))
        .await
        .expect("control: a small table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps_with_a_stack_overflow() {
    let (home, _s) = abuse_home("", "", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "recurse", json!({"depth": 100_000_000})).await,
        FailureKind::Trap,
    );
    assert_eq!(f.trap.as_deref(), Some("stack_overflow"), "{f}");
    logged(&home, &f).await;
    let out = beside_hello(&home, "recurse", json!({"depth": 100}))
        .await
        .expect("control: shallow recursion");
    assert_eq!(out, json!({"depth": 100}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_hits_the_output_limit() {
    let (home, _s) = abuse_home("", "max_output_bytes = 65536", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "output", json!({"bytes": 1_000_000})).await,
        FailureKind::OutputLimit,
    );
    logged(&home, &f).await;
    beside_hello(&home, "output", json!({"bytes": 1000}))
        .await
        .expect("control: a small output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_hits_the_output_limit() {
    let (home, _s) = abuse_home("", "max_output_bytes = 65536", &["interface:log"]).await;
    let f = expect_kind(
        beside_hello(
            &home,
            "log_flood",
            json!({"lines": 10_000, "line_bytes": 1000}),
        )
        .await,
        FailureKind::OutputLimit,
    );
    assert!(f.message.contains("logged"), "{f}");
    logged(&home, &f).await;
    beside_hello(&home, "log_flood", json!({"lines": 3, "line_bytes": 10}))
        .await
        .expect("control: a few lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_input_is_refused_before_the_plugin_runs() {
    let (home, _s) = abuse_home("", "max_input_bytes = 65536", &[]).await;
    let big = "x".repeat(100_000);
    let f = expect_kind(
        beside_hello(&home, "echo", json!({"data": big})).await,
        FailureKind::InvalidInput,
    );
    assert!(f.message.contains("65536 byte limit"), "{f}");
    logged(&home, &f).await;
    beside_hello(&home, "echo", json!({"data": "small"}))
        .await
        .expect("control: a small input");
}

/// A granted directory with a file in it, a secret beside it, and a
/// symlink inside pointing at the secret.
fn granted_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("root");
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).expect("mkdir");
    std::fs::write(granted.join("inside.txt"), "inside").expect("write");
    std::fs::write(root.path().join("secret.txt"), "SECRET").expect("write");
    std::os::unix::fs::symlink(root.path().join("secret.txt"), granted.join("link.txt"))
        .expect("symlink");
    root
}

/// The grant of `/data` backed by `root/granted`, named (it lies outside the
/// manifest's folder), with `suffix` (`""` or `":ro"`).
fn named_data(root: &Path, suffix: &str) -> String {
    format!("dir:/data={}{suffix}", root.join("granted").display())
}

fn dir_permission(root: &Path, mode: &str) -> String {
    format!(
        "[[permissions.dirs]]\npath = {:?}\nguest = \"/data\"\nmode = \"{mode}\"",
        root.join("granted").display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_outside_the_granted_directory_is_refused() {
    let tree = granted_tree();
    let (home, _s) = abuse_home(
        &dir_permission(tree.path(), "read-only"),
        "",
        &[&named_data(tree.path(), "")],
    )
    .await;
    let secret = tree.path().join("secret.txt").display().to_string();
    for path in [
        "/data/../secret.txt",
        secret.as_str(),
        "/data/link.txt",
        "/etc/passwd",
    ] {
        let f = expect_kind(
            beside_hello(&home, "read_file", json!({"path": path})).await,
            FailureKind::Refused,
        );
        assert!(!f.message.contains("SECRET"), "{path}: {f}");
        logged(&home, &f).await;
    }
    let events = serde_json::to_string(
        &home
            .events()
            .await
            .iter()
            .map(|e| serde_json::to_value(e).expect("event"))
            .collect::<Vec<_>>(),
    )
    .expect("json");
    assert!(
        !events.contains("SECRET"),
        "the secret must not reach the log"
    );
    let out = beside_hello(&home, "read_file", json!({"path": "/data/inside.txt"}))
        .await
        .expect("control: a file inside the grant");
    assert_eq!(out, json!({"content": "inside"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_to_a_read_only_grant_is_refused() {
    let tree = granted_tree();
    let target = tree.path().join("granted/new.txt");
    let input = json!({"path": "/data/new.txt", "content": "written"});
    let (ro, _s) = abuse_home(
        &dir_permission(tree.path(), "read-write"),
        "",
        &[&named_data(tree.path(), ":ro")],
    )
    .await;
    let f = expect_kind(
        beside_hello(&ro, "write_file", input.clone()).await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("write /data/new.txt"), "{f}");
    logged(&ro, &f).await;
    assert!(!target.exists(), "nothing may be written");
    let (rw, _s2) = abuse_home(
        &dir_permission(tree.path(), "read-write"),
        "",
        &[&named_data(tree.path(), "")],
    )
    .await;
    beside_hello(&rw, "write_file", input)
        .await
        .expect("control: a read-write grant");
    assert_eq!(
        std::fs::read_to_string(&target).expect("written"),
        "written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_host_not_granted_is_denied_and_never_connects() {
    let listener = Listener::start(false).await;
    let addr = listener.addr.to_string();
    let (home, _s) = abuse_home(&format!("hosts = [{addr:?}]"), "", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "tcp_connect", json!({"addr": addr})).await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("tcp connect"), "{f}");
    assert_eq!(
        home.denials().await,
        [(
            format!("tcp connect {addr}"),
            "address not in the granted hosts".to_owned()
        )]
    );
    assert_eq!(
        listener.accepted(),
        0,
        "no connection may reach the listener"
    );

    let (granted, _s2) = abuse_home(
        &format!("hosts = [{addr:?}]"),
        "",
        &[&format!("host:{addr}")],
    )
    .await;
    let out = beside_hello(&granted, "tcp_connect", json!({"addr": addr}))
        .await
        .expect("control: the granted host");
    assert_eq!(out, json!({"connected": true}));
    assert_eq!(listener.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_to_a_host_not_granted_is_denied_and_sends_nothing() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let addr = socket.local_addr().expect("addr").to_string();
    let (home, _s) = abuse_home(&format!("hosts = [{addr:?}]"), "", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "udp_send", json!({"addr": addr})).await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("udp send"), "{f}");
    assert_eq!(
        home.denials().await,
        [(
            format!("udp send {addr}"),
            "address not in the granted hosts".to_owned()
        )]
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(socket.try_recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no datagram may arrive"
    );

    let (granted, _s2) = abuse_home(
        &format!("hosts = [{addr:?}]"),
        "",
        &[&format!("host:{addr}")],
    )
    .await;
    beside_hello(&granted, "udp_send", json!({"addr": addr}))
        .await
        .expect("control: the granted host");
    let (n, _) = socket.recv_from(&mut buf).await.expect("datagram");
    assert_eq!(&buf[..n], b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_through_wasi_is_refused_and_names_resolve_only_through_http() {
    let listener = Listener::start(false).await;
    let port = listener.addr.port();
    let host = format!("localhost:{port}");
    // localhost resolves to a loopback address, which must be granted too.
    let address = format!("127.0.0.1:{port}");
    let (home, _s) = abuse_home(
        &format!("hosts = [{host:?}, {address:?}]"),
        "",
        &[
            "interface:http",
            &format!("host:{host}"),
            &format!("host:{address}"),
        ],
    )
    .await;
    let f = expect_kind(
        beside_hello(&home, "dns", json!({"name": "localhost"})).await,
        FailureKind::Refused,
    );
    assert!(f.message.starts_with("dns localhost:"), "{f}");
    logged(&home, &f).await;
    // Control: the granted name, resolved by the host for the http interface.
    let out = beside_hello(&home, "http_get", json!({"url": format!("http://{host}/")}))
        .await
        .expect("control: the granted name over http");
    assert_eq!(out["status"], 200);
    assert_eq!(listener.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_a_host_not_granted_is_denied_and_never_connects() {
    let listener = Listener::start(false).await;
    let url = format!("http://{}/", listener.addr);
    // The http interface granted, the host not.
    let (home, _s) = abuse_home("hosts = [\"127.0.0.1\"]", "", &["interface:http"]).await;
    let f = expect_kind(
        beside_hello(&home, "http_get", json!({"url": url})).await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("not granted"), "{f}");
    assert_eq!(
        home.denials().await,
        [(
            format!("http 127.0.0.1:{}", listener.addr.port()),
            "host not in the granted hosts".to_owned()
        )]
    );
    // Not even the interface granted: the call ends as permission denied.
    let (bare, _s2) = abuse_home("hosts = [\"127.0.0.1\"]", "", &[]).await;
    expect_kind(
        beside_hello(&bare, "http_get", json!({"url": url})).await,
        FailureKind::PermissionDenied,
    );
    assert_eq!(
        bare.denials().await,
        [("interface http".to_owned(), "not granted".to_owned())]
    );
    assert_eq!(listener.accepted(), 0);

    let (granted, _s3) = abuse_home(
        "hosts = [\"127.0.0.1\"]",
        "",
        &["interface:http", "host:127.0.0.1"],
    )
    .await;
    let out = beside_hello(&granted, "http_get", json!({"url": url}))
        .await
        .expect("control: the granted host");
    assert_eq!(out["status"], 200);
    assert_eq!(listener.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_not_granted_ends_the_call_as_permission_denied() {
    let (home, _s) = abuse_home("", "", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "kv_set", json!({"key": "k", "value": "v"})).await,
        FailureKind::PermissionDenied,
    );
    assert!(f.message.contains("interface kv"), "{f}");
    logged(&home, &f).await;
    assert_eq!(
        home.denials().await,
        [("interface kv".to_owned(), "not granted".to_owned())]
    );
    let state = home.store.projected_state().await.expect("state");
    assert!(
        state.plugin_kv("abuse").is_none(),
        "a failed call writes nothing"
    );

    let (granted, _s2) = abuse_home("", "", &["interface:kv"]).await;
    beside_hello(&granted, "kv_set", json!({"key": "k", "value": "v"}))
        .await
        .expect("control: kv granted");
    let out = beside_hello(&granted, "kv_get", json!({"key": "k"}))
        .await
        .expect("read back");
    assert_eq!(out, json!({"value": "v"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_visible_only_when_granted() {
    // SAFETY-free: set before any plugin reads it; the name is unique to this test.
    let name = "LION_ABUSE_TEST_SECRET";
    // SAFETY: edition 2024 makes set_var unsafe because other threads may
    // read the environment; this test's process reads this name nowhere else.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(name, "s3cret")
    };
    let (home, _s) = abuse_home(&format!("env = [{name:?}]"), "", &[]).await;
    let out = beside_hello(&home, "env", json!({"name": name}))
        .await
        .expect("env");
    assert_eq!(out, json!({"value": null}));
    let (granted, _s2) =
        abuse_home(&format!("env = [{name:?}]"), "", &[&format!("env:{name}")]).await;
    let out = beside_hello(&granted, "env", json!({"name": name}))
        .await
        .expect("control: granted");
    assert_eq!(out, json!({"value": "s3cret"}));
    let log = serde_json::to_string(
        &granted
            .events()
            .await
            .iter()
            .map(|e| serde_json::to_value(e).expect("event"))
            .collect::<Vec<_>>(),
    )
    .expect("json");
    assert!(log.contains("s3cret"), "the plugin's own output is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_and_a_panic_are_named() {
    let (home, _s) = abuse_home("", "", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "trap", json!({})).await,
        FailureKind::Trap,
    );
    assert_eq!(f.trap.as_deref(), Some("unreachable_code_reached"));
    logged(&home, &f).await;
    let f = expect_kind(
        beside_hello(&home, "panic", json!({"message": "boom"})).await,
        FailureKind::Trap,
    );
    assert_eq!(f.trap.as_deref(), Some("unreachable_code_reached"));
    assert!(f.message.contains("boom"), "the panic message is kept: {f}");
    logged(&home, &f).await;
    beside_hello(&home, "echo", json!({}))
        .await
        .expect("control: the same plugin still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_tampered_components_are_refused_at_install() {
    let home = Home::new();
    let dir = tempfile::tempdir().expect("dir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 definitely not a component").expect("write");
    let m = support::write_manifest(dir.path(), "garbage", &garbage, "", "", &["f"]);
    let err = home.install(&m, &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid plugin component"),
        "{err}"
    );

    let wasm = dir.path().join("abuse.wasm");
    std::fs::copy(support::component("abuse"), &wasm).expect("copy");
    let m = support::write_manifest(dir.path(), "tampered", &wasm, "", "", &["echo"]);
    let mut bytes = std::fs::read(&wasm).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&wasm, bytes).expect("tamper");
    let err = home.install(&m, &[]).await.unwrap_err();
    assert!(matches!(err, PluginError::HashMismatch { .. }), "{err}");
    assert!(
        home.events().await.is_empty(),
        "nothing installed, nothing logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_no_state() {
    let (home, _s) = abuse_home("", "max_concurrency = 4", &[]).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let manager = home.manager.clone();
        calls.spawn(async move {
            manager
                .call("abuse", "counter", "{}", Default::default())
                .await
        });
    }
    let hello = home.call("hello_world", "greet", json!({"name": "Ada"}));
    hello.await.expect("bystander");
    while let Some(result) = calls.join_next().await {
        let out = result.expect("join").expect("counter");
        assert_eq!(out, json!({"count": 1}), "every call gets a fresh instance");
    }
}

/// The sandbox opens a granted directory by the path the grant was checked
/// by, following no symbolic link: a plugin able to swap a granted path for
/// a link (through a read-write grant holding it) between the manager's
/// check and the call's start gets a recorded denial, not the link's
/// target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_path_swapped_for_a_link_is_refused_when_the_call_opens_it() {
    use agentic_core::plugin::{
        CallContext, DirAccess, DirPermission, Permissions, Sandbox, VerifiedArtifact,
    };
    use std::sync::Arc;

    let sandbox = agentic_wasm::WasmSandbox::new().expect("sandbox");
    let wasm = std::fs::read(support::component("abuse")).expect("the abuse component");
    let compiled = sandbox.compile(&wasm).expect("compile");
    let plugin = sandbox
        .load(&VerifiedArtifact::compiled(compiled.artifact))
        .expect("load");
    let root = tempfile::tempdir().expect("root");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), "secret").expect("secret");
    let granted = root.path().join("granted");
    let grant_of = |path: &Path| {
        Arc::new(Permissions {
            dirs: vec![DirPermission {
                path: path.to_owned(),
                guest: "/data".into(),
                mode: DirAccess::ReadOnly,
            }],
            ..Permissions::default()
        })
    };
    let list = |grant| {
        let ctx = Arc::new(CallContext::new(
            "abuse",
            uuid::Uuid::now_v7(),
            grant,
            Default::default(),
            Default::default(),
        ));
        let plugin = plugin.clone();
        async move {
            let out = plugin
                .call("list_dir", r#"{"path":"/data"}"#, ctx.clone())
                .await;
            (out, ctx)
        }
    };
    // Control: the directory itself.
    std::fs::create_dir(&granted).expect("granted");
    let (out, _) = list(grant_of(&granted)).await;
    assert_eq!(out.expect("a real directory"), r#"{"entries":[]}"#);
    // Swapped for a link to a directory the operator never granted.
    std::fs::remove_dir(&granted).expect("rmdir");
    std::os::unix::fs::symlink(&outside, &granted).expect("symlink");
    let (out, ctx) = list(grant_of(&granted)).await;
    let f = out.expect_err("the link is refused");
    assert_eq!(f.kind, FailureKind::PermissionDenied, "{f}");
    assert!(f.message.contains("symbolic link"), "{f}");
    assert_eq!(ctx.limit_hit(), Some(f));
    // A link higher up the path is refused as well.
    let deeper = root.path().join("via");
    std::os::unix::fs::symlink(root.path(), &deeper).expect("symlink");
    let (out, _) = list(grant_of(&deeper.join("outside"))).await;
    assert_eq!(
        out.expect_err("a link in the path").kind,
        FailureKind::PermissionDenied
    );
}
