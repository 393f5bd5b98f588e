//! `Progression`: an ordered list of ids, used to record a sequence of
//! elements (a conversation, a work queue, a branch) without holding the
//! elements themselves.
//!
//! A progression is a list, not a set: [`Progression::append`] may add an id
//! that is already present. [`Progression::include`] and
//! [`Progression::exclude`] are the idempotent, set-like operations.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Why an operation on a [`Progression`] failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProgressionError {
    /// The id is not in the progression.
    #[error("id {0} is not in the progression")]
    NotFound(Uuid),
    /// A position is past the end of the progression.
    #[error("index {index} is out of range for a progression of length {len}")]
    IndexOutOfRange {
        /// The position that was asked for.
        index: usize,
        /// The length of the progression at the time.
        len: usize,
    },
}

/// An ordered list of ids, which may repeat.
///
/// Serializes as a plain JSON array of ids, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Progression {
    order: Vec<Uuid>,
}

impl Progression {
    /// An empty progression.
    pub fn new() -> Self {
        Self::default()
    }

    /// A progression holding `ids` in the order given, repeats included.
    pub fn from_ids(ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            order: ids.into_iter().collect(),
        }
    }

    /// The number of entries, counting repeats.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the progression has no entries.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Iterates over the ids in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Uuid> {
        self.order.iter()
    }

    /// The ids in order, as a slice.
    pub fn as_slice(&self) -> &[Uuid] {
        &self.order
    }

    /// Adds `id` at the end, even if it is already present.
    pub fn append(&mut self, id: Uuid) {
        self.order.push(id);
    }

    /// Inserts `id` at `index`, shifting later entries right.
    ///
    /// `index == len()` appends. Fails with
    /// [`ProgressionError::IndexOutOfRange`] when `index > len()`.
    pub fn insert(&mut self, index: usize, id: Uuid) -> Result<(), ProgressionError> {
        if index > self.len() {
            return Err(self.out_of_range(index));
        }
        self.order.insert(index, id);
        Ok(())
    }

    /// Removes the first occurrence of `id`.
    ///
    /// Fails with [`ProgressionError::NotFound`] when `id` is absent.
    pub fn remove(&mut self, id: Uuid) -> Result<(), ProgressionError> {
        let index = self.index(id).ok_or(ProgressionError::NotFound(id))?;
        self.order.remove(index);
        Ok(())
    }

    /// Removes and returns the last id, or `None` when empty.
    pub fn pop(&mut self) -> Option<Uuid> {
        self.order.pop()
    }

    /// Removes and returns the id at `index`, shifting later entries left.
    ///
    /// Fails with [`ProgressionError::IndexOutOfRange`] when `index >= len()`.
    pub fn pop_at(&mut self, index: usize) -> Result<Uuid, ProgressionError> {
        self.check(index)?;
        Ok(self.order.remove(index))
    }

    /// Moves the id at position `from` so that it ends at position `to`,
    /// keeping the relative order of the other entries.
    ///
    /// Fails with [`ProgressionError::IndexOutOfRange`] when either position
    /// is `>= len()`.
    pub fn move_to(&mut self, from: usize, to: usize) -> Result<(), ProgressionError> {
        self.check(from)?;
        self.check(to)?;
        let id = self.order.remove(from);
        self.order.insert(to, id);
        Ok(())
    }

    /// Exchanges the ids at positions `a` and `b`.
    ///
    /// Fails with [`ProgressionError::IndexOutOfRange`] when either position
    /// is `>= len()`.
    pub fn swap(&mut self, a: usize, b: usize) -> Result<(), ProgressionError> {
        self.check(a)?;
        self.check(b)?;
        self.order.swap(a, b);
        Ok(())
    }

    /// Ensures `id` is present, appending it only if it is absent.
    ///
    /// Idempotent. Returns whether `id` is present after the call, which is
    /// always `true`.
    pub fn include(&mut self, id: Uuid) -> bool {
        if !self.contains(id) {
            self.order.push(id);
        }
        true
    }

    /// Ensures `id` is absent, removing every occurrence of it.
    ///
    /// Idempotent. Returns whether `id` is absent after the call, which is
    /// always `true`, whether or not it was present before.
    pub fn exclude(&mut self, id: Uuid) -> bool {
        self.order.retain(|&x| x != id);
        true
    }

    /// The position of the first occurrence of `id`, or `None` when absent.
    pub fn index(&self, id: Uuid) -> Option<usize> {
        self.order.iter().position(|&x| x == id)
    }

    /// Whether `id` occurs at least once.
    pub fn contains(&self, id: Uuid) -> bool {
        self.order.contains(&id)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.order.clear();
    }

    fn check(&self, index: usize) -> Result<(), ProgressionError> {
        if index < self.len() {
            Ok(())
        } else {
            Err(self.out_of_range(index))
        }
    }

    fn out_of_range(&self, index: usize) -> ProgressionError {
        ProgressionError::IndexOutOfRange {
            index,
            len: self.len(),
        }
    }
}

impl FromIterator<Uuid> for Progression {
    fn from_iter<I: IntoIterator<Item = Uuid>>(iter: I) -> Self {
        Self::from_ids(iter)
    }
}

impl<'a> IntoIterator for &'a Progression {
    type Item = &'a Uuid;
    type IntoIter = std::slice::Iter<'a, Uuid>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn prog(ns: &[u128]) -> Progression {
        ns.iter().map(|&n| id(n)).collect()
    }

    #[test]
    fn new_is_empty() {
        let p = Progression::new();
        assert!(p.is_empty());
        assert_eq!(p.len(), 0);
        assert_eq!(p, Progression::default());
    }

    #[test]
    fn from_ids_keeps_order_and_repeats() {
        let p = Progression::from_ids([id(2), id(1), id(2)]);
        assert_eq!(p.as_slice(), &[id(2), id(1), id(2)]);
        assert_eq!(p.len(), 3);
        assert!(!p.is_empty());
        assert_eq!(p, prog(&[2, 1, 2]));
    }

    #[test]
    fn iter_and_into_iter_yield_in_order() {
        let p = prog(&[3, 1, 2]);
        let via_iter: Vec<Uuid> = p.iter().copied().collect();
        let mut via_ref = Vec::new();
        for x in &p {
            via_ref.push(*x);
        }
        assert_eq!(via_iter, vec![id(3), id(1), id(2)]);
        assert_eq!(via_ref, via_iter);
    }

    #[test]
    fn append_allows_duplicates() {
        let mut p = Progression::new();
        p.append(id(1));
        p.append(id(1));
        assert_eq!(p, prog(&[1, 1]));
    }

    #[test]
    fn insert_at_front_middle_and_end() {
        let mut p = prog(&[1, 3]);
        p.insert(1, id(2)).unwrap();
        p.insert(0, id(0)).unwrap();
        p.insert(4, id(4)).unwrap();
        assert_eq!(p, prog(&[0, 1, 2, 3, 4]));
    }

    #[test]
    fn insert_past_end_fails() {
        let mut p = prog(&[1]);
        assert_eq!(
            p.insert(2, id(9)),
            Err(ProgressionError::IndexOutOfRange { index: 2, len: 1 })
        );
        assert_eq!(p, prog(&[1]));
    }

    #[test]
    fn remove_takes_first_occurrence_only() {
        let mut p = prog(&[1, 2, 1]);
        p.remove(id(1)).unwrap();
        assert_eq!(p, prog(&[2, 1]));
    }

    #[test]
    fn remove_missing_fails() {
        let mut p = prog(&[1]);
        assert_eq!(p.remove(id(7)), Err(ProgressionError::NotFound(id(7))));
        assert_eq!(p, prog(&[1]));
    }

    #[test]
    fn pop_takes_last() {
        let mut p = prog(&[1, 2]);
        assert_eq!(p.pop(), Some(id(2)));
        assert_eq!(p.pop(), Some(id(1)));
        assert_eq!(p.pop(), None);
    }

    #[test]
    fn pop_at_removes_and_returns() {
        let mut p = prog(&[1, 2, 3]);
        assert_eq!(p.pop_at(1), Ok(id(2)));
        assert_eq!(p, prog(&[1, 3]));
        assert_eq!(
            p.pop_at(2),
            Err(ProgressionError::IndexOutOfRange { index: 2, len: 2 })
        );
    }

    #[test]
    fn move_to_places_element_at_target() {
        let mut p = prog(&[0, 1, 2, 3]);
        p.move_to(0, 2).unwrap();
        assert_eq!(p, prog(&[1, 2, 0, 3]));
        p.move_to(3, 0).unwrap();
        assert_eq!(p, prog(&[3, 1, 2, 0]));
        p.move_to(1, 1).unwrap();
        assert_eq!(p, prog(&[3, 1, 2, 0]));
    }

    #[test]
    fn move_to_out_of_range_fails() {
        let mut p = prog(&[0, 1]);
        assert_eq!(
            p.move_to(2, 0),
            Err(ProgressionError::IndexOutOfRange { index: 2, len: 2 })
        );
        assert_eq!(
            p.move_to(0, 2),
            Err(ProgressionError::IndexOutOfRange { index: 2, len: 2 })
        );
        assert_eq!(p, prog(&[0, 1]));
    }

    #[test]
    fn swap_exchanges_positions() {
        let mut p = prog(&[0, 1, 2]);
        p.swap(0, 2).unwrap();
        assert_eq!(p, prog(&[2, 1, 0]));
        assert_eq!(
            p.swap(0, 3),
            Err(ProgressionError::IndexOutOfRange { index: 3, len: 3 })
        );
    }

    #[test]
    fn include_is_idempotent() {
        let mut p = prog(&[1]);
        assert!(p.include(id(2)));
        assert!(p.include(id(2)));
        assert!(p.include(id(1)));
        assert_eq!(p, prog(&[1, 2]));
    }

    #[test]
    fn exclude_removes_every_occurrence() {
        let mut p = prog(&[1, 2, 1, 3, 1]);
        assert!(p.exclude(id(1)));
        assert_eq!(p, prog(&[2, 3]));
        assert!(p.exclude(id(1)));
        assert_eq!(p, prog(&[2, 3]));
    }

    #[test]
    fn index_and_contains() {
        let p = prog(&[5, 6, 5]);
        assert_eq!(p.index(id(5)), Some(0));
        assert_eq!(p.index(id(6)), Some(1));
        assert_eq!(p.index(id(7)), None);
        assert!(p.contains(id(6)));
        assert!(!p.contains(id(7)));
    }

    #[test]
    fn clear_empties() {
        let mut p = prog(&[1, 2]);
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn serializes_as_a_json_array() {
        let p = prog(&[1, 2, 1]);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, format!(r#"["{}","{}","{}"]"#, id(1), id(2), id(1)));
        let back: Progression = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            ProgressionError::IndexOutOfRange { index: 3, len: 1 }.to_string(),
            "index 3 is out of range for a progression of length 1"
        );
        assert!(
            ProgressionError::NotFound(id(1))
                .to_string()
                .contains(&id(1).to_string())
        );
    }
}
