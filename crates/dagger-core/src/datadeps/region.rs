//! The region: records tasks with their accesses, derives the dependency graph, plans and
//! launches the tasks when the closure returns, waits for all of them.

use super::access::{Access, Call, Declarations, Declared, Sealed};
use super::data::{Block, Data, KeyRef, Slice};
use super::plan::{
    self, CostPlanner, PlanData, PlanProc, PlanTask, Planner, Traversal, DEFAULT_COST_NS,
};
use super::remote::{
    self as rm, Copies, Home, Lazy, Need, RemoteAccess, RemoteArg, RemoteArgs, RemoteSpec,
    Transfers, VersionPlan, LAZY,
};
use super::tracker::{KeyState, Span};
use crate::chunk::Chunk;
use crate::error::{BoxError, ErrorKind, TaskError};
use crate::id::TaskId;
use crate::options::Options;
use crate::remote::data::{Label, RemoteData};
use crate::remote::Ran;
use crate::sched::{Exec, Placement, Registry, WorkerThread};
use crate::scope::{ProcessorInfo, Scope};
use crate::task::state::{TaskState, WAITING};
use crate::task::wait_list::{Slot, WaitList};
use crate::task::{
    link_inputs, DTask, Header, JobRef, Outcome, RemoteValue, TaskBody, TaskInner, NO_PROC,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

/// How a region plans its tasks.
///
/// ```
/// use dagger_core::{spawn_datadeps_with, DatadepsOptions, RoundRobin, Traversal};
/// let opts = DatadepsOptions::new().planner(RoundRobin::default()).traversal(Traversal::Bfs);
/// assert_eq!(spawn_datadeps_with(opts, |_dd| 7).unwrap(), 7);
/// ```
pub struct DatadepsOptions {
    planner: Box<dyn Planner>,
    traversal: Traversal,
    transfers: Transfers,
}

impl Default for DatadepsOptions {
    fn default() -> Self {
        DatadepsOptions {
            planner: Box::new(CostPlanner::new()),
            traversal: Traversal::InOrder,
            transfers: Transfers::new(),
        }
    }
}

impl fmt::Debug for DatadepsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatadepsOptions")
            .field("traversal", &self.traversal)
            .finish_non_exhaustive()
    }
}

impl DatadepsOptions {
    /// The defaults: the [`CostPlanner`], in-order traversal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the planner that chooses each task's thread.
    pub fn planner(mut self, planner: impl Planner + 'static) -> Self {
        self.planner = Box::new(planner);
        self
    }

    /// Sets the order in which tasks are planned and launched.
    pub fn traversal(mut self, traversal: Traversal) -> Self {
        self.traversal = traversal;
        self
    }

    /// Counts the values the region copies between processes into `transfers` (a handle:
    /// read it after the region).
    pub fn transfers(mut self, transfers: &Transfers) -> Self {
        self.transfers = transfers.clone();
        self
    }
}

/// State shared by a region and the tasks and handles it made (outlives the region).
struct Shared {
    /// Set when every task of the region finished; region task handles may be read after.
    finished: AtomicBool,
    /// Task bodies not yet dropped (counted without a lock: every task body decrements it;
    /// only the last one takes `wake` to notify the region).
    bodies: AtomicUsize,
    wake: Mutex<()>,
    all_dropped: Condvar,
    /// Measured run time of each task (ns), for the learned estimates.
    times: OnceLock<Box<[AtomicU64]>>,
}

/// Decrements the body count when a task body is dropped (after running, or unrun).
struct BodyGuard(Arc<Shared>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.0.body_dropped(1);
    }
}

/// How often a region waiting outside the pool wakes to free its finished tasks.
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

impl Shared {
    /// Waits until no task body is left (true) or `timeout` passed (false).
    fn wait_bodies(&self, timeout: std::time::Duration) -> bool {
        let g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if self.bodies.load(Ordering::Acquire) == 0 {
            return true;
        }
        let (_g, _) = self
            .all_dropped
            .wait_timeout(g, timeout)
            .unwrap_or_else(|e| e.into_inner());
        self.bodies.load(Ordering::Acquire) == 0
    }

    /// Counts `k` task bodies as dropped; the last one wakes the region.
    fn body_dropped(&self, k: usize) {
        if self.bodies.fetch_sub(k, Ordering::AcqRel) == k {
            // taking the lock orders this notification after the region's check of the count
            let _g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
            self.all_dropped.notify_all();
        }
    }
}

/// The state of one task handle of a region.
struct TaskSlot<R> {
    id: TaskId,
    index: u32,
    region: u64,
    /// The name given in the options, if any.
    name: Option<Arc<str>>,
    /// The name derived from the function (used when none was given).
    static_name: &'static str,
    task: OnceLock<DTask<R>>,
    shared: Arc<Shared>,
}

/// The handle of a task spawned in a datadeps region.
///
/// Region tasks start when the region's closure returns, so their results can be read only
/// after [`spawn_datadeps`] returned: return the handle from the closure. Reading it earlier
/// (in the closure, or in another task of the region) is an error, not a deadlock. Inside the
/// region, the handle (a clone) can be passed to later tasks, which then read the result
/// (`&T`).
///
/// ```
/// use dagger_core::{spawn_datadeps, In};
/// let xs = vec![1.0, 2.0, 3.0];
/// let (sum, n) = spawn_datadeps(|dd| {
///     let xs = dd.read(&xs);
///     let sum = dd.spawn(|xs: &Vec<f64>| xs.iter().sum::<f64>(), (In(xs),));
///     assert!(sum.fetch().is_err()); // not inside the region
///     let n = dd.spawn(|s: &f64, xs: &Vec<f64>| *s / xs.len() as f64, (sum.clone(), xs));
///     (sum, n)
/// })
/// .unwrap();
/// assert_eq!((sum.fetch().unwrap(), n.fetch().unwrap()), (6.0, 2.0));
/// ```
pub struct RegionTask<R> {
    slot: Arc<TaskSlot<R>>,
}

impl<R> Clone for RegionTask<R> {
    fn clone(&self) -> Self {
        RegionTask {
            slot: self.slot.clone(),
        }
    }
}

impl<R: Send + Sync + 'static> fmt::Debug for RegionTask<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionTask")
            .field("id", &self.slot.id.get())
            .field("index", &self.slot.index)
            .field("name", &self.name())
            .finish()
    }
}

impl<R: Send + Sync + 'static> RegionTask<R> {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.slot.id
    }

    /// The task's number in its region, in submission order.
    pub fn index(&self) -> usize {
        self.slot.index as usize
    }

    /// The task's name.
    pub fn name(&self) -> Option<&str> {
        Some(self.slot.name.as_deref().unwrap_or(self.slot.static_name))
    }

    fn error(&self, msg: String) -> TaskError {
        TaskError::with_message(
            self.slot.id,
            Some(
                self.slot
                    .name
                    .clone()
                    .unwrap_or_else(|| Arc::from(self.slot.static_name)),
            ),
            ErrorKind::Runtime,
            msg,
        )
    }

    /// The task, once its region finished.
    pub fn task(&self) -> Result<DTask<R>, TaskError> {
        if !self.slot.shared.finished.load(Ordering::Acquire) {
            return Err(self.error(
                "a task of a datadeps region was fetched inside its region: region tasks start \
                 when the region's closure returns, so this would wait forever; return the \
                 handle from the closure and fetch it after `spawn_datadeps` returns, or pass \
                 `&handle` to a later task of the region"
                    .into(),
            ));
        }
        self.slot.task.get().cloned().ok_or_else(|| {
            self.error("this task never ran: its region was refused or its closure panicked".into())
        })
    }

    /// True once the region finished (successfully or not).
    pub fn is_ready(&self) -> bool {
        self.slot.shared.finished.load(Ordering::Acquire)
    }

    /// A copy of the result (after the region), or the error the task failed with.
    pub fn fetch(&self) -> Result<R, TaskError>
    where
        R: Clone,
    {
        self.task()?.fetch()
    }

    /// The result, moved out when this is the last handle (after the region).
    pub fn into_value(self) -> Result<R, TaskError>
    where
        R: Clone,
    {
        let task = self.task()?;
        drop(self);
        task.into_value()
    }
}

impl<R> Sealed for RegionTask<R> {}

/// An earlier task's result, read by a later task of the same region.
impl<R: Send + Sync + 'static> Access for RegionTask<R> {
    type Out<'a> = &'a R;

    fn declare(&self, out: &mut Declarations) {
        out.0.push(Declared::Result {
            region: self.slot.region,
            task: self.slot.index,
        });
    }

    unsafe fn get<'a>(self) -> &'a R {
        let value: &R = self
            .slot
            .task
            .get()
            .and_then(|t| t.cell.value())
            .and_then(Result::ok)
            .expect("a region task runs after the tasks whose results it reads succeeded");
        // SAFETY: the value lives in the producing task, which the region keeps alive until
        // every task of the region finished.
        unsafe { &*(value as *const R) }
    }
}

/// An earlier task's result, read by a later task of the same region that may run in a worker
/// process ([`Region::spawn_task`]): a result made here (or a small one) is encoded when the
/// later task starts and sent with it; a result kept in the worker that made it is passed by
/// reference (fetched from that worker directly by another worker).
impl<R: Serialize + Send + Sync + 'static> RemoteAccess for RegionTask<R> {
    fn remote(&self) -> RemoteArg {
        let slot = self.slot.clone();
        let encode: rm::ResultEncoder = Arc::new(move || {
            let task = slot
                .task
                .get()
                .ok_or("the task whose result it reads has not finished (internal error)")?;
            if let Some(r) = task.cell.remote_value() {
                // kept in the worker that made it: passed by reference (small ones travel
                // with the task)
                if let Some(small) = r.data.small() {
                    return Ok(rm::ResultArg::Value(small.to_vec()));
                }
                return r.data.location().map(rm::ResultArg::At).map_err(|e| {
                    format!(
                        "the result of {} is lost: {e}",
                        slot.name.as_deref().unwrap_or(slot.static_name)
                    )
                });
            }
            let value = task
                .cell
                .value()
                .ok_or("the task whose result it reads has not finished (internal error)")?
                .map_err(|e| e.to_string())?;
            postcard::to_allocvec(value)
                .map(rm::ResultArg::Value)
                .map_err(|e| format!("cannot encode a {}: {e}", std::any::type_name::<R>()))
        });
        RemoteArg(rm::Repr::Result {
            encode,
            type_id: TypeId::of::<R>(),
            type_name: std::any::type_name::<R>(),
        })
    }
}

/// A value moved into a region, to be taken out after it ([`Region::output`]).
///
/// ```
/// use dagger_core::{spawn_datadeps, InOut};
/// let out = spawn_datadeps(|dd| {
///     let v = dd.own(vec![1, 2]);
///     dd.spawn(|v: &mut Vec<i32>| v.push(3), (InOut(v),));
///     dd.output(v)
/// })
/// .unwrap();
/// assert_eq!(out.into_inner(), Some(vec![1, 2, 3]));
/// ```
pub struct Output<T>(Arc<Mutex<Option<T>>>);

impl<T> Output<T> {
    /// The value, once the region returned (`None` before, or when it was taken already).
    pub fn into_inner(self) -> Option<T> {
        self.take()
    }

    /// Takes the value out, once the region returned.
    pub fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The value as a chunk, once the region returned.
    pub fn into_chunk(self) -> Option<Chunk<T>>
    where
        T: Send + Sync + 'static,
    {
        self.take().map(Chunk::new)
    }
}

impl<T> fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").finish_non_exhaustive()
    }
}

/// A value owned by the region (moved in with `own`): freed, or moved to its output, at the
/// end.
///
/// Its `finish` closure may borrow data of the region's `'scope`; the lifetime is erased
/// (the region drops every slot before it returns).
struct OwnedSlot {
    /// A `Box<T>` (or `Box<MaybeUninit<T>>` while `init` is false).
    ptr: *mut (),
    finish: Option<Box<dyn FnOnce(*mut (), Ending)>>,
    /// For a value taken from a chunk in a worker: whether the home value exists yet.
    init: Option<Arc<AtomicBool>>,
    /// What the region's end asks for.
    out: OutKind,
    /// Where the region left the latest version (set for chunk outputs).
    end: End,
}

/// What an owned value's end hands its `finish` closure.
struct Ending {
    /// Whether the home value exists.
    init: bool,
    end: End,
}

/// Where the latest version of an owned value is when the region ends.
#[derive(Default)]
enum End {
    /// Here (or the region failed: whatever is here).
    #[default]
    Home,
    /// In a worker process (taken from the region's copies).
    Worker(Arc<crate::remote::RemoteData>),
    /// Still the chunk it was taken from: no task changed it.
    Unchanged,
}

/// How an owned value leaves the region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutKind {
    /// It is dropped.
    Dropped,
    /// Moved to an [`Output`] (its latest version comes here).
    Value,
    /// Made a chunk where its latest version is ([`Region::output_chunk`]).
    Chunk,
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            let init = self.init.as_ref().is_none_or(|i| i.load(Ordering::Acquire));
            let end = std::mem::take(&mut self.end);
            f(self.ptr, Ending { init, end });
        }
    }
}

/// Frees an owned value's box, giving the value if it exists.
///
/// # Safety
/// `p` came from `Box::into_raw` of a `Box<T>` or a `Box<MaybeUninit<T>>`, holds a value
/// exactly when `init`, and is freed once.
unsafe fn take_home<T>(p: *mut (), init: bool) -> Option<T> {
    if init {
        // SAFETY: forwarded.
        Some(*unsafe { Box::from_raw(p as *mut T) })
    } else {
        // SAFETY: forwarded; `MaybeUninit<T>` has the layout of `T`.
        drop(unsafe { Box::from_raw(p as *mut std::mem::MaybeUninit<T>) });
        None
    }
}

/// What launching a recorded task needs.
struct LaunchCtx<'a> {
    reg: &'a Arc<Registry>,
    placement: Placement,
    preds: &'a [JobRef],
    inherited: Option<Arc<Options>>,
    /// Copies to make before the task runs.
    needs: &'a [Need],
    copies: Option<&'a Arc<Copies>>,
    /// The worker and thread the task runs on, if not here.
    remote: Option<(u32, u32)>,
    /// The planner's estimate of its run time (ns).
    cost_ns: u64,
}

/// A recorded task, launched once planned. It holds the task's function and arguments, which
/// may borrow data of the region's `'scope`; the lifetime is erased (the region runs or drops
/// every recorded task before it returns).
trait Launch {
    /// Creates and queues the runtime task; the recorded task becomes its body.
    fn launch(self: Box<Self>, ctx: &LaunchCtx<'_>) -> JobRef;
}

/// The body of a launched region task.
trait Body<R>: Send {
    /// The task's value: here, or kept in the worker that made it.
    fn run(self: Box<Self>) -> Result<Outcome<R>, BoxError>;
}

/// The runtime task body of a region task.
struct RegionBody<R>(Box<dyn Body<R>>);

impl<R: Send + Sync + 'static> TaskBody<R> for RegionBody<R> {
    fn run(self) -> Result<R, BoxError> {
        match self.run_outcome()? {
            Outcome::Value(v) => Ok(v),
            Outcome::Remote(r) => r.into_value(),
            Outcome::Failed(e) => Err(e.into()),
        }
    }

    fn run_outcome(self) -> Result<Outcome<R>, BoxError> {
        self.0.run()
    }
}

/// Erases the `'scope` of a closure kept by the region.
///
/// # Safety
/// The region must run or drop the result before `'scope` ends.
unsafe fn erase<'scope, A: ?Sized + 'scope, B: ?Sized + 'static>(b: Box<A>) -> Box<B>
where
    Box<A>: Erasable<Box<B>>,
{
    // SAFETY: forwarded.
    unsafe { b.erase() }
}

/// Conversion of a boxed closure with lifetime `'scope` to the same closure type with
/// `'static`.
trait Erasable<T> {
    unsafe fn erase(self) -> T;
}

impl<'scope> Erasable<Box<dyn Launch>> for Box<dyn Launch + 'scope> {
    unsafe fn erase(self) -> Box<dyn Launch> {
        // SAFETY: same type up to the object lifetime bound; see `erase`.
        unsafe { std::mem::transmute(self) }
    }
}

impl<'scope, R> Erasable<Box<dyn Body<R>>> for Box<dyn Body<R> + 'scope> {
    unsafe fn erase(self) -> Box<dyn Body<R>> {
        // SAFETY: same type up to the object lifetime bound; see `erase`.
        unsafe { std::mem::transmute(self) }
    }
}

impl<'scope> Erasable<Box<dyn FnOnce(*mut (), Ending)>>
    for Box<dyn FnOnce(*mut (), Ending) + 'scope>
{
    unsafe fn erase(self) -> Box<dyn FnOnce(*mut (), Ending)> {
        // SAFETY: same type up to the object lifetime bound; see `erase`.
        unsafe { std::mem::transmute(self) }
    }
}

/// A task recorded by `spawn`, launched when the closure returns.
struct Recorded {
    launch: Option<Box<dyn Launch>>,
    /// The name given in the options, if any.
    name: Option<Arc<str>>,
    static_name: &'static str,
    cost_ns: u64,
    /// The function it calls ([`Signatures`] index).
    sig: u32,
    /// Whether it may run in a worker process.
    remote: bool,
    scope: Option<Scope>,
}

struct State {
    keys: Vec<KeyState>,
    tasks: Vec<Recorded>,
    pred_start: Vec<u32>,
    preds: Vec<u32>,
    data_start: Vec<u32>,
    data: Vec<PlanData>,
    owned: Vec<OwnedSlot>,
    /// The key of each owned value's slot (`owned` index), by key.
    owned_of_key: HashMap<u32, usize>,
    /// Values taken from chunks in workers without bringing them here, by key.
    lazy: HashMap<u32, Arc<Lazy>>,
    /// The chunks they were taken from (`Chunk<T>`), by key.
    chunks: HashMap<u32, Box<dyn std::any::Any + Send + Sync>>,
    /// How to copy each key to and from workers (known once a task that may run there
    /// uses it).
    homes: Vec<Option<Home>>,
    refused: Option<TaskError>,
    scratch: Declarations,
    sigs: Signatures,
    /// For each task that may run in a worker (where it keeps its result), how a task here
    /// reading its result brings it here.
    fetchers: Vec<Option<FetchResult>>,
    /// The keys that workers may make from `T::default()` ([`Region::out_default`]).
    defaults: HashMap<u32, rm::MakeDefault>,
}

/// The functions the region's tasks call, each once: run-time estimates are looked up and
/// learned per function rather than per task (hashing a type name per task cost as much as
/// the rest of planning a trivial task).
#[derive(Default)]
struct Signatures {
    /// The type name of each function and the name shown for its tasks.
    names: Vec<(&'static str, &'static str)>,
    /// By the address and length of the type name (equal addresses are equal names).
    index: crate::hash::IdMap<(usize, usize), u32>,
}

impl Signatures {
    /// The index of the function with type name `sig`.
    fn intern(&mut self, sig: &'static str) -> u32 {
        let names = &mut self.names;
        *self
            .index
            .entry((sig.as_ptr() as usize, sig.len()))
            .or_insert_with(|| {
                names.push((sig, short_name(sig)));
                (names.len() - 1) as u32
            })
    }
}

static NEXT_REGION: AtomicU64 = AtomicU64::new(1);

/// Run-time estimates learned from earlier regions, by function.
fn learned() -> &'static Mutex<HashMap<&'static str, f64>> {
    static L: OnceLock<Mutex<HashMap<&'static str, f64>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// A data-dependency region (see [`spawn_datadeps`]): registers data and spawns tasks that
/// declare how they access it.
pub struct Region<'scope, 'env: 'scope> {
    id: u64,
    state: RefCell<State>,
    shared: Arc<Shared>,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl fmt::Debug for Region<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("Region")
            .field("data", &s.keys.len())
            .field("tasks", &s.tasks.len())
            .finish()
    }
}

impl<'scope, 'env> Region<'scope, 'env> {
    fn new_key(&self, writable: bool) -> KeyRef {
        let mut s = self.state.borrow_mut();
        let key = s.keys.len() as u32;
        s.keys.push(KeyState::default());
        s.homes.push(None);
        KeyRef {
            region: self.id,
            key,
            writable,
        }
    }

    /// Registers `value` (borrowed mutably for the region): tasks may read and write it;
    /// after the region `value` holds what the tasks left in it.
    pub fn data<T: Send + Sync + 'static>(&'scope self, value: &'env mut T) -> Data<'scope, T> {
        Data {
            key: self.new_key(true),
            ptr: NonNull::from(value),
            _scope: PhantomData,
        }
    }

    /// Lets a task in a worker that overwrites `data` whole ([`Out`](super::Out)) start from
    /// `T::default()` made there when that worker holds no copy of it yet, instead of being
    /// sent the current contents (a worker holding an older copy overwrites that one, and a
    /// task here overwrites the registered value, as without this). Only for tasks that
    /// really overwrite the value: one that reads what it declared `Out` may see the default.
    /// Returns `data`.
    ///
    /// ```
    /// use dagger_core::{spawn_datadeps, In, Out};
    /// let mut v = vec![1u64; 1000];
    /// let sum = spawn_datadeps(|dd| {
    ///     let v = dd.out_default(dd.data(&mut v));
    ///     dd.spawn(|v: &mut Vec<u64>| *v = vec![2; 10], (Out(v),));
    ///     dd.spawn(|v: &Vec<u64>| v.iter().sum::<u64>(), (In(v),))
    /// })
    /// .unwrap();
    /// assert_eq!((sum.fetch().unwrap(), v.len()), (20, 10));
    /// ```
    pub fn out_default<T>(&'scope self, data: Data<'scope, T>) -> Data<'scope, T>
    where
        T: Default + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut st = self.state.borrow_mut();
        if data.key.region == self.id {
            st.defaults
                .insert(data.key.key, rm::encode_default::<T> as rm::MakeDefault);
        } else if st.refused.is_none() {
            st.refused = Some(TaskError::with_message(
                TaskId::next(),
                Some(Arc::from("datadeps out_default")),
                ErrorKind::Runtime,
                "out_default was given data of another datadeps region".into(),
            ));
        }
        data
    }

    /// Registers `value` for reading only: a task declaring `Out` or `InOut` on it is refused.
    pub fn read<T: Send + Sync + 'static>(&'scope self, value: &'env T) -> Data<'scope, T> {
        Data {
            key: self.new_key(false),
            ptr: NonNull::from(value),
            _scope: PhantomData,
        }
    }

    fn own_raw<T: Send + Sync + 'static>(&'scope self, value: T) -> (KeyRef, NonNull<T>) {
        let ptr = Box::into_raw(Box::new(value));
        // SAFETY: `Box::into_raw` never returns null.
        let (key, _) = self.own_slot::<T>(ptr as *mut (), None);
        (key, unsafe { NonNull::new_unchecked(ptr) })
    }

    /// Registers the box at `ptr` (of a `T`, or of a `MaybeUninit<T>` while `init` is false)
    /// as owned data; its slot's index.
    fn own_slot<T: Send + Sync + 'static>(
        &'scope self,
        ptr: *mut (),
        init: Option<Arc<AtomicBool>>,
    ) -> (KeyRef, usize) {
        let key = self.new_key(true);
        let free: Box<dyn FnOnce(*mut (), Ending) + 'scope> = Box::new(|p: *mut (), e: Ending| {
            // SAFETY: `p` is the slot's box, freed once, holding a value when `e.init`.
            drop(unsafe { take_home::<T>(p, e.init) })
        });
        // SAFETY: the region drops its owned slots before it returns.
        let free = unsafe { erase::<'scope, _, dyn FnOnce(*mut (), Ending)>(free) };
        let mut s = self.state.borrow_mut();
        let slot = s.owned.len();
        s.owned.push(OwnedSlot {
            ptr,
            finish: Some(free),
            init,
            out: OutKind::Dropped,
            end: End::Home,
        });
        s.owned_of_key.insert(key.key, slot);
        (key, slot)
    }

    /// Moves `value` into the region: tasks may read and write it; it is dropped at the end of
    /// the region unless [`output`](Region::output) takes it out.
    pub fn own<T: Send + Sync + 'static>(&'scope self, value: T) -> Data<'scope, T> {
        let (key, ptr) = self.own_raw(value);
        Data {
            key,
            ptr,
            _scope: PhantomData,
        }
    }

    /// Moves the value of a task into the region once it finished (moved out of the task when
    /// `task` is its last handle, else cloned), like [`own`](Region::own). A failed task's
    /// error is returned.
    ///
    /// The value of a task that ran in a worker process is not brought here: like a chunk in
    /// a worker ([`own_chunk`](Region::own_chunk)), the region's first version of the data is
    /// the task's result where it lives, which tasks in that worker copy there and tasks in
    /// other workers copy from it directly; only a task here, or [`output`](Region::output),
    /// brings it here. The task's own result is never changed.
    ///
    /// ```
    /// use dagger_core::{spawn, spawn_datadeps, InOut};
    /// let t = spawn(|| vec![1, 2]);
    /// let out = spawn_datadeps(|dd| {
    ///     let v = dd.own_task(t.clone())?;
    ///     dd.spawn(|v: &mut Vec<i32>| v.push(3), (InOut(v),));
    ///     Ok::<_, dagger_core::TaskError>(dd.output(v))
    /// })
    /// .unwrap()
    /// .unwrap();
    /// assert_eq!(out.into_inner().unwrap(), vec![1, 2, 3]);
    /// assert_eq!(t.fetch().unwrap(), vec![1, 2]); // the task's result is unchanged
    /// ```
    pub fn own_task<T: Clone + Send + Sync + 'static>(
        &'scope self,
        task: DTask<T>,
    ) -> Result<Data<'scope, T>, TaskError> {
        task.wait_ok()?;
        if task.cell.remote_data().is_some() {
            // a result in a worker is a chunk there: its value stays where it lives
            return self.own_chunk(&Chunk::from_task(task));
        }
        Ok(self.own(task.into_value()?))
    }

    /// Moves the value of a chunk into the region, like [`own`](Region::own); the chunk itself
    /// is not changed (chunks are shared, immutable values). Take the final value out with
    /// [`output`](Region::output), or as a new chunk with [`output_chunk`](Region::output_chunk).
    ///
    /// A chunk whose value lives in a worker process is not copied here: the region's first
    /// version of the data is the chunk's value where it lives. Tasks in that worker copy it
    /// there (no transfer), tasks in other workers copy it from that worker directly, and only
    /// a task in this process, or [`output`](Region::output), brings it here. With
    /// [`output_chunk`](Region::output_chunk), a value changed only in workers never comes
    /// here at all.
    ///
    /// ```
    /// use dagger_core::{spawn_datadeps, tochunk, InOut};
    /// let c = tochunk(vec![1, 2]);
    /// let out = spawn_datadeps(|dd| {
    ///     let v = dd.own_chunk(&c)?;
    ///     dd.spawn(|v: &mut Vec<i32>| v.push(3), (InOut(v),));
    ///     Ok::<_, dagger_core::TaskError>(dd.output_chunk(v))
    /// })
    /// .unwrap()
    /// .unwrap();
    /// assert_eq!(out.into_inner().unwrap().fetch().unwrap(), vec![1, 2, 3]);
    /// assert_eq!(c.fetch().unwrap(), vec![1, 2]); // the chunk is unchanged
    /// ```
    pub fn own_chunk<T: Clone + Send + Sync + 'static>(
        &'scope self,
        chunk: &Chunk<T>,
    ) -> Result<Data<'scope, T>, TaskError> {
        let in_worker = chunk
            .cell
            .remote_data()
            .and_then(|d| d.try_location().ok())
            .filter(|_| crate::context::with_spawn_registry(|r| r.remote.mover().is_some()));
        let Some(loc) = in_worker else {
            return Ok(self.own(chunk.fetch()?));
        };
        let ptr = Box::into_raw(Box::new(std::mem::MaybeUninit::<T>::uninit())) as *mut T;
        let init = Arc::new(AtomicBool::new(false));
        let (key, _) = self.own_slot::<T>(ptr as *mut (), Some(init.clone()));
        let home = rm::RawPtr(ptr);
        let c = chunk.clone();
        let fill = Box::new(move || {
            let v = c
                .fetch()
                .map_err(|e| format!("fetching the chunk's value failed: {e}"))?;
            // SAFETY: the home box holds no value yet (filled once, before anything reads
            // or writes it: see `Lazy`).
            unsafe { home.get().write(v) };
            Ok(())
        });
        let mut st = self.state.borrow_mut();
        st.lazy
            .insert(key.key, Arc::new(Lazy::new(loc, fill, init)));
        st.chunks.insert(key.key, Box::new(chunk.clone()));
        drop(st);
        Ok(Data {
            key,
            // SAFETY: `Box::into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            _scope: PhantomData,
        })
    }

    /// Registers a slice (borrowed mutably for the region); views of it ([`Slice::view`]) are
    /// ordered by their index ranges.
    pub fn slice<T: Send + Sync + 'static>(&'scope self, value: &'env mut [T]) -> Slice<'scope, T> {
        let len = value.len();
        Slice {
            key: self.new_key(true),
            base: NonNull::from(value).cast(),
            start: 0,
            end: len,
            _scope: PhantomData,
        }
    }

    /// Registers a slice for reading only.
    pub fn read_slice<T: Send + Sync + 'static>(
        &'scope self,
        value: &'env [T],
    ) -> Slice<'scope, T> {
        let len = value.len();
        Slice {
            key: self.new_key(false),
            base: NonNull::from(value).cast(),
            start: 0,
            end: len,
            _scope: PhantomData,
        }
    }

    /// Moves a vector into the region as a slice (see [`slice`](Region::slice)).
    pub fn own_slice<T: Send + Sync + 'static>(&'scope self, value: Vec<T>) -> Slice<'scope, T> {
        let (key, ptr) = self.own_raw(value);
        // SAFETY: the vector lives (and is never resized) until the end of the region.
        let (base, len) = unsafe { ((*ptr.as_ptr()).as_mut_ptr(), (*ptr.as_ptr()).len()) };
        Slice {
            key,
            // SAFETY: a vector's buffer pointer is never null.
            base: unsafe { NonNull::new_unchecked(base) },
            start: 0,
            end: len,
            _scope: PhantomData,
        }
    }

    /// Registers a column-major `nrows` x `ncols` matrix stored in `value` (column `j` at
    /// `value[j * nrows..(j + 1) * nrows]`); its blocks ([`Block::block`], [`Block::tile`]) are
    /// ordered only when they share elements.
    ///
    /// # Panics
    /// If `value` has fewer than `nrows * ncols` elements.
    pub fn matrix<T: Send + Sync + 'static>(
        &'scope self,
        value: &'env mut [T],
        nrows: usize,
        ncols: usize,
    ) -> Block<'scope, T> {
        assert!(
            value.len() >= nrows * ncols,
            "a {nrows}x{ncols} matrix needs {} elements, the slice has {}",
            nrows * ncols,
            value.len()
        );
        Block {
            key: self.new_key(true),
            base: NonNull::from(value).cast(),
            ld: nrows,
            rows: (0, nrows),
            cols: (0, ncols),
            _scope: PhantomData,
        }
    }

    /// The owned slot of `data`.
    ///
    /// # Panics
    /// If `data` was not moved into this region.
    fn owned_slot<T>(&self, data: &Data<'scope, T>, what: &str) -> usize {
        let s = self.state.borrow();
        match (data.key.region == self.id)
            .then(|| s.owned_of_key.get(&data.key.key).copied())
            .flatten()
        {
            Some(slot) => slot,
            None => panic!(
                "Region::{what} takes data moved into this region with `own`; borrowed data \
                 is already the caller's after the region"
            ),
        }
    }

    /// Takes a value moved into the region with [`own`](Region::own) (or `own_task`,
    /// `own_chunk`) out at the end of the region, with whatever the tasks left in it (also
    /// after a failed region; `None` for a value that never came here from its chunk).
    ///
    /// # Panics
    /// If `data` was not moved into this region (borrowed data stays with its owner).
    pub fn output<T: Send + Sync + 'static>(&'scope self, data: Data<'scope, T>) -> Output<T> {
        let slot = self.owned_slot(&data, "output");
        let out = Arc::new(Mutex::new(None));
        let o = out.clone();
        let mut s = self.state.borrow_mut();
        s.owned[slot].out = OutKind::Value;
        s.owned[slot].finish = Some(Box::new(move |p: *mut (), e: Ending| {
            // SAFETY: `p` is the slot's box, taken once, holding a value when `e.init`.
            let v = unsafe { take_home::<T>(p, e.init) };
            *o.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }));
        Output(out)
    }

    /// Takes a value moved into the region out at the end of the region as a chunk that stays
    /// where the region left its latest version: in the worker process whose task changed it
    /// last (nothing is copied here), here, or, when no task changed a value taken with
    /// [`own_chunk`](Region::own_chunk), the chunk it was taken from. A chunk in a worker is
    /// lost if that worker dies (it cannot be made again: reading it is then an error naming
    /// the worker). After a failed region the chunk holds whatever the value was here, or the
    /// chunk it came from.
    ///
    /// ```
    /// use dagger_core::{spawn_datadeps, InOut};
    /// let out = spawn_datadeps(|dd| {
    ///     let v = dd.own(vec![1u8]);
    ///     dd.spawn(|v: &mut Vec<u8>| v.push(2), (InOut(v),));
    ///     dd.output_chunk(v)
    /// })
    /// .unwrap();
    /// assert_eq!(out.into_inner().unwrap().fetch().unwrap(), vec![1, 2]);
    /// ```
    ///
    /// # Panics
    /// If `data` was not moved into this region.
    pub fn output_chunk<T>(&'scope self, data: Data<'scope, T>) -> Output<Chunk<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let slot = self.owned_slot(&data, "output_chunk");
        let out = Arc::new(Mutex::new(None));
        let o = out.clone();
        // (the chunk a value taken with `own_chunk` came from, for when no task changed it)
        let from = self.chunk_of::<T>(data.key.key);
        let registry = crate::context::with_spawn_registry(|r| r.id);
        let mut s = self.state.borrow_mut();
        s.owned[slot].out = OutKind::Chunk;
        s.owned[slot].finish = Some(Box::new(move |p: *mut (), e: Ending| {
            // SAFETY: `p` is the slot's box, taken once, holding a value when `e.init`.
            let here = unsafe { take_home::<T>(p, e.init) };
            let chunk = match (e.end, here) {
                (End::Worker(data), _) => Some(Chunk::from_remote(data, registry)),
                (End::Unchanged, _) | (End::Home, None) => from,
                (End::Home, Some(v)) => Some(Chunk::new(v)),
            };
            *o.lock().unwrap_or_else(|e| e.into_inner()) = chunk;
        }));
        Output(out)
    }

    /// The chunk a lazily owned value of key `key` was taken from.
    fn chunk_of<T: Send + Sync + 'static>(&self, key: u32) -> Option<Chunk<T>> {
        self.state
            .borrow()
            .chunks
            .get(&key)
            .and_then(|c| c.downcast_ref::<Chunk<T>>())
            .cloned()
    }

    /// Spawns `f(args..)` as a task of the region; see [`spawn_with`](Region::spawn_with).
    pub fn spawn<F, A, R>(&'scope self, f: F, args: A) -> RegionTask<R>
    where
        F: Call<A, Output = R> + 'scope,
        A: Send + 'scope,
        R: Send + Sync + 'static,
    {
        self.spawn_inner(None, f, args, Ok(None), None)
    }

    /// Spawns `f(args..)` as a task of the region with options (`name`, `time_util` for the
    /// planner, `scope` to restrict where it runs; other placement options are ignored: the
    /// region plans placement). The task runs in this process: a scope naming only worker
    /// processes makes the region refuse it (closures cannot run in another process; see
    /// [`spawn_task`](Region::spawn_task)).
    ///
    /// `args` is a tuple of [`Access`] values: data handles wrapped in [`In`](super::In),
    /// [`Out`](super::Out) or [`InOut`](super::InOut) (a bare handle is read), `&RegionTask`
    /// (an earlier task's result, read) and [`Val`](super::Val) (a plain value).
    /// The task runs after every earlier task of the region whose accesses conflict with its
    /// own, so the region's effect equals running its tasks one by one in submission order.
    /// A task that would access the same data twice with a writer among them, writes
    /// read-only data, or names data of another region is refused: the region then runs none
    /// of its tasks and returns the refusal.
    pub fn spawn_with<F, A, R>(&'scope self, options: Options, f: F, args: A) -> RegionTask<R>
    where
        F: Call<A, Output = R> + 'scope,
        A: Send + 'scope,
        R: Send + Sync + 'static,
    {
        self.spawn_inner(Some(options), f, args, Ok(None), None)
    }

    /// Spawns a call of a `#[dagger::task]` function as a task of the region that may run in a
    /// worker process; see [`spawn_task_with`](Region::spawn_task_with).
    pub fn spawn_task<F, A, R>(&'scope self, f: F, args: A) -> RegionTask<R>
    where
        F: Call<A, Output = R> + Copy + 'static,
        A: RemoteArgs + 'scope,
        R: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.spawn_task_inner(None, f, args)
    }

    /// Spawns `f(args..)`, a call of a function registered with `#[dagger::task]`, as a task
    /// of the region that the planner may place in a worker process (when the context has
    /// workers), with options as for [`spawn_with`](Region::spawn_with) (a `scope` may name
    /// workers).
    ///
    /// The function takes what [`spawn`](Region::spawn) would give it: `&T` for data declared
    /// [`In`](super::In) and `&mut T` for data declared [`Out`](super::Out) or
    /// [`InOut`](super::InOut); `&[T]` / `&mut [T]` for views of slices, [`BlockRef`](super::BlockRef)
    /// / [`BlockMut`](super::BlockMut) for blocks of matrices, and `&P` / `&mut P` for parts
    /// (of [`Parts`](super::Parts) types that lend parts as `&P` and `&mut P`); `Vec<&T>` for
    /// a `Vec` of handles read; `&R` for an earlier region task's result (a `RegionTask<R>`,
    /// sent with the task); plain values are [`Val`](super::Val)s. Every type must be serde.
    ///
    /// When it runs in a worker, the region first copies there the whole values the worker
    /// does not hold in their latest version (once per version and worker, directly from the
    /// worker that wrote them), the function changes the worker's copies in place, and the
    /// values it wrote are copied back home only when a task here needs them or at the end of
    /// the region. Views are not kept in workers: only the view's elements are sent with the
    /// task, and the ones it writes come home as soon as it finished, so tasks writing
    /// disjoint views in different workers run at the same time and all their changes
    /// survive. In this process it runs like [`spawn`](Region::spawn), on the data itself.
    /// [`Transfers`] counts the copies.
    ///
    /// A function that is not registered, or whose parameters do not match the arguments'
    /// types and modes, is refused (the region then runs none of its tasks).
    ///
    /// ```
    /// use dagger_core::{spawn_datadeps, In, InOut};
    ///
    /// // with `#[dagger::task]` (from the `dagger` crate) on it, this may run in a worker
    /// fn add_into(acc: &mut Vec<u64>, xs: &Vec<u64>) {
    ///     acc.iter_mut().zip(xs).for_each(|(a, x)| *a += x);
    /// }
    ///
    /// let xs = vec![1u64, 2, 3];
    /// let mut acc = vec![10u64; 3];
    /// let err = spawn_datadeps(|dd| {
    ///     let (xs, acc) = (dd.read(&xs), dd.data(&mut acc));
    ///     dd.spawn_task(add_into, (InOut(acc), In(xs)));
    /// })
    /// .unwrap_err();
    /// // not registered here: refused, and nothing ran
    /// assert!(err.to_string().contains("not a #[dagger::task] function"), "{err}");
    /// assert_eq!(acc, vec![10; 3]);
    /// ```
    pub fn spawn_task_with<F, A, R>(&'scope self, options: Options, f: F, args: A) -> RegionTask<R>
    where
        F: Call<A, Output = R> + Copy + 'static,
        A: RemoteArgs + 'scope,
        R: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.spawn_task_inner(Some(options), f, args)
    }

    fn spawn_task_inner<F, A, R>(
        &'scope self,
        options: Option<Options>,
        f: F,
        args: A,
    ) -> RegionTask<R>
    where
        F: Call<A, Output = R> + Copy + 'static,
        A: RemoteArgs + 'scope,
        R: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut remote = Vec::new();
        args.remote(&mut remote);
        let reprs: Vec<rm::Repr> = remote.into_iter().map(|r| r.0).collect();
        let spec = match crate::remote::functions::table().lookup(TypeId::of::<F>()) {
            None => Err(format!(
                "`{}` is not a #[dagger::task] function, so it cannot run in another process; \
                 register it with #[dagger::task], or spawn it with `Region::spawn` to run it \
                 here",
                short_name(std::any::type_name::<F>())
            )),
            Some((id, entry)) => rm::check_call(entry, &reprs).map(|()| RemoteSpec {
                func: id,
                fn_name: entry.name,
                args: reprs,
            }),
        };
        if let Ok(spec) = &spec {
            let mut st = self.state.borrow_mut();
            for a in &spec.args {
                let homes: Vec<(u32, rm::Home)> = match a {
                    rm::Repr::Data { key, home, .. } => vec![(*key, *home)],
                    rm::Repr::Many { items, .. } => items
                        .iter()
                        .filter_map(|i| match i {
                            rm::Item::Data(key, home) => Some((*key, *home)),
                            rm::Item::View(_) => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for (key, home) in homes {
                    if let Some(h) = st.homes.get_mut(key as usize) {
                        *h = Some(home);
                    }
                }
            }
        }
        self.spawn_inner(
            options,
            f,
            args,
            spec.map(Some),
            Some((decode_result::<R>, decode_any::<R>)),
        )
    }

    fn spawn_inner<F, A, R>(
        &'scope self,
        options: Option<Options>,
        f: F,
        args: A,
        remote: Result<Option<RemoteSpec>, String>,
        decode: Option<(Decode<R>, crate::task::outcome::Decode)>,
    ) -> RegionTask<R>
    where
        F: Call<A, Output = R> + 'scope,
        A: Send + 'scope,
        R: Send + Sync + 'static,
    {
        let name: Option<Arc<str>> = options.as_ref().and_then(|o| o.name.clone());
        let hint = options.as_ref().and_then(|o| o.time_util);
        let scope = options.as_ref().and_then(|o| o.scope.clone());
        let id = TaskId::next();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let index = st.tasks.len() as u32;
        let sig = st.sigs.intern(std::any::type_name::<F>());
        let static_name = st.sigs.names[sig as usize].1;
        let slot = Arc::new(TaskSlot {
            id,
            index,
            region: self.id,
            name: name.clone(),
            static_name,
            task: OnceLock::new(),
            shared: self.shared.clone(),
        });

        let mut decls = std::mem::take(&mut st.scratch);
        decls.clear();
        F::declare(&args, &mut decls);
        let remote = match remote {
            Ok(r) => self.check(&decls.0).map(|()| r),
            Err(e) => Err(e),
        };
        let remote = match remote {
            Ok(r) => r,
            Err(msg) => {
                if st.refused.is_none() {
                    st.refused = Some(TaskError::with_message(
                        id,
                        Some(name.clone().unwrap_or_else(|| Arc::from(static_name))),
                        ErrorKind::Runtime,
                        format!("refused by its datadeps region: {msg}"),
                    ));
                }
                None
            }
        };
        let may_run_remote = remote.is_some();
        let first_pred = st.preds.len();
        let mut results = Vec::new();
        for d in &decls.0 {
            match *d {
                Declared::Data {
                    key,
                    span,
                    write,
                    overwrite,
                    ..
                } if (key as usize) < st.keys.len() => {
                    st.keys[key as usize].access(index, span, write, &mut st.preds);
                    st.data.push(PlanData {
                        key,
                        write,
                        view: span != Span::All,
                        overwrite: overwrite && span == Span::All,
                    });
                }
                Declared::Result { task, .. } if task < index => {
                    st.preds.push(task);
                    if let Some(f) = &st.fetchers[task as usize] {
                        results.push(f.clone());
                    }
                }
                _ => {}
            }
        }
        let new = &mut st.preds[first_pred..];
        new.sort_unstable();
        let mut n = 0;
        for i in 0..new.len() {
            if i == 0 || new[i] != new[n - 1] {
                new[n] = new[i];
                n += 1;
            }
        }
        st.preds.truncate(first_pred + n);
        st.pred_start.push(st.preds.len() as u32);
        st.data_start.push(st.data.len() as u32);
        st.scratch = decls;

        // What only tasks that may run in a worker need, boxed: the recorded tasks of purely
        // local tasks stay small (they are allocated per task).
        let remote: Option<Box<RemoteParts<R>>> = match (remote, decode) {
            (Some(spec), Some((decode, decode_any))) => Some(Box::new(RemoteParts {
                spec,
                decode,
                decode_any,
                name: name.clone(),
            })),
            _ => None,
        };
        let recipe: Box<dyn Launch + 'scope> = Box::new(Recipe {
            f,
            args,
            index,
            id,
            static_name,
            options,
            slot: Some(slot.clone()),
            remote,
            placed: None,
            guard: None,
            results,
            _scope: PhantomData,
        });
        st.fetchers
            .push(may_run_remote.then(|| fetch_result(&slot)));
        // SAFETY: the region runs or drops every recorded task before it returns.
        let launch = unsafe { erase::<'scope, _, dyn Launch>(recipe) };
        st.tasks.push(Recorded {
            launch: Some(launch),
            name,
            static_name,
            cost_ns: hint.map_or(0, |d| d.as_nanos() as u64),
            sig,
            remote: may_run_remote,
            scope,
        });
        RegionTask { slot }
    }

    /// Why a task with these accesses must be refused.
    fn check(&self, decls: &[Declared]) -> Result<(), String> {
        for (i, d) in decls.iter().enumerate() {
            match *d {
                Declared::Data {
                    region,
                    key,
                    span,
                    write,
                    writable,
                    ..
                } => {
                    if region != self.id {
                        return Err(format!(
                            "argument {} is data of another datadeps region; register it with \
                             this region",
                            i + 1
                        ));
                    }
                    if write && !writable {
                        return Err(format!(
                            "argument {} is declared Out/InOut but its data was registered read \
                             only (`Region::read`); register it with `Region::data` to write it",
                            i + 1
                        ));
                    }
                    for (j, e) in decls[..i].iter().enumerate() {
                        if let Declared::Data {
                            key: k2,
                            span: s2,
                            write: w2,
                            ..
                        } = *e
                        {
                            if k2 == key && (write || w2) && span.overlaps(s2) {
                                return Err(format!(
                                    "arguments {} and {} access overlapping data and one of them \
                                     writes it: the task would hold `&mut` and another borrow of \
                                     the same data at once",
                                    j + 1,
                                    i + 1
                                ));
                            }
                        }
                    }
                }
                Declared::Result { region, .. } => {
                    if region != self.id {
                        return Err(format!(
                            "argument {} is the result of a task of another datadeps region, \
                             which can be read only after that region",
                            i + 1
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The tasks that task `index` waits for (numbers in submission order), as derived from
    /// the declared accesses.
    ///
    /// ```
    /// use dagger_core::{spawn_datadeps, In, InOut};
    /// let mut v = vec![0u8; 4];
    /// spawn_datadeps(|dd| {
    ///     let v = dd.slice(&mut v);
    ///     let a = dd.spawn(|x: &mut [u8]| x.fill(1), (InOut(v.view(0..2)),));
    ///     let b = dd.spawn(|x: &mut [u8]| x.fill(2), (InOut(v.view(2..4)),));
    ///     let c = dd.spawn(|x: &[u8]| x.len(), (In(v.view(1..3)),));
    ///     assert!(dd.dependencies(b.index()).is_empty()); // disjoint views: parallel
    ///     assert_eq!(dd.dependencies(c.index()), vec![a.index(), b.index()]);
    /// })
    /// .unwrap();
    /// assert_eq!(v, [1, 1, 2, 2]);
    /// ```
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        let s = self.state.borrow();
        if index >= s.tasks.len() {
            return Vec::new();
        }
        let start = if index == 0 {
            0
        } else {
            s.pred_start[index - 1] as usize
        };
        s.preds[start..s.pred_start[index] as usize]
            .iter()
            .map(|&p| p as usize)
            .collect()
    }

    /// Launches every recorded task (planned in traversal order) and waits for all of them.
    fn run(&self, opts: &mut DatadepsOptions) -> Result<(), TaskError> {
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.refused.take() {
            st.tasks.clear();
            return Err(e);
        }
        let n = st.tasks.len();
        if n == 0 {
            // No task: a value taken from a chunk in a worker comes here only to be taken out
            // with `output` (with `output_chunk` the chunk itself comes out).
            let wanted: Vec<_> = st
                .lazy
                .iter()
                .filter(|(key, _)| {
                    st.owned_of_key
                        .get(key)
                        .is_some_and(|&slot| st.owned[slot].out == OutKind::Value)
                })
                .map(|(_, lazy)| lazy.clone())
                .collect();
            drop(st);
            for lazy in wanted {
                crate::sched::blocking(|| lazy.fill()).map_err(|e| {
                    TaskError::with_message(
                        TaskId::next(),
                        Some(Arc::from("datadeps output")),
                        ErrorKind::Runtime,
                        format!(
                            "bringing a chunk's value here from worker {} failed: {e}",
                            lazy.loc.worker
                        ),
                    )
                })?;
            }
            return Ok(());
        }
        let _ = self
            .shared
            .times
            .set((0..n).map(|_| AtomicU64::new(0)).collect());
        let mut pred_start = Vec::with_capacity(n + 1);
        pred_start.push(0u32);
        pred_start.extend_from_slice(&st.pred_start);
        let mut data_start = Vec::with_capacity(n + 1);
        data_start.push(0u32);
        data_start.extend_from_slice(&st.data_start);
        let order = plan::order(opts.traversal, n, &pred_start, &st.preds);

        {
            let learned = learned().lock().unwrap_or_else(|e| e.into_inner());
            let est: Vec<u64> = st
                .sigs
                .names
                .iter()
                .map(|(sig, _)| {
                    learned
                        .get(sig)
                        .map_or(DEFAULT_COST_NS, |&ns| ns.max(1.0) as u64)
                })
                .collect();
            drop(learned);
            for t in st.tasks.iter_mut() {
                if t.cost_ns == 0 {
                    t.cost_ns = est[t.sig as usize];
                }
            }
        }

        let reg = crate::context::with_spawn_registry(|r| r.clone());
        let local: Vec<(Arc<[u32]>, ProcessorInfo)> = reg
            .procs
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.exec, Exec::Thread(_)))
            .map(|(i, p)| (Arc::from(vec![i as u32]), p.info))
            .collect();
        // Worker processes take part when the region has tasks that may run there.
        let mover = reg
            .remote
            .mover()
            .filter(|_| st.tasks.iter().any(|t| t.remote))
            .cloned();
        let mut procs: Vec<(PlanProc, ProcessorInfo)> = local
            .iter()
            .enumerate()
            .map(|(t, (_, info))| {
                (
                    PlanProc {
                        process: 0,
                        thread: t as u32,
                    },
                    *info,
                )
            })
            .collect();
        if mover.is_some() {
            for w in reg.remote.snapshot().iter() {
                if w.alive.load(Ordering::Acquire) {
                    procs.extend((0..w.threads).map(|t| {
                        (
                            PlanProc {
                                process: w.id,
                                thread: t,
                            },
                            w.info(t),
                        )
                    }));
                }
            }
        }
        let copies = match mover {
            Some(m) if procs.len() > local.len() => Some(Arc::new(
                Copies::new(m, st.homes.clone(), st.lazy.clone(), opts.transfers.clone())
                    .with_defaults(st.defaults.clone()),
            )),
            _ => None,
        };
        if copies.is_none() {
            // every task runs here: values taken from chunks in workers come here first
            let failed = st.lazy.values().find_map(|l| {
                crate::sched::blocking(|| l.fill())
                    .err()
                    .map(|e| (l.loc.worker, e))
            });
            if let Some((worker, e)) = failed {
                st.tasks.clear();
                return Err(TaskError::with_message(
                    TaskId::next(),
                    Some(Arc::from("datadeps own_chunk")),
                    ErrorKind::Runtime,
                    format!("bringing a chunk's value here from worker {worker} failed: {e}"),
                ));
            }
        }
        // A task's scope must leave it somewhere to run.
        for t in st.tasks.iter() {
            let Some(scope) = &t.scope else { continue };
            let candidates = if t.remote {
                &procs[..]
            } else {
                &procs[..local.len()]
            };
            if !candidates.iter().any(|(_, info)| scope.contains(info)) {
                let why = if t.remote {
                    format!("no processor of this process or its workers is in its scope `{scope}`")
                } else {
                    format!(
                        "its scope `{scope}` names no thread of this process, and it can run \
                         only here: a closure, or a function spawned with `spawn` rather than \
                         `spawn_task`, cannot run in another process"
                    )
                };
                let name = t.name.as_deref().unwrap_or(t.static_name);
                let e = TaskError::with_message(
                    TaskId::next(),
                    Some(Arc::from(name)),
                    ErrorKind::Scheduling,
                    format!("{name} was refused by its datadeps region: {why}"),
                );
                st.tasks.clear();
                return Err(e);
            }
        }
        let plan_procs: Vec<PlanProc> = procs.iter().map(|(p, _)| *p).collect();
        opts.planner.start_procs(&plan_procs, n);
        let inherited = crate::tls::spawn_env().options;
        let mut versions = copies.as_ref().map(|_| {
            VersionPlan::new(st.keys.len(), st.lazy.keys().copied())
                .with_fresh(st.defaults.keys().copied())
        });
        let mut needs: Vec<Need> = Vec::new();

        self.shared.bodies.fetch_add(n, Ordering::AcqRel);
        let mut jobs: Vec<Option<JobRef>> = vec![None; n];
        // Wait for whatever was launched even if planning or launching unwinds.
        let waiter = WaitOnDrop {
            shared: &self.shared,
            unlaunched: n,
        };
        let mut waiter = waiter;
        let mut preds: Vec<JobRef> = Vec::new();
        for &i in &order {
            let i = i as usize;
            let ps = &st.preds[pred_start[i] as usize..pred_start[i + 1] as usize];
            let data = &st.data[data_start[i] as usize..data_start[i + 1] as usize];
            let t = &st.tasks[i];
            let mut choice = opts.planner.place(&PlanTask {
                index: i,
                name: Some(t.name.as_deref().unwrap_or(t.static_name)),
                preds: ps,
                cost_ns: t.cost_ns,
                data,
                remote: t.remote && copies.is_some(),
            });
            let usable = if t.remote && copies.is_some() {
                procs.len()
            } else {
                local.len()
            };
            if let Some(scope) = &t.scope {
                // the planner's choice if the scope allows it, else the first one it allows
                if !choice.is_some_and(|c| c < usable && scope.contains(&procs[c].1)) {
                    choice = procs[..usable]
                        .iter()
                        .position(|(_, info)| scope.contains(info));
                }
            }
            let (placement, at) = match choice {
                Some(c) if c < local.len() => (Placement::Choose(local[c].0.clone()), None),
                Some(c) if c < usable => {
                    let p = procs[c].0;
                    (Placement::Pool, Some((p.process, p.thread)))
                }
                _ => (Placement::Pool, None),
            };
            needs.clear();
            if let Some(v) = versions.as_mut() {
                let all = data.iter().map(|d| (d.key, d.write, d.overwrite, !d.view));
                let access = |keep: bool| {
                    all.clone()
                        .filter(move |a| a.3 == keep)
                        .map(|(k, w, o, _)| (k, w, o))
                };
                match at {
                    // a task in a worker uses whole values there, and views of data at home
                    // (their elements travel with it: see `remote`)
                    Some((w, _)) => {
                        v.task_with(w, access(true), &mut needs);
                        v.task_with(0, access(false), &mut needs);
                    }
                    None => v.task_with(0, all.map(|(k, w, o, _)| (k, w, o)), &mut needs),
                }
            }
            preds.clear();
            preds.extend(ps.iter().map(|&p| {
                jobs[p as usize]
                    .clone()
                    .expect("a traversal plans predecessors first")
            }));
            let launch = st.tasks[i].launch.take().expect("launched once");
            let ctx = LaunchCtx {
                reg: &reg,
                placement,
                preds: &preds,
                inherited: inherited.clone(),
                needs: &needs,
                copies: copies.as_ref(),
                remote: at,
                cost_ns: st.tasks[i].cost_ns,
            };
            waiter.unlaunched -= 1;
            jobs[i] = Some(launch.launch(&ctx));
        }
        drop(preds);
        drop(st);

        // Wait for the tasks in submission order, keeping only the first failure (a root
        // failure: its dependents come later) and letting each task go once it finished,
        // while later ones still run (a region of many small tasks would otherwise free them
        // all at the end, after the last one finished).
        let mut failed = None;
        let mut done = 0;
        let mut release = |jobs: &mut [Option<JobRef>], wait: bool| {
            while let Some(slot) = jobs.get_mut(done) {
                if let Some(job) = slot {
                    if !job.header().state.is_done() {
                        if !wait {
                            return;
                        }
                        crate::sched::wait_for(job.header(), job);
                    }
                    if failed.is_none() {
                        failed = job.error();
                    }
                }
                *slot = None;
                done += 1;
            }
        };
        if WorkerThread::with_current(|w| w.is_none()) {
            // Outside the pool, waiting for each task in turn would park and wake this
            // thread about once per task (they finish in about submission order): sleep on
            // the count of live bodies instead, waking now and then to let the finished
            // tasks go. (A compute thread waits task by task: it runs tasks meanwhile.)
            while !self.shared.wait_bodies(RELEASE_EVERY) {
                release(&mut jobs, false);
            }
        }
        release(&mut jobs, true);
        drop(jobs);
        drop(waiter); // waits for the bodies
        self.learn();
        if let Some(c) = copies {
            let written = match (&failed, versions) {
                (None, Some(v)) => self.settle(&c, &v, &reg),
                _ => Ok(()),
            };
            c.free_all();
            if let Err(e) = written {
                return Err(TaskError::with_message(
                    TaskId::next(),
                    Some(Arc::from("datadeps write-back")),
                    ErrorKind::Runtime,
                    format!("writing region data back from the workers failed: {e}"),
                ));
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// After every task succeeded: brings home the data whose latest version is in a worker
    /// (borrowed data, and owned data taken out with `output`), and leaves the latest version
    /// of data taken out with `output_chunk` where it is. Owned data nobody takes out is not
    /// brought back.
    fn settle(&self, c: &Copies, v: &VersionPlan, reg: &Registry) -> Result<(), String> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let out = |key: u32| {
            st.owned_of_key
                .get(&key)
                .map(|&slot| (slot, st.owned[slot].out))
        };
        let mut adopted = Vec::new();
        let mut back = vec![false; st.keys.len()];
        for key in 0..st.keys.len() as u32 {
            match (out(key), v.latest(key)) {
                (Some((slot, OutKind::Chunk)), LAZY) => adopted.push((slot, End::Unchanged)),
                (Some((slot, OutKind::Chunk)), w) if w != 0 => {
                    let taken = reg
                        .remote
                        .dispatcher()
                        .and_then(|d| Some((d, c.take_slot(key, w)?)));
                    match taken {
                        Some((d, loc)) => {
                            let label = crate::remote::data::Label::Text(format!(
                                "the value of datadeps region data {key}, left in worker {w}"
                            ));
                            let data = d.adopt(loc, label).inspect_err(|_| c.free(loc))?;
                            adopted.push((slot, End::Worker(data)));
                        }
                        // (nothing can take charge of it there: it comes here)
                        None => back[key as usize] = true,
                    }
                }
                (Some((_, OutKind::Chunk | OutKind::Dropped)), _) => {}
                _ => back[key as usize] = true,
            }
        }
        for (slot, end) in adopted {
            st.owned[slot].end = end;
        }
        c.write_back(&v.write_backs(|k| back[k as usize]))
    }

    /// Ends the region once no task body is left: drops unlaunched tasks, frees owned data or
    /// moves it to its outputs, and lets task handles be read.
    fn close(&self) {
        let (tasks, owned) = {
            let mut st = self.state.borrow_mut();
            (std::mem::take(&mut st.tasks), std::mem::take(&mut st.owned))
        };
        drop(tasks);
        drop(owned);
        self.shared.finished.store(true, Ordering::Release);
    }

    /// Folds this region's measured run times into the learned estimates.
    fn learn(&self) {
        let Some(times) = self.shared.times.get() else {
            return;
        };
        let st = self.state.borrow();
        let mut by_sig = vec![(0.0f64, 0u32); st.sigs.names.len()];
        for (t, ns) in st.tasks.iter().zip(times.iter()) {
            let ns = ns.load(Ordering::Relaxed);
            if ns > 0 {
                let e = &mut by_sig[t.sig as usize];
                e.0 += ns as f64;
                e.1 += 1;
            }
        }
        // (two indices may name equal type names: merge them)
        let mut sums: HashMap<&'static str, (f64, u32)> = HashMap::new();
        for (&(sig, _), (sum, n)) in st.sigs.names.iter().zip(by_sig) {
            if n > 0 {
                let e = sums.entry(sig).or_default();
                e.0 += sum;
                e.1 += n;
            }
        }
        let mut learned = learned().lock().unwrap_or_else(|e| e.into_inner());
        for (sig, (sum, n)) in sums {
            let mean = sum / f64::from(n);
            learned
                .entry(sig)
                .and_modify(|v| *v = 0.5 * *v + 0.5 * mean)
                .or_insert(mean);
        }
    }
}

/// Waits (when dropped) until every launched task body was dropped.
struct WaitOnDrop<'a> {
    shared: &'a Arc<Shared>,
    /// Bodies counted but never launched (their launch closures are dropped unrun).
    unlaunched: usize,
}

impl Drop for WaitOnDrop<'_> {
    fn drop(&mut self) {
        if self.unlaunched > 0 {
            self.shared.body_dropped(self.unlaunched);
        }
        let mut g = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
        while self.shared.bodies.load(Ordering::Acquire) > 0 {
            g = self
                .shared
                .all_dropped
                .wait(g)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A task recorded by `spawn`: its call and what running it needs. Launching turns this
/// same allocation into the runtime task's body (one allocation per task for both).
struct Recipe<'scope, F, A, R> {
    f: F,
    args: A,
    index: u32,
    id: TaskId,
    static_name: &'static str,
    options: Option<Options>,
    /// The task's handle state, until launched.
    slot: Option<Arc<TaskSlot<R>>>,
    /// What only tasks that may run in a worker need (boxed: most tasks are local).
    remote: Option<Box<RemoteParts<R>>>,
    /// Where it runs and the copies it makes first (set when launched, in a region with
    /// workers).
    placed: Option<Box<Placed>>,
    /// Counts the body as alive (set when launched: an unlaunched task is not counted).
    guard: Option<BodyGuard>,
    /// Bring here the results of earlier tasks it reads that are kept in workers.
    results: Vec<FetchResult>,
    _scope: PhantomData<&'scope ()>,
}

/// Brings the result of a finished region task kept in a worker here (nothing when it is
/// here): the bytes fetched, if any.
type FetchResult = Arc<dyn Fn() -> Result<Option<usize>, String> + Send + Sync>;

/// The [`FetchResult`] of the task behind `slot`.
fn fetch_result<R: Send + Sync + 'static>(slot: &Arc<TaskSlot<R>>) -> FetchResult {
    let slot = slot.clone();
    Arc::new(move || {
        let Some(r) = slot.task.get().and_then(|t| t.cell.remote_value()) else {
            return Ok(None);
        };
        if r.is_here() {
            return Ok(None);
        }
        let fetched = r.data.small().is_none();
        let loc = r.data.location().ok();
        r.get().map_err(|e| {
            let from = loc.map_or(String::new(), |l| format!(" from worker {}", l.worker));
            format!(
                "bringing the result of {} here{from} failed: {e}",
                slot.name.as_deref().unwrap_or(slot.static_name)
            )
        })?;
        Ok(fetched.then(|| loc.map_or(0, |l| l.bytes as usize)))
    })
}

impl<'scope, F, A, R> Launch for Recipe<'scope, F, A, R>
where
    F: Call<A, Output = R> + 'scope,
    A: Send + 'scope,
    R: Send + Sync + 'static,
{
    fn launch(mut self: Box<Self>, ctx: &LaunchCtx<'_>) -> JobRef {
        let slot = self.slot.take().expect("launched once");
        self.guard = Some(BodyGuard(slot.shared.clone()));
        self.placed = ctx.copies.map(|c| {
            Box::new(Placed {
                needs: ctx.needs.to_vec(),
                copies: c.clone(),
                at: ctx.remote,
            })
        });
        let (id, static_name) = (self.id, self.static_name);
        let meta = self.options.take().map(Arc::new);
        let body: Box<dyn Body<R> + 'scope> = self;
        // SAFETY: the region does not return before every body it launched was dropped (it
        // waits for the body count to reach zero, also when unwinding), so nothing the body
        // borrows for 'scope is used after 'scope.
        let body = unsafe { erase::<'scope, _, dyn Body<R>>(body) };
        let task = launch_task(ctx, id, Some(static_name), meta, body);
        let job = task.job();
        let _ = slot.task.set(task);
        job
    }
}

impl<'scope, F, A, R> Body<R> for Recipe<'scope, F, A, R>
where
    F: Call<A, Output = R> + 'scope,
    A: Send + 'scope,
    R: Send + Sync + 'static,
{
    fn run(self: Box<Self>) -> Result<Outcome<R>, BoxError> {
        let Recipe {
            f,
            args,
            index,
            id,
            static_name,
            remote,
            placed,
            guard,
            results,
            ..
        } = *self;
        let start = Instant::now();
        if let Some(p) = &placed {
            p.copies.ensure(&p.needs)?;
        }
        let r = match (&placed, &remote) {
            (Some(p), Some(rp)) if p.at.is_some() => {
                let (worker, thread) = p.at.expect("checked");
                let name = rp.name.as_deref().unwrap_or(static_name);
                // the result stays in the worker (where later tasks there use it) when this
                // process can reach it there later
                let link = p.copies.link();
                match p
                    .copies
                    .run(worker, thread, &rp.spec, Some(name), link.is_some())?
                {
                    Ran::Bytes(bytes) => Outcome::Value((rp.decode)(&bytes)?),
                    Ran::Kept(loc, small) => {
                        let link = link.ok_or("the cluster is shut down")?;
                        let label = Label::Task(id.get(), Some(Arc::from(name)));
                        let data = RemoteData::new(loc, link, None, label);
                        if let Some(small) = small {
                            data.keep_small(small[..].into());
                        }
                        Outcome::Remote(RemoteValue::new(data, rp.decode_any))
                    }
                }
            }
            _ => {
                if let Some(p) = &placed {
                    // results kept in workers that this task reads come here first
                    for fetch in &results {
                        if let Some(bytes) = fetch()? {
                            p.copies.count_fetched(bytes);
                        }
                    }
                }
                // SAFETY: the region launched this task after every task whose accesses
                // conflict with its own, and they all finished before it runs.
                Outcome::Value(unsafe { f.call(args) })
            }
        };
        if let Some(times) = guard.as_ref().and_then(|g| g.0.times.get()) {
            times[index as usize].store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Ok(r)
    }
}

/// Decodes the result of a task that ran in another process.
type Decode<R> = fn(&[u8]) -> Result<R, BoxError>;

/// What a task that may run in a worker carries besides its function and arguments.
struct RemoteParts<R> {
    spec: RemoteSpec,
    decode: Decode<R>,
    /// Decodes the result when it is kept in the worker and read here later.
    decode_any: crate::task::outcome::Decode,
    name: Option<Arc<str>>,
}

/// Decodes the encoded result of a task kept in another process.
fn decode_any<R: DeserializeOwned + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<crate::remote::functions::AnyValue, BoxError> {
    Ok(Arc::new(decode_result::<R>(bytes)?))
}

/// Where a task of a region with workers runs, and the copies it makes first.
struct Placed {
    needs: Vec<Need>,
    copies: Arc<Copies>,
    at: Option<(u32, u32)>,
}

/// Decodes the encoded result of a task that ran in another process.
fn decode_result<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, BoxError> {
    postcard::from_bytes(bytes).map_err(|e| {
        format!(
            "cannot decode a {} sent by a worker: {e}",
            std::any::type_name::<R>()
        )
        .into()
    })
}

/// The name shown for a task: the function's path without its crate, for closures the
/// enclosing function.
fn short_name(type_name: &'static str) -> &'static str {
    // (byte comparisons: this runs for every task, and `str` pattern searches are slow)
    let mut s = type_name;
    while let Some(t) = s.strip_suffix("::{{closure}}") {
        s = t;
    }
    if s.starts_with('<') {
        return s;
    }
    match s.as_bytes().windows(2).position(|w| w == b"::") {
        Some(i) => &s[i + 2..],
        None => s,
    }
}

/// Creates and launches one region task: pinned as planned, after `ctx.preds`.
fn launch_task<R: Send + Sync + 'static>(
    ctx: &LaunchCtx<'_>,
    id: TaskId,
    static_name: Option<&'static str>,
    meta: Option<Arc<Options>>,
    body: Box<dyn Body<R>>,
) -> DTask<R> {
    let task = Arc::new(TaskInner::<R, _>::new(
        Header {
            id,
            state: TaskState::new(WAITING),
            pending: AtomicU32::new(ctx.preds.len() as u32 + 1),
            waiters: WaitList::new(),
            edge: Slot::new(),
            ran_on: AtomicU32::new(NO_PROC),
            registry: ctx.reg.id,
            placement: match &ctx.placement {
                Placement::Choose(c) => Placement::Choose(c.clone()),
                _ => Placement::Pool,
            },
            priority: 0,
            static_name,
            meta,
            inherited: ctx.inherited.clone(),
            planned_ns: Some(ctx.cost_ns),
        },
        Some(RegionBody(body)),
        None,
    ));
    let job: JobRef = task.clone();
    let handle = DTask { cell: task };
    if link_inputs(&job, ctx.preds) {
        let pushed = WorkerThread::with_current(|w| match w {
            Some(w) if Arc::ptr_eq(&w.registry, ctx.reg) => {
                w.push_new(job.clone());
                true
            }
            _ => false,
        });
        if !pushed {
            ctx.reg.inject(job);
        }
    }
    handle
}

/// Runs `f` in a data-dependency region (the reference's `spawn_datadeps`) with the default
/// [`DatadepsOptions`], and returns its value once every task it spawned finished, or the
/// first task error (in submission order; it names the task).
///
/// Inside `f`, register data with the region ([`Region::data`], [`read`](Region::read),
/// [`own`](Region::own), [`slice`](Region::slice), [`matrix`](Region::matrix)) and spawn tasks
/// with [`Region::spawn`], declaring how each argument is used: [`In`](super::In) (`&T`),
/// [`Out`](super::Out) or [`InOut`](super::InOut) (`&mut T`). The region derives the task
/// graph from these declarations: readers of the same data run in parallel; a writer waits for
/// every earlier reader and writer of overlapping data; a reader waits for the last earlier
/// writer. The result equals running the tasks one by one in submission order.
///
/// Tasks start when `f` returns (the region plans them first), so waiting for one inside `f`
/// is an error rather than a deadlock.
///
/// ```
/// use dagger_core::{spawn_datadeps, In, InOut, Out};
///
/// fn add(dst: &mut [f64], src: &[f64]) {
///     dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
/// }
/// fn copy(dst: &mut [f64], src: &[f64]) {
///     dst.copy_from_slice(src);
/// }
///
/// let a = vec![1.0; 4];
/// let (mut b, mut c, mut d) = (vec![2.0; 4], vec![3.0; 4], vec![0.0; 4]);
/// spawn_datadeps(|dd| {
///     let a = dd.read_slice(&a);
///     let (b, c, d) = (dd.slice(&mut b), dd.slice(&mut c), dd.slice(&mut d));
///     dd.spawn(add, (InOut(b), In(a))); // B += A
///     dd.spawn(add, (InOut(c), In(a))); // C += A (in parallel with the first)
///     dd.spawn(add, (InOut(c), In(b))); // C += B (after both)
///     dd.spawn(copy, (Out(d), In(c)));  // D = C
/// })
/// .unwrap();
/// assert_eq!(c, vec![7.0; 4]);
/// assert_eq!(c, d);
/// ```
pub fn spawn_datadeps<'env, F, T>(f: F) -> Result<T, TaskError>
where
    F: for<'scope> FnOnce(&'scope Region<'scope, 'env>) -> T,
{
    spawn_datadeps_with(DatadepsOptions::default(), f)
}

/// Like [`spawn_datadeps`], with a planner and traversal order.
pub fn spawn_datadeps_with<'env, F, T>(mut options: DatadepsOptions, f: F) -> Result<T, TaskError>
where
    F: for<'scope> FnOnce(&'scope Region<'scope, 'env>) -> T,
{
    let region = Region {
        id: NEXT_REGION.fetch_add(1, Ordering::Relaxed),
        state: RefCell::new(State {
            keys: Vec::new(),
            tasks: Vec::new(),
            pred_start: Vec::new(),
            preds: Vec::new(),
            data_start: Vec::new(),
            data: Vec::new(),
            owned: Vec::new(),
            owned_of_key: HashMap::new(),
            lazy: HashMap::new(),
            chunks: HashMap::new(),
            homes: Vec::new(),
            refused: None,
            scratch: Declarations::default(),
            sigs: Signatures::default(),
            fetchers: Vec::new(),
            defaults: HashMap::new(),
        }),
        shared: Arc::new(Shared {
            finished: AtomicBool::new(false),
            bodies: AtomicUsize::new(0),
            wake: Mutex::new(()),
            all_dropped: Condvar::new(),
            times: OnceLock::new(),
        }),
        _scope: PhantomData,
        _env: PhantomData,
    };
    let value = match catch_unwind(AssertUnwindSafe(|| f(&region))) {
        Ok(v) => v,
        Err(payload) => {
            // nothing was launched: drop the recorded tasks and owned data, then unwind
            region.close();
            resume_unwind(payload);
        }
    };
    let result = region.run(&mut options);
    region.close();
    result.map(|()| value)
}
