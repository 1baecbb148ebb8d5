//! Lazy graphs: delayed!, compute, collect, shared nodes, graph options.

use dagger::prelude::*;
use dagger::{compute_with, tochunk, ErrorKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;
use common::Gate;

fn add(a: i64, b: i64) -> i64 {
    a + b
}
fn neg(x: i64) -> i64 {
    -x
}
fn sum(xs: &[i64]) -> i64 {
    xs.iter().sum()
}

#[test]
fn nothing_runs_until_the_graph_is_computed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let counted = move |x: i64| {
        r.fetch_add(1, Ordering::SeqCst);
        x
    };
    let a = delayed!(counted(20));
    let b = delayed!(add(a.clone(), 2));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(b.graph_size(), 2);
    assert_eq!(collect(&b).unwrap(), 22);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // a thunk can be computed again (its graph runs again)
    assert_eq!(collect(&b).unwrap(), 22);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[test]
fn a_thunk_used_twice_runs_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let counted = move |x: i64| {
        r.fetch_add(1, Ordering::SeqCst);
        x
    };
    let shared = delayed!(counted(5));
    let left = delayed!(neg(shared.clone()));
    let right = delayed!(add(shared.clone(), 1));
    let top = delayed!(add(left, right));
    assert_eq!(top.graph_size(), 4);
    assert_eq!(collect(&top).unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn compute_returns_a_chunk_and_chunks_feed_graphs() {
    let data = tochunk(vec![1i64, 2, 3, 4]);
    let total = delayed!(sum(&data));
    let doubled = delayed!(add(total.clone(), total.clone()));
    let chunk: Chunk<i64> = compute(&doubled).unwrap();
    assert_eq!(chunk.fetch().unwrap(), 20);
    // a chunk from one graph feeds the next graph and an eager task
    let again = delayed!(neg(chunk.clone()));
    assert_eq!(collect(&again).unwrap(), -20);
    assert_eq!(spawn!(neg(chunk)).fetch().unwrap(), -20);
}

#[test]
fn a_wide_and_deep_graph() {
    let leaves: Vec<Thunk<i64>> = (0..256).map(|i| delayed!(add(i, 0))).collect();
    let mut level = leaves;
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| delayed!(add(p[0].clone(), p[1].clone())))
            .collect();
    }
    assert_eq!(collect(&level[0]).unwrap(), (0..256).sum::<i64>());

    let mut chain = delayed!(add(0, 1));
    for _ in 0..50_000 {
        chain = delayed!(add(chain, 1));
    }
    assert_eq!(collect(&chain).unwrap(), 50_001);
    drop(chain); // dropping a deep graph must not overflow the stack
}

#[test]
fn fallible_nodes_and_failure_propagation() {
    fn parse(s: String) -> Result<i64, std::num::ParseIntError> {
        s.parse()
    }
    let good = delayed!(parse("40".to_string())?);
    let bad = delayed!(parse("forty".to_string())?);
    assert_eq!(collect(&delayed!(add(good.clone(), 2))).unwrap(), 42);
    let err = collect(&delayed!(add(good, bad))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyFailed);
    assert_eq!(err.root().task_name(), Some("parse"));
    assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
}

#[test]
fn allow_errors_false_stops_the_rest_of_the_graph() {
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let ran_after = Arc::new(AtomicUsize::new(0));
        let g = gate.clone();
        let slow = move |x: i64| {
            g.wait();
            x
        };
        let fail = |_: i64| -> Result<i64, String> { Err("boom".into()) };
        let r = ran_after.clone();
        let late = move |x: i64| {
            r.fetch_add(1, Ordering::SeqCst);
            x
        };
        let a = delayed!(slow(1));
        let b = delayed!(fail(2)?; name = "boom");
        let c = delayed!(late(3));
        let top = delayed!(add(delayed!(add(a, b)), c));
        let opener = std::thread::spawn(move || gate.open());
        let err = compute_with(&top, Options::new().allow_errors(false)).unwrap_err();
        opener.join().unwrap();
        assert_eq!(err.task_name(), Some("boom"));
        assert_eq!(err.kind(), ErrorKind::Failed);
    });
}

#[test]
fn graph_options_apply_to_every_task_and_hooks_see_the_result() {
    let saved: Arc<Mutex<Option<(String, i64)>>> = Arc::default();
    let s = saved.clone();
    let names = |x: i64| (x, dagger::get_options().get_priority());
    let t = delayed!(names(1));
    let opts =
        Options::new()
            .priority(3)
            .name("graph")
            .checkpoint(move |info, v: &(i64, Option<i32>)| {
                *s.lock().unwrap() = Some((info.name.unwrap().to_string(), v.0));
                Ok(())
            });
    let out = compute_with(&t, opts).unwrap().fetch().unwrap();
    assert_eq!(out, (1, Some(3)));
    assert_eq!(*saved.lock().unwrap(), Some(("graph".to_string(), 1)));

    // a restore hook that has a value skips the whole graph
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let counted = move |x: i64| {
        r.fetch_add(1, Ordering::SeqCst);
        x
    };
    let t = delayed!(counted(1));
    let opts = Options::new().restore(|_| Some(99i64));
    assert_eq!(compute_with(&t, opts).unwrap().fetch().unwrap(), 99);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // a restore hook for another type is ignored
    let opts = Options::new().restore(|_| Some("nope"));
    assert_eq!(compute_with(&t, opts).unwrap().fetch().unwrap(), 1);
}

#[test]
fn thunks_can_be_computed_in_a_chosen_context() {
    let ctx = Context::builder()
        .threads(2)
        .thread_name("lazyctx")
        .build()
        .unwrap();
    let where_ = |_: i64| std::thread::current().name().unwrap_or("").to_string();
    let t = delayed!(where_(0));
    assert!(ctx.collect(&t).unwrap().starts_with("lazyctx-"));
}

#[test]
fn collections_of_thunks_are_graph_inputs() {
    fn total(xs: Vec<&i64>) -> i64 {
        xs.into_iter().sum()
    }
    fn owned_total(xs: Vec<i64>) -> i64 {
        xs.into_iter().sum()
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let counted = move |x: i64| {
        r.fetch_add(1, Ordering::SeqCst);
        x
    };
    let leaves: Vec<Thunk<i64>> = (1..=10).map(|i| delayed!(counted.clone()(i))).collect();
    let a = delayed!(total(&leaves));
    let b = delayed!(owned_total(leaves.clone()));
    let c = delayed!(add(a, b));
    assert_eq!(collect(&c).unwrap(), 110);
    assert_eq!(runs.load(Ordering::SeqCst), 10, "shared leaves ran once");
    // chunks and tasks mix with thunks in a graph
    let chunks: Vec<Chunk<i64>> = (0..3).map(tochunk).collect();
    assert_eq!(collect(&delayed!(total(&chunks))).unwrap(), 3);
    let tasks: Vec<DTask<i64>> = (0..4).map(|i| spawn!(add(i, i))).collect();
    assert_eq!(collect(&delayed!(owned_total(tasks))).unwrap(), 12);
}
