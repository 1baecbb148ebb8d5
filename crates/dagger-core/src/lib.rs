//! The core of dagger: tasks, lazy graphs, scopes, processors, options and the scheduler of
//! one process. Most users depend on the `dagger` facade crate instead, which re-exports this
//! API together with the `spawn!`/`delayed!` macros.
//!
//! ```
//! use dagger_core::{spawn, Options, Scope, spawn_with};
//! let a = spawn(|| 2);
//! let b = spawn_with(Options::new().name("b").scope(Scope::worker(0)), || 40);
//! let (a2, b2) = (a.clone(), b.clone());
//! let sum = spawn(move || a2.fetch().unwrap() + b2.fetch().unwrap());
//! assert_eq!(sum.fetch().unwrap(), 42);
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod chunk;
mod cluster;
mod context;
mod cpu;
mod datadeps;
mod error;
mod few;
mod hash;
mod id;
mod options;
mod processor;
#[doc(hidden)]
pub mod remote;
mod sched;
mod scope;
mod shard;
mod shared_bytes;
mod stats;
mod sync;
mod task;
mod thunk;
mod tls;
mod unnest;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use chunk::{mutable, tochunk, tochunk_on, Chunk};
pub use cluster::{init, ClusterOptions, WorkerInfo, WorkerStats};
pub use context::{
    all_processors, cancel_token, compatible_processors, current_processor, current_task_id,
    is_cancelled, num_processors, CancelToken, Cancelled, Context, ContextBuilder,
};
pub use dagger_net::launch::LaunchSpec;
pub use dagger_net::Secret;
pub use datadeps::{
    spawn_bulk, spawn_datadeps, spawn_datadeps_with, spawn_sequential, Access, Block, BlockMut,
    BlockRef, Call, CostPlanner, Data, DatadepsOptions, Declarations, In, InOut, Out, Output, Part,
    Parts, PlanData, PlanProc, PlanTask, Planner, Region, RegionTask, RemoteAccess, RemoteArg,
    RemoteArgs, RoundRobin, Slice, Target, TransferStats, Transfers, Traversal, Val, WorkStealing,
    DEFAULT_COST_NS,
};
pub use error::{BoxError, Error, ErrorKind, Result, ScopeError, TaskError};
pub use id::{NodeId, ProcessorId, ProcessorKind, TaskId, WorkerId};
pub use options::{
    clear_default_options, get_options, set_default_options, with_options, Options, TaskInfo,
};
pub use processor::{ArgType, ExecTask, OsProc, Processor, TaskSignature, ThreadProc};
pub use scope::{register_scope_key, Scope, ScopeKeyFn, ScopeSpec, ScopeValue};
pub use shard::{shard, shard_in, shard_per_thread, Shard};
pub use shared_bytes::SharedBytes;
pub use stats::live_results;
pub use task::{
    fetch_all, spawn, spawn_with, sync, try_spawn, try_spawn_with, wait_all, DTask, TaskFuture,
};
pub use thunk::{collect, compute, compute_with, Thunk};
