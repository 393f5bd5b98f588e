//! Checking and re-folding a whole log: [`SqliteStore::verify`] (SQLite's
//! page check, every record's position, link and hash, then `HEAD`) and
//! [`SqliteStore::replay`] (a fresh fold through the reducer, reading and
//! folding on two threads).

use agentic_core::{ChainHead, ChainVerifier, EventEnvelope, State, StoreError, SystemEvent};

use super::SqliteStore;

/// The outcome of a successful [`SqliteStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records checked.
    pub events: u64,
    /// The verified head of the log.
    pub head: ChainHead,
    /// The head recorded in `HEAD`, if the file exists.
    pub recorded_head: Option<ChainHead>,
}

impl SqliteStore {
    /// Checks the whole log: SQLite's own page check, then every record's
    /// position, link and hash, then the recorded head (truncation).
    ///
    /// Runs on the calling thread; it reads the whole log.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let recorded = self.recorded_head()?;
        self.readers.with(|conn| {
            let result: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if result != "ok" {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(result),
                ));
            }
            Ok(())
        })?;
        let mut verifier = ChainVerifier::watching(recorded.map_or(0, |h| h.seq));
        let mut chain_error = None;
        self.readers.scan(1, |e| match verifier.check(&e) {
            Ok(()) => true,
            Err(err) => {
                chain_error = Some(err);
                false
            }
        })?;
        if let Some(e) = chain_error {
            return Err(e.into());
        }
        let head = verifier.finish(recorded)?;
        Ok(VerifyReport {
            events: head.seq,
            head,
            recorded_head: recorded,
        })
    }

    /// Folds the whole log into a fresh [`State`] (replay) and returns it with
    /// the number of events applied. With `verify_chain`, every record's
    /// chain link and hash are checked too.
    ///
    /// Reading runs on a second thread, overlapping with folding on the
    /// calling one; it reads the whole log.
    ///
    /// With `verify_chain`, the log is also checked against the head
    /// recorded in `HEAD` (as [`SqliteStore::verify`] does), so a log cut
    /// short does not replay as if it were whole.
    pub fn replay(&self, verify_chain: bool) -> Result<(State, u64), StoreError> {
        // HEAD first: it never leads the log, so the log read after it is
        // at least as long.
        let recorded = if verify_chain {
            self.recorded_head()?
        } else {
            None
        };
        let length = self.readers.with_head()?.seq;
        let mut state = State::with_capacity(usize::try_from(length).unwrap_or(0));
        let mut count = 0u64;
        let readers = &self.readers;
        let mut fold = |item: Replayed| {
            count += 1;
            let (seq, event) = item.decode();
            apply(&mut state, seq, event?)
        };
        if verify_chain {
            // Reader: rows, their order and links. Folder: apply. Each
            // record's hash check and decoding go to whichever of the two is
            // free (see `pipeline`); errors still come out in log order.
            pipeline(
                |emit| {
                    let mut verifier = ChainVerifier::watching(recorded.map_or(0, |h| h.seq));
                    let mut broken = None;
                    readers.scan(1, |e| match verifier.check_link(&e) {
                        Ok(()) => emit(Replayed::Unsealed(e)),
                        Err(err) => {
                            broken = Some(err);
                            false
                        }
                    })?;
                    match broken {
                        Some(e) => Err(e.into()),
                        None => verifier.finish(recorded).map(|_| ()).map_err(Into::into),
                    }
                },
                Replayed::decode_here,
                &mut fold,
            )?;
        } else {
            // Reader: rows and decoding, straight from SQLite's buffer (a
            // copy for the folder to decode cost more than it saved).
            // Folder: apply.
            pipeline(
                |emit| {
                    readers.with(|conn| {
                        let mut stmt = conn.prepare_cached(
                            "SELECT seq, schema_version, payload FROM events ORDER BY seq",
                        )?;
                        let mut rows = stmt.query([])?;
                        while let Some(row) = rows.next()? {
                            let seq = row.get::<_, i64>(0)? as u64;
                            let version: u16 = row.get(1)?;
                            let payload = row.get_ref(2)?.as_blob()?;
                            if !emit(Replayed::Decoded(seq, decode(seq, version, payload))) {
                                break;
                            }
                        }
                        Ok(())
                    })
                },
                Replayed::decode_here,
                &mut fold,
            )?;
        }
        Ok((state, count))
    }
}

/// Items handed from replay's reader thread to its folder in one message.
const REPLAY_BATCH: usize = 1024;

/// Runs `produce` on a second thread and `consume` on this one, passing items
/// in batches, so the two stages of replay overlap on two cores. `produce`
/// gets an `emit` function that returns false once the consumer has stopped.
/// When the consumer is behind (its queue is full), the producer calls
/// `ripen` on each item of the batch it was about to send, doing work the
/// consumer would otherwise do, instead of waiting idle.
/// The consumer's error wins: it is always about an earlier item.
fn pipeline<T: Send>(
    produce: impl FnOnce(&mut dyn FnMut(T) -> bool) -> Result<(), StoreError> + Send,
    ripen: impl Fn(&mut T) + Send,
    mut consume: impl FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use std::sync::mpsc::TrySendError;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
        let producer = scope.spawn(move || {
            let send = |mut batch: Vec<T>| match tx.try_send(batch) {
                Ok(()) => true,
                Err(TrySendError::Full(returned)) => {
                    batch = returned;
                    batch.iter_mut().for_each(&ripen);
                    tx.send(batch).is_ok()
                }
                Err(TrySendError::Disconnected(_)) => false,
            };
            let mut batch = Vec::with_capacity(REPLAY_BATCH);
            let result = produce(&mut |item| {
                batch.push(item);
                batch.len() < REPLAY_BATCH
                    || send(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(REPLAY_BATCH),
                    ))
            });
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            result
        });
        let mut consumed = Ok(());
        'batches: for batch in rx.iter() {
            for item in batch {
                if let Err(e) = consume(item) {
                    consumed = Err(e);
                    break 'batches;
                }
            }
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(StoreError::Backend("the replay reader panicked".into())));
        consumed.and(produced)
    })
}

/// A record on its way from replay's reader to its folder: its position
/// and link checked, its own hash not yet, and still encoded; or already
/// checked and decoded by the reader while the folder was behind.
enum Replayed {
    /// The stored record, linked into the chain but its hash not checked.
    Unsealed(EventEnvelope),
    /// The decoded event (or why the record is refused).
    Decoded(u64, Result<SystemEvent, StoreError>),
}

impl Replayed {
    /// Checks the record's hash and decodes it, in place, on this thread.
    fn decode_here(&mut self) {
        if let Replayed::Unsealed(e) = self {
            *self = Replayed::Decoded(e.seq, unseal(e));
        }
    }

    /// The record's seq and its event, checking and decoding it if need be.
    fn decode(self) -> (u64, Result<SystemEvent, StoreError>) {
        match self {
            Replayed::Unsealed(e) => (e.seq, unseal(&e)),
            Replayed::Decoded(seq, event) => (seq, event),
        }
    }
}

/// Checks a linked record's own hash, then decodes its payload.
fn unseal(e: &EventEnvelope) -> Result<SystemEvent, StoreError> {
    agentic_core::chain::check_seal(e)?;
    decode(e.seq, e.schema_version, &e.payload)
}

/// Decodes the payload of the record at `seq`.
fn decode(seq: u64, version: u16, payload: &[u8]) -> Result<SystemEvent, StoreError> {
    SystemEvent::decode(version, payload).map_err(|e| StoreError::Corrupt {
        path: format!("event log at seq {seq}"),
        reason: e.to_string(),
    })
}

/// Applies the event at `seq` to `state`.
fn apply(state: &mut State, seq: u64, event: SystemEvent) -> Result<(), StoreError> {
    state.apply_owned(event).map_err(|e| StoreError::Corrupt {
        path: format!("event log at seq {seq}"),
        reason: format!("replay refuses it: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Items as the pipeline's stages see them: `true` once ripened.
    type Item = (usize, bool);

    #[test]
    fn a_pipeline_keeps_order_and_ripens_batches_when_its_consumer_is_behind() {
        const ITEMS: usize = 20 * REPLAY_BATCH + 7;
        let (seen, ripened) = (Mutex::new(Vec::new()), Mutex::new(0));
        // The consumer holds the first item until the producer has had to
        // ripen a batch (its queue of four batches was full).
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let first_tx = Mutex::new(Some(first_tx));
        pipeline(
            |emit| {
                for i in 0..ITEMS {
                    if !emit((i, false)) {
                        break;
                    }
                }
                Ok(())
            },
            |item: &mut Item| {
                item.1 = true;
                if let Some(tx) = first_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
            },
            |item: Item| {
                if item.0 == 0 {
                    first_rx.recv().expect("a ripened batch");
                }
                *ripened.lock().expect("lock") += usize::from(item.1);
                seen.lock().expect("lock").push(item.0);
                Ok(())
            },
        )
        .expect("pipeline");
        let seen = seen.into_inner().expect("lock");
        assert_eq!(seen, (0..ITEMS).collect::<Vec<_>>());
        assert!(ripened.into_inner().expect("lock") >= REPLAY_BATCH);
    }

    #[test]
    fn a_consumer_error_stops_the_pipeline_and_is_returned() {
        let result = pipeline(
            |emit| {
                let mut i = 0;
                while emit(i) {
                    i += 1;
                }
                Ok(())
            },
            |_: &mut usize| {},
            |i: usize| {
                if i == 3 * REPLAY_BATCH {
                    Err(StoreError::Backend("stop".into()))
                } else {
                    Ok(())
                }
            },
        );
        assert!(matches!(result, Err(StoreError::Backend(m)) if m == "stop"));
    }
}
