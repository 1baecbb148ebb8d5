//! Local sockets: a listener of this host is also reachable through a Unix socket in the
//! abstract namespace named after its TCP address, which costs less than loopback TCP.
//!
//! The name is derived from the exact address the TCP listener is bound to. Abstract names
//! belong to the network namespace, as TCP addresses do, so a process that finds the name
//! reaches the listener it would have reached by TCP. Nothing is trusted on that basis: the
//! same mutual authentication runs on the socket.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// The abstract socket name of the listener bound to `addr`.
fn name(addr: &SocketAddr) -> String {
    format!("\0dagger-net/{addr}")
}

/// Listens on the local socket of the TCP listener bound to `addr`; `None` (logged) if
/// that is not possible: the listener is then reached by TCP only.
pub(crate) fn bind(addr: &SocketAddr) -> Option<UnixListener> {
    match UnixListener::bind(name(addr)) {
        Ok(l) => Some(l),
        Err(e) => {
            log::debug!("no local socket for the listener on {addr}: {e}");
            None
        }
    }
}

/// Connects to the local socket of the first of `addrs` that a listener of this host is
/// bound to; `None` if none is.
pub(crate) async fn connect(addrs: &[SocketAddr]) -> Option<(UnixStream, SocketAddr)> {
    for addr in addrs {
        if let Ok(stream) = UnixStream::connect(name(addr)).await {
            return Some((stream, *addr));
        }
    }
    None
}

/// Splits an established local socket into halves that wait only for what they need.
///
/// Tokio registers a whole stream for both readable and writable events, and a Unix socket
/// announces write space every time the peer reads (unlike TCP, which does so only after a
/// write found the buffer full): each message a process sends would wake its own I/O thread
/// once more when the peer read it. The read half is registered for readable events only;
/// the write half writes without any registration and registers a descriptor of its own for
/// writable events only while a write waits for space.
pub(crate) fn split(stream: UnixStream) -> io::Result<(LocalRead, LocalWrite)> {
    let stream = stream.into_std()?;
    let write = LocalWrite {
        stream: stream.try_clone()?,
        waiting: None,
    };
    let read = LocalRead {
        fd: register(stream, Interest::READABLE)?,
    };
    Ok((read, write))
}

fn register(
    stream: std::os::unix::net::UnixStream,
    interest: Interest,
) -> io::Result<AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: the stream owns its descriptor, which stays open (and the same) until the
    // `AsyncFd` that owns the stream is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(stream, interest) }?)
}

/// The read half of a local socket (see [`split`]).
#[derive(Debug)]
pub(crate) struct LocalRead {
    fd: AsyncFd<std::os::unix::net::UnixStream>,
}

impl AsyncRead for LocalRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // SAFETY: `read` only writes into the slice (the kernel copies into it), never
            // reads it, and the bytes it reports written are initialised; tokio's own
            // sockets read into uninitialised buffers the same way.
            let dst = unsafe { &mut *(buf.unfilled_mut() as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let want = dst.len();
            match guard.try_io(|fd| fd.get_ref().read(dst)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // A short read drained the socket (as tokio's own streams assume):
                        // wait for the next event instead of reading once more for nothing.
                        guard.clear_ready();
                    }
                    // SAFETY: the kernel initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The write half of a local socket (see [`split`]).
#[derive(Debug)]
pub(crate) struct LocalWrite {
    stream: std::os::unix::net::UnixStream,
    /// A descriptor registered for writable events, while a write waits for space.
    waiting: Option<AsyncFd<std::os::unix::net::UnixStream>>,
}

impl LocalWrite {
    /// Another descriptor of the socket, for a [`DirectWriter`](crate::DirectWriter).
    pub(crate) fn duplicate(&self) -> io::Result<std::os::unix::net::UnixStream> {
        self.stream.try_clone()
    }

    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&std::os::unix::net::UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match &self.waiting {
                None => match write(&self.stream) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let fd = self.stream.try_clone()?;
                        self.waiting = Some(register(fd, Interest::WRITABLE)?);
                    }
                    done => return Poll::Ready(done),
                },
                Some(fd) => {
                    let mut guard = ready!(fd.poll_write_ready(cx))?;
                    if let Ok(done) = guard.try_io(|fd| write(fd.get_ref())) {
                        return Poll::Ready(done);
                    }
                }
            }
        }
    }
}

/// Like tokio's write halves: dropping the write half ends the stream for the peer, even
/// while the read half (or a [`DirectWriter`](crate::DirectWriter)'s descriptor) lives on.
impl Drop for LocalWrite {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

impl AsyncWrite for LocalWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Nothing is buffered here; a flush ends a wait for space, so the descriptor is
    /// unregistered until a write finds the socket full again.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().waiting = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.waiting = None;
        Poll::Ready(this.stream.shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{connect, Hello, Listener, NetConfig, Role, Secret};
    use std::time::Duration;

    /// A process squatting the local socket name of a listener (or anything else answering
    /// there without the secret) does not keep clients from reaching the listener by TCP.
    #[tokio::test]
    async fn a_squatted_local_socket_falls_back_to_tcp() {
        let config = NetConfig::new(Secret::from_bytes(vec![7; 32]).unwrap())
            .with_handshake_timeout(Duration::from_secs(5));
        let tcp_only = config.clone().with_local_sockets(false);
        let mut listener = Listener::bind("127.0.0.1:0", &tcp_only, Hello::new(Role::Head, 1))
            .await
            .unwrap();
        let addr = listener.local_addr();
        let squatter = UnixListener::bind(name(&addr)).unwrap();
        let squat = tokio::spawn(async move {
            // Accepts and hangs up at once, like a process that does not speak the protocol.
            while let Ok((stream, _)) = squatter.accept().await {
                drop(stream);
            }
        });
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(
                connect(addr, &config, Hello::new(Role::Worker, 1).with_peer_id(1)),
                listener.accept()
            )
        })
        .await
        .expect("connecting timed out");
        let (client, server) = (connected.0.unwrap().0, connected.1.unwrap().0);
        assert!(!client.uses_local_socket() && !server.uses_local_socket());
        squat.abort();
    }
}
