//! lion's LLM providers: adapters of the kernel's
//! [`LlmProvider`](agentic_core::llm::LlmProvider) port.
//!
//! - [`openai`] — the OpenAI-compatible chat-completions protocol with SSE
//!   streaming (OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio).
//! - [`sse`] — the server-sent-events parser it reads streams with.

pub mod openai;
pub mod sse;

pub use openai::{ApiKey, OpenAiConfig, OpenAiProvider};
