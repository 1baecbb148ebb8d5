//! A worker process: runs the tasks its head sends, holds their results for the cluster, and
//! exits when the head says so or goes away.

use super::io::Link;
use super::msg::{Done, FailKind, Msg, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::context::Context;
use crate::remote::store::{run_claimed, run_in_place, Claim, Fetch, InputLost};
use dagger_net::NetError;
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

    fn run(self: &Arc<Self>, node: &Arc<Node>, link: &Link, runs: Vec<super::msg::Run>) {
        for r in runs {
            let fetch: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
            let task = r.task;
            let claim = Arc::new(Claim::new());
            lock(&self.claims).insert(task, claim.clone());
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
                    let link = link.clone();
                    let me = self.clone();
                    node.io.spawn(async move {
                        let result = dtask.await;
                        me.running.fetch_sub(1, Ordering::Relaxed);
                        if claim.is_revoked() {
                            return; // the head runs it elsewhere
                        }
                        lock(&me.claims).remove(&task);
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
                        link.send_done(done);
                    });
                }
                Err(e) => {
                    lock(&self.claims).remove(&task);
                    link.send_done(Done {
                        task,
                        result: Err((FailKind::Runtime, e.to_string())),
                        run_ns: 0,
                    });
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
