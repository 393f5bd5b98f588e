//! lion's plugins as MCP tools, to clients nobody here wrote: the `mcp`
//! Python SDK over stdio (`lion mcp serve`) and streamable HTTP (`/mcp`),
//! and the MCP conformance suite (`@modelcontextprotocol/conformance`, from
//! npm) against `/mcp`, with a fixture server plugin offering the tools its
//! scenarios call, behind a proxy that adds the token the suite cannot
//! send. Homes live under the target directory, not `/tmp`: a server
//! plugin's private `/tmp` hides the host's.

mod support;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::python::run_script;
use support::serve::{Api, Server};
use support::*;

/// The conformance suite's version: the newest that runs on Node 20.
const CONFORMANCE: &str = "@modelcontextprotocol/conformance@0.1.13";

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("serve-mcp-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mcp_conformance")
        .join(name)
}

/// A home with the hello_world plugin installed (its log interface
/// granted).
fn home_with_hello(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let manifest = plugin_dist().join("hello_world/plugin.toml");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            manifest.to_str().unwrap(),
            "--grant",
            "interface:log",
        ],
    )
    .success();
    home
}

/// What the Python client saw of hello_world, checked the same way for
/// both transports.
fn assert_hello(got: &Value) {
    assert_eq!(got["server"], "lion", "{got}");
    assert_eq!(got["tools"], json!(["hello_world.greet"]), "{got}");
    assert_eq!(got["greet_input"]["required"], json!(["name"]), "{got}");
    assert_eq!(
        got["greet_output"]["required"],
        json!(["greeting"]),
        "{got}"
    );
    assert_eq!(
        got["structured"],
        json!({"greeting": "Hello, Ada!"}),
        "{got}"
    );
    assert_eq!(got["is_error"], false, "{got}");
    // Input the schema refuses: a tool error naming why, not a crash.
    assert_eq!(got["refused_is_error"], true, "{got}");
    let refused = got["refused_text"][0].as_str().unwrap();
    assert!(refused.contains("breaks the schema"), "{refused}");
}

#[test]
fn the_python_sdk_calls_an_exposed_plugin_over_stdio() {
    let dir = scratch();
    let home = home_with_hello(dir.path());
    let (ok, stdout, stderr) = run_script(
        "mcp_client.py",
        &[
            "stdio",
            env!("CARGO_BIN_EXE_lion"),
            home.to_str().unwrap(),
            "hello_world",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert_hello(&serde_json::from_str(stdout.trim()).expect("JSON"));
    // Each call is recorded like any other.
    let kinds = event_kinds(&home);
    assert_eq!(
        kinds.iter().filter(|k| *k == "plugin_invoked").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "plugin_succeeded"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "plugin_failed"), "{kinds:?}");
}

#[tokio::test]
async fn the_python_sdk_calls_an_exposed_plugin_over_http_with_the_token() {
    let dir = scratch();
    let home = home_with_hello(dir.path());
    let server = Server::start(&home, &[], &["--expose", "hello_world.greet"]);
    let (url, token) = (server.url.clone(), server.token.clone());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_script("mcp_client.py", &["http", &url, &token], &[])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert_hello(&serde_json::from_str(stdout.trim()).expect("JSON"));
    // Without the token, or from another site, /mcp answers nothing.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}});
    let anonymous = Api {
        token: None,
        ..server.api()
    };
    let refused = anonymous
        .send(
            anonymous
                .request(reqwest::Method::POST, "/mcp")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(initialize.to_string()),
        )
        .await;
    refused.problem(401);
    let api = server.api();
    let cross = api
        .send(
            api.request(reqwest::Method::POST, "/mcp")
                .header("origin", "http://evil.example")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(initialize.to_string()),
        )
        .await;
    cross.problem(403);
    // The calls are counted.
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"lion_plugin_calls_total{plugin="hello_world",outcome="succeeded"} 1"#),
        "{metrics}"
    );
}

/// The conformance suite, installed once per target directory.
fn conformance() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-conformance");
    fs::create_dir_all(&root).expect("node dir");
    let lock = File::create(root.join("lock")).expect("lock");
    lock.lock().expect("lock");
    let bin = root.join("node_modules/.bin/conformance");
    let stamp = root.join("installed.txt");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == CONFORMANCE) && bin.exists() {
        return bin;
    }
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&root)
        .arg(CONFORMANCE)
        .output()
        .expect("npm (the tests need Node 20 and npm)");
    assert!(
        installed.status.success(),
        "npm install {CONFORMANCE} failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    fs::write(&stamp, CONFORMANCE).expect("stamp");
    bin
}

/// The token-adding proxy in front of `server`; killed on drop.
struct Proxy {
    child: std::process::Child,
    port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(server: &Server) -> Self {
        let mut child = Command::new("node")
            .arg(fixture("token-proxy.mjs"))
            .args([&server.url, &server.token])
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("proxy's ready line");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("proxy said {line:?}"));
        Self { child, port }
    }
}

#[test]
fn the_mcp_conformance_suite_passes_against_mcp() {
    let suite = conformance();
    let dir = scratch();
    let home = dir.path().join("home");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            fixture("plugin.toml").to_str().unwrap(),
        ],
    )
    .success();
    let server = Server::start(&home, &[], &["--expose", "conformance", "--bare-names"]);
    let proxy = Proxy::start(&server);
    let url = format!("http://localhost:{}/mcp", proxy.port);
    let results = dir.path().join("results");
    fs::create_dir_all(&results).unwrap();
    let run_suite = |args: &[&str]| {
        let out = Command::new(&suite)
            .args(["server", "--url", &url])
            .args(args)
            .current_dir(&results)
            .output()
            .expect("run the conformance suite");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // Every active scenario: those lion fails are in the baseline, each
    // with its reason; any other failure, or a baseline entry that now
    // passes, fails the run.
    let baseline = fixture("expected-failures.yml");
    let (ok, text) = run_suite(&["--expected-failures", baseline.to_str().unwrap()]);
    assert!(ok, "{text}\nlion's stderr:\n{}", server.stderr());
    for required in [
        "server-initialize",
        "ping",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-error",
        "tools-call-mixed-content",
        "tools-call-image",
        "dns-rebinding-protection",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{required}:")) && l.contains("0 failed")),
            "{required} did not pass:\n{text}"
        );
    }
    // A pending scenario: schemas keep their JSON Schema 2020-12 keywords.
    let (ok, text) = run_suite(&["--scenario", "json-schema-2020-12"]);
    assert!(ok && text.contains("0 failed"), "{text}");
    // The suite's calls ran in the fixture's sandbox and were recorded.
    let kinds = event_kinds(&home);
    assert!(
        kinds.iter().filter(|k| *k == "plugin_invoked").count() >= 6,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn plugins_are_installed_only_from_the_plugin_directory_then_called() {
    let dir = scratch();
    let home = dir.path().join("home");
    // Without a plugin directory, installing over HTTP is off.
    let closed = Server::start(&home, &[], &[]);
    let refused = closed
        .api()
        .post("/plugins", &json!({"manifest": "hello_world/plugin.toml"}))
        .await;
    assert!(refused.problem(403).contains("--plugin-dir"));
    drop(closed);
    let dist = plugin_dist();
    let server = Server::start(&home, &[], &["--plugin-dir", dist.to_str().unwrap()]);
    let api = server.api();
    let install = json!({"manifest": "hello_world/plugin.toml", "grant": ["interface:log"]});
    let installed = api.post("/plugins", &install).await;
    assert_eq!(installed.status, 201, "{installed:?}");
    assert_eq!(installed.json()["name"], "hello_world");
    api.post("/plugins", &install).await.problem(409);
    // A host path of the client's choosing is never granted over HTTP.
    let escape = api
        .post(
            "/plugins",
            &json!({"manifest": "dir_reader/plugin.toml", "grant": ["dir:/data=/etc:ro"]}),
        )
        .await;
    assert!(escape.problem(403).contains("host path"));
    // Nothing outside the directory, however it is named.
    let outside = api
        .post(
            "/plugins",
            &json!({"manifest": "../servers/echo/plugin.toml"}),
        )
        .await;
    assert!(outside.problem(403).contains("plugin directory"));
    api.post("/plugins", &json!({"manifest": "/etc/passwd"}))
        .await
        .problem(403);
    api.post("/plugins", &json!({"manifest": "nope/plugin.toml"}))
        .await
        .problem(404);
    let listed = api.get("/plugins").await.json();
    assert_eq!(listed["items"][0]["name"], "hello_world");
    let info = api.get("/plugins/hello_world").await.json();
    assert_eq!(info["kind"], "wasm");
    assert!(
        info["functions"]["greet"]["input_schema"].is_object(),
        "{info}"
    );
    let called = api
        .post("/plugins/hello_world/call/greet", &json!({"name": "Ada"}))
        .await;
    assert_eq!(called.status, 200, "{called:?}");
    assert_eq!(called.json()["output"]["greeting"], "Hello, Ada!");
    let bad = api
        .post("/plugins/hello_world/call/greet", &json!({"nom": "Ada"}))
        .await;
    assert!(bad.problem(422).contains("schema"));
    api.post("/plugins/hello_world/call/wave", &json!({}))
        .await
        .problem(404);
    api.get("/plugins/nope").await.problem(404);
    // Both calls are in the log.
    let failed = api.get("/events?type=plugin_failed").await.json();
    assert_eq!(failed["items"].as_array().unwrap().len(), 1, "{failed}");
}
