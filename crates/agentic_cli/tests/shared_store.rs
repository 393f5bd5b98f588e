//! Several kernels sharing one PostgreSQL store, as users run them: real
//! `lion run --store postgres://…` processes on a throwaway cluster this
//! test process starts.
//!
//! - three kernels run 10,000 tasks (with children and retries) while one
//!   is killed with SIGKILL and another is paused with SIGSTOP past its
//!   lease, then continued: every task ends, every attempt has exactly one
//!   recorded outcome, the interrupted attempts are recorded and retried,
//!   the paused kernel stops when it wakes, and the log verifies as one
//!   chain whose projections match a replay;
//! - the same with PostgreSQL itself restarting mid-run;
//! - a cancelled task's children are cancelled on every kernel that runs
//!   them;
//! - a kernel's live events (uncommitted progress) reach the subscribers of
//!   another kernel;
//! - a plugin installed on one machine runs on another (its component is
//!   kept in the store by its hash);
//! - a home's log moved to PostgreSQL and back (`lion store copy`), whole;
//! - a workflow run goes on when one of its two kernels is killed: the
//!   other finishes it, with an approval recorded from another machine.

mod support;

#[path = "../../agentic_store/tests/postgres_cluster/mod.rs"]
mod postgres_cluster;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentic_core::store::kernels::{KernelRegistry, KernelState};
use agentic_core::{
    EventStore, ExpectedVersion, NewEvent, RetryPolicy, SystemEvent, TaskFilter, TaskSpec,
    TaskStatus,
};
use agentic_store::{PostgresOptions, PostgresStore};
use serde_json::json;
use support::{Kernel, lion_at, run};
use uuid::Uuid;

/// A failure guard for waits that should end; never a timing assertion.
const GUARD: Duration = Duration::from_secs(600);

/// The lease the kernels run with in these tests.
const LEASE_SECS: &str = "2";

/// Three homes (one per kernel, as on three machines) on one store.
struct Cluster {
    url: String,
    store: Arc<PostgresStore>,
    kernels: Vec<Kernel>,
    _homes: Vec<tempfile::TempDir>,
    /// The database's own cluster, for a test that restarts it (dropped
    /// last, after the kernels).
    database: Option<Arc<postgres_cluster::Cluster>>,
}

impl Cluster {
    async fn start(test: &str, lease: &str, own: bool) -> Self {
        Self::start_with(test, lease, own, "32").await
    }

    /// [`Cluster::start`] with `concurrency` attempts per kernel.
    async fn start_with(test: &str, lease: &str, own: bool, concurrency: &str) -> Self {
        let database = own.then(|| Arc::new(postgres_cluster::private(test)));
        let url = match &database {
            Some(cluster) => cluster.database(test).await,
            None => postgres_cluster::cluster().database(test).await,
        };
        let store = Arc::new(
            PostgresStore::open(&url, PostgresOptions::default())
                .await
                .expect("open the store"),
        );
        let homes: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("home")).collect();
        let kernels = homes
            .iter()
            .map(|home| {
                Kernel::start_with(
                    home.path(),
                    &[("LION_STORE", url.as_str())],
                    &["--lease-secs", lease, "--concurrency", concurrency],
                )
            })
            .collect();
        Self {
            database,
            url,
            store,
            _homes: homes,
            kernels,
        }
    }

    /// Submits `specs` as other processes do: by appending them.
    async fn submit(&self, specs: Vec<TaskSpec>) {
        for chunk in specs.chunks(500) {
            let events = chunk
                .iter()
                .map(|spec| {
                    NewEvent::new(
                        SystemEvent::TaskSubmitted {
                            task_id: Uuid::now_v7(),
                            spec: spec.clone(),
                        },
                        Uuid::now_v7(),
                    )
                })
                .collect();
            self.store
                .append(events, ExpectedVersion::Any)
                .await
                .expect("submit");
        }
    }

    /// How many tasks have ended.
    async fn ended(&self) -> usize {
        let all = count(self.store.as_ref(), TaskFilter::All).await;
        all - count(self.store.as_ref(), TaskFilter::Unfinished).await
    }

    /// Waits until at least `n` tasks have ended, woken by commits.
    async fn wait_ended(&self, n: usize) {
        tokio::time::timeout(GUARD, async {
            loop {
                let head = self.store.head().await.expect("head").seq;
                if self.ended().await >= n {
                    return;
                }
                self.store.wait_for_events(head).await.expect("wait");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("tasks never ended: {}", self.stderrs()));
    }

    /// Waits until no task is unfinished.
    async fn wait_all_ended(&self) {
        tokio::time::timeout(GUARD, async {
            loop {
                let head = self.store.head().await.expect("head").seq;
                if count(self.store.as_ref(), TaskFilter::Unfinished).await == 0 {
                    return;
                }
                self.store.wait_for_events(head).await.expect("wait");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("some tasks never ended: {}", self.stderrs()));
    }

    fn stderrs(&self) -> String {
        self.kernels
            .iter()
            .map(Kernel::stderr)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// Tasks `filter` selects.
async fn count(store: &dyn EventStore, filter: TaskFilter) -> usize {
    let mut n = 0;
    let mut after = agentic_core::Cursor::START;
    loop {
        let page = store.tasks(filter, after, 5000).await.expect("tasks");
        n += page.items.len();
        match page.next {
            Some(next) => after = next,
            None => return n,
        }
    }
}

/// The test's mix: echoes, tasks that fail once and succeed on a retry,
/// fan-outs with children, and sleeps with retries (in flight when a
/// kernel is lost).
fn mix(n: usize) -> Vec<TaskSpec> {
    let retried = |handler: &str, input: serde_json::Value, retries: u32| TaskSpec {
        retry: RetryPolicy {
            max_retries: retries,
            base_delay_ms: 10,
            max_delay_ms: 50,
            retry_interrupted: false,
        },
        ..TaskSpec::new(handler, input)
    };
    (0..n)
        .map(|i| match i % 20 {
            0 | 1 => retried("fail", json!({ "times": 1 }), 2),
            2 => retried("fanout", json!({ "n": 2, "input": { "child_of": i } }), 2),
            3 => retried("sleep", json!({ "ms": 200 }), 3),
            _ => TaskSpec::new("echo", json!({ "i": i })),
        })
        .collect()
}

/// What the log says about every attempt: per (task, attempt), how many
/// claims and how many outcomes; plus the interrupted attempts and the
/// starts of the attempts after them.
#[derive(Default)]
struct Attempts {
    claims: HashMap<(Uuid, u32), usize>,
    outcomes: HashMap<(Uuid, u32), usize>,
    interrupted: Vec<(Uuid, u32, bool)>,
}

async fn attempts(store: &dyn EventStore) -> Attempts {
    let mut a = Attempts::default();
    let mut next = 1;
    loop {
        let page = store.read_from(next, 5000).await.expect("read");
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for record in page {
            match record.decode().expect("decode") {
                SystemEvent::TaskStarted {
                    task_id, attempt, ..
                } => *a.claims.entry((task_id, attempt)).or_default() += 1,
                SystemEvent::TaskCompleted {
                    task_id, attempt, ..
                }
                | SystemEvent::TaskTimedOut {
                    task_id, attempt, ..
                } => *a.outcomes.entry((task_id, attempt)).or_default() += 1,
                SystemEvent::TaskFailed {
                    task_id,
                    attempt,
                    is_final,
                    interrupted,
                    ..
                } => {
                    *a.outcomes.entry((task_id, attempt)).or_default() += 1;
                    if interrupted {
                        a.interrupted.push((task_id, attempt, is_final));
                    }
                }
                _ => {}
            }
        }
    }
    a
}

/// Checks the promises: every claimed attempt has exactly one outcome,
/// every interrupted attempt that the policy retries was retried, and the
/// log verifies with projections matching a replay (through the CLI).
async fn check_the_log(cluster: &Cluster) -> Attempts {
    let a = attempts(cluster.store.as_ref()).await;
    for (attempt, claims) in &a.claims {
        assert_eq!(*claims, 1, "attempt {attempt:?} claimed {claims} times");
        assert_eq!(
            a.outcomes.get(attempt),
            Some(&1),
            "attempt {attempt:?} has no single outcome"
        );
    }
    for (attempt, outcomes) in &a.outcomes {
        assert_eq!(*outcomes, 1, "attempt {attempt:?} has {outcomes} outcomes");
        assert!(
            a.claims.contains_key(attempt),
            "attempt {attempt:?} ended without a claim"
        );
    }
    for (task, attempt, is_final) in &a.interrupted {
        if !is_final {
            assert!(
                a.claims.contains_key(&(*task, attempt + 1)),
                "interrupted attempt {attempt} of {task} was not retried"
            );
        }
    }
    let home = tempfile::tempdir().expect("home");
    for check in ["events", "replay"] {
        let mut cmd = lion_at(home.path());
        cmd.env("LION_STORE", &cluster.url).arg("--json").arg(check);
        if check == "events" {
            cmd.arg("verify");
        }
        let out = run(&mut cmd).success();
        assert_eq!(out.json()["ok"], true, "{}", out.stdout);
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kernels_run_ten_thousand_tasks_through_a_kill_and_a_pause() {
    let mut cluster = Cluster::start("three_kernels", LEASE_SECS, false).await;
    let specs = mix(10_000);
    let (first, rest) = specs.split_at(3_000);
    cluster.submit(first.to_vec()).await;
    cluster.wait_ended(1_500).await;
    // Kill one kernel mid-run: its claimed attempts are interrupted.
    let killed = cluster.kernels.remove(2);
    signal(killed.id(), "-KILL");
    drop(killed);
    cluster.submit(rest.to_vec()).await;
    cluster.wait_ended(5_000).await;
    // Pause another past its lease, then let it go on: it stops by itself.
    let paused = cluster.kernels[1].id();
    signal(paused, "-STOP");
    // Work goes on meanwhile, so commits keep coming: look at the
    // registry at each until the survivor has expired the paused kernel.
    let expired = async {
        loop {
            let head = cluster.store.head().await.expect("head").seq;
            let kernels = KernelRegistry::kernels(cluster.store.as_ref())
                .await
                .expect("kernels");
            let expired = kernels
                .iter()
                .filter(|k| k.state == KernelState::Expired)
                .count();
            if expired >= 2 {
                return;
            }
            cluster.store.wait_for_events(head).await.expect("wait");
        }
    };
    tokio::time::timeout(GUARD, expired)
        .await
        .expect("the paused kernel never expired");
    signal(paused, "-CONT");
    let status = tokio::time::timeout(
        GUARD,
        tokio::task::spawn_blocking({
            let mut woken = cluster.kernels.remove(1);
            move || (woken.wait(), woken.stderr())
        }),
    )
    .await
    .expect("the woken kernel went on instead of stopping")
    .expect("join");
    assert!(
        !status.0.success(),
        "the woken kernel went on: {}",
        status.1
    );
    assert!(status.1.contains("lease ran out"), "{}", status.1);
    cluster.wait_all_ended().await;
    let a = check_the_log(&cluster).await;
    assert!(
        !a.interrupted.is_empty(),
        "no attempt was interrupted: the kill and pause tested nothing"
    );
    // Every task ended as it should: the failing ones on their retry.
    let failed: Vec<_> = {
        let mut failed = Vec::new();
        let mut after = agentic_core::Cursor::START;
        loop {
            let page = cluster
                .store
                .tasks(TaskFilter::All, after, 5000)
                .await
                .expect("tasks");
            failed.extend(
                page.items
                    .into_iter()
                    .filter(|t| t.status != agentic_core::TaskStatus::Completed),
            );
            match page.next {
                Some(next) => after = next,
                None => break failed,
            }
        }
    };
    // Only a task with no retry left may end failed, and only because its
    // kernel was lost (an echo, which has no retries, say).
    for task in &failed {
        let error = task.error.clone().unwrap_or_default();
        assert!(
            error.contains("interrupted"),
            "task {} ended {:?}: {error}",
            task.id,
            task.status
        );
    }
    let all = count(cluster.store.as_ref(), TaskFilter::All).await;
    assert!(
        all >= 10_000 + 1_000,
        "{all} tasks: fan-outs' children are missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kernels_ride_out_a_database_restart() {
    // Its own PostgreSQL: the shared one serves the tests beside it.
    let cluster = Cluster::start("database_restart", "15", true).await;
    let specs = mix(2_000);
    cluster.submit(specs).await;
    cluster.wait_ended(500).await;
    let database = cluster.database.clone().expect("its own cluster");
    tokio::task::spawn_blocking(move || database.crash_and_restart())
        .await
        .expect("restart");
    cluster.wait_all_ended().await;
    check_the_log(&cluster).await;
    // Every kernel rode it out: none stopped with an error.
    for kernel in &cluster.kernels {
        let stderr = kernel.stderr();
        assert!(
            !stderr.lines().any(|l| l.starts_with("error:")),
            "a kernel failed: {stderr}"
        );
    }
}

/// Sends a signal (`-KILL`, `-STOP`, `-CONT`) to a kernel, with kill(1).
fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Both shared-store benches run end to end on a real server (figures from
/// a quick run mean little: only that every path works and the table
/// carries its same-run baselines and verdicts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_store_benches_run_beside_their_baselines() {
    let server = postgres_cluster::cluster().url("postgres");
    let home = tempfile::tempdir().expect("home");
    for (args, baseline) in [
        (
            vec!["bench", "store", "--quick", "--appenders", "1,4"],
            "raw inserts",
        ),
        (
            vec!["bench", "claims", "--quick", "--tasks", "200"],
            "bare SKIP LOCKED queue",
        ),
    ] {
        let mut cmd = lion_at(home.path());
        cmd.arg("--store").arg(&server).args(&args);
        let out = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .expect("join")
            .success();
        assert!(out.stdout.contains(baseline), "{}", out.stdout);
        if args[1] == "store" {
            // Three kernels beside raw writers taking turns as they do.
            assert!(
                out.stdout.contains("taking turns on a head row"),
                "{}",
                out.stdout
            );
        }
        // Judged in the flush state the server's commits were in.
        assert!(out.stdout.contains("flush regime"), "{}", out.stdout);
        let verdicts = out.stdout.to_lowercase();
        assert!(
            verdicts.contains("pass") || verdicts.contains("fail"),
            "{}",
            out.stdout
        );
    }
    // Without a shared store, the claims bench says what it needs.
    let mut cmd = lion_at(home.path());
    cmd.args(["bench", "claims", "--quick"]);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--store postgres://"), "{}", out.stderr);
}

/// Regression: with a shared store nothing made the home, so `lion run`
/// on a new home failed at its lock file. The home is made as a SQLite
/// store's opening makes it; the kernel joins and leaves the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_on_a_shared_store_makes_its_home_and_is_listed() {
    let url = postgres_cluster::cluster().database("new_home").await;
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("new-home");
    let kernel = Kernel::start_with(&home, &[("LION_STORE", url.as_str())], &[]);
    assert!(home.is_dir());
    let other = dir.path().join("other");
    let mut cmd = lion_at(&other);
    cmd.env("LION_STORE", &url)
        .args(["--json", "kernel", "list"]);
    let listed = tokio::task::spawn_blocking(move || run(&mut cmd).success().json())
        .await
        .expect("join");
    assert_eq!(listed["shared"], true);
    assert_eq!(listed["kernels"][0]["state"], "alive", "{listed}");
    assert_eq!(listed["kernels"][0]["pid"], kernel.id(), "{listed}");

    // The API (and so the dashboard's Kernels view) lists both kernels:
    // the one of `lion run` and the server's own, with their heartbeats
    // and claims.
    let served = dir.path().join("served");
    let server = support::serve::Server::start(&served, &[("LION_STORE", url.as_str())], &[]);
    let kernels = server.api().get("/kernels").await.json();
    assert_eq!(kernels["shared"], true, "{kernels}");
    let listed = kernels["kernels"].as_array().expect("kernels");
    let mut pids: Vec<u64> = listed.iter().filter_map(|k| k["pid"].as_u64()).collect();
    pids.sort_unstable();
    let mut expected = vec![u64::from(kernel.id()), u64::from(server.id())];
    expected.sort_unstable();
    assert_eq!(pids, expected, "{kernels}");
    for k in listed {
        assert_eq!(k["state"], "alive", "{k}");
        assert!(k["heartbeat_at"].is_string(), "{k}");
        assert_eq!(k["claims"], 0, "{k}");
    }
}

/// `lion --home <home> [--store <url>] <args…>`, run to completion off the
/// async runtime.
async fn lion(home: &std::path::Path, store: Option<&str>, args: &[&str]) -> support::Run {
    let mut cmd = lion_at(home);
    if let Some(url) = store {
        cmd.args(["--store", url]);
    }
    cmd.args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_moves_to_postgres_and_back_with_its_whole_history() {
    let url = postgres_cluster::cluster().database("store_copy").await;
    let url = url.as_str();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for n in 0..3 {
        let metadata = format!("{{\"n\":{n}}}");
        lion(&a, None, &["element", "create", "--metadata", &metadata])
            .await
            .success();
    }
    for key in ["one", "two"] {
        let args = ["task", "submit", "--handler", "echo", "--input", "{}"];
        let mut args = args.to_vec();
        args.extend(["--idempotency-key", key, "--wait"]);
        lion(&a, None, &args).await.success();
    }
    let list = async |home: &std::path::Path, store: Option<&str>| {
        lion(
            home,
            store,
            &["--json", "events", "list", "--limit", "1000"],
        )
        .await
        .success()
        .json_lines()
    };
    let manifest = support::plugin_dist().join("calculator/plugin.toml");
    let manifest = manifest.to_str().expect("utf-8 path");
    lion(&a, None, &["plugin", "install", manifest])
        .await
        .success();
    let history = list(&a, None).await;

    // Not while a kernel serves the destination (it would write to it).
    let mut kernel = Kernel::start_with(&dir.path().join("k"), &[("LION_STORE", url)], &[]);
    let served = lion(&a, None, &["store", "copy", "--to", url]).await;
    assert!(
        served.error_line(1).contains("kernel(s) serve"),
        "{served:?}"
    );
    // Stopped cleanly, it leaves the registry.
    signal(kernel.id(), "-TERM");
    assert!(kernel.wait().success(), "{}", kernel.stderr());

    // To PostgreSQL: the same records, a verified chain, matching projections.
    let copied = lion(&a, None, &["--json", "store", "copy", "--to", url])
        .await
        .success()
        .json();
    assert_eq!(copied["copied"], history.len(), "{copied}");
    assert_eq!(copied["verified"], true);
    assert_eq!(copied["plugin_components"], 1, "{copied}");
    assert_eq!(list(&a, Some(url)).await, history);
    // The plugin runs from a home that never installed it.
    let add = [
        "--json",
        "plugin",
        "call",
        "calculator",
        "add",
        "--input",
        r#"{"a":1,"b":2}"#,
    ];
    let sum = lion(&dir.path().join("d"), Some(url), &add)
        .await
        .success()
        .json();
    assert_eq!(sum["value"], 3.0, "{sum}");
    lion(&a, Some(url), &["events", "verify"]).await.success();
    lion(&a, Some(url), &["replay"]).await.success();
    let task = lion(&a, Some(url), &["--json", "task", "list"])
        .await
        .success()
        .json();
    assert_eq!(task.as_array().map(Vec::len), Some(2), "{task}");

    // The log goes on in PostgreSQL, and comes back to a new home.
    lion(&a, Some(url), &["element", "create"]).await.success();
    let b_str = b.to_str().expect("utf-8 path");
    let back = lion(&a, Some(url), &["--json", "store", "copy", "--to", b_str])
        .await
        .success()
        .json();
    let shared = list(&a, Some(url)).await.len();
    assert_eq!(back["copied"], shared, "{back}");
    assert_eq!(back["plugin_components"], 1, "{back}");
    let moved = list(&b, None).await;
    assert_eq!(moved[..history.len()], history[..]);
    assert_eq!(moved.len(), shared);
    lion(&b, None, &["events", "verify"]).await.success();
    lion(&b, None, &["replay"]).await.success();

    // A copy that stopped part-way (or was outrun) is continued.
    lion(&a, Some(url), &["element", "create"]).await.success();
    let resumed = lion(&a, Some(url), &["--json", "store", "copy", "--to", b_str])
        .await
        .success()
        .json();
    assert_eq!(resumed["already_there"], shared, "{resumed}");
    assert_eq!(resumed["copied"], 1, "{resumed}");

    // Nothing is overwritten: a longer log, another log, itself.
    let longer = lion(&a, None, &["store", "copy", "--to", url]).await;
    assert!(longer.error_line(1).contains("longer"), "{longer:?}");
    lion(&c, None, &["element", "create"]).await.success();
    let c_str = c.to_str().expect("utf-8 path");
    let other = lion(&a, None, &["store", "copy", "--to", c_str]).await;
    assert!(other.error_line(1).contains("different log"), "{other:?}");
    assert_eq!(list(&c, None).await.len(), 1, "the other log is untouched");
    let a_str = a.to_str().expect("utf-8 path");
    let itself = lion(&a, None, &["store", "copy", "--to", a_str]).await;
    assert!(itself.error_line(1).contains("same store"), "{itself:?}");
    assert_eq!(list(&a, None).await, history);
    // The home the log came back to runs the plugin from its own files.
    let sum = lion(&b, None, &add).await.success().json();
    assert_eq!(sum["value"], 3.0, "{sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_task_cancels_its_children_on_every_kernel() {
    // Four attempts per kernel: the parent's kernel can run only three of
    // its nine children, so the others run elsewhere.
    let cluster = Cluster::start_with("cancel_tree", "10", false, "4").await;
    let parent = Uuid::now_v7();
    let spec = TaskSpec::new(
        "fanout",
        json!({ "n": 9, "handler": "sleep", "input": { "ms": 60_000 } }),
    );
    cluster
        .store
        .append(
            vec![NewEvent::new(
                SystemEvent::TaskSubmitted {
                    task_id: parent,
                    spec,
                },
                Uuid::now_v7(),
            )],
            ExpectedVersion::Any,
        )
        .await
        .expect("submit");
    // Every child running, on more than one kernel.
    let store = cluster.store.as_ref();
    let children = tokio::time::timeout(GUARD, async {
        loop {
            let head = store.head().await.expect("head").seq;
            let task = store.task(parent).await.expect("read").expect("parent");
            let mut running = Vec::new();
            for child in &task.children {
                let record = store.task(*child).await.expect("read").expect("child");
                if record.status == TaskStatus::Running {
                    running.push(record);
                }
            }
            if running.len() == 9 {
                return running;
            }
            store.wait_for_events(head).await.expect("wait");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the children never all ran: {}", cluster.stderrs()));
    let kernels: std::collections::HashSet<_> = children.iter().map(|c| c.kernel).collect();
    assert!(
        kernels.len() > 1,
        "all children ran on one kernel: {kernels:?}"
    );

    let home = tempfile::tempdir().expect("home");
    let id = parent.to_string();
    lion(home.path(), Some(&cluster.url), &["task", "cancel", &id])
        .await
        .success();
    cluster.wait_all_ended().await;
    for child in children {
        let record = store.task(child.id).await.expect("read").expect("child");
        assert_eq!(
            record.status,
            TaskStatus::Cancelled,
            "child {} (kernel {:?}) was not cancelled: {record:?}",
            child.id,
            child.kernel
        );
    }
    for check in [&["events", "verify"][..], &["replay"][..]] {
        lion(home.path(), Some(&cluster.url), check).await.success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_the_subscribers_of_every_kernel() {
    use tokio::io::AsyncBufReadExt;

    let url = postgres_cluster::cluster().database("live_relay").await;
    let store = PostgresStore::open(&url, PostgresOptions::default())
        .await
        .expect("open the store");
    let (a, b) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("home"),
    );
    let env = [("LION_STORE", url.as_str())];
    let _kernels = [
        Kernel::start_with(a.path(), &env, &[]),
        Kernel::start_with(b.path(), &env, &[]),
    ];
    // A watcher of each kernel's live stream (as on two machines).
    let mut watchers = Vec::new();
    for home in [a.path(), b.path()] {
        let socket = tokio::net::UnixStream::connect(home.join("kernel.sock"))
            .await
            .expect("connect to a kernel's live stream");
        watchers.push(tokio::io::BufReader::new(socket).lines());
    }
    // A task one of them runs: it reports progress (live, committed later)
    // halfway through.
    let task_id = Uuid::now_v7();
    let spec = TaskSpec::new("sleep", json!({ "ms": 1_000 }));
    let submitted = SystemEvent::TaskSubmitted { task_id, spec };
    store
        .append(
            vec![NewEvent::new(submitted, Uuid::now_v7())],
            ExpectedVersion::Any,
        )
        .await
        .expect("submit");
    // The other kernel's watcher sees it, marked with the kernel it
    // happened on (the runner's own stream does not mark its events).
    let (mut second, mut first) = (watchers.pop().expect("b"), watchers.pop().expect("a"));
    let relayed = tokio::time::timeout(GUARD, async {
        loop {
            let line = tokio::select! {
                line = first.next_line() => line,
                line = second.next_line() => line,
            };
            let line = line.expect("read").expect("a line");
            let line: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            if line["event"]["task_progress"]["task_id"] == json!(task_id)
                && !line["kernel"].is_null()
            {
                return line;
            }
        }
    })
    .await
    .expect("the progress never reached the other kernel's stream");
    assert_eq!(relayed["seq"], serde_json::Value::Null, "{relayed}");
    let runner = store
        .task(task_id)
        .await
        .expect("read")
        .expect("task")
        .kernel;
    assert_eq!(relayed["kernel"], json!(runner), "{relayed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_installed_on_one_machine_runs_on_another() {
    let url = postgres_cluster::cluster().database("plugin_blobs").await;
    let url = url.as_str();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let manifest = support::plugin_dist().join("calculator/plugin.toml");
    let manifest = manifest.to_str().expect("utf-8 path");
    lion(&a, Some(url), &["plugin", "install", manifest])
        .await
        .success();
    // Another home (machine) has no file of it, and calls it.
    let input = r#"{"a":2,"b":3}"#;
    let call = [
        "--json",
        "plugin",
        "call",
        "calculator",
        "add",
        "--input",
        input,
    ];
    let out = lion(&b, Some(url), &call).await.success().json();
    assert_eq!(out["value"], 5.0, "{out}");
    // The component it fetched is the one installed, by its hash.
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let sha = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .expect("the manifest's sha256")
        .trim_matches('"');
    let kept = b.join("plugins/components").join(format!("{sha}.wasm"));
    assert!(kept.is_file(), "no component at {}", kept.display());
}

/// The next event of workflow run `run` of type `kind` in `log`.
async fn run_event(
    log: &mut agentic_core::store::Subscription,
    run: Uuid,
    kind: &str,
) -> agentic_core::workflow::run::RunEvent {
    tokio::time::timeout(GUARD, async {
        loop {
            let record = log.next().await.expect("read the log");
            if let Ok(SystemEvent::WorkflowRecorded { run: r, event }) = record.decode()
                && r == run
                && serde_json::to_value(&*event).expect("JSON")["type"] == kind
            {
                return *event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("run {run} never recorded {kind}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_run_goes_on_when_one_of_two_kernels_is_killed() {
    let url = postgres_cluster::cluster().database("workflow_kill").await;
    let url = url.as_str();
    let dir = tempfile::tempdir().expect("dir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let manifest = support::plugin_dist().join("kv_counter/plugin.toml");
    lion(
        &a,
        Some(url),
        &[
            "plugin",
            "install",
            manifest.to_str().expect("utf-8"),
            "--grant-all",
        ],
    )
    .await
    .success();
    let effects: String = (1..=6)
        .map(|i| format!("{{{{ steps.s{i}.output.effects }}}}"))
        .collect();
    let mut flow = format!("name = \"shared\"\n[output]\nvalue = \"{effects}\"\n");
    for i in 1..=6 {
        let after = match i {
            1 => String::new(),
            4 => "\"ask\"".to_owned(),
            _ => format!("\"s{}\"", i - 1),
        };
        flow.push_str(&format!(
            "[steps.s{i}]\nkind = \"plugin\"\nplugin = \"kv_counter\"\nfunction = \"once\"\n\
             input = {{ key = \"{{{{ key }}}}\" }}\nafter = [{after}]\n"
        ));
    }
    flow.push_str(
        "[steps.ask]\nkind = \"approval\"\nprompt = \"on?\"\ntimeout = \"1h\"\nafter = [\"s3\"]\n",
    );
    let file = dir.path().join("shared.toml");
    std::fs::write(&file, flow).expect("definition");
    let env = [("LION_STORE", url)];
    let args = ["--lease-secs", LEASE_SECS];
    let first = Kernel::start_with(&a, &env, &args);
    let second = Kernel::start_with(&b, &env, &args);
    let store: Arc<dyn EventStore> = Arc::new(
        PostgresStore::open(url, PostgresOptions::default())
            .await
            .expect("open the store"),
    );
    let mut log = store.clone().subscribe(1);
    let started = lion(
        &a,
        Some(url),
        &["workflow", "run", file.to_str().expect("utf-8"), "--json"],
    )
    .await
    .success()
    .json();
    let run: Uuid = started["run"].as_str().expect("id").parse().expect("uuid");
    // Mid-run: one kernel dies; the other goes on alone.
    run_event(&mut log, run, "step_scheduled").await;
    drop(first);
    run_event(&mut log, run, "approval_requested").await;
    lion(
        &b,
        Some(url),
        &["workflow", "approve", &run.to_string(), "ask"],
    )
    .await
    .success();
    let agentic_core::workflow::run::RunEvent::Completed { output } =
        run_event(&mut log, run, "completed").await
    else {
        unreachable!()
    };
    assert_eq!(output, json!("111111"), "{}", second.stderr());
    let status = lion(
        &b,
        Some(url),
        &["--json", "workflow", "status", &run.to_string()],
    )
    .await
    .success()
    .json();
    assert_eq!(status["status"], "completed");
    lion(&b, Some(url), &["events", "verify"]).await.success();
}
