//! `Chunk<T>`: a handle to data that lives on one processor.

use crate::error::{BoxError, TaskError};
use crate::id::{ProcessorId, TaskId, WorkerId};
use crate::options::Options;
use crate::remote::data::Label;
use crate::remote::functions::decode_any;
use crate::scope::Scope;
use crate::task::state::{TaskState, DONE};
use crate::task::wait_list::{Slot, WaitList};
use crate::task::{DTask, Header, Outcome, RemoteValue, TaskCell, TaskInner, NO_PROC};
use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

type NoBody<T> = fn() -> Result<T, BoxError>;

/// A handle to a value that lives on one processor (the reference's `Chunk`).
///
/// Chunks are made by [`tochunk`] or returned by [`compute`](crate::compute), and can be passed
/// to tasks: a task receiving a chunk runs within the chunk's scope. Dropping the last handle
/// frees the value.
///
/// ```
/// use dagger_core::{tochunk, spawn};
/// let c = tochunk(vec![1, 2, 3]);
/// let c2 = c.clone();
/// let sum = spawn(move || c2.fetch_ref().unwrap().iter().sum::<i32>());
/// assert_eq!(sum.fetch().unwrap(), 6);
/// assert_eq!(c.fetch().unwrap(), vec![1, 2, 3]);
/// ```
pub struct Chunk<T> {
    pub(crate) cell: Arc<dyn TaskCell<T>>,
}

impl<T> Clone for Chunk<T> {
    fn clone(&self) -> Self {
        Chunk {
            cell: self.cell.clone(),
        }
    }
}

/// Makes a chunk of `value` on the current processor, usable anywhere (scope "any").
pub fn tochunk<T: Send + Sync + 'static>(value: T) -> Chunk<T> {
    Chunk::new(value)
}

/// Calls `f` on one processor of this process in `scope` and returns its result as a chunk
/// pinned to that processor (the reference's `mutable`): every task reading the chunk runs
/// there, so all of them see the one value, which they may change through interior
/// mutability (a `Mutex`, atomics). Successive calls spread over the processors in `scope`.
///
/// For a value made and pinned in a worker process, spawn a registered function with the
/// same compute and result scope: `spawn!(make(); scope = w.clone(), result_scope = w)`,
/// then [`DTask::into_chunk`].
///
/// ```
/// use dagger_core::{mutable, spawn, Scope, current_processor};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let counter = mutable(Scope::default(), || AtomicU64::new(0)).unwrap();
/// let home = counter.processor();
/// let bumps: Vec<_> = (0..10)
///     .map(|_| {
///         let c = counter.clone();
///         dagger_core::spawn_with(dagger_core::Options::new().scope(c.scope()), move || {
///             assert_eq!(current_processor(), c.processor());
///             c.fetch_ref().unwrap().fetch_add(1, Ordering::Relaxed)
///         })
///     })
///     .collect();
/// dagger_core::wait_all(&bumps).unwrap();
/// assert_eq!(counter.fetch_ref().unwrap().load(Ordering::Relaxed), 10);
/// assert_eq!(counter.processor(), home);
/// ```
pub fn mutable<T, F>(scope: Scope, f: F) -> Result<Chunk<T>, TaskError>
where
    T: Send + Sync + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let procs = crate::context::compatible_processors(&scope);
    let pin = match procs.len() {
        // Nothing here can run it: the task fails with a scheduling error naming `scope`.
        0 => scope,
        n => Scope::exact(procs[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n]),
    };
    let opts = Options::new().scope(pin.clone()).result_scope(pin);
    crate::task::spawn_with(opts, f).into_chunk()
}

/// Makes a chunk of `value` on a processor in `scope`, which may be in another process (the
/// reference's `tochunk(x, proc, scope)`): in this process when one of its processors is in
/// `scope`, otherwise on the least busy worker process in `scope`, where tasks reading it
/// find it without a copy through this process. Tasks reading the chunk run in `scope`.
///
/// A chunk kept on a worker cannot be made again if that worker dies: tasks reading it then
/// fail with an error naming the worker and the chunk.
///
/// ```
/// use dagger_core::{tochunk_on, Scope};
/// // Without worker processes the chunk stays here.
/// let c = tochunk_on(vec![1u8, 2, 3], Scope::worker(0)).unwrap();
/// assert_eq!(c.fetch().unwrap(), vec![1, 2, 3]);
/// assert!(tochunk_on(1u8, Scope::worker(7)).is_err());
/// ```
pub fn tochunk_on<T>(value: T, scope: Scope) -> Result<Chunk<T>, crate::Error>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let ctx = crate::Context::current();
    if ctx.num_processors(&scope) > 0 {
        return Ok(Chunk::with_scope(value, scope));
    }
    let no_room = || {
        crate::Error::Cluster(format!(
            "no processor of this process nor any worker process is in scope `{scope}`"
        ))
    };
    let reg = ctx.registry_ref();
    let dispatch = reg.remote.dispatcher().ok_or_else(no_room)?;
    let id = TaskId::next();
    let label = Label::Text(format!(
        "chunk {id} (a {} made by tochunk_on)",
        std::any::type_name::<T>()
    ));
    let bytes = postcard::to_allocvec(&value).map_err(|e| {
        crate::Error::Cluster(format!(
            "cannot encode a {} for another process: {e}",
            std::any::type_name::<T>()
        ))
    })?;
    let data = crate::sched::blocking(|| dispatch.put(bytes.into(), &scope, label))
        .map_err(crate::Error::Cluster)?;
    let remote = RemoteValue::new(data, decode_any::<T>);
    Ok(Chunk::make_with(
        id,
        Outcome::Remote(remote),
        Some(scope),
        reg.id,
        NO_PROC,
    ))
}

impl<T: Send + Sync + 'static> Chunk<T> {
    /// Makes a chunk of `value` on the current processor, usable anywhere.
    pub fn new(value: T) -> Self {
        Self::make(value, None)
    }

    /// Makes a chunk of `value` that tasks may only read from processors in `scope`
    /// (the reference's `tochunk(x, proc, scope)`).
    ///
    /// ```
    /// use dagger_core::{Chunk, Scope};
    /// let c = Chunk::with_scope(5, Scope::worker(0).thread(1));
    /// assert_eq!(c.scope(), Scope::worker(0).thread(1));
    /// ```
    pub fn with_scope(value: T, scope: Scope) -> Self {
        Self::make(value, Some(scope))
    }

    fn make(value: T, scope: Option<Scope>) -> Self {
        let (registry, proc) = crate::context::with_spawn_registry(|reg| {
            let here = crate::sched::current_proc();
            let same =
                crate::sched::with_current_registry(|r| r.is_some_and(|r| Arc::ptr_eq(r, reg)));
            let proc = if same && here != NO_PROC {
                here
            } else {
                reg.proc_index(ProcessorId::os(reg.worker))
                    .unwrap_or(NO_PROC)
            };
            (reg.id, proc)
        });
        Self::make_with(TaskId::next(), Outcome::Value(value), scope, registry, proc)
    }

    fn make_with(
        id: TaskId,
        outcome: Outcome<T>,
        scope: Option<Scope>,
        registry: u32,
        proc: u32,
    ) -> Self {
        let meta = scope.map(|s| Arc::new(Options::new().result_scope(s)));
        let header = Header {
            id,
            state: TaskState::new(DONE),
            pending: AtomicU32::new(0),
            waiters: WaitList::new_closed(),
            edge: Slot::new(),
            ran_on: AtomicU32::new(proc),
            registry,
            placement: crate::sched::Placement::Pool,
            priority: 0,
            static_name: None,
            meta,
            inherited: None,
            planned_ns: None,
        };
        let cell: Arc<TaskInner<T, NoBody<T>>> =
            Arc::new(TaskInner::new(header, None, Some(outcome)));
        Chunk { cell }
    }

    /// A chunk of the value `data` in a worker process (usable anywhere).
    pub(crate) fn from_remote(data: Arc<crate::remote::RemoteData>, registry: u32) -> Self
    where
        T: serde::de::DeserializeOwned,
    {
        let remote = RemoteValue::new(data, decode_any::<T>);
        Self::make_with(
            TaskId::next(),
            Outcome::Remote(remote),
            None,
            registry,
            NO_PROC,
        )
    }

    pub(crate) fn from_task(task: DTask<T>) -> Self {
        Chunk { cell: task.cell }
    }

    /// A copy of the value.
    pub fn fetch(&self) -> Result<T, TaskError>
    where
        T: Clone,
    {
        self.fetch_ref().cloned()
    }

    /// Borrows the value.
    pub fn fetch_ref(&self) -> Result<&T, TaskError> {
        self.cell.value().expect("a chunk always holds a value")
    }

    /// The scope tasks reading this chunk must run in.
    pub fn scope(&self) -> Scope {
        self.cell
            .header()
            .meta
            .as_ref()
            .and_then(|m| m.result_scope.clone())
            .unwrap_or_else(Scope::any)
    }

    /// The processor the value lives on (for a value in a worker process: that process).
    pub fn processor(&self) -> ProcessorId {
        if let Some(data) = self.cell.remote_data() {
            let worker = match data.try_location() {
                Ok(l) => l.worker,
                Err(_) => data.lost_on().unwrap_or(0),
            };
            return ProcessorId::os(WorkerId(worker));
        }
        crate::sched::processor_of(self.cell.header()).unwrap_or(ProcessorId::os(WorkerId(0)))
    }
}

impl<T: Send + Sync + 'static> DTask<T> {
    /// Waits for the task and returns its result as a chunk (no copy; a result in a worker
    /// process stays there).
    pub fn into_chunk(self) -> Result<Chunk<T>, TaskError> {
        self.wait_ok()?;
        Ok(Chunk::from_task(self))
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for Chunk<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("processor", &self.processor())
            .field("value", &self.fetch_ref().ok())
            .finish()
    }
}
