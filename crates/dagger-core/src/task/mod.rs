//! Tasks: the type-erased task object, its completion protocol and the public handles.
//!
//! A task is one allocation holding a [`Header`] (identity, state, dependency counter, waiters),
//! the body (until it runs) and the result slot. The scheduler moves it around as a [`JobRef`]
//! (`Arc<dyn Job>`); users hold it as a [`DTask<T>`], which sees the same allocation through the
//! typed [`TaskCell<T>`] view. Dropping the last handle frees the result.

pub(crate) mod state;
pub(crate) mod wait_list;

mod dtask;
mod group;
pub(crate) mod outcome;
mod spawn;

pub use dtask::{fetch_all, wait_all, DTask, TaskFuture};
pub use group::sync;
pub(crate) use group::{current as current_group, Queue};
pub(crate) use group::{with_group, Group};
pub(crate) use outcome::{Outcome, RemoteValue};
pub(crate) use spawn::ArgDeps;
pub use spawn::ArgInfo;
pub(crate) use spawn::{link_inputs, spawn_raw, Site};
pub use spawn::{spawn, spawn_with, try_spawn, try_spawn_with};

use crate::error::{BoxError, ErrorKind, TaskError};
use crate::id::TaskId;
use crate::options::{Options, TaskInfo};
use crate::remote::data::Input;
use crate::remote::functions::TaskFn;
use crate::remote::wire::{Location, WireCall};
use crate::sched::Placement;
use crate::stats;
use crate::tls::CTX;
use state::TaskState;
use std::any::TypeId;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use wait_list::{Drain, Slot, WaitList};

/// A task as the scheduler sees it.
pub(crate) type JobRef = Arc<dyn Job>;

/// Processor-table index meaning "not run anywhere yet".
pub(crate) const NO_PROC: u32 = u32::MAX;

/// Someone waiting for a task to complete.
pub(crate) enum Waiter {
    /// A task that takes this one's result as input.
    Task(JobRef),
    /// A thread blocked in `wait`/`fetch`.
    Thread(std::thread::Thread),
    /// An async caller.
    Waker(Arc<WakerSlot>),
    /// A group or graph that aborts when this task fails.
    Abort(Arc<Group>),
}

/// The waker of an async caller; re-polls replace it.
#[derive(Default)]
pub(crate) struct WakerSlot(Mutex<Option<Waker>>);

impl WakerSlot {
    pub(crate) fn set(&self, waker: &Waker) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        let waker = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The part of a task every party shares.
pub(crate) struct Header {
    pub(crate) id: TaskId,
    pub(crate) state: TaskState,
    /// Inputs still missing, plus one while the spawner is still registering.
    pub(crate) pending: AtomicU32,
    pub(crate) waiters: WaitList<Waiter>,
    /// Where this task registers with its first unfinished input, without allocating.
    pub(crate) edge: Slot<Waiter>,
    /// Processor-table index of the processor that ran the task (or holds the chunk).
    pub(crate) ran_on: AtomicU32,
    pub(crate) registry: u32,
    pub(crate) placement: Placement,
    pub(crate) priority: i32,
    pub(crate) static_name: Option<&'static str>,
    /// The options the task runs with.
    pub(crate) meta: Option<Arc<Options>>,
    /// The `with_options` options in force where it was spawned; its body passes them on.
    pub(crate) inherited: Option<Arc<Options>>,
    /// The run time (ns) its planner estimated, for a task a datadeps region placed: the
    /// scheduler counts it as the task's queued work and does not time the task for its own
    /// estimates (they are kept by body type, which all closures of a region share; the
    /// region learns its tasks' run times itself).
    pub(crate) planned_ns: Option<u64>,
}

impl Header {
    pub(crate) fn name(&self) -> Option<Arc<str>> {
        match self.meta.as_ref().and_then(|m| m.name.clone()) {
            Some(n) => Some(n),
            None => self.static_name.map(Arc::from),
        }
    }

    /// Names this task's result in messages about remote values.
    pub(crate) fn label(&self) -> crate::remote::data::Label {
        use crate::remote::data::Label;
        match (
            self.meta.as_ref().and_then(|m| m.name.clone()),
            self.static_name,
        ) {
            (Some(n), _) => Label::Task(self.id.get(), Some(n)),
            (None, Some(n)) => Label::NamedTask(self.id.get(), n),
            (None, None) => Label::Task(self.id.get(), None),
        }
    }

    pub(crate) fn name_str(&self) -> Option<&str> {
        self.meta
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .or(self.static_name)
    }
}

/// The scheduler's view of a task.
pub(crate) trait Job: Send + Sync + 'static {
    fn header(&self) -> &Header;

    /// Runs the body and completes the task. The caller claimed the task (QUEUED -> RUNNING)
    /// and passes the `JobRef` it runs it through. The caller lets go of that handle, if it
    /// owns it, before it tells the waiters ([`Finished::notify`]): once a dependent can run,
    /// no thread of the runtime holds the task (a last handle moves its value into a later
    /// task rather than copying it).
    #[must_use = "the waiters of the task are told when the result is notified or dropped"]
    fn run(&self, me: &JobRef) -> Finished;

    /// Completes the task with `err` unless it is already completing; on success returns the
    /// waiters to notify.
    fn abort(&self, err: TaskError) -> Option<Drain<Waiter>>;

    /// The error of a completed, failed task.
    fn error(&self) -> Option<TaskError>;

    /// Identity of the body's code, the key of run-time estimates.
    fn signature(&self) -> TypeId;

    /// Encodes the call of a claimed task (the caller won QUEUED -> RUNNING) so that another
    /// process can run it.
    fn encode_remote(&self) -> Result<(WireCall, Vec<Input>), BoxError>;

    /// Gives back a task claimed for a remote run that could not happen yet (RUNNING ->
    /// QUEUED), so it can be placed again.
    fn unclaim(&self) -> bool;

    /// Completes a claimed task that ran in another process: with its value there, or with
    /// the kind and message of its failure.
    fn complete_remote(
        &self,
        result: Result<Arc<crate::remote::data::RemoteData>, (ErrorKind, String)>,
    );

    /// The party that claimed the task for a run in another process learns that it
    /// completed meanwhile (it was cancelled, or an input failed): drops the body, which
    /// nobody runs or encodes any more. (Aborting a claimed task leaves the body to its
    /// claimer; kept, the bodies of a long chain would hold each other and be dropped by
    /// recursion.)
    fn end_claim(&self);

    /// Where the value of a finished task is: `None` while it runs or if it failed.
    fn held(&self) -> Option<Held>;

    /// The handle of a finished task's value, when it lives in another process.
    fn result_data(&self) -> Option<Arc<crate::remote::data::RemoteData>>;
}

/// Where a finished task's value is.
pub(crate) enum Held {
    /// In this process.
    Here,
    /// In another process (or this one's store), with its size when known.
    At(Location),
}

/// What a task runs: a closure, or a call of a function with arguments (which may also be
/// sent to another process when the function is registered).
pub(crate) trait TaskBody<T>: Send + 'static {
    /// Runs the body on this thread.
    fn run(self) -> Result<T, BoxError>;

    /// Runs the body on this thread: its value, which may also be left in another process
    /// (a region task in a worker keeps its result there).
    fn run_outcome(self) -> Result<Outcome<T>, BoxError>
    where
        Self: Sized,
    {
        self.run().map(Outcome::Value)
    }

    /// The registered function this body calls (its dense id and entry), when the call may
    /// run in another process (after [`bind_remote`](TaskBody::bind_remote)).
    fn remote(&self) -> Option<(u32, &'static TaskFn)> {
        None
    }

    /// Looks up whether the call may run in another process (a registered function whose
    /// parameters match the arguments); called only when worker processes exist.
    fn bind_remote(&mut self) -> Option<(u32, &'static TaskFn)> {
        None
    }

    /// Encodes the call for another process (only when `remote` is `Some`), with the inputs
    /// behind its `Ref` arguments.
    fn encode(&self) -> Result<(WireCall, Vec<Input>), BoxError> {
        Err("this task runs only in the process that spawned it".into())
    }
}

impl<T, F> TaskBody<T> for F
where
    F: FnOnce() -> Result<T, BoxError> + Send + 'static,
{
    fn run(self) -> Result<T, BoxError> {
        self()
    }
}

/// The typed view of a task: its result.
pub(crate) trait TaskCell<T>: Job {
    /// The outcome, once the task is done.
    fn outcome(&self) -> Option<&Outcome<T>>;
    /// Moves the outcome out (only through a unique handle).
    fn take_outcome(&mut self) -> Option<Outcome<T>>;
}

impl<T: Send + Sync + 'static> dyn TaskCell<T> {
    /// The value (fetched from another process if it lives there), or the error; `None` while
    /// the task runs.
    pub(crate) fn value(&self) -> Option<Result<&T, TaskError>> {
        self.outcome().map(|o| o.value(self.header()))
    }

    /// The value's handle, when it lives in another process.
    pub(crate) fn remote_data(&self) -> Option<&Arc<crate::remote::data::RemoteData>> {
        match self.outcome()? {
            Outcome::Remote(r) => Some(&r.data),
            _ => None,
        }
    }

    /// The value, when it lives in another process (maybe with a copy here).
    pub(crate) fn remote_value(&self) -> Option<&RemoteValue<T>> {
        match self.outcome()? {
            Outcome::Remote(r) => Some(r),
            _ => None,
        }
    }

    /// Moves the value out (only through a unique handle).
    pub(crate) fn take_value(&mut self) -> Option<Result<T, TaskError>> {
        let outcome = self.take_outcome()?;
        Some(outcome.into_value(self.header()))
    }
}

/// A task with result type `T` and body type `F`.
pub(crate) struct TaskInner<T, F> {
    header: Header,
    body: UnsafeCell<Option<F>>,
    result: UnsafeCell<Option<Outcome<T>>>,
}

// SAFETY: the body is touched only by the single party that claimed it through the state
// machine; the result is written once before DONE is published (release) and read only after
// DONE is observed (acquire). Shared reads of the result need `T: Sync`.
unsafe impl<T: Send + Sync, F: Send> Send for TaskInner<T, F> {}
unsafe impl<T: Send + Sync, F: Send> Sync for TaskInner<T, F> {}

impl<T, F> TaskInner<T, F> {
    #[inline(always)]
    pub(crate) fn new(header: Header, body: Option<F>, result: Option<Outcome<T>>) -> Self {
        if matches!(result, Some(Outcome::Value(_))) {
            stats::result_stored();
        }
        TaskInner {
            header,
            body: UnsafeCell::new(body),
            result: UnsafeCell::new(result),
        }
    }
}

impl<T, F> Drop for TaskInner<T, F> {
    fn drop(&mut self) {
        if matches!(self.result.get_mut(), Some(Outcome::Value(_))) {
            stats::result_freed();
        }
    }
}

/// How often the run time of a task with no placement choice is measured.
const SAMPLE_EVERY: u32 = 64;

/// The task whose body is running on this thread.
pub(crate) fn with_current_task<R>(f: impl FnOnce(Option<&JobRef>) -> R) -> R {
    let p = CTX.with(|c| c.task.get());
    // SAFETY: the pointer is set only while the referenced JobRef is alive on the stack of
    // the frame that runs the body, and reset before that frame returns.
    f((!p.is_null()).then(|| unsafe { &*p }))
}

/// The thread's task context while a body runs; restores the previous one on drop (also
/// when the body unwinds).
/// The options cells of a thread (`options`, `view`) as a pair.
type OptionCells = (Option<Arc<Options>>, Option<Arc<Options>>);

struct BodyScope {
    prev_task: *const JobRef,
    prev_options: Option<OptionCells>,
    prev_group: Option<Arc<Group>>,
}

impl BodyScope {
    fn enter(me: &JobRef, header: &Header) -> BodyScope {
        CTX.with(|c| {
            let prev_task = c.task.replace(me as *const JobRef);
            let outer_options = c.options.take();
            let outer_view = c.view.take();
            let prev_options =
                if header.meta.is_some() || outer_options.is_some() || outer_view.is_some() {
                    c.options.set(header.inherited.clone());
                    c.view.set(header.meta.clone());
                    Some((outer_options, outer_view))
                } else {
                    None
                };
            BodyScope {
                prev_task,
                prev_options,
                // Tasks spawned by the body do not join the group of whoever spawned it.
                prev_group: c.group.take(),
            }
        })
    }
}

impl Drop for BodyScope {
    fn drop(&mut self) {
        CTX.with(|c| {
            c.task.set(self.prev_task);
            if let Some((options, view)) = self.prev_options.take() {
                c.options.set(options);
                c.view.set(view);
            }
            if let Some(g) = self.prev_group.take() {
                c.group.set(Some(g));
            }
        });
    }
}

impl<T, F> TaskInner<T, F>
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    /// Writes the result and publishes it. The caller moved the state to COMPLETING.
    fn store(&self, result: Outcome<T>) -> Drain<Waiter> {
        if matches!(result, Outcome::Value(_)) {
            stats::result_stored();
        }
        // SAFETY: only the party that moved the task to COMPLETING writes the result, and no
        // one reads it before DONE is published below.
        unsafe { *self.result.get() = Some(result) };
        self.header.state.publish();
        if let Placement::Anywhere(a) = &self.header.placement {
            crate::sched::ahead::finished(a);
        }
        self.header.waiters.close()
    }

    fn outcome_error(&self) -> Option<TaskError> {
        // SAFETY: called after `store`, by the party that stored the result.
        match unsafe { &*self.result.get() } {
            Some(Outcome::Failed(e)) => Some(e.clone()),
            _ => None,
        }
    }

    fn try_restore(&self) -> Option<Outcome<T>> {
        let meta = self.header.meta.as_ref()?;
        let restore = meta.restore.as_ref()?;
        let info = TaskInfo {
            id: self.header.id,
            name: self.header.name_str(),
        };
        match catch_unwind(AssertUnwindSafe(|| restore(&info, TypeId::of::<T>()))) {
            Ok(Some(value)) => match value.downcast::<T>() {
                Ok(v) => Some(Outcome::Value(*v)),
                Err(_) => None,
            },
            Ok(None) => None,
            Err(_) => {
                log::warn!(
                    "the restore hook of {} panicked; running the task instead",
                    self.header.id
                );
                None
            }
        }
    }

    fn checkpoint(&self, value: &T) {
        let Some(save) = self
            .header
            .meta
            .as_ref()
            .and_then(|m| m.checkpoint.as_ref())
        else {
            return;
        };
        let info = TaskInfo {
            id: self.header.id,
            name: self.header.name_str(),
        };
        match catch_unwind(AssertUnwindSafe(|| save(&info, value))) {
            Ok(Some(Err(e))) => {
                log::warn!("checkpoint of {} failed: {e}", self.header.id)
            }
            Ok(_) => {}
            Err(_) => log::warn!("the checkpoint hook of {} panicked", self.header.id),
        }
    }
}

impl<T, F> Job for TaskInner<T, F>
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    fn header(&self) -> &Header {
        &self.header
    }

    fn run(&self, me: &JobRef) -> Finished {
        // SAFETY: the caller won QUEUED -> RUNNING, which makes it the only party that may
        // take the body.
        let body = unsafe { (*self.body.get()).take() };
        let Some(body) = body else {
            return Finished(None);
        };
        let header = &self.header;

        if let Some(restored) = self.try_restore() {
            drop(body);
            return finish(self, restored);
        }

        let measure = (header.placement.is_choice() && header.planned_ns.is_none())
            || CTX.with(|c| {
                let n = c.sample.get().wrapping_add(1);
                c.sample.set(n);
                n % SAMPLE_EVERY == 0
            });
        let started = measure.then(std::time::Instant::now);
        let outcome = {
            let _scope = BodyScope::enter(me, header);
            catch_unwind(AssertUnwindSafe(|| body.run_outcome()))
        };
        if let Some(started) = started {
            crate::sched::record_run_time(header, self.signature(), started.elapsed());
        }
        let result = match outcome {
            Ok(Ok(Outcome::Value(v))) => {
                self.checkpoint(&v);
                Outcome::Value(v)
            }
            Ok(Ok(other)) => other,
            Ok(Err(e)) => Outcome::Failed(TaskError::failed(header.id, header.name(), e)),
            Err(payload) => Outcome::Failed(TaskError::panicked(header.id, header.name(), payload)),
        };
        finish(self, result)
    }

    fn abort(&self, err: TaskError) -> Option<Drain<Waiter>> {
        let prev = self.header.state.abort()?;
        if prev != state::RUNNING {
            // SAFETY: the task never started, and winning the abort makes us the only party
            // that can touch the body.
            unsafe { *self.body.get() = None };
        }
        Some(self.store(Outcome::Failed(err)))
    }

    fn error(&self) -> Option<TaskError> {
        self.outcome().and_then(|o| o.error().cloned())
    }

    fn signature(&self) -> TypeId {
        TypeId::of::<F>()
    }

    fn encode_remote(&self) -> Result<(WireCall, Vec<Input>), BoxError> {
        // SAFETY: the caller claimed the task, so it alone may touch the body; the body stays
        // in place while the call runs elsewhere (it keeps the inputs alive).
        let body = unsafe { (*self.body.get()).as_ref() };
        body.ok_or("the task has no body")?.encode()
    }

    fn unclaim(&self) -> bool {
        self.header.state.unclaim()
    }

    fn end_claim(&self) {
        if self.header.state.load() >= state::COMPLETING {
            // SAFETY: the task completed while claimed (its abort left the body alone), and
            // the caller is its claimer, done encoding it: nobody else touches the body.
            unsafe { *self.body.get() = None };
        }
    }

    fn held(&self) -> Option<Held> {
        match self.outcome()? {
            Outcome::Value(_) => Some(Held::Here),
            Outcome::Remote(r) => r.data.try_location().ok().map(Held::At),
            Outcome::Failed(_) => None,
        }
    }

    fn result_data(&self) -> Option<Arc<crate::remote::data::RemoteData>> {
        match self.outcome()? {
            Outcome::Remote(r) => Some(r.data.clone()),
            _ => None,
        }
    }

    fn complete_remote(
        &self,
        result: Result<Arc<crate::remote::data::RemoteData>, (ErrorKind, String)>,
    ) {
        if !self.header.state.finish_run() {
            self.end_claim(); // cancelled meanwhile
            return;
        }
        // SAFETY: finishing the run makes us the only party that can touch the body.
        let body = unsafe { &mut *self.body.get() };
        let outcome = match (result, body.as_ref().and_then(|b| b.remote())) {
            (Ok(data), Some((_, entry))) => {
                Outcome::Remote(RemoteValue::new(data, entry.result.decode))
            }
            (Ok(_), None) => Outcome::Failed(TaskError::with_message(
                self.header.id,
                self.header.name(),
                ErrorKind::Runtime,
                "a task without a registered function completed remotely".into(),
            )),
            (Err((kind, msg)), _) => Outcome::Failed(TaskError::with_message(
                self.header.id,
                self.header.name(),
                kind,
                msg,
            )),
        };
        // Dropped where it is: the arguments are cold by now, and taking the body out
        // would first copy all of it.
        *body = None;
        let waiters = self.store(outcome);
        let err = self.outcome_error();
        notify(waiters, err.as_ref());
    }
}

/// Completes a task whose body ran (or was restored): its waiters, to tell.
fn finish<T, F>(task: &TaskInner<T, F>, result: Outcome<T>) -> Finished
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    if !task.header.state.finish_run() {
        // Cancelled while running: the cancellation already completed the task.
        return Finished(None);
    }
    let waiters = task.store(result);
    Finished(Some((waiters, task.outcome_error())))
}

/// A task that [`Job::run`] completed: its waiters, told by [`notify`](Finished::notify),
/// or when it is dropped (also while a panic unwinds: no waiter is left behind).
#[must_use = "the waiters of the task are told when it is notified or dropped"]
pub(crate) struct Finished(Option<(Drain<Waiter>, Option<TaskError>)>);

impl Finished {
    /// Tells the task's waiters that it completed (dependents may run from now on).
    pub(crate) fn notify(self) {
        drop(self);
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some((waiters, err)) = self.0.take() {
            notify(waiters, err.as_ref());
        }
    }
}

impl<T, F> TaskCell<T> for TaskInner<T, F>
where
    T: Send + Sync + 'static,
    F: TaskBody<T>,
{
    fn outcome(&self) -> Option<&Outcome<T>> {
        if !self.header.state.is_done() {
            return None;
        }
        // SAFETY: DONE was observed with acquire ordering; the result is never written again.
        unsafe { (*self.result.get()).as_ref() }
    }

    fn take_outcome(&mut self) -> Option<Outcome<T>> {
        if !self.header.state.is_done() {
            return None;
        }
        let taken = self.result.get_mut().take();
        if matches!(taken, Some(Outcome::Value(_))) {
            stats::result_freed();
        }
        taken
    }
}

/// Tells every waiter that a task completed (`err` is its error, if it failed).
pub(crate) fn notify(waiters: Drain<Waiter>, err: Option<&TaskError>) {
    let mut failed: Vec<(JobRef, TaskError)> = Vec::new();
    notify_into(waiters, err, &mut failed);
    cascade(failed);
}

fn notify_into(
    waiters: Drain<Waiter>,
    err: Option<&TaskError>,
    failed: &mut Vec<(JobRef, TaskError)>,
) {
    for waiter in waiters {
        match waiter {
            Waiter::Task(dep) => match err {
                None => input_ready(dep),
                Some(e) => failed.push((dep, e.clone())),
            },
            Waiter::Thread(t) => t.unpark(),
            Waiter::Waker(slot) => slot.wake(),
            Waiter::Abort(group) => {
                if let Some(e) = err {
                    group.abort(e);
                }
            }
        }
    }
}

/// Fails every task in `failed` (and their dependents, transitively) without recursion, so a
/// failure at the head of a long chain cannot overflow the stack.
fn cascade(mut failed: Vec<(JobRef, TaskError)>) {
    while let Some((dep, cause)) = failed.pop() {
        let h = dep.header();
        let err = TaskError::upstream(h.id, h.name(), &cause);
        if let Some(waiters) = dep.abort(err.clone()) {
            notify_into(waiters, Some(&err), &mut failed);
        }
    }
}

/// One input of `dep` became available.
pub(crate) fn input_ready(dep: JobRef) {
    // Sequentially consistent with `remote::requeue`, which may move `dep` back to WAITING.
    let h = dep.header();
    if h.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        if h.state.make_ready() {
            crate::sched::schedule(dep);
        } else {
            // It was sent ahead of its inputs, and its worker may have reported it already.
            crate::sched::ahead::inputs_arrived(h);
        }
    }
}

/// Completes `job` with an error of the given kind (if it is not complete yet).
pub(crate) fn fail_job(job: &JobRef, kind: ErrorKind, msg: String) -> bool {
    let h = job.header();
    let err = TaskError::with_message(h.id, h.name(), kind, msg);
    abort_with(job, err)
}

/// Completes `job` with `err` (if it is not complete yet) and notifies its waiters.
pub(crate) fn abort_with(job: &JobRef, err: TaskError) -> bool {
    match job.abort(err.clone()) {
        Some(waiters) => {
            notify(waiters, Some(&err));
            true
        }
        None => false,
    }
}

/// Cancels `job`: a queued or waiting task never runs; a running one is reported cancelled at
/// once (its body sees [`is_cancelled`](crate::is_cancelled) and its result is discarded).
pub(crate) fn cancel_job(job: &JobRef) -> bool {
    let h = job.header();
    abort_with(job, TaskError::cancelled(h.id, h.name()))
}

#[cfg(test)]
mod wait_list_tests {
    // Kept out of wait_list.rs, which tests/loom.rs compiles against loom.
    use super::wait_list::WaitList;
    use std::sync::Arc;

    #[test]
    fn close_hands_over_in_arrival_order_once() {
        let list = WaitList::new();
        for i in 0..5 {
            list.push(i).unwrap();
        }
        assert_eq!(list.close().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(list.close().count(), 0);
        assert_eq!(list.push(9), Err(9));
    }

    #[test]
    fn embedded_slots_hand_over_without_owning_memory() {
        use super::wait_list::Slot;
        let list = WaitList::new();
        let slot = Slot::new();
        let item = Arc::new(5);
        list.push(item.clone()).unwrap();
        // SAFETY: `slot` outlives the list's use of it (both live to the end of the test).
        unsafe { list.push_in(&slot, item.clone()) }.unwrap();
        list.push(item.clone()).unwrap();
        assert_eq!(Arc::strong_count(&item), 4);
        assert_eq!(list.close().count(), 3);
        assert_eq!(Arc::strong_count(&item), 1);
        // refused once closed, and the value comes back
        let slot2 = Slot::new();
        let back = unsafe { list.push_in(&slot2, item.clone()) }.unwrap_err();
        assert!(Arc::ptr_eq(&back, &item));
        drop(back);
        // values still in a dropped list are released
        let list = WaitList::new();
        let slot3 = Slot::new();
        unsafe { list.push_in(&slot3, item.clone()) }.unwrap();
        drop(list);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn dropping_frees_what_was_never_handed_over() {
        let item = Arc::new(());
        {
            let list = WaitList::new();
            list.push(item.clone()).unwrap();
            list.push(item.clone()).unwrap();
            assert_eq!(Arc::strong_count(&item), 3);
        }
        assert_eq!(Arc::strong_count(&item), 1);
        // a partly consumed drain frees the rest
        let list = WaitList::new();
        list.push(item.clone()).unwrap();
        list.push(item.clone()).unwrap();
        let mut drain = list.close();
        drop(drain.next());
        drop(drain);
        assert_eq!(Arc::strong_count(&item), 1);
        assert!(WaitList::<u8>::new_closed().push(1).is_err());
    }
}
