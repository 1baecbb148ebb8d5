//! The life cycle of one task, as a single atomic byte.
//!
//! ```text
//!  WAITING --(last input arrived)--> QUEUED --(claimed by a thread)--> RUNNING
//!     \                                 \                                 \
//!      `------------(fail / cancel)------`-------------(finish / cancel)---`--> COMPLETING --> DONE
//! ```
//!
//! A task may also go WAITING -> RUNNING before its inputs arrived, when it is sent ahead to
//! the worker process making them, and back RUNNING -> WAITING if it has to be placed again;
//! the party that moves it back re-checks the input count, so that an input arriving in
//! between is not missed (transitions and the count are sequentially consistent for this).
//!
//! Every transition is a compare-and-swap, so exactly one party wins each step: one thread runs
//! the body, one party writes the result (the one that moved the task to COMPLETING), and a
//! result is only read after DONE was observed with acquire ordering.

use crate::sync::{AtomicU8, Ordering};

pub(crate) const WAITING: u8 = 0;
pub(crate) const QUEUED: u8 = 1;
pub(crate) const RUNNING: u8 = 2;
pub(crate) const COMPLETING: u8 = 3;
pub(crate) const DONE: u8 = 4;

/// Where a task stands in its life cycle.
pub(crate) struct TaskState(AtomicU8);

impl TaskState {
    pub(crate) fn new(initial: u8) -> Self {
        TaskState(AtomicU8::new(initial))
    }

    pub(crate) fn load(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.load() == DONE
    }

    fn cas(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// WAITING -> QUEUED: all inputs are available.
    pub(crate) fn make_ready(&self) -> bool {
        self.cas(WAITING, QUEUED)
    }

    /// QUEUED -> RUNNING: the caller now owns the body and must run it.
    pub(crate) fn claim_run(&self) -> bool {
        self.cas(QUEUED, RUNNING)
    }

    /// WAITING -> RUNNING: the caller sends the task ahead of its inputs to the worker process
    /// making them (the worker starts it when they are made there).
    pub(crate) fn claim_ahead(&self) -> bool {
        self.cas(WAITING, RUNNING)
    }

    /// RUNNING -> WAITING: a claimed task goes back to wait for its inputs (the caller then
    /// makes it ready if they all arrived meanwhile).
    pub(crate) fn wait_again(&self) -> bool {
        self.cas(RUNNING, WAITING)
    }

    /// RUNNING -> QUEUED: a claimed task that could not run where it was sent goes back to
    /// be placed again (only the party that claimed it may do this).
    pub(crate) fn unclaim(&self) -> bool {
        self.cas(RUNNING, QUEUED)
    }

    /// RUNNING -> COMPLETING: the body finished and its result may be stored.
    pub(crate) fn finish_run(&self) -> bool {
        self.cas(RUNNING, COMPLETING)
    }

    /// Any unfinished state -> COMPLETING, for failures and cancellation.
    /// Returns the state it left, or `None` when the task was already completing.
    pub(crate) fn abort(&self) -> Option<u8> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current >= COMPLETING {
                return None;
            }
            match self
                .0
                .compare_exchange(current, COMPLETING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(current),
                Err(actual) => current = actual,
            }
        }
    }

    /// COMPLETING -> DONE, publishing the stored result.
    pub(crate) fn publish(&self) {
        self.0.store(DONE, Ordering::Release);
    }
}
