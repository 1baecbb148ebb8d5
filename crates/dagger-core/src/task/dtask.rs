//! `DTask<T>`: the handle of a spawned task.

use super::{cancel_job, JobRef, TaskCell, Waiter, WakerSlot};
use crate::error::TaskError;
use crate::id::{ProcessorId, TaskId};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

/// A handle to a task that was spawned and runs (or ran) in the background.
///
/// Cloning a `DTask` gives another handle to the same task. The task's result is freed when
/// the last handle is dropped and no pending task needs it.
///
/// ```
/// let a = dagger_core::spawn(|| 20);
/// let b = dagger_core::spawn(|| 22);
/// assert_eq!(a.fetch().unwrap() + b.fetch().unwrap(), 42);
/// assert!(a.is_ready());
/// ```
pub struct DTask<T> {
    pub(crate) cell: Arc<dyn TaskCell<T>>,
}

impl<T> Clone for DTask<T> {
    fn clone(&self) -> Self {
        DTask {
            cell: self.cell.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> DTask<T> {
    pub(crate) fn job(&self) -> JobRef {
        self.cell.clone()
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.cell.header().id
    }

    /// The task's name, if it has one (spawn-site option, or the function's name for
    /// `spawn!(f(..))`).
    pub fn name(&self) -> Option<Arc<str>> {
        self.cell.header().name()
    }

    /// True once the task finished (successfully or not); never blocks.
    pub fn is_ready(&self) -> bool {
        self.cell.header().state.is_done()
    }

    /// Blocks until the task finished. Inside a task this never deadlocks the thread pool:
    /// the thread runs the awaited task itself if it has not started, and otherwise lends its
    /// place to another thread while it waits.
    ///
    /// # Panics
    /// Inside a [`spawn_bulk`](crate::spawn_bulk) block, if the task has not finished: its
    /// tasks are held until the block ends, so the wait could never finish.
    pub fn wait(&self) {
        if !self.is_ready() && in_bulk_block() {
            panic!("{BULK_WAIT}");
        }
        crate::sched::wait_for(self.cell.header(), &self.job());
    }

    /// Waits for the task; its error if it failed. Unlike [`fetch_ref`](Self::fetch_ref)
    /// this leaves a value that lives in another process there.
    pub(crate) fn wait_ok(&self) -> Result<(), TaskError> {
        if !self.is_ready() {
            self.wait();
        }
        self.cell.error().map_or(Ok(()), Err)
    }

    /// Waits for the task and returns a copy of its value, or the error it failed with.
    /// Can be called any number of times.
    pub fn fetch(&self) -> Result<T, TaskError>
    where
        T: Clone,
    {
        self.fetch_ref().cloned()
    }

    /// Waits for the task and borrows its value, or returns the error it failed with.
    /// Inside a [`spawn_bulk`](crate::spawn_bulk) block, fetching an unfinished task is an
    /// error.
    pub fn fetch_ref(&self) -> Result<&T, TaskError> {
        if !self.is_ready() {
            if in_bulk_block() {
                let h = self.cell.header();
                return Err(TaskError::with_message(
                    h.id,
                    h.name(),
                    crate::error::ErrorKind::Runtime,
                    BULK_WAIT.into(),
                ));
            }
            self.wait();
        }
        self.cell.value().expect("a waited-for task is done")
    }

    /// Waits for the task and returns its value, moving it out when this is the last handle
    /// (otherwise cloning it).
    pub fn into_value(mut self) -> Result<T, TaskError>
    where
        T: Clone,
    {
        self.wait();
        if let Some(cell) = Arc::get_mut(&mut self.cell) {
            if let Some(r) = cell.take_value() {
                return r;
            }
        }
        self.fetch()
    }

    /// Cancels the task. A task that has not started never runs; a running task is reported
    /// cancelled at once and its body can notice through
    /// [`is_cancelled`](crate::is_cancelled). Tasks that depend on it fail at once.
    /// Returns false when the task had already finished.
    pub fn cancel(&self) -> bool {
        cancel_job(&self.job())
    }

    /// The processor that ran the task, once it ran; for a task that ran in a worker
    /// process, that process (where its result is kept).
    pub fn processor(&self) -> Option<ProcessorId> {
        if let Some(data) = self.cell.remote_data() {
            let worker = match data.try_location() {
                Ok(l) => l.worker,
                Err(_) => data.lost_on()?,
            };
            return Some(ProcessorId::os(crate::id::WorkerId(worker)));
        }
        crate::sched::processor_of(self.cell.header())
    }
}

const BULK_WAIT: &str = "waited for a task inside a spawn_bulk block: the block holds its tasks \
                         until it ends, so the wait would never finish; wait after the block";

fn in_bulk_block() -> bool {
    super::current_group().is_some_and(|g| g.in_bulk())
}

impl<T: Send + Sync + 'static> fmt::Debug for DTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DTask");
        d.field("id", &self.id().get());
        if let Some(n) = self.name() {
            d.field("name", &n);
        }
        d.field("ready", &self.is_ready()).finish()
    }
}

/// Waits for every task and returns their values in order, or the first error (in the order
/// of `tasks`).
///
/// ```
/// let tasks: Vec<_> = (0..4).map(|i| dagger_core::spawn(move || i * i)).collect();
/// assert_eq!(dagger_core::fetch_all(&tasks).unwrap(), vec![0, 1, 4, 9]);
/// ```
pub fn fetch_all<'a, T, I>(tasks: I) -> Result<Vec<T>, TaskError>
where
    T: Clone + Send + Sync + 'static,
    I: IntoIterator<Item = &'a DTask<T>>,
{
    tasks.into_iter().map(|t| t.fetch()).collect()
}

/// Waits for every task; returns the first error (in the order of `tasks`), if any.
pub fn wait_all<'a, T, I>(tasks: I) -> Result<(), TaskError>
where
    T: Send + Sync + 'static,
    I: IntoIterator<Item = &'a DTask<T>>,
{
    let mut first = None;
    for t in tasks {
        if let Err(e) = t.wait_ok() {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The future of a [`DTask`]: `task.await` waits without blocking a thread.
///
/// ```
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     use std::task::{Context, Poll, Wake, Waker};
/// #     struct W(std::thread::Thread);
/// #     impl Wake for W { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
/// #     let waker = Waker::from(std::sync::Arc::new(W(std::thread::current())));
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) { return v; } std::thread::park(); }
/// # }
/// let t = dagger_core::spawn(|| 6 * 7);
/// assert_eq!(block_on(async { t.await }).unwrap(), 42);
/// ```
pub struct TaskFuture<T> {
    task: DTask<T>,
    slot: Option<Arc<WakerSlot>>,
}

impl<T: Clone + Send + Sync + 'static> Future for TaskFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        if self.task.is_ready() {
            return Poll::Ready(self.task.fetch());
        }
        match &self.slot {
            Some(slot) => slot.set(cx.waker()),
            None => {
                let slot = Arc::new(WakerSlot::default());
                slot.set(cx.waker());
                let pushed = self
                    .task
                    .cell
                    .header()
                    .waiters
                    .push(Waiter::Waker(slot.clone()));
                if pushed.is_err() {
                    return Poll::Ready(self.task.fetch());
                }
                self.slot = Some(slot);
            }
        }
        if self.task.is_ready() {
            return Poll::Ready(self.task.fetch());
        }
        Poll::Pending
    }
}

impl<T: Clone + Send + Sync + 'static> IntoFuture for DTask<T> {
    type Output = Result<T, TaskError>;
    type IntoFuture = TaskFuture<T>;

    fn into_future(self) -> TaskFuture<T> {
        TaskFuture {
            task: self,
            slot: None,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> IntoFuture for &DTask<T> {
    type Output = Result<T, TaskError>;
    type IntoFuture = TaskFuture<T>;

    fn into_future(self) -> TaskFuture<T> {
        self.clone().into_future()
    }
}
