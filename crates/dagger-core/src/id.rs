//! Identifiers of tasks, worker processes, nodes and processors.

use std::any::TypeId;
use std::cell::Cell;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

/// Identifies one task for the lifetime of the process that spawned it.
///
/// ```
/// let t = dagger_core::spawn(|| dagger_core::current_task_id());
/// let inner = t.fetch().unwrap().unwrap();
/// assert_eq!(inner, t.id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(NonZeroU64);

impl TaskId {
    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// A fresh id. Ids come from per-thread blocks so spawning threads do not contend.
    pub(crate) fn next() -> TaskId {
        const BLOCK: u64 = 1024;
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        RANGE.with(|range| {
            let (mut next, mut end) = range.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            range.set((next + 1, end));
            TaskId(NonZeroU64::new(next).expect("task ids start at 1"))
        })
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

/// Identifies one process of a cluster. The head process (the user's `main`) is worker 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct WorkerId(pub u32);

impl From<u32> for WorkerId {
    fn from(w: u32) -> Self {
        WorkerId(w)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

/// Identifies one machine of a cluster. This machine is node 0 until a cluster says otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// A kind of processor: the Rust type that implements [`Processor`](crate::Processor).
///
/// Kinds are interned by type name, so the same binary gives every kind the same identity in
/// every process.
///
/// ```
/// use dagger_core::{ProcessorKind, ThreadProc};
/// assert_eq!(ProcessorKind::of::<ThreadProc>(), ProcessorKind::THREAD);
/// assert_eq!(ProcessorKind::THREAD.name(), "ThreadProc");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessorKind(u16);

struct KindTable {
    by_type: Vec<(TypeId, &'static str)>,
}

fn kinds() -> &'static RwLock<KindTable> {
    static KINDS: OnceLock<RwLock<KindTable>> = OnceLock::new();
    KINDS.get_or_init(|| {
        RwLock::new(KindTable {
            by_type: vec![
                (TypeId::of::<crate::OsProc>(), "OsProc"),
                (TypeId::of::<crate::ThreadProc>(), "ThreadProc"),
            ],
        })
    })
}

fn short_type_name(full: &'static str) -> &'static str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl ProcessorKind {
    /// The operating-system process; it owns the other processors and runs no tasks itself.
    pub const OS: ProcessorKind = ProcessorKind(0);
    /// A compute thread of the process.
    pub const THREAD: ProcessorKind = ProcessorKind(1);

    /// The kind of processor type `P`.
    pub fn of<P: 'static>() -> ProcessorKind {
        let id = TypeId::of::<P>();
        {
            let table = kinds().read().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = table.by_type.iter().position(|(t, _)| *t == id) {
                return ProcessorKind(i as u16);
            }
        }
        let mut table = kinds().write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = table.by_type.iter().position(|(t, _)| *t == id) {
            return ProcessorKind(i as u16);
        }
        table
            .by_type
            .push((id, short_type_name(std::any::type_name::<P>())));
        ProcessorKind((table.by_type.len() - 1) as u16)
    }

    /// The short type name of the kind, e.g. `ThreadProc`.
    pub fn name(self) -> &'static str {
        let table = kinds().read().unwrap_or_else(|e| e.into_inner());
        table
            .by_type
            .get(self.0 as usize)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

impl fmt::Debug for ProcessorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ProcessorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one processor: its process, its kind and its index among processors of that kind
/// in that process (for threads, the thread number).
///
/// ```
/// use dagger_core::{ProcessorId, WorkerId};
/// let p = ProcessorId::thread(WorkerId(0), 1);
/// assert_eq!(p.thread_index(), Some(1));
/// assert_eq!(p.to_string(), "ThreadProc(worker 0, 1)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ProcessorId {
    /// The process holding the processor.
    pub worker: WorkerId,
    /// What sort of processor it is.
    pub kind: ProcessorKind,
    /// Index among processors of this kind in this process.
    pub index: u32,
}

impl ProcessorId {
    /// The OS process processor of `worker`.
    pub fn os(worker: WorkerId) -> ProcessorId {
        ProcessorId {
            worker,
            kind: ProcessorKind::OS,
            index: 0,
        }
    }

    /// Compute thread `thread` of `worker`.
    pub fn thread(worker: WorkerId, thread: u32) -> ProcessorId {
        ProcessorId {
            worker,
            kind: ProcessorKind::THREAD,
            index: thread,
        }
    }

    /// The thread number, when this is a [`ThreadProc`](crate::ThreadProc).
    pub fn thread_index(self) -> Option<u32> {
        (self.kind == ProcessorKind::THREAD).then_some(self.index)
    }
}

impl fmt::Display for ProcessorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == ProcessorKind::OS {
            write!(f, "OsProc({})", self.worker)
        } else {
            write!(f, "{}({}, {})", self.kind, self.worker, self.index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn task_ids_are_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5000).map(|_| TaskId::next()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 20_000);
    }

    #[test]
    fn kinds_are_interned_by_type() {
        struct A;
        struct B<T>(T);
        let a = ProcessorKind::of::<A>();
        assert_eq!(a, ProcessorKind::of::<A>());
        assert_ne!(a, ProcessorKind::of::<B<u8>>());
        assert_eq!(ProcessorKind::of::<B<u8>>().name(), "B");
        assert_eq!(ProcessorKind::of::<crate::OsProc>(), ProcessorKind::OS);
        assert_eq!(ProcessorId::os(WorkerId(3)).to_string(), "OsProc(worker 3)");
    }
}
