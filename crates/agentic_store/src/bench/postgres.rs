//! The PostgreSQL benches. `lion bench store --store postgres://…`: durable
//! events/s through one [`PostgresStore`] (one kernel) and through three on
//! the same database (three kernels taking turns on the log's head), at
//! several concurrency levels, beside raw batched inserts of the same group
//! sizes with the same client — by one connection, and by three taking
//! turns on a head row as the kernels do — measured in the same run on the
//! same database. `lion bench claims --store postgres://…`: tasks/s completed by
//! three kernels sharing a store, beside a bare `SKIP LOCKED` queue table.
//!
//! Every measurement runs in a database of its own, created on the server
//! the URL names (the role needs `CREATEDB`) and dropped afterwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, StoreError, SystemEvent};
use serde_json::{Map, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::postgres::{PostgresOptions, PostgresStore};

/// What to run.
#[derive(Debug, Clone)]
pub struct PgBenchConfig {
    /// The server (any database on it: the bench makes its own).
    pub url: String,
    /// Concurrent single-event appenders, one measurement per entry.
    pub appenders: Vec<usize>,
    /// How long each measurement runs.
    pub duration: Duration,
}

/// One concurrency level's figures.
#[derive(Debug, Clone)]
pub struct PgLevel {
    /// Concurrent appenders (split evenly across the kernels).
    pub appenders: usize,
    /// Durable events/s through one kernel.
    pub one_kernel: f64,
    /// Its average events per commit.
    pub one_kernel_group: f64,
    /// Durable events/s through three kernels together.
    pub three_kernels: f64,
    /// Their average events per commit.
    pub three_kernels_group: f64,
    /// Raw batched inserts of `one_kernel_group` rows per transaction,
    /// events/s.
    pub raw: f64,
    /// Raw inserts by one connection per kernel that had appenders (three,
    /// unless fewer appenders), each with as many rows a transaction as its
    /// kernel had appenders, taking turns on a head row, events/s: what the
    /// log's serialisation allows three writers with no lion code.
    pub raw_turns: f64,
}

/// The bench's figures.
#[derive(Debug, Clone)]
pub struct PgReport {
    /// Each concurrency level's.
    pub levels: Vec<PgLevel>,
    /// The median of one-row commits, one after another on one connection,
    /// less the median round trip, before the levels ran and after, in
    /// milliseconds: the server's flush, which says which state the disk
    /// was in.
    pub commit_p50_ms: (f64, f64),
}

/// Runs the bench, telling `progress` what it starts.
pub async fn run(config: &PgBenchConfig, progress: impl Fn(&str)) -> Result<PgReport, StoreError> {
    let server = Server::connect(&config.url).await?;
    progress("the server's one-row commits, before");
    let before = server.scratch(commit_p50_ms).await?;
    let mut levels = Vec::new();
    for &appenders in &config.appenders {
        progress(&format!("{appenders} appender(s) through one kernel"));
        let (one_kernel, group) = server
            .scratch(|url| appending(url, 1, appenders, config.duration))
            .await?;
        progress(&format!("{appenders} appender(s) through three kernels"));
        let (three_kernels, three_kernels_group) = server
            .scratch(|url| appending(url, 3, appenders, config.duration))
            .await?;
        progress(&format!("raw inserts of {group:.0} rows per commit"));
        let raw = server
            .scratch(|url| raw_inserts(url, group.round().max(1.0) as usize, config.duration))
            .await?;
        // One connection per kernel that had appenders, each with as many
        // rows a turn as its kernel had appenders: the most a turn can hold.
        let groups = turn_groups(appenders, 3);
        progress(&format!(
            "raw inserts by {} connection(s) taking turns, {groups:?} rows a turn",
            groups.len()
        ));
        let raw_turns = server
            .scratch(|url| raw_turns(url, groups, config.duration))
            .await?;
        levels.push(PgLevel {
            appenders,
            one_kernel,
            one_kernel_group: group,
            three_kernels,
            three_kernels_group,
            raw,
            raw_turns,
        });
    }
    progress("the server's one-row commits, after");
    let after = server.scratch(commit_p50_ms).await?;
    Ok(PgReport {
        levels,
        commit_p50_ms: (before, after),
    })
}

/// The median time of 100 one-row commits, one after another, less the
/// median round trip (`SELECT 1`): the server's commit, mostly its flush.
async fn commit_p50_ms(url: String) -> Result<f64, StoreError> {
    let client = client_of(&url).await?;
    client
        .batch_execute("CREATE TABLE probe (n bigint)")
        .await
        .map_err(|e| backend("create the probe table", e))?;
    let insert = client
        .prepare("INSERT INTO probe VALUES ($1)")
        .await
        .map_err(|e| backend("prepare", e))?;
    let trip = client
        .prepare("SELECT 1")
        .await
        .map_err(|e| backend("prepare", e))?;
    // The median of 100 runs of `statement`, in milliseconds.
    let median_ms = async |statement: &tokio_postgres::Statement, what: &str| {
        let mut times = Vec::with_capacity(100);
        for n in 0..100i64 {
            let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = match statement.params() {
                [] => &[],
                _ => &[&n],
            };
            let started = Instant::now();
            client
                .execute(statement, params)
                .await
                .map_err(|e| backend(what, e))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok::<_, StoreError>(times[times.len() / 2])
    };
    let commit = median_ms(&insert, "insert").await?;
    let round_trip = median_ms(&trip, "round trip").await?;
    Ok((commit - round_trip).max(0.0))
}

/// How `appenders` split across `kernels` (as the bench splits them, one
/// by one in turn): each kernel's count, for those that have any.
fn turn_groups(appenders: usize, kernels: usize) -> Vec<usize> {
    (0..kernels)
        .map(|k| (k..appenders).step_by(kernels).count())
        .filter(|&n| n > 0)
        .collect()
}

/// The server the bench makes its databases on.
struct Server {
    url: String,
    admin: Client,
}

impl Server {
    async fn connect(url: &str) -> Result<Self, StoreError> {
        let admin = client_of(url).await?;
        Ok(Self {
            url: url.to_owned(),
            admin,
        })
    }

    /// Runs `measure` on a new, empty database, dropped afterwards.
    async fn scratch<T, F>(&self, measure: impl FnOnce(String) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let name = format!("lion_bench_{}", Uuid::now_v7().simple());
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| backend("create a scratch database (the role needs CREATEDB)", e))?;
        let url = url_of(&self.url, &name);
        let result = measure(url).await;
        let _ = self
            .admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await;
        result
    }
}

/// The URL of database `name` on the server `url` names: the URL with its
/// path replaced (or, for a key=value string, a `dbname` added, which wins).
fn url_of(url: &str, name: &str) -> String {
    if let Some(rest) = url.split_once("://") {
        let (before_query, query) = match rest.1.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest.1, None),
        };
        let authority = before_query.split('/').next().unwrap_or(before_query);
        let mut out = format!("{}://{authority}/{name}", rest.0);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        format!("{url} dbname={name}")
    }
}

/// One connection to the server `url` names (with its TLS settings, as the
/// store connects).
async fn client_of(url: &str) -> Result<Client, StoreError> {
    let (config, tls) = crate::postgres::connection_settings(url)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| backend("connect", e))?;
    tokio::spawn(connection);
    Ok(client)
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("bench: cannot {what}: {e}"))
}

/// A fresh element creation, as the store bench appends.
fn event(n: u64) -> NewEvent {
    let mut metadata = Map::new();
    metadata.insert("n".into(), Value::from(n));
    let element = ElementData::new(metadata, Some("bench".into()));
    NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
}

/// Durable events/s from `appenders` single-event appenders split across
/// `kernels` store instances, and the events per commit.
async fn appending(
    url: String,
    kernels: usize,
    appenders: usize,
    duration: Duration,
) -> Result<(f64, f64), StoreError> {
    let options = PostgresOptions {
        pool_size: 2,
        ..PostgresOptions::default()
    };
    let mut stores = Vec::new();
    for _ in 0..kernels {
        stores.push(Arc::new(PostgresStore::open(&url, options.clone()).await?));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..appenders)
        .map(|i| {
            let store = stores[i % kernels].clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    store.append(vec![event(n)], ExpectedVersion::Any).await?;
                    n += 1;
                }
                Ok::<u64, StoreError>(n)
            })
        })
        .collect();
    let mut events = 0;
    for worker in workers {
        events += worker
            .await
            .map_err(|e| StoreError::Backend(format!("bench appender: {e}")))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let commits: u64 = stores
        .iter()
        .map(|s| s.commit_stats().commits.load(Ordering::Relaxed))
        .sum();
    Ok((
        events as f64 / elapsed,
        events as f64 / commits.max(1) as f64,
    ))
}

/// The raw baselines' log table: rows shaped like the log's, with no
/// chain, checks or projections.
const RAW_TABLE: &str = "CREATE TABLE raw (seq bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE, \
     stream text NOT NULL, payload bytea NOT NULL, hash bytea NOT NULL, UNIQUE (stream, seq))";

/// `group` fresh event ids and their elements' streams, as the log's rows
/// have them.
fn raw_ids(group: usize) -> (Vec<Uuid>, Vec<String>) {
    let ids: Vec<Uuid> = (0..group).map(|_| Uuid::now_v7()).collect();
    let streams = ids.iter().map(|id| format!("element:{id}")).collect();
    (ids, streams)
}

/// Events/s inserting `group` rows per transaction, one transaction after
/// another on one connection: rows shaped like the log's, with no chain,
/// checks or projections, each group one statement committed on its own
/// (one round trip, the least a durable batch costs).
async fn raw_inserts(url: String, group: usize, duration: Duration) -> Result<f64, StoreError> {
    let client = client_of(&url).await?;
    client
        .batch_execute(RAW_TABLE)
        .await
        .map_err(|e| backend("create the raw table", e))?;
    let insert = client
        .prepare(
            "INSERT INTO raw SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], \
             $4::bytea[], $5::bytea[])",
        )
        .await
        .map_err(|e| backend("prepare", e))?;
    let payload = event(0).event.encode()?;
    let started = Instant::now();
    let mut next = 0i64;
    while started.elapsed() < duration {
        let seqs: Vec<i64> = (next..next + group as i64).collect();
        let (ids, streams) = raw_ids(group);
        next += group as i64;
        let payloads: Vec<&[u8]> = seqs.iter().map(|_| payload.as_slice()).collect();
        let hashes: Vec<&[u8]> = seqs.iter().map(|_| &[7u8; 32][..]).collect();
        client
            .execute(&insert, &[&seqs, &ids, &streams, &payloads, &hashes])
            .await
            .map_err(|e| backend("insert", e))?;
    }
    Ok(next as f64 / started.elapsed().as_secs_f64())
}

/// Events/s of one connection per entry of `groups` appending that many
/// rows per transaction, taking turns on a head row as lion's kernels do:
/// each group is one statement that moves the head (waiting for the row
/// lock while another connection's commit holds it) and inserts the rows
/// after it, committed on its own. Rows as [`raw_inserts`] writes them.
async fn raw_turns(url: String, groups: Vec<usize>, duration: Duration) -> Result<f64, StoreError> {
    let setup = client_of(&url).await?;
    setup
        .batch_execute(&format!(
            "{RAW_TABLE}; CREATE TABLE head (id int PRIMARY KEY, seq bigint NOT NULL); \
             INSERT INTO head VALUES (1, 0)"
        ))
        .await
        .map_err(|e| backend("create the raw tables", e))?;
    // Every writer connects and prepares before the clock starts.
    let mut writers = Vec::new();
    for group in groups {
        let client = client_of(&url).await?;
        let append = client
            .prepare(
                "WITH h AS (UPDATE head SET seq = seq + $5 WHERE id = 1 \
                 RETURNING seq - $5 AS base) \
                 INSERT INTO raw SELECT h.base + u.o, u.id, u.stream, u.payload, u.hash \
                 FROM h, unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[]) \
                 WITH ORDINALITY AS u(id, stream, payload, hash, o)",
            )
            .await
            .map_err(|e| backend("prepare", e))?;
        writers.push((client, append, group));
    }
    let payload = event(0).event.encode()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut running = Vec::new();
    for (client, append, group) in writers {
        let payload = payload.clone();
        running.push(tokio::spawn(async move {
            let mut rows = 0u64;
            while Instant::now() < deadline {
                let (ids, streams) = raw_ids(group);
                let payloads: Vec<&[u8]> = ids.iter().map(|_| payload.as_slice()).collect();
                let hashes: Vec<&[u8]> = ids.iter().map(|_| &[7u8; 32][..]).collect();
                let inserted = client
                    .execute(
                        &append,
                        &[&ids, &streams, &payloads, &hashes, &(group as i64)],
                    )
                    .await
                    .map_err(|e| backend("append", e))?;
                if inserted != group as u64 {
                    return Err(backend(
                        "append",
                        format!("{inserted} rows inserted, not {group}"),
                    ));
                }
                rows += inserted;
            }
            Ok::<u64, StoreError>(rows)
        }));
    }
    let mut rows = 0;
    for writer in running {
        rows += writer
            .await
            .map_err(|e| StoreError::Backend(format!("bench writer: {e}")))??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// What the work-claiming bench measured.
#[derive(Debug, Clone)]
pub struct ClaimsReport {
    /// Tasks run by each side.
    pub tasks: usize,
    /// Tasks/s completed by three lion kernels sharing the store.
    pub lion: f64,
    /// Tasks/s completed by workers on a bare `SKIP LOCKED` queue table.
    pub queue: f64,
    /// The queue's workers (connections, each one task at a time).
    pub queue_workers: usize,
    /// The server's one-row commit p50, less a round trip, before and
    /// after, in milliseconds (as [`PgReport::commit_p50_ms`]).
    pub commit_p50_ms: (f64, f64),
}

/// Kernels in the claiming bench, and the attempts each runs at once.
const CLAIM_KERNELS: usize = 3;
const CLAIM_SLOTS: usize = 32;
/// Workers per kernel on the bare queue (each a connection).
const QUEUE_WORKERS_PER_KERNEL: usize = 8;

/// Tasks/s completed across three kernels (in this process, each with its
/// own store connections, claiming attempts in the log) beside a bare
/// queue table drained by workers with `FOR UPDATE SKIP LOCKED`, each task
/// one durable transaction: both on scratch databases of the same server.
pub async fn claims(
    url: &str,
    tasks: usize,
    progress: impl Fn(&str),
) -> Result<ClaimsReport, StoreError> {
    let server = Server::connect(url).await?;
    progress("the server's one-row commits, before");
    let before = server.scratch(commit_p50_ms).await?;
    progress(&format!("{tasks} tasks through a bare SKIP LOCKED queue"));
    let workers = CLAIM_KERNELS * QUEUE_WORKERS_PER_KERNEL;
    let queue = server
        .scratch(|url| bare_queue(url, tasks, workers))
        .await?;
    progress(&format!("{tasks} tasks through three lion kernels"));
    let lion = server.scratch(|url| three_kernels(url, tasks)).await?;
    progress("the server's one-row commits, after");
    let after = server.scratch(commit_p50_ms).await?;
    Ok(ClaimsReport {
        tasks,
        lion,
        queue,
        queue_workers: workers,
        commit_p50_ms: (before, after),
    })
}

/// Tasks/s draining a queue table of `tasks` rows with `workers`
/// connections, one task per transaction.
async fn bare_queue(url: String, tasks: usize, workers: usize) -> Result<f64, StoreError> {
    let client = client_of(&url).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE q (id bigserial PRIMARY KEY, input bytea NOT NULL, \
             done boolean NOT NULL DEFAULT false, output bytea); \
             CREATE INDEX q_todo ON q (id) WHERE NOT done; \
             INSERT INTO q (input) SELECT convert_to('{{\"i\":' || g || '}}', 'UTF8') \
             FROM generate_series(1, {tasks}) g;"
        ))
        .await
        .map_err(|e| backend("fill the queue", e))?;
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..workers {
        let url = url.clone();
        running.push(tokio::spawn(async move {
            let mut client = client_of(&url).await?;
            let take = client
                .prepare(
                    "SELECT id, input FROM q WHERE NOT done ORDER BY id \
                     LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .await
                .map_err(|e| backend("prepare", e))?;
            let finish = client
                .prepare("UPDATE q SET done = true, output = $2 WHERE id = $1")
                .await
                .map_err(|e| backend("prepare", e))?;
            loop {
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| backend("begin", e))?;
                let Some(row) = tx
                    .query_opt(&take, &[])
                    .await
                    .map_err(|e| backend("take", e))?
                else {
                    return Ok::<(), StoreError>(());
                };
                let id: i64 = row.get(0);
                let input: Vec<u8> = row.get(1);
                tx.execute(&finish, &[&id, &input])
                    .await
                    .map_err(|e| backend("finish", e))?;
                tx.commit().await.map_err(|e| backend("commit", e))?;
            }
        }));
    }
    for worker in running {
        worker
            .await
            .map_err(|e| StoreError::Backend(format!("bench worker: {e}")))??;
    }
    Ok(tasks as f64 / started.elapsed().as_secs_f64())
}

/// Tasks/s completed by three kernels sharing a store: echo tasks
/// submitted in batches, from the first submission to the last end.
async fn three_kernels(url: String, tasks: usize) -> Result<f64, StoreError> {
    use agentic_core::kernel::{self, Membership};
    use agentic_core::store::kernels::KernelJoin;
    use agentic_core::{Orchestrator, OrchestratorConfig, TaskFilter, TaskSpec};

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut kernels = Vec::new();
    let mut stores: Vec<Arc<dyn EventStore>> = Vec::new();
    for _ in 0..CLAIM_KERNELS {
        // Opened as `lion run` opens a kernel's store.
        let options = PostgresOptions {
            settle_reads: false,
            ..PostgresOptions::default()
        };
        let store: Arc<dyn EventStore> = Arc::new(PostgresStore::open(&url, options).await?);
        let join = KernelJoin {
            id: Uuid::now_v7(),
            host: "bench".into(),
            pid: std::process::id(),
            lease: Duration::from_secs(10),
        };
        let orchestrator = Orchestrator::start(
            store.clone(),
            agentic_core::orchestrator::builtin_handlers(),
            OrchestratorConfig {
                max_concurrency: CLAIM_SLOTS,
                max_pending: tasks.max(1),
                kernel: Some(join.id),
                ..OrchestratorConfig::default()
            },
            Uuid::now_v7(),
        );
        let (ready, mut is_ready) = tokio::sync::watch::channel(false);
        let mut stopped = stopping.clone();
        let store_for_kernel = store.clone();
        kernels.push(tokio::spawn(async move {
            kernel::serve(
                store_for_kernel,
                orchestrator,
                None,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                std::future::pending(),
                ready,
                Some(Membership { join }),
            )
            .await
        }));
        is_ready.wait_for(|r| *r).await.map_err(|_| {
            StoreError::Backend("bench: a kernel stopped before it was ready".into())
        })?;
        stores.push(store);
    }
    let submitter = stores[0].clone();
    let started = Instant::now();
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|i| {
                NewEvent::new(
                    SystemEvent::TaskSubmitted {
                        task_id: Uuid::now_v7(),
                        spec: TaskSpec::new("echo", serde_json::json!({ "i": i })),
                    },
                    Uuid::now_v7(),
                )
            })
            .collect();
        submitter.append(events, ExpectedVersion::Any).await?;
    }
    loop {
        let head = submitter.head().await?.seq;
        let left = submitter
            .tasks(TaskFilter::Unfinished, agentic_core::Cursor::START, 1)
            .await?;
        if left.items.is_empty() {
            break;
        }
        submitter.wait_for_events(head).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.send_replace(true);
    for k in kernels {
        let _ = k.await;
    }
    Ok(tasks as f64 / elapsed)
}

#[cfg(test)]
mod tests {
    use super::turn_groups;

    #[test]
    fn turns_hold_what_each_kernel_has_appending() {
        assert_eq!(turn_groups(16, 3), vec![6, 5, 5]);
        assert_eq!(turn_groups(256, 3), vec![86, 85, 85]);
        assert_eq!(turn_groups(1, 3), vec![1]);
        assert_eq!(turn_groups(4, 3), vec![2, 1, 1]);
    }
}
