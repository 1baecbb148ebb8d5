//! Worker processes: tasks of registered functions run in other processes started from this
//! same test binary; results stay where they were made and move between workers directly.

use dagger::prelude::*;
use dagger::{current_processor, ErrorKind, LaunchSpec, WorkerId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

dagger::init_before_main!();

mod common;

#[dagger::task]
fn square(x: u64) -> u64 {
    x * x
}

#[dagger::task]
fn whoami() -> (u32, Option<u32>, u32) {
    let p = current_processor();
    (p.worker.0, p.thread_index(), std::process::id())
}

/// The CPUs the calling thread may run on, as Linux lists them (`0-1,4`).
fn allowed_cpus(status: &str) -> String {
    std::fs::read_to_string(status)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[dagger::task]
fn my_cpus() -> String {
    allowed_cpus("/proc/thread-self/status")
}

#[dagger::task]
fn make(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[dagger::task]
fn total(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

#[dagger::task]
fn sum_all(xs: Vec<&u64>) -> u64 {
    xs.into_iter().sum()
}

#[dagger::task]
fn fail_if_odd(x: u64) -> Result<u64, String> {
    if x % 2 == 1 {
        Err(format!("{x} is odd"))
    } else {
        Ok(x)
    }
}

#[dagger::task]
fn total_where(xs: &[u64]) -> (u64, u32) {
    (xs.iter().sum(), current_processor().worker.0)
}

#[dagger::task]
fn slow_square(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(2));
    (x * x, current_processor().worker.0)
}

/// Runs in a worker and spawns tasks there: each reports where it ran and the options it
/// ran with.
type Report = (u64, u32, Option<i32>, Option<bool>);

#[dagger::task]
fn fan_out(n: u64) -> Vec<Report> {
    let kids: Vec<DTask<Report>> = (0..n)
        .map(|i| {
            dagger::spawn(move || {
                let o = dagger::get_options();
                (
                    square(i),
                    current_processor().worker.0,
                    o.get_priority(),
                    o.get_allow_errors(),
                )
            })
        })
        .collect();
    dagger::fetch_all(&kids).unwrap()
}

#[dagger::task]
fn my_options() -> (Option<String>, Option<i32>) {
    let o = dagger::get_options();
    (o.get_name().map(str::to_string), o.get_priority())
}

#[dagger::task]
fn new_counter() -> AtomicU64 {
    AtomicU64::new(0)
}

#[dagger::task]
fn bump(c: &AtomicU64) -> u32 {
    c.fetch_add(1, Ordering::Relaxed);
    current_processor().worker.0
}

#[dagger::task]
fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Keeps its thread busy until `gate` exists (or a minute passed).
#[dagger::task]
fn wait_for(gate: String) -> u32 {
    hold(&gate)
}

/// [`wait_for`], once `_after` is made.
#[dagger::task]
fn wait_for_after(gate: String, _after: u64) -> u32 {
    hold(&gate)
}

fn hold(gate: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(gate).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    current_processor().worker.0
}

/// The length of `b` (its bytes travel inside the call when it is spawned with them).
#[dagger::task]
fn byte_len(b: dagger::SharedBytes) -> u64 {
    b.len() as u64
}

/// `a + b`, for a value and a worker's number (from [`wait_for`]).
#[dagger::task]
fn plus(a: u64, b: u32) -> u64 {
    a + u64::from(b)
}

/// Fails once `gate` exists (and `_after` is made).
#[dagger::task]
fn fail_after(gate: String, _after: u64) -> Result<u64, String> {
    Err(format!("worker {} failed as told", hold(&gate)))
}

/// The sum of two workers' numbers (from [`wait_for`]).
#[dagger::task]
fn add_ids(a: u32, b: u32) -> u64 {
    u64::from(a + b)
}

/// One step of a chain: `x + 1`, failing at `fail_at`.
#[dagger::task]
fn step(x: u64, fail_at: u64) -> Result<u64, String> {
    if x == fail_at {
        Err(format!("step {x} fails"))
    } else {
        Ok(x + 1)
    }
}

/// One point of a stencil step (see `common::spawn_stencil`).
#[dagger::task]
fn mix(seed: u64, inputs: Vec<&u64>) -> u64 {
    common::mix_values(seed, inputs.into_iter().copied())
}

#[dagger::task]
fn pattern(n: u64, seed: u8) -> dagger::SharedBytes {
    dagger::SharedBytes::from(pattern_bytes(n, seed))
}

fn pattern_bytes(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// The length of `b` and a position-weighted checksum, and where it ran.
#[dagger::task]
fn digest(b: &dagger::SharedBytes) -> (u64, u64, u32) {
    (b.len() as u64, checksum(b), current_processor().worker.0)
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().enumerate().fold(0u64, |h, (i, x)| {
        h.wrapping_mul(1_000_003) ^ (i as u64 + *x as u64)
    })
}

fn cluster(workers: usize) -> Context {
    Context::builder()
        .threads(2)
        .workers(LaunchSpec::Local {
            workers,
            threads: 2,
        })
        .build()
        .expect("the cluster starts")
}

/// A path for [`wait_for`] that does not exist yet (named after `name` and this process).
fn fresh_gate(name: &str) -> String {
    let gate = std::env::temp_dir()
        .join(format!("{name}-{}", std::process::id()))
        .to_str()
        .unwrap()
        .to_string();
    let _ = std::fs::remove_file(&gate);
    gate
}

/// A task of this process that ends with `value` once the returned sender is used (or
/// dropped): what depends on it is spawned whole before any of it goes to a worker.
fn held_start(value: u64) -> (std::sync::mpsc::Sender<()>, DTask<u64>) {
    let (open, opened) = std::sync::mpsc::channel::<()>();
    let start = dagger::spawn(move || {
        let _ = opened.recv();
        value
    });
    (open, start)
}

/// A chain of `links` steps on worker 1 after `root(start)`, where `start` is a task of this
/// process that ends once all of it is spawned (a worker keeps track of a task for calls
/// sent ahead of it only if the task had dependents when it was sent). Returns the last
/// step once the whole chain has been sent ahead to worker 1.
fn chain_sent_ahead_to_worker_1(
    ctx: &Context,
    links: u64,
    root: impl FnOnce(DTask<u64>) -> DTask<u64>,
) -> DTask<u64> {
    let (open, start) = held_start(0);
    let mut t = root(start);
    for _ in 0..links {
        t = spawn!(step(t, u64::MAX)?; scope = Scope::worker(1));
    }
    open.send(()).unwrap();
    eventually("the whole chain is on worker 1", || {
        ctx.worker_stats(WorkerId(1)).unwrap().sent_ahead > links
    });
    t
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tasks_run_in_worker_processes() {
    let ctx = cluster(2);
    let workers = ctx.workers();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].id, WorkerId(1));
    assert_eq!(workers[1].threads, 2);
    ctx.enter(|| {
        let me = std::process::id();
        for w in [1u32, 2] {
            let (worker, thread, pid) = spawn!(whoami(); scope = Scope::worker(w)).fetch().unwrap();
            assert_eq!(worker, w);
            assert!(thread.is_some());
            assert_ne!(pid, me, "it ran in another process");
        }
        let (_, thread, _) = spawn!(whoami(); scope = Scope::worker(2).thread(1))
            .fetch()
            .unwrap();
        assert_eq!(thread, Some(1));
        assert_eq!(
            spawn!(square(12); scope = Scope::worker(1))
                .fetch()
                .unwrap(),
            144
        );
    });
}

#[test]
fn values_move_between_workers_and_are_freed() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let data = spawn!(make(10_000); scope = Scope::worker(1));
        let sum = spawn!(total(&data); scope = Scope::worker(2));
        assert_eq!(sum.fetch().unwrap(), (0..10_000u64).sum::<u64>());
        let parts: Vec<DTask<u64>> = (0..20)
            .map(|i| spawn!(square(i); scope = Scope::worker(1 + (i % 2) as u32)))
            .collect();
        let all = spawn!(sum_all(&parts); scope = Scope::worker(2));
        assert_eq!(all.fetch().unwrap(), (0..20u64).map(|i| i * i).sum::<u64>());
        assert!(ctx.worker_stats(WorkerId(1)).unwrap().live_values > 0);
        drop((data, sum, parts, all));
        for w in [1, 2] {
            eventually("the worker holds no values", || {
                ctx.worker_stats(WorkerId(w)).unwrap().live_values == 0
            });
        }
    });
}

#[test]
fn byte_buffers_move_between_workers_intact() {
    let ctx = cluster(2);
    ctx.enter(|| {
        // Large (several frames, read into pooled buffers and shared on arrival), medium
        // (one frame) and small (copied) buffers; repeated so that received buffers are
        // reused while earlier values still hold theirs.
        let sizes = [3 * (1 << 20) + 17, 5000, 10, 0];
        let mut kept = Vec::new();
        for round in 0..3u8 {
            for &n in &sizes {
                let made = spawn!(pattern(n, round); scope = Scope::worker(1));
                let read = spawn!(digest(&made); scope = Scope::worker(2));
                let want = pattern_bytes(n, round);
                assert_eq!(read.fetch().unwrap(), (n, checksum(&want), 2));
                // At the head too, and again on worker 2 from the copy it may hold.
                assert_eq!(&made.fetch().unwrap()[..], &want[..]);
                let again = spawn!(digest(&made); scope = Scope::worker(2));
                assert_eq!(again.fetch().unwrap(), (n, checksum(&want), 2));
                if round == 0 {
                    kept.push((made, want));
                }
            }
        }
        for (made, want) in &kept {
            assert_eq!(&made.fetch().unwrap()[..], &want[..]);
        }
    });
}

#[test]
fn failures_in_workers_are_task_errors() {
    let ctx = cluster(1);
    ctx.enter(|| {
        assert_eq!(
            spawn!(fail_if_odd(4)?; scope = Scope::worker(1))
                .fetch()
                .unwrap(),
            4
        );
        let err = spawn!(fail_if_odd(3)?; scope = Scope::worker(1))
            .fetch()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(err.to_string().contains("3 is odd"), "{err}");
        // the workers are fine afterwards
        assert_eq!(
            spawn!(square(3); scope = Scope::worker(1)).fetch().unwrap(),
            9
        );
    });
}

#[test]
fn chunks_put_on_workers_stay_there_until_dropped() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let data: Vec<u64> = (0..1000).collect();
        let expected: u64 = data.iter().sum();

        // Pinned to worker 2: readers run there.
        let pinned = dagger::tochunk_on(data.clone(), Scope::worker(2)).unwrap();
        assert_eq!(pinned.processor().worker, WorkerId(2));
        assert_eq!(ctx.worker_stats(WorkerId(2)).unwrap().live_values, 1);
        assert_eq!(spawn!(total_where(&pinned)).fetch().unwrap(), (expected, 2));
        let err = spawn!(total_where(&pinned); scope = Scope::worker(1))
            .fetch()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling, "{err}");

        // Allowed on both workers: a reader on the other one gets it from its holder.
        let both = Scope::worker(1).union(&Scope::worker(2));
        let shared = dagger::tochunk_on(data.clone(), both).unwrap();
        let holder = shared.processor().worker.0;
        let other = 3 - holder;
        let read = spawn!(total_where(&shared); scope = Scope::worker(other));
        assert_eq!(read.fetch().unwrap(), (expected, other));
        assert_eq!(shared.fetch().unwrap(), data);

        // Nowhere to put it.
        let err = dagger::tochunk_on(1u8, Scope::worker(9)).unwrap_err();
        assert!(err.to_string().contains("worker"), "{err}");

        drop((pinned, shared, read));
        for w in [1, 2] {
            eventually("the worker holds no values", || {
                ctx.worker_stats(WorkerId(w)).unwrap().live_values == 0
            });
        }
    });
}

#[test]
fn workers_join_and_leave_while_a_graph_runs() {
    let ctx = cluster(1);
    ctx.enter(|| {
        let on_workers = Scope::spec().workers(1..=8).build().unwrap();
        let batch = |from: u64| -> Vec<DTask<(u64, u32)>> {
            (from..from + 100)
                .map(|i| spawn!(slow_square(i); scope = on_workers.clone()))
                .collect()
        };
        let first = batch(0);
        // A value that cannot be made again: it must survive its worker's removal.
        let kept = dagger::tochunk_on(vec![7u64; 100], on_workers.clone()).unwrap();
        assert_eq!(kept.processor().worker, WorkerId(1));

        let added = ctx
            .add_workers(LaunchSpec::Local {
                workers: 1,
                threads: 2,
            })
            .unwrap();
        assert_eq!(added, vec![WorkerId(2)]);
        let second = batch(100);
        let third = batch(200);
        // Worker 1 finishes what it has, hands over its values and leaves.
        ctx.remove_workers(&[WorkerId(1)]).unwrap();
        let ids: Vec<WorkerId> = ctx.workers().iter().map(|w| w.id).collect();
        assert_eq!(ids, vec![WorkerId(2)]);
        let fourth = batch(300);

        let mut ran_on = std::collections::BTreeMap::<u32, usize>::new();
        for (i, t) in first
            .iter()
            .chain(&second)
            .chain(&third)
            .chain(&fourth)
            .enumerate()
        {
            let (sq, w) = t.fetch().unwrap();
            assert_eq!(sq, (i * i) as u64);
            *ran_on.entry(w).or_default() += 1;
        }
        assert!(ran_on.get(&2).copied().unwrap_or(0) >= 100, "{ran_on:?}");
        assert!(fourth.iter().all(|t| t.fetch().unwrap().1 == 2));
        assert_eq!(spawn!(total(&kept)).fetch().unwrap(), 700);
        assert_eq!(kept.processor().worker, WorkerId(2));
        assert!(ctx.worker_stats(WorkerId(1)).is_err());
    });
}

#[test]
fn remote_tasks_spawn_tasks_and_carry_options() {
    let ctx = cluster(1);
    ctx.enter(|| {
        let kids = dagger::with_options(
            Options::new().priority(3).allow_errors(true),
            || spawn!(fan_out(6); scope = Scope::worker(1)),
        );
        let kids = kids.fetch().unwrap();
        assert_eq!(kids.len(), 6);
        for (i, (sq, worker, priority, allow)) in kids.into_iter().enumerate() {
            assert_eq!(sq, (i * i) as u64);
            assert_eq!(worker, 1, "nested tasks run in the worker");
            assert_eq!(
                priority,
                Some(3),
                "with_options reaches nested remote tasks"
            );
            assert_eq!(allow, Some(true));
        }
        let (name, priority) =
            spawn!(my_options(); scope = Scope::worker(1), name = "mine", priority = 2)
                .fetch()
                .unwrap();
        assert_eq!(name.as_deref(), Some("mine"));
        assert_eq!(priority, Some(2));
    });
}

#[test]
fn a_value_pinned_to_a_worker_is_changed_in_place_there() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let w2 = Scope::worker(2);
        let counter = spawn!(new_counter(); scope = w2.clone(), result_scope = w2)
            .into_chunk()
            .unwrap();
        assert_eq!(counter.processor().worker, WorkerId(2));
        let bumps: Vec<DTask<u32>> = (0..50).map(|_| spawn!(bump(&counter))).collect();
        for b in &bumps {
            assert_eq!(b.fetch().unwrap(), 2);
        }
        assert_eq!(spawn!(count(&counter)).fetch().unwrap(), 50);
    });
}

#[test]
fn dropped_values_give_their_memory_back_on_every_worker() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let stats = |w: u32| ctx.worker_stats(WorkerId(w)).unwrap();
        let before: Vec<u64> = [1, 2].map(|w| stats(w).rss_bytes).to_vec();
        assert!(before.iter().all(|&b| b > 0), "RSS is known on Linux");
        // 80 MB on each worker, and 2,000 small results beside them.
        let big: Vec<DTask<Vec<u64>>> = [1u32, 2]
            .iter()
            .map(|&w| spawn!(make(10_000_000); scope = Scope::worker(w)))
            .collect();
        let small: Vec<DTask<u64>> = (0..2_000)
            .map(|i| spawn!(square(i); scope = Scope::worker(1 + (i % 2) as u32)))
            .collect();
        let sums: Vec<DTask<u64>> = big
            .iter()
            .zip([1u32, 2])
            .map(|(b, w)| spawn!(total(b); scope = Scope::worker(w)))
            .collect();
        dagger::wait_all(&sums).unwrap();
        dagger::wait_all(&small).unwrap();
        for (w, b) in [1u32, 2].iter().zip(&before) {
            let s = stats(*w);
            assert!(
                s.rss_bytes > b + 60_000_000,
                "worker {w}: {s:?}, before {b}"
            );
            assert!(s.live_values > 1000, "worker {w}: {s:?}");
        }
        drop((big, small, sums));
        for (w, b) in [1u32, 2].iter().zip(&before) {
            eventually("the worker holds nothing and gave its memory back", || {
                let s = stats(*w);
                s.live_values == 0 && s.live_results == 0 && s.rss_bytes < b + 20_000_000
            });
        }
    });
}

#[test]
fn tasks_go_where_their_inputs_are() {
    let ctx = cluster(2);
    ctx.enter(|| {
        for w in [1u32, 2] {
            let data = spawn!(make(100_000); scope = Scope::worker(w));
            // No scope: the reader runs where the value is rather than moving it.
            let (sum, ran_on) = spawn!(total_where(&data)).fetch().unwrap();
            assert_eq!(sum, (0..100_000u64).sum::<u64>());
            assert_eq!(ran_on, w);
        }
        // A value of this process: read here, not shipped to a worker.
        let here = dagger::tochunk((0..1000u64).collect::<Vec<_>>());
        assert_eq!(spawn!(total_where(&here)).fetch().unwrap().1, 0);
    });
}

#[test]
fn idle_workers_take_waiting_tasks_from_busy_ones() {
    let ctx = Context::builder()
        .threads(1)
        .workers(LaunchSpec::Local {
            workers: 2,
            threads: 1,
        })
        .build()
        .expect("the cluster starts");
    let gate = fresh_gate("dagger-steal-gate");
    let on_workers = Scope::worker(1).union(&Scope::worker(2));
    ctx.enter(|| {
        // Worker 1's only thread is taken until the gate opens: the tasks placed there can
        // only finish if worker 2 takes them.
        let blocker = spawn!(wait_for(gate.clone()); scope = Scope::worker(1));
        let tasks: Vec<_> = (0..40u64)
            .map(|i| spawn!(slow_square(i); scope = on_workers.clone()))
            .collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let timed_out = done_rx.recv_timeout(Duration::from_secs(60)).is_err();
                std::fs::write(&gate, b"").unwrap();
                timed_out
            })
        };
        let results = dagger::fetch_all(&tasks).unwrap();
        let _ = done_tx.send(());
        assert!(
            !opener.join().unwrap(),
            "the tasks waiting behind the blocked worker were not taken by the idle one"
        );
        for (i, (sq, _)) in results.iter().enumerate() {
            assert_eq!(*sq, (i * i) as u64);
        }
        assert_eq!(blocker.fetch().unwrap(), 1);
    });
    let _ = std::fs::remove_file(&gate);
}

#[test]
fn a_shard_gives_each_task_the_piece_where_it_runs() {
    let ctx = cluster(2);
    ctx.enter(|| {
        for per_thread in [false, true] {
            let make = |scope| spawn!(new_counter(); scope = scope);
            let counters = if per_thread {
                dagger::shard_per_thread(make).unwrap()
            } else {
                dagger::shard(make).unwrap()
            };
            // This process and two workers, each with two threads.
            assert_eq!(counters.len(), if per_thread { 6 } else { 3 });
            let tasks: Vec<_> = (0..60u32)
                .map(|i| match i % 3 {
                    0 => spawn!(bump(&counters)),
                    w => spawn!(bump(&counters); scope = Scope::worker(w)),
                })
                .collect();
            let ran_on = dagger::fetch_all(&tasks).unwrap();
            let mut counted = [0u64; 3];
            for piece in counters.pieces() {
                let w = piece.processor().worker.0 as usize;
                counted[w] += spawn!(count(&piece)).fetch().unwrap();
            }
            for (w, n) in counted.iter().enumerate() {
                let ran = ran_on.iter().filter(|r| **r as usize == w).count() as u64;
                assert_eq!(
                    *n, ran,
                    "process {w}'s pieces count the tasks that ran there"
                );
            }
            assert_eq!(counted.iter().sum::<u64>(), 60);
            assert!(counted[1] >= 20 && counted[2] >= 20);
        }
        // Pieces only on worker 2: tasks using the shard run there.
        let on_two = dagger::shard_in(
            &Scope::worker(2),
            false,
            |scope| spawn!(new_counter(); scope = scope),
        )
        .unwrap();
        assert_eq!(on_two.len(), 1);
        let ran_on: Vec<u32> = (0..10)
            .map(|_| spawn!(bump(&on_two)).fetch().unwrap())
            .collect();
        assert_eq!(ran_on, vec![2; 10]);
        assert_eq!(spawn!(count(&on_two.pieces()[0])).fetch().unwrap(), 10);
    });
}

#[test]
fn a_shard_of_closures_cannot_reach_worker_processes() {
    let ctx = cluster(1);
    ctx.enter(|| {
        let err =
            dagger::shard(|scope| dagger::spawn_with(dagger::Options::new().scope(scope), || 1u8))
                .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling, "{err}");
        assert!(err.to_string().contains("worker"), "{err}");
    });
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn dropping_the_context_ends_its_cluster_threads() {
    let io_before = threads_named("dagger-io");
    let heartbeat_before = threads_named("dagger-heartbe");
    {
        let ctx = cluster(1);
        assert_eq!(ctx.enter(|| spawn!(square(3)).fetch().unwrap()), 9);
        assert!(threads_named("dagger-io") > io_before);
    }
    eventually("the cluster's threads ended", || {
        threads_named("dagger-io") == io_before
            && threads_named("dagger-heartbe") == heartbeat_before
    });
}

/// Large values cross whole: a call with a large argument sent along with it (a `Run` sent
/// alone rather than copied into a batch) among small calls, a result of several frames read
/// by tasks on another worker (fetched ahead of the calls, encoded once) and by the head.
#[test]
fn large_values_cross_whole() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let n = 300_000u64;
        let big = dagger::spawn(move || (0..n).collect::<Vec<u64>>()); // a value of the head
        let before: Vec<DTask<u64>> = (0..50)
            .map(|i| spawn!(square(i); scope = Scope::worker(1)))
            .collect();
        let inline = spawn!(total(&big); scope = Scope::worker(1));
        let after: Vec<DTask<u64>> = (50..100)
            .map(|i| spawn!(square(i); scope = Scope::worker(1)))
            .collect();
        assert_eq!(inline.fetch().unwrap(), (0..n).sum::<u64>());
        for (i, t) in before.iter().chain(&after).enumerate() {
            assert_eq!(t.fetch().unwrap(), (i * i) as u64);
        }
        let m = 1u64 << 20; // 8 MiB encoded: several frames
        let data = spawn!(make(m); scope = Scope::worker(1));
        let sums: Vec<DTask<(u64, u32)>> = (0..6)
            .map(|_| spawn!(total_where(&data); scope = Scope::worker(2)))
            .collect();
        for s in &sums {
            assert_eq!(s.fetch().unwrap(), ((0..m).sum::<u64>(), 2));
        }
        let back = data.fetch().unwrap();
        assert_eq!((back.len() as u64, back[12_345]), (m, 12_345));
    });
}

/// A long chain sent ahead to worker 1, whose first task waits for a value worker 2 is still
/// making, starts link after link once that value is made (not by recursion: 5000 links
/// overflowed the stack of worker 1's I/O thread).
#[test]
fn a_long_chain_waiting_for_another_worker_starts_once_its_input_is_made() {
    const LINKS: u64 = 5000;
    let ctx = cluster(2);
    let gate = fresh_gate("dagger-chain-gate");
    ctx.enter(|| {
        let t = chain_sent_ahead_to_worker_1(&ctx, LINKS, |start| {
            let here =
                spawn!(wait_for_after(gate.clone(), start.clone()); scope = Scope::worker(1));
            let there = spawn!(wait_for_after(gate.clone(), start); scope = Scope::worker(2));
            spawn!(add_ids(here, there); scope = Scope::worker(1))
        });
        std::fs::write(&gate, b"").unwrap();
        assert_eq!(t.fetch().unwrap(), 3 + LINKS);
    });
    let _ = std::fs::remove_file(&gate);
}

#[test]
fn chains_are_sent_ahead_to_the_worker_making_their_input() {
    let ctx = cluster(2);
    ctx.enter(|| {
        let chain = |scope: &Scope, n: u64, fail_at: u64| {
            let mut t = spawn!(step(0, fail_at)?; scope = scope.clone());
            for _ in 1..n {
                t = spawn!(step(t, fail_at)?; scope = scope.clone());
            }
            t
        };
        assert_eq!(
            chain(&Scope::worker(1), 400, u64::MAX).fetch().unwrap(),
            400
        );
        let ahead = ctx.worker_stats(WorkerId(1)).unwrap().sent_ahead;
        assert!(
            ahead > 0,
            "no task of a 400-task chain on worker 1 was sent ahead of its input"
        );
        let both = Scope::spec().workers([1, 2]).build().unwrap();
        assert_eq!(chain(&both, 400, u64::MAX).fetch().unwrap(), 400);

        // A task failing in a chain sent ahead fails the rest, naming it; nothing is left
        // behind on the workers.
        let err = chain(&Scope::worker(1), 300, 150).fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DependencyFailed, "{err}");
        assert!(err.to_string().contains("step 150 fails"), "{err}");
        for w in [1, 2] {
            eventually("the workers hold no value", || {
                ctx.worker_stats(WorkerId(w)).unwrap().live_values == 0
            });
        }
        assert_eq!(chain(&Scope::worker(1), 50, u64::MAX).fetch().unwrap(), 50);
    });
}

/// A 1-d stencil (each point reads itself and its neighbours of the step before), its left
/// half on worker 1 and its right half on worker 2: the points at the border read a value
/// made on the other worker. Spawned whole before its first step runs, the later tasks are
/// sent ahead of their inputs, also of those made on the other worker, which tells the
/// waiting worker directly when they are made (through shared memory: the workers share this
/// host).
#[test]
fn stencil_tasks_are_sent_ahead_of_inputs_made_on_another_worker() {
    const WIDTH: usize = 4;
    const STEPS: usize = 60;
    let ctx = cluster(2);
    ctx.enter(|| {
        let (rows, expect) = common::spawn_stencil(WIDTH, STEPS, |_, c, seed, ins| {
            spawn!(mix(seed, &ins); scope = Scope::worker(1 + (c * 2 / WIDTH) as u32))
        });
        for (s, row) in rows.iter().enumerate() {
            for (c, t) in row.iter().enumerate() {
                assert_eq!(t.fetch().unwrap(), expect[s][c], "step {s}, point {c}");
            }
        }
        for w in [1, 2] {
            let stats = ctx.worker_stats(WorkerId(w)).unwrap();
            // Both points of each later step on each worker, one of them reading a value made
            // on the other worker. The head sends a task ahead when a worker reports the
            // step before it, so on a busy machine a few may find their inputs made already
            // (the failed CI run of stop 23 had 117 of 118): most must be sent ahead.
            let later = 2 * (STEPS as u64 - 1);
            assert!(
                stats.sent_ahead >= later * 3 / 4,
                "worker {w} had {} of its {later} later tasks sent ahead",
                stats.sent_ahead,
            );
            // Each step's border value: a note is sent on the connection only if the ring
            // of the inbox is full, or at once to the question.
            assert!(
                stats.inbox_notes >= STEPS as u64 / 2,
                "worker {w} took {} notes from its inbox in {STEPS} steps",
                stats.inbox_notes
            );
        }
    });
}

/// A worker that has had nothing to do since it started (its compute threads went to sleep
/// before it opened its inbox) gets a call sent ahead of values made on two other workers:
/// the notes that they are made arrive in its inbox while every compute thread sleeps, and
/// the I/O thread must be watching it. (It was not: the threads had gone to sleep without
/// asking, and the call waited for ever.)
#[test]
fn a_worker_idle_since_it_started_takes_the_notes_it_waits_for() {
    let ctx = cluster(3);
    let gate = fresh_gate("dagger-idle-worker-notes");
    ctx.enter(|| {
        // Nothing goes to a worker before the sum is spawned: its inputs then go as tasks
        // that calls may be sent ahead of.
        let (open, start) = held_start(0);
        let one = spawn!(wait_for_after(gate.clone(), start.clone()); scope = Scope::worker(1));
        let three = spawn!(wait_for_after(gate.clone(), start); scope = Scope::worker(3));
        let sum = spawn!(add_ids(one, three); scope = Scope::worker(2));
        open.send(()).unwrap();
        eventually("the sum is sent ahead to worker 2", || {
            ctx.worker_stats(WorkerId(2)).unwrap().sent_ahead == 1
        });
        std::fs::write(&gate, b"").unwrap();
        // (A question that reaches worker 1 or 3 after its task ended is answered at once,
        // on the connection: how many notes come through the inbox depends on the timing.)
        eventually("the sum is made", || sum.is_ready());
        assert_eq!(sum.fetch().unwrap(), 4);
    });
    let _ = std::fs::remove_file(&gate);
}

/// A call sent ahead to worker 1 of a task sent to worker 2 asks worker 2 to say when that
/// task is made. Here the head's call to worker 2 waits behind a 16 MiB call on the head's
/// connection while worker 1's question travels on another one, so the question arrives
/// first: worker 2 waits for the task it has not received yet (it knows how many calls the
/// head sent before it) instead of answering that it is not made there, which would send the
/// waiting call back to the head to be placed again.
#[test]
fn a_question_about_a_task_that_has_not_arrived_yet_waits_for_it() {
    let ctx = cluster(2);
    let gate = fresh_gate("a-question-overtakes");
    ctx.enter(|| {
        let (open, start) = held_start(7);
        // Both inputs of `last` wait for `start`: when they are sent, `last` already waits
        // for them, so it is sent ahead of them (to worker 1, across to worker 2).
        let held = spawn!(wait_for_after(gate.clone(), start.clone()); scope = Scope::worker(1));
        let made = spawn!(square(start.clone()); scope = Scope::worker(2));
        let last = spawn!(plus(made.clone(), held.clone()); scope = Scope::worker(1));
        let big = dagger::SharedBytes::from(vec![3u8; 16 << 20]);
        let before = spawn!(byte_len(big); scope = Scope::worker(2));
        open.send(()).expect("the start task waits");
        // `held` ends only once `last` was sent ahead of it (else, on a loaded machine, it
        // could end before the head sent `made`, and `last` would just wait for `made`).
        eventually("`last` was sent ahead of its inputs", || {
            ctx.worker_stats(WorkerId(1)).unwrap().sent_ahead == 1
        });
        std::fs::write(&gate, b"open").unwrap();
        assert_eq!(last.fetch().unwrap(), 49 + 1);
        assert_eq!(before.fetch().unwrap(), 16 << 20);
        let stats = ctx.worker_stats(WorkerId(1)).unwrap();
        assert_eq!(stats.sent_ahead, 1, "`last` was sent ahead once");
        assert_eq!(
            stats.placed_again, 0,
            "`last` waited on worker 1 for its input"
        );
    });
    let _ = std::fs::remove_file(&gate);
}

/// A long chain sent ahead on worker 1 behind a call that waits for a task on worker 2,
/// which fails: worker 1 gives back the whole chain for the head to place again (where it
/// fails with its input) without recursing once per call, which overflowed the stack of its
/// I/O thread for chains of some ten thousand calls.
#[test]
fn a_long_chain_sent_ahead_of_a_failed_input_is_given_back_whole() {
    const LINKS: u64 = 20_000;
    let ctx = cluster(2);
    let gate = fresh_gate("dagger-failed-chain-gate");
    ctx.enter(|| {
        let t = chain_sent_ahead_to_worker_1(&ctx, LINKS, |start| {
            let here =
                spawn!(wait_for_after(gate.clone(), start.clone()); scope = Scope::worker(1));
            let there = spawn!(fail_after(gate.clone(), start)?; scope = Scope::worker(2));
            spawn!(plus(there, here); scope = Scope::worker(1))
        });
        std::fs::write(&gate, b"").unwrap();
        let err = t.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DependencyFailed, "{err}");
        // The head fails the chain as soon as it learns of the failure; the worker may still
        // be giving the calls back then.
        eventually("worker 1 gave back the whole chain", || {
            ctx.worker_stats(WorkerId(1)).unwrap().placed_again > LINKS
        });
        // The worker is still there and serves.
        assert_eq!(
            spawn!(square(3); scope = Scope::worker(1)).fetch().unwrap(),
            9
        );
    });
    let _ = std::fs::remove_file(&gate);
}

/// With `pin_threads`, each local worker's compute thread runs on a CPU of its own (worker
/// `w` with one thread: the `w`-th CPU this process may use), and the head's network thread
/// runs at the lowest priority.
#[cfg(target_os = "linux")]
#[test]
fn pinned_local_workers_run_on_cpus_of_their_own() {
    use dagger::ClusterOptions;
    let cpus: Vec<usize> = allowed_cpus("/proc/self/status")
        .split(',')
        .flat_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect();
    let ctx = Context::builder()
        .threads(1)
        .cluster(
            ClusterOptions::new()
                .launch(LaunchSpec::Local {
                    workers: 2,
                    threads: 1,
                })
                .pin_threads(true),
        )
        .build()
        .expect("the cluster starts");
    ctx.enter(|| {
        for (w, cpu) in [(1u32, cpus[0]), (2, cpus[1 % cpus.len()])] {
            let got = spawn!(my_cpus(); scope = Scope::worker(w)).fetch().unwrap();
            assert_eq!(got, cpu.to_string(), "the thread of worker {w}");
        }
    });
    // The tasks of this process are not pinned.
    let here = ctx.enter(|| spawn!(my_cpus(); scope = Scope::worker(0)).fetch().unwrap());
    assert_eq!(here, allowed_cpus("/proc/self/status"));
    let nice_of = |stat: String| -> i64 {
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    let network: Vec<i64> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "dagger-io"))
        .map(|t| nice_of(std::fs::read_to_string(t.join("stat")).unwrap()))
        .collect();
    assert!(
        network.contains(&19),
        "nice values of the network threads: {network:?}"
    );
}
