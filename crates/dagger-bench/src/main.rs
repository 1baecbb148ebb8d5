//! dagger's benchmark binary.
//!
//! ```text
//! cargo run --release -p dagger-bench -- <scenario> [--threads N] [--runs R] [--n N]
//!     [--workers W [--worker-threads T]] [--chunk-mib M]
//! cargo run --release -p dagger-bench -- taskbench [Task Bench flags] [--workers W]
//! ```
//!
//! Scenarios: `independent`, `chain`, `tree`, `fib`, `memory`, `scale`, `idle`, `all`;
//! `transport` measures the transport alone (`dagger-net` over loopback against raw TCP);
//! `floor` measures what the machine allows a stencil across two processes without any
//! runtime (the bound for `taskbench metg --workers 2`).
//! With `--workers W` this process becomes the head of a cluster of W local worker processes
//! (this same binary, `--worker-threads` compute threads each, default 1) and the scenarios
//! `independent`, `chain`, `tree`, `transfer` and `all` run their tasks on the workers;
//! `cholesky` lets its datadeps planner place tile kernels on them too.
//! Every scenario prints one JSON object per line with at least `scenario`, `system`, `tasks`,
//! `seconds`, `us_per_task` and `workers` (0: one process). Timed scenarios run `--runs`
//! times (default 7) after one warm-up, alternating dagger and its baseline, and report the
//! median; `runs` lists every measurement.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

/// The global allocator of this build (the `allocator` field of the JSON lines).
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

#[cfg(feature = "mimalloc")]
mod alloc;
mod datadeps;
mod json;
mod scenarios;
mod sys;
mod taskbench;
mod tile_cholesky;
mod transport;
mod workers;

use std::process::ExitCode;

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Config {
    pub threads: usize,
    pub runs: usize,
    pub n: Option<usize>,
    /// Worker processes (0: everything in this process).
    pub workers: usize,
    /// Compute threads of each worker process.
    pub worker_threads: usize,
    /// `transfer`: only this chunk size (MiB) instead of 1, 4, 16 and 64.
    pub chunk_mib: Option<usize>,
}

fn usage() -> &'static str {
    "usage: dagger-bench <independent|chain|tree|fib|memory|scale|idle|all> [--threads N] [--runs R] [--n N]\n       dagger-bench transport [--runs R] [--n N]\n       dagger-bench floor [--runs R] [--n STEPS]\n       dagger-bench <independent|chain|tree|transfer|cholesky|all> --workers W [--worker-threads T] [--threads N] [--runs R] [--n N] [--chunk-mib M]\n       dagger-bench taskbench [-steps N -width N -type T -kernel K -iter N ...] [metg] [--workers W [--worker-threads T]]"
}

fn parse(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        threads: 2,
        runs: 7,
        n: None,
        workers: 0,
        worker_threads: 1,
        chunk_mib: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<usize>()
                .map_err(|_| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--threads" => cfg.threads = value("--threads")?.max(1),
            "--runs" => cfg.runs = value("--runs")?.max(1),
            "--n" => cfg.n = Some(value("--n")?.max(1)),
            "--workers" => cfg.workers = value("--workers")?,
            "--worker-threads" => cfg.worker_threads = value("--worker-threads")?.max(1),
            "--chunk-mib" => cfg.chunk_mib = Some(value("--chunk-mib")?.max(1)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cfg)
}

/// Why the bench stopped: bad arguments (the usage is printed too), or a failed run.
enum Failed {
    Usage(String),
    Run(String),
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    alloc::configure();
    // The second process of `floor` serves it and exits here.
    taskbench::floor::serve_if_peer();
    // In a worker process (started by the head with `--workers`) this runs the worker and
    // never returns.
    if let Err(e) = dagger::init() {
        eprintln!("dagger-bench: {e}");
        return ExitCode::from(1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = args.first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let result = if scenario == "taskbench" {
        taskbench::parse(&args[1..])
            .map_err(Failed::Usage)
            .and_then(|a| taskbench::run(a).map_err(Failed::Run))
    } else {
        parse(&args[1..]).map_err(Failed::Usage).and_then(|cfg| {
            let ran = if scenario == "transport" {
                transport::run(&cfg)
            } else if scenario == "floor" {
                taskbench::floor::run(&cfg)
            } else {
                datadeps::run(scenario, &cfg).unwrap_or_else(|| scenarios::run(scenario, &cfg))
            };
            ran.map_err(|e| match e.starts_with("unknown scenario") {
                true => Failed::Usage(e),
                false => Failed::Run(e),
            })
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Usage(e)) => {
            eprintln!("dagger-bench: {e}\n{}", usage());
            ExitCode::from(2)
        }
        Err(Failed::Run(e)) => {
            eprintln!("dagger-bench: {e}");
            ExitCode::from(1)
        }
    }
}
