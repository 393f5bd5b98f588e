//! The SHA-256 hash chain that makes the event log tamper-evident.
//!
//! Every stored record carries the hash of its predecessor and its own hash,
//! computed over every field of the record (see [`record_hash`]). Editing,
//! deleting, inserting or reordering records therefore breaks the chain at
//! the first record touched, and [`ChainVerifier`] names that sequence number.
//!
//! A chain alone cannot reveal that its newest records were cut off, so the
//! store also keeps the last committed head ([`ChainHead`]) outside the log
//! (the `HEAD` file of a home). The head may lag the log but never leads it;
//! a log that ends before its head is reported as truncated.
//!
//! What the chain does **not** protect against: anyone able to write the
//! store can rewrite the whole log from some point on, recompute every hash
//! and rewrite `HEAD` to match. The chain detects accidental corruption and
//! partial or careless tampering, not a determined attacker with write access;
//! for that, the head must be published somewhere the attacker cannot reach
//! (signed, or copied off the machine).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::EventEnvelope;

/// Domain-separation tag hashed first, so a record hash can never be
/// mistaken for the hash of anything else.
const RECORD_TAG: &[u8] = b"lion-event-record-v1";

/// A SHA-256 digest, shown and serialised as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash that precedes the first record.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(Hash(out))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..12])
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Hash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// The newest record of a log: its sequence number and hash. `seq == 0` with
/// the genesis hash is the empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the newest record (0 when empty).
    pub seq: u64,
    /// Hash of the newest record ([`Hash::GENESIS`] when empty).
    pub hash: Hash,
}

impl ChainHead {
    /// The head of an empty log.
    pub const EMPTY: ChainHead = ChainHead {
        seq: 0,
        hash: Hash::GENESIS,
    };

    /// Encodes the head as one line, `"<seq> <hex hash>"`, the `HEAD` file format.
    pub fn to_line(&self) -> String {
        format!("{} {}\n", self.seq, self.hash)
    }

    /// Parses the `HEAD` file format written by [`ChainHead::to_line`].
    pub fn parse_line(text: &str) -> Option<ChainHead> {
        let mut parts = text.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let hash = Hash::from_hex(parts.next()?)?;
        parts.next().is_none().then_some(ChainHead { seq, hash })
    }
}

/// Computes a record's hash over every field of its envelope but `hash`.
///
/// Fields are length-prefixed or fixed-width, so no two different records
/// share an encoding.
pub fn record_hash(e: &EventEnvelope) -> Hash {
    let mut h = Sha256::new();
    h.update(RECORD_TAG);
    h.update(e.seq.to_be_bytes());
    h.update(e.prev_hash.0);
    h.update(e.event_id.as_bytes());
    h.update((e.stream.len() as u64).to_be_bytes());
    h.update(e.stream.as_bytes());
    h.update(e.stream_version.to_be_bytes());
    h.update(e.recorded_at.timestamp_micros().to_be_bytes());
    h.update(e.correlation_id.as_bytes());
    match e.causation_id {
        Some(c) => {
            h.update([1]);
            h.update(c.as_bytes());
        }
        None => h.update([0]),
    }
    h.update(e.schema_version.to_be_bytes());
    h.update((e.payload.len() as u64).to_be_bytes());
    h.update(&e.payload);
    Hash(h.finalize().into())
}

/// Where and how a stored log fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A sequence number is missing or out of order (a record was deleted,
    /// inserted or moved).
    #[error("sequence gap at seq {expected}: found seq {found} instead")]
    Gap {
        /// The sequence number that should come next.
        expected: u64,
        /// The sequence number found there.
        found: u64,
    },
    /// A record does not point at its predecessor's hash.
    #[error("broken link at seq {seq}: prev_hash does not match the hash of seq {}", seq - 1)]
    BrokenLink {
        /// The record whose `prev_hash` is wrong.
        seq: u64,
    },
    /// A record's content does not match its own hash (it was edited).
    #[error("hash mismatch at seq {seq}: the record was modified")]
    HashMismatch {
        /// The modified record.
        seq: u64,
    },
    /// The log ends before the head recorded after the last commit.
    #[error("log truncated: it ends at seq {log_ends_at} but HEAD records seq {head_seq}")]
    Truncated {
        /// Last sequence number present in the log.
        log_ends_at: u64,
        /// Sequence number recorded in `HEAD`.
        head_seq: u64,
    },
    /// The record at the head's position has a different hash than the head
    /// recorded: the log was rewritten from there back.
    #[error(
        "HEAD mismatch at seq {seq}: the log's record there differs from the one HEAD recorded"
    )]
    HeadMismatch {
        /// The head's sequence number.
        seq: u64,
    },
}

impl ChainError {
    /// The first sequence number at which the log is bad.
    pub fn seq(&self) -> u64 {
        match *self {
            ChainError::Gap { expected, .. } => expected,
            ChainError::BrokenLink { seq }
            | ChainError::HashMismatch { seq }
            | ChainError::HeadMismatch { seq } => seq,
            ChainError::Truncated { log_ends_at, .. } => log_ends_at + 1,
        }
    }
}

/// Checks that a record's stored hash is the hash of its contents.
pub fn check_seal(e: &EventEnvelope) -> Result<(), ChainError> {
    if record_hash(e) == e.hash {
        Ok(())
    } else {
        Err(ChainError::HashMismatch { seq: e.seq })
    }
}

/// Checks records one by one, in order, against the chain rules.
///
/// Feed every record from seq 1 to [`ChainVerifier::check`], then call
/// [`ChainVerifier::finish`] with the head recorded outside the log.
#[derive(Debug, Clone, Default)]
pub struct ChainVerifier {
    head: ChainHead,
    /// Remembered hashes of (seq, hash) to compare with a recorded head that
    /// lags the log; only the one at `watch_seq` is kept.
    watch: Option<(u64, Option<Hash>)>,
}

impl ChainVerifier {
    /// A verifier starting at the empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier that also remembers the hash at `seq`, so [`finish`]
    /// can compare it with a recorded head that lags the log.
    ///
    /// [`finish`]: ChainVerifier::finish
    pub fn watching(seq: u64) -> Self {
        Self {
            head: ChainHead::EMPTY,
            watch: Some((seq, None)),
        }
    }

    /// A verifier starting after `head`: the first record it checks must
    /// follow it (used to check records that continue a stored log).
    pub fn after(head: ChainHead) -> Self {
        Self { head, watch: None }
    }

    /// Checks the next record: its position, its link and its own hash.
    pub fn check(&mut self, e: &EventEnvelope) -> Result<(), ChainError> {
        self.check_position(e)?;
        check_seal(e)?;
        self.advance(e);
        Ok(())
    }

    /// Checks the next record's position and link only, taking its stored
    /// hash on trust: its seal must then be checked with [`check_seal`] (on
    /// any thread, in any order) before the log counts as verified.
    pub fn check_link(&mut self, e: &EventEnvelope) -> Result<(), ChainError> {
        self.check_position(e)?;
        self.advance(e);
        Ok(())
    }

    /// The record follows the last one checked, and links to its hash.
    fn check_position(&self, e: &EventEnvelope) -> Result<(), ChainError> {
        let expected = self.head.seq + 1;
        if e.seq != expected {
            return Err(ChainError::Gap {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != self.head.hash {
            return Err(ChainError::BrokenLink { seq: e.seq });
        }
        Ok(())
    }

    /// Makes `e` the newest record checked.
    fn advance(&mut self, e: &EventEnvelope) {
        if let Some((seq, slot)) = &mut self.watch
            && *seq == e.seq
        {
            *slot = Some(e.hash);
        }
        self.head = ChainHead {
            seq: e.seq,
            hash: e.hash,
        };
    }

    /// The head of the records checked so far.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Finishes verification against the head recorded after the last commit
    /// (`None` when no head was ever recorded). Returns the verified head.
    pub fn finish(&self, recorded: Option<ChainHead>) -> Result<ChainHead, ChainError> {
        let Some(recorded) = recorded else {
            return Ok(self.head);
        };
        if recorded.seq > self.head.seq {
            return Err(ChainError::Truncated {
                log_ends_at: self.head.seq,
                head_seq: recorded.seq,
            });
        }
        let seen = if recorded.seq == self.head.seq {
            Some(self.head.hash)
        } else if recorded.seq == 0 {
            Some(Hash::GENESIS)
        } else {
            match self.watch {
                Some((seq, hash)) if seq == recorded.seq => hash,
                _ => None,
            }
        };
        match seen {
            Some(hash) if hash == recorded.hash => Ok(self.head),
            Some(_) => Err(ChainError::HeadMismatch { seq: recorded.seq }),
            // The caller did not ask to watch the head's position: only the
            // length can be checked.
            None => Ok(self.head),
        }
    }
}

/// Seals a record in place: places it after `prev`, links it and computes
/// its hash. Returns the new head.
pub fn seal(prev: &ChainHead, e: &mut EventEnvelope) -> ChainHead {
    e.seq = prev.seq + 1;
    e.prev_hash = prev.hash;
    e.hash = record_hash(e);
    ChainHead {
        seq: e.seq,
        hash: e.hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    fn record(payload: &str) -> EventEnvelope {
        EventEnvelope {
            seq: 0,
            event_id: Uuid::now_v7(),
            stream: "s".into(),
            stream_version: 1,
            recorded_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_000_000)
                .expect("valid time"),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            schema_version: 1,
            payload: payload.as_bytes().to_vec(),
            prev_hash: Hash::GENESIS,
            hash: Hash::GENESIS,
        }
    }

    fn chain(n: usize) -> Vec<EventEnvelope> {
        let mut head = ChainHead::EMPTY;
        (0..n)
            .map(|i| {
                let mut e = record(&format!("{{\"n\":{i}}}"));
                head = seal(&head, &mut e);
                e
            })
            .collect()
    }

    fn verify(log: &[EventEnvelope], head: Option<ChainHead>) -> Result<ChainHead, ChainError> {
        let mut v = ChainVerifier::watching(head.map_or(0, |h| h.seq));
        for e in log {
            v.check(e)?;
        }
        v.finish(head)
    }

    fn head_of(log: &[EventEnvelope]) -> ChainHead {
        log.last().map_or(ChainHead::EMPTY, |e| ChainHead {
            seq: e.seq,
            hash: e.hash,
        })
    }

    #[test]
    fn link_and_seal_checks_split_what_check_does() {
        let mut log = chain(5);
        log[2].payload = b"{\"n\":99}".to_vec(); // its hash no longer matches
        let mut linked = ChainVerifier::new();
        for e in &log {
            linked.check_link(e).expect("links are intact");
        }
        assert_eq!(linked.head(), head_of(&log));
        let seals: Vec<_> = log.iter().map(check_seal).collect();
        assert_eq!(seals[2], Err(ChainError::HashMismatch { seq: 3 }));
        assert_eq!(seals.iter().filter(|r| r.is_ok()).count(), 4);
        assert_eq!(verify(&log, None), Err(ChainError::HashMismatch { seq: 3 }));
        log.swap(1, 3);
        let mut v = ChainVerifier::new();
        let first_bad = log.iter().find_map(|e| v.check_link(e).err());
        assert_eq!(
            first_bad,
            Some(ChainError::Gap {
                expected: 2,
                found: 4
            })
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        let log = chain(10);
        assert_eq!(verify(&log, Some(head_of(&log))), Ok(head_of(&log)));
        assert_eq!(verify(&[], None), Ok(ChainHead::EMPTY));
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let mut base = record("{}");
        seal(&ChainHead::EMPTY, &mut base);
        let edits: Vec<fn(&mut EventEnvelope)> = vec![
            |e| e.event_id = Uuid::now_v7(),
            |e| e.stream.push('x'),
            |e| e.stream_version += 1,
            |e| e.recorded_at += chrono::Duration::microseconds(1),
            |e| e.correlation_id = Uuid::now_v7(),
            |e| e.causation_id = Some(Uuid::nil()),
            |e| e.schema_version += 1,
            |e| e.payload.push(b' '),
        ];
        for edit in edits {
            let mut e = base.clone();
            edit(&mut e);
            assert_ne!(record_hash(&e), base.hash);
        }
    }

    #[test]
    fn edits_deletions_and_swaps_are_named() {
        let log = chain(5);
        let head = Some(head_of(&log));

        let mut edited = log.clone();
        edited[2].payload = b"{\"n\":99}".to_vec();
        assert_eq!(
            verify(&edited, head),
            Err(ChainError::HashMismatch { seq: 3 })
        );

        let mut deleted = log.clone();
        deleted.remove(1);
        assert_eq!(
            verify(&deleted, head),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );

        let mut swapped = log.clone();
        swapped.swap(1, 3);
        (swapped[1].seq, swapped[3].seq) = (2, 4);
        assert_eq!(verify(&swapped, head).map_err(|e| e.seq()), Err(2));

        let mut rehashed = log.clone();
        rehashed[2].payload = b"{}".to_vec();
        rehashed[2].hash = record_hash(&rehashed[2]);
        assert_eq!(
            verify(&rehashed, head),
            Err(ChainError::BrokenLink { seq: 4 })
        );
    }

    #[test]
    fn truncation_and_rewrites_are_caught_by_the_head() {
        let log = chain(5);
        let head = Some(head_of(&log));
        assert_eq!(
            verify(&log[..3], head),
            Err(ChainError::Truncated {
                log_ends_at: 3,
                head_seq: 5
            })
        );
        // A head that lags the log is fine when it matches…
        let lagging = Some(head_of(&log[..3]));
        assert_eq!(verify(&log, lagging), Ok(head_of(&log)));
        // …and a mismatch when the log was rewritten under it.
        let other = chain(5);
        assert_eq!(
            verify(&other, lagging),
            Err(ChainError::HeadMismatch { seq: 3 })
        );
    }

    #[test]
    fn head_line_round_trips() {
        let log = chain(2);
        let head = head_of(&log);
        assert_eq!(ChainHead::parse_line(&head.to_line()), Some(head));
        assert_eq!(ChainHead::parse_line("garbage"), None);
        assert_eq!(ChainHead::parse_line("1 abc"), None);
    }
}
