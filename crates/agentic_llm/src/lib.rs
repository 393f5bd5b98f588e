//! lion's LLM providers: adapters of the kernel's
//! [`LlmProvider`](agentic_core::llm::LlmProvider) port.
//!
//! - [`openai`] — the OpenAI-compatible chat-completions protocol with SSE
//!   streaming (OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio).
//! - [`sse`] — the server-sent-events reader it reads streams with, bounded
//!   per event.
//! - [`local`] — the embedded local model: a GGUF chat model run in-process
//!   on the CPU, and the per-user cache it is pulled into.

pub mod local;
pub mod openai;
pub mod sse;

pub use local::{LocalConfig, LocalProvider};
pub use openai::{ApiKey, OpenAiConfig, OpenAiProvider};
