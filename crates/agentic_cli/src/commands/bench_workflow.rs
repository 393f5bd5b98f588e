//! `lion bench workflow`: what a workflow step costs and how runs share
//! commits, in a kernel running in this process on a scratch SQLite home,
//! beside the disk's raw `fdatasync` measured in the same run.
//!
//! The steps are no-op plugin steps: their task's handler answers at once,
//! so a step's time is the workflow's own (deciding, recording the step and
//! its task, the task's start and end, the step's output), not a plugin's.
//! A step is timed from the commit that recorded the step before it (or
//! the run's start) to the commit that recorded its output, after untimed
//! runs that bring the store to the state a kernel that has been working
//! is in (its WAL started over once, so commits overwrite its blocks rather
//! than grow the file; see `docs/event-log.md`). A step is one
//! commit; beside `fdatasync`, the bench times that commit alone: the
//! same five events (the step's output, the next step, the task's end, the
//! next task's submission and claim; for the last step, its output, the
//! run's end and the task's end) appended one batch after another with no
//! kernel, on a home of its own warmed up the same way, so what a step
//! adds to its commit shows; and those commits of 100 runs at once, so the
//! ceiling the store itself sets for runs at once shows beside theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_core::kernel;
use agentic_core::orchestrator::{TaskContext, TaskError, TaskHandler};
use agentic_core::plugin::PLUGIN_HANDLER;
use agentic_core::workflow::definition::Definition;
use agentic_core::workflow::log;
use agentic_core::workflow::run::{Run, RunEvent};
use agentic_core::{EventStore, ExpectedVersion, Orchestrator, OrchestratorConfig, SystemEvent};
use agentic_store::bench::{Latency, SLOW_FLUSH_MS, fsync_latency, fsync_overwrite_latency};
use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::{Result, bail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Ctx;
use super::bench::Regime;
use crate::output;

/// Steps in the chain each run is.
const CHAIN: usize = 10;

/// Untimed runs, one at a time, before the timed ones: enough commits of a
/// step's size for the store's WAL to start over (about 256 of them; 40
/// runs make about 440).
const WARM_UP_RUNS: usize = 40;

/// Runs started at once for the throughput figure.
const CONCURRENT: usize = 100;

/// Rounds of [`CONCURRENT`] runs the throughput figure is taken over: one
/// round lasts about a tenth of a second, too short for a steady figure.
const CONCURRENT_ROUNDS: usize = 10;

/// Target: a step costs at most this many same-run `fdatasync` medians —
/// of an overwrite, as the warmed-up WAL's commits are (judged against the
/// flush that grows a file, the target would be easier than what is
/// measured).
const TARGET_STEP_FSYNCS: f64 = 2.0;

/// Target: concurrent runs make at least this many times a single run's
/// steps per second (they share commits).
const TARGET_SHARING: f64 = 20.0;

/// A plugin step's handler that answers at once.
struct NoOp;

#[async_trait]
impl TaskHandler for NoOp {
    async fn run(&self, _ctx: TaskContext, _input: Value) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }
}

/// A chain of [`CHAIN`] no-op plugin steps.
fn chain() -> String {
    let mut text = String::from("name = \"bench\"\n");
    for i in 1..=CHAIN {
        text.push_str(&format!(
            "[steps.s{i:02}]\nkind = \"plugin\"\nplugin = \"noop\"\nfunction = \"noop\"\n"
        ));
        if i > 1 {
            text.push_str(&format!("after = [\"s{:02}\"]\n", i - 1));
        }
    }
    text
}

/// When each run started and its steps completed, by commit time, as the
/// log says.
#[derive(Default)]
struct Timings {
    started: HashMap<Uuid, DateTime<Utc>>,
    steps: HashMap<Uuid, Vec<DateTime<Utc>>>,
    ended: HashMap<Uuid, DateTime<Utc>>,
}

/// Follows the log from `from` until every run of `runs` has ended.
async fn follow(
    store: &Arc<dyn EventStore>,
    from: u64,
    runs: &[Uuid],
    timings: &mut Timings,
) -> Result<()> {
    let mut log = store.clone().subscribe(from);
    let mut left: std::collections::HashSet<Uuid> = runs.iter().copied().collect();
    while !left.is_empty() {
        let record = tokio::time::timeout(Duration::from_secs(120), log.next())
            .await
            .map_err(|_| anyhow::anyhow!("runs stopped moving: {} left", left.len()))??;
        let Ok(SystemEvent::WorkflowRecorded { run, event }) = record.decode() else {
            continue;
        };
        let at = record.recorded_at;
        match *event {
            RunEvent::Started { .. } => {
                timings.started.insert(run, at);
            }
            RunEvent::StepCompleted { .. } => timings.steps.entry(run).or_default().push(at),
            RunEvent::Completed { .. } => {
                timings.ended.insert(run, at);
                left.remove(&run);
            }
            RunEvent::Failed { error } => bail!("a benchmark run failed: {error}"),
            _ => {}
        }
    }
    Ok(())
}

/// Times [`CHAIN`]-step runs' worth of step-shaped batches appended one
/// after another, with no kernel: a step's commit alone. The first
/// `warm_up` runs' worth are not timed.
async fn step_commits(
    store: &dyn EventStore,
    definition: &Definition,
    warm_up: usize,
    runs: usize,
) -> Result<Latency> {
    let mut samples = Vec::new();
    for i in 0..warm_up + runs {
        let times = chain_commits(store, definition).await?;
        if i >= warm_up {
            samples.extend(times);
        }
    }
    Ok(Latency::of(samples))
}

/// Steps/s of [`CONCURRENT`] runs' worth of step-shaped batches at once,
/// each run's appended one after another, with no kernel, over `rounds`
/// rounds: what the store alone allows the kernel's runs at once; and the
/// mean time a commit took meanwhile.
async fn concurrent_step_commits(
    store: &Arc<dyn EventStore>,
    definition: &Definition,
    rounds: usize,
) -> Result<(f64, f64)> {
    let before = counted(store.as_ref());
    let began = Instant::now();
    for _ in 0..rounds {
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENT {
            let (store, definition) = (store.clone(), definition.clone());
            runs.spawn(async move { chain_commits(store.as_ref(), &definition).await });
        }
        while let Some(run) = runs.join_next().await {
            run??;
        }
    }
    let elapsed = began.elapsed();
    Ok((
        (rounds * CONCURRENT * CHAIN) as f64 / elapsed.as_secs_f64(),
        commit_ms(before, counted(store.as_ref()), elapsed),
    ))
}

/// Appends one run's start and its [`CHAIN`] steps' batches as the kernel
/// commits them (the step's output and the next step's scheduling, the
/// task's end, the next task's submission and claim; the last step's output
/// with the run's end), one after another; the time each step's batch took.
async fn chain_commits(store: &dyn EventStore, definition: &Definition) -> Result<Vec<Duration>> {
    let run = start(store, definition).await?;
    let scheduled = |step: usize, task: Uuid| RunEvent::StepScheduled {
        step: format!("s{step:02}"),
        item: None,
        task,
        input: json!({"plugin": "noop", "function": "noop", "input": {}}),
    };
    let spec = |task: Uuid| SystemEvent::TaskSubmitted {
        task_id: task,
        spec: agentic_core::TaskSpec::new(PLUGIN_HANDLER, json!({"plugin": "noop"})),
    };
    let claim = |task: Uuid| SystemEvent::TaskStarted {
        task_id: task,
        attempt: 1,
        kernel: None,
    };
    let mut task = Uuid::now_v7();
    let mut first = log::recorded(run, [scheduled(1, task)], run);
    first.push(agentic_core::NewEvent::new(spec(task), run));
    first.push(agentic_core::NewEvent::new(claim(task), run));
    store.append(first, ExpectedVersion::Any).await?;
    let mut times = Vec::with_capacity(CHAIN);
    for step in 1..CHAIN {
        let next = Uuid::now_v7();
        let completed = RunEvent::StepCompleted {
            step: format!("s{step:02}"),
            item: None,
            output: Value::Null,
        };
        let mut batch = log::recorded(run, [completed, scheduled(step + 1, next)], run);
        let ended = SystemEvent::TaskCompleted {
            task_id: task,
            attempt: 1,
            output: Value::Null,
        };
        batch.extend([ended, spec(next), claim(next)].map(|e| agentic_core::NewEvent::new(e, run)));
        let began = Instant::now();
        store.append(batch, ExpectedVersion::Any).await?;
        times.push(began.elapsed());
        task = next;
    }
    // The last step's output, the run's end and the task's end.
    let last = RunEvent::StepCompleted {
        step: format!("s{CHAIN:02}"),
        item: None,
        output: Value::Null,
    };
    let ended = RunEvent::Completed {
        output: Value::Null,
    };
    let mut batch = log::recorded(run, [last, ended], run);
    batch.push(agentic_core::NewEvent::new(
        SystemEvent::TaskCompleted {
            task_id: task,
            attempt: 1,
            output: Value::Null,
        },
        run,
    ));
    let began = Instant::now();
    store.append(batch, ExpectedVersion::Any).await?;
    times.push(began.elapsed());
    Ok(times)
}

/// Records the start of a run of `definition`; its id.
async fn start(store: &dyn EventStore, definition: &Definition) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let started = Run::start(definition, json!({}), Utc::now(), None)?;
    store
        .append(log::recorded(id, [started], id), ExpectedVersion::NoStream)
        .await?;
    Ok(id)
}

/// Each step's time: from the commit before it to its output's.
fn step_times(timings: &Timings, runs: &[Uuid]) -> Vec<Duration> {
    let mut out = Vec::new();
    for run in runs {
        let (Some(start), Some(steps)) = (timings.started.get(run), timings.steps.get(run)) else {
            continue;
        };
        let mut before = *start;
        for at in steps {
            out.push((*at - before).to_std().unwrap_or_default());
            before = *at;
        }
    }
    out
}

/// `lion bench workflow`.
pub async fn run(ctx: Ctx, quick: bool, dir: Option<PathBuf>) -> Result<()> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("lion-bench-workflow-{}", std::process::id())),
            true,
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let measured = measure(&dir, quick).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let m = measured?;
    let step_fsyncs = m.step.p50_ms / m.fsync.p50_ms.max(1e-6);
    let step_overwrites = m.step.p50_ms / m.overwrite.p50_ms.max(1e-6);
    let commit_fsyncs = m.commit.p50_ms / m.fsync.p50_ms.max(1e-6);
    let commit_overwrites = m.commit.p50_ms / m.overwrite.p50_ms.max(1e-6);
    let step_commits = m.step.p50_ms / m.commit.p50_ms.max(1e-6);
    let sharing = m.concurrent_steps_per_sec / m.single_steps_per_sec.max(1e-9);
    // What the sharing target asks of the store alone, and what the kernel
    // keeps of what the store allows.
    let store_sharing = m.store_concurrent_steps_per_sec / m.single_steps_per_sec.max(1e-9);
    let of_store = m.concurrent_steps_per_sec / m.store_concurrent_steps_per_sec.max(1e-9);
    // The targets are for the disk's slow-flush state; a fast-flush run's
    // verdicts are shown, but are no evidence either way.
    let regime = Regime::of(&m);
    let emulation = super::bench::flush_emulation();
    if ctx.json {
        return output::json(&json!({
            "flush_regime": regime.name(),
            "slow_flush": regime == Regime::Slow,
            "flush_emulation": emulation,
            "fdatasync_p50_ms": m.fsync.p50_ms,
            "fdatasync_p99_ms": m.fsync.p99_ms,
            "fdatasync_overwrite_p50_ms": m.overwrite.p50_ms,
            "fdatasync_overwrite_p99_ms": m.overwrite.p99_ms,
            "fdatasync_overwrite_after_p50_ms": m.overwrite_after.p50_ms,
            "step_p50_ms": m.step.p50_ms,
            "step_p99_ms": m.step.p99_ms,
            "step_p50_in_fdatasyncs": step_fsyncs,
            "step_p50_in_overwrite_fdatasyncs": step_overwrites,
            "step_commit_p50_ms": m.commit.p50_ms,
            "step_commit_p99_ms": m.commit.p99_ms,
            "step_p50_in_step_commits": step_commits,
            "single_run_steps_per_sec": m.single_steps_per_sec,
            "concurrent_runs": CONCURRENT,
            "concurrent_rounds": m.concurrent_rounds,
            "concurrent_steps_per_sec": m.concurrent_steps_per_sec,
            "sharing": sharing,
            "concurrent_commit_ms": m.concurrent_commit_ms,
            "store_concurrent_steps_per_sec": m.store_concurrent_steps_per_sec,
            "store_concurrent_commit_ms": m.store_concurrent_commit_ms,
            "store_sharing": store_sharing,
            "concurrent_of_store": of_store,
            "single_run_events_per_commit": m.single_per_commit,
            "concurrent_events_per_commit": m.concurrent_per_commit,
        }));
    }
    outln!(
        "lion bench workflow — {} flush regime (overwrite fdatasync p50 {:.2} ms before the \
         runs, {:.2} ms after; growing {:.2} ms); {CHAIN}-step chains of no-op plugin steps, \
         after {} untimed runs; scratch {}",
        regime.name().to_uppercase(),
        m.overwrite.p50_ms,
        m.overwrite_after.p50_ms,
        m.fsync.p50_ms,
        if quick { 2 } else { WARM_UP_RUNS },
        dir.display()
    );
    if let Some(how) = &emulation {
        outln!(
            "note: the slow flush is EMULATED: {how}; every row, baselines included, ran under it."
        );
    }
    match regime {
        Regime::Slow => {}
        Regime::Fast => outln!(
            "note: flushes took under {SLOW_FLUSH_MS} ms in this run; the targets are for the \
             slow-flush case, so this run is no evidence for them (on a fast flush a step is \
             mostly the kernel's CPU and hand-offs{}; see docs/workflows.md).",
            if store_sharing < TARGET_SHARING {
                ", and the store's own ceiling below is itself under 20x one run"
            } else {
                ""
            }
        ),
        Regime::Changed => outln!(
            "note: the disk's flush changed state during this run (the overwrite probes, the \
             commits and the steps do not all agree with one state): no evidence for the \
             targets either way; run it again."
        ),
    }
    let verdict = |ok: bool| super::bench::verdict(ok, regime.why_no_evidence());
    let mut table = output::bench_table();
    table.add_row([
        "raw fdatasync, 4 KiB write growing the file".to_owned(),
        format!("p50 {:.2} ms, p99 {:.2} ms", m.fsync.p50_ms, m.fsync.p99_ms),
        "baseline".to_owned(),
        String::new(),
        String::new(),
    ]);
    table.add_row([
        "raw fdatasync, 4 KiB overwrite of a block the file has".to_owned(),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            m.overwrite.p50_ms, m.overwrite.p99_ms
        ),
        format!(
            "baseline (a warm WAL's case); {:.2}x the write above",
            m.overwrite.p50_ms / m.fsync.p50_ms.max(1e-6)
        ),
        String::new(),
        String::new(),
    ]);
    table.add_row([
        "a step's commit alone: its events appended, no kernel".to_owned(),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            m.commit.p50_ms, m.commit.p99_ms
        ),
        format!("baseline; {commit_overwrites:.2}x overwrite, {commit_fsyncs:.2}x growing"),
        String::new(),
        String::new(),
    ]);
    table.add_row([
        format!("step of a {CHAIN}-step chain, one run at a time"),
        format!("p50 {:.2} ms, p99 {:.2} ms", m.step.p50_ms, m.step.p99_ms),
        format!(
            "{step_overwrites:.2}x overwrite, {step_fsyncs:.2}x growing fdatasync p50; \
             {step_commits:.2}x its commit alone"
        ),
        format!("≤ {TARGET_STEP_FSYNCS}x overwrite"),
        verdict(step_overwrites <= TARGET_STEP_FSYNCS),
    ]);
    table.add_row([
        format!("steps/s, {CONCURRENT} runs' commits alone at once, no kernel"),
        output::rate(m.store_concurrent_steps_per_sec),
        format!(
            "baseline (the store's ceiling for these runs); {store_sharing:.1}x the kernel's \
             one-run steps/s"
        ),
        String::new(),
        String::new(),
    ]);
    table.add_row([
        format!("steps/s, {CONCURRENT} runs at once"),
        output::rate(m.concurrent_steps_per_sec),
        format!(
            "{sharing:.1}x one run's {} steps/s; {of_store:.2}x the store's ceiling above",
            output::rate(m.single_steps_per_sec)
        ),
        format!("≥ {TARGET_SHARING}x"),
        verdict(sharing >= TARGET_SHARING),
    ]);
    table.add_row([
        format!("events per commit, {CONCURRENT} runs at once"),
        format!("{:.1}", m.concurrent_per_commit),
        format!("one run at a time: {:.1}", m.single_per_commit),
        String::new(),
        String::new(),
    ]);
    outln!("{table}");
    if quick {
        outln!("note: --quick checks the paths only; its figures mean little");
    }
    Ok(())
}

impl Regime {
    /// The regime `m` was measured in: slow only if the overwrite probes
    /// before and after the runs, a step's commit alone and a step all took
    /// the slow state's time, and no step, commit alone, or mean commit of
    /// the phases with 100 runs at once (each holds a flush) was faster
    /// than the probes' flush (less 10% for jitter); fast if both overwrite
    /// probes were (a commit or a step slower than 1 ms between them is the
    /// CPU's doing: a loaded machine, not a slow flush).
    fn of(m: &Measured) -> Self {
        let probes = [m.overwrite, m.overwrite_after];
        let flush = m.overwrite.p50_ms.min(m.overwrite_after.p50_ms);
        let holds_a_flush = |ms: f64| ms >= SLOW_FLUSH_MS && ms >= 0.9 * flush;
        if probes.iter().all(Latency::is_slow_flush)
            && [
                m.commit.p50_ms,
                m.step.p50_ms,
                m.concurrent_commit_ms,
                m.store_concurrent_commit_ms,
            ]
            .into_iter()
            .all(holds_a_flush)
        {
            Self::Slow
        } else if probes.iter().all(|p| !p.is_slow_flush()) {
            Self::Fast
        } else {
            Self::Changed
        }
    }
}

/// What the benchmark measured.
struct Measured {
    fsync: Latency,
    /// `fdatasync` of a block the file already has, before the runs.
    overwrite: Latency,
    /// The same, after every run and commit measured.
    overwrite_after: Latency,
    commit: Latency,
    step: Latency,
    single_steps_per_sec: f64,
    /// Rounds of [`CONCURRENT`] runs the next figure is taken over.
    concurrent_rounds: usize,
    concurrent_steps_per_sec: f64,
    /// Mean time a commit took with [`CONCURRENT`] runs at once, ms.
    concurrent_commit_ms: f64,
    /// Steps/s of [`CONCURRENT`] runs' commits alone, with no kernel.
    store_concurrent_steps_per_sec: f64,
    /// Mean time a commit took meanwhile, ms.
    store_concurrent_commit_ms: f64,
    /// Events per commit, one run at a time.
    single_per_commit: f64,
    /// Events per commit, [`CONCURRENT`] runs at once.
    concurrent_per_commit: f64,
}

/// The store writer's (commits, events) so far.
fn counted(store: &dyn EventStore) -> (u64, u64) {
    store.commit_counters().map_or((0, 0), |c| {
        (
            c.commits.load(std::sync::atomic::Ordering::Relaxed),
            c.events.load(std::sync::atomic::Ordering::Relaxed),
        )
    })
}

/// The mean time a commit took between two [`counted`] readings `elapsed`
/// apart, in milliseconds: commits follow one another, each with its flush.
fn commit_ms(before: (u64, u64), after: (u64, u64), elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3 / (after.0 - before.0).max(1) as f64
}

/// Events per commit between two [`counted`] readings.
fn per_commit(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64
}

async fn measure(dir: &Path, quick: bool) -> Result<Measured> {
    let (fsyncs, single_runs) = if quick { (20, 2) } else { (500, 30) };
    errln!("bench: raw fdatasync, {fsyncs} times, growing a file and overwriting one…");
    let fsync = fsync_latency(&dir.join("fsync-probe"), fsyncs)?;
    let overwrite = fsync_overwrite_latency(&dir.join("fsync-probe"), fsyncs)?;
    let file = dir.join("chain.toml");
    std::fs::write(&file, chain())?;
    let definition = Definition::load(&file)?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(
        &dir.join("home"),
        SqliteOptions::default(),
    )?);
    let mut handlers: HashMap<String, Arc<dyn TaskHandler>> = HashMap::new();
    handlers.insert(PLUGIN_HANDLER.to_owned(), Arc::new(NoOp));
    let orchestrator = Orchestrator::start(
        store.clone(),
        handlers,
        OrchestratorConfig::default(),
        Uuid::now_v7(),
    );
    let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kernel = tokio::spawn(kernel::serve(
        store.clone(),
        orchestrator,
        None,
        async {
            let _ = stopped.await;
        },
        std::future::pending(),
        ready_tx,
        None,
    ));
    ready.wait_for(|r| *r).await?;

    let warm_up = if quick { 2 } else { WARM_UP_RUNS };
    errln!("bench: {warm_up} runs one at a time to warm up…");
    for _ in 0..warm_up {
        let from = store.head().await?.seq + 1;
        let run = start(store.as_ref(), &definition).await?;
        follow(&store, from, &[run], &mut Timings::default()).await?;
    }
    errln!("bench: {single_runs} runs one at a time…");
    let mut timings = Timings::default();
    let mut singles = Vec::new();
    let before_singles = counted(store.as_ref());
    for _ in 0..single_runs {
        let from = store.head().await?.seq + 1;
        let run = start(store.as_ref(), &definition).await?;
        follow(&store, from, &[run], &mut timings).await?;
        singles.push(run);
    }
    let single_per_commit = per_commit(before_singles, counted(store.as_ref()));
    let step = Latency::of(step_times(&timings, &singles));
    let run_secs: Vec<f64> = singles
        .iter()
        .filter_map(|r| Some((*timings.ended.get(r)? - *timings.started.get(r)?).as_seconds_f64()))
        .collect();
    let single_steps_per_sec =
        CHAIN as f64 / (run_secs.iter().sum::<f64>() / run_secs.len().max(1) as f64);

    let rounds = if quick { 1 } else { CONCURRENT_ROUNDS };
    errln!("bench: {CONCURRENT} runs at once, in {rounds} round(s)…");
    let before_concurrent = counted(store.as_ref());
    let began = Instant::now();
    for _ in 0..rounds {
        let from = store.head().await?.seq + 1;
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENT {
            let (store, definition) = (store.clone(), definition.clone());
            starts.spawn(async move { start(store.as_ref(), &definition).await });
        }
        let mut runs = Vec::new();
        while let Some(run) = starts.join_next().await {
            runs.push(run??);
        }
        follow(&store, from, &runs, &mut timings).await?;
    }
    let (elapsed, after_concurrent) = (began.elapsed(), counted(store.as_ref()));
    let concurrent_steps_per_sec = (rounds * CONCURRENT * CHAIN) as f64 / elapsed.as_secs_f64();
    let concurrent_per_commit = per_commit(before_concurrent, after_concurrent);
    let concurrent_commit_ms = commit_ms(before_concurrent, after_concurrent, elapsed);
    let _ = stop.send(());
    kernel.await??;
    drop(store);
    errln!("bench: a step's commit alone, {single_runs} runs' worth, on a new home…");
    let home: Arc<dyn EventStore> = Arc::new(SqliteStore::open(
        &dir.join("commits"),
        SqliteOptions::default(),
    )?);
    let commit = step_commits(home.as_ref(), &definition, warm_up, single_runs).await?;
    errln!("bench: the same, {CONCURRENT} runs' worth at once, in {rounds} round(s)…");
    let (store_concurrent_steps_per_sec, store_concurrent_commit_ms) =
        concurrent_step_commits(&home, &definition, rounds).await?;
    errln!("bench: raw fdatasync again, overwriting, {fsyncs} times…");
    let overwrite_after = fsync_overwrite_latency(&dir.join("fsync-probe"), fsyncs)?;
    Ok(Measured {
        fsync,
        overwrite,
        overwrite_after,
        commit,
        step,
        single_steps_per_sec,
        concurrent_rounds: rounds,
        concurrent_steps_per_sec,
        concurrent_commit_ms,
        store_concurrent_steps_per_sec,
        store_concurrent_commit_ms,
        single_per_commit,
        concurrent_per_commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(p50_ms: f64) -> Latency {
        Latency {
            p50_ms,
            p99_ms: p50_ms,
        }
    }

    /// Measurements with these medians: the probes before and after, a
    /// step's commit alone, a step.
    fn measured(before: f64, after: f64, commit: f64, step: f64) -> Measured {
        Measured {
            fsync: ms(before),
            overwrite: ms(before),
            overwrite_after: ms(after),
            commit: ms(commit),
            step: ms(step),
            single_steps_per_sec: 1.0,
            concurrent_rounds: 1,
            concurrent_steps_per_sec: 1.0,
            concurrent_commit_ms: commit,
            store_concurrent_steps_per_sec: 1.0,
            store_concurrent_commit_ms: commit,
            single_per_commit: 1.0,
            concurrent_per_commit: 1.0,
        }
    }

    #[test]
    fn a_run_is_slow_only_when_every_flush_it_holds_was() {
        assert_eq!(Regime::of(&measured(4.1, 4.1, 4.3, 4.5)), Regime::Slow);
        assert_eq!(Regime::of(&measured(0.1, 0.1, 0.3, 0.5)), Regime::Fast);
        // The disk turned fast between the probes.
        assert_eq!(Regime::of(&measured(4.1, 0.1, 0.3, 0.5)), Regime::Changed);
        // Slow probes, but the commits were fast: they saw another state.
        assert_eq!(Regime::of(&measured(3.1, 3.2, 0.4, 0.55)), Regime::Changed);
        // A step or a commit cannot be faster than the flush it holds.
        assert_eq!(Regime::of(&measured(4.0, 4.0, 4.2, 1.5)), Regime::Changed);
        assert_eq!(Regime::of(&measured(4.0, 4.0, 1.5, 4.2)), Regime::Changed);
        // Fast probes around slow commits: a loaded CPU, still a fast flush
        // (and no evidence for the targets either way).
        assert_eq!(Regime::of(&measured(0.1, 0.1, 1.1, 2.3)), Regime::Fast);
        // 100 runs at once whose commits were fast, between slow probes.
        let mut fast_phase = measured(4.1, 4.1, 4.3, 4.5);
        fast_phase.concurrent_commit_ms = 0.4;
        assert_eq!(Regime::of(&fast_phase), Regime::Changed);
        assert!(Regime::Changed.why_no_evidence().is_some());
        assert_eq!(Regime::Slow.why_no_evidence(), None);
    }
}
