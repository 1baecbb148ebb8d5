//! A worker process: runs the tasks its head sends, holds their results for the cluster, and
//! exits when the head says so or goes away.

use super::io::Link;
use super::msg::{Done, FailKind, Msg, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::context::Context;
use crate::remote::store::{run_call, run_in_place, Fetch, InputLost};
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

    fn run(self: &Arc<Self>, node: &Arc<Node>, link: &Link, runs: Vec<super::msg::Run>) {
        for r in runs {
            let fetch: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
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
                        link.send(Msg::Done(vec![done]));
                    });
                }
                Err(e) => {
                    link.send(Msg::Done(vec![Done {
                        task,
                        result: Err((FailKind::Runtime, e.to_string())),
                        run_ns: 0,
                    }]));
                }
            }
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
            Msg::Free(ids) => {
                for id in ids {
                    node.store.free(id);
                }
            }
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
