//! The process's descriptor budget for plugins: a flood of concurrent
//! calls, each holding as many files open as its manifest allows, leaves
//! the host able to open files, and a good call succeeds after it. The
//! test lowers this process's descriptor limit, so it has a binary of its
//! own, and sets it before the sandbox is made (which raises the soft
//! limit and sizes the budget once per process).

mod support;

use agentic_core::plugin::FailureKind;
use agentic_wasm::descriptors::{PLUGINS_SHARE_DIVISOR, plugin_descriptors};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde_json::json;
use support::{abuse_home, failure};

/// The descriptor limit the test gives the process (soft and hard).
const LIMIT: u64 = 512;

/// Each flood call's `max_open_handles`: it reserves this, one for its
/// directory and one for a connection.
const HANDLES: u64 = 100;

/// Files each flood call opens (its table also holds its directory and
/// stdio streams) before it spins until its timeout.
const OPENED: u64 = 90;

/// Flood calls at once: together they would hold far more than `LIMIT`.
const FLOOD: usize = 8;

/// Descriptors in use by this process.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn a_flood_of_handle_hungry_calls_leaves_the_host_descriptors() {
    // Before any sandbox exists: a hard limit the flood could exhaust.
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(LIMIT / 4),
            maximum: Some(LIMIT),
        },
    )
    .expect("lower the descriptor limit");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(flood());
}

async fn flood() {
    let tree = tempfile::tempdir().expect("tree");
    let granted = tree.path().join("granted");
    std::fs::create_dir(&granted).expect("mkdir");
    std::fs::write(granted.join("inside.txt"), "inside").expect("write");
    let (home, _s) = abuse_home(
        &format!(
            "[[permissions.dirs]]\npath = {:?}\nguest = \"/data\"\nmode = \"read-only\"",
            granted.display().to_string()
        ),
        &format!("max_open_handles = {HANDLES}\nmax_concurrency = 16\ntimeout_ms = 1000"),
        &[&format!("dir:/data={}:ro", granted.display())],
    )
    .await;
    // The sandbox raised the soft limit to the hard one, and gave plugins
    // half of it.
    assert_eq!(getrlimit(Resource::Nofile).current, Some(LIMIT));
    let mut usage = plugin_descriptors();
    let budget = usage.borrow().budget;
    assert_eq!(u64::from(budget), LIMIT / PLUGINS_SHARE_DIVISOR);
    let before = open_descriptors();

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let manager = home.manager.clone();
        calls.spawn(async move {
            let input = json!({"path": "/data/inside.txt", "count": OPENED, "spin": true});
            manager
                .call(
                    "abuse",
                    "open_files",
                    &input.to_string(),
                    Default::default(),
                )
                .await
        });
    }
    // The budget is full and calls wait for room.
    let reserve = u32::try_from(HANDLES + 2).expect("small");
    usage
        .wait_for(|u| u.reserved + reserve > budget && u.waiting > 0)
        .await
        .expect("the budget's watch");
    // The running calls hold their files (they open them first thing).
    let running = u64::from(usage.borrow().reserved) / (HANDLES + 2);
    while (open_descriptors() as u64) < before as u64 + running * OPENED {
        tokio::task::yield_now().await;
    }
    // The host can still open files: the half of the limit plugins may
    // not hold, less what it held before the flood and a margin.
    let host_may_open = (LIMIT / 2) as usize - before - 16;
    let held: Vec<std::fs::File> = (0..host_may_open)
        .map(|i| {
            std::fs::File::open(granted.join("inside.txt"))
                .unwrap_or_else(|e| panic!("the host's file {i} during the flood: {e}"))
        })
        .collect();
    drop(held);
    // Every flood call ended at its timeout or found no room: none failed
    // for want of a descriptor.
    while let Some(result) = calls.join_next().await {
        let f = failure(result.expect("join").expect_err("the flood fails"));
        match f.kind {
            FailureKind::Timeout => {}
            FailureKind::Host => assert!(f.message.contains("no room for the"), "{f}"),
            other => panic!("{other:?}: {f}"),
        }
    }
    assert_eq!(usage.borrow().reserved, 0, "every reservation given back");
    // A good call succeeds after the flood.
    let hello = home
        .call("hello_world", "greet", json!({"name": "Ada"}))
        .await
        .expect("a good call");
    assert_eq!(hello, json!({"greeting": "Hello, Ada!"}));
}
