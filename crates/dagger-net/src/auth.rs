//! Authentication: the cluster secret and the mutual challenge-response handshake that
//! starts every connection.
//!
//! # Handshake
//!
//! Both sides send a *hello* at once, as one frame (see [`crate::frame`]) of 56 bytes:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "DGNT"
//!      4     2  protocol version (u16, big-endian), see PROTOCOL_VERSION
//!      6     1  role: 0 = head, 1 = worker
//!      7     1  flags: bit 0 = a peer id follows (other bits zero)
//!      8     8  peer id (u64, big-endian; zero when absent)
//!     16     8  registry hash (u64, big-endian)
//!     24    32  nonce (random, fresh for each connection)
//! ```
//!
//! Each side checks the magic and version of the hello it got, then sends a *proof*: one
//! 32-byte frame holding
//! `HMAC-SHA256(secret, "dagger-net proof v1" || side || client hello || server hello || binding)`
//! where `side` says which end (connecting or accepting) computed the proof, and `binding` is
//! a TLS exporter value when TLS is on (tying the proof to this TLS session, which defeats a
//! man in the middle relaying the handshake) and empty otherwise. Each side verifies the other's
//! proof in constant time, then compares the registry hashes. Because both sides send before
//! they verify, both report the same failure (wrong secret, version or registry mismatch).
//!
//! Without TLS the handshake authenticates the peer but not the messages that follow: use
//! TLS on networks where someone could inject or alter traffic.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::conn::NetError;
use crate::frame::{self, FrameError, MessageCodec};

/// Version of the wire protocol (framing + handshake); peers must run the same.
pub const PROTOCOL_VERSION: u16 = 1;

/// Environment variable holding the cluster secret, hex-encoded.
pub const SECRET_ENV: &str = "DAGGER_SECRET";

/// Environment variable holding the path of a file with the cluster secret.
pub const SECRET_FILE_ENV: &str = "DAGGER_SECRET_FILE";

/// Minimum length of a secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

const MAGIC: &[u8; 4] = b"DGNT";
const HELLO_LEN: usize = 56;
const PROOF_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const PROOF_LABEL: &[u8] = b"dagger-net proof v1";

/// The bytes of a secret, wiped from memory when dropped.
struct SecretBytes(Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// The cluster secret shared by all processes of a cluster (at least
/// [`MIN_SECRET_LEN`] bytes). Cloning is cheap.
///
/// Pass it to child processes through the environment ([`SECRET_ENV`], hex) or a file
/// ([`SECRET_FILE_ENV`]), never on the command line, where other users can read it. Its
/// `Debug` output does not show it.
///
/// ```
/// use dagger_net::Secret;
/// let secret = Secret::generate().unwrap();
/// let again = Secret::from_hex(&secret.to_hex()).unwrap();
/// assert_eq!(secret, again);
/// assert!(!format!("{secret:?}").contains(&secret.to_hex()));
/// ```
#[derive(Clone)]
pub struct Secret(Arc<SecretBytes>);

impl Secret {
    /// A fresh random 32-byte secret from the operating system's generator.
    pub fn generate() -> Result<Secret, NetError> {
        let mut bytes = vec![0u8; 32];
        fill_random(&mut bytes)?;
        Secret::from_bytes(bytes)
    }

    /// A secret from raw bytes (at least [`MIN_SECRET_LEN`]).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Secret, NetError> {
        let bytes = SecretBytes(bytes.into());
        if bytes.0.len() < MIN_SECRET_LEN {
            return Err(NetError::Config(format!(
                "the cluster secret is too short: {} bytes, at least {MIN_SECRET_LEN} needed",
                bytes.0.len()
            )));
        }
        Ok(Secret(Arc::new(bytes)))
    }

    /// A secret from its hex encoding (surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<Secret, NetError> {
        let bytes = decode_hex(hex.trim())
            .ok_or_else(|| NetError::Config("the cluster secret is not valid hex".into()))?;
        Secret::from_bytes(bytes)
    }

    /// Reads a secret from a file: its contents are taken as hex if, without surrounding
    /// whitespace, they are valid hex of at least [`MIN_SECRET_LEN`] bytes, and as raw bytes
    /// otherwise. Warns if the file is readable by other users (Unix).
    ///
    /// This is blocking I/O: call it at start-up, not from async code.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret, NetError> {
        let path = path.as_ref();
        let contents = std::fs::read(path).map_err(|e| {
            NetError::Config(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    log::warn!(
                        "the secret file {} is accessible by other users (mode {:o}); consider chmod 600",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    );
                }
            }
        }
        let hex = std::str::from_utf8(&contents)
            .ok()
            .and_then(|s| decode_hex(s.trim()))
            .filter(|b| b.len() >= MIN_SECRET_LEN);
        match hex {
            Some(bytes) => Secret::from_bytes(bytes),
            None => Secret::from_bytes(contents),
        }
    }

    /// The secret from the environment: [`SECRET_ENV`] (hex) if set, else the file named
    /// by [`SECRET_FILE_ENV`]; `Ok(None)` if neither is set.
    pub fn from_env() -> Result<Option<Secret>, NetError> {
        if let Some(hex) = std::env::var_os(SECRET_ENV) {
            let hex = hex
                .to_str()
                .ok_or_else(|| NetError::Config(format!("{SECRET_ENV} is not valid hex")))?;
            return Secret::from_hex(hex)
                .map(Some)
                .map_err(|e| NetError::Config(format!("{SECRET_ENV}: {e}")));
        }
        match std::env::var_os(SECRET_FILE_ENV) {
            Some(path) => Secret::from_file(path).map(Some),
            None => Ok(None),
        }
    }

    /// Hex encoding of the secret, for passing it to a child process via the environment or
    /// its standard input.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0 .0)
    }

    /// The raw secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0 .0
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(self.as_bytes()).expect("HMAC takes any key length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0 .0.len())
    }
}

impl PartialEq for Secret {
    /// Constant-time comparison.
    fn eq(&self, other: &Secret) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

/// What a process is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The head process (scheduler).
    Head,
    /// A worker process.
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Head => "head",
            Role::Worker => "worker",
        })
    }
}

/// What a process says about itself when a connection starts.
///
/// ```
/// use dagger_net::{Hello, Role};
/// let hello = Hello::new(Role::Worker, 0x1234).with_peer_id(3);
/// assert_eq!(hello.peer_id, Some(3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The role of this process.
    pub role: Role,
    /// The id of this process in the cluster, if it has one yet.
    pub peer_id: Option<u64>,
    /// Hash of the tasks registered in this binary: peers must agree on it.
    pub registry_hash: u64,
}

impl Hello {
    /// A hello without a peer id.
    pub fn new(role: Role, registry_hash: u64) -> Hello {
        Hello {
            role,
            peer_id: None,
            registry_hash,
        }
    }

    /// The same hello with a peer id.
    pub fn with_peer_id(mut self, id: u64) -> Hello {
        self.peer_id = Some(id);
        self
    }
}

/// What the peer of an authenticated connection said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerHello {
    /// The peer's role.
    pub role: Role,
    /// The peer's id, if it sent one.
    pub peer_id: Option<u64>,
    /// The peer's registry hash (equal to ours, or the handshake would have failed).
    pub registry_hash: u64,
    /// The peer's protocol version (equal to [`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The peer's socket address.
    pub addr: std::net::SocketAddr,
    /// With TLS, the SHA-256 fingerprint (hex) of the certificate the peer presented.
    pub tls_fingerprint: Option<String>,
}

/// Which end of a connection a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Connected to the peer.
    Client,
    /// Accepted the peer's connection.
    Server,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Client => b"client",
            Side::Server => b"server",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// The fields of a decoded hello.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    pub(crate) role: Role,
    pub(crate) peer_id: Option<u64>,
    pub(crate) registry_hash: u64,
    pub(crate) version: u16,
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), NetError> {
    getrandom::getrandom(buf).map_err(|e| {
        NetError::Io(io::Error::other(format!(
            "the system random number generator failed: {e}"
        )))
    })
}

fn encode_hello(hello: &Hello, nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    let mut b = &mut out[..];
    b.put_slice(MAGIC);
    b.put_u16(PROTOCOL_VERSION);
    b.put_u8(match hello.role {
        Role::Head => 0,
        Role::Worker => 1,
    });
    b.put_u8(u8::from(hello.peer_id.is_some()));
    b.put_u64(hello.peer_id.unwrap_or(0));
    b.put_u64(hello.registry_hash);
    b.put_slice(nonce);
    out
}

fn bad(why: impl Into<String>) -> NetError {
    NetError::Malformed(FrameError::Handshake(why.into()))
}

fn decode_hello(msg: &[u8]) -> Result<PeerInfo, NetError> {
    if msg.len() < 6 || &msg[..4] != MAGIC {
        return Err(bad("bad magic: the peer is not a dagger process"));
    }
    let version = u16::from_be_bytes([msg[4], msg[5]]);
    if version != PROTOCOL_VERSION {
        return Err(NetError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if msg.len() != HELLO_LEN {
        return Err(bad(format!(
            "hello of {} bytes, expected {HELLO_LEN}",
            msg.len()
        )));
    }
    let role = match msg[6] {
        0 => Role::Head,
        1 => Role::Worker,
        r => return Err(bad(format!("unknown role {r}"))),
    };
    let flags = msg[7];
    if flags & !1 != 0 {
        return Err(bad(format!("unknown hello flags {flags:#04x}")));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Ok(PeerInfo {
        role,
        peer_id: (flags & 1 != 0).then(|| u64_at(8)),
        registry_hash: u64_at(16),
        version,
    })
}

fn proof_mac(
    secret: &Secret,
    prover: Side,
    client_hello: &[u8],
    server_hello: &[u8],
    binding: Option<&[u8]>,
) -> Hmac<Sha256> {
    let mut mac = secret.mac();
    mac.update(PROOF_LABEL);
    mac.update(prover.label());
    mac.update(client_hello);
    mac.update(server_hello);
    match binding {
        Some(b) => {
            mac.update(&[1]);
            mac.update(b);
        }
        None => mac.update(&[0]),
    }
    mac
}

/// Writes one message as a single frame and flushes.
async fn write_frame<S: AsyncWrite + Unpin>(io: &mut S, msg: &[u8]) -> Result<(), NetError> {
    let mut buf = BytesMut::with_capacity(frame::HEADER_LEN + msg.len());
    buf.put_slice(&frame::encode_header(msg.len(), false));
    buf.put_slice(msg);
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one handshake message; the peer closing the connection is [`NetError::Closed`], and
/// a TLS record where a frame was expected gets a hint.
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    tls: bool,
) -> Result<bytes::Bytes, NetError> {
    let mut codec = MessageCodec::new(HELLO_LEN as u64);
    let mut eof = false;
    match frame::read_message(io, buf, &mut codec, &mut eof).await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(NetError::Closed),
        Err(NetError::Malformed(FrameError::ReservedBits { header }))
            if !tls && matches!(header >> 24, 0x15 | 0x16) =>
        {
            Err(NetError::Tls(
                "the peer speaks TLS but TLS is off in this process".into(),
            ))
        }
        Err(NetError::Oversized { size, .. }) => Err(bad(format!(
            "handshake message of at least {size} bytes, expected at most {HELLO_LEN}"
        ))),
        Err(e) => Err(e),
    }
}

/// Runs the mutual handshake on a fresh stream (plain or TLS). `buf` receives whatever was
/// read past the handshake (the peer may send messages right after it). `binding` is the
/// TLS exporter value when the stream is TLS. The caller bounds the time.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    secret: &Secret,
    me: &Hello,
    side: Side,
    binding: Option<&[u8]>,
) -> Result<PeerInfo, NetError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mine = encode_hello(me, &nonce);
    write_frame(io, &mine).await?;

    let theirs = read_frame(io, buf, binding.is_some()).await?;
    let peer = decode_hello(&theirs)?;
    if theirs[24..] == nonce {
        return Err(bad("the peer echoed our nonce"));
    }
    let (client_hello, server_hello) = match side {
        Side::Client => (&mine[..], &theirs[..]),
        Side::Server => (&theirs[..], &mine[..]),
    };

    let proof = proof_mac(secret, side, client_hello, server_hello, binding).finalize();
    write_frame(io, &proof.into_bytes()).await?;

    let their_proof = read_frame(io, buf, binding.is_some()).await?;
    if their_proof.len() != PROOF_LEN {
        return Err(bad(format!(
            "proof of {} bytes, expected {PROOF_LEN}",
            their_proof.len()
        )));
    }
    proof_mac(secret, side.other(), client_hello, server_hello, binding)
        .verify_slice(&their_proof)
        .map_err(|_| NetError::AuthFailed)?;

    if peer.registry_hash != me.registry_hash {
        return Err(NetError::RegistryMismatch {
            ours: me.registry_hash,
            theirs: peer.registry_hash,
        });
    }
    Ok(peer)
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    encode_hex(bytes)
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(vec![b; 32]).unwrap()
    }

    async fn pair(
        a: (&Secret, Hello),
        b: (&Secret, Hello),
    ) -> (Result<PeerInfo, NetError>, Result<PeerInfo, NetError>) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (mut bx, mut by) = (BytesMut::new(), BytesMut::new());
        tokio::join!(
            handshake(&mut x, &mut bx, a.0, &a.1, Side::Client, None),
            handshake(&mut y, &mut by, b.0, &b.1, Side::Server, None),
        )
    }

    #[tokio::test]
    async fn handshake_outcomes() {
        let w = Hello::new(Role::Worker, 7).with_peer_id(4);
        let h = Hello::new(Role::Head, 7);
        let (a, b) = pair((&secret(1), w), (&secret(1), h)).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.role, a.peer_id, a.registry_hash), (Role::Head, None, 7));
        assert_eq!((b.role, b.peer_id), (Role::Worker, Some(4)));

        let (a, b) = pair((&secret(1), w), (&secret(2), h)).await;
        assert!(matches!(a, Err(NetError::AuthFailed)), "{a:?}");
        assert!(matches!(b, Err(NetError::AuthFailed)), "{b:?}");

        let (a, b) = pair((&secret(1), w), (&secret(1), Hello::new(Role::Head, 8))).await;
        assert!(
            matches!(a, Err(NetError::RegistryMismatch { ours: 7, theirs: 8 })),
            "{a:?}"
        );
        assert!(
            matches!(b, Err(NetError::RegistryMismatch { ours: 8, theirs: 7 })),
            "{b:?}"
        );
    }

    #[tokio::test]
    async fn version_mismatch_and_garbage() {
        let mut hello = encode_hello(&Hello::new(Role::Head, 1), &[9u8; NONCE_LEN]);
        hello[5] = 99;
        let (mut x, mut y) = tokio::io::duplex(4096);
        let mut buf = BytesMut::new();
        let (s, me) = (secret(1), Hello::new(Role::Worker, 1));
        let (r, w) = tokio::join!(
            handshake(&mut x, &mut buf, &s, &me, Side::Client, None),
            write_frame(&mut y, &hello),
        );
        w.unwrap();
        assert!(
            matches!(
                r,
                Err(NetError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: 99
                })
            ),
            "{r:?}"
        );
        assert!(matches!(
            decode_hello(b"GET / HTTP/1.1"),
            Err(NetError::Malformed(_))
        ));
    }

    #[test]
    fn secrets() {
        assert!(Secret::from_hex("abcd").is_err());
        assert!(Secret::from_hex("zz").is_err());
        let s = Secret::from_hex(" 00112233445566778899AABBCCDDEEFF\n").unwrap();
        assert_eq!(s.to_hex(), "00112233445566778899aabbccddeeff");
        assert_ne!(Secret::generate().unwrap(), Secret::generate().unwrap());
        assert_eq!(format!("{s:?}"), "Secret(<16 bytes, redacted>)");

        let dir = std::env::temp_dir().join(format!("dagger-net-secret-{}", std::process::id()));
        std::fs::write(&dir, format!("{}\n", s.to_hex())).unwrap();
        assert_eq!(Secret::from_file(&dir).unwrap(), s);
        std::fs::write(&dir, [7u8; 20]).unwrap();
        assert_eq!(Secret::from_file(&dir).unwrap().as_bytes(), &[7u8; 20]);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn secret_from_env() {
        // The only test of this binary touching these variables.
        let file = std::env::temp_dir().join(format!("dagger-net-env-{}", std::process::id()));
        std::env::remove_var(SECRET_ENV);
        std::env::remove_var(SECRET_FILE_ENV);
        assert!(Secret::from_env().unwrap().is_none());
        std::fs::write(&file, [3u8; 24]).unwrap();
        std::env::set_var(SECRET_FILE_ENV, &file);
        assert_eq!(Secret::from_env().unwrap().unwrap().as_bytes(), &[3u8; 24]);
        let s = Secret::generate().unwrap();
        std::env::set_var(SECRET_ENV, s.to_hex());
        assert_eq!(Secret::from_env().unwrap().unwrap(), s);
        std::env::set_var(SECRET_ENV, "0011");
        let err = Secret::from_env().unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        std::env::remove_var(SECRET_ENV);
        std::env::remove_var(SECRET_FILE_ENV);
        std::fs::remove_file(&file).unwrap();
    }
}
