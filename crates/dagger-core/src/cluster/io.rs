//! The I/O thread of a process (a current-thread tokio runtime) and connections to peers.

use super::msg::{run_batch_header, run_batch_start, run_body, Done, Msg};
use crate::few::Few;
use crate::shared_bytes::Encoding;
use bytes::Bytes;
use dagger_net::{Connection, DirectWriter, NetError, Receiver, Sender};
use std::future::Future;
use std::sync::Arc;

/// The runtime thread that owns every socket of this process.
pub(crate) struct Io {
    handle: tokio::runtime::Handle,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Io {
    pub(crate) fn start(name: &str) -> std::io::Result<Io> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                    // Let the writers send what is queued (a shutdown, a close) first.
                    for _ in 0..64 {
                        tokio::task::yield_now().await;
                    }
                });
                rt.shutdown_background();
            })?;
        Ok(Io {
            handle,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            thread: Some(thread),
        })
    }

    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// Runs `fut` on the I/O thread and waits for its result (from a non-I/O thread); `None`
    /// once the I/O thread stopped.
    pub(crate) fn run<F, R>(&self, fut: F) -> Option<R>
    where
        F: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// Stops the I/O thread: every connection closes and every task on it is dropped.
    pub(crate) fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// What a link carries. Messages are boxed: a queue holds mostly calls and frees, and
/// each of its items is as large as the largest of them.
pub(crate) enum Out {
    Msg(Box<Msg>),
    /// A message followed by a raw payload (sent without copying).
    WithPayload(Box<Msg>, Bytes),
    /// A message and its payload given as pieces (an encoded value: see [`Encoding`]).
    WithEncoding(Box<(Msg, Encoding)>),
    /// One task to run, encoded by [`encode_run`](super::msg::encode_run); sent in one
    /// `Msg::Run` with the tasks queued next to it (alone, without a copy, if large).
    Run(Vec<u8>),
    /// A finished task; sent in one `Msg::Done` with those queued next to it.
    Done(Done),
    /// A freed value; sent in one `Msg::Free` with those queued next to it.
    Free(u64),
    /// The framed rest of a message written in part by [`Link::send_report`].
    Framed(Bytes),
    /// Reports are held ([`Link::report_done`]): send them at this instant at the latest.
    ReportsDue(std::time::Instant),
    Close,
}

/// The sending side of a connection to a peer: messages queue here and a writer task on the
/// I/O thread sends everything queued with one flush. On a plain connection, a report that
/// someone waits for can also go out at once from the calling thread
/// ([`send_report`](Link::send_report)) while nothing is queued.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) peer: u32,
    senders: Arc<Senders>,
}

/// Held by every clone of a link: when the last one is dropped, the writer task sends what
/// is queued and closes the connection.
struct Senders(Arc<Queue>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.push(self.0.lock(), Out::Close);
    }
}

/// What a link's senders share with its writer task.
struct Queue {
    state: std::sync::Mutex<QueueState>,
    /// Wakes the writer task when an item arrives in an empty queue.
    arrived: tokio::sync::Notify,
}

struct QueueState {
    /// Items for the writer task, in order. The writer task takes them all at once.
    items: Vec<Out>,
    /// False once the writer task ended: nothing queued after that is sent.
    open: bool,
    /// Writes whole messages from other threads (plain connections only); `None` once the
    /// writer task ended.
    writer: Option<DirectWriter>,
    /// Items queued and not yet written: a message may be written from another thread only
    /// when there are none (it would overtake them otherwise).
    queued: usize,
    /// Reports of ended tasks waiting for their turn ([`Link::report_done`]).
    held: Vec<Done>,
    /// When reports last left (were written or queued).
    reported: Option<std::time::Instant>,
    /// The writer task was told when to send `held` ([`Out::ReportsDue`]).
    held_due: bool,
    /// Calls queued with [`Link::send_run`] so far: the peer receives them in this order.
    runs: u64,
    /// How many of `items` are calls ([`Out::Run`]), and their encoded size in all (or
    /// `usize::MAX` once one of them is to be sent alone, without a copy).
    runs_in_items: usize,
    run_bytes_in_items: usize,
    /// How many of `items` are messages calls may overtake: frees ([`Out::Free`]; a call
    /// never names a value being freed) and heartbeats.
    overtaken_in_items: usize,
    /// How many of the items counted in `queued` that the writer task took are frees it
    /// holds back to send with later messages, everything else it took being written.
    frees_held: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `out` under the lock `state`; false once the writer task ended.
    fn push(&self, mut state: std::sync::MutexGuard<'_, QueueState>, out: Out) -> bool {
        if !state.open {
            return false;
        }
        let first = state.append(out);
        drop(state);
        self.arrived_if(first);
        true
    }

    /// Wakes the writer task if an item arrived in an empty queue (later items find it
    /// woken already: it takes every item at once).
    fn arrived_if(&self, first: bool) {
        if first {
            self.arrived.notify_one();
        }
    }
}

impl QueueState {
    /// Appends `out` (the queue is open); true if it is the first item queued.
    fn append(&mut self, out: Out) -> bool {
        match &out {
            Out::Run(r) => {
                self.runs_in_items += 1;
                self.run_bytes_in_items = match r.len() {
                    n if n > MAX_COPIED_RUN => usize::MAX,
                    n => self.run_bytes_in_items.saturating_add(n),
                };
            }
            Out::Free(_) => self.overtaken_in_items += 1,
            Out::Msg(m) if matches!(**m, Msg::Ping(_)) => self.overtaken_in_items += 1,
            _ => {}
        }
        self.items.push(out);
        self.queued += 1;
        self.items.len() == 1
    }

    /// `items` were taken (written, handed to the writer task, or dropped): no call is
    /// counted as queued any more.
    fn items_taken(&mut self) {
        self.runs_in_items = 0;
        self.run_bytes_in_items = 0;
        self.overtaken_in_items = 0;
    }

    /// Whether the queue holds only calls and messages they may overtake (frees, heartbeats),
    /// enough calls to leave before the writer task takes them (see [`Link::send_run`]), and
    /// nothing the writer task took is still unwritten but the frees it holds back.
    fn runs_leave_early(&self) -> bool {
        (self.runs_in_items >= EARLY_RUNS || self.run_bytes_in_items >= EARLY_RUN_BYTES)
            && self.run_bytes_in_items != usize::MAX
            && self.runs_in_items + self.overtaken_in_items == self.items.len()
            && self.queued - self.frees_held == self.items.len()
    }
}

impl Link {
    /// Queues `out` for the writer task.
    fn queue(&self, out: Out) -> bool {
        let queue = &self.senders.0;
        queue.push(queue.lock(), out)
    }

    pub(crate) fn send(&self, msg: Msg) -> bool {
        self.queue(Out::Msg(Box::new(msg)))
    }

    /// Sends a report someone waits for (`Made`, to another worker): with `at_once`, from
    /// this thread if the writer task has nothing queued (without waiting for the I/O thread
    /// to get a CPU); otherwise queued.
    pub(crate) fn send_report(&self, msg: Msg, at_once: bool) -> bool {
        let state = self.senders.0.lock();
        if at_once {
            self.write_or_queue(state, msg)
        } else {
            self.queue_locked(state, msg)
        }
    }

    /// Reports tasks that ended (to the head). Reports leave at once when none left in the
    /// last [`REPORT_INTERVAL`]; otherwise they are held until that interval has passed, and
    /// then leave together (so a busy worker sends the head one message per interval rather
    /// than one per task), unless `idle` (the worker has nothing else in hand: nothing
    /// would come to send them with) or [`MAX_HELD`] are held. The reports of a link keep
    /// their order.
    pub(crate) fn report_done(&self, done: Few<Done>, idle: bool) -> bool {
        let queue = &self.senders.0;
        let mut state = queue.lock();
        if !state.open {
            return false;
        }
        match done {
            // Kept as it is: no copy.
            Few::Many(done) if state.held.is_empty() => state.held = done,
            done => state.held.extend(done),
        }
        let now = std::time::Instant::now();
        let next_turn = state.reported.map(|t| t + REPORT_INTERVAL);
        if idle || state.held.len() >= MAX_HELD || next_turn.is_none_or(|t| now >= t) {
            state.reported = Some(now);
            let held = std::mem::take(&mut state.held);
            return self.write_or_queue(state, Msg::Done(held));
        }
        if state.held_due {
            return true;
        }
        state.held_due = true;
        let due = next_turn.unwrap_or(now);
        queue.push(state, Out::ReportsDue(due))
    }

    /// Writes `msg` from this thread if nothing is queued (see
    /// [`send_report`](Self::send_report)), else queues it.
    fn write_or_queue(&self, state: std::sync::MutexGuard<'_, QueueState>, msg: Msg) -> bool {
        let queue = &self.senders.0;
        let Some(writer) = state.writer.as_ref().filter(|_| state.queued == 0) else {
            return self.queue_locked(state, msg);
        };
        let written = crate::remote::functions::with_encoded(&msg, |m| writer.write(m))
            .expect("messages always encode");
        let out = match written {
            Ok(rest) if rest.is_empty() => return true,
            Ok(rest) => Out::Framed(rest),
            // Nothing was written: the writer task meets the error and closes the link.
            Err(_) => Out::Msg(Box::new(msg)),
        };
        // Still under the lock: the rest goes before anything queued after it.
        queue.push(state, out)
    }

    /// Queues a report under the lock `state`, its `Done` items batched with those queued
    /// next to them.
    fn queue_locked(&self, mut state: std::sync::MutexGuard<'_, QueueState>, msg: Msg) -> bool {
        let queue = &self.senders.0;
        match msg {
            Msg::Done(done) => {
                if !state.open {
                    return false;
                }
                // The writer task took everything queued before: wake it (once) unless
                // nothing is queued now either.
                let first = state.items.is_empty() && !done.is_empty();
                state.queued += done.len();
                state.items.extend(done.into_iter().map(Out::Done));
                drop(state);
                queue.arrived_if(first);
                true
            }
            msg => queue.push(state, Out::Msg(Box::new(msg))),
        }
    }

    pub(crate) fn send_with_payload(&self, msg: Msg, payload: Bytes) -> bool {
        self.queue(Out::WithPayload(Box::new(msg), payload))
    }

    /// Sends `msg` and then `payload`, an encoded value in pieces, as one message (the
    /// pieces are not joined: a value's large byte buffers are written as they are).
    pub(crate) fn send_encoding(&self, msg: Msg, payload: Encoding) -> bool {
        self.queue(Out::WithEncoding(Box::new((msg, payload))))
    }

    /// Sends one task to run (encoded by [`encode_run`](super::msg::encode_run)), batched
    /// with the others queued at the same time. Returns its place among the calls sent on
    /// this link (1 for the first; the peer receives them in this order), or `None` if the
    /// link is closed.
    ///
    /// On the I/O thread, where the writer task cannot run until the caller returns, a long
    /// run of calls (a whole graph sent ahead at once) leaves in batches of [`EARLY_RUNS`]
    /// (or [`EARLY_RUN_BYTES`]) as it is queued: the peer starts on the first ones while
    /// the rest are encoded.
    pub(crate) fn send_run(&self, encoded: Vec<u8>) -> Option<u64> {
        let queue = &self.senders.0;
        let mut state = queue.lock();
        if !state.open {
            return None;
        }
        state.runs += 1;
        let seq = state.runs;
        let first = state.append(Out::Run(encoded));
        if state.runs_leave_early() && tokio::runtime::Handle::try_current().is_ok() {
            self.write_runs(state);
        } else {
            drop(state);
        }
        queue.arrived_if(first);
        Some(seq)
    }

    /// Writes the calls queued (with frees: see [`send_run`](Self::send_run)) as one `Run`
    /// message from this thread; the frees stay queued for the writer task.
    fn write_runs(&self, mut state: std::sync::MutexGuard<'_, QueueState>) {
        let queue = &self.senders.0;
        let Some(writer) = state.writer.as_ref() else {
            return;
        };
        let runs = state.runs_in_items;
        let mut batch = run_batch_start(runs, state.run_bytes_in_items);
        for out in &state.items {
            if let Out::Run(r) = out {
                batch.extend_from_slice(run_body(r));
            }
        }
        let rest = match writer.write(&batch) {
            Ok(rest) => rest,
            // Nothing was written: the writer task sends them (and meets the error).
            Err(_) => return,
        };
        state.items.retain(|out| !matches!(out, Out::Run(_)));
        state.queued -= runs;
        state.runs_in_items = 0;
        state.run_bytes_in_items = 0;
        if !rest.is_empty() {
            // The rest of the calls goes before the frees.
            state.items.insert(0, Out::Framed(rest));
            state.queued += 1;
        }
        let first = !state.items.is_empty();
        drop(state);
        queue.arrived_if(first);
    }

    /// Reports a finished task, batched with the others queued at the same time (tests
    /// of the writer task; the runtime reports with [`report_done`](Self::report_done)).
    #[cfg(test)]
    fn send_done(&self, done: Done) -> bool {
        self.queue(Out::Done(done))
    }

    /// Frees a value held by the peer, batched with the others queued at the same time.
    pub(crate) fn send_free(&self, id: u64) -> bool {
        self.queue(Out::Free(id))
    }

    pub(crate) fn close(&self) {
        self.queue(Out::Close);
    }

    pub(crate) fn is_closed(&self) -> bool {
        !self.senders.0.lock().open
    }

    /// Whether both are the same connection.
    pub(crate) fn same(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.senders, &other.senders)
    }
}

/// Handles what arrives on links.
pub(crate) trait Handler: Send + Sync + 'static {
    /// A message (and its payload, for `Data` and `Put`) from `link.peer`.
    fn on_message(self: Arc<Self>, link: &Link, msg: Msg, payload: Option<Bytes>);
    /// The connection `link` ended (`err`: why, if not a clean close).
    fn on_closed(self: Arc<Self>, link: &Link, err: Option<NetError>);
}

/// Starts the reader and writer tasks of a connection on the current runtime.
pub(crate) fn open_link<H: Handler>(conn: Connection, peer: u32, handler: Arc<H>) -> Link {
    let (sender, receiver) = conn.split();
    let queue = Arc::new(Queue {
        state: std::sync::Mutex::new(QueueState {
            items: Vec::new(),
            open: true,
            writer: sender.direct_writer(),
            queued: 0,
            held: Vec::new(),
            reported: None,
            held_due: false,
            runs: 0,
            runs_in_items: 0,
            run_bytes_in_items: 0,
            overtaken_in_items: 0,
            frees_held: 0,
        }),
        arrived: tokio::sync::Notify::new(),
    });
    let link = Link {
        peer,
        senders: Arc::new(Senders(queue.clone())),
    };
    tokio::spawn(write_loop(sender, queue));
    tokio::spawn(read_loop(receiver, link.clone(), handler));
    link
}

/// Most items in one batch message (a batch also ends at [`MAX_RUN_BATCH_BYTES`] of runs).
const MAX_BATCH: usize = 4096;
const MAX_RUN_BATCH_BYTES: usize = 1 << 20;
/// Calls larger than this (encoded) are sent alone rather than copied into a batch.
const MAX_COPIED_RUN: usize = 16 << 10;
/// Calls queued on the I/O thread that leave without waiting for the caller to return
/// ([`Link::send_run`]).
const EARLY_RUNS: usize = 128;
/// Calls of this size in all (encoded) leave early too.
const EARLY_RUN_BYTES: usize = 256 << 10;

/// Coalesces the `Run`, `Done` and `Free` items queued on a link into one message of each
/// kind. At most one kind is pending at a time: an item of another kind (or any other
/// message) sends the pending batch first, so messages keep their order on the wire.
#[derive(Default)]
struct Batch {
    runs: Vec<u8>,
    run_count: usize,
    done: Vec<Done>,
    free: Vec<u64>,
}

impl Batch {
    /// Queues `out` on `sender`, batching what can be; false once the link is to close.
    fn feed(&mut self, sender: &mut Sender, out: Out) -> Result<bool, NetError> {
        match out {
            // A large call (inline arguments) goes alone, as it was encoded, without a copy.
            Out::Run(r) if r.len() > MAX_COPIED_RUN => {
                self.send(sender)?;
                sender.feed(r)?;
            }
            Out::Run(r) => {
                if !self.done.is_empty() || !self.free.is_empty() {
                    self.send(sender)?;
                }
                self.runs.extend_from_slice(run_body(&r));
                self.run_count += 1;
                if self.run_count >= MAX_BATCH || self.runs.len() >= MAX_RUN_BATCH_BYTES {
                    self.send(sender)?;
                }
            }
            Out::Done(d) => {
                if self.run_count > 0 || !self.free.is_empty() {
                    self.send(sender)?;
                }
                self.done.push(d);
                if self.done.len() >= MAX_BATCH {
                    self.send(sender)?;
                }
            }
            Out::Free(id) => {
                if self.run_count > 0 || !self.done.is_empty() {
                    self.send(sender)?;
                }
                self.free.push(id);
                if self.free.len() >= MAX_BATCH {
                    self.send(sender)?;
                }
            }
            other => {
                self.send(sender)?;
                match other {
                    Out::Msg(m) => sender.feed(m.encode())?,
                    Out::WithPayload(m, p) => {
                        sender.feed(m.encode())?;
                        sender.feed(p)?;
                    }
                    Out::WithEncoding(me) => {
                        let (m, e) = *me;
                        sender.feed(m.encode())?;
                        sender.feed_parts(e.parts())?;
                    }
                    Out::Framed(rest) => sender.feed_framed(rest),
                    _ => return Ok(false),
                }
            }
        }
        Ok(true)
    }

    /// Whether only frees are pending.
    fn only_frees(&self) -> bool {
        self.run_count == 0 && self.done.is_empty() && !self.free.is_empty()
    }

    /// Queues the pending batch, if any, on `sender`.
    fn send(&mut self, sender: &mut Sender) -> Result<(), NetError> {
        if self.run_count > 0 {
            let (header, n) = run_batch_header(self.run_count);
            sender.feed_slices(&[&header[..n], &self.runs])?;
            self.runs.clear();
            self.run_count = 0;
        }
        if !self.done.is_empty() {
            feed_encoded(sender, &Msg::Done(std::mem::take(&mut self.done)))?;
        }
        if !self.free.is_empty() {
            feed_encoded(sender, &Msg::Free(std::mem::take(&mut self.free)))?;
        }
        Ok(())
    }
}

/// Queues `msg` on `sender`, encoded without a buffer of its own when it is short.
fn feed_encoded(sender: &mut Sender, msg: &Msg) -> Result<(), NetError> {
    crate::remote::functions::with_encoded(msg, |m| sender.feed_slice(m))
        .expect("messages always encode")
}

/// Capacity of the writer task's item buffer kept between wake-ups.
const MAX_KEPT_ITEMS: usize = 1024;

// A queue item stays as small as a report: every call and free queued is this large.
const _: () = assert!(std::mem::size_of::<Out>() <= std::mem::size_of::<Done>() + 8);
/// How often a busy worker reports ended tasks: a report waits until this long after the
/// previous one left (the head learns of results at most this late, and a worker ending
/// tasks every few microseconds sends it one message per interval instead of one per
/// task: each message costs both processes a wake-up). Dask's workers batch their messages
/// to the scheduler the same way (every 2 ms).
pub(crate) const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);
/// Held reports that leave at once, without waiting for their turn.
const MAX_HELD: usize = 1024;
/// How long frees wait for other messages to go with before they are sent alone (they only
/// give memory back, and sending them one message each costs both processes a wake-up).
const FREE_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
/// Frees sent at once, without waiting for company.
const FREE_ALONE: usize = 256;

/// Sends what is queued for a link: everything queued when it wakes up goes out with one
/// flush, `Run`/`Done`/`Free` items coalesced into batch messages. Frees queued alone wait up
/// to [`FREE_DELAY`] for more; reports held by [`Link::report_done`] are sent when their turn
/// comes. Once what it took is written, other threads may write on the link again
/// ([`Link::send_report`]).
async fn write_loop(mut sender: Sender, queue: Arc<Queue>) {
    let _gone = WriterGone(queue.clone());
    // Items taken from the queue and not yet written.
    let mut taken = 0usize;
    let written = |taken: &mut usize| {
        let mut state = queue.lock();
        state.queued -= *taken;
        state.frees_held = 0;
        *taken = 0;
    };
    let mut batch = Batch::default();
    let mut items = Vec::new();
    // When the frees waiting alone are sent at the latest.
    let mut frees_due: Option<tokio::time::Instant> = None;
    // When to look at the held reports.
    let mut reports_due: Option<tokio::time::Instant> = None;
    loop {
        swap_items(&queue, &mut items);
        if items.is_empty() {
            let Some(due) = frees_due.into_iter().chain(reports_due).min() else {
                queue.arrived.notified().await;
                continue;
            };
            if tokio::time::timeout_at(due, queue.arrived.notified())
                .await
                .is_ok()
            {
                continue;
            }
            let now = tokio::time::Instant::now();
            if reports_due.is_some_and(|d| d <= now) {
                reports_due = release_held(&queue);
            }
            if frees_due.is_some_and(|d| d <= now) {
                frees_due = None;
                // They are being written: nothing may be written past them now.
                queue.lock().frees_held = 0;
                if batch.send(&mut sender).is_err() || sender.flush().await.is_err() {
                    return;
                }
                written(&mut taken);
            }
            continue;
        }
        // What arrives meanwhile goes with the same flush.
        let mut open = true;
        while open && !items.is_empty() {
            taken += items.len();
            for out in items.drain(..) {
                let fed = match out {
                    Out::ReportsDue(due) => {
                        let due = tokio::time::Instant::from_std(due);
                        reports_due = Some(reports_due.map_or(due, |d| d.min(due)));
                        Ok(true)
                    }
                    Out::Close => {
                        // Held reports go before the end.
                        let held = std::mem::take(&mut queue.lock().held);
                        held.into_iter()
                            .try_for_each(|d| batch.feed(&mut sender, Out::Done(d)).map(|_| ()))
                            .map(|()| false)
                    }
                    out => batch.feed(&mut sender, out),
                };
                match fed {
                    Ok(true) => {}
                    Ok(false) => {
                        open = false;
                        break;
                    }
                    Err(_) => return,
                }
            }
            // A burst (frees of a whole graph's results) leaves a large buffer behind: give
            // it back rather than keep it for the life of the connection.
            if items.capacity() > MAX_KEPT_ITEMS {
                items = Vec::new();
            }
            if open {
                swap_items(&queue, &mut items);
            }
        }
        if open && batch.only_frees() && batch.free.len() < FREE_ALONE {
            frees_due.get_or_insert_with(|| tokio::time::Instant::now() + FREE_DELAY);
        } else {
            frees_due = None;
            if batch.send(&mut sender).is_err() {
                return;
            }
        }
        if sender.flush().await.is_err() {
            return;
        }
        if !open {
            let _ = sender.close().await;
            return;
        }
        match frees_due {
            None => written(&mut taken),
            // Everything taken is written but the frees held back.
            Some(_) => queue.lock().frees_held = taken,
        }
    }
}

/// Takes what is queued on a link (the writer task's `items`, empty, in exchange).
fn swap_items(queue: &Queue, items: &mut Vec<Out>) {
    let mut state = queue.lock();
    std::mem::swap(&mut state.items, items);
    state.items_taken();
    if !items.is_empty() {
        // The frees held back leave with these: nothing may be written past them now.
        state.frees_held = 0;
    }
}

/// The held reports' time came: queues them for the writer task if their turn came, and
/// returns when to look again (their turn moved: reports left meanwhile), if any are held.
fn release_held(queue: &Queue) -> Option<tokio::time::Instant> {
    let mut state = queue.lock();
    let now = std::time::Instant::now();
    let turn = state.reported.map_or(now, |t| t + REPORT_INTERVAL);
    if state.held.is_empty() {
        state.held_due = false;
        return None;
    }
    if turn > now {
        return Some(tokio::time::Instant::from_std(turn));
    }
    state.held_due = false;
    state.reported = Some(now);
    let held = std::mem::take(&mut state.held);
    state.queued += held.len();
    state.items.extend(held.into_iter().map(Out::Done));
    None
}

/// Closes a link's queue once its writer task ended (direct writes stop, and what is queued
/// after that is refused).
struct WriterGone(Arc<Queue>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open = false;
        state.writer = None;
        state.items.clear();
        state.items_taken();
        state.held.clear();
    }
}

async fn read_loop<H: Handler>(mut receiver: Receiver, link: Link, handler: Arc<H>) {
    let err = loop {
        let bytes = match receiver.recv().await {
            Ok(Some(b)) => b,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        let msg = match Msg::decode(&bytes) {
            Ok(m) => m,
            Err(why) => {
                log::warn!("closing the connection to process {}: {why}", link.peer);
                break Some(NetError::Config(why));
            }
        };
        let payload = if msg.has_payload() {
            if let Some(len) = msg.payload_len() {
                receiver.expect_next(len);
            }
            match receiver.recv().await {
                Ok(Some(p)) => Some(p),
                Ok(None) => break Some(NetError::Closed),
                Err(e) => break Some(e),
            }
        } else {
            None
        };
        handler.clone().on_message(&link, msg, payload);
    };
    link.close();
    handler.on_closed(&link, err);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dagger_net::{connect, Hello, Listener, NetConfig, Role, Secret};

    struct Ignore;

    /// A link on `io` and the connection at its other end.
    fn connected_link(io: &Io) -> (Link, dagger_net::Connection) {
        let config = NetConfig::new(Secret::from_bytes(vec![7; 32]).unwrap());
        io.run(async move {
            let mut listener = Listener::bind("127.0.0.1:0", &config, Hello::new(Role::Head, 1))
                .await
                .unwrap();
            let addr = listener.local_addr();
            let (client, server) = tokio::join!(
                connect(addr, &config, Hello::new(Role::Worker, 1)),
                listener.accept()
            );
            let link = open_link(client.unwrap().0, 1, Arc::new(Ignore));
            (link, server.unwrap().0)
        })
        .unwrap()
    }

    fn failed(task: u64) -> Done {
        Done {
            task,
            result: Err((super::super::msg::FailKind::Failed, String::new())),
            run_ns: 0,
            small: None,
        }
    }

    /// Receives `Done` messages on `server` until `n` reports came; the tasks of each message.
    fn receive_reports(io: &Io, server: dagger_net::Connection, n: usize) -> Vec<Vec<u64>> {
        io.run(async move {
            let mut server = server;
            let mut messages = Vec::new();
            let read = async {
                while messages.iter().map(Vec::len).sum::<usize>() < n {
                    let bytes = server.recv().await.unwrap().expect("open");
                    match Msg::decode(&bytes).unwrap() {
                        Msg::Done(d) => messages.push(d.iter().map(|d| d.task).collect()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(30), read)
                .await
                .expect("every report arrives");
            messages
        })
        .unwrap()
    }

    /// An encoded call of function 1 with one small argument, as task `task`.
    fn small_call(task: u64) -> Vec<u8> {
        let call = crate::remote::wire::WireCall {
            func: 1,
            args: vec![crate::remote::wire::WireArg::Value(vec![7; 8].into())],
            thread: None,
            options: Default::default(),
        };
        super::super::msg::encode_run(task, &call, false)
    }

    /// Receives `Run`, `Free` and `Ping` messages on `server` until `runs` calls and `others`
    /// freed ids or heartbeats came: the tasks of each `Run` message, and the ids freed and
    /// heartbeat numbers.
    fn receive_runs(
        io: &Io,
        server: dagger_net::Connection,
        runs: usize,
        others: usize,
    ) -> (Vec<Vec<u64>>, Vec<u64>) {
        io.run(async move {
            let mut server = server;
            let (mut batches, mut others_seen) = (Vec::<Vec<u64>>::new(), Vec::new());
            while batches.iter().map(Vec::len).sum::<usize>() < runs || others_seen.len() < others {
                let bytes = tokio::time::timeout(std::time::Duration::from_secs(30), server.recv())
                    .await
                    .expect("everything arrives")
                    .unwrap()
                    .expect("open");
                match Msg::decode(&bytes).unwrap() {
                    Msg::Run(r) => batches.push(r.iter().map(|r| r.task).collect()),
                    Msg::Free(ids) => others_seen.extend(ids),
                    Msg::Ping(seq) => others_seen.push(seq),
                    other => panic!("unexpected {other:?}"),
                }
            }
            (batches, others_seen)
        })
        .unwrap()
    }

    /// A long run of calls queued on the I/O thread (by one task, which the writer task cannot
    /// interrupt) leaves in batches as it is queued, in order.
    #[test]
    fn calls_queued_on_the_io_thread_leave_early_in_batches() {
        let io = Io::start("test-io").unwrap();
        let (link, server) = connected_link(&io);
        let n = 2 * EARLY_RUNS as u64 + 44;
        let sender = link.clone();
        let seqs = io
            .run(async move {
                (0..n)
                    .map(|task| sender.send_run(small_call(task)))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(seqs, (1..=n).map(Some).collect::<Vec<_>>());
        let (batches, others) = receive_runs(&io, server, n as usize, 0);
        assert!(others.is_empty(), "{others:?}");
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [EARLY_RUNS, EARLY_RUNS, 44]);
        assert_eq!(batches.concat(), (0..n).collect::<Vec<u64>>());
        drop(link);
    }

    /// Frees and heartbeats waiting in the queue, or frees held back by the writer task for
    /// later messages, do not keep a long run of calls from leaving early.
    #[test]
    fn calls_leave_early_past_frees_and_heartbeats() {
        let io = Io::start("test-io").unwrap();
        let (link, server) = connected_link(&io);
        let n = 2 * EARLY_RUNS as u64 + 44;
        let sender = link.clone();
        io.run(async move {
            // The writer task takes this one and holds it back (sent alone later).
            assert!(sender.send_free(1_000_001));
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            assert!(sender.send_free(1_000_002));
            for task in 0..n {
                sender.send_run(small_call(task));
                if task == 10 {
                    assert!(sender.send_free(1_000_003));
                }
                if task == 20 {
                    assert!(sender.send(Msg::Ping(1_000_004)));
                }
            }
        })
        .unwrap();
        let (batches, mut others) = receive_runs(&io, server, n as usize, 4);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [EARLY_RUNS, EARLY_RUNS, 44]);
        assert_eq!(batches.concat(), (0..n).collect::<Vec<u64>>());
        others.sort_unstable();
        assert_eq!(others, [1_000_001, 1_000_002, 1_000_003, 1_000_004]);
        drop(link);
    }

    /// Reports sent in a burst leave together, in order: the first at once, the others when
    /// their turn comes (nothing else is sent to carry them).
    #[test]
    fn reports_in_a_burst_share_messages_and_keep_their_order() {
        let io = Io::start("test-io").unwrap();
        let (link, server) = connected_link(&io);
        let n = 1000u64;
        for task in 0..n {
            assert!(link.report_done(vec![failed(task)].into(), false));
        }
        let messages = receive_reports(&io, server, n as usize);
        assert_eq!(messages.concat(), (0..n).collect::<Vec<_>>());
        assert_eq!(messages[0], [0], "the first report leaves at once");
        assert!(
            messages.len() < n as usize / 2,
            "{} messages for {n} reports",
            messages.len()
        );
    }

    /// A report sent when the process has nothing else in hand leaves at once, with those
    /// held before it; held reports also leave before the link closes.
    #[test]
    fn idle_and_closing_links_send_held_reports() {
        let io = Io::start("test-io").unwrap();
        let (link, server) = connected_link(&io);
        assert!(link.report_done(vec![failed(1)].into(), false));
        assert!(link.report_done(vec![failed(2), failed(3)].into(), false));
        assert!(link.report_done(vec![failed(4)].into(), true));
        assert!(link.report_done(vec![failed(5)].into(), false));
        link.close();
        let messages = receive_reports(&io, server, 5);
        assert_eq!(messages.concat(), [1, 2, 3, 4, 5]);
        assert!(
            messages
                .iter()
                .any(|m| [2, 3, 4].iter().all(|t| m.contains(t))),
            "the idle report takes the held ones with it: {messages:?}"
        );
    }

    /// On a link that cannot be written from other threads (TLS), reports that leave
    /// together are queued together, and the writer task wakes for them: it once did not
    /// (only the last one was queued as an item that may wake it, and it was not the
    /// first), and every message after them stayed queued for good.
    #[test]
    fn reports_queued_together_wake_the_writer_task() {
        let io = Io::start("test-io").unwrap();
        let (link, server) = connected_link(&io);
        link.senders.0.lock().writer = None;
        assert!(link.report_done(vec![failed(1), failed(2), failed(3)].into(), true));
        assert!(link.report_done(vec![failed(4)].into(), true));
        assert_eq!(receive_reports(&io, server, 4).concat(), [1, 2, 3, 4]);
    }

    impl Handler for Ignore {
        fn on_message(self: Arc<Self>, _: &Link, _: Msg, _: Option<Bytes>) {}
        fn on_closed(self: Arc<Self>, _: &Link, _: Option<NetError>) {}
    }

    /// Messages sent at once from another thread never overtake those queued before them,
    /// nor do the queued ones overtake them, even when the socket takes only part of one.
    #[test]
    fn messages_sent_now_keep_their_order_with_queued_ones() {
        let io = Io::start("test-io").unwrap();
        let (link, mut server) = connected_link(&io);
        assert!(
            link.senders.0.lock().writer.is_some(),
            "a plain connection writes directly"
        );
        // Large messages fill the socket while nobody reads: some go out in part.
        let big = vec![5u8; 3 << 20];
        let n = 3000u64;
        for i in 0..n {
            match i % 4 {
                0 => assert!(link.send(Msg::Ping(i))),
                1 | 2 => assert!(link.send_report(Msg::Ping(i), true)),
                _ if i % 500 == 3 => {
                    assert!(link.send_report(
                        Msg::Made(vec![super::super::msg::Made {
                            task: i,
                            result: Err(String::new()),
                            small: Some(big.clone().into()),
                        }]),
                        true
                    ))
                }
                _ => assert!(link.send_done(failed(i))),
            }
        }
        link.close();
        let received = io
            .run(async move {
                let mut got = Vec::new();
                let read = async {
                    while let Some(bytes) = server.recv().await.unwrap() {
                        match Msg::decode(&bytes).unwrap() {
                            Msg::Ping(i) => got.push(i),
                            Msg::Made(m) => got.extend(m.iter().map(|m| m.task)),
                            Msg::Done(d) => got.extend(d.iter().map(|d| d.task)),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                };
                tokio::time::timeout(std::time::Duration::from_secs(30), read)
                    .await
                    .expect("the link closes after its last message");
                got
            })
            .unwrap();
        assert_eq!(received, (0..n).collect::<Vec<_>>());
    }
}
