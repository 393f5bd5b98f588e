//! `lion bench dashboard`: whether the dashboard's timeline opens as fast
//! on a home of about a million events as on an almost empty one, and how
//! long its frames take while it scrolls.
//!
//! It builds (or, with `--keep`, reuses) `lion bench scale`'s two homes,
//! serves each with `lion serve`, and runs `web/tests/bench.mjs` in
//! Debian's headless Chromium: per home, the time from navigation to the
//! timeline's first rendered row (a fresh browser context each run, signed
//! in beforehand; the median counts) and the frame times while the timeline
//! scrolls from the middle of the log at 100 px a frame for 240 frames,
//! once the timeline's read model has caught up with the log (a first start
//! builds it in the background; how long that took is printed too); and on
//! the big home (a scroll area scaled to fit the browser's limit), whether
//! the rows a reader scrolled back to stay put while 200 events stream in.
//! Targets: the big home's first render within 1.5x of the empty one's (the
//! page's cost must not grow with the log); rows that move by 0. Needs the checkout's `web/` (built by `scripts/build-web`) and
//! `/usr/bin/chromium`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use super::bench_scale::{Homes, bench_dir, homes, read_plugin};
use crate::output;

/// Target: the big home's first render at most this many times the empty one's.
const TARGET_FIRST_RENDER: f64 = 1.5;

/// Browser runs per home (the median counts).
const RUNS: usize = 5;

/// What `lion bench dashboard` is told.
pub struct DashboardBench {
    /// Homes of about 20k events (figures mean little).
    pub quick: bool,
    /// Where to build the homes, removed afterwards.
    pub dir: Option<PathBuf>,
    /// Where to build the homes and keep them.
    pub keep: Option<PathBuf>,
}

/// A `lion serve` of a home, killed on drop.
struct Served {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `home` on a free loopback port; waits for its ready line.
fn serve(home: &Path) -> Result<Served> {
    let exe = std::env::current_exe().context("cannot find the running lion binary")?;
    let mut child = Command::new(&exe)
        .arg("--home")
        .arg(home)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start lion serve")?;
    let stdout = child.stdout.take().context("lion serve's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("lion serve: listening on ") else {
        let _ = child.kill();
        bail!("lion serve on {} did not start: {line:?}", home.display());
    };
    let token = std::fs::read_to_string(home.join("serve.token"))
        .with_context(|| format!("cannot read {}'s token", home.display()))?;
    Ok(Served {
        url: url.to_owned(),
        token: token.trim().to_owned(),
        child,
    })
}

/// The median of `values` (0 if none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The `q` quantile of `values` (0 if none).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
    sorted.get(at).copied().unwrap_or(0.0)
}

/// The numbers of a JSON array.
fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// `lion bench dashboard`.
pub async fn run(ctx: Ctx, opts: DashboardBench) -> Result<()> {
    let script = Path::new("web/tests/bench.mjs");
    if !script.is_file() || !Path::new("web/node_modules/playwright-core").is_dir() {
        bail!(
            "run lion bench dashboard from the lion checkout after scripts/build-web \
             (it needs web/tests/bench.mjs and web/node_modules)"
        );
    }
    if !Path::new("/usr/bin/chromium").is_file() {
        bail!("the dashboard bench needs Debian's chromium (scripts/test-deps installs it)");
    }
    let manifest = read_plugin(Path::new("plugins/dist/hello_world"))?;
    let (dir, temporary) = bench_dir(opts.keep.as_deref(), opts.dir.as_deref(), "dashboard")?;
    let measured = measure(&dir, opts.quick, &manifest).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (homes, result) = measured?;
    let first = |name: &str| numbers(&result[name]["first_render_ms"]);
    let frames = |name: &str| numbers(&result[name]["frame_ms"]);
    let (empty_first, big_first) = (median(&first("empty")), median(&first("big")));
    let ratio = big_first / empty_first.max(1e-6);
    // The rows a reader scrolled back to on the big home, while events
    // streamed in: they must not move.
    let moved = result["big"]["rows_moved"].as_i64();
    // And scrolled down to the bottom after, the newest row is in view.
    let bottom = result["big"]["bottom_is_newest"].as_bool();
    let steady = moved == Some(0) && bottom == Some(true);
    let fast = ratio <= TARGET_FIRST_RENDER;
    let ok = fast && steady;
    if ctx.json {
        return output::json(&json!({
            "events": {"empty": homes.empty.events, "big": homes.big.events},
            "first_render_ms": {"empty": empty_first, "big": big_first},
            "first_render_ratio": ratio,
            "read_model_caught_up_ms": {
                "empty": result["empty"]["indexed_ms"],
                "big": result["big"]["indexed_ms"],
            },
            "frame_ms": {
                "empty": {"p50": quantile(&frames("empty"), 0.5), "p95": quantile(&frames("empty"), 0.95)},
                "big": {"p50": quantile(&frames("big"), 0.5), "p95": quantile(&frames("big"), 0.95)},
            },
            "unloaded_frames": result["big"]["unloaded_frames"],
            "rows_moved_while_streaming": moved,
            "bottom_is_newest": bottom,
            "pass": ok,
        }));
    }
    outln!(
        "lion bench dashboard — the timeline in headless Chromium, homes of {} and {} events",
        homes.empty.events,
        homes.big.events
    );
    let mut table = output::bench_table();
    table.add_row([
        "first rendered row, empty home (median)".to_owned(),
        format!("{empty_first:.0} ms"),
        "baseline".to_owned(),
        String::new(),
        String::new(),
    ]);
    table.add_row([
        "first rendered row, big home (median)".to_owned(),
        format!("{big_first:.0} ms"),
        format!("{ratio:.2}x the empty home's"),
        format!("≤ {TARGET_FIRST_RENDER}x"),
        if fast { "PASS" } else { "FAIL" }.to_owned(),
    ]);
    for name in ["empty", "big"] {
        let f = frames(name);
        table.add_row([
            format!("frame time while scrolling, {name} home"),
            format!(
                "p50 {:.1} ms, p95 {:.1} ms",
                quantile(&f, 0.5),
                quantile(&f, 0.95)
            ),
            match name {
                "empty" => "baseline (nothing to scroll: idle frames)".to_owned(),
                _ => format!(
                    "100 px a frame from the middle, 240 frames; {} showed rows not yet loaded",
                    result[name]["unloaded_frames"].as_u64().unwrap_or(0)
                ),
            },
            String::new(),
            String::new(),
        ]);
    }
    table.add_row([
        "rows in view, scrolled back, while 200 events stream in (big home)".to_owned(),
        moved.map_or("not measured".to_owned(), |m| {
            let end = if bottom == Some(true) {
                ""
            } else {
                "; the bottom missed the newest row"
            };
            format!("moved {m} rows{end}")
        }),
        "the rows before the events".to_owned(),
        "0 rows; the bottom shows the newest".to_owned(),
        if steady { "PASS" } else { "FAIL" }.to_owned(),
    ]);
    for name in ["empty", "big"] {
        let ms = result[name]["indexed_ms"].as_f64().unwrap_or(0.0);
        table.add_row([
            format!("timeline read model caught up, {name} home"),
            format!("{:.1} s after lion serve was ready", ms / 1000.0),
            "a first start builds it; measured after".to_owned(),
            String::new(),
            String::new(),
        ]);
    }
    outln!("{table}");
    if opts.quick {
        outln!("note: --quick builds small homes; its figures mean little");
    } else if !ok {
        bail!("the timeline on the big home misses a target (first render, or rows that stay put)");
    }
    Ok(())
}

/// Builds the homes, serves them, and runs the browser bench.
async fn measure(dir: &Path, quick: bool, manifest: &str) -> Result<(Homes, Value)> {
    let plugin = Path::new("plugins/dist/hello_world");
    let homes = homes(dir, quick, plugin, manifest).await?;
    errln!("bench: serving both homes…");
    let empty = serve(&dir.join("empty-home"))?;
    let big = serve(&dir.join("big-home"))?;
    let list = json!([
        {"name": "empty", "url": empty.url, "token": empty.token},
        {"name": "big", "url": big.url, "token": big.token},
    ]);
    errln!("bench: the timeline in headless Chromium, {RUNS} runs per home…");
    let output = tokio::process::Command::new("node")
        .arg("tests/bench.mjs")
        .current_dir("web")
        .env("LION_HOMES", list.to_string())
        .env("RUNS", RUNS.to_string())
        .output()
        .await
        .context("cannot run node")?;
    if !output.status.success() {
        bail!(
            "the browser bench failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let result: Value = serde_json::from_slice(&output.stdout)
        .context("the browser bench printed no JSON result")?;
    Ok((homes, result))
}
