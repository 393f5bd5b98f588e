//! The projections of a [`super::PostgresStore`], kept in the append's
//! transaction: an [`Overlay`] loads the rows a group of events touches
//! (its tasks, agents, plugins, key-value entries and workflow runs) into a small
//! [`State`], the kernel's own reducer applies each event to it — so the
//! rules cannot drift from [`State`]'s — and the changed rows are written
//! back at the end, a few statements per group whatever its size.

use std::collections::{BTreeMap, HashMap, HashSet};

use agentic_core::llm::AgentRecord;
use agentic_core::plugin::PluginRecord;
use agentic_core::workflow::RunRecord;
use agentic_core::workflow::run::RunEvent;
use agentic_core::{ApplyError, State, SystemEvent, TaskRecord};
use deadpool_postgres::ClientWrapper;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::PgError;

// The statements of the projections, prepared once per connection.
// (Elements have none: each is read from its creating event.)
const UPSERT_TASKS: &str = "INSERT INTO lion.tasks (seq, id, idempotency_key, unfinished, record) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::boolean[], \
                 $5::bytea[]) \
                 ON CONFLICT (id) DO UPDATE \
                 SET unfinished = excluded.unfinished, record = excluded.record";

const DELETE_MESSAGES: &str = "DELETE FROM lion.agent_messages WHERE agent = ANY($1)";

const UPSERT_AGENTS: &str = "INSERT INTO lion.agents (name, seq, messages, record) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[]) \
                 ON CONFLICT (name) DO UPDATE \
                 SET messages = excluded.messages, record = excluded.record";

const INSERT_MESSAGES: &str = "INSERT INTO lion.agent_messages (agent, n, message) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])";

const DELETE_PLUGINS: &str = "DELETE FROM lion.plugins WHERE name = ANY($1)";

const DELETE_PLUGIN_KV: &str = "DELETE FROM lion.plugin_kv WHERE plugin = ANY($1)";

const UPSERT_PLUGINS: &str = "INSERT INTO lion.plugins (name, seq, record) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, record = excluded.record";

const UPSERT_KV: &str = "INSERT INTO lion.plugin_kv (plugin, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
                 ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value";

const DELETE_KV: &str = "DELETE FROM lion.plugin_kv WHERE (plugin, key) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))";

const LOAD_TASKS: &str = "SELECT seq, record FROM lion.tasks \
             WHERE id = ANY($1) OR idempotency_key = ANY($2)";

const UPSERT_WORKFLOWS: &str = "INSERT INTO lion.workflows (seq, id, unfinished, record) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::boolean[], $4::bytea[]) \
                 ON CONFLICT (id) DO UPDATE \
                 SET unfinished = excluded.unfinished, record = excluded.record";

const LOAD_WORKFLOWS: &str = "SELECT seq, record FROM lion.workflows WHERE id = ANY($1)";

const LOAD_AGENTS: &str = "SELECT seq, messages, record FROM lion.agents WHERE name = ANY($1)";

const LOAD_PLUGINS: &str = "SELECT seq, record FROM lion.plugins WHERE name = ANY($1)";

const LOAD_KV: &str = "SELECT plugin, key, value FROM lion.plugin_kv WHERE (plugin, key) IN \
             (SELECT * FROM unnest($1::text[], $2::text[]))";

/// The projection rows one group touches, and what it changed.
#[derive(Default)]
pub(super) struct Overlay {
    /// The touched rows, as the reducer sees them.
    state: State,
    /// Each task's submission seq (its place in the list).
    task_seq: HashMap<Uuid, u64>,
    /// Each agent's first spawn seq and how many messages its row has.
    agent_rows: HashMap<String, (u64, u64)>,
    /// Each plugin's install seq.
    plugin_seq: HashMap<String, u64>,
    /// Each workflow run's start seq.
    workflow_seq: HashMap<Uuid, u64>,
    /// Workflow runs started or ended (their rows change only then).
    workflows: HashSet<Uuid>,
    /// Tasks changed.
    tasks: HashSet<Uuid>,
    /// Agents changed, and those among them spawned (their conversation
    /// starts over).
    agents: HashSet<String>,
    respawned: HashSet<String>,
    /// Plugins changed, those removed at some point, and key-value entries
    /// written.
    plugins: HashSet<String>,
    removed: HashSet<String>,
    kv: HashSet<(String, String)>,
}

impl Overlay {
    /// Loads the rows `events` touch.
    pub async fn load<'e>(
        client: &ClientWrapper,
        events: impl Iterator<Item = &'e SystemEvent>,
    ) -> Result<Self, PgError> {
        let mut task_ids = Vec::new();
        let mut keys = Vec::new();
        let mut agents = Vec::new();
        let mut plugins = Vec::new();
        let (mut kv_plugins, mut kv_keys) = (Vec::new(), Vec::new());
        let mut runs = Vec::new();
        for event in events {
            if let SystemEvent::WorkflowRecorded { run, .. } = event {
                runs.push(*run);
            }
            if let SystemEvent::TaskSubmitted { task_id, spec } = event {
                task_ids.push(*task_id);
                task_ids.extend(spec.parent);
                keys.extend(spec.idempotency_key.clone());
            } else if let Some((task_id, _)) = event.task_change() {
                task_ids.push(task_id);
            }
            if let Some(name) = event.agent_name() {
                agents.push(name.to_owned());
            }
            if let Some(name) = event.plugin_name() {
                plugins.push(name.to_owned());
            }
            if let SystemEvent::PluginKvSet { name, key, .. } = event {
                kv_plugins.push(name.clone());
                kv_keys.push(key.clone());
            }
        }
        let (tasks, agents, plugins, kv, runs) = tokio::try_join!(
            load_tasks(client, &task_ids, &keys),
            load_agents(client, &agents),
            load_plugins(client, &plugins),
            load_kv(client, &kv_plugins, &kv_keys),
            load_workflows(client, &runs),
        )?;
        let mut overlay = Overlay::default();
        for (seq, run) in runs {
            overlay.workflow_seq.insert(run.id, seq);
            overlay.state.load_workflow(run);
        }
        for (seq, task) in tasks {
            overlay.task_seq.insert(task.id, seq);
            overlay.state.load_task(task);
        }
        for (seq, count, record) in agents {
            overlay.agent_rows.insert(record.name.clone(), (seq, count));
            overlay.state.load_agent(record);
        }
        let mut kv_of: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for (plugin, key, value) in kv {
            kv_of.entry(plugin).or_default().insert(key, value);
        }
        for (seq, record) in plugins {
            let name = record.name().to_owned();
            overlay.plugin_seq.insert(name.clone(), seq);
            let kv = kv_of.remove(&name).unwrap_or_default();
            overlay.state.load_plugin(record, kv);
        }
        Ok(overlay)
    }

    /// Applies one request's events (with their seqs), all or none.
    pub fn apply(&mut self, events: &[(u64, &SystemEvent)]) -> Result<(), ApplyError> {
        match events {
            [(_, event)] => self.state.apply(event)?,
            _ => {
                let mut next = self.state.clone();
                for (_, event) in events {
                    next.apply(event)?;
                }
                self.state = next;
            }
        }
        for (seq, event) in events {
            self.note(*seq, event);
        }
        Ok(())
    }

    /// Records which rows an applied event changed.
    fn note(&mut self, seq: u64, event: &SystemEvent) {
        if let SystemEvent::WorkflowRecorded { run, event } = event {
            match **event {
                RunEvent::Started { .. } => {
                    self.workflow_seq.insert(*run, seq);
                    self.workflows.insert(*run);
                }
                RunEvent::Completed { .. }
                | RunEvent::Failed { .. }
                | RunEvent::Cancelled { .. } => {
                    self.workflows.insert(*run);
                }
                _ => {}
            }
            return;
        }
        match event {
            SystemEvent::TaskSubmitted { task_id, spec } => {
                self.task_seq.insert(*task_id, seq);
                self.tasks.insert(*task_id);
                if let Some(parent) = spec.parent.filter(|p| self.state.task(*p).is_some()) {
                    self.tasks.insert(parent);
                }
            }
            other => {
                if let Some((task_id, _)) = other.task_change() {
                    self.tasks.insert(task_id);
                }
            }
        }
        if let Some(name) = event.agent_name() {
            if let SystemEvent::AgentSpawned { .. } = event {
                self.respawned.insert(name.to_owned());
                self.agent_rows.entry(name.to_owned()).or_insert((seq, 0));
            }
            self.agents.insert(name.to_owned());
        }
        if let Some(name) = event.plugin_name() {
            match event {
                SystemEvent::PluginInstalled { .. } => {
                    self.plugin_seq.insert(name.to_owned(), seq);
                }
                SystemEvent::PluginRemoved { .. } => {
                    self.removed.insert(name.to_owned());
                }
                SystemEvent::PluginKvSet { key, .. } => {
                    self.kv.insert((name.to_owned(), key.clone()));
                }
                _ => {}
            }
            self.plugins.insert(name.to_owned());
        }
    }

    /// Prepares (once per connection) every statement the projections use,
    /// so that later ones are only sent, in order, never prepared part-way.
    pub async fn prepare(client: &ClientWrapper) -> Result<(), PgError> {
        for sql in [
            UPSERT_TASKS,
            DELETE_MESSAGES,
            UPSERT_AGENTS,
            INSERT_MESSAGES,
            DELETE_PLUGINS,
            DELETE_PLUGIN_KV,
            UPSERT_PLUGINS,
            UPSERT_KV,
            DELETE_KV,
            UPSERT_WORKFLOWS,
            LOAD_TASKS,
            LOAD_WORKFLOWS,
            LOAD_AGENTS,
            LOAD_PLUGINS,
            LOAD_KV,
        ] {
            client.prepare_cached(sql).await?;
        }
        Ok(())
    }

    /// Every row the group changed, as statements and their parameters,
    /// ready to be sent (see [`Writes::send`]).
    pub async fn writes(&self, client: &ClientWrapper) -> Result<Writes, PgError> {
        let mut w = Writes::default();
        // Removals first: a plugin removed and installed again within the
        // group is a new row with no key-value data.
        if !self.removed.is_empty() {
            let names: Vec<String> = self.removed.iter().cloned().collect();
            w.push(client, DELETE_PLUGINS, vec![Box::new(names.clone())])
                .await?;
            w.push(client, DELETE_PLUGIN_KV, vec![Box::new(names)])
                .await?;
        }
        self.task_writes(client, &mut w).await?;
        self.agent_writes(client, &mut w).await?;
        self.plugin_writes(client, &mut w).await?;
        self.workflow_writes(client, &mut w).await?;
        Ok(w)
    }

    async fn workflow_writes(&self, client: &ClientWrapper, w: &mut Writes) -> Result<(), PgError> {
        let runs: Vec<&RunRecord> = self
            .workflows
            .iter()
            .filter_map(|id| self.state.workflow(*id))
            .collect();
        if runs.is_empty() {
            return Ok(());
        }
        let seq: Vec<i64> = runs
            .iter()
            .map(|r| self.workflow_seq.get(&r.id).copied().unwrap_or_default() as i64)
            .collect();
        let id: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
        let unfinished: Vec<bool> = runs.iter().map(|r| !r.status.is_final()).collect();
        let record = runs.iter().map(json).collect::<Result<Vec<_>, _>>()?;
        w.push(
            client,
            UPSERT_WORKFLOWS,
            vec![
                Box::new(seq),
                Box::new(id),
                Box::new(unfinished),
                Box::new(record),
            ],
        )
        .await
    }

    async fn task_writes(&self, client: &ClientWrapper, w: &mut Writes) -> Result<(), PgError> {
        let tasks: Vec<&TaskRecord> = self
            .tasks
            .iter()
            .filter_map(|id| self.state.task(*id))
            .collect();
        if tasks.is_empty() {
            return Ok(());
        }
        let seq: Vec<i64> = tasks
            .iter()
            .map(|t| self.task_seq.get(&t.id).copied().unwrap_or_default() as i64)
            .collect();
        let id: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
        let key: Vec<Option<String>> = tasks
            .iter()
            .map(|t| t.spec.idempotency_key.clone())
            .collect();
        let unfinished: Vec<bool> = tasks.iter().map(|t| !t.status.is_final()).collect();
        let record = tasks.iter().map(json).collect::<Result<Vec<_>, _>>()?;
        w.push(
            client,
            UPSERT_TASKS,
            vec![
                Box::new(seq),
                Box::new(id),
                Box::new(key),
                Box::new(unfinished),
                Box::new(record),
            ],
        )
        .await
    }

    async fn agent_writes(&self, client: &ClientWrapper, w: &mut Writes) -> Result<(), PgError> {
        let agents: Vec<&AgentRecord> = self
            .agents
            .iter()
            .filter_map(|name| self.state.agent(name))
            .collect();
        if agents.is_empty() {
            return Ok(());
        }
        let (mut names, mut seqs, mut counts, mut records) = (vec![], vec![], vec![], vec![]);
        let (mut msg_agent, mut msg_n, mut msg_body) = (vec![], vec![], vec![]);
        let mut restart = Vec::new();
        for agent in agents {
            let (seq, loaded) = self
                .agent_rows
                .get(&agent.name)
                .copied()
                .unwrap_or_default();
            // After a spawn the record holds its whole conversation, which
            // replaces the rows; otherwise it holds the messages added.
            let first = if self.respawned.contains(&agent.name) {
                restart.push(agent.name.clone());
                0
            } else {
                loaded
            };
            for (i, message) in agent.messages.iter().enumerate() {
                msg_agent.push(agent.name.clone());
                msg_n.push((first + i as u64) as i64);
                msg_body.push(json(message)?);
            }
            let without_messages = AgentRecord {
                messages: Vec::new(),
                ..agent.clone()
            };
            names.push(agent.name.clone());
            seqs.push(seq as i64);
            counts.push((first + agent.messages.len() as u64) as i64);
            records.push(json(&without_messages)?);
        }
        if !restart.is_empty() {
            w.push(client, DELETE_MESSAGES, vec![Box::new(restart)])
                .await?;
        }
        w.push(
            client,
            UPSERT_AGENTS,
            vec![
                Box::new(names),
                Box::new(seqs),
                Box::new(counts),
                Box::new(records),
            ],
        )
        .await?;
        if !msg_agent.is_empty() {
            w.push(
                client,
                INSERT_MESSAGES,
                vec![Box::new(msg_agent), Box::new(msg_n), Box::new(msg_body)],
            )
            .await?;
        }
        Ok(())
    }

    async fn plugin_writes(&self, client: &ClientWrapper, w: &mut Writes) -> Result<(), PgError> {
        let (mut names, mut seqs, mut records) = (vec![], vec![], vec![]);
        for plugin in self
            .plugins
            .iter()
            .filter_map(|name| self.state.plugin(name))
        {
            names.push(plugin.name().to_owned());
            seqs.push(
                self.plugin_seq
                    .get(plugin.name())
                    .copied()
                    .unwrap_or_default() as i64,
            );
            records.push(json(plugin)?);
        }
        let (mut set_plugin, mut set_key, mut set_value) = (vec![], vec![], vec![]);
        let (mut del_plugin, mut del_key) = (vec![], vec![]);
        for (plugin, key) in &self.kv {
            if self.state.plugin(plugin).is_none() {
                continue; // removed: its rows are gone
            }
            match self.state.plugin_kv(plugin).and_then(|kv| kv.get(key)) {
                Some(value) => {
                    set_plugin.push(plugin.clone());
                    set_key.push(key.clone());
                    set_value.push(value.clone());
                }
                None => {
                    del_plugin.push(plugin.clone());
                    del_key.push(key.clone());
                }
            }
        }
        if !names.is_empty() {
            w.push(
                client,
                UPSERT_PLUGINS,
                vec![Box::new(names), Box::new(seqs), Box::new(records)],
            )
            .await?;
        }
        if !set_plugin.is_empty() {
            w.push(
                client,
                UPSERT_KV,
                vec![Box::new(set_plugin), Box::new(set_key), Box::new(set_value)],
            )
            .await?;
        }
        if !del_plugin.is_empty() {
            w.push(
                client,
                DELETE_KV,
                vec![Box::new(del_plugin), Box::new(del_key)],
            )
            .await?;
        }
        Ok(())
    }
}

/// A statement parameter this module owns.
type Param = Box<dyn ToSql + Sync + Send>;

/// A group's projection writes: statements, prepared, with their
/// parameters, in the order they must run.
#[derive(Default)]
pub(super) struct Writes {
    statements: Vec<(Statement, Vec<Param>)>,
}

impl Writes {
    /// Adds a statement (prepared now, before anything is sent).
    async fn push(
        &mut self,
        client: &ClientWrapper,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<(), PgError> {
        let statement = client.prepare_cached(sql).await?;
        self.statements.push((statement, params));
        Ok(())
    }

    /// True when the group changed no projection row.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Sends every write, in order, all on the first poll: nothing between
    /// them waits, so a statement sent after these (the `COMMIT`) cannot
    /// overtake one of them.
    pub async fn send(&self, client: &ClientWrapper) -> Result<(), PgError> {
        let sends = self.statements.iter().map(|(statement, params)| {
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            async move { client.execute(statement, &params).await }
        });
        futures_util::future::try_join_all(sends).await?;
        Ok(())
    }
}

/// The tasks with these ids or idempotency keys, with their seqs.
async fn load_tasks(
    client: &ClientWrapper,
    ids: &[Uuid],
    keys: &[String],
) -> Result<Vec<(u64, TaskRecord)>, PgError> {
    if ids.is_empty() && keys.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(LOAD_TASKS).await?;
    let rows = client.query(&stmt, &[&ids, &keys]).await?;
    rows.iter()
        .map(|r| Ok((r.get::<_, i64>(0) as u64, parse(r.get(1), "task")?)))
        .collect()
}

/// The workflow runs with these ids, with their start seqs.
async fn load_workflows(
    client: &ClientWrapper,
    ids: &[Uuid],
) -> Result<Vec<(u64, RunRecord)>, PgError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(LOAD_WORKFLOWS).await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    rows.iter()
        .map(|r| Ok((r.get::<_, i64>(0) as u64, parse(r.get(1), "workflow run")?)))
        .collect()
}

/// The agents with these names: first spawn seq, message count, record.
async fn load_agents(
    client: &ClientWrapper,
    names: &[String],
) -> Result<Vec<(u64, u64, AgentRecord)>, PgError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(LOAD_AGENTS).await?;
    let rows = client.query(&stmt, &[&names]).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.get::<_, i64>(0) as u64,
                r.get::<_, i64>(1) as u64,
                parse(r.get(2), "agent")?,
            ))
        })
        .collect()
}

/// The plugins with these names, with their install seqs.
async fn load_plugins(
    client: &ClientWrapper,
    names: &[String],
) -> Result<Vec<(u64, PluginRecord)>, PgError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(LOAD_PLUGINS).await?;
    let rows = client.query(&stmt, &[&names]).await?;
    rows.iter()
        .map(|r| Ok((r.get::<_, i64>(0) as u64, parse(r.get(1), "plugin")?)))
        .collect()
}

/// The key-value entries at these (plugin, key) pairs that exist.
async fn load_kv(
    client: &ClientWrapper,
    plugins: &[String],
    keys: &[String],
) -> Result<Vec<(String, String, String)>, PgError> {
    if plugins.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(LOAD_KV).await?;
    let rows = client.query(&stmt, &[&plugins, &keys]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A projection row's JSON.
pub(super) fn json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PgError> {
    serde_json::to_vec(value).map_err(|e| PgError::Corrupt(format!("cannot encode a row: {e}")))
}

/// A projection row from its JSON.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PgError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PgError::Corrupt(format!("a stored {what} row does not parse: {e}")))
}
