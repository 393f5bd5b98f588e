//! Live events between the kernels sharing a store: what one kernel
//! publishes before (or without) committing it — an answer's chunks, a
//! task's progress, ephemeral events — relayed to the others, so that a
//! subscriber on any machine's kernel (its live socket, `lion serve`'s
//! stream) watches the work of every kernel. Committed events need no
//! relay: every kernel reads the log.
//!
//! A relay is for watching, like the live stream itself: an event may be
//! dropped (a slow or disconnected kernel, an event too large for the
//! transport), never stored by it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::StoreError;
use crate::event::SystemEvent;

/// A live event from another kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relayed {
    /// The kernel it happened on.
    pub kernel: Uuid,
    /// What happened.
    pub event: SystemEvent,
}

/// Carries live events between the kernels of one store.
#[async_trait]
pub trait LiveRelay: Send + Sync {
    /// Sends `events`, which happened on kernel `from` in this order, to
    /// every kernel of the store (`from` included: receivers skip their
    /// own).
    async fn send(&self, from: Uuid, events: &[SystemEvent]) -> Result<(), StoreError>;

    /// The events every kernel sends, from now on.
    fn receive(&self) -> broadcast::Receiver<Relayed>;
}
