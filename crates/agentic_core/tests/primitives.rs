//! Property and concurrency tests for the collection primitives:
//! [`Progression`] and [`Pile`] are checked against simple models under random
//! operation sequences, and a shared [`Pile`] is hammered from threads and
//! tokio tasks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread;

use agentic_core::{Element, ElementData, Pile, PileError, Progression, ProgressionError};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Ids are drawn from this many fixed values, so operations collide often.
const POOL: usize = 8;

fn pool_id(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

fn any_id() -> impl Strategy<Value = Uuid> {
    (0..POOL).prop_map(pool_id)
}

/// Positions reach a little past any length the tests build, so range errors
/// happen too.
fn any_index() -> impl Strategy<Value = usize> {
    0..12usize
}

// ---------------------------------------------------------------------------
// Progression
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ProgOp {
    Append(Uuid),
    Insert(usize, Uuid),
    Remove(Uuid),
    Pop,
    PopAt(usize),
    Move(usize, usize),
    Swap(usize, usize),
    Include(Uuid),
    Exclude(Uuid),
}

fn prog_op() -> impl Strategy<Value = ProgOp> {
    prop_oneof![
        3 => any_id().prop_map(ProgOp::Append),
        2 => (any_index(), any_id()).prop_map(|(i, id)| ProgOp::Insert(i, id)),
        2 => any_id().prop_map(ProgOp::Remove),
        1 => Just(ProgOp::Pop),
        1 => any_index().prop_map(ProgOp::PopAt),
        2 => (any_index(), any_index()).prop_map(|(a, b)| ProgOp::Move(a, b)),
        2 => (any_index(), any_index()).prop_map(|(a, b)| ProgOp::Swap(a, b)),
        2 => any_id().prop_map(ProgOp::Include),
        2 => any_id().prop_map(ProgOp::Exclude),
    ]
}

fn out_of_range(index: usize, len: usize) -> ProgressionError {
    ProgressionError::IndexOutOfRange { index, len }
}

fn check_index(index: usize, len: usize) -> Result<(), ProgressionError> {
    if index < len {
        Ok(())
    } else {
        Err(out_of_range(index, len))
    }
}

/// Applies `op` to both the progression and the `Vec` model, checking that
/// they return the same thing.
fn apply_prog(
    p: &mut Progression,
    model: &mut Vec<Uuid>,
    op: &ProgOp,
) -> Result<(), TestCaseError> {
    let len = model.len();
    match *op {
        ProgOp::Append(id) => {
            p.append(id);
            model.push(id);
        }
        ProgOp::Insert(i, id) => {
            let expected = if i <= len {
                model.insert(i, id);
                Ok(())
            } else {
                Err(out_of_range(i, len))
            };
            prop_assert_eq!(p.insert(i, id), expected);
        }
        ProgOp::Remove(id) => {
            let expected = match model.iter().position(|&x| x == id) {
                Some(i) => {
                    model.remove(i);
                    Ok(())
                }
                None => Err(ProgressionError::NotFound(id)),
            };
            prop_assert_eq!(p.remove(id), expected);
        }
        ProgOp::Pop => prop_assert_eq!(p.pop(), model.pop()),
        ProgOp::PopAt(i) => {
            let expected = check_index(i, len).map(|()| model.remove(i));
            prop_assert_eq!(p.pop_at(i), expected);
        }
        ProgOp::Move(from, to) => {
            let expected = check_index(from, len).and_then(|()| check_index(to, len));
            let moved = expected.is_ok().then(|| model[from]);
            if expected.is_ok() {
                if from < to {
                    model[from..=to].rotate_left(1);
                } else {
                    model[to..=from].rotate_right(1);
                }
            }
            prop_assert_eq!(p.move_to(from, to), expected);
            if let Some(id) = moved {
                prop_assert_eq!(p.as_slice()[to], id);
            }
        }
        ProgOp::Swap(a, b) => {
            let expected = check_index(a, len).and_then(|()| check_index(b, len));
            if expected.is_ok() {
                model.swap(a, b);
            }
            prop_assert_eq!(p.swap(a, b), expected);
        }
        ProgOp::Include(id) => {
            if !model.contains(&id) {
                model.push(id);
            }
            prop_assert!(p.include(id));
            prop_assert!(p.contains(id));
        }
        ProgOp::Exclude(id) => {
            model.retain(|&x| x != id);
            prop_assert!(p.exclude(id));
            prop_assert!(!p.contains(id));
        }
    }
    Ok(())
}

fn assert_prog_matches(p: &Progression, model: &[Uuid]) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.as_slice(), model);
    prop_assert_eq!(p.len(), model.len());
    prop_assert_eq!(p.is_empty(), model.is_empty());
    prop_assert_eq!(p.iter().copied().collect::<Vec<_>>(), model);
    for id in (0..POOL).map(pool_id) {
        prop_assert_eq!(p.contains(id), model.contains(&id));
        prop_assert_eq!(p.index(id), model.iter().position(|&x| x == id));
    }
    Ok(())
}

proptest! {
    #[test]
    fn progression_agrees_with_a_vec_model(
        initial in prop::collection::vec(any_id(), 0..8),
        ops in prop::collection::vec(prog_op(), 0..64),
    ) {
        let mut p = Progression::from_ids(initial.iter().copied());
        let mut model = initial;
        assert_prog_matches(&p, &model)?;
        for op in &ops {
            apply_prog(&mut p, &mut model, op)?;
            assert_prog_matches(&p, &model)?;
        }
    }

    #[test]
    fn progression_include_twice_equals_once(
        initial in prop::collection::vec(any_id(), 0..10),
        id in any_id(),
    ) {
        let mut once: Progression = initial.into_iter().collect();
        prop_assert!(once.include(id));
        let mut twice = once.clone();
        prop_assert!(twice.include(id));
        prop_assert_eq!(&once, &twice);
        prop_assert!(once.contains(id));
    }

    #[test]
    fn progression_exclude_leaves_no_occurrence(
        initial in prop::collection::vec(any_id(), 0..10),
        id in any_id(),
    ) {
        let mut p: Progression = initial.iter().copied().collect();
        prop_assert!(p.exclude(id));
        prop_assert!(!p.contains(id));
        prop_assert_eq!(p.index(id), None);
        let others: Vec<Uuid> = initial.into_iter().filter(|&x| x != id).collect();
        prop_assert_eq!(p.as_slice(), others.as_slice());
        let again = p.clone();
        prop_assert!(p.exclude(id));
        prop_assert_eq!(p, again);
    }

    #[test]
    fn progression_serde_round_trip(initial in prop::collection::vec(any_id(), 0..10)) {
        let p: Progression = initial.into_iter().collect();
        let text = serde_json::to_string(&p).expect("serialize");
        let back: Progression = serde_json::from_str(&text).expect("deserialize");
        prop_assert_eq!(back, p);
    }
}

// ---------------------------------------------------------------------------
// Pile
// ---------------------------------------------------------------------------

/// A minimal element whose whole content is comparable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: Uuid,
    value: u32,
}

impl Element for Item {
    fn id(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Clone)]
enum PileOp {
    Add(Item),
    Remove(Uuid),
    Include(Item),
    Exclude(Uuid),
    Update(Item),
}

fn any_item() -> impl Strategy<Value = Item> {
    (any_id(), 0..100u32).prop_map(|(id, value)| Item { id, value })
}

fn pile_op() -> impl Strategy<Value = PileOp> {
    prop_oneof![
        3 => any_item().prop_map(PileOp::Add),
        2 => any_id().prop_map(PileOp::Remove),
        2 => any_item().prop_map(PileOp::Include),
        2 => any_id().prop_map(PileOp::Exclude),
        2 => any_item().prop_map(PileOp::Update),
    ]
}

/// What a pile should hold: ids in insertion order, and the value of each.
#[derive(Debug, Default)]
struct PileModel {
    order: Vec<Uuid>,
    values: HashMap<Uuid, u32>,
}

impl PileModel {
    fn items(&self) -> Vec<Item> {
        self.order
            .iter()
            .map(|&id| Item {
                id,
                value: self.values[&id],
            })
            .collect()
    }

    fn take(&mut self, id: Uuid) -> Option<Item> {
        let value = self.values.remove(&id)?;
        self.order.retain(|&x| x != id);
        Some(Item { id, value })
    }
}

fn apply_pile(pile: &Pile<Item>, model: &mut PileModel, op: &PileOp) -> Result<(), TestCaseError> {
    match op {
        PileOp::Add(item) => {
            let expected = if model.values.contains_key(&item.id) {
                Err(PileError::Duplicate(item.id))
            } else {
                model.order.push(item.id);
                model.values.insert(item.id, item.value);
                Ok(())
            };
            prop_assert_eq!(pile.add(item.clone()), expected);
        }
        PileOp::Remove(id) => {
            let expected = model.take(*id).ok_or(PileError::NotFound(*id));
            prop_assert_eq!(pile.remove(*id), expected);
        }
        PileOp::Include(item) => {
            if !model.values.contains_key(&item.id) {
                model.order.push(item.id);
                model.values.insert(item.id, item.value);
            }
            prop_assert!(pile.include(item.clone()));
            prop_assert!(pile.contains(item.id));
        }
        PileOp::Exclude(id) => {
            model.take(*id);
            prop_assert!(pile.exclude(*id));
            prop_assert!(!pile.contains(*id));
        }
        PileOp::Update(item) => {
            let expected = match model.values.get_mut(&item.id) {
                Some(value) => Ok(Item {
                    id: item.id,
                    value: std::mem::replace(value, item.value),
                }),
                None => Err(PileError::NotFound(item.id)),
            };
            prop_assert_eq!(pile.update(item.clone()), expected);
        }
    }
    Ok(())
}

fn assert_pile_matches(pile: &Pile<Item>, model: &PileModel) -> Result<(), TestCaseError> {
    let ids = pile.ids();
    prop_assert_eq!(ids.as_slice(), model.order.as_slice());
    prop_assert_eq!(pile.len(), model.order.len());
    prop_assert_eq!(pile.is_empty(), model.order.is_empty());
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    prop_assert_eq!(distinct.len(), ids.len(), "duplicate ids in the pile");
    prop_assert_eq!(pile.to_vec(), model.items());
    Ok(())
}

/// Runs `ops` on a fresh pile and model, checking them after every step.
fn run_pile(ops: &[PileOp]) -> Result<(Pile<Item>, PileModel), TestCaseError> {
    let pile = Pile::new();
    let mut model = PileModel::default();
    for op in ops {
        apply_pile(&pile, &mut model, op)?;
        assert_pile_matches(&pile, &model)?;
    }
    Ok((pile, model))
}

proptest! {
    #[test]
    fn pile_agrees_with_a_model(ops in prop::collection::vec(pile_op(), 0..64)) {
        run_pile(&ops)?;
    }

    #[test]
    fn pile_include_twice_equals_once(ops in prop::collection::vec(pile_op(), 0..24), item in any_item()) {
        let (pile, _) = run_pile(&ops)?;
        prop_assert!(pile.include(item.clone()));
        let once = pile.to_vec();
        prop_assert!(pile.include(item.clone()));
        prop_assert_eq!(pile.to_vec(), once);
        prop_assert!(pile.contains(item.id));
    }

    #[test]
    fn pile_select_where_preserves_relative_order(
        ops in prop::collection::vec(pile_op(), 0..48),
        modulus in 1..4u32,
    ) {
        let (pile, model) = run_pile(&ops)?;
        let keep = |item: &Item| item.value.is_multiple_of(modulus);
        let selected = pile.select_where(keep);
        let expected: Vec<Item> = model.items().into_iter().filter(keep).collect();
        prop_assert_eq!(selected.to_vec(), expected);
        prop_assert_eq!(pile.to_vec(), model.items());
    }

    #[test]
    fn pile_select_ids_follows_the_given_order(
        ops in prop::collection::vec(pile_op(), 0..48),
        seed in any::<prop::sample::Index>(),
    ) {
        let (pile, model) = run_pile(&ops)?;
        let mut wanted = model.order.clone();
        wanted.reverse();
        if !wanted.is_empty() {
            let shift = seed.index(wanted.len());
            wanted.rotate_left(shift);
        }
        let selected = pile.select_ids(&wanted).expect("every id is present");
        prop_assert_eq!(selected.ids(), Progression::from_ids(wanted));
    }

    #[test]
    fn pile_serde_round_trip_preserves_order_and_content(
        ops in prop::collection::vec(pile_op(), 0..48),
    ) {
        let (pile, model) = run_pile(&ops)?;
        let text = serde_json::to_string(&pile).expect("serialize");
        let back: Pile<Item> = serde_json::from_str(&text).expect("deserialize");
        prop_assert_eq!(back.to_vec(), model.items());
    }
}

#[test]
fn pile_deserialize_rejects_a_repeated_id() {
    let text = json!([
        {"id": pool_id(0), "value": 1},
        {"id": pool_id(1), "value": 2},
        {"id": pool_id(0), "value": 3},
    ])
    .to_string();
    let err = serde_json::from_str::<Pile<Item>>(&text).expect_err("duplicate id");
    assert!(err.to_string().contains(&pool_id(0).to_string()), "{err}");
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

fn tagged(owner: usize, n: usize) -> ElementData {
    let mut metadata = Map::new();
    metadata.insert("owner".into(), Value::from(owner));
    metadata.insert("n".into(), Value::from(n));
    ElementData::new(metadata, Some(format!("{owner}/{n}")))
}

/// Checks a shared pile after concurrent work: every element in `kept` is
/// present with its content and in its owner's insertion order, nothing in
/// `removed` is present, nothing else except `shared` ids is present, no id
/// repeats, and `len()` agrees with `ids()`.
fn check_final_pile(
    pile: &Pile<ElementData>,
    kept: &[Vec<ElementData>],
    removed: &[Vec<ElementData>],
    shared: &[ElementData],
) {
    let ids = pile.ids();
    assert_eq!(ids.len(), pile.len());
    let position: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    assert_eq!(position.len(), ids.len(), "duplicate ids in the pile");

    for owned in kept {
        let mut last = None;
        for item in owned {
            let at = *position.get(&item.id).expect("kept element is present");
            assert!(last < Some(at), "an owner's elements left insertion order");
            last = Some(at);
            assert!(pile.get(item.id).expect("present").same_content(item));
        }
    }
    for item in removed.iter().flatten() {
        assert!(!pile.contains(item.id));
    }
    let shared_ids: HashSet<Uuid> = shared.iter().map(|e| e.id).collect();
    let kept_count: usize = kept.iter().map(Vec::len).sum();
    let shared_present = ids.iter().filter(|id| shared_ids.contains(id)).count();
    assert_eq!(
        ids.len(),
        kept_count + shared_present,
        "unexpected ids in the pile"
    );
}

#[test]
fn pile_survives_sixteen_threads() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 1_000;

    let pile = Arc::new(Pile::<ElementData>::new());
    let shared: Arc<Vec<ElementData>> =
        Arc::new((0..POOL).map(|n| tagged(usize::MAX, n)).collect());

    let handles: Vec<_> = (0..THREADS)
        .map(|owner| {
            let pile = Arc::clone(&pile);
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let mine: Vec<ElementData> = (0..PER_THREAD).map(|n| tagged(owner, n)).collect();
                for (n, item) in mine.iter().enumerate() {
                    pile.add(item.clone()).expect("a fresh id is accepted");
                    let common = &shared[(owner + n) % shared.len()];
                    if n % 2 == 0 {
                        assert!(pile.include(common.clone()));
                    } else {
                        // Keep the odd elements, remove the even ones.
                        let even = &mine[n - 1];
                        assert_eq!(pile.remove(even.id).expect("own element"), *even);
                        assert!(pile.exclude(common.id));
                    }
                }
                assert_eq!(
                    pile.add(mine[1].clone()),
                    Err(PileError::Duplicate(mine[1].id))
                );
                let (removed, kept): (Vec<_>, Vec<_>) =
                    mine.into_iter().enumerate().partition(|(n, _)| n % 2 == 0);
                let strip = |v: Vec<(usize, ElementData)>| {
                    v.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
                };
                (strip(kept), strip(removed))
            })
        })
        .collect();

    let (kept, removed): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .map(|h| h.join().expect("worker thread panicked"))
        .unzip();

    check_final_pile(&pile, &kept, &removed, &shared);
    for common in shared.iter() {
        assert!(pile.exclude(common.id));
    }
    assert_eq!(pile.len(), THREADS * PER_THREAD / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pile_is_shared_by_tokio_tasks() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 250;

    let pile = Arc::new(Pile::<ElementData>::new());
    let shared: Arc<Vec<ElementData>> =
        Arc::new((0..POOL).map(|n| tagged(usize::MAX, n)).collect());

    let tasks: Vec<_> = (0..TASKS)
        .map(|owner| {
            let pile = Arc::clone(&pile);
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut kept = Vec::new();
                let mut removed = Vec::new();
                for n in 0..PER_TASK {
                    let item = tagged(owner, n);
                    pile.add(item.clone()).expect("a fresh id is accepted");
                    let common = &shared[n % shared.len()];
                    if n % 3 == 0 {
                        pile.remove(item.id).expect("own element");
                        removed.push(item);
                        assert!(pile.exclude(common.id));
                    } else {
                        kept.push(item);
                        assert!(pile.include(common.clone()));
                    }
                    tokio::task::yield_now().await;
                }
                (kept, removed)
            })
        })
        .collect();

    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for task in tasks {
        let (k, r) = task.await.expect("task panicked");
        kept.push(k);
        removed.push(r);
    }

    check_final_pile(&pile, &kept, &removed, &shared);
    let kept_count: usize = kept.iter().map(Vec::len).sum();
    let own = pile.select_where(|e| !shared.contains(e));
    assert_eq!(own.len(), kept_count);
}
