//! The synchronisation primitives used by the lock-free pieces of the runtime.
//!
//! The primitives in `task/wait_list.rs`, `task/state.rs` and `sched/sleep.rs` reach their
//! atomics and locks through `crate::sync`, so `tests/loom.rs` can compile the very same files
//! against loom's model-checked replacements.

pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
pub(crate) use std::sync::Mutex;
pub(crate) use std::thread::{self, Thread};
