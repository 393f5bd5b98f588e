//! `Pile`: a thread-safe, insertion-ordered collection of elements keyed by
//! id, meant to be shared between threads and tasks behind an `Arc`.
//!
//! One [`RwLock`] guards both the items and their order, so every operation
//! sees and leaves a consistent pile. Reads hand out clones, and iteration
//! goes over a snapshot ([`Pile::snapshot`]): no caller code ever runs while
//! the lock is held, so a callback may use the pile without deadlocking.

use std::ops::{Bound, RangeBounds};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use indexmap::IndexMap;
use indexmap::map::Entry;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use uuid::Uuid;

use crate::element::Element;
use crate::progression::Progression;

/// Why an operation on a [`Pile`] failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PileError {
    /// An item with this id is already in the pile.
    #[error("an item with id {0} is already in the pile")]
    Duplicate(Uuid),
    /// No item with this id is in the pile.
    #[error("no item with id {0} is in the pile")]
    NotFound(Uuid),
    /// A position is past the end of the pile.
    #[error("index {index} is out of range for a pile of length {len}")]
    IndexOutOfRange {
        /// The position that was asked for.
        index: usize,
        /// The length of the pile at the time.
        len: usize,
    },
}

/// A thread-safe collection of elements, unique by id, kept in insertion
/// order.
///
/// It is `Send + Sync` when `T` is, so share it with `Arc<Pile<T>>`.
/// Serializes as a JSON array of the items in order; deserializing rejects
/// an array that repeats an id.
pub struct Pile<T> {
    items: RwLock<IndexMap<Uuid, T>>,
}

impl<T> Pile<T> {
    /// An empty pile.
    pub fn new() -> Self {
        Self::from_map(IndexMap::new())
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the pile holds no items.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether an item with `id` is in the pile.
    pub fn contains(&self, id: Uuid) -> bool {
        self.read().contains_key(&id)
    }

    /// The ids of the items, in pile order, as of this call.
    pub fn ids(&self) -> Progression {
        self.read().keys().copied().collect()
    }

    fn from_map(map: IndexMap<Uuid, T>) -> Self {
        Self {
            items: RwLock::new(map),
        }
    }

    // A panic in another thread while it held the lock cannot leave the map
    // half-updated (every mutation is a single `IndexMap` call), so a
    // poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, IndexMap<Uuid, T>> {
        self.items.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexMap<Uuid, T>> {
        self.items.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Element + Clone> Pile<T> {
    /// A pile holding the items of `iter` in order.
    ///
    /// Fails with [`PileError::Duplicate`] when two items share an id.
    pub fn try_from_iter(iter: impl IntoIterator<Item = T>) -> Result<Self, PileError> {
        let mut map = IndexMap::new();
        for item in iter {
            match map.entry(item.id()) {
                Entry::Occupied(entry) => return Err(PileError::Duplicate(*entry.key())),
                Entry::Vacant(entry) => {
                    entry.insert(item);
                }
            }
        }
        Ok(Self::from_map(map))
    }

    /// Adds `item` at the end.
    ///
    /// Fails with [`PileError::Duplicate`] when its id is already present;
    /// the pile is then unchanged.
    pub fn add(&self, item: T) -> Result<(), PileError> {
        match self.write().entry(item.id()) {
            Entry::Occupied(entry) => Err(PileError::Duplicate(*entry.key())),
            Entry::Vacant(entry) => {
                entry.insert(item);
                Ok(())
            }
        }
    }

    /// A clone of the item with `id`.
    ///
    /// Fails with [`PileError::NotFound`] when it is absent.
    pub fn get(&self, id: Uuid) -> Result<T, PileError> {
        self.read().get(&id).cloned().ok_or(PileError::NotFound(id))
    }

    /// A clone of the item at position `index`.
    ///
    /// Fails with [`PileError::IndexOutOfRange`] when `index >= len()`.
    pub fn get_at(&self, index: usize) -> Result<T, PileError> {
        let map = self.read();
        map.get_index(index)
            .map(|(_, item)| item.clone())
            .ok_or(PileError::IndexOutOfRange {
                index,
                len: map.len(),
            })
    }

    /// Removes and returns the item with `id`, keeping the order of the rest.
    ///
    /// Fails with [`PileError::NotFound`] when it is absent.
    pub fn remove(&self, id: Uuid) -> Result<T, PileError> {
        self.write()
            .shift_remove(&id)
            .ok_or(PileError::NotFound(id))
    }

    /// Ensures `item`'s id is present, adding `item` at the end only if it is
    /// absent. An item already present is left as it is, not replaced.
    ///
    /// Idempotent. Returns whether the id is present after the call, which is
    /// always `true`.
    pub fn include(&self, item: T) -> bool {
        self.write().entry(item.id()).or_insert(item);
        true
    }

    /// Ensures no item with `id` is present, removing it if it is, and keeping
    /// the order of the rest.
    ///
    /// Idempotent. Returns whether the id is absent after the call, which is
    /// always `true`, whether or not it was present before.
    pub fn exclude(&self, id: Uuid) -> bool {
        self.write().shift_remove(&id);
        true
    }

    /// Replaces the item with `item`'s id, keeping its position, and returns
    /// the item it replaced.
    ///
    /// Fails with [`PileError::NotFound`] when no item has that id.
    pub fn update(&self, item: T) -> Result<T, PileError> {
        let id = item.id();
        self.write()
            .get_mut(&id)
            .map(|slot| std::mem::replace(slot, item))
            .ok_or(PileError::NotFound(id))
    }

    /// Clones of the items, in pile order, as of this call.
    pub fn to_vec(&self) -> Vec<T> {
        self.read().values().cloned().collect()
    }

    /// A point-in-time copy of the items, in order, to iterate over.
    ///
    /// The lock is released before this returns, so code run while iterating
    /// may read or change the pile; those changes do not show in the
    /// snapshot. The same as [`Pile::to_vec`].
    pub fn snapshot(&self) -> Vec<T> {
        self.to_vec()
    }

    /// A new pile holding the items with `ids`, in the order given.
    ///
    /// Fails with [`PileError::NotFound`] when an id is absent and with
    /// [`PileError::Duplicate`] when `ids` repeats an id.
    pub fn select_ids(&self, ids: &[Uuid]) -> Result<Self, PileError> {
        let map = self.read();
        let mut selected = IndexMap::with_capacity(ids.len());
        for &id in ids {
            let item = map.get(&id).ok_or(PileError::NotFound(id))?;
            if selected.insert(id, item.clone()).is_some() {
                return Err(PileError::Duplicate(id));
            }
        }
        Ok(Self::from_map(selected))
    }

    /// A new pile holding the items at the positions in `range`, in order.
    ///
    /// An empty or inverted range (such as `3..1`) selects nothing. Fails
    /// with [`PileError::IndexOutOfRange`] when a bound lies past the end
    /// (`len()..` is allowed and empty); `index` is then the first position
    /// asked for if the start is past the end, else the last.
    pub fn select_range(&self, range: impl RangeBounds<usize>) -> Result<Self, PileError> {
        let map = self.read();
        let len = map.len();
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => len,
        };
        if start > len {
            return Err(PileError::IndexOutOfRange { index: start, len });
        }
        if end > len {
            return Err(PileError::IndexOutOfRange {
                index: end - 1,
                len,
            });
        }
        let selected = map
            .get_range(start..end)
            .map(|slice| slice.iter().map(|(&id, item)| (id, item.clone())).collect())
            .unwrap_or_default();
        Ok(Self::from_map(selected))
    }

    /// A new pile holding the items for which `pred` is true, in pile order.
    ///
    /// `pred` runs on a snapshot, without the lock held.
    pub fn select_where(&self, pred: impl Fn(&T) -> bool) -> Self {
        let selected = self
            .snapshot()
            .into_iter()
            .filter(|item| pred(item))
            .map(|item| (item.id(), item))
            .collect();
        Self::from_map(selected)
    }
}

impl<T> Default for Pile<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Clones every item: the clone is an independent pile with its own lock.
impl<T: Clone> Clone for Pile<T> {
    fn clone(&self) -> Self {
        Self::from_map(self.read().clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.read().values()).finish()
    }
}

impl<T: Serialize> Serialize for Pile<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.read().values())
    }
}

impl<'de, T> Deserialize<'de> for Pile<T>
where
    T: Element + Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<T>::deserialize(deserializer)?;
        Self::try_from_iter(items).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::ElementData;
    use serde_json::Map;

    fn element(content: &str) -> ElementData {
        ElementData::new(Map::new(), Some(content.to_owned()))
    }

    fn pile_of(n: usize) -> (Pile<ElementData>, Vec<ElementData>) {
        let items: Vec<_> = (0..n).map(|i| element(&i.to_string())).collect();
        let pile = Pile::try_from_iter(items.clone()).unwrap();
        (pile, items)
    }

    fn ids(items: &[ElementData]) -> Vec<Uuid> {
        items.iter().map(|e| e.id).collect()
    }

    #[test]
    fn new_and_default_are_empty() {
        let pile: Pile<ElementData> = Pile::new();
        assert!(pile.is_empty());
        assert_eq!(pile.len(), 0);
        assert!(Pile::<ElementData>::default().is_empty());
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<S: Send + Sync>() {}
        assert_send_sync::<Pile<ElementData>>();
    }

    #[test]
    fn add_appends_and_rejects_duplicates() {
        let pile = Pile::new();
        let a = element("a");
        let b = element("b");
        pile.add(a.clone()).unwrap();
        pile.add(b.clone()).unwrap();
        let mut a2 = a.clone();
        a2.content = Some("changed".into());
        assert_eq!(pile.add(a2), Err(PileError::Duplicate(a.id)));
        assert_eq!(pile.len(), 2);
        assert_eq!(pile.ids().as_slice(), &[a.id, b.id]);
        assert!(pile.get(a.id).unwrap().same_content(&a));
    }

    #[test]
    fn get_clones_or_fails() {
        let (pile, items) = pile_of(2);
        assert!(pile.get(items[1].id).unwrap().same_content(&items[1]));
        let missing = Uuid::now_v7();
        assert_eq!(pile.get(missing), Err(PileError::NotFound(missing)));
    }

    #[test]
    fn get_at_by_position() {
        let (pile, items) = pile_of(3);
        assert_eq!(pile.get_at(2).unwrap(), items[2]);
        assert_eq!(
            pile.get_at(3),
            Err(PileError::IndexOutOfRange { index: 3, len: 3 })
        );
    }

    #[test]
    fn contains_reports_membership() {
        let (pile, items) = pile_of(1);
        assert!(pile.contains(items[0].id));
        assert!(!pile.contains(Uuid::now_v7()));
    }

    #[test]
    fn remove_keeps_order_of_the_rest() {
        let (pile, items) = pile_of(4);
        assert_eq!(pile.remove(items[1].id).unwrap(), items[1]);
        assert_eq!(
            pile.ids().as_slice(),
            &[items[0].id, items[2].id, items[3].id]
        );
        assert_eq!(
            pile.remove(items[1].id),
            Err(PileError::NotFound(items[1].id))
        );
    }

    #[test]
    fn include_adds_once_and_never_replaces() {
        let pile = Pile::new();
        let a = element("a");
        assert!(pile.include(a.clone()));
        let mut a2 = a.clone();
        a2.content = Some("changed".into());
        assert!(pile.include(a2));
        assert_eq!(pile.len(), 1);
        assert!(pile.get(a.id).unwrap().same_content(&a));
    }

    #[test]
    fn exclude_removes_if_present_and_is_idempotent() {
        let (pile, items) = pile_of(3);
        assert!(pile.exclude(items[0].id));
        assert!(pile.exclude(items[0].id));
        assert!(pile.exclude(Uuid::now_v7()));
        assert_eq!(pile.ids().as_slice(), &[items[1].id, items[2].id]);
    }

    #[test]
    fn update_replaces_in_place() {
        let (pile, items) = pile_of(3);
        let mut new = items[1].clone();
        new.content = Some("new".into());
        let old = pile.update(new.clone()).unwrap();
        assert!(old.same_content(&items[1]));
        assert!(pile.get_at(1).unwrap().same_content(&new));
        assert_eq!(pile.ids().as_slice(), ids(&items).as_slice());

        let stranger = element("x");
        assert_eq!(
            pile.update(stranger.clone()),
            Err(PileError::NotFound(stranger.id))
        );
        assert_eq!(pile.len(), 3);
    }

    #[test]
    fn to_vec_and_snapshot_are_in_order() {
        let (pile, items) = pile_of(3);
        assert_eq!(pile.to_vec(), items);
        assert_eq!(pile.snapshot(), items);
    }

    #[test]
    fn snapshot_iteration_may_change_the_pile() {
        let (pile, items) = pile_of(3);
        for item in pile.snapshot() {
            pile.remove(item.id).unwrap();
            pile.add(element("new")).unwrap();
        }
        assert_eq!(pile.len(), 3);
        assert!(items.iter().all(|item| !pile.contains(item.id)));
    }

    #[test]
    fn select_ids_keeps_given_order() {
        let (pile, items) = pile_of(4);
        let picked = pile.select_ids(&[items[3].id, items[0].id]).unwrap();
        assert_eq!(picked.ids().as_slice(), &[items[3].id, items[0].id]);
        assert_eq!(pile.len(), 4);
    }

    #[test]
    fn select_ids_rejects_missing_and_repeated_ids() {
        let (pile, items) = pile_of(2);
        let missing = Uuid::now_v7();
        assert_eq!(
            pile.select_ids(&[items[0].id, missing]).unwrap_err(),
            PileError::NotFound(missing)
        );
        assert_eq!(
            pile.select_ids(&[items[0].id, items[0].id]).unwrap_err(),
            PileError::Duplicate(items[0].id)
        );
    }

    #[test]
    fn select_range_by_position() {
        let (pile, items) = pile_of(5);
        let all = ids(&items);
        let got = |p: Pile<ElementData>| p.ids().as_slice().to_vec();
        assert_eq!(got(pile.select_range(1..3).unwrap()), &all[1..3]);
        assert_eq!(got(pile.select_range(1..=3).unwrap()), &all[1..=3]);
        assert_eq!(got(pile.select_range(..2).unwrap()), &all[..2]);
        assert_eq!(got(pile.select_range(3..).unwrap()), &all[3..]);
        assert_eq!(got(pile.select_range(..).unwrap()), all);
        assert_eq!(got(pile.select_range(5..).unwrap()), &[] as &[Uuid]);
        assert_eq!(got(pile.select_range(2..2).unwrap()), &[] as &[Uuid]);
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = pile.select_range(3..1).unwrap();
        assert!(inverted.is_empty());
    }

    #[test]
    fn select_range_past_end_fails() {
        let (pile, _) = pile_of(3);
        let err = |index| Err(PileError::IndexOutOfRange { index, len: 3 });
        assert_eq!(pile.select_range(0..4).map(|p| p.len()), err(3));
        assert_eq!(pile.select_range(..=3).map(|p| p.len()), err(3));
        assert_eq!(pile.select_range(3..).map(|p| p.len()), Ok(0));
        assert_eq!(pile.select_range(6..).map(|p| p.len()), err(6));
        assert_eq!(pile.select_range(2..9).map(|p| p.len()), err(8));
    }

    #[test]
    fn select_where_keeps_pile_order() {
        let (pile, items) = pile_of(6);
        let even = pile.select_where(|e| {
            e.content
                .as_deref()
                .and_then(|c| c.parse::<u32>().ok())
                .is_some_and(|n| n % 2 == 0)
        });
        assert_eq!(
            even.ids().as_slice(),
            &[items[0].id, items[2].id, items[4].id]
        );
    }

    #[test]
    fn select_where_predicate_may_use_the_pile() {
        let (pile, items) = pile_of(3);
        let picked = pile.select_where(|e| pile.contains(e.id) && e.id != items[1].id);
        assert_eq!(picked.ids().as_slice(), &[items[0].id, items[2].id]);
    }

    #[test]
    fn try_from_iter_rejects_duplicates() {
        let a = element("a");
        let err = Pile::try_from_iter([a.clone(), element("b"), a.clone()]).unwrap_err();
        assert_eq!(err, PileError::Duplicate(a.id));
    }

    #[test]
    fn clone_is_independent() {
        let (pile, items) = pile_of(2);
        let copy = pile.clone();
        pile.remove(items[0].id).unwrap();
        assert_eq!(copy.ids().as_slice(), ids(&items).as_slice());
        assert_eq!(pile.len(), 1);
    }

    #[test]
    fn debug_lists_items() {
        let (pile, items) = pile_of(1);
        let text = format!("{pile:?}");
        assert!(text.starts_with('['));
        assert!(text.contains(&items[0].id.to_string()));
    }

    #[test]
    fn serde_round_trip_keeps_order_and_content() {
        let (pile, items) = pile_of(4);
        let text = serde_json::to_string(&pile).unwrap();
        assert!(text.starts_with('['));
        let back: Pile<ElementData> = serde_json::from_str(&text).unwrap();
        let back = back.to_vec();
        assert_eq!(back.len(), items.len());
        assert!(back.iter().zip(&items).all(|(a, b)| a.same_content(b)));
    }

    #[test]
    fn deserialize_rejects_duplicates() {
        let a = element("a");
        let text = serde_json::to_string(&[&a, &a]).unwrap();
        let err = serde_json::from_str::<Pile<ElementData>>(&text).unwrap_err();
        assert!(err.to_string().contains(&a.id.to_string()));
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            PileError::IndexOutOfRange { index: 4, len: 2 }.to_string(),
            "index 4 is out of range for a pile of length 2"
        );
    }
}
