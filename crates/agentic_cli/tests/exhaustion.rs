//! The resource-exhaustion suite through the real binary: on a `lion run`
//! kernel, a misbehaving plugin's task floods one resource after another
//! (events, the key-value store, file handles, the disk, stdout, output,
//! memory, CPU, the network), and while it runs a good task is submitted
//! and must succeed. Each bad task fails with the bound's kind, recorded in
//! the log; a positive control under each bound succeeds.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::*;

/// The abuse plugin's limits here: small enough to reach quickly, a
/// timeout long enough for a good task to run beside a spinning one.
const LIMITS: &str = "memory_mib = 32
timeout_ms = 4000
max_output_bytes = 65536
max_concurrency = 4
max_emit_bytes = 4096
max_emit_total_bytes = 65536
max_kv_total_bytes = 65536
max_open_handles = 32
max_write_bytes = 1048576";

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A TCP listener on 127.0.0.1 that counts connections and answers each
/// with a small HTTP response.
struct Http {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Http {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for mut socket in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf);
                let _ = socket.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Self { port, accepted }
    }
}

/// Stages the abuse plugin in `dir/abuse` with `LIMITS`, a read-write
/// `data/` folder beside its manifest (mounted at `/data`) and the host
/// `localhost:PORT`; returns the manifest.
fn stage_abuse(dir: &Path, port: u16) -> PathBuf {
    let staged = plugin_dist().join("abuse");
    let folder = dir.join("abuse");
    std::fs::create_dir_all(folder.join("data")).expect("mkdir");
    std::fs::write(folder.join("data/inside.txt"), "inside").expect("write");
    std::fs::copy(staged.join("abuse.wasm"), folder.join("abuse.wasm")).expect("copy");
    let text = std::fs::read_to_string(staged.join("plugin.toml")).expect("manifest");
    let interfaces = "interfaces = [\"log\", \"kv\", \"events\", \"http\"]";
    assert!(
        text.contains(interfaces),
        "the staged abuse manifest changed"
    );
    let text = text.replace(
        interfaces,
        &format!(
            "{interfaces}\nhosts = [\"localhost:{port}\"]\n\
             dirs = [{{ path = \"data\", guest = \"/data\", mode = \"read-write\" }}]"
        ),
    );
    let start = text.find("[limits]").expect("[limits]");
    let end = start + text[start..].find("\n\n").expect("end of [limits]");
    let text = format!("{}[limits]\n{LIMITS}{}", &text[..start], &text[end..]);
    let manifest = folder.join("plugin.toml");
    std::fs::write(&manifest, text).expect("write manifest");
    manifest
}

/// The sequence number of the newest event.
fn head_seq(home: &Path) -> u64 {
    events(home)
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

/// Runs a bad task (`function` of the abuse plugin with `input`); once the
/// log shows its call running, submits a good `hello_world` task, which
/// must succeed; returns the bad task's run.
fn bad_beside_good(home: &Path, function: &str, input: Value) -> Run {
    let from = head_seq(home) + 1;
    let mut tail = Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("--home")
        .arg(home)
        .args(["--json", "events", "tail", "--from", &from.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start events tail");
    let bad = {
        let home = home.to_owned();
        let (function, input) = (function.to_owned(), input.to_string());
        std::thread::spawn(move || {
            lion_run(
                &home,
                &[
                    "task",
                    "submit",
                    "--plugin",
                    "abuse",
                    "--function",
                    &function,
                    "--input",
                    &input,
                    "--wait",
                ],
            )
        })
    };
    // Wait for the event that says the bad call is running (or for the
    // end of a task that never got that far, which the checks below then
    // report).
    let lines = BufReader::new(tail.stdout.take().expect("tail stdout")).lines();
    for line in lines {
        let event: Value = serde_json::from_str(&line.expect("tail line")).expect("JSON event");
        let event = &event["event"];
        if event["plugin_invoked"]["name"] == "abuse"
            || ["task_completed", "task_failed", "task_timed_out"]
                .iter()
                .any(|k| event.get(k).is_some())
        {
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let good = lion_run(
        home,
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
    assert_eq!(good.json()["output"], json!({"greeting": "Hello, Ada!"}));
    bad.join().expect("the bad task's thread")
}

/// Runs a task that must succeed: the control under a bound.
fn control(home: &Path, function: &str, input: Value) -> Value {
    let run = lion_run(
        home,
        &[
            "task",
            "submit",
            "--plugin",
            "abuse",
            "--function",
            function,
            "--input",
            &input.to_string(),
            "--wait",
            "--json",
        ],
    )
    .success();
    run.json()["output"].clone()
}

/// The `failure` of the last `plugin_failed` event in the log.
fn last_failure(home: &Path) -> Value {
    events(home)
        .into_iter()
        .rev()
        .find_map(|e| e["event"].get("plugin_failed").cloned())
        .expect("a plugin_failed event")["failure"]
        .clone()
}

#[test]
fn every_bound_fails_the_bad_task_while_a_good_task_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let http = Http::start();
    let abuse = stage_abuse(dir.path(), http.port);
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&plugin_dist().join("hello_world/plugin.toml")),
            "--grant",
            "interface:log",
        ],
    )
    .success();
    let host = format!("host:localhost:{}", http.port);
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&abuse),
            "--grant",
            "interface:log",
            "--grant",
            "interface:kv",
            "--grant",
            "interface:events",
            "--grant",
            "interface:http",
            "--grant",
            &host,
            "--grant",
            "dir:/data",
        ],
    )
    .success();
    let _kernel = Kernel::start(&home, &[]);
    let data = abuse.parent().expect("folder").join("data");

    // Each case: the bad call, the kind it must fail with, and a control
    // under the bound (which also keeps the plugin out of quarantine).
    let url = format!("http://localhost:{}/", http.port);
    let cases: Vec<(&str, Value, &str, Value)> = vec![
        (
            "emit_flood",
            json!({"events": 100, "bytes": 1_000_000, "spin": true}),
            "emit_limit",
            json!({"events": 2, "bytes": 100}),
        ),
        (
            "emit_flood",
            json!({"events": 100, "bytes": 4000, "spin": true}),
            "emit_limit",
            json!({"events": 10, "bytes": 4000}),
        ),
        (
            "kv_fill",
            json!({"keys": 1000, "value_bytes": 1000, "spin": true}),
            "kv_limit",
            json!({"keys": 10, "value_bytes": 1000}),
        ),
        (
            "open_files",
            json!({"path": "/data/inside.txt", "count": 100_000, "spin": true}),
            "handle_limit",
            json!({"path": "/data/inside.txt", "count": 5}),
        ),
        (
            "write_bytes",
            json!({"path": "/data/big.bin", "bytes": 100 << 20, "spin": true}),
            "write_limit",
            json!({"path": "/data/small.bin", "bytes": 1000}),
        ),
        (
            "stdout_flood",
            json!({"bytes": 10 << 20, "spin": true}),
            "output_limit",
            json!({"bytes": 1000}),
        ),
        (
            "output",
            json!({"bytes": 1_000_000}),
            "output_limit",
            json!({"bytes": 1000}),
        ),
        (
            "grow",
            json!({"mib": 1000}),
            "memory_limit",
            json!({"mib": 8}),
        ),
        ("spin", json!({}), "timeout", json!({"x": 1})),
        ("http_get", json!({"url": url}), "refused", json!({})),
    ];
    for (function, bad, kind, good) in cases {
        let run = bad_beside_good(&home, function, bad.clone());
        let line = run.error_line(1);
        assert!(line.contains(kind), "{function} {bad}: {run:?}");
        assert_eq!(
            last_failure(&home)["kind"],
            kind,
            "{function} {bad}: recorded"
        );
        let control_function = if function == "spin" || function == "http_get" {
            "echo"
        } else {
            function
        };
        control(&home, control_function, good);
    }

    // The bounds held on the disk and the log too.
    let big = std::fs::metadata(data.join("big.bin"))
        .expect("big.bin")
        .len();
    assert!(big <= 1 << 20, "no byte past the write quota: {big}");
    let all = events(&home);
    let emitted = all
        .iter()
        .filter(|e| e["event"].get("plugin_emitted").is_some())
        .count();
    assert_eq!(emitted, 12, "only the controls' events were stored");
    let denied: Vec<&Value> = all
        .iter()
        .filter_map(|e| e["event"].get("plugin_permission_denied"))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        denied[0]["reason"], "resolves to no global or granted address",
        "{denied:?}"
    );
    assert_eq!(
        http.accepted.load(Ordering::SeqCst),
        0,
        "a name that resolves to loopback is not reached"
    );
}
