//! Running tasks in other processes: the table of registered task functions, the wire forms
//! of calls and values. (Networking is elsewhere: the cluster layer uses these.)

pub mod functions;
pub mod store;
pub mod wire;

pub use crate::sched::remote::{Dispatch, RemoteTask, RemoteWorker};
pub use crate::task::{DataLink, RemoteData};

use crate::context::Context;
use crate::error::ErrorKind;
use std::sync::Arc;

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

    /// The task failed on its worker (or could not run there).
    pub fn fail(self, kind: ErrorKind, message: String) {
        self.job.complete_remote(Err((kind, message)));
    }

    /// Whether the task was cancelled (or otherwise completed) while it ran elsewhere.
    pub fn is_finished(&self) -> bool {
        self.job.header().state.load() >= crate::task::state::COMPLETING
    }
}

impl RemoteData {
    /// A value at `loc`, reached (and freed when dropped) through `link`.
    pub fn new(loc: wire::Location, link: Arc<dyn DataLink>) -> Arc<RemoteData> {
        Arc::new(RemoteData { loc, link })
    }

    /// Where the value is.
    pub fn location(&self) -> wire::Location {
        self.loc
    }
}
