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

/// Regression (issue 14): the kernel fed its own `plugin_kv_set` events
/// back into the loaded plugin after later calls had changed the key, so a
/// counter went back (300 increments ended at 218).
#[test]
fn a_kernel_never_takes_a_plugins_kv_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let counter = manifest("kv_counter");
    lion_run(&home, &["plugin", "install", path(&counter), "--grant-all"]).success();
    let _kernel = Kernel::start(&home, &[]);
    let input = json!({
        "n": 300,
        "handler": "plugin",
        "input": {"plugin": "kv_counter", "function": "increment", "input": {"key": "c"}},
    })
    .to_string();
    lion_run(
        &home,
        &[
            "task",
            "submit",
            "--handler",
            "fanout",
            "--input",
            &input,
            "--wait",
            "--timeout",
            "600000",
        ],
    )
    .success();
    // Every increment counted, in the log and in the kernel's loaded copy.
    let run = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "kv_counter",
            "get",
            "--input",
            r#"{"key":"c"}"#,
        ],
    )
    .success();
    assert_eq!(run.stdout.trim(), r#"{"value":300}"#, "{run:?}");
    let run = lion_run(
        &home,
        &[
            "task",
            "submit",
            "--plugin",
            "kv_counter",
            "--function",
            "increment",
            "--input",
            r#"{"key":"c"}"#,
            "--wait",
            "--json",
        ],
    )
    .success();
    assert_eq!(run.json()["output"]["value"], 301, "{run:?}");
}

/// A plugin folder like the `dir_reader` example's, with its `data`
/// directory replaced by `data` as the test wants it.
fn dir_reader_with(dir: &Path, data: impl FnOnce(&Path)) -> PathBuf {
    let folder = dir.join("dir_reader");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let dist = plugin_dist().join("dir_reader");
    for entry in std::fs::read_dir(&dist).expect("dist") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), folder.join(entry.file_name())).expect("copy");
        }
    }
    data(&folder.join("data"));
    folder.join("plugin.toml")
}

/// Regression (issue 14): `dir:GUEST` granted whatever host path the
/// manifest named — `/`, `../../..`, a symlink to `/` — and a plugin read
/// `/etc/shadow` into the log.
#[test]
fn a_directory_outside_the_manifests_folder_is_granted_only_when_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::write(secret.join("token.txt"), "sentinel-outside").expect("write");
    let manifest = dir_reader_with(dir.path(), |data| {
        std::os::unix::fs::symlink(&secret, data).expect("symlink")
    });
    lion_run(&home, &["plugin", "list"]).success();
    let before = event_kinds(&home);

    for flags in [vec!["--grant", "dir:/data"], vec!["--grant-all"]] {
        let mut args = vec!["plugin", "install", path(&manifest)];
        args.extend(flags);
        let run = lion_run(&home, &args);
        let line = run.error_line(1);
        let named = format!(
            "--grant dir:/data={}",
            secret.canonicalize().expect("canonical").display()
        );
        assert!(line.contains("outside the manifest's folder"), "{line}");
        assert!(line.contains(&named), "{line}");
    }
    assert_eq!(event_kinds(&home), before, "nothing was recorded");

    // Named by the operator, it is granted, and the install says where.
    let flag = format!("dir:/data={}", secret.display());
    let run = lion_run(
        &home,
        &["plugin", "install", path(&manifest), "--grant", &flag],
    )
    .success();
    assert!(
        run.stdout.contains(&format!(
            "/data = {}",
            secret.canonicalize().unwrap().display()
        )),
        "{run:?}"
    );
    let run = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "dir_reader",
            "read",
            "--input",
            r#"{"path":"token.txt"}"#,
        ],
    )
    .success();
    assert!(run.stdout.contains("sentinel-outside"), "{run:?}");
}

/// A directory inside the manifest's folder is granted as `dir:GUEST`, and
/// one reached through `..` is not.
#[test]
fn a_directory_inside_the_manifests_folder_needs_no_naming_but_dot_dot_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let manifest = dir_reader_with(dir.path(), |data| {
        std::fs::create_dir_all(data).expect("mkdir");
        std::fs::write(data.join("note.txt"), "inside").expect("write");
    });
    lion_run(
        &home,
        &["plugin", "install", path(&manifest), "--grant", "dir:/data"],
    )
    .success();
    let run = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "dir_reader",
            "read",
            "--input",
            r#"{"path":"note.txt"}"#,
        ],
    )
    .success();
    assert!(run.stdout.contains("inside"), "{run:?}");
    lion_run(&home, &["plugin", "remove", "dir_reader"]).success();

    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    for escape in ["..", "../../..", "/"] {
        let edited = text.replace("path = \"data\"", &format!("path = {escape:?}"));
        std::fs::write(&manifest, &edited).expect("write manifest");
        let run = lion_run(
            &home,
            &["plugin", "install", path(&manifest), "--grant", "dir:/data"],
        );
        assert!(
            run.error_line(1).contains("outside the manifest's folder"),
            "{escape}: {run:?}"
        );
    }
}

/// Regression (issue 14): homes made before directory grants had to be
/// named hold such grants; loading one is refused with the command that
/// re-grants it, and `lion plugin grant` fixes it.
#[test]
fn an_old_unnamed_directory_grant_is_refused_at_load_until_regranted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agentic_store/tests/fixtures/golden_v2");
    std::fs::create_dir_all(home.join("plugins/components")).expect("mkdir");
    for file in ["lion.db", "HEAD"] {
        std::fs::copy(golden.join(file), home.join(file)).expect("copy");
    }
    for entry in std::fs::read_dir(golden.join("plugins/components")).expect("components") {
        let entry = entry.expect("entry");
        std::fs::copy(
            entry.path(),
            home.join("plugins/components").join(entry.file_name()),
        )
        .expect("copy component");
    }
    let read = [
        "plugin",
        "call",
        "dir_reader",
        "read",
        "--input",
        r#"{"path":"note.txt"}"#,
    ];
    let run = lion_run(&home, &read);
    let line = run.error_line(1);
    assert!(
        line.contains("recorded before lion asked operators to name"),
        "{line}"
    );
    assert!(
        line.contains("lion plugin grant dir_reader --grant dir:/data=/tmp/g2src/data:ro"),
        "{line}"
    );
    let kinds = event_kinds(&home);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("plugin_permission_denied")
    );

    // Plugins without directories are unaffected.
    let run = lion_run(
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
    assert_eq!(run.stdout.trim(), r#"{"key":"visits","value":3}"#);

    // Re-granted with a host path the operator names.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("note.txt"), "regranted").expect("write");
    let flag = format!("dir:/data={}:ro", data.display());
    let run = lion_run(&home, &["plugin", "grant", "dir_reader", "--grant", &flag]).success();
    assert!(
        run.stdout.starts_with("granted dir_reader: dirs /data = "),
        "{run:?}"
    );
    let run = lion_run(&home, &read).success();
    assert!(run.stdout.contains("regranted"), "{run:?}");
    // A grant is still only what the manifest asks for.
    let run = lion_run(
        &home,
        &["plugin", "grant", "dir_reader", "--grant", "interface:kv"],
    );
    assert!(run.error_line(1).contains("does not ask for"), "{run:?}");
    lion_run(&home, &["events", "verify"]).success();
    lion_run(&home, &["replay"]).success();
}

/// Regression (issue 14): a manifest whose component is `/dev/zero` was
/// read without limit, and a FIFO hung the install.
#[test]
fn install_reads_only_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let text = std::fs::read_to_string(manifest("hello_world")).expect("manifest");
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    for component in ["/dev/zero", path(&fifo)] {
        let edited = text.replace(
            "path = \"hello_world.wasm\"",
            &format!("path = {component:?}"),
        );
        let m = dir.path().join("plugin.toml");
        std::fs::write(&m, edited).expect("write");
        let run = lion_run(
            &home,
            &["plugin", "install", path(&m), "--grant", "interface:log"],
        );
        assert!(
            run.error_line(1).contains("not a regular file"),
            "{component}: {run:?}"
        );
    }
    // The manifest itself, too.
    let run = lion_run(&home, &["plugin", "install", path(&fifo)]);
    assert!(run.error_line(1).contains("not a regular file"), "{run:?}");
}

/// Regression (issue 14): an interrupted call left `plugin_invoked` with
/// no outcome.
#[test]
fn an_interrupted_call_is_recorded_as_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    // The abuse plugin with a timeout long enough to interrupt it first.
    let folder = dir.path().join("abuse");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for entry in std::fs::read_dir(plugin_dist().join("abuse")).expect("dist") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), folder.join(entry.file_name())).expect("copy");
    }
    let text = std::fs::read_to_string(folder.join("plugin.toml")).expect("manifest");
    let text = set_toml_line(&text, "timeout_ms", "600000");
    std::fs::write(folder.join("plugin.toml"), text).expect("write manifest");
    let m = folder.join("plugin.toml");
    lion_run(
        &home,
        &["plugin", "install", path(&m), "--grant", "interface:log"],
    )
    .success();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("--home")
        .arg(&home)
        .args(["plugin", "call", "abuse", "spin"])
        .env_clear_lion()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for the call to be under way: its plugin_invoked is in the log.
    let mut child = child;
    while !event_kinds(&home).iter().any(|k| k == "plugin_invoked") {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("lion plugin call ended before its call was recorded: {status}");
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    let events = events(&home);
    let last = events.last().expect("events");
    assert_eq!(
        last["event"]["plugin_failed"]["failure"]["kind"], "cancelled",
        "{last}"
    );
}

/// `text` with the TOML line `key = ...` set to `key = value`.
fn set_toml_line(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with(&format!("{key} ")) {
                format!("{key} = {value}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Regression (issue 14 review): a directory inside the manifest's folder
/// could hold the lion home itself (`lion plugin install ./plugin.toml`
/// run in the plugin's folder, home `./.lion`), giving the plugin the log.
#[test]
fn no_grant_may_hold_or_lie_in_the_home() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir_reader_with(dir.path(), |data| {
        std::fs::create_dir_all(data).expect("mkdir")
    });
    let folder = manifest.parent().expect("folder");
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    std::fs::write(&manifest, text.replace("path = \"data\"", "path = \".\"")).expect("write");
    let home = folder.join(".lion");
    lion_run(&home, &["plugin", "list"]).success();
    let before = event_kinds(&home);
    let run = lion_run(
        &home,
        &["plugin", "install", path(&manifest), "--grant", "dir:/data"],
    );
    assert!(run.error_line(1).contains("may not see the log"), "{run:?}");
    // Named, a directory inside the home is refused too.
    let inside = format!("dir:/data={}", home.display());
    let run = lion_run(
        &home,
        &["plugin", "install", path(&manifest), "--grant", &inside],
    );
    assert!(
        run.error_line(1).contains("lies inside the lion home"),
        "{run:?}"
    );
    assert_eq!(event_kinds(&home), before, "nothing was recorded");
}
