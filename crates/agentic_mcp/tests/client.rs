//! The MCP client session against peers that misbehave on purpose (tiny
//! in-test peers over `tokio::io::duplex` that write raw lines) and against
//! real servers nobody here wrote, installed by the tests from npm and PyPI
//! (cached under `target/mcp-servers/`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use agentic_mcp::names::NameTable;
use agentic_mcp::output::{self, ToolError};
use agentic_mcp::session::{
    DEFAULT_MAX_MESSAGE_BYTES, MAX_INSTRUCTIONS_BYTES, MAX_SERVER_NAME_BYTES, MAX_TOOL_PAGES,
    MAX_TOOLS, McpSession, SessionConfig, SessionError,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

/// A deadline long enough that no healthy exchange on this machine comes
/// near it: a test that should end otherwise but waits this long fails.
const GENEROUS: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Deliberately broken peers over an in-memory pipe
// ---------------------------------------------------------------------------

/// The server end of an in-memory pipe: reads the client's lines, writes
/// whatever the test says.
struct Peer {
    lines: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    w: WriteHalf<DuplexStream>,
}

impl Peer {
    async fn recv(&mut self) -> Value {
        let line = self
            .lines
            .next_line()
            .await
            .expect("read from client")
            .expect("client closed its output");
        serde_json::from_str(&line).expect("the client sends JSON")
    }

    async fn send(&mut self, v: Value) {
        self.raw(format!("{v}\n").as_bytes()).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write to client");
        self.w.flush().await.expect("flush to client");
    }

    /// Answers `initialize` like a minimal server and takes the
    /// `initialized` notification; returns the client's `initialize` params.
    async fn initialize(&mut self) -> Value {
        let req = self.recv().await;
        assert_eq!(req["method"], "initialize");
        self.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "broken-peer", "version": "0.0.1"}
        }}))
        .await;
        let note = self.recv().await;
        assert_eq!(note["method"], "notifications/initialized");
        req["params"].clone()
    }
}

/// A client reader/writer pair and the peer at the other end.
fn pipe(capacity: usize) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>, Peer) {
    let (client, server) = tokio::io::duplex(capacity);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    (
        cr,
        cw,
        Peer {
            lines: BufReader::new(sr).lines(),
            w: sw,
        },
    )
}

fn config() -> SessionConfig {
    SessionConfig {
        initialize_deadline: GENEROUS,
        list_deadline: GENEROUS,
        ..SessionConfig::default()
    }
}

async fn connected(peer_task: impl FnOnce(Peer) -> tokio::task::JoinHandle<()>) -> McpSession {
    let (r, w, peer) = pipe(64 << 10);
    let _task = peer_task(peer);
    McpSession::connect(r, w, config()).await.expect("connect")
}

#[tokio::test]
async fn a_server_that_never_answers_initialize_fails_naming_the_deadline() {
    let (r, w, mut peer) = pipe(64 << 10);
    // The peer reads the request and never answers (it stays open).
    let seen = tokio::spawn(async move {
        let req = peer.recv().await;
        let method = req["method"].clone();
        std::future::pending::<()>().await;
        drop(peer);
        method
    });
    let deadline = Duration::from_millis(300);
    let cfg = SessionConfig {
        initialize_deadline: deadline,
        ..config()
    };
    let err = McpSession::connect(r, w, cfg).await.unwrap_err();
    assert!(
        matches!(err, SessionError::InitializeTimeout { deadline: d } if d == deadline),
        "{err}"
    );
    assert!(err.to_string().contains("300ms"), "{err}");
    seen.abort();
}

#[tokio::test]
async fn a_malformed_line_ends_the_handshake_with_a_typed_error() {
    let (r, w, mut peer) = pipe(64 << 10);
    let _task = tokio::spawn(async move {
        peer.recv().await;
        peer.raw(b"this is not JSON-RPC\n").await;
        std::future::pending::<()>().await;
    });
    // rmcp alone ignores unparsable lines, so without the guard this would
    // wait the whole (generous) deadline and fail as a timeout.
    let err = McpSession::connect(r, w, config()).await.unwrap_err();
    assert!(matches!(err, SessionError::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn malformed_json_mid_call_ends_the_session() {
    for bad in [
        &b"{\"jsonrpc\":\"2.0\",\"id\":\n"[..],
        b"[1,2,3]\n",
        b"{\"hello\":1}\n",
    ] {
        let session = connected(|mut peer| {
            tokio::spawn(async move {
                peer.initialize().await;
                let call = peer.recv().await;
                assert_eq!(call["method"], "tools/call");
                peer.raw(bad).await;
                std::future::pending::<()>().await;
            })
        })
        .await;
        let err = session
            .call_tool("anything", json!({}), GENEROUS)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Malformed { .. }), "{err}");
        // The session is over: a later request fails at once, typed.
        let again = session.list_tools().await.unwrap_err();
        assert!(matches!(again, SessionError::Malformed { .. }), "{again}");
    }
}

#[tokio::test]
async fn a_100_mb_line_ends_the_session_without_being_read_whole() {
    const LINE: usize = 100 << 20;
    const CHUNK: usize = 1 << 20;
    let (r, w, mut peer) = pipe(64 << 10);
    let written = tokio::spawn(async move {
        peer.initialize().await;
        peer.recv().await;
        // One 100 MB message: a JSON string that never ends in time.
        let mut sent = 0usize;
        let mut chunk = vec![b'x'; CHUNK];
        chunk[..9].copy_from_slice(b"{\"big\":\"\"");
        while sent < LINE {
            match peer.w.write(&chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n,
            }
            chunk.fill(b'x');
        }
        sent
    });
    let session = McpSession::connect(r, w, config()).await.unwrap();
    let err = session
        .call_tool("flood", json!({}), GENEROUS)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::MessageTooLarge { limit } if limit == DEFAULT_MAX_MESSAGE_BYTES),
        "{err}"
    );
    session.close().await;
    let sent = written.await.unwrap();
    // The client stopped reading once past the limit: the peer could not
    // hand it the rest.
    assert!(
        sent < 2 * DEFAULT_MAX_MESSAGE_BYTES,
        "the client took {sent} bytes of a {LINE}-byte line"
    );
}

#[tokio::test]
async fn a_server_exiting_mid_call_is_a_typed_error_not_a_hang() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            peer.recv().await;
            drop(peer);
        })
    })
    .await;
    let err = session
        .call_tool("anything", json!({"x": 1}), GENEROUS)
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::ServerGone), "{err}");
    let again = session.list_tools().await.unwrap_err();
    assert!(matches!(again, SessionError::ServerGone), "{again}");
}

#[tokio::test]
async fn roots_are_offered_and_sampling_and_elicitation_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, w, mut peer) = pipe(64 << 10);
    let peer_side = tokio::spawn(async move {
        let init = peer.initialize().await;
        let mut answers = Vec::new();
        for (id, method, params) in [
            ("r1", "roots/list", json!({})),
            (
                "s1",
                "sampling/createMessage",
                json!({"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 5}),
            ),
            (
                "e1",
                "elicitation/create",
                json!({"mode": "form", "message": "name?", "requestedSchema": {"type": "object", "properties": {}}}),
            ),
            ("c1", "vendor/whatever", json!({})),
        ] {
            peer.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
                .await;
            let answer = peer.recv().await;
            assert_eq!(answer["id"], id, "{answer}");
            answers.push(answer);
        }
        (init, answers)
    });
    let cfg = SessionConfig {
        roots: vec![dir.path().to_path_buf()],
        ..config()
    };
    let session = McpSession::connect(r, w, cfg).await.unwrap();
    let (init, answers) = peer_side.await.unwrap();
    let caps = &init["capabilities"];
    assert!(caps.get("roots").is_some(), "{caps}");
    assert!(caps.get("sampling").is_none(), "{caps}");
    assert!(caps.get("elicitation").is_none(), "{caps}");
    assert_eq!(init["protocolVersion"], "2025-11-25");

    let url = url::Url::from_directory_path(dir.path())
        .unwrap()
        .to_string();
    assert_eq!(answers[0]["result"]["roots"][0]["uri"], url.as_str());
    for refused in &answers[1..] {
        assert!(refused.get("result").is_none(), "{refused}");
        assert_eq!(refused["error"]["code"], -32601, "{refused}");
    }
    let (kept, total) = session.refusals();
    let methods: Vec<_> = kept.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "sampling/createMessage",
            "elicitation/create",
            "vendor/whatever"
        ]
    );
    assert_eq!(total, 3);
    assert_eq!(session.server().name, "broken-peer");
    assert_eq!(session.server().protocol_version, "2025-11-25");
}

fn tool(name: &str) -> Value {
    json!({"name": name, "inputSchema": {"type": "object"}})
}

#[tokio::test]
async fn tool_pages_are_followed_to_the_end() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            for (expect_cursor, tools, next) in [
                (Value::Null, vec![tool("a"), tool("b")], json!("p2")),
                (json!("p2"), vec![tool("c")], json!("p3")),
                (json!("p3"), vec![tool("d.e")], Value::Null),
            ] {
                let req = peer.recv().await;
                assert_eq!(req["method"], "tools/list");
                assert_eq!(req["params"]["cursor"], expect_cursor, "{req}");
                let mut result = json!({"tools": tools});
                if !next.is_null() {
                    result["nextCursor"] = next;
                }
                peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": result}))
                    .await;
            }
            std::future::pending::<()>().await;
        })
    })
    .await;
    let tools = session.list_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["a", "b", "c", "d.e"]);
}

#[tokio::test]
async fn endless_tool_pages_are_cut_at_the_page_cap() {
    let (r, w, mut peer) = pipe(64 << 10);
    let pages = tokio::spawn(async move {
        peer.initialize().await;
        let mut served = 0usize;
        loop {
            let Ok(Some(line)) = peer.lines.next_line().await else {
                return served;
            };
            let req: Value = serde_json::from_str(&line).unwrap();
            if req["method"] != "tools/list" {
                continue;
            }
            served += 1;
            let result =
                json!({"tools": [tool(&format!("t{served}"))], "nextCursor": format!("c{served}")});
            if peer
                .w
                .write_all(
                    format!(
                        "{}\n",
                        json!({"jsonrpc": "2.0", "id": req["id"], "result": result})
                    )
                    .as_bytes(),
                )
                .await
                .is_err()
            {
                return served;
            }
        }
    });
    let session = McpSession::connect(r, w, config()).await.unwrap();
    let err = session.list_tools().await.unwrap_err();
    assert!(matches!(err, SessionError::TooManyPages), "{err}");
    session.close().await;
    assert_eq!(pages.await.unwrap(), MAX_TOOL_PAGES);
}

#[tokio::test]
async fn every_listing_asks_the_server_even_when_it_says_cache_me() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            // A list the server says is fresh for an hour, then a longer
            // one, then a failure.
            let req = peer.recv().await;
            peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {
                "tools": [tool("a")], "ttlMs": 3_600_000, "cacheScope": "public"
            }}))
            .await;
            let req = peer.recv().await;
            assert_eq!(req["method"], "tools/list");
            peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {
                "tools": [tool("a"), tool("b")], "ttlMs": 3_600_000
            }}))
            .await;
            let req = peer.recv().await;
            peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "error": {
                "code": -32603, "message": "tools are gone"
            }}))
            .await;
            std::future::pending::<()>().await;
        })
    })
    .await;
    assert_eq!(session.list_tools().await.unwrap().len(), 1);
    assert_eq!(session.list_tools().await.unwrap().len(), 2);
    let err = session.list_tools().await.unwrap_err();
    assert!(
        matches!(&err, SessionError::Server { code: -32603, message, .. } if message == "tools are gone"),
        "{err}"
    );
}

#[tokio::test]
async fn more_tools_than_the_cap_are_refused() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            let req = peer.recv().await;
            let tools: Vec<Value> = (0..=MAX_TOOLS).map(|i| tool(&format!("t{i}"))).collect();
            peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {"tools": tools}}))
                .await;
            std::future::pending::<()>().await;
        })
    })
    .await;
    let err = session.list_tools().await.unwrap_err();
    assert!(matches!(err, SessionError::TooManyTools), "{err}");
}

#[tokio::test]
async fn a_call_past_its_deadline_is_cancelled_on_the_wire() {
    let (r, w, mut peer) = pipe(64 << 10);
    let cancelled = tokio::spawn(async move {
        peer.initialize().await;
        let call = peer.recv().await;
        assert_eq!(call["method"], "tools/call");
        // Never answers; the next thing the client says is the cancel.
        let next = peer.recv().await;
        (call["id"].clone(), next)
    });
    let session = McpSession::connect(r, w, config()).await.unwrap();
    let deadline = Duration::from_millis(200);
    let err = session
        .call_tool("slow", json!({}), deadline)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::Timeout { deadline: d, method } if *d == deadline && method == "tools/call slow"),
        "{err}"
    );
    let (id, next) = cancelled.await.unwrap();
    assert_eq!(next["method"], "notifications/cancelled", "{next}");
    assert_eq!(next["params"]["requestId"], id, "{next}");
}

#[tokio::test]
async fn a_server_gone_before_answering_initialize_is_a_typed_error() {
    let (r, w, mut peer) = pipe(64 << 10);
    let _task = tokio::spawn(async move {
        peer.recv().await;
        drop(peer);
    });
    let err = McpSession::connect(r, w, config()).await.unwrap_err();
    assert!(matches!(err, SessionError::ServerGone), "{err}");
}

#[tokio::test]
async fn an_unknown_protocol_revision_is_refused() {
    let (r, w, mut peer) = pipe(64 << 10);
    let _task = tokio::spawn(async move {
        let req = peer.recv().await;
        peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "protocolVersion": "1999-01-01",
            "capabilities": {},
            "serverInfo": {"name": "old", "version": "1"}
        }}))
        .await;
        std::future::pending::<()>().await;
    });
    let err = McpSession::connect(r, w, config()).await.unwrap_err();
    assert!(
        matches!(&err, SessionError::UnsupportedProtocol(v) if v == "1999-01-01"),
        "{err}"
    );
}

#[tokio::test]
async fn the_servers_self_description_is_cut_to_size() {
    let (r, w, mut peer) = pipe(64 << 10);
    let _task = tokio::spawn(async move {
        let req = peer.recv().await;
        peer.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "n".repeat(100_000), "version": "é".repeat(1000)},
            "instructions": "i".repeat(1 << 20)
        }}))
        .await;
        peer.recv().await;
        std::future::pending::<()>().await;
    });
    let session = McpSession::connect(r, w, config()).await.unwrap();
    let server = session.server();
    assert_eq!(server.protocol_version, "2025-06-18");
    assert_eq!(server.name.len(), MAX_SERVER_NAME_BYTES);
    assert!(
        server.version.len() <= MAX_SERVER_NAME_BYTES
            && server.version.len() >= MAX_SERVER_NAME_BYTES - 1
    );
    assert_eq!(
        server.instructions.as_deref().map(str::len),
        Some(MAX_INSTRUCTIONS_BYTES)
    );
}

#[tokio::test]
async fn a_call_answered_with_the_wrong_shape_is_a_protocol_error() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            let call = peer.recv().await;
            peer.send(json!({"jsonrpc": "2.0", "id": call["id"], "result": {"tools": []}}))
                .await;
            std::future::pending::<()>().await;
        })
    })
    .await;
    let err = session
        .call_tool("t", json!({}), GENEROUS)
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn a_relative_root_is_refused_before_talking_to_the_server() {
    let (r, w, mut peer) = pipe(64 << 10);
    let cfg = SessionConfig {
        roots: vec![PathBuf::from("relative/dir")],
        ..config()
    };
    let err = McpSession::connect(r, w, cfg).await.unwrap_err();
    assert!(
        matches!(&err, SessionError::InvalidRoot(p) if p == Path::new("relative/dir")),
        "{err}"
    );
    // Nothing was sent: the client side is gone without a line.
    assert!(peer.lines.next_line().await.unwrap().is_none());
}

#[tokio::test]
async fn arguments_must_be_an_object() {
    let session = connected(|mut peer| {
        tokio::spawn(async move {
            peer.initialize().await;
            std::future::pending::<()>().await;
        })
    })
    .await;
    let err = session
        .call_tool("t", json!([1]), GENEROUS)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::ArgumentsNotObject("an array")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Real servers, installed from the registries
// ---------------------------------------------------------------------------

/// The pinned `@modelcontextprotocol/server-everything` (npm).
const EVERYTHING: &str = "@modelcontextprotocol/server-everything@2026.8.31";
/// The pinned `mcp-server-time` (PyPI).
const TIME: &str = "mcp-server-time==2026.10.19";

/// Where the tests keep installed servers between runs: `target/mcp-servers`.
fn servers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target dir")
        .join("mcp-servers")
}

/// Runs `cmd` to completion, panicking with its output if it fails.
fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs into `name` under [`servers_dir`] once: into a fresh
/// `name.partial-PID`, renamed when complete, so an interrupted install is
/// never taken for a cached one and two test processes installing at once
/// do not mix their files (the second rename loses and its copy is removed).
fn installed(name: &str, install: impl FnOnce(&Path)) -> PathBuf {
    let dir = servers_dir().join(name);
    if !dir.exists() {
        let partial = servers_dir().join(format!("{name}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).unwrap();
        install(&partial);
        if std::fs::rename(&partial, &dir).is_err() {
            assert!(dir.exists(), "could not move {partial:?} to {dir:?}");
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    dir
}

/// `server-everything`'s entry point, installed without running scripts.
fn everything_js() -> &'static Path {
    static JS: OnceLock<PathBuf> = OnceLock::new();
    JS.get_or_init(|| {
        let dir = installed("everything-2026.8.31", |dir| {
            run(std::process::Command::new("npm")
                .args([
                    "install",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                ])
                .arg(dir)
                .arg(EVERYTHING));
        });
        dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
    })
}

/// The python of a venv holding `mcp-server-time`, wheels only.
fn time_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let dir = installed("time-2026.10.19", |dir| {
            run(std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir));
            run(std::process::Command::new(dir.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--only-binary=:all:",
                TIME,
            ]));
        });
        dir.join("bin/python")
    })
}

/// A server process and the session over its pipes.
struct Running {
    session: McpSession,
    child: tokio::process::Child,
}

async fn start(mut cmd: tokio::process::Command, cfg: SessionConfig) -> Running {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start the server");
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let session = McpSession::connect(stdout, stdin, cfg)
        .await
        .expect("initialize");
    Running { session, child }
}

async fn everything(roots: Vec<PathBuf>) -> Running {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(everything_js()).arg("stdio");
    start(cmd, SessionConfig { roots, ..config() }).await
}

fn text_of(out: &Value) -> String {
    out["content"]
        .as_array()
        .expect("content shape")
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn everything_lists_all_its_tools_with_schemas() {
    let s = everything(vec![]).await;
    let server = s.session.server();
    assert_eq!(server.name, "mcp-servers/everything");
    assert_eq!(server.protocol_version, "2025-11-25");
    let tools = s.session.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "echo",
        "get-sum",
        "get-structured-content",
        "trigger-long-running-operation",
        "get-roots-list",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // It registers these only for clients that offer sampling/elicitation,
    // which lion does not.
    for absent in ["trigger-sampling-request", "trigger-elicitation-request"] {
        assert!(!names.contains(&absent), "{absent} listed: {names:?}");
    }
    let table = NameTable::build(names.iter().copied()).unwrap();
    for t in &tools {
        let schemas = output::function_schemas(t);
        assert_eq!(schemas.input["type"], "object", "{}", t.name);
        jsonschema::validator_for(&schemas.input).unwrap();
        jsonschema::validator_for(&schemas.output).unwrap();
        // Its names are all plain already, so they are kept.
        assert_eq!(table.function_name(&t.name), Some(t.name.as_ref()));
    }
    let structured = tools
        .iter()
        .find(|t| t.name == "get-structured-content")
        .unwrap();
    assert!(structured.output_schema.is_some());
}

#[tokio::test]
async fn everything_echo_structured_content_and_is_error() {
    let s = everything(vec![]).await;
    let result = s
        .session
        .call_tool("echo", json!({"message": "hello lion"}), GENEROUS)
        .await
        .unwrap();
    let out = output::tool_output(result, false, output::DEFAULT_MAX_OUTPUT_BYTES).unwrap();
    assert_eq!(out["content"][0]["type"], "text");
    assert_eq!(text_of(&out), "Echo: hello lion");

    let tools = s.session.list_tools().await.unwrap();
    let structured = tools
        .iter()
        .find(|t| t.name == "get-structured-content")
        .unwrap();
    let result = s
        .session
        .call_tool(
            "get-structured-content",
            json!({"location": "Chicago"}),
            GENEROUS,
        )
        .await
        .unwrap();
    let out = output::tool_output(result, true, output::DEFAULT_MAX_OUTPUT_BYTES).unwrap();
    let schema = output::function_schemas(structured).output;
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&out), "{out} against {schema}");
    assert!(out["temperature"].is_number(), "{out}");

    // A tool it does not have: this server answers with isError too.
    let result = s
        .session
        .call_tool("no-such-tool", json!({}), GENEROUS)
        .await
        .unwrap();
    match output::tool_output(result, false, output::DEFAULT_MAX_OUTPUT_BYTES) {
        Err(ToolError::Reported { text, .. }) => assert!(text.contains("not found"), "{text}"),
        other => panic!("expected a reported tool error, got {other:?}"),
    }

    // Arguments its schema refuses: the server answers with isError.
    let result = s
        .session
        .call_tool("get-sum", json!({"a": "not a number", "b": 2}), GENEROUS)
        .await
        .unwrap();
    match output::tool_output(result, false, output::DEFAULT_MAX_OUTPUT_BYTES) {
        Err(ToolError::Reported { text, truncated }) => {
            assert!(!truncated);
            assert!(text.to_lowercase().contains("invalid"), "{text}");
        }
        other => panic!("expected a reported tool error, got {other:?}"),
    }
}

#[tokio::test]
async fn everything_sees_the_roots_lion_offers() {
    let dir = tempfile::tempdir().unwrap();
    let s = everything(vec![dir.path().to_path_buf()]).await;
    let result = s
        .session
        .call_tool("get-roots-list", json!({}), GENEROUS)
        .await
        .unwrap();
    let out = output::tool_output(result, false, output::DEFAULT_MAX_OUTPUT_BYTES).unwrap();
    let url = url::Url::from_directory_path(dir.path())
        .unwrap()
        .to_string();
    let text = text_of(&out);
    assert!(text.contains("(1 total)"), "{text}");
    assert!(text.contains(&url), "{url} not in {text}");
}

#[tokio::test]
async fn a_long_call_hits_its_deadline_and_the_session_goes_on() {
    let s = everything(vec![]).await;
    let deadline = Duration::from_millis(300);
    let err = s
        .session
        .call_tool(
            "trigger-long-running-operation",
            json!({"duration": 3600, "steps": 1}),
            deadline,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::Timeout { deadline: d, method } if *d == deadline && method.contains("trigger-long-running-operation")),
        "{err}"
    );
    let result = s
        .session
        .call_tool("echo", json!({"message": "still here"}), GENEROUS)
        .await
        .unwrap();
    let out = output::tool_output(result, false, output::DEFAULT_MAX_OUTPUT_BYTES).unwrap();
    assert_eq!(text_of(&out), "Echo: still here");
}

#[tokio::test]
async fn time_server_lists_and_tells_the_time() {
    let mut cmd = tokio::process::Command::new(time_python());
    cmd.args(["-m", "mcp_server_time", "--local-timezone", "UTC"]);
    let s = start(cmd, config()).await;
    assert!(!s.session.server().name.is_empty());
    let tools = s.session.list_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(names, ["convert_time", "get_current_time"]);
    let get = tools.iter().find(|t| t.name == "get_current_time").unwrap();
    let schemas = output::function_schemas(get);
    assert!(
        schemas.input["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("timezone"))),
        "{}",
        schemas.input
    );
    let result = s
        .session
        .call_tool(
            "get_current_time",
            json!({"timezone": "Europe/Paris"}),
            GENEROUS,
        )
        .await
        .unwrap();
    let out = output::tool_output(
        result,
        get.output_schema.is_some(),
        output::DEFAULT_MAX_OUTPUT_BYTES,
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schemas.output).unwrap();
    assert!(validator.is_valid(&out), "{out}");
    let rendered = out.to_string();
    assert!(rendered.contains("Europe/Paris"), "{rendered}");
    assert!(rendered.contains("datetime"), "{rendered}");
}

#[tokio::test]
async fn closing_the_session_lets_the_server_exit() {
    let s = everything(vec![]).await;
    let Running { session, mut child } = s;
    session.close().await;
    // A stdio server exits when its stdin closes; if close left it open,
    // this wait would run into the generous deadline.
    let status = tokio::time::timeout(GENEROUS, child.wait())
        .await
        .expect("the server exits once the session is closed")
        .unwrap();
    assert!(status.code().is_some(), "{status:?}");
}
