//! Live events from a running kernel: a Unix socket in the home
//! (`kernel.sock`) where `lion run` streams every event as it happens —
//! progress, async and ephemeral events included, before (or without) their
//! commit — as JSON lines `{"seq": <seq or null>, "event": {…}}`.
//!
//! Durable results are read from the log; the socket is for watching.

use std::path::{Path, PathBuf};

use agentic_core::{LiveEvent, Orchestrator, SystemEvent};
use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;

/// File name of the socket inside a home.
pub const SOCKET_FILE: &str = "kernel.sock";

fn path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// The kernel's end: removes the socket file when dropped.
pub struct LiveServer {
    path: PathBuf,
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts streaming `orchestrator`'s events to whoever connects. Call it
/// only while holding the home's lease (a stale socket file is replaced).
pub fn serve(home: &Path, orchestrator: &Orchestrator) -> Result<LiveServer> {
    let path = path(home);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let orchestrator = orchestrator.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(stream_events(stream, orchestrator.subscribe()));
        }
    });
    Ok(LiveServer { path })
}

/// Writes events to one client until it goes away.
async fn stream_events(
    mut stream: UnixStream,
    mut events: tokio::sync::broadcast::Receiver<LiveEvent>,
) {
    loop {
        let line = match events.recv().await {
            Ok(LiveEvent { seq, event, kernel }) => {
                let mut line = serde_json::json!({ "seq": seq, "event": event });
                if let Some(kernel) = kernel {
                    line["kernel"] = serde_json::json!(kernel);
                }
                line.to_string()
            }
            // A slow client misses events rather than slowing the kernel.
            Err(RecvError::Lagged(missed)) => serde_json::json!({ "missed": missed }).to_string(),
            Err(RecvError::Closed) => return,
        };
        if stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One line of the stream.
#[derive(Debug, Deserialize)]
pub struct LiveLine {
    /// Sequence number, for events already committed.
    pub seq: Option<u64>,
    /// The event (absent on a "missed" notice).
    pub event: Option<SystemEvent>,
    /// Events this client missed because it was slow.
    pub missed: Option<u64>,
}

/// A client's end of the stream.
pub struct LiveClient {
    lines: Lines<BufReader<OwnedReadHalf>>,
}

impl LiveClient {
    /// The next line, or `None` when the kernel went away.
    pub async fn next(&mut self) -> Option<LiveLine> {
        loop {
            let line = self.lines.next_line().await.ok()??;
            if let Ok(parsed) = serde_json::from_str(&line) {
                return Some(parsed);
            }
        }
    }
}

/// Connects to the running kernel's stream, if there is one.
pub async fn connect(home: &Path) -> Option<LiveClient> {
    let stream = UnixStream::connect(path(home)).await.ok()?;
    let (read, _write) = stream.into_split();
    Some(LiveClient {
        lines: BufReader::new(read).lines(),
    })
}
