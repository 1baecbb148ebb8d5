//! A lock-free list of parties waiting for a task to finish.
//!
//! Waiters push themselves while the task runs; the task closes the list exactly once when it
//! completes and takes every waiter pushed before that moment. A push that loses the race
//! against `close` is refused and hands the value back, so the caller knows the task is done.
//!
//! Nodes are either allocated by the list (`push`) or embedded in another object (a [`Slot`],
//! `push_in`): a task keeps one slot for its first input, so a chain of tasks registers its
//! edges without allocating.

use crate::sync::{AtomicPtr, Ordering};
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ptr;

struct Node<T> {
    next: *mut Node<T>,
    value: MaybeUninit<T>,
    /// Allocated by `push` (freed when taken) rather than embedded in a `Slot`.
    boxed: bool,
}

/// Treiber stack of waiters with a terminal "closed" state.
pub(crate) struct WaitList<T> {
    head: AtomicPtr<Node<T>>,
}

// SAFETY: nodes are handed over whole; values cross threads.
unsafe impl<T: Send> Send for WaitList<T> {}
unsafe impl<T: Send> Sync for WaitList<T> {}

/// Room for one waiter inside another object; see [`WaitList::push_in`].
pub(crate) struct Slot<T>(UnsafeCell<Node<T>>);

// SAFETY: the slot is written only by the party pushing it and read only by the party that
// took it out of a list (the list's atomics order the two).
unsafe impl<T: Send> Send for Slot<T> {}
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    pub(crate) fn new() -> Self {
        Slot(UnsafeCell::new(Node {
            next: ptr::null_mut(),
            value: MaybeUninit::uninit(),
            boxed: false,
        }))
    }
}

fn closed<T>() -> *mut Node<T> {
    ptr::without_provenance_mut(1)
}

impl<T> WaitList<T> {
    pub(crate) fn new() -> Self {
        WaitList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// A list that is already closed: pushes are refused at once.
    pub(crate) fn new_closed() -> Self {
        WaitList {
            head: AtomicPtr::new(closed()),
        }
    }

    /// Adds a waiter; `Err(value)` when the list is already closed.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        if self.head.load(Ordering::Acquire) == closed() {
            return Err(value);
        }
        let node = Box::into_raw(Box::new(Node {
            next: ptr::null_mut(),
            value: MaybeUninit::new(value),
            boxed: true,
        }));
        // SAFETY: the node is ours until published, and freed here if it never is.
        unsafe {
            self.link(node).map_err(|()| {
                let node = Box::from_raw(node);
                node.value.assume_init()
            })
        }
    }

    /// Adds a waiter through `slot`, without allocating; `Err(value)` when the list is closed.
    ///
    /// # Safety
    /// `slot` must not be in any list, and the object holding it must stay alive until the
    /// value is taken back out (by `close`, by dropping the list, or as the `Err`): for
    /// example because `value` itself keeps that object alive.
    pub(crate) unsafe fn push_in(&self, slot: &Slot<T>, value: T) -> Result<(), T> {
        if self.head.load(Ordering::Acquire) == closed() {
            return Err(value);
        }
        let node = slot.0.get();
        (*node).value = MaybeUninit::new(value);
        self.link(node)
            .map_err(|()| ptr::read(&(*node).value).assume_init())
    }

    /// Publishes `node` at the head, unless the list is closed.
    unsafe fn link(&self, node: *mut Node<T>) -> Result<(), ()> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if head == closed() {
                return Err(());
            }
            (*node).next = head;
            match self
                .head
                .compare_exchange_weak(head, node, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => head = actual,
            }
        }
    }

    /// Closes the list and returns the waiters in the order they arrived.
    /// Only the first call yields waiters; later calls yield nothing.
    pub(crate) fn close(&self) -> Drain<T> {
        let mut node = self.head.swap(closed(), Ordering::AcqRel);
        if node == closed() {
            node = ptr::null_mut();
        }
        // Reverse in place so the oldest waiter comes first.
        let mut reversed: *mut Node<T> = ptr::null_mut();
        while !node.is_null() {
            // SAFETY: the swap transferred every published node to us.
            unsafe {
                let next = (*node).next;
                (*node).next = reversed;
                reversed = node;
                node = next;
            }
        }
        Drain { node: reversed }
    }
}

/// The waiters taken by [`WaitList::close`], oldest first.
pub(crate) struct Drain<T> {
    node: *mut Node<T>,
}

impl<T> Iterator for Drain<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let node = self.node;
        if node.is_null() {
            return None;
        }
        // SAFETY: the drain owns the remaining nodes' values. The next pointer is read before
        // the value is moved out, since moving it out may release an embedding object.
        unsafe {
            self.node = (*node).next;
            if (*node).boxed {
                Some(Box::from_raw(node).value.assume_init())
            } else {
                Some(ptr::read(&(*node).value).assume_init())
            }
        }
    }
}

impl<T> Drop for Drain<T> {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

impl<T> Drop for WaitList<T> {
    fn drop(&mut self) {
        // Completed tasks (the common case) have nothing left to free: skip the swap.
        let head = self.head.load(Ordering::Acquire);
        if head != closed() && !head.is_null() {
            drop(self.close());
        }
    }
}
