//! The resource-exhaustion suite: a plugin that floods a resource the host
//! shares (the log, the key-value store, file descriptors, the disk,
//! captured output, the network) hits a named bound. Each case asserts the
//! failure recorded in the log, runs beside a `hello_world` call that must
//! succeed, and has a positive control under the bound. The flooding
//! functions ignore the host's refusals, as a careless plugin would: the
//! call must fail all the same.
//!
//! Memory, time, fuel, output and input bounds are in `abuse.rs`
//! (`a_memory_grow_bomb_hits_the_memory_limit`,
//! `an_infinite_loop_in_a_call_times_out`, `a_huge_output_hits_the_output_limit`...);
//! `crates/agentic_cli/tests/exhaustion.rs` runs every bound through the
//! `lion` binary beside a concurrent task. Two cases change the process
//! and have a binary each: `descriptors.rs` (the process's descriptor
//! budget, under a lowered limit) and `proxy_env.rs` (proxy variables set
//! in the environment).

mod support;

use agentic_core::plugin::FailureKind;
use agentic_core::{EventStore, SystemEvent};
use serde_json::json;
use support::{Listener, abuse_home, beside_hello, expect_kind, logged};

/// The `plugin_emitted` events in a home's log.
async fn emitted(home: &support::Home) -> usize {
    home.events()
        .await
        .iter()
        .filter(|e| matches!(e, SystemEvent::PluginEmitted { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_size_limit_fails_the_call_and_stores_nothing() {
    let (home, _s) = abuse_home("", "max_emit_bytes = 1024", &["interface:events"]).await;
    // Ten events of 1 MB each: before the bound, 10 MB into the log.
    let f = expect_kind(
        beside_hello(
            &home,
            "emit_flood",
            json!({"events": 10, "bytes": 1_000_000}),
        )
        .await,
        FailureKind::EmitLimit,
    );
    assert!(f.message.contains("1024 byte limit"), "{f}");
    assert!(f.message.contains("max_emit_bytes"), "{f}");
    logged(&home, &f).await;
    assert_eq!(emitted(&home).await, 0, "a failed call emits nothing");
    let out = beside_hello(&home, "emit_flood", json!({"events": 3, "bytes": 100}))
        .await
        .expect("control: small events");
    assert_eq!(out, json!({"emitted": 3, "refused": 0}));
    assert_eq!(emitted(&home).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_calls_total_fail_the_call() {
    let (home, _s) = abuse_home("", "max_emit_total_bytes = 10000", &["interface:events"]).await;
    let f = expect_kind(
        beside_hello(&home, "emit_flood", json!({"events": 50, "bytes": 1000})).await,
        FailureKind::EmitLimit,
    );
    assert!(f.message.contains("max_emit_total_bytes"), "{f}");
    logged(&home, &f).await;
    assert_eq!(emitted(&home).await, 0);
    beside_hello(&home, "emit_flood", json!({"events": 5, "bytes": 1000}))
        .await
        .expect("control: under the total");
    assert_eq!(emitted(&home).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_value_store_is_bounded_across_calls() {
    let (home, _s) = abuse_home(
        "",
        "max_kv_total_bytes = 10000\nmax_kv_keys = 20",
        &["interface:kv"],
    )
    .await;
    // About 5 KB: fits.
    let out = beside_hello(
        &home,
        "kv_fill",
        json!({"keys": 5, "value_bytes": 1000, "prefix": "a"}),
    )
    .await
    .expect("control: the first 5 KB");
    assert_eq!(out, json!({"set": 5, "refused": 0}));
    // Another 5 KB in a later call: each call alone is small, together
    // they are over the store's total.
    let f = expect_kind(
        beside_hello(
            &home,
            "kv_fill",
            json!({"keys": 5, "value_bytes": 1000, "prefix": "b"}),
        )
        .await,
        FailureKind::KvLimit,
    );
    assert!(f.message.contains("10000 byte limit"), "{f}");
    logged(&home, &f).await;
    // Many small keys: over the key count.
    let f = expect_kind(
        beside_hello(
            &home,
            "kv_fill",
            json!({"keys": 16, "value_bytes": 1, "prefix": "c"}),
        )
        .await,
        FailureKind::KvLimit,
    );
    assert!(f.message.contains("20 key limit"), "{f}");
    let state = home.store.projected_state().await.expect("state");
    let kv = state.plugin_kv("abuse").expect("the first call's keys");
    assert_eq!(
        kv.keys().cloned().collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a3", "a4"],
        "failed calls write nothing"
    );
    // Replacing values within the total still works.
    beside_hello(
        &home,
        "kv_fill",
        json!({"keys": 5, "value_bytes": 1500, "prefix": "a"}),
    )
    .await
    .expect("control: rewriting the same keys within the total");
}

/// A granted directory with one file in it.
fn data_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("root");
    std::fs::create_dir(root.path().join("granted")).expect("mkdir");
    std::fs::write(root.path().join("granted/inside.txt"), "inside").expect("write");
    root
}

fn dir_permission(root: &std::path::Path, mode: &str) -> String {
    format!(
        "[[permissions.dirs]]\npath = {:?}\nguest = \"/data\"\nmode = \"{mode}\"",
        root.join("granted").display().to_string()
    )
}

/// The operator's grant of `granted/` as `/data`, naming its host path.
fn dir_grant(root: &std::path::Path, suffix: &str) -> String {
    format!("dir:/data={}{suffix}", root.join("granted").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_files_without_end_hits_the_handle_limit() {
    let tree = data_dir();
    let (home, _s) = abuse_home(
        &dir_permission(tree.path(), "read-only"),
        "max_open_handles = 32",
        &[&dir_grant(tree.path(), ":ro")],
    )
    .await;
    // Before the bound: 10 000 descriptors of the host process.
    let f = expect_kind(
        beside_hello(
            &home,
            "open_files",
            json!({"path": "/data/inside.txt", "count": 10_000}),
        )
        .await,
        FailureKind::HandleLimit,
    );
    assert!(f.message.contains("32 handles"), "{f}");
    logged(&home, &f).await;
    let out = beside_hello(
        &home,
        "open_files",
        json!({"path": "/data/inside.txt", "count": 5}),
    )
    .await
    .expect("control: a few files");
    assert_eq!(out, json!({"opened": 5, "error": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_the_quota_fails_and_stops_at_the_quota() {
    let tree = data_dir();
    let (home, _s) = abuse_home(
        &dir_permission(tree.path(), "read-write"),
        "max_write_bytes = 1048576",
        &[&dir_grant(tree.path(), "")],
    )
    .await;
    let big = tree.path().join("granted/big.bin");
    let f = expect_kind(
        beside_hello(
            &home,
            "write_bytes",
            json!({"path": "/data/big.bin", "bytes": 20 << 20}),
        )
        .await,
        FailureKind::WriteLimit,
    );
    assert!(f.message.contains("1048576 byte limit"), "{f}");
    logged(&home, &f).await;
    let size = std::fs::metadata(&big).expect("the file").len();
    assert!(
        size <= 1 << 20,
        "no byte past the quota reaches the disk: {size}"
    );
    beside_hello(
        &home,
        "write_bytes",
        json!({"path": "/data/small.bin", "bytes": 100_000}),
    )
    .await
    .expect("control: under the quota");
    assert_eq!(
        std::fs::metadata(tree.path().join("granted/small.bin"))
            .expect("small")
            .len(),
        100_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_together_may_not_fill_a_directory_past_its_limit() {
    // Each call may write 1 MiB; the directory may hold 2.5 MB, of which
    // it already holds inside.txt (one 4 KiB entry and 6 bytes).
    let tree = data_dir();
    let (home, _s) = abuse_home(
        &dir_permission(tree.path(), "read-write"),
        "max_write_bytes = 1048576\nmax_dir_bytes = 2500000",
        &[&dir_grant(tree.path(), "")],
    )
    .await;
    let mut written = 0;
    for i in 0..2 {
        let out = beside_hello(
            &home,
            "write_bytes",
            json!({"path": format!("/data/{i}.bin"), "bytes": 1_000_000}),
        )
        .await
        .expect("control: each call within both limits");
        assert_eq!(out["written"], 1_000_000);
        written += 1_000_000;
    }
    // Before the bound: every call wrote its quota, and N calls filled the
    // disk with N quotas.
    let f = expect_kind(
        beside_hello(
            &home,
            "write_bytes",
            json!({"path": "/data/2.bin", "bytes": 1_000_000}),
        )
        .await,
        FailureKind::WriteLimit,
    );
    assert!(
        f.message.contains("2500000 byte limit") && f.message.contains("max_dir_bytes"),
        "{f}"
    );
    logged(&home, &f).await;
    let third = std::fs::metadata(tree.path().join("granted/2.bin"))
        .expect("the third file")
        .len();
    written += third;
    // inside.txt, three created files, what they hold: within the limit.
    assert!(
        4 * 4096 + 6 + written <= 2_500_000,
        "no byte past the directory's limit reaches the disk: {written}"
    );
    assert!(third < 1_000_000, "the third call was cut short: {third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_past_the_cap_fails_as_output_limit_even_when_ignored() {
    let (home, _s) = abuse_home("", "max_output_bytes = 65536", &[]).await;
    let f = expect_kind(
        beside_hello(&home, "stdout_flood", json!({"bytes": 1_000_000})).await,
        FailureKind::OutputLimit,
    );
    assert!(f.message.contains("stdout"), "{f}");
    logged(&home, &f).await;
    // Exactly the cap is not over it.
    beside_hello(&home, "stdout_flood", json!({"bytes": 65536}))
        .await
        .expect("control: output up to the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_calling_exit_is_a_trap_that_counts_towards_quarantine() {
    let (home, _s) = abuse_home("", "", &[]).await;
    home.manager.set_quarantine_after(2);
    let f = expect_kind(
        beside_hello(&home, "exit", json!({"code": 3})).await,
        FailureKind::Trap,
    );
    assert_eq!(f.trap.as_deref(), Some("exit"), "{f}");
    // WASI p2's exit carries success or failure only.
    assert!(f.message.contains("status 1"), "{f}");
    logged(&home, &f).await;
    expect_kind(
        beside_hello(&home, "exit", json!({"code": 0})).await,
        FailureKind::Trap,
    );
    expect_kind(
        home.call("abuse", "echo", json!({})).await,
        FailureKind::Quarantined,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_that_resolves_to_loopback_is_refused() {
    let listener = Listener::start(false).await;
    let port = listener.addr.port();
    let name = format!("localhost:{port}");
    let address = format!("127.0.0.1:{port}");
    let permissions = format!("hosts = [{name:?}, {address:?}]");
    let url = format!("http://localhost:{port}/");
    // The name granted, not the loopback address it resolves to.
    let (home, _s) = abuse_home(
        &permissions,
        "",
        &["interface:http", &format!("host:{name}")],
    )
    .await;
    let f = expect_kind(
        beside_hello(&home, "http_get", json!({"url": url})).await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("not a global address"), "{f}");
    let denials = home.denials().await;
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(
        denials[0].0.starts_with(&format!("http {name} (")),
        "{denials:?}"
    );
    assert_eq!(denials[0].1, "resolves to no global or granted address");
    assert_eq!(listener.accepted(), 0, "nothing may reach the listener");
    // Control: the address granted as well.
    let (granted, _s2) = abuse_home(
        &permissions,
        "",
        &[
            "interface:http",
            &format!("host:{name}"),
            &format!("host:{address}"),
        ],
    )
    .await;
    let out = beside_hello(&granted, "http_get", json!({"url": url}))
        .await
        .expect("control: the address granted too");
    assert_eq!(out["status"], 200);
    assert_eq!(listener.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_address_is_refused_unless_granted() {
    // A granted name that resolves to the cloud metadata address needs a
    // DNS server to test (the address check itself is unit-tested in
    // agentic_core); written in the URL, in any of its spellings, the
    // address must be granted itself.
    let (home, _s) = abuse_home(
        "hosts = [\"metadata.google.internal\"]",
        "",
        &["interface:http", "host:metadata.google.internal"],
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://0xa9fea9fe/",
    ] {
        let f = expect_kind(
            beside_hello(&home, "http_get", json!({"url": url})).await,
            FailureKind::Refused,
        );
        assert!(f.message.contains("not granted"), "{url}: {f}");
    }
    let denials = home.denials().await;
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert_eq!(
        denials[2].0, "http 169.254.169.254:80",
        "one parse, normalised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_may_not_set_the_host_header() {
    let listener = Listener::start(false).await;
    let address = listener.addr.to_string();
    let (home, _s) = abuse_home(
        &format!("hosts = [{address:?}]"),
        "",
        &["interface:http", &format!("host:{address}")],
    )
    .await;
    let url = format!("http://{address}/");
    let f = expect_kind(
        beside_hello(
            &home,
            "http_fetch",
            json!({"url": url, "headers": [["Host", "internal.example"]]}),
        )
        .await,
        FailureKind::Refused,
    );
    assert!(f.message.contains("Host header"), "{f}");
    assert_eq!(
        home.denials().await,
        [(
            format!("http {address} header Host"),
            "the host sets this header itself".to_owned()
        )]
    );
    assert_eq!(listener.accepted(), 0);
    let out = beside_hello(
        &home,
        "http_fetch",
        json!({"url": url, "headers": [["Accept", "text/plain"]]}),
    )
    .await
    .expect("control: an ordinary header");
    assert_eq!(out["status"], 200);
}
