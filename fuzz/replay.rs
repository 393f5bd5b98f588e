//! Replays a fuzz target's saved inputs as an ordinary test (included by
//! the crates' `tests/fuzz_corpus.rs`): every file of fuzz/corpus/TARGET
//! and fuzz/artifacts/TARGET through the target's body, naming each input
//! that fails.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The fuzz/ directory of the repository.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `body` on the input in `path`; the panic message if it panicked.
pub fn run_file(path: &Path, body: fn(&[u8])) -> Result<(), String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    run_file_bytes(&bytes, body)
}

/// Runs `body` on `bytes`; the panic message if it panicked.
pub fn run_file_bytes(bytes: &[u8], body: fn(&[u8])) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| body(bytes))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Runs `body` over the corpus and the crash artifacts of `target`;
/// fails naming every input that panics. The corpus must not be empty.
pub fn corpus(target: &str, body: fn(&[u8])) {
    let dir = fuzz_dir();
    let corpus = files(&dir.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} is empty: run scripts/fuzz --seed"
    );
    let artifacts = files(&dir.join("artifacts").join(target));
    let failures: Vec<String> = corpus
        .iter()
        .chain(&artifacts)
        .filter_map(|path| {
            run_file(path, body)
                .err()
                .map(|message| format!("{}: {message}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} inputs of {target} fail:\n{}",
        failures.len(),
        corpus.len() + artifacts.len(),
        failures.join("\n")
    );
}

/// Writes a seed input as fuzz corpus file `DIR/TARGET/NAME`, `DIR` being
/// `LION_FUZZ_WRITE_SEEDS`; does nothing when that is not set.
pub fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let Some(dir) = std::env::var_os("LION_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir).join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
