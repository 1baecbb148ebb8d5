//! Data-dependency regions: `spawn_datadeps` with `In`/`Out`/`InOut`, views, parts, planners,
//! traversal orders, misuse, and a tiled Cholesky factorisation with faer kernels.

mod common;

use common::Gate;
use dagger::{
    spawn_datadeps, spawn_datadeps_with, Context, CostPlanner, DatadepsOptions, ErrorKind, In,
    InOut, Options, Out, Parts, RoundRobin, Traversal, Val, WorkStealing,
};
use proptest::prelude::*;

fn two_threads() -> Context {
    Context::builder().threads(2).build().unwrap()
}

fn add(dst: &mut [f64], src: &[f64]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

fn copy(dst: &mut [f64], src: &[f64]) {
    dst.copy_from_slice(src);
}

#[test]
fn add_to_copy() {
    // B += A; C += A; C += B; D = C  gives C == D
    two_threads().enter(|| {
        for _ in 0..50 {
            let a: Vec<f64> = (0..64).map(|i| i as f64).collect();
            let mut b = vec![1.0; 64];
            let mut c = vec![2.0; 64];
            let mut d = vec![0.0; 64];
            spawn_datadeps(|dd| {
                let a = dd.read_slice(&a);
                let (b, c, d) = (dd.slice(&mut b), dd.slice(&mut c), dd.slice(&mut d));
                dd.spawn(add, (InOut(b), In(a)));
                dd.spawn(add, (InOut(c), In(a)));
                dd.spawn(add, (InOut(c), In(b)));
                dd.spawn(copy, (Out(d), In(c)));
            })
            .unwrap();
            let want: Vec<f64> = (0..64).map(|i| 2.0 + 2.0 * i as f64 + 1.0).collect();
            assert_eq!(c, want);
            assert_eq!(c, d);
        }
    });
}

#[test]
fn overlapping_views_each_set_to_one() {
    two_threads().enter(|| {
        for _ in 0..50 {
            let mut v = vec![0u32; 3];
            spawn_datadeps(|dd| {
                let v = dd.slice(&mut v);
                let (x, y) = (v.view(0..2), v.view(1..3));
                let set = |s: &mut [u32]| s.fill(1);
                let a = dd.spawn(set, (Out(x),));
                let b = dd.spawn(set, (Out(y),));
                assert_eq!(dd.dependencies(b.index()), vec![a.index()]);
            })
            .unwrap();
            assert_eq!(v, [1, 1, 1]);
        }
    });
}

#[test]
fn disjoint_views_run_at_the_same_time() {
    // Each task waits for a latch the other one opens: this finishes only if they overlap in
    // time (a wrong edge between them would hang the test until its time limit).
    two_threads().enter(|| {
        let mut v = vec![0u8; 4];
        let (g1, g2) = (Gate::default(), Gate::default());
        let opts = DatadepsOptions::new().planner(RoundRobin::default());
        spawn_datadeps_with(opts, |dd| {
            let v = dd.slice(&mut v);
            let (l, r) = v.split_at(2);
            let (a1, a2, b1, b2) = (g1.clone(), g1.clone(), g2.clone(), g2.clone());
            let a = dd.spawn(
                move |s: &mut [u8]| {
                    a1.open();
                    b1.wait();
                    s.fill(1)
                },
                (InOut(l),),
            );
            let b = dd.spawn(
                move |s: &mut [u8]| {
                    b2.open();
                    a2.wait();
                    s.fill(2)
                },
                (InOut(r),),
            );
            assert!(dd.dependencies(a.index()).is_empty());
            assert!(dd.dependencies(b.index()).is_empty());
        })
        .unwrap();
        assert_eq!(v, [1, 1, 2, 2]);
    });
}

#[test]
fn tree_reduction_of_1000_arrays_in_place() {
    two_threads().enter(|| {
        let mut arrays: Vec<Vec<u64>> = (0..1000u64).map(|i| vec![i; 16]).collect();
        spawn_datadeps(|dd| {
            let hs: Vec<_> = arrays.iter_mut().map(|a| dd.data(a)).collect();
            let mut stride = 1;
            while stride < hs.len() {
                for i in (0..hs.len()).step_by(2 * stride) {
                    if i + stride < hs.len() {
                        dd.spawn(
                            |acc: &mut Vec<u64>, x: &Vec<u64>| {
                                acc.iter_mut().zip(x).for_each(|(a, b)| *a += b)
                            },
                            (InOut(hs[i]), In(hs[i + stride])),
                        );
                    }
                }
                stride *= 2;
            }
        })
        .unwrap();
        assert_eq!(arrays[0], vec![999 * 1000 / 2; 16]);
        // the other arrays hold partial sums, as a sequential run leaves them
        assert_eq!(arrays[1], vec![1; 16]);
        assert_eq!(arrays[2], vec![2 + 3; 16]);
    });
}

#[test]
fn region_returns_a_value_and_task_results() {
    two_threads().enter(|| {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        let (answer, sum, mean) = spawn_datadeps(|dd| {
            let xs = dd.read(&xs);
            let sum = dd.spawn(|xs: &Vec<f64>| xs.iter().sum::<f64>(), (xs,));
            let mean = dd.spawn(
                |s: &f64, xs: &Vec<f64>, k: f64| k * *s / xs.len() as f64,
                (sum.clone(), In(xs), Val(2.0)),
            );
            (42, sum, mean)
        })
        .unwrap();
        assert_eq!(answer, 42);
        assert_eq!(sum.fetch().unwrap(), 55.0);
        assert_eq!(mean.into_value().unwrap(), 11.0);
        // a region without tasks returns its value too
        assert_eq!(spawn_datadeps(|_| "done").unwrap(), "done");
    });
}

#[test]
fn owned_values_and_outputs() {
    two_threads().enter(|| {
        let earlier = dagger::spawn(|| vec![1, 2, 3]);
        let chunk = dagger::tochunk(String::from("ab"));
        let (v, s) = spawn_datadeps(|dd| {
            let v = dd.own_task(earlier).unwrap();
            let s = dd.own_chunk(&chunk).unwrap();
            let scratch = dd.own_slice(vec![0u8; 8]);
            dd.spawn(|v: &mut Vec<i32>| v.push(4), (InOut(v),));
            dd.spawn(
                |s: &mut String, v: &Vec<i32>| s.push_str(&v.len().to_string()),
                (InOut(s), v),
            );
            dd.spawn(|b: &mut [u8]| b.fill(7), (Out(scratch.view(..4)),));
            (dd.output(v), dd.output(s))
        })
        .unwrap();
        assert_eq!(v.into_inner(), Some(vec![1, 2, 3, 4]));
        assert_eq!(s.into_chunk().unwrap().fetch().unwrap(), "ab4");
        assert_eq!(chunk.fetch().unwrap(), "ab"); // the chunk itself is unchanged
    });
}

#[test]
fn failing_task_surfaces_naming_the_task() {
    two_threads().enter(|| {
        let mut x = 0;
        let mut ran_after = false;
        let err = spawn_datadeps(|dd| {
            let x = dd.data(&mut x);
            let flag = dd.data(&mut ran_after);
            dd.spawn(|x: &mut i32| *x = 1, (Out(x),));
            dd.spawn_with(
                Options::new().name("explode"),
                |_: &mut i32| -> () { panic!("boom") },
                (InOut(x),),
            );
            // depends on the failed task: must not run
            dd.spawn(|_: &i32, f: &mut bool| *f = true, (In(x), Out(flag)));
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert_eq!(err.task_name(), Some("explode"));
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(x, 1);
        assert!(!ran_after);
    });
}

#[test]
fn the_spawn_macro_reads_bare_handles_and_moves_plain_values() {
    fn axpy(y: &mut [f64], x: &[f64], a: f64) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
    }
    fn sum(x: &[f64]) -> f64 {
        x.iter().sum()
    }
    let x = vec![1.0; 8];
    let mut y = vec![0.0; 8];
    let s = two_threads().enter(|| {
        spawn_datadeps(|dd| {
            let (x, y) = (dd.read_slice(&x), dd.slice(&mut y));
            // the two halves are independent; the sum waits for both
            dagger::spawn!(dd, axpy(InOut(y.view(..4)), x.view(..4), 2.0));
            dagger::spawn!(dd, axpy(InOut(y.view(4..)), x.view(4..), 3.0); name = "right");
            let s = dagger::spawn!(dd, sum(y));
            assert_eq!(dd.dependencies(s.index()), vec![0, 1]);
            s
        })
        .unwrap()
    });
    assert_eq!(s.fetch().unwrap(), 4.0 * 2.0 + 4.0 * 3.0);
    assert_eq!(y[..4], [2.0; 4]);
}

#[test]
fn fetching_a_region_task_inside_the_region_is_an_error() {
    two_threads().enter(|| {
        let t = spawn_datadeps(|dd| {
            let t = dd.spawn(|| 5, ());
            let err = t.fetch().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Runtime);
            assert!(err.to_string().contains("inside its region"), "{err}");
            t
        })
        .unwrap();
        assert_eq!(t.fetch().unwrap(), 5);
        // ... and inside a task of the region
        let err = spawn_datadeps(|dd| {
            let t = dd.spawn(|| 5, ());
            let t2 = t.clone();
            dd.spawn(move || t2.fetch().map(|_| ()), ())
        })
        .unwrap()
        .fetch()
        .unwrap();
        assert!(err.is_err());
    });
}

#[test]
fn misuse_is_refused_and_nothing_runs() {
    two_threads().enter(|| {
        let mut x = 0;
        let ro = 5;
        let mut ran = false;
        // &mut twice at once
        let err = spawn_datadeps(|dd| {
            let (x, flag) = (dd.data(&mut x), dd.data(&mut ran));
            dd.spawn(|f: &mut bool| *f = true, (Out(flag),));
            dd.spawn(|a: &mut i32, b: &i32| *a += b, (InOut(x), In(x)));
        })
        .unwrap_err();
        assert!(err.to_string().contains("`&mut`"), "{err}");
        assert!(!ran, "a refused region runs none of its tasks");
        // writing read-only data
        let err = spawn_datadeps(|dd| {
            let r = dd.read(&ro);
            dd.spawn(|a: &mut i32| *a = 1, (Out(r),));
        })
        .unwrap_err();
        assert!(err.to_string().contains("read only"), "{err}");
        // overlapping views of one slice in one task
        let mut v = vec![0; 4];
        let err = spawn_datadeps(|dd| {
            let v = dd.slice(&mut v);
            dd.spawn(
                |_: &mut [i32], _: &[i32]| (),
                (InOut(v.view(0..2)), In(v.view(1..3))),
            );
        })
        .unwrap_err();
        assert!(err.to_string().contains("overlapping"), "{err}");
        // disjoint views in one task are fine
        spawn_datadeps(|dd| {
            let v = dd.slice(&mut v);
            dd.spawn(copy_i32, (Out(v.view(0..2)), In(v.view(2..4))));
        })
        .unwrap();
        // data of another region
        let mut y = 1;
        let err = spawn_datadeps(|outer| {
            let y = outer.data(&mut y);
            spawn_datadeps(move |inner| {
                inner.spawn(|y: &mut i32| *y = 2, (InOut(y),));
            })
            .unwrap_err()
        })
        .unwrap();
        assert!(err.to_string().contains("another datadeps region"), "{err}");
        assert_eq!(y, 1);
    });
}

fn copy_i32(dst: &mut [i32], src: &[i32]) {
    dst.copy_from_slice(src);
}

/// Upper and lower halves of a square tile, accessed separately.
struct Tile {
    n: usize,
    data: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Half {
    /// Elements on and below the diagonal.
    Lower,
    /// Elements strictly above it.
    Upper,
}

/// Mutable access to one half of a tile.
struct HalfMut<'a> {
    n: usize,
    ptr: *mut f64,
    lower: bool,
    _life: std::marker::PhantomData<&'a mut f64>,
}

impl HalfMut<'_> {
    fn set_all(&mut self, v: f64) {
        for j in 0..self.n {
            for i in 0..self.n {
                if (i >= j) == self.lower {
                    // SAFETY: (i, j) lies in this half, which the region lends us alone.
                    unsafe { *self.ptr.add(j * self.n + i) = v }
                }
            }
        }
    }
}

// SAFETY: the halves are disjoint sets of elements, reached through the raw pointer only.
unsafe impl Parts for Tile {
    type Part = Half;
    type Ref<'a> = ();
    type Mut<'a> = HalfMut<'a>;
    fn mask(part: Half) -> u64 {
        match part {
            Half::Lower => 1,
            Half::Upper => 2,
        }
    }
    unsafe fn part_ref<'a>(_this: *const Self, _part: Half) -> Self::Ref<'a> {}
    unsafe fn part_mut<'a>(this: *mut Self, part: Half) -> HalfMut<'a> {
        // SAFETY: `this` is live; the fields are read without borrowing the whole tile mutably.
        unsafe {
            HalfMut {
                n: (*this).n,
                ptr: (*this).data.as_ptr() as *mut f64,
                lower: matches!(part, Half::Lower),
                _life: std::marker::PhantomData,
            }
        }
    }
}

// SAFETY: only the raw pointer is shared, and the region hands each half to one task at once.
unsafe impl Send for HalfMut<'_> {}

#[test]
fn parts_of_a_tile_are_independent() {
    two_threads().enter(|| {
        let mut t = Tile {
            n: 4,
            data: vec![0.0; 16],
        };
        spawn_datadeps(|dd| {
            let t = dd.data(&mut t);
            let lo = dd.spawn(
                |h: HalfMut<'_>| {
                    let mut h = h;
                    h.set_all(1.0)
                },
                (Out(t.part(Half::Lower)),),
            );
            let up = dd.spawn(
                |h: HalfMut<'_>| {
                    let mut h = h;
                    h.set_all(2.0)
                },
                (Out(t.part(Half::Upper)),),
            );
            let all = dd.spawn(|t: &mut Tile| t.data[0] += 10.0, (InOut(t),));
            assert!(dd.dependencies(up.index()).is_empty());
            assert_eq!(dd.dependencies(all.index()), vec![lo.index(), up.index()]);
        })
        .unwrap();
        assert_eq!(t.data[0], 11.0);
        assert_eq!(t.data[4], 2.0); // (0, 1): upper
        assert_eq!(t.data[1], 1.0); // (1, 0): lower
    });
}

#[test]
fn matrix_blocks_order_by_rectangles() {
    two_threads().enter(|| {
        let (n, nb) = (6, 3);
        let mut m = vec![0.0f64; n * n];
        spawn_datadeps(|dd| {
            let a = dd.matrix(&mut m, n, n);
            let fill = |mut b: dagger::BlockMut<'_, f64>, v: f64| {
                for j in 0..b.ncols() {
                    b.col_mut(j).fill(v)
                }
            };
            let t00 = dd.spawn(fill, (Out(a.tile(0, 0, nb, nb)), Val(1.0)));
            let t11 = dd.spawn(fill, (Out(a.tile(1, 1, nb, nb)), Val(2.0)));
            // a block straddling both tiles waits for both
            let mid = dd.spawn(
                |mut b: dagger::BlockMut<'_, f64>| *b.get_mut(0, 0) += 10.0,
                (InOut(a.block(2..4, 2..4)),),
            );
            let sum = dd.spawn(
                |b: dagger::BlockRef<'_, f64>| {
                    (0..b.ncols())
                        .map(|j| b.col(j).iter().sum::<f64>())
                        .sum::<f64>()
                },
                (In(a),),
            );
            assert!(dd.dependencies(t11.index()).is_empty());
            assert_eq!(dd.dependencies(mid.index()), vec![t00.index(), t11.index()]);
            assert_eq!(
                dd.dependencies(sum.index()),
                vec![t00.index(), t11.index(), mid.index()]
            );
            sum
        })
        .map(|sum| assert_eq!(sum.fetch().unwrap(), 9.0 + 18.0 + 10.0))
        .unwrap();
        assert_eq!(m[2 * n + 2], 11.0);
    });
}

#[test]
fn planners_and_traversals_give_the_sequential_result() {
    two_threads().enter(|| {
        let planners: Vec<fn() -> DatadepsOptions> = vec![
            || DatadepsOptions::new().planner(RoundRobin::default()),
            || DatadepsOptions::new().planner(CostPlanner::new()),
            || DatadepsOptions::new().planner(WorkStealing),
        ];
        for make in planners {
            for tr in [Traversal::InOrder, Traversal::Bfs, Traversal::Dfs] {
                let mut acc = vec![0u64; 4];
                spawn_datadeps_with(make().traversal(tr), |dd| {
                    let acc = dd.slice(&mut acc);
                    for i in 0..40u64 {
                        let k = (i % 4) as usize;
                        // x = 2x + i on element k, then element k+1 (mod 4) reads it
                        dd.spawn(
                            move |x: &mut [u64]| x[0] = 2 * x[0] + i,
                            (InOut(acc.view(k..k + 1)),),
                        );
                    }
                })
                .unwrap();
                let mut want = vec![0u64; 4];
                for i in 0..40u64 {
                    let k = (i % 4) as usize;
                    want[k] = 2 * want[k] + i;
                }
                assert_eq!(acc, want, "{tr:?}");
            }
        }
    });
}

#[test]
fn regions_nest_inside_tasks() {
    two_threads().enter(|| {
        let t = dagger::spawn(|| {
            let mut v = vec![1u32; 8];
            spawn_datadeps(|dd| {
                let v = dd.slice(&mut v);
                for c in v.chunks(2) {
                    dd.spawn(
                        |s: &mut [u32]| s.iter_mut().for_each(|x| *x *= 3),
                        (InOut(c),),
                    );
                }
            })
            .unwrap();
            v.iter().sum::<u32>()
        });
        assert_eq!(t.fetch().unwrap(), 24);
    });
}

// ---- property test: random programs against a sequential interpreter ----

#[derive(Clone, Debug)]
enum Mode {
    Read,
    Write,
    ReadWrite,
}

#[derive(Clone, Debug)]
struct Op {
    /// (buffer, view start, view end, mode); views of one buffer may overlap
    args: Vec<(usize, usize, usize, Mode)>,
    salt: u64,
}

const BUFS: usize = 4;
const LEN: usize = 6;

fn op_strategy() -> impl Strategy<Value = Op> {
    let arg = (0..BUFS, 0..LEN, 1..=LEN, 0..3u8).prop_map(|(b, s, l, m)| {
        let (s, e) = (s.min(LEN - 1), (s + l).min(LEN));
        let mode = match m {
            0 => Mode::Read,
            1 => Mode::Write,
            _ => Mode::ReadWrite,
        };
        (b, s, e, mode)
    });
    (prop::collection::vec(arg, 1..4), any::<u64>()).prop_map(|(mut args, salt)| {
        // a task must not hold overlapping views with a writer among them: keep the first
        let mut kept: Vec<(usize, usize, usize, Mode)> = Vec::new();
        for a in args.drain(..) {
            let clash = kept.iter().any(|k| {
                k.0 == a.0
                    && k.1 < a.2
                    && a.1 < k.2
                    && !(matches!(k.3, Mode::Read) && matches!(a.3, Mode::Read))
            });
            if !clash {
                kept.push(a);
            }
        }
        Op { args: kept, salt }
    })
}

/// What a task does: mixes what it reads into a value (salted), then writes that value into
/// every element it writes. Any reordering of conflicting tasks changes the final state.
fn apply(op: &Op, reads: &[&[u64]], writes: &mut [&mut [u64]], read_writes: &mut [&mut [u64]]) {
    let mut h = op.salt;
    for r in reads {
        for &x in r.iter() {
            h = h.wrapping_mul(0x100000001b3).wrapping_add(x);
        }
    }
    for r in read_writes.iter() {
        for &x in r.iter() {
            h = h.wrapping_mul(0x100000001b3).wrapping_add(x ^ 0x55);
        }
    }
    for (i, w) in writes.iter_mut().enumerate() {
        for x in w.iter_mut() {
            *x = h.wrapping_add(i as u64);
        }
    }
    for (i, w) in read_writes.iter_mut().enumerate() {
        for x in w.iter_mut() {
            *x = x.wrapping_add(h.rotate_left(i as u32 + 1));
        }
    }
}

fn sequential(ops: &[Op]) -> Vec<Vec<u64>> {
    let mut bufs: Vec<Vec<u64>> = (0..BUFS).map(|b| vec![b as u64; LEN]).collect();
    for op in ops {
        // copy the inputs, then write back: the same effect as borrowing disjoint views
        let reads: Vec<Vec<u64>> = op
            .args
            .iter()
            .filter(|a| matches!(a.3, Mode::Read))
            .map(|a| bufs[a.0][a.1..a.2].to_vec())
            .collect();
        let mut writes: Vec<Vec<u64>> = op
            .args
            .iter()
            .filter(|a| matches!(a.3, Mode::Write))
            .map(|a| bufs[a.0][a.1..a.2].to_vec())
            .collect();
        let mut rws: Vec<Vec<u64>> = op
            .args
            .iter()
            .filter(|a| matches!(a.3, Mode::ReadWrite))
            .map(|a| bufs[a.0][a.1..a.2].to_vec())
            .collect();
        {
            let r: Vec<&[u64]> = reads.iter().map(|v| v.as_slice()).collect();
            let mut w: Vec<&mut [u64]> = writes.iter_mut().map(|v| v.as_mut_slice()).collect();
            let mut rw: Vec<&mut [u64]> = rws.iter_mut().map(|v| v.as_mut_slice()).collect();
            apply(op, &r, &mut w, &mut rw);
        }
        let mut wi = writes.into_iter();
        let mut rwi = rws.into_iter();
        for a in &op.args {
            match a.3 {
                Mode::Read => {}
                Mode::Write => bufs[a.0][a.1..a.2].copy_from_slice(&wi.next().unwrap()),
                Mode::ReadWrite => bufs[a.0][a.1..a.2].copy_from_slice(&rwi.next().unwrap()),
            }
        }
    }
    bufs
}

fn in_region(ops: &[Op], opts: DatadepsOptions) -> Vec<Vec<u64>> {
    let mut bufs: Vec<Vec<u64>> = (0..BUFS).map(|b| vec![b as u64; LEN]).collect();
    spawn_datadeps_with(opts, |dd| {
        let hs: Vec<_> = bufs.iter_mut().map(|b| dd.slice(b)).collect();
        for op in ops {
            // Arguments of a random arity and mode: pass them as three vectors of views,
            // which the task receives through `Val` and borrows itself? No: declare them.
            let mut reads = Vec::new();
            let mut writes = Vec::new();
            let mut rws = Vec::new();
            for a in &op.args {
                let v = hs[a.0].view(a.1..a.2);
                match a.3 {
                    Mode::Read => reads.push(v),
                    Mode::Write => writes.push(v),
                    Mode::ReadWrite => rws.push(v),
                }
            }
            let op = op.clone();
            let run = move |r: Vec<&[u64]>, mut w: Vec<&mut [u64]>, mut rw: Vec<&mut [u64]>| {
                apply(&op, &r, &mut w, &mut rw)
            };
            dd.spawn(run, (In(reads), Out(writes), InOut(rws)));
        }
    })
    .unwrap();
    bufs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_equal_a_sequential_run(
        ops in prop::collection::vec(op_strategy(), 1..40),
        planner in 0..3u8,
        traversal in 0..3u8,
    ) {
        let want = sequential(&ops);
        let ctx = two_threads();
        ctx.enter(|| {
            for _ in 0..5 {
                let opts = DatadepsOptions::new().traversal(match traversal {
                    0 => Traversal::InOrder,
                    1 => Traversal::Bfs,
                    _ => Traversal::Dfs,
                });
                let opts = match planner {
                    0 => opts.planner(RoundRobin::default()),
                    1 => opts.planner(CostPlanner::new()),
                    _ => opts.planner(WorkStealing),
                };
                let got = in_region(&ops, opts);
                prop_assert_eq!(&got, &want);
            }
            Ok(())
        })?;
    }
}

// ---- tiled Cholesky with faer kernels ----

#[path = "../../dagger-bench/src/tile_cholesky.rs"]
mod tile_cholesky;

#[test]
fn tiled_cholesky_matches_faer() {
    use tile_cholesky::{factor, potrf_par, rel_error, spd, tiles};
    let (n, nb) = (1024, 128);
    let a = spd(n, faer::Par::Seq);
    let mut whole = a.clone();
    potrf_par(&mut whole, faer::Par::Seq);
    two_threads().enter(|| {
        for tr in [Traversal::InOrder, Traversal::Dfs] {
            let mut t = tiles(&a, nb);
            factor(&mut t, DatadepsOptions::new().traversal(tr)).unwrap();
            let rel = rel_error(&t, &whole);
            assert!(rel < 1e-10, "relative error {rel:e} with {tr:?}");
        }
    });
}

// ---- task queues ----

#[test]
fn sequential_queue_orders_tasks_without_data_edges() {
    use std::sync::{Arc, Mutex};
    two_threads().enter(|| {
        for _ in 0..20 {
            let log = Arc::new(Mutex::new(Vec::new()));
            let tasks = dagger::spawn_sequential(|| {
                (0..50)
                    .map(|i| {
                        let log = log.clone();
                        dagger::spawn(move || log.lock().unwrap().push(i))
                    })
                    .collect::<Vec<_>>()
            });
            dagger::wait_all(&tasks).unwrap();
            assert_eq!(*log.lock().unwrap(), (0..50).collect::<Vec<_>>());
        }
        // a failure stops the tasks after it
        let (a, b) = dagger::spawn_sequential(|| {
            let a = dagger::try_spawn(|| Err::<(), _>("first fails"));
            (a, dagger::spawn(|| 1))
        });
        assert!(a.fetch().is_err());
        assert_eq!(b.fetch().unwrap_err().kind(), ErrorKind::DependencyFailed);
    });
}

#[test]
fn bulk_queue_holds_tasks_and_refuses_waits() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    two_threads().enter(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let gate = Gate::default();
        let tasks = dagger::spawn_bulk(|| {
            let ts: Vec<_> = (0..10)
                .map(|_| {
                    let (ran, gate) = (ran.clone(), gate.clone());
                    dagger::spawn(move || {
                        gate.wait();
                        ran.fetch_add(1, Ordering::SeqCst)
                    })
                })
                .collect();
            gate.open(); // if a task had started it would only now be let through
            let err = ts[0].fetch().unwrap_err();
            assert!(err.to_string().contains("spawn_bulk"), "{err}");
            assert!(
                ts.iter().all(|t| !t.is_ready()),
                "held until the block ends"
            );
            ts
        });
        dagger::wait_all(&tasks).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 10);
        // wait() inside the block panics with the same explanation
        let r = std::panic::catch_unwind(|| dagger::spawn_bulk(|| dagger::spawn(|| 1).wait()));
        assert!(r.is_err());
    });
}

#[test]
fn queues_nest() {
    use std::sync::{Arc, Mutex};
    two_threads().enter(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let push = |i: u32| {
            let log = log.clone();
            dagger::spawn(move || log.lock().unwrap().push(i))
        };
        let mut all = Vec::new();
        dagger::spawn_sequential(|| {
            all.push(push(0));
            // a bulk block inside a sequential one: held, then still in order
            dagger::spawn_bulk(|| {
                all.push(push(1));
                all.push(push(2));
                assert!(!all[1].is_ready());
            });
            all.push(push(3));
        });
        dagger::wait_all(&all).unwrap();
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3]);
        // sequential inside bulk: ordered, and held until the outer block ends
        log.lock().unwrap().clear();
        let ts = dagger::spawn_bulk(|| {
            let ts = dagger::spawn_sequential(|| (10..15).map(push).collect::<Vec<_>>());
            assert!(ts.iter().all(|t| !t.is_ready()));
            ts
        });
        dagger::wait_all(&ts).unwrap();
        assert_eq!(*log.lock().unwrap(), vec![10, 11, 12, 13, 14]);
        // tasks of a queue inside a sync block are waited for by the block
        let n = Arc::new(Mutex::new(0));
        dagger::sync(|| {
            dagger::spawn_sequential(|| {
                for _ in 0..5 {
                    let n = n.clone();
                    dagger::spawn(move || *n.lock().unwrap() += 1);
                }
            })
        })
        .unwrap();
        assert_eq!(*n.lock().unwrap(), 5);
    });
}
