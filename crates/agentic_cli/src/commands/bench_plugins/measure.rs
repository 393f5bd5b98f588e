//! What `bench plugins` measures and how: a cold compile, loads from the
//! on-disk cache, and calls on the raw wasmtime path and through the plugin
//! manager (asynchronous and durable recording), sequential and
//! concurrent, on a fresh sandbox and a scratch home.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::plugin::{CallOptions, PluginManager, PluginManifest, Sandbox, VerifiedArtifact};
use agentic_core::{Durability, EventStore};
use agentic_store::{SqliteOptions, SqliteStore};
use agentic_wasm::WasmSandbox;
use agentic_wasm::baseline::RawPlugin;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use uuid::Uuid;

use super::{FUNCTION, GREETING, INPUT};
use crate::commands::plugin::plugins_dir;

/// Concurrent callers of the calls/s measurements.
const CONCURRENCY: [usize; 2] = [2, 16];

/// How much of everything to measure.
pub(super) struct Plan {
    pub(super) quick: bool,
    /// Cold compiles.
    pub(super) compiles: usize,
    /// Loads from the cache.
    pub(super) loads: usize,
    /// Calls before measuring, on each path.
    pub(super) warmup: usize,
    /// Sequential calls measured, on each path with asynchronous recording.
    pub(super) calls: usize,
    /// Sequential calls measured with durable recording (each waits for a
    /// flush, so fewer).
    pub(super) durable_calls: usize,
    /// Flushes timed for the raw `fdatasync` baseline.
    pub(super) fsync_samples: usize,
    /// Cold starts of the server plugin, on each path.
    pub(super) cold_starts: usize,
    /// Sequential warm calls of the server plugin measured, on each path
    /// with asynchronous recording.
    pub(super) server_calls: usize,
    /// Sequential warm calls of the server plugin with durable recording.
    pub(super) server_durable_calls: usize,
    /// How long each calls/s measurement runs.
    pub(super) duration: Duration,
}

impl Plan {
    pub(super) fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                compiles: 1,
                loads: 3,
                warmup: 10,
                calls: 200,
                durable_calls: 30,
                fsync_samples: 20,
                cold_starts: 3,
                server_calls: 100,
                server_durable_calls: 20,
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
                cold_starts: 40,
                server_calls: 3_000,
                server_durable_calls: 300,
                duration: Duration::from_secs(3),
            }
        }
    }
}

/// The median and 99th percentile of some durations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Latency {
    pub(super) p50: Duration,
    pub(super) p99: Duration,
}

impl Latency {
    /// The median and 99th percentile of `samples`.
    pub(super) fn of(mut samples: Vec<Duration>) -> Self {
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
pub(super) struct Throughput {
    pub(super) tasks: usize,
    pub(super) raw: f64,
    pub(super) manager: f64,
    pub(super) durable: f64,
}

/// Everything measured.
pub(super) struct Report {
    pub(super) plugin: String,
    pub(super) max_concurrency: u32,
    pub(super) component_bytes: usize,
    pub(super) artifact_bytes: usize,
    pub(super) sandbox_start: Duration,
    pub(super) compile: Duration,
    pub(super) load: Duration,
    pub(super) load_read: Duration,
    pub(super) load_check: Duration,
    pub(super) load_prepare: Duration,
    pub(super) raw: Latency,
    pub(super) manager: Latency,
    /// Raw `fdatasync` of a 4 KiB write, this run.
    pub(super) fsync: Latency,
    /// The manager with durable recording (as `lion plugin call`).
    pub(super) durable: Latency,
    pub(super) throughput: Vec<Throughput>,
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

/// Measures everything on a fresh sandbox and a scratch home in `home`.
pub(super) async fn measure(
    plan: &Plan,
    home: &Path,
    manifest: PluginManifest,
    component: Vec<u8>,
    correlation_id: Uuid,
    fsync: agentic_store::bench::Latency,
) -> Result<Report> {
    errln!("bench: starting the sandbox…");
    let started = Instant::now();
    let sandbox = Arc::new(WasmSandbox::new().context("cannot start the WebAssembly sandbox")?);
    let sandbox_start = started.elapsed();

    errln!(
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

    errln!("bench: installing into a scratch home…");
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

    errln!(
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

    errln!("bench: {} sequential calls on each path…", plan.calls);
    let raw_latency = sequential(raw.clone(), plan.warmup, plan.calls).await?;
    let manager_latency = sequential(managed.clone(), plan.warmup, plan.calls).await?;
    errln!(
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
        errln!("bench: calls/s with {tasks} concurrent callers on each path…");
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
