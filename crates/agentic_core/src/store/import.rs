//! Importing records sealed by another store, verbatim (`lion store copy`):
//! they keep their bytes, positions, times and hashes, so the copy is the
//! same chain and verifies against the same head. These are the checks
//! every adapter's [`EventStore::import`](super::EventStore::import) makes
//! before writing them (the reducer's rules are applied by the adapter's
//! projections as for an append), and [`copy`], which moves a whole log.

use super::{EventStore, StoreError};
use crate::chain::{ChainHead, ChainVerifier};
use crate::event::{EventEnvelope, SystemEvent};
use uuid::Uuid;

/// Checks that `records` continue the log whose head is `head` — each at the
/// next position, linked to the one before, its hash its contents' — and
/// returns the head after them.
pub fn check_sealed<'r>(
    head: ChainHead,
    records: impl IntoIterator<Item = &'r EventEnvelope>,
) -> Result<ChainHead, StoreError> {
    let mut verifier = ChainVerifier::after(head);
    for record in records {
        verifier.check(record).map_err(|e| StoreError::Import {
            seq: record.seq,
            reason: e.to_string(),
        })?;
    }
    Ok(verifier.head())
}

/// Whether `records` are all stored already, each at its own position
/// (`stored` gives an event id's seq): a retried import whose
/// acknowledgement was lost, which writes nothing.
pub fn is_retry(records: &[EventEnvelope], mut stored: impl FnMut(Uuid) -> Option<u64>) -> bool {
    !records.is_empty() && records.iter().all(|r| stored(r.event_id) == Some(r.seq))
}

/// Decodes a record to import, naming it if it does not decode.
pub fn decode(record: &EventEnvelope) -> Result<SystemEvent, StoreError> {
    record.decode().map_err(|e| StoreError::Import {
        seq: record.seq,
        reason: e.to_string(),
    })
}

/// Checks a record's stream version against its stream's version before it
/// (`current`, 0 for a new stream): versions are gapless, and an element's
/// creation opens its own stream, which holds nothing else
/// ([`super::element_stream_rule`]).
pub fn check_stream_version(
    record: &EventEnvelope,
    event: &SystemEvent,
    current: u64,
) -> Result<(), StoreError> {
    let reason = if record.stream_version != current + 1 {
        format!(
            "it is version {} of stream {}, which is at version {current}",
            record.stream_version, record.stream
        )
    } else if matches!(event, SystemEvent::ElementCreated { .. }) && current > 0 {
        format!(
            "it creates an element on stream {}, which exists",
            record.stream
        )
    } else if let Some(rule) = super::element_stream_rule(&record.stream, event) {
        format!(
            "it is a {} event on stream {}: {rule}",
            event.kind(),
            record.stream
        )
    } else {
        return Ok(());
    };
    Err(StoreError::Import {
        seq: record.seq,
        reason,
    })
}

/// Records read from the source, and imported, per transaction.
const COPY_PAGE: usize = 4096;

/// What [`copy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Records written to the destination.
    pub copied: u64,
    /// Records the destination held already (a copy resumed).
    pub already_there: u64,
    /// The source's head when the copy started, which the destination's
    /// head now is.
    pub head: ChainHead,
}

/// Copies the log of `from` into `to`, verbatim, up to `from`'s head when
/// the copy starts: every record of the source is verified (position, link,
/// hash, and the head at the end) as it is read, and imported
/// [`COPY_PAGE`] to a transaction. `to` must be empty or hold a prefix of
/// the same log (a copy that stopped part-way), which is kept and
/// continued. `progress` hears the number of records read so far.
pub async fn copy(
    from: &dyn EventStore,
    to: &dyn EventStore,
    mut progress: impl FnMut(u64),
) -> Result<CopyReport, StoreError> {
    let head = from.head().await?;
    let there = to.head().await?;
    if there.seq > head.seq {
        return Err(StoreError::Import {
            seq: head.seq + 1,
            reason: format!(
                "the destination's log is longer ({} events) than the source's ({}): \
                 it is another log; copy into an empty store",
                there.seq, head.seq
            ),
        });
    }
    let mut verifier = ChainVerifier::watching(head.seq);
    let mut copied = 0;
    let mut next = 1;
    while next <= head.seq {
        let wanted = usize::try_from(head.seq - next + 1).map_or(COPY_PAGE, |n| n.min(COPY_PAGE));
        let page = from.read_from(next, wanted).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for record in &page {
            verifier.check(record)?;
            if record.seq == there.seq && record.hash != there.hash {
                return Err(StoreError::Import {
                    seq: record.seq,
                    reason: "the destination holds a different log (its record there is not \
                             the source's); copy into an empty store"
                        .into(),
                });
            }
        }
        let fresh: Vec<EventEnvelope> = page.into_iter().filter(|r| r.seq > there.seq).collect();
        if !fresh.is_empty() {
            copied += fresh.len() as u64;
            to.import(fresh).await?;
        }
        progress(next - 1);
    }
    let verified = verifier.finish(Some(head))?;
    Ok(CopyReport {
        copied,
        already_there: there.seq,
        head: verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::seal;
    use crate::{ElementData, NewEvent};
    use serde_json::Map;
    use uuid::Uuid;

    fn sealed(n: usize) -> Vec<EventEnvelope> {
        let mut head = ChainHead::EMPTY;
        (0..n)
            .map(|_| {
                let element = ElementData::new(Map::new(), None);
                let event = NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7());
                let mut record = event.encode().unwrap().record;
                record.stream_version = 1;
                head = seal(&head, &mut record);
                record
            })
            .collect()
    }

    #[test]
    fn an_element_off_its_own_stream_or_an_intruder_on_one_is_refused() {
        let element = ElementData::new(Map::new(), None);
        let own = format!("element:{}", element.id);
        let created = SystemEvent::ElementCreated { element };
        let mut record = sealed(1).remove(0);
        record.stream = own.clone();
        assert!(check_stream_version(&record, &created, 0).is_ok());
        for stream in ["notes".to_owned(), format!("element:{}", Uuid::now_v7())] {
            record.stream = stream;
            let refused = check_stream_version(&record, &created, 0).unwrap_err();
            assert!(
                refused.to_string().contains("belongs on its own stream"),
                "{refused}"
            );
        }
        record.stream = own;
        let intruder = SystemEvent::TaskCancelled {
            task_id: Uuid::now_v7(),
            reason: "x".into(),
        };
        let refused = check_stream_version(&record, &intruder, 0).unwrap_err();
        assert!(
            refused.to_string().contains("holds only its creation"),
            "{refused}"
        );
    }

    #[test]
    fn a_continuation_passes_and_a_broken_one_names_the_record() {
        let records = sealed(3);
        let last = ChainHead {
            seq: 3,
            hash: records[2].hash,
        };
        assert_eq!(check_sealed(ChainHead::EMPTY, &records).unwrap(), last);
        let after_first = ChainHead {
            seq: 1,
            hash: records[0].hash,
        };
        assert_eq!(check_sealed(after_first, &records[1..]).unwrap(), last);
        // Not following the head: the first record is at the wrong place.
        let err = check_sealed(after_first, &records).unwrap_err();
        assert!(matches!(err, StoreError::Import { seq: 1, .. }), "{err}");
        // A record changed after sealing.
        let mut tampered = records.clone();
        tampered[2].payload.push(b' ');
        let err = check_sealed(ChainHead::EMPTY, &tampered).unwrap_err();
        assert!(matches!(err, StoreError::Import { seq: 3, .. }), "{err}");
    }

    #[test]
    fn stream_versions_must_follow_on() {
        let records = sealed(1);
        let event = decode(&records[0]).unwrap();
        check_stream_version(&records[0], &event, 0).unwrap();
        let err = check_stream_version(&records[0], &event, 1).unwrap_err();
        assert!(err.to_string().contains("which is at version 1"), "{err}");
    }
}
