//! Failures: panics and `Err`s become `TaskError`s; dependents fail without running.

use dagger::prelude::*;
use dagger::{spawn as spawn_fn, spawn_with, try_spawn, Options, ProcessorKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;
use common::Gate;

#[derive(Debug, Clone, PartialEq)]
struct BadInput(u32);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad input {}", self.0)
    }
}
impl std::error::Error for BadInput {}

fn check(x: u32) -> Result<u32, BadInput> {
    if x % 2 == 0 {
        Ok(x)
    } else {
        Err(BadInput(x))
    }
}

fn inc(x: u32) -> u32 {
    x + 1
}

#[test]
fn an_err_names_the_task_and_keeps_the_original_error() {
    let t = spawn!(check(3)?);
    let err = t.fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Failed);
    assert_eq!(err.task_id(), t.id());
    assert_eq!(err.task_name(), Some("check"));
    assert_eq!(err.downcast_ref::<BadInput>(), Some(&BadInput(3)));
    assert_eq!(err.message(), "bad input 3");
    assert_eq!(
        err.to_string(),
        format!("{} `check` failed: bad input 3", t.id())
    );
    // std::error::Error::source is the user's error
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), "bad input 3");
}

#[test]
fn a_panic_becomes_a_task_error() {
    let t = spawn_with(Options::new().name("explode"), || -> u32 {
        panic!("kaboom {}", 7)
    });
    let err = t.fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.panic_message(), Some("kaboom 7"));
    assert!(
        err.to_string().contains("`explode` panicked: kaboom 7"),
        "{err}"
    );

    #[derive(Clone, Debug, PartialEq)]
    struct Custom(i32);
    let t = spawn_fn(|| std::panic::panic_any(Custom(5)));
    let err: TaskError = t.fetch().unwrap_err();
    assert_eq!(err.panic_payload::<Custom>(), Some(Custom(5)));
}

#[test]
fn dependents_fail_without_running_and_name_the_root() {
    let runs = Arc::new(AtomicUsize::new(0));
    let bad = spawn!(check(5)?);
    let r = runs.clone();
    let counted = move |x: u32| {
        r.fetch_add(1, Ordering::SeqCst);
        x
    };
    let mid = spawn!(counted(bad.clone()));
    let top = spawn!(inc(mid));
    let err = top.fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyFailed);
    assert_eq!(err.task_id(), top.id());
    assert_eq!(err.root().task_id(), bad.id());
    assert_eq!(err.root().kind(), ErrorKind::Failed);
    assert_eq!(err.downcast_ref::<BadInput>(), Some(&BadInput(5)));
    assert!(err.to_string().contains("did not run: its input"), "{err}");
    assert!(
        err.to_string().contains("`check` failed: bad input 5"),
        "{err}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "dependents never ran");
}

#[test]
fn unrelated_tasks_are_unaffected_and_the_runtime_stays_usable() {
    let bad = spawn!(check(1)?);
    let good = spawn!(check(2)?);
    let after_bad = spawn!(inc(bad));
    let after_good = spawn!(inc(good));
    assert!(after_bad.fetch().is_err());
    assert_eq!(after_good.fetch().unwrap(), 3);
    // many more failures, then normal work
    let fails: Vec<_> = (0..100).map(|i| spawn!(check(2 * i + 1)?)).collect();
    assert!(fails.iter().all(|t| t.fetch().is_err()));
    let oks: Vec<_> = (0..100).map(|i| spawn!(inc(i))).collect();
    assert_eq!(dagger::fetch_all(&oks).unwrap().iter().sum::<u32>(), 5050);
}

#[test]
fn a_failure_at_the_head_of_a_long_chain_does_not_overflow_the_stack() {
    let gate = Gate::default();
    let g = gate.clone();
    let head = try_spawn(move || {
        g.wait();
        check(1)
    });
    let mut t = spawn!(inc(head.clone()));
    for _ in 0..200_000 {
        t = spawn!(inc(t));
    }
    gate.open();
    let err = t.fetch().unwrap_err();
    assert_eq!(err.root().task_id(), head.id());
}

#[test]
fn an_impossible_scope_is_a_scheduling_error_not_a_hang() {
    let t = spawn!(inc(1); scope = Scope::worker(42));
    let err = t.fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Scheduling);
    assert!(err.to_string().contains("cannot be scheduled"), "{err}");
    assert!(err.to_string().contains("worker 42"), "{err}");

    let empty = Scope::worker(0).constrain(&Scope::worker(1));
    let t = spawn!(inc(1); scope = empty);
    let err = t.fetch().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Scheduling);
    assert!(err.to_string().contains("no processor is in both"), "{err}");

    struct Absent;
    let t = spawn!(inc(1); scope = Scope::processor_type::<Absent>());
    assert_eq!(t.fetch().unwrap_err().kind(), ErrorKind::Scheduling);
    assert_eq!(ProcessorKind::of::<Absent>().name(), "Absent");

    // the dependents of an unschedulable task fail too
    let dep = spawn!(inc(t));
    assert_eq!(
        dep.fetch().unwrap_err().root().kind(),
        ErrorKind::Scheduling
    );
}

#[test]
fn errors_are_shared_not_copied() {
    let bad = try_spawn(|| Err::<u32, _>(BadInput(9)));
    let deps: Vec<_> = (0..10).map(|_| spawn!(inc(bad.clone()))).collect();
    for d in &deps {
        let e = d.fetch().unwrap_err();
        assert_eq!(e.root().task_id(), bad.id());
    }
}

#[test]
fn crate_error_wraps_task_errors() {
    fn run() -> dagger::Result<u32> {
        let t = spawn!(check(7)?);
        Ok(t.fetch()?)
    }
    let e = run().unwrap_err();
    assert!(matches!(e, dagger::Error::Task(_)));
    assert!(e.to_string().contains("bad input 7"));
}
