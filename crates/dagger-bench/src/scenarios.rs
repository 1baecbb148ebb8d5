//! The task-overhead scenarios and their baselines.

use crate::json::Line;
use crate::sys;
use crate::Config;
use dagger::prelude::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

pub fn run(name: &str, cfg: &Config) -> Result<(), String> {
    if cfg.workers > 0 {
        return crate::workers::run(name, cfg);
    }
    match name {
        "independent" => independent(cfg),
        "chain" => chain(cfg),
        "tree" => tree(cfg),
        "fib" => fib(cfg),
        "memory" => memory(cfg),
        "scale" => scale(cfg),
        "idle" => idle(cfg),
        "all" => {
            for s in [
                "independent",
                "chain",
                "tree",
                "fib",
                "scale",
                "memory",
                "idle",
            ] {
                run(s, cfg)?;
            }
            Ok(())
        }
        other => Err(format!("unknown scenario {other:?}")),
    }
}

fn context(cfg: &Config) -> Result<Context, String> {
    Context::builder()
        .threads(cfg.threads)
        .build()
        .map_err(|e| e.to_string())
}

fn rayon_pool(cfg: &Config) -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Times `f` once as a warm-up, then `runs` times; returns every measured duration.
pub(crate) fn measure(runs: usize, mut f: impl FnMut() -> Duration) -> Vec<f64> {
    f();
    (0..runs).map(|_| f().as_secs_f64()).collect()
}

/// Runs the systems in turn (a, b, a, b, ...) so machine noise hits both alike.
pub(crate) fn interleaved(
    runs: usize,
    systems: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Vec<f64>> {
    for s in systems.iter_mut() {
        s();
    }
    let mut out = vec![Vec::new(); systems.len()];
    for _ in 0..runs {
        for (i, s) in systems.iter_mut().enumerate() {
            out[i].push(s().as_secs_f64());
        }
    }
    out
}

/// The standard fields of a timed result (median of `runs`).
fn timed(scenario: &str, system: &str, tasks: usize, cfg: &Config, runs: &[f64]) -> (Line, f64) {
    let secs = median(runs.to_vec());
    let line = Line::new(scenario, system)
        .int("tasks", tasks as u64)
        .num("seconds", secs)
        .num("us_per_task", secs * 1e6 / tasks as f64)
        .int("threads", cfg.threads as u64)
        .int("workers", 0)
        .nums("runs", runs);
    (line, secs)
}

fn report(scenario: &str, system: &str, tasks: usize, cfg: &Config, runs: &[f64]) -> f64 {
    let (line, secs) = timed(scenario, system, tasks, cfg, runs);
    line.print();
    secs
}

/// Adds a comparison against a target (`value` must be at most `max`).
fn against(line: Line, key: &str, value: f64, max: f64) -> Line {
    line.num(key, value)
        .num(&format!("{key}_target_max"), max)
        .bool("met", value <= max)
}

fn independent(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(1_000_000);
    let ctx = context(cfg)?;
    let pool = rayon_pool(cfg)?;
    let mut dagger_run = || {
        ctx.enter(|| {
            let t = Instant::now();
            let tasks: Vec<DTask<usize>> = (0..n)
                .map(|i| dagger::spawn(move || black_box(i)))
                .collect();
            let mut sum = 0usize;
            for task in &tasks {
                sum = sum.wrapping_add(task.fetch().unwrap());
            }
            black_box(sum);
            let e = t.elapsed();
            drop(tasks);
            e
        })
    };
    let mut rayon_run = || {
        let t = Instant::now();
        pool.scope(|s| {
            for i in 0..n {
                s.spawn(move |_| {
                    black_box(i);
                });
            }
        });
        t.elapsed()
    };
    let runs = interleaved(cfg.runs, &mut [&mut dagger_run, &mut rayon_run]);
    let r = report("independent", "rayon-scope-spawn", n, cfg, &runs[1]);
    let (line, d) = timed("independent", "dagger", n, cfg, &runs[0]);
    against(line, "ratio_to_rayon", d / r, 1.2).print();
    Ok(())
}

fn add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

fn chain(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(100_000);
    let ctx = context(cfg)?;
    let runs = measure(cfg.runs, || {
        ctx.enter(|| {
            let t = Instant::now();
            let mut prev = spawn!(add(0, 1));
            for _ in 1..n {
                prev = spawn!(add(prev, 1));
            }
            assert_eq!(prev.fetch().unwrap(), n as u64);
            t.elapsed()
        })
    });
    let (line, secs) = timed("chain", "dagger", n, cfg, &runs);
    against(line, "us_per_hop", secs * 1e6 / n as f64, 1.0).print();
    Ok(())
}

fn sum2(a: &u64, b: &u64) -> u64 {
    a.wrapping_add(*b)
}

fn tree(cfg: &Config) -> Result<(), String> {
    let leaves = cfg.n.unwrap_or(1_000_000);
    let ctx = context(cfg)?;
    let total_tasks = 2 * leaves - 1;
    let runs = measure(cfg.runs, || {
        ctx.enter(|| {
            let t = Instant::now();
            let mut level: Vec<DTask<u64>> =
                (0..leaves as u64).map(|i| spawn!(add(i, 0))).collect();
            while level.len() > 1 {
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                for pair in level.chunks(2) {
                    next.push(match pair {
                        [a, b] => spawn!(sum2(a, b)),
                        [a] => a.clone(),
                        _ => unreachable!(),
                    });
                }
                level = next;
            }
            let v = level[0].fetch().unwrap();
            assert_eq!(v, (leaves as u64 * (leaves as u64 - 1)) / 2);
            t.elapsed()
        })
    });
    let (line, secs) = timed("tree", "dagger", total_tasks, cfg, &runs);
    line.num("us_per_task_target_max", 1.0)
        .bool("met", secs * 1e6 / total_tasks as f64 <= 1.0)
        .print();
    Ok(())
}

fn fib_dagger(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let a = spawn!(fib_dagger(n - 1));
    let b = spawn!(fib_dagger(n - 2));
    a.fetch().unwrap() + b.fetch().unwrap()
}

fn fib_rayon(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = rayon::join(|| fib_rayon(n - 1), || fib_rayon(n - 2));
    a + b
}

fn fib_calls(n: u64) -> u64 {
    // fib(n) makes 2 * fib(n + 1) - 1 calls
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n + 1 {
        (a, b) = (b, a + b);
    }
    2 * a - 1
}

fn fib(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(25) as u64;
    let ctx = context(cfg)?;
    let pool = rayon_pool(cfg)?;
    let tasks = fib_calls(n) as usize;
    let mut d = || {
        ctx.enter(|| {
            let t = Instant::now();
            black_box(dagger::spawn(move || fib_dagger(n)).fetch().unwrap());
            t.elapsed()
        })
    };
    let mut r = || {
        let t = Instant::now();
        black_box(pool.install(|| fib_rayon(n)));
        t.elapsed()
    };
    let runs = interleaved(cfg.runs, &mut [&mut d, &mut r]);
    let rs = report("fib", "rayon-join", tasks, cfg, &runs[1]);
    let (line, ds) = timed("fib", "dagger", tasks, cfg, &runs[0]);
    line.int("n", n).num("ratio_to_rayon_join", ds / rs).print();
    Ok(())
}

fn wait_until(mut cond: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn memory(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(1_000_000);
    let ctx = context(cfg)?;
    // Warm the runtime up (threads, queues) before the baseline.
    ctx.enter(|| {
        let warm: Vec<_> = (0..1000u64).map(|i| dagger::spawn(move || i)).collect();
        fetch_all(&warm).unwrap();
    });
    let live_before = dagger::live_results();
    sys::trim_heap();
    let before = sys::rss_bytes().ok_or("cannot read RSS")?;
    let peak = ctx.enter(|| {
        let tasks: Vec<DTask<u64>> = (0..n as u64).map(|i| dagger::spawn(move || i)).collect();
        let s: u64 = tasks.iter().map(|t| t.fetch().unwrap()).sum();
        black_box(s);
        let peak = sys::rss_bytes().unwrap_or(0);
        drop(tasks);
        peak
    });
    let freed = wait_until(
        || dagger::live_results() <= live_before,
        Duration::from_secs(30),
    );
    let after_no_trim = sys::rss_bytes().unwrap_or(0);
    sys::trim_heap();
    let after = sys::rss_bytes().unwrap_or(0);
    let growth = after as f64 / before as f64 - 1.0;
    Line::new("memory", "dagger")
        .int("tasks", n as u64)
        .num("seconds", f64::NAN)
        .num("us_per_task", f64::NAN)
        .int("threads", cfg.threads as u64)
        .int("workers", 0)
        .int("rss_before", before)
        .int("rss_peak", peak)
        .int("rss_after_free", after_no_trim)
        .int("rss_after_trim", after)
        .num("growth_after", growth)
        .int(
            "live_results_after",
            dagger::live_results().saturating_sub(live_before) as u64,
        )
        .bool("all_freed", freed)
        .num("growth_after_target_max", 0.05)
        .bool("met", freed && growth.abs() <= 0.05)
        .print();
    Ok(())
}

/// Spawns `n` trivial tasks and fetches them, with at most `window` in flight.
fn independent_in_waves(n: usize, window: usize) -> Duration {
    let t = Instant::now();
    let mut sum = 0usize;
    let mut tasks: Vec<DTask<usize>> = Vec::with_capacity(window.min(n));
    for start in (0..n).step_by(window) {
        let end = (start + window).min(n);
        tasks.extend((start..end).map(|i| dagger::spawn(move || black_box(i))));
        for task in tasks.drain(..) {
            sum = sum.wrapping_add(task.fetch().unwrap());
        }
    }
    black_box(sum);
    t.elapsed()
}

fn scale(cfg: &Config) -> Result<(), String> {
    let ctx = context(cfg)?;
    let sizes = [10_000usize, 100_000, 1_000_000, 10_000_000];
    // "all": every task spawned before any is fetched (all handles alive at the peak);
    // "waves": the same numbers of tasks with at most 10^4 in flight.
    for (mode, window) in [("all-in-flight", usize::MAX), ("waves-of-10k", 10_000)] {
        let mut per_task = Vec::new();
        for n in sizes {
            let runs = if n >= 10_000_000 {
                cfg.runs.min(3)
            } else {
                cfg.runs
            };
            let runs = measure(runs, || ctx.enter(|| independent_in_waves(n, window)));
            let (line, secs) = timed("scale", "dagger", n, cfg, &runs);
            per_task.push(secs / n as f64);
            let line = line.str("mode", mode);
            if n == sizes[sizes.len() - 1] {
                let r = per_task[per_task.len() - 1] / per_task[0];
                against(line, "ratio_to_10k", r, 1.5).print();
            } else {
                line.print();
            }
        }
    }
    Ok(())
}

fn idle(cfg: &Config) -> Result<(), String> {
    let window = Duration::from_secs(cfg.n.unwrap_or(10) as u64);
    let ctx = context(cfg)?;
    ctx.enter(|| {
        let warm: Vec<_> = (0..10_000u64).map(|i| dagger::spawn(move || i)).collect();
        fetch_all(&warm).unwrap();
    });
    // Let the threads finish spinning and go to sleep before the window starts.
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = sys::cpu_seconds().ok_or("cannot read CPU time")?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu = sys::cpu_seconds().ok_or("cannot read CPU time")? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let percent = 100.0 * cpu / wall;
    let line = Line::new("idle", "dagger")
        .int("tasks", 0)
        .num("seconds", wall)
        .num("us_per_task", f64::NAN)
        .num("cpu_seconds", cpu)
        .int("threads", cfg.threads as u64)
        .int("workers", 0);
    against(line, "percent_of_one_core", percent, 5.0).print();
    drop(ctx);
    Ok(())
}
