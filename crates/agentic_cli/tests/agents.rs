//! `lion agent …` through the real binary, against a local
//! OpenAI-compatible test server: streamed answers, memory across
//! processes, budgets (a default for every agent) and the answer's size
//! bound, tool names the protocol accepts, bad input, and an API key that
//! never reaches the store or the logs.

mod support;

use std::path::Path;
use std::sync::Arc;

use support::provider::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const SENTINEL_KEY: &str = "sk-sentinel-0d6f1c";

/// A test server that streams `first` to each request only once
/// `together` requests have arrived, then holds back `rest` until the test
/// adds a permit to the semaphore it returns (one per request).
async fn gated(
    together: usize,
    first: String,
    rest: String,
) -> (String, Arc<tokio::sync::Semaphore>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (arrived, _) = tokio::sync::watch::channel(0usize);
    let gate = release.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (first, rest, gate) = (first.clone(), rest.clone(), gate.clone());
            let (arrived, mut seen) = (arrived.clone(), arrived.subscribe());
            tokio::spawn(async move {
                if !read_until_messages(&mut socket).await {
                    return;
                }
                arrived.send_modify(|n| *n += 1);
                let _ = seen.wait_for(|n| *n >= together).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                let _ = socket.write_all(format!("{head}{first}").as_bytes()).await;
                let _ = socket.flush().await;
                gate.acquire().await.expect("gate").forget();
                let _ = socket.write_all(rest.as_bytes()).await;
            });
        }
    });
    (url, release)
}

/// `lion` with the provider pointed at `url` and the sentinel API key.
async fn lion_llm(home: &Path, url: &str, args: &[&str]) -> Run {
    let mut cmd = lion_at(home);
    cmd.env("LION_LLM_BASE_URL", url)
        .env("LION_LLM_MODEL", "test-model")
        .env("LION_LLM_API_KEY", SENTINEL_KEY)
        .env("RUST_LOG", "debug")
        .args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join")
}

/// `lion` with the provider pointed at `url`, logging nothing but errors
/// (so an error is the one line on stderr).
async fn lion_llm_quiet(home: &Path, url: &str, args: &[&str]) -> Run {
    let mut cmd = lion_at(home);
    cmd.env("LION_LLM_BASE_URL", url)
        .env("LION_LLM_MODEL", "test-model")
        .args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join")
}

/// Every byte of every file in the home.
fn home_bytes(home: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(home).expect("home") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            out.extend(std::fs::read(&path).expect("read"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_streams_its_answer_and_remembers_across_processes() {
    let (url, requests) = server(&["Hello", ", ", "Ada"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_llm(
        &home,
        &url,
        &["agent", "spawn", "ada", "--system", "Be brief."],
    )
    .await
    .success();
    let first = lion_llm(&home, &url, &["agent", "send", "ada", "Hi there"])
        .await
        .success();
    assert_eq!(first.stdout, "Hello, Ada\n");
    let second = lion_llm(&home, &url, &["agent", "send", "ada", "Again"])
        .await
        .success();
    assert_eq!(second.stdout, "Hello, Ada\n");
    let bodies = requests.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    // The second request carries the memory rebuilt from the log.
    for expected in [
        r#"{"content":"Be brief.","role":"system"}"#,
        r#"{"content":"Hi there","role":"user"}"#,
        r#"{"content":"Hello, Ada","role":"assistant"}"#,
        r#"{"content":"Again","role":"user"}"#,
    ] {
        assert!(bodies[1].contains(expected), "{expected} in {}", bodies[1]);
    }
    let listed = lion_run(&home, &["agent", "list", "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["message_count"], 4);
    assert_eq!(
        listed[0].get("messages"),
        None,
        "a list leaves conversations out"
    );
    assert_eq!(listed[0]["usage"]["completion_tokens"], 6);
    // The conversation, a page at a time.
    let page = lion_run(&home, &["agent", "show", "ada", "--limit", "3", "--json"])
        .success()
        .json();
    let contents = |page: &serde_json::Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(contents(&page), ["Hi there", "Hello, Ada", "Again"]);
    assert_eq!(
        (page["message_count"].clone(), page["next"].clone()),
        (4.into(), 3.into())
    );
    let rest = lion_run(&home, &["agent", "show", "ada", "--after", "3", "--json"])
        .success()
        .json();
    assert_eq!(contents(&rest).len(), 1);
    assert_eq!(rest["next"], serde_json::Value::Null);
    let shown = lion_run(&home, &["agent", "show", "ada", "--limit", "1"]).success();
    assert!(
        shown.stdout.contains("#1 user: Hi there")
            && shown
                .stdout
                .contains("more: lion agent show ada --limit 1 --after 1"),
        "{shown:?}"
    );
    let kinds = event_kinds(&home);
    assert!(kinds.contains(&"agent_prompted".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"llm_delta".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"llm_finished".to_owned()), "{kinds:?}");
    lion_run(&home, &["replay"]).success();

    // The API key went to the server, and nowhere else.
    assert!(bodies[0].contains(&format!("Bearer {SENTINEL_KEY}")));
    let stored = home_bytes(&home);
    assert!(
        !stored
            .windows(SENTINEL_KEY.len())
            .any(|w| w == SENTINEL_KEY.as_bytes()),
        "the API key must not reach the store"
    );
    for run in [&first, &second] {
        assert!(!run.stderr.contains(SENTINEL_KEY), "nor the logs: {run:?}");
        assert!(!run.stdout.contains(SENTINEL_KEY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_the_answer_as_it_streams() {
    let (url, _) = server(&["one ", "two ", "three ", "four ", "five"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_llm(
        &home,
        &url,
        &["agent", "spawn", "terse", "--budget-tokens", "2"],
    )
    .await
    .success();
    let mut cmd = lion_at(&home);
    cmd.env("LION_LLM_BASE_URL", &url)
        .env("LION_LLM_MODEL", "m")
        .args(["agent", "send", "terse", "count"]);
    let run = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join");
    assert_eq!(run.code, Some(1), "{run:?}");
    // "three " (6 bytes) counts as 2 tokens: 4 in all, and only what fits
    // the budget is shown and kept.
    assert!(
        run.stderr
            .contains("token budget exceeded (4 tokens, budget 2)"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "one two \n");
    let stopped = events(&home)
        .into_iter()
        .filter_map(|e| e["event"].get("llm_stopped").cloned())
        .next()
        .expect("llm_stopped");
    assert_eq!(stopped["partial"], "one two ");
}

/// An SSE body streaming `chunks` chunks of `size` bytes each, then the end.
fn flood_body(chunks: usize, size: usize) -> String {
    let text = "word ".repeat(size / 5);
    let delta = serde_json::json!({"choices":[{"index":0,"delta":{"content":text}}]});
    let mut out = format!("data: {delta}\n\n").repeat(chunks);
    out.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str("data: [DONE]\n\n");
    out
}

/// The bytes of text the log holds for the agent's answers: every
/// `llm_delta`, and each `llm_stopped`'s partial.
fn logged_answer_bytes(home: &Path) -> (usize, usize) {
    let events = events(home);
    let deltas = events
        .iter()
        .filter_map(|e| e["event"]["llm_delta"]["text"].as_str())
        .map(str::len)
        .sum();
    let partial = events
        .iter()
        .filter_map(|e| e["event"]["llm_stopped"]["partial"].as_str())
        .map(str::len)
        .sum();
    (deltas, partial)
}

/// Regression (issue 14): with no budget an endless stream wrote 4.9 GB of
/// log in 35 s. Every agent now has a budget (shown at spawn and in the
/// list), the default when none was given, and tokens are counted from the
/// bytes that stream: this server would stream 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_budget_stops_at_the_default_one() {
    let (url, _) = scripted(vec![flood_body(4096, 256)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let spawned = lion_llm(&home, &url, &["agent", "spawn", "ada"])
        .await
        .success();
    assert!(
        spawned
            .stdout
            .contains("budget 4096 tokens (default), answers up to 1048576 bytes (default)"),
        "{spawned:?}"
    );
    let listed = lion_run(&home, &["agent", "list"]).success();
    assert!(
        listed.stdout.contains("4096 tokens (default)"),
        "{listed:?}"
    );
    let listed = lion_run(&home, &["agent", "list", "--json"])
        .success()
        .json();
    assert_eq!(listed[0]["budget_tokens"], 4096);
    assert_eq!(listed[0]["max_answer_bytes"], 1 << 20);
    assert_eq!(listed[0]["spec"]["budget_tokens"], serde_json::Value::Null);

    let run = lion_llm_quiet(&home, &url, &["agent", "send", "ada", "Talk."]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.error_line(1).contains("token budget exceeded (")
            && run.error_line(1).ends_with("budget 4096)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.len() <= 4096 * 4 + 1,
        "{} bytes shown",
        run.stdout.len()
    );
    let (deltas, partial) = logged_answer_bytes(&home);
    assert!(
        deltas <= 4096 * 4 && partial <= 4096 * 4,
        "{deltas} / {partial} bytes logged"
    );
    lion_run(&home, &["replay"]).success();
}

/// Regression (issue 14): the budget counted chunks, so an answer of
/// 101 KB in one chunk passed a 100-token budget. And past the budget, a
/// bound on one answer's bytes stops a stream too (raised budgets, huge
/// chunks), recorded like a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_chunk_passes_neither_a_small_budget_nor_the_answer_bound() {
    let (url, _) = scripted(vec![flood_body(1, 101 * 1024)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_llm(
        &home,
        &url,
        &["agent", "spawn", "small", "--budget-tokens", "100"],
    )
    .await
    .success();
    let run = lion_llm_quiet(&home, &url, &["agent", "send", "small", "Talk."]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.error_line(1).contains("token budget exceeded (")
            && run.error_line(1).ends_with("budget 100)"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.len() <= 401, "{} bytes shown", run.stdout.len());

    lion_llm(
        &home,
        &url,
        &[
            "agent",
            "spawn",
            "bounded",
            "--budget-tokens",
            "1000000",
            "--max-answer-bytes",
            "2000",
        ],
    )
    .await
    .success();
    let run = lion_llm_quiet(&home, &url, &["agent", "send", "bounded", "Talk."]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        run.error_line(1),
        "error: agent bounded stopped: answer too long: more than 2000 bytes of text and tool-call arguments"
    );
    assert_eq!(run.stdout.len(), 2001, "cut at the bound");
    let stopped: Vec<String> = events(&home)
        .into_iter()
        .filter_map(|e| {
            e["event"]["llm_stopped"]["reason"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(stopped.len(), 2, "both stops recorded: {stopped:?}");
    let (deltas, partial) = logged_answer_bytes(&home);
    assert!(
        deltas <= 2400 && partial <= 2400,
        "{deltas} / {partial} bytes logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_out_of_range_are_refused_at_spawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["agent", "spawn", "ok"]).success();
    let before = events(&home).len();
    let run = lion_run(&home, &["agent", "spawn", "x", "--budget-tokens", "0"]);
    assert_eq!(
        run.error_line(1),
        "error: --budget-tokens must be at least 1"
    );
    for bad in ["0", "67108865"] {
        let run = lion_run(&home, &["agent", "spawn", "x", "--max-answer-bytes", bad]);
        assert_eq!(
            run.error_line(1),
            format!("error: --max-answer-bytes must be 1 to 67108864 (64 MiB), got {bad}")
        );
    }
    assert_eq!(events(&home).len(), before, "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["agent", "spawn", "ada"]).success();
    // A server model with no server (with neither, the local model runs).
    let run = run(lion_at(&home)
        .env("LION_LLM_MODEL", "gpt-4o")
        .args(["agent", "send", "ada", "hi"]));
    assert!(
        run.error_line(1)
            .contains("model \"gpt-4o\" needs an LLM server, and none is configured"),
        "{run:?}"
    );
    let run = lion_run(&home, &["agent", "send", "bob", "hi"]);
    assert_eq!(
        run.error_line(1),
        "error: no agent bob (lion agent spawn bob)"
    );
    let run = lion_run(&home, &["agent", "spawn", "ada"]);
    assert!(
        run.error_line(1).contains("agent ada exists already"),
        "{run:?}"
    );
    let run = lion_run(
        &home,
        &["agent", "spawn", "calc", "--tool", "calculator.eval"],
    );
    assert_eq!(
        run.error_line(1),
        "error: tool calculator.eval: no plugin calculator is installed"
    );
    lion_run(&home, &["agent", "stop", "ada"]).success();
    let run = lion_run(&home, &["agent", "send", "ada", "hi"]);
    assert_eq!(run.error_line(1), "error: agent ada is stopped");
    let run = lion_run(&home, &["agent", "stop", "nobody"]);
    assert!(run.error_line(1).contains("no agent nobody"), "{run:?}");

    // An unreachable provider: nothing recorded for the message.
    lion_run(&home, &["agent", "spawn", "ada"]).success();
    let before = events(&home).len();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    drop(listener);
    let run = lion_llm(&home, &url, &["agent", "send", "ada", "hi"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("cannot reach the LLM provider"),
        "{run:?}"
    );
    assert_eq!(events(&home).len(), before);
}

/// The staged manifest of example plugin `name`, as a string argument.
fn manifest(name: &str) -> String {
    plugin_dist()
        .join(name)
        .join("plugin.toml")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_a_granted_plugin_and_is_refused_an_ungranted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let calculator = tokio::task::spawn_blocking(|| manifest("calculator"))
        .await
        .expect("build");
    lion_run(&home, &["plugin", "install", &calculator]).success();
    lion_run(
        &home,
        &["plugin", "install", &manifest("hello_world"), "--grant-all"],
    )
    .success();
    lion_run(
        &home,
        &["agent", "spawn", "calc", "--tool", "calculator.eval"],
    )
    .success();

    let (url, requests) = scripted(vec![
        tool_call_body("calculator__eval", r#"{"expression":"2 * (3 + 4)"}"#),
        text_body(&["It is ", "14."]),
    ])
    .await;
    let run = lion_llm(&home, &url, &["agent", "send", "calc", "What is 2*(3+4)?"])
        .await
        .success();
    assert_eq!(run.stdout, "It is 14.\n");
    assert!(run.stderr.contains("[tool calculator__eval"), "{run:?}");
    let bodies = requests.lock().unwrap().clone();
    assert!(
        bodies[0].contains(r#""name":"calculator__eval""#),
        "the tool is described: {}",
        bodies[0]
    );
    assert!(
        bodies[1].contains(r#""tool_call_id":"call_1""#),
        "{}",
        bodies[1]
    );
    assert!(
        bodies[1].contains(r#"{\"value\":14}"#),
        "the output goes back: {}",
        bodies[1]
    );
    let kinds = event_kinds(&home);
    assert!(kinds.contains(&"agent_tool_result".to_owned()));
    assert!(kinds.contains(&"plugin_succeeded".to_owned()));

    // The model asks for a plugin the agent was not granted: refused, unrun.
    let (url, requests) = scripted(vec![
        tool_call_body("hello_world__greet", r#"{"name":"Ada"}"#),
        text_body(&["Sorry."]),
    ])
    .await;
    lion_llm(&home, &url, &["agent", "send", "calc", "Greet Ada"])
        .await
        .success();
    let bodies = requests.lock().unwrap().clone();
    assert!(
        bodies[1].contains("the tool hello_world__greet is not granted to this agent"),
        "{}",
        bodies[1]
    );
    let greeted = events(&home)
        .iter()
        .any(|e| e["event"]["plugin_invoked"]["name"] == "hello_world");
    assert!(!greeted, "an ungranted tool must not run");
    let refusal = events(&home)
        .into_iter()
        .filter_map(|e| e["event"].get("agent_tool_result").cloned())
        .next_back()
        .expect("the refusal is recorded");
    assert!(
        refusal["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("not granted")
    );
    lion_run(&home, &["replay"]).success();
}

#[test]
fn bench_llm_quick_runs_every_path() {
    let run = run(lion().args(["bench", "llm", "--quick", "--json"])).success();
    let out = run.json();
    assert_eq!(out["verdict"], "no evidence (quick run)");
    assert_eq!(out["relayed_chunks"], 50 + 10 * 200, "{run:?}");
    assert!(out["logged_events"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_two_streaming_agents_a_tool_and_a_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let calculator = tokio::task::spawn_blocking(|| manifest("calculator"))
        .await
        .expect("build");
    let run = run(lion_at(&home).env("LION_LLM_MODEL", "gpt-4o").arg("demo"));
    assert!(
        run.error_line(1)
            .contains("needs an LLM server, and none is configured"),
        "{run:?}"
    );

    let (url, _) = responding(|_, request| {
        if request.contains("tool_call_id") {
            text_body(&["It is ", "391."])
        } else if request.contains("calculator__eval") {
            tool_call_body("calculator__eval", r#"{"expression":"17 * 23"}"#)
        } else if request.contains("Count from 1 to 100") {
            let numbers: Vec<String> = (1..=20).map(|n| format!("{n}\n")).collect();
            let parts: Vec<&str> = numbers.iter().map(String::as_str).collect();
            text_body(&parts)
        } else {
            text_body(&["A lion ", "sleeps."])
        }
    })
    .await;
    let run = lion_llm(&home, &url, &["demo", "--calculator", &calculator])
        .await
        .success();
    for expected in [
        "== two agents streaming at once",
        "poet (2 chunks streamed",
        "critic (2 chunks streamed",
        "calc: It is 391.",
        "the model called calculator.eval itself",
        "rambler was stopped: token budget exceeded (9 tokens, budget 8)",
        "agent_tool_result",
        "plugin_succeeded",
        "the projections match",
    ] {
        assert!(run.stdout.contains(expected), "{expected}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_kernel_runs_agents_concurrently_and_streams_them_to_other_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    // Both answers start only once both requests arrived (the kernel runs
    // the two agents at once), and end only after another process has seen
    // their first chunk (the kernel streams, it does not buffer).
    let body = text_body(&["Hel", "lo"]);
    let split = body
        .find("data: ")
        .and_then(|i| body[i + 6..].find("data: ").map(|j| i + 6 + j));
    let (first, rest) = body.split_at(split.expect("two events"));
    let (url, release) = gated(2, first.to_owned(), rest.to_owned()).await;
    for name in ["ada", "bob"] {
        lion_llm(&home, &url, &["agent", "spawn", name])
            .await
            .success();
    }
    let kernel = Kernel::start(
        &home,
        &[
            ("LION_LLM_BASE_URL", url.as_str()),
            ("LION_LLM_MODEL", "test-model"),
            ("LION_LLM_API_KEY", SENTINEL_KEY),
            ("RUST_LOG", "debug"),
        ],
    );
    let (mut watcher, mut watched) = tail_live(&home);
    // The senders have no provider configured: the kernel's is used.
    let sends: Vec<_> = ["ada", "bob"]
        .into_iter()
        .map(|name| {
            let mut cmd = lion_at(&home);
            cmd.args(["agent", "send", name, "Hi"])
                .env_remove("LION_LLM_BASE_URL");
            tokio::task::spawn_blocking(move || run(&mut cmd))
        })
        .collect();
    let mut first_chunks = std::collections::BTreeSet::new();
    while first_chunks.len() < 2 {
        let line = watched.recv().await.expect("the watcher ended early");
        let line: serde_json::Value = serde_json::from_str(&line).expect("json line");
        if let Some(delta) = line["event"].get("llm_delta") {
            assert_eq!(delta["text"], "Hel");
            first_chunks.insert(delta["agent"].as_str().expect("agent").to_owned());
        }
    }
    release.add_permits(2);
    for send in sends {
        let run = send.await.expect("join").success();
        assert_eq!(run.stdout, "Hello\n");
    }
    let _ = watcher.kill();
    let kinds = event_kinds(&home);
    let completed = kinds.iter().filter(|k| *k == "task_completed").count();
    assert_eq!(completed, 2, "{kinds:?}");
    let listed = lion_run(&home, &["agent", "list", "--json"])
        .success()
        .json();
    for agent in listed.as_array().expect("agents") {
        assert_eq!(agent["message_count"], 2, "{agent}");
    }
    lion_run(&home, &["replay"]).success();
    assert!(
        !contains(&home_bytes(&home), SENTINEL_KEY),
        "the key stays out of the store"
    );
    assert!(
        !kernel.stderr().contains(SENTINEL_KEY),
        "and out of the kernel's logs"
    );
    assert!(
        kernel.stderr().contains("DEBUG"),
        "the kernel logged at debug"
    );
}

/// `lion events tail --live --json` in the background, once connected; its
/// stdout lines arrive on the receiver.
fn tail_live(
    home: &Path,
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("--home")
        .arg(home)
        .args(["events", "tail", "--live", "--json"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the watcher");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let said = stderr
        .next()
        .expect("the watcher says it follows")
        .expect("read");
    assert!(said.contains("following the live events"), "{said}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Whether `needle` occurs in `bytes`.
fn contains(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_environment_value_never_reaches_the_store_or_logs() {
    const SECRET: &str = "env-sentinel-7f3a9c";
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let dist = tokio::task::spawn_blocking(|| plugin_dist().join("abuse"))
        .await
        .expect("build");
    // The abuse plugin, asking to read one environment variable.
    let manifest = std::fs::read_to_string(dist.join("plugin.toml"))
        .expect("manifest")
        .replace("abuse.wasm", &dist.join("abuse.wasm").display().to_string())
        .replace(
            "interfaces = [",
            "env = [\"LION_SECRET_TOKEN\"]\ninterfaces = [",
        );
    let path = dir.path().join("abuse.toml");
    std::fs::write(&path, manifest).expect("write manifest");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            &path.display().to_string(),
            "--grant-all",
        ],
    )
    .success();
    lion_run(&home, &["agent", "spawn", "probe", "--tool", "abuse.env"]).success();
    // The sandbox gets the value; the model asks for another variable, so
    // the plugin's output (recorded, as every output is) does not hold it.
    let (url, requests) = scripted(vec![
        tool_call_body("abuse__env", r#"{"name":"HOME"}"#),
        text_body(&["Done."]),
    ])
    .await;
    let mut cmd = lion_at(&home);
    cmd.env("LION_LLM_BASE_URL", &url)
        .env("LION_LLM_MODEL", "test-model")
        .env("LION_SECRET_TOKEN", SECRET)
        .env("RUST_LOG", "trace")
        .args(["agent", "send", "probe", "Read it"]);
    let run = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join")
        .success();
    let bodies = requests.lock().unwrap().clone();
    assert!(
        bodies[1].contains(r#"{\"value\":null}"#),
        "ungranted HOME is unset: {}",
        bodies[1]
    );
    assert!(event_kinds(&home).contains(&"plugin_succeeded".to_owned()));
    // Lion wrote the granted value nowhere: not the log, the projections
    // or its trace logs.
    assert!(run.stderr.contains("TRACE"), "traced: {run:?}");
    assert!(!run.stderr.contains(SECRET), "not in the logs");
    assert!(!contains(&home_bytes(&home), SECRET), "not in the store");
}

/// Installs a copy of example plugin hello_world named `name` whose one
/// function is `function`.
fn install_hello_as(home: &Path, dir: &Path, name: &str, function: &str) {
    let dist = plugin_dist().join("hello_world");
    let manifest = std::fs::read_to_string(dist.join("plugin.toml"))
        .expect("manifest")
        .replace("name = \"hello_world\"", &format!("name = \"{name}\""))
        .replace(
            "hello_world.wasm",
            &dist.join("hello_world.wasm").display().to_string(),
        )
        .replace("[functions.greet]", &format!("[functions.\"{function}\"]"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, manifest).expect("write manifest");
    lion_run(home, &["plugin", "install", &path.display().to_string()]).success();
}

/// Regression (issue 14): tool names could collide after mangling (`a` +
/// `_b` and `a_` + `b` were both `a___b`), and a long plugin name made a
/// name the protocol refuses (at most 64 of `[a-zA-Z0-9_-]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_names_are_distinct_and_within_the_protocols_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    tokio::task::spawn_blocking(plugin_dist)
        .await
        .expect("build");
    let long = "p".repeat(64);
    install_hello_as(&home, dir.path(), "a", "_b");
    install_hello_as(&home, dir.path(), "a_", "b");
    install_hello_as(&home, dir.path(), &long, "greet");
    let tools = [
        "a._b".to_owned(),
        "a_.b".to_owned(),
        format!("{long}.greet"),
    ];
    let mut args = vec!["agent", "spawn", "t"];
    for tool in &tools {
        args.extend(["--tool", tool.as_str()]);
    }
    lion_run(&home, &args).success();

    // The model calls the second tool by the name it was given.
    let (url, requests) = responding(|index, request| {
        let body: serde_json::Value =
            serde_json::from_str(&request[request.find("\r\n\r\n").expect("body") + 4..])
                .expect("json body");
        match index {
            0 => tool_call_body(
                body["tools"][1]["function"]["name"].as_str().expect("name"),
                r#"{"name":"Ada"}"#,
            ),
            _ => text_body(&["Done."]),
        }
    })
    .await;
    lion_llm(&home, &url, &["agent", "send", "t", "Greet Ada"])
        .await
        .success();
    let first = requests.lock().unwrap()[0].clone();
    let body: serde_json::Value =
        serde_json::from_str(&first[first.find("\r\n\r\n").expect("body") + 4..]).expect("json");
    let names: Vec<String> = body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["function"]["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), 3, "every tool has its own name: {names:?}");
    for name in &names {
        assert!(
            (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{name} is not a name the protocol accepts"
        );
    }
    assert_eq!(names[0], "a___b", "a plain pair keeps its readable name");
    // The call reached the plugin its name stands for.
    let invoked: Vec<(String, String)> = events(&home)
        .into_iter()
        .filter_map(|e| {
            let i = e["event"].get("plugin_invoked")?.clone();
            Some((
                i["name"].as_str()?.to_owned(),
                i["function"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(invoked, [("a_".to_owned(), "b".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_a_tool_of_a_real_mcp_server_run_in_the_sandbox() {
    // Outside /tmp: a server's private /tmp hides the host's.
    let dir = tempfile::Builder::new()
        .prefix("agents-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let home = dir.path().join("home");
    lion_run(
        &home,
        &[
            "plugin",
            "install",
            "npm:@modelcontextprotocol/server-everything@2026.8.31",
            "--name",
            "everything",
        ],
    )
    .success();
    lion_run(
        &home,
        &["agent", "spawn", "adder", "--tool", "everything.get-sum"],
    )
    .success();
    let (url, requests) = scripted(vec![
        tool_call_body("everything__get-sum", r#"{"a":2,"b":40}"#),
        text_body(&["It is ", "42."]),
    ])
    .await;
    let run = lion_llm(&home, &url, &["agent", "send", "adder", "Add 2 and 40"])
        .await
        .success();
    assert_eq!(run.stdout, "It is 42.\n");
    let bodies = requests.lock().unwrap().clone();
    assert!(
        bodies[0].contains(r#""name":"everything__get-sum""#),
        "the MCP tool is described to the model: {}",
        bodies[0]
    );
    assert!(
        bodies[1].contains("The sum of 2 and 40 is 42."),
        "the server's answer goes back to the model: {}",
        bodies[1]
    );
    let succeeded = events(&home)
        .iter()
        .any(|e| e["event"]["plugin_succeeded"]["name"] == "everything");
    assert!(succeeded, "the call is recorded as the plugin's");
    lion_run(&home, &["replay"]).success();
}
