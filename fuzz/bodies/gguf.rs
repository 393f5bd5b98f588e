//! The body of the `gguf` fuzz target, shared with the corpus-replay test
//! of `agentic_llm` (`tests/fuzz_corpus.rs`): a GGUF model file, read as
//! `LocalModel::load` reads it before the weights — the bounded check
//! ([`gguf::check`]), candle's header and metadata reader, the
//! architecture, tokenizer and chat template ([`model::inspect`]) — and
//! then each tensor's data, as the weights loader reads it.
//!
//! What must hold, whatever the bytes: nothing panics, aborts or allocates
//! without bound (the fuzzer's memory limit is the judge); a refusal is a
//! one-line [`LocalError`]; a file the bounded check passes is one
//! candle's reader reads, and every tensor it declares lies inside the
//! file.

use std::io::Cursor;
use std::path::Path;

use agentic_llm::local::{LocalError, gguf, model};
use candle_core::Device;

/// Runs the checks above on one input.
pub fn run(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let one_line = |e: &LocalError| {
        let message = e.to_string();
        assert!(!message.contains('\n'), "not one line: {message:?}");
    };

    let checked = gguf::check(&mut Cursor::new(data), path);
    if let Err(e) = &checked {
        one_line(e);
    }

    let mut cursor = Cursor::new(data);
    let content = match gguf::read(&mut cursor, path) {
        Ok(content) => content,
        Err(e) => {
            one_line(&e);
            assert!(
                checked.is_err(),
                "the bounded check passes a file candle's reader refuses: {e}"
            );
            return;
        }
    };
    for name in content.tensor_infos.keys() {
        if let Err(e) = content.tensor(&mut cursor, name, &Device::Cpu) {
            let message = e.to_string();
            assert!(
                !message.contains("remaining in file"),
                "a tensor the check passed lies outside the file: {message}"
            );
        }
    }

    if let Err(e) = model::inspect(&mut Cursor::new(data), path) {
        one_line(&e);
    }
}
