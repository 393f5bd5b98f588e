//! Which CPUs the store's writer and its appenders run on.
//!
//! The group-commit writer is the one thread every durable append goes
//! through. On a small machine the kernel's scheduler tends to put the
//! appenders a commit has just woken on the writer's CPU, where they preempt
//! it; the same commit then waits for them. [`CorePlan`] splits the CPUs this
//! process may use: one for the writer ([`crate::SqliteOptions::writer_cpu`]),
//! the rest for the async runtime's workers.

use std::io;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    sched_setaffinity(None, &set).map_err(io::Error::from)
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
            pin_current_thread(&[first]).expect("pin");
            assert_eq!(allowed().expect("affinity"), vec![first]);
        })
        .join()
        .expect("thread");
    }
}
