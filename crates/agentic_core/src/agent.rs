//! The agent runtime: actors with an id, a bounded mailbox and their own
//! state, that talk only by messages.
//!
//! An [`Agent`] is behaviour; its state is built by [`Agent::start`] when it
//! is spawned and again on every restart, from the events it recorded in
//! its own stream of the log (so a restart, or a new process, rebuilds it
//! exactly). Messages are ephemeral: only recorded events
//! ([`AgentContext::record`]) change state that replay must reproduce.
//!
//! Supervision, after ractor and kameo: a [`RestartPolicy`] says whether an
//! agent that failed (its `start` or `handle` returned an error, or
//! panicked) or stopped itself is started again, and a [`RestartLimit`]
//! stops one that keeps failing. Its mailbox survives restarts.
//!
//! Recording: every event a runtime logs (an agent's recorded state, a
//! logged message) goes through one appender per runtime, in the order it
//! was recorded, over a bounded queue ([`RUNTIME_APPEND_QUEUE`]): an async
//! event never overtakes an earlier one of its stream, a durable one is
//! committed after every event recorded before it, and a flood of async
//! events slows the agents recording them instead of growing memory.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::event::{NewEvent, SystemEvent};
use crate::store::{EventStore, ExpectedVersion, StoreError};
use crate::task::Durability;

/// An agent's identity: its type and a key unique within the type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId {
    /// What kind of agent (e.g. `"counter"`).
    pub kind: String,
    /// Which one of that kind.
    pub key: String,
}

impl AgentId {
    /// The id `kind/key`.
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            key: key.into(),
        }
    }

    /// The log stream holding this agent's events.
    pub fn stream(&self) -> String {
        format!("agent:{self}")
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// Why an agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(pub String);

impl AgentError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

/// Errors of the runtime's operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// An agent with this id is already running.
    #[error("agent {0} is already running")]
    AlreadyRunning(AgentId),
    /// The agent has stopped (or never ran): its mailbox is closed.
    #[error("agent {0} is not running")]
    NotRunning(AgentId),
    /// The agent did not answer in time.
    #[error("agent {0} did not answer within {1:?}")]
    Timeout(AgentId, Duration),
    /// The agent dropped the reply without answering (it failed meanwhile).
    #[error("agent {0} dropped the request without answering")]
    NoAnswer(AgentId),
    /// A durable message could not be logged, so it was not delivered.
    #[error("message to agent {0} not logged, so not delivered: {1}")]
    NotLogged(AgentId, String),
}

/// Whether a supervisor starts an agent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Always, after a failure or after it stopped itself.
    Permanent,
    /// Only after a failure.
    #[default]
    Transient,
    /// Never.
    Never,
}

/// At most `max_restarts` restarts within `window`; one more stops the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimit {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
}

impl Default for RestartLimit {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(5),
        }
    }
}

/// How an agent is spawned.
#[derive(Debug, Clone, Copy)]
pub struct SpawnOptions {
    /// Mailbox capacity: senders wait when it is full.
    pub mailbox: usize,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Restart limit.
    pub limit: RestartLimit,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            mailbox: 64,
            restart: RestartPolicy::default(),
            limit: RestartLimit::default(),
        }
    }
}

/// Behaviour of an agent; its state is `Self`.
#[async_trait]
pub trait Agent: Sized + Send + 'static {
    /// The messages it accepts.
    type Msg: Send + 'static;

    /// Builds the agent when it starts and on every restart; read the
    /// agent's recorded events with [`AgentContext::history`] to rebuild it.
    async fn start(ctx: &AgentContext) -> Result<Self, AgentError>;

    /// Handles one message. An error (or a panic) is a failure: the
    /// supervisor restarts the agent or stops it, by its policy.
    async fn handle(&mut self, ctx: &AgentContext, msg: Self::Msg) -> Result<(), AgentError>;
}

/// The reply half of an [`AgentRef::ask`]: put it in the message.
pub type Reply<T> = oneshot::Sender<T>;

/// Events a runtime may have waiting for its appender. Past this, recording
/// (and sending a logged message) waits for the store: a flood of async
/// events slows the agents making them instead of growing memory. The
/// appender commits up to this many at once.
pub const RUNTIME_APPEND_QUEUE: usize = 1024;

/// One event for a runtime's appender, and who waits for its commit.
struct Append {
    event: NewEvent,
    /// Set for a durable event: told once the event is committed.
    committed: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Where a runtime's events go: one appender task per runtime (started on
/// first use), fed in order through a bounded queue; cheap to clone.
#[derive(Clone)]
struct Log {
    store: Arc<dyn EventStore>,
    queue: Arc<OnceLock<mpsc::Sender<Append>>>,
}

impl Log {
    fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Queues `event` behind every event recorded before it, waiting while
    /// the queue is full; a durable event also waits for its commit.
    async fn append(&self, event: NewEvent, durability: Durability) -> Result<(), StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(RUNTIME_APPEND_QUEUE);
            tokio::spawn(append_in_order(self.store.clone(), rx));
            tx
        });
        let (committed, commit) = match durability {
            Durability::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Durability::Async | Durability::Ephemeral => (None, None),
        };
        queue
            .send(Append { event, committed })
            .await
            .map_err(|_| StoreError::Closed)?;
        match commit {
            Some(commit) => commit.await.map_err(|_| StoreError::Closed)?,
            None => Ok(()),
        }
    }
}

/// A runtime's appender: appends what is queued, in order, as many events
/// per commit as are waiting; it ends when every handle to the queue is
/// gone and the queue is empty.
async fn append_in_order(store: Arc<dyn EventStore>, mut queue: mpsc::Receiver<Append>) {
    let mut waiting = Vec::new();
    while queue.recv_many(&mut waiting, RUNTIME_APPEND_QUEUE).await > 0 {
        let (events, committed): (Vec<_>, Vec<_>) =
            waiting.drain(..).map(|a| (a.event, a.committed)).unzip();
        let result = store.append(events, ExpectedVersion::Any).await.map(|_| ());
        if let Err(e) = &result
            && committed.iter().any(Option::is_none)
        {
            tracing::error!(error = %e, "agents' async events were not recorded");
        }
        for tell in committed.into_iter().flatten() {
            let _ = tell.send(result.clone());
        }
    }
}

/// A message or a command in a mailbox.
enum Mail<M> {
    Msg(M),
    Stop,
}

/// A handle to send an agent messages; cheap to clone.
pub struct AgentRef<A: Agent> {
    id: Arc<AgentId>,
    tx: mpsc::Sender<Mail<A::Msg>>,
    /// Where logged messages go (the runtime's log).
    log: Option<Log>,
    correlation_id: uuid::Uuid,
}

impl<A: Agent> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            tx: self.tx.clone(),
            log: self.log.clone(),
            correlation_id: self.correlation_id,
        }
    }
}

impl<A: Agent> AgentRef<A> {
    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// Sends a message (fire-and-forget); waits while the mailbox is full.
    pub async fn send(&self, msg: A::Msg) -> Result<(), RuntimeError> {
        self.tx
            .send(Mail::Msg(msg))
            .await
            .map_err(|_| RuntimeError::NotRunning((*self.id).clone()))
    }

    /// Sends a message with a durability: `Durable` logs `record` (an
    /// `AgentMessaged` event) and delivers once it is committed; `Async`
    /// queues it for the runtime's appender (waiting only while that queue
    /// is full), delivers, and it commits with the next batch; `Ephemeral`
    /// is [`AgentRef::send`]. Without a store nothing is logged.
    pub async fn send_logged(
        &self,
        msg: A::Msg,
        record: Value,
        durability: Durability,
    ) -> Result<(), RuntimeError> {
        let Some(log) = &self.log else {
            return self.send(msg).await;
        };
        let event = NewEvent::new(
            SystemEvent::AgentMessaged {
                to: (*self.id).clone(),
                message: record,
            },
            self.correlation_id,
        );
        match durability {
            Durability::Durable | Durability::Async => {
                log.append(event, durability)
                    .await
                    .map_err(|e| RuntimeError::NotLogged((*self.id).clone(), e.to_string()))?;
                self.send(msg).await
            }
            Durability::Ephemeral => self.send(msg).await,
        }
    }

    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn ask<R>(
        &self,
        make: impl FnOnce(Reply<R>) -> A::Msg,
        timeout: Duration,
    ) -> Result<R, RuntimeError> {
        let (reply, mut answer) = oneshot::channel();
        self.send(make(reply)).await?;
        // Most answers come back within one turn of the scheduler: look once
        // before arming a timer (a timer costs about a fifth of an ask).
        tokio::task::yield_now().await;
        match answer.try_recv() {
            Ok(r) => return Ok(r),
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(RuntimeError::NoAnswer((*self.id).clone()));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(RuntimeError::NoAnswer((*self.id).clone())),
            Err(_) => Err(RuntimeError::Timeout((*self.id).clone(), timeout)),
        }
    }

    /// Asks the agent to stop after the messages already in its mailbox.
    pub async fn stop(&self) -> Result<(), RuntimeError> {
        self.tx
            .send(Mail::Stop)
            .await
            .map_err(|_| RuntimeError::NotRunning((*self.id).clone()))
    }

    /// Resolves once the agent has stopped for good.
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }
}

/// What an agent can reach: its id, its log stream, and topics.
#[derive(Clone)]
pub struct AgentContext {
    id: Arc<AgentId>,
    runtime: Runtime,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

/// Events read per round trip when an agent reads its history.
const HISTORY_PAGE: usize = 1024;

impl AgentContext {
    /// This agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// The events this agent recorded, oldest first (empty without a store).
    pub async fn history(&self) -> Result<Vec<Value>, AgentError> {
        let Some(store) = &self.runtime.inner.store else {
            return Ok(Vec::new());
        };
        let stream = self.id.stream();
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_stream(&stream, from, HISTORY_PAGE).await?;
            let Some(last) = page.last() else { break };
            from = last.stream_version + 1;
            for e in &page {
                if let Ok(SystemEvent::AgentRecorded { data, .. }) = e.decode() {
                    out.push(data);
                }
            }
        }
        Ok(out)
    }

    /// Ends this agent normally after the current message (a `Permanent`
    /// agent is started again; others stop).
    pub fn finish(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records an event of this agent's state, after every event recorded
    /// before it: durable waits for the commit, async returns once the
    /// event is queued (at once, unless [`RUNTIME_APPEND_QUEUE`] events are
    /// waiting), ephemeral records nothing (and so must not carry state a
    /// restart needs).
    pub async fn record(&self, data: Value, durability: Durability) -> Result<(), AgentError> {
        let Some(log) = &self.runtime.inner.log else {
            return Ok(());
        };
        let event = NewEvent {
            stream: self.id.stream(),
            ..NewEvent::new(
                SystemEvent::AgentRecorded {
                    agent: (*self.id).clone(),
                    data,
                },
                self.runtime.inner.correlation_id,
            )
        };
        match durability {
            Durability::Durable | Durability::Async => log.append(event, durability).await?,
            Durability::Ephemeral => {}
        }
        Ok(())
    }

    /// Publishes a message on a topic to every agent subscribed to it.
    pub async fn publish(&self, topic: &str, message: Value) {
        self.runtime.publish(topic, message).await;
    }

    /// Subscribes this agent to a topic: each message becomes `to_msg(message)`
    /// in its mailbox.
    pub fn subscribe<A: Agent>(
        &self,
        me: &AgentRef<A>,
        topic: &str,
        to_msg: impl Fn(Value) -> A::Msg + Send + Sync + 'static,
    ) {
        self.runtime.subscribe(me, topic, to_msg);
    }

    /// The runtime this agent runs in (to spawn or find other agents).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

type Delivery = Pin<Box<dyn Future<Output = bool> + Send>>;
type Subscriber = Arc<dyn Fn(Value) -> Delivery + Send + Sync>;

/// Spawns, finds and supervises agents; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    store: Option<Arc<dyn EventStore>>,
    /// Where its events go, in order (none without a store).
    log: Option<Log>,
    correlation_id: uuid::Uuid,
    agents: Mutex<HashMap<AgentId, Box<dyn Any + Send + Sync>>>,
    topics: Mutex<HashMap<String, Vec<Subscriber>>>,
}

impl Runtime {
    /// A runtime recording agents' events to `store` (none: nothing is recorded).
    pub fn new(store: Option<Arc<dyn EventStore>>, correlation_id: uuid::Uuid) -> Self {
        Self {
            inner: Arc::new(RuntimeInner {
                log: store.clone().map(Log::new),
                store,
                correlation_id,
                agents: Mutex::new(HashMap::new()),
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Spawns agent `id` of type `A` under supervision.
    pub fn spawn<A: Agent>(
        &self,
        id: AgentId,
        options: SpawnOptions,
    ) -> Result<AgentRef<A>, RuntimeError> {
        let mut agents = self
            .inner
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = agents
            .get(&id)
            .and_then(|a| a.downcast_ref::<AgentRef<A>>())
            && !existing.tx.is_closed()
        {
            return Err(RuntimeError::AlreadyRunning(id));
        }
        let (tx, rx) = mpsc::channel(options.mailbox.max(1));
        let agent = AgentRef {
            id: Arc::new(id.clone()),
            tx,
            log: self.inner.log.clone(),
            correlation_id: self.inner.correlation_id,
        };
        agents.insert(id, Box::new(agent.clone()));
        drop(agents);
        let ctx = AgentContext {
            id: agent.id.clone(),
            runtime: self.clone(),
            finished: Arc::default(),
        };
        tokio::spawn(supervise::<A>(ctx, rx, options));
        Ok(agent)
    }

    /// The running agent `id` of type `A`, if any.
    pub fn get<A: Agent>(&self, id: &AgentId) -> Option<AgentRef<A>> {
        let agents = self
            .inner
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        agents
            .get(id)
            .and_then(|a| a.downcast_ref::<AgentRef<A>>())
            .filter(|a| !a.tx.is_closed())
            .cloned()
    }

    /// Publishes a message on a topic; waits while a subscriber's mailbox is full.
    pub async fn publish(&self, topic: &str, message: Value) {
        let subscribers: Vec<Subscriber> = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
            .unwrap_or_default();
        let mut gone = Vec::new();
        for s in &subscribers {
            if !s(message.clone()).await {
                gone.push(s.clone());
            }
        }
        if !gone.is_empty() {
            // Forget the subscribers whose agents stopped, and only those.
            let mut topics = self
                .inner
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = topics.get_mut(topic) {
                list.retain(|s| !gone.iter().any(|g| Arc::ptr_eq(g, s)));
                if list.is_empty() {
                    topics.remove(topic);
                }
            }
        }
    }

    /// Subscribes `agent` to a topic: each message becomes `to_msg(message)`
    /// in its mailbox.
    pub fn subscribe<A: Agent>(
        &self,
        agent: &AgentRef<A>,
        topic: &str,
        to_msg: impl Fn(Value) -> A::Msg + Send + Sync + 'static,
    ) {
        let tx = agent.tx.clone();
        let to_msg = Arc::new(to_msg);
        let deliver: Subscriber = Arc::new(move |message| {
            let tx = tx.clone();
            let to_msg = to_msg.clone();
            Box::pin(async move { tx.send(Mail::Msg(to_msg(message))).await.is_ok() })
        });
        self.inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_default()
            .push(deliver);
    }
}

/// How one run of an agent ended.
enum Exit {
    /// It was asked to stop, or every handle to it is gone.
    Stopped,
    /// It ended itself normally ([`AgentContext::finish`]).
    Finished,
    /// It failed.
    Failed(String),
}

/// Runs an agent, restarting it by its policy, until it stops for good.
async fn supervise<A: Agent>(
    ctx: AgentContext,
    mut rx: mpsc::Receiver<Mail<A::Msg>>,
    options: SpawnOptions,
) {
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        ctx.finished
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let exit = run_once::<A>(&ctx, &mut rx).await;
        let restart = match (&exit, options.restart) {
            (Exit::Stopped, _) | (_, RestartPolicy::Never) => false,
            (Exit::Failed(_), _) | (Exit::Finished, RestartPolicy::Permanent) => true,
            (Exit::Finished, RestartPolicy::Transient) => false,
        };
        if let Exit::Failed(reason) = &exit {
            tracing::warn!(agent = %ctx.id, %reason, restart, "agent failed");
        }
        if !restart {
            break;
        }
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > options.limit.window)
        {
            restarts.pop_front();
        }
        if restarts.len() >= options.limit.max_restarts as usize {
            tracing::warn!(agent = %ctx.id, "restart limit reached; agent stopped");
            break;
        }
        restarts.push_back(now);
    }
    rx.close();
}

/// One run: start the agent, then handle mail until it stops or fails.
async fn run_once<A: Agent>(ctx: &AgentContext, rx: &mut mpsc::Receiver<Mail<A::Msg>>) -> Exit {
    let mut agent = match CatchUnwind(A::start(ctx)).await {
        Ok(Ok(agent)) => agent,
        Ok(Err(e)) => return Exit::Failed(format!("start failed: {e}")),
        Err(()) => return Exit::Failed("start panicked".into()),
    };
    while let Some(mail) = rx.recv().await {
        match mail {
            Mail::Msg(msg) => match CatchUnwind(agent.handle(ctx, msg)).await {
                Ok(Ok(())) if ctx.finished.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Exit::Finished;
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Exit::Failed(e.0),
                Err(()) => return Exit::Failed("handle panicked".into()),
            },
            Mail::Stop => return Exit::Stopped,
        }
    }
    Exit::Stopped
}

/// Runs a future, turning a panic inside it into `Err(())` so that a
/// panicking agent is a failure its supervisor handles, not a lost task.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.0);
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
