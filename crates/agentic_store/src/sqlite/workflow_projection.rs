//! The projection of workflow runs: the `workflows` table, one row per run
//! (its [`RunRecord`] as JSON, whether it is unfinished), written in the
//! append's transaction, and the reads of it. Each event is checked and
//! applied by the kernel's own rules ([`RunRecord::apply`]); a row is
//! written when a run starts and when it ends, not for every step.

use agentic_core::workflow::run::RunEvent;
use agentic_core::workflow::{RunRecord, RunRecordError};
use agentic_core::{ApplyError, Cursor, Page, State, TaskFilter};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::reads::{from_json, to_json};
use super::writer::{ProjectError, is_unique_violation};

/// Applies one event of run `run` to the `workflows` table.
pub(super) fn project(
    tx: &Transaction<'_>,
    seq: u64,
    run: Uuid,
    event: &RunEvent,
) -> Result<(), ProjectError> {
    let refused = |e: RunRecordError| ProjectError::Refused(ApplyError::Workflow(e));
    if let Some(record) = RunRecord::started(run, event) {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO workflows (seq, id, record, unfinished) VALUES (?1, ?2, ?3, 1)",
            )
            .and_then(|mut s| s.execute(params![seq as i64, run.as_bytes(), to_json(&record)?]));
        return match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e, "workflows.id") => {
                Err(refused(RunRecordError::Duplicate(run)))
            }
            Err(e) => Err(ProjectError::Sql(e)),
        };
    }
    let mut record = get(tx, run)
        .map_err(ProjectError::Sql)?
        .ok_or(refused(RunRecordError::Unknown(run)))?;
    let before = record.status;
    record.apply(event).map_err(refused)?;
    if record.status == before {
        return Ok(());
    }
    tx.prepare_cached("UPDATE workflows SET record = ?2, unfinished = ?3 WHERE id = ?1")
        .and_then(|mut s| {
            s.execute(params![
                run.as_bytes(),
                to_json(&record)?,
                !record.status.is_final()
            ])
        })
        .map(|_| ())
        .map_err(ProjectError::Sql)
}

/// The run with this id, if any.
pub(super) fn get(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<RunRecord>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT record FROM workflows WHERE id = ?1")?
        .query_row([id.as_bytes()], |r| r.get(0))
        .optional()?;
    text.as_deref().map(from_json::<RunRecord>).transpose()
}

/// A page of runs in start order (the unfinished ones through their
/// partial index).
pub(super) fn page(
    conn: &Connection,
    filter: TaskFilter,
    after: Cursor,
    limit: usize,
) -> rusqlite::Result<Page<RunRecord>> {
    let sql = match filter {
        TaskFilter::All => "SELECT seq, record FROM workflows WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        TaskFilter::Unfinished => {
            "SELECT seq, record FROM workflows WHERE unfinished = 1 AND seq > ?1 \
             ORDER BY seq LIMIT ?2"
        }
    };
    super::reads::page(conn, sql, after, limit, |r| {
        Ok((r.get(0)?, from_json::<RunRecord>(r.get_ref(1)?.as_str()?)?))
    })
}

/// Loads every run into `state`, in start order (for replay's comparison).
pub(super) fn load(conn: &Connection, state: &mut State) -> Result<(), String> {
    let mut stmt = conn
        .prepare_cached("SELECT record FROM workflows ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let text = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(|e| e.to_string())?;
        state.load_workflow(serde_json::from_str(text).map_err(|e| e.to_string())?);
    }
    Ok(())
}
