//! The runtime's per-thread state, in one thread-local so hot paths touch it once.

use crate::context::Context;
use crate::options::Options;
use crate::sched::{Registry, WorkerThread};
use crate::task::{Group, JobRef, NO_PROC};
use std::cell::Cell;
use std::ptr;
use std::sync::Arc;

pub(crate) struct ThreadCtx {
    /// The compute thread running here, if this is one (valid while its main loop runs).
    pub(crate) worker: Cell<*const WorkerThread>,
    /// Processor-table index of the processor running here (`NO_PROC` outside tasks).
    pub(crate) proc: Cell<u32>,
    /// Registry of a task run by a processor on a thread that is not its compute thread.
    pub(crate) foreign: Cell<*const Arc<Registry>>,
    /// The task whose body runs here (valid while it runs).
    pub(crate) task: Cell<*const JobRef>,
    /// Options passed on to tasks spawned here (`with_options` blocks, inherited by bodies).
    pub(crate) options: Cell<Option<Arc<Options>>>,
    /// Options `get_options` reports here (inside a body: the task's own, then blocks on top).
    pub(crate) view: Cell<Option<Arc<Options>>>,
    /// The `sync` block or graph run collecting tasks spawned here.
    pub(crate) group: Cell<Option<Arc<Group>>>,
    /// The context entered with `Context::enter`.
    pub(crate) entered: Cell<Option<Context>>,
    /// Counts task runs, to sample run times.
    pub(crate) sample: Cell<u32>,
}

thread_local! {
    pub(crate) static CTX: ThreadCtx = const {
        ThreadCtx {
            worker: Cell::new(ptr::null()),
            proc: Cell::new(NO_PROC),
            foreign: Cell::new(ptr::null()),
            task: Cell::new(ptr::null()),
            options: Cell::new(None),
            view: Cell::new(None),
            group: Cell::new(None),
            entered: Cell::new(None),
            sample: Cell::new(0),
        }
    };
}

/// What spawning needs from the thread, read in one thread-local access.
pub(crate) struct SpawnEnv {
    /// `with_options` options to pass on.
    pub(crate) options: Option<Arc<Options>>,
    /// The `sync` block or graph run to join.
    pub(crate) group: Option<Arc<Group>>,
    /// The registry to spawn into (null: the global context's).
    pub(crate) registry: *const Arc<Registry>,
    /// The compute thread running here, if any.
    pub(crate) worker: *const WorkerThread,
}

/// Snapshot of the spawning thread's state.
pub(crate) fn spawn_env() -> SpawnEnv {
    CTX.with(|c| {
        let worker = c.worker.get();
        let foreign = c.foreign.get();
        let registry = if !foreign.is_null() {
            foreign
        } else if !worker.is_null() {
            // SAFETY: the worker pointer is valid while its thread's main loop runs.
            unsafe { &(*worker).registry as *const Arc<Registry> }
        } else {
            let ctx = c.entered.take();
            let p = ctx.as_ref().map_or(ptr::null(), |ctx| {
                ctx.registry_ref() as *const Arc<Registry>
            });
            c.entered.set(ctx);
            p
        };
        SpawnEnv {
            options: peek(&c.options),
            group: peek(&c.group),
            registry,
            worker,
        }
    })
}

/// Reads a `Cell<Option<Arc<T>>>` without taking it.
pub(crate) fn peek<T: Clone>(cell: &Cell<Option<T>>) -> Option<T> {
    let v = cell.take();
    let out = v.clone();
    cell.set(v);
    out
}
