//! The process-wide count of live results returns to where it was. This is the only test in
//! its binary, because the count is shared by everything running in the process.

use dagger::prelude::*;
use dagger::spawn as spawn_fn;
use std::time::{Duration, Instant};

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn live_results_return_to_zero() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let before = dagger::live_results();
        let tasks: Vec<_> = (0..10_000u64).map(|i| spawn_fn(move || i)).collect();
        assert_eq!(fetch_all(&tasks).unwrap().len(), 10_000);
        assert!(dagger::live_results() >= before + 10_000);
        drop(tasks);
        eventually("results are freed", || dagger::live_results() <= before);
    });
}
