//! Groups of tasks that are waited for together: `sync` blocks and lazy-graph runs.

use super::{abort_with, cancel_job, input_ready, JobRef, Waiter};
use crate::error::TaskError;
use crate::tls::CTX;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

/// Tasks spawned inside one `sync` block or one graph run.
pub(crate) struct Group {
    tasks: Mutex<Vec<JobRef>>,
    aborted: OnceLock<TaskError>,
    /// Every failure aborts the group (graph runs with `allow_errors(false)`).
    pub(crate) abort_on_any: bool,
    /// For a task queue (`spawn_sequential`, `spawn_bulk`): how it orders its tasks.
    queue: Option<Queue>,
    /// The group that was current where a task queue was opened; it sees the queue's tasks.
    parent: Option<Arc<Group>>,
}

/// How a task queue treats the tasks spawned in it.
pub(crate) enum Queue {
    /// Each task waits for the one spawned before it (`spawn_sequential`).
    Sequential(Mutex<Option<JobRef>>),
    /// Tasks are held until the block ends (`spawn_bulk`).
    Bulk(Mutex<Vec<JobRef>>),
}

impl Group {
    pub(crate) fn new(abort_on_any: bool) -> Arc<Group> {
        Arc::new(Group {
            tasks: Mutex::new(Vec::new()),
            aborted: OnceLock::new(),
            abort_on_any,
            queue: None,
            parent: None,
        })
    }

    /// A task queue opened inside `parent` (the group current where it was opened).
    pub(crate) fn queue(queue: Queue, parent: Option<Arc<Group>>) -> Arc<Group> {
        Arc::new(Group {
            tasks: Mutex::new(Vec::new()),
            aborted: OnceLock::new(),
            abort_on_any: false,
            queue: Some(queue),
            parent,
        })
    }

    /// Whether this group is, or is inside, a `spawn_bulk` block.
    pub(crate) fn in_bulk(&self) -> bool {
        matches!(self.queue, Some(Queue::Bulk(_)))
            || self.parent.as_ref().is_some_and(|p| p.in_bulk())
    }

    /// Releases the tasks a `spawn_bulk` block held back.
    pub(crate) fn release(&self) {
        if let Some(Queue::Bulk(held)) = &self.queue {
            let held = std::mem::take(&mut *held.lock().unwrap_or_else(|e| e.into_inner()));
            for job in held {
                input_ready(job);
            }
        }
    }

    /// Adds a task being spawned (it still holds its spawner's pending count).
    pub(crate) fn add(&self, job: &JobRef) {
        match &self.queue {
            None => self.collect(job),
            Some(queue) => {
                match queue {
                    Queue::Sequential(last) => {
                        let prev = last
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .replace(job.clone());
                        if let Some(prev) = prev {
                            after(&prev, job);
                        }
                    }
                    Queue::Bulk(held) => {
                        job.header().pending.fetch_add(1, Ordering::AcqRel);
                        held.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(job.clone());
                    }
                }
                if let Some(p) = &self.parent {
                    p.add(job);
                }
            }
        }
    }

    fn collect(&self, job: &JobRef) {
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
        if self.queue.is_some() {
            if let Some(p) = &self.parent {
                p.abort(err);
            }
            return;
        }
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

/// Makes `job` (being spawned) wait for `prev` as if it were an input.
fn after(prev: &JobRef, job: &JobRef) {
    let h = job.header();
    h.pending.fetch_add(1, Ordering::AcqRel);
    if prev
        .header()
        .waiters
        .push(Waiter::Task(job.clone()))
        .is_err()
    {
        match prev.error() {
            Some(cause) => {
                abort_with(job, TaskError::upstream(h.id, h.name(), &cause));
            }
            None => {
                h.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// The group collecting tasks spawned on this thread.
pub(crate) fn current() -> Option<Arc<Group>> {
    CTX.with(|c| crate::tls::peek(&c.group))
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
