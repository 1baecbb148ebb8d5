//! Processors: the things tasks run on.
//!
//! Every process has one [`OsProc`] (it owns the others and runs no tasks itself) and one
//! [`ThreadProc`] per compute thread. Users add their own processor types by implementing
//! [`Processor`] and registering an instance with
//! [`ContextBuilder::processor`](crate::ContextBuilder::processor).

use crate::id::{ProcessorId, TaskId, WorkerId};
use crate::sched::Registry;
use crate::task::JobRef;
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// The type of one argument of a task, as seen by [`Processor::is_compatible`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ArgType {
    /// `std::any::type_name` of the value the function receives.
    pub name: &'static str,
    /// `TypeId` of that value.
    pub id: TypeId,
}

impl ArgType {
    /// The `ArgType` of `T`.
    pub fn of<T: ?Sized + 'static>() -> ArgType {
        ArgType {
            name: std::any::type_name::<T>(),
            id: TypeId::of::<T>(),
        }
    }
}

/// The function a task calls and the types of its arguments.
#[derive(Clone, Copy, Debug)]
pub struct TaskSignature<'a> {
    /// The function's name (its path at the spawn site), or the task's name for closures.
    pub name: Option<&'a str>,
    /// Identity of the function (the type of the function item or closure).
    pub function: TypeId,
    /// The argument types, in order (empty for closures).
    pub args: &'a [ArgType],
}

/// A processing device and the memory beside it (the reference's `Processor`).
///
/// The runtime hosts every registered processor inside a process: tasks placed on it are
/// queued for it, and a compute thread of the process hands each one to [`execute`]
/// (which may run it at once, or pass it to a thread or device of its own).
///
/// ```
/// use dagger_core::{Context, Processor, ExecTask, Scope, TaskSignature, spawn_with, Options,
///                   current_processor};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// /// Runs tasks on the calling thread and counts them.
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
/// impl Processor for Counting {
///     fn execute(&self, task: ExecTask) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         task.run();
///     }
/// }
///
/// let ctx = Context::builder().threads(1).processor(Counting::default()).build().unwrap();
/// ctx.enter(|| {
///     let opts = Options::new().scope(Scope::processor_type::<Counting>());
///     let t = spawn_with(opts, || current_processor());
///     assert_eq!(t.fetch().unwrap().kind.name(), "Counting");
/// });
/// ```
///
/// [`execute`]: Processor::execute
pub trait Processor: Send + Sync + 'static {
    /// Whether tasks that name no scope may run here. The default, `false`, makes the
    /// processor opt-in: only scopes that name it (or [`Scope::any`](crate::Scope::any)) use it.
    fn default_enabled(&self) -> bool {
        false
    }

    /// Whether this processor can run `task`. Return `true` only when the function and its
    /// argument types are certainly supported.
    fn is_compatible(&self, task: &TaskSignature<'_>) -> bool {
        let _ = task;
        true
    }

    /// Runs a task placed on this processor. The default runs it at once on the calling
    /// compute thread. An implementation may run it elsewhere (its own thread, a device
    /// queue); a task dropped without being run fails with an error naming this processor.
    fn execute(&self, task: ExecTask) {
        task.run();
    }

    /// Converts a value produced on this processor before a task on `dst` reads it.
    /// `None` (the default) means the value is used as it is. A returned value must have the
    /// same type as `value`.
    fn move_to(
        &self,
        dst: ProcessorId,
        value: &(dyn Any + Send + Sync),
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let _ = (dst, value);
        None
    }

    /// Converts a value produced on `src` before a task on this processor reads it; applied
    /// after the source's [`move_to`](Processor::move_to).
    fn move_from(
        &self,
        src: ProcessorId,
        value: &(dyn Any + Send + Sync),
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let _ = (src, value);
        None
    }

    /// The processor this one belongs to; `None` means the [`OsProc`] of its process.
    fn parent(&self) -> Option<ProcessorId> {
        None
    }

    /// Processors contained in this one.
    fn children(&self) -> Vec<ProcessorId> {
        Vec::new()
    }
}

/// An operating-system process. It is the parent of the process's other processors and does
/// not run tasks itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OsProc {
    /// The process.
    pub worker: WorkerId,
}

impl Processor for OsProc {
    fn default_enabled(&self) -> bool {
        true
    }
    fn is_compatible(&self, _task: &TaskSignature<'_>) -> bool {
        false
    }
}

/// One compute thread of a process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ThreadProc {
    /// The process.
    pub worker: WorkerId,
    /// The thread number within the process.
    pub thread: u32,
}

impl Processor for ThreadProc {
    fn default_enabled(&self) -> bool {
        true
    }
    fn parent(&self) -> Option<ProcessorId> {
        Some(ProcessorId::os(self.worker))
    }
}

/// A task handed to [`Processor::execute`]. Call [`run`](ExecTask::run) exactly once, on any
/// thread; dropping it unrun fails the task.
pub struct ExecTask {
    pub(crate) job: Option<JobRef>,
    pub(crate) proc_index: u32,
    pub(crate) proc_id: ProcessorId,
    pub(crate) registry: Arc<Registry>,
}

impl ExecTask {
    /// The task's id.
    pub fn task_id(&self) -> TaskId {
        self.job
            .as_ref()
            .expect("unrun ExecTask holds its job")
            .header()
            .id
    }

    /// The task's name, if it has one.
    pub fn name(&self) -> Option<Arc<str>> {
        self.job.as_ref().and_then(|j| j.header().name())
    }

    /// The processor the task was placed on.
    pub fn processor(&self) -> ProcessorId {
        self.proc_id
    }

    /// Runs the task on the calling thread; inside it, `current_processor()` is this
    /// task's processor.
    pub fn run(mut self) {
        let job = self.job.take().expect("unrun ExecTask holds its job");
        crate::sched::run_on_processor(&self.registry, self.proc_index, job);
    }
}

impl Drop for ExecTask {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            let msg = format!(
                "processor {} dropped the task without running it",
                self.proc_id
            );
            crate::task::fail_job(&job, crate::error::ErrorKind::Runtime, msg);
        }
    }
}

impl fmt::Debug for ExecTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecTask")
            .field("processor", &self.proc_id)
            .finish_non_exhaustive()
    }
}
