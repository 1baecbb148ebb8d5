use dagger::prelude::*;
use std::time::Instant;

fn add(a: u64, b: u64) -> u64 { a + b }
fn fib(n: u64) -> u64 {
    if n < 2 { return n; }
    let a = spawn!(fib(n - 1));
    let b = spawn!(fib(n - 2));
    a.fetch().unwrap() + b.fetch().unwrap()
}

fn main() {
    let x = spawn!(add(1, 2));
    let y = spawn!(add(x, 10));
    println!("y = {}", y.fetch().unwrap());
    let t = Instant::now();
    println!("fib(20) = {} in {:?}", spawn!(fib(20)).fetch().unwrap(), t.elapsed());
    let t = Instant::now();
    let n = 1_000_000u64;
    let tasks: Vec<_> = (0..n).map(|i| dagger::spawn(move || i)).collect();
    let s: u64 = tasks.iter().map(|t| t.fetch().unwrap()).sum();
    println!("independent: {} {:?} {:.1} ns/task", s, t.elapsed(), t.elapsed().as_nanos() as f64 / n as f64);
    drop(tasks);
    let t = Instant::now();
    let mut prev = spawn!(add(0, 1));
    for _ in 0..100_000 { prev = spawn!(add(prev, 1)); }
    println!("chain: {} {:?}", prev.fetch().unwrap(), t.elapsed());
    println!("live results {}", dagger::live_results());
}
