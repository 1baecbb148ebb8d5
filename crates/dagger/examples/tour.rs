//! A tour of dagger: eager tasks, a lazy graph, scopes, options and error handling.
//!
//! Run it with `cargo run --release --example tour`.

use dagger::prelude::*;
use dagger::{current_processor, get_options, num_processors, ProcessorId};
use std::time::Instant;

// Plain functions become tasks with `spawn!` (eager) or `delayed!` (lazy).
fn load(part: u32) -> Vec<f64> {
    (0..100_000)
        .map(|i| ((part * 7 + i) % 1000) as f64)
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn fib(n: u64) -> u64 {
    if n < 20 {
        return if n < 2 { n } else { fib(n - 1) + fib(n - 2) };
    }
    // tasks may spawn and wait for other tasks, to any depth
    let a = spawn!(fib(n - 1));
    let b = spawn!(fib(n - 2));
    a.fetch().unwrap() + b.fetch().unwrap()
}

fn parse(s: String) -> Result<i64, std::num::ParseIntError> {
    s.trim().parse()
}

fn double(x: i64) -> i64 {
    2 * x
}

fn whereami() -> ProcessorId {
    current_processor()
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn main() -> dagger::Result<()> {
    let ctx = Context::current();
    let procs: Vec<String> = ctx.all_processors().iter().map(|p| p.to_string()).collect();
    println!(
        "dagger tour: {} compute threads; processors: {}",
        ctx.num_threads(),
        procs.join(", ")
    );

    section("eager tasks");
    let t0 = Instant::now();
    let parts: Vec<_> = (0..16).map(|p| spawn!(load(p))).collect();
    // `&task` hands the function a reference to the stored result: no copy
    let means: Vec<_> = parts.iter().map(|p| spawn!(mean(p))).collect();
    let total: f64 = fetch_all(&means)?.iter().sum();
    println!(
        "mean of 16 means = {:.3} ({:?})",
        total / 16.0,
        t0.elapsed()
    );
    let t0 = Instant::now();
    println!(
        "fib(32) with nested tasks = {} ({:?})",
        spawn!(fib(32)).fetch()?,
        t0.elapsed()
    );

    section("a lazy graph");
    let a = delayed!(load(1));
    let b = delayed!(mean(&a)); // `a` runs once even though two nodes read it
    let c = delayed!(mean(&a));
    let both = delayed!(add_pair(b, c));
    println!("graph of {} nodes; nothing has run yet", both.graph_size());
    println!("collect = {:.3}", collect(&both)?);
    let chunk = compute(&both)?;
    println!(
        "compute -> chunk on {} holding {:.3}",
        chunk.processor(),
        chunk.fetch()?
    );

    section("scopes");
    println!(
        "default scope has {} processors",
        num_processors(&Scope::default())
    );
    let last = ctx.num_threads() as u32 - 1;
    let pinned = spawn!(whereami(); scope = Scope::worker(0).thread(last));
    println!("task pinned to thread {last} ran on {}", pinned.fetch()?);
    let impossible = spawn!(whereami(); scope = Scope::worker(3));
    println!(
        "scope on a missing worker -> {}",
        impossible.fetch().unwrap_err()
    );

    section("options");
    let named = spawn!(double(21); name = "answer", priority = 5);
    println!("task {:?} -> {}", named.name().unwrap(), named.fetch()?);
    let inherited = with_options(Options::new().priority(7), || {
        // options of a with_options block reach nested tasks at any depth
        dagger::spawn(|| dagger::spawn(|| get_options().get_priority()).fetch())
    });
    println!("priority seen two levels down: {:?}", inherited.fetch()??);

    section("errors");
    let good = spawn!(parse(" 21 ".to_string())?);
    println!(
        "parse(\" 21 \") then double -> {}",
        spawn!(double(good)).fetch()?
    );
    let bad = spawn!(parse("twenty-one".to_string())?);
    let downstream = spawn!(double(bad));
    match downstream.fetch() {
        Ok(v) => println!("unexpected value {v}"),
        Err(e) => {
            println!("error: {e}");
            println!(
                "  root cause: task {} `{}`",
                e.root().task_id().get(),
                e.root().task_name().unwrap_or("?")
            );
            println!(
                "  original error type kept: {}",
                e.downcast_ref::<std::num::ParseIntError>().is_some()
            );
        }
    }
    let cancelled = dagger::spawn(|| {
        while !dagger::is_cancelled() {
            std::thread::yield_now();
        }
    });
    cancelled.cancel();
    println!("cancelled task -> {}", cancelled.fetch().unwrap_err());
    println!(
        "\nthe runtime is still fine: {}",
        spawn!(double(50)).fetch()?
    );
    Ok(())
}

fn add_pair(a: f64, b: f64) -> f64 {
    a + b
}
