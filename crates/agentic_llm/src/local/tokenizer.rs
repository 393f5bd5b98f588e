//! The tokenizer of a GGUF chat model, built from the file's own
//! vocabulary (`tokenizer.ggml.tokens`), merges (`tokenizer.ggml.merges`)
//! and token types: byte-level BPE (`gpt2` in GGUF terms) with the `tokenizers`
//! crate, a byte-level pre-tokenizer that adds no prefix space, and the
//! model's control tokens (`<|im_start|>`, `<|im_end|>`...) recognised in
//! text as single tokens.
//!
//! candle's own GGUF tokenizer helper is not used: it adds a leading space
//! for SmolLM2's `smollm` pre-tokenizer, which llama.cpp does not.
//!
//! Decoding drops control tokens. [`StreamDecoder`] turns tokens into text as
//! they are generated, holding back the bytes of a character split across
//! tokens until it is complete.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::LocalError;
use super::error::{candle_message, escaped};

/// GGUF token type of a control token (dropped when decoding).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token (matched whole in text, kept
/// when decoding).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The pre-tokenizer regex of Llama 3 (`llama-bpe` in GGUF terms).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's tokenizer: text to token ids and back.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// The same tokenizer reading control-token text as plain text.
    plain: Tokenizer,
    /// The raw bytes each token stands for; empty for control tokens.
    token_bytes: Vec<Vec<u8>>,
    tokens: Vec<String>,
    control: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata. Only `gpt2`
    /// (byte-level BPE) tokenizers are supported.
    pub fn from_gguf(content: &Content) -> Result<Self, LocalError> {
        let kind = metadata_str(content, "tokenizer.ggml.model")?;
        if kind != "gpt2" {
            // Escaped: the file's text, in a one-line refusal.
            return Err(LocalError::UnsupportedTokenizer(
                kind.escape_debug().to_string(),
            ));
        }
        let pre = content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("default", String::as_str);
        let pre_tokenizer = pre_tokenizer(pre)?;

        let tokens: Vec<String> = metadata_array(content, "tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| metadata_error("tokenizer.ggml.tokens", e))?;
        let merges: Vec<(String, String)> = metadata_array(content, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let merge = v
                    .to_string()
                    .map_err(|e| metadata_error("tokenizer.ggml.merges", e))?;
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| LocalError::Metadata {
                        key: "tokenizer.ggml.merges".into(),
                        reason: format!("merge {merge:?} is not two tokens"),
                    })
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .and_then(|a| a.iter().map(Value::to_i32).collect())
                .map_err(|e| metadata_error("tokenizer.ggml.token_type", e))?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(LocalError::Metadata {
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| {
                LocalError::Tokenizer(format!("cannot build the BPE model: {}", escaped(e)))
            })?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let added = |kind: i32| {
            tokens
                .iter()
                .zip(&types)
                .filter(move |(_, t)| **t == kind)
                .map(move |(tok, _)| {
                    AddedToken::from(tok.clone(), kind == TOKEN_TYPE_CONTROL).normalized(false)
                })
        };
        let added_error = |e: tokenizers::Error| {
            LocalError::Tokenizer(format!("cannot add special tokens: {}", escaped(e)))
        };
        inner
            .add_special_tokens(added(TOKEN_TYPE_CONTROL))
            .map_err(added_error)?;
        inner
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED))
            .map_err(added_error)?;

        let byte_of = unicode_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(tok, &t)| match t {
                TOKEN_TYPE_CONTROL => Vec::new(),
                TOKEN_TYPE_USER_DEFINED => tok.as_bytes().to_vec(),
                _ => tok
                    .chars()
                    .flat_map(|c| match byte_of.get(&c) {
                        Some(b) => vec![*b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect(),
            })
            .collect();

        let id_of = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .filter(|&id| (id as usize) < tokens.len())
        };
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            bos: id_of("tokenizer.ggml.bos_token_id"),
            eos: id_of("tokenizer.ggml.eos_token_id"),
            inner,
            plain,
            token_bytes,
            tokens,
            control,
        })
    }

    /// The token ids of `text`. Control tokens written in the text (such as
    /// `<|im_start|>`) become their single ids; no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LocalError::Tokenizer(format!("cannot encode: {e}")))
    }

    /// The token ids of `text` read as plain text: control-token spellings
    /// in it (a message quoting `<|im_start|>`) stay ordinary text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.plain
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LocalError::Tokenizer(format!("cannot encode: {e}")))
    }

    /// The text of `ids`, control tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LocalError::Tokenizer(format!("cannot decode: {e}")))
    }

    /// How many tokens the vocabulary has.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary entry of `id` as the GGUF file spells it.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the vocabulary entry spelled `token`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a control token (dropped when decoding).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The beginning-of-sequence token's id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token's id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The raw bytes each token stands for, indexed by id (empty for
    /// control tokens), for [`StreamDecoder`].
    pub fn token_bytes(&self) -> &[Vec<u8>] {
        &self.token_bytes
    }
}

/// Turns generated tokens into text as they come: bytes of a character
/// that is not complete yet are held back until it is.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds a token's bytes; returns the text that is now complete, if any.
    pub fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: keep it.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Bytes that can never be valid: replace them.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The bytes still held back at the end of generation, replaced by
    /// U+FFFD since they never became a character.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, LocalError> {
    // GPT-2's split (ByteLevel's own regex), never a prefix space.
    let byte_level = ByteLevel::new(false, false, true);
    Ok(match pre {
        "default" | "gpt2" => byte_level.into(),
        // As llama.cpp: each digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama-bpe" | "llama3" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| LocalError::Tokenizer(format!("bad split pattern: {e}")))?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        other => {
            return Err(LocalError::UnsupportedPreTokenizer(
                other.escape_debug().to_string(),
            ));
        }
    })
}

/// GPT-2's byte-level alphabet, reversed: the character each byte is
/// written as in the vocabulary, mapped back to the byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).unwrap_or(char::REPLACEMENT_CHARACTER);
            extra += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// A string metadata entry.
pub(crate) fn metadata_str<'a>(content: &'a Content, key: &str) -> Result<&'a str, LocalError> {
    metadata(content, key)?
        .to_string()
        .map(String::as_str)
        .map_err(|e| metadata_error(key, e))
}

fn metadata_array<'a>(content: &'a Content, key: &str) -> Result<&'a Vec<Value>, LocalError> {
    metadata(content, key)?
        .to_vec()
        .map_err(|e| metadata_error(key, e))
}

/// A metadata entry, or an error saying it is missing.
fn metadata<'a>(content: &'a Content, key: &str) -> Result<&'a Value, LocalError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| LocalError::Metadata {
            key: key.to_owned(),
            reason: "missing".into(),
        })
}

fn metadata_error(key: &str, e: candle_core::Error) -> LocalError {
    LocalError::Metadata {
        key: key.to_owned(),
        reason: candle_message(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        let lion = "🦁".as_bytes();
        let mut d = StreamDecoder::default();
        assert_eq!(d.push(b"a "), Some("a ".into()));
        assert_eq!(d.push(&lion[..1]), None);
        assert_eq!(d.push(&lion[1..3]), None);
        assert_eq!(d.push(&lion[3..]), Some("🦁".into()));
        assert_eq!(d.push(&[0xFF, b'x']), Some("\u{FFFD}x".into()));
        assert_eq!(d.push(&lion[..2]), None);
        assert_eq!(d.finish(), Some("\u{FFFD}".into()));
        assert_eq!(d.finish(), None);
    }
}
