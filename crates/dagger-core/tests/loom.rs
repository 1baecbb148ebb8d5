//! Loom models of the lock-free pieces: the waiter list, the task state machine and the sleep
//! protocol. The modules are compiled from the same source files as the runtime, against
//! loom's model-checked atomics (see `src/sync.rs`).

#![allow(dead_code)]

mod sync {
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
    pub(crate) use loom::sync::Mutex;
    pub(crate) use loom::thread::{self, Thread};
}

#[path = "../src/sched/sleep.rs"]
mod sleep;
#[path = "../src/task/state.rs"]
mod state;
#[path = "../src/task/wait_list.rs"]
mod wait_list;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Explores every interleaving with up to three preemptions (tokio's bound for CI), which
/// keeps three-thread models to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// A waiter either lands in the list before it closes (and is handed over by `close`) or is
/// refused; nothing is lost or handed over twice.
#[test]
fn wait_list_push_races_close() {
    model(|| {
        let list = Arc::new(wait_list::WaitList::new());
        let l1 = list.clone();
        let l2 = list.clone();
        let p1 = thread::spawn(move || l1.push(1u32).is_ok());
        let p2 = thread::spawn(move || l2.push(2u32).is_ok());
        let mut taken: Vec<u32> = list.close().collect();
        let ok1 = p1.join().unwrap();
        let ok2 = p2.join().unwrap();
        // once closed, the list hands over nothing more and refuses pushes
        assert_eq!(list.close().count(), 0);
        assert!(list.push(3).is_err());
        let mut expected = Vec::new();
        if ok1 {
            expected.push(1);
        }
        if ok2 {
            expected.push(2);
        }
        taken.sort();
        assert_eq!(taken, expected);
    });
}

/// A waiter pushed through an embedded slot races the close like a boxed one: the value is
/// handed over exactly once, or given back.
#[test]
fn wait_list_slot_push_races_close() {
    model(|| {
        let list = Arc::new(wait_list::WaitList::new());
        let slot = Arc::new(wait_list::Slot::new());
        let (l1, s1) = (list.clone(), slot.clone());
        let pusher = thread::spawn(move || {
            // SAFETY: the slot is used once and outlives the list (both live to the end).
            unsafe { l1.push_in(&s1, Arc::new(7u32)) }.err()
        });
        let boxed = list.push(Arc::new(8u32)).is_ok();
        let taken: Vec<Arc<u32>> = list.close().collect();
        let refused = pusher.join().unwrap();
        let mut seen: Vec<u32> = taken.iter().map(|v| **v).collect();
        if let Some(v) = &refused {
            seen.push(**v);
        }
        if boxed {
            assert!(seen.contains(&8));
        }
        assert_eq!(seen.iter().filter(|v| **v == 7).count(), 1);
        drop(slot);
    });
}

/// Of the runner and a canceller racing for a queued task, exactly one completes it, and a
/// result written before DONE is published is seen by whoever observes DONE.
#[test]
fn state_claims_are_exclusive() {
    model(|| {
        let st = Arc::new(state::TaskState::new(state::QUEUED));
        let result = Arc::new(AtomicUsize::new(0));
        let completions = Arc::new(AtomicUsize::new(0));

        let (s1, r1, c1) = (st.clone(), result.clone(), completions.clone());
        let runner = thread::spawn(move || {
            if s1.claim_run() && s1.finish_run() {
                r1.store(1, Ordering::Relaxed);
                c1.fetch_add(1, Ordering::Relaxed);
                s1.publish();
            }
        });
        let (s2, r2, c2) = (st.clone(), result.clone(), completions.clone());
        let canceller = thread::spawn(move || {
            if s2.abort().is_some() {
                r2.store(2, Ordering::Relaxed);
                c2.fetch_add(1, Ordering::Relaxed);
                s2.publish();
            }
        });
        let (s3, r3) = (st.clone(), result.clone());
        let reader = thread::spawn(move || {
            if s3.is_done() {
                assert_ne!(
                    r3.load(Ordering::Relaxed),
                    0,
                    "DONE published before the result"
                );
            }
        });
        runner.join().unwrap();
        canceller.join().unwrap();
        reader.join().unwrap();
        assert_eq!(completions.load(Ordering::Relaxed), 1);
        assert!(st.is_done());
    });
}

/// The last of several inputs to arrive makes the task ready exactly once.
#[test]
fn dependency_counter_releases_once() {
    model(|| {
        let pending = Arc::new(AtomicUsize::new(3)); // two inputs + the spawner's guard
        let st = Arc::new(state::TaskState::new(state::WAITING));
        let ready = Arc::new(AtomicUsize::new(0));
        let arrive = |p: Arc<AtomicUsize>, s: Arc<state::TaskState>, r: Arc<AtomicUsize>| {
            move || {
                if p.fetch_sub(1, Ordering::AcqRel) == 1 && s.make_ready() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let t1 = thread::spawn(arrive(pending.clone(), st.clone(), ready.clone()));
        let t2 = thread::spawn(arrive(pending.clone(), st.clone(), ready.clone()));
        arrive(pending.clone(), st.clone(), ready.clone())();
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(ready.load(Ordering::Relaxed), 1);
    });
}

/// A thread going to sleep and a thread publishing work: the work is never stranded with its
/// only possible runner asleep (the model fails with a deadlock if it could be).
#[test]
fn sleep_never_loses_a_wakeup() {
    model(|| {
        let sleep = Arc::new(sleep::Sleep::new());
        let work = Arc::new(AtomicBool::new(false));

        // The worker is the only consumer, so it looks at the queue with a plain load (as an
        // emptiness check of a real queue does).
        let (s1, w1) = (sleep.clone(), work.clone());
        let worker = thread::spawn(move || loop {
            if w1.load(Ordering::Acquire) {
                return;
            }
            s1.prepare(0, 0);
            if w1.load(Ordering::Acquire) {
                s1.cancel(0);
                return;
            }
            s1.park(0);
        });

        work.store(true, Ordering::Release);
        sleep.notify_one();
        worker.join().unwrap();
    });
}

/// Work pinned to a slot wakes the thread serving that slot.
#[test]
fn slot_notification_reaches_the_right_thread() {
    model(|| {
        let sleep = Arc::new(sleep::Sleep::new());
        let work = Arc::new(AtomicBool::new(false));
        let (s1, w1) = (sleep.clone(), work.clone());
        let worker = thread::spawn(move || loop {
            if w1.load(Ordering::Acquire) {
                return;
            }
            s1.prepare(1, 7);
            if w1.load(Ordering::Acquire) {
                s1.cancel(1);
                return;
            }
            s1.park(1);
        });
        work.store(true, Ordering::Release);
        sleep.notify_slot(7);
        worker.join().unwrap();
    });
}
