//! Fuzz target `sse`: runs [`body::run`] on each input (see bodies/sse.rs).
#![no_main]

#[path = "../bodies/sse.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
