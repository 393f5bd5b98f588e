//! The OpenAI-compatible provider against a local test server that streams
//! SSE the way real servers do: split across reads, role and tool-call
//! deltas, usage, `[DONE]`, slow streams, broken streams and error statuses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_core::llm::{
    ChatChunk, ChatMessage, ChatRequest, ChatStream, LlmError, LlmProvider, Role, Usage,
};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Only a guard against a hanging test, not a performance threshold.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// What the server does for one request.
#[derive(Clone)]
enum Step {
    /// Write these bytes and flush.
    Write(Vec<u8>),
    /// Wait until the test sends a go-ahead.
    Hold,
    /// Wait until the client closes the connection; report it.
    AwaitClose,
}

/// One scripted response: a status line and headers, then steps.
#[derive(Clone)]
struct Script {
    head: String,
    steps: Vec<Step>,
}

impl Script {
    fn sse(steps: Vec<Step>) -> Self {
        Self {
            head: "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                .into(),
            steps,
        }
    }

    fn status(status: &str, extra: &str, body: &str) -> Self {
        Self {
            head: format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
            steps: Vec::new(),
        }
    }
}

/// A test server answering each request with the next script.
struct Server {
    url: String,
    /// Each request's head and body, as received.
    requests: Arc<Mutex<Vec<String>>>,
    go: mpsc::UnboundedSender<()>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl Server {
    async fn start(scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (go, mut go_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let seen = requests.clone();
        tokio::spawn(async move {
            for script in scripts {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let request = read_request(&mut socket).await;
                seen.lock().unwrap().push(request);
                if socket.write_all(script.head.as_bytes()).await.is_err() {
                    continue;
                }
                for step in script.steps {
                    match step {
                        Step::Write(bytes) => {
                            let _ = socket.write_all(&bytes).await;
                            let _ = socket.flush().await;
                        }
                        Step::Hold => {
                            let _ = go_rx.recv().await;
                        }
                        Step::AwaitClose => {
                            let mut buf = [0u8; 64];
                            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                            let _ = closed_tx.send(());
                        }
                    }
                }
            }
        });
        Self {
            url,
            requests,
            go,
            closed,
        }
    }

    fn provider(&self, retries: u32) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiConfig {
            api_key: Some(ApiKey::new("sk-test-sentinel")),
            max_retries: retries,
            ..OpenAiConfig::new(self.url.clone())
        })
        .expect("provider")
    }
}

/// Reads one request: its head and its body (by content-length).
async fn read_request(socket: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).to_string()
}

fn event(json: &str) -> Vec<u8> {
    format!("data: {json}\n\n").into_bytes()
}

fn text(t: &str) -> Vec<u8> {
    event(&format!(
        r#"{{"choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]}}"#,
        serde_json::to_string(t).unwrap()
    ))
}

fn done() -> Vec<u8> {
    b"data: [DONE]\n\n".to_vec()
}

fn finish(reason: &str) -> Vec<u8> {
    event(&format!(
        r#"{{"choices":[{{"index":0,"delta":{{}},"finish_reason":"{reason}"}}]}}"#
    ))
}

fn usage(prompt: u64, completion: u64) -> Vec<u8> {
    event(&format!(
        r#"{{"choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}}}"#
    ))
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hi"),
        ],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_tokens: Some(16),
    }
}

/// Every chunk until the stream ends (or fails: the error is last).
async fn drain(mut stream: ChatStream) -> Vec<Result<ChatChunk, LlmError>> {
    let mut out = Vec::new();
    while let Some(item) = tokio::time::timeout(HANG_GUARD, stream.next())
        .await
        .expect("the stream hung")
    {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn chunks_arrive_in_order_however_the_bytes_are_split() {
    let mut body = event(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
    for t in ["Hel", "lo", ", wor", "ld"] {
        body.extend(text(t));
    }
    body.extend(finish("stop"));
    body.extend(usage(7, 4));
    body.extend(done());
    // Three bytes per write: events split anywhere, even inside UTF-8.
    let steps = body.chunks(3).map(|c| Step::Write(c.to_vec())).collect();
    let server = Server::start(vec![Script::sse(steps)]).await;
    let stream = server.provider(0).stream(request()).await.expect("stream");
    let chunks: Vec<ChatChunk> = drain(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        chunks,
        vec![
            ChatChunk::Text("Hel".into()),
            ChatChunk::Text("lo".into()),
            ChatChunk::Text(", wor".into()),
            ChatChunk::Text("ld".into()),
            ChatChunk::Finished(Some("stop".into())),
            ChatChunk::Usage(Usage {
                prompt_tokens: 7,
                completion_tokens: 4
            }),
        ]
    );
    let sent = server.requests.lock().unwrap()[0].clone();
    assert!(sent.starts_with("POST /v1/chat/completions"), "{sent}");
    assert!(
        sent.contains("authorization: Bearer sk-test-sentinel"),
        "{sent}"
    );
    assert!(sent.contains(r#""stream":true"#), "{sent}");
    assert!(sent.contains(r#""model":"test-model""#), "{sent}");
}

#[tokio::test]
async fn the_first_chunk_arrives_before_the_rest_of_the_stream_exists() {
    // The server sends one chunk and holds the rest back until the test has
    // seen that chunk: a client that buffers the response hangs here.
    let steps = vec![
        Step::Write(text("first")),
        Step::Hold,
        Step::Write([text(" second"), finish("stop"), done()].concat()),
    ];
    let server = Server::start(vec![Script::sse(steps)]).await;
    let mut stream = server.provider(0).stream(request()).await.expect("stream");
    let first = tokio::time::timeout(HANG_GUARD, stream.next())
        .await
        .expect("the first chunk never came: the client buffers")
        .expect("a chunk")
        .expect("ok");
    assert_eq!(first, ChatChunk::Text("first".into()));
    server.go.send(()).expect("go");
    let rest: Vec<ChatChunk> = drain(stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rest,
        vec![
            ChatChunk::Text(" second".into()),
            ChatChunk::Finished(Some("stop".into()))
        ]
    );
}

#[tokio::test]
async fn tool_call_deltas_come_through_part_by_part() {
    let body = [
        event(r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"calculator_eval","arguments":""}}]}}]}"#),
        event(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"expression\":"}}]}}]}"#),
        event(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"2+2\"}"}}]}}]}"#),
        finish("tool_calls"),
        done(),
    ]
    .concat();
    let server = Server::start(vec![Script::sse(vec![Step::Write(body)])]).await;
    let chunks: Vec<ChatChunk> = drain(server.provider(0).stream(request()).await.expect("stream"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| match c {
            ChatChunk::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(arguments, r#"{"expression":"2+2"}"#);
    assert!(matches!(
        &chunks[0],
        ChatChunk::ToolCallDelta { index: 0, id: Some(id), name: Some(name), .. }
            if id == "call_1" && name == "calculator_eval"
    ));
    assert_eq!(
        chunks.last(),
        Some(&ChatChunk::Finished(Some("tool_calls".into())))
    );
}

#[tokio::test]
async fn a_stream_that_breaks_off_says_so_after_what_did_arrive() {
    let server = Server::start(vec![Script::sse(vec![Step::Write(text("partial"))])]).await;
    let items = drain(server.provider(0).stream(request()).await.expect("stream")).await;
    assert_eq!(items[0], Ok(ChatChunk::Text("partial".into())));
    assert!(
        matches!(&items[1], Err(LlmError::StreamBroken(m)) if m.contains("closed before")),
        "{items:?}"
    );
    assert_eq!(items.len(), 2);
}

#[tokio::test]
async fn a_malformed_chunk_is_an_error() {
    let body = [text("ok"), b"data: {not json\n\n".to_vec()].concat();
    let server = Server::start(vec![Script::sse(vec![Step::Write(body)])]).await;
    let items = drain(server.provider(0).stream(request()).await.expect("stream")).await;
    assert!(
        matches!(&items[1], Err(LlmError::Malformed(m)) if m.contains("{not json")),
        "{items:?}"
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let steps = vec![Step::Write(text("one")), Step::AwaitClose];
    let mut server = Server::start(vec![Script::sse(steps)]).await;
    let mut stream = server.provider(0).stream(request()).await.expect("stream");
    assert!(matches!(stream.next().await, Some(Ok(ChatChunk::Text(_)))));
    drop(stream);
    tokio::time::timeout(HANG_GUARD, server.closed.recv())
        .await
        .expect("the connection stayed open after the stream was dropped");
}

#[tokio::test]
async fn error_statuses_are_named_with_the_providers_message() {
    let unauthorized = Script::status(
        "401 Unauthorized",
        "",
        r#"{"error":{"message":"Incorrect API key provided"}}"#,
    );
    let unknown_model = Script::status(
        "404 Not Found",
        "",
        r#"{"error":{"message":"model 'nope' not found"}}"#,
    );
    let server = Server::start(vec![unauthorized, unknown_model]).await;
    let err = server.provider(3).stream(request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Unauthorized {
            status: 401,
            message: "Incorrect API key provided".into()
        }
    );
    let err = server.provider(3).stream(request()).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Refused { status: 404, message } if message.contains("'nope' not found")),
        "{err}"
    );
    assert!(!err.to_string().contains("sentinel"));
}

#[tokio::test]
async fn rate_limits_and_unavailable_servers_are_retried_before_the_stream_starts() {
    let ok = Script::sse(vec![Step::Write(
        [text("fine"), finish("stop"), done()].concat(),
    )]);
    let server = Server::start(vec![
        Script::status(
            "429 Too Many Requests",
            "retry-after: 0\r\n",
            r#"{"error":{"message":"slow down"}}"#,
        ),
        Script::status("503 Service Unavailable", "", "overloaded"),
        ok,
    ])
    .await;
    let items = drain(server.provider(2).stream(request()).await.expect("stream")).await;
    assert_eq!(items[0], Ok(ChatChunk::Text("fine".into())));
    assert_eq!(server.requests.lock().unwrap().len(), 3);

    let unavailable = Server::start(vec![
        Script::status("503 Service Unavailable", "", "loading"),
        Script::status("503 Service Unavailable", "", "loading"),
    ])
    .await;
    let err = unavailable.provider(1).stream(request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Server {
            status: 503,
            message: "loading".into()
        }
    );
    assert_eq!(unavailable.requests.lock().unwrap().len(), 2);

    // A 500 may have come after the server did the work: not sent again.
    let failing = Server::start(vec![
        Script::status("500 Internal Server Error", "", "boom"),
        Script::status("500 Internal Server Error", "", "boom"),
    ])
    .await;
    let err = failing.provider(3).stream(request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Server {
            status: 500,
            message: "boom".into()
        }
    );
    assert_eq!(failing.requests.lock().unwrap().len(), 1);
    let limited = Server::start(vec![Script::status(
        "429 Too Many Requests",
        "retry-after: 3600\r\n",
        r#"{"error":{"message":"quota"}}"#,
    )])
    .await;
    let err = limited.provider(3).stream(request()).await.unwrap_err();
    assert!(err.to_string().contains("retry after 3600 s"), "{err}");
}

#[tokio::test]
async fn an_unreachable_provider_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let provider = OpenAiProvider::new(OpenAiConfig {
        max_retries: 0,
        ..OpenAiConfig::new(format!("http://{addr}/v1"))
    })
    .expect("provider");
    let err = provider.stream(request()).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Unreachable { url, .. } if url.contains(&addr.to_string())),
        "{err}"
    );
}
