//! Against a real OpenAI-compatible model server, when `LION_TEST_LLM_URL`
//! names one (e.g. llama.cpp's server with SmolLM2-135M-Instruct:
//! `LION_TEST_LLM_URL=http://127.0.0.1:8080/v1`; `LION_TEST_LLM_MODEL`
//! picks the model, default `default`). Without it the test says it is
//! skipped and passes.

use agentic_core::llm::{ChatChunk, ChatMessage, ChatRequest, LlmProvider, Role};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};

#[tokio::test]
async fn a_real_server_streams_an_answer() {
    let Ok(url) = std::env::var("LION_TEST_LLM_URL") else {
        eprintln!("skipped: LION_TEST_LLM_URL is not set (point it at a model server to run this)");
        return;
    };
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: url,
        api_key: std::env::var("LION_TEST_LLM_API_KEY").ok().map(ApiKey::new),
        max_retries: 1,
    })
    .expect("provider");
    let request = ChatRequest {
        model: std::env::var("LION_TEST_LLM_MODEL").unwrap_or_else(|_| "default".into()),
        messages: vec![ChatMessage::new(Role::User, "Say hello in three words.")],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_tokens: Some(24),
    };
    let mut stream = provider.stream(request).await.expect("stream");
    let mut text = String::new();
    let mut chunks = 0;
    let mut finished = false;
    while let Some(chunk) = stream.next().await {
        match chunk.expect("chunk") {
            ChatChunk::Text(t) => {
                chunks += 1;
                text.push_str(&t);
            }
            ChatChunk::Finished(_) => finished = true,
            _ => {}
        }
    }
    assert!(finished, "the stream must say it finished");
    assert!(
        chunks > 1,
        "a real server streams several chunks, got {chunks}: {text:?}"
    );
    assert!(!text.trim().is_empty());
}
