//! `lion agent …` through the real binary, against a local
//! OpenAI-compatible test server: streamed answers, memory across
//! processes, budgets, bad input, and an API key that never reaches the
//! store or the logs.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SENTINEL_KEY: &str = "sk-sentinel-0d6f1c";

/// An SSE body streaming `chunks` of text, then stop, usage and `[DONE]`.
fn text_body(chunks: &[&str]) -> String {
    let mut out = String::new();
    for c in chunks {
        let delta = serde_json::json!({"choices":[{"index":0,"delta":{"content":c}}]});
        out.push_str(&format!("data: {delta}\n\n"));
    }
    out.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n",
    );
    out.push_str("data: [DONE]\n\n");
    out
}

/// An SSE body in which the model calls tool `name` with `arguments`.
fn tool_call_body(name: &str, arguments: &str) -> String {
    let call = serde_json::json!({"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[
        {"index":0,"id":"call_1","type":"function","function":{"name":name,"arguments":arguments}}]}}]});
    format!(
        "data: {call}\n\ndata: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\ndata: [DONE]\n\n"
    )
}

/// A test server answering every request with the same SSE stream of
/// `chunks`; returns its base URL and the request bodies it saw.
async fn server(chunks: &'static [&'static str]) -> (String, Arc<Mutex<Vec<String>>>) {
    scripted(vec![text_body(chunks)]).await
}

/// A test server answering request i with `bodies[i]` (the last one again
/// once they run out).
async fn scripted(bodies: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    responding(move |index, _| bodies[index.min(bodies.len() - 1)].clone()).await
}

/// A test server answering each request (its index, its text) with the
/// SSE body `respond` gives.
async fn responding(
    respond: impl Fn(usize, &str) -> String + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = seen.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let requests = requests.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            requests.lock().unwrap().push(text);
                            break;
                        }
                    }
                }
                let (index, request) = {
                    let seen = requests.lock().unwrap();
                    (seen.len() - 1, seen[seen.len() - 1].clone())
                };
                let body = respond(index, &request);
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
                );
                let _ = socket.write_all(out.as_bytes()).await;
            });
        }
    });
    (url, seen)
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
    assert_eq!(listed[0]["messages"].as_array().map(Vec::len), Some(4));
    assert_eq!(listed[0]["usage"]["completion_tokens"], 6);
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
    assert!(
        run.stderr
            .contains("token budget exceeded (3 tokens, budget 2)"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "one two three \n");
    let stopped = events(&home)
        .into_iter()
        .filter_map(|e| e["event"].get("llm_stopped").cloned())
        .next()
        .expect("llm_stopped");
    assert_eq!(stopped["partial"], "one two three ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    lion_run(&home, &["agent", "spawn", "ada"]).success();
    let run = lion_run(&home, &["agent", "send", "ada", "hi"]);
    assert!(
        run.error_line(1).contains("no LLM provider is configured"),
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
    let run = lion_run(&home, &["demo"]);
    assert!(
        run.error_line(1).contains("no LLM provider is configured"),
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
