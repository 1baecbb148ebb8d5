//! The head process of a cluster: workers join it, it sends them tasks, and it keeps track of
//! the values they hold for it.

use super::io::Link;
use super::msg::{encode_run, Done, FailKind, Msg, PeerInfo, Run, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::error::ErrorKind;
use crate::few::Few;
use crate::hash::IdMap;
use crate::id::NodeId;
use crate::remote::data::{DataLink, Label, Lineage};
use crate::remote::wire::{Location, ValueBytes, WireArg};
use crate::remote::{Dispatch, RemoteData, RemoteTask, RemoteWorker};
use crate::sched::encode::{ahead_lineage, lineage_call};
use crate::sched::Registry;
use crate::scope::Scope;
use crate::task::JobRef;
use bytes::Bytes;
use dagger_net::NetError;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// A worker as the head knows it.
pub(crate) struct HeadWorker {
    pub(crate) remote: Arc<RemoteWorker>,
    pub(crate) info: PeerInfo,
    pub(crate) hostname: String,
    pub(crate) pid: u32,
    last_pong: Instant,
}

/// A task sent to a worker and not reported back yet.
struct InFlight {
    worker: u32,
    /// The worker the task is counted on (`RemoteTask::send`): whoever takes the task out of
    /// `State::inflight` takes it out of these counts too, through this handle, whether or
    /// not the worker is still in the registry or in `State::workers` (a retiring worker
    /// leaves the registry first, and `retire` waits for its count to reach zero).
    remote: Arc<RemoteWorker>,
    /// Boxed: the map holds thousands of these at once, and moves them as it grows.
    task: Box<RemoteTask>,
}

/// Whether the head learnt that every input of `task` ended, or learns it from the reports
/// `earlier` in the batch being handled.
fn inputs_known(task: &RemoteTask, earlier: &[u64]) -> bool {
    let h = task.job.header();
    if h.pending.load(Ordering::SeqCst) == 0 {
        return true;
    }
    let crate::sched::Placement::Anywhere(a) = &h.placement else {
        return true;
    };
    a.inputs
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .all(|i| {
            let ih = i.header();
            ih.state.is_done() || earlier.contains(&ih.id.get())
        })
}

impl InFlight {
    /// Takes the task out of its worker's counts and hands it back.
    fn leave(self) -> Box<RemoteTask> {
        self.task.leave(&self.remote);
        self.task
    }
}

/// The report of a task sent ahead that came before the head learnt of all its inputs
/// ([`Head::early`]): handled once they all arrived.
struct KeptReport {
    head: Weak<Head>,
    node: Weak<Node>,
    /// The data link of the batch the report came in (shared by the results of that batch,
    /// which keep it alive), else one made again from `node`.
    link: Weak<NodeLink>,
    peer: u32,
    done: Done,
}

impl crate::sched::ahead::EarlyReport for KeptReport {
    fn handle(self: Box<Self>) {
        let Some(head) = self.head.upgrade() else {
            return;
        };
        let link = match self.link.upgrade() {
            Some(link) => link,
            None => match self.node.upgrade() {
                Some(node) => Arc::new(NodeLink(node)),
                None => return,
            },
        };
        head.take_done(&link, self.peer, [self.done], false);
    }
}

/// A task a worker reported done.
enum Completed {
    /// Its value, made from the call as it was sent.
    Sent(JobRef, Arc<RemoteData>, u64),
    /// A task sent ahead of its inputs: its value, where it is, its run time, and its
    /// encoding if small.
    Ahead(Box<RemoteTask>, Location, u64, Option<ValueBytes>),
}

/// How many times a task (or a recomputation) is tried again after losing its worker or an
/// input before it fails.
const MAX_ATTEMPTS: u32 = 4;

/// Ids of recomputation runs (never a task id, which counts up from 1).
const FIRST_RECOVERY_ID: u64 = 1 << 63;

type RunResult = Result<Location, (FailKind, String)>;

/// A recomputation running on a worker.
struct Recovery {
    worker: u32,
    done: tokio::sync::oneshot::Sender<RunResult>,
}

/// A task that could not fetch an input from `on`, waiting to learn whether `on` died.
struct Parked {
    on: u32,
    since: Instant,
    job: JobRef,
}

/// The values one worker holds for this process (pruned of dropped ones as it grows).
#[derive(Default)]
struct Located {
    values: Vec<Weak<RemoteData>>,
    pruned_len: usize,
}

impl Located {
    fn push(&mut self, data: &Arc<RemoteData>) {
        self.values.push(Arc::downgrade(data));
        if self.values.len() > 2 * self.pruned_len.max(1024) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        self.values.retain(|w| w.strong_count() > 0);
        self.pruned_len = self.values.len();
    }
}

#[derive(Default)]
struct State {
    workers: IdMap<u32, HeadWorker>,
    hosts: Vec<String>,
    inflight: IdMap<u64, InFlight>,
    /// Requests for statistics waiting for their answer: the worker asked, and where the
    /// answer goes (dropped if the worker is lost, which ends the wait).
    stats: HashMap<u64, (u32, SyncSender<WorkerStats>)>,
    next_req: u64,
    pings: HashMap<u64, (u32, Instant)>,
    /// Workers that left, and why.
    gone: HashMap<u32, String>,
    located: IdMap<u32, Located>,
    /// Tasks tried again after a loss, and how often.
    retries: IdMap<u64, u32>,
    parked: Vec<Parked>,
    recovering: HashMap<u64, Recovery>,
    next_recovery: u64,
    /// Recomputations under way.
    recomputing: usize,
    /// Values made again only as inputs of other recomputations, kept until every
    /// recomputation under way ended, so that none is made twice.
    remade: Vec<Arc<RemoteData>>,
    /// Workers asked to leave (their end is no fault).
    retiring: Vec<u32>,
    /// Workers asked to give back tasks, not answered yet.
    stealing: HashSet<u32>,
}

pub(crate) struct Head {
    node: Weak<Node>,
    registry: Weak<Registry>,
    state: Mutex<State>,
    joined: Condvar,
    /// A worker that sends nothing for this long is declared dead.
    pub(crate) heartbeat_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Head {
    pub(crate) fn new(
        node: &Arc<Node>,
        registry: &Arc<Registry>,
        heartbeat_timeout: Duration,
    ) -> Arc<Head> {
        let hostname = super::hostname();
        Arc::new(Head {
            node: Arc::downgrade(node),
            registry: Arc::downgrade(registry),
            state: Mutex::new(State {
                hosts: vec![hostname],
                next_recovery: FIRST_RECOVERY_ID,
                ..State::default()
            }),
            joined: Condvar::new(),
            heartbeat_timeout,
        })
    }

    /// Waits until every worker in `ids` joined (or left), for at most `timeout`. Every
    /// 100 ms, `failed` may say why one of them never will (its process exited).
    pub(crate) fn wait_joined(
        &self,
        ids: &[u32],
        timeout: Duration,
        failed: &dyn Fn(&[u32]) -> Option<String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let Some((id, why)) = ids
                .iter()
                .find_map(|id| state.gone.get(id).map(|w| (id, w)))
            {
                return Err(format!("worker {id} did not start: {why}"));
            }
            let missing: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| !state.workers.contains_key(id))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(why) = failed(&missing) {
                return Err(why);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "workers {missing:?} did not join within {timeout:?}"
                ));
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            state = self
                .joined
                .wait_timeout(state, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until worker `id` left (its connection closed), for at most `timeout`.
    pub(crate) fn wait_left(&self, id: u32, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.workers.contains_key(&id) {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("worker {id} did not exit within {timeout:?}"));
            }
            state = self
                .joined
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    pub(crate) fn worker_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = lock(&self.state).workers.keys().copied().collect();
        ids.sort();
        ids
    }

    pub(crate) fn describe(&self, id: u32) -> Option<(String, u32, u32, String)> {
        lock(&self.state).workers.get(&id).map(|w| {
            (
                w.hostname.clone(),
                w.pid,
                w.remote.threads,
                w.info.addr.clone(),
            )
        })
    }

    /// Asks a worker for its statistics.
    pub(crate) fn stats(&self, id: u32, timeout: Duration) -> Result<WorkerStats, String> {
        let node = self.node.upgrade().ok_or("the cluster is shut down")?;
        let link = node
            .link(id)
            .ok_or_else(|| format!("worker {id} is not connected"))?;
        let (tx, rx) = sync_channel(1);
        let req = {
            let mut s = lock(&self.state);
            if !s.workers.contains_key(&id) {
                return Err(format!("worker {id} is not connected"));
            }
            s.next_req += 1;
            let req = s.next_req;
            s.stats.insert(req, (id, tx));
            req
        };
        link.send(Msg::StatsRequest(req));
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                lock(&self.state).stats.remove(&req);
                format!("worker {id} did not report its statistics within {timeout:?}")
            }
            RecvTimeoutError::Disconnected => {
                format!("worker {id} left before it reported its statistics")
            }
        })
    }

    /// Sends a heartbeat to every worker and declares dead those silent for too long.
    pub(crate) fn heartbeat(&self) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (ping, dead): (Vec<(u32, u64)>, Vec<u32>) = {
            let mut s = lock(&self.state);
            let mut ping = Vec::new();
            let mut dead = Vec::new();
            let ids: Vec<u32> = s.workers.keys().copied().collect();
            for l in s.located.values_mut() {
                l.prune();
            }
            for id in ids {
                let last = s.workers[&id].last_pong;
                if now.duration_since(last) > self.heartbeat_timeout {
                    dead.push(id);
                } else {
                    s.next_req += 1;
                    let seq = s.next_req;
                    s.pings.insert(seq, (id, now));
                    ping.push((id, seq));
                }
            }
            (ping, dead)
        };
        // A task that could not fetch from a worker the head still hears from is tried
        // again after a while (the workers may have had a passing network problem).
        let stale: Vec<JobRef> = {
            let mut s = lock(&self.state);
            let (stale, keep) = std::mem::take(&mut s.parked)
                .into_iter()
                .partition(|p: &Parked| now.duration_since(p.since) > self.heartbeat_timeout);
            s.parked = keep;
            stale.into_iter().map(|p: Parked| p.job).collect()
        };
        for job in stale {
            crate::remote::requeue(job);
        }
        for (id, seq) in ping {
            if let Some(link) = node.link(id) {
                link.send(Msg::Ping(seq));
            }
        }
        for id in dead {
            log::warn!(
                "worker {id} sent nothing for {:?}: declaring it dead",
                self.heartbeat_timeout
            );
            if let Some(link) = node.remove_link(id) {
                link.close();
            }
            self.worker_lost(&node, id, "it stopped answering heartbeats".into());
        }
    }

    fn on_join(
        &self,
        node: &Arc<Node>,
        link: &Link,
        threads: u32,
        info: PeerInfo,
        hostname: String,
        pid: u32,
    ) {
        let id = link.peer;
        let (welcome, others) = {
            let mut s = lock(&self.state);
            let node_index = match s.hosts.iter().position(|h| *h == hostname) {
                Some(i) => i,
                None => {
                    s.hosts.push(hostname.clone());
                    s.hosts.len() - 1
                }
            } as u32;
            let peers: Vec<PeerInfo> = s.workers.values().map(|w| w.info.clone()).collect();
            let remote = Arc::new(RemoteWorker::new(id, threads, NodeId(node_index)));
            s.workers.insert(
                id,
                HeadWorker {
                    remote: remote.clone(),
                    info: info.clone(),
                    hostname,
                    pid,
                    last_pong: Instant::now(),
                },
            );
            s.gone.remove(&id);
            if let Some(reg) = self.registry.upgrade() {
                reg.remote.add(remote);
            }
            (
                Msg::Welcome {
                    id,
                    node: node_index,
                    peers: peers.clone(),
                },
                peers,
            )
        };
        node.set_peer(info.clone());
        link.send(welcome);
        for p in others {
            if let Some(l) = node.link(p.id) {
                l.send(Msg::PeerJoined(info.clone()));
            }
        }
        self.joined.notify_all();
    }

    /// Tasks ended on worker `peer` (one batch): takes the state lock once for the whole
    /// batch, then completes the tasks outside it. The report of a task sent ahead that
    /// came before the head learnt of all its inputs is kept for later ([`Head::early`]).
    fn on_done(self: &Arc<Self>, node: &Arc<Node>, peer: u32, done: Vec<Done>) {
        let link = Arc::new(NodeLink(node.clone()));
        let given_back = self.take_done(&link, peer, done, true);
        if !given_back.is_empty() {
            self.take_done(&link, peer, given_back, false);
        }
    }

    /// [`Head::on_done`]; with `keep_early`, the early reports that are not kept (their
    /// inputs became known, or the task completed, meanwhile) are returned, to be taken
    /// after the rest of the batch with `keep_early` false, which handles every report.
    fn take_done(
        self: &Arc<Self>,
        node_link: &Arc<NodeLink>,
        peer: u32,
        done: impl IntoIterator<Item = Done>,
        keep_early: bool,
    ) -> Vec<Done> {
        let done = done.into_iter();
        let link: Arc<dyn DataLink> = node_link.clone();
        let mut completed = Few::None;
        let mut waiting = Vec::new();
        let mut failed = Vec::new();
        let mut recovered = Vec::new();
        let mut given_back = Vec::new();
        // Tasks of this batch that ended well, so far.
        let mut earlier = Vec::new();
        {
            let mut s = lock(&self.state);
            let s = &mut *s;
            // A batch as it arrives (kept reports handled later are not news from the worker).
            if keep_early {
                if let Some(w) = s.workers.get_mut(&peer) {
                    w.last_pong = Instant::now();
                }
            }
            for d in done {
                if let Some(f) = s.inflight.get(&d.task) {
                    if f.worker != peer {
                        // An early report handled after its worker was lost, and the task
                        // sent again to another one.
                        continue;
                    }
                    if keep_early
                        && d.result.is_ok()
                        && f.task.is_ahead()
                        && !inputs_known(&f.task, &earlier)
                    {
                        if let Some(early) = self.early(node_link, peer, &f.task, d) {
                            given_back.push(early);
                        }
                        continue;
                    }
                }
                let Some(f) = s.inflight.remove(&d.task) else {
                    if let Some(r) = s.recovering.remove(&d.task) {
                        recovered.push((r, d.result));
                    }
                    continue;
                };
                let task = f.leave();
                if keep_early && d.result.is_ok() {
                    earlier.push(d.task);
                }
                match d.result {
                    Ok(loc) if task.is_ahead() => {
                        if !s.retries.is_empty() {
                            s.retries.remove(&d.task);
                        }
                        completed.push(Completed::Ahead(task, loc, d.run_ns, d.small));
                    }
                    Ok(loc) => {
                        let (job, lineage) = task.into_parts();
                        let label = lineage.label.clone();
                        let data =
                            RemoteData::new(loc, link.clone(), Some(Arc::new(lineage)), label);
                        if let Some(small) = d.small {
                            data.keep_small(small);
                        }
                        s.located.entry(loc.worker).or_default().push(&data);
                        if !s.retries.is_empty() {
                            s.retries.remove(&d.task);
                        }
                        completed.push(Completed::Sent(job, data, d.run_ns));
                    }
                    Err((FailKind::InputMissing, msg)) => {
                        log::debug!("task {} waits again: {msg}", d.task);
                        waiting.push(task);
                    }
                    Err((FailKind::InputLost(holder), msg)) => {
                        failed.push((task, Some(holder), FailKind::Runtime, msg))
                    }
                    Err((kind, msg)) => {
                        s.retries.remove(&d.task);
                        failed.push((task, None, kind, msg));
                    }
                }
            }
        }
        for (r, result) in recovered {
            let _ = r.done.send(result);
        }
        // In the order the worker reported them: a task sent ahead comes after the tasks it
        // waited for, so its call can be encoded again for its lineage, naming their results.
        for c in completed {
            match c {
                Completed::Sent(job, data, run_ns) => {
                    crate::remote::complete_job(&job, data, run_ns)
                }
                Completed::Ahead(task, loc, run_ns, small) => {
                    let (job, mut lineage) = (*task).into_parts_unbounded();
                    let label = lineage.label.clone();
                    // Without its inputs' results, it cannot be made again.
                    let inputs = ahead_lineage(&job, &mut lineage.call.args, &lineage.inputs)
                        .or_else(|| {
                            let (call, inputs) = lineage_call(&job).ok()?;
                            lineage.call.args = call.args;
                            Some(inputs)
                        });
                    let lineage = inputs.map(|inputs| {
                        let args = std::mem::take(&mut lineage.call.args);
                        lineage.set_inputs(args, inputs);
                        Arc::new(lineage)
                    });
                    let data = RemoteData::new(loc, link.clone(), lineage, label);
                    if let Some(small) = small {
                        data.keep_small(small);
                    }
                    self.locate(loc.worker, &data);
                    crate::remote::complete_job(&job, data, run_ns);
                }
            }
        }
        for task in waiting {
            task.requeue();
        }
        for (task, lost_on, kind, msg) in failed {
            match lost_on {
                Some(holder) => self.input_lost(*task, holder, msg),
                None => task.fail(kind.kind(), msg),
            }
        }
        given_back
    }

    /// The report `d` of a task sent ahead, made from inputs some of which came from other
    /// workers: kept (to handle once the head learnt of them all) while one of them has not
    /// been reported; else given back to handle now.
    fn early(
        self: &Arc<Self>,
        link: &Arc<NodeLink>,
        peer: u32,
        task: &RemoteTask,
        d: Done,
    ) -> Option<Done> {
        let h = task.job.header();
        if task.is_finished() || h.pending.load(Ordering::SeqCst) == 0 {
            return Some(d);
        }
        let kept = Box::new(KeptReport {
            head: Arc::downgrade(self),
            node: Arc::downgrade(&link.0),
            link: Arc::downgrade(link),
            peer,
            done: d,
        });
        crate::sched::ahead::report_early(h, kept).map(|given| given.done)
    }

    /// A task could not fetch an input from worker `holder`: run it again once the input is
    /// known lost (and so is being made again).
    fn input_lost(&self, task: RemoteTask, holder: u32, msg: String) {
        let id = task.id();
        log::debug!("task {id} runs again: {msg}");
        let park = {
            let mut s = lock(&self.state);
            let tries = s.retries.entry(id).or_insert(0);
            *tries += 1;
            if *tries >= MAX_ATTEMPTS {
                s.retries.remove(&id);
                None
            } else {
                Some(s.workers.contains_key(&holder))
            }
        };
        match park {
            None => task.fail(
                ErrorKind::Runtime,
                format!("its inputs were lost {MAX_ATTEMPTS} times; the last time: {msg}"),
            ),
            Some(true) => {
                let (job, _) = task.into_parts();
                lock(&self.state).parked.push(Parked {
                    on: holder,
                    since: Instant::now(),
                    job,
                });
            }
            Some(false) => {
                task.requeue();
            }
        }
    }

    /// A worker left or died: forget it, mark the values it held as lost (they are made again
    /// when needed), and run its tasks elsewhere.
    pub(crate) fn worker_lost(&self, node: &Arc<Node>, id: u32, why: String) {
        let (lost, others, values, parked, recoveries) = {
            let mut s = lock(&self.state);
            if let Some(i) = s.retiring.iter().position(|r| *r == id) {
                s.retiring.swap_remove(i);
                log::info!("worker {id} left");
            } else {
                log::warn!("worker {id} is lost: {why}");
            }
            if s.workers.remove(&id).is_none() {
                s.gone.entry(id).or_insert(why.clone());
                drop(s);
                self.joined.notify_all();
                return;
            }
            s.gone.insert(id, why.clone());
            s.stealing.remove(&id);
            // Whoever waits for its statistics hears at once that none will come.
            s.stats.retain(|_, (worker, _)| *worker != id);
            let ids: Vec<u64> = s
                .inflight
                .iter()
                .filter(|(_, f)| f.worker == id)
                .map(|(t, _)| *t)
                .collect();
            // Out of the worker's counts too: `retire` may be waiting for them.
            let lost: Vec<RemoteTask> = ids
                .iter()
                .filter_map(|t| s.inflight.remove(t))
                .map(|f| *f.leave())
                .collect();
            let others: Vec<u32> = s.workers.keys().copied().collect();
            let values = s.located.remove(&id).unwrap_or_default().values;
            let (parked, keep): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut s.parked)
                .into_iter()
                .partition(|p| p.on == id);
            s.parked = keep;
            let rids: Vec<u64> = s
                .recovering
                .iter()
                .filter(|(_, r)| r.worker == id)
                .map(|(r, _)| *r)
                .collect();
            let recoveries: Vec<Recovery> =
                rids.iter().filter_map(|r| s.recovering.remove(r)).collect();
            (lost, others, values, parked, recoveries)
        };
        if let Some(reg) = self.registry.upgrade() {
            reg.remote.remove(id);
        }
        node.forget_peer(id);
        for o in others {
            if let Some(l) = node.link(o) {
                l.send(Msg::PeerLeft(id));
            }
        }
        // Values first: the tasks placed again below must find their inputs lost, not at
        // the dead worker.
        let lost_values: Vec<Arc<RemoteData>> = values
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|v| v.mark_lost(id))
            .collect();
        for r in recoveries {
            let _ = r.done.send(Err((
                FailKind::InputLost(id),
                format!("worker {id} was lost while making it: {why}"),
            )));
        }
        for p in parked {
            crate::remote::requeue(p.job);
        }
        // Someone still holds them, so they are still needed: make them again now, all at
        // once, so inputs they share are made once.
        for v in lost_values {
            v.start_recovery();
        }
        for task in lost {
            let task_id = task.id();
            let give_up = {
                let mut s = lock(&self.state);
                let tries = s.retries.entry(task_id).or_insert(0);
                *tries += 1;
                let give_up = *tries >= MAX_ATTEMPTS;
                if give_up {
                    s.retries.remove(&task_id);
                }
                give_up
            };
            if give_up {
                task.fail(
                    ErrorKind::Runtime,
                    format!(
                        "worker {id} was lost while running it ({why}), the {MAX_ATTEMPTS}th \
                         worker lost with it"
                    ),
                );
            } else {
                log::debug!("task {task_id} runs again: worker {id} was lost while running it");
                task.requeue();
            }
        }
        self.joined.notify_all();
    }

    /// The live worker in `scope` with the least work, and the thread to name in the call.
    fn pick(&self, scope: &Scope) -> Option<(Arc<RemoteWorker>, Option<u32>)> {
        let reg = self.registry.upgrade()?;
        reg.remote
            .snapshot()
            .iter()
            .filter(|w| w.alive.load(Ordering::Acquire))
            .filter_map(|w| w.threads_in(scope).map(|t| (w.clone(), t)))
            .min_by_key(|(w, _)| w.inflight.load(Ordering::Relaxed))
    }

    /// Makes a lost value again from its lineage: its inputs first (recursively, if they
    /// are lost too), then the call that made it, on a live worker.
    async fn recompute(self: Arc<Self>, node: Arc<Node>, data: Arc<RemoteData>) {
        log::debug!("making {} again", data.label());
        lock(&self.state).recomputing += 1;
        self.clone().recompute_one(node, data).await;
        let done = {
            let mut s = lock(&self.state);
            s.recomputing -= 1;
            if s.recomputing == 0 {
                std::mem::take(&mut s.remade)
            } else {
                Vec::new()
            }
        };
        drop(done);
    }

    async fn recompute_one(self: Arc<Self>, node: Arc<Node>, data: Arc<RemoteData>) {
        let from = match data.lost_on() {
            Some(w) => format!(" (it was on worker {w}, which is gone)"),
            None => String::new(),
        };
        let Some(lineage) = data.lineage().cloned() else {
            data.set_failed(format!(
                "{} was lost{from} and cannot be made again: no task made it",
                data.label()
            ));
            return;
        };
        let mut last = String::new();
        for _ in 0..MAX_ATTEMPTS {
            let inputs = match self.inputs_of(&data, &lineage).await {
                Ok(i) => i,
                Err(why) => {
                    data.set_failed(format!("{} was lost{from} and {why}", data.label()));
                    return;
                }
            };
            let mut call = lineage.call.clone();
            let mut locs = inputs.iter().map(|(_, loc)| *loc);
            substitute(&mut call.args, &mut locs);
            let Some((worker, thread)) = self.pick(&lineage.scope) else {
                data.set_failed(format!(
                    "{} was lost{from} and no live worker in its scope `{}` can make it again",
                    data.label(),
                    lineage.scope
                ));
                return;
            };
            call.thread = thread;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let rid = {
                let mut s = lock(&self.state);
                let rid = s.next_recovery;
                s.next_recovery += 1;
                s.recovering.insert(
                    rid,
                    Recovery {
                        worker: worker.id,
                        done: tx,
                    },
                );
                rid
            };
            let sent = node.link(worker.id).is_some_and(|l| {
                l.send(Msg::Run(vec![Run {
                    task: rid,
                    call,
                    feeds: false,
                }]))
            });
            if !sent {
                lock(&self.state).recovering.remove(&rid);
                last = format!("worker {} could not be reached", worker.id);
                continue;
            }
            match rx.await {
                Ok(Ok(loc)) => {
                    self.locate(loc.worker, &data);
                    log::debug!("{} was made again on worker {}", data.label(), loc.worker);
                    data.set_ready(loc);
                    return;
                }
                Ok(Err((FailKind::InputLost(holder), msg))) => {
                    // Wait until the head learns the holder's fate, then look at the inputs
                    // again.
                    if let Some((input, loc)) = inputs.iter().find(|(_, l)| l.worker == holder) {
                        let _ =
                            tokio::time::timeout(self.heartbeat_timeout, input.moved(*loc)).await;
                    }
                    last = msg;
                }
                Ok(Err((_, msg))) => {
                    data.set_failed(format!(
                        "{} was lost{from} and making it again failed: {msg}",
                        data.label()
                    ));
                    return;
                }
                Err(_) => last = "the cluster shut down".into(),
            }
        }
        data.set_failed(format!(
            "{} was lost{from} and could not be made again in {MAX_ATTEMPTS} attempts; the \
             last failure: {last}",
            data.label()
        ));
    }

    /// The inputs of a recomputation, each where it is now (made again first if needed).
    async fn inputs_of(
        &self,
        data: &RemoteData,
        lineage: &Lineage,
    ) -> Result<Vec<(Arc<RemoteData>, Location)>, String> {
        let mut out = Vec::with_capacity(lineage.inputs.len());
        for input in &lineage.inputs {
            let d = match (input.data.upgrade(), &input.lineage) {
                (Some(d), _) => d,
                (None, Some(l)) => {
                    let d = l.remake(data.link());
                    lock(&self.state).remade.push(d.clone());
                    d
                }
                (None, None) if lineage.is_cut() => {
                    return Err(format!(
                        "one of its inputs is gone: the history behind a value is kept for \
                         {} generations of tasks",
                        crate::remote::data::MAX_LINEAGE_DEPTH
                    ))
                }
                (None, None) => return Err("one of its inputs is gone".into()),
            };
            let loc = d
                .location_async()
                .await
                .map_err(|e| format!("an input could not be made again: {e}"))?;
            out.push((d, loc));
        }
        Ok(out)
    }

    /// Asks every worker to exit.
    pub(crate) fn shutdown(&self, node: &Arc<Node>) {
        for id in self.worker_ids() {
            if let Some(l) = node.link(id) {
                l.send(Msg::Shutdown);
                l.close();
            }
        }
    }

    /// Stops sending tasks to worker `id`, lets it finish its tasks, copies the values it
    /// holds to other workers (or to the head when none is left), and asks it to exit.
    pub(crate) fn retire(
        &self,
        node: &Arc<Node>,
        id: u32,
        timeout: Duration,
    ) -> Result<(), String> {
        let remote = {
            let mut s = lock(&self.state);
            let remote = s.workers.get(&id).map(|w| w.remote.clone());
            if remote.is_some() {
                s.retiring.push(id);
            }
            remote
        }
        .ok_or_else(|| format!("there is no worker {id}"))?;
        if let Some(reg) = self.registry.upgrade() {
            reg.remote.remove(id);
        }
        let deadline = Instant::now() + timeout;
        while remote.inflight.load(Ordering::Acquire) > 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "worker {id} did not finish its tasks within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.evacuate(node, id);
        if let Some(l) = node.link(id) {
            l.send(Msg::Shutdown);
        }
        Ok(())
    }

    /// Copies every value worker `id` holds for this process to another worker, or here.
    fn evacuate(&self, node: &Arc<Node>, id: u32) {
        let values: Vec<Arc<RemoteData>> = {
            let mut s = lock(&self.state);
            let mut located = s.located.remove(&id).unwrap_or_default();
            located.prune();
            located.values.iter().filter_map(Weak::upgrade).collect()
        };
        for data in values {
            let Ok(from) = data.try_location() else {
                continue;
            };
            if from.worker != id {
                continue;
            }
            let scope = data.lineage().map_or_else(Scope::any, |l| l.scope.clone());
            let target = self
                .pick(&scope)
                .or_else(|| self.pick(&Scope::any()))
                .map_or(node.id, |(w, _)| w.id);
            match node.pull(target, from) {
                Ok(to) => {
                    if data.relocate(from, to) && to.worker != node.id {
                        self.locate(to.worker, &data);
                    }
                }
                // Left where it is: if it is needed after the worker exits, it is made again
                // (or reported lost) like any value of a dead worker.
                Err(e) => {
                    log::warn!("{} stays on retiring worker {id}: {e}", data.label());
                    self.locate(id, &data);
                }
            }
        }
    }
}

impl Dispatch for Head {
    fn adopt(&self, loc: Location, label: Label) -> Result<Arc<RemoteData>, String> {
        let node = self.node.upgrade().ok_or("the cluster is shut down")?;
        let data = RemoteData::new(loc, Arc::new(NodeLink(node)), None, label);
        self.locate(loc.worker, &data);
        Ok(data)
    }

    fn put(&self, bytes: Bytes, scope: &Scope, label: Label) -> Result<Arc<RemoteData>, String> {
        let node = self.node.upgrade().ok_or("the cluster is shut down")?;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let Some((worker, _)) = self.pick(scope) else {
                break;
            };
            match node.put_bytes(worker.id, bytes.clone()) {
                Ok(loc) => {
                    let data = RemoteData::new(loc, Arc::new(NodeLink(node.clone())), None, label);
                    self.locate(loc.worker, &data);
                    return Ok(data);
                }
                // The worker is going away: try another one.
                Err(e) => last = Some(format!("worker {}: {e}", worker.id)),
            }
        }
        Err(match last {
            Some(e) => {
                format!("no worker in scope `{scope}` could keep {label}; the last try: {e}")
            }
            None => format!("no live worker is in scope `{scope}` to keep {label}"),
        })
    }

    fn dispatch(&self, worker: &Arc<RemoteWorker>, task: RemoteTask) {
        let link = self.node.upgrade().and_then(|n| n.link(worker.id));
        let Some(link) = link else {
            // It is being removed: place the task elsewhere.
            worker.alive.store(false, Ordering::Release);
            task.leave(worker);
            task.requeue();
            return;
        };
        let id = task.id();
        let feeds = task.will_feed();
        let encoded = encode_run(id, &task.call, feeds);
        let job = task.job.clone();
        lock(&self.state).inflight.insert(
            id,
            InFlight {
                worker: worker.id,
                remote: worker.clone(),
                task: Box::new(task),
            },
        );
        match link.send_run(encoded) {
            // Only now may calls sent ahead of it name it: with its place among the calls
            // sent to the worker, which tells the worker whether it has arrived there yet.
            Some(seq) => crate::sched::ahead::mark_sent(job.header(), worker.id, feeds, seq),
            None => {
                let f = lock(&self.state).inflight.remove(&id);
                if let Some(f) = f {
                    worker.alive.store(false, Ordering::Release);
                    f.leave().requeue();
                }
            }
        }
    }
}

/// Work stealing: a worker with idle threads relieves one whose tasks wait in its queue.
/// The head asks the busy worker to give back some tasks that have not started and may run
/// elsewhere; the worker revokes those it can, and the head sends them to the idlest worker.
impl Head {
    fn balance(&self, node: &Arc<Node>) {
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let workers = reg.remote.snapshot();
        // Tasks sent ahead wait for tasks on their worker: they are not taken back.
        let load = |w: &RemoteWorker| {
            w.inflight.load(Ordering::Relaxed) as i64
                - w.ahead.load(Ordering::Relaxed) as i64
                - w.threads as i64
        };
        let alive = workers.iter().filter(|w| w.alive.load(Ordering::Acquire));
        let Some(thief) = alive.clone().min_by_key(|w| load(w)) else {
            return;
        };
        let idle = -load(thief);
        if idle <= 0 {
            return;
        }
        let Some(victim) = alive.filter(|w| w.id != thief.id).max_by_key(|w| load(w)) else {
            return;
        };
        let waiting = load(victim);
        if waiting <= 0 {
            return;
        }
        let want = ((waiting + 1) / 2).min(idle + thief.threads as i64) as usize;
        let ids: Vec<u64> = {
            let mut s = lock(&self.state);
            if s.stealing.contains(&victim.id) {
                return;
            }
            let mut ids: Vec<u64> = s
                .inflight
                .iter()
                .filter(|(_, f)| {
                    f.worker == victim.id
                        && !f.task.is_ahead()
                        && f.task.call.thread.is_none()
                        && thief.threads_in(&f.task.scope) == Some(None)
                })
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                return;
            }
            // The last ones sent wait longest in the worker's queue: take those.
            if ids.len() > want {
                ids.select_nth_unstable_by(want - 1, |a, b| b.cmp(a));
                ids.truncate(want);
            }
            s.stealing.insert(victim.id);
            ids
        };
        let sent = node
            .link(victim.id)
            .is_some_and(|l| l.send(Msg::Steal(ids)));
        if !sent {
            lock(&self.state).stealing.remove(&victim.id);
        }
    }

    /// Worker `victim` gave back tasks: run them on the idlest other worker that may.
    fn on_stolen(&self, victim: u32, ids: Vec<u64>) {
        let tasks: Vec<RemoteTask> = {
            let mut s = lock(&self.state);
            s.stealing.remove(&victim);
            ids.iter()
                .filter_map(|id| match s.inflight.get(id) {
                    Some(f) if f.worker == victim => s.inflight.remove(id),
                    _ => None,
                })
                // Out of the victim's counts even if it left the registry meanwhile (it
                // is retiring, and `retire` waits for these counts to reach zero).
                .map(|f| *f.leave())
                .collect()
        };
        if tasks.is_empty() {
            return;
        }
        let Some(reg) = self.registry.upgrade() else {
            return;
        };
        let workers = reg.remote.snapshot();
        log::debug!("took {} tasks back from worker {victim}", tasks.len());
        for task in tasks {
            let target = workers
                .iter()
                .filter(|w| w.id != victim && w.alive.load(Ordering::Acquire))
                .filter(|w| w.threads_in(&task.scope) == Some(None))
                .min_by_key(|w| w.inflight.load(Ordering::Relaxed) as i64 - w.threads as i64);
            match target {
                Some(w) => task.send(self, w),
                None => {
                    task.requeue();
                }
            }
        }
    }
}

impl Head {
    /// Tracks `data`, now on `worker`, so that it is marked lost if `worker` dies.
    fn locate(&self, worker: u32, data: &Arc<RemoteData>) {
        lock(&self.state)
            .located
            .entry(worker)
            .or_default()
            .push(data);
    }
}

impl Role for Head {
    fn on_message(self: Arc<Self>, node: &Arc<Node>, link: &Link, msg: Msg) {
        if let Msg::Done(done) = msg {
            // Hears from the worker under the same lock as the batch.
            self.on_done(node, link.peer, done);
            if let Some(reg) = self.registry.upgrade() {
                reg.retry_ahead();
            }
            return self.balance(node);
        }
        if let Some(w) = lock(&self.state).workers.get_mut(&link.peer) {
            w.last_pong = Instant::now();
        }
        match msg {
            Msg::Join {
                threads,
                addr,
                fingerprint,
                hostname,
                pid,
            } => self.on_join(
                node,
                link,
                threads,
                PeerInfo {
                    id: link.peer,
                    addr,
                    fingerprint,
                },
                hostname,
                pid,
            ),
            Msg::Stolen(ids) => self.on_stolen(link.peer, ids),
            Msg::Stats(req, stats) => {
                if let Some((_, tx)) = lock(&self.state).stats.remove(&req) {
                    let _ = tx.send(stats);
                }
            }
            Msg::Pong(seq) => {
                let sent = lock(&self.state).pings.remove(&seq);
                if let Some((id, at)) = sent {
                    let rtt = at.elapsed().as_nanos() as u64;
                    if let Some(w) = lock(&self.state).workers.get(&id) {
                        let old = w.remote.rtt_ns.load(Ordering::Relaxed);
                        w.remote
                            .rtt_ns
                            .store((old * 3 + rtt) / 4, Ordering::Relaxed);
                    }
                }
            }
            other => log::warn!(
                "worker {} sent a message the head does not expect: {other:?}",
                link.peer
            ),
        }
    }

    fn recover(self: Arc<Self>, node: &Arc<Node>, data: Arc<RemoteData>) {
        node.io.spawn(self.recompute(node.clone(), data));
    }

    fn on_closed(self: Arc<Self>, node: &Arc<Node>, peer: u32, err: Option<NetError>) {
        let why = match err {
            Some(e) => format!("its connection failed: {e}"),
            None => "it closed its connection".to_string(),
        };
        self.worker_lost(node, peer, why);
    }
}

/// Points the `Ref` arguments of a call (depth first) at `locs`.
fn substitute(args: &mut [WireArg], locs: &mut impl Iterator<Item = Location>) {
    WireArg::each_mut(args, &mut |a| {
        if let WireArg::Ref(loc) = a {
            if let Some(l) = locs.next() {
                *loc = l;
            }
        }
    });
}
