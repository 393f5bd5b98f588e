//! The body of the `records` fuzz target, shared with the corpus-replay
//! test of `agentic_core` (`tests/fuzz_corpus.rs`): stored records read
//! back, as the SQLite adapter's replay and `verify` read them.
//!
//! The input is a `HEAD` file and a log, in the layout [`parse`] reads: the
//! columns of each `events` row, as the adapter's `envelope()` turns them
//! into an [`EventEnvelope`]. The body then does what replay does with them:
//! - with the chain checked: each record's position and link
//!   ([`ChainVerifier::check_link`]), its seal ([`check_seal`]), then its
//!   payload decoded ([`SystemEvent::decode`]) and folded; the first error
//!   ends it, then [`ChainVerifier::finish`] against the head;
//! - without: every payload decoded and folded into a [`State`] (this body
//!   goes on past a record replay would stop at, to reach the ones after).
//!
//! What must hold, whatever the bytes: nothing panics; errors print; a
//! `HEAD` line that parses prints back to itself; a payload that decodes
//! re-encodes to bytes that decode and re-encode to the same bytes; and
//! folding agrees with the check stores make before appending — an event
//! [`State::check`] accepts is applied, one it refuses is refused by
//! [`State::apply_owned`] too, and a refused event leaves the state as it
//! was.

use agentic_core::chain::{ChainHead, ChainVerifier, Hash, check_seal};
use agentic_core::event::{EventEnvelope, SystemEvent};
use agentic_core::state::State;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Bytes of a record's fixed-width columns, in order: seq (u64), event_id
/// (16), stream_version (u64), recorded_at (i64 microseconds),
/// correlation_id (16), causation flag (1) and id (16), schema_version
/// (u16), prev_hash (32), hash (32). Then the stream (a u8 length and its
/// bytes) and the payload (a u32 length and its bytes). Integers are
/// little-endian.
const FIXED: usize = 8 + 16 + 8 + 8 + 16 + 1 + 16 + 2 + 32 + 32;

/// A `HEAD` file's text and the records of a log, as read from an input.
pub struct Log<'a> {
    /// The `HEAD` file's bytes (the input's first byte is their length).
    pub head: &'a [u8],
    /// The records, in the order of the log.
    pub records: Vec<EventEnvelope>,
    /// Why the row after the last record could not be read, if one could
    /// not (replay stops there with an error).
    pub malformed: Option<String>,
}

/// Reads an input: a u8 length and that many bytes of `HEAD` file, then
/// records in the layout of [`FIXED`]. Bytes left over that do not make a
/// whole record are ignored (a row is read whole or not at all).
pub fn parse(data: &[u8]) -> Log<'_> {
    let mut log = Log {
        head: &[],
        records: Vec::new(),
        malformed: None,
    };
    let Some((&head_len, rest)) = data.split_first() else {
        return log;
    };
    let head_len = usize::from(head_len).min(rest.len());
    log.head = &rest[..head_len];
    let mut rest = &rest[head_len..];
    while let Some((record, after)) = record(rest) {
        rest = after;
        match record {
            Ok(e) => log.records.push(e),
            Err(e) => {
                log.malformed = Some(e);
                break;
            }
        }
    }
    log
}

/// The next record of `data` and the bytes after it; `None` when `data`
/// does not hold a whole record.
fn record(data: &[u8]) -> Option<(Result<EventEnvelope, String>, &[u8])> {
    let (fixed, rest) = data.split_at_checked(FIXED)?;
    let (&stream_len, rest) = rest.split_first()?;
    let (stream, rest) = rest.split_at_checked(usize::from(stream_len))?;
    let (payload_len, rest) = rest.split_at_checked(4)?;
    let payload_len = u32::from_le_bytes(payload_len.try_into().ok()?) as usize;
    let (payload, rest) = rest.split_at_checked(payload_len)?;

    let mut at = 0;
    let mut take = |n: usize| {
        let bytes = &fixed[at..at + n];
        at += n;
        bytes
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let uuid_of = |b: &[u8]| Uuid::from_slice(b).expect("16 bytes");
    let hash_of = |b: &[u8]| Hash(b.try_into().expect("32 bytes"));
    let seq = u64_of(take(8));
    let event_id = uuid_of(take(16));
    let stream_version = u64_of(take(8));
    let micros = u64_of(take(8)) as i64;
    let correlation_id = uuid_of(take(16));
    let has_causation = take(1)[0] != 0;
    let causation = uuid_of(take(16));
    let schema_version = u16::from_le_bytes(take(2).try_into().expect("2 bytes"));
    let prev_hash = hash_of(take(32));
    let hash = hash_of(take(32));

    // As the adapter reads a row: a time out of range and a stream that is
    // not text are malformed columns.
    let envelope = (|| {
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| format!("record at seq {seq}: malformed recorded_at"))?;
        let stream = std::str::from_utf8(stream)
            .map_err(|_| format!("record at seq {seq}: malformed stream"))?
            .to_owned();
        Ok(EventEnvelope {
            seq,
            event_id,
            stream,
            stream_version,
            recorded_at,
            correlation_id,
            causation_id: has_causation.then_some(causation),
            schema_version,
            payload: payload.to_vec(),
            prev_hash,
            hash,
        })
    })();
    Some((envelope, rest))
}

/// Writes `head` and `records` in the layout [`parse`] reads (the seed
/// corpus is made this way from the golden logs). Streams longer than 255
/// bytes are cut.
#[allow(dead_code)] // used by the corpus tests, not by the fuzz target
pub fn encode(head: &str, records: &[EventEnvelope]) -> Vec<u8> {
    let head = &head.as_bytes()[..head.len().min(255)];
    let mut out = vec![head.len() as u8];
    out.extend_from_slice(head);
    for e in records {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(e.event_id.as_bytes());
        out.extend_from_slice(&e.stream_version.to_le_bytes());
        out.extend_from_slice(&e.recorded_at.timestamp_micros().to_le_bytes());
        out.extend_from_slice(e.correlation_id.as_bytes());
        out.push(u8::from(e.causation_id.is_some()));
        out.extend_from_slice(e.causation_id.unwrap_or_default().as_bytes());
        out.extend_from_slice(&e.schema_version.to_le_bytes());
        out.extend_from_slice(&e.prev_hash.0);
        out.extend_from_slice(&e.hash.0);
        let stream = &e.stream.as_bytes()[..e.stream.len().min(255)];
        out.push(stream.len() as u8);
        out.extend_from_slice(stream);
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
    out
}

/// What replay with the chain checked makes of a log: the head it verified
/// and the state it folded, or the first error (as replay prints it).
pub fn replay_verified(log: &Log<'_>) -> Result<(ChainHead, State), String> {
    let recorded = match std::str::from_utf8(log.head) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(ChainHead::parse_line(text).ok_or("malformed HEAD")?),
        Err(_) => return Err("HEAD is not text".into()),
    };
    let mut verifier = ChainVerifier::watching(recorded.map_or(0, |h| h.seq));
    let mut state = State::new();
    for e in &log.records {
        verifier.check_link(e).map_err(|err| chain_error(&err))?;
        check_seal(e).map_err(|err| chain_error(&err))?;
        let event = e.decode().map_err(|err| err.to_string())?;
        state
            .apply_owned(event)
            .map_err(|err| format!("replay refuses seq {}: {err}", e.seq))?;
    }
    if let Some(malformed) = &log.malformed {
        return Err(malformed.clone());
    }
    let head = verifier.finish(recorded).map_err(|err| chain_error(&err))?;
    Ok((head, state))
}

/// A chain error as printed, checking that the seq it names prints too.
fn chain_error(err: &agentic_core::chain::ChainError) -> String {
    format!("{err} (first bad seq {})", err.seq())
}

/// Runs the checks above on one input.
pub fn run(data: &[u8]) {
    let log = parse(data);

    if let Some(head) = std::str::from_utf8(log.head)
        .ok()
        .and_then(ChainHead::parse_line)
    {
        assert_eq!(
            ChainHead::parse_line(&head.to_line()),
            Some(head),
            "a HEAD line does not read back"
        );
    }

    if let Ok((head, _)) = replay_verified(&log) {
        // A verified log ends at the head it reports.
        let last = log.records.last().map_or(ChainHead::EMPTY, |e| ChainHead {
            seq: e.seq,
            hash: e.hash,
        });
        assert_eq!(head, last, "verification reports another head");
    }

    // Replay without the chain: decode and fold every record.
    let mut state = State::new();
    for e in &log.records {
        let Ok(event) = SystemEvent::decode(e.schema_version, &e.payload) else {
            continue;
        };
        let bytes = event.encode().expect("a decoded event encodes");
        let again = SystemEvent::decode(agentic_core::event::EVENT_SCHEMA_VERSION, &bytes)
            .unwrap_or_else(|err| {
                panic!(
                    "a decoded event re-encodes to bytes that do not decode: {err}\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
        assert_eq!(
            again.encode().expect("encodes"),
            bytes,
            "re-encoding is not stable"
        );

        let checked = state.check(&event);
        let before = state.clone();
        let applied = state.apply_owned(event);
        match (&checked, &applied) {
            (Ok(()), Ok(())) => {}
            (Err(_), Err(_)) => {
                let changed = before.diff(&state);
                assert!(
                    changed.is_empty(),
                    "a refused event changed the state: {changed:?}"
                );
            }
            _ => panic!(
                "check and apply disagree on seq {}: check {checked:?}, apply {applied:?}",
                e.seq
            ),
        }
    }
}
