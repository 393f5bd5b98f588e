//! `lion bench store --store postgres://…`: the shared store's durable
//! events/s through one kernel and through three, each level beside raw
//! batched inserts of the same group sizes with the same client (by one
//! connection, and by three taking turns on a head row), measured in the
//! same run on the same server; and `lion bench claims`: tasks/s
//! completed by three kernels beside a bare `SKIP LOCKED` queue. Each with
//! the targets.

use std::time::Duration;

use agentic_store::bench::SLOW_FLUSH_MS;
use agentic_store::bench::postgres::{self, PgBenchConfig, PgLevel};
use anyhow::Result;
use serde_json::json;

use super::Ctx;
use super::bench::Regime;
use crate::output;

/// Three kernels must complete at least this share of the bare queue's tasks/s.
const CLAIMS_VS_QUEUE: f64 = 0.5;
/// One kernel must reach at least this share of the raw inserts.
const ONE_KERNEL_VS_RAW: f64 = 1.0 / 1.5;
/// Three kernels together must reach at least this share of one.
const THREE_VS_ONE: f64 = 0.8;

/// Runs the PostgreSQL store bench on the server `url` names.
pub async fn store(
    ctx: Ctx,
    url: &str,
    quick: bool,
    seconds: Option<f64>,
    appenders: Vec<usize>,
) -> Result<()> {
    let config = PgBenchConfig {
        url: url.to_owned(),
        appenders: match (appenders.is_empty(), quick) {
            (false, _) => appenders,
            (true, true) => vec![1, 16],
            (true, false) => vec![1, 16, 256],
        },
        duration: match (seconds, quick) {
            (Some(s), _) => Duration::from_secs_f64(s),
            (None, true) => Duration::from_millis(300),
            (None, false) => Duration::from_secs(3),
        },
    };
    let report = postgres::run(&config, |step| errln!("bench: {step}…")).await?;
    let (before, after) = report.commit_p50_ms;
    // The server's flush state, from its one-row commits before and after.
    let regime = Regime::of_probes(before, after);
    let levels = report.levels;
    if ctx.json {
        let rows: Vec<_> = levels
            .iter()
            .map(|l| {
                json!({
                    "appenders": l.appenders,
                    "one_kernel_events_per_sec": l.one_kernel,
                    "one_kernel_events_per_commit": l.one_kernel_group,
                    "three_kernels_events_per_sec": l.three_kernels,
                    "three_kernels_events_per_commit": l.three_kernels_group,
                    "raw_events_per_sec": l.raw,
                    "raw_turns_events_per_sec": l.raw_turns,
                    "raw_turns_vs_one_kernel": l.raw_turns / l.one_kernel,
                    "one_kernel_vs_raw": l.one_kernel / l.raw,
                    "three_vs_one": l.three_kernels / l.one_kernel,
                })
            })
            .collect();
        return output::json(&json!({
            "store": "postgres",
            "flush_regime": regime.name(),
            "commit_p50_ms": before,
            "commit_after_p50_ms": after,
            "levels": rows,
        }));
    }
    outln!(
        "lion bench store — PostgreSQL, {} flush regime (one-row commit p50 less a round \
         trip: {before:.2} ms before, {after:.2} ms after), scratch databases on the server of the URL given",
        regime.name().to_uppercase()
    );
    if let Some(why) = regime.why_no_evidence() {
        outln!(
            "note: {why}: the targets are for the slow-flush case (commits of {SLOW_FLUSH_MS} ms \
             or more), so this run is no evidence for them; see docs/shared-store.md."
        );
    }
    let mut table = output::bench_table();
    for l in &levels {
        add_rows(&mut table, l, regime.why_no_evidence());
    }
    outln!("{table}");
    Ok(())
}

/// A level's two rows: one kernel against the raw inserts, three against one.
fn add_rows(table: &mut comfy_table::Table, l: &PgLevel, no_evidence: Option<&str>) {
    let verdict = |ok: bool| super::bench::verdict(ok, no_evidence);
    let one_vs_raw = l.one_kernel / l.raw;
    table.add_row(vec![
        format!("{} appender(s), one kernel", l.appenders),
        format!(
            "{} ev/s ({:.1}/commit)",
            output::rate(l.one_kernel),
            l.one_kernel_group
        ),
        format!(
            "raw inserts, {:.0} rows/commit: {} ev/s ({one_vs_raw:.2}x)",
            l.one_kernel_group.round().max(1.0),
            output::rate(l.raw)
        ),
        "within 1.5x of raw".into(),
        verdict(one_vs_raw >= ONE_KERNEL_VS_RAW),
    ]);
    let three_vs_one = l.three_kernels / l.one_kernel;
    table.add_row(vec![
        format!("{} appender(s), three kernels", l.appenders),
        format!(
            "{} ev/s ({:.1}/commit)",
            output::rate(l.three_kernels),
            l.three_kernels_group
        ),
        format!(
            "one kernel: {} ev/s ({three_vs_one:.2}x); raw inserts taking turns on a head \
             row, a connection per kernel, as many rows a turn as its appenders: {} ev/s \
             ({:.2}x one kernel)",
            output::rate(l.one_kernel),
            output::rate(l.raw_turns),
            l.raw_turns / l.one_kernel
        ),
        "≥ 0.8x of one".into(),
        verdict(three_vs_one >= THREE_VS_ONE),
    ]);
}

/// Runs the work-claiming bench on the server `url` names.
pub async fn claims(ctx: Ctx, url: &str, tasks: usize) -> Result<()> {
    let r = postgres::claims(url, tasks, |step| errln!("bench: {step}…")).await?;
    let ratio = r.lion / r.queue;
    let (before, after) = r.commit_p50_ms;
    let regime = Regime::of_probes(before, after);
    if ctx.json {
        return output::json(&json!({
            "tasks": r.tasks,
            "three_kernels_tasks_per_sec": r.lion,
            "queue_tasks_per_sec": r.queue,
            "queue_workers": r.queue_workers,
            "ratio": ratio,
            "flush_regime": regime.name(),
            "commit_p50_ms": before,
            "commit_after_p50_ms": after,
        }));
    }
    outln!(
        "lion bench claims — PostgreSQL, {} echo tasks each side, {} flush regime (one-row \
         commit p50 less a round trip: {before:.2} ms before, {after:.2} ms after)",
        r.tasks,
        regime.name().to_uppercase()
    );
    if let Some(why) = regime.why_no_evidence() {
        outln!(
            "note: {why}: the target is for the slow-flush case (commits of {SLOW_FLUSH_MS} ms \
             or more), so this run is no evidence for it; see docs/shared-store.md."
        );
    }
    let mut table = output::bench_table();
    table.add_row(vec![
        "tasks completed, three kernels".into(),
        format!("{} tasks/s", output::rate(r.lion)),
        format!(
            "bare SKIP LOCKED queue, {} workers: {} tasks/s ({ratio:.2}x)",
            r.queue_workers,
            output::rate(r.queue)
        ),
        "within 2x of the queue".into(),
        super::bench::verdict(ratio >= CLAIMS_VS_QUEUE, regime.why_no_evidence()),
    ]);
    outln!("{table}");
    Ok(())
}
