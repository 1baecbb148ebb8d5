use std::hint::black_box;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    match args.get(1).map(|s| s.as_str()) {
        Some("rayon") => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for _ in 0..5 {
                let t = Instant::now();
                pool.scope(|s| {
                    for i in 0..n {
                        s.spawn(move |_| {
                            black_box(i);
                        });
                    }
                });
                println!(
                    "rayon {:.1} ns/task",
                    t.elapsed().as_nanos() as f64 / n as f64
                );
            }
        }
        Some("nested") => {
            for _ in 0..5 {
                let t = Instant::now();
                dagger::spawn(move || {
                    let tasks: Vec<_> = (0..n)
                        .map(|i| dagger::spawn(move || black_box(i)))
                        .collect();
                    let mut s = 0;
                    for t in &tasks {
                        s += t.fetch().unwrap();
                    }
                    black_box(s);
                })
                .wait();
                println!(
                    "nested {:.1} ns/task",
                    t.elapsed().as_nanos() as f64 / n as f64
                );
            }
        }
        _ => {
            for _ in 0..5 {
                let t = Instant::now();
                let tasks: Vec<_> = (0..n)
                    .map(|i| dagger::spawn(move || black_box(i)))
                    .collect();
                let mut s = 0;
                for t in &tasks {
                    s += t.fetch().unwrap();
                }
                black_box(s);
                println!(
                    "dagger {:.1} ns/task",
                    t.elapsed().as_nanos() as f64 / n as f64
                );
            }
        }
    }
}
