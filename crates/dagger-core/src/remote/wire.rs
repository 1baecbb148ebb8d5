//! What crosses process boundaries: calls of registered functions, their arguments, where
//! values live.

use serde::{Deserialize, Serialize};

/// Where a value lives: a process and the value's id in that process's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// The worker process holding the value (0 is the head).
    pub worker: u32,
    /// The value's id in that process's store.
    pub id: u64,
    /// Encoded size in bytes, when known (0 otherwise).
    pub bytes: u64,
}

/// One argument of a remote call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireArg {
    /// The encoded value itself.
    Value(Vec<u8>),
    /// A value stored in some process.
    Ref(Location),
    /// A collection of values (from a collection of tasks or chunks), each `Value` or `Ref`.
    Many(Vec<WireArg>),
    /// The piece of a shard kept by the process (and, where given, the thread) that runs the
    /// call.
    Local(Vec<(Location, Option<u32>)>),
    /// The result of the head's task with this id, which was sent to the same worker before
    /// this call and has not ended yet: the call starts once that task ended there (a call
    /// sent ahead of its input).
    After(u64),
    /// The result of the head's task `task`, which was sent to worker `worker` (another one)
    /// and has not ended yet: the call asks that worker to say when it ended there, and
    /// starts once it has (a call sent ahead of an input made elsewhere).
    AfterOn {
        /// The head's id of the task.
        task: u64,
        /// The worker it was sent to.
        worker: u32,
        /// Its place among the calls the head sent that worker (1 for the first): the
        /// worker has not received it yet while it received fewer calls than that.
        seq: u64,
    },
}

impl WireArg {
    /// Whether this is an `AfterOn` naming head task `task` made on worker `worker`.
    pub(crate) fn is_after_on(&self, task: u64, worker: u32) -> bool {
        matches!(self, WireArg::AfterOn { task: t, worker: w, .. } if (*t, *w) == (task, worker))
    }

    /// Calls `f` on each argument of `args` that is not a collection, depth first.
    pub(crate) fn each(args: &[WireArg], f: &mut impl FnMut(&WireArg)) {
        for a in args {
            match a {
                WireArg::Many(items) => WireArg::each(items, f),
                other => f(other),
            }
        }
    }

    /// Like [`each`](WireArg::each), letting `f` change the arguments.
    pub(crate) fn each_mut(args: &mut [WireArg], f: &mut impl FnMut(&mut WireArg)) {
        for a in args {
            match a {
                WireArg::Many(items) => WireArg::each_mut(items, f),
                other => f(other),
            }
        }
    }
}

/// Options a remote task runs with (the serialisable ones: hooks stay home).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireOptions {
    /// Task name.
    pub name: Option<String>,
    /// Priority.
    pub priority: Option<i32>,
    /// Expected run time in nanoseconds.
    pub time_util_ns: Option<u64>,
    /// Expected memory use.
    pub alloc_util: Option<u64>,
    /// Occupancy.
    pub occupancy: Option<f64>,
    /// Whether errors are allowed.
    pub allow_errors: Option<bool>,
    /// The `with_options` options the task inherited (passed on to tasks it spawns).
    pub inherited: Option<Box<WireOptions>>,
}

/// A call of a registered function, as sent to the process that runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireCall {
    /// Dense id of the function in the (shared) function table.
    pub func: u32,
    /// The arguments.
    pub args: Vec<WireArg>,
    /// Thread the call must run on, for exactly-scoped tasks.
    pub thread: Option<u32>,
    /// Options.
    pub options: WireOptions,
}
