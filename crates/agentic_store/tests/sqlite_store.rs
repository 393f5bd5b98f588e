//! Integration tests of the SQLite event store ([`SqliteStore`]):
//!
//! - what only this adapter does (the contract every adapter keeps is
//!   `store_contract.rs`): retries and refusals inside one busy group
//!   commit, reopening, the `HEAD` file, per-store commit counters, several
//!   openers creating one fresh home, a WAL that starts over under
//!   sustained appends;
//! - durability settings: every connection runs with `synchronous=FULL`;
//! - tamper detection: edited, deleted, truncated and swapped records, an
//!   edited projection, and the append-only triggers;
//! - several processes: two processes appending 10,000 events each to one
//!   home build one gapless chain, and a process SIGKILLed mid-append (50
//!   times) never loses an acknowledged event nor breaks the chain.
//!
//! The multi-process tests re-execute this test binary; the `child_process_role_*`
//! tests are those children's entry points and do nothing unless their
//! environment variable is set.

mod sqlite_store_support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::Duration;

use agentic_core::{
    AppendReceipt, ApplyError, ChainError, ChainHead, EventEnvelope, EventStore, ExpectedVersion,
    NewEvent, StoreError,
};
use agentic_store::{SqliteOptions, SqliteStore};
use serde_json::json;
use uuid::Uuid;

use sqlite_store_support::{
    block_on, created, element, element_of, log, new_event, on_stream, open, raw_db,
    raw_db_without_triggers, replay_vs_projection, spawn_role, text_of,
};

/// Appends `n` single-event appends, one after the other, with content
/// `payload-<i>` (i from 1); returns the log.
async fn append_singles(store: &SqliteStore, n: usize) -> Vec<EventEnvelope> {
    for i in 1..=n {
        let event = created(element(json!({ "n": i }), &format!("payload-{i}")));
        store
            .append(vec![event], ExpectedVersion::Any)
            .await
            .unwrap_or_else(|e| panic!("append {i}: {e}"));
    }
    log(store)
}

/// A home holding `n` events (contents `payload-1`…`payload-n`), whose store
/// has been closed; returns the directory guard, the home and its log.
fn closed_home_with(n: usize) -> (tempfile::TempDir, PathBuf, Vec<EventEnvelope>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let records = block_on(async {
        let store = open(&home);
        append_singles(&store, n).await
    });
    assert_eq!(records.len(), n);
    (dir, home, records)
}

fn seqs(records: &[EventEnvelope]) -> Vec<u64> {
    records.iter().map(|e| e.seq).collect()
}

/// Appends every batch (with no expectation) so that the writer commits them
/// in at most two group commits, and returns each append's outcome in order.
///
/// Another connection holds the database's write lock while every append is
/// handed to the writer (each append future is polled once: that queues its
/// request). The writer can only have taken some first requests before it
/// blocked on the lock; once the lock is released it commits those, then all
/// the rest in one group.
fn append_in_at_most_two_groups(
    home: &Path,
    store: &SqliteStore,
    batches: Vec<Vec<NewEvent>>,
) -> Vec<Result<AppendReceipt, StoreError>> {
    let commits_before = store.commit_stats().commits.load(Ordering::Relaxed);
    let lock = raw_db(home);
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let mut cx = Context::from_waker(Waker::noop());
    let mut pending: Vec<_> = batches
        .into_iter()
        .map(|batch| store.append(batch, ExpectedVersion::Any))
        .collect();
    // Polled here, outside any runtime, so no task budget can make a poll
    // return before its request is queued.
    for append in &mut pending {
        assert!(
            append.as_mut().poll(&mut cx).is_pending(),
            "an append completed while another connection held the write lock"
        );
    }
    lock.execute_batch("ROLLBACK")
        .expect("release the write lock");
    let results = block_on(async {
        let mut out = Vec::with_capacity(pending.len());
        for append in pending {
            out.push(append.await);
        }
        out
    });
    let commits = store.commit_stats().commits.load(Ordering::Relaxed) - commits_before;
    assert!(commits <= 2, "{commits} group commits");
    results
}

// ---------------------------------------------------------------------------
// Adapter contract
// ---------------------------------------------------------------------------

#[test]
fn retries_of_one_batch_in_the_same_group_commit_store_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let batch: Vec<_> = (0..4).map(|i| new_event(json!({ "i": i }))).collect();
    let results = append_in_at_most_two_groups(dir.path(), &store, vec![batch; 8]);
    let mut fresh = 0;
    for result in results {
        let receipt = result.expect("append");
        assert_eq!((receipt.first_seq, receipt.last_seq), (1, 4));
        fresh += usize::from(!receipt.deduplicated);
    }
    assert_eq!(fresh, 1, "exactly one of the retries writes the batch");
    assert_eq!(seqs(&log(&store)), vec![1, 2, 3, 4]);
    assert_eq!(store.commit_stats().events.load(Ordering::Relaxed), 4);
}

#[test]
fn a_refused_batch_does_not_fail_the_unrelated_appends_committed_with_it() {
    const APPENDS: usize = 50;
    const INVALID: usize = 25;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let twice = element(json!({ "twice": true }), "y");
    let bystander = element(json!({ "bystander": true }), "z");
    let batches = (0..APPENDS)
        .map(|i| {
            if i == INVALID {
                // Writes the bystander, then is refused part-way.
                vec![
                    created(bystander.clone()),
                    created(twice.clone()),
                    created(twice.clone()),
                ]
            } else {
                vec![new_event(json!({ "i": i }))]
            }
        })
        .collect();

    let results = append_in_at_most_two_groups(dir.path(), &store, batches);
    let mut acked = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        if i == INVALID {
            assert_eq!(
                result,
                Err(StoreError::Rejected(ApplyError::DuplicateElement(twice.id)))
            );
        } else {
            let r = result.unwrap_or_else(|e| panic!("valid append {i} failed: {e}"));
            assert_eq!((r.first_seq, r.deduplicated), (r.last_seq, false));
            acked.push(r.first_seq);
        }
    }
    acked.sort_unstable();
    let valid = u64::try_from(APPENDS - 1).expect("small");
    assert_eq!(acked, (1..=valid).collect::<Vec<_>>());
    assert_eq!(seqs(&log(&store)), acked);
    assert_eq!(store.verify().expect("verify").events, valid);
    block_on(async {
        let state = store.projected_state().await.expect("state");
        assert!(state.element(bystander.id).is_none());
        assert!(state.element(twice.id).is_none());
        assert!(replay_vs_projection(&store).await.is_empty());
    });
}

/// One group mixing what the writer batches (element creations) with what
/// it writes a row at a time (a task submission, with its projection, and
/// two events on a stream it does not know yet): every event lands, in
/// order, at the right stream versions.
#[test]
fn a_group_mixing_batched_and_row_by_row_requests_stores_them_all() {
    use agentic_core::{SystemEvent, TaskSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let custom = |pair| on_stream("custom:pair", json!({ "pair": pair }));
    let task = NewEvent::new(
        SystemEvent::TaskSubmitted {
            task_id: Uuid::now_v7(),
            spec: TaskSpec::new("echo", json!(1)),
        },
        Uuid::now_v7(),
    );
    let mut batches: Vec<Vec<NewEvent>> = (0..40)
        .map(|i| vec![new_event(json!({ "i": i }))])
        .collect();
    batches.insert(7, vec![task]);
    batches.insert(20, vec![custom(1), custom(2)]);
    let results = append_in_at_most_two_groups(dir.path(), &store, batches);
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "append {i}: {result:?}");
    }
    let records = log(&store);
    assert_eq!(seqs(&records), (1..=43).collect::<Vec<_>>());
    let pair: Vec<u64> = records
        .iter()
        .filter(|e| e.stream == "custom:pair")
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(pair, vec![1, 2]);
    assert_eq!(store.verify().expect("verify").events, 43);
    block_on(async {
        let state = store.projected_state().await.expect("state");
        assert_eq!(state.elements().len(), 40);
        assert_eq!(state.tasks().len(), 1);
        assert!(replay_vs_projection(&store).await.is_empty());
    });
}

#[tokio::test]
async fn reopening_a_store_keeps_every_event_and_continues_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, projected) = {
        let store = open(dir.path());
        store
            .append(
                vec![new_event(json!({ "a": 1 })), new_event(json!({ "a": 2 }))],
                ExpectedVersion::Any,
            )
            .await
            .expect("batch");
        append_singles(&store, 3).await;
        (log(&store), store.projected_state().await.expect("state"))
    };
    assert_eq!(records.len(), 5);

    let store = open(dir.path());
    assert_eq!(log(&store), records);
    let report = store.verify().expect("verify after reopening");
    assert_eq!(report.events, 5);
    let reopened = store.projected_state().await.expect("state");
    assert!(projected.diff(&reopened).is_empty());
    assert_eq!(reopened.elements().len(), 5);

    let receipt = store
        .append(
            vec![new_event(json!({ "after": true }))],
            ExpectedVersion::Any,
        )
        .await
        .expect("append after reopening");
    assert_eq!(receipt.first_seq, 6);
    let newest = log(&store).pop().expect("a record");
    assert_eq!(newest.prev_hash, records[4].hash);
    assert!(replay_vs_projection(&store).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_file_records_the_newest_head_once_the_store_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(vec![new_event(json!({ "i": i }))], ExpectedVersion::Any)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("append");
    }
    let head = store.head().await.expect("head");
    assert_eq!(head.seq, 20);
    drop(Arc::into_inner(store).expect("the only reference"));

    let text = std::fs::read_to_string(dir.path().join(agentic_store::sqlite::HEAD_FILE))
        .expect("HEAD exists");
    assert_eq!(
        ChainHead::parse_line(&text),
        Some(head),
        "HEAD holds {text:?}"
    );
    let reopened = open(dir.path());
    assert_eq!(reopened.recorded_head().expect("read HEAD"), Some(head));
    let report = reopened.verify().expect("verify");
    assert_eq!((report.head, report.recorded_head), (head, Some(head)));
}

#[tokio::test]
async fn commit_stats_count_only_the_events_this_store_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = open(dir.path());
    // Another writer on the same home, as another process would be.
    let theirs = open(dir.path());
    for (store, i) in [(&mine, 1), (&theirs, 2), (&theirs, 3), (&mine, 4)] {
        store
            .append(vec![new_event(json!({ "i": i }))], ExpectedVersion::Any)
            .await
            .expect("append");
    }
    let counted = |s: &SqliteStore| {
        (
            s.commit_stats().commits.load(Ordering::Relaxed),
            s.commit_stats().events.load(Ordering::Relaxed),
        )
    };
    assert_eq!(
        counted(&theirs),
        (2, 2),
        "(commits, events) of the other writer"
    );
    assert_eq!(counted(&mine), (2, 2), "(commits, events) of this writer");
}

/// What a follower takes from memory ([`EventStore::recent`]) is the log
/// as stored, and never skips what another writer committed in between.
#[tokio::test]
async fn records_kept_in_memory_for_followers_are_the_stored_ones_and_skip_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = Arc::new(open(dir.path()));
    // Another writer on the same home, as another process would be.
    let theirs = open(dir.path());
    // Records are kept once a follower has asked for them.
    assert_eq!(mine.recent(1, 10), None);
    assert_eq!(theirs.recent(1, 10), None);
    let e = |i: i32| new_event(json!({ "i": i }));
    let twice = e(2);
    mine.append(vec![e(1), twice.clone()], ExpectedVersion::Any)
        .await
        .expect("append");
    // A retry of a stored batch writes nothing, and adds nothing in memory.
    mine.append(vec![twice], ExpectedVersion::Any)
        .await
        .expect("retry");
    // A refused batch neither.
    let refused = mine
        .append(vec![e(0)], ExpectedVersion::Exact(7))
        .await
        .expect_err("refused");
    assert!(matches!(refused, StoreError::WrongExpectedVersion { .. }));
    let first = log(&mine);
    assert_eq!(first.len(), 2);
    assert_eq!(mine.recent(1, 10), Some(first.clone()));
    assert_eq!(mine.recent(2, 1), Some(first[1..].to_vec()));
    theirs
        .append(vec![e(3), e(4)], ExpectedVersion::Any)
        .await
        .expect("append");
    mine.append(vec![e(5)], ExpectedVersion::Any)
        .await
        .expect("append");
    let stored = log(&mine);
    assert_eq!(stored.len(), 5);
    let seqs = |r: Option<Vec<EventEnvelope>>| r.map(|r| r.iter().map(|e| e.seq).collect());
    // This writer's run started over after the other's records.
    assert_eq!(seqs(mine.recent(1, 10)), None::<Vec<u64>>);
    assert_eq!(seqs(mine.recent(3, 10)), None::<Vec<u64>>, "the other's");
    assert_eq!(mine.recent(5, 10), Some(stored[4..].to_vec()));
    assert_eq!(theirs.recent(3, 10), Some(stored[2..4].to_vec()));
    // A follower of this store sees every record once, in order.
    let mut follower = mine.clone().subscribe(1);
    for want in &stored {
        assert_eq!(&follower.next().await.expect("next"), want);
    }
}

/// A follower caught up with what its own store committed waits without
/// reading the log, yet still takes what another writer commits after
/// that: alone (once its wait's poll ends), or before this store's next
/// commit (which wakes it).
#[tokio::test]
async fn a_follower_caught_up_from_memory_still_takes_another_writers_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = Arc::new(open(dir.path()));
    let theirs = open(dir.path());
    let mut follower = mine.clone().subscribe(1);
    append_one(&mine, 1).await;
    assert_eq!(next_seq(&mut follower).await, 1);
    append_one(&mine, 2).await;
    assert_eq!(
        mine.recent(2, 10).map(|r| r.len()),
        Some(1),
        "kept in memory"
    );
    assert_eq!(next_seq(&mut follower).await, 2);
    // Caught up from memory; the other writer's record is only in the log.
    append_one(&theirs, 3).await;
    assert_eq!(next_seq(&mut follower).await, 3);
    append_one(&mine, 4).await;
    assert_eq!(mine.recent(4, 10).map(|r| r.len()), Some(1));
    assert_eq!(next_seq(&mut follower).await, 4, "from memory again");
    // Caught up from memory and waiting: the other writer commits, then
    // this store.
    let waiting = tokio::spawn(async move {
        let first = next_seq(&mut follower).await;
        (first, next_seq(&mut follower).await)
    });
    append_one(&theirs, 5).await;
    append_one(&mine, 6).await;
    assert_eq!(waiting.await.expect("follower"), (5, 6));
}

/// Appends one event numbered `i` to `store`.
async fn append_one(store: &SqliteStore, i: i32) {
    store
        .append(vec![new_event(json!({ "i": i }))], ExpectedVersion::Any)
        .await
        .expect("append");
}

/// The seq of the follower's next record, failing rather than hanging.
async fn next_seq(follower: &mut agentic_core::store::Subscription) -> u64 {
    tokio::time::timeout(Duration::from_secs(30), follower.next())
        .await
        .expect("the follower took the record")
        .expect("next")
        .seq
}

/// The WAL header's checkpoint sequence number, which SQLite raises each
/// time the WAL starts over from its first frame.
fn wal_restarts(home: &Path) -> u32 {
    let wal = std::fs::read(sqlite_store_support::db_path(home).with_extension("db-wal"))
        .expect("read the WAL");
    u32::from_be_bytes(wal[12..16].try_into().expect("a WAL header"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_appends_the_wal_starts_over_instead_of_growing() {
    const APPENDERS: usize = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        wal_recycle_pages: 64,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path(), options).expect("open"));
    let first = {
        store
            .append(
                vec![new_event(json!({ "first": true }))],
                ExpectedVersion::Any,
            )
            .await
            .expect("append");
        wal_restarts(dir.path())
    };
    // Appenders keep the writer committing back to back (the background
    // checkpoints alone seldom catch up then; the writer's recycling is
    // unit-tested in the checkpoint module). They stop after two restarts,
    // or fail the test once about 12,000 events were written without them.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|task| {
            let (store, done, home) = (store.clone(), done.clone(), dir.path().to_path_buf());
            tokio::spawn(async move {
                let content = "x".repeat(4096); // about a WAL page per event
                let mut appended = 0_u64;
                for i in 0..750 {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let event = created(element(json!({ "task": task, "i": i }), &content));
                    store
                        .append(vec![event], ExpectedVersion::Any)
                        .await
                        .expect("append");
                    appended += 1;
                    if wal_restarts(&home) >= first + 2 {
                        done.store(true, Ordering::Relaxed);
                    }
                }
                appended
            })
        })
        .collect();
    let mut appended = 1;
    for task in tasks {
        appended += task.await.expect("appender");
    }
    assert!(
        wal_restarts(dir.path()) >= first + 2,
        "the WAL never started over twice in {appended} events"
    );
    assert_eq!(store.verify().expect("verify").head.seq, appended);
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(log(&reopened).len() as u64, appended);
}

#[test]
fn several_openers_of_a_fresh_home_at_once_all_succeed() {
    const OPENERS: usize = 6;
    const HOMES: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures: HashMap<String, usize> = HashMap::new();
    for h in 0..HOMES {
        let home = dir.path().join(format!("home-{h}"));
        let barrier = Arc::new(std::sync::Barrier::new(OPENERS));
        let openers: Vec<_> = (0..OPENERS)
            .map(|i| {
                let (home, barrier) = (home.clone(), barrier.clone());
                std::thread::spawn(move || -> Result<(), StoreError> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    barrier.wait();
                    let store = SqliteStore::open(&home, SqliteOptions::default())?;
                    runtime
                        .block_on(store.append(
                            vec![new_event(json!({ "opener": i }))],
                            ExpectedVersion::Any,
                        ))
                        .map(drop)
                })
            })
            .collect();
        let mut opened = 0;
        for opener in openers {
            match opener.join().expect("opener thread") {
                Ok(()) => opened += 1,
                Err(e) => {
                    let what = e.to_string().replace(&home.display().to_string(), "<home>");
                    *failures.entry(what).or_default() += 1;
                }
            }
        }
        let store = open(&home);
        assert_eq!(store.verify().expect("verify").events, opened);
    }
    assert!(
        failures.is_empty(),
        "{} of {} opens of a fresh home failed: {failures:#?}",
        failures.values().sum::<usize>(),
        OPENERS * HOMES
    );
}

// ---------------------------------------------------------------------------
// Durability settings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_runs_with_synchronous_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    append_singles(&store, 10).await;
    // Concurrent reads, so the reader pool holds several connections.
    let reads: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let records = store.read_from(1 + i, 100).await.expect("read");
                let head = store.head().await.expect("head");
                let state = store.projected_state().await.expect("state");
                (records.len(), head.seq, state.elements().len())
            })
        })
        .collect();
    for (i, read) in (0..).zip(reads) {
        assert_eq!(read.await.expect("read task"), (10 - i, 10, 10));
    }
    store.verify().expect("verify");

    let levels = store.synchronous_levels().await.expect("levels");
    assert!(
        levels.len() >= 2,
        "expected the writer and at least one reader, got {levels:?}"
    );
    assert!(
        levels.iter().all(|&l| l == 2),
        "every connection must run with synchronous=FULL (2): {levels:?}"
    );
}

// ---------------------------------------------------------------------------
// Tamper detection
// ---------------------------------------------------------------------------

/// Opens a home to check it, as `lion events verify` does: read-only.
fn open_read_only(home: &Path) -> SqliteStore {
    SqliteStore::open_read_only(home, SqliteOptions::default())
        .unwrap_or_else(|e| panic!("cannot open {} read-only: {e}", home.display()))
}

fn chain_error(store: &SqliteStore) -> ChainError {
    match store.verify() {
        Err(StoreError::Chain(e)) => e,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn the_append_only_triggers_refuse_updates_and_deletes_of_events() {
    let (_dir, home, records) = closed_home_with(5);
    let conn = raw_db(&home);
    let update = conn.execute("UPDATE events SET payload = x'00' WHERE seq = 3", []);
    let delete = conn.execute("DELETE FROM events WHERE seq = 5", []);
    for (what, result) in [("UPDATE", update), ("DELETE", delete)] {
        let err = result.expect_err(&format!("{what} on events must be refused"));
        assert!(err.to_string().contains("append-only"), "{what}: {err}");
    }
    drop(conn);
    let store = open(&home);
    assert_eq!(log(&store), records);
    assert_eq!(store.verify().expect("verify").events, 5);
}

#[test]
fn an_edited_payload_is_reported_as_a_hash_mismatch_at_its_seq() {
    let (_dir, home, records) = closed_home_with(10);
    let conn = raw_db_without_triggers(&home);
    let original = String::from_utf8(records[4].payload.clone()).expect("utf-8 payload");
    let edited = original.replacen("payload-5", "payload-X", 1);
    assert_ne!(edited, original);
    let changed = conn
        .execute(
            "UPDATE events SET payload = ?1 WHERE seq = 5",
            [edited.as_bytes()],
        )
        .expect("edit a payload");
    assert_eq!(changed, 1);
    drop(conn);

    let store = open_read_only(&home);
    assert_eq!(chain_error(&store), ChainError::HashMismatch { seq: 5 });
    assert!(matches!(
        store.replay(true),
        Err(StoreError::Chain(ChainError::HashMismatch { seq: 5 }))
    ));
}

#[test]
fn a_deleted_middle_record_is_reported_as_a_gap() {
    let (_dir, home, _) = closed_home_with(10);
    let conn = raw_db_without_triggers(&home);
    let deleted = conn
        .execute("DELETE FROM events WHERE seq = 5", [])
        .expect("delete");
    assert_eq!(deleted, 1);
    drop(conn);

    let store = open_read_only(&home);
    assert_eq!(
        chain_error(&store),
        ChainError::Gap {
            expected: 5,
            found: 6
        }
    );
}

#[test]
fn deleting_the_newest_records_is_reported_as_truncation_thanks_to_head() {
    let (_dir, home, _) = closed_home_with(10);
    let conn = raw_db_without_triggers(&home);
    let deleted = conn
        .execute("DELETE FROM events WHERE seq > 7", [])
        .expect("delete");
    assert_eq!(deleted, 3);
    drop(conn);

    let store = open_read_only(&home);
    assert_eq!(
        chain_error(&store),
        ChainError::Truncated {
            log_ends_at: 7,
            head_seq: 10
        }
    );
    assert!(matches!(
        store.replay(true),
        Err(StoreError::Chain(ChainError::Truncated {
            log_ends_at: 7,
            head_seq: 10
        }))
    ));
    drop(store);
    // Opening it to write is refused, before anything is written.
    let before = std::fs::read(home.join("lion.db")).expect("read lion.db");
    match SqliteStore::open(&home, SqliteOptions::default()) {
        Err(StoreError::Corrupt { path, reason }) => {
            assert!(path.ends_with("lion.db"), "{path}");
            assert!(reason.contains("ends at seq 7"), "{reason}");
            assert!(reason.contains("records seq 10"), "{reason}");
        }
        Err(e) => panic!("expected the store to be refused as damaged, got {e}"),
        Ok(_) => panic!("a store missing its newest events opened for writing"),
    }
    assert_eq!(std::fs::read(home.join("lion.db")).expect("read"), before);
}

#[test]
fn swapped_records_are_reported_at_the_lower_seq() {
    let (_dir, home, _) = closed_home_with(10);
    let conn = raw_db_without_triggers(&home);
    conn.execute_batch(
        "UPDATE events SET seq = -3 WHERE seq = 3;
         UPDATE events SET seq = 3 WHERE seq = 7;
         UPDATE events SET seq = 7 WHERE seq = -3;",
    )
    .expect("swap seqs 3 and 7");
    drop(conn);

    let store = open_read_only(&home);
    let err = chain_error(&store);
    assert_eq!(err.seq(), 3, "{err}");
}

#[test]
fn an_edited_projection_verifies_but_differs_from_a_replay() {
    let (_dir, home, records) = closed_home_with(10);
    let conn = raw_db_without_triggers(&home);
    let changed = conn
        .execute("UPDATE elements SET content = 'forged' WHERE seq = 4", [])
        .expect("edit the projection");
    assert_eq!(changed, 1);
    drop(conn);

    let store = open_read_only(&home);
    assert_eq!(store.verify().expect("the log itself is intact").events, 10);
    let diff = block_on(replay_vs_projection(&store));
    let forged = element_of(&records[3]).id;
    assert_eq!(diff, vec![format!("element {forged} differs")]);
}

// ---------------------------------------------------------------------------
// Damage found by an open store, and HEAD writes that fail
// ---------------------------------------------------------------------------

/// Known bug (fixed): `read_head` turned a malformed stored hash into zeros,
/// and the next append chained onto them.
#[test]
fn a_malformed_newest_hash_is_an_error_naming_the_database_not_zeros() {
    let (_dir, home, _) = closed_home_with(3);
    block_on(async {
        let store = open(&home);
        let conn = raw_db_without_triggers(&home);
        conn.execute("UPDATE events SET hash = x'0102' WHERE seq = 3", [])
            .expect("break the newest hash");
        drop(conn);

        match store.head().await {
            Err(StoreError::Corrupt { path, reason }) => {
                assert!(path.ends_with("lion.db"), "{path}");
                assert!(reason.contains("(seq 3) is 2 bytes, not 32"), "{reason}");
            }
            other => panic!("expected the head to be refused as damaged, got {other:?}"),
        }
        let appended = store
            .append(vec![new_event(json!({ "n": 4 }))], ExpectedVersion::Any)
            .await;
        assert!(
            matches!(appended, Err(StoreError::Corrupt { .. })),
            "{appended:?}"
        );
    });
}

/// Known bug (fixed): a `HEAD` that is not a head was overwritten by the
/// next head recorded.
#[test]
fn a_head_garbled_while_the_store_is_open_is_never_overwritten() {
    let (_dir, home, _) = closed_home_with(2);
    block_on(async {
        let head_path = home.join(agentic_store::sqlite::HEAD_FILE);
        let store = open(&home);
        std::fs::write(&head_path, "garbage\n").expect("garble HEAD");
        store
            .append(vec![new_event(json!({ "n": 3 }))], ExpectedVersion::Any)
            .await
            .expect("the commit stands");
        drop(store); // records the newest head, or fails to

        assert_eq!(text_of(&head_path), "garbage\n");
        match SqliteStore::open(&home, SqliteOptions::default()) {
            Err(StoreError::Corrupt { path, .. }) => assert!(path.ends_with("HEAD"), "{path}"),
            Err(e) => panic!("expected HEAD to be refused as damaged, got {e}"),
            Ok(_) => panic!("a garbled HEAD was accepted"),
        }
    });
}

/// When `HEAD` cannot be written (here a directory squats the name of the
/// file it is written to before the rename, as running out of descriptors
/// or disk space would fail it), the commit stands, the failure is reported,
/// `HEAD` lags but says nothing false, and the head is recorded once writing
/// works again.
#[test]
fn a_failed_head_write_keeps_the_commit_reports_the_failure_and_is_retried() {
    let (_dir, home, records) = closed_home_with(2);
    block_on(async {
        let store = open(&home);
        let obstacle = home.join(format!("HEAD.tmp.{}", std::process::id()));
        std::fs::create_dir(&obstacle).expect("squat the temporary file's name");

        let receipt = store
            .append(vec![new_event(json!({ "n": 3 }))], ExpectedVersion::Any)
            .await
            .expect("the commit stands");
        assert_eq!(receipt.last_seq, 3);
        let err = store.record_head().expect_err("recording HEAD must fail");
        assert!(
            matches!(&err, StoreError::Io { path, .. } if path.contains("HEAD.tmp")),
            "{err}"
        );
        assert_eq!(store.head_recording_failure(), Some(err));
        let lagging = Some(ChainHead {
            seq: 2,
            hash: records[1].hash,
        });
        assert_eq!(store.recorded_head().expect("read HEAD"), lagging);

        std::fs::remove_dir(&obstacle).expect("remove the obstacle");
        store
            .record_head()
            .expect("recorded once writing works again");
        assert_eq!(store.head_recording_failure(), None);
        let head = store.head().await.expect("head");
        assert_eq!(store.recorded_head().expect("read HEAD"), Some(head));

        // A failure at close leaves HEAD lagging, and the home usable.
        std::fs::create_dir(&obstacle).expect("squat again");
        store
            .append(vec![new_event(json!({ "n": 4 }))], ExpectedVersion::Any)
            .await
            .expect("the commit stands");
        drop(store);
        std::fs::remove_dir(&obstacle).expect("remove the obstacle");
        let leftovers: Vec<_> = std::fs::read_dir(&home)
            .expect("list the home")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("HEAD.tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let store = open(&home);
        let report = store.verify().expect("a lagging HEAD verifies");
        assert_eq!((report.events, report.recorded_head), (4, Some(head)));
    });
}

// ---------------------------------------------------------------------------
// Two processes appending to one home
// ---------------------------------------------------------------------------

const WRITER_ROLE: &str = "child_process_role_appends_ten_thousand_events";
const WRITER_HOME: &str = "LION_TEST_CHILD_HOME";
const WRITER_INDEX: &str = "LION_TEST_CHILD_INDEX";
const WRITER_ACKS: &str = "LION_TEST_CHILD_ACKS";
const APPENDS_PER_CHILD: usize = 10_000;
const TASKS_PER_CHILD: usize = 64;

/// Child of [`two_processes_appending_ten_thousand_events_each_build_one_gapless_chain`]:
/// appends 10,000 single-event appends from 64 tasks, then writes one
/// `<seq> <event id>` line per acknowledged append to the acks file.
#[test]
fn child_process_role_appends_ten_thousand_events() {
    let Some(home) = std::env::var_os(WRITER_HOME) else {
        return; // not a child: nothing to do
    };
    let index: u64 = std::env::var(WRITER_INDEX)
        .expect("child index")
        .parse()
        .expect("numeric child index");
    let acks_path = PathBuf::from(std::env::var_os(WRITER_ACKS).expect("acks file"));
    let acks = block_on(async move {
        let store = Arc::new(open(Path::new(&home)));
        let tasks: Vec<_> = (0..TASKS_PER_CHILD)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut acks = Vec::new();
                    for n in (t..APPENDS_PER_CHILD).step_by(TASKS_PER_CHILD) {
                        let event = new_event(json!({ "child": index, "n": n }));
                        let id = event.event_id;
                        let r = store
                            .append(vec![event], ExpectedVersion::Any)
                            .await
                            .unwrap_or_else(|e| panic!("child {index}: append {n}: {e}"));
                        assert_eq!((r.last_seq, r.deduplicated), (r.first_seq, false));
                        acks.push((r.first_seq, id));
                    }
                    acks
                })
            })
            .collect();
        let mut acks = Vec::with_capacity(APPENDS_PER_CHILD);
        for task in tasks {
            acks.extend(task.await.expect("append task"));
        }
        acks
    });
    let text: String = acks
        .iter()
        .map(|(seq, id)| format!("{seq} {id}\n"))
        .collect();
    std::fs::write(&acks_path, text).expect("write the acks file");
}

#[test]
fn two_processes_appending_ten_thousand_events_each_build_one_gapless_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    // Created beforehand: creating a home from several processes at once is
    // a separate test (several_openers_of_a_fresh_home_at_once_all_succeed).
    drop(open(&home));
    let children: Vec<_> = (0..2)
        .map(|k| {
            let acks = dir.path().join(format!("acks-{k}.txt"));
            let log_path = dir.path().join(format!("child-{k}.log"));
            let out = std::fs::File::create(&log_path).expect("child log");
            let err = out.try_clone().expect("child log");
            let index = k.to_string();
            let child = spawn_role(
                WRITER_ROLE,
                &[
                    (WRITER_HOME, home.as_os_str()),
                    (WRITER_INDEX, index.as_ref()),
                    (WRITER_ACKS, acks.as_os_str()),
                ],
                Stdio::from(out),
                Stdio::from(err),
            );
            (child, acks, log_path)
        })
        .collect();
    let mut ack_files = Vec::new();
    for (k, (mut child, acks, log_path)) in children.into_iter().enumerate() {
        let status = child.wait().expect("wait for the child");
        assert!(
            status.success(),
            "child {k} failed ({status}):\n{}",
            text_of(&log_path)
        );
        ack_files.push(acks);
    }

    let total = 2 * APPENDS_PER_CHILD;
    let total_u64 = u64::try_from(total).expect("small");
    let store = open(&home);
    let report = store.verify().expect("the shared chain verifies");
    assert_eq!(report.events, total_u64);
    assert_eq!(report.recorded_head, Some(report.head));

    let records = log(&store);
    assert_eq!(seqs(&records), (1..=total_u64).collect::<Vec<_>>());
    let by_seq: HashMap<u64, Uuid> = records.iter().map(|e| (e.seq, e.event_id)).collect();
    let distinct: HashSet<Uuid> = by_seq.values().copied().collect();
    assert_eq!(distinct.len(), total, "an event id is stored twice");

    // Every acknowledged event is where its receipt said, once.
    let mut acked = HashSet::new();
    for (k, path) in ack_files.iter().enumerate() {
        let text = text_of(path);
        let mut lines = 0;
        for line in text.lines() {
            let (seq, id) = line.split_once(' ').expect("<seq> <id>");
            let seq: u64 = seq.parse().expect("seq");
            let id: Uuid = id.parse().expect("event id");
            assert_eq!(by_seq.get(&seq), Some(&id), "child {k}'s ack at seq {seq}");
            assert!(acked.insert(id), "event {id} acknowledged twice");
            lines += 1;
        }
        assert_eq!(lines, APPENDS_PER_CHILD, "child {k} acknowledged too few");
    }
    assert_eq!(acked, distinct);

    // Each child's elements, by their metadata: every n once per child.
    let mut per_child = [HashSet::new(), HashSet::new()];
    for record in &records {
        let el = element_of(record);
        let child = el.metadata.get("child").and_then(|v| v.as_u64());
        let n = el.metadata.get("n").and_then(|v| v.as_u64());
        let (Some(child), Some(n)) = (child, n) else {
            panic!("unexpected metadata {:?}", el.metadata);
        };
        let slot = usize::try_from(child).expect("child index");
        assert!(per_child[slot].insert(n), "child {child} n {n} twice");
    }
    assert!(per_child.iter().all(|s| s.len() == APPENDS_PER_CHILD));

    let (state, folded) = store.replay(true).expect("replay");
    assert_eq!(folded, total_u64);
    assert_eq!(state.elements().len(), total);
    let diff = block_on(replay_vs_projection(&store));
    assert!(diff.is_empty(), "projection differs from replay: {diff:?}");
}

// ---------------------------------------------------------------------------
// SIGKILL in the middle of appends
// ---------------------------------------------------------------------------

const CRASH_ROLE: &str = "child_process_role_appends_until_killed";
const CRASH_HOME: &str = "LION_TEST_CRASH_HOME";
const CRASH_TASKS: usize = 16;
const CRASH_ITERATIONS: usize = 50;
const MAX_ACKS_BEFORE_KILL: usize = 300;

/// Child of [`acknowledged_appends_survive_sigkill_and_the_chain_still_verifies`]:
/// appends forever from several tasks, printing `ack <seq> <event id>` (and
/// flushing) once each append is acknowledged.
#[test]
fn child_process_role_appends_until_killed() {
    let Some(home) = std::env::var_os(CRASH_HOME) else {
        return; // not a child: nothing to do
    };
    block_on(async move {
        let store = Arc::new(open(Path::new(&home)));
        let tasks: Vec<_> = (0..CRASH_TASKS)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let event = new_event(json!({ "task": t, "n": n }));
                        let id = event.event_id;
                        match store.append(vec![event], ExpectedVersion::Any).await {
                            Ok(r) => {
                                let mut out = std::io::stdout().lock();
                                let printed = writeln!(out, "ack {} {id}", r.first_seq)
                                    .and_then(|()| out.flush());
                                if let Err(e) = printed {
                                    eprintln!("cannot print an ack: {e}");
                                    std::process::exit(4);
                                }
                            }
                            Err(e) => {
                                eprintln!("append failed: {e}");
                                std::process::exit(3);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("append task");
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let mut acked: Vec<(u64, Uuid)> = Vec::new();
    for iteration in 0..CRASH_ITERATIONS {
        let target = rand::random_range(1..=MAX_ACKS_BEFORE_KILL);
        let err_path = dir.path().join(format!("child-{iteration}.stderr"));
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let mut child = spawn_role(
            CRASH_ROLE,
            &[(CRASH_HOME, home.as_os_str())],
            Stdio::piped(),
            Stdio::from(err),
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut got = 0;
        while got < target {
            let Some(line) = lines.next() else {
                let status = child.wait().expect("wait");
                panic!(
                    "iteration {iteration}: child exited ({status}) after {got} of {target} acks:\n{}",
                    text_of(&err_path)
                );
            };
            let line = line.expect("read the child's stdout");
            let Some(ack) = line.strip_prefix("ack ") else {
                continue; // the test harness's own lines
            };
            let (seq, id) = ack.split_once(' ').expect("ack <seq> <id>");
            acked.push((
                seq.parse().expect("acked seq"),
                id.parse().expect("acked event id"),
            ));
            got += 1;
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait for the killed child");
        assert!(!status.success(), "the child must die by the kill");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        }
        drop(lines);

        let store = open(&home);
        let report = store.verify().unwrap_or_else(|e| {
            panic!("iteration {iteration}: the log fails verification after SIGKILL: {e}")
        });
        let mut by_seq = HashMap::new();
        store
            .scan(1, |e| {
                by_seq.insert(e.seq, e.event_id);
                true
            })
            .expect("scan");
        assert_eq!(by_seq.len() as u64, report.events);
        for (seq, id) in &acked {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "iteration {iteration}: acknowledged event {id} is not at seq {seq}"
            );
        }
    }

    let store = open(&home);
    let report = store.verify().expect("verify");
    let diff = block_on(replay_vs_projection(&store));
    assert!(diff.is_empty(), "projection differs from replay: {diff:?}");
    eprintln!(
        "crash test: {CRASH_ITERATIONS} SIGKILLs, {} acknowledged appends all present; the log holds {} events",
        acked.len(),
        report.events
    );
}

/// Task events: the projection follows the reducer's rules, and replay agrees.
mod task_projection {
    use super::*;
    use agentic_core::task::TaskRuleError;
    use agentic_core::{ApplyError, StoreError, SystemEvent, TaskSpec, TaskStatus};

    fn event(e: SystemEvent) -> NewEvent {
        NewEvent::new(e, Uuid::now_v7())
    }

    async fn append(store: &SqliteStore, e: SystemEvent) -> Result<u64, StoreError> {
        store
            .append(vec![event(e)], ExpectedVersion::Any)
            .await
            .map(|r| r.first_seq)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_life_is_projected_and_replays_to_the_same_state() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open");
        let parent = Uuid::now_v7();
        let child = Uuid::now_v7();
        let mut spec = TaskSpec::new("fanout", json!({"n": 1}));
        spec.idempotency_key = Some("k1".into());
        append(
            &store,
            SystemEvent::TaskSubmitted {
                task_id: parent,
                spec,
            },
        )
        .await
        .expect("submit");
        let mut child_spec = TaskSpec::new("echo", json!("hi"));
        child_spec.parent = Some(parent);
        append(
            &store,
            SystemEvent::TaskSubmitted {
                task_id: child,
                spec: child_spec,
            },
        )
        .await
        .expect("submit child");
        append(
            &store,
            SystemEvent::TaskStarted {
                task_id: parent,
                attempt: 1,
                kernel: None,
            },
        )
        .await
        .expect("start");
        append(
            &store,
            SystemEvent::TaskFailed {
                task_id: parent,
                attempt: 1,
                error: "boom".into(),
                is_final: false,
                interrupted: false,
            },
        )
        .await
        .expect("fail");
        append(
            &store,
            SystemEvent::TaskStarted {
                task_id: parent,
                attempt: 2,
                kernel: None,
            },
        )
        .await
        .expect("retry");
        append(
            &store,
            SystemEvent::TaskCompleted {
                task_id: parent,
                attempt: 2,
                output: json!(42),
            },
        )
        .await
        .expect("complete");
        append(
            &store,
            SystemEvent::TaskCancelled {
                task_id: child,
                reason: "parent done".into(),
            },
        )
        .await
        .expect("cancel child");

        let projected = store.projected_state().await.expect("projection");
        let p = projected.task(parent).expect("parent projected");
        assert_eq!(p.status, TaskStatus::Completed);
        assert_eq!(p.attempts, 2);
        assert_eq!(p.output, Some(json!(42)));
        assert_eq!(p.children, vec![child]);
        assert_eq!(projected.task_by_key("k1").map(|t| t.id), Some(parent));
        assert_eq!(
            projected.task(child).map(|t| t.status),
            Some(TaskStatus::Cancelled)
        );
        assert!(replay_vs_projection(&store).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_breaking_a_task_rules_are_refused_and_write_nothing() {
        let home = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(home.path(), SqliteOptions::default()).expect("open");
        let task = Uuid::now_v7();
        let mut spec = TaskSpec::new("echo", json!(1));
        spec.idempotency_key = Some("once".into());
        append(
            &store,
            SystemEvent::TaskSubmitted {
                task_id: task,
                spec: spec.clone(),
            },
        )
        .await
        .expect("submit");
        let again = append(
            &store,
            SystemEvent::TaskSubmitted {
                task_id: Uuid::now_v7(),
                spec,
            },
        )
        .await;
        assert_eq!(
            again,
            Err(StoreError::Rejected(ApplyError::DuplicateIdempotencyKey {
                key: "once".into(),
                task
            }))
        );
        let unknown = Uuid::now_v7();
        assert_eq!(
            append(
                &store,
                SystemEvent::TaskStarted {
                    task_id: unknown,
                    attempt: 1,
                    kernel: None
                }
            )
            .await,
            Err(StoreError::Rejected(ApplyError::UnknownTask(unknown)))
        );
        append(
            &store,
            SystemEvent::TaskStarted {
                task_id: task,
                attempt: 1,
                kernel: None,
            },
        )
        .await
        .expect("start");
        append(
            &store,
            SystemEvent::TaskCompleted {
                task_id: task,
                attempt: 1,
                output: json!(1),
            },
        )
        .await
        .expect("complete");
        let head = store.head().await.expect("head");
        assert_eq!(
            append(
                &store,
                SystemEvent::TaskStarted {
                    task_id: task,
                    attempt: 2,
                    kernel: None
                }
            )
            .await,
            Err(StoreError::Rejected(ApplyError::Task(
                TaskRuleError::Ended(task)
            )))
        );
        assert_eq!(
            store.head().await.expect("head"),
            head,
            "a refused event wrote nothing"
        );
        assert!(replay_vs_projection(&store).await.is_empty());
    }
}

/// An element a pre-schema-5 lion created off its own stream (as schema 7's
/// migration lists them in `elements_off_stream`) is still found by id.
#[test]
fn an_element_created_off_its_own_stream_is_found_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    block_on(store.append(vec![on_stream("legacy", json!({}))], ExpectedVersion::Any))
        .expect("append");
    drop(store);
    // What an old writer left: an element row for the event at seq 1.
    let id = Uuid::now_v7();
    let db = raw_db(dir.path());
    db.execute(
        "INSERT INTO elements (seq, id, created_at, metadata, content) \
         VALUES (1, ?1, '2024-01-01T00:00:00Z', '{}', 'old')",
        [id.as_bytes()],
    )
    .expect("old element row");
    db.execute(
        "INSERT INTO elements_off_stream (id, seq) VALUES (?1, 1)",
        [id.as_bytes()],
    )
    .expect("listed off stream");
    drop(db);
    let store = open(dir.path());
    let found = block_on(store.element(id))
        .expect("read")
        .expect("found by id");
    assert_eq!(found.content.as_deref(), Some("old"));
    assert_eq!(block_on(store.element(Uuid::now_v7())).expect("read"), None);
}
