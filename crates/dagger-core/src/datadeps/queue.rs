//! Task queues (the reference's `spawn_sequential` and `spawn_bulk`): blocks that change how
//! the tasks spawned directly inside them are submitted. Queues nest: a task spawned in an
//! inner queue is also ordered (or held) by the outer ones.
//!
//! Only tasks spawned on the block's own thread, directly, are affected (not tasks spawned by
//! those tasks, nor tasks inside a `sync` block or a datadeps region opened inside the queue).

use crate::task::{current_group, with_group, Group, Queue};
use std::sync::Mutex;

/// Runs `f`; the tasks it spawns run one after another in submission order, even without
/// data dependencies between them (each waits for the previous one; if one fails, the ones
/// after it fail without running). Returns `f`'s value without waiting for the tasks.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let tasks = dagger_core::spawn_sequential(|| {
///     (0..5)
///         .map(|i| {
///             let log = log.clone();
///             dagger_core::spawn(move || log.lock().unwrap().push(i))
///         })
///         .collect::<Vec<_>>()
/// });
/// dagger_core::wait_all(&tasks).unwrap();
/// assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
/// ```
pub fn spawn_sequential<R>(f: impl FnOnce() -> R) -> R {
    let g = Group::queue(Queue::Sequential(Mutex::new(None)), current_group());
    with_group(&g, f)
}

/// Runs `f`, holding back the tasks it spawns until it returns; then they are submitted
/// together. Waiting for an unfinished task inside the block (`fetch` returns an error,
/// `wait` panics) is an error, since the wait could never finish. The tasks are released also
/// when `f` panics.
///
/// ```
/// let (a, b) = dagger_core::spawn_bulk(|| {
///     let a = dagger_core::spawn(|| 1);
///     assert!(!a.is_ready()); // held until the block ends
///     assert!(a.fetch().is_err()); // waiting here is an error
///     (a, dagger_core::spawn(|| 2))
/// });
/// assert_eq!(a.fetch().unwrap() + b.fetch().unwrap(), 3);
/// ```
pub fn spawn_bulk<R>(f: impl FnOnce() -> R) -> R {
    struct Release(std::sync::Arc<Group>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }
    let g = Group::queue(Queue::Bulk(Mutex::new(Vec::new())), current_group());
    let _release = Release(g.clone());
    with_group(&g, f)
}
