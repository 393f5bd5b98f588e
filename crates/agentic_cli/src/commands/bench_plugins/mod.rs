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
//! And what a server plugin costs (an MCP server as a jailed subprocess),
//! measured on the echo example server (plugins/servers/echo, a
//! stdlib-only Python server; `echo` with `{"text":"Ada"}`), each beside
//! the same server run unsandboxed in the same run:
//!
//! - cold start to the first tool result, sandboxed (and through the
//!   manager) against a plain spawn of the same command;
//! - warm calls through the manager with asynchronous recording (and the
//!   sandbox's call without the manager) against the bare MCP call on an
//!   unsandboxed session;
//! - warm calls with durable recording beside the same-run `fdatasync`.
//!
//! This file is the command, its targets and its table (or JSON);
//! [`measure`](mod@measure) takes the WebAssembly measurements and
//! [`server`](mod@server) the server's.

mod measure;
mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentic_core::plugin::PluginManager;
use agentic_store::bench::fsync_latency;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use self::measure::{Plan, Report, measure};
use self::server::{ServerReport, measure_server, read_server_manifest};
use super::Ctx;
use crate::output;

/// Where `scripts/build-plugins` stages hello_world, from the repository root.
const DEFAULT_PLUGIN_DIR: &str = "plugins/dist/hello_world";
/// The function called, its input, and the greeting it must answer.
const FUNCTION: &str = "greet";
const INPUT: &str = r#"{"name":"Ada"}"#;
const GREETING: &str = "Hello, Ada!";

/// Where the echo example server lives, from the repository root.
const DEFAULT_SERVER_DIR: &str = "plugins/servers/echo";
/// The server's tool called (the function lion makes of it has its name),
/// its input, and the text it must echo.
const SERVER_FUNCTION: &str = "echo";
const SERVER_INPUT: &str = r#"{"text":"Ada"}"#;
const SERVER_TEXT: &str = "Ada";

/// Targets: a managed call's median latency, absolute and against the raw
/// wasmtime call, and loading a plugin from the cache.
const TARGET_CALL_P50_MICROS: f64 = 50.0;
const TARGET_CALL_VS_RAW: f64 = 2.0;
const TARGET_CACHED_LOAD_MILLIS: f64 = 5.0;

/// Targets of a server plugin: what the sandbox adds to a cold start (to
/// the first tool result), and a warm call through the manager against the
/// bare MCP call on an unsandboxed session (medians).
const TARGET_COLD_START_ADDED_MILLIS: f64 = 5.0;
const TARGET_WARM_CALL_VS_BARE: f64 = 1.2;

/// Runs the plugin benchmark and prints its table (or JSON).
pub async fn run(
    ctx: Ctx,
    quick: bool,
    dir: Option<PathBuf>,
    plugin: Option<PathBuf>,
    server: Option<PathBuf>,
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
    let server_manifest =
        read_server_manifest(&server.unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_DIR)))?;
    let home = dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("lion-bench-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the scratch home {}", home.display()))?;
    let plan = Plan::new(quick);
    errln!("bench: raw fdatasync, {} times…", plan.fsync_samples);
    let fsync = fsync_latency(&home.join("fsync.probe"), plan.fsync_samples);
    let result = match fsync {
        Ok(fsync) => measure(&plan, &home, manifest, component, ctx.correlation_id, fsync).await,
        Err(e) => Err(e.into()),
    };
    let result = match result {
        Ok(report) => measure_server(&plan, &home.join("server"), server_manifest, ctx)
            .await
            .map(|server| (report, server)),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&home);
    let (report, server) = result?;
    let logging = tracing::enabled!(target: "agentic_wasm::host", tracing::Level::INFO);
    if ctx.json {
        let mut json = json_report(&report, &plan, logging);
        json["server"] = server_json(&server, &plan);
        return output::json(&json);
    }
    print_table(&report, &plan, &home);
    print_server_table(&server, &report, &plan);
    if logging {
        outln!(
            "note: info logs are on (RUST_LOG): every call wrote the plugin's log line, and \
             both paths paid for it"
        );
    }
    Ok(())
}

/// A target's verdict cell: none on a quick run.
fn verdict(plan: &Plan, ok: bool) -> &'static str {
    if plan.quick {
        "no evidence (quick run)"
    } else if ok {
        "PASS"
    } else {
        "FAIL"
    }
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
/// A row of a durable call's `figure` beside the same run's raw
/// fdatasync `flush` (no target: the ratio says what the disk costs).
fn beside_fsync(what: &str, figure: Duration, flush: Duration) -> [String; 6] {
    [
        what.into(),
        time(figure),
        format!("fdatasync {}", time(flush)),
        ratio(figure.as_secs_f64(), flush.as_secs_f64()),
        String::new(),
        String::new(),
    ]
}

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
    outln!(
        "lion bench plugins — {}.{FUNCTION} {INPUT}: component {} KiB, compiled {} KiB; \
         scratch home {}",
        r.plugin,
        r.component_bytes.div_ceil(1024),
        r.artifact_bytes.div_ceil(1024),
        home.display()
    );
    let verdict = |ok: bool| verdict(plan, ok);
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
        row(beside_fsync(what, figure, flush));
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
    outln!("{t}");
    outln!(
        "note: the manager runs at most {} calls of {} at once (its max_concurrency); the raw \
         path has no such limit",
        r.max_concurrency,
        r.plugin
    );
}

/// What the sandbox adds to a cold start to the first tool result
/// (medians).
fn cold_added(s: &ServerReport) -> Duration {
    s.cold_sandboxed.p50.saturating_sub(s.cold_plain.p50)
}

/// Whether the sandbox's cold start meets its target.
fn cold_ok(s: &ServerReport) -> bool {
    millis(s.cold_sandboxed.p50) - millis(s.cold_plain.p50) <= TARGET_COLD_START_ADDED_MILLIS
}

/// Whether a warm call through the manager meets its target.
fn warm_ok(s: &ServerReport) -> bool {
    s.warm_manager.p50.as_secs_f64() <= TARGET_WARM_CALL_VS_BARE * s.warm_plain.p50.as_secs_f64()
}

/// `a - b` in milliseconds, signed, as a table cell.
fn added_millis(a: Duration, b: Duration) -> String {
    format!("{:+.2} ms", millis(a) - millis(b))
}

fn server_json(s: &ServerReport, plan: &Plan) -> Value {
    json!({
        "plugin": s.plugin,
        "command": s.command,
        "function": SERVER_FUNCTION,
        "input": SERVER_INPUT,
        "cold_starts": plan.cold_starts,
        "cold_start_unsandboxed_p50_ms": millis(s.cold_plain.p50),
        "cold_start_unsandboxed_p99_ms": millis(s.cold_plain.p99),
        "cold_start_sandboxed_p50_ms": millis(s.cold_sandboxed.p50),
        "cold_start_sandboxed_p99_ms": millis(s.cold_sandboxed.p99),
        "cold_start_manager_p50_ms": millis(s.cold_manager.p50),
        "cold_start_manager_p99_ms": millis(s.cold_manager.p99),
        "cold_start_sandbox_added_ms": millis(s.cold_sandboxed.p50) - millis(s.cold_plain.p50),
        "cold_start_manager_added_ms": millis(s.cold_manager.p50) - millis(s.cold_plain.p50),
        "sequential_calls": plan.server_calls,
        "bare_call_p50_us": micros(s.warm_plain.p50),
        "bare_call_p99_us": micros(s.warm_plain.p99),
        "sandbox_call_p50_us": micros(s.warm_sandboxed.p50),
        "sandbox_call_p99_us": micros(s.warm_sandboxed.p99),
        "manager_call_p50_us": micros(s.warm_manager.p50),
        "manager_call_p99_us": micros(s.warm_manager.p99),
        "durable_sequential_calls": plan.server_durable_calls,
        "durable_call_p50_us": micros(s.warm_durable.p50),
        "durable_call_p99_us": micros(s.warm_durable.p99),
        "cold_start_target_met": cold_ok(s),
        "warm_call_target_met": warm_ok(s),
    })
}

/// The server plugin's table; its durable rows sit beside the same-run
/// `fdatasync` of the WebAssembly table (`r.fsync`).
fn print_server_table(s: &ServerReport, r: &Report, plan: &Plan) {
    outln!();
    outln!(
        "lion bench plugins — server plugin {}.{SERVER_FUNCTION} {SERVER_INPUT}: {} (an MCP \
         server over stdio); each path starts the same command, arguments and working \
         directory",
        s.plugin,
        s.command.display()
    );
    let mut t = output::table([
        "measurement",
        "figure",
        "same-run baseline",
        "added / ratio",
        "target",
        "verdict",
    ]);
    let mut row = |cells: [String; 6]| {
        t.add_row(cells);
    };
    let empty = String::new;
    let n = plan.cold_starts;
    row([
        format!(
            "cold start to the first tool result, unsandboxed (spawn, initialize, call): p50 of {n}"
        ),
        time(s.cold_plain.p50),
        "baseline (cold start)".into(),
        empty(),
        empty(),
        empty(),
    ]);
    row([
        format!(
            "cold start to the first tool result, sandboxed (ProcessSandbox: files' hash check, \
             jail, initialize, tools/list; same call): p50 of {n}"
        ),
        time(s.cold_sandboxed.p50),
        format!("unsandboxed {}", time(s.cold_plain.p50)),
        added_millis(s.cold_sandboxed.p50, s.cold_plain.p50),
        format!("≤ +{TARGET_COLD_START_ADDED_MILLIS} ms"),
        verdict(plan, cold_ok(s)).into(),
    ]);
    row([
        format!(
            "cold start through the manager (the sandbox's start, plugin_loaded committed, the \
             call recorded): p50 of {n}"
        ),
        time(s.cold_manager.p50),
        format!("unsandboxed {}", time(s.cold_plain.p50)),
        added_millis(s.cold_manager.p50, s.cold_plain.p50),
        empty(),
        empty(),
    ]);
    for (what, figure) in [("p50", s.warm_plain.p50), ("p99", s.warm_plain.p99)] {
        row([
            format!("bare MCP call on an unsandboxed session, warm, sequential: {what}"),
            time(figure),
            "baseline (warm call)".into(),
            empty(),
            empty(),
            empty(),
        ]);
    }
    for (what, figure, bare) in [
        ("p50", s.warm_sandboxed.p50, s.warm_plain.p50),
        ("p99", s.warm_sandboxed.p99, s.warm_plain.p99),
    ] {
        row([
            format!(
                "sandbox call of its warm jailed server (input parsed, output converted; no \
                 manager), sequential: {what}"
            ),
            time(figure),
            format!("unsandboxed {}", time(bare)),
            ratio(figure.as_secs_f64(), bare.as_secs_f64()),
            empty(),
            empty(),
        ]);
    }
    row([
        "manager call of a jailed server, async recording (events committed later, not waited \
         for), warm, sequential: p50"
            .into(),
        time(s.warm_manager.p50),
        format!("bare unsandboxed {}", time(s.warm_plain.p50)),
        ratio(
            s.warm_manager.p50.as_secs_f64(),
            s.warm_plain.p50.as_secs_f64(),
        ),
        format!("≤ {TARGET_WARM_CALL_VS_BARE}x bare"),
        verdict(plan, warm_ok(s)).into(),
    ]);
    row([
        "manager call of a jailed server, async recording, warm, sequential: p99".into(),
        time(s.warm_manager.p99),
        format!("bare unsandboxed {}", time(s.warm_plain.p99)),
        ratio(
            s.warm_manager.p99.as_secs_f64(),
            s.warm_plain.p99.as_secs_f64(),
        ),
        empty(),
        empty(),
    ]);
    for (what, figure, flush) in [
        (
            "manager call of a jailed server, durable recording (as `lion plugin call`), warm, \
             sequential: p50",
            s.warm_durable.p50,
            r.fsync.p50,
        ),
        (
            "manager call of a jailed server, durable recording, warm, sequential: p99",
            s.warm_durable.p99,
            r.fsync.p99,
        ),
    ] {
        row(beside_fsync(what, figure, flush));
    }
    outln!("{t}");
    outln!(
        "note: the sandbox adds {} to a cold start (p50); a start through the manager also \
         reads the plugin's record and commits its plugin_loaded event before the call",
        time(cold_added(s))
    );
}
