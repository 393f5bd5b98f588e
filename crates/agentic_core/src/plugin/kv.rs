//! [`KvView`]: a loaded plugin's key-value data as this process serves it to
//! calls — what the log holds, with this process's own writes on top until
//! the log shows them.
//!
//! A process that follows the log (the kernel) sees every `plugin_kv_set`
//! event, its own included, some time after the call that wrote it; by then
//! later calls may have written the same key again. So the view keeps the
//! log's value of each key (`committed`, advanced only by events after the
//! position it was read at) apart from its own writes not yet seen in the
//! log (`pending`), and a call reads the pending value where there is one.
//! Events reach the log in the order the view recorded them, so the value a
//! call reads is always the newest, and never goes back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

/// One key-value write: the key and its new value (`None` deletes it).
pub(super) type KvWrite = (String, Option<String>);

/// A loaded plugin's key-value data; see the module docs.
#[derive(Debug)]
pub(super) struct KvView {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The data as the log has it up to `as_of`.
    committed: BTreeMap<String, String>,
    /// The last log position folded into `committed`: events at or before
    /// it are already in.
    as_of: u64,
    /// This process's writes recorded but not seen in the followed log yet,
    /// in the order they were recorded (by event id).
    pending: Vec<(Uuid, KvWrite)>,
    /// `committed` with `pending` applied: what the next call reads.
    snapshot: Arc<BTreeMap<String, String>>,
}

impl KvView {
    /// The data read from the log's projections as of position `as_of`.
    pub(super) fn new(committed: BTreeMap<String, String>, as_of: u64) -> Self {
        let snapshot = Arc::new(committed.clone());
        Self {
            inner: Mutex::new(Inner {
                committed,
                as_of,
                pending: Vec::new(),
                snapshot,
            }),
        }
    }

    /// What a call reads.
    pub(super) fn snapshot(&self) -> Arc<BTreeMap<String, String>> {
        self.lock().snapshot.clone()
    }

    /// Takes a call's writes, recorded as the events `ids` (one per write,
    /// in order). When `followed`, the process will see them again in the
    /// log ([`observe`](Self::observe)) and they stay pending until then;
    /// otherwise they are folded in at once.
    pub(super) fn wrote(&self, writes: Vec<(Uuid, KvWrite)>, followed: bool) {
        if writes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if followed {
            inner.pending.extend(writes);
        } else {
            for (_, (key, value)) in writes {
                apply(&mut inner.committed, key, value);
            }
        }
        inner.rebuild();
    }

    /// Drops pending writes that were never recorded (their append
    /// failed): the log will not show them.
    pub(super) fn forget(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.pending.retain(|(id, _)| !ids.contains(id));
        inner.rebuild();
    }

    /// Takes note of a key-value write the log holds at `seq`, recorded as
    /// the event `event_id` — by this process (then no longer pending) or
    /// by another one. Writes at or before the position the view was read
    /// at are in already.
    pub(super) fn observe(&self, seq: u64, event_id: Uuid, write: KvWrite) {
        let mut inner = self.lock();
        let own = inner.pending.iter().position(|(id, _)| *id == event_id);
        if let Some(i) = own {
            inner.pending.remove(i);
        }
        if seq > inner.as_of {
            inner.as_of = seq;
            apply(&mut inner.committed, write.0, write.1);
        } else if own.is_none() {
            return;
        }
        inner.rebuild();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn rebuild(&mut self) {
        let mut next = self.committed.clone();
        for (_, (key, value)) in &self.pending {
            apply(&mut next, key.clone(), value.clone());
        }
        self.snapshot = Arc::new(next);
    }
}

fn apply(kv: &mut BTreeMap<String, String>, key: String, value: Option<String>) {
    match value {
        Some(v) => kv.insert(key, v),
        None => kv.remove(&key),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> KvWrite {
        (key.to_owned(), Some(value.to_owned()))
    }

    fn value(view: &KvView, key: &str) -> Option<String> {
        view.snapshot().get(key).cloned()
    }

    #[test]
    fn own_writes_seen_late_in_the_log_never_take_a_key_back() {
        let view = KvView::new(BTreeMap::new(), 0);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        view.wrote(vec![(a, set("c", "1"))], true);
        view.wrote(vec![(b, set("c", "2"))], true);
        assert_eq!(value(&view, "c").as_deref(), Some("2"));
        // The log shows the first write after the second call wrote.
        view.observe(10, a, set("c", "1"));
        assert_eq!(value(&view, "c").as_deref(), Some("2"));
        view.observe(11, b, set("c", "2"));
        assert_eq!(value(&view, "c").as_deref(), Some("2"));
    }

    #[test]
    fn another_process_writes_in_log_order_around_pending_ones() {
        let view = KvView::new(BTreeMap::new(), 0);
        let own = Uuid::now_v7();
        view.wrote(vec![(own, set("c", "mine"))], true);
        // Committed before ours (it is seen first): ours still wins.
        view.observe(5, Uuid::now_v7(), set("c", "theirs"));
        assert_eq!(value(&view, "c").as_deref(), Some("mine"));
        view.observe(6, own, set("c", "mine"));
        assert_eq!(value(&view, "c").as_deref(), Some("mine"));
        // Committed after ours: theirs is the newest.
        view.observe(7, Uuid::now_v7(), set("c", "later"));
        assert_eq!(value(&view, "c").as_deref(), Some("later"));
    }

    #[test]
    fn events_the_read_already_holds_are_not_applied_again() {
        let mut read = BTreeMap::new();
        read.insert("c".to_owned(), "2".to_owned());
        let view = KvView::new(read, 20);
        // A follower behind the read sees older writes: skipped.
        view.observe(19, Uuid::now_v7(), set("c", "1"));
        assert_eq!(value(&view, "c").as_deref(), Some("2"));
        view.observe(21, Uuid::now_v7(), (String::from("c"), None));
        assert_eq!(value(&view, "c"), None);
    }

    #[test]
    fn writes_that_were_never_recorded_are_forgotten() {
        let view = KvView::new(BTreeMap::new(), 0);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        view.wrote(vec![(a, set("c", "1"))], true);
        view.wrote(vec![(b, set("c", "2"))], true);
        view.forget(&[b]);
        assert_eq!(value(&view, "c").as_deref(), Some("1"));
        view.observe(3, a, set("c", "1"));
        assert!(view.lock().pending.is_empty());
    }

    #[test]
    fn a_process_that_does_not_follow_the_log_folds_its_writes_at_once() {
        let view = KvView::new(BTreeMap::new(), 0);
        view.wrote(vec![(Uuid::now_v7(), set("c", "1"))], false);
        view.wrote(vec![(Uuid::now_v7(), set("c", "2"))], false);
        assert_eq!(value(&view, "c").as_deref(), Some("2"));
        assert!(view.lock().pending.is_empty());
    }
}
