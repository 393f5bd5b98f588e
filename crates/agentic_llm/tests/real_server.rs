//! Against a real OpenAI-compatible model server named by
//! `LION_TEST_LLM_URL` (e.g. llama.cpp's server with SmolLM2-135M-Instruct:
//! `LION_TEST_LLM_URL=http://127.0.0.1:8080/v1`; `LION_TEST_LLM_MODEL`
//! picks the model, default `default`). Ignored by default, so a run
//! without a server counts it as skipped rather than passed; run it with
//! `cargo test -p agentic_llm --test real_server -- --ignored`, where a
//! missing `LION_TEST_LLM_URL` fails it.

use agentic_core::llm::{ChatChunk, ChatMessage, ChatRequest, LlmProvider, Role};
use agentic_llm::{ApiKey, OpenAiConfig, OpenAiProvider};

#[tokio::test]
#[ignore = "needs LION_TEST_LLM_URL: a real OpenAI-compatible server"]
async fn a_real_server_streams_an_answer() {
    let url = std::env::var("LION_TEST_LLM_URL").expect(
        "LION_TEST_LLM_URL must name a real OpenAI-compatible server (e.g. http://127.0.0.1:8080/v1)",
    );
    let provider = OpenAiProvider::new(OpenAiConfig {
        api_key: std::env::var("LION_TEST_LLM_API_KEY").ok().map(ApiKey::new),
        max_retries: 1,
        ..OpenAiConfig::new(url)
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
