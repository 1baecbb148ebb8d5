//! Data-dependency region benchmarks (issue 4).
//!
//! * `cholesky`: tiled Cholesky written with `spawn_datadeps` (faer tile kernels, In/InOut)
//!   against one multithreaded faer Cholesky of the same matrix, in the same process, runs
//!   interleaved. GFLOP/s count N³/3 flops. The matrix is split into tiles before the clock
//!   starts (the tiled layout is the input of a tiled algorithm).
//! * `datadeps`: 100,000 trivial tasks over 100 buffers (one or two buffers each, random
//!   In/InOut): recording, planning, launching and running them, per task.

use crate::json::Line;
use crate::scenarios::median;
use crate::Config;
use dagger::{
    spawn_datadeps_with, Context, CostPlanner, DatadepsOptions, In, InOut, RoundRobin, WorkStealing,
};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, Par};
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

/// One task of the overhead program: a buffer and whether it is written, maybe a second one.
type Step = (usize, bool, Option<(usize, bool)>);

fn context(cfg: &Config) -> Result<Context, String> {
    Context::builder()
        .threads(cfg.threads)
        .build()
        .map_err(|e| e.to_string())
}

fn potrf_with(a: &mut Mat<f64>, par: Par) {
    let n = a.nrows();
    let req = faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
        n,
        par,
        Default::default(),
    );
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    faer::linalg::cholesky::llt::factor::cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        faer::dyn_stack::MemStack::new(&mut mem),
        Default::default(),
    )
    .expect("the matrix is positive definite");
}

fn potrf(a: &mut Mat<f64>) {
    potrf_with(a, Par::Seq)
}

fn trsm(l: &Mat<f64>, a: &mut Mat<f64>) {
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(
        l.as_ref(),
        a.as_mut().transpose_mut(),
        Par::Seq,
    );
}

fn syrk(a: &Mat<f64>, c: &mut Mat<f64>) {
    faer::linalg::matmul::triangular::matmul(
        c.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        a.as_ref(),
        BlockStructure::Rectangular,
        a.as_ref().transpose(),
        BlockStructure::Rectangular,
        -1.0,
        Par::Seq,
    );
}

fn gemm(a: &Mat<f64>, b: &Mat<f64>, c: &mut Mat<f64>) {
    faer::linalg::matmul::matmul(
        c.as_mut(),
        Accum::Add,
        a.as_ref(),
        b.as_ref().transpose(),
        -1.0,
        Par::Seq,
    );
}

fn spd(n: usize) -> Mat<f64> {
    let mut s = 0x2545f4914f6cdd1du64;
    let b = Mat::from_fn(n, n, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    });
    let mut a = Mat::<f64>::identity(n, n);
    faer::linalg::matmul::matmul(
        a.as_mut(),
        Accum::Add,
        b.as_ref(),
        b.as_ref().transpose(),
        1.0 / n as f64,
        Par::rayon(0),
    );
    a
}

fn tiles(a: &Mat<f64>, nb: usize) -> Vec<Vec<Mat<f64>>> {
    let nt = a.nrows() / nb;
    (0..nt)
        .map(|i| {
            (0..=i)
                .map(|j| a.submatrix(i * nb, j * nb, nb, nb).to_owned())
                .collect()
        })
        .collect()
}

fn factor(t: &mut [Vec<Mat<f64>>], opts: DatadepsOptions) {
    let nt = t.len();
    spawn_datadeps_with(opts, |dd| {
        let h: Vec<Vec<_>> = t
            .iter_mut()
            .map(|row| row.iter_mut().map(|m| dd.data(m)).collect())
            .collect();
        for k in 0..nt {
            dd.spawn(potrf, (InOut(h[k][k]),));
            for i in k + 1..nt {
                dd.spawn(trsm, (In(h[k][k]), InOut(h[i][k])));
            }
            for i in k + 1..nt {
                dd.spawn(syrk, (In(h[i][k]), InOut(h[i][i])));
                for j in k + 1..i {
                    dd.spawn(gemm, (In(h[i][k]), In(h[j][k]), InOut(h[i][j])));
                }
            }
        }
    })
    .expect("the tiled factorisation succeeds");
}

/// Largest relative difference of the tiled factor from faer's (lower triangle).
fn check(t: &[Vec<Mat<f64>>], l: &Mat<f64>, nb: usize) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (i, row) in t.iter().enumerate() {
        for (j, m) in row.iter().enumerate() {
            for c in 0..nb {
                for r in 0..nb {
                    let (gi, gj) = (i * nb + r, j * nb + c);
                    if gi >= gj {
                        diff += (m[(r, c)] - l[(gi, gj)]).powi(2);
                        norm += l[(gi, gj)].powi(2);
                    }
                }
            }
        }
    }
    (diff / norm).sqrt()
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
    let a = spd(n);
    let sizes: Vec<usize> = [128usize, 256, 512]
        .into_iter()
        .filter(|nb| n % nb == 0)
        .collect();
    let planners: [Variant; 3] = [
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
    let mut faer_s = Vec::new();
    let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); planners.len()]; sizes.len()];
    let mut reference = a.clone();
    pool.install(|| potrf_with(&mut reference, Par::rayon(cfg.threads)));
    let mut err: f64 = 0.0;
    // one warm-up round, then `runs` measured rounds, everything interleaved
    for round in 0..=runs {
        let mut m = a.clone();
        let t0 = Instant::now();
        pool.install(|| potrf_with(&mut m, Par::rayon(cfg.threads)));
        let s = t0.elapsed().as_secs_f64();
        if round > 0 {
            faer_s.push(s);
        }
        for (si, &nb) in sizes.iter().enumerate() {
            for (pi, (_, make)) in planners.iter().enumerate() {
                let mut t = tiles(&a, nb);
                let t0 = Instant::now();
                ctx.enter(|| factor(&mut t, make()));
                let s = t0.elapsed().as_secs_f64();
                if round > 0 {
                    ours[si][pi].push(s);
                } else {
                    err = err.max(check(&t, &reference, nb));
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
                .int("workers", 0)
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
    let planners: [Variant; 3] = [
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
