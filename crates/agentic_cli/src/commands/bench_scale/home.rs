//! Building the homes `bench scale` measures on: the plugins installed by
//! the real `lion plugin install`, the bulk of the events appended straight
//! through the store by concurrent appenders, `lion replay` checking the
//! result, and a marker file so a kept home is reused when it fits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agentic_core::llm::{AgentSpec, ChatMessage, Role, Usage};
use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, SystemEvent, TaskSpec};
use agentic_store::{SqliteOptions, SqliteStore};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use uuid::Uuid;

use super::{ANSWER, FUNCTION, GREETING, lion};
use crate::output;

/// Concurrent appenders while filling a home: enough for the store's group
/// commit to put several appends in each transaction.
const FILL_APPENDERS: usize = 8;
/// Events per append while filling: large, and well under what the store
/// commits in one transaction (8192 by default).
const FILL_BATCH: usize = 2_000;
/// Recorded plugin calls per unit of fill work, so one plugin's calls are
/// spread over the appenders.
const CALLS_PER_UNIT: u64 = 500;

/// Bumped when what a built home holds changes: a kept home of another
/// version is built again.
const LAYOUT_VERSION: u32 = 1;

/// What a home holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Shape {
    pub(super) elements: u64,
    pub(super) tasks: u64,
    pub(super) agents: u64,
    /// Prompt-and-answer turns per agent: 100 make 200 messages.
    pub(super) turns: u64,
    pub(super) plugins: u64,
    pub(super) calls_per_plugin: u64,
}

/// The big home of a full run: about 1.0M events.
pub(super) const BIG: Shape = Shape {
    elements: 100_000,
    tasks: 50_000,
    agents: 1_000,
    turns: 100,
    plugins: 50,
    calls_per_plugin: 4_000,
};

/// The big home of a quick run: about 20k events, every path exercised.
pub(super) const QUICK_BIG: Shape = Shape {
    elements: 2_000,
    tasks: 1_000,
    agents: 20,
    turns: 100,
    plugins: 3,
    calls_per_plugin: 1_400,
};

/// The empty home: one of each thing a command reads.
pub(super) const EMPTY: Shape = Shape {
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
pub(crate) struct BuiltHome {
    pub(super) version: u32,
    pub(super) shape: Shape,
    /// Events in the log once built.
    pub(crate) events: u64,
    /// Seconds the build took: installs, fill, replay check.
    pub(super) build_secs: f64,
    /// Of which the bulk fill.
    pub(super) fill_secs: f64,
    /// Of which `lion replay`.
    pub(super) replay_secs: f64,
    /// What the commands read.
    pub(super) element: Uuid,
    pub(super) task: Uuid,
    pub(super) plugin: String,
}

/// The names the plugins are installed under.
pub(super) fn plugin_names(count: u64) -> Vec<String> {
    (0..count.max(1))
        .map(|i| format!("hello_world_{i:02}"))
        .collect()
}

/// The built hello_world: its directory and manifest text.
pub(super) struct PluginSource {
    pub(super) dir: PathBuf,
    pub(super) manifest: String,
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

/// The home `name` in `dir`: reused (if `reuse`) when its marker says it
/// has `shape`, else built afresh. Whether it was reused.
pub(super) async fn home(
    exe: &Path,
    dir: &Path,
    name: &str,
    (shape, reuse): (Shape, bool),
    plugins: &[String],
    source: &PluginSource,
) -> Result<(BuiltHome, bool)> {
    let path = dir.join(name);
    let marker = dir.join(format!("{name}.json"));
    let recorded: Option<BuiltHome> = std::fs::read(&marker)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(built) = &recorded
        && reuse
        && built.version == LAYOUT_VERSION
        && built.shape == shape
        && built.plugin == plugins[plugins.len() / 2]
        && path.is_dir()
    {
        errln!(
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
pub(super) fn refuse_foreign(dir: &Path, name: &str) -> Result<()> {
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
    errln!(
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
    errln!(
        "bench: appending {} events ({FILL_APPENDERS} concurrent appenders, {FILL_BATCH} per \
         append)…",
        shape.fill_events()
    );
    fill(&store, &plan).await?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let events = store.head().await?.seq;
    drop(store);

    errln!("bench: checking {} with lion replay…", path.display());
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
    errln!(
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
                        kernel: None,
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

/// Adds to the home at `path` one agent per name in `agents`, each with the
/// empty home's conversation ([`EMPTY`]`.turns` answered prompts): the
/// agents the runs' turns go to. The home's events after.
pub(super) async fn add_turn_agents(path: &Path, agents: &[String]) -> Result<u64> {
    let store = SqliteStore::open(path, SqliteOptions::default())?;
    let events: Vec<NewEvent> = agents
        .iter()
        .flat_map(|agent| agent_events(agent, EMPTY.turns, "You answer briefly."))
        .collect();
    for batch in events.chunks(FILL_BATCH) {
        store.append(batch.to_vec(), ExpectedVersion::Any).await?;
    }
    Ok(store.head().await?.seq)
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
