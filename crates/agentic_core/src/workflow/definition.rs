//! Workflow definitions: TOML files read into a checked DAG of steps.
//!
//! ```toml
//! name = "research"
//! input = { type = "object", required = ["topic"] }   # JSON Schema
//!
//! [steps.search]
//! kind = "plugin"
//! plugin = "search"
//! function = "find"
//! input = { query = "{{ input.topic }}" }
//!
//! [steps.draft]
//! kind = "agent"
//! agent = "writer"
//! prompt = "Write about {{ input.topic }} from {{ steps.search.output | tojson }}"
//!
//! [steps.approve]
//! kind = "approval"
//! prompt = "Publish the draft?"
//! timeout = "2d"
//! on_timeout = "reject"
//! ```
//!
//! A step runs after the steps it names in `after` and those its templates
//! read (`steps.ID.output`). Everything is checked when the file is read —
//! each kind's fields, durations, JSON Schemas, templates, that every step
//! named exists, that there is no cycle, that sub-workflows load — and the
//! first problem is a one-line [`DefinitionError`] naming the file, the step
//! and the field. A definition keeps its sources (the file and its
//! sub-workflows' files), which is what a run records: it continues with the
//! version it started with whatever happens to the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::template::{self, Scope, Template};

/// Most steps one definition may have.
pub const MAX_STEPS: usize = 1_000;

/// Most items a map runs at once.
pub const MAX_MAP_CONCURRENCY: u32 = 64;

/// A map's concurrency when the definition does not say.
pub const DEFAULT_MAP_CONCURRENCY: u32 = 4;

/// How deep sub-workflows may nest.
pub const MAX_NESTING: usize = 8;

/// The longest duration a definition may say: ten years (365-day), which a
/// run's clock can always add.
pub const MAX_DURATION: Duration = Duration::from_secs(3_650 * 86_400);

/// Why a definition is refused: one line naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The file (or source name) the problem is in.
    pub file: String,
    /// The step, if the problem is in one.
    pub step: Option<String>,
    /// The field, if the problem is in one.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DefinitionError {
    /// One line: what the file says (ids, paths) is escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = format!("workflow {}", self.file);
        if let Some(step) = &self.step {
            line.push_str(&format!(": step `{step}`"));
        }
        if let Some(field) = &self.field {
            line.push_str(&format!(": field `{field}`"));
        }
        line.push_str(&format!(": {}", self.reason));
        f.write_str(&template::one_line(&line))
    }
}

/// A checked workflow definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The JSON Schema its input must match, if any.
    pub input: Option<Value>,
    /// What the run returns, if it says.
    pub output: Option<OutputSpec>,
    /// The steps, by id.
    pub steps: BTreeMap<String, Step>,
    /// The step ids in an order that runs every step after its
    /// dependencies (file order where that leaves a choice).
    pub order: Vec<String>,
    /// Sub-workflows, by the path their steps name.
    pub workflows: BTreeMap<String, Arc<Definition>>,
    /// What it was read from.
    pub sources: Sources,
}

/// What a run returns.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// The JSON Schema it must match, if any.
    pub schema: Option<Value>,
    /// The value, from the input and the steps' outputs (every step's
    /// output if it does not say).
    pub value: Option<Template>,
}

/// One step of a workflow.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its id: `[a-z][a-z0-9_]*`.
    pub id: String,
    /// What it does.
    pub description: Option<String>,
    /// What kind of step, with its fields.
    pub kind: StepKind,
    /// The steps it runs after: those named in `after`, those its
    /// templates read, and the condition that picks it.
    pub after: BTreeSet<String>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Runs a task: a plugin call, an agent turn or a sub-workflow.
    Work(Work),
    /// Waits for a person's decision.
    Approval {
        /// What to ask, shown to whoever decides.
        prompt: Template,
        /// How long to wait.
        timeout: Duration,
        /// What happens when nobody decides in time.
        on_timeout: OnTimeout,
    },
    /// Waits for a time to pass.
    Timer {
        /// How long.
        duration: Duration,
    },
    /// Runs a work step for each item of a list, results in the list's order.
    Map {
        /// The list.
        over: Template,
        /// Items that run at once.
        concurrency: u32,
        /// The work run for each item (its templates may use `item` and
        /// `index`).
        each: Work,
    },
    /// Picks the first branch whose condition holds; the other branches'
    /// steps (and what runs only after them) are skipped.
    Condition {
        /// The branches, in order.
        branches: Vec<Branch>,
        /// The step to run when no branch holds, if any.
        otherwise: Option<String>,
    },
}

/// A step that runs as an orchestrator task.
#[derive(Debug, Clone)]
pub struct Work {
    /// What it calls.
    pub call: Call,
    /// Longest one attempt may take.
    pub timeout: Option<Duration>,
    /// Attempts in all, the first included.
    pub attempts: Option<u32>,
}

/// What a work step calls.
#[derive(Debug, Clone)]
pub enum Call {
    /// A plugin's function (WebAssembly or subprocess).
    Plugin {
        /// The plugin.
        plugin: String,
        /// Its function.
        function: String,
        /// The call's input.
        input: Template,
    },
    /// One turn of an agent.
    Agent {
        /// The agent.
        agent: String,
        /// The message it is sent.
        prompt: Template,
    },
    /// A sub-workflow.
    Workflow {
        /// The file, relative to the definition naming it.
        path: String,
        /// Its input.
        input: Template,
    },
}

/// One branch of a condition.
#[derive(Debug, Clone)]
pub struct Branch {
    /// When it is taken: a template whose value is truthy.
    pub when: Template,
    /// The step it runs.
    pub then: String,
}

/// What an approval nobody decided in time becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Rejected (`approved = false`; the default).
    Reject,
    /// Approved.
    Approve,
    /// The run fails.
    Fail,
}

/// The text of a definition and of every sub-workflow it uses (and only
/// those), by path relative to the main file's folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    /// The main file's name.
    pub main: String,
    /// Each file's text, by its path relative to the main file's folder.
    pub files: BTreeMap<String, String>,
}

impl Sources {
    /// SHA-256 of the sources, hex: what a run records to name the version
    /// it runs.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(self.main.as_bytes());
        for (path, text) in &self.files {
            field(path.as_bytes());
            field(text.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

impl Definition {
    /// Reads and checks the definition in `path`, with the sub-workflows
    /// its steps name (relative to it).
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        let folder = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let main = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut files = BTreeMap::new();
        read_files(&folder, &main, &mut files, &mut Vec::new())?;
        Self::from_sources(Sources { main, files })
    }

    /// Checks a definition from its sources (as a run recorded them).
    pub fn from_sources(sources: Sources) -> Result<Self, DefinitionError> {
        let mut definitions = BTreeMap::new();
        build(&sources, &sources.main, &mut definitions, &mut Vec::new())?;
        let main = definitions
            .remove(&sources.main)
            .ok_or_else(|| DefinitionError {
                file: sources.main.clone(),
                step: None,
                field: None,
                reason: "is not among the sources".into(),
            })?;
        drop(definitions);
        Ok(Arc::try_unwrap(main).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Checks `input` against the input schema.
    pub fn check_input(&self, input: &Value) -> Result<(), DefinitionError> {
        let Some(schema) = &self.input else {
            return Ok(());
        };
        check_against(schema, input).map_err(|reason| DefinitionError {
            file: self.sources.main.clone(),
            step: None,
            field: Some("input".into()),
            reason: format!("the run's input does not match the schema: {reason}"),
        })
    }
}

/// Checks `value` against `schema`, describing the first mismatch.
pub fn check_against(schema: &Value, value: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    match validator.iter_errors(value).next() {
        None => Ok(()),
        Some(e) => {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            Err(format!("at {at}: {e}"))
        }
    }
}

/// Reads `name` (relative to `folder`) and, recursively, the sub-workflows
/// it names, into `files`.
fn read_files(
    folder: &Path,
    name: &str,
    files: &mut BTreeMap<String, String>,
    stack: &mut Vec<String>,
) -> Result<(), DefinitionError> {
    if files.contains_key(name) {
        return Ok(());
    }
    let fail = |reason: String| DefinitionError {
        file: name.to_owned(),
        step: None,
        field: None,
        reason,
    };
    if stack.len() > MAX_NESTING {
        return Err(fail(format!(
            "sub-workflows nest deeper than {MAX_NESTING}"
        )));
    }
    let path = folder.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let raw = parse_raw(name, &text)?;
    files.insert(name.to_owned(), text);
    stack.push(name.to_owned());
    for (id, step) in &raw.steps {
        for sub in step.workflow_paths() {
            let resolved = resolve(name, &sub).map_err(|reason| DefinitionError {
                file: name.to_owned(),
                step: Some(id.clone()),
                field: Some("workflow".into()),
                reason,
            })?;
            if stack.contains(&resolved) {
                return Err(DefinitionError {
                    file: name.to_owned(),
                    step: Some(id.clone()),
                    field: Some("workflow".into()),
                    reason: format!("{resolved} includes itself"),
                });
            }
            read_files(folder, &resolved, files, stack)?;
        }
    }
    stack.pop();
    Ok(())
}

/// The path of `sub`, named in the file `from`, relative to the main
/// file's folder; lexically normalised, and never absolute.
fn resolve(from: &str, sub: &str) -> Result<String, String> {
    let sub_path = Path::new(sub);
    if sub_path.is_absolute() {
        return Err(format!("{sub} is absolute: name it relative to this file"));
    }
    let mut parts: Vec<String> = Path::new(from)
        .parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for component in sub_path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => match parts.last() {
                Some(last) if last != ".." => {
                    parts.pop();
                }
                _ => parts.push("..".into()),
            },
            Component::CurDir => {}
            _ => return Err(format!("{sub} is not a relative path")),
        }
    }
    if parts.is_empty() || parts.last().is_some_and(|p| p == "..") {
        return Err(format!("`{sub}` names no file"));
    }
    Ok(parts.join("/"))
}

/// Builds the definition of `name` from `sources`, and its sub-workflows
/// first.
fn build(
    sources: &Sources,
    name: &str,
    built: &mut BTreeMap<String, Arc<Definition>>,
    stack: &mut Vec<String>,
) -> Result<(), DefinitionError> {
    if built.contains_key(name) {
        return Ok(());
    }
    let text = sources.files.get(name).ok_or_else(|| DefinitionError {
        file: name.to_owned(),
        step: None,
        field: None,
        reason: "is not among the recorded sources".into(),
    })?;
    if stack.iter().any(|s| s == name) || stack.len() > MAX_NESTING {
        return Err(DefinitionError {
            file: name.to_owned(),
            step: None,
            field: Some("workflow".into()),
            reason: match stack.len() > MAX_NESTING {
                true => format!("sub-workflows nest deeper than {MAX_NESTING}"),
                false => "sub-workflows include each other".into(),
            },
        });
    }
    let raw = parse_raw(name, text)?;
    let mut definition = check(name, raw)?;
    stack.push(name.to_owned());
    let mut subs = BTreeMap::new();
    let mut files = BTreeMap::from([(name.to_owned(), text.clone())]);
    for step in definition.steps.values() {
        for path in step.kind.workflow_paths() {
            let resolved = resolve(name, path).map_err(|reason| DefinitionError {
                file: name.to_owned(),
                step: Some(step.id.clone()),
                field: Some("workflow".into()),
                reason,
            })?;
            build(sources, &resolved, built, stack)?;
            let sub = Arc::clone(&built[&resolved]);
            files.extend(sub.sources.files.clone());
            subs.insert(path.to_owned(), sub);
        }
    }
    stack.pop();
    definition.workflows = subs;
    definition.sources = Sources {
        main: name.to_owned(),
        files,
    };
    built.insert(name.to_owned(), Arc::new(definition));
    Ok(())
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input: Option<toml::Value>,
    #[serde(default)]
    output: Option<RawOutput>,
    #[serde(default)]
    steps: indexmap::IndexMap<String, RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    #[serde(default)]
    schema: Option<toml::Value>,
    #[serde(default)]
    value: Option<toml::Value>,
}

/// A step as written: every kind's fields, checked against its kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    kind: Option<String>,
    description: Option<String>,
    after: Option<Vec<String>>,
    timeout: Option<String>,
    attempts: Option<u32>,
    plugin: Option<String>,
    function: Option<String>,
    input: Option<toml::Value>,
    agent: Option<String>,
    prompt: Option<toml::Value>,
    on_timeout: Option<OnTimeout>,
    duration: Option<String>,
    workflow: Option<String>,
    over: Option<toml::Value>,
    concurrency: Option<u32>,
    each: Option<Box<RawStep>>,
    branches: Option<Vec<RawBranch>>,
    otherwise: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBranch {
    when: toml::Value,
    then: String,
}

impl RawStep {
    /// The sub-workflow files this step names (itself or in its `each`).
    fn workflow_paths(&self) -> Vec<String> {
        let of = |step: &RawStep| match step.kind.as_deref() {
            Some("workflow") => step.workflow.clone(),
            _ => None,
        };
        let mut paths: Vec<String> = of(self).into_iter().collect();
        if self.kind.as_deref() == Some("map")
            && let Some(each) = &self.each
        {
            paths.extend(of(each));
        }
        paths
    }

    /// The fields that are set, by name.
    fn set_fields(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut note = |name, present: bool| {
            if present {
                set.push(name);
            }
        };
        note("after", self.after.is_some());
        note("timeout", self.timeout.is_some());
        note("attempts", self.attempts.is_some());
        note("plugin", self.plugin.is_some());
        note("function", self.function.is_some());
        note("input", self.input.is_some());
        note("agent", self.agent.is_some());
        note("prompt", self.prompt.is_some());
        note("on_timeout", self.on_timeout.is_some());
        note("duration", self.duration.is_some());
        note("workflow", self.workflow.is_some());
        note("over", self.over.is_some());
        note("concurrency", self.concurrency.is_some());
        note("each", self.each.is_some());
        note("branches", self.branches.is_some());
        note("otherwise", self.otherwise.is_some());
        set
    }
}

impl StepKind {
    /// The sub-workflow files this step names.
    fn workflow_paths(&self) -> Vec<&str> {
        match self {
            StepKind::Work(Work {
                call: Call::Workflow { path, .. },
                ..
            })
            | StepKind::Map {
                each:
                    Work {
                        call: Call::Workflow { path, .. },
                        ..
                    },
                ..
            } => vec![path.as_str()],
            _ => Vec::new(),
        }
    }

    /// The kind's name, as `kind = "…"` says it.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Work(work) => work.call.kind_name(),
            StepKind::Approval { .. } => "approval",
            StepKind::Timer { .. } => "timer",
            StepKind::Map { .. } => "map",
            StepKind::Condition { .. } => "condition",
        }
    }
}

impl Call {
    /// The kind's name, as `kind = "…"` says it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Call::Plugin { .. } => "plugin",
            Call::Agent { .. } => "agent",
            Call::Workflow { .. } => "workflow",
        }
    }
}

fn parse_raw(file: &str, text: &str) -> Result<RawDefinition, DefinitionError> {
    toml::from_str(text).map_err(|e| DefinitionError {
        file: file.to_owned(),
        step: None,
        field: None,
        reason: crate::toml_error::one_line(&e, text),
    })
}

/// Whether `id` is a step id: `[a-z][a-z0-9_]*`, at most 64 bytes (a
/// template reads it as `steps.ID`).
fn is_step_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks a parsed file into a [`Definition`] (sub-workflows not yet
/// attached).
fn check(file: &str, raw: RawDefinition) -> Result<Definition, DefinitionError> {
    let top = |field: &str, reason: String| DefinitionError {
        file: file.to_owned(),
        step: None,
        field: Some(field.to_owned()),
        reason,
    };
    if raw.name.trim().is_empty() {
        return Err(top("name", "must not be empty".into()));
    }
    if raw.steps.is_empty() {
        return Err(top("steps", "a workflow needs at least one step".into()));
    }
    if raw.steps.len() > MAX_STEPS {
        return Err(top("steps", format!("more than {MAX_STEPS} steps")));
    }
    let input = raw
        .input
        .map(|schema| compile_schema(json_of(schema)).map_err(|r| top("input", r)))
        .transpose()?;
    let mut output_reads = BTreeSet::new();
    let output = match raw.output {
        None => None,
        Some(output) => Some(OutputSpec {
            schema: output
                .schema
                .map(|s| compile_schema(json_of(s)).map_err(|r| top("output.schema", r)))
                .transpose()?,
            value: output
                .value
                .map(|v| {
                    Template::parse(json_of(v), Scope::Step).map(|(t, reads)| {
                        output_reads = reads;
                        t
                    })
                })
                .transpose()
                .map_err(|e| top("output.value", e.0))?,
        }),
    };
    let mut steps = BTreeMap::new();
    let mut file_order = Vec::new();
    for (id, raw_step) in raw.steps {
        if !is_step_id(&id) {
            return Err(DefinitionError {
                file: file.to_owned(),
                step: Some(id),
                field: None,
                reason: "a step id is 1 to 64 lowercase letters, digits or '_', \
                         starting with a letter"
                    .into(),
            });
        }
        let step = check_step(file, &id, raw_step)?;
        file_order.push(id.clone());
        steps.insert(id, step);
    }
    link(file, &mut steps)?;
    for read in &output_reads {
        if !steps.contains_key(read) {
            return Err(top(
                "output.value",
                format!("reads steps.{read}, and there is no step `{read}`"),
            ));
        }
    }
    let order = topological(file, &steps, &file_order)?;
    Ok(Definition {
        name: raw.name,
        description: raw.description,
        input,
        output,
        steps,
        order,
        workflows: BTreeMap::new(),
        sources: Sources {
            main: file.to_owned(),
            files: BTreeMap::new(),
        },
    })
}

/// A TOML value as JSON (dates become their RFC 3339 text).
fn json_of(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(json_of).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.into_iter().map(|(k, v)| (k, json_of(v))).collect())
        }
    }
}

fn compile_schema(schema: Value) -> Result<Value, String> {
    jsonschema::validator_for(&schema)
        .map(|_| schema)
        .map_err(|e| format!("is not a valid JSON Schema: {e}"))
}

/// Parses a duration: whole numbers with units, `90s`, `10m`, `1h30m`,
/// `2d`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (e.g. 250ms, 90s, 10m, 1h30m, 2d)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let millis_per = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        let part = n.checked_mul(millis_per).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(bad)?;
    }
    if total > MAX_DURATION {
        return Err(format!("`{text}` is longer than ten years (3650d)"));
    }
    Ok(total)
}

/// Which fields each kind takes (`kind`, `description` go with any).
fn allowed_fields(kind: &str, nested: bool) -> Option<&'static [&'static str]> {
    Some(match (kind, nested) {
        ("plugin", false) => &[
            "after", "timeout", "attempts", "plugin", "function", "input",
        ],
        ("agent", false) => &["after", "timeout", "attempts", "agent", "prompt"],
        ("workflow", false) => &["after", "timeout", "attempts", "workflow", "input"],
        ("plugin", true) => &["timeout", "attempts", "plugin", "function", "input"],
        ("agent", true) => &["timeout", "attempts", "agent", "prompt"],
        ("workflow", true) => &["timeout", "attempts", "workflow", "input"],
        ("approval", false) => &["after", "prompt", "timeout", "on_timeout"],
        ("timer", false) => &["after", "duration"],
        ("map", false) => &["after", "over", "concurrency", "each"],
        ("condition", false) => &["after", "branches", "otherwise"],
        _ => return None,
    })
}

/// The kinds a step may be, for messages.
const KINDS: &str = "plugin, agent, approval, timer, workflow, map, condition";

fn check_step(file: &str, id: &str, raw: RawStep) -> Result<Step, DefinitionError> {
    let err = |field: Option<&str>, reason: String| DefinitionError {
        file: file.to_owned(),
        step: Some(id.to_owned()),
        field: field.map(str::to_owned),
        reason,
    };
    let mut reads = BTreeSet::new();
    let kind = check_kind(&raw, false, &mut reads).map_err(|(f, r)| err(f, r))?;
    let mut after: BTreeSet<String> = raw.after.unwrap_or_default().into_iter().collect();
    if after.contains(id) || reads.contains(id) {
        return Err(err(None, "runs after itself".into()));
    }
    after.extend(reads);
    Ok(Step {
        id: id.to_owned(),
        description: raw.description,
        kind,
        after,
    })
}

/// A problem in a step: the field, if any, and what is wrong.
type FieldError = (Option<&'static str>, String);

/// Checks a step's kind and fields; adds to `reads` the steps its
/// templates read.
fn check_kind(
    raw: &RawStep,
    nested: bool,
    reads: &mut BTreeSet<String>,
) -> Result<StepKind, FieldError> {
    let kind = raw
        .kind
        .as_deref()
        .ok_or((Some("kind"), format!("is missing (one of {KINDS})")))?;
    let allowed = allowed_fields(kind, nested).ok_or_else(|| {
        if nested {
            (
                Some("kind"),
                format!("a map's `each` is a plugin, agent or workflow step, not `{kind}`"),
            )
        } else {
            (
                Some("kind"),
                format!("`{kind}` is not a kind (one of {KINDS})"),
            )
        }
    })?;
    if let Some(field) = raw.set_fields().into_iter().find(|f| !allowed.contains(f)) {
        let why = if nested && field == "after" {
            "a map's `each` runs after what the map runs after".to_owned()
        } else {
            format!("does not apply to a {kind} step")
        };
        return Err((Some(field), why));
    }
    let scope = match kind {
        _ if nested => Scope::MapItem,
        "plugin" | "agent" | "workflow" => Scope::Work,
        _ => Scope::Step,
    };
    let mut template =
        |field: &'static str, value: &Option<toml::Value>, default: Option<Value>| {
            let value = match (value, default) {
                (Some(v), _) => json_of(v.clone()),
                (None, Some(d)) => d,
                (None, None) => return Err((Some(field), "is missing".to_owned())),
            };
            let (template, read) = Template::parse(value, scope).map_err(|e| (Some(field), e.0))?;
            reads.extend(read);
            Ok(template)
        };
    let text = |field: &'static str, value: &Option<String>| match value {
        Some(v) if !v.trim().is_empty() => Ok(v.clone()),
        Some(_) => Err((Some(field), "must not be empty".to_owned())),
        None => Err((Some(field), "is missing".to_owned())),
    };
    let duration = |field: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| match parse_duration(v) {
                Ok(d) if d.is_zero() && field == "timeout" => {
                    Err((Some(field), "must be longer than zero".to_owned()))
                }
                Ok(d) => Ok(d),
                Err(e) => Err((Some(field), e)),
            })
            .transpose()
    };
    let work = |call: Call| -> Result<Work, FieldError> {
        if raw.attempts == Some(0) {
            return Err((Some("attempts"), "must be at least 1".into()));
        }
        Ok(Work {
            call,
            timeout: duration("timeout", &raw.timeout)?,
            attempts: raw.attempts,
        })
    };
    Ok(match kind {
        "plugin" => {
            let call = Call::Plugin {
                plugin: text("plugin", &raw.plugin)?,
                function: text("function", &raw.function)?,
                input: template("input", &raw.input, Some(Value::Object(Default::default())))?,
            };
            StepKind::Work(work(call)?)
        }
        "agent" => {
            let prompt = template("prompt", &raw.prompt, None)?;
            if !prompt.as_written().is_string() {
                return Err((Some("prompt"), "must be a string".into()));
            }
            let call = Call::Agent {
                agent: text("agent", &raw.agent)?,
                prompt,
            };
            StepKind::Work(work(call)?)
        }
        "workflow" => {
            let call = Call::Workflow {
                path: text("workflow", &raw.workflow)?,
                input: template("input", &raw.input, Some(Value::Object(Default::default())))?,
            };
            StepKind::Work(work(call)?)
        }
        "approval" => StepKind::Approval {
            prompt: template("prompt", &raw.prompt, None)?,
            timeout: duration("timeout", &raw.timeout)?.ok_or((
                Some("timeout"),
                "is missing: say how long the approval waits (e.g. 2d)".to_owned(),
            ))?,
            on_timeout: raw.on_timeout.unwrap_or(OnTimeout::Reject),
        },
        "timer" => StepKind::Timer {
            duration: duration("duration", &raw.duration)?
                .ok_or((Some("duration"), "is missing".to_owned()))?,
        },
        "map" => {
            let over = template("over", &raw.over, None)?;
            let concurrency = raw.concurrency.unwrap_or(DEFAULT_MAP_CONCURRENCY);
            if !(1..=MAX_MAP_CONCURRENCY).contains(&concurrency) {
                return Err((
                    Some("concurrency"),
                    format!("must be 1 to {MAX_MAP_CONCURRENCY}"),
                ));
            }
            let each = raw.each.as_deref().ok_or((
                Some("each"),
                "is missing: the step run for each item".to_owned(),
            ))?;
            let each = match check_kind(each, true, reads).map_err(|(f, r)| {
                let field = match f {
                    Some("kind") => Some("each.kind"),
                    Some("plugin") => Some("each.plugin"),
                    Some("function") => Some("each.function"),
                    Some("input") => Some("each.input"),
                    Some("agent") => Some("each.agent"),
                    Some("prompt") => Some("each.prompt"),
                    Some("workflow") => Some("each.workflow"),
                    Some("timeout") => Some("each.timeout"),
                    Some("attempts") => Some("each.attempts"),
                    other => other.map(|_| "each"),
                };
                (field, r)
            })? {
                StepKind::Work(work) => work,
                _ => unreachable!("a nested step is work: allowed_fields refuses the rest"),
            };
            StepKind::Map {
                over,
                concurrency,
                each,
            }
        }
        "condition" => {
            let written = raw.branches.as_deref().unwrap_or_default();
            if written.is_empty() {
                return Err((Some("branches"), "a condition needs at least one".into()));
            }
            let mut branches = Vec::new();
            for branch in written {
                branches.push(Branch {
                    when: template("branches", &Some(branch.when.clone()), None)?,
                    then: branch.then.clone(),
                });
            }
            StepKind::Condition {
                branches,
                otherwise: raw.otherwise.clone(),
            }
        }
        _ => unreachable!("allowed_fields knows every kind"),
    })
}

/// Checks that every step named exists, and makes each branch's step run
/// after its condition.
fn link(file: &str, steps: &mut BTreeMap<String, Step>) -> Result<(), DefinitionError> {
    let mut picked_by: BTreeMap<String, String> = BTreeMap::new();
    for step in steps.values() {
        if let StepKind::Condition {
            branches,
            otherwise,
        } = &step.kind
        {
            let targets = branches
                .iter()
                .map(|b| ("branches", &b.then))
                .chain(otherwise.iter().map(|o| ("otherwise", o)));
            for (field, target) in targets {
                let fail = |reason: String| DefinitionError {
                    file: file.to_owned(),
                    step: Some(step.id.clone()),
                    field: Some(field.to_owned()),
                    reason,
                };
                if !steps.contains_key(target) {
                    return Err(fail(format!("there is no step `{target}`")));
                }
                if target == &step.id {
                    return Err(fail("a condition cannot pick itself".into()));
                }
                if let Some(other) = picked_by.insert(target.clone(), step.id.clone())
                    && other != step.id
                {
                    return Err(fail(format!(
                        "step `{target}` is already picked by condition `{other}`"
                    )));
                }
            }
        }
    }
    for (target, condition) in &picked_by {
        if let Some(step) = steps.get_mut(target) {
            step.after.insert(condition.clone());
        }
    }
    for step in steps.values() {
        for dependency in &step.after {
            if !steps.contains_key(dependency) {
                return Err(DefinitionError {
                    file: file.to_owned(),
                    step: Some(step.id.clone()),
                    field: None,
                    reason: format!("runs after `{dependency}`, and there is no such step"),
                });
            }
        }
    }
    Ok(())
}

/// The steps in an order that runs each after its dependencies, file order
/// breaking ties; a cycle is refused, naming its steps.
fn topological(
    file: &str,
    steps: &BTreeMap<String, Step>,
    file_order: &[String],
) -> Result<Vec<String>, DefinitionError> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(steps.len());
    while order.len() < steps.len() {
        let next = file_order.iter().find(|id| {
            !done.contains(id.as_str())
                && steps[*id].after.iter().all(|d| done.contains(d.as_str()))
        });
        match next {
            Some(id) => {
                done.insert(id);
                order.push(id.clone());
            }
            None => {
                let cycle = find_cycle(steps, &done);
                return Err(DefinitionError {
                    file: file.to_owned(),
                    step: cycle.first().cloned(),
                    field: None,
                    reason: format!("the steps form a cycle: {}", cycle.join(" → ")),
                });
            }
        }
    }
    Ok(order)
}

/// A cycle among the steps not `done`: follows dependencies until one
/// repeats.
fn find_cycle(steps: &BTreeMap<String, Step>, done: &BTreeSet<&str>) -> Vec<String> {
    let Some(start) = steps.keys().find(|id| !done.contains(id.as_str())) else {
        return Vec::new();
    };
    let mut path: Vec<String> = vec![start.clone()];
    loop {
        let current = &steps[path.last().expect("not empty")];
        let Some(next) = current.after.iter().find(|d| !done.contains(d.as_str())) else {
            return path;
        };
        if let Some(at) = path.iter().position(|p| p == next) {
            let mut cycle: Vec<String> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(next.clone());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Checks `text` as the file `main.toml`.
    fn read(text: &str) -> Result<Definition, DefinitionError> {
        Definition::from_sources(Sources {
            main: "main.toml".into(),
            files: [("main.toml".to_owned(), text.to_owned())].into(),
        })
    }

    fn refused(text: &str) -> String {
        let err = read(text).expect_err("refused");
        let line = err.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        line
    }

    const EVERY_KIND: &str = r#"
name = "research"
description = "every kind of step"
input = { type = "object", required = ["topic"], properties = { topic = { type = "string" } } }

[output]
schema = { type = "object" }
value = { draft = "{{ steps.draft.output }}" }

[steps.search]
kind = "plugin"
plugin = "search"
function = "find"
input = { query = "{{ input.topic }}", limit = 5 }
attempts = 3
timeout = "30s"

[steps.fetch]
kind = "map"
over = "{{ steps.search.output.results }}"
concurrency = 2
each = { kind = "plugin", plugin = "web", function = "get", input = { url = "{{ item.url }}", n = "{{ index }}" } }

[steps.draft]
kind = "agent"
agent = "writer"
prompt = "Write about {{ input.topic }} from {{ steps.fetch.output | tojson }}"

[steps.approve]
kind = "approval"
prompt = "Publish {{ steps.draft.output }}?"
timeout = "2d"
on_timeout = "fail"

[steps.route]
kind = "condition"
branches = [{ when = "{{ steps.approve.output.approved }}", then = "publish" }]
otherwise = "shelve"

[steps.publish]
kind = "workflow"
workflow = "publish.toml"
input = { text = "{{ steps.draft.output }}" }

[steps.shelve]
kind = "timer"
duration = "1h30m"
"#;

    const PUBLISH: &str = r#"
name = "publish"
[steps.post]
kind = "plugin"
plugin = "blog"
function = "post"
input = { body = "{{ input.text }}" }
"#;

    #[test]
    fn every_kind_reads_into_a_dag() {
        let definition = Definition::from_sources(Sources {
            main: "main.toml".into(),
            files: [
                ("main.toml".to_owned(), EVERY_KIND.to_owned()),
                ("publish.toml".to_owned(), PUBLISH.to_owned()),
            ]
            .into(),
        })
        .expect("valid");
        assert_eq!(
            definition.order,
            [
                "search", "fetch", "draft", "approve", "route", "publish", "shelve"
            ]
        );
        let after = |id: &str| -> Vec<&str> {
            definition.steps[id]
                .after
                .iter()
                .map(String::as_str)
                .collect()
        };
        assert_eq!(after("fetch"), ["search"]);
        assert_eq!(after("publish"), ["draft", "route"], "read, and picked");
        assert_eq!(after("shelve"), ["route"]);
        match &definition.steps["approve"].kind {
            StepKind::Approval {
                timeout,
                on_timeout,
                ..
            } => {
                assert_eq!(*timeout, Duration::from_secs(2 * 86_400));
                assert_eq!(*on_timeout, OnTimeout::Fail);
            }
            other => panic!("{other:?}"),
        }
        match &definition.steps["fetch"].kind {
            StepKind::Map {
                concurrency, each, ..
            } => {
                assert_eq!(*concurrency, 2);
                assert_eq!(each.call.kind_name(), "plugin");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(definition.workflows["publish.toml"].name, "publish");
        definition
            .check_input(&json!({"topic": "owls"}))
            .expect("matches");
        let err = definition.check_input(&json!({"topic": 7})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("workflow main.toml: field `input`: the run's input does not match"),
            "{err}"
        );
    }

    #[test]
    fn independent_steps_keep_the_order_they_are_written_in() {
        let definition = read(
            "name = \"w\"\n[steps.zeta]\nkind = \"timer\"\nduration = \"1s\"\n\
             [steps.alpha]\nkind = \"timer\"\nduration = \"1s\"\n\
             [steps.mid]\nkind = \"timer\"\nduration = \"1s\"\nafter = [\"alpha\"]\n",
        )
        .expect("valid");
        assert_eq!(definition.order, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn a_cycle_is_refused_naming_its_steps() {
        let line = refused(
            r#"
name = "loop"
[steps.a]
kind = "timer"
duration = "1s"
after = ["c"]
[steps.b]
kind = "plugin"
plugin = "p"
function = "f"
input = { x = "{{ steps.a.output }}" }
[steps.c]
kind = "timer"
duration = "1s"
after = ["b"]
"#,
        );
        assert!(line.contains("the steps form a cycle"), "{line}");
        for id in ["a", "b", "c"] {
            assert!(line.contains(id), "{line}");
        }
    }

    #[test]
    fn a_missing_step_is_refused_where_it_is_named() {
        let line = refused(
            r#"
name = "w"
[steps.a]
kind = "agent"
agent = "x"
prompt = "{{ steps.serch.output }}"
"#,
        );
        assert_eq!(
            line,
            "workflow main.toml: step `a`: runs after `serch`, and there is no such step"
        );
        let line = refused(
            r#"
name = "w"
[steps.a]
kind = "condition"
branches = [{ when = "{{ input.x }}", then = "nowhere" }]
"#,
        );
        assert_eq!(
            line,
            "workflow main.toml: step `a`: field `branches`: there is no step `nowhere`"
        );
    }

    #[test]
    fn fields_are_checked_against_the_kind() {
        let cases = [
            (
                "kind = \"timer\"\nduration = \"1s\"\nprompt = \"hi\"",
                "step `a`: field `prompt`: does not apply to a timer step",
            ),
            (
                "kind = \"loop\"",
                "step `a`: field `kind`: `loop` is not a kind",
            ),
            ("plugin = \"p\"", "step `a`: field `kind`: is missing"),
            (
                "kind = \"plugin\"\nplugin = \"p\"",
                "step `a`: field `function`: is missing",
            ),
            (
                "kind = \"approval\"\nprompt = \"ok?\"",
                "step `a`: field `timeout`: is missing",
            ),
            (
                "kind = \"timer\"\nduration = \"10 minutes\"",
                "step `a`: field `duration`: `10 minutes` is not a duration",
            ),
            (
                "kind = \"map\"\nover = \"{{ input.xs }}\"\neach = { kind = \"timer\", duration = \"1s\" }",
                "step `a`: field `each.kind`: a map's `each` is a plugin, agent or workflow step",
            ),
            (
                "kind = \"map\"\nover = \"{{ input.xs }}\"\nconcurrency = 0\neach = { kind = \"agent\", agent = \"x\", prompt = \"{{ item }}\" }",
                "step `a`: field `concurrency`: must be 1 to 64",
            ),
            (
                "kind = \"agent\"\nagent = \"x\"\nprompt = \"{{ item }}\"",
                "step `a`: field `prompt`: `{{ item }}` uses `item`",
            ),
            (
                "kind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\ninput = { x = \"{{ input. }}\" }",
                "step `a`: field `input`: `{{ input. }}` is not a valid template",
            ),
            (
                "kind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\nattempts = 0",
                "step `a`: field `attempts`: must be at least 1",
            ),
        ];
        for (step, expected) in cases {
            let line = refused(&format!("name = \"w\"\n[steps.a]\n{step}\n"));
            assert!(
                line.starts_with(&format!("workflow main.toml: {expected}")),
                "{line}\nwanted: {expected}"
            );
        }
    }

    #[test]
    fn the_file_itself_is_checked() {
        assert_eq!(
            refused("name = \"w\"\n"),
            "workflow main.toml: field `steps`: a workflow needs at least one step"
        );
        let line = refused(
            "name = \"w\"\ninput = { type = 12 }\n[steps.a]\nkind = \"timer\"\nduration = \"1s\"\n",
        );
        assert!(
            line.starts_with("workflow main.toml: field `input`: is not a valid JSON Schema"),
            "{line}"
        );
        let line = refused("name = \"w\"\n[steps.a\n");
        assert!(
            line.starts_with("workflow main.toml: line 2, column"),
            "{line}"
        );
        let line = refused("name = \"w\"\nsteps = 3\n");
        assert!(line.starts_with("workflow main.toml: line 2"), "{line}");
        let line = refused("name = \"w\"\n[steps.Bad-Id]\nkind = \"timer\"\nduration = \"1s\"\n");
        assert!(line.contains("step `Bad-Id`: a step id is"), "{line}");
        let line = refused(
            "name = \"w\"\n[output]\nvalue = \"{{ steps.nope.output }}\"\n[steps.a]\nkind = \"timer\"\nduration = \"1s\"\n",
        );
        assert_eq!(
            line,
            "workflow main.toml: field `output.value`: reads steps.nope, and there is no step `nope`"
        );
    }

    #[test]
    fn sub_workflows_load_from_files_and_may_not_include_themselves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("main.toml"),
            EVERY_KIND.replace("publish.toml", "sub/publish.toml"),
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/publish.toml"), PUBLISH).unwrap();
        let definition = Definition::load(&dir.path().join("main.toml")).expect("loads");
        assert_eq!(
            definition.sources.files.keys().collect::<Vec<_>>(),
            ["main.toml", "sub/publish.toml"]
        );
        let again = Definition::from_sources(definition.sources.clone()).expect("from sources");
        assert_eq!(again.sources.hash(), definition.sources.hash());

        // The file changing does not change what the sources hold.
        std::fs::write(dir.path().join("sub/publish.toml"), "name = 3").unwrap();
        assert!(Definition::from_sources(definition.sources.clone()).is_ok());
        let line = Definition::load(&dir.path().join("main.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("workflow sub/publish.toml: line 1"),
            "{line}"
        );

        std::fs::write(
            dir.path().join("sub/publish.toml"),
            "name = \"p\"\n[steps.again]\nkind = \"workflow\"\nworkflow = \"../main.toml\"\n",
        )
        .unwrap();
        let line = Definition::load(&dir.path().join("main.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            line,
            "workflow sub/publish.toml: step `again`: field `workflow`: main.toml includes itself"
        );
        std::fs::remove_file(dir.path().join("sub/publish.toml")).unwrap();
        let line = Definition::load(&dir.path().join("main.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            line.starts_with("workflow sub/publish.toml: cannot read"),
            "{line}"
        );
    }

    #[test]
    fn what_the_file_says_is_quoted_on_one_line() {
        let line =
            refused("name = \"w\"\n[steps.\"a\\nb\"]\nkind = \"timer\"\nduration = \"1s\"\n");
        assert!(line.contains("step `a\\nb`"), "{line}");
        let line = refused("name = \"w\"\n[steps.a]\nkind = \"lo\\nop\"\n");
        assert!(line.contains("`lo\\nop` is not a kind"), "{line}");
    }

    #[test]
    fn durations_are_bounded_and_timeouts_longer_than_zero() {
        let line =
            refused("name = \"w\"\n[steps.a]\nkind = \"timer\"\nduration = \"300000000d\"\n");
        assert!(line.contains("longer than ten years"), "{line}");
        let line = refused(
            "name = \"w\"\n[steps.a]\nkind = \"approval\"\nprompt = \"ok?\"\ntimeout = \"0s\"\n",
        );
        assert!(
            line.ends_with("field `timeout`: must be longer than zero"),
            "{line}"
        );
        assert!(read("name = \"w\"\n[steps.a]\nkind = \"timer\"\nduration = \"0s\"\n").is_ok());
    }

    #[test]
    fn a_stray_workflow_field_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main.toml");
        std::fs::write(
            &main,
            "name = \"w\"\n[steps.a]\nkind = \"plugin\"\nplugin = \"p\"\nfunction = \"f\"\nworkflow = \"gone.toml\"\n",
        )
        .unwrap();
        let line = Definition::load(&main).unwrap_err().to_string();
        assert!(
            line.ends_with("field `workflow`: does not apply to a plugin step"),
            "{line}"
        );
        std::fs::write(
            &main,
            "name = \"w\"\n[steps.a]\nkind = \"workflow\"\nworkflow = \".\"\n",
        )
        .unwrap();
        let line = Definition::load(&main).unwrap_err().to_string();
        assert!(
            line.ends_with("field `workflow`: `.` names no file"),
            "{line}"
        );
    }

    #[test]
    fn a_sub_workflow_keeps_only_the_files_it_uses() {
        let definition = Definition::from_sources(Sources {
            main: "main.toml".into(),
            files: [
                ("main.toml".to_owned(), EVERY_KIND.to_owned()),
                ("publish.toml".to_owned(), PUBLISH.to_owned()),
            ]
            .into(),
        })
        .expect("valid");
        let sub = &definition.workflows["publish.toml"];
        assert_eq!(sub.sources.main, "publish.toml");
        assert_eq!(
            sub.sources.files.keys().collect::<Vec<_>>(),
            ["publish.toml"]
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "1.5h", "-1s", "1w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sub_workflow_paths_resolve_from_the_file_naming_them() {
        assert_eq!(resolve("main.toml", "a/b.toml").unwrap(), "a/b.toml");
        assert_eq!(resolve("a/b.toml", "../c.toml").unwrap(), "c.toml");
        assert_eq!(resolve("a/b.toml", "./d/e.toml").unwrap(), "a/d/e.toml");
        assert_eq!(resolve("main.toml", "../up.toml").unwrap(), "../up.toml");
        assert!(resolve("main.toml", "/etc/x.toml").is_err());
    }

    /// A chain of timers where step i runs after the steps `deps[i]` (all
    /// earlier), written in a shuffled order.
    fn chain_text(
        deps: &[Vec<usize>],
        written: &[usize],
        back_edge: Option<(usize, usize)>,
    ) -> String {
        let mut text = String::from("name = \"p\"\n");
        for &i in written {
            let mut after: Vec<String> = deps[i].iter().map(|d| format!("\"s{d}\"")).collect();
            if let Some((from, to)) = back_edge
                && from == i
            {
                after.push(format!("\"s{to}\""));
            }
            text.push_str(&format!(
                "[steps.s{i}]\nkind = \"timer\"\nduration = \"1s\"\nafter = [{}]\n",
                after.join(", ")
            ));
        }
        text
    }

    fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
        (2usize..12).prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i))
                .collect::<Vec<_>>();
            (deps, Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
    }

    proptest! {
        #[test]
        fn the_order_runs_every_step_after_its_dependencies((deps, written) in dag()) {
            let definition = read(&chain_text(&deps, &written, None)).expect("a DAG");
            let position: BTreeMap<&str, usize> = definition
                .order
                .iter()
                .enumerate()
                .map(|(p, id)| (id.as_str(), p))
                .collect();
            prop_assert_eq!(position.len(), deps.len());
            for (i, before) in deps.iter().enumerate() {
                for d in before {
                    let (dep, step) = (format!("s{d}"), format!("s{i}"));
                    prop_assert!(position[dep.as_str()] < position[step.as_str()]);
                }
            }
        }

        #[test]
        fn an_edge_back_to_an_ancestor_is_a_cycle((deps, written) in dag()) {
            // s0 → … → sN through a path that exists: make the last step
            // depend on the first, then the first on the last.
            let n = deps.len();
            let mut deps = deps;
            deps[n - 1].push(0);
            deps[n - 1].sort_unstable();
            deps[n - 1].dedup();
            let line = read(&chain_text(&deps, &written, Some((0, n - 1)))).unwrap_err().to_string();
            prop_assert!(line.contains("the steps form a cycle"), "{}", line);
        }
    }
}
