//! Data-dependency region benchmarks (issue 4).
//!
//! * `cholesky`: tiled Cholesky written with `spawn_datadeps` (faer tile kernels, In/InOut)
//!   against one multithreaded faer Cholesky of the same matrix, in the same process, runs
//!   interleaved. With `--workers W` the region's planner may also place the tile kernels
//!   (registered functions) in W local worker processes; `bytes_moved` counts what the region
//!   copied between processes in the last run. GFLOP/s count N³/3 flops. The matrix is split into tiles before the clock
//!   starts (the tiled layout is the input of a tiled algorithm).
//! * `datadeps`: 100,000 trivial tasks over 100 buffers (one or two buffers each, random
//!   In/InOut): recording, planning, launching and running them, per task.

use crate::json::Line;
use crate::scenarios::median;
use crate::tile_cholesky::{factor, potrf_par, rel_error, spd, tiles};
use crate::Config;
use dagger::{
    spawn_datadeps_with, Context, CostPlanner, DatadepsOptions, In, InOut, RoundRobin, Transfers,
    WorkStealing,
};
use faer::Par;
use std::time::Instant;

/// Runs a datadeps scenario, if `name` is one.
pub fn run(name: &str, cfg: &Config) -> Option<Result<(), String>> {
    match name {
        "cholesky" => Some(cholesky(cfg)),
        "datadeps" => Some(overhead(cfg)),
        _ => None,
    }
}

/// A planner variant: its name and how to make the region options.
type Variant = (&'static str, fn() -> DatadepsOptions);

/// The planners every datadeps scenario compares.
const PLANNERS: [Variant; 3] = [
    ("cost", || {
        DatadepsOptions::new().planner(CostPlanner::new())
    }),
    ("round-robin", || {
        DatadepsOptions::new().planner(RoundRobin::default())
    }),
    ("work-stealing", || {
        DatadepsOptions::new().planner(WorkStealing)
    }),
];

/// One task of the overhead program: a buffer and whether it is written, maybe a second one.
type Step = (usize, bool, Option<(usize, bool)>);

fn context(cfg: &Config) -> Result<Context, String> {
    if cfg.workers > 0 {
        return crate::workers::cluster(cfg.threads, cfg.workers, cfg.worker_threads, false);
    }
    Context::builder()
        .threads(cfg.threads)
        .build()
        .map_err(|e| e.to_string())
}

fn cholesky(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(4096);
    let runs = cfg.runs;
    let flops = (n as f64).powi(3) / 3.0;
    let ctx = context(cfg)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| e.to_string())?;
    let a = spd(n, Par::rayon(0));
    let sizes: Vec<usize> = [128usize, 256, 512]
        .into_iter()
        .filter(|nb| n % nb == 0)
        .collect();
    let planners = PLANNERS;
    let mut faer_s = Vec::new();
    let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); planners.len()]; sizes.len()];
    let mut moved: Vec<Vec<u64>> = vec![vec![0; planners.len()]; sizes.len()];
    let mut reference = a.clone();
    pool.install(|| potrf_par(&mut reference, Par::rayon(cfg.threads)));
    let mut err: f64 = 0.0;
    // one warm-up round, then `runs` measured rounds, everything interleaved
    for round in 0..=runs {
        let mut m = a.clone();
        let t0 = Instant::now();
        pool.install(|| potrf_par(&mut m, Par::rayon(cfg.threads)));
        let s = t0.elapsed().as_secs_f64();
        if round > 0 {
            faer_s.push(s);
        }
        for (si, &nb) in sizes.iter().enumerate() {
            for (pi, (_, make)) in planners.iter().enumerate() {
                let mut t = tiles(&a, nb);
                let transfers = Transfers::new();
                let t0 = Instant::now();
                ctx.enter(|| factor(&mut t, make().transfers(&transfers)))
                    .map_err(|e| e.to_string())?;
                let s = t0.elapsed().as_secs_f64();
                if round > 0 {
                    ours[si][pi].push(s);
                    let st = transfers.stats();
                    moved[si][pi] =
                        st.sent_bytes + st.moved_bytes + st.fetched_bytes + st.written_back_bytes;
                } else {
                    err = err.max(rel_error(&t, &reference));
                }
            }
        }
    }
    let faer_med = median(faer_s.clone());
    Line::new("cholesky", "faer")
        .int("n", n as u64)
        .int("threads", cfg.threads as u64)
        .num("seconds", faer_med)
        .num("gflops", flops / faer_med / 1e9)
        .nums("runs", &faer_s)
        .int("workers", 0)
        .print();
    for (si, &nb) in sizes.iter().enumerate() {
        for (pi, (pname, _)) in planners.iter().enumerate() {
            let med = median(ours[si][pi].clone());
            let nt = n / nb;
            let tasks = nt * (nt + 1) * (nt + 2) / 6;
            Line::new("cholesky", "dagger-datadeps")
                .str("planner", pname)
                .int("n", n as u64)
                .int("tile", nb as u64)
                .int("tasks", tasks as u64)
                .int("threads", cfg.threads as u64)
                .num("seconds", med)
                .num("gflops", flops / med / 1e9)
                .num("ratio_to_faer", faer_med / med)
                .num("max_rel_error", err)
                .nums("runs", &ours[si][pi])
                .int("workers", cfg.workers as u64)
                .int("bytes_moved", moved[si][pi])
                .print();
        }
    }
    Ok(())
}

fn overhead(cfg: &Config) -> Result<(), String> {
    let tasks = cfg.n.unwrap_or(100_000);
    let nbuf = 100;
    let ctx = context(cfg)?;
    // the program: per task one or two distinct buffers, each read or written
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let prog: Vec<Step> = (0..tasks)
        .map(|_| {
            let a = (next() % nbuf as u64) as usize;
            let wa = next() % 2 == 0;
            let b = (next() % 3 == 0).then(|| {
                let b = (a + 1 + (next() % (nbuf as u64 - 1)) as usize) % nbuf;
                (b, next() % 2 == 0)
            });
            (a, wa, b)
        })
        .collect();
    let planners = PLANNERS;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); planners.len()];
    let mut expected: Option<Vec<u64>> = None;
    for round in 0..=cfg.runs {
        for (pi, (_, make)) in planners.iter().enumerate() {
            let mut bufs = vec![0u64; nbuf];
            let t0 = Instant::now();
            ctx.enter(|| {
                spawn_datadeps_with(make(), |dd| {
                    let hs: Vec<_> = bufs.iter_mut().map(|b| dd.data(b)).collect();
                    for &(a, wa, b) in &prog {
                        match (wa, b) {
                            (true, None) => {
                                dd.spawn(|x: &mut u64| *x += 1, (InOut(hs[a]),));
                            }
                            (false, None) => {
                                dd.spawn(|x: &u64| *x, (In(hs[a]),));
                            }
                            (wa, Some((b, wb))) => match (wa, wb) {
                                (true, true) => {
                                    dd.spawn(
                                        |x: &mut u64, y: &mut u64| {
                                            *x += 1;
                                            *y += *x
                                        },
                                        (InOut(hs[a]), InOut(hs[b])),
                                    );
                                }
                                (true, false) => {
                                    dd.spawn(
                                        |x: &mut u64, y: &u64| *x += y,
                                        (InOut(hs[a]), In(hs[b])),
                                    );
                                }
                                (false, true) => {
                                    dd.spawn(
                                        |x: &u64, y: &mut u64| *y += x,
                                        (In(hs[a]), InOut(hs[b])),
                                    );
                                }
                                (false, false) => {
                                    dd.spawn(|x: &u64, y: &u64| x + y, (In(hs[a]), In(hs[b])));
                                }
                            },
                        }
                    }
                })
            })
            .map_err(|e| e.to_string())?;
            let secs = t0.elapsed().as_secs_f64();
            match &expected {
                None => expected = Some(bufs.clone()),
                Some(e) if *e != bufs => {
                    return Err("datadeps: planners disagree on the result".into())
                }
                _ => {}
            }
            if round > 0 {
                times[pi].push(secs);
            }
        }
    }
    for (pi, (pname, _)) in planners.iter().enumerate() {
        let med = median(times[pi].clone());
        Line::new("datadeps", "dagger-datadeps")
            .str("planner", pname)
            .int("tasks", tasks as u64)
            .int("buffers", nbuf as u64)
            .int("threads", cfg.threads as u64)
            .num("seconds", med)
            .num("us_per_task", med * 1e6 / tasks as f64)
            .nums("runs", &times[pi])
            .int("workers", 0)
            .print();
    }
    Ok(())
}
