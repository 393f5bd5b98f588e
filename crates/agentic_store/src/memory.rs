//! [`MemoryStore`]: an in-memory [`EventStore`] with the same contract as the
//! durable one (gapless sequence, hash chain, idempotent appends, reducer
//! checks), for tests and runs that need no durability.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use agentic_core::chain::seal;
use agentic_core::llm::AgentRecord;
use agentic_core::plugin::PluginRecord;
use agentic_core::store::{batch_stream, import};
use agentic_core::workflow::RunRecord;
use agentic_core::{
    AgentView, AppendReceipt, ChainHead, Cursor, ElementData, EventEnvelope, EventStore,
    ExpectedVersion, NewEvent, Page, PluginSnapshot, State, StoreError, Subscription, SystemEvent,
    TaskFilter, TaskRecord,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

/// An event store that lives in memory and is gone when dropped.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    head: watch::Sender<ChainHead>,
}

#[derive(Default)]
struct Inner {
    log: Vec<EventEnvelope>,
    state: State,
    seq_by_event_id: HashMap<Uuid, u64>,
    stream_versions: HashMap<String, u64>,
    /// Each installed plugin's place in the list: the seq of its install,
    /// which (unlike its index) stays put when an earlier plugin is removed.
    plugin_positions: HashMap<String, u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            head: watch::channel(ChainHead::EMPTY).0,
        }
    }

    /// Runs `f` on the stored log (tests use it to inspect or tamper with records).
    pub fn with_log<R>(&self, f: impl FnOnce(&mut Vec<EventEnvelope>) -> R) -> R {
        f(&mut self.lock().log)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn head(&self) -> ChainHead {
        self.log.last().map_or(ChainHead::EMPTY, |e| ChainHead {
            seq: e.seq,
            hash: e.hash,
        })
    }

    /// Seqs of a batch already stored in full, or an error if only part is.
    fn already_stored(&self, events: &[NewEvent]) -> Result<Option<AppendReceipt>, StoreError> {
        let seqs: Vec<Option<u64>> = events
            .iter()
            .map(|e| self.seq_by_event_id.get(&e.event_id).copied())
            .collect();
        if seqs.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some(i) = seqs.iter().position(Option::is_none) {
            let stored = events
                .iter()
                .zip(&seqs)
                .find(|(_, s)| s.is_some())
                .map_or(events[i].event_id, |(e, _)| e.event_id);
            return Err(StoreError::PartialDuplicate(stored));
        }
        Ok(Some(AppendReceipt::already_stored(
            seqs.into_iter().flatten(),
        )))
    }

    fn append(
        &mut self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        now: DateTime<Utc>,
    ) -> Result<AppendReceipt, StoreError> {
        let stream = batch_stream(&events)?;
        if let Some(receipt) = self.already_stored(&events)? {
            return Ok(receipt);
        }
        expected.check(
            stream,
            self.stream_versions.get(stream).copied().unwrap_or(0),
        )?;
        // All or nothing: a batch of several events is checked on a copy.
        let mut next_state = (events.len() > 1).then(|| self.state.clone());
        for e in &events {
            match &mut next_state {
                Some(s) => s.apply(&e.event)?,
                None => self.state.check(&e.event)?,
            }
        }
        let first_seq = self.head().seq + 1;
        for new in events {
            let version = self.stream_versions.entry(new.stream.clone()).or_insert(0);
            *version += 1;
            let mut pending = new.encode()?;
            pending.record.stream_version = *version;
            pending.record.recorded_at = now;
            if next_state.is_none() {
                self.state.apply(&pending.event)?;
            }
            seal(&self.head(), &mut pending.record);
            if let SystemEvent::PluginInstalled { plugin } = &pending.event {
                self.plugin_positions
                    .insert(plugin.name().to_owned(), pending.record.seq);
            }
            self.seq_by_event_id
                .insert(pending.record.event_id, pending.record.seq);
            self.log.push(pending.record);
        }
        if let Some(s) = next_state {
            self.state = s;
        }
        Ok(AppendReceipt {
            first_seq,
            last_seq: self.head().seq,
            deduplicated: false,
        })
    }
}

impl Inner {
    /// [`EventStore::import`]: checked in full on a copy of the state
    /// before anything is kept.
    fn import(&mut self, records: Vec<EventEnvelope>) -> Result<(), StoreError> {
        if import::is_retry(&records, |id| self.seq_by_event_id.get(&id).copied()) {
            return Ok(());
        }
        import::check_sealed(self.head(), &records)?;
        let events: Vec<SystemEvent> = records
            .iter()
            .map(import::decode)
            .collect::<Result<_, _>>()?;
        let mut state = self.state.clone();
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (record, event) in records.iter().zip(&events) {
            let current = versions
                .get(record.stream.as_str())
                .or_else(|| self.stream_versions.get(&record.stream))
                .copied()
                .unwrap_or(0);
            import::check_stream_version(record, event, current)?;
            if self.seq_by_event_id.contains_key(&record.event_id) || !ids.insert(record.event_id) {
                return Err(StoreError::Import {
                    seq: record.seq,
                    reason: format!("event id {} is already stored", record.event_id),
                });
            }
            state.apply(event)?;
            versions.insert(&record.stream, record.stream_version);
        }
        self.state = state;
        for (record, event) in records.into_iter().zip(events) {
            if let SystemEvent::PluginInstalled { plugin } = &event {
                self.plugin_positions
                    .insert(plugin.name().to_owned(), record.seq);
            }
            self.stream_versions
                .insert(record.stream.clone(), record.stream_version);
            self.seq_by_event_id.insert(record.event_id, record.seq);
            self.log.push(record);
        }
        Ok(())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn import(&self, records: Vec<EventEnvelope>) -> Result<ChainHead, StoreError> {
        let last = records.last().map(|r| ChainHead {
            seq: r.seq,
            hash: r.hash,
        });
        let head = {
            let mut inner = self.lock();
            inner.import(records)?;
            inner.head()
        };
        self.head.send_replace(head);
        Ok(last.unwrap_or(head))
    }

    async fn append(
        &self,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendReceipt, StoreError> {
        let (receipt, head) = {
            let mut inner = self.lock();
            let receipt = inner.append(events, expected, EventEnvelope::now())?;
            (receipt, inner.head())
        };
        self.head.send_replace(head);
        Ok(receipt)
    }

    async fn read_from(&self, from: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        let inner = self.lock();
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        Ok(inner.log.iter().skip(start).take(limit).cloned().collect())
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .log
            .iter()
            .filter(|e| e.stream == stream && e.stream_version >= from)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<ChainHead, StoreError> {
        Ok(self.lock().head())
    }

    async fn wait_for_events(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.head.subscribe();
        rx.wait_for(|h| h.seq > seq)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }

    async fn projected_state(&self) -> Result<State, StoreError> {
        Ok(self.lock().state.clone())
    }

    async fn element(&self, id: Uuid) -> Result<Option<ElementData>, StoreError> {
        Ok(self.lock().state.element(id).cloned())
    }

    async fn elements(&self, after: Cursor, limit: usize) -> Result<Page<ElementData>, StoreError> {
        Ok(page(self.lock().state.elements(), after, limit, |_| true))
    }

    async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.lock().state.task(id).cloned())
    }

    async fn task_by_key(&self, key: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.lock().state.task_by_key(key).cloned())
    }

    async fn tasks(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<TaskRecord>, StoreError> {
        let wanted = |t: &TaskRecord| match filter {
            TaskFilter::All => true,
            TaskFilter::Unfinished => !t.status.is_final(),
        };
        Ok(page(self.lock().state.tasks(), after, limit, wanted))
    }

    async fn workflow(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.lock().state.workflow(id).cloned())
    }

    async fn workflows(
        &self,
        filter: TaskFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Page<RunRecord>, StoreError> {
        let wanted = |r: &RunRecord| match filter {
            TaskFilter::All => true,
            TaskFilter::Unfinished => !r.status.is_final(),
        };
        Ok(page(self.lock().state.workflows(), after, limit, wanted))
    }

    async fn agent(
        &self,
        name: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Option<AgentView>, StoreError> {
        Ok(self
            .lock()
            .state
            .agent(name)
            .map(|a| agent_view(a, after, limit)))
    }

    async fn agents(&self, after: Cursor, limit: usize) -> Result<Page<AgentView>, StoreError> {
        let inner = self.lock();
        let listed = page(inner.state.agents(), after, limit, |_| true);
        Ok(Page {
            items: listed
                .items
                .iter()
                .map(|a| agent_view(a, Cursor::START, 0))
                .collect(),
            next: listed.next,
        })
    }

    async fn plugins(&self, after: Cursor, limit: usize) -> Result<Page<PluginRecord>, StoreError> {
        let inner = self.lock();
        let limit = limit.max(1);
        let rows = inner
            .state
            .plugins()
            .map(|p| {
                (
                    inner.plugin_positions.get(p.name()).copied().unwrap_or(0),
                    p,
                )
            })
            .filter(|(position, _)| *position > after.0)
            .take(limit.saturating_add(1))
            .map(|(position, p)| (position, p.clone()))
            .collect();
        Ok(Page::from_rows(rows, limit))
    }

    async fn plugin(&self, name: &str) -> Result<Option<PluginSnapshot>, StoreError> {
        let inner = self.lock();
        Ok(inner.state.plugin(name).map(|record| PluginSnapshot {
            record: record.clone(),
            kv: inner.state.plugin_kv(name).cloned().unwrap_or_default(),
            as_of: inner.head().seq,
        }))
    }

    fn subscribe(self: Arc<Self>, from: u64) -> Subscription {
        Subscription::new(self, from)
    }
}

/// A page of the items of `list` that `wanted` keeps, after position
/// `after`: here a position is an index into the whole list plus one.
fn page<'a, T: Clone + 'a>(
    list: impl Iterator<Item = &'a T>,
    after: Cursor,
    limit: usize,
    wanted: impl Fn(&T) -> bool,
) -> Page<T> {
    let limit = limit.max(1);
    let rows = list
        .enumerate()
        .skip(usize::try_from(after.0).unwrap_or(usize::MAX))
        .filter(|(_, item)| wanted(item))
        .take(limit.saturating_add(1))
        .map(|(i, item)| (i as u64 + 1, item.clone()))
        .collect();
    Page::from_rows(rows, limit)
}

/// `agent` with the messages after the first `after`, at most `limit`.
fn agent_view(agent: &AgentRecord, after: Cursor, limit: usize) -> AgentView {
    let count = agent.messages.len();
    let start = usize::try_from(after.0).unwrap_or(usize::MAX).min(count);
    let end = start.saturating_add(limit).min(count);
    let record = AgentRecord {
        name: agent.name.clone(),
        spec: agent.spec.clone(),
        status: agent.status,
        messages: agent.messages[start..end].to_vec(),
        usage: agent.usage,
    };
    AgentView {
        record,
        message_count: count as u64,
        next: (end < count).then_some(Cursor(end as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentic_core::{ChainVerifier, ElementData, SystemEvent};
    use serde_json::Map;

    fn created() -> NewEvent {
        let element = ElementData::new(Map::new(), None);
        NewEvent::new(SystemEvent::ElementCreated { element }, Uuid::now_v7())
    }

    #[tokio::test]
    async fn appends_chain_and_dedupe() {
        let store = MemoryStore::new();
        let a = created();
        let r1 = store
            .append(vec![a.clone()], ExpectedVersion::Any)
            .await
            .expect("append");
        assert_eq!((r1.first_seq, r1.last_seq, r1.deduplicated), (1, 1, false));
        let r2 = store
            .append(vec![a.clone()], ExpectedVersion::Any)
            .await
            .expect("again");
        assert_eq!((r2.first_seq, r2.deduplicated), (1, true));
        let b = created();
        let r3 = store
            .append(vec![b.clone()], ExpectedVersion::Any)
            .await
            .expect("b");
        assert_eq!(r3.first_seq, 2);
        assert_eq!(
            store.append(vec![created(), a], ExpectedVersion::Any).await,
            Err(StoreError::PartialDuplicate(r1_event_id(&store, 1).await))
        );
        let log = store.read_from(1, 10).await.expect("read");
        let mut v = ChainVerifier::new();
        for e in &log {
            v.check(e).expect("chain");
        }
        assert_eq!(v.head(), store.head().await.expect("head"));
    }

    async fn r1_event_id(store: &MemoryStore, seq: u64) -> Uuid {
        store.read_from(seq, 1).await.expect("read")[0].event_id
    }

    #[tokio::test]
    async fn a_refused_batch_changes_nothing() {
        let store = MemoryStore::new();
        let a = created();
        let mut dup = a.clone();
        dup.event_id = Uuid::now_v7();
        let err = store
            .append(vec![a, dup], ExpectedVersion::Any)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
        assert_eq!(store.head().await.expect("head"), ChainHead::EMPTY);
        assert_eq!(
            store
                .projected_state()
                .await
                .expect("state")
                .elements()
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn expected_versions_are_enforced_per_stream() {
        let store = MemoryStore::new();
        let note = || {
            let agent = agentic_core::AgentId::new("test", "notes");
            let data = serde_json::Value::Null;
            let mut e = NewEvent::new(SystemEvent::AgentRecorded { agent, data }, Uuid::now_v7());
            e.stream = "orders".into();
            e
        };
        store
            .append(vec![note()], ExpectedVersion::NoStream)
            .await
            .expect("first");
        let again = note();
        let err = store
            .append(vec![again.clone()], ExpectedVersion::NoStream)
            .await;
        assert!(matches!(
            err,
            Err(StoreError::WrongExpectedVersion { actual: 1, .. })
        ));
        store
            .append(vec![again], ExpectedVersion::Exact(1))
            .await
            .expect("exact");
    }

    #[tokio::test]
    async fn subscription_sees_old_and_new_events() {
        let store = Arc::new(MemoryStore::new());
        store
            .append(vec![created()], ExpectedVersion::Any)
            .await
            .expect("1");
        let mut sub = store.clone().subscribe(1);
        assert_eq!(sub.next().await.expect("first").seq, 1);
        let writer = store.clone();
        let task =
            tokio::spawn(async move { writer.append(vec![created()], ExpectedVersion::Any).await });
        assert_eq!(sub.next().await.expect("second").seq, 2);
        task.await.expect("join").expect("append");
    }
}
