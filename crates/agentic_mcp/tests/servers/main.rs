//! The abuse test server (`abuse_server.py`) checked on its own, unsandboxed:
//! it speaks enough MCP, its harmless cases report what really happened (so
//! the sandboxed suite's "refused" results mean something), and it breaks the
//! protocol when told to. The raw JSON-RPC lines here are test input for a
//! test server; lion itself speaks MCP through rmcp.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/abuse_server.py");

/// The cases the sandbox abuse suite relies on.
const EXPECTED_CASES: &[&str] = &[
    "fork_bomb",
    "cpu_spin",
    "memory_bomb",
    "fill_disk",
    "open_files",
    "read",
    "write",
    "list_dir",
    "dotdot_escape",
    "symlink_escape",
    "tcp_connect",
    "udp_send",
    "dns",
    "abstract_unix",
    "ptrace",
    "kill_all",
    "daemon",
    "setuid_exec",
    "io_uring",
    "bpf",
    "keyctl",
    "unshare",
    "mount",
    "stdout_flood",
    "stderr_flood",
    "huge_line",
    "malformed",
    "exit",
    "env",
    "sleep",
    "roots",
    "identity",
];

/// The real interpreter (python3 on PATH may be a shim that needs its own
/// environment; the server runs with a cleared one).
fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 is on PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(flags: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(python())
            .arg(SERVER)
            .args(flags)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, msg: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next raw line (without its newline); `None` at EOF.
    async fn line(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let n = self.stdout.read_until(b'\n', &mut buf).await.unwrap();
        if n == 0 {
            return None;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Some(buf)
    }

    async fn message(&mut self) -> Value {
        let line = self.line().await.expect("a message, not EOF");
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
    }

    async fn initialize(&mut self) {
        self.send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {"roots": {}},
            "clientInfo": {"name": "abuse-server-test", "version": "0"}}}),
        )
        .await;
        let r = self.message().await;
        assert_eq!(r["id"], 0);
        assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(r["result"]["serverInfo"]["name"], "lion-abuse-server");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    async fn call_start(&mut self, id: u64, tool: &str, args: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}))
            .await;
    }

    /// Calls `abuse` with `args` and returns the structured report.
    async fn abuse(&mut self, id: u64, args: Value) -> Value {
        self.call_start(id, "abuse", args).await;
        let r = self.message().await;
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["result"]["isError"], false, "{r}");
        r["result"]["structuredContent"].clone()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn it_lists_a_good_tool_and_every_abuse_case() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;
    s.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    let r = s.message().await;
    let tools = r["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["good", "abuse"]);
    let cases: Vec<&str> = tools[1]["inputSchema"]["properties"]["case"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for case in EXPECTED_CASES {
        assert!(cases.contains(case), "missing case {case}");
    }
    assert_eq!(cases.len(), EXPECTED_CASES.len(), "{cases:?}");

    s.call_start(2, "good", json!({"text": "hi"})).await;
    let r = s.message().await;
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"ok": true, "echo": "hi"})
    );
    assert_eq!(r["result"]["isError"], false);
    // An unknown case is the tool's error, not a crash.
    s.call_start(3, "abuse", json!({"case": "nope"})).await;
    let r = s.message().await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    s.send(json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}))
        .await;
    assert_eq!(
        s.message().await,
        json!({"jsonrpc": "2.0", "id": 4, "result": {}})
    );
}

#[tokio::test]
async fn file_cases_report_what_the_os_did() {
    let dir = tempfile::tempdir().unwrap();
    let granted = dir.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"hello").unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let mut s = Server::start(&[], &[]);
    s.initialize().await;

    let r = s
        .abuse(1, json!({"case": "read", "path": p(&outside)}))
        .await;
    assert_eq!(
        (r["ok"].clone(), r["bytes"].clone()),
        (json!(true), json!(5)),
        "{r}"
    );
    assert_eq!(r["sha256"], sha256_hex(b"hello"));
    let r = s
        .abuse(
            2,
            json!({"case": "read", "path": p(&dir.path().join("missing"))}),
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["errno"].clone()),
        (json!(false), json!("ENOENT")),
        "{r}"
    );

    let r = s
        .abuse(
            3,
            json!({"case": "write", "path": p(&granted.join("w.txt")), "data": "abc"}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(std::fs::read(granted.join("w.txt")).unwrap(), b"abc");
    let r = s
        .abuse(
            4,
            json!({"case": "write", "path": p(&dir.path().join("no/such/dir/x"))}),
        )
        .await;
    assert_eq!(r["errno"], "ENOENT", "{r}");

    let r = s
        .abuse(5, json!({"case": "list_dir", "path": p(&granted)}))
        .await;
    assert_eq!(r["names"], json!(["w.txt"]), "{r}");

    // Unsandboxed, the escapes succeed: the cases really walk out.
    let r = s
        .abuse(
            6,
            json!({"case": "dotdot_escape", "dir": p(&granted), "rel": "../outside.txt"}),
        )
        .await;
    assert_eq!(r["sha256"], sha256_hex(b"hello"), "{r}");
    let r = s
        .abuse(
            7,
            json!({"case": "symlink_escape", "dir": p(&granted), "target": p(&outside)}),
        )
        .await;
    assert_eq!(
        (r["symlink_created"].clone(), r["sha256"].clone()),
        (json!(true), json!(sha256_hex(b"hello"))),
        "{r}"
    );
    assert!(
        !granted.join("abuse-escape-link").exists(),
        "the link is removed"
    );

    let r = s.abuse(8, json!({"case": "open_files", "max": 100})).await;
    assert_eq!(
        (r["ok"].clone(), r["opened"].clone()),
        (json!(true), json!(100)),
        "{r}"
    );

    // The machine-harming cases do nothing unless armed.
    for (id, case) in [
        (9, "fork_bomb"),
        (10, "memory_bomb"),
        (11, "fill_disk"),
        (12, "kill_all"),
    ] {
        let r = s
            .abuse(id, json!({"case": case, "path": p(&granted)}))
            .await;
        assert_eq!(r["refused"], "not armed", "{r}");
    }
    assert_eq!(
        std::fs::read_dir(&granted).unwrap().count(),
        1,
        "fill_disk wrote nothing"
    );
}

#[tokio::test]
async fn armed_fill_disk_and_memory_bomb_stop_where_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&["--armed"], &[]);
    s.initialize().await;
    let r = s
        .abuse(
            1,
            json!({"case": "fill_disk", "path": dir.path().to_str().unwrap(), "max_mb": 2}),
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["written_bytes"].clone()),
        (json!(true), json!(2 << 20)),
        "{r}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the file is removed"
    );
    let r = s
        .abuse(
            2,
            json!({"case": "memory_bomb", "chunk_mb": 1, "max_mb": 4}),
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["allocated_mb"].clone()),
        (json!(true), json!(4)),
        "{r}"
    );
    let r = s
        .abuse(3, json!({"case": "fork_bomb", "max": 3, "hold": 60}))
        .await;
    assert_eq!(
        (r["ok"].clone(), r["forked"].clone()),
        (json!(true), json!(3)),
        "{r}"
    );
}

#[tokio::test]
async fn network_cases_reach_real_listeners_unsandboxed() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        let (mut conn, _) = tcp.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        conn.write_all(b"pong").await.unwrap();
        got
    });
    let r = s
        .abuse(
            1,
            json!({"case": "tcp_connect", "host": "127.0.0.1", "port": port, "data": "ping"}),
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["reply"].clone()),
        (json!(true), json!("pong")),
        "{r}"
    );
    assert_eq!(accept.await.unwrap(), b"ping");

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = udp.local_addr().unwrap().port();
    let r = s
        .abuse(
            2,
            json!({"case": "udp_send", "host": "127.0.0.1", "port": port, "data": "dgram"}),
        )
        .await;
    assert_eq!(r["sent"], 5, "{r}");
    let mut buf = [0u8; 16];
    let n = udp.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"dgram");

    let r = s
        .abuse(3, json!({"case": "dns", "name": "localhost"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = s
        .abuse(4, json!({"case": "dns", "name": "no-such-host.invalid"}))
        .await;
    assert_eq!(r["ok"], false, "{r}");

    // An abstract Unix socket opened here is reachable (the sandbox must stop that).
    let name = format!("lion-abuse-test-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            &name,
        )
        .unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let r = s
        .abuse(5, json!({"case": "abstract_unix", "name": name}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    listener.accept().unwrap();
    let r = s
        .abuse(
            6,
            json!({"case": "abstract_unix", "name": format!("{name}-absent")}),
        )
        .await;
    assert_eq!(r["errno"], "ECONNREFUSED", "{r}");
}

#[tokio::test]
async fn env_reports_names_and_a_hash_never_the_value() {
    let mut s = Server::start(&[], &[("LION_TEST_SECRET", "s3cret-value")]);
    s.initialize().await;
    s.call_start(
        1,
        "abuse",
        json!({"case": "env", "sha256_of": "LION_TEST_SECRET"}),
    )
    .await;
    let line = s.line().await.unwrap();
    assert!(!String::from_utf8_lossy(&line).contains("s3cret-value"));
    let r: Value = serde_json::from_slice(&line).unwrap();
    let report = &r["result"]["structuredContent"];
    // Python itself adds LC_CTYPE when the locale is C (PEP 538 coercion);
    // nothing else from outside.
    assert_eq!(
        report["names"],
        json!(["LC_CTYPE", "LION_TEST_SECRET"]),
        "{r}"
    );
    assert_eq!(report["sha256"], sha256_hex(b"s3cret-value"));
}

#[tokio::test]
async fn syscall_cases_report_a_result_or_an_errno() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;
    let mut target = Command::new("sleep")
        .arg("600")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = target.id().unwrap();
    for (id, case, syscall) in [
        (1, "io_uring", "io_uring_setup"),
        (2, "bpf", "bpf"),
        (3, "keyctl", "keyctl"),
        (4, "unshare", "unshare"),
        (5, "mount", "mount"),
        (6, "ptrace", "ptrace"),
    ] {
        let r = s.abuse(id, json!({"case": case, "pid": pid})).await;
        assert_eq!(r["syscall"], syscall, "{r}");
        let answered = r["ok"] == true && r["ret"].is_i64()
            || r["ok"] == false && r["errno"].as_str().is_some_and(|e| e.starts_with('E'));
        assert!(answered, "{r}");
    }
    // The setuid case says whether the binary is setuid and what it did.
    let r = s
        .abuse(
            7,
            json!({"case": "setuid_exec", "path": "/usr/bin/passwd", "args": ["-S"]}),
        )
        .await;
    assert_eq!(r["setuid_bit"], true, "{r}");
    assert!(r["returncode"].is_i64(), "{r}");
    target.kill().await.unwrap();
}

#[tokio::test]
async fn a_good_call_answers_while_another_call_sleeps() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;
    s.call_start(1, "abuse", json!({"case": "sleep", "seconds": 3600}))
        .await;
    s.call_start(2, "good", json!({"text": "still here"})).await;
    let r = s.message().await;
    assert_eq!(r["id"], 2, "{r}");
    assert_eq!(r["result"]["structuredContent"]["echo"], "still here");
}

#[tokio::test]
async fn roots_asks_the_client() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;
    s.call_start(1, "abuse", json!({"case": "roots"})).await;
    let req = s.message().await;
    assert_eq!(req["method"], "roots/list", "{req}");
    let roots = json!([{"uri": "file:///granted", "name": "granted"}]);
    s.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {"roots": roots}}))
        .await;
    let r = s.message().await;
    assert_eq!(r["id"], 1, "{r}");
    assert_eq!(r["result"]["structuredContent"]["roots"], roots);
}

#[tokio::test]
async fn protocol_breaking_cases_break_it() {
    let mut s = Server::start(&[], &[]);
    s.initialize().await;

    s.call_start(1, "abuse", json!({"case": "stdout_flood", "bytes": 5000}))
        .await;
    let mut garbage = 0;
    let r = loop {
        let line = s.line().await.unwrap();
        match serde_json::from_slice::<Value>(&line) {
            Ok(v) => break v,
            Err(_) => garbage += line.len() + 1,
        }
    };
    // 5000 bytes of garbage, then the newline that ends its last line.
    assert_eq!(garbage, 5001);
    assert_eq!(r["result"]["structuredContent"]["flooded_bytes"], 5000);

    s.call_start(2, "abuse", json!({"case": "huge_line", "mb": 3}))
        .await;
    let line = s.line().await.unwrap();
    assert!(line.len() > 3 << 20);
    let r: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(r["id"], 2);
    assert_eq!(
        r["result"]["content"][0]["text"].as_str().unwrap().len(),
        3 << 20
    );

    for (id, kind) in [(3, "truncated"), (4, "not_json"), (5, "binary")] {
        s.call_start(id, "abuse", json!({"case": "malformed", "kind": kind}))
            .await;
        let line = s.line().await.unwrap();
        assert!(
            serde_json::from_slice::<Value>(&line).is_err(),
            "{kind}: {}",
            String::from_utf8_lossy(&line)
        );
    }
    s.call_start(
        6,
        "abuse",
        json!({"case": "malformed", "kind": "wrong_version"}),
    )
    .await;
    assert_eq!(s.message().await["jsonrpc"], "1.0");
    s.call_start(7, "abuse", json!({"case": "malformed", "kind": "wrong_id"}))
        .await;
    assert!(
        s.message().await["id"]
            .as_str()
            .unwrap()
            .starts_with("never-asked-")
    );

    // Still alive after all that.
    s.call_start(8, "good", json!({"text": "ok"})).await;
    assert_eq!(s.message().await["id"], 8);

    s.call_start(9, "abuse", json!({"case": "stderr_flood", "bytes": 3000}))
        .await;
    assert_eq!(
        s.message().await["result"]["structuredContent"]["stderr_bytes"],
        3000
    );

    // Exit mid-call: no answer, the exit code asked for, the last words on stderr.
    s.call_start(
        10,
        "abuse",
        json!({"case": "exit", "code": 7, "message": "dying now"}),
    )
    .await;
    assert!(s.line().await.is_none());
    let mut stderr = String::new();
    s.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(stderr.len(), 3000 + "dying now\n".len(), "{stderr}");
    // 3000 bytes end mid-line; the message follows them.
    assert!(stderr.ends_with("EEEdying now\n"), "{stderr}");
    assert_eq!(s.child.wait().await.unwrap().code(), Some(7));
}

#[tokio::test]
async fn never_initialize_answers_nothing() {
    let mut s = Server::start(&["--never-initialize"], &[]);
    s.send(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}))
        .await;
    s.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    drop(s.stdin.take());
    assert!(s.line().await.is_none(), "no answer at all");
    assert!(s.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn a_daemon_outlives_the_server_when_nothing_contains_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("heartbeat");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut s = Server::start(&[], &[]);
    s.initialize().await;
    let r = s.abuse(1, json!({"case": "daemon", "heartbeat": fifo.to_str().unwrap(), "beats": 2, "interval": 0})).await;
    let daemon = r["daemon_pid"].as_u64().unwrap();
    assert_ne!(u64::from(s.child.id().unwrap()), daemon);
    // The server goes away; the daemon's heartbeats still arrive. The FIFO
    // is opened read-write, so it never reports EOF between two beats and no
    // beat is lost; the daemon's first open waits for this one, so both
    // beats are written after the server exited. No polling.
    drop(s.stdin.take());
    s.child.wait().await.unwrap();
    let beats = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let mut lines = std::io::BufReader::new(pipe).lines();
        [
            lines.next().unwrap().unwrap(),
            lines.next().unwrap().unwrap(),
        ]
    })
    .await
    .unwrap();
    assert!(
        beats[0].starts_with("1 ") && beats[1].starts_with("2 "),
        "{beats:?}"
    );
}
