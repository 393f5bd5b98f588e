//! The newest records this process's writer committed, kept in memory so
//! that readers following the log in the same process — the kernel's loop,
//! live streams — take them without reading the database and decoding its
//! rows again ([`agentic_core::EventStore::recent`]).
//!
//! The tail holds one unbroken run of sequence numbers, the newest this
//! writer committed, records exactly as stored. It is filled only once a
//! follower has asked for it: a process that nobody follows in (a CLI
//! command appending, a benchmark) does not pay for copying its
//! records. When another process
//! commits between two of this writer's commits, the next commit does not
//! continue the run: the tail starts over from it, and readers of what the
//! other process wrote go to the database, as they must.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use agentic_core::EventEnvelope;

/// Most records the tail holds.
const MAX_RECORDS: usize = 8_192;

/// Most payload bytes the tail holds (large outputs push old records out
/// sooner).
const MAX_BYTES: usize = 8 << 20;

/// The newest committed records, in sequence order (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Tail {
    held: Mutex<Held>,
    /// Whether a follower has asked for records: until then none are kept.
    wanted: AtomicBool,
}

/// The records held and the bytes of their payloads.
#[derive(Debug, Default)]
struct Held {
    records: VecDeque<EventEnvelope>,
    bytes: usize,
}

impl Tail {
    /// Takes in the records of one commit, in sequence order. Records that
    /// do not continue the held run (another process wrote in between)
    /// start it over.
    pub(crate) fn push(&self, committed: impl IntoIterator<Item = EventEnvelope>) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for record in committed {
            if held
                .records
                .back()
                .is_some_and(|last| last.seq + 1 != record.seq)
            {
                held.records.clear();
                held.bytes = 0;
            }
            held.bytes += record.payload.len();
            held.records.push_back(record);
        }
        while held.records.len() > MAX_RECORDS || held.bytes > MAX_BYTES {
            let Some(old) = held.records.pop_front() else {
                break;
            };
            held.bytes -= old.payload.len();
        }
    }

    /// Up to `limit` records from seq `from` on, if the tail holds `from`:
    /// an unbroken run starting there (it may stop before the log's end,
    /// where another process wrote after this one). An empty run when
    /// `from` is just past the newest record it holds: the reader is
    /// caught up with this writer's commits.
    pub(crate) fn read(&self, from: u64, limit: usize) -> Option<Vec<EventEnvelope>> {
        if !self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(true, Ordering::Relaxed);
        }
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let first = held.records.front()?.seq;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        if skip > held.records.len() {
            return None;
        }
        Some(
            held.records
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentic_core::{NewEvent, SystemEvent};
    use uuid::Uuid;

    fn record(seq: u64, payload: usize) -> EventEnvelope {
        let event = SystemEvent::TaskCancelled {
            task_id: Uuid::nil(),
            reason: String::new(),
        };
        let mut record = NewEvent::new(event, Uuid::nil())
            .encode()
            .expect("encode")
            .record;
        record.seq = seq;
        record.payload = vec![b' '; payload];
        record
    }

    fn seqs(records: Option<Vec<EventEnvelope>>) -> Option<Vec<u64>> {
        records.map(|r| r.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn keeps_nothing_until_a_follower_asks() {
        let tail = Tail::default();
        tail.push([record(1, 1)]);
        assert_eq!(seqs(tail.read(1, 10)), None);
        tail.push([record(2, 1)]);
        assert_eq!(seqs(tail.read(2, 10)), Some(vec![2]));
    }

    #[test]
    fn reads_only_an_unbroken_run_it_holds() {
        let tail = Tail::default();
        assert_eq!(seqs(tail.read(1, 10)), None);
        tail.push((5..=8).map(|s| record(s, 1)));
        tail.push([record(9, 1)]);
        assert_eq!(seqs(tail.read(4, 10)), None);
        assert_eq!(seqs(tail.read(5, 2)), Some(vec![5, 6]));
        assert_eq!(seqs(tail.read(7, 10)), Some(vec![7, 8, 9]));
        assert_eq!(seqs(tail.read(10, 10)), Some(vec![]), "caught up");
        assert_eq!(seqs(tail.read(11, 10)), None);
        // Another process wrote 10 and 11: the run starts over at 12.
        tail.push([record(12, 1)]);
        assert_eq!(seqs(tail.read(9, 10)), None);
        assert_eq!(seqs(tail.read(10, 10)), None);
        assert_eq!(seqs(tail.read(12, 10)), Some(vec![12]));
    }

    #[test]
    fn keeps_the_newest_within_its_bounds() {
        let tail = Tail::default();
        assert_eq!(seqs(tail.read(1, 1)), None);
        let n = MAX_RECORDS as u64 + 10;
        tail.push((1..=n).map(|s| record(s, 1)));
        assert_eq!(seqs(tail.read(10, 1)), None);
        assert_eq!(seqs(tail.read(11, 1)), Some(vec![11]));
        tail.push([record(n + 1, MAX_BYTES)]);
        assert_eq!(seqs(tail.read(n, 10)), None);
        assert_eq!(seqs(tail.read(n + 1, 10)), Some(vec![n + 1]));
    }
}
