//! The PostgreSQL half of `lion bench store --store postgres://…`: durable
//! events/s through one [`PostgresStore`] (one kernel) and through three on
//! the same database (three kernels taking turns on the log's head), at
//! several concurrency levels, beside raw batched inserts of the same group
//! sizes with the same client, measured in the same run on the same
//! database.
//!
//! Every measurement runs in a database of its own, created on the server
//! the URL names (the role needs `CREATEDB`) and dropped afterwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, StoreError, SystemEvent};
use serde_json::{Map, Value};
use tokio_postgres::{Client, NoTls};
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
    /// Raw batched inserts of `one_kernel_group` rows per transaction,
    /// events/s.
    pub raw: f64,
}

/// Runs the bench, telling `progress` what it starts.
pub async fn run(
    config: &PgBenchConfig,
    progress: impl Fn(&str),
) -> Result<Vec<PgLevel>, StoreError> {
    let server = Server::connect(&config.url).await?;
    let mut levels = Vec::new();
    for &appenders in &config.appenders {
        progress(&format!("{appenders} appender(s) through one kernel"));
        let (one_kernel, group) = server
            .scratch(|url| appending(url, 1, appenders, config.duration))
            .await?;
        progress(&format!("{appenders} appender(s) through three kernels"));
        let (three_kernels, _) = server
            .scratch(|url| appending(url, 3, appenders, config.duration))
            .await?;
        progress(&format!("raw inserts of {group:.0} rows per commit"));
        let raw = server
            .scratch(|url| raw_inserts(url, group.round().max(1.0) as usize, config.duration))
            .await?;
        levels.push(PgLevel {
            appenders,
            one_kernel,
            one_kernel_group: group,
            three_kernels,
            raw,
        });
    }
    Ok(levels)
}

/// The server the bench makes its databases on.
struct Server {
    url: String,
    admin: Client,
}

impl Server {
    async fn connect(url: &str) -> Result<Self, StoreError> {
        let (admin, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| backend("connect", e))?;
        tokio::spawn(connection);
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

/// Events/s inserting `group` rows per transaction, one transaction after
/// another on one connection: rows shaped like the log's, with no chain,
/// checks or projections.
async fn raw_inserts(url: String, group: usize, duration: Duration) -> Result<f64, StoreError> {
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .map_err(|e| backend("connect", e))?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE raw (seq bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE, \
             stream text NOT NULL, payload bytea NOT NULL, hash bytea NOT NULL, \
             UNIQUE (stream, seq))",
        )
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
        next += group as i64;
        let ids: Vec<Uuid> = seqs.iter().map(|_| Uuid::now_v7()).collect();
        let streams: Vec<String> = ids.iter().map(|id| format!("element:{id}")).collect();
        let payloads: Vec<&[u8]> = seqs.iter().map(|_| payload.as_slice()).collect();
        let hashes: Vec<&[u8]> = seqs.iter().map(|_| &[7u8; 32][..]).collect();
        let tx = client
            .transaction()
            .await
            .map_err(|e| backend("begin", e))?;
        tx.execute(&insert, &[&seqs, &ids, &streams, &payloads, &hashes])
            .await
            .map_err(|e| backend("insert", e))?;
        tx.commit().await.map_err(|e| backend("commit", e))?;
    }
    Ok(next as f64 / started.elapsed().as_secs_f64())
}
