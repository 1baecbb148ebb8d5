//! `Chunk<T>`: a handle to data that lives on one processor.

use crate::error::{BoxError, TaskError};
use crate::id::{ProcessorId, TaskId, WorkerId};
use crate::options::Options;
use crate::scope::Scope;
use crate::task::state::{TaskState, DONE};
use crate::task::wait_list::{Slot, WaitList};
use crate::task::{DTask, Header, Outcome, TaskCell, TaskInner, NO_PROC};
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
        let meta = scope.map(|s| Arc::new(Options::new().result_scope(s)));
        let header = Header {
            id: TaskId::next(),
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
        };
        let cell: Arc<TaskInner<T, NoBody<T>>> =
            Arc::new(TaskInner::new(header, None, Some(Outcome::Value(value))));
        Chunk { cell }
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

    /// The processor the value lives on.
    pub fn processor(&self) -> ProcessorId {
        crate::sched::processor_of(self.cell.header()).unwrap_or(ProcessorId::os(WorkerId(0)))
    }
}

impl<T: Send + Sync + 'static> DTask<T> {
    /// Waits for the task and returns its result as a chunk (no copy).
    pub fn into_chunk(self) -> Result<Chunk<T>, TaskError> {
        self.fetch_ref()?;
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
