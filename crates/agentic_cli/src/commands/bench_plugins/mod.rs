//! `lion bench plugins`: what a WebAssembly plugin costs, measured on the
//! hello_world example plugin (`greet` with `{"name":"Ada"}`), each figure
//! beside a baseline measured in the same run:
//!
//! - compiling its component (wasmtime's Cranelift), cold;
//! - loading it from the on-disk cache, as a second `lion` process does:
//!   read the compiled artifact, check its SHA-256, deserialize and
//!   pre-instantiate it (against the cold compile);
//! - calling it through the plugin manager on a SQLite home, its events
//!   recorded asynchronously (the background group-commit appender), so the
//!   figure is the sandbox's and the manager's cost, not the disk's: the
//!   latency of sequential calls, and calls/s with 2 and 16 concurrent
//!   callers, the final flush included (against the raw wasmtime path of
//!   [`agentic_wasm::baseline`]: the same engine, component, WASI context,
//!   limits and deadline, without the manager);
//! - the same calls with durable recording, as `lion plugin call` makes
//!   them: each call returns once its events are committed, so its latency
//!   is set by the disk's flush, shown beside a raw `fdatasync` measured in
//!   the same run.
//!
//! This file is the command, its targets and its table (or JSON);
//! [`measure`](mod@measure) takes every measurement.

mod measure;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentic_core::plugin::PluginManager;
use agentic_store::bench::fsync_latency;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use self::measure::{Plan, Report, measure};
use super::Ctx;
use crate::output;

/// Where `scripts/build-plugins` stages hello_world, from the repository root.
const DEFAULT_PLUGIN_DIR: &str = "plugins/dist/hello_world";
/// The function called, its input, and the greeting it must answer.
const FUNCTION: &str = "greet";
const INPUT: &str = r#"{"name":"Ada"}"#;
const GREETING: &str = "Hello, Ada!";

/// Targets: a managed call's median latency, absolute and against the raw
/// wasmtime call, and loading a plugin from the cache.
const TARGET_CALL_P50_MICROS: f64 = 50.0;
const TARGET_CALL_VS_RAW: f64 = 2.0;
const TARGET_CACHED_LOAD_MILLIS: f64 = 5.0;

/// Runs the plugin benchmark and prints its table (or JSON).
pub async fn run(
    ctx: Ctx,
    quick: bool,
    dir: Option<PathBuf>,
    plugin: Option<PathBuf>,
) -> Result<()> {
    let plugin_dir = plugin.unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_DIR));
    let manifest_path = plugin_dir.join("plugin.toml");
    if !manifest_path.is_file() {
        bail!(
            "no built plugin in {} (no plugin.toml): run scripts/build-plugins first, \
             or give --plugin DIR",
            plugin_dir.display()
        );
    }
    let manifest = PluginManager::read_manifest(&manifest_path)?;
    if !manifest.functions.contains_key(FUNCTION) {
        bail!(
            "plugin {} has no function {FUNCTION}: bench plugins measures hello_world",
            manifest.name
        );
    }
    let Some(component_ref) = &manifest.component else {
        bail!("plugin {} is not a WebAssembly plugin", manifest.name);
    };
    let component = std::fs::read(&component_ref.path).with_context(|| {
        format!(
            "cannot read the component {} (run scripts/build-plugins)",
            component_ref.path.display()
        )
    })?;
    let home = dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("lion-bench-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the scratch home {}", home.display()))?;
    let plan = Plan::new(quick);
    eprintln!("bench: raw fdatasync, {} times…", plan.fsync_samples);
    let fsync = fsync_latency(&home.join("fsync.probe"), plan.fsync_samples);
    let result = match fsync {
        Ok(fsync) => measure(&plan, &home, manifest, component, ctx.correlation_id, fsync).await,
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_dir_all(&home);
    let report = result?;
    let logging = tracing::enabled!(target: "agentic_wasm::host", tracing::Level::INFO);
    if ctx.json {
        return output::json(&json_report(&report, &plan, logging));
    }
    print_table(&report, &plan, &home);
    if logging {
        println!(
            "note: info logs are on (RUST_LOG): every call wrote the plugin's log line, and \
             both paths paid for it"
        );
    }
    Ok(())
}

/// Whether the managed call's median meets its targets.
fn call_ok(r: &Report) -> bool {
    micros(r.manager.p50) < TARGET_CALL_P50_MICROS
        && r.manager.p50.as_secs_f64() <= TARGET_CALL_VS_RAW * r.raw.p50.as_secs_f64()
}

/// Whether a load from the cache meets its target.
fn load_ok(r: &Report) -> bool {
    millis(r.load) < TARGET_CACHED_LOAD_MILLIS
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A duration for a table cell, in a unit that suits it.
fn time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `a / b` as a ratio cell (`1/N` when it is small).
fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 || a <= 0.0 {
        "-".into()
    } else if a / b >= 0.1 {
        format!("{:.2}x", a / b)
    } else {
        format!("1/{:.0}", b / a)
    }
}

/// A rate with its unit, for the table.
fn per_sec(x: f64) -> String {
    format!("{}/s", output::rate(x))
}

fn json_report(r: &Report, plan: &Plan, logging: bool) -> Value {
    json!({
        "plugin": r.plugin,
        "function": FUNCTION,
        "input": INPUT,
        "quick": plan.quick,
        "component_bytes": r.component_bytes,
        "artifact_bytes": r.artifact_bytes,
        "sandbox_start_ms": millis(r.sandbox_start),
        "compiles": plan.compiles,
        "compile_ms": millis(r.compile),
        "cached_loads": plan.loads,
        "cached_load_ms": millis(r.load),
        "cached_load_read_ms": millis(r.load_read),
        "cached_load_sha256_ms": millis(r.load_check),
        "cached_load_deserialize_ms": millis(r.load_prepare),
        "sequential_calls": plan.calls,
        "raw_call_p50_us": micros(r.raw.p50),
        "raw_call_p99_us": micros(r.raw.p99),
        "manager_call_p50_us": micros(r.manager.p50),
        "manager_call_p99_us": micros(r.manager.p99),
        "fsync_samples": plan.fsync_samples,
        "fsync_p50_us": micros(r.fsync.p50),
        "fsync_p99_us": micros(r.fsync.p99),
        "durable_sequential_calls": plan.durable_calls,
        "durable_call_p50_us": micros(r.durable.p50),
        "durable_call_p99_us": micros(r.durable.p99),
        "max_concurrency": r.max_concurrency,
        "throughput": r.throughput.iter().map(|t| json!({
            "tasks": t.tasks,
            "raw_calls_per_sec": t.raw,
            "manager_calls_per_sec": t.manager,
            "durable_calls_per_sec": t.durable,
        })).collect::<Vec<_>>(),
        "plugin_info_logs": logging,
        "manager_call_target_met": call_ok(r),
        "cached_load_target_met": load_ok(r),
    })
}

fn print_table(r: &Report, plan: &Plan, home: &Path) {
    println!(
        "lion bench plugins — {}.{FUNCTION} {INPUT}: component {} KiB, compiled {} KiB; \
         scratch home {}",
        r.plugin,
        r.component_bytes.div_ceil(1024),
        r.artifact_bytes.div_ceil(1024),
        home.display()
    );
    let verdict = |ok: bool| {
        if plan.quick {
            "no evidence (quick run)"
        } else if ok {
            "PASS"
        } else {
            "FAIL"
        }
    };
    let share = |part: Duration| {
        format!(
            "{:.0}%",
            100.0 * part.as_secs_f64() / r.load.as_secs_f64().max(1e-12)
        )
    };
    let mut t = output::table([
        "measurement",
        "figure",
        "same-run baseline",
        "ratio",
        "target",
        "verdict",
    ]);
    let mut row = |cells: [String; 6]| {
        t.add_row(cells);
    };
    let empty = String::new;
    row([
        "sandbox start: engine, pooling allocator, linker (once)".into(),
        time(r.sandbox_start),
        empty(),
        empty(),
        empty(),
        empty(),
    ]);
    row([
        format!("compile, cold (Cranelift), median of {}", plan.compiles),
        time(r.compile),
        "baseline (load)".into(),
        empty(),
        empty(),
        empty(),
    ]);
    row([
        format!(
            "cached load: read + SHA-256 + deserialize + pre-instantiate, median of {}",
            plan.loads
        ),
        time(r.load),
        format!("cold compile {}", time(r.compile)),
        ratio(r.load.as_secs_f64(), r.compile.as_secs_f64()),
        format!("< {TARGET_CACHED_LOAD_MILLIS} ms"),
        verdict(load_ok(r)).into(),
    ]);
    for (what, part) in [
        ("  read the compiled artifact", r.load_read),
        ("  SHA-256 check", r.load_check),
        ("  deserialize + pre-instantiate", r.load_prepare),
    ] {
        row([
            what.into(),
            time(part),
            "of cached load".into(),
            share(part),
            empty(),
            empty(),
        ]);
    }
    row([
        "raw wasmtime call, sequential: p50".into(),
        time(r.raw.p50),
        "baseline (latency)".into(),
        empty(),
        empty(),
        empty(),
    ]);
    row([
        "raw wasmtime call, sequential: p99".into(),
        time(r.raw.p99),
        "baseline (latency)".into(),
        empty(),
        empty(),
        empty(),
    ]);
    row([
        "manager call, async recording (events committed later, not waited for), sequential: p50"
            .into(),
        time(r.manager.p50),
        format!("raw p50 {}", time(r.raw.p50)),
        ratio(r.manager.p50.as_secs_f64(), r.raw.p50.as_secs_f64()),
        format!("< {TARGET_CALL_P50_MICROS} µs and ≤ {TARGET_CALL_VS_RAW}x raw"),
        verdict(call_ok(r)).into(),
    ]);
    row([
        "manager call, async recording, sequential: p99".into(),
        time(r.manager.p99),
        format!("raw p99 {}", time(r.raw.p99)),
        ratio(r.manager.p99.as_secs_f64(), r.raw.p99.as_secs_f64()),
        empty(),
        empty(),
    ]);
    for (what, figure) in [("p50", r.fsync.p50), ("p99", r.fsync.p99)] {
        row([
            format!("raw fdatasync of a 4 KiB write: {what}"),
            time(figure),
            "baseline (flush latency)".into(),
            empty(),
            empty(),
            empty(),
        ]);
    }
    for (what, figure, flush) in [
        (
            "manager call, durable recording (events committed before it returns, as \
             `lion plugin call`), sequential: p50",
            r.durable.p50,
            r.fsync.p50,
        ),
        (
            "manager call, durable recording, sequential: p99",
            r.durable.p99,
            r.fsync.p99,
        ),
    ] {
        row([
            what.into(),
            time(figure),
            format!("fdatasync {}", time(flush)),
            ratio(figure.as_secs_f64(), flush.as_secs_f64()),
            empty(),
            empty(),
        ]);
    }
    for th in &r.throughput {
        row([
            format!("raw wasmtime calls/s, {} callers", th.tasks),
            per_sec(th.raw),
            "baseline (throughput)".into(),
            empty(),
            empty(),
            empty(),
        ]);
        row([
            format!(
                "manager calls/s, async recording, {} callers, final flush included",
                th.tasks
            ),
            per_sec(th.manager),
            format!("raw {}", per_sec(th.raw)),
            ratio(th.manager, th.raw),
            empty(),
            empty(),
        ]);
        row([
            format!("manager calls/s, durable recording, {} callers", th.tasks),
            per_sec(th.durable),
            format!("raw {}", per_sec(th.raw)),
            ratio(th.durable, th.raw),
            empty(),
            empty(),
        ]);
    }
    println!("{t}");
    println!(
        "note: the manager runs at most {} calls of {} at once (its max_concurrency); the raw \
         path has no such limit",
        r.max_concurrency, r.plugin
    );
}
