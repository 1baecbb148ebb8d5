//! Running tasks in other processes: the table of registered task functions, the wire forms
//! of calls and values. (Networking is elsewhere: the cluster layer uses these.)

pub mod data;
pub mod functions;
pub mod store;
pub mod wire;

pub use crate::sched::remote::{Dispatch, RemoteTask, RemoteWorker};
pub use data::{DataLink, Input, Lineage, RemoteData};

use crate::context::Context;
use crate::error::ErrorKind;
use std::sync::Arc;

/// What running a call in place gives: the encoded result and run time, or how the call
/// failed; the outer error says the worker could not be asked or did not answer.
pub(crate) type RanInPlace = Result<Result<(Ran, u64), (ErrorKind, String)>, String>;

/// The result of a call run in place.
pub(crate) enum Ran {
    /// Its encoding, sent here.
    Bytes(bytes::Bytes),
    /// Kept where it was made, at this location; its encoding too when it is small.
    Kept(wire::Location, Option<bytes::Bytes>),
}

/// How a data-dependency region moves values between the head and its workers (blocking
/// calls; implemented by the cluster layer).
pub(crate) trait Mover: Send + Sync {
    /// Has worker `worker` keep `bytes` (an encoded value).
    fn put(&self, worker: u32, bytes: bytes::Bytes) -> Result<wire::Location, String>;
    /// Has worker `worker` copy the value at `from` (directly from the worker holding it).
    fn pull(&self, worker: u32, from: wire::Location) -> Result<wire::Location, String>;
    /// The encoded value at `loc`.
    fn fetch(&self, loc: wire::Location) -> Result<bytes::Bytes, String>;
    /// Drops the value at `loc`.
    fn free(&self, loc: wire::Location);
    /// Runs `call` on worker `worker`, changing the arguments marked in `writes` in place
    /// there; the encoded result and the run time. The outer error: the worker could not be
    /// asked or did not answer; the inner one: how the call failed. With `keep`, the worker
    /// keeps the result ([`Ran::Kept`]).
    fn run_in_place(
        &self,
        worker: u32,
        call: wire::WireCall,
        writes: Vec<bool>,
        keep: bool,
    ) -> RanInPlace;
    /// Reaches the values workers keep for this process (`None` once the cluster is gone).
    fn link(&self) -> Option<Arc<dyn data::DataLink>>;
}

/// Makes `ctx` a head process: tasks calling registered functions may now be sent to worker
/// processes through `dispatch`. Returns false if a cluster was already attached.
pub fn attach(ctx: &Context, dispatch: Arc<dyn Dispatch>) -> bool {
    ctx.registry_ref().remote.attach(dispatch)
}

/// A worker process joined.
pub fn add_worker(ctx: &Context, worker: Arc<RemoteWorker>) {
    ctx.registry_ref().remote.add(worker);
}

/// A worker process left (or died); returns it if it was known.
pub fn remove_worker(ctx: &Context, id: u32) -> Option<Arc<RemoteWorker>> {
    ctx.registry_ref().remote.remove(id)
}

/// The worker processes `ctx` can send tasks to.
pub fn workers(ctx: &Context) -> Vec<Arc<RemoteWorker>> {
    ctx.registry_ref().remote.snapshot().to_vec()
}

impl RemoteTask {
    /// The task finished on its worker; its value is `data`.
    pub fn complete(self, data: Arc<RemoteData>) {
        self.job.complete_remote(Ok(data));
    }

    /// Like [`complete`](Self::complete), also learning the function's run time there.
    pub fn complete_timed(self, data: Arc<RemoteData>, run_ns: u64) {
        if let Some(reg) = crate::sched::registry_by_id(self.job.header().registry) {
            reg.estimates
                .record(self.job.signature(), crate::ProcessorKind::THREAD, run_ns);
        }
        self.complete(data);
    }

    /// The task failed on its worker (or could not run there).
    pub fn fail(self, kind: ErrorKind, message: String) {
        self.job.complete_remote(Err((kind, message)));
    }

    /// Places the task again (its worker died or lost an input); false if it was cancelled
    /// meanwhile.
    pub(crate) fn requeue(self) -> bool {
        requeue(self.job)
    }

    /// Splits the task into the job and how its result can be made again.
    pub(crate) fn into_parts(self) -> (crate::task::JobRef, Lineage) {
        let label = self.job.header().label();
        (
            self.job,
            Lineage::new(self.call, self.scope, self.inputs, label),
        )
    }

    /// [`into_parts`](Self::into_parts), for a caller that sets the lineage's inputs at once
    /// ([`Lineage::set_inputs`]) or drops it: its history is bounded then, not twice.
    pub(crate) fn into_parts_unbounded(self) -> (crate::task::JobRef, Lineage) {
        let label = self.job.header().label();
        (
            self.job,
            Lineage::unbounded(self.call, self.scope, self.inputs, label),
        )
    }

    /// Whether the task was cancelled (or otherwise completed) while it ran elsewhere.
    pub fn is_finished(&self) -> bool {
        self.job.header().state.load() >= crate::task::state::COMPLETING
    }
}

/// Places a claimed task again once its inputs are all here (at once when they are; a task
/// sent ahead of its inputs goes back to waiting for them); false if it was cancelled
/// meanwhile.
pub(crate) fn requeue(job: crate::task::JobRef) -> bool {
    let h = job.header();
    crate::sched::ahead::forget_sent(h);
    if !h.state.wait_again() {
        job.end_claim();
        return false;
    }
    // Sequentially consistent with `input_ready`: either it sees WAITING and makes the task
    // ready, or this sees its input count at zero.
    if h.pending.load(std::sync::atomic::Ordering::SeqCst) == 0 && h.state.make_ready() {
        crate::sched::schedule(job);
    }
    true
}

/// Completes a task whose value now lives in another process, learning the function's run
/// time there.
pub(crate) fn complete_job(job: &crate::task::JobRef, data: Arc<RemoteData>, run_ns: u64) {
    if let Some(reg) = crate::sched::registry_by_id(job.header().registry) {
        reg.estimates
            .record(job.signature(), crate::ProcessorKind::THREAD, run_ns);
    }
    job.complete_remote(Ok(data));
}
