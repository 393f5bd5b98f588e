//! Server plugins through the real `lion` binary: real MCP servers nobody
//! here wrote, installed from npm and PyPI by the test, run in the
//! subprocess sandbox. Homes live under the target directory, not `/tmp`:
//! a server's private `/tmp` hides the host's.

mod support;

use std::path::{Path, PathBuf};

use support::{event_kinds, lion, lion_run, run};

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

    lion_run(&home, &["plugin", "remove", "time"]).success();
    assert!(!tree.exists(), "a package's files go with its plugin");
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
    let grant = format!("dir:{}", granted.display());
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
            "--",
            "/",
        ],
    )
    .success();
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
