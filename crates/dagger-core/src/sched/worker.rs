//! Compute threads: the work-finding loop, idling, waiting inside tasks, stand-in threads.
//!
//! A compute thread serves one processor slot (one `ThreadProc`). When a task running on it
//! waits for another task that has not started and may run here, the thread runs that task
//! itself. When the awaited task runs elsewhere, the thread parks and a stand-in ("spare")
//! thread takes over its slot, so the pool keeps its number of busy threads and nested waits
//! cannot deadlock it. When the waiting thread resumes, the slot has one thread too many; the
//! stand-in notices at its next task boundary and goes back to the spare pool.

use super::{Registry, Spare};
use crate::processor::ExecTask;
use crate::task::{state, Header, JobRef, Waiter};
use crate::tls::CTX;
use crossbeam_deque::{Steal, Worker};
use std::cell::Cell;
use std::hint::spin_loop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// Idle rounds (full searches for work) before a thread goes to sleep.
const SPIN_ROUNDS: u32 = 48;
/// Idle rounds that busy-spin before the rest yield the CPU.
const HOT_ROUNDS: u32 = 8;
/// Checks of a task's state before a waiting thread parks.
const WAIT_SPINS: u32 = 256;

/// The processor-table index of the processor running on this thread (`NO_PROC` outside).
pub(crate) fn current_proc() -> u32 {
    CTX.with(|c| c.proc.get())
}

/// The registry of the processor task or compute thread running on this thread.
pub(crate) fn with_current_registry<R>(f: impl FnOnce(Option<&Arc<Registry>>) -> R) -> R {
    let (foreign, worker) = CTX.with(|c| (c.foreign.get(), c.worker.get()));
    if !foreign.is_null() {
        // SAFETY: set only while `run_on_processor` holds the Arc it points to.
        return f(Some(unsafe { &*foreign }));
    }
    // SAFETY: set for the lifetime of the compute thread's main frame, which owns it.
    f((!worker.is_null()).then(|| unsafe { &(*worker).registry }))
}

pub(crate) struct WorkerThread {
    pub(crate) registry: Arc<Registry>,
    index: usize,
    slot: Cell<usize>,
    spare: bool,
    deque: Worker<JobRef>,
    next: Cell<Option<JobRef>>,
    rng: Cell<u64>,
    assignment: Arc<AtomicUsize>,
}

impl WorkerThread {
    pub(crate) fn with_current<R>(f: impl FnOnce(Option<&WorkerThread>) -> R) -> R {
        let p = CTX.with(|c| c.worker.get());
        // SAFETY: the pointer is set for the lifetime of the thread's `main` frame, which owns
        // the WorkerThread, and cleared before it returns.
        f((!p.is_null()).then(|| unsafe { &*p }))
    }

    /// The processor slot this thread serves now.
    pub(crate) fn slot(&self) -> usize {
        self.slot.get()
    }

    /// Starts a compute thread serving `slot`.
    pub(crate) fn spawn(registry: &Arc<Registry>, slot: usize, spare: bool) -> std::io::Result<()> {
        let index = registry.thread_count.fetch_add(1, Ordering::AcqRel);
        if index >= registry.stealers.len() {
            registry.thread_count.fetch_sub(1, Ordering::AcqRel);
            return Err(std::io::Error::other("thread limit reached"));
        }
        let deque = Worker::new_lifo();
        let _ = registry.stealers[index].set(deque.stealer());
        registry.live_threads.fetch_add(1, Ordering::AcqRel);
        let reg = registry.clone();
        let builder = thread::Builder::new()
            .name(format!("{}-{index}", registry.thread_name))
            .stack_size(registry.stack_size);
        let spawned = builder.spawn(move || {
            let worker = WorkerThread {
                registry: reg,
                index,
                slot: Cell::new(slot),
                spare,
                deque,
                next: Cell::new(None),
                rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1)),
                assignment: Arc::new(AtomicUsize::new(0)),
            };
            worker.main();
        });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                registry.live_threads.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn main(self) {
        self.pin();
        CTX.with(|c| {
            c.worker.set(&self);
            c.proc.set(self.slot.get() as u32);
        });
        loop {
            self.serve();
            if self.registry.terminating() || !self.wait_assignment() {
                break;
            }
        }
        CTX.with(|c| c.worker.set(ptr::null()));
        if self.registry.live_threads.fetch_sub(1, Ordering::AcqRel) == 1
            && self.registry.terminating()
        {
            self.registry.drain_after_shutdown();
        }
    }

    /// Moves this thread to the CPU of its slot, if the registry pins its threads.
    fn pin(&self) {
        if let Some(cpus) = self.registry.pin_cpus.as_deref().filter(|c| !c.is_empty()) {
            let cpu = cpus[self.slot.get() % cpus.len()];
            if !crate::cpu::pin_current_thread(cpu) {
                log::warn!("cannot pin compute thread {} to CPU {cpu}", self.index);
            }
        }
    }

    /// Runs tasks until the registry shuts down or (for a spare) the slot no longer needs it.
    fn serve(&self) {
        let reg = &*self.registry;
        let mut idle = 0u32;
        let mut spinning = false;
        loop {
            if self.spare && self.should_retire() {
                self.hand_back_work();
                // A wake-up for work pinned to this slot may have picked this thread while
                // the thread it stood in for sleeps too: pass it on.
                if reg.has_queued(self.slot.get()) {
                    reg.sleep.notify_slot(self.slot.get());
                }
                if spinning {
                    reg.sleep.stop_spinning();
                    // Work published while this thread spun woke nobody (a spinner was
                    // counted on to take it): pass it on.
                    reg.sleep.notify_one();
                }
                return;
            }
            if let Some(found) = self.find_work() {
                if spinning {
                    reg.sleep.stop_spinning();
                    spinning = false;
                    self.spread_wakeups();
                }
                idle = 0;
                self.run_found(found);
                if let Some(outside) = reg.outside.get() {
                    outside.poll();
                }
                continue;
            }
            if reg.terminating() {
                if spinning {
                    reg.sleep.stop_spinning();
                }
                return;
            }
            if !spinning {
                reg.sleep.start_spinning();
                spinning = true;
            }
            if reg.outside.get().is_some_and(|o| o.poll()) {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < SPIN_ROUNDS {
                if idle < HOT_ROUNDS {
                    for _ in 0..64 {
                        spin_loop();
                    }
                } else {
                    thread::yield_now();
                }
                continue;
            }
            reg.sleep.stop_spinning();
            spinning = false;
            reg.sleep.prepare(self.index, self.slot.get());
            if let Some(outside) = reg.outside.get() {
                outside.poll();
                outside.away();
            }
            if let Some(found) = self.find_work() {
                reg.sleep.cancel(self.index);
                idle = 0;
                self.spread_wakeups();
                self.run_found(found);
                continue;
            }
            if reg.terminating() || (self.spare && self.slot_oversubscribed()) {
                reg.sleep.cancel(self.index);
                continue;
            }
            reg.sleep.park(self.index);
            idle = 0;
        }
    }

    /// After leaving the idle state with work in hand, wake one more thread if more work is
    /// visible, so bursts fan out to every thread.
    fn spread_wakeups(&self) {
        if !self.deque.is_empty() || !self.registry.injector.is_empty() {
            self.registry.sleep.notify_one();
        }
    }

    fn find_work(&self) -> Option<(JobRef, Option<usize>)> {
        let reg = &*self.registry;
        let slot = self.slot.get();
        let queued = reg.has_queued(slot);
        if queued {
            if let Some(found) = reg.take_queued(slot, 1) {
                return Some(found);
            }
        }
        if let Some(job) = self.next.take() {
            return Some((job, None));
        }
        if queued {
            if let Some(found) = reg.take_queued(slot, 0) {
                return Some(found);
            }
        }
        if let Some(job) = self.deque.pop() {
            return Some((job, None));
        }
        if let Some(job) = self.steal_injector() {
            return Some((job, None));
        }
        if let Some(job) = self.steal_peers() {
            return Some((job, None));
        }
        if queued {
            return reg.take_queued(slot, i32::MIN);
        }
        None
    }

    fn steal_injector(&self) -> Option<JobRef> {
        loop {
            match self.registry.injector.steal_batch_and_pop(&self.deque) {
                Steal::Success(job) => return Some(job),
                Steal::Retry => continue,
                Steal::Empty => return None,
            }
        }
    }

    fn steal_peers(&self) -> Option<JobRef> {
        let reg = &*self.registry;
        let n = reg
            .thread_count
            .load(Ordering::Acquire)
            .min(reg.stealers.len());
        if n <= 1 {
            return None;
        }
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let start = (x as usize) % n;
        for _attempt in 0..2 {
            let mut retry = false;
            for k in 0..n {
                let i = (start + k) % n;
                if i == self.index {
                    continue;
                }
                let Some(stealer) = reg.stealers[i].get() else {
                    continue;
                };
                match stealer.steal_batch_and_pop(&self.deque) {
                    Steal::Success(job) => return Some(job),
                    Steal::Retry => retry = true,
                    Steal::Empty => {}
                }
            }
            if !retry {
                break;
            }
        }
        None
    }

    fn run_found(&self, (job, custom): (JobRef, Option<usize>)) {
        match custom {
            None => self.execute(job),
            Some(c) => self.execute_custom(c, job),
        }
    }

    fn execute(&self, job: JobRef) {
        let h = job.header();
        if h.state.claim_run() {
            h.ran_on.store(self.slot.get() as u32, Ordering::Release);
            let finished = job.run(&job);
            drop(job);
            finished.notify();
        }
    }

    fn execute_custom(&self, custom: usize, job: JobRef) {
        if !job.header().state.claim_run() {
            return;
        }
        let reg = &self.registry;
        let proc_index = reg.customs[custom].table_index;
        job.header().ran_on.store(proc_index, Ordering::Release);
        let entry = &reg.procs[proc_index as usize];
        let task = ExecTask {
            job: Some(job),
            proc_index,
            proc_id: entry.info.id,
            registry: reg.clone(),
        };
        let obj = entry.obj.clone();
        if catch_unwind(AssertUnwindSafe(|| obj.execute(task))).is_err() {
            log::error!("processor {} panicked in execute", entry.info.id);
        }
    }

    /// A task spawned on this thread is ready at once.
    pub(crate) fn push_new(&self, job: JobRef) {
        let h = job.header();
        if matches!(h.placement, super::Placement::Pool) && h.priority == 0 {
            self.deque.push(job);
            self.registry.sleep.notify_one();
        } else {
            self.registry.enqueue(job, Some(self.slot.get() as u32));
        }
    }

    /// A task became ready because a task completed on this thread.
    pub(crate) fn push_ready(&self, job: JobRef) {
        let h = job.header();
        if matches!(h.placement, super::Placement::Pool) && h.priority == 0 {
            match self.next.take() {
                None => self.next.set(Some(job)),
                Some(prev) => {
                    self.next.set(Some(prev));
                    self.deque.push(job);
                    self.registry.sleep.notify_one();
                }
            }
        } else {
            self.registry.enqueue(job, Some(self.slot.get() as u32));
        }
    }

    /// Moves a held continuation to the deque, where other threads can take it.
    fn flush_next(&self) {
        if let Some(job) = self.next.take() {
            self.deque.push(job);
            self.registry.sleep.notify_one();
        }
    }

    fn may_run(&self, h: &Header) -> bool {
        if h.registry != self.registry.id {
            return false;
        }
        let slot = self.slot.get() as u32;
        match &h.placement {
            super::Placement::Pool => true,
            super::Placement::Choose(c) => c.contains(&slot),
            super::Placement::Anywhere(a) => match &a.local {
                Some(super::Placement::Choose(c)) => c.contains(&slot),
                Some(_) => true,
                None => false,
            },
        }
    }

    /// Waits inside a task for `job` (see the module docs).
    pub(crate) fn wait_for(&self, job: &JobRef) {
        let h = job.header();
        loop {
            if h.state.is_done() {
                return;
            }
            if h.state.load() == state::QUEUED && self.may_run(h) && h.state.claim_run() {
                h.ran_on.store(self.slot.get() as u32, Ordering::Release);
                job.run(job).notify();
                self.flush_next();
                continue;
            }
            break;
        }
        for _ in 0..WAIT_SPINS {
            if h.state.is_done() {
                return;
            }
            spin_loop();
        }
        self.flush_next();
        if h.waiters.push(Waiter::Thread(thread::current())).is_err() {
            return;
        }
        let slot = self.slot.get();
        self.registry.block_begin(slot);
        while !h.state.is_done() {
            thread::park();
        }
        self.registry.block_end(slot);
    }

    fn slot_oversubscribed(&self) -> bool {
        self.registry.slots[self.slot.get()]
            .active
            .load(Ordering::Acquire)
            > 1
    }

    /// A spare leaves when its slot has another active thread.
    fn should_retire(&self) -> bool {
        let active = &self.registry.slots[self.slot.get()].active;
        let mut a = active.load(Ordering::Acquire);
        loop {
            if a <= 1 {
                return false;
            }
            match active.compare_exchange(a, a - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => a = actual,
            }
        }
    }

    fn hand_back_work(&self) {
        let mut moved = false;
        if let Some(job) = self.next.take() {
            self.registry.injector.push(job);
            moved = true;
        }
        while let Some(job) = self.deque.pop() {
            self.registry.injector.push(job);
            moved = true;
        }
        if moved {
            self.registry.sleep.notify_one();
        }
    }

    /// Parks a spare until a slot needs it; false when the registry shuts down.
    fn wait_assignment(&self) -> bool {
        if !self.spare {
            return false;
        }
        let reg = &self.registry;
        reg.spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Spare {
                thread: thread::current(),
                assignment: self.assignment.clone(),
            });
        loop {
            let a = self.assignment.swap(0, Ordering::AcqRel);
            if a != 0 {
                self.slot.set(a - 1);
                self.pin();
                CTX.with(|c| c.proc.set((a - 1) as u32));
                return true;
            }
            if reg.terminating() {
                return false;
            }
            thread::park();
        }
    }
}

/// Waits on a thread that is not a compute thread.
pub(crate) fn wait_external(h: &Header) {
    for _ in 0..WAIT_SPINS {
        if h.state.is_done() {
            return;
        }
        spin_loop();
    }
    if h.waiters.push(Waiter::Thread(thread::current())).is_err() {
        return;
    }
    while !h.state.is_done() {
        thread::park();
    }
}

/// Runs a claimed task on processor `proc_index` of `registry`, on the calling thread, and
/// tells its waiters once this thread let go of it.
pub(crate) fn run_on_processor(registry: &Arc<Registry>, proc_index: u32, job: JobRef) {
    struct Restore(u32, *const Arc<Registry>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CTX.with(|c| {
                c.proc.set(self.0);
                c.foreign.set(self.1);
            });
        }
    }
    let (prev_proc, prev_reg) = CTX.with(|c| {
        (
            c.proc.replace(proc_index),
            c.foreign.replace(registry as *const Arc<Registry>),
        )
    });
    let _restore = Restore(prev_proc, prev_reg);
    let finished = job.run(&job);
    drop(job);
    finished.notify();
}
