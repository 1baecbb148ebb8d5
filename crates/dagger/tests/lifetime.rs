//! Results are freed as soon as no handle and no pending consumer needs them; idle runtimes
//! park their threads.

use dagger::prelude::*;
use dagger::spawn as spawn_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::Gate;

/// Counts live instances of itself.
struct Tracked(u64);

static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Tracked {
    fn new(v: u64) -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Tracked(v)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `cond` holds; worker threads drop their last references to finished
/// tasks just after completing them.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

fn make(v: u64) -> Tracked {
    Tracked::new(v)
}
fn step(t: &Tracked) -> Tracked {
    Tracked::new(t.0 + 1)
}
fn add(a: &Tracked, b: &Tracked) -> Tracked {
    Tracked::new(a.0 + b.0)
}
fn value(t: &Tracked) -> u64 {
    t.0
}

#[test]
fn results_are_freed_when_nobody_needs_them() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        // a chain: each link is freed once its consumer ran, even while the last handle lives
        let mut t = spawn!(make(0));
        for _ in 0..1000 {
            t = spawn!(step(&t));
        }
        assert_eq!(spawn!(value(&t)).fetch().unwrap(), 1000);
        eventually("only the last link is alive", || {
            LIVE.load(Ordering::SeqCst) == 1
        });
        drop(t);
        eventually("nothing is alive", || LIVE.load(Ordering::SeqCst) == 0);

        // a reduction tree whose handles are dropped at once
        let mut level: Vec<DTask<Tracked>> = (0..512).map(|i| spawn!(make(i))).collect();
        while level.len() > 1 {
            level = level.chunks(2).map(|p| spawn!(add(&p[0], &p[1]))).collect();
        }
        let total = spawn!(value(&level[0]));
        drop(level);
        assert_eq!(total.fetch().unwrap(), (0..512).sum::<u64>());
        eventually("the tree is freed", || LIVE.load(Ordering::SeqCst) == 0);

        // a result a pending consumer needs stays alive until that consumer ran
        let gate = Gate::default();
        let g = gate.clone();
        let blocker = spawn_fn(move || g.wait());
        let input = spawn!(make(5));
        let consumer = spawn!(add_after(&input, blocker));
        input.wait();
        drop(input);
        assert_eq!(
            LIVE.load(Ordering::SeqCst),
            1,
            "the consumer keeps its input alive"
        );
        gate.open();
        assert_eq!(consumer.fetch_ref().unwrap().0, 5);
        drop(consumer);
        eventually("all freed", || LIVE.load(Ordering::SeqCst) == 0);

        // failed and cancelled tasks free what they captured
        let held = Tracked::new(1);
        let t = dagger::try_spawn(move || {
            let _h = held;
            Err::<u8, _>("no")
        });
        assert!(t.fetch().is_err());
        let gate = Gate::default();
        let g = gate.clone();
        let blocker = spawn_fn(move || g.wait());
        let held = Tracked::new(2);
        let cancelled = spawn!(keep(blocker, held));
        assert!(cancelled.cancel());
        gate.open();
        drop(cancelled);
        eventually("captures freed", || LIVE.load(Ordering::SeqCst) == 0);
    });
}

fn add_after(t: &Tracked, _: ()) -> Tracked {
    Tracked::new(t.0)
}

fn keep(_: (), t: Tracked) -> u64 {
    t.0
}

#[cfg(target_os = "linux")]
#[test]
fn an_idle_runtime_parks_every_thread() {
    fn states(prefix: &str) -> Vec<(String, char)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = entry.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            let comm = comm.trim().to_string();
            if !comm.starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // the state follows the parenthesised command name
            let state = stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim()
                .chars()
                .next()
                .unwrap();
            out.push((comm, state));
        }
        out
    }
    let ctx = Context::builder()
        .threads(2)
        .thread_name("idlechk")
        .build()
        .unwrap();
    ctx.enter(|| {
        let tasks: Vec<_> = (0..10_000u64).map(|i| spawn_fn(move || i)).collect();
        fetch_all(&tasks).unwrap();
    });
    eventually("both compute threads sleep", || {
        let s = states("idlechk");
        s.len() == 2 && s.iter().all(|(_, st)| *st == 'S')
    });
}
