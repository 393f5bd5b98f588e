//! `lion bench store`: runs the store benchmark and prints its table, each
//! row beside a baseline measured in the same run and the target.
//! Each group-commit level is compared with raw rusqlite committing as many
//! rows per transaction as the level's groups did, as well as with raw
//! batches of 100.

use std::path::PathBuf;
use std::time::Duration;

use agentic_store::bench::{self, BenchConfig, BenchReport, Placement};
use anyhow::Result;

use super::Ctx;
use crate::output;

/// Targets for the slow-flush case on the reference machine (2 cores, shared
/// virtual disk): 256 appenders.
const TARGET_EVENTS_PER_SEC: f64 = 40_000.0;
const TARGET_EVENTS_PER_COMMIT: f64 = 100.0;
const TARGET_ACK_P99_MS: f64 = 50.0;
/// Replay targets: decoding only, and while recomputing the chain.
const TARGET_REPLAY_PER_SEC: f64 = 1_000_000.0;
const TARGET_REPLAY_VERIFIED_PER_SEC: f64 = 500_000.0;

/// Options of `bench store`.
pub struct StoreBench {
    /// Short smoke run.
    pub quick: bool,
    /// Scratch directory.
    pub dir: Option<PathBuf>,
    /// Replay log size.
    pub replay_events: Option<u64>,
    /// Seconds per appender level.
    pub seconds: Option<f64>,
    /// Concurrency levels (empty: the default ones).
    pub appenders: Vec<usize>,
}

/// Runs the store benchmark and prints the table (or JSON).
pub async fn store(ctx: Ctx, opts: StoreBench) -> Result<()> {
    let (dir, temporary) = match opts.dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("lion-bench-{}", std::process::id())),
            true,
        ),
    };
    let mut config = if opts.quick {
        BenchConfig::quick(dir.clone())
    } else {
        BenchConfig::full(dir.clone())
    };
    if let Some(n) = opts.replay_events {
        config.replay_events = n;
    }
    if !opts.appenders.is_empty() {
        config.appenders = opts.appenders;
    }
    if let Some(s) = opts.seconds {
        config.duration = Duration::from_secs_f64(s);
    }
    let result = bench::run(&config, |step| errln!("bench: {step}…")).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    if ctx.json {
        return output::json(&json(&report));
    }
    print_table(&report, &config);
    Ok(())
}

fn json(r: &BenchReport) -> serde_json::Value {
    serde_json::json!({
        "flush_emulation": flush_emulation(),
        "fsync_p50_ms": r.fsync.p50_ms,
        "fsync_p99_ms": r.fsync.p99_ms,
        "slow_flush": r.slow_flush(),
        "raw_sqlite_events_per_sec": r.raw_batches_of_100.events_per_sec,
        "raw_sqlite_commits_per_sec": r.raw_batches_of_100.commits_per_sec,
        "raw_sqlite_rows_per_commit": r.raw_batches_of_100.rows_per_commit,
        "appends": r.appends.iter().map(|a| serde_json::json!({
            "appenders": a.appenders,
            "placement": placement(&a.placement),
            "events_per_sec": a.events_per_sec,
            "commits_per_sec": a.commits_per_sec,
            "events_per_commit": a.events_per_commit,
            "ack_p50_ms": a.ack.p50_ms,
            "ack_p99_ms": a.ack.p99_ms,
            "cpu_us_per_event": a.cpu_us_per_event,
            "raw_same_batch": {
                "rows_per_commit": a.raw_same_batch.rows_per_commit,
                "events_per_sec": a.raw_same_batch.events_per_sec,
                "commits_per_sec": a.raw_same_batch.commits_per_sec,
            },
        })).collect::<Vec<_>>(),
        "own_core_skipped": r.own_core_skipped,
        "replay_events": r.replay_events,
        "raw_scan_per_sec": r.raw_scan_per_sec,
        "replay_per_sec": r.replay_per_sec,
        "replay_verified_per_sec": r.replay_verified_per_sec,
        "peak_rss_mib": r.peak_rss_mib,
    })
}

/// Where a measurement ran its writer and appenders, in words.
fn placement(p: &Placement) -> String {
    match p {
        Placement::Shared => "shared CPUs".into(),
        Placement::OwnCore(plan) => format!(
            "writer pinned to CPU {}, appenders' runtime on CPU {}",
            plan.writer,
            plan.workers
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The disk's flush state while a durable-write bench ran: the targets are
/// set for the slow state, so only a run wholly in it is evidence for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Regime {
    /// Slow throughout (each bench says what it checks).
    Slow,
    /// Fast throughout.
    Fast,
    /// Neither: the disk changed state during the run.
    Changed,
}

impl Regime {
    /// The regime of a run whose flush probes before and after it took
    /// `before_ms` and `after_ms`.
    pub(crate) fn of_probes(before_ms: f64, after_ms: f64) -> Self {
        let slow = |ms: f64| ms >= bench::SLOW_FLUSH_MS;
        match (slow(before_ms), slow(after_ms)) {
            (true, true) => Self::Slow,
            (false, false) => Self::Fast,
            _ => Self::Changed,
        }
    }

    /// Its name, as the header and the JSON give it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Slow => "slow",
            Self::Fast => "fast",
            Self::Changed => "changed",
        }
    }

    /// Why a run in this regime is no evidence for the targets, if it is not.
    pub(crate) fn why_no_evidence(self) -> Option<&'static str> {
        match self {
            Self::Slow => None,
            Self::Fast => Some("fast-flush run"),
            Self::Changed => Some("the flush changed state during the run"),
        }
    }
}

/// A target's verdict; `evidence` is `None` when the run counts, else why not.
pub(crate) fn verdict(ok: bool, evidence: Option<&str>) -> String {
    match (ok, evidence) {
        (true, None) => "PASS".into(),
        (false, None) => "FAIL".into(),
        (true, Some(why)) => format!("pass ({why}: no evidence)"),
        (false, Some(why)) => format!("fail ({why})"),
    }
}

/// One line of the table; every field is a column, so no row can be short.
#[derive(Default)]
struct Line {
    measurement: String,
    events_per_sec: String,
    commits_per_sec: String,
    events_per_commit: String,
    ack_p50: String,
    ack_p99: String,
    cpu: String,
    versus: String,
    target: String,
}

impl Line {
    const HEADER: [&'static str; 9] = [
        "measurement",
        "events/s",
        "commits/s",
        "events/commit",
        "ack p50",
        "ack p99",
        "CPU/event",
        "vs same-run baseline",
        "target",
    ];

    fn cells(self) -> [String; 9] {
        let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
        [
            self.measurement,
            dash(self.events_per_sec),
            dash(self.commits_per_sec),
            dash(self.events_per_commit),
            dash(self.ack_p50),
            dash(self.ack_p99),
            dash(self.cpu),
            self.versus,
            self.target,
        ]
    }
}

fn ms(x: f64) -> String {
    format!("{x:.2} ms")
}

/// Set by `scripts/bench-slow-flush`: how the slow flush is emulated.
const EMULATION_ENV: &str = "LION_BENCH_FLUSH_EMULATION";

/// How this run's slow flush is emulated, if it is (see [`EMULATION_ENV`]).
pub(crate) fn flush_emulation() -> Option<String> {
    std::env::var(EMULATION_ENV).ok().filter(|s| !s.is_empty())
}

fn print_table(r: &BenchReport, config: &BenchConfig) {
    let slow = r.slow_flush();
    outln!(
        "lion bench store — {} flush regime (fdatasync p50 {:.2} ms), scratch {}",
        if slow { "SLOW" } else { "fast" },
        r.fsync.p50_ms,
        config.dir.display()
    );
    if let Some(how) = flush_emulation() {
        outln!(
            "note: the slow flush is EMULATED: {how}; every row, baselines included, ran under it."
        );
    }
    if !slow {
        outln!(
            "note: flushes took under 1 ms in this run; the durable-append targets are for the \
             slow-flush case, so this run is no evidence for them."
        );
    }
    let mut lines = vec![
        Line {
            measurement: "raw fdatasync, 4 KiB write".into(),
            commits_per_sec: output::rate(1e3 / r.fsync.p50_ms.max(1e-6)),
            ack_p50: ms(r.fsync.p50_ms),
            ack_p99: ms(r.fsync.p99_ms),
            versus: "baseline (flush latency)".into(),
            ..Line::default()
        },
        Line {
            measurement: format!(
                "raw rusqlite, batches of {} rows, sync=FULL",
                r.raw_batches_of_100.rows_per_commit
            ),
            events_per_sec: output::rate(r.raw_batches_of_100.events_per_sec),
            commits_per_sec: output::rate(r.raw_batches_of_100.commits_per_sec),
            events_per_commit: r.raw_batches_of_100.rows_per_commit.to_string(),
            versus: "baseline (throughput, big batches)".into(),
            ..Line::default()
        },
    ];
    for a in &r.appends {
        let target = if a.appenders == 256 {
            let ok = a.events_per_sec >= TARGET_EVENTS_PER_SEC
                && a.events_per_commit >= TARGET_EVENTS_PER_COMMIT
                && a.ack.p99_ms < TARGET_ACK_P99_MS;
            format!(
                "≥40k ev/s, ≥100 ev/commit, p99 <50 ms: {}",
                verdict(ok, (!slow).then_some("fast-flush run"))
            )
        } else {
            String::new()
        };
        let measurement = match &a.placement {
            Placement::Shared => format!("lion group commit, {} appender(s)", a.appenders),
            Placement::OwnCore(_) => format!(
                "lion group commit, {} appender(s), {}",
                a.appenders,
                placement(&a.placement)
            ),
        };
        let same = &a.raw_same_batch;
        lines.push(Line {
            measurement: format!(
                "raw rusqlite, {} row(s) per commit (lion's mean group below), sync=FULL",
                same.rows_per_commit
            ),
            events_per_sec: output::rate(same.events_per_sec),
            commits_per_sec: output::rate(same.commits_per_sec),
            events_per_commit: same.rows_per_commit.to_string(),
            versus: "baseline (throughput, same rows/commit)".into(),
            ..Line::default()
        });
        lines.push(Line {
            measurement,
            events_per_sec: output::rate(a.events_per_sec),
            commits_per_sec: output::rate(a.commits_per_sec),
            events_per_commit: format!("{:.1}", a.events_per_commit),
            ack_p50: ms(a.ack.p50_ms),
            ack_p99: ms(a.ack.p99_ms),
            cpu: a
                .cpu_us_per_event
                .map_or_else(String::new, |us| format!("{us:.1} µs")),
            versus: format!(
                "{:.2}x raw at the same {} rows/commit, {:.2}x raw at {} rows/commit; ack p50 {:.1}x fsync",
                a.events_per_sec / same.events_per_sec.max(1e-9),
                same.rows_per_commit,
                a.events_per_sec / r.raw_batches_of_100.events_per_sec.max(1e-9),
                r.raw_batches_of_100.rows_per_commit,
                a.ack.p50_ms / r.fsync.p50_ms.max(1e-6)
            ),
            target,
        });
    }
    let n = r.replay_events;
    let small = (n < 1_000_000).then_some("log under 1M events");
    lines.push(Line {
        measurement: format!("raw rusqlite scan, {n} rows"),
        events_per_sec: output::rate(r.raw_scan_per_sec),
        versus: "baseline (read)".into(),
        ..Line::default()
    });
    lines.push(Line {
        measurement: format!("replay {n} events: decode + fold"),
        events_per_sec: output::rate(r.replay_per_sec),
        versus: format!("{:.2}x raw scan", r.replay_per_sec / r.raw_scan_per_sec),
        target: format!(
            "≥1M ev/s: {}",
            verdict(r.replay_per_sec >= TARGET_REPLAY_PER_SEC, small)
        ),
        ..Line::default()
    });
    lines.push(Line {
        measurement: format!("replay {n} events + hash chain"),
        events_per_sec: output::rate(r.replay_verified_per_sec),
        versus: format!(
            "{:.2}x raw scan",
            r.replay_verified_per_sec / r.raw_scan_per_sec
        ),
        target: format!(
            "≥500k ev/s: {}",
            verdict(
                r.replay_verified_per_sec >= TARGET_REPLAY_VERIFIED_PER_SEC,
                small
            )
        ),
        ..Line::default()
    });
    let mut t = output::table(Line::HEADER);
    for line in lines {
        t.add_row(line.cells());
    }
    outln!("{t}");
    if let Some(why) = &r.own_core_skipped {
        outln!("note: no measurement with the writer on a core of its own: {why}.");
    }
    match r.peak_rss_mib {
        Some(mib) => outln!("peak memory (VmHWM): {mib:.1} MiB"),
        None => outln!("peak memory: unknown (no /proc/self/status)"),
    }
}
