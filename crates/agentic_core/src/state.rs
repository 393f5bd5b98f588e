//! [`State`]: everything lion knows, rebuilt by folding the event log through
//! the pure reducer [`State::apply`].
//!
//! Stores keep projections of this state (tables updated in the same
//! transaction as the append) so commands never re-fold the log; `lion replay`
//! folds it afresh and compares with [`State::diff`].

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;
use uuid::Uuid;

use crate::element::ElementData;
use crate::event::SystemEvent;
use crate::llm::{AgentRecord, AgentStatus};
use crate::plugin::PluginRecord;
use crate::task::{TaskRecord, TaskRuleError};
use crate::workflow::{RunRecord, RunRecordError};

/// The state the log describes: a pure function of the events applied.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Every element ever created, in creation order.
    elements: IndexMap<Uuid, ElementData>,
    /// Every task ever submitted (durably or async), in submission order.
    tasks: IndexMap<Uuid, TaskRecord>,
    /// Task ids by idempotency key.
    task_keys: HashMap<String, Uuid>,
    /// Installed plugins, in installation order.
    plugins: IndexMap<String, PluginRecord>,
    /// Each plugin's key-value store.
    plugin_kv: HashMap<String, BTreeMap<String, String>>,
    /// LLM agents, in the order they were first spawned.
    agents: IndexMap<String, AgentRecord>,
    /// Workflow runs, in the order they started.
    workflows: IndexMap<Uuid, RunRecord>,
}

/// Why an event cannot be applied to the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// An element with this id already exists.
    #[error("element {0} already exists")]
    DuplicateElement(Uuid),
    /// A task with this id already exists.
    #[error("task {0} already exists")]
    DuplicateTask(Uuid),
    /// Another task was submitted with this idempotency key.
    #[error("idempotency key {key:?} already names task {task}")]
    DuplicateIdempotencyKey {
        /// The key.
        key: String,
        /// The task it names.
        task: Uuid,
    },
    /// The event is about a task that was never submitted.
    #[error("no task {0}")]
    UnknownTask(Uuid),
    /// The event breaks the task's rules.
    #[error(transparent)]
    Task(#[from] TaskRuleError),
    /// A plugin with this name is already installed.
    #[error("plugin {0} is already installed")]
    DuplicatePlugin(String),
    /// The event is about a plugin that is not installed.
    #[error("no plugin {0} is installed")]
    UnknownPlugin(String),
    /// A grant meant for an install of the plugin that is gone.
    #[error("plugin {0} was removed or installed again since; grant it again")]
    StaleGrant(String),
    /// An approval meant for an install of the plugin that is gone.
    #[error("plugin {0} was removed or installed again since; approve its tools again")]
    StaleApproval(String),
    /// An approval of a plugin that is not a server (a WebAssembly
    /// plugin's functions are its component's).
    #[error("plugin {0} is not a server plugin: its functions are not approved")]
    NotAServer(String),
    /// A grant gives what the plugin's manifest does not ask for.
    #[error("plugin {name}: {reason}")]
    InvalidGrant {
        /// The plugin.
        name: String,
        /// What is wrong with the grant.
        reason: String,
    },
    /// An active agent has this name already.
    #[error("agent {0} exists already (stop it first to spawn it anew)")]
    DuplicateAgent(String),
    /// No agent has this name.
    #[error("no agent {0}")]
    UnknownAgent(String),
    /// The agent is stopped.
    #[error("agent {0} is stopped")]
    AgentStopped(String),
    /// The event does not fit its workflow run.
    #[error(transparent)]
    Workflow(#[from] RunRecordError),
}

impl State {
    /// An empty state, before any event.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state with room for `elements` elements (replay knows the
    /// log's length up front).
    pub fn with_capacity(elements: usize) -> Self {
        Self {
            elements: IndexMap::with_capacity(elements),
            ..Self::default()
        }
    }

    /// Applies one event. Pure: the result depends only on `self` and `event`.
    ///
    /// An event that contradicts the state is refused and leaves the state
    /// unchanged; stores refuse to append such events, so a log they wrote
    /// always folds without error.
    pub fn apply(&mut self, event: &SystemEvent) -> Result<(), ApplyError> {
        self.check(event)?;
        self.apply_owned(event.clone())
    }

    /// [`State::apply`] for an event the caller owns, without copying it
    /// (replay decodes each event once and hands it over).
    pub fn apply_owned(&mut self, event: SystemEvent) -> Result<(), ApplyError> {
        match event {
            SystemEvent::ElementCreated { element } => match self.elements.entry(element.id) {
                indexmap::map::Entry::Occupied(_) => {
                    return Err(ApplyError::DuplicateElement(element.id));
                }
                indexmap::map::Entry::Vacant(slot) => {
                    slot.insert(element);
                }
            },
            SystemEvent::TaskSubmitted { task_id, spec } => {
                self.check_submission(task_id, spec.idempotency_key.as_deref())?;
                if let Some(parent) = spec.parent.and_then(|p| self.tasks.get_mut(&p)) {
                    parent.children.push(task_id);
                }
                if let Some(key) = &spec.idempotency_key {
                    self.task_keys.insert(key.clone(), task_id);
                }
                self.tasks
                    .insert(task_id, TaskRecord::submitted(task_id, spec));
            }
            SystemEvent::PluginInstalled { plugin } => {
                let name = plugin.name().to_owned();
                if self.plugins.contains_key(&name) {
                    return Err(ApplyError::DuplicatePlugin(name));
                }
                self.plugins.insert(name, PluginRecord::installed(*plugin));
            }
            SystemEvent::PluginRemoved { name } => {
                if self.plugins.shift_remove(&name).is_none() {
                    return Err(ApplyError::UnknownPlugin(name));
                }
                self.plugin_kv.remove(&name);
            }
            SystemEvent::AgentSpawned { name, spec } => {
                if self
                    .agents
                    .get(&name)
                    .is_some_and(|a| a.status == AgentStatus::Active)
                {
                    return Err(ApplyError::DuplicateAgent(name));
                }
                let record = AgentRecord::spawned(&name, spec);
                match self.agents.get_mut(&name) {
                    // Spawned again after a stop: a fresh memory.
                    Some(existing) => *existing = record,
                    None => {
                        self.agents.insert(name, record);
                    }
                }
            }
            SystemEvent::AgentPrompted { name, message, .. }
            | SystemEvent::AgentToolResult { name, message, .. } => {
                let agent = self.active_agent(&name)?;
                agent.messages.push(message);
            }
            SystemEvent::AgentStopped { name } => {
                self.active_agent(&name)?.status = AgentStatus::Stopped;
            }
            SystemEvent::LlmFinished {
                agent,
                message,
                usage,
                ..
            } => {
                // Completions relayed for no recorded agent change nothing.
                if let Some(record) = self.agents.get_mut(&agent) {
                    record.answered(&message, &usage);
                }
            }
            SystemEvent::WorkflowRecorded { run, event } => match self.workflows.get_mut(&run) {
                Some(record) => record.apply(&event)?,
                None => {
                    let record =
                        RunRecord::started(run, &event).ok_or(RunRecordError::Unknown(run))?;
                    self.workflows.insert(run, record);
                }
            },
            other if other.plugin_name().is_some() => {
                if self.plugin_event_applies(&other)? {
                    self.apply_plugin_event(other);
                }
            }
            other => {
                if let Some((task_id, change)) = other.task_change() {
                    let task = self
                        .tasks
                        .get_mut(&task_id)
                        .ok_or(ApplyError::UnknownTask(task_id))?;
                    task.apply(&change)?;
                }
            }
        }
        Ok(())
    }

    /// Refuses a second task with the same id or idempotency key.
    fn check_submission(&self, task_id: Uuid, key: Option<&str>) -> Result<(), ApplyError> {
        if self.tasks.contains_key(&task_id) {
            return Err(ApplyError::DuplicateTask(task_id));
        }
        match key.and_then(|k| self.task_keys.get(k).map(|t| (k, *t))) {
            Some((key, task)) => Err(ApplyError::DuplicateIdempotencyKey {
                key: key.to_owned(),
                task,
            }),
            None => Ok(()),
        }
    }

    /// Checks that `event` could be applied, without applying it.
    pub fn check(&self, event: &SystemEvent) -> Result<(), ApplyError> {
        match event {
            SystemEvent::ElementCreated { element } if self.elements.contains_key(&element.id) => {
                Err(ApplyError::DuplicateElement(element.id))
            }
            SystemEvent::ElementCreated { .. } => Ok(()),
            SystemEvent::TaskSubmitted { task_id, spec } => {
                self.check_submission(*task_id, spec.idempotency_key.as_deref())
            }
            SystemEvent::PluginInstalled { plugin } if self.plugins.contains_key(plugin.name()) => {
                Err(ApplyError::DuplicatePlugin(plugin.name().to_owned()))
            }
            SystemEvent::PluginInstalled { .. } => Ok(()),
            SystemEvent::AgentSpawned { .. }
            | SystemEvent::AgentPrompted { .. }
            | SystemEvent::AgentToolResult { .. }
            | SystemEvent::AgentStopped { .. } => self.check_agent_event(event),
            SystemEvent::WorkflowRecorded { run, event } => match self.workflows.get(run) {
                Some(record) => Ok(record.check(event)?),
                None if RunRecord::started(*run, event).is_some() => Ok(()),
                None => Err(RunRecordError::Unknown(*run).into()),
            },
            other if other.plugin_name().is_some() => self.plugin_event_applies(other).map(|_| ()),
            other => match other.task_change() {
                Some((task_id, change)) => {
                    let task = self
                        .tasks
                        .get(&task_id)
                        .ok_or(ApplyError::UnknownTask(task_id))?;
                    Ok(task.check(&change)?)
                }
                None => Ok(()),
            },
        }
    }

    /// Every element, in creation order.
    pub fn elements(&self) -> impl ExactSizeIterator<Item = &ElementData> {
        self.elements.values()
    }

    /// The element with this id, if any.
    pub fn element(&self, id: Uuid) -> Option<&ElementData> {
        self.elements.get(&id)
    }

    /// Every task, in submission order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = &TaskRecord> {
        self.tasks.values()
    }

    /// The task with this id, if any.
    pub fn task(&self, id: Uuid) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    /// The task an idempotency key names, if any.
    pub fn task_by_key(&self, key: &str) -> Option<&TaskRecord> {
        self.task_keys.get(key).and_then(|id| self.tasks.get(id))
    }

    /// Refuses an agent event that breaks the rules: a second active agent
    /// of a name, a message to or a stop of an unknown or stopped agent.
    fn check_agent_event(&self, event: &SystemEvent) -> Result<(), ApplyError> {
        let status = |name: &str| self.agents.get(name).map(|a| a.status);
        match event {
            SystemEvent::AgentSpawned { name, .. } => match status(name) {
                Some(AgentStatus::Active) => Err(ApplyError::DuplicateAgent(name.clone())),
                _ => Ok(()),
            },
            SystemEvent::AgentPrompted { name, .. }
            | SystemEvent::AgentToolResult { name, .. }
            | SystemEvent::AgentStopped { name } => match status(name) {
                Some(AgentStatus::Active) => Ok(()),
                Some(AgentStatus::Stopped) => Err(ApplyError::AgentStopped(name.clone())),
                None => Err(ApplyError::UnknownAgent(name.clone())),
            },
            _ => Ok(()),
        }
    }

    /// Whether a plugin event (other than an install or a removal) changes
    /// the state: an event naming the install of today does; one naming an
    /// earlier install of the name, or a plugin removed since, is recorded
    /// for the audit but changes nothing; a grant meant for another
    /// install, or giving what the manifest does not ask for, is refused.
    /// Events without an install id (logs written before installs had ids)
    /// need the plugin installed, as they always did.
    fn plugin_event_applies(&self, event: &SystemEvent) -> Result<bool, ApplyError> {
        let name = event.plugin_name().unwrap_or_default();
        let record = self.plugins.get(name);
        if let SystemEvent::PluginGranted {
            grant, install_id, ..
        } = event
        {
            let record = record.ok_or_else(|| ApplyError::UnknownPlugin(name.to_owned()))?;
            if *install_id != record.installed.install_id {
                return Err(ApplyError::StaleGrant(name.to_owned()));
            }
            record
                .installed
                .manifest
                .check_grant(grant)
                .map_err(|e| ApplyError::InvalidGrant {
                    name: name.to_owned(),
                    reason: e.to_string(),
                })?;
            return Ok(true);
        }
        if let SystemEvent::PluginApproved { install_id, .. } = event {
            let record = record.ok_or_else(|| ApplyError::UnknownPlugin(name.to_owned()))?;
            if *install_id != record.installed.install_id {
                return Err(ApplyError::StaleApproval(name.to_owned()));
            }
            if !record.installed.is_server() {
                return Err(ApplyError::NotAServer(name.to_owned()));
            }
            return Ok(true);
        }
        match (record, event.plugin_install_id()) {
            (Some(record), id) => Ok(record.installed.install_id == id),
            (None, Some(_)) => Ok(false),
            (None, None) => Err(ApplyError::UnknownPlugin(name.to_owned())),
        }
    }

    /// Applies a plugin event [`plugin_event_applies`](Self::plugin_event_applies)
    /// accepted: a key-value write to the plugin's data, anything else to
    /// its record.
    fn apply_plugin_event(&mut self, event: SystemEvent) {
        match event {
            SystemEvent::PluginKvSet {
                name, key, value, ..
            } => {
                let kv = self.plugin_kv.entry(name.clone()).or_default();
                match value {
                    Some(value) => {
                        kv.insert(key, value);
                    }
                    None => {
                        kv.remove(&key);
                        if kv.is_empty() {
                            self.plugin_kv.remove(&name);
                        }
                    }
                }
            }
            other => {
                let name = other.plugin_name().unwrap_or_default();
                if let Some(record) = self.plugins.get_mut(name) {
                    record.apply(&other);
                }
            }
        }
    }

    /// The active agent `name`, to change.
    fn active_agent(&mut self, name: &str) -> Result<&mut AgentRecord, ApplyError> {
        match self.agents.get_mut(name) {
            Some(agent) if agent.status == AgentStatus::Active => Ok(agent),
            Some(_) => Err(ApplyError::AgentStopped(name.to_owned())),
            None => Err(ApplyError::UnknownAgent(name.to_owned())),
        }
    }

    /// Every LLM agent, in the order they were first spawned.
    pub fn agents(&self) -> impl ExactSizeIterator<Item = &AgentRecord> {
        self.agents.values()
    }

    /// The agent `name`, if any.
    pub fn agent(&self, name: &str) -> Option<&AgentRecord> {
        self.agents.get(name)
    }

    /// Adds an agent read from a projection (used by stores to load their
    /// projected state; not a way to change state outside the log).
    pub fn load_agent(&mut self, record: AgentRecord) {
        self.agents.insert(record.name.clone(), record);
    }

    /// Every installed plugin, in installation order.
    pub fn plugins(&self) -> impl ExactSizeIterator<Item = &PluginRecord> {
        self.plugins.values()
    }

    /// The installed plugin with this name, if any.
    pub fn plugin(&self, name: &str) -> Option<&PluginRecord> {
        self.plugins.get(name)
    }

    /// A plugin's key-value store (empty when it has none).
    pub fn plugin_kv(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.plugin_kv.get(name)
    }

    /// Adds a plugin and its key-value store read from a projection (used
    /// by stores to load their projected state; not a way to change state
    /// outside the log).
    pub fn load_plugin(&mut self, record: PluginRecord, kv: BTreeMap<String, String>) {
        let name = record.name().to_owned();
        if !kv.is_empty() {
            self.plugin_kv.insert(name.clone(), kv);
        }
        self.plugins.insert(name, record);
    }

    /// Adds a task read from a projection (used by stores to load their
    /// projected state; not a way to change state outside the log).
    pub fn load_task(&mut self, task: TaskRecord) {
        if let Some(key) = &task.spec.idempotency_key {
            self.task_keys.insert(key.clone(), task.id);
        }
        self.tasks.insert(task.id, task);
    }

    /// Every workflow run, in the order they started.
    pub fn workflows(&self) -> impl ExactSizeIterator<Item = &RunRecord> {
        self.workflows.values()
    }

    /// The workflow run with this id, if any.
    pub fn workflow(&self, id: Uuid) -> Option<&RunRecord> {
        self.workflows.get(&id)
    }

    /// Adds a workflow run read from a projection (used by stores to load
    /// their projected state; not a way to change state outside the log).
    pub fn load_workflow(&mut self, record: RunRecord) {
        self.workflows.insert(record.id, record);
    }

    /// Adds an element read from a projection (used by stores to load their
    /// projected state; not a way to change state outside the log).
    pub fn load_element(&mut self, element: ElementData) {
        self.elements.insert(element.id, element);
    }

    /// Every difference between two states, described in one line each; empty
    /// when they are identical field by field.
    pub fn diff(&self, other: &State) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (id, mine)) in self.elements.iter().enumerate() {
            match other.elements.get_index_of(id) {
                None => out.push(format!("element {id} missing")),
                Some(j) if j != i => {
                    out.push(format!("element {id} at position {j} instead of {i}"));
                }
                Some(j) => {
                    let theirs = &other.elements[j];
                    if !mine.same_content(theirs) {
                        out.push(format!("element {id} differs"));
                    }
                }
            }
        }
        for id in other.elements.keys() {
            if !self.elements.contains_key(id) {
                out.push(format!("element {id} unexpected"));
            }
        }
        for (i, (id, mine)) in self.tasks.iter().enumerate() {
            match other.tasks.get_full(id) {
                None => out.push(format!("task {id} missing")),
                Some((j, _, _)) if j != i => {
                    out.push(format!("task {id} at position {j} instead of {i}"));
                }
                Some((_, _, theirs)) if theirs != mine => out.push(format!("task {id} differs")),
                Some(_) => {}
            }
        }
        for id in other.tasks.keys() {
            if !self.tasks.contains_key(id) {
                out.push(format!("task {id} unexpected"));
            }
        }
        for (i, (name, mine)) in self.plugins.iter().enumerate() {
            match other.plugins.get_full(name) {
                None => out.push(format!("plugin {name} missing")),
                Some((j, _, _)) if j != i => {
                    out.push(format!("plugin {name} at position {j} instead of {i}"));
                }
                Some((_, _, theirs)) if theirs != mine => {
                    out.push(format!("plugin {name} differs"));
                }
                Some(_) => {}
            }
            if self.plugin_kv.get(name) != other.plugin_kv.get(name) {
                out.push(format!("plugin {name}'s key-value store differs"));
            }
        }
        for name in other.plugins.keys() {
            if !self.plugins.contains_key(name) {
                out.push(format!("plugin {name} unexpected"));
            }
        }
        for (i, (name, mine)) in self.agents.iter().enumerate() {
            match other.agents.get_full(name) {
                None => out.push(format!("agent {name} missing")),
                Some((j, _, _)) if j != i => {
                    out.push(format!("agent {name} at position {j} instead of {i}"));
                }
                Some((_, _, theirs)) if theirs != mine => out.push(format!("agent {name} differs")),
                Some(_) => {}
            }
        }
        for name in other.agents.keys() {
            if !self.agents.contains_key(name) {
                out.push(format!("agent {name} unexpected"));
            }
        }
        for (i, (id, mine)) in self.workflows.iter().enumerate() {
            match other.workflows.get_full(id) {
                None => out.push(format!("workflow run {id} missing")),
                Some((j, _, _)) if j != i => {
                    out.push(format!("workflow run {id} at position {j} instead of {i}"));
                }
                Some((_, _, theirs)) if theirs != mine => {
                    out.push(format!("workflow run {id} differs"));
                }
                Some(_) => {}
            }
        }
        for id in other.workflows.keys() {
            if !self.workflows.contains_key(id) {
                out.push(format!("workflow run {id} unexpected"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn created(content: &str) -> (Uuid, SystemEvent) {
        let el = ElementData::new(Map::new(), Some(content.into()));
        (el.id, SystemEvent::ElementCreated { element: el })
    }

    #[test]
    fn fold_keeps_creation_order() {
        let mut s = State::new();
        let events: Vec<_> = (0..5).map(|i| created(&i.to_string())).collect();
        for (_, e) in &events {
            s.apply(e).expect("apply");
        }
        let ids: Vec<Uuid> = s.elements().map(|e| e.id).collect();
        let expected: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn duplicate_creation_is_refused_and_changes_nothing() {
        let mut s = State::new();
        let (id, e) = created("a");
        s.apply(&e).expect("first");
        assert_eq!(s.check(&e), Err(ApplyError::DuplicateElement(id)));
        assert_eq!(s.apply(&e), Err(ApplyError::DuplicateElement(id)));
        assert_eq!(s.elements().len(), 1);
    }

    #[test]
    fn diff_names_missing_changed_and_reordered_elements() {
        let mut a = State::new();
        for i in 0..3 {
            a.apply(&created(&i.to_string()).1).expect("apply");
        }
        assert!(a.diff(&a.clone()).is_empty());

        let mut changed = a.clone();
        let first = a.elements().next().expect("one").clone();
        let mut edited = first.clone();
        edited.metadata = json!({"x": 1})
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into();
        changed.load_element(edited);
        assert_eq!(
            a.diff(&changed),
            vec![format!("element {} differs", first.id)]
        );

        let mut shorter = State::new();
        for e in a.elements().skip(1) {
            shorter.load_element(e.clone());
        }
        let d = a.diff(&shorter);
        assert!(d[0].contains("missing"), "{d:?}");
        assert!(shorter.diff(&a).iter().any(|l| l.contains("unexpected")));
    }
}
