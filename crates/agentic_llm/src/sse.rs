//! Server-sent events, as OpenAI-compatible servers stream them: bytes in,
//! whatever their split across reads; the `data:` payload of each complete
//! event out.

/// Splits a byte stream into SSE events and yields their data.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes as they were read; returns the data of every event they
    /// complete (multi-line data joined with `\n`; comments and other
    /// fields ignored).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.buffer) {
            let raw: Vec<u8> = self.buffer.drain(..end + separator).collect();
            if let Some(data) = event_data(&raw[..end]) {
                events.push(data);
            }
        }
        events
    }

    /// Bytes of an event not completed yet (a stream that ends here broke
    /// off mid-event unless this is empty).
    pub fn pending(&self) -> &[u8] {
        &self.buffer
    }
}

/// Where the first complete event ends (a blank line), and the length of
/// the separator.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buffer.len() {
        for separator in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buffer[i..].starts_with(separator) {
                return Some((i, separator.len()));
            }
        }
        i += 1;
    }
    None
}

/// The data of one event: its `data:` lines joined, or `None` without any.
fn event_data(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_across_reads_come_out_whole_and_in_order() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut parser = SseParser::default();
            let mut out = parser.feed(&stream[..split]);
            out.extend(parser.feed(&stream[split..]));
            assert_eq!(
                out,
                ["{\"a\":1}", "{\"b\":2}", "[DONE]"],
                "split at {split}"
            );
            assert!(parser.pending().is_empty());
        }
    }

    #[test]
    fn byte_by_byte_and_multi_line_data() {
        let stream = "event: x\ndata: one\ndata:two\n\ndata: é\n\n";
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for b in stream.as_bytes() {
            out.extend(parser.feed(&[*b]));
        }
        assert_eq!(out, ["one\ntwo", "é"]);
    }

    #[test]
    fn an_unfinished_event_stays_pending() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: {\"a\"").is_empty());
        assert_eq!(parser.pending(), b"data: {\"a\"");
    }
}
