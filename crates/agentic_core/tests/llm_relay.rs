//! The LLM relay on the in-memory store with paused time: chunks reach live
//! subscribers at once while the log gets them coalesced, tool calls are
//! assembled, budgets stop the stream as it flows, and cancellation and
//! provider errors stop it with what had arrived.

use std::sync::Arc;
use std::time::Duration;

use agentic_core::llm::{
    ChatChunk, ChatStream, LlmError, Relay, RelayOptions, RelayOutcome, StopReason, Usage,
};
use agentic_core::{EventStore, LiveEvent, SystemEvent};
use agentic_store::MemoryStore;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
    assert_eq!(
        outcome,
        RelayOutcome::Stopped {
            reason: StopReason::Budget { used: 4, budget: 3 },
            partial: "abcd".into(),
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
            if reason.contains("token budget exceeded") && partial == "abcd"
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
