//! A bounded check of a GGUF file's header, metadata and tensor infos, run
//! before candle's reader ([`read`]): a hostile or damaged file is refused
//! with a one-line [`LocalError`] before anything is allocated from the
//! numbers in it.
//!
//! candle's `gguf_file::Content::read` bounds each string and array by the
//! bytes left in the file, but not what the file makes it allocate (every
//! metadata value becomes a 32-byte `Value`, so a file of one-byte array
//! elements costs 32 times its size), and it divides by a zero
//! `general.alignment`. This check walks the same layout without keeping
//! anything: magic and version; the counts; each key (at most
//! [`MAX_KEY_BYTES`]) and value (known type, strings at most
//! [`MAX_STRING_BYTES`], arrays nested at most [`MAX_ARRAY_DEPTH`], at most
//! [`MAX_METADATA_VALUES`] values in all); `general.alignment` a power of
//! two; each tensor's name (at most [`MAX_TENSOR_NAME_BYTES`]), rank (at
//! most [`MAX_TENSOR_DIMS`]), type (one candle runs), element count (at
//! least one, no overflow, a whole number of blocks) and data (inside the
//! file). Every
//! length is also checked against the bytes actually left in the file
//! before it is skipped.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;

use super::LocalError;
use super::error::candle_message;

/// Longest metadata key: the GGUF specification's limit (2^16 - 1 bytes).
pub const MAX_KEY_BYTES: u64 = u16::MAX as u64;

/// Longest tensor name: the GGUF specification's limit (llama.cpp's
/// `GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME_BYTES: u64 = 64;

/// Longest metadata string. The longest in real models are chat templates
/// (tens of KB) and single tokens; 16 MiB leaves ample room.
pub const MAX_STRING_BYTES: u64 = 16 << 20;

/// Most metadata values in all (array elements count one each). candle
/// keeps each as a 32-byte value: this bounds that memory to 256 MiB,
/// whatever the file. The largest real vocabularies (Gemma's 262,144
/// tokens, with their scores and types; Qwen's 151,646 tokens and merges)
/// need under a million.
pub const MAX_METADATA_VALUES: u64 = 1 << 23;

/// Most metadata entries (keys). Real models have a few dozen.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;

/// Most tensors. The largest llama-family files hold a few thousand.
pub const MAX_TENSORS: u64 = 1 << 16;

/// Most dimensions of a tensor: ggml's `GGML_MAX_DIMS`.
pub const MAX_TENSOR_DIMS: u32 = 4;

/// Deepest nesting of arrays in arrays. llama.cpp reads no nested arrays
/// at all; this keeps the walk (and candle's recursive reader) shallow.
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// Skips longer than this seek instead of reading through.
const SKIP_BY_SEEK: u64 = 64 << 10;

/// The metadata key that sets where tensor data is aligned.
const ALIGNMENT_KEY: &[u8] = b"general.alignment";

/// GGUF metadata value types, by their number in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    /// Fixed-size scalars, with their size in bytes.
    Scalar(u64),
    /// A boolean: one byte, 0 or 1.
    Bool,
    /// A length-prefixed string.
    String,
    /// A typed, length-prefixed array.
    Array,
}

impl ValueType {
    fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            0 | 1 => Self::Scalar(1),
            2 | 3 => Self::Scalar(2),
            4..=6 => Self::Scalar(4),
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10..=12 => Self::Scalar(8),
            _ => return None,
        })
    }
}

/// The ggml tensor types candle reads, by their number in the file.
fn ggml_type(n: u32) -> Option<GgmlDType> {
    Some(match n {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Why the walk stopped: the file is not a GGUF file this reader takes, or
/// it stores a tensor type candle cannot run.
enum Refusal {
    NotGguf(String),
    UnsupportedType(u32),
    Io(std::io::Error),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// Shorthand for a refusal with its reason.
fn refuse<T>(reason: String) -> Result<T, Refusal> {
    Err(Refusal::NotGguf(reason))
}

/// A reader that knows where it is and how many bytes the file has left.
struct Walk<'a, R> {
    reader: &'a mut R,
    pos: u64,
    end: u64,
    /// Whether lengths and counts are 32-bit (GGUF version 1) or 64-bit.
    wide: bool,
    /// Metadata values seen so far.
    values: u64,
}

impl<R: Read + Seek> Walk<'_, R> {
    fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    /// Reads `N` bytes, which the file must still have.
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Refusal> {
        if self.remaining() < N as u64 {
            return refuse(format!("it is cut short in {what} at byte {}", self.pos));
        }
        let mut out = [0u8; N];
        self.reader.read_exact(&mut out)?;
        self.pos += N as u64;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Refusal> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, Refusal> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// A length or count: 32-bit in version 1, 64-bit after.
    fn length(&mut self, what: &str) -> Result<u64, Refusal> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    /// Bytes of a length prefix.
    fn prefix_size(&self) -> u64 {
        if self.wide { 8 } else { 4 }
    }

    /// Moves past `n` bytes, which the file must still have.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), Refusal> {
        if n > self.remaining() {
            return refuse(format!(
                "{what} needs {n} bytes at byte {}, past the end of the file",
                self.pos
            ));
        }
        if n > SKIP_BY_SEEK {
            self.reader.seek(SeekFrom::Current(n as i64))?;
        } else {
            let copied = std::io::copy(&mut (&mut *self.reader).take(n), &mut std::io::sink())?;
            if copied != n {
                return refuse(format!("it is cut short in {what} at byte {}", self.pos));
            }
        }
        self.pos += n;
        Ok(())
    }

    /// A string's length, checked against `limit` and the file; the string
    /// itself is then to be read or skipped by the caller.
    fn string_length(&mut self, limit: u64, what: &str) -> Result<u64, Refusal> {
        let len = self.length(what)?;
        if len > limit {
            return refuse(format!(
                "{what} is {len} bytes long, more than the {limit} allowed"
            ));
        }
        if len > self.remaining() {
            return refuse(format!(
                "{what} is {len} bytes long, past the end of the file"
            ));
        }
        Ok(len)
    }

    /// Reads a string of at most `limit` bytes.
    fn string(&mut self, limit: u64, what: &str) -> Result<Vec<u8>, Refusal> {
        let len = self.string_length(limit, what)?;
        let mut out = vec![0u8; len as usize];
        self.reader.read_exact(&mut out)?;
        self.pos += len;
        Ok(out)
    }

    /// Counts `n` more metadata values against [`MAX_METADATA_VALUES`].
    fn count_values(&mut self, n: u64, key: &str) -> Result<(), Refusal> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return refuse(format!(
                "its metadata holds more than {MAX_METADATA_VALUES} values (at {key})"
            ));
        }
        Ok(())
    }

    /// Walks one value of type `value_type`; returns its bytes, zero
    /// extended, if it is a scalar (for `general.alignment`).
    fn value(
        &mut self,
        value_type: ValueType,
        depth: u32,
        key: &str,
    ) -> Result<Option<u64>, Refusal> {
        match value_type {
            ValueType::Scalar(size) => {
                if size > self.remaining() {
                    return refuse(format!("it is cut short in the value of {key}"));
                }
                let mut buf = [0u8; 8];
                let n = size as usize;
                self.reader.read_exact(&mut buf[..n])?;
                self.pos += size;
                Ok(Some(u64::from_le_bytes(buf)))
            }
            ValueType::Bool => match self.bytes::<1>(key)?[0] {
                0 | 1 => Ok(None),
                b => refuse(format!("{key} holds the boolean {b}, neither 0 nor 1")),
            },
            ValueType::String => {
                let len = self.string_length(MAX_STRING_BYTES, &format!("a string of {key}"))?;
                self.skip(len, key)?;
                Ok(None)
            }
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return refuse(format!(
                        "{key} nests arrays more than {MAX_ARRAY_DEPTH} deep"
                    ));
                }
                let type_number = self.u32(key)?;
                let Some(element) = ValueType::from_u32(type_number) else {
                    return refuse(format!("{key} is an array of unknown type {type_number}"));
                };
                let len = self.length(key)?;
                self.count_values(len, key)?;
                let min_size = match element {
                    ValueType::Scalar(size) => size,
                    ValueType::Bool => 1,
                    ValueType::String => self.prefix_size(),
                    ValueType::Array => 4 + self.prefix_size(),
                };
                if len.saturating_mul(min_size) > self.remaining() {
                    return refuse(format!(
                        "{key} is an array of {len} values, more than the rest of the file holds"
                    ));
                }
                match element {
                    // Fixed-size elements: skipped at once.
                    ValueType::Scalar(size) => self.skip(len * size, key)?,
                    _ => {
                        for _ in 0..len {
                            self.value(element, depth + 1, key)?;
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Checks the header, metadata and tensor infos of the GGUF file `reader`
/// holds (from its current position), as described in the module doc,
/// without allocating from the numbers in it. Leaves the reader somewhere
/// after them.
pub fn check<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<(), LocalError> {
    walk(reader).map_err(|refusal| match refusal {
        Refusal::NotGguf(reason) => LocalError::NotGguf {
            path: path.to_owned(),
            reason,
        },
        Refusal::UnsupportedType(n) => {
            LocalError::UnsupportedQuantization(format!("GGML type {n}"))
        }
        Refusal::Io(e) => LocalError::io("cannot read", path, e),
    })
}

/// Reads the GGUF file `reader` holds (from its current position) with
/// candle's reader, once [`check`] has passed it.
pub fn read<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<Content, LocalError> {
    let start = reader
        .stream_position()
        .map_err(|e| LocalError::io("cannot read", path, e))?;
    check(reader, path)?;
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| LocalError::io("cannot read", path, e))?;
    Content::read(reader).map_err(|e| {
        let message = candle_message(&e);
        // candle reports a tensor type it does not know as
        // "unknown dtype for tensor N", N being the GGML type number.
        match message.strip_prefix("unknown dtype for tensor ") {
            Some(number) => {
                LocalError::UnsupportedQuantization(format!("GGML type {}", number.trim()))
            }
            None => LocalError::NotGguf {
                path: path.to_owned(),
                reason: message.lines().next().unwrap_or_default().to_owned(),
            },
        }
    })
}

fn walk<R: Read + Seek>(reader: &mut R) -> Result<(), Refusal> {
    let start = reader.stream_position()?;
    let end = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(start))?;
    let mut w = Walk {
        reader,
        pos: start,
        end,
        wide: true,
        values: 0,
    };
    if w.remaining() < 4 {
        return refuse("it is shorter than a GGUF header".into());
    }
    if &w.bytes::<4>("the magic")? != b"GGUF" {
        return refuse("it does not start with the GGUF magic".into());
    }
    let version = w.u32("the version")?;
    w.wide = match version {
        1 => false,
        2 | 3 => true,
        other => {
            return refuse(format!(
                "GGUF version {other} is not supported (1 to 3 are)"
            ));
        }
    };
    let tensors = w.length("the tensor count")?;
    let entries = w.length("the metadata count")?;
    if tensors > MAX_TENSORS {
        return refuse(format!(
            "it declares {tensors} tensors, more than the {MAX_TENSORS} allowed"
        ));
    }
    if entries > MAX_METADATA_ENTRIES {
        return refuse(format!(
            "it declares {entries} metadata entries, more than the {MAX_METADATA_ENTRIES} allowed"
        ));
    }

    let mut alignment = candle_core::quantized::gguf_file::DEFAULT_ALIGNMENT;
    for _ in 0..entries {
        let key = w.string(MAX_KEY_BYTES, "a metadata key")?;
        // Quoted and escaped: a key is the file's text, and a refusal must
        // stay one line whatever it holds.
        let key_text = format!("{:?}", String::from_utf8_lossy(&key));
        let type_number = w.u32(&key_text)?;
        let Some(value_type) = ValueType::from_u32(type_number) else {
            return refuse(format!("{key_text} has unknown value type {type_number}"));
        };
        let value = w.value(value_type, 0, &key_text)?;
        // candle drops a string's trailing NULs: so does the comparison.
        let end_of_key = key.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if key[..end_of_key] == *ALIGNMENT_KEY {
            // candle aligns tensor data to general.alignment if it is an
            // integer of 32 bits or less (32 without it) and divides by
            // it: it must be such an integer and a power of two, as
            // llama.cpp requires, or candle would read the data elsewhere
            // than the file means, or divide by zero.
            let n = match (type_number, value) {
                (0 | 2 | 4, Some(raw)) => Some(raw),
                (1, Some(raw)) => u64::try_from(raw as u8 as i8).ok(),
                (3, Some(raw)) => u64::try_from(raw as u16 as i16).ok(),
                (5, Some(raw)) => u64::try_from(raw as u32 as i32).ok(),
                _ => None,
            };
            match n {
                Some(n) if n.is_power_of_two() => alignment = n,
                _ => {
                    return refuse(
                        "general.alignment is not an integer power of two (32 bits or less)".into(),
                    );
                }
            }
        }
    }

    let mut extents = Vec::with_capacity(tensors as usize);
    for _ in 0..tensors {
        let name = w.string(MAX_TENSOR_NAME_BYTES, "a tensor name")?;
        // Quoted and escaped, as keys are.
        let name = format!("{:?}", String::from_utf8_lossy(&name));
        let rank = w.u32(&name)?;
        if rank > MAX_TENSOR_DIMS {
            return refuse(format!(
                "tensor {name} has {rank} dimensions, more than {MAX_TENSOR_DIMS}"
            ));
        }
        let mut elements: u64 = 1;
        for _ in 0..rank {
            let dim = w.length(&name)?;
            let Some(product) = elements.checked_mul(dim) else {
                return refuse(format!(
                    "tensor {name} has more elements than can be counted"
                ));
            };
            elements = product;
        }
        // candle views an empty tensor's data (an empty allocation, whose
        // address is 1) as blocks aligned to 2 or 4 bytes: a misaligned
        // slice, which panics (or is undefined behaviour without debug
        // assertions). No real model holds an empty tensor.
        if elements == 0 {
            return refuse(format!("tensor {name} has no elements"));
        }
        let type_number = w.u32(&name)?;
        let dtype = ggml_type(type_number).ok_or(Refusal::UnsupportedType(type_number))?;
        let offset = w.u64(&name)?;
        let block = dtype.block_size() as u64;
        if !elements.is_multiple_of(block) {
            return refuse(format!(
                "tensor {name} has {elements} elements, not a whole number of {dtype:?} blocks of {block}"
            ));
        }
        let bytes = (elements / block).saturating_mul(dtype.type_size() as u64);
        extents.push((name, offset, bytes));
    }
    let data_start = w.pos.div_ceil(alignment).saturating_mul(alignment);
    for (name, offset, bytes) in extents {
        let fits = data_start
            .checked_add(offset)
            .and_then(|at| at.checked_add(bytes))
            .is_some_and(|past| past <= end);
        if !fits {
            return refuse(format!(
                "tensor {name} needs {bytes} bytes at offset {offset}, past the end of the file"
            ));
        }
    }
    Ok(())
}
