//! Sharded values: one piece per process (or per thread), each made and kept where it lives;
//! a task given the shard receives the piece of the process or thread it runs on.

use crate::chunk::Chunk;
use crate::context::{current_processor, Context};
use crate::error::TaskError;
use crate::id::ProcessorKind;
use crate::scope::Scope;
use crate::task::DTask;
use std::fmt;
use std::sync::Arc;

/// One value per process or per thread of the context, made by [`shard`] or
/// [`shard_per_thread`] (the reference's `shard`).
///
/// Pass `&shard` to a `spawn!` call and the function receives `&T`: the piece of the process
/// (or thread) the task runs on, wherever that is, without moving any piece. Tasks given a
/// shard run only where it has a piece. Inside a closure task on this process,
/// [`local`](Self::local) gives the piece of the current processor. Cloning a shard is
/// cheap; the pieces are freed with the last clone.
///
/// ```
/// use dagger_core::{shard_per_thread, spawn_with, Options, Scope};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// // One counter per thread: tasks count without contending for one counter.
/// let counters = shard_per_thread(|scope| {
///     spawn_with(Options::new().scope(scope), || AtomicU64::new(0))
/// })
/// .unwrap();
/// let tasks: Vec<_> = (0..100)
///     .map(|_| {
///         let c = counters.clone();
///         spawn_with(Options::new().scope(c.scope()), move || {
///             c.local().unwrap().fetch_add(1, Ordering::Relaxed);
///         })
///     })
///     .collect();
/// dagger_core::wait_all(&tasks).unwrap();
/// let total: u64 = counters
///     .pieces()
///     .iter()
///     .map(|p| p.fetch_ref().unwrap().load(Ordering::Relaxed))
///     .sum();
/// assert_eq!(total, 100);
/// ```
pub struct Shard<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    pieces: Vec<Piece<T>>,
    scope: Scope,
}

struct Piece<T> {
    worker: u32,
    /// The thread, for a shard with a piece per thread.
    thread: Option<u32>,
    chunk: Chunk<T>,
}

impl<T> Clone for Shard<T> {
    fn clone(&self) -> Self {
        Shard {
            inner: self.inner.clone(),
        }
    }
}

/// Makes one value in each process of the context (this one and every worker process): calls
/// `make` with the scope of each process and waits for the tasks it returns. Their results
/// stay where they were made.
///
/// With worker processes, `make` must spawn a registered function (`#[dagger::task]`), since
/// a closure cannot run in another process:
///
/// ```text
/// let caches = shard(|scope| spawn!(new_cache(); scope = scope))?;
/// let hits = spawn!(lookup(&caches, key)); // `lookup(cache: &Cache, key: u64)`
/// ```
///
/// The first piece that fails to be made is the error (the others are freed).
///
/// ```
/// use dagger_core::{shard, spawn_with, Options};
/// let s = shard(|scope| spawn_with(Options::new().scope(scope), || vec![0u8; 16])).unwrap();
/// assert_eq!(s.len(), 1); // no worker processes: one piece, here
/// ```
pub fn shard<T, F>(make: F) -> Result<Shard<T>, TaskError>
where
    T: Send + Sync + 'static,
    F: FnMut(Scope) -> DTask<T>,
{
    shard_in(&Scope::any(), false, make)
}

/// Like [`shard`], with one piece per thread of every process: `make` gets the scope of each
/// thread.
///
/// ```
/// use dagger_core::{shard_per_thread, spawn_with, Options};
/// let s = shard_per_thread(|scope| spawn_with(Options::new().scope(scope), || 0u32)).unwrap();
/// assert_eq!(s.len(), dagger_core::Context::current().num_threads());
/// ```
pub fn shard_per_thread<T, F>(make: F) -> Result<Shard<T>, TaskError>
where
    T: Send + Sync + 'static,
    F: FnMut(Scope) -> DTask<T>,
{
    shard_in(&Scope::any(), true, make)
}

/// Like [`shard`] (or, `per_thread`, [`shard_per_thread`]), with pieces only in the processes
/// (threads) that `within` covers (the reference's `workers` and `procs` keywords). Fails with
/// a scheduling error when `within` covers none.
///
/// ```
/// use dagger_core::{shard_in, spawn_with, Options, Scope};
/// let one = shard_in(&Scope::worker(0).thread(0), true, |scope| {
///     spawn_with(Options::new().scope(scope), || 1u8)
/// })
/// .unwrap();
/// assert_eq!(one.len(), 1);
/// assert!(shard_in(&Scope::worker(9), false, |s| spawn_with(Options::new().scope(s), || 1u8))
///     .is_err());
/// ```
pub fn shard_in<T, F>(within: &Scope, per_thread: bool, make: F) -> Result<Shard<T>, TaskError>
where
    T: Send + Sync + 'static,
    F: FnMut(Scope) -> DTask<T>,
{
    let ctx = Context::current();
    let here = Scope::worker(0)
        .constrain(&Scope::kind(ProcessorKind::THREAD))
        .constrain(within);
    let here: Vec<u32> = ctx
        .compatible_processors(&here)
        .into_iter()
        .filter_map(|p| p.thread_index())
        .collect();
    let mut places: Vec<(u32, Option<u32>)> = match (per_thread, here.is_empty()) {
        (true, _) => here.into_iter().map(|t| (0, Some(t))).collect(),
        (false, false) => vec![(0, None)],
        (false, true) => Vec::new(),
    };
    let mut workers = crate::remote::workers(&ctx);
    workers.sort_by_key(|w| w.id);
    for w in workers
        .iter()
        .filter(|w| w.alive.load(std::sync::atomic::Ordering::Acquire))
    {
        let threads = w.all_threads_in(within);
        match (per_thread, threads.is_empty()) {
            (true, _) => places.extend(threads.into_iter().map(|t| (w.id, Some(t)))),
            (false, false) => places.push((w.id, None)),
            (false, true) => {}
        }
    }
    if places.is_empty() {
        return Err(TaskError::with_message(
            crate::id::TaskId::next(),
            Some("shard".into()),
            crate::error::ErrorKind::Scheduling,
            format!("no process of the cluster has a processor in scope `{within}` for a piece"),
        ));
    }
    Shard::make(places, make)
}

fn scope_of(worker: u32, thread: Option<u32>) -> Scope {
    match thread {
        Some(t) => Scope::worker(worker).thread(t),
        None => Scope::worker(worker),
    }
}

impl<T: Send + Sync + 'static> Shard<T> {
    fn make(
        places: Vec<(u32, Option<u32>)>,
        mut make: impl FnMut(Scope) -> DTask<T>,
    ) -> Result<Shard<T>, TaskError> {
        let tasks: Vec<(u32, Option<u32>, DTask<T>)> = places
            .into_iter()
            .map(|(w, t)| (w, t, make(scope_of(w, t))))
            .collect();
        let mut pieces = Vec::with_capacity(tasks.len());
        for (worker, thread, task) in tasks {
            pieces.push(Piece {
                worker,
                thread,
                chunk: task.into_chunk()?,
            });
        }
        let scope = Scope::union_of(pieces.iter().map(|p| scope_of(p.worker, p.thread)))
            .unwrap_or_else(|_| Scope::worker(0));
        Ok(Shard {
            inner: Arc::new(Inner { pieces, scope }),
        })
    }

    /// How many pieces there are.
    pub fn len(&self) -> usize {
        self.inner.pieces.len()
    }

    /// Whether there is no piece (never, for a shard [`shard`] made).
    pub fn is_empty(&self) -> bool {
        self.inner.pieces.is_empty()
    }

    /// Where the pieces are: tasks using the shard must run there.
    pub fn scope(&self) -> Scope {
        self.inner.scope.clone()
    }

    /// Every piece, for instance to combine them (`spawn!(merge(&shard.pieces()))`).
    pub fn pieces(&self) -> Vec<Chunk<T>> {
        self.inner.pieces.iter().map(|p| p.chunk.clone()).collect()
    }

    /// The piece of the processor running the caller, if it has one in this process.
    pub fn local(&self) -> Option<&T> {
        self.local_piece().ok()
    }

    pub(crate) fn local_piece(&self) -> Result<&T, String> {
        let here = current_processor();
        let thread = here.thread_index();
        self.inner
            .pieces
            .iter()
            .find(|p| p.worker == here.worker.0 && p.thread.is_none_or(|t| Some(t) == thread))
            .and_then(|p| p.chunk.fetch_ref().ok())
            .ok_or_else(|| format!("the shard has no piece on {here}, where the task runs"))
    }

    /// The pieces held by worker processes, as the wire names them.
    pub(crate) fn remote_pieces(&self) -> Vec<(crate::remote::wire::Location, Option<u32>)> {
        self.inner
            .pieces
            .iter()
            .filter_map(|p| {
                let data = p.chunk.cell.remote_data()?;
                data.try_location().ok().map(|loc| (loc, p.thread))
            })
            .collect()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Shard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("pieces", &self.len())
            .field("scope", &self.inner.scope)
            .finish()
    }
}
