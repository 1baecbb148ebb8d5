//! Spawning: options resolution, placement, dependency registration.

use super::state::{TaskState, QUEUED, WAITING};
use super::wait_list::{Slot, WaitList};
use super::{
    abort_with, fail_job, DTask, Group, Header, JobRef, TaskBody, TaskInner, Waiter, NO_PROC,
};
use crate::error::{BoxError, ErrorKind, TaskError};
use crate::id::TaskId;
use crate::options::{self, Options};
use crate::processor::{ArgType, TaskSignature};
use crate::sched::{Registry, WorkerThread};
use crate::scope::Scope;
use crate::tls::spawn_env;
use std::any::TypeId;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The tasks one argument depends on.
pub(crate) enum ArgDeps {
    None,
    One(JobRef),
    Many(Vec<JobRef>),
}

impl ArgDeps {
    fn as_slice(&self) -> &[JobRef] {
        match self {
            ArgDeps::None => &[],
            ArgDeps::One(j) => std::slice::from_ref(j),
            ArgDeps::Many(v) => v,
        }
    }
}

/// What the spawner knows about one argument of a task.
#[doc(hidden)]
pub struct ArgInfo {
    pub(crate) deps: ArgDeps,
    pub(crate) scope: Option<Scope>,
    pub(crate) ty: ArgType,
}

impl ArgInfo {
    pub(crate) fn value(ty: ArgType) -> Self {
        ArgInfo {
            deps: ArgDeps::None,
            scope: None,
            ty,
        }
    }

    /// An argument standing for the results of `tasks` (the task waits for them).
    pub(crate) fn after(tasks: Vec<JobRef>) -> Self {
        ArgInfo {
            deps: ArgDeps::Many(tasks),
            scope: None,
            ty: ArgType::of::<()>(),
        }
    }
}

/// The call being spawned.
pub(crate) struct Site<'a> {
    /// The function's name at the call site (`spawn!`), if known.
    pub(crate) name: Option<&'static str>,
    /// Identity of the function, for per-function default options.
    pub(crate) function: TypeId,
    pub(crate) args: &'a [ArgInfo],
}

impl Site<'static> {
    pub(crate) fn closure<F: 'static>() -> Self {
        Site {
            name: None,
            function: TypeId::of::<F>(),
            args: &[],
        }
    }
}

/// Options in force for a new task: spawn-site, then `with_options`, then function defaults.
#[inline]
/// Returns the task's effective options and the `with_options` options it inherits (which
/// its own body passes on to the tasks it spawns).
fn resolve_options(
    explicit: Option<Options>,
    inherited: Option<Arc<Options>>,
    function: TypeId,
) -> (Option<Arc<Options>>, Option<Arc<Options>>) {
    let defaults = options::defaults_for(function);
    let meta = match (explicit, &inherited, defaults) {
        (None, None, None) => None,
        (None, Some(i), None) => Some(i.clone()),
        (None, None, Some(d)) => Some(d),
        (e, i, d) => {
            let mut o = e.unwrap_or_default();
            if let Some(i) = &i {
                o = o.or(i);
            }
            if let Some(d) = &d {
                o = o.or(d);
            }
            Some(options::shared(o))
        }
    };
    (meta, inherited)
}

/// Spawns a task in the current context.
#[inline(always)]
pub(crate) fn spawn_raw<T, F>(site: &Site<'_>, explicit: Option<Options>, body: F) -> DTask<T>
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    let env = spawn_env();
    let (meta, inherited) = resolve_options(explicit, env.options, site.function);
    let reg: &Arc<Registry> = if env.registry.is_null() {
        crate::context::Context::global_registry()
    } else {
        // SAFETY: `spawn_env` returns a registry kept alive for the duration of this call (by
        // the compute thread, the processor task or the entered context running here).
        unsafe { &*env.registry }
    };
    // SAFETY: as above, the compute thread outlives this call.
    let worker = (!env.worker.is_null())
        .then(|| unsafe { &*env.worker })
        .filter(|w| Arc::ptr_eq(&w.registry, reg));
    spawn_in(reg, worker, env.group, site, meta, inherited, body)
}

fn spawn_in<T, F>(
    reg: &Arc<Registry>,
    worker: Option<&WorkerThread>,
    group: Option<Arc<Group>>,
    site: &Site<'_>,
    meta: Option<Arc<Options>>,
    inherited: Option<Arc<Options>>,
    body: F,
) -> DTask<T>
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    let mut body = body;
    let remote = if reg.remote.active() {
        body.bind_remote()
    } else {
        None
    };
    let mut scope: Option<Scope> = meta.as_ref().and_then(|m| m.execution_scope());
    for a in site.args {
        if let Some(s) = &a.scope {
            if !s.is_any() {
                scope = Some(scope.unwrap_or_else(Scope::default).constrain(s));
            }
        }
    }
    let placement = if scope.is_none() && remote.is_none() && !reg.has_custom_default() {
        Ok(crate::sched::Placement::Pool)
    } else {
        let types: Vec<ArgType> = site.args.iter().map(|a| a.ty).collect();
        let sig = TaskSignature {
            name: site
                .name
                .or_else(|| meta.as_ref().and_then(|m| m.name.as_deref())),
            function: site.function,
            args: &types,
        };
        reg.place(scope.as_ref(), &sig, remote)
    };
    let ndeps = site
        .args
        .iter()
        .map(|a| a.deps.as_slice().len())
        .sum::<usize>();
    let (placement, unschedulable) = match placement {
        Ok(crate::sched::Placement::Anywhere(mut a)) => {
            if let Some(a) = Arc::get_mut(&mut a) {
                // Sized up front: collected from the nested iterator, the boxed slice took a
                // reallocation per task.
                let mut inputs = Vec::with_capacity(ndeps);
                for arg in site.args {
                    inputs.extend(arg.deps.as_slice().iter().map(Arc::downgrade));
                }
                a.inputs = inputs.into_boxed_slice();
            }
            (crate::sched::Placement::Anywhere(a), None)
        }
        Ok(p) => (p, None),
        Err(msg) => (crate::sched::Placement::Pool, Some(msg)),
    };
    let ndeps = ndeps as u32;
    let allow_errors = meta.as_ref().and_then(|m| m.allow_errors);
    // A task with no inputs, no group and a processor is runnable as soon as it exists.
    let ready_now = ndeps == 0 && group.is_none() && unschedulable.is_none();
    let task = Arc::new(TaskInner::<T, F>::new(
        Header {
            id: TaskId::next(),
            state: TaskState::new(if ready_now { QUEUED } else { WAITING }),
            pending: AtomicU32::new(if ready_now { 0 } else { ndeps + 1 }),
            waiters: WaitList::new(),
            edge: Slot::new(),
            ran_on: AtomicU32::new(NO_PROC),
            registry: reg.id,
            placement,
            priority: meta.as_ref().and_then(|m| m.priority).unwrap_or(0),
            static_name: site.name,
            planned_ns: None,
            meta,
            inherited,
        },
        Some(body),
        None,
    ));
    if ready_now {
        let handle = DTask { cell: task.clone() };
        match worker {
            Some(w) => w.push_new(task),
            None => reg.inject(task),
        }
        return handle;
    }
    let job: JobRef = task.clone();
    let handle = DTask { cell: task };

    if let Some(group) = group {
        if group.abort_on_any || allow_errors == Some(false) {
            let _ = job.header().waiters.push(Waiter::Abort(group.clone()));
        }
        group.add(&job);
    }
    if let Some(msg) = unschedulable {
        fail_job(&job, ErrorKind::Scheduling, msg);
        return handle;
    }

    if link_inputs(&job, site.args.iter().flat_map(|a| a.deps.as_slice())) {
        match worker {
            Some(w) => w.push_new(job),
            None => reg.inject(job),
        }
    } else if remote.is_some() {
        reg.track_waiting(&job);
    }
    handle
}

/// Makes a new task (its `pending` count: one per input, plus one for its spawner) wait for
/// its inputs: registers it with each unfinished input and counts the finished ones as
/// arrived. When an input failed the task fails at once (naming it). Returns true when the
/// task became ready here, and the caller must queue it.
pub(crate) fn link_inputs<'a>(job: &JobRef, inputs: impl IntoIterator<Item = &'a JobRef>) -> bool {
    let mut arrived = 1u32;
    let mut failed: Option<TaskError> = None;
    let mut edge_used = false;
    for dep in inputs {
        let dh = dep.header();
        let registered = !dh.state.is_done() && {
            let waiter = Waiter::Task(job.clone());
            if edge_used {
                dh.waiters.push(waiter).is_ok()
            } else {
                // SAFETY: the slot is this task's own, used once; the waiter holds a reference
                // to this task, which keeps the slot alive until the input takes it out.
                let pushed = unsafe { dh.waiters.push_in(&job.header().edge, waiter) }.is_ok();
                edge_used |= pushed;
                pushed
            }
        };
        if !registered {
            arrived += 1;
            if failed.is_none() {
                failed = dep.error();
            }
        }
    }
    let h = job.header();
    if let Some(cause) = failed {
        abort_with(job, TaskError::upstream(h.id, h.name(), &cause));
        return false;
    }
    h.pending.fetch_sub(arrived, Ordering::SeqCst) == arrived && h.state.make_ready()
}

/// Spawns `f` as a task and returns its handle (the reference's `Dagger.spawn`).
///
/// The task runs on a compute thread of the current context (see
/// [`Context::enter`](crate::Context::enter)); a panic inside it becomes a
/// [`TaskError`] returned by `fetch`.
///
/// ```
/// let t = dagger_core::spawn(|| (1..=10).sum::<u32>());
/// assert_eq!(t.fetch().unwrap(), 55);
/// ```
pub fn spawn<T, F>(f: F) -> DTask<T>
where
    T: Send + Sync + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_raw(&Site::closure::<F>(), None, move || Ok(f()))
}

/// Like [`spawn`], with options for this task.
pub fn spawn_with<T, F>(opts: Options, f: F) -> DTask<T>
where
    T: Send + Sync + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_raw(&Site::closure::<F>(), Some(opts), move || Ok(f()))
}

/// Spawns a fallible task: an `Err` from `f` fails the task, and the tasks that depend on it
/// fail without running.
///
/// ```
/// let t = dagger_core::try_spawn(|| "42".parse::<u8>());
/// assert_eq!(t.fetch().unwrap(), 42);
/// ```
pub fn try_spawn<T, E, F>(f: F) -> DTask<T>
where
    T: Send + Sync + 'static,
    E: Into<BoxError>,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    spawn_raw(&Site::closure::<F>(), None, move || f().map_err(Into::into))
}

/// Like [`try_spawn`], with options for this task.
pub fn try_spawn_with<T, E, F>(opts: Options, f: F) -> DTask<T>
where
    T: Send + Sync + 'static,
    E: Into<BoxError>,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    spawn_raw(&Site::closure::<F>(), Some(opts), move || {
        f().map_err(Into::into)
    })
}
