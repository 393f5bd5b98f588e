//! What only the PostgreSQL store shows (the contract every adapter keeps
//! is `store_contract.rs`):
//!
//! - readers never skip: appenders on three store instances (three kernels,
//!   as far as the database can tell) while a reader on a fourth follows
//!   the log by sequence — it sees every acknowledged event exactly once,
//!   in order, with no staleness timeout anywhere;
//! - the database restarting under load (an immediate, crash-like stop):
//!   appenders reconnect and retry, nothing acknowledged is lost, nothing
//!   is stored twice, and the log verifies as one chain;
//! - a dead database gives a clear error, not a hung caller;
//! - a database that is not a lion store is refused;
//! - a kernel that guessed the head it last left commits on the head
//!   another kernel moved meanwhile;
//! - stores of the previous layouts are moved to this one;
//! - a kernel taking turns with another answers only once its turn is
//!   durable; a turn not known durable is hidden from the log's readers,
//!   and a command's read that saw it makes it durable first; a turn whose
//!   writer died before its flush still reaches followers; retries and
//!   refusals resting on a pending turn are answered once it is durable.

mod postgres_cluster;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentic_core::chain::ChainVerifier;
use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, StoreError, SystemEvent};
use agentic_store::{PostgresOptions, PostgresStore};
use serde_json::json;
use uuid::Uuid;

/// A failure guard for waits that should end at once; never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

async fn open(url: &str) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::open(url, PostgresOptions::default())
            .await
            .expect("open"),
    )
}

fn new_event(appender: usize, n: usize) -> NewEvent {
    let metadata = json!({ "appender": appender, "n": n });
    let element = ElementData::new(metadata.as_object().cloned().unwrap_or_default(), None);
    NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
}

/// Checks the whole log's chain; returns its event ids in order.
async fn verified_ids(store: &dyn EventStore) -> Vec<Uuid> {
    let mut verifier = ChainVerifier::new();
    let mut ids = Vec::new();
    loop {
        let batch = store
            .read_from(ids.len() as u64 + 1, 2000)
            .await
            .expect("read");
        if batch.is_empty() {
            break;
        }
        for record in batch {
            verifier.check(&record).expect("the chain verifies");
            ids.push(record.event_id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_three_appending_kernels_sees_every_event_once_in_order() {
    let url = postgres_cluster::cluster().database("never_skip").await;
    let kernels = [open(&url).await, open(&url).await, open(&url).await];
    let reader = open(&url).await;
    const APPENDERS: usize = 48;
    const EACH: usize = 50;
    let total = (APPENDERS * EACH) as u64;
    let follower = tokio::spawn(async move {
        let mut subscription = reader.subscribe(1);
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            let event = tokio::time::timeout(GUARD, subscription.next())
                .await
                .expect("the reader waited for an event that never came")
                .expect("subscription");
            assert_eq!(event.seq, seen.len() as u64 + 1, "the reader skipped");
            seen.push(event.event_id);
        }
        seen
    });
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|i| {
            let store = kernels[i % 3].clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..EACH {
                    // Single events and small batches, as kernels append.
                    let batch: Vec<NewEvent> =
                        (0..1 + n % 3).map(|k| new_event(i, n * 10 + k)).collect();
                    ids.extend(batch.iter().map(|e| e.event_id));
                    store
                        .append(batch, ExpectedVersion::Any)
                        .await
                        .expect("append");
                }
                ids
            })
        })
        .collect();
    let mut acknowledged = HashSet::new();
    for appender in appenders {
        acknowledged.extend(appender.await.expect("join"));
    }
    // The follower stops at `total` events; the batches made more: it
    // checks the first `total`, the log is checked whole below.
    let seen = follower.await.expect("follower");
    let log = verified_ids(kernels[0].as_ref()).await;
    assert_eq!(&log[..seen.len()], &seen[..]);
    assert_eq!(log.len(), acknowledged.len());
    assert_eq!(log.iter().copied().collect::<HashSet<_>>(), acknowledged);
    let commits: u64 = kernels
        .iter()
        .map(|k| {
            k.commit_stats()
                .commits
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(
        commits < acknowledged.len() as u64,
        "appends were grouped: {commits} commits for {} events",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarting_under_load_loses_nothing_acknowledged() {
    // Its own cluster: the shared one serves the tests running beside it.
    let cluster = Arc::new(postgres_cluster::private("restart"));
    let url = cluster.database("restart").await;
    let stores = [open(&url).await, open(&url).await];
    // Appenders run until the restart is over and they have appended ten
    // more each, so appends straddle the restart.
    let (restarted_tx, restarted) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let appenders: Vec<_> = (0..16)
        .map(|i| {
            let store = stores[i % 2].clone();
            let started = started_tx.clone();
            let restarted = restarted.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut after_restart = 0;
                for n in 0.. {
                    let event = new_event(i, n);
                    let id = event.event_id;
                    store
                        .append(vec![event], ExpectedVersion::Any)
                        .await
                        .expect("an append across the restart");
                    acknowledged.push(id);
                    if n == 10 {
                        let _ = started.send(());
                    }
                    if *restarted.borrow() {
                        after_restart += 1;
                        if after_restart == 10 {
                            break;
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    drop(started_tx);
    for _ in 0..16 {
        started.recv().await.expect("an appender started");
    }
    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.crash_and_restart())
        .await
        .expect("restart");
    restarted_tx.send_replace(true);
    let mut acknowledged = Vec::new();
    for appender in appenders {
        acknowledged.extend(
            tokio::time::timeout(GUARD, appender)
                .await
                .expect("appender hung")
                .expect("join"),
        );
    }
    let log = verified_ids(stores[0].as_ref()).await;
    assert_eq!(
        log.len(),
        acknowledged.len(),
        "every acknowledged event once"
    );
    let log: HashSet<Uuid> = log.into_iter().collect();
    assert!(acknowledged.iter().all(|id| log.contains(id)));
    // Readers and waiters work again too.
    let head = stores[1].head().await.expect("head after the restart");
    assert_eq!(head.seq, acknowledged.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://lion@127.0.0.1:{port}/nowhere");
    let options = PostgresOptions {
        connect_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let error = match PostgresStore::open(&url, options).await {
        Ok(_) => panic!("opened a store where nothing listens"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/nowhere")),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_foreign_lion_schema_is_refused_untouched() {
    let url = postgres_cluster::cluster().database("foreign").await;
    let client = admin(&url).await;
    client
        .batch_execute(
            "CREATE SCHEMA lion; CREATE TABLE lion.mine (x int); INSERT INTO lion.mine VALUES (7);",
        )
        .await
        .expect("a foreign schema");
    let error = match PostgresStore::open(&url, PostgresOptions::default()).await {
        Ok(_) => panic!("opened a foreign schema as a store"),
        Err(e) => e,
    };
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    let kept: i32 = client
        .query_one("SELECT x FROM lion.mine", &[])
        .await
        .expect("still there")
        .get(0);
    assert_eq!(kept, 7);
}

/// A plain connection to the database at `url`, beside the store's.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Turns a layout-3 store back into layout 1, as its lion left it, with
/// the element rows `fill` (SQL) inserts.
async fn as_layout_1(client: &tokio_postgres::Client, fill: &str) {
    client
        .batch_execute(&format!(
            "DROP INDEX lion.events_element_creations; DROP FUNCTION lion.move_head; \
             DROP TABLE lion.flushes; \
             CREATE TABLE lion.elements (seq bigint PRIMARY KEY, id uuid NOT NULL UNIQUE); \
             {fill}; UPDATE lion.store SET schema_version = 1;"
        ))
        .await
        .expect("layout 1");
}

/// The store's layout version, and whether it has a `lion.elements` table.
async fn layout(client: &tokio_postgres::Client) -> (i32, bool) {
    let row = client
        .query_one(
            "SELECT schema_version, to_regclass('lion.elements') IS NOT NULL FROM lion.store",
            &[],
        )
        .await
        .expect("layout");
    (row.get(0), row.get(1))
}

/// An event on a stream of its own choosing, as the contract suite makes.
fn on_stream(stream: &str) -> NewEvent {
    let agent = agentic_core::AgentId::new("test", "notes");
    let data = json!({ "stream": stream });
    let mut event = NewEvent::new(SystemEvent::AgentRecorded { agent, data }, Uuid::now_v7());
    event.stream = stream.to_owned();
    event
}

/// A kernel that committed the head last admits its next group against
/// that head without locking it first; when another kernel has moved it
/// meanwhile, the commit is refused as it moves the head and is made again
/// holding the lock. Expectations are judged on the log as it is, and the
/// chain stays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_whose_last_head_was_moved_by_another_commits_on_the_new_head() {
    let url = postgres_cluster::cluster().database("moved_head").await;
    let (a, b) = (open(&url).await, open(&url).await);
    let first = |r: Result<agentic_core::AppendReceipt, StoreError>| r.map(|r| r.first_seq);
    let append = |store: &Arc<PostgresStore>, expected| {
        let store = store.clone();
        async move { first(store.append(vec![on_stream("orders")], expected).await) }
    };
    assert_eq!(append(&a, ExpectedVersion::NoStream).await, Ok(1));
    assert_eq!(append(&a, ExpectedVersion::Exact(1)).await, Ok(2));
    assert_eq!(append(&b, ExpectedVersion::Exact(2)).await, Ok(3));
    // `a` last left the head at 2: its guess is wrong twice over.
    assert_eq!(
        append(&a, ExpectedVersion::Exact(2)).await,
        Err(StoreError::WrongExpectedVersion {
            stream: "orders".into(),
            expected: ExpectedVersion::Exact(2),
            actual: 3
        })
    );
    assert_eq!(append(&a, ExpectedVersion::Exact(3)).await, Ok(4));
    assert_eq!(append(&b, ExpectedVersion::Exact(4)).await, Ok(5));
    let element = new_event(0, 0);
    assert_eq!(
        first(a.append(vec![element], ExpectedVersion::Any).await),
        Ok(6)
    );
    assert_eq!(verified_ids(a.as_ref()).await.len(), 6);
    let versions: Vec<u64> = a
        .read_from(1, 10)
        .await
        .expect("read")
        .iter()
        .filter(|r| r.stream == "orders")
        .map(|r| r.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

/// Regression guard for groups admitted while the one before commits: among
/// many appenders of new elements on one kernel, some send again a batch
/// already acknowledged and some create an element another created, which
/// fails the group they land in (and throws away what was admitted behind
/// it). Every retry is answered with its first positions, every second
/// creation refused, every other append stored once where its answer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_second_creations_among_pipelined_groups_are_answered_right() {
    let url = postgres_cluster::cluster().database("ahead").await;
    let store = open(&url).await;
    const APPENDERS: usize = 32;
    const EACH: usize = 40;
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut stored = Vec::new();
                let mut earlier: Option<(Vec<NewEvent>, u64)> = None;
                for n in 0..EACH {
                    match (n % 7, &earlier) {
                        (3, Some((batch, first))) => {
                            let again = store
                                .append(batch.clone(), ExpectedVersion::Any)
                                .await
                                .expect("a retry is answered");
                            assert_eq!(again.first_seq, *first, "a retry's positions");
                            assert!(again.deduplicated);
                        }
                        (5, Some((batch, _))) => {
                            // The same element, under a new event id.
                            let SystemEvent::ElementCreated { element } = &batch[0].event else {
                                unreachable!()
                            };
                            let twice = NewEvent::new(
                                SystemEvent::ElementCreated {
                                    element: element.clone(),
                                },
                                Uuid::now_v7(),
                            );
                            let refused = store.append(vec![twice], ExpectedVersion::Any).await;
                            assert!(
                                matches!(refused, Err(StoreError::Rejected(_))),
                                "{refused:?}"
                            );
                        }
                        _ => {
                            let batch = vec![new_event(i, n)];
                            let receipt = store
                                .append(batch.clone(), ExpectedVersion::Any)
                                .await
                                .expect("append");
                            assert!(!receipt.deduplicated);
                            stored.push((batch[0].event_id, receipt.first_seq));
                            earlier = Some((batch, receipt.first_seq));
                        }
                    }
                }
                stored
            })
        })
        .collect();
    let mut stored = Vec::new();
    for appender in appenders {
        stored.extend(appender.await.expect("join"));
    }
    let log = verified_ids(store.as_ref()).await;
    assert_eq!(log.len(), stored.len(), "each append stored once");
    for (id, seq) in stored {
        assert_eq!(log[seq as usize - 1], id, "stored where its answer says");
    }
}

/// A store made with layout 1 (elements in a table of their own) opens as
/// layout 3: the table is gone, and its elements are found and listed
/// from the log as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_store_is_moved_to_layout_3_keeping_its_elements() {
    let url = postgres_cluster::cluster().database("layout_1").await;
    let store = open(&url).await;
    let event = new_event(0, 0);
    let SystemEvent::ElementCreated { element } = &event.event else {
        unreachable!()
    };
    let id = element.id;
    store
        .append(vec![event], ExpectedVersion::Any)
        .await
        .expect("append");
    drop(store);
    let client = admin(&url).await;
    as_layout_1(
        &client,
        "INSERT INTO lion.elements SELECT seq, substr(stream, 9)::uuid FROM lion.events",
    )
    .await;
    let store = open(&url).await;
    assert_eq!(
        store.element(id).await.expect("read").map(|e| e.id),
        Some(id)
    );
    let page = store
        .elements(agentic_core::Cursor::START, 10)
        .await
        .expect("list");
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), [id]);
    assert_eq!(layout(&client).await, (3, false));
}

/// A layout-1 store holding an element its table found but layout 2 would
/// not (its creation off its own stream, as an old log's import could leave
/// it) is refused with a message saying so, and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_store_whose_elements_would_be_lost_is_refused_untouched() {
    let url = postgres_cluster::cluster().database("layout_1_off").await;
    let store = open(&url).await;
    store
        .append(vec![on_stream("misc")], ExpectedVersion::Any)
        .await
        .expect("append");
    drop(store);
    let client = admin(&url).await;
    as_layout_1(
        &client,
        "INSERT INTO lion.elements VALUES (1, gen_random_uuid())",
    )
    .await;
    let error = match PostgresStore::open(&url, PostgresOptions::default()).await {
        Ok(_) => panic!("moved a store whose elements it would lose"),
        Err(e) => e,
    };
    assert!(
        error
            .to_string()
            .contains("the first event of its own stream"),
        "{error}"
    );
    assert_eq!(layout(&client).await, (1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_refuses_updates_deletes_and_truncation() {
    let url = postgres_cluster::cluster().database("append_only").await;
    let store = open(&url).await;
    store
        .append(vec![new_event(0, 0)], ExpectedVersion::Any)
        .await
        .expect("append");
    let client = admin(&url).await;
    for statement in [
        "UPDATE lion.events SET payload = '\\x00'",
        "DELETE FROM lion.events",
        "TRUNCATE lion.events",
    ] {
        let error = client.batch_execute(statement).await.expect_err(statement);
        assert!(
            error.to_string().contains("append-only")
                || error
                    .as_db_error()
                    .is_some_and(|e| e.message().contains("append-only")),
            "{statement}: {error}"
        );
    }
    assert_eq!(verified_ids(store.as_ref()).await.len(), 1);
}

/// Regression (review): projection writes were sent after the COMMIT of
/// their append (outside its transaction and the head lock), so two
/// instances racing a respawn against prompts refused valid prompts and
/// left an agent's message count wrong. Every write is in the append's
/// transaction now: the projections match a replay, counts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_respawns_and_prompts_keep_the_agent_projection_whole() {
    use agentic_core::llm::{AgentSpec, ChatMessage, Role};
    let url = postgres_cluster::cluster().database("agent_race").await;
    let (a, b) = (open(&url).await, open(&url).await);
    let spawn = || {
        NewEvent::new(
            SystemEvent::AgentSpawned {
                name: "ada".into(),
                spec: AgentSpec::default(),
            },
            Uuid::now_v7(),
        )
    };
    a.append(vec![spawn()], ExpectedVersion::Any)
        .await
        .expect("spawn");
    let respawner = tokio::spawn(async move {
        for _ in 0..150 {
            let stop = NewEvent::new(
                SystemEvent::AgentStopped { name: "ada".into() },
                Uuid::now_v7(),
            );
            match a.append(vec![stop, spawn()], ExpectedVersion::Any).await {
                Ok(_) | Err(StoreError::Rejected(_)) => {}
                Err(e) => panic!("respawn: {e}"),
            }
        }
        a
    });
    for i in 0..150 {
        let prompt = NewEvent::new(
            SystemEvent::AgentPrompted {
                name: "ada".into(),
                run_id: Uuid::now_v7(),
                message: ChatMessage::new(Role::User, format!("prompt {i}")),
            },
            Uuid::now_v7(),
        );
        match b.append(vec![prompt], ExpectedVersion::Any).await {
            Ok(_) | Err(StoreError::Rejected(_)) => {}
            Err(e) => panic!("prompt {i}: {e}"),
        }
    }
    let a = respawner.await.expect("respawner");
    let (replayed, _) = a.replay().await.expect("replay");
    let projected = a.projected_state().await.expect("projected state");
    assert!(
        replayed.diff(&projected).is_empty(),
        "{:?}",
        replayed.diff(&projected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_and_the_server_verified_when_asked() {
    let cluster = postgres_cluster::private("tls");
    let ca = cluster.enable_tls().await;
    let url = cluster.database("tls").await;
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let store = PostgresStore::open(&verified, PostgresOptions::default())
        .await
        .expect("open over TLS");
    let element = ElementData::new(serde_json::Map::new(), None);
    store
        .append(
            vec![NewEvent::new(
                SystemEvent::ElementCreated { element },
                Uuid::now_v7(),
            )],
            ExpectedVersion::Any,
        )
        .await
        .expect("append over TLS");
    // The server says lion's connections are encrypted.
    let client = admin(&url).await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'lion'",
            &[],
        )
        .await
        .expect("ask the server");
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        all > 0 && encrypted == all,
        "{encrypted} of {all} connections encrypted"
    );
    // Without the authority the certificate is refused, in one line.
    let error = PostgresStore::open(
        &format!("{url}?sslmode=require"),
        PostgresOptions::default(),
    )
    .await
    .err()
    .expect("an unverifiable server is refused");
    let message = error.to_string();
    assert!(message.contains("certificate"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    // Asked for, TLS is required: a server without it is refused.
    let plain = postgres_cluster::cluster().database("tls_plain").await;
    let with = format!("{plain}?sslmode=require&sslrootcert={}", ca.display());
    let refused = PostgresStore::open(&with, PostgresOptions::default()).await;
    assert!(refused.is_err(), "a server without TLS was taken");
}

/// Opens a store as a kernel (`settle`: false) or a command does, whose
/// watch for turns abandoned before their flush looks every `abandoned`.
async fn open_with(url: &str, settle: bool, abandoned: Duration) -> Arc<PostgresStore> {
    let options = PostgresOptions {
        settle_reads: settle,
        abandoned_after: abandoned,
        ..PostgresOptions::default()
    };
    Arc::new(PostgresStore::open(url, options).await.expect("open"))
}

/// A log of three element creations, seqs 2 and 3 then marked as a writer
/// leaves them when it dies after committing them without waiting for the
/// flush, and before its own flush; returns the first record and the
/// events appended.
async fn with_a_pending_turn(url: &str) -> (agentic_core::EventEnvelope, Vec<NewEvent>) {
    let writer = open(url).await;
    let events: Vec<NewEvent> = (0..3).map(|n| new_event(0, n)).collect();
    for event in &events {
        writer
            .append(vec![event.clone()], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    let first = writer.read_from(1, 1).await.expect("read").remove(0);
    drop(writer);
    admin(url)
        .await
        .execute(
            "INSERT INTO lion.flushes VALUES (gen_random_uuid(), 1, 3, 0)",
            &[],
        )
        .await
        .expect("pending turn");
    (first, events)
}

/// The id of the element `event` creates.
fn element_id(event: &NewEvent) -> Uuid {
    match &event.event {
        SystemEvent::ElementCreated { element } => element.id,
        _ => unreachable!("an element's creation"),
    }
}

/// The greatest head any flush recorded durable.
async fn flushed(url: &str) -> i64 {
    admin(url)
        .await
        .query_one("SELECT coalesce(max(flushed), 0) FROM lion.flushes", &[])
        .await
        .expect("flushed")
        .get(0)
}

/// Waits (within [`GUARD`]) until `store` knows of a commit after `seq`:
/// `what` names it in the failure.
async fn heard(store: &PostgresStore, seq: u64, what: &str) {
    tokio::time::timeout(GUARD, store.wait_for_events(seq))
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
        .expect("wait");
}

fn seqs(events: Vec<agentic_core::EventEnvelope>) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// A kernel that finds the head moved by another takes turns, committing
/// without waiting for its flush while it holds the head lock, then
/// flushing on its own: it answers only once that flush has committed. With
/// its flush refused (a check on `lion.flushes`), its append fails and no
/// reader sees the turn; once flushes pass again, the append sent again is
/// found stored and answered, and every reader sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_taken_beside_another_kernel_is_answered_once_durable() {
    let url = postgres_cluster::cluster().database("relaxed_turns").await;
    let never = Duration::from_secs(3600);
    let (a, b) = (open(&url).await, open(&url).await);
    let reader = open_with(&url, true, never).await;
    let client = admin(&url).await;
    for (i, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        let receipt = store
            .append(vec![new_event(i, 0), new_event(i, 1)], ExpectedVersion::Any)
            .await
            .expect("append");
        assert!(reader.head().await.expect("head").seq >= receipt.last_seq);
    }
    // `a` found the head moved by `b` on its second append: it takes turns,
    // relaxed, from then on.
    client
        .batch_execute("ALTER TABLE lion.flushes ADD CONSTRAINT held CHECK (flushed < 9)")
        .await
        .expect("hold the flushes");
    let third = vec![new_event(4, 0), new_event(4, 1)];
    let refused = a.append(third.clone(), ExpectedVersion::Any).await;
    assert!(refused.is_err(), "answered without its flush: {refused:?}");
    let stored: i64 = client
        .query_one("SELECT count(*) FROM lion.events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 10, "the turn itself committed");
    assert_eq!(
        reader.head().await.expect("head").seq,
        8,
        "but no reader sees it"
    );
    assert_eq!(
        seqs(reader.read_from(9, 10).await.expect("read")),
        [0u64; 0]
    );
    // Sent again while flushes are still refused: found stored, but not
    // answered as stored, since it is not durable.
    let again = a.append(third.clone(), ExpectedVersion::Any).await;
    assert!(
        again.is_err(),
        "answered as stored without a flush: {again:?}"
    );
    client
        .batch_execute("ALTER TABLE lion.flushes DROP CONSTRAINT held")
        .await
        .expect("let the flushes through");
    let receipt = a.append(third, ExpectedVersion::Any).await.expect("again");
    assert_eq!((receipt.first_seq, receipt.deduplicated), (9, true));
    assert!(flushed(&url).await >= 10);
    assert_eq!(reader.head().await.expect("head").seq, 10);
    assert_eq!(verified_ids(reader.as_ref()).await.len(), 10);
}

/// A turn visible in the database but not known durable is hidden from the
/// log's readers (the head, reads by seq); a kernel reads projections past
/// it without flushing; a command's read of a stream or a projection that
/// saw it makes it durable before answering, after which the log reads on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_not_known_durable_is_hidden_from_readers_until_flushed() {
    let url = postgres_cluster::cluster().database("pending_turn").await;
    let (first, events) = with_a_pending_turn(&url).await;
    let ids: Vec<Uuid> = events.iter().map(element_id).collect();
    let never = Duration::from_secs(3600);
    let kernel = open_with(&url, false, never).await;
    assert_eq!(
        kernel.element(ids[2]).await.expect("read").map(|e| e.id),
        Some(ids[2])
    );
    assert_eq!(
        seqs(kernel.read_from(2, 10).await.expect("read")),
        [0u64; 0]
    );
    assert_eq!(flushed(&url).await, 0, "a kernel's read flushes nothing");
    let command = open_with(&url, true, never).await;
    let head = command.head().await.expect("head");
    assert_eq!((head.seq, head.hash), (1, first.hash), "the durable head");
    assert_eq!(seqs(command.read_from(1, 10).await.expect("read")), [1]);
    assert_eq!(
        seqs(command.read_from(2, 10).await.expect("read")),
        [0u64; 0]
    );
    // The stream's read saw seq 3: it is made durable before the answer.
    let stream = format!("element:{}", ids[2]);
    assert_eq!(
        seqs(command.read_stream(&stream, 1, 10).await.expect("read")),
        [3]
    );
    assert_eq!(flushed(&url).await, 3);
    assert_eq!(seqs(command.read_from(2, 10).await.expect("read")), [2, 3]);
    assert_eq!(command.head().await.expect("head").seq, 3);
    assert_eq!(seqs(kernel.read_from(2, 10).await.expect("read")), [2, 3]);
}

/// A turn whose writer died before its flush is flushed for by an open
/// store that finds it still pending a while later: a follower of the log
/// gets it with nothing else committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_abandoned_before_its_flush_reaches_followers() {
    let url = postgres_cluster::cluster().database("abandoned_turn").await;
    with_a_pending_turn(&url).await;
    let kernel = open_with(&url, false, Duration::from_millis(50)).await;
    let mut log = kernel.clone().subscribe(2);
    let next = tokio::time::timeout(GUARD, log.next())
        .await
        .expect("the abandoned turn reaches the follower")
        .expect("read");
    assert_eq!(next.seq, 2);
    assert!(flushed(&url).await >= 3);
}

/// A follower told of commits past a turn still pending (a commit that
/// waited for its flush, after a turn whose writer has not flushed) makes
/// the log durable up to them and reads on. Its listener is known to
/// listen before the turn is marked pending, so it learns of the commits by
/// notification, not from the durable head it reads when it connects; no
/// store here looks for abandoned turns, so only the follower's own read
/// can flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_told_of_commits_past_a_pending_turn_flushes_and_reads_on() {
    let url = postgres_cluster::cluster().database("told_past").await;
    let never = Duration::from_secs(3600);
    let follower = open_with(&url, false, never).await;
    let writer = open_with(&url, false, never).await;
    for n in 0..3 {
        writer
            .append(vec![new_event(0, n)], ExpectedVersion::Any)
            .await
            .expect("append");
        heard(&follower, n as u64, "the follower's listener hears of it").await;
    }
    admin(&url)
        .await
        .execute(
            "INSERT INTO lion.flushes VALUES (gen_random_uuid(), 1, 3, 0)",
            &[],
        )
        .await
        .expect("pending turn");
    assert_eq!(follower.head().await.expect("head").seq, 1);
    let mut log = follower.clone().subscribe(2);
    let mut got = Vec::new();
    while got.len() < 2 {
        let next = tokio::time::timeout(GUARD, log.next())
            .await
            .expect("the follower reads on")
            .expect("read");
        got.push(next.seq);
    }
    assert_eq!(got, [2, 3]);
    assert!(flushed(&url).await >= 3);
}

/// A writer whose turn was flushed but never announced (it died between
/// the two, or its announcement was lost) told nobody: a follower that had
/// heard of every head before it hears of it from its store's next look at
/// the log. Checks on `lion.flushes` keep every store from flushing (the
/// follower's look included), so only that look can wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_never_announced_reaches_followers() {
    let url = postgres_cluster::cluster().database("unannounced").await;
    let follower = open_with(&url, false, Duration::from_millis(50)).await;
    let (a, b) = (open(&url).await, open(&url).await);
    for (i, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        store
            .append(vec![new_event(i, 0), new_event(i, 1)], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    // The follower knows of the heads (by its listener, or its look).
    heard(&follower, 7, "the follower hears of the heads").await;
    let client = admin(&url).await;
    client
        .batch_execute("ALTER TABLE lion.flushes ADD CONSTRAINT held CHECK (flushed < 9)")
        .await
        .expect("hold the flushes");
    // `a` takes turns: its turn (9, 10) commits, its flush is refused.
    let refused = a
        .append(vec![new_event(4, 0), new_event(4, 1)], ExpectedVersion::Any)
        .await;
    assert!(refused.is_err(), "answered without its flush: {refused:?}");
    let dead: Uuid = client
        .query_one("SELECT writer FROM lion.flushes WHERE turn = 10", &[])
        .await
        .expect("the turn's row")
        .get(0);
    drop(a);
    // Only the flush below passes: no store's flush can announce it.
    client
        .batch_execute(&format!(
            "ALTER TABLE lion.flushes DROP CONSTRAINT held, ADD CONSTRAINT only_this \
             CHECK (writer = '{dead}' AND from_seq = 10) NOT VALID"
        ))
        .await
        .expect("hold other flushes");
    client
        .execute(
            "UPDATE lion.flushes SET from_seq = 10, flushed = 10 WHERE writer = $1",
            &[&dead],
        )
        .await
        .expect("the flush, with no announcement");
    // What a follower caught up at 8 waits on.
    heard(&follower, 8, "the follower hears of the flush").await;
    assert_eq!(
        seqs(follower.read_from(9, 10).await.expect("read")),
        [9, 10]
    );
}

/// Any role that can connect may notify `lion_log`: a follower woken by a
/// head the log does not reach reads nothing (no error), takes the
/// announcement back (it waits again), and reads on at the next real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_announcement_is_taken_back() {
    use futures_util::FutureExt;
    let url = postgres_cluster::cluster().database("false_news").await;
    let never = Duration::from_secs(3600);
    let follower = open_with(&url, false, never).await;
    let other = open_with(&url, false, never).await;
    other
        .append(vec![new_event(0, 0)], ExpectedVersion::Any)
        .await
        .expect("append");
    // The follower's listener is up: it heard of that commit (from the
    // commit's notification, or the head it read once listening).
    heard(&follower, 0, "the follower hears of the commit").await;
    admin(&url)
        .await
        .batch_execute("NOTIFY lion_log, '999999'")
        .await
        .expect("notify");
    heard(&follower, 1, "the false announcement arrives").await;
    assert_eq!(
        seqs(follower.read_from(2, 10).await.expect("no error")),
        [0u64; 0]
    );
    assert!(
        follower.wait_for_events(1).now_or_never().is_none(),
        "the false announcement still stands"
    );
    other
        .append(vec![new_event(1, 0)], ExpectedVersion::Any)
        .await
        .expect("append");
    heard(&follower, 1, "the real announcement arrives").await;
    assert_eq!(seqs(follower.read_from(2, 10).await.expect("read")), [2]);
}

/// An append sent again whose events a pending turn holds is answered as
/// stored only once that turn is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_found_in_a_pending_turn_is_answered_once_durable() {
    let url = postgres_cluster::cluster().database("retry_pending").await;
    let (_, events) = with_a_pending_turn(&url).await;
    let never = Duration::from_secs(3600);
    let store = open_with(&url, false, never).await;
    let receipt = store
        .append(vec![events[2].clone()], ExpectedVersion::Any)
        .await
        .expect("append");
    assert_eq!((receipt.first_seq, receipt.deduplicated), (3, true));
    assert!(flushed(&url).await >= 3, "flushed before the answer");
}

/// The durable frontier never falls below the greatest head a flush
/// recorded, even where a pending row starts before it (a writer whose own
/// flush failed keeps its previous turn's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_frontier_is_never_below_a_flushed_head() {
    let url = postgres_cluster::cluster().database("frontier_floor").await;
    with_a_pending_turn(&url).await;
    admin(&url)
        .await
        .execute(
            "INSERT INTO lion.flushes VALUES (gen_random_uuid(), 0, 0, 2)",
            &[],
        )
        .await
        .expect("a flushed head");
    let never = Duration::from_secs(3600);
    let reader = open_with(&url, false, never).await;
    assert_eq!(reader.head().await.expect("head").seq, 2);
    assert_eq!(seqs(reader.read_from(1, 10).await.expect("read")), [1, 2]);
}

/// An append refused on what a pending turn holds (here, an element that
/// turn created, created again) is answered once that turn is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_resting_on_a_pending_turn_is_answered_once_durable() {
    let url = postgres_cluster::cluster()
        .database("refusal_pending")
        .await;
    let (_, events) = with_a_pending_turn(&url).await;
    let never = Duration::from_secs(3600);
    let store = open_with(&url, false, never).await;
    let mut again = events[2].clone();
    again.event_id = Uuid::now_v7();
    let refused = store.append(vec![again], ExpectedVersion::Any).await;
    assert!(
        matches!(refused, Err(StoreError::Rejected(_))),
        "{refused:?}"
    );
    assert!(flushed(&url).await >= 3, "flushed before the answer");
}

/// A store of layout 2 (no `lion.flushes`) opens as layout 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_2_store_is_moved_to_layout_3() {
    let url = postgres_cluster::cluster().database("layout_2").await;
    let store = open(&url).await;
    store
        .append(vec![new_event(0, 0)], ExpectedVersion::Any)
        .await
        .expect("append");
    drop(store);
    let client = admin(&url).await;
    client
        .batch_execute("DROP TABLE lion.flushes; UPDATE lion.store SET schema_version = 2")
        .await
        .expect("layout 2");
    let store = open(&url).await;
    assert_eq!(layout(&client).await, (3, false));
    assert_eq!(store.head().await.expect("head").seq, 1);
    assert_eq!(flushed(&url).await, 0, "the table is there, and empty");
}
