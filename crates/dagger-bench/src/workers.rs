//! Scenarios across processes (`--workers N`): this process is the head of a cluster of N
//! local worker processes started from this same binary (see `main`, which calls
//! `dagger::init()` first so that a worker never reaches the bench code). Every task calls a
//! registered function (`#[dagger::task]`) and is forced onto the workers by its scope, so
//! each one is sent to another process, runs there, and its result stays there.
//!
//! * `independent`: N trivial tasks spawned from `main`, then waited for (results stay on
//!   the workers; three of them are fetched afterwards to check them);
//! * `chain`: each task takes the previous one's result (one head ↔ worker round trip per
//!   hop: the head learns that task k ended and sends task k+1);
//! * `tree`: binary reduction of the leaves' results, all on workers;
//! * `transfer`: 1 GiB as chunks of 1..64 MiB made on worker 1 and read by tasks on worker 2
//!   (worker 2 fetches each chunk from worker 1 directly), against raw TCP loopback moving
//!   the same chunks between two threads of this process in the same run; once with chunks
//!   owning a `Vec<u8>` (system `dagger`: decoding copies the received bytes), once with
//!   `dagger::SharedBytes` chunks (system `dagger-shared-bytes`: decoded as a view of the
//!   received bytes). The raw TCP writer sends `count` distinct buffers it holds, as worker 1
//!   sends the distinct chunks it holds (`tcp-loopback`, the baseline of `ratio_to_tcp`);
//!   the older baseline, one cache-hot buffer written `count` times, is measured beside it
//!   (`tcp-loopback-hot`, `ratio_to_tcp_hot`). Both read into one reused buffer.
//!
//! Task Bench across processes is `taskbench ... --workers N` (see `taskbench.rs`).

use crate::json::Line;
use crate::scenarios::{interleaved, measure, median};
use crate::Config;
use dagger::prelude::*;
use dagger::LaunchSpec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A cluster context: `threads` compute threads here, `workers` local worker processes with
/// `worker_threads` each; with `pin_threads`, their threads pinned (see
/// [`dagger::ClusterOptions::pin_threads`]; `DAGGER_PIN_THREADS=1` also asks for it).
pub fn cluster(
    threads: usize,
    workers: usize,
    worker_threads: usize,
    pin_threads: bool,
) -> Result<Context, String> {
    let mut opts = dagger::ClusterOptions::new().launch(LaunchSpec::Local {
        workers,
        threads: worker_threads,
    });
    if pin_threads {
        opts = opts.pin_threads(true);
    }
    let ctx = Context::builder()
        .threads(threads)
        .cluster(opts)
        .build()
        .map_err(|e| format!("cannot start {workers} worker processes: {e}"))?;
    let up = ctx.workers().len();
    if up != workers {
        return Err(format!("{up} of {workers} worker processes joined"));
    }
    connect_workers(&ctx, workers)?;
    Ok(ctx)
}

/// Has every worker fetch a value from every worker with a lower id, one pair at a time, so
/// that the connections between workers exist before the timed runs. (Without this, runs
/// where two workers first fetch from each other at the same moment sometimes never finish:
/// see docs/benchmarks.md, "Worker processes".)
fn connect_workers(ctx: &Context, workers: usize) -> Result<(), String> {
    ctx.enter(|| {
        for a in 1..=workers as u32 {
            for b in a + 1..=workers as u32 {
                let x = spawn!(ident(u64::from(a)); scope = Scope::worker(a));
                let y = spawn!(radd(x, 0); scope = Scope::worker(b));
                if y.fetch().map_err(|e| e.to_string())? != u64::from(a) {
                    return Err(format!("worker {b} read a wrong value from worker {a}"));
                }
            }
        }
        Ok(())
    })
}

/// Any worker process (not the head).
pub fn on_workers(workers: usize) -> Result<Scope, String> {
    Scope::spec()
        .workers(1..=workers as u32)
        .build()
        .map_err(|e| e.to_string())
}

fn ctx_of(cfg: &Config) -> Result<Context, String> {
    cluster(cfg.threads, cfg.workers, cfg.worker_threads, false)
}

pub fn run(name: &str, cfg: &Config) -> Result<(), String> {
    match name {
        "independent" => independent(cfg),
        "chain" => chain(cfg),
        "tree" => tree(cfg),
        "transfer" => transfer(cfg),
        "all" => {
            for s in ["independent", "chain", "tree", "transfer"] {
                run(s, cfg)?;
            }
            Ok(())
        }
        other => Err(format!(
            "scenario {other:?} has no --workers form (independent, chain, tree, transfer, all; \
             Task Bench: taskbench ... --workers N)"
        )),
    }
}

/// The standard fields of a timed result across processes (median of `runs`).
fn timed(scenario: &str, tasks: usize, cfg: &Config, runs: &[f64]) -> (Line, f64) {
    timed_as(scenario, "dagger", tasks, cfg, runs)
}

/// Like [`timed`], for a variant of dagger named `system`.
fn timed_as(scenario: &str, system: &str, tasks: usize, cfg: &Config, runs: &[f64]) -> (Line, f64) {
    let secs = median(runs.to_vec());
    let line = Line::new(scenario, system)
        .int("tasks", tasks as u64)
        .num("seconds", secs)
        .num("us_per_task", secs * 1e6 / tasks as f64)
        .int("threads", cfg.threads as u64)
        .int("workers", cfg.workers as u64)
        .int("worker_threads", cfg.worker_threads as u64)
        .nums("runs", runs);
    (line, secs)
}

/// Waits until every worker has freed the values of the previous run.
fn settle(ctx: &Context) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for w in ctx.workers() {
        while ctx
            .worker_stats(w.id)
            .map(|s| s.live_values > 0)
            .unwrap_or(false)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[dagger::task]
fn ident(i: u64) -> u64 {
    i
}

#[dagger::task]
fn radd(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

#[dagger::task]
fn rsum2(a: &u64, b: &u64) -> u64 {
    a.wrapping_add(*b)
}

fn independent(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(200_000);
    let ctx = ctx_of(cfg)?;
    let scope = on_workers(cfg.workers)?;
    let runs = measure(cfg.runs, || {
        let e = ctx.enter(|| {
            let t = Instant::now();
            let tasks: Vec<DTask<u64>> = (0..n as u64)
                .map(|i| spawn!(ident(i); scope = scope.clone()))
                .collect();
            dagger::wait_all(&tasks).expect("independent tasks");
            let e = t.elapsed();
            for k in [0, n / 2, n - 1] {
                assert_eq!(tasks[k].fetch().unwrap(), k as u64);
            }
            e
        });
        settle(&ctx);
        e
    });
    let (line, secs) = timed("independent", n, cfg, &runs);
    let rate = n as f64 / secs;
    line.num("tasks_per_s", rate)
        .num("tasks_per_s_target_min", 200_000.0)
        .bool("met", rate >= 200_000.0)
        .print();
    Ok(())
}

fn chain_run(ctx: &Context, scope: &Scope, n: usize) -> Duration {
    let e = ctx.enter(|| {
        let t = Instant::now();
        let mut prev = spawn!(radd(0, 1); scope = scope.clone());
        for _ in 1..n {
            prev = spawn!(radd(prev, 1); scope = scope.clone());
        }
        assert_eq!(prev.fetch().unwrap(), n as u64);
        t.elapsed()
    });
    settle(ctx);
    e
}

fn chain(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(10_000);
    let ctx = ctx_of(cfg)?;
    // Placed by the scheduler on any worker, and all on worker 1.
    let any = on_workers(cfg.workers)?;
    let one = Scope::worker(1);
    let mut a = || chain_run(&ctx, &any, n);
    let mut b = || chain_run(&ctx, &one, n);
    let runs = interleaved(cfg.runs, &mut [&mut a, &mut b]);
    let placements = [
        format!("workers 1..={}", cfg.workers),
        "worker 1".to_string(),
    ];
    for (placement, runs) in placements.iter().zip(&runs) {
        let (line, secs) = timed("chain", n, cfg, runs);
        let hop = secs * 1e6 / n as f64;
        line.str("placement", placement)
            .num("us_per_hop", hop)
            .num("us_per_hop_target_max", 30.0)
            .bool("met", hop <= 30.0)
            .print();
    }
    Ok(())
}

fn tree(cfg: &Config) -> Result<(), String> {
    let leaves = cfg.n.unwrap_or(100_000);
    let ctx = ctx_of(cfg)?;
    let scope = on_workers(cfg.workers)?;
    let total_tasks = 2 * leaves - 1;
    let runs = measure(cfg.runs, || {
        let e = ctx.enter(|| {
            let t = Instant::now();
            let mut level: Vec<DTask<u64>> = (0..leaves as u64)
                .map(|i| spawn!(radd(i, 0); scope = scope.clone()))
                .collect();
            while level.len() > 1 {
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                for pair in level.chunks(2) {
                    next.push(match pair {
                        [a, b] => spawn!(rsum2(a, b); scope = scope.clone()),
                        [a] => a.clone(),
                        _ => unreachable!(),
                    });
                }
                level = next;
            }
            let v = level[0].fetch().unwrap();
            assert_eq!(v, (leaves as u64 * (leaves as u64 - 1)) / 2);
            t.elapsed()
        });
        settle(&ctx);
        e
    });
    let (line, secs) = timed("tree", total_tasks, cfg, &runs);
    let per = secs * 1e6 / total_tasks as f64;
    line.num("tasks_per_s", total_tasks as f64 / secs)
        .num("us_per_task_local_target_max", 1.0)
        .bool("local_target_met", per <= 1.0)
        .print();
    Ok(())
}

/// Bytes that serialise as one byte string (a length and a copy), not element by element.
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Blob, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Makes a chunk of `bytes` bytes, every byte `fill`.
#[dagger::task]
fn make_blob(bytes: u64, fill: u8) -> Blob {
    Blob(vec![fill; bytes as usize])
}

/// Reads a chunk (its length and a byte at each end); returns (length, first + last, worker).
#[dagger::task]
fn read_blob(b: &Blob) -> (u64, u64, u32) {
    let ends = b.0.first().map_or(0, |x| *x as u64) + b.0.last().map_or(0, |x| *x as u64);
    (b.0.len() as u64, ends, dagger::current_processor().worker.0)
}

/// Makes a chunk of `bytes` bytes, every byte `fill`, that crosses processes without a copy
/// on arrival.
#[dagger::task]
fn make_shared(bytes: u64, fill: u8) -> dagger::SharedBytes {
    dagger::SharedBytes::from(vec![fill; bytes as usize])
}

/// Reads a [`make_shared`] chunk like [`read_blob`].
#[dagger::task]
fn read_shared(b: &dagger::SharedBytes) -> (u64, u64, u32) {
    let ends = b.first().map_or(0, |x| *x as u64) + b.last().map_or(0, |x| *x as u64);
    (b.len() as u64, ends, dagger::current_processor().worker.0)
}

/// How the raw TCP writer holds the chunks it sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TcpSource {
    /// `count` distinct buffers of `size` bytes, chunk `i` filled with `fill(i)`: 1 GiB of
    /// memory that the caches do not hold, as worker 1 holds the chunks it sends (made for
    /// the run, before the clock starts, and freed after it).
    Distinct,
    /// One buffer of `size` bytes written `count` times (hot in the cache after the first
    /// write): the baseline of earlier measurements.
    Hot,
}

/// Moves `count` chunks of `size` bytes from one thread to another over a loopback TCP
/// connection (the reader reads each whole chunk into its buffer); returns the time from the
/// first byte written to the last byte read.
fn tcp_loopback(size: usize, count: usize, source: TcpSource) -> Result<Duration, String> {
    let held: Vec<Vec<u8>> = match source {
        TcpSource::Distinct => (0..count).map(|i| vec![fill(i); size]).collect(),
        TcpSource::Hot => vec![vec![7u8; size]],
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<(Duration, u64)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; size];
        let mut ends = 0u64;
        let mut start = [0u8; 1];
        s.read_exact(&mut start)?;
        let t = Instant::now();
        for _ in 0..count {
            s.read_exact(&mut buf)?;
            ends += buf[0] as u64 + buf[size - 1] as u64;
        }
        Ok((t.elapsed(), ends))
    });
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(&[1]).map_err(|e| e.to_string())?;
    for i in 0..count {
        s.write_all(&held[i % held.len()])
            .map_err(|e| e.to_string())?;
    }
    let (e, ends) = reader
        .join()
        .map_err(|_| "the TCP reader panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let expected: u64 = (0..count).map(|i| 2 * held[i % held.len()][0] as u64).sum();
    assert_eq!(ends, expected);
    Ok(e)
}

fn transfer(cfg: &Config) -> Result<(), String> {
    if cfg.workers < 2 {
        return Err("transfer moves data between two workers: --workers 2 or more".into());
    }
    let total: usize = cfg.n.unwrap_or(1 << 30);
    let ctx = ctx_of(cfg)?;
    let (from, to) = (Scope::worker(1), Scope::worker(2));
    let sizes = match cfg.chunk_mib {
        Some(mib) => vec![mib],
        None => vec![1usize, 4, 16, 64],
    };
    for mib in sizes {
        let size = mib << 20;
        let count = (total / size).max(1);
        // Chunks that own a `Vec<u8>` (decoded by a copy), then chunks that are
        // `SharedBytes` (decoded as a view of the received bytes), one kind at a time so
        // that worker 1 keeps the encodings of one kind only.
        transfer_phase(
            &ctx,
            cfg,
            "dagger",
            size,
            count,
            |i| spawn!(make_blob(size as u64, fill(i)); scope = from.clone()),
            |c| spawn!(read_blob(c); scope = to.clone()),
        )?;
        transfer_phase(
            &ctx,
            cfg,
            "dagger-shared-bytes",
            size,
            count,
            |i| spawn!(make_shared(size as u64, fill(i)); scope = from.clone()),
            |c| spawn!(read_shared(c); scope = to.clone()),
        )?;
    }
    drop(ctx);
    Ok(())
}

/// The byte chunk `i` is filled with.
fn fill(i: usize) -> u8 {
    (i % 200) as u8 + 1
}

/// Makes `count` chunks of `size` bytes with `make` (on worker 1, once), then reads them all
/// with `read` (on worker 2) in each run, interleaved with raw TCP moving the same bytes;
/// prints both lines.
fn transfer_phase<T: Send + Sync + 'static>(
    ctx: &Context,
    cfg: &Config,
    system: &str,
    size: usize,
    count: usize,
    make: impl Fn(usize) -> DTask<T>,
    read: impl Fn(&DTask<T>) -> DTask<(u64, u64, u32)>,
) -> Result<(), String> {
    let bytes = (size * count) as f64;
    // The chunks are made on worker 1 once; every run reads all of them on worker 2,
    // which fetches each one from worker 1 (nothing is cached between runs).
    let chunks: Vec<DTask<T>> = ctx.enter(|| (0..count).map(&make).collect());
    ctx.enter(|| dagger::wait_all(&chunks))
        .map_err(|e| e.to_string())?;
    let mut dagger_run = || {
        ctx.enter(|| {
            let t = Instant::now();
            let reads: Vec<DTask<(u64, u64, u32)>> = chunks.iter().map(&read).collect();
            dagger::wait_all(&reads).expect("chunks read on worker 2");
            let e = t.elapsed();
            for (i, r) in reads.iter().enumerate() {
                assert_eq!(r.fetch().unwrap(), (size as u64, 2 * fill(i) as u64, 2));
            }
            e
        })
    };
    let mut tcp_run = || tcp_loopback(size, count, TcpSource::Distinct).expect("TCP loopback");
    let mut hot_run = || tcp_loopback(size, count, TcpSource::Hot).expect("TCP loopback");
    let runs = interleaved(cfg.runs, &mut [&mut dagger_run, &mut tcp_run, &mut hot_run]);
    drop(chunks);
    settle(ctx);
    let tcp_line = |name: &str, runs: &[f64]| {
        let secs = median(runs.to_vec());
        Line::new("transfer", name)
            .int("tasks", count as u64)
            .num("seconds", secs)
            .num("us_per_task", secs * 1e6 / count as f64)
            .int("workers", 0)
            .int("chunk_bytes", size as u64)
            .int("bytes", bytes as u64)
            .num("gb_per_s", bytes / secs / 1e9)
            .str("baseline_for", system)
            .nums("runs", runs)
            .print();
        bytes / secs / 1e9
    };
    let tcp_gbs = tcp_line("tcp-loopback", &runs[1]);
    let hot_gbs = tcp_line("tcp-loopback-hot", &runs[2]);
    let (line, secs) = timed_as("transfer", system, count, cfg, &runs[0]);
    let gbs = bytes / secs / 1e9;
    line.int("chunk_bytes", size as u64)
        .int("bytes", bytes as u64)
        .num("gb_per_s", gbs)
        .num("ratio_to_tcp_hot", gbs / hot_gbs)
        .num("ratio_to_tcp", gbs / tcp_gbs)
        .num("ratio_to_tcp_target_min", 0.75)
        .bool("met", gbs / tcp_gbs >= 0.75)
        .print();
    Ok(())
}
