//! Eager tasks: spawn, fetch, wait, cancel, futures, sync groups, nested spawns.

use dagger::prelude::*;
use dagger::{
    cancel_token, current_task_id, fetch_all, is_cancelled, spawn as spawn_fn, try_spawn, wait_all,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

mod common;
use common::Gate;
use std::time::Duration;

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn two_threads() -> Context {
    Context::builder().threads(2).build().unwrap()
}

#[test]
fn spawn_macro_with_plain_values_and_task_arguments() {
    let x = spawn!(add(1, 2));
    let y = spawn!(add(x, 10));
    assert_eq!(y.fetch().unwrap(), 13);
    // fetch is repeatable
    assert_eq!(y.fetch().unwrap(), 13);
    assert!(y.is_ready());
    assert_eq!(y.name().as_deref(), Some("add"));
}

#[test]
fn borrowed_task_arguments_are_not_copied() {
    fn len(v: &[u8]) -> usize {
        v.len()
    }
    fn addr(v: &[u8]) -> usize {
        v.as_ptr() as usize
    }
    let data = spawn_fn(|| vec![7u8; 1 << 20]);
    let n = spawn!(len(&data));
    let a = spawn!(addr(&data));
    assert_eq!(n.fetch().unwrap(), 1 << 20);
    assert_eq!(
        a.fetch().unwrap(),
        data.fetch_ref().unwrap().as_ptr() as usize
    );
}

#[test]
fn owned_argument_is_moved_when_it_is_the_last_handle() {
    fn addr_of(v: Vec<u8>) -> usize {
        v.as_ptr() as usize
    }
    let ctx = two_threads();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        let data = spawn_fn(move || {
            g.wait();
            vec![1u8; 4096]
        });
        // Peek at the address through a task that runs first and borrows the value.
        fn peek(v: &[u8]) -> usize {
            v.as_ptr() as usize
        }
        let before = spawn!(peek(&data));
        gate.open();
        let before = before.fetch().unwrap();
        let moved = spawn!(addr_of(data)); // last handle moves in
        assert_eq!(moved.fetch().unwrap(), before);
    });
}

#[test]
fn closures_fetch_all_and_wait_all() {
    let tasks: Vec<_> = (0..100u64).map(|i| spawn_fn(move || i * 2)).collect();
    let values = fetch_all(&tasks).unwrap();
    assert_eq!(values.iter().sum::<u64>(), 9900);
    wait_all(&tasks).unwrap();
}

#[test]
fn into_value_and_fetch_ref() {
    let t = spawn_fn(|| String::from("hello"));
    assert_eq!(t.fetch_ref().unwrap(), "hello");
    assert_eq!(t.into_value().unwrap(), "hello");
}

#[test]
fn tasks_know_their_id() {
    let t = spawn_fn(current_task_id);
    assert_eq!(t.fetch().unwrap(), Some(t.id()));
    assert_eq!(current_task_id(), None);
}

#[test]
fn recursive_fib_with_nested_spawn_and_fetch_on_two_threads() {
    fn fib(n: u64) -> u64 {
        if n < 2 {
            return n;
        }
        let a = spawn!(fib(n - 1));
        let b = spawn!(fib(n - 2));
        a.fetch().unwrap() + b.fetch().unwrap()
    }
    let ctx = two_threads();
    let r = ctx.enter(|| spawn!(fib(25)).fetch().unwrap());
    assert_eq!(r, 75025);
}

#[test]
fn waiting_on_a_task_that_is_not_ready_borrows_a_stand_in_thread() {
    // One thread: the outer task waits for `b`, which cannot run before `c`, which is queued
    // behind the outer task. The waiting thread lends its slot to a stand-in thread.
    let ctx = Context::builder().threads(1).build().unwrap();
    let r = ctx.enter(|| {
        spawn_fn(|| {
            let c = spawn_fn(|| 1u64);
            let mut b = spawn!(add(c, 1));
            for _ in 0..100 {
                b = spawn!(add(b, 1));
            }
            b.fetch().unwrap()
        })
        .fetch()
        .unwrap()
    });
    assert_eq!(r, 102);
}

#[test]
fn waiting_on_a_task_held_by_user_code_elsewhere() {
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        // Runs first and blocks the only compute thread in user code until the gate opens.
        let blocker = spawn_fn(move || {
            g.wait();
            1
        });
        let b2 = blocker.clone();
        let waiter = spawn_fn(move || b2.fetch().unwrap() + 1);
        gate.open();
        assert_eq!(waiter.fetch().unwrap(), 2);
    });
}

#[test]
fn a_long_chain_completes_and_frees_its_links() {
    let mut t = spawn!(add(0, 1));
    for _ in 0..20_000 {
        t = spawn!(add(t, 1));
    }
    assert_eq!(t.fetch().unwrap(), 20_001);
}

#[test]
fn cancel_a_queued_task_and_its_dependents() {
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        let ran = Arc::new(AtomicBool::new(false));
        let blocker = spawn_fn(move || g.wait());
        let r = ran.clone();
        let queued = spawn_fn(move || {
            r.store(true, Ordering::SeqCst);
            5u64
        });
        let dependent = spawn!(add(queued.clone(), 1));
        assert!(queued.cancel());
        // dependents fail at once, before anything else runs
        let err = dependent.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DependencyFailed);
        assert!(err.root().is_cancelled());
        gate.open();
        blocker.wait();
        let err = queued.fetch().unwrap_err();
        assert!(err.is_cancelled());
        assert!(!ran.load(Ordering::SeqCst));
        assert!(!queued.cancel(), "cancelling twice has no effect");
    });
}

#[test]
fn cancel_a_running_task_through_its_token() {
    let ctx = two_threads();
    ctx.enter(|| {
        let started = Arc::new(Barrier::new(2));
        let s = started.clone();
        let observed = Arc::new(AtomicBool::new(false));
        let o = observed.clone();
        let t = spawn_fn(move || {
            let token = cancel_token().unwrap();
            s.wait();
            while !token.is_cancelled() {
                std::thread::yield_now();
            }
            o.store(is_cancelled(), Ordering::SeqCst);
            42
        });
        started.wait();
        assert!(t.cancel());
        assert!(t.fetch().unwrap_err().is_cancelled());
        // the body saw the cancellation and returned; its value was discarded
        while !observed.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(t.fetch().unwrap_err().is_cancelled());
    });
}

#[test]
fn sync_waits_for_every_task_and_reports_the_first_failure() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let r = dagger::sync(|| {
        for i in 0..20 {
            let c = c.clone();
            spawn_fn(move || {
                c.fetch_add(1, Ordering::SeqCst);
                i
            });
        }
        "done"
    });
    assert_eq!(r.unwrap(), "done");
    assert_eq!(count.load(Ordering::SeqCst), 20);

    let err = dagger::sync(|| {
        spawn_fn(|| 1);
        try_spawn(|| Err::<u8, _>("first"));
        try_spawn(|| Err::<u8, _>("second"));
    })
    .unwrap_err();
    assert_eq!(err.message(), "first");
}

#[test]
fn sync_with_allow_errors_false_cancels_the_rest() {
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        let ran_late = Arc::new(AtomicBool::new(false));
        let r = ran_late.clone();
        let err = dagger::sync(|| {
            spawn_fn(move || g.wait());
            dagger::try_spawn_with(Options::new().allow_errors(false).name("boom"), || {
                Err::<(), _>("boom")
            });
            spawn_fn(move || r.store(true, Ordering::SeqCst));
            gate.open();
        })
        .unwrap_err();
        assert_eq!(err.task_name(), Some("boom"));
        assert!(!ran_late.load(Ordering::SeqCst));
    });
}

#[test]
fn tasks_are_futures() {
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context as Cx, Poll, Wake, Waker};
        struct W(std::thread::Thread);
        impl Wake for W {
            fn wake(self: Arc<Self>) {
                self.0.unpark()
            }
        }
        let waker = Waker::from(Arc::new(W(std::thread::current())));
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut Cx::from_waker(&waker)) {
                return v;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        let t = spawn_fn(move || {
            g.wait();
            7
        });
        let t2 = t.clone();
        let opener = std::thread::spawn(move || gate.open());
        let v = block_on(async move { t2.await.unwrap() + (&t).await.unwrap() });
        opener.join().unwrap();
        assert_eq!(v, 14);
    });
}

#[test]
fn tasks_spawned_inside_tasks_inherit_the_context() {
    let ctx = Context::builder()
        .threads(3)
        .thread_name("inherit")
        .build()
        .unwrap();
    let names = ctx.enter(|| {
        spawn_fn(|| {
            let inner = spawn_fn(|| std::thread::current().name().unwrap().to_string());
            inner.fetch().unwrap()
        })
        .fetch()
        .unwrap()
    });
    assert!(names.starts_with("inherit-"), "{names}");
}

#[test]
fn dropping_a_context_lets_queued_work_finish() {
    let t = {
        let ctx = two_threads();
        ctx.enter(|| spawn_fn(|| (0..1000u64).sum::<u64>()))
    };
    assert_eq!(t.fetch().unwrap(), 499_500);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DTask<Vec<u8>>>();
    check::<Chunk<Vec<u8>>>();
    check::<Thunk<Vec<u8>>>();
    check::<Context>();
    check::<Options>();
    check::<Scope>();
    check::<TaskError>();
    check::<dagger::CancelToken>();
    check::<dagger::ProcessorId>();
    check::<dagger::Error>();
}

#[test]
fn collections_of_tasks_are_dependencies() {
    fn total(xs: Vec<&u64>) -> u64 {
        xs.into_iter().sum()
    }
    fn joined(xs: Vec<String>) -> String {
        xs.concat()
    }
    let parts: Vec<DTask<u64>> = (1..=100u64).map(|i| spawn!(add(i, 0))).collect();
    // borrowed: `&Vec<DTask<T>>` or `&[DTask<T>]` gives `Vec<&T>`
    assert_eq!(spawn!(total(&parts)).fetch().unwrap(), 5050);
    assert_eq!(spawn!(total(&parts[..10])).fetch().unwrap(), 55);
    // owned: `Vec<DTask<T>>` gives `Vec<T>`
    let words: Vec<DTask<String>> = ["a", "b", "c"]
        .iter()
        .map(|w| {
            let w = w.to_string();
            spawn_fn(move || w)
        })
        .collect();
    assert_eq!(spawn!(joined(words)).fetch().unwrap(), "abc");
    // an empty collection is fine
    assert_eq!(spawn!(total(&Vec::<DTask<u64>>::new())).fetch().unwrap(), 0);
    // one failing member fails the consumer without running it
    let mut mixed = parts.clone();
    mixed.push(dagger::try_spawn(|| Err::<u64, _>("bad member")));
    let err = spawn!(total(&mixed)).fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyFailed);
    assert_eq!(err.message(), "bad member");
}
