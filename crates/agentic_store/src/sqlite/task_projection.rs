//! The projection of task events: the `tasks` table, one row per task (its
//! record as JSON, its idempotency key, whether it is unfinished), written
//! in the append's transaction, and the reads of it. Each change is applied
//! by the kernel's own task rules ([`TaskRecord::apply`]) to the task's row.

use agentic_core::{ApplyError, Cursor, Page, State, SystemEvent, TaskFilter, TaskRecord};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::reads::{from_json, to_json};
use super::writer::{ProjectError, is_unique_violation};

/// Whether `event` changes the `tasks` table.
pub(super) fn applies(event: &SystemEvent) -> bool {
    matches!(event, SystemEvent::TaskSubmitted { .. }) || event.task_change().is_some()
}

/// Applies one task event to the `tasks` table.
pub(super) fn project(
    tx: &Transaction<'_>,
    seq: u64,
    event: &SystemEvent,
) -> Result<(), ProjectError> {
    if let SystemEvent::TaskSubmitted { task_id, spec } = event {
        let record = TaskRecord::submitted(*task_id, spec.clone());
        let inserted = tx
            .prepare_cached(
                "INSERT INTO tasks (seq, id, idempotency_key, record, unfinished) \
                 VALUES (?1, ?2, ?3, ?4, 1)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq as i64,
                    task_id.as_bytes(),
                    spec.idempotency_key,
                    to_json(&record)?
                ])
            });
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "tasks.id") => {
                return Err(ProjectError::Refused(ApplyError::DuplicateTask(*task_id)));
            }
            Err(e) if is_unique_violation(&e, "tasks.idempotency_key") => {
                let key = spec.idempotency_key.clone().unwrap_or_default();
                let task = tx
                    .query_row(
                        "SELECT id FROM tasks WHERE idempotency_key = ?1",
                        [&key],
                        |r| r.get::<_, Vec<u8>>(0),
                    )
                    .map_err(ProjectError::Sql)?;
                let task = Uuid::from_slice(&task).unwrap_or_default();
                return Err(ProjectError::Refused(ApplyError::DuplicateIdempotencyKey {
                    key,
                    task,
                }));
            }
            Err(e) => return Err(ProjectError::Sql(e)),
        }
        if let Some(parent) = spec.parent
            && let Some(mut record) = get(tx, parent).map_err(ProjectError::Sql)?
        {
            record.children.push(*task_id);
            store(tx, &record)?;
        }
        return Ok(());
    }
    if let Some((task_id, change)) = event.task_change() {
        let mut record = get(tx, task_id)
            .map_err(ProjectError::Sql)?
            .ok_or(ProjectError::Refused(ApplyError::UnknownTask(task_id)))?;
        record
            .apply(&change)
            .map_err(|e| ProjectError::Refused(ApplyError::Task(e)))?;
        store(tx, &record)?;
    }
    Ok(())
}

/// Writes back a task's record.
fn store(tx: &Transaction<'_>, record: &TaskRecord) -> Result<(), ProjectError> {
    let json = to_json(record).map_err(ProjectError::Sql)?;
    tx.prepare_cached("UPDATE tasks SET record = ?2, unfinished = ?3 WHERE id = ?1")
        .and_then(|mut s| {
            s.execute(params![
                record.id.as_bytes(),
                json,
                !record.status.is_final()
            ])
        })
        .map(|_| ())
        .map_err(ProjectError::Sql)
}

/// A task's record from its JSON column.
fn record(text: &str) -> rusqlite::Result<TaskRecord> {
    from_json(text)
}

/// The task with this id, if any.
pub(super) fn get(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<TaskRecord>> {
    one(
        conn,
        "SELECT record FROM tasks WHERE id = ?1",
        id.as_bytes(),
    )
}

/// The task an idempotency key names, if any.
pub(super) fn by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<TaskRecord>> {
    one(
        conn,
        "SELECT record FROM tasks WHERE idempotency_key = ?1",
        key,
    )
}

fn one(
    conn: &Connection,
    sql: &str,
    param: impl rusqlite::ToSql,
) -> rusqlite::Result<Option<TaskRecord>> {
    let text: Option<String> = conn
        .prepare_cached(sql)?
        .query_row([param], |r| r.get(0))
        .optional()?;
    text.as_deref().map(record).transpose()
}

/// A page of tasks in submission order (the unfinished ones through their
/// partial index).
pub(super) fn page(
    conn: &Connection,
    filter: TaskFilter,
    after: Cursor,
    limit: usize,
) -> rusqlite::Result<Page<TaskRecord>> {
    let sql = match filter {
        TaskFilter::All => "SELECT seq, record FROM tasks WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        TaskFilter::Unfinished => {
            "SELECT seq, record FROM tasks WHERE unfinished = 1 AND seq > ?1 ORDER BY seq LIMIT ?2"
        }
    };
    super::reads::page(conn, sql, after, limit, |r| {
        Ok((r.get(0)?, record(r.get_ref(1)?.as_str()?)?))
    })
}

/// Loads every task into `state`, in submission order (for replay's
/// comparison).
pub(super) fn load(conn: &Connection, state: &mut State) -> Result<(), String> {
    let mut stmt = conn
        .prepare_cached("SELECT record FROM tasks ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let text = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(|e| e.to_string())?;
        state.load_task(serde_json::from_str(text).map_err(|e| e.to_string())?);
    }
    Ok(())
}
