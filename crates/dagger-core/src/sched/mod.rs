//! The scheduler of one process: processor table, queues, placement and the compute threads.
//!
//! Queues, from the point of view of a compute thread:
//!
//! * its own work-stealing deque (crossbeam), fed by tasks it spawns or makes ready;
//! * a one-task "next" slot holding the first dependent its last task made ready, run right
//!   after without touching any queue (chains and reductions hand over directly);
//! * the global injector, fed by threads that are not compute threads;
//! * the pinned queue of its processor slot, for tasks whose scope allows only some threads;
//! * the queues of custom processors of the process;
//! * a global priority queue for pool tasks with a non-zero priority.
//!
//! Pinned, custom and priority queues are small mutex-protected heaps ordered by priority then
//! age; their lengths are atomics, so a thread checks them without locking when they are empty.
//! Nothing on the spawn/complete path of a default task takes a lock shared by all threads.

pub(crate) mod ahead;
pub(crate) mod encode;
mod estimate;
pub(crate) mod remote;
pub(crate) mod sleep;
mod worker;

pub(crate) use worker::{current_proc, run_on_processor, with_current_registry, WorkerThread};

use crate::error::ErrorKind;
use crate::id::{NodeId, ProcessorId, ProcessorKind, WorkerId};
use crate::processor::{OsProc, Processor, TaskSignature, ThreadProc};
use crate::remote::data::PendingInput;
use crate::remote::functions::TaskFn;
use crate::scope::{ProcessorInfo, Scope};
use crate::task::{fail_job, Header, Held, JobRef, NO_PROC};
use crossbeam_deque::{Injector, Steal, Stealer};
use estimate::Estimates;
use remote::{RemoteSet, RemoteTask, RemoteWorker};
use sleep::Sleep;
use std::any::TypeId;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

/// Where a task may be run, decided when it is spawned.
pub(crate) enum Placement {
    /// Any compute thread of its process (the fast path).
    Pool,
    /// One of these processors (processor-table indices), chosen by cost when it is ready.
    Choose(Arc<[u32]>),
    /// A call of a registered function: here (pool or candidates) or in a worker process.
    Anywhere(Arc<Anywhere>),
}

/// The cheapest worker process for a task: the cost (ns), the worker, and the thread to name
/// in the call (for exactly-scoped tasks).
pub(crate) type RemoteChoice = (u64, Arc<RemoteWorker>, Option<u32>);

/// Where a task that may also run in a worker process may go.
pub(crate) struct Anywhere {
    /// Where it may run in this process: `None` if nowhere, else `Pool` or `Choose`.
    pub(crate) local: Option<Placement>,
    /// Its execution scope, to match worker processors when it becomes ready.
    pub(crate) scope: Scope,
    /// Its inputs, to weigh where their values are when it becomes ready.
    pub(crate) inputs: Box<[Weak<dyn crate::task::Job>]>,
    /// Whether (and where) it may be sent ahead of its inputs, or tasks ahead of it.
    pub(crate) ahead: Mutex<ahead::Ahead>,
}

impl Placement {
    pub(crate) fn is_choice(&self) -> bool {
        !matches!(self, Placement::Pool)
    }
}

/// How a processor-table entry runs tasks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Exec {
    /// Compute thread slot.
    Thread(usize),
    /// The OS process: runs nothing.
    Os,
    /// Custom processor number.
    Custom(usize),
}

pub(crate) struct ProcEntry {
    pub(crate) info: ProcessorInfo,
    pub(crate) obj: Arc<dyn Processor>,
    pub(crate) exec: Exec,
}

/// A queued task in a priority-ordered queue.
struct Queued {
    priority: i32,
    seq: u64,
    cost_ns: u64,
    job: JobRef,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A mutex-protected heap whose length and queued work can be read without the lock.
pub(crate) struct PrioQueue {
    heap: Mutex<BinaryHeap<Queued>>,
    len: AtomicUsize,
    queued_ns: AtomicU64,
}

impl PrioQueue {
    fn new() -> Self {
        PrioQueue {
            heap: Mutex::new(BinaryHeap::new()),
            len: AtomicUsize::new(0),
            queued_ns: AtomicU64::new(0),
        }
    }

    fn push(&self, q: Queued) {
        self.queued_ns.fetch_add(q.cost_ns, Ordering::Relaxed);
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        heap.push(q);
        self.len.store(heap.len(), Ordering::Release);
    }

    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn top_priority(&self) -> Option<i32> {
        if self.is_empty() {
            return None;
        }
        self.heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek()
            .map(|q| q.priority)
    }

    fn pop(&self) -> Option<JobRef> {
        if self.is_empty() {
            return None;
        }
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        let q = heap.pop()?;
        self.len.store(heap.len(), Ordering::Release);
        drop(heap);
        self.queued_ns.fetch_sub(q.cost_ns, Ordering::Relaxed);
        Some(q.job)
    }

    fn drain(&self) -> Vec<JobRef> {
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        let jobs: Vec<JobRef> = heap.drain().map(|q| q.job).collect();
        self.len.store(0, Ordering::Release);
        self.queued_ns.store(0, Ordering::Relaxed);
        jobs
    }

    fn backlog_ns(&self) -> u64 {
        self.queued_ns.load(Ordering::Relaxed)
    }
}

/// One compute-thread processor.
pub(crate) struct Slot {
    pub(crate) pinned: PrioQueue,
    /// OS threads currently serving this slot and not blocked in a wait.
    pub(crate) active: AtomicUsize,
}

pub(crate) struct CustomProc {
    pub(crate) table_index: u32,
    queue: PrioQueue,
}

/// Settings a registry is built from.
pub(crate) struct RegistryConfig {
    pub(crate) threads: usize,
    pub(crate) worker: WorkerId,
    pub(crate) node: NodeId,
    pub(crate) customs: Vec<(ProcessorKind, Arc<dyn Processor>)>,
    pub(crate) stack_size: usize,
    pub(crate) max_blocked_threads: usize,
    pub(crate) thread_name: String,
    /// The CPU for the threads serving each slot (slot `i`: `cpus[i % len]`), if pinned.
    pub(crate) pin_cpus: Option<Vec<usize>>,
}

/// A spare thread waiting in the pool for a slot to serve.
pub(crate) struct Spare {
    pub(crate) thread: std::thread::Thread,
    pub(crate) assignment: Arc<AtomicUsize>,
}

/// The scheduler of one context.
pub(crate) struct Registry {
    pub(crate) id: u32,
    pub(crate) worker: WorkerId,
    pub(crate) procs: Box<[ProcEntry]>,
    pub(crate) slots: Box<[Slot]>,
    pub(crate) customs: Box<[CustomProc]>,
    custom_len: AtomicUsize,
    pub(crate) injector: Injector<JobRef>,
    pub(crate) stealers: Box<[OnceLock<Stealer<JobRef>>]>,
    pub(crate) thread_count: AtomicUsize,
    pub(crate) live_threads: AtomicUsize,
    pub(crate) sleep: Sleep,
    prio: PrioQueue,
    seq: AtomicU64,
    pub(crate) estimates: Estimates,
    terminating: AtomicBool,
    pub(crate) spares: Mutex<Vec<Spare>>,
    has_custom_default: bool,
    pub(crate) stack_size: usize,
    pub(crate) thread_name: String,
    /// See [`RegistryConfig::pin_cpus`].
    pin_cpus: Option<Vec<usize>>,
    blocked_limit_warned: AtomicBool,
    /// The context that owns this registry (for `Context::current` inside tasks).
    pub(crate) context: OnceLock<Weak<crate::context::ContextInner>>,
    /// Worker processes this (head) process can send tasks to.
    pub(crate) remote: RemoteSet,
    /// Tasks that may be sent ahead of their inputs once their worker is less busy.
    pub(crate) frontier: Mutex<Vec<Weak<dyn crate::task::Job>>>,
    /// Work found outside the registry (see [`Registry::set_outside_work`]).
    pub(crate) outside: OnceLock<Arc<dyn OutsideWork>>,
    /// Threads blocked inside a task, waiting for another one.
    blocked: AtomicUsize,
}

/// Work the threads of a registry look for outside it: messages of a worker process that
/// its compute threads handle themselves while they have nothing else to do.
pub(crate) trait OutsideWork: Send + Sync {
    /// Does what waits (it may spawn tasks), between tasks and while idle; true if there
    /// was anything. Must be quick when there is nothing.
    fn poll(&self) -> bool;
    /// The calling thread stops looking: it goes to sleep or blocks inside a task (and is
    /// counted as such, see [`Registry::away`], and looked last after that). Someone else
    /// must watch for what arrives now.
    fn away(&self);
}

fn registries() -> &'static RwLock<Vec<Weak<Registry>>> {
    static ALL: OnceLock<RwLock<Vec<Weak<Registry>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// The registry with id `id`, if it is still alive.
pub(crate) fn registry_by_id(id: u32) -> Option<Arc<Registry>> {
    registries()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id as usize)
        .and_then(Weak::upgrade)
}

impl Registry {
    /// Has the threads look for `work` between tasks and while idle (once set, for good).
    pub(crate) fn set_outside_work(&self, work: Arc<dyn OutsideWork>) {
        let _ = self.outside.set(work);
    }

    /// How many threads are asleep or blocked inside a task (they look for no work).
    pub(crate) fn away(&self) -> usize {
        self.sleep.sleeping() + self.blocked.load(Ordering::SeqCst)
    }

    /// Builds the registry and starts its compute threads.
    pub(crate) fn start(config: RegistryConfig) -> std::io::Result<Arc<Registry>> {
        let threads = config.threads;
        let mut procs = Vec::new();
        for t in 0..threads {
            procs.push(ProcEntry {
                info: ProcessorInfo {
                    id: ProcessorId::thread(config.worker, t as u32),
                    node: config.node,
                    default_enabled: true,
                },
                obj: Arc::new(ThreadProc {
                    worker: config.worker,
                    thread: t as u32,
                }),
                exec: Exec::Thread(t),
            });
        }
        procs.push(ProcEntry {
            info: ProcessorInfo {
                id: ProcessorId::os(config.worker),
                node: config.node,
                default_enabled: true,
            },
            obj: Arc::new(OsProc {
                worker: config.worker,
            }),
            exec: Exec::Os,
        });
        let mut customs = Vec::new();
        let mut per_kind: Vec<(ProcessorKind, u32)> = Vec::new();
        let mut has_custom_default = false;
        for (i, (kind, obj)) in config.customs.into_iter().enumerate() {
            let index = match per_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => {
                    *n += 1;
                    *n - 1
                }
                None => {
                    per_kind.push((kind, 1));
                    0
                }
            };
            let default_enabled = obj.default_enabled();
            has_custom_default |= default_enabled;
            customs.push(CustomProc {
                table_index: procs.len() as u32,
                queue: PrioQueue::new(),
            });
            procs.push(ProcEntry {
                info: ProcessorInfo {
                    id: ProcessorId {
                        worker: config.worker,
                        kind,
                        index,
                    },
                    node: config.node,
                    default_enabled,
                },
                obj,
                exec: Exec::Custom(i),
            });
        }
        let max_threads = threads + config.max_blocked_threads;
        let mut all = registries().write().unwrap_or_else(|e| e.into_inner());
        let registry = Arc::new(Registry {
            id: all.len() as u32,
            worker: config.worker,
            procs: procs.into(),
            slots: (0..threads)
                .map(|_| Slot {
                    pinned: PrioQueue::new(),
                    active: AtomicUsize::new(1),
                })
                .collect(),
            customs: customs.into(),
            custom_len: AtomicUsize::new(0),
            injector: Injector::new(),
            stealers: (0..max_threads).map(|_| OnceLock::new()).collect(),
            thread_count: AtomicUsize::new(0),
            live_threads: AtomicUsize::new(0),
            sleep: Sleep::new(),
            prio: PrioQueue::new(),
            seq: AtomicU64::new(0),
            estimates: Estimates::new(),
            terminating: AtomicBool::new(false),
            spares: Mutex::new(Vec::new()),
            has_custom_default,
            stack_size: config.stack_size,
            thread_name: config.thread_name,
            pin_cpus: config.pin_cpus,
            blocked_limit_warned: AtomicBool::new(false),
            context: OnceLock::new(),
            remote: RemoteSet::new(),
            frontier: Mutex::default(),
            outside: OnceLock::new(),
            blocked: AtomicUsize::new(0),
        });
        all.push(Arc::downgrade(&registry));
        drop(all);
        for slot in 0..threads {
            WorkerThread::spawn(&registry, slot, false)?;
        }
        Ok(registry)
    }

    pub(crate) fn has_custom_default(&self) -> bool {
        self.has_custom_default
    }

    pub(crate) fn num_threads(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn terminating(&self) -> bool {
        self.terminating.load(Ordering::Acquire)
    }

    /// Stops the compute threads once they run out of work.
    pub(crate) fn terminate(&self) {
        self.terminating.store(true, Ordering::Release);
        self.sleep.notify_all();
        let spares: Vec<Spare> = self
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for s in spares {
            s.thread.unpark();
        }
    }

    /// Fails every queued task once no thread is left to run it.
    pub(crate) fn drain_after_shutdown(&self) {
        let mut jobs = Vec::new();
        loop {
            match self.injector.steal() {
                Steal::Success(j) => jobs.push(j),
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
        jobs.extend(self.prio.drain());
        for s in self.slots.iter() {
            jobs.extend(s.pinned.drain());
        }
        for c in self.customs.iter() {
            jobs.extend(c.queue.drain());
        }
        for j in jobs {
            fail_job(
                &j,
                ErrorKind::Runtime,
                "its context was shut down before the task could run".into(),
            );
        }
    }

    fn check_shutdown(&self) {
        if self.terminating() && self.live_threads.load(Ordering::Acquire) == 0 {
            self.drain_after_shutdown();
        }
    }

    pub(crate) fn proc_id(&self, index: u32) -> Option<ProcessorId> {
        self.procs.get(index as usize).map(|p| p.info.id)
    }

    pub(crate) fn proc_index(&self, id: ProcessorId) -> Option<u32> {
        self.procs
            .iter()
            .position(|p| p.info.id == id)
            .map(|i| i as u32)
    }

    /// The processors that can run tasks (threads and custom processors).
    pub(crate) fn executing(&self) -> impl Iterator<Item = (u32, &ProcEntry)> {
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.exec != Exec::Os)
            .map(|(i, p)| (i as u32, p))
    }

    /// Decides where a task with `scope` (None: the default scope) and signature `sig` may run.
    pub(crate) fn place(
        &self,
        scope: Option<&Scope>,
        sig: &TaskSignature<'_>,
        remote: Option<(u32, &'static TaskFn)>,
    ) -> Result<Placement, String> {
        if remote.is_some() && self.remote.active() {
            return self.place_anywhere(scope, sig);
        }
        self.place_here(scope, sig, true)
    }

    /// Where in this process a task may run; the error says why nowhere, if `explain` (else
    /// it is empty: a caller that only asks whether is spared formatting it per task).
    fn place_here(
        &self,
        scope: Option<&Scope>,
        sig: &TaskSignature<'_>,
        explain: bool,
    ) -> Result<Placement, String> {
        let scope = match scope {
            None if !self.has_custom_default => return Ok(Placement::Pool),
            None => Scope::default(),
            Some(s) => s.clone(),
        };
        if scope.is_invalid() {
            return Err(format!("its scope is empty: {scope}"));
        }
        let mut cands: Vec<u32> = Vec::new();
        let mut in_scope = 0usize;
        for (i, p) in self.executing() {
            if !scope.contains(&p.info) {
                continue;
            }
            in_scope += 1;
            let ok = match p.exec {
                Exec::Thread(_) => true,
                _ => p.obj.is_compatible(sig),
            };
            if ok {
                cands.push(i);
            }
        }
        if cands.is_empty() && !explain {
            return Err(String::new());
        }
        if cands.is_empty() {
            let known: Vec<String> = self
                .executing()
                .take(8)
                .map(|(_, p)| p.info.id.to_string())
                .collect();
            let total = self.executing().count();
            return Err(if in_scope == 0 {
                format!(
                    "no processor is in its scope `{scope}` (this context has {total}: {}{})",
                    known.join(", "),
                    if total > known.len() { ", …" } else { "" }
                )
            } else {
                format!(
                    "the {in_scope} processor(s) in its scope `{scope}` cannot run {}",
                    sig.name.unwrap_or("this function")
                )
            });
        }
        let all_threads = cands.len() == self.slots.len()
            && cands
                .iter()
                .all(|&i| matches!(self.procs[i as usize].exec, Exec::Thread(_)));
        if all_threads {
            Ok(Placement::Pool)
        } else {
            Ok(Placement::Choose(cands.into()))
        }
    }

    /// Placement of a registered function while worker processes may exist: here if the scope
    /// allows (pool or candidates), and on any worker whose processors match when it is ready.
    fn place_anywhere(
        &self,
        scope: Option<&Scope>,
        sig: &TaskSignature<'_>,
    ) -> Result<Placement, String> {
        let local = if self.has_custom_default || scope.is_some() {
            self.place_here(scope, sig, false).ok()
        } else {
            Some(Placement::Pool)
        };
        let scope = scope.cloned().unwrap_or_default();
        let workers = self.remote.snapshot();
        let remote_ok = workers.iter().any(|w| w.threads_in(&scope).is_some());
        if local.is_none() && !remote_ok {
            let ids: Vec<u32> = workers.iter().map(|w| w.id).collect();
            return Err(format!(
                "no live worker is in its scope `{scope}`, nor any processor of this process \
                 (live workers: {ids:?})"
            ));
        }
        Ok(Placement::Anywhere(Arc::new(Anywhere {
            local,
            scope,
            inputs: Box::new([]),
            ahead: Mutex::default(),
        })))
    }

    /// Picks the cheapest candidate: queued work on it plus the task's estimated run time there.
    fn choose(&self, job: &JobRef, cands: &[u32], current: Option<u32>) -> (u32, u64) {
        let h = job.header();
        let hint = h.meta.as_ref().and_then(|m| m.time_util);
        let occupancy = h.meta.as_ref().and_then(|m| m.occupancy).unwrap_or(1.0);
        // the same estimate everywhere when given (a hint, or its planner's estimate)
        let fixed = hint.map(|d| d.as_nanos() as u64).or(h.planned_ns);
        let measured: Vec<u64> = match fixed {
            Some(_) => Vec::new(),
            None => {
                let kinds: Vec<ProcessorKind> = cands
                    .iter()
                    .map(|&i| self.procs[i as usize].info.id.kind)
                    .collect();
                self.estimates.estimate(job.signature(), &kinds)
            }
        };
        let est = |k: usize| fixed.unwrap_or_else(|| measured[k]);
        let mut best: Option<(u64, bool, u32, u64)> = None;
        for (k, &i) in cands.iter().enumerate() {
            let backlog = match self.procs[i as usize].exec {
                Exec::Thread(s) => self.slots[s].pinned.backlog_ns(),
                Exec::Custom(c) => self.customs[c].queue.backlog_ns(),
                Exec::Os => continue,
            };
            let cost = backlog.saturating_add(est(k));
            let here = Some(i) == current;
            let better = match best {
                None => true,
                Some((c, h, _, _)) => cost < c || (cost == c && here && !h),
            };
            if better {
                best = Some((cost, here, i, est(k)));
            }
        }
        let (_, _, index, est) = best.expect("placement candidates are never empty");
        (index, (est as f64 * occupancy) as u64)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a ready task that is not on the pool fast path (a placement choice or a
    /// non-zero priority).
    pub(crate) fn enqueue(&self, job: JobRef, current: Option<u32>) {
        let priority = job.header().priority;
        let seq = self.next_seq();
        match &job.header().placement {
            Placement::Pool => {
                self.prio.push(Queued {
                    priority,
                    seq,
                    cost_ns: 0,
                    job,
                });
                self.sleep.notify_one();
            }
            Placement::Choose(cands) => {
                let cands = cands.clone();
                self.enqueue_choice(job, &cands, current);
            }
            Placement::Anywhere(a) => {
                let a = a.clone();
                self.route_anywhere(job, &a, current);
                return;
            }
        }
        self.check_shutdown();
    }

    /// The estimated run time of a task that may run anywhere, in nanoseconds.
    fn estimate_anywhere(&self, job: &JobRef) -> u64 {
        job.header()
            .meta
            .as_ref()
            .and_then(|m| m.time_util)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_else(|| {
                self.estimates
                    .get(job.signature(), ProcessorKind::THREAD)
                    .map_or(0, |(ns, _)| ns)
            })
    }

    /// What running a task that may run anywhere costs (ns) on the cheapest worker process
    /// (with that worker and the thread to name), and in this process (`None`: it may not run
    /// here): its estimated run time `est`, plus queued work, plus moving its inputs, plus for
    /// a worker the measured round trip. With `ahead`, inputs not made yet count as made on
    /// the worker they were sent to (else they are not counted). A task that may run on one
    /// worker only (and not here) has nothing to weigh: that worker, at cost `est`.
    pub(crate) fn anywhere_costs(
        &self,
        job: &JobRef,
        a: &Anywhere,
        current: Option<u32>,
        est: u64,
        ahead: bool,
    ) -> (Option<RemoteChoice>, Option<u64>) {
        let workers = self.remote.snapshot();
        if a.local.is_none() {
            let mut admitting = workers
                .iter()
                .filter(|w| w.alive.load(Ordering::Acquire))
                .filter_map(|w| w.threads_in(&a.scope).map(|t| (w, t)));
            match (admitting.next(), admitting.next()) {
                (None, _) => return (None, None),
                (Some((w, thread)), None) => return (Some((est, w.clone(), thread)), None),
                _ => {}
            }
        }
        let inputs: Vec<Held> =
            a.inputs
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|j| match j.held() {
                    Some(h) => Some(h),
                    // Sending ahead: an unfinished input counts as held where it is being made.
                    None if ahead && !j.header().state.is_done() => ahead::feeding_on(j.header())
                        .map(|(worker, _)| {
                            Held::At(crate::remote::wire::Location {
                                worker,
                                id: 0,
                                bytes: 0,
                            })
                        }),
                    None => None,
                })
                .collect();
        let mut best: Option<RemoteChoice> = None;
        let rtt_of = |id: u32| {
            workers
                .iter()
                .find(|w| w.id == id)
                .map_or(0, |w| w.rtt_ns.load(Ordering::Relaxed))
        };
        // Nanoseconds to bring the inputs to worker `to` (`None`: here).
        let moving = |to: Option<u32>| -> u64 {
            inputs
                .iter()
                .map(|h| match (h, to) {
                    (Held::Here, None) => 0,
                    (Held::At(l), None) if l.worker == self.worker.0 => 0,
                    (Held::At(l), Some(w)) if l.worker == w => 0,
                    // Sent along with the call.
                    (Held::Here, Some(_)) => remote::transfer_ns(0),
                    // Fetched from its holder: a round trip, then the bytes.
                    (Held::At(l), _) => rtt_of(l.worker) + remote::transfer_ns(l.bytes),
                })
                .sum()
        };
        for w in workers.iter() {
            if !w.alive.load(Ordering::Acquire) {
                continue;
            }
            let Some(thread) = w.threads_in(&a.scope) else {
                continue;
            };
            // Tasks in flight count at least their handling cost, so that tasks with no
            // estimate yet spread over the workers instead of piling onto the first.
            let queued = w.backlog_ns.load(Ordering::Relaxed)
                + w.inflight.load(Ordering::Relaxed) as u64 * REMOTE_TASK_FLOOR_NS;
            let cost = est
                + queued / u64::from(w.threads)
                + w.rtt_ns.load(Ordering::Relaxed)
                + moving(Some(w.id));
            if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
                best = Some((cost, w.clone(), thread));
            }
        }
        let local_cost = a.local.as_ref().map(|p| {
            moving(None)
                + match p {
                    Placement::Choose(cands) => self.choose(job, cands, current).1 + est,
                    _ => est + (self.injector.len() as u64 * est) / self.slots.len() as u64,
                }
        });
        (best, local_cost)
    }

    /// Sends a ready task that may run anywhere to the cheapest place: this process, or the
    /// worker process with the least estimated work (each in nanoseconds: estimated run time,
    /// plus queued work, plus for a worker the measured round trip).
    fn route_anywhere(&self, job: JobRef, a: &Anywhere, current: Option<u32>) {
        let est = self.estimate_anywhere(&job);
        let (best, local_cost) = self.anywhere_costs(&job, a, current, est, false);
        let go_remote = match (&best, local_cost) {
            (Some(_), None) => true,
            (Some((rc, _, _)), Some(lc)) => *rc < lc,
            (None, _) => false,
        };
        if !go_remote {
            match a.local.as_ref() {
                Some(Placement::Choose(cands)) => self.enqueue_choice(job, cands, current),
                Some(_) => {
                    self.injector.push(job);
                    self.sleep.notify_one();
                }
                None => {
                    fail_job(
                        &job,
                        ErrorKind::Scheduling,
                        format!(
                            "no live worker is in its scope `{}` (the worker that was left its \
                             scope is gone)",
                            a.scope
                        ),
                    );
                }
            }
            return;
        }
        let (_, worker, thread) = best.expect("chosen");
        let Some(dispatch) = self.remote.dispatcher().cloned() else {
            fail_job(&job, ErrorKind::Runtime, "no cluster is attached".into());
            return;
        };
        if !job.header().state.claim_run() {
            return; // cancelled meanwhile
        }
        match encode::encode_for(worker.id, &job) {
            Ok((call, inputs)) => {
                let task = RemoteTask::new(
                    job.clone(),
                    call,
                    inputs,
                    a.scope.clone(),
                    thread,
                    est,
                    false,
                );
                task.send(&*dispatch, &worker);
                self.send_dependents_ahead(job);
            }
            Err(e) => match e.downcast::<PendingInput>() {
                // An input is being made again after its worker died: place the task again
                // once it is back.
                Ok(pending) => {
                    if !job.unclaim() {
                        job.end_claim(); // cancelled meanwhile
                    } else if !pending.0.defer(job.clone()) {
                        schedule(job);
                    }
                }
                Err(e) => job.complete_remote(Err((
                    ErrorKind::Runtime,
                    format!("its arguments cannot be sent to worker {}: {e}", worker.id),
                ))),
            },
        }
    }

    fn enqueue_choice(&self, job: JobRef, cands: &[u32], current: Option<u32>) {
        let priority = job.header().priority;
        let seq = self.next_seq();
        let (index, cost_ns) = self.choose(&job, cands, current);
        let q = Queued {
            priority,
            seq,
            cost_ns,
            job,
        };
        match self.procs[index as usize].exec {
            Exec::Thread(s) => {
                self.slots[s].pinned.push(q);
                self.sleep.notify_slot(s);
            }
            Exec::Custom(c) => {
                self.customs[c].queue.push(q);
                self.custom_len.fetch_add(1, Ordering::Release);
                self.sleep.notify_one();
            }
            Exec::Os => unreachable!("the OS processor is never a candidate"),
        }
    }

    /// Queues a ready task from a thread that is not one of this registry's compute threads.
    pub(crate) fn inject(&self, job: JobRef) {
        let h = job.header();
        if matches!(h.placement, Placement::Pool) && h.priority == 0 {
            self.injector.push(job);
            self.sleep.notify_one();
            self.check_shutdown();
        } else {
            self.enqueue(job, None);
        }
    }

    /// The highest-priority task among this slot's pinned queue, the custom processors and
    /// the priority queue, if its priority is at least `min`.
    pub(crate) fn take_queued(&self, slot: usize, min: i32) -> Option<(JobRef, Option<usize>)> {
        let pinned = &self.slots[slot].pinned;
        let mut best: Option<(i32, u8, usize)> = None;
        let mut consider = |p: Option<i32>, rank: u8, which: usize| {
            if let Some(p) = p {
                if p >= min && best.is_none_or(|(bp, br, _)| p > bp || (p == bp && rank < br)) {
                    best = Some((p, rank, which));
                }
            }
        };
        consider(pinned.top_priority(), 0, 0);
        if self.custom_len.load(Ordering::Acquire) > 0 {
            for (c, custom) in self.customs.iter().enumerate() {
                consider(custom.queue.top_priority(), 1, c);
            }
        }
        consider(self.prio.top_priority(), 2, 0);
        let (_, rank, which) = best?;
        match rank {
            0 => pinned.pop().map(|j| (j, None)),
            1 => {
                let j = self.customs[which].queue.pop()?;
                self.custom_len.fetch_sub(1, Ordering::Release);
                Some((j, Some(which)))
            }
            _ => self.prio.pop().map(|j| (j, None)),
        }
    }

    pub(crate) fn has_queued(&self, slot: usize) -> bool {
        !self.slots[slot].pinned.is_empty()
            || self.custom_len.load(Ordering::Acquire) > 0
            || !self.prio.is_empty()
    }

    /// A compute thread serving `slot` blocks in a wait: keep the slot served by another thread.
    pub(crate) fn block_begin(self: &Arc<Self>, slot: usize) {
        self.blocked.fetch_add(1, Ordering::SeqCst);
        if let Some(outside) = self.outside.get() {
            outside.away();
        }
        if self.slots[slot].active.fetch_sub(1, Ordering::AcqRel) == 1 && !self.terminating() {
            self.activate_spare(slot);
        }
    }

    pub(crate) fn block_end(&self, slot: usize) {
        self.slots[slot].active.fetch_add(1, Ordering::AcqRel);
        self.blocked.fetch_sub(1, Ordering::SeqCst);
    }

    fn activate_spare(self: &Arc<Self>, slot: usize) {
        self.slots[slot].active.fetch_add(1, Ordering::AcqRel);
        let spare = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(spare) = spare {
            spare.assignment.store(slot + 1, Ordering::Release);
            spare.thread.unpark();
            return;
        }
        if self.thread_count.load(Ordering::Acquire) < self.stealers.len()
            && WorkerThread::spawn(self, slot, true).is_ok()
        {
            return;
        }
        self.slots[slot].active.fetch_sub(1, Ordering::AcqRel);
        if !self.blocked_limit_warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "dagger: {} threads are blocked waiting for other tasks; no more stand-in threads \
                 will be started (raise ContextBuilder::max_blocked_threads)",
                self.stealers.len() - self.slots.len()
            );
        }
    }

    /// Records a measured run time.
    pub(crate) fn record(&self, sig: TypeId, proc_index: u32, elapsed: Duration) {
        if let Some(p) = self.procs.get(proc_index as usize) {
            self.estimates
                .record(sig, p.info.id.kind, elapsed.as_nanos() as u64);
        }
    }
}

/// Makes a task whose last input arrived runnable.
pub(crate) fn schedule(job: JobRef) {
    let reg_id = job.header().registry;
    let handled = WorkerThread::with_current(|w| match w {
        Some(w) if w.registry.id == reg_id => {
            w.push_ready(job.clone());
            true
        }
        _ => false,
    });
    if handled {
        return;
    }
    match registry_by_id(reg_id) {
        Some(reg) => reg.inject(job),
        None => {
            fail_job(
                &job,
                ErrorKind::Runtime,
                "its context was shut down before the task could run".into(),
            );
        }
    }
}

/// Blocks until the task is done (see [`DTask::wait`](crate::DTask::wait)).
pub(crate) fn wait_for(header: &Header, job: &JobRef) {
    if header.state.is_done() {
        return;
    }
    let handled = WorkerThread::with_current(|w| match w {
        Some(w) => {
            w.wait_for(job);
            true
        }
        None => false,
    });
    if !handled {
        worker::wait_external(header);
    }
}

/// Runs `f`, which may block for a long time (e.g. on the network). On a compute thread the
/// thread lends its slot to a stand-in thread meanwhile, so the pool keeps running.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let slot = WorkerThread::with_current(|w| w.map(|w| (w.registry.clone(), w.slot())));
    match slot {
        Some((reg, slot)) => {
            reg.block_begin(slot);
            struct End(Arc<Registry>, usize);
            impl Drop for End {
                fn drop(&mut self) {
                    self.0.block_end(self.1);
                }
            }
            let _end = End(reg, slot);
            f()
        }
        None => f(),
    }
}

/// Records the run time of a task body measured on this thread.
pub(crate) fn record_run_time(header: &Header, sig: TypeId, elapsed: Duration) {
    let _ = header;
    with_current_registry(|reg| {
        if let Some(reg) = reg {
            reg.record(sig, current_proc(), elapsed);
        }
    });
}

/// The least a task in flight on a worker is assumed to cost it (receiving, running and
/// reporting it), in nanoseconds.
const REMOTE_TASK_FLOOR_NS: u64 = 10_000;

/// The options a task sent to a worker runs with there, and passes on to the tasks it
/// spawns (the `with_options` in force where it was spawned).
fn wire_options(h: &Header) -> Option<Box<crate::remote::wire::WireOptions>> {
    use crate::remote::store::options_to_wire;
    if h.meta.is_none() && h.priority == 0 && h.inherited.is_none() {
        return None;
    }
    let mut w = h.meta.as_deref().map(options_to_wire).unwrap_or_default();
    if w.priority.is_none() && h.priority != 0 {
        w.priority = Some(h.priority);
    }
    w.inherited = h.inherited.as_deref().map(|o| Box::new(options_to_wire(o)));
    w.boxed()
}

/// The processor a task ran on (or a chunk lives on).
pub(crate) fn processor_of(header: &Header) -> Option<ProcessorId> {
    let index = header.ran_on.load(Ordering::Acquire);
    if index == NO_PROC {
        return None;
    }
    registry_by_id(header.registry)?.proc_id(index)
}

/// Applies the move hooks of the processors involved when a task on this thread reads a value
/// produced by the task `h` (or held by the chunk `h`). `None`: use the value as it is.
pub(crate) fn convert_for_current(
    h: &Header,
    value: &(dyn std::any::Any + Send + Sync),
) -> Result<Option<Box<dyn std::any::Any + Send + Sync>>, crate::error::BoxError> {
    with_current_registry(|cur| {
        let Some(cur) = cur else { return Ok(None) };
        if cur.customs.is_empty() || cur.id != h.registry {
            return Ok(None);
        }
        let (src, dst) = (h.ran_on.load(Ordering::Acquire), current_proc());
        if src == dst || src == NO_PROC || dst == NO_PROC {
            return Ok(None);
        }
        let (Some(s), Some(d)) = (cur.procs.get(src as usize), cur.procs.get(dst as usize)) else {
            return Ok(None);
        };
        if !matches!(s.exec, Exec::Custom(_)) && !matches!(d.exec, Exec::Custom(_)) {
            return Ok(None);
        }
        let hook = |what: &str, f: &dyn Fn() -> Option<Box<dyn std::any::Any + Send + Sync>>| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
                crate::error::BoxError::from(format!(
                    "the {what} hook of a processor panicked while moving an input from {} to {}",
                    s.info.id, d.info.id
                ))
            })
        };
        let out = hook("move_to", &|| s.obj.move_to(d.info.id, value))?;
        let input: &(dyn std::any::Any + Send + Sync) = out.as_deref().unwrap_or(value);
        let back = hook("move_from", &|| d.obj.move_from(s.info.id, input))?;
        Ok(back.or(out))
    })
}
