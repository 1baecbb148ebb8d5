//! Lazy graphs: `Thunk<T>` nodes built without running, then computed as a whole.

use crate::chunk::Chunk;
use crate::context::Context;
use crate::error::TaskError;
use crate::options::{Options, TaskInfo};
use crate::task::{with_group, DTask, Group};
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A spawned graph node, type-erased (holds a `DTask<T>`).
#[doc(hidden)]
pub struct ErasedTask {
    typed: Box<dyn Any + Send + Sync>,
}

impl ErasedTask {
    pub(crate) fn new<T: Send + Sync + 'static>(t: DTask<T>) -> Self {
        ErasedTask { typed: Box::new(t) }
    }

    pub(crate) fn task<T: Send + Sync + 'static>(&self) -> DTask<T> {
        self.typed
            .downcast_ref::<DTask<T>>()
            .expect("graph inputs have the type their thunk declares")
            .clone()
    }
}

/// Spawns a node's task, given the tasks of its graph inputs (grouped by argument).
pub(crate) type Spawner = Box<dyn Fn(&[Vec<&ErasedTask>]) -> ErasedTask + Send + Sync>;

/// A node of a lazy graph (see [`Thunk`]).
#[doc(hidden)]
pub struct ThunkNode {
    pub(crate) id: u64,
    pub(crate) name: Option<&'static str>,
    /// Graph inputs, grouped by argument position.
    pub(crate) inputs: Vec<Vec<Arc<ThunkNode>>>,
    pub(crate) spawner: Spawner,
}

impl Drop for ThunkNode {
    fn drop(&mut self) {
        // Unlink deep graphs iteratively: a chain of a million thunks must not overflow the
        // stack when its last handle is dropped.
        let mut stack: Vec<Arc<ThunkNode>> = self.inputs.drain(..).flatten().collect();
        while let Some(node) = stack.pop() {
            if let Ok(mut inner) = Arc::try_unwrap(node) {
                stack.extend(inner.inputs.drain(..).flatten());
            }
        }
    }
}

/// A node of a lazy task graph (the reference's `Thunk`, made by `delayed!`/`@par`).
///
/// Nothing runs until the graph is computed with [`compute`] or [`collect`]; then every node
/// reachable from the root runs once, even when several nodes use it.
pub struct Thunk<T> {
    pub(crate) node: Arc<ThunkNode>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Thunk<T> {
    fn clone(&self) -> Self {
        Thunk {
            node: self.node.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Thunk<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thunk")
            .field("id", &self.node.id)
            .field("name", &self.node.name)
            .field(
                "inputs",
                &self
                    .node
                    .inputs
                    .iter()
                    .flatten()
                    .map(|n| n.id)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<T: Send + Sync + 'static> Thunk<T> {
    pub(crate) fn from_parts(
        name: Option<&'static str>,
        inputs: Vec<Vec<Arc<ThunkNode>>>,
        spawner: impl Fn(&[Vec<&ErasedTask>]) -> DTask<T> + Send + Sync + 'static,
    ) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Thunk {
            node: Arc::new(ThunkNode {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                name,
                inputs,
                spawner: Box::new(move |inputs| ErasedTask::new(spawner(inputs))),
            }),
            _t: PhantomData,
        }
    }

    /// A number identifying this node among the thunks of the process.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// The name of the node's function, if known.
    pub fn name(&self) -> Option<&'static str> {
        self.node.name
    }

    /// The number of distinct nodes in the graph reachable from this one (itself included).
    pub fn graph_size(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![&self.node];
        while let Some(n) = stack.pop() {
            if seen.insert(Arc::as_ptr(n)) {
                stack.extend(n.inputs.iter().flatten());
            }
        }
        seen.len()
    }
}

/// Spawns every node reachable from `root` (inputs first), each once; returns the root's task.
fn spawn_graph(root: &Arc<ThunkNode>) -> ErasedTask {
    let mut memo: HashMap<*const ThunkNode, ErasedTask> = HashMap::new();
    let mut stack: Vec<(&Arc<ThunkNode>, bool)> = vec![(root, false)];
    while let Some((node, inputs_done)) = stack.pop() {
        let key = Arc::as_ptr(node);
        if memo.contains_key(&key) {
            continue;
        }
        if !inputs_done {
            stack.push((node, true));
            for input in node.inputs.iter().flatten() {
                if !memo.contains_key(&Arc::as_ptr(input)) {
                    stack.push((input, false));
                }
            }
            continue;
        }
        let inputs: Vec<Vec<&ErasedTask>> = node
            .inputs
            .iter()
            .map(|arg| arg.iter().map(|n| &memo[&Arc::as_ptr(n)]).collect())
            .collect();
        let task = (node.spawner)(&inputs);
        drop(inputs);
        memo.insert(key, task);
    }
    // Intermediate results are now held only by the tasks that consume them.
    memo.remove(&Arc::as_ptr(root))
        .expect("the root is spawned last")
}

impl Context {
    /// Runs the graph of `thunk` in this context and returns the root's result as a chunk
    /// (the reference's `compute`).
    pub fn compute<T: Send + Sync + 'static>(
        &self,
        thunk: &Thunk<T>,
    ) -> Result<Chunk<T>, TaskError> {
        self.compute_with(thunk, Options::new())
    }

    /// Like [`compute`](Context::compute), with graph options:
    ///
    /// * `allow_errors(false)`: the first failing task cancels the rest of the graph, and its
    ///   error is returned (with `true`, the default, failures only reach their dependents);
    /// * `restore`: asked first for a saved result of the whole graph (keyed by the option's
    ///   `name`); when it gives one, nothing runs;
    /// * `checkpoint`: given the root's result after a successful run;
    /// * every other option applies to every task of the graph, as with
    ///   [`with_options`](crate::with_options).
    pub fn compute_with<T: Send + Sync + 'static>(
        &self,
        thunk: &Thunk<T>,
        mut opts: Options,
    ) -> Result<Chunk<T>, TaskError> {
        let allow_errors = opts.allow_errors.take().unwrap_or(true);
        let checkpoint = opts.checkpoint.take();
        let restore = opts.restore.take();
        let info_name = opts.name.take();
        let id = crate::id::TaskId::next();
        let info = TaskInfo {
            id,
            name: info_name.as_deref().or(thunk.node.name),
        };
        if let Some(restore) = &restore {
            if let Some(v) = restore(&info, std::any::TypeId::of::<T>()) {
                if let Ok(v) = v.downcast::<T>() {
                    return Ok(self.enter(|| Chunk::new(*v)));
                }
            }
        }
        let group = Group::new(!allow_errors);
        let root = self.enter(|| {
            with_group(&group, || {
                if opts.is_empty() {
                    spawn_graph(&thunk.node)
                } else {
                    crate::options::with_options(opts, || spawn_graph(&thunk.node))
                }
            })
        });
        let root: DTask<T> = root.task();
        let outcome = root.fetch_ref().map(|_| ());
        if let Some(err) = group.aborted() {
            return Err(err.clone());
        }
        outcome?;
        if let Some(save) = &checkpoint {
            if let Ok(v) = root.fetch_ref() {
                if let Some(Err(e)) = save(&info, v) {
                    log::warn!("checkpoint of graph {} failed: {e}", thunk.node.id);
                }
            }
        }
        Ok(Chunk::from_task(root))
    }

    /// Runs the graph of `thunk` and returns the root's value (the reference's `collect`).
    pub fn collect<T: Clone + Send + Sync + 'static>(
        &self,
        thunk: &Thunk<T>,
    ) -> Result<T, TaskError> {
        self.compute(thunk)?.fetch()
    }
}

/// Runs the graph of `thunk` in the current context; see [`Context::compute`].
pub fn compute<T: Send + Sync + 'static>(thunk: &Thunk<T>) -> Result<Chunk<T>, TaskError> {
    Context::current().compute(thunk)
}

/// Runs the graph of `thunk` in the current context with graph options; see
/// [`Context::compute_with`].
pub fn compute_with<T: Send + Sync + 'static>(
    thunk: &Thunk<T>,
    opts: Options,
) -> Result<Chunk<T>, TaskError> {
    Context::current().compute_with(thunk, opts)
}

/// Runs the graph of `thunk` in the current context and returns the root's value.
pub fn collect<T: Clone + Send + Sync + 'static>(thunk: &Thunk<T>) -> Result<T, TaskError> {
    Context::current().collect(thunk)
}
