//! Wake-ups for readers of a [`super::PostgresStore`]: a connection that
//! `LISTEN`s on `lion_log`, where every commit (by any kernel) notifies its
//! new head's sequence number. A notification only wakes readers, who then
//! read the log; after every (re)connection the head is read once, so a
//! notification missed while disconnected delays no one.
//!
//! The same connection listens on `lion_live`, where kernels relay their
//! live events to each other ([`LiveRelay`](agentic_core::store::live::LiveRelay)):
//! those are for watching, and one sent while it was disconnected is lost.

use std::sync::Arc;
use std::time::Duration;

use agentic_core::store::live::Relayed;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::reads;

/// The channel commits notify.
pub(super) const CHANNEL: &str = "lion_log";

/// The channel kernels relay live events on.
pub(super) const LIVE_CHANNEL: &str = "lion_live";

/// Largest live event relayed (PostgreSQL refuses notification payloads
/// of 8000 bytes or more).
pub(super) const MAX_LIVE_PAYLOAD: usize = 7999;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Listens until the store is dropped (which aborts this task), publishing
/// each committed sequence number to `committed`.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    location: Arc<str>,
    committed: Arc<watch::Sender<u64>>,
    live: broadcast::Sender<Relayed>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match listen_once(&config, &committed, &live).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => tracing::debug!(%location, error = %e, "the store's listener reconnects"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: `LISTEN`, read the head, then forward
/// notifications until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    committed: &watch::Sender<u64>,
    live: &broadcast::Sender<Relayed>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let live = live.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == LIVE_CHANNEL => {
                    match serde_json::from_str::<Relayed>(n.payload()) {
                        // No receiver is fine.
                        Ok(relayed) => drop(live.send(relayed)),
                        Err(e) => tracing::debug!(error = %e, "unreadable live event skipped"),
                    }
                }
                Ok(AsyncMessage::Notification(n)) => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        let _ = tx.send(seq);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {LIVE_CHANNEL}"))
        .await?;
    let head = reads::head(&client)
        .await
        .map(|h| h.seq)
        .unwrap_or_default();
    publish(committed, head);
    while let Some(seq) = rx.recv().await {
        publish(committed, seq);
    }
    driver.abort();
    Ok(())
}

/// Moves `committed` on to `seq` if it is newer.
fn publish(committed: &watch::Sender<u64>, seq: u64) {
    committed.send_if_modified(|known| {
        let newer = seq > *known;
        if newer {
            *known = seq;
        }
        newer
    });
}
