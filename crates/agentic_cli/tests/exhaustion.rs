//! The resource-exhaustion suite through the real binary: on a `lion run`
//! kernel, a misbehaving plugin's task floods one resource after another
//! (events, the key-value store, file handles, the disk, stdout, output,
//! memory, CPU, the network), and while it runs a good task is submitted
//! and must succeed. Each bad task fails with the bound's kind, recorded in
//! the log; a positive control under each bound succeeds.
//!
//! That the good task ran while the bad call was in flight is shown from
//! the log, not assumed: when the good task has completed, the bad call's
//! `plugin_invoked` is in the log and its outcome is not. To keep it in
//! flight without sleeping, each bad call (but the timeout's) hits its
//! bound and then waits on an HTTP request to a gate the test holds open
//! (`hold`), which the test answers once the good task is done.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{Value, json};
use support::*;

/// The abuse plugin's limits here: small enough to reach quickly, and a
/// timeout (the bound `spin` hits, which no gate can hold) far longer than
/// a good task takes to run beside a spinning one, even on a loaded host.
const LIMITS: &str = "memory_mib = 32
timeout_ms = 30000
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
/// `localhost:PORT` and `127.0.0.1:GATE`; returns the manifest.
fn stage_abuse(dir: &Path, port: u16, gate: u16) -> PathBuf {
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
            "{interfaces}\nhosts = [\"localhost:{port}\", \"127.0.0.1:{gate}\"]\n\
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

/// What the gate holds: the requests it has not answered, and whether the
/// bad task ended (so a bad call that never reached the gate fails the
/// test rather than hanging it).
#[derive(Default)]
struct Held {
    sockets: Vec<std::net::TcpStream>,
    bad_done: bool,
}

/// A TCP listener on 127.0.0.1 that holds every HTTP request it gets
/// until the test releases them.
struct Gate {
    port: u16,
    held: Arc<(Mutex<Held>, Condvar)>,
}

impl Gate {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held: Arc<(Mutex<Held>, Condvar)> = Arc::default();
        let state = held.clone();
        std::thread::spawn(move || {
            for mut socket in listener.incoming().map_while(Result::ok) {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf);
                let (lock, changed) = &*state;
                lock.lock().expect("gate").sockets.push(socket);
                changed.notify_all();
            }
        });
        Self { port, held }
    }

    /// The URL a bad call waits on.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hold", self.port)
    }

    /// Waits until a request is held; false if the bad task ended first.
    fn wait_held(&self) -> bool {
        let (lock, changed) = &*self.held;
        let held = changed
            .wait_while(lock.lock().expect("gate"), |h| {
                h.sockets.is_empty() && !h.bad_done
            })
            .expect("gate");
        !held.sockets.is_empty()
    }

    /// Notes that the bad task ended (from its thread).
    fn bad_done(held: &(Mutex<Held>, Condvar)) {
        held.0.lock().expect("gate").bad_done = true;
        held.1.notify_all();
    }

    /// Answers every held request.
    fn release(&self) {
        let mut held = self.held.0.lock().expect("gate");
        for mut socket in held.sockets.drain(..) {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    }

    /// Forgets the last bad task, before the next one starts (its thread
    /// has been joined, so it cannot mark itself done after this).
    fn arm(&self) {
        self.held.0.lock().expect("gate").bad_done = false;
    }
}

/// The sequence number of the newest event.
fn head_seq(home: &Path) -> u64 {
    events(home)
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

/// Runs a bad task (`function` of the abuse plugin with `input`); once its
/// call is in flight (held at the gate, or, for a call without `hold`, its
/// `plugin_invoked` in the log), submits a good `hello_world` task, which
/// must succeed while the bad call is still in flight (checked in the
/// log); then releases the gate and returns the bad task's run.
fn bad_beside_good(home: &Path, gate: &Gate, function: &str, input: Value) -> Run {
    gate.arm();
    let from = head_seq(home) + 1;
    let holds = input.get("hold").is_some();
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
        let held = gate.held.clone();
        std::thread::spawn(move || {
            let run = lion_run(
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
            );
            Gate::bad_done(&held);
            run
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
    // A holding call has hit its bound and waits at the gate.
    if holds {
        assert!(
            gate.wait_held(),
            "{function}: the bad task ended before it reached the gate"
        );
    }
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
    // The overlap, from the log: the good task is done, the bad call was
    // invoked and has no outcome yet.
    let log = events(home);
    let since: Vec<&Value> = log
        .iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|seq| seq >= from))
        .map(|e| &e["event"])
        .collect();
    let invoked = since
        .iter()
        .find_map(|e| {
            let i = e.get("plugin_invoked")?;
            (i["name"] == "abuse").then(|| i["call_id"].clone())
        })
        .unwrap_or_else(|| panic!("{function}: the bad call was not invoked: {since:?}"));
    let ended = since.iter().any(|e| {
        ["plugin_succeeded", "plugin_failed"]
            .iter()
            .any(|k| e.get(*k).is_some_and(|o| o["call_id"] == invoked))
    });
    assert!(
        !ended,
        "{function}: the bad call had ended before the good task completed"
    );
    gate.release();
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
    let gate = Gate::start();
    let abuse = stage_abuse(dir.path(), http.port, gate.port);
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
    let gate_host = format!("host:127.0.0.1:{}", gate.port);
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
            &gate_host,
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
    let hold = gate.url();
    let cases: Vec<(&str, Value, &str, Value)> = vec![
        (
            "emit_flood",
            json!({"events": 100, "bytes": 1_000_000, "hold": hold}),
            "emit_limit",
            json!({"events": 2, "bytes": 100}),
        ),
        (
            "emit_flood",
            json!({"events": 100, "bytes": 4000, "hold": hold}),
            "emit_limit",
            json!({"events": 10, "bytes": 4000}),
        ),
        (
            "kv_fill",
            json!({"keys": 1000, "value_bytes": 1000, "hold": hold}),
            "kv_limit",
            json!({"keys": 10, "value_bytes": 1000}),
        ),
        (
            "open_files",
            json!({"path": "/data/inside.txt", "count": 100_000, "hold": hold}),
            "handle_limit",
            json!({"path": "/data/inside.txt", "count": 5}),
        ),
        (
            "write_bytes",
            json!({"path": "/data/big.bin", "bytes": 100 << 20, "hold": hold}),
            "write_limit",
            json!({"path": "/data/small.bin", "bytes": 1000}),
        ),
        (
            "stdout_flood",
            json!({"bytes": 10 << 20, "hold": hold}),
            "output_limit",
            json!({"bytes": 1000}),
        ),
        (
            "output",
            json!({"bytes": 1_000_000, "hold": hold}),
            "output_limit",
            json!({"bytes": 1000}),
        ),
        (
            "grow",
            json!({"mib": 1000, "hold": hold}),
            "memory_limit",
            json!({"mib": 8}),
        ),
        ("spin", json!({}), "timeout", json!({"x": 1})),
        (
            "http_get",
            json!({"url": url, "hold": hold}),
            "refused",
            json!({}),
        ),
    ];
    for (function, bad, kind, good) in cases {
        let run = bad_beside_good(&home, &gate, function, bad.clone());
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

/// Every limit a manifest may set, by name (`fuel` aside).
const LIMIT_NAMES: [&str; 12] = [
    "memory_mib",
    "timeout_ms",
    "max_output_bytes",
    "max_input_bytes",
    "max_concurrency",
    "max_emit_bytes",
    "max_emit_total_bytes",
    "max_kv_total_bytes",
    "max_kv_keys",
    "max_open_handles",
    "max_write_bytes",
    "max_dir_bytes",
];

/// Stages `hello_world` in `dir/hello` with `extra` added to its
/// `[limits]`; returns the manifest.
fn stage_hello(dir: &Path, extra: &str) -> PathBuf {
    let staged = plugin_dist().join("hello_world");
    let folder = dir.join("hello");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::copy(
        staged.join("hello_world.wasm"),
        folder.join("hello_world.wasm"),
    )
    .expect("copy");
    let text = std::fs::read_to_string(staged.join("plugin.toml")).expect("manifest");
    assert!(text.contains("[limits]\n"), "the staged manifest changed");
    let manifest = folder.join("plugin.toml");
    std::fs::write(
        &manifest,
        text.replace("[limits]\n", &format!("[limits]\n{extra}\n")),
    )
    .expect("write manifest");
    manifest
}

#[test]
fn a_limit_above_its_ceiling_is_refused_and_install_and_info_show_every_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["plugin", "list"]).success();
    let before = event_kinds(&home);
    // The attack the ceilings stop: a terabyte per event, restoring the
    // 100 x 20 MB emit flood.
    let hostile = stage_hello(
        &dir.path().join("hostile"),
        "max_emit_bytes = 1000000000000",
    );
    let run = lion_run(
        &home,
        &[
            "plugin",
            "install",
            path(&hostile),
            "--grant",
            "interface:log",
        ],
    );
    assert_ne!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr
            .contains("limits.max_emit_bytes: 1000000000000 is above lion's ceiling of 1048576"),
        "{run:?}"
    );
    assert_eq!(event_kinds(&home), before, "nothing was recorded");

    // At the ceiling: installed, and every limit is shown.
    let fine = stage_hello(&dir.path().join("fine"), "max_emit_bytes = 1048576");
    let run = lion_run(
        &home,
        &["plugin", "install", path(&fine), "--grant", "interface:log"],
    )
    .success();
    let info = lion_run(&home, &["plugin", "info", "hello_world"]).success();
    for out in [&run.stdout, &info.stdout] {
        let limits = out
            .lines()
            .find(|l| l.trim_start().starts_with("limits:"))
            .unwrap_or_else(|| panic!("no limits line: {out}"));
        for name in LIMIT_NAMES {
            assert!(limits.contains(&format!(" {name}=")), "{name}: {limits}");
        }
        assert!(limits.contains(" max_emit_bytes=1048576 "), "{limits}");
        assert!(limits.contains(" timeout_ms=2000 "), "{limits}");
        assert!(limits.contains(" fuel=unlimited"), "{limits}");
    }
}
