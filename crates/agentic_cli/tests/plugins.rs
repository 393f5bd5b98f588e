//! `lion plugin …` and `lion task submit --plugin` through the real binary:
//! install with grants, call, list, info, remove, persistence across
//! processes, schema errors, quarantine, and bad input that installs
//! nothing.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::*;

/// The staged manifest of example plugin `name`.
fn manifest(name: &str) -> PathBuf {
    plugin_dist().join(name).join("plugin.toml")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn install_call_list_info_and_remove_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let hello = manifest("hello_world");

    let installed = lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&hello),
            "--grant",
            "interface:log",
        ],
    )
    .success();
    assert!(
        installed.stdout.starts_with("installed hello_world 0.1.0"),
        "{installed:?}"
    );
    assert!(
        installed.stdout.contains("granted: interfaces log"),
        "{installed:?}"
    );

    let called = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "hello_world",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#,
        ],
    )
    .success();
    assert_eq!(called.stdout, "{\"greeting\":\"Hello, Ada!\"}\n");

    let listed = lion_run(&home, &["plugin", "list", "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["installed"]["manifest"]["name"], "hello_world");
    assert_eq!(listed[0]["calls"], 1);
    assert_eq!(listed[0]["status"], "active");
    let table = lion_run(&home, &["plugin", "list"]).success();
    assert!(table.stdout.contains("hello_world"), "{table:?}");

    let info = lion_run(&home, &["plugin", "info", "hello_world"]).success();
    for expected in [
        "Greets people.",
        "granted:    interfaces log",
        "greet:",
        "1 succeeded",
    ] {
        assert!(info.stdout.contains(expected), "{expected}: {info:?}");
    }

    assert_eq!(
        event_kinds(&home),
        [
            "plugin_installed",
            "plugin_loaded",
            "plugin_loaded",
            "plugin_invoked",
            "plugin_succeeded"
        ]
    );

    lion_run(&home, &["plugin", "remove", "hello_world"]).success();
    let gone = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "hello_world",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert_eq!(
        gone.error_line(1),
        "error: no plugin hello_world is installed"
    );
    let listed = lion_run(&home, &["plugin", "list", "--json"])
        .success()
        .json();
    assert_eq!(listed, json!([]));
}

#[test]
fn grant_all_warns_and_grants_everything_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let run = lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&manifest("kv_counter")),
            "--grant-all",
        ],
    )
    .success();
    assert!(
        run.stderr
            .starts_with("warning: --grant-all gives kv_counter"),
        "{run:?}"
    );
    let info = lion_run(&home, &["plugin", "info", "kv_counter", "--json"])
        .success()
        .json();
    assert_eq!(
        info["plugin"]["installed"]["grant"]["interfaces"],
        json!(["kv", "events", "log"])
    );
}

#[test]
fn the_key_value_store_persists_across_lion_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&manifest("kv_counter")),
            "--grant-all",
        ],
    )
    .success();
    for expected in 1..=3 {
        let out = lion_run(
            &home,
            &[
                "plugin",
                "call",
                "kv_counter",
                "increment",
                "--input",
                r#"{"key":"visits"}"#,
            ],
        )
        .success();
        let value: Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(value, json!({"key": "visits", "value": expected}));
    }
    let info = lion_run(&home, &["plugin", "info", "kv_counter", "--json"])
        .success()
        .json();
    assert_eq!(info["kv_keys"], 1);
    lion_run(&home, &["replay"]).success();
}

#[test]
fn bad_installs_are_one_line_errors_and_install_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["plugin", "list"]).success();
    let before = snapshot(&home);
    let hello = manifest("hello_world");
    let good = std::fs::read_to_string(&hello).expect("manifest");
    let sha = good
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("sha256 line")
        .to_owned();
    let variant = |name: &str, text: String| {
        let p = hello.with_file_name(format!("cli-{name}-{}.toml", std::process::id()));
        std::fs::write(&p, text).expect("write");
        p
    };
    let cases = [
        (
            variant("missing", good.replace("version = \"0.1.0\"\n", "")),
            vec![],
            "missing field `version`",
        ),
        (
            variant("unknown", good.replace("[limits]", "[limits]\ncpus = 2")),
            vec![],
            "unknown field `cpus`",
        ),
        (
            variant("hash", good.replace(&sha, &"a".repeat(64))),
            vec![],
            "but the manifest says",
        ),
        (
            variant("nofile", good.replace("hello_world.wasm", "missing.wasm")),
            vec![],
            "missing.wasm",
        ),
        (
            hello.clone(),
            vec!["--grant", "interface:http"],
            "does not ask for",
        ),
        (hello.clone(), vec!["--grant", "network"], "invalid grant"),
        (dir.path().join("absent.toml"), vec![], "absent.toml"),
    ];
    for (manifest, grants, expected) in cases {
        let mut args = vec!["plugin", "install", path(&manifest)];
        args.extend(grants);
        let run = lion_run(&home, &args);
        let line = run.error_line(1);
        assert!(line.contains(expected), "{expected}: {run:?}");
        if manifest != hello {
            let _ = std::fs::remove_file(&manifest);
        }
    }
    assert_unchanged(&home, &before);
    assert!(!home.join("plugins").exists(), "nothing may be copied in");
}

#[test]
fn calls_with_bad_input_are_refused_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["plugin", "install", path(&manifest("calculator"))]).success();
    let run = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "calculator",
            "eval",
            "--input",
            r#"{"expr":"1+1"}"#,
        ],
    );
    let line = run.error_line(1);
    assert!(
        line.contains("invalid_input") && line.contains("schema"),
        "{run:?}"
    );
    let run = lion_run(
        &home,
        &["plugin", "call", "calculator", "eval", "--input", "{oops"],
    );
    assert!(run.error_line(1).contains("not JSON"), "{run:?}");
    let failed: Vec<Value> = events(&home)
        .into_iter()
        .filter_map(|e| e["event"].get("plugin_failed").cloned())
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["failure"]["kind"], "invalid_input");
}

#[test]
fn a_plugin_that_keeps_trapping_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["plugin", "install", path(&manifest("abuse"))]).success();
    for _ in 0..5 {
        let run = lion_run(&home, &["plugin", "call", "abuse", "trap"]);
        assert!(
            run.error_line(1).contains("unreachable_code_reached"),
            "{run:?}"
        );
    }
    let run = lion_run(&home, &["plugin", "call", "abuse", "echo"]);
    assert!(run.error_line(1).contains("quarantined"), "{run:?}");
    let listed = lion_run(&home, &["plugin", "list", "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["status"], "quarantined");
    assert!(event_kinds(&home).iter().any(|k| k == "plugin_quarantined"));
}

#[test]
fn tasks_run_plugin_functions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&manifest("hello_world")),
            "--grant",
            "interface:log",
        ],
    )
    .success();
    let run = lion_run(
        &home,
        &[
            "task",
            "submit",
            "--plugin",
            "hello_world",
            "--function",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#,
            "--wait",
            "--json",
        ],
    )
    .success();
    let out = run.json();
    assert_eq!(out["output"], json!({"greeting": "Hello, Ada!"}), "{run:?}");
    let run = lion_run(
        &home,
        &[
            "task",
            "submit",
            "--plugin",
            "hello_world",
            "--function",
            "wave",
            "--wait",
        ],
    );
    assert!(
        run.error_line(1).contains("no function \"wave\""),
        "{run:?}"
    );
    let run = lion_run(
        &home,
        &[
            "task",
            "submit",
            "--plugin",
            "nobody",
            "--function",
            "greet",
            "--wait",
        ],
    );
    assert_eq!(run.error_line(1), "error: no plugin nobody is installed");
}

#[test]
fn a_running_kernel_runs_plugin_tasks_and_sees_plugins_reinstalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let hello = manifest("hello_world");
    lion_run(&home, &["plugin", "list"]).success();
    let _kernel = Kernel::start(&home, &[]);
    let greet = [
        "task",
        "submit",
        "--plugin",
        "hello_world",
        "--function",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--wait",
        "--json",
    ];
    // Installed without the log grant it needs: the kernel's call is denied.
    lion_run(&home, &["plugin", "install", path(&hello)]).success();
    let run = lion_run(&home, &greet);
    assert!(run.error_line(1).contains("permission_denied"), "{run:?}");
    // Reinstalled with it while the kernel runs: the kernel reloads it.
    lion_run(&home, &["plugin", "remove", "hello_world"]).success();
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&hello),
            "--grant",
            "interface:log",
        ],
    )
    .success();
    let run = lion_run(&home, &greet).success();
    assert_eq!(
        run.json()["output"],
        json!({"greeting": "Hello, Ada!"}),
        "{run:?}"
    );
}
