//! Registered functions run "remotely" through an in-process stand-in for a worker process:
//! arguments and results really go through their encodings, values live in the stand-in's
//! store, and the head fetches and frees them, exactly as with a networked worker.

use dagger::prelude::*;
use dagger::remote::data::Label;
use dagger::remote::functions::table;
use dagger::remote::store::{run_call, Fetch, Store};
use dagger::remote::wire::Location;
use dagger::remote::{DataLink, Dispatch, RemoteData, RemoteTask, RemoteWorker};
use dagger::{current_processor, ErrorKind, NodeId, ProcessorId, WorkerId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Worker 1, inside this process.
struct Loopback {
    worker: Context,
    store: Arc<Store>,
    fetches: AtomicUsize,
    dispatched: Mutex<Vec<String>>,
}

impl DataLink for Loopback {
    fn fetch(&self, loc: Location) -> Result<bytes::Bytes, dagger::BoxError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.store.encode(loc.id).map(|e| e.to_bytes())
    }
    fn free(&self, loc: Location) {
        self.store.free(loc.id);
    }
}

struct Link(Arc<Loopback>);

impl DataLink for Link {
    fn fetch(&self, loc: Location) -> Result<bytes::Bytes, dagger::BoxError> {
        DataLink::fetch(&*self.0, loc)
    }
    fn free(&self, loc: Location) {
        DataLink::free(&*self.0, loc)
    }
}

impl Dispatch for Link {
    fn dispatch(&self, worker: &Arc<RemoteWorker>, task: RemoteTask) {
        let lb = self.0.clone();
        lb.dispatched
            .lock()
            .unwrap()
            .push(task.name().unwrap_or_default());
        let fetch: Arc<dyn Fetch> = Arc::new(Link(lb.clone()));
        let run = run_call(&lb.worker, task.call.clone(), lb.store.clone(), fetch);
        let worker = worker.clone();
        std::thread::spawn(move || {
            worker.inflight.fetch_sub(1, Ordering::Relaxed);
            match run.map(|t| t.fetch()) {
                Ok(Ok((loc, _))) => task.complete(RemoteData::new(
                    loc,
                    Arc::new(Link(lb)),
                    None,
                    Label::Text("a loopback value".into()),
                )),
                Ok(Err(e)) => task.fail(e.kind(), e.message()),
                Err(e) => task.fail(ErrorKind::Runtime, e.to_string()),
            }
        });
    }
}

fn cluster() -> (Context, Arc<Loopback>) {
    let head = Context::builder().threads(2).build().unwrap();
    let lb = Arc::new(Loopback {
        worker: Context::builder()
            .threads(2)
            .thread_name("worker1")
            .worker_id(WorkerId(1))
            .build()
            .unwrap(),
        store: Arc::new(Store::new(1)),
        fetches: AtomicUsize::new(0),
        dispatched: Mutex::new(Vec::new()),
    });
    assert!(dagger::remote::attach(&head, Arc::new(Link(lb.clone()))));
    dagger::remote::add_worker(&head, Arc::new(RemoteWorker::new(1, 2, NodeId(0))));
    (head, lb)
}

fn on_worker1() -> Scope {
    Scope::worker(1)
}

#[dagger::task]
fn square(x: u64) -> u64 {
    x * x
}

#[dagger::task]
fn total(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

#[dagger::task]
fn sum_all(xs: Vec<&u64>) -> u64 {
    xs.into_iter().sum()
}

#[dagger::task]
fn concat(words: Vec<String>, sep: &str) -> String {
    words.join(sep)
}

#[dagger::task]
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_string()
}

#[dagger::task]
fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

#[dagger::task]
fn where_am_i() -> (u32, Option<u32>) {
    let p = current_processor();
    (p.worker.0, p.thread_index())
}

#[dagger::task(instance(T = u32), instance(T = String))]
fn twice<T: Clone>(x: T) -> (T, T) {
    (x.clone(), x)
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn registered_functions_are_in_the_table() {
    let names: Vec<&str> = table().iter().map(|f| f.name).collect();
    for n in [
        "square",
        "total",
        "sum_all",
        "concat",
        "parse",
        "twice::<u32>",
        "twice::<String>",
    ] {
        assert!(
            names.iter().any(|x| x.ends_with(&format!("::{n}"))),
            "{n} missing from {names:?}"
        );
    }
    assert_ne!(table().hash(), 0);
    let parse = table()
        .iter()
        .find(|f| f.name.ends_with("::parse"))
        .unwrap();
    assert!(parse.fallible);
    assert_eq!(
        parse.signature,
        "(String) -> Result < u64, std :: num :: ParseIntError >"
    );
}

#[dagger::task]
fn inc(x: u64) -> u64 {
    x + 1
}

#[test]
fn calls_run_on_the_worker_and_values_stay_there() {
    let (head, lb) = cluster();
    head.enter(|| {
        let a = spawn!(square(7); scope = on_worker1());
        assert_eq!(a.fetch().unwrap(), 49);
        assert_eq!(
            lb.fetches.load(Ordering::SeqCst),
            1,
            "the head fetched the value once"
        );
        assert_eq!(a.fetch().unwrap(), 49);
        assert_eq!(lb.fetches.load(Ordering::SeqCst), 1, "then it is cached");
        assert!(spawn!(thread_name(); scope = on_worker1())
            .fetch()
            .unwrap()
            .starts_with("worker1-"));
        assert_eq!(
            spawn!(where_am_i(); scope = Scope::worker(1).thread(1))
                .fetch()
                .unwrap(),
            (1, Some(1)),
            "an exact scope picks the worker's thread"
        );

        // a chain on the worker: each input is a reference into its store, never fetched
        let before = lb.fetches.load(Ordering::SeqCst);
        let mut t = spawn!(inc(0); scope = on_worker1());
        for _ in 0..20 {
            t = spawn!(inc(t); scope = on_worker1());
        }
        t.wait();
        assert_eq!(lb.fetches.load(Ordering::SeqCst), before);
        assert_eq!(t.fetch().unwrap(), 21);
    });
}

#[test]
fn every_parameter_shape_crosses() {
    let (head, _lb) = cluster();
    head.enter(|| {
        let w = on_worker1;
        let xs = dagger::spawn(|| vec![1u64, 2, 3]); // a closure: runs on the head
        assert_eq!(spawn!(total(&xs); scope = w()).fetch().unwrap(), 6);
        let parts: Vec<DTask<u64>> = (1..=4).map(|i| spawn!(square(i); scope = w())).collect();
        assert_eq!(spawn!(sum_all(&parts); scope = w()).fetch().unwrap(), 30);
        let words: Vec<DTask<String>> = ["a", "b"]
            .iter()
            .map(|s| spawn!(concat(vec![s.to_string()], ""); scope = w()))
            .collect();
        assert_eq!(
            spawn!(concat(words, "-"); scope = w()).fetch().unwrap(),
            "a-b"
        );
        let plain = vec!["x".to_string(), "y".to_string()];
        assert_eq!(
            spawn!(concat(plain, "+"); scope = w()).fetch().unwrap(),
            "x+y"
        );
        assert_eq!(spawn!(twice(5u32); scope = w()).fetch().unwrap(), (5, 5));
        assert_eq!(
            spawn!(twice("t".to_string()); scope = w()).fetch().unwrap(),
            ("t".to_string(), "t".to_string())
        );
        // a chunk made on the head is sent along
        let c = dagger::tochunk(vec![10u64, 20]);
        assert_eq!(spawn!(total(&c); scope = w()).fetch().unwrap(), 30);
        // a result computed on the worker is used by a closure on the head
        let remote = spawn!(square(3); scope = w());
        let local = dagger::spawn(move || remote.fetch().unwrap() + 1);
        assert_eq!(local.fetch().unwrap(), 10);
    });
}

#[test]
fn failures_on_the_worker_come_back_as_task_errors() {
    let (head, _lb) = cluster();
    head.enter(|| {
        let ok = spawn!(parse("12".to_string())?; scope = on_worker1());
        assert_eq!(ok.fetch().unwrap(), 12);
        let bad = spawn!(parse("x".to_string())?; scope = on_worker1());
        let err = bad.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(err.to_string().contains("invalid digit"), "{err}");
        let after = spawn!(inc(bad); scope = on_worker1());
        assert_eq!(
            after.fetch().unwrap_err().kind(),
            ErrorKind::DependencyFailed
        );
        // without `?` a fallible function runs only here: the worker scope is impossible
        let local_only = spawn!(parse("1".to_string()); scope = on_worker1());
        assert_eq!(
            local_only.fetch().unwrap_err().kind(),
            ErrorKind::Scheduling
        );
        // closures cannot be sent
        let closure = dagger::spawn_with(Options::new().scope(on_worker1()), || 1);
        let err = closure.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling);
    });
}

#[test]
fn values_are_freed_on_the_worker_when_the_head_drops_them() {
    let (head, lb) = cluster();
    head.enter(|| {
        let tasks: Vec<DTask<u64>> = (0..50)
            .map(|i| spawn!(square(i); scope = on_worker1()))
            .collect();
        let total = spawn!(sum_all(&tasks); scope = on_worker1());
        assert_eq!(
            total.fetch().unwrap(),
            (0..50u64).map(|i| i * i).sum::<u64>()
        );
        assert!(lb.store.len() >= 51);
        drop(tasks);
        drop(total);
        eventually("the worker holds nothing", || lb.store.is_empty());
    });
}

#[test]
fn placement_prefers_here_for_cheap_tasks_and_balances_forced_ones() {
    let (head, lb) = cluster();
    head.enter(|| {
        // no scope: a trivial task is cheaper here than a round trip away
        for i in 0..20 {
            assert_eq!(spawn!(square(i)).fetch().unwrap(), i * i);
        }
        assert!(lb.dispatched.lock().unwrap().is_empty());
        // with a scope that excludes this process, the task goes to the worker
        let t = spawn!(square(3); scope = Scope::worker(1));
        assert_eq!(t.fetch().unwrap(), 9);
        assert_eq!(lb.dispatched.lock().unwrap().len(), 1);
        assert_eq!(
            t.processor(),
            Some(ProcessorId::os(WorkerId(1))),
            "the worker process (the head does not know its thread)"
        );
    });
}
