//! A port of [Task Bench](https://github.com/StanfordLegion/task-bench) to dagger.
//!
//! ```text
//! dagger-bench taskbench [-steps N] [-width N] [-type T] [-kernel K] [-iter N] ... [-and ...]
//! dagger-bench taskbench metg [same flags] [-runs R] [-metg-start N] [-metg-stop E]
//! ```
//!
//! Task graphs, dependence patterns, kernels, their FLOP and byte counts, the checks every
//! task makes on its inputs and the printed report follow the reference's `core/` library.
//! Each point of each timestep is one dagger task; the points it depends on are its task
//! arguments (`&[DTask<Output>]`, received as `Vec<&Output>`), so dagger orders the work. All
//! graphs of a run (separated by `-and`) run concurrently.
//!
//! `metg` sweeps `-iter` geometrically (halving from `-metg-start`, default 2^20) and reports
//! METG(50%): the smallest task granularity (elapsed seconds × threads / tasks, in µs) whose
//! FLOP/s (B/s for memory-only kernels) reach 50% of the rate measured at the largest
//! granularity. Each point is the best (shortest) of `-runs` runs (default 3).

mod exec;
pub mod floor;
mod graph;
mod kernel;

#[cfg(test)]
use exec::run_graphs;
use exec::run_graphs_placed;
use graph::{Counts, DependenceType, TaskGraph};
use kernel::{bytes_per_task, flops_per_task, KernelType};

use crate::json::Line;
use std::fmt::Write;

/// Runs `dagger-bench taskbench <args>`.
pub fn run(args: Args) -> Result<(), String> {
    if args.help {
        print!("{}", help());
        return Ok(());
    }
    let ctx = if args.workers > 0 {
        crate::workers::cluster(
            args.threads,
            args.workers,
            args.worker_threads,
            args.pin_threads,
        )?
    } else {
        dagger::Context::builder()
            .threads(args.threads)
            .build()
            .map_err(|e| format!("cannot start {} threads: {e}", args.threads))?
    };
    match &args.metg {
        Some(m) => metg(&ctx, &args, m),
        None => {
            print!("{}", display(&args.graphs, args.verbose));
            let snapshot = |pids: &[(String, u32)]| -> Vec<_> {
                pids.iter()
                    .map(|p| crate::sys::thread_run_ns(p.1))
                    .collect()
            };
            let counters = || -> Vec<_> {
                ctx.workers()
                    .iter()
                    .map(|w| (w.id, ctx.worker_stats(w.id).unwrap_or_default()))
                    .collect()
            };
            let before = args.thread_cpu.then(|| {
                let pids = process_ids(&ctx);
                let threads = snapshot(&pids);
                (pids, threads, counters())
            });
            let stats = run_graphs_placed(&ctx, &args.graphs, args.free_placement)?;
            if let Some((pids, before, counted)) = before {
                let after = snapshot(&pids).into_iter();
                print!("{}", thread_cpu_report(&pids, &before, after));
                print!("{}", worker_counters_report(&counted, &counters()));
            }
            let counts = total_counts(&args.graphs, args.nodes);
            if stats.tasks != counts.tasks || stats.inputs != counts.deps {
                return Err(format!(
                    "internal error: ran {} tasks with {} inputs, the graphs have {} tasks and \
                     {} dependencies",
                    stats.tasks, stats.inputs, counts.tasks, counts.deps
                ));
            }
            print!("{}", report(&args.graphs, args.nodes, stats.elapsed));
            Ok(())
        }
    }
}

/// What each worker counted during the run: calls sent ahead of their inputs, calls given
/// back to be placed again, notes that came through the inbox (shared memory).
fn worker_counters_report(
    before: &[(dagger::WorkerId, dagger::WorkerStats)],
    after: &[(dagger::WorkerId, dagger::WorkerStats)],
) -> String {
    let mut out = String::from("Worker counters during the run:\n");
    for ((id, b), (_, a)) in before.iter().zip(after) {
        out += &format!(
            "    worker {}: sent ahead {}, placed again {}, inbox notes {}\n",
            id.0,
            a.sent_ahead - b.sent_ahead,
            a.placed_again - b.placed_again,
            a.inbox_notes - b.inbox_notes,
        );
    }
    out
}

/// This process (`head`) and its worker processes, by name and process id.
fn process_ids(ctx: &dagger::Context) -> Vec<(String, u32)> {
    let mut pids = vec![("head".to_string(), std::process::id())];
    pids.extend(
        ctx.workers()
            .iter()
            .map(|w| (format!("worker {}", w.id.0), w.pid)),
    );
    pids
}

/// The CPU time each thread of `pids` took between the two snapshots (see
/// [`crate::sys::thread_run_ns`]), in ms, one line per thread that ran.
fn thread_cpu_report(
    pids: &[(String, u32)],
    before: &[Vec<(u32, String, u64)>],
    after: impl Iterator<Item = Vec<(u32, String, u64)>>,
) -> String {
    let mut s = String::from(
        "Thread CPU during the run (ms):
",
    );
    let mut total = 0u64;
    for ((process, _), (before, after)) in pids.iter().zip(before.iter().zip(after)) {
        for (tid, name, ns) in after {
            let was = before.iter().find(|(t, _, _)| *t == tid).map_or(0, |b| b.2);
            let ran = ns.saturating_sub(was);
            if ran > 0 {
                total += ran;
                let _ = writeln!(s, "  {process:>10} {name:<16} {:>10.3}", ran as f64 / 1e6);
            }
        }
    }
    let _ = writeln!(s, "  {:>10} {:<16} {:>10.3}", "all", "", total as f64 / 1e6);
    s
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// The task graphs (one, plus one per `-and`), checked.
    pub graphs: Vec<TaskGraph>,
    /// `-threads`: dagger compute threads (default 2).
    pub threads: usize,
    /// `-nodes`: nodes assumed for the local/nonlocal estimates (0: none).
    pub nodes: i64,
    /// `-v` / `-vv`: verbosity of the configuration display.
    pub verbose: u32,
    /// `-h`: print the help and exit.
    pub help: bool,
    /// `metg`: sweep `-iter` and report METG(50%) instead of one run.
    pub metg: Option<MetgOptions>,
    /// `-workers` / `--workers`: worker processes that run the tasks (0: this process).
    pub workers: usize,
    /// `-worker-threads` / `--worker-threads`: compute threads per worker (default 1).
    pub worker_threads: usize,
    /// `-placement any`: with workers, let the scheduler place each task on any worker
    /// (default `block`: point `p` on worker `1 + p * workers / width`).
    pub free_placement: bool,
    /// `-thread-cpu`: after a run, the CPU time each thread of the head and of its worker
    /// processes took during it (Linux).
    pub thread_cpu: bool,
    /// `-pin-threads`: with workers, pin their compute threads to CPUs of their own (see
    /// [`dagger::ClusterOptions::pin_threads`]).
    pub pin_threads: bool,
}

/// Settings of the `metg` sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetgOptions {
    /// `-runs`: runs per sweep point; the best (shortest) one counts.
    pub runs: usize,
    /// `-metg-start`: the `-iter` of the first (largest) point.
    pub start_iter: i64,
    /// `-metg-stop`: the sweep stops after the first point below this efficiency.
    pub stop_efficiency: f64,
}

impl Default for MetgOptions {
    fn default() -> Self {
        MetgOptions {
            runs: 3,
            start_iter: 1 << 20,
            stop_efficiency: 0.25,
        }
    }
}

/// The value after `flag`, or an error naming it.
fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("flag \"{flag}\" requires an argument"))
}

/// An integer flag value that satisfies `ok` (described by `must`).
fn int(flag: &str, s: &str, ok: impl Fn(i64) -> bool, must: &str) -> Result<i64, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid flag \"{flag} {s}\": expected an integer"))?;
    if ok(v) {
        Ok(v)
    } else {
        Err(format!("invalid flag \"{flag} {v}\" must be {must}"))
    }
}

/// A floating-point flag value in `lo..=hi`.
fn float(flag: &str, s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid flag \"{flag} {s}\": expected a number"))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "invalid flag \"{flag} {v}\" must be >= {lo} and <= {hi}"
        ))
    }
}

/// Applies the reference's defaults to a finished graph (period, fields).
fn finish_graph(mut g: TaskGraph) -> TaskGraph {
    if g.period < 0 {
        g.period = if g.dependence.needs_period() { 3 } else { 0 };
    }
    if g.nb_fields == 0 {
        g.nb_fields = g.timesteps;
    }
    g
}

/// Parses the arguments after `taskbench` (the reference's `App::App`, plus `-threads`,
/// `metg` and the sweep's flags). Every bad flag is an error that names it.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut graphs = Vec::new();
    let mut g = TaskGraph::new(0);
    let mut threads = 2usize;
    let mut workers = 0usize;
    let mut worker_threads = 1usize;
    let mut free_placement = false;
    let mut pin_threads = false;
    let mut thread_cpu = false;
    let mut nodes = 0;
    let mut verbose = 0;
    let mut help = false;
    let mut metg = false;
    let mut m = MetgOptions::default();
    let mut metg_flag = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg.as_str();
        match flag {
            "-h" | "--help" => help = true,
            "metg" => metg = true,
            "-v" => verbose += 1,
            "-vv" => verbose += 2,
            "-skip-graph-validation" => {}
            "-and" => {
                graphs.push(finish_graph(g));
                g = TaskGraph::new(graphs.len() as i64);
            }
            "-threads" | "--threads" => {
                let v = int(
                    flag,
                    value(&mut it, flag)?,
                    |v| (1..=4096).contains(&v),
                    "in 1..=4096",
                )?;
                threads = v as usize;
            }
            "-workers" | "--workers" => {
                let ok = |v| (0..=1024).contains(&v);
                workers = int(flag, value(&mut it, flag)?, ok, "in 0..=1024")? as usize;
            }
            "-worker-threads" | "--worker-threads" => {
                let ok = |v| (1..=4096).contains(&v);
                worker_threads = int(flag, value(&mut it, flag)?, ok, "in 1..=4096")? as usize;
            }
            "-thread-cpu" | "--thread-cpu" => thread_cpu = true,
            "-pin-threads" | "--pin-threads" => pin_threads = true,
            "-placement" | "--placement" => {
                free_placement = match value(&mut it, flag)? {
                    "any" => true,
                    "block" => false,
                    other => {
                        return Err(format!(
                            "invalid flag \"{flag} {other}\": expected block or any"
                        ))
                    }
                }
            }
            "-nodes" => nodes = int(flag, value(&mut it, flag)?, |v| v > 0, "> 0")?,
            "-steps" => g.timesteps = int(flag, value(&mut it, flag)?, |v| v > 0, "> 0")?,
            "-width" => g.max_width = int(flag, value(&mut it, flag)?, |v| v > 0, "> 0")?,
            "-type" => g.dependence = DependenceType::from_name(value(&mut it, flag)?)?,
            "-radix" => g.radix = int(flag, value(&mut it, flag)?, |v| v >= 0, ">= 0")?,
            "-period" => g.period = int(flag, value(&mut it, flag)?, |v| v >= 0, ">= 0")?,
            "-fraction" => g.fraction_connected = float(flag, value(&mut it, flag)?, 0.0, 1.0)?,
            "-kernel" => g.kernel.kind = KernelType::from_name(value(&mut it, flag)?)?,
            "-iter" => g.kernel.iterations = int(flag, value(&mut it, flag)?, |v| v >= 0, ">= 0")?,
            "-output" => {
                let v = int(flag, value(&mut it, flag)?, |v| v >= 16, ">= 16")?;
                g.output_bytes_per_task = v as usize;
            }
            "-scratch" => {
                let v = int(flag, value(&mut it, flag)?, |v| v >= 0, ">= 0")?;
                g.scratch_bytes_per_task = v as usize;
            }
            "-sample" => {
                let ok = |v| (0..=i64::from(i32::MAX)).contains(&v);
                g.kernel.samples = int(flag, value(&mut it, flag)?, ok, ">= 0")? as i32;
            }
            "-imbalance" => g.kernel.imbalance = float(flag, value(&mut it, flag)?, 0.0, 2.0)?,
            "-mem-fraction" => {
                g.kernel.fraction_mem = float(flag, value(&mut it, flag)?, 0.0, 1.0)?;
            }
            "-field" => {
                let ok = |v| (1..=i64::from(i32::MAX)).contains(&v);
                g.nb_fields = int(flag, value(&mut it, flag)?, ok, "> 0")?;
            }
            "-runs" => {
                metg_flag = Some(flag);
                m.runs = int(flag, value(&mut it, flag)?, |v| v > 0, "> 0")? as usize;
            }
            "-metg-start" => {
                metg_flag = Some(flag);
                m.start_iter = int(flag, value(&mut it, flag)?, |v| v > 0, "> 0")?;
            }
            "-metg-stop" => {
                metg_flag = Some(flag);
                m.stop_efficiency = float(flag, value(&mut it, flag)?, 0.0, 0.5)?;
            }
            other => {
                return Err(format!(
                    "unknown flag {other:?} (see `dagger-bench taskbench -h`)"
                ))
            }
        }
    }
    graphs.push(finish_graph(g));
    if let (Some(flag), false) = (metg_flag, metg) {
        return Err(format!("flag \"{flag}\" only applies to `taskbench metg`"));
    }
    if metg && thread_cpu {
        return Err(
            "flag \"-thread-cpu\" does not apply to `taskbench metg`: it reports one run".into(),
        );
    }
    for g in &graphs {
        g.check()?;
    }
    Ok(Args {
        graphs,
        threads,
        nodes,
        verbose,
        help,
        metg: metg.then_some(m),
        workers,
        worker_threads,
        free_placement,
        thread_cpu,
        pin_threads,
    })
}

/// The help text (the reference's `show_help_message`, plus this port's own flags).
pub fn help() -> String {
    let mut s = String::from("dagger-bench taskbench: A Task Benchmark (Task Bench on dagger)\n");
    let sections: [(&str, &[(&str, &str)]); 4] = [
        (
            "\nGeneral options:\n",
            &[
                ("-h", "show this help message and exit"),
                (
                    "-nodes",
                    "number of nodes to use for estimating transfer statistics",
                ),
                ("-v", "enable verbose output"),
                ("-vv", "enable extra verbose output"),
                (
                    "-threads [INT]",
                    "dagger compute threads (default 2; also --threads)",
                ),
                (
                    "-workers [INT]",
                    "run the tasks on this many worker processes (also --workers)",
                ),
                (
                    "-worker-threads [INT]",
                    "compute threads per worker process (default 1)",
                ),
                (
                    "-placement [block|any]",
                    "with workers: point p on worker 1+p*workers/width, or any",
                ),
                (
                    "-pin-threads",
                    "with workers: pin their compute threads to CPUs of their own",
                ),
                (
                    "-thread-cpu",
                    "after the run, the CPU time of each thread of every process (Linux)",
                ),
            ],
        ),
        (
            "\nOptions for configuring the task graph:\n",
            &[
                ("-steps [INT]", "height of task graph"),
                ("-width [INT]", "width of task graph"),
                (
                    "-type [DEP]",
                    "dependency pattern (see available list below)",
                ),
                (
                    "-radix [INT]",
                    "radix of dependency pattern (only for nearest, spread, and random)",
                ),
                (
                    "-period [INT]",
                    "period of dependency pattern (only for spread and random)",
                ),
                (
                    "-fraction [FLOAT]",
                    "fraction of connected dependencies (only for random)",
                ),
                ("-and", "start configuring next task graph"),
            ],
        ),
        (
            "\nOptions for configuring kernels:\n",
            &[
                ("-kernel [KERNEL]", "kernel type (see available list below)"),
                ("-iter [INT]", "number of iterations"),
                ("-output [INT]", "output bytes per task"),
                (
                    "-scratch [INT]",
                    "scratch bytes per task (only for memory-bound kernel)",
                ),
                (
                    "-sample [INT]",
                    "number of samples (only for memory-bound kernel)",
                ),
                ("-imbalance [FLOAT]", "amount of load imbalance"),
                (
                    "-mem-fraction [FLOAT]",
                    "fraction of memory iterations (only for compute_and_mem)",
                ),
            ],
        ),
        (
            "\nMETG sweep (`taskbench metg ...`):\n",
            &[
                ("metg", "sweep -iter and report METG(50%)"),
                ("-runs [INT]", "runs per point, the best counts (default 3)"),
                (
                    "-metg-start [INT]",
                    "largest -iter of the sweep (default 1048576)",
                ),
                (
                    "-metg-stop [FLOAT]",
                    "stop below this efficiency (default 0.25)",
                ),
            ],
        ),
    ];
    for (title, flags) in sections {
        s.push_str(title);
        for (flag, what) in flags {
            let _ = writeln!(s, "  {flag:<18} {what}");
        }
    }
    s.push_str("\nSupported dependency patterns:\n");
    for name in DependenceType::names() {
        let _ = writeln!(s, "  {name}");
    }
    s.push_str("\nSupported kernel types:\n");
    for name in KernelType::names() {
        let _ = writeln!(s, "  {name}");
    }
    s.push_str("\nLess frequently used options:\n");
    let _ = writeln!(
        s,
        "  {:<18} number of fields (optimization for certain task bench implementations)",
        "-field [INT]"
    );
    let _ = writeln!(
        s,
        "  {:<18} skip task graph validation",
        "-skip-graph-validation"
    );
    s
}

/// The configuration listing printed before a run (the reference's `App::display`).
pub fn display(graphs: &[TaskGraph], verbose: u32) -> String {
    let mut s = String::from("Running Task Benchmark\n  Configuration:\n");
    for (i, g) in graphs.iter().enumerate() {
        let _ = writeln!(s, "    Task Graph {}:", i + 1);
        let _ = writeln!(s, "      Time Steps: {}", g.timesteps);
        let _ = writeln!(s, "      Max Width: {}", g.max_width);
        let _ = writeln!(s, "      Dependence Type: {}", g.dependence.name());
        let _ = writeln!(s, "      Radix: {}", g.radix);
        let _ = writeln!(s, "      Period: {}", g.period);
        let _ = writeln!(s, "      Fraction Connected: {:.6}", g.fraction_connected);
        let _ = writeln!(s, "      Kernel:");
        let _ = writeln!(s, "        Type: {}", g.kernel.kind.name());
        let _ = writeln!(s, "        Iterations: {}", g.kernel.iterations);
        let _ = writeln!(s, "        Samples: {}", g.kernel.samples);
        let _ = writeln!(s, "        Imbalance: {:.6}", g.kernel.imbalance);
        let _ = writeln!(s, "      Output Bytes: {}", g.output_bytes_per_task);
        let _ = writeln!(s, "      Scratch Bytes: {}", g.scratch_bytes_per_task);
        if verbose > 0 {
            display_steps(&mut s, g, verbose);
        }
    }
    s
}

/// The per-timestep part of `display` (`-v`, and reverse dependencies with `-vv`).
fn display_steps(s: &mut String, g: &TaskGraph, verbose: u32) {
    for t in 0..g.timesteps {
        let offset = g.offset_at_timestep(t);
        let width = g.width_at_timestep(t);
        let last_offset = g.offset_at_timestep(t - 1);
        let last_width = g.width_at_timestep(t - 1);
        let dset = g.dependence_set_at_timestep(t);
        let _ = writeln!(
            s,
            "      Timestep {t} (offset {offset}, width {width}, last offset {last_offset}, last \
             width {last_width}):"
        );
        s.push_str("        Points:");
        for p in offset..offset + width {
            let _ = write!(s, " {p}");
        }
        s.push_str("\n        Dependencies:\n");
        for p in offset..offset + width {
            let _ = write!(s, "          Point {p}:");
            g.for_each_dependency(dset, p, |a, b| {
                for dp in (a..=b).filter(|dp| (last_offset..last_offset + last_width).contains(dp))
                {
                    let _ = write!(s, " {dp}");
                }
            });
            s.push('\n');
        }
        if verbose > 1 {
            s.push_str("        Reverse Dependencies:\n");
            for p in last_offset..last_offset + last_width {
                let _ = write!(s, "          Point {p}:");
                g.for_each_reverse_dependency(dset, p, |a, b| {
                    for dp in (a..=b).filter(|dp| (offset..offset + width).contains(dp)) {
                        let _ = write!(s, " {dp}");
                    }
                });
                s.push('\n');
            }
        }
    }
}

/// Tasks and dependencies of all graphs.
pub fn total_counts(graphs: &[TaskGraph], nodes: i64) -> Counts {
    graphs.iter().fold(Counts::default(), |acc, g| {
        let c = g.count(nodes);
        Counts {
            tasks: acc.tasks + c.tasks,
            deps: acc.deps + c.deps,
            local_deps: acc.local_deps + c.local_deps,
            nonlocal_deps: acc.nonlocal_deps + c.nonlocal_deps,
        }
    })
}

/// Total FLOPs of all graphs (`count_flops`).
pub fn total_flops(graphs: &[TaskGraph]) -> i64 {
    let mut flops = 0;
    for g in graphs {
        for t in 0..g.timesteps {
            let offset = g.offset_at_timestep(t);
            for p in offset..offset + g.width_at_timestep(t) {
                flops += flops_per_task(&g.kernel, g.graph_index, t, p);
            }
        }
    }
    flops
}

/// Total bytes of all graphs (`count_bytes`).
pub fn total_bytes(graphs: &[TaskGraph]) -> i64 {
    graphs
        .iter()
        .map(|g| {
            let tasks: i64 = (0..g.timesteps).map(|t| g.width_at_timestep(t)).sum();
            tasks * bytes_per_task(&g.kernel, g.scratch_bytes_per_task as u64)
        })
        .sum()
}

/// A number the way C's `printf("%e")` writes it (`1.234560e-03`).
pub fn c_exp(x: f64) -> String {
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan" } else { "nan" }.to_string();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.to_string();
    }
    let s = format!("{x:.6e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => match exp.parse::<i32>() {
            Ok(e) => format!(
                "{mantissa}e{}{:02}",
                if e < 0 { '-' } else { '+' },
                e.unsigned_abs()
            ),
            Err(_) => s,
        },
        None => s,
    }
}

/// The report printed after a run (the reference's `App::report_timing`).
pub fn report(graphs: &[TaskGraph], nodes: i64, elapsed_seconds: f64) -> String {
    let c = total_counts(graphs, nodes);
    let flops = total_flops(graphs);
    let bytes = total_bytes(graphs);
    let (mut local, mut nonlocal) = (0i64, 0i64);
    for g in graphs {
        let gc = g.count(nodes);
        local += gc.local_deps * g.output_bytes_per_task as i64;
        nonlocal += gc.nonlocal_deps * g.output_bytes_per_task as i64;
    }
    let mut s = String::new();
    let _ = writeln!(s, "Total Tasks {}", c.tasks);
    let _ = writeln!(s, "Total Dependencies {}", c.deps);
    if nodes > 0 {
        let _ = writeln!(s, "  Local Dependencies {} (estimated)", c.local_deps);
        let _ = writeln!(s, "  Nonlocal Dependencies {} (estimated)", c.nonlocal_deps);
        let _ = writeln!(s, "  Number of Nodes (used for estimate) {nodes}");
    } else {
        s.push_str("  Unable to estimate local/nonlocal dependencies\n");
    }
    let _ = writeln!(s, "Total FLOPs {flops}");
    let _ = writeln!(s, "Total Bytes {bytes}");
    let _ = writeln!(s, "Elapsed Time {} seconds", c_exp(elapsed_seconds));
    let _ = writeln!(s, "FLOP/s {}", c_exp(flops as f64 / elapsed_seconds));
    let _ = writeln!(s, "B/s {}", c_exp(bytes as f64 / elapsed_seconds));
    s.push_str("Transfer (estimated):\n");
    if nodes > 0 {
        let _ = writeln!(s, "  Local Bytes {local}");
        let _ = writeln!(s, "  Nonlocal Bytes {nonlocal}");
        let _ = writeln!(
            s,
            "  Local Bandwidth {} B/s",
            c_exp(local as f64 / elapsed_seconds)
        );
        let _ = writeln!(
            s,
            "  Nonlocal Bandwidth {} B/s",
            c_exp(nonlocal as f64 / elapsed_seconds)
        );
    } else {
        s.push_str("  Unable to estimate local/nonlocal transfer\n");
    }
    s
}

/// One point of a METG sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetgPoint {
    /// The `-iter` of every graph.
    pub iter: i64,
    /// The best elapsed time of the runs, in seconds.
    pub seconds: f64,
    /// Task granularity: `seconds * threads / tasks`, in microseconds.
    pub granularity_us: f64,
    /// FLOP/s (or B/s for kernels without FLOPs) at `seconds`.
    pub rate: f64,
    /// `rate` relative to the highest rate of the sweep (of the points so far, while it
    /// runs): the peak achieved, as Task Bench defines efficiency.
    pub efficiency: f64,
}

/// The highest rate among `points` and `rate`.
pub fn peak_rate(points: &[MetgPoint], rate: f64) -> f64 {
    points.iter().map(|p| p.rate).fold(rate, f64::max)
}

/// Makes the efficiency of every point of a finished sweep relative to its highest rate (a
/// later, smaller point may beat the first), and returns the point with that rate.
pub fn relative_to_peak(points: &mut [MetgPoint]) -> MetgPoint {
    let peak = *points
        .iter()
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .expect("a sweep has points");
    for p in points.iter_mut() {
        p.efficiency = p.rate / peak.rate;
    }
    MetgPoint {
        efficiency: 1.0,
        ..peak
    }
}

/// METG(`target`): the smallest granularity among the points whose efficiency is at least
/// `target`, and that point.
pub fn metg_of(points: &[MetgPoint], target: f64) -> Option<MetgPoint> {
    points
        .iter()
        .filter(|p| p.efficiency >= target)
        .min_by(|a, b| a.granularity_us.total_cmp(&b.granularity_us))
        .copied()
}

/// METG(`target`) interpolated between the last point at or above `target` and the next
/// one below it (linear in efficiency, logarithmic in granularity), following the points in
/// sweep order. `None` when the sweep never drops below `target`.
pub fn metg_interpolated(points: &[MetgPoint], target: f64) -> Option<f64> {
    points.windows(2).find_map(|w| {
        let (a, b) = (w[0], w[1]);
        if a.efficiency >= target && b.efficiency < target {
            let f = (a.efficiency - target) / (a.efficiency - b.efficiency);
            let (la, lb) = (a.granularity_us.ln(), b.granularity_us.ln());
            Some((la + f * (lb - la)).exp())
        } else {
            None
        }
    })
}

/// The `metg` mode: sweeps `-iter`, prints one line per point and a final JSON line.
fn metg(ctx: &dagger::Context, args: &Args, m: &MetgOptions) -> Result<(), String> {
    let mut graphs = args.graphs.clone();
    let set_iter = |graphs: &mut [TaskGraph], iter: i64| {
        for g in graphs.iter_mut() {
            g.kernel.iterations = iter;
        }
    };
    set_iter(&mut graphs, m.start_iter);
    let use_flops = total_flops(&graphs) > 0;
    if !use_flops && total_bytes(&graphs) == 0 {
        return Err(
            "metg needs a kernel that does work: -kernel compute_bound, compute_bound2, \
                    load_imbalance, memory_bound or compute_and_mem"
                .into(),
        );
    }
    let unit = if use_flops { "FLOP/s" } else { "B/s" };
    let tasks = total_counts(&graphs, 0).tasks;
    // Across processes the tasks run on the workers' threads only.
    let workers = ctx.workers();
    let threads = if workers.is_empty() {
        ctx.num_threads()
    } else {
        workers.iter().map(|w| w.threads as usize).sum()
    };
    let types: Vec<&str> = graphs.iter().map(|g| g.dependence.name()).collect();
    println!(
        "# taskbench metg: type {} width {} steps {} kernel {} threads {threads} (worker \
         processes: {}); {tasks} tasks per run; best of {} runs per point",
        types.join("+"),
        graphs[0].max_width,
        graphs[0].timesteps,
        graphs[0].kernel.kind.name(),
        workers.len(),
        m.runs
    );
    // Warm-up: start the threads and fill the allocator's caches.
    let mut warm = graphs.clone();
    set_iter(&mut warm, m.start_iter.min(1024));
    run_graphs_placed(ctx, &warm, args.free_placement)?;

    let mut points: Vec<MetgPoint> = Vec::new();
    let mut iter = m.start_iter;
    loop {
        set_iter(&mut graphs, iter);
        let work = if use_flops {
            total_flops(&graphs)
        } else {
            total_bytes(&graphs)
        } as f64;
        let mut runs = Vec::with_capacity(m.runs);
        for _ in 0..m.runs {
            runs.push(run_graphs_placed(ctx, &graphs, args.free_placement)?.elapsed);
        }
        let seconds = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let rate = work / seconds;
        let peak = peak_rate(&points, rate);
        let p = MetgPoint {
            iter,
            seconds,
            granularity_us: seconds * threads as f64 / tasks as f64 * 1e6,
            rate,
            efficiency: rate / peak,
        };
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "iter {:>8}  elapsed {} s (median {})  granularity {:>10.3} us  {unit} {}  \
             efficiency {:6.1}%",
            p.iter,
            c_exp(p.seconds),
            c_exp(sorted[sorted.len() / 2]),
            p.granularity_us,
            c_exp(p.rate),
            p.efficiency * 100.0
        );
        points.push(p);
        if p.efficiency < m.stop_efficiency || iter == 0 {
            break;
        }
        iter /= 2;
    }
    let peak = relative_to_peak(&mut points);
    let metg = metg_of(&points, 0.5).unwrap_or(peak);
    let mut line = Line::new("taskbench-metg", "dagger")
        .str("type", &types.join("+"))
        .int("width", graphs[0].max_width as u64)
        .int("steps", graphs[0].timesteps as u64)
        .str("kernel", graphs[0].kernel.kind.name())
        .int("threads", threads as u64)
        .int("workers", workers.len() as u64)
        .str(
            "placement",
            match (workers.is_empty(), args.free_placement) {
                (true, _) => "local",
                (false, false) => "block",
                (false, true) => "any",
            },
        )
        .bool("pin_threads", !workers.is_empty() && args.pin_threads)
        .int("tasks", tasks as u64)
        .num("seconds", metg.seconds)
        .num("us_per_task", metg.seconds * 1e6 / tasks as f64);
    line = metg_fields(line, &points).num("metg_efficiency", metg.efficiency);
    line = if use_flops {
        line.num("peak_flops", peak.rate)
    } else {
        line.num("peak_bytes_per_s", peak.rate)
    };
    sweep_fields(line.num("peak_us", peak.granularity_us), &points, m.runs).print();
    Ok(())
}

/// The METG(50 %) fields of a sweep's JSON line: at the best point and interpolated.
pub(crate) fn metg_fields(line: Line, points: &[MetgPoint]) -> Line {
    let metg = metg_of(points, 0.5).unwrap_or(points[0]);
    line.num("metg_us", metg.granularity_us)
        .num(
            "metg_interp_us",
            metg_interpolated(points, 0.5).unwrap_or(f64::NAN),
        )
        .int("metg_iter", metg.iter as u64)
}

/// The fields of a sweep's JSON line that list its points (the best of `runs` runs each).
pub(crate) fn sweep_fields(line: Line, points: &[MetgPoint], runs: usize) -> Line {
    line.int("runs_per_point", runs as u64)
        .str("statistic", "best")
        .nums(
            "sweep_us",
            &points.iter().map(|p| p.granularity_us).collect::<Vec<_>>(),
        )
        .nums(
            "sweep_efficiency",
            &points.iter().map(|p| p.efficiency).collect::<Vec<_>>(),
        )
}

#[cfg(test)]
mod tests {
    use super::exec::{execute_point, point_task, Output, STAMP_BYTES};
    use super::kernel::{murmur3_x64_128, random_uniform, Kernel};
    use super::*;
    use dagger::prelude::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn graphs(s: &str) -> Vec<TaskGraph> {
        match parse(&argv(s)) {
            Ok(a) => a.graphs,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn parse_err(s: &str) -> String {
        match parse(&argv(s)) {
            Ok(a) => panic!("{s}: expected an error, got {a:?}"),
            Err(e) => e,
        }
    }

    fn ctx() -> Context {
        Context::builder().threads(2).build().expect("context")
    }

    /// Totals derived by hand from the reference's `dependencies()`, `offset_at_timestep()`
    /// and `width_at_timestep()` (see the comments for the arithmetic).
    const COUNTS: &[(&str, i64, i64)] = &[
        ("-type trivial -width 4 -steps 4", 16, 0),
        ("-type no_comm -width 4 -steps 4", 16, 12),
        // per step: 2 + 3 + 3 + 2
        ("-type stencil_1d -width 4 -steps 4", 16, 30),
        // (steps - 1) * (3 * width - 2)
        ("-type stencil_1d -width 2 -steps 1000", 2000, 999 * 4),
        // 3 per point, wrapping
        ("-type stencil_1d_periodic -width 4 -steps 4", 16, 36),
        // rows (offset, width): (0,1) (1,2) (2,2) (3,1); deps 1 + 3 + 2
        ("-type dom -width 4 -steps 4", 6, 6),
        // rows: (0,1) (0,2) (0,3) (1,2) (2,1); deps 2 + 4 + 4 + 2
        ("-type dom -width 3 -steps 5", 9, 12),
        // widths 1 2 4 4; one parent each after row 0
        ("-type tree -width 4 -steps 4", 11, 10),
        ("-type tree -width 6 -steps 4", 13, 12),
        // 2 sets; rows 1..3 use sets 0 1 0 (strides 1 2 1): 10 + 8 + 10
        ("-type fft -width 4 -steps 4", 16, 28),
        // 3 sets; rows 1..3 use sets 0 1 2 (strides 1 2 4): 13 + 11 + 7
        ("-type fft -width 5 -steps 4", 20, 31),
        ("-type all_to_all -width 4 -steps 4", 16, 48),
        // radix 3: [p-1, p+1]; radix 4: [p-2, p+1] -> 2 3 4 4 3
        ("-type nearest -width 5 -steps 3 -radix 3", 15, 26),
        ("-type nearest -width 5 -steps 3 -radix 4", 15, 32),
        ("-type nearest -width 5 -steps 3 -radix 0", 15, 0),
        // radix distinct points per task
        ("-type spread -width 6 -steps 3 -radix 3 -period 2", 18, 36),
        // fraction 1 keeps every candidate: [p-3, p+3] -> 4 5 6 7 7 7 7 6 5 4
        (
            "-type random_nearest -width 10 -steps 4 -radix 7 -period 2 -fraction 1",
            40,
            174,
        ),
        // these three were cross-checked against MurmurHash3 from Python's mmh3
        ("-type random_nearest -width 8 -steps 6", 48, 57),
        (
            "-type random_nearest -width 16 -steps 10 -radix 5 -fraction 0.5",
            160,
            393,
        ),
        (
            "-type trivial -and -type random_nearest -width 16 -steps 10 -radix 5 -fraction 0.5",
            176,
            372,
        ),
    ];

    #[test]
    fn dependency_counts_match_reference() {
        for &(flags, tasks, deps) in COUNTS {
            let c = total_counts(&graphs(flags), 0);
            assert_eq!((c.tasks, c.deps), (tasks, deps), "{flags}");
        }
    }

    #[test]
    fn known_dependency_lists() {
        let g = graphs("-type fft -width 8")[0];
        assert_eq!(g.max_dependence_sets(), 3);
        assert_eq!(g.dependence_set_at_timestep(1), 0);
        assert_eq!(g.dependence_set_at_timestep(3), 2);
        assert_eq!(g.dependencies(2, 5), vec![(1, 1), (5, 5)]);
        assert_eq!(g.reverse_dependencies(1, 2), vec![(0, 0), (2, 2), (4, 4)]);
        let g = graphs("-type spread -width 6 -radix 3 -period 2")[0];
        assert_eq!(g.dependencies(1, 4), vec![(4, 4), (1, 1), (3, 3)]);
        assert_eq!(g.reverse_dependencies(1, 4), vec![(4, 4), (1, 1), (5, 5)]);
        let g = graphs("-type tree -width 5")[0];
        assert_eq!(g.reverse_dependencies(0, 2), vec![(4, 4)]);
        assert_eq!(g.reverse_dependencies(0, 3), Vec::<(i64, i64)>::new());
        let g = graphs("-type stencil_1d_periodic -width 5")[0];
        assert_eq!(g.dependencies(0, 0), vec![(0, 1), (4, 4)]);
        assert_eq!(g.dependencies(0, 4), vec![(3, 4), (0, 0)]);
        // random_nearest, seeds checked against mmh3
        let g = graphs("-type random_nearest -width 16 -radix 5 -fraction 0.5")[0];
        assert_eq!(g.dependencies(1, 7), vec![(5, 7), (9, 9)]);
        assert_eq!(g.dependencies(2, 0), vec![(0, 0)]);
        let g = graphs("-type dom -width 4 -steps 4")[0];
        let rows: Vec<_> = (0..4)
            .map(|t| (g.offset_at_timestep(t), g.width_at_timestep(t)))
            .collect();
        assert_eq!(rows, vec![(0, 1), (1, 2), (2, 2), (3, 1)]);
    }

    #[test]
    fn dependencies_stay_inside_previous_row() {
        for ty in DependenceType::ALL {
            for width in 3..=9 {
                for radix in [1, 3, 4] {
                    let mut flags = format!("-type {} -width {width} -steps 9", ty.name());
                    if matches!(ty, DependenceType::Nearest | DependenceType::RandomNearest) {
                        flags += &format!(" -radix {radix}");
                    }
                    if ty == DependenceType::Spread {
                        if radix > width {
                            continue; // duplicate dependencies: the reference rejects it
                        }
                        flags += &format!(" -radix {radix} -period 1");
                    }
                    let g = graphs(&flags)[0];
                    for t in 0..g.timesteps {
                        let dset = g.dependence_set_at_timestep(t);
                        let lo = g.offset_at_timestep(t - 1);
                        let hi = lo + g.width_at_timestep(t - 1);
                        let off = g.offset_at_timestep(t);
                        let mut n = 0;
                        for p in off..off + g.width_at_timestep(t) {
                            g.for_each_dependency(dset, p, |a, b| {
                                assert!(0 <= a && a <= b && b < g.max_width, "{flags}: {a}..{b}");
                            });
                            g.for_each_input(t, p, |d| {
                                assert!((lo..hi).contains(&d), "{flags} t {t} p {p}: dep {d}");
                                n += 1;
                            });
                        }
                        if t == 0 {
                            assert_eq!(n, 0, "{flags}: the first row has no inputs");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn murmur3_and_random_uniform_match_reference_vectors() {
        // expected values from Python's mmh3.hash64 (MurmurHash3_x64_128), seed 1234567
        assert_eq!(murmur3_x64_128(b"", 0), [0, 0]);
        assert_eq!(
            murmur3_x64_128(b"The quick brown fox jumps", 1_234_567),
            [9272068985222561313, 964383972535556863]
        );
        let bytes: Vec<u8> = [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            murmur3_x64_128(&bytes, 1_234_567),
            [11737384158791732425, 278026012742540628]
        );
        let u = random_uniform(&[0, 3, 0, 0, 0]);
        assert_eq!(u, 16314067255797568395u64 as f64 * (-64f64).exp2());
        assert!((u - 0.8843873580405177).abs() < 1e-15);
        assert!((random_uniform(&[1, 5, 2, 7, 6]) - 0.6942291220913548).abs() < 1e-15);
        let k = Kernel {
            kind: KernelType::LoadImbalance,
            iterations: 1000,
            imbalance: 1.5,
            ..Kernel::default()
        };
        assert_eq!(k.imbalance_iterations(0, 3, 5), 309);
    }

    #[test]
    fn parser_defaults_and_flags() {
        let a = parse(&[]).expect("no flags");
        assert_eq!(
            a.graphs,
            vec![TaskGraph {
                period: 0,
                nb_fields: 4,
                ..TaskGraph::new(0)
            }]
        );
        assert_eq!((a.threads, a.nodes, a.metg), (2, 0, None));
        let a = parse(&argv(
            "-steps 7 -width 6 -type spread -radix 2 -kernel compute_bound -iter 9 -output 40 \
             --threads 3 -nodes 2 -v -and -type random_nearest -and -kernel memory_bound \
             -scratch 64 -sample 4 metg -runs 2 -metg-start 64",
        ))
        .expect("valid flags");
        assert_eq!(a.graphs.len(), 3);
        let g = a.graphs[0];
        assert_eq!((g.timesteps, g.max_width, g.radix, g.period), (7, 6, 2, 3));
        assert_eq!(
            (g.kernel.kind, g.kernel.iterations),
            (KernelType::ComputeBound, 9)
        );
        assert_eq!((g.output_bytes_per_task, g.nb_fields), (40, 7));
        assert_eq!((a.graphs[1].graph_index, a.graphs[1].period), (1, 3));
        assert_eq!(a.graphs[2].kernel.samples, 4);
        assert_eq!((a.threads, a.nodes, a.verbose), (3, 2, 1));
        let m = a.metg.expect("metg");
        assert_eq!((m.runs, m.start_iter), (2, 64));
        assert!(parse(&argv("-h")).expect("help").help);
        assert!(help().contains("stencil_1d_periodic"));
    }

    #[test]
    fn parser_errors_name_the_flag() {
        let cases: &[(&str, &str)] = &[
            ("-bogus 3", "-bogus"),
            ("-steps", "-steps"),
            ("-steps x", "-steps"),
            ("-steps 0", "-steps"),
            ("-width -1", "-width"),
            ("-iter -5", "-iter"),
            ("-iter 1.5", "-iter"),
            ("-type bogus", "-type"),
            ("-type random_spread", "-type"),
            ("-kernel bogus", "-kernel"),
            ("-kernel compute_dgemm", "-kernel"),
            ("-output 8", "-output"),
            ("-fraction 2", "-fraction"),
            ("-fraction nan", "-fraction"),
            ("-imbalance 3", "-imbalance"),
            ("-threads 0", "-threads"),
            ("-runs 3", "-runs"),
            ("metg -runs 0", "-runs"),
            ("-type stencil_1d -period 2", "-period"),
            ("-type spread -period 0", "-period"),
            ("-type spread -width 4 -radix 2 -period 3", "-period"),
            ("-type spread -radix 0", "-radix"),
            ("-type fft -width 1", "-width"),
            ("-kernel memory_bound", "-scratch"),
            ("-kernel memory_bound -scratch 64 -sample 0", "-sample"),
            ("-scratch 12", "-scratch"),
            ("-type stencil_1d_periodic -width 2", "-width"),
        ];
        for (flags, flag) in cases {
            let e = parse_err(flags);
            assert!(
                e.contains(flag),
                "{flags}: error {e:?} does not name {flag}"
            );
        }
    }

    #[test]
    fn report_matches_reference_format() {
        assert_eq!(c_exp(0.0), "0.000000e+00");
        assert_eq!(c_exp(1234.5), "1.234500e+03");
        assert_eq!(c_exp(2.16206e-4), "2.162060e-04");
        assert_eq!(c_exp(-1e-100), "-1.000000e-100");
        assert_eq!(c_exp(f64::INFINITY), "inf");
        let g = graphs("-type stencil_1d -width 4 -steps 4 -kernel compute_bound -iter 10");
        // 16 tasks * (2 * 64 * 10 + 64) FLOPs
        let r = report(&g, 0, 2.0);
        assert!(r.starts_with(
            "Total Tasks 16\nTotal Dependencies 30\n  Unable to estimate local/nonlocal \
             dependencies\nTotal FLOPs 21504\nTotal Bytes 0\nElapsed Time 2.000000e+00 \
             seconds\nFLOP/s 1.075200e+04\nB/s 0.000000e+00\n"
        ));
        // two nodes hold points {0, 1} and {2, 3}: per step 8 local and 2 nonlocal deps
        let r = report(&g, 2, 1.0);
        assert!(r.contains("  Local Dependencies 24 (estimated)\n"), "{r}");
        assert!(r.contains("  Nonlocal Dependencies 6 (estimated)\n"), "{r}");
        assert!(
            r.contains("  Local Bytes 384\n  Nonlocal Bytes 96\n"),
            "{r}"
        );
        let m = graphs("-kernel memory_bound -scratch 1024 -iter 8 -width 1 -steps 1");
        assert_eq!(total_bytes(&m), 1024 * 8 / 16);
        let cm = graphs("-kernel compute_and_mem -scratch 64 -iter 100 -mem-fraction 0.25");
        assert_eq!(total_flops(&cm), 16 * (2 * 64 * 75 + 64));
        let d = display(&graphs("-type tree -width 2 -steps 2"), 2);
        assert!(d.contains("      Dependence Type: tree\n"), "{d}");
        assert!(d.contains("          Point 1: 0\n"), "{d}");
    }

    #[test]
    fn every_type_runs_end_to_end() {
        let ctx = ctx();
        let mut flags: Vec<String> = DependenceType::ALL
            .iter()
            .map(|t| {
                let period = if *t == DependenceType::Spread {
                    " -period 2"
                } else {
                    ""
                };
                format!(
                    "-type {} -width 6 -steps 7 -kernel compute_bound -iter 8{period}",
                    t.name()
                )
            })
            .collect();
        flags.extend(
            [
                "-type stencil_1d -kernel busy_wait -iter 50 -output 40",
                "-type nearest -radix 5 -width 7 -kernel memory_bound -scratch 4096 -iter 20",
                "-type dom -width 5 -steps 9 -kernel load_imbalance -iter 30 -imbalance 1",
                "-type fft -kernel compute_and_mem -scratch 512 -sample 4 -iter 9 \
                 -mem-fraction 0.5 -and -type tree -width 9 -steps 6 -kernel compute_bound2",
                "-type spread -width 12 -radix 4 -period 3 -kernel empty",
            ]
            .map(str::to_string),
        );
        for f in &flags {
            let g = graphs(f);
            let stats = run_graphs(&ctx, &g).unwrap_or_else(|e| panic!("{f}: {e}"));
            let c = total_counts(&g, 0);
            assert_eq!((stats.tasks, stats.inputs), (c.tasks, c.deps), "{f}");
        }
    }

    #[test]
    fn outputs_travel_as_byte_strings() {
        let out = Output::new(40, 3, 7);
        let bytes = postcard::to_allocvec(&out).unwrap();
        let stamp = [3i64.to_ne_bytes(), 7i64.to_ne_bytes()].concat();
        let raw: Vec<u8> = [stamp.clone(), stamp, vec![0; 8]].concat();
        // The same bytes as a sequence of `u8` would give: a length, then the bytes.
        assert_eq!(bytes, postcard::to_allocvec(&raw).unwrap());
        assert_eq!(postcard::from_bytes::<Output>(&bytes).unwrap(), out);
        assert!(postcard::from_bytes::<Output>(&bytes[..10]).is_err());
    }

    #[test]
    fn stamp_checks_fail_loudly() {
        let g = graphs("-type stencil_1d -width 3 -steps 3")[0];
        let a = Output::new(16, 0, 0);
        let b = Output::new(16, 0, 1);
        assert!(execute_point(&g, 1, 0, &[&a, &b]).is_ok());
        let out = execute_point(&g, 1, 0, &[&a, &b]).expect("ok");
        assert_eq!(out.stamps().collect::<Vec<_>>(), vec![(1, 0)]);
        assert_eq!(out.len(), STAMP_BYTES);
        let e = execute_point(&g, 1, 0, &[&a, &a]).expect_err("wrong point");
        assert!(
            e.contains("graph 0 timestep 1 point 0") && e.contains("input 1"),
            "{e}"
        );
        assert!(
            e.contains("expected (timestep 0 point 1) but got (timestep 0 point 0)"),
            "{e}"
        );
        let stale = Output::new(16, 1, 1);
        let e = execute_point(&g, 2, 0, &[&Output::new(16, 1, 0), &stale]).expect("ok");
        assert_eq!(e.stamps().next(), Some((2, 0)));
        let e = execute_point(&g, 2, 0, &[&Output::new(16, 0, 0), &stale]).expect_err("stale");
        assert!(e.contains("input 0"), "{e}");
        let e = execute_point(&g, 1, 1, &[&a, &b]).expect_err("missing");
        assert!(e.contains("missing input 2"), "{e}");
        let e = execute_point(&g, 1, 0, &[&a, &b, &b]).expect_err("extra");
        assert!(e.contains("got 3 inputs, expected 2"), "{e}");
        let e = execute_point(&g, 1, 0, &[&a, &Output::new(32, 0, 1)]).expect_err("size");
        assert!(e.contains("input 1 has 32 bytes"), "{e}");
        // a corrupted stamp past the first one is caught too
        let mut long = Output::new(48, 0, 1);
        long.bytes_mut()[40] = 9;
        let g48 = graphs("-type stencil_1d -width 3 -output 48")[0];
        let e = execute_point(&g48, 1, 0, &[&Output::new(48, 0, 0), &long]).expect_err("pos");
        assert!(e.contains("at position 2"), "{e}");
    }

    #[test]
    fn corrupted_input_fails_the_dagger_task() {
        let ctx = ctx();
        let g = graphs("-type no_comm -width 2 -steps 2")[0];
        ctx.enter(|| {
            let bad = dagger::spawn(|| Output::new(16, 0, 1));
            let inputs = vec![bad];
            let t = spawn!(point_task(g, 1, 0, &inputs)?);
            let e = t.fetch().expect_err("corrupted input");
            let msg = e.to_string();
            assert!(msg.contains("graph 0 timestep 1 point 0"), "{msg}");
        });
    }

    #[test]
    fn thread_cpu_is_a_flag_of_single_runs() {
        assert!(parse(&argv("-thread-cpu -steps 2")).unwrap().thread_cpu);
        assert!(!parse(&argv("-steps 2")).unwrap().thread_cpu);
        let e = parse_err("metg -thread-cpu");
        assert!(e.contains("-thread-cpu") && e.contains("metg"), "{e}");
    }

    #[test]
    fn thread_cpu_report_counts_what_each_thread_ran_between_snapshots() {
        let pids = [("head".to_string(), 1), ("worker 1".to_string(), 2)];
        let before = vec![
            vec![(10, "dagger-io".to_string(), 5_000_000)],
            vec![(20, "dagger-w1-0".to_string(), 1_000_000)],
        ];
        let after = vec![
            vec![
                (10, "dagger-io".to_string(), 7_500_000),
                (11, "idle".to_string(), 0),
            ],
            // A thread started during the run counts from zero.
            vec![
                (20, "dagger-w1-0".to_string(), 4_000_000),
                (21, "dagger-w1-io".to_string(), 250_000),
            ],
        ];
        let r = thread_cpu_report(&pids, &before, after.into_iter());
        let rows: Vec<String> = r
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            rows,
            [
                "head dagger-io 2.500",
                "worker 1 dagger-w1-0 3.000",
                "worker 1 dagger-w1-io 0.250",
                "all 5.750"
            ],
            "{r}"
        );
    }

    #[test]
    fn metg_picks_smallest_granularity_above_target() {
        let p = |g: f64, e: f64| MetgPoint {
            iter: 0,
            seconds: 0.0,
            granularity_us: g,
            rate: 0.0,
            efficiency: e,
        };
        let pts = [
            p(100.0, 1.0),
            p(50.0, 0.9),
            p(25.0, 0.45),
            p(12.0, 0.55),
            p(6.0, 0.2),
        ];
        assert_eq!(metg_of(&pts, 0.5).map(|p| p.granularity_us), Some(12.0));
        assert_eq!(metg_of(&pts, 0.95).map(|p| p.granularity_us), Some(100.0));
        // between 50 us (90%) and 25 us (45%): 8/9 of the way down in log scale
        let g = metg_interpolated(&pts, 0.5).expect("crossing");
        assert!((g - 50.0 * 0.5f64.powf(40.0 / 45.0)).abs() < 1e-9, "{g}");
        assert_eq!(metg_interpolated(&pts[..2], 0.5), None);
    }

    #[test]
    fn efficiency_is_relative_to_the_highest_rate_of_the_sweep() {
        let p = |g: f64, rate: f64| MetgPoint {
            iter: 0,
            seconds: 0.0,
            granularity_us: g,
            rate,
            efficiency: 0.0,
        };
        let mut pts = [p(100.0, 8.0), p(50.0, 10.0), p(25.0, 6.0), p(12.0, 4.0)];
        assert_eq!(peak_rate(&pts[..1], 10.0), 10.0);
        assert_eq!(peak_rate(&pts, 1.0), 10.0);
        let peak = relative_to_peak(&mut pts);
        assert_eq!((peak.granularity_us, peak.efficiency), (50.0, 1.0));
        let e: Vec<f64> = pts.iter().map(|p| p.efficiency).collect();
        assert_eq!(e, [0.8, 1.0, 0.6, 0.4]);
        // Relative to the first point, 25 us would have counted as 75 % efficient.
        assert_eq!(metg_of(&pts, 0.5).map(|p| p.granularity_us), Some(25.0));
        assert_eq!(metg_of(&pts, 0.7).map(|p| p.granularity_us), Some(50.0));
    }
}
