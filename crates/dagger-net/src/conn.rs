//! Connections: listening, connecting, authenticated message streams.
//!
//! A [`Listener`] accepts connections and runs their handshakes concurrently in the
//! background, so a silent or hostile client never holds up the others; [`connect`] opens
//! one. Both yield a [`Connection`] (after TCP, optional TLS and the mutual authentication
//! of [`crate::auth`]) and the peer's [`PeerHello`]. A connection moves opaque messages and
//! can be [split](Connection::split) into a [`Sender`] and a [`Receiver`] for different tasks.
//!
//! Everything here runs on tokio and needs a runtime with the I/O and time drivers enabled
//! (`enable_all`); a current-thread runtime is enough.
//!
//! ```no_run
//! use dagger_net::{connect, Hello, Listener, NetConfig, Role, Secret};
//!
//! # async fn demo() -> Result<(), dagger_net::NetError> {
//! let config = NetConfig::new(Secret::generate()?);
//! let mut listener = Listener::bind("127.0.0.1:0", &config, Hello::new(Role::Head, 42)).await?;
//! let addr = listener.local_addr();
//!
//! let client = tokio::spawn({
//!     let config = config.clone();
//!     async move {
//!         let (mut conn, head) = connect(addr, &config, Hello::new(Role::Worker, 42)).await?;
//!         assert_eq!(head.role, Role::Head);
//!         conn.send(&b"ping"[..]).await?;
//!         conn.recv().await
//!     }
//! });
//! let (mut conn, _worker) = listener.accept().await?;
//! let ping = conn.recv().await?.expect("a message");
//! conn.send(ping).await?;
//! # let _ = client.await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::auth::{self, Hello, PeerHello, PeerInfo, Secret, Side};
use crate::direct::{DirectWriter, Stream as DirectStream};
use crate::duplex::WakeBoth;
use crate::frame::{FrameError, MessageCodec, MessageReader, MessageWriter, DEFAULT_MAX_MESSAGE};
use crate::pool::RecvPool;
use crate::tls::{self, TlsConfig};

/// Everything that can go wrong on a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetError {
    /// An I/O error on the socket.
    Io(io::Error),
    /// An operation did not complete in time.
    Timeout {
        /// What timed out (`"connect"`, `"handshake"`).
        during: &'static str,
        /// The time limit.
        after: Duration,
    },
    /// The peer's proof of knowing the cluster secret was wrong.
    AuthFailed,
    /// The peer speaks another version of the wire protocol.
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`](crate::auth::PROTOCOL_VERSION).
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer's binary registered other tasks, or was built with another version of dagger.
    RegistryMismatch {
        /// Our registry hash.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The peer sent bytes that are not valid frames or handshake messages.
    Malformed(FrameError),
    /// A message exceeds the configured maximum message size.
    Oversized {
        /// The message's size (when receiving: the size reached so far).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The connection was closed (by the peer, or after an earlier error).
    Closed,
    /// TLS failed.
    Tls(String),
    /// The peer's TLS certificate is not the pinned one.
    FingerprintMismatch {
        /// The pinned fingerprint (hex).
        expected: String,
        /// The fingerprint of the certificate the peer presented (hex).
        actual: String,
    },
    /// Invalid configuration (secret, fingerprint, TLS settings).
    Config(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Io(e) => write!(f, "I/O error: {e}"),
            NetError::Timeout { during, after } => write!(f, "{during} timed out after {after:?}"),
            NetError::AuthFailed => {
                write!(f, "authentication failed: the peer does not know the cluster secret")
            }
            NetError::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: the peer speaks version {theirs}, we speak version {ours}"
            ),
            NetError::RegistryMismatch { ours, theirs } => write!(
                f,
                "the peer runs a different binary: its registered tasks or its dagger build (version and sources) differ (hash {theirs:016x} vs {ours:016x})"
            ),
            NetError::Malformed(e) => write!(f, "malformed data from the peer: {e}"),
            NetError::Oversized { size, max } => write!(
                f,
                "message of {size} bytes exceeds the maximum message size of {max} bytes"
            ),
            NetError::Closed => write!(f, "connection closed"),
            NetError::Tls(e) => write!(f, "TLS error: {e}"),
            NetError::FingerprintMismatch { expected, actual } => write!(
                f,
                "TLS: the peer's certificate fingerprint {actual} does not match the pinned fingerprint {expected}"
            ),
            NetError::Config(e) => write!(f, "invalid network configuration: {e}"),
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::Io(e) => Some(e),
            NetError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for NetError {
    fn from(e: io::Error) -> NetError {
        NetError::Io(e)
    }
}

impl NetError {
    /// True for errors caused by what the peer sent (malformed data, oversized message):
    /// the connection was dropped for protocol violation.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, NetError::Malformed(_) | NetError::Oversized { .. })
    }
}

/// Settings of connections. Fields are public; [`NetConfig::new`] gives the defaults.
///
/// ```
/// use std::time::Duration;
/// use dagger_net::{NetConfig, Secret};
///
/// let mut config = NetConfig::new(Secret::generate()?);
/// config.max_message = 1 << 30;
/// let config = config.with_handshake_timeout(Duration::from_secs(5));
/// assert!(config.tls.is_none());
/// # Ok::<(), dagger_net::NetError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NetConfig {
    /// The cluster secret every peer must know.
    pub secret: Secret,
    /// TLS settings; `None` (the default) for plain TCP.
    pub tls: Option<TlsConfig>,
    /// Largest message sent or accepted, in bytes (default [`DEFAULT_MAX_MESSAGE`], 8 GiB).
    pub max_message: u64,
    /// Time limit of the TLS and authentication handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Time limit of establishing the TCP connection in [`connect`] (default 10 s).
    pub connect_timeout: Duration,
    /// Most handshakes a [`Listener`] runs at once; more connections wait in the kernel's
    /// backlog (default 128).
    pub max_pending_handshakes: usize,
    /// Where large messages whose size was announced ([`Receiver::expect_next`]) are
    /// received: buffers reused from message to message, shared by every connection made
    /// with this configuration or a clone of it (default: a new pool with
    /// [`RecvPool::with_defaults`]).
    pub recv_pool: Arc<RecvPool>,
    /// On Linux without TLS: a [`Listener`] also listens on a Unix socket named after its
    /// address, and [`connect`] to an address such a listener of this host is bound to
    /// goes through it instead of TCP (cheaper and faster; the same authentication runs on
    /// it). Default `true`.
    pub local_sockets: bool,
}

impl NetConfig {
    /// Defaults around a secret: plain TCP, 8 GiB messages, 10 s timeouts.
    pub fn new(secret: Secret) -> NetConfig {
        NetConfig {
            secret,
            tls: None,
            max_message: DEFAULT_MAX_MESSAGE,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_pending_handshakes: 128,
            recv_pool: RecvPool::with_defaults(),
            local_sockets: true,
        }
    }

    /// The same configuration with local (Unix) sockets on or off (see
    /// [`local_sockets`](NetConfig::local_sockets)).
    pub fn with_local_sockets(mut self, on: bool) -> NetConfig {
        self.local_sockets = on;
        self
    }

    /// The same configuration with TLS.
    pub fn with_tls(mut self, tls: TlsConfig) -> NetConfig {
        self.tls = Some(tls);
        self
    }

    /// The same configuration with another maximum message size.
    pub fn with_max_message(mut self, max: u64) -> NetConfig {
        self.max_message = max;
        self
    }

    /// The same configuration with another handshake time limit.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> NetConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The same configuration with another TCP connect time limit.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> NetConfig {
        self.connect_timeout = timeout;
        self
    }

    /// A copy pinning the TLS certificate fingerprint of the peer to connect to (see
    /// [`TlsConfig::with_peer_fingerprint`]); an error if TLS is off.
    pub fn for_peer(&self, fingerprint: &str) -> Result<NetConfig, NetError> {
        let mut config = self.clone();
        let tls = config
            .tls
            .take()
            .ok_or_else(|| NetError::Config("pinning a peer fingerprint but TLS is off".into()))?;
        config.tls = Some(tls.with_peer_fingerprint(fingerprint)?);
        Ok(config)
    }
}

/// Read half of a plain or TLS stream.
enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<WakeBoth<TlsStream<TcpStream>>>),
    #[cfg(target_os = "linux")]
    Unix(crate::local::LocalRead),
}

/// Write half of a plain or TLS stream.
enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<WakeBoth<TlsStream<TcpStream>>>),
    #[cfg(target_os = "linux")]
    Unix(crate::local::LocalWrite),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
            #[cfg(target_os = "linux")]
            ReadHalf::Unix(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl WriteHalf {
    #[cfg(not(unix))]
    fn duplicate(&self) -> Option<DirectStream> {
        None
    }

    /// Another descriptor of the socket, for a [`DirectWriter`] (not with TLS).
    #[cfg(unix)]
    fn duplicate(&self) -> Option<DirectStream> {
        use std::os::fd::AsFd;
        match self {
            WriteHalf::Tcp(w) => {
                let fd = w.as_ref().as_fd().try_clone_to_owned().ok()?;
                Some(DirectStream::Tcp(std::net::TcpStream::from(fd)))
            }
            WriteHalf::Tls(_) => None,
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => w.duplicate().ok().map(DirectStream::Unix),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
            #[cfg(target_os = "linux")]
            WriteHalf::Unix(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The sending half of a [`Connection`].
///
/// [`feed`](Sender::feed) queues without I/O; [`flush`](Sender::flush) writes all that is
/// queued in as few system calls as possible; [`send`](Sender::send) does both. To batch
/// many small messages, feed them all, then flush once. Large messages are written without
/// copying, as frames of [`MAX_FRAME_PAYLOAD`](crate::frame::MAX_FRAME_PAYLOAD) bytes.
///
/// [`close`](Sender::close) ends the stream: the peer's receiver sees `Ok(None)` after the
/// last message. Dropping the sender does the same on plain TCP (dropping what was queued
/// but not flushed); with TLS the stream ends when both halves are dropped.
pub struct Sender {
    writer: MessageWriter<WriteHalf>,
    peer: SocketAddr,
}

impl Sender {
    /// Queues a message without writing it (see [`flush`](Sender::flush)). `Vec<u8>` and
    /// `Bytes` are taken without copying. Fails only if the message exceeds
    /// [`NetConfig::max_message`].
    pub fn feed(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        self.writer.feed(msg)
    }

    /// Queues a copy of a message.
    pub fn feed_slice(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.writer.feed_slice(msg)
    }

    /// Queues one message made of `parts` one after the other, without copying large ones
    /// (see [`MessageWriter::feed_parts`]).
    pub fn feed_parts(&mut self, parts: &[Bytes]) -> Result<(), NetError> {
        self.writer.feed_parts(parts)
    }

    /// Queues one message made of `parts` one after the other, copied (see
    /// [`MessageWriter::feed_slices`]).
    pub fn feed_slices(&mut self, parts: &[&[u8]]) -> Result<(), NetError> {
        self.writer.feed_slices(parts)
    }

    /// Queues bytes that are already framed: the rest of a message a [`DirectWriter`] of
    /// this sender could not write at once (they must go before any other message).
    pub fn feed_framed(&mut self, framed: Bytes) {
        self.writer.feed_framed(framed)
    }

    /// A writer of small messages that any thread can use, on a plain connection (`None`
    /// with TLS, or if the socket could not be duplicated). See [`crate::direct`] for the
    /// ordering rules.
    pub fn direct_writer(&self) -> Option<DirectWriter> {
        let stream = self.writer.get_ref().duplicate()?;
        Some(DirectWriter::new(
            stream,
            self.writer.max_message(),
            self.writer.max_frame(),
        ))
    }

    /// Writes all queued messages. Cancel-safe: if the future is dropped, what was not
    /// written stays queued for the next flush.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.writer.flush().await
    }

    /// Queues a message and flushes.
    pub async fn send(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        self.writer.send(msg).await
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.writer.buffered()
    }

    /// Flushes and ends the stream (with TLS, sends `close_notify`).
    pub async fn close(&mut self) -> Result<(), NetError> {
        self.writer.shutdown().await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.peer)
            .field("buffered", &self.buffered())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Open,
    Ended,
    Failed,
}

/// The receiving half of a [`Connection`].
pub struct Receiver {
    reader: MessageReader<ReadHalf>,
    peer: SocketAddr,
    state: RecvState,
}

impl Receiver {
    /// Receives the next message; `Ok(None)` when the peer closed the connection cleanly.
    ///
    /// Malformed or oversized data from the peer is an error (logged with the peer's
    /// address); after an error every call returns [`NetError::Closed`] and the connection
    /// should be dropped. Cancel-safe: usable as a branch of `tokio::select!`.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, NetError> {
        match self.state {
            RecvState::Open => {}
            RecvState::Ended => return Ok(None),
            RecvState::Failed => return Err(NetError::Closed),
        }
        match self.reader.read().await {
            Ok(Some(msg)) => Ok(Some(msg)),
            Ok(None) => {
                self.state = RecvState::Ended;
                Ok(None)
            }
            Err(e) => {
                self.state = RecvState::Failed;
                if e.is_protocol_violation() {
                    log::warn!("closing the connection with {}: {e}", self.peer);
                } else {
                    log::debug!("connection with {} failed: {e}", self.peer);
                }
                Err(e)
            }
        }
    }

    /// Says that the next message is expected to be `len` bytes long, so that a large one is
    /// read into one buffer of that size (see [`MessageCodec::expect_next`]).
    pub fn expect_next(&mut self, len: u64) {
        self.reader.expect_next(len);
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("peer", &self.peer)
            .field("state", &self.state)
            .finish()
    }
}

/// An authenticated connection carrying messages both ways.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
    local: SocketAddr,
    local_socket: bool,
}

impl Connection {
    fn new(
        read: ReadHalf,
        write: WriteHalf,
        read_ahead: BytesMut,
        config: &NetConfig,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Connection {
        Connection {
            sender: Sender {
                writer: MessageWriter::new(write, config.max_message),
                peer,
            },
            receiver: Receiver {
                reader: MessageReader::with_buffer(
                    read,
                    MessageCodec::new(config.max_message).with_pool(config.recv_pool.clone()),
                    read_ahead,
                ),
                peer,
                state: RecvState::Open,
            },
            local,
            local_socket: false,
        }
    }

    /// Splits the connection into halves that can move to different tasks.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// See [`Sender::feed`].
    pub fn feed(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        self.sender.feed(msg)
    }

    /// See [`Sender::feed_slice`].
    pub fn feed_slice(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.sender.feed_slice(msg)
    }

    /// See [`Sender::flush`].
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.sender.flush().await
    }

    /// See [`Sender::send`].
    pub async fn send(&mut self, msg: impl Into<Bytes>) -> Result<(), NetError> {
        self.sender.send(msg).await
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, NetError> {
        self.receiver.recv().await
    }

    /// See [`Sender::close`].
    pub async fn close(&mut self) -> Result<(), NetError> {
        self.sender.close().await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.sender.peer
    }

    /// Our address on this connection (over a local socket: the listener's on the listening
    /// end, its IP and port 0 on the connecting end).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the connection goes through a local (Unix) socket rather than TCP (see
    /// [`NetConfig::local_sockets`]).
    pub fn uses_local_socket(&self) -> bool {
        self.local_socket
    }
}

async fn with_timeout<T>(
    limit: Duration,
    during: &'static str,
    fut: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(NetError::Timeout {
            during,
            after: limit,
        }))
}

fn peer_hello(info: PeerInfo, addr: SocketAddr, tls_fingerprint: Option<String>) -> PeerHello {
    PeerHello {
        role: info.role,
        peer_id: info.peer_id,
        registry_hash: info.registry_hash,
        version: info.version,
        addr,
        tls_fingerprint,
    }
}

/// TLS exporter value binding the authentication to the session, and the peer's
/// certificate fingerprint.
fn tls_session_info<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<([u8; 32], Option<String>), NetError> {
    let binding = conn
        .export_keying_material([0u8; 32], tls::EXPORTER_LABEL, None)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let fp = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| tls::fingerprint_hex(c));
    Ok((binding, fp))
}

/// TLS (if configured) and authentication over a fresh TCP stream.
async fn establish(
    tcp: TcpStream,
    side: Side,
    config: &NetConfig,
    acceptor: Option<&TlsAcceptor>,
    hello: &Hello,
) -> Result<(Connection, PeerHello), NetError> {
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?;
    let local = tcp.local_addr()?;
    let secret: &Secret = &config.secret;
    let mut buf = BytesMut::new();
    let (read, write, info, fp) = match (&config.tls, side) {
        (None, _) => {
            let mut tcp = tcp;
            let info = auth::handshake(&mut tcp, &mut buf, secret, hello, side, None).await?;
            let (r, w) = tcp.into_split();
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w), info, None)
        }
        (Some(tls_config), Side::Client) => {
            let connector = TlsConnector::from(tls_config.client_config()?);
            let mut stream = connector
                .connect(tls::server_name(), tcp)
                .await
                .map_err(tls::map_io_error)?;
            let (binding, fp) = tls_session_info(stream.get_ref().1)?;
            let info = auth::handshake(&mut stream, &mut buf, secret, hello, side, Some(&binding))
                .await
                .map_err(map_nested_io)?;
            let (r, w) = tokio::io::split(WakeBoth::new(TlsStream::Client(stream)));
            (ReadHalf::Tls(r), WriteHalf::Tls(w), info, fp)
        }
        (Some(_), Side::Server) => {
            let acceptor =
                acceptor.ok_or_else(|| NetError::Config("TLS acceptor missing".into()))?;
            let mut stream = acceptor.accept(tcp).await.map_err(tls::map_io_error)?;
            let (binding, fp) = tls_session_info(stream.get_ref().1)?;
            let info = auth::handshake(&mut stream, &mut buf, secret, hello, side, Some(&binding))
                .await
                .map_err(map_nested_io)?;
            let (r, w) = tokio::io::split(WakeBoth::new(TlsStream::Server(stream)));
            (ReadHalf::Tls(r), WriteHalf::Tls(w), info, fp)
        }
    };
    let conn = Connection::new(read, write, buf, config, peer, local);
    Ok((conn, peer_hello(info, peer, fp)))
}

/// Authentication over a fresh local socket to or from the listener bound to `listener`.
#[cfg(target_os = "linux")]
async fn establish_local(
    mut stream: tokio::net::UnixStream,
    side: Side,
    config: &NetConfig,
    hello: &Hello,
    listener: SocketAddr,
) -> Result<(Connection, PeerHello), NetError> {
    let mut buf = BytesMut::new();
    let info = auth::handshake(&mut stream, &mut buf, &config.secret, hello, side, None).await?;
    let (r, w) = crate::local::split(stream)?;
    // A local socket has no IP address: the listening end is named by the listener's
    // address, the connecting end by its IP and port 0.
    let connecting = SocketAddr::new(listener.ip(), 0);
    let (peer, local) = match side {
        Side::Client => (listener, connecting),
        Side::Server => (connecting, listener),
    };
    let mut conn = Connection::new(
        ReadHalf::Unix(r),
        WriteHalf::Unix(w),
        buf,
        config,
        peer,
        local,
    );
    conn.local_socket = true;
    Ok((conn, peer_hello(info, peer, None)))
}

fn map_nested_io(e: NetError) -> NetError {
    match e {
        NetError::Io(e) => tls::map_io_error(e),
        e => e,
    }
}

/// Connects to a listener: TCP (bounded by [`NetConfig::connect_timeout`]), then TLS if
/// configured and the mutual authentication (bounded by [`NetConfig::handshake_timeout`]).
/// Returns the connection and what the peer said about itself.
///
/// With TLS, `config` must pin the listener's certificate fingerprint (see
/// [`NetConfig::for_peer`]).
pub async fn connect(
    addr: impl ToSocketAddrs,
    config: &NetConfig,
    hello: Hello,
) -> Result<(Connection, PeerHello), NetError> {
    let addrs: Vec<SocketAddr> = with_timeout(config.connect_timeout, "connect", async {
        Ok(tokio::net::lookup_host(addr).await?.collect())
    })
    .await?;
    #[cfg(target_os = "linux")]
    if config.local_sockets && config.tls.is_none() {
        if let Some((stream, listener)) = crate::local::connect(&addrs).await {
            let local = with_timeout(
                config.handshake_timeout,
                "handshake",
                establish_local(stream, Side::Client, config, &hello, listener),
            )
            .await;
            match local {
                Ok(conn) => return Ok(conn),
                // Another process may hold the name: TCP reaches the listener itself.
                Err(e) => log::debug!(
                    "handshake with {listener} over its local socket failed ({e}); trying TCP"
                ),
            }
        }
    }
    let tcp = with_timeout(config.connect_timeout, "connect", async {
        Ok(TcpStream::connect(&addrs[..]).await?)
    })
    .await?;
    let peer = tcp.peer_addr().ok();
    let result = with_timeout(
        config.handshake_timeout,
        "handshake",
        establish(tcp, Side::Client, config, None, &hello),
    )
    .await;
    if let (Err(e), Some(peer)) = (&result, peer) {
        log::warn!("handshake with {peer} failed: {e}");
    }
    result
}

type Incoming = Result<(Connection, PeerHello), NetError>;

/// Accepts connections: TCP accept, then TLS and authentication in a background task per
/// connection (at most [`NetConfig::max_pending_handshakes`] at once), so that a client
/// that sends nothing or garbage does not hold up others.
///
/// Dropping the listener stops accepting and abandons handshakes in progress.
pub struct Listener {
    local_addr: SocketAddr,
    incoming: mpsc::Receiver<Incoming>,
    hello: watch::Sender<Hello>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Binds `addr` (e.g. `"127.0.0.1:0"`: loopback, any free port) and starts accepting,
    /// introducing this process with `hello` (changeable with [`set_hello`](Self::set_hello)).
    /// Must run inside a tokio runtime.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: &NetConfig,
        hello: Hello,
    ) -> Result<Listener, NetError> {
        let acceptor = match &config.tls {
            Some(tls) => Some(TlsAcceptor::from(tls.server_config()?)),
            None => None,
        };
        let tcp = TcpListener::bind(addr).await?;
        let local_addr = tcp.local_addr()?;
        #[cfg(target_os = "linux")]
        let local = (config.local_sockets && config.tls.is_none())
            .then(|| crate::local::bind(&local_addr))
            .flatten();
        #[cfg(not(target_os = "linux"))]
        let local = None;
        let (tx, rx) = mpsc::channel(64);
        let (hello_tx, hello_rx) = watch::channel(hello);
        let shared = Arc::new((config.clone(), acceptor));
        let task = tokio::spawn(accept_loop(tcp, local_addr, local, shared, hello_rx, tx));
        Ok(Listener {
            local_addr,
            incoming: rx,
            hello: hello_tx,
            task,
        })
    }

    /// The address the listener is bound to (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next incoming connection that passed the handshake, or the error of one that
    /// did not (already logged with the peer's address). An error concerns that one
    /// connection only: keep calling `accept`. Cancel-safe.
    /// [`NetError::Closed`] means the listener itself ended; a peer that hung up during its
    /// handshake is reported as an I/O error.
    pub async fn accept(&mut self) -> Result<(Connection, PeerHello), NetError> {
        match self.incoming.recv().await {
            Some(Err(NetError::Closed)) => Err(NetError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer hung up during the handshake",
            ))),
            Some(r) => r,
            None => Err(NetError::Closed),
        }
    }

    /// Changes the hello sent to peers connecting from now on (e.g. once this process got
    /// its id).
    pub fn set_hello(&self, hello: Hello) {
        self.hello.send_replace(hello);
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local socket a listener also accepts on (never one on other systems).
#[cfg(target_os = "linux")]
type LocalListener = tokio::net::UnixListener;
#[cfg(not(target_os = "linux"))]
type LocalListener = std::convert::Infallible;

/// A connection accepted, before its handshake (one on the local socket is named by the
/// listener's address).
enum Fresh {
    Tcp(TcpStream),
    #[cfg(target_os = "linux")]
    Local(tokio::net::UnixStream),
}

/// The next connection on the local socket, if there is one.
async fn accept_local(local: &Option<LocalListener>) -> io::Result<Fresh> {
    match local {
        #[cfg(target_os = "linux")]
        Some(l) => Ok(Fresh::Local(l.accept().await?.0)),
        #[cfg(not(target_os = "linux"))]
        Some(never) => match *never {},
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    tcp: TcpListener,
    listening: SocketAddr,
    local: Option<LocalListener>,
    shared: Arc<(NetConfig, Option<TlsAcceptor>)>,
    hello: watch::Receiver<Hello>,
    tx: mpsc::Sender<Incoming>,
) {
    let mut handshakes = JoinSet::new();
    let max_pending = shared.0.max_pending_handshakes.max(1);
    loop {
        tokio::select! {
            accepted = tcp.accept(), if handshakes.len() < max_pending => match accepted {
                Ok((stream, addr)) => {
                    let hello = *hello.borrow();
                    let fresh = Fresh::Tcp(stream);
                    handshakes.spawn(incoming(fresh, addr, shared.clone(), hello, tx.clone()));
                }
                Err(e) => {
                    log::warn!("accepting a connection on {:?} failed: {e}", tcp.local_addr().ok());
                    let _ = tx.try_send(Err(NetError::Io(e)));
                    // Typically out of file descriptors: give the others time to close.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            accepted = accept_local(&local), if handshakes.len() < max_pending => match accepted {
                Ok(fresh) => {
                    let hello = *hello.borrow();
                    handshakes.spawn(incoming(fresh, listening, shared.clone(), hello, tx.clone()));
                }
                Err(e) => {
                    log::warn!("accepting a connection on the local socket of {listening} failed: {e}");
                    let _ = tx.try_send(Err(NetError::Io(e)));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            () = tx.closed() => return,
        }
    }
}

async fn incoming(
    stream: Fresh,
    addr: SocketAddr,
    shared: Arc<(NetConfig, Option<TlsAcceptor>)>,
    hello: Hello,
    tx: mpsc::Sender<Incoming>,
) {
    let (config, acceptor) = &*shared;
    let from = match stream {
        Fresh::Tcp(_) => addr.to_string(),
        #[cfg(target_os = "linux")]
        Fresh::Local(_) => format!("the local socket of {addr}"),
    };
    let handshake = async {
        match stream {
            Fresh::Tcp(s) => establish(s, Side::Server, config, acceptor.as_ref(), &hello).await,
            #[cfg(target_os = "linux")]
            Fresh::Local(s) => establish_local(s, Side::Server, config, &hello, addr).await,
        }
    };
    let result = with_timeout(config.handshake_timeout, "handshake", handshake).await;
    match result {
        Ok(conn) => {
            let _ = tx.send(Ok(conn)).await;
        }
        Err(e) => {
            log::warn!("refused the connection from {from}: {e}");
            let _ = tx.try_send(Err(e));
        }
    }
}
