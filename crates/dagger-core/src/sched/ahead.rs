//! Sending a task ahead of its inputs to the worker process making them.
//!
//! A task whose unfinished inputs are all being made on one worker, and which the placement
//! cost would put on that worker once they are made, is sent there before they are: its
//! call names them with [`WireArg::After`](crate::remote::wire::WireArg::After), and the
//! worker starts it as soon as they are made there. A chain of tasks then hops from one task
//! to the next inside the worker; otherwise each hop is a round trip through the head (the
//! worker reports, the head finds the next task ready and sends it).
//!
//! A task whose unfinished inputs are being made on several workers is sent ahead too, to
//! the worker the cost puts it on, if that worker is short of ready work (otherwise it gains
//! nothing): its call names the inputs made elsewhere with
//! [`WireArg::AfterOn`](crate::remote::wire::WireArg::AfterOn), and the worker asks the
//! workers making them to say when they are made (sending the value along when it is
//! small). A stencil's border points, which read values made on both sides, then move from
//! step to step without the head.
//!
//! The head stays the owner of every task. A worker keeps track only of the tasks the head
//! marks (those with dependents when they are sent), and reports a task sent ahead only after
//! the tasks it waited for there, so the head learns of results in order. A report that
//! arrives before those of inputs made on other workers waits on the head until they arrived
//! ([`report_early`]). A task sent ahead of an input that is not made after all (its worker
//! died, the input failed there or was taken back to run elsewhere) goes back to waiting for
//! its inputs and is placed again when they are made. How deep a chain is sent ahead is
//! bounded by the placement cost: each task sent to a worker adds to its queued work, until
//! another place is as cheap, and the rest waits in the registry's frontier until the worker
//! reports tasks done.

use super::remote::RemoteTask;
use super::{Placement, Registry};
use crate::task::{state, Header, Job, JobRef};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Where a task that may run anywhere stands with respect to sending tasks ahead.
#[derive(Default)]
pub(crate) struct Ahead {
    /// Tasks spawned while it was not done that take its result (they may be sent ahead of
    /// it). Pruned of those no longer waiting whenever it is scanned.
    dependents: Vec<Weak<dyn Job>>,
    /// The worker it was sent to, while it runs there (0: none).
    sent_to: u32,
    /// Whether its worker keeps track of it, so that calls may be sent ahead of it.
    feeds: bool,
    /// Its place among the calls sent to that worker (see [`feeding_on`]).
    sent_seq: u64,
    /// Its worker's report that it ended, which came before the reports of some of its
    /// inputs made on other workers: handled once they all arrived.
    early: Option<Early>,
}

/// A report that came early (see [`report_early`]), kept until it can be handled.
pub(crate) trait EarlyReport: Send {
    /// Handles the report now.
    fn handle(self: Box<Self>);
}

/// A kept early report.
pub(crate) type Early = Box<dyn EarlyReport>;

thread_local! {
    /// Early reports whose inputs arrived while this thread handled another one (handled
    /// in turn by the outermost call, not recursively: a long chain of them cannot overflow
    /// the stack).
    static LATE: crate::unnest::Queue<Early> = const { std::cell::RefCell::new(None) };
}

fn lock(m: &Mutex<Ahead>) -> MutexGuard<'_, Ahead> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ahead_of(h: &Header) -> Option<&Mutex<Ahead>> {
    match &h.placement {
        Placement::Anywhere(a) => Some(&a.ahead),
        _ => None,
    }
}

/// The worker the task of `h` was sent to, if calls may be sent ahead of it there, and its
/// place among the calls sent to that worker: a worker asked about the task by another one
/// (a call sent ahead there names it) can tell from it whether the task has not reached it
/// yet (the head's messages and the other worker's travel on different connections) or
/// has come and gone.
pub(crate) fn feeding_on(h: &Header) -> Option<(u32, u64)> {
    let a = lock(ahead_of(h)?);
    (a.sent_to != 0 && a.feeds).then_some((a.sent_to, a.sent_seq))
}

/// Whether calls may be sent ahead of the task of `h` once it is sent: it has dependents.
pub(crate) fn will_feed(h: &Header) -> bool {
    ahead_of(h).is_some_and(|m| !lock(m).dependents.is_empty())
}

/// Records that the task of `h` was sent to `worker`, as call `seq` on the connection to
/// it, with `feeds` telling the worker to keep track of it (see [`will_feed`]).
pub(crate) fn mark_sent(h: &Header, worker: u32, feeds: bool, seq: u64) {
    if let Some(m) = ahead_of(h) {
        let mut a = lock(m);
        // It may have ended already (the worker's report can come first): then nothing is
        // sent ahead of it any more (see `finished`, which runs under this lock once it
        // ended).
        if h.state.is_done() {
            return;
        }
        a.sent_to = worker;
        a.feeds = feeds;
        a.sent_seq = seq;
    }
}

/// The task of `h` is no longer running on the worker it was sent to.
pub(crate) fn forget_sent(h: &Header) {
    if let Some(m) = ahead_of(h) {
        let mut a = lock(m);
        a.sent_to = 0;
        a.feeds = false;
        a.sent_seq = 0;
        a.early = None;
    }
}

/// The task of `a` is done: no task is sent ahead of it any more. If it completed (failed,
/// or was cancelled) while its worker's early report waited for its inputs, that report is
/// handled now (it finds the task complete).
pub(crate) fn finished(a: &super::Anywhere) {
    let early = {
        let mut a = lock(&a.ahead);
        a.dependents = Vec::new();
        a.sent_to = 0;
        a.feeds = false;
        a.early.take()
    };
    if let Some(handle) = early {
        handle_late(handle);
    }
}

/// The worker running the task of `h`, sent ahead of inputs made on other workers, reported
/// it ended before the head learnt that they did. Keeps `report` to handle once they all
/// have, or gives it back if they have by now (the caller then handles it): the head learns
/// of a task only after its inputs, so that it can always name their results for its
/// lineage.
pub(crate) fn report_early<R: EarlyReport + 'static>(h: &Header, report: Box<R>) -> Option<Box<R>> {
    let Some(m) = ahead_of(h) else {
        return Some(report);
    };
    let mut a = lock(m);
    // Sequentially consistent with `inputs_arrived`, which runs after the count reached 0.
    if h.pending.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        return Some(report);
    }
    a.early = Some(report);
    None
}

/// Every input of the task of `h` arrived while it ran (sent ahead of them): handles its
/// report if it came early.
pub(crate) fn inputs_arrived(h: &Header) {
    if let Some(handle) = ahead_of(h).and_then(|m| lock(m).early.take()) {
        handle_late(handle);
    }
}

/// Runs `handle`, or queues it if this thread is running another one (see [`LATE`]).
fn handle_late(handle: Early) {
    crate::unnest::unnested(&LATE, [handle], |h| h.handle());
}

/// Whether `w` has at most one task ready to run per thread (those sent ahead of their
/// inputs wait). A task sent ahead of inputs made on other workers costs messages between
/// them; it saves time only if it would otherwise wait for the head's round trip with
/// threads idle, not when ready work keeps them busy until the head places it.
fn short_of_work(w: &super::remote::RemoteWorker) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let ready = w
        .inflight
        .load(Relaxed)
        .saturating_sub(w.ahead.load(Relaxed));
    ready <= w.threads as usize
}

/// What became of an attempt to send a task ahead.
enum Sent {
    /// It was sent.
    Yes,
    /// Not now: its worker is too busy (try again when it reported tasks done).
    Busy,
    /// Not: it is not waiting, or its inputs are not all being made on one worker.
    No,
}

impl Registry {
    /// A task that may run anywhere was spawned and waits for its inputs: registers it with
    /// them (it may be sent ahead of them when they are sent to a worker), and sends it ahead
    /// now if they already are.
    pub(crate) fn track_waiting(&self, job: &JobRef) {
        let Placement::Anywhere(a) = &job.header().placement else {
            return;
        };
        let mut any_sent = false;
        for input in a.inputs.iter().filter_map(Weak::upgrade) {
            let ih = input.header();
            if ih.state.is_done() {
                continue;
            }
            if let Some(m) = ahead_of(ih) {
                let mut ia = lock(m);
                ia.dependents.push(Arc::downgrade(job));
                any_sent |= ia.sent_to != 0 && ia.feeds;
            }
        }
        if any_sent {
            let mut busy = Vec::new();
            match self.try_ahead(job, &mut busy) {
                Sent::Yes => {}
                Sent::Busy => self.keep_for_later(job),
                Sent::No => {}
            }
        }
    }

    /// `job` was sent to a worker: sends ahead of it those of its dependents whose inputs are
    /// all being made there (and, in turn, theirs).
    pub(crate) fn send_dependents_ahead(&self, job: JobRef) {
        let mut busy = Vec::new();
        // Most tasks have no dependents: no allocation for them.
        let mut next = Some(job);
        let mut work = Vec::new();
        // One list for the dependents of every task of the walk.
        let mut dependents: Vec<JobRef> = Vec::new();
        while let Some(job) = next.take().or_else(|| work.pop()) {
            let Some(m) = ahead_of(job.header()) else {
                continue;
            };
            lock(m).dependents.retain(|w| match w.upgrade() {
                Some(d) if d.header().state.load() == state::WAITING => {
                    dependents.push(d);
                    true
                }
                _ => false,
            });
            for d in dependents.drain(..) {
                match self.try_ahead(&d, &mut busy) {
                    Sent::Yes => work.push(d),
                    Sent::Busy => self.keep_for_later(&d),
                    Sent::No => {}
                }
            }
        }
    }

    /// A worker reported tasks done: tries again the tasks that waited for their worker to
    /// be less busy.
    pub(crate) fn retry_ahead(&self) {
        let waiting = std::mem::take(&mut *self.frontier_lock());
        if waiting.is_empty() {
            return;
        }
        let mut busy = Vec::new();
        let mut keep = Vec::new();
        for w in waiting {
            let Some(d) = w.upgrade() else { continue };
            if d.header().state.load() != state::WAITING {
                continue;
            }
            match self.try_ahead(&d, &mut busy) {
                Sent::Yes => self.send_dependents_ahead(d),
                Sent::Busy => keep.push(w),
                Sent::No => {}
            }
        }
        if !keep.is_empty() {
            self.frontier_lock().append(&mut keep);
        }
    }

    fn frontier_lock(&self) -> MutexGuard<'_, Vec<Weak<dyn Job>>> {
        self.frontier.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep_for_later(&self, job: &JobRef) {
        self.frontier_lock().push(Arc::downgrade(job));
    }

    /// Sends `job` ahead of its inputs if they are all being made on workers and the
    /// placement cost puts it on a worker. `busy` lists the workers found too busy so far
    /// for tasks whose inputs are all being made there (they are not weighed again).
    fn try_ahead(&self, job: &JobRef, busy: &mut Vec<u32>) -> Sent {
        let h = job.header();
        if h.state.load() != state::WAITING {
            return Sent::No;
        }
        let Placement::Anywhere(a) = &h.placement else {
            return Sent::No;
        };
        // The worker making all its unfinished inputs (0: none yet; u32::MAX: several).
        let mut home = 0;
        for input in a.inputs.iter().filter_map(Weak::upgrade) {
            let ih = input.header();
            if ih.state.is_done() {
                continue;
            }
            let Some(m) = ahead_of(ih) else {
                return Sent::No;
            };
            let ia = lock(m);
            if ia.sent_to == 0 || !ia.feeds {
                return Sent::No;
            }
            home = match home {
                0 => ia.sent_to,
                w if w == ia.sent_to => w,
                _ => u32::MAX,
            };
        }
        if home == 0 {
            return Sent::No;
        }
        if busy.contains(&home) {
            return Sent::Busy;
        }
        let est = self.estimate_anywhere(job);
        let (best, local) = self.anywhere_costs(job, a, None, est, true);
        let (worker, thread) = match best {
            Some((cost, w, thread))
                if (w.id == home || home == u32::MAX && short_of_work(&w))
                    && local.is_none_or(|l| cost < l) =>
            {
                (w, thread)
            }
            _ => {
                if home != u32::MAX {
                    busy.push(home);
                }
                return Sent::Busy;
            }
        };
        let target = worker.id;
        let Some(dispatch) = self.remote.dispatcher().cloned() else {
            return Sent::No;
        };
        if !h.state.claim_ahead() {
            return Sent::No;
        }
        let encoded = super::encode::encode_for(target, job);
        let Ok((call, inputs)) = encoded else {
            // An input stopped being made there, or is being made again: it waits as usual.
            crate::remote::requeue(job.clone());
            return Sent::No;
        };
        let task = RemoteTask::new(
            job.clone(),
            call,
            inputs,
            a.scope.clone(),
            thread,
            est,
            true,
        );
        task.send(&*dispatch, &worker);
        Sent::Yes
    }
}
