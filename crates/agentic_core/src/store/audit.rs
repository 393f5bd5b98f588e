//! Checks of a whole log through the [`EventStore`] port alone, for
//! adapters with no faster way of their own: verify the hash chain against
//! the store's head, and replay (fold the log afresh) while verifying.

use super::{EventStore, StoreError};
use crate::chain::{ChainHead, ChainVerifier};
use crate::event::EventEnvelope;
use crate::state::State;

/// Records read per round trip.
const PAGE: usize = 4096;

/// Reads the whole log in order, checking every record's position, link
/// and hash, and that the head the store reported first is in it (so a
/// log cut short is found); hands each record to `each`. Returns the
/// verified head.
pub async fn scan(
    store: &dyn EventStore,
    mut each: impl FnMut(&EventEnvelope) -> Result<(), StoreError>,
) -> Result<ChainHead, StoreError> {
    let recorded = store.head().await?;
    let mut verifier = ChainVerifier::watching(recorded.seq);
    let mut next = 1;
    loop {
        let page = store.read_from(next, PAGE).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for record in &page {
            verifier.check(record)?;
            each(record)?;
        }
    }
    Ok(verifier.finish(Some(recorded))?)
}

/// Folds the whole log into a fresh [`State`], verifying it as [`scan`]
/// does; returns the state and the number of events.
pub async fn replay(store: &dyn EventStore) -> Result<(State, u64), StoreError> {
    let mut state = State::new();
    let head = scan(store, |record| {
        state
            .apply_owned(record.decode()?)
            .map_err(|e| StoreError::Corrupt {
                path: format!("event log at seq {}", record.seq),
                reason: format!("replay refuses it: {e}"),
            })
    })
    .await?;
    Ok((state, head.seq))
}
