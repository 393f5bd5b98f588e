//! Server-sent events, as OpenAI-compatible servers stream them: bytes in,
//! whatever their split across reads; the `data` of each complete event
//! out, with a bound on how much one event may take.
//!
//! The parsing is `sse-core`'s decoder (a linear state machine: each byte is
//! looked at once, however the reads split the lines, and CR, LF and CRLF
//! all end a line). What this module adds is the bound: the bytes read
//! since the last event carrying data — a data line that never ends, an
//! event of a thousand data lines, an endless comment or unknown field,
//! which the decoder skips without storing — may not pass
//! [`MAX_EVENT_BYTES`]. Past it the stream fails with
//! [`SseError::EventTooLarge`] instead of growing a buffer, or reading,
//! without end.

use std::num::NonZeroUsize;

use sse_core::{SseDecoder, SseEvent};

/// Most bytes one event may take on the wire, and so most bytes of it held
/// in memory. A streamed chat chunk is a few hundred bytes; a whole answer
/// or a large tool call sent as one event is well under a megabyte. 8 MiB
/// leaves room for odd servers while a hostile one costs at most this much.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

/// Why a byte stream is not one this reader will go on with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event (or a line outside any event) passed [`MAX_EVENT_BYTES`].
    #[error(
        "an event larger than the {limit}-byte limit (the server sent {read} bytes without \
         completing one)"
    )]
    EventTooLarge {
        /// The limit, [`MAX_EVENT_BYTES`].
        limit: usize,
        /// Bytes read since the last complete event when the limit was hit.
        read: usize,
    },
}

/// Splits a byte stream into SSE events and yields their data.
#[derive(Debug)]
pub struct SseReader {
    decoder: SseDecoder,
    /// Bytes consumed since the last event carrying data.
    since_event: usize,
    /// Where the bytes read so far leave the stream.
    position: Position,
}

/// Where the bytes read so far leave the stream, line by line: whether the
/// current line and the current event have anything in them yet, and
/// whether the last byte was a CR (whose LF, if next, ends the same line).
#[derive(Debug, Default)]
struct Position {
    line: bool,
    event: bool,
    after_cr: bool,
}

impl Position {
    fn advance(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    // A blank line ends the event.
                    self.event &= self.line;
                    self.line = false;
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.line = true;
                    self.event = true;
                    self.after_cr = false;
                }
            }
        }
    }
}

impl Default for SseReader {
    fn default() -> Self {
        Self {
            decoder: SseDecoder::with_limit(
                NonZeroUsize::new(MAX_EVENT_BYTES).expect("MAX_EVENT_BYTES is not zero"),
            ),
            since_event: 0,
            position: Position::default(),
        }
    }
}

impl SseReader {
    /// Feeds bytes as they were read; returns the data of every event they
    /// complete (multi-line data joined with `\n`; comments, `retry` and
    /// other fields ignored), or the error that ends the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        let mut rest = bytes;
        loop {
            let before = rest;
            let next = self.decoder.next(&mut rest);
            let consumed = &before[..before.len() - rest.len()];
            self.since_event = self.since_event.saturating_add(consumed.len());
            self.position.advance(consumed);
            match next {
                Some(Ok(SseEvent::Message(message))) => {
                    self.since_event = 0;
                    events.push(message.data);
                }
                Some(Ok(SseEvent::Retry(_))) => {}
                Some(Err(_)) => return Err(self.too_large()),
                None => {
                    if self.since_event > MAX_EVENT_BYTES {
                        return Err(self.too_large());
                    }
                    return Ok(events);
                }
            }
        }
    }

    /// Whether the stream is in the middle of an event (a stream that ends
    /// here broke off mid-event unless this is false).
    pub fn mid_event(&self) -> bool {
        self.position.event
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: MAX_EVENT_BYTES,
            read: self.since_event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `size`; the events, or the first error.
    fn feed_in(reader: &mut SseReader, bytes: &[u8], size: usize) -> Result<Vec<String>, SseError> {
        let mut out = Vec::new();
        for piece in bytes.chunks(size) {
            out.extend(reader.feed(piece)?);
        }
        Ok(out)
    }

    #[test]
    fn events_split_anywhere_across_reads_come_out_whole_and_in_order() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\r\r";
        for split in 1..stream.len() {
            let mut reader = SseReader::default();
            let mut out = reader.feed(&stream[..split]).unwrap();
            out.extend(reader.feed(&stream[split..]).unwrap());
            assert_eq!(
                out,
                ["{\"a\":1}", "{\"b\":2}", "[DONE]"],
                "split at {split}"
            );
            assert!(!reader.mid_event());
        }
    }

    #[test]
    fn byte_by_byte_crlf_and_multi_line_data() {
        let stream = "event: x\r\ndata: one\r\ndata:two\r\n\r\ndata: é\n\nretry: 5\n\n: ping\r\r";
        let mut reader = SseReader::default();
        assert_eq!(
            feed_in(&mut reader, stream.as_bytes(), 1).unwrap(),
            ["one\ntwo", "é"]
        );
        assert!(!reader.mid_event());
    }

    #[test]
    fn an_unfinished_event_is_mid_event() {
        let mut reader = SseReader::default();
        assert!(reader.feed(b"data: {\"a\"").unwrap().is_empty());
        assert!(reader.mid_event());
        assert_eq!(reader.feed(b"}\r").unwrap(), Vec::<String>::new());
        assert!(reader.mid_event());
        assert_eq!(reader.feed(b"\n\r\n").unwrap(), ["{\"a\"}"]);
        assert!(!reader.mid_event());
        assert!(reader.feed(b": a comment").unwrap().is_empty());
        assert!(reader.mid_event());
    }

    /// An endless data line fails on the read that takes it past the limit:
    /// at most one read beyond [`MAX_EVENT_BYTES`] was ever taken in.
    #[test]
    fn an_endless_line_fails_at_the_limit() {
        const READ: usize = 64 << 10;
        let mut reader = SseReader::default();
        let piece = vec![b'x'; READ];
        assert!(reader.feed(b"data: ").unwrap().is_empty());
        let mut fed = 6;
        let err = loop {
            match reader.feed(&piece) {
                Ok(events) => assert!(events.is_empty()),
                Err(e) => break e,
            }
            fed += READ;
            assert!(
                fed <= MAX_EVENT_BYTES + READ,
                "read {fed} bytes past the limit"
            );
        };
        let SseError::EventTooLarge { limit, read } = err;
        assert_eq!(limit, MAX_EVENT_BYTES);
        assert!(
            fed <= MAX_EVENT_BYTES && MAX_EVENT_BYTES < fed + READ,
            "{fed}"
        );
        assert!(read <= MAX_EVENT_BYTES + READ, "{read}");
        assert!(err.to_string().contains("8388608-byte limit"), "{err}");
    }

    /// The bound holds however the bytes are spent: many data lines of one
    /// event, or an endless comment the decoder skips without storing.
    #[test]
    fn many_lines_or_an_endless_comment_hit_the_same_limit() {
        let line = b"data: 0123456789abcdef0123456789abcdef0123456789abcdef\n";
        let lines = line.repeat(MAX_EVENT_BYTES / line.len() + 1);
        let mut reader = SseReader::default();
        assert!(matches!(
            feed_in(&mut reader, &lines, 4096),
            Err(SseError::EventTooLarge { .. })
        ));

        let mut reader = SseReader::default();
        let comment = [b":".as_slice(), &vec![b' '; MAX_EVENT_BYTES]].concat();
        assert!(matches!(
            feed_in(&mut reader, &comment, 4096),
            Err(SseError::EventTooLarge { .. })
        ));
    }

    /// Events just under the limit pass, one after another: the count
    /// starts again at each event.
    #[test]
    fn events_under_the_limit_pass_one_after_another() {
        let data = "y".repeat(MAX_EVENT_BYTES - 16);
        let event = format!("data: {data}\n\n");
        let mut reader = SseReader::default();
        for _ in 0..3 {
            let out = feed_in(&mut reader, event.as_bytes(), 1 << 16).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].len(), data.len());
        }
    }
}
