//! Work that starts more work of the same kind while it runs (a chain of tasks, each
//! starting the next), done from a queue instead of by recursion: a long chain must not
//! overflow the stack of the thread running it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::thread::LocalKey;

/// A thread's queue of such work: `None` while the thread is not running any.
pub(crate) type Queue<T> = RefCell<Option<VecDeque<T>>>;

/// Runs `run` on each of `items`, in order, then on the items added by calls made from
/// inside `run` on this thread, until none is left. Such a nested call only adds its items
/// to `queue` and returns `false`; the outermost call returns `true` once all are done.
pub(crate) fn unnested<T: 'static>(
    queue: &'static LocalKey<Queue<T>>,
    items: impl IntoIterator<Item = T>,
    mut run: impl FnMut(T),
) -> bool {
    let outermost = queue.with(|q| match &mut *q.borrow_mut() {
        Some(queued) => {
            queued.extend(items);
            None
        }
        slot @ None => {
            *slot = Some(VecDeque::new());
            Some(items)
        }
    });
    let Some(items) = outermost else {
        return false;
    };
    // Clears the queue even if `run` panics.
    struct Outermost<T: 'static>(&'static LocalKey<Queue<T>>);
    impl<T> Drop for Outermost<T> {
        fn drop(&mut self) {
            self.0.with(|q| *q.borrow_mut() = None);
        }
    }
    let _outermost = Outermost(queue);
    items.into_iter().for_each(&mut run);
    while let Some(next) = queue.with(|q| q.borrow_mut().as_mut().and_then(VecDeque::pop_front)) {
        run(next);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static CHAIN: Queue<u32> = const { RefCell::new(None) };
    }

    /// Each link starts the next one from inside `run`.
    fn start(link: u32, ran: &mut Vec<u32>, last: u32) -> bool {
        unnested(&CHAIN, [link], |l| {
            ran.push(l);
            if l < last {
                start(l + 1, &mut Vec::new(), last);
            }
        })
    }

    #[test]
    fn a_long_chain_runs_in_order_without_recursing() {
        let mut ran = Vec::new();
        // Deep enough to overflow a test thread's stack by recursion.
        assert!(start(0, &mut ran, 1_000_000));
        assert_eq!(ran.len(), 1_000_001);
        assert!(ran.windows(2).all(|w| w[1] == w[0] + 1));
        // The queue is free again.
        let mut again = Vec::new();
        assert!(start(5, &mut again, 6));
        assert_eq!(again, [5, 6]);
    }
}
