//! Agents through `lion serve`, on a scripted OpenAI-compatible provider:
//! the REST API (spawn, show, list, stop, send whole or streamed), the
//! OpenAI chat protocol driven by the real `openai` Python package, one
//! run per agent at a time, and a client that disconnects mid-answer
//! (the run is cancelled, and that is recorded).

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::provider::{scripted, stalling, text_body};
use support::python::run_script;
use support::serve::{Api, Server};

fn home() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn on_provider(url: &str) -> [(&'static str, String); 2] {
    [
        ("LION_LLM_BASE_URL", url.to_owned()),
        ("LION_LLM_MODEL", "test-model".to_owned()),
    ]
}

fn start(dir: &std::path::Path, url: &str) -> Server {
    let envs = on_provider(url);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &envs, &[])
}

async fn spawn(api: &Api, name: &str) {
    let spawned = api
        .post("/agents", &json!({"name": name, "system": "Be brief."}))
        .await;
    assert_eq!(spawned.status, 201, "{spawned:?}");
}

/// Reads a streamed body's SSE events as (event name, data) pairs until
/// one named `last` (or, with `None`, until `[DONE]`).
async fn read_events(mut response: reqwest::Response, last: Option<&str>) -> Vec<(String, String)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let done = match last {
                Some(last) => name == last,
                None => data == "[DONE]",
            };
            events.push((name, data));
            if done {
                return events;
            }
        }
        let chunk = response
            .chunk()
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("the stream ended early: {events:?}"));
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn agents_are_spawned_listed_talked_to_and_stopped() {
    let (url, requests) = scripted(vec![text_body(&["Hello", " from", " ada."])]).await;
    let dir = home();
    let server = start(dir.path(), &url);
    let api = server.api();
    spawn(&api, "ada").await;
    api.post("/agents", &json!({"name": "ada"}))
        .await
        .problem(409);
    api.post("/agents", &json!({"name": "two words"}))
        .await
        .problem(422);
    api.post("/agents", &json!({"name": "t", "tools": ["nope.f"]}))
        .await
        .problem(404);
    api.post(
        "/agents",
        &json!({"name": "t", "model": "local:/etc/passwd"}),
    )
    .await
    .problem(422);
    let answer = api
        .post("/agents/ada/messages", &json!({"text": "Hi"}))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["content"], "Hello from ada.");
    assert_eq!(answer.json()["usage"]["completion_tokens"], 3);
    // Streamed: the chunks as they come, then the whole answer.
    let response = api
        .request(Method::POST, "/agents/ada/messages")
        .header("content-type", "application/json")
        .body(json!({"text": "Again", "stream": true}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = read_events(response, Some("done")).await;
    let deltas: Vec<String> = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(deltas, ["Hello", " from", " ada."]);
    // The memory is the log: both exchanges, under the agent's prompt.
    let ada = api.get("/agents/ada?limit=10").await.json();
    assert_eq!(ada["message_count"], 4, "{ada}");
    assert_eq!(ada["messages"][0]["content"], "Hi");
    assert_eq!(ada["messages"][3]["content"], "Hello from ada.");
    let last_request = requests.lock().unwrap().last().cloned().unwrap();
    assert!(last_request.contains("Be brief."), "{last_request}");
    // Two runs of 3 completion tokens each, as the provider reported them.
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"lion_llm_tokens_total{kind="completion"} 6"#),
        "{metrics}"
    );
    let listed = api.get("/agents").await.json();
    assert_eq!(listed["items"][0]["name"], "ada");
    assert_eq!(listed["items"][0]["messages"], json!([]));
    // Stopped: it takes no more messages.
    let stopped = api.post("/agents/ada/stop", &json!({})).await;
    assert_eq!(stopped.json()["status"], "stopped");
    api.post("/agents/ada/messages", &json!({"text": "Hi"}))
        .await
        .problem(409);
    api.post("/agents/nobody/messages", &json!({"text": "Hi"}))
        .await
        .problem(404);
}

#[tokio::test]
async fn the_openai_python_client_talks_to_an_agent() {
    let (url, requests) = scripted(vec![text_body(&["Hello", " there", "!"])]).await;
    let dir = home();
    let server = start(dir.path(), &url);
    let api = server.api();
    spawn(&api, "ada").await;
    let envs = [
        ("LION_URL", server.url.as_str()),
        ("LION_TOKEN", server.token.as_str()),
        ("LION_MODEL", "agent:ada"),
    ];
    let client = |mode: &'static str| {
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (ok, stdout, stderr) = run_script("openai_client.py", &[mode, "Hi"], &envs);
            assert!(ok, "{mode}: {stderr}");
            serde_json::from_str::<Value>(stdout.trim()).expect("one JSON line")
        })
    };
    let models = client("models").await.unwrap();
    assert_eq!(models["models"], json!(["agent:ada"]));
    let complete = client("complete").await.unwrap();
    assert_eq!(complete["content"], "Hello there!", "{complete}");
    assert_eq!(complete["role"], "assistant");
    assert_eq!(complete["finish_reason"], "stop");
    assert_eq!(complete["usage"]["total_tokens"], 12, "{complete}");
    let stream = client("stream").await.unwrap();
    assert_eq!(
        stream["chunks"],
        json!(["Hello", " there", "!"]),
        "{stream}"
    );
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["usage"]["completion_tokens"], 3, "{stream}");
    let errors = client("errors").await.unwrap();
    assert_eq!(errors["unknown_agent"]["status"], 404, "{errors}");
    assert_eq!(errors["client_tools"]["status"], 400, "{errors}");
    assert_eq!(errors["wrong_key"]["status"], 401, "{errors}");
    // The client's system prompt never reached the model; the agent's did.
    let seen = requests.lock().unwrap().join("\n");
    assert!(!seen.contains("ignored"), "{seen}");
    assert!(seen.contains("Be brief."));
    // Recorded as `lion agent send` records a message: prompt and answer.
    let ada = api.get("/agents/ada?limit=10").await.json();
    assert_eq!(ada["message_count"], 4, "{ada}");
}

#[tokio::test]
async fn one_run_per_agent_and_a_client_that_leaves_cancels_its_run() {
    let (url, mut closed) = stalling("Thinking").await;
    let dir = home();
    let server = start(dir.path(), &url);
    let api = server.api();
    spawn(&api, "ada").await;
    // Watch for the cancellation before causing it.
    let watcher = api
        .request(Method::GET, "/events/stream?type=task_cancelled")
        .send()
        .await
        .expect("subscribe");
    let response = api
        .request(Method::POST, "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(
            json!({"model": "agent:ada", "stream": true,
                   "messages": [{"role": "user", "content": "Hi"}]})
            .to_string(),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut response = response;
    let mut seen = String::new();
    while !seen.contains("Thinking") {
        let chunk = response.chunk().await.expect("read").expect("more");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A second request for the same agent while it answers.
    let busy = api
        .post("/agents/ada/messages", &json!({"text": "me too"}))
        .await;
    assert!(busy.problem(409).contains("one run per agent"));
    let busy = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "agent:ada", "messages": [{"role": "user", "content": "me too"}]}),
        )
        .await;
    assert_eq!(busy.status, 409, "{busy:?}");
    assert!(
        busy.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one run")
    );
    // The client goes away mid-answer.
    drop(response);
    let events = read_events(watcher, Some("message")).await;
    let cancelled: Value = serde_json::from_str(&events[0].1).unwrap();
    assert!(
        cancelled["event"]["task_cancelled"]["reason"]
            .as_str()
            .unwrap()
            .contains("went away"),
        "{cancelled}"
    );
    // The provider's request was dropped too.
    closed
        .recv()
        .await
        .expect("lion closed the provider's stream");
    // The run is recorded as a cancelled agent task.
    let run_id = cancelled["event"]["task_cancelled"]["task_id"]
        .as_str()
        .unwrap();
    let task = api.get(&format!("/tasks/{run_id}")).await.json();
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["handler"], "agent");
}
