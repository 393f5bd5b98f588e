//! Relaying live events between the kernels of a shared store: what this
//! kernel publishes uncommitted (answer chunks, progress, ephemeral
//! events) goes out through the store's [`LiveRelay`]; what the others
//! send comes in to this kernel's live subscribers, marked with the kernel
//! it happened on. Both ways are for watching: a kernel that falls behind
//! skips events rather than slowing down.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
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

/// Sends this kernel's uncommitted live events, in order.
async fn send(
    store: Arc<dyn EventStore>,
    mut live: tokio::sync::broadcast::Receiver<LiveEvent>,
    me: Uuid,
) {
    let Some(relay) = store.live_relay() else {
        return;
    };
    loop {
        match live.recv().await {
            // Its own, not yet in the log: others read committed ones there.
            Ok(LiveEvent {
                seq: None,
                event,
                kernel: None,
            }) => {
                if let Err(e) = relay.send(me, &event).await {
                    tracing::debug!(error = %e, "a live event was not relayed");
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "live events not relayed: the relay fell behind");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

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
