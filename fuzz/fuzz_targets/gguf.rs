//! Fuzz target `gguf`: runs [`body::run`] on each input (see bodies/gguf.rs).
#![no_main]

#[path = "../bodies/gguf.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
