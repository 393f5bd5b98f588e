//! Helpers shared by the SQLite store tests: building events, opening
//! a store, reading its whole log, tampering with `lion.db` behind the
//! store's back, and re-executing this test binary as a child process.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use agentic_core::{AgentId, ElementData, EventEnvelope, EventStore, NewEvent, State, SystemEvent};
use agentic_store::{SqliteOptions, SqliteStore};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A JSON object literal as element metadata.
pub fn meta(value: Value) -> Map<String, Value> {
    value
        .as_object()
        .cloned()
        .expect("metadata must be a JSON object")
}

/// A new element with this metadata and content.
pub fn element(metadata: Value, content: &str) -> ElementData {
    ElementData::new(meta(metadata), Some(content.to_owned()))
}

/// An event creating `element`, on the element's stream, with a fresh event id.
pub fn created(element: ElementData) -> NewEvent {
    NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
}

/// An event creating a fresh element with this metadata.
pub fn new_event(metadata: Value) -> NewEvent {
    created(element(metadata, "content"))
}

/// An event no projection reflects (an agent's own record) on `stream`.
pub fn on_stream(stream: &str, data: Value) -> NewEvent {
    let agent = AgentId::new("test", "notes");
    let mut event = NewEvent::new(SystemEvent::AgentRecorded { agent, data }, Uuid::now_v7());
    event.stream = stream.to_owned();
    event
}

/// Opens (or creates) the store of `home` with the default options.
pub fn open(home: &Path) -> SqliteStore {
    SqliteStore::open(home, SqliteOptions::default())
        .unwrap_or_else(|e| panic!("cannot open the store in {}: {e}", home.display()))
}

/// Every record of the log, in order.
pub fn log(store: &SqliteStore) -> Vec<EventEnvelope> {
    let mut out = Vec::new();
    store
        .scan(1, |e| {
            out.push(e);
            true
        })
        .expect("scan the log");
    out
}

/// The element a stored `element_created` record creates.
pub fn element_of(record: &EventEnvelope) -> ElementData {
    match record.decode().expect("decode a stored payload") {
        SystemEvent::ElementCreated { element } => element,
        other => panic!(
            "seq {} is not an element_created event: {other:?}",
            record.seq
        ),
    }
}

/// The differences between a fresh replay of the log (chain checked) and the
/// store's projections; empty when they agree.
pub async fn replay_vs_projection(store: &SqliteStore) -> Vec<String> {
    let (replayed, _) = store.replay(true).expect("replay the log");
    let projected: State = store.projected_state().await.expect("projected state");
    replayed.diff(&projected)
}

/// Runs a future to completion on a fresh runtime (for synchronous tests).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Re-executes this test binary so that it runs only the test `role`, with
/// `envs` set (the role test does its work only when they are).
pub fn spawn_role(role: &str, envs: &[(&str, &OsStr)], stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(std::env::current_exe().expect("path of the test binary"))
        .args(["--exact", role, "--nocapture", "--test-threads=1"])
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot re-execute the test binary as {role}: {e}"))
}

/// A file's text, or a note saying it could not be read (for failure messages).
pub fn text_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{}: {e}>", path.display()))
}

/// Opens `lion.db` of `home` directly, bypassing the store.
pub fn raw_db(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(db_path(home)).expect("open lion.db with rusqlite")
}

/// Opens `lion.db` directly and drops the triggers that keep `events`
/// append-only, as a tamperer with write access would.
pub fn raw_db_without_triggers(home: &Path) -> rusqlite::Connection {
    let conn = raw_db(home);
    conn.execute_batch(
        "DROP TRIGGER events_are_append_only_update;
         DROP TRIGGER events_are_append_only_delete;",
    )
    .expect("drop the append-only triggers");
    conn
}

/// Path of a home's database.
pub fn db_path(home: &Path) -> PathBuf {
    home.join(agentic_store::sqlite::DB_FILE)
}
