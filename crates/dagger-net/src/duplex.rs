//! A stream read by one task and written by another, when a read may write to the socket
//! and a write may read from it (TLS: alerts, key updates, session tickets).
//!
//! `tokio::io::split` hands both halves the same stream, and the socket under it keeps one
//! waker for readability and one for writability. A TLS read that must write registers the
//! *reading* task for writability, replacing the writing task, which then never wakes: its
//! frames stay queued while both processes sleep (tokio-rs/tls#40). Here every poll of the
//! stream passes a waker that wakes both tasks, so whichever one the socket remembers, the
//! other wakes too; a spurious wake-up costs one poll that finds nothing to do.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S`, polled with a waker that wakes both the task that last read and the one that last
/// wrote (see the module docs). Split it with `tokio::io::split`.
pub(crate) struct WakeBoth<S> {
    inner: S,
    tasks: Arc<Tasks>,
    waker: Waker,
}

/// The wakers of the reading and the writing task.
#[derive(Default)]
struct Tasks {
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

impl Tasks {
    fn register(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Wake for Tasks {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.reader, &self.writer] {
            let waker = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<S> WakeBoth<S> {
    pub(crate) fn new(inner: S) -> WakeBoth<S> {
        let tasks = Arc::new(Tasks::default());
        let waker = Waker::from(tasks.clone());
        WakeBoth {
            inner,
            tasks,
            waker,
        }
    }

    /// Remembers the task polling to read, and the stream with the waker of both.
    fn as_reader(&mut self, cx: &Context<'_>) -> (Pin<&mut S>, Context<'_>)
    where
        S: Unpin,
    {
        Tasks::register(&self.tasks.reader, cx.waker());
        (Pin::new(&mut self.inner), Context::from_waker(&self.waker))
    }

    /// Remembers the task polling to write, and the stream with the waker of both.
    fn as_writer(&mut self, cx: &Context<'_>) -> (Pin<&mut S>, Context<'_>)
    where
        S: Unpin,
    {
        Tasks::register(&self.tasks.writer, cx.waker());
        (Pin::new(&mut self.inner), Context::from_waker(&self.waker))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WakeBoth<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (inner, mut both) = self.get_mut().as_reader(cx);
        inner.poll_read(&mut both, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WakeBoth<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (inner, mut both) = self.get_mut().as_writer(cx);
        inner.poll_write(&mut both, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let (inner, mut both) = self.get_mut().as_writer(cx);
        inner.poll_write_vectored(&mut both, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (inner, mut both) = self.get_mut().as_writer(cx);
        inner.poll_flush(&mut both)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (inner, mut both) = self.get_mut().as_writer(cx);
        inner.poll_shutdown(&mut both)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A stream that keeps one waker for everything, like a socket whose TLS read registered
    /// for writability: pending until `wake` is called on what it kept.
    #[derive(Default)]
    struct OneWaker(Option<Waker>);

    impl AsyncRead for OneWaker {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.0 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl AsyncWrite for OneWaker {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0 = Some(cx.waker().clone());
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_writer_wakes_when_the_reader_was_the_last_to_register() {
        let (writer, reader) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let mut s = WakeBoth::new(OneWaker::default());
        let writer_waker = Waker::from(writer.clone());
        let reader_waker = Waker::from(reader.clone());
        let mut buf = [0u8; 8];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut s)
            .poll_write(&mut Context::from_waker(&writer_waker), b"frame")
            .is_pending());
        // The read replaces the waker the stream keeps.
        assert!(Pin::new(&mut s)
            .poll_read(&mut Context::from_waker(&reader_waker), &mut rb)
            .is_pending());
        s.inner.0.take().expect("a waker is kept").wake();
        assert_eq!(writer.0.load(Ordering::SeqCst), 1, "the writing task woke");
        assert_eq!(reader.0.load(Ordering::SeqCst), 1, "the reading task woke");
    }

    #[test]
    fn a_task_that_polls_again_is_remembered_once() {
        let reader = Arc::new(Count(AtomicUsize::new(0)));
        let mut s = WakeBoth::new(OneWaker::default());
        let waker = Waker::from(reader.clone());
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            let mut rb = ReadBuf::new(&mut buf);
            assert!(Pin::new(&mut s)
                .poll_read(&mut Context::from_waker(&waker), &mut rb)
                .is_pending());
        }
        s.inner.0.take().unwrap().wake();
        assert_eq!(reader.0.load(Ordering::SeqCst), 1);
        // Woken tasks are forgotten until they poll again.
        s.waker.wake_by_ref();
        assert_eq!(reader.0.load(Ordering::SeqCst), 1);
    }
}
