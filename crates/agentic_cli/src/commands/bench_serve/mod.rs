//! `lion bench serve`: `lion serve`'s stack under load, beside bare axum
//! baselines measured in the same run, interleaved round by round:
//!
//! - `GET /elements/{id}` (token, access checks, metrics, a store read)
//!   against a bare axum handler answering the same JSON — target: within
//!   2x (p50 latency and requests/s);
//! - `POST /tasks` (a durable submission, answered 202) against the same
//!   submission made in process;
//! - the log streamed to 100 SSE subscribers: events/s delivered and the
//!   wait from an event's commit to its arrival, against a bare axum SSE
//!   endpoint fed by a tokio broadcast — target: p99 within 2x.
//!
//! Client and server share this process and its cores, the baselines
//! too: only the ratios mean anything, and they are what is judged.

mod load;
mod stack;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentic_core::{ElementData, ExpectedVersion, NewEvent, SystemEvent, TaskSpec};
use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::Ctx;
use crate::{home, output};
use load::{Latencies, Request, Stamps, Subscribers, hammer};
use stack::{Bare, Lion};

/// What `lion bench serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// A short run that only checks every path works.
    pub quick: bool,
    /// Where to make the scratch home.
    pub dir: Option<PathBuf>,
}

/// Keep-alive clients sending requests at once.
const CLIENTS: usize = 8;
/// Rounds of each measurement, lion and baseline taking turns.
const ROUNDS: usize = 3;
/// SSE subscribers.
const SUBSCRIBERS: usize = 100;
/// Events per second the SSE producer commits (or sends).
const EVENT_RATE: u64 = 200;

/// Sizes of a run.
struct Plan {
    turn: Duration,
    subscribers: usize,
    events: usize,
}

/// `lion bench serve`.
pub async fn run(ctx: Ctx, opts: ServeBench) -> Result<()> {
    let plan = if opts.quick {
        Plan {
            turn: Duration::from_millis(200),
            subscribers: 10,
            events: 20,
        }
    } else {
        Plan {
            turn: Duration::from_secs(2),
            subscribers: SUBSCRIBERS,
            events: 1000,
        }
    };
    let scratch = opts
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("lion-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = measure(ctx, opts.quick, &plan, &scratch.join("home")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Runs every measurement on a scratch home at `home_dir` and reports.
async fn measure(ctx: Ctx, quick: bool, plan: &Plan, home_dir: &std::path::Path) -> Result<()> {
    let store = home::open(home_dir, &home::StoreAt::Home, true).await?;
    errln!("bench: starting lion's stack and the bare baselines…");
    let lion = Lion::start(home_dir, store.clone(), ctx).await?;
    let http = reqwest::Client::new();
    let created: Value = serde_json::from_slice(
        &http
            .post(format!("{}/elements", lion.url))
            .bearer_auth(&lion.token)
            .header("content-type", "application/json")
            .body(
                json!({"metadata": {"kind": "bench"}, "content": "a body to read back"})
                    .to_string(),
            )
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?,
    )?;
    let id = created["id"].as_str().context("no element id")?.to_owned();
    let element_url = format!("{}/elements/{id}", lion.url);
    let body = http
        .get(&element_url)
        .bearer_auth(&lion.token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let event_json: Value = serde_json::from_slice(
        &http
            .get(format!("{}/events?limit=1", lion.url))
            .bearer_auth(&lion.token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?,
    )?;
    let event_text: Arc<str> = event_json["items"][0].to_string().into();
    let (feed, _) = broadcast::channel(4096);
    let bare = Bare::start(Bytes::from(body.to_vec()), feed.clone()).await?;

    errln!("bench: GET an element…");
    let lion_get = Request {
        body: None,
        url: element_url,
        token: Some(lion.token.clone()),
        status: 200,
    };
    let bare_get = Request {
        body: None,
        url: format!("{}/elements/{id}", bare.url),
        token: None,
        status: 200,
    };
    let task: Value = serde_json::from_slice(
        &http
            .post(format!("{}/tasks", lion.url))
            .bearer_auth(&lion.token)
            .header("content-type", "application/json")
            .body(json!({"handler": "echo", "input": 1, "wait": true}).to_string())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?,
    )?;
    let lion_task = Request {
        body: None,
        url: format!(
            "{}/tasks/{}",
            lion.url,
            task["id"].as_str().context("no task id")?
        ),
        token: Some(lion.token.clone()),
        status: 200,
    };
    let (mut get_lion, mut get_bare) = (Latencies::default(), Latencies::default());
    let mut get_task = Latencies::default();
    for _ in 0..ROUNDS {
        get_bare = get_bare.merge(hammer(bare_get.clone(), CLIENTS, plan.turn).await?);
        get_lion = get_lion.merge(hammer(lion_get.clone(), CLIENTS, plan.turn).await?);
        get_task = get_task.merge(hammer(lion_task.clone(), CLIENTS, plan.turn).await?);
    }

    errln!("bench: POST a durable task…");
    let lion_post = Request {
        body: Some(json!({"handler": "echo", "input": 1}).to_string()),
        url: format!("{}/tasks", lion.url),
        token: Some(lion.token.clone()),
        status: 202,
    };
    let (mut post_lion, mut post_here) = (Latencies::default(), Latencies::default());
    for _ in 0..ROUNDS {
        post_here = post_here.merge(in_process(&lion, CLIENTS, plan.turn).await?);
        post_lion = post_lion.merge(hammer(lion_post.clone(), CLIENTS, plan.turn).await?);
    }

    errln!(
        "bench: {} events to {} SSE subscribers…",
        plan.events,
        plan.subscribers
    );
    let sse_bare = sse_bare(&bare, &feed, &event_text, plan).await?;
    let sse_lion = sse_lion(&lion, plan).await?;

    let runs = Runs {
        get_lion,
        get_bare,
        get_task,
        post_lion,
        post_here,
        sse_lion,
        sse_bare,
    };
    report(ctx, quick, &runs)
}

/// `clients` loops submitting the same task in process, each answered
/// once recorded, as `POST /tasks` is.
async fn in_process(lion: &Lion, clients: usize, duration: Duration) -> Result<Latencies> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let orchestrator = lion.orchestrator.clone();
        workers.push(tokio::spawn(async move {
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                orchestrator.submit(TaskSpec::new("echo", json!(1))).await?;
                micros.push(sent.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut micros = Vec::new();
    for worker in workers {
        micros.extend(worker.await??);
    }
    micros.sort_by(f64::total_cmp);
    Ok(Latencies {
        micros,
        elapsed: start.elapsed(),
    })
}

/// The bare endpoint: `plan.events` sends at [`EVENT_RATE`], each stamped
/// as it is sent.
async fn sse_bare(
    bare: &Bare,
    feed: &broadcast::Sender<(u64, Arc<str>)>,
    data: &Arc<str>,
    plan: &Plan,
) -> Result<Latencies> {
    let url = format!("{}/stream", bare.url);
    let subscribers = Subscribers::open(plan.subscribers, &url, None, plan.events).await?;
    let stamps: Stamps = Arc::new(Mutex::new(Default::default()));
    let start = Instant::now();
    let mut pace = pacer();
    for seq in 1..=plan.events as u64 {
        pace.tick().await;
        let _ = feed.send((seq, data.clone()));
        stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, Instant::now());
    }
    subscribers.finish(&stamps, start).await
}

/// lion's stream: `plan.events` element creations committed at
/// [`EVENT_RATE`], each stamped once its append returns.
async fn sse_lion(lion: &Lion, plan: &Plan) -> Result<Latencies> {
    let from = lion.store.head().await?.seq + 1;
    let url = format!(
        "{}/events/stream?from={from}&type=element_created",
        lion.url
    );
    let subscribers =
        Subscribers::open(plan.subscribers, &url, Some(&lion.token), plan.events).await?;
    let stamps: Stamps = Arc::new(Mutex::new(Default::default()));
    let start = Instant::now();
    let mut pace = pacer();
    for _ in 0..plan.events {
        pace.tick().await;
        let element = ElementData::new(Default::default(), Some("a body to read back".into()));
        let event = NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7());
        let receipt = lion
            .store
            .append(vec![event], ExpectedVersion::NoStream)
            .await?;
        stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(receipt.first_seq, Instant::now());
    }
    subscribers.finish(&stamps, start).await
}

fn pacer() -> tokio::time::Interval {
    let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / EVENT_RATE));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pace
}

/// What every measurement gave.
struct Runs {
    get_lion: Latencies,
    get_bare: Latencies,
    get_task: Latencies,
    post_lion: Latencies,
    post_here: Latencies,
    sse_lion: Latencies,
    sse_bare: Latencies,
}

fn report(ctx: Ctx, quick: bool, runs: &Runs) -> Result<()> {
    let Runs {
        get_lion,
        get_bare,
        get_task,
        post_lion,
        post_here,
        sse_lion,
        sse_bare,
    } = runs;
    let get_ratio = get_lion.quantile(0.5) / get_bare.quantile(0.5).max(f64::MIN_POSITIVE);
    let get_rate_ratio = get_bare.rate() / get_lion.rate().max(f64::MIN_POSITIVE);
    let sse_ratio = sse_lion.quantile(0.99) / sse_bare.quantile(0.99).max(f64::MIN_POSITIVE);
    let get_ok = get_ratio <= 2.0 && get_rate_ratio <= 2.0;
    let sse_ok = sse_ratio <= 2.0;
    let shape = |l: &Latencies| json!({"per_sec": l.rate(), "p50_us": l.quantile(0.5), "p99_us": l.quantile(0.99), "samples": l.micros.len()});
    if ctx.json {
        return output::json(&json!({
            "get_element": {"lion": shape(get_lion), "bare_axum": shape(get_bare),
                            "p50_ratio": get_ratio, "rate_ratio": get_rate_ratio, "pass": get_ok},
            "get_task_store_read": {"lion": shape(get_task)},
            "post_task": {"lion": shape(post_lion), "in_process": shape(post_here)},
            "sse": {"lion": shape(sse_lion), "bare_axum": shape(sse_bare),
                    "p99_ratio": sse_ratio, "pass": sse_ok},
            "quick": quick,
        }));
    }
    let verdict = |ok: bool| match (quick, ok) {
        (true, _) => "no evidence (quick run)",
        (false, true) => "PASS",
        (false, false) => "FAIL",
    };
    let row = |l: &Latencies| {
        [
            format!("{:.0}/s", l.rate()),
            format!("{:.0} µs", l.quantile(0.5)),
            format!("{:.0} µs", l.quantile(0.99)),
        ]
    };
    let mut t = output::table([
        "measurement",
        "rate",
        "p50",
        "p99",
        "vs same-run baseline",
        "target",
    ]);
    let [r, p50, p99] = row(get_bare);
    t.add_row([
        "GET element: bare axum, same JSON".into(),
        r,
        p50,
        p99,
        "baseline".into(),
        String::new(),
    ]);
    let [r, p50, p99] = row(get_lion);
    t.add_row([
        "GET element: lion serve".into(),
        r,
        p50,
        p99,
        format!("{get_ratio:.2}x p50, {get_rate_ratio:.2}x fewer/s"),
        format!("within 2x: {}", verdict(get_ok)),
    ]);
    let [r, p50, p99] = row(get_task);
    t.add_row([
        "GET task: lion serve (a store read each time)".into(),
        r,
        p50,
        p99,
        format!(
            "{:.2}x p50 of the bare element",
            get_task.quantile(0.5) / get_bare.quantile(0.5).max(f64::MIN_POSITIVE)
        ),
        String::new(),
    ]);
    let [r, p50, p99] = row(post_here);
    t.add_row([
        "POST task: same submission in process".into(),
        r,
        p50,
        p99,
        "baseline".into(),
        String::new(),
    ]);
    let [r, p50, p99] = row(post_lion);
    t.add_row([
        "POST task: lion serve (durable, 202)".into(),
        r,
        p50,
        p99,
        format!(
            "{:.2}x p50",
            post_lion.quantile(0.5) / post_here.quantile(0.5).max(f64::MIN_POSITIVE)
        ),
        String::new(),
    ]);
    let [r, p50, p99] = row(sse_bare);
    t.add_row([
        "SSE: bare axum + tokio broadcast".into(),
        r,
        p50,
        p99,
        "baseline".into(),
        String::new(),
    ]);
    let [r, p50, p99] = row(sse_lion);
    t.add_row([
        "SSE: lion /events/stream, commit to subscriber".into(),
        r,
        p50,
        p99,
        format!("{sse_ratio:.2}x p99"),
        format!("p99 within 2x: {}", verdict(sse_ok)),
    ]);
    outln!("{t}");
    outln!(
        "{CLIENTS} keep-alive clients per HTTP row, {ROUNDS} interleaved rounds; SSE: {EVENT_RATE} events/s; \
         client and server share this machine's cores: compare ratios, not absolutes"
    );
    Ok(())
}
