//! The OpenAI-compatible chat-completions protocol with SSE streaming, as
//! OpenAI, Ollama, vLLM, llama.cpp's server and LM Studio speak it.
//!
//! Errors before the stream starts are retried where that is safe (a refused
//! connection, 429 with its `retry-after`, 5xx); nothing is retried once a
//! chunk has been delivered, since the caller has already seen it.

use std::fmt;
use std::time::Duration;

use agentic_core::error_chain;
use agentic_core::llm::{
    ChatChunk, ChatMessage, ChatRequest, ChatStream, ChunkSender, LlmError, LlmProvider, Role,
    Usage,
};
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::sse::SseParser;

/// Longest `retry-after` honoured; a provider asking for more fails the call.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// First backoff after a failed attempt; doubled each time.
const BASE_BACKOFF: Duration = Duration::from_millis(200);

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

/// Where the provider is and how to talk to it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL, up to and including the API version (`http://host:8080/v1`).
    pub base_url: String,
    /// API key, if the server wants one.
    pub api_key: Option<ApiKey>,
    /// Retries of a request that failed before streaming started.
    pub max_retries: u32,
}

/// A provider speaking the OpenAI-compatible protocol.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    config: OpenAiConfig,
}

impl OpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
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
            let mut request = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .body(body.to_vec());
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(&key.0);
            }
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => status_error(response).await,
                Err(e) => LlmError::Unreachable {
                    url: url.clone(),
                    message: error_chain(&e),
                },
            };
            let wait = match &failure {
                LlmError::Unreachable { .. } | LlmError::Server { .. } => {
                    Some(BASE_BACKOFF * 2u32.saturating_pow(attempt))
                }
                LlmError::RateLimited { retry_after, .. } => match retry_after {
                    Some(after) if *after > MAX_RETRY_AFTER => None,
                    Some(after) => Some(*after),
                    None => Some(BASE_BACKOFF * 2u32.saturating_pow(attempt)),
                },
                _ => None,
            };
            match wait {
                Some(wait) if attempt < self.config.max_retries => {
                    tracing::warn!(attempt = attempt + 1, error = %failure, ?wait, "LLM request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(failure),
            }
        }
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
        tokio::spawn(pump(response, tx));
        Ok(stream)
    }
}

/// Reads the SSE body and forwards each chunk as soon as it is parsed;
/// stops (dropping the connection) when the reader drops the stream.
async fn pump(mut response: reqwest::Response, tx: ChunkSender) {
    let mut parser = SseParser::default();
    let mut finished = false;
    loop {
        let read = tokio::select! {
            read = response.chunk() => read,
            () = tx.closed() => return,
        };
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) if finished && parser.pending().iter().all(u8::is_ascii_whitespace) => return,
            Ok(None) => {
                let _ = tx
                    .send(Err(LlmError::StreamBroken(
                        "the connection closed before the stream was finished".into(),
                    )))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(LlmError::StreamBroken(error_chain(&e)))).await;
                return;
            }
        };
        for data in parser.feed(&bytes) {
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

/// The error a non-200 response stands for, with the provider's message.
async fn status_error(response: reqwest::Response) -> LlmError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
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
    match status {
        401 | 403 => LlmError::Unauthorized { status, message },
        429 => LlmError::RateLimited {
            retry_after,
            message,
        },
        500..=599 => LlmError::Server { status, message },
        _ => LlmError::Refused { status, message },
    }
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
    fn an_api_key_never_prints() {
        let key = ApiKey::new("sk-sentinel");
        let config = OpenAiConfig {
            base_url: "http://x".into(),
            api_key: Some(key),
            max_retries: 0,
        };
        assert!(!format!("{config:?}").contains("sentinel"));
    }
}
