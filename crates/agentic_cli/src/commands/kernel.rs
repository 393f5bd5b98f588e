//! `lion kernel list`: the kernels sharing a store, their leases and the
//! attempts they hold.

use std::path::Path;

use agentic_core::EventStore;
use agentic_core::store::kernels::{self, KernelState};
use anyhow::Result;
use chrono::Utc;
use serde_json::json;

use super::Ctx;
use crate::{lease, output};

/// Lists the kernels of a shared store (newest first), or says whether a
/// kernel runs on the home when the store is the home's own.
pub async fn list(home: &Path, store: &dyn EventStore, ctx: Ctx) -> Result<()> {
    let Some(registry) = store.kernels() else {
        let running = lease::held(home);
        if ctx.json {
            return output::json(&json!({ "shared": false, "kernel_running": running }));
        }
        match running {
            true => outln!(
                "a kernel runs on {} (its only one: the store is the home's)",
                home.display()
            ),
            false => outln!("no kernel runs on {} (lion run starts one)", home.display()),
        }
        return Ok(());
    };
    let kernels = registry.kernels().await?;
    let claims = kernels::claims(store).await?;
    if ctx.json {
        let items: Vec<_> = kernels
            .iter()
            .map(|k| {
                let mut value = serde_json::to_value(k).unwrap_or_default();
                value["claims"] = json!(claims.get(&k.id).copied().unwrap_or(0));
                value
            })
            .collect();
        return output::json(&json!({ "shared": true, "kernels": items }));
    }
    if kernels.is_empty() {
        outln!("no kernel has joined this store (lion run --store URL starts one)");
        return Ok(());
    }
    let mut table = output::table([
        "id",
        "state",
        "host",
        "pid",
        "claims",
        "last heartbeat",
        "lease",
    ]);
    let now = Utc::now();
    for k in &kernels {
        let ago = (now - k.heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
        table.add_row(vec![
            k.id.to_string(),
            match k.state {
                KernelState::Alive => "alive",
                KernelState::Expired => "expired",
                KernelState::Stopped => "stopped",
            }
            .to_owned(),
            k.host.clone(),
            k.pid.to_string(),
            claims.get(&k.id).copied().unwrap_or(0).to_string(),
            format!("{ago:.1} s ago"),
            format!("{:.1} s", k.lease_ms as f64 / 1000.0),
        ]);
    }
    outln!("{table}");
    Ok(())
}
