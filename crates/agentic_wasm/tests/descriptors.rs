//! The process's descriptor budget for plugins: a flood of concurrent
//! calls, each holding as many files open as its manifest allows, leaves
//! the host able to open files, the calls that had to wait for room run
//! in their turn, and a good call succeeds after them. The
//! test lowers this process's descriptor limit, so it has a binary of its
//! own, and sets it before the sandbox is made (which raises the soft
//! limit and sizes the budget once per process).

mod support;

use agentic_wasm::descriptors::{PLUGINS_SHARE_DIVISOR, plugin_descriptors};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde_json::json;
use std::sync::Arc;
use support::{abuse_home, failure};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The descriptor limit the test gives the process (soft and hard).
const LIMIT: u64 = 512;

/// Each flood call's `max_open_handles`: it reserves this, one for its
/// directory and two for a connection.
const HANDLES: u64 = 100;

/// Files each flood call opens (its table also holds its directory and
/// stdio streams) before it waits at the test's gate.
const OPENED: u64 = 90;

/// Flood calls at once: together they would hold far more than `LIMIT`.
const FLOOD: usize = 8;

/// An HTTP listener that holds every request until released, then
/// answers each at once: a flood call holds its files while it waits.
struct Gate {
    /// The listener's address, as `host:port`.
    address: String,
    /// Requests held so far.
    held: watch::Receiver<usize>,
    /// Answers the held requests, and every later one at once.
    release: Arc<Notify>,
}

impl Gate {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let (count, held) = watch::channel(0);
        let release = Arc::new(Notify::new());
        let released = release.clone();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            let mut open = true;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { return };
                        if open {
                            waiting.push(socket);
                            count.send_modify(|n| *n += 1);
                        } else {
                            answer(socket).await;
                        }
                    }
                    () = released.notified(), if open => {
                        open = false;
                        for socket in waiting.drain(..) {
                            answer(socket).await;
                        }
                    }
                }
            }
        });
        Self {
            address,
            held,
            release,
        }
    }
}

/// Answers a held request with a short 200.
async fn answer(mut socket: TcpStream) {
    let _ = socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
}

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
    let mut gate = Gate::start().await;
    let address = gate.address.clone();
    let (home, _s) = abuse_home(
        &format!(
            "hosts = [{address:?}]\n[[permissions.dirs]]\npath = {:?}\nguest = \"/data\"\nmode = \"read-only\"",
            granted.display().to_string()
        ),
        // A timeout no flood call reaches: they wait at the gate, and for
        // room, only until the test lets them go on.
        &format!("max_open_handles = {HANDLES}\nmax_concurrency = 16\ntimeout_ms = 600000"),
        &[
            &format!("dir:/data={}:ro", granted.display()),
            "interface:http",
            &format!("host:{address}"),
        ],
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
        let input = json!({
            "path": "/data/inside.txt",
            "count": OPENED,
            "hold": format!("http://{address}/"),
        });
        calls.spawn(async move {
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
    let reserve = u32::try_from(HANDLES + 3).expect("small");
    usage
        .wait_for(|u| u.reserved + reserve > budget && u.waiting > 0)
        .await
        .expect("the budget's watch");
    // Every running call holds its files: it opened them, then asked the
    // gate, which holds it.
    let running = usize::try_from(usage.borrow().reserved / reserve).expect("small");
    assert!(running > 0, "some calls run");
    gate.held
        .wait_for(|held| *held >= running)
        .await
        .expect("the gate");
    assert!(
        open_descriptors() >= before + running * OPENED as usize,
        "the running calls hold their files"
    );
    // The host can still open files: the half of the limit plugins may
    // not hold, less what it held before the flood and a margin (the
    // gate's side of each held connection among it).
    let host_may_open = (LIMIT / 2) as usize - before - running - 16;
    let held: Vec<std::fs::File> = (0..host_may_open)
        .map(|i| {
            std::fs::File::open(granted.join("inside.txt"))
                .unwrap_or_else(|e| panic!("the host's file {i} during the flood: {e}"))
        })
        .collect();
    drop(held);
    gate.release.notify_one();
    // Every flood call ran in its turn and opened all its files: none
    // failed for want of a descriptor.
    while let Some(result) = calls.join_next().await {
        match result.expect("join") {
            Ok(out) => assert_eq!(out["opened"], OPENED, "{out}"),
            Err(e) => panic!("a flood call failed: {}", failure(e)),
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
