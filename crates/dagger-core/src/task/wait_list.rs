//! A lock-free list of parties waiting for a task to finish.
//!
//! Waiters push themselves while the task runs; the task closes the list exactly once when it
//! completes and takes every waiter pushed before that moment. A push that loses the race
//! against `close` is refused and hands the value back, so the caller knows the task is done.

use crate::sync::{AtomicPtr, Ordering};
use std::ptr;

struct Node<T> {
    value: T,
    next: *mut Node<T>,
}

/// Treiber stack of waiters with a terminal "closed" state.
pub(crate) struct WaitList<T> {
    head: AtomicPtr<Node<T>>,
}

// SAFETY: nodes are owned by the list and handed over whole; values cross threads.
unsafe impl<T: Send> Send for WaitList<T> {}
unsafe impl<T: Send> Sync for WaitList<T> {}

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
        let mut head = self.head.load(Ordering::Acquire);
        if head == closed() {
            return Err(value);
        }
        let node = Box::into_raw(Box::new(Node { value, next: head }));
        loop {
            match self
                .head
                .compare_exchange_weak(head, node, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => {
                    if actual == closed() {
                        // SAFETY: the node was never published.
                        let node = unsafe { Box::from_raw(node) };
                        return Err(node.value);
                    }
                    head = actual;
                    // SAFETY: the node is still private to this thread.
                    unsafe { (*node).next = head };
                }
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
            // SAFETY: the swap transferred ownership of every published node to us.
            let next = unsafe { (*node).next };
            unsafe { (*node).next = reversed };
            reversed = node;
            node = next;
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
        if self.node.is_null() {
            return None;
        }
        // SAFETY: the drain owns the remaining nodes.
        let boxed = unsafe { Box::from_raw(self.node) };
        self.node = boxed.next;
        Some(boxed.value)
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
