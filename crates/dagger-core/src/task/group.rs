//! Groups of tasks that are waited for together: `sync` blocks and lazy-graph runs.

use super::{cancel_job, JobRef};
use crate::error::TaskError;
use crate::tls::CTX;
use std::sync::{Arc, Mutex, OnceLock};

/// Tasks spawned inside one `sync` block or one graph run.
pub(crate) struct Group {
    tasks: Mutex<Vec<JobRef>>,
    aborted: OnceLock<TaskError>,
    /// Every failure aborts the group (graph runs with `allow_errors(false)`).
    pub(crate) abort_on_any: bool,
}

impl Group {
    pub(crate) fn new(abort_on_any: bool) -> Arc<Group> {
        Arc::new(Group {
            tasks: Mutex::new(Vec::new()),
            aborted: OnceLock::new(),
            abort_on_any,
        })
    }

    pub(crate) fn add(&self, job: &JobRef) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job.clone());
        if self.aborted.get().is_some() {
            cancel_job(job);
        }
    }

    /// A task whose failure aborts the group failed: cancel every other task.
    pub(crate) fn abort(&self, err: &TaskError) {
        if self.aborted.set(err.clone()).is_err() {
            return;
        }
        let tasks: Vec<JobRef> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for t in &tasks {
            cancel_job(t);
        }
    }

    pub(crate) fn aborted(&self) -> Option<&TaskError> {
        self.aborted.get()
    }

    /// Waits for every task; the abort error, else the first failure in spawn order.
    pub(crate) fn wait(&self) -> Result<(), TaskError> {
        let mut first: Option<TaskError> = None;
        let mut i = 0;
        loop {
            let next = self
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(i)
                .cloned();
            let Some(job) = next else { break };
            crate::sched::wait_for(job.header(), &job);
            if first.is_none() {
                first = job.error();
            }
            i += 1;
        }
        match (self.aborted.get(), first) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }
}

fn restore_current(g: Option<Arc<Group>>) {
    CTX.with(|c| c.group.set(g));
}

struct Restore(Option<Arc<Group>>);

impl Drop for Restore {
    fn drop(&mut self) {
        restore_current(self.0.take());
    }
}

/// Runs `f` with `group` collecting the tasks spawned on this thread.
pub(crate) fn with_group<R>(group: &Arc<Group>, f: impl FnOnce() -> R) -> R {
    let prev = CTX.with(|c| c.group.replace(Some(group.clone())));
    let _restore = Restore(prev);
    f()
}

/// Runs `f`, then waits for every task spawned directly inside it (the reference's `@sync`),
/// and reports the first failure.
///
/// Tasks spawned with [`Options::allow_errors(false)`](crate::Options::allow_errors) abort the
/// block when they fail: the block's other tasks are cancelled and that failure is reported.
/// Tasks spawned from inside those tasks are not part of the block.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// let count = Arc::new(AtomicUsize::new(0));
/// let c = count.clone();
/// dagger_core::sync(|| {
///     for _ in 0..10 {
///         let c = c.clone();
///         dagger_core::spawn(move || c.fetch_add(1, Ordering::Relaxed));
///     }
/// })
/// .unwrap();
/// assert_eq!(count.load(Ordering::Relaxed), 10);
/// ```
pub fn sync<R>(f: impl FnOnce() -> R) -> Result<R, TaskError> {
    let group = Group::new(false);
    let r = with_group(&group, f);
    group.wait()?;
    Ok(r)
}
