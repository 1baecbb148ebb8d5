//! Processors: built-in thread processors, custom processor types, placement by scope.

use dagger::prelude::*;
use dagger::{
    all_processors, compatible_processors, current_processor, num_processors, spawn_with, ExecTask,
    Processor, ProcessorId, ProcessorKind, TaskSignature, ThreadProc, WorkerId,
};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An opt-in processor that counts what it runs.
#[derive(Default)]
struct Counting {
    runs: Arc<AtomicUsize>,
}

impl Processor for Counting {
    fn execute(&self, task: ExecTask) {
        self.runs.fetch_add(1, Ordering::SeqCst);
        task.run();
    }
}

fn whereami() -> ProcessorId {
    current_processor()
}

#[test]
fn threads_are_processors() {
    let ctx = Context::builder().threads(3).build().unwrap();
    ctx.enter(|| {
        let procs = all_processors();
        assert_eq!(procs.len(), 3);
        assert!(procs.iter().all(|p| p.kind == ProcessorKind::THREAD));
        assert_eq!(num_processors(&Scope::default()), 3);
        assert_eq!(num_processors(&Scope::worker(0)), 3);
        assert_eq!(num_processors(&Scope::worker(0).thread(1)), 1);
        assert_eq!(num_processors(&Scope::worker(1)), 0);
        assert_eq!(
            compatible_processors(&Scope::processor_type::<ThreadProc>()),
            procs
        );
        let os = ProcessorId::os(WorkerId(0));
        assert_eq!(ctx.parent(procs[0]), Some(os));
        assert_eq!(ctx.children(os), procs);
        assert_eq!(ctx.parent(os), None);
        // outside tasks the current processor is the OS process
        assert_eq!(current_processor(), os);
    });
}

#[test]
fn exact_scopes_pin_tasks_to_one_thread() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        for t in 0..2u32 {
            let tasks: Vec<_> = (0..50)
                .map(|_| spawn!(whereami(); scope = Scope::worker(0).thread(t)))
                .collect();
            for task in &tasks {
                assert_eq!(task.fetch().unwrap(), ProcessorId::thread(WorkerId(0), t));
                assert_eq!(task.processor(), Some(ProcessorId::thread(WorkerId(0), t)));
            }
        }
    });
}

#[test]
fn a_custom_processor_is_opt_in_and_used_when_the_scope_asks() {
    let runs = Arc::new(AtomicUsize::new(0));
    let ctx = Context::builder()
        .threads(2)
        .processor(Counting { runs: runs.clone() })
        .build()
        .unwrap();
    ctx.enter(|| {
        let counting = ProcessorKind::of::<Counting>();
        // not in the default scope
        assert_eq!(num_processors(&Scope::default()), 2);
        assert_eq!(num_processors(&Scope::any()), 3);
        let plain: Vec<_> = (0..50).map(|_| spawn!(whereami())).collect();
        for t in &plain {
            assert_eq!(t.fetch().unwrap().kind, ProcessorKind::THREAD);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        // a scope that names the processor type uses it
        let scoped: Vec<_> = (0..10)
            .map(|_| spawn!(whereami(); scope = Scope::processor_type::<Counting>()))
            .collect();
        for t in &scoped {
            let p = t.fetch().unwrap();
            assert_eq!(p.kind, counting);
            assert_eq!(p.index, 0);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 10);
        // the processor's parent is the OS process
        let id = compatible_processors(&Scope::processor_type::<Counting>())[0];
        assert_eq!(ctx.parent(id), Some(ProcessorId::os(WorkerId(0))));
        assert!(ctx.processor(id).is_some());
    });
}

/// Refuses everything but `accepted`.
struct Picky;
fn accepted(x: u32) -> u32 {
    x
}
fn refused(x: u32) -> u32 {
    x
}
impl Processor for Picky {
    fn default_enabled(&self) -> bool {
        true
    }
    fn is_compatible(&self, task: &TaskSignature<'_>) -> bool {
        task.name == Some("accepted") && task.args.len() == 1 && task.args[0].name == "u32"
    }
}

#[test]
fn compatibility_sees_the_function_and_argument_types() {
    let ctx = Context::builder()
        .threads(1)
        .processor(Picky)
        .build()
        .unwrap();
    ctx.enter(|| {
        let picky = Scope::processor_type::<Picky>();
        assert_eq!(
            spawn!(accepted(1); scope = picky.clone()).fetch().unwrap(),
            1
        );
        let err = spawn!(refused(1); scope = picky).fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Scheduling);
        assert!(err.to_string().contains("cannot run refused"), "{err}");
        // a default-enabled processor takes part in default placement when compatible
        let seen: Vec<ProcessorKind> = (0..20)
            .map(|_| {
                let f = |x: u32| (x, current_processor().kind);
                spawn!(f(1)).fetch().unwrap().1
            })
            .collect();
        assert!(
            seen.iter().all(|k| *k == ProcessorKind::THREAD),
            "closures are refused"
        );
    });
}

/// Runs tasks on a thread of its own.
struct OwnThread {
    tx: Mutex<std::sync::mpsc::Sender<ExecTask>>,
}
impl OwnThread {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<ExecTask>();
        std::thread::Builder::new()
            .name("own-thread".into())
            .spawn(move || {
                for t in rx {
                    t.run();
                }
            })
            .unwrap();
        OwnThread { tx: Mutex::new(tx) }
    }
}
impl Processor for OwnThread {
    fn execute(&self, task: ExecTask) {
        self.tx.lock().unwrap().send(task).unwrap();
    }
}

#[test]
fn a_processor_may_run_tasks_on_its_own_thread() {
    let ctx = Context::builder()
        .threads(1)
        .processor(OwnThread::new())
        .build()
        .unwrap();
    ctx.enter(|| {
        let name = || {
            let inner = dagger::spawn(|| 20);
            (
                std::thread::current().name().unwrap().to_string(),
                inner.fetch().unwrap() + 1,
            )
        };
        let t = spawn!(name(); scope = Scope::processor_type::<OwnThread>());
        let (thread, v) = t.fetch().unwrap();
        assert_eq!(thread, "own-thread");
        assert_eq!(v, 21, "tasks spawned there go to the same context");
    });
}

struct Dropper;
impl Processor for Dropper {
    fn execute(&self, task: ExecTask) {
        drop(task);
    }
}

#[test]
fn a_task_a_processor_drops_fails_with_a_clear_error() {
    let ctx = Context::builder()
        .threads(1)
        .processor(Dropper)
        .build()
        .unwrap();
    ctx.enter(|| {
        let t = spawn!(whereami(); scope = Scope::processor_type::<Dropper>());
        let err = t.fetch().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Runtime);
        assert!(
            err.to_string()
                .contains("dropped the task without running it"),
            "{err}"
        );
    });
}

/// Converts vectors it receives: every element is doubled (same type), and counts moves out.
#[derive(Default)]
struct Doubler {
    moved_out: Arc<AtomicUsize>,
}
impl Processor for Doubler {
    fn move_from(
        &self,
        _src: ProcessorId,
        value: &(dyn Any + Send + Sync),
    ) -> Option<Box<dyn Any + Send + Sync>> {
        value
            .downcast_ref::<Vec<i32>>()
            .map(|v| Box::new(v.iter().map(|x| x * 2).collect::<Vec<i32>>()) as _)
    }
    fn move_to(
        &self,
        _dst: ProcessorId,
        _value: &(dyn Any + Send + Sync),
    ) -> Option<Box<dyn Any + Send + Sync>> {
        self.moved_out.fetch_add(1, Ordering::SeqCst);
        None
    }
}

#[test]
fn move_hooks_convert_inputs_between_processors() {
    let moved_out = Arc::new(AtomicUsize::new(0));
    let ctx = Context::builder()
        .threads(1)
        .processor(Doubler {
            moved_out: moved_out.clone(),
        })
        .build()
        .unwrap();
    ctx.enter(|| {
        fn make() -> Vec<i32> {
            vec![1, 2, 3]
        }
        fn total(v: &[i32]) -> i32 {
            v.iter().sum()
        }
        let on_thread = spawn!(make());
        let on_doubler = spawn!(total(&on_thread); scope = Scope::processor_type::<Doubler>());
        assert_eq!(
            on_doubler.fetch().unwrap(),
            12,
            "inputs moved onto the processor are doubled"
        );
        let made_there = spawn!(make(); scope = Scope::processor_type::<Doubler>());
        let back = spawn!(total(&made_there));
        assert_eq!(back.fetch().unwrap(), 6);
        assert_eq!(
            moved_out.load(Ordering::SeqCst),
            1,
            "values leaving it pass its move_to"
        );
    });
}

/// A processor that is fast for `work` (threads spin instead).
#[derive(Default)]
struct Accelerator;
impl Processor for Accelerator {}

fn work() -> ProcessorKind {
    let here = current_processor().kind;
    if here == ProcessorKind::THREAD {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(3);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    here
}

#[test]
fn learned_run_times_steer_placement() {
    let ctx = Context::builder()
        .threads(1)
        .processor(Accelerator)
        .build()
        .unwrap();
    ctx.enter(|| {
        // Both kinds are in scope. One after the other (so no queue builds up): once each kind
        // has been measured, the cheap one wins every time.
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push(spawn!(work(); scope = Scope::any()).fetch().unwrap());
        }
        let accel = ProcessorKind::of::<Accelerator>();
        assert!(
            seen[..4].contains(&accel),
            "the accelerator was tried: {seen:?}"
        );
        assert!(
            seen[4..].iter().all(|k| *k == accel),
            "then always chosen: {seen:?}"
        );
    });
}

#[test]
fn a_time_hint_counts_as_queued_work() {
    // With a long hint, queued tasks make their processor look busy: placement spreads
    // exactly-scoped work over the candidate threads instead of piling it on one.
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let gate = Arc::new(std::sync::Barrier::new(3));
        let (g1, g2) = (gate.clone(), gate.clone());
        let both = Scope::worker(0).threads([0, 1]).unwrap();
        let opts = || {
            Options::new()
                .scope(both.clone())
                .time_util(std::time::Duration::from_secs(1))
        };
        let a = spawn_with(opts(), move || {
            g1.wait();
            current_processor()
        });
        let b = spawn_with(opts(), move || {
            g2.wait();
            current_processor()
        });
        gate.wait(); // both run at once: they were placed on different threads
        assert_ne!(a.fetch().unwrap(), b.fetch().unwrap());
    });
}
