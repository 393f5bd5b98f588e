//! The LLM relay on the in-memory store with paused time: chunks reach live
//! subscribers at once while the log gets them coalesced, tool calls are
//! assembled, budgets and the answer's size bound stop the stream as it
//! flows (counting tokens, not chunks), a slow store neither stalls the live
//! stream nor grows a queue, and cancellation and provider errors stop it
//! with what had arrived.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentic_core::llm::{
    ChatChunk, ChatStream, DEFAULT_ANSWER_BYTES, LlmError, RELAY_APPEND_QUEUE, Relay, RelayOptions,
    RelayOutcome, StopReason, Usage,
};
use agentic_core::{EventStore, LiveEvent, SystemEvent};
use agentic_store::MemoryStore;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use support::GatedStore;

struct Fixture {
    store: Arc<MemoryStore>,
    relay: Relay,
    live: broadcast::Receiver<LiveEvent>,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let (tx, live) = broadcast::channel(1024);
    let dyn_store: Arc<dyn EventStore> = store.clone();
    Fixture {
        relay: Relay::new(dyn_store, tx, Uuid::now_v7()),
        store,
        live,
    }
}

/// Relays `stream` as agent ada's, with the default options, uncancelled.
async fn relay_default(relay: &Relay, stream: ChatStream) -> RelayOutcome {
    relay
        .relay(
            "ada",
            Uuid::now_v7(),
            stream,
            RelayOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("relay")
}

async fn logged(store: &MemoryStore) -> Vec<SystemEvent> {
    store
        .read_from(1, usize::MAX)
        .await
        .expect("read")
        .iter()
        .map(|e| e.decode().expect("decode"))
        .collect()
}

fn text(t: &str) -> Result<ChatChunk, LlmError> {
    Ok(ChatChunk::Text(t.to_owned()))
}

#[tokio::test(start_paused = true)]
async fn chunks_go_live_at_once_and_reach_the_log_coalesced() {
    let mut f = fixture();
    let (tx, stream) = ChatStream::channel();
    let relay = f.relay.clone();
    let run = Uuid::now_v7();
    let task = tokio::spawn(async move {
        relay
            .relay(
                "ada",
                run,
                stream,
                RelayOptions::default(),
                CancellationToken::new(),
            )
            .await
    });
    for t in ["Hel", "lo"] {
        tx.send(text(t)).await.expect("send");
        let live = f.live.recv().await.expect("live");
        assert_eq!(live.seq, None, "live chunks are not committed yet");
        assert!(matches!(live.event, SystemEvent::LlmDelta { text, .. } if text == t));
    }
    assert!(
        logged(&f.store).await.is_empty(),
        "nothing logged before the coalescing interval"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    tx.send(text("!")).await.expect("send");
    tx.send(Ok(ChatChunk::Finished(Some("stop".into()))))
        .await
        .expect("send");
    tx.send(Ok(ChatChunk::Usage(Usage {
        prompt_tokens: 5,
        completion_tokens: 3,
    })))
    .await
    .expect("send");
    drop(tx);
    let outcome = task.await.expect("join").expect("relay");
    let RelayOutcome::Finished {
        message,
        usage,
        finish_reason,
    } = outcome
    else {
        panic!("expected a finished completion");
    };
    assert_eq!(message.content, "Hello!");
    assert_eq!(usage.completion_tokens, 3);
    assert_eq!(finish_reason.as_deref(), Some("stop"));
    let events = logged(&f.store).await;
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SystemEvent::LlmDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas,
        ["Hello", "!"],
        "two chunks coalesced, then the rest at the end"
    );
    assert!(
        matches!(events.last(), Some(SystemEvent::LlmFinished { message, .. }) if message.content == "Hello!")
    );
}

#[tokio::test(start_paused = true)]
async fn a_large_chunk_run_is_logged_by_size() {
    let f = fixture();
    let (tx, stream) = ChatStream::channel();
    let options = RelayOptions {
        coalesce_bytes: 10,
        ..RelayOptions::default()
    };
    let relay = f.relay.clone();
    let task = tokio::spawn(async move {
        relay
            .relay(
                "ada",
                Uuid::now_v7(),
                stream,
                options,
                CancellationToken::new(),
            )
            .await
    });
    for _ in 0..5 {
        tx.send(text("abcd")).await.expect("send");
    }
    drop(tx);
    task.await.expect("join").expect("relay");
    let deltas = logged(&f.store)
        .await
        .into_iter()
        .filter(|e| matches!(e, SystemEvent::LlmDelta { .. }))
        .count();
    assert_eq!(deltas, 2, "12 bytes, 12 bytes, then none left");
}

#[tokio::test(start_paused = true)]
async fn tool_call_parts_are_assembled() {
    let f = fixture();
    let (tx, stream) = ChatStream::channel();
    let parts = [
        (Some("call_1"), Some("calculator_eval"), ""),
        (None, None, "{\"expression\":"),
        (None, None, "\"2+2\"}"),
    ];
    for (id, name, arguments) in parts {
        tx.send(Ok(ChatChunk::ToolCallDelta {
            index: 0,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments: arguments.to_owned(),
        }))
        .await
        .expect("send");
    }
    drop(tx);
    let outcome = relay_default(&f.relay, stream).await;
    let RelayOutcome::Finished { message, .. } = outcome else {
        panic!("finished")
    };
    assert_eq!(message.tool_calls.len(), 1);
    assert_eq!(message.tool_calls[0].id, "call_1");
    assert_eq!(message.tool_calls[0].name, "calculator_eval");
    assert_eq!(message.tool_calls[0].arguments, r#"{"expression":"2+2"}"#);
}

#[tokio::test(start_paused = true)]
async fn a_budget_stops_the_stream_while_it_flows() {
    let f = fixture();
    let (tx, stream) = ChatStream::channel();
    let relay = f.relay.clone();
    let options = RelayOptions {
        budget_tokens: Some(3),
        ..RelayOptions::default()
    };
    let task = tokio::spawn(async move {
        relay
            .relay(
                "ada",
                Uuid::now_v7(),
                stream,
                options,
                CancellationToken::new(),
            )
            .await
    });
    for t in ["a", "b", "c", "d"] {
        tx.send(text(t)).await.expect("send");
    }
    let outcome = task.await.expect("join").expect("relay");
    // The fourth chunk is counted, and refused: nothing past the budget is
    // published or logged.
    assert_eq!(
        outcome,
        RelayOutcome::Stopped {
            reason: StopReason::Budget { used: 4, budget: 3 },
            partial: "abc".into(),
            tokens: 4
        }
    );
    assert!(
        tx.is_closed(),
        "the provider's stream is dropped, cancelling its request"
    );
    let events = logged(&f.store).await;
    assert!(matches!(
        events.last(),
        Some(SystemEvent::LlmStopped { reason, partial, .. })
            if reason.contains("token budget exceeded") && partial == "abc"
    ));
}

/// What the live subscriber got so far: the text of every delta.
fn live_text(live: &mut broadcast::Receiver<LiveEvent>) -> String {
    let mut out = String::new();
    while let Ok(e) = live.try_recv() {
        if let SystemEvent::LlmDelta { text, .. } = e.event {
            out.push_str(&text);
        }
    }
    out
}

/// The text of every delta in the log, joined, and how many deltas.
fn logged_text(events: &[SystemEvent]) -> (String, usize) {
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SystemEvent::LlmDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    (deltas.concat(), deltas.len())
}

/// Regression (issue 14): the budget counted chunks, so one chunk of 101 KB
/// passed a 100-token budget. Tokens are estimated from the bytes that
/// streamed, and what lies past the budget goes nowhere.
#[tokio::test(start_paused = true)]
async fn a_huge_chunk_does_not_pass_a_small_budget() {
    let mut f = fixture();
    let (tx, stream) = ChatStream::channel();
    let huge = "word ".repeat(101 * 1024 / 5);
    tx.send(text(&huge)).await.expect("send");
    tx.send(Ok(ChatChunk::Finished(Some("stop".into()))))
        .await
        .expect("send");
    drop(tx);
    let options = RelayOptions {
        budget_tokens: Some(100),
        ..RelayOptions::default()
    };
    let outcome = f
        .relay
        .relay(
            "ada",
            Uuid::now_v7(),
            stream,
            options,
            CancellationToken::new(),
        )
        .await
        .expect("relay");
    let RelayOutcome::Stopped {
        reason: StopReason::Budget { used, budget: 100 },
        partial,
        tokens,
    } = outcome
    else {
        panic!("a 101 KB answer must not pass a 100-token budget: {outcome:?}");
    };
    assert_eq!(used, tokens);
    assert!(used >= huge.len() as u64 / 4, "counted by size: {used}");
    assert!(
        partial.len() <= 400,
        "only the budget's worth: {}",
        partial.len()
    );
    assert_eq!(live_text(&mut f.live), partial, "nothing more went live");
    let (logged, _) = logged_text(&logged(&f.store).await);
    assert_eq!(logged, partial, "nor into the log");
}

/// Regression (issue 14): with no budget, an endless stream wrote 4.9 GB of
/// log. Every completion has a size bound, even without a budget: the
/// provider here would stream four times past it.
#[tokio::test(start_paused = true)]
async fn an_endless_stream_stops_at_the_answer_bound() {
    let f = fixture();
    let (tx, stream) = ChatStream::channel();
    let chunk = "x".repeat(1000);
    let chunks = 4 * DEFAULT_ANSWER_BYTES as usize / chunk.len();
    let provider = tokio::spawn(async move {
        let mut sent = 0;
        while sent < chunks && tx.send(Ok(ChatChunk::Text(chunk.clone()))).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let relay = f.relay.clone();
    let outcome = tokio::spawn(async move { relay_default(&relay, stream).await })
        .await
        .expect("join");
    let RelayOutcome::Stopped {
        reason: StopReason::AnswerTooLong { limit },
        partial,
        ..
    } = outcome
    else {
        panic!("the stream must stop at the bound: {outcome:?}");
    };
    assert_eq!(limit, DEFAULT_ANSWER_BYTES);
    assert_eq!(
        partial.len() as u64,
        DEFAULT_ANSWER_BYTES,
        "cut at the bound"
    );
    let sent = provider.await.expect("provider");
    assert!(
        sent < chunks,
        "the provider's stream was dropped ({sent} sent)"
    );
    let events = logged(&f.store).await;
    let (logged, _) = logged_text(&events);
    assert_eq!(logged.len() as u64, DEFAULT_ANSWER_BYTES);
    assert!(matches!(
        events.last(),
        Some(SystemEvent::LlmStopped { reason, .. }) if reason.starts_with("answer too long")
    ));
}

/// The size bound cuts a chunk on a character boundary, and counts tool
/// calls' arguments too: a call cut short is not kept.
#[tokio::test(start_paused = true)]
async fn the_answer_bound_counts_tool_call_arguments_and_cuts_on_a_character() {
    let f = fixture();
    let options = RelayOptions {
        max_answer_bytes: 1001,
        ..RelayOptions::default()
    };
    let (tx, stream) = ChatStream::channel();
    tx.send(text(&"\u{e9}".repeat(600))).await.expect("send");
    drop(tx);
    let outcome = f
        .relay
        .relay(
            "ada",
            Uuid::now_v7(),
            stream,
            options.clone(),
            CancellationToken::new(),
        )
        .await
        .expect("relay");
    assert!(
        matches!(&outcome, RelayOutcome::Stopped { reason: StopReason::AnswerTooLong { limit: 1001 }, partial, .. }
            if *partial == "\u{e9}".repeat(500)),
        "{outcome:?}"
    );

    let (tx, stream) = ChatStream::channel();
    tx.send(Ok(ChatChunk::ToolCallDelta {
        index: 0,
        id: Some("call_1".into()),
        name: Some("calculator__eval".into()),
        arguments: format!("{{\"expression\":\"{}\"}}", "1+".repeat(1000)),
    }))
    .await
    .expect("send");
    drop(tx);
    let outcome = f
        .relay
        .relay(
            "ada",
            Uuid::now_v7(),
            stream,
            options,
            CancellationToken::new(),
        )
        .await
        .expect("relay");
    assert!(
        matches!(
            outcome,
            RelayOutcome::Stopped {
                reason: StopReason::AnswerTooLong { .. },
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// Regression (issue 14): the relay's appender queue was unbounded. With
/// the store stuck, every chunk still goes live at once, the relay
/// coalesces into fewer, larger deltas instead of queueing one event per
/// chunk, and once the store moves every byte and the end are logged.
#[tokio::test(start_paused = true)]
async fn a_stuck_store_neither_stalls_the_live_stream_nor_grows_a_queue() {
    let store = GatedStore::closed();
    let (live_tx, mut live) = broadcast::channel(16);
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let relay = Relay::new(dyn_store, live_tx, Uuid::now_v7());
    let (tx, stream) = ChatStream::channel();
    let options = RelayOptions {
        // One event per chunk, if the relay could queue them.
        coalesce_bytes: 1,
        ..RelayOptions::default()
    };
    let task = tokio::spawn(async move {
        relay
            .relay(
                "ada",
                Uuid::now_v7(),
                stream,
                options,
                CancellationToken::new(),
            )
            .await
    });
    const CHUNKS: usize = 2000;
    for i in 0..CHUNKS {
        let t = format!("{} ", i % 10);
        tx.send(text(&t)).await.expect("send");
        let e = live.recv().await.expect("live while the store is stuck");
        assert!(matches!(e.event, SystemEvent::LlmDelta { text, .. } if text == t));
    }
    assert!(store.events().await.is_empty(), "the store is stuck");
    drop(tx);
    store.open();
    let outcome = task.await.expect("join").expect("relay");
    let RelayOutcome::Finished { message, .. } = outcome else {
        panic!("finished: {outcome:?}");
    };
    let events = store.events().await;
    let (logged, deltas) = logged_text(&events);
    assert_eq!(logged, message.content, "every byte logged, in order");
    assert!(
        deltas <= 2 * RELAY_APPEND_QUEUE + 1,
        "{deltas} deltas for {CHUNKS} chunks: the relay must coalesce, not queue"
    );
    assert!(matches!(
        events.last(),
        Some(SystemEvent::LlmFinished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn cancellation_and_provider_errors_stop_with_what_arrived() {
    let f = fixture();
    let (tx, stream) = ChatStream::channel();
    let cancel = CancellationToken::new();
    let relay = f.relay.clone();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        relay
            .relay(
                "ada",
                Uuid::now_v7(),
                stream,
                RelayOptions::default(),
                token,
            )
            .await
    });
    tx.send(text("half")).await.expect("send");
    tokio::task::yield_now().await;
    cancel.cancel();
    let outcome = task.await.expect("join").expect("relay");
    assert!(matches!(
        outcome,
        RelayOutcome::Stopped { reason: StopReason::Cancelled, ref partial, .. } if partial == "half"
    ));
    assert!(tx.is_closed());

    let (tx, stream) = ChatStream::channel();
    tx.send(text("so far")).await.expect("send");
    tx.send(Err(LlmError::StreamBroken("connection reset".into())))
        .await
        .expect("send");
    let outcome = relay_default(&f.relay, stream).await;
    assert!(matches!(
        outcome,
        RelayOutcome::Stopped { reason: StopReason::Failed(LlmError::StreamBroken(_)), ref partial, .. }
            if partial == "so far"
    ));
}
