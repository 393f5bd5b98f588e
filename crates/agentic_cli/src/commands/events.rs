//! `lion events list|tail|verify`: reading, following and verifying the log.

use std::sync::Arc;

use agentic_core::{EventEnvelope, EventStore, StoreError, SystemEvent};
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::Ctx;
use crate::IntegrityFailure;
use crate::home::Checked;
use crate::{live, output};

/// Events read per round trip when listing.
const PAGE: usize = 1000;

/// One event as `events list --json` prints it: the envelope with its payload decoded.
#[derive(Serialize)]
struct EventView<'a> {
    #[serde(flatten)]
    envelope: &'a EventEnvelope,
    event: Value,
}

fn view(e: &EventEnvelope) -> EventView<'_> {
    let event = serde_json::from_slice(&e.payload).unwrap_or(Value::Null);
    EventView { envelope: e, event }
}

/// The event's type name and a one-line summary of its payload.
fn describe(e: &EventEnvelope) -> (String, String) {
    match serde_json::from_slice::<Value>(&e.payload) {
        Ok(Value::Object(map)) if map.len() == 1 => {
            let (kind, body) = map.into_iter().next().unwrap_or_default();
            (kind, output::clip(&body.to_string(), 60))
        }
        _ => ("?".into(), "(undecodable payload)".into()),
    }
}

fn print_line(ctx: Ctx, e: &EventEnvelope) -> Result<()> {
    if ctx.json {
        output::json(&view(e))
    } else {
        let (kind, summary) = describe(e);
        outln!(
            "{:>6}  {}  {:<16} {}  {}",
            e.seq,
            e.recorded_at.format("%H:%M:%S%.3f"),
            kind,
            e.stream,
            summary
        );
        Ok(())
    }
}

/// Lists stored events from `from` on.
pub async fn list(store: &dyn EventStore, ctx: Ctx, from: u64, limit: Option<usize>) -> Result<()> {
    let mut next = from.max(1);
    let mut left = limit.unwrap_or(usize::MAX);
    let mut table = output::table(["seq", "recorded (UTC)", "type", "stream", "hash"]);
    let mut shown = 0usize;
    while left > 0 {
        let page = store.read_from(next, PAGE.min(left)).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        left -= page.len();
        for e in &page {
            shown += 1;
            if ctx.json {
                output::json(&view(e))?;
            } else {
                table.add_row([
                    e.seq.to_string(),
                    e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                    describe(e).0,
                    e.stream.clone(),
                    e.hash.to_hex()[..12].to_owned(),
                ]);
            }
        }
    }
    if !ctx.json {
        outln!("{table}");
        outln!("{shown} event(s)");
    }
    Ok(())
}

/// Follows new events until interrupted (or `count` events were shown).
pub async fn tail(
    store: Arc<dyn EventStore>,
    ctx: Ctx,
    from: Option<u64>,
    count: Option<u64>,
) -> Result<()> {
    let start = match from {
        Some(seq) => seq,
        None => store.head().await?.seq + 1,
    };
    let mut sub = store.subscribe(start);
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        tokio::select! {
            event = sub.next() => {
                print_line(ctx, &event?)?;
                shown += 1;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

/// Follows the running kernel's live stream until interrupted (or `count`
/// events were shown).
pub async fn tail_live(home: &Path, ctx: Ctx, count: Option<u64>) -> Result<()> {
    let Some(mut stream) = live::connect(home).await else {
        bail!(
            "no kernel is running on {} (start one with `lion run`)",
            home.display()
        );
    };
    errln!(
        "following the live events of the kernel on {}",
        home.display()
    );
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        tokio::select! {
            line = stream.next() => {
                let Some(line) = line else { break };
                if let Some(missed) = line.missed {
                    errln!("warning: missed {missed} live event(s): this reader was too slow");
                }
                let Some(event) = line.event else { continue };
                if ctx.json {
                    output::json(&serde_json::json!({"seq": line.seq, "event": event}))?;
                } else {
                    let seq = line.seq.map_or_else(|| "-".to_owned(), |s| s.to_string());
                    outln!(
                        "{seq:>6}  {:<16} {}  {}",
                        event.kind(),
                        event.default_stream(),
                        live_summary(&event)
                    );
                }
                shown += 1;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

/// One line about a live event: a streamed chunk's text as it is (quoted),
/// else the payload, clipped.
fn live_summary(event: &SystemEvent) -> String {
    match event {
        SystemEvent::LlmDelta { text, .. } => format!("{text:?}"),
        other => match serde_json::to_value(other) {
            Ok(Value::Object(map)) => map
                .into_iter()
                .next()
                .map(|(_, body)| output::clip(&body.to_string(), 60))
                .unwrap_or_default(),
            _ => String::new(),
        },
    }
}

/// Verifies the whole chain and the recorded head.
pub async fn verify(store: &Checked, ctx: Ctx) -> Result<()> {
    match store.verify().await {
        Ok(report) => {
            if ctx.json {
                return output::json(&serde_json::json!({
                    "ok": true,
                    "events": report.events,
                    "head": report.head,
                    "recorded_head": report.recorded_head,
                }));
            }
            outln!(
                "ok: {} event(s), hash chain intact, head seq {} {}",
                report.events,
                report.head.seq,
                &report.head.hash.to_hex()[..16]
            );
            match report.recorded_head {
                Some(h) => outln!("HEAD records seq {}: consistent with the log", h.seq),
                None if report.events > 0 => {
                    outln!(
                        "warning: no HEAD file, so truncation of the newest events cannot be checked"
                    );
                }
                None => {}
            }
            Ok(())
        }
        Err(StoreError::Chain(e)) => {
            if ctx.json {
                output::json(&serde_json::json!({
                    "ok": false,
                    "first_bad_seq": e.seq(),
                    "error": e.to_string(),
                }))?;
            }
            Err(IntegrityFailure(format!("log verification failed: {e}")).into())
        }
        Err(e @ StoreError::Corrupt { .. }) => {
            if ctx.json {
                output::json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
            }
            Err(IntegrityFailure(format!("log verification failed: {e}")).into())
        }
        Err(e) => Err(e.into()),
    }
}
