//! A worker process: runs the tasks its head sends, holds their results for the cluster, and
//! exits when the head says so or goes away.

use super::io::Link;
use super::msg::{Done, FailKind, Msg, Run, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::context::Context;
use crate::error::BoxError;
use crate::error::TaskError;
use crate::remote::data::DataLink;
use crate::remote::store::{run_claimed, run_in_place, Claim, Fetch, InputLost};
use crate::remote::wire::{Location, WireArg};
use crate::task::DTask;
use bytes::Bytes;
use dagger_net::NetError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct Worker {
    pub(crate) ctx: Context,
    running: AtomicU64,
    /// The head's tasks sent here and not finished, which it may take back until they start.
    claims: Mutex<HashMap<u64, Arc<Claim>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    pub(crate) fn new(ctx: Context) -> Arc<Worker> {
        Arc::new(Worker {
            ctx,
            running: AtomicU64::new(0),
            claims: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the calls of a `Run` batch. Those whose inputs are all here start at once and
    /// one task on the I/O thread reports each as it ends (not one task per call); the
    /// others start once their inputs arrived.
    fn run(self: &Arc<Self>, node: &Arc<Node>, link: &Link, runs: Vec<Run>) {
        let here: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        let mut started = Vec::with_capacity(runs.len());
        for r in runs {
            let claim = Arc::new(Claim::new());
            lock(&self.claims).insert(r.task, claim.clone());
            let mut remote = Vec::new();
            remote_inputs(&r.call.args, node.id, &mut remote);
            if remote.is_empty() {
                started.extend(self.start(node, link, r, here.clone(), claim));
            } else {
                self.prefetch_and_start(node, link, r, remote, claim);
            }
        }
        let me = self.clone();
        let link = link.clone();
        if started.len() <= 1 {
            if let Some((task, claim, dtask)) = started.pop() {
                node.io.spawn(async move {
                    let result = dtask.await;
                    me.report(&link, task, &claim, result);
                });
            }
            return;
        }
        node.io.spawn(async move {
            let mut ending: FuturesUnordered<_> = started
                .into_iter()
                .map(|(task, claim, dtask)| async move { (task, claim, dtask.await) })
                .collect();
            while let Some((task, claim, result)) = ending.next().await {
                me.report(&link, task, &claim, result);
            }
        });
    }

    /// Fetches the inputs of `r` held by other processes on the I/O thread (within the
    /// process's [`PrefetchBudget`](super::node::PrefetchBudget)), then starts it: the call
    /// does not block a compute thread (nor make the pool start another one) while its
    /// inputs travel, and the inputs fetched ahead of the compute threads stay within that
    /// budget (about 256 MiB, at most 16 calls). An input that could not be prefetched is
    /// fetched by the call the usual (blocking) way, which reports its loss as before.
    fn prefetch_and_start(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        r: Run,
        remote: Vec<Location>,
        claim: Arc<Claim>,
    ) {
        let me = self.clone();
        let node2 = node.clone();
        let link = link.clone();
        node.io.spawn(async move {
            let node = node2;
            let fetch: Arc<dyn Fetch> = match node.prefetch.reserve().await {
                Some(permit) => {
                    let mut got = Vec::with_capacity(remote.len());
                    for loc in remote {
                        if let Ok(bytes) = node.fetch_async(loc).await {
                            got.push((loc, bytes));
                        }
                    }
                    node.prefetch
                        .learn(got.iter().map(|(_, b)| b.len() as u64).sum());
                    Arc::new(Prefetched {
                        got,
                        rest: NodeLink(node.clone()),
                        permit: std::sync::Mutex::new(Some(permit)),
                    })
                }
                None => Arc::new(NodeLink(node.clone())),
            };
            if let Some((task, claim, dtask)) = me.start(&node, &link, r, fetch, claim) {
                let result = dtask.await;
                me.report(&link, task, &claim, result);
            }
        });
    }

    /// Runs `r` on this process's pool; `None` if it could not start (already reported to
    /// the head).
    fn start(
        &self,
        node: &Arc<Node>,
        link: &Link,
        r: Run,
        fetch: Arc<dyn Fetch>,
        claim: Arc<Claim>,
    ) -> Option<Started> {
        let task = r.task;
        let run = run_claimed(
            &self.ctx,
            r.call,
            node.store.clone(),
            fetch,
            Some(claim.clone()),
        );
        match run {
            Ok(dtask) => {
                self.running.fetch_add(1, Ordering::Relaxed);
                Some((task, claim, dtask))
            }
            Err(e) => {
                lock(&self.claims).remove(&task);
                link.send_done(Done {
                    task,
                    result: Err((FailKind::Runtime, e.to_string())),
                    run_ns: 0,
                });
                None
            }
        }
    }

    /// Tells the head that `task` ended (unless the head took it back to run elsewhere).
    fn report(
        &self,
        link: &Link,
        task: u64,
        claim: &Claim,
        result: Result<(Location, u64), TaskError>,
    ) {
        if claim.is_revoked() {
            self.running.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        lock(&self.claims).remove(&task);
        let done = match result {
            Ok((loc, run_ns)) => Done {
                task,
                result: Ok(loc),
                run_ns,
            },
            Err(e) => {
                let kind = match e.downcast_ref::<InputLost>() {
                    Some(lost) => FailKind::InputLost(lost.worker),
                    None => FailKind::from_kind(e.kind()),
                };
                Done {
                    task,
                    result: Err((kind, e.message())),
                    run_ns: 0,
                }
            }
        };
        self.running.fetch_sub(1, Ordering::Relaxed);
        link.send_done(done);
    }
}

/// A call started on this process's pool: the head's task id, its claim, and the task.
type Started = (u64, Arc<Claim>, DTask<(Location, u64)>);

/// The inputs of a call that other processes hold (depth first).
fn remote_inputs(args: &[WireArg], here: u32, out: &mut Vec<Location>) {
    for a in args {
        match a {
            WireArg::Ref(loc) if loc.worker != here => out.push(*loc),
            WireArg::Many(items) => remote_inputs(items, here, out),
            _ => {}
        }
    }
}

/// The inputs of one call, fetched before it started; others are fetched through `rest`.
/// Holds a prefetch slot until the call starts reading its inputs.
struct Prefetched {
    got: Vec<(Location, Bytes)>,
    rest: NodeLink,
    permit: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Fetch for Prefetched {
    fn fetch(&self, loc: Location) -> Result<Bytes, BoxError> {
        // The call runs: its slot goes to the next call waiting to prefetch.
        drop(self.permit.lock().unwrap_or_else(|e| e.into_inner()).take());
        match self.got.iter().find(|(l, _)| *l == loc) {
            Some((_, bytes)) => Ok(bytes.clone()),
            None => DataLink::fetch(&self.rest, loc),
        }
    }
}

impl Worker {
    fn run_in_place(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        req: u64,
        call: crate::remote::wire::WireCall,
        writes: Vec<bool>,
    ) {
        let fetch: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        match run_in_place(&self.ctx, call, writes, node.store.clone(), fetch) {
            Ok(dtask) => {
                self.running.fetch_add(1, Ordering::Relaxed);
                let link = link.clone();
                let me = self.clone();
                node.io.spawn(async move {
                    let done = dtask.await;
                    me.running.fetch_sub(1, Ordering::Relaxed);
                    match done {
                        Ok((bytes, run_ns)) => {
                            link.send_with_payload(Msg::Ran { req, run_ns }, bytes.into());
                        }
                        Err(e) => {
                            link.send(Msg::RanError {
                                req,
                                kind: FailKind::from_kind(e.kind()),
                                message: e.message(),
                            });
                        }
                    }
                });
            }
            Err(e) => {
                link.send(Msg::RanError {
                    req,
                    kind: FailKind::Runtime,
                    message: e.to_string(),
                });
            }
        }
    }
}

impl Role for Worker {
    fn on_message(self: Arc<Self>, node: &Arc<Node>, link: &Link, msg: Msg) {
        match msg {
            Msg::Welcome { peers, .. } => {
                for p in peers {
                    node.set_peer(p);
                }
            }
            Msg::PeerJoined(p) => node.set_peer(p),
            Msg::PeerLeft(id) => node.forget_peer(id),
            Msg::Run(runs) => self.run(node, link, runs),
            Msg::RunInPlace { req, call, writes } => {
                self.run_in_place(node, link, req, call, writes)
            }
            Msg::Free(ids) => node.store.free_many(&ids),
            Msg::Cancel(_) => {}
            Msg::Steal(ids) => {
                let taken: Vec<u64> = {
                    let mut claims = lock(&self.claims);
                    ids.into_iter()
                        .filter(|id| match claims.get(id) {
                            Some(c) if c.revoke() => {
                                claims.remove(id);
                                true
                            }
                            _ => false,
                        })
                        .collect()
                };
                link.send(Msg::Stolen(taken));
            }
            Msg::StatsRequest(req) => {
                let stats = WorkerStats {
                    live_values: node.store.len() as u64,
                    live_results: crate::stats::live_results() as u64,
                    rss_bytes: super::rss_bytes(),
                    running: self.running.load(Ordering::Relaxed),
                };
                link.send(Msg::Stats(req, stats));
            }
            Msg::Shutdown => {
                log::info!("worker {} shutting down at the head's request", node.id);
                std::process::exit(0);
            }
            other => log::warn!(
                "process {} sent a message a worker does not expect: {other:?}",
                link.peer
            ),
        }
    }

    fn on_closed(self: Arc<Self>, node: &Arc<Node>, peer: u32, err: Option<NetError>) {
        if peer == 0 {
            match err {
                None => log::info!(
                    "worker {}: the head closed the connection; exiting",
                    node.id
                ),
                Some(e) => log::warn!("worker {}: lost the head ({e}); exiting", node.id),
            }
            std::process::exit(0);
        }
    }
}
