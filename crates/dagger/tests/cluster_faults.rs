//! Faults in a cluster: workers killed or hung mid-graph. Running tasks run again elsewhere,
//! lost results are made again from the tasks that made them, and every graph still finishes
//! with the right answer; what cannot be made again fails with an error that says why.

use dagger::prelude::*;
use dagger::{ClusterOptions, ErrorKind, LaunchSpec, WorkerId};
use std::time::Duration;

dagger::init_before_main!();

mod common;

#[dagger::task]
fn make(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[dagger::task]
fn total(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

#[dagger::task]
fn mix(seed: u64, inputs: Vec<&u64>) -> u64 {
    common::mix_values(seed, inputs.into_iter().copied())
}

#[dagger::task]
fn start(i: u64) -> u64 {
    i
}

#[dagger::task]
fn wait_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn cluster(workers: usize, heartbeat: Duration) -> Context {
    Context::builder()
        .threads(2)
        .cluster(
            ClusterOptions::new()
                .launch(LaunchSpec::Local {
                    workers,
                    threads: 2,
                })
                .heartbeat_timeout(heartbeat),
        )
        .build()
        .expect("the cluster starts")
}

fn on_workers(ids: impl IntoIterator<Item = u32>) -> Scope {
    Scope::spec().workers(ids).build().unwrap()
}

/// The process id of worker `w` of `ctx`.
fn pid_of(ctx: &Context, w: WorkerId) -> u32 {
    ctx.workers().iter().find(|i| i.id == w).unwrap().pid
}

/// Stops process `pid` (`SIGSTOP`) and returns once every thread of it is stopped: the
/// signal stops them as each gets to it, and an I/O thread busy with a message would still
/// answer a request sent right after `kill` returned. Fails the test after 30 s.
fn stop(pid: u32) {
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    until_stopped(pid);
}

/// Returns once every thread of process `pid` is stopped (fails the test after 30 s).
fn until_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command name, which is in parentheses.
                let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
                matches!(state, Some('T' | 't'))
            })
    };
    while !stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} never stopped"
        );
        std::thread::yield_now();
    }
}

/// Returns once worker `w` is running a task (fails the test after 30 s).
fn until_running_on(ctx: &Context, w: WorkerId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ctx.worker_stats(w).unwrap().running == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{w:?} never got a task"
        );
        std::thread::yield_now();
    }
}

#[test]
fn lost_results_are_made_again() {
    let ctx = cluster(2, Duration::from_secs(10));
    ctx.enter(|| {
        let anywhere = on_workers([1, 2]);
        let data = spawn!(make(1000); scope = Scope::worker(1));
        let free = spawn!(make(500); scope = anywhere.clone());
        let on1: Vec<DTask<Vec<u64>>> = (0..4)
            .map(|i| spawn!(make(10 + i); scope = Scope::worker(1)))
            .collect();
        let sum = spawn!(total(&free); scope = Scope::worker(1));
        dagger::wait_all(&on1).unwrap();
        sum.wait();
        data.wait();
        ctx.kill_worker(WorkerId(1)).unwrap();

        // Its scope allowed only worker 1: it cannot be made again, and the error says why.
        let err = data.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Runtime);
        let msg = err.to_string();
        assert!(msg.contains("worker 1"), "{msg}");
        assert!(msg.contains("no live worker in its scope"), "{msg}");
        // It still says where it lived.
        assert_eq!(
            data.processor(),
            Some(dagger::ProcessorId::os(WorkerId(1))),
            "a value lost for good names the worker it was on"
        );

        // A result that may live anywhere is made again on worker 2 ...
        let sum = spawn!(total(&free); scope = Scope::worker(2));
        assert_eq!(sum.fetch().unwrap(), (0..500u64).sum::<u64>());
        // ... also when fetched by the head directly.
        assert_eq!(free.fetch().unwrap().len(), 500);
    });
}

#[test]
fn a_chunk_lost_with_its_worker_is_an_error_naming_both() {
    let ctx = cluster(2, Duration::from_secs(10));
    ctx.enter(|| {
        let c = dagger::tochunk_on((0..100u64).collect::<Vec<_>>(), on_workers([1, 2])).unwrap();
        let holder = c.processor().worker.0;
        let other = 3 - holder;
        ctx.kill_worker(WorkerId(holder)).unwrap();
        let err = spawn!(total(&c); scope = Scope::worker(other))
            .fetch()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("worker {holder}")), "{msg}");
        assert!(msg.contains("tochunk_on"), "{msg}");
        assert!(msg.contains("cannot be made again"), "{msg}");
        // The cluster goes on.
        assert_eq!(
            spawn!(total(&spawn!(make(10); scope = Scope::worker(other))))
                .fetch()
                .unwrap(),
            45
        );
    });
}

#[test]
fn tasks_running_on_a_killed_worker_run_again_elsewhere() {
    let ctx = cluster(2, Duration::from_secs(10));
    ctx.enter(|| {
        let anywhere = on_workers([1, 2]);
        let slow: Vec<DTask<u64>> = (0..6)
            .map(|_| spawn!(wait_ms(300); scope = anywhere.clone()))
            .collect();
        // Wait until worker 1 is running some of them, then kill it.
        until_running_on(&ctx, WorkerId(1));
        ctx.kill_worker(WorkerId(1)).unwrap();
        for t in &slow {
            assert_eq!(t.fetch().unwrap(), 300);
        }
        assert_eq!(ctx.workers().len(), 1);
    });
}

/// A layered DAG of 10,000 tasks over three workers; each task mixes three tasks of the
/// layer before. One worker is SIGKILLed when a pseudo-random task finishes.
fn killed_mid_graph(seed: u64) {
    const LAYERS: usize = 100;
    const WIDTH: usize = 100;
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The same graph computed here, to check the answer.
    let mut expect: Vec<Vec<u64>> = vec![(0..WIDTH as u64).collect()];
    let mut edges: Vec<Vec<[usize; 3]>> = Vec::new();
    for l in 1..LAYERS {
        let mut layer_edges = Vec::new();
        let mut layer = Vec::new();
        for i in 0..WIDTH {
            let e = [
                next() as usize % WIDTH,
                next() as usize % WIDTH,
                next() as usize % WIDTH,
            ];
            let seed = (l * WIDTH + i) as u64;
            let v = e.iter().map(|&j| expect[l - 1][j]).fold(seed, |acc, x| {
                acc.wrapping_mul(0x9E37_79B9).wrapping_add(x) % 1_000_003
            });
            layer.push(v);
            layer_edges.push(e);
        }
        expect.push(layer);
        edges.push(layer_edges);
    }
    let victim = 1 + (next() % 3) as u32;
    let kill_after = WIDTH + (next() as usize % (WIDTH * (LAYERS - 2)));

    let ctx = cluster(3, Duration::from_secs(10));
    ctx.enter(|| {
        let anywhere = on_workers([1, 2, 3]);
        let mut all: Vec<DTask<u64>> = (0..WIDTH as u64)
            .map(|i| spawn!(start(i); scope = anywhere.clone()))
            .collect();
        let mut prev: Vec<DTask<u64>> = all.clone();
        for (l, layer_edges) in edges.iter().enumerate() {
            let layer: Vec<DTask<u64>> = layer_edges
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let ins: Vec<DTask<u64>> = e.iter().map(|&j| prev[j].clone()).collect();
                    let seed = ((l + 1) * WIDTH + i) as u64;
                    spawn!(mix(seed, &ins); scope = anywhere.clone())
                })
                .collect();
            all.extend(layer.iter().cloned());
            prev = layer;
        }
        // Only the last layer is kept: the rest is freed as the graph goes, so a lost value
        // may have to be made again from inputs nobody holds any more.
        let last = prev;
        all[kill_after].wait();
        drop(all);
        ctx.kill_worker(WorkerId(victim)).unwrap();
        for (i, t) in last.iter().enumerate() {
            assert_eq!(
                t.fetch().unwrap(),
                expect[LAYERS - 1][i],
                "seed {seed}: task {i} of the last layer"
            );
        }
    });
}

#[test]
fn a_worker_killed_mid_graph_loses_no_answer() {
    for seed in [0x2545_F491_4F6C_DD1D, 7, 1234567, 99, 0xDEAD_BEEF] {
        killed_mid_graph(seed);
    }
}

#[dagger::task]
fn add_one(x: &u64) -> u64 {
    x + 1
}

/// The worker running a chain (its later tasks sent ahead to it) is killed mid-chain: the
/// chain finishes elsewhere with the right answer, its lost links made again.
#[test]
fn a_chain_sent_ahead_survives_the_loss_of_its_worker() {
    const N: usize = 3000;
    for kill_at in [100, 1500] {
        let ctx = cluster(2, Duration::from_secs(10));
        ctx.enter(|| {
            let anywhere = on_workers([1, 2]);
            let mut all = vec![spawn!(start(1); scope = anywhere.clone())];
            for i in 1..N {
                let t = spawn!(add_one(&all[i - 1]); scope = anywhere.clone());
                all.push(t);
            }
            all[kill_at].wait();
            let victim = all[kill_at].processor().expect("it ran somewhere").worker;
            let last = all.pop().unwrap();
            drop(all);
            ctx.kill_worker(victim).unwrap();
            assert_eq!(last.fetch().unwrap(), N as u64, "killed at {kill_at}");
        });
    }
}

/// A small result travels with its worker's report: the head reads it, and tasks on other
/// workers get it inside their calls, even once that worker is gone (nothing to make again).
#[test]
fn small_results_outlive_their_worker() {
    let ctx = cluster(2, Duration::from_secs(10));
    ctx.enter(|| {
        let small = spawn!(start(42); scope = Scope::worker(1));
        let large = spawn!(make(10_000); scope = Scope::worker(1));
        small.wait();
        large.wait();
        ctx.kill_worker(WorkerId(1)).unwrap();
        assert_eq!(small.fetch().unwrap(), 42);
        let next = spawn!(add_one(&small); scope = Scope::worker(2));
        assert_eq!(next.fetch().unwrap(), 43);
        // A large one stays only on its worker: its scope allows no other, so it is gone.
        let err = large.fetch().unwrap_err();
        assert!(err.to_string().contains("worker 1"), "{err}");
    });
}

/// The worker holding a value that tasks need stops answering (SIGSTOP): the heartbeat
/// declares it dead, the value is made again on the other worker, and the tasks finish.
#[test]
fn a_hung_worker_is_declared_dead_by_heartbeat() {
    let ctx = cluster(2, Duration::from_millis(1500));
    ctx.enter(|| {
        let anywhere = on_workers([1, 2]);
        // Large enough not to travel with its worker's report: only its worker holds it.
        let data = spawn!(make(1000); scope = anywhere.clone());
        data.wait();
        let victim = data.processor().expect("it ran on a worker").worker;
        let pid = pid_of(&ctx, victim);
        stop(pid);
        let sums: Vec<DTask<u64>> = (0..8)
            .map(|_| spawn!(total(&data); scope = anywhere.clone()))
            .collect();
        for s in &sums {
            assert_eq!(s.fetch().unwrap(), (0..1000u64).sum::<u64>());
        }
        assert!(
            ctx.workers().iter().all(|w| w.id != victim),
            "{victim:?} is still a worker"
        );
    });
}

/// A stencil whose points alternate between two workers (every point reads values of both)
/// and whose later steps are sent ahead. Worker 1 freezes mid-run (`SIGSTOP`) and is then
/// killed: the points scoped to it fail, and so do the points on worker 2 that read them,
/// including points that worker 2 had already made and reported before the head learnt of
/// their inputs (their early reports are handed back once they fail: this once recursed
/// without end). The head goes on serving: a task on worker 2 still runs. Under TLS the notes
/// between the workers travel on their connections, and worker 2 then often reports before
/// worker 1 does; without a direct write, reports queued together on a link also once left
/// its writer task asleep, and the stencil stalled before the kill.
#[test]
fn a_worker_lost_mid_stencil_fails_its_points_and_the_head_goes_on() {
    const WIDTH: usize = 8;
    const STEPS: usize = 2000;
    for round in 0..8 {
        let ctx = Context::builder()
            .threads(2)
            .cluster(
                ClusterOptions::new()
                    .tls(true)
                    .launch(LaunchSpec::Local {
                        workers: 2,
                        threads: 2,
                    })
                    .heartbeat_timeout(Duration::from_secs(10)),
            )
            .build()
            .expect("the cluster starts");
        let pid = pid_of(&ctx, WorkerId(1));
        ctx.enter(|| {
            let (rows, _) = common::spawn_stencil(WIDTH, STEPS, |_, c, seed, ins| {
                spawn!(mix(seed, &ins); scope = Scope::worker(1 + (c % 2) as u32))
            });
            rows[STEPS / 4][0].wait();
            stop(pid);
            ctx.kill_worker(WorkerId(1)).unwrap();
            for t in rows.last().unwrap() {
                let err = t.fetch().unwrap_err().to_string();
                assert!(err.contains("no live worker"), "round {round}: {err}");
            }
            let after = spawn!(start(7); scope = Scope::worker(2));
            assert_eq!(after.fetch().unwrap(), 7, "round {round}");
        });
    }
}

/// A worker that stops answering is declared dead by the heartbeat, and a request for its
/// statistics made meanwhile ends then, saying so, rather than after its own 30 s timeout.
#[test]
fn asking_a_hung_worker_for_its_statistics_ends_when_it_is_declared_dead() {
    let ctx = cluster(2, Duration::from_millis(1500));
    let pid = pid_of(&ctx, WorkerId(2));
    stop(pid);
    let err = ctx.worker_stats(WorkerId(2)).unwrap_err().to_string();
    assert!(err.contains("worker 2 left before it reported"), "{err}");
    let err = ctx.worker_stats(WorkerId(2)).unwrap_err().to_string();
    assert!(err.contains("worker 2 is not connected"), "{err}");
    assert_eq!(ctx.worker_stats(WorkerId(1)).unwrap().running, 0);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
}

#[test]
fn losing_every_worker_fails_pending_work_clearly() {
    let ctx = cluster(1, Duration::from_secs(10));
    ctx.enter(|| {
        let slow = spawn!(wait_ms(200); scope = Scope::worker(1));
        let after: Vec<DTask<u64>> = (0..3)
            .map(|_| spawn!(total(&spawn!(make(3); scope = Scope::worker(1))); scope = Scope::worker(1)))
            .collect();
        ctx.kill_worker(WorkerId(1)).unwrap();
        let err = slow.fetch().unwrap_err();
        assert!(err.to_string().contains("no live worker"), "{err}");
        for t in &after {
            let err = t.fetch().unwrap_err();
            assert!(err.to_string().contains("no live worker"), "{err}");
        }
        let late = spawn!(make(1); scope = Scope::worker(1));
        let err = late.fetch().unwrap_err();
        assert!(err.to_string().contains("no live worker"), "{err}");
    });
}

#[test]
fn a_worker_that_exits_before_joining_is_reported_at_once() {
    // Launched workers inherit this and cannot listen on it; the head is told its own address.
    std::env::set_var("DAGGER_BIND", "not-an-address");
    let err = Context::builder()
        .threads(1)
        .cluster(
            ClusterOptions::new()
                .bind("127.0.0.1:0")
                .launch(LaunchSpec::Local {
                    workers: 1,
                    threads: 1,
                })
                .join_timeout(Duration::from_secs(3600)),
        )
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("worker 1 exited before it joined"), "{err}");
}

/// A stencil whose border points read values made on another worker, sent ahead of them
/// (see `cluster::stencil_tasks_are_sent_ahead_of_inputs_made_on_another_worker`): the
/// worker making the right half is killed mid-graph, while the left half's calls wait for
/// its values. They are placed again, the lost values made again on the spare worker, and
/// every answer is right.
#[test]
fn calls_waiting_for_a_killed_worker_run_again() {
    const WIDTH: usize = 4;
    const STEPS: usize = 200;
    for kill_at in [STEPS / 4, STEPS / 2] {
        let ctx = cluster(3, Duration::from_secs(10));
        ctx.enter(|| {
            // The left half on worker 1, the right half on worker 2; after the first step,
            // worker 3 may stand in for either.
            let (rows, expect) = common::spawn_stencil(WIDTH, STEPS, |s, c, seed, ins| {
                let home = 1 + (c * 2 / WIDTH) as u32;
                let scope = if s == 0 {
                    Scope::worker(home)
                } else {
                    on_workers([home, 3])
                };
                spawn!(mix(seed, &ins); scope = scope)
            });
            rows[kill_at][WIDTH - 1].wait();
            ctx.kill_worker(WorkerId(2)).unwrap();
            for (c, t) in rows[STEPS - 1].iter().enumerate() {
                assert_eq!(
                    t.fetch().unwrap(),
                    expect[STEPS - 1][c],
                    "killed at step {kill_at}: point {c} of the last step"
                );
            }
        });
    }
}

/// Does not return on worker 1 (until its process is killed); returns `x` anywhere else.
#[dagger::task]
fn stuck_on_worker_1(x: u64) -> u64 {
    if dagger::current_processor().worker.0 == 1 {
        loop {
            std::thread::park();
        }
    }
    x
}

/// `remove_workers` waits for the leaving worker's tasks to end. If the worker dies
/// meanwhile, its tasks run again elsewhere and the removal ends: the head used to leave the
/// dead worker's tasks in its count of tasks in flight, and the removal waited for that
/// count for ten minutes. (A task taken back by work stealing while its worker was leaving
/// stayed in the count the same way; that race hung `workers_join_and_leave_while_a_graph_runs`
/// about once in 50 runs.)
#[test]
fn a_worker_killed_while_it_is_being_removed_does_not_hold_up_the_removal() {
    let ctx = cluster(2, Duration::from_secs(10));
    ctx.enter(|| {
        let tasks: Vec<DTask<u64>> = (0..4)
            .map(|i| spawn!(stuck_on_worker_1(i); scope = on_workers([1, 2])))
            .collect();
        until_running_on(&ctx, WorkerId(1));
        let (started, removing) = std::sync::mpsc::channel();
        let removed = std::thread::scope(|s| {
            let remover = s.spawn(|| {
                started.send(()).unwrap();
                // Waits for worker 1's tasks, which do not end there.
                ctx.remove_workers(&[WorkerId(1)])
            });
            removing.recv().unwrap();
            ctx.kill_worker(WorkerId(1)).unwrap();
            remover.join().unwrap()
        });
        // Killed before the removal began, the worker may be gone already when it looks.
        if let Err(e) = removed {
            assert!(e.to_string().contains("no worker 1"), "{e}");
        }
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(t.fetch().unwrap(), i as u64);
        }
        let ids: Vec<WorkerId> = ctx.workers().iter().map(|w| w.id).collect();
        assert_eq!(ids, vec![WorkerId(2)]);
    });
}
