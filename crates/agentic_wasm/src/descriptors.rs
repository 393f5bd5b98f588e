//! The process's descriptor budget for plugins. Every file, directory or
//! socket a plugin holds open is a descriptor of the host process, which
//! the log, its HEAD file and every other task share: `max_open_handles`
//! bounds one call, but calls of several plugins at once could still use
//! them all, and then the host's own writes fail.
//!
//! When the first sandbox is made, the process's soft `RLIMIT_NOFILE` is
//! raised to its hard limit, and plugins together may then hold at most a
//! share of it ([`PLUGINS_SHARE_DIVISOR`]: half). Before a call runs it
//! reserves every descriptor it may hold (its `max_open_handles`, one per
//! granted directory, two for an HTTP connection); when the budget has no
//! room it waits, first come first served, at most its own timeout, and
//! then fails as `host`, saying why.
//!
//! Reserving what a call may hold, rather than counting each open against
//! a shared counter, means a call never fails halfway because another
//! plugin took the last descriptor, and it costs nothing per open; the
//! price is that a plugin declaring many handles but using few takes room
//! it does not use, which its manifest (shown at install) says.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentic_core::plugin::{CallFailure, FailureKind};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Plugins together may hold at most 1/this of the process's descriptor
/// limit: the other half stays for the log, its HEAD file, the live
/// socket, model downloads and whatever else the process opens.
pub const PLUGINS_SHARE_DIVISOR: u64 = 2;

/// The soft limit aimed for when the hard limit is unlimited (Linux then
/// still refuses more than `fs.nr_open`, 1 048 576 by default).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Descriptors a call may hold outside its handle table: the connection
/// of an HTTP request through the `http` interface (the guest waits for
/// each request, so there is one at a time; its name lookup ends before
/// it connects), and a second socket while it connects, which happy
/// eyeballs opens when a name resolves to both IPv6 and IPv4 addresses.
pub(crate) const HOST_CALL_DESCRIPTORS: u32 = 2;

/// How the plugins' descriptor budget is used, for monitoring (and the
/// tests that flood it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorUse {
    /// The process's soft descriptor limit, once raised.
    pub limit: u64,
    /// The descriptors plugins may hold at once.
    pub budget: u32,
    /// The descriptors reserved by running calls.
    pub reserved: u32,
    /// Calls waiting for room.
    pub waiting: u32,
}

/// The budget: a semaphore of descriptors, and its use for watchers.
pub(crate) struct DescriptorBudget {
    permits: Arc<Semaphore>,
    usage: watch::Sender<DescriptorUse>,
}

static BUDGET: OnceLock<DescriptorBudget> = OnceLock::new();

/// Watches the plugins' descriptor budget of this process (made, and the
/// descriptor limit raised, on first use).
pub fn plugin_descriptors() -> watch::Receiver<DescriptorUse> {
    DescriptorBudget::process().usage.subscribe()
}

impl DescriptorBudget {
    /// The process's budget, made on first use: the soft descriptor limit
    /// raised to the hard one, and a share of it for plugins.
    pub(crate) fn process() -> &'static Self {
        BUDGET.get_or_init(|| {
            let limit = raise_soft_limit();
            let budget = u32::try_from(limit / PLUGINS_SHARE_DIVISOR)
                .unwrap_or(u32::MAX)
                .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
            tracing::debug!(
                limit,
                budget,
                "plugins may hold {budget} of the process's {limit} descriptors at once"
            );
            Self {
                permits: Arc::new(Semaphore::new(budget as usize)),
                usage: watch::Sender::new(DescriptorUse {
                    limit,
                    budget,
                    reserved: 0,
                    waiting: 0,
                }),
            }
        })
    }

    /// Reserves `count` descriptors for a call of `plugin`, waiting at
    /// most `wait` for room; `what` says what they are for the message.
    pub(crate) async fn reserve(
        &'static self,
        plugin: &str,
        count: u32,
        what: &str,
        wait: Duration,
    ) -> Result<Reservation, CallFailure> {
        let DescriptorUse { limit, budget, .. } = *self.usage.borrow();
        if count > budget {
            return Err(CallFailure::new(
                FailureKind::Host,
                format!(
                    "a call of {plugin} may hold {count} descriptors ({what}), more than the \
                     {budget} all plugins may hold at once (1/{PLUGINS_SHARE_DIVISOR} of the \
                     process's limit of {limit}): lower its max_open_handles or raise the \
                     hard descriptor limit (ulimit -Hn)"
                ),
            ));
        }
        let waiting = Waiting::new(self);
        let acquired =
            tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(count)).await;
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => {
                self.usage.send_modify(|u| u.reserved += count);
                Ok(Reservation {
                    _permit: permit,
                    count,
                    budget: self,
                })
            }
            // The semaphore is never closed.
            Ok(Err(_closed)) => Err(CallFailure::new(
                FailureKind::Host,
                "the plugins' descriptor budget is closed",
            )),
            Err(_elapsed) => Err(CallFailure::new(
                FailureKind::Host,
                format!(
                    "no room for the {count} descriptors a call of {plugin} may hold ({what}) \
                     within its {} ms limit: running plugin calls hold the {budget} descriptors \
                     all plugins may hold at once (1/{PLUGINS_SHARE_DIVISOR} of the process's \
                     limit of {limit})",
                    wait.as_millis()
                ),
            )),
        }
    }
}

/// A call counted as waiting for room until it is dropped (when it has
/// room, gave up, or was cancelled).
struct Waiting(&'static DescriptorBudget);

impl Waiting {
    fn new(budget: &'static DescriptorBudget) -> Self {
        budget.usage.send_modify(|u| u.waiting += 1);
        Self(budget)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.usage.send_modify(|u| u.waiting -= 1);
    }
}

/// Descriptors reserved for one call, given back when it is dropped (after
/// the call's store, which holds the descriptors themselves).
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
    count: u32,
    budget: &'static DescriptorBudget,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let count = self.count;
        self.budget.usage.send_modify(|u| u.reserved -= count);
    }
}

/// Raises the soft descriptor limit to the hard one; the soft limit then.
fn raise_soft_limit() -> u64 {
    let before = getrlimit(Resource::Nofile);
    let current = before.current.unwrap_or(UNLIMITED_TARGET);
    let target = before.maximum.unwrap_or(UNLIMITED_TARGET);
    if current >= target {
        tracing::debug!(
            limit = current,
            "the soft descriptor limit (RLIMIT_NOFILE) is already the hard limit"
        );
        return current;
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::debug!(
                from = current,
                to = target,
                "raised the soft descriptor limit (RLIMIT_NOFILE) to the hard limit"
            );
            target
        }
        Err(e) => {
            tracing::debug!(
                limit = current,
                hard = target,
                "could not raise the soft descriptor limit (RLIMIT_NOFILE): {e}"
            );
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget of `n` descriptors of its own (the process's is shared by
    /// every test of the binary).
    fn budget(n: u32) -> &'static DescriptorBudget {
        Box::leak(Box::new(DescriptorBudget {
            permits: Arc::new(Semaphore::new(n as usize)),
            usage: watch::Sender::new(DescriptorUse {
                limit: u64::from(n) * PLUGINS_SHARE_DIVISOR,
                budget: n,
                reserved: 0,
                waiting: 0,
            }),
        }))
    }

    #[tokio::test]
    async fn reservations_share_the_budget_and_fail_clearly_past_it() {
        let b = budget(10);
        let too_many = b
            .reserve("big", 11, "its handles", Duration::ZERO)
            .await
            .err()
            .expect("more than the budget");
        assert_eq!(too_many.kind, FailureKind::Host);
        assert!(too_many.message.contains("more than the 10"), "{too_many}");
        let held = b
            .reserve("first", 8, "its handles", Duration::ZERO)
            .await
            .expect("room");
        assert_eq!(b.usage.borrow().reserved, 8);
        // No room and no time to wait: refused, naming the budget.
        let full = b
            .reserve("second", 3, "its handles", Duration::ZERO)
            .await
            .err()
            .expect("no room");
        assert!(full.message.contains("no room for the 3"), "{full}");
        assert_eq!(b.usage.borrow().waiting, 0, "no longer waiting");
        drop(held);
        assert_eq!(b.usage.borrow().reserved, 0, "given back");
        let _held = b
            .reserve("second", 3, "its handles", Duration::ZERO)
            .await
            .expect("room again");
    }
}
