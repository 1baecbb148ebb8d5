//! A worker process: runs the tasks its head sends, holds their results for the cluster, and
//! exits when the head says so or goes away.

use super::io::Link;
use super::msg::{Done, FailKind, Msg, Run, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::context::Context;
use crate::error::BoxError;
use crate::remote::data::DataLink;
use crate::remote::store::{run_call, Fetch, InputLost};
use crate::remote::wire::{Location, WireArg};
use bytes::Bytes;
use dagger_net::NetError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct Worker {
    pub(crate) ctx: Context,
    running: AtomicU64,
}

impl Worker {
    pub(crate) fn new(ctx: Context) -> Arc<Worker> {
        Arc::new(Worker {
            ctx,
            running: AtomicU64::new(0),
        })
    }

    fn run(self: &Arc<Self>, node: &Arc<Node>, link: &Link, runs: Vec<Run>) {
        let here: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        for r in runs {
            let mut remote = Vec::new();
            remote_inputs(&r.call.args, node.id, &mut remote);
            if remote.is_empty() {
                self.start(node, link, r, here.clone());
            } else {
                self.prefetch_and_start(node, link, r, remote);
            }
        }
    }

    /// Fetches the inputs of `r` held by other processes on the I/O thread (at most
    /// [`MAX_PREFETCHES`](super::node::MAX_PREFETCHES) at once for the process), then
    /// starts it: the call does not block a compute thread (nor make the pool start another
    /// one) while its inputs travel, and at most that many calls wait with their inputs
    /// fetched ahead of the compute threads. An input that could not be prefetched is fetched by the
    /// call the usual (blocking) way, which reports its loss as before.
    fn prefetch_and_start(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        r: Run,
        remote: Vec<Location>,
    ) {
        let me = self.clone();
        let node2 = node.clone();
        let link = link.clone();
        node.io.spawn(async move {
            let node = node2;
            let Ok(permit) = node.prefetches.clone().acquire_owned().await else {
                return me.start(&node, &link, r, Arc::new(NodeLink(node.clone())));
            };
            let mut got = Vec::with_capacity(remote.len());
            for loc in remote {
                if let Ok(bytes) = node.fetch_async(loc).await {
                    got.push((loc, bytes));
                }
            }
            let fetch = Arc::new(Prefetched {
                got,
                rest: NodeLink(node.clone()),
                permit: std::sync::Mutex::new(Some(permit)),
            });
            me.start(&node, &link, r, fetch);
        });
    }

    /// Runs `r` on this process's pool; reports its end to the head.
    fn start(self: &Arc<Self>, node: &Arc<Node>, link: &Link, r: Run, fetch: Arc<dyn Fetch>) {
        let task = r.task;
        match run_call(&self.ctx, r.call, node.store.clone(), fetch) {
            Ok(dtask) => {
                self.running.fetch_add(1, Ordering::Relaxed);
                let link = link.clone();
                let me = self.clone();
                node.io.spawn(async move {
                    let done = match dtask.await {
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
                    me.running.fetch_sub(1, Ordering::Relaxed);
                    link.send_done(done);
                });
            }
            Err(e) => {
                link.send_done(Done {
                    task,
                    result: Err((FailKind::Runtime, e.to_string())),
                    run_ns: 0,
                });
            }
        }
    }
}

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
            Msg::Free(ids) => node.store.free_many(&ids),
            Msg::Cancel(_) => {}
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
