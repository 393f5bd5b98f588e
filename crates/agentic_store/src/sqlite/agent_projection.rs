//! The projection of LLM agent events: the `agents` table, one row per
//! agent (its record as JSON), written in the append's transaction. Each
//! event is applied by the kernel's own reducer to the agent's row, so the
//! rules cannot drift from [`State`]'s.

use agentic_core::llm::AgentRecord;
use agentic_core::{State, SystemEvent};
use rusqlite::{OptionalExtension, Transaction, params};

use super::writer::ProjectError;

/// The agent an event is about, when it changes an agent's row.
pub(super) fn agent_of(event: &SystemEvent) -> Option<&str> {
    match event {
        SystemEvent::AgentSpawned { name, .. }
        | SystemEvent::AgentPrompted { name, .. }
        | SystemEvent::AgentToolResult { name, .. }
        | SystemEvent::AgentStopped { name } => Some(name),
        SystemEvent::LlmFinished { agent, .. } => Some(agent),
        _ => None,
    }
}

/// Applies one agent event to the agent's row.
pub(super) fn project(
    tx: &Transaction<'_>,
    seq: u64,
    name: &str,
    event: &SystemEvent,
) -> Result<(), ProjectError> {
    let current: Option<String> = tx
        .prepare_cached("SELECT record FROM agents WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(ProjectError::Sql)?;
    let mut state = State::new();
    if let Some(text) = current {
        let record: AgentRecord = serde_json::from_str(&text).map_err(|e| {
            ProjectError::Sql(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                e.into(),
            ))
        })?;
        state.load_agent(record);
    }
    state.apply(event).map_err(ProjectError::Refused)?;
    let Some(record) = state.agent(name) else {
        return Ok(());
    };
    let json = serde_json::to_string(record)
        .map_err(|e| ProjectError::Sql(rusqlite::Error::ToSqlConversionFailure(e.into())))?;
    tx.prepare_cached(
        "INSERT INTO agents (name, seq, record) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET record = excluded.record",
    )
    .and_then(|mut s| s.execute(params![name, seq as i64, json]))
    .map(|_| ())
    .map_err(ProjectError::Sql)
}

/// Loads every agent into `state`, in the order they were first spawned.
pub(super) fn load(tx: &Transaction<'_>, state: &mut State) -> Result<(), String> {
    let mut stmt = tx
        .prepare_cached("SELECT name, record FROM agents ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let name: String = row.get(0).map_err(|e| e.to_string())?;
        let text: String = row.get(1).map_err(|e| e.to_string())?;
        let record: AgentRecord =
            serde_json::from_str(&text).map_err(|e| format!("agent {name}: {e}"))?;
        state.load_agent(record);
    }
    Ok(())
}
