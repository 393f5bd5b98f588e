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
//! bulk is appended straight through [`SqliteStore::append`] by concurrent
//! appenders in large batches (group commit), not by a million `lion` runs;
//! every event is one the reducer accepts (the store refuses any other), and
//! `lion replay` checks the built home before it is used.
//!
//! Then each command runs as a fresh `lion` process on both homes, several
//! times (the median counts), its wall time (from its `exec` to its exit)
//! and its peak RSS (its `VmHWM` as it exits, read by tracing it) recorded: `element show`, `task show`,
//! `plugin call`, `agent send` to an agent with 200 messages (a scripted
//! OpenAI-compatible server in this process answers, as the CLI tests' own
//! does), `task submit --wait` with no kernel running, and `lion run` from
//! its start to its "kernel ready" log line (state read, unfinished tasks
//! taken over), then stopped with SIGTERM. Targets:
//! each within 2x of the empty home's time and 1.5x of its peak RSS; a full
//! run that misses one exits non-zero.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use agentic_core::llm::{AgentSpec, ChatMessage, Role, Usage};
use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, SystemEvent, TaskSpec};
use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

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

/// Concurrent appenders while filling a home: enough for the store's group
/// commit to put several appends in each transaction.
const FILL_APPENDERS: usize = 8;
/// Events per append while filling: large, and well under what the store
/// commits in one transaction (8192 by default).
const FILL_BATCH: usize = 2_000;
/// Recorded plugin calls per unit of fill work, so one plugin's calls are
/// spread over the appenders.
const CALLS_PER_UNIT: u64 = 500;

/// What `lion run` logs once it takes work: its state is read and its
/// unfinished tasks are taken over (`agentic_core::kernel`, at info level).
/// Its "lion kernel running" line comes earlier, before that state is read.
const READY_LINE: &str = "kernel ready";
/// The log filter that makes `lion run` log [`READY_LINE`] and nothing else.
const READY_LOG_FILTER: &str = "warn,agentic_core::kernel=info";

/// The function called and its input.
const FUNCTION: &str = "greet";
const INPUT: &str = r#"{"name":"Ada"}"#;
const GREETING: &str = "Hello, Ada!";
/// The scripted model's name and its answer to every message.
const MODEL: &str = "scale-bench-model";
const ANSWER: &[&str] = &["Noted", ": nothing ", "changed since the last report."];

/// Bumped when what a built home holds changes: a kept home of another
/// version is built again.
const LAYOUT_VERSION: u32 = 1;

/// What a home holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Shape {
    elements: u64,
    tasks: u64,
    agents: u64,
    /// Prompt-and-answer turns per agent: 100 make 200 messages.
    turns: u64,
    plugins: u64,
    calls_per_plugin: u64,
}

/// The big home of a full run: about 1.0M events.
const BIG: Shape = Shape {
    elements: 100_000,
    tasks: 50_000,
    agents: 1_000,
    turns: 100,
    plugins: 50,
    calls_per_plugin: 4_000,
};

/// The big home of a quick run: about 20k events, every path exercised.
const QUICK_BIG: Shape = Shape {
    elements: 2_000,
    tasks: 1_000,
    agents: 20,
    turns: 100,
    plugins: 3,
    calls_per_plugin: 1_400,
};

/// The empty home: one of each thing a command reads.
const EMPTY: Shape = Shape {
    elements: 1,
    tasks: 1,
    agents: 0,
    turns: 100,
    plugins: 1,
    calls_per_plugin: 0,
};

/// Events of one task: submitted, started, progress, completed.
const TASK_EVENTS: u64 = 4;
/// Events of one agent turn: prompted, the coalesced delta, finished.
const TURN_EVENTS: u64 = 3;

impl Shape {
    /// Events the bulk fill appends (installs not counted).
    fn fill_events(&self) -> u64 {
        self.elements
            + self.tasks * TASK_EVENTS
            + self.agents * (1 + self.turns * TURN_EVENTS)
            + self.plugins * self.calls_per_plugin * 2
    }
}

/// A built home, as its marker file records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BuiltHome {
    version: u32,
    shape: Shape,
    /// Events in the log once built.
    events: u64,
    /// Seconds the build took: installs, fill, replay check.
    build_secs: f64,
    /// Of which the bulk fill.
    fill_secs: f64,
    /// Of which `lion replay`.
    replay_secs: f64,
    /// What the commands read.
    element: Uuid,
    task: Uuid,
    plugin: String,
}

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
    let (dir, temporary) = match (&opts.keep, &opts.dir) {
        (Some(keep), _) => (keep.clone(), false),
        (None, Some(d)) => (
            d.join(format!("lion-bench-scale-{}", std::process::id())),
            true,
        ),
        (None, None) => (
            std::env::temp_dir().join(format!("lion-bench-scale-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the bench directory {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
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
fn read_plugin(plugin_dir: &Path) -> Result<String> {
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
    if !parsed.component.path.is_file() {
        bail!(
            "no component {} (run scripts/build-plugins)",
            parsed.component.path.display()
        );
    }
    Ok(std::fs::read_to_string(&manifest)?)
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
    /// Its peak resident set, in KiB (`ru_maxrss`).
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
        EMPTY,
        std::slice::from_ref(&measured_plugin),
        &source,
    )
    .await?;
    let (big, big_reused) = home(&exe, dir, "big-home", big_shape, &names, &source).await?;

    // Each run's agent turn goes to an agent of its own with exactly 200
    // messages, in both homes, so no run sees a longer conversation.
    // The random end of a v7 id (its start is the time, to the millisecond).
    let tag = &Uuid::now_v7().simple().to_string()[20..];
    let turn_agents: Vec<String> = (0..runs).map(|r| format!("turn-{tag}-{r}")).collect();
    let mut events_now = [0; 2];
    for (h, name) in ["empty-home", "big-home"].into_iter().enumerate() {
        let store = Arc::new(SqliteStore::open(
            &dir.join(name),
            SqliteOptions::default(),
        )?);
        let events: Vec<NewEvent> = turn_agents
            .iter()
            .flat_map(|agent| agent_events(agent, EMPTY.turns, "You answer briefly."))
            .collect();
        for batch in events.chunks(FILL_BATCH) {
            store.append(batch.to_vec(), ExpectedVersion::Any).await?;
        }
        events_now[h] = store.head().await?.seq;
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
            eprintln!(
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

/// The names the plugins are installed under.
fn plugin_names(count: u64) -> Vec<String> {
    (0..count.max(1))
        .map(|i| format!("hello_world_{i:02}"))
        .collect()
}

/// The built hello_world: its directory and manifest text.
struct PluginSource {
    dir: PathBuf,
    manifest: String,
}

impl PluginSource {
    /// A copy of hello_world in `into`, its manifest naming it `name`.
    fn stage(&self, into: &Path, name: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let mut renamed = false;
        let text: Vec<String> = self
            .manifest
            .lines()
            .map(|line| {
                if !renamed && line.trim_start().starts_with("name") && line.contains('=') {
                    renamed = true;
                    format!("name = \"{name}\"")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        if !renamed {
            bail!("the hello_world manifest has no name line");
        }
        let manifest = into.join("plugin.toml");
        std::fs::write(&manifest, text.join("\n") + "\n")?;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && entry.file_name() != "plugin.toml" {
                std::fs::copy(entry.path(), into.join(entry.file_name()))?;
            }
        }
        let parsed = agentic_core::plugin::PluginManager::read_manifest(&manifest)?;
        if parsed.name != name {
            bail!("the staged manifest names {}, not {name}", parsed.name);
        }
        Ok(manifest)
    }
}

/// The home `name` in `dir`: reused when its marker says it has `shape`,
/// else built afresh. Whether it was reused.
async fn home(
    exe: &Path,
    dir: &Path,
    name: &str,
    shape: Shape,
    plugins: &[String],
    source: &PluginSource,
) -> Result<(BuiltHome, bool)> {
    let path = dir.join(name);
    let marker = dir.join(format!("{name}.json"));
    let recorded: Option<BuiltHome> = std::fs::read(&marker)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(built) = &recorded
        && built.version == LAYOUT_VERSION
        && built.shape == shape
        && built.plugin == plugins[plugins.len() / 2]
        && path.is_dir()
    {
        eprintln!(
            "bench: reusing {} ({} events, built by an earlier run)",
            path.display(),
            built.events
        );
        return Ok((built.clone(), true));
    }
    if path.exists() {
        refuse_foreign(dir, name)?;
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove the old {}", path.display()))?;
    }
    let _ = std::fs::remove_file(&marker);
    let built = build(exe, dir, &path, shape, plugins, source).await?;
    std::fs::write(&marker, serde_json::to_vec_pretty(&built)?)?;
    Ok((built, false))
}

/// Refuses to build home `name` in `dir` over something this bench did not
/// build there (it has no marker file): nothing of the user's is removed.
fn refuse_foreign(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    let marker = dir.join(format!("{name}.json"));
    if path.exists() && !marker.is_file() {
        bail!(
            "{} exists and is not a home this bench built (no {}): remove it or choose another \
             directory",
            path.display(),
            marker.display()
        );
    }
    Ok(())
}

/// Builds a home of `shape` at `path`: the plugins installed by `lion
/// plugin install`, the rest appended in bulk, then `lion replay` checks it.
async fn build(
    exe: &Path,
    dir: &Path,
    path: &Path,
    shape: Shape,
    plugins: &[String],
    source: &PluginSource,
) -> Result<BuiltHome> {
    let started = Instant::now();
    eprintln!(
        "bench: building {} — {} elements, {} tasks, {} agents of {} messages, {} plugins with \
         {} calls each…",
        path.display(),
        shape.elements,
        shape.tasks,
        shape.agents,
        shape.turns * 2,
        plugins.len(),
        shape.calls_per_plugin
    );
    let staging = dir.join(format!(
        "manifests-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("home")
    ));
    let _ = std::fs::remove_dir_all(&staging);
    for name in plugins {
        let manifest = source.stage(&staging.join(name), name)?;
        let out = lion(exe, path)
            .args(["plugin", "install"])
            .arg(&manifest)
            // What hello_world asks for: its log line.
            .args(["--grant", "interface:log"])
            .output()
            .context("cannot run lion plugin install")?;
        if !out.status.success() {
            bail!(
                "lion plugin install {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&staging);

    let store = Arc::new(SqliteStore::open(path, SqliteOptions::default())?);
    let mut installs = Vec::new();
    for name in plugins {
        let snapshot = store
            .plugin(name)
            .await?
            .ok_or_else(|| anyhow!("plugin {name} is not installed after lion plugin install"))?;
        installs.push((name.clone(), snapshot.record.installed.install_id));
    }
    let fill_started = Instant::now();
    let plan = Arc::new(Fill {
        shape,
        installs,
        element: Uuid::now_v7(),
        task: Uuid::now_v7(),
    });
    eprintln!(
        "bench: appending {} events ({FILL_APPENDERS} concurrent appenders, {FILL_BATCH} per \
         append)…",
        shape.fill_events()
    );
    fill(&store, &plan).await?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let events = store.head().await?.seq;
    drop(store);

    eprintln!("bench: checking {} with lion replay…", path.display());
    let replay_started = Instant::now();
    let out = lion(exe, path)
        .arg("replay")
        .output()
        .context("cannot run lion replay")?;
    if !out.status.success() {
        bail!(
            "lion replay refused the built home {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let replay_secs = replay_started.elapsed().as_secs_f64();
    let build_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: built {} in {build_secs:.1} s: {events} events (fill {fill_secs:.1} s, {}/s; \
         replay check {replay_secs:.1} s)",
        path.display(),
        output::rate(shape.fill_events() as f64 / fill_secs.max(1e-9))
    );
    Ok(BuiltHome {
        version: LAYOUT_VERSION,
        shape,
        events,
        build_secs,
        fill_secs,
        replay_secs,
        element: plan.element,
        task: plan.task,
        plugin: plugins[plugins.len() / 2].clone(),
    })
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

/// What the bulk fill appends.
struct Fill {
    shape: Shape,
    /// Each plugin's name and install id, in install order.
    installs: Vec<(String, Option<Uuid>)>,
    /// The ids of the element and the task the commands read (the middle ones).
    element: Uuid,
    task: Uuid,
}

/// A piece of fill work: its events go in order, in one appender.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Element(u64),
    Task(u64),
    Agent(u64),
    Calls { plugin: usize, count: u64 },
}

impl Fill {
    /// Every unit, in a scattered order (a stride permutation), so the
    /// kinds of events mix in the log as they do in use.
    fn units(&self) -> Vec<Unit> {
        let s = &self.shape;
        let mut units: Vec<Unit> = (0..s.elements).map(Unit::Element).collect();
        units.extend((0..s.tasks).map(Unit::Task));
        units.extend((0..s.agents).map(Unit::Agent));
        for plugin in 0..self.installs.len() {
            let mut left = s.calls_per_plugin;
            while left > 0 {
                let count = left.min(CALLS_PER_UNIT);
                units.push(Unit::Calls { plugin, count });
                left -= count;
            }
        }
        // A prime larger than any unit count here is coprime with it.
        const STRIDE: usize = 1_000_003;
        let n = units.len();
        (0..n).map(|k| units[(k * STRIDE) % n]).collect()
    }

    /// The events of one unit.
    fn events(&self, unit: Unit) -> Vec<NewEvent> {
        let correlation = Uuid::now_v7();
        let new = |event| NewEvent::new(event, correlation);
        match unit {
            Unit::Element(i) => {
                let mut metadata = Map::new();
                metadata.insert("n".into(), json!(i));
                metadata.insert("kind".into(), json!("note"));
                metadata.insert("title".into(), json!(format!("Note {i}")));
                let mut element = ElementData::new(
                    metadata,
                    Some(format!(
                        "Element {i} of the scale bench: a note of about a hundred bytes, as \
                         people write them."
                    )),
                );
                if i == self.shape.elements / 2 {
                    element.id = self.element;
                }
                vec![new(SystemEvent::ElementCreated { element })]
            }
            Unit::Task(i) => {
                let task_id = if i == self.shape.tasks / 2 {
                    self.task
                } else {
                    Uuid::now_v7()
                };
                let input = json!({"n": i, "note": "scale bench"});
                vec![
                    new(SystemEvent::TaskSubmitted {
                        task_id,
                        spec: TaskSpec::new("echo", input.clone()),
                    }),
                    new(SystemEvent::TaskStarted {
                        task_id,
                        attempt: 1,
                    }),
                    new(SystemEvent::TaskProgress {
                        task_id,
                        attempt: 1,
                        progress: json!({"step": 1, "of": 1}),
                    }),
                    new(SystemEvent::TaskCompleted {
                        task_id,
                        attempt: 1,
                        output: input,
                    }),
                ]
            }
            Unit::Agent(i) => agent_events(
                &format!("agent-{i:04}"),
                self.shape.turns,
                &format!("You are agent {i}; answer briefly."),
            ),
            Unit::Calls { plugin, count } => {
                let (name, install_id) = &self.installs[plugin];
                (0..count)
                    .flat_map(|_| {
                        let call_id = Uuid::now_v7();
                        [
                            new(SystemEvent::PluginInvoked {
                                name: name.clone(),
                                call_id,
                                function: FUNCTION.into(),
                                install_id: *install_id,
                            }),
                            new(SystemEvent::PluginSucceeded {
                                name: name.clone(),
                                call_id,
                                output: json!({"greeting": GREETING}),
                                micros: 40,
                                install_id: *install_id,
                            }),
                        ]
                    })
                    .collect()
            }
        }
    }
}

/// An agent spawned with `system`, then `turns` prompts each answered: the
/// prompt, the answer's coalesced text, the finished answer — what a turn
/// through `lion agent send` records.
fn agent_events(name: &str, turns: u64, system: &str) -> Vec<NewEvent> {
    let correlation = Uuid::now_v7();
    let new = |event| NewEvent::new(event, correlation);
    let spec = AgentSpec {
        system: system.to_owned(),
        ..AgentSpec::default()
    };
    let mut events = vec![new(SystemEvent::AgentSpawned {
        name: name.to_owned(),
        spec,
    })];
    let answer = ANSWER.concat();
    for t in 0..turns {
        let run_id = Uuid::now_v7();
        let prompt = format!("Message {t}: what changed since the last report?");
        events.push(new(SystemEvent::AgentPrompted {
            name: name.to_owned(),
            run_id,
            message: ChatMessage::new(Role::User, prompt),
        }));
        events.push(new(SystemEvent::LlmDelta {
            agent: name.to_owned(),
            run_id,
            text: answer.clone(),
        }));
        events.push(new(SystemEvent::LlmFinished {
            agent: name.to_owned(),
            run_id,
            message: ChatMessage::new(Role::Assistant, answer.clone()),
            usage: Usage {
                prompt_tokens: 20 + 25 * t,
                completion_tokens: 9,
            },
            finish_reason: Some("stop".into()),
        }));
    }
    events
}

/// Appends every unit's events to `store`: the units dealt to
/// [`FILL_APPENDERS`] concurrent appenders, each appending in order in
/// batches of about [`FILL_BATCH`].
async fn fill(store: &Arc<SqliteStore>, plan: &Arc<Fill>) -> Result<()> {
    let units = plan.units();
    let appenders: Vec<_> = (0..FILL_APPENDERS)
        .map(|a| {
            let mine: Vec<Unit> = units
                .iter()
                .skip(a)
                .step_by(FILL_APPENDERS)
                .copied()
                .collect();
            let (store, plan) = (store.clone(), plan.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(FILL_BATCH * 2);
                for unit in mine {
                    batch.extend(plan.events(unit));
                    if batch.len() >= FILL_BATCH {
                        store
                            .append(std::mem::take(&mut batch), ExpectedVersion::Any)
                            .await?;
                    }
                }
                if !batch.is_empty() {
                    store.append(batch, ExpectedVersion::Any).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for appender in appenders {
        appender.await??;
    }
    Ok(())
}

/// One command as a fresh `lion` process.
struct Operation {
    label: String,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    /// What its stdout must contain (it must also exit 0).
    expect: Option<String>,
    /// A kernel: timed to its ready line, then stopped with SIGTERM.
    kernel: bool,
}

/// The commands measured on a home, in table order.
fn operations(home: &BuiltHome, turn_agent: &str, url: &str) -> Vec<Operation> {
    let plain = |label: &str, args: Vec<String>, expect: Option<String>| Operation {
        label: label.to_owned(),
        args,
        envs: Vec::new(),
        expect,
        kernel: false,
    };
    let strings = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let element = home.element.to_string();
    let task = home.task.to_string();
    vec![
        plain(
            "element show ID",
            strings(&["element", "show", &element]),
            Some(element.clone()),
        ),
        plain(
            "task show ID",
            strings(&["task", "show", &task]),
            Some(task.clone()),
        ),
        plain(
            &format!("plugin call NAME {FUNCTION} --input {INPUT}"),
            strings(&["plugin", "call", &home.plugin, FUNCTION, "--input", INPUT]),
            Some(GREETING.to_owned()),
        ),
        Operation {
            label: format!(
                "agent send: a turn of an agent with {} messages (scripted provider)",
                EMPTY.turns * 2
            ),
            args: strings(&["agent", "send", turn_agent, "What changed?"]),
            envs: vec![
                ("LION_LLM_BASE_URL", url.to_owned()),
                ("LION_LLM_MODEL", MODEL.to_owned()),
            ],
            expect: Some(ANSWER.concat()),
            kernel: false,
        },
        plain(
            "task submit --handler echo --wait, no kernel running",
            strings(&[
                "task",
                "submit",
                "--handler",
                "echo",
                "--input",
                r#"{"scale":"bench"}"#,
                "--wait",
            ]),
            Some("scale".to_owned()),
        ),
        Operation {
            label: format!("run: start until it logs {READY_LINE:?}, then SIGTERM"),
            args: strings(&["run"]),
            envs: vec![("RUST_LOG", READY_LOG_FILTER.to_owned())],
            expect: None,
            kernel: true,
        },
    ]
}

impl Operation {
    /// Runs it once on `home`: its wall time and peak RSS. Fails unless it
    /// did what it should (exit 0, the expected output, the ready line).
    fn run(&self, exe: &Path, home: &Path) -> Result<Sample> {
        let mut cmd = lion(exe, home);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        trace_me(&mut cmd);
        // The thread that spawns the child is its tracer: it does all the
        // following below.
        let mut child = cmd.spawn().context(
            "cannot start lion traced (bench scale reads each process's peak memory at its exit)",
        )?;
        let pid = child.id();
        let mut stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        drop(child);
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let kernel = self.kernel;
        let err = std::thread::spawn(move || {
            let mut said = Vec::new();
            let mut ready = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if kernel && ready.is_none() && line.contains(READY_LINE) {
                    ready = Some(Instant::now());
                    // The kernel runs: stop it, as an operator would.
                    let _ = signal(pid, libc::SIGTERM);
                }
                said.push(line);
            }
            (said, ready)
        });
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let late = matches!(
                finished.recv_timeout(OPERATION_TIMEOUT),
                Err(RecvTimeoutError::Timeout)
            );
            if late {
                let _ = signal(pid, libc::SIGKILL);
            }
            late
        });
        let traced = follow(pid, move || drop(done));
        let late = watchdog.join().unwrap_or(false);
        let traced = traced?;
        let stdout = out.join().unwrap_or_default();
        let (said, ready) = err.join().unwrap_or_default();
        if late {
            bail!(
                "lion did not finish within {OPERATION_TIMEOUT:?} and was killed: {}",
                said.join(" / ")
            );
        }
        if !traced.status.success() {
            bail!("lion {}: {}", traced.status, said.join(" / "));
        }
        let ended = match (kernel, ready) {
            (false, _) => traced.exited,
            (true, Some(ready)) => ready,
            (true, None) => bail!(
                "lion run never printed {READY_LINE:?}: {}",
                said.join(" / ")
            ),
        };
        if let Some(expect) = &self.expect
            && !stdout.contains(expect.as_str())
        {
            bail!("lion printed {stdout:?}, without {expect:?}");
        }
        Ok(Sample {
            wall: ended.saturating_duration_since(traced.exec),
            rss_kib: traced.peak_rss_kib,
        })
    }
}

/// Longest one command may run before the bench kills it and fails:
/// generous, since a kernel that loads a whole 1M-event state is slow, and
/// this bench exists to show it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

/// What following a traced child saw.
struct Traced {
    /// When it had just executed `lion` (its first stop).
    exec: Instant,
    /// When it had ended (reaped).
    exited: Instant,
    /// Its peak resident set, in KiB, read as it exited.
    peak_rss_kib: u64,
    /// How it ended.
    status: ExitStatus,
}

// Why a tracer. The peak RSS of a child in `wait4`'s rusage is no use here:
// `ru_maxrss` keeps the largest resident set the process had under any
// image, and a child spawned with vfork (std's posix_spawn) or fork starts
// as this bench's image, which has built a million-event home — every child
// would report the bench's own peak. The child's `VmHWM` in
// `/proc/PID/status` is the peak of its `lion` image alone; it is read when
// the child stops at its exit (PTRACE_O_TRACEEXIT), before its memory is
// released. Tracing costs two stops per process (its exec and its exit).

/// Makes the child ask to be traced by its parent, so it stops right after
/// it executes `lion`.
#[allow(unsafe_code)]
fn trace_me(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before `exec` and makes
    // one system call (async-signal-safe), touching no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            let traced = libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            if traced == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Follows the traced child `pid` to its end, from the thread that spawned
/// it (its tracer): notes when it has executed `lion`, reads its peak RSS at
/// its exit stop (then calls `at_exit`), passes every signal on, and reaps it.
fn follow(pid: u32, at_exit: impl FnOnce()) -> Result<Traced> {
    let pid = libc::pid_t::try_from(pid)?;
    let mut exec = None;
    let mut peak = None;
    let mut at_exit = Some(at_exit);
    loop {
        let status = wait_pid(pid)?;
        let now = Instant::now();
        if !libc::WIFSTOPPED(status) {
            if let Some(f) = at_exit.take() {
                f();
            }
            let exec = exec.ok_or_else(|| anyhow!("lion ended before it ran"))?;
            let peak_rss_kib =
                peak.ok_or_else(|| anyhow!("lion ended without stopping at its exit"))?;
            return Ok(Traced {
                exec,
                exited: now,
                peak_rss_kib,
                status: ExitStatus::from_raw(status),
            });
        }
        let signal = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let pass_on = if exec.is_none() && signal == libc::SIGTRAP {
            // The stop right after `exec`.
            exec = Some(now);
            ptrace(
                libc::PTRACE_SETOPTIONS,
                pid,
                libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL,
            )?;
            0
        } else if signal == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
            peak = Some(vm_hwm_kib(pid)?);
            if let Some(f) = at_exit.take() {
                f();
            }
            0
        } else {
            signal
        };
        ptrace(libc::PTRACE_CONT, pid, pass_on)?;
    }
}

/// `waitpid(pid)` for any state change, retried when interrupted.
#[allow(unsafe_code)]
fn wait_pid(pid: libc::pid_t) -> Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is valid for writes for the whole call; `pid` is
        // this process's unreaped child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("cannot wait for lion");
        }
    }
}

/// One ptrace request with an integer `data` (options, a signal).
#[allow(unsafe_code)]
fn ptrace(request: libc::c_uint, pid: libc::pid_t, data: libc::c_int) -> Result<()> {
    // SAFETY: `pid` is this thread's stopped tracee; the requests used take
    // no pointer (`addr` is unused, `data` an integer passed by value).
    let r = unsafe {
        libc::ptrace(
            request,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as libc::c_long as *mut libc::c_void,
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error()).context("ptrace on lion failed");
    }
    Ok(())
}

/// The peak resident set (`VmHWM`, KiB) of process `pid`.
fn vm_hwm_kib(pid: libc::pid_t) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Sends `signal` to the child `pid`.
#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: `kill` only sends a signal. `pid` is a child of this process
    // that its tracer has not reaped yet (the callers stop sending once it
    // has exited), so the id names no other process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot signal lion");
    }
    Ok(())
}

/// Starts an OpenAI-compatible server answering every chat request with
/// [`ANSWER`] streamed in a few chunks (as the CLI tests script agents);
/// returns its base URL.
async fn scripted_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let mut body = String::new();
    for chunk in ANSWER {
        let delta = json!({"choices":[{"index":0,"delta":{"content":chunk}}]});
        body.push_str(&format!("data: {delta}\n\n"));
    }
    body.push_str(
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    body.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9}}\n\n",
    );
    body.push_str("data: [DONE]\n\n");
    let response = Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
    ));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                if read_request(&mut socket).await {
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            });
        }
    });
    Ok(url)
}

/// Reads one HTTP request (its head and `content-length` bytes of body);
/// false if the peer went away first.
async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]);
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            return true;
        }
    }
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
    println!(
        "lion bench scale — each command as a fresh lion process, median of {} run(s) per home; \
         targets: time ≤{TARGET_TIME_RATIO}x and peak RSS ≤{TARGET_RSS_RATIO}x the empty home's",
        r.runs
    );
    println!(
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
    println!("{t}");
    println!(
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
