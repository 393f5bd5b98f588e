//! The store's tables in PostgreSQL, all in the `lion` schema (so a
//! database shared with other applications keeps its names), created by the
//! first opener and checked by every later one.
//!
//! `lion.events` holds each record exactly as hashed: the payload as
//! `bytea`, never re-encoded (`jsonb` would reorder keys and break the
//! chain), `recorded_at` as the microseconds the hash covers. A trigger
//! refuses updates, deletes and truncation of it. `lion.store` is one row:
//! the schema version, the store's id and the log's head, which every
//! append reads and moves while holding the head lock (a row lock on it),
//! serialising appends across kernels in commit order (see the `writer`
//! module). `lion.kernels` holds the kernels sharing the log and their
//! leases (the `kernels` module); `lion.flushes` which committed events are
//! durable (`durable`); `lion.blobs` plugin components by their hash
//! (`blobs`); `lion.workflows` the projection of workflow runs;
//! `lion.secrets` the key that signs live events relayed between kernels.

use tokio_postgres::Client;
use uuid::Uuid;

use super::PgError;

/// The layout version this lion reads and writes.
pub const SCHEMA_VERSION: i32 = 3;

/// Moves the head from where a writer expects it, locking it until the
/// transaction ends, and wakes the readers; fails with SQLSTATE `LN001`
/// when the head is elsewhere (part of layout 2).
const MOVE_HEAD_FUNCTION: &str = "
CREATE FUNCTION lion.move_head(from_seq bigint, from_hash bytea, to_seq bigint, to_hash bytea)
    RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE lion.store SET head_seq = to_seq, head_hash = to_hash
        WHERE id = 1 AND head_seq = from_seq AND head_hash = from_hash;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the log''s head is no longer at seq %', from_seq
            USING ERRCODE = 'LN001';
    END IF;
    PERFORM pg_notify('lion_log', to_seq::text);
END $$;
";

/// Elements in creation order: each is the first event of its own stream
/// (`element:<id>`, which holds nothing else), so an element is found by
/// its stream and listed from this index of the log, with no table of its
/// own (part of layout 2).
const ELEMENT_INDEX: &str = concat!(
    "CREATE INDEX events_element_creations ON lion.events (seq) WHERE ",
    element_creations!()
);

/// Moves a layout-1 store to layout 2 (with [`ELEMENT_INDEX`] and
/// [`MOVE_HEAD_FUNCTION`]):
/// elements are found from their creating events (an index on the log),
/// not kept in a table.
const LAYOUT_1_TO_2: &str = "
DROP TABLE lion.elements;
UPDATE lion.store SET schema_version = 2 WHERE id = 1;
";

/// How many of a layout-1 store's elements layout 2 would not find where
/// its table had them, or would find where it had none: an element row
/// whose event is not version 1 of the element's own stream, and the
/// reverse (an import of an old log could make either).
const ELEMENTS_UNMOVABLE: &str = "
SELECT (SELECT count(*) FROM lion.elements el LEFT JOIN lion.events e ON e.seq = el.seq
        WHERE e.seq IS NULL OR e.stream <> 'element:' || el.id::text OR e.stream_version <> 1)
     + (SELECT count(*) FROM lion.events e
        WHERE e.stream_version = 1 AND e.stream LIKE 'element:%'
        AND NOT EXISTS (SELECT FROM lion.elements el WHERE el.seq = e.seq))";

/// Which committed events are durable (part of layout 3; see the
/// `durable` module): a row per store instance that committed a turn
/// without waiting for its flush, or flushed for its readers.
const FLUSHES: &str = "
CREATE TABLE lion.flushes (
    writer   uuid   PRIMARY KEY, -- a store instance's writer, or its readers
    from_seq bigint NOT NULL,    -- the head before its newest relaxed commit
    turn     bigint NOT NULL,    -- the head after it
    flushed  bigint NOT NULL     -- a head it made sure was durable
);
";

/// Moves a layout-2 store to layout 3 (with [`FLUSHES`]): a lion that
/// does not read `lion.flushes` could show other readers commits that are
/// not yet durable, so the version moves with it.
const LAYOUT_2_TO_3: &str = "UPDATE lion.store SET schema_version = 3 WHERE id = 1;";

/// Advisory lock key held while the schema is created: openers of a new
/// database take turns (the number spells "lion" in ASCII).
const CREATE_LOCK: i64 = 0x6c69_6f6e;

/// The layout, created in one transaction.
const LAYOUT: &str = "
CREATE SCHEMA lion;
CREATE TABLE lion.store (
    id             integer PRIMARY KEY CHECK (id = 1),
    schema_version integer NOT NULL,
    store_id       uuid    NOT NULL,
    head_seq       bigint  NOT NULL,
    head_hash      bytea   NOT NULL
);
CREATE TABLE lion.events (
    seq            bigint   PRIMARY KEY,
    event_id       uuid     NOT NULL UNIQUE,
    stream         text     NOT NULL,
    stream_version bigint   NOT NULL,
    recorded_at    bigint   NOT NULL, -- microseconds since the Unix epoch
    correlation_id uuid     NOT NULL,
    causation_id   uuid,
    schema_version integer  NOT NULL,
    payload        bytea    NOT NULL, -- byte for byte as hashed
    prev_hash      bytea    NOT NULL,
    hash           bytea    NOT NULL,
    UNIQUE (stream, stream_version)
);
CREATE FUNCTION lion.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only';
END $$;
CREATE TRIGGER events_are_append_only BEFORE UPDATE OR DELETE ON lion.events
    FOR EACH ROW EXECUTE FUNCTION lion.refuse_change();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON lion.events
    FOR EACH STATEMENT EXECUTE FUNCTION lion.refuse_change();
CREATE TABLE lion.tasks (
    seq             bigint  PRIMARY KEY, -- the submitting event: submission order
    id              uuid    NOT NULL UNIQUE,
    idempotency_key text    UNIQUE,
    unfinished      boolean NOT NULL,
    record          bytea   NOT NULL     -- the TaskRecord, JSON
);
CREATE INDEX tasks_unfinished ON lion.tasks (seq) WHERE unfinished;
CREATE TABLE lion.agents (
    name     text   PRIMARY KEY,
    seq      bigint NOT NULL, -- the first spawning event: spawn order
    messages bigint NOT NULL, -- how many rows of agent_messages are its
    record   bytea  NOT NULL  -- the AgentRecord without its messages, JSON
);
CREATE INDEX agents_by_seq ON lion.agents (seq);
CREATE TABLE lion.agent_messages (
    agent   text   NOT NULL,
    n       bigint NOT NULL, -- 0-based place in the conversation
    message bytea  NOT NULL, -- the ChatMessage, JSON
    PRIMARY KEY (agent, n)
);
CREATE TABLE lion.plugins (
    name   text   PRIMARY KEY,
    seq    bigint NOT NULL UNIQUE, -- the installing event: install order
    record bytea  NOT NULL         -- the PluginRecord, JSON
);
CREATE TABLE lion.plugin_kv (
    plugin text NOT NULL,
    key    text NOT NULL,
    value  text NOT NULL,
    PRIMARY KEY (plugin, key)
);
CREATE TABLE lion.kernels (
    id           uuid        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_ms     bigint      NOT NULL,
    state        text        NOT NULL DEFAULT 'alive' -- alive | expired | stopped
);
";

/// Tables added to layout 1 after its first stores were made, created
/// where missing (only there: a role without CREATE rights still opens a
/// store that has them).
const ADDED: [(&str, &str); 3] = [
    (
        "lion.blobs",
        // Files by the lowercase hex SHA-256 of their bytes.
        "CREATE TABLE lion.blobs (sha256 text PRIMARY KEY, bytes bytea NOT NULL)",
    ),
    (
        "lion.secrets",
        // Keys the kernels share (the live relay's), readable by the roles
        // that may read the log.
        "CREATE TABLE lion.secrets (name text PRIMARY KEY, value bytea NOT NULL)",
    ),
    (
        "lion.workflows",
        // Workflow runs in start order; the unfinished ones (what a
        // starting kernel drives) through a partial index.
        "CREATE TABLE lion.workflows (
            seq        bigint  PRIMARY KEY, -- the starting event: start order
            id         uuid    NOT NULL UNIQUE,
            unfinished boolean NOT NULL,
            record     bytea   NOT NULL     -- the RunRecord, JSON
        );
        CREATE INDEX workflows_unfinished ON lion.workflows (seq) WHERE unfinished",
    ),
];

/// What opening a store learns.
pub(super) struct Opened {
    /// The store's id.
    pub store_id: Uuid,
    /// The key that signs live events relayed between its kernels.
    pub relay_key: Vec<u8>,
}

/// Moves a layout-1 store to layout 2 inside `tx`, after checking that the
/// log's index finds its elements as its table did; refuses, untouched, a
/// store it would not.
async fn layout_1_to_2(tx: &tokio_postgres::Transaction<'_>) -> Result<(), PgError> {
    // Indexing a long log takes as long as it takes.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    let unmovable: i64 = tx.query_one(ELEMENTS_UNMOVABLE, &[]).await?.get(0);
    if unmovable > 0 {
        return Err(PgError::NotAStore(format!(
            "it has layout 1, and {unmovable} of its elements (or events on element streams) \
             break the rule this lion finds elements by: an element's creation is the first \
             event of its own stream, element:<id>, and nothing else is"
        )));
    }
    let moved = async {
        tx.batch_execute(ELEMENT_INDEX).await?;
        tx.batch_execute(LAYOUT_1_TO_2).await?;
        tx.batch_execute(MOVE_HEAD_FUNCTION).await
    };
    moved.await.map_err(|e| match e.code() {
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => PgError::NotAStore(
            "it has layout 1, which this lion moves to layout 2 when a role that owns \
             lion's tables (and may create in schema lion) opens it; this role may not"
                .into(),
        ),
        _ => PgError::Db(e),
    })
}

/// Moves a layout-2 store to layout 3 inside `tx`.
async fn layout_2_to_3(tx: &tokio_postgres::Transaction<'_>) -> Result<(), PgError> {
    let moved = async {
        tx.batch_execute(FLUSHES).await?;
        tx.batch_execute(LAYOUT_2_TO_3).await
    };
    moved.await.map_err(|e| match e.code() {
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => PgError::NotAStore(
            "it has layout 2, which this lion moves to layout 3 when a role that may create \
             in schema lion opens it; this role may not"
                .into(),
        ),
        _ => PgError::Db(e),
    })
}

/// Creates the layout in a database that has none, or checks the one it
/// has; returns the store's id and shared keys.
pub(super) async fn initialise(client: &mut Client) -> Result<Opened, PgError> {
    // Read committed whatever the database's default: what the previous
    // holder of the lock created must be seen after it.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .await?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('lion.store') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        let taken: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'lion')",
                &[],
            )
            .await?
            .get(0);
        if taken {
            return Err(PgError::NotAStore(
                "it has a schema named `lion` without lion's tables".into(),
            ));
        }
        tx.batch_execute(LAYOUT).await?;
        tx.batch_execute(ELEMENT_INDEX).await?;
        tx.batch_execute(MOVE_HEAD_FUNCTION).await?;
        tx.batch_execute(FLUSHES).await?;
        tx.execute(
            "INSERT INTO lion.store (id, schema_version, store_id, head_seq, head_hash) \
             VALUES (1, $1, $2, 0, $3)",
            &[&SCHEMA_VERSION, &Uuid::now_v7(), &vec![0u8; 32]],
        )
        .await?;
    }
    let row = tx
        .query_opt(
            "SELECT schema_version, store_id FROM lion.store WHERE id = 1",
            &[],
        )
        .await?
        .ok_or_else(|| PgError::NotAStore("its `lion.store` table is empty".into()))?;
    let mut version: i32 = row.get(0);
    if version == 1 {
        layout_1_to_2(&tx).await?;
        version = 2;
    }
    if version == 2 {
        layout_2_to_3(&tx).await?;
        version = 3;
    }
    if version != SCHEMA_VERSION {
        return Err(PgError::NotAStore(format!(
            "its layout is version {version}; this lion reads version {SCHEMA_VERSION}"
        )));
    }
    let store_id: Uuid = row.get(1);
    for (table, create) in ADDED {
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?
            .get(0);
        if !exists {
            tx.batch_execute(create).await?;
        }
    }
    const KEY: &str = "SELECT value FROM lion.secrets WHERE name = 'live_relay'";
    let relay_key: Vec<u8> = match tx.query_opt(KEY, &[]).await? {
        Some(row) => row.get(0),
        None => {
            let key: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
                .map_err(|_| PgError::Pool("the system gave no randomness for a key".into()))?
                .expose();
            tx.execute(
                "INSERT INTO lion.secrets (name, value) VALUES ('live_relay', $1)",
                &[&key.as_slice()],
            )
            .await?;
            key.to_vec()
        }
    };
    tx.commit().await?;
    Ok(Opened {
        store_id,
        relay_key,
    })
}
