//! Putting idle threads to sleep without losing wake-ups.
//!
//! The protocol is the classic store-buffer (Dekker) handshake:
//!
//! * a thread that publishes work first makes it visible (pushes it on a queue), then issues a
//!   `SeqCst` fence, then reads the number of sleepers;
//! * a thread that goes to sleep first registers itself as a sleeper, then issues a `SeqCst`
//!   fence, then looks at every queue one last time before parking.
//!
//! Whichever fence comes second in the single total order of `SeqCst` fences sees the other
//! side's write: either the publisher sees the sleeper (and unparks it) or the sleeper sees the
//! work (and does not park). Parking uses thread tokens, so an unpark that lands before the park
//! is not lost either.
//!
//! Threads that are idle but still spinning are counted too: a publisher does not wake a sleeper
//! while another thread is spinning and will find the work by itself. A thread that leaves the
//! idle state because it found work wakes one more sleeper if it saw more work than it took, so
//! a burst of work fans out to every thread.

use crate::sync::{fence, thread, AtomicUsize, Mutex, Ordering, Thread};

/// A thread registered as asleep.
pub(crate) struct Sleeper {
    /// Unique index of the OS thread.
    pub(crate) thread: usize,
    /// The processor slot the thread serves (work pinned to that slot wakes it).
    pub(crate) slot: usize,
    pub(crate) handle: Thread,
}

pub(crate) struct Sleep {
    sleepers: Mutex<Vec<Sleeper>>,
    sleeping: AtomicUsize,
    spinning: AtomicUsize,
}

impl Sleep {
    pub(crate) fn new() -> Self {
        Sleep {
            sleepers: Mutex::new(Vec::new()),
            sleeping: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
        }
    }

    /// Work anyone may run was published: wake one sleeper unless a spinning thread will take it.
    pub(crate) fn notify_one(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) == 0 || self.spinning.load(Ordering::Relaxed) > 0 {
            return;
        }
        self.wake_where(|_| true);
    }

    /// Work pinned to `slot` was published: wake the thread serving that slot if it sleeps.
    pub(crate) fn notify_slot(&self, slot: usize) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.wake_where(|s| s.slot == slot);
    }

    /// Wakes every sleeper (shutdown).
    pub(crate) fn notify_all(&self) {
        fence(Ordering::SeqCst);
        let woken: Vec<Sleeper> = {
            let mut sleepers = self.sleepers.lock().unwrap();
            self.sleeping.fetch_sub(sleepers.len(), Ordering::Relaxed);
            sleepers.drain(..).collect()
        };
        for s in woken {
            s.handle.unpark();
        }
    }

    fn wake_where(&self, pred: impl Fn(&Sleeper) -> bool) {
        let woken = {
            let mut sleepers = self.sleepers.lock().unwrap();
            match sleepers.iter().rposition(pred) {
                Some(i) => {
                    self.sleeping.fetch_sub(1, Ordering::Relaxed);
                    Some(sleepers.swap_remove(i))
                }
                None => None,
            }
        };
        if let Some(s) = woken {
            s.handle.unpark();
        }
    }

    /// How many threads are asleep (or about to be).
    pub(crate) fn sleeping(&self) -> usize {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// The calling thread found no work and starts spinning.
    pub(crate) fn start_spinning(&self) {
        self.spinning.fetch_add(1, Ordering::SeqCst);
    }

    /// The calling thread stops spinning (it found work, or it is about to sleep).
    pub(crate) fn stop_spinning(&self) {
        self.spinning.fetch_sub(1, Ordering::SeqCst);
    }

    /// Registers the caller as a sleeper. The caller must then look for work once more and
    /// either [`cancel`](Self::cancel) (work found) or [`park`](Self::park).
    pub(crate) fn prepare(&self, thread: usize, slot: usize) {
        {
            let mut sleepers = self.sleepers.lock().unwrap();
            sleepers.push(Sleeper {
                thread,
                slot,
                handle: thread::current(),
            });
            self.sleeping.fetch_add(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// Withdraws a registration made by [`prepare`](Self::prepare), if it is still there.
    pub(crate) fn cancel(&self, thread: usize) {
        let mut sleepers = self.sleepers.lock().unwrap();
        if let Some(i) = sleepers.iter().position(|s| s.thread == thread) {
            sleepers.swap_remove(i);
            self.sleeping.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Parks until woken (or a spurious wake-up), then withdraws the registration.
    pub(crate) fn park(&self, thread: usize) {
        thread::park();
        self.cancel(thread);
    }
}
