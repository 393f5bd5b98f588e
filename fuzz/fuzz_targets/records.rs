//! Fuzz target `records`: runs [`body::run`] on each input (see bodies/records.rs).
#![no_main]

#[path = "../bodies/records.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
