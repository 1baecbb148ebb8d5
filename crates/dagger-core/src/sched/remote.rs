//! The worker processes a head process can send tasks to, as the scheduler sees them.
//!
//! The cluster layer adds and removes workers and delivers the tasks the scheduler decides to
//! run remotely; the scheduler only needs to know which workers exist, how busy they are, and
//! how to hand a task over.

use crate::id::{NodeId, ProcessorId, WorkerId};
use crate::remote::data::{Input, Label, RemoteData};
use crate::remote::wire::WireCall;
use crate::scope::{ProcessorInfo, Scope};
use crate::task::JobRef;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// A worker process as the head's scheduler sees it.
pub struct RemoteWorker {
    /// The worker's id (1, 2, ...).
    pub id: u32,
    /// Its compute threads.
    pub threads: u32,
    /// The machine it runs on.
    pub node: NodeId,
    /// Tasks sent to it and not finished.
    pub inflight: AtomicUsize,
    /// Those of them sent ahead of their inputs (they wait for tasks on it, and are not
    /// taken back to run elsewhere).
    pub ahead: AtomicUsize,
    /// Estimated nanoseconds of work sent to it and not finished.
    pub backlog_ns: AtomicU64,
    /// False once it left or died.
    pub alive: AtomicBool,
    /// Measured round trip to it in nanoseconds (starts at 50 µs).
    pub rtt_ns: AtomicU64,
}

impl RemoteWorker {
    /// A new worker with no work yet.
    pub fn new(id: u32, threads: u32, node: NodeId) -> Self {
        RemoteWorker {
            id,
            threads: threads.max(1),
            node,
            inflight: AtomicUsize::new(0),
            ahead: AtomicUsize::new(0),
            backlog_ns: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            rtt_ns: AtomicU64::new(50_000),
        }
    }

    pub(crate) fn info(&self, thread: u32) -> ProcessorInfo {
        ProcessorInfo {
            id: ProcessorId::thread(WorkerId(self.id), thread),
            node: self.node,
            default_enabled: true,
        }
    }

    /// Every thread of this worker in `scope`.
    pub(crate) fn all_threads_in(&self, scope: &Scope) -> Vec<u32> {
        (0..self.threads)
            .filter(|&t| scope.contains(&self.info(t)))
            .collect()
    }

    /// The threads of this worker in `scope`: `None` when none is, `Some(None)` when every
    /// thread is (any may run the task), `Some(Some(t))` for the first of only some threads.
    pub(crate) fn threads_in(&self, scope: &Scope) -> Option<Option<u32>> {
        let mut inside = (0..self.threads).filter(|&t| scope.contains(&self.info(t)));
        let first = inside.next()?;
        Some((inside.count() + 1 < self.threads as usize).then_some(first))
    }
}

/// A task the scheduler hands to the cluster layer to run on a worker. The cluster completes
/// it (`remote::complete_job`) or fails it.
pub struct RemoteTask {
    pub(crate) job: JobRef,
    /// The encoded call.
    pub call: WireCall,
    /// The remote values behind the call's `Ref` arguments (depth first), to make them again
    /// if their worker dies.
    pub inputs: Vec<Input>,
    /// Where the task may run.
    pub scope: Scope,
    /// The estimated cost added to the worker's backlog (remove it when the task ends).
    pub cost_ns: u64,
    /// Sent ahead of some of its inputs (its call names them with `WireArg::After`).
    pub(crate) ahead: bool,
}

impl RemoteTask {
    /// The task's id on this process.
    pub fn id(&self) -> u64 {
        self.job.header().id.get()
    }

    /// The task's name, if any.
    pub fn name(&self) -> Option<String> {
        self.job.header().name().map(|n| n.to_string())
    }

    /// Whether calls may be sent ahead of the task where it is sent (it has dependents
    /// waiting: the worker then keeps track of it).
    pub(crate) fn will_feed(&self) -> bool {
        super::ahead::will_feed(self.job.header())
    }

    /// Sent ahead of some of its inputs: the call names them with `WireArg::After`, so it is
    /// encoded again for its lineage once they are made.
    pub(crate) fn is_ahead(&self) -> bool {
        self.ahead
    }

    /// The claimed task `job`, encoded as `call` (reading remote `inputs`), to run on `thread`
    /// of a worker (`None`: any) with the options it runs with; `ahead`: sent ahead of some
    /// of its inputs.
    pub(crate) fn new(
        job: JobRef,
        mut call: WireCall,
        inputs: Vec<Input>,
        scope: Scope,
        thread: Option<u32>,
        cost_ns: u64,
        ahead: bool,
    ) -> RemoteTask {
        call.thread = thread;
        call.options = super::wire_options(job.header());
        RemoteTask {
            job,
            call,
            inputs,
            scope,
            cost_ns,
            ahead,
        }
    }

    /// Counts the task in `worker`'s load and hands it to the cluster layer to send there.
    pub(crate) fn send(self, dispatch: &dyn Dispatch, worker: &Arc<RemoteWorker>) {
        worker.backlog_ns.fetch_add(self.cost_ns, Ordering::Relaxed);
        worker.inflight.fetch_add(1, Ordering::Relaxed);
        if self.ahead {
            worker.ahead.fetch_add(1, Ordering::Relaxed);
        }
        dispatch.dispatch(worker, self);
    }

    /// The task is no longer in flight on `worker`: takes it out of its counts.
    pub(crate) fn leave(&self, worker: &RemoteWorker) {
        worker.inflight.fetch_sub(1, Ordering::Relaxed);
        if self.ahead {
            worker.ahead.fetch_sub(1, Ordering::Relaxed);
        }
        worker.backlog_ns.fetch_sub(
            self.cost_ns.min(worker.backlog_ns.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }
}

impl std::fmt::Debug for RemoteTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTask")
            .field("id", &self.id())
            .field("func", &self.call.func)
            .finish_non_exhaustive()
    }
}

/// The cluster layer, as the scheduler calls it.
pub trait Dispatch: Send + Sync {
    /// Sends a task to `worker`. The cluster later completes or fails it.
    fn dispatch(&self, worker: &Arc<RemoteWorker>, task: RemoteTask);

    /// Keeps `bytes` (an encoded value) on a worker in `scope` and returns its handle
    /// (blocks until the worker has it). `label` names the value in errors.
    fn put(
        &self,
        bytes: bytes::Bytes,
        scope: &Scope,
        label: Label,
    ) -> Result<Arc<RemoteData>, String> {
        let _ = (bytes, label);
        Err(format!(
            "no worker process in scope `{scope}` can keep a value"
        ))
    }

    /// Takes charge of the value at `loc` (kept by a worker already): the handle frees it when
    /// dropped, and marks it lost if its worker dies. `label` names the value in errors.
    fn adopt(
        &self,
        loc: crate::remote::wire::Location,
        label: Label,
    ) -> Result<Arc<RemoteData>, String> {
        let _ = label;
        Err(format!(
            "no cluster can take charge of a value in worker {}",
            loc.worker
        ))
    }
}

/// The workers of a head process.
pub(crate) struct RemoteSet {
    workers: RwLock<Arc<Vec<Arc<RemoteWorker>>>>,
    active: AtomicBool,
    dispatch: OnceLock<Arc<dyn Dispatch>>,
    mover: OnceLock<Arc<dyn crate::remote::Mover>>,
}

impl RemoteSet {
    pub(crate) fn new() -> Self {
        RemoteSet {
            workers: RwLock::new(Arc::new(Vec::new())),
            active: AtomicBool::new(false),
            dispatch: OnceLock::new(),
            mover: OnceLock::new(),
        }
    }

    /// Whether remote placement is possible at all (a cluster is attached).
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn attach(&self, dispatch: Arc<dyn Dispatch>) -> bool {
        let ok = self.dispatch.set(dispatch).is_ok();
        if ok {
            self.active.store(true, Ordering::Release);
        }
        ok
    }

    pub(crate) fn set_mover(&self, mover: Arc<dyn crate::remote::Mover>) {
        let _ = self.mover.set(mover);
    }

    /// How data-dependency regions move data to and from workers, when a cluster is attached.
    pub(crate) fn mover(&self) -> Option<&Arc<dyn crate::remote::Mover>> {
        self.mover.get()
    }

    pub(crate) fn dispatcher(&self) -> Option<&Arc<dyn Dispatch>> {
        self.dispatch.get()
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<RemoteWorker>>> {
        self.workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn add(&self, w: Arc<RemoteWorker>) {
        let mut guard = self.workers.write().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Arc<RemoteWorker>> =
            guard.iter().filter(|x| x.id != w.id).cloned().collect();
        list.push(w);
        list.sort_by_key(|w| w.id);
        *guard = Arc::new(list);
    }

    pub(crate) fn remove(&self, id: u32) -> Option<Arc<RemoteWorker>> {
        let mut guard = self.workers.write().unwrap_or_else(|e| e.into_inner());
        let gone = guard.iter().find(|w| w.id == id).cloned();
        if let Some(g) = &gone {
            g.alive.store(false, Ordering::Release);
        }
        let list: Vec<Arc<RemoteWorker>> = guard.iter().filter(|x| x.id != id).cloned().collect();
        *guard = Arc::new(list);
        gone
    }
}

/// Bytes per second values move between processes: measured on fetches of 64 KiB or more
/// (moving average), 1 GB/s until then.
static TRANSFER_RATE: AtomicU64 = AtomicU64::new(1_000_000_000);

/// The size assumed for a value whose size is not known.
const UNKNOWN_BYTES: u64 = 64 * 1024;

/// Learns the transfer rate from a fetch of `bytes` that took `took`.
pub(crate) fn record_transfer(bytes: u64, took: std::time::Duration) {
    if bytes < 64 * 1024 || took.is_zero() {
        return;
    }
    let rate = (bytes as f64 / took.as_secs_f64()) as u64;
    let old = TRANSFER_RATE.load(Ordering::Relaxed);
    TRANSFER_RATE.store((old / 4) * 3 + rate / 4, Ordering::Relaxed);
}

/// Estimated nanoseconds to move a value of `bytes` bytes (0: unknown) to another process.
pub(crate) fn transfer_ns(bytes: u64) -> u64 {
    let bytes = if bytes == 0 { UNKNOWN_BYTES } else { bytes };
    let rate = TRANSFER_RATE.load(Ordering::Relaxed).max(1);
    (u128::from(bytes) * 1_000_000_000 / u128::from(rate)) as u64
}
