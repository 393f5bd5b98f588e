//! The fuzz targets of `agentic_llm` (fuzz/fuzz_targets: `sse`, `gguf`)
//! replayed on the stable toolchain: each target's body, the very code the
//! fuzzer runs (fuzz/bodies), over every saved input of its corpus
//! (fuzz/corpus/TARGET) and every crash it found (fuzz/artifacts/TARGET),
//! plus a named test per crash with the bug it found. `scripts/fuzz`
//! fuzzes; this only replays.
//!
//! With `LION_FUZZ_WRITE_SEEDS=DIR` set, `seeds_reach_deep` also writes
//! the seed inputs it checks into `DIR/TARGET/` (`scripts/fuzz --seed`).

#[path = "../../../fuzz/bodies/gguf.rs"]
mod gguf;
#[path = "../../../fuzz/replay.rs"]
mod replay;
#[path = "../../../fuzz/bodies/sse.rs"]
mod sse;

use std::io::Cursor;
use std::path::Path;

use agentic_llm::local::model;
use candle_core::quantized::gguf_file::{Value, write};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

#[test]
fn sse_corpus_replays() {
    replay::corpus("sse", sse::run);
}

#[test]
fn gguf_corpus_replays() {
    replay::corpus("gguf", gguf::run);
}

/// The vocabulary of the tiny model: ChatML's two control tokens, then
/// byte-level BPE tokens of "hello world".
const TOKENS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "h",
    "e",
    "l",
    "o",
    "w",
    "r",
    "d",
    "Ġ",
    "\u{10a}",
    "he",
    "ll",
    "hell",
    "hello",
    "Ġw",
    "or",
    "Ġwor",
];

/// Merges building the longer tokens above.
const MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or"];

/// A ChatML template, as SmolLM2's.
const TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A tiny but complete GGUF chat model file of the llama architecture: its
/// metadata (tokenizer, template, context) and two small tensors, one F32
/// and one Q8_0.
fn tiny_gguf() -> Vec<u8> {
    let string = |s: &str| Value::String(s.to_owned());
    let strings = |items: &[&str]| Value::Array(items.iter().map(|s| string(s)).collect());
    let types: Vec<Value> = (0..TOKENS.len())
        .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
        .collect();
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", string("llama")),
        ("general.name", string("tiny")),
        ("general.alignment", Value::U32(32)),
        ("llama.context_length", Value::U32(64)),
        ("tokenizer.ggml.model", string("gpt2")),
        ("tokenizer.ggml.pre", string("smollm")),
        ("tokenizer.ggml.tokens", strings(TOKENS)),
        ("tokenizer.ggml.merges", strings(MERGES)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.chat_template", string(TEMPLATE)),
    ];
    let device = Device::Cpu;
    let dense = Tensor::arange(0f32, 64f32, &device)
        .and_then(|t| t.reshape((2, 32)))
        .expect("a tensor");
    let f32 = QTensor::quantize(&dense, GgmlDType::F32).expect("F32");
    let q8 = QTensor::quantize(&dense, GgmlDType::Q8_0).expect("Q8_0");
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = Cursor::new(Vec::new());
    write(
        &mut out,
        &refs,
        &[("token_embd.weight", &f32), ("output.weight", &q8)],
    )
    .expect("a GGUF file");
    out.into_inner()
}

/// The seeds are real inputs that reach deep: the tiny model reads
/// through every check `LocalModel::load` makes before the weights, and
/// the SSE samples come out as events whatever the split. Written out as
/// the seed corpora when `LION_FUZZ_WRITE_SEEDS` is set.
#[test]
fn seeds_reach_deep() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();

    let tiny = tiny_gguf();
    let info = model::inspect(&mut Cursor::new(&tiny), Path::new("tiny.gguf"))
        .expect("the tiny model reads");
    assert_eq!(info.vocab_size, TOKENS.len());
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.parameters, 128);
    assert_eq!(info.quantization, "F32 x1, Q8_0 x1");
    let mut v3 = tiny.clone();
    v3[4..8].copy_from_slice(&3u32.to_le_bytes());
    model::inspect(&mut Cursor::new(&v3), Path::new("v3.gguf")).expect("version 3 reads");
    seeds.push(("gguf", "tiny-v2.gguf".into(), tiny));
    seeds.push(("gguf", "tiny-v3.gguf".into(), v3));
    // The start of the real SmolLM2 file, if it is cached: its keys and
    // first tokens (cut short, so refused).
    let cache = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cache/lion/models"))
        .and_then(|dir| std::fs::read_dir(dir).ok());
    if let Some(entries) = cache {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "gguf") {
                let mut head = vec![0u8; 4096];
                let n = std::io::Read::read(
                    &mut std::fs::File::open(&path).expect("the cached model"),
                    &mut head,
                )
                .expect("read");
                head.truncate(n);
                seeds.push(("gguf", "smollm2-head.gguf".into(), head));
                break;
            }
        }
    }

    let chunk = |text: &str| {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(text).expect("JSON")
        )
    };
    let openai = [
        chunk("Hel"),
        chunk("lo, wörld 🦁"),
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into(),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    let samples: [(&str, &[u8], &str); 5] = [
        ("openai", &[4, 1, 7, 0, 30], &openai),
        (
            "fields",
            &[2, 5, 2],
            "event: x\r\ndata: one\r\ndata:two\r\n\r\ndata: é\n\nretry: 5\n\n: ping\r\rid: 7\n\n",
        ),
        (
            "bom",
            &[1, 0],
            "\u{feff}data: first\n\ndata: second\r\n\r\n",
        ),
        (
            "unfinished",
            &[3, 9, 0, 4],
            "data: {\"a\"}\r\n\r\n: comment\ndata: {\"b\"",
        ),
        (
            "mixed-ends",
            &[2, 0, 1],
            "data: a\rdata: b\r\n\r\ndata:\n\ndata\n\n",
        ),
    ];
    for (name, sizes, stream) in samples {
        let whole = sse::feed(stream.as_bytes(), &[]);
        assert!(!whole.events.is_empty(), "{name}: no event");
        assert!(whole.error.is_none(), "{name}: {:?}", whole.error);
        let mut input = vec![sizes.len() as u8];
        input.extend_from_slice(sizes);
        input.extend_from_slice(stream.as_bytes());
        seeds.push(("sse", format!("{name}.sse"), input));
    }

    for (target, name, bytes) in &seeds {
        match *target {
            "sse" => sse::run(bytes),
            _ => gguf::run(bytes),
        }
        replay::write_seed(target, name, bytes);
    }
}

// ---- crashes and bounds, each a test of its own ----

/// A GGUF header of `version` declaring no tensors and `entries` metadata
/// entries, which the caller appends.
fn gguf_header(version: u32, entries: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&entries.to_le_bytes());
    out
}

/// A metadata key as GGUF writes it, followed by its value type.
fn gguf_key(out: &mut Vec<u8>, key: &str, value_type: u32) {
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&value_type.to_le_bytes());
}

/// Loads `bytes` as a model file through `LocalModel::load`.
fn load(bytes: &[u8]) -> agentic_llm::local::LocalError {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.gguf");
    std::fs::write(&path, bytes).expect("write");
    agentic_llm::local::LocalModel::load(&path, Default::default())
        .expect_err("a hostile file is refused")
}

/// candle's reader divides by `general.alignment`: a file setting it to 0
/// panicked the loading thread. Refused as not a power of two.
#[test]
fn gguf_alignment_zero_is_refused_not_a_division_by_zero() {
    let mut bytes = gguf_header(3, 1);
    gguf_key(&mut bytes, "general.alignment", 4);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    replay::run_file_bytes(&bytes, gguf::run).expect("the gguf body passes");
    let e = load(&bytes);
    assert!(
        matches!(e, agentic_llm::local::LocalError::NotGguf { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("general.alignment"), "{e}");
}

/// candle keeps each metadata value as a 32-byte `Value`: 9 MB of one-byte
/// array elements cost it 288 MB. Refused past `MAX_METADATA_VALUES`
/// before anything is allocated.
#[test]
fn gguf_metadata_past_the_value_bound_is_refused_before_candle_reads_it() {
    use agentic_llm::local::gguf::MAX_METADATA_VALUES;
    let len = MAX_METADATA_VALUES + 1;
    let mut bytes = gguf_header(3, 1);
    gguf_key(&mut bytes, "tokenizer.ggml.token_type", 9);
    bytes.extend_from_slice(&0u32.to_le_bytes()); // u8 elements
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.resize(bytes.len() + len as usize, 0);
    let e = load(&bytes);
    assert!(
        e.to_string()
            .contains(&format!("more than {MAX_METADATA_VALUES} values")),
        "{e}"
    );
}

/// Lengths of 2^60 — a string, an array, a key — are refused in one line
/// naming what is too long, never allocated.
#[test]
fn gguf_lengths_of_two_to_the_sixty_are_refused_in_one_line() {
    let huge = 1u64 << 60;
    let mut string = gguf_header(3, 1);
    gguf_key(&mut string, "general.name", 8);
    string.extend_from_slice(&huge.to_le_bytes());
    let mut array = gguf_header(3, 1);
    gguf_key(&mut array, "tokenizer.ggml.tokens", 9);
    array.extend_from_slice(&8u32.to_le_bytes());
    array.extend_from_slice(&huge.to_le_bytes());
    let mut key = gguf_header(3, 1);
    key.extend_from_slice(&huge.to_le_bytes());
    for (what, bytes) in [("string", string), ("array", array), ("key", key)] {
        replay::run_file_bytes(&bytes, gguf::run).expect("the gguf body passes");
        let e = load(&bytes).to_string();
        assert!(e.contains("is not a GGUF model file"), "{what}: {e}");
        assert!(!e.contains('\n'), "{what}: {e}");
    }
}

/// Found by the `gguf` fuzz target (fuzz/artifacts/gguf/
/// newline-in-key-splits-refusal): a metadata key is the file's text, and
/// one holding a newline split the refusal naming it over two lines (lion
/// prints a refusal as one line). Keys, tensor names, the architecture and
/// the tokenizer kinds are now escaped in refusals.
#[test]
fn gguf_key_with_a_newline_is_refused_in_one_line() {
    let crash = replay::fuzz_dir().join("artifacts/gguf/newline-in-key-splits-refusal");
    replay::run_file(&crash, gguf::run).expect("the gguf body passes the fuzzer's input");

    let mut unknown_type = gguf_header(3, 1);
    gguf_key(&mut unknown_type, "evil\nkey", 0x6d20_6f7b);
    let mut architecture = gguf_header(3, 1);
    gguf_key(&mut architecture, "general.architecture", 8);
    let arch = "llama\r\nforged line";
    architecture.extend_from_slice(&(arch.len() as u64).to_le_bytes());
    architecture.extend_from_slice(arch.as_bytes());
    for (what, bytes) in [("key", unknown_type), ("architecture", architecture)] {
        replay::run_file_bytes(&bytes, gguf::run).expect("the gguf body passes");
        let e = load(&bytes).to_string();
        assert!(!e.contains('\n') && !e.contains('\r'), "{what}: {e:?}");
    }
}

/// Found by the `gguf` fuzz target (fuzz/artifacts/gguf/
/// empty-tensor-misaligned-slice): candle views a tensor's data as blocks
/// through a raw slice, and an empty tensor's data (an empty allocation at
/// address 1) made it a misaligned slice — a panic in debug builds,
/// undefined behaviour in release. Tensors without elements are refused.
#[test]
fn gguf_empty_tensor_is_refused_before_candle_views_its_data() {
    let crash = replay::fuzz_dir().join("artifacts/gguf/empty-tensor-misaligned-slice");
    replay::run_file(&crash, gguf::run).expect("the gguf body passes the fuzzer's input");

    // One F32 tensor of shape [0], no metadata.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    let name = "token_embd.weight";
    bytes.extend_from_slice(&(name.len() as u64).to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes()); // rank
    bytes.extend_from_slice(&0u64.to_le_bytes()); // dimension
    bytes.extend_from_slice(&0u32.to_le_bytes()); // F32
    bytes.extend_from_slice(&0u64.to_le_bytes()); // offset
    bytes.resize(64, 0);
    replay::run_file_bytes(&bytes, gguf::run).expect("the gguf body passes");
    let e = load(&bytes).to_string();
    assert!(e.contains("has no elements"), "{e}");
}

/// Found by the `gguf` fuzz target (fuzz/artifacts/gguf/
/// backtrace-in-metadata-error), which runs with `RUST_BACKTRACE` set:
/// candle then appends a backtrace, over many lines, to its errors, and a
/// refusal quoting one (here a token type that is not an i32) spread over
/// a screen. Candle's errors are now quoted without it. candle decides
/// once per process whether to capture backtraces, from the environment,
/// which a test cannot safely change for itself: the check runs in a
/// child process of this test binary with `RUST_BACKTRACE=1`.
#[test]
fn gguf_refusals_are_one_line_with_backtraces_on() {
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "--ignored",
            "gguf_crash_inputs_pass_with_backtraces",
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The crash inputs through the gguf body and `LocalModel::load`, each
/// refusal one line; run with `RUST_BACKTRACE=1` by the test above.
#[test]
#[ignore = "run with RUST_BACKTRACE=1 by gguf_refusals_are_one_line_with_backtraces_on"]
fn gguf_crash_inputs_pass_with_backtraces() {
    let crash = replay::fuzz_dir().join("artifacts/gguf/backtrace-in-metadata-error");
    replay::run_file(&crash, gguf::run).expect("the gguf body passes the fuzzer's input");
    let e = load(&std::fs::read(&crash).expect("the crash input")).to_string();
    assert!(!e.contains('\n'), "{e}");
}

/// Found by the `gguf` fuzz target (fuzz/artifacts/gguf/
/// newline-in-token-splits-refusal): the tokenizer library's error quotes
/// a merge's token, the file's text, and one holding a newline split the
/// refusal over two lines. Tokenizer and template errors that quote the
/// file are now escaped.
#[test]
fn gguf_token_with_a_newline_is_refused_in_one_line() {
    let crash = replay::fuzz_dir().join("artifacts/gguf/newline-in-token-splits-refusal");
    replay::run_file(&crash, gguf::run).expect("the gguf body passes the fuzzer's input");
    let e = load(&std::fs::read(&crash).expect("the crash input")).to_string();
    assert!(e.contains("cannot build the BPE model"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
