//! The [`KernelRegistry`] of a [`super::PostgresStore`]: `lion.kernels`,
//! one row per kernel start. Leases are judged by the database's clock
//! (`clock_timestamp()`), so kernels whose machines' clocks disagree still
//! agree on who is alive.

use std::collections::HashSet;

use agentic_core::StoreError;
use agentic_core::store::kernels::{KernelInfo, KernelJoin, KernelRegistry, KernelState};
use async_trait::async_trait;
use chrono::DateTime;
use uuid::Uuid;

use super::{PgError, PostgresStore};

/// The condition that a row's lease still holds.
const HOLDS: &str = "clock_timestamp() - heartbeat_at <= lease_ms * interval '1 millisecond'";

/// The condition a renewal needs: three quarters of the lease at most, so
/// a renewal racing another kernel's look at the lease can never extend a
/// lease that kernel already counted as run out.
const RENEWABLE: &str =
    "clock_timestamp() - heartbeat_at <= lease_ms * 0.75 * interval '1 millisecond'";

/// Rows of kernels that stopped or expired this long ago are removed when
/// another kernel joins.
const KEEP_ENDED: &str = "interval '7 days'";

#[async_trait]
impl KernelRegistry for PostgresStore {
    async fn join(&self, kernel: &KernelJoin) -> Result<(), StoreError> {
        let lease = i64::try_from(kernel.lease.as_millis()).unwrap_or(i64::MAX);
        let pid = i32::try_from(kernel.pid).unwrap_or(i32::MAX);
        self.query(async |c| {
            c.execute(
                &format!(
                    "DELETE FROM lion.kernels WHERE state <> 'alive' \
                     AND heartbeat_at < clock_timestamp() - {KEEP_ENDED}"
                ),
                &[],
            )
            .await?;
            c.execute(
                "INSERT INTO lion.kernels (id, host, pid, lease_ms) VALUES ($1, $2, $3, $4)",
                &[&kernel.id, &kernel.host, &pid, &lease],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn renew(&self, id: Uuid) -> Result<bool, StoreError> {
        self.query(async |c| {
            let renewed = c
                .execute(
                    &format!(
                        "UPDATE lion.kernels SET heartbeat_at = clock_timestamp() \
                         WHERE id = $1 AND state = 'alive' AND {RENEWABLE}"
                    ),
                    &[&id],
                )
                .await?;
            if renewed == 0 {
                // Too late: expired for good, whoever noticed first.
                c.execute(
                    "UPDATE lion.kernels SET state = 'expired' WHERE id = $1 AND state = 'alive'",
                    &[&id],
                )
                .await?;
            }
            Ok(renewed > 0)
        })
        .await
    }

    async fn expire_overdue(&self) -> Result<Vec<Uuid>, StoreError> {
        self.query(async |c| {
            let rows = c
                .query(
                    &format!(
                        "UPDATE lion.kernels SET state = 'expired' \
                         WHERE state = 'alive' AND NOT ({HOLDS}) RETURNING id"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn alive(&self) -> Result<HashSet<Uuid>, StoreError> {
        self.query(async |c| {
            let rows = c
                .query(
                    &format!("SELECT id FROM lion.kernels WHERE state = 'alive' AND {HOLDS}"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn leave(&self, id: Uuid) -> Result<(), StoreError> {
        self.query(async |c| {
            c.execute(
                "UPDATE lion.kernels SET state = 'stopped' WHERE id = $1 AND state = 'alive'",
                &[&id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn kernels(&self) -> Result<Vec<KernelInfo>, StoreError> {
        self.query(async |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT id, host, pid, \
                         (extract(epoch FROM started_at) * 1000000)::bigint, \
                         (extract(epoch FROM heartbeat_at) * 1000000)::bigint, lease_ms, \
                         CASE WHEN state = 'alive' AND NOT ({HOLDS}) THEN 'expired' \
                         ELSE state END \
                         FROM lion.kernels ORDER BY started_at DESC"
                    ),
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let time = |i: usize| {
                        DateTime::from_timestamp_micros(r.get(i)).ok_or_else(|| {
                            PgError::Corrupt("a kernel's time is out of range".into())
                        })
                    };
                    Ok(KernelInfo {
                        id: r.get(0),
                        host: r.get(1),
                        pid: u32::try_from(r.get::<_, i32>(2)).unwrap_or_default(),
                        started_at: time(3)?,
                        heartbeat_at: time(4)?,
                        lease_ms: u64::try_from(r.get::<_, i64>(5)).unwrap_or_default(),
                        state: match r.get::<_, &str>(6) {
                            "alive" => KernelState::Alive,
                            "stopped" => KernelState::Stopped,
                            _ => KernelState::Expired,
                        },
                    })
                })
                .collect()
        })
        .await
    }
}
