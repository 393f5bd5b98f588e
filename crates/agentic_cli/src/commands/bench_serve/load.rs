//! The load `lion bench serve` puts on a server: keep-alive clients each
//! sending requests back to back, and SSE subscribers timing each event
//! from its commit (or send) to its arrival.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What a run of requests measured.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Each request's time, in microseconds, sorted.
    pub micros: Vec<f64>,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl Latencies {
    /// Requests (or events) per second.
    pub fn rate(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The `p` quantile (0 to 1), in microseconds.
    pub fn quantile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let i = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        self.micros[i.min(self.micros.len() - 1)]
    }

    /// Joins two runs of the same measurement.
    pub fn merge(mut self, other: Latencies) -> Self {
        self.micros.extend(other.micros);
        self.micros.sort_by(f64::total_cmp);
        self.elapsed += other.elapsed;
        self
    }
}

/// One request a client repeats.
#[derive(Clone)]
pub struct Request {
    /// GET (no body) or POST (with this JSON body).
    pub body: Option<String>,
    /// The full URL.
    pub url: String,
    /// The bearer token, if the server wants one.
    pub token: Option<String>,
    /// The status every answer must have.
    pub status: u16,
}

/// `clients` keep-alive clients sending `request` back to back for
/// `duration`.
pub async fn hammer(request: Request, clients: usize, duration: Duration) -> Result<Latencies> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (http, request) = (http.clone(), request.clone());
        workers.push(tokio::spawn(async move {
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let mut builder = match &request.body {
                    None => http.get(&request.url),
                    Some(body) => http
                        .post(&request.url)
                        .header("content-type", "application/json")
                        .body(body.clone()),
                };
                if let Some(token) = &request.token {
                    builder = builder.bearer_auth(token);
                }
                let sent = Instant::now();
                let response = builder.send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                micros.push(sent.elapsed().as_secs_f64() * 1e6);
                if status != request.status {
                    bail!("{} answered {status}, not {}", request.url, request.status);
                }
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(Latencies {
        micros: all,
        elapsed: start.elapsed(),
    })
}

/// When each event was committed (or sent), by its id.
pub type Stamps = Arc<Mutex<HashMap<u64, Instant>>>;

/// SSE subscribers, each reading events until it has `expect` of them and
/// noting when each arrived; latencies are reckoned at the end against the
/// stamps (an event may arrive before its producer has noted its commit:
/// that counts as no wait).
pub struct Subscribers {
    handles: Vec<tokio::task::JoinHandle<Result<Arrivals>>>,
}

/// When each event (by id) reached one subscriber.
type Arrivals = Vec<(u64, Instant)>;

impl Subscribers {
    /// Opens `n` streams of `url` (with `token`), and returns once every
    /// one is connected (its response headers received).
    pub async fn open(n: usize, url: &str, token: Option<&str>, expect: usize) -> Result<Self> {
        let http = reqwest::Client::new();
        let mut handles = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
        for _ in 0..n {
            let mut builder = http.get(url);
            if let Some(token) = token {
                builder = builder.bearer_auth(token);
            }
            let ready = ready_tx.clone();
            handles.push(tokio::spawn(async move {
                let mut response = builder.send().await?.error_for_status()?;
                ready.send(()).await.ok();
                let mut buffer = String::new();
                let mut arrivals = Vec::with_capacity(expect);
                while arrivals.len() < expect {
                    let chunk = response.chunk().await?.context("the stream ended early")?;
                    let arrived = Instant::now();
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let block: String = buffer.drain(..end + 2).collect();
                        if let Some(id) = block
                            .lines()
                            .find_map(|l| l.strip_prefix("id:"))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                        {
                            arrivals.push((id, arrived));
                        }
                    }
                }
                Ok(arrivals)
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            ready_rx
                .recv()
                .await
                .context("a subscriber failed to connect")?;
        }
        Ok(Self { handles })
    }

    /// Waits for every subscriber to have its events; each event's wait
    /// from its stamp, over all subscribers, and the events delivered per
    /// second from `start` to the last arrival.
    pub async fn finish(self, stamps: &Stamps, start: Instant) -> Result<Latencies> {
        let stamps = stamps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut micros = Vec::new();
        let mut last = start;
        for handle in self.handles {
            for (id, arrived) in handle.await?? {
                last = last.max(arrived);
                if let Some(stamp) = stamps.get(&id) {
                    micros.push(arrived.saturating_duration_since(*stamp).as_secs_f64() * 1e6);
                }
            }
        }
        micros.sort_by(f64::total_cmp);
        Ok(Latencies {
            micros,
            elapsed: last - start,
        })
    }
}
