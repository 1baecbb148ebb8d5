//! Data-dependency regions (the reference's `spawn_datadeps`, `In`, `Out`, `InOut`): tasks that
//! borrow shared data in place, ordered by the accesses they declare.
//!
//! * [`tracker`]: derives each task's predecessors from its declared accesses (per piece of
//!   data: writes and reads since the last covering write; spans for views, blocks, parts).
//! * [`access`]: the `In`/`Out`/`InOut` modes and how a function is applied to its arguments.
//! * [`data`]: handles to region data (whole values, slices, matrix blocks, declared parts).
//! * [`plan`]: traversal orders and planners choosing each task's thread before launch.
//! * [`region`]: the region itself: records tasks, launches them when the closure returns,
//!   waits, reports the first error.
//! * [`queue`]: `spawn_sequential` and `spawn_bulk` blocks for ordinary tasks.
//! * [`remote`]: tasks in worker processes: which may go there, versions and copies of data.
//!
//! Soundness rests on three facts: a handle is only dereferenced by the region inside a task
//! body, after every task with a conflicting access finished (failed predecessors make their
//! dependents fail without running); a task's own arguments never conflict with each other
//! (checked when it is spawned); and the region does not return, also when unwinding, before
//! every task body it launched was dropped, so borrowed data outlives every use.

mod access;
mod data;
mod plan;
mod queue;
mod region;
mod remote;
mod tracker;

pub use access::{Access, Call, Declarations, In, InOut, Out, Val};
pub use data::{Block, BlockMut, BlockRef, Data, Part, Parts, Slice, Target};
pub use plan::{
    CostPlanner, PlanData, PlanProc, PlanTask, Planner, RoundRobin, Traversal, WorkStealing,
    DEFAULT_COST_NS,
};
pub use queue::{spawn_bulk, spawn_sequential};
pub use region::{
    spawn_datadeps, spawn_datadeps_with, DatadepsOptions, Output, Region, RegionTask,
};
#[doc(hidden)]
pub use remote::BlockBuf;
pub use remote::{RemoteAccess, RemoteArg, RemoteArgs, TransferStats, Transfers};
