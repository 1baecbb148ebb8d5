//! Process-wide counters: live task results.
//!
//! Each thread counts into its own cache line (only that thread writes it), so storing and
//! freeing results never contends; a reader sums all lines.

use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

type Cell = Arc<CachePadded<AtomicIsize>>;

fn cells() -> &'static Mutex<Vec<Cell>> {
    static CELLS: OnceLock<Mutex<Vec<Cell>>> = OnceLock::new();
    CELLS.get_or_init(Default::default)
}

/// Used by threads whose own cell is already destroyed (during thread exit).
static FALLBACK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static MINE: Cell = {
        let c: Cell = Arc::new(CachePadded::new(AtomicIsize::new(0)));
        cells().lock().unwrap_or_else(|e| e.into_inner()).push(c.clone());
        c
    };
}

fn add(delta: isize) {
    if MINE
        .try_with(|c| c.store(c.load(Ordering::Relaxed) + delta, Ordering::Relaxed))
        .is_err()
    {
        FALLBACK.fetch_add(delta, Ordering::Relaxed);
    }
}

pub(crate) fn result_stored() {
    add(1);
}

pub(crate) fn result_freed() {
    add(-1);
}

/// Number of task results (and chunks) currently held in this process.
///
/// After every handle to every task is dropped and all tasks have finished, this is zero.
///
/// ```
/// let before = dagger_core::live_results();
/// let t = dagger_core::spawn(|| vec![0u8; 1024]);
/// t.wait();
/// assert!(dagger_core::live_results() >= before + 1);
/// drop(t);
/// ```
pub fn live_results() -> usize {
    let sum: isize = cells()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum::<isize>()
        + FALLBACK.load(Ordering::Relaxed);
    sum.max(0) as usize
}
