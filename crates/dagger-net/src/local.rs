//! Local sockets: a listener of this host is also reachable through a Unix socket in the
//! abstract namespace named after its TCP address, which costs less than loopback TCP.
//!
//! The name is derived from the exact address the TCP listener is bound to. Abstract names
//! belong to the network namespace, as TCP addresses do, so a process that finds the name
//! reaches the listener it would have reached by TCP. Nothing is trusted on that basis: the
//! same mutual authentication runs on the socket.

use std::net::SocketAddr;
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
