//! The store benchmark behind `lion bench store`: group-commit throughput and
//! acknowledgement latency at several concurrency levels, replay speed, and
//! the same-run baselines every figure is compared with — raw `fdatasync`,
//! raw rusqlite inserts in batches of 100, raw rusqlite inserts committing as
//! many rows per transaction as the store's groups did at each level (so a
//! level whose groups were small is not compared with big batches only), and
//! a raw rusqlite scan of the same rows.
//!
//! The largest level runs twice: on the caller's runtime, and with the
//! writer pinned to a CPU of its own and the appenders on a runtime pinned to
//! the other CPUs ([`Placement::OwnCore`]). The store has no option for that:
//! the benchmark finds the writer thread of the store it opened and pins it
//! itself (see `cpu`).
//!
//! Figures on a shared virtual disk swing from run to run (the flush time
//! flips between ~0.1 ms and ~4 ms), so each row carries its ratio to a
//! baseline measured in the same run, and the report says which flush regime
//! the run was in.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentic_core::{ElementData, EventStore, ExpectedVersion, NewEvent, StoreError, SystemEvent};
use rusqlite::{Connection, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::sqlite::{SqliteOptions, SqliteStore};

mod cpu;
pub mod postgres;

pub use cpu::CorePlan;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Scratch directory on the disk to measure (emptied stores are created in it).
    pub dir: PathBuf,
    /// Concurrent single-event appenders, one measurement per entry.
    pub appenders: Vec<usize>,
    /// How long each appender level runs.
    pub duration: Duration,
    /// Events in the log that replay is measured on.
    pub replay_events: u64,
    /// Flushes timed for the raw `fdatasync` baseline.
    pub fsync_samples: usize,
    /// Events inserted by the raw rusqlite baseline in batches of 100.
    pub baseline_events: u64,
    /// Also measure the largest level with the writer on a core of its own
    /// and the appenders' runtime on the other cores (see [`CorePlan`]).
    pub own_core: bool,
}

impl BenchConfig {
    /// The full benchmark the targets refer to.
    pub fn full(dir: PathBuf) -> Self {
        Self {
            dir,
            appenders: vec![1, 16, 256],
            duration: Duration::from_secs(3),
            replay_events: 1_000_000,
            fsync_samples: 200,
            baseline_events: 100_000,
            own_core: true,
        }
    }

    /// A seconds-long run that exercises every path (for tests and smoke checks).
    pub fn quick(dir: PathBuf) -> Self {
        Self {
            dir,
            appenders: vec![1, 16],
            duration: Duration::from_millis(300),
            replay_events: 5_000,
            fsync_samples: 20,
            baseline_events: 2_000,
            own_core: true,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl Latency {
    /// The percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Self {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }

    /// Whether these are flushes of the disk's slow state (a median of
    /// [`SLOW_FLUSH_MS`] or more), the case the speed targets are set for.
    pub fn is_slow_flush(&self) -> bool {
        self.p50_ms >= SLOW_FLUSH_MS
    }
}

/// The threshold between the disk's two flush states, in milliseconds: a
/// median flush of this or more is the slow state. This machine kind's flush
/// flips between about 0.1 ms and 4 ms from run to run, and the durable-write
/// targets are set for the slow case.
pub const SLOW_FLUSH_MS: f64 = 1.0;

/// Where a group-commit measurement ran its writer and appenders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them, appenders on the caller's runtime.
    Shared,
    /// The writer pinned to a CPU of its own, the appenders on a runtime of
    /// one worker per other CPU, pinned to those.
    OwnCore(CorePlan),
}

/// A raw rusqlite insert baseline: plain rows, WAL, `synchronous=FULL`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawInserts {
    /// Rows committed per transaction.
    pub rows_per_commit: u64,
    /// Rows per second.
    pub events_per_sec: f64,
    /// Transactions (fsyncs) per second.
    pub commits_per_sec: f64,
}

/// One concurrency level of the group-commit measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRow {
    /// Concurrent single-event appenders.
    pub appenders: usize,
    /// Where the writer and the appenders ran.
    pub placement: Placement,
    /// Durable (acknowledged) events per second.
    pub events_per_sec: f64,
    /// Transactions (fsyncs) per second.
    pub commits_per_sec: f64,
    /// Mean events per transaction.
    pub events_per_commit: f64,
    /// Acknowledgement latency of one append.
    pub ack: Latency,
    /// CPU time the whole process used per durable event (all threads).
    pub cpu_us_per_event: Option<f64>,
    /// Raw rusqlite inserts measured right after this level, committing as
    /// many rows per transaction as this level's groups did on average
    /// (rounded, at least 1), for as long.
    pub raw_same_batch: RawInserts,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Raw `fdatasync` of a 4 KiB write: latency.
    pub fsync: Latency,
    /// Raw rusqlite inserts in batches of 100 (`synchronous=FULL`).
    pub raw_batches_of_100: RawInserts,
    /// lion's group commit, per concurrency level (then the largest level
    /// with the writer on its own core, if measured).
    pub appends: Vec<AppendRow>,
    /// Why the own-core measurement was not made, if it was asked for.
    pub own_core_skipped: Option<String>,
    /// Events in the replayed log.
    pub replay_events: u64,
    /// Raw rusqlite scan of the same rows (no decoding): rows/s.
    pub raw_scan_per_sec: f64,
    /// Replay (decode + fold): events/s.
    pub replay_per_sec: f64,
    /// Replay while recomputing the hash chain: events/s.
    pub replay_verified_per_sec: f64,
    /// Peak resident memory of the process (VmHWM), in MiB, if known.
    pub peak_rss_mib: Option<f64>,
}

impl BenchReport {
    /// Whether this run's flushes were slow, the case the targets are for.
    pub fn slow_flush(&self) -> bool {
        self.fsync.is_slow_flush()
    }
}

/// Runs the whole benchmark. Needs a multi-threaded tokio runtime.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, StoreError> {
    std::fs::create_dir_all(&config.dir).map_err(|e| io(&config.dir, &e))?;

    progress("raw fdatasync");
    let fsync = fsync_latency(&config.dir.join("fsync.probe"), config.fsync_samples)?;

    progress("raw rusqlite inserts, batches of 100");
    let raw_db = config.dir.join("raw.db");
    let raw_batches_of_100 =
        raw_sqlite_inserts(&raw_db, RAW_BATCH, RawLimit::Rows(config.baseline_events))?;

    let mut appends = Vec::new();
    for &n in &config.appenders {
        progress(&format!("group commit, {n} concurrent appender(s)"));
        let home = config.dir.join(format!("appenders-{n}"));
        let _ = std::fs::remove_dir_all(&home);
        let store = SqliteStore::open(&home, SqliteOptions::default())?;
        let row = group_commit(store, n, config.duration).await;
        let _ = std::fs::remove_dir_all(&home);
        appends.push(same_batch_baseline(
            row?,
            &raw_db,
            config.duration,
            &mut progress,
        )?);
    }
    let mut own_core_skipped = None;
    let largest = config.appenders.iter().copied().max();
    if let (true, Some(n)) = (config.own_core, largest) {
        match CorePlan::here() {
            Some(plan) => {
                progress(&format!(
                    "group commit, {n} appender(s), writer on CPU {} of its own",
                    plan.writer
                ));
                let home = config.dir.join(format!("appenders-{n}-own-core"));
                let row = own_core(home.clone(), n, config.duration, plan).await;
                let _ = std::fs::remove_dir_all(&home);
                match row? {
                    Ok(row) => appends.push(same_batch_baseline(
                        row,
                        &raw_db,
                        config.duration,
                        &mut progress,
                    )?),
                    Err(why) => own_core_skipped = Some(why),
                }
            }
            None => own_core_skipped = Some("this process may use only one CPU".into()),
        }
    }

    progress(&format!("building a {}-event log", config.replay_events));
    let replay_home = config.dir.join("replay");
    fill(&replay_home, config.replay_events).await?;
    progress("replay");
    let store = SqliteStore::open(&replay_home, SqliteOptions::default())?;
    let raw_scan_per_sec = raw_scan(&replay_home.join(crate::sqlite::DB_FILE))?;
    // The folded state is dropped outside the timed part: freeing it is not replay.
    let mut folded = Vec::new();
    let (replay_per_sec, n1) = timed(|| {
        store.replay(false).map(|(s, n)| {
            folded.push(s);
            n
        })
    })?;
    folded.clear();
    let (replay_verified_per_sec, n2) = timed(|| {
        store.replay(true).map(|(s, n)| {
            folded.push(s);
            n
        })
    })?;
    let peak_rss_mib = peak_rss_mib();
    drop(folded);
    if n1 != config.replay_events || n2 != config.replay_events {
        return Err(StoreError::Backend(format!(
            "replay saw {n1}/{n2} events, expected {}",
            config.replay_events
        )));
    }
    Ok(BenchReport {
        fsync,
        raw_batches_of_100,
        appends,
        own_core_skipped,
        replay_events: config.replay_events,
        raw_scan_per_sec,
        replay_per_sec,
        replay_verified_per_sec,
        peak_rss_mib,
    })
}

fn io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Times `f`, returning its items per second and its result.
fn timed(f: impl FnOnce() -> Result<u64, StoreError>) -> Result<(f64, u64), StoreError> {
    let start = Instant::now();
    let n = f()?;
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// A benchmark event: an element with a little metadata, like real use.
fn bench_event(i: u64) -> NewEvent {
    let mut metadata = Map::new();
    metadata.insert("bench".into(), Value::from(i));
    metadata.insert("kind".into(), Value::from("note"));
    let element = ElementData::new(metadata, None);
    NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
}

/// Raw `fdatasync` latency: `samples` times, a 4 KiB write to `path` then
/// `fdatasync`, each timed (the file is removed afterwards). The floor of
/// any durable commit on this disk, for other benchmarks' same-run rows too.
pub fn fsync_latency(path: &Path, samples: usize) -> Result<Latency, StoreError> {
    flush_latency(path, samples, false)
}

/// Raw `fdatasync` latency of overwrites: `samples` times, a 4 KiB write
/// over a block the file already has (written and flushed beforehand),
/// then `fdatasync`, each timed (the file is removed afterwards). What a
/// flush costs when it need not record the file's growth, as with a WAL
/// that has started over.
pub fn fsync_overwrite_latency(path: &Path, samples: usize) -> Result<Latency, StoreError> {
    flush_latency(path, samples, true)
}

/// `samples` timed 4 KiB writes to a new file at `path`, each followed by
/// `fdatasync`: growing the file, or over blocks written and flushed first
/// (`overwrite`). The file is removed afterwards.
fn flush_latency(path: &Path, samples: usize, overwrite: bool) -> Result<Latency, StoreError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, &e))?;
    let block = [0x5a_u8; 4096];
    if overwrite {
        for _ in 0..samples {
            file.write_all(&block).map_err(|e| io(path, &e))?;
        }
        file.sync_all().map_err(|e| io(path, &e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| io(path, &e))?;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all(&block).map_err(|e| io(path, &e))?;
        file.sync_data().map_err(|e| io(path, &e))?;
        times.push(start.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    Ok(Latency::of(times))
}

/// Rows per transaction of the big-batch raw baseline.
const RAW_BATCH: u64 = 100;

/// How long a raw insert baseline runs.
#[derive(Debug, Clone, Copy)]
enum RawLimit {
    /// Until this many rows are in (rounded up to whole transactions).
    Rows(u64),
    /// Until this much time has passed (whole transactions).
    Time(Duration),
}

/// `row` with its same-batch raw baseline measured: raw inserts committing
/// the level's mean group size per transaction, for the level's duration.
fn same_batch_baseline(
    mut row: AppendRow,
    raw_db: &Path,
    duration: Duration,
    progress: &mut impl FnMut(&str),
) -> Result<AppendRow, StoreError> {
    let rows = (row.events_per_commit.round() as u64).max(1);
    progress(&format!(
        "raw rusqlite inserts, {rows} row(s) per commit (as the store's groups at {} appender(s))",
        row.appenders
    ));
    row.raw_same_batch = raw_sqlite_inserts(raw_db, rows, RawLimit::Time(duration))?;
    Ok(row)
}

/// The baseline: plain rusqlite, WAL, `synchronous=FULL`, `rows_per_commit`
/// rows per transaction shaped like lion's events (same payload size), no
/// chain, no projections.
fn raw_sqlite_inserts(
    path: &Path,
    rows_per_commit: u64,
    limit: RawLimit,
) -> Result<RawInserts, StoreError> {
    let rows_per_commit = rows_per_commit.max(1);
    remove_db(path);
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id BLOB NOT NULL, payload BLOB NOT NULL);",
    )
    .map_err(sql)?;
    let payload = bench_event(0).event.encode()?;
    let start = Instant::now();
    let mut commits = 0u64;
    let mut seq = 0i64;
    let more = |seq: i64| match limit {
        RawLimit::Rows(n) => (seq as u64) < n,
        RawLimit::Time(d) => start.elapsed() < d,
    };
    while more(seq) {
        let tx = conn.transaction().map_err(sql)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events (seq, event_id, payload) VALUES (?1, ?2, ?3)")
                .map_err(sql)?;
            for _ in 0..rows_per_commit {
                seq += 1;
                stmt.execute(params![seq, Uuid::now_v7().as_bytes(), payload])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(conn);
    remove_db(path);
    Ok(RawInserts {
        rows_per_commit,
        events_per_sec: seq as f64 / secs,
        commits_per_sec: commits as f64 / secs,
    })
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// [`group_commit`] on a fresh store in `home` whose writer thread this
/// benchmark pins to `plan.writer`, the appenders on a runtime of their own,
/// one worker pinned to each other CPU. `Ok(Err(why))` when the writer
/// cannot be pinned: the row would not be what it says, so it is skipped.
async fn own_core(
    home: PathBuf,
    n: usize,
    duration: Duration,
    plan: CorePlan,
) -> Result<Result<AppendRow, String>, StoreError> {
    let backend = |e: std::io::Error| StoreError::Backend(format!("cannot start a runtime: {e}"));
    tokio::task::spawn_blocking(move || {
        let workers = plan.workers.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.len())
            .on_thread_start(move || {
                // Only a measurement: an unpinned worker is a slower one.
                let _ = cpu::pin_thread(None, &workers);
            })
            .enable_all()
            .build()
            .map_err(backend)?;
        let _ = std::fs::remove_dir_all(&home);
        let before = cpu::writer_threads().map_err(|e| io(Path::new("/proc/self/task"), &e))?;
        let store = SqliteStore::open(&home, SqliteOptions::default())?;
        // A thread takes its name once it runs: after one commit, it has.
        runtime.block_on(store.append(vec![bench_event(0)], ExpectedVersion::Any))?;
        if let Err(why) = pin_writer(&before, plan.writer) {
            return Ok(Err(why));
        }
        let mut row = runtime.block_on(group_commit(store, n, duration))?;
        row.placement = Placement::OwnCore(plan);
        Ok(Ok(row))
    })
    .await
    .map_err(|e| StoreError::Backend(format!("own-core measurement failed: {e}")))?
}

/// Pins the writer thread of the store opened since `before` was listed to
/// `cpu`, and checks that it runs there alone; why not, if it cannot.
fn pin_writer(before: &std::collections::BTreeSet<i32>, cpu: usize) -> Result<(), String> {
    let writer = cpu::new_writer_thread(before)
        .map_err(|e| format!("cannot find the store's writer thread: {e}"))?;
    cpu::pin_thread(Some(writer), &[cpu])
        .map_err(|e| format!("cannot pin the store's writer thread to CPU {cpu}: {e}"))?;
    match cpu::allowed_for(Some(writer)) {
        Ok(cpus) if cpus == [cpu] => Ok(()),
        Ok(cpus) => Err(format!(
            "the store's writer thread runs on CPUs {cpus:?} after pinning it to CPU {cpu}"
        )),
        Err(e) => Err(format!("cannot read the writer thread's CPUs: {e}")),
    }
}

/// `n` tasks each appending one event at a time to `store` for `duration`.
async fn group_commit(
    store: SqliteStore,
    n: usize,
    duration: Duration,
) -> Result<AppendRow, StoreError> {
    let store = Arc::new(store);
    let stats_before = (
        store.commit_stats().commits.load(Ordering::Relaxed),
        store.commit_stats().events.load(Ordering::Relaxed),
    );
    let cpu_before = process_cpu_secs();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..n)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t as u64 * 1_000_000_000;
                while Instant::now() < deadline {
                    i += 1;
                    let sent = Instant::now();
                    store
                        .append(vec![bench_event(i)], ExpectedVersion::Any)
                        .await?;
                    latencies.push(sent.elapsed());
                }
                Ok::<_, StoreError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        let l = task
            .await
            .map_err(|e| StoreError::Backend(format!("appender task failed: {e}")))??;
        latencies.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_secs()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let commits = store.commit_stats().commits.load(Ordering::Relaxed) - stats_before.0;
    let events = store.commit_stats().events.load(Ordering::Relaxed) - stats_before.1;
    drop(store);
    Ok(AppendRow {
        appenders: n,
        placement: Placement::Shared,
        events_per_sec: latencies.len() as f64 / secs,
        commits_per_sec: commits as f64 / secs,
        events_per_commit: events as f64 / commits.max(1) as f64,
        cpu_us_per_event: cpu.map(|c| c * 1e6 / events.max(1) as f64),
        ack: Latency::of(latencies),
        // Measured by the caller, once the store is closed.
        raw_same_batch: RawInserts {
            rows_per_commit: 0,
            events_per_sec: 0.0,
            commits_per_sec: 0.0,
        },
    })
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS_PER_SEC)
}

/// `sysconf(_SC_CLK_TCK)` on Linux, fixed at 100 by its ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Creates a store holding `events` element events (reused if already there).
async fn fill(home: &Path, events: u64) -> Result<(), StoreError> {
    let store = Arc::new(SqliteStore::open(home, SqliteOptions::default())?);
    let have = store.head().await?.seq;
    if have == events {
        return Ok(());
    }
    drop(store);
    let _ = std::fs::remove_dir_all(home);
    let store = Arc::new(SqliteStore::open(home, SqliteOptions::default())?);
    const BATCH: u64 = 1000;
    const WRITERS: u64 = 4;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < events {
                    let end = (i + BATCH * WRITERS).min(events);
                    let batch: Vec<_> = (i..end)
                        .step_by(WRITERS as usize)
                        .map(bench_event)
                        .collect();
                    i = end;
                    store.append(batch, ExpectedVersion::Any).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| StoreError::Backend(format!("fill task failed: {e}")))??;
    }
    Ok(())
}

/// The read baseline: raw rusqlite stepping over the same rows, touching
/// every column but decoding nothing.
fn raw_scan(path: &Path) -> Result<f64, StoreError> {
    let conn = Connection::open(path).map_err(sql)?;
    let start = Instant::now();
    let mut stmt = conn
        .prepare("SELECT seq, event_id, stream, payload, hash FROM events ORDER BY seq")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(sql)? {
        n += 1;
        bytes += row
            .get_ref(3)
            .map_err(sql)?
            .as_blob()
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .len();
    }
    std::hint::black_box(bytes);
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Peak resident set size of this process, from `/proc/self/status`.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_kib("VmHWM").map(|kib| kib as f64 / 1024.0)
}

/// A memory figure of this process from `/proc/self/status` (e.g. `VmRSS`), in KiB.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}
