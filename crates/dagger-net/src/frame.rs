//! Framing: how opaque messages travel over a byte stream.
//!
//! # Wire format
//!
//! A message is sent as one or more *frames*. Every frame starts with a 4-byte big-endian
//! header word:
//!
//! ```text
//!  bit 31      bits 30..24       bits 23..0
//! +------+-------------------+----------------+
//! | MORE | reserved (zero)   | payload length |
//! +------+-------------------+----------------+
//! ```
//!
//! followed by `payload length` bytes. `MORE` set means another frame of the same message
//! follows; the last frame of a message has it clear. A frame carries at most
//! [`MAX_FRAME_PAYLOAD`] bytes, so the size of a *message* ([`DEFAULT_MAX_MESSAGE`] by
//! default, configurable) is independent of the frame size, and a receiver never allocates
//! more than one frame ahead of the bytes that actually arrived.
//!
//! Anything else is an error, never a panic: reserved bits set, a frame longer than the
//! maximum, an empty frame with `MORE` set, a message over the size limit, or a stream that
//! ends in the middle of a message.
//!
//! # Pieces
//!
//! - [`MessageCodec`]: a sans-I/O [`Decoder`]/[`Encoder`] (usable with
//!   `tokio_util::codec::FramedRead`/`FramedWrite`) that reassembles messages.
//! - [`MessageReader`]: reads messages from an [`AsyncRead`]; for large messages it reads
//!   straight from the socket into the reassembly buffer (no intermediate copy).
//! - [`MessageWriter`]: buffers small messages and writes large ones zero-copy with vectored
//!   writes; [`feed`](MessageWriter::feed) + [`flush`](MessageWriter::flush) batch many
//!   messages into one system call.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::conn::NetError;
use crate::pool::RecvPool;

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 4;

/// Largest payload of one frame (1 MiB). Larger messages are split into several frames.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// Default largest message (8 GiB), see [`NetConfig::max_message`](crate::conn::NetConfig).
pub const DEFAULT_MAX_MESSAGE: u64 = 8 << 30;

const MORE_BIT: u32 = 1 << 31;
const RESERVED_BITS: u32 = 0x7f00_0000;
const LEN_MASK: u32 = 0x00ff_ffff;

/// Messages up to this size are copied into the write buffer (batched); larger payloads are
/// written straight from the caller's buffer.
const COPY_THRESHOLD: usize = 16 * 1024;
/// Initial capacity / growth step of the read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// At most this many buffers per vectored write.
const MAX_IOV: usize = 64;

/// Why a byte stream could not be decoded into messages (see [`NetError::Malformed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame header has reserved bits set: the peer does not speak this protocol.
    ReservedBits {
        /// The offending header word.
        header: u32,
    },
    /// A frame header announces a payload larger than the frame size limit.
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An empty frame with the "more follows" bit set (it could repeat forever).
    EmptyContinuation,
    /// The stream ended in the middle of a frame or of a multi-frame message.
    Truncated,
    /// A handshake message is not what the protocol expects.
    Handshake(String),
    /// The decoder already failed; the stream cannot be resynchronised.
    Poisoned,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits { header } => write!(
                f,
                "invalid frame header {header:#010x} (reserved bits set): the peer does not speak the dagger protocol"
            ),
            FrameError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the frame size limit of {max} bytes")
            }
            FrameError::EmptyContinuation => write!(f, "empty frame with the 'more follows' bit set"),
            FrameError::Truncated => write!(f, "truncated message: the stream ended in the middle of a frame"),
            FrameError::Handshake(why) => write!(f, "invalid handshake message: {why}"),
            FrameError::Poisoned => write!(f, "the stream is unusable after an earlier framing error"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a frame header for a payload of `len` bytes (`len` must not exceed
/// [`MAX_FRAME_PAYLOAD`]); `more` says whether another frame of the same message follows.
///
/// ```
/// use dagger_net::frame::encode_header;
/// assert_eq!(encode_header(5, false), [0, 0, 0, 5]);
/// assert_eq!(encode_header(5, true), [0x80, 0, 0, 5]);
/// ```
pub fn encode_header(len: usize, more: bool) -> [u8; HEADER_LEN] {
    debug_assert!(len <= LEN_MASK as usize);
    let word = (len as u32 & LEN_MASK) | if more { MORE_BIT } else { 0 };
    word.to_be_bytes()
}

/// Parses and validates a header word against a frame size limit: `(payload length, more)`.
fn parse_header(word: u32, max_frame: usize) -> Result<(usize, bool), FrameError> {
    if word & RESERVED_BITS != 0 {
        return Err(FrameError::ReservedBits { header: word });
    }
    let len = (word & LEN_MASK) as usize;
    let more = word & MORE_BIT != 0;
    if len > max_frame {
        return Err(FrameError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if more && len == 0 {
        return Err(FrameError::EmptyContinuation);
    }
    Ok((len, more))
}

/// The frame currently being received.
#[derive(Debug, Clone, Copy)]
struct FrameState {
    /// Payload bytes of this frame not yet consumed.
    remaining: usize,
    /// Another frame of the same message follows.
    more: bool,
    /// The frame is a whole message: wait until it is contiguous in the input buffer and
    /// split it off without copying.
    whole: bool,
}

/// Sans-I/O codec turning a byte stream into messages and back (see the [module
/// docs](self) for the format).
///
/// Decoding checks every length before allocating: memory use is bounded by the bytes that
/// actually arrived plus one frame. A message that arrives as a single frame is returned
/// without copying (split off the input buffer); a multi-frame message is reassembled into
/// one buffer (taken from a [`RecvPool`], when the codec has one and the message's size
/// was announced with [`expect_next`](Self::expect_next)).
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use dagger_net::frame::MessageCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = MessageCodec::new(1 << 20);
/// let mut wire = BytesMut::new();
/// codec.encode(Bytes::from_static(b"hello"), &mut wire).unwrap();
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), &b"hello"[..]);
/// assert!(codec.decode(&mut wire).unwrap().is_none());
/// ```
#[derive(Debug)]
pub struct MessageCodec {
    max_message: u64,
    max_frame: usize,
    /// Reassembly buffer of a multi-frame message.
    msg: Vec<u8>,
    /// `msg` came from `pool` and goes back there when the message drops.
    pooled: bool,
    pool: Option<Arc<RecvPool>>,
    frame: Option<FrameState>,
    poisoned: bool,
    /// The size the next message is expected to have (see [`expect_next`](Self::expect_next)).
    size_hint: usize,
    /// The announced size of the message being reassembled (0: not announced).
    expected: usize,
    /// Bytes copied from the input buffer into reassembly buffers (for tests of the direct
    /// read path).
    #[cfg(test)]
    copied: usize,
}

impl MessageCodec {
    /// A codec accepting messages up to `max_message` bytes, with frames of at most
    /// [`MAX_FRAME_PAYLOAD`] bytes.
    pub fn new(max_message: u64) -> Self {
        Self::with_frame_size(max_message, MAX_FRAME_PAYLOAD)
    }

    /// A codec with a custom frame size limit (at most 16 MiB - 1; both peers must agree).
    /// Mostly useful for tests, which exercise multi-frame messages with small frames.
    pub fn with_frame_size(max_message: u64, max_frame: usize) -> Self {
        MessageCodec {
            max_message,
            max_frame: max_frame.clamp(1, LEN_MASK as usize),
            msg: Vec::new(),
            pooled: false,
            pool: None,
            frame: None,
            poisoned: false,
            size_hint: 0,
            expected: 0,
            #[cfg(test)]
            copied: 0,
        }
    }

    /// The same codec reading messages whose size was announced (see
    /// [`expect_next`](Self::expect_next)) into buffers of `pool`, which get them back when
    /// the messages drop.
    pub fn with_pool(mut self, pool: Arc<RecvPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Says that the next message is expected to be `len` bytes long (the application
    /// learned it from an earlier message of the authenticated peer). If it spans several
    /// frames, its buffer is then allocated once, at that size (at most the maximum message
    /// size), instead of growing frame by frame: the message is read into its final buffer.
    /// The hint only sizes the allocation; it changes nothing about which messages are
    /// accepted.
    pub fn expect_next(&mut self, len: u64) {
        self.size_hint = len.min(self.max_message) as usize;
    }

    /// The largest message this codec accepts.
    pub fn max_message(&self) -> u64 {
        self.max_message
    }

    /// The largest frame payload this codec accepts and produces.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// True when no message is partially decoded (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.msg.is_empty()
    }

    /// Capacity held by the reassembly buffer (for tests of the memory bound).
    #[cfg(test)]
    fn reassembly_capacity(&self) -> usize {
        self.msg.capacity()
    }

    fn fail<T>(&mut self, e: NetError) -> Result<T, NetError> {
        self.poisoned = true;
        self.frame = None;
        self.msg = Vec::new();
        self.pooled = false;
        Err(e)
    }

    /// When a multi-frame message is being reassembled and the current frame still misses
    /// bytes, the buffer they belong in and how many are missing, so that a reader can read
    /// them straight from the socket. Call [`direct_filled`](Self::direct_filled) after.
    fn direct_target(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        match self.frame {
            Some(f) if !f.whole && f.remaining > 0 && !self.poisoned => {
                self.msg.reserve(f.remaining);
                Some((&mut self.msg, f.remaining))
            }
            _ => None,
        }
    }

    /// Between two frames of a message being reassembled whose rest is large (or of unknown
    /// size): the next frame's header has not arrived, and its payload is better read in
    /// place than read ahead with the header and copied. (A short rest, like the few bytes
    /// past 1 MiB of an encoded 1 MiB chunk, is read with what follows it.)
    fn between_frames(&self) -> bool {
        self.frame.is_none()
            && !self.msg.is_empty()
            && !self.poisoned
            && (self.expected == 0 || self.expected.saturating_sub(self.msg.len()) >= READ_CHUNK)
    }

    /// The reassembled message, handed over without copying.
    fn finish_message(&mut self) -> Bytes {
        let msg = std::mem::take(&mut self.msg);
        match (std::mem::take(&mut self.pooled), &self.pool) {
            (true, Some(pool)) => pool.seal(msg),
            _ => Bytes::from(msg),
        }
    }

    /// `n` bytes were read into the buffer returned by `direct_target`.
    fn direct_filled(&mut self, n: usize) {
        if let Some(f) = &mut self.frame {
            debug_assert!(!f.whole && n <= f.remaining);
            f.remaining -= n.min(f.remaining);
        }
    }

    /// Encodes `msg` as frames appended to `dst` (copying the payload).
    fn encode_into(&self, msg: &[u8], dst: &mut BytesMut) -> Result<(), NetError> {
        check_size(msg.len(), self.max_message)?;
        let frames = msg.len().div_ceil(self.max_frame).max(1);
        dst.reserve(msg.len() + frames * HEADER_LEN);
        let mut rest = msg;
        loop {
            let n = rest.len().min(self.max_frame);
            let more = n < rest.len();
            dst.put_slice(&encode_header(n, more));
            dst.put_slice(&rest[..n]);
            rest = &rest[n..];
            if !more {
                return Ok(());
            }
        }
    }
}

/// Appends `msg` to `buf` as frames of at most `max_frame` bytes; returns the bytes added.
pub(crate) fn frame_copy(msg: &[u8], max_frame: usize, buf: &mut BytesMut) -> usize {
    let frames = msg.len().div_ceil(max_frame).max(1);
    buf.reserve(msg.len() + frames * HEADER_LEN);
    let mut off = 0;
    loop {
        let n = (msg.len() - off).min(max_frame);
        let more = off + n < msg.len();
        buf.put_slice(&encode_header(n, more));
        buf.put_slice(&msg[off..off + n]);
        off += n;
        if !more {
            return msg.len() + frames * HEADER_LEN;
        }
    }
}

pub(crate) fn check_size(len: usize, max: u64) -> Result<(), NetError> {
    if len as u64 > max {
        Err(NetError::Oversized {
            size: len as u64,
            max,
        })
    } else {
        Ok(())
    }
}

impl Decoder for MessageCodec {
    type Item = Bytes;
    type Error = NetError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, NetError> {
        if self.poisoned {
            return Err(NetError::Malformed(FrameError::Poisoned));
        }
        loop {
            match self.frame {
                None => {
                    if src.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let word = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
                    let (len, more) = match parse_header(word, self.max_frame) {
                        Ok(h) => h,
                        Err(e) => return self.fail(NetError::Malformed(e)),
                    };
                    let total = self.msg.len() as u64 + len as u64;
                    if total > self.max_message {
                        return self.fail(NetError::Oversized {
                            size: total,
                            max: self.max_message,
                        });
                    }
                    src.advance(HEADER_LEN);
                    let hint = std::mem::take(&mut self.size_hint);
                    if more && self.msg.is_empty() {
                        self.expected = hint;
                        match &self.pool {
                            Some(pool) if hint > 0 => {
                                self.msg = pool.take(hint);
                                self.pooled = true;
                            }
                            _ => self.msg.reserve(hint),
                        }
                    }
                    let whole = !more && self.msg.is_empty();
                    if whole && src.len() >= len {
                        return Ok(Some(src.split_to(len).freeze()));
                    }
                    if whole {
                        // Bounded by the frame size limit, checked above.
                        src.reserve(len - src.len());
                    }
                    self.frame = Some(FrameState {
                        remaining: len,
                        more,
                        whole,
                    });
                }
                Some(f) if f.whole => {
                    if src.len() < f.remaining {
                        return Ok(None);
                    }
                    self.frame = None;
                    return Ok(Some(src.split_to(f.remaining).freeze()));
                }
                Some(mut f) => {
                    let n = f.remaining.min(src.len());
                    if n > 0 {
                        self.msg.extend_from_slice(&src[..n]);
                        src.advance(n);
                        f.remaining -= n;
                        #[cfg(test)]
                        {
                            self.copied += n;
                        }
                    }
                    if f.remaining > 0 {
                        self.frame = Some(f);
                        return Ok(None);
                    }
                    self.frame = None;
                    if !f.more {
                        return Ok(Some(self.finish_message()));
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, NetError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() && self.is_idle() => Ok(None),
            None => self.fail(NetError::Malformed(FrameError::Truncated)),
        }
    }
}

impl Encoder<Bytes> for MessageCodec {
    type Error = NetError;

    fn encode(&mut self, msg: Bytes, dst: &mut BytesMut) -> Result<(), NetError> {
        self.encode_into(&msg, dst)
    }
}

impl Encoder<&[u8]> for MessageCodec {
    type Error = NetError;

    fn encode(&mut self, msg: &[u8], dst: &mut BytesMut) -> Result<(), NetError> {
        self.encode_into(msg, dst)
    }
}

/// Treats an unexpected EOF (TLS stream closed without `close_notify`) like a plain EOF;
/// the codec then decides whether it happened at a message boundary.
fn read_result(r: io::Result<usize>) -> Result<usize, NetError> {
    match r {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(NetError::Io(e)),
    }
}

/// Reads messages from a byte stream.
///
/// [`read`](Self::read) is cancel-safe: all progress is kept in the reader, so it can be
/// used as a branch of `tokio::select!`.
///
/// ```
/// # async fn demo() -> Result<(), dagger_net::NetError> {
/// use dagger_net::frame::{MessageCodec, MessageReader, MessageWriter};
///
/// let (a, b) = tokio::io::duplex(1 << 16);
/// let mut w = MessageWriter::new(a, 1 << 20);
/// let mut r = MessageReader::new(b, MessageCodec::new(1 << 20));
/// w.send(&b"ping"[..]).await?;
/// assert_eq!(r.read().await?.unwrap(), &b"ping"[..]);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
pub struct MessageReader<R> {
    io: R,
    buf: BytesMut,
    codec: MessageCodec,
    eof: bool,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// A reader decoding with `codec`.
    pub fn new(io: R, codec: MessageCodec) -> Self {
        Self::with_buffer(io, codec, BytesMut::new())
    }

    /// A reader that first decodes the bytes already in `buf` (read ahead by someone else).
    pub fn with_buffer(io: R, codec: MessageCodec, buf: BytesMut) -> Self {
        MessageReader {
            io,
            buf,
            codec,
            eof: false,
        }
    }

    /// Reads the next message: `Ok(None)` when the stream ended cleanly between messages.
    /// An error (malformed frame, oversized message, stream ending mid-message, I/O)
    /// leaves the reader unusable.
    pub async fn read(&mut self) -> Result<Option<Bytes>, NetError> {
        read_message(&mut self.io, &mut self.buf, &mut self.codec, &mut self.eof).await
    }

    /// See [`MessageCodec::expect_next`].
    pub fn expect_next(&mut self, len: u64) {
        self.codec.expect_next(len);
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// The stream and the bytes read ahead but not decoded yet.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }
}

/// Core of [`MessageReader::read`], also used by the handshake (which needs the stream for
/// writing in between reads).
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    codec: &mut MessageCodec,
    eof: &mut bool,
) -> Result<Option<Bytes>, NetError> {
    loop {
        if *eof {
            return codec.decode_eof(buf);
        }
        if let Some(msg) = codec.decode(buf)? {
            return Ok(Some(msg));
        }
        // `decode` consumed everything it could: if the input buffer is empty and a large
        // frame is in progress, read its bytes straight into the reassembly buffer.
        if buf.is_empty() {
            if let Some((target, want)) = codec.direct_target() {
                let n = read_result((&mut *io).take(want as u64).read_buf(target).await)?;
                if n == 0 {
                    *eof = true;
                } else {
                    codec.direct_filled(n);
                }
                continue;
            }
        }
        // Between two frames of a message being reassembled: read only the next header, so
        // that the frame's payload is then read straight into the message's buffer (above)
        // instead of being read ahead into `buf` and copied from there (up to `READ_CHUNK`
        // bytes per frame, a user-space copy of ~6 % of a large message's bytes).
        if buf.len() < HEADER_LEN && codec.between_frames() {
            let want = HEADER_LEN - buf.len();
            buf.reserve(want);
            if read_result((&mut *io).take(want as u64).read_buf(buf).await)? == 0 {
                *eof = true;
            }
            continue;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        if read_result(io.read_buf(buf).await)? == 0 {
            *eof = true;
        }
    }
}

/// Writes messages to a byte stream.
///
/// [`feed`](Self::feed) queues a message without I/O: small messages are copied into one
/// buffer, large ones are queued zero-copy. [`flush`](Self::flush) writes everything queued
/// with as few (vectored) system calls as possible. [`send`](Self::send) is `feed` +
/// `flush`. To batch, feed all the messages at hand and flush once.
///
/// `flush` is cancel-safe in the sense that what was queued stays queued: a later `flush`
/// continues where the cancelled one stopped.
#[derive(Debug)]
pub struct MessageWriter<W> {
    io: W,
    max_message: u64,
    max_frame: usize,
    buf: BytesMut,
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    /// A writer refusing messages over `max_message` bytes, with frames of
    /// [`MAX_FRAME_PAYLOAD`] bytes.
    pub fn new(io: W, max_message: u64) -> Self {
        Self::with_frame_size(io, max_message, MAX_FRAME_PAYLOAD)
    }

    /// A writer producing frames of at most `max_frame` bytes (the receiver must accept
    /// them; mostly for tests).
    pub fn with_frame_size(io: W, max_message: u64, max_frame: usize) -> Self {
        MessageWriter {
            io,
            max_message,
            max_frame: max_frame.clamp(1, LEN_MASK as usize),
            buf: BytesMut::with_capacity(READ_CHUNK),
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Queues a message without writing it. Large messages are not copied.
    ///
    /// Fails with [`NetError::Oversized`] if the message exceeds the size limit.
    pub fn feed(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        let msg: Bytes = msg.into();
        self.put_frames(&msg, Some(&msg))
    }

    /// Queues a message by copying it.
    pub fn feed_slice(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.put_frames(msg, None)
    }

    /// Queues one message made of `parts` one after the other (as if they were
    /// concatenated) without writing it. Pieces of large frames are queued as slices of the
    /// parts (not copied), so a message whose body is a large buffer behind a small header
    /// goes out without being assembled first.
    ///
    /// Fails with [`NetError::Oversized`] if the message exceeds the size limit.
    pub fn feed_parts(&mut self, parts: &[Bytes]) -> Result<(), NetError> {
        self.put_parts(parts, |p, range| Some(p.slice(range)))
    }

    /// Queues one message made of `parts` one after the other (as if they were
    /// concatenated), copying them: a small header and body go out without being assembled
    /// first.
    ///
    /// Fails with [`NetError::Oversized`] if the message exceeds the size limit.
    pub fn feed_slices(&mut self, parts: &[&[u8]]) -> Result<(), NetError> {
        self.put_parts(parts, |_, _| None)
    }

    /// Frames the concatenation of `parts`; a piece of a large frame is queued as
    /// `shared(part, range)` when that gives one, else copied.
    fn put_parts<P: AsRef<[u8]>>(
        &mut self,
        parts: &[P],
        shared: impl Fn(&P, std::ops::Range<usize>) -> Option<Bytes>,
    ) -> Result<(), NetError> {
        let total = parts
            .iter()
            .try_fold(0usize, |n, p| n.checked_add(p.as_ref().len()))
            .unwrap_or(usize::MAX);
        check_size(total, self.max_message)?;
        // The parts in order, with the position reached in the current one.
        let (mut part, mut at) = (0, 0);
        let mut off = 0;
        loop {
            let n = (total - off).min(self.max_frame);
            let more = off + n < total;
            self.buf.put_slice(&encode_header(n, more));
            let mut left = n;
            while left > 0 {
                let p = &parts[part];
                let bytes = p.as_ref();
                let k = (bytes.len() - at).min(left);
                match (k > COPY_THRESHOLD)
                    .then(|| shared(p, at..at + k))
                    .flatten()
                {
                    Some(piece) => {
                        self.seal();
                        self.queue.push_back(piece);
                    }
                    None => self.buf.put_slice(&bytes[at..at + k]),
                }
                at += k;
                left -= k;
                if at == bytes.len() {
                    part += 1;
                    at = 0;
                }
            }
            self.queued += HEADER_LEN + n;
            off += n;
            if !more {
                return Ok(());
            }
        }
    }

    /// Frames `msg`; payloads of large frames are queued as slices of `shared` when given.
    fn put_frames(&mut self, msg: &[u8], shared: Option<&Bytes>) -> Result<(), NetError> {
        check_size(msg.len(), self.max_message)?;
        // Every frame is copied: the message is small, or nothing can be shared.
        if shared.is_none() || msg.len() <= COPY_THRESHOLD {
            self.queued += frame_copy(msg, self.max_frame, &mut self.buf);
            return Ok(());
        }
        let mut off = 0;
        loop {
            let n = (msg.len() - off).min(self.max_frame);
            let more = off + n < msg.len();
            self.buf.put_slice(&encode_header(n, more));
            match shared {
                Some(bytes) if n > COPY_THRESHOLD => {
                    self.seal();
                    self.queue.push_back(bytes.slice(off..off + n));
                }
                _ => self.buf.put_slice(&msg[off..off + n]),
            }
            self.queued += HEADER_LEN + n;
            off += n;
            if !more {
                return Ok(());
            }
        }
    }

    /// Queues bytes that are already framed (the rest of a message a
    /// [`DirectWriter`](crate::DirectWriter) could not write at once), after what is queued.
    pub fn feed_framed(&mut self, framed: Bytes) {
        if framed.is_empty() {
            return;
        }
        self.seal();
        self.queued += framed.len();
        self.queue.push_back(framed);
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.queued
    }

    /// The largest frame payload this writer produces.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The largest message this writer accepts.
    pub(crate) fn max_message(&self) -> u64 {
        self.max_message
    }

    /// Moves the write buffer's contents to the queue.
    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.queue.push_back(self.buf.split().freeze());
        }
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.seal();
        while !self.queue.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for b in self.queue.iter().take(MAX_IOV) {
                    iov[k] = IoSlice::new(b);
                    k += 1;
                }
                self.io.write_vectored(&iov[..k]).await?
            };
            if n == 0 {
                return Err(NetError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        self.io.flush().await?;
        if self.buf.capacity() < READ_CHUNK {
            // Reclaims the buffer once the written pieces are gone.
            self.buf.reserve(READ_CHUNK);
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n.min(self.queued);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Queues a message and flushes.
    pub async fn send(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        self.feed(msg)?;
        self.flush().await
    }

    /// Flushes, then shuts the stream down for writing (the peer's reader sees a clean end).
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(msgs: &[Vec<u8>], frame: usize) -> BytesMut {
        let codec = MessageCodec::with_frame_size(u64::MAX, frame);
        let mut out = BytesMut::new();
        for m in msgs {
            codec.encode_into(m, &mut out).unwrap();
        }
        out
    }

    /// Feeds `wire` in the given chunk sizes; returns the messages and the final result.
    fn decode_chunked(
        codec: &mut MessageCodec,
        wire: &[u8],
        chunks: &[usize],
    ) -> (Vec<Bytes>, Result<(), NetError>) {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let mut rest = wire;
        let mut i = 0;
        loop {
            let step = if chunks.is_empty() {
                rest.len()
            } else {
                chunks[i % chunks.len()]
            };
            i += 1;
            let n = step.min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            let eof = rest.is_empty();
            loop {
                let r = if eof {
                    codec.decode_eof(&mut buf)
                } else {
                    codec.decode(&mut buf)
                };
                match r {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
            if eof {
                return (out, Ok(()));
            }
        }
    }

    #[test]
    fn header_round_trip_and_errors() {
        assert_eq!(
            parse_header(u32::from_be_bytes(encode_header(7, true)), 16),
            Ok((7, true))
        );
        assert_eq!(
            parse_header(0x0100_0000, 16),
            Err(FrameError::ReservedBits {
                header: 0x0100_0000
            })
        );
        assert_eq!(
            parse_header(17, 16),
            Err(FrameError::FrameTooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            parse_header(MORE_BIT, 16),
            Err(FrameError::EmptyContinuation)
        );
    }

    #[test]
    fn empty_and_multi_frame_messages() {
        let msgs = vec![vec![], vec![1; 10], vec![2; 3], vec![], vec![3; 33]];
        let wire = encode_all(&msgs, 4);
        let mut codec = MessageCodec::with_frame_size(1 << 20, 4);
        let (out, res) = decode_chunked(&mut codec, &wire, &[1, 2, 3]);
        res.unwrap();
        assert_eq!(out, msgs);
    }

    #[test]
    fn oversized_message_refused_before_arrival() {
        let msgs = vec![vec![0; 100]];
        let wire = encode_all(&msgs, 8);
        let mut codec = MessageCodec::with_frame_size(50, 8);
        let (out, res) = decode_chunked(&mut codec, &wire, &[]);
        assert!(out.is_empty());
        assert!(
            matches!(res, Err(NetError::Oversized { size: 56, max: 50 })),
            "{res:?}"
        );
        // Poisoned afterwards.
        assert!(matches!(
            codec.decode(&mut BytesMut::new()),
            Err(NetError::Malformed(FrameError::Poisoned))
        ));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let wire = encode_all(&[vec![5; 20]], 8);
        for cut in 1..wire.len() {
            let mut codec = MessageCodec::with_frame_size(1 << 20, 8);
            let (out, res) = decode_chunked(&mut codec, &wire[..cut], &[3]);
            assert!(out.is_empty());
            assert!(
                matches!(res, Err(NetError::Malformed(FrameError::Truncated))),
                "cut {cut}: {res:?}"
            );
        }
    }

    #[test]
    fn announced_messages_are_received_into_reused_buffers() {
        let msgs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 5000]).collect();
        let wire = encode_all(&msgs, 1000);
        let pool = RecvPool::new(1 << 20, std::time::Duration::from_secs(60));
        let codec = MessageCodec::with_frame_size(1 << 20, 1000).with_pool(pool.clone());
        let reader = ChunkedReader {
            data: wire.to_vec(),
            pos: 0,
            chunks: vec![700, 3000],
            i: 0,
        };
        block_on(async {
            let mut r = MessageReader::new(reader, codec);
            let mut seen = Vec::new();
            for m in &msgs {
                r.expect_next(m.len() as u64);
                let got = r.read().await.unwrap().unwrap();
                assert_eq!(&got[..], &m[..]);
                seen.push(got.as_ptr());
                // Dropped before the next one arrives: the next one reuses its buffer.
                drop(got);
            }
            assert!(seen.iter().all(|p| *p == seen[0]), "{seen:?}");
            assert!(r.read().await.unwrap().is_none());
        });
        assert!(pool.idle_bytes() >= 5000);
    }

    #[test]
    fn later_frames_of_a_message_are_read_straight_into_its_buffer() {
        // One message of ten 100 kB frames, then a small one; the reader gives whatever
        // is asked for.
        let msgs = vec![
            (0..1_000_000).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
            vec![9; 10],
        ];
        let wire = encode_all(&msgs, 100_000);
        let reader = ChunkedReader {
            data: wire.to_vec(),
            pos: 0,
            chunks: vec![usize::MAX],
            i: 0,
        };
        block_on(async {
            let codec = MessageCodec::with_frame_size(1 << 20, 100_000);
            let mut r = MessageReader::new(reader, codec);
            r.expect_next(1_000_000);
            assert_eq!(&r.read().await.unwrap().unwrap()[..], &msgs[0][..]);
            // Only what the first read took ahead of the first frame's header was copied;
            // every later frame's header was read alone and its payload read in place.
            assert!(r.codec.copied < READ_CHUNK, "{}", r.codec.copied);
            assert_eq!(&r.read().await.unwrap().unwrap()[..], &msgs[1][..]);
            assert!(r.read().await.unwrap().is_none());
        });
    }

    /// Reference model of the decoder over a sequence of raw frames.
    fn model(
        frames: &[(u32, Vec<u8>)],
        max_frame: usize,
        max_message: u64,
    ) -> (Vec<Vec<u8>>, bool) {
        let mut out = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        for (flags, payload) in frames {
            let word = flags | payload.len() as u32;
            if parse_header(word, max_frame).is_err() {
                return (out, false);
            }
            if (cur.len() + payload.len()) as u64 > max_message {
                return (out, false);
            }
            cur.extend_from_slice(payload);
            if word & MORE_BIT == 0 {
                out.push(std::mem::take(&mut cur));
            }
        }
        (out, cur.is_empty())
    }

    /// Yields its data in chunks of the given sizes (exercising partial reads).
    struct ChunkedReader {
        data: Vec<u8>,
        pos: usize,
        chunks: Vec<usize>,
        i: usize,
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let step = self.chunks[self.i % self.chunks.len()];
            self.i += 1;
            let n = step.min(self.data.len() - self.pos).min(buf.remaining());
            buf.put_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes in arbitrary chunks: never panics, memory stays bounded.
        #[test]
        fn arbitrary_bytes_never_panic(
            wire in proptest::collection::vec(any::<u8>(), 0..2048),
            chunks in proptest::collection::vec(1usize..64, 0..8),
            frame in 1usize..64,
            max_message in 0u64..256,
        ) {
            let mut codec = MessageCodec::with_frame_size(max_message, frame);
            let (out, _res) = decode_chunked(&mut codec, &wire, &chunks);
            for m in &out {
                prop_assert!(m.len() as u64 <= max_message);
            }
            prop_assert!(codec.reassembly_capacity() as u64 <= 2 * (max_message + frame as u64) + 64);
        }

        /// Encoded messages decode exactly, whatever the chunking and frame size.
        #[test]
        fn encoded_messages_round_trip(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
            chunks in proptest::collection::vec(1usize..200, 0..8),
            frame in 1usize..128,
        ) {
            let wire = encode_all(&msgs, frame);
            let mut codec = MessageCodec::with_frame_size(300, frame);
            let (out, res) = decode_chunked(&mut codec, &wire, &chunks);
            prop_assert!(res.is_ok(), "{:?}", res);
            prop_assert_eq!(out, msgs);
        }

        /// A cut stream decodes the messages before the cut, then reports truncation unless
        /// it was cut at a message boundary.
        #[test]
        fn truncated_round_trip(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..6),
            frame in 1usize..40,
            cut_frac in 0.0f64..1.0,
        ) {
            let wire = encode_all(&msgs, frame);
            let cut = (wire.len() as f64 * cut_frac) as usize;
            let mut codec = MessageCodec::with_frame_size(1000, frame);
            let (out, res) = decode_chunked(&mut codec, &wire[..cut], &[7]);
            prop_assert!(out.len() <= msgs.len());
            prop_assert_eq!(&out[..], &msgs[..out.len()]);
            let boundary = encode_all(&msgs[..out.len()], frame).len() == cut;
            prop_assert_eq!(res.is_ok(), boundary, "{:?}", res);
        }

        /// Arbitrary frame sequences (valid or not) decode like the reference model.
        #[test]
        fn arbitrary_frames_match_model(
            frames in proptest::collection::vec(
                (prop_oneof![Just(0u32), Just(MORE_BIT), Just(0x0100_0000u32), Just(MORE_BIT | 0x4000_0000)],
                 proptest::collection::vec(any::<u8>(), 0..40)),
                0..16),
            chunks in proptest::collection::vec(1usize..50, 0..6),
            max_frame in 1usize..40,
            max_message in 0u64..120,
        ) {
            let mut wire = Vec::new();
            for (flags, p) in &frames {
                wire.extend_from_slice(&(flags | p.len() as u32).to_be_bytes());
                wire.extend_from_slice(p);
            }
            let (expected, ok) = model(&frames, max_frame, max_message);
            let mut codec = MessageCodec::with_frame_size(max_message, max_frame);
            let (out, res) = decode_chunked(&mut codec, &wire, &chunks);
            prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
            prop_assert_eq!(out, expected);
        }

        /// Writer (batched and zero-copy paths) to reader (buffered and direct paths), with
        /// arbitrary read sizes.
        #[test]
        fn writer_to_reader(
            sizes in proptest::collection::vec(prop_oneof![0usize..100, 10_000usize..70_000], 1..6),
            frame in prop_oneof![1usize..64, 1000usize..40_000],
            chunks in proptest::collection::vec(prop_oneof![1usize..16, 1000usize..100_000], 1..5),
            batch in any::<bool>(),
            hint in any::<bool>(),
            pooled in any::<bool>(),
        ) {
            let msgs: Vec<Vec<u8>> = sizes.iter().enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
                .collect();
            let wire = block_on(async {
                let mut w = MessageWriter::with_frame_size(Vec::new(), 1 << 20, frame);
                for m in &msgs {
                    w.feed(m.clone()).unwrap();
                    if !batch {
                        w.flush().await.unwrap();
                    }
                }
                w.flush().await.unwrap();
                assert_eq!(w.buffered(), 0);
                w.io
            });
            prop_assert_eq!(&wire[..], &encode_all(&msgs, frame)[..]);
            let reader = ChunkedReader { data: wire, pos: 0, chunks, i: 0 };
            let pool = RecvPool::new(1 << 20, std::time::Duration::from_secs(60));
            let out = block_on(async {
                let mut codec = MessageCodec::with_frame_size(1 << 20, frame);
                if pooled {
                    codec = codec.with_pool(pool.clone());
                }
                let mut r = MessageReader::new(reader, codec);
                let mut out = Vec::new();
                loop {
                    if hint {
                        // Right, too small (0) or too large: only the allocation differs.
                        let n = sizes.get(out.len()).copied().unwrap_or(5) as u64;
                        r.expect_next(n * (out.len() % 3) as u64);
                    }
                    let Some(m) = r.read().await.unwrap() else { break };
                    // Every other message is dropped at once: its buffer may serve the next.
                    if out.len() % 2 == 1 {
                        prop_assert_eq!(&m[..], &msgs[out.len()][..]);
                        out.push(Bytes::copy_from_slice(&m));
                    } else {
                        out.push(m);
                    }
                }
                Ok(out)
            })?;
            prop_assert_eq!(out, msgs);
        }

        /// A message fed as parts is the same on the wire as the parts joined and fed whole
        /// (empty parts, parts across frame boundaries, large parts queued zero-copy), and
        /// large parts are not copied.
        #[test]
        fn parts_are_sent_as_their_concatenation(
            sizes in proptest::collection::vec(prop_oneof![0usize..40, 16_000usize..70_000], 0..5),
            frame in prop_oneof![1usize..64, 1000usize..40_000],
            batch in any::<bool>(),
        ) {
            let parts: Vec<Bytes> = sizes.iter().enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 17 + j * 3) as u8).collect::<Vec<u8>>().into())
                .collect();
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            let (wire, shared) = block_on(async {
                let mut w = MessageWriter::with_frame_size(Vec::new(), 1 << 20, frame);
                w.feed_parts(&parts).unwrap();
                if !batch {
                    w.flush().await.unwrap();
                }
                w.feed(Bytes::from_static(b"next")).unwrap();
                // Queued slices pointing into a part: the part was not copied.
                let shared = w.queue.iter().any(|q| parts.iter().any(|p| {
                    let (s, at) = (p.as_ptr() as usize, q.as_ptr() as usize);
                    !p.is_empty() && at >= s && at < s + p.len()
                }));
                w.flush().await.unwrap();
                assert_eq!(w.buffered(), 0);
                (w.io, shared)
            });
            let expected = encode_all(&[joined, b"next".to_vec()], frame);
            prop_assert_eq!(&wire[..], &expected[..]);
            // A frame piece over the copy threshold is queued as a slice of its part.
            if batch && frame > COPY_THRESHOLD && sizes.iter().any(|&n| n > frame) {
                prop_assert!(shared);
            }
            // Fed as slices (copied), the same bytes go out.
            let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            let copied = block_on(async {
                let mut w = MessageWriter::with_frame_size(Vec::new(), 1 << 20, frame);
                w.feed_slices(&slices).unwrap();
                w.feed(Bytes::from_static(b"next")).unwrap();
                assert!(w.queue.iter().all(|q| !parts.iter().any(|p| {
                    let (s, at) = (p.as_ptr() as usize, q.as_ptr() as usize);
                    !p.is_empty() && at >= s && at < s + p.len()
                })), "slices are copied");
                w.flush().await.unwrap();
                w.io
            });
            prop_assert_eq!(&copied[..], &expected[..]);
        }
    }

    #[test]
    fn oversized_parts_are_refused() {
        let mut w = MessageWriter::with_frame_size(Vec::new(), 10, 4);
        let parts = [Bytes::from_static(b"12345"), Bytes::from_static(b"678901")];
        assert!(matches!(
            w.feed_parts(&parts),
            Err(NetError::Oversized { size: 11, max: 10 })
        ));
        assert_eq!(w.buffered(), 0);
        w.feed_parts(&parts[..1]).unwrap();
        assert_eq!(w.buffered(), 5 + 2 * HEADER_LEN);
        assert!(matches!(
            w.feed_slices(&[b"12345", b"678901"]),
            Err(NetError::Oversized { size: 11, max: 10 })
        ));
        assert_eq!(w.buffered(), 5 + 2 * HEADER_LEN);
    }
}
