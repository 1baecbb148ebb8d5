//! One program, three places to run it, chosen by configuration alone:
//!
//! ```sh
//! cargo run --release --example cluster                            # threads of this process
//! DAGGER_WORKERS=2 cargo run --release --example cluster           # + 2 local worker processes
//! DAGGER_HOSTS=node1,node2 DAGGER_BIND=0.0.0.0:0 \
//!     cargo run --release --example cluster                        # + a worker on each SSH host
//! DAGGER_SECRET=$(openssl rand -hex 32) \
//!     mpirun -n 3 -x DAGGER_SECRET target/release/examples/cluster  # SPMD: rank 0 is the head
//! ```
//!
//! The SSH hosts run the same executable path (`DAGGER_SSH_EXE` names another one) and reach
//! this machine at the address it binds; every connection is authenticated with a secret
//! that never appears on a command line.

use dagger::current_processor;
use dagger::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// A Monte Carlo estimate of π from `samples` points of the stream `seed`, and where it ran.
#[dagger::task]
fn estimate_pi(seed: u64, samples: u64) -> (f64, u32, u32) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let inside = (0..samples)
        .filter(|_| {
            let (a, b) = (next(), next());
            a * a + b * b <= 1.0
        })
        .count();
    let p = current_processor();
    (
        4.0 * inside as f64 / samples as f64,
        p.worker.0,
        std::process::id(),
    )
}

#[dagger::task]
fn average(estimates: Vec<&(f64, u32, u32)>) -> f64 {
    estimates.iter().map(|e| e.0).sum::<f64>() / estimates.len() as f64
}

#[dagger::main]
fn main() -> dagger::Result<()> {
    let ctx = Context::current();
    let workers = ctx.workers();
    if workers.is_empty() {
        println!(
            "running on the {} threads of this process",
            ctx.num_threads()
        );
    } else {
        println!("head with {} threads, and workers:", ctx.num_threads());
        for w in &workers {
            println!(
                "  worker {}: pid {} on {} ({} threads)",
                w.id.0, w.pid, w.hostname, w.threads
            );
        }
    }
    // With workers, the estimates run on them; without, on this process's threads.
    let scope = if workers.is_empty() {
        Scope::default()
    } else {
        Scope::spec()
            .workers(workers.iter().map(|w| w.id.0))
            .build()?
    };

    let started = Instant::now();
    let parts: Vec<DTask<(f64, u32, u32)>> = (0..32)
        .map(|seed| spawn!(estimate_pi(seed, 2_000_000); scope = scope.clone()))
        .collect();
    let pi = spawn!(average(&parts)).fetch()?;
    let mut by_process = BTreeMap::<(u32, u32), usize>::new();
    for p in &parts {
        let (_, worker, pid) = p.fetch()?;
        *by_process.entry((worker, pid)).or_default() += 1;
    }
    println!(
        "π ≈ {pi:.5} from {} tasks in {:.2?}",
        parts.len(),
        started.elapsed()
    );
    for ((worker, pid), n) in by_process {
        println!("  {n:>3} tasks ran in worker {worker} (pid {pid})");
    }
    Ok(())
}
