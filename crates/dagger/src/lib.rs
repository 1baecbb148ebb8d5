//! # dagger
//!
//! A runtime for parallel task graphs: a program spawns tasks, dagger runs them on the threads
//! of this process, keeps each result where it was made until a task or a caller needs it, and
//! frees it as soon as nobody holds it.
//!
//! ```
//! use dagger::prelude::*;
//!
//! fn load(part: u32) -> Vec<f64> {
//!     (0..100).map(|i| (part * 100 + i) as f64).collect()
//! }
//! fn mean(xs: &[f64]) -> f64 {
//!     xs.iter().sum::<f64>() / xs.len() as f64
//! }
//!
//! let parts: Vec<_> = (0..8).map(|p| spawn!(load(p))).collect();
//! let means: Vec<_> = parts.iter().map(|p| spawn!(mean(p))).collect();
//! let total: f64 = fetch_all(&means).unwrap().iter().sum();
//! assert_eq!(total / 8.0, 399.5);
//! ```
//!
//! ## The pieces
//!
//! * **Eager tasks**: [`spawn!`] (or [`spawn()`] for closures) returns a [`DTask`] at once;
//!   [`DTask::fetch`] waits for the value. Tasks can spawn and wait for other tasks, to any
//!   depth. [`sync`] waits for a block of tasks; `task.await` works in async code.
//! * **Lazy graphs**: [`delayed!`] builds a [`Thunk`] without running anything; [`compute`] or
//!   [`collect`] runs the whole graph, each shared node once.
//! * **Errors**: an `Err` (with `spawn!(f(x)?)`) or a panic in a task becomes a [`TaskError`]
//!   naming the task; tasks that depend on it fail without running.
//! * **Scopes and processors**: [`Scope`] says where a task may run (a worker, a thread, a
//!   processor type); custom [`Processor`]s plug in.
//! * **Options**: [`Options`] per task, [`with_options`] for a whole block (nested tasks
//!   included), [`set_default_options`] per function.
//!
//! ## Passing arguments with `spawn!` and `delayed!`
//!
//! `spawn!(f(a, b))` spawns the call `f(a, b)`. Each argument is classified at the call site:
//!
//! | argument | `f` receives | dependency? |
//! |---|---|---|
//! | `DTask<T>` / `Chunk<T>` | `T` (moved out when this is the last handle, else cloned) | yes |
//! | `&DTask<T>` / `&Chunk<T>` | `&T`, borrowed from the stored result | yes |
//! | `Thunk<T>` / `&Thunk<T>` (in `delayed!`) | `T` / `&T` | yes |
//! | `Vec<DTask<T>>` (or of chunks, thunks) | `Vec<T>` | yes, each |
//! | `&Vec<DTask<T>>` / `&[DTask<T>]` (or of chunks, thunks) | `Vec<&T>` | yes, each |
//! | anything else | the value itself | no |
//!
//! A task runs when all its dependencies have finished; a chunk argument also narrows where
//! it may run to the chunk's scope. (Classification needs the argument's type at the call
//! site; inside generic code, where it is a type parameter, the value is passed as is.)
//! Reference arguments are the way to share one result among many consumers without copies;
//! a function taking `&[f64]` accepts `&DTask<Vec<f64>>` through deref coercion.
//!
//! Suffix the call with `?` when `f` returns a `Result` whose error should fail the task:
//! `spawn!(parse(line)?)` is a `DTask<T>`, not a `DTask<Result<T, E>>`. Options follow a `;`:
//! `spawn!(f(x); name = "load", priority = 2, scope = Scope::worker(0))`, each key being an
//! [`Options`] method (`options = opts` starts from an existing `Options`).
//!
//! ```
//! use dagger::prelude::*;
//! fn parse(s: &str) -> Result<i64, std::num::ParseIntError> { s.parse() }
//! fn double(x: i64) -> i64 { 2 * x }
//!
//! let ok = spawn!(parse("21")?; name = "parse ok");
//! assert_eq!(spawn!(double(ok)).fetch().unwrap(), 42);
//!
//! let bad = spawn!(parse("x")?);
//! let err = spawn!(double(bad)).fetch().unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::DependencyFailed);
//! assert!(err.root().downcast_ref::<std::num::ParseIntError>().is_some());
//! ```
#![deny(missing_docs)]

pub use dagger_core::*;

/// Spawns a function call as a task and returns its [`DTask`].
///
/// See [the crate documentation](crate#passing-arguments-with-spawn-and-delayed) for how
/// arguments are passed, the `?` suffix and options.
///
/// ```
/// use dagger::prelude::*;
/// fn add(a: u64, b: u64) -> u64 { a + b }
/// let x = spawn!(add(1, 2));
/// let y = spawn!(add(x, 10); name = "add ten", priority = 1);
/// assert_eq!(y.fetch().unwrap(), 13);
/// ```
///
/// # Tasks of a data-dependency region
///
/// `spawn!(dd, f(args..))` spawns a task of the region `dd` (the reference's
/// `Dagger.@spawn f(In(a), InOut(b), c)` inside `spawn_datadeps`; Rust has no method macros,
/// so the region comes first). Each argument is classified like this: data handles
/// ([`Region::data`], ...), [`In`], [`Out`], [`InOut`], [`Val`] and region task handles are
/// passed as they are, a bare handle being read (`In`); any other value is moved into the task
/// (as if wrapped in [`Val`]). A function registered with [`macro@task`] whose arguments can
/// cross processes is spawned with [`Region::spawn_task`] (it may run in a worker process),
/// anything else with [`Region::spawn`]. Options follow a `;` as above.
///
/// ```
/// use dagger::prelude::*;
/// use dagger::{spawn_datadeps, InOut};
///
/// fn axpy(y: &mut Vec<f64>, x: &Vec<f64>, a: f64) {
///     y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
/// }
///
/// let x = vec![1.0, 2.0];
/// let mut y = vec![10.0, 10.0];
/// spawn_datadeps(|dd| {
///     let (x, y) = (dd.read(&x), dd.data(&mut y));
///     spawn!(dd, axpy(InOut(y), x, 2.0)); // `x` is read, `2.0` a plain value
///     spawn!(dd, axpy(InOut(y), x, 1.0); name = "second");
/// })
/// .unwrap();
/// assert_eq!(y, vec![13.0, 16.0]);
/// ```
pub use dagger_macros::spawn;

/// Builds a lazy task ([`Thunk`]) from a function call without running it.
///
/// Arguments that are thunks become graph edges; plain values are cloned each time the graph
/// runs. Run the graph with [`compute`] or [`collect`].
///
/// ```
/// use dagger::prelude::*;
/// fn inc(x: i32) -> i32 { x + 1 }
/// fn add(a: &i32, b: &i32) -> i32 { a + b }
/// let a = delayed!(inc(1));
/// let b = delayed!(add(&a, &a)); // `a` runs once; `add` borrows its result twice
/// assert_eq!(collect(&b).unwrap(), 4);
/// ```
pub use dagger_macros::delayed;

/// Registers a function so that its tasks can run in any process of a cluster.
///
/// Every process of a cluster runs the same binary, so every process registers the same
/// functions at start-up; a task calling a registered function can be placed on any worker.
/// Closures and unregistered functions also work, but only in the process that spawned them.
///
/// Parameters and results cross processes with serde: each parameter's owned type (`T` for
/// `T` and `&T`, `Vec<T>` for `&[T]`, `String` for `&str`) and the result type need
/// `Serialize + DeserializeOwned`. A function returning `Result<T, E>` runs remotely when
/// spawned with `?` (`spawn!(f(x)?)`); its `Err` fails the task with `E`'s message.
/// A `&mut T` (or `&mut [T]`) parameter is for tasks of data-dependency regions only
/// ([`Region::spawn_task`], [`spawn!`]`(dd, ..)`): the task changes the region's data in place,
/// in whichever process it runs; `spawn!(f(..))` outside a region cannot pass one. So are
/// [`BlockRef`]`<'_, T>` and [`BlockMut`]`<'_, T>` parameters (blocks of a region's matrix,
/// [`Region::matrix`]), which receive a copy of the block's elements in a worker process.
/// A generic function lists the instances to register:
/// `#[dagger::task(instance(T = u32), instance(T = f64))]`.
///
/// ```
/// #[dagger::task]
/// fn mean(xs: &[f64]) -> f64 {
///     xs.iter().sum::<f64>() / xs.len() as f64
/// }
///
/// #[dagger::task(instance(T = u32), instance(T = u64))]
/// fn double<T: std::ops::Add<Output = T> + Copy>(x: T) -> T {
///     x + x
/// }
///
/// use dagger::prelude::*;
/// let xs = dagger::spawn(|| vec![1.0, 2.0, 3.0]);
/// assert_eq!(spawn!(mean(&xs)).fetch().unwrap(), 2.0);
/// assert_eq!(spawn!(double(21u32)).fetch().unwrap(), 42);
/// ```
pub use dagger_macros::task;

/// Starts `main` with [`init`]: in a worker process (started by the head of a cluster) this
/// runs the worker and never reaches the body; in the head it starts the workers that the
/// environment asks for (`DAGGER_WORKERS=4`, `DAGGER_HOSTS=a,b`, ...). A configuration error
/// is reported and the process exits with status 1.
///
/// ```no_run
/// #[dagger::task]
/// fn square(x: u64) -> u64 { x * x }
///
/// #[dagger::main]
/// fn main() {
///     use dagger::prelude::*;
///     let t = spawn!(square(7));
///     println!("{}", t.fetch().unwrap());
/// }
/// ```
pub use dagger_macros::main;

/// Runs the worker side of a cluster before `main` when this process was started as a
/// worker. For programs that cannot call [`init`] first in `main` (test binaries, whose
/// `main` is the test harness): put `dagger::init_before_main!();` at the top level of the
/// crate (Linux and other ELF platforms).
#[macro_export]
macro_rules! init_before_main {
    () => {
        #[used]
        #[cfg_attr(
            any(target_os = "linux", target_os = "android", target_os = "freebsd"),
            link_section = ".init_array"
        )]
        static __DAGGER_INIT_BEFORE_MAIN: extern "C" fn() = {
            extern "C" fn __dagger_init_before_main() {
                $crate::__private::worker_hook()
            }
            __dagger_init_before_main
        };
    };
}

#[doc(hidden)]
pub use dagger_core::__private;

/// The names most programs need: `use dagger::prelude::*;`.
pub mod prelude {
    pub use crate::{
        collect, compute, delayed, fetch_all, spawn, sync, with_options, Chunk, Context, DTask,
        ErrorKind, Options, Scope, TaskError, Thunk,
    };
}

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
