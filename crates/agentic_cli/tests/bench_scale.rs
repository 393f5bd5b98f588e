//! Smoke tests of `lion bench scale`: the real binary, with `--quick` (homes
//! of about 20k events), on the hello_world example plugin (built once per
//! test binary by `scripts/build-plugins`). They check that every command is
//! measured on both homes and every row is printed, not the figures.

mod support;

use std::path::PathBuf;

use support::{lion, run};

/// hello_world's staged directory (the plugins are built once).
fn hello_world() -> PathBuf {
    support::plugin_dist().join("hello_world")
}

/// The operations' rows, in table order.
const ROWS: [&str; 6] = [
    "element show ID",
    "task show ID",
    "plugin call NAME greet",
    "agent send: a turn of an agent with 200 messages (scripted provider)",
    "task submit --handler echo --wait, no kernel running",
    "run: start until it logs \"kernel ready\", then SIGTERM",
];

#[test]
fn bench_scale_quick_measures_every_command_on_both_homes() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "scale", "--quick", "--plugin"])
        .arg(hello_world())
        .arg("--dir")
        .arg(scratch.path()))
    .success();
    for row in ROWS {
        assert!(out.stdout.contains(row), "no {row:?} row: {out:?}");
    }
    for column in [
        "empty home",
        "-event home",
        "time ratio (≤2x)",
        "RSS ratio (≤1.5x)",
    ] {
        assert!(out.stdout.contains(column), "no {column:?} column: {out:?}");
    }
    assert_eq!(
        out.stdout.matches("no evidence (quick run)").count(),
        ROWS.len(),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("with lion replay"),
        "the built homes are checked: {out:?}"
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
        "the scratch homes were left behind: {left:?}"
    );
}

#[test]
fn bench_scale_keep_builds_the_homes_once_and_reuses_them() {
    let keep = tempfile::tempdir().expect("tempdir");
    let bench = || {
        run(lion()
            .args([
                "--json", "bench", "scale", "--quick", "--runs", "1", "--plugin",
            ])
            .arg(hello_world())
            .arg("--keep")
            .arg(keep.path()))
        .success()
        .json()
    };
    let first = bench();
    assert_eq!(first["big_home_reused"], false, "{first}");
    let built = first["big_home"]["events_built"].as_u64().unwrap_or(0);
    assert!(built >= 20_000, "{first}");
    // The run added one agent of 200 messages to each home: its spawn and
    // 100 turns of 3 events (prompt, delta, answer).
    assert_eq!(first["big_home"]["events"], built + 301, "{first}");
    let operations = first["operations"].as_array().expect("operations");
    assert_eq!(operations.len(), ROWS.len(), "{first}");
    for op in operations {
        for key in [
            "empty_ms",
            "big_ms",
            "empty_peak_rss_mib",
            "big_peak_rss_mib",
        ] {
            let figure = op[key].as_f64().unwrap_or(0.0);
            assert!(figure > 0.0, "{key} is {figure}: {op}");
        }
    }
    assert!(keep.path().join("big-home").join("lion.db").is_file());

    let second = bench();
    assert_eq!(second["big_home_reused"], true, "{second}");
    assert_eq!(second["big_home"]["events_built"], built, "{second}");
    // The first run's commands and this run's agent came on top.
    let now = second["big_home"]["events"].as_u64().unwrap_or(0);
    assert!(now >= built + 2 * 301, "{second}");
}

#[test]
fn bench_scale_refuses_to_build_over_a_directory_it_did_not_make() {
    let keep = tempfile::tempdir().expect("tempdir");
    let foreign = keep.path().join("big-home");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let out = run(lion()
        .args(["bench", "scale", "--quick", "--plugin"])
        .arg(hello_world())
        .arg("--keep")
        .arg(keep.path()));
    let line = out.error_line(1);
    assert!(line.contains("is not a home this bench built"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).expect("still there"),
        "mine"
    );
    assert!(!keep.path().join("empty-home").exists(), "{out:?}");
}

#[test]
fn bench_scale_without_a_built_plugin_says_to_build_it() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = run(lion()
        .current_dir(cwd.path())
        .args(["bench", "scale", "--quick"]));
    let line = out.error_line(1);
    assert!(line.contains("scripts/build-plugins"), "{out:?}");
    assert!(!cwd.path().join(".lion").exists(), "{out:?}");
}
