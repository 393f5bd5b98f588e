//! The projection of plugin events: the `plugins` table (one row per
//! installed plugin, counters as columns so a call's events are cheap
//! updates) and `plugin_kv` (each plugin's key-value store), written in the
//! append's transaction, and read back into a [`State`].

use std::collections::BTreeMap;

use agentic_core::plugin::{InstalledPlugin, PluginRecord, PluginStatus};
use agentic_core::{ApplyError, Cursor, Page, PluginSnapshot, State, SystemEvent};
use rusqlite::{OptionalExtension, Transaction, params};

use super::writer::{ProjectError, is_unique_violation};

/// Updates the plugin tables for one plugin event.
pub(super) fn project(
    tx: &Transaction<'_>,
    seq: u64,
    event: &SystemEvent,
) -> Result<(), ProjectError> {
    let unknown = |name: &str| ProjectError::Refused(ApplyError::UnknownPlugin(name.to_owned()));
    match event {
        SystemEvent::PluginInstalled { plugin } => {
            let installed = to_json(plugin)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO plugins (name, seq, installed, status, calls, succeeded, \
                     failed, consecutive_failures, artifacts, install_id) \
                     VALUES (?1, ?2, ?3, 'active', 0, 0, 0, 0, '{}', ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        plugin.name(),
                        seq as i64,
                        installed,
                        plugin.install_id.map(|id| id.to_string())
                    ])
                });
            match inserted {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e, "plugins.name") => Err(ProjectError::Refused(
                    ApplyError::DuplicatePlugin(plugin.name().to_owned()),
                )),
                Err(e) => Err(ProjectError::Sql(e)),
            }
        }
        SystemEvent::PluginRemoved { name } => {
            let removed = execute(tx, "DELETE FROM plugins WHERE name = ?1", params![name])?;
            if removed == 0 {
                return Err(unknown(name));
            }
            execute(tx, "DELETE FROM plugin_kv WHERE plugin = ?1", params![name]).map(|_| ())
        }
        other if !applies(tx, other)? => Ok(()),
        SystemEvent::PluginKvSet {
            name, key, value, ..
        } => match value {
            Some(value) => execute(
                tx,
                "INSERT INTO plugin_kv (plugin, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
                params![name, key, value],
            ),
            None => execute(
                tx,
                "DELETE FROM plugin_kv WHERE plugin = ?1 AND key = ?2",
                params![name, key],
            ),
        }
        .map(|_| ()),
        SystemEvent::PluginLoaded { name, artifact, .. } => {
            let current: Option<String> = tx
                .prepare_cached("SELECT artifacts FROM plugins WHERE name = ?1")
                .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
                .map_err(ProjectError::Sql)?;
            let current = current.ok_or_else(|| unknown(name))?;
            let mut artifacts: BTreeMap<String, String> =
                serde_json::from_str(&current).map_err(|e| ProjectError::Sql(from_json(e)))?;
            artifacts.insert(artifact.key.clone(), artifact.sha256.clone());
            update(
                tx,
                name,
                "UPDATE plugins SET artifacts = ?2 WHERE name = ?1",
                params![name, to_json(&artifacts)?],
            )
        }
        SystemEvent::PluginInvoked { name, .. } => update(
            tx,
            name,
            "UPDATE plugins SET calls = calls + 1 WHERE name = ?1",
            params![name],
        ),
        SystemEvent::PluginSucceeded { name, .. } => update(
            tx,
            name,
            "UPDATE plugins SET succeeded = succeeded + 1, consecutive_failures = 0 \
             WHERE name = ?1",
            params![name],
        ),
        SystemEvent::PluginFailed { name, failure, .. } => update(
            tx,
            name,
            "UPDATE plugins SET failed = failed + 1, \
             consecutive_failures = consecutive_failures + ?2 WHERE name = ?1",
            params![name, i64::from(failure.kind.counts_towards_quarantine())],
        ),
        SystemEvent::PluginQuarantined { name, .. } => update(
            tx,
            name,
            "UPDATE plugins SET status = 'quarantined' WHERE name = ?1",
            params![name],
        ),
        SystemEvent::PluginGranted { name, grant, .. } => {
            let mut installed = installed(tx, name)?;
            installed.manifest.check_grant(grant).map_err(|e| {
                ProjectError::Refused(ApplyError::InvalidGrant {
                    name: name.clone(),
                    reason: e.to_string(),
                })
            })?;
            installed.regrant(grant.clone());
            update(
                tx,
                name,
                "UPDATE plugins SET installed = ?2 WHERE name = ?1",
                params![name, to_json(&installed)?],
            )
        }
        SystemEvent::PluginApproved {
            name, functions, ..
        } => {
            let mut installed = installed(tx, name)?;
            if !installed.is_server() {
                return Err(ProjectError::Refused(ApplyError::NotAServer(name.clone())));
            }
            installed.manifest.functions = functions.clone();
            update(
                tx,
                name,
                "UPDATE plugins SET installed = ?2 WHERE name = ?1",
                params![name, to_json(&installed)?],
            )
        }
        SystemEvent::PluginPermissionDenied { name, .. }
        | SystemEvent::PluginEmitted { name, .. } => require(tx, name),
        _ => Ok(()),
    }
}

/// Whether a plugin event (not an install or a removal) changes the
/// projection, by the reducer's rule (`State::plugin_event_applies`): one
/// naming the install of today does; one naming an earlier install, or a
/// plugin removed since, changes nothing; a grant for another install is
/// refused, as is an event without an install id about a plugin that is
/// not installed.
fn applies(tx: &Transaction<'_>, event: &SystemEvent) -> Result<bool, ProjectError> {
    let name = event.plugin_name().unwrap_or_default();
    let current: Option<Option<String>> = tx
        .prepare_cached("SELECT install_id FROM plugins WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(ProjectError::Sql)?;
    let id = event.plugin_install_id().map(|id| id.to_string());
    match current {
        None if id.is_none() || is_grant_or_approval(event) => Err(ProjectError::Refused(
            ApplyError::UnknownPlugin(name.to_owned()),
        )),
        None => Ok(false),
        Some(current) if current == id => Ok(true),
        Some(_) if matches!(event, SystemEvent::PluginApproved { .. }) => Err(
            ProjectError::Refused(ApplyError::StaleApproval(name.to_owned())),
        ),
        Some(_) if is_grant_or_approval(event) => Err(ProjectError::Refused(
            ApplyError::StaleGrant(name.to_owned()),
        )),
        Some(_) => Ok(false),
    }
}

/// Grants and approvals must name the plugin's current install.
fn is_grant_or_approval(event: &SystemEvent) -> bool {
    matches!(
        event,
        SystemEvent::PluginGranted { .. } | SystemEvent::PluginApproved { .. }
    )
}

/// The recorded install of plugin `name`.
fn installed(tx: &Transaction<'_>, name: &str) -> Result<InstalledPlugin, ProjectError> {
    let current: Option<String> = tx
        .prepare_cached("SELECT installed FROM plugins WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(ProjectError::Sql)?;
    let current =
        current.ok_or_else(|| ProjectError::Refused(ApplyError::UnknownPlugin(name.to_owned())))?;
    serde_json::from_str(&current).map_err(|e| ProjectError::Sql(from_json(e)))
}

/// The columns [`record`] reads, in its order.
const RECORD_COLUMNS: &str =
    "name, installed, status, calls, succeeded, failed, consecutive_failures, artifacts";

/// Loads every plugin and its key-value store into `state`, in
/// installation order.
pub(super) fn load(tx: &Transaction<'_>, state: &mut State) -> Result<(), String> {
    let mut kv: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stmt = tx
        .prepare_cached("SELECT plugin, key, value FROM plugin_kv")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let get = |i| row.get::<_, String>(i).map_err(|e| e.to_string());
        kv.entry(get(0)?).or_default().insert(get(1)?, get(2)?);
    }
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM plugins ORDER BY seq"
        ))
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let record = record(row)?;
        let kv = kv.remove(record.name()).unwrap_or_default();
        state.load_plugin(record, kv);
    }
    Ok(())
}

/// A page of installed plugins in installation order.
pub(super) fn page(
    conn: &rusqlite::Connection,
    after: Cursor,
    limit: usize,
) -> rusqlite::Result<Page<PluginRecord>> {
    let sql =
        format!("SELECT {RECORD_COLUMNS}, seq FROM plugins WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    super::reads::page(conn, &sql, after, limit, |row| {
        Ok((row.get(8)?, record(row).map_err(super::reads::corrupt)?))
    })
}

/// One plugin and its key-value store, if it is installed, read in the
/// transaction whose last event is `as_of`.
pub(super) fn load_one(
    tx: &Transaction<'_>,
    name: &str,
    as_of: u64,
) -> Result<Option<PluginSnapshot>, String> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM plugins WHERE name = ?1"
        ))
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([name]).map_err(|e| e.to_string())?;
    let Some(row) = rows.next().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let record = record(row)?;
    let mut kv = BTreeMap::new();
    let mut stmt = tx
        .prepare_cached("SELECT key, value FROM plugin_kv WHERE plugin = ?1")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([name]).map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let get = |i| row.get::<_, String>(i).map_err(|e| e.to_string());
        kv.insert(get(0)?, get(1)?);
    }
    Ok(Some(PluginSnapshot { record, kv, as_of }))
}

/// A plugin's record from a row of [`RECORD_COLUMNS`].
fn record(row: &rusqlite::Row<'_>) -> Result<PluginRecord, String> {
    let text = |i| row.get::<_, String>(i).map_err(|e| e.to_string());
    let int = |i| row.get::<_, i64>(i).map_err(|e| e.to_string());
    let name = text(0)?;
    let installed: InstalledPlugin =
        serde_json::from_str(&text(1)?).map_err(|e| format!("plugin {name}: {e}"))?;
    let status = match text(2)?.as_str() {
        "active" => PluginStatus::Active,
        "quarantined" => PluginStatus::Quarantined,
        other => return Err(format!("plugin {name}: unknown status {other:?}")),
    };
    Ok(PluginRecord {
        installed,
        status,
        calls: int(3)? as u64,
        succeeded: int(4)? as u64,
        failed: int(5)? as u64,
        consecutive_failures: int(6)? as u32,
        artifacts: serde_json::from_str(&text(7)?).map_err(|e| format!("plugin {name}: {e}"))?,
    })
}

/// Refuses an event about a plugin that is not installed.
fn require(tx: &Transaction<'_>, name: &str) -> Result<(), ProjectError> {
    let found = tx
        .prepare_cached("SELECT 1 FROM plugins WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .map_err(ProjectError::Sql)?;
    if found {
        Ok(())
    } else {
        Err(ProjectError::Refused(ApplyError::UnknownPlugin(
            name.to_owned(),
        )))
    }
}

/// Runs an update of one plugin's row, refusing when it is not installed.
fn update(
    tx: &Transaction<'_>,
    name: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<(), ProjectError> {
    match execute(tx, sql, params)? {
        0 => Err(ProjectError::Refused(ApplyError::UnknownPlugin(
            name.to_owned(),
        ))),
        _ => Ok(()),
    }
}

fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, ProjectError> {
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(ProjectError::Sql)
}

fn from_json(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

/// A value as JSON text for a column.
fn to_json(value: &impl serde::Serialize) -> Result<String, ProjectError> {
    serde_json::to_string(value)
        .map_err(|e| ProjectError::Sql(rusqlite::Error::ToSqlConversionFailure(e.into())))
}
