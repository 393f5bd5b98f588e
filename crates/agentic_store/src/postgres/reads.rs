//! The reads of a [`super::PostgresStore`]: the log by sequence or by
//! stream, the head, and the point and paged reads of the projections.
//! Reads that take several statements (an agent with its messages, a plugin
//! with its data and the position it reflects) run in one read-only
//! repeatable-read transaction, so they see one moment of the log.

use std::collections::BTreeMap;

use agentic_core::chain::Hash;
use agentic_core::llm::{AgentRecord, ChatMessage};
use agentic_core::plugin::PluginRecord;
use agentic_core::workflow::RunRecord;
use agentic_core::{
    AgentView, ChainHead, Cursor, ElementData, EventEnvelope, Page, PluginSnapshot, State,
    SystemEvent, TaskFilter, TaskRecord,
};
use chrono::DateTime;
use deadpool_postgres::Object;
use tokio_postgres::{GenericClient, IsolationLevel, Row};
use uuid::Uuid;

use super::PgError;
use super::durable::frontier;
use super::projection::parse;
use super::writer::head_of;

/// The columns of an event row, in [`envelope`]'s order.
const EVENT_COLUMNS: &str = "seq, event_id, stream, stream_version, recorded_at, correlation_id, \
     causation_id, schema_version, payload, prev_hash, hash";

/// The newest durable record: the head, or the durable frontier behind it
/// (see the `durable` module).
const DURABLE_HEAD: &str = concat!(
    "SELECT CASE WHEN d.cap < s.head_seq THEN d.cap ELSE s.head_seq END, \
     CASE WHEN d.cap >= s.head_seq THEN s.head_hash WHEN d.cap = 0 THEN decode(repeat('00', 32), 'hex') \
     ELSE (SELECT e.hash FROM lion.events e WHERE e.seq = d.cap) END \
     FROM lion.store s, (SELECT ",
    frontier!(),
    " AS cap) d WHERE s.id = 1"
);

/// The newest durable record (see the `durable` module).
pub(super) async fn head(client: &impl GenericClient) -> Result<ChainHead, PgError> {
    let row = client.query_one(DURABLE_HEAD, &[]).await?;
    let seq: i64 = row.get(0);
    let hash: Option<Vec<u8>> = row.get(1);
    let hash = hash.ok_or_else(|| {
        PgError::Corrupt(format!(
            "the log has no record {seq}, where it is durable up to"
        ))
    })?;
    head_of(seq, hash)
}

/// Up to `limit` durable events from `from` on.
pub(super) async fn events_from(
    client: &Object,
    from: u64,
    limit: usize,
) -> Result<Vec<EventEnvelope>, PgError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM lion.events WHERE seq >= $1 AND seq <= {} \
             ORDER BY seq LIMIT $2",
            frontier!()
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&position(from.max(1)), &count(limit)])
        .await?;
    rows.iter().map(envelope).collect()
}

/// Up to `limit` events of `stream` from version `from` on (not stopped at
/// the durable frontier: a stream's reader compares versions with what
/// appends find, so its read is settled as the projections' are).
pub(super) async fn stream(
    client: &Object,
    stream: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<EventEnvelope>, PgError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM lion.events WHERE stream = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&stream, &position(from), &count(limit)])
        .await?;
    rows.iter().map(envelope).collect()
}

/// An event row as a record, checked to be well-formed.
fn envelope(row: &Row) -> Result<EventEnvelope, PgError> {
    let seq: i64 = row.get(0);
    let bad = |what: &str| PgError::Corrupt(format!("event {seq}: {what}"));
    let hash = |i: usize| -> Result<Hash, PgError> {
        let bytes: Vec<u8> = row.get(i);
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("a hash is not 32 bytes"))?;
        Ok(Hash(bytes))
    };
    Ok(EventEnvelope {
        seq: seq as u64,
        event_id: row.get(1),
        stream: row.get(2),
        stream_version: row.get::<_, i64>(3) as u64,
        recorded_at: DateTime::from_timestamp_micros(row.get(4))
            .ok_or_else(|| bad("its time is out of range"))?,
        correlation_id: row.get(5),
        causation_id: row.get(6),
        schema_version: u16::try_from(row.get::<_, i32>(7))
            .map_err(|_| bad("its schema version is out of range"))?,
        payload: row.get(8),
        prev_hash: hash(9)?,
        hash: hash(10)?,
    })
}

/// The element with this id, from the event that created it.
pub(super) async fn element(client: &Object, id: Uuid) -> Result<Option<ElementData>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, schema_version, payload FROM lion.events \
             WHERE stream = $1 AND stream_version = 1",
        )
        .await?;
    client
        .query_opt(&stmt, &[&format!("element:{id}")])
        .await?
        .map(|r| created(&r))
        .transpose()
}

/// A page of elements in creation order.
pub(super) async fn elements(
    client: &Object,
    after: Cursor,
    limit: usize,
) -> Result<Page<ElementData>, PgError> {
    let limit = limit.max(1);
    let stmt = client
        .prepare_cached(concat!(
            "SELECT seq, schema_version, payload FROM lion.events WHERE ",
            element_creations!(),
            " AND seq > $1 ORDER BY seq LIMIT $2"
        ))
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&position(after.0), &count(limit.saturating_add(1))],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((r.get::<_, i64>(0) as u64, created(r)?)))
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(Page::from_rows(rows, limit))
}

/// The element a row of (seq, schema version, payload) of its creating
/// event creates.
fn created(row: &Row) -> Result<ElementData, PgError> {
    let seq: i64 = row.get(0);
    let version = u16::try_from(row.get::<_, i32>(1)).unwrap_or(u16::MAX);
    match SystemEvent::decode(version, row.get(2)) {
        Ok(SystemEvent::ElementCreated { element }) => Ok(element),
        Ok(other) => Err(PgError::Corrupt(format!(
            "element row at seq {seq} names a {} event",
            other.kind()
        ))),
        Err(e) => Err(PgError::Corrupt(format!("event {seq}: {e}"))),
    }
}

/// The task with this id.
pub(super) async fn task(client: &Object, id: Uuid) -> Result<Option<TaskRecord>, PgError> {
    let stmt = client
        .prepare_cached("SELECT record FROM lion.tasks WHERE id = $1")
        .await?;
    client
        .query_opt(&stmt, &[&id])
        .await?
        .map(|r| parse(r.get(0), "task"))
        .transpose()
}

/// The task an idempotency key names.
pub(super) async fn task_by_key(client: &Object, key: &str) -> Result<Option<TaskRecord>, PgError> {
    let stmt = client
        .prepare_cached("SELECT record FROM lion.tasks WHERE idempotency_key = $1")
        .await?;
    client
        .query_opt(&stmt, &[&key])
        .await?
        .map(|r| parse(r.get(0), "task"))
        .transpose()
}

/// A page of the tasks `filter` selects, in submission order.
pub(super) async fn tasks(
    client: &Object,
    filter: TaskFilter,
    after: Cursor,
    limit: usize,
) -> Result<Page<TaskRecord>, PgError> {
    let sql = match filter {
        TaskFilter::All => {
            "SELECT seq, record FROM lion.tasks WHERE seq > $1 ORDER BY seq LIMIT $2"
        }
        TaskFilter::Unfinished => {
            "SELECT seq, record FROM lion.tasks WHERE unfinished AND seq > $1 ORDER BY seq LIMIT $2"
        }
    };
    page(client, sql, after, limit, "task").await
}

/// The workflow run with this id.
pub(super) async fn workflow(client: &Object, id: Uuid) -> Result<Option<RunRecord>, PgError> {
    let stmt = client
        .prepare_cached("SELECT record FROM lion.workflows WHERE id = $1")
        .await?;
    client
        .query_opt(&stmt, &[&id])
        .await?
        .map(|r| parse(r.get(0), "workflow run"))
        .transpose()
}

/// A page of the workflow runs `filter` selects, in start order.
pub(super) async fn workflows(
    client: &Object,
    filter: TaskFilter,
    after: Cursor,
    limit: usize,
) -> Result<Page<RunRecord>, PgError> {
    let sql = match filter {
        TaskFilter::All => {
            "SELECT seq, record FROM lion.workflows WHERE seq > $1 ORDER BY seq LIMIT $2"
        }
        TaskFilter::Unfinished => {
            "SELECT seq, record FROM lion.workflows WHERE unfinished AND seq > $1 \
             ORDER BY seq LIMIT $2"
        }
    };
    page(client, sql, after, limit, "workflow run").await
}

/// The agent `name` with a page of its conversation.
pub(super) async fn agent(
    client: &mut Object,
    name: &str,
    after: Cursor,
    limit: usize,
) -> Result<Option<AgentView>, PgError> {
    let row_stmt = client
        .prepare_cached("SELECT messages, record FROM lion.agents WHERE name = $1")
        .await?;
    let messages_stmt = client
        .prepare_cached(
            "SELECT message FROM lion.agent_messages WHERE agent = $1 AND n >= $2 \
             ORDER BY n LIMIT $3",
        )
        .await?;
    let tx = snapshot(client).await?;
    let Some(row) = tx.query_opt(&row_stmt, &[&name]).await? else {
        return Ok(None);
    };
    let total = row.get::<_, i64>(0) as u64;
    let mut record: AgentRecord = parse(row.get(1), "agent")?;
    if limit > 0 && after.0 < total {
        let rows = tx
            .query(&messages_stmt, &[&name, &position(after.0), &count(limit)])
            .await?;
        record.messages = rows
            .iter()
            .map(|r| parse::<ChatMessage>(r.get(0), "agent message"))
            .collect::<Result<_, _>>()?;
    }
    tx.commit().await?;
    let end = after.0.min(total) + record.messages.len() as u64;
    Ok(Some(AgentView {
        record,
        message_count: total,
        next: (end < total).then_some(Cursor(end)),
    }))
}

/// A page of agents in first-spawn order, without their messages.
pub(super) async fn agents(
    client: &Object,
    after: Cursor,
    limit: usize,
) -> Result<Page<AgentView>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, messages, record FROM lion.agents WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&position(after.0), &count(limit.max(1).saturating_add(1))],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            let total = r.get::<_, i64>(1) as u64;
            let view = AgentView {
                record: parse(r.get(2), "agent")?,
                message_count: total,
                next: (total > 0).then_some(Cursor::START),
            };
            Ok((r.get::<_, i64>(0) as u64, view))
        })
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(Page::from_rows(rows, limit.max(1)))
}

/// One plugin with its key-value data and the position they reflect.
pub(super) async fn plugin(
    client: &mut Object,
    name: &str,
) -> Result<Option<PluginSnapshot>, PgError> {
    let record_stmt = client
        .prepare_cached("SELECT record FROM lion.plugins WHERE name = $1")
        .await?;
    let kv_stmt = client
        .prepare_cached("SELECT key, value FROM lion.plugin_kv WHERE plugin = $1")
        .await?;
    let tx = snapshot(client).await?;
    // The head the rows reflect: a turn not yet durable included (the
    // read is settled as every read of projections is).
    let as_of: i64 = tx
        .query_one("SELECT head_seq FROM lion.store WHERE id = 1", &[])
        .await?
        .get(0);
    let as_of = as_of.max(0) as u64;
    let Some(row) = tx.query_opt(&record_stmt, &[&name]).await? else {
        return Ok(None);
    };
    let record: PluginRecord = parse(row.get(0), "plugin")?;
    let kv = tx
        .query(&kv_stmt, &[&name])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().await?;
    Ok(Some(PluginSnapshot { record, kv, as_of }))
}

/// A page of installed plugins in installation order.
pub(super) async fn plugins(
    client: &Object,
    after: Cursor,
    limit: usize,
) -> Result<Page<PluginRecord>, PgError> {
    page(
        client,
        "SELECT seq, record FROM lion.plugins WHERE seq > $1 ORDER BY seq LIMIT $2",
        after,
        limit,
        "plugin",
    )
    .await
}

/// The whole projected state, read at one moment.
pub(super) async fn projected_state(client: &mut Object) -> Result<State, PgError> {
    let tx = snapshot(client).await?;
    let mut state = State::new();
    for row in tx
        .query(
            concat!(
                "SELECT seq, schema_version, payload FROM lion.events WHERE ",
                element_creations!(),
                " ORDER BY seq"
            ),
            &[],
        )
        .await?
    {
        state.load_element(created(&row)?);
    }
    for row in tx
        .query("SELECT record FROM lion.tasks ORDER BY seq", &[])
        .await?
    {
        state.load_task(parse(row.get(0), "task")?);
    }
    for row in tx
        .query("SELECT record FROM lion.workflows ORDER BY seq", &[])
        .await?
    {
        state.load_workflow(parse(row.get(0), "workflow run")?);
    }
    let mut messages: BTreeMap<String, Vec<ChatMessage>> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT agent, message FROM lion.agent_messages ORDER BY agent, n",
            &[],
        )
        .await?
    {
        messages
            .entry(row.get(0))
            .or_default()
            .push(parse(row.get(1), "agent message")?);
    }
    for row in tx
        .query("SELECT record, messages FROM lion.agents ORDER BY seq", &[])
        .await?
    {
        let mut record: AgentRecord = parse(row.get(0), "agent")?;
        record.messages = messages.remove(&record.name).unwrap_or_default();
        let counted = row.get::<_, i64>(1);
        if counted != record.messages.len() as i64 {
            return Err(PgError::Corrupt(format!(
                "agent {}: its row counts {counted} messages, {} are stored",
                record.name,
                record.messages.len()
            )));
        }
        state.load_agent(record);
    }
    let mut kv: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in tx
        .query("SELECT plugin, key, value FROM lion.plugin_kv", &[])
        .await?
    {
        kv.entry(row.get(0))
            .or_default()
            .insert(row.get(1), row.get(2));
    }
    for row in tx
        .query("SELECT record FROM lion.plugins ORDER BY seq", &[])
        .await?
    {
        let record: PluginRecord = parse(row.get(0), "plugin")?;
        let data = kv.remove(record.name()).unwrap_or_default();
        state.load_plugin(record, data);
    }
    tx.commit().await?;
    Ok(state)
}

/// A read-only transaction that sees one moment of the database.
async fn snapshot(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, PgError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// A page read with `sql`, which selects (position, JSON record) after $1,
/// at most $2 rows.
async fn page<T: serde::de::DeserializeOwned>(
    client: &Object,
    sql: &str,
    after: Cursor,
    limit: usize,
    what: &str,
) -> Result<Page<T>, PgError> {
    let limit = limit.max(1);
    let stmt = client.prepare_cached(sql).await?;
    let rows = client
        .query(
            &stmt,
            &[&position(after.0), &count(limit.saturating_add(1))],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((r.get::<_, i64>(0) as u64, parse(r.get(1), what)?)))
        .collect::<Result<Vec<_>, PgError>>()?;
    Ok(Page::from_rows(rows, limit))
}

/// A position as PostgreSQL's `bigint`.
pub(super) fn position(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row count as PostgreSQL's `bigint`.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
