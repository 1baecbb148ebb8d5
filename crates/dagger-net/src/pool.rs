//! Receive buffers kept for reuse.
//!
//! A large message is read into one buffer of its announced size (see
//! [`MessageCodec::expect_next`](crate::frame::MessageCodec::expect_next)). Allocating that
//! buffer afresh for every message is expensive beyond the copy itself: above the allocator's
//! mmap threshold (32 MiB at most with glibc) every buffer is new memory that the kernel
//! faults in page by page (zeroing each page) while the socket's bytes are copied into it,
//! and unmaps again when the message is dropped. A [`RecvPool`] keeps the buffers of
//! dropped messages and hands them to the next messages of about the same size, so a steady
//! stream of large messages is received into memory that is already mapped, as a program
//! reading a socket into one reused buffer would.
//!
//! A message read into a pooled buffer is an ordinary [`Bytes`]; when its last clone drops,
//! the buffer goes back to the pool (if the pool still exists and has room). The pool keeps
//! at most [`RecvPool::max_bytes`] bytes of idle buffers and gives back to the allocator
//! those idle for longer than [`RecvPool::idle`], at its next use or at
//! [`release_idle`](RecvPool::release_idle), so that a process's memory returns to its
//! baseline after a burst of transfers.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Default bound of the idle buffers a pool keeps (256 MiB).
pub const DEFAULT_POOL_BYTES: usize = 256 << 20;

/// Default time after which an idle buffer is given back to the allocator (2 s).
pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(2);

/// A buffer is reused for a message of `want` bytes only if it holds at most this many
/// times `want`, so that a small message does not pin a much larger buffer.
const MAX_WASTE: usize = 2;

/// Idle receive buffers of the connections that share this pool (see the [module
/// docs](self)). Cheap to share: [`NetConfig`](crate::NetConfig) holds one, and every
/// connection made with that configuration (or a clone of it) uses it.
///
/// ```
/// use dagger_net::pool::RecvPool;
///
/// let pool = RecvPool::new(1 << 20, std::time::Duration::from_secs(1));
/// let buf = pool.take(1000);
/// let msg = pool.seal(buf);
/// assert_eq!(pool.idle_bytes(), 0);
/// drop(msg);
/// // The buffer is back, ready for the next message of about that size.
/// assert!(pool.idle_bytes() >= 1000);
/// ```
pub struct RecvPool {
    max_bytes: usize,
    idle: Duration,
    inner: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Buffers (empty, with capacity) and when they came back, oldest first.
    bufs: Vec<(Vec<u8>, Instant)>,
    /// Sum of the buffers' capacities.
    bytes: usize,
}

impl Idle {
    /// Drops the buffers idle since before `cutoff`.
    fn release_before(&mut self, cutoff: Instant) {
        let before = self.bufs.len();
        self.bufs.retain(|(_, at)| *at >= cutoff);
        if self.bufs.len() != before {
            self.bytes = self.bufs.iter().map(|(b, _)| b.capacity()).sum();
        }
    }
}

impl RecvPool {
    /// A pool keeping at most `max_bytes` of idle buffers, each for at most `idle`.
    pub fn new(max_bytes: usize, idle: Duration) -> Arc<RecvPool> {
        Arc::new(RecvPool {
            max_bytes,
            idle,
            inner: Mutex::new(Idle::default()),
        })
    }

    /// A pool with the default bounds ([`DEFAULT_POOL_BYTES`], [`DEFAULT_POOL_IDLE`]).
    pub fn with_defaults() -> Arc<RecvPool> {
        Self::new(DEFAULT_POOL_BYTES, DEFAULT_POOL_IDLE)
    }

    /// The most bytes of idle buffers kept.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// How long an idle buffer is kept.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with room for at least `want` bytes: the smallest idle one that fits
    /// (and is not more than twice as large), or a new one.
    pub fn take(&self, want: usize) -> Vec<u8> {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.release_before(now.checked_sub(self.idle).unwrap_or(now));
        let best = idle
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| {
                b.capacity() >= want && b.capacity() <= want.saturating_mul(MAX_WASTE)
            })
            .min_by_key(|(_, (b, _))| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let (buf, _) = idle.bufs.remove(i);
                idle.bytes -= buf.capacity();
                buf
            }
            None => {
                drop(idle);
                Vec::with_capacity(want)
            }
        }
    }

    /// Keeps `buf` for reuse if there is room (dropping the oldest idle buffers to make
    /// some); drops it otherwise.
    fn give(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > self.max_bytes {
            return;
        }
        buf.clear();
        let now = Instant::now();
        let mut dropped = Vec::new();
        {
            let mut idle = self.lock();
            idle.release_before(now.checked_sub(self.idle).unwrap_or(now));
            while idle.bytes + cap > self.max_bytes && !idle.bufs.is_empty() {
                let (old, _) = idle.bufs.remove(0);
                idle.bytes -= old.capacity();
                dropped.push(old);
            }
            idle.bytes += cap;
            idle.bufs.push((buf, now));
        }
        // Unmapping large buffers is slow: not under the lock.
        drop(dropped);
    }

    /// Turns a filled buffer from [`take`](Self::take) into a message; when the message's
    /// last clone drops, the buffer comes back to this pool.
    pub fn seal(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(self),
        })
    }

    /// Gives the buffers idle for longer than [`idle`](Self::idle) back to the allocator.
    pub fn release_idle(&self) {
        let now = Instant::now();
        let released = {
            let mut idle = self.lock();
            let cutoff = now.checked_sub(self.idle).unwrap_or(now);
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut idle.bufs)
                .into_iter()
                .partition(|(_, at)| *at < cutoff);
            idle.bufs = keep;
            idle.bytes = idle.bufs.iter().map(|(b, _)| b.capacity()).sum();
            old
        };
        drop(released);
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl fmt::Debug for RecvPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.lock();
        f.debug_struct("RecvPool")
            .field("max_bytes", &self.max_bytes)
            .field("idle", &self.idle)
            .field("idle_buffers", &idle.bufs.len())
            .field("idle_bytes", &idle.bytes)
            .finish()
    }
}

/// A message's buffer, returned to its pool when the message drops.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<RecvPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_for_messages_of_about_their_size() {
        let pool = RecvPool::new(1 << 20, Duration::from_secs(60));
        let mut buf = pool.take(1000);
        let first = buf.as_ptr();
        buf.extend_from_slice(&[7; 1000]);
        let msg = pool.seal(buf);
        let clone = msg.slice(10..20);
        drop(msg);
        // A slice still holds the buffer.
        assert_eq!(pool.idle_bytes(), 0);
        assert_eq!(&clone[..], &[7; 10]);
        drop(clone);
        assert!(pool.idle_bytes() >= 1000);
        // Far smaller: a new buffer, the large one stays idle.
        let small = pool.take(10);
        assert_ne!(small.as_ptr(), first);
        assert!(small.is_empty());
        // About the same size: the same memory, empty.
        let again = pool.take(900);
        assert_eq!(again.as_ptr(), first);
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
        // Larger than any idle buffer: a new one.
        drop(pool.seal(again));
        let larger = pool.take(5000);
        assert_ne!(larger.as_ptr(), first);
    }

    #[test]
    fn idle_buffers_are_bounded_and_released() {
        let pool = RecvPool::new(3000, Duration::from_millis(1));
        for _ in 0..5 {
            drop(pool.seal(pool.take(1000)));
        }
        let bufs: Vec<Vec<u8>> = (0..5).map(|_| Vec::with_capacity(1000)).collect();
        for b in bufs {
            drop(pool.seal(b));
        }
        assert!(pool.idle_bytes() <= 3000, "{pool:?}");
        // A buffer larger than the whole bound is never kept.
        drop(pool.seal(Vec::with_capacity(4000)));
        assert!(pool.idle_bytes() <= 3000);
        std::thread::sleep(Duration::from_millis(5));
        pool.release_idle();
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn messages_outliving_their_pool_free_their_buffer() {
        let pool = RecvPool::new(1 << 20, Duration::from_secs(60));
        let mut buf = pool.take(100);
        buf.extend_from_slice(b"kept");
        let msg = pool.seal(buf);
        drop(pool);
        assert_eq!(&msg[..], b"kept");
    }
}
