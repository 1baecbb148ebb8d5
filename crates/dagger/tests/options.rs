//! Options: per task, with_options blocks (propagating into nested tasks), per-function
//! defaults, priorities, hooks.

use dagger::prelude::*;
use dagger::{
    clear_default_options, current_processor, get_options, set_default_options, spawn as spawn_fn,
    spawn_with, ProcessorId, WorkerId,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::Gate;

fn prio() -> Option<i32> {
    get_options().get_priority()
}

#[test]
fn spawn_site_options_are_visible_inside_the_task() {
    let t = spawn!(prio(); priority = 4, name = "p");
    assert_eq!(t.fetch().unwrap(), Some(4));
    assert_eq!(t.name().as_deref(), Some("p"));
    let base = Options::new()
        .priority(1)
        .time_util(Duration::from_millis(3));
    let t = spawn!(prio(); options = base, priority = 2);
    assert_eq!(t.fetch().unwrap(), Some(2));
}

#[test]
fn with_options_reaches_nested_tasks_at_any_depth() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let t = with_options(Options::new().priority(7).name("outer"), || {
            spawn_fn(|| {
                let level2 = spawn_fn(|| spawn_fn(prio).fetch().unwrap());
                (prio(), level2.fetch().unwrap())
            })
        });
        assert_eq!(t.fetch().unwrap(), (Some(7), Some(7)));
        // outside the block nothing is in force
        assert_eq!(get_options().get_priority(), None);
        assert_eq!(spawn_fn(prio).fetch().unwrap(), None);
    });
}

#[test]
fn with_options_scope_places_nested_tasks() {
    let ctx = Context::builder().threads(2).build().unwrap();
    ctx.enter(|| {
        let t1 = Scope::worker(0).thread(1);
        let t = with_options(Options::new().scope(t1), || {
            spawn_fn(|| {
                let inner = spawn_fn(current_processor);
                (current_processor(), inner.fetch().unwrap())
            })
        });
        let here = ProcessorId::thread(WorkerId(0), 1);
        assert_eq!(t.fetch().unwrap(), (here, here));
    });
}

#[test]
fn options_given_to_one_task_do_not_leak_into_the_tasks_it_spawns() {
    let t = spawn_with(Options::new().priority(9), || {
        (prio(), spawn_fn(prio).fetch().unwrap())
    });
    assert_eq!(t.fetch().unwrap(), (Some(9), None));
}

#[test]
fn inner_blocks_and_spawn_sites_win() {
    let v = with_options(Options::new().priority(1).name("a"), || {
        with_options(Options::new().priority(2), || {
            let opts = get_options();
            (
                opts.get_priority(),
                opts.get_name().map(str::to_string),
                spawn!(prio(); priority = 3).fetch().unwrap(),
            )
        })
    });
    assert_eq!(v, (Some(2), Some("a".to_string()), Some(3)));
}

fn defaulted() -> Option<i32> {
    prio()
}
fn generic<T: 'static>(_: T) -> Option<i32> {
    prio()
}

#[test]
fn per_function_defaults_fill_unset_options() {
    set_default_options(defaulted, Options::new().priority(5));
    set_default_options(generic::<u8>, Options::new().priority(6));
    assert_eq!(spawn!(defaulted()).fetch().unwrap(), Some(5));
    assert_eq!(spawn!(generic(1u8)).fetch().unwrap(), Some(6));
    assert_eq!(
        spawn!(generic(1u16)).fetch().unwrap(),
        None,
        "defaults are per instance"
    );
    // blocks and spawn sites override defaults
    assert_eq!(spawn!(defaulted(); priority = 1).fetch().unwrap(), Some(1));
    let v = with_options(Options::new().priority(2), || {
        spawn!(defaulted()).fetch().unwrap()
    });
    assert_eq!(v, Some(2));
    clear_default_options(defaulted);
    assert_eq!(spawn!(defaulted()).fetch().unwrap(), None);
}

#[test]
fn higher_priority_runs_first_among_ready_tasks() {
    let ctx = Context::builder().threads(1).build().unwrap();
    ctx.enter(|| {
        let gate = Gate::default();
        let g = gate.clone();
        let order = Arc::new(Mutex::new(Vec::new()));
        let blocker = spawn_fn(move || g.wait());
        let mut tasks = Vec::new();
        for (i, p) in [0, -5, 3, 10, 0, 3, -1].into_iter().enumerate() {
            let o = order.clone();
            tasks.push(spawn_with(Options::new().priority(p), move || {
                o.lock().unwrap().push((p, i))
            }));
        }
        gate.open();
        blocker.wait();
        for t in &tasks {
            t.wait();
        }
        let order = order.lock().unwrap().clone();
        let prios: Vec<i32> = order.iter().map(|(p, _)| *p).collect();
        assert_eq!(prios, vec![10, 3, 3, 0, 0, -1, -5], "{order:?}");
        // equal priorities run in spawn order
        assert_eq!(order[1].1, 2);
        assert_eq!(order[2].1, 5);
    });
}

#[test]
fn per_task_checkpoint_and_restore() {
    let store: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let s = store.clone();
    let save = Options::new()
        .name("square")
        .checkpoint(move |info, v: &u64| {
            s.lock().unwrap().push((info.name.unwrap().to_string(), *v));
            Ok(())
        });
    let r = runs.clone();
    let square = move |x: u64| {
        r.fetch_add(1, Ordering::SeqCst);
        x * x
    };
    assert_eq!(
        spawn!(square.clone()(12); options = save).fetch().unwrap(),
        144
    );
    assert_eq!(*store.lock().unwrap(), vec![("square".to_string(), 144)]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let s = store.clone();
    let load = Options::new().name("square").restore(move |info| {
        let saved = s.lock().unwrap();
        saved
            .iter()
            .find(|(k, _)| Some(k.as_str()) == info.name)
            .map(|(_, v)| *v)
    });
    assert_eq!(
        spawn!(square.clone()(12); options = load.clone())
            .fetch()
            .unwrap(),
        144
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "restored, not run");
    // a restore hook that panics is ignored and the task runs
    let broken = Options::new().restore(|_| -> Option<u64> { panic!("restore broke") });
    assert_eq!(
        spawn!(square.clone()(3); options = broken).fetch().unwrap(),
        9
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // a failing checkpoint does not fail the task
    let failing = Options::new().checkpoint(|_, _: &u64| Err("disk full".into()));
    assert_eq!(
        spawn!(square.clone()(2); options = failing)
            .fetch()
            .unwrap(),
        4
    );
}

#[test]
fn hints_are_recorded() {
    let opts = Options::new()
        .time_util(Duration::from_micros(5))
        .alloc_util(1 << 20)
        .occupancy(2.0)
        .allow_errors(true);
    assert_eq!(opts.get_time_util(), Some(Duration::from_micros(5)));
    assert_eq!(opts.get_alloc_util(), Some(1 << 20));
    assert_eq!(opts.get_occupancy(), Some(1.0), "clamped");
    assert_eq!(opts.get_allow_errors(), Some(true));
    let seen = spawn_with(opts, || get_options().get_alloc_util())
        .fetch()
        .unwrap();
    assert_eq!(seen, Some(1 << 20));
}
