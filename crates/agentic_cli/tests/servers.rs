//! Server plugins through the real `lion` binary: real MCP servers nobody
//! here wrote, installed from npm and PyPI by the test, run in the
//! subprocess sandbox. Homes live under the target directory, not `/tmp`:
//! a server's private `/tmp` hides the host's.

mod support;

use std::path::{Path, PathBuf};

use support::{ClearLion, abuse_manifest, event_kinds, lion, lion_run, run};

/// A scratch directory outside `/tmp`.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("servers-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

/// The installed tree of package plugin `name` in `home`.
fn package_dir(home: &Path, name: &str) -> PathBuf {
    home.join("plugins").join("packages").join(name)
}

#[test]
fn a_pypi_server_installs_answers_refuses_and_is_not_started_once_its_files_change() {
    let dir = scratch();
    let home = dir.path().join("home");
    let install = lion_run(
        &home,
        &[
            "plugin",
            "install",
            "pypi:mcp-server-time==2026.10.19",
            "--name",
            "time",
        ],
    )
    .success();
    assert!(
        install.stdout.contains("get_current_time"),
        "the tools are listed at install: {install:?}"
    );
    let listed = lion_run(&home, &["plugin", "list"]).success();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.contains("time"))
        .expect("listed");
    assert!(row.contains("process") && row.contains("active"), "{row}");
    let info = lion_run(&home, &["plugin", "info", "time", "--json"])
        .success()
        .json();
    let plugin = &info["plugin"]["installed"];
    assert_eq!(plugin["sandbox"], "process");
    assert_eq!(
        plugin["manifest"]["server"]["package"],
        "pypi:mcp-server-time==2026.10.19"
    );
    assert!(plugin["manifest"]["functions"]["convert_time"].is_object());

    let out = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "time",
            "get_current_time",
            "--input",
            r#"{"timezone":"UTC"}"#,
        ],
    )
    .success();
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(answer["timezone"], "UTC", "{out:?}");

    // The tool's own error (isError) is the plugin's typed refusal.
    let refused = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "time",
            "get_current_time",
            "--input",
            r#"{"timezone":"No/Where"}"#,
        ],
    );
    let line = refused.error_line(1);
    assert!(
        line.contains("refused") && line.contains("No/Where"),
        "{line}"
    );
    let kinds = event_kinds(&home);
    for kind in [
        "plugin_installed",
        "plugin_loaded",
        "plugin_succeeded",
        "plugin_failed",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }

    // One changed byte of the installed tree: the server is not started.
    let tree = package_dir(&home, "time");
    let init = tree.join("venv/lib/python3.11/site-packages/mcp_server_time/__init__.py");
    let mut text = std::fs::read_to_string(&init).expect("read the server's code");
    text.push('\n');
    std::fs::write(&init, text).expect("tamper");
    let refused = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "time",
            "get_current_time",
            "--input",
            r#"{"timezone":"UTC"}"#,
        ],
    );
    let line = refused.error_line(1);
    assert!(
        line.contains("changed since install") && line.contains("mcp_server_time/__init__.py"),
        "{line}"
    );

    let scratch = home.join("plugins").join("scratch").join("time");
    assert!(scratch.is_dir(), "its private /tmp was made");
    lion_run(&home, &["plugin", "remove", "time"]).success();
    assert!(!tree.exists(), "a package's files go with its plugin");
    assert!(!scratch.exists(), "and its private /tmp");
}

#[test]
fn a_filesystem_server_given_slash_reaches_only_its_granted_directory() {
    let dir = scratch();
    let home = dir.path().join("home");
    let granted = dir.path().join("granted");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&granted).expect("granted dir");
    std::fs::create_dir_all(&outside).expect("outside dir");
    std::fs::write(granted.join("a.txt"), "inside").expect("write");
    std::fs::write(outside.join("s.txt"), "secret").expect("write");
    let read_only = dir.path().join("read-only");
    std::fs::create_dir_all(&read_only).expect("read-only dir");
    let grant = format!("dir:{}", granted.display());
    let grant_ro = format!("dir:{}:ro", read_only.display());
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            "npm:@modelcontextprotocol/server-filesystem@2026.8.31",
            "--name",
            "fs",
            "--grant",
            &grant,
            "--grant",
            &grant_ro,
            "--",
            "/",
        ],
    )
    .success();
    // One warm server for every call (through the kernel), and the test
    // waits until it has taken the roots lion offers: server-filesystem
    // replaces the directories it was started with once it has asked for
    // them, so its first calls may still see `/`.
    let _kernel = support::Kernel::start(&home, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let listed = lion_run(
            &home,
            &[
                "plugin",
                "call",
                "fs",
                "list_allowed_directories",
                "--input",
                "{}",
            ],
        )
        .success();
        if listed.stdout.contains(&granted.display().to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never took lion's roots: {listed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let call = |function: &str, input: String| {
        lion_run(
            &home,
            &["plugin", "call", "fs", function, "--input", &input],
        )
    };
    let path = |p: &Path| serde_json::Value::from(p.display().to_string());
    let read = call(
        "read_text_file",
        serde_json::json!({"path": path(&granted.join("a.txt"))}).to_string(),
    )
    .success();
    assert!(read.stdout.contains("inside"), "{read:?}");
    call(
        "write_file",
        serde_json::json!({"path": path(&granted.join("b.txt")), "content": "new"}).to_string(),
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(granted.join("b.txt")).expect("written"),
        "new"
    );
    for target in [outside.join("s.txt"), home.join("lion.db")] {
        let out = call(
            "read_text_file",
            serde_json::json!({"path": path(&target)}).to_string(),
        );
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(!out.stdout.contains("secret"), "{out:?}");
    }
    let out = call(
        "write_file",
        serde_json::json!({"path": path(&outside.join("c.txt")), "content": "x"}).to_string(),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!outside.join("c.txt").exists());

    // The server lets itself write in every directory lion offers as a
    // root; the OS refuses the one granted read-only.
    let out = call(
        "write_file",
        serde_json::json!({"path": path(&read_only.join("d.txt")), "content": "x"}).to_string(),
    );
    let line = out.error_line(1);
    assert!(line.contains("EROFS"), "refused by the OS: {line}");
    assert!(!read_only.join("d.txt").exists());
}

#[test]
fn a_registry_install_without_its_runtime_names_it_and_leaves_nothing() {
    let dir = scratch();
    let home = dir.path().join("home");
    let out = run(lion()
        .arg("--home")
        .arg(&home)
        .env("PATH", dir.path().join("no-such-bin"))
        .args([
            "plugin",
            "install",
            "npm:@modelcontextprotocol/server-everything@2026.8.31",
        ]));
    // A progress line, then the one-line error.
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: ") && line.contains("npm") && line.contains("PATH"),
        "{out:?}"
    );
    assert!(!package_dir(&home, "server-everything").exists());
}

#[test]
fn a_package_spec_without_an_exact_version_is_refused() {
    let dir = scratch();
    let home = dir.path().join("home");
    for spec in [
        "npm:left-pad@latest",
        "pypi:mcp-server-time>=1",
        "npm:x@^1.0.0",
    ] {
        let out = lion_run(&home, &["plugin", "install", spec]);
        out.error_line(1);
    }
}

#[test]
fn a_package_name_that_is_not_a_plugin_name_is_refused_before_any_file_is_touched() {
    let dir = scratch();
    let home = dir.path().join("home");
    lion_run(&home, &["element", "list"]).success();
    let keep = home.join("plugins").join("keep");
    std::fs::create_dir_all(&keep).expect("a file of the home");
    for name in ["..", "/", "../../x", "Bad Name"] {
        let out = lion_run(
            &home,
            &[
                "plugin",
                "install",
                "pypi:mcp-server-time==2026.10.19",
                "--name",
                name,
            ],
        );
        let line = out.error_line(1);
        assert!(line.contains("name"), "{line}");
    }
    assert!(keep.is_dir(), "nothing of the home was deleted");
}

#[test]
fn a_server_manifest_may_not_read_the_whole_disk_or_the_home() {
    let dir = scratch();
    let home = dir.path().join("home");
    let plugin = dir.path().join("plugin");
    std::fs::create_dir_all(&plugin).expect("plugin dir");
    for (read_only, says) in [("/", "lion home"), ("../home", "lion home")] {
        std::fs::create_dir_all(&home).expect("home");
        let manifest = plugin.join("plugin.toml");
        std::fs::write(
            &manifest,
            format!(
                "name = \"greedy\"\nversion = \"1\"\ndescription = \"x\"\n\n[server]\n\
                 command = \"python3\"\nread_only = [\"{read_only}\"]\n"
            ),
        )
        .expect("manifest");
        let manifest = manifest.display().to_string();
        let out = lion_run(&home, &["plugin", "install", &manifest]);
        let line = out.error_line(1);
        assert!(line.contains(says), "{line}");
    }
}

/// The status of plugin `name` as `lion plugin info` shows it.
fn status(home: &Path, name: &str) -> String {
    let info = lion_run(home, &["plugin", "info", name, "--json"])
        .success()
        .json();
    info["plugin"]["status"]
        .as_str()
        .expect("a status")
        .to_owned()
}

#[test]
fn a_tool_the_server_offers_later_is_refused_until_the_operator_approves_it() {
    let dir = scratch();
    let home = dir.path().join("home");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let tools = data.join("tools.json");
    std::fs::write(&tools, "[]").expect("tools");
    let manifest = abuse_manifest(
        dir.path(),
        "abuse",
        &[format!("--tools-from={}", tools.display())],
        &[&data],
        "",
    );
    let grant = format!("dir:{}:ro", data.display());
    lion_run(&home, &["plugin", "install", &manifest, "--grant", &grant]).success();
    let call = |function: &str| {
        lion_run(
            &home,
            &[
                "plugin",
                "call",
                "abuse",
                function,
                "--input",
                r#"{"text":"hi"}"#,
            ],
        )
    };

    // A new tool: not callable, the approved ones still are.
    std::fs::write(&tools, r#"[{"name": "extra"}]"#).expect("tools");
    for _ in 0..6 {
        let refused = call("extra");
        let line = refused.error_line(1);
        assert!(
            line.contains("lion plugin approve abuse --dry-run"),
            "{line}"
        );
    }
    assert!(call("good").success().stdout.contains("hi"));
    // Refusals the operator must lift do not count towards quarantine.
    assert_eq!(status(&home, "abuse"), "active");
    let denied: Vec<String> = support::events(&home)
        .iter()
        .map(|e| e["payload"].as_str().unwrap_or_default().to_owned())
        .filter(|p| p.contains("plugin_permission_denied"))
        .collect();
    assert!(
        denied
            .iter()
            .any(|p| p.contains("tool extra") && p.contains("new tool")),
        "{denied:?}"
    );

    let shown = lion_run(&home, &["plugin", "approve", "abuse", "--dry-run"]).success();
    assert!(
        shown.stdout.contains("would approve new abuse.extra") && shown.stdout.contains("input:"),
        "{shown:?}"
    );
    call("extra").error_line(1);
    let approved = lion_run(&home, &["plugin", "approve", "abuse"]).success();
    assert!(
        approved.stdout.contains("approved new abuse.extra"),
        "{approved:?}"
    );
    assert!(call("extra").success().stdout.contains("hi"));

    // A changed description is a change to approve, by name.
    std::fs::write(
        &tools,
        r#"[{"name": "extra", "description": "Now says more."}]"#,
    )
    .expect("tools");
    call("extra").error_line(1);
    let out = lion_run(&home, &["plugin", "approve", "abuse", "nope"]);
    assert!(out.error_line(1).contains("nope"), "{out:?}");
    let approved = lion_run(&home, &["plugin", "approve", "abuse", "extra"]).success();
    assert!(
        approved
            .stdout
            .contains("approved changed abuse.extra: Now says more."),
        "{approved:?}"
    );
    assert!(call("extra").success().stdout.contains("hi"));

    // Gone from the server: forgotten; then nothing is left to approve.
    std::fs::write(&tools, "[]").expect("tools");
    let approved = lion_run(&home, &["plugin", "approve", "abuse", "--json"])
        .success()
        .json();
    assert_eq!(approved["removed"], serde_json::json!(["extra"]));
    let again = lion_run(&home, &["plugin", "approve", "abuse"]).success();
    assert!(again.stdout.contains("nothing to approve"), "{again:?}");
    assert!(event_kinds(&home).iter().any(|k| k == "plugin_approved"));

    // Changed code is not run to be approved: refused before any start.
    let script = dir.path().join("abuse").join("abuse_server.py");
    let mut code = std::fs::read_to_string(&script).expect("the copy");
    code.push_str("\nopen(TOOLS_FROM + '.ran', 'w').close()\n");
    std::fs::write(&script, code).expect("tamper");
    let out = lion_run(&home, &["plugin", "approve", "abuse"]);
    let line = out.error_line(1);
    assert!(line.contains("changed since install"), "{line}");
    assert!(
        !data.join("tools.json.ran").exists(),
        "the changed server never ran"
    );
}

#[test]
fn grant_all_does_not_give_a_server_a_directory_the_operator_did_not_name() {
    let dir = scratch();
    let home = dir.path().join("home");
    let wanted = dir.path().join("wanted");
    std::fs::create_dir_all(&wanted).expect("dir");
    let manifest = abuse_manifest(dir.path(), "greedy", &[], &[&wanted], "");
    let out = lion_run(&home, &["plugin", "install", &manifest, "--grant-all"]);
    let line = out.error_line(1);
    assert!(line.contains(&wanted.display().to_string()), "{line}");
    // Named by the operator, it is granted.
    let grant = format!("dir:{}:ro", wanted.display());
    lion_run(&home, &["plugin", "install", &manifest, "--grant", &grant]).success();
}

#[test]
fn a_server_that_keeps_dying_is_quarantined() {
    let dir = scratch();
    let home = dir.path().join("home");
    let manifest = abuse_manifest(dir.path(), "dies", &["--armed".into()], &[], "");
    lion_run(&home, &["plugin", "install", &manifest]).success();
    for _ in 0..5 {
        let out = lion_run(
            &home,
            &[
                "plugin",
                "call",
                "dies",
                "abuse",
                "--input",
                r#"{"case":"exit","code":7,"message":"goodbye from the server"}"#,
            ],
        );
        let line = out.error_line(1);
        assert!(
            line.contains("exited") && line.contains("goodbye from the server"),
            "the failure names how it ended and keeps its stderr: {line}"
        );
    }
    assert_eq!(status(&home, "dies"), "quarantined");
    let out = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "dies",
            "good",
            "--input",
            r#"{"text":"x"}"#,
        ],
    );
    assert!(out.error_line(1).contains("quarantined"), "{out:?}");
    assert!(event_kinds(&home).iter().any(|k| k == "plugin_quarantined"));
}

#[test]
fn with_a_kernel_running_calls_share_its_one_warm_server_which_restarts_after_a_crash() {
    let dir = scratch();
    let home = dir.path().join("home");
    // A marker in its command line, to find its processes.
    let marker = format!("--tools-from={}", dir.path().join("warm-marker").display());
    let manifest = abuse_manifest(
        dir.path(),
        "warm",
        &["--armed".into(), marker.clone()],
        &[],
        "",
    );
    lion_run(&home, &["plugin", "install", &manifest]).success();
    let kernel = support::Kernel::start(&home, &[]);
    let identity = || {
        let out = lion_run(
            &home,
            &[
                "plugin",
                "call",
                "warm",
                "abuse",
                "--input",
                r#"{"case":"identity"}"#,
            ],
        )
        .success();
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
        v["structuredContent"]["instance"]
            .as_str()
            .expect("the server's instance token")
            .to_owned()
    };
    // Two processes' calls reach one server: the same instance.
    let first = identity();
    assert_eq!(identity(), first, "one warm server in the kernel");
    let crashed = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "warm",
            "abuse",
            "--input",
            r#"{"case":"exit","code":9}"#,
        ],
    );
    let line = crashed.error_line(1);
    assert!(line.contains("exited with code 9"), "{line}");
    let restarted = identity();
    assert_ne!(restarted, first, "a new server after the crash");
    // The calls were the kernel's tasks.
    let tasks = lion_run(&home, &["task", "list", "--json"])
        .success()
        .json();
    let handlers: Vec<&serde_json::Value> = tasks
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| &t["spec"]["handler"])
        .collect();
    assert_eq!(handlers, vec!["plugin"; 4], "kernel: {}", kernel.stderr());

    // Removed: the kernel stops its server, and everything in it.
    assert!(running_with(&marker) > 0, "the server runs in the kernel");
    lion_run(&home, &["plugin", "remove", "warm"]).success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running_with(&marker) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed plugin's server still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How many processes run with `marker` in their command line.
fn running_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            String::from_utf8_lossy(cmdline)
                .split('\0')
                .any(|arg| arg == marker)
        })
        .count()
}

#[test]
fn a_call_that_times_out_stops_the_server_and_the_call_it_shared_it_with_is_told_why() {
    let dir = scratch();
    let home = dir.path().join("home");
    let manifest = abuse_manifest(
        dir.path(),
        "slow",
        &["--armed".into()],
        &[],
        "\n[limits]\ntimeout_ms = 5000\n",
    );
    lion_run(&home, &["plugin", "install", &manifest]).success();
    let kernel = support::Kernel::start(&home, &[]);
    let sleep = r#"{"case":"sleep","seconds":60}"#;
    let start_call = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
            .env_clear_lion()
            .arg("--home")
            .arg(&home)
            .args(["plugin", "call", "slow", "abuse", "--input", sleep])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a call")
    };
    let invoked = || {
        event_kinds(&home)
            .iter()
            .filter(|k| *k == "plugin_invoked")
            .count()
    };
    // The first call runs before the second starts, so it times out first.
    let first = start_call();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while invoked() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = start_call();
    let first = first.wait_with_output().expect("first call");
    let second = second.wait_with_output().expect("second call");
    let first_err = String::from_utf8_lossy(&first.stderr);
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert!(
        first_err.contains("did not answer within 5000 ms"),
        "{first_err}\nthe kernel's stderr:\n{}",
        kernel.stderr()
    );
    assert!(
        second_err.contains("cancelled")
            && second_err.contains("another call it was serving timed out"),
        "{second_err}\nthe kernel's stderr:\n{}",
        kernel.stderr()
    );
    // The next call gets a new server.
    let good = lion_run(
        &home,
        &[
            "plugin",
            "call",
            "slow",
            "good",
            "--input",
            r#"{"text":"after"}"#,
        ],
    )
    .success();
    assert!(good.stdout.contains("after"), "{good:?}");
    assert_eq!(status(&home, "slow"), "active");
}
