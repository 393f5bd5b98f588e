//! `lion replay`: fold the whole log afresh and compare with the projections.

use std::time::Instant;

use anyhow::Result;

use super::Ctx;
use crate::IntegrityFailure;
use crate::home::Checked;
use crate::output;

/// Differences listed before the rest are summarised as a count.
const SHOWN_DIFFERENCES: usize = 20;

/// Replays the log and compares the folded state with the stored projections.
pub async fn run(store: &Checked, ctx: Ctx) -> Result<()> {
    let start = Instant::now();
    let (folded, events) = store.replay().await?;
    let elapsed = start.elapsed();
    let projected = store.store().projected_state().await?;
    let diff = folded.diff(&projected);
    if ctx.json {
        output::json(&serde_json::json!({
            "ok": diff.is_empty(),
            "events": events,
            "elements": folded.elements().len(),
            "projected_elements": projected.elements().len(),
            "tasks": folded.tasks().len(),
            "projected_tasks": projected.tasks().len(),
            "plugins": folded.plugins().len(),
            "projected_plugins": projected.plugins().len(),
            "differences": diff,
            "seconds": elapsed.as_secs_f64(),
        }))?;
    } else {
        outln!(
            "replayed {events} event(s) in {:.3} s: {} element(s), {} task(s) and {} plugin(s) \
             folded; the projections hold {}, {} and {}",
            elapsed.as_secs_f64(),
            folded.elements().len(),
            folded.tasks().len(),
            folded.plugins().len(),
            projected.elements().len(),
            projected.tasks().len(),
            projected.plugins().len()
        );
        for d in diff.iter().take(SHOWN_DIFFERENCES) {
            outln!("  difference: {d}");
        }
        if diff.len() > SHOWN_DIFFERENCES {
            outln!("  … and {} more", diff.len() - SHOWN_DIFFERENCES);
        }
        if diff.is_empty() {
            outln!("ok: the projections match the log");
        }
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(IntegrityFailure(format!(
            "replay differs from the stored projections in {} place(s)",
            diff.len()
        ))
        .into())
    }
}
