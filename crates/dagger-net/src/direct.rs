//! Writing small messages from any thread, next to a connection's [`Sender`](crate::Sender).
//!
//! A [`Sender`](crate::Sender) writes from the runtime task that owns it, so a message handed
//! to it from another thread waits until that task gets a CPU. A [`DirectWriter`] writes a
//! message at once, from the calling thread, without blocking: it is for short messages that
//! someone waits for (a report that a task ended), sent by threads that have a CPU at that
//! moment. Plain (non-TLS) connections only.
//!
//! The caller keeps the order of messages: a direct write must not start while the sender has
//! something queued or is writing, and what a direct write could not write at once must reach
//! the sender, with [`Sender::feed_framed`](crate::Sender::feed_framed), before anything else.

use crate::frame::{encode_header, frame_copy, HEADER_LEN};
use crate::NetError;
use bytes::{Bytes, BytesMut};
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Writes whole small messages on a plain connection from any thread, without blocking.
///
/// Obtained with [`Sender::direct_writer`](crate::Sender::direct_writer).
///
/// ```no_run
/// # async fn demo(conn: dagger_net::Connection) -> Result<(), dagger_net::NetError> {
/// let (mut sender, _receiver) = conn.split();
/// if let Some(direct) = sender.direct_writer() {
///     // Nothing is queued on `sender`: the message may go out from this thread.
///     let rest = direct.write(b"done")?;
///     if !rest.is_empty() {
///         // The socket took only part of it: the sender writes the rest first.
///         sender.feed_framed(rest);
///         sender.flush().await?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DirectWriter {
    stream: Arc<Stream>,
    max_message: u64,
    max_frame: usize,
}

/// Another descriptor of the connection's socket (a duplicate: writing through it needs no
/// access to the sender).
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(std::net::TcpStream),
    #[cfg(target_os = "linux")]
    Unix(std::os::unix::net::UnixStream),
}

impl DirectWriter {
    pub(crate) fn new(stream: Stream, max_message: u64, max_frame: usize) -> DirectWriter {
        DirectWriter {
            stream: Arc::new(stream),
            max_message,
            max_frame,
        }
    }

    /// Frames `msg` and writes as much of it as the socket takes now. Returns the framed
    /// bytes it did not write (empty when it wrote them all), to be queued with
    /// [`Sender::feed_framed`](crate::Sender::feed_framed) before any other message.
    ///
    /// Fails with [`NetError::Oversized`] if the message exceeds the connection's size limit,
    /// and with an I/O error if the connection is broken; nothing is written then.
    pub fn write(&self, msg: &[u8]) -> Result<Bytes, NetError> {
        crate::frame::check_size(msg.len(), self.max_message)?;
        if msg.len() <= self.max_frame {
            return self.write_one_frame(msg);
        }
        let mut framed = BytesMut::new();
        frame_copy(msg, self.max_frame, &mut framed);
        let mut framed = framed.freeze();
        let mut first = true;
        while !framed.is_empty() {
            match self.stream.write(&framed) {
                Ok(0) => return Err(NetError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    let _ = framed.split_to(n);
                    first = false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if first => return Err(e.into()),
                // Part of the message is out: the rest must follow, whatever happened.
                Err(_) => break,
            }
        }
        Ok(framed)
    }

    /// [`write`](Self::write) for a message of one frame: its header and bytes go out in one
    /// vectored write, copied into a buffer only if the socket does not take them all.
    fn write_one_frame(&self, msg: &[u8]) -> Result<Bytes, NetError> {
        let header = encode_header(msg.len(), false);
        let total = HEADER_LEN + msg.len();
        let mut written = 0;
        while written < total {
            let (h, m) = match written.checked_sub(HEADER_LEN) {
                None => (&header[written..], msg),
                Some(off) => (&header[..0], &msg[off..]),
            };
            match self
                .stream
                .write_vectored(&[IoSlice::new(h), IoSlice::new(m)])
            {
                Ok(0) => return Err(NetError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if written == 0 => return Err(e.into()),
                // Part of the message is out: the rest must follow, whatever happened.
                Err(_) => break,
            }
        }
        let mut rest = BytesMut::with_capacity(total - written);
        if written < HEADER_LEN {
            rest.extend_from_slice(&header[written..]);
        }
        rest.extend_from_slice(&msg[written.saturating_sub(HEADER_LEN)..]);
        Ok(rest.freeze())
    }
}

impl Stream {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            #[cfg(target_os = "linux")]
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            #[cfg(target_os = "linux")]
            Stream::Unix(s) => (&*s).write_vectored(bufs),
        }
    }
}
