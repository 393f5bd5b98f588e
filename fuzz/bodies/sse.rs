//! The body of the `sse` fuzz target, shared with the corpus-replay test of
//! `agentic_llm` (`tests/fuzz_corpus.rs`): a server-sent-events body, as
//! the OpenAI-compatible client feeds it to [`SseReader`] read by read.
//!
//! The input's first byte `n` says how many of the next bytes are read
//! sizes (`n % 32` of them, each 1 to 256 bytes; the last one repeats); the
//! rest is the stream, fed in reads of those sizes. The same stream is also
//! fed in one read.
//!
//! What must hold, whatever the bytes and the split: nothing panics; the
//! split changes nothing — the same events in the same order, an error
//! (the 8 MiB bound) or none, the same `mid_event` at the end; no event's data holds a CR, and
//! an LF only where data lines were joined.

use agentic_llm::sse::{SseError, SseReader};

/// What feeding a stream gave: the events' data, the error that ended it
/// (if one did) and whether it ended mid-event.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The data of each event, in order.
    pub events: Vec<String>,
    /// The error that ended the stream.
    pub error: Option<SseError>,
    /// [`SseReader::mid_event`] after the last read (or the error).
    pub mid_event: bool,
}

/// Feeds `stream` to a new reader in reads of `sizes` (cycling through
/// them; one read of everything if there are none).
pub fn feed(stream: &[u8], sizes: &[usize]) -> Outcome {
    let mut reader = SseReader::default();
    let mut outcome = Outcome {
        events: Vec::new(),
        error: None,
        mid_event: false,
    };
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (read, after) = rest.split_at(size);
        rest = after;
        match reader.feed(read) {
            Ok(events) => outcome.events.extend(events),
            Err(e) => {
                outcome.error = Some(e);
                break;
            }
        }
    }
    outcome.mid_event = reader.mid_event();
    outcome
}

/// Runs the checks above on one input.
pub fn run(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(n % 32).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();

    let split = feed(stream, &sizes);
    let whole = feed(stream, &[]);
    assert_eq!(
        split.events, whole.events,
        "the split across reads changed the events"
    );
    // Past the limit, how far the reader got depends on the reads: only
    // that it failed must not.
    assert_eq!(
        split.error.is_some(),
        whole.error.is_some(),
        "the split across reads changed the error: {:?} / {:?}",
        split.error,
        whole.error
    );
    if whole.error.is_none() {
        assert_eq!(
            split.mid_event, whole.mid_event,
            "the split across reads changed mid_event"
        );
    }
    for data in &split.events {
        assert!(!data.contains('\r'), "an event's data holds a CR: {data:?}");
    }
}
