//! Smoke tests of `lion bench plugins`: the real binary, with `--quick`, on
//! the hello_world example plugin (built once per test binary by
//! `scripts/build-plugins`) and the echo example server
//! (plugins/servers/echo, run jailed and unsandboxed). They check that
//! every path runs and every row is printed, not the figures.

mod support;

use std::path::{Path, PathBuf};

use support::{lion, run};

/// hello_world's staged directory (the plugins are built once).
fn hello_world() -> PathBuf {
    support::plugin_dist().join("hello_world")
}

/// The echo example server, in the repository.
fn echo_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/servers/echo")
}

/// A scratch directory outside `/tmp` (a server's private `/tmp` hides the
/// host's).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bench-plugins-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

#[test]
fn bench_plugins_quick_prints_every_row_beside_its_raw_baseline() {
    let scratch = scratch();
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "plugins", "--quick", "--plugin"])
        .arg(hello_world())
        .arg("--server")
        .arg(echo_server())
        .arg("--dir")
        .arg(scratch.path()))
    .success();
    for row in [
        "sandbox start",
        "compile, cold",
        "cached load",
        "SHA-256 check",
        "raw wasmtime call, sequential: p50",
        "manager call, async recording (events committed later, not waited for), sequential: p50",
        "raw fdatasync of a 4 KiB write: p50",
        "manager call, durable recording (events committed before it returns, as `lion plugin call`), sequential: p50",
        "manager call, durable recording, sequential: p99",
        "raw wasmtime calls/s, 16 callers",
        "manager calls/s, async recording, 16 callers",
        "manager calls/s, durable recording, 16 callers",
        "server plugin echo.echo",
        "cold start to the first tool result, unsandboxed (spawn, initialize, call): p50 of 3",
        "cold start to the first tool result, sandboxed (ProcessSandbox",
        "cold start through the manager",
        "bare MCP call on an unsandboxed session, warm, sequential: p50",
        "sandbox call of its warm jailed server (input parsed, output converted; no manager), sequential: p99",
        "manager call of a jailed server, async recording (events committed later, not waited for), warm, sequential: p50",
        "manager call of a jailed server, durable recording (as `lion plugin call`), warm, sequential: p50",
        "manager call of a jailed server, durable recording, warm, sequential: p99",
        "≤ +5 ms",
        "≤ 1.2x bare",
    ] {
        assert!(out.stdout.contains(row), "no {row:?} row: {out:?}");
    }
    // Four targets (cached load, wasm call, server cold start, server warm
    // call), none judged on a quick run.
    assert_eq!(
        out.stdout.matches("no evidence (quick run)").count(),
        4,
        "{out:?}"
    );
    assert!(
        !out.stdout.contains("PASS") && !out.stdout.contains("FAIL"),
        "{out:?}"
    );
    assert!(
        !cwd.path().join(".lion").exists(),
        "bench opened a home it does not need"
    );
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .collect();
    assert!(
        left.is_empty(),
        "the scratch home was left behind: {left:?}"
    );
}

#[test]
fn bench_plugins_quick_json_has_every_figure() {
    let scratch = scratch();
    let out = run(lion()
        .args(["--json", "bench", "plugins", "--quick", "--plugin"])
        .arg(hello_world())
        .arg("--server")
        .arg(echo_server())
        .arg("--dir")
        .arg(scratch.path()))
    .success();
    let report = out.json();
    assert_eq!(report["plugin"], "hello_world", "{report}");
    for key in [
        "compile_ms",
        "cached_load_ms",
        "raw_call_p50_us",
        "raw_call_p99_us",
        "manager_call_p50_us",
        "manager_call_p99_us",
        "fsync_p50_us",
        "durable_call_p50_us",
        "durable_call_p99_us",
    ] {
        let figure = report[key].as_f64().unwrap_or_default();
        assert!(figure > 0.0, "{key} is {figure}: {report}");
    }
    let throughput = report["throughput"].as_array().expect("throughput rows");
    assert_eq!(throughput.len(), 2, "{report}");
    for row in throughput {
        for key in [
            "raw_calls_per_sec",
            "manager_calls_per_sec",
            "durable_calls_per_sec",
        ] {
            let rate = row[key].as_f64().unwrap_or_default();
            assert!(rate > 0.0, "{key} is {rate}: {report}");
        }
    }
    let server = &report["server"];
    assert_eq!(server["plugin"], "echo", "{report}");
    assert_eq!(server["cold_starts"], 3, "{report}");
    for key in [
        "cold_start_unsandboxed_p50_ms",
        "cold_start_sandboxed_p50_ms",
        "cold_start_manager_p50_ms",
        "bare_call_p50_us",
        "bare_call_p99_us",
        "sandbox_call_p50_us",
        "manager_call_p50_us",
        "manager_call_p99_us",
        "durable_call_p50_us",
        "durable_call_p99_us",
    ] {
        let figure = server[key].as_f64().unwrap_or_default();
        assert!(figure > 0.0, "server {key} is {figure}: {report}");
    }
    // Differences may be negative (noise), but they are figures.
    for key in ["cold_start_sandbox_added_ms", "cold_start_manager_added_ms"] {
        assert!(server[key].is_f64(), "server {key}: {report}");
    }
    for key in ["cold_start_target_met", "warm_call_target_met"] {
        assert!(server[key].is_boolean(), "server {key}: {report}");
    }
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("read scratch")
        .collect();
    assert!(
        left.is_empty(),
        "the scratch home was left behind: {left:?}"
    );
}

#[test]
fn bench_plugins_without_the_server_says_where_it_is() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "plugins", "--quick", "--plugin"])
        .arg(hello_world()));
    let line = out.error_line(1);
    assert!(
        line.contains("plugins/servers/echo") && line.contains("--server"),
        "{out:?}"
    );
    assert!(!cwd.path().join(".lion").exists(), "{out:?}");
}

#[test]
fn bench_plugins_without_a_built_plugin_says_to_build_it() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "plugins", "--quick"]));
    let line = out.error_line(1);
    assert!(line.contains("scripts/build-plugins"), "{out:?}");
    assert!(!cwd.path().join(".lion").exists(), "{out:?}");
}
