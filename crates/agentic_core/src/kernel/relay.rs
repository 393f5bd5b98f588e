//! Relaying live events between the kernels of a shared store. What this
//! kernel publishes uncommitted (answer chunks, progress, ephemeral
//! events) goes out through the store's
//! [`LiveRelay`](crate::store::live::LiveRelay), what queued during one
//! send going out together in the next. What the others send comes in to
//! this kernel's live subscribers, marked with the kernel it happened on. Both ways are for watching: a kernel that falls behind
//! skips events rather than slowing down.

use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::orchestrator::{LiveEvent, Orchestrator};
use crate::store::EventStore;

/// Starts relaying the live events of kernel `me` and of the others, if
/// the store relays them; the tasks run until aborted.
pub(super) fn start(
    store: &Arc<dyn EventStore>,
    orchestrator: &Orchestrator,
    me: Uuid,
) -> Vec<JoinHandle<()>> {
    if store.live_relay().is_none() {
        return Vec::new();
    }
    vec![
        tokio::spawn(send(store.clone(), orchestrator.subscribe(), me)),
        tokio::spawn(receive(store.clone(), orchestrator.clone(), me)),
    ]
}

/// Sends this kernel's uncommitted live events, in order: what queued
/// while the previous send was under way goes in the next, together.
async fn send(
    store: Arc<dyn EventStore>,
    mut live: tokio::sync::broadcast::Receiver<LiveEvent>,
    me: Uuid,
) {
    let Some(relay) = store.live_relay() else {
        return;
    };
    let mut batch = Vec::new();
    loop {
        // Wait for one, then take what else is there.
        let mut next = live.recv().await;
        loop {
            match next {
                // Its own, not yet in the log: others read committed ones there.
                Ok(LiveEvent {
                    seq: None,
                    event,
                    kernel: None,
                }) => batch.push(event),
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "live events not relayed: the relay fell behind");
                }
                Err(RecvError::Closed) => {
                    // What was gathered still goes out.
                    if !batch.is_empty() {
                        let _ = relay.send(me, &batch).await;
                    }
                    return;
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            match live.try_recv() {
                Ok(event) => next = Ok(event),
                Err(TryRecvError::Lagged(missed)) => next = Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => next = Err(RecvError::Closed),
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = relay.send(me, &batch).await {
            tracing::debug!(error = %e, "live events were not relayed");
        }
        batch.clear();
    }
}

/// Most events relayed in one send.
const MAX_BATCH: usize = 256;

/// Publishes the other kernels' live events to this kernel's subscribers.
async fn receive(store: Arc<dyn EventStore>, orchestrator: Orchestrator, me: Uuid) {
    let Some(relay) = store.live_relay() else {
        return;
    };
    let mut relayed = relay.receive();
    loop {
        match relayed.recv().await {
            Ok(r) if r.kernel != me => orchestrator.relay_live(LiveEvent {
                seq: None,
                event: r.event,
                kernel: Some(r.kernel),
            }),
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    "relayed live events missed: this kernel fell behind"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}
