//! What every process of a cluster does: hold values for others, serve and make fetches,
//! keep connections to its peers. The head and the workers add their own roles on top.

use super::io::{open_link, Handler, Io, Link};
use super::msg::{Msg, PeerInfo};
use crate::error::BoxError;
use crate::hash::IdMap;
use crate::remote::data::{DataLink, RemoteData};
use crate::remote::store::Store;
use crate::remote::wire::Location;
use bytes::Bytes;
use dagger_net::{Hello, Listener, NetConfig, NetError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The part of a process's behaviour that depends on its role (head or worker).
pub(crate) trait Role: Send + Sync + 'static {
    fn on_message(self: Arc<Self>, node: &Arc<Node>, link: &Link, msg: Msg);
    fn on_closed(self: Arc<Self>, node: &Arc<Node>, peer: u32, err: Option<NetError>);
    /// Makes a lost value again.
    fn recover(self: Arc<Self>, node: &Arc<Node>, data: Arc<RemoteData>) {
        let _ = node;
        data.set_failed("only the head can recompute lost values".into());
    }
}

/// The answer to a request to another process.
pub(crate) enum Reply {
    /// A value's encoded bytes (answering `Fetch`).
    Data(Bytes),
    /// Where a value is kept now (answering `Put` and `Pull`).
    Stored(Location),
    /// The encoded result of a call run in place and its run time (answering `RunInPlace`).
    Ran(Bytes, u64),
    /// How a call run in place failed.
    RanError(super::msg::FailKind, String),
    /// Where the result of a call run in place is kept, its encoding when small, its run
    /// time (answering `RunInPlace` with `keep`).
    RanKept(Location, Option<Bytes>, u64),
}

/// Who waits for the answer to a request: a blocked thread, or a task on the I/O thread.
enum Waiter {
    Thread(SyncSender<Result<Reply, String>>),
    Task(tokio::sync::oneshot::Sender<Result<Reply, String>>),
}

impl Waiter {
    fn send(self, reply: Result<Reply, String>) {
        match self {
            Waiter::Thread(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Task(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

type Pending = IdMap<u64, (Link, Waiter)>;

/// Most bytes (in MiB) of inputs a worker fetches ahead of its compute threads (on the I/O
/// thread, before the calls take a compute thread): see [`PrefetchBudget`].
const PREFETCH_BUDGET_MIB: u32 = 256;
/// Least share of the budget one call takes: at most 16 calls are fetched ahead.
const PREFETCH_MIN_MIB: u32 = 16;
/// The size assumed before anything was fetched: at first at most 4 calls are fetched
/// ahead, as many as fit the budget if their inputs are this large.
const PREFETCH_FIRST_MIB: u32 = 64;

/// Bounds the inputs a worker fetches ahead of its compute threads, in bytes rather than in
/// calls: a call reserves its expected share of [`PREFETCH_BUDGET_MIB`] before fetching and
/// holds it until it starts reading its inputs. The sizes are not known before they arrive,
/// so the share is an estimate: the size of the last call's inputs if larger than the
/// estimate so far, otherwise half the estimate (quick to grow, slow to shrink), at least
/// [`PREFETCH_MIN_MIB`]. Small inputs are thus fetched up to 16 calls ahead (enough to keep
/// a connection busy while calls start and report), large ones a few calls ahead (64 MiB
/// inputs: 4, as many bytes as 16 of 16 MiB).
pub(crate) struct PrefetchBudget {
    units: Arc<tokio::sync::Semaphore>,
    /// Expected size, in MiB, of the next call's inputs.
    estimate: std::sync::atomic::AtomicU32,
}

impl PrefetchBudget {
    fn new() -> PrefetchBudget {
        PrefetchBudget {
            units: Arc::new(tokio::sync::Semaphore::new(PREFETCH_BUDGET_MIB as usize)),
            estimate: std::sync::atomic::AtomicU32::new(PREFETCH_FIRST_MIB),
        }
    }

    /// Waits for a call's share of the budget (`None` once it is closed).
    pub(crate) async fn reserve(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let share = self
            .estimate
            .load(Ordering::Relaxed)
            .clamp(PREFETCH_MIN_MIB, PREFETCH_BUDGET_MIB);
        self.units.clone().acquire_many_owned(share).await.ok()
    }

    /// A call's inputs, `bytes` in all, arrived.
    pub(crate) fn learn(&self, bytes: u64) {
        let mib = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let _ = self
            .estimate
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some(mib.max(e / 2))
            });
    }
}

/// Most fetches of values from other processes that one process has in flight at once:
/// more wait their turn, so that a burst of reads (a task per chunk, all ready together)
/// does not have every value encoded, sent and buffered at the same time.
const MAX_FETCHES: usize = 4;

/// A counting semaphore for blocking threads.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    /// Waits for a slot; it is given back when the guard drops.
    fn take(&self) -> SlotGuard<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

pub(crate) struct Node {
    pub(crate) id: u32,
    pub(crate) io: Io,
    pub(crate) config: NetConfig,
    pub(crate) hello: Hello,
    pub(crate) store: Arc<Store>,
    /// Where other processes reach this one.
    pub(crate) addr: OnceLock<String>,
    links: Mutex<IdMap<u32, Link>>,
    peers: Mutex<IdMap<u32, PeerInfo>>,
    pending: Mutex<Pending>,
    next_req: AtomicU64,
    role: OnceLock<Arc<dyn Role>>,
    /// Fetches from other processes in flight (at most [`MAX_FETCHES`]).
    fetches: Slots,
    /// Prefetches in flight or waiting for their call.
    pub(crate) prefetch: PrefetchBudget,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub(crate) fn new(id: u32, io: Io, config: NetConfig, hello: Hello) -> Arc<Node> {
        // Receive buffers left idle after a burst of transfers go back to the allocator
        // within about twice the pool's idle time, even if nothing arrives any more.
        let pool = Arc::downgrade(&config.recv_pool);
        io.spawn(async move {
            let Some(every) = pool.upgrade().map(|p| p.idle()) else {
                return;
            };
            let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(p) if p.idle_bytes() > 0 => p.release_idle(),
                    Some(_) => {}
                    None => return,
                }
            }
        });
        Arc::new(Node {
            id,
            io,
            config,
            hello,
            store: Arc::new(Store::new(id)),
            addr: OnceLock::new(),
            links: Mutex::new(IdMap::default()),
            peers: Mutex::new(IdMap::default()),
            pending: Mutex::new(IdMap::default()),
            next_req: AtomicU64::new(1),
            role: OnceLock::new(),
            fetches: Slots::new(MAX_FETCHES),
            prefetch: PrefetchBudget::new(),
        })
    }

    pub(crate) fn set_role(&self, role: Arc<dyn Role>) {
        let _ = self.role.set(role);
    }

    /// Listens for other processes on `bind`; returns the address they should use.
    pub(crate) fn listen(self: &Arc<Self>, bind: String) -> Result<String, NetError> {
        let node = self.clone();
        let (listener, addr) = self
            .io
            .run(async move {
                let listener = Listener::bind(bind, &node.config, node.hello).await?;
                let addr = listener.local_addr().to_string();
                Ok::<_, NetError>((listener, addr))
            })
            .unwrap_or(Err(NetError::Closed))?;
        let _ = self.addr.set(addr.clone());
        let node = self.clone();
        self.io
            .spawn(async move { node.accept_loop(listener).await });
        Ok(addr)
    }

    async fn accept_loop(self: Arc<Self>, mut listener: Listener) {
        loop {
            match listener.accept().await {
                Ok((conn, hello)) => {
                    let Some(peer) = hello.peer_id.and_then(|p| u32::try_from(p).ok()) else {
                        log::warn!(
                            "refusing a connection from {} that gives no process id",
                            hello.addr
                        );
                        continue;
                    };
                    let link = open_link(conn, peer, self.clone());
                    self.add_link(link);
                }
                Err(NetError::Closed) => return,
                Err(e) => log::warn!("an incoming connection failed: {e}"),
            }
        }
    }

    /// Remembers a connection to `link.peer`. When two processes connect to each other at
    /// the same time both connections stay open (each serves the requests sent on it); the
    /// one already remembered is kept for new requests.
    pub(crate) fn add_link(self: &Arc<Self>, link: Link) {
        let mut links = lock(&self.links);
        match links.get(&link.peer) {
            Some(old) if !old.is_closed() => {}
            _ => {
                links.insert(link.peer, link);
            }
        }
    }

    pub(crate) fn link(&self, peer: u32) -> Option<Link> {
        lock(&self.links)
            .get(&peer)
            .filter(|l| !l.is_closed())
            .cloned()
    }

    pub(crate) fn remove_link(&self, peer: u32) -> Option<Link> {
        lock(&self.links).remove(&peer)
    }

    pub(crate) fn set_peer(&self, info: PeerInfo) {
        lock(&self.peers).insert(info.id, info);
    }

    pub(crate) fn forget_peer(&self, id: u32) {
        lock(&self.peers).remove(&id);
        if let Some(l) = self.remove_link(id) {
            l.close();
        }
        self.fail_pending(|l| l.peer == id, &format!("process {id} left the cluster"));
    }

    /// The link to `peer`, connecting first if needed (blocks; not for the I/O thread).
    pub(crate) fn link_to(self: &Arc<Self>, peer: u32) -> Result<Link, String> {
        if let Some(l) = self.link(peer) {
            return Ok(l);
        }
        let info = lock(&self.peers)
            .get(&peer)
            .cloned()
            .ok_or_else(|| format!("process {peer} is not (or no longer) part of the cluster"))?;
        let node = self.clone();
        let config = match &info.fingerprint {
            Some(fp) => self.config.for_peer(fp).map_err(|e| e.to_string())?,
            None => self.config.clone(),
        };
        let hello = self.hello;
        let addr = info.addr.clone();
        self.io
            .run(async move {
                let (conn, _) = dagger_net::connect(addr.as_str(), &config, hello)
                    .await
                    .map_err(|e| format!("cannot reach process {peer} at {addr}: {e}"))?;
                let link = open_link(conn, peer, node.clone());
                node.add_link(link.clone());
                Ok(link)
            })
            .unwrap_or_else(|| Err("the cluster shut down".into()))
    }

    /// Sends a request to `peer` (connecting first if needed) and waits for its answer
    /// (blocks; not for the I/O thread). `send` sends the request with the id it is given.
    fn request(
        self: &Arc<Self>,
        peer: u32,
        send: impl FnOnce(&Link, u64) -> bool,
    ) -> Result<Reply, String> {
        let link = self.link_to(peer)?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        lock(&self.pending).insert(req, (link.clone(), Waiter::Thread(tx)));
        if !send(&link, req) {
            lock(&self.pending).remove(&req);
            return Err(format!("the connection to process {peer} is closed"));
        }
        rx.recv()
            .unwrap_or_else(|_| Err("the cluster shut down".to_string()))
    }

    /// Fetches the encoded value at `loc` (blocks).
    pub(crate) fn fetch_bytes(self: &Arc<Self>, loc: Location) -> Result<Bytes, String> {
        if loc.worker == self.id {
            return self
                .store
                .encode(loc.id)
                .map(|e| e.to_bytes())
                .map_err(|e| e.to_string());
        }
        let _slot = self.fetches.take();
        match self.request(loc.worker, |l, req| l.send(Msg::Fetch { req, id: loc.id }))? {
            Reply::Data(bytes) => Ok(bytes),
            _ => Err(format!(
                "process {} answered a fetch with something else",
                loc.worker
            )),
        }
    }

    /// Fetches the encoded value at `loc` from another process without blocking (for tasks
    /// on the I/O thread). Only over a connection that is already open: an error otherwise
    /// (the caller then fetches the blocking way, which connects).
    pub(crate) async fn fetch_async(self: &Arc<Self>, loc: Location) -> Result<Bytes, String> {
        let link = self
            .link(loc.worker)
            .ok_or_else(|| format!("not connected to process {}", loc.worker))?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.pending).insert(req, (link.clone(), Waiter::Task(tx)));
        if !link.send(Msg::Fetch { req, id: loc.id }) {
            lock(&self.pending).remove(&req);
            return Err(format!(
                "the connection to process {} is closed",
                loc.worker
            ));
        }
        match rx.await {
            Ok(Ok(Reply::Data(bytes))) => Ok(bytes),
            Ok(Ok(_)) => Err(format!(
                "process {} answered a fetch with something else",
                loc.worker
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the cluster shut down".to_string()),
        }
    }

    /// Has process `peer` keep `bytes` (an encoded value); returns where it is (blocks).
    pub(crate) fn put_bytes(self: &Arc<Self>, peer: u32, bytes: Bytes) -> Result<Location, String> {
        if peer == self.id {
            return Ok(self.store.insert_bytes(bytes));
        }
        let reply = self.request(peer, |l, req| l.send_with_payload(Msg::Put { req }, bytes))?;
        stored(peer, reply)
    }

    /// Has process `peer` fetch the value at `from` and keep a copy; returns where the copy
    /// is (blocks). The bytes go from the holder to `peer` directly.
    pub(crate) fn pull(self: &Arc<Self>, peer: u32, from: Location) -> Result<Location, String> {
        if peer == self.id {
            let bytes = self.fetch_bytes(from)?;
            return Ok(self.store.insert_bytes(bytes));
        }
        let reply = self.request(peer, |l, req| l.send(Msg::Pull { req, from }))?;
        stored(peer, reply)
    }

    /// Has worker `peer` run a call of a data-dependency region on the values it holds,
    /// changing those marked in `writes` in place (blocks). The outer error says the worker
    /// could not be asked or did not answer (it left); the inner one how the call failed.
    pub(crate) fn run_in_place(
        self: &Arc<Self>,
        peer: u32,
        call: crate::remote::wire::WireCall,
        writes: Vec<bool>,
        keep: bool,
    ) -> crate::remote::RanInPlace {
        let send = |l: &Link, req| {
            l.send(Msg::RunInPlace {
                req,
                call,
                writes,
                keep,
            })
        };
        match self.request(peer, send)? {
            Reply::Ran(bytes, ns) => Ok(Ok((crate::remote::Ran::Bytes(bytes), ns))),
            Reply::RanKept(loc, small, ns) => Ok(Ok((crate::remote::Ran::Kept(loc, small), ns))),
            Reply::RanError(kind, message) => Ok(Err((kind.kind(), message))),
            _ => Err(format!(
                "process {peer} answered a call with something else"
            )),
        }
    }

    fn answer(&self, req: u64, reply: Result<Reply, String>) {
        if let Some((_, waiter)) = lock(&self.pending).remove(&req) {
            waiter.send(reply);
        }
    }

    fn fail_pending(&self, on: impl Fn(&Link) -> bool, why: &str) {
        let failed: Vec<Waiter> = {
            let mut pending = lock(&self.pending);
            let reqs: Vec<u64> = pending
                .iter()
                .filter(|(_, (l, _))| on(l))
                .map(|(r, _)| *r)
                .collect();
            reqs.into_iter()
                .filter_map(|r| pending.remove(&r).map(|(_, tx)| tx))
                .collect()
        };
        for waiter in failed {
            waiter.send(Err(why.to_string()));
        }
    }

    fn serve_fetch(self: &Arc<Self>, link: &Link, req: u64, id: u64) {
        // Encoded already (kept from an earlier fetch, or arrived as bytes): sent at once,
        // without copying.
        if let Some(encoding) = self.store.encoded(id) {
            link.send_encoding(
                Msg::Data {
                    req,
                    len: encoding.len() as u64,
                },
                encoding,
            );
            return;
        }
        let store = self.store.clone();
        let link = link.clone();
        // Encoding may take long (large values): off the I/O thread.
        self.io.spawn(async move {
            let encoded = tokio::task::spawn_blocking(move || store.encode(id)).await;
            match encoded {
                Ok(Ok(encoding)) => {
                    link.send_encoding(
                        Msg::Data {
                            req,
                            len: encoding.len() as u64,
                        },
                        encoding,
                    );
                }
                Ok(Err(e)) => {
                    link.send(Msg::DataError {
                        req,
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    link.send(Msg::DataError {
                        req,
                        message: format!("encoding failed: {e}"),
                    });
                }
            }
        });
    }
}

impl Node {
    fn serve_pull(self: &Arc<Self>, link: &Link, req: u64, from: Location) {
        let node = self.clone();
        let link = link.clone();
        self.io.spawn(async move {
            let moved = tokio::task::spawn_blocking(move || node.pull(node.id, from)).await;
            let reply = match moved {
                Ok(Ok(loc)) => Msg::Stored { req, loc },
                Ok(Err(message)) => Msg::DataError { req, message },
                Err(e) => Msg::DataError {
                    req,
                    message: format!("copying the value failed: {e}"),
                },
            };
            link.send(reply);
        });
    }
}

fn stored(peer: u32, reply: Reply) -> Result<Location, String> {
    match reply {
        Reply::Stored(loc) => Ok(loc),
        _ => Err(format!(
            "process {peer} answered a request to keep a value with something else"
        )),
    }
}

impl Handler for Node {
    fn on_message(self: Arc<Self>, link: &Link, msg: Msg, payload: Option<Bytes>) {
        match msg {
            Msg::Fetch { req, id } => self.serve_fetch(link, req, id),
            Msg::Data { req, .. } => self.answer(req, Ok(Reply::Data(payload.unwrap_or_default()))),
            Msg::DataError { req, message } => self.answer(req, Err(message)),
            Msg::Stored { req, loc } => self.answer(req, Ok(Reply::Stored(loc))),
            Msg::Ran { req, run_ns } => {
                self.answer(req, Ok(Reply::Ran(payload.unwrap_or_default(), run_ns)))
            }
            Msg::RanError { req, kind, message } => {
                self.answer(req, Ok(Reply::RanError(kind, message)))
            }
            Msg::RanKept {
                req,
                run_ns,
                loc,
                small,
            } => {
                let small = payload.filter(|_| small);
                self.answer(req, Ok(Reply::RanKept(loc, small, run_ns)))
            }
            Msg::Put { req } => {
                let loc = self.store.insert_bytes(payload.unwrap_or_default());
                link.send(Msg::Stored { req, loc });
            }
            Msg::Pull { req, from } => self.serve_pull(link, req, from),
            Msg::Ping(n) => {
                link.send(Msg::Pong(n));
            }
            other => {
                if let Some(role) = self.role.get() {
                    role.clone().on_message(&self, link, other);
                }
            }
        }
    }

    fn on_closed(self: Arc<Self>, link: &Link, err: Option<NetError>) {
        let peer = link.peer;
        let last = {
            let mut links = lock(&self.links);
            match links.get(&peer) {
                Some(l) if l.same(link) || l.is_closed() => {
                    links.remove(&peer);
                    true
                }
                Some(_) => false,
                None => true,
            }
        };
        self.fail_pending(
            |l| l.same(link),
            &format!(
                "the connection to process {peer} closed{}",
                err.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        );
        if last {
            if let Some(role) = self.role.get() {
                role.clone().on_closed(&self, peer, err);
            }
        }
    }
}

/// The data link of a process: fetches through its connections, frees by telling the holder.
pub(crate) struct NodeLink(pub(crate) Arc<Node>);

impl DataLink for NodeLink {
    fn fetch(&self, loc: Location) -> Result<Bytes, BoxError> {
        self.0.fetch_bytes(loc).map_err(Into::into)
    }

    fn free(&self, loc: Location) {
        if loc.worker == self.0.id {
            self.0.store.free(loc.id);
        } else if let Some(link) = self.0.link(loc.worker) {
            link.send_free(loc.id);
        }
    }

    fn recover(&self, data: Arc<RemoteData>) {
        match self.0.role.get() {
            Some(role) => role.clone().recover(&self.0, data),
            None => data.set_failed("this process cannot recompute values".into()),
        }
    }
}

/// The data movements of data-dependency regions, through the head's connections.
pub(crate) struct NodeMover(pub(crate) std::sync::Weak<Node>);

impl NodeMover {
    fn node(&self) -> Result<Arc<Node>, String> {
        self.0
            .upgrade()
            .ok_or_else(|| "the cluster is shut down".to_string())
    }
}

impl crate::remote::Mover for NodeMover {
    fn put(&self, worker: u32, bytes: Bytes) -> Result<Location, String> {
        self.node()?.put_bytes(worker, bytes)
    }

    fn pull(&self, worker: u32, from: Location) -> Result<Location, String> {
        self.node()?.pull(worker, from)
    }

    fn fetch(&self, loc: Location) -> Result<Bytes, String> {
        self.node()?.fetch_bytes(loc)
    }

    fn free(&self, loc: Location) {
        if let Ok(node) = self.node() {
            NodeLink(node).free(loc);
        }
    }

    fn run_in_place(
        &self,
        worker: u32,
        call: crate::remote::wire::WireCall,
        writes: Vec<bool>,
        keep: bool,
    ) -> crate::remote::RanInPlace {
        self.node()?.run_in_place(worker, call, writes, keep)
    }

    fn link(&self) -> Option<Arc<dyn DataLink>> {
        let link: Arc<dyn DataLink> = Arc::new(NodeLink(self.node().ok()?));
        Some(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(b: &PrefetchBudget) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let before = b.units.available_permits();
        let permit = rt.block_on(b.reserve()).unwrap();
        let taken = before - b.units.available_permits();
        drop(permit);
        assert_eq!(b.units.available_permits(), before);
        taken
    }

    #[test]
    fn prefetch_shares_follow_the_sizes_that_arrive() {
        let b = PrefetchBudget::new();
        // Nothing seen yet: 64 MiB per call, 4 calls ahead.
        assert_eq!(share(&b), 64);
        // Small inputs: the share halves per call down to the floor (16 calls ahead).
        b.learn(1 << 20);
        assert_eq!(share(&b), 32);
        b.learn(1 << 20);
        assert_eq!(share(&b), 16);
        b.learn(10);
        assert_eq!(share(&b), 16);
        // A large input raises it at once; beyond the budget, one call takes all of it.
        b.learn(100 << 20);
        assert_eq!(share(&b), 100);
        b.learn(10 << 30);
        assert_eq!(share(&b), PREFETCH_BUDGET_MIB as usize);
        // Shares are held until dropped: a second call waits for the first.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = b.reserve().await.unwrap();
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(20), b.reserve()).await;
            assert!(waiting.is_err(), "the budget is spent");
            drop(first);
            assert!(b.reserve().await.is_some());
        });
    }
}
