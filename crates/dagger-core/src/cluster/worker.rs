//! A worker process: runs the tasks its head sends, holds their results for the cluster, and
//! exits when the head says so or goes away.

use super::inbox::{Inbox, Outbox};
use super::io::Link;
use super::msg::{Done, FailKind, Made as MadeMsg, Msg, Run, WorkerStats};
use super::node::{Node, NodeLink, Role};
use crate::context::Context;
use crate::error::BoxError;
use crate::error::TaskError;
use crate::few::Few;
use crate::hash::IdMap;
use crate::remote::data::DataLink;
use crate::remote::store::{
    afters_elsewhere, resolve_after, resolve_after_on, run_after, run_in_place, waits_here,
    AfterList, Afters, Claim, Fetch, InputLost, Store,
};
use crate::remote::wire::{Location, ValueBytes, WireArg};
use crate::task::DTask;
use bytes::Bytes;
use dagger_net::NetError;
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct Worker {
    pub(crate) ctx: Context,
    running: AtomicU64,
    /// Calls that arrived ahead of their inputs.
    sent_ahead: AtomicU64,
    /// Calls given back for the head to place again (see [`WorkerStats::placed_again`]).
    placed_again: AtomicU64,
    /// Notes taken from the inbox (see [`WorkerStats::inbox_notes`]).
    notes: AtomicU64,
    /// Calls waiting for notes from other workers (`Ahead::parked`).
    parked: Arc<std::sync::atomic::AtomicUsize>,
    /// The head's tasks sent here and not finished, which it may take back until they start.
    claims: Mutex<IdMap<u64, Arc<Claim>>>,
    /// The head's tasks that calls may be sent ahead of.
    ahead: Mutex<Ahead>,
    /// Where workers of this host write their notes (`Made`), and how this one writes its
    /// own (see [`super::inbox`]); `None` on connections only.
    inbox: Option<Arc<Inbox>>,
    outbox: Option<Outbox>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A call of the head's, with its claim.
struct Call {
    run: Run,
    claim: Arc<Claim>,
}

/// Where a head task that calls may be sent ahead of ([`Run::feeds`]) stands here.
enum Made {
    /// Not started yet (its inputs are on their way): calls sent ahead of it wait with it.
    Waiting(Vec<Call>),
    /// Started. The reports of calls sent ahead of it that ended before its own report was
    /// sent wait here (with whether calls may be sent ahead of them), so that the head always
    /// learns of a task before the tasks that used its result.
    Running(DTask<(Location, u64)>, Vec<Report>),
    /// Ended here; its result is at this location until the head frees it.
    Ended(Location),
}

#[derive(Default)]
struct Ahead {
    made: IdMap<u64, Made>,
    /// The head task whose result each kept value is, by the value's id in the store.
    by_value: IdMap<u64, u64>,
    /// Other workers waiting for head tasks made here to end (their `Await`), by task.
    awaited: IdMap<u64, Vec<Link>>,
    /// Calls sent ahead of inputs being made on other workers, by head task.
    parked: IdMap<u64, Call>,
    /// The calls of `parked` waiting for each (worker, head task) made there.
    elsewhere: IdMap<(u32, u64), Vec<u64>>,
    /// Head tasks to ask each worker this process is connecting to about, once connected
    /// (with their places among the calls the head sent it).
    connecting: HashMap<u32, Vec<(u64, u64)>>,
    /// The workers told where this one takes notes (its inbox), until they leave.
    told_inbox: std::collections::HashSet<u32>,
    /// Calls received from the head so far (the head numbers them in the same order).
    runs_received: u64,
}

/// A worker to ask about head tasks made there, and those tasks with their places among the
/// calls the head sent it.
type Ask = (u32, Vec<(u64, u64)>);

/// The report of a call that ended, waiting to be sent.
struct Report {
    done: Done,
    /// Calls may be sent ahead of it.
    feeds: bool,
    /// The head's tasks it was sent ahead of (its report goes after theirs).
    afters: Vec<u64>,
}

/// A call started on this process's pool.
struct Started {
    task: u64,
    claim: Arc<Claim>,
    dtask: DTask<(Location, u64)>,
    /// Calls may be sent ahead of it.
    feeds: bool,
    /// The head's tasks it was sent ahead of.
    afters: Vec<u64>,
}

/// Reports a started call once it ended, from the thread that ended it (a compute thread,
/// usually): its task wakes this waker as it completes. When it is the report's turn
/// ([`Link::report_done`]), it then leaves from that thread rather than after the I/O thread
/// got a CPU, which, with every CPU busy running tasks, can take as long as a task.
struct ReportOnEnd(Mutex<Option<Ending>>);

struct Ending {
    worker: Arc<Worker>,
    store: Arc<Store>,
    link: Link,
    started: Started,
}

impl ReportOnEnd {
    /// Reports now if the call ended, or once it does.
    fn watch(self: Arc<Self>) {
        let waker = std::task::Waker::from(self.clone());
        let Some(mut ended) = lock(&self.0)
            .as_ref()
            .map(|e| (&e.started.dtask).into_future())
        else {
            return;
        };
        let ready = std::pin::Pin::new(&mut ended)
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_ready();
        if ready {
            self.report();
        }
    }

    /// Reports if the call ended (unless another thread did); false if it has not ended.
    fn report(&self) -> bool {
        let Some(e) = lock(&self.0).take() else {
            return true;
        };
        if !e.started.dtask.is_ready() {
            *lock(&self.0) = Some(e);
            return false;
        }
        let result = e.started.dtask.fetch();
        e.worker.report(&e.store, &e.link, e.started, result);
        true
    }
}

impl std::task::Wake for ReportOnEnd {
    fn wake(self: Arc<Self>) {
        if !self.report() {
            // Not ended after all: wait again.
            self.watch();
        }
    }
}

impl Worker {
    /// A worker running calls on `ctx`; with `shared_notes`, workers of this host write it
    /// their notes in shared memory (see [`super::inbox`]) once [`Worker::take_notes`] ran.
    pub(crate) fn new(ctx: Context, shared_notes: bool) -> Arc<Worker> {
        let (inbox, outbox) = match shared_notes {
            true => (Inbox::open().map(Arc::new), Outbox::open()),
            false => (None, None),
        };
        Arc::new(Worker {
            ctx,
            running: AtomicU64::new(0),
            sent_ahead: AtomicU64::new(0),
            placed_again: AtomicU64::new(0),
            notes: AtomicU64::new(0),
            parked: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            claims: Mutex::new(IdMap::default()),
            ahead: Mutex::new(Ahead::default()),
            inbox,
            outbox,
        })
    }

    /// Handles the notes that arrive in the inbox: compute threads take them between tasks
    /// and while idle (a note then wakes nobody: neither the I/O thread, to start the call it
    /// lets start, nor the compute thread, to run it), and the I/O thread while some compute
    /// thread sleeps.
    pub(crate) fn take_notes(self: &Arc<Self>, node: &Arc<Node>) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let (me, n) = (Arc::downgrade(self), Arc::downgrade(node));
        let registry = self.ctx.registry_ref().clone();
        inbox.watch(
            &node.io,
            move || registry.away(),
            move |peer, made| {
                if let (Some(me), Some(node)) = (me.upgrade(), n.upgrade()) {
                    me.take_note(&node, peer, made);
                }
            },
        );
        let notes = Arc::new(Notes {
            parked: self.parked.clone(),
            worker: Arc::downgrade(self),
            node: Arc::downgrade(node),
            inbox: Arc::downgrade(inbox),
        });
        self.ctx.registry_ref().set_outside_work(notes);
        // Threads that went to sleep before they knew of the inbox did not ask for it to be
        // watched (a worker that has nothing to do yet): ask now. The watcher stops again if
        // none sleeps.
        inbox.unwatched();
    }

    fn take_note(self: &Arc<Self>, node: &Arc<Node>, peer: u32, made: Vec<MadeMsg>) {
        self.notes.fetch_add(1, Ordering::Relaxed);
        self.made(node, peer, made);
    }

    /// Counts the calls waiting for notes (see [`Notes`]), under the lock of `ahead`.
    fn count_parked(&self, ahead: &Ahead) {
        self.parked.store(ahead.parked.len(), Ordering::Relaxed);
    }

    /// Starts the calls of a `Run` batch. Those whose inputs are all here start at once and
    /// one task on the I/O thread reports each as it ends (not one task per call); calls sent
    /// ahead of their inputs start once those started here; the others start once their
    /// inputs arrived.
    fn run(self: &Arc<Self>, node: &Arc<Node>, link: &Link, runs: Vec<Run>) {
        lock(&self.ahead).runs_received += runs.len() as u64;
        let here: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        let mut started = Vec::with_capacity(runs.len());
        let mut ask = Vec::new();
        for r in runs {
            let claim = Arc::new(Claim::new());
            lock(&self.claims).insert(r.task, claim.clone());
            if r.feeds {
                lock(&self.ahead)
                    .made
                    .insert(r.task, Made::Waiting(Vec::new()));
            }
            let mut elsewhere = Vec::new();
            afters_elsewhere(&r.call.args, &mut elsewhere);
            if !elsewhere.is_empty() || waits_here(&r.call.args) {
                self.sent_ahead.fetch_add(1, Ordering::Relaxed);
            }
            if !elsewhere.is_empty() {
                self.park(Call { run: r, claim }, elsewhere, &mut ask);
                continue;
            }
            self.dispatch(node, link, Call { run: r, claim }, &here, &mut started);
        }
        self.ask_elsewhere(node, ask);
        self.report_when_done(node, link, started);
    }

    /// Starts a call whose inputs are here or being made here (it starts once they are),
    /// or fetches those held by other processes first.
    fn dispatch(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        call: Call,
        here: &Arc<dyn Fetch>,
        started: &mut Vec<Started>,
    ) {
        if waits_here(&call.run.call.args) {
            return self.start_ahead(node, link, call, here, started);
        }
        let Call { run: r, claim } = call;
        let mut remote = Vec::new();
        remote_inputs(&r.call.args, node.id, &mut remote);
        if remote.is_empty() {
            started.extend(self.start(node, link, r, here.clone(), claim, Vec::new()));
        } else {
            self.prefetch_and_start(node, link, r, remote, claim);
        }
    }

    /// Reports each of `started` as it ends, from the thread that ends it (see
    /// [`ReportOnEnd`]).
    fn report_when_done(self: &Arc<Self>, node: &Arc<Node>, link: &Link, started: Vec<Started>) {
        for s in started {
            ReportOnEnd::watch(Arc::new(ReportOnEnd(Mutex::new(Some(Ending {
                worker: self.clone(),
                store: node.store.clone(),
                link: link.clone(),
                started: s,
            })))));
        }
    }

    /// Starts a call sent ahead of its inputs once each of them started here: its task waits
    /// for theirs. It waits with the first of them that has not started; it fails at once
    /// (for the head to place it again) if one of them is not known here.
    fn start_ahead(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        mut call: Call,
        here: &Arc<dyn Fetch>,
        started: &mut Vec<Started>,
    ) {
        let afters = AfterList::of(&call.run.call.args);
        let mut deps: Afters = Vec::with_capacity(afters.len());
        {
            let mut ahead = lock(&self.ahead);
            for t in afters.iter() {
                match ahead.made.get_mut(&t) {
                    Some(Made::Ended(loc)) => resolve_after(&mut call.run.call.args, t, *loc),
                    Some(Made::Running(dtask, _)) => deps.push((t, dtask.clone())),
                    Some(Made::Waiting(calls)) => {
                        calls.push(call);
                        return;
                    }
                    None => {
                        drop(ahead);
                        return self.refuse(
                            link,
                            call,
                            FailKind::InputMissing,
                            format!("the result of task {t} it was sent ahead of is not made here"),
                        );
                    }
                }
            }
        }
        let Call { run, claim } = call;
        started.extend(self.start(node, link, run, here.clone(), claim, deps));
    }

    /// Parks a call sent ahead of inputs being made on other workers (`elsewhere`: each
    /// worker and head task), adding to `ask` the head tasks to ask those workers about
    /// ([`Worker::ask_elsewhere`]). It goes on once they all are made ([`Worker::made`]),
    /// and fails (for the head to place it again) if one is not, or its worker leaves.
    fn park(&self, call: Call, elsewhere: Vec<(u32, u64, u64)>, ask: &mut Vec<Ask>) {
        let task = call.run.task;
        let mut ahead = lock(&self.ahead);
        ahead.parked.insert(task, call);
        self.count_parked(&ahead);
        for (worker, t, seq) in elsewhere {
            let waiting = ahead.elsewhere.entry((worker, t)).or_default();
            if waiting.is_empty() {
                match ask.iter_mut().find(|(w, _)| *w == worker) {
                    Some((_, tasks)) => tasks.push((t, seq)),
                    None => ask.push((worker, vec![(t, seq)])),
                }
            }
            waiting.push(task);
        }
    }

    /// Asks each worker of `ask` to say when the head tasks listed for it are made: one
    /// message for all the calls of a batch that wait on it. A worker asked for the first
    /// time learns first where this one takes notes.
    fn ask_elsewhere(self: &Arc<Self>, node: &Arc<Node>, ask: Vec<Ask>) {
        for (worker, tasks) in ask {
            let inbox = self
                .inbox
                .as_ref()
                .filter(|_| lock(&self.ahead).told_inbox.insert(worker))
                .and_then(|i| i.address_for(worker));
            if let Some(l) = node.link(worker) {
                if let Some(inbox) = inbox {
                    l.send(inbox);
                }
                if !l.send(Msg::Await(tasks)) {
                    self.peer_gone(node, worker);
                }
                continue;
            }
            // Not connected yet: connect off the I/O thread (once), then ask.
            match lock(&self.ahead).connecting.entry(worker) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().extend(tasks);
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(tasks);
                }
            }
            let me = self.clone();
            let n = node.clone();
            let node = node.clone();
            n.io.spawn(async move {
                let n = node.clone();
                let linked = tokio::task::spawn_blocking(move || n.link_to(worker)).await;
                let tasks = lock(&me.ahead)
                    .connecting
                    .remove(&worker)
                    .unwrap_or_default();
                let sent = match linked {
                    Ok(Ok(l)) => inbox.is_none_or(|i| l.send(i)) && l.send(Msg::Await(tasks)),
                    _ => false,
                };
                if !sent {
                    me.peer_gone(&node, worker);
                }
            });
        }
    }

    /// Worker `from` says that head tasks made there ended (or will not be made there): the
    /// calls waiting for them here go on, or fail for the head to place them again.
    fn made(self: &Arc<Self>, node: &Arc<Node>, from: u32, made: Vec<MadeMsg>) {
        let mut ready = Vec::new();
        let mut refused = Vec::new();
        {
            let mut ahead = lock(&self.ahead);
            for m in made {
                let Some(calls) = ahead.elsewhere.remove(&(from, m.task)) else {
                    continue;
                };
                for c in calls {
                    // A call of that task sent again (after this one failed) may wait for
                    // other inputs: only the arguments naming this one change.
                    let Some(call) = ahead.parked.get_mut(&c) else {
                        continue;
                    };
                    match &m.result {
                        Ok(loc) => {
                            let args = &mut call.run.call.args;
                            resolve_after_on(args, m.task, from, *loc, m.small.as_deref());
                            let mut left = Vec::new();
                            afters_elsewhere(args, &mut left);
                            if left.is_empty() {
                                ready.extend(ahead.parked.remove(&c));
                            }
                        }
                        Err(why) => {
                            if waits_for(call, from, m.task) {
                                let call = ahead.parked.remove(&c).expect("parked");
                                refused.push((
                                    call,
                                    format!("task {} on worker {from}: {why}", m.task),
                                ));
                            }
                        }
                    }
                }
            }
            self.count_parked(&ahead);
        }
        self.go_on(node, ready, refused);
    }

    /// Worker `worker` left (or cannot be reached): the calls waiting for tasks made there
    /// fail, for the head to place them again.
    fn peer_gone(self: &Arc<Self>, node: &Arc<Node>, worker: u32) {
        let refused: Vec<(Call, String)> = {
            let mut ahead = lock(&self.ahead);
            ahead.told_inbox.remove(&worker);
            let keys: Vec<(u32, u64)> = ahead
                .elsewhere
                .keys()
                .filter(|(w, _)| *w == worker)
                .copied()
                .collect();
            let mut refused = Vec::new();
            for k in keys {
                for c in ahead.elsewhere.remove(&k).unwrap_or_default() {
                    if ahead
                        .parked
                        .get(&c)
                        .is_some_and(|call| waits_for(call, worker, k.1))
                    {
                        let call = ahead.parked.remove(&c).expect("parked");
                        refused.push((call, format!("worker {worker}, making task {}, left", k.1)));
                    }
                }
            }
            self.count_parked(&ahead);
            refused
        };
        self.go_on(node, Vec::new(), refused);
    }

    /// Starts the calls of `ready`, whose inputs made elsewhere all are, and fails those of
    /// `refused`.
    fn go_on(self: &Arc<Self>, node: &Arc<Node>, ready: Vec<Call>, refused: Vec<(Call, String)>) {
        if ready.is_empty() && refused.is_empty() {
            return;
        }
        let Some(head) = node.link(0) else {
            return; // the head is gone: this process exits
        };
        for (call, why) in refused {
            self.refuse(&head, call, FailKind::InputMissing, why);
        }
        let here: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        let mut started = Vec::new();
        for call in ready {
            self.dispatch(node, &head, call, &here, &mut started);
        }
        self.report_when_done(node, &head, started);
    }

    /// Worker `link.peer` waits for these head tasks, sent here, to end: says at once for
    /// those that did (or came and will not be made here), and when the others do. A task
    /// that has not arrived from the head yet (the other worker's message overtook the
    /// head's) is waited for like one that has.
    fn awaited(&self, node: &Node, link: &Link, tasks: Vec<(u64, u64)>) {
        let mut now = Vec::new();
        {
            let mut ahead = lock(&self.ahead);
            for (task, seq) in tasks {
                let ended = match ahead.made.get(&task) {
                    Some(Made::Ended(loc)) => Some(Ok(*loc)),
                    Some(Made::Running(dtask, _)) if dtask.is_ready() => {
                        Some(dtask.fetch().map(|(loc, _)| loc).map_err(|e| e.message()))
                    }
                    Some(Made::Running(..) | Made::Waiting(_)) => None,
                    None if seq > ahead.runs_received => None,
                    None => Some(Err("it is not made here".to_string())),
                };
                match ended {
                    Some(result) => now.push(MadeMsg {
                        task,
                        small: match &result {
                            Ok(loc) => node.store.small_encoding(loc.id),
                            Err(_) => None,
                        },
                        result,
                    }),
                    None => ahead.awaited.entry(task).or_default().push(link.clone()),
                }
            }
        }
        if !now.is_empty() {
            link.send(Msg::Made(now));
        }
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
            let started: Vec<Started> = me
                .start(&node, &link, r, fetch, claim, Vec::new())
                .into_iter()
                .collect();
            me.report_when_done(&node, &link, started);
        });
    }

    /// Runs `r` on this process's pool, after the tasks in `after` (the call was sent ahead
    /// of them); `None` if it could not start (already reported to the head). Calls sent
    /// ahead of it start now too (once their other inputs started as well).
    fn start(
        self: &Arc<Self>,
        node: &Arc<Node>,
        link: &Link,
        r: Run,
        fetch: Arc<dyn Fetch>,
        claim: Arc<Claim>,
        after: Afters,
    ) -> Option<Started> {
        let task = r.task;
        let feeds = r.feeds;
        let afters: Vec<u64> = after.iter().map(|(t, _)| *t).collect();
        let run = run_after(
            &self.ctx,
            r.call,
            node.store.clone(),
            fetch,
            Some(claim.clone()),
            after,
        );
        match run {
            Ok(dtask) => {
                self.running.fetch_add(1, Ordering::Relaxed);
                if feeds {
                    let waiting = {
                        let mut ahead = lock(&self.ahead);
                        match ahead
                            .made
                            .insert(task, Made::Running(dtask.clone(), Vec::new()))
                        {
                            Some(Made::Waiting(calls)) => calls,
                            _ => Vec::new(),
                        }
                    };
                    if !waiting.is_empty() {
                        self.start_waiting(node, link, waiting);
                    }
                }
                Some(Started {
                    task,
                    claim,
                    dtask,
                    feeds,
                    afters,
                })
            }
            Err(e) => {
                lock(&self.claims).remove(&task);
                self.report_done(
                    link,
                    Few::One(Done {
                        task,
                        result: Err((FailKind::Runtime, e.to_string())),
                        run_ns: 0,
                        small: None,
                    }),
                );
                if feeds {
                    self.forget(link, task);
                }
                None
            }
        }
    }

    /// Starts the calls that waited for a task that just started here. Those waiting for
    /// them start in turn, from a queue: a long chain sent ahead must not recurse once per
    /// link on the I/O thread's stack.
    fn start_waiting(self: &Arc<Self>, node: &Arc<Node>, link: &Link, calls: Vec<Call>) {
        let mut started = Vec::new();
        let here = std::cell::OnceCell::new();
        let outermost = crate::unnest::unnested(&STARTING, calls, |call| {
            let here = here.get_or_init(|| Arc::new(NodeLink(node.clone())) as Arc<dyn Fetch>);
            self.start_ahead(node, link, call, here, &mut started)
        });
        if outermost {
            self.report_when_done(node, link, started);
        }
    }

    /// Fails a call that could not start (`kind` tells the head what to do with it).
    fn refuse(&self, link: &Link, call: Call, kind: FailKind, message: String) {
        if let Some(task) = self.refuse_one(link, call, kind, message) {
            self.forget(link, task);
        }
    }

    /// Reports `call` as failed; its task, if calls may have been sent ahead of it (they
    /// fail in turn: see [`forget`](Self::forget)).
    fn refuse_one(&self, link: &Link, call: Call, kind: FailKind, message: String) -> Option<u64> {
        let task = call.run.task;
        lock(&self.claims).remove(&task);
        if kind == FailKind::InputMissing {
            self.placed_again.fetch_add(1, Ordering::Relaxed);
        }
        self.report_done(
            link,
            Few::One(Done {
                task,
                result: Err((kind, message)),
                run_ns: 0,
                small: None,
            }),
        );
        call.run.feeds.then_some(task)
    }

    /// `task` will not make a result here: the calls sent ahead of it fail (the head places
    /// them again), and so, in turn, do those sent ahead of them (from a queue: a chain sent
    /// ahead can be as long as a graph), and the reports waiting for their own are sent.
    fn forget(&self, link: &Link, task: u64) {
        let mut forgotten = std::collections::VecDeque::from([task]);
        while let Some(task) = forgotten.pop_front() {
            tell_awaiting(
                &self.ahead,
                self.outbox.as_ref(),
                task,
                Err("it did not run there".to_string()),
                None,
                false,
            );
            let mut send = Few::None;
            let waiting = {
                let mut ahead = lock(&self.ahead);
                match ahead.made.remove(&task) {
                    Some(Made::Waiting(calls)) => calls,
                    Some(Made::Running(_, early)) => {
                        for r in early {
                            release(&mut ahead, r, &mut send);
                        }
                        Vec::new()
                    }
                    Some(Made::Ended(_)) | None => Vec::new(),
                }
            };
            if !send.is_empty() {
                self.report_done(link, send);
            }
            for call in waiting {
                let why = format!("task {task}, which it was sent ahead of, did not run here");
                forgotten.extend(self.refuse_one(link, call, FailKind::InputMissing, why));
            }
        }
    }

    /// Tells the head that a call ended (unless the head took it back to run elsewhere).
    fn report(
        &self,
        store: &Store,
        link: &Link,
        s: Started,
        result: Result<(Location, u64), TaskError>,
    ) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let task = s.task;
        if s.claim.is_revoked() {
            if s.feeds {
                self.forget(link, task);
            }
            return;
        }
        lock(&self.claims).remove(&task);
        let done = match result {
            Ok((loc, run_ns)) => Done {
                task,
                result: Ok(loc),
                run_ns,
                small: store.small_encoding(loc.id),
            },
            Err(e) => {
                let kind = match e.downcast_ref::<InputLost>() {
                    Some(lost) => FailKind::InputLost(lost.worker),
                    // A task it was sent ahead of failed here (or was taken back).
                    None if !s.afters.is_empty()
                        && e.kind() == crate::ErrorKind::DependencyFailed =>
                    {
                        self.placed_again.fetch_add(1, Ordering::Relaxed);
                        FailKind::InputMissing
                    }
                    None => FailKind::from_kind(e.kind()),
                };
                Done {
                    task,
                    result: Err((kind, e.message())),
                    run_ns: 0,
                    small: None,
                }
            }
        };
        if s.afters.is_empty() && !s.feeds {
            self.report_done(link, Few::One(done));
            return;
        }
        if s.feeds {
            // Tasks this short end faster than one system call per message pays off: what
            // other workers wait for goes in batches from the I/O thread.
            let now = done.run_ns >= DIRECT_REPORT_NS;
            let result = match &done.result {
                Ok(loc) => Ok(*loc),
                Err((_, why)) => Err(why.clone()),
            };
            tell_awaiting(
                &self.ahead,
                self.outbox.as_ref(),
                task,
                result,
                done.small.as_ref(),
                now,
            );
        }
        let report = Report {
            done,
            feeds: s.feeds,
            afters: s.afters,
        };
        let mut released = Few::None;
        release(&mut lock(&self.ahead), report, &mut released);
        if !released.is_empty() {
            self.report_done(link, released);
        }
    }

    /// Reports ended calls to the head, at once if this process has no other call in hand
    /// (see [`Link::report_done`]).
    fn report_done(&self, link: &Link, done: Few<Done>) {
        let idle = lock(&self.claims).is_empty();
        link.report_done(done, idle);
    }

    /// The head freed these values: forget the tasks whose results they were.
    fn freed(&self, ids: &[u64]) {
        let mut ahead = lock(&self.ahead);
        if ahead.by_value.is_empty() {
            return;
        }
        for id in ids {
            if let Some(task) = ahead.by_value.remove(id) {
                ahead.made.remove(&task);
            }
        }
    }
}

/// How the compute threads of a worker take notes from its inbox (see
/// [`Worker::take_notes`]).
struct Notes {
    /// The worker's count of calls waiting for notes.
    parked: Arc<std::sync::atomic::AtomicUsize>,
    worker: std::sync::Weak<Worker>,
    node: std::sync::Weak<Node>,
    inbox: std::sync::Weak<Inbox>,
}

impl crate::sched::OutsideWork for Notes {
    fn poll(&self) -> bool {
        // Nothing to do (not even a system call) unless a note is awaited.
        if self.parked.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let (Some(worker), Some(node), Some(inbox)) = (
            self.worker.upgrade(),
            self.node.upgrade(),
            self.inbox.upgrade(),
        ) else {
            return false;
        };
        inbox.drain(&mut |peer, made| worker.take_note(&node, peer, made))
    }

    fn away(&self) {
        if let Some(inbox) = self.inbox.upgrade() {
            inbox.unwatched();
        }
    }
}

/// What other workers wait for (`Made`) leaves from the thread that ran the task when it ran
/// at least this long (in nanoseconds) ([`Link::send_report`]).
const DIRECT_REPORT_NS: u64 = 20_000;

thread_local! {
    /// Calls to start once the outermost [`Worker::start_waiting`] on this thread gets to
    /// them.
    static STARTING: crate::unnest::Queue<Call> = const { std::cell::RefCell::new(None) };
}

/// Whether `call` waits for head task `task` being made on worker `worker`.
fn waits_for(call: &Call, worker: u32, task: u64) -> bool {
    let mut found = false;
    WireArg::each(&call.run.call.args, &mut |a| {
        found |= a.is_after_on(task, worker)
    });
    found
}

/// Tells the other workers waiting for head task `task` that it ended with `result` (its
/// encoding `small` when small), or will not be made here: with the value in it, through
/// `outbox` (shared memory) where it can; else on the connection, `now` from this thread
/// ([`Link::send_report`]).
fn tell_awaiting(
    ahead: &Mutex<Ahead>,
    outbox: Option<&Outbox>,
    task: u64,
    result: Result<Location, String>,
    small: Option<&ValueBytes>,
    now: bool,
) {
    let Some(links) = lock(ahead).awaited.remove(&task) else {
        return;
    };
    let made = MadeMsg {
        task,
        result,
        small: small.cloned(),
    };
    // A note without the value in it has the waiting call fetch the value: on the
    // connection, the receiver's I/O thread starts that fetch at once, while its compute
    // threads may be busy for a while before they read their inbox.
    let outbox = outbox.filter(|_| made.small.is_some());
    let made = [made];
    for l in links {
        if outbox.is_some_and(|o| o.send(l.peer, &made)) {
            continue;
        }
        l.send_report(Msg::Made(made.to_vec()), now);
    }
}

/// Under the lock of `ahead`: sends `report` (adds it to `send`) unless a task it was sent
/// ahead of was not reported yet (it then waits for that report), then the reports that
/// waited for it (and, recursively, for those). A task calls may be sent ahead of is marked
/// ended (its result kept for them) or forgotten.
fn release(ahead: &mut Ahead, report: Report, send: &mut Few<Done>) {
    // Allocated only if the report lets others go.
    let mut queue = std::collections::VecDeque::new();
    let mut first = Some(report);
    while let Some(r) = first.take().or_else(|| queue.pop_front()) {
        let before = r
            .afters
            .iter()
            .find(|t| matches!(ahead.made.get(t), Some(Made::Running(..))));
        if let Some(Made::Running(_, early)) = before.and_then(|t| ahead.made.get_mut(t)) {
            early.push(r);
            continue;
        }
        let task = r.done.task;
        let ended = match &r.done.result {
            Ok(loc) if r.feeds => Some(*loc),
            _ => None,
        };
        send.push(r.done);
        if !r.feeds {
            continue;
        }
        if let Some(Made::Running(_, early)) = ahead.made.remove(&task) {
            queue.extend(early);
        }
        if let Some(loc) = ended {
            ahead.made.insert(task, Made::Ended(loc));
            ahead.by_value.insert(loc.id, task);
        }
    }
}

/// The inputs of a call that other processes hold (depth first).
fn remote_inputs(args: &[WireArg], here: u32, out: &mut Vec<Location>) {
    WireArg::each(args, &mut |a| match a {
        WireArg::Ref(loc) if loc.worker != here => out.push(*loc),
        _ => {}
    });
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
        keep: bool,
    ) {
        let fetch: Arc<dyn Fetch> = Arc::new(NodeLink(node.clone()));
        let store = node.store.clone();
        match run_in_place(&self.ctx, call, writes, node.store.clone(), fetch) {
            Ok(dtask) => {
                self.running.fetch_add(1, Ordering::Relaxed);
                let link = link.clone();
                let me = self.clone();
                node.io.spawn(async move {
                    let done = dtask.await;
                    me.running.fetch_sub(1, Ordering::Relaxed);
                    match done {
                        Ok((bytes, run_ns)) if keep => {
                            // the result stays here; a small one also goes with the answer
                            let bytes = bytes::Bytes::from(bytes);
                            let small = bytes.len() <= crate::remote::functions::SMALL_VALUE;
                            let loc = store.insert_bytes(bytes.clone());
                            let msg = Msg::RanKept {
                                req,
                                run_ns,
                                loc,
                                small,
                            };
                            let payload = if small { bytes } else { bytes::Bytes::new() };
                            link.send_with_payload(msg, payload);
                        }
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
            Msg::PeerLeft(id) => {
                if let Some(o) = &self.outbox {
                    o.forget(id);
                }
                if let Some(i) = &self.inbox {
                    i.forget(id);
                }
                node.forget_peer(id);
                self.peer_gone(node, id);
            }
            Msg::Await(tasks) => self.awaited(node, link, tasks),
            Msg::Inbox { name, token, ring } => {
                if let Some(o) = &self.outbox {
                    o.learn(link.peer, name, token, ring);
                }
            }
            Msg::Made(made) => self.made(node, link.peer, made),
            Msg::Run(runs) => self.run(node, link, runs),
            Msg::RunInPlace {
                req,
                call,
                writes,
                keep,
            } => self.run_in_place(node, link, req, call, writes, keep),
            Msg::Free(ids) => {
                node.store.free_many(&ids);
                self.freed(&ids);
            }
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
                    sent_ahead: self.sent_ahead.load(Ordering::Relaxed),
                    placed_again: self.placed_again.load(Ordering::Relaxed),
                    inbox_notes: self.notes.load(Ordering::Relaxed),
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
        self.peer_gone(node, peer);
    }
}
