//! Smoke tests of `lion bench plugins`: the real binary, with `--quick`, on
//! the hello_world example plugin (built once per test binary by
//! `scripts/build-plugins`). They check that every path runs and every row
//! is printed, not the figures.

mod support;

use std::path::PathBuf;

use support::{lion, run};

/// hello_world's staged directory (the plugins are built once).
fn hello_world() -> PathBuf {
    support::plugin_dist().join("hello_world")
}

#[test]
fn bench_plugins_quick_prints_every_row_beside_its_raw_baseline() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "plugins", "--quick", "--plugin"])
        .arg(hello_world())
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
    ] {
        assert!(out.stdout.contains(row), "no {row:?} row: {out:?}");
    }
    assert!(out.stdout.contains("no evidence (quick run)"), "{out:?}");
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
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .args(["--json", "bench", "plugins", "--quick", "--plugin"])
        .arg(hello_world())
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
