//! The projection of LLM agent events: the `agents` table (one row per
//! agent: its record as JSON without its conversation, and how many
//! messages that holds) and `agent_messages` (the conversation, a row per
//! message), written in the append's transaction, and the reads of them.
//! Each event is applied by the kernel's own reducer to the agent's row, so
//! the rules cannot drift from [`State`]'s; a message is written once, as a
//! new row, never by rewriting the conversation.

use agentic_core::llm::{AgentRecord, ChatMessage};
use agentic_core::{AgentView, Cursor, Page, State, SystemEvent};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::reads::{from_json, to_json};
use super::writer::ProjectError;

/// Applies one agent event to the agent's row, appending the messages it
/// adds to the conversation (a spawn after a stop starts a new one).
pub(super) fn project(
    tx: &Transaction<'_>,
    seq: u64,
    name: &str,
    event: &SystemEvent,
) -> Result<(), ProjectError> {
    let current = row(tx, name).map_err(ProjectError::Sql)?;
    let mut state = State::new();
    let mut count = 0;
    if let Some((record, messages)) = current {
        state.load_agent(record);
        count = messages;
    }
    state.apply(event).map_err(ProjectError::Refused)?;
    let Some(record) = state.agent(name) else {
        return Ok(());
    };
    if matches!(event, SystemEvent::AgentSpawned { .. }) && count > 0 {
        tx.prepare_cached("DELETE FROM agent_messages WHERE agent = ?1")
            .and_then(|mut s| s.execute([name]))
            .map_err(ProjectError::Sql)?;
        count = 0;
    }
    // The record was loaded without its conversation: what it holds now is
    // what this event added.
    for message in &record.messages {
        tx.prepare_cached("INSERT INTO agent_messages (agent, n, message) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![name, count as i64, to_json(message)?]))
            .map_err(ProjectError::Sql)?;
        count += 1;
    }
    let without_messages = AgentRecord {
        name: record.name.clone(),
        spec: record.spec.clone(),
        status: record.status,
        messages: Vec::new(),
        usage: record.usage,
    };
    let json = to_json(&without_messages).map_err(ProjectError::Sql)?;
    tx.prepare_cached(
        "INSERT INTO agents (name, seq, record, messages) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET record = excluded.record, messages = excluded.messages",
    )
    .and_then(|mut s| s.execute(params![name, seq as i64, json, count as i64]))
    .map(|_| ())
    .map_err(ProjectError::Sql)
}

/// An agent's record (without its conversation) and its message count.
fn row(conn: &Connection, name: &str) -> rusqlite::Result<Option<(AgentRecord, u64)>> {
    conn.prepare_cached("SELECT record, messages FROM agents WHERE name = ?1")?
        .query_row([name], |r| {
            Ok((
                from_json(r.get_ref(0)?.as_str()?)?,
                r.get::<_, i64>(1)? as u64,
            ))
        })
        .optional()
}

/// The agent `name` with the messages after the first `after`, at most
/// `limit` of them.
pub(super) fn view(
    conn: &Connection,
    name: &str,
    after: Cursor,
    limit: usize,
) -> rusqlite::Result<Option<AgentView>> {
    let Some((mut record, count)) = row(conn, name)? else {
        return Ok(None);
    };
    if limit > 0 && after.0 < count {
        let mut stmt = conn.prepare_cached(
            "SELECT message FROM agent_messages WHERE agent = ?1 AND n >= ?2 ORDER BY n LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![name, super::reads::position(after), limit], |r| {
            from_json::<ChatMessage>(r.get_ref(0)?.as_str()?)
        })?;
        record.messages = rows.collect::<rusqlite::Result<_>>()?;
    }
    let end = after.0.min(count) + record.messages.len() as u64;
    Ok(Some(AgentView {
        record,
        message_count: count,
        next: (end < count).then_some(Cursor(end)),
    }))
}

/// A page of agents in the order they were first spawned, without their
/// conversations.
pub(super) fn page(
    conn: &Connection,
    after: Cursor,
    limit: usize,
) -> rusqlite::Result<Page<AgentView>> {
    let sql = "SELECT seq, record, messages FROM agents WHERE seq > ?1 ORDER BY seq LIMIT ?2";
    super::reads::page(conn, sql, after, limit, |r| {
        let count = r.get::<_, i64>(2)? as u64;
        let view = AgentView {
            record: from_json(r.get_ref(1)?.as_str()?)?,
            message_count: count,
            next: (count > 0).then_some(Cursor::START),
        };
        Ok((r.get(0)?, view))
    })
}

/// Loads every agent and its whole conversation into `state`, in the order
/// they were first spawned (for replay's comparison).
pub(super) fn load(conn: &Connection, state: &mut State) -> Result<(), String> {
    let mut stmt = conn
        .prepare_cached("SELECT name FROM agents ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| e.to_string())?;
    for name in names {
        let view = view(conn, &name, Cursor::START, usize::MAX)
            .map_err(|e| format!("agent {name}: {e}"))?;
        if let Some(view) = view {
            state.load_agent(view.record);
        }
    }
    Ok(())
}

/// Loads every agent of a schema older than `agent_messages` (each record
/// holds its conversation) into `state`: read-only stores are not migrated.
pub(super) fn load_before_messages(conn: &Connection, state: &mut State) -> Result<(), String> {
    let mut stmt = conn
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
