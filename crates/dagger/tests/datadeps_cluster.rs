//! Data-dependency regions across worker processes: registered tasks run in 2 worker processes
//! started from this test binary, on copies of region data that the region keeps consistent
//! (copies once per version and process, writes back only what changed).

use dagger::prelude::*;
use dagger::{
    spawn_datadeps, spawn_datadeps_with, BlockMut, BlockRef, CostPlanner, DatadepsOptions, In,
    InOut, LaunchSpec, Out, RoundRobin, TransferStats, Transfers, Traversal, Val, WorkerId,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

dagger::init_before_main!();

fn cluster() -> Context {
    Context::builder()
        .threads(2)
        .workers(LaunchSpec::Local {
            workers: 2,
            threads: 2,
        })
        .build()
        .expect("the cluster starts")
}

/// Round robin over the head's 2 threads and the workers' 4: most tasks run in workers.
fn spread() -> DatadepsOptions {
    DatadepsOptions::new().planner(RoundRobin::default())
}

// ---- counting copies ----

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Buf(Vec<u64>);

#[dagger::task]
fn add_into(acc: &mut Buf, x: &Buf) {
    acc.0.iter_mut().zip(&x.0).for_each(|(a, b)| *a += b);
}

#[dagger::task]
fn total(x: &Buf) -> u64 {
    x.0.iter().fold(0, |a, b| a.wrapping_add(*b))
}

#[dagger::task]
fn where_am_i(_x: &Buf) -> u32 {
    dagger::current_processor().worker.0
}

#[dagger::task]
fn panic_if(x: &mut Buf, bad: u64) {
    assert!(!x.0.contains(&bad), "the buffer holds {bad}");
    x.0.push(0);
}

#[test]
fn copies_only_what_changed() {
    let ctx = cluster();
    ctx.enter(|| {
        let big = Buf((0..10_000).collect());
        let mut acc = Buf(vec![0; 10_000]);
        let mut untouched = Buf(vec![7; 10_000]);
        let t = Transfers::new();
        let (sums, places) = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let (big, acc, untouched) = (dd.read(&big), dd.data(&mut acc), dd.data(&mut untouched));
            let on = |w: u32| Options::new().scope(Scope::worker(w));
            // `big` is read by 8 tasks on worker 1: it is sent there once
            let places: Vec<_> = (0..8)
                .map(|_| dd.spawn_task_with(on(1), where_am_i, (In(big),)))
                .collect();
            // `acc` is changed on worker 1 twice, then read on worker 2 (copied from worker 1
            // to worker 2 directly)
            dd.spawn_task_with(on(1), add_into, (InOut(acc), In(big)));
            dd.spawn_task_with(on(1), add_into, (InOut(acc), In(big)));
            let s2 = dd.spawn_task_with(on(2), total, (In(acc),));
            // `untouched` is only read on worker 2
            let s3 = dd.spawn_task_with(on(2), total, (In(untouched),));
            (vec![s2, s3], places)
        })
        .unwrap();
        assert_eq!(sums[0].fetch().unwrap(), 2 * (0..10_000u64).sum::<u64>());
        assert_eq!(sums[1].fetch().unwrap(), 70_000);
        for p in places {
            assert_eq!(p.fetch().unwrap(), 1, "a task scoped to worker 1 ran there");
        }
        assert_eq!(acc.0[9_999], 2 * 9_999, "the workers' changes came home");
        let s = t.stats();
        // sent from home: big and acc to worker 1, untouched to worker 2
        assert_eq!(s.sent, 3, "{s:?}");
        // acc from worker 1 to worker 2
        assert_eq!(s.moved, 1, "{s:?}");
        assert_eq!(s.fetched, 0, "{s:?}");
        // only acc changed: it alone is written back (big and untouched are not)
        assert_eq!(s.written_back, 1, "{s:?}");
        assert!(s.written_back_bytes >= 10_000, "{s:?}");
        assert_eq!(s.remote_tasks, 12, "{s:?}");
        // a task in this process that reads acc after a worker changed it fetches it first;
        // then home holds the latest version and nothing is written back
        let t = Transfers::new();
        let mut local_saw = 0;
        spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let acc = dd.data(&mut acc);
            let seen = dd.data(&mut local_saw);
            let ones = dd.own(Buf(vec![1; 10_000]));
            let on2 = Options::new().scope(Scope::worker(2));
            dd.spawn_task_with(on2, add_into, (InOut(acc), In(ones)));
            dd.spawn(|a: &Buf, s: &mut u64| *s = a.0[1], (In(acc), Out(seen)));
        })
        .unwrap();
        assert_eq!(local_saw, 2 + 1);
        assert_eq!(acc.0[1], 3);
        let s = t.stats();
        assert_eq!((s.sent, s.fetched, s.written_back), (2, 1, 0), "{s:?}");
    });
}

#[test]
fn remote_task_errors_name_the_task() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut b = Buf(vec![1, 2, 3]);
        let err = spawn_datadeps(|dd| {
            let b = dd.data(&mut b);
            dd.spawn_task_with(
                Options::new().scope(Scope::worker(1)).name("checker"),
                panic_if,
                (InOut(b), Val(3u64)),
            );
        })
        .unwrap_err();
        assert!(err.to_string().contains("holds 3"), "{err}");
        assert!(err.to_string().contains("checker"), "{err}");
        assert_eq!(
            b.0,
            vec![1, 2, 3],
            "a failed region leaves the data as it was"
        );
        // the workers are fine afterwards
        let mut b = Buf(vec![5]);
        spawn_datadeps(|dd| {
            let b = dd.data(&mut b);
            dd.spawn_task_with(
                Options::new().scope(Scope::worker(1)),
                panic_if,
                (InOut(b), Val(3u64)),
            );
        })
        .unwrap();
        assert_eq!(b.0, vec![5, 0]);
    });
}

#[test]
fn the_spawn_macro_sends_registered_functions_to_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut acc = Buf(vec![0; 4]);
        let x = Buf(vec![1, 2, 3, 4]);
        let t = Transfers::new();
        let (sum, local) = spawn_datadeps_with(spread().transfers(&t), |dd| {
            let (acc, x) = (dd.data(&mut acc), dd.read(&x));
            for _ in 0..6 {
                // `x` unannotated: read
                dagger::spawn!(dd, add_into(InOut(acc), x));
            }
            let on2 = Scope::worker(2);
            let sum = dagger::spawn!(dd, total(acc); scope = on2, name = "sum");
            // not registered: runs here; `3` is a plain value
            let local = dagger::spawn!(dd, scaled_total(acc, 3));
            (sum, local)
        })
        .unwrap();
        assert_eq!(acc.0, vec![6, 12, 18, 24]);
        assert_eq!(sum.fetch().unwrap(), 60);
        assert_eq!(local.fetch().unwrap(), 180);
        assert!(t.stats().remote_tasks >= 1, "{:?}", t.stats());
    });
}

fn scaled_total(x: &Buf, k: u64) -> u64 {
    k * x.0.iter().sum::<u64>()
}

#[test]
fn closures_cannot_be_scoped_to_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut x = 0u64;
        let err = spawn_datadeps(|dd| {
            let x = dd.data(&mut x);
            dd.spawn_with(
                Options::new().scope(Scope::worker(1)).name("closure"),
                |x: &mut u64| *x += 1,
                (InOut(x),),
            );
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot run in another process"),
            "{err}"
        );
        assert_eq!(x, 0);
    });
}

#[test]
fn a_worker_lost_mid_region_is_an_error() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut b = Buf(vec![1; 100]);
        let killer = ctx.clone();
        let err = spawn_datadeps(|dd| {
            let b = dd.data(&mut b);
            let token = dd.own(Buf(vec![0; 100]));
            let ones = dd.own(Buf(vec![1; 100]));
            // worker 1 writes `b`: its latest version lives only there ...
            let on1 = Options::new().scope(Scope::worker(1));
            dd.spawn_task_with(on1, add_into, (InOut(b), In(ones)));
            // ... a task here reads it (fetching a copy), then kills worker 1 ...
            dd.spawn(
                move |_b: &Buf, _t: &mut Buf| killer.kill_worker(WorkerId(1)).unwrap(),
                (In(b), InOut(token)),
            );
            // ... and then a task on worker 2 needs it from worker 1: the copy fails
            let on2 = Options::new().scope(Scope::worker(2)).name("reader");
            dd.spawn_task_with(on2, add_into, (InOut(token), In(b)));
        })
        .unwrap_err();
        assert!(err.to_string().contains("from process 1"), "{err}");
        assert!(err.to_string().contains("reader"), "{err}");
    });
}

#[dagger::task]
fn copy_of(x: &Buf) -> Buf {
    x.clone()
}

#[test]
fn a_result_lost_with_its_worker_is_a_clear_error() {
    let ctx = cluster();
    ctx.enter(|| {
        let killer = ctx.clone();
        let err = spawn_datadeps(|dd| {
            let token = dd.own(Buf(vec![3; 10_000]));
            // a large result kept in worker 1 ...
            let on1 = Options::new().scope(Scope::worker(1)).name("maker");
            let made = dd.spawn_task_with(on1, copy_of, (In(token),));
            // ... which a task here kills afterwards ...
            dd.spawn(
                move |_t: &mut Buf| killer.kill_worker(WorkerId(1)).unwrap(),
                (InOut(token),),
            );
            // ... before a task here reads the result
            dd.spawn(|b: &Buf, _t: &Buf| b.0.len(), (made, In(token)));
        })
        .unwrap_err();
        let e = err.to_string();
        assert!(
            e.contains("bringing the result of maker here from worker 1 failed"),
            "{e}"
        );
    });
}

/// Never returns (its worker is killed while it runs).
#[dagger::task]
fn hang(x: &mut Buf) {
    x.0.push(1);
    loop {
        std::thread::park();
    }
}

#[test]
fn a_worker_lost_while_running_a_region_task_is_an_error() {
    let ctx = cluster();
    let region = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            ctx.enter(|| {
                let mut b = Buf(vec![0; 10]);
                spawn_datadeps(|dd| {
                    let b = dd.data(&mut b);
                    let on1 = Options::new().scope(Scope::worker(1)).name("hanging");
                    dd.spawn_task_with(on1, hang, (InOut(b),));
                    dd.spawn_task(total, (In(b),));
                })
                .map(|()| b)
            })
        })
    };
    // wait (bounded) until worker 1 runs the task, then kill it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ctx.worker_stats(WorkerId(1)).unwrap().running == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ctx.kill_worker(WorkerId(1)).unwrap();
    let err = region.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("hanging"), "{err}");
    assert!(err.to_string().contains("worker 1"), "{err}");
}

// ---- views (slices, blocks, parts) in worker processes ----

#[dagger::task]
fn add_slice(dst: &mut [u64], src: &[u64]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

#[dagger::task]
fn slice_total(x: &[u64]) -> u64 {
    x.iter().sum()
}

#[dagger::task]
fn slice_worker(_x: &[u64]) -> u32 {
    dagger::current_processor().worker.0
}

#[test]
fn views_of_a_slice_run_in_workers_and_bring_home_only_their_elements() {
    let ctx = cluster();
    ctx.enter(|| {
        const N: usize = 1000;
        let big = 1u64 << 40; // 6 bytes encoded: the element counts show in the bytes
        let mut v = vec![big; N];
        let ones = vec![1u64; N];
        let t = Transfers::new();
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let (total, place) = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let (v, ones) = (dd.slice(&mut v), dd.read_slice(&ones));
            // the two halves are written on different workers at the same time
            let a = dd.spawn_task_with(
                on(1),
                add_slice,
                (InOut(v.view(..N / 2)), ones.view(..N / 2)),
            );
            let b = dd.spawn_task_with(
                on(2),
                add_slice,
                (InOut(v.view(N / 2..)), ones.view(N / 2..)),
            );
            assert!(dd.dependencies(b.index()).is_empty());
            // rows 0..4 again, on worker 2: after the first only
            let c = dd.spawn_task_with(on(2), add_slice, (InOut(v.view(..4)), ones.view(..4)));
            assert_eq!(dd.dependencies(c.index()), vec![a.index()]);
            let total = dd.spawn_task_with(on(1), slice_total, (v,));
            let place = dd.spawn_task_with(on(2), slice_worker, (v.view(10..20),));
            (total, place)
        })
        .unwrap();
        assert_eq!(v[..4], [big + 2; 4]);
        assert!(
            v[4..].iter().all(|&x| x == big + 1),
            "both halves came home"
        );
        assert_eq!(total.fetch().unwrap(), N as u64 * (big + 1) + 4);
        assert_eq!(place.fetch().unwrap(), 2);
        let s = t.stats();
        assert_eq!(s.remote_tasks, 5, "{s:?}");
        // each task sends its views (2 + 2 + 2 + 1 + 1), and the three written views come
        // home: 500 + 500 + 4 elements of 6 bytes, not three whole buffers
        assert_eq!(
            (s.sent, s.written_back, s.moved, s.fetched),
            (8, 3, 0, 0),
            "{s:?}"
        );
        let elems = (N / 2 + N / 2 + 4) as u64;
        assert!(
            s.written_back_bytes >= 6 * elems && s.written_back_bytes < 6 * elems + 16,
            "{s:?}"
        );
    });
}

#[dagger::task]
fn tile_mix(mut t: BlockMut<'_, f64>, src: BlockRef<'_, f64>, salt: f64) {
    for j in 0..t.ncols() {
        for i in 0..t.nrows() {
            *t.get_mut(i, j) = tile_elem(*t.get_mut(i, j), *src.get(i, j), i, j, salt);
        }
    }
}

#[dagger::task]
fn tile_sum(t: BlockRef<'_, f64>) -> f64 {
    (0..t.ncols()).map(|j| t.col(j).iter().sum::<f64>()).sum()
}

fn tile_elem(x: f64, s: f64, i: usize, j: usize, salt: f64) -> f64 {
    x * 0.5 + s + (i * 10 + j) as f64 + salt
}

/// The tile kernel on a plain column-major `n` x `n` matrix (the sequential reference).
fn tile_mix_plain(
    m: &mut [f64],
    n: usize,
    dst: (usize, usize),
    src: (usize, usize),
    tb: usize,
    salt: f64,
) {
    for j in 0..tb {
        for i in 0..tb {
            let s = m[(src.1 * tb + j) * n + src.0 * tb + i];
            let d = &mut m[(dst.1 * tb + j) * n + dst.0 * tb + i];
            *d = tile_elem(*d, s, i, j, salt);
        }
    }
}

#[test]
fn tiles_of_a_matrix_run_in_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let (n, tb) = (8, 4);
        let start: Vec<f64> = (0..n * n).map(|x| x as f64).collect();
        // (dst tile, src tile, salt, worker)
        let steps = [
            ((0, 0), (1, 1), 1.0, 1),
            ((1, 1), (0, 1), 2.0, 2),
            ((1, 0), (0, 0), 3.0, 2),
            ((0, 1), (1, 0), 4.0, 1),
        ];
        let mut want = start.clone();
        for &(d, s, salt, _) in &steps {
            tile_mix_plain(&mut want, n, d, s, tb, salt);
        }
        let mut m = start.clone();
        let t = Transfers::new();
        let sum = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let a = dd.matrix(&mut m, n, n);
            for &(d, s, salt, w) in &steps {
                dd.spawn_task_with(
                    Options::new().scope(Scope::worker(w)),
                    tile_mix,
                    (
                        InOut(a.tile(d.0, d.1, tb, tb)),
                        In(a.tile(s.0, s.1, tb, tb)),
                        Val(salt),
                    ),
                );
            }
            dd.spawn_task_with(
                Options::new().scope(Scope::worker(1)),
                tile_sum,
                (a.block(2..6, 1..7),),
            )
        })
        .unwrap();
        assert_eq!(m, want);
        let mut inner = 0.0;
        for j in 1..7 {
            for i in 2..6 {
                inner += want[j * n + i];
            }
        }
        assert_eq!(sum.fetch().unwrap(), inner);
        let s = t.stats();
        assert_eq!((s.remote_tasks, s.sent, s.written_back), (5, 9, 4), "{s:?}");
    });
}

// (the parts of `Halves` are lent as `&Vec<u64>` and `&mut Vec<u64>`)
#[allow(clippy::ptr_arg)]
#[dagger::task]
fn scale_half(h: &mut Vec<u64>, k: u64) {
    h.iter_mut().for_each(|x| *x = x.wrapping_mul(k));
}

#[allow(clippy::ptr_arg)]
#[dagger::task]
fn add_half(dst: &mut Vec<u64>, src: &Vec<u64>) {
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, s)| *d = d.wrapping_add(*s));
}

#[test]
fn parts_of_a_value_run_in_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut h = Halves {
            lo: vec![1; 100],
            hi: vec![2; 100],
        };
        let t = Transfers::new();
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let total = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let h = dd.data(&mut h);
            let (lo, hi) = (h.part(Half::Lo), h.part(Half::Hi));
            // the halves change on different workers at the same time
            dd.spawn_task_with(on(1), scale_half, (InOut(lo), Val(3u64)));
            let b = dd.spawn_task_with(on(2), scale_half, (InOut(hi), Val(5u64)));
            assert!(dd.dependencies(b.index()).is_empty());
            // the whole value on worker 1 (a cached copy), then a part on worker 2: home
            // fetches the whole value from worker 1 first
            dd.spawn_task_with(on(1), mix, (In(dd.own(h_zero())), InOut(h), Val(1u64)));
            dd.spawn_task_with(on(2), add_half, (InOut(hi), In(lo)));
            dd.spawn_task_with(on(1), sum_halves, (In(h),))
        })
        .unwrap();
        let mut want = Halves {
            lo: vec![3; 100],
            hi: vec![10; 100],
        };
        mix(&h_zero(), &mut want, 1);
        let lo = want.lo.clone();
        add_half(&mut want.hi, &lo);
        assert_eq!(h, want);
        assert_eq!(total.fetch().unwrap(), sum_halves(&want));
        let s = t.stats();
        // sent: lo, hi, the zero value and h (whole, to worker 1), hi and lo (for add_half),
        // then h again to worker 1 (home has the latest version); fetched: h from worker 1
        assert_eq!((s.sent, s.fetched, s.moved), (7, 1, 0), "{s:?}");
        // written back: the three parts written in workers; the whole value's latest version
        // is home at the end
        assert_eq!(s.written_back, 3, "{s:?}");
    });
}

fn h_zero() -> Halves {
    Halves {
        lo: vec![0; 100],
        hi: vec![0; 100],
    }
}

#[test]
fn an_unregistered_function_on_views_is_refused_for_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let mut v = vec![0u64; 4];
        let err = spawn_datadeps(|dd| {
            let v = dd.slice(&mut v);
            dd.spawn_task(|x: &mut [u64]| x.fill(1), (InOut(v.view(..2)),));
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("not a #[dagger::task] function"),
            "{err}"
        );
        assert_eq!(v, [0; 4]);
        // an empty view is fine
        spawn_datadeps(|dd| {
            let v = dd.slice(&mut v);
            let on1 = Options::new().scope(Scope::worker(1));
            dd.spawn_task_with(on1, add_slice, (InOut(v.view(2..2)), v.view(..0)));
        })
        .unwrap();
    });
}

// ---- chunks in workers as region data ----

#[dagger::task]
fn bump(x: &mut Buf, k: u64) {
    x.0.iter_mut().for_each(|v| *v += k);
}

#[test]
fn chunks_in_workers_are_changed_where_they_live() {
    let ctx = cluster();
    ctx.enter(|| {
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let c = dagger::tochunk_on(Buf((0..1000).collect()), Scope::worker(1)).unwrap();
        assert_eq!(c.processor().worker, WorkerId(1));

        // changed twice and read on worker 1, where the chunk lives: nothing crosses a
        // process boundary (the region copies the value inside worker 1), and the result is
        // a new chunk in worker 1
        let t = Transfers::new();
        let (out, sum) = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_chunk(&c).unwrap();
            dd.spawn_task_with(on(1), bump, (InOut(d), Val(2u64)));
            dd.spawn_task_with(on(1), bump, (InOut(d), Val(3u64)));
            let sum = dd.spawn_task_with(on(1), total, (In(d),));
            (dd.output_chunk(d), sum)
        })
        .unwrap();
        let s = t.stats();
        assert_eq!(
            (s.sent, s.fetched, s.written_back, s.moved, s.remote_tasks),
            (0, 0, 0, 1, 3),
            "{s:?}"
        );
        let new = out.into_inner().expect("a chunk");
        assert_eq!(new.processor().worker, WorkerId(1), "it stays in worker 1");
        assert_eq!(sum.fetch().unwrap(), (0..1000u64).sum::<u64>() + 5 * 1000);
        assert_eq!(new.fetch().unwrap().0[10], 15);
        assert_eq!(
            c.fetch().unwrap().0[10],
            10,
            "the chunk itself is not changed"
        );

        // changed on worker 2 (copied there from worker 1 directly), taken out as a value
        let t = Transfers::new();
        let out = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_chunk(&new).unwrap();
            dd.spawn_task_with(on(2), bump, (InOut(d), Val(1u64)));
            dd.output(d)
        })
        .unwrap();
        let s = t.stats();
        assert_eq!(
            (s.sent, s.fetched, s.moved, s.written_back),
            (0, 0, 1, 1),
            "{s:?}"
        );
        assert_eq!(out.into_inner().unwrap().0[10], 16);

        // a task here needs it here first; the last change, on worker 2, stays there
        let t = Transfers::new();
        let out = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_chunk(&new).unwrap();
            dd.spawn(|b: &mut Buf| b.0[0] = 99, (InOut(d),));
            dd.spawn_task_with(on(2), bump, (InOut(d), Val(1u64)));
            dd.output_chunk(d)
        })
        .unwrap();
        let s = t.stats();
        assert_eq!((s.fetched, s.sent, s.written_back), (1, 1, 0), "{s:?}");
        let last = out.into_inner().unwrap();
        assert_eq!(last.processor().worker, WorkerId(2));
        let v = last.fetch().unwrap();
        assert_eq!((v.0[0], v.0[10]), (100, 16));

        // no task at all: `output` brings the value here, `output_chunk` gives the chunk
        let (value, chunk) = spawn_datadeps(|dd| {
            let d = dd.own_chunk(&last).unwrap();
            let e = dd.own_chunk(&last).unwrap();
            (dd.output(d), dd.output_chunk(e))
        })
        .unwrap();
        assert_eq!(value.into_inner().expect("a value").0[..2], [100, 7]);
        assert_eq!(chunk.into_inner().unwrap().processor().worker, WorkerId(2));

        // only tasks here: the value comes here before they start
        let out = spawn_datadeps(|dd| {
            let d = dd.own_chunk(&last).unwrap();
            dd.spawn(|b: &mut Buf| b.0[1] += 1, (InOut(d),));
            dd.output_chunk(d)
        })
        .unwrap();
        let here = out.into_inner().unwrap();
        assert_eq!(here.processor().worker, WorkerId(0));
        assert_eq!(here.fetch().unwrap().0[..2], [100, 8]);

        // nobody changes it: the same chunk comes out; nobody takes it out: nothing moves
        let t = Transfers::new();
        let same = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_chunk(&last).unwrap();
            let unused = dd.own_chunk(&last).unwrap();
            dd.spawn_task_with(on(1), total, (In(d),));
            dd.spawn_task_with(on(1), bump, (InOut(unused), Val(1u64)));
            dd.output_chunk(d)
        })
        .unwrap();
        let same = same.into_inner().unwrap();
        assert_eq!(same.processor().worker, WorkerId(2));
        assert_eq!(same.fetch().unwrap(), last.fetch().unwrap());
        let s = t.stats();
        assert_eq!(
            (s.sent, s.fetched, s.written_back, s.moved),
            (0, 0, 0, 2),
            "{s:?}"
        );
    });
}

// ---- `Out` overwrites: no old contents sent ----

#[dagger::task]
fn set_all(x: &mut Buf, k: u64) {
    x.0.iter_mut().for_each(|v| *v = k);
}

/// The same program with `Out` or `InOut` on the tasks that overwrite `x`: its transfers and
/// what the tasks reading `x` saw.
fn overwrite_program(out: bool) -> (TransferStats, Vec<u64>, Buf) {
    let on = |w: u32| Options::new().scope(Scope::worker(w));
    let mut x = Buf(vec![1; 10_000]);
    let t = Transfers::new();
    let sums = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
        let x = dd.data(&mut x);
        // sent to worker 1, then changed here: worker 1 holds an older copy
        let a = dd.spawn_task_with(on(1), total, (In(x),));
        dd.spawn(|x: &mut Buf| x.0[0] = 5, (InOut(x),));
        // overwritten in worker 1 (with `Out`: its older copy, nothing sent), read in
        // worker 2 (pulled from worker 1)
        if out {
            dd.spawn_task_with(on(1), set_all, (Out(x), Val(9u64)));
        } else {
            dd.spawn_task_with(on(1), set_all, (InOut(x), Val(9u64)));
        }
        let b = dd.spawn_task_with(on(2), total, (In(x),));
        // overwritten here (with `Out`: not fetched first), read in worker 1 (sent)
        let three = |x: &mut Buf| x.0.iter_mut().for_each(|v| *v = 3);
        if out {
            dd.spawn(three, (Out(x),));
        } else {
            dd.spawn(three, (InOut(x),));
        }
        let c = dd.spawn_task_with(on(1), total, (In(x),));
        vec![a, b, c]
    })
    .unwrap();
    let sums = sums.iter().map(|s| s.fetch().unwrap()).collect();
    (t.stats(), sums, x)
}

#[test]
fn out_sends_no_old_contents_where_an_older_copy_is() {
    let ctx = cluster();
    ctx.enter(|| {
        let (inout, sums_inout, x_inout) = overwrite_program(false);
        let (out, sums_out, x_out) = overwrite_program(true);
        assert_eq!(sums_out, vec![10_000, 90_000, 30_000]);
        assert_eq!((sums_inout, x_inout), (sums_out, x_out.clone()));
        assert_eq!(x_out.0, vec![3; 10_000]);
        assert_eq!(
            (inout.sent, inout.fetched, inout.moved, inout.written_back),
            (3, 1, 1, 0),
            "{inout:?}"
        );
        assert_eq!(
            (out.sent, out.fetched, out.moved, out.written_back),
            (2, 0, 1, 0),
            "{out:?}"
        );
        assert!(
            out.sent_bytes < inout.sent_bytes && out.sent_bytes >= 2 * 10_000,
            "{out:?} {inout:?}"
        );
    });
}

#[dagger::task]
fn fill_n(x: &mut Buf, n: u64, k: u64) {
    x.0 = vec![k; n as usize];
}

/// Overwrites `x` in worker 2 (which holds no copy) and reads it there: what was sent, the
/// sum read, and `x` after the region.
fn fresh_program(out_default: bool) -> (TransferStats, u64, Buf) {
    let on2 = || Options::new().scope(Scope::worker(2));
    let mut x = Buf(vec![1; 10_000]);
    let t = Transfers::new();
    let sum = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
        let mut d = dd.data(&mut x);
        if out_default {
            d = dd.out_default(d);
        }
        dd.spawn_task_with(on2(), fill_n, (Out(d), Val(5_000u64), Val(9u64)));
        dd.spawn_task_with(on2(), total, (In(d),))
    })
    .unwrap();
    (t.stats(), sum.fetch().unwrap(), x)
}

#[test]
fn out_default_makes_the_value_in_the_worker() {
    let ctx = cluster();
    ctx.enter(|| {
        let (sent, sum_sent, x_sent) = fresh_program(false);
        let (made, sum_made, x_made) = fresh_program(true);
        assert_eq!((sum_made, &x_made), (45_000, &Buf(vec![9; 5_000])));
        assert_eq!((sum_sent, x_sent), (sum_made, x_made));
        // without: the old contents go to worker 2; with: only `Buf::default()`'s encoding
        assert_eq!((sent.sent, sent.written_back), (1, 1), "{sent:?}");
        assert!(sent.sent_bytes >= 10_000, "{sent:?}");
        assert_eq!((made.sent, made.written_back), (1, 1), "{made:?}");
        assert!(made.sent_bytes < 8, "{made:?}");
    });
}

// ---- results of earlier tasks as region data ----

#[dagger::task]
fn make_buf(n: u64) -> Buf {
    Buf((0..n).collect())
}

#[dagger::task]
fn no_buf() -> Buf {
    panic!("no buffer")
}

#[dagger::task]
fn sum_all(xs: Vec<&Buf>) -> u64 {
    xs.iter().map(|x| total(x)).fold(0, u64::wrapping_add)
}

#[dagger::task]
fn count_all(xs: Vec<&Vec<u64>>) -> usize {
    xs.iter().map(|x| x.len()).sum()
}

#[test]
fn results_of_tasks_in_workers_are_used_where_they_live() {
    let ctx = cluster();
    ctx.enter(|| {
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let made = dagger::spawn!(make_buf(1000); scope = Scope::worker(1));
        let base = (0..1000u64).sum::<u64>();

        // read in worker 1 (copied inside worker 1), changed in worker 2 (pulled from worker 1
        // directly), read again in worker 2 with another value in a `Vec<&Buf>`: nothing
        // passes through here, and the result stays in worker 2
        let mut other = Buf(vec![5; 1000]);
        let t = Transfers::new();
        let (out, s1, s2) = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_task(made.clone()).unwrap();
            let other = dd.data(&mut other);
            let s1 = dd.spawn_task_with(on(1), total, (In(d),));
            dd.spawn_task_with(on(2), bump, (InOut(d), Val(1u64)));
            let s2 = dd.spawn_task_with(on(2), sum_all, (In(vec![d, other]),));
            (dd.output_chunk(d), s1, s2)
        })
        .unwrap();
        let s = t.stats();
        // `other` alone is sent from here; the result moves inside worker 1 and to worker 2
        assert_eq!(
            (s.sent, s.fetched, s.written_back, s.moved, s.remote_tasks),
            (1, 0, 0, 2, 3),
            "{s:?}"
        );
        assert_eq!(s1.fetch().unwrap(), base);
        assert_eq!(s2.fetch().unwrap(), base + 1000 + 5 * 1000);
        let out = out.into_inner().expect("a chunk");
        assert_eq!(out.processor().worker, WorkerId(2), "it stays in worker 2");
        assert_eq!(out.fetch().unwrap().0[10], 11);
        assert_eq!(
            made.fetch().unwrap().0[10],
            10,
            "the task's result is unchanged"
        );
        assert_eq!(other.0, vec![5; 1000], "read only");

        // a task here brings it here; taken out as a value
        let t = Transfers::new();
        let out = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let d = dd.own_task(made.clone()).unwrap();
            dd.spawn(|b: &mut Buf| b.0[0] = 7, (InOut(d),));
            dd.spawn_task_with(on(2), bump, (InOut(d), Val(1u64)));
            dd.output(d)
        })
        .unwrap();
        let s = t.stats();
        assert_eq!((s.fetched, s.sent, s.written_back), (1, 1, 1), "{s:?}");
        let v = out.into_inner().unwrap();
        assert_eq!((v.0[0], v.0[10]), (8, 11));

        // a failed task's error is returned
        let failed = dagger::spawn!(no_buf(); scope = Scope::worker(1));
        let err = spawn_datadeps(|dd| dd.own_task(failed).map(|_| ()))
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("no buffer"), "{err}");
    });
}

#[dagger::task]
fn add_scalar(acc: &mut Buf, k: &u64) {
    acc.0.iter_mut().for_each(|a| *a = a.wrapping_add(*k));
}

#[test]
fn results_of_region_tasks_are_sent_with_tasks_in_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let mut acc = Buf(vec![1; 100]);
        let x = Buf((0..100).collect());
        let t = Transfers::new();
        spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let (acc, x) = (dd.data(&mut acc), dd.read(&x));
            // a result made in worker 1, one made here: both read by tasks in worker 2
            let s = dd.spawn_task_with(on(1), total, (In(x),));
            let here = dd.spawn(|x: &Buf| x.0[3], (In(x),));
            dd.spawn_task_with(on(2), add_scalar, (InOut(acc), s));
            dd.spawn_task_with(on(2), add_scalar, (InOut(acc), here));
        })
        .unwrap();
        assert_eq!(acc.0[0], 1 + 4950 + 3);
        let s = t.stats();
        // x to worker 1, acc to worker 2, the two results with their tasks
        assert_eq!((s.sent, s.remote_tasks), (4, 3), "{s:?}");
        // a failed task's dependents fail without running
        let err = spawn_datadeps(|dd| {
            let (acc, x) = (dd.data(&mut acc), dd.read(&x));
            let s = dd.spawn(|_x: &Buf| -> u64 { panic!("no scalar") }, (In(x),));
            dd.spawn_task_with(on(2), add_scalar, (InOut(acc), s));
        })
        .unwrap_err();
        assert!(err.to_string().contains("no scalar"), "{err}");
        assert_eq!(acc.0[0], 1 + 4950 + 3);
    });
}

#[test]
fn results_of_region_tasks_stay_in_the_worker_that_made_them() {
    let ctx = cluster();
    ctx.enter(|| {
        let on = |w: u32| Options::new().scope(Scope::worker(w));
        let base = (0..10_000u64).sum::<u64>();
        // a large result made in worker 1: read there (nothing moves), in worker 2 (pulled
        // from worker 1 directly), and here by a closure (fetched once)
        let t = Transfers::new();
        let (made, s1, s2, here) =
            spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
                let made = dd.spawn_task_with(on(1), make_buf, (Val(10_000u64),));
                let s1 = dd.spawn_task_with(on(1), total, (made.clone(),));
                let s2 = dd.spawn_task_with(on(2), total, (made.clone(),));
                let here = dd.spawn(|b: &Buf| b.0[7], (made.clone(),));
                (made, s1, s2, here)
            })
            .unwrap();
        let s = t.stats();
        assert_eq!(
            (s.sent, s.moved, s.fetched, s.written_back, s.remote_tasks),
            (0, 1, 1, 0, 3),
            "{s:?}"
        );
        assert!(
            s.moved_bytes >= 10_000 && s.fetched_bytes >= 10_000,
            "{s:?}"
        );
        assert_eq!((s1.fetch().unwrap(), s2.fetch().unwrap()), (base, base));
        assert_eq!(here.fetch().unwrap(), 7);
        assert_eq!(made.fetch().unwrap().0[9_999], 9_999);

        // only tasks in workers read it: it never comes here during the region, and is
        // fetched when the handle is read after it
        let t = Transfers::new();
        let (made, s2) = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let made = dd.spawn_task_with(on(2), make_buf, (Val(10_000u64),));
            let s2 = dd.spawn_task_with(on(2), total, (made.clone(),));
            let s1 = dd.spawn_task_with(on(1), total, (made.clone(),));
            (made, (s2, s1))
        })
        .unwrap();
        let s = t.stats();
        assert_eq!((s.sent, s.moved, s.fetched), (0, 1, 0), "{s:?}");
        assert_eq!((s2.0.fetch().unwrap(), s2.1.fetch().unwrap()), (base, base));
        assert_eq!(made.into_value().unwrap().0.len(), 10_000);
    });
}

#[test]
fn vecs_of_handles_read_reach_workers() {
    let ctx = cluster();
    ctx.enter(|| {
        let (mut a, mut b) = (Buf(vec![1; 3]), Buf(vec![2; 3]));
        // (a `Vec` written, or passed for a parameter that is not a `Vec<&T>`, does not
        // compile: the function must take what `spawn` would give it)
        // parts (views): their elements are sent with the task, after a task here changed
        // one of them
        let mut h = Halves {
            lo: vec![1; 2],
            hi: vec![2; 3],
        };
        let t = Transfers::new();
        let n = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let h = dd.data(&mut h);
            dd.spawn(|x: &mut Vec<u64>| x.push(9), (InOut(h.part(Half::Lo)),));
            let on2 = Scope::worker(2);
            dagger::spawn!(dd, count_all(vec![h.part(Half::Lo), h.part(Half::Hi)]); scope = on2)
        })
        .unwrap();
        assert_eq!(n.fetch().unwrap(), 6);
        let s = t.stats();
        assert_eq!((s.sent, s.remote_tasks), (2, 1), "{s:?}");
        // read: runs in a worker, each value copied there once
        let t = Transfers::new();
        let sums = spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |dd| {
            let (a, b) = (dd.data(&mut a), dd.data(&mut b));
            let on1 = Options::new().scope(Scope::worker(1));
            dd.spawn_task_with(on1.clone(), bump, (InOut(a), Val(10u64)));
            let x = dd.spawn_task_with(on1.clone(), sum_all, (In(vec![a, b, a]),));
            let y = dd.spawn_task_with(on1, sum_all, (vec![b],));
            (x, y)
        })
        .unwrap();
        assert_eq!(sums.0.fetch().unwrap(), 33 + 6 + 33);
        assert_eq!(sums.1.fetch().unwrap(), 6);
        let s = t.stats();
        assert_eq!((s.sent, s.remote_tasks, s.written_back), (2, 3, 1), "{s:?}");
        assert_eq!(a.0, vec![11; 3]);
    });
}

// ---- property test: random programs over buffers, in workers and here ----

/// A buffer of two halves that tasks here may also access separately (as parts, ordered by
/// their masks against the whole-buffer accesses of tasks in workers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Halves {
    lo: Vec<u64>,
    hi: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Half {
    Lo,
    Hi,
}

// SAFETY: the two parts are different fields, reached through the raw pointer.
unsafe impl dagger::Parts for Halves {
    type Part = Half;
    type Ref<'a> = &'a Vec<u64>;
    type Mut<'a> = &'a mut Vec<u64>;
    fn mask(part: Half) -> u64 {
        match part {
            Half::Lo => 1,
            Half::Hi => 2,
        }
    }
    unsafe fn part_ref<'a>(this: *const Self, part: Half) -> &'a Vec<u64> {
        // SAFETY: forwarded; disjoint fields.
        unsafe {
            match part {
                Half::Lo => &(*this).lo,
                Half::Hi => &(*this).hi,
            }
        }
    }
    unsafe fn part_mut<'a>(this: *mut Self, part: Half) -> &'a mut Vec<u64> {
        // SAFETY: forwarded; disjoint fields.
        unsafe {
            match part {
                Half::Lo => &mut (*this).lo,
                Half::Hi => &mut (*this).hi,
            }
        }
    }
}

impl Halves {
    fn all_mut(&mut self) -> impl Iterator<Item = &mut u64> {
        self.lo.iter_mut().chain(self.hi.iter_mut())
    }
    fn all(&self) -> impl Iterator<Item = &u64> {
        self.lo.iter().chain(self.hi.iter())
    }
}

/// A range of the flat buffer (possibly empty).
type Span = (usize, usize);
/// A tile of the matrix (row, column).
type Tile = (usize, usize);

#[derive(Clone, Debug)]
enum Op {
    /// a := salt pattern (Out, in a worker or here)
    Fill(usize, u64),
    /// b := b * K + a + salt (In a, InOut b)
    Mix(usize, usize, u64),
    /// c := c ^ (a + b) (In a, In b, InOut c)
    Mix2(usize, usize, usize, u64),
    /// a closure here on the whole buffer: a := rotate(a) + salt
    Local(usize, u64),
    /// a closure here on one half (a part) of the buffer
    LocalHalf(usize, bool, u64),
    /// the sum of a (a result)
    Sum(usize),
    /// a registered function on one half (a part), in a worker or here
    Half(usize, bool, u64),
    /// half y of b from half x of a (parts; In and InOut)
    HalfMix(usize, bool, usize, bool, u64),
    /// a view of the flat buffer from a half (a part)
    SliceFromHalf(Span, usize, bool, u64),
    /// a half from a view of the flat buffer
    HalfFromSlice(usize, bool, Span),
    /// a closure here on a view of the flat buffer
    LocalSlice(Span, u64),
    /// the sum of a view of the flat buffer (a result)
    SliceSum(Span),
    /// a tile of the matrix from another tile
    TileMix(Tile, Tile, u64),
    /// the sum of a block of the matrix (rows, columns; a result)
    BlockSum(Span, Span),
    /// a task's result: a copy of a buffer, large enough to be kept in a worker
    Snap(usize),
    /// the last `Snap`'s result mixed into a buffer, by a task in a worker or (`true`) here
    UseSnap(usize, u64, bool),
}

/// A buffer as it was, padded past the size of results that travel with their report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Snap {
    h: Halves,
    pad: Vec<u8>,
}

#[dagger::task]
fn snapshot(a: &Halves) -> Snap {
    Snap {
        h: a.clone(),
        pad: vec![0; 600],
    }
}

#[dagger::task]
fn mix_snap(s: &Snap, b: &mut Halves, salt: u64) {
    mix(&s.h, b, salt)
}

const BUFS: usize = 4;
const LEN: usize = 4;
const FLAT: usize = 8;
/// The matrix is `DIM` x `DIM` in `TB` x `TB` tiles.
const DIM: usize = 4;
const TB: usize = 2;

#[dagger::task]
fn fill(a: &mut Halves, salt: u64) {
    for (i, x) in a.all_mut().enumerate() {
        *x = salt.wrapping_mul(i as u64 + 1);
    }
}

#[dagger::task]
fn mix(a: &Halves, b: &mut Halves, salt: u64) {
    for (y, x) in b.all_mut().zip(a.all()) {
        *y = y
            .wrapping_mul(0x100000001b3)
            .wrapping_add(*x)
            .wrapping_add(salt);
    }
}

#[dagger::task]
fn mix2(a: &Halves, b: &Halves, c: &mut Halves, salt: u64) {
    for ((z, x), y) in c.all_mut().zip(a.all()).zip(b.all()) {
        *z ^= x.wrapping_add(*y).rotate_left((salt % 64) as u32);
    }
}

#[dagger::task]
fn sum_halves(a: &Halves) -> u64 {
    a.all().fold(0, |s, x| s.wrapping_add(*x))
}

fn local(a: &mut Halves, salt: u64) {
    a.lo.rotate_left(1);
    std::mem::swap(&mut a.lo, &mut a.hi);
    a.all_mut().for_each(|x| *x = x.wrapping_add(salt));
}

fn local_half(h: &mut [u64], salt: u64) {
    h.iter_mut()
        .for_each(|x| *x = x.wrapping_mul(3).wrapping_add(salt));
}

#[allow(clippy::ptr_arg)]
#[dagger::task]
fn remote_half(h: &mut Vec<u64>, salt: u64) {
    h.iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = x.rotate_left(7) ^ salt.wrapping_add(i as u64));
}

#[allow(clippy::ptr_arg)]
#[dagger::task]
fn mix_half(x: &Vec<u64>, y: &mut Vec<u64>, salt: u64) {
    for (b, a) in y.iter_mut().zip(x) {
        *b = b.wrapping_mul(31).wrapping_add(*a ^ salt);
    }
}

#[allow(clippy::ptr_arg)]
#[dagger::task]
fn slice_from_half(dst: &mut [u64], src: &Vec<u64>, salt: u64) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = d.wrapping_mul(5) ^ src[i % src.len()].wrapping_add(salt);
    }
}

#[allow(clippy::ptr_arg)]
#[dagger::task]
fn half_from_slice(dst: &mut Vec<u64>, src: &[u64]) {
    if src.is_empty() {
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = d.wrapping_add(src[i % src.len()]).rotate_right(3);
    }
}

fn local_slice(x: &mut [u64], salt: u64) {
    x.iter_mut().for_each(|v| *v = v.wrapping_sub(salt));
}

#[dagger::task]
fn flat_sum(x: &[u64]) -> u64 {
    x.iter().fold(0, |s, v| s.wrapping_mul(3).wrapping_add(*v))
}

fn tile_u(x: u64, s: u64, i: usize, j: usize, salt: u64) -> u64 {
    x.wrapping_mul(7) ^ s.wrapping_add(salt).wrapping_add((i * 10 + j) as u64)
}

#[dagger::task]
fn tile_mix_u(mut t: BlockMut<'_, u64>, src: BlockRef<'_, u64>, salt: u64) {
    for j in 0..t.ncols() {
        for i in 0..t.nrows() {
            *t.get_mut(i, j) = tile_u(*t.get_mut(i, j), *src.get(i, j), i, j, salt);
        }
    }
}

#[dagger::task]
fn block_sum_u(b: BlockRef<'_, u64>) -> u64 {
    (0..b.ncols())
        .flat_map(|j| b.col(j).iter())
        .fold(0, |s, v| s.wrapping_mul(5).wrapping_add(*v))
}

fn span() -> impl Strategy<Value = Span> {
    (0..=FLAT, 0..=FLAT).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn dim_span() -> impl Strategy<Value = Span> {
    (0..=DIM, 0..=DIM).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let b = 0..BUFS;
    let tile = (0..DIM / TB, 0..DIM / TB);
    prop_oneof![
        (b.clone(), any::<u64>()).prop_map(|(a, s)| Op::Fill(a, s)),
        (b.clone(), b.clone(), any::<u64>())
            .prop_filter("distinct", |(a, b, _)| a != b)
            .prop_map(|(a, b, s)| Op::Mix(a, b, s)),
        (b.clone(), b.clone(), b.clone(), any::<u64>())
            .prop_filter("distinct", |(a, b, c, _)| a != c && b != c)
            .prop_map(|(a, b, c, s)| Op::Mix2(a, b, c, s)),
        (b.clone(), any::<u64>()).prop_map(|(a, s)| Op::Local(a, s)),
        (b.clone(), any::<bool>(), any::<u64>()).prop_map(|(a, h, s)| Op::LocalHalf(a, h, s)),
        b.clone().prop_map(Op::Sum),
        b.clone().prop_map(Op::Snap),
        (b.clone(), any::<u64>(), any::<bool>()).prop_map(|(a, s, h)| Op::UseSnap(a, s, h)),
        (b.clone(), any::<bool>(), any::<u64>()).prop_map(|(a, h, s)| Op::Half(a, h, s)),
        (
            b.clone(),
            any::<bool>(),
            b.clone(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_filter("distinct", |(a, x, b, y, _)| a != b || x != y)
            .prop_map(|(a, x, b, y, s)| Op::HalfMix(a, x, b, y, s)),
        (span(), b.clone(), any::<bool>(), any::<u64>())
            .prop_map(|(r, a, h, s)| Op::SliceFromHalf(r, a, h, s)),
        (b.clone(), any::<bool>(), span()).prop_map(|(a, h, r)| Op::HalfFromSlice(a, h, r)),
        (span(), any::<u64>()).prop_map(|(r, s)| Op::LocalSlice(r, s)),
        span().prop_map(Op::SliceSum),
        (tile.clone(), tile, any::<u64>())
            .prop_filter("distinct", |(a, b, _)| a != b)
            .prop_map(|(a, b, s)| Op::TileMix(a, b, s)),
        (dim_span(), dim_span()).prop_map(|(r, c)| Op::BlockSum(r, c)),
    ]
}

/// The region data: buffers with halves, a flat buffer, a column-major matrix.
#[derive(Clone, Debug, PartialEq)]
struct World {
    bufs: Vec<Halves>,
    flat: Vec<u64>,
    mat: Vec<u64>,
}

fn start() -> World {
    World {
        bufs: (0..BUFS)
            .map(|b| Halves {
                lo: vec![b as u64 + 1; LEN],
                hi: vec![b as u64 + 7; LEN],
            })
            .collect(),
        flat: (0..FLAT as u64).map(|i| i * 11 + 1).collect(),
        mat: (0..(DIM * DIM) as u64).map(|i| i * 13 + 2).collect(),
    }
}

fn half(h: &mut Halves, lo: bool) -> &mut Vec<u64> {
    if lo {
        &mut h.lo
    } else {
        &mut h.hi
    }
}

fn sequential(ops: &[Op]) -> (World, Vec<u64>) {
    let mut w = start();
    let bufs = &mut w.bufs;
    let mut sums = Vec::new();
    let mut snaps: Vec<Snap> = Vec::new();
    for op in ops {
        match *op {
            Op::Snap(a) => snaps.push(snapshot(&bufs[a])),
            Op::UseSnap(b, s, _) => {
                if let Some(x) = snaps.last() {
                    mix_snap(x, &mut bufs[b], s)
                }
            }
            Op::Fill(a, s) => fill(&mut bufs[a], s),
            Op::Mix(a, b, s) => {
                let x = bufs[a].clone();
                mix(&x, &mut bufs[b], s)
            }
            Op::Mix2(a, b, c, s) => {
                let (x, y) = (bufs[a].clone(), bufs[b].clone());
                mix2(&x, &y, &mut bufs[c], s)
            }
            Op::Local(a, s) => local(&mut bufs[a], s),
            Op::LocalHalf(a, lo, s) => local_half(half(&mut bufs[a], lo), s),
            Op::Sum(a) => sums.push(sum_halves(&bufs[a])),
            Op::Half(a, lo, s) => remote_half(half(&mut bufs[a], lo), s),
            Op::HalfMix(a, x, b, y, s) => {
                let src = half(&mut bufs[a], x).clone();
                mix_half(&src, half(&mut bufs[b], y), s)
            }
            Op::SliceFromHalf((r0, r1), a, lo, s) => {
                slice_from_half(&mut w.flat[r0..r1], half(&mut bufs[a], lo), s)
            }
            Op::HalfFromSlice(a, lo, (r0, r1)) => {
                half_from_slice(half(&mut bufs[a], lo), &w.flat[r0..r1])
            }
            Op::LocalSlice((r0, r1), s) => local_slice(&mut w.flat[r0..r1], s),
            Op::SliceSum((r0, r1)) => sums.push(flat_sum(&w.flat[r0..r1])),
            Op::TileMix(d, src, salt) => {
                for j in 0..TB {
                    for i in 0..TB {
                        let s = w.mat[(src.1 * TB + j) * DIM + src.0 * TB + i];
                        let x = &mut w.mat[(d.1 * TB + j) * DIM + d.0 * TB + i];
                        *x = tile_u(*x, s, i, j, salt);
                    }
                }
            }
            Op::BlockSum((r0, r1), (c0, c1)) => {
                let mut acc = 0u64;
                for c in c0..c1 {
                    for r in r0..r1 {
                        acc = acc.wrapping_mul(5).wrapping_add(w.mat[c * DIM + r]);
                    }
                }
                sums.push(acc);
            }
        }
    }
    (w, sums)
}

#[dagger::task]
fn same_halves(h: Halves) -> Halves {
    h
}

fn in_region(ops: &[Op], opts: DatadepsOptions) -> (World, Vec<u64>) {
    let mut w = start();
    // buffer 0 is a chunk in worker 1, taken into the region where it lives and out as a
    // chunk where the region leaves it; buffer 1 is the result of a task that ran in worker
    // 2, taken into the region where it lives and out as a value
    let chunk = dagger::tochunk_on(w.bufs[0].clone(), Scope::worker(1)).unwrap();
    let made = dagger::spawn!(same_halves(w.bufs[1].clone()); scope = Scope::worker(2));
    let World { bufs, flat, mat } = &mut w;
    let (sums, out, out1) = spawn_datadeps_with(opts, |dd| {
        let first = dd.own_chunk(&chunk).unwrap();
        let second = dd.own_task(made.clone()).unwrap();
        let h: Vec<_> = [first, second]
            .into_iter()
            .chain(bufs[2..].iter_mut().map(|b| dd.data(b)))
            .collect();
        let part = |a: usize, lo: bool| h[a].part(if lo { Half::Lo } else { Half::Hi });
        let flat = dd.slice(flat);
        let view = |(r0, r1): Span| flat.view(r0..r1);
        let m = dd.matrix(mat, DIM, DIM);
        let tile = |(i, j): Tile| m.tile(i, j, TB, TB);
        let mut sums = Vec::new();
        let mut snaps = Vec::new();
        for op in ops {
            match *op {
                Op::Snap(a) => snaps.push(dd.spawn_task(snapshot, (In(h[a]),))),
                Op::UseSnap(b, s, here) => {
                    if let Some(x) = snaps.last().cloned() {
                        if here {
                            dd.spawn(
                                move |x: &Snap, b: &mut Halves| mix_snap(x, b, s),
                                (x, InOut(h[b])),
                            );
                        } else {
                            dd.spawn_task(mix_snap, (x, InOut(h[b]), Val(s)));
                        }
                    }
                }
                Op::Fill(a, s) => {
                    dd.spawn_task(fill, (Out(h[a]), Val(s)));
                }
                Op::Mix(a, b, s) => {
                    dd.spawn_task(mix, (In(h[a]), InOut(h[b]), Val(s)));
                }
                Op::Mix2(a, b, c, s) => {
                    dd.spawn_task(mix2, (In(h[a]), In(h[b]), InOut(h[c]), Val(s)));
                }
                Op::Local(a, s) => {
                    dd.spawn(move |x: &mut Halves| local(x, s), (InOut(h[a]),));
                }
                Op::LocalHalf(a, lo, s) => {
                    dd.spawn(
                        move |x: &mut Vec<u64>| local_half(x, s),
                        (InOut(part(a, lo)),),
                    );
                }
                Op::Sum(a) => sums.push(dd.spawn_task(sum_halves, (In(h[a]),))),
                Op::Half(a, lo, s) => {
                    dd.spawn_task(remote_half, (InOut(part(a, lo)), Val(s)));
                }
                Op::HalfMix(a, x, b, y, s) => {
                    dd.spawn_task(mix_half, (In(part(a, x)), InOut(part(b, y)), Val(s)));
                }
                Op::SliceFromHalf(r, a, lo, s) => {
                    dd.spawn_task(slice_from_half, (InOut(view(r)), part(a, lo), Val(s)));
                }
                Op::HalfFromSlice(a, lo, r) => {
                    dd.spawn_task(half_from_slice, (InOut(part(a, lo)), view(r)));
                }
                Op::LocalSlice(r, s) => {
                    dd.spawn(move |x: &mut [u64]| local_slice(x, s), (InOut(view(r)),));
                }
                Op::SliceSum(r) => sums.push(dd.spawn_task(flat_sum, (view(r),))),
                Op::TileMix(d, src, s) => {
                    dd.spawn_task(tile_mix_u, (InOut(tile(d)), In(tile(src)), Val(s)));
                }
                Op::BlockSum((r0, r1), (c0, c1)) => {
                    sums.push(dd.spawn_task(block_sum_u, (m.block(r0..r1, c0..c1),)))
                }
            }
        }
        (sums, dd.output_chunk(first), dd.output(second))
    })
    .unwrap();
    w.bufs[0] = out.into_inner().unwrap().fetch().unwrap();
    w.bufs[1] = out1.into_inner().unwrap();
    assert_eq!(
        made.fetch().unwrap(),
        start().bufs[1],
        "the result is unchanged"
    );
    assert_eq!(
        chunk.fetch().unwrap(),
        start().bufs[0],
        "the chunk is unchanged"
    );
    (w, sums.iter().map(|s| s.fetch().unwrap()).collect())
}

fn moved(s: &TransferStats) -> u64 {
    s.sent + s.moved + s.fetched + s.written_back
}

#[test]
fn random_programs_across_workers_equal_a_sequential_run() {
    let ctx = cluster();
    let transfers = Transfers::new();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let strategy = (prop::collection::vec(op_strategy(), 1..30), 0..2u8, 0..3u8);
    runner
        .run(&strategy, |(ops, planner, traversal)| {
            let want = sequential(&ops);
            ctx.enter(|| {
                let opts =
                    DatadepsOptions::new()
                        .transfers(&transfers)
                        .traversal(match traversal {
                            0 => Traversal::InOrder,
                            1 => Traversal::Bfs,
                            _ => Traversal::Dfs,
                        });
                let opts = match planner {
                    0 => opts.planner(RoundRobin::default()),
                    _ => opts.planner(CostPlanner::new().with_remote_move_cost(0)),
                };
                let got = in_region(&ops, opts);
                prop_assert_eq!(&got, &want);
                Ok(())
            })
        })
        .unwrap();
    let s = transfers.stats();
    assert!(
        s.remote_tasks > 0 && moved(&s) > 0,
        "workers took part: {s:?}"
    );
    assert!(
        s.fetched > 0,
        "tasks here read data that workers wrote: {s:?}"
    );
}

// ---- tiled Cholesky across worker processes ----

#[path = "../../dagger-bench/src/tile_cholesky.rs"]
mod tile_cholesky;

#[test]
fn tiled_cholesky_across_workers_matches_faer() {
    use tile_cholesky::{factor, potrf_par, rel_error, spd, tiles};
    let (n, nb) = (1024, 128);
    let a = spd(n, faer::Par::Seq);
    let mut whole = a.clone();
    potrf_par(&mut whole, faer::Par::Seq);
    let ctx = cluster();
    ctx.enter(|| {
        for traversal in [Traversal::InOrder, Traversal::Dfs] {
            let mut t = tiles(&a, nb);
            let transfers = Transfers::new();
            factor(&mut t, spread().traversal(traversal).transfers(&transfers)).unwrap();
            let rel = rel_error(&t, &whole);
            assert!(rel < 1e-10, "relative error {rel:e} ({traversal:?})");
            let s = transfers.stats();
            assert!(
                s.remote_tasks > 60,
                "most of the 120 tasks ran in workers: {s:?}"
            );
            // every tile last written in a worker goes back once; never more than all 36
            assert!(s.written_back > 0 && s.written_back <= 36, "{s:?}");
        }
    });
}
