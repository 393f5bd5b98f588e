//! Which CPUs the store's writer and its appenders run on, in the store
//! benchmark's own-core measurement — pinned from outside the store.
//!
//! The group-commit writer is the one thread every durable append goes
//! through. On a small machine the kernel's scheduler tends to put the
//! appenders a commit has just woken on the writer's CPU, where they preempt
//! it; the same commit then waits for them. [`CorePlan`] splits the CPUs this
//! process may use: one for the writer, the rest for the async runtime's
//! workers.
//!
//! The store offers no option for this: a knob that only a benchmark turns
//! does not belong in the product's API. The benchmark finds the writer
//! thread a store it just opened started — by its name, among this process's
//! threads ([`new_writer_thread`]) — and pins that thread itself
//! ([`pin_thread`]). Every other thread of the store (checkpointer, `HEAD`
//! recorder) runs where it always does, as in the product.

use std::collections::BTreeSet;
use std::io;

use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};

/// The name [`crate::SqliteStore`] gives its group-commit writer thread,
/// as Linux keeps it: a thread's name is cut to 15 bytes (`comm`).
const WRITER_THREAD_COMM: &str = "lion-store-writ";

/// The CPUs thread `tid` (the calling thread for `None`) may run on, in
/// increasing order.
pub(super) fn allowed_for(tid: Option<Pid>) -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(tid)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The CPUs the calling thread may run on, in increasing order.
pub(super) fn allowed() -> io::Result<Vec<usize>> {
    allowed_for(None)
}

/// Restricts thread `tid` (the calling thread for `None`) to `cpus`.
pub(super) fn pin_thread(tid: Option<Pid>, cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    sched_setaffinity(tid, &set).map_err(io::Error::from)
}

/// The ids of this process's threads named like a store's writer.
pub(super) fn writer_threads() -> io::Result<BTreeSet<i32>> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing has no `comm` any more.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() == WRITER_THREAD_COMM {
            found.insert(tid);
        }
    }
    Ok(found)
}

/// The writer thread of a store opened after `before` was taken with
/// [`writer_threads`]: the one writer thread that was not there then. A
/// thread takes its name once it starts running, so call this after the
/// store committed something (its writer surely runs then).
pub(super) fn new_writer_thread(before: &BTreeSet<i32>) -> io::Result<Pid> {
    let new: Vec<i32> = writer_threads()?.difference(before).copied().collect();
    match new[..] {
        [tid] => Pid::from_raw(tid)
            .ok_or_else(|| io::Error::other(format!("thread id {tid} is not a valid id"))),
        _ => Err(io::Error::other(format!(
            "expected one new store writer thread (named {WRITER_THREAD_COMM:?}), found {}",
            new.len()
        ))),
    }
}

/// One CPU for the store's writer, the others for the runtime's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    /// The writer's CPU.
    pub writer: usize,
    /// The workers' CPUs (at least one).
    pub workers: Vec<usize>,
}

impl CorePlan {
    /// The plan for `cpus` (the CPUs this process may use): the last one for
    /// the writer. `None` with fewer than two CPUs: there is nothing to split.
    pub fn for_cpus(cpus: &[usize]) -> Option<Self> {
        let (&writer, workers) = cpus.split_last()?;
        (!workers.is_empty()).then(|| Self {
            writer,
            workers: workers.to_vec(),
        })
    }

    /// The plan for the CPUs the calling thread may use.
    pub fn here() -> Option<Self> {
        Self::for_cpus(&allowed().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteOptions, SqliteStore};
    use agentic_core::{EventStore, ExpectedVersion};

    #[test]
    fn the_last_cpu_goes_to_the_writer() {
        assert_eq!(
            CorePlan::for_cpus(&[0, 1, 3]),
            Some(CorePlan {
                writer: 3,
                workers: vec![0, 1]
            })
        );
        assert_eq!(CorePlan::for_cpus(&[2]), None);
        assert_eq!(CorePlan::for_cpus(&[]), None);
    }

    #[test]
    fn a_thread_can_be_pinned_to_a_cpu_it_may_use() {
        let cpus = allowed().expect("affinity");
        assert!(!cpus.is_empty());
        let first = cpus[0];
        std::thread::spawn(move || {
            pin_thread(None, &[first]).expect("pin");
            assert_eq!(allowed().expect("affinity"), vec![first]);
        })
        .join()
        .expect("thread");
    }

    /// The benchmark finds the writer by its thread's name: if the store
    /// renamed it, this fails (and the own-core row says it is skipped).
    /// Other tests open stores meanwhile, so this store's writer is among
    /// the new ones, not necessarily alone.
    #[test]
    fn a_store_that_committed_has_a_writer_thread_the_bench_can_find() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let before = writer_threads().expect("threads");
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open");
        runtime
            .block_on(store.append(vec![super::super::bench_event(1)], ExpectedVersion::Any))
            .expect("append");
        let after = writer_threads().expect("threads");
        assert!(
            after.difference(&before).next().is_some(),
            "no new thread named {WRITER_THREAD_COMM:?}: {before:?} then {after:?}"
        );
        drop(store);
    }
}
