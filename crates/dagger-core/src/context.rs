//! `Context`: the runtime of one process (its threads and processors), and the global default.

use crate::error::{Error, Result};
use crate::id::{NodeId, ProcessorId, ProcessorKind, TaskId, WorkerId};
use crate::processor::Processor;
use crate::sched::{with_current_registry, Exec, Registry, RegistryConfig};
use crate::scope::Scope;
use crate::task::{with_current_task, JobRef};
use crate::tls::{peek, CTX};
use std::fmt;
use std::sync::{Arc, OnceLock};

pub(crate) struct ContextInner {
    registry: Arc<Registry>,
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        self.registry.terminate();
    }
}

/// The runtime of this process: its compute threads, its processors and its scheduler.
///
/// Most programs use the lazily created global context (see [`Context::global`]) through
/// the free functions [`spawn`](crate::spawn) and friends. A program can also build its own
/// context and run code inside it with [`Context::enter`]. When the last handle to a context
/// is dropped, its threads finish the queued work and exit.
///
/// ```
/// use dagger_core::{Context, spawn, current_processor};
/// let ctx = Context::builder().threads(2).build().unwrap();
/// let t = ctx.enter(|| spawn(|| current_processor()));
/// assert!(t.fetch().unwrap().thread_index().unwrap() < 2);
/// assert_eq!(ctx.num_threads(), 2);
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

/// Builds a [`Context`].
pub struct ContextBuilder {
    threads: Option<usize>,
    worker: WorkerId,
    cluster: Option<crate::cluster::ClusterOptions>,
    processors: Vec<(ProcessorKind, Arc<dyn Processor>)>,
    stack_size: usize,
    max_blocked_threads: usize,
    thread_name: String,
    pin_cpus: Option<Vec<usize>>,
}

impl fmt::Debug for ContextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBuilder")
            .field("threads", &self.threads)
            .field("processors", &self.processors.len())
            .field("stack_size", &self.stack_size)
            .field("max_blocked_threads", &self.max_blocked_threads)
            .finish()
    }
}

/// Threads of the global context: `DAGGER_THREADS`, else the number of CPUs.
fn default_threads() -> Result<usize> {
    match std::env::var("DAGGER_THREADS") {
        Ok(v) => v.trim().parse::<usize>().map_err(|_| {
            Error::Config(format!(
                "DAGGER_THREADS must be a positive number of threads, not {v:?}"
            ))
        }),
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

impl ContextBuilder {
    /// Number of compute threads (default: `DAGGER_THREADS`, else the number of CPUs).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Adds a custom processor to this process. Several instances of one type get indices
    /// 0, 1, ... in the order they are added.
    pub fn processor<P: Processor>(mut self, p: P) -> Self {
        self.processors
            .push((ProcessorKind::of::<P>(), Arc::new(p)));
        self
    }

    /// Stack size of compute threads in bytes (default 8 MiB).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// How many stand-in threads may be started for threads blocked waiting on other tasks
    /// (default 512).
    pub fn max_blocked_threads(mut self, n: usize) -> Self {
        self.max_blocked_threads = n;
        self
    }

    /// The id of this process in a cluster (0, the default, is the head). Set by the
    /// cluster layer for worker processes.
    #[doc(hidden)]
    pub fn worker_id(mut self, id: WorkerId) -> Self {
        self.worker = id;
        self
    }

    /// Makes the context the head of a cluster and starts `spec`'s worker processes (the same
    /// program, run again in worker mode; their `main` must call [`init`](crate::init)).
    ///
    /// ```no_run
    /// use dagger_core::{Context, LaunchSpec};
    /// let ctx = Context::builder()
    ///     .threads(2)
    ///     .workers(LaunchSpec::Local { workers: 2, threads: 2 })
    ///     .build()?;
    /// assert_eq!(ctx.workers().len(), 2);
    /// # Ok::<(), dagger_core::Error>(())
    /// ```
    pub fn workers(mut self, spec: crate::LaunchSpec) -> Self {
        let mut opts = self.cluster.take().unwrap_or_default();
        opts.launch = Some(spec);
        self.cluster = Some(opts);
        self
    }

    /// Makes the context the head of a cluster with these settings.
    pub fn cluster(mut self, opts: crate::cluster::ClusterOptions) -> Self {
        self.cluster = Some(opts);
        self
    }

    /// Name prefix of the compute threads (default `dagger`).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Pins the compute thread serving processor slot `i` to CPU `cpus[i % cpus.len()]`
    /// (a worker process of a cluster whose head asked for it).
    pub(crate) fn pin_cpus(mut self, cpus: Vec<usize>) -> Self {
        self.pin_cpus = Some(cpus);
        self
    }

    /// Starts the context.
    pub fn build(self) -> Result<Context> {
        let threads = match self.threads {
            Some(n) => n,
            None => default_threads()?,
        };
        if threads == 0 {
            return Err(Error::Config(
                "a context needs at least one compute thread".into(),
            ));
        }
        if self.stack_size < 64 * 1024 {
            return Err(Error::Config(format!(
                "stack size {} is too small; use at least 64 KiB",
                self.stack_size
            )));
        }
        let registry = Registry::start(RegistryConfig {
            threads,
            worker: self.worker,
            node: NodeId(0),
            customs: self.processors,
            stack_size: self.stack_size,
            max_blocked_threads: self.max_blocked_threads,
            thread_name: self.thread_name,
            pin_cpus: self.pin_cpus,
        })
        .map_err(|e| Error::Config(format!("cannot start compute threads: {e}")))?;
        let inner = Arc::new(ContextInner {
            registry,
            cluster: std::sync::OnceLock::new(),
        });
        let _ = inner.registry.context.set(Arc::downgrade(&inner));
        let ctx = Context { inner };
        if let Some(opts) = self.cluster {
            let cluster = crate::cluster::Cluster::start(&ctx, opts)?;
            let _ = ctx.inner.cluster.set(cluster);
        }
        Ok(ctx)
    }

    /// Starts the context and installs it as the global context. Fails if the global context
    /// already exists.
    pub fn build_global(self) -> Result<&'static Context> {
        let mut fresh = None;
        let ctx = GLOBAL.get_or_init(|| {
            fresh = Some(());
            self.build()
        });
        match (fresh, ctx) {
            (Some(()), Ok(c)) => Ok(c),
            (Some(()), Err(e)) => Err(Error::Config(e.to_string())),
            (None, _) => Err(Error::Config(
                "the global context was already created".into(),
            )),
        }
    }
}

static GLOBAL: OnceLock<Result<Context>> = OnceLock::new();

impl Context {
    /// A builder with the default settings.
    pub fn builder() -> ContextBuilder {
        ContextBuilder {
            threads: None,
            worker: WorkerId(0),
            cluster: None,
            processors: Vec::new(),
            stack_size: 8 << 20,
            max_blocked_threads: 512,
            thread_name: "dagger".into(),
            pin_cpus: None,
        }
    }

    /// The global context, created on first use with `DAGGER_THREADS` threads (default: the
    /// number of CPUs).
    ///
    /// # Panics
    /// If the global context cannot be created (e.g. `DAGGER_THREADS=abc`); use
    /// [`Context::try_global`] to get the error instead.
    pub fn global() -> &'static Context {
        match Context::try_global() {
            Ok(c) => c,
            Err(e) => panic!("dagger: cannot create the global context: {e}"),
        }
    }

    /// The global context, or why it could not be created.
    pub fn try_global() -> Result<&'static Context> {
        GLOBAL
            .get_or_init(|| Context::builder().build())
            .as_ref()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The context tasks spawned here go to: the context of the running task, else the
    /// innermost [`enter`](Context::enter)ed one, else the global context.
    pub fn current() -> Context {
        if let Some(inner) =
            with_current_registry(|r| r.and_then(|reg| reg.context.get()?.upgrade()))
        {
            return Context { inner };
        }
        CTX.with(|c| peek(&c.entered))
            .unwrap_or_else(|| Context::global().clone())
    }

    pub(crate) fn registry_ref(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The global context's registry.
    pub(crate) fn global_registry() -> &'static Arc<Registry> {
        &Context::global().inner.registry
    }

    /// Runs `f` with this context as the target of every spawn on this thread.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Context>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CTX.with(|c| c.entered.set(self.0.take()));
            }
        }
        let prev = CTX.with(|c| c.entered.replace(Some(self.clone())));
        let _restore = Restore(prev);
        f()
    }

    /// Number of compute threads.
    pub fn num_threads(&self) -> usize {
        self.inner.registry.num_threads()
    }

    /// Every processor that can run tasks (the reference's `all_processors`), threads first.
    pub fn all_processors(&self) -> Vec<ProcessorId> {
        self.inner
            .registry
            .executing()
            .map(|(_, p)| p.info.id)
            .collect()
    }

    /// The processors of `scope` that can run tasks.
    pub fn compatible_processors(&self, scope: &Scope) -> Vec<ProcessorId> {
        self.inner
            .registry
            .executing()
            .filter(|(_, p)| scope.contains(&p.info))
            .map(|(_, p)| p.info.id)
            .collect()
    }

    /// How many processors of `scope` can run tasks.
    pub fn num_processors(&self, scope: &Scope) -> usize {
        self.compatible_processors(scope).len()
    }

    /// The processor object with id `id`.
    pub fn processor(&self, id: ProcessorId) -> Option<Arc<dyn Processor>> {
        let reg = &self.inner.registry;
        reg.proc_index(id)
            .map(|i| reg.procs[i as usize].obj.clone())
    }

    /// The parent of processor `id`: the OS process for threads and custom processors (unless
    /// the processor names another parent), none for the OS process.
    pub fn parent(&self, id: ProcessorId) -> Option<ProcessorId> {
        let reg = &self.inner.registry;
        let entry = &reg.procs[reg.proc_index(id)? as usize];
        match entry.exec {
            Exec::Os => None,
            _ => entry.obj.parent().or(Some(ProcessorId::os(id.worker))),
        }
    }

    /// The processors inside processor `id`: every other processor of the process for the OS
    /// process, and what the processor reports otherwise.
    pub fn children(&self, id: ProcessorId) -> Vec<ProcessorId> {
        let reg = &self.inner.registry;
        let Some(i) = reg.proc_index(id) else {
            return Vec::new();
        };
        let entry = &reg.procs[i as usize];
        match entry.exec {
            Exec::Os => reg
                .executing()
                .filter(|(_, p)| p.obj.parent().is_none_or(|parent| parent == id))
                .map(|(_, p)| p.info.id)
                .collect(),
            _ => entry.obj.children(),
        }
    }

    fn cluster(&self) -> Result<&Arc<crate::cluster::Cluster>> {
        self.inner.cluster.get().ok_or_else(|| {
            Error::Config("this context is not the head of a cluster (no workers)".into())
        })
    }

    /// The worker processes of this context (empty when it runs on its own threads only).
    pub fn workers(&self) -> Vec<crate::cluster::WorkerInfo> {
        self.inner
            .cluster
            .get()
            .map(|c| c.workers())
            .unwrap_or_default()
    }

    /// Starts more worker processes while the context runs; they receive work as soon as
    /// they joined. Returns their ids.
    pub fn add_workers(&self, spec: crate::LaunchSpec) -> Result<Vec<WorkerId>> {
        self.cluster()?.launch(&spec)
    }

    /// Removes worker processes: no new task goes to them, the tasks they run finish, then
    /// they exit.
    pub fn remove_workers(&self, ids: &[WorkerId]) -> Result<()> {
        let ids: Vec<u32> = ids.iter().map(|w| w.0).collect();
        self.cluster()?.remove(&ids)
    }

    /// What worker `id` reports about itself (values it holds, memory).
    pub fn worker_stats(&self, id: WorkerId) -> Result<crate::cluster::WorkerStats> {
        self.cluster()?.stats(id.0)
    }

    /// Kills worker `id` at once, as a crash would (for fault-injection tests).
    #[doc(hidden)]
    pub fn kill_worker(&self, id: WorkerId) -> Result<()> {
        self.cluster()?.kill(id.0)
    }

    /// The address workers connect to, when this context is the head of a cluster.
    #[doc(hidden)]
    pub fn cluster_addr(&self) -> Option<String> {
        self.inner.cluster.get().map(|c| c.addr().to_string())
    }

    /// The learned run-time estimate of tasks whose body has code identity `sig` on
    /// processors of `kind`, with its number of samples.
    #[doc(hidden)]
    pub fn runtime_estimate(
        &self,
        sig: std::any::TypeId,
        kind: ProcessorKind,
    ) -> Option<(std::time::Duration, u64)> {
        self.inner
            .registry
            .estimates
            .get(sig, kind)
            .map(|(ns, n)| (std::time::Duration::from_nanos(ns), n))
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("threads", &self.num_threads())
            .field("processors", &self.all_processors())
            .finish()
    }
}

/// Calls `f` with the registry new tasks go to (see [`Context::current`]).
pub(crate) fn with_spawn_registry<R>(f: impl FnOnce(&Arc<Registry>) -> R) -> R {
    let mut f = Some(f);
    let done = with_current_registry(|r| r.map(|reg| (f.take().unwrap())(reg)));
    if let Some(r) = done {
        return r;
    }
    let f = f.take().unwrap();
    let entered: *const Arc<Registry> = CTX.with(|c| {
        let ctx = c.entered.take();
        let p = ctx
            .as_ref()
            .map_or(std::ptr::null(), |ctx| &ctx.inner.registry as *const _);
        c.entered.set(ctx);
        p
    });
    if entered.is_null() {
        f(&Context::global().inner.registry)
    } else {
        // SAFETY: the entered context lives (in this thread's cell, or in the guard of a nested
        // `enter`) until the `enter` call that installed it returns, which is after this call.
        f(unsafe { &*entered })
    }
}

/// Every processor of the current context that can run tasks.
pub fn all_processors() -> Vec<ProcessorId> {
    Context::current().all_processors()
}

/// The processors of `scope` in the current context.
pub fn compatible_processors(scope: &Scope) -> Vec<ProcessorId> {
    Context::current().compatible_processors(scope)
}

/// How many processors of `scope` the current context has.
///
/// ```
/// use dagger_core::{num_processors, Scope, Context};
/// assert_eq!(num_processors(&Scope::default()), Context::current().num_threads());
/// assert_eq!(num_processors(&Scope::worker(7)), 0);
/// ```
pub fn num_processors(scope: &Scope) -> usize {
    Context::current().num_processors(scope)
}

/// The processor running the calling code: inside a task, the processor it runs on;
/// elsewhere, the OS process.
pub fn current_processor() -> ProcessorId {
    let proc = crate::sched::current_proc();
    with_current_registry(|reg| match reg {
        Some(reg) => reg.proc_id(proc),
        None => None,
    })
    .unwrap_or_else(|| ProcessorId::os(WorkerId(0)))
}

/// The id of the task running the calling code, if any.
pub fn current_task_id() -> Option<TaskId> {
    with_current_task(|t| t.map(|j| j.header().id))
}

/// Inside a task: whether it was cancelled. A long-running body should check this now and
/// then and return early; its result is discarded anyway.
pub fn is_cancelled() -> bool {
    with_current_task(|t| {
        t.is_some_and(|j| j.header().state.load() >= crate::task::state::COMPLETING)
    })
}

/// A handle a task body can pass to other code (or threads) to check for its cancellation.
#[derive(Clone)]
pub struct CancelToken {
    job: JobRef,
}

impl CancelToken {
    /// Whether the task was cancelled (or has otherwise finished).
    pub fn is_cancelled(&self) -> bool {
        self.job.header().state.load() >= crate::task::state::COMPLETING
    }

    /// `Err(Cancelled)` once the task was cancelled, for use with `?`.
    pub fn check(&self) -> std::result::Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("task", &self.job.header().id)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The error of [`CancelToken::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the task was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The cancellation token of the running task (`None` outside tasks).
pub fn cancel_token() -> Option<CancelToken> {
    with_current_task(|t| t.map(|j| CancelToken { job: j.clone() }))
}
