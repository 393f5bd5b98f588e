//! Wake-ups for readers of a [`super::PostgresStore`]: a connection that
//! `LISTEN`s on `lion_log`, where every head made durable (by any kernel:
//! a commit that waited for its flush, or the flush behind relaxed turns,
//! see [`super::durable`]) is announced by its sequence number. A
//! notification only wakes readers, who then read the log (one announcing
//! a head the log does not reach is taken back); after every (re)connection
//! the head is read once, so a notification missed while disconnected
//! delays no one.
//!
//! The same connection listens on `lion_live`, where kernels relay their
//! live events to each other ([`LiveRelay`](agentic_core::store::live::LiveRelay)):
//! those are for watching, and one sent while it was disconnected is lost.
//! PostgreSQL lets any role that can connect `NOTIFY` any channel, so each
//! notification is signed (HMAC-SHA256 with a key in `lion.secrets`, which
//! only roles that may read the store can read) and an unsigned or
//! badly signed one is dropped: `<signature hex> <JSON>`, the JSON being
//! `{"kernel": <id>, "events": [<event>…]}`.

use std::sync::Arc;
use std::time::Duration;

use agentic_core::SystemEvent;
use agentic_core::store::live::Relayed;
use futures_util::StreamExt;
use ring::hmac;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::reads;

/// The channel commits notify.
pub(super) const CHANNEL: &str = "lion_log";

/// Where relayed live events go, and the key their signatures are
/// checked with.
pub(super) type Live = (broadcast::Sender<Relayed>, hmac::Key);

/// The channel kernels relay live events on.
pub(super) const LIVE_CHANNEL: &str = "lion_live";

/// Largest notification payload PostgreSQL takes (it refuses 8000 bytes
/// or more).
const MAX_PAYLOAD: usize = 7999;

/// The signed notifications carrying `events` of kernel `from`: as many
/// events to each as fit; an event too large alone is left out.
pub(super) fn payloads(key: &hmac::Key, from: Uuid, events: &[SystemEvent]) -> Vec<String> {
    // The signature (64 hex digits and a space) and the JSON around the
    // events take this much.
    let frame = 65
        + serde_json::json!({ "kernel": from, "events": [] })
            .to_string()
            .len();
    let mut out = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut size = frame;
    for event in events {
        let Ok(json) = serde_json::to_string(event) else {
            continue;
        };
        if frame + json.len() > MAX_PAYLOAD {
            tracing::debug!(
                kind = event.kind(),
                bytes = json.len(),
                "live event too large to relay"
            );
            continue;
        }
        if size + json.len() + 1 > MAX_PAYLOAD {
            out.push(sign(key, from, &batch));
            batch.clear();
            size = frame;
        }
        size += json.len() + 1;
        batch.push(json);
    }
    if !batch.is_empty() {
        out.push(sign(key, from, &batch));
    }
    out
}

/// One signed notification of `events` (each already JSON).
fn sign(key: &hmac::Key, from: Uuid, events: &[String]) -> String {
    let body = format!(r#"{{"kernel":"{from}","events":[{}]}}"#, events.join(","));
    let tag = hmac::sign(key, body.as_bytes());
    format!("{} {body}", hex::encode(tag.as_ref()))
}

/// The events of a notification whose signature holds.
fn verified(key: &hmac::Key, payload: &str) -> Option<Vec<Relayed>> {
    let (tag, body) = payload.split_once(' ')?;
    let tag = hex::decode(tag).ok()?;
    hmac::verify(key, body.as_bytes(), &tag).ok()?;
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        kernel: Uuid,
        #[serde(borrow)]
        events: Vec<&'a serde_json::value::RawValue>,
    }
    let batch: Batch<'_> = serde_json::from_str(body).ok()?;
    // An event this kernel cannot read (a newer kernel's kind) is skipped
    // alone.
    Some(
        batch
            .events
            .into_iter()
            .filter_map(|raw| serde_json::from_str(raw.get()).ok())
            .map(|event| Relayed {
                kernel: batch.kernel,
                event,
            })
            .collect(),
    )
}

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Listens until the store is dropped (which aborts this task), publishing
/// each committed sequence number to `committed`.
pub(super) async fn listen(
    config: (tokio_postgres::Config, super::connect::Tls),
    location: Arc<str>,
    committed: Arc<watch::Sender<u64>>,
    live: Live,
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
    (config, tls): &(tokio_postgres::Config, super::connect::Tls),
    committed: &watch::Sender<u64>,
    live: &Live,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let live = live.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == LIVE_CHANNEL => {
                    let (relay, key) = &live;
                    match verified(key, n.payload()) {
                        // No receiver is fine.
                        Some(events) => events.into_iter().for_each(|r| drop(relay.send(r))),
                        // Any role that can connect may notify: no warning each.
                        None => {
                            tracing::debug!("a live notification without a valid signature dropped")
                        }
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
pub(super) fn publish(committed: &watch::Sender<u64>, seq: u64) {
    committed.send_if_modified(|known| {
        let newer = seq > *known;
        if newer {
            *known = seq;
        }
        newer
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentic_core::AgentId;

    fn key(byte: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32])
    }

    fn note(text: &str) -> SystemEvent {
        SystemEvent::AgentRecorded {
            agent: AgentId::new("test", "notes"),
            data: serde_json::json!({ "text": text }),
        }
    }

    #[test]
    fn events_are_batched_under_the_payload_limit_and_verified() {
        let from = Uuid::now_v7();
        let events: Vec<SystemEvent> = (0..200).map(|i| note(&format!("chunk {i:0>60}"))).collect();
        let payloads = payloads(&key(1), from, &events);
        assert!(
            payloads.len() > 1,
            "200 chunks of ~100 bytes need several notifications"
        );
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
            back.extend(verified(&key(1), payload).expect("signed"));
        }
        assert_eq!(back.len(), 200);
        assert!(back.iter().all(|r| r.kernel == from));
        let texts: Vec<String> = back
            .iter()
            .map(|r| serde_json::to_string(&r.event).expect("json"))
            .collect();
        let sent: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).expect("json"))
            .collect();
        assert_eq!(texts, sent, "in order");
    }

    #[test]
    fn a_forged_or_unsigned_notification_is_dropped_and_a_huge_event_left_out() {
        let from = Uuid::now_v7();
        let payload = payloads(&key(1), from, &[note("hi")]).remove(0);
        assert!(verified(&key(2), &payload).is_none(), "another key");
        let (_, body) = payload.split_once(' ').expect("signed");
        assert!(verified(&key(1), body).is_none(), "unsigned");
        let tampered = payload.replace("hi", "ho");
        assert!(verified(&key(1), &tampered).is_none(), "tampered");
        let huge = note(&"x".repeat(MAX_PAYLOAD));
        let out = payloads(&key(1), from, &[huge, note("small")]);
        assert_eq!(out.len(), 1);
        assert_eq!(verified(&key(1), &out[0]).expect("signed").len(), 1);
    }
}
