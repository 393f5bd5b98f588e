//! Kernels sharing one log: their memberships and leases, kept in the
//! store beside the log (a store several kernels can reach implements
//! [`KernelRegistry`]; see [`super::EventStore::kernels`]).
//!
//! A kernel joins with a lease and renews it well within it. One whose
//! lease ran out (killed, its machine gone, or only paused) is no longer
//! alive: the attempts it claimed are taken over by another kernel, and
//! it cannot renew again — woken, it stops. Time is the database's clock,
//! so kernels on machines whose clocks disagree still agree on leases.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;

/// A kernel joining the log.
#[derive(Debug, Clone)]
pub struct KernelJoin {
    /// Its id, new at each start.
    pub id: Uuid,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// How long it stays alive without renewing.
    pub lease: Duration,
}

/// Where a kernel's membership stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelState {
    /// Its lease holds.
    Alive,
    /// Its lease ran out: its attempts are taken over.
    Expired,
    /// It stopped and said so.
    Stopped,
}

/// One kernel as the registry has it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    /// Its id.
    pub id: Uuid,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it joined.
    pub started_at: DateTime<Utc>,
    /// When it last renewed its lease.
    pub heartbeat_at: DateTime<Utc>,
    /// Its lease.
    pub lease_ms: u64,
    /// Where it stands now.
    pub state: KernelState,
}

/// The memberships of the kernels sharing a log.
#[async_trait]
pub trait KernelRegistry: Send + Sync {
    /// Adds a kernel, alive from now for its lease.
    async fn join(&self, kernel: &KernelJoin) -> Result<(), StoreError>;

    /// Renews a kernel's lease; `false` when it had already run out (the
    /// kernel is then expired for good and must stop).
    async fn renew(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Marks every kernel whose lease ran out as expired; returns the ones
    /// this call marked.
    async fn expire_overdue(&self) -> Result<Vec<Uuid>, StoreError>;

    /// The kernels whose leases hold now.
    async fn alive(&self) -> Result<HashSet<Uuid>, StoreError>;

    /// Marks a kernel as stopped (it left cleanly).
    async fn leave(&self, id: Uuid) -> Result<(), StoreError>;

    /// Every kernel the registry knows, newest first.
    async fn kernels(&self) -> Result<Vec<KernelInfo>, StoreError>;
}

/// Unfinished tasks read per page while counting claims.
const CLAIMS_PAGE: usize = 1000;

/// How many unfinished tasks each kernel's claim holds (the attempts it
/// runs, or ran when its lease ran out), read a page at a time.
pub async fn claims(
    store: &dyn super::EventStore,
) -> Result<std::collections::HashMap<Uuid, usize>, StoreError> {
    let mut counts = std::collections::HashMap::new();
    let mut after = super::Cursor::START;
    loop {
        let page = store
            .tasks(super::TaskFilter::Unfinished, after, CLAIMS_PAGE)
            .await?;
        for task in &page.items {
            if let Some(kernel) = task.kernel {
                *counts.entry(kernel).or_default() += 1;
            }
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(counts),
        }
    }
}
