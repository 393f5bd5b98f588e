//! `lion bench scale`: whether commands stay as fast and as small when a
//! home holds a million events as when it holds almost nothing.
//!
//! It builds two homes. The big one: 100k elements, 50k tasks (each
//! submitted, started, progressing and completed), 1,000 LLM agents with a
//! 200-message conversation each (a prompt, its coalesced delta and the
//! finished answer per turn) and 50 plugins — the real hello_world plugin
//! installed by the real `lion plugin install` under 50 names — with 4,000
//! recorded calls each: about 1.0M events. The other holds only what the
//! commands need: one element, one task, one plugin of the same name. The
//! bulk is appended straight through the store
//! ([`agentic_core::EventStore::append`] on [`agentic_store::SqliteStore`])
//! by concurrent appenders in large batches (group commit), not by a million
//! `lion` runs; every event is one the reducer accepts (the store refuses any
//! other), and `lion replay` checks the built home before it is used.
//!
//! Then each command runs as a fresh `lion` process on both homes, several
//! times (the median counts), its wall time (from its `exec` to its exit)
//! and its peak RSS (its `VmHWM` as it exits, read by tracing it) recorded:
//! `element show`, `task show`, `plugin call`, `agent send` to an agent with
//! 200 messages (a scripted OpenAI-compatible server in this process
//! answers, as the CLI tests' own does), `task submit --wait` with no kernel
//! running, and `lion run` from its start to its "kernel ready" log line
//! (state read, unfinished tasks taken over), then stopped with SIGTERM.
//! Targets: each within 2x of the empty home's time and 1.5x of its peak
//! RSS; a full run that misses one exits non-zero.
//!
//! The rooms: this file is the command, its constants and its table;
//! [`home`](mod@home) builds (or reuses) the homes;
//! [`operations`](mod@operations) lists the commands measured and runs one;
//! [`trace`] follows a child `lion` under ptrace to read its exec-to-exit
//! time and peak RSS (all of the bench's `unsafe`); [`provider`] is the
//! scripted OpenAI-compatible server of the agent turn.

mod home;
mod operations;
mod provider;
mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use self::home::{
    BIG, BuiltHome, EMPTY, PluginSource, QUICK_BIG, Shape, add_turn_agents, home, plugin_names,
    refuse_foreign,
};
use self::operations::operations;
use self::provider::scripted_server;
use super::Ctx;
use crate::output;

/// Where `scripts/build-plugins` stages hello_world, from the repository root.
const DEFAULT_PLUGIN_DIR: &str = "plugins/dist/hello_world";

/// Targets: a command on the big home within this factor of its time, and
/// of its peak memory, on the empty home.
const TARGET_TIME_RATIO: f64 = 2.0;
const TARGET_RSS_RATIO: f64 = 1.5;

/// Runs of each command on each home (the median counts): enough for a
/// median to shrug off one slow run.
const DEFAULT_RUNS: usize = 5;
const QUICK_RUNS: usize = 2;

/// What `lion run` logs once it takes work: its state is read and its
/// unfinished tasks are taken over (`agentic_core::kernel`, at info level;
/// its "lion kernel running" line follows).
const READY_LINE: &str = "kernel ready";

/// The function called and its input.
const FUNCTION: &str = "greet";
const INPUT: &str = r#"{"name":"Ada"}"#;
const GREETING: &str = "Hello, Ada!";
/// The scripted model's name and its answer to every message.
const MODEL: &str = "scale-bench-model";
const ANSWER: &[&str] = &["Noted", ": nothing ", "changed since the last report."];

/// Options of `bench scale`.
pub struct ScaleBench {
    /// Small homes, figures mean little.
    pub quick: bool,
    /// Scratch directory (removed afterwards).
    pub dir: Option<PathBuf>,
    /// Directory whose homes are kept, and reused when they fit.
    pub keep: Option<PathBuf>,
    /// Runs per command and home.
    pub runs: Option<usize>,
    /// The built hello_world plugin.
    pub plugin: Option<PathBuf>,
}

/// Runs the scale benchmark and prints its table (or JSON).
pub async fn run(ctx: Ctx, opts: ScaleBench) -> Result<()> {
    let plugin_dir = opts
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_DIR));
    let manifest_text = read_plugin(&plugin_dir)?;
    let runs = opts
        .runs
        .unwrap_or(if opts.quick { QUICK_RUNS } else { DEFAULT_RUNS })
        .max(1);
    let (dir, temporary) = bench_dir(opts.keep.as_deref(), opts.dir.as_deref(), "scale")?;
    let result = measure(&dir, opts.quick, runs, &plugin_dir, &manifest_text).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    if ctx.json {
        output::json(&json_report(&report))?;
    } else {
        print_table(&report, &dir, temporary);
    }
    let missed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| !r.time_ok() || !r.rss_ok())
        .map(|r| r.operation.as_str())
        .collect();
    if !report.quick && !missed.is_empty() {
        bail!(
            "{} of {} operations miss their targets (time ≤{TARGET_TIME_RATIO}x, peak RSS \
             ≤{TARGET_RSS_RATIO}x the empty home's): {}",
            missed.len(),
            report.rows.len(),
            missed.join("; ")
        );
    }
    Ok(())
}

/// The hello_world manifest's text, after checking the plugin is built.
pub(crate) fn read_plugin(plugin_dir: &Path) -> Result<String> {
    let manifest = plugin_dir.join("plugin.toml");
    if !manifest.is_file() {
        bail!(
            "no built plugin in {} (no plugin.toml): run scripts/build-plugins first, or give \
             --plugin DIR",
            plugin_dir.display()
        );
    }
    let parsed = agentic_core::plugin::PluginManager::read_manifest(&manifest)?;
    if !parsed.functions.contains_key(FUNCTION) {
        bail!(
            "plugin {} has no function {FUNCTION}: bench scale calls hello_world",
            parsed.name
        );
    }
    let Some(component) = &parsed.component else {
        bail!("plugin {} is not a WebAssembly plugin", parsed.name);
    };
    if !component.path.is_file() {
        bail!(
            "no component {} (run scripts/build-plugins)",
            component.path.display()
        );
    }
    Ok(std::fs::read_to_string(&manifest)?)
}

/// Where a bench that builds homes works, made and resolved: `keep` (kept
/// afterwards), else a new `lion-bench-NAME-PID` in `dir` or the temp dir
/// (removed afterwards: the `bool`).
pub(crate) fn bench_dir(
    keep: Option<&Path>,
    dir: Option<&Path>,
    name: &str,
) -> Result<(PathBuf, bool)> {
    let scratch = format!("lion-bench-{name}-{}", std::process::id());
    let (dir, temporary) = match (keep, dir) {
        (Some(keep), _) => (keep.to_owned(), false),
        (None, Some(d)) => (d.join(scratch), true),
        (None, None) => (std::env::temp_dir().join(scratch), true),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the bench directory {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    Ok((dir, temporary))
}

/// The two homes a run measures: the empty one and the big one.
pub(crate) struct Homes {
    /// The almost empty home, built afresh.
    pub(crate) empty: BuiltHome,
    /// The home of about a million events.
    pub(crate) big: BuiltHome,
    /// Whether the big home was kept from an earlier run.
    pub(crate) big_reused: bool,
}

/// Builds in `dir` the empty home (afresh: each run adds to the homes, and
/// a reused baseline would grow) and the big one (reused when `dir` holds
/// one of the same shape), with hello_world from `plugin_dir` installed
/// under each plugin name. Also what `lion bench dashboard` serves.
pub(crate) async fn homes(
    dir: &Path,
    quick: bool,
    plugin_dir: &Path,
    manifest_text: &str,
) -> Result<Homes> {
    let exe = std::env::current_exe().context("cannot find the running lion binary")?;
    let big_shape = if quick { QUICK_BIG } else { BIG };
    let names = plugin_names(big_shape.plugins);
    let measured_plugin = names[names.len() / 2].clone();
    let plugin_dir = plugin_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", plugin_dir.display()))?;
    let source = PluginSource {
        dir: plugin_dir,
        manifest: manifest_text.to_owned(),
    };
    for name in ["empty-home", "big-home"] {
        refuse_foreign(dir, name)?;
    }
    let (empty, _) = home(
        &exe,
        dir,
        "empty-home",
        (EMPTY, false),
        std::slice::from_ref(&measured_plugin),
        &source,
    )
    .await?;
    let (big, big_reused) = home(&exe, dir, "big-home", (big_shape, true), &names, &source).await?;
    Ok(Homes {
        empty,
        big,
        big_reused,
    })
}

/// Everything one run measured.
struct Report {
    quick: bool,
    runs: usize,
    empty: BuiltHome,
    big: BuiltHome,
    /// Whether the big home was kept from an earlier run.
    big_reused: bool,
    /// Events in each home (empty, big) when the commands ran: as built,
    /// plus this run's turn agents (and earlier runs' on a kept home).
    events_now: [u64; 2],
    rows: Vec<Row>,
}

/// One operation on both homes: the medians of its runs.
struct Row {
    operation: String,
    empty: Sample,
    big: Sample,
}

impl Row {
    fn time_ratio(&self) -> f64 {
        self.big.wall.as_secs_f64() / self.empty.wall.as_secs_f64().max(1e-9)
    }
    fn rss_ratio(&self) -> f64 {
        self.big.rss_kib as f64 / (self.empty.rss_kib as f64).max(1.0)
    }
    fn time_ok(&self) -> bool {
        self.time_ratio() <= TARGET_TIME_RATIO
    }
    fn rss_ok(&self) -> bool {
        self.rss_ratio() <= TARGET_RSS_RATIO
    }
}

/// One run of a `lion` process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// From its `exec` to its exit (or, for `lion run`, to its ready line).
    wall: Duration,
    /// Its peak resident set, in KiB (`VmHWM` as it exits; see `trace`).
    rss_kib: u64,
}

/// Builds (or reuses) both homes, then measures every command on both.
async fn measure(
    dir: &Path,
    quick: bool,
    runs: usize,
    plugin_dir: &Path,
    manifest_text: &str,
) -> Result<Report> {
    let exe = std::env::current_exe().context("cannot find the running lion binary")?;
    let Homes {
        empty,
        big,
        big_reused,
    } = homes(dir, quick, plugin_dir, manifest_text).await?;

    // Each run's agent turn goes to an agent of its own with exactly 200
    // messages, in both homes, so no run sees a longer conversation.
    // The random end of a v7 id (its start is the time, to the millisecond).
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let turn_agents: Vec<String> = (0..runs).map(|r| format!("turn-{tag}-{r}")).collect();
    let mut events_now = [0; 2];
    for (h, name) in ["empty-home", "big-home"].into_iter().enumerate() {
        events_now[h] = add_turn_agents(&dir.join(name), &turn_agents).await?;
    }

    let url = scripted_server().await?;
    let homes = [
        (dir.join("empty-home"), empty.clone()),
        (dir.join("big-home"), big.clone()),
    ];
    let samples = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
        let mut labels = Vec::new();
        for (r, agent) in turn_agents.iter().enumerate() {
            errln!(
                "bench: run {} of {runs} of every command on both homes…",
                r + 1
            );
            for (h, (path, built)) in homes.iter().enumerate() {
                for (o, op) in operations(built, agent, &url).into_iter().enumerate() {
                    let sample = op
                        .run(&exe, path)
                        .with_context(|| format!("{} on {}", op.label, path.display()))?;
                    samples.entry((o, h)).or_default().push(sample);
                    if r == 0 && h == 0 {
                        labels.push(op.label);
                    }
                }
            }
        }
        Ok((labels, samples))
    })
    .await??;
    let (labels, samples) = samples;
    let rows = labels
        .into_iter()
        .enumerate()
        .map(|(o, operation)| Row {
            operation,
            empty: median(&samples[&(o, 0)]),
            big: median(&samples[&(o, 1)]),
        })
        .collect();
    Ok(Report {
        quick,
        runs,
        empty,
        big,
        big_reused,
        events_now,
        rows,
    })
}

/// The medians of some samples' times and of their peak RSS.
fn median(samples: &[Sample]) -> Sample {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    walls.sort_unstable();
    rss.sort_unstable();
    Sample {
        wall: walls[walls.len() / 2],
        rss_kib: rss[rss.len() / 2],
    }
}

/// `lion --home HOME` with none of the variables `lion` reads from the
/// bench's own environment (each child sees the same).
fn lion(exe: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for var in [
        "LION_HOME",
        "LION_BUSY_TIMEOUT_MS",
        "LION_LLM_BASE_URL",
        "LION_LLM_MODEL",
        "LION_LLM_API_KEY",
        "LION_LLM_SEED",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--home").arg(home).stdin(Stdio::null());
    cmd
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn json_report(r: &Report) -> Value {
    let home = |b: &BuiltHome, now: u64| {
        json!({
            "events": now,
            "events_built": b.events,
            "shape": b.shape,
            "build_secs": b.build_secs,
            "fill_secs": b.fill_secs,
            "replay_secs": b.replay_secs,
        })
    };
    json!({
        "quick": r.quick,
        "runs": r.runs,
        "target_time_ratio": TARGET_TIME_RATIO,
        "target_rss_ratio": TARGET_RSS_RATIO,
        "empty_home": home(&r.empty, r.events_now[0]),
        "big_home": home(&r.big, r.events_now[1]),
        "big_home_reused": r.big_reused,
        "operations": r.rows.iter().map(|row| json!({
            "operation": row.operation,
            "empty_ms": millis(row.empty.wall),
            "big_ms": millis(row.big.wall),
            "time_ratio": row.time_ratio(),
            "empty_peak_rss_mib": mib(row.empty.rss_kib),
            "big_peak_rss_mib": mib(row.big.rss_kib),
            "rss_ratio": row.rss_ratio(),
            "time_target_met": row.time_ok(),
            "rss_target_met": row.rss_ok(),
        })).collect::<Vec<_>>(),
    })
}

fn print_table(r: &Report, dir: &Path, temporary: bool) {
    outln!(
        "lion bench scale — each command as a fresh lion process, median of {} run(s) per home; \
         targets: time ≤{TARGET_TIME_RATIO}x and peak RSS ≤{TARGET_RSS_RATIO}x the empty home's",
        r.runs
    );
    outln!(
        "empty home: {} events (one element, task and plugin; a 200-message agent per run); big \
         home: {} events ({}), {}",
        r.events_now[0],
        r.events_now[1],
        describe(&r.big.shape),
        if r.big_reused {
            format!(
                "reused from {} (built in {:.1} s by an earlier run)",
                dir.display(),
                r.big.build_secs
            )
        } else {
            format!(
                "built in {:.1} s (bulk append {:.1} s, lion replay check {:.1} s){}",
                r.big.build_secs,
                r.big.fill_secs,
                r.big.replay_secs,
                if temporary {
                    String::new()
                } else {
                    format!(", kept in {}", dir.display())
                }
            )
        }
    );
    let big = format!("{}-event home", output::rate(r.events_now[1] as f64));
    let mut t = output::table([
        "operation",
        "empty home",
        big.as_str(),
        "time ratio (≤2x)",
        "peak RSS, empty",
        "peak RSS, big",
        "RSS ratio (≤1.5x)",
        "verdict",
    ]);
    for row in &r.rows {
        let verdict = match (r.quick, row.time_ok(), row.rss_ok()) {
            (true, ..) => "no evidence (quick run)".to_owned(),
            (false, true, true) => "PASS".to_owned(),
            (false, time, rss) => {
                let mut missed = Vec::new();
                if !time {
                    missed.push("time");
                }
                if !rss {
                    missed.push("RSS");
                }
                format!("FAIL ({})", missed.join(", "))
            }
        };
        t.add_row([
            row.operation.clone(),
            format!("{:.1} ms", millis(row.empty.wall)),
            format!("{:.1} ms", millis(row.big.wall)),
            format!("{:.2}x", row.time_ratio()),
            format!("{:.1} MiB", mib(row.empty.rss_kib)),
            format!("{:.1} MiB", mib(row.big.rss_kib)),
            format!("{:.2}x", row.rss_ratio()),
            verdict,
        ]);
    }
    outln!("{t}");
    outln!(
        "note: times run from each process's exec to its exit — `run`'s to its {READY_LINE:?} \
         log line; peak RSS is the process's VmHWM as it exits (`run`'s covers its stop too)."
    );
}

/// A home's contents in words.
fn describe(s: &Shape) -> String {
    format!(
        "{} elements, {} tasks, {} agents of {} messages, {} plugins with {} calls each",
        s.elements,
        s.tasks,
        s.agents,
        s.turns * 2,
        s.plugins,
        s.calls_per_plugin
    )
}
