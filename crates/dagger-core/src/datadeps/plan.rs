//! Planning a region before it launches: the order tasks are handed out in ([`Traversal`]) and
//! the processor each one runs on ([`Planner`]): a thread of this process, or, for tasks that
//! may run in another process, a thread of a worker process.
//!
//! Every traversal is a topological order of the task graph, so a task is always planned and
//! launched after the tasks it waits for: in-order is submission order; BFS and DFS are Kahn's
//! algorithm with a queue (level by level) or a stack (follow one chain of dependents first).

use std::collections::VecDeque;

/// The order in which a region plans and launches its tasks (the reference's `traversal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Traversal {
    /// Submission order.
    #[default]
    InOrder,
    /// Breadth first: all tasks whose inputs are ready, then their dependents, level by level.
    Bfs,
    /// Depth first: the dependents of the task just planned come next.
    Dfs,
}

/// One piece of data a planned task accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanData {
    /// The data's number within the region.
    pub key: u32,
    /// Whether the task writes it.
    pub write: bool,
    /// Whether the task accesses a view of it (a slice range, matrix block or part) rather
    /// than the whole value. A task in a worker gets a view's elements with the task, from the
    /// data's home copy here, and the elements it writes come back here right after it: so a
    /// view written in a worker leaves the data's latest version here, not in the worker.
    pub view: bool,
    /// Whether the task overwrites the whole value without reading it ([`Out`](super::Out)
    /// of a whole value): a process holding an older copy of it (this one always does) gets
    /// no copy of the latest version first.
    pub overwrite: bool,
}

/// What a [`Planner`] knows about the task it places.
#[derive(Debug)]
pub struct PlanTask<'a> {
    /// The task's number in submission order.
    pub index: usize,
    /// The task's name.
    pub name: Option<&'a str>,
    /// The tasks it waits for (numbers in submission order; all planned already).
    pub preds: &'a [u32],
    /// Estimated run time in nanoseconds: the task's `time_util` option, else what earlier
    /// regions measured for the same function, else [`DEFAULT_COST_NS`].
    pub cost_ns: u64,
    /// The data it accesses.
    pub data: &'a [PlanData],
    /// Whether it may run in a worker process (a `#[dagger::task]` function spawned with
    /// `spawn_task`); other tasks must get a processor of this process.
    pub remote: bool,
}

/// A processor a region can place tasks on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanProc {
    /// The process: 0 for this one, else the worker's id.
    pub process: u32,
    /// The thread within that process.
    pub thread: u32,
}

/// Run-time estimate of a task never measured before.
pub const DEFAULT_COST_NS: u64 = 10_000;

/// Chooses the processor each task of a region runs on, before the region launches them.
///
/// `place` is called once per task, in the region's [`Traversal`] order; it returns an index
/// into the processors passed to [`start_procs`](Planner::start_procs) (the threads of this
/// process first, then those of worker processes when a cluster is attached and the region has
/// tasks that may run there), or `None` to let any thread of this process take the task (work
/// stealing). A task that may not run in another process ([`PlanTask::remote`] false) placed on
/// a worker's processor runs in this process's pool instead.
///
/// ```
/// use dagger_core::{spawn_datadeps_with, DatadepsOptions, PlanTask, Planner};
///
/// /// Everything on thread 0.
/// struct First;
/// impl Planner for First {
///     fn place(&mut self, _task: &PlanTask<'_>) -> Option<usize> { Some(0) }
/// }
///
/// let mut x = 0;
/// spawn_datadeps_with(DatadepsOptions::new().planner(First), |dd| {
///     let x = dd.data(&mut x);
///     dd.spawn(|x: &mut i32| *x += 1, (dagger_core::InOut(x),));
/// })
/// .unwrap();
/// assert_eq!(x, 1);
/// ```
pub trait Planner: Send {
    /// Called before the first task: the number of threads and of tasks.
    fn start(&mut self, threads: usize, tasks: usize) {
        let _ = (threads, tasks);
    }

    /// Called before the first task with every processor (this process's threads first)
    /// and the number of tasks; by default calls [`start`](Planner::start) with their number.
    fn start_procs(&mut self, procs: &[PlanProc], tasks: usize) {
        self.start(procs.len(), tasks);
    }

    /// The processor for `task`, or `None` for any thread of this process.
    fn place(&mut self, task: &PlanTask<'_>) -> Option<usize>;
}

/// The number of processors of this process at the start of `procs`.
fn local_count(procs: &[PlanProc]) -> usize {
    procs.iter().take_while(|p| p.process == 0).count()
}

/// Places tasks on the processors in turn: tasks that may run in worker processes on every
/// processor, the others on this process's threads.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    threads: usize,
    all: usize,
    next: usize,
    next_local: usize,
}

impl Planner for RoundRobin {
    fn start(&mut self, threads: usize, _tasks: usize) {
        self.threads = threads.max(1);
        self.all = self.threads;
        self.next = 0;
        self.next_local = 0;
    }

    fn start_procs(&mut self, procs: &[PlanProc], tasks: usize) {
        self.start(local_count(procs), tasks);
        self.all = procs.len().max(self.threads);
    }

    fn place(&mut self, task: &PlanTask<'_>) -> Option<usize> {
        if task.remote && self.all > self.threads {
            let t = self.next;
            self.next = (self.next + 1) % self.all;
            return Some(t);
        }
        let t = self.next_local;
        self.next_local = (self.next_local + 1) % self.threads.max(1);
        Some(t)
    }
}

/// Leaves every task to the pool: a ready task runs on whichever thread takes it first.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkStealing;

impl Planner for WorkStealing {
    fn place(&mut self, _task: &PlanTask<'_>) -> Option<usize> {
        None
    }
}

/// Places each task on the thread where it is estimated to finish first (list scheduling by
/// earliest finish time).
///
/// The model, in nanoseconds: a thread is free when the last task planned on it finishes; a
/// task can start when its thread is free and every task it waits for finished; a task that
/// accesses data last written on another thread pays `move_cost` (its run time times
/// [`with_move_cost`](CostPlanner::with_move_cost), default 0.1) for moving it through the
/// caches, and for data last written (or, at first, registered) in another process
/// [`with_remote_move_cost`](CostPlanner::with_remote_move_cost) (default 200 µs) for copying
/// it there. A view ([`PlanData::view`]) used in a worker pays that cost too (its elements
/// travel with the task from here), and once more when a worker holds the latest whole value
/// (it is brought here first); a view written in a worker leaves the data's latest version
/// here (its elements come back after the task). A whole value the task overwrites
/// ([`PlanData::overwrite`]) costs nothing to move to a process that holds an older copy of it
/// (this process, or a worker where an earlier task used it whole). Run times are
/// [`PlanTask::cost_ns`]. Tasks that may not run in worker processes are only placed on this
/// process's threads.
#[derive(Clone, Debug)]
pub struct CostPlanner {
    move_cost: f64,
    remote_move_ns: u64,
    free_at: Vec<u64>,
    finish: Vec<u64>,
    thread_of: Vec<u32>,
    home: Vec<u32>,
    process: Vec<u32>,
    local: usize,
    /// The (key, worker process) pairs where a task used the whole value (a copy of some
    /// version stays there), tracked only with workers.
    held: std::collections::HashSet<(u32, u32)>,
}

impl Default for CostPlanner {
    fn default() -> Self {
        CostPlanner {
            move_cost: 0.1,
            remote_move_ns: 200_000,
            free_at: Vec::new(),
            finish: Vec::new(),
            thread_of: Vec::new(),
            home: Vec::new(),
            process: Vec::new(),
            local: 0,
            held: std::collections::HashSet::new(),
        }
    }
}

impl CostPlanner {
    /// A planner with the default model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the cost of using data last written on another thread, as a fraction of the task's
    /// run time.
    pub fn with_move_cost(mut self, fraction: f64) -> Self {
        self.move_cost = fraction.max(0.0);
        self
    }

    /// Sets the cost (nanoseconds) of using data that another process holds the latest
    /// version of.
    pub fn with_remote_move_cost(mut self, ns: u64) -> Self {
        self.remote_move_ns = ns;
        self
    }
}

const NO_THREAD: u32 = u32::MAX;

impl Planner for CostPlanner {
    fn start(&mut self, threads: usize, tasks: usize) {
        self.free_at = vec![0; threads.max(1)];
        self.finish = vec![0; tasks];
        self.thread_of = vec![NO_THREAD; tasks];
        self.home.clear();
        self.process = vec![0; threads.max(1)];
        self.local = threads.max(1);
        self.held.clear();
    }

    fn start_procs(&mut self, procs: &[PlanProc], tasks: usize) {
        self.start(procs.len(), tasks);
        if !procs.is_empty() {
            self.process = procs.iter().map(|p| p.process).collect();
            self.local = local_count(procs).max(1);
        }
    }

    fn place(&mut self, task: &PlanTask<'_>) -> Option<usize> {
        let ready = task
            .preds
            .iter()
            .map(|&p| self.finish[p as usize])
            .max()
            .unwrap_or(0);
        let mut best: Option<(u64, u64, usize)> = None;
        let candidates = if task.remote {
            self.free_at.len()
        } else {
            self.local.min(self.free_at.len())
        };
        for (t, &free) in self.free_at[..candidates].iter().enumerate() {
            let here = self.process[t];
            let mut moved = 0u32;
            let mut remote = 0u64;
            for d in task.data {
                let h = self.home.get(d.key as usize).copied().unwrap_or(NO_THREAD);
                let at = if h == NO_THREAD {
                    0
                } else {
                    self.process[h as usize]
                };
                if d.view && here != 0 {
                    // the elements travel with the task, from the home copy (brought here
                    // first if a worker holds the latest version)
                    remote += 1 + u64::from(at != 0);
                } else if d.overwrite && (here == 0 || self.held.contains(&(d.key, here))) {
                    // overwritten in the older copy this process holds: nothing moves
                } else if at != here {
                    remote += 1;
                } else if h != NO_THREAD && h != t as u32 {
                    moved += 1;
                }
            }
            let extra = (task.cost_ns as f64 * self.move_cost * f64::from(moved)) as u64
                + remote * self.remote_move_ns;
            let finish = free.max(ready) + task.cost_ns + extra;
            if best.is_none_or(|(f, fr, _)| finish < f || (finish == f && free < fr)) {
                best = Some((finish, free, t));
            }
        }
        let (finish, _, t) = best.expect("at least one thread");
        self.free_at[t] = finish;
        if let Some(f) = self.finish.get_mut(task.index) {
            *f = finish;
            self.thread_of[task.index] = t as u32;
        }
        let remote = self.process[t] != 0;
        for d in task.data {
            let k = d.key as usize;
            if remote && !d.view {
                self.held.insert((d.key, self.process[t]));
            }
            if self.home.len() <= k {
                self.home.resize(k + 1, NO_THREAD);
            }
            if d.view && remote {
                // a view is not kept in the worker: what the task wrote comes back here
                if d.write {
                    self.home[k] = NO_THREAD;
                }
            } else if d.write || self.home[k] == NO_THREAD {
                self.home[k] = t as u32;
            }
        }
        Some(t)
    }
}

/// A topological order of tasks `0..n` with predecessors `preds(i)` (all `< i`).
pub(crate) fn order(traversal: Traversal, n: usize, pred_start: &[u32], preds: &[u32]) -> Vec<u32> {
    if traversal == Traversal::InOrder {
        return (0..n as u32).collect();
    }
    // successors in CSR form, and the number of unplanned predecessors of each task
    let mut missing = vec![0u32; n];
    let mut succ_count = vec![0u32; n + 1];
    for i in 0..n {
        let ps = &preds[pred_start[i] as usize..pred_start[i + 1] as usize];
        missing[i] = ps.len() as u32;
        for &p in ps {
            succ_count[p as usize + 1] += 1;
        }
    }
    for i in 0..n {
        succ_count[i + 1] += succ_count[i];
    }
    let mut fill = succ_count.clone();
    let mut succs = vec![0u32; preds.len()];
    for i in 0..n {
        for &p in &preds[pred_start[i] as usize..pred_start[i + 1] as usize] {
            succs[fill[p as usize] as usize] = i as u32;
            fill[p as usize] += 1;
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut work: VecDeque<u32> = (0..n as u32)
        .filter(|&i| missing[i as usize] == 0)
        .collect();
    if traversal == Traversal::Dfs {
        // a stack popping from the back: earliest submitted first
        work.make_contiguous().reverse();
    }
    while let Some(i) = match traversal {
        Traversal::Dfs => work.pop_back(),
        _ => work.pop_front(),
    } {
        out.push(i);
        let s = &succs[succ_count[i as usize] as usize..succ_count[i as usize + 1] as usize];
        let before = work.len();
        for &j in s {
            missing[j as usize] -= 1;
            if missing[j as usize] == 0 {
                work.push_back(j);
            }
        }
        if traversal == Traversal::Dfs {
            work.make_contiguous()[before..].reverse();
        }
    }
    debug_assert_eq!(out.len(), n, "the task graph of a region has no cycles");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0 -> 1 -> 3, 0 -> 2, 4 alone
    fn graph() -> (Vec<u32>, Vec<u32>) {
        (vec![0, 0, 1, 2, 3, 3], vec![0, 0, 1])
    }

    /// A task for the planner tests.
    fn task<'a>(
        index: usize,
        preds: &'a [u32],
        cost_ns: u64,
        data: &'a [PlanData],
        remote: bool,
    ) -> PlanTask<'a> {
        PlanTask {
            index,
            name: None,
            preds,
            cost_ns,
            data,
            remote,
        }
    }

    fn check_topological(o: &[u32], starts: &[u32], preds: &[u32]) {
        let pos: Vec<usize> = (0..o.len())
            .map(|i| o.iter().position(|&x| x as usize == i).unwrap())
            .collect();
        for i in 0..o.len() {
            for &p in &preds[starts[i] as usize..starts[i + 1] as usize] {
                assert!(pos[p as usize] < pos[i]);
            }
        }
    }

    #[test]
    fn traversals_are_topological() {
        let (starts, preds) = graph();
        assert_eq!(
            order(Traversal::InOrder, 5, &starts, &preds),
            vec![0, 1, 2, 3, 4]
        );
        let bfs = order(Traversal::Bfs, 5, &starts, &preds);
        assert_eq!(bfs, vec![0, 4, 1, 2, 3]);
        let dfs = order(Traversal::Dfs, 5, &starts, &preds);
        assert_eq!(dfs, vec![0, 1, 3, 2, 4]);
        check_topological(&bfs, &starts, &preds);
        check_topological(&dfs, &starts, &preds);
    }

    #[test]
    fn planners() {
        let mut rr = RoundRobin::default();
        rr.start(2, 3);
        let t = |i| PlanTask {
            index: i,
            name: None,
            preds: &[],
            cost_ns: 10,
            data: &[],
            remote: false,
        };
        assert_eq!(
            (rr.place(&t(0)), rr.place(&t(1)), rr.place(&t(2))),
            (Some(0), Some(1), Some(0))
        );
        // independent equal tasks spread over both threads; a dependent chain stays local
        let mut cp = CostPlanner::new();
        cp.start(2, 4);
        let d = [PlanData {
            key: 0,
            write: true,
            view: false,
            overwrite: false,
        }];
        let a = cp.place(&PlanTask { data: &d, ..t(0) });
        let b = cp.place(&t(1));
        assert_ne!(a, b);
        let c = cp.place(&PlanTask {
            index: 2,
            preds: &[0],
            data: &d,
            ..t(2)
        });
        assert_eq!(c, a);
        assert_eq!(WorkStealing.place(&t(3)), None);
    }

    #[test]
    fn overwriting_where_an_older_copy_is_moves_nothing() {
        let procs: Vec<PlanProc> = (0..3)
            .map(|process| PlanProc { process, thread: 0 })
            .collect();
        let place = |overwrite: bool| {
            let mut cp = CostPlanner::new().with_remote_move_cost(1_000_000);
            cp.start_procs(&procs, 4);
            let x = |write, overwrite| {
                [PlanData {
                    key: 0,
                    write,
                    view: false,
                    overwrite,
                }]
            };
            let (write, last) = (x(true, false), x(true, overwrite));
            // a long task keeps this process busy: the next (writing x) goes to worker 1
            assert_eq!(cp.place(&task(0, &[], 50_000_000, &[], false)), Some(0));
            assert_eq!(cp.place(&task(1, &[], 10_000, &write, true)), Some(1));
            // changed here: worker 1 holds an older copy, worker 2 none
            assert_eq!(cp.place(&task(2, &[1], 10_000, &write, false)), Some(0));
            // then overwritten: with `Out`, worker 1's older copy will do (it is free
            // earlier than this process's thread); worker 2 would still need a copy
            cp.place(&task(3, &[2], 10_000, &last, true))
        };
        assert_eq!(place(true), Some(1));
        assert_eq!(place(false), Some(0));
    }

    #[test]
    fn views_written_in_workers_leave_the_data_here() {
        let procs = [
            PlanProc {
                process: 0,
                thread: 0,
            },
            PlanProc {
                process: 1,
                thread: 0,
            },
        ];
        let mut cp = CostPlanner::new().with_remote_move_cost(1_000_000);
        cp.start_procs(&procs, 3);
        // a long task keeps this process's thread busy: the next goes to the worker
        assert_eq!(cp.place(&task(0, &[], 50_000_000, &[], false)), Some(0));
        let view = [PlanData {
            key: 0,
            write: true,
            view: true,
            overwrite: false,
        }];
        assert_eq!(cp.place(&task(1, &[], 10_000, &view, true)), Some(1));
        // the view's elements came back here: a reader of the whole value after both is
        // cheaper here than in the worker (which holds no copy)
        let whole = [PlanData {
            key: 0,
            write: false,
            view: false,
            overwrite: false,
        }];
        assert_eq!(cp.place(&task(2, &[0, 1], 10_000, &whole, true)), Some(0));
    }
}
