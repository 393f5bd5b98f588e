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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::plugin::{CallOptions, PluginManager, PluginManifest, Sandbox, VerifiedArtifact};
use agentic_core::{Durability, EventStore};
use agentic_store::bench::fsync_latency;
use agentic_store::{SqliteOptions, SqliteStore};
use agentic_wasm::WasmSandbox;
use agentic_wasm::baseline::RawPlugin;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Ctx;
use super::plugin::plugins_dir;
use crate::output;

/// Where `scripts/build-plugins` stages hello_world, from the repository root.
const DEFAULT_PLUGIN_DIR: &str = "plugins/dist/hello_world";
/// The function called, its input, and the greeting it must answer.
const FUNCTION: &str = "greet";
const INPUT: &str = r#"{"name":"Ada"}"#;
const GREETING: &str = "Hello, Ada!";
/// Concurrent callers of the calls/s measurements.
const CONCURRENCY: [usize; 2] = [2, 16];

/// Targets: a managed call's median latency, absolute and against the raw
/// wasmtime call, and loading a plugin from the cache.
const TARGET_CALL_P50_MICROS: f64 = 50.0;
const TARGET_CALL_VS_RAW: f64 = 2.0;
const TARGET_CACHED_LOAD_MILLIS: f64 = 5.0;

/// How much of everything to measure.
struct Plan {
    quick: bool,
    /// Cold compiles.
    compiles: usize,
    /// Loads from the cache.
    loads: usize,
    /// Calls before measuring, on each path.
    warmup: usize,
    /// Sequential calls measured, on each path with asynchronous recording.
    calls: usize,
    /// Sequential calls measured with durable recording (each waits for a
    /// flush, so fewer).
    durable_calls: usize,
    /// Flushes timed for the raw `fdatasync` baseline.
    fsync_samples: usize,
    /// How long each calls/s measurement runs.
    duration: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                compiles: 1,
                loads: 3,
                warmup: 10,
                calls: 200,
                durable_calls: 30,
                fsync_samples: 20,
                duration: Duration::from_millis(200),
            }
        } else {
            Self {
                quick,
                compiles: 5,
                loads: 30,
                warmup: 500,
                calls: 10_000,
                durable_calls: 1_000,
                fsync_samples: 200,
                duration: Duration::from_secs(3),
            }
        }
    }
}

/// The median and 99th percentile of some durations.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// The median of some durations.
fn median(samples: Vec<Duration>) -> Duration {
    Latency::of(samples).p50
}

/// Calls/s with some concurrent callers, on every path.
struct Throughput {
    tasks: usize,
    raw: f64,
    manager: f64,
    durable: f64,
}

/// Everything measured.
struct Report {
    plugin: String,
    max_concurrency: u32,
    component_bytes: usize,
    artifact_bytes: usize,
    sandbox_start: Duration,
    compile: Duration,
    load: Duration,
    load_read: Duration,
    load_check: Duration,
    load_prepare: Duration,
    raw: Latency,
    manager: Latency,
    /// Raw `fdatasync` of a 4 KiB write, this run.
    fsync: Latency,
    /// The manager with durable recording (as `lion plugin call`).
    durable: Latency,
    throughput: Vec<Throughput>,
}

/// One way of calling `greet`: the raw wasmtime path, or the manager.
#[derive(Clone)]
enum Caller {
    Raw(Arc<RawPlugin>),
    Manager {
        manager: PluginManager,
        name: Arc<str>,
    },
}

impl Caller {
    /// One call; its output.
    async fn call(&self) -> Result<Value> {
        match self {
            Caller::Raw(plugin) => {
                let output = plugin
                    .call(FUNCTION, INPUT)
                    .await
                    .map_err(|failure| anyhow!("{}.{FUNCTION} (raw): {failure}", plugin.name()))?;
                Ok(serde_json::from_str(&output)?)
            }
            Caller::Manager { manager, name } => Ok(manager
                .call(name, FUNCTION, INPUT, CallOptions::default())
                .await?),
        }
    }

    /// One call, its output dropped (the raw path does not parse it).
    async fn call_only(&self) -> Result<()> {
        match self {
            Caller::Raw(plugin) => {
                plugin
                    .call(FUNCTION, INPUT)
                    .await
                    .map_err(|failure| anyhow!("{}.{FUNCTION} (raw): {failure}", plugin.name()))?;
            }
            Caller::Manager { manager, name } => {
                manager
                    .call(name, FUNCTION, INPUT, CallOptions::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until everything recorded so far is committed (manager only).
    async fn flush(&self) -> Result<()> {
        if let Caller::Manager { manager, .. } = self {
            manager.flush().await?;
        }
        Ok(())
    }

    /// Fails unless the call answers the expected greeting.
    async fn check(&self) -> Result<()> {
        let output = self.call().await?;
        if output.get("greeting").and_then(Value::as_str) != Some(GREETING) {
            bail!("{FUNCTION} {INPUT} answered {output}, not a greeting of {GREETING:?}");
        }
        Ok(())
    }
}

/// `warmup` calls, then `calls` sequential calls, each timed (in a runtime
/// task, as callers run); the manager's events are flushed afterwards.
async fn sequential(caller: Caller, warmup: usize, calls: usize) -> Result<Latency> {
    tokio::spawn(async move {
        for _ in 0..warmup {
            caller.call_only().await?;
        }
        caller.flush().await?;
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            caller.call_only().await?;
            samples.push(started.elapsed());
        }
        caller.flush().await?;
        Ok(Latency::of(samples))
    })
    .await?
}

/// `tasks` concurrent loops calling for `duration`: calls per second, the
/// flush of the manager's events included in the time.
async fn concurrent(caller: Caller, tasks: usize, duration: Duration) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + duration;
    let loops: Vec<_> = (0..tasks)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    caller.call_only().await?;
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    let mut done = 0;
    for l in loops {
        done += l.await??;
    }
    caller.flush().await?;
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

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
    let component = std::fs::read(&manifest.component.path).with_context(|| {
        format!(
            "cannot read the component {} (run scripts/build-plugins)",
            manifest.component.path.display()
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

/// Measures everything on a fresh sandbox and a scratch home in `home`.
async fn measure(
    plan: &Plan,
    home: &Path,
    manifest: PluginManifest,
    component: Vec<u8>,
    correlation_id: Uuid,
    fsync: agentic_store::bench::Latency,
) -> Result<Report> {
    eprintln!("bench: starting the sandbox…");
    let started = Instant::now();
    let sandbox = Arc::new(WasmSandbox::new().context("cannot start the WebAssembly sandbox")?);
    let sandbox_start = started.elapsed();

    eprintln!(
        "bench: compiling {} ({} KiB) {} time(s)…",
        manifest.name,
        component.len().div_ceil(1024),
        plan.compiles
    );
    let component_bytes = component.len();
    let compiles = {
        let sandbox = sandbox.clone();
        let n = plan.compiles;
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|_| {
                    let started = Instant::now();
                    sandbox.compile(&component)?;
                    Ok(started.elapsed())
                })
                .collect::<Result<Vec<_>>>()
        })
        .await??
    };

    eprintln!("bench: installing into a scratch home…");
    let sqlite = Arc::new(SqliteStore::open(home, SqliteOptions::default())?);
    let store: Arc<dyn EventStore> = sqlite.clone();
    let manager = PluginManager::new(
        store,
        sandbox.clone(),
        plugins_dir(home),
        correlation_id,
        Durability::Async,
    );
    let grant = manifest.permissions.clone();
    let record = manager.install(manifest, grant).await?;
    let name = record.name().to_owned();
    let key = sandbox.artifact_key().to_owned();
    let expected = record
        .artifacts
        .get(&key)
        .cloned()
        .ok_or_else(|| anyhow!("installing {name} recorded no compiled artifact for {key}"))?;
    let artifact_path = plugins_dir(home)
        .join("compiled")
        .join(&key)
        .join(format!("{}.bin", record.installed.sha256()));

    eprintln!(
        "bench: loading from the on-disk cache {} times…",
        plan.loads
    );
    let (loads, artifact) = {
        let sandbox = sandbox.clone();
        let n = plan.loads;
        tokio::task::spawn_blocking(move || {
            let read_checked = || -> Result<(VerifiedArtifact, [Instant; 3])> {
                let t0 = Instant::now();
                let bytes = std::fs::read(&artifact_path).with_context(|| {
                    format!(
                        "cannot read the cached artifact {}",
                        artifact_path.display()
                    )
                })?;
                let t1 = Instant::now();
                let artifact = VerifiedArtifact::check(bytes, &expected).ok_or_else(|| {
                    anyhow!(
                        "the cached artifact {} does not have its recorded sha256",
                        artifact_path.display()
                    )
                })?;
                Ok((artifact, [t0, t1, Instant::now()]))
            };
            let mut loads = Vec::with_capacity(n);
            for _ in 0..n {
                let (artifact, [t0, t1, t2]) = read_checked()?;
                let loaded = sandbox.load(&artifact)?;
                let t3 = Instant::now();
                drop(loaded);
                loads.push([t3 - t0, t1 - t0, t2 - t1, t3 - t2]);
            }
            let (artifact, _) = read_checked()?;
            Ok::<_, anyhow::Error>((loads, artifact))
        })
        .await??
    };
    let part = |i: usize| median(loads.iter().map(|l| l[i]).collect());

    let raw = Caller::Raw(Arc::new(RawPlugin::load(
        &sandbox,
        &artifact,
        &name,
        record.installed.grant.clone(),
        record.installed.manifest.limits,
    )?));
    let managed = Caller::Manager {
        manager: manager.clone(),
        name: name.as_str().into(),
    };
    // What `lion plugin call` uses: every call's events committed before
    // the call returns.
    let durable_manager = PluginManager::new(
        sqlite.clone(),
        sandbox.clone(),
        plugins_dir(home),
        correlation_id,
        Durability::Durable,
    );
    let durable = Caller::Manager {
        manager: durable_manager.clone(),
        name: name.as_str().into(),
    };
    raw.check().await?;
    managed.check().await?;
    durable.check().await?;

    eprintln!("bench: {} sequential calls on each path…", plan.calls);
    let raw_latency = sequential(raw.clone(), plan.warmup, plan.calls).await?;
    let manager_latency = sequential(managed.clone(), plan.warmup, plan.calls).await?;
    eprintln!(
        "bench: {} sequential calls with durable recording…",
        plan.durable_calls
    );
    let durable_latency = sequential(
        durable.clone(),
        plan.warmup.min(plan.durable_calls),
        plan.durable_calls,
    )
    .await?;

    let mut throughput = Vec::new();
    for tasks in CONCURRENCY {
        eprintln!("bench: calls/s with {tasks} concurrent callers on each path…");
        throughput.push(Throughput {
            tasks,
            raw: concurrent(raw.clone(), tasks, plan.duration).await?,
            manager: concurrent(managed.clone(), tasks, plan.duration).await?,
            durable: concurrent(durable.clone(), tasks, plan.duration).await?,
        });
    }
    manager.flush().await?;
    let report = Report {
        plugin: name,
        max_concurrency: record.installed.manifest.limits.max_concurrency,
        component_bytes,
        artifact_bytes: artifact.bytes().len(),
        sandbox_start,
        compile: median(compiles),
        load: part(0),
        load_read: part(1),
        load_check: part(2),
        load_prepare: part(3),
        raw: raw_latency,
        manager: manager_latency,
        fsync: Latency {
            p50: Duration::from_secs_f64(fsync.p50_ms / 1e3),
            p99: Duration::from_secs_f64(fsync.p99_ms / 1e3),
        },
        durable: durable_latency,
        throughput,
    };
    // Close the scratch store before its home is deleted: the manager's
    // background appender holds it until the manager is closed.
    drop((raw, managed, durable));
    manager.close().await;
    durable_manager.close().await;
    drop(sqlite);
    Ok(report)
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
