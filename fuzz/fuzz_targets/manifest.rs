//! Fuzz target `manifest`: runs [`body::run`] on each input (see bodies/manifest.rs).
#![no_main]

#[path = "../bodies/manifest.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
