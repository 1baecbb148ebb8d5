//! Networking of dagger: length-delimited framing with streamed large messages, mutual
//! HMAC-SHA256 authentication over a cluster secret, optional TLS with pinned self-signed
//! certificates, and the launchers that start worker processes (local, SSH, SLURM, MPI).
//!
//! This crate moves opaque messages (`Vec<u8>`); what they mean is decided by the runtime.
#![deny(missing_docs)]

// Transport: framing, authentication, TLS, connections.
pub mod auth;
pub mod conn;
pub mod direct;
mod duplex;
pub mod frame;
#[cfg(target_os = "linux")]
mod local;
pub mod pool;
pub mod tls;

// Starting worker processes.
pub mod launch;

pub use auth::{Hello, PeerHello, Role, Secret};
pub use conn::{connect, Connection, Listener, NetConfig, NetError, Receiver, Sender};
pub use direct::DirectWriter;
pub use frame::FrameError;
pub use tls::{TlsConfig, TlsIdentity};
