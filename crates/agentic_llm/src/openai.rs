//! The OpenAI-compatible chat-completions protocol with SSE streaming, as
//! OpenAI, Ollama, vLLM, llama.cpp's server and LM Studio speak it.
//!
//! Every wait is bounded ([`OpenAiConfig`]): the connection
//! ([`DEFAULT_CONNECT_TIMEOUT`]), the status and headers after the request
//! was sent ([`DEFAULT_RESPONSE_TIMEOUT`]) and the silence between two reads
//! of the stream ([`DEFAULT_IDLE_TIMEOUT`]); and every read: one SSE event
//! ([`MAX_EVENT_BYTES`](crate::sse::MAX_EVENT_BYTES)), the body of an error
//! answer ([`MAX_ERROR_BODY`]). Dropping the future of
//! [`LlmProvider::stream`] (while connecting or waiting for the headers) or
//! the stream it returned (while the body is read) closes the connection.
//!
//! A request is retried only where that is safe: when it provably never
//! reached the server (the connection could not be made: refused, no such
//! host, connect timeout), and when the server answered 429 or 503 (it
//! says it did not take the request: rate limited, overloaded or still
//! loading the model). A request that may have reached the server (the
//! connection broke after it was sent, no answer in time, any other status)
//! is not sent again, and nothing is retried once the stream has started.

use std::fmt;
use std::time::Duration;

use agentic_core::error_chain;
use agentic_core::llm::{
    ChatChunk, ChatMessage, ChatRequest, ChatStream, ChunkSender, LlmError, LlmProvider, Role,
    Usage,
};
use async_trait::async_trait;
use reqwest::Url;
use serde_json::{Value, json};

use crate::sse::SseReader;

/// Longest `retry-after` honoured; a provider asking for more fails the call.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// First backoff after a failed attempt; doubled each time.
const BASE_BACKOFF: Duration = Duration::from_millis(200);
/// Most bytes of an error answer's body read for its message: a provider's
/// error is a line or a small JSON object; the rest is never read (a server
/// answering 401 with 200 MB must not cost 200 MB).
pub const MAX_ERROR_BODY: usize = 64 << 10;
/// Default [`OpenAiConfig::connect_timeout`]: a server that is up accepts
/// a connection in milliseconds, a remote one with TLS in well under a
/// second; ten seconds leaves room for a slow network.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`OpenAiConfig::response_timeout`]: streaming servers send their
/// headers at once, but some (Ollama) first load the model, which can take
/// a minute from a slow disk.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`OpenAiConfig::idle_timeout`]: a streaming server sends a chunk
/// per token, but a long prompt on a CPU can take minutes of prefill before
/// the first one; two minutes of silence means it is stuck.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`OpenAiConfig::max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// An API key. It is sent only as the `Authorization` header (marked
/// sensitive) and prints as `***` everywhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Whether `requested` is the server `configured` names, or a path under
/// it: both parse as URLs with the same scheme, host and port (the scheme's
/// default port when none is written), and `configured`'s path is a prefix
/// of `requested`'s, segment by segment (`/v1` covers `/v1/` and `/v1/x`,
/// not `/v10`). Anything that does not parse is not the same server. An API
/// key configured for one server is only sent where this holds.
pub fn same_server(configured: &str, requested: &str) -> bool {
    let (Ok(configured), Ok(requested)) = (Url::parse(configured), Url::parse(requested)) else {
        return false;
    };
    let segments = |url: &Url| -> Vec<String> {
        url.path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (prefix, path) = (segments(&configured), segments(&requested));
    configured.scheme() == requested.scheme()
        && configured.host().is_some()
        && configured.host() == requested.host()
        && configured.port_or_known_default() == requested.port_or_known_default()
        && path.starts_with(&prefix)
}

/// Where the provider is, how to talk to it, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL, up to and including the API version (`http://host:8080/v1`).
    pub base_url: String,
    /// API key, if the server wants one.
    pub api_key: Option<ApiKey>,
    /// Retries of a request that is safe to send again (see the module's
    /// doc).
    pub max_retries: u32,
    /// Longest wait for the connection (TCP and TLS) to be made.
    pub connect_timeout: Duration,
    /// Longest wait, from the start of the request (connecting included),
    /// for the response's status and headers.
    pub response_timeout: Duration,
    /// Longest wait for the next bytes of a response's body.
    pub idle_timeout: Duration,
}

impl OpenAiConfig {
    /// The server at `base_url`, with no key and the default retries and
    /// timeouts.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            max_retries: DEFAULT_MAX_RETRIES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A provider speaking the OpenAI-compatible protocol.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    config: OpenAiConfig,
}

/// How an attempt failed: worth another try (after the wait, if any), or
/// not.
enum Failure {
    Retry(LlmError, Option<Duration>),
    Final(LlmError),
}

impl OpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            // A redirect would send the prompt to a server nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| LlmError::Unreachable {
                url: config.base_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Self { client, config })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        )
    }

    /// Sends the request, retrying what is safe to retry; the response once
    /// it is `200 OK`.
    async fn send(&self, body: &[u8]) -> Result<reqwest::Response, LlmError> {
        let url = self.url();
        let mut attempt = 0;
        loop {
            let failure = match self.attempt(&url, body).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let (failure, wait) = match failure {
                Failure::Final(e) => return Err(e),
                Failure::Retry(e, wait) => (e, wait),
            };
            let wait = wait.unwrap_or(BASE_BACKOFF * 2u32.saturating_pow(attempt));
            if attempt >= self.config.max_retries || wait > MAX_RETRY_AFTER {
                return Err(failure);
            }
            tracing::warn!(attempt = attempt + 1, error = %failure, ?wait, "LLM request failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt: the `200 OK` response, or how it failed.
    async fn attempt(&self, url: &str, body: &[u8]) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body.to_vec());
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(&key.0);
        }
        let timeout = self.config.response_timeout;
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Ok(Ok(response)) => response,
            // The connection was never made: nothing reached the server.
            Ok(Err(e)) if e.is_connect() => {
                let message = if e.is_timeout() {
                    format!(
                        "no connection within {:?} (the connect timeout)",
                        self.config.connect_timeout
                    )
                } else {
                    error_chain(&e)
                };
                return Err(Failure::Retry(
                    LlmError::Unreachable {
                        url: url.to_owned(),
                        message,
                    },
                    None,
                ));
            }
            // The request may have reached the server: never sent twice.
            Ok(Err(e)) => {
                return Err(Failure::Final(LlmError::Unreachable {
                    url: url.to_owned(),
                    message: format!(
                        "{} (not retried: the request may have been sent)",
                        error_chain(&e)
                    ),
                }));
            }
            Err(_) => {
                return Err(Failure::Final(LlmError::Unreachable {
                    url: url.to_owned(),
                    message: format!(
                        "no response within {timeout:?} of sending the request (the response timeout)"
                    ),
                }));
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let (error, retry_after) = status_error(response, self.config.idle_timeout).await;
        Err(match &error {
            LlmError::RateLimited { .. } | LlmError::Server { status: 503, .. } => {
                Failure::Retry(error, retry_after)
            }
            _ => Failure::Final(error),
        })
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let body = serde_json::to_vec(&request_body(&request))
            .map_err(|e| LlmError::Malformed(format!("cannot encode the request: {e}")))?;
        let response = self.send(&body).await?;
        let (tx, stream) = ChatStream::channel();
        tokio::spawn(pump(response, tx, self.config.idle_timeout));
        Ok(stream)
    }
}

/// Reads the SSE body and forwards each chunk as soon as it is parsed;
/// stops (dropping the connection) when the reader drops the stream, when
/// no bytes came for `idle`, or when an event passes the size limit.
async fn pump(mut response: reqwest::Response, tx: ChunkSender, idle: Duration) {
    let mut reader = SseReader::default();
    let mut finished = false;
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(idle, response.chunk()) => read,
            () = tx.closed() => return,
        };
        let bytes = match read {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) if finished && !reader.mid_event() => return,
            Ok(Ok(None)) => {
                let _ = tx
                    .send(Err(LlmError::StreamBroken(
                        "the connection closed before the stream was finished".into(),
                    )))
                    .await;
                return;
            }
            Ok(Err(e)) => {
                let _ = tx.send(Err(LlmError::StreamBroken(error_chain(&e)))).await;
                return;
            }
            Err(_) => {
                let _ = tx
                    .send(Err(LlmError::StreamBroken(format!(
                        "no data from the provider for {idle:?} (the idle timeout)"
                    ))))
                    .await;
                return;
            }
        };
        let events = match reader.feed(&bytes) {
            Ok(events) => events,
            Err(e) => {
                let _ = tx.send(Err(LlmError::Malformed(e.to_string()))).await;
                return;
            }
        };
        for data in events {
            if data.trim() == "[DONE]" {
                return;
            }
            match translate(&data) {
                Ok(chunks) => {
                    for chunk in chunks {
                        finished |= matches!(chunk, ChatChunk::Finished(_));
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// The chunks one SSE event carries, in order: text, tool-call parts, the
/// finish reason, usage.
fn translate(data: &str) -> Result<Vec<ChatChunk>, LlmError> {
    let clip = |s: &str| s.chars().take(200).collect::<String>();
    let value: Value = serde_json::from_str(data)
        .map_err(|e| LlmError::Malformed(format!("{e}: {}", clip(data))))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(LlmError::StreamBroken(format!(
            "the provider reported: {message}"
        )));
    }
    let mut chunks = Vec::new();
    let choice = value.get("choices").and_then(|c| c.get(0));
    if let Some(delta) = choice.and_then(|c| c.get("delta")) {
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            chunks.push(ChatChunk::Text(text.to_owned()));
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let function = call.get("function");
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                chunks.push(ChatChunk::ToolCallDelta {
                    index: u32::try_from(index)
                        .map_err(|_| LlmError::Malformed(format!("tool call index {index}")))?,
                    id: call.get("id").and_then(Value::as_str).map(str::to_owned),
                    name: function
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    arguments: function
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
    }
    if let Some(reason) = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
    {
        chunks.push(ChatChunk::Finished(Some(reason.to_owned())));
    }
    if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
        let count = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        chunks.push(ChatChunk::Usage(Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        }));
    }
    Ok(chunks)
}

/// The request as the protocol wants it.
fn request_body(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = request.max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

fn message_json(m: &ChatMessage) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({"role": role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

/// The error a non-200 response stands for, with the provider's message
/// (from at most [`MAX_ERROR_BODY`] bytes of its body, read for at most
/// `idle`), and the wait its `retry-after` asks for.
async fn status_error(
    mut response: reqwest::Response,
    idle: Duration,
) -> (LlmError, Option<Duration>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    // What has come by then is the message, however slowly it drips.
    let _ = tokio::time::timeout(idle, async {
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    let room = MAX_ERROR_BODY - body.len();
                    body.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                _ => break,
            }
        }
    })
    .await;
    // The rest of the body is never read: dropping the response closes the
    // connection.
    drop(response);
    let text = String::from_utf8_lossy(&body);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(300).collect::<String>())
        .replace('\n', " ");
    let error = match status {
        401 | 403 => LlmError::Unauthorized { status, message },
        429 => LlmError::RateLimited {
            retry_after,
            message,
        },
        500..=599 => LlmError::Server { status, message },
        _ => LlmError::Refused { status, message },
    };
    (error, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_become_chunks_in_order() {
        let data = r#"{"choices":[{"delta":{"content":"Hi","tool_calls":[{"index":0,"id":"c1","function":{"name":"calc","arguments":"{\"a\""}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        assert_eq!(
            translate(data).unwrap(),
            vec![
                ChatChunk::Text("Hi".into()),
                ChatChunk::ToolCallDelta {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("calc".into()),
                    arguments: "{\"a\"".into()
                },
                ChatChunk::Finished(Some("tool_calls".into())),
                ChatChunk::Usage(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
            ]
        );
        assert!(matches!(translate("{nope"), Err(LlmError::Malformed(_))));
        assert!(
            translate(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_key_goes_only_to_the_server_it_was_configured_for() {
        let configured = "https://api.example.com/v1";
        for same in [
            "https://api.example.com/v1",
            "https://API.example.com:443/v1/",
            "https://api.example.com/v1/sub",
        ] {
            assert!(same_server(configured, same), "{same}");
        }
        for other in [
            "http://api.example.com/v1",
            "https://api.example.com:8443/v1",
            "https://api.example.com.evil.test/v1",
            "https://evil.test/v1",
            "https://api.example.com/v10",
            "https://api.example.com/",
            "https://user@evil.test/v1",
            "not a url",
        ] {
            assert!(!same_server(configured, other), "{other}");
        }
        assert!(same_server(
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1"
        ));
        assert!(!same_server(
            "http://127.0.0.1:8080/v1",
            "http://localhost:8080/v1"
        ));
    }

    /// The retry rule rests on what reqwest says of real failures: a
    /// refused connection is a connect error (retried), a connection that
    /// breaks after the request was written is not (never sent twice).
    #[tokio::test]
    async fn only_a_connection_never_made_is_retried() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let provider =
            OpenAiProvider::new(OpenAiConfig::new(format!("http://{closed}/v1"))).unwrap();
        let url = provider.url();
        assert!(matches!(
            provider.attempt(&url, b"{}").await,
            Err(Failure::Retry(LlmError::Unreachable { .. }, None))
        ));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            // Read the request, then close without answering.
            let _ = socket.read(&mut buf).await;
        });
        let provider = OpenAiProvider::new(OpenAiConfig::new(format!("http://{addr}/v1"))).unwrap();
        let url = provider.url();
        match provider.attempt(&url, b"{}").await {
            Err(Failure::Final(LlmError::Unreachable { message, .. })) => {
                assert!(message.contains("not retried"), "{message}");
            }
            Err(Failure::Final(e) | Failure::Retry(e, _)) => panic!("{e}"),
            Ok(_) => panic!("a closed connection answered"),
        }
    }

    #[test]
    fn an_api_key_never_prints() {
        let key = ApiKey::new("sk-sentinel");
        let config = OpenAiConfig {
            api_key: Some(key),
            ..OpenAiConfig::new("http://x")
        };
        assert!(!format!("{config:?}").contains("sentinel"));
    }
}
