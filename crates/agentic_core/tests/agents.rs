//! The agent runtime's promises: messages only, `send` and `ask` with
//! timeouts, topics, and supervision that restarts a failed agent (within
//! its limit) with its state rebuilt from the events it recorded; recorded
//! events keep their order and wait for a slow store in a bounded queue.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentic_core::agent::RUNTIME_APPEND_QUEUE;
use agentic_core::{
    Agent, AgentContext, AgentError, AgentId, AgentRef, Durability, EventStore, Reply,
    RestartLimit, RestartPolicy, Runtime, RuntimeError, SpawnOptions,
};
use agentic_store::MemoryStore;
use async_trait::async_trait;
use serde_json::{Value, json};
use support::GatedStore;
use uuid::Uuid;

/// A counter whose every change is a recorded event.
struct Counter {
    total: i64,
}

enum CounterMsg {
    Add(i64),
    Get(Reply<i64>),
    /// Fails the agent (returns an error).
    Fail,
    /// Panics inside the handler.
    Panic,
    /// Ends the agent normally.
    Finish,
    /// Never answers (to test ask timeouts).
    Ignore(Reply<i64>),
    /// A message from a topic.
    Topic(Value),
}

#[async_trait]
impl Agent for Counter {
    type Msg = CounterMsg;

    async fn start(ctx: &AgentContext) -> Result<Self, AgentError> {
        let total = ctx
            .history()
            .await?
            .iter()
            .filter_map(|e| e.get("add").and_then(Value::as_i64))
            .sum();
        Ok(Counter { total })
    }

    async fn handle(&mut self, ctx: &AgentContext, msg: CounterMsg) -> Result<(), AgentError> {
        match msg {
            CounterMsg::Add(n) => {
                ctx.record(json!({ "add": n }), Durability::Durable).await?;
                self.total += n;
            }
            CounterMsg::Get(reply) => {
                let _ = reply.send(self.total);
            }
            CounterMsg::Fail => return Err(AgentError::new("asked to fail")),
            CounterMsg::Panic => panic!("asked to panic"),
            CounterMsg::Finish => ctx.finish(),
            CounterMsg::Ignore(reply) => std::mem::forget(reply),
            CounterMsg::Topic(v) => {
                let n = v.as_i64().unwrap_or(0);
                ctx.record(json!({ "add": n }), Durability::Durable).await?;
                self.total += n;
            }
        }
        Ok(())
    }
}

fn runtime() -> (Arc<MemoryStore>, Runtime) {
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn EventStore> = store.clone();
    (store, Runtime::new(Some(dyn_store), Uuid::now_v7()))
}

async fn total(agent: &AgentRef<Counter>) -> Result<i64, RuntimeError> {
    agent.ask(CounterMsg::Get, Duration::from_secs(5)).await
}

#[tokio::test]
async fn send_and_ask_reach_the_agent_in_order() {
    let (_store, rt) = runtime();
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "a"), SpawnOptions::default())
        .expect("spawn");
    for n in [1, 2, 3] {
        counter.send(CounterMsg::Add(n)).await.expect("send");
    }
    assert_eq!(total(&counter).await, Ok(6));
    assert_eq!(counter.id().to_string(), "counter/a");
    let found = rt
        .get::<Counter>(&AgentId::new("counter", "a"))
        .expect("registered");
    assert_eq!(total(&found).await, Ok(6));
    assert!(matches!(
        rt.spawn::<Counter>(AgentId::new("counter", "a"), SpawnOptions::default()),
        Err(RuntimeError::AlreadyRunning(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ask_times_out() {
    let (_store, rt) = runtime();
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "t"), SpawnOptions::default())
        .expect("spawn");
    let err = counter
        .ask(CounterMsg::Ignore, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RuntimeError::Timeout(AgentId::new("counter", "t"), Duration::from_millis(200))
    );
}

#[tokio::test]
async fn a_failed_agent_restarts_with_its_state_rebuilt_from_its_events() {
    let (store, rt) = runtime();
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "r"), SpawnOptions::default())
        .expect("spawn");
    counter.send(CounterMsg::Add(10)).await.expect("send");
    counter.send(CounterMsg::Fail).await.expect("send");
    // The mailbox survives the restart: this is handled by the new instance.
    counter.send(CounterMsg::Add(5)).await.expect("send");
    counter.send(CounterMsg::Panic).await.expect("send");
    assert_eq!(
        total(&counter).await,
        Ok(15),
        "state rebuilt after both failures"
    );
    // The log holds exactly the recorded changes, on the agent's stream.
    let stream = store
        .read_stream("agent:counter/r", 1, 100)
        .await
        .expect("stream");
    assert_eq!(stream.len(), 2);
}

#[tokio::test]
async fn an_agent_that_keeps_failing_is_stopped_at_its_restart_limit() {
    let (_store, rt) = runtime();
    let options = SpawnOptions {
        limit: RestartLimit {
            max_restarts: 2,
            window: Duration::from_secs(60),
        },
        ..SpawnOptions::default()
    };
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "l"), options)
        .expect("spawn");
    for _ in 0..3 {
        counter.send(CounterMsg::Fail).await.expect("send");
    }
    counter.stopped().await;
    assert!(matches!(
        counter.send(CounterMsg::Add(1)).await,
        Err(RuntimeError::NotRunning(_))
    ));
    assert!(rt.get::<Counter>(&AgentId::new("counter", "l")).is_none());
}

#[tokio::test]
async fn restart_policies_decide_what_a_failure_or_a_normal_end_means() {
    let (_store, rt) = runtime();
    let never = rt
        .spawn::<Counter>(
            AgentId::new("counter", "never"),
            SpawnOptions {
                restart: RestartPolicy::Never,
                ..SpawnOptions::default()
            },
        )
        .expect("spawn");
    never.send(CounterMsg::Fail).await.expect("send");
    never.stopped().await;

    let transient = rt
        .spawn::<Counter>(
            AgentId::new("counter", "transient"),
            SpawnOptions::default(),
        )
        .expect("spawn");
    transient.send(CounterMsg::Finish).await.expect("send");
    transient.stopped().await;

    let permanent = rt
        .spawn::<Counter>(
            AgentId::new("counter", "permanent"),
            SpawnOptions {
                restart: RestartPolicy::Permanent,
                ..SpawnOptions::default()
            },
        )
        .expect("spawn");
    permanent.send(CounterMsg::Add(2)).await.expect("send");
    permanent.send(CounterMsg::Finish).await.expect("send");
    assert_eq!(
        total(&permanent).await,
        Ok(2),
        "restarted after a normal end"
    );
}

#[tokio::test]
async fn stop_lets_queued_messages_through_then_closes_the_mailbox() {
    let (_store, rt) = runtime();
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "s"), SpawnOptions::default())
        .expect("spawn");
    counter.send(CounterMsg::Add(1)).await.expect("send");
    counter.stop().await.expect("stop");
    counter.stopped().await;
    assert!(matches!(
        counter.send(CounterMsg::Add(1)).await,
        Err(RuntimeError::NotRunning(_))
    ));
}

#[tokio::test]
async fn a_topic_reaches_every_subscriber() {
    let (_store, rt) = runtime();
    let mut counters = Vec::new();
    for key in ["x", "y"] {
        let agent = rt
            .spawn::<Counter>(AgentId::new("counter", key), SpawnOptions::default())
            .expect("spawn");
        rt.subscribe(&agent, "ticks", CounterMsg::Topic);
        counters.push(agent);
    }
    rt.publish("ticks", json!(4)).await;
    rt.publish("ticks", json!(3)).await;
    rt.publish("nobody-listens", json!(100)).await;
    for c in &counters {
        assert_eq!(total(c).await, Ok(7));
    }
}

/// Regression (issue 14): one stopped subscriber used to unsubscribe every
/// subscriber of its topic.
#[tokio::test]
async fn a_stopped_subscriber_leaves_the_others_subscribed() {
    let (_store, rt) = runtime();
    let mut counters = Vec::new();
    for key in ["gone", "stays"] {
        let agent = rt
            .spawn::<Counter>(AgentId::new("counter", key), SpawnOptions::default())
            .expect("spawn");
        rt.subscribe(&agent, "ticks", CounterMsg::Topic);
        counters.push(agent);
    }
    let (gone, stays) = (&counters[0], &counters[1]);
    gone.stop().await.expect("stop");
    gone.stopped().await;
    // The first publish finds the stopped one and forgets it...
    rt.publish("ticks", json!(4)).await;
    // ...and the next ones still reach the other.
    rt.publish("ticks", json!(3)).await;
    rt.publish("ticks", json!(2)).await;
    assert_eq!(total(stays).await, Ok(9));
}

#[tokio::test]
async fn a_thousand_agents_run_side_by_side() {
    let rt = Runtime::new(None, Uuid::now_v7());
    let agents: Vec<_> = (0..1000)
        .map(|i| {
            rt.spawn::<Counter>(
                AgentId::new("counter", i.to_string()),
                SpawnOptions::default(),
            )
            .expect("spawn")
        })
        .collect();
    for (i, a) in agents.iter().enumerate() {
        a.send(CounterMsg::Add(i as i64)).await.expect("send");
    }
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(total(a).await, Ok(i as i64));
    }
}

#[tokio::test]
async fn messages_are_logged_by_their_durability_and_ephemeral_ones_never() {
    let (store, rt) = runtime();
    let counter = rt
        .spawn::<Counter>(AgentId::new("counter", "m"), SpawnOptions::default())
        .expect("spawn");
    counter
        .send_logged(CounterMsg::Add(1), json!({"add": 1}), Durability::Durable)
        .await
        .expect("durable");
    // A durable message is in the log before the agent can have handled it.
    let inbox = "agent:counter/m:inbox";
    assert_eq!(
        store.read_stream(inbox, 1, 10).await.expect("inbox").len(),
        1
    );
    counter
        .send_logged(CounterMsg::Add(2), json!({"add": 2}), Durability::Async)
        .await
        .expect("async");
    counter
        .send_logged(CounterMsg::Add(4), json!({"add": 4}), Durability::Ephemeral)
        .await
        .expect("ephemeral");
    assert_eq!(total(&counter).await, Ok(7));
    // The async append lands in the background; wait for the log to hold it.
    store.wait_for_events(2).await.expect("wait");
    let mut logged = store.read_stream(inbox, 1, 10).await.expect("inbox");
    while logged.len() < 2 {
        let head = store.head().await.expect("head").seq;
        store.wait_for_events(head).await.expect("wait");
        logged = store.read_stream(inbox, 1, 10).await.expect("inbox");
    }
    let messages: Vec<Value> = logged
        .iter()
        .map(|e| match e.decode().expect("decode") {
            agentic_core::SystemEvent::AgentMessaged { message, .. } => message,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(messages, vec![json!({"add": 1}), json!({"add": 2})]);
}

/// Records what it is told to, with the durability it is told.
struct Journal;

enum JournalMsg {
    /// Records `{"n": N}` async.
    Async(i64),
    /// Records `{"n": N}` durably, then answers.
    Durable(i64, Reply<()>),
    /// Records `{"n": 0..N}` async, counting each record made.
    Many(i64, Arc<AtomicUsize>),
}

#[async_trait]
impl Agent for Journal {
    type Msg = JournalMsg;

    async fn start(_ctx: &AgentContext) -> Result<Self, AgentError> {
        Ok(Journal)
    }

    async fn handle(&mut self, ctx: &AgentContext, msg: JournalMsg) -> Result<(), AgentError> {
        match msg {
            JournalMsg::Async(n) => ctx.record(json!({ "n": n }), Durability::Async).await?,
            JournalMsg::Durable(n, reply) => {
                ctx.record(json!({ "n": n }), Durability::Durable).await?;
                let _ = reply.send(());
            }
            JournalMsg::Many(count, made) => {
                for n in 0..count {
                    ctx.record(json!({ "n": n }), Durability::Async).await?;
                    made.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }
}

/// The `n` of every event the journal recorded, in stream order.
async fn journal(store: &dyn EventStore, id: &AgentId) -> Vec<i64> {
    store
        .read_stream(&id.stream(), 1, usize::MAX)
        .await
        .expect("read")
        .iter()
        .filter_map(|e| match e.decode().expect("decode") {
            agentic_core::SystemEvent::AgentRecorded { data, .. } => data["n"].as_i64(),
            _ => None,
        })
        .collect()
}

/// Regression (issue 14): each async event was appended by a detached task
/// of its own, so a later durable event (or another async one) could reach
/// the log first. Now a durable event is committed after every event
/// recorded before it, in order.
#[tokio::test]
async fn recorded_events_reach_the_log_in_the_order_they_were_recorded() {
    let (store, rt) = runtime();
    let id = AgentId::new("journal", "order");
    let agent = rt
        .spawn::<Journal>(id.clone(), SpawnOptions::default())
        .expect("spawn");
    for n in 0..50 {
        agent.send(JournalMsg::Async(n)).await.expect("send");
    }
    agent
        .ask(
            |reply| JournalMsg::Durable(50, reply),
            Duration::from_secs(60),
        )
        .await
        .expect("durable");
    let expected: Vec<i64> = (0..=50).collect();
    assert_eq!(journal(&*store, &id).await, expected);
}

/// Regression (issue 14): async events waited for a slow store without
/// bound (a detached task each). With the store stuck, an agent recording
/// in a loop waits once the runtime's queue is full; when the store moves,
/// everything is logged, in order.
#[tokio::test(start_paused = true)]
async fn a_stuck_store_makes_a_recording_agent_wait_instead_of_growing_memory() {
    let store = GatedStore::closed();
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let rt = Runtime::new(Some(dyn_store), Uuid::now_v7());
    let id = AgentId::new("journal", "flood");
    let agent = rt
        .spawn::<Journal>(id.clone(), SpawnOptions::default())
        .expect("spawn");
    let made = Arc::new(AtomicUsize::new(0));
    let count = 3 * RUNTIME_APPEND_QUEUE;
    agent
        .send(JournalMsg::Many(count as i64, made.clone()))
        .await
        .expect("send");
    // The paused clock moves only once every task is idle: the agent is
    // waiting for room in the queue, or has finished.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let so_far = made.load(Ordering::SeqCst);
    // At most a full queue plus the batch the appender holds.
    assert!(
        so_far <= 2 * RUNTIME_APPEND_QUEUE,
        "{so_far} of {count} records made while the store was stuck"
    );
    store.open();
    agent
        .ask(
            |reply| JournalMsg::Durable(count as i64, reply),
            Duration::from_secs(3600),
        )
        .await
        .expect("durable");
    let expected: Vec<i64> = (0..count as i64).chain([count as i64]).collect();
    assert_eq!(journal(store.memory(), &id).await, expected);
}
